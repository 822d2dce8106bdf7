//! `cargo xtask`: the one developer entry point for build, test, media,
//! end-to-end tests and benchmarks. Every subcommand lives in its own module.

mod deps;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install (as root) or list the system packages RayOS needs.
    Deps,
    /// Everything CI runs: deps, fmt check, clippy, all tests.
    Test(test::Args),
    /// Plan and perform an install onto a fresh disk image and show the result.
    Demo,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Deps => deps::ensure(),
        Command::Test(a) => test::run(a),
        Command::Demo => anyhow::bail!("the demo is not built yet"),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Runs a command from the workspace root, failing with its name on a non-zero exit.
pub fn run_cmd(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    cmd.current_dir(root());
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("cannot run {:?}: {e}", cmd.get_program()))?;
    anyhow::ensure!(status.success(), "{:?} failed: {status}", cmd);
    Ok(())
}
