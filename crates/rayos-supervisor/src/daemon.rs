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
//! Signals are delivered through a self-pipe: the handler only writes one
//! byte (async-signal-safe), the main thread waits on the pipe. No signal
//! mask is changed, so child processes (QEMU, swtpm) inherit nothing odd.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use rayos_vmm::Vmm;

use crate::server::{self, ServeError, ServerLimits};
use crate::supervisor::{Config, OpError, Supervisor, marker};

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// cgroup v2 directory for VM CPU weights (`None` turns them off).
    pub cgroup_root: Option<PathBuf>,
    pub shutdown_deadline: Duration,
    pub stop_timeout: Duration,
    /// Connection limits of the API.
    pub api: ServerLimits,
}

impl DaemonOptions {
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

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create the state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "another rayosd already uses {0}: stop it first (rayosd keeps one daemon per data volume)"
    )]
    Locked(PathBuf),
    #[error("cannot lock {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up signal handling")]
    Signals(#[source] io::Error),
    #[error(transparent)]
    Open(#[from] OpError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Write end of the self-pipe, for the signal handler.
static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; `b` lives for the call and
        // the fd is the pipe's write end, which is never closed.
        unsafe {
            libc::write(fd, (&b as *const u8).cast(), 1);
        }
    }
}

/// Installs handlers for SIGTERM and SIGINT; returns the read end to wait on.
fn install_signal_pipe() -> io::Result<File> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    SIGNAL_FD.store(fds[1], Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask"
        // value; the handler is an extern "C" fn that only calls write(2).
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: fds[0] is a fresh descriptor that nothing else owns.
    Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) })
}

/// Blocks until a handled signal arrives; returns its number.
fn wait_signal(pipe: &mut File) -> i32 {
    use std::io::Read;
    let mut b = [0u8; 1];
    loop {
        match pipe.read(&mut b) {
            Ok(1) => return b[0] as i32,
            Ok(_) => return libc::SIGTERM,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return libc::SIGTERM,
        }
    }
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
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            DaemonError::Locked(dir.to_path_buf())
        } else {
            DaemonError::Lock { path, source: e }
        });
    }
    Ok(f)
}

/// Runs the daemon until SIGTERM/SIGINT; returns after host shutdown.
pub fn run(opts: DaemonOptions, vmm: Arc<dyn Vmm>) -> Result<(), DaemonError> {
    let mut signals = install_signal_pipe().map_err(DaemonError::Signals)?;
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
    marker(&format!("RAYOS_DAEMON_READY:{}", opts.socket.display()));
    {
        let sup = Arc::clone(&sup);
        std::thread::Builder::new()
            .name("autostart".into())
            .spawn(move || {
                sup.autostart();
                marker("RAYOS_AUTOSTART_DONE");
            })
            .map_err(DaemonError::Signals)?;
    }
    let sig = wait_signal(&mut signals);
    eprintln!("rayosd: signal {sig}: saving VMs and exiting");
    let results = sup.shutdown();
    let _ = std::fs::remove_file(&opts.socket);
    marker(&format!("RAYOS_DAEMON_STOPPED:{}", results.len()));
    Ok(())
}
