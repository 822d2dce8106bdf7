//! Just enough PNG decoding to read back what QEMU's `screendump` writes
//! (`rayos vm screenshot`): 8-bit RGB or RGBA, not interlaced, zlib
//! (RFC 1950/1951: stored, fixed and dynamic Huffman blocks), the five
//! scanline filters. Pixels come out as `0x00RRGGBB` like the presenter's.
//!
//! Rejected: a PNG crate for one comparison in one e2e run; the workspace
//! keeps its dependency list short. Limits: other bit depths, palettes,
//! grey and Adam7 are refused with an error; the CRCs and the Adler-32 are
//! not checked (the file comes from QEMU on a disk this run wrote).

use anyhow::{Context, Result, bail, ensure};
use rayos_image::qemu::Image;

/// Decodes a PNG of 8-bit RGB(A) pixels.
pub fn decode(bytes: &[u8]) -> Result<Image> {
    ensure!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG (no signature)"
    );
    let mut at = 8;
    let (mut width, mut height, mut channels) = (0u32, 0u32, 0usize);
    let mut idat = Vec::new();
    while at + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into()?) as usize;
        let kind = &bytes[at + 4..at + 8];
        let data = bytes
            .get(at + 8..at + 8 + len)
            .context("truncated PNG chunk")?;
        match kind {
            b"IHDR" => {
                ensure!(len == 13, "IHDR of {len} bytes");
                width = u32::from_be_bytes(data[0..4].try_into()?);
                height = u32::from_be_bytes(data[4..8].try_into()?);
                let (depth, colour, interlace) = (data[8], data[9], data[12]);
                channels = match colour {
                    2 => 3,
                    6 => 4,
                    c => bail!("PNG colour type {c} (only RGB and RGBA)"),
                };
                ensure!(depth == 8, "PNG bit depth {depth} (only 8)");
                ensure!(interlace == 0, "interlaced PNG");
                ensure!(
                    width > 0 && height > 0 && width <= 16384 && height <= 16384,
                    "PNG size {width}x{height}"
                );
            }
            b"IDAT" => idat.extend_from_slice(data),
            b"IEND" => break,
            _ => {}
        }
        at += 12 + len;
    }
    ensure!(channels > 0, "PNG without IHDR");
    ensure!(idat.len() > 2, "PNG without image data");
    let stride = width as usize * channels;
    let want = (stride + 1) * height as usize;
    let raw = inflate(&idat[2..], want)?;
    ensure!(
        raw.len() >= want,
        "PNG data ends after {} of {want} bytes",
        raw.len()
    );
    let mut pixels = Vec::with_capacity(width as usize * height as usize);
    let mut prev = vec![0u8; stride];
    let mut cur = vec![0u8; stride];
    for row in raw[..want].chunks_exact(stride + 1) {
        let filter = row[0];
        for i in 0..stride {
            let a = if i >= channels { cur[i - channels] } else { 0 };
            let b = prev[i];
            let c = if i >= channels { prev[i - channels] } else { 0 };
            let x = row[1 + i];
            cur[i] = match filter {
                0 => x,
                1 => x.wrapping_add(a),
                2 => x.wrapping_add(b),
                3 => x.wrapping_add(((u16::from(a) + u16::from(b)) / 2) as u8),
                4 => x.wrapping_add(paeth(a, b, c)),
                f => bail!("PNG filter type {f}"),
            };
        }
        pixels.extend(
            cur.chunks_exact(channels)
                .map(|p| u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2])),
        );
        std::mem::swap(&mut prev, &mut cur);
    }
    Ok(Image {
        width,
        height,
        pixels,
    })
}

fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = i16::from(a) + i16::from(b) - i16::from(c);
    let (pa, pb, pc) = (
        (p - i16::from(a)).abs(),
        (p - i16::from(b)).abs(),
        (p - i16::from(c)).abs(),
    );
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

/// Bits of a DEFLATE stream, least significant first.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    bit: u32,
}

impl Bits<'_> {
    fn get(&mut self, n: u32) -> Result<u32> {
        let mut v = 0;
        for i in 0..n {
            let byte = *self.data.get(self.pos).context("DEFLATE data ends early")?;
            v |= u32::from((byte >> self.bit) & 1) << i;
            self.bit += 1;
            if self.bit == 8 {
                self.bit = 0;
                self.pos += 1;
            }
        }
        Ok(v)
    }

    fn align(&mut self) {
        if self.bit != 0 {
            self.bit = 0;
            self.pos += 1;
        }
    }
}

/// A canonical Huffman code: symbol counts per length and symbols by code.
struct Huffman {
    counts: [u16; 16],
    symbols: Vec<u16>,
}

impl Huffman {
    fn new(lengths: &[u8]) -> Huffman {
        let mut counts = [0u16; 16];
        for &l in lengths {
            counts[l as usize] += 1;
        }
        counts[0] = 0;
        let mut offs = [0u16; 16];
        for i in 1..16 {
            offs[i] = offs[i - 1] + counts[i - 1];
        }
        let mut symbols = vec![0u16; lengths.len()];
        for (s, &l) in lengths.iter().enumerate() {
            if l != 0 {
                symbols[offs[l as usize] as usize] = s as u16;
                offs[l as usize] += 1;
            }
        }
        Huffman { counts, symbols }
    }

    fn decode(&self, bits: &mut Bits<'_>) -> Result<u16> {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16 {
            code |= bits.get(1)? as i32;
            let count = i32::from(self.counts[len]);
            if code - count < first {
                return self
                    .symbols
                    .get((index + code - first) as usize)
                    .copied()
                    .context("bad Huffman code");
            }
            index += count;
            first += count;
            first <<= 1;
            code <<= 1;
        }
        bail!("bad Huffman code")
    }
}

const LEN_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LEN_EXTRA: [u8; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DIST_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DIST_EXTRA: [u8; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

/// Inflates a raw DEFLATE stream, stopping after `limit` bytes of output.
fn inflate(data: &[u8], limit: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(limit);
    let mut bits = Bits {
        data,
        pos: 0,
        bit: 0,
    };
    loop {
        let last = bits.get(1)? == 1;
        match bits.get(2)? {
            0 => {
                bits.align();
                let p = bits.pos;
                let head = data.get(p..p + 4).context("stored block ends early")?;
                let len = usize::from(u16::from_le_bytes([head[0], head[1]]));
                let body = data
                    .get(p + 4..p + 4 + len)
                    .context("stored block ends early")?;
                out.extend_from_slice(body);
                bits.pos = p + 4 + len;
            }
            1 => {
                let mut l = [8u8; 288];
                l[144..256].fill(9);
                l[256..280].fill(7);
                let (lit, dist) = (Huffman::new(&l), Huffman::new(&[5u8; 30]));
                codes(&mut bits, &lit, &dist, &mut out, limit)?;
            }
            2 => {
                let hlit = bits.get(5)? as usize + 257;
                let hdist = bits.get(5)? as usize + 1;
                let hclen = bits.get(4)? as usize + 4;
                const ORDER: [usize; 19] = [
                    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
                ];
                let mut cl = [0u8; 19];
                for &i in ORDER.iter().take(hclen) {
                    cl[i] = bits.get(3)? as u8;
                }
                let clh = Huffman::new(&cl);
                let mut lengths = Vec::with_capacity(hlit + hdist);
                while lengths.len() < hlit + hdist {
                    let sym = clh.decode(&mut bits)?;
                    let (value, repeat) = match sym {
                        0..=15 => (sym as u8, 1),
                        16 => (
                            *lengths.last().context("repeat with no length")?,
                            3 + bits.get(2)?,
                        ),
                        17 => (0, 3 + bits.get(3)?),
                        18 => (0, 11 + bits.get(7)?),
                        _ => bail!("bad code length symbol"),
                    };
                    for _ in 0..repeat {
                        lengths.push(value);
                    }
                }
                ensure!(lengths.len() == hlit + hdist, "code lengths overrun");
                let lit = Huffman::new(&lengths[..hlit]);
                let dist = Huffman::new(&lengths[hlit..]);
                codes(&mut bits, &lit, &dist, &mut out, limit)?;
            }
            _ => bail!("DEFLATE block type 3"),
        }
        if last || out.len() >= limit {
            return Ok(out);
        }
    }
}

fn codes(
    bits: &mut Bits<'_>,
    lit: &Huffman,
    dist: &Huffman,
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<()> {
    loop {
        let sym = lit.decode(bits)?;
        match sym {
            0..=255 => out.push(sym as u8),
            256 => return Ok(()),
            _ => {
                let i = usize::from(sym - 257);
                ensure!(i < 29, "bad length symbol {sym}");
                let len = usize::from(LEN_BASE[i]) + bits.get(u32::from(LEN_EXTRA[i]))? as usize;
                let d = usize::from(dist.decode(bits)?);
                ensure!(d < 30, "bad distance symbol {d}");
                let back = usize::from(DIST_BASE[d]) + bits.get(u32::from(DIST_EXTRA[d]))? as usize;
                ensure!(back <= out.len(), "distance {back} before the start");
                let from = out.len() - back;
                for k in 0..len {
                    out.push(out[from + k]);
                }
            }
        }
        if out.len() > limit + 258 {
            bail!("more image data than the PNG's size");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::decode;

    /// A 3x2 RGB PNG (Python's zlib, level 9) with filters None, Sub:
    /// red, green, blue / white, black, grey.
    const FIXTURE: &[u8] = include_bytes!("fixture.png");

    #[test]
    fn decodes_a_filtered_compressed_rgb_png() {
        let img = decode(FIXTURE).unwrap();
        assert_eq!((img.width, img.height), (3, 2));
        assert_eq!(
            img.pixels,
            vec![0xff0000, 0x00ff00, 0x0000ff, 0xffffff, 0x000000, 0x808080]
        );
    }

    /// 64x32, every filter type in turn, dynamic Huffman blocks.
    #[test]
    fn decodes_every_filter_type() {
        let img = decode(include_bytes!("fixture-big.png")).unwrap();
        assert_eq!((img.width, img.height), (64, 32));
        for y in 0..32u32 {
            for x in 0..64u32 {
                let want = ((x * 4) & 255) << 16 | ((y * 8) & 255) << 8 | (((x ^ y) * 3) & 255);
                assert_eq!(img.pixels[(y * 64 + x) as usize], want, "pixel {x},{y}");
            }
        }
    }

    #[test]
    fn refuses_what_it_does_not_read() {
        assert!(decode(b"GIF89a").is_err());
        let mut bad = FIXTURE.to_vec();
        bad[25] = 3; // palette colour type
        assert!(decode(&bad).is_err());
        assert!(decode(&FIXTURE[..40]).is_err());
    }
}
