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
//!   "Performance"). Even so -d writes a file 4 KiB at a time, so one large
//!   file (the Linux VM's disk) is not copied by -d at all: mke2fs
//!   preallocates it ([`Prealloc`], its "hugefile" feature), debugfs moves
//!   it into place and lists its blocks, and the installer writes it there
//!   in large pieces.
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

/// `tool` in the environment every tool here gets: mtools' checks
/// relaxed, messages in English, no stdin.
fn command(tool: &str) -> Command {
    let mut cmd = Command::new(tool);
    // mtools refuses some valid geometries without this (4 KiB sectors).
    cmd.env("MTOOLS_SKIP_CHECK", "1")
        .env("MTOOLS_NO_VFAT", "0")
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd args…` and returns its output whatever its exit status (an
/// error only when it cannot be started).
fn output_of<I, S>(mut cmd: Command, tool: &str, args: I) -> Result<std::process::Output, ToolError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    cmd.args(args).output().map_err(|source| ToolError::Spawn {
        tool: tool.into(),
        package: package_of(tool),
        source,
    })
}

/// Runs `tool args…` (see [`command`]) and returns its output whatever its
/// exit status.
fn output<I, S>(tool: &str, args: I) -> Result<std::process::Output, ToolError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    output_of(command(tool), tool, args)
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

/// A file [`mkfs_ext4`] makes room for instead of copying it: mke2fs's
/// "hugefile" preallocation (contiguous, *initialised* extents whose blocks
/// keep whatever the disk held), which the caller then fills with large
/// writes at the [`BlockRun`]s it gets back. `mkfs.ext4 -d` copies a file
/// 4 KiB at a time (about 1.2 s for the Debian VM's 455 MiB disk); a fill
/// is a plain sequential write. Every byte of the file must be written by
/// the caller, or the file shows stale disk contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prealloc {
    /// Its absolute path in the new filesystem; its directory must be in
    /// the staging tree, the file itself must not.
    pub path: String,
    /// Its length: a non-zero multiple of [`EXT4_BLOCK`].
    pub len: u64,
}

/// `count` filesystem blocks of a preallocated file, from the file's block
/// `logical` at the filesystem's block `physical` (blocks of
/// [`EXT4_BLOCK`] bytes from the filesystem's first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRun {
    /// First block of the file in this run.
    pub logical: u64,
    /// Where it is in the filesystem.
    pub physical: u64,
    /// Blocks in the run.
    pub count: u64,
}

/// The block size [`mkfs_ext4`] makes.
pub const EXT4_BLOCK: u64 = 4096;

/// The name mke2fs gives the preallocated file at the root before it is
/// moved to its place (`-d` cannot populate a directory mke2fs already made
/// for it, so the file starts where no staged entry can be).
const PREALLOC_NAME: &str = ".rayos-prealloc";

/// Whether [`mkfs_ext4`] can preallocate a file of `len` bytes at `path`
/// on `disk`: a whole number of blocks, a path debugfs takes as one word, a
/// disk name e2fsprogs takes with `?offset=`, and an mke2fs configuration
/// to add the preallocation to. Otherwise the file is staged and copied.
pub fn can_prealloc(disk: &Path, path: &str, len: u64) -> bool {
    len > 0
        && len.is_multiple_of(EXT4_BLOCK)
        && path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
        && !disk.display().to_string().contains('?')
        && std::fs::metadata(mke2fs_config_path()).is_ok_and(|m| m.is_file())
}

/// The configuration mke2fs reads (`MKE2FS_CONFIG`, else its default).
fn mke2fs_config_path() -> PathBuf {
    std::env::var_os("MKE2FS_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/mke2fs.conf"))
}

/// mke2fs's configuration with the preallocation of `p` added: a
/// `[defaults]` section of its own ahead of the system's (mke2fs reads the
/// hugefile settings from `[defaults]` when the filesystem type has none,
/// and keeps the system's other settings, so the filesystem is the one a
/// plain mkfs.ext4 makes).
fn prealloc_config(p: &Prealloc) -> std::io::Result<String> {
    let system = std::fs::read_to_string(mke2fs_config_path())?;
    Ok(format!(
        "[defaults]\n\tmake_hugefiles = true\n\thugefiles_dir = /\n\thugefiles_name = {PREALLOC_NAME}\n\thugefiles_digits = 0\n\tnum_hugefiles = 1\n\thugefiles_size = {}K\n\thugefiles_slack = 0\n\tzero_hugefiles = false\n\thugefiles_uid = 0\n\thugefiles_gid = 0\n\thugefiles_umask = 077\n\n{system}",
        p.len / 1024
    ))
}

/// Parses `debugfs -R "blocks FILE"` (the file's physical blocks in file
/// order, holes left out) into runs; `None` unless it is exactly `blocks`
/// numbers (so no hole and nothing else).
fn block_runs(out: &str, blocks: u64) -> Option<Vec<BlockRun>> {
    let mut runs: Vec<BlockRun> = Vec::new();
    let mut n = 0u64;
    for word in out.split_ascii_whitespace() {
        let b: u64 = word.parse().ok()?;
        match runs.last_mut() {
            Some(r) if r.physical.checked_add(r.count) == Some(b) => r.count += 1,
            _ => runs.push(BlockRun {
                logical: n,
                physical: b,
                count: 1,
            }),
        }
        n += 1;
    }
    (n == blocks).then_some(runs)
}

/// Creates ext4 (with `metadata_csum`) over `[offset, offset+size)` of
/// `disk`, filled from `staging` (owners and modes as staged), with
/// `label`; with `prealloc` (see [`can_prealloc`]) that file is made room
/// for, owned by root with mode 0600, and where its blocks are is returned
/// (empty without).
pub fn mkfs_ext4(
    disk: &Path,
    offset: u64,
    size: u64,
    label: &str,
    staging: Option<&Path>,
    prealloc: Option<&Prealloc>,
) -> Result<Vec<BlockRun>, ToolError> {
    let target = format!("byte {offset} of {}", disk.display());
    // e2fsprogs reads `?` in a device name as the start of its options:
    // such a path gets the checksums from mkfs itself (slower, same result).
    let disk_name = disk.display().to_string();
    let csum_after = !disk_name.contains('?');
    let refuse = |why: String| ToolError::Failed {
        tool: "mkfs.ext4".into(),
        target: target.clone(),
        status: "not run".into(),
        stderr: why,
    };
    if let Some(p) = prealloc
        && !can_prealloc(disk, &p.path, p.len)
    {
        return Err(refuse(format!(
            "cannot preallocate {} ({} bytes) there",
            p.path, p.len
        )));
    }
    let mut args: Vec<String> = vec![
        "-q".into(),
        "-F".into(),
        "-t".into(),
        "ext4".into(),
        "-b".into(),
        EXT4_BLOCK.to_string(),
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
    match prealloc {
        None => {
            run("mkfs.ext4", &args, &target)?;
        }
        Some(p) => {
            let conf = prealloc_config(p)
                .map_err(|e| refuse(format!("{}: {e}", mke2fs_config_path().display())))
                .and_then(|text| write_temp(text.as_bytes()))?;
            let mut cmd = command("mkfs.ext4");
            cmd.env("MKE2FS_CONFIG", &conf);
            let made = output_of(cmd, "mkfs.ext4", &args);
            let _ = std::fs::remove_file(&conf);
            let made = made?;
            let stderr = String::from_utf8_lossy(&made.stderr).trim().to_string();
            // mke2fs reports a preallocation it could not make on stderr
            // and still exits 0.
            if !made.status.success() || stderr.contains("huge file") {
                return Err(ToolError::Failed {
                    tool: "mkfs.ext4".into(),
                    target,
                    status: made.status.to_string(),
                    stderr: format!(
                        "{stderr} (making room for {}, {} MiB: the data volume is too small for it)",
                        p.path,
                        p.len >> 20
                    ),
                });
            }
        }
    }
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
    match prealloc {
        None => Ok(Vec::new()),
        Some(p) => place_prealloc(&disk_name, offset, p, &target),
    }
}

/// Moves the preallocated file from the root to `p.path` (debugfs `ln` and
/// `unlink`, which leave the link count at 1: a rename) and reads where its
/// blocks are.
fn place_prealloc(
    disk_name: &str,
    offset: u64,
    p: &Prealloc,
    target: &str,
) -> Result<Vec<BlockRun>, ToolError> {
    let fs = format!("{disk_name}?offset={offset}");
    let from = format!("/{PREALLOC_NAME}");
    for request in [format!("ln {from} {}", p.path), format!("unlink {from}")] {
        debugfs(&["-w", "-R", &request, &fs], target)?;
    }
    let out = debugfs(&["-R", &format!("blocks {}", p.path), &fs], target)?;
    let blocks = p.len / EXT4_BLOCK;
    block_runs(&out, blocks).ok_or_else(|| ToolError::Failed {
        tool: "debugfs".into(),
        target: target.into(),
        status: "unexpected output".into(),
        stderr: format!(
            "{} should have {blocks} blocks without holes; debugfs listed: {}",
            p.path,
            out.chars().take(200).collect::<String>()
        ),
    })
}

/// Runs debugfs; it exits 0 even when its request failed, so anything on
/// stderr but its version line is an error. Returns stdout.
fn debugfs(args: &[&str], target: &str) -> Result<String, ToolError> {
    let out = output("debugfs", args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaint: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !out.status.success() || !complaint.is_empty() {
        return Err(ToolError::Failed {
            tool: format!("debugfs {}", args.join(" ")),
            target: target.into(),
            status: out.status.to_string(),
            stderr: complaint.join("; "),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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

    /// `disk.img` in `dir`: `offset` bytes of 0xa5 (which must stay), then
    /// `size` bytes of sparse zeros.
    fn marked_image(dir: &Path, offset: u64, size: u64) -> PathBuf {
        let img = dir.join("disk.img");
        std::fs::write(&img, vec![0xa5u8; offset as usize]).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(offset + size)
            .unwrap();
        img
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
        let offset = 1u64 << 20;
        let img = marked_image(dir.path(), offset, 64 << 20);
        mkfs_ext4(&img, offset, 64 << 20, "t", Some(&stage), None).unwrap();
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

    #[test]
    fn a_preallocated_file_is_filled_in_place_and_checks_clean() {
        // mkfs.ext4 makes room for a file (outside the staged tree), it is
        // moved to its directory, its blocks are reported, and writing the
        // bytes there gives a filesystem e2fsck passes with that file's
        // contents, root's and private; nothing before the offset changes.
        let dir = tempfile::tempdir().unwrap();
        let stage = dir.path().join("stage");
        std::fs::create_dir_all(stage.join("vm/l/disks")).unwrap();
        std::fs::write(stage.join("vm/l/meta.json"), b"{}").unwrap();
        let data: Vec<u8> = (0..(9u32 << 20) + 8192)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let offset = 1u64 << 20;
        let img = marked_image(dir.path(), offset, 256 << 20);
        let p = Prealloc {
            path: "/vm/l/disks/root.qcow2".into(),
            len: data.len() as u64,
        };
        assert!(can_prealloc(&img, &p.path, p.len));
        let runs = mkfs_ext4(&img, offset, 256 << 20, "t", Some(&stage), Some(&p)).unwrap();
        assert_eq!(
            runs.iter().map(|r| r.count).sum::<u64>(),
            p.len / EXT4_BLOCK
        );
        let disk = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        for r in &runs {
            let from = (r.logical * EXT4_BLOCK) as usize;
            let to = from + (r.count * EXT4_BLOCK) as usize;
            std::os::unix::fs::FileExt::write_all_at(
                &disk,
                &data[from..to],
                offset + r.physical * EXT4_BLOCK,
            )
            .unwrap();
        }
        drop(disk);
        let fs = format!("{}?offset={offset}", img.display());
        let o = Command::new("e2fsck").args(["-fn", &fs]).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
        let o = Command::new("debugfs")
            .args(["-R", "cat /vm/l/disks/root.qcow2", &fs])
            .output()
            .unwrap();
        assert!(o.stdout == data, "the filled file differs");
        let ls = |d: &str| {
            let o = Command::new("debugfs")
                .args(["-R", &format!("ls -p {d}"), &fs])
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        // `/ino/mode/uid/gid/name/size/`: root's, 0600.
        assert!(
            ls("/vm/l/disks").contains("/100600/0/0/root.qcow2/"),
            "{}",
            ls("/vm/l/disks")
        );
        assert!(!ls("/").contains(PREALLOC_NAME), "{}", ls("/"));
        assert!(ls("/vm/l").contains("/meta.json/"));
        let bytes = std::fs::read(&img).unwrap();
        assert!(bytes[..offset as usize].iter().all(|&b| b == 0xa5));
    }

    #[test]
    fn a_file_larger_than_the_volume_is_an_error_that_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let stage = dir.path().join("stage");
        std::fs::create_dir_all(stage.join("vm")).unwrap();
        let img = marked_image(dir.path(), 0, 64 << 20);
        let p = Prealloc {
            path: "/vm/root.qcow2".into(),
            len: 128 << 20,
        };
        let e = mkfs_ext4(&img, 0, 64 << 20, "t", Some(&stage), Some(&p)).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/vm/root.qcow2") && msg.contains("too small"),
            "{msg}"
        );
    }

    #[test]
    fn preallocation_wants_whole_blocks_plain_paths_and_one_word() {
        let img = Path::new("/tmp/disk.img");
        assert!(!can_prealloc(img, "/vm/a/root.qcow2", 4097));
        assert!(!can_prealloc(img, "/vm/a/root.qcow2", 0));
        assert!(!can_prealloc(img, "vm/a/root.qcow2", 4096));
        assert!(!can_prealloc(img, "/vm/a b/root.qcow2", 4096));
        assert!(!can_prealloc(
            Path::new("/tmp/a?b.img"),
            "/vm/a/root.qcow2",
            4096
        ));
        assert!(can_prealloc(img, "/vm/0a-b_c/root.qcow2", 8192));
    }

    #[test]
    fn block_lists_become_runs_and_holes_are_refused() {
        let runs = block_runs("100 101 102\n200 201\n103\n", 6).unwrap();
        assert_eq!(
            runs,
            vec![
                BlockRun {
                    logical: 0,
                    physical: 100,
                    count: 3
                },
                BlockRun {
                    logical: 3,
                    physical: 200,
                    count: 2
                },
                BlockRun {
                    logical: 5,
                    physical: 103,
                    count: 1
                },
            ]
        );
        // Fewer blocks than the file has (a hole), more, or anything else.
        assert!(block_runs("100 101", 3).is_none());
        assert!(block_runs("100 101 102 103", 3).is_none());
        assert!(block_runs("100 x 102", 3).is_none());
        assert!(block_runs("", 1).is_none());
    }
}
