//! The data volume's schema version, checked at every boot, and the
//! migration framework.
//!
//! `schema-version` on the volume holds `rayos_state::DATA_SCHEMA_VERSION`
//! of the RayOS that last migrated it (missing: 0, a volume from before the
//! file existed). At boot ([`check_and_migrate`]):
//! - equal: nothing to do;
//! - older: run the migrations in [`MIGRATIONS`] one after the other. A
//!   migration saves every file it is about to change into
//!   `schema-backup/<from>/` first and `schema-migration.json` records the
//!   run, so until the new version is blessed ([`commit`]) the old
//!   generation can be put back ([`restore`], from the recovery menu);
//! - newer: this RayOS does not understand the volume. It must not write
//!   to it: PID 1 remounts it read-only, starts no VMs and points at the
//!   newer version or the recovery entry.
//!
//! Limits: one migration run pending at a time (a second boot before the
//! blessing finds the same run recorded and does not migrate again).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rayos_state::DataLayout;
use serde::{Deserialize, Serialize};

/// The data volume's directory for backups taken before migrations
/// (`schema-backup/<from>/`).
pub const BACKUP_DIR: &str = "schema-backup";
/// The data volume's record of the last migration.
pub const RECORD_FILE: &str = "schema-migration.json";

/// Why the data schema could not be read, migrated or restored.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A file could not be read; holds its path.
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] io::Error),
    /// The schema file does not hold a number; holds its path.
    #[error("{0} does not hold a schema number")]
    Parse(PathBuf),
    /// A file could not be written; holds its path.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] io::Error),
    /// A file could not be replaced atomically; holds its path.
    #[error("cannot write {0}")]
    Atomic(PathBuf, #[source] rayos_state::AtomicError),
    /// No migration leads on from this schema; holds it.
    #[error("no migration from data schema {0}")]
    NoMigration(u32),
    /// There is no backup to restore; holds the volume.
    #[error("no migration backup on {0}: nothing to restore")]
    NoBackup(PathBuf),
}

/// What the boot-time check found (and did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaCheck {
    /// The volume has the schema this RayOS writes; holds it.
    Current(u32),
    /// The volume was migrated.
    Migrated {
        /// The schema before.
        from: u32,
        /// The schema after.
        to: u32,
    },
    /// Written by a newer RayOS: leave the volume alone.
    Newer {
        /// The volume's schema.
        found: u32,
        /// The newest schema this RayOS reads.
        supported: u32,
    },
}

/// One step from schema `from` to `from + 1`.
pub struct Migration {
    /// The schema it starts from (it leads to `from + 1`).
    pub from: u32,
    /// What it does, for logs.
    pub name: &'static str,
    /// The step itself; it saves what it changes through the [`Backup`] first.
    pub run: fn(&DataLayout, &Backup) -> Result<(), SchemaError>,
}

/// Every migration, in order. Today the only one writes the file itself.
pub const MIGRATIONS: &[Migration] = &[Migration {
    from: 0,
    name: "none -> 1: record the schema version",
    run: |_, _| Ok(()),
}];

/// Saves files into `schema-backup/<from>/` before a migration changes them.
pub struct Backup {
    root: PathBuf,
    dir: PathBuf,
}

impl Backup {
    /// Copies `path` (inside the volume) into the backup, once; records a
    /// missing file as missing (`<name>.absent`), so a restore removes it.
    pub fn save(&self, path: &Path) -> Result<(), SchemaError> {
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        let dst = self.dir.join(rel);
        let absent = with_suffix(&dst, ".absent");
        if dst.exists() || absent.exists() {
            return Ok(());
        }
        if let Some(d) = dst.parent() {
            fs::create_dir_all(d).map_err(|e| SchemaError::Write(d.to_path_buf(), e))?;
        }
        match fs::copy(path, &dst) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::write(&absent, b"").map_err(|e| SchemaError::Write(absent.clone(), e))?;
            }
            Err(e) => return Err(SchemaError::Read(path.to_path_buf(), e)),
        }
        Ok(())
    }
}

fn with_suffix(p: &Path, s: &str) -> PathBuf {
    let mut n = p.file_name().unwrap_or_default().to_os_string();
    n.push(s);
    p.with_file_name(n)
}

/// The last migration, as recorded on the data volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationRecord {
    /// The schema before.
    pub from: u32,
    /// The schema after.
    pub to: u32,
    /// When it ran (RFC 3339).
    pub at: String,
}

/// The volume's schema version (0 when the file is missing).
pub fn read(layout: &DataLayout) -> Result<u32, SchemaError> {
    let p = layout.schema_version();
    match rayos_state::read_with_fallback(&p) {
        Ok((b, _)) => String::from_utf8_lossy(&b)
            .trim()
            .parse()
            .map_err(|_| SchemaError::Parse(p)),
        Err(rayos_state::AtomicError::Read { source, .. })
            if source.kind() == io::ErrorKind::NotFound =>
        {
            Ok(0)
        }
        Err(
            rayos_state::AtomicError::Read { source, .. }
            | rayos_state::AtomicError::Write { source, .. },
        ) => Err(SchemaError::Read(p, source)),
    }
}

/// The pending migration run, if one is not blessed yet.
pub fn pending(layout: &DataLayout) -> Option<MigrationRecord> {
    let b = fs::read(layout.root().join(RECORD_FILE)).ok()?;
    serde_json::from_slice(&b).ok()
}

/// Checks the volume against `target` (this RayOS's schema) and migrates
/// an older one (see the module docs).
pub fn check_and_migrate(layout: &DataLayout, target: u32) -> Result<SchemaCheck, SchemaError> {
    let found = read(layout)?;
    if found == target {
        return Ok(SchemaCheck::Current(found));
    }
    if found > target {
        return Ok(SchemaCheck::Newer {
            found,
            supported: target,
        });
    }
    let rec_path = layout.root().join(RECORD_FILE);
    // A run already pending (an earlier unblessed boot) keeps its `from`:
    // the backup holds that generation.
    let from = pending(layout).map(|r| r.from.min(found)).unwrap_or(found);
    let record = MigrationRecord {
        from,
        to: target,
        at: crate::state::now_rfc3339(),
    };
    rayos_state::write_atomic(
        &rec_path,
        (serde_json::to_string_pretty(&record).unwrap_or_default() + "\n").as_bytes(),
    )
    .map_err(|e| SchemaError::Atomic(rec_path.clone(), e))?;
    let backup = Backup {
        root: layout.root().to_path_buf(),
        dir: layout.root().join(BACKUP_DIR).join(from.to_string()),
    };
    fs::create_dir_all(&backup.dir).map_err(|e| SchemaError::Write(backup.dir.clone(), e))?;
    backup.save(&layout.schema_version())?;
    let mut v = found;
    while v < target {
        let m = MIGRATIONS
            .iter()
            .find(|m| m.from == v)
            .ok_or(SchemaError::NoMigration(v))?;
        (m.run)(layout, &backup)?;
        v += 1;
        // Each step is recorded, so an interrupted run resumes where it was.
        write_version(layout, v)?;
    }
    Ok(SchemaCheck::Migrated { from: found, to: v })
}

fn write_version(layout: &DataLayout, v: u32) -> Result<(), SchemaError> {
    let p = layout.schema_version();
    rayos_state::write_atomic(&p, format!("{v}\n").as_bytes())
        .map_err(|e| SchemaError::Atomic(p, e))
}

/// The migrated version was blessed: drop the old generation.
pub fn commit(layout: &DataLayout) -> Result<bool, SchemaError> {
    let rec = layout.root().join(RECORD_FILE);
    if !rec.exists() {
        return Ok(false);
    }
    let dir = layout.root().join(BACKUP_DIR);
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(|e| SchemaError::Write(dir.clone(), e))?;
    }
    fs::remove_file(&rec).map_err(|e| SchemaError::Write(rec.clone(), e))?;
    let _ = fs::remove_file(rayos_state::atomic::previous_path(&rec));
    Ok(true)
}

/// Puts the pre-migration generation back (recovery). Returns its schema.
pub fn restore(layout: &DataLayout) -> Result<u32, SchemaError> {
    let rec = pending(layout).ok_or_else(|| SchemaError::NoBackup(layout.root().to_path_buf()))?;
    let dir = layout.root().join(BACKUP_DIR).join(rec.from.to_string());
    if !dir.is_dir() {
        return Err(SchemaError::NoBackup(dir));
    }
    restore_tree(&dir, &dir, layout.root())?;
    // The restored `schema-version` (or its absence) is the old one; clear
    // the `.prev` generation so a fallback read cannot pick the newer one.
    let _ = fs::remove_file(rayos_state::atomic::previous_path(&layout.schema_version()));
    commit(layout)?;
    Ok(rec.from)
}

fn restore_tree(base: &Path, dir: &Path, root: &Path) -> Result<(), SchemaError> {
    for e in fs::read_dir(dir).map_err(|e| SchemaError::Read(dir.to_path_buf(), e))? {
        let e = e.map_err(|e| SchemaError::Read(dir.to_path_buf(), e))?;
        let p = e.path();
        if p.is_dir() {
            restore_tree(base, &p, root)?;
            continue;
        }
        let rel = p.strip_prefix(base).unwrap_or(&p);
        let name = rel.to_string_lossy();
        if let Some(orig) = name.strip_suffix(".absent") {
            let _ = fs::remove_file(root.join(orig));
        } else {
            let bytes = fs::read(&p).map_err(|e| SchemaError::Read(p.clone(), e))?;
            let dst = root.join(rel);
            rayos_state::write_atomic(&dst, &bytes)
                .map_err(|e| SchemaError::Atomic(dst.clone(), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_none_to_1_and_commits() {
        let d = tempfile::tempdir().unwrap();
        let l = DataLayout::new(d.path());
        assert_eq!(read(&l).unwrap(), 0);
        assert_eq!(
            check_and_migrate(&l, 1).unwrap(),
            SchemaCheck::Migrated { from: 0, to: 1 }
        );
        assert_eq!(read(&l).unwrap(), 1);
        assert_eq!(pending(&l).unwrap().from, 0);
        assert!(
            d.path()
                .join("schema-backup/0/schema-version.absent")
                .exists()
        );
        // A second boot before blessing: already current.
        assert_eq!(check_and_migrate(&l, 1).unwrap(), SchemaCheck::Current(1));
        assert!(commit(&l).unwrap());
        assert!(!d.path().join(BACKUP_DIR).exists());
        assert!(pending(&l).is_none());
        assert!(!commit(&l).unwrap());
    }

    #[test]
    fn newer_schema_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let l = DataLayout::new(d.path());
        fs::write(l.schema_version(), "7\n").unwrap();
        let before: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            check_and_migrate(&l, 1).unwrap(),
            SchemaCheck::Newer {
                found: 7,
                supported: 1
            }
        );
        let after: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(before, after, "nothing written");
        fs::write(l.schema_version(), "seven\n").unwrap();
        assert!(matches!(read(&l), Err(SchemaError::Parse(_))));
    }

    #[test]
    fn restore_puts_the_old_generation_back() {
        let d = tempfile::tempdir().unwrap();
        let l = DataLayout::new(d.path());
        check_and_migrate(&l, 1).unwrap();
        assert_eq!(restore(&l).unwrap(), 0);
        assert_eq!(read(&l).unwrap(), 0);
        assert!(!l.schema_version().exists());
        assert!(matches!(restore(&l), Err(SchemaError::NoBackup(_))));
        // Unknown older schema with no migration path.
        let d = tempfile::tempdir().unwrap();
        let l = DataLayout::new(d.path());
        assert!(matches!(
            check_and_migrate(&l, 3),
            Err(SchemaError::NoMigration(1))
        ));
    }
}
