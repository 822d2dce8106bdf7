//! A guest that needs what Windows 11 needs, under the real rayosd: QEMU
//! (TCG), OVMF with Secure Boot and Microsoft's keys (the per-VM copy of
//! `OVMF_VARS_4M.ms.fd`), swtpm (TPM 2.0), the AHCI disk and the USB stick,
//! driven through the real `rayos vm` CLI.
//!
//! The guest is the Windows stand-in (`rayos_image::winstandin`; Windows
//! media cannot be had here): Debian's Microsoft-signed shim, signed GRUB
//! and signed kernel, with an initramfs that installs itself onto the disk
//! only when Secure Boot is on and a TPM 2.0 answers, keeping a secret in a
//! TPM NV index and an id in a UEFI variable.
//!
//! One scenario, in the order a person meets it:
//! 1. `vm create windows --kind windows --media standin.iso --media-as usb`
//!    (an image file given to the VM as a USB stick); start; the installer
//!    checks Secure Boot and the TPM, installs, powers off; rayosd marks the
//!    VM provisioned at that first power-off and ejects the stick
//!    (`vm provisioned` afterwards says so);
//! 2. start: OVMF boots shim → GRUB → kernel from the disk with Secure Boot
//!    on; the marker, the TPM secret and the UEFI variable are read back;
//! 3. a CD is inserted while it runs (`vm media attach`), then suspend and
//!    resume: the counter continues and the TPM still holds the secret (the
//!    command line after the runtime change matches the saved devices);
//! 4. the CD is ejected while it runs; stop (ACPI) and a cold start: the
//!    counter starts again, the secret and the UEFI variable are still there;
//! 5. the disk's loader replaced by an unsigned one: OVMF refuses it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rayos_api::{BootKind, VmInfo, VmState};
use rayos_image::winstandin::{self, marker};
use rayos_testkit::daemon::{Host, tail};
use rayos_testkit::guest;

/// A boot of OVMF + shim + GRUB + Debian's kernel under TCG on a shared
/// 2-core machine.
const BOOT: Duration = Duration::from_secs(400);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The VM's name.
const VM: &str = "windows";

/// The daemon on a new data volume whose policy enables Windows VMs and
/// starts none by itself.
fn host() -> Host {
    let mut h = Host::with_binary(env!("CARGO_BIN_EXE_rayos"), "rayos-win");
    h.policy("version = 1\n[linux]\nautostart = false\n[windows]\nenabled = true\n");
    h.start_daemon();
    h
}

/// What this test reads from the stand-in's console and waits for.
trait StandinHost {
    /// The console log's bytes (offsets are byte offsets: GRUB and OVMF
    /// write bytes that are not UTF-8).
    fn log_bytes(&self, vm: &VmInfo) -> Vec<u8>;
    /// The console log, lossily decoded.
    fn log(&self, vm: &VmInfo) -> String;
    /// Where the console log ends now.
    fn log_len(&self, vm: &VmInfo) -> usize;
    /// Waits for `needle` in the console log after byte `from` (failing at
    /// once when the stand-in reports a failure); returns the log from
    /// `from` on.
    fn wait_log(&self, vm: &VmInfo, from: usize, needle: &str, timeout: Duration) -> String;
    /// Waits until the VM is in state `want`.
    fn wait_state(&self, want: VmState, timeout: Duration) -> VmInfo;
}

impl StandinHost for Host {
    fn log_bytes(&self, vm: &VmInfo) -> Vec<u8> {
        fs::read(vm.vm_dir.join("logs/console.log")).unwrap_or_default()
    }

    fn log(&self, vm: &VmInfo) -> String {
        String::from_utf8_lossy(&self.log_bytes(vm)).into_owned()
    }

    fn log_len(&self, vm: &VmInfo) -> usize {
        self.log_bytes(vm).len()
    }

    fn wait_log(&self, vm: &VmInfo, from: usize, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let bytes = self.log_bytes(vm);
            let new = String::from_utf8_lossy(bytes.get(from..).unwrap_or(&[])).into_owned();
            if new.contains(needle) {
                return new;
            }
            assert!(
                !new.contains(marker::FAIL),
                "the stand-in failed:\n{}",
                tail(&new, 20)
            );
            assert!(
                Instant::now() < deadline,
                "{needle:?} not on the console after {timeout:?}; last lines:\n{}\ndaemon: {}",
                tail(&new, 40),
                tail(&self.stderr(), 20)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn wait_state(&self, want: VmState, timeout: Duration) -> VmInfo {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.show(VM);
            if v.state == want {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "VM is {:?}, not {want:?}; console:\n{}\ndaemon: {}",
                v.state,
                tail(&self.log(&v), 30),
                tail(&self.stderr(), 20)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The value after `key` on the first line holding it.
fn field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.split(key).nth(1))
        .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// Replaces `\EFI\BOOT\BOOTX64.EFI` on the qcow2 disk's ESP (MBR
/// partition at 1 MiB) with `loader`, through a raw copy and mtools.
fn replace_loader(disk: &Path, loader: &Path, work: &Path) {
    let raw = work.join("disk.raw");
    let run = |c: &mut Command| {
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "{c:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(disk)
        .arg(&raw));
    run(Command::new("mcopy")
        .arg("-o")
        .arg("-i")
        .arg(format!("{}@@1M", raw.display()))
        .arg(loader)
        .arg("::/EFI/BOOT/BOOTX64.EFI"));
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(disk));
    fs::remove_file(&raw).unwrap();
}

#[test]
fn standin_installs_from_a_usb_stick_and_keeps_tpm_and_uefi_state_with_secure_boot() {
    let mut standin = winstandin::ensure(&workspace().join(".cache")).unwrap();
    // The CLI passes media on as canonical paths.
    standin.iso = fs::canonicalize(&standin.iso).unwrap();
    let h = host();
    let iso = standin.iso.display().to_string();

    // 1. Create (an image file as a USB stick), install.
    h.ok(&[
        "create",
        "windows",
        "--kind",
        "windows",
        "--media",
        &iso,
        "--media-as",
        "usb",
        "--disk",
        "2G",
        "--memory",
        "1024",
    ]);
    let v = h.show(VM);
    assert!(v.tpm && !v.provisioned, "{v:?}");
    assert_eq!(v.usb_media, vec![standin.iso.clone()]);
    assert!(v.media.is_empty());
    h.ok(&["start", "windows"]);
    let out = h.wait_log(&v, 0, marker::INSTALLED, BOOT);
    assert!(
        out.contains(marker::SECUREBOOT) && out.contains(marker::TPM),
        "{out}"
    );
    assert!(!out.contains(marker::FAIL), "{out}");
    let installed = out
        .lines()
        .find(|l| l.contains(marker::INSTALLED))
        .unwrap()
        .to_string();
    let secret = field(&installed, "nv=");
    let id = field(&installed, "id=");
    assert_eq!(secret.len(), 16, "{installed}");
    // The installer powers off: the first power-off of an unprovisioned
    // Windows VM with media marks it provisioned and ejects the stick.
    let v = h.wait_state(VmState::Stopped, BOOT);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut v = v;
    while !v.provisioned {
        assert!(Instant::now() < deadline, "not provisioned: {}", h.stderr());
        std::thread::sleep(Duration::from_millis(200));
        v = h.show(VM);
    }
    assert!(v.usb_media.is_empty() && v.media.is_empty(), "{v:?}");
    assert!(
        h.ok(&["provisioned", "windows"])
            .contains("already provisioned")
    );

    // 2. Boot from the disk with Secure Boot on.
    let from = h.log_len(&v);
    h.ok(&["start", "windows"]);
    let out = h.wait_log(&v, from, marker::READY, BOOT);
    assert!(out.contains("STANDIN_BOOT run"), "{out}");
    assert!(out.contains(marker::SECUREBOOT), "{out}");
    assert!(
        out.contains(&format!("{} {secret}", marker::NV_OK)),
        "{out}"
    );
    assert!(out.contains(&format!("{} {id}", marker::EFIVAR)), "{out}");
    assert!(out.contains(&format!("install={id} nv={secret}")), "{out}");
    let before = guest::wait_counter_above(
        &v.vm_dir.join("logs/console.log"),
        from as u64,
        Some(4),
        BOOT,
    )
    .unwrap_or_else(|e| panic!("{e}: {}", tail(&h.log(&v), 20)));

    // 3. A CD inserted while it runs, then suspend and resume.
    h.ok(&["media", "windows", "attach", &iso, "--as", "cdrom"]);
    assert_eq!(h.show(VM).media, vec![standin.iso.clone()]);
    let counted = guest::counters(&String::from_utf8_lossy(&h.log_bytes(&v)[from..]))
        .into_iter()
        .max()
        .unwrap_or(before);
    h.ok(&["suspend", "windows"]);
    assert_eq!(h.show(VM).state, VmState::Saved);
    let from = h.log_len(&v);
    let r: rayos_api::ActionReply = serde_json::from_str(&h.ok(&["start", "windows", "--json"]))
        .unwrap_or_else(|_| panic!("start --json"));
    assert_eq!(r.boot, Some(BootKind::Resumed), "{}", r.message);
    // The guest continues: the counter goes on, and its next TPM read
    // finds the secret (swtpm's state came back with the saved state).
    let out = h.wait_log(
        &v,
        from,
        &format!("{} {secret}", marker::NV_OK),
        Duration::from_secs(120),
    );
    let after = guest::counters(&out);
    assert!(
        after
            .first()
            .is_some_and(|&c| c > counted.saturating_sub(8)),
        "counter restarted after a resume: {after:?} (before: {counted})"
    );
    assert!(
        !out.contains("STANDIN_BOOT"),
        "no boot after a resume: {out}"
    );

    // 4. Eject the CD while it runs; stop and cold start.
    h.ok(&["media", "windows", "eject"]);
    assert!(h.show(VM).media.is_empty());
    h.ok(&["stop", "windows"]);
    h.wait_state(VmState::Stopped, Duration::from_secs(120));
    let from = h.log_len(&v);
    h.ok(&["start", "windows"]);
    let out = h.wait_log(&v, from, marker::READY, BOOT);
    assert!(
        out.contains(&format!("{} {secret}", marker::NV_OK)),
        "{out}"
    );
    assert!(out.contains(&format!("{} {id}", marker::EFIVAR)), "{out}");
    let out = h.wait_log(&v, from, "COUNTER 2", Duration::from_secs(60));
    assert_eq!(
        guest::counters(&out).first(),
        Some(&0),
        "a cold boot counts from 0"
    );
    h.ok(&["stop", "windows", "--force"]);
    h.wait_state(VmState::Stopped, Duration::from_secs(60));

    // 5. An unsigned loader on the disk is refused by the firmware.
    let unsigned = Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    assert!(
        unsigned.is_file(),
        "systemd-boot-efi is installed (scripts/install-deps.sh)"
    );
    let disk = v.vm_dir.join("disks/disk0.qcow2");
    replace_loader(&disk, unsigned, h.dir());
    let from = h.log_len(&v);
    h.ok(&["start", "windows"]);
    let out = h.wait_log(&v, from, "Access Denied", BOOT);
    assert!(!out.contains("STANDIN_BOOT"), "{out}");
    assert!(!out.contains("systemd-boot"), "{out}");
    h.ok(&["stop", "windows", "--force"]);
}
