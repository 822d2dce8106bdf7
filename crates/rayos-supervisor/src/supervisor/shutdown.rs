//! Host shutdown (SIGTERM): new requests are refused (503), then every VM
//! with a device model — and any being started right then, once its start
//! is done — is saved or shut down per its policy `on_host_shutdown`, all
//! in parallel, within `shutdown_deadline`. A VM whose save fails is shut
//! down through ACPI, then killed. A VM still busy at the deadline is
//! reported as such and left running.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rayos_api::VmState;
use rayos_state::OnHostShutdown;

use super::{Supervisor, chain, lock};
use crate::lifecycle;

impl Supervisor {
    /// Host shutdown (see the module doc). Returns (vm, outcome) per VM.
    pub fn shutdown(self: &Arc<Self>) -> Vec<(String, String)> {
        self.shutting_down.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + self.cfg.shutdown_deadline;
        let (tx, rx) = std::sync::mpsc::channel();
        let mut pending = Vec::new();
        for slot in self.all_slots() {
            let (state, kind) = {
                let st = lock(&slot.status);
                (st.state, st.def.kind)
            };
            // A VM being started now is saved too, once its start is done.
            if !lifecycle::has_device_model(state)
                && !matches!(state, VmState::Starting | VmState::Resuming)
            {
                continue;
            }
            let how = self.policy_for(kind).on_host_shutdown;
            let me = Arc::clone(self);
            let tx = tx.clone();
            let name = slot.name.clone();
            pending.push(name.clone());
            std::thread::spawn(move || {
                // Waits for an operation in flight (e.g. a start) to finish.
                let outcome = me.shutdown_one(&name, how, deadline);
                let _ = tx.send((name, outcome));
            });
        }
        drop(tx);
        let mut results = Vec::new();
        while results.len() < pending.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(r) => results.push(r),
                Err(_) => break,
            }
        }
        for name in pending {
            if !results.iter().any(|(n, _)| *n == name) {
                results.push((name, "not finished before the shutdown deadline".into()));
            }
        }
        for (n, o) in &results {
            eprintln!("rayosd: shutdown: VM {n}: {o}");
        }
        results
    }

    fn shutdown_one(&self, name: &str, how: OnHostShutdown, deadline: Instant) -> String {
        let Ok(slot) = self.slot(name) else {
            return "gone".into();
        };
        // Let an operation in flight finish first (bounded by the deadline).
        while slot.op.try_lock().is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // As `stop` does it: the guest agent, else the power button; then kill.
        let clean_stop = |prefix: String| {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stop_inner(name, false, left.saturating_sub(Duration::from_secs(5))) {
                Ok(r) => format!("{prefix}{}", r.message),
                Err(e) => format!("{prefix}stop failed: {}", chain(&e)),
            }
        };
        match how {
            OnHostShutdown::Save => match self.suspend_inner(name) {
                Ok(r) => r.message,
                Err(e) => clean_stop(format!("save failed ({}); ", chain(&e))),
            },
            OnHostShutdown::Shutdown => clean_stop(String::new()),
        }
    }
}
