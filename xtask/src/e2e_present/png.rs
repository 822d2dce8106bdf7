//! Reading back what QEMU's `screendump` writes (`rayos vm screenshot`)
//! with the `png` crate: 8-bit RGB or RGBA. Pixels come out as
//! `0x00RRGGBB` like the presenter's. Other colour types and depths are
//! refused with an error (QEMU writes neither).

use anyhow::{Context, Result, bail};
use rayos_image::qemu::Image;

/// Decodes a PNG of 8-bit RGB(A) pixels.
pub fn decode(bytes: &[u8]) -> Result<Image> {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .context("not a readable PNG")?;
    let info = reader.info();
    let (width, height) = (info.width, info.height);
    let channels = match (info.color_type, info.bit_depth) {
        (png::ColorType::Rgb, png::BitDepth::Eight) => 3,
        (png::ColorType::Rgba, png::BitDepth::Eight) => 4,
        (c, d) => bail!("PNG of {c:?} at {d:?} bits (only 8-bit RGB and RGBA)"),
    };
    let mut buf = vec![0; reader.output_buffer_size().context("PNG too large")?];
    let frame = reader.next_frame(&mut buf).context("corrupt PNG")?;
    let pixels = buf[..frame.buffer_size()]
        .chunks_exact(channels)
        .map(|p| u32::from(p[0]) << 16 | u32::from(p[1]) << 8 | u32::from(p[2]))
        .collect();
    Ok(Image {
        width,
        height,
        pixels,
    })
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
