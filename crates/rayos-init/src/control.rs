//! How the rest of the system talks to PID 1, and what PID 1 tells it.
//!
//! Protocol:
//! - **Requests are signals to PID 1** (the sysvinit/busybox conventions, so
//!   the kernel and any tool already know them): `SIGUSR2` or `SIGPWR` →
//!   power off; `SIGTERM` or `SIGINT` (Ctrl-Alt-Del) → reboot; `SIGUSR1` →
//!   power off (halt is not useful on a machine nobody watches). The kernel
//!   only lets root signal PID 1. [`request`] refuses to signal a PID 1 that
//!   is not RayOS's init, so `rayos shutdown` on a developer's machine does
//!   not take it down.
//! - **State is a file**: init rewrites `/run/rayos/init-status.json`
//!   atomically on every change ([`InitStatus`]); `rayos status` reads it.
//! - **"A disk is being written" is a lock**: whoever applies an install
//!   plan (`rayos install`, the wizard) holds a shared `flock` on
//!   `rayos_base::paths::INSTALL_LOCK` while it writes ([`hold_install_lock`]). Before PID 1
//!   stops the consoles to offer an unattended install from a stick plugged
//!   in later, it takes the lock exclusively ([`claim_install_lock`]): if an
//!   install is writing it leaves everything alone, and an install that
//!   starts meanwhile waits for the claim to end. The kernel drops the lock
//!   with the process, so a crash never leaves it stale.
//!
//! Rejected: a request socket served by PID 1. It needs a listener thread
//! or a second poll source in PID 1 for two verbs that signals already
//! carry; status is better served by a file any reader can open even while
//! init is busy shutting down.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cmdline::Mode;
use crate::sys::PowerAction;

use rayos_base::paths::INIT_STATUS;

/// Why `rayos status` or `rayos poweroff`/`reboot` could not talk to PID 1.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// PID 1 is not RayOS init.
    #[error("PID 1 is not RayOS init (this is not a running RayOS system): refusing to signal it")]
    NotRayos,
    /// The signal could not be sent.
    #[error("cannot signal PID 1")]
    Signal(#[source] io::Error),
    /// The status file could not be read.
    #[error("cannot read the init status {path}")]
    ReadStatus {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The status file does not parse.
    #[error("the init status {path} does not parse")]
    ParseStatus {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// The result of one boot step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step's name.
    pub name: String,
    /// `ok`, `warning`, `failed`, `skipped`
    pub result: String,
    /// What it said (empty when nothing).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// How long it took, in milliseconds.
    pub millis: u64,
}

/// One supervised service as `rayos status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// The service's name.
    pub name: String,
    /// Its pid, while it runs.
    pub pid: Option<i32>,
    /// `running`, `restarting`, `stopped`, `exited`
    pub state: String,
    /// How many times it was restarted.
    pub restarts: u32,
    /// Its last exit code, if it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<i32>,
}

/// What `/run/rayos/init-status.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitStatus {
    /// The RayOS version running.
    pub version: String,
    /// This boot's id.
    pub boot_id: String,
    /// What this boot does.
    pub mode: Mode,
    /// `booting`, `running`, `installing`, `shutting-down`
    pub phase: String,
    /// When the boot began (Unix seconds).
    pub started_unix: u64,
    /// Every boot step so far, in order.
    pub steps: Vec<StepRecord>,
    /// Problems a person must know about (no data volume, fsck failure,
    /// bad policy), each with what to do next.
    pub faults: Vec<String>,
    /// The data volume's device, once found.
    pub data_device: Option<String>,
    /// Where the data volume is mounted, while it is.
    pub data_mounted: Option<String>,
    /// Whether the data volume is mounted read-only.
    pub data_read_only: bool,
    /// The supervised services.
    pub services: Vec<ServiceStatus>,
    /// Whether rayosd became healthy.
    pub ready: bool,
    /// Whether the Linux VM runs.
    pub linux_vm_ready: bool,
    /// The UKI blessed this boot (its counter dropped), if it was.
    pub blessed: Option<String>,
}

impl InitStatus {
    /// Reads the status file at `path`.
    pub fn read(path: &Path) -> Result<InitStatus, ControlError> {
        let text = fs::read(path).map_err(|source| ControlError::ReadStatus {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| ControlError::ParseStatus {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Written with temp file + rename so readers never see half a file
    /// (tmpfs: no fsync needed).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        fs::write(&tmp, text)?;
        fs::rename(&tmp, path)
    }
}

/// The signal that asks PID 1 for `action`.
pub fn signal_for(action: PowerAction) -> i32 {
    match action {
        PowerAction::PowerOff => libc::SIGUSR2,
        PowerAction::Reboot => libc::SIGTERM,
    }
}

/// What PID 1 does on signal `sig` (`None`: not a power request).
pub fn action_for(sig: i32) -> Option<PowerAction> {
    match sig {
        libc::SIGUSR1 | libc::SIGUSR2 | libc::SIGPWR => Some(PowerAction::PowerOff),
        libc::SIGTERM | libc::SIGINT => Some(PowerAction::Reboot),
        _ => None,
    }
}

/// True when PID 1 runs the same executable as this process (RayOS's
/// `/init` is the `rayos` binary), or the status file says init is RayOS.
pub fn pid1_is_rayos_init(status_file: &Path) -> bool {
    let same_exe = match (fs::metadata("/proc/1/exe"), fs::metadata("/proc/self/exe")) {
        (Ok(a), Ok(b)) => {
            use std::os::unix::fs::MetadataExt;
            a.dev() == b.dev() && a.ino() == b.ino()
        }
        _ => false,
    };
    same_exe
        || (status_file.is_file()
            && fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "init"))
}

/// Asks PID 1 to power off or reboot.
pub fn request(action: PowerAction) -> Result<(), ControlError> {
    if !pid1_is_rayos_init(Path::new(INIT_STATUS)) {
        return Err(ControlError::NotRayos);
    }
    if crate::sys::kill(1, signal_for(action)) {
        Ok(())
    } else {
        Err(ControlError::Signal(io::Error::last_os_error()))
    }
}

/// A held lock on the install lock file (released when dropped).
#[derive(Debug)]
pub struct InstallLock {
    _file: fs::File,
}

fn open_lock(path: &Path) -> Option<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .ok()
}

/// Says "an install is writing" to PID 1 until the returned lock is
/// dropped. Waits while PID 1 holds its claim (a few seconds at most).
/// `None` where there is no RayOS run directory (a developer's host: no
/// PID 1 to tell).
pub fn hold_install_lock(path: &Path) -> Option<InstallLock> {
    if !path.parent().is_some_and(Path::is_dir) {
        return None;
    }
    let f = open_lock(path)?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockShared).ok()?;
    Some(InstallLock { _file: f })
}

/// PID 1's claim before it stops the consoles: `None` while an install
/// holds the lock.
pub fn claim_install_lock(path: &Path) -> Option<InstallLock> {
    let f = open_lock(path)?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).ok()?;
    Some(InstallLock { _file: f })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_lock_tells_pid1_an_install_is_writing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("install.lock");
        let claim = claim_install_lock(&p).expect("nobody writes");
        drop(claim);
        let w1 = hold_install_lock(&p).expect("run dir exists");
        let w2 = hold_install_lock(&p).expect("two writers do not exclude each other");
        assert!(claim_install_lock(&p).is_none(), "an install is writing");
        drop(w1);
        assert!(claim_install_lock(&p).is_none(), "one still is");
        drop(w2);
        assert!(claim_install_lock(&p).is_some());
        assert!(hold_install_lock(&d.path().join("no/such/dir/install.lock")).is_none());
    }

    #[test]
    fn signal_protocol_round_trips() {
        for a in [PowerAction::PowerOff, PowerAction::Reboot] {
            assert_eq!(action_for(signal_for(a)), Some(a));
        }
        assert_eq!(action_for(libc::SIGINT), Some(PowerAction::Reboot));
        assert_eq!(action_for(libc::SIGPWR), Some(PowerAction::PowerOff));
        assert_eq!(action_for(libc::SIGCHLD), None);
        assert_eq!(action_for(libc::SIGHUP), None);
    }

    #[test]
    fn refuses_to_signal_a_foreign_pid1() {
        // The test runner's PID 1 is not this test binary.
        let d = tempfile::tempdir().unwrap();
        assert!(!pid1_is_rayos_init(&d.path().join("absent.json")));
    }

    #[test]
    fn status_file_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let s = InitStatus {
            version: "0.1.0".into(),
            boot_id: "b".into(),
            mode: Mode::Installed,
            phase: "running".into(),
            started_unix: 1,
            steps: vec![StepRecord {
                name: "mount-data".into(),
                result: "ok".into(),
                message: String::new(),
                millis: 12,
            }],
            faults: vec!["x".into()],
            data_device: Some("/dev/vda3".into()),
            data_mounted: Some(rayos_base::paths::DATA.into()),
            data_read_only: false,
            services: vec![],
            ready: true,
            linux_vm_ready: false,
            blessed: None,
        };
        let p = d.path().join("s.json");
        s.write(&p).unwrap();
        assert_eq!(InitStatus::read(&p).unwrap(), s);
        fs::write(&p, "{").unwrap();
        assert!(matches!(
            InitStatus::read(&p),
            Err(ControlError::ParseStatus { .. })
        ));
    }
}
