//! The real filesystem tools the installer drives, at byte offsets inside a
//! disk (image file or block device), so no loop device or mount is needed:
//!
//! - FAT32: `mkfs.fat -F 32 -S <sector> -s <4 KiB cluster> --offset <sectors>`
//!   (`--offset` counts in `-S` sectors), files with mtools
//!   (`mcopy -i image@@<byte offset>`, `mmd`, `mtype`, `mdir`). mtools
//!   cannot bound `@@offset`: the installer points it at the disk only to
//!   read (the manifest); every write goes to a [`crate::fatview`] copy.
//! - ext4: `mkfs.ext4 -E offset=<bytes>,nodiscard -d <staging dir> <disk> <size>k`.
//!   `nodiscard` because discarding would punch holes into an image file, and
//!   nothing outside the partition may change. Made with `-O
//!   ^metadata_csum,uninit_bg`, then `tune2fs -O metadata_csum
//!   <disk>?offset=<bytes>` turns checksums on (and uninit_bg off): the
//!   result is the same filesystem (same features as a plain mkfs.ext4,
//!   inode tables still lazily initialised; every checksum written by
//!   tune2fs, which `e2fsck -fn` verifies in the tests),
//!   but `mkfs.ext4 -d` copies large files about 5× faster. With checksums on,
//!   e2fsprogs 1.47's copy maps every 4 KiB block of a file through its
//!   extent tree and re-verifies the crc32c of the 4 KiB extent leaf each
//!   time once the file has more than 4 extents (any file with a hole or
//!   over 512 MiB, like the Linux VM's disk): most of mkfs's 82 % of CPU
//!   samples in libext2fs for the Debian VM image's qcow2 (docs/install.md,
//!   "Performance").
//!
//! Limits: mtools needs 8.3-or-long names without `*?`; FAT32 with 4 KiB
//! clusters needs at least 65525 clusters, so FAT partitions we format are
//! at least 300 MiB (the planner enforces more).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why an external tool did not do its job.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The tool could not be started (not installed).
    #[error(
        "cannot run {tool}: is it installed? (Debian package {package}; `cargo xtask deps` installs it)"
    )]
    Spawn {
        /// The tool.
        tool: String,
        /// The Debian package that provides it.
        package: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The tool exited with an error.
    #[error("{tool} failed ({status}) on {target}: {stderr}")]
    Failed {
        /// The tool.
        tool: String,
        /// What it worked on.
        target: String,
        /// Its exit status.
        status: String,
        /// What it wrote to stderr.
        stderr: String,
    },
}

/// The Debian package a tool comes from (for messages).
pub fn package_of(tool: &str) -> &'static str {
    match tool {
        "mkfs.fat" | "fsck.fat" => "dosfstools",
        "mkfs.ext4" | "e2fsck" | "debugfs" | "tune2fs" => "e2fsprogs",
        "mcopy" | "mmd" | "mtype" | "mdir" | "mattrib" | "mdel" => "mtools",
        "partx" => "util-linux",
        "sgdisk" => "gdisk",
        "zstd" => "zstd",
        _ => "(see scripts/install-deps.sh)",
    }
}

/// Runs `tool args…` and returns its output whatever its exit status (an
/// error only when it cannot be started), in the environment every tool
/// here gets: mtools' checks relaxed, messages in English, no stdin.
fn output<I, S>(tool: &str, args: I) -> Result<std::process::Output, ToolError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(tool)
        .args(args)
        // mtools refuses some valid geometries without this (4 KiB sectors).
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("MTOOLS_NO_VFAT", "0")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ToolError::Spawn {
            tool: tool.into(),
            package: package_of(tool),
            source,
        })
}

/// Runs `tool args…`, returning stdout; a non-zero exit is an error that
/// carries stderr. `target` names the disk/partition for the message.
pub fn run<I, S>(tool: &str, args: I, target: &str) -> Result<Vec<u8>, ToolError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = output(tool, args)?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.contains("Error converting to codepage") {
            // mtools converts FAT names through iconv; a minimal root (an
            // initramfs) may lack glibc's gconv modules.
            stderr.push_str(
                " (mtools needs glibc's gconv modules: /usr/lib/x86_64-linux-gnu/gconv/IBM850.so, gconv-modules and gconv-modules.d/)",
            );
        }
        return Err(ToolError::Failed {
            tool: tool.into(),
            target: target.into(),
            status: out.status.to_string(),
            stderr,
        });
    }
    Ok(out.stdout)
}

/// A FAT filesystem inside a disk, addressed the way mtools wants it.
#[derive(Debug, Clone)]
pub struct FatVolume {
    /// The disk (device or image file).
    pub disk: PathBuf,
    /// Where the filesystem starts on it, in bytes.
    pub offset_bytes: u64,
}

impl FatVolume {
    fn image(&self) -> String {
        format!("{}@@{}", self.disk.display(), self.offset_bytes)
    }
    fn name(&self) -> String {
        format!(
            "FAT at byte {} of {}",
            self.offset_bytes,
            self.disk.display()
        )
    }

    /// Creates a FAT32 filesystem over `[offset, offset+size)`.
    pub fn format(&self, sector_size: u64, size: u64, label: &str) -> Result<(), ToolError> {
        let cluster_sectors = (4096 / sector_size).max(1);
        let disk = self.disk.display().to_string();
        // mkfs.fat refuses a whole-disk block device without -I; we format
        // at an offset inside it on purpose, and have made our own checks.
        let whole_device = std::fs::metadata(&self.disk)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
        let mut args: Vec<String> = if whole_device {
            vec!["-I".into()]
        } else {
            Vec::new()
        };
        args.extend([
            "-F".to_string(),
            "32".into(),
            "-S".into(),
            sector_size.to_string(),
            "-s".into(),
            cluster_sectors.to_string(),
            format!("--offset={}", self.offset_bytes / sector_size),
            "-h".into(),
            (self.offset_bytes / sector_size).to_string(),
            "-n".into(),
            label.into(),
            disk.clone(),
            (size / 1024).to_string(),
        ]);
        run("mkfs.fat", &args, &self.name())?;
        Ok(())
    }

    /// Makes `dir` (an absolute FAT path like `/EFI/BOOT`) and its parents;
    /// directories that exist are kept.
    pub fn mkdir_p(&self, dir: &str) -> Result<(), ToolError> {
        self.session()?.mkdir_p(dir)
    }

    /// The volume's tree listed once (one `mdir -/`), for several changes
    /// in a row: each file then costs one mtools run (two when it needs
    /// new directories) instead of two per path component.
    pub fn session(&self) -> Result<FatSession<'_>, ToolError> {
        let out = self.mdir(&["-/", "-b", "-a", "-i", &self.image(), "::/"])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // An empty root is a failure too ("File "::/" not found"); any other
        // failure (an unreadable FAT) is an error, not an empty tree.
        let empty_root = out.stdout.is_empty() && stderr.contains("not found");
        if !out.status.success() && !empty_root {
            return Err(ToolError::Failed {
                tool: "mdir".into(),
                target: self.name(),
                status: out.status.to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
        let paths = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim_end().strip_prefix("::"))
            .map(fat_key)
            .collect();
        Ok(FatSession { vol: self, paths })
    }

    /// Whether a file or directory exists (names compare case-insensitively,
    /// as FAT does).
    pub fn exists(&self, path: &str) -> Result<bool, ToolError> {
        let out = self.mdir(&["-b", "-i", &self.image(), &format!("::{path}")])?;
        Ok(out.status.success())
    }

    /// Runs `mdir` with `args` (plain ASCII listing, long names shown) and
    /// returns its output whatever its status: the callers tell a missing
    /// path from a failure.
    fn mdir(&self, args: &[&str]) -> Result<std::process::Output, ToolError> {
        output("mdir", args)
    }

    /// Copies a host file to `dest` (absolute FAT path), replacing it.
    pub fn put(&self, src: &Path, dest: &str) -> Result<(), ToolError> {
        if let Some((parent, _)) = dest.rsplit_once('/')
            && !parent.is_empty()
        {
            self.mkdir_p(parent)?;
        }
        self.copy_in(src, dest)
    }

    /// Writes `bytes` to `dest`, replacing it, in one mcopy: `dest`'s
    /// directory must exist (mcopy fails otherwise, writing nothing). For
    /// a caller that made the directory earlier, and saves the listing and
    /// `mmd` that [`FatVolume::put_bytes`] runs to find that out.
    pub fn put_bytes_in_existing_dir(&self, bytes: &[u8], dest: &str) -> Result<(), ToolError> {
        let tmp = write_temp(bytes)?;
        let r = self.copy_in(&tmp, dest);
        let _ = std::fs::remove_file(&tmp);
        r
    }

    /// mcopy of `src` to `dest`, whose directory exists.
    fn copy_in(&self, src: &Path, dest: &str) -> Result<(), ToolError> {
        let src = src.display().to_string();
        run(
            "mcopy",
            ["-o", "-i", &self.image(), &src, &format!("::{dest}")],
            &self.name(),
        )?;
        Ok(())
    }

    /// Writes `bytes` to `dest`, replacing it (through a temp file).
    pub fn put_bytes(&self, bytes: &[u8], dest: &str) -> Result<(), ToolError> {
        let tmp = write_temp(bytes)?;
        let r = self.put(&tmp, dest);
        let _ = std::fs::remove_file(&tmp);
        r
    }

    /// Reads a file (None when it does not exist).
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>, ToolError> {
        if !self.exists(path)? {
            return Ok(None);
        }
        self.read_existing(path).map(Some)
    }

    fn read_existing(&self, path: &str) -> Result<Vec<u8>, ToolError> {
        run(
            "mtype",
            ["-i", &self.image(), &format!("::{path}")],
            &self.name(),
        )
    }

    /// Free bytes on the filesystem (from `mdir`'s "N bytes free" line).
    pub fn free_bytes(&self) -> Result<u64, ToolError> {
        let out = run("mdir", ["-i", &self.image(), "::/"], &self.name())?;
        let text = String::from_utf8_lossy(&out);
        let line = text
            .lines()
            .find(|l| l.trim_end().ends_with("bytes free"))
            .unwrap_or_default();
        // mtools groups digits with spaces: "1 071 312 896 bytes free".
        let digits: String = line.chars().filter(|c| c.is_ascii_digit()).collect();
        digits.parse().map_err(|_| ToolError::Failed {
            tool: "mdir".into(),
            target: self.name(),
            status: "0".into(),
            stderr: format!("no free-space line in its output: {text}"),
        })
    }

    /// Removes a file if it exists.
    pub fn remove(&self, path: &str) -> Result<(), ToolError> {
        if self.exists(path)? {
            run(
                "mdel",
                ["-i", &self.image(), &format!("::{path}")],
                &self.name(),
            )?;
        }
        Ok(())
    }
}

/// A path as FAT compares it: case-insensitive, no trailing slash.
fn fat_key(path: &str) -> String {
    path.trim_end_matches('/').to_lowercase()
}

/// A [`FatVolume`] with its tree listed once ([`FatVolume::session`]); it
/// learns the directories it makes. Only valid while nothing else changes
/// the volume.
#[derive(Debug)]
pub struct FatSession<'a> {
    vol: &'a FatVolume,
    /// Every file and directory, as [`fat_key`]s.
    paths: std::collections::HashSet<String>,
}

impl FatSession<'_> {
    /// Whether a file or directory exists (names compare case-insensitively).
    pub fn exists(&self, path: &str) -> bool {
        self.paths.contains(&fat_key(path))
    }

    /// Makes `dir` and its missing parents, in one `mmd`.
    pub fn mkdir_p(&mut self, dir: &str) -> Result<(), ToolError> {
        self.mkdir_all([dir])
    }

    /// Makes every directory of `dirs` and their missing parents, in one
    /// `mmd` (parents before children; each made once).
    pub fn mkdir_all<'d>(
        &mut self,
        dirs: impl IntoIterator<Item = &'d str>,
    ) -> Result<(), ToolError> {
        let mut missing: Vec<String> = Vec::new();
        for dir in dirs {
            let mut path = String::new();
            for part in dir.split('/').filter(|p| !p.is_empty()) {
                path.push('/');
                path.push_str(part);
                let key = fat_key(&path);
                if !self.exists(&path)
                    && !missing
                        .iter()
                        .any(|m| fat_key(m.trim_start_matches("::")) == key)
                {
                    missing.push(format!("::{path}"));
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let image = self.vol.image();
        let args = ["-i", image.as_str()]
            .into_iter()
            .chain(missing.iter().map(String::as_str));
        run("mmd", args, &self.vol.name())?;
        self.paths
            .extend(missing.iter().map(|m| fat_key(m.trim_start_matches("::"))));
        Ok(())
    }

    /// Copies a host file to `dest` (absolute FAT path), replacing it.
    pub fn put(&mut self, src: &Path, dest: &str) -> Result<(), ToolError> {
        if let Some((parent, _)) = dest.rsplit_once('/')
            && !parent.is_empty()
        {
            self.mkdir_p(parent)?;
        }
        self.vol.copy_in(src, dest)?;
        self.paths.insert(fat_key(dest));
        Ok(())
    }

    /// Writes `bytes` to `dest`, replacing it (through a temp file).
    pub fn put_bytes(&mut self, bytes: &[u8], dest: &str) -> Result<(), ToolError> {
        let tmp = write_temp(bytes)?;
        let r = self.put(&tmp, dest);
        let _ = std::fs::remove_file(&tmp);
        r
    }

    /// Reads a file (None when it does not exist).
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>, ToolError> {
        if !self.exists(path) {
            return Ok(None);
        }
        self.vol.read_existing(path).map(Some)
    }
}

/// `bytes` in a new temporary file, for mcopy.
fn write_temp(bytes: &[u8]) -> Result<PathBuf, ToolError> {
    let tmp = std::env::temp_dir().join(format!(
        "rayos-install-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::write(&tmp, bytes).map_err(|source| ToolError::Spawn {
        tool: "temporary file".into(),
        package: "(none)",
        source,
    })?;
    Ok(tmp)
}

/// Creates ext4 (with `metadata_csum`) over `[offset, offset+size)` of
/// `disk`, filled from `staging` (owners and modes as staged), with
/// `label`.
pub fn mkfs_ext4(
    disk: &Path,
    offset: u64,
    size: u64,
    label: &str,
    staging: Option<&Path>,
) -> Result<(), ToolError> {
    let target = format!("byte {offset} of {}", disk.display());
    // e2fsprogs reads `?` in a device name as the start of its options:
    // such a path gets the checksums from mkfs itself (slower, same result).
    let disk_name = disk.display().to_string();
    let csum_after = !disk_name.contains('?');
    let mut args: Vec<String> = vec![
        "-q".into(),
        "-F".into(),
        "-t".into(),
        "ext4".into(),
        "-b".into(),
        "4096".into(),
        "-L".into(),
        label.into(),
        "-E".into(),
        format!("offset={offset},nodiscard"),
    ];
    if csum_after {
        args.push("-O".into());
        // uninit_bg keeps the inode tables lazily initialised (without
        // it or metadata_csum mkfs writes every inode table: 200 MiB on a
        // 13 GiB volume); tune2fs swaps it for metadata_csum.
        args.push("^metadata_csum,uninit_bg".into());
    }
    if let Some(dir) = staging {
        args.push("-d".into());
        args.push(dir.display().to_string());
    }
    args.push(disk_name.clone());
    args.push(format!("{}k", size / 1024));
    run("mkfs.ext4", &args, &target)?;
    if csum_after {
        let out = output(
            "tune2fs",
            [
                "-O",
                "metadata_csum",
                &format!("{disk_name}?offset={offset}"),
            ],
        )?;
        // tune2fs asks for e2fsck when a directory block has no room for
        // its checksum; a fresh filesystem should never need that, and one
        // that does is not installed half-checked.
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || said.contains("e2fsck") {
            return Err(ToolError::Failed {
                tool: "tune2fs".into(),
                target,
                status: out.status.to_string(),
                stderr: said.trim().to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_sees_existing_paths_and_the_directories_it_makes() {
        let dir = std::env::temp_dir().join(format!(
            "rayos-tools-test-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("fat.img");
        run(
            "mkfs.fat",
            [OsStr::new("-C"), img.as_os_str(), OsStr::new("2048")],
            "test",
        )
        .unwrap();
        let v = FatVolume {
            disk: img.clone(),
            offset_bytes: 0,
        };
        // An empty root lists as an empty tree, not an error.
        let mut s = v.session().unwrap();
        assert!(!s.exists("/EFI"));
        s.put_bytes(b"x", "/EFI/Boot/a.txt").unwrap();
        assert!(s.exists("/efi/boot") && s.exists("/EFI/BOOT/A.TXT"));
        // A new session lists what the first one made (case-insensitively).
        let mut s = v.session().unwrap();
        assert!(s.exists("/efi") && s.exists("/efi/boot/a.txt"));
        s.mkdir_p("/EFI/Boot/deeper").unwrap();
        assert_eq!(s.read("/efi/boot/a.txt").unwrap().unwrap(), b"x");
        assert!(v.exists("/EFI/BOOT/DEEPER").unwrap());
        // An unreadable volume is an error, not an empty tree.
        let missing = FatVolume {
            disk: dir.join("missing.img"),
            offset_bytes: 0,
        };
        assert!(missing.session().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ext4_gets_checksums_after_a_fast_copy() {
        // A staged file with holes (more than 4 extents: the case that is
        // slow with checksums on during the copy) lands byte for byte in a
        // filesystem at an offset, which has metadata_csum and passes
        // e2fsck; nothing before the offset is written.
        let dir = tempfile::tempdir().unwrap();
        let stage = dir.path().join("stage");
        std::fs::create_dir_all(stage.join("vm/disks")).unwrap();
        let mut data = Vec::new();
        for i in 0..8u8 {
            data.extend(std::iter::repeat_n(i + 1, 256 << 10));
            data.extend(std::iter::repeat_n(0u8, 8 << 10));
        }
        std::fs::write(stage.join("vm/disks/root.qcow2"), &data).unwrap();
        let img = dir.path().join("disk.img");
        let offset = 1u64 << 20;
        std::fs::write(&img, vec![0xa5u8; offset as usize]).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(offset + (64 << 20))
            .unwrap();
        mkfs_ext4(&img, offset, 64 << 20, "t", Some(&stage)).unwrap();
        let fs = format!("{}?offset={offset}", img.display());
        let o = Command::new("e2fsck").args(["-fn", &fs]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
        let o = Command::new("dumpe2fs").args(["-h", &fs]).output().unwrap();
        let head = String::from_utf8_lossy(&o.stdout);
        // metadata_csum on, uninit_bg (only there for the copy) off.
        assert!(
            head.lines().any(|l| l.starts_with("Filesystem features:")
                && l.contains("metadata_csum")
                && !l.contains("uninit_bg")),
            "{head}"
        );
        let o = Command::new("debugfs")
            .args(["-R", "cat /vm/disks/root.qcow2", &fs])
            .output()
            .unwrap();
        assert!(o.stdout == data, "the copied file differs");
        let disk = std::fs::read(&img).unwrap();
        assert!(disk[..offset as usize].iter().all(|&b| b == 0xa5));
    }
}
