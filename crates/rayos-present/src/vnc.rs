//! A live RFB connection to one VM's VNC unix socket, split in two halves:
//! [`VncReader`] (owns the framebuffer copy, applies server messages,
//! keeps an incremental update request outstanding) and [`VncWriter`]
//! (cloneable; sends keys and pointer events from the input thread).
//!
//! Keys go as QEMU extended key events (XT scancodes) once the server has
//! acknowledged them; before that, or with a server that never does, they go
//! as plain KeyEvents with a US keysym ([`crate::keymap::keysym`]). The
//! pointer is absolute unless the server said it wants relative motion
//! (QEMU with only a PS/2 mouse), in which case deltas are sent around
//! 0x7FFF as QEMU expects.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::rfb::{self, Framebuffer, Rect, RfbError, ServerEvent, ServerInit};

/// Why a VM's display cannot be shown.
#[derive(Debug, thiserror::Error)]
pub enum VncError {
    /// The socket could not be connected to.
    #[error("cannot connect to the VNC socket {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The RFB handshake failed.
    #[error("VNC handshake on {path} failed")]
    Handshake {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: RfbError,
    },
    /// The session broke off after the handshake.
    #[error("VNC session on {path} ended")]
    Session {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: RfbError,
    },
}

/// State both halves see.
#[derive(Debug, Default)]
struct Shared {
    extended_keys: AtomicBool,
    relative_pointer: AtomicBool,
    /// Framebuffer size, for clamping absolute pointer positions.
    size: AtomicU32,
}

/// Sends input to the VM. Cheap to clone; writes are serialised.
#[derive(Debug, Clone)]
pub struct VncWriter {
    stream: Arc<Mutex<UnixStream>>,
    shared: Arc<Shared>,
}

/// Receives the VM's display.
#[derive(Debug)]
pub struct VncReader {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: VncWriter,
    /// The client's copy of the VM's display.
    pub fb: Framebuffer,
    /// What the server said at the start (size, format, name).
    pub init: ServerInit,
}

/// Connects and runs the handshake, retrying the connection (not the
/// handshake) until `timeout` because QEMU creates the socket a moment
/// after it starts.
pub fn connect(path: &Path, timeout: Duration) -> Result<(VncReader, VncWriter), VncError> {
    let deadline = Instant::now() + timeout;
    let stream = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(VncError::Connect {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    };
    let hs_err = |source| VncError::Handshake {
        path: path.to_path_buf(),
        source,
    };
    // The handshake must finish promptly; afterwards reads block until
    // the guest draws something (which may be never).
    stream
        .set_read_timeout(Some(timeout.max(Duration::from_secs(1))))
        .ok();
    let mut s = stream;
    let init = rfb::handshake(&mut s).map_err(hs_err)?;
    s.set_read_timeout(None).ok();
    let write_half = s.try_clone().map_err(|e| hs_err(RfbError::Io(e)))?;
    let shared = Arc::new(Shared::default());
    let fb = Framebuffer::new(init.width, init.height);
    shared
        .size
        .store(pack(fb.width, fb.height), Ordering::Relaxed);
    let writer = VncWriter {
        stream: Arc::new(Mutex::new(write_half)),
        shared,
    };
    writer
        .send(&rfb::update_request(false, fb.full()))
        .map_err(hs_err)?;
    Ok((
        VncReader {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(256 * 1024, s),
            writer: writer.clone(),
            fb,
            init,
        },
        writer,
    ))
}

fn pack(w: u32, h: u32) -> u32 {
    (w.min(0xffff) << 16) | h.min(0xffff)
}

impl VncReader {
    /// Reads the next server message and, after a framebuffer update, asks
    /// for the next one (incremental; whole after a resize).
    pub fn next_event(&mut self) -> Result<ServerEvent, VncError> {
        let err = |source| VncError::Session {
            path: self.path.clone(),
            source,
        };
        let ev = rfb::read_message(&mut self.reader, &mut self.fb).map_err(err)?;
        match &ev {
            ServerEvent::Update { resized, .. } => {
                if *resized {
                    self.writer
                        .shared
                        .size
                        .store(pack(self.fb.width, self.fb.height), Ordering::Relaxed);
                }
                let req = rfb::update_request(!resized, self.fb.full());
                self.writer.send(&req).map_err(err)?;
            }
            ServerEvent::ExtendedKeys => {
                self.writer
                    .shared
                    .extended_keys
                    .store(true, Ordering::Relaxed);
            }
            ServerEvent::PointerMode { absolute } => {
                self.writer
                    .shared
                    .relative_pointer
                    .store(!absolute, Ordering::Relaxed);
            }
            ServerEvent::Bell | ServerEvent::CutText(_) => {}
        }
        Ok(ev)
    }

    /// Reads until a framebuffer update has arrived (skipping the rest).
    pub fn next_update(&mut self) -> Result<(Rect, bool), VncError> {
        loop {
            if let ServerEvent::Update { damage, resized } = self.next_event()?
                && (!damage.is_empty() || resized)
            {
                return Ok((damage, resized));
            }
        }
    }

    /// Bounds every read (tests and benchmarks; the service blocks).
    pub fn set_read_timeout(&self, t: Option<Duration>) {
        self.reader.get_ref().set_read_timeout(t).ok();
    }

    /// Ends the session: the other half's writes then fail.
    pub fn shutdown(&self) {
        let _ = self.reader.get_ref().shutdown(std::net::Shutdown::Both);
    }
}

impl VncWriter {
    fn send(&self, bytes: &[u8]) -> Result<(), RfbError> {
        let mut s = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        s.write_all(bytes)?;
        Ok(())
    }

    /// Whether the server takes QEMU's extended key events (scancodes).
    pub fn extended_keys(&self) -> bool {
        self.shared.extended_keys.load(Ordering::Relaxed)
    }

    /// Whether the server wants relative pointer motion (no tablet in the VM).
    pub fn relative_pointer(&self) -> bool {
        self.shared.relative_pointer.load(Ordering::Relaxed)
    }

    /// The VM's framebuffer size as last seen.
    pub fn size(&self) -> (u32, u32) {
        let p = self.shared.size.load(Ordering::Relaxed);
        (p >> 16, p & 0xffff)
    }

    /// One key press or release, by Linux evdev key code. Keys with no
    /// scancode (and, on servers without extended keys, no keysym) are
    /// dropped.
    pub fn key(&self, evdev_code: u16, down: bool) -> Result<(), RfbError> {
        let keysym = crate::keymap::keysym(evdev_code).unwrap_or(0);
        if self.extended_keys()
            && let Some(q) = crate::keymap::qnum(evdev_code)
        {
            return self.send(&rfb::qemu_key_event(down, keysym, u32::from(q)));
        }
        if keysym != 0 {
            return self.send(&rfb::key_event(down, keysym));
        }
        Ok(())
    }

    /// An absolute pointer position in VM framebuffer pixels.
    pub fn pointer_abs(&self, buttons: u8, x: u32, y: u32) -> Result<(), RfbError> {
        let (w, h) = self.size();
        let x = x.min(w.saturating_sub(1)).min(0xffff) as u16;
        let y = y.min(h.saturating_sub(1)).min(0xffff) as u16;
        self.send(&rfb::pointer_event(buttons, x, y))
    }

    /// A relative motion (QEMU's relative mode: `0x7FFF + delta`), split
    /// into steps that fit the 16-bit fields.
    pub fn pointer_rel(&self, buttons: u8, mut dx: i32, mut dy: i32) -> Result<(), RfbError> {
        loop {
            let sx = dx.clamp(-0x7fff, 0x7fff);
            let sy = dy.clamp(-0x7fff, 0x7fff);
            self.send(&rfb::pointer_event(
                buttons,
                (0x7fff + sx) as u16,
                (0x7fff + sy) as u16,
            ))?;
            dx -= sx;
            dy -= sy;
            if dx == 0 && dy == 0 {
                return Ok(());
            }
        }
    }

    /// Ends the session from this side: no more input. Only the sending
    /// direction is closed, so the server still reads everything sent
    /// before (the key releases of a switch) and then closes; the reader
    /// half sees that end. Closing both directions instead loses input:
    /// a server that writes an update before reading gets EPIPE and drops
    /// the connection with the unread messages. The socket's read timeout
    /// (shared by both halves) bounds the wait for a server that never
    /// closes.
    pub fn shutdown(&self) {
        let s = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.shutdown(std::net::Shutdown::Write);
    }

    /// Asks for the whole screen again (after switching back to a VM).
    pub fn refresh(&self) -> Result<(), RfbError> {
        let (w, h) = self.size();
        self.send(&rfb::update_request(false, Rect::new(0, 0, w, h)))
    }
}
