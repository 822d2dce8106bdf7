//! `rayos recovery`: the recovery menu (logic in `rayos_init::recovery`;
//! see docs/recovery.md). The console offers it in recovery mode.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rayos_base::efivar::{self, EFIVARS_DIR};

const LOADER: &str = "\\EFI\\systemd\\systemd-bootx64.efi";

#[derive(clap::Args)]
pub struct Args {
    /// The data volume.
    #[arg(long, default_value = rayos_base::paths::DATA)]
    data_dir: PathBuf,
    /// A mounted system partition to work on (default: find and mount
    /// this machine's when an action needs it).
    #[arg(long)]
    system_dir: Option<PathBuf>,
    /// Do not open the menu: make the next boot (only) start the recovery
    /// entry, then `reboot`.
    #[arg(long)]
    next_boot: bool,
}

/// Re-creates the UEFI `Boot####` entry "RayOS" (first in `BootOrder`) from
/// the loader's partition recorded in the install manifest (the ESP; the
/// system partition on a 4096-byte-sector disk), with the installer's
/// encoder.
fn boot_entry(system: &Path) -> Result<String, String> {
    if !Path::new(EFIVARS_DIR).is_dir() {
        return Err("not booted through UEFI (no efivarfs)".into());
    }
    let p = system.join(rayos_update::apply::INSTALL_MANIFEST);
    let bytes = std::fs::read(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let m = rayos_install::manifest::Manifest::parse(&bytes)
        .map_err(|e| format!("{}: {e}", p.display()))?;
    let esp = m
        .partitions
        .iter()
        .find(|x| x.role == rayos_install::plan::loader_role(m.sector_size))
        .ok_or("the install manifest lists no partition for the boot loader")?;
    let path = efivar::HdFilePath {
        partition_number: esp.number,
        start_lba: esp.first_lba,
        size_lba: esp.last_lba + 1 - esp.first_lba,
        partition_guid: esp.unique_guid,
        file: LOADER.into(),
    };
    let n = efivar::add_boot_entry(Path::new(EFIVARS_DIR), "RayOS", &path)
        .map_err(|e| rayos_base::error::chain(&e))?;
    Ok(format!(
        "UEFI boot entry Boot{n:04X} \"RayOS\" written, first in BootOrder"
    ))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.next_boot {
        rayos_init::recovery::boot_recovery_next(Path::new(EFIVARS_DIR)).map_err(|e| {
            super::Exit::new(
                super::exit::FAILED,
                format!(
                    "{} (needs RayOS booted through UEFI with systemd-boot)",
                    rayos_base::error::chain(&e)
                ),
            )
        })?;
        println!("the next boot starts the recovery entry; type `reboot` to go there now");
        return Ok(ExitCode::SUCCESS);
    }
    // On a running RayOS the menu is for recovery mode only: it resets and
    // reformats things rayosd and the VMs are using.
    if let Ok(st) = rayos_init::control::InitStatus::read(Path::new(rayos_base::paths::INIT_STATUS))
        && st.mode != rayos_init::cmdline::Mode::Recovery
    {
        return Err(super::Exit::new(
            super::exit::BAD_INPUT,
            "the recovery menu runs in recovery mode (VMs stopped): `recovery --next-boot`, then `reboot`",
        )
        .into());
    }
    let ctx = rayos_init::recovery::Ctx {
        data: args.data_dir,
        system: args.system_dir,
        boot_entry: Some(&boot_entry),
    };
    rayos_init::recovery::menu(&ctx, &mut io::stdin().lock(), &mut io::stdout())?;
    Ok(ExitCode::SUCCESS)
}
