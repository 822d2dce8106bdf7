//! Fitting a VM's framebuffer onto the display with its aspect ratio kept.
//!
//! The image is scaled by the largest factor that fits (up or down) and
//! centred; the bars around it are black. Sampling is nearest-neighbour
//! through per-axis lookup tables built once per size change, so drawing a
//! changed region costs one table lookup per pixel. When the VM and the
//! display have the same size, it is a plain copy.
//!
//! Rejected: bilinear filtering — it blurs text at the common 1:1 and
//! integer factors and costs 4 reads per pixel in a loop that runs on every
//! guest update; nearest keeps glyphs crisp.

use crate::display::Canvas;
use crate::rfb::{Framebuffer, Rect};

/// Where a `src_w` × `src_h` image lands on a `dst_w` × `dst_h` display.
pub fn fit(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> Rect {
    if src_w == 0 || src_h == 0 || dst_w == 0 || dst_h == 0 {
        return Rect::default();
    }
    let (sw, sh, dw, dh) = (
        u64::from(src_w),
        u64::from(src_h),
        u64::from(dst_w),
        u64::from(dst_h),
    );
    // Compare aspect ratios without division: sw/sh vs dw/dh.
    let (w, h) = if sw * dh >= dw * sh {
        // Wider than the display: full width.
        (dw, (sh * dw / sw).max(1))
    } else {
        ((sw * dh / sh).max(1), dh)
    };
    Rect::new(
        ((dw - w) / 2) as u32,
        ((dh - h) / 2) as u32,
        w as u32,
        h as u32,
    )
}

/// Maps a VM framebuffer onto a display area.
#[derive(Debug, Clone)]
pub struct Scaler {
    src_w: u32,
    src_h: u32,
    /// Where the image lands on the display.
    pub dest: Rect,
    /// Display column (relative to `dest.x`) → source column.
    xmap: Vec<u32>,
    ymap: Vec<u32>,
}

impl Scaler {
    /// A scaler from a `src_w` × `src_h` image to a `dst_w` × `dst_h` display
    /// (aspect ratio kept, centred).
    pub fn new(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> Scaler {
        let dest = fit(src_w, src_h, dst_w, dst_h);
        // Sample at pixel centres: src = floor((d + 0.5) * s / D).
        let map = |d: u32, s: u32| -> Vec<u32> {
            (0..d)
                .map(|i| ((u64::from(i) * 2 + 1) * u64::from(s) / (2 * u64::from(d))) as u32)
                .map(|v| v.min(s.saturating_sub(1)))
                .collect()
        };
        Scaler {
            src_w,
            src_h,
            dest,
            xmap: map(dest.w, src_w),
            ymap: map(dest.h, src_h),
        }
    }

    /// The source image's size.
    pub fn source_size(&self) -> (u32, u32) {
        (self.src_w, self.src_h)
    }

    /// The display rectangle showing (at least) the source rectangle `r`.
    pub fn to_display(&self, r: Rect) -> Rect {
        if r.is_empty() || self.dest.is_empty() {
            return Rect::default();
        }
        let conv = |v: u32, s: u32, d: u32, round_up: bool| -> u32 {
            let num = u64::from(v) * u64::from(d);
            let q = if round_up {
                num.div_ceil(u64::from(s))
            } else {
                num / u64::from(s)
            };
            q.min(u64::from(d)) as u32
        };
        // One extra pixel each way covers centre-sampling rounding.
        let x0 = conv(r.x, self.src_w, self.dest.w, false).saturating_sub(1);
        let y0 = conv(r.y, self.src_h, self.dest.h, false).saturating_sub(1);
        let x1 = (conv(r.x + r.w, self.src_w, self.dest.w, true) + 1).min(self.dest.w);
        let y1 = (conv(r.y + r.h, self.src_h, self.dest.h, true) + 1).min(self.dest.h);
        Rect::new(self.dest.x + x0, self.dest.y + y0, x1 - x0, y1 - y0)
    }

    /// A display position → source position (for absolute pointers), or
    /// None in the bars.
    pub fn to_source(&self, x: u32, y: u32) -> Option<(u32, u32)> {
        let d = self.dest;
        if x < d.x || y < d.y || x >= d.x + d.w || y >= d.y + d.h {
            return None;
        }
        Some((self.xmap[(x - d.x) as usize], self.ymap[(y - d.y) as usize]))
    }

    /// Draws the part of `fb` that changed in `damage` (source pixels) and
    /// returns the display rectangle to flush.
    pub fn draw(&self, fb: &Framebuffer, damage: Rect, canvas: &mut Canvas<'_>) -> Rect {
        if fb.width != self.src_w || fb.height != self.src_h {
            return Rect::default();
        }
        let out = self.to_display(damage);
        let cw = canvas.width as usize;
        for dy in out.y..out.y + out.h {
            let sy = self.ymap[(dy - self.dest.y) as usize] as usize;
            let src_row = &fb.pixels[sy * fb.width as usize..][..fb.width as usize];
            let dst_row = &mut canvas.pixels[dy as usize * cw..][..cw];
            let xs = (out.x - self.dest.x) as usize;
            let xmap = &self.xmap[xs..xs + out.w as usize];
            let dst = &mut dst_row[out.x as usize..out.x as usize + out.w as usize];
            if self.dest.w == self.src_w {
                dst.copy_from_slice(&src_row[xs..xs + out.w as usize]);
            } else {
                for (d, &sx) in dst.iter_mut().zip(xmap) {
                    *d = src_row[sx as usize];
                }
            }
        }
        out
    }

    /// Clears the bars around the image (after a size change).
    pub fn draw_bars(&self, canvas: &mut Canvas<'_>) {
        let (w, h) = (canvas.width, canvas.height);
        let d = self.dest;
        canvas.fill(Rect::new(0, 0, w, d.y), 0);
        canvas.fill(Rect::new(0, d.y + d.h, w, h.saturating_sub(d.y + d.h)), 0);
        canvas.fill(Rect::new(0, d.y, d.x, d.h), 0);
        canvas.fill(
            Rect::new(d.x + d.w, d.y, w.saturating_sub(d.x + d.w), d.h),
            0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_keeps_the_aspect_ratio() {
        // 4:3 guest on a 16:9 display: pillar-boxed, full height.
        assert_eq!(fit(1024, 768, 1920, 1080), Rect::new(240, 0, 1440, 1080));
        // 16:10 guest on a 4:3 display: letter-boxed, full width.
        assert_eq!(fit(1280, 800, 1024, 768), Rect::new(0, 64, 1024, 640));
        // Same size: identity.
        assert_eq!(fit(800, 600, 800, 600), Rect::new(0, 0, 800, 600));
        // Upscaling a small text mode.
        assert_eq!(fit(720, 400, 1440, 900), Rect::new(0, 50, 1440, 800));
        assert_eq!(fit(0, 10, 100, 100), Rect::default());
        // Extreme shapes never produce a zero-sized image.
        assert_eq!(fit(8000, 1, 100, 100).h, 1);
    }

    fn pattern(w: u32, h: u32) -> Framebuffer {
        let mut fb = Framebuffer::new(w as u16, h as u16);
        for y in 0..h {
            for x in 0..w {
                fb.pixels[(y * w + x) as usize] = (x << 12) | y;
            }
        }
        fb
    }

    #[test]
    fn identity_scale_copies_pixels() {
        let fb = pattern(8, 6);
        let s = Scaler::new(8, 6, 8, 6);
        let mut px = vec![0u32; 48];
        let mut c = Canvas {
            width: 8,
            height: 6,
            pixels: &mut px,
        };
        let out = s.draw(&fb, fb.full(), &mut c);
        assert_eq!(out, Rect::new(0, 0, 8, 6));
        assert_eq!(px, fb.pixels);
    }

    #[test]
    fn double_scale_and_damage_mapping() {
        let fb = pattern(4, 3);
        let s = Scaler::new(4, 3, 10, 6);
        assert_eq!(s.dest, Rect::new(1, 0, 8, 6));
        let mut px = vec![0xdead; 60];
        let mut c = Canvas {
            width: 10,
            height: 6,
            pixels: &mut px,
        };
        s.draw_bars(&mut c);
        let out = s.draw(&fb, fb.full(), &mut c);
        assert_eq!(out, s.dest);
        for y in 0..6u32 {
            for x in 0..10u32 {
                let got = px[(y * 10 + x) as usize];
                let want = match s.to_source(x, y) {
                    Some((sx, sy)) => fb.pixel(sx, sy),
                    None => 0,
                };
                assert_eq!(got, want, "at {x},{y}");
            }
        }
        assert_eq!(s.to_source(1, 0), Some((0, 0)));
        assert_eq!(s.to_source(8, 5), Some((3, 2)));
        assert_eq!(s.to_source(0, 0), None);
        // A one-pixel change maps to a small display rectangle covering
        // every display pixel sampled from it.
        let r = s.to_display(Rect::new(2, 1, 1, 1));
        for y in 0..6u32 {
            for x in 0..10u32 {
                if s.to_source(x, y) == Some((2, 1)) {
                    let inside = x >= r.x && x < r.x + r.w && y >= r.y && y < r.y + r.h;
                    assert!(inside, "{x},{y} outside {r:?}");
                }
            }
        }
        assert!(r.w <= 4 && r.h <= 4, "{r:?}");
    }

    #[test]
    fn damage_covers_sampled_pixels_at_odd_factors() {
        // Random-ish sizes: every display pixel sampled from a damaged
        // source pixel lies inside the flushed rectangle.
        for (sw, sh, dw, dh) in [
            (640, 480, 1366, 768),
            (720, 400, 1024, 768),
            (1920, 1080, 1280, 1024),
        ] {
            let s = Scaler::new(sw, sh, dw, dh);
            for (x, y) in [(0, 0), (sw - 1, sh - 1), (sw / 3, sh / 7)] {
                let r = s.to_display(Rect::new(x, y, 1, 1));
                for dy in s.dest.y..s.dest.y + s.dest.h {
                    if s.ymap[(dy - s.dest.y) as usize] != y {
                        continue;
                    }
                    for dx in s.dest.x..s.dest.x + s.dest.w {
                        if s.xmap[(dx - s.dest.x) as usize] == x {
                            assert!(
                                dx >= r.x && dx < r.x + r.w && dy >= r.y && dy < r.y + r.h,
                                "{sw}x{sh}->{dw}x{dh}: ({dx},{dy}) outside {r:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}
