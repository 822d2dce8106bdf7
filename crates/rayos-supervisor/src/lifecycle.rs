//! The VM lifecycle as data: which [`Step`] may move a VM from which
//! [`VmState`] to which ([`TABLE`]), the event each step is announced with
//! ([`Step::event`]), and which states allow each operation the API offers
//! ([`ALLOWED`], checked by [`require`]).
//!
//! Every state change in the supervisor goes through [`next`], so the table
//! below is the whole lifecycle; `docs/supervisor.md` draws it. Every
//! operation is checked by [`require`] before it takes a step, so a refusal
//! (409) always says the same thing for the same state. Presentation
//! (hidden or presented) is not a state: it is a flag on a running VM that
//! any state change away from `running`/`paused` clears.

use rayos_api::{EventKind, VmState};

/// Something that happens to a VM: a request, or an observation of its
/// device model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `start` with no usable saved state (or `--fresh`).
    ColdBoot,
    /// `start` with a saved state that matches the VM's configuration.
    Resume,
    /// The device model is up (cold or restored).
    Launched,
    /// Launching failed (a cold boot; or a restore whose state could not be
    /// kept aside).
    LaunchFailed,
    /// Restoring failed; the saved state is kept aside and the VM cold-boots.
    RestoreFailed,
    /// `suspend` (or host shutdown with policy `save`).
    Save,
    /// The state is on disk and the device model ended.
    SaveDone,
    /// The guest keeps running after a failed save.
    SaveFailed,
    /// `stop` (ACPI, then kill after a timeout; or kill at once).
    Stop,
    /// The device model has exited after a stop.
    StopDone,
    /// The guest shut itself down.
    GuestShutdown,
    /// The device model died without being asked to.
    Died,
    /// The guest's vCPUs were seen stopped.
    SeenPaused,
    /// The guest's vCPUs were seen running again.
    SeenRunning,
    /// A device model from before a daemon restart was found and adopted.
    Attach,
    /// `start --fresh` on a saved VM drops the state first.
    Discard,
    /// `start` found a saved state it cannot use and kept it aside.
    KeepAside,
}

impl Step {
    /// The event that announces this step (with the state it led to).
    pub const fn event(self) -> EventKind {
        match self {
            ColdBoot => EventKind::Starting,
            Resume => EventKind::Resuming,
            Launched => EventKind::Started,
            LaunchFailed => EventKind::StartFailed,
            RestoreFailed => EventKind::RestoreFailed,
            Save => EventKind::Saving,
            SaveDone => EventKind::Saved,
            SaveFailed => EventKind::SaveFailed,
            Stop => EventKind::Stopping,
            StopDone | GuestShutdown => EventKind::Stopped,
            Died => EventKind::Crashed,
            SeenPaused => EventKind::Paused,
            SeenRunning => EventKind::Continued,
            Attach => EventKind::Attached,
            Discard => EventKind::Discarded,
            KeepAside => EventKind::UnusableState,
        }
    }
}

use Step::*;
use VmState::*;

/// (from, step, to). A pair missing here is refused with 409.
pub const TABLE: &[(VmState, Step, VmState)] = &[
    (Stopped, ColdBoot, Starting),
    (Crashed, ColdBoot, Starting),
    (Saved, Resume, Resuming),
    (Saved, Discard, Stopped),
    (Saved, KeepAside, Stopped),
    (Starting, Launched, Running),
    (Resuming, Launched, Running),
    (Starting, LaunchFailed, Stopped),
    // Restore failed and the state could not be moved aside: it stays.
    (Resuming, LaunchFailed, Saved),
    (Resuming, RestoreFailed, Starting),
    (Running, Save, Saving),
    (Paused, Save, Saving),
    (Saving, SaveDone, Saved),
    (Saving, SaveFailed, Running),
    (Running, Stop, Stopping),
    (Paused, Stop, Stopping),
    (Saving, Stop, Stopping),
    (Stopping, StopDone, Stopped),
    (Running, GuestShutdown, Stopped),
    (Paused, GuestShutdown, Stopped),
    (Running, Died, Crashed),
    (Paused, Died, Crashed),
    (Stopping, Died, Stopped),
    (Running, SeenPaused, Paused),
    (Paused, SeenRunning, Running),
    (Stopped, Attach, Running),
    (Saved, Attach, Running),
    (Crashed, Attach, Running),
];

/// The state `step` leads to from `from`, or `None` when the table forbids it.
pub fn next(from: VmState, step: Step) -> Option<VmState> {
    TABLE
        .iter()
        .find(|(f, s, _)| *f == from && *s == step)
        .map(|(_, _, to)| *to)
}

/// States in which a device model process belongs to the VM. While a
/// caller holds the VM's operation lock, the VM has a device-model handle
/// exactly in these states, so operations check the state alone.
pub fn has_device_model(s: VmState) -> bool {
    matches!(s, Running | Paused | Saving | Stopping)
}

/// An operation the API offers on one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Boot or resume the VM.
    Start,
    /// Save the VM's state and end its device model.
    Suspend,
    /// Stop the VM (power button, or kill).
    Stop,
    /// Show the VM and give it the input.
    Present,
    /// Take a picture of the VM's display.
    Screenshot,
    /// Keys, text and pointer actions injected into the guest.
    Input,
    /// Bytes written to the serial console.
    ConsoleWrite,
    /// A program run through the guest agent.
    Exec,
    /// Only with no device model and nothing in flight.
    Delete,
}

impl Op {
    /// How refusals name the operation: "cannot {verb} it".
    pub const fn verb(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::Suspend => "suspend",
            Op::Stop => "stop",
            Op::Present => "present",
            Op::Screenshot => "take a screenshot of",
            Op::Input => "send input to",
            Op::ConsoleWrite => "write to the console of",
            Op::Exec => "run a command in",
            Op::Delete => "delete",
        }
    }
}

/// (operation, the states it is allowed in). Any other state refuses it
/// with 409 and [`hint`]. The rows for start, suspend and stop are the
/// states their first step leaves from in [`TABLE`] (a unit test checks).
pub const ALLOWED: &[(Op, &[VmState])] = &[
    (Op::Start, &[Stopped, Saved, Crashed]),
    (Op::Suspend, &[Running, Paused]),
    (Op::Stop, &[Running, Paused, Saving]),
    (Op::Present, &[Running, Paused]),
    (Op::Screenshot, &[Running, Paused, Saving, Stopping]),
    // A paused guest would take the input only when it runs again, long
    // after the caller looked at its screen.
    (Op::Input, &[Running]),
    // A paused guest's serial port takes no bytes.
    (Op::ConsoleWrite, &[Running]),
    (Op::Exec, &[Running]),
    (Op::Delete, &[Stopped, Saved, Crashed]),
];

/// `op` in `state`, refused: the message says why and what to do instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} it{}", .op.verb(), hint(*.op, *.state))]
pub struct Refusal {
    /// The operation refused.
    pub op: Op,
    /// The state it was refused in.
    pub state: VmState,
}

/// Whether `state` allows `op` ([`ALLOWED`]).
pub fn require(op: Op, state: VmState) -> Result<(), Refusal> {
    let allowed = ALLOWED
        .iter()
        .find(|(o, _)| *o == op)
        .is_some_and(|(_, states)| states.contains(&state));
    if allowed {
        Ok(())
    } else {
        Err(Refusal { op, state })
    }
}

/// What a refusal of `op` in `state` adds to "cannot {verb} it".
pub fn hint(op: Op, state: VmState) -> &'static str {
    match (op, state) {
        (Op::Delete, _) => ": stop it first",
        (Op::Present | Op::Screenshot, _) => ": start it first",
        (Op::Input | Op::ConsoleWrite | Op::Exec, Paused) => {
            " (it is paused: the guest is not running)"
        }
        (Op::Input | Op::ConsoleWrite | Op::Exec, _) => ": start it first",
        (Op::Stop, Saved) => {
            " (it is saved, not running: `start` resumes it, `start --fresh` discards the state)"
        }
        (_, Stopped | Crashed | Saved) => " (it is not running)",
        (Op::Start, Running | Paused) => " (it already runs)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [VmState; 9] = [
        Stopped, Starting, Running, Stopping, Saving, Saved, Resuming, Paused, Crashed,
    ];

    #[test]
    fn table_is_a_function() {
        for (i, (f, s, _)) in TABLE.iter().enumerate() {
            for (g, t, _) in &TABLE[i + 1..] {
                assert!(!(f == g && s == t), "duplicate row {f:?} {s:?}");
            }
        }
    }

    #[test]
    fn every_state_is_reachable_and_left() {
        for st in ALL {
            if st != Stopped {
                assert!(
                    TABLE.iter().any(|(_, _, to)| *to == st),
                    "{st:?} unreachable"
                );
            }
            assert!(
                TABLE.iter().any(|(f, _, _)| *f == st),
                "{st:?} is a dead end"
            );
        }
    }

    #[test]
    fn the_main_cycle() {
        let mut s = Stopped;
        for (step, want) in [
            (ColdBoot, Starting),
            (Launched, Running),
            (Save, Saving),
            (SaveDone, Saved),
            (Resume, Resuming),
            (Launched, Running),
            (Stop, Stopping),
            (StopDone, Stopped),
        ] {
            s = next(s, step).unwrap_or_else(|| panic!("{s:?} --{step:?}--> refused"));
            assert_eq!(s, want);
        }
    }

    #[test]
    fn refusals() {
        // No second start of a running VM, no save of a stopped one, no resume
        // without a saved state, no cold boot over a saved state (that is an
        // explicit discard first).
        assert_eq!(next(Running, ColdBoot), None);
        assert_eq!(next(Stopped, Save), None);
        assert_eq!(next(Stopped, Resume), None);
        assert_eq!(next(Saved, ColdBoot), None);
        assert_eq!(next(Saved, Stop), None);
        assert_eq!(next(Starting, Save), None);
        // A failed restore falls back to a cold boot, never to "stopped with
        // the state gone".
        assert_eq!(next(Resuming, RestoreFailed), Some(Starting));
        assert_eq!(next(Saving, SaveFailed), Some(Running));
    }

    #[test]
    fn device_model_states_match_the_table() {
        // Only states with a device model can die or be saved.
        for (f, s, _) in TABLE {
            if matches!(s, Died | Save | GuestShutdown) {
                assert!(has_device_model(*f), "{f:?}");
            }
        }
        for st in ALL {
            assert!(!(require(Op::Delete, st).is_ok() && has_device_model(st)));
        }
    }

    fn allowed(op: Op) -> Vec<VmState> {
        ALL.into_iter()
            .filter(|s| require(op, *s).is_ok())
            .collect()
    }

    fn leaves_by(steps: &[Step]) -> Vec<VmState> {
        ALL.into_iter()
            .filter(|s| steps.iter().any(|st| next(*s, *st).is_some()))
            .collect()
    }

    #[test]
    fn operations_are_allowed_where_their_first_step_is() {
        // start: a cold boot, a resume, or dropping the state first.
        assert_eq!(
            allowed(Op::Start),
            leaves_by(&[ColdBoot, Resume, Discard, KeepAside])
        );
        assert_eq!(allowed(Op::Suspend), leaves_by(&[Save]));
        assert_eq!(allowed(Op::Stop), leaves_by(&[Stop]));
        // A screenshot needs a device model; presenting also a guest that
        // is not on its way down or out.
        for s in ALL {
            assert_eq!(
                require(Op::Screenshot, s).is_ok(),
                has_device_model(s),
                "{s:?}"
            );
        }
        assert_eq!(allowed(Op::Present), [Running, Paused]);
        // The agent bridge needs a device model too.
        for op in [Op::Input, Op::ConsoleWrite, Op::Exec] {
            for s in allowed(op) {
                assert!(has_device_model(s), "{op:?} in {s:?}");
            }
        }
        // Every operation has exactly one row.
        for op in [
            Op::Start,
            Op::Suspend,
            Op::Stop,
            Op::Present,
            Op::Screenshot,
            Op::Input,
            Op::ConsoleWrite,
            Op::Exec,
            Op::Delete,
        ] {
            assert_eq!(
                ALLOWED.iter().filter(|(o, _)| *o == op).count(),
                1,
                "{op:?}"
            );
        }
    }

    #[test]
    fn refusals_say_what_to_do() {
        let msg = |op, st| require(op, st).unwrap_err().to_string();
        assert_eq!(msg(Op::Start, Running), "cannot start it (it already runs)");
        assert_eq!(
            msg(Op::Suspend, Stopped),
            "cannot suspend it (it is not running)"
        );
        assert!(msg(Op::Stop, Saved).contains("`start --fresh` discards the state"));
        assert_eq!(msg(Op::Delete, Paused), "cannot delete it: stop it first");
        assert_eq!(
            msg(Op::Screenshot, Crashed),
            "cannot take a screenshot of it: start it first"
        );
    }

    #[test]
    fn every_step_announces_itself() {
        // Steps out of the same state that lead to different places must
        // be told apart by their events.
        for (f, s, to) in TABLE {
            for (g, t, to2) in TABLE {
                if f == g && s != t && to != to2 {
                    assert_ne!(s.event(), t.event(), "{f:?}: {s:?} vs {t:?}");
                }
            }
        }
        assert_eq!(Discard.event(), EventKind::Discarded);
        assert_eq!(KeepAside.event(), EventKind::UnusableState);
    }
}
