//! Facts about a target that planning needs but cannot see in the
//! [`Disk`] report:
//! - whether the RayOS install on it is complete (its manifest, read with
//!   mtools from the system partition);
//! - when the table is corrupt, whether one valid copy holds an unfinished
//!   RayOS install — the mark of a table write of ours cut off between the
//!   primary and the backup copy. Only then may the planner use that copy
//!   (and `apply` rewrite both); any other damage is reported, not fixed.
//!
//! - for each partition RayOS does not recognise (no filesystem it knows,
//!   a type of no known system, not RayOS's own), whether its bytes are all
//!   zeros: only then may the planner format it without consent. At most
//!   [`ZERO_SCAN_LIMIT`] bytes of data are read per partition; holes of an
//!   image file (`SEEK_DATA`) cost nothing. A larger partition that is zero
//!   as far as read counts as unproven, so it needs consent too.
//!
//! The installer's own medium is recognised by the planner from the report
//! (mounted at `/` or `/run/rayos/medium`, or labelled `RAYOS_INSTALL`).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

use rayos_disk::report::{find_rayos, find_systems};
use rayos_disk::types::TypeFamily;
use rayos_disk::{Disk, FreeSpace, Gpt, PartitionReport, Table};

use crate::manifest::Manifest;
use crate::plan::{
    Contents, Facts, MANIFEST_PATH, Scanned, TableCopy, UnfinishedTable, is_rayos_partition,
};
use crate::tools::{FatVolume, ToolError};

/// Why the facts about a target could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// The RayOS manifest on the disk could not be read.
    #[error("cannot read the RayOS manifest")]
    Manifest(#[source] ToolError),
    /// A partition or the disk could not be read; holds the path.
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] std::io::Error),
}

/// Reads what [`crate::plan::make_plan`] needs from the target.
pub fn gather(disk: &Disk) -> Result<Facts, FactsError> {
    let mut facts = Facts {
        manifest: manifest_of(disk)?,
        ..Facts::default()
    };
    if let Table::Corrupt {
        primary_valid,
        backup_valid,
        ..
    } = &disk.table
    {
        for (valid, copy) in [
            (*primary_valid, TableCopy::Primary),
            (*backup_valid, TableCopy::Backup),
        ] {
            if !valid {
                continue;
            }
            let Some(d) = disk_from_copy(disk, copy)? else {
                continue;
            };
            let ours = d
                .rayos
                .as_ref()
                .is_some_and(|r| r.system.is_some() || r.data.is_some());
            if !ours {
                continue;
            }
            // A complete install behind a damaged table is not ours to fix.
            if let Some(m) = manifest_of(&d)? {
                facts.manifest = Some(m);
                break;
            }
            facts.unfinished_table = Some(UnfinishedTable { copy, disk: d });
            break;
        }
    }
    let mut candidates: Vec<&PartitionReport> = Vec::new();
    let copy = facts.unfinished_table.as_ref().map(|u| &u.disk);
    for p in disk
        .partitions
        .iter()
        .chain(copy.iter().flat_map(|d| &d.partitions))
    {
        let same = |q: &&PartitionReport| {
            (q.number, q.first_lba, q.last_lba) == (p.number, p.first_lba, p.last_lba)
        };
        if !is_rayos_partition(p)
            && p.family == TypeFamily::Other
            && p.filesystem.is_none()
            && !candidates.iter().any(same)
        {
            candidates.push(p);
        }
    }
    if !candidates.is_empty() {
        let err = |e| FactsError::Read(disk.path.clone(), e);
        let f = File::open(&disk.path).map_err(err)?;
        for p in candidates {
            facts.scanned.push(Scanned {
                number: p.number,
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                contents: zero_scan(&f, p.start_bytes, p.size_bytes, ZERO_SCAN_LIMIT)
                    .map_err(err)?,
            });
        }
    }
    Ok(facts)
}

/// Bytes of data read at most to prove one partition empty (about 2 s on
/// an SSD, 7 s on a hard disk; holes in image files are not read).
pub const ZERO_SCAN_LIMIT: u64 = 1 << 30;

/// Whether `[start, start + len)` of `f` is all zeros, reading at most
/// `budget` bytes of data. Holes (`SEEK_DATA`/`SEEK_HOLE`, which image
/// files on most filesystems support) read as zeros without being read; a
/// block device reports everything as data.
pub fn zero_scan(f: &File, start: u64, len: u64, budget: u64) -> io::Result<Contents> {
    let end = start.saturating_add(len);
    let fd = f.as_raw_fd();
    let seek = |pos: u64, whence: libc::c_int| -> io::Result<Option<u64>> {
        // SAFETY: `fd` belongs to `f`, which outlives this call; lseek
        // takes no pointers.
        let r = unsafe { libc::lseek(fd, pos as libc::off_t, whence) };
        if r >= 0 {
            return Ok(Some(r as u64));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // No data at or after `pos`: the rest is a hole.
            Some(libc::ENXIO) => Ok(None),
            // No hole support: everything is data.
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(Some(pos)),
            _ => Err(e),
        }
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    let mut pos = start;
    while pos < end {
        let Some(data) = seek(pos, libc::SEEK_DATA)? else {
            break;
        };
        if data >= end {
            break;
        }
        let hole = match seek(data, libc::SEEK_HOLE)? {
            Some(h) if h > data => h.min(end),
            _ => end,
        };
        let mut at = data;
        while at < hole {
            if read >= budget {
                return Ok(Contents::TooLarge);
            }
            let n = (buf.len() as u64).min(hole - at).min(budget - read) as usize;
            f.read_exact_at(&mut buf[..n], at)?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(Contents::NotZero);
            }
            at += n as u64;
            read += n as u64;
        }
        pos = hole;
    }
    Ok(Contents::AllZero)
}

/// The manifest summary of the RayOS install on `disk`, if complete.
fn manifest_of(disk: &Disk) -> Result<Option<String>, FactsError> {
    let Some(n) = disk.rayos.as_ref().and_then(|r| r.system) else {
        return Ok(None);
    };
    let Some(p) = disk.partition(n) else {
        return Ok(None);
    };
    if !p.filesystem.is_some_and(|f| f.is_fat()) {
        return Ok(None);
    }
    let vol = FatVolume {
        disk: disk.path.clone(),
        offset_bytes: p.start_bytes,
    };
    let Some(bytes) = vol.read(MANIFEST_PATH).map_err(FactsError::Manifest)? else {
        return Ok(None);
    };
    Ok(Some(match Manifest::parse(&bytes) {
        Ok(m) => m.summary(),
        // Unreadable but present still marks a finished install: err on the
        // side of not overwriting it.
        Err(e) => format!("its manifest does not parse: {e}"),
    }))
}

/// The report `disk` would have if `copy` were its whole table.
fn disk_from_copy(disk: &Disk, copy: TableCopy) -> Result<Option<Disk>, FactsError> {
    let err = |e| FactsError::Read(disk.path.clone(), e);
    let mut f = std::fs::File::open(&disk.path).map_err(err)?;
    let ss = disk.logical_sector_size;
    let Ok(gpt) = Gpt::read_copy(&mut f, ss, copy.into()) else {
        return Ok(None);
    };
    let mut partitions = Vec::new();
    for p in gpt.partitions() {
        let (start, size) = (p.start_bytes(ss), p.size_bytes(ss));
        let fs = rayos_disk::probe(&mut f, start, size).ok().flatten();
        partitions.push(PartitionReport {
            filesystem: fs.as_ref().map(|i| i.filesystem),
            fs_label: fs.as_ref().and_then(|i| i.label.clone()),
            fs_uuid: fs.and_then(|i| i.uuid),
            ..PartitionReport::of_gpt(p, ss)
        });
    }
    let free_regions = gpt
        .free_regions(rayos_disk::DEFAULT_ALIGNMENT)
        .into_iter()
        .map(|r| FreeSpace::of(r, ss))
        .collect();
    Ok(Some(Disk {
        table: Table::Gpt,
        hybrid_mbr: gpt.hybrid_mbr().map(<[_]>::to_vec).unwrap_or_default(),
        disk_guid: Some(gpt.disk_guid()),
        rayos: find_rayos(&partitions),
        systems: find_systems(&partitions),
        partitions,
        free_regions,
        ..disk.clone()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_scan_reads_data_skips_holes_and_stops_at_its_budget() {
        let path = std::env::temp_dir().join(format!(
            "rayos-zero-scan-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        const M: u64 = 1 << 20;
        f.set_len(64 * M).unwrap();
        // Zeros written out (data, not a hole) in MiB 8..12; a byte at 40 MiB.
        f.write_all_at(&vec![0u8; 4 * M as usize], 8 * M).unwrap();
        f.write_all_at(b"x", 40 * M).unwrap();
        let scan = |start, len, budget| zero_scan(&f, start, len, budget).unwrap();
        assert_eq!(scan(0, 40 * M, 64 * M), Contents::AllZero);
        assert_eq!(scan(0, 64 * M, 64 * M), Contents::NotZero);
        assert_eq!(scan(40 * M, 1, 1), Contents::NotZero);
        assert_eq!(scan(40 * M + 1, 24 * M - 1, 64 * M), Contents::AllZero);
        assert_eq!(scan(0, 40 * M, 2 * M), Contents::TooLarge);
        // Only data counts against the budget: the written zeros are 4 MiB
        // (where the temp directory's filesystem reports holes; one that
        // does not makes every byte data, and the answer stays safe).
        // SAFETY: the fd belongs to `f`, open for the call.
        let holes = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_HOLE) } < 64 * M as i64;
        let want = if holes {
            Contents::AllZero
        } else {
            Contents::TooLarge
        };
        assert_eq!(scan(0, 40 * M, 4 * M), want);
        std::fs::remove_file(&path).unwrap();
    }
}
