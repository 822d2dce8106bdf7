//! What the steps share: one [`State`] every step reads and writes, the
//! [`Step`] type the tables are made of, and running one step.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use rayos_base::marker::Marker;
use rayos_base::paths;

use super::Platform;
use super::platform::PowerRequest;
use crate::cmdline::{BootParams, Mode};
use crate::control::{InitStatus, StepRecord};
use crate::log;
use crate::usb::Settle;
use crate::volumes::Install;

/// What a step reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepResult {
    /// Worked; says what was done.
    Ok(String),
    /// Worked, with something to tell.
    Warn(String),
    /// Did not work; the boot degrades (or stops, for a fatal step).
    Fail(String),
    /// Not needed on this machine.
    Skip(String),
}

/// What a step runs: it reads and changes the state and acts through the
/// platform.
pub type StepFn = fn(&mut State, &mut dyn Platform) -> StepResult;

/// One named step of a table.
pub struct Step {
    /// The name in logs, markers and the status (`RAYOS_BOOT:<name>`).
    pub name: &'static str,
    /// What it does.
    pub run: StepFn,
    /// Its failure stops the boot (the crash path): only the kernel
    /// filesystems, without which nothing works.
    pub fatal: bool,
}

/// A step that is not fatal.
pub const fn step(name: &'static str, run: StepFn) -> Step {
    Step {
        name,
        run,
        fatal: false,
    }
}

/// Disks seen by the installer, to notice a stick plugged in later.
#[derive(Debug, Default)]
pub struct AnswerWatch {
    /// `/sys/block` names already looked at (or present at `find-answers`).
    pub known: BTreeSet<String>,
    /// New ones waiting for USB to settle before they are searched.
    pub fresh: BTreeSet<String>,
    /// The wait for USB to settle after a new disk appeared.
    pub settle: Option<Settle>,
    /// When the disks were last compared.
    pub last_scan: Option<Instant>,
}

/// Everything the boot, the loop and the shutdown know.
pub struct State {
    /// This program (`/usr/bin/rayos`): services are its subcommands.
    pub exe: PathBuf,
    /// The kernel command line's RayOS parameters.
    pub params: BootParams,
    /// What `rayos status` reads (written to `/run/rayos/init-status.json`).
    pub status: InitStatus,
    /// The RayOS install found on the disks (installed and recovery modes).
    pub install: Option<Install>,
    /// The running UKI's file name, as the loader's EFI variables say.
    pub image: Option<String>,
    /// The data volume's schema was migrated this boot: the old generation
    /// is dropped once the boot is blessed.
    pub schema_migrated: bool,
    /// The data volume passed its check (or could not be checked) and may
    /// be mounted read-write.
    pub data_ok: bool,
    /// Where the logs go (`/run/rayos/logs` until the data volume has them).
    pub logs_dir: PathBuf,
    /// The kernel's console log level at boot. The installer's console
    /// lowers it while the full-screen wizard runs (a kernel notice would
    /// scroll the wizard's screen); PID 1 puts it back before the
    /// shutdown's markers, whatever became of that console.
    pub console_level: Option<u8>,
    /// Set by a step (a power request during the countdown, a finished
    /// install): the machine goes down after it.
    pub power_request: Option<PowerRequest>,
    /// The action of the shutdown under way.
    pub shutting_down: Option<crate::sys::PowerAction>,
    /// The status changed since it was last written.
    pub status_dirty: bool,
    // installer mode
    /// Installer mode: the disk the installer medium is on.
    pub medium_disk: Option<PathBuf>,
    /// Installer mode: the UKI to install (on the medium).
    pub uki: Option<PathBuf>,
    /// Installer mode: the answer file found (copied to `/run`).
    pub answers: Option<PathBuf>,
    /// The volume the answer file came from (`/dev/sda`), for messages.
    pub answers_source: Option<String>,
    /// Installer mode: the pid of the unattended `rayos install`, while it
    /// runs.
    pub installer_pid: Option<i32>,
    /// Installer mode: disks that appear after `find-answers` are looked at
    /// for an answer file while no install runs.
    pub watch: Option<AnswerWatch>,
    // milestones after the steps
    /// When rayosd was started.
    pub rayosd_started: Option<Instant>,
    /// When rayosd's health was last asked for.
    pub last_health_try: Option<Instant>,
    /// When rayosd's VMs were last looked at.
    pub last_vm_poll: Option<Instant>,
    /// The fault "rayosd is not healthy" was reported already.
    pub health_warned: bool,
    /// Names of VMs rayosd reports started, from its event stream
    /// (followed once rayosd is healthy, until the Linux VM runs).
    pub vm_starts: Option<Receiver<String>>,
    /// VM-storage partitions mounted under the data volume (unmounted
    /// before it at shutdown).
    pub vm_storage_mounts: Vec<PathBuf>,
    /// `machine.toml`'s keyboard layout, once read.
    pub keyboard: Option<String>,
}

impl State {
    /// The state before the first step, for the program `exe`.
    pub fn new(exe: PathBuf) -> State {
        State {
            exe,
            params: BootParams::parse(""),
            status: InitStatus {
                version: env!("CARGO_PKG_VERSION").to_string(),
                boot_id: String::new(),
                mode: Mode::Installed,
                phase: "booting".into(),
                started_unix: log::unix_time(),
                steps: Vec::new(),
                faults: Vec::new(),
                data_device: None,
                data_mounted: None,
                data_read_only: false,
                services: Vec::new(),
                ready: false,
                linux_vm_ready: false,
                blessed: None,
            },
            install: None,
            image: None,
            schema_migrated: false,
            data_ok: false,
            logs_dir: PathBuf::from(paths::RUN_LOGS),
            console_level: None,
            power_request: None,
            shutting_down: None,
            status_dirty: true,
            medium_disk: None,
            uki: None,
            answers: None,
            answers_source: None,
            installer_pid: None,
            watch: None,
            rayosd_started: None,
            last_health_try: None,
            last_vm_poll: None,
            health_warned: false,
            vm_starts: None,
            vm_storage_mounts: Vec::new(),
            keyboard: None,
        }
    }

    /// Records a problem a person must know about (shown on the console,
    /// in `rayos status` and the boot record).
    pub fn fault(&mut self, f: impl Into<String>) {
        self.status.faults.push(f.into());
        self.status_dirty = true;
    }

    /// The data volume is mounted read-write after a good check: rayosd,
    /// records and migrations may write to it.
    pub fn data_writable(&self) -> bool {
        self.data_ok && self.status.data_mounted.is_some() && !self.status.data_read_only
    }
}

/// Runs `s`: its `RAYOS_BOOT:<step>` marker, the result on the console and
/// in the log, its record in the status file. A fatal step's failure ends
/// in the crash path.
pub fn run_step(st: &mut State, p: &mut dyn Platform, s: &Step) {
    p.marker(&Marker::Boot(s.name.to_string()));
    let t = p.now();
    let r = (s.run)(st, p);
    let millis =
        u64::try_from(p.now().saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX);
    let (result, message) = match r {
        StepResult::Ok(m) => {
            if !m.is_empty() {
                log::info(format!("{}: {m}", s.name));
            }
            ("ok", m)
        }
        StepResult::Warn(m) => {
            log::warn(format!("{}: {m}", s.name));
            ("warning", m)
        }
        StepResult::Skip(m) => {
            log::detail(format!("{}: skipped: {m}", s.name));
            ("skipped", m)
        }
        StepResult::Fail(m) => {
            log::error(format!("{}: {m}", s.name));
            if s.fatal {
                super::fatal_exit(&format!("boot step {} failed: {m}", s.name), None);
            }
            ("failed", m)
        }
    };
    st.status.steps.push(StepRecord {
        name: s.name.to_string(),
        result: result.to_string(),
        message,
        millis,
    });
    st.status_dirty = true;
    if p.is_mounted(std::path::Path::new("/run")) {
        super::record::write_status(st, p);
    }
}
