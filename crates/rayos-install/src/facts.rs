//! Facts about a target that planning needs but cannot see in the
//! [`Disk`] report:
//! - whether the RayOS install on it is complete (its manifest, read with
//!   mtools from the system partition);
//! - when the table is corrupt, whether one valid copy holds an unfinished
//!   RayOS install — the mark of a table write of ours cut off between the
//!   primary and the backup copy. Only then may the planner use that copy
//!   (and `apply` rewrite both); any other damage is reported, not fixed.
//!
//! The installer's own medium is recognised by the planner from the report
//! (mounted at `/` or `/run/rayos/medium`, or labelled `RAYOS_INSTALL`).

use std::path::PathBuf;

use rayos_disk::report::{find_rayos, find_systems};
use rayos_disk::types::{type_family, type_name};
use rayos_disk::{Disk, FreeSpace, Gpt, PartitionReport, Table};

use crate::manifest::Manifest;
use crate::plan::{Facts, MANIFEST_PATH, TableCopy, UnfinishedTable};
use crate::tools::{FatVolume, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("cannot read the RayOS manifest")]
    Manifest(#[source] ToolError),
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
    Ok(facts)
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
            number: p.number,
            first_lba: p.first_lba,
            last_lba: p.last_lba,
            start_bytes: start,
            size_bytes: size,
            type_guid: Some(p.type_guid),
            mbr_type: None,
            type_name: type_name(&p.type_guid)
                .map(str::to_string)
                .unwrap_or_else(|| p.type_guid.to_string()),
            family: type_family(&p.type_guid),
            unique_guid: Some(p.unique_guid),
            name: p.name.clone(),
            attributes: p.attributes,
            filesystem: fs.as_ref().map(|i| i.filesystem),
            fs_label: fs.as_ref().and_then(|i| i.label.clone()),
            fs_uuid: fs.and_then(|i| i.uuid),
            device: None,
            in_use: Vec::new(),
        });
    }
    let free_regions = gpt
        .free_regions(rayos_disk::DEFAULT_ALIGNMENT)
        .into_iter()
        .map(|r| FreeSpace {
            first_lba: r.first_lba,
            last_lba: r.last_lba,
            start_bytes: r.start_bytes(ss),
            size_bytes: r.size_bytes(ss),
        })
        .collect();
    Ok(Some(Disk {
        table: Table::Gpt,
        disk_guid: Some(gpt.disk_guid()),
        rayos: find_rayos(&partitions),
        systems: find_systems(&partitions),
        partitions,
        free_regions,
        ..disk.clone()
    }))
}
