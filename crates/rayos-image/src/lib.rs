//! Boot media: initramfs (cpio newc), Unified Kernel Image assembly, the
//! installer ISO and the raw USB image.
