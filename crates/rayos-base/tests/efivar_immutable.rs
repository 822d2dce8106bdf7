//! Writing over an existing EFI variable that carries the immutable flag.
//!
//! efivarfs cannot be mounted in a test (it needs a UEFI-booted kernel), but
//! the failure it causes is not efivarfs': efivarfs sets `S_IMMUTABLE` on
//! the variables it does not know (all of systemd-boot's `Loader*`), and
//! the VFS refuses to open an immutable inode for writing with EPERM
//! (`inode_permission`, fs/namei.c) before any filesystem code runs. So a
//! file on the test machine's own filesystem (ext4 here and in CI) with
//! `FS_IMMUTABLE_FL` set through the same ioctl `chattr +i` uses meets the
//! exact same check. Needs root (CAP_LINUX_IMMUTABLE), as CI runs.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use rayos_base::efivar::{self, LOADER_VENDOR, NV_BS_RT};
use rayos_base::sys;

/// Clears the flag again when the test ends, however it ends, so the
/// temp dir can be removed.
struct Unprotect(PathBuf);

impl Drop for Unprotect {
    fn drop(&mut self) {
        if let Ok(f) = File::open(&self.0) {
            let _ = sys::clear_immutable(&f);
        }
    }
}

fn protect(p: &Path) -> Unprotect {
    let f = File::open(p).unwrap();
    sys::set_immutable(&f).unwrap_or_else(|e| {
        panic!(
            "cannot set the immutable flag on {} ({e}): this test needs root and a filesystem \
             with inode flags (ext4, xfs, btrfs; CI runs as root on ext4)",
            p.display()
        )
    });
    Unprotect(p.to_path_buf())
}

fn is_immutable(p: &Path) -> bool {
    let f = File::open(p).unwrap();
    let was = sys::clear_immutable(&f).unwrap();
    if was {
        sys::set_immutable(&f).unwrap();
    }
    was
}

#[test]
fn an_immutable_variable_is_replaced_and_stays_protected() {
    let d = tempfile::tempdir().unwrap();
    let name = "LoaderEntryOneShot";
    efivar::write_string(d.path(), name, LOADER_VENDOR, "first.conf").unwrap();
    let p = efivar::var_path(d.path(), name, LOADER_VENDOR);
    let _guard = protect(&p);

    // What recovery did before: a plain create-truncate-write. The kernel
    // refuses it, which is the EPERM `rayos recovery --next-boot` met the
    // second time it ran (the first run's variable was still there).
    let e = fs::write(&p, b"\x07\0\0\0x\0\0\0").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");

    // The shared writer clears the flag, writes, and sets it again.
    efivar::write_string(d.path(), name, LOADER_VENDOR, "rayos-recovery.conf").unwrap();
    assert_eq!(
        efivar::read_string(d.path(), name, LOADER_VENDOR).as_deref(),
        Some("rayos-recovery.conf")
    );
    let raw = fs::read(&p).unwrap();
    assert_eq!(&raw[..4], &NV_BS_RT.to_le_bytes());
    assert_eq!(&raw[4..], &efivar::ucs2_z("rayos-recovery.conf")[..]);
    assert!(is_immutable(&p), "the flag efivarfs set must be back");

    // A variable without the flag is written and left without it.
    efivar::write_string(d.path(), "LoaderEntryDefault", LOADER_VENDOR, "x").unwrap();
    let q = efivar::var_path(d.path(), "LoaderEntryDefault", LOADER_VENDOR);
    efivar::write_string(d.path(), "LoaderEntryDefault", LOADER_VENDOR, "y").unwrap();
    assert!(!is_immutable(&q));
}
