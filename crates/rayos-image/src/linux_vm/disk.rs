//! A raw GPT disk image assembled from partition images, without loop
//! devices: the table is written by `rayos-disk`, the partition images are
//! copied in at their offsets, skipping zero blocks so the result stays
//! sparse.
//!
//! Layout: 1 MiB-aligned partitions one after the other from LBA 2048
//! (512-byte sectors), each exactly its image's size, and 1 MiB after the
//! last one for the backup table. A guest that grows its last partition
//! (systemd-repart) fixes the backup table's place itself.

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rayos_base::io::read_full;
use rayos_disk::{Gpt, GptError, Partition};
use uuid::Uuid;

const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;

/// Why the disk image could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A partition image is not a whole number of MiB; holds its path.
    #[error("partition image {0} is not a whole number of MiB")]
    Unaligned(PathBuf),
    /// The partition table could not be written.
    #[error("cannot write the partition table of {path}")]
    Gpt {
        /// The disk image.
        path: PathBuf,
        /// The error.
        #[source]
        source: GptError,
    },
    /// A partition image could not be copied into the disk image.
    #[error("cannot copy {from} into {to}")]
    Copy {
        /// The partition image.
        from: PathBuf,
        /// The disk image.
        to: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// One partition of the image.
#[derive(Debug, Clone)]
pub struct PartSpec {
    /// The partition type GUID.
    pub type_guid: Uuid,
    /// The partition's own GUID (`PARTUUID`).
    pub unique_guid: Uuid,
    /// The GPT partition name.
    pub name: &'static str,
    /// Its contents; the partition is exactly this size.
    pub image: PathBuf,
}

/// Writes `out` (replaced); returns its size in bytes.
pub fn assemble(out: &Path, parts: &[PartSpec], disk_guid: Uuid) -> Result<u64, DiskError> {
    let copy_err = |from: &Path, source| DiskError::Copy {
        from: from.to_path_buf(),
        to: out.to_path_buf(),
        source,
    };
    let mut sizes = Vec::new();
    for p in parts {
        let len = fs::metadata(&p.image)
            .map_err(|e| copy_err(&p.image, e))?
            .len();
        if len == 0 || len % MIB != 0 {
            return Err(DiskError::Unaligned(p.image.clone()));
        }
        sizes.push(len);
    }
    let total = MIB + sizes.iter().sum::<u64>() + MIB;
    let gerr = |source| DiskError::Gpt {
        path: out.to_path_buf(),
        source,
    };
    let mut gpt = Gpt::new(total, SECTOR as u32).map_err(gerr)?;
    gpt.set_disk_guid(disk_guid);
    let mut first = MIB / SECTOR;
    for (i, (p, len)) in parts.iter().zip(&sizes).enumerate() {
        let last = first + len / SECTOR - 1;
        let mut part = Partition::new(i as u32 + 1, p.type_guid, first, last, p.name);
        part.unique_guid = p.unique_guid;
        gpt.add(part).map_err(gerr)?;
        first = last + 1;
    }
    let _ = fs::remove_file(out);
    let mut f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(|e| copy_err(out, e))?;
    f.set_len(total).map_err(|e| copy_err(out, e))?;
    gpt.write(&mut f).map_err(gerr)?;
    for (p, part) in parts.iter().zip(gpt.partitions()) {
        copy_sparse(&p.image, &mut f, part.first_lba * SECTOR)
            .map_err(|e| copy_err(&p.image, e))?;
    }
    f.sync_all().map_err(|e| copy_err(out, e))?;
    Ok(total)
}

/// Copies `src` into `dst` at `offset`, leaving blocks of zeros unwritten
/// (holes in a fresh sparse file read as zeros).
fn copy_sparse(src: &Path, dst: &mut File, offset: u64) -> io::Result<()> {
    let mut s = File::open(src)?;
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = offset;
    loop {
        let n = read_full(&mut s, &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        for chunk in buf[..n].chunks(64 * 1024) {
            if chunk.iter().any(|&b| b != 0) {
                dst.seek(SeekFrom::Start(pos))?;
                dst.write_all(chunk)?;
            }
            pos += chunk.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn partitions_land_at_their_offsets_and_the_table_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        let b = dir.path().join("b.img");
        let mut av = vec![0u8; 2 * MIB as usize];
        av[0] = 0xaa;
        av[MIB as usize + 7] = 0xab;
        fs::write(&a, &av).unwrap();
        let mut bv = vec![0u8; MIB as usize];
        bv[MIB as usize - 1] = 0xbb;
        fs::write(&b, &bv).unwrap();
        let out = dir.path().join("disk.img");
        let g1 = Uuid::from_u128(1);
        let g2 = Uuid::from_u128(2);
        let total = assemble(
            &out,
            &[
                PartSpec {
                    type_guid: rayos_disk::types::ESP,
                    unique_guid: g1,
                    name: "esp",
                    image: a,
                },
                PartSpec {
                    type_guid: rayos_disk::types::LINUX_ROOT_X86_64,
                    unique_guid: g2,
                    name: "root",
                    image: b,
                },
            ],
            Uuid::from_u128(9),
        )
        .unwrap();
        assert_eq!(total, 5 * MIB);
        let bytes = fs::read(&out).unwrap();
        assert_eq!(bytes[MIB as usize], 0xaa);
        assert_eq!(bytes[2 * MIB as usize + 7], 0xab);
        assert_eq!(bytes[4 * MIB as usize - 1], 0xbb);
        let gpt = Gpt::read(&mut File::open(&out).unwrap(), 512).unwrap();
        assert_eq!(gpt.disk_guid(), Uuid::from_u128(9));
        let p = gpt.partitions();
        assert_eq!((p[0].first_lba, p[0].last_lba), (2048, 6143));
        assert_eq!((p[1].first_lba, p[1].last_lba), (6144, 8191));
        assert_eq!((p[0].unique_guid, p[1].unique_guid), (g1, g2));
        assert_eq!(p[1].type_guid, rayos_disk::types::LINUX_ROOT_X86_64);
        // Zero blocks were not written: the file is sparse.
        let m = fs::metadata(&out).unwrap();
        assert!(m.blocks() * 512 < total, "{} blocks", m.blocks());
    }

    #[test]
    fn unaligned_images_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        fs::write(&a, [1u8; 1000]).unwrap();
        let e = assemble(
            &dir.path().join("d.img"),
            &[PartSpec {
                type_guid: rayos_disk::types::ESP,
                unique_guid: Uuid::from_u128(1),
                name: "esp",
                image: a,
            }],
            Uuid::from_u128(2),
        )
        .unwrap_err();
        assert!(matches!(e, DiskError::Unaligned(_)), "{e}");
    }
}
