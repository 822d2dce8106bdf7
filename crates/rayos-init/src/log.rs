//! Init's own log: every line goes to the console, to the kernel log
//! (`/dev/kmsg`, so it lands in `kernel.log` and survives on the serial
//! console even when init dies) and, once the data volume is mounted, to
//! `/var/rayos/logs/init.log`. Lines written before the volume is mounted
//! are kept in memory (bounded) and written to the file when it is attached.
//!
//! Also owns [`RotatingLog`], the size-capped log file used for every log
//! under `/var/rayos/logs/`.
//!
//! Limits: `/dev/kmsg` rate-limits writers (the kernel drops lines past its
//! burst); the console and the file are not rate-limited.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines kept in memory until the data volume's log directory is attached.
const EARLY_LINES: usize = 2000;

/// How serious a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Something that happened.
    Info,
    /// Something went wrong but the boot goes on.
    Warn,
    /// Something failed.
    Error,
}

impl Level {
    fn kmsg_prio(self) -> u8 {
        match self {
            Level::Info => 6,
            Level::Warn => 4,
            Level::Error => 3,
        }
    }
    fn tag(self) -> &'static str {
        match self {
            Level::Info => "",
            Level::Warn => "warning: ",
            Level::Error => "error: ",
        }
    }
}

struct Sinks {
    console: Option<File>,
    kmsg: Option<File>,
    file: Option<RotatingLog>,
    early: VecDeque<String>,
    /// Also echo to stderr (when not PID 1, e.g. in tests).
    stderr: bool,
}

static SINKS: Mutex<Sinks> = Mutex::new(Sinks {
    console: None,
    kmsg: None,
    file: None,
    early: VecDeque::new(),
    stderr: true,
});

fn sinks() -> std::sync::MutexGuard<'static, Sinks> {
    // A panic while logging must not silence every later line.
    SINKS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens `/dev/console` and `/dev/kmsg` (after devtmpfs is mounted) and
/// stops echoing to stderr (which is the console too, when PID 1).
pub fn attach_devices() {
    let console = OpenOptions::new()
        .write(true)
        .custom_flags_noctty()
        .open("/dev/console")
        .ok();
    let kmsg = OpenOptions::new().write(true).open("/dev/kmsg").ok();
    let mut s = sinks();
    s.stderr = console.is_none();
    s.console = console;
    s.kmsg = kmsg;
}

/// Attaches `dir/init.log`; the lines logged so far are written first.
pub fn attach_file(dir: &Path) -> io::Result<()> {
    let mut log = RotatingLog::open(dir, "init", DEFAULT_MAX_BYTES, DEFAULT_KEEP)?;
    let mut s = sinks();
    while let Some(line) = s.early.pop_front() {
        log.write_line(&line)?;
    }
    s.file = Some(log);
    Ok(())
}

/// The lines kept for the log file not attached yet (tests look at what
/// was logged).
#[cfg(test)]
pub(crate) fn early_lines() -> Vec<String> {
    sinks().early.iter().cloned().collect()
}

/// Detaches the log file (before unmounting the data volume).
pub fn detach_file() {
    let mut s = sinks();
    if let Some(mut f) = s.file.take() {
        let _ = f.sync();
    }
}

/// One `/dev/kmsg` record (one write() is one record). It must end in a
/// newline: without one the kernel keeps the record open for a
/// continuation and shows it to consoles and readers only when the next
/// record comes, which on an idle system delayed markers by minutes.
fn kmsg_record(level: Level, text: &str) -> String {
    format!("<{}>rayos-init: {}{text}\n", level.kmsg_prio(), level.tag())
}

fn emit(level: Level, text: &str, to_console: bool) {
    let stamp = uptime();
    let line = format!("[{stamp:>9.3}] {}{text}", level.tag());
    let mut s = sinks();
    if to_console {
        let console_line = format!("rayos: {}{text}\n", level.tag());
        if let Some(c) = s.console.as_mut() {
            let _ = c.write_all(console_line.as_bytes());
        }
        if s.stderr {
            let _ = io::stderr().write_all(console_line.as_bytes());
        }
    }
    if let Some(k) = s.kmsg.as_mut() {
        let _ = k.write_all(kmsg_record(level, text).as_bytes());
    }
    match s.file.as_mut() {
        Some(f) => {
            let _ = f.write_line(&line);
        }
        None => {
            if s.early.len() >= EARLY_LINES {
                s.early.pop_front();
            }
            s.early.push_back(line);
        }
    }
}

/// Logs `text` at [`Level::Info`] to the consoles, the kernel log and the file.
pub fn info(text: impl AsRef<str>) {
    emit(Level::Info, text.as_ref(), true);
}
/// Logs `text` at [`Level::Warn`] to the consoles, the kernel log and the file.
pub fn warn(text: impl AsRef<str>) {
    emit(Level::Warn, text.as_ref(), true);
}
/// Logs `text` at [`Level::Error`] to the consoles, the kernel log and the
/// file.
pub fn error(text: impl AsRef<str>) {
    emit(Level::Error, text.as_ref(), true);
}
/// Only to the kernel log and the file (details nobody needs on screen).
pub fn detail(text: impl AsRef<str>) {
    emit(Level::Info, text.as_ref(), false);
}

/// A machine-readable marker (`RAYOS_BOOT:mount-data`, `RAYOS_READY`): on a
/// line of its own on the console, for the e2e tests.
pub fn marker(m: &rayos_base::marker::Marker) {
    relay_marker(&m.to_string());
}

/// A marker line a child printed (a service, the installer), relayed
/// exactly as it came: on a line of its own on the console, and in the
/// kernel log and the log file.
pub fn relay_marker(m: &str) {
    {
        let mut s = sinks();
        let line = format!("{m}\n");
        if let Some(c) = s.console.as_mut() {
            let _ = c.write_all(line.as_bytes());
        }
        if s.stderr {
            let _ = io::stderr().write_all(line.as_bytes());
        }
    }
    emit(Level::Info, m, false);
}

/// Text straight to the console (no prefix), for relayed service output.
pub fn console_raw(text: &str) {
    let mut s = sinks();
    if let Some(c) = s.console.as_mut() {
        let _ = c.write_all(text.as_bytes());
    }
    if s.stderr {
        let _ = io::stderr().write_all(text.as_bytes());
    }
}

/// Seconds since boot (CLOCK_BOOTTIME), the kernel log's time base.
pub fn uptime() -> f64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Seconds since the Unix epoch (0 when the clock is before it).
pub fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}
impl NoCtty for OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        // PID 1 must not acquire the console as its controlling terminal:
        // a hangup on it would then be sent to init.
        self.custom_flags(libc::O_NOCTTY)
    }
}

/// A log file is rotated once it would pass this size (4 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 4 << 20;
/// Rotated files kept beside the current one.
pub const DEFAULT_KEEP: usize = 4;

/// An append-only log file `dir/<name>.log`, rotated when it would grow past
/// `max_bytes`: `<name>.log` → `<name>.log.1` → … → `<name>.log.<keep>`
/// (the oldest is dropped). A line longer than `max_bytes` is still written
/// whole, into a fresh file.
#[derive(Debug)]
pub struct RotatingLog {
    dir: PathBuf,
    name: String,
    max_bytes: u64,
    keep: usize,
    file: File,
    size: u64,
}

impl RotatingLog {
    /// Opens (appending) `dir/<name>.log`, rotated at `max_bytes` with `keep`
    /// old files.
    pub fn open(dir: &Path, name: &str, max_bytes: u64, keep: usize) -> io::Result<RotatingLog> {
        fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.log"));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            max_bytes,
            keep,
            file,
            size,
        })
    }

    /// The current file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.log", self.name))
    }

    fn numbered(&self, n: usize) -> PathBuf {
        self.dir.join(format!("{}.log.{n}", self.name))
    }

    /// Appends `line` and a newline, rotating first when needed.
    pub fn write_line(&mut self, line: &str) -> io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate()?;
        }
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        self.file.write_all(&buf)?;
        self.size += len;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            self.file.set_len(0)?;
            self.size = 0;
            return Ok(());
        }
        let _ = fs::remove_file(self.numbered(self.keep));
        for n in (1..self.keep).rev() {
            let from = self.numbered(n);
            if from.exists() {
                fs::rename(&from, self.numbered(n + 1))?;
            }
        }
        fs::rename(self.path(), self.numbered(1))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path())?;
        self.size = 0;
        Ok(())
    }

    /// Flushes the file to disk.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmsg_records_end_their_line() {
        let r = kmsg_record(Level::Info, "RAYOS_READY");
        assert!(r.ends_with("rayos-init: RAYOS_READY\n"), "{r:?}");
        assert!(r.starts_with('<'));
        assert_eq!(r.matches('\n').count(), 1);
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap_or_default()
    }

    #[test]
    fn rotates_at_size_and_keeps_n() {
        let d = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::open(d.path(), "svc", 20, 2).unwrap();
        for i in 0..10 {
            log.write_line(&format!("line-{i:03}")).unwrap(); // 9 bytes each
        }
        // 2 lines per file: newest two in svc.log, then .1, .2; older dropped.
        assert_eq!(read(&d.path().join("svc.log")), "line-008\nline-009\n");
        assert_eq!(read(&d.path().join("svc.log.1")), "line-006\nline-007\n");
        assert_eq!(read(&d.path().join("svc.log.2")), "line-004\nline-005\n");
        assert!(!d.path().join("svc.log.3").exists());
        let total: u64 = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= 3 * 20);
    }

    #[test]
    fn reopen_appends_and_counts_existing_size() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut log = RotatingLog::open(d.path(), "k", 30, 1).unwrap();
            log.write_line("first boot line 1").unwrap();
        }
        let mut log = RotatingLog::open(d.path(), "k", 30, 1).unwrap();
        log.write_line("second boot").unwrap();
        // 18 + 12 = 30: fits exactly, no rotation.
        assert_eq!(
            read(&d.path().join("k.log")),
            "first boot line 1\nsecond boot\n"
        );
        log.write_line("x").unwrap();
        assert_eq!(read(&d.path().join("k.log")), "x\n");
        assert_eq!(
            read(&d.path().join("k.log.1")),
            "first boot line 1\nsecond boot\n"
        );
    }

    #[test]
    fn oversized_line_is_written_whole() {
        let d = tempfile::tempdir().unwrap();
        let mut log = RotatingLog::open(d.path(), "big", 8, 1).unwrap();
        log.write_line("short").unwrap();
        log.write_line("a line much longer than eight").unwrap();
        assert_eq!(
            read(&d.path().join("big.log")),
            "a line much longer than eight\n"
        );
        assert_eq!(read(&d.path().join("big.log.1")), "short\n");
    }
}
