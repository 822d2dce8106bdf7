//! `rayos install`: plan (and perform) an install of RayOS onto a disk.
//!
//! Markers on stderr for tests and the installer media:
//! `RAYOS_INSTALLER:STARTED`, `RAYOS_INSTALLER:PLAN_GENERATED`,
//! `RAYOS_INSTALLER:STEP:<step>` (each step done), `RAYOS_INSTALLER:COMPLETE`,
//! `RAYOS_INSTALLER:FAILED`. Exit codes: 0 done, 1 the install failed,
//! 2 bad input or a refusal (nothing written).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use rayos_base::marker::{InstallerMarker, Marker};
use rayos_install::answers::{Answers, Mode};
use rayos_install::apply::{ApplyOptions, Event};
use rayos_install::plan::{self, Facts, PlanOptions};

use super::{Exit, exit};

#[derive(clap::Args)]
pub struct Args {
    /// The disk (block device or image file) to install onto; overrides
    /// `[target].disk` of the answer file.
    #[arg(long)]
    target: Option<PathBuf>,
    /// The answer file (TOML; see docs/answer-file.md).
    #[arg(long)]
    answers: Option<PathBuf>,
    /// Print the plan and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Machine-readable output: the plan as JSON (dry run) or JSON-lines
    /// progress events.
    #[arg(long)]
    json: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// Plan for a built-in sample disk (no disk is read or written).
    #[arg(long)]
    sample: bool,
    /// Do not add a UEFI boot entry.
    #[arg(long)]
    no_nvram: bool,
    /// The RayOS UKI to install (`cargo xtask media` builds build/rayos.efi).
    #[arg(long)]
    system_image: Option<PathBuf>,
    /// The recovery UKI (`build/rayos-recovery.efi`); with it the boot menu
    /// gets a "RayOS recovery" entry.
    #[arg(long)]
    recovery_image: Option<PathBuf>,
    /// The Debian VM image (`build/linux-vm.qcow2.zst`); with it and a
    /// `[linux] user` the Linux VM runs Debian (docs/linux-vm.md).
    #[arg(long)]
    linux_vm_image: Option<PathBuf>,
    /// systemd-boot to put on the ESP.
    #[arg(long, default_value = plan::SYSTEMD_BOOT_HOST)]
    systemd_boot: PathBuf,
    /// Logical sector size of an image file without a partition table
    /// (512 or 4096).
    #[arg(long)]
    sector_size: Option<u32>,
}

fn bad(msg: impl Into<String>) -> anyhow::Error {
    Exit::new(exit::BAD_INPUT, msg).into()
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // No answer file on a terminal: the wizard builds the plan for the same
    // engine (it prints its own RAYOS_WIZARD:* markers). Without a terminal
    // the answer file stays required (below).
    if args.answers.is_none()
        && !args.sample
        && !args.json
        && std::io::stdin().is_terminal()
        && std::io::stdout().is_terminal()
    {
        return super::wizard::run_config(&rayos_wizard::Config {
            disks: args.target.clone().into_iter().collect(),
            sector_size: args.sector_size,
            save_answers: None,
            system_image: args.system_image.clone(),
            recovery_image: args.recovery_image.clone(),
            linux_vm_image: args.linux_vm_image.clone(),
            systemd_boot: args.systemd_boot.clone(),
            dry_run: args.dry_run,
            nvram: !args.no_nvram,
            allow_bios: false,
            apply: ApplyOptions::default(),
            writing_guard: Some(super::wizard::install_lock),
        });
    }
    eprintln!("{}", Marker::Installer(InstallerMarker::EngineStarted));
    let r = install(args);
    let end = match &r {
        Ok(_) => InstallerMarker::EngineComplete,
        Err(_) => InstallerMarker::EngineFailed,
    };
    eprintln!("{}", Marker::Installer(end));
    r
}

fn install(args: Args) -> anyhow::Result<ExitCode> {
    let answers = match &args.answers {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| bad(format!("cannot read answer file {}: {e}", p.display())))?;
            Answers::parse(&p.display().to_string(), &text).map_err(|e| bad(e.to_string()))?
        }
        None if args.sample => Answers::defaults(Mode::FreeSpace),
        None => {
            return Err(bad(
                "--answers FILE is required without a terminal (see docs/answer-file.md; on a terminal `rayos install` runs the wizard; `--sample` plans for a built-in sample disk)",
            ));
        }
    };
    super::check_sector_size(args.sector_size)?;

    let (disk, facts) = if args.sample {
        (rayos_install::sample::sample_disk(), Facts::default())
    } else {
        let target = match (&args.target, &answers.target.disk) {
            (Some(t), Some(a)) if t != a => {
                eprintln!(
                    "rayos install: --target {} overrides [target].disk = {} of the answer file",
                    t.display(),
                    a.display()
                );
                t.clone()
            }
            (Some(t), _) => t.clone(),
            (None, Some(a)) => a.clone(),
            (None, None) => {
                return Err(bad(
                    "no target disk: pass --target PATH or set [target].disk in the answer file",
                ));
            }
        };
        super::check_disk_exists(&target)?;
        let disk = rayos_disk::probe_path(&target, args.sector_size)
            .with_context(|| format!("cannot read {}", target.display()))?;
        let facts = rayos_install::facts::gather(&disk)
            .with_context(|| format!("cannot inspect the RayOS install on {}", target.display()))?;
        (disk, facts)
    };

    let real = !(args.dry_run || args.sample);
    if real && args.system_image.is_none() {
        return Err(bad(
            "--system-image FILE is required to install (the RayOS UKI; `cargo xtask media` builds build/rayos.efi)",
        ));
    }
    let opts = PlanOptions {
        system_image: args.system_image.clone(),
        recovery_image: args.recovery_image.clone(),
        linux_vm_image: args.linux_vm_image.clone(),
        systemd_boot: args.systemd_boot.clone(),
        nvram: !args.no_nvram && Path::new(rayos_base::efivar::EFIVARS_DIR).is_dir(),
        ..PlanOptions::default()
    };
    let plan = plan::make_plan(&disk, &answers, &facts, &opts).map_err(|e| bad(e.to_string()))?;
    eprintln!(
        "{}",
        Marker::Installer(InstallerMarker::EnginePlanGenerated)
    );

    if !real {
        if args.json {
            println!("{}", plan.to_json());
        } else {
            print!("{}", plan::render(&plan));
            println!("\nDry run: nothing was written.");
        }
        return Ok(ExitCode::SUCCESS);
    }

    if !args.yes {
        confirm(&plan)?;
    }
    for n in &plan.notes {
        eprintln!("rayos install: note: {n}");
    }

    let json = args.json;
    let bar = !json && std::io::stderr().is_terminal();
    let mut progress = |ev: &Event| {
        if json && let Ok(line) = serde_json::to_string(ev) {
            println!("{line}");
            let _ = std::io::stdout().flush();
        }
        match ev {
            Event::StepStarted { step, index, total } if bar => {
                let done = index * 30 / total;
                eprint!(
                    "\r[{}{}] {}/{} {step:<20}",
                    "#".repeat(done),
                    ".".repeat(30 - done),
                    index + 1,
                    total
                );
                let _ = std::io::stderr().flush();
            }
            Event::StepDone {
                step,
                index,
                total,
                seconds,
            } => {
                if bar && index + 1 == *total {
                    eprintln!("\r[{}] {total}/{total} done{:<20}", "#".repeat(30), "");
                }
                if !bar {
                    eprintln!(
                        "rayos install: step {}/{total} {step} done in {seconds:.2}s",
                        index + 1
                    );
                }
                eprintln!(
                    "{}",
                    Marker::Installer(InstallerMarker::EngineStep(step.clone()))
                );
            }
            Event::Note { message } => eprintln!("rayos install: {message}"),
            _ => {}
        }
    };
    // Tells PID 1 (installer media) a disk is being written.
    let _writing =
        rayos_init::control::hold_install_lock(Path::new(rayos_base::paths::INSTALL_LOCK));
    let report =
        rayos_install::apply(&plan, &ApplyOptions::default(), &mut progress).map_err(|e| {
            // Refused before the first write (a reused ESP that is damaged,
            // larger than its partition, or full): bad input, exit code 2.
            let refusal = e.is_refusal();
            let e = anyhow::Error::new(e)
                .context(format!("install onto {} failed", plan.target.display()));
            if refusal {
                e.context(Exit::new(exit::BAD_INPUT, "refused"))
            } else {
                e
            }
        })?;
    if json {
        println!(
            "{}",
            serde_json::json!({"event": "complete", "manifest": report.manifest, "boot_entry": report.boot_entry, "seconds": report.seconds})
        );
    } else {
        println!(
            "RayOS {} installed on {} in {:.1}s (install id {}).",
            report.manifest.rayos_version,
            plan.target.display(),
            report.seconds,
            report.manifest.install_id
        );
        if let Some(n) = report.boot_entry {
            println!("UEFI boot entry Boot{n:04X} \"RayOS\" is first in BootOrder.");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Shows the plan and asks for the disk's path to be typed back.
fn confirm(p: &plan::Plan) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(bad(
            "refusing to write without confirmation: there is no terminal to ask on; pass --yes (after checking the plan with --dry-run)",
        ));
    }
    eprint!("{}", plan::render(p));
    eprint!(
        "\nThis writes to {}. Type its path to go on: ",
        p.target.display()
    );
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    if Path::new(line.trim()) != p.target {
        return Err(Exit::new(exit::FAILED, "not confirmed: nothing was written").into());
    }
    Ok(())
}
