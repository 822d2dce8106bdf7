//! The `rayos` binary. Thin by design: parse arguments, call the library
//! crate that does the job, map the error to an exit code. Each subcommand
//! lives in `cmd/<name>.rs`.
//!
//! Exit codes (scripts may rely on them):
//! 0 success, 1 the operation failed, 2 bad usage or bad input,
//! 3 the daemon could not be reached, 4 not found.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "rayos", version, about = "RayOS: keeps a Linux and a Windows VM alive on this machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List disks and what they hold.
    Disks(cmd::disks::Args),
    /// Plan and perform an install of RayOS onto a disk.
    Install(cmd::install::Args),
    /// Run the VM supervisor (rayosd).
    Daemon(cmd::daemon::Args),
    /// Manage VMs through the running daemon.
    Vm(cmd::vm::Args),
    /// PID 1 of the RayOS image.
    Init(cmd::init::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Disks(a) => cmd::disks::run(a),
        Command::Install(a) => cmd::install::run(a),
        Command::Daemon(a) => cmd::daemon::run(a),
        Command::Vm(a) => cmd::vm::run(a),
        Command::Init(a) => cmd::init::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rayos: error: {e:#}");
            ExitCode::from(cmd::exit_code_of(&e))
        }
    }
}
