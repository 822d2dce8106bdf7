//! The monitor: a look at every VM not busy with an operation, every
//! `monitor_interval`. It notices guests that shut down (→ `stopped`; a
//! Windows guest's first shutdown after setup ends provisioning), device
//! models that died (→ `crashed`, restarted per policy with a doubling
//! backoff), vCPUs stopped or running again (`paused` ↔ `running`) and
//! swtpm deaths (the VM is then shut down cleanly); and it rotates console
//! logs.
//!
//! Limits: a look skips a VM whose operation lock is held (the operation
//! owns the device model then), so a change during a long operation is
//! seen at the first look after it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rayos_api::{EventKind, VmState};
use rayos_state::{VmDefinition, VmKind};
use rayos_vmm::{RunState, TpmState};

use super::{OpError, OpGuard, Slot, Supervisor, chain, lock, pid_alive};
use crate::console;
use crate::lifecycle::Step;

impl Supervisor {
    /// Runs [`Self::monitor_once`] every `monitor_interval` until shutdown.
    pub fn monitor_loop(self: Arc<Self>) {
        while !self.shutting_down.load(Ordering::SeqCst) {
            self.monitor_once();
            std::thread::sleep(self.cfg.monitor_interval);
        }
    }

    /// Looks at every VM not busy with an operation: notices guests that
    /// shut down, device models that died, pauses; restarts crashed VMs
    /// when their backoff has passed; rotates console logs.
    pub fn monitor_once(self: &Arc<Self>) {
        for slot in self.all_slots() {
            let Ok(op) = slot.op.try_lock() else {
                continue;
            };
            let def = lock(&slot.status).def.clone();
            let vm_dir = self.layout.vm_dir(def.id);
            if let Err(e) = console::rotate_if_needed(&vm_dir, self.cfg.console_max_bytes) {
                eprintln!("rayosd: VM {}: console log rotation failed: {e}", slot.name);
            }
            if op.is_some() {
                self.observe(&slot, op, &def, &vm_dir);
            } else {
                // Decided under the operation lock, so no start is under way.
                let due = self.restart_due(&slot);
                drop(op);
                if due {
                    self.spawn_restart(&slot.name);
                }
            }
        }
    }

    /// Whether crashed VM `slot`'s restart is due now; if so, it is taken
    /// (one restart per crash, however long it takes).
    fn restart_due(&self, slot: &Slot) -> bool {
        let mut st = lock(&slot.status);
        let due = st.state == VmState::Crashed
            && st.restart_at.is_some_and(|t| t <= Instant::now())
            && !st.removed
            && !self.shutting_down.load(Ordering::SeqCst);
        if due {
            st.restart_at = None;
        }
        due
    }

    fn spawn_restart(self: &Arc<Self>, name: &str) {
        let me = Arc::clone(self);
        let name = name.to_string();
        std::thread::spawn(move || {
            if let Err(e) = me.start_inner(&name, false, true) {
                let msg = chain(&e);
                // A person may have started or deleted it meanwhile.
                if let Ok(s) = me.slot(&name)
                    && !matches!(e, OpError::WrongState { .. } | OpError::Busy { .. })
                {
                    lock(&s.status).last_error = Some(msg.clone());
                }
                eprintln!("rayosd: restart of VM {name} failed: {msg}");
            }
        });
    }

    /// One look at a VM with a device model (`op` holds its handle).
    fn observe(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        mut op: OpGuard<'_>,
        def: &VmDefinition,
        vm_dir: &Path,
    ) {
        let Some(h) = op.as_mut() else {
            return;
        };
        let observed = match h.state() {
            Ok(s) => s,
            Err(e) if !pid_alive(h.pid()) => {
                eprintln!("rayosd: VM {}: {}", slot.name, chain(&e));
                RunState::Exited
            }
            Err(_) => return,
        };
        if matches!(observed, RunState::Running | RunState::Paused)
            && h.tpm_state() == TpmState::Died
        {
            let pid = h.pid();
            drop(op);
            self.tpm_died(slot, pid);
            return;
        }
        if matches!(observed, RunState::Running | RunState::Paused) {
            self.unplugged(slot, h.as_mut(), def);
        }
        match observed {
            RunState::Running => self.seen(slot, VmState::Paused, Step::SeenRunning),
            RunState::Paused => self.seen(slot, VmState::Running, Step::SeenPaused),
            RunState::Exited if console_shows_poweroff(&console::tail(vm_dir, 5)) => {
                let _ = h.wait_exit(Duration::from_secs(5));
                self.guest_down(slot, op, def, "the guest powered off");
            }
            RunState::Shutdown => {
                let _ = h.kill();
                let _ = h.wait_exit(Duration::from_secs(10));
                self.guest_down(slot, op, def, "the guest shut down");
            }
            RunState::Exited => {
                *op = None;
                self.crashed(slot, vm_dir);
            }
        }
    }

    /// A stick given to a running VM (a `/dev` medium) is gone: it was
    /// unplugged. It is ejected from the VM (the guest sees the medium
    /// removed, not endless read errors) and from the registry, with a
    /// `media_ejected` event saying so. When it cannot be ejected while the
    /// VM runs (docs/supervisor.md, "Media"), that is noted once.
    fn unplugged(
        &self,
        slot: &Slot,
        h: &mut (dyn rayos_vmm::VmHandle + 'static),
        def: &VmDefinition,
    ) {
        let gone: Vec<std::path::PathBuf> = def
            .media
            .iter()
            .chain(&def.usb_media)
            .filter(|m| rayos_vmm::qemu::media::is_device_path(m) && !m.exists())
            .cloned()
            .collect();
        for m in gone {
            let now = lock(&slot.status).def.clone();
            match self.eject(
                slot,
                &now,
                Some(&m),
                Some(&mut *h),
                "the stick was unplugged",
            ) {
                Ok(msg) => self.note(msg),
                Err(e) => {
                    let mut st = lock(&slot.status);
                    if !st.unplug_noted.contains(&m) {
                        st.unplug_noted.push(m.clone());
                        drop(st);
                        self.note(format!(
                            "VM {}: {} was unplugged while in use and stays attached until the VM is stopped: {}",
                            slot.name,
                            m.display(),
                            chain(&e)
                        ));
                    }
                }
            }
        }
    }

    /// The vCPUs were seen paused or running: `step` if the VM is `from`.
    fn seen(&self, slot: &Slot, from: VmState, step: Step) {
        let mut st = lock(&slot.status);
        if st.state == from {
            let _ = self.step(slot, &mut st, step, "");
        }
    }

    /// The guest powered itself off; its device model has ended.
    fn guest_down(&self, slot: &Slot, mut op: OpGuard<'_>, def: &VmDefinition, how: &str) {
        *op = None;
        {
            let mut st = lock(&slot.status);
            let _ = self.step(slot, &mut st, Step::GuestShutdown, how);
        }
        drop(op);
        self.leave_cgroup(&slot.name);
        // A Windows guest's first shutdown after installation ends
        // provisioning (setup reboots; it powers off when done).
        if def.kind == VmKind::Windows
            && !def.provisioned
            && (!def.media.is_empty() || !def.usb_media.is_empty())
            && let Err(e) = self.mark_provisioned(slot, None)
        {
            self.note(format!(
                "VM {}: cannot mark provisioned: {}",
                slot.name,
                chain(&e)
            ));
        }
    }

    /// The VM's swtpm is gone while its device model runs: the guest's
    /// TPM no longer answers, and QEMU cannot save the VM without it (the
    /// migration needs the emulator's state). Reported once (event
    /// `tpm_died`, a health note, the VM's last error), then the VM is shut
    /// down cleanly in the background: ACPI power button, killed after the
    /// stop timeout. The next start runs a fresh swtpm on the kept state.
    fn tpm_died(self: &Arc<Self>, slot: &Arc<Slot>, pid: u32) {
        let msg = "its TPM emulator (swtpm) died, so the guest's TPM no longer answers and \
                   the VM cannot be saved: shutting it down (ACPI power button, killed after \
                   the stop timeout); start it again to get a fresh swtpm on the same TPM state";
        {
            let mut st = lock(&slot.status);
            if st.tpm_died_for != Some(pid) {
                st.tpm_died_for = Some(pid);
                st.last_error = Some(format!(
                    "swtpm died while the VM ran (device model pid {pid}); it was shut down"
                ));
                self.events
                    .emit(&slot.name, EventKind::TpmDied, st.state, msg);
                drop(st);
                self.note(format!("VM {}: {msg}", slot.name));
                st = lock(&slot.status);
            }
            if st.tpm_stopping {
                return;
            }
            st.tpm_stopping = true;
        }
        let me = Arc::clone(self);
        let slot = Arc::clone(slot);
        std::thread::spawn(move || {
            match me.stop_inner(&slot.name, false, me.cfg.stop_timeout) {
                Ok(r) => eprintln!("rayosd: {}", r.message),
                // Tried again at the monitor's next look while swtpm stays dead.
                Err(e) => eprintln!(
                    "rayosd: VM {}: stopping after its swtpm died failed: {}",
                    slot.name,
                    chain(&e)
                ),
            }
            lock(&slot.status).tpm_stopping = false;
        });
    }

    /// The device model died unasked (the caller holds the operation lock
    /// and has dropped the handle): keep the console's last lines, count
    /// the crash, and schedule a restart when the policy wants one.
    fn crashed(&self, slot: &Slot, vm_dir: &Path) {
        let lines = console::tail(vm_dir, 20);
        let mut st = lock(&slot.status);
        st.crash_console = lines;
        st.crash_count += 1;
        st.last_error = Some("the device model exited without being asked to".into());
        let detail = format!("crash #{}", st.crash_count);
        let _ = self.step(slot, &mut st, Step::Died, detail);
        let p = self.policy_for(st.def.kind);
        if p.restart_on_crash && p.enabled && !self.shutting_down.load(Ordering::SeqCst) {
            let factor = 1u32 << st.crash_count.saturating_sub(1).min(16);
            let delay = self
                .cfg
                .restart_backoff
                .saturating_mul(factor)
                .min(self.cfg.restart_backoff_max);
            st.restart_at = Some(Instant::now() + delay);
            self.events.emit(
                &slot.name,
                EventKind::Restarting,
                st.state,
                format!("in {:.1}s", delay.as_secs_f64()),
            );
        }
        drop(st);
        self.leave_cgroup(&slot.name);
    }
}

/// Whether the console's last lines show the guest powering off. Used only
/// when the device model is already gone: a backend whose QEMU exits on
/// guest power-off (no `-no-shutdown`) cannot report `RunState::Shutdown`,
/// and a Linux guest's power-off must not count as a crash.
fn console_shows_poweroff(lines: &[String]) -> bool {
    lines
        .iter()
        .rev()
        .take(5)
        .any(|l| l.contains("reboot: Power down") || l.contains("System halted"))
}
