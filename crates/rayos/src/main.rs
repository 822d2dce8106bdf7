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
#[command(
    name = "rayos",
    version,
    about = "RayOS: keeps a Linux and a Windows VM alive on this machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List disks and what they hold.
    Disks(cmd::disks::Args),
    /// Installation media for VMs: sticks, their filesystems and image
    /// files (mounted read-only).
    Media(cmd::media::Args),
    /// Plan and perform an install of RayOS onto a disk.
    Install(cmd::install::Args),
    /// The full-screen installer with a partition manager.
    Wizard(cmd::wizard::Args),
    /// Run the VM supervisor (rayosd).
    Daemon(cmd::daemon::Args),
    /// Manage VMs through the running daemon.
    Vm(cmd::vm::Args),
    /// Serve the agent bridge as a Model Context Protocol server on stdio.
    Mcp(cmd::mcp::Args),
    /// The presenter: shows the presented VM or the home screen, owns input.
    Present(cmd::present::Args),
    /// PID 1 of the RayOS image.
    Init(cmd::init::Args),
    /// The rayos> admin console.
    Console(cmd::console::Args),
    /// What RayOS is doing: boot, faults, services, VMs.
    Status(cmd::status::Args),
    /// Show RayOS's logs, crash reports and boot history.
    Logs(cmd::logs::Args),
    /// Save the VMs and power off (or restart with --reboot).
    Shutdown(cmd::shutdown::Args),
    /// Save the VMs and restart.
    Reboot(cmd::shutdown::RebootArgs),
    /// Signed updates: verify, apply, status, rollback.
    Update(cmd::update::Args),
    /// The recovery menu: logs, policy, boot repair, reinstall, factory reset.
    Recovery(cmd::recovery::Args),
    /// RayOS's wired-network service (PID 1 starts it).
    #[command(hide = true)]
    Net(cmd::net::Args),
    /// Show or change the policy (checked, saved atomically, applied by rayosd).
    Policy(cmd::policy::Args),
}

fn main() -> ExitCode {
    // The kernel starts the image's /init (this binary) with no subcommand,
    // and runs /run/rayos/modprobe (a link to it) for its module requests.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    match std::path::Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
    {
        Some("init") => return finish(cmd::init::run(cmd::init::Args::default())),
        Some("modprobe") => {
            let args: Vec<String> = std::env::args().skip(1).collect();
            return ExitCode::from(rayos_init::modules::kernel_modprobe(&args) as u8);
        }
        _ => {}
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Disks(a) => cmd::disks::run(a),
        Command::Media(a) => cmd::media::run(a),
        Command::Install(a) => cmd::install::run(a),
        Command::Wizard(a) => cmd::wizard::run(a),
        Command::Daemon(a) => cmd::daemon::run(a),
        Command::Vm(a) => cmd::vm::run(a),
        Command::Mcp(a) => cmd::mcp::run(a),
        Command::Present(a) => cmd::present::run(a),
        Command::Init(a) => cmd::init::run(a),
        Command::Console(a) => cmd::console::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Logs(a) => cmd::logs::run(a),
        Command::Shutdown(a) => cmd::shutdown::run(a),
        Command::Reboot(a) => cmd::shutdown::run_reboot(a),
        Command::Update(a) => cmd::update::run(a),
        Command::Recovery(a) => cmd::recovery::run(a),
        Command::Policy(a) => cmd::policy::run(a),
        Command::Net(a) => cmd::net::run(a),
    };
    finish(result)
}

fn finish(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rayos: error: {e:#}");
            ExitCode::from(cmd::exit_code_of(&e))
        }
    }
}
