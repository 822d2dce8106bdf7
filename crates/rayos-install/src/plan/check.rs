//! Stage 1, check: the target itself, before any partition is looked at —
//! the installer's own medium, read-only, in use, sector size, what the
//! partition table allows, and a RayOS install already there.

use std::path::Path;

use rayos_disk::{Disk, Table};

use crate::answers::Mode;

use super::{Facts, Intents, MEDIUM_LABEL, PlanError, TableAction, TableCopy};

/// The disk a plan is made on, as the check found it.
pub(super) struct Target<'a> {
    /// The disk report, or the one valid copy of its table (an interrupted
    /// table write of an unfinished install).
    pub disk: &'a Disk,
    /// The disk's path, for messages.
    pub name: String,
    pub table: TableAction,
    pub table_copy: Option<TableCopy>,
    /// Whether the partitions of a RayOS install found on the disk may be
    /// redone: it is unfinished (no manifest), or `reinstall` consents.
    pub reinstall_ok: bool,
    /// Notes for the person so far (the table copy used, a table replaced,
    /// an install replaced or redone).
    pub notes: Vec<String>,
}

/// Checks the target. Input: the disk report, the intents (their mode
/// decides what the table allows, `reinstall` whether a complete install
/// may go) and the facts gathered by I/O. Output: the [`Target`] the later
/// stages plan on, or the refusal.
pub(super) fn check<'a>(
    disk: &'a Disk,
    intents: &Intents,
    facts: &'a Facts,
) -> Result<Target<'a>, PlanError> {
    let (disk, table_copy) = table_source(disk, intents.mode, facts);
    let name = disk.path.display().to_string();
    let mut notes = Vec::new();
    if let Some(c) = table_copy {
        notes.push(format!(
            "the partition table was left half-written by an interrupted RayOS install; its valid {} copy is used and both copies are rewritten",
            match c {
                TableCopy::Primary => "primary",
                TableCopy::Backup => "backup",
            }
        ));
    }
    check_disk(disk, &name, facts)?;
    let table = table_action(disk, &name, intents.mode, &mut notes)?;
    check_install(disk, &name, facts, intents.reinstall, &mut notes)?;
    Ok(Target {
        disk,
        name,
        table,
        table_copy,
        reinstall_ok: facts.manifest.is_none() || intents.reinstall,
        notes,
    })
}

/// The report to plan on: a table write of ours cut off half-way is
/// planned from the valid copy that holds the unfinished install (never for
/// whole-disk, which replaces the table anyway, and never when the install
/// is complete).
fn table_source<'a>(disk: &'a Disk, mode: Mode, facts: &'a Facts) -> (&'a Disk, Option<TableCopy>) {
    match (&disk.table, &facts.unfinished_table, mode) {
        (Table::Corrupt { .. }, Some(u), Mode::FreeSpace | Mode::Reuse)
            if facts.manifest.is_none() =>
        {
            (&u.disk, Some(u.copy))
        }
        _ => (disk, None),
    }
}

/// The disk may be written at all: not the installer's medium, writable,
/// not in use, a supported sector size.
fn check_disk(disk: &Disk, name: &str, facts: &Facts) -> Result<(), PlanError> {
    let name = name.to_string();
    if let Some(why) = &facts.installer_medium {
        return Err(PlanError::InstallerMedium {
            disk: name,
            why: why.clone(),
        });
    }
    if let Some(why) = medium_evidence(disk) {
        return Err(PlanError::InstallerMedium { disk: name, why });
    }
    if disk.read_only {
        return Err(PlanError::ReadOnly { disk: name });
    }
    if disk.is_in_use() {
        return Err(PlanError::InUse {
            disk: name,
            usages: disk.in_use.iter().map(|u| u.to_string()).collect(),
        });
    }
    let ss = disk.logical_sector_size;
    if ss != 512 && ss != 4096 {
        return Err(PlanError::Table {
            disk: name,
            what: format!("logical sector size {ss} is not supported (512 or 4096)"),
        });
    }
    Ok(())
}

/// What the mode does with the disk's table: whole-disk replaces any
/// table; a GPT is edited; free-space gives a blank disk a new one; the
/// rest (MBR, corrupt, a filesystem without a table) is refused.
fn table_action(
    disk: &Disk,
    name: &str,
    mode: Mode,
    notes: &mut Vec<String>,
) -> Result<TableAction, PlanError> {
    let refuse = |what: String| {
        Err(PlanError::Table {
            disk: name.to_string(),
            what,
        })
    };
    match (&disk.table, mode) {
        (Table::Unreadable { reason }, _) => refuse(format!(
            "cannot be read ({reason}): run as root, or check the medium"
        )),
        (_, Mode::WholeDisk) => {
            if let Table::Corrupt { reason, .. } = &disk.table {
                notes.push(format!(
                    "the corrupt partition table ({reason}) is replaced by a new GPT"
                ));
            }
            Ok(TableAction::New)
        }
        (Table::Gpt, _) => Ok(TableAction::Edit),
        (Table::None, Mode::FreeSpace) if disk.whole_disk_filesystem.is_none() => {
            Ok(TableAction::New)
        }
        (Table::None, _) => refuse(match &disk.whole_disk_filesystem {
            Some(fs) => format!(
                "the whole disk holds a {} filesystem without a partition table; only mode = \"whole-disk\" may erase it",
                fs.filesystem
            ),
            None => "the disk is blank: mode = \"reuse\" has nothing to reuse; use whole-disk or free-space".into(),
        }),
        (Table::Mbr, _) => refuse(
            "it has an MBR (DOS) partition table; RayOS needs GPT. Use mode = \"whole-disk\" to erase the disk, or convert it with gdisk first".into(),
        ),
        (Table::Corrupt { reason, .. }, _) => refuse(format!(
            "the partition table is corrupt ({reason}); it is not repaired silently. Repair it (gdisk) or use mode = \"whole-disk\" to erase the disk"
        )),
    }
}

/// A complete RayOS install is replaced only with `reinstall`; an
/// unfinished one is redone (a note says which).
fn check_install(
    disk: &Disk,
    name: &str,
    facts: &Facts,
    reinstall: bool,
    notes: &mut Vec<String>,
) -> Result<(), PlanError> {
    let Some(r) = &disk.rayos else {
        return Ok(());
    };
    if let Some(m) = &facts.manifest {
        if !reinstall {
            return Err(PlanError::CompleteInstall {
                disk: name.to_string(),
                what: m.clone(),
            });
        }
        notes.push(format!("the RayOS install found ({m}) is replaced"));
    } else if r.system.is_some() || r.data.is_some() {
        notes.push("an unfinished RayOS install was found; its partitions are redone".into());
    }
    Ok(())
}

/// Evidence that `disk` is the installer's own medium, from the report.
pub fn medium_evidence(disk: &Disk) -> Option<String> {
    if let Some(fs) = &disk.whole_disk_filesystem
        && fs.label.as_deref() == Some(MEDIUM_LABEL)
    {
        return Some(format!(
            "the disk carries the installer label {MEDIUM_LABEL}"
        ));
    }
    if let Some(p) = disk
        .partitions
        .iter()
        .find(|p| p.fs_label.as_deref() == Some(MEDIUM_LABEL))
    {
        return Some(format!(
            "partition {} carries the installer label {MEDIUM_LABEL}",
            p.number
        ));
    }
    let mounts = |u: &rayos_disk::Usage| match &u.reason {
        rayos_disk::UsageReason::Mounted { mount_point, .. } => {
            mount_point == Path::new("/") || mount_point == Path::new("/run/rayos/medium")
        }
        _ => false,
    };
    let all = disk
        .in_use
        .iter()
        .chain(disk.partitions.iter().flat_map(|p| p.in_use.iter()));
    for u in all {
        if mounts(u) {
            return Some(u.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answers::{Answers, GIB};
    use crate::sample::{fake_disk, sample_disk};
    use rayos_disk::DiskKind;

    fn intents(mode: Mode) -> Intents {
        Intents::from_answers(&Answers::defaults(mode))
    }

    #[test]
    fn the_mode_decides_what_each_table_allows() {
        let mut blank = fake_disk("/tmp/b.img", 8 * GIB, 512, DiskKind::ImageFile, &[]);
        blank.table = Table::None;
        let mut mbr = sample_disk();
        mbr.table = Table::Mbr;
        let facts = Facts::default();
        let table = |d: &Disk, m: Mode| check(d, &intents(m), &facts).map(|t| t.table);
        for m in [Mode::WholeDisk, Mode::FreeSpace, Mode::Reuse] {
            let want = if m == Mode::WholeDisk {
                TableAction::New
            } else {
                TableAction::Edit
            };
            assert_eq!(table(&sample_disk(), m).unwrap(), want, "{m}");
        }
        assert_eq!(table(&blank, Mode::FreeSpace).unwrap(), TableAction::New);
        assert!(table(&blank, Mode::Reuse).is_err());
        assert_eq!(table(&mbr, Mode::WholeDisk).unwrap(), TableAction::New);
        let e = table(&mbr, Mode::FreeSpace).unwrap_err();
        assert!(e.to_string().contains("MBR (DOS)"), "{e}");
    }

    #[test]
    fn an_interrupted_table_write_is_planned_from_its_valid_copy() {
        let mut d = sample_disk();
        d.table = Table::Corrupt {
            reason: "primary header CRC mismatch".into(),
            primary_valid: false,
            backup_valid: true,
        };
        let copy = fake_disk("/dev/sample", 64 * GIB, 512, DiskKind::BlockDevice, &[]);
        let facts = Facts {
            unfinished_table: Some(crate::plan::UnfinishedTable {
                copy: TableCopy::Backup,
                disk: copy,
            }),
            ..Facts::default()
        };
        let t = check(&d, &intents(Mode::FreeSpace), &facts).unwrap();
        assert_eq!(t.table_copy, Some(TableCopy::Backup));
        assert!(t.disk.partitions.is_empty(), "the backup copy's report");
        assert!(t.notes[0].contains("valid backup copy"), "{:?}", t.notes);
        // whole-disk replaces the table: the corrupt one is only noted.
        let t = check(&d, &intents(Mode::WholeDisk), &facts).unwrap();
        assert_eq!((t.table, t.table_copy), (TableAction::New, None));
        assert!(t.notes[0].contains("corrupt partition table"));
    }
}
