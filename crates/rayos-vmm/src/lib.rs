//! The VM monitor boundary: the `Vmm` trait and its QEMU backend (command
//! lines for the Linux and Windows profiles, process control, swtpm, saved
//! state files).
