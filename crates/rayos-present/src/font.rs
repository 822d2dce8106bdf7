//! Text drawing with the built-in 8x16 bitmap font (`font_data.rs`),
//! and the reverse ([`read_text`]): recognising drawn text exactly, which
//! tests use to check what a screen says.
//!
//! Only printable ASCII is drawn; anything else shows as `?`.

use crate::display::Canvas;
use crate::font_data::{FIRST, GLYPHS, HEIGHT, LAST, WIDTH};

/// Cell size in pixels at `scale`.
pub fn cell(scale: u32) -> (u32, u32) {
    (WIDTH as u32 * scale, HEIGHT as u32 * scale)
}

fn glyph(c: char) -> &'static [u8; HEIGHT] {
    let b = if c.is_ascii() && (FIRST..=LAST).contains(&(c as u8)) {
        c as u8
    } else {
        b'?'
    };
    &GLYPHS[usize::from(b - FIRST)]
}

/// Draws `text` with its top-left corner at (`x`, `y`), each glyph pixel a
/// `scale` × `scale` square; the cell background is painted `bg`. Clipped
/// to the canvas. Returns the width drawn.
pub fn draw_text(
    c: &mut Canvas<'_>,
    x: u32,
    y: u32,
    text: &str,
    fg: u32,
    bg: u32,
    scale: u32,
) -> u32 {
    let scale = scale.max(1);
    let (cw, ch) = cell(scale);
    let mut cx = x;
    for ch_ in text.chars() {
        let g = glyph(ch_);
        for gy in 0..ch {
            let py = y + gy;
            if py >= c.height {
                break;
            }
            let bits = g[(gy / scale) as usize];
            for gx in 0..cw {
                let px = cx + gx;
                if px >= c.width {
                    break;
                }
                let on = bits & (0x80 >> (gx / scale)) != 0;
                c.pixels[(py * c.width + px) as usize] = if on { fg } else { bg };
            }
        }
        cx += cw;
    }
    cx - x
}

/// Reads back `cols` characters drawn by [`draw_text`] at (`x`, `y`) on a
/// `width`-wide pixel buffer: a pixel is "ink" when it differs from `bg`.
/// A cell matching no glyph reads as `\u{FFFD}`; trailing spaces are
/// trimmed.
pub fn read_text(
    pixels: &[u32],
    width: u32,
    x: u32,
    y: u32,
    cols: u32,
    scale: u32,
    bg: u32,
) -> String {
    let scale = scale.max(1);
    let (cw, ch) = cell(scale);
    let height = pixels.len() as u32 / width.max(1);
    let mut out = String::new();
    for col in 0..cols {
        let x0 = x + col * cw;
        if x0 + cw > width || y + ch > height {
            break;
        }
        let mut rows = [0u8; HEIGHT];
        for (gy, row) in rows.iter_mut().enumerate() {
            let py = y + gy as u32 * scale;
            for gx in 0..WIDTH as u32 {
                let px = x0 + gx * scale;
                if pixels[(py * width + px) as usize] != bg {
                    *row |= 0x80 >> gx;
                }
            }
        }
        let c = (FIRST..=LAST)
            .find(|&b| GLYPHS[usize::from(b - FIRST)] == rows)
            .map(char::from)
            .unwrap_or('\u{FFFD}');
        out.push(c);
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyphs_are_distinct() {
        // read_text relies on it.
        for a in FIRST..=LAST {
            for b in FIRST..a {
                assert_ne!(
                    GLYPHS[usize::from(a - FIRST)],
                    GLYPHS[usize::from(b - FIRST)],
                    "{:?} and {:?} look alike",
                    a as char,
                    b as char
                );
            }
        }
    }

    #[test]
    fn drawn_text_reads_back() {
        for scale in [1, 2] {
            let (w, h) = (400, 40);
            let mut px = vec![5u32; (w * h) as usize];
            let mut c = Canvas {
                width: w,
                height: h,
                pixels: &mut px,
            };
            let text = "RayOS: Ctrl+Alt+F1 [linux] ~ok!";
            let drawn = draw_text(&mut c, 3, 2, text, 0xffffff, 5, scale);
            assert_eq!(drawn, text.len() as u32 * 8 * scale);
            let back = read_text(&px, w, 3, 2, text.len() as u32, scale, 5);
            if scale == 1 {
                assert_eq!(back, text);
            } else {
                // Clipped at the right edge: a prefix reads back.
                assert!(text.starts_with(&back) && back.len() >= 24, "{back}");
            }
        }
    }

    #[test]
    fn non_ascii_draws_as_question_mark() {
        let mut px = vec![0u32; 8 * 16];
        let mut c = Canvas {
            width: 8,
            height: 16,
            pixels: &mut px,
        };
        draw_text(&mut c, 0, 0, "é", 1, 0, 1);
        assert_eq!(read_text(&px, 8, 0, 0, 1, 1, 0), "?");
    }
}
