//! Made-up disks: the built-in sample disk of `rayos install --sample`
//! (demos, tests of the CLI without any real disk) and a builder of
//! [`Disk`] reports for planner unit tests. Classification uses
//! rayos-disk's own rules, so a made-up disk reads like a probed one.

use std::path::PathBuf;

use uuid::Uuid;

use rayos_disk::gpt::{free_runs, standard_usable_area};
use rayos_disk::report::{find_rayos, find_systems};
use rayos_disk::types;
use rayos_disk::{Disk, DiskKind, Filesystem, FreeSpace, Partition, PartitionReport, Table};

use crate::answers::{GIB, MIB};

/// One partition of a made-up disk.
#[derive(Debug, Clone)]
pub struct FakePartition {
    /// The partition's number.
    pub number: u32,
    /// Its first sector.
    pub first_lba: u64,
    /// Its last sector (inclusive).
    pub last_lba: u64,
    /// Its type GUID.
    pub type_guid: Uuid,
    /// Its GPT name.
    pub name: String,
    /// The filesystem the disk report shows in it.
    pub filesystem: Option<Filesystem>,
    /// That filesystem's label.
    pub fs_label: Option<String>,
}

impl FakePartition {
    /// A partition from byte offsets on a disk with `ss`-byte sectors.
    pub fn at(number: u32, start: u64, size: u64, ss: u64, type_guid: Uuid, name: &str) -> Self {
        FakePartition {
            number,
            first_lba: start / ss,
            last_lba: (start + size) / ss - 1,
            type_guid,
            name: name.into(),
            filesystem: None,
            fs_label: None,
        }
    }
    /// The same partition with filesystem `fs` labelled `label`.
    pub fn fs(mut self, fs: Filesystem, label: Option<&str>) -> Self {
        self.filesystem = Some(fs);
        self.fs_label = label.map(str::to_string);
        self
    }
}

/// A GPT disk report with these partitions (free regions computed, systems
/// and RayOS partitions classified).
pub fn fake_disk(path: &str, size: u64, ss: u32, kind: DiskKind, parts: &[FakePartition]) -> Disk {
    let ssz = ss as u64;
    let partitions: Vec<PartitionReport> = parts
        .iter()
        .map(|p| PartitionReport {
            filesystem: p.filesystem,
            fs_label: p.fs_label.clone(),
            ..PartitionReport::of_gpt(
                &Partition::new(p.number, p.type_guid, p.first_lba, p.last_lba, &p.name),
                ss,
            )
        })
        .collect();
    let (first, last) = standard_usable_area(size / ssz, ss);
    let free_regions = free_runs(
        first,
        last,
        parts.iter().map(|p| (p.first_lba, p.last_lba)),
        MIB / ssz,
    )
    .into_iter()
    .map(|r| FreeSpace::of(r, ss))
    .collect();
    Disk {
        path: PathBuf::from(path),
        kind,
        model: Some("RayOS sample disk".into()),
        serial: None,
        size_bytes: size,
        logical_sector_size: ss,
        removable: false,
        read_only: false,
        table: Table::Gpt,
        hybrid_mbr: Vec::new(),
        disk_guid: Some(Uuid::new_v4()),
        whole_disk_filesystem: None,
        rayos: find_rayos(&partitions),
        systems: find_systems(&partitions),
        partitions,
        free_regions,
        in_use: Vec::new(),
    }
}

/// The built-in sample of `--sample`: a 64 GiB disk as Windows leaves it
/// (100 MiB ESP, 16 MiB MSR, 40 GiB NTFS) with the rest free.
pub fn sample_disk() -> Disk {
    let ss = 512;
    fake_disk(
        "/dev/sample",
        64 * GIB,
        ss as u32,
        DiskKind::BlockDevice,
        &[
            FakePartition::at(1, MIB, 100 * MIB, ss, types::ESP, "EFI system partition")
                .fs(Filesystem::Fat32, Some("SYSTEM")),
            FakePartition::at(
                2,
                101 * MIB,
                16 * MIB,
                ss,
                types::MS_RESERVED,
                "Microsoft reserved partition",
            ),
            FakePartition::at(
                3,
                117 * MIB,
                40 * GIB,
                ss,
                types::MS_BASIC_DATA,
                "Basic data partition",
            )
            .fs(Filesystem::Ntfs, Some("Windows")),
        ],
    )
}
