//! QMP, the QEMU Machine Protocol: wire types without I/O ([`wire`]) and
//! small blocking clients over a unix socket for QMP and the QEMU guest
//! agent ([`client`]).
//!
//! Layering: `wire` only turns bytes into classified messages and back, so it
//! can be tested and fuzzed on byte slices; `client` owns sockets, ids and
//! timeouts. Nothing here knows about VMs: that is `rayos-vmm`.

pub mod client;
pub mod wire;

pub use client::{GuestAgent, QmpClient, QmpError};
pub use wire::{Event, LineBuffer, Message, WireError, parse_message};
