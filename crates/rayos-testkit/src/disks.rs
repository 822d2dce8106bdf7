//! Disk images with other systems on them, for installer tests.
//!
//! [`DiskBuilder`] lays out a sparse GPT image with `sgdisk` (512-byte
//! sectors, as sgdisk assumes for image files; an independent tool, so the
//! installer's own GPT code is checked against it) and fills partitions:
//!
//! - [`Content::Esp`]: a real FAT32 ESP (`mkfs.fat` at an offset) with the
//!   given files (mtools), like Windows' 100 MiB one;
//! - [`Content::Ntfs`]: Microsoft basic data, an NTFS boot sector (OEM id
//!   `NTFS    `, enough for probing) followed by pseudo-random bytes up to
//!   the end of the partition;
//! - [`Content::Ext4`]: Linux filesystem type, a real ext4 holding one file
//!   of pseudo-random bytes that fills most of it;
//! - [`Content::Random`]: any type, pseudo-random bytes only;
//! - [`Content::Header`]: any type, the first MiB pseudo-random;
//! - [`Content::Empty`]: any type, all zeros.
//!
//! Free space is whatever the builder leaves between and after partitions.
//! [`sha256_range`] (via `sha256sum`) lets a test prove a partition kept
//! every byte.
//!
//! Limits: 512-byte-sector images only (sgdisk has no sector-size option
//! for files); for 4096-byte sectors tests start from a blank image.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a fixture disk could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A tool could not be started (not installed); holds its name.
    #[error("cannot run {0}: install it (scripts/install-deps.sh lists the packages)")]
    Spawn(String, #[source] std::io::Error),
    /// A tool ran and failed.
    #[error("{tool} failed: {stderr}")]
    Tool {
        /// The tool's name.
        tool: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// A file could not be written or read; holds its path.
    #[error("cannot write {0}")]
    Io(PathBuf, #[source] std::io::Error),
}

/// One mebibyte, the unit fixture sizes are given in.
pub const MIB: u64 = 1 << 20;

/// A scratch directory name no other fixture in any process uses.
fn scratch(what: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "rayos-testkit-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// What a fixture partition holds.
#[derive(Debug, Clone)]
pub enum Content {
    /// FAT32 EFI system partition with these files (FAT path, bytes).
    Esp {
        /// The files: FAT path and bytes.
        files: Vec<(String, Vec<u8>)>,
    },
    /// NTFS-typed (Microsoft basic data) with NTFS signature and random data.
    Ntfs,
    /// Linux-typed real ext4 full of random data.
    Ext4,
    /// Random bytes with the given sgdisk type code (`8300`, `0700`, ...).
    Random {
        /// The sgdisk type code.
        type_code: String,
    },
    /// Only the first MiB random, the rest left sparse (cheap large
    /// partitions that a test reformats anyway).
    Header {
        /// The sgdisk type code.
        type_code: String,
    },
    /// Nothing written: every byte zero (sparse).
    Empty {
        /// The sgdisk type code.
        type_code: String,
    },
}

/// One partition of a fixture, where the builder put it.
#[derive(Debug, Clone)]
pub struct FixturePartition {
    /// The partition's number in the GPT (from 1).
    pub number: u32,
    /// The partition's first 512-byte sector.
    pub first_lba: u64,
    /// The partition's last 512-byte sector (inclusive).
    pub last_lba: u64,
    /// The GPT partition name.
    pub name: String,
    /// What was written into it.
    pub content: Content,
}

impl FixturePartition {
    /// Where the partition starts, in bytes.
    pub fn start_bytes(&self) -> u64 {
        self.first_lba * 512
    }
    /// The partition's size in bytes.
    pub fn size_bytes(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * 512
    }
}

/// A built image.
#[derive(Debug, Clone)]
pub struct DiskImage {
    /// The image file.
    pub path: PathBuf,
    /// The image's size in bytes.
    pub size_bytes: u64,
    /// Its partitions, in the order they were added.
    pub partitions: Vec<FixturePartition>,
}

impl DiskImage {
    /// SHA-256 of one partition's bytes.
    pub fn partition_hash(&self, number: u32) -> Result<String, DiskError> {
        let p = self
            .partitions
            .iter()
            .find(|p| p.number == number)
            .ok_or_else(|| {
                DiskError::Io(
                    self.path.clone(),
                    std::io::Error::other(format!("no partition {number}")),
                )
            })?;
        sha256_range(&self.path, p.start_bytes(), p.size_bytes())
    }

    /// SHA-256 of each partition's bytes, by partition number.
    pub fn partition_hashes(&self) -> Result<Vec<(u32, String)>, DiskError> {
        self.partitions
            .iter()
            .map(|p| {
                Ok((
                    p.number,
                    sha256_range(&self.path, p.start_bytes(), p.size_bytes())?,
                ))
            })
            .collect()
    }
}

/// Builds a fixture image: partitions in order, each optionally preceded
/// by a gap of free space.
#[derive(Debug, Clone)]
pub struct DiskBuilder {
    size_bytes: u64,
    parts: Vec<(u64, u64, String, Content)>,
    seed: u64,
}

impl DiskBuilder {
    /// A builder for an empty GPT disk of `size_bytes`.
    pub fn new(size_bytes: u64) -> Self {
        DiskBuilder {
            size_bytes,
            parts: Vec::new(),
            seed: 0x5eed_1234_abcd_0001,
        }
    }

    /// Adds a partition of `size` bytes after `gap_before` bytes of free space.
    pub fn partition(mut self, gap_before: u64, size: u64, name: &str, content: Content) -> Self {
        self.parts
            .push((gap_before, size, name.to_string(), content));
        self
    }

    /// A Windows-like disk: 100 MiB ESP with Microsoft's boot files, 16 MiB
    /// MSR-like random partition, an NTFS partition, an ext4 partition, and
    /// the rest free.
    pub fn windows_and_linux(size_bytes: u64) -> Self {
        DiskBuilder::new(size_bytes)
            .partition(
                0,
                100 * MIB,
                "EFI system partition",
                Content::Esp {
                    files: vec![
                        (
                            "/EFI/Microsoft/Boot/bootmgfw.efi".into(),
                            pseudo_random(7, 64 * 1024),
                        ),
                        (
                            "/EFI/BOOT/BOOTX64.EFI".into(),
                            b"windows fallback loader".to_vec(),
                        ),
                    ],
                },
            )
            .partition(
                0,
                16 * MIB,
                "Microsoft reserved partition",
                Content::Random {
                    type_code: "0c01".into(),
                },
            )
            .partition(0, 128 * MIB, "Basic data partition", Content::Ntfs)
            .partition(0, 64 * MIB, "linux-root", Content::Ext4)
    }

    /// Writes the image to `path` (replacing it): GPT, then every partition's
    /// content.
    pub fn build(&self, path: &Path) -> Result<DiskImage, DiskError> {
        let _ = fs::remove_file(path);
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .map_err(|e| DiskError::Io(path.to_path_buf(), e))?;
        f.set_len(self.size_bytes)
            .map_err(|e| DiskError::Io(path.to_path_buf(), e))?;
        drop(f);
        let p = path.display().to_string();
        run("sgdisk", &["-o", &p])?;
        let mut cursor = 2048u64; // 1 MiB in 512-byte sectors
        let mut out = Vec::new();
        for (i, (gap, size, name, content)) in self.parts.iter().enumerate() {
            let number = i as u32 + 1;
            cursor += gap / 512;
            let first = cursor;
            let last = first + size / 512 - 1;
            let code = match content {
                Content::Esp { .. } => "ef00".to_string(),
                Content::Ntfs => "0700".to_string(),
                Content::Ext4 => "8300".to_string(),
                Content::Random { type_code }
                | Content::Header { type_code }
                | Content::Empty { type_code } => type_code.clone(),
            };
            run(
                "sgdisk",
                &[
                    &format!("-n{number}:{first}:{last}"),
                    &format!("-t{number}:{code}"),
                    &format!("-c{number}:{name}"),
                    &p,
                ],
            )?;
            let part = FixturePartition {
                number,
                first_lba: first,
                last_lba: last,
                name: name.clone(),
                content: content.clone(),
            };
            fill(path, &part, self.seed.wrapping_add(number as u64))?;
            out.push(part);
            cursor = last + 1;
        }
        Ok(DiskImage {
            path: path.to_path_buf(),
            size_bytes: self.size_bytes,
            partitions: out,
        })
    }
}

fn fill(path: &Path, p: &FixturePartition, seed: u64) -> Result<(), DiskError> {
    let img = path.display().to_string();
    let start = p.start_bytes();
    let size = p.size_bytes();
    match &p.content {
        Content::Esp { files } => {
            run(
                "mkfs.fat",
                &[
                    "-F",
                    "32",
                    "-s",
                    "1",
                    &format!("--offset={}", p.first_lba),
                    "-n",
                    "SYSTEM",
                    &img,
                    &(size / 1024).to_string(),
                ],
            )?;
            let dir = scratch("esp");
            fs::create_dir_all(&dir).map_err(|e| DiskError::Io(dir.clone(), e))?;
            let image = format!("{img}@@{start}");
            for (i, (fat_path, bytes)) in files.iter().enumerate() {
                let mut dirs = String::new();
                let parts: Vec<&str> = fat_path.split('/').filter(|s| !s.is_empty()).collect();
                for d in &parts[..parts.len().saturating_sub(1)] {
                    dirs.push('/');
                    dirs.push_str(d);
                    let _ = run("mmd", &["-D", "s", "-i", &image, &format!("::{dirs}")]);
                }
                let tmp = dir.join(i.to_string());
                fs::write(&tmp, bytes).map_err(|e| DiskError::Io(tmp.clone(), e))?;
                run(
                    "mcopy",
                    &[
                        "-o",
                        "-i",
                        &image,
                        &tmp.display().to_string(),
                        &format!("::{fat_path}"),
                    ],
                )?;
            }
            let _ = fs::remove_dir_all(&dir);
        }
        Content::Ntfs => {
            write_random(path, start, size, seed)?;
            // A boot sector probes recognise: jump, OEM id, 512-byte
            // sectors, 8 sectors per cluster, signature.
            let mut bs = [0u8; 512];
            bs[0..3].copy_from_slice(&[0xEB, 0x52, 0x90]);
            bs[3..11].copy_from_slice(b"NTFS    ");
            bs[0x0B..0x0D].copy_from_slice(&512u16.to_le_bytes());
            bs[0x0D] = 8;
            bs[0x15] = 0xF8;
            bs[0x28..0x30].copy_from_slice(&(size / 512 - 1).to_le_bytes());
            bs[0x30..0x38].copy_from_slice(&4u64.to_le_bytes());
            bs[0x40] = 0xF6; // 1024-byte MFT records
            bs[0x1FE] = 0x55;
            bs[0x1FF] = 0xAA;
            write_at(path, start, &bs)?;
        }
        Content::Ext4 => {
            let dir = scratch("ext4");
            fs::create_dir_all(dir.join("home")).map_err(|e| DiskError::Io(dir.clone(), e))?;
            let data = pseudo_random(seed, (size * 3 / 4) as usize);
            fs::write(dir.join("home/random.bin"), &data)
                .map_err(|e| DiskError::Io(dir.clone(), e))?;
            fs::write(dir.join("etc-os-release"), b"ID=debian\n")
                .map_err(|e| DiskError::Io(dir.clone(), e))?;
            let r = run(
                "mkfs.ext4",
                &[
                    "-q",
                    "-F",
                    "-L",
                    "linux-root",
                    "-E",
                    &format!("offset={start},nodiscard"),
                    "-d",
                    &dir.display().to_string(),
                    &img,
                    &format!("{}k", size / 1024),
                ],
            );
            let _ = fs::remove_dir_all(&dir);
            r?;
        }
        Content::Random { .. } => write_random(path, start, size, seed)?,
        Content::Header { .. } => write_random(path, start, MIB.min(size), seed)?,
        Content::Empty { .. } => {}
    }
    Ok(())
}

/// Deterministic pseudo-random bytes (xorshift64*), fast and dependency-free.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

fn write_random(path: &Path, start: u64, size: u64, seed: u64) -> Result<(), DiskError> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| DiskError::Io(path.to_path_buf(), e))?;
    f.seek(SeekFrom::Start(start))
        .map_err(|e| DiskError::Io(path.to_path_buf(), e))?;
    let chunk = 4 * MIB;
    let mut done = 0;
    let mut s = seed;
    while done < size {
        let n = chunk.min(size - done);
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
        f.write_all(&pseudo_random(s, n as usize))
            .map_err(|e| DiskError::Io(path.to_path_buf(), e))?;
        done += n;
    }
    Ok(())
}

/// Writes `bytes` at `offset` of `path`.
pub fn write_at(path: &Path, offset: u64, bytes: &[u8]) -> Result<(), DiskError> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| DiskError::Io(path.to_path_buf(), e))?;
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.write_all(bytes))
        .map_err(|e| DiskError::Io(path.to_path_buf(), e))
}

/// Reads `len` bytes at `offset`.
pub fn read_at(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, DiskError> {
    let mut f = fs::File::open(path).map_err(|e| DiskError::Io(path.to_path_buf(), e))?;
    let mut b = vec![0u8; len];
    f.seek(SeekFrom::Start(offset))
        .and_then(|_| f.read_exact(&mut b))
        .map_err(|e| DiskError::Io(path.to_path_buf(), e))?;
    Ok(b)
}

/// Copies `[offset, offset+len)` of `src` into a new sparse file `dest`
/// (for fsck.fat / e2fsck / debugfs on one partition).
pub fn extract(src: &Path, offset: u64, len: u64, dest: &Path) -> Result<(), DiskError> {
    let bs = MIB;
    if offset.is_multiple_of(bs) && len.is_multiple_of(bs) {
        run(
            "dd",
            &[
                &format!("if={}", src.display()),
                &format!("of={}", dest.display()),
                &format!("bs={bs}"),
                &format!("skip={}", offset / bs),
                &format!("count={}", len / bs),
                "conv=sparse",
                "status=none",
            ],
        )?;
        return Ok(());
    }
    run(
        "dd",
        &[
            &format!("if={}", src.display()),
            &format!("of={}", dest.display()),
            "bs=4096",
            "iflag=skip_bytes,count_bytes",
            &format!("skip={offset}"),
            &format!("count={len}"),
            "conv=sparse",
            "status=none",
        ],
    )?;
    Ok(())
}

/// SHA-256 (hex) of `[offset, offset+len)` of `path`, via dd | sha256sum.
pub fn sha256_range(path: &Path, offset: u64, len: u64) -> Result<String, DiskError> {
    let script = format!(
        "dd if='{}' bs=1M iflag=skip_bytes,count_bytes skip={offset} count={len} status=none | sha256sum",
        path.display()
    );
    let out = run("sh", &["-c", &script])?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// SHA-256 (hex) of a file's bytes in a form that skips zeros: the length,
/// then every 4 KiB block that is not all zero, with its offset. Equal
/// fingerprints mean equal bytes everywhere. Only the extents that
/// SEEK_DATA/SEEK_HOLE report are read, which makes it much faster than
/// hashing a mostly empty multi-GiB image.
///
/// The extent map itself is deliberately left out of the hash: ext4 reports
/// an *unwritten* extent as data once its (zero) pages are in the page cache,
/// so merely reading the file (as the installer's probe does) would change a
/// fingerprint that included the map.
pub fn fingerprint(path: &Path) -> Result<String, DiskError> {
    use std::os::unix::io::AsRawFd;
    let io = |e| DiskError::Io(path.to_path_buf(), e);
    let mut f = fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| DiskError::Spawn("sha256sum".into(), e))?;
    let mut sink = child
        .stdin
        .take()
        .ok_or_else(|| io(std::io::Error::other("no stdin")))?;
    sink.write_all(&len.to_le_bytes()).map_err(io)?;
    let fd = f.as_raw_fd();
    let mut pos: i64 = 0;
    let mut buf = vec![0u8; 4 * MIB as usize];
    loop {
        // SAFETY: `fd` stays open (owned by `f`) for the whole loop; lseek
        // has no memory arguments.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: no data after pos
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        f.seek(SeekFrom::Start(data as u64)).map_err(io)?;
        let mut at = data as u64;
        let mut left = (hole - data) as u64;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            f.read_exact(&mut buf[..n]).map_err(io)?;
            for (i, block) in buf[..n].chunks(4096).enumerate() {
                if block.iter().any(|&b| b != 0) {
                    let off = at + (i * 4096) as u64;
                    sink.write_all(&off.to_le_bytes()).map_err(io)?;
                    sink.write_all(block).map_err(io)?;
                }
            }
            at += n as u64;
            left -= n as u64;
        }
        pos = hole;
    }
    drop(sink);
    let out = child.wait_with_output().map_err(io)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// SHA-256 (hex) of a whole file.
pub fn sha256_file(path: &Path) -> Result<String, DiskError> {
    let out = run("sha256sum", &[&path.display().to_string()])?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// Runs a tool, returning its stdout; a failure carries stderr.
pub fn run(tool: &str, args: &[&str]) -> Result<String, DiskError> {
    let out = Command::new(tool)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| DiskError::Spawn(tool.to_string(), e))?;
    if !out.status.success() {
        return Err(DiskError::Tool {
            tool: format!("{tool} {}", args.join(" ")),
            stderr: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A loop device over an image file, detached when dropped (however the
/// test ends). Needs root and the loop driver, as CI has.
pub struct LoopDevice(String);

impl LoopDevice {
    /// `losetup --find --show` over `img`, with `extra` options such as
    /// `--read-only` or `--sector-size 4096`. Panics with what is missing
    /// when no loop device can be had: the test cannot run without one.
    pub fn attach(img: &Path, extra: &[&str]) -> LoopDevice {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .args(extra)
            .arg(img)
            .output()
            .expect("running losetup failed (package util-linux)");
        assert!(
            out.status.success(),
            "attaching a loop device failed (this test needs root and loop devices): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopDevice(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The device path, `/dev/loopN`.
    pub fn path(&self) -> &str {
        &self.0
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_about_bytes_not_the_extent_map() {
        use std::os::unix::fs::FileExt;
        let dir = scratch("fingerprint");
        fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.img"), dir.join("b.img"));
        // a: sparse, one byte of data; b: the same bytes with every block
        // allocated (zeros written out).
        let fa = fs::File::create(&a).unwrap();
        fa.set_len(8 * MIB).unwrap();
        fa.write_all_at(b"x", MIB + 7).unwrap();
        let fb = fs::File::create(&b).unwrap();
        fb.write_all_at(&vec![0u8; (8 * MIB) as usize], 0).unwrap();
        fb.write_all_at(b"x", MIB + 7).unwrap();
        fa.sync_all().unwrap();
        fb.sync_all().unwrap();
        let fp = fingerprint(&a).unwrap();
        assert_eq!(fp, fingerprint(&b).unwrap(), "same bytes, other layout");
        // Reading does not change it; one changed or moved byte does.
        sha256_file(&a).unwrap();
        assert_eq!(fingerprint(&a).unwrap(), fp);
        fa.write_all_at(b"y", MIB + 7).unwrap();
        assert_ne!(fingerprint(&a).unwrap(), fp);
        fa.write_all_at(b"\0", MIB + 7).unwrap();
        fa.write_all_at(b"x", MIB + 8).unwrap();
        assert_ne!(fingerprint(&a).unwrap(), fp);
        // A different length with the same data differs too.
        fb.set_len(9 * MIB).unwrap();
        assert_ne!(fingerprint(&b).unwrap(), fp);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn windows_and_linux_fixture_is_a_valid_gpt_with_real_filesystems() {
        let dir = scratch("selftest");
        fs::create_dir_all(&dir).unwrap();
        let img = dir.join("disk.img");
        let d = DiskBuilder::windows_and_linux(2 << 30).build(&img).unwrap();
        let v = run("sgdisk", &["-v", &img.display().to_string()]).unwrap();
        assert!(v.contains("No problems found"), "{v}");
        let esp = &d.partitions[0];
        let out = run(
            "mtype",
            &[
                "-i",
                &format!("{}@@{}", img.display(), esp.start_bytes()),
                "::/EFI/BOOT/BOOTX64.EFI",
            ],
        )
        .unwrap();
        assert_eq!(out, "windows fallback loader");
        let ntfs = read_at(&img, d.partitions[2].start_bytes(), 512).unwrap();
        assert_eq!(&ntfs[3..11], b"NTFS    ");
        let ext = dir.join("ext4.img");
        let p = &d.partitions[3];
        extract(&img, p.start_bytes(), p.size_bytes(), &ext).unwrap();
        run("e2fsck", &["-fn", &ext.display().to_string()]).unwrap();
        let h = d.partition_hashes().unwrap();
        assert_eq!(h.len(), 4);
        assert_ne!(h[1].1, h[2].1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
