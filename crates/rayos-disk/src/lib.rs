//! Disks: block-device and image-file enumeration, GPT reading and writing,
//! filesystem probing, free-region search and classification of what a disk
//! holds (RayOS install, Windows, Linux, ESP).
//!
//! Layers, bottom up: `crc32` and [`types`] (no I/O) → [`gpt`],
//! [`mod@probe`] and [`fat`] (FAT geometry checked against its partition;
//! generic over `Read + Seek` / `Read + Write + Seek`, tested on `Vec<u8>`
//! and sparse files) → [`report`] (the serialisable [`Disk`]) →
//! [`enumerate`] (sysfs, procfs, image files). Nothing here writes to a disk
//! except [`Gpt::write`], which the installer calls.

mod crc32;
pub mod enumerate;
pub mod fat;
pub mod gpt;
pub mod probe;
pub mod report;
pub mod types;

pub use crc32::crc32;
pub use enumerate::{
    EnumerateError, Host, HostUsage, MountEntry, host_usage, list_block_devices, probe_image,
    probe_path,
};
pub use gpt::{
    Corruption, DEFAULT_ALIGNMENT, FreeRegion, Gpt, GptError, Mbr, MbrPartition, Partition,
    TableCopy, TableState,
};
pub use probe::{Filesystem, FsInfo, ProbeError, probe};
pub use report::{
    Disk, DiskKind, FreeSpace, PartitionReport, RayosInstall, SystemFound, SystemKind, Table,
    Usage, UsageReason,
};
