//! Boot media: initramfs (cpio newc), Unified Kernel Image assembly, FAT
//! images, the installer ISO and the raw USB image, plus a QEMU+OVMF boot
//! harness (`qemu`) that proves they boot.
//!
//! Typical use (see `tests/boot.rs`):
//! build an [`Initramfs`], write it compressed, [`assemble_uki`] it with the
//! stub and a kernel, put the UKI on an ESP with [`media::build_esp`], wrap
//! that in an ISO or USB image, and boot it with [`qemu::Qemu`].

pub mod cpio;
pub mod debs;
pub mod fat;
pub mod initramfs;
pub mod linux_vm;
pub mod media;
pub mod modules;
pub mod ovmf_vars;
pub mod qemu;
pub mod test_guest;
pub mod tools;
pub mod uki;
pub mod winstandin;

pub use initramfs::{Compression, Initramfs};
pub use uki::{UkiParts, assemble as assemble_uki, os_release};
