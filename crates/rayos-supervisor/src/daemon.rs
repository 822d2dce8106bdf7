//! `rayos daemon`: the process around [`Supervisor`]: one daemon per data
//! volume (an exclusive `flock` on `<state-dir>/rayosd.lock`), the API
//! socket, the monitor thread, autostart, and SIGTERM/SIGINT.
//!
//! Start-up order: lock → load policy and registry → re-attach to device
//! models still running → bind the socket (`RAYOS_DAEMON_READY:<socket>` on
//! stdout) → autostart in the background. On SIGTERM or SIGINT: host
//! shutdown ([`Supervisor::shutdown`]), remove the socket, return. Device
//! models outlive a daemon that is killed or crashes; the next one
//! re-attaches.
//!
//! Signals are delivered through a self-pipe (`rayos_base::sys::SignalPipe`):
//! the handler only writes one byte (async-signal-safe), the main thread
//! waits on the pipe. No signal mask is changed, so child processes (QEMU,
//! swtpm) inherit nothing odd.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rayos_base::marker::{AccelMarker, Marker};
use rayos_base::sys::{self, SignalPipe};
use rayos_vmm::Vmm;

use crate::server::{self, ServeError, ServerLimits};
use crate::supervisor::{Config, OpError, Supervisor, marker};

/// How `rayos daemon` runs: the data volume, the socket and the limits.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The data volume (registry, policy, VM directories).
    pub state_dir: PathBuf,
    /// The API socket; its directory holds the VMs' run directories.
    pub socket: PathBuf,
    /// cgroup v2 directory for VM CPU weights (`None` turns them off).
    pub cgroup_root: Option<PathBuf>,
    /// Everything host shutdown does (saving or stopping every VM) must finish
    /// within this.
    pub shutdown_deadline: Duration,
    /// How long a stop waits for the guest after the ACPI power button.
    pub stop_timeout: Duration,
    /// Connection limits of the API.
    pub api: ServerLimits,
}

impl DaemonOptions {
    /// Production options for the data volume `state_dir` and the socket
    /// `socket`.
    pub fn new(state_dir: impl Into<PathBuf>, socket: impl Into<PathBuf>) -> Self {
        DaemonOptions {
            state_dir: state_dir.into(),
            socket: socket.into(),
            cgroup_root: Some(PathBuf::from("/sys/fs/cgroup/rayos")),
            shutdown_deadline: Duration::from_secs(90),
            stop_timeout: Duration::from_secs(60),
            api: ServerLimits::default(),
        }
    }
}

/// Why the daemon could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The data volume's directory could not be made.
    #[error("cannot create the state directory {path}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Another daemon holds the data volume's lock; holds the lock file.
    #[error(
        "another rayosd already uses {0}: stop it first (rayosd keeps one daemon per data volume)"
    )]
    Locked(PathBuf),
    /// The lock file could not be opened or locked.
    #[error("cannot lock {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The signal handlers could not be installed.
    #[error("cannot set up signal handling")]
    Signals(#[source] io::Error),
    /// Opening the registry, policy or VMs failed.
    #[error(transparent)]
    Open(#[from] OpError),
    /// The API socket could not be set up.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

fn lock_state_dir(dir: &Path) -> Result<File, DaemonError> {
    std::fs::create_dir_all(dir).map_err(|source| DaemonError::StateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join("rayosd.lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| DaemonError::Lock {
            path: path.clone(),
            source,
        })?;
    match sys::try_lock_exclusive(&f) {
        Ok(true) => Ok(f),
        Ok(false) => Err(DaemonError::Locked(dir.to_path_buf())),
        Err(source) => Err(DaemonError::Lock { path, source }),
    }
}

/// Runs the daemon until SIGTERM/SIGINT; returns after host shutdown.
pub fn run(opts: DaemonOptions, vmm: Arc<dyn Vmm>) -> Result<(), DaemonError> {
    let mut signals =
        SignalPipe::install(&[sys::SIGTERM, sys::SIGINT]).map_err(DaemonError::Signals)?;
    let _lock = lock_state_dir(&opts.state_dir)?;
    let run_dir = opts
        .socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut cfg = Config::new(&opts.state_dir, run_dir);
    cfg.cgroup_root = opts.cgroup_root.clone();
    cfg.shutdown_deadline = opts.shutdown_deadline;
    cfg.stop_timeout = opts.stop_timeout;
    // Decided before anything can start a VM, and said once on the
    // console (a probe, when there is /dev/kvm, takes a few seconds at most).
    let accel = vmm.accelerator();
    marker(&Marker::Accel(match accel.reason() {
        None => AccelMarker::Kvm,
        Some(r) => AccelMarker::Tcg {
            reason: r.to_string(),
        },
    }));
    let sup = Supervisor::open(cfg, vmm)?;
    let listener = server::bind(&opts.socket)?;
    {
        let sup = Arc::clone(&sup);
        let limits = opts.api;
        std::thread::Builder::new()
            .name("api-accept".into())
            .spawn(move || server::serve(sup, listener, limits))
            .map_err(DaemonError::Signals)?;
    }
    {
        let sup = Arc::clone(&sup);
        std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || sup.monitor_loop())
            .map_err(DaemonError::Signals)?;
    }
    // After the API socket is bound: bridge sessions answer through it.
    crate::bridge::spawn(Arc::clone(&sup), opts.socket.clone()).map_err(DaemonError::Signals)?;
    marker(&Marker::DaemonReady {
        socket: opts.socket.display().to_string(),
    });
    {
        let sup = Arc::clone(&sup);
        std::thread::Builder::new()
            .name("autostart".into())
            .spawn(move || {
                sup.autostart();
                marker(&Marker::AutostartDone);
            })
            .map_err(DaemonError::Signals)?;
    }
    let sig = signals.wait();
    eprintln!("rayosd: signal {sig}: saving VMs and exiting");
    let results = sup.shutdown();
    let _ = std::fs::remove_file(&opts.socket);
    marker(&Marker::DaemonStopped(results.len()));
    Ok(())
}
