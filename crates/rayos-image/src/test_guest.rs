//! The small busybox test guest's initramfs, as the media bundle it
//! (`/usr/share/rayos/guest/{vmlinuz,initrd.img}`): Debian's kernel and a
//! busybox initramfs running the `/init` script of `rayos_testkit::guest`
//! (ready marker, a RAM counter that tells a resumed guest from a cold
//! boot, ACPI power button). The VM tests and the end-to-end runs use it
//! because it boots in seconds.
//!
//! Limits: a test fixture, not a distribution: no networking, no disk. The
//! Linux subsystem users get is the Debian VM ([`crate::linux_vm`]).

use std::path::Path;

use crate::initramfs::{Initramfs, InitramfsError};

/// A test guest initramfs with `init` (run by busybox `sh`) as `/init` and
/// kernel modules stored as `lib/modules/<name>` for the script to insmod.
pub fn guest_initramfs_with(
    busybox: &Path,
    init: &str,
    modules: &[(String, std::path::PathBuf)],
) -> Result<Initramfs, InitramfsError> {
    let mut ird = Initramfs::new();
    ird.copy("bin/busybox", busybox, Some(0o755))?;
    ird.file("init", 0o755, init)?;
    for d in ["proc", "sys", "dev", "tmp", "lib/modules"] {
        ird.dir(d, 0o755)?;
    }
    for (name, host) in modules {
        ird.copy(&format!("lib/modules/{name}"), host, Some(0o644))?;
    }
    Ok(ird)
}
