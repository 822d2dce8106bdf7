//! Applying a [`Plan`] to its disk, as a linear list of named steps
//! (Talos-style): `partition`, `format-<role>` for each partition created or
//! reformatted, `esp-files`, `system-files`, `nvram` (block devices on EFI
//! hosts), `manifest`.
//!
//! Protocol and guarantees:
//! - Before anything is written the real table is read again and every
//!   partition the plan keeps must still be where the plan saw it; the new
//!   table is built and checked in memory, then written in one go (GPT
//!   primary and backup, protective MBR) and fsynced.
//! - Filesystems are made by the real tools at byte offsets
//!   ([`crate::tools`]), so image files need no loop device and no root;
//!   mkfs.fat's result is checked with rayos-disk's BPB reader. Files go
//!   into a FAT only through a copy bounded by its partition
//!   ([`crate::fatview`]): never `mtools disk@@offset` onto the disk.
//!   Nothing outside the partitions the plan creates or formats is written,
//!   except files added to a reused ESP — which [`preflight`] first checks
//!   (a sane BPB that fits its partition, `fsck.fat -n` clean, room for our
//!   files), so a refused ESP leaves the whole disk as it was.
//! - The data volume is populated at mkfs time from a staging directory
//!   (`mkfs.ext4 -d`); the staging files are not fsynced (thrown away once
//!   copied). The Linux VM's disk is not in that tree: mkfs.ext4
//!   preallocates it ([`tools::Prealloc`]) and the shipped image is
//!   decompressed straight into those blocks ([`crate::placed`] checks each
//!   lies inside the partition first); only an older raw image is decoded
//!   into `TMPDIR` beside the tree first.
//! - Every byte is fsynced before the manifest is written, and the manifest
//!   is the last write: a disk without it holds an unfinished install, which
//!   a re-run with the same answers redoes (see [`crate::plan`]). That one
//!   fsync of the target (before the manifest) is what makes the earlier
//!   steps durable; FAT write-backs are not fsynced each.
//! - Test hook: with `RAYOS_INSTALL_FAIL_AFTER=<step>` in the environment
//!   the process aborts right after that step, like a power cut.
//!
//! Limits: run as root for the seeded files to be owned by root (mkfs.ext4
//! copies the staging files' owners); on a block device the kernel is asked
//! to re-read the table (BLKRRPART), which fails if something opened a
//! partition meanwhile.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use rayos_disk::{Gpt, GptError, Partition};

use crate::fatview::{FatImage, FatViewError};
use crate::manifest::{Manifest, ManifestImage, ManifestPartition, now_rfc3339};
use crate::plan::{
    Action, ESP_LOADER_CONF, FsKind, MANIFEST_PATH, PartitionPlan, Plan, Role, Source, TableAction,
};
use crate::tools::{self, FatSession, FatVolume, ToolError};
use rayos_base::efivar::{self, EfiVarError, HdFilePath};
use rayos_base::marker::{InstallerMarker, Marker};

/// Environment variable of the interruption test hook.
pub const FAIL_AFTER_ENV: &str = "RAYOS_INSTALL_FAIL_AFTER";

/// Why an install stopped (before writing, or part-way).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The target could not be opened for writing; holds it.
    #[error("cannot open {0} for writing")]
    Open(PathBuf, #[source] std::io::Error),
    /// The target's partition table could not be read.
    #[error("cannot read the partition table of {0}")]
    ReadTable(PathBuf, #[source] GptError),
    /// The target changed since the plan was made; nothing was written.
    #[error(
        "{disk} changed since the plan was made ({what}); nothing was written. Run the installer again to make a new plan"
    )]
    Changed {
        /// The target.
        disk: PathBuf,
        /// What changed.
        what: String,
    },
    /// The planned table is not a valid GPT; nothing was written.
    #[error("the new partition table of {0} is not valid; nothing was written")]
    BuildTable(PathBuf, #[source] GptError),
    /// Writing the partition table failed.
    #[error("cannot write the partition table of {0}")]
    WriteTable(PathBuf, #[source] GptError),
    /// Flushing the target failed; holds it.
    #[error("cannot flush {0} to disk")]
    Sync(PathBuf, #[source] std::io::Error),
    /// A tool (mkfs, mtools) failed in a step.
    #[error("step {step} failed")]
    Tool {
        /// The step.
        step: String,
        /// What failed.
        #[source]
        source: ToolError,
    },
    /// A partition's files could not be staged; holds the partition's GPT
    /// name.
    #[error("cannot stage the files of the {0} partition")]
    Stage(&'static str, #[source] std::io::Error),
    /// A host file (UKI, systemd-boot, VM image) could not be read; holds its
    /// path.
    #[error("cannot read {0}")]
    HostFile(PathBuf, #[source] std::io::Error),
    /// A file mkfs.ext4 made room for could not be written into it.
    #[error("cannot write {file} into partition {number}")]
    Fill {
        /// The file's path in the filesystem.
        file: String,
        /// The partition's number.
        number: u32,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The UEFI boot entry could not be written.
    #[error("cannot add the UEFI boot entry")]
    Nvram(#[source] EfiVarError),
    /// The plan has no partition of this role.
    #[error("the plan has no {0} partition")]
    NoPartition(&'static str),
    /// The reused ESP has too little room; nothing was written.
    #[error(
        "the EFI system partition (partition {number}) has {free} bytes free, RayOS needs {need}: free some space on it (nothing was written)"
    )]
    EspFull {
        /// The ESP's number.
        number: u32,
        /// Bytes free on it.
        free: u64,
        /// Bytes RayOS needs.
        need: u64,
    },
    /// The plan names no UKI to install.
    #[error("the plan names no system image: pass --system-image FILE")]
    NoSystemImage,
    /// A FAT partition to write into is not safe to write; nothing was written.
    #[error(
        "partition {number} ({role}) cannot be written safely, so nothing was written: repair its filesystem (fsck.fat -a on that partition, or back up its files and mkfs.fat it) or choose another target"
    )]
    UnsafeFat {
        /// The partition's number.
        number: u32,
        /// Its role.
        role: &'static str,
        /// What is wrong with it.
        #[source]
        source: FatViewError,
    },
    /// Writing files into a FAT partition failed.
    #[error("step {step}: writing into partition {number} failed")]
    FatView {
        /// The step.
        step: String,
        /// The partition's number.
        number: u32,
        /// What failed.
        #[source]
        source: FatViewError,
    },
}

impl ApplyError {
    /// A refusal made before anything was written (the caller may report
    /// it as bad input rather than a failed install).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ApplyError::UnsafeFat { .. } | ApplyError::EspFull { .. }
        )
    }
}

/// Progress, for a bar on a terminal or JSON lines.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A step began.
    StepStarted {
        /// The step's name.
        step: String,
        /// Its index, from 0.
        index: usize,
        /// How many steps there are.
        total: usize,
    },
    /// A step finished.
    StepDone {
        /// The step's name.
        step: String,
        /// Its index, from 0.
        index: usize,
        /// How many steps there are.
        total: usize,
        /// How long it took.
        seconds: f64,
    },
    /// Something a person should know (a fallback taken, a partition kept).
    Note {
        /// The note.
        message: String,
    },
}

/// Where an install finds the machine's EFI variables and puts its staging
/// files.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// efivarfs (tests point this at a directory).
    pub efivars_dir: PathBuf,
    /// Where staging directories go (default: the system temp dir).
    pub temp_dir: PathBuf,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            efivars_dir: PathBuf::from(efivar::EFIVARS_DIR),
            temp_dir: std::env::temp_dir(),
        }
    }
}

/// The steps `apply` will run for `plan`, in order.
pub fn steps(plan: &Plan) -> Vec<String> {
    let mut s = vec!["partition".to_string()];
    for role in Role::ALL {
        if plan
            .partitions
            .iter()
            .any(|p| p.role == Some(role) && matches!(p.action, Action::Create | Action::Format))
        {
            s.push(role.format_step().to_string());
        }
    }
    s.push("esp-files".into());
    s.push("system-files".into());
    if plan.nvram.is_some() {
        s.push("nvram".into());
    }
    s.push("manifest".into());
    s
}

/// What an install did.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    /// The manifest written (it marks the install complete).
    pub manifest: Manifest,
    /// The `Boot####` entry added, if one was.
    pub boot_entry: Option<u16>,
    /// How long the install took, in seconds.
    pub seconds: f64,
}

fn is_block_device(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
}

fn sync_target(path: &Path) -> Result<(), ApplyError> {
    File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| ApplyError::Sync(path.to_path_buf(), e))
}

/// Applies `plan`. `progress` sees every step start and end.
pub fn apply(
    plan: &Plan,
    opts: &ApplyOptions,
    progress: &mut dyn FnMut(&Event),
) -> Result<ApplyReport, ApplyError> {
    let t0 = Instant::now();
    preflight(plan, opts)?;
    let steps = steps(plan);
    let total = steps.len();
    let fail_after = std::env::var(FAIL_AFTER_ENV).ok();
    let mut hash = Some(hash_image(system_image(plan)?.0));
    let mut boot_entry = None;
    let mut manifest = None;
    // The system partition's FAT copy, kept from `system-files` to
    // `manifest` so the manifest goes into the copy already checked and
    // written back instead of a second copy of the whole partition.
    let mut system_fat = None;
    for (index, step) in steps.iter().enumerate() {
        let ts = Instant::now();
        progress(&Event::StepStarted {
            step: step.clone(),
            index,
            total,
        });
        match step.as_str() {
            "partition" => {
                if let Some(message) = write_table(plan)? {
                    progress(&Event::Note { message });
                }
            }
            "esp-files" => esp_files(plan, opts, progress)?,
            "system-files" => system_fat = Some(system_files(plan, opts)?),
            "nvram" => boot_entry = Some(nvram(plan, opts)?),
            "manifest" => {
                let h = hash.take().ok_or(ApplyError::NoSystemImage)?;
                manifest = Some(write_manifest(plan, opts, h, system_fat.take())?);
            }
            other => {
                let role = [
                    Role::Esp,
                    Role::System,
                    Role::Data,
                    Role::VmLinux,
                    Role::VmWindows,
                ]
                .into_iter()
                .find(|r| r.format_step() == other)
                .ok_or(ApplyError::NoPartition("(unknown step)"))?;
                format(plan, role, opts, progress)?;
            }
        }
        progress(&Event::StepDone {
            step: step.clone(),
            index,
            total,
            seconds: ts.elapsed().as_secs_f64(),
        });
        if fail_after.as_deref() == Some(step.as_str()) {
            // A power cut, as far as the disk is concerned: no cleanup, no
            // unwinding.
            let m = Marker::Installer(InstallerMarker::EngineAbortedAfter {
                step: step.clone(),
                note: format!("{FAIL_AFTER_ENV} test hook"),
            });
            eprintln!("{m}");
            std::process::abort();
        }
    }
    let manifest = manifest.ok_or(ApplyError::NoPartition("manifest"))?;
    Ok(ApplyReport {
        manifest,
        boot_entry,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Everything that can be checked before the first write: the host files
/// exist, the tools run, and every FAT the install writes into that it
/// does not make itself (a reused ESP) is sound and inside its partition.
/// A failure here leaves the disk untouched.
pub fn preflight(plan: &Plan, opts: &ApplyOptions) -> Result<(), ApplyError> {
    for f in &plan.files {
        if let Source::HostFile { path } | Source::LinuxVmImage { path, .. } = &f.source {
            let meta = File::open(path)
                .and_then(|f| f.metadata())
                .map_err(|e| ApplyError::HostFile(path.clone(), e))?;
            if !meta.is_file() {
                return Err(ApplyError::HostFile(
                    path.clone(),
                    std::io::Error::other("not a regular file"),
                ));
            }
        }
    }
    let vm_image = plan
        .files
        .iter()
        .any(|f| matches!(f.source, Source::LinuxVmImage { .. }));
    let tools_needed = [
        "mkfs.fat",
        "fsck.fat",
        "mkfs.ext4",
        "tune2fs",
        "mcopy",
        "mmd",
        "mdir",
        "mtype",
        "mdel",
    ]
    .into_iter()
    .chain(vm_image.then_some("zstd"));
    for tool in tools_needed {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            return Err(ApplyError::Tool {
                step: "preflight".into(),
                source: ToolError::Spawn {
                    tool: tool.into(),
                    package: tools::package_of(tool),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "not in PATH"),
                },
            });
        }
    }
    // mtools working end to end (it needs iconv modules that a minimal
    // root may lack): try it on a scratch FAT image, not on the target.
    mtools_selftest().map_err(|source| ApplyError::Tool {
        step: "preflight".into(),
        source,
    })?;
    // A reused ESP (often Windows' 100 MiB one) must be a sound FAT inside
    // its partition (our own check of its boot sector, then fsck.fat -n on
    // the partition's bytes), and have room for our files, or the install
    // would stop half-way on the first copy — or, with a FAT larger than
    // its partition, write into the next one.
    if let Some(esp) = plan
        .partitions
        .iter()
        .find(|p| p.action == Action::ReuseEsp)
    {
        let unsafe_fat = |source| ApplyError::UnsafeFat {
            number: esp.number,
            role: "the EFI system partition",
            source,
        };
        let image = open_fat(plan, esp, opts).map_err(unsafe_fat)?;
        image.fsck().map_err(unsafe_fat)?;
        let need: u64 = plan
            .files
            .iter()
            .filter(|f| f.role == Role::Esp)
            .map(|f| match &f.source {
                Source::HostFile { path } => fs::metadata(path).map(|m| m.len()).unwrap_or(0),
                Source::Text { content } => content.len() as u64,
                _ => 0,
            })
            // cluster slack and directory entries
            .map(|b| b + 64 * 1024)
            .sum();
        let free = image
            .volume()
            .free_bytes()
            .map_err(|source| ApplyError::Tool {
                step: "preflight".into(),
                source,
            })?;
        if free < need {
            return Err(ApplyError::EspFull {
                number: esp.number,
                free,
                need,
            });
        }
    }
    Ok(())
}

/// Formats a 2 MiB scratch image and makes a directory on it with mtools.
fn mtools_selftest() -> Result<(), ToolError> {
    let img = std::env::temp_dir().join(format!(
        "rayos-install-selftest-{}-{}.img",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let r = (|| {
        let name = img.display().to_string();
        tools::run(
            "mkfs.fat",
            ["-C", "-n", "SELFTEST", &name, "2048"],
            "(preflight)",
        )?;
        // mmd directly: the scratch FAT is empty, so no listing is needed.
        tools::run(
            "mmd",
            ["-i", name.as_str(), "::/EFI", "::/EFI/selftest"],
            "(preflight)",
        )
        .map(drop)
    })();
    let _ = fs::remove_file(&img);
    r
}

/// Writes the new table; returns a warning for the person when the kernel
/// could not be made to see it.
fn write_table(plan: &Plan) -> Result<Option<String>, ApplyError> {
    let path = &plan.target;
    let block = is_block_device(path);
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    if block {
        // O_EXCL on a block device fails if anything has it mounted or
        // claimed: a last check that nothing uses the disk.
        opts.custom_flags(libc::O_EXCL);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| ApplyError::Open(path.clone(), e))?;
    let ss = plan.sector_size;
    let total =
        rayos_disk::gpt::device_size(&mut f).map_err(|e| ApplyError::Open(path.clone(), e))?;
    if total != plan.disk_size_bytes {
        return Err(ApplyError::Changed {
            disk: path.clone(),
            what: format!(
                "size is {total} bytes, the plan saw {}",
                plan.disk_size_bytes
            ),
        });
    }
    let mut gpt = match plan.table {
        TableAction::New => {
            Gpt::new(total, ss).map_err(|e| ApplyError::BuildTable(path.clone(), e))?
        }
        TableAction::Edit => match plan.table_copy {
            Some(c) => Gpt::read_copy(&mut f, ss, c.into()),
            None => Gpt::read(&mut f, ss),
        }
        .map_err(|e| ApplyError::ReadTable(path.clone(), e))?,
    };
    let changed = |what: String| ApplyError::Changed {
        disk: path.clone(),
        what,
    };
    for p in &plan.partitions {
        let existing = gpt.partition(p.number).cloned();
        match (p.action, plan.table) {
            (Action::Create, _) => {
                let freed = plan
                    .partitions
                    .iter()
                    .any(|q| q.number == p.number && q.action == Action::Delete);
                if existing.is_some() && plan.table == TableAction::Edit && !freed {
                    return Err(changed(format!("slot {} is now taken", p.number)));
                }
            }
            (_, TableAction::New) => {}
            (
                Action::Keep | Action::ReuseEsp | Action::Format | Action::Delete,
                TableAction::Edit,
            ) => {
                let Some(e) = existing else {
                    return Err(changed(format!("partition {} is gone", p.number)));
                };
                if e.first_lba != p.first_lba
                    || e.last_lba != p.last_lba
                    || e.unique_guid != p.unique_guid
                {
                    return Err(changed(format!(
                        "partition {} moved or was replaced",
                        p.number
                    )));
                }
            }
        }
    }
    let build = |e| ApplyError::BuildTable(path.clone(), e);
    for p in &plan.partitions {
        match p.action {
            Action::Delete | Action::Format if plan.table == TableAction::Edit => {
                gpt.remove(p.number).map_err(build)?;
            }
            _ => {}
        }
    }
    for p in &plan.partitions {
        if matches!(p.action, Action::Create | Action::Format) {
            gpt.add(Partition {
                number: p.number,
                type_guid: p.type_guid,
                unique_guid: p.unique_guid,
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                attributes: 0,
                name: p.name.clone(),
            })
            .map_err(build)?;
        }
    }
    if plan.table == TableAction::New {
        // Clear what sat between LBA 1 and the first partition (old tables,
        // boot loaders, ISO 9660 descriptors) so no stale signature survives
        // beside the new GPT, which is written over the start of this range.
        let from = ss as u64;
        let first = plan
            .partitions
            .iter()
            .filter(|p| p.action != Action::Delete)
            .map(|p| p.start_bytes)
            .min()
            .unwrap_or(from);
        if first > from {
            let zeros = vec![0u8; (first - from) as usize];
            f.seek(SeekFrom::Start(from))
                .and_then(|_| f.write_all(&zeros))
                .map_err(|e| ApplyError::WriteTable(path.clone(), GptError::Write(e)))?;
        }
    }
    gpt.write(&mut f)
        .map_err(|e| ApplyError::WriteTable(path.clone(), e))?;
    f.sync_all()
        .map_err(|e| ApplyError::Sync(path.clone(), e))?;
    drop(f);
    if block {
        // The install itself writes through the whole-disk device at
        // offsets, so a kernel that keeps its old view only matters after
        // the install: say so, do not stop half-way.
        if let Err(e) = reread_table(path) {
            let partx = std::process::Command::new("partx")
                .arg("-u")
                .arg(path)
                .output()
                .is_ok_and(|o| o.status.success());
            if !partx {
                return Ok(Some(format!(
                    "the kernel did not re-read the partition table of {} ({e}); reboot before using the new partitions",
                    path.display()
                )));
            }
        }
    }
    Ok(None)
}

/// BLKRRPART: the kernel drops and re-reads the partition table. The
/// device is opened again without O_EXCL (the ioctl needs no exclusivity,
/// and our own exclusive handle is closed so it does not count as a user).
fn reread_table(path: &Path) -> std::io::Result<()> {
    const BLKRRPART: libc::c_ulong = 0x125f;
    let f = File::open(path)?;
    // SAFETY: `f` is an open block device for the duration of the call and
    // BLKRRPART takes no argument.
    if unsafe { libc::ioctl(f.as_raw_fd(), BLKRRPART as _, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A staging directory removed on drop, and beside it (outside the tree
/// `mkfs.ext4 -d` copies) the file mkfs preallocates instead of copying.
struct Staging {
    /// The tree mkfs.ext4 -d copies.
    tree: PathBuf,
    /// Holds the preallocated file's contents.
    side: PathBuf,
    /// The preallocated file and where its contents come from.
    prealloc: Option<(tools::Prealloc, Contents)>,
}

/// Where a preallocated file's bytes come from.
enum Contents {
    /// A staged file (in [`Staging::side`]).
    File(PathBuf),
    /// The shipped qcow2 form of the Debian VM image, decompressed straight
    /// into place and grown to `disk_size` there.
    Qcow2Zstd {
        /// The compressed image.
        image: PathBuf,
        /// The VM disk's size.
        disk_size: u64,
    },
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.tree);
        let _ = fs::remove_dir_all(&self.side);
    }
}

fn stage(
    plan: &Plan,
    role: Role,
    opts: &ApplyOptions,
    progress: &mut dyn FnMut(&Event),
) -> Result<Staging, ApplyError> {
    let what = role.gpt_name();
    let dir = opts.temp_dir.join(format!(
        "rayos-install-{}-{}-{}",
        std::process::id(),
        what,
        uuid::Uuid::new_v4().simple()
    ));
    let mut st = Staging {
        tree: dir.clone(),
        side: dir.with_extension("side"),
        prealloc: None,
    };
    let err = |e| ApplyError::Stage(what, e);
    fs::create_dir_all(&dir).map_err(err)?;
    for f in plan.files.iter().filter(|f| f.role == role) {
        let rel = f.path.trim_start_matches('/');
        let dest = dir.join(rel);
        match &f.source {
            Source::Directory => fs::create_dir_all(&dest).map_err(err)?,
            Source::Text { content } => {
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).map_err(err)?;
                }
                // A plain write: the staging directory is thrown away once
                // mkfs.ext4 has copied it, so fsyncing it (write_atomic)
                // bought nothing; what must be durable is the target,
                // fsynced before the manifest.
                fs::write(&dest, content.as_bytes()).map_err(err)?;
            }
            Source::HostFile { path } => {
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).map_err(err)?;
                }
                fs::copy(path, &dest).map_err(|e| ApplyError::HostFile(path.clone(), e))?;
            }
            Source::Manifest => {}
            Source::LinuxVmImage { path, disk_size } => {
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).map_err(err)?;
                }
                // Not copied by mkfs.ext4 -d (4 KiB at a time: about 1.2 s
                // for 455 MiB): mkfs.ext4 makes room for it and `format`
                // decompresses the shipped qcow2 straight into that room
                // (docs/install.md).
                let in_fs = format!("/{rel}");
                let len = crate::vmdisk::qcow2_len(path, *disk_size)
                    .map_err(|e| ApplyError::HostFile(path.clone(), e))?;
                if let Some(len) = len
                    && st.prealloc.is_none()
                    && tools::can_prealloc(&plan.target, &in_fs, len)
                {
                    let contents = Contents::Qcow2Zstd {
                        image: path.clone(),
                        disk_size: *disk_size,
                    };
                    st.prealloc = Some((tools::Prealloc { path: in_fs, len }, contents));
                    continue;
                }
                // Otherwise (the raw form, an unrecorded length) decoded
                // beside the tree first.
                fs::create_dir_all(&st.side).map_err(err)?;
                let side = st.side.join(rel.replace('/', "_"));
                crate::vmdisk::write(path, &side, *disk_size, &mut |done, total| {
                    progress(&Event::Note {
                        message: linux_disk_progress(done, total),
                    })
                })
                .map_err(|e| ApplyError::HostFile(path.clone(), e))?;
                let len = fs::metadata(&side).map_err(err)?.len();
                if st.prealloc.is_none() && tools::can_prealloc(&plan.target, &in_fs, len) {
                    let p = tools::Prealloc { path: in_fs, len };
                    st.prealloc = Some((p, Contents::File(side)));
                } else {
                    // Copied by mkfs.ext4 -d like any staged file.
                    fs::rename(&side, &dest).map_err(err)?;
                }
            }
        }
    }
    // A VM's directory is root's alone (`rayos_state::modes`); mkfs.ext4 -d
    // copies the staged modes, so they are set here, not at the first start.
    let vms = rayos_state::modes::tighten_vm_dirs(&dir.join("vm"));
    if let Some(why) = vms.failed.first() {
        return Err(err(std::io::Error::other(why.clone())));
    }
    Ok(st)
}

fn format(
    plan: &Plan,
    role: Role,
    opts: &ApplyOptions,
    progress: &mut dyn FnMut(&Event),
) -> Result<(), ApplyError> {
    let p = plan
        .partition(role)
        .ok_or(ApplyError::NoPartition(role.gpt_name()))?;
    let step = role.format_step().to_string();
    let tool = |source| ApplyError::Tool {
        step: step.clone(),
        source,
    };
    match role.fs() {
        FsKind::Fat32 => {
            FatVolume {
                disk: plan.target.clone(),
                offset_bytes: p.start_bytes,
            }
            .format(plan.sector_size as u64, p.size_bytes, role.fs_label())
            .map_err(tool)?;
            // mkfs.fat sizes the filesystem from the size it was given;
            // check what it wrote as we check any FAT we write into.
            let bad = |source| ApplyError::FatView {
                step: step.clone(),
                number: p.number,
                source,
            };
            let mut f = File::open(&plan.target)
                .map_err(|e| bad(FatViewError::Read(plan.target.clone(), e)))?;
            rayos_disk::fat::Geometry::read(&mut f, p.start_bytes)
                .and_then(|g| g.check_within(p.size_bytes))
                .map_err(|source| {
                    bad(FatViewError::Geometry {
                        what: format!("the FAT mkfs.fat made on partition {}", p.number),
                        source,
                    })
                })
        }
        FsKind::Ext4 => {
            let staging = stage(plan, role, opts, progress)?;
            let runs = tools::mkfs_ext4(
                &plan.target,
                p.start_bytes,
                p.size_bytes,
                role.fs_label(),
                Some(&staging.tree),
                staging.prealloc.as_ref().map(|(p, _)| p),
            )
            .map_err(tool)?;
            if let Some((file, contents)) = &staging.prealloc {
                fill(plan, p, file, contents, runs, progress).map_err(|source| {
                    ApplyError::Fill {
                        file: file.path.clone(),
                        number: p.number,
                        source,
                    }
                })?;
            }
            Ok(())
        }
    }
}

/// Writes a preallocated file's `contents` into the blocks mkfs.ext4 gave
/// it in partition `p` ([`crate::placed::Placed`] checks them before the
/// first write). Not fsynced here (`apply` fsyncs the target before the
/// manifest).
fn fill(
    plan: &Plan,
    p: &PartitionPlan,
    file: &tools::Prealloc,
    contents: &Contents,
    runs: Vec<tools::BlockRun>,
    progress: &mut dyn FnMut(&Event),
) -> std::io::Result<()> {
    let mut out =
        crate::placed::Placed::open(&plan.target, p.start_bytes, p.size_bytes, runs, file.len)?;
    match contents {
        Contents::File(staged) => {
            let mut src = File::open(staged)?;
            // In 8 MiB pieces (io::copy would write 8 KiB at a time).
            let n = crate::vmdisk::copy_counted(&mut src, &mut out, file.len, &mut |_, _| {})?;
            if n != file.len {
                return Err(std::io::Error::other(format!(
                    "{} holds {n} bytes, {} expected",
                    staged.display(),
                    file.len
                )));
            }
        }
        Contents::Qcow2Zstd { image, disk_size } => {
            crate::vmdisk::stream_qcow2(
                image,
                &mut out,
                file.len,
                *disk_size,
                &mut |done, total| {
                    progress(&Event::Note {
                        message: linux_disk_progress(done, total),
                    })
                },
            )?;
        }
    }
    progress(&Event::Note {
        message: format!(
            "{}: {} MiB written into the space mkfs.ext4 made for it",
            file.path,
            file.len >> 20
        ),
    });
    Ok(())
}

/// `Linux VM disk: 40% (…)`, the note a screen and a log show.
fn linux_disk_progress(done: u64, total: u64) -> String {
    let mib = |b: u64| b >> 20;
    match (done * 100).checked_div(total) {
        Some(pct) => format!(
            "Linux VM disk: {pct}% ({} of {} MiB of the Debian image)",
            mib(done),
            mib(total)
        ),
        None => format!("Linux VM disk: {} MiB written", mib(done)),
    }
}

/// The FAT of `p` as a copy bounded by the partition (see [`crate::fatview`]).
fn open_fat(plan: &Plan, p: &PartitionPlan, opts: &ApplyOptions) -> Result<FatImage, FatViewError> {
    let what = match p.role {
        Some(Role::Esp) => format!("the EFI system partition (partition {})", p.number),
        Some(r) => format!("the {} partition (partition {})", r.label(), p.number),
        None => format!("partition {}", p.number),
    };
    FatImage::open(
        &plan.target,
        p.start_bytes,
        p.size_bytes,
        &opts.temp_dir,
        &what,
    )
}

fn fat_error(step: &str, number: u32) -> impl Fn(FatViewError) -> ApplyError + '_ {
    move |source| ApplyError::FatView {
        step: step.to_string(),
        number,
        source,
    }
}

/// The FAT of `role`'s partition as its bounded copy (its boot sector
/// checked against the partition). fsck.fat checks it in [`change_fat`],
/// after mtools' changes and before any of them reaches the disk: a FAT
/// damaged before (a reused ESP, also refused in [`preflight`], or one
/// RayOS just made) is still damaged then, so a second run before the
/// changes would refuse nothing more.
fn open_checked(
    plan: &Plan,
    role: Role,
    step: &str,
    opts: &ApplyOptions,
) -> Result<FatImage, ApplyError> {
    let p = plan
        .partition(role)
        .ok_or(ApplyError::NoPartition(role.gpt_name()))?;
    open_fat(plan, p, opts).map_err(fat_error(step, p.number))
}

/// Runs `work` on `image` (the copy of `role`'s FAT), checks the result
/// with `fsck.fat -n` before any of it reaches the disk, then writes back
/// what changed (inside the partition only). Not fsynced here: `apply`
/// fsyncs the whole target once before the manifest, which is what the
/// install's guarantee needs (a disk without the manifest is an
/// unfinished install), and one fsync instead of one per partition.
fn change_fat(
    plan: &Plan,
    role: Role,
    step: &str,
    image: &mut FatImage,
    written: Written,
    work: impl FnOnce(&FatVolume) -> Result<(), ApplyError>,
) -> Result<(), ApplyError> {
    let p = plan
        .partition(role)
        .ok_or(ApplyError::NoPartition(role.gpt_name()))?;
    let err = fat_error(step, p.number);
    work(&image.volume())?;
    // What mtools made is checked as a whole before it is written (mtools
    // never gets a FAT fsck.fat finds damaged onto the disk): the check a
    // read-back after writing would give, without a second pass over the
    // disk.
    image.fsck().map_err(&err)?;
    match written {
        Written::Anything => image.write_back(),
        Written::NewPathsOnly => image.write_back_additions(),
    }
    .map_err(&err)?;
    Ok(())
}

/// What a [`change_fat`] may have done to the FAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// Anything mtools does: every cluster in use is compared.
    Anything,
    /// Only added files and directories that did not exist (see
    /// [`FatImage::write_back_additions`]).
    NewPathsOnly,
}

fn put_files(
    plan: &Plan,
    role: Role,
    step: &str,
    v: &mut FatSession<'_>,
) -> Result<(), ApplyError> {
    let tool = |source| ApplyError::Tool {
        step: step.to_string(),
        source,
    };
    // Every directory the files need, in one mmd rather than one per
    // file — the manifest's too, so the `manifest` step is one mcopy (a
    // directory without the manifest still marks an unfinished install).
    let dirs = plan
        .files
        .iter()
        .filter(|f| f.role == role)
        .filter_map(|f| match f.source {
            Source::Directory => Some(f.path.as_str()),
            _ => f.path.rsplit_once('/').map(|(parent, _)| parent),
        })
        .filter(|d| !d.is_empty());
    v.mkdir_all(dirs).map_err(tool)?;
    for f in plan.files.iter().filter(|f| f.role == role) {
        if f.only_if_absent && v.exists(&f.path) {
            continue;
        }
        match &f.source {
            Source::HostFile { path } => {
                if !path.is_file() {
                    return Err(ApplyError::HostFile(
                        path.clone(),
                        std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                    ));
                }
                v.put(path, &f.path).map_err(tool)?
            }
            Source::Text { content } => v.put_bytes(content.as_bytes(), &f.path).map_err(tool)?,
            Source::Directory => v.mkdir_p(&f.path).map_err(tool)?,
            Source::Manifest => {}
            Source::LinuxVmImage { path, .. } => {
                return Err(ApplyError::HostFile(
                    path.clone(),
                    std::io::Error::other("a VM disk cannot go on a FAT partition"),
                ));
            }
        }
    }
    Ok(())
}

fn esp_files(
    plan: &Plan,
    opts: &ApplyOptions,
    progress: &mut dyn FnMut(&Event),
) -> Result<(), ApplyError> {
    let mut image = open_checked(plan, Role::Esp, "esp-files", opts)?;
    change_fat(
        plan,
        Role::Esp,
        "esp-files",
        &mut image,
        Written::Anything,
        |v| {
            let tool = |source| ApplyError::Tool {
                step: "esp-files".into(),
                source,
            };
            // Another systemd-boot's loader.conf on a reused ESP is kept beside ours.
            let backup = format!("{ESP_LOADER_CONF}.pre-rayos");
            let mut s = v.session().map_err(tool)?;
            if let Some(old) = s.read(ESP_LOADER_CONF).map_err(tool)? {
                let ours = crate::plan::loader_conf();
                if old != ours.as_bytes() && !s.exists(&backup) {
                    s.put_bytes(&old, &backup).map_err(tool)?;
                    progress(&Event::Note {
                        message: format!("the ESP's loader.conf was kept as {backup}"),
                    });
                }
            }
            put_files(plan, Role::Esp, "esp-files", &mut s)
        },
    )
}

/// Writes the system partition's files; returns its FAT copy for the
/// manifest.
fn system_files(plan: &Plan, opts: &ApplyOptions) -> Result<FatImage, ApplyError> {
    let mut image = open_checked(plan, Role::System, "system-files", opts)?;
    change_fat(
        plan,
        Role::System,
        "system-files",
        &mut image,
        Written::Anything,
        |v| {
            let mut s = v.session().map_err(|source| ApplyError::Tool {
                step: "system-files".into(),
                source,
            })?;
            put_files(plan, Role::System, "system-files", &mut s)
        },
    )?;
    Ok(image)
}

fn nvram(plan: &Plan, opts: &ApplyOptions) -> Result<u16, ApplyError> {
    let n = plan
        .nvram
        .as_ref()
        .ok_or(ApplyError::NoPartition("nvram"))?;
    let esp = plan
        .partition(crate::plan::loader_role(plan.sector_size))
        .ok_or(ApplyError::NoPartition("esp"))?;
    efivar::add_boot_entry(
        &opts.efivars_dir,
        &n.description,
        &HdFilePath {
            partition_number: esp.number,
            start_lba: esp.first_lba,
            size_lba: esp.last_lba + 1 - esp.first_lba,
            partition_guid: esp.unique_guid,
            file: n.loader.clone(),
        },
    )
    .map_err(ApplyError::Nvram)
}

/// The system image and its hash, computed on a thread while the disk
/// steps run (hashing a large UKI would otherwise add to the install time).
type ImageHash = std::thread::JoinHandle<Result<(u64, String), ApplyError>>;

fn system_image(plan: &Plan) -> Result<(PathBuf, String), ApplyError> {
    plan.files
        .iter()
        .find_map(|f| match (&f.source, f.role) {
            // On a 4096-byte-sector disk systemd-boot is a host file on the
            // system partition too; the image is the one under /EFI/Linux.
            (Source::HostFile { path }, Role::System) if f.path.starts_with("/EFI/Linux/") => {
                Some((path.clone(), f.path.clone()))
            }
            _ => None,
        })
        .ok_or(ApplyError::NoSystemImage)
}

fn hash_image(path: PathBuf) -> ImageHash {
    std::thread::spawn(move || {
        let err = |e| ApplyError::HostFile(path.clone(), e);
        let file = File::open(&path).map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        let sha256 = rayos_base::hash::sha256_reader(file).map_err(err)?.hex;
        Ok((size, sha256))
    })
}

fn write_manifest(
    plan: &Plan,
    opts: &ApplyOptions,
    hash: ImageHash,
    system_fat: Option<FatImage>,
) -> Result<Manifest, ApplyError> {
    let (image_path, image_dest) = system_image(plan)?;
    let (size, sha256) = hash.join().map_err(|_| {
        ApplyError::HostFile(
            image_path.clone(),
            std::io::Error::other("hashing thread panicked"),
        )
    })??;
    let manifest = Manifest {
        schema: crate::manifest::MANIFEST_SCHEMA_VERSION,
        rayos_version: plan.rayos_version.clone(),
        install_id: plan.machine.install_id,
        installed_at: now_rfc3339(),
        mode: plan.mode,
        sector_size: plan.sector_size,
        partitions: plan
            .partitions
            .iter()
            .filter(|p| p.action != Action::Delete)
            .filter_map(|p| {
                p.role.map(|role| ManifestPartition {
                    role,
                    number: p.number,
                    type_guid: p.type_guid,
                    unique_guid: p.unique_guid,
                    first_lba: p.first_lba,
                    last_lba: p.last_lba,
                })
            })
            .collect(),
        system_image: ManifestImage {
            path: image_dest,
            size,
            sha256,
        },
    };
    // Everything else must be on the disk before the manifest says so.
    sync_target(&plan.target)?;
    let tool = |source| ApplyError::Tool {
        step: "manifest".into(),
        source,
    };
    let bytes = manifest.to_json();
    match system_fat {
        // `system-files` made the manifest's directory in this copy. The
        // system partition is always one this install formatted (the
        // planner gives the role only to partitions it creates or
        // formats) and `system-files` does not write the manifest, so the
        // manifest is a new file: the UKI's clusters need no comparing.
        Some(mut image) => change_fat(
            plan,
            Role::System,
            "manifest",
            &mut image,
            Written::NewPathsOnly,
            |v| {
                v.put_bytes_in_existing_dir(bytes.as_bytes(), MANIFEST_PATH)
                    .map_err(tool)
            },
        )?,
        None => {
            let mut image = open_checked(plan, Role::System, "manifest", opts)?;
            change_fat(
                plan,
                Role::System,
                "manifest",
                &mut image,
                Written::Anything,
                |v| v.put_bytes(bytes.as_bytes(), MANIFEST_PATH).map_err(tool),
            )?
        }
    }
    sync_target(&plan.target)?;
    Ok(manifest)
}
