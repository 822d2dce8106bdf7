//! Boots real media under QEMU + OVMF (TCG): a UKI assembled by this crate
//! around Debian's kernel and a busybox initramfs, on the hybrid ISO as a CD
//! and on the raw USB image as a disk, and waits for the kernel to run /init
//! and /init to print its marker. Also checks the images with the real tools
//! (fsck.fat -n, sgdisk -v) and reads the UKI's sections back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rayos_image::media::{self, EspContents};
use rayos_image::qemu::{Config, Medium, Qemu};
use rayos_image::{Compression, Initramfs, UkiParts, fat, uki};

const MARKER: &str = "RAYOS_IMAGE_TEST_INIT_OK";
const CMDLINE: &str = "console=ttyS0,115200 panic=-1 rayos.mode=installer";

struct Built {
    _dir: tempfile::TempDir,
    uki: PathBuf,
    esp: PathBuf,
    iso: PathBuf,
    usb: PathBuf,
    work: PathBuf,
}

fn build() -> Built {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox missing: install busybox-static (scripts/install-deps.sh)"
    );
    let kernel = uki::host_kernel().expect("no /boot/vmlinuz-*: install linux-image-amd64");

    let mut ird = Initramfs::new();
    ird.copy("bin/busybox", busybox, Some(0o755)).unwrap();
    ird.file(
        "init",
        0o755,
        format!("#!/bin/busybox sh\n/bin/busybox echo {MARKER}\n/bin/busybox poweroff -f\n"),
    )
    .unwrap();
    let initrd = d.join("initrd.zst");
    ird.write(&initrd, Compression::Zstd(3)).unwrap();

    let uki_path = d.join("rayos-test.efi");
    let sections = rayos_image::assemble_uki(
        &UkiParts {
            stub: uki::DEBIAN_STUB.into(),
            kernel: kernel.clone(),
            initrd: initrd.clone(),
            cmdline: format!("{CMDLINE}\n"),
            osrel: rayos_image::os_release("0.0.1-test"),
            uname: None,
        },
        &uki_path,
    )
    .unwrap();
    // Sections never overlap in memory.
    let mut ranges: Vec<(u64, u64)> = sections
        .iter()
        .map(|s| {
            (
                u64::from(s.virtual_address),
                u64::from(s.virtual_address) + u64::from(s.virtual_size),
            )
        })
        .collect();
    ranges.sort();
    for w in ranges.windows(2) {
        assert!(w[0].1 <= w[1].0, "overlapping sections {w:?}");
    }
    // The command line is stored without its trailing newline.
    assert_eq!(
        uki::read_section(&uki_path, ".cmdline").unwrap().unwrap(),
        CMDLINE.as_bytes()
    );
    let osrel =
        String::from_utf8(uki::read_section(&uki_path, ".osrel").unwrap().unwrap()).unwrap();
    assert!(
        osrel.contains("ID=rayos\n") && osrel.contains("VERSION_ID=0.0.1-test\n"),
        "{osrel}"
    );
    let kbytes = std::fs::read(&kernel).unwrap();
    assert_eq!(
        uki::read_section(&uki_path, ".linux").unwrap().unwrap(),
        kbytes
    );
    assert_eq!(
        uki::read_section(&uki_path, ".uname").unwrap().unwrap(),
        uki::kernel_release(&kbytes).unwrap().as_bytes()
    );

    let work = d.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let esp = d.join("efiboot.img");
    media::build_esp(
        &esp,
        &EspContents {
            systemd_boot: media::SYSTEMD_BOOT.into(),
            loader_conf: media::loader_conf("rayos-*", 0),
            ukis: vec![("rayos-test.efi".into(), uki_path.clone())],
            entries: vec![],
            payload: vec![],
        },
        &work,
    )
    .unwrap();
    fat::check(&esp).unwrap();
    let iso = d.join("test.iso");
    media::build_iso(
        &iso,
        &esp,
        &[("rayos/rayos-test.efi".into(), uki_path.clone())],
    )
    .unwrap();
    let usb = d.join("usb.img");
    media::build_usb(&usb, &esp).unwrap();
    media::verify_gpt(&usb).unwrap();
    Built {
        uki: uki_path,
        esp,
        iso,
        usb,
        work,
        _dir: dir,
    }
}

fn boot(work: &Path, medium: Medium) {
    let cfg = Config::new(work).unwrap().medium(medium);
    let mut vm = Qemu::start(&cfg).unwrap();
    vm.wait_for("Run /init as init process", Duration::from_secs(240))
        .unwrap();
    vm.wait_for(MARKER, Duration::from_secs(60)).unwrap();
    // The kernel command line came from the UKI's .cmdline section.
    assert!(vm.serial_output().contains("rayos.mode=installer"));
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    // OVMF recorded its boot options in the VARS copy; the parser reads them.
    let vars = rayos_image::ovmf_vars::boot_vars(&std::fs::read(&vm.vars).unwrap()).unwrap();
    assert!(!vars.order.is_empty(), "{vars:?}");
    assert!(vars.find("UiApp").is_some(), "{vars:?}");
    assert!(
        vars.entries
            .iter()
            .any(|e| e.description.starts_with("UEFI ")),
        "{vars:?}"
    );
}

#[test]
fn uki_boots_from_the_iso_as_cd_and_as_disk_and_from_the_usb_image() {
    let b = build();
    assert!(
        std::fs::metadata(&b.uki).unwrap().len() > std::fs::metadata(&b.esp).unwrap().len() / 2
    );
    boot(&b.work.join("cd"), Medium::Cdrom(b.iso.clone()));
    boot(
        &b.work.join("usb"),
        Medium::Disk {
            path: b.usb.clone(),
            sector_size: 512,
        },
    );
    // Hybrid: the ISO written to a stick with dd boots as a disk too.
    boot(
        &b.work.join("iso-disk"),
        Medium::Disk {
            path: b.iso.clone(),
            sector_size: 512,
        },
    );
}

/// Dynamic programs copied with `Initramfs::elf` (libraries found by ldd,
/// merged /usr) run inside the booted initramfs: QEMU itself (with its TCG
/// module), swtpm and mke2fs print their versions.
#[test]
fn programs_copied_with_their_libraries_run_in_the_initramfs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let kernel = uki::host_kernel().expect("no /boot/vmlinuz-*: install linux-image-amd64");
    let mut ird = Initramfs::usr_merged();
    ird.copy("usr/bin/busybox", Path::new("/bin/busybox"), Some(0o755))
        .unwrap();
    let programs = [
        (
            "usr/bin/qemu-system-x86_64",
            "/usr/bin/qemu-system-x86_64",
            "qemu-system-x86",
        ),
        ("usr/bin/swtpm", "/usr/bin/swtpm", "swtpm"),
        ("usr/sbin/mke2fs", "/usr/sbin/mke2fs", "e2fsprogs"),
    ];
    for (dest, host, pkg) in programs {
        assert!(
            Path::new(host).exists(),
            "{host} missing: install {pkg} (scripts/install-deps.sh)"
        );
        ird.elf(dest, Path::new(host)).unwrap();
    }
    let accel = "/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so";
    ird.elf(accel, Path::new(accel)).unwrap();
    ird.file(
        "init",
        0o755,
        "#!/bin/busybox sh\n\
         /bin/busybox mkdir -p /dev /proc\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         /bin/busybox mount -t proc proc /proc\n\
         /usr/bin/qemu-system-x86_64 --version\n\
         /bin/busybox echo quit | /usr/bin/qemu-system-x86_64 -accel tcg -M none -nodefaults -display none -monitor stdio && /bin/busybox echo TCG_ACCEL_OK\n\
         /usr/bin/swtpm --version\n\
         /usr/sbin/mke2fs -V\n\
         /bin/busybox echo PROGRAMS_DONE\n\
         /bin/busybox poweroff -f\n",
    )
    .unwrap();
    // lz4 legacy frames, as the installed UKI carries them: the kernel
    // unpacks them (this boot fails at once if it does not).
    let initrd = d.join("initrd.lz4");
    ird.write(&initrd, Compression::Lz4).unwrap();
    let uki_path = d.join("rayos-progs.efi");
    rayos_image::assemble_uki(
        &UkiParts {
            stub: uki::DEBIAN_STUB.into(),
            kernel,
            initrd,
            cmdline: "console=ttyS0,115200 panic=-1".into(),
            osrel: rayos_image::os_release("0.0.1-test"),
            uname: None,
        },
        &uki_path,
    )
    .unwrap();
    let work = d.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let esp = d.join("esp.img");
    media::build_esp(
        &esp,
        &EspContents {
            systemd_boot: media::SYSTEMD_BOOT.into(),
            loader_conf: media::loader_conf("rayos-*", 0),
            ukis: vec![("rayos-progs.efi".into(), uki_path)],
            entries: vec![],
            payload: vec![],
        },
        &work,
    )
    .unwrap();
    let cfg = Config::new(&work.join("vm")).unwrap().medium(Medium::Disk {
        path: esp,
        sector_size: 512,
    });
    let mut vm = Qemu::start(&cfg).unwrap();
    vm.wait_for("PROGRAMS_DONE", Duration::from_secs(300))
        .unwrap();
    let out = vm.serial_output();
    assert!(
        out.contains("QEMU emulator version"),
        "qemu did not run:\n{}",
        vm.tail()
    );
    assert!(
        out.contains("TCG_ACCEL_OK"),
        "qemu cannot start with its TCG accelerator module:\n{}",
        vm.tail()
    );
    assert!(
        out.contains("TPM emulator version"),
        "swtpm did not run:\n{}",
        vm.tail()
    );
    assert!(
        out.contains("mke2fs 1."),
        "mke2fs did not run:\n{}",
        vm.tail()
    );
    assert!(
        !out.contains("error while loading shared libraries"),
        "{}",
        vm.tail()
    );
}
