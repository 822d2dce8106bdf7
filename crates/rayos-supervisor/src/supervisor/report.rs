//! What the supervisor reports without changing anything: `list`, `show`,
//! `health`, the console tail, screenshots, and the VM view every action
//! replies with.

use std::fs;
use std::sync::atomic::Ordering;

use rayos_api::{
    AccelKind, Accelerator, ActionReply, BootKind, Health, SavedState, VmInfo, VmState,
};
use rayos_vmm::{Accel, AccelDecision, VmHandle};

use super::{OpError, Slot, Status, Supervisor, lock};
use crate::console;
use crate::lifecycle::{self, Op};
use crate::saved::{self, Found};

/// `VmRSS` of this process in KiB.
fn own_rss_kib() -> Option<u64> {
    fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The API's view of the backend's accelerator decision.
pub fn accelerator(d: &AccelDecision) -> Accelerator {
    Accelerator {
        accel: match d.accel() {
            Accel::Kvm => AccelKind::Kvm,
            Accel::Tcg => AccelKind::Tcg,
        },
        reason: d.reason().map(|r| r.to_string()),
    }
}

/// A VM's accelerator: what its running device model was started with
/// (read from its command line, so the report is the process's truth),
/// else what the next start will use.
fn vm_accelerator(d: &AccelDecision, pid: Option<u32>) -> Accelerator {
    let mut a = accelerator(d);
    match pid.and_then(rayos_vmm::running_accel) {
        Some(Accel::Kvm) => {
            a.accel = AccelKind::Kvm;
            a.reason = None;
        }
        Some(Accel::Tcg) if a.accel == AccelKind::Kvm => {
            a.accel = AccelKind::Tcg;
            a.reason = Some("started before KVM was chosen; the next start uses KVM".into());
        }
        _ => {}
    }
    a
}

impl Supervisor {
    pub(super) fn info(&self, slot: &Slot) -> VmInfo {
        // A copy, so the status lock is not held while the fingerprint is
        // computed (the backend may run programs for it).
        let st = lock(&slot.status).clone();
        let presented = lifecycle::has_device_model(st.state)
            && lock(&self.presented).as_deref() == Some(slot.name.as_str());
        let vm_dir = self.layout.vm_dir(st.def.id);
        let fp = self
            .fingerprint(slot, &self.spec(&st.def))
            .unwrap_or_default();
        let saved_state = match saved::inspect(&vm_dir, &fp) {
            Found::None => None,
            Found::Usable(s) | Found::Unusable(s, _) => Some(s),
        };
        self.info_of(slot, &st, presented, saved_state)
    }

    /// The reply to a VM's `show`, from its status and what the caller
    /// found out about presentation and saved state.
    pub(super) fn info_of(
        &self,
        slot: &Slot,
        st: &Status,
        presented: bool,
        saved_state: Option<SavedState>,
    ) -> VmInfo {
        let spec = self.spec(&st.def);
        let p = self.policy_for(st.def.kind);
        VmInfo {
            name: slot.name.clone(),
            id: st.def.id,
            kind: st.def.kind,
            state: st.state,
            presented,
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            network: spec.network,
            provisioned: st.def.provisioned,
            tpm: st.def.tpm,
            vm_dir: spec.vm_dir.clone(),
            disks: st
                .def
                .disks
                .iter()
                .map(|d| spec.vm_dir.join(&d.path))
                .collect(),
            media: st.def.media.clone(),
            usb_media: st.def.usb_media.clone(),
            pid: st.pid,
            vnc_socket: st.vnc.clone(),
            console_socket: st.console.clone(),
            guest: None,
            last_boot: st.last_boot,
            saved_state,
            unusable_states: saved::unusable(&spec.vm_dir),
            last_error: st.last_error.clone(),
            crash_console: st.crash_console.clone(),
            crash_count: st.crash_count,
            enabled: p.enabled,
            autostart: p.autostart,
            accel: Some(vm_accelerator(&self.vmm.accelerator(), st.pid)),
        }
    }

    /// Every VM, as `show` reports it.
    pub fn list(&self) -> Vec<VmInfo> {
        self.all_slots().iter().map(|s| self.info(s)).collect()
    }

    /// One VM, with what its guest agent reports when it runs and no
    /// operation holds it (`show` never waits for a start or a save).
    pub fn show(&self, name: &str) -> Result<VmInfo, OpError> {
        let slot = self.slot(name)?;
        let mut info = self.info(&slot);
        if info.state == VmState::Running
            && let Ok(mut op) = slot.op.try_lock()
            && let Some(h) = op.as_mut()
            && let Ok(Some(g)) = h.guest_info()
        {
            info.guest = Some(rayos_api::GuestInfo {
                hostname: g.hostname,
                os: g.os,
                kernel: g.kernel,
                addresses: g.addresses,
            });
        }
        Ok(info)
    }

    /// The daemon's health: VMs, memory, registry state, notes, accelerator.
    pub fn health(&self) -> Health {
        Health {
            status: if self.shutting_down.load(Ordering::SeqCst) {
                "shutting_down".into()
            } else {
                "ok".into()
            },
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            vms: lock(&self.slots).len(),
            rss_kib: own_rss_kib(),
            registry_writable: lock(&self.registry).writable(),
            notes: lock(&self.notes).clone(),
            accel: Some(accelerator(&self.vmm.accelerator())),
        }
    }

    pub(super) fn reply(
        &self,
        slot: &Slot,
        message: String,
        boot: Option<BootKind>,
    ) -> ActionReply {
        ActionReply {
            vm: self.info(slot),
            message,
            boot,
        }
    }

    /// The last `lines` lines of the VM's console log.
    pub fn console(&self, name: &str, lines: usize) -> Result<Vec<String>, OpError> {
        let slot = self.slot(name)?;
        let id = lock(&slot.status).def.id;
        Ok(console::tail(&self.layout.vm_dir(id), lines))
    }

    /// A PNG of the VM's display, taken by its device model.
    pub fn screenshot(&self, name: &str) -> Result<Vec<u8>, OpError> {
        let slot = self.slot(name)?;
        let mut op = self.try_op(&slot)?;
        let (def, state) = {
            let st = lock(&slot.status);
            (st.def.clone(), st.state)
        };
        self.require(&slot, Op::Screenshot, state)?;
        let h = op
            .as_mut()
            .ok_or_else(|| OpError::Invalid("no device model".into()))?;
        self.take_screenshot(name, &def, h.as_mut())
    }

    /// A PNG of the VM's display from its device model `h`: written to a
    /// file in the VM's run directory (the device model only writes files),
    /// read, and removed.
    pub(super) fn take_screenshot(
        &self,
        name: &str,
        def: &rayos_state::VmDefinition,
        h: &mut dyn VmHandle,
    ) -> Result<Vec<u8>, OpError> {
        let path = self
            .spec(def)
            .run_dir
            .join(format!("screenshot-{}.png", uuid::Uuid::new_v4()));
        let bytes = h
            .screenshot(&path)
            .map_err(|source| OpError::vmm("take a screenshot of", name, source))
            .and_then(|()| {
                fs::read(&path).map_err(|source| OpError::Io {
                    what: "read",
                    path: path.clone(),
                    source,
                })
            });
        let _ = fs::remove_file(&path);
        bytes
    }
}
