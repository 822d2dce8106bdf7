//! The bottom crate: what more than one RayOS crate needs, in one place
//! (crosvm's `base`, Bottlerocket's constants). A second copy of a parser
//! is a second set of rules, so these live here once:
//!
//! - [`paths`]: the fixed places under `/run/rayos` and `/var/rayos`;
//! - [`efivar`]: EFI variables through efivarfs (UTF-16 strings, the
//!   immutable flag, vendor GUIDs, `EFI_LOAD_OPTION`, `Boot####`);
//! - [`uki_name`]: boot-counted UKI file names `rayos-<v>[+L[-D]].efi`;
//! - [`error`]: an error and its sources on one line;
//! - [`hash`]: lower-case hex and SHA-256;
//! - [`io`]: reading a buffer full (short and interrupted reads);
//! - [`marker`]: the machine-readable console markers (`RAYOS_READY`, …)
//!   as one type, printed by the services and awaited by the tests;
//! - [`sys`]: the system calls several crates make (pipes, eventfd,
//!   inotify, poll, descriptor passing, signals, locks), on `rustix`; the
//!   only `unsafe` of this crate is there.
//!
//! Nothing here knows about VMs, disks or the installer; every other RayOS
//! crate may depend on this one, and this one on no RayOS crate.

pub mod efivar;
pub mod error;
pub mod hash;
pub mod io;
pub mod marker;
pub mod paths;
pub mod sys;
pub mod uki_name;
