//! The Linux VM's disk from the Debian VM image on the installer medium:
//! `zstd -d --long=27` (the image is the raw disk, compressed with a
//! 128 MiB window: docs/linux-vm.md) streamed straight into a thin qcow2
//! of the chosen size ([`crate::qcow2`]), with progress. No raw copy is
//! ever made: the installer stages data-volume files in RAM.
//!
//! The qcow2 is a staging file (`mkfs.ext4 -d` copies it onto the data
//! volume, and the target is fsynced before the manifest), so it is not
//! fsynced here: on a disk-backed temp directory that fsync wrote the
//! whole image once more for nothing. The pipe from zstd is widened to
//! 1 MiB, so the two processes trade 1 MiB per wake-up instead of 64 KiB.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};

/// The pipe size asked for (Linux's default `pipe-max-size` for users).
const PIPE_BYTES: usize = 1 << 20;

/// zstd's window for the image (`--long=27`): the decompressor must be
/// told, or it refuses frames with a window over 8 MiB.
pub const ZSTD_LONG: &str = "--long=27";

/// The decompressed size a zstd file's first frame header records
/// (zstd writes it when it knows the input size), if any.
pub fn zstd_content_size(path: &Path) -> io::Result<Option<u64>> {
    let mut h = [0u8; 18];
    let n = File::open(path)?.read(&mut h)?;
    if n < 6 || h[..4] != [0x28, 0xb5, 0x2f, 0xfd] {
        return Ok(None);
    }
    let fhd = h[4];
    let fcs_flag = fhd >> 6;
    let single_segment = fhd & 0x20 != 0;
    let did_flag = fhd & 0x03;
    let mut at = 5 + usize::from(!single_segment);
    at += [0, 1, 2, 4][did_flag as usize];
    let size = match (fcs_flag, single_segment) {
        (0, false) => return Ok(None),
        (0, true) => 1,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    if at + size > n {
        return Ok(None);
    }
    let mut v = 0u64;
    for (i, b) in h[at..at + size].iter().enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    if fcs_flag == 1 {
        v += 256;
    }
    Ok(Some(v))
}

/// Writes `dest` (replaced) from `image`; `progress(done, total)` in bytes
/// of the raw image (`total` 0 when unknown).
pub fn write(
    image: &Path,
    dest: &Path,
    disk_size: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> io::Result<u64> {
    let total = zstd_content_size(image)?.unwrap_or(0);
    if total > disk_size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the image is {total} bytes, more than the VM disk's {disk_size}: choose a bigger linux.disk_size"
            ),
        ));
    }
    let mut child = Command::new("zstd")
        .args(["-q", "-d", "-c", ZSTD_LONG])
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run zstd: {e}")))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("zstd has no stdout"))?;
    // Best effort: a smaller pipe only costs more wake-ups.
    let _ = rayos_base::sys::set_pipe_size(stdout.as_fd(), PIPE_BYTES);
    let _ = fs::remove_file(dest);
    let mut out = File::create_new(dest)?;
    let mut last = 0u64;
    let written = crate::qcow2::write_from_stream(&mut stdout, &mut out, disk_size, &mut |b| {
        // Every 64 MiB is often enough for a screen and a log.
        if b - last >= 64 << 20 || b == total {
            last = b;
            progress(b, total);
        }
    });
    drop(stdout);
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait()?;
    let written = written?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "zstd could not read {} ({status}): {}",
            image.display(),
            err.trim()
        )));
    }
    if total != 0 && written != total {
        return Err(io::Error::other(format!(
            "{} holds {written} bytes, its header says {total}",
            image.display()
        )));
    }
    if last != written {
        progress(written, total);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_image_becomes_an_equal_thin_qcow2() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.img");
        let mut data = vec![0u8; 5 << 20];
        data[..4096].fill(0xee);
        data[(4 << 20) + 17] = 3;
        fs::write(&raw, &data).unwrap();
        let zst = dir.path().join("disk.img.zst");
        let st = Command::new("zstd")
            .args(["-q", "-12", ZSTD_LONG])
            .arg(&raw)
            .arg("-o")
            .arg(&zst)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(zstd_content_size(&zst).unwrap(), Some(5 << 20));
        let q = dir.path().join("root.qcow2");
        let mut seen = Vec::new();
        let n = write(&zst, &q, 1 << 30, &mut |d, t| seen.push((d, t))).unwrap();
        assert_eq!(n, 5 << 20);
        assert_eq!(seen.last(), Some(&(5 << 20, 5 << 20)));
        // The qcow2 reads back as the raw image followed by zeros.
        let o = Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "qcow2"])
            .arg(&raw)
            .arg(&q)
            .output()
            .unwrap();
        // Sizes differ (5 MiB vs 1 GiB): compare reads the tail as zeros
        // and says the images are identical apart from the size.
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
        // Too small a disk is refused before anything is written.
        let e = write(
            &zst,
            &dir.path().join("small.qcow2"),
            1 << 20,
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("linux.disk_size"), "{e}");
        // A damaged file fails, naming zstd.
        fs::write(&zst, b"\x28\xb5\x2f\xfdgarbage").unwrap();
        let e = write(&zst, &dir.path().join("bad.qcow2"), 1 << 30, &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("zstd"), "{e}");
    }
}
