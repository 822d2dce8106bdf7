//! FAT geometry from the boot sector (BPB), checked against the partition
//! that holds it, and the allocation map from the FAT — what the installer
//! needs before it lets mtools write into a FAT it did not just make.
//!
//! Protocol (Microsoft's FAT specification): the BPB gives bytes per sector
//! (11), sectors per cluster (13), reserved sectors (14), the number of FATs
//! (16), root-directory entries (17, FAT12/16), total sectors (19, or 32
//! when that is 0), FAT size in sectors (22, or 36 on FAT32). The data area
//! follows the reserved sectors, the FATs and the root directory; its
//! clusters are numbered from 2. A BPB without the 16-bit FAT size is
//! FAT32 (as Linux and mtools read it, also for the small FAT32 volumes
//! `mkfs.fat -F 32` makes); otherwise fewer than 4085 clusters is FAT12,
//! else FAT16.
//!
//! Behaviour: [`Geometry::parse`] accepts a boot sector only when every
//! field is in range and the parts fit together (the FATs hold an entry for
//! every cluster, the data area is not empty); [`Geometry::check_within`]
//! refuses a filesystem that claims more bytes than its partition has — a
//! writer trusting such a BPB writes into the next partition. Nothing here
//! panics on any input (fuzzed with the GPT target's bytes in unit tests).
//!
//! [`Geometry::walk`] reads the directory tree (which clusters are
//! directories, every file's directory entry), so the installer can tell a
//! UKI's clusters from the directories mtools changes; it follows no chain
//! into a cluster seen before, so a damaged FAT stops it instead of
//! looping.
//!
//! Limits: the walk checks no names or sizes (fsck.fat judges the tree);
//! the first FAT is the one read; the FAT32 "active FAT" flag is ignored
//! (mirroring is the norm).

use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;

/// Why a boot sector does not describe a usable FAT, or not inside its
/// partition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FatError {
    /// The boot sector is shorter than a sector.
    #[error("the boot sector is cut short")]
    Truncated,
    /// No `55 AA` at the end of the boot sector.
    #[error("no boot signature (55 AA) at the end of the boot sector")]
    NoSignature,
    /// A boot sector field has a value no FAT has.
    #[error("{field} is {value}, which no FAT filesystem has")]
    BadField {
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The metadata fills the whole filesystem.
    #[error(
        "its reserved sectors, FATs and root directory ({meta} sectors) leave no data area in its {total} sectors"
    )]
    NoDataArea {
        /// Sectors before the data area.
        meta: u64,
        /// Sectors in the filesystem.
        total: u64,
    },
    /// The FATs cannot map every cluster.
    #[error("its FATs ({fat_sectors} sectors each) are too small for its {clusters} clusters")]
    FatTooSmall {
        /// Sectors of each FAT.
        fat_sectors: u64,
        /// Clusters in the data area.
        clusters: u64,
    },
    /// The filesystem is larger than its partition.
    #[error(
        "the filesystem claims {fs_bytes} bytes ({total} sectors of {bps} bytes), but the partition has only {partition_bytes}: it ends {excess} bytes inside whatever follows the partition"
    )]
    LargerThanPartition {
        /// Sectors the filesystem claims.
        total: u64,
        /// Its bytes per sector.
        bps: u64,
        /// Bytes the filesystem claims.
        fs_bytes: u64,
        /// Bytes the partition has.
        partition_bytes: u64,
        /// How far the filesystem runs past the partition, in bytes.
        excess: u64,
    },
    /// Reading the boot sector failed; holds the error's kind.
    #[error("reading the boot sector failed: {0}")]
    Read(io::ErrorKind),
}

/// FAT12, FAT16 or FAT32, by cluster count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum FatKind {
    /// FAT12: a 16-bit FAT size and fewer than 4085 clusters.
    Fat12,
    /// FAT16: a 16-bit FAT size and 4085 clusters or more.
    Fat16,
    /// FAT32: the 16-bit FAT size is 0.
    Fat32,
}

/// A checked BPB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Geometry {
    /// FAT12, FAT16 or FAT32.
    pub kind: FatKind,
    /// Bytes per sector (512 to 4096).
    pub bytes_per_sector: u64,
    /// Sectors per cluster (a power of two).
    pub sectors_per_cluster: u64,
    /// Sectors before the first FAT (the boot sector among them).
    pub reserved_sectors: u64,
    /// How many FATs (copies of the table).
    pub fats: u64,
    /// Sectors of each FAT.
    pub fat_sectors: u64,
    /// Sectors of the root directory (0 on FAT32, whose root is a cluster
    /// chain).
    pub root_dir_sectors: u64,
    /// Sectors in the filesystem.
    pub total_sectors: u64,
    /// Clusters in the data area (numbered 2..clusters + 2).
    pub clusters: u64,
    /// The root directory's first cluster (FAT32; 0 on FAT12/16, whose
    /// root directory is the fixed area after the FATs).
    pub root_cluster: u64,
}

/// Why [`Geometry::walk`] could not read the directory tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// A cluster chain leads outside the data area, to a free or bad
    /// cluster, or into a cluster already seen (a loop or a cross-link).
    #[error("the cluster chain from cluster {start} is broken at cluster {at}")]
    BrokenChain {
        /// The chain's first cluster.
        start: u64,
        /// Where it breaks.
        at: u64,
    },
    /// Reading a directory failed; holds the error's kind.
    #[error("reading a directory failed: {0}")]
    Read(io::ErrorKind),
}

/// The directory tree's layout ([`Geometry::walk`]): where directories
/// are and what every file's directory entry says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    /// The clusters of every directory (not the FAT12/16 root, which is
    /// in the metadata area).
    pub dir_clusters: std::collections::BTreeSet<u64>,
    /// Every file's 32-byte directory entry (short entry), by where it is
    /// in bytes from the filesystem's start.
    pub files: std::collections::BTreeMap<u64, [u8; 32]>,
}

fn le16(b: &[u8], at: usize) -> u64 {
    u16::from_le_bytes([b[at], b[at + 1]]) as u64
}

fn le32(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as u64
}

impl Geometry {
    /// Parses and checks the BPB in `boot` (the first 512 bytes or more of
    /// the filesystem).
    pub fn parse(boot: &[u8]) -> Result<Geometry, FatError> {
        let b = boot.get(..512).ok_or(FatError::Truncated)?;
        if b[510..512] != [0x55, 0xAA] {
            return Err(FatError::NoSignature);
        }
        let bad = |field, value| Err(FatError::BadField { field, value });
        let bps = le16(b, 11);
        if !matches!(bps, 512 | 1024 | 2048 | 4096) {
            return bad("bytes per sector", bps);
        }
        let spc = b[13] as u64;
        if !spc.is_power_of_two() || spc > 128 {
            return bad("sectors per cluster", spc);
        }
        let reserved = le16(b, 14);
        if reserved == 0 {
            return bad("reserved sectors", 0);
        }
        let fats = b[16] as u64;
        if !(1..=4).contains(&fats) {
            return bad("number of FATs", fats);
        }
        let root_entries = le16(b, 17);
        let total = match le16(b, 19) {
            0 => le32(b, 32),
            t => t,
        };
        if total == 0 {
            return bad("total sectors", 0);
        }
        let fat16_sectors = le16(b, 22);
        let fat_sectors = match fat16_sectors {
            0 => le32(b, 36),
            f => f,
        };
        if fat_sectors == 0 {
            return bad("sectors per FAT", 0);
        }
        let root_dir_sectors = (root_entries * 32).div_ceil(bps);
        // u64 cannot overflow here: every term is at most 2^32 * 4.
        let meta = reserved + fats * fat_sectors + root_dir_sectors;
        if meta >= total {
            return Err(FatError::NoDataArea { meta, total });
        }
        let clusters = (total - meta) / spc;
        if clusters == 0 {
            return Err(FatError::NoDataArea { meta, total });
        }
        // As Linux and mtools decide (not by cluster count alone): a BPB
        // with no 16-bit FAT size is FAT32, even a small one mkfs.fat -F 32
        // made; otherwise the cluster count tells FAT12 from FAT16.
        let kind = if fat16_sectors == 0 {
            FatKind::Fat32
        } else if clusters < 4085 {
            FatKind::Fat12
        } else {
            FatKind::Fat16
        };
        if kind == FatKind::Fat32 && root_entries != 0 {
            return bad("root entries of a FAT32", root_entries);
        }
        if kind != FatKind::Fat32 && root_entries == 0 {
            return bad("root entries of a FAT12/16", 0);
        }
        // Not checked here (mtools and fsck.fat judge the tree): a root
        // outside the data area only stops `walk`.
        let root_cluster = if kind == FatKind::Fat32 {
            le32(b, 44) & 0x0FFF_FFFF
        } else {
            0
        };
        let g = Geometry {
            root_cluster,
            kind,
            bytes_per_sector: bps,
            sectors_per_cluster: spc,
            reserved_sectors: reserved,
            fats,
            fat_sectors,
            root_dir_sectors,
            total_sectors: total,
            clusters,
        };
        let entries = fat_sectors * bps * 8 / g.entry_bits();
        if entries < clusters + 2 {
            return Err(FatError::FatTooSmall {
                fat_sectors,
                clusters,
            });
        }
        Ok(g)
    }

    /// Reads the boot sector at `offset` of `dev` and parses it.
    pub fn read<D: Read + Seek>(dev: &mut D, offset: u64) -> Result<Geometry, FatError> {
        let mut b = [0u8; 512];
        dev.seek(SeekFrom::Start(offset))
            .and_then(|_| dev.read_exact(&mut b))
            .map_err(|e| FatError::Read(e.kind()))?;
        Geometry::parse(&b)
    }

    fn entry_bits(&self) -> u64 {
        match self.kind {
            FatKind::Fat12 => 12,
            FatKind::Fat16 => 16,
            FatKind::Fat32 => 32,
        }
    }

    /// Bytes the filesystem spans from its first sector.
    pub fn size_bytes(&self) -> u64 {
        self.total_sectors * self.bytes_per_sector
    }

    /// Refuses a filesystem that claims more than `partition_bytes`.
    pub fn check_within(&self, partition_bytes: u64) -> Result<(), FatError> {
        let fs_bytes = self.size_bytes();
        if fs_bytes > partition_bytes {
            return Err(FatError::LargerThanPartition {
                total: self.total_sectors,
                bps: self.bytes_per_sector,
                fs_bytes,
                partition_bytes,
                excess: fs_bytes - partition_bytes,
            });
        }
        Ok(())
    }

    /// Bytes of the boot area, FATs and root directory: everything before
    /// the first cluster.
    pub fn metadata_bytes(&self) -> u64 {
        (self.reserved_sectors + self.fats * self.fat_sectors + self.root_dir_sectors)
            * self.bytes_per_sector
    }

    /// Bytes per cluster.
    pub fn cluster_bytes(&self) -> u64 {
        self.sectors_per_cluster * self.bytes_per_sector
    }

    /// Where the first FAT is, in bytes from the filesystem's start: the
    /// part that holds entries for the clusters (a FAT may be larger than
    /// its clusters need; the rest is never read).
    pub fn fat_range(&self) -> Range<u64> {
        let start = self.reserved_sectors * self.bytes_per_sector;
        let needed = ((self.clusters + 2) * self.entry_bits()).div_ceil(8);
        start..start + needed.min(self.fat_sectors * self.bytes_per_sector)
    }

    /// Where cluster `n` (2..clusters + 2) is, in bytes from the
    /// filesystem's start.
    pub fn cluster_range(&self, n: u64) -> Range<u64> {
        let start = self.metadata_bytes() + (n - 2) * self.cluster_bytes();
        start..start + self.cluster_bytes()
    }

    /// The clusters in use according to `fat` (the bytes of one FAT): every
    /// entry that is neither free (0) nor marked bad.
    pub fn allocated(&self, fat: &[u8]) -> Vec<u64> {
        let bad = match self.kind {
            FatKind::Fat12 => 0xFF7,
            FatKind::Fat16 => 0xFFF7,
            FatKind::Fat32 => 0x0FFF_FFF7,
        };
        // No further than the FAT given holds entries for.
        let end = (self.clusters + 2).min(fat.len() as u64 * 8 / self.entry_bits());
        (2..end)
            .filter(|&n| self.entry(fat, n).is_some_and(|v| v != 0 && v != bad))
            .collect()
    }

    /// The chain of clusters from `start`, following `fat`; every cluster
    /// is added to `seen`, and one seen before breaks the chain (no loop
    /// or cross-link is followed).
    pub fn chain(
        &self,
        fat: &[u8],
        start: u64,
        seen: &mut std::collections::BTreeSet<u64>,
    ) -> Result<Vec<u64>, WalkError> {
        let end_mark = match self.kind {
            FatKind::Fat12 => 0xFF8,
            FatKind::Fat16 => 0xFFF8,
            FatKind::Fat32 => 0x0FFF_FFF8,
        };
        let mut out = Vec::new();
        let mut n = start;
        loop {
            let broken = WalkError::BrokenChain { start, at: n };
            if !(2..self.clusters + 2).contains(&n) || !seen.insert(n) {
                return Err(broken);
            }
            out.push(n);
            match self.entry(fat, n) {
                Some(next) if next >= end_mark => return Ok(out),
                // Free (0), reserved (1) and bad clusters end no chain;
                // the range check above refuses them on the next turn.
                Some(next) => n = next,
                None => return Err(broken),
            }
        }
    }

    /// FAT entry `n`, or `None` past the end of `fat` (or of the data
    /// area).
    pub fn entry_of(&self, fat: &[u8], n: u64) -> Option<u64> {
        if n >= self.clusters + 2 {
            return None;
        }
        self.entry(fat, n)
    }

    /// Walks the directory tree from the root: every directory's clusters
    /// and every file's directory entry. `read` returns the bytes of a
    /// range (from the filesystem's start). Read-only, for telling
    /// directories from file data; deleted entries, long-name entries, the
    /// volume label and `.`/`..` are skipped.
    pub fn walk(
        &self,
        fat: &[u8],
        mut read: impl FnMut(Range<u64>) -> io::Result<Vec<u8>>,
    ) -> Result<Tree, WalkError> {
        let mut tree = Tree::default();
        let mut seen = std::collections::BTreeSet::new();
        // Directories to read: byte ranges, each with the entries' offset.
        let mut todo: Vec<Vec<Range<u64>>> = Vec::new();
        if self.kind == FatKind::Fat32 {
            todo.push(self.dir_ranges(fat, self.root_cluster, &mut seen, &mut tree)?);
        } else {
            let start =
                (self.reserved_sectors + self.fats * self.fat_sectors) * self.bytes_per_sector;
            let end = start + self.root_dir_sectors * self.bytes_per_sector;
            todo.push(std::iter::once(start..end).collect());
        }
        while let Some(ranges) = todo.pop() {
            'dir: for r in ranges {
                let bytes = read(r.clone()).map_err(|e| WalkError::Read(e.kind()))?;
                for (i, e) in bytes.chunks_exact(32).enumerate() {
                    let attr = e[11];
                    match e[0] {
                        0x00 => break 'dir,
                        0xE5 | b'.' => continue,
                        _ if attr & 0x0F == 0x0F || attr & 0x08 != 0 => continue,
                        _ => {}
                    }
                    let hi = if self.kind == FatKind::Fat32 {
                        le16(e, 20)
                    } else {
                        0
                    };
                    let first = (hi << 16) | le16(e, 26);
                    if attr & 0x10 != 0 {
                        if first != 0 {
                            todo.push(self.dir_ranges(fat, first, &mut seen, &mut tree)?);
                        }
                    } else {
                        let mut entry = [0u8; 32];
                        entry.copy_from_slice(e);
                        tree.files.insert(r.start + 32 * i as u64, entry);
                    }
                }
            }
        }
        Ok(tree)
    }

    /// A directory's clusters as byte ranges, recorded in `tree`.
    fn dir_ranges(
        &self,
        fat: &[u8],
        first: u64,
        seen: &mut std::collections::BTreeSet<u64>,
        tree: &mut Tree,
    ) -> Result<Vec<Range<u64>>, WalkError> {
        let chain = self.chain(fat, first, seen)?;
        tree.dir_clusters.extend(chain.iter().copied());
        Ok(chain.into_iter().map(|c| self.cluster_range(c)).collect())
    }

    /// FAT entry `n`, or `None` past the end of `fat`.
    fn entry(&self, fat: &[u8], n: u64) -> Option<u64> {
        let n = usize::try_from(n).ok()?;
        Some(match self.kind {
            FatKind::Fat12 => {
                let at = n + n / 2;
                let v = u16::from_le_bytes([*fat.get(at)?, *fat.get(at + 1)?]) as u64;
                if n % 2 == 0 { v & 0xFFF } else { v >> 4 }
            }
            FatKind::Fat16 => u16::from_le_bytes([*fat.get(2 * n)?, *fat.get(2 * n + 1)?]) as u64,
            FatKind::Fat32 => {
                let b = fat.get(4 * n..4 * n + 4)?;
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64 & 0x0FFF_FFFF
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The boot sector `mkfs.fat -F 32 -s 8` writes for 1 GiB (2097152
    /// sectors): 32 reserved, 2 FATs of 2048 sectors.
    fn fat32(total: u32) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0] = 0xEB;
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[13] = 8;
        b[14..16].copy_from_slice(&32u16.to_le_bytes());
        b[16] = 2;
        b[32..36].copy_from_slice(&total.to_le_bytes());
        b[36..40].copy_from_slice(&2048u32.to_le_bytes());
        b[44..48].copy_from_slice(&2u32.to_le_bytes());
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    #[test]
    fn a_fat32_bpb_and_its_partition() {
        let g = Geometry::parse(&fat32(2_097_152)).unwrap();
        assert_eq!(g.kind, FatKind::Fat32);
        assert_eq!(g.metadata_bytes(), (32 + 2 * 2048) * 512);
        assert_eq!(g.clusters, (2_097_152 - 32 - 4096) / 8);
        assert_eq!(g.size_bytes(), 1 << 30);
        assert!(g.check_within(1 << 30).is_ok());
        // The partition was shrunk under it by one MiB.
        let e = g.check_within((1 << 30) - (1 << 20)).unwrap_err();
        assert!(matches!(e, FatError::LargerThanPartition { excess, .. } if excess == 1 << 20));
        assert!(e.to_string().contains("inside whatever follows"), "{e}");
    }

    #[test]
    fn fat_entries_of_each_kind() {
        let mut b = fat32(2_097_152);
        let g = Geometry::parse(&b).unwrap();
        let mut fat = vec![0u8; 64];
        fat[8..12].copy_from_slice(&0x0FFF_FFFFu32.to_le_bytes()); // 2: end
        fat[16..20].copy_from_slice(&0x0FFF_FFF7u32.to_le_bytes()); // 4: bad
        fat[20..24].copy_from_slice(&6u32.to_le_bytes()); // 5 -> 6
        assert_eq!(g.allocated(&fat), vec![2, 5]);
        // FAT12: entries 2 and 3 share three bytes.
        b[13] = 1;
        b[19..21].copy_from_slice(&2880u16.to_le_bytes());
        b[17..19].copy_from_slice(&224u16.to_le_bytes());
        b[22..24].copy_from_slice(&9u16.to_le_bytes());
        let g = Geometry::parse(&b).unwrap();
        assert_eq!(g.kind, FatKind::Fat12);
        let fat = [0xF0, 0xFF, 0xFF, 0x03, 0x40, 0x00, 0x00, 0x00, 0x00];
        assert_eq!(g.allocated(&fat), vec![2, 3]);
        assert_eq!(g.cluster_range(3).start, g.metadata_bytes() + 512);
    }

    #[test]
    fn broken_bpbs_are_refused_and_nothing_panics() {
        assert_eq!(Geometry::parse(&[0u8; 100]), Err(FatError::Truncated));
        assert_eq!(Geometry::parse(&[0u8; 512]), Err(FatError::NoSignature));
        let good = fat32(2_097_152);
        for (at, v) in [(12, 0u8), (13, 3), (14, 0), (16, 0), (36, 0), (37, 0)] {
            let mut b = good.clone();
            b[at] = v;
            if at == 14 {
                b[15] = 0;
            }
            if at == 36 {
                b[37] = 0;
            }
            assert!(Geometry::parse(&b).is_err(), "byte {at} = {v}");
        }
        // A FAT too small for the clusters.
        let mut b = good.clone();
        b[36..40].copy_from_slice(&16u32.to_le_bytes());
        assert!(matches!(
            Geometry::parse(&b),
            Err(FatError::FatTooSmall { .. })
        ));
        // Every byte flipped to a few values: an answer, never a panic, and
        // every accepted geometry's metadata fits its total size.
        for at in 0..512 {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut b = good.clone();
                b[at] = v;
                if let Ok(g) = Geometry::parse(&b) {
                    assert!(g.metadata_bytes() < g.size_bytes());
                    let fat = vec![0xffu8; 4096];
                    let _ = g.allocated(&fat);
                }
            }
        }
    }

    #[test]
    fn chains_end_at_the_end_mark_and_loops_break_them() {
        let g = Geometry::parse(&fat32(2_097_152)).unwrap();
        let mut fat = vec![0u8; 4 * 16];
        let set = |fat: &mut Vec<u8>, n: usize, v: u32| {
            fat[4 * n..4 * n + 4].copy_from_slice(&v.to_le_bytes())
        };
        set(&mut fat, 2, 3);
        set(&mut fat, 3, 0x0FFF_FFFF);
        set(&mut fat, 5, 6);
        set(&mut fat, 6, 5);
        set(&mut fat, 7, 0);
        let mut seen = std::collections::BTreeSet::new();
        assert_eq!(g.chain(&fat, 2, &mut seen).unwrap(), [2, 3]);
        // A cross-link into a chain already seen, a loop, a free cluster.
        assert!(g.chain(&fat, 3, &mut seen).is_err());
        assert!(
            g.chain(&fat, 5, &mut std::collections::BTreeSet::new())
                .is_err()
        );
        assert!(
            g.chain(&fat, 7, &mut std::collections::BTreeSet::new())
                .is_err()
        );
        assert_eq!(g.entry_of(&fat, 3), Some(0x0FFF_FFFF));
        assert_eq!(g.entry_of(&fat, g.clusters + 2), None);
    }
}
