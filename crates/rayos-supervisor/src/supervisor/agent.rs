//! The agent bridge's operations (docs/agent-bridge.md): input injected
//! into a guest, console writes, programs run through the guest agent.
//!
//! Routing of injected input, the same rule the presenter's input follows:
//! - the presented VM takes injected input, except within
//!   [`Config::input_quiet`] of the last physical key or pointer event the
//!   presenter reported (`POST /v1/input/physical`): the person at the
//!   machine wins, the agent gets 409 and tries again;
//! - a VM that is not presented (nobody sees it) takes injected input only
//!   when the request says `hidden: true`.
//!
//! The rule is checked before the first key and again before every
//! further action, so a person who starts typing stops an agent's long
//! text within one key. A refused request may thus have sent part of its
//! actions; the error says how many.
//!
//! Text is typed with the VM's keyboard layout
//! ([`Supervisor::keyboard_layout`]: its first-boot keyboard, else the
//! machine's, else US) and checked whole before the first key: a
//! character the layout cannot type is a 400 and nothing is sent.
//!
//! Keys are sent one combination at a time with [`Config::key_gap`]
//! between press and release and after the release: a PS/2 keyboard
//! buffers only 16 bytes, and a guest under emulation reads them slowly.
//!
//! Limits: console writes are not routed (the serial console is not the
//! presenter's input); the pointer needs an absolute pointer device, which
//! only the Linux profile has.

use std::time::{Duration, Instant};

use rayos_api::{
    Button, ConsoleWriteReply, DEFAULT_EXEC_SECS, ExecReply, ExecRequest, InputAction, InputReply,
    InputRequest, MAX_ACTIONS, MAX_CONSOLE_BYTES, MAX_EXEC_OUTPUT, MAX_EXEC_SECS, MAX_TEXT_CHARS,
};
use rayos_vmm::keys::{self, Combo};
use rayos_vmm::qemu::cmdline::has_absolute_pointer;
use rayos_vmm::{ABS_MAX, ExecSpec, InputEvent, PointerButton, VmHandle};

use super::{OpError, Supervisor, lock};
use crate::lifecycle::Op;

/// One paced step of an input request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Keys(Combo),
    /// Pointer to pixel (x, y); then a click when `Some`.
    Pointer {
        x: u32,
        y: u32,
        click: Option<PointerButton>,
    },
}

/// The steps of `actions`, checked (key names, layout, sizes) before the
/// VM is touched.
fn plan(actions: &[InputAction], layout: &str) -> Result<Vec<Step>, OpError> {
    if actions.is_empty() || actions.len() > MAX_ACTIONS {
        return Err(OpError::Invalid(format!(
            "an input request has 1 to {MAX_ACTIONS} actions, this one {}",
            actions.len()
        )));
    }
    let chars: usize = actions
        .iter()
        .map(|a| match a {
            InputAction::Text { text } => text.chars().count(),
            _ => 0,
        })
        .sum();
    if chars > MAX_TEXT_CHARS {
        return Err(OpError::Invalid(format!(
            "an input request types at most {MAX_TEXT_CHARS} characters, this one {chars}: split the text"
        )));
    }
    let bad = |e: keys::KeyError| OpError::Invalid(e.to_string());
    let mut steps = Vec::new();
    for a in actions {
        match a {
            InputAction::Key { keys: k } => {
                steps.push(Step::Keys(keys::parse_combo(k).map_err(bad)?))
            }
            InputAction::Text { text } => {
                steps.extend(
                    keys::type_text(text, layout)
                        .map_err(bad)?
                        .into_iter()
                        .map(Step::Keys),
                );
            }
            InputAction::Move { x, y } => steps.push(Step::Pointer {
                x: *x,
                y: *y,
                click: None,
            }),
            InputAction::Click { x, y, button } => steps.push(Step::Pointer {
                x: *x,
                y: *y,
                click: Some(match button {
                    Button::Left => PointerButton::Left,
                    Button::Middle => PointerButton::Middle,
                    Button::Right => PointerButton::Right,
                }),
            }),
        }
    }
    Ok(steps)
}

/// Pixel `v` of a screen `size` pixels wide (or high) on the absolute
/// axis: 0 is the first pixel, [`ABS_MAX`] the last.
pub(crate) fn to_abs(v: u32, size: u32) -> u32 {
    if size <= 1 {
        return 0;
    }
    let abs = u64::from(v) * u64::from(ABS_MAX) / u64::from(size - 1);
    u32::try_from(abs.min(u64::from(ABS_MAX))).unwrap_or(ABS_MAX)
}

/// Width and height from a PNG's IHDR chunk.
pub(crate) fn png_size(png: &[u8]) -> Option<(u32, u32)> {
    const SIG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if png.len() < 24 || !png.starts_with(SIG) || &png[12..16] != b"IHDR" {
        return None;
    }
    let be = |i: usize| u32::from_be_bytes([png[i], png[i + 1], png[i + 2], png[i + 3]]);
    Some((be(16), be(20)))
}

impl Supervisor {
    /// A person used the presented VM's keyboard or pointer just now.
    pub fn physical_input(&self) {
        *lock(&self.physical_at) = Some(Instant::now());
    }

    /// The keyboard layout the guest of `def` turns key codes back into
    /// characters with: its first-boot `guest.keyboard` (the layout the
    /// guest was set up with), else the machine's (`machine.toml`: the
    /// person who installed Windows or the imported system chose the
    /// keyboard in front of them), else `us` (no machine settings: a
    /// development host). Read at every request, so a changed
    /// `machine.toml` applies at once.
    pub(crate) fn keyboard_layout(&self, def: &rayos_state::VmDefinition) -> String {
        if let Some(g) = &def.guest {
            return g.keyboard.clone();
        }
        rayos_state::read_with_fallback(&self.layout.machine())
            .ok()
            .and_then(|(b, _)| {
                rayos_state::MachineConfig::parse("machine.toml", &String::from_utf8_lossy(&b)).ok()
            })
            .map_or_else(|| "us".to_string(), |m| m.keyboard)
    }

    /// Whether injected input may reach VM `name` now (see the module docs).
    fn input_route(&self, name: &str, hidden: bool) -> Result<(), OpError> {
        let presented = lock(&self.presented).as_deref() == Some(name);
        if !presented {
            if hidden {
                return Ok(());
            }
            return Err(OpError::Refused(format!(
                "VM {name} is not presented, so nobody sees what the input does: present it first, or say \"hidden\": true (rayos vm type/key/click --hidden) to send it anyway"
            )));
        }
        let quiet = self.cfg.input_quiet;
        if let Some(at) = *lock(&self.physical_at)
            && at.elapsed() < quiet
        {
            return Err(OpError::Refused(format!(
                "a person is using VM {name} (physical input {} ms ago): injected input waits until {} ms after the last key or pointer event; try again shortly",
                at.elapsed().as_millis(),
                quiet.as_millis()
            )));
        }
        Ok(())
    }

    /// Injects the request's keys, text and pointer actions (see the module
    /// docs for routing and pacing).
    pub fn input(&self, name: &str, req: &InputRequest) -> Result<InputReply, OpError> {
        self.refuse_if_shutting_down()?;
        let slot = self.slot(name)?;
        let def = lock(&slot.status).def.clone();
        let layout = self.keyboard_layout(&def);
        let steps = plan(&req.actions, &layout)?;
        let pointer = steps.iter().any(|s| matches!(s, Step::Pointer { .. }));
        if pointer && !has_absolute_pointer(def.kind) {
            return Err(OpError::Refused(format!(
                "VM {name} ({}) has no absolute pointer device, so clicks cannot land at screen coordinates: send keys instead (docs/agent-bridge.md)",
                def.kind
            )));
        }
        let mut op = self.try_op(&slot)?;
        let state = lock(&slot.status).state;
        self.require(&slot, Op::Input, state)?;
        self.input_route(name, req.hidden)?;
        let h = op
            .as_mut()
            .ok_or_else(|| OpError::Invalid("no device model".into()))?;
        let screen = if pointer {
            Some(self.screen_size(name, &def, h.as_mut())?)
        } else {
            None
        };
        let mut events = 0;
        for (i, step) in steps.iter().enumerate() {
            if i > 0 {
                self.input_route(name, req.hidden).map_err(|e| {
                    OpError::Refused(format!("{e} (stopped after {i} of {} steps)", steps.len()))
                })?;
            }
            events += self.send_step(name, h.as_mut(), step, screen)?;
        }
        Ok(InputReply {
            events,
            screen: screen.map(|(w, h)| [w, h]),
        })
    }

    /// The guest's screen size in pixels, from a screenshot.
    fn screen_size(
        &self,
        name: &str,
        def: &rayos_state::VmDefinition,
        h: &mut dyn VmHandle,
    ) -> Result<(u32, u32), OpError> {
        let png = self.take_screenshot(name, def, h)?;
        png_size(&png).ok_or_else(|| {
            OpError::Refused(format!(
                "VM {name}'s screenshot has no size: the display is not up yet"
            ))
        })
    }

    /// Sends one step; returns how many events it sent.
    fn send_step(
        &self,
        name: &str,
        h: &mut dyn VmHandle,
        step: &Step,
        screen: Option<(u32, u32)>,
    ) -> Result<usize, OpError> {
        let gap = self.cfg.key_gap;
        let mut send = |events: &[InputEvent]| {
            h.send_input(events)
                .map_err(|source| OpError::vmm("send input to", name, source))
        };
        match step {
            Step::Keys(combo) => {
                let down: Vec<InputEvent> = combo
                    .0
                    .iter()
                    .map(|&qcode| InputEvent::Key { qcode, down: true })
                    .collect();
                let up: Vec<InputEvent> = combo
                    .0
                    .iter()
                    .rev()
                    .map(|&qcode| InputEvent::Key { qcode, down: false })
                    .collect();
                send(&down)?;
                pause(gap);
                send(&up)?;
                pause(gap);
                Ok(down.len() + up.len())
            }
            Step::Pointer { x, y, click } => {
                let (w, hgt) = screen.unwrap_or((0, 0));
                if *x >= w || *y >= hgt {
                    return Err(OpError::Invalid(format!(
                        "({x}, {y}) is outside VM {name}'s screen of {w}x{hgt} pixels"
                    )));
                }
                send(&[InputEvent::Abs {
                    x: to_abs(*x, w),
                    y: to_abs(*y, hgt),
                }])?;
                pause(gap);
                let Some(button) = *click else {
                    return Ok(1);
                };
                send(&[InputEvent::Button { button, down: true }])?;
                pause(gap);
                send(&[InputEvent::Button {
                    button,
                    down: false,
                }])?;
                pause(gap);
                Ok(3)
            }
        }
    }

    /// Writes `text` to the VM's serial console.
    pub fn console_write(&self, name: &str, text: &str) -> Result<ConsoleWriteReply, OpError> {
        self.refuse_if_shutting_down()?;
        if text.is_empty() || text.len() > MAX_CONSOLE_BYTES {
            return Err(OpError::Invalid(format!(
                "a console write has 1 to {MAX_CONSOLE_BYTES} bytes, this one {}",
                text.len()
            )));
        }
        let slot = self.slot(name)?;
        let mut op = self.try_op(&slot)?;
        let state = lock(&slot.status).state;
        self.require(&slot, Op::ConsoleWrite, state)?;
        let h = op
            .as_mut()
            .ok_or_else(|| OpError::Invalid("no device model".into()))?;
        h.console_write(text.as_bytes())
            .map_err(|source| OpError::vmm("write to the console of", name, source))?;
        Ok(ConsoleWriteReply { bytes: text.len() })
    }

    /// Runs a program in the guest through its agent. The VM's operation
    /// lock is held only for the state check: a command that runs for
    /// minutes must not hold up a stop or a host shutdown.
    pub fn exec(&self, name: &str, req: &ExecRequest) -> Result<ExecReply, OpError> {
        self.refuse_if_shutting_down()?;
        let secs = req.timeout_secs.unwrap_or(DEFAULT_EXEC_SECS);
        if !(1..=MAX_EXEC_SECS).contains(&secs) {
            return Err(OpError::Invalid(format!(
                "timeout_secs must be 1 to {MAX_EXEC_SECS}, not {secs}"
            )));
        }
        if req.path.is_empty() {
            return Err(OpError::Invalid(
                "path names the program to run: it is empty".into(),
            ));
        }
        let slot = self.slot(name)?;
        let def = {
            let _op = self.try_op(&slot)?;
            let st = lock(&slot.status);
            self.require(&slot, Op::Exec, st.state)?;
            st.def.clone()
        };
        let spec = ExecSpec {
            path: req.path.clone(),
            args: req.args.clone(),
            input: req.input.clone().unwrap_or_default().into_bytes(),
            timeout: Duration::from_secs(secs),
            max_output: MAX_EXEC_OUTPUT,
        };
        let out = self
            .vmm
            .guest_exec(&self.spec(&def), &spec)
            .map_err(|source| OpError::vmm("run a command in", name, source))?
            .ok_or_else(|| {
                OpError::Refused(format!(
                    "VM {name} has no guest agent answering: install and start qemu-guest-agent in the guest (the Debian VM has it)"
                ))
            })?;
        Ok(ExecReply {
            pid: out.pid,
            timed_out: !out.exited,
            exit_code: out.exit_code,
            signal: out.signal,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            stdout_truncated: out.stdout_truncated,
            stderr_truncated: out.stderr_truncated,
        })
    }
}

fn pause(d: Duration) {
    if !d.is_zero() {
        std::thread::sleep(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_map_onto_the_whole_absolute_axis() {
        assert_eq!(to_abs(0, 800), 0);
        assert_eq!(to_abs(799, 800), ABS_MAX);
        assert_eq!(to_abs(400, 801), ABS_MAX / 2);
        assert_eq!(to_abs(5, 1), 0);
        assert_eq!(to_abs(10_000, 800), ABS_MAX);
    }

    #[test]
    fn png_size_reads_the_header_and_refuses_other_bytes() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend(1280u32.to_be_bytes());
        png.extend(800u32.to_be_bytes());
        assert_eq!(png_size(&png), Some((1280, 800)));
        assert_eq!(png_size(&png[..20]), None);
        assert_eq!(png_size(b"GIF89a..........................."), None);
    }

    #[test]
    fn plans_are_checked_before_anything_is_sent() {
        let key = |k: &str| InputAction::Key { keys: k.into() };
        let text = |t: &str| InputAction::Text { text: t.into() };
        assert_eq!(
            plan(&[key("ctrl+alt+del"), text("A")], "us").unwrap(),
            [
                Step::Keys(Combo(vec!["ctrl", "alt", "delete"])),
                Step::Keys(Combo(vec!["shift", "a"])),
            ]
        );
        let msg = |r: Result<Vec<Step>, OpError>| r.unwrap_err().to_string();
        assert!(msg(plan(&[], "us")).contains("1 to 100 actions"));
        assert!(msg(plan(&[key("ctrl+bogus")], "us")).contains("\"bogus\" is not a key name"));
        assert_eq!(
            plan(&[text("y")], "de").unwrap(),
            [Step::Keys(Combo(vec!["z"]))]
        );
        assert!(msg(plan(&[text("hallo")], "fr-bepo")).contains("layout is \"fr-bepo\""));
        let m = msg(plan(&[text("a^b")], "de"));
        assert!(m.contains("'^'") && m.contains("\"de\""), "{m}");
        let long = "x".repeat(MAX_TEXT_CHARS + 1);
        assert!(msg(plan(&[text(&long)], "us")).contains("split the text"));
    }
}
