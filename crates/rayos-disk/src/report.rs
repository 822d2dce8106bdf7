//! The [`Disk`] report: everything `rayos disks`, the installer and the
//! wizard need to know about one disk, built from its partition table, the
//! filesystems probed in each partition and the host's mount/swap/holder
//! state. Serialisable: it is the `--json` output of `rayos disks`.
//!
//! Classification rules (ARCHITECTURE.md §2):
//! - RayOS install: an XBOOTLDR partition labelled `rayos-system` (GPT name
//!   or FAT label), a RayOS-data-typed partition (or one labelled
//!   `rayos-data`), and RayOS VM storage partitions. Either system or data
//!   suffices to say "a RayOS install is here"; the install manifest on the
//!   system partition is the installer's business.
//! - Windows: Microsoft basic data holding NTFS or BitLocker, Microsoft
//!   reserved, Windows recovery.
//! - Linux: Linux-typed partitions, or any partition holding ext2/3/4, btrfs,
//!   XFS, LUKS, LVM or swap.
//! - ESP: reported as a system of its own (its contents are probed by the
//!   installer, which mounts nothing here).

use std::path::PathBuf;

use serde::Serialize;
use uuid::Uuid;

use crate::gpt::{Corruption, FreeRegion, Gpt, Mbr, MbrPartition, Partition as GptPartition};
use crate::probe::{Filesystem, FsInfo};
use crate::types::{self, TypeFamily};

/// Label of the RayOS system (XBOOTLDR) partition.
pub const LABEL_SYSTEM: &str = "rayos-system";
/// Label of the RayOS data partition.
pub const LABEL_DATA: &str = "rayos-data";
/// Labels of the optional RayOS VM storage partitions.
pub const LABEL_VM_LINUX: &str = "rayos-vm-linux";
/// Label of the Windows VM's storage partition.
pub const LABEL_VM_WINDOWS: &str = "rayos-vm-windows";

/// A disk and what it holds.
#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    /// `/dev/sda`, or the image file as given.
    pub path: PathBuf,
    /// A block device or an image file.
    pub kind: DiskKind,
    /// The device's model, from sysfs (block devices).
    pub model: Option<String>,
    /// The device's serial number, from sysfs (block devices).
    pub serial: Option<String>,
    /// The disk's size in bytes.
    pub size_bytes: u64,
    /// The logical sector size in bytes (512 or 4096).
    pub logical_sector_size: u32,
    /// Whether the kernel calls the device removable (USB sticks, card
    /// readers).
    pub removable: bool,
    /// Whether it can only be read.
    pub read_only: bool,
    /// The partition table, as found.
    pub table: Table,
    /// A GPT disk's hybrid MBR (Boot Camp, `sgdisk -h`): the entries that
    /// give a legacy BIOS its view of some partitions. Empty when LBA 0 is
    /// a plain protective MBR (or the disk is not GPT).
    pub hybrid_mbr: Vec<MbrPartition>,
    /// GPT disk GUID.
    pub disk_guid: Option<Uuid>,
    /// A filesystem written to the whole disk, without a partition table
    /// (an ISO, a "superfloppy" FAT stick).
    pub whole_disk_filesystem: Option<FsInfo>,
    /// Its partitions, by number.
    pub partitions: Vec<PartitionReport>,
    /// Unpartitioned space, start aligned to 1 MiB (GPT disks only; an MBR or
    /// corrupt disk reports none, since RayOS would not add to it).
    pub free_regions: Vec<FreeSpace>,
    /// Why the disk or any of its partitions is busy (empty: not in use).
    pub in_use: Vec<Usage>,
    /// The RayOS install on this disk, if any.
    pub rayos: Option<RayosInstall>,
    /// Other systems found (Windows, Linux, ESP).
    pub systems: Vec<SystemFound>,
}

/// What a disk is on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskKind {
    /// A block device (`/dev/sda`).
    BlockDevice,
    /// An image file.
    ImageFile,
}

/// The partition table, as found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Table {
    /// A GPT (at least one copy valid).
    Gpt,
    /// An MBR (DOS) table.
    Mbr,
    /// No table.
    None,
    /// A GPT signature, but something is wrong.
    Corrupt {
        /// What is wrong.
        reason: String,
        /// Whether the primary copy is valid.
        primary_valid: bool,
        /// Whether the backup copy is valid.
        backup_valid: bool,
    },
    /// The device could not be opened (permissions, no medium).
    Unreadable {
        /// Why it could not be read.
        reason: String,
    },
}

/// One partition, GPT or MBR.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    /// The partition's number (GPT slot, or MBR number).
    pub number: u32,
    /// The first sector.
    pub first_lba: u64,
    /// The last sector (inclusive).
    pub last_lba: u64,
    /// Where it starts, in bytes.
    pub start_bytes: u64,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// GPT type GUID (`None` on MBR disks).
    pub type_guid: Option<Uuid>,
    /// MBR type byte (`None` on GPT disks).
    pub mbr_type: Option<u8>,
    /// Human name of the type, or the GUID/byte when unknown.
    pub type_name: String,
    /// What the type means when RayOS looks for other systems.
    pub family: TypeFamily,
    /// The GPT unique GUID (`PARTUUID`; `None` on MBR disks).
    pub unique_guid: Option<Uuid>,
    /// GPT partition name (empty on MBR disks).
    pub name: String,
    /// GPT attribute bits (0 on MBR disks).
    pub attributes: u64,
    /// The filesystem found in it, if any.
    pub filesystem: Option<Filesystem>,
    /// The filesystem's label.
    pub fs_label: Option<String>,
    /// The filesystem's UUID, as `blkid` prints it.
    pub fs_uuid: Option<String>,
    /// Device node (`/dev/sda1`, `/dev/nvme0n1p1`) for block devices.
    pub device: Option<PathBuf>,
    /// Why the partition is busy (empty: not in use).
    pub in_use: Vec<Usage>,
}

impl PartitionReport {
    /// The report of GPT entry `p` on a disk with `sector_size`-byte
    /// sectors: type named and classified by [`types`], no filesystem,
    /// device or usage yet (the caller probes and fills those).
    pub fn of_gpt(p: &GptPartition, sector_size: u32) -> PartitionReport {
        PartitionReport {
            number: p.number,
            first_lba: p.first_lba,
            last_lba: p.last_lba,
            start_bytes: p.start_bytes(sector_size),
            size_bytes: p.size_bytes(sector_size),
            type_guid: Some(p.type_guid),
            mbr_type: None,
            type_name: types::type_name(&p.type_guid)
                .map(str::to_string)
                .unwrap_or_else(|| p.type_guid.to_string()),
            family: types::type_family(&p.type_guid),
            unique_guid: Some(p.unique_guid),
            name: p.name.clone(),
            attributes: p.attributes,
            filesystem: None,
            fs_label: None,
            fs_uuid: None,
            device: None,
            in_use: Vec::new(),
        }
    }

    /// GPT name or filesystem label equals `label`.
    pub fn has_label(&self, label: &str) -> bool {
        self.name == label || self.fs_label.as_deref() == Some(label)
    }
}

/// Free space on a GPT disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FreeSpace {
    /// The first sector.
    pub first_lba: u64,
    /// The last sector (inclusive).
    pub last_lba: u64,
    /// Where it starts, in bytes.
    pub start_bytes: u64,
    /// Its size in bytes.
    pub size_bytes: u64,
}

impl FreeSpace {
    /// A free run of a table with `sector_size`-byte sectors, with its
    /// bytes.
    pub fn of(r: FreeRegion, sector_size: u32) -> FreeSpace {
        FreeSpace {
            first_lba: r.first_lba,
            last_lba: r.last_lba,
            start_bytes: r.start_bytes(sector_size),
            size_bytes: r.size_bytes(sector_size),
        }
    }
}

/// Why a device is busy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// The busy device: the disk itself or one partition (or, for an image
    /// file, the loop device it is attached to).
    pub device: PathBuf,
    /// Why it is busy.
    #[serde(flatten)]
    pub reason: UsageReason,
}

/// What holds a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum UsageReason {
    /// A filesystem on it is mounted.
    Mounted {
        /// Where.
        mount_point: PathBuf,
        /// The filesystem type.
        fs_type: String,
    },
    /// It is active swap.
    Swap,
    /// Held by another kernel device (device mapper, md RAID, ...).
    Holder {
        /// The holder's name in sysfs (`dm-0`, `md0`).
        holder: String,
    },
    /// An image file attached to a loop device.
    LoopBacking {
        /// The loop device.
        loop_device: PathBuf,
    },
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.device.display();
        match &self.reason {
            UsageReason::Mounted {
                mount_point,
                fs_type,
            } => write!(f, "{d} is mounted at {} ({fs_type})", mount_point.display()),
            UsageReason::Swap => write!(f, "{d} is active swap"),
            UsageReason::Holder { holder } => write!(f, "{d} is held by {holder}"),
            UsageReason::LoopBacking { loop_device } => {
                write!(f, "{d} is attached to {}", loop_device.display())
            }
        }
    }
}

/// Partitions of a RayOS install (slot numbers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RayosInstall {
    /// The system partition's number.
    pub system: Option<u32>,
    /// The data volume's number.
    pub data: Option<u32>,
    /// The VM-storage partitions' numbers.
    pub vm_storage: Vec<u32>,
    /// The ESP on the same disk (likely the one systemd-boot is on).
    pub esp: Option<u32>,
}

/// What kind of other system a disk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SystemKind {
    /// Windows.
    Windows,
    /// Linux.
    Linux,
    /// An EFI system partition (another system's boot files, or an empty one).
    Esp,
}

/// Another system found on the disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SystemFound {
    /// What kind of system.
    pub kind: SystemKind,
    /// The partitions it uses.
    pub partitions: Vec<u32>,
    /// Why we think so ("Microsoft basic data with NTFS", ...).
    pub evidence: Vec<String>,
}

impl Disk {
    /// Anything on the disk is mounted, swapped on, held, or loop-attached.
    pub fn is_in_use(&self) -> bool {
        !self.in_use.is_empty()
    }

    /// The partition numbered `number`.
    pub fn partition(&self, number: u32) -> Option<&PartitionReport> {
        self.partitions.iter().find(|p| p.number == number)
    }

    /// Partitions that hold an ESP (by type GUID or MBR type 0xEF).
    pub fn esps(&self) -> impl Iterator<Item = &PartitionReport> {
        self.partitions
            .iter()
            .filter(|p| p.family == TypeFamily::Esp)
    }
}

/// Build the partition list of a GPT disk (no filesystem or usage yet).
pub(crate) fn gpt_partitions(gpt: &Gpt) -> Vec<PartitionReport> {
    let ss = gpt.sector_size();
    gpt.partitions()
        .iter()
        .map(|p| PartitionReport::of_gpt(p, ss))
        .collect()
}

/// Build the partition list of an MBR disk (extended containers left out:
/// they hold no filesystem).
pub(crate) fn mbr_partitions(mbr: &Mbr, sector_size: u32) -> Vec<PartitionReport> {
    let ss = sector_size as u64;
    mbr.partitions
        .iter()
        .filter(|p| !matches!(p.type_byte, 0x05 | 0x0f | 0x85))
        .map(|p| PartitionReport {
            number: p.number,
            first_lba: p.first_lba,
            last_lba: p.first_lba + p.sectors - 1,
            start_bytes: p.first_lba * ss,
            size_bytes: p.sectors * ss,
            type_guid: None,
            mbr_type: Some(p.type_byte),
            type_name: format!(
                "{} ({:#04x})",
                types::mbr_type_name(p.type_byte),
                p.type_byte
            ),
            family: types::mbr_type_family(p.type_byte),
            unique_guid: None,
            name: String::new(),
            attributes: 0,
            filesystem: None,
            fs_label: None,
            fs_uuid: None,
            device: None,
            in_use: Vec::new(),
        })
        .collect()
}

pub(crate) fn corrupt_table(c: &Corruption) -> Table {
    Table::Corrupt {
        reason: c.to_string(),
        primary_valid: c.primary_valid,
        backup_valid: c.backup_valid,
    }
}

/// Find the RayOS install on a disk from its partitions.
pub fn find_rayos(parts: &[PartitionReport]) -> Option<RayosInstall> {
    let system = parts
        .iter()
        .find(|p| p.type_guid == Some(types::XBOOTLDR) && p.has_label(LABEL_SYSTEM))
        .map(|p| p.number);
    let data = parts
        .iter()
        .find(|p| {
            p.type_guid == Some(types::RAYOS_DATA)
                || (p.has_label(LABEL_DATA) && p.family != TypeFamily::Windows)
        })
        .map(|p| p.number);
    let vm_storage: Vec<u32> = parts
        .iter()
        .filter(|p| p.type_guid == Some(types::RAYOS_VM_STORAGE))
        .map(|p| p.number)
        .collect();
    if system.is_none() && data.is_none() && vm_storage.is_empty() {
        return None;
    }
    let esp = parts
        .iter()
        .find(|p| p.family == TypeFamily::Esp)
        .map(|p| p.number);
    Some(RayosInstall {
        system,
        data,
        vm_storage,
        esp,
    })
}

/// Find other systems (Windows, Linux, ESP) from the partitions.
pub fn find_systems(parts: &[PartitionReport]) -> Vec<SystemFound> {
    let mut out: Vec<SystemFound> = Vec::new();
    let mut note = |kind: SystemKind, number: u32, why: String| match out
        .iter_mut()
        .find(|s| s.kind == kind)
    {
        Some(s) => {
            s.partitions.push(number);
            s.evidence.push(why);
        }
        None => out.push(SystemFound {
            kind,
            partitions: vec![number],
            evidence: vec![why],
        }),
    };
    for p in parts {
        let fs = p.filesystem;
        let n = p.number;
        let fs_name = fs.map(|f| f.name()).unwrap_or("no recognised filesystem");
        match p.type_guid {
            Some(t) if t == types::MS_RESERVED || t == types::WINDOWS_RECOVERY => note(
                SystemKind::Windows,
                n,
                format!("partition {n}: {}", p.type_name),
            ),
            Some(t) if t == types::MS_BASIC_DATA => {
                if matches!(fs, Some(Filesystem::Ntfs | Filesystem::Bitlocker)) {
                    note(
                        SystemKind::Windows,
                        n,
                        format!("partition {n}: Microsoft basic data with {fs_name}"),
                    )
                } else if fs.is_some_and(Filesystem::is_linux_native) {
                    note(
                        SystemKind::Linux,
                        n,
                        format!("partition {n}: Microsoft basic data with {fs_name}"),
                    )
                }
            }
            Some(t) if t == types::ESP => note(
                SystemKind::Esp,
                n,
                format!("partition {n}: EFI system partition ({fs_name})"),
            ),
            _ if p.family == TypeFamily::Linux => note(
                SystemKind::Linux,
                n,
                format!("partition {n}: {} with {fs_name}", p.type_name),
            ),
            None if p.mbr_type == Some(0xEF) => note(
                SystemKind::Esp,
                n,
                format!("partition {n}: EFI system partition ({fs_name})"),
            ),
            None if matches!(fs, Some(Filesystem::Ntfs | Filesystem::Bitlocker)) => {
                note(SystemKind::Windows, n, format!("partition {n}: {fs_name}"))
            }
            _ if matches!(
                p.family,
                TypeFamily::RayosData | TypeFamily::RayosSystem | TypeFamily::RayosVmStorage
            ) => {}
            _ if fs.is_some_and(Filesystem::is_linux_native) => note(
                SystemKind::Linux,
                n,
                format!("partition {n}: {} with {fs_name}", p.type_name),
            ),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(
        number: u32,
        t: Option<Uuid>,
        mbr: Option<u8>,
        fs: Option<Filesystem>,
        name: &str,
    ) -> PartitionReport {
        let (family, type_name) = match (t, mbr) {
            (Some(t), _) => (
                types::type_family(&t),
                types::type_name(&t).unwrap_or("?").to_string(),
            ),
            (None, Some(b)) => (
                types::mbr_type_family(b),
                types::mbr_type_name(b).to_string(),
            ),
            _ => (TypeFamily::Other, "?".into()),
        };
        PartitionReport {
            number,
            first_lba: 0,
            last_lba: 0,
            start_bytes: 0,
            size_bytes: 0,
            type_guid: t,
            mbr_type: mbr,
            type_name,
            family,
            unique_guid: None,
            name: name.into(),
            attributes: 0,
            filesystem: fs,
            fs_label: None,
            fs_uuid: None,
            device: None,
            in_use: Vec::new(),
        }
    }

    #[test]
    fn rayos_needs_its_types_and_labels() {
        let parts = vec![
            part(1, Some(types::ESP), None, Some(Filesystem::Fat32), ""),
            part(
                2,
                Some(types::XBOOTLDR),
                None,
                Some(Filesystem::Fat32),
                "rayos-system",
            ),
            part(
                3,
                Some(types::RAYOS_DATA),
                None,
                Some(Filesystem::Ext4),
                "whatever",
            ),
            part(
                4,
                Some(types::RAYOS_VM_STORAGE),
                None,
                Some(Filesystem::Ext4),
                "rayos-vm-linux",
            ),
        ];
        assert_eq!(
            find_rayos(&parts),
            Some(RayosInstall {
                system: Some(2),
                data: Some(3),
                vm_storage: vec![4],
                esp: Some(1)
            })
        );
        // Another distribution's XBOOTLDR is not RayOS.
        let other = vec![part(
            2,
            Some(types::XBOOTLDR),
            None,
            Some(Filesystem::Fat32),
            "boot",
        )];
        assert_eq!(find_rayos(&other), None);
        // A Windows partition named rayos-data is not RayOS data.
        let win = vec![part(
            3,
            Some(types::MS_BASIC_DATA),
            None,
            Some(Filesystem::Ntfs),
            "rayos-data",
        )];
        assert_eq!(find_rayos(&win), None);
        // RayOS partitions are not counted as "Linux".
        assert!(
            find_systems(&parts)
                .iter()
                .all(|s| s.kind == SystemKind::Esp)
        );
    }

    #[test]
    fn windows_and_linux_are_told_apart_by_type_and_content() {
        let parts = vec![
            part(1, Some(types::ESP), None, Some(Filesystem::Fat32), ""),
            part(2, Some(types::MS_RESERVED), None, None, ""),
            part(
                3,
                Some(types::MS_BASIC_DATA),
                None,
                Some(Filesystem::Bitlocker),
                "",
            ),
            part(
                4,
                Some(types::MS_BASIC_DATA),
                None,
                Some(Filesystem::Ext4),
                "old linux",
            ),
            part(
                5,
                Some(types::MS_BASIC_DATA),
                None,
                Some(Filesystem::Fat32),
                "USB data",
            ),
            part(6, Some(types::LINUX_SWAP), None, Some(Filesystem::Swap), ""),
            part(7, Some(types::LINUX_FS), None, None, ""),
        ];
        let s = find_systems(&parts);
        let of = |k: SystemKind| s.iter().find(|x| x.kind == k).map(|x| x.partitions.clone());
        assert_eq!(of(SystemKind::Windows), Some(vec![2, 3]));
        assert_eq!(of(SystemKind::Linux), Some(vec![4, 6, 7]));
        assert_eq!(of(SystemKind::Esp), Some(vec![1]));
        let win = s.iter().find(|x| x.kind == SystemKind::Windows).unwrap();
        assert!(
            win.evidence[1].contains("Microsoft basic data with BitLocker"),
            "{:?}",
            win.evidence
        );
    }

    #[test]
    fn mbr_disks_are_classified_too() {
        let parts = vec![
            part(1, None, Some(0x07), Some(Filesystem::Ntfs), ""),
            part(2, None, Some(0x83), Some(Filesystem::Ext4), ""),
            part(3, None, Some(0xEF), Some(Filesystem::Fat16), ""),
            part(5, None, Some(0x0c), Some(Filesystem::Fat32), ""),
        ];
        let s = find_systems(&parts);
        let kinds: Vec<(SystemKind, Vec<u32>)> =
            s.iter().map(|x| (x.kind, x.partitions.clone())).collect();
        assert_eq!(
            kinds,
            vec![
                (SystemKind::Windows, vec![1]),
                (SystemKind::Linux, vec![2]),
                (SystemKind::Esp, vec![3]),
            ]
        );
    }

    #[test]
    fn json_shape_is_stable() {
        let u = Usage {
            device: "/dev/sda1".into(),
            reason: UsageReason::Mounted {
                mount_point: "/boot".into(),
                fs_type: "vfat".into(),
            },
        };
        let v = serde_json::to_value(&u).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"device": "/dev/sda1", "reason": "mounted", "mount_point": "/boot", "fs_type": "vfat"})
        );
        assert_eq!(u.to_string(), "/dev/sda1 is mounted at /boot (vfat)");
        let t = Table::Corrupt {
            reason: "x".into(),
            primary_valid: false,
            backup_valid: true,
        };
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::json!({"type": "corrupt", "reason": "x", "primary_valid": false, "backup_valid": true})
        );
    }
}
