//! The presenter: RayOS's compositor and input router.
//!
//! It shows one VM at a time on the machine's display (or the home screen
//! listing the VMs) and forwards the physical keyboard and mouse to that VM
//! only. See `docs/present.md`.
//!
//! - [`rfb`]: RFB (VNC) wire protocol and client handshake (untrusted bytes).
//! - [`vnc`]: a live connection to one VM's VNC socket (reader/writer).
//! - [`keymap`]: evdev key codes → XT scancodes (and fallback keysyms).

pub mod keymap;
pub mod rfb;
pub mod vnc;
