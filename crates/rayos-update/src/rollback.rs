//! Going back to the previous version: by hand (`rayos update rollback`)
//! and as PID 1 sees it after systemd-boot fell back.
//!
//! Mechanism (no EFI variable, so it works the same from recovery, on an
//! image file and on a machine whose firmware drops variables): every entry
//! that systemd-boot would pick before the target is renamed to `+0-N`
//! (0 tries left): systemd-boot sorts those last, so the target becomes the
//! default. `LoaderEntryDefault` was rejected: it pins one entry for good,
//! so the next update would not become the default.
//!
//! At boot, PID 1 calls [`detect`]: an installed entry *newer* than the
//! running version with 0 tries left means systemd-boot fell back (or the
//! user rolled back). It is reported with a reason — the demotion recorded
//! in the update state, else what the data volume's boot records of that
//! version say — and renamed to `<name>.bad` so it leaves the menu.

use std::cmp::Ordering;
use std::fs;
use std::path::{Path, PathBuf};

use crate::entries::{self, EntriesError, Entry, EntryState, LINUX_DIR};
use crate::state::{self, Action, Demotion, Rollback, UpdateState};
use crate::version;

/// Why a rollback could not be done or recorded.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// Listing or renaming boot entries failed.
    #[error(transparent)]
    Entries(#[from] EntriesError),
    /// No earlier good version to go back to; holds the entries' directory.
    #[error("no earlier good RayOS version on {0} to go back to")]
    NoPrevious(PathBuf),
    /// The rollback could not be recorded; holds the state file.
    #[error("cannot record the rollback in {0}")]
    Record(PathBuf, #[source] rayos_state::AtomicError),
}

/// What a manual rollback did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolledBack {
    /// The UKI file that boots next.
    pub target: String,
    /// (from, to) renames.
    pub demoted: Vec<(String, String)>,
}

/// Makes the newest good version older than `running` (or than the current
/// default when `running` is unknown) the default at the next boot.
pub fn rollback(system: &Path, running: Option<&str>) -> Result<RolledBack, RollbackError> {
    let linux = system.join(LINUX_DIR);
    let list = entries::list(&linux)?;
    let reference = running.map(str::to_string).or_else(|| {
        entries::default_entry(&list, entries::DEFAULT_PATTERN).map(|e| e.version.clone())
    });
    let Some(reference) = reference else {
        return Err(RollbackError::NoPrevious(linux));
    };
    let target = crate::apply::previous_good(&list, &reference)
        .cloned()
        .ok_or_else(|| RollbackError::NoPrevious(linux.clone()))?;
    let menu: Vec<Entry> = entries::menu(&list).into_iter().cloned().collect();
    let mut demoted = Vec::new();
    let mut st = UpdateState::read(system);
    let at = state::now_rfc3339();
    for e in menu.iter().take_while(|e| e.file != target.file) {
        if e.version == target.version {
            continue;
        }
        let to = e.counted_name(0, e.tries_done.unwrap_or(0));
        if to != e.file {
            entries::rename_synced(&linux, &e.file, &to)?;
            demoted.push((e.file.clone(), to));
        }
        st.demoted.push(Demotion {
            version: e.version.clone(),
            reason: format!(
                "rollback to {} requested with rayos update rollback",
                target.version
            ),
            at: at.clone(),
        });
    }
    st.last = Some(Action {
        action: "rollback".into(),
        version: target.version.clone(),
        from: Some(reference),
        at,
        result: format!("{} boots next", target.file),
    });
    st.write(system)
        .map_err(|e| RollbackError::Record(state::path(system), e))?;
    Ok(RolledBack {
        target: target.file,
        demoted,
    })
}

/// A rollback found at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// The version that failed.
    pub failed: String,
    /// Its UKI file.
    pub file: String,
    /// Why it failed (a demotion's reason, or what its boot records show).
    pub reason: String,
    /// The name it was renamed to (`.bad`), when that worked.
    pub marked_bad: Option<String>,
}

impl Detected {
    /// `RAYOS_ROLLBACK:<failed-version>:<reason>` (on one line).
    pub fn marker(&self) -> rayos_base::marker::Marker {
        rayos_base::marker::Marker::Rollback {
            failed: self.failed.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// Finds newer entries with no tries left (see the module docs), marks them
/// bad and records the rollback. `data` is the mounted data volume, for the
/// failed version's boot records.
pub fn detect(
    system: &Path,
    running: &str,
    data: Option<&Path>,
) -> Result<Vec<Detected>, RollbackError> {
    let linux = system.join(LINUX_DIR);
    let list = entries::list(&linux)?;
    let mut found = Vec::new();
    let mut st = UpdateState::read(system);
    for e in list.iter().filter(|e| {
        e.state() == EntryState::Exhausted
            && version::compare(&e.version, running) == Ordering::Greater
    }) {
        let reason = match st.demotion(&e.version) {
            Some(d) => d.reason.clone(),
            None => {
                let r = data
                    .map(|d| reason_from_boot_records(d, &e.version))
                    .unwrap_or_else(|| "no data volume to look for its logs".into());
                format!(
                    "failed to boot {} times: {r}",
                    e.tries_done.unwrap_or(entries::TRIES)
                )
            }
        };
        let bad = format!("{}{}", e.file, entries::BAD_SUFFIX);
        let marked_bad = entries::rename_synced(&linux, &e.file, &bad)
            .ok()
            .map(|_| bad);
        st.push_rollback(Rollback {
            failed: e.version.clone(),
            running: running.to_string(),
            reason: reason.clone(),
            at: state::now_rfc3339(),
        });
        found.push(Detected {
            failed: e.version.clone(),
            file: e.file.clone(),
            reason,
            marked_bad,
        });
    }
    if !found.is_empty() {
        st.write(system)
            .map_err(|e| RollbackError::Record(state::path(system), e))?;
    }
    Ok(found)
}

/// What the newest boot record of `version` on the data volume says.
/// Boot records (`boot/<time>-<id>.json`, written by PID 1) carry the UKI
/// file name they booted from in `image`.
pub fn reason_from_boot_records(data: &Path, version: &str) -> String {
    let dir = rayos_state::DataLayout::new(data).boot();
    let mut recs: Vec<(String, serde_json::Value)> = fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if !name.ends_with(".json") {
                        return None;
                    }
                    let b = fs::read(e.path()).ok()?;
                    let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
                    let image = v.get("image")?.as_str()?;
                    (entries::version_of_file(image).as_deref() == Some(version))
                        .then_some((name, v))
                })
                .collect()
        })
        .unwrap_or_default();
    // Names start with the boot's unix time.
    recs.sort_by(|a, b| a.0.cmp(&b.0));
    let Some((_, rec)) = recs.last() else {
        return format!(
            "no boot of {version} reached rayos init (kernel, initramfs or loader failure)"
        );
    };
    let result = rec
        .get("result")
        .and_then(|r| r.as_str())
        .unwrap_or("unknown");
    let fault = rec
        .get("faults")
        .and_then(|f| f.as_array())
        .and_then(|f| f.first())
        .and_then(|f| f.as_str())
        .map(|f| format!("; first fault: {}", f.chars().take(200).collect::<String>()))
        .unwrap_or_default();
    let what = match result {
        "booted" => "reached rayos init but rayosd never became healthy",
        "ready" => "became ready but was not blessed",
        other => other,
    };
    format!("{} boot(s) logged, last: {what}{fault}", recs.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sys_with(names: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join(LINUX_DIR)).unwrap();
        for n in names {
            fs::write(d.path().join(LINUX_DIR).join(n), n).unwrap();
        }
        d
    }

    fn names(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d.join(LINUX_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn manual_rollback_demotes_what_would_win() {
        let d = sys_with(&["rayos-0.1.0.efi", "rayos-0.2.0.efi"]);
        let r = rollback(d.path(), Some("0.2.0")).unwrap();
        assert_eq!(r.target, "rayos-0.1.0.efi");
        assert_eq!(
            names(d.path()),
            vec!["rayos-0.1.0.efi", "rayos-0.2.0+0.efi"]
        );
        let list = entries::list(&d.path().join(LINUX_DIR)).unwrap();
        assert_eq!(
            entries::default_entry(&list, entries::DEFAULT_PATTERN)
                .unwrap()
                .file,
            "rayos-0.1.0.efi"
        );
        // At the next boot 0.1.0 runs and reports the demotion as the reason.
        let found = detect(d.path(), "0.1.0", None).unwrap();
        assert_eq!(found.len(), 1);
        assert!(
            found[0].reason.contains("rayos update rollback"),
            "{found:?}"
        );
        assert!(matches!(
            found[0].marker(),
            rayos_base::marker::Marker::Rollback { failed, .. } if failed == "0.2.0"
        ));
        assert_eq!(
            names(d.path()),
            vec!["rayos-0.1.0.efi", "rayos-0.2.0+0.efi.bad"]
        );
        // Nothing older: refused.
        assert!(matches!(
            rollback(d.path(), Some("0.1.0")),
            Err(RollbackError::NoPrevious(_))
        ));
        let st = UpdateState::read(d.path());
        assert_eq!(st.rollbacks.len(), 1);
        assert!(st.demoted.is_empty());
    }

    #[test]
    fn boot_side_reason_from_records() {
        let d = sys_with(&["rayos-0.1.0.efi", "rayos-0.2.0+0-3.efi"]);
        let data = tempfile::tempdir().unwrap();
        let boot = data.path().join("boot");
        fs::create_dir_all(&boot).unwrap();
        fs::write(
            boot.join("100-a.json"),
            r#"{"image":"rayos-0.2.0+2-1.efi","result":"booted","faults":["policy: bad"]}"#,
        )
        .unwrap();
        fs::write(
            boot.join("090-b.json"),
            r#"{"image":"rayos-0.1.0.efi","result":"ready","faults":[]}"#,
        )
        .unwrap();
        let found = detect(d.path(), "0.1.0", Some(data.path())).unwrap();
        assert_eq!(found.len(), 1);
        assert!(
            found[0].reason.contains("rayosd never became healthy")
                && found[0].reason.contains("policy: bad"),
            "{}",
            found[0].reason
        );
        // No records of the version: the kernel or loader failed.
        assert!(reason_from_boot_records(data.path(), "0.3.0").contains("no boot of 0.3.0"));
        // Running the newest: nothing to report; older exhausted ones are
        // not rollbacks.
        let d = sys_with(&["rayos-0.1.0+0-3.efi", "rayos-0.2.0.efi"]);
        assert!(detect(d.path(), "0.2.0", None).unwrap().is_empty());
        assert_eq!(
            names(d.path()),
            vec!["rayos-0.1.0+0-3.efi", "rayos-0.2.0.efi"]
        );
    }
}
