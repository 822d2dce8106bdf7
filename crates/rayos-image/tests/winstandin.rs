//! The Windows stand-in installer (`rayos_image::winstandin`) refuses what
//! Windows 11 refuses: booted without Secure Boot it stops before touching
//! the disk. (The whole install/boot/persistence path runs under rayosd in
//! `crates/rayos/tests/windows_vm.rs`.)
//!
//! Needs: Debian packages fetched by name into `<workspace>/.cache`
//! (shim-signed, shim-helpers-amd64-signed, grub-efi-amd64-signed), the
//! host's signed kernel, busybox-static, xorriso, mtools, dosfstools,
//! QEMU and OVMF.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rayos_image::qemu::{Config, Medium, Qemu};
use rayos_image::winstandin::{self, marker};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn standin_refuses_to_install_without_secure_boot() {
    let s = winstandin::ensure(&workspace().join(".cache")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 << 20]).unwrap();
    // OVMF without Secure Boot: shim and GRUB still load (they work with
    // Secure Boot off), so the refusal is the initramfs's own check.
    let cfg = Config::new(&dir.path().join("vm"))
        .unwrap()
        .medium(Medium::Cdrom(s.iso.clone()))
        .medium(Medium::Disk {
            path: disk.clone(),
            sector_size: 512,
        });
    let mut q = Qemu::start(&cfg).unwrap();
    let out = q
        .wait_for(marker::FAIL, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}: {}", q.tail()));
    assert!(out.contains("Secure Boot is off"), "{}", q.tail());
    assert!(!out.contains(marker::INSTALLED));
    q.kill();
    assert!(
        std::fs::read(&disk).unwrap().iter().all(|&b| b == 0),
        "nothing was written to the disk"
    );
}
