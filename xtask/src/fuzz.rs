//! `cargo xtask fuzz [TARGET...] [--seconds N]`: runs the libFuzzer targets
//! in `fuzz/` (every target when none is named), each for a bounded time.
//!
//! cargo-fuzz passes `-Z` flags to rustc; only a stable toolchain can be had
//! on these machines, so `RUSTC_BOOTSTRAP=1` lets stable accept them. Crashes
//! land in `fuzz/artifacts/<target>/` and fail the run.

use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    /// Targets to run (default: all in fuzz/Cargo.toml).
    targets: Vec<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u32,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        crate::run_cmd(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let fuzz_dir = crate::root().join("fuzz");
    let targets = if args.targets.is_empty() {
        let out = Command::new("cargo")
            .args(["fuzz", "list"])
            .current_dir(&fuzz_dir)
            .output()?;
        anyhow::ensure!(out.status.success(), "cargo fuzz list failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    } else {
        args.targets
    };
    for t in &targets {
        println!("fuzz: {t} for {} s", args.seconds);
        let status = Command::new("cargo")
            .args(["fuzz", "run", "-O", t, "--"])
            .arg(format!("-max_total_time={}", args.seconds))
            .env("RUSTC_BOOTSTRAP", "1")
            .current_dir(&fuzz_dir)
            .status()?;
        anyhow::ensure!(
            status.success(),
            "fuzz target {t} found a failure (see fuzz/artifacts/{t}/)"
        );
    }
    println!("fuzz: {} targets ran clean", targets.len());
    Ok(())
}
