//! `rayos vm console NAME` attached: the terminal becomes the VM's serial
//! console until Ctrl-] is pressed.
//!
//! Protocol: the console is a unix socket QEMU serves (`console_socket` of
//! `rayos vm show`); bytes are relayed both ways unchanged. On a terminal
//! the line discipline is switched to raw mode (so Ctrl-C, arrows and tabs
//! reach the guest) and restored on every way out. Ctrl-] (0x1d) leaves,
//! as in telnet and `virsh console`.
//!
//! Limits: QEMU serves one client at a time; a second `rayos vm console`
//! waits until the first leaves. When stdin is not a terminal (a script, a
//! test), its end also ends the session, after the guest's last output has
//! had half a second to arrive.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Ctrl-]: leaves the console.
pub const ESCAPE: u8 = 0x1d;

/// The terminal settings of stdin, put back when dropped.
struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    /// Raw mode on stdin if it is a terminal; `None` otherwise.
    fn enter() -> Option<RawMode> {
        // SAFETY: isatty only inspects the descriptor number.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; all-zero is a valid value that
        // tcgetattr overwrites.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid, writable termios for the call.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: `raw` is a valid termios derived from the current one.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: `saved` came from tcgetattr on the same descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}

/// Relays stdin/stdout and the console socket until Ctrl-], the end of
/// stdin, or the VM's QEMU closing the socket.
pub fn attach(name: &str, socket: &Path) -> anyhow::Result<()> {
    let stream = UnixStream::connect(socket).map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to the console of VM {name} at {}: {e} (is the VM running?)",
            socket.display()
        )
    })?;
    let raw = RawMode::enter();
    let nl = if raw.is_some() { "\r\n" } else { "\n" };
    eprint!("Connected to the console of VM {name}; Ctrl-] leaves. Press Enter for a prompt.{nl}");
    let mut from_vm = stream.try_clone()?;
    let reader = std::thread::spawn(move || {
        let mut out = io::stdout();
        let mut buf = [0u8; 4096];
        loop {
            match from_vm.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => {
                    if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    });
    let mut to_vm = stream.try_clone()?;
    let mut stdin = io::stdin().lock();
    let mut buf = [0u8; 1024];
    let mut escaped = false;
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let (data, leave) = match buf[..n].iter().position(|&b| b == ESCAPE) {
            Some(i) => (&buf[..i], true),
            None => (&buf[..n], false),
        };
        if !data.is_empty() && to_vm.write_all(data).is_err() {
            break;
        }
        if leave {
            escaped = true;
            break;
        }
        if reader.is_finished() {
            break;
        }
    }
    if !escaped && raw.is_none() {
        // Script input ended: let the answer to its last line arrive.
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = stream.shutdown(Shutdown::Both);
    let _ = reader.join();
    drop(raw);
    eprintln!("{nl}Left the console of VM {name}.");
    Ok(())
}
