//! The unattended install's last chance to be stopped: before
//! `rayos install --yes` writes anything, PID 1 shows the engine's plan and
//! counts down on every console terminal; any key on any of them cancels.
//!
//! Protocol: the countdown's length is `[unattended] countdown` of the
//! answer file (seconds, default [`DEFAULT_COUNTDOWN`]; the engine's strict
//! parser checks its range, this module only reads it). [`Keys`] puts the
//! console terminals into non-canonical mode without echo and non-blocking
//! reads, so a single key press (no Enter needed) is seen at once; input
//! typed before the countdown started is discarded first. When [`Keys`] is
//! dropped, each terminal is left in a sane cooked mode (canonical, echo,
//! signals, CR/LF mapping) — not the mode found: after a full-screen
//! program was stopped that would be its raw mode.
//!
//! [`Countdown`] is the timing alone (pure), so it is tested without
//! terminals; [`Keys`] is tested on a pseudo-terminal.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::termios::{self, InputModes, LocalModes, OptionalActions, OutputModes, QueueSelector};

/// Seconds of the countdown when the answer file does not say.
pub const DEFAULT_COUNTDOWN: u32 = 10;

/// `[unattended] countdown` of an answer file, read leniently (the engine
/// rejects bad values when it reads the file); the default otherwise.
pub fn countdown_secs(answers: &str) -> u32 {
    let v: Option<toml::Value> = toml::from_str(answers).ok();
    v.as_ref()
        .and_then(|v| v.get("unattended"))
        .and_then(|u| u.get("countdown"))
        .and_then(|c| c.as_integer())
        .and_then(|c| u32::try_from(c).ok())
        .filter(|c| *c > 0)
        .unwrap_or(DEFAULT_COUNTDOWN)
}

/// A countdown of whole seconds from a start instant.
#[derive(Debug, Clone, Copy)]
pub struct Countdown {
    end: Instant,
}

impl Countdown {
    /// A countdown of `secs` seconds from `now`.
    pub fn new(secs: u32, now: Instant) -> Countdown {
        Countdown {
            end: now + Duration::from_secs(u64::from(secs)),
        }
    }

    /// Whole seconds left, rounded up (shown to the person); 0 = over.
    pub fn remaining(&self, now: Instant) -> u64 {
        let left = self.end.saturating_duration_since(now);
        left.as_secs() + u64::from(left.subsec_nanos() > 0)
    }

    /// Time until the shown number changes (or the end), at least 1 ms.
    pub fn until_next(&self, now: Instant) -> Duration {
        let left = self.end.saturating_duration_since(now);
        let frac = Duration::from_nanos(u64::from(left.subsec_nanos()));
        let step = if frac.is_zero() {
            Duration::from_secs(1).min(left)
        } else {
            frac
        };
        step.max(Duration::from_millis(1))
    }
}

/// The console terminals during a countdown (see the module docs).
pub struct Keys {
    ttys: Vec<(PathBuf, File)>,
}

impl Keys {
    /// Opens the terminals that can be opened; the others are left out.
    pub fn open(paths: &[PathBuf]) -> Keys {
        use std::os::unix::fs::OpenOptionsExt;
        let mut ttys = Vec::new();
        for p in paths {
            let Ok(f) = OpenOptions::new()
                .read(true)
                .write(true)
                // PID 1 must not take a terminal as its controlling tty.
                .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(p)
            else {
                continue;
            };
            if let Ok(mut t) = termios::tcgetattr(f.as_fd()) {
                t.local_modes.remove(LocalModes::ICANON | LocalModes::ECHO);
                t.special_codes[termios::SpecialCodeIndex::VMIN] = 0;
                t.special_codes[termios::SpecialCodeIndex::VTIME] = 0;
                let _ = termios::tcsetattr(f.as_fd(), OptionalActions::Now, &t);
                let _ = termios::tcflush(f.as_fd(), QueueSelector::IFlush);
            }
            ttys.push((p.clone(), f));
        }
        Keys { ttys }
    }

    /// The terminals' descriptors, to poll.
    pub fn fds(&self) -> Vec<i32> {
        self.ttys.iter().map(|(_, f)| f.as_raw_fd()).collect()
    }

    /// The terminal among `ready` that had a key (its input is read and
    /// dropped), if any.
    pub fn pressed(&mut self, ready: &[i32]) -> Option<PathBuf> {
        let mut who = None;
        for (p, f) in &mut self.ttys {
            if !ready.contains(&f.as_raw_fd()) {
                continue;
            }
            let mut buf = [0u8; 64];
            if let Ok(n) = f.read(&mut buf)
                && n > 0
                && who.is_none()
            {
                who = Some(p.clone());
            }
        }
        who
    }

    /// Writes `text` to every terminal.
    pub fn show(&mut self, text: &str) {
        for (_, f) in &mut self.ttys {
            let _ = f.write_all(text.as_bytes());
        }
    }

    /// How many terminals are open.
    pub fn len(&self) -> usize {
        self.ttys.len()
    }

    /// Whether no terminal is open.
    pub fn is_empty(&self) -> bool {
        self.ttys.is_empty()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        for (_, f) in &self.ttys {
            sane(f);
        }
    }
}

/// Canonical mode with echo, signals and the usual CR/LF mapping.
fn sane(f: &File) {
    let Ok(mut t) = termios::tcgetattr(f.as_fd()) else {
        return;
    };
    t.local_modes.insert(
        LocalModes::ICANON
            | LocalModes::ECHO
            | LocalModes::ECHOE
            | LocalModes::ECHOK
            | LocalModes::ISIG
            | LocalModes::IEXTEN,
    );
    t.input_modes.insert(InputModes::ICRNL);
    t.input_modes.remove(InputModes::INLCR | InputModes::IGNCR);
    t.output_modes
        .insert(OutputModes::OPOST | OutputModes::ONLCR);
    t.special_codes[termios::SpecialCodeIndex::VMIN] = 1;
    t.special_codes[termios::SpecialCodeIndex::VTIME] = 0;
    let _ = termios::tcsetattr(f.as_fd(), OptionalActions::Now, &t);
}

/// Leaves a full-screen program's alternate screen and shows the cursor
/// (after it was stopped without restoring the terminal).
pub const RESET_SCREEN: &str = "\x1b[?1049l\x1b[?25h\x1b[0m\r\n";

/// The device of console terminal `name` (`ttyS0` → `/dev/ttyS0`).
pub fn console_device(name: &str) -> PathBuf {
    Path::new("/dev").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countdown_from_the_answer_file() {
        let base = "version = 1\n[target]\nmode = \"whole-disk\"\n";
        assert_eq!(countdown_secs(base), DEFAULT_COUNTDOWN);
        assert_eq!(
            countdown_secs(&format!("{base}[unattended]\ncountdown = 3\n")),
            3
        );
        // Left to the engine to refuse; never "no countdown" here.
        assert_eq!(
            countdown_secs(&format!("{base}[unattended]\ncountdown = 0\n")),
            DEFAULT_COUNTDOWN
        );
        assert_eq!(
            countdown_secs(&format!("{base}[unattended]\ncountdown = -5\n")),
            DEFAULT_COUNTDOWN
        );
        assert_eq!(countdown_secs("not toml ["), DEFAULT_COUNTDOWN);
    }

    #[test]
    fn countdown_shows_whole_seconds_rounded_up() {
        let t0 = Instant::now();
        let c = Countdown::new(10, t0);
        assert_eq!(c.remaining(t0), 10);
        assert_eq!(c.until_next(t0), Duration::from_secs(1));
        let t = t0 + Duration::from_millis(300);
        assert_eq!(c.remaining(t), 10);
        assert_eq!(c.until_next(t), Duration::from_millis(700));
        assert_eq!(c.remaining(t0 + Duration::from_secs(1)), 9);
        assert_eq!(c.remaining(t0 + Duration::from_millis(9_999)), 1);
        assert_eq!(c.remaining(t0 + Duration::from_secs(10)), 0);
        assert_eq!(c.remaining(t0 + Duration::from_secs(60)), 0);
        assert_eq!(
            c.until_next(t0 + Duration::from_secs(10)),
            Duration::from_millis(1)
        );
    }

    /// A pseudo-terminal pair: the master stands in for the person.
    fn pty() -> (File, PathBuf) {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let m = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
        grantpt(&m).unwrap();
        unlockpt(&m).unwrap();
        let name = ptsname(&m, Vec::new()).unwrap();
        (
            File::from(m),
            PathBuf::from(name.to_string_lossy().into_owned()),
        )
    }

    #[test]
    fn a_single_key_without_enter_is_seen_and_the_terminal_is_left_sane() {
        let (mut master, slave) = pty();
        // Typed before the countdown: discarded, not a cancel.
        master.write_all(b"old").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut keys = Keys::open(&[slave.clone(), PathBuf::from("/nonexistent/tty")]);
        assert_eq!(keys.len(), 1);
        let fds = keys.fds();
        assert!(crate::sys::poll_readable(&fds, 100).is_empty());
        assert_eq!(keys.pressed(&fds), None);
        keys.show("installing in 9 s");
        // The master also reads the echo of what was typed before.
        let mut shown = Vec::new();
        while !String::from_utf8_lossy(&shown).contains("installing in 9 s") {
            let mut buf = [0u8; 64];
            let n = master.read(&mut buf).unwrap();
            assert!(n > 0);
            shown.extend_from_slice(&buf[..n]);
        }
        // One key, no newline: canonical mode would hold it back.
        master.write_all(b"n").unwrap();
        let ready = crate::sys::poll_readable(&fds, 2000);
        assert_eq!(keys.pressed(&ready), Some(slave.clone()));
        drop(keys);
        use std::os::unix::fs::OpenOptionsExt;
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&slave)
            .unwrap();
        let t = termios::tcgetattr(f.as_fd()).unwrap();
        assert!(
            t.local_modes
                .contains(LocalModes::ICANON | LocalModes::ECHO)
        );
        assert!(t.input_modes.contains(InputModes::ICRNL));
    }
}
