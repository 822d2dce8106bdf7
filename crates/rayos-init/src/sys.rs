//! Thin wrappers over the Linux calls PID 1 needs: mounts, signals through a
//! signalfd, reaping, reboot. Everything that is `unsafe` in this crate lives
//! here, each block with its invariant.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use rustix::mount::{MountFlags, UnmountFlags};

/// Why a mount, an unmount or the signal setup failed.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// A mount failed.
    #[error("cannot mount {fstype} {source_dev} on {target}")]
    Mount {
        /// The filesystem type.
        fstype: String,
        /// What was mounted (device, or `proc`, …).
        source_dev: String,
        /// Where.
        target: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// An unmount failed.
    #[error("cannot unmount {target}")]
    Unmount {
        /// Where.
        target: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A read-only remount failed.
    #[error("cannot remount {target} read-only")]
    Remount {
        /// Where.
        target: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The signal handlers could not be set up.
    #[error("cannot set up signal handling")]
    Signals(#[source] io::Error),
}

/// One mount of the kernel filesystems, as data.
pub struct KernelMount {
    /// What to mount (`proc`, `sysfs`, …).
    pub source: &'static str,
    /// Where.
    pub target: &'static str,
    /// The filesystem type.
    pub fstype: &'static str,
    /// Mount flags.
    pub flags: MountFlags,
    /// Filesystem options.
    pub data: &'static str,
}

/// The kernel filesystems every mode needs, in mount order.
pub fn kernel_mounts() -> Vec<KernelMount> {
    let nse = MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::NODEV;
    vec![
        KernelMount {
            source: "proc",
            target: "/proc",
            fstype: "proc",
            flags: nse,
            data: "",
        },
        KernelMount {
            source: "sysfs",
            target: "/sys",
            fstype: "sysfs",
            flags: nse,
            data: "",
        },
        // rayosd puts each VM in its own cgroup (CPU weights, memory limits).
        KernelMount {
            source: "cgroup2",
            target: "/sys/fs/cgroup",
            fstype: "cgroup2",
            flags: nse,
            data: "nsdelegate",
        },
        KernelMount {
            source: "devtmpfs",
            target: "/dev",
            fstype: "devtmpfs",
            flags: MountFlags::NOSUID,
            data: "mode=0755",
        },
        KernelMount {
            source: "devpts",
            target: "/dev/pts",
            fstype: "devpts",
            flags: MountFlags::NOSUID | MountFlags::NOEXEC,
            data: "mode=0620,ptmxmode=0666",
        },
        KernelMount {
            source: "tmpfs",
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: MountFlags::NOSUID | MountFlags::NODEV,
            data: "mode=1777",
        },
        KernelMount {
            source: "tmpfs",
            target: "/run",
            fstype: "tmpfs",
            flags: MountFlags::NOSUID | MountFlags::NODEV,
            data: "mode=0755",
        },
        KernelMount {
            source: "tmpfs",
            target: "/tmp",
            fstype: "tmpfs",
            flags: MountFlags::NOSUID | MountFlags::NODEV,
            data: "mode=1777",
        },
    ]
}

/// True when `target` is a mount point (from /proc/self/mountinfo).
pub fn is_mounted(target: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let t = target.to_string_lossy();
    info.lines().any(|l| l.split(' ').nth(4) == Some(&*t))
}

/// mount(2): mounts `source` of type `fstype` on `target`.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> Result<(), SysError> {
    let err = |e: io::Error| SysError::Mount {
        fstype: fstype.to_string(),
        source_dev: source.to_string(),
        target: target.display().to_string(),
        source: e,
    };
    fs::create_dir_all(target).map_err(err)?;
    let data_c = std::ffi::CString::new(data)
        .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let data_opt = (!data.is_empty()).then_some(data_c.as_c_str());
    rustix::mount::mount(source, target, fstype, flags, data_opt).map_err(|e| err(e.into()))
}

/// Mounts a filesystem someone brought (installation media) read-only,
/// without devices, set-uid or executables.
pub fn mount_foreign_ro(source: &str, target: &Path, fstype: &str) -> Result<(), SysError> {
    mount(
        source,
        target,
        fstype,
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        "",
    )
}

/// Unmounts `target`; when busy, detaches it (lazy) after remounting it
/// read-only so no more writes reach the disk.
pub fn unmount(target: &Path) -> Result<(), SysError> {
    match rustix::mount::unmount(target, UnmountFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::BUSY) => {
            let _ = rustix::mount::mount_remount(target, MountFlags::RDONLY, "");
            rustix::mount::unmount(target, UnmountFlags::DETACH).map_err(|e| SysError::Unmount {
                target: target.display().to_string(),
                source: e.into(),
            })
        }
        Err(e) => Err(SysError::Unmount {
            target: target.display().to_string(),
            source: e.into(),
        }),
    }
}

/// sync(2): flushes every filesystem's writes.
pub fn sync() {
    rustix::fs::sync();
}

/// How the machine goes down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    /// Power off.
    PowerOff,
    /// Reboot.
    Reboot,
}

/// Ends the machine. Only returns on error (not PID 1, no CAP_SYS_BOOT).
pub fn power(action: PowerAction) -> io::Error {
    let cmd = match action {
        PowerAction::PowerOff => rustix::system::RebootCommand::PowerOff,
        PowerAction::Reboot => rustix::system::RebootCommand::Restart,
    };
    match rustix::system::reboot(cmd) {
        Ok(()) => io::Error::other("reboot(2) returned"),
        Err(e) => e.into(),
    }
}

/// Makes Ctrl-Alt-Del send SIGINT to PID 1 instead of an immediate reset,
/// so it goes through the orderly shutdown.
pub fn disable_ctrl_alt_del() {
    let _ = rustix::system::reboot(rustix::system::RebootCommand::CadOff);
}

/// The signals PID 1 handles, read through a signalfd. Blocking them must
/// happen before any thread starts so every thread inherits the mask; child
/// processes get an empty mask from `std::process::Command`.
pub const HANDLED: [libc::c_int; 7] = [
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPWR,
    libc::SIGHUP,
];

/// The signals PID 1 handles, blocked and read from a signalfd (non-blocking).
pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    /// Blocks the handled signals and opens a signalfd for them.
    pub fn new() -> Result<SignalFd, SysError> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before
        // any other use, and the pointers passed are to this local.
        let fd = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in HANDLED {
                libc::sigaddset(&mut set, s);
            }
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(SysError::Signals(io::Error::last_os_error()));
            }
            libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
        };
        if fd < 0 {
            return Err(SysError::Signals(io::Error::last_os_error()));
        }
        Ok(SignalFd {
            // SAFETY: signalfd returned a new descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The descriptor, for poll(2).
    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Pending signal numbers (non-blocking; empty when none).
    pub fn read(&self) -> Vec<i32> {
        let mut out = Vec::new();
        loop {
            // SAFETY: signalfd_siginfo is plain data, zeroed is valid; read
            // writes at most its size into it.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: the buffer is `size` bytes of a live local.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if n as usize != size {
                break;
            }
            out.push(info.ssi_signo as i32);
        }
        out
    }
}

/// Makes a child start with no signal blocked. PID 1 blocks the signals it
/// reads from its signalfd, and `std::process::Command` passes the mask on
/// unchanged: without this, rayosd would never see its SIGTERM.
pub fn reset_signals_in_child(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and calls only
    // sigemptyset and pthread_sigmask, which are async-signal-safe; it
    // touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            // Ignored dispositions survive exec too (the console ignores
            // Ctrl-C for itself, not for the commands it runs).
            for sig in [
                libc::SIGINT,
                libc::SIGQUIT,
                libc::SIGTSTP,
                libc::SIGTTOU,
                libc::SIGTTIN,
            ] {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        });
    }
}

/// An exited child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exited {
    /// Its pid.
    pub pid: i32,
    /// Exit code, or 128 + signal number.
    pub code: i32,
}

/// Reaps every exited child without blocking (zombies of orphans too).
pub fn reap() -> Vec<Exited> {
    let mut out = Vec::new();
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else if libc::WIFSIGNALED(status) {
            128 + libc::WTERMSIG(status)
        } else {
            continue;
        };
        out.push(Exited { pid, code });
    }
    out
}

/// The processes of session `sid` (from `/proc/<pid>/stat`): a console
/// session and every command it started, full-screen programs included,
/// whatever process group they moved to.
pub fn session_members(proc_dir: &Path, sid: i32) -> Vec<i32> {
    let Ok(rd) = fs::read_dir(proc_dir) else {
        return Vec::new();
    };
    let mut out: Vec<i32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_to_string(proc_dir.join(pid.to_string()).join("stat"))
                .ok()
                .and_then(|s| stat_session(&s))
                == Some(sid)
        })
        .collect();
    out.sort_unstable();
    out
}

/// Field 6 (session) of a `/proc/<pid>/stat` line; the command name in
/// parentheses may itself hold spaces and parentheses.
fn stat_session(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // state ppid pgrp session
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// kill(2); true if the signal was sent.
pub fn kill(pid: i32, sig: i32) -> bool {
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Waits until any of `fds` is readable or `timeout_ms` passes; returns the
/// readable ones.
pub fn poll_readable(fds: &[i32], timeout_ms: i32) -> Vec<i32> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a valid array of p.len() pollfd structs for the call.
    let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if n <= 0 {
        return Vec::new();
    }
    p.iter()
        .filter(|x| x.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
        .map(|x| x.fd)
        .collect()
}

/// Makes sure fds 0, 1, 2 are open on the console (the kernel gives PID 1
/// none when the initramfs lacks /dev/console).
pub fn ensure_stdio_console() {
    // SAFETY: fcntl(F_GETFD) only queries the descriptor.
    let valid = |fd: i32| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
    if (0..3).all(valid) {
        return;
    }
    let Ok(c) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    for fd in 0..3 {
        if !valid(fd) {
            // SAFETY: dup2 onto a closed standard descriptor; `c` stays open
            // for the duration of the call.
            unsafe { libc::dup2(c.as_raw_fd(), fd) };
        }
    }
}

/// The kernel's console log levels (`console_loglevel` first).
pub const PRINTK: &str = "/proc/sys/kernel/printk";
/// The console log level while a full-screen program owns the terminals:
/// errors and worse only (a line shows when its level is below this;
/// `KERN_ERR` is 3, `KERN_WARNING` 4).
pub const QUIET_CONSOLE_LEVEL: u8 = 4;

/// The kernel's console log level, from `printk` (the first field of
/// [`PRINTK`]'s text); `None` without the file or with text it cannot read.
pub fn console_level(printk: &Path) -> Option<u8> {
    fs::read_to_string(printk)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Sets the kernel's console log level (only the first field is written;
/// the kernel keeps the others).
pub fn set_console_level(printk: &Path, level: u8) -> io::Result<()> {
    fs::write(printk, level.to_string())
}

/// Sets the kernel's host name.
pub fn sethostname(name: &str) -> io::Result<()> {
    rustix::system::sethostname(name.as_bytes()).map_err(Into::into)
}

/// Opens a file for reading without following it into a controlling tty.
pub fn open_ro(path: &Path) -> io::Result<File> {
    File::open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_members_from_proc() {
        assert_eq!(
            stat_session("42 (rayos) S 1 42 42 1088 42 4194560"),
            Some(42)
        );
        assert_eq!(
            stat_session("77 (odd) name (x)) S 42 77 42 1088 42 0"),
            Some(42)
        );
        assert_eq!(stat_session("garbage"), None);
        let d = tempfile::tempdir().unwrap();
        for (pid, stat) in [
            ("42", "42 (rayos) S 1 42 42 1088 42 0"),
            ("77", "77 (rayos wizard) S 42 77 42 1088 77 0"),
            ("90", "90 (rayosd) S 1 90 90 0 -1 0"),
        ] {
            fs::create_dir(d.path().join(pid)).unwrap();
            fs::write(d.path().join(pid).join("stat"), stat).unwrap();
        }
        fs::create_dir(d.path().join("self")).unwrap();
        assert_eq!(session_members(d.path(), 42), vec![42, 77]);
        // This process's own session, from the real /proc. Read from
        // /proc/self/stat, not getsid(2): in a container whose session
        // leader lives outside the PID namespace the session id is 0, which
        // rustix's `Pid` cannot hold (it panics).
        let own = fs::read_to_string("/proc/self/stat").unwrap();
        let sid = stat_session(&own).unwrap();
        assert!(session_members(Path::new("/proc"), sid).contains(&(std::process::id() as i32)));
    }

    /// rayosd must get SIGTERM at shutdown: a child of PID 1 (which blocks
    /// the signals it reads from its signalfd) must start with none blocked.
    #[test]
    fn children_start_with_an_empty_signal_mask() {
        let _fd = SignalFd::new().unwrap();
        let mut cmd = std::process::Command::new("cat");
        cmd.arg("/proc/self/status");
        reset_signals_in_child(&mut cmd);
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("SigBlk:\t0000000000000000"), "{text}");
        // And the reason this is needed: without it the mask is inherited.
        let plain = std::process::Command::new("cat")
            .arg("/proc/self/status")
            .output()
            .unwrap();
        let plain = String::from_utf8_lossy(&plain.stdout);
        assert!(!plain.contains("SigBlk:\t0000000000000000"), "{plain}");
    }
}

/// `secs` since the epoch as local time (`2026-12-06 05:12:03 CET`), by
/// the C library's rules: `TZ` when set, else `/etc/localtime`, else UTC.
pub fn local_time(secs: i64) -> Option<String> {
    let t: libc::time_t = secs;
    // SAFETY: tm is plain data; all-zero is a valid value of it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r writes only into `tm`, which lives for the
    // call (glibc reads TZ / the zone file on its first use).
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return None;
    }
    let mut buf = [0u8; 64];
    let fmt = c"%Y-%m-%d %H:%M:%S %Z";
    // SAFETY: `buf` has the size passed; `fmt` is NUL-terminated; `tm` was
    // filled by localtime_r.
    let n = unsafe { libc::strftime(buf.as_mut_ptr().cast(), buf.len(), fmt.as_ptr(), &tm) };
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[cfg(test)]
mod local_time_tests {
    #[test]
    fn utc_is_formatted() {
        // SAFETY: set_var; this test binary's other tests read no TZ
        // concurrently that matters; local_time reads it via tzset.
        unsafe { std::env::set_var("TZ", "UTC") };
        assert_eq!(
            super::local_time(1_780_000_000).as_deref(),
            Some("2026-05-28 20:26:40 UTC")
        );
    }
}

/// Loads keymap entries into the kernel's console keymap (`KDSKBENT` on a
/// virtual console; the map is shared by all of them), as busybox's
/// `loadkmap` does.
pub fn load_keymap(tty: &Path, entries: &[crate::keymap::Entry]) -> io::Result<()> {
    #[repr(C)]
    struct KbEntry {
        kb_table: u8,
        kb_index: u8,
        kb_value: u16,
    }
    const KDSKBENT: libc::c_ulong = 0x4B47;
    let f = fs::OpenOptions::new().read(true).write(true).open(tty)?;
    for e in entries {
        let mut k = KbEntry {
            kb_table: e.table,
            kb_index: e.index,
            kb_value: e.value,
        };
        // SAFETY: KDSKBENT reads one `struct kbentry` (repr(C) above, the
        // layout of <linux/kd.h>) from the pointer for the call; `f` is an
        // open console.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), KDSKBENT as _, &mut k as *mut KbEntry) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
