//! Taking VMs down: `suspend` (the guest's state saved to `state/`, the
//! device model ended; the next start resumes it) and `stop` (the guest
//! agent's shutdown, else the ACPI power button; killed after a timeout;
//! or killed at once). A failed save
//! leaves the guest running and no partial state behind.

use std::time::{Duration, Instant};

use rayos_api::{ActionReply, StopRequest};
use rayos_vmm::{RunState, VmHandle, VmSpec};

use super::{OpError, OpGuard, Slot, Supervisor, chain, lock, pid_alive};
use crate::lifecycle::{Op, Step};
use crate::saved;

impl Supervisor {
    /// Saves the VM's state to disk and ends its device model.
    pub fn suspend(&self, name: &str) -> Result<ActionReply, OpError> {
        self.refuse_if_shutting_down()?;
        self.suspend_inner(name)
    }

    pub(super) fn suspend_inner(&self, name: &str) -> Result<ActionReply, OpError> {
        let slot = self.slot(name)?;
        let mut op = self.try_op(&slot)?;
        let def = {
            let mut st = lock(&slot.status);
            self.require(&slot, Op::Suspend, st.state)?;
            self.step(&slot, &mut st, Step::Save, "")?;
            st.def.clone()
        };
        let spec = self.spec(&def);
        let detail = match self.save_state(&slot, &mut op, &spec) {
            Ok(detail) => detail,
            Err(e) => {
                // The guest keeps running; no state (and no meta) is left.
                saved::forget_meta(&spec.vm_dir);
                let _ = self.step_failed(&slot, Step::SaveFailed, chain(&e));
                return Err(e);
            }
        };
        {
            let mut st = lock(&slot.status);
            st.last_error = None;
            self.step(&slot, &mut st, Step::SaveDone, detail.clone())?;
        }
        drop(op);
        self.leave_cgroup(name);
        Ok(self.reply(&slot, format!("VM {name} saved: {detail}"), None))
    }

    /// Writes the fingerprint, then has the device model save the guest
    /// into the state file and end. Returns what was written, for the
    /// `saved` event.
    fn save_state(
        &self,
        slot: &Slot,
        op: &mut OpGuard<'_>,
        spec: &VmSpec,
    ) -> Result<String, OpError> {
        let fp = self
            .fingerprint(slot, spec)
            .map_err(|source| OpError::vmm("suspend", &slot.name, source))?;
        saved::write_meta(&spec.vm_dir, &fp)?;
        let h = op
            .as_mut()
            .ok_or_else(|| OpError::Invalid("no device model".into()))?;
        let report = h
            .save(&saved::state_file(&spec.vm_dir))
            .map_err(|source| OpError::vmm("save", &slot.name, source))?;
        **op = None;
        Ok(format!(
            "{} bytes on disk ({} transferred) in {:.2}s{}",
            report.bytes,
            report.transferred,
            report.duration.as_secs_f64(),
            if report.compressed_fallback {
                ", compressed: too little free space for a raw state"
            } else {
                ""
            }
        ))
    }

    /// Stops the VM: the ACPI power button, then a kill after the timeout (or a
    /// kill at once with `force`).
    pub fn stop(&self, name: &str, req: &StopRequest) -> Result<ActionReply, OpError> {
        self.refuse_if_shutting_down()?;
        let timeout = req
            .timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(self.cfg.stop_timeout);
        self.stop_inner(name, req.force, timeout)
    }

    /// `force`: kill at once; otherwise the guest agent's shutdown (the
    /// ACPI power button for a guest without an agent), and a kill after
    /// `timeout`.
    pub(super) fn stop_inner(
        &self,
        name: &str,
        force: bool,
        timeout: Duration,
    ) -> Result<ActionReply, OpError> {
        let slot = self.slot(name)?;
        let mut op = self.try_op(&slot)?;
        {
            let mut st = lock(&slot.status);
            self.require(&slot, Op::Stop, st.state)?;
            let how = if force {
                "kill"
            } else {
                "guest agent, else ACPI power button"
            };
            self.step(&slot, &mut st, Step::Stop, how)?;
        }
        let h = op
            .as_mut()
            .ok_or_else(|| OpError::Invalid("no device model".into()))?;
        let how = end_device_model(name, h.as_mut(), force, timeout)?;
        *op = None;
        {
            let mut st = lock(&slot.status);
            self.step(&slot, &mut st, Step::StopDone, how)?;
        }
        drop(op);
        self.leave_cgroup(name);
        Ok(self.reply(&slot, format!("VM {name} stopped: {how}"), None))
    }
}

/// Ends device model `h` of VM `name` (see [`Supervisor::stop_inner`]) and
/// waits for it to exit; returns how the guest went down.
fn end_device_model(
    name: &str,
    h: &mut dyn VmHandle,
    force: bool,
    timeout: Duration,
) -> Result<&'static str, OpError> {
    let vmm_err = |source| OpError::vmm("stop", name, source);
    let mut how = "killed";
    if !force {
        // The guest agent first: it shuts the guest down even where ACPI
        // events are ignored (no acpid, a locked screen); the power button
        // for guests without an agent.
        how = match h.guest_shutdown() {
            Ok(true) if wait_guest_down(h, timeout) => {
                "shut down by the guest (through its guest agent)"
            }
            Ok(true) => "killed after the guest did not shut down in time",
            Ok(false) | Err(_) => match h.powerdown() {
                Ok(()) if wait_guest_down(h, timeout) => "shut down by the guest",
                Ok(()) => "killed after the guest did not shut down in time",
                Err(_) => "killed (the power button could not be pressed)",
            },
        };
    }
    // With the guest down QEMU may still be there (status "shutdown");
    // end it, and wait so its swtpm is ended too.
    if !matches!(h.state(), Ok(RunState::Exited)) {
        h.kill().map_err(vmm_err)?;
    }
    if !h.wait_exit(Duration::from_secs(15)).map_err(vmm_err)? {
        let pid = h.pid();
        return Err(OpError::Invalid(format!(
            "VM {name}: device model pid {pid} did not exit after kill"
        )));
    }
    Ok(how)
}

/// Polls until the guest has powered off (QEMU reports `shutdown` or is
/// gone) or `timeout` passes.
fn wait_guest_down(h: &mut dyn VmHandle, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match h.state() {
            Ok(RunState::Shutdown | RunState::Exited) => return true,
            Err(_) if !pid_alive(h.pid()) => return true,
            _ => {}
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
