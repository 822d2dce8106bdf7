//! RFB (VNC) client: the presenter's only way into a VM's display and input.
//!
//! Protocol (RFC 6143 plus QEMU's extensions), blocking, over any
//! `Read`/`Write` (a `UnixStream` to `<run_dir>/vnc.sock` in RayOS):
//! - handshake: version 3.8 (3.3 and 3.7 servers accepted), security type
//!   None, ClientInit shared, ServerInit;
//! - SetPixelFormat 32 bpp little-endian true colour with red at bit 16,
//!   green at 8, blue at 0 (`0x00RRGGBB` words, the fbdev/DRM XRGB8888
//!   layout), so pixels are copied without conversion;
//! - SetEncodings: Raw, CopyRect, DesktopSize (guest resolution changes),
//!   QEMU Extended Key Event (-258: keys as XT scancodes, so the guest's
//!   own layout applies) and QEMU Pointer Motion Change (-257: absolute
//!   or relative pointer);
//! - FramebufferUpdateRequest (incremental after the first), KeyEvent,
//!   PointerEvent, QEMU extended KeyEvent (message 255, submessage 0).
//!
//! Everything the server sends is untrusted: every rectangle must lie inside
//! the framebuffer, sizes are capped ([`MAX_DIMENSION`], [`MAX_TEXT`]), and
//! a message this client did not ask for is an error. Decoding never
//! allocates more than the framebuffer the caller agreed to.
//!
//! Limits: no ZRLE/Tight (over a local unix socket raw pixels are cheaper
//! than decompressing them), no colour maps (true colour is requested),
//! no security types but None (the socket is reachable by root only).

use std::io::{self, Read, Write};

/// Largest width or height accepted from a server.
pub const MAX_DIMENSION: u16 = 8192;
/// Largest text (desktop name, cut text, failure reason) accepted.
pub const MAX_TEXT: u32 = 1024 * 1024;

/// Raw encoding: every pixel of the rectangle.
pub const ENC_RAW: i32 = 0;
/// CopyRect: the rectangle copied from elsewhere on the framebuffer.
pub const ENC_COPY_RECT: i32 = 1;
/// DesktopSize pseudo-encoding: the framebuffer's size changed.
pub const ENC_DESKTOP_SIZE: i32 = -223;
/// QEMU's pointer motion change pseudo-encoding: absolute or relative pointer.
pub const ENC_QEMU_POINTER_MOTION_CHANGE: i32 = -257;
/// QEMU's extended key event pseudo-encoding: key events carry scancodes.
pub const ENC_QEMU_EXTENDED_KEY_EVENT: i32 = -258;

/// The encodings this client asks for, most preferred first.
pub const ENCODINGS: &[i32] = &[
    ENC_COPY_RECT,
    ENC_RAW,
    ENC_DESKTOP_SIZE,
    ENC_QEMU_EXTENDED_KEY_EVENT,
    ENC_QEMU_POINTER_MOTION_CHANGE,
];

/// Pointer button bits of a PointerEvent.
pub mod button {
    /// The primary button.
    pub const LEFT: u8 = 1;
    /// The middle button.
    pub const MIDDLE: u8 = 2;
    /// The secondary button.
    pub const RIGHT: u8 = 4;
    /// One wheel click up.
    pub const WHEEL_UP: u8 = 8;
    /// One wheel click down.
    pub const WHEEL_DOWN: u8 = 16;
    /// One wheel click left.
    pub const WHEEL_LEFT: u8 = 32;
    /// One wheel click right.
    pub const WHEEL_RIGHT: u8 = 64;
}

/// Why a VNC session failed.
#[derive(Debug, thiserror::Error)]
pub enum RfbError {
    /// Reading from or writing to the connection failed.
    #[error("VNC connection I/O failed")]
    Io(#[from] io::Error),
    /// The peer's greeting is not `RFB 003.00x`; holds what it sent.
    #[error("not an RFB server (greeting {0:?})")]
    NotRfb(String),
    /// The server refused the connection; holds its reason.
    #[error("the VNC server refused the connection: {0}")]
    Refused(String),
    /// The server offers only security types this client cannot do; holds them.
    #[error("the VNC server offers no security type this client supports (offered {0:?})")]
    NoSecurityType(Vec<u8>),
    /// The server sent something that is not RFB as this client speaks it; says
    /// what.
    #[error("the VNC server sent a bad message: {0}")]
    Protocol(String),
}

fn bad(msg: impl Into<String>) -> RfbError {
    RfbError::Protocol(msg.into())
}

/// A rectangle in framebuffer coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Rect {
    /// Left edge, in pixels.
    pub x: u32,
    /// Top edge, in pixels.
    pub y: u32,
    /// Width, in pixels.
    pub w: u32,
    /// Height, in pixels.
    pub h: u32,
}

impl Rect {
    /// The rectangle at (`x`, `y`) of `w` × `h` pixels.
    pub fn new(x: u32, y: u32, w: u32, h: u32) -> Self {
        Rect { x, y, w, h }
    }

    /// Whether it covers no pixel.
    pub fn is_empty(&self) -> bool {
        self.w == 0 || self.h == 0
    }

    /// Whether the rectangle lies inside a `width` × `height` area (checked
    /// without overflow).
    pub fn inside(&self, width: u32, height: u32) -> bool {
        u64::from(self.x) + u64::from(self.w) <= u64::from(width)
            && u64::from(self.y) + u64::from(self.h) <= u64::from(height)
    }

    /// Smallest rectangle holding both (an empty one is ignored).
    pub fn union(&self, o: &Rect) -> Rect {
        if self.is_empty() {
            return *o;
        }
        if o.is_empty() {
            return *self;
        }
        let x = self.x.min(o.x);
        let y = self.y.min(o.y);
        let r = (self.x + self.w).max(o.x + o.w);
        let b = (self.y + self.h).max(o.y + o.h);
        Rect::new(x, y, r - x, b - y)
    }
}

/// The pixel format of RFB messages (16 bytes on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelFormat {
    /// Bits each pixel takes on the wire (8, 16 or 32).
    pub bits_per_pixel: u8,
    /// Bits of colour in each pixel.
    pub depth: u8,
    /// Whether multi-byte pixels are big-endian.
    pub big_endian: bool,
    /// Whether pixels are colours (false: indices into a colour map).
    pub true_colour: bool,
    /// Largest red value.
    pub red_max: u16,
    /// Largest green value.
    pub green_max: u16,
    /// Largest blue value.
    pub blue_max: u16,
    /// Bit offset of red in a pixel.
    pub red_shift: u8,
    /// Bit offset of green in a pixel.
    pub green_shift: u8,
    /// Bit offset of blue in a pixel.
    pub blue_shift: u8,
}

impl PixelFormat {
    /// `0x00RRGGBB` little-endian words: bytes B, G, R, X in memory.
    pub const BGRX: PixelFormat = PixelFormat {
        bits_per_pixel: 32,
        depth: 24,
        big_endian: false,
        true_colour: true,
        red_max: 255,
        green_max: 255,
        blue_max: 255,
        red_shift: 16,
        green_shift: 8,
        blue_shift: 0,
    };

    /// The 16 bytes on the wire.
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0] = self.bits_per_pixel;
        b[1] = self.depth;
        b[2] = self.big_endian as u8;
        b[3] = self.true_colour as u8;
        b[4..6].copy_from_slice(&self.red_max.to_be_bytes());
        b[6..8].copy_from_slice(&self.green_max.to_be_bytes());
        b[8..10].copy_from_slice(&self.blue_max.to_be_bytes());
        b[10] = self.red_shift;
        b[11] = self.green_shift;
        b[12] = self.blue_shift;
        b
    }

    /// The format from its 16 bytes on the wire.
    pub fn decode(b: &[u8; 16]) -> PixelFormat {
        PixelFormat {
            bits_per_pixel: b[0],
            depth: b[1],
            big_endian: b[2] != 0,
            true_colour: b[3] != 0,
            red_max: u16::from_be_bytes([b[4], b[5]]),
            green_max: u16::from_be_bytes([b[6], b[7]]),
            blue_max: u16::from_be_bytes([b[8], b[9]]),
            red_shift: b[10],
            green_shift: b[11],
            blue_shift: b[12],
        }
    }
}

/// The client's copy of the remote framebuffer, `0x00RRGGBB` per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framebuffer {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The pixels, row-major.
    pub pixels: Vec<u32>,
}

impl Framebuffer {
    /// A black framebuffer of `width` × `height`.
    pub fn new(width: u16, height: u16) -> Framebuffer {
        let (w, h) = (u32::from(width), u32::from(height));
        Framebuffer {
            width: w,
            height: h,
            pixels: vec![0; (w * h) as usize],
        }
    }

    /// Makes it a black framebuffer of the new size.
    pub fn resize(&mut self, width: u16, height: u16) {
        *self = Framebuffer::new(width, height);
    }

    /// The whole framebuffer.
    pub fn full(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }

    /// The pixel at (`x`, `y`); panics outside the framebuffer.
    pub fn pixel(&self, x: u32, y: u32) -> u32 {
        self.pixels[(y * self.width + x) as usize]
    }
}

/// What ServerInit said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInit {
    /// The framebuffer's width in pixels.
    pub width: u16,
    /// The framebuffer's height in pixels.
    pub height: u16,
    /// The server's pixel format (the client asks for its own next).
    pub format: PixelFormat,
    /// The desktop's name (QEMU: the VM's name).
    pub name: String,
}

/// What one server message meant to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// Pixels changed (bounding box of the update's rectangles; empty when
    /// the update held only pseudo-rectangles). `resized` means the
    /// framebuffer now has a new size and should be redrawn whole.
    Update {
        /// The bounding box of the changed pixels.
        damage: Rect,
        /// Whether the framebuffer now has a new size.
        resized: bool,
    },
    /// The server rang the bell.
    Bell,
    /// Cut text (Latin-1 per the spec; lossily decoded).
    CutText(String),
    /// The server said which pointer it wants: absolute (a tablet) or
    /// relative (deltas around 0x7FFF).
    PointerMode {
        /// True for absolute (a tablet), false for relative.
        absolute: bool,
    },
    /// The server acknowledged QEMU's extended key events.
    ExtendedKeys,
}

fn read_u8<R: Read>(r: &mut R) -> io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn read_u16<R: Read>(r: &mut R) -> io::Result<u16> {
    let mut b = [0u8; 2];
    r.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

fn read_u32<R: Read>(r: &mut R) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

/// Reads a length-prefixed text, refusing absurd lengths before
/// allocating.
fn read_text<R: Read>(r: &mut R, len: u32) -> Result<String, RfbError> {
    if len > MAX_TEXT {
        return Err(bad(format!("text of {len} bytes (limit {MAX_TEXT})")));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Protocol version both sides use (minor of 3.x).
fn parse_version(greeting: &[u8; 12]) -> Result<u8, RfbError> {
    let s = std::str::from_utf8(greeting).unwrap_or("");
    let shown = || String::from_utf8_lossy(greeting).trim_end().to_string();
    if !s.starts_with("RFB ") || !s.ends_with('\n') || s.as_bytes()[7] != b'.' {
        return Err(RfbError::NotRfb(shown()));
    }
    let major: u32 = s[4..7].parse().map_err(|_| RfbError::NotRfb(shown()))?;
    let minor: u32 = s[8..11].parse().map_err(|_| RfbError::NotRfb(shown()))?;
    if major != 3 || minor < 3 {
        return Err(RfbError::NotRfb(shown()));
    }
    // 3.4-3.6 and anything above 3.8 speak as their nearest known version.
    Ok(match minor {
        3..=6 => 3,
        7 => 7,
        _ => 8,
    })
}

/// Runs the handshake up to and including ServerInit, then sends
/// SetPixelFormat ([`PixelFormat::BGRX`]) and SetEncodings ([`ENCODINGS`]).
pub fn handshake<S: Read + Write>(s: &mut S) -> Result<ServerInit, RfbError> {
    let mut greeting = [0u8; 12];
    s.read_exact(&mut greeting)?;
    let minor = parse_version(&greeting)?;
    s.write_all(format!("RFB 003.00{minor}\n").as_bytes())?;
    s.flush()?;

    if minor == 3 {
        // 3.3: the server decides the security type.
        match read_u32(s)? {
            0 => {
                let len = read_u32(s)?;
                return Err(RfbError::Refused(read_text(s, len)?));
            }
            1 => {}
            other => return Err(RfbError::NoSecurityType(vec![other.min(255) as u8])),
        }
    } else {
        let n = read_u8(s)?;
        if n == 0 {
            let len = read_u32(s)?;
            return Err(RfbError::Refused(read_text(s, len)?));
        }
        let mut types = vec![0u8; usize::from(n)];
        s.read_exact(&mut types)?;
        if !types.contains(&1) {
            return Err(RfbError::NoSecurityType(types));
        }
        s.write_all(&[1])?;
        s.flush()?;
        // 3.7 sends no SecurityResult for None.
        if minor == 8 {
            match read_u32(s)? {
                0 => {}
                _ => {
                    let len = read_u32(s)?;
                    return Err(RfbError::Refused(read_text(s, len)?));
                }
            }
        }
    }

    // ClientInit: shared, so a debugging viewer can watch at the same time.
    s.write_all(&[1])?;
    s.flush()?;
    let width = read_u16(s)?;
    let height = read_u16(s)?;
    let mut pf = [0u8; 16];
    s.read_exact(&mut pf)?;
    let len = read_u32(s)?;
    let name = read_text(s, len)?;
    check_size(width, height)?;

    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&PixelFormat::BGRX.encode());
    out.extend_from_slice(&[2, 0]);
    out.extend_from_slice(&(ENCODINGS.len() as u16).to_be_bytes());
    for e in ENCODINGS {
        out.extend_from_slice(&e.to_be_bytes());
    }
    s.write_all(&out)?;
    s.flush()?;
    Ok(ServerInit {
        width,
        height,
        format: PixelFormat::decode(&pf),
        name,
    })
}

fn check_size(w: u16, h: u16) -> Result<(), RfbError> {
    if w > MAX_DIMENSION || h > MAX_DIMENSION {
        return Err(bad(format!(
            "framebuffer {w}x{h} (limit {MAX_DIMENSION} per side)"
        )));
    }
    Ok(())
}

/// FramebufferUpdateRequest.
pub fn update_request(incremental: bool, r: Rect) -> [u8; 10] {
    let mut b = [0u8; 10];
    b[0] = 3;
    b[1] = incremental as u8;
    b[2..4].copy_from_slice(&(r.x.min(0xffff) as u16).to_be_bytes());
    b[4..6].copy_from_slice(&(r.y.min(0xffff) as u16).to_be_bytes());
    b[6..8].copy_from_slice(&(r.w.min(0xffff) as u16).to_be_bytes());
    b[8..10].copy_from_slice(&(r.h.min(0xffff) as u16).to_be_bytes());
    b
}

/// KeyEvent with an X keysym (servers without extended key events).
pub fn key_event(down: bool, keysym: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = 4;
    b[1] = down as u8;
    b[4..8].copy_from_slice(&keysym.to_be_bytes());
    b
}

/// QEMU extended KeyEvent: `qnum` is the XT scancode, 0x80 set for
/// 0xE0-prefixed keys (see [`crate::keymap`]); the keysym is a hint QEMU
/// ignores when the scancode is set.
pub fn qemu_key_event(down: bool, keysym: u32, qnum: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0] = 255;
    b[1] = 0;
    b[2..4].copy_from_slice(&(down as u16).to_be_bytes());
    b[4..8].copy_from_slice(&keysym.to_be_bytes());
    b[8..12].copy_from_slice(&qnum.to_be_bytes());
    b
}

/// PointerEvent: absolute position (or, with a relative QEMU pointer,
/// `0x7FFF + delta`).
pub fn pointer_event(buttons: u8, x: u16, y: u16) -> [u8; 6] {
    let mut b = [0u8; 6];
    b[0] = 5;
    b[1] = buttons;
    b[2..4].copy_from_slice(&x.to_be_bytes());
    b[4..6].copy_from_slice(&y.to_be_bytes());
    b
}

/// Reads one server message, applying a framebuffer update to `fb`.
///
/// Rectangles are checked against the framebuffer before any pixel is
/// written; a DesktopSize rectangle resizes `fb` (blank) and the server
/// then sends the new contents.
pub fn read_message<R: Read>(r: &mut R, fb: &mut Framebuffer) -> Result<ServerEvent, RfbError> {
    read_message_limited(r, fb, MAX_PIXELS)
}

/// Most pixels a DesktopSize may ask for (256 MiB of framebuffer).
pub const MAX_PIXELS: u64 = MAX_DIMENSION as u64 * MAX_DIMENSION as u64;

/// [`read_message`] with a smaller cap on the framebuffer a DesktopSize may
/// allocate (the fuzzer's memory is smaller than a VM's display).
pub fn read_message_limited<R: Read>(
    r: &mut R,
    fb: &mut Framebuffer,
    max_pixels: u64,
) -> Result<ServerEvent, RfbError> {
    match read_u8(r)? {
        0 => read_update(r, fb, max_pixels),
        1 => {
            // SetColourMapEntries: never asked for (true colour), but
            // harmless; skip it whole.
            let mut h = [0u8; 5];
            r.read_exact(&mut h)?;
            let n = u16::from_be_bytes([h[3], h[4]]);
            skip(r, u64::from(n) * 6)?;
            Ok(ServerEvent::Update {
                damage: Rect::default(),
                resized: false,
            })
        }
        2 => Ok(ServerEvent::Bell),
        3 => {
            let mut pad = [0u8; 3];
            r.read_exact(&mut pad)?;
            let len = read_u32(r)?;
            Ok(ServerEvent::CutText(read_text(r, len)?))
        }
        t => Err(bad(format!("unknown server message type {t}"))),
    }
}

fn skip<R: Read>(r: &mut R, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.by_ref().take(n), &mut io::sink())?;
    if copied < n {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    Ok(())
}

fn read_update<R: Read>(
    r: &mut R,
    fb: &mut Framebuffer,
    max_pixels: u64,
) -> Result<ServerEvent, RfbError> {
    let _pad = read_u8(r)?;
    let n = read_u16(r)?;
    let mut damage = Rect::default();
    let mut resized = false;
    let mut other = None;
    let mut row = Vec::new();
    for _ in 0..n {
        let mut h = [0u8; 12];
        r.read_exact(&mut h)?;
        let x = u16::from_be_bytes([h[0], h[1]]);
        let y = u16::from_be_bytes([h[2], h[3]]);
        let w = u16::from_be_bytes([h[4], h[5]]);
        let hh = u16::from_be_bytes([h[6], h[7]]);
        let enc = i32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        let rect = Rect::new(x.into(), y.into(), w.into(), hh.into());
        match enc {
            ENC_RAW => {
                if !rect.inside(fb.width, fb.height) {
                    return Err(bad(format!(
                        "raw rectangle {rect:?} outside the {}x{} framebuffer",
                        fb.width, fb.height
                    )));
                }
                row.resize(rect.w as usize * 4, 0);
                for yy in rect.y..rect.y + rect.h {
                    r.read_exact(&mut row)?;
                    let start = (yy * fb.width + rect.x) as usize;
                    let dst = &mut fb.pixels[start..start + rect.w as usize];
                    for (d, s) in dst.iter_mut().zip(row.chunks_exact(4)) {
                        *d = u32::from_le_bytes([s[0], s[1], s[2], s[3]]) & 0x00ff_ffff;
                    }
                }
                damage = damage.union(&rect);
            }
            ENC_COPY_RECT => {
                let sx = u32::from(read_u16(r)?);
                let sy = u32::from(read_u16(r)?);
                let src = Rect::new(sx, sy, rect.w, rect.h);
                if !rect.inside(fb.width, fb.height) || !src.inside(fb.width, fb.height) {
                    return Err(bad(format!(
                        "copy from {src:?} to {rect:?} outside the {}x{} framebuffer",
                        fb.width, fb.height
                    )));
                }
                copy_rect(fb, src, rect);
                damage = damage.union(&rect);
            }
            ENC_DESKTOP_SIZE => {
                check_size(w, hh)?;
                if u64::from(w) * u64::from(hh) > max_pixels {
                    return Err(bad(format!("desktop size {w}x{hh} over the limit")));
                }
                fb.resize(w, hh);
                resized = true;
                damage = Rect::default();
            }
            ENC_QEMU_POINTER_MOTION_CHANGE => {
                other = Some(ServerEvent::PointerMode { absolute: x != 0 });
            }
            ENC_QEMU_EXTENDED_KEY_EVENT => {
                other = Some(ServerEvent::ExtendedKeys);
            }
            e => {
                return Err(bad(format!(
                    "rectangle in encoding {e}, which was not asked for"
                )));
            }
        }
    }
    if resized {
        damage = fb.full();
    }
    // A pseudo-rectangle alone is reported as what it says; mixed with
    // pixels, the pixels matter more (the flag comes again on reconnect).
    match other {
        Some(ev) if damage.is_empty() && !resized => Ok(ev),
        _ => Ok(ServerEvent::Update { damage, resized }),
    }
}

/// CopyRect inside one framebuffer; rows are walked in the direction that
/// keeps overlapping source rows intact.
fn copy_rect(fb: &mut Framebuffer, src: Rect, dst: Rect) {
    let w = fb.width as usize;
    let rows: Box<dyn Iterator<Item = u32>> = if dst.y > src.y {
        Box::new((0..dst.h).rev())
    } else {
        Box::new(0..dst.h)
    };
    for i in rows {
        let s = (src.y + i) as usize * w + src.x as usize;
        let d = (dst.y + i) as usize * w + dst.x as usize;
        fb.pixels.copy_within(s..s + dst.w as usize, d);
    }
}

/// Fuzz entry (`fuzz/fuzz_targets/rfb.rs`): `data` plays a VNC server —
/// the handshake, then server messages until the bytes run out or one is
/// refused. Checks that the framebuffer always matches its size and that
/// every reported damage lies inside it.
pub fn fuzz_session(data: &[u8]) {
    struct Server<'a> {
        input: &'a [u8],
    }
    impl Read for Server<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }
    impl Write for Server<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    const LIMIT: u64 = 1 << 20;
    let mut s = Server { input: data };
    let Ok(init) = handshake(&mut s) else {
        return;
    };
    if u64::from(init.width) * u64::from(init.height) > LIMIT {
        return;
    }
    let mut fb = Framebuffer::new(init.width, init.height);
    while let Ok(ev) = read_message_limited(&mut s.input, &mut fb, LIMIT) {
        assert_eq!(
            fb.pixels.len() as u64,
            u64::from(fb.width) * u64::from(fb.height)
        );
        if let ServerEvent::Update { damage, .. } = ev {
            assert!(damage.inside(fb.width, fb.height), "{damage:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// An in-memory server: reads come from `input`, writes go to `output`.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn server_init(w: u16, h: u16, name: &str) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&w.to_be_bytes());
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&PixelFormat::BGRX.encode());
        v.extend_from_slice(&(name.len() as u32).to_be_bytes());
        v.extend_from_slice(name.as_bytes());
        v
    }

    #[test]
    fn handshake_38_none() {
        let mut input = b"RFB 003.008\n".to_vec();
        input.extend_from_slice(&[2, 2, 1]); // VNC auth, None
        input.extend_from_slice(&0u32.to_be_bytes());
        input.extend(server_init(640, 480, "QEMU (vm)"));
        let mut d = Duplex {
            input: Cursor::new(input),
            output: Vec::new(),
        };
        let init = handshake(&mut d).unwrap();
        assert_eq!((init.width, init.height), (640, 480));
        assert_eq!(init.name, "QEMU (vm)");
        let out = &d.output;
        assert_eq!(&out[..12], b"RFB 003.008\n");
        assert_eq!(out[12], 1, "security None chosen");
        assert_eq!(out[13], 1, "shared ClientInit");
        assert_eq!(out[14], 0, "SetPixelFormat");
        assert_eq!(&out[18..34], &PixelFormat::BGRX.encode());
        assert_eq!(out[34], 2, "SetEncodings");
        let n = u16::from_be_bytes([out[36], out[37]]) as usize;
        let encs: Vec<i32> = out[38..38 + 4 * n]
            .chunks(4)
            .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(encs, ENCODINGS);
    }

    #[test]
    fn handshake_33_and_refusals() {
        let mut input = b"RFB 003.003\n".to_vec();
        input.extend_from_slice(&1u32.to_be_bytes());
        input.extend(server_init(320, 200, "x"));
        let mut d = Duplex {
            input: Cursor::new(input),
            output: Vec::new(),
        };
        assert_eq!(handshake(&mut d).unwrap().width, 320);
        assert_eq!(&d.output[..12], b"RFB 003.003\n");

        let mut input = b"RFB 003.008\n".to_vec();
        input.push(0);
        input.extend_from_slice(&4u32.to_be_bytes());
        input.extend_from_slice(b"busy");
        let mut d = Duplex {
            input: Cursor::new(input),
            output: Vec::new(),
        };
        assert!(matches!(handshake(&mut d), Err(RfbError::Refused(m)) if m == "busy"));

        let mut input = b"RFB 003.008\n".to_vec();
        input.extend_from_slice(&[1, 2]);
        let mut d = Duplex {
            input: Cursor::new(input),
            output: Vec::new(),
        };
        assert!(matches!(handshake(&mut d), Err(RfbError::NoSecurityType(t)) if t == [2]));

        let mut d = Duplex {
            input: Cursor::new(b"HTTP/1.1 200".to_vec()),
            output: Vec::new(),
        };
        assert!(matches!(handshake(&mut d), Err(RfbError::NotRfb(_))));
    }

    #[test]
    fn oversized_name_is_refused_before_allocating() {
        let mut input = b"RFB 003.008\n".to_vec();
        input.extend_from_slice(&[1, 1]);
        input.extend_from_slice(&0u32.to_be_bytes());
        input.extend_from_slice(&640u16.to_be_bytes());
        input.extend_from_slice(&480u16.to_be_bytes());
        input.extend_from_slice(&PixelFormat::BGRX.encode());
        input.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut d = Duplex {
            input: Cursor::new(input),
            output: Vec::new(),
        };
        assert!(matches!(handshake(&mut d), Err(RfbError::Protocol(_))));
    }

    fn rect_header(x: u16, y: u16, w: u16, h: u16, enc: i32) -> Vec<u8> {
        let mut v = Vec::new();
        for n in [x, y, w, h] {
            v.extend_from_slice(&n.to_be_bytes());
        }
        v.extend_from_slice(&enc.to_be_bytes());
        v
    }

    fn update(rects: &[Vec<u8>]) -> Vec<u8> {
        let mut v = vec![0, 0];
        v.extend_from_slice(&(rects.len() as u16).to_be_bytes());
        for r in rects {
            v.extend_from_slice(r);
        }
        v
    }

    #[test]
    fn raw_and_copyrect_update_the_framebuffer() {
        let mut fb = Framebuffer::new(4, 3);
        let mut raw = rect_header(1, 1, 2, 1, ENC_RAW);
        raw.extend_from_slice(&[0x11, 0x22, 0x33, 0xff, 0x44, 0x55, 0x66, 0x00]);
        let msg = update(&[raw]);
        let ev = read_message(&mut Cursor::new(msg), &mut fb).unwrap();
        assert_eq!(
            ev,
            ServerEvent::Update {
                damage: Rect::new(1, 1, 2, 1),
                resized: false
            }
        );
        // Padding byte dropped; B,G,R in memory order.
        assert_eq!(fb.pixel(1, 1), 0x0033_2211);
        assert_eq!(fb.pixel(2, 1), 0x0066_5544);

        // Copy row 1 to row 2, shifted left by one.
        let mut cr = rect_header(0, 2, 2, 1, ENC_COPY_RECT);
        cr.extend_from_slice(&1u16.to_be_bytes());
        cr.extend_from_slice(&1u16.to_be_bytes());
        read_message(&mut Cursor::new(update(&[cr])), &mut fb).unwrap();
        assert_eq!(fb.pixel(0, 2), 0x0033_2211);
        assert_eq!(fb.pixel(1, 2), 0x0066_5544);
    }

    #[test]
    fn overlapping_copyrect_downwards_keeps_source_rows() {
        let mut fb = Framebuffer::new(1, 4);
        fb.pixels = vec![1, 2, 3, 4];
        copy_rect(&mut fb, Rect::new(0, 0, 1, 3), Rect::new(0, 1, 1, 3));
        assert_eq!(fb.pixels, vec![1, 1, 2, 3]);
        fb.pixels = vec![1, 2, 3, 4];
        copy_rect(&mut fb, Rect::new(0, 1, 1, 3), Rect::new(0, 0, 1, 3));
        assert_eq!(fb.pixels, vec![2, 3, 4, 4]);
    }

    #[test]
    fn rectangles_outside_the_framebuffer_are_refused() {
        for (x, y, w, h) in [(3, 0, 2, 1), (0, 2, 1, 2), (0xffff, 0xffff, 0xffff, 0xffff)] {
            let mut fb = Framebuffer::new(4, 3);
            let msg = update(&[rect_header(x, y, w, h, ENC_RAW)]);
            let err = read_message(&mut Cursor::new(msg), &mut fb).unwrap_err();
            assert!(matches!(err, RfbError::Protocol(_)), "{err:?}");
        }
        let mut fb = Framebuffer::new(4, 3);
        let mut cr = rect_header(0, 0, 2, 2, ENC_COPY_RECT);
        cr.extend_from_slice(&3u16.to_be_bytes());
        cr.extend_from_slice(&0u16.to_be_bytes());
        assert!(read_message(&mut Cursor::new(update(&[cr])), &mut fb).is_err());
    }

    #[test]
    fn desktop_size_resizes_and_caps() {
        let mut fb = Framebuffer::new(4, 3);
        let msg = update(&[rect_header(0, 0, 800, 600, ENC_DESKTOP_SIZE)]);
        let ev = read_message(&mut Cursor::new(msg), &mut fb).unwrap();
        assert_eq!(
            ev,
            ServerEvent::Update {
                damage: Rect::new(0, 0, 800, 600),
                resized: true
            }
        );
        assert_eq!(fb.pixels.len(), 800 * 600);
        let msg = update(&[rect_header(0, 0, 60000, 600, ENC_DESKTOP_SIZE)]);
        assert!(read_message(&mut Cursor::new(msg), &mut fb).is_err());
    }

    #[test]
    fn pseudo_rectangles_and_other_messages() {
        let mut fb = Framebuffer::new(4, 3);
        let msg = update(&[rect_header(1, 0, 0, 0, ENC_QEMU_POINTER_MOTION_CHANGE)]);
        assert_eq!(
            read_message(&mut Cursor::new(msg), &mut fb).unwrap(),
            ServerEvent::PointerMode { absolute: true }
        );
        let msg = update(&[rect_header(0, 0, 0, 0, ENC_QEMU_EXTENDED_KEY_EVENT)]);
        assert_eq!(
            read_message(&mut Cursor::new(msg), &mut fb).unwrap(),
            ServerEvent::ExtendedKeys
        );
        assert_eq!(
            read_message(&mut Cursor::new(vec![2]), &mut fb).unwrap(),
            ServerEvent::Bell
        );
        let mut cut = vec![3, 0, 0, 0];
        cut.extend_from_slice(&2u32.to_be_bytes());
        cut.extend_from_slice(b"hi");
        assert_eq!(
            read_message(&mut Cursor::new(cut), &mut fb).unwrap(),
            ServerEvent::CutText("hi".into())
        );
        let mut cut = vec![3, 0, 0, 0];
        cut.extend_from_slice(&(MAX_TEXT + 1).to_be_bytes());
        assert!(read_message(&mut Cursor::new(cut), &mut fb).is_err());
        assert!(read_message(&mut Cursor::new(vec![77]), &mut fb).is_err());
        // Unrequested encoding.
        let msg = update(&[rect_header(0, 0, 1, 1, 16)]);
        assert!(read_message(&mut Cursor::new(msg), &mut fb).is_err());
        // Truncated rectangle.
        let mut raw = rect_header(0, 0, 2, 1, ENC_RAW);
        raw.extend_from_slice(&[1, 2, 3]);
        assert!(matches!(
            read_message(&mut Cursor::new(update(&[raw])), &mut fb),
            Err(RfbError::Io(_))
        ));
    }

    #[test]
    fn fuzz_entry_survives_seeds_and_noise() {
        let mut seed = b"RFB 003.008\n".to_vec();
        seed.extend_from_slice(&[1, 1]);
        seed.extend_from_slice(&0u32.to_be_bytes());
        seed.extend(server_init(4, 3, "x"));
        let mut raw = rect_header(1, 1, 2, 1, ENC_RAW);
        raw.extend_from_slice(&[1; 8]);
        seed.extend(update(&[raw, rect_header(0, 0, 9, 9, ENC_DESKTOP_SIZE)]));
        fuzz_session(&seed);
        // Every prefix, and pseudo-random bytes after a valid handshake.
        for n in 0..seed.len() {
            fuzz_session(&seed[..n]);
        }
        let mut x: u32 = 0x1234_5678;
        for _ in 0..200 {
            let mut d = seed[..seed.len() - 20].to_vec();
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                d.push(x as u8);
            }
            fuzz_session(&d);
        }
    }

    #[test]
    fn client_messages_encode() {
        assert_eq!(
            update_request(true, Rect::new(0, 0, 640, 480)),
            [3, 1, 0, 0, 0, 0, 2, 128, 1, 224]
        );
        assert_eq!(key_event(true, 0xff0d), [4, 1, 0, 0, 0, 0, 0xff, 0x0d]);
        assert_eq!(
            qemu_key_event(false, 0, 0x9d),
            [255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x9d]
        );
        assert_eq!(pointer_event(1, 300, 2), [5, 1, 1, 44, 0, 2]);
    }
}
