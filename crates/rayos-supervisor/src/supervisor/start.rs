//! Bringing VMs up: `start` (resumed when a usable saved state waits,
//! cold-booted otherwise; always hidden), re-attaching device models that
//! outlived the previous daemon, and autostart at daemon start.
//!
//! A start is two halves, in this order: the saved-state half
//! ([`Supervisor::settle_saved_state`]) makes the VM's state agree with
//! the files in `state/` and decides whether a state is restored; the
//! lifecycle half ([`Supervisor::launch`]) launches the device model and
//! takes the steps. A state is never deleted except by `--fresh` or after
//! it was restored (the guest then changes its disks); a state that cannot
//! be used is kept aside and reported.

use std::path::Path;
use std::sync::Arc;

use rayos_api::{ActionReply, BootKind, EventKind, SavedState, VmState};
use rayos_base::marker::Marker;
use rayos_state::VmDefinition;
use rayos_vmm::{Launch, VmHandle, VmSpec};

use super::{OpError, OpGuard, Slot, Status, Supervisor, chain, lock, marker};
use crate::lifecycle::{self, Op, Step};
use crate::saved::{self, Found};

impl Supervisor {
    /// Starts the VM: resumes a usable saved state, else cold-boots; `fresh`
    /// discards a saved state first.
    pub fn start(&self, name: &str, fresh: bool) -> Result<ActionReply, OpError> {
        self.refuse_if_shutting_down()?;
        self.start_inner(name, fresh, false)
    }

    /// `automatic`: autostart or a restart after a crash, which keeps the
    /// VM's crash count (a person's start resets it).
    pub(super) fn start_inner(
        &self,
        name: &str,
        fresh: bool,
        automatic: bool,
    ) -> Result<ActionReply, OpError> {
        let slot = self.slot(name)?;
        let op = self.try_op(&slot)?;
        let def = lock(&slot.status).def.clone();
        self.require_enabled(&def)?;
        self.require_storage(&def)?;
        self.require(&slot, Op::Start, lock(&slot.status).state)?;
        let spec = self.spec(&def);
        let fp = self
            .fingerprint(&slot, &spec)
            .map_err(|source| OpError::vmm("start", name, source))?;
        let mut notes: Vec<String> = Vec::new();
        // The installer's seeded Windows VM names a disk it did not create.
        let made = crate::create::create_missing_disks(&def, &spec.vm_dir).map_err(|source| {
            OpError::Create {
                vm: name.to_string(),
                source,
            }
        })?;
        for d in made {
            notes.push(format!(
                "created its disk {} (thin qcow2, 64 GiB)",
                d.display()
            ));
        }
        let usable = {
            let mut st = lock(&slot.status);
            if !automatic {
                st.crash_count = 0;
            }
            st.restart_at = None;
            self.settle_saved_state(&slot, &mut st, &spec.vm_dir, &fp, fresh, &mut notes)?
        };
        let (h, boot) = self.launch(&slot, &spec, usable, &mut notes)?;
        self.started(&slot, &spec, op, h, boot, notes)
    }

    /// Refuses (403) a VM whose kind the policy disables.
    fn require_enabled(&self, def: &VmDefinition) -> Result<(), OpError> {
        if self.policy_for(def.kind).enabled {
            return Ok(());
        }
        Err(OpError::Forbidden(format!(
            "the policy disables {} VMs: `rayos policy set {}.enabled true` (or set [{}] enabled = true in {} and restart rayosd)",
            def.kind,
            def.kind,
            def.kind,
            self.layout.policy().display()
        )))
    }

    /// Refuses (409) a VM whose dedicated VM-storage partition is not
    /// mounted: its directory still shows the data volume's marker
    /// (docs/init.md), and starting would create its disks and state there.
    fn require_storage(&self, def: &VmDefinition) -> Result<(), OpError> {
        let dir = self.layout.vm_dir(def.id);
        let marker = dir.join(rayos_state::layout::vm::STORAGE_MARKER);
        let Ok(text) = std::fs::read_to_string(&marker) else {
            return Ok(());
        };
        let label =
            rayos_state::layout::storage_marker_label(&text).unwrap_or_else(|| "(unnamed)".into());
        Err(OpError::StorageMissing {
            vm: def.name.clone(),
            label,
            dir,
        })
    }

    /// The saved-state half of a start. The files are the truth: the VM
    /// is `saved` exactly when a state file waits. `--fresh` deletes the
    /// state; a state that does not match the VM (`fp`) is kept aside.
    /// Returns the state to restore, if one is left.
    fn settle_saved_state(
        &self,
        slot: &Slot,
        st: &mut Status,
        vm_dir: &Path,
        fp: &str,
        fresh: bool,
        notes: &mut Vec<String>,
    ) -> Result<Option<SavedState>, OpError> {
        let found = saved::inspect(vm_dir, fp);
        st.state = match found {
            Found::None if st.state == VmState::Saved => VmState::Stopped,
            Found::Usable(_) | Found::Unusable(..) => VmState::Saved,
            _ => st.state,
        };
        match found {
            Found::None => Ok(None),
            _ if fresh => {
                saved::remove(vm_dir)?;
                self.step(slot, st, Step::Discard, "start --fresh")?;
                notes.push("saved state discarded (--fresh)".into());
                Ok(None)
            }
            Found::Unusable(_, why) => {
                let aside = saved::move_aside(vm_dir)?;
                let msg = format!("saved state kept as {} because {why}", aside.display());
                self.step(slot, st, Step::KeepAside, msg.clone())?;
                notes.push(msg);
                Ok(None)
            }
            Found::Usable(s) => Ok(Some(s)),
        }
    }

    /// The lifecycle half of a start: restores `usable` when given (a
    /// failed restore keeps the state aside and falls back to a cold
    /// boot), cold-boots otherwise.
    fn launch(
        &self,
        slot: &Slot,
        spec: &VmSpec,
        usable: Option<SavedState>,
        notes: &mut Vec<String>,
    ) -> Result<(Box<dyn VmHandle>, BootKind), OpError> {
        if let Some(s) = usable {
            if let Some(h) = self.resume(slot, spec, &s, notes)? {
                return Ok((h, BootKind::Resumed));
            }
        } else {
            let mut st = lock(&slot.status);
            self.step(slot, &mut st, Step::ColdBoot, "cold boot")?;
        }
        let h = self.vmm.launch(spec, &Launch::Cold).or_else(|source| {
            let e = OpError::vmm("start", &slot.name, source);
            self.step_failed(slot, Step::LaunchFailed, chain(&e))?;
            Err(e)
        })?;
        Ok((h, BootKind::Cold))
    }

    /// Restores the saved state `s`. `Ok(None)`: restoring failed, the
    /// state is kept aside and the VM is `starting` for a cold boot.
    fn resume(
        &self,
        slot: &Slot,
        spec: &VmSpec,
        s: &SavedState,
        notes: &mut Vec<String>,
    ) -> Result<Option<Box<dyn VmHandle>>, OpError> {
        {
            let mut st = lock(&slot.status);
            self.step(slot, &mut st, Step::Resume, "")?;
        }
        let how = Launch::Restore {
            state_file: s.path.clone(),
        };
        match self.vmm.launch(spec, &how) {
            Ok(h) => {
                self.consume_state(&slot.name, &spec.vm_dir);
                Ok(Some(h))
            }
            Err(e) => {
                self.restore_failed(slot, &spec.vm_dir, &chain(&e), notes)?;
                Ok(None)
            }
        }
    }

    /// After a restore the guest changes its disks: the old state must
    /// never be loaded again.
    fn consume_state(&self, name: &str, vm_dir: &Path) {
        if let Err(e) = saved::remove(vm_dir) {
            let kept = saved::move_aside(vm_dir)
                .map(|a| format!("moved aside to {}", a.display()))
                .unwrap_or_else(|e| format!("it could not be moved aside either: {}", chain(&e)));
            self.note(format!("VM {name}: {}; {kept}", chain(&e)));
        }
    }

    /// Keeps a state that failed to restore (`why`) aside, so the VM can
    /// cold-boot. When it cannot be moved, the VM stays `saved`:
    /// cold-booting would leave a state that no longer matches the disks
    /// where the next start could load it.
    fn restore_failed(
        &self,
        slot: &Slot,
        vm_dir: &Path,
        why: &str,
        notes: &mut Vec<String>,
    ) -> Result<(), OpError> {
        let aside = match saved::move_aside(vm_dir) {
            Ok(a) => a,
            Err(me) => {
                let msg = format!(
                    "restoring failed ({why}) and the state could not be kept aside ({}); not cold-booting",
                    chain(&me)
                );
                let _ = self.step_failed(slot, Step::LaunchFailed, msg);
                return Err(me.into());
            }
        };
        let msg = format!(
            "restoring failed ({why}); saved state kept as {}; cold-booting",
            aside.display()
        );
        notes.push(msg.clone());
        self.step_failed(slot, Step::RestoreFailed, msg)
    }

    /// The end of a start: the VM is `running`, hidden, with device model
    /// `h`; the reply says how it came up and what happened on the way.
    fn started(
        &self,
        slot: &Arc<Slot>,
        spec: &VmSpec,
        mut op: OpGuard<'_>,
        h: Box<dyn VmHandle>,
        boot: BootKind,
        mut notes: Vec<String>,
    ) -> Result<ActionReply, OpError> {
        let clock_later =
            boot == BootKind::Resumed && self.set_clock_now(&slot.name, spec, &mut notes);
        let pid = h.pid();
        {
            let mut st = lock(&slot.status);
            st.pid = Some(pid);
            st.vnc = Some(h.vnc_socket());
            st.console = Some(h.console_socket());
            st.last_boot = Some(boot);
            if boot == BootKind::Resumed || notes.is_empty() {
                st.last_error = None;
            }
            self.step(slot, &mut st, Step::Launched, boot.as_str())?;
        }
        *op = Some(h);
        drop(op);
        let name = &slot.name;
        self.place_in_cgroup(name, pid);
        marker(&Marker::VmStarted {
            vm: name.clone(),
            how: boot.into(),
        });
        if clock_later {
            self.set_clock_later(Arc::clone(slot), spec.clone(), pid);
        }
        let mut message = format!(
            "VM {name} {} (hidden)",
            match boot {
                BootKind::Cold => "cold-booted",
                BootKind::Resumed => "resumed from saved state",
            }
        );
        for n in notes {
            message.push_str("; ");
            message.push_str(&n);
        }
        Ok(self.reply(slot, message, Some(boot)))
    }

    fn place_in_cgroup(&self, name: &str, pid: u32) {
        if let Some(c) = &self.cgroups {
            let presented = lock(&self.presented).as_deref() == Some(name);
            if let Err(e) = c.place(name, pid, presented) {
                self.note(format!("VM {name}: CPU weight not set: {}", chain(&e)));
            }
        }
    }

    /// Adopts every device model that outlived the previous daemon; such a
    /// VM is `running` again and is never relaunched.
    pub(super) fn attach_all(&self) {
        for slot in self.all_slots() {
            let mut op = lock(&slot.op);
            let def = lock(&slot.status).def.clone();
            let spec = self.spec(&def);
            match self.vmm.attach(&spec) {
                Ok(Some(h)) => {
                    let pid = h.pid();
                    self.attached(&slot, &spec, h.as_ref());
                    *op = Some(h);
                    drop(op);
                    self.place_in_cgroup(&slot.name, pid);
                    marker(&Marker::VmAttached {
                        vm: slot.name.clone(),
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    self.note(format!("VM {}: cannot re-attach: {}", slot.name, chain(&e)));
                }
            }
        }
    }

    /// The status of a VM whose device model `h` was found running.
    fn attached(&self, slot: &Slot, spec: &VmSpec, h: &dyn VmHandle) {
        let pid = h.pid();
        let mut st = lock(&slot.status);
        if saved::state_file(&spec.vm_dir).exists() {
            // A running guest and a saved state cannot both be current:
            // keep the state aside, never load it.
            if let Ok(aside) = saved::move_aside(&spec.vm_dir) {
                let msg = format!(
                    "a saved state was found while the VM runs; kept as {}",
                    aside.display()
                );
                st.last_error = Some(msg.clone());
                self.events
                    .emit(&slot.name, EventKind::UnusableState, st.state, msg);
            }
        }
        st.pid = Some(pid);
        st.vnc = Some(h.vnc_socket());
        st.console = Some(h.console_socket());
        let _ = self.step(slot, &mut st, Step::Attach, format!("pid {pid}"));
    }

    /// Starts (resumes when possible) every VM whose policy says autostart,
    /// in parallel and hidden; then presents the first one whose policy says
    /// `present_on_boot`. Returns (vm, error) for each VM that failed.
    pub fn autostart(self: &Arc<Self>) -> Vec<(String, String)> {
        let mut threads = Vec::new();
        for slot in self.all_slots() {
            let (kind, state) = {
                let st = lock(&slot.status);
                (st.def.kind, st.state)
            };
            let p = self.policy_for(kind);
            if !(p.enabled && p.autostart && lifecycle::require(Op::Start, state).is_ok()) {
                continue;
            }
            let me = Arc::clone(self);
            let name = slot.name.clone();
            threads.push(std::thread::spawn(move || {
                let r = me.start_inner(&name, false, true);
                (name, r.err().map(|e| chain(&e)))
            }));
        }
        let mut failed = Vec::new();
        for t in threads {
            if let Ok((name, Some(e))) = t.join() {
                self.note(format!("autostart of VM {name} failed: {e}"));
                failed.push((name, e));
            }
        }
        for slot in self.all_slots() {
            let kind = lock(&slot.status).def.kind;
            if self.policy_for(kind).present_on_boot && self.present(&slot.name).is_ok() {
                break;
            }
        }
        failed
    }
}
