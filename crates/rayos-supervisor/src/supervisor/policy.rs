//! The policy while rayosd runs: `GET /v1/policy` shows it, `PUT
//! /v1/policy` checks a new one with the file's own rules, writes it
//! atomically (the previous generation kept as `.prev`) and swaps it in.
//!
//! What a swap changes at once is every later decision: starts of a kind
//! the policy disables are refused, crash restarts and the action at host
//! shutdown follow the new values. Autostart and presentation at boot are
//! decided at the next boot of RayOS. Networking and CPU/memory limits are
//! part of a VM's device model, so they apply at its next cold start; the
//! reply says which VMs that concerns now (running ones, and saved states
//! that were made with the old setting and therefore cannot be resumed
//! with the new one — they are kept aside, never deleted).
//!
//! Limits: one writer at a time (the write happens under the policy's
//! lock); a `PUT` replaces the whole file, comments included.

use std::fs;

use rayos_api::{PolicyReply, VmState};
use rayos_state::{Effect, Policy, atomic};

use super::{OpError, Supervisor, lock};
use crate::lifecycle;

impl Supervisor {
    /// The policy rayosd runs with.
    pub fn policy_reply(&self) -> PolicyReply {
        let p = self.policy();
        PolicyReply {
            path: self.layout.policy(),
            toml: p.to_toml(),
            settings: p.entries(),
            changes: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Checks `text` as a policy file, writes it and runs with it from now
    /// on; the reply lists the changes, when each takes effect, and what
    /// that means for the VMs as they are.
    pub fn set_policy(&self, text: &str) -> Result<PolicyReply, OpError> {
        let path = self.layout.policy();
        let new = Policy::parse(&path.to_string_lossy(), text)
            .map_err(|e| OpError::Invalid(format!("the policy was not changed: {e}")))?;
        let mut guard = self
            .policy
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changes = guard.changes(&new);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|source| OpError::Io {
                what: "create",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        atomic::write_atomic(&path, text.as_bytes()).map_err(|e| OpError::Io {
            what: "write",
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        *guard = new.clone();
        drop(guard);
        let notes = self.policy_notes(&changes);
        for c in &changes {
            eprintln!(
                "rayosd: policy {} = {} (was {}), takes effect {}",
                c.key,
                c.new,
                c.old,
                c.when.describe()
            );
        }
        Ok(PolicyReply {
            path,
            toml: new.to_toml(),
            settings: new.entries(),
            changes,
            notes,
        })
    }

    /// What `changes` mean for each VM as it is now.
    fn policy_notes(&self, changes: &[rayos_state::Change]) -> Vec<String> {
        let mut notes = Vec::new();
        for slot in self.all_slots() {
            let (kind, state) = {
                let st = lock(&slot.status);
                (st.def.kind, st.state)
            };
            let mine: Vec<&rayos_state::Change> = changes
                .iter()
                .filter(|c| {
                    c.key.split_once('.').map(|(s, _)| s) == Some(kind.to_string().as_str())
                })
                .collect();
            let name = &slot.name;
            let device: Vec<&str> = mine
                .iter()
                .filter(|c| c.when == Effect::NextStart)
                .map(|c| c.key.as_str())
                .collect();
            if !device.is_empty() {
                let what = device.join(", ");
                if lifecycle::has_device_model(state) {
                    notes.push(format!(
                        "VM {name} is {state} with the old {what}: stop it and start it again \
                         (`vm stop {name}`, `vm start {name} --fresh`) to use the new one; \
                         a state saved with the old setting cannot be resumed with the new one \
                         and is kept aside at the next start"
                    ));
                } else if state == VmState::Saved {
                    notes.push(format!(
                        "VM {name} has a saved state made with the old {what}: its next start \
                         cannot resume it, keeps it aside and boots the VM fresh \
                         (`vm start {name} --fresh` discards it instead)"
                    ));
                }
            }
            let disabled = mine
                .iter()
                .any(|c| c.key.ends_with(".enabled") && c.new == "false");
            if disabled && lifecycle::has_device_model(state) {
                notes.push(format!(
                    "VM {name} keeps running; it cannot be started again while {kind} VMs are disabled"
                ));
            }
        }
        notes
    }
}
