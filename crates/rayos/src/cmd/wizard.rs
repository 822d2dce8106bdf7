//! `rayos wizard`: the full-screen installer (rayos-wizard) on this
//! terminal. Without `--disk` it offers every block device of the machine.
//!
//! After the screens close it prints one marker line on stderr for tests
//! and the installer media: `RAYOS_WIZARD:INSTALLED after=<reboot|power-off|exit>`,
//! `RAYOS_WIZARD:DRY_RUN` or `RAYOS_WIZARD:CANCELLED`. Exit codes: 0
//! installed or dry run, 1 failed, 2 bad input, 5 cancelled (nothing
//! written). Rebooting or powering off is left to the caller (the installer
//! media's init), which reads the marker.

use std::path::PathBuf;
use std::process::ExitCode;

use rayos_base::marker::{Marker, WizardAfter, WizardMarker};
use rayos_install::apply::ApplyOptions;
use rayos_install::plan::SYSTEMD_BOOT_HOST;
use rayos_wizard::{After, Config, Outcome, WizardError};

use super::{Exit, exit};

/// Exit code when the person leaves the wizard without installing.
pub const CANCELLED: u8 = 5;

#[derive(clap::Args)]
pub struct Args {
    /// A disk (block device or image file) to offer; repeat for more.
    /// Default: every block device of this machine.
    #[arg(long = "disk")]
    disks: Vec<PathBuf>,
    /// Logical sector size of image files without a partition table (512 or 4096).
    #[arg(long)]
    sector_size: Option<u32>,
    /// Save the confirmed choices as an answer file (for `rayos install --answers`).
    #[arg(long)]
    save_answers: Option<PathBuf>,
    /// The RayOS UKI to install (`cargo xtask media` builds build/rayos.efi).
    #[arg(long)]
    system_image: Option<PathBuf>,
    /// The recovery UKI (`build/rayos-recovery.efi`); with it the boot menu
    /// gets a "RayOS recovery" entry.
    #[arg(long)]
    recovery_image: Option<PathBuf>,
    /// The Debian VM image (`build/linux-vm.qcow2.zst`): the wizard then asks
    /// for the Linux VM's user and password.
    #[arg(long)]
    linux_vm_image: Option<PathBuf>,
    /// systemd-boot to put on the ESP.
    #[arg(long, default_value = SYSTEMD_BOOT_HOST)]
    systemd_boot: PathBuf,
    /// Stop after the confirmation: save the answers, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Do not add a UEFI boot entry.
    #[arg(long)]
    no_nvram: bool,
    /// Go on although this machine did not boot in UEFI mode (tests).
    #[arg(long)]
    allow_bios: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::check_sector_size(args.sector_size)?;
    for d in &args.disks {
        super::check_disk_exists(d)?;
    }
    let config = Config {
        disks: args.disks,
        sector_size: args.sector_size,
        save_answers: args.save_answers,
        system_image: args.system_image,
        recovery_image: args.recovery_image,
        linux_vm_image: args.linux_vm_image,
        systemd_boot: args.systemd_boot,
        dry_run: args.dry_run,
        nvram: !args.no_nvram,
        allow_bios: args.allow_bios,
        apply: ApplyOptions::default(),
        writing_guard: Some(install_lock),
    };
    run_config(&config)
}

/// Held while the wizard writes a disk: on the installer media it tells
/// PID 1 not to stop the consoles for an unattended install meanwhile
/// (`rayos_base::paths::INSTALL_LOCK`; nothing on other hosts).
pub fn install_lock() -> Box<dyn std::any::Any + Send> {
    Box::new(rayos_init::control::hold_install_lock(
        std::path::Path::new(rayos_base::paths::INSTALL_LOCK),
    ))
}

/// Runs the wizard with `config` and reports its outcome (stdout message,
/// stderr marker, exit code). `rayos install` without an answer file on a
/// terminal calls this too.
pub fn run_config(config: &Config) -> anyhow::Result<ExitCode> {
    let outcome = rayos_wizard::run(config).map_err(|e| match e {
        WizardError::NoTerminal | WizardError::NoSystemImage | WizardError::ReadDisk(..) => {
            anyhow::Error::from(Exit::new(
                exit::BAD_INPUT,
                format!("{:#}", anyhow::Error::from(e)),
            ))
        }
        other => anyhow::Error::from(other),
    })?;
    match outcome {
        Outcome::Installed { plan, after } => {
            let (after, action) = match after {
                After::Reboot => (
                    WizardAfter::Reboot,
                    Some(rayos_init::sys::PowerAction::Reboot),
                ),
                After::PowerOff => (
                    WizardAfter::PowerOff,
                    Some(rayos_init::sys::PowerAction::PowerOff),
                ),
                After::Exit => (WizardAfter::Exit, None),
            };
            println!("RayOS is installed on {}.", plan.target.display());
            eprintln!("{}", Marker::Wizard(WizardMarker::Installed { after }));
            let after = after.as_str();
            // On the installer media PID 1 is rayos init: hand it the power
            // action the person chose. Elsewhere (a developer's host) the
            // choice is only reported.
            if let Some(action) = action {
                match rayos_init::control::request(action) {
                    Ok(()) | Err(rayos_init::control::ControlError::NotRayos) => {}
                    Err(e) => eprintln!(
                        "rayos: could not ask init to {after}: {}; type `{after}` at the rayos> prompt",
                        rayos_base::error::chain(&e)
                    ),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Outcome::DryRun { plan } => {
            print!("{}", rayos_install::plan::render(&plan));
            println!("\nDry run: nothing was written.");
            eprintln!("{}", Marker::Wizard(WizardMarker::DryRun));
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Cancelled => {
            println!("The installer was left: nothing was written.");
            eprintln!("{}", Marker::Wizard(WizardMarker::Cancelled));
            Ok(ExitCode::from(CANCELLED))
        }
    }
}
