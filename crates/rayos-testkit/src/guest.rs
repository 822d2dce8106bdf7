//! Tiny Linux guests (Debian kernel + busybox initramfs) for VM tests. (Being built.)
