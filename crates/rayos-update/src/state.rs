//! `/rayos/update-state.json` on the system partition: what the last update
//! action did and the rollbacks seen, for `rayos update status` and for
//! the reason PID 1 prints with `RAYOS_ROLLBACK`.
//!
//! Written with `rayos_state::write_atomic` (temp, fsync, rename, previous
//! generation kept); read leniently: a missing or damaged file is an empty
//! state, never an error that blocks an update or a boot.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The state file's path on the system partition.
pub const STATE_FILE: &str = "rayos/update-state.json";
/// Rollback records kept.
const KEEP_ROLLBACKS: usize = 10;

/// The contents of `update-state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateState {
    /// The last update action (`apply`, `rollback`), if any.
    #[serde(default)]
    pub last: Option<Action>,
    /// Versions demoted on purpose (rollback, downgrade), with why: PID 1
    /// reports these as the reason instead of looking for a failure.
    #[serde(default)]
    pub demoted: Vec<Demotion>,
    /// The rollbacks seen at boot, oldest first (the last 10).
    #[serde(default)]
    pub rollbacks: Vec<Rollback>,
}

/// One update action and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// `apply`, `rollback`.
    pub action: String,
    /// The version it installed or went back to.
    pub version: String,
    /// The version that ran before, when known.
    pub from: Option<String>,
    /// When it happened (RFC 3339).
    pub at: String,
    /// What came of it, for people (`rayos-1.2.efi boots next`).
    pub result: String,
}

/// A version demoted on purpose, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Demotion {
    /// The demoted version.
    pub version: String,
    /// Why (the rollback or downgrade that demoted it).
    pub reason: String,
    /// When (RFC 3339).
    pub at: String,
}

/// A rollback seen at boot: a newer version failed and an older one runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    /// The version that failed (or was demoted).
    pub failed: String,
    /// The version that runs instead.
    pub running: String,
    /// Why the version failed.
    pub reason: String,
    /// When the rollback was seen (RFC 3339).
    pub at: String,
}

/// The state file on the system partition mounted at `system`.
pub fn path(system: &Path) -> PathBuf {
    system.join(STATE_FILE)
}

impl UpdateState {
    /// Reads the state file; a missing or damaged one is an empty state.
    pub fn read(system: &Path) -> UpdateState {
        rayos_state::read_with_fallback(&path(system))
            .ok()
            .and_then(|(b, _)| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes the state file atomically (the previous generation kept).
    pub fn write(&self, system: &Path) -> Result<(), rayos_state::AtomicError> {
        let p = path(system);
        if let Some(d) = p.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let text = serde_json::to_string_pretty(self).unwrap_or_default() + "\n";
        rayos_state::write_atomic(&p, text.as_bytes())
    }

    /// Records a rollback (keeping the last 10); the version is no longer
    /// counted as demoted on purpose.
    pub fn push_rollback(&mut self, r: Rollback) {
        self.demoted.retain(|d| d.version != r.failed);
        self.rollbacks.push(r);
        let n = self.rollbacks.len();
        if n > KEEP_ROLLBACKS {
            self.rollbacks.drain(..n - KEEP_ROLLBACKS);
        }
    }

    /// Why `version` was demoted on purpose, if it was (the latest reason).
    pub fn demotion(&self, version: &str) -> Option<&Demotion> {
        self.demoted.iter().rev().find(|d| d.version == version)
    }
}

/// Timestamps come from rayos-state (shared with the other state files).
pub use rayos_state::time::{now_rfc3339, rfc3339};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_lenient_read() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(UpdateState::read(d.path()), UpdateState::default());
        let mut s = UpdateState::default();
        for i in 0..12 {
            s.push_rollback(Rollback {
                failed: format!("0.{i}"),
                running: "0.1".into(),
                reason: "x".into(),
                at: rfc3339(0),
            });
        }
        assert_eq!(s.rollbacks.len(), 10);
        s.write(d.path()).unwrap();
        assert_eq!(UpdateState::read(d.path()), s);
        std::fs::write(path(d.path()), "{not json").unwrap();
        assert_eq!(UpdateState::read(d.path()), UpdateState::default());
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_115_200), "2025-11-26T00:00:00Z");
    }
}
