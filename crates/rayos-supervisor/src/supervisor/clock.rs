//! The guest clock after a resume. A restored guest's clock stands where
//! it was when the VM was saved, and only the guest's agent can set it
//! again (`Vmm::sync_guest_time`: from the guest's RTC, which QEMU keeps on
//! the host's time).
//!
//! The first try is part of the start, so its reply says how it went. A
//! guest just resumed on a busy machine may not answer within the few
//! seconds a start should wait (a nested run took longer than 5 s), so
//! when it does not, a thread keeps trying while the same device model
//! runs, for a few minutes. Every outcome goes to rayosd's log and to the
//! console as `RAYOS_VM_CLOCK:<vm>:rtc|host|unset`.
//!
//! Limits: a guest whose agent never answers keeps its stale clock until
//! its own time service (if any) corrects it; a cold boot reads the RTC by
//! itself and needs none of this.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rayos_api::VmState;
use rayos_base::marker::{Marker, VmClock};
use rayos_vmm::{ClockSource, ClockSync, VmSpec};

use super::{Slot, Supervisor, chain, lock, marker};

/// How long each try (the one during the start, and each later one)
/// waits for the agent to answer.
const AGENT_WAIT: Duration = Duration::from_secs(5);
/// The pause between later tries.
const RETRY_EVERY: Duration = Duration::from_secs(3);
/// How long after the resume the tries go on.
const RETRY_FOR: Duration = Duration::from_secs(300);

impl Supervisor {
    /// The first try, during the start of resumed VM `name`. A note for the
    /// start's reply goes to `notes`, except when no agent answered (many
    /// guests have none). Returns whether to go on trying
    /// ([`Supervisor::set_clock_later`]).
    pub(super) fn set_clock_now(&self, name: &str, spec: &VmSpec, notes: &mut Vec<String>) -> bool {
        let later = format!(
            "rayosd tries again for {} minutes",
            RETRY_FOR.as_secs() / 60
        );
        let (log, again) = match self.vmm.sync_guest_time(spec, AGENT_WAIT) {
            Ok(Some(c)) => {
                let msg = announce(name, &c);
                notes.push(msg.clone());
                (msg, false)
            }
            Ok(None) => (
                format!(
                    "guest clock not set yet: no guest agent answered within {} s; {later}",
                    AGENT_WAIT.as_secs()
                ),
                true,
            ),
            Err(e) => {
                let msg = format!("guest clock not set yet: {}; {later}", chain(&e));
                notes.push(msg.clone());
                (msg, true)
            }
        };
        eprintln!("rayosd: {name}: {log}");
        again
    }

    /// Keeps trying to set the clock of the VM in `slot` while device model
    /// `pid` runs it, up to [`RETRY_FOR`]; logs and marks the outcome.
    pub(super) fn set_clock_later(&self, slot: Arc<Slot>, spec: VmSpec, pid: u32) {
        let vmm = Arc::clone(&self.vmm);
        let started = Instant::now();
        std::thread::spawn(move || {
            let name = slot.name.clone();
            let mut last = String::from("no guest agent answered");
            loop {
                std::thread::sleep(RETRY_EVERY);
                let same = {
                    let st = lock(&slot.status);
                    st.pid == Some(pid) && st.state == VmState::Running && !st.removed
                };
                if !same {
                    // Saved, stopped or restarted meanwhile: the next resume
                    // sets the clock again.
                    eprintln!(
                        "rayosd: {name}: guest clock not set: the VM stopped running first ({last})"
                    );
                    return;
                }
                match vmm.sync_guest_time(&spec, AGENT_WAIT) {
                    Ok(Some(c)) => {
                        eprintln!(
                            "rayosd: {name}: {}, {} s after the resume",
                            announce(&name, &c),
                            started.elapsed().as_secs()
                        );
                        return;
                    }
                    Ok(None) => last = "no guest agent answered".into(),
                    Err(e) => last = chain(&e),
                }
                if started.elapsed() >= RETRY_FOR {
                    eprintln!(
                        "rayosd: {name}: guest clock not set: {last} in {} s; gave up",
                        started.elapsed().as_secs()
                    );
                    marker(&clock_marker(&name, VmClock::Unset));
                    return;
                }
            }
        });
    }
}

fn clock_marker(name: &str, how: VmClock) -> Marker {
    Marker::VmClock {
        vm: name.to_string(),
        how,
    }
}

/// Prints VM `name`'s clock marker for a clock that was set; returns what
/// the reply and the log say about it.
fn announce(name: &str, c: &ClockSync) -> String {
    let (how, from) = match c.source {
        ClockSource::Rtc => (VmClock::Rtc, "from its RTC"),
        ClockSource::Host => (VmClock::Host, "to the host's time"),
    };
    marker(&clock_marker(name, how));
    match c.offset_ms {
        Some(ms) => {
            format!("guest clock set through the guest agent ({from}), read back {ms} ms off")
        }
        None => format!("guest clock set through the guest agent ({from})"),
    }
}
