//! Blessing a boot: systemd-boot's boot counting, the RayOS side.
//!
//! A new UKI is installed as `rayos-<version>+3.efi`. Before booting it,
//! systemd-boot renames it to `+2-1`, `+1-2`, … (tries left, tries done).
//! Nothing else on a RayOS machine marks the boot good, so once rayosd is
//! healthy, init renames the running file to `rayos-<version>.efi`; a
//! version that never gets there runs out of tries and systemd-boot falls
//! back to the previous one.
//!
//! Names are split at the counter by `rayos_base::uki_name` (systemd-boot's
//! rules; any `*.efi` name, so a foreign UKI is blessed the same way).
//!
//! Which file is running comes from the EFI variables the loader and stub
//! set (vendor `rayos_base::efivar::LOADER_VENDOR`), in this order:
//! `StubImageIdentifier` (path of the UKI, newer stubs), `LoaderEntrySelected`
//! (the entry id: the file name, with or without its counter, depending on
//! the systemd-boot version), `LoaderImageIdentifier` when it points into
//! `\EFI\Linux\`. The id may still carry the counter from *before* the
//! loader's rename, so matching is by the name without counter.
//!
//! Known upstream failure modes handled (PLATFORM_NOTES):
//! - a plain `foo.efi` next to `foo+3.efi`: when the loader says the counted
//!   file is running, it replaces the plain one (rename is atomic); when it
//!   cannot say which one ran, nothing is touched and the ambiguity is
//!   reported;
//! - an entry with 0 tries left (`foo+0-3.efi`) that still booted and reached
//!   healthy is blessed like any other.

use std::fs;
use std::path::Path;

use rayos_base::efivar;
use rayos_base::uki_name::UkiName;
use rayos_update::entries::{self, EntriesError};

fn loader_string(efivars: &Path, name: &str) -> Option<String> {
    efivar::read_string(efivars, name, efivar::LOADER_VENDOR)
}

/// The file name of the running UKI as the firmware variables tell it.
pub fn running_uki(efivars: &Path) -> Option<String> {
    let base = |p: &str| p.rsplit(['\\', '/']).next().unwrap_or(p).to_string();
    if let Some(p) = loader_string(efivars, "StubImageIdentifier") {
        return Some(base(&p));
    }
    if let Some(id) = loader_string(efivars, "LoaderEntrySelected")
        && id.to_ascii_lowercase().ends_with(".efi")
    {
        return Some(base(&id));
    }
    let p = loader_string(efivars, "LoaderImageIdentifier")?;
    let lower = p.to_ascii_lowercase().replace('/', "\\");
    lower.contains("\\efi\\linux\\").then(|| base(&p))
}

/// What [`bless`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlessOutcome {
    /// The running UKI was renamed without its counter.
    Blessed {
        /// Its name before.
        from: String,
        /// Its name after.
        to: String,
    },
    /// The running image has no counter (already blessed, or never counted).
    AlreadyBlessed(String),
    /// No file of that name in the directory (booted from elsewhere).
    NotFound(String),
    /// More than one counted file could be the running one: left alone.
    Ambiguous(Vec<String>),
}

/// Renames the running UKI `running` in `dir` (`/EFI/Linux` on the system
/// partition) to its name without counter, then syncs the directory.
pub fn bless(dir: &Path, running: &str) -> Result<BlessOutcome, EntriesError> {
    let Some(run) = UkiName::parse(running) else {
        return Ok(BlessOutcome::NotFound(running.to_string()));
    };
    let mut counted = Vec::new();
    let mut plain_exists = false;
    let plain_name = run.plain();
    for e in fs::read_dir(dir).map_err(|e| EntriesError::List(dir.to_path_buf(), e))? {
        let e = e.map_err(|e| EntriesError::List(dir.to_path_buf(), e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(c) = UkiName::parse(&name) else {
            continue;
        };
        if c.stem != run.stem {
            continue;
        }
        if c.is_counted() {
            counted.push(name);
        } else if name.eq_ignore_ascii_case(&plain_name) {
            plain_exists = true;
        }
    }
    counted.sort();
    let from = if counted.iter().any(|c| c == running) {
        // The loader named the exact counted file: it is the one that ran.
        running.to_string()
    } else if run.is_counted() {
        // The id carries the counter from before the loader's rename.
        match counted.len() {
            0 if plain_exists => return Ok(BlessOutcome::AlreadyBlessed(plain_name)),
            0 => return Ok(BlessOutcome::NotFound(running.to_string())),
            1 => counted[0].clone(),
            _ => return Ok(BlessOutcome::Ambiguous(counted)),
        }
    } else {
        // Counter-less id: a newer loader strips it from entry ids.
        match (plain_exists, counted.len()) {
            (true, 0) => return Ok(BlessOutcome::AlreadyBlessed(plain_name)),
            (false, 0) => return Ok(BlessOutcome::NotFound(running.to_string())),
            (false, 1) => counted[0].clone(),
            _ => {
                let mut all = counted;
                if plain_exists {
                    all.push(plain_name);
                }
                return Ok(BlessOutcome::Ambiguous(all));
            }
        }
    };
    // Synced: the new name must survive a power cut right after READY.
    entries::rename_synced(dir, &from, &plain_name)?;
    Ok(BlessOutcome::Blessed {
        from,
        to: plain_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(names: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for n in names {
            fs::write(d.path().join(n), n.as_bytes()).unwrap();
        }
        d
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn blesses_the_file_the_loader_renamed() {
        // Loader id from before its rename (+3), file now +2-1.
        let d = dir_with(&["rayos-0.2+2-1.efi", "rayos-0.1.efi", "rayos-recovery.efi"]);
        let out = bless(d.path(), "rayos-0.2+3.efi").unwrap();
        assert_eq!(
            out,
            BlessOutcome::Blessed {
                from: "rayos-0.2+2-1.efi".into(),
                to: "rayos-0.2.efi".into()
            }
        );
        assert_eq!(
            names(d.path()),
            vec!["rayos-0.1.efi", "rayos-0.2.efi", "rayos-recovery.efi"]
        );
        // Idempotent: a second call changes nothing.
        assert_eq!(
            bless(d.path(), "rayos-0.2+3.efi").unwrap(),
            BlessOutcome::AlreadyBlessed("rayos-0.2.efi".into())
        );
    }

    #[test]
    fn exact_counted_name_replaces_a_stale_plain_file() {
        let d = dir_with(&["rayos-0.2.efi", "rayos-0.2+2-1.efi"]);
        let out = bless(d.path(), "rayos-0.2+2-1.efi").unwrap();
        assert!(matches!(out, BlessOutcome::Blessed { .. }), "{out:?}");
        assert_eq!(names(d.path()), vec!["rayos-0.2.efi"]);
        assert_eq!(
            fs::read(d.path().join("rayos-0.2.efi")).unwrap(),
            b"rayos-0.2+2-1.efi"
        );
    }

    #[test]
    fn plain_next_to_counted_with_stripped_id_is_left_alone() {
        let d = dir_with(&["rayos-0.2.efi", "rayos-0.2+3.efi"]);
        let out = bless(d.path(), "rayos-0.2.efi").unwrap();
        assert!(
            matches!(out, BlessOutcome::Ambiguous(ref v) if v.len() == 2),
            "{out:?}"
        );
        assert_eq!(names(d.path()), vec!["rayos-0.2+3.efi", "rayos-0.2.efi"]);
    }

    #[test]
    fn zero_tries_left_still_blessed_and_stripped_id_works() {
        let d = dir_with(&["rayos-0.3+0-3.efi"]);
        let out = bless(d.path(), "rayos-0.3.efi").unwrap();
        assert_eq!(
            out,
            BlessOutcome::Blessed {
                from: "rayos-0.3+0-3.efi".into(),
                to: "rayos-0.3.efi".into()
            }
        );
    }

    #[test]
    fn unknown_and_missing() {
        let d = dir_with(&["rayos-0.1.efi"]);
        assert_eq!(
            bless(d.path(), "rayos-9.efi").unwrap(),
            BlessOutcome::NotFound("rayos-9.efi".into())
        );
        assert!(matches!(
            bless(&d.path().join("nope"), "x.efi"),
            Err(EntriesError::List(..))
        ));
    }

    #[test]
    fn reads_efi_variables() {
        let d = tempfile::tempdir().unwrap();
        // As the loader leaves them: BS|RT (no NV), UCS-2 with a NUL.
        let put = |name: &str, s: &str| {
            let b = [&[6u8, 0, 0, 0][..], &efivar::ucs2_z(s)].concat();
            fs::write(efivar::var_path(d.path(), name, efivar::LOADER_VENDOR), b).unwrap();
        };
        assert_eq!(running_uki(d.path()), None);
        put(
            "LoaderImageIdentifier",
            "\\EFI\\systemd\\systemd-bootx64.efi",
        );
        assert_eq!(
            running_uki(d.path()),
            None,
            "the loader's own path is not a UKI"
        );
        put("LoaderEntrySelected", "rayos-0.2+3.efi");
        assert_eq!(running_uki(d.path()).as_deref(), Some("rayos-0.2+3.efi"));
        put("StubImageIdentifier", "\\EFI\\Linux\\rayos-0.2+2-1.efi");
        assert_eq!(running_uki(d.path()).as_deref(), Some("rayos-0.2+2-1.efi"));
    }
}
