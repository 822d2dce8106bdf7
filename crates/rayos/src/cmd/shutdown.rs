//! `rayos shutdown` and `rayos reboot`: ask PID 1 (rayos init) to save the
//! VMs, stop everything and power off or restart. The request is a signal
//! to PID 1 (SIGUSR2: power off, SIGTERM: reboot; see docs/init.md), sent
//! only when PID 1 is RayOS's init.

use std::process::ExitCode;

use rayos_init::control::{self, ControlError};
use rayos_init::sys::PowerAction;

#[derive(clap::Args)]
pub struct Args {
    /// Restart instead of powering off.
    #[arg(long, short = 'r')]
    reboot: bool,
}

#[derive(clap::Args)]
pub struct RebootArgs {}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    request(if args.reboot {
        PowerAction::Reboot
    } else {
        PowerAction::PowerOff
    })
}

pub fn run_reboot(_args: RebootArgs) -> anyhow::Result<ExitCode> {
    request(PowerAction::Reboot)
}

fn request(action: PowerAction) -> anyhow::Result<ExitCode> {
    match control::request(action) {
        Ok(()) => {
            println!(
                "RayOS is saving the VMs and will {} (this can take a minute)",
                match action {
                    PowerAction::PowerOff => "power off",
                    PowerAction::Reboot => "restart",
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ ControlError::NotRayos) => {
            Err(super::Exit::new(super::exit::BAD_INPUT, e.to_string()).into())
        }
        Err(e) => Err(super::Exit::new(super::exit::FAILED, rayos_base::error::chain(&e)).into()),
    }
}
