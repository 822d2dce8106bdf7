//! The small busybox test guest's initramfs, as the media bundle it
//! (`/usr/share/rayos/guest/{vmlinuz,initrd.img}`): Debian's kernel and a
//! busybox initramfs running the `/init` script of `rayos_testkit::guest`
//! (ready marker, a RAM counter that tells a resumed guest from a cold
//! boot, ACPI power button). The VM tests and the end-to-end runs use it
//! because it boots in seconds.
//! Its busybox base ([`busybox_initramfs`]) is the Windows stand-in's too.
//!
//! Limits: a test fixture, not a distribution: no networking, no disk. The
//! Linux subsystem users get is the Debian VM ([`crate::linux_vm`]).

use std::path::Path;

use crate::initramfs::{Initramfs, InitramfsError};

/// The base of a busybox guest's initramfs, which the test guest and the
/// Windows stand-in ([`crate::winstandin`]) build on: `bin/busybox`, `init`
/// (a script busybox `sh` runs) and the mount points `proc`, `sys`, `dev`
/// and `tmp`. The caller adds its modules and files.
pub fn busybox_initramfs(busybox: &Path, init: &str) -> Result<Initramfs, InitramfsError> {
    let mut ird = Initramfs::new();
    ird.copy("bin/busybox", busybox, Some(0o755))?;
    ird.file("init", 0o755, init)?;
    for d in ["proc", "sys", "dev", "tmp"] {
        ird.dir(d, 0o755)?;
    }
    Ok(ird)
}

/// A test guest initramfs with `init` (run by busybox `sh`) as `/init` and
/// kernel modules stored as `lib/modules/<name>` for the script to insmod.
pub fn guest_initramfs_with(
    busybox: &Path,
    init: &str,
    modules: &[(String, std::path::PathBuf)],
) -> Result<Initramfs, InitramfsError> {
    let mut ird = busybox_initramfs(busybox, init)?;
    ird.dir("lib/modules", 0o755)?;
    for (name, host) in modules {
        ird.copy(&format!("lib/modules/{name}"), host, Some(0o644))?;
    }
    Ok(ird)
}
