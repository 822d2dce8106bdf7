//! The installer wizard: the full-screen text face of the installer engine
//! (`rayos-install`), with an interactive partition manager.
//!
//! Layers: [`layout`] (the person's partition edits, mapped onto the
//! engine's answer modes and planner — pure) → [`wizard`] (the screens as a
//! state machine: `Wizard::handle(Key) -> Effect` — pure) → [`view`]
//! (ratatui drawing, ASCII only) → [`run`] (the terminal, the keyboard and
//! the apply thread). Tests drive the state machine and snapshot the view
//! on ratatui's `TestBackend`; the real-terminal tests drive `rayos wizard`
//! in tmux.
//!
//! Guarantees: the disks are read before the first screen and again when
//! one appears or goes (when the wizard offers every disk of the machine;
//! the chosen disk's report is kept while it is there); nothing is written
//! before the disk's name is typed on the Summary; the plan
//! applied is the engine's `Plan` (the same `make_plan`, `validate` and
//! `apply` as `rayos install --answers`).
//!
//! Limits: one target disk per install; the terminal must be at least
//! 80x24; see [`layout`] for what answer files cannot repeat.

pub mod answers_toml;
pub mod key;
pub mod layout;
mod term;
pub mod view;
pub mod wizard;

use std::path::{Path, PathBuf};

use rayos_install::answers::{Answers, Mode};
use rayos_install::apply::ApplyOptions;
use rayos_install::plan::{Facts, Plan, PlanOptions, SYSTEMD_BOOT_HOST};

pub use key::Key;
pub use layout::Planned;
pub use wizard::{After, DiskChoice, Effect, Screen, Setup, Wizard};

/// What [`run`] is asked to do.
#[derive(Debug, Clone)]
pub struct Config {
    /// Disks (block devices or image files) to offer; empty: every block
    /// device of the machine.
    pub disks: Vec<PathBuf>,
    /// Logical sector size of image files without a table (512 or 4096).
    pub sector_size: Option<u32>,
    /// Write the answers of the confirmed plan here (TOML).
    pub save_answers: Option<PathBuf>,
    /// The RayOS UKI to install (required unless `dry_run`).
    pub system_image: Option<PathBuf>,
    /// The recovery UKI (optional: without it no recovery boot entry).
    pub recovery_image: Option<PathBuf>,
    /// The Debian VM image (optional: without it the Linux VM is the
    /// bundled test guest).
    pub linux_vm_image: Option<PathBuf>,
    /// The systemd-boot EFI binary copied onto the ESP.
    pub systemd_boot: PathBuf,
    /// Stop after the confirmation: save answers, write nothing.
    pub dry_run: bool,
    /// Add a UEFI boot entry (block devices on EFI machines only).
    pub nvram: bool,
    /// Go on although the machine did not boot in UEFI mode.
    pub allow_bios: bool,
    /// How the plan is applied (the installer engine's options).
    pub apply: ApplyOptions,
    /// Called just before the disk is written; what it returns is held
    /// until writing ends. The installer media hold PID 1's install lock
    /// with it, so no unattended install is offered meanwhile.
    pub writing_guard: Option<fn() -> Box<dyn std::any::Any + Send>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            disks: Vec::new(),
            sector_size: None,
            save_answers: None,
            system_image: None,
            recovery_image: None,
            linux_vm_image: None,
            systemd_boot: PathBuf::from(SYSTEMD_BOOT_HOST),
            dry_run: false,
            nvram: true,
            allow_bios: false,
            apply: ApplyOptions::default(),
            writing_guard: None,
        }
    }
}

/// How the wizard ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// RayOS was installed; the person chose what happens next (the caller
    /// reboots or powers off).
    Installed {
        /// The plan that was applied.
        plan: Box<Plan>,
        /// What the person chose to do next.
        after: After,
    },
    /// Dry run: the plan the person confirmed; nothing was written.
    DryRun {
        /// The confirmed plan.
        plan: Box<Plan>,
    },
    /// The person left; nothing was written.
    Cancelled,
}

/// Why the wizard could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum WizardError {
    /// stdin or stdout is not a terminal.
    #[error(
        "the wizard needs a terminal on stdin and stdout: use `rayos install --answers FILE` without one"
    )]
    NoTerminal,
    /// Installing needs the RayOS UKI and none was given.
    #[error(
        "--system-image FILE is required to install (the RayOS UKI); use --dry-run to only plan"
    )]
    NoSystemImage,
    /// The machine's disks could not be listed.
    #[error("cannot list the disks of this machine")]
    ListDisks(#[source] rayos_disk::EnumerateError),
    /// A disk given on the command line could not be read; holds its path.
    #[error("cannot read {0}: check the path (`rayos disks` lists the disks)")]
    ReadDisk(PathBuf, #[source] rayos_disk::EnumerateError),
    /// Reading keys from or drawing on the terminal failed.
    #[error("the terminal failed")]
    Terminal(#[source] std::io::Error),
    /// The answer file could not be written; holds its path.
    #[error("cannot save the answer file {0}")]
    SaveAnswers(PathBuf, #[source] rayos_state::AtomicError),
}

/// Reads the disks and what the wizard shows before the first screen.
pub fn setup(config: &Config) -> Result<Setup, WizardError> {
    let disks = disk_choices(config)?;
    let efivars = Path::new(rayos_base::efivar::EFIVARS_DIR).is_dir();
    Ok(Setup {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uefi: Path::new(rayos_base::efivar::FIRMWARE_DIR).is_dir(),
        allow_bios: config.allow_bios,
        disks,
        opts: PlanOptions {
            system_image: config.system_image.clone(),
            recovery_image: config.recovery_image.clone(),
            linux_vm_image: config.linux_vm_image.clone(),
            systemd_boot: config.systemd_boot.clone(),
            nvram: config.nvram && efivars,
            ..PlanOptions::default()
        },
        dry_run: config.dry_run,
        answers: Answers::defaults(Mode::FreeSpace),
    })
}

/// The disks the wizard offers, read now, with what it knows about each.
pub fn disk_choices(config: &Config) -> Result<Vec<DiskChoice>, WizardError> {
    let disks = if config.disks.is_empty() {
        rayos_disk::list_block_devices().map_err(WizardError::ListDisks)?
    } else {
        config
            .disks
            .iter()
            .map(|p| {
                rayos_disk::probe_path(p, config.sector_size)
                    .map_err(|e| WizardError::ReadDisk(p.clone(), e))
            })
            .collect::<Result<_, _>>()?
    };
    Ok(disks
        .into_iter()
        .map(|disk| {
            let (facts, inspect_error) = match rayos_install::facts::gather(&disk) {
                Ok(f) => (f, None),
                Err(e) => (
                    Facts::default(),
                    Some(format!("cannot inspect its RayOS install: {e}")),
                ),
            };
            let refusal = wizard::refusal(&disk, &facts).or(inspect_error);
            DiskChoice {
                disk,
                facts,
                refusal,
            }
        })
        .collect())
}

/// Saves the answers of a confirmed plan (with a comment when the answers
/// alone do not repeat the install).
pub fn save_answers(path: &Path, planned: &Planned) -> Result<(), WizardError> {
    let mut comment = vec![format!(
        "Answer file written by the RayOS {} installer wizard.",
        env!("CARGO_PKG_VERSION")
    )];
    if !planned.repeatable {
        comment.push(
            "The wizard also made these partition changes, which answer files cannot express;"
                .into(),
        );
        comment
            .push("make them first (or use mode = \"whole-disk\") to repeat this install:".into());
        comment.extend(planned.unexpressed.iter().map(|u| format!("  - {u}")));
    }
    let text = answers_toml::to_toml(&planned.answers, &comment);
    rayos_state::write_atomic(path, text.as_bytes())
        .map_err(|e| WizardError::SaveAnswers(path.to_path_buf(), e))
}

/// Runs the wizard on the terminal: reads the disks, shows the screens,
/// and applies the confirmed plan.
pub fn run(config: &Config) -> Result<Outcome, WizardError> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        return Err(WizardError::NoTerminal);
    }
    if !config.dry_run && config.system_image.is_none() {
        return Err(WizardError::NoSystemImage);
    }
    let setup = setup(config)?;
    term::run(config, Wizard::new(setup))
}
