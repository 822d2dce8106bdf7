//! `rayos update status`: what is installed on the system partition and what
//! systemd-boot will do with it.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::entries::{self, EntriesError, EntryState, LINUX_DIR};
use crate::state::{Action, Rollback, UpdateState};

/// One UKI as `rayos update status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EntryStatus {
    /// Its file name.
    pub file: String,
    /// The version it boots.
    pub version: String,
    /// How it stands.
    pub state: EntryState,
    /// Boots left before it counts as failed (none without a counter).
    pub tries_left: Option<u32>,
    /// Failed boots counted so far (none without a counter).
    pub tries_done: Option<u32>,
    /// Whether it is the version that runs.
    pub running: bool,
    /// Whether systemd-boot boots it next.
    pub default: bool,
}

/// What `rayos update status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The running RayOS version, when known.
    pub running_version: Option<String>,
    /// Where the running version came from (EFI variable, binary).
    pub running_source: String,
    /// The entry systemd-boot boots next, by its rules.
    pub default: Option<String>,
    /// loader.conf's `default` pattern (RayOS writes `rayos-*`).
    pub loader_default_pattern: String,
    /// Bootable entries in menu order, then the ones marked bad.
    pub entries: Vec<EntryStatus>,
    /// Whether the recovery boot entry is installed.
    pub recovery_entry: bool,
    /// The last update action.
    pub last: Option<Action>,
    /// The last three rollbacks, newest first.
    pub rollbacks: Vec<Rollback>,
}

/// Reads the system partition at `system`. `pattern` is loader.conf's
/// `default` (RayOS writes `rayos-*`).
pub fn status(
    system: &Path,
    running: Option<&str>,
    running_source: &str,
    pattern: &str,
) -> Result<Status, EntriesError> {
    let list = entries::list(&system.join(LINUX_DIR))?;
    let default = entries::default_entry(&list, pattern).map(|e| e.file.clone());
    let mut ordered: Vec<&entries::Entry> = entries::menu(&list);
    ordered.extend(list.iter().filter(|e| e.marked_bad));
    let st = UpdateState::read(system);
    Ok(Status {
        running_version: running.map(str::to_string),
        running_source: running_source.to_string(),
        default: default.clone(),
        loader_default_pattern: pattern.to_string(),
        entries: ordered
            .into_iter()
            .map(|e| EntryStatus {
                file: e.file.clone(),
                version: e.version.clone(),
                state: e.state(),
                tries_left: e.tries_left,
                tries_done: e.tries_done,
                running: running == Some(e.version.as_str()) && !e.marked_bad,
                default: default.as_deref() == Some(e.file.as_str()),
            })
            .collect(),
        recovery_entry: system.join(crate::apply::RECOVERY_ENTRY).is_file(),
        last: st.last,
        rollbacks: st.rollbacks.iter().rev().take(3).cloned().collect(),
    })
}

impl Status {
    /// The report as text for people.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "running:  RayOS {} ({})",
            self.running_version.as_deref().unwrap_or("unknown"),
            self.running_source
        );
        let _ = writeln!(
            s,
            "default:  {} (loader.conf default {})",
            self.default
                .as_deref()
                .unwrap_or("none: the boot menu has no RayOS entry"),
            self.loader_default_pattern
        );
        let _ = writeln!(s, "installed (boot menu order):");
        for e in &self.entries {
            let tries = match (e.state, e.tries_left) {
                (EntryState::Good, _) => "blessed".to_string(),
                (EntryState::Bad, _) => "marked bad, not in the menu".to_string(),
                (_, Some(l)) => format!("{l} tries left, {} done", e.tries_done.unwrap_or(0)),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "  {:<12} {:<28} {:<34}{}{}",
                e.version,
                e.file,
                tries,
                if e.running { " [running]" } else { "" },
                if e.default { " [default]" } else { "" }
            );
        }
        let _ = writeln!(
            s,
            "recovery entry: {}",
            if self.recovery_entry {
                "present"
            } else {
                "missing (reinstall or apply a bundle with a recovery UKI)"
            }
        );
        match &self.last {
            Some(a) => {
                let _ = writeln!(
                    s,
                    "last action: {} {} at {}: {}",
                    a.action, a.version, a.at, a.result
                );
            }
            None => {
                let _ = writeln!(s, "last action: none");
            }
        }
        for r in &self.rollbacks {
            let _ = writeln!(
                s,
                "rollback: {} -> {} at {}: {}",
                r.failed, r.running, r.at, r.reason
            );
        }
        s
    }
}
