//! Finding disks and building their [`Disk`] reports: block devices from
//! sysfs (`/sys/block`), image files given by path, and the host's usage
//! state (`/proc/self/mountinfo`, `/proc/swaps`, sysfs `holders/`, loop
//! devices' `backing_file`).
//!
//! Behaviour: disks are opened read-only and only read. A disk that cannot
//! be read (no permission, no medium) is still listed, with
//! [`Table::Unreadable`]. Listed: every `/sys/block` entry except ram, zram,
//! device-mapper and md devices, loop devices without a backing file, and
//! devices of size 0 (empty card readers, CD drives without a disc).
//!
//! Limits: the sysfs and procfs roots are injectable ([`Host`]) so tests can
//! use a fake tree whose "device nodes" are image files; nothing here needs
//! root except reading real block devices.

use std::fs::{self, File};
use std::io::{self, Read, Seek};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rayos_base::error::chain;

use crate::gpt::{self, DEFAULT_ALIGNMENT, TableState};
use crate::probe::{self, ProbeError};
use crate::report::{self, Disk, DiskKind, FreeSpace, PartitionReport, Table, Usage, UsageReason};

/// Errors of enumerating and probing disks.
#[derive(Debug, thiserror::Error)]
pub enum EnumerateError {
    /// The path does not exist.
    #[error("{0}: no such file or device")]
    NotFound(PathBuf),
    /// The device or file could not be opened.
    #[error("opening {path} failed")]
    Open {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A sysfs or procfs file could not be read.
    #[error("reading {path} failed")]
    ReadHost {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The disk's partition table could not be read.
    #[error("reading the partition table of {path} failed")]
    ReadTable {
        /// The disk.
        path: PathBuf,
        /// The error.
        #[source]
        source: gpt::GptError,
    },
    /// A partition's filesystem could not be probed.
    #[error("probing a filesystem on {path} failed")]
    Probe {
        /// The disk.
        path: PathBuf,
        /// The error.
        #[source]
        source: ProbeError,
    },
    /// The path is a partition, not a whole disk.
    #[error("{path} is a partition, not a whole disk: give the disk it belongs to")]
    IsPartition {
        /// The partition.
        path: PathBuf,
    },
    /// The path is neither a block device nor a regular file.
    #[error("{path} is neither a block device nor a regular file")]
    NotADisk {
        /// The path.
        path: PathBuf,
    },
    /// A sector size RayOS does not handle; holds it.
    #[error("unsupported sector size {0}: use 512 or 4096")]
    SectorSize(u32),
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MountEntry {
    /// The device's major number.
    pub major: u32,
    /// The device's minor number.
    pub minor: u32,
    /// Root of the mount within its filesystem.
    pub root: String,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The filesystem type (`ext4`, `vfat`, …).
    pub fs_type: String,
    /// Mount source (`/dev/sda1`, `overlay`, ...).
    pub source: String,
}

/// The host's view of which devices are busy.
#[derive(Debug, Clone, Default)]
pub struct HostUsage {
    /// Every mount, from `/proc/self/mountinfo`.
    pub mounts: Vec<MountEntry>,
    /// Active swap devices and files, from `/proc/swaps`.
    pub swaps: Vec<PathBuf>,
}

/// Where to look for sysfs, device nodes and procfs files. [`Host::real`] is
/// the running system; tests point it at a fake tree.
#[derive(Debug, Clone)]
pub struct Host {
    /// `/sys/block`
    pub sys_block: PathBuf,
    /// `/dev`
    pub dev_dir: PathBuf,
    /// `/proc/self/mountinfo`
    pub mountinfo: PathBuf,
    /// `/proc/swaps`
    pub swaps: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Host::real()
    }
}

/// Every disk of the running system (see the module docs for what is left out).
pub fn list_block_devices() -> Result<Vec<Disk>, EnumerateError> {
    Host::real().list_block_devices()
}

/// Report on a plain image file. The sector size is `sector_size` if given,
/// else the one the GPT header is found at (LBA 1 at 512 or at 4096), else 512.
pub fn probe_image(path: &Path, sector_size: Option<u32>) -> Result<Disk, EnumerateError> {
    Host::real().probe_image(path, sector_size)
}

/// Report on a path: a whole-disk block device or an image file.
pub fn probe_path(path: &Path, sector_size: Option<u32>) -> Result<Disk, EnumerateError> {
    Host::real().probe_path(path, sector_size)
}

/// Mounts and swaps of the running system.
pub fn host_usage() -> Result<HostUsage, EnumerateError> {
    Host::real().usage()
}

/// Parse `/proc/self/mountinfo` text. Malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let _id = f.next()?;
            let _parent = f.next()?;
            let (maj, min) = f.next()?.split_once(':')?;
            let root = unescape(f.next()?);
            let mount_point = PathBuf::from(unescape(f.next()?));
            // Optional fields end at a lone "-".
            let mut f = f.skip_while(|x| *x != "-");
            f.next()?;
            let fs_type = f.next()?.to_string();
            let source = unescape(f.next()?);
            Some(MountEntry {
                major: maj.parse().ok()?,
                minor: min.parse().ok()?,
                root,
                mount_point,
                fs_type,
                source,
            })
        })
        .collect()
}

/// Parse `/proc/swaps` text (header line first).
pub fn parse_swaps(text: &str) -> Vec<PathBuf> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(|p| PathBuf::from(unescape(p)))
        .collect()
}

/// Undo the octal escapes (`\040` for a space) of mountinfo and swaps.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_trim(path: &Path) -> Option<String> {
    let s = fs::read_to_string(path).ok()?;
    let s = s.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn read_u64(path: &Path) -> Option<u64> {
    read_trim(path)?.parse().ok()
}

fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// A partition's sysfs facts: kernel name, number, major:minor.
type SysPart = (String, u32, Option<(u32, u32)>);

/// A block device's own sysfs facts.
struct SysDisk {
    name: String,
    dir: PathBuf,
    parts: Vec<SysPart>,
}

impl Host {
    /// The running system's `/sys`, `/dev` and `/proc`.
    pub fn real() -> Host {
        Host {
            sys_block: "/sys/block".into(),
            dev_dir: "/dev".into(),
            mountinfo: "/proc/self/mountinfo".into(),
            swaps: "/proc/swaps".into(),
        }
    }

    /// Mounts and swaps (a missing `/proc/swaps` counts as no swap).
    pub fn usage(&self) -> Result<HostUsage, EnumerateError> {
        let mounts =
            fs::read_to_string(&self.mountinfo).map_err(|source| EnumerateError::ReadHost {
                path: self.mountinfo.clone(),
                source,
            })?;
        let swaps = fs::read_to_string(&self.swaps).unwrap_or_default();
        Ok(HostUsage {
            mounts: parse_mountinfo(&mounts),
            swaps: parse_swaps(&swaps),
        })
    }

    /// Every disk under `sys_block` (see the module docs for what is left out).
    pub fn list_block_devices(&self) -> Result<Vec<Disk>, EnumerateError> {
        let usage = self.usage()?;
        let entries = fs::read_dir(&self.sys_block).map_err(|source| EnumerateError::ReadHost {
            path: self.sys_block.clone(),
            source,
        })?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut out = Vec::new();
        for name in names {
            let dir = self.sys_block.join(&name);
            if ["ram", "zram", "dm-", "md"]
                .iter()
                .any(|p| name.starts_with(p))
            {
                continue;
            }
            if name.starts_with("loop") && !dir.join("loop/backing_file").exists() {
                continue;
            }
            if read_u64(&dir.join("size")).unwrap_or(0) == 0 {
                continue;
            }
            // One unreadable disk must not hide the others.
            match self.block_disk(&name, None, &usage) {
                Ok(d) => out.push(d),
                Err(e) => {
                    let mut d = unreadable(self.dev_dir.join(&name), &dir, chain(&e));
                    d.in_use = self.kernel_usage(&self.sys_disk(&name), &usage);
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Report on a whole-disk block device or an image file.
    pub fn probe_path(
        &self,
        path: &Path,
        sector_size: Option<u32>,
    ) -> Result<Disk, EnumerateError> {
        let meta = fs::metadata(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => EnumerateError::NotFound(path.to_path_buf()),
            _ => EnumerateError::Open {
                path: path.to_path_buf(),
                source,
            },
        })?;
        if meta.file_type().is_block_device() {
            let rdev = meta.rdev();
            let (maj, min) = (libc_major(rdev), libc_minor(rdev));
            let Some(name) = self.find_sys_name(maj, min) else {
                // Partitions live under their disk in sysfs; /sys/dev/block
                // maps any major:minor to its directory.
                let by_dev = self
                    .sys_block
                    .with_file_name("dev")
                    .join("block")
                    .join(format!("{maj}:{min}"));
                if by_dev.join("partition").exists() {
                    return Err(EnumerateError::IsPartition {
                        path: path.to_path_buf(),
                    });
                }
                return Err(EnumerateError::NotADisk {
                    path: path.to_path_buf(),
                });
            };
            let usage = self.usage()?;
            self.block_disk(&name, Some((path, sector_size)), &usage)
        } else if meta.is_file() {
            self.probe_image(path, sector_size)
        } else {
            Err(EnumerateError::NotADisk {
                path: path.to_path_buf(),
            })
        }
    }

    /// Report on an image file (see [`probe_image`]).
    pub fn probe_image(
        &self,
        path: &Path,
        sector_size: Option<u32>,
    ) -> Result<Disk, EnumerateError> {
        if let Some(ss) = sector_size {
            if !matches!(ss, 512 | 1024 | 2048 | 4096) {
                return Err(EnumerateError::SectorSize(ss));
            }
        }
        let open_err = |source: io::Error| match source.kind() {
            io::ErrorKind::NotFound => EnumerateError::NotFound(path.to_path_buf()),
            _ => EnumerateError::Open {
                path: path.to_path_buf(),
                source,
            },
        };
        let meta = fs::metadata(path).map_err(open_err)?;
        let mut f = File::open(path).map_err(open_err)?;
        let ss = match sector_size {
            Some(s) => s,
            None => gpt::detect_sector_size(&mut f)
                .map_err(|source| EnumerateError::ReadHost {
                    path: path.to_path_buf(),
                    source,
                })?
                .unwrap_or(512),
        };
        let mut disk = build_report(&mut f, path, ss)?;
        disk.kind = DiskKind::ImageFile;
        disk.read_only = meta.permissions().readonly();
        disk.in_use = self.image_usage(path);
        Ok(disk)
    }

    /// Image files attached to a loop device are in use.
    fn image_usage(&self, path: &Path) -> Vec<Usage> {
        let Ok(canon) = fs::canonicalize(path) else {
            return Vec::new();
        };
        let Ok(entries) = fs::read_dir(&self.sys_block) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                continue;
            }
            let Some(backing) = read_trim(&e.path().join("loop/backing_file")) else {
                continue;
            };
            if Path::new(&backing) == canon {
                out.push(Usage {
                    device: path.to_path_buf(),
                    reason: UsageReason::LoopBacking {
                        loop_device: self.dev_dir.join(&name),
                    },
                });
            }
        }
        out
    }

    /// Usage of a disk and of every partition the kernel has for it.
    fn kernel_usage(&self, sys: &SysDisk, usage: &HostUsage) -> Vec<Usage> {
        let mut out = device_usage(
            &self.dev_dir.join(&sys.name),
            read_trim(&sys.dir.join("dev")).and_then(|d| parse_dev(&d)),
            &sys.dir.join("holders"),
            usage,
        );
        let mut parts: Vec<&SysPart> = sys.parts.iter().collect();
        parts.sort_by_key(|(_, n, _)| *n);
        for (pname, _, dev) in parts {
            out.extend(device_usage(
                &self.dev_dir.join(pname),
                *dev,
                &sys.dir.join(pname).join("holders"),
                usage,
            ));
        }
        out
    }

    fn find_sys_name(&self, maj: u32, min: u32) -> Option<String> {
        let entries = fs::read_dir(&self.sys_block).ok()?;
        for e in entries.filter_map(|e| e.ok()) {
            let dir = e.path();
            if read_trim(&dir.join("dev")).and_then(|d| parse_dev(&d)) == Some((maj, min)) {
                return Some(e.file_name().to_string_lossy().into_owned());
            }
        }
        None
    }

    fn sys_disk(&self, name: &str) -> SysDisk {
        let dir = self.sys_block.join(name);
        let mut parts = Vec::new();
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.filter_map(|e| e.ok()) {
                let p = e.path();
                if let Some(n) = read_u64(&p.join("partition")) {
                    let dev = read_trim(&p.join("dev")).and_then(|d| parse_dev(&d));
                    parts.push((e.file_name().to_string_lossy().into_owned(), n as u32, dev));
                }
            }
        }
        SysDisk {
            name: name.to_string(),
            dir,
            parts,
        }
    }

    /// Build the report of block device `name`. `given` is the path the user
    /// named it by (kept as the report's path) and a sector size override.
    fn block_disk(
        &self,
        name: &str,
        given: Option<(&Path, Option<u32>)>,
        usage: &HostUsage,
    ) -> Result<Disk, EnumerateError> {
        let sys = self.sys_disk(name);
        if sys.dir.join("partition").exists() {
            return Err(EnumerateError::IsPartition {
                path: given
                    .map(|g| g.0.to_path_buf())
                    .unwrap_or_else(|| self.dev_dir.join(name)),
            });
        }
        let path = given
            .map(|g| g.0.to_path_buf())
            .unwrap_or_else(|| self.dev_dir.join(name));
        let ss = given
            .and_then(|g| g.1)
            .or_else(|| read_u64(&sys.dir.join("queue/logical_block_size")).map(|v| v as u32))
            .unwrap_or(512);
        let size_bytes = read_u64(&sys.dir.join("size")).unwrap_or(0) * 512;
        let model = read_trim(&sys.dir.join("device/model"));
        let serial = read_trim(&sys.dir.join("device/serial"))
            .or_else(|| read_trim(&sys.dir.join("serial")))
            .or_else(|| vpd_serial(&sys.dir.join("device/vpd_pg80")))
            .or_else(|| read_trim(&sys.dir.join("device/wwid")));
        let removable = read_trim(&sys.dir.join("removable")).as_deref() == Some("1");
        let ro = read_trim(&sys.dir.join("ro")).as_deref() == Some("1");

        let mut disk = match File::open(&path) {
            Ok(mut f) => build_report(&mut f, &path, ss)?,
            Err(e) => unreadable(
                path.clone(),
                &sys.dir,
                format!("opening {} failed: {e}", path.display()),
            ),
        };
        disk.kind = DiskKind::BlockDevice;
        disk.model = model;
        disk.serial = serial;
        disk.size_bytes = size_bytes;
        disk.removable = removable;
        disk.read_only = ro;

        let disk_dev = read_trim(&sys.dir.join("dev")).and_then(|d| parse_dev(&d));
        let mut in_use = device_usage(
            &self.dev_dir.join(&sys.name),
            disk_dev,
            &sys.dir.join("holders"),
            usage,
        );
        for p in &mut disk.partitions {
            let found = sys.parts.iter().find(|(_, n, _)| *n == p.number);
            let pname = match found {
                Some((n, _, _)) => n.clone(),
                None => partition_node_name(&sys.name, p.number),
            };
            let node = self.dev_dir.join(&pname);
            p.in_use = device_usage(
                &node,
                found.and_then(|f| f.2),
                &sys.dir.join(&pname).join("holders"),
                usage,
            );
            in_use.extend(p.in_use.iter().cloned());
            p.device = Some(node);
        }
        // Partitions the kernel knows but our table reading does not (a
        // corrupt or foreign table, or one changed since the kernel read
        // it) can still be busy; the disk must then count as in use.
        let mut unknown: Vec<&SysPart> = sys
            .parts
            .iter()
            .filter(|(_, n, _)| disk.partition(*n).is_none())
            .collect();
        unknown.sort_by_key(|(_, n, _)| *n);
        for (pname, _, dev) in unknown {
            in_use.extend(device_usage(
                &self.dev_dir.join(pname),
                *dev,
                &sys.dir.join(pname).join("holders"),
                usage,
            ));
        }
        disk.in_use = in_use;
        Ok(disk)
    }
}

/// The report of a block device that could not be read.
fn unreadable(path: PathBuf, sys_dir: &Path, reason: String) -> Disk {
    Disk {
        path,
        kind: DiskKind::BlockDevice,
        model: read_trim(&sys_dir.join("device/model")),
        serial: None,
        size_bytes: read_u64(&sys_dir.join("size")).unwrap_or(0) * 512,
        logical_sector_size: read_u64(&sys_dir.join("queue/logical_block_size"))
            .map(|v| v as u32)
            .unwrap_or(512),
        removable: read_trim(&sys_dir.join("removable")).as_deref() == Some("1"),
        read_only: read_trim(&sys_dir.join("ro")).as_deref() == Some("1"),
        table: Table::Unreadable { reason },
        hybrid_mbr: Vec::new(),
        disk_guid: None,
        whole_disk_filesystem: None,
        partitions: Vec::new(),
        free_regions: Vec::new(),
        in_use: Vec::new(),
        rayos: None,
        systems: Vec::new(),
    }
}

/// Kernel naming of partition nodes: `sda1`, but `nvme0n1p1` and `mmcblk0p1`
/// when the disk name ends in a digit.
pub fn partition_node_name(disk: &str, number: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{number}")
    } else {
        format!("{disk}{number}")
    }
}

/// SCSI VPD page 0x80: 4-byte header, then the serial in ASCII.
fn vpd_serial(path: &Path) -> Option<String> {
    let b = fs::read(path).ok()?;
    if b.len() <= 4 {
        return None;
    }
    let s = String::from_utf8_lossy(&b[4..]).trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Usage of one device node: mounts (by major:minor or by source path),
/// swap, and holders.
fn device_usage(
    node: &Path,
    dev: Option<(u32, u32)>,
    holders: &Path,
    usage: &HostUsage,
) -> Vec<Usage> {
    let mut out = Vec::new();
    let canon = fs::canonicalize(node).unwrap_or_else(|_| node.to_path_buf());
    let same = |s: &Path| s == node || s == canon || fs::canonicalize(s).is_ok_and(|c| c == canon);
    for m in &usage.mounts {
        let by_dev = dev == Some((m.major, m.minor));
        if by_dev || (m.source.starts_with('/') && same(Path::new(&m.source))) {
            out.push(Usage {
                device: node.to_path_buf(),
                reason: UsageReason::Mounted {
                    mount_point: m.mount_point.clone(),
                    fs_type: m.fs_type.clone(),
                },
            });
        }
    }
    if usage.swaps.iter().any(|s| same(s)) {
        out.push(Usage {
            device: node.to_path_buf(),
            reason: UsageReason::Swap,
        });
    }
    if let Ok(entries) = fs::read_dir(holders) {
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for holder in names {
            out.push(Usage {
                device: node.to_path_buf(),
                reason: UsageReason::Holder { holder },
            });
        }
    }
    out
}

/// Read table, partitions, filesystems, free space and classification of
/// `dev`; host facts (model, usage, kind) are filled in by the caller.
pub fn build_report<D: Read + Seek>(
    dev: &mut D,
    path: &Path,
    sector_size: u32,
) -> Result<Disk, EnumerateError> {
    let table_err = |source| EnumerateError::ReadTable {
        path: path.to_path_buf(),
        source,
    };
    let probe_err = |source| EnumerateError::Probe {
        path: path.to_path_buf(),
        source,
    };
    let size_bytes = gpt::device_size(dev).map_err(|source| EnumerateError::ReadHost {
        path: path.to_path_buf(),
        source,
    })?;
    let state = gpt::inspect(dev, sector_size).map_err(table_err)?;
    let hybrid_mbr = match &state {
        TableState::Gpt(g) => g.hybrid_mbr().map(<[_]>::to_vec).unwrap_or_default(),
        _ => Vec::new(),
    };
    let (table, disk_guid, mut partitions, free_regions): (
        Table,
        _,
        Vec<PartitionReport>,
        Vec<FreeSpace>,
    ) = match &state {
        TableState::Gpt(g) => (
            Table::Gpt,
            Some(g.disk_guid()),
            report::gpt_partitions(g),
            g.free_regions(DEFAULT_ALIGNMENT)
                .into_iter()
                .map(|r| FreeSpace::of(r, sector_size))
                .collect(),
        ),
        TableState::Mbr(m) => (
            Table::Mbr,
            None,
            report::mbr_partitions(m, sector_size),
            Vec::new(),
        ),
        TableState::Blank => (Table::None, None, Vec::new(), Vec::new()),
        TableState::Corrupt(c) => (report::corrupt_table(c), None, Vec::new(), Vec::new()),
    };
    for p in &mut partitions {
        if let Some(fs) = probe::probe(dev, p.start_bytes, p.size_bytes).map_err(probe_err)? {
            p.filesystem = Some(fs.filesystem);
            p.fs_label = fs.label;
            p.fs_uuid = fs.uuid;
        }
    }
    let whole = probe::probe(dev, 0, size_bytes).map_err(probe_err)?;
    let (table, partitions) = match (&table, &whole) {
        // A boot sector's bytes can pass for an MBR; a filesystem at byte 0
        // means there is no partition table.
        (Table::Mbr, Some(fs)) if matches!(fs.filesystem, f if f.is_fat() || f == crate::probe::Filesystem::Ntfs || f == crate::probe::Filesystem::Exfat) => {
            (Table::None, Vec::new())
        }
        _ => (table, partitions),
    };
    let rayos = report::find_rayos(&partitions);
    let systems = report::find_systems(&partitions);
    Ok(Disk {
        path: path.to_path_buf(),
        kind: DiskKind::ImageFile,
        model: None,
        serial: None,
        size_bytes,
        logical_sector_size: sector_size,
        removable: false,
        read_only: false,
        table,
        hybrid_mbr,
        disk_guid,
        whole_disk_filesystem: whole,
        partitions,
        free_regions,
        in_use: Vec::new(),
        rayos,
        systems,
    })
}

// glibc's gnu_dev_major/minor, without a libc dependency.
fn libc_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32
}

fn libc_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32
}

#[cfg(test)]
mod tests {
    //! A fake sysfs/procfs tree whose "device nodes" are image files: the
    //! enumeration logic runs unchanged, without root or real disks.
    use std::fs;
    use std::path::Path;

    use super::*;
    use crate::gpt::{Gpt, Partition};
    use crate::types;

    const MIB: u64 = 1 << 20;

    fn put(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn image(path: &Path, bytes: u64, ss: u32, parts: &[(u32, uuid::Uuid, u64, u64, &str)]) {
        let f = File::create(path).unwrap();
        f.set_len(bytes).unwrap();
        let mut g = Gpt::new(bytes, ss).unwrap();
        let per_mib = MIB / ss as u64;
        for &(n, t, from_mib, to_mib, name) in parts {
            g.add(Partition::new(
                n,
                t,
                from_mib * per_mib,
                to_mib * per_mib - 1,
                name,
            ))
            .unwrap();
        }
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        g.write(&mut f).unwrap();
    }

    struct Fake {
        _dir: tempfile::TempDir,
        host: Host,
    }

    fn fake() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let sys = root.join("sys/block");
        let dev = root.join("dev");
        fs::create_dir_all(&dev).unwrap();

        // vdb: 512-byte sectors, ESP mounted, data partition held by dm-0,
        // a swap partition in use.
        image(
            &dev.join("vdb"),
            64 * MIB,
            512,
            &[
                (1, types::ESP, 1, 9, "EFI"),
                (2, types::RAYOS_DATA, 9, 30, "rayos-data"),
                (3, types::LINUX_SWAP, 40, 50, "swap"),
            ],
        );
        let b = sys.join("vdb");
        put(&b.join("size"), &(64 * MIB / 512).to_string());
        put(&b.join("dev"), "254:16\n");
        put(&b.join("queue/logical_block_size"), "512\n");
        put(&b.join("removable"), "0\n");
        put(&b.join("ro"), "0\n");
        put(&b.join("device/model"), "QEMU HARDDISK   \n");
        put(&b.join("device/serial"), "SER-123\n");
        fs::create_dir_all(b.join("holders")).unwrap();
        for (n, holder) in [(1, None), (2, Some("dm-0")), (3, None)] {
            let p = b.join(format!("vdb{n}"));
            put(&p.join("partition"), &format!("{n}\n"));
            put(&p.join("dev"), &format!("254:{}\n", 16 + n));
            fs::create_dir_all(p.join("holders")).unwrap();
            if let Some(h) = holder {
                fs::create_dir_all(p.join("holders").join(h)).unwrap();
            }
        }

        // nvme0n1: 4096-byte sectors, removable and read-only, idle. No
        // sysfs partition dirs: node names come from the naming rule.
        image(
            &dev.join("nvme0n1"),
            64 * MIB,
            4096,
            &[(1, types::MS_BASIC_DATA, 1, 20, "data")],
        );
        let n = sys.join("nvme0n1");
        put(&n.join("size"), &(64 * MIB / 512).to_string());
        put(&n.join("dev"), "259:0\n");
        put(&n.join("queue/logical_block_size"), "4096\n");
        put(&n.join("removable"), "1\n");
        put(&n.join("ro"), "1\n");
        put(&n.join("device/model"), "Fake NVMe\n");
        put(&n.join("device/wwid"), "eui.0011223344\n");

        // Left out: loop without backing file, ram, zram, dm, empty drive.
        put(&sys.join("loop0/size"), "0\n");
        put(&sys.join("ram0/size"), "8192\n");
        put(&sys.join("zram0/size"), "8192\n");
        put(&sys.join("dm-0/size"), "8192\n");
        put(&sys.join("sr0/size"), "0\n");
        // A loop device backed by an image file is listed (its node is
        // missing here, so it is listed as unreadable).
        put(&sys.join("loop1/size"), "8192\n");
        put(
            &sys.join("loop1/loop/backing_file"),
            "/somewhere/backing.img\n",
        );

        let mountinfo = root.join("mountinfo");
        put(
            &mountinfo,
            "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
             30 27 254:17 / /boot/efi rw,relatime shared:5 - vfat /dev/vdb1 rw\n\
             31 27 0:40 / /mnt/with\\040space rw - tmpfs tmpfs rw\n",
        );
        let swaps = root.join("swaps");
        put(
            &swaps,
            &format!(
                "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n{}\tpartition\t1024\t0\t-2\n",
                dev.join("vdb3").display()
            ),
        );
        Fake {
            host: Host {
                sys_block: sys,
                dev_dir: dev,
                mountinfo,
                swaps,
            },
            _dir: dir,
        }
    }

    #[test]
    fn lists_real_disks_and_leaves_out_virtual_ones() {
        let f = fake();
        let disks = f.host.list_block_devices().unwrap();
        let names: Vec<String> = disks
            .iter()
            .map(|d| d.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["loop1", "nvme0n1", "vdb"]);
        assert!(matches!(disks[0].table, Table::Unreadable { .. }));
    }

    #[test]
    fn block_disk_facts_and_usage() {
        let f = fake();
        let disks = f.host.list_block_devices().unwrap();
        let vdb = disks.iter().find(|d| d.path.ends_with("vdb")).unwrap();
        assert_eq!(vdb.kind, DiskKind::BlockDevice);
        assert_eq!(vdb.model.as_deref(), Some("QEMU HARDDISK"));
        assert_eq!(vdb.serial.as_deref(), Some("SER-123"));
        assert_eq!(vdb.size_bytes, 64 * MIB);
        assert_eq!(vdb.logical_sector_size, 512);
        assert!(!vdb.removable && !vdb.read_only);
        assert_eq!(vdb.table, Table::Gpt);
        assert_eq!(vdb.partitions.len(), 3);
        let dev = &f.host.dev_dir;
        assert_eq!(
            vdb.partitions[0].device.as_deref(),
            Some(dev.join("vdb1").as_path())
        );
        assert_eq!(
            vdb.partitions[0].in_use,
            vec![Usage {
                device: dev.join("vdb1"),
                reason: UsageReason::Mounted {
                    mount_point: "/boot/efi".into(),
                    fs_type: "vfat".into()
                }
            }]
        );
        assert_eq!(
            vdb.partitions[1].in_use[0].reason,
            UsageReason::Holder {
                holder: "dm-0".into()
            }
        );
        assert_eq!(vdb.partitions[2].in_use[0].reason, UsageReason::Swap);
        assert_eq!(vdb.in_use.len(), 3);
        assert!(vdb.is_in_use());
        // Free: 30..40 MiB and 50 MiB..end.
        let free: Vec<(u64, u64)> = vdb
            .free_regions
            .iter()
            .map(|r| (r.start_bytes / MIB, r.size_bytes))
            .collect();
        assert_eq!(free[0], (30, 10 * MIB));
        assert_eq!(free[1].0, 50);
        // Data partition typed RayOS data: a RayOS install is reported.
        let r = vdb.rayos.as_ref().unwrap();
        assert_eq!((r.data, r.system, r.esp), (Some(2), None, Some(1)));
    }

    #[test]
    fn busy_kernel_partitions_count_even_when_the_table_is_unreadable() {
        let f = fake();
        // Wipe vdb's GPT: the kernel still has vdb1 mounted.
        let img = f.host.dev_dir.join("vdb");
        let mut bytes = fs::read(&img).unwrap();
        bytes[..64 * 1024].fill(0);
        let len = bytes.len();
        bytes[len - 64 * 1024..].fill(0);
        fs::write(&img, &bytes).unwrap();
        let disks = f.host.list_block_devices().unwrap();
        let vdb = disks.iter().find(|d| d.path.ends_with("vdb")).unwrap();
        assert_eq!(vdb.table, Table::None);
        assert!(vdb.partitions.is_empty());
        let reasons: Vec<&UsageReason> = vdb.in_use.iter().map(|u| &u.reason).collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(matches!(reasons[0], UsageReason::Mounted { .. }));
        assert!(vdb.is_in_use());
    }

    #[test]
    fn sector_size_and_node_names_of_an_nvme_disk() {
        let f = fake();
        let disks = f.host.list_block_devices().unwrap();
        let nv = disks.iter().find(|d| d.path.ends_with("nvme0n1")).unwrap();
        assert_eq!(nv.logical_sector_size, 4096);
        assert_eq!(nv.table, Table::Gpt);
        assert!(nv.removable && nv.read_only);
        assert_eq!(nv.serial.as_deref(), Some("eui.0011223344"));
        assert_eq!(nv.partitions[0].first_lba, 256);
        assert_eq!(nv.partitions[0].start_bytes, MIB);
        assert_eq!(
            nv.partitions[0].device.as_deref(),
            Some(f.host.dev_dir.join("nvme0n1p1").as_path())
        );
        assert!(!nv.is_in_use());
    }

    #[test]
    fn image_files_detect_their_sector_size_and_loop_use() {
        let f = fake();
        let img = f.host.dev_dir.join("nvme0n1");
        let d = f.host.probe_image(&img, None).unwrap();
        assert_eq!(d.kind, DiskKind::ImageFile);
        assert_eq!(d.logical_sector_size, 4096);
        assert_eq!(d.table, Table::Gpt);
        // Forced to 512, the 4096-byte table is reported, not guessed at.
        let d = f.host.probe_image(&img, Some(512)).unwrap();
        assert!(matches!(d.table, Table::Corrupt { .. }), "{:?}", d.table);
        assert!(d.partitions.is_empty());
        // Attached to a loop device: in use.
        let canon = fs::canonicalize(&img).unwrap();
        put(
            &f.host.sys_block.join("loop1/loop/backing_file"),
            &format!("{}\n", canon.display()),
        );
        let d = f.host.probe_image(&img, None).unwrap();
        assert_eq!(
            d.in_use[0].reason,
            UsageReason::LoopBacking {
                loop_device: f.host.dev_dir.join("loop1")
            }
        );
        // A blank file is "no table", sector size 512.
        let blank = f.host.dev_dir.join("blank.img");
        File::create(&blank).unwrap().set_len(8 * MIB).unwrap();
        let d = f.host.probe_image(&blank, None).unwrap();
        assert_eq!((d.table.clone(), d.logical_sector_size), (Table::None, 512));
        assert!(d.free_regions.is_empty() && d.rayos.is_none());
    }

    #[test]
    fn bad_paths_are_named() {
        let f = fake();
        let missing = f.host.dev_dir.join("nope");
        assert!(
            matches!(f.host.probe_path(&missing, None), Err(EnumerateError::NotFound(p)) if p == missing)
        );
        assert!(matches!(
            f.host.probe_path(&f.host.dev_dir, None),
            Err(EnumerateError::NotADisk { .. })
        ));
        assert!(matches!(
            f.host.probe_image(&f.host.dev_dir.join("vdb"), Some(1000)),
            Err(EnumerateError::SectorSize(1000))
        ));
    }

    #[test]
    fn mountinfo_and_swaps_parsing() {
        let m = parse_mountinfo(
            "36 35 98:0 /mnt1 /mnt/parent\\040dir rw,noatime master:1 shared:2 - ext3 /dev/root rw,errors=continue\n\
             garbage line\n\
             37 35 8:1 / / rw - ext4 /dev/sda1 rw\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].major, 98);
        assert_eq!(m[0].root, "/mnt1");
        assert_eq!(m[0].mount_point, Path::new("/mnt/parent dir"));
        assert_eq!(m[0].fs_type, "ext3");
        assert_eq!(m[0].source, "/dev/root");
        assert_eq!((m[1].major, m[1].minor), (8, 1));
        let s = parse_swaps(
            "Filename Type Size Used Priority\n/dev/sda2 partition 1 0 -2\n/swap\\040file file 1 0 -3\n",
        );
        assert_eq!(
            s,
            vec![PathBuf::from("/dev/sda2"), PathBuf::from("/swap file")]
        );
        assert_eq!(partition_node_name("sda", 3), "sda3");
        assert_eq!(partition_node_name("mmcblk0", 1), "mmcblk0p1");
    }
}
