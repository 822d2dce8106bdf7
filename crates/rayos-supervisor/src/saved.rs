//! Saved state in `vm/<id>/state/`: `vm.state` (written by the `Vmm`) and
//! `meta.json` (written by the supervisor before each save: the backend's
//! fingerprint of the VM's configuration, and when).
//!
//! A state is *usable* when both files exist and the stored fingerprint
//! equals `Vmm::fingerprint` now. An unusable state is never deleted: it is
//! moved to `state/unusable-<unix time>/` and listed by `show`. `start
//! --fresh` is the one explicit way to delete a saved state. After a
//! successful restore the state file is deleted, because the guest then
//! changes its disks and the old state would no longer match them.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rayos_api::SavedState;
use rayos_state::layout::vm as vmdirs;
use serde::{Deserialize, Serialize};

/// The saved state's file name in a VM's `state/` directory.
pub const STATE_FILE: &str = "vm.state";
/// The file beside it that records its fingerprint and time.
pub const META_FILE: &str = "meta.json";
const UNUSABLE_PREFIX: &str = "unusable-";

/// Why a saved state could not be recorded, kept aside or removed.
#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    /// The metadata file could not be written.
    #[error("cannot write {path}")]
    WriteMeta {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// An unusable state could not be moved aside.
    #[error("cannot move the unusable saved state {path} aside")]
    MoveAside {
        /// The state's directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The saved state could not be removed.
    #[error("cannot remove the saved state {path}")]
    Remove {
        /// The state file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// What is recorded beside a saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The VM's fingerprint when it was saved; a restore needs the same.
    pub fingerprint: String,
    /// When it was saved, in seconds since the Unix epoch.
    pub saved_at: u64,
}

/// What `state/` holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No saved state.
    None,
    /// A saved state that can be restored.
    Usable(SavedState),
    /// Present but not restorable, with the reason.
    Unusable(SavedState, String),
}

/// The `state/` directory of the VM whose directory is `vm_dir`.
pub fn state_dir(vm_dir: &Path) -> PathBuf {
    vm_dir.join(vmdirs::STATE)
}

/// The saved state's file of the VM whose directory is `vm_dir`.
pub fn state_file(vm_dir: &Path) -> PathBuf {
    state_dir(vm_dir).join(STATE_FILE)
}

fn meta_file(vm_dir: &Path) -> PathBuf {
    state_dir(vm_dir).join(META_FILE)
}

/// Seconds since the Unix epoch (0 when the clock is before it).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Looks at `state/` and compares with the fingerprint the VM has now.
pub fn inspect(vm_dir: &Path, fingerprint_now: &str) -> Found {
    let file = state_file(vm_dir);
    let Ok(md) = fs::metadata(&file) else {
        return Found::None;
    };
    let meta: Option<Meta> = fs::read(meta_file(vm_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mut info = SavedState {
        path: file,
        bytes: md.len(),
        saved_at: meta.as_ref().map(|m| m.saved_at).unwrap_or(0),
        usable: false,
    };
    match meta {
        None => Found::Unusable(info, "its meta.json is missing or unreadable".into()),
        Some(m) if m.fingerprint != fingerprint_now => Found::Unusable(
            info,
            "the VM's configuration or the QEMU version changed since it was saved".into(),
        ),
        Some(_) if md.len() == 0 => Found::Unusable(info, "the state file is empty".into()),
        Some(_) => {
            info.usable = true;
            Found::Usable(info)
        }
    }
}

/// Records the fingerprint a save is about to be taken with.
pub fn write_meta(vm_dir: &Path, fingerprint: &str) -> Result<(), SavedError> {
    let dir = state_dir(vm_dir);
    let path = meta_file(vm_dir);
    let meta = Meta {
        fingerprint: fingerprint.to_string(),
        saved_at: now_secs(),
    };
    let bytes = serde_json::to_vec_pretty(&meta).unwrap_or_default();
    // Root's alone, like everything under the VM's directory
    // (`rayos_state::modes`): made so rather than tightened at the next start.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|source| SavedError::WriteMeta {
            path: dir.clone(),
            source,
        })
        .and_then(|_| {
            rayos_state::write_atomic_mode(&path, &bytes, 0o600).map_err(|e| {
                SavedError::WriteMeta {
                    path: path.clone(),
                    source: io::Error::other(e.to_string()),
                }
            })
        })
}

/// Removes `meta.json` after a save that did not produce a state file (the
/// state file itself is removed by the backend).
pub fn forget_meta(vm_dir: &Path) {
    let _ = fs::remove_file(meta_file(vm_dir));
    let _ = fs::remove_file(rayos_state::atomic::previous_path(&meta_file(vm_dir)));
}

/// Moves `vm.state` and `meta.json` into `state/unusable-<time>/`; returns
/// the new directory.
pub fn move_aside(vm_dir: &Path) -> Result<PathBuf, SavedError> {
    let dir = state_dir(vm_dir);
    let mut target = dir.join(format!("{UNUSABLE_PREFIX}{}", now_secs()));
    let mut n = 1;
    while target.exists() {
        target = dir.join(format!("{UNUSABLE_PREFIX}{}-{n}", now_secs()));
        n += 1;
    }
    let err = |source| SavedError::MoveAside {
        path: state_file(vm_dir),
        source,
    };
    fs::create_dir_all(&target).map_err(err)?;
    for name in [STATE_FILE, META_FILE] {
        let from = dir.join(name);
        if from.exists() {
            fs::rename(&from, target.join(name)).map_err(err)?;
        }
    }
    Ok(target)
}

/// Deletes the saved state (after a restore consumed it, or `--fresh`).
pub fn remove(vm_dir: &Path) -> Result<(), SavedError> {
    let file = state_file(vm_dir);
    match fs::remove_file(&file) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(SavedError::Remove { path: file, source }),
    }
    forget_meta(vm_dir);
    Ok(())
}

/// The `unusable-*` directories kept in `state/`, oldest first.
pub fn unusable(vm_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(state_dir(vm_dir))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(UNUSABLE_PREFIX))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_only_with_matching_fingerprint() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(inspect(d.path(), "fp"), Found::None);
        write_meta(d.path(), "fp").unwrap();
        assert_eq!(
            inspect(d.path(), "fp"),
            Found::None,
            "meta alone is no state"
        );
        fs::write(state_file(d.path()), b"state").unwrap();
        assert!(matches!(inspect(d.path(), "fp"), Found::Usable(s) if s.bytes == 5));
        assert!(matches!(inspect(d.path(), "other"), Found::Unusable(..)));
        forget_meta(d.path());
        assert!(matches!(inspect(d.path(), "fp"), Found::Unusable(..)));
    }

    /// The state directory and `meta.json` are root's alone from the
    /// start (a rayosd restart found meta.json 0644 and tightened it).
    #[test]
    fn meta_is_private_from_the_start() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        write_meta(d.path(), "fp").unwrap();
        write_meta(d.path(), "fp2").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state_dir(d.path())), 0o700);
        assert_eq!(mode(&meta_file(d.path())), 0o600);
        let prev = rayos_state::atomic::previous_path(&meta_file(d.path()));
        assert_eq!(mode(&prev), 0o600);
    }

    #[test]
    fn move_aside_keeps_both_files() {
        let d = tempfile::tempdir().unwrap();
        write_meta(d.path(), "fp").unwrap();
        fs::write(state_file(d.path()), b"state").unwrap();
        let aside = move_aside(d.path()).unwrap();
        assert_eq!(fs::read(aside.join(STATE_FILE)).unwrap(), b"state");
        assert!(aside.join(META_FILE).exists());
        assert_eq!(inspect(d.path(), "fp"), Found::None);
        assert_eq!(unusable(d.path()), vec![aside]);
        // A second one in the same second gets its own directory.
        fs::write(state_file(d.path()), b"again").unwrap();
        move_aside(d.path()).unwrap();
        assert_eq!(unusable(d.path()).len(), 2);
    }
}
