//! The recovery menu's actions on a temporary data volume and system
//! partition, driven through the menu with scripted input (as a person at
//! the console would type it). The reinstall test uses a real UKI built
//! around systemd's stub.

use std::collections::BTreeMap;
use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use rayos_init::recovery::{self, Ctx};

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    fn walk(base: &Path, d: &Path, m: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                m.insert(
                    p.strip_prefix(base).unwrap().to_path_buf(),
                    b"<dir>".to_vec(),
                );
                walk(base, &p, m);
            } else {
                m.insert(
                    p.strip_prefix(base).unwrap().to_path_buf(),
                    fs::read(&p).unwrap(),
                );
            }
        }
    }
    walk(dir, dir, &mut m);
    m
}

const VM: &str = "0b6a3c7e-1111-4222-8333-444455556666";

/// A data volume as an install leaves it, after some use.
fn data_volume() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    for dir in ["policy", "logs", "crash", "boot", "vm"] {
        fs::create_dir_all(p.join(dir)).unwrap();
    }
    fs::write(p.join("machine.toml"), "hostname = \"box\"\n").unwrap();
    fs::write(p.join("schema-version"), "1\n").unwrap();
    fs::write(
        p.join("policy/rayos-policy.toml"),
        "version = 1\n\n[linux]\nautostart = true\n",
    )
    .unwrap();
    fs::write(p.join("logs/init.log"), "one\ntwo\nthree\n").unwrap();
    fs::write(p.join("crash/init-100.txt"), "crashed\n").unwrap();
    fs::write(p.join("boot/100-a.json"), "{}").unwrap();
    fs::write(p.join("vm/registry.json"), "{\"vms\":[]}").unwrap();
    let vm = p.join("vm").join(VM);
    for sub in ["disks", "state", "tpm", "logs"] {
        fs::create_dir_all(vm.join(sub)).unwrap();
    }
    fs::write(vm.join("disks/root.qcow2"), b"disk bytes").unwrap();
    fs::write(vm.join("state/saved.zst"), b"memory").unwrap();
    fs::write(vm.join("tpm/tpm2-00.permall"), b"tpm").unwrap();
    fs::write(vm.join("ovmf-vars.fd"), b"vars").unwrap();
    d
}

fn run_menu(ctx: &Ctx<'_>, script: &str) -> String {
    let mut input = Cursor::new(script.as_bytes().to_vec());
    let mut out = Vec::new();
    recovery::menu(ctx, &mut input, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn ctx(data: &Path, system: Option<&Path>) -> Ctx<'static> {
    Ctx {
        data: data.to_path_buf(),
        system: system.map(Path::to_path_buf),
        boot_entry: None,
    }
}

#[test]
fn logs_and_crash_reports() {
    let d = data_volume();
    let out = run_menu(
        &ctx(d.path(), None),
        "logs\nlogs/init.log\nlogs\ncrash/init-100.txt\nquit\n",
    );
    assert!(
        out.contains("logs/init.log") && out.contains("crash/init-100.txt"),
        "{out}"
    );
    assert!(out.contains("one\ntwo\nthree"), "{out}");
    assert!(out.contains("crashed"), "{out}");
    // Only logs and crash reports can be shown.
    assert!(recovery::tail(d.path(), "machine.toml", 5).is_err());
    assert!(recovery::tail(d.path(), "logs/../machine.toml", 5).is_err());
}

#[test]
fn policy_is_validated_and_edited() {
    let d = data_volume();
    let before = fs::read_to_string(d.path().join("policy/rayos-policy.toml")).unwrap();
    // A typo is refused at save; fixing it saves, keeping the old version.
    let out = run_menu(
        &ctx(d.path(), None),
        "policy\nshow\nset 4 autostart = maybe\nsave\nset 4 autostart = false\nsave\nquit\n",
    );
    assert!(out.contains("valid"), "{out}");
    assert!(out.contains("not saved"), "{out}");
    assert!(out.contains("saved (previous version kept"), "{out}");
    let now = fs::read_to_string(d.path().join("policy/rayos-policy.toml")).unwrap();
    assert!(now.contains("autostart = false"), "{now}");
    assert_eq!(
        fs::read_to_string(d.path().join("policy/rayos-policy.toml.prev")).unwrap(),
        before
    );
    assert!(recovery::validate_policy(d.path()).is_ok());
    // An invalid policy on disk is reported with its line.
    fs::write(
        d.path().join("policy/rayos-policy.toml"),
        "version = 1\nbogus = 1\n",
    )
    .unwrap();
    let e = recovery::validate_policy(d.path()).unwrap_err();
    assert!(e.contains(":2:"), "{e}");
    // Cancel changes nothing.
    let snap = snapshot(d.path());
    run_menu(&ctx(d.path(), None), "policy\nadd x = 1\ncancel\nquit\n");
    assert_eq!(snapshot(d.path()), snap);
}

#[test]
fn factory_reset_needs_the_typed_word_and_keeps_or_erases_disks() {
    let d = data_volume();
    let vm = d.path().join("vm").join(VM);
    let snap = snapshot(d.path());
    let out = run_menu(&ctx(d.path(), None), "reset\nkeep\nreset\nquit\n");
    assert!(out.contains("not confirmed"), "{out}");
    assert_eq!(
        snapshot(d.path()),
        snap,
        "a wrong confirmation changes nothing"
    );

    let out = run_menu(&ctx(d.path(), None), "reset\nkeep\nRESET\nquit\n");
    assert!(out.contains("policy reset"), "{out}");
    assert_eq!(
        fs::read(vm.join("disks/root.qcow2")).unwrap(),
        b"disk bytes"
    );
    assert!(vm.join("ovmf-vars.fd").exists() && vm.join("tpm/tpm2-00.permall").exists());
    assert!(!vm.join("state/saved.zst").exists());
    assert_eq!(fs::read_dir(d.path().join("logs")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(d.path().join("crash")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(d.path().join("boot")).unwrap().count(), 0);
    // The install's identity stays.
    assert_eq!(
        fs::read(d.path().join("machine.toml")).unwrap(),
        b"hostname = \"box\"\n"
    );
    assert_eq!(
        fs::read(d.path().join("vm/registry.json")).unwrap(),
        b"{\"vms\":[]}"
    );
    assert!(recovery::validate_policy(d.path()).is_ok());

    let out = run_menu(&ctx(d.path(), None), "reset\nerase\nERASE\nquit\n");
    assert!(out.contains("disks: 1 removed"), "{out}");
    assert!(!vm.join("disks/root.qcow2").exists());
    assert!(!vm.join("ovmf-vars.fd").exists());
    assert!(!vm.join("tpm/tpm2-00.permall").exists());
    assert!(vm.join("disks").is_dir(), "the VM's directories stay");
}

fn system_dir() -> tempfile::TempDir {
    let s = tempfile::tempdir().unwrap();
    fs::create_dir_all(s.path().join("EFI/Linux")).unwrap();
    fs::create_dir_all(s.path().join("rayos")).unwrap();
    fs::write(
        s.path().join("rayos/install-manifest.json"),
        r#"{"schema":1,"rayos_version":"0.3.0"}"#,
    )
    .unwrap();
    s
}

#[test]
fn boot_repair_restores_a_bootable_entry_and_the_recovery_entry() {
    let s = system_dir();
    let linux = s.path().join("EFI/Linux");
    fs::write(linux.join("rayos-0.2.0+0-3.efi.bad"), b"a").unwrap();
    fs::write(linux.join("rayos-0.3.0+0-3.efi.bad"), b"b").unwrap();
    fs::write(linux.join("rayos-0.4.0+3.efi.tmp"), b"half").unwrap();
    fs::write(s.path().join("rayos/rayos-recovery-0.3.0.efi"), b"r").unwrap();
    let d = data_volume();
    let out = run_menu(&ctx(d.path(), Some(s.path())), "boot\nquit\n");
    assert!(out.contains("gets 3 tries again"), "{out}");
    assert!(out.contains("recovery entry rewritten"), "{out}");
    assert!(out.contains("UEFI boot entry: not available"), "{out}");
    assert!(linux.join("rayos-0.3.0+3.efi").exists());
    assert!(!linux.join("rayos-0.4.0+3.efi.tmp").exists());
    let conf = fs::read_to_string(s.path().join("loader/entries/rayos-recovery.conf")).unwrap();
    assert!(
        conf.contains("efi /rayos/rayos-recovery-0.3.0.efi"),
        "{conf}"
    );
    // A second run finds everything fine.
    let out = run_menu(&ctx(d.path(), Some(s.path())), "boot\nquit\n");
    assert!(
        out.contains("boot entries fine") && out.contains("recovery entry fine"),
        "{out}"
    );
}

/// A real recovery UKI: systemd's stub + sections (the "kernel" is filler;
/// only the PE structure matters here).
fn recovery_uki(dir: &Path, version: &str) -> PathBuf {
    let stub = Path::new(rayos_image::uki::DEBIAN_STUB);
    assert!(
        stub.is_file(),
        "{} is missing: install systemd-boot-efi (scripts/install-deps.sh)",
        stub.display()
    );
    let kernel = dir.join("kernel");
    let initrd = dir.join("initrd");
    fs::write(&kernel, vec![0x11u8; 300_000]).unwrap();
    fs::write(&initrd, vec![0x22u8; 200_000]).unwrap();
    let out = dir.join(format!("rayos-recovery-{version}.efi"));
    rayos_image::uki::assemble(
        &rayos_image::UkiParts {
            stub: stub.to_path_buf(),
            kernel,
            initrd,
            cmdline: "console=ttyS0,115200 console=tty0 rayos.mode=recovery".into(),
            osrel: rayos_image::uki::os_release(version),
            uname: Some("6.1.0-test".into()),
        },
        &out,
    )
    .unwrap();
    out
}

#[test]
fn reinstall_rebuilds_the_system_partition_from_the_recovery_image() {
    let s = system_dir();
    let work = tempfile::tempdir().unwrap();
    let rec = recovery_uki(work.path(), "0.3.0");
    fs::copy(&rec, s.path().join("rayos/rayos-recovery-0.3.0.efi")).unwrap();
    let d = data_volume();
    let data_before = snapshot(d.path());

    let out = run_menu(&ctx(d.path(), Some(s.path())), "reinstall\nno\nquit\n");
    assert!(out.contains("not confirmed"), "{out}");
    assert!(!s.path().join("EFI/Linux/rayos-0.3.0+3.efi").exists());

    let out = run_menu(
        &ctx(d.path(), Some(s.path())),
        "reinstall\nreinstall\nquit\n",
    );
    assert!(out.contains("wrote /EFI/Linux/rayos-0.3.0+3.efi"), "{out}");
    let uki = s.path().join("EFI/Linux/rayos-0.3.0+3.efi");
    let cmdline = rayos_image::uki::read_section(&uki, ".cmdline")
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8(cmdline).unwrap(),
        "console=ttyS0,115200 console=tty0 rayos.mode=installed"
    );
    // Same kernel, initramfs and version as the recovery image.
    for sect in [".linux", ".initrd", ".osrel", ".uname"] {
        assert_eq!(
            rayos_image::uki::read_section(&uki, sect).unwrap(),
            rayos_image::uki::read_section(&rec, sect).unwrap(),
            "{sect}"
        );
    }
    assert!(
        s.path()
            .join("loader/entries/rayos-recovery.conf")
            .is_file()
    );
    assert!(s.path().join("rayos/install-manifest.json").is_file());
    // The data volume (and the VM's disk in it) did not change.
    assert_eq!(snapshot(d.path()), data_before);

    // An image that is not a recovery UKI is refused.
    assert!(recovery::installed_from_recovery(b"MZ not a pe").is_err());
    let installed = fs::read(&uki).unwrap();
    assert!(recovery::installed_from_recovery(&installed).is_err());
}

/// The file offset of section `name`'s header in a PE image (read by hand
/// here, so the test does not trust the reader it checks).
fn section_header(img: &[u8], name: &str) -> usize {
    let u16_at = |o: usize| u16::from_le_bytes([img[o], img[o + 1]]) as usize;
    let pe = u32::from_le_bytes(img[0x3c..0x40].try_into().unwrap()) as usize;
    let table = pe + 24 + u16_at(pe + 20);
    (0..u16_at(pe + 6))
        .map(|i| table + 40 * i)
        .find(|&h| img[h..h + 8].starts_with(name.as_bytes()))
        .unwrap()
}

/// Issue #10 item 8: a recovery UKI whose section table points past the
/// end of the file (damaged on disk, or cut short) made reinstall panic.
/// It is reported as damaged, and nothing on the system partition changes.
#[test]
fn a_damaged_recovery_uki_is_reported_not_a_crash() {
    let work = tempfile::tempdir().unwrap();
    let good = fs::read(recovery_uki(work.path(), "0.3.0")).unwrap();
    let len = good.len() as u32;
    let patch = |name: &str, field: usize, value: u32| {
        let mut b = good.clone();
        let h = section_header(&b, name) + field;
        b[h..h + 4].copy_from_slice(&value.to_le_bytes());
        b
    };
    let cmdline_at = u32::from_le_bytes(
        good[section_header(&good, ".cmdline") + 20..][..4]
            .try_into()
            .unwrap(),
    );
    let cases = [
        // .cmdline's raw size runs past the end; its virtual size still fits.
        ("raw size", patch(".cmdline", 16, len - cmdline_at + 4096)),
        ("raw offset", patch(".cmdline", 20, u32::MAX - 8)),
        ("osrel raw size", patch(".osrel", 16, u32::MAX)),
        ("cut short", good[..good.len() / 2].to_vec()),
    ];
    let d = data_volume();
    for (what, bad) in cases {
        assert!(
            recovery::installed_from_recovery(&bad).is_err(),
            "{what}: accepted"
        );
        let s = system_dir();
        fs::write(s.path().join("rayos/rayos-recovery-0.3.0.efi"), &bad).unwrap();
        let before = snapshot(s.path());
        let e = match recovery::ReinstallSource::read(s.path(), None) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{what}: a damaged image was accepted"),
        };
        assert!(e.contains("damaged"), "{what}: {e}");
        let out = run_menu(
            &ctx(d.path(), Some(s.path())),
            "reinstall\nreinstall\nquit\n",
        );
        assert!(
            out.contains("failed") && out.contains("past the end of the"),
            "{what}: {out}"
        );
        assert_eq!(
            snapshot(s.path()),
            before,
            "{what}: the system partition changed"
        );
    }
}

/// On a 4096-byte-sector disk systemd-boot lives on the system partition;
/// a reinstall (which formats it) must put it back, byte for byte.
#[test]
fn reinstall_keeps_a_boot_loader_living_on_the_system_partition() {
    let s = system_dir();
    let work = tempfile::tempdir().unwrap();
    let rec = recovery_uki(work.path(), "0.3.0");
    fs::copy(&rec, s.path().join("rayos/rayos-recovery-0.3.0.efi")).unwrap();
    let loader = [
        (
            "EFI/systemd/systemd-bootx64.efi",
            b"MZ systemd-boot".to_vec(),
        ),
        (
            "loader/loader.conf",
            b"timeout 3\ndefault rayos-*\n".to_vec(),
        ),
    ];
    for (rel, bytes) in &loader {
        let p = s.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    }
    let src = recovery::ReinstallSource::read(s.path(), None).unwrap();
    // The formatted partition: empty.
    let fresh = tempfile::tempdir().unwrap();
    let did = recovery::reinstall_files(fresh.path(), &src).unwrap();
    for (rel, bytes) in &loader {
        assert_eq!(&fs::read(fresh.path().join(rel)).unwrap(), bytes, "{rel}");
    }
    assert!(did.iter().any(|d| d.contains("loader.conf")), "{did:?}");
    // On a 512-byte-sector install the loader is on the ESP: nothing to keep.
    let s2 = system_dir();
    fs::copy(&rec, s2.path().join("rayos/rayos-recovery-0.3.0.efi")).unwrap();
    let src = recovery::ReinstallSource::read(s2.path(), None).unwrap();
    assert!(src.loader_files.is_empty());
}

#[test]
fn schema_restore_from_the_menu() {
    let d = data_volume();
    fs::remove_file(d.path().join("schema-version")).unwrap();
    let l = rayos_state::DataLayout::new(d.path());
    rayos_update::schema::check_and_migrate(&l, 1).unwrap();
    assert!(d.path().join("schema-version").exists());
    let out = run_menu(&ctx(d.path(), None), "schema\nrestore\nschema\nquit\n");
    assert!(out.contains("restored schema 0"), "{out}");
    assert!(out.contains("no schema migration to undo"), "{out}");
    assert!(!d.path().join("schema-version").exists());
}

#[test]
fn next_boot_into_recovery_writes_the_one_shot_variable() {
    let efivars = tempfile::tempdir().unwrap();
    recovery::boot_recovery_next(efivars.path()).unwrap();
    // Read back the way init reads loader variables.
    use rayos_base::efivar::{self, LOADER_VENDOR};
    assert_eq!(
        efivar::read_string(efivars.path(), "LoaderEntryOneShot", LOADER_VENDOR).as_deref(),
        Some("rayos-recovery.conf")
    );
    // The name systemd-boot looks for, spelled out.
    let raw = fs::read(
        efivars
            .path()
            .join("LoaderEntryOneShot-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"),
    )
    .unwrap();
    assert_eq!(&raw[..4], &[7, 0, 0, 0]);
}

/// efivarfs marks systemd-boot's variables immutable when it creates them,
/// so asking for recovery twice before rebooting used to meet EPERM: the
/// second write opened the existing, protected variable for writing. The
/// flag is set here through the same ioctl on a file of the test machine's
/// filesystem (see rayos-base's `efivar_immutable` test for why that is
/// the same kernel check); needs root, as CI runs.
#[test]
fn next_boot_into_recovery_twice_over_the_protected_variable() {
    use rayos_base::efivar::{self, LOADER_VENDOR};
    use rayos_base::sys;

    struct Unprotect(PathBuf);
    impl Drop for Unprotect {
        fn drop(&mut self) {
            if let Ok(f) = fs::File::open(&self.0) {
                let _ = sys::clear_immutable(&f);
            }
        }
    }

    let efivars = tempfile::tempdir().unwrap();
    recovery::boot_recovery_next(efivars.path()).unwrap();
    let p = efivar::var_path(efivars.path(), "LoaderEntryOneShot", LOADER_VENDOR);
    let _guard = Unprotect(p.clone());
    sys::set_immutable(&fs::File::open(&p).unwrap())
        .expect("setting the immutable flag needs root and ext4/xfs/btrfs (CI runs as root)");

    recovery::boot_recovery_next(efivars.path())
        .expect("asking for recovery again must work over efivarfs' immutable variable");
    assert_eq!(
        efivar::read_string(efivars.path(), "LoaderEntryOneShot", LOADER_VENDOR).as_deref(),
        Some(recovery::RECOVERY_ENTRY_ID)
    );
    let f = fs::File::open(&p).unwrap();
    assert!(
        sys::clear_immutable(&f).unwrap(),
        "the variable is protected again after the write"
    );
}
