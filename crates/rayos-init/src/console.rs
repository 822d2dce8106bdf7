//! The `rayos>` admin console: what a person at the machine (and the
//! end-to-end tests, through the serial port) uses to operate RayOS.
//!
//! Behaviour:
//! - on a terminal: raw mode with line editing (←/→, Home/End, Backspace,
//!   Delete, ↑/↓ history, Ctrl-A/E/U/K/L, Ctrl-C cancels the line, Ctrl-D
//!   on an empty line says how to leave); a command runs as a child process
//!   in its own process group, in the foreground of the terminal, with the
//!   terminal back in cooked mode so Ctrl-C interrupts the command, not the
//!   console;
//! - on a pipe (tests, scripts): reads lines, prints the prompt before each,
//!   ends at end of input;
//! - commands are `rayos` subcommands from an allow-list per mode
//!   ([`allowed`]) plus the builtins `help`, `clear`, `history`, `exit`.
//!   There is no general shell, except `shell` in recovery mode when the
//!   image has `/bin/sh`.
//!
//! When started by PID 1 with `--tty`, the session becomes a session leader
//! with that terminal as its controlling tty (setsid + TIOCSCTTY).

use std::fs::{self, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use rayos_base::paths;
use rustix::termios::{self, OptionalActions, Termios};

use crate::cmdline::{Mode, split_words};
use crate::control::InitStatus;

/// The console's prompt.
pub const PROMPT: &str = "rayos> ";

/// What the console may run, per mode: (command, one-line help).
pub fn allowed(mode: Mode) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![
        (
            "status",
            "what RayOS is doing: boot steps, faults, services, VMs",
        ),
        (
            "vm",
            "manage the VMs (vm list, vm show NAME, vm start NAME, vm present NAME, ...)",
        ),
        (
            "logs",
            "read the logs on the data volume (logs, logs NAME, logs -n 100 NAME)",
        ),
        ("update", "update RayOS or roll back (update --help)"),
        ("disks", "list the disks and what they hold"),
        (
            "policy",
            "show or change the policy (policy show, policy set linux.networking on, policy edit)",
        ),
        (
            "media",
            "installation media for VMs: sticks and the ISO/image files on them (media --unmount)",
        ),
        ("shutdown", "save the VMs and power off"),
        ("reboot", "save the VMs and restart"),
    ];
    match mode {
        Mode::Installer => {
            v.retain(|(c, _)| !matches!(*c, "vm" | "update" | "policy" | "media"));
            v.insert(
                0,
                (
                    "install",
                    "install RayOS onto a disk (asks which, shows the plan, asks to confirm)",
                ),
            );
        }
        Mode::Recovery => {
            v.insert(
                0,
                (
                    "recovery",
                    "the recovery menu: logs, policy, boot repair, reinstall, factory reset",
                ),
            );
            v.push(("install", "reinstall or repair (install --help)"));
            v.push((
                "shell",
                "a shell, when this image has /bin/sh (recovery only)",
            ));
        }
        Mode::Installed => v.push((
            "recovery",
            "recovery --next-boot: start the recovery entry at the next boot (then `reboot`)",
        )),
    }
    v
}

const BUILTINS: [(&str, &str); 4] = [
    ("help", "this list; `help COMMAND` for a command's options"),
    ("clear", "clear the screen"),
    ("history", "the commands typed in this session"),
    ("exit", "leave this console session (a new one starts)"),
];

/// What the line editor wants done after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Nothing to print (incomplete escape sequence).
    None,
    /// Redraw the line.
    Redraw,
    /// Enter: the line.
    Submit(String),
    /// Ctrl-C: drop the line.
    Cancel,
    /// Ctrl-D on an empty line.
    Eof,
    /// Ctrl-L.
    ClearScreen,
}

/// A single-line editor fed one byte at a time. Pure: rendering is
/// [`LineEditor::render`]; tests drive it with byte strings.
#[derive(Debug, Default)]
pub struct LineEditor {
    buf: Vec<char>,
    cursor: usize,
    history: Vec<String>,
    /// Position while browsing history; `history.len()` = the new line.
    hist_pos: usize,
    /// The line being typed before browsing started.
    stash: Vec<char>,
    esc: Vec<u8>,
    utf8: Vec<u8>,
}

impl LineEditor {
    /// An empty line with no history.
    pub fn new() -> Self {
        LineEditor::default()
    }

    /// The line as typed so far.
    pub fn line(&self) -> String {
        self.buf.iter().collect()
    }

    /// Where the cursor is, in characters.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// The lines entered before, oldest first.
    pub fn history(&self) -> &[String] {
        &self.history
    }

    /// Records an entered line (not blank lines or a repeat of the last; the
    /// last 500 kept).
    pub fn push_history(&mut self, line: &str) {
        if !line.trim().is_empty() && self.history.last().map(String::as_str) != Some(line) {
            self.history.push(line.to_string());
            if self.history.len() > 500 {
                self.history.remove(0);
            }
        }
        self.hist_pos = self.history.len();
    }

    fn set(&mut self, chars: Vec<char>) {
        self.buf = chars;
        self.cursor = self.buf.len();
    }

    /// Feeds one byte of input; says what the caller does next.
    pub fn feed(&mut self, b: u8) -> Edit {
        if !self.esc.is_empty() {
            self.esc.push(b);
            return self.escape();
        }
        if !self.utf8.is_empty() || b >= 0x80 {
            self.utf8.push(b);
            match std::str::from_utf8(&self.utf8) {
                Ok(s) => {
                    let chars: Vec<char> = s.chars().collect();
                    self.utf8.clear();
                    for c in chars {
                        self.buf.insert(self.cursor, c);
                        self.cursor += 1;
                    }
                    return Edit::Redraw;
                }
                Err(e) if e.error_len().is_none() && self.utf8.len() < 4 => return Edit::None,
                Err(_) => {
                    self.utf8.clear();
                    return Edit::None;
                }
            }
        }
        match b {
            b'\r' | b'\n' => {
                let l = self.line();
                self.buf.clear();
                self.cursor = 0;
                self.hist_pos = self.history.len();
                Edit::Submit(l)
            }
            0x1b => {
                self.esc.push(b);
                Edit::None
            }
            0x03 => {
                self.buf.clear();
                self.cursor = 0;
                self.hist_pos = self.history.len();
                Edit::Cancel
            }
            0x04 => {
                if self.buf.is_empty() {
                    Edit::Eof
                } else {
                    self.delete();
                    Edit::Redraw
                }
            }
            0x7f | 0x08 => {
                if self.cursor > 0 {
                    self.cursor -= 1;
                    self.buf.remove(self.cursor);
                }
                Edit::Redraw
            }
            0x01 => {
                self.cursor = 0;
                Edit::Redraw
            }
            0x05 => {
                self.cursor = self.buf.len();
                Edit::Redraw
            }
            0x02 => self.left(),
            0x06 => self.right(),
            0x0b => {
                self.buf.truncate(self.cursor);
                Edit::Redraw
            }
            0x15 => {
                self.buf.drain(..self.cursor);
                self.cursor = 0;
                Edit::Redraw
            }
            0x0c => Edit::ClearScreen,
            0x10 => self.up(),
            0x0e => self.down(),
            0x20..=0x7e => {
                self.buf.insert(self.cursor, b as char);
                self.cursor += 1;
                Edit::Redraw
            }
            _ => Edit::None,
        }
    }

    fn escape(&mut self) -> Edit {
        // ESC [ X, ESC O X, ESC [ n ~; anything else is dropped.
        let seq = self.esc.clone();
        let done = |e: &mut Self, r: Edit| {
            e.esc.clear();
            r
        };
        match seq.as_slice() {
            [0x1b] => Edit::None,
            [0x1b, b'[' | b'O'] => Edit::None,
            [0x1b, b'[' | b'O', c] if c.is_ascii_digit() => Edit::None,
            [0x1b, b'[' | b'O', b'A'] => {
                let r = self.up();
                done(self, r)
            }
            [0x1b, b'[' | b'O', b'B'] => {
                let r = self.down();
                done(self, r)
            }
            [0x1b, b'[' | b'O', b'C'] => {
                let r = self.right();
                done(self, r)
            }
            [0x1b, b'[' | b'O', b'D'] => {
                let r = self.left();
                done(self, r)
            }
            [0x1b, b'[' | b'O', b'H'] => {
                self.cursor = 0;
                done(self, Edit::Redraw)
            }
            [0x1b, b'[' | b'O', b'F'] => {
                self.cursor = self.buf.len();
                done(self, Edit::Redraw)
            }
            [0x1b, b'[', n @ .., b'~'] => {
                match n {
                    [b'1'] | [b'7'] => self.cursor = 0,
                    [b'4'] | [b'8'] => self.cursor = self.buf.len(),
                    [b'3'] => self.delete(),
                    _ => {}
                }
                done(self, Edit::Redraw)
            }
            [0x1b, b'[', rest @ ..]
                if rest.iter().all(|c| c.is_ascii_digit() || *c == b';') && rest.len() < 8 =>
            {
                Edit::None
            }
            _ => done(self, Edit::None),
        }
    }

    fn delete(&mut self) {
        if self.cursor < self.buf.len() {
            self.buf.remove(self.cursor);
        }
    }
    fn left(&mut self) -> Edit {
        self.cursor = self.cursor.saturating_sub(1);
        Edit::Redraw
    }
    fn right(&mut self) -> Edit {
        self.cursor = (self.cursor + 1).min(self.buf.len());
        Edit::Redraw
    }
    fn up(&mut self) -> Edit {
        if self.hist_pos == 0 {
            return Edit::None;
        }
        if self.hist_pos == self.history.len() {
            self.stash = self.buf.clone();
        }
        self.hist_pos -= 1;
        let l = self.history[self.hist_pos].chars().collect();
        self.set(l);
        Edit::Redraw
    }
    fn down(&mut self) -> Edit {
        if self.hist_pos >= self.history.len() {
            return Edit::None;
        }
        self.hist_pos += 1;
        let l = if self.hist_pos == self.history.len() {
            std::mem::take(&mut self.stash)
        } else {
            self.history[self.hist_pos].chars().collect()
        };
        self.set(l);
        Edit::Redraw
    }

    /// The bytes that redraw the line: CR, prompt, text, clear to end of
    /// line, cursor moved back to its place.
    pub fn render(&self, prompt: &str) -> String {
        let mut s = format!("\r{prompt}{}\x1b[K", self.line());
        let back = self.buf.len() - self.cursor;
        if back > 0 {
            s.push_str(&format!("\x1b[{back}D"));
        }
        s
    }
}

/// Options of a console session.
#[derive(Debug, Clone)]
pub struct Options {
    /// Take this terminal as controlling tty and stdio.
    pub tty: Option<PathBuf>,
    /// Which commands the console offers.
    pub mode: Mode,
    /// The `rayos` binary to run commands with.
    pub exe: PathBuf,
}

/// Why a console session could not take its terminal.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The terminal could not be opened; holds it.
    #[error("cannot open the terminal {0}")]
    OpenTty(PathBuf, #[source] io::Error),
    /// The terminal could not be made the controlling terminal; holds it.
    #[error("cannot make {0} the controlling terminal")]
    Ctty(PathBuf, #[source] io::Error),
}

fn take_tty(dev: &Path) -> Result<(), ConsoleError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| ConsoleError::OpenTty(dev.to_path_buf(), e))?;
    // A new session has no controlling tty; the first terminal opened with
    // TIOCSCTTY becomes it. Fails harmlessly when already a leader.
    let _ = rustix::process::setsid();
    rustix::process::ioctl_tiocsctty(&f)
        .map_err(|e| ConsoleError::Ctty(dev.to_path_buf(), e.into()))?;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors of this process; `f`
        // is open for the call.
        unsafe { libc::dup2(f.as_raw_fd(), fd) };
    }
    Ok(())
}

struct Raw {
    saved: Termios,
}

impl Raw {
    fn enter() -> Option<Raw> {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        raw.local_modes.remove(
            termios::LocalModes::ICANON
                | termios::LocalModes::ECHO
                | termios::LocalModes::ISIG
                | termios::LocalModes::IEXTEN,
        );
        raw.input_modes.remove(
            termios::InputModes::IXON | termios::InputModes::ICRNL | termios::InputModes::INLCR,
        );
        raw.special_codes[termios::SpecialCodeIndex::VMIN] = 1;
        raw.special_codes[termios::SpecialCodeIndex::VTIME] = 0;
        termios::tcsetattr(stdin.as_fd(), OptionalActions::Drain, &raw).ok()?;
        Some(Raw { saved })
    }
    fn leave(&self) {
        let _ = termios::tcsetattr(io::stdin().as_fd(), OptionalActions::Drain, &self.saved);
    }
}

fn out(s: &str) {
    let mut o = io::stdout();
    let _ = o.write_all(s.as_bytes());
    let _ = o.flush();
}

/// Runs a console session; returns its exit code.
pub fn run(opts: &Options) -> Result<i32, ConsoleError> {
    if let Some(t) = &opts.tty {
        take_tty(t)?;
        // The console must survive Ctrl-C/Ctrl-Z meant for its commands and
        // its own tcsetpgrp calls from the background.
        // SAFETY: setting dispositions to SIG_IGN installs no handler code.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            libc::signal(libc::SIGQUIT, libc::SIG_IGN);
            libc::signal(libc::SIGTSTP, libc::SIG_IGN);
            libc::signal(libc::SIGTTOU, libc::SIG_IGN);
            libc::signal(libc::SIGTTIN, libc::SIG_IGN);
        }
    }
    let mut session = Session {
        opts: opts.clone(),
        editor: LineEditor::new(),
        tty: termios::tcgetattr(io::stdin().as_fd()).is_ok(),
    };
    session.banner();
    Ok(session.repl())
}

struct Session {
    opts: Options,
    editor: LineEditor,
    tty: bool,
}

impl Session {
    fn banner(&self) {
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        out(&format!(
            "\r\nRayOS {} ({} mode) on {host} - admin console. Type `help` for commands.\r\n",
            env!("CARGO_PKG_VERSION"),
            self.opts.mode
        ));
        if let Ok(s) = InitStatus::read(Path::new(paths::INIT_STATUS)) {
            for f in &s.faults {
                out(&format!("  ! {f}\r\n"));
            }
        }
        if self.opts.mode == Mode::Recovery {
            out("Recovery mode: no VM is started. Type `recovery` for the recovery menu.\r\n");
        }
    }

    /// Reads one line; `None` at end of input.
    fn read_line(&mut self) -> Option<String> {
        if !self.tty {
            out(PROMPT);
            let mut l = String::new();
            return match io::stdin().lock().read_line(&mut l) {
                Ok(0) | Err(_) => None,
                Ok(_) => Some(l.trim_end_matches(['\n', '\r']).to_string()),
            };
        }
        let raw = Raw::enter();
        out(&self.editor.render(PROMPT));
        let mut stdin = io::stdin().lock();
        let mut byte = [0u8; 1];
        let line = loop {
            match stdin.read(&mut byte) {
                Ok(0) => break None,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break None,
            }
            match self.editor.feed(byte[0]) {
                Edit::None => {}
                Edit::Redraw => out(&self.editor.render(PROMPT)),
                Edit::Submit(l) => {
                    out("\r\n");
                    break Some(l);
                }
                Edit::Cancel => {
                    out("^C\r\n");
                    out(&self.editor.render(PROMPT));
                }
                Edit::Eof => {
                    out(
                        "\r\n(this console stays open: type `shutdown` or `reboot` to stop RayOS)\r\n",
                    );
                    out(&self.editor.render(PROMPT));
                }
                Edit::ClearScreen => {
                    out("\x1b[H\x1b[2J");
                    out(&self.editor.render(PROMPT));
                }
            }
        };
        if let Some(r) = raw {
            r.leave();
        }
        line
    }

    fn repl(&mut self) -> i32 {
        loop {
            let Some(line) = self.read_line() else {
                out("\n");
                return 0;
            };
            self.editor.push_history(&line);
            let words = split_words(&line);
            let Some(cmd) = words.first().map(String::as_str) else {
                continue;
            };
            match cmd {
                "help" | "?" => self.help(words.get(1).map(String::as_str)),
                "clear" => out("\x1b[H\x1b[2J"),
                "history" => {
                    for (i, h) in self.editor.history().iter().enumerate() {
                        out(&format!("{:4}  {h}\r\n", i + 1));
                    }
                }
                "exit" | "logout" | "quit" => return 0,
                "install" if self.opts.mode == Mode::Installer && words.len() == 1 => {
                    self.guided_install()
                }
                "shell" if self.opts.mode == Mode::Recovery => {
                    if Path::new("/bin/sh").exists() {
                        self.spawn("/bin/sh".as_ref(), &[]);
                    } else {
                        out("this image has no shell; use the rayos commands (type `help`)\r\n");
                    }
                }
                c if allowed(self.opts.mode).iter().any(|(a, _)| *a == c) => {
                    let exe = self.opts.exe.clone();
                    self.spawn(&exe, &words);
                }
                c => out(&format!(
                    "unknown command {c:?}: this console runs RayOS commands only; type `help` for the list\r\n"
                )),
            }
        }
    }

    fn help(&self, about: Option<&str>) {
        if let Some(c) = about
            && allowed(self.opts.mode).iter().any(|(a, _)| *a == c)
            && c != "shell"
        {
            let exe = self.opts.exe.clone();
            self.spawn(&exe, &[c.to_string(), "--help".to_string()]);
            return;
        }
        out("RayOS commands:\r\n");
        for (c, h) in allowed(self.opts.mode).iter().chain(BUILTINS.iter()) {
            out(&format!("  {c:<10} {h}\r\n"));
        }
        out("Keys: arrows edit and recall, Ctrl-C drops the line or stops a running command.\r\n");
    }

    /// Runs a command in the foreground; returns its exit code.
    fn spawn(&self, program: &Path, args: &[String]) -> i32 {
        let mut cmd = Command::new(program);
        crate::sys::reset_signals_in_child(&mut cmd);
        cmd.args(args);
        if self.tty {
            cmd.process_group(0);
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                out(&format!("cannot run {}: {e}\r\n", program.display()));
                return 127;
            }
        };
        let stdin = io::stdin();
        if self.tty
            && let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32)
        {
            let _ = termios::tcsetpgrp(stdin.as_fd(), pid);
        }
        let code = match child.wait() {
            Ok(s) => s.code().unwrap_or(130),
            Err(_) => 1,
        };
        if self.tty {
            let _ = termios::tcsetpgrp(stdin.as_fd(), rustix::process::getpgrp());
        }
        if code != 0 {
            out(&format!("(exit status {code})\r\n"));
        }
        code
    }

    fn ask(&mut self, question: &str) -> Option<String> {
        out(question);
        out("\r\n");
        self.read_line()
    }

    /// Installer mode without an answer file: pick the disk, show the
    /// engine's plan, install after the disk's name is typed again.
    fn guided_install(&mut self) {
        let exe = self.opts.exe.clone();
        if self.tty {
            // A real terminal (serial line or the machine's console): the
            // full-screen wizard with its partition manager. It refuses the
            // installer medium itself and asks init to reboot when done.
            let mut args = vec!["wizard".to_string()];
            if let Some(u) = crate::volumes::uki_on(Path::new(paths::MEDIUM)) {
                args.extend(crate::volumes::image_args(&u));
            }
            // Kernel notices (a partition table re-read, "crng init done")
            // printed into a full-screen program's terminal scroll it and
            // leave its screen garbled; only kernel errors reach the
            // consoles while it runs. PID 1 puts the boot's level back at
            // shutdown, should this process be killed first.
            let _quiet = QuietKernelConsole::new(Path::new(crate::sys::PRINTK));
            self.spawn(&exe, &args);
            return;
        }
        // A pipe (tests, scripted consoles): a line-based whole-disk install.
        let disks = rayos_disk::list_block_devices().unwrap_or_default();
        self.spawn(&exe, &["disks".to_string()]);
        let candidates: Vec<String> = disks
            .iter()
            .filter(|d| d.in_use.is_empty() && !d.read_only && d.size_bytes >= 8 << 30)
            .map(|d| d.path.display().to_string())
            .collect();
        if candidates.is_empty() {
            out(
                "no disk can take RayOS (each is in use — the installer medium — read-only, or under 8 GiB)\r\n",
            );
            return;
        }
        let Some(disk) = self.ask(&format!(
            "Which disk? Suitable: {} (Enter for {}, or `cancel`)",
            candidates.join(", "),
            candidates[0]
        )) else {
            return;
        };
        let disk = if disk.trim().is_empty() {
            candidates[0].clone()
        } else {
            disk.trim().to_string()
        };
        if !candidates.contains(&disk) {
            out(&format!(
                "{disk:?} is not one of the suitable disks: nothing done\r\n"
            ));
            return;
        }
        let answers = Path::new(paths::INTERACTIVE_ANSWERS);
        let text = format!("version = 1\n\n[target]\ndisk = \"{disk}\"\nmode = \"whole-disk\"\n");
        if let Err(e) = fs::write(answers, text) {
            out(&format!("cannot write {}: {e}\r\n", answers.display()));
            return;
        }
        let a = answers.display().to_string();
        let plan = self.spawn(
            &exe,
            &[
                "install".into(),
                "--target".into(),
                disk.clone(),
                "--answers".into(),
                a.clone(),
                "--dry-run".into(),
            ],
        );
        if plan != 0 {
            out("the installer could not plan this install (see above): nothing was written\r\n");
            return;
        }
        let Some(confirm) = self.ask(&format!(
            "Everything on {disk} will be erased. Type the disk name again to install:"
        )) else {
            return;
        };
        if confirm.trim() != disk {
            out("not confirmed: nothing was written\r\n");
            return;
        }
        let uki = crate::volumes::uki_on(Path::new(paths::MEDIUM));
        let mut args = vec![
            "install".into(),
            "--target".into(),
            disk.clone(),
            "--answers".into(),
            a,
            "--yes".into(),
        ];
        if let Some(u) = uki {
            args.extend(crate::volumes::image_args(&u));
        }
        if self.spawn(&exe, &args) == 0 {
            out("RayOS is installed. Remove the installer medium and type `reboot`.\r\n");
        }
    }
}

/// Lowers the kernel's console log level to
/// [`crate::sys::QUIET_CONSOLE_LEVEL`] and puts the old one back when
/// dropped. Without the file (tests, no /proc), or with a level already
/// that low, it does nothing.
struct QuietKernelConsole {
    path: PathBuf,
    old: Option<u8>,
}

impl QuietKernelConsole {
    fn new(path: &Path) -> QuietKernelConsole {
        let old = crate::sys::console_level(path).filter(|&l| l > crate::sys::QUIET_CONSOLE_LEVEL);
        if old.is_some() {
            let _ = crate::sys::set_console_level(path, crate::sys::QUIET_CONSOLE_LEVEL);
        }
        QuietKernelConsole {
            path: path.to_path_buf(),
            old,
        }
    }
}

impl Drop for QuietKernelConsole {
    fn drop(&mut self) {
        if let Some(level) = self.old {
            let _ = crate::sys::set_console_level(&self.path, level);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The level is lowered while the guard lives and put back after; a
    /// level already that low, or no file, is left alone.
    #[test]
    fn kernel_console_is_quiet_while_a_full_screen_program_runs() {
        let dir = tempfile::tempdir().unwrap();
        let printk = dir.path().join("printk");
        fs::write(&printk, "7\t4\t1\t7\n").unwrap();
        {
            let _q = QuietKernelConsole::new(&printk);
            assert_eq!(fs::read_to_string(&printk).unwrap(), "4");
        }
        assert_eq!(fs::read_to_string(&printk).unwrap(), "7");
        fs::write(&printk, "3 4 1 7").unwrap();
        drop(QuietKernelConsole::new(&printk));
        assert_eq!(fs::read_to_string(&printk).unwrap(), "3 4 1 7");
        drop(QuietKernelConsole::new(&dir.path().join("missing")));
        assert!(!dir.path().join("missing").exists());
    }

    fn feed(e: &mut LineEditor, bytes: &[u8]) -> Vec<Edit> {
        bytes
            .iter()
            .map(|&b| e.feed(b))
            .filter(|x| *x != Edit::None)
            .collect()
    }

    #[test]
    fn typing_editing_and_submit() {
        let mut e = LineEditor::new();
        feed(&mut e, b"vm lst");
        // left, left, insert 'i' -> "vm list"
        feed(&mut e, b"\x1b[D\x1b[D");
        assert_eq!(e.cursor(), 4);
        feed(&mut e, b"i");
        assert_eq!(e.line(), "vm list");
        // Home, Delete, End, Backspace
        feed(&mut e, b"\x1b[H\x1b[3~");
        assert_eq!(e.line(), "m list");
        feed(&mut e, b"\x1b[F\x7f");
        assert_eq!(e.line(), "m lis");
        assert_eq!(e.render("> "), "\r> m lis\x1b[K");
        feed(&mut e, b"\x01");
        assert_eq!(e.render("> "), "\r> m lis\x1b[K\x1b[5D");
        assert_eq!(
            feed(&mut e, b"\r").last(),
            Some(&Edit::Submit("m lis".into()))
        );
        assert_eq!(e.line(), "");
    }

    #[test]
    fn history_up_down_keeps_the_typed_line() {
        let mut e = LineEditor::new();
        e.push_history("status");
        e.push_history("vm list");
        e.push_history("vm list"); // no duplicate
        e.push_history("   ");
        assert_eq!(e.history(), ["status", "vm list"]);
        feed(&mut e, b"lo");
        feed(&mut e, b"\x1b[A");
        assert_eq!(e.line(), "vm list");
        feed(&mut e, b"\x1b[A\x1b[A");
        assert_eq!(e.line(), "status");
        feed(&mut e, b"\x1b[B\x1b[B");
        assert_eq!(e.line(), "lo");
        assert_eq!(e.cursor(), 2);
    }

    #[test]
    fn control_keys() {
        let mut e = LineEditor::new();
        assert_eq!(feed(&mut e, b"\x04"), vec![Edit::Eof]);
        feed(&mut e, b"abc");
        assert_eq!(feed(&mut e, b"\x03"), vec![Edit::Cancel]);
        assert_eq!(e.line(), "");
        feed(&mut e, b"hello world\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x0b");
        assert_eq!(e.line(), "hello ");
        feed(&mut e, b"\x15");
        assert_eq!(e.line(), "");
        assert_eq!(feed(&mut e, b"\x0c"), vec![Edit::ClearScreen]);
        // Unknown escape sequences and stray controls are ignored.
        feed(&mut e, b"\x1b[1;5Cx\x1bZy\x07");
        assert_eq!(e.line(), "xy");
        // UTF-8 is one character.
        feed(&mut e, "é".as_bytes());
        assert_eq!(e.line(), "xyé");
        feed(&mut e, b"\x7f");
        assert_eq!(e.line(), "xy");
    }

    #[test]
    fn allow_lists_per_mode() {
        let names = |m| allowed(m).iter().map(|(c, _)| *c).collect::<Vec<_>>();
        assert!(names(Mode::Installed).contains(&"vm"));
        assert!(!names(Mode::Installed).contains(&"shell"));
        assert!(!names(Mode::Installed).contains(&"install"));
        assert!(names(Mode::Recovery).contains(&"shell"));
        assert_eq!(names(Mode::Installer)[0], "install");
        assert!(!names(Mode::Installer).contains(&"vm"));
        assert!(!names(Mode::Installer).contains(&"policy"));
        assert!(names(Mode::Installed).contains(&"policy"));
        assert!(names(Mode::Recovery).contains(&"policy"));
        for m in [Mode::Installed, Mode::Recovery, Mode::Installer] {
            assert!(
                names(m).contains(&"shutdown")
                    && names(m).contains(&"reboot")
                    && names(m).contains(&"status")
            );
        }
    }
}
