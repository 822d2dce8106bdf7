//! Installation media on a real block device (a loop device standing for
//! a USB stick): `rayos media` finds the stick, its FAT partition and the
//! ISO on it (mounted read-only), and a stick the host has mounted is never
//! handed to a guest until `rayos media --unmount` let go of it.
//!
//! Needs root, loop devices, sgdisk and e2fsprogs (as CI has). The stick's
//! filesystem is ext4 because the kernels of the development and CI
//! machines (containers) cannot load vfat; RayOS's own image has vfat,
//! exfat, isofs and udf, and `rayos media` mounts those the same way.

use std::fs;
use std::path::Path;
use std::process::Command;

use rayos_vmm::qemu::media::{self, Source};

fn rayos() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rayos"))
}

fn run(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{c:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A loop device, detached on drop (after `rayos media --unmount`).
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = rayos().args(["media", "--unmount"]).status();
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn a_stick_is_listed_with_its_iso_and_not_given_to_a_guest_while_mounted() {
    let dir = tempfile::tempdir().unwrap();
    // A stick formatted without a partition table (as some tools do),
    // holding an ISO file in a directory. (Loop devices in the containers
    // the tests run in get no partition devices, so the filesystem is on
    // the whole device; partitions are listed and mounted the same way.)
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("sources")).unwrap();
    let mut bytes = vec![0u8; 17 * 2048];
    bytes[16 * 2048..16 * 2048 + 6].copy_from_slice(b"\x01CD001");
    fs::write(tree.join("sources/Win11_24H2.iso"), &bytes).unwrap();
    let img = dir.path().join("stick.img");
    run(Command::new("mkfs.ext4")
        .args(["-q", "-L", "STICK", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("64M"));
    let out = Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&img)
        .output()
        .expect("losetup (util-linux)");
    assert!(
        out.status.success(),
        "attaching a loop device needs root and loop devices: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lo = Loop(String::from_utf8(out.stdout).unwrap().trim().to_string());
    let dev = Path::new(&lo.0);

    // Nothing mounted: the stick may be given to a guest.
    assert_eq!(media::check(dev).unwrap(), Source::Device);

    let listing = run(rayos().arg("media"));
    let name = lo.0.trim_start_matches("/dev/");
    let file = format!("/run/rayos/media/{name}/sources/Win11_24H2.iso");
    assert!(listing.contains(&lo.0), "{listing}");
    assert!(listing.contains("whole disk: ext4 \"STICK\""), "{listing}");
    assert!(listing.contains(&file), "{listing}");
    assert!(
        listing.contains(&format!("rayos vm media NAME attach {file}")),
        "{listing}"
    );
    // The file is there, read-only, and detected as a CD.
    assert_eq!(fs::read(&file).unwrap(), bytes);
    assert!(fs::write(&file, b"x").is_err(), "mounted read-only");
    assert_eq!(
        media::detect_form(Path::new(&file)).unwrap(),
        media::Form::Cdrom
    );
    assert_eq!(media::check(Path::new(&file)).unwrap(), Source::File);

    // It is mounted by the host now: the device is refused.
    let e = media::check(dev).unwrap_err().to_string();
    assert!(e.contains("mounted at /run/rayos/media/"), "{e}");

    run(rayos().args(["media", "--unmount"]));
    assert!(!Path::new(&file).exists());
    assert_eq!(media::check(dev).unwrap(), Source::Device);
    // A stick with no ISO 9660 at its start is given as a USB stick by
    // default.
    assert_eq!(media::detect_form(dev).unwrap(), media::Form::Usb);
}
