//! QEMU's screendumps (QMP `screendump`: binary PPM, P6, maxval 255) as
//! pixels, for the tests that compare what a display showed. A test
//! helper: a malformed file panics.

use std::path::Path;

/// The image at `path` as (width, height, `0x00RRGGBB` pixels row by row).
pub fn read_ppm(path: &Path) -> (u32, u32, Vec<u32>) {
    let data = std::fs::read(path).unwrap();
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while data[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while !data[i].is_ascii_whitespace() {
            i += 1;
        }
        fields.push(String::from_utf8_lossy(&data[start..i]).into_owned());
    }
    // One whitespace byte ends the header.
    i += 1;
    assert_eq!(fields[0], "P6");
    let w: u32 = fields[1].parse().unwrap();
    let h: u32 = fields[2].parse().unwrap();
    assert_eq!(fields[3], "255");
    let px = data[i..]
        .chunks_exact(3)
        .map(|c| (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]))
        .collect::<Vec<_>>();
    assert_eq!(px.len(), (w * h) as usize);
    (w, h, px)
}
