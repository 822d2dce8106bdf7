//! Boot media: initramfs (cpio newc), Unified Kernel Image assembly, the
//! installer ISO and the raw USB image, plus a QEMU+OVMF boot harness that
//! proves they boot.

pub mod cpio;
pub mod initramfs;
pub mod uki;

pub use initramfs::{Compression, Initramfs};
pub use uki::{UkiParts, assemble as assemble_uki, os_release};
