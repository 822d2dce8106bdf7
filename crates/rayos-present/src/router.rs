//! Which keys go where: the hotkey state machine and the presented VM's
//! held-key bookkeeping. Pure logic (no I/O), so every rule is unit-tested.
//!
//! Reserved keys (never reach a VM):
//! - Ctrl+Alt+Home: back to the home screen;
//! - Ctrl+Alt+F1 … F10: present VM 1 … 10 (home-screen order);
//! - Ctrl+Alt+F12: text console and back (input ungrabbed meanwhile);
//! - on the home screen, F1 … F10 alone also present VM n.
//!
//! A hotkey's key press and its release are swallowed. Ctrl and Alt
//! themselves were already sent to the VM (nobody knows a hotkey is coming
//! when Ctrl goes down), so on every switch the VM that was presented gets a
//! release for each key it saw pressed — no stuck modifiers — and the next
//! VM starts with an empty set, so releases of keys it never saw pressed
//! are not sent to it.

use std::collections::BTreeSet;

use crate::keymap::code;

/// Where input goes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The home screen has it (F1 … F10 present a VM).
    Home,
    /// The presented VM gets every key but the hotkeys.
    Vm,
    /// Input ungrabbed: the kernel's text console has it.
    Console,
}

/// What a hotkey asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Back to the home screen (Ctrl+Alt+Home).
    Home,
    /// Index into the home screen's list (0 = F1).
    Present(usize),
    /// Toggle the text console.
    Console,
}

/// The result of one key event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// (evdev code, down) to send to the presented VM, in order.
    pub forward: Vec<(u16, bool)>,
    /// What the key asks the presenter to do, if it was a hotkey.
    pub action: Option<Action>,
}

/// The hotkey state machine: decides for each key event whether it is a hotkey
/// or goes to the presented VM.
#[derive(Debug)]
pub struct Router {
    /// Where input goes now.
    pub mode: Mode,
    /// Physically held modifiers: left/right ctrl, left/right alt.
    mods: BTreeSet<u16>,
    /// Keys the presented VM saw go down and not up yet.
    guest_held: BTreeSet<u16>,
    /// Keys whose press was swallowed, so their release is too.
    swallowed: BTreeSet<u16>,
}

impl Default for Router {
    fn default() -> Self {
        Router::new()
    }
}

fn f_index(c: u16) -> Option<usize> {
    match c {
        code::F1..=code::F10 => Some(usize::from(c - code::F1)),
        _ => None,
    }
}

impl Router {
    /// A router on the home screen with no key held.
    pub fn new() -> Router {
        Router {
            mode: Mode::Home,
            mods: BTreeSet::new(),
            guest_held: BTreeSet::new(),
            swallowed: BTreeSet::new(),
        }
    }

    fn ctrl_alt(&self) -> bool {
        let ctrl = self.mods.contains(&code::LEFTCTRL) || self.mods.contains(&code::RIGHTCTRL);
        let alt = self.mods.contains(&code::LEFTALT) || self.mods.contains(&code::RIGHTALT);
        ctrl && alt
    }

    /// One evdev key event (`value` 0 up, 1 down, 2 auto-repeat).
    pub fn key(&mut self, c: u16, value: i32) -> Step {
        let mut step = Step::default();
        let is_mod = matches!(
            c,
            code::LEFTCTRL | code::RIGHTCTRL | code::LEFTALT | code::RIGHTALT
        );
        if value == 0 {
            if is_mod {
                self.mods.remove(&c);
            }
            if self.swallowed.remove(&c) {
                return step;
            }
            if self.guest_held.remove(&c) {
                step.forward.push((c, false));
            }
            return step;
        }
        if is_mod {
            self.mods.insert(c);
        }
        if value == 1 {
            // A fresh press means any earlier swallowed press has ended
            // (its release may have been lost with a device).
            self.swallowed.remove(&c);
        } else if self.swallowed.contains(&c) {
            // Auto-repeat of a hotkey.
            return step;
        }
        if value == 1 {
            let hotkey = if self.ctrl_alt() {
                match c {
                    code::HOME => Some(Action::Home),
                    code::F12 => Some(Action::Console),
                    _ => f_index(c).map(Action::Present),
                }
            } else if self.mode == Mode::Home {
                f_index(c).map(Action::Present)
            } else {
                None
            };
            if let Some(a) = hotkey {
                self.swallowed.insert(c);
                step.action = Some(a);
                return step;
            }
        }
        if self.mode == Mode::Vm {
            self.guest_held.insert(c);
            step.forward.push((c, true));
        }
        step
    }

    /// Switches where input goes; returns the releases the VM presented
    /// until now must get.
    pub fn switch(&mut self, mode: Mode) -> Vec<(u16, bool)> {
        self.mode = mode;
        std::mem::take(&mut self.guest_held)
            .into_iter()
            .map(|c| (c, false))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u16 = code::A;

    #[test]
    fn keys_reach_the_vm_only_when_one_is_presented() {
        let mut r = Router::new();
        assert_eq!(r.key(A, 1), Step::default(), "home screen eats keys");
        assert_eq!(r.key(A, 0), Step::default());
        r.switch(Mode::Vm);
        assert_eq!(r.key(A, 1).forward, [(A, true)]);
        assert_eq!(r.key(A, 2).forward, [(A, true)], "repeat forwarded");
        assert_eq!(r.key(A, 0).forward, [(A, false)]);
        r.switch(Mode::Console);
        assert_eq!(r.key(A, 1), Step::default(), "console: nothing to a VM");
    }

    #[test]
    fn ctrl_alt_home_returns_home_and_releases_modifiers() {
        let mut r = Router::new();
        r.switch(Mode::Vm);
        assert_eq!(r.key(code::LEFTCTRL, 1).forward, [(code::LEFTCTRL, true)]);
        assert_eq!(r.key(code::LEFTALT, 1).forward, [(code::LEFTALT, true)]);
        let s = r.key(code::HOME, 1);
        assert_eq!(s.action, Some(Action::Home));
        assert!(s.forward.is_empty(), "Home itself never reaches the VM");
        // The service switches and gives the old VM its releases.
        let releases = r.switch(Mode::Home);
        assert_eq!(releases, [(code::LEFTCTRL, false), (code::LEFTALT, false)]);
        // Physical releases afterwards go nowhere.
        assert_eq!(r.key(code::HOME, 0), Step::default());
        assert_eq!(r.key(code::LEFTALT, 0), Step::default());
        assert_eq!(r.key(code::LEFTCTRL, 0), Step::default());
    }

    #[test]
    fn ctrl_alt_fn_presents_and_the_next_vm_gets_no_stray_releases() {
        let mut r = Router::new();
        r.switch(Mode::Vm);
        r.key(code::RIGHTCTRL, 1);
        r.key(code::RIGHTALT, 1);
        let s = r.key(code::F1 + 1, 1);
        assert_eq!(s.action, Some(Action::Present(1)));
        assert_eq!(r.key(code::F1 + 1, 2), Step::default(), "repeat swallowed");
        let rel = r.switch(Mode::Vm);
        assert_eq!(rel.len(), 2);
        // The new VM never saw Ctrl/Alt go down: their releases stay here.
        assert_eq!(r.key(code::F1 + 1, 0), Step::default());
        assert_eq!(r.key(code::RIGHTCTRL, 0), Step::default());
        assert_eq!(r.key(code::RIGHTALT, 0), Step::default());
        assert_eq!(r.key(A, 1).forward, [(A, true)]);
    }

    #[test]
    fn function_keys_alone_present_only_from_home() {
        let mut r = Router::new();
        assert_eq!(r.key(code::F1, 1).action, Some(Action::Present(0)));
        assert_eq!(r.key(code::F10, 1).action, Some(Action::Present(9)));
        r.switch(Mode::Vm);
        let s = r.key(code::F1, 1);
        assert_eq!(s.action, None);
        assert_eq!(s.forward, [(code::F1, true)], "F1 belongs to the VM");
        assert_eq!(r.key(code::F11, 1).forward, [(code::F11, true)]);
    }

    #[test]
    fn console_toggle_and_ctrl_alt_del_passes() {
        let mut r = Router::new();
        r.switch(Mode::Vm);
        r.key(code::LEFTCTRL, 1);
        r.key(code::LEFTALT, 1);
        assert_eq!(
            r.key(111, 1).forward,
            [(111, true)],
            "Ctrl+Alt+Del is the guest's"
        );
        assert_eq!(r.key(code::F12, 1).action, Some(Action::Console));
        // Alt released before Ctrl: still not a hotkey for a later F1.
        r.key(code::LEFTALT, 0);
        r.switch(Mode::Vm);
        assert_eq!(r.key(code::F1, 1).action, None);
    }
}
