//! The small test Linux guest bundled as the default Linux subsystem image
//! (`/usr/share/rayos/guest/{vmlinuz,initrd.img}`): Debian's kernel and a
//! busybox initramfs whose `/init` prints [`GUEST_READY`] and then
//! `COUNTER <n>` once a second on its console, so a test can tell a resumed
//! guest (the counter continues) from a cold boot (it restarts at 1).
//!
//! Limits: a test fixture, not a distribution: no networking, no disk.

use std::path::Path;

use crate::initramfs::{Initramfs, InitramfsError};

/// Printed once by the guest's /init when userspace is up.
pub const GUEST_READY: &str = "RAYOS_GUEST_READY";

/// The guest's `/init`, run by busybox `sh`.
pub const GUEST_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "RAYOS_GUEST_READY $(uname -r)"
n=0
while true; do
    n=$((n + 1))
    echo "COUNTER $n"
    sleep 1
done
"#;

/// A guest initramfs with another `/init` script (run by busybox `sh`) and
/// kernel modules stored as `lib/modules/<name>` for the script to insmod —
/// the layout of `rayos_testkit::guest`, whose script the media bundle.
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

/// The guest's initramfs around the static busybox at `busybox`.
pub fn guest_initramfs(busybox: &Path) -> Result<Initramfs, InitramfsError> {
    let mut ird = Initramfs::new();
    ird.copy("bin/busybox", busybox, Some(0o755))?;
    ird.file("init", 0o755, GUEST_INIT)?;
    for d in ["proc", "sys", "dev", "tmp"] {
        ird.dir(d, 0o755)?;
    }
    Ok(ird)
}
