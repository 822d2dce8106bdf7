//! GUID Partition Table: reading, validating, editing and writing, over any
//! `Read + Write + Seek` (a block device, an image file, a `Cursor<Vec<u8>>`).
//!
//! Protocol (UEFI 2.10 §5.3): LBA 0 holds a protective MBR (one partition of
//! type 0xEE covering the disk); LBA 1 the primary header; LBA 2.. the
//! partition-entry array; the last LBA the backup header, preceded by the
//! backup copy of the entry array. Headers and the entry array carry CRC32s.
//! "LBA" is in units of the logical sector size (512 or 4096 bytes here).
//!
//! Behaviour:
//! - [`Gpt::read`] accepts a table only when the primary header, the backup
//!   header and both entry arrays are valid and agree. Anything else is an
//!   error that says what is wrong ([`GptError::Corrupt`]); a damaged table is
//!   never repaired here, and whether the backup is intact is reported only as
//!   information for the person deciding what to do.
//! - [`inspect`] classifies a disk without failing on a damaged one: GPT, MBR
//!   only, blank, or corrupt (with the reasons).
//! - [`Gpt::write`] writes the protective MBR (keeping boot code that sat
//!   beside an earlier protective MBR), both entry arrays and both headers.
//!   It does not fsync: the caller owns the file and must `sync_all` it.
//! - A **hybrid MBR** (a 0xEE entry beside entries that give a legacy BIOS
//!   its view of some GPT partitions, as Boot Camp and `sgdisk -h` make it)
//!   is read as a GPT and remembered ([`Gpt::hybrid_mbr`]). Writing keeps
//!   LBA 0 byte for byte, so a legacy-BIOS system booting through it keeps
//!   booting; it refuses ([`GptError::HybridMbr`]) when a partition the
//!   hybrid MBR covered was changed or removed, or a new one overlaps an
//!   entry — the BIOS would then find another partition under the old
//!   entry. Deciding what to do about that is the caller's (the installer
//!   refuses such plans up front).
//!
//! Limits: sector sizes 512, 1024, 2048 and 4096; at most 1 MiB of entry
//! array; the disk size is taken from `seek(End)` (which block devices
//! support). The hybrid MBR's own entries are not edited: it is kept as it
//! is or the write is refused.
//!
//! Rejected design: the `gptman` crate (whose tables sgdisk accepts). Own
//! code gives full control of what is reported — blank vs MBR-only vs which
//! copy failed which check — and of never acting on a half-valid table, for
//! about 600 lines checked against sgdisk and fdisk, and no dependency.

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};

use uuid::Uuid;

use crate::crc32::crc32;

/// RayOS aligns partitions to 1 MiB, as every current partitioner does.
pub const DEFAULT_ALIGNMENT: u64 = 1 << 20;
/// A GPT partition name holds at most 36 UTF-16 code units.
pub const NAME_MAX_UNITS: usize = 36;
/// Entry count and size RayOS writes (the UEFI minimum array: 16 KiB).
pub const DEFAULT_ENTRY_COUNT: u32 = 128;
/// The entry size RayOS writes, in bytes.
pub const DEFAULT_ENTRY_SIZE: u32 = 128;

const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION_1_0: u32 = 0x0001_0000;
const HEADER_SIZE: u32 = 92;
const MAX_ENTRY_ARRAY: u64 = 1 << 20;

/// Errors of reading, editing and writing a GPT.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// Reading the disk failed.
    #[error("reading the disk failed")]
    Read(#[source] io::Error),
    /// Writing the table failed.
    #[error("writing the partition table failed")]
    Write(#[source] io::Error),
    /// A sector size other than 512 or 4096; holds it.
    #[error("unsupported logical sector size {0}: expected 512 or 4096")]
    SectorSize(u32),
    /// The disk cannot hold a GPT.
    #[error("disk of {total_bytes} bytes is too small for a GPT with {sector_size}-byte sectors")]
    TooSmall {
        /// The disk's size in bytes.
        total_bytes: u64,
        /// Its sector size.
        sector_size: u32,
    },
    /// Neither GPT nor MBR: the disk is blank.
    #[error("no partition table: the disk is blank")]
    NoTable,
    /// The disk has an MBR partition table, not a GPT; holds it.
    #[error("the disk has an MBR (DOS) partition table, not a GPT")]
    MbrOnly(Mbr),
    /// Both GPT copies are unusable; says how.
    #[error("corrupt GPT: {0}")]
    Corrupt(Corruption),
    /// A partition number outside the entry array.
    #[error("partition {number}: slot number must be 1..={max}")]
    SlotOutOfRange {
        /// The number.
        number: u32,
        /// The highest number the array has.
        max: u32,
    },
    /// The slot holds a partition already.
    #[error("partition {number}: slot already holds a partition")]
    SlotTaken {
        /// The slot's number.
        number: u32,
    },
    /// A partition with the nil type GUID (which marks an empty slot).
    #[error("partition {number}: type GUID is nil (that marks an empty slot)")]
    NilType {
        /// The partition's number.
        number: u32,
    },
    /// A partition's unique GUID is nil or used twice.
    #[error("partition {number}: unique GUID {guid} is nil or already used")]
    DuplicateGuid {
        /// The partition's number.
        number: u32,
        /// The GUID.
        guid: Uuid,
    },
    /// A partition ends before it starts.
    #[error("partition {number}: last LBA {last} is before first LBA {first}")]
    EmptyRange {
        /// The partition's number.
        number: u32,
        /// Its first sector.
        first: u64,
        /// Its last sector.
        last: u64,
    },
    /// A partition is outside the usable area.
    #[error(
        "partition {number}: LBA {first}..={last} is outside the usable area {first_usable}..={last_usable}"
    )]
    OutOfBounds {
        /// The partition's number.
        number: u32,
        /// Its first sector.
        first: u64,
        /// Its last sector.
        last: u64,
        /// The first usable sector.
        first_usable: u64,
        /// The last usable sector.
        last_usable: u64,
    },
    /// A partition does not start on the alignment boundary.
    #[error("partition {number}: first LBA {first} is not aligned to {alignment_lba} sectors")]
    Misaligned {
        /// The partition's number.
        number: u32,
        /// Its first sector.
        first: u64,
        /// The alignment, in sectors.
        alignment_lba: u64,
    },
    /// Two partitions overlap.
    #[error("partition {number}: LBA {first}..={last} overlaps partition {other}")]
    Overlap {
        /// The partition's number.
        number: u32,
        /// Its first sector.
        first: u64,
        /// Its last sector.
        last: u64,
        /// The number of the partition it overlaps.
        other: u32,
    },
    /// A partition name longer than 36 UTF-16 units.
    #[error("partition {number}: name is longer than 36 UTF-16 units")]
    NameTooLong {
        /// The partition's number.
        number: u32,
    },
    /// No partition has this number.
    #[error("no partition {0}")]
    NoSuchPartition(u32),
    /// The device changed size since the table was read.
    #[error(
        "the table is for a disk of {expected} sectors but the device has {found}: read the table again"
    )]
    DeviceSize {
        /// Sectors when the table was read.
        expected: u64,
        /// Sectors now.
        found: u64,
    },
    /// An alignment that is not a whole number of sectors.
    #[error("alignment of {bytes} bytes is not a multiple of the {sector_size}-byte sector")]
    BadAlignment {
        /// The alignment in bytes.
        bytes: u64,
        /// The sector size.
        sector_size: u32,
    },
    /// A hybrid MBR entry covers a partition the new table changes or removes.
    #[error(
        "the hybrid MBR's entry {entry} (sectors {first}..={last}) covers partition {number}, which this table changes or removes; the hybrid MBR would point a legacy BIOS at the wrong partition"
    )]
    HybridMbr {
        /// The MBR entry's number.
        entry: u32,
        /// Its first sector.
        first: u64,
        /// Its last sector.
        last: u64,
        /// The GPT partition it covers.
        number: u32,
    },
}

/// What is wrong with a damaged GPT, for the person deciding what to do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Corruption {
    /// Each problem found, in words ("primary header CRC mismatch", ...).
    pub problems: Vec<String>,
    /// The primary header and its entry array are valid on their own.
    pub primary_valid: bool,
    /// The backup header and its entry array are valid on their own.
    pub backup_valid: bool,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("; "))?;
        match (self.primary_valid, self.backup_valid) {
            (false, true) => f.write_str(
                " (the backup table is intact; gdisk's recovery menu can rebuild the primary from it)",
            ),
            (true, false) => f.write_str(
                " (the primary table is intact; gdisk can rewrite the backup from it)",
            ),
            _ => Ok(()),
        }
    }
}

/// One GPT partition entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    /// 1-based slot in the entry array (what Linux calls `sda<N>`).
    pub number: u32,
    /// The partition type GUID (what the partition is for).
    pub type_guid: Uuid,
    /// The partition's own GUID (`PARTUUID`).
    pub unique_guid: Uuid,
    /// The first sector.
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    /// Attribute bits (bit 0 platform-required, bit 63 do-not-automount, …).
    pub attributes: u64,
    /// At most 36 UTF-16 units.
    pub name: String,
}

impl Partition {
    /// A partition with a fresh random unique GUID and no attributes.
    pub fn new(
        number: u32,
        type_guid: Uuid,
        first_lba: u64,
        last_lba: u64,
        name: impl Into<String>,
    ) -> Self {
        Partition {
            number,
            type_guid,
            unique_guid: Uuid::new_v4(),
            first_lba,
            last_lba,
            attributes: 0,
            name: name.into(),
        }
    }

    /// Number of sectors (0 if `last_lba < first_lba`).
    pub fn lba_count(&self) -> u64 {
        self.last_lba
            .saturating_add(1)
            .saturating_sub(self.first_lba)
    }

    /// Where the partition starts, in bytes.
    pub fn start_bytes(&self, sector_size: u32) -> u64 {
        self.first_lba * sector_size as u64
    }

    /// The partition's size in bytes.
    pub fn size_bytes(&self, sector_size: u32) -> u64 {
        self.lba_count() * sector_size as u64
    }
}

/// A run of unpartitioned sectors inside the usable area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FreeRegion {
    /// The first sector.
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
}

/// The gaps between `used` extents (inclusive LBA pairs, any order) inside
/// `first..=last`, each start rounded up to `align` sectors; gaps with no
/// aligned room are left out. Shared by [`Gpt::free_regions`] and by
/// callers that plan on a layout not yet written (the installer wizard).
pub fn free_runs(
    first: u64,
    last: u64,
    used: impl IntoIterator<Item = (u64, u64)>,
    align: u64,
) -> Vec<FreeRegion> {
    let align = align.max(1);
    let mut used: Vec<(u64, u64)> = used.into_iter().collect();
    used.sort_unstable();
    let mut out = Vec::new();
    let mut cursor = first;
    let mut push = |from: u64, to: u64| {
        let start = from.div_ceil(align) * align;
        if start <= to && to - start + 1 >= align {
            out.push(FreeRegion {
                first_lba: start,
                last_lba: to,
            });
        }
    };
    for (a, b) in used {
        if a > cursor {
            push(cursor, a - 1);
        }
        cursor = cursor.max(b.saturating_add(1));
    }
    if cursor <= last {
        push(cursor, last);
    }
    out
}

impl FreeRegion {
    /// Number of sectors.
    pub fn lba_count(&self) -> u64 {
        self.last_lba + 1 - self.first_lba
    }

    /// Where the region starts, in bytes.
    pub fn start_bytes(&self, sector_size: u32) -> u64 {
        self.first_lba * sector_size as u64
    }

    /// The region's size in bytes.
    pub fn size_bytes(&self, sector_size: u32) -> u64 {
        self.lba_count() * sector_size as u64
    }
}

/// An MBR (DOS) partition, primary (1..=4) or logical (5..).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MbrPartition {
    /// 1..=4 primary, 5.. logical (as Linux numbers them).
    pub number: u32,
    /// Whether the boot flag (0x80) is set.
    pub bootable: bool,
    /// The partition type byte (0x07 NTFS, 0x83 Linux, 0xee GPT protective, …).
    pub type_byte: u8,
    /// The first sector.
    pub first_lba: u64,
    /// Length in sectors.
    pub sectors: u64,
}

/// A DOS partition table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Mbr {
    /// The disk signature at byte 440 (Windows' disk id).
    pub disk_signature: u32,
    /// Primary partitions, then logical ones from the extended chain.
    /// Extended containers themselves are listed too (type 0x05/0x0f/0x85).
    pub partitions: Vec<MbrPartition>,
}

/// Which copy of a GPT to read with [`Gpt::read_copy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableCopy {
    /// The primary copy, after the protective MBR.
    Primary,
    /// The backup copy, at the end of the disk.
    Backup,
}

/// What a disk holds at the partition-table level.
#[derive(Debug, Clone)]
pub enum TableState {
    /// A GPT (at least one copy valid).
    Gpt(Gpt),
    /// An MBR partition table.
    Mbr(Mbr),
    /// No GPT and no MBR signature (all zero, or something without a table).
    Blank,
    /// A GPT signature, but neither copy is valid; says why.
    Corrupt(Corruption),
}

/// An in-memory GPT. Edit with [`Gpt::add`] / [`Gpt::remove`], then
/// [`Gpt::write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    sector_size: u32,
    total_sectors: u64,
    disk_guid: Uuid,
    first_usable: u64,
    last_usable: u64,
    entry_count: u32,
    entry_size: u32,
    alignment_lba: u64,
    /// Sorted by `number`.
    partitions: Vec<Partition>,
    /// The hybrid MBR found at LBA 0 when the table was read.
    hybrid: Option<Hybrid>,
}

/// A hybrid MBR as read: LBA 0's bytes, its non-protective entries, and the
/// GPT partitions they covered then.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hybrid {
    lba0: Vec<u8>,
    entries: Vec<MbrPartition>,
    covered: Vec<Partition>,
}

fn overlaps(e: &MbrPartition, p: &Partition) -> bool {
    let last = e.first_lba + e.sectors - 1;
    e.first_lba <= p.last_lba && p.first_lba <= last
}

/// The non-protective entries of `lba0` if it is a hybrid MBR: boot
/// signature, a 0xEE entry, and at least one other valid entry (primary
/// entries only; their ranges are what a BIOS sees).
fn hybrid_entries(lba0: &[u8], total_sectors: u64) -> Option<Vec<MbrPartition>> {
    if lba0.get(510..512)? != [0x55, 0xAA] {
        return None;
    }
    let mut protective = false;
    let mut entries = Vec::new();
    for i in 0..4 {
        let e = lba0.get(446 + 16 * i..462 + 16 * i)?;
        match mbr_entry(e, 0, i as u32 + 1, total_sectors) {
            Some(p) if p.type_byte == 0xEE => protective = true,
            Some(p) => entries.push(p),
            None => {}
        }
    }
    (protective && !entries.is_empty()).then_some(entries)
}

fn check_sector_size(sector_size: u32) -> Result<(), GptError> {
    match sector_size {
        512 | 1024 | 2048 | 4096 => Ok(()),
        other => Err(GptError::SectorSize(other)),
    }
}

fn entry_array_sectors(entry_count: u32, entry_size: u32, sector_size: u32) -> u64 {
    (entry_count as u64 * entry_size as u64).div_ceil(sector_size.max(1) as u64)
}

/// The usable area `(first, last)` (inclusive LBAs) of the table
/// [`Gpt::new`] makes — 128 entries of 128 bytes — on a disk of
/// `total_sectors` sectors. For planning before any table is written (the
/// installer's planner and wizard); a disk too small for a table gives
/// `last < first`, which leaves no free runs.
pub fn standard_usable_area(total_sectors: u64, sector_size: u32) -> (u64, u64) {
    let array = entry_array_sectors(DEFAULT_ENTRY_COUNT, DEFAULT_ENTRY_SIZE, sector_size);
    (2 + array, total_sectors.saturating_sub(2 + array))
}

impl Gpt {
    /// A fresh, empty table for a disk of `total_bytes` (rounded down to whole
    /// sectors), with a random disk GUID, 128 entries and 1 MiB alignment.
    pub fn new(total_bytes: u64, sector_size: u32) -> Result<Gpt, GptError> {
        check_sector_size(sector_size)?;
        let total_sectors = total_bytes / sector_size as u64;
        let (first_usable, last_usable) = standard_usable_area(total_sectors, sector_size);
        // LBA 0, header, array, then the same at the end, and one usable sector.
        if last_usable < first_usable {
            return Err(GptError::TooSmall {
                total_bytes,
                sector_size,
            });
        }
        Ok(Gpt {
            sector_size,
            total_sectors,
            disk_guid: Uuid::new_v4(),
            first_usable,
            last_usable,
            entry_count: DEFAULT_ENTRY_COUNT,
            entry_size: DEFAULT_ENTRY_SIZE,
            alignment_lba: (DEFAULT_ALIGNMENT / sector_size as u64).max(1),
            partitions: Vec::new(),
            hybrid: None,
        })
    }

    /// Read and fully validate the GPT of `dev`. A blank disk, an MBR-only
    /// disk and a damaged GPT are distinct errors; nothing is repaired.
    pub fn read<D: Read + Seek>(dev: &mut D, sector_size: u32) -> Result<Gpt, GptError> {
        match inspect(dev, sector_size)? {
            TableState::Gpt(g) => Ok(g),
            TableState::Mbr(m) => Err(GptError::MbrOnly(m)),
            TableState::Blank => Err(GptError::NoTable),
            TableState::Corrupt(c) => Err(GptError::Corrupt(c)),
        }
    }

    /// Read ONE copy of the table (primary or backup), validated on its own,
    /// ignoring the other. For a caller with its own evidence of which copy
    /// is right — the installer re-running after a power cut during its own
    /// table write — to decide explicitly; [`Gpt::read`] never does this.
    /// Writing the result back rewrites both copies.
    pub fn read_copy<D: Read + Seek>(
        dev: &mut D,
        sector_size: u32,
        copy: TableCopy,
    ) -> Result<Gpt, GptError> {
        check_sector_size(sector_size)?;
        let ss = sector_size as u64;
        let total_sectors = device_size(dev).map_err(GptError::Read)? / ss;
        if total_sectors < 3 {
            return Err(GptError::NoTable);
        }
        let (lba, which) = match copy {
            TableCopy::Primary => (1, "primary"),
            TableCopy::Backup => (total_sectors - 1, "backup"),
        };
        let mut problems = Vec::new();
        let h = read_header(dev, lba, sector_size, total_sectors, which, &mut problems)?;
        let Some(h) = h else {
            if problems.is_empty() {
                problems.push(format!("{which} header missing at LBA {lba}"));
            }
            return Err(GptError::Corrupt(Corruption {
                problems,
                primary_valid: false,
                backup_valid: false,
            }));
        };
        check_partitions(&h, &mut problems);
        if !problems.is_empty() {
            return Err(GptError::Corrupt(Corruption {
                problems,
                primary_valid: copy == TableCopy::Primary,
                backup_valid: copy == TableCopy::Backup,
            }));
        }
        let lba0 = read_at(dev, 0, 512).map_err(GptError::Read)?;
        let g = Gpt::from_header(h, sector_size, total_sectors).with_hybrid(&lba0);
        // A copy read alone may predate a shrink: its partitions must still
        // end before the place the backup array would be written.
        if let Some(p) = g.partitions.iter().find(|p| p.last_lba > g.last_usable) {
            return Err(GptError::Corrupt(Corruption {
                problems: vec![format!(
                    "partition {} ends at LBA {}, past the last usable LBA {} of this disk",
                    p.number, p.last_lba, g.last_usable
                )],
                primary_valid: false,
                backup_valid: false,
            }));
        }
        Ok(g)
    }

    fn from_header(h: HeaderRead, sector_size: u32, total_sectors: u64) -> Gpt {
        Gpt {
            sector_size,
            total_sectors,
            disk_guid: h.disk_guid,
            first_usable: h.first_usable,
            // A backup read from a disk that has since grown keeps its old
            // usable end; the array must still fit before the last LBA.
            last_usable: h.last_usable.min(
                total_sectors - 2 - entry_array_sectors(h.entry_count, h.entry_size, sector_size),
            ),
            entry_count: h.entry_count,
            entry_size: h.entry_size,
            alignment_lba: (DEFAULT_ALIGNMENT / sector_size as u64).max(1),
            partitions: h.partitions,
            hybrid: None,
        }
    }

    /// Remembers LBA 0 if it holds a hybrid MBR (called by the readers).
    fn with_hybrid(mut self, lba0: &[u8]) -> Gpt {
        if let Some(entries) = hybrid_entries(lba0, self.total_sectors) {
            let covered = self
                .partitions
                .iter()
                .filter(|p| entries.iter().any(|e| overlaps(e, p)))
                .cloned()
                .collect();
            self.hybrid = Some(Hybrid {
                lba0: lba0.to_vec(),
                entries,
                covered,
            });
        }
        self
    }

    /// The entries of the hybrid MBR found when the table was read (not
    /// the 0xEE one), or `None` when LBA 0 held a plain protective MBR.
    pub fn hybrid_mbr(&self) -> Option<&[MbrPartition]> {
        self.hybrid.as_ref().map(|h| h.entries.as_slice())
    }

    /// The logical sector size in bytes.
    pub fn sector_size(&self) -> u32 {
        self.sector_size
    }

    /// Sectors on the disk the table was made for.
    pub fn total_sectors(&self) -> u64 {
        self.total_sectors
    }

    /// The disk's size in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.total_sectors * self.sector_size as u64
    }

    /// The disk's GUID.
    pub fn disk_guid(&self) -> Uuid {
        self.disk_guid
    }

    /// Sets the disk's GUID (written with the table).
    pub fn set_disk_guid(&mut self, guid: Uuid) {
        self.disk_guid = guid;
    }

    /// The first sector a partition may use.
    pub fn first_usable(&self) -> u64 {
        self.first_usable
    }

    /// The last sector a partition may use.
    pub fn last_usable(&self) -> u64 {
        self.last_usable
    }

    /// Number of slots in the entry array.
    pub fn entry_count(&self) -> u32 {
        self.entry_count
    }

    /// Alignment that [`Gpt::add`] enforces on a partition's first LBA, in sectors.
    pub fn alignment_lba(&self) -> u64 {
        self.alignment_lba
    }

    /// Change the alignment [`Gpt::add`] enforces (bytes, a multiple of the
    /// sector size; default 1 MiB).
    pub fn set_alignment(&mut self, bytes: u64) -> Result<(), GptError> {
        let ss = self.sector_size as u64;
        if bytes == 0 || bytes % ss != 0 {
            return Err(GptError::BadAlignment {
                bytes,
                sector_size: self.sector_size,
            });
        }
        self.alignment_lba = bytes / ss;
        Ok(())
    }

    /// Partitions, sorted by slot number.
    pub fn partitions(&self) -> &[Partition] {
        &self.partitions
    }

    /// The partition numbered `number`.
    pub fn partition(&self, number: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.number == number)
    }

    /// Lowest free slot number, or `None` when the entry array is full.
    pub fn next_free_number(&self) -> Option<u32> {
        (1..=self.entry_count).find(|n| self.partition(*n).is_none())
    }

    /// Add a partition after checking slot, type, bounds, alignment of the
    /// first LBA, overlap with every other partition and the name length.
    pub fn add(&mut self, p: Partition) -> Result<(), GptError> {
        let number = p.number;
        if number == 0 || number > self.entry_count {
            return Err(GptError::SlotOutOfRange {
                number,
                max: self.entry_count,
            });
        }
        if self.partition(number).is_some() {
            return Err(GptError::SlotTaken { number });
        }
        if p.type_guid.is_nil() {
            return Err(GptError::NilType { number });
        }
        if p.name.encode_utf16().count() > NAME_MAX_UNITS {
            return Err(GptError::NameTooLong { number });
        }
        if p.unique_guid.is_nil()
            || self
                .partitions
                .iter()
                .any(|q| q.unique_guid == p.unique_guid)
        {
            return Err(GptError::DuplicateGuid {
                number,
                guid: p.unique_guid,
            });
        }
        if p.last_lba < p.first_lba {
            return Err(GptError::EmptyRange {
                number,
                first: p.first_lba,
                last: p.last_lba,
            });
        }
        if p.first_lba < self.first_usable || p.last_lba > self.last_usable {
            return Err(GptError::OutOfBounds {
                number,
                first: p.first_lba,
                last: p.last_lba,
                first_usable: self.first_usable,
                last_usable: self.last_usable,
            });
        }
        if p.first_lba % self.alignment_lba != 0 {
            return Err(GptError::Misaligned {
                number,
                first: p.first_lba,
                alignment_lba: self.alignment_lba,
            });
        }
        if let Some(q) = self
            .partitions
            .iter()
            .find(|q| p.first_lba <= q.last_lba && q.first_lba <= p.last_lba)
        {
            return Err(GptError::Overlap {
                number,
                first: p.first_lba,
                last: p.last_lba,
                other: q.number,
            });
        }
        let at = self.partitions.partition_point(|q| q.number < number);
        self.partitions.insert(at, p);
        Ok(())
    }

    /// Remove the partition in slot `number` and return it.
    pub fn remove(&mut self, number: u32) -> Result<Partition, GptError> {
        let at = self
            .partitions
            .iter()
            .position(|p| p.number == number)
            .ok_or(GptError::NoSuchPartition(number))?;
        Ok(self.partitions.remove(at))
    }

    /// Unpartitioned runs of the usable area whose start is rounded up to
    /// `align_bytes` (use [`DEFAULT_ALIGNMENT`]). The end of each run is
    /// exact (the sector before the next partition, or the last usable
    /// sector). Runs smaller than `align_bytes` after rounding are left out:
    /// nothing aligned fits there.
    pub fn free_regions(&self, align_bytes: u64) -> Vec<FreeRegion> {
        let align = (align_bytes / self.sector_size as u64).max(1);
        free_runs(
            self.first_usable,
            self.last_usable,
            self.partitions.iter().map(|p| (p.first_lba, p.last_lba)),
            align,
        )
    }

    /// Write protective MBR, primary header and entries, backup entries and
    /// header. The caller must fsync `dev` afterwards.
    pub fn write<D: Read + Write + Seek>(&self, dev: &mut D) -> Result<(), GptError> {
        let ss = self.sector_size as u64;
        // The backup goes at the last LBA: on a device of another size it
        // would land inside a partition or past the end.
        let found = device_size(dev).map_err(GptError::Read)? / ss;
        if found != self.total_sectors {
            return Err(GptError::DeviceSize {
                expected: self.total_sectors,
                found,
            });
        }
        let array_sectors =
            entry_array_sectors(self.entry_count, self.entry_size, self.sector_size);
        let mut array = vec![0u8; (array_sectors * ss) as usize];
        for p in &self.partitions {
            let off = (p.number as usize - 1) * self.entry_size as usize;
            encode_entry(p, &mut array[off..off + self.entry_size as usize]);
        }
        let table_len = self.entry_count as usize * self.entry_size as usize;
        let array_crc = crc32(&array[..table_len]);
        let last = self.total_sectors - 1;
        let backup_array_lba = last - array_sectors;

        let mut mbr = [0u8; 512];
        let old = read_at(dev, 0, 512).map_err(GptError::Read)?;
        if let Some(h) = &self.hybrid {
            self.check_hybrid(h)?;
        }
        // Keep boot code only when it sat beside a protective MBR before: it
        // then belongs to this GPT disk, not to an MBR layout being replaced.
        if old[510..512] == [0x55, 0xAA] && old[446 + 4] == 0xEE {
            mbr[..440].copy_from_slice(&old[..440]);
        }
        let e = &mut mbr[446..462];
        e[0] = 0x00;
        e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
        e[4] = 0xEE;
        e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
        e[8..12].copy_from_slice(&1u32.to_le_bytes());
        let size = (self.total_sectors - 1).min(u32::MAX as u64) as u32;
        e[12..16].copy_from_slice(&size.to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xAA;

        let primary = self.encode_header(1, last, 2, array_crc);
        let backup = self.encode_header(last, 1, backup_array_lba, array_crc);
        let w = |dev: &mut D, lba: u64, bytes: &[u8]| -> Result<(), GptError> {
            dev.seek(SeekFrom::Start(lba * ss))
                .and_then(|_| dev.write_all(bytes))
                .map_err(GptError::Write)
        };
        w(dev, 2, &array)?;
        w(dev, 1, &primary)?;
        w(dev, backup_array_lba, &array)?;
        w(dev, last, &backup)?;
        match &self.hybrid {
            // The hybrid MBR as it was (its entries still name the same
            // partitions: checked above).
            Some(h) => w(dev, 0, &h.lba0)?,
            None => w(dev, 0, &mbr)?,
        }
        dev.flush().map_err(GptError::Write)
    }

    /// Every partition the hybrid MBR covered is still here unchanged, and
    /// no other partition overlaps one of its entries.
    fn check_hybrid(&self, h: &Hybrid) -> Result<(), GptError> {
        let same = |a: &Partition, b: &Partition| {
            (
                a.number,
                a.first_lba,
                a.last_lba,
                a.type_guid,
                a.unique_guid,
            ) == (
                b.number,
                b.first_lba,
                b.last_lba,
                b.type_guid,
                b.unique_guid,
            )
        };
        for e in &h.entries {
            let err = |number| GptError::HybridMbr {
                entry: e.number,
                first: e.first_lba,
                last: e.first_lba + e.sectors - 1,
                number,
            };
            for c in h.covered.iter().filter(|c| overlaps(e, c)) {
                if !self.partitions.iter().any(|p| same(p, c)) {
                    return Err(err(c.number));
                }
            }
            for p in self.partitions.iter().filter(|p| overlaps(e, p)) {
                if !h.covered.iter().any(|c| same(p, c)) {
                    return Err(err(p.number));
                }
            }
        }
        Ok(())
    }

    fn encode_header(&self, my_lba: u64, alt_lba: u64, array_lba: u64, array_crc: u32) -> Vec<u8> {
        let mut h = vec![0u8; self.sector_size as usize];
        h[0..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&REVISION_1_0.to_le_bytes());
        h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alt_lba.to_le_bytes());
        h[40..48].copy_from_slice(&self.first_usable.to_le_bytes());
        h[48..56].copy_from_slice(&self.last_usable.to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.to_bytes_le());
        h[72..80].copy_from_slice(&array_lba.to_le_bytes());
        h[80..84].copy_from_slice(&self.entry_count.to_le_bytes());
        h[84..88].copy_from_slice(&self.entry_size.to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32(&h[..HEADER_SIZE as usize]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }
}

fn encode_entry(p: &Partition, out: &mut [u8]) {
    out[0..16].copy_from_slice(&p.type_guid.to_bytes_le());
    out[16..32].copy_from_slice(&p.unique_guid.to_bytes_le());
    out[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
    out[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
    out[48..56].copy_from_slice(&p.attributes.to_le_bytes());
    for (i, unit) in p.name.encode_utf16().take(NAME_MAX_UNITS).enumerate() {
        out[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn guid_at(b: &[u8], off: usize) -> Uuid {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[off..off + 16]);
    Uuid::from_bytes_le(a)
}

/// Read `len` bytes at `offset`; bytes past the end of `dev` read as zero.
fn read_at<D: Read + Seek>(dev: &mut D, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    dev.seek(SeekFrom::Start(offset))?;
    rayos_base::io::read_full(dev, &mut buf)?;
    Ok(buf)
}

/// Size of `dev` in bytes (seek to the end; block devices support it).
pub fn device_size<D: Seek>(dev: &mut D) -> io::Result<u64> {
    dev.seek(SeekFrom::End(0))
}

/// One header and its entry array, parsed and checked on their own.
struct HeaderRead {
    disk_guid: Uuid,
    first_usable: u64,
    last_usable: u64,
    alt_lba: u64,
    entry_count: u32,
    entry_size: u32,
    array_crc: u32,
    partitions: Vec<Partition>,
}

/// Parse and check the header at `lba` (`which` names it in messages).
/// `Ok(None)` when there is no signature there at all.
fn read_header<D: Read + Seek>(
    dev: &mut D,
    lba: u64,
    ss: u32,
    total_sectors: u64,
    which: &str,
    problems: &mut Vec<String>,
) -> Result<Option<HeaderRead>, GptError> {
    let h = read_at(dev, lba * ss as u64, ss as usize).map_err(GptError::Read)?;
    if &h[0..8] != SIGNATURE {
        return Ok(None);
    }
    let before = problems.len();
    let mut bad = |m: String| problems.push(format!("{which} header: {m}"));
    let hsize = u32_at(&h, 12);
    if hsize < HEADER_SIZE || hsize > ss {
        bad(format!(
            "header size {hsize} is not in {HEADER_SIZE}..={ss}"
        ));
        return Ok(None);
    }
    let stored = u32_at(&h, 16);
    let mut copy = h[..hsize as usize].to_vec();
    copy[16..20].fill(0);
    if crc32(&copy) != stored {
        bad("CRC mismatch".into());
        return Ok(None);
    }
    let rev = u32_at(&h, 8);
    if rev >> 16 != 1 {
        bad(format!("unsupported revision {rev:#010x}"));
    }
    let my_lba = u64_at(&h, 24);
    if my_lba != lba {
        bad(format!("says it is at LBA {my_lba}, found at LBA {lba}"));
    }
    let alt_lba = u64_at(&h, 32);
    let first_usable = u64_at(&h, 40);
    let last_usable = u64_at(&h, 48);
    let array_lba = u64_at(&h, 72);
    let entry_count = u32_at(&h, 80);
    let entry_size = u32_at(&h, 84);
    let array_crc = u32_at(&h, 88);
    if entry_size < 128 || !entry_size.is_power_of_two() {
        bad(format!("entry size {entry_size} is not 128 × 2^n"));
    }
    let array_bytes = entry_count as u64 * entry_size as u64;
    if array_bytes > MAX_ENTRY_ARRAY {
        bad(format!(
            "entry array of {array_bytes} bytes is larger than 1 MiB"
        ));
    }
    if first_usable > last_usable || last_usable >= total_sectors {
        bad(format!(
            "usable area {first_usable}..={last_usable} does not fit a disk of {total_sectors} sectors"
        ));
    }
    let array_sectors = array_bytes.div_ceil(ss as u64);
    let array_end = array_lba.saturating_add(array_sectors);
    let array_ok = array_lba >= 2
        && array_end <= total_sectors.saturating_sub(1)
        && (array_end <= first_usable || array_lba > last_usable);
    if !array_ok {
        bad(format!(
            "entry array at LBA {array_lba} ({array_sectors} sectors) is not outside the usable area"
        ));
    }
    if problems.len() > before {
        return Ok(None);
    }
    let array =
        read_at(dev, array_lba * ss as u64, array_bytes as usize).map_err(GptError::Read)?;
    if crc32(&array) != array_crc {
        problems.push(format!("{which} entry array: CRC mismatch"));
        return Ok(None);
    }
    let mut partitions = Vec::new();
    for (i, e) in array.chunks_exact(entry_size as usize).enumerate() {
        let type_guid = guid_at(e, 0);
        if type_guid.is_nil() {
            continue;
        }
        let units: Vec<u16> = e[56..56 + 2 * NAME_MAX_UNITS]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        partitions.push(Partition {
            number: i as u32 + 1,
            type_guid,
            unique_guid: guid_at(e, 16),
            first_lba: u64_at(e, 32),
            last_lba: u64_at(e, 40),
            attributes: u64_at(e, 48),
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok(Some(HeaderRead {
        disk_guid: guid_at(&h, 56),
        first_usable,
        last_usable,
        alt_lba,
        entry_count,
        entry_size,
        array_crc,
        partitions,
    }))
}

/// Problems in the partitions of a header that is itself valid.
fn check_partitions(h: &HeaderRead, problems: &mut Vec<String>) {
    let mut ranges: Vec<(u64, u64, u32)> = Vec::new();
    for p in &h.partitions {
        if p.last_lba < p.first_lba {
            problems.push(format!(
                "partition {}: last LBA {} is before first LBA {}",
                p.number, p.last_lba, p.first_lba
            ));
        } else if p.first_lba < h.first_usable || p.last_lba > h.last_usable {
            problems.push(format!(
                "partition {}: LBA {}..={} is outside the usable area {}..={}",
                p.number, p.first_lba, p.last_lba, h.first_usable, h.last_usable
            ));
        }
        ranges.push((p.first_lba, p.last_lba, p.number));
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        if w[1].0 <= w[0].1 {
            problems.push(format!("partitions {} and {} overlap", w[0].2, w[1].2));
        }
    }
}

/// Classify what `dev` holds, reading it as a disk with `sector_size`-byte
/// logical sectors. Only I/O failures and a bad sector size are errors; a
/// damaged GPT is [`TableState::Corrupt`].
pub fn inspect<D: Read + Seek>(dev: &mut D, sector_size: u32) -> Result<TableState, GptError> {
    check_sector_size(sector_size)?;
    let ss = sector_size as u64;
    let total_bytes = device_size(dev).map_err(GptError::Read)?;
    let total_sectors = total_bytes / ss;
    let lba0 = read_at(dev, 0, 512).map_err(GptError::Read)?;
    let mbr = parse_mbr(dev, &lba0, total_sectors, sector_size)?;
    let protective =
        lba0[510..512] == [0x55, 0xAA] && (0..4).any(|i| lba0[446 + 16 * i + 4] == 0xEE);
    if total_sectors < 3 {
        return Ok(match mbr {
            Some(m) => TableState::Mbr(m),
            None => TableState::Blank,
        });
    }

    let mut problems = Vec::new();
    let primary = read_header(dev, 1, sector_size, total_sectors, "primary", &mut problems)?;
    let primary_seen = read_at(dev, ss, 8).map_err(GptError::Read)? == SIGNATURE;
    let last = total_sectors - 1;
    let backup = read_header(
        dev,
        last,
        sector_size,
        total_sectors,
        "backup",
        &mut problems,
    )?;
    let backup_seen = read_at(dev, last * ss, 8).map_err(GptError::Read)? == SIGNATURE;

    if !primary_seen && !backup_seen {
        // No GPT at this sector size. Say so if one exists at the other size.
        let other = if sector_size == 512 { 4096u64 } else { 512 };
        if total_bytes >= 2 * other && read_at(dev, other, 8).map_err(GptError::Read)? == SIGNATURE
        {
            return Ok(TableState::Corrupt(Corruption {
                problems: vec![format!(
                    "no GPT header at LBA 1 for {sector_size}-byte sectors, but one at byte {other}: \
                     the table was written for {other}-byte sectors"
                )],
                primary_valid: false,
                backup_valid: false,
            }));
        }
        if protective {
            return Ok(TableState::Corrupt(Corruption {
                problems: vec![
                    "protective MBR present but no GPT header at LBA 1 or at the last LBA".into(),
                ],
                primary_valid: false,
                backup_valid: false,
            }));
        }
        return Ok(match mbr {
            Some(m) => TableState::Mbr(m),
            None => TableState::Blank,
        });
    }
    if !primary_seen {
        problems.push("primary header missing at LBA 1".into());
    }
    if !backup_seen {
        problems.push(format!(
            "backup header missing at the last LBA {last} (was the disk resized or the image copied to a larger disk?)"
        ));
    }
    if let Some(p) = &primary {
        check_partitions(p, &mut problems);
        if p.alt_lba != last {
            problems.push(format!(
                "primary header points to a backup at LBA {}, but the last LBA is {last}",
                p.alt_lba
            ));
        }
    }
    if let Some(b) = &backup {
        if primary.is_none() {
            check_partitions(b, &mut problems);
        }
        if b.alt_lba != 1 {
            problems.push(format!(
                "backup header points to a primary at LBA {}, not 1",
                b.alt_lba
            ));
        }
    }
    if let (Some(p), Some(b)) = (&primary, &backup) {
        let same = p.disk_guid == b.disk_guid
            && p.first_usable == b.first_usable
            && p.last_usable == b.last_usable
            && p.entry_count == b.entry_count
            && p.entry_size == b.entry_size
            && p.array_crc == b.array_crc;
        if !same {
            problems.push("primary and backup tables disagree".into());
        }
    }
    if problems.is_empty() {
        if let Some(p) = primary {
            return Ok(TableState::Gpt(
                Gpt::from_header(p, sector_size, total_sectors).with_hybrid(&lba0),
            ));
        }
    }
    Ok(TableState::Corrupt(Corruption {
        problems,
        primary_valid: primary.is_some(),
        backup_valid: backup.is_some(),
    }))
}

/// Find the logical sector size a GPT was written for by looking for its
/// header at byte 512 (LBA 1 of a 512-byte disk) and byte 4096.
pub fn detect_sector_size<D: Read + Seek>(dev: &mut D) -> io::Result<Option<u32>> {
    for ss in [512u32, 4096] {
        if read_at(dev, ss as u64, 8)? == SIGNATURE {
            return Ok(Some(ss));
        }
    }
    Ok(None)
}

/// Parse a DOS partition table in `lba0`, following the extended chain.
/// `None` when there is no valid-looking table (no 0x55AA, entries that
/// point outside the disk, bad boot flags, or only a protective entry).
fn parse_mbr<D: Read + Seek>(
    dev: &mut D,
    lba0: &[u8],
    total_sectors: u64,
    ss: u32,
) -> Result<Option<Mbr>, GptError> {
    if lba0[510..512] != [0x55, 0xAA] {
        return Ok(None);
    }
    let mut parts = Vec::new();
    let mut extended = None;
    for i in 0..4 {
        let e = &lba0[446 + 16 * i..462 + 16 * i];
        let Some(p) = mbr_entry(e, 0, i as u32 + 1, total_sectors) else {
            if e[4] != 0 {
                // A non-empty entry that does not make sense: not a table
                // (often a filesystem boot sector on a "superfloppy").
                return Ok(None);
            }
            continue;
        };
        if p.type_byte == 0xEE {
            return Ok(None);
        }
        if matches!(p.type_byte, 0x05 | 0x0f | 0x85) && extended.is_none() {
            extended = Some(p.first_lba);
        }
        parts.push(p);
    }
    if parts.is_empty() {
        return Ok(None);
    }
    if let Some(ext_base) = extended {
        // Logical partitions: a chain of EBRs, each relative to the extended
        // container. Bounded to stop on loops.
        let mut ebr = ext_base;
        let mut number = 5;
        for _ in 0..128 {
            let b = read_at(dev, ebr * ss as u64, 512).map_err(GptError::Read)?;
            if b[510..512] != [0x55, 0xAA] {
                break;
            }
            if let Some(p) = mbr_entry(&b[446..462], ebr, number, total_sectors) {
                parts.push(p);
                number += 1;
            }
            let next = &b[462..478];
            match mbr_entry(next, ext_base, 0, total_sectors) {
                Some(n) if matches!(n.type_byte, 0x05 | 0x0f | 0x85) && n.first_lba > ebr => {
                    ebr = n.first_lba
                }
                _ => break,
            }
        }
    }
    Ok(Some(Mbr {
        disk_signature: u32_at(lba0, 440),
        partitions: parts,
    }))
}

fn mbr_entry(e: &[u8], base: u64, number: u32, total_sectors: u64) -> Option<MbrPartition> {
    let status = e[0];
    let type_byte = e[4];
    let start = u32_at(e, 8) as u64;
    let sectors = u32_at(e, 12) as u64;
    if type_byte == 0 || (status != 0 && status != 0x80) || sectors == 0 {
        return None;
    }
    let first_lba = base + start;
    // A protective entry may claim more than the disk (0xFFFFFFFF).
    if type_byte != 0xEE && (start == 0 || first_lba + sectors > total_sectors) {
        return None;
    }
    Some(MbrPartition {
        number,
        bootable: status == 0x80,
        type_byte,
        first_lba,
        sectors,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::types;

    const MIB: u64 = 1 << 20;

    fn disk(bytes: u64) -> Cursor<Vec<u8>> {
        Cursor::new(vec![0u8; bytes as usize])
    }

    /// ESP 1..3 MiB, system 3..5 MiB, data 5 MiB..end; slot 3 left empty.
    fn sample(ss: u32, bytes: u64) -> Gpt {
        let mut g = Gpt::new(bytes, ss).unwrap();
        let l = |b: u64| b / ss as u64;
        g.add(Partition::new(
            1,
            types::ESP,
            l(MIB),
            l(3 * MIB) - 1,
            "EFI system",
        ))
        .unwrap();
        let mut sys = Partition::new(
            2,
            types::XBOOTLDR,
            l(3 * MIB),
            l(5 * MIB) - 1,
            "rayos-system",
        );
        sys.attributes = 1 << 63;
        g.add(sys).unwrap();
        g.add(Partition::new(
            4,
            types::RAYOS_DATA,
            l(5 * MIB),
            g.last_usable(),
            "rayos-data ünï",
        ))
        .unwrap();
        g
    }

    #[test]
    fn round_trip_512_and_4096() {
        for ss in [512u32, 4096] {
            let bytes = 64 * MIB;
            let g = sample(ss, bytes);
            let mut d = disk(bytes);
            g.write(&mut d).unwrap();
            let back = Gpt::read(&mut d, ss).unwrap();
            assert_eq!(back, g, "sector size {ss}");
            let array = (128 * 128) / ss as u64;
            assert_eq!(back.first_usable(), 2 + array);
            assert_eq!(back.last_usable(), bytes / ss as u64 - 2 - array);
            // What planners assume before writing is what a new table has.
            assert_eq!(
                standard_usable_area(bytes / ss as u64, ss),
                (back.first_usable(), back.last_usable())
            );
            assert_eq!(back.partition(4).unwrap().name, "rayos-data ünï");
            assert_eq!(back.partition(2).unwrap().attributes, 1 << 63);
            // Protective MBR: one 0xEE entry from LBA 1, boot signature.
            let b = d.get_ref();
            assert_eq!(b[446 + 4], 0xEE);
            assert_eq!(u32_at(b, 446 + 8), 1);
            assert_eq!(u32_at(b, 446 + 12) as u64, bytes / ss as u64 - 1);
            assert_eq!(&b[510..512], &[0x55, 0xAA]);
            // Backup header really at the last LBA.
            let last = (bytes - ss as u64) as usize;
            assert_eq!(&b[last..last + 8], SIGNATURE);
        }
    }

    #[test]
    fn reading_at_the_other_sector_size_says_so() {
        let g = sample(4096, 64 * MIB);
        let mut d = disk(64 * MIB);
        g.write(&mut d).unwrap();
        let Err(GptError::Corrupt(c)) = Gpt::read(&mut d, 512) else {
            panic!("a 4096-byte table read at 512 must be an error");
        };
        assert!(c.problems[0].contains("4096-byte sectors"), "{c}");
        assert_eq!(detect_sector_size(&mut d).unwrap(), Some(4096));
    }

    #[test]
    fn blank_mbr_and_protective_only_are_distinct() {
        let mut d = disk(8 * MIB);
        assert!(matches!(Gpt::read(&mut d, 512), Err(GptError::NoTable)));

        // A DOS table: one Linux partition at 2048 of 4096 sectors.
        let b = d.get_mut();
        b[446] = 0x80;
        b[446 + 4] = 0x83;
        b[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        b[446 + 12..446 + 16].copy_from_slice(&4096u32.to_le_bytes());
        b[510] = 0x55;
        b[511] = 0xAA;
        match Gpt::read(&mut d, 512) {
            Err(GptError::MbrOnly(m)) => {
                assert_eq!(m.partitions.len(), 1);
                assert_eq!(m.partitions[0].type_byte, 0x83);
                assert!(m.partitions[0].bootable);
                assert_eq!(m.partitions[0].first_lba, 2048);
            }
            other => panic!("expected MbrOnly, got {other:?}"),
        }

        // Protective entry but no GPT headers: corrupt, not blank.
        d.get_mut()[446 + 4] = 0xEE;
        assert!(matches!(Gpt::read(&mut d, 512), Err(GptError::Corrupt(_))));
    }

    #[test]
    fn extended_partitions_are_followed() {
        let mut d = disk(16 * MIB);
        let b = d.get_mut();
        let put = |b: &mut [u8], at: usize, t: u8, start: u32, len: u32| {
            b[at + 4] = t;
            b[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
            b[at + 12..at + 16].copy_from_slice(&len.to_le_bytes());
        };
        put(b, 446, 0x07, 2048, 2048);
        put(b, 462, 0x05, 8192, 16384);
        b[510] = 0x55;
        b[511] = 0xAA;
        // EBR 1 at 8192: logical at +2048, next EBR at ext+8192.
        let e1 = 8192 * 512;
        put(b, e1 + 446, 0x83, 2048, 2048);
        put(b, e1 + 462, 0x05, 8192, 4096);
        b[e1 + 510] = 0x55;
        b[e1 + 511] = 0xAA;
        let e2 = (8192 + 8192) * 512;
        put(b, e2 + 446, 0x82, 2048, 1024);
        b[e2 + 510] = 0x55;
        b[e2 + 511] = 0xAA;
        let TableState::Mbr(m) = inspect(&mut d, 512).unwrap() else {
            panic!("expected MBR");
        };
        let got: Vec<(u32, u8, u64)> = m
            .partitions
            .iter()
            .map(|p| (p.number, p.type_byte, p.first_lba))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 0x07, 2048),
                (2, 0x05, 8192),
                (5, 0x83, 10240),
                (6, 0x82, 18432)
            ]
        );
    }

    /// Flip one byte and read again: must be a Corrupt naming the part.
    fn corrupt_at(offset: usize, ss: u32) -> Corruption {
        let g = sample(ss, 64 * MIB);
        let mut d = disk(64 * MIB);
        g.write(&mut d).unwrap();
        d.get_mut()[offset] ^= 0x5A;
        let before = d.get_ref().clone();
        let r = Gpt::read(&mut d, ss);
        assert_eq!(d.get_ref(), &before, "reading must never write");
        match r {
            Err(GptError::Corrupt(c)) => c,
            other => panic!("expected Corrupt after flipping byte {offset}, got {other:?}"),
        }
    }

    #[test]
    fn primary_header_crc_is_checked_and_backup_offered_as_information() {
        for ss in [512u32, 4096] {
            let c = corrupt_at(ss as usize + 40, ss);
            assert!(
                c.problems
                    .iter()
                    .any(|p| p == "primary header: CRC mismatch"),
                "{c}"
            );
            assert!(!c.primary_valid);
            assert!(c.backup_valid);
            assert!(c.to_string().contains("backup table is intact"));
        }
    }

    #[test]
    fn entry_array_crc_is_checked_on_both_copies() {
        let c = corrupt_at(2 * 512 + 128 + 60, 512);
        assert!(
            c.problems
                .iter()
                .any(|p| p == "primary entry array: CRC mismatch"),
            "{c}"
        );
        assert!(c.backup_valid && !c.primary_valid);
        let backup_array = 64 * MIB as usize - 33 * 512;
        let c = corrupt_at(backup_array + 5, 512);
        assert!(
            c.problems
                .iter()
                .any(|p| p == "backup entry array: CRC mismatch"),
            "{c}"
        );
        assert!(c.primary_valid && !c.backup_valid);
        assert!(c.to_string().contains("primary table is intact"));
    }

    #[test]
    fn a_grown_disk_has_no_backup_at_the_end() {
        let g = sample(512, 32 * MIB);
        let mut d = disk(32 * MIB);
        g.write(&mut d).unwrap();
        d.get_mut().resize(40 * MIB as usize, 0);
        let Err(GptError::Corrupt(c)) = Gpt::read(&mut d, 512) else {
            panic!("expected Corrupt");
        };
        assert!(
            c.problems
                .iter()
                .any(|p| p.contains("backup header missing")),
            "{c}"
        );
        assert!(
            c.problems
                .iter()
                .any(|p| p.contains("points to a backup at LBA")),
            "{c}"
        );
        assert!(c.primary_valid);
    }

    #[test]
    fn overlapping_entries_on_disk_are_reported() {
        // Write a valid table, then make partition 4 start inside 2 and fix
        // up both CRCs, as a buggy partitioner would.
        let mut g = sample(512, 64 * MIB);
        let mut p4 = g.remove(4).unwrap();
        p4.first_lba = 4 * 2048;
        g.partitions.push(p4);
        let mut d = disk(64 * MIB);
        g.write(&mut d).unwrap();
        let Err(GptError::Corrupt(c)) = Gpt::read(&mut d, 512) else {
            panic!("expected Corrupt");
        };
        assert!(
            c.problems.iter().any(|p| p == "partitions 2 and 4 overlap"),
            "{c}"
        );
    }

    #[test]
    fn no_byte_flip_in_the_headers_panics_or_passes_unnoticed() {
        let g = sample(512, 8 * MIB);
        let mut clean = disk(8 * MIB);
        g.write(&mut clean).unwrap();
        let last = 8 * MIB as usize - 512;
        for off in (512..512 + 92).chain(last..last + 92) {
            let mut d = clean.clone();
            d.get_mut()[off] ^= 0xFF;
            assert!(
                Gpt::read(&mut d, 512).is_err(),
                "flipping header byte {off} went unnoticed"
            );
        }
        // The reserved tail of a header sector is outside the CRC: harmless.
        let mut d = clean.clone();
        d.get_mut()[512 + 200] = 7;
        assert!(Gpt::read(&mut d, 512).is_ok());
    }

    #[test]
    fn bad_adds_are_refused() {
        let mut g = sample(512, 64 * MIB);
        let before = g.clone();
        let lu = g.last_usable();
        type Check = fn(&GptError) -> bool;
        let cases: Vec<(Partition, Check)> = vec![
            (
                Partition::new(3, types::LINUX_FS, 4 * 2048, 6 * 2048 - 1, "x"),
                |e| matches!(e, GptError::Overlap { other: 2, .. }),
            ),
            (
                Partition::new(3, types::LINUX_FS, 2048 + 1, 4096, "x"),
                |e| {
                    matches!(
                        e,
                        GptError::Misaligned {
                            alignment_lba: 2048,
                            ..
                        }
                    )
                },
            ),
            (Partition::new(3, types::LINUX_FS, 0, 100, "x"), |e| {
                matches!(e, GptError::OutOfBounds { .. })
            }),
            (Partition::new(3, types::LINUX_FS, 2048, lu + 1, "x"), |e| {
                matches!(e, GptError::OutOfBounds { .. })
            }),
            (Partition::new(2, types::LINUX_FS, 2048, 4095, "x"), |e| {
                matches!(e, GptError::SlotTaken { number: 2 })
            }),
            (Partition::new(0, types::LINUX_FS, 2048, 4095, "x"), |e| {
                matches!(e, GptError::SlotOutOfRange { .. })
            }),
            (Partition::new(129, types::LINUX_FS, 2048, 4095, "x"), |e| {
                matches!(e, GptError::SlotOutOfRange { max: 128, .. })
            }),
            (Partition::new(3, Uuid::nil(), 2048, 4095, "x"), |e| {
                matches!(e, GptError::NilType { .. })
            }),
            (Partition::new(3, types::LINUX_FS, 4096, 2048, "x"), |e| {
                matches!(e, GptError::EmptyRange { .. })
            }),
            (
                Partition::new(3, types::LINUX_FS, 2048, 4095, "x".repeat(37)),
                |e| matches!(e, GptError::NameTooLong { .. }),
            ),
        ];
        for (p, ok) in cases {
            let e = g.add(p.clone()).expect_err("add must fail");
            assert!(ok(&e), "{p:?} gave {e}");
        }
        let mut dup = Partition::new(3, types::LINUX_FS, 2048, 4095, "x");
        dup.unique_guid = g.partition(1).unwrap().unique_guid;
        assert!(matches!(g.add(dup), Err(GptError::DuplicateGuid { .. })));
        assert_eq!(g, before, "refused adds must leave the table unchanged");
        // Exactly 36 UTF-16 units fits; a full entry array refuses more.
        let mut g = Gpt::new(300 * MIB, 512).unwrap();
        g.add(Partition::new(
            1,
            types::LINUX_FS,
            2048,
            4095,
            "é".repeat(36),
        ))
        .unwrap();
        assert!(matches!(g.remove(7), Err(GptError::NoSuchPartition(7))));
        assert_eq!(g.remove(1).unwrap().name, "é".repeat(36));
    }

    #[test]
    fn alignment_can_be_changed_but_not_below_a_sector() {
        let mut g = Gpt::new(64 * MIB, 4096).unwrap();
        assert_eq!(g.alignment_lba(), 256);
        assert!(matches!(
            g.set_alignment(1000),
            Err(GptError::BadAlignment { .. })
        ));
        g.set_alignment(4096).unwrap();
        g.add(Partition::new(1, types::LINUX_FS, 7, 100, ""))
            .unwrap();
    }

    #[test]
    fn free_regions_with_odd_layouts() {
        // 512-byte sectors, 100 MiB: usable 34..=204766.
        let mut g = Gpt::new(100 * MIB, 512).unwrap();
        assert_eq!(
            g.free_regions(MIB),
            vec![FreeRegion {
                first_lba: 2048,
                last_lba: 204766
            }]
        );
        g.set_alignment(512).unwrap();
        // An old-style partition at 63, a sub-MiB gap, one starting mid-MiB,
        // slot numbers out of disk order.
        g.add(Partition::new(
            5,
            types::MS_BASIC_DATA,
            63,
            2047 + 2048 * 3,
            "",
        ))
        .unwrap(); // ends at LBA 8191
        g.add(Partition::new(
            2,
            types::LINUX_FS,
            8192 + 1000,
            8192 + 4095,
            "",
        ))
        .unwrap(); // a 1000-sector gap before it: too small for 1 MiB
        g.add(Partition::new(
            1,
            types::LINUX_SWAP,
            20 * 2048 + 7,
            30 * 2048,
            "",
        ))
        .unwrap(); // free 6 MiB..20 MiB+7 between 2 and 1
        g.add(Partition::new(
            3,
            types::LINUX_FS,
            30 * 2048 + 1,
            30 * 2048 + 2048,
            "",
        ))
        .unwrap(); // adjacent to 1
        let free = g.free_regions(MIB);
        assert_eq!(
            free,
            vec![
                FreeRegion {
                    first_lba: 6 * 2048,
                    last_lba: 20 * 2048 + 6
                },
                FreeRegion {
                    first_lba: 32 * 2048,
                    last_lba: 204766
                },
            ]
        );
        for r in &free {
            assert_eq!(r.first_lba % 2048, 0);
            for p in g.partitions() {
                assert!(r.last_lba < p.first_lba || r.first_lba > p.last_lba);
            }
        }
        assert_eq!(free[0].size_bytes(512), (14 * 2048 + 7) * 512);
        // A full disk has no free regions.
        let mut full = Gpt::new(100 * MIB, 512).unwrap();
        let lu = full.last_usable();
        full.add(Partition::new(1, types::LINUX_FS, 2048, lu, ""))
            .unwrap();
        assert!(full.free_regions(MIB).is_empty());
        // 4096-byte sectors: 1 MiB is 256 LBAs.
        let g = Gpt::new(10 * MIB, 4096).unwrap();
        assert_eq!(
            g.free_regions(MIB),
            vec![FreeRegion {
                first_lba: 256,
                last_lba: g.last_usable()
            }]
        );
    }

    #[test]
    fn a_table_is_only_written_to_a_device_of_its_size() {
        let g = Gpt::new(8 * MIB, 512).unwrap();
        let mut bigger = disk(9 * MIB);
        assert!(matches!(
            g.write(&mut bigger),
            Err(GptError::DeviceSize {
                expected: 16384,
                found: 18432
            })
        ));
        assert!(bigger.get_ref().iter().all(|&b| b == 0), "nothing written");
        // A size that is not a whole number of sectors rounds down.
        let g = Gpt::new(8 * MIB + 100, 512).unwrap();
        let mut d = disk(8 * MIB + 100);
        g.write(&mut d).unwrap();
        assert_eq!(Gpt::read(&mut d, 512).unwrap(), g);
    }

    #[test]
    fn tiny_disks_and_bad_sector_sizes_are_refused() {
        assert!(matches!(
            Gpt::new(16 * 1024, 512),
            Err(GptError::TooSmall { .. })
        ));
        assert!(matches!(Gpt::new(MIB, 520), Err(GptError::SectorSize(520))));
        // The smallest disk: both tables and one usable sector (512: a
        // 32-sector array). One sector less leaves no usable area.
        assert!(Gpt::new(68 * 512, 512).is_ok());
        assert!(matches!(
            Gpt::new(67 * 512, 512),
            Err(GptError::TooSmall { .. })
        ));
        assert_eq!(standard_usable_area(68, 512), (34, 34));
        let (first, last) = standard_usable_area(67, 512);
        assert!(last < first);
        assert_eq!(standard_usable_area(0, 4096), (6, 0));
        let mut d = disk(4096);
        assert!(matches!(
            inspect(&mut d, 3000),
            Err(GptError::SectorSize(3000))
        ));
        assert!(matches!(inspect(&mut d, 512), Ok(TableState::Blank)));
    }

    #[test]
    fn boot_code_is_kept_only_beside_a_protective_mbr() {
        let g = sample(512, 64 * MIB);
        // Fresh disk with foreign boot code and no table: zeroed.
        let mut d = disk(64 * MIB);
        d.get_mut()[..440].fill(0xCC);
        g.write(&mut d).unwrap();
        assert!(d.get_ref()[..440].iter().all(|&b| b == 0));
        // Now it is a GPT disk: boot code placed there survives a rewrite.
        d.get_mut()[..440].fill(0xAB);
        g.write(&mut d).unwrap();
        assert!(d.get_ref()[..440].iter().all(|&b| b == 0xAB));
        assert_eq!(Gpt::read(&mut d, 512).unwrap(), g);
    }

    /// `sgdisk -h 2:4` style: 0xEE first (LBA 1 up to partition 2), then
    /// entries for partitions 2 and 4 with MBR type bytes.
    fn hybridise(d: &mut Cursor<Vec<u8>>, g: &Gpt) {
        let b = d.get_mut();
        b[..440].fill(0xB0);
        let mut entry = |slot: usize, ty: u8, first: u64, last: u64| {
            let e = &mut b[446 + 16 * slot..462 + 16 * slot];
            e[4] = ty;
            e[8..12].copy_from_slice(&(first as u32).to_le_bytes());
            e[12..16].copy_from_slice(&((last + 1 - first) as u32).to_le_bytes());
        };
        let (p2, p4) = (g.partition(2).unwrap(), g.partition(4).unwrap());
        entry(0, 0xEE, 1, p2.first_lba - 1);
        entry(1, 0x0c, p2.first_lba, p2.last_lba);
        entry(2, 0x83, p4.first_lba, p4.first_lba + 2047);
        b[510] = 0x55;
        b[511] = 0xAA;
    }

    #[test]
    fn a_hybrid_mbr_is_kept_while_its_partitions_stay() {
        let mut g = sample(512, 64 * MIB);
        // Shrink the data partition so there is free space to add to.
        g.remove(4).unwrap();
        let data = Partition::new(4, types::RAYOS_DATA, 5 * 2048, 20 * 2048 - 1, "data");
        g.add(data).unwrap();
        let mut d = disk(64 * MIB);
        g.write(&mut d).unwrap();
        hybridise(&mut d, &g);
        let lba0 = d.get_ref()[..512].to_vec();
        // Still a valid GPT (not corrupt, not MBR), with the entries known.
        let mut read = Gpt::read(&mut d, 512).unwrap();
        let h = read.hybrid_mbr().unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!((h[0].number, h[0].type_byte), (2, 0x0c));
        assert_eq!((h[1].number, h[1].type_byte), (3, 0x83));
        // A partition added beside them: LBA 0 stays byte for byte.
        read.add(Partition::new(
            3,
            types::LINUX_FS,
            20 * 2048,
            30 * 2048 - 1,
            "new",
        ))
        .unwrap();
        read.write(&mut d).unwrap();
        assert_eq!(&d.get_ref()[..512], &lba0[..]);
        let again = Gpt::read(&mut d, 512).unwrap();
        assert_eq!(again.partitions().len(), 4);
        assert!(again.hybrid_mbr().is_some());
        // Changing (retyping), removing, or overlapping a covered partition
        // is refused before anything is written.
        let before = d.get_ref().clone();
        let mut retyped = again.clone();
        let mut p2 = retyped.remove(2).unwrap();
        p2.type_guid = types::RAYOS_DATA;
        retyped.add(p2).unwrap();
        let mut removed = again.clone();
        removed.remove(4).unwrap();
        let mut overlapping = removed.clone();
        overlapping
            .add(Partition::new(
                4,
                types::LINUX_FS,
                5 * 2048,
                6 * 2048 - 1,
                "x",
            ))
            .unwrap();
        for (what, t, number) in [
            ("retyped", retyped, 2),
            ("removed", removed, 4),
            ("overlapping", overlapping, 4),
        ] {
            match t.write(&mut d) {
                Err(GptError::HybridMbr { number: n, .. }) => assert_eq!(n, number, "{what}"),
                other => panic!("{what}: {other:?}"),
            }
            assert!(d.get_ref() == &before, "{what}: written anyway");
        }
        // A fresh table (whole disk) writes a protective MBR.
        Gpt::new(64 * MIB, 512).unwrap().write(&mut d).unwrap();
        assert!(Gpt::read(&mut d, 512).unwrap().hybrid_mbr().is_none());
        assert_eq!(d.get_ref()[446 + 4], 0xEE);
        assert_eq!(d.get_ref()[446 + 16 + 4], 0);
    }

    #[test]
    fn one_copy_can_be_read_explicitly_after_an_interrupted_write() {
        // Old table everywhere, then a new primary only: what a power cut
        // between the primary and the backup write leaves behind.
        let old = sample(512, 64 * MIB);
        let mut d = disk(64 * MIB);
        old.write(&mut d).unwrap();
        let mut new = old.clone();
        new.remove(4).unwrap();
        let mut half = disk(64 * MIB);
        new.write(&mut half).unwrap();
        let primary_bytes = 34 * 512;
        d.get_mut()[512..primary_bytes].copy_from_slice(&half.get_ref()[512..primary_bytes]);
        let Err(GptError::Corrupt(c)) = Gpt::read(&mut d, 512) else {
            panic!("a half-written table must not read as valid");
        };
        assert!(
            c.problems
                .iter()
                .any(|p| p == "primary and backup tables disagree"),
            "{c}"
        );
        assert!(c.primary_valid && c.backup_valid);
        assert_eq!(
            Gpt::read_copy(&mut d, 512, TableCopy::Primary).unwrap(),
            new
        );
        assert_eq!(Gpt::read_copy(&mut d, 512, TableCopy::Backup).unwrap(), old);
        // Writing the chosen copy makes the disk whole again.
        new.write(&mut d).unwrap();
        assert_eq!(Gpt::read(&mut d, 512).unwrap(), new);
        // A missing copy is an error naming it.
        let mut blank = disk(MIB);
        let Err(GptError::Corrupt(c)) = Gpt::read_copy(&mut blank, 512, TableCopy::Backup) else {
            panic!("expected Corrupt");
        };
        assert_eq!(
            c.problems,
            vec!["backup header missing at LBA 2047".to_string()]
        );
    }

    /// Recompute both headers' CRCs and the entry-array CRCs they carry, so
    /// mutations reach the checks behind the CRCs.
    fn fix_crcs(b: &mut [u8], ss: usize) {
        let total = b.len() / ss;
        for lba in [1, total - 1] {
            let h = lba * ss;
            if &b[h..h + 8] != SIGNATURE {
                continue;
            }
            let count = u32_at(b, h + 80) as usize;
            let size = u32_at(b, h + 84) as usize;
            let array = u64_at(b, h + 72) as usize;
            if let Some(end) = count
                .checked_mul(size)
                .filter(|n| *n <= 1 << 20)
                .and_then(|n| array.checked_mul(ss)?.checked_add(n))
                .filter(|end| *end <= b.len())
            {
                let crc = crc32(&b[array * ss..end]);
                b[h + 88..h + 92].copy_from_slice(&crc.to_le_bytes());
            }
            let hs = (u32_at(b, h + 12) as usize).clamp(92, ss);
            b[h + 16..h + 20].fill(0);
            let crc = crc32(&b[h..h + hs]);
            b[h + 16..h + 20].copy_from_slice(&crc.to_le_bytes());
        }
    }

    #[test]
    fn mutated_tables_never_panic_and_accepted_ones_round_trip() {
        // A poor man's fuzzer (cargo-fuzz target: fuzz/fuzz_targets/gpt.rs):
        // deterministic byte mutations of a valid table, with CRCs fixed up
        // half the time so the checks behind them are reached.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for ss in [512usize, 4096] {
            let bytes = 512 * 1024;
            let mut g = Gpt::new(bytes, ss as u32).unwrap();
            g.set_alignment(ss as u64).unwrap();
            let f = g.first_usable();
            g.add(Partition::new(1, types::ESP, f, f + 9, "a")).unwrap();
            g.add(Partition::new(3, types::LINUX_FS, f + 20, f + 29, "b"))
                .unwrap();
            let mut clean = disk(bytes);
            g.write(&mut clean).unwrap();
            let total = bytes as usize / ss;
            // Bytes that matter: MBR, both headers, the first entries of both arrays.
            let hot: Vec<usize> = (0..512)
                .chain(ss..ss + 92)
                .chain(2 * ss..2 * ss + 384)
                .chain((total - 1) * ss..(total - 1) * ss + 92)
                .chain((total - 1) * ss - 16384..(total - 1) * ss - 16384 + 384)
                .collect();
            let mut accepted = 0;
            for round in 0..1500 {
                let mut d = clean.clone();
                for _ in 0..1 + rnd() % 4 {
                    let at = hot[(rnd() % hot.len() as u64) as usize];
                    d.get_mut()[at] = rnd() as u8;
                }
                if round % 2 == 0 {
                    fix_crcs(d.get_mut(), ss);
                }
                if let Ok(TableState::Gpt(found)) = inspect(&mut d, ss as u32) {
                    accepted += 1;
                    let mut out = disk(bytes);
                    found.write(&mut out).unwrap();
                    assert_eq!(Gpt::read(&mut out, ss as u32).unwrap(), found);
                    for r in found.free_regions(MIB) {
                        assert!(
                            r.first_lba >= found.first_usable()
                                && r.last_lba <= found.last_usable()
                        );
                    }
                }
                let _ = Gpt::read_copy(&mut d, ss as u32, TableCopy::Backup);
                let _ = Gpt::read_copy(&mut d, ss as u32, TableCopy::Primary);
            }
            // Some mutations (names, GUIDs, attributes) are valid tables:
            // the round-trip branch must have run.
            assert!(
                accepted > 50,
                "only {accepted} mutated tables accepted at {ss}"
            );
        }
    }
}
