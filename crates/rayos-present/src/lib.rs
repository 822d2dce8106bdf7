//! The presenter: RayOS's compositor and input router.
//!
//! It shows one VM at a time on the machine's display (or the home screen
//! listing the VMs) and forwards the physical keyboard and mouse to that VM
//! only. See `docs/present.md`.
//!
//! - [`rfb`]: RFB (VNC) wire protocol and client handshake (untrusted bytes).
//! - [`vnc`]: a live connection to one VM's VNC socket (reader/writer).
//! - [`keymap`]: evdev key codes → XT scancodes (and fallback keysyms).
//! - [`display`]: the `Display` trait, fbdev and memory backends.
//! - [`scale`]: aspect-preserving fit and nearest-neighbour scaling.
//! - [`font`], [`home`]: the built-in font and the home screen.
//! - [`input`]: evdev devices, exclusive grab, hot-plug.
//! - [`router`]: hotkeys and which VM gets which key.
//! - [`service`]: the `rayos present` service tying it together.

pub mod display;
pub mod font;
mod font_data;
pub mod home;
pub mod input;
pub mod keymap;
pub mod rfb;
pub mod router;
pub mod scale;
pub mod service;
pub mod vnc;
