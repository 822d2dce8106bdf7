//! The system calls more than one RayOS crate makes, as safe functions on
//! `rustix`: a close-on-exec pipe and its size, an eventfd waker, an inotify watch on a
//! directory, poll(2), passing a descriptor over a unix socket
//! (SCM_RIGHTS), SIGTERM/SIGINT through a self-pipe, an exclusive lock, the
//! umask, the effective user id, the inode flag efivarfs uses to protect
//! variables, the free space of a file system, and starting a file's
//! writeback early (`sync_file_range`, which rustix leaves out).
//!
//! This is where RayOS's general-purpose `unsafe` lives: installing a
//! signal handler (`sigaction`, which rustix leaves out), the handler's
//! one `write(2)`, and `sync_file_range`. Device-specific ioctls (framebuffer, evdev, console
//! modes) stay with their device code.
//!
//! Limits: Linux only; every descriptor created here is close-on-exec;
//! [`SignalPipe`] serves one waiter per process (installing it again
//! redirects the handler to the new pipe).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::fs::IFlags;
use rustix::fs::inotify;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

pub use libc::{SIGINT, SIGTERM};

// ---- pipes, eventfd, inotify, poll --------------------------------------------

/// A pipe whose both ends are close-on-exec: `(read, write)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

/// Asks for a pipe of `bytes` capacity (`F_SETPIPE_SZ`; the kernel rounds
/// up to pages, and refuses more than `/proc/sys/fs/pipe-max-size` to
/// non-root callers). Fewer wake-ups for a stream of megabytes.
pub fn set_pipe_size(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    Ok(rustix::pipe::fcntl_setpipe_size(fd, bytes).map(|_| ())?)
}

/// An eventfd that one thread pokes to wake another out of [`poll`].
#[derive(Debug)]
pub struct Waker(OwnedFd);

impl Waker {
    /// A non-blocking, close-on-exec eventfd, not yet poked.
    pub fn new() -> io::Result<Waker> {
        Ok(Waker(rustix::event::eventfd(
            0,
            EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC,
        )?))
    }

    /// Makes the waker readable until [`Waker::drain`].
    pub fn wake(&self) {
        // Only fails when the counter would overflow (it is then readable
        // anyway) or the descriptor is bad (impossible: we own it).
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    /// Resets the waker (non-blocking).
    pub fn drain(&self) {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&self.0, &mut b);
    }
}

impl AsFd for Waker {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// An inotify watch for entries appearing in (created, moved into) or
/// changing attributes in one directory. Readable when something happened;
/// what happened is not reported: look at the directory again.
#[derive(Debug)]
pub struct DirWatch(OwnedFd);

impl DirWatch {
    /// Watches `dir` (not its subdirectories) from now on.
    pub fn new(dir: &Path) -> io::Result<DirWatch> {
        let fd = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)?;
        inotify::add_watch(
            &fd,
            dir,
            inotify::WatchFlags::CREATE
                | inotify::WatchFlags::ATTRIB
                | inotify::WatchFlags::MOVED_TO,
        )?;
        Ok(DirWatch(fd))
    }

    /// Reads every pending event (non-blocking); true if there were any.
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut any = false;
        while let Ok(n) = rustix::io::read(&self.0, &mut buf) {
            if n == 0 {
                break;
            }
            any = true;
        }
        any
    }
}

impl AsFd for DirWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// What [`poll`] saw on one descriptor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Anything at all: data, end of file, an error or a hang-up (a read
    /// tells which).
    pub ready: bool,
    /// Hang-up, error, or not an open descriptor: the source is gone.
    pub gone: bool,
}

/// Waits until one of `fds` is readable (or gone), or `timeout` passes
/// (`None`: no limit). One [`Readiness`] per descriptor, in order. An
/// interrupted wait is an error of kind `Interrupted`.
pub fn poll(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<Vec<Readiness>> {
    let mut p: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::from_borrowed_fd(*fd, PollFlags::IN))
        .collect();
    let ts = match timeout {
        Some(t) => Some(Timespec::try_from(t).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, "poll timeout out of range")
        })?),
        None => None,
    };
    rustix::event::poll(&mut p, ts.as_ref())?;
    Ok(p.iter()
        .map(|x| {
            let r = x.revents();
            Readiness {
                ready: !r.is_empty(),
                gone: r.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL),
            }
        })
        .collect())
}

// ---- descriptor passing -------------------------------------------------------

/// One `sendmsg` of (a prefix of) `bytes` carrying `fd` (SCM_RIGHTS);
/// returns how many bytes went out (at least one: the descriptor rides on
/// data). A closed peer is an error, not a SIGPIPE.
pub fn send_with_fd(stream: &UnixStream, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
    if bytes.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a descriptor needs at least one byte to travel with",
        ));
    }
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for the descriptor"));
    }
    Ok(rustix::net::sendmsg(
        stream,
        &[io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

/// One `recvmsg` into `buf`: the bytes received and the descriptor that
/// came with them, if any (close-on-exec). Further descriptors in the same
/// message are closed.
pub fn recv_with_fd(stream: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        stream,
        &mut [io::IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fd = None;
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = msg {
            for f in fds {
                fd.get_or_insert(f);
            }
        }
    }
    Ok((got.bytes, fd))
}

// ---- signals ------------------------------------------------------------------

/// Write end of the current [`SignalPipe`], for the handler (-1: none).
static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = [sig as u8];
        // SAFETY: the fd is the write end of a SignalPipe's pipe, which is
        // never closed (it is leaked on purpose); write(2) is
        // async-signal-safe and `b` lives for the call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = rustix::io::write(fd, &b);
    }
}

/// SIGTERM and SIGINT delivered through a self-pipe: the handler only
/// writes the signal's number, [`SignalPipe::wait`] reads it. No signal
/// mask is changed, so child processes inherit nothing odd.
#[derive(Debug)]
pub struct SignalPipe {
    read: File,
}

impl SignalPipe {
    /// Installs the handler for `signals` (SA_RESTART: other system calls
    /// are not interrupted).
    pub fn install(signals: &[libc::c_int]) -> io::Result<SignalPipe> {
        let (read, write) = pipe()?;
        // The handler may run at any time from now on: the write end must
        // stay open for the life of the process.
        let raw = std::os::fd::IntoRawFd::into_raw_fd(write);
        SIGNAL_FD.store(raw, Ordering::SeqCst);
        for &sig in signals {
            // SAFETY: a zeroed sigaction is a valid "no flags, empty mask"
            // value; the handler is an extern "C" fn that only loads an
            // atomic and calls write(2); the old action is not asked for.
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
        Ok(SignalPipe {
            read: File::from(read),
        })
    }

    /// Blocks until a handled signal arrives; returns its number (SIGTERM
    /// if the pipe fails, so the caller shuts down rather than hangs).
    pub fn wait(&mut self) -> libc::c_int {
        use std::io::Read;
        let mut b = [0u8; 1];
        loop {
            match self.read.read(&mut b) {
                Ok(1) => return libc::c_int::from(b[0]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                _ => return SIGTERM,
            }
        }
    }
}

// ---- identity ---------------------------------------------------------------

/// True if the process runs with effective user id 0 (tools such as
/// mmdebstrap and loop devices need it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

// ---- locks, umask, inode flags ------------------------------------------------

/// Takes an exclusive `flock` on `file` without waiting: `false` if
/// another open file description holds it.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    match rustix::fs::flock(file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Sets the process's file-creation mask; returns the previous one. The
/// mask is process-wide: change it only before starting threads that
/// create files.
pub fn umask(mask: u32) -> u32 {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask)).as_raw_mode()
}

/// Bytes an unprivileged writer may still use on the file system holding
/// `path` (`f_bavail`: the blocks ext4 reserves for root stay with the
/// system).
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Starts writing `len` bytes at `offset` of `file` to the disk without
/// waiting for them (`SYNC_FILE_RANGE_WRITE`). Only a head start for the
/// fsync that follows, which reports any failure to write, so errors are
/// ignored here.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range takes no pointers, only integers; the
    // descriptor is open for as long as `file` is borrowed.
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}

/// Clears `FS_IMMUTABLE_FL` on `file` if it is set; true if it was.
pub fn clear_immutable(file: &File) -> io::Result<bool> {
    let flags = rustix::fs::ioctl_getflags(file)?;
    if !flags.contains(IFlags::IMMUTABLE) {
        return Ok(false);
    }
    rustix::fs::ioctl_setflags(file, flags - IFlags::IMMUTABLE)?;
    Ok(true)
}

/// Sets `FS_IMMUTABLE_FL` on `file` (needs CAP_LINUX_IMMUTABLE).
pub fn set_immutable(file: &File) -> io::Result<()> {
    let flags = rustix::fs::ioctl_getflags(file)?;
    Ok(rustix::fs::ioctl_setflags(file, flags | IFlags::IMMUTABLE)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn waker_wakes_poll_and_drains() {
        let w = Waker::new().unwrap();
        let r = poll(&[w.as_fd()], Some(Duration::ZERO)).unwrap();
        assert_eq!(r, vec![Readiness::default()]);
        w.wake();
        w.wake();
        let r = poll(&[w.as_fd()], Some(Duration::ZERO)).unwrap();
        assert!(r[0].ready && !r[0].gone, "{r:?}");
        w.drain();
        let r = poll(&[w.as_fd()], Some(Duration::ZERO)).unwrap();
        assert!(!r[0].ready, "{r:?}");
    }

    #[test]
    fn dir_watch_sees_new_entries() {
        let d = tempfile::tempdir().unwrap();
        let watch = DirWatch::new(d.path()).unwrap();
        assert!(!watch.drain());
        std::fs::write(d.path().join("event3"), b"").unwrap();
        let r = poll(&[watch.as_fd()], Some(Duration::from_secs(5))).unwrap();
        assert!(r[0].ready);
        assert!(watch.drain());
        assert!(!watch.drain());
        assert!(DirWatch::new(&d.path().join("missing")).is_err());
    }

    #[test]
    fn poll_reports_a_closed_pipe_as_gone() {
        let (r, w) = pipe().unwrap();
        let flags = rustix::io::fcntl_getfd(&r).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        drop(w);
        let got = poll(&[r.as_fd()], Some(Duration::from_secs(5))).unwrap();
        assert_eq!(
            got,
            vec![Readiness {
                ready: true,
                gone: true
            }]
        );
    }

    #[test]
    fn a_descriptor_travels_with_its_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let (pr, pw) = pipe().unwrap();
        assert!(send_with_fd(&a, b"", pw.as_fd()).is_err());
        assert_eq!(send_with_fd(&a, b"getfd\n", pw.as_fd()).unwrap(), 6);
        drop(pw);
        let mut buf = [0u8; 64];
        let (n, fd) = recv_with_fd(&b, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"getfd\n");
        // The received descriptor is the pipe's write end: what goes in
        // comes out of our read end.
        let mut w = File::from(fd.expect("a descriptor"));
        w.write_all(b"through").unwrap();
        drop(w);
        let mut got = String::new();
        File::from(pr).read_to_string(&mut got).unwrap();
        assert_eq!(got, "through");
        // Plain data: no descriptor.
        (&a).write_all(b"x").unwrap();
        let (n, fd) = recv_with_fd(&b, &mut buf).unwrap();
        assert_eq!((n, fd.is_none()), (1, true));
    }

    #[test]
    fn a_second_lock_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&p)
                .unwrap()
        };
        let (one, two) = (open(), open());
        assert!(try_lock_exclusive(&one).unwrap());
        assert!(!try_lock_exclusive(&two).unwrap());
        drop(one);
        assert!(try_lock_exclusive(&two).unwrap());
    }

    #[test]
    fn signal_pipe_delivers_the_signal_number() {
        // SIGUSR2: nothing else in the test process uses it.
        let mut s = SignalPipe::install(&[libc::SIGUSR2]).unwrap();
        use rustix::process::{Signal, getpid, kill_process};
        kill_process(getpid(), Signal::USR2).unwrap();
        assert_eq!(s.wait(), libc::SIGUSR2);
    }
}
