//! Where the presenter draws: the machine's framebuffer or memory.
//!
//! A [`Display`] is a canvas of `0x00RRGGBB` pixels (the presenter draws
//! into it) plus `flush(rect)`, which makes a changed rectangle visible.
//! Backends:
//! - [`FbDisplay`]: Linux fbdev (`/dev/fb0`): `FBIOGET_VSCREENINFO` /
//!   `FBIOGET_FSCREENINFO`, the framebuffer `mmap`ed; flush copies the
//!   rectangle from the canvas (a shadow buffer, so the device memory is
//!   only ever written, never read — reading VRAM is slow) converting to
//!   the device's format (32 bpp XRGB/XBGR or 16 bpp RGB565, from the
//!   bitfield offsets the driver reports). DRM drivers (virtio-gpu, bochs,
//!   i915, amdgpu…) provide `/dev/fb0` through their fbdev emulation, and
//!   firmware framebuffers (efifb, vesafb) are fbdev already.
//! - [`MemoryDisplay`]: a pixel vector others can look at (tests, bench).
//!
//! Limits: no DRM/KMS modesetting of its own (the mode is the one the
//! firmware or the DRM driver's fbdev emulation chose — the native mode on
//! the machines tried); no 24 bpp or palette framebuffers (refused with an
//! error naming the format).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::rfb::Rect;

/// Why a framebuffer cannot be drawn on.
#[derive(Debug, thiserror::Error)]
pub enum DisplayError {
    /// The device could not be opened.
    #[error(
        "cannot open the framebuffer {path}: is a display driver loaded (efifb, bochs, virtio-gpu)?"
    )]
    Open {
        /// The device.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The device's screen information could not be read.
    #[error("cannot query the framebuffer {path}")]
    Query {
        /// The device.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The device's pixel format is not one the presenter draws.
    #[error("framebuffer {path} uses {bpp} bits per pixel; only 32 and 16 are supported")]
    Format {
        /// The device.
        path: PathBuf,
        /// Its bits per pixel.
        bpp: u32,
    },
    /// The device memory could not be mapped.
    #[error("cannot map the framebuffer {path}")]
    Map {
        /// The device.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The pixels the presenter draws into.
pub struct Canvas<'a> {
    /// Pixels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Row-major, `width` pixels per row.
    pub pixels: &'a mut [u32],
}

impl Canvas<'_> {
    /// Fills rectangle `r` (clipped to the canvas) with `colour` (0x00RRGGBB).
    pub fn fill(&mut self, r: Rect, colour: u32) {
        let r = clip(r, self.width, self.height);
        for y in r.y..r.y + r.h {
            let s = (y * self.width + r.x) as usize;
            self.pixels[s..s + r.w as usize].fill(colour);
        }
    }

    /// The whole canvas.
    pub fn full(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }
}

/// Clips `r` to a `w` × `h` area.
pub fn clip(r: Rect, w: u32, h: u32) -> Rect {
    let x = r.x.min(w);
    let y = r.y.min(h);
    Rect::new(x, y, r.w.min(w - x), r.h.min(h - y))
}

/// Where the presenter draws: a framebuffer device or memory (tests), drawn on
/// through a canvas and shown by flushing.
pub trait Display: Send {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// The pixels to draw into (not shown until flushed).
    fn canvas(&mut self) -> Canvas<'_>;
    /// Makes `r` of the canvas visible.
    fn flush(&mut self, r: Rect);
    /// Checks that the device is still the one drawn on. A framebuffer can
    /// be replaced under the presenter (a DRM driver taking over from efifb
    /// during boot) or change mode; the display then reopens itself and
    /// returns `Ok(true)`: everything must be drawn again, at the new size.
    fn revalidate(&mut self) -> Result<bool, DisplayError> {
        Ok(false)
    }
}

/// Counters a [`MemoryDisplay`] shares with whoever watches it.
#[derive(Debug, Default)]
pub struct MemoryStats {
    /// How many flushes there were.
    pub flushes: AtomicU64,
    /// How many pixels they copied in all.
    pub flushed_pixels: AtomicU64,
    /// When the last flush happened (for latency measurements).
    pub last_flush: Mutex<Option<Instant>>,
}

/// An in-memory display: `visible` holds what a screen would show (only
/// flushed rectangles reach it, like a real device).
pub struct MemoryDisplay {
    width: u32,
    height: u32,
    canvas: Vec<u32>,
    /// What a screen would show: the flushed pixels, row-major.
    pub visible: Arc<Mutex<Vec<u32>>>,
    /// Counters of the flushes.
    pub stats: Arc<MemoryStats>,
}

impl MemoryDisplay {
    /// A black display of `width` × `height` pixels.
    pub fn new(width: u32, height: u32) -> MemoryDisplay {
        let n = (width * height) as usize;
        MemoryDisplay {
            width,
            height,
            canvas: vec![0; n],
            visible: Arc::new(Mutex::new(vec![0; n])),
            stats: Arc::default(),
        }
    }
}

impl Display for MemoryDisplay {
    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn canvas(&mut self) -> Canvas<'_> {
        Canvas {
            width: self.width,
            height: self.height,
            pixels: &mut self.canvas,
        }
    }

    fn flush(&mut self, r: Rect) {
        let r = clip(r, self.width, self.height);
        {
            let mut v = self.visible.lock().unwrap_or_else(|p| p.into_inner());
            for y in r.y..r.y + r.h {
                let s = (y * self.width + r.x) as usize;
                v[s..s + r.w as usize].copy_from_slice(&self.canvas[s..s + r.w as usize]);
            }
        }
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        self.stats
            .flushed_pixels
            .fetch_add(u64::from(r.w) * u64::from(r.h), Ordering::Relaxed);
        *self
            .stats
            .last_flush
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }
}

// linux/fb.h
const FBIOGET_VSCREENINFO: libc::c_ulong = 0x4600;
const FBIOGET_FSCREENINFO: libc::c_ulong = 0x4602;

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct FbBitfield {
    offset: u32,
    length: u32,
    msb_right: u32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct FbVarScreeninfo {
    xres: u32,
    yres: u32,
    xres_virtual: u32,
    yres_virtual: u32,
    xoffset: u32,
    yoffset: u32,
    bits_per_pixel: u32,
    grayscale: u32,
    red: FbBitfield,
    green: FbBitfield,
    blue: FbBitfield,
    transp: FbBitfield,
    nonstd: u32,
    activate: u32,
    height: u32,
    width: u32,
    accel_flags: u32,
    pixclock: u32,
    left_margin: u32,
    right_margin: u32,
    upper_margin: u32,
    lower_margin: u32,
    hsync_len: u32,
    vsync_len: u32,
    sync: u32,
    vmode: u32,
    rotate: u32,
    colorspace: u32,
    reserved: [u32; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct FbFixScreeninfo {
    id: [u8; 16],
    smem_start: libc::c_ulong,
    smem_len: u32,
    type_: u32,
    type_aux: u32,
    visual: u32,
    xpanstep: u16,
    ypanstep: u16,
    ywrapstep: u16,
    line_length: u32,
    mmio_start: libc::c_ulong,
    mmio_len: u32,
    accel: u32,
    capabilities: u16,
    reserved: [u16; 2],
}

/// How canvas pixels become device pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceFormat {
    /// 32 bpp, red/green/blue at these bit offsets.
    Bits32 {
        /// Bit offset of red.
        r: u32,
        /// Bit offset of green.
        g: u32,
        /// Bit offset of blue.
        b: u32,
    },
    /// 16 bpp RGB565.
    Rgb565,
}

impl DeviceFormat {
    fn convert32(self, p: u32) -> u32 {
        match self {
            DeviceFormat::Bits32 { r: 16, g: 8, b: 0 } => p,
            DeviceFormat::Bits32 { r, g, b } => {
                (((p >> 16) & 0xff) << r) | (((p >> 8) & 0xff) << g) | ((p & 0xff) << b)
            }
            DeviceFormat::Rgb565 => ((p >> 8) & 0xf800) | ((p >> 5) & 0x07e0) | ((p >> 3) & 0x001f),
        }
    }
}

/// A Linux fbdev framebuffer.
pub struct FbDisplay {
    path: PathBuf,
    _file: File,
    map: *mut u8,
    map_len: usize,
    /// Byte offset of the visible area's first pixel.
    origin: usize,
    line_length: usize,
    format: DeviceFormat,
    width: u32,
    height: u32,
    shadow: Vec<u32>,
    /// The driver's name for the device (`EFI VGA`, `bochsdrmfb`, …).
    pub id: String,
}

// SAFETY: the mapping is owned by this value alone (nobody else gets the
// pointer) and unmapped in Drop; moving it to another thread is fine.
unsafe impl Send for FbDisplay {}

impl FbDisplay {
    /// Opens and maps the framebuffer device at `path` (`/dev/fb0`).
    pub fn open(path: &Path) -> Result<FbDisplay, DisplayError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| DisplayError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let fd = file.as_raw_fd();
        let q = |source| DisplayError::Query {
            path: path.to_path_buf(),
            source,
        };
        let mut var = FbVarScreeninfo::default();
        // SAFETY: FBIOGET_VSCREENINFO writes one fb_var_screeninfo, which
        // `var` is (repr(C), same layout as linux/fb.h).
        if unsafe { libc::ioctl(fd, FBIOGET_VSCREENINFO, &mut var) } < 0 {
            return Err(q(std::io::Error::last_os_error()));
        }
        // SAFETY: all-zero bytes are a valid FbFixScreeninfo (integers).
        let mut fix: FbFixScreeninfo = unsafe { std::mem::zeroed() };
        // SAFETY: FBIOGET_FSCREENINFO writes one fb_fix_screeninfo into `fix`.
        if unsafe { libc::ioctl(fd, FBIOGET_FSCREENINFO, &mut fix) } < 0 {
            return Err(q(std::io::Error::last_os_error()));
        }
        let format = match var.bits_per_pixel {
            32 => DeviceFormat::Bits32 {
                r: var.red.offset,
                g: var.green.offset,
                b: var.blue.offset,
            },
            16 => DeviceFormat::Rgb565,
            bpp => {
                return Err(DisplayError::Format {
                    path: path.to_path_buf(),
                    bpp,
                });
            }
        };
        let bytes_pp = (var.bits_per_pixel / 8) as usize;
        let line_length = fix.line_length as usize;
        let origin = var.yoffset as usize * line_length + var.xoffset as usize * bytes_pp;
        let map_len = fix.smem_len as usize;
        let needed = origin
            + (var.yres as usize).saturating_sub(1) * line_length
            + var.xres as usize * bytes_pp;
        if var.xres == 0
            || var.yres == 0
            || line_length < var.xres as usize * bytes_pp
            || needed > map_len
        {
            return Err(q(std::io::Error::other(format!(
                "inconsistent geometry {}x{} line {} memory {}",
                var.xres, var.yres, line_length, map_len
            ))));
        }
        // SAFETY: mapping `map_len` bytes of the device shared; the result is
        // checked against MAP_FAILED and unmapped in Drop.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(DisplayError::Map {
                path: path.to_path_buf(),
                source: std::io::Error::last_os_error(),
            });
        }
        let id = String::from_utf8_lossy(&fix.id)
            .trim_end_matches('\0')
            .to_string();
        Ok(FbDisplay {
            path: path.to_path_buf(),
            _file: file,
            map: map.cast(),
            map_len,
            origin,
            line_length,
            format,
            width: var.xres,
            height: var.yres,
            shadow: vec![0; (var.xres * var.yres) as usize],
            id,
        })
    }

    /// The device's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How its pixels are laid out.
    pub fn format(&self) -> DeviceFormat {
        self.format
    }
}

/// The geometry that matters for drawing, as the driver reports it now.
fn geometry(fd: libc::c_int) -> Option<(u32, u32, u32, u32, u32)> {
    let mut var = FbVarScreeninfo::default();
    // SAFETY: FBIOGET_VSCREENINFO writes one fb_var_screeninfo into `var`.
    if unsafe { libc::ioctl(fd, FBIOGET_VSCREENINFO, &mut var) } < 0 {
        return None;
    }
    Some((
        var.xres,
        var.yres,
        var.bits_per_pixel,
        var.xoffset,
        var.yoffset,
    ))
}

impl Drop for FbDisplay {
    fn drop(&mut self) {
        // SAFETY: `map`/`map_len` are exactly what mmap returned in open.
        unsafe {
            libc::munmap(self.map.cast(), self.map_len);
        }
    }
}

impl Display for FbDisplay {
    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn revalidate(&mut self) -> Result<bool, DisplayError> {
        let bpp = match self.format {
            DeviceFormat::Bits32 { .. } => 32,
            DeviceFormat::Rgb565 => 16,
        };
        let now = geometry(self._file.as_raw_fd());
        let origin_ok = |(_, _, b, xo, yo): (u32, u32, u32, u32, u32)| {
            let line = self.line_length;
            yo as usize * line + xo as usize * (b as usize / 8) == self.origin
        };
        if let Some(g) = now
            && (g.0, g.1, g.2) == (self.width, self.height, bpp)
            && origin_ok(g)
        {
            return Ok(false);
        }
        // Unregistered (ENODEV on the old descriptor) or a new mode: open
        // whatever the path is now.
        *self = FbDisplay::open(&self.path.clone())?;
        Ok(true)
    }

    fn canvas(&mut self) -> Canvas<'_> {
        Canvas {
            width: self.width,
            height: self.height,
            pixels: &mut self.shadow,
        }
    }

    fn flush(&mut self, r: Rect) {
        let r = clip(r, self.width, self.height);
        for y in r.y..r.y + r.h {
            let src = &self.shadow[(y * self.width + r.x) as usize..][..r.w as usize];
            let row = self.origin + y as usize * self.line_length;
            match self.format {
                DeviceFormat::Bits32 { .. } => {
                    let start = row + r.x as usize * 4;
                    // SAFETY: open() checked that every visible row
                    // (origin + y*line_length + xres*4) lies inside the
                    // mapping, and r is clipped to xres × yres; the
                    // offset is 4-aligned because mmap is page-aligned and
                    // line_length/xoffset are multiples of the pixel size.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            self.map.add(start).cast::<u32>(),
                            r.w as usize,
                        )
                    };
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d = self.format.convert32(*s);
                    }
                }
                DeviceFormat::Rgb565 => {
                    let start = row + r.x as usize * 2;
                    // SAFETY: as above, with 2 bytes per pixel.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            self.map.add(start).cast::<u16>(),
                            r.w as usize,
                        )
                    };
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d = self.format.convert32(*s) as u16;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_convert() {
        let p = 0x00aa_bbcc;
        assert_eq!(DeviceFormat::Bits32 { r: 16, g: 8, b: 0 }.convert32(p), p);
        assert_eq!(
            DeviceFormat::Bits32 { r: 0, g: 8, b: 16 }.convert32(p),
            0x00cc_bbaa
        );
        assert_eq!(DeviceFormat::Rgb565.convert32(0x00ff_ffff), 0xffff);
        assert_eq!(DeviceFormat::Rgb565.convert32(0x00ff_0000), 0xf800);
        assert_eq!(DeviceFormat::Rgb565.convert32(0x0000_ff00), 0x07e0);
    }

    #[test]
    fn memory_display_shows_only_flushed_rectangles() {
        let mut d = MemoryDisplay::new(4, 2);
        d.canvas().fill(Rect::new(0, 0, 4, 2), 7);
        d.flush(Rect::new(1, 1, 10, 10));
        let v = d.visible.lock().unwrap().clone();
        assert_eq!(v, vec![0, 0, 0, 0, 0, 7, 7, 7]);
        assert_eq!(d.stats.flushes.load(Ordering::Relaxed), 1);
        assert_eq!(d.stats.flushed_pixels.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn missing_framebuffer_says_what_to_do() {
        let err = match FbDisplay::open(Path::new("/nonexistent/fb0")) {
            Err(e) => e,
            Ok(_) => panic!("opened a missing framebuffer"),
        };
        assert!(err.to_string().contains("display driver"), "{err}");
    }
}
