//! `rayos console`: the `rayos>` admin prompt (crates/rayos-init/src/console.rs).
//! PID 1 runs one per console terminal with `--tty`; on a pipe it reads
//! commands line by line (tests, scripts).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use rayos_init::cmdline::Mode;

#[derive(clap::Args)]
pub struct Args {
    /// Take this terminal as the session's controlling terminal and stdio.
    #[arg(long, value_name = "DEVICE")]
    tty: Option<PathBuf>,
    /// Which commands are offered: installer, installed or recovery.
    #[arg(long, default_value = "installed", value_parser = parse_mode)]
    mode: Mode,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    Mode::parse(s)
        .ok_or_else(|| format!("{s:?} is not a mode: use installer, installed or recovery"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the rayos binary (/proc/self/exe)")?;
    let opts = rayos_init::console::Options {
        tty: args.tty,
        mode: args.mode,
        exe,
    };
    let code = rayos_init::console::run(&opts)
        .map_err(|e| super::Exit::new(super::exit::FAILED, rayos_base::error::chain(&e)))?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
