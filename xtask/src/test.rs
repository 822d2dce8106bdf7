//! `cargo xtask test`: what CI runs.

use std::process::Command;

#[derive(clap::Args)]
pub struct Args {
    /// Skip `cargo fmt --check` and clippy (quick local runs).
    #[arg(long)]
    pub no_lint: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::deps::ensure()?;
    if !args.no_lint {
        crate::run_cmd(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
        crate::run_cmd(Command::new("cargo").args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    crate::run_cmd(Command::new("cargo").args(["test", "--workspace", "--all-targets"]))?;
    Ok(())
}
