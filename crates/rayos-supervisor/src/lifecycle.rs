//! The VM lifecycle as data: which [`Step`] may move a VM from which
//! [`VmState`] to which.
//!
//! Every state change in the supervisor goes through [`next`], so the table
//! below is the whole lifecycle; `docs/supervisor.md` draws it. Presentation
//! (hidden or presented) is not a state: it is a flag on a running VM that
//! any state change away from `running`/`paused` clears.

use rayos_api::VmState;

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
    /// The guest's vCPUs were seen stopped / running again.
    SeenPaused,
    SeenRunning,
    /// A device model from before a daemon restart was found and adopted.
    Attach,
    /// `start --fresh` on a saved VM drops the state first.
    Discard,
}

use Step::*;
use VmState::*;

/// (from, step, to). A pair missing here is refused with 409.
pub const TABLE: &[(VmState, Step, VmState)] = &[
    (Stopped, ColdBoot, Starting),
    (Crashed, ColdBoot, Starting),
    (Saved, Resume, Resuming),
    (Saved, Discard, Stopped),
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

/// States in which a device model process belongs to the VM.
pub fn has_device_model(s: VmState) -> bool {
    matches!(s, Running | Paused | Saving | Stopping)
}

/// States a VM may be deleted in (no device model, nothing in flight).
pub fn deletable(s: VmState) -> bool {
    matches!(s, Stopped | Saved | Crashed)
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
            assert!(!(deletable(st) && has_device_model(st)));
        }
    }
}
