//! Filesystem detection from the first bytes of a partition (or a whole
//! disk), the way `blkid` does it: fixed magic numbers at fixed offsets, then
//! the label and UUID from the same superblock.
//!
//! Behaviour: [`probe`] reads at most the first 68 KiB of the range (plus one
//! MFT record for an NTFS label) and never past `len`. Unknown content is
//! `Ok(None)`, not an error. Checks are ordered so that a signature inside
//! another filesystem's area does not win (LUKS, XFS and NTFS, whose magic
//! sits at byte 0, before FAT, whose test is a plausibility check of the
//! BPB).
//!
//! Limits: FAT labels come from the boot sector (what `mkfs.fat -n` and
//! Windows' format set; a label changed later only in the root directory is
//! not seen). exFAT and BitLocker volumes are recognised without label.
//! No checksum verification of superblocks: this is identification, not fsck.

use std::io::{self, Read, Seek, SeekFrom};

/// Errors of probing.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Reading the partition failed.
    #[error("reading the partition at byte {offset} failed")]
    Read {
        /// Where, in bytes from the partition's start.
        offset: u64,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// A recognised filesystem or container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filesystem {
    /// FAT12.
    Fat12,
    /// FAT16.
    Fat16,
    /// FAT32 (an EFI system partition's filesystem).
    Fat32,
    /// exFAT.
    Exfat,
    /// NTFS (Windows).
    Ntfs,
    /// ext2.
    Ext2,
    /// ext3 (ext2 with a journal).
    Ext3,
    /// ext4.
    Ext4,
    /// Linux swap.
    Swap,
    /// Btrfs.
    Btrfs,
    /// XFS.
    Xfs,
    /// LUKS1 (dm-crypt encrypted).
    Luks1,
    /// LUKS2 (dm-crypt encrypted).
    Luks2,
    /// BitLocker (Windows encrypted).
    Bitlocker,
    /// ISO 9660 (CD image).
    Iso9660,
    /// An LVM physical volume.
    LvmPv,
}

impl Filesystem {
    /// Short human name ("FAT32", "ext4", "NTFS", ...).
    pub fn name(self) -> &'static str {
        match self {
            Filesystem::Fat12 => "FAT12",
            Filesystem::Fat16 => "FAT16",
            Filesystem::Fat32 => "FAT32",
            Filesystem::Exfat => "exFAT",
            Filesystem::Ntfs => "NTFS",
            Filesystem::Ext2 => "ext2",
            Filesystem::Ext3 => "ext3",
            Filesystem::Ext4 => "ext4",
            Filesystem::Swap => "swap",
            Filesystem::Btrfs => "btrfs",
            Filesystem::Xfs => "XFS",
            Filesystem::Luks1 => "LUKS1",
            Filesystem::Luks2 => "LUKS2",
            Filesystem::Bitlocker => "BitLocker",
            Filesystem::Iso9660 => "ISO 9660",
            Filesystem::LvmPv => "LVM PV",
        }
    }

    /// Whether it is FAT12, FAT16 or FAT32.
    pub fn is_fat(self) -> bool {
        matches!(
            self,
            Filesystem::Fat12 | Filesystem::Fat16 | Filesystem::Fat32
        )
    }

    /// Filesystems Linux installs live on.
    pub fn is_linux_native(self) -> bool {
        matches!(
            self,
            Filesystem::Ext2
                | Filesystem::Ext3
                | Filesystem::Ext4
                | Filesystem::Btrfs
                | Filesystem::Xfs
                | Filesystem::Swap
                | Filesystem::Luks1
                | Filesystem::Luks2
                | Filesystem::LvmPv
        )
    }
}

impl std::fmt::Display for Filesystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`probe`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FsInfo {
    /// What it is.
    pub filesystem: Filesystem,
    /// Its label, if it has one.
    pub label: Option<String>,
    /// In the form `blkid` prints it (a UUID for ext/btrfs/xfs/LUKS/swap,
    /// `XXXX-XXXX` for FAT, 16 hex digits for NTFS).
    pub uuid: Option<String>,
}

const WINDOW: u64 = 0x11000;

/// Identify the filesystem in `len` bytes of `dev` starting at `offset`.
pub fn probe<D: Read + Seek>(
    dev: &mut D,
    offset: u64,
    len: u64,
) -> Result<Option<FsInfo>, ProbeError> {
    let want = WINDOW.min(len) as usize;
    let b = read_window(dev, offset, want)?;
    let b = &b[..];
    if b.len() < 512 {
        return Ok(None);
    }
    if let Some(i) = probe_luks(b) {
        return Ok(Some(i));
    }
    if &b[0..4] == b"XFSB" {
        return Ok(Some(FsInfo {
            filesystem: Filesystem::Xfs,
            label: text(&b[108..120]),
            uuid: Some(uuid_be(&b[32..48])),
        }));
    }
    if &b[3..11] == b"NTFS    " {
        let label = ntfs_label(dev, offset, len, b)?;
        return Ok(Some(FsInfo {
            filesystem: Filesystem::Ntfs,
            label,
            uuid: Some(format!("{:016X}", le64(b, 0x48))),
        }));
    }
    if &b[3..11] == b"-FVE-FS-" {
        return Ok(Some(FsInfo {
            filesystem: Filesystem::Bitlocker,
            label: None,
            uuid: None,
        }));
    }
    if &b[3..11] == b"EXFAT   " {
        return Ok(Some(FsInfo {
            filesystem: Filesystem::Exfat,
            label: None,
            uuid: Some(fat_serial(le32(b, 100))),
        }));
    }
    if let Some(i) = probe_fat(b) {
        return Ok(Some(i));
    }
    if b.len() >= 1024 + 24 && &b[512 + 24..512 + 32] == b"LVM2 001" && &b[512..520] == b"LABELONE"
    {
        return Ok(Some(FsInfo {
            filesystem: Filesystem::LvmPv,
            label: None,
            uuid: text(&b[512 + 32..512 + 64]),
        }));
    }
    if b.len() >= 2048 && le16(b, 1024 + 56) == 0xEF53 {
        return Ok(Some(probe_ext(&b[1024..2048])));
    }
    for page in [4096usize, 8192, 16384, 65536] {
        if b.len() >= page && matches!(&b[page - 10..page], b"SWAPSPACE2" | b"SWAP-SPACE") {
            return Ok(Some(FsInfo {
                filesystem: Filesystem::Swap,
                label: text(&b[1024 + 28..1024 + 44]),
                uuid: nonzero(&b[1024 + 12..1024 + 28]).map(uuid_be),
            }));
        }
    }
    if b.len() >= 0x8000 + 0x800 && &b[0x8001..0x8006] == b"CD001" {
        return Ok(Some(FsInfo {
            filesystem: Filesystem::Iso9660,
            label: text(&b[0x8028..0x8048]),
            uuid: None,
        }));
    }
    let sb = 0x10000;
    if b.len() >= sb + 0x1000 && &b[sb + 0x40..sb + 0x48] == b"_BHRfS_M" {
        return Ok(Some(FsInfo {
            filesystem: Filesystem::Btrfs,
            label: text(&b[sb + 0x12b..sb + 0x12b + 256]),
            uuid: Some(uuid_be(&b[sb + 0x20..sb + 0x30])),
        }));
    }
    Ok(None)
}

fn read_window<D: Read + Seek>(
    dev: &mut D,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, ProbeError> {
    let err = |source| ProbeError::Read { offset, source };
    dev.seek(SeekFrom::Start(offset)).map_err(err)?;
    let mut buf = vec![0u8; len];
    let got = rayos_base::io::read_full(dev, &mut buf).map_err(err)?;
    buf.truncate(got);
    Ok(buf)
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn le64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// Text field: up to the first NUL, trailing spaces trimmed; `None` if empty.
fn text(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).trim_end().to_string();
    (!s.is_empty()).then_some(s)
}

fn nonzero(b: &[u8]) -> Option<&[u8]> {
    b.iter().any(|&c| c != 0).then_some(b)
}

/// 16 bytes in on-disk (big-endian) order, as a UUID string.
fn uuid_be(b: &[u8]) -> String {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    uuid::Uuid::from_bytes(a).to_string()
}

fn fat_serial(v: u32) -> String {
    format!("{:04X}-{:04X}", v >> 16, v & 0xFFFF)
}

fn probe_luks(b: &[u8]) -> Option<FsInfo> {
    if &b[0..6] != b"LUKS\xba\xbe" {
        return None;
    }
    let version = u16::from_be_bytes([b[6], b[7]]);
    let uuid = text(&b[168..208]);
    match version {
        1 => Some(FsInfo {
            filesystem: Filesystem::Luks1,
            label: None,
            uuid,
        }),
        2 => Some(FsInfo {
            filesystem: Filesystem::Luks2,
            label: text(&b[24..72]),
            uuid,
        }),
        _ => None,
    }
}

fn probe_fat(b: &[u8]) -> Option<FsInfo> {
    if b[510..512] != [0x55, 0xAA] || !(b[0] == 0xEB || b[0] == 0xE9) {
        return None;
    }
    let bps = le16(b, 11) as u64;
    let spc = b[13] as u64;
    let reserved = le16(b, 14) as u64;
    let fats = b[16] as u64;
    let root_entries = le16(b, 17) as u64;
    let total16 = le16(b, 19) as u64;
    let fat16 = le16(b, 22) as u64;
    let total32 = le32(b, 32) as u64;
    let plausible = matches!(bps, 512 | 1024 | 2048 | 4096)
        && spc.is_power_of_two()
        && reserved >= 1
        && (1..=4).contains(&fats);
    if !plausible {
        return None;
    }
    let total = if total16 != 0 { total16 } else { total32 };
    let fat_size = if fat16 != 0 {
        fat16
    } else {
        le32(b, 36) as u64
    };
    let root_sectors = (root_entries * 32).div_ceil(bps);
    let meta = reserved + fats * fat_size + root_sectors;
    if fat_size == 0 || total <= meta {
        return None;
    }
    let clusters = (total - meta) / spc;
    // Where the extended BPB (signature, serial, label) sits differs between
    // FAT32 and FAT12/16.
    let (filesystem, ebpb) = if fat16 == 0 {
        (Filesystem::Fat32, 64)
    } else if clusters < 4085 {
        (Filesystem::Fat12, 36)
    } else {
        (Filesystem::Fat16, 36)
    };
    let (label, uuid) = if b[ebpb + 2] == 0x29 {
        let label = text(&b[ebpb + 7..ebpb + 18]).filter(|l| l != "NO NAME");
        (label, Some(fat_serial(le32(b, ebpb + 3))))
    } else {
        (None, None)
    };
    Some(FsInfo {
        filesystem,
        label,
        uuid,
    })
}

fn probe_ext(sb: &[u8]) -> FsInfo {
    let compat = le32(sb, 92);
    let incompat = le32(sb, 96);
    let ro_compat = le32(sb, 100);
    const HAS_JOURNAL: u32 = 0x4;
    // extents, 64bit, flex_bg, mmp, csum_seed, large_dir, inline_data, ...
    const EXT4_INCOMPAT: u32 = 0x40 | 0x80 | 0x100 | 0x200 | 0x2000 | 0x4000 | 0x8000;
    // huge_file, gdt_csum, dir_nlink, extra_isize, metadata_csum, ...
    const EXT4_RO_COMPAT: u32 = 0x8 | 0x10 | 0x20 | 0x40 | 0x400;
    let filesystem = if incompat & EXT4_INCOMPAT != 0 || ro_compat & EXT4_RO_COMPAT != 0 {
        Filesystem::Ext4
    } else if compat & HAS_JOURNAL != 0 {
        Filesystem::Ext3
    } else {
        Filesystem::Ext2
    };
    FsInfo {
        filesystem,
        label: text(&sb[120..136]),
        uuid: nonzero(&sb[104..120]).map(uuid_be),
    }
}

/// The NTFS volume label lives in the `$VOLUME_NAME` attribute of MFT record
/// 3 (`$Volume`). One record read; any inconsistency gives `None`.
fn ntfs_label<D: Read + Seek>(
    dev: &mut D,
    offset: u64,
    len: u64,
    boot: &[u8],
) -> Result<Option<String>, ProbeError> {
    let bps = le16(boot, 0x0B) as u64;
    let spc = boot[0x0D] as u64;
    if !matches!(bps, 512 | 1024 | 2048 | 4096) || spc == 0 {
        return Ok(None);
    }
    // Values above 0x80 encode 2^(256 - v) sectors per cluster.
    let cluster = if spc > 0x80 {
        bps << (256 - spc).min(20)
    } else {
        bps * spc
    };
    let raw = boot[0x40] as i8;
    let record = if raw < 0 {
        1u64 << (-(raw as i32)).min(16)
    } else {
        raw as u64 * cluster
    };
    if !(512..=65536).contains(&record) {
        return Ok(None);
    }
    let mft = le64(boot, 0x30).checked_mul(cluster);
    let Some(at) = mft.and_then(|m| m.checked_add(3 * record)) else {
        return Ok(None);
    };
    if at.saturating_add(record) > len {
        return Ok(None);
    }
    let mut r = read_window(dev, offset.saturating_add(at), record as usize)?;
    if r.len() < record as usize || &r[0..4] != b"FILE" {
        return Ok(None);
    }
    // Undo the update-sequence fixups: the last two bytes of each sector
    // were replaced by the sequence number on disk.
    let usa_off = le16(&r, 4) as usize;
    let usa_count = le16(&r, 6) as usize;
    if usa_count == 0 || usa_off + 2 * usa_count > r.len() {
        return Ok(None);
    }
    let usn = [r[usa_off], r[usa_off + 1]];
    for i in 1..usa_count {
        let end = i * bps as usize;
        if end > r.len() || r[end - 2..end] != usn {
            return Ok(None);
        }
        let fix = [r[usa_off + 2 * i], r[usa_off + 2 * i + 1]];
        r[end - 2..end].copy_from_slice(&fix);
    }
    let mut a = le16(&r, 0x14) as usize;
    while a + 16 <= r.len() {
        let kind = le32(&r, a);
        if kind == 0xFFFF_FFFF {
            break;
        }
        let alen = le32(&r, a + 4) as usize;
        if alen < 16 || a + alen > r.len() {
            break;
        }
        // 0x60 = $VOLUME_NAME, always resident (non-resident flag at +8 is 0).
        if kind == 0x60 && r[a + 8] == 0 && a + 0x16 <= r.len() {
            let vlen = le32(&r, a + 0x10) as usize;
            let voff = le16(&r, a + 0x14) as usize;
            if vlen == 0 || a + voff + vlen > a + alen {
                return Ok(None);
            }
            let units: Vec<u16> = r[a + voff..a + voff + vlen]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            let s = String::from_utf16_lossy(&units);
            return Ok((!s.is_empty()).then_some(s));
        }
        a += alen;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    //! Formats whose tools are not installed here (btrfs, XFS, LUKS,
    //! BitLocker, exFAT, ISO 9660, LVM) are checked on hand-made headers
    //! built from their on-disk specifications; FAT, ext and swap are
    //! checked against the real mkfs tools in tests/probe_tools.rs.
    use std::io::Cursor;

    use super::*;

    fn at(len: usize, writes: &[(usize, &[u8])]) -> Cursor<Vec<u8>> {
        let mut v = vec![0u8; len];
        for (o, b) in writes {
            v[*o..*o + b.len()].copy_from_slice(b);
        }
        Cursor::new(v)
    }

    fn probe_all(c: &mut Cursor<Vec<u8>>) -> Option<FsInfo> {
        let len = c.get_ref().len() as u64;
        probe(c, 0, len).unwrap()
    }

    const ID: [u8; 16] = [
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
        0xef,
    ];
    const ID_TEXT: &str = "01234567-89ab-cdef-0123-456789abcdef";

    #[test]
    fn btrfs() {
        let sb = 0x10000;
        let mut c = at(
            0x20000,
            &[
                (sb + 0x20, &ID),
                (sb + 0x40, b"_BHRfS_M"),
                (sb + 0x12b, b"linux-home"),
            ],
        );
        let i = probe_all(&mut c).unwrap();
        assert_eq!(i.filesystem, Filesystem::Btrfs);
        assert_eq!(i.label.as_deref(), Some("linux-home"));
        assert_eq!(i.uuid.as_deref(), Some(ID_TEXT));
        // Cut short before the superblock: nothing, not an error.
        assert_eq!(probe(&mut c, 0, 0x8000).unwrap(), None);
    }

    #[test]
    fn xfs() {
        let mut c = at(0x4000, &[(0, b"XFSB"), (32, &ID), (108, b"xfsroot")]);
        let i = probe_all(&mut c).unwrap();
        assert_eq!(i.filesystem, Filesystem::Xfs);
        assert_eq!(i.label.as_deref(), Some("xfsroot"));
        assert_eq!(i.uuid.as_deref(), Some(ID_TEXT));
    }

    #[test]
    fn luks1_and_luks2() {
        let mut c = at(
            0x1000,
            &[(0, b"LUKS\xba\xbe\x00\x01"), (168, ID_TEXT.as_bytes())],
        );
        let i = probe_all(&mut c).unwrap();
        assert_eq!(i.filesystem, Filesystem::Luks1);
        assert_eq!(i.uuid.as_deref(), Some(ID_TEXT));
        let mut c = at(
            0x1000,
            &[
                (0, b"LUKS\xba\xbe\x00\x02"),
                (24, b"cryptroot"),
                (168, ID_TEXT.as_bytes()),
            ],
        );
        let i = probe_all(&mut c).unwrap();
        assert_eq!(i.filesystem, Filesystem::Luks2);
        assert_eq!(i.label.as_deref(), Some("cryptroot"));
        // Unknown LUKS version: not claimed.
        let mut c = at(0x1000, &[(0, b"LUKS\xba\xbe\x00\x07")]);
        assert_eq!(probe_all(&mut c), None);
    }

    #[test]
    fn bitlocker_exfat_iso_lvm() {
        let mut c = at(
            0x1000,
            &[
                (0, &[0xEB, 0x58, 0x90]),
                (3, b"-FVE-FS-"),
                (510, &[0x55, 0xAA]),
            ],
        );
        assert_eq!(probe_all(&mut c).unwrap().filesystem, Filesystem::Bitlocker);

        let mut c = at(
            0x1000,
            &[(3, b"EXFAT   "), (100, &0xDEAD_BEEFu32.to_le_bytes())],
        );
        let i = probe_all(&mut c).unwrap();
        assert_eq!(i.filesystem, Filesystem::Exfat);
        assert_eq!(i.uuid.as_deref(), Some("DEAD-BEEF"));

        let mut c = at(
            0x9000,
            &[
                (0x8000, &[1]),
                (0x8001, b"CD001"),
                (0x8028, b"RAYOS_INSTALL   "),
            ],
        );
        let i = probe_all(&mut c).unwrap();
        assert_eq!(i.filesystem, Filesystem::Iso9660);
        assert_eq!(i.label.as_deref(), Some("RAYOS_INSTALL"));

        let mut c = at(
            0x1000,
            &[
                (512, b"LABELONE"),
                (512 + 24, b"LVM2 001"),
                (512 + 32, b"AbCdEf"),
            ],
        );
        let i = probe_all(&mut c).unwrap();
        assert_eq!(i.filesystem, Filesystem::LvmPv);
        assert_eq!(i.uuid.as_deref(), Some("AbCdEf"));
    }

    #[test]
    fn implausible_fat_boot_sectors_are_not_fat() {
        // Jump + signature but a BPB with a 500-byte sector: not FAT.
        let mut c = at(
            0x1000,
            &[
                (0, &[0xEB, 0x3C, 0x90]),
                (11, &500u16.to_le_bytes()),
                (13, &[1]),
                (510, &[0x55, 0xAA]),
            ],
        );
        assert_eq!(probe_all(&mut c), None);
        // An MBR (no jump instruction) is not FAT either.
        let mut c = at(0x1000, &[(446 + 4, &[0xEE]), (510, &[0x55, 0xAA])]);
        assert_eq!(probe_all(&mut c), None);
    }

    #[test]
    fn ntfs_with_broken_mft_still_is_ntfs_without_label() {
        // Boot sector only: the MFT record is missing, so no label, no error.
        let mut boot = vec![0u8; 0x10000];
        boot[3..11].copy_from_slice(b"NTFS    ");
        boot[0x0B..0x0D].copy_from_slice(&512u16.to_le_bytes());
        boot[0x0D] = 8;
        boot[0x30..0x38].copy_from_slice(&u64::MAX.to_le_bytes()); // absurd MFT cluster
        boot[0x40] = 0xF6;
        let mut c = Cursor::new(boot);
        let i = probe_all(&mut c).unwrap();
        assert_eq!(i.filesystem, Filesystem::Ntfs);
        assert_eq!(i.label, None);
    }

    #[test]
    fn short_reads_are_zero_padded_not_errors() {
        let mut c = Cursor::new(vec![0u8; 100]);
        assert_eq!(probe(&mut c, 0, 1 << 20).unwrap(), None);
        assert_eq!(probe(&mut c, 1 << 30, 1 << 20).unwrap(), None);
    }
}
