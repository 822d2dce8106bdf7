//! Shared set-up for the QEMU backend tests: a temporary data and run
//! directory per VM, the tiny test guest, TCG, and guards that kill every
//! QEMU and swtpm a test started, whatever happens to the test.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rayos_state::registry::{BootSpec, DiskFormat, DiskSpec};
use rayos_state::{VmDefinition, VmKind};
use rayos_testkit::guest;
use rayos_vmm::qemu::process;
use rayos_vmm::{Accel, QemuConfig, QemuVmm, VmHandle, VmSpec};

pub const BOOT: Duration = Duration::from_secs(90);

pub fn vmm() -> QemuVmm {
    QemuVmm::new(QemuConfig {
        accel: Some(Accel::Tcg),
        ..QemuConfig::default()
    })
}

/// One VM's directories, removed (after killing its processes) on drop.
pub struct TestVm {
    pub dir: tempfile::TempDir,
    pub spec: VmSpec,
}

impl TestVm {
    pub fn console(&self) -> PathBuf {
        rayos_vmm::qemu::console::console_log(&self.spec.vm_dir)
    }

    pub fn disk(&self) -> PathBuf {
        self.spec.vm_dir.join("disks/root.qcow2")
    }

    pub fn state_file(&self) -> PathBuf {
        self.spec.vm_dir.join("state/vm.state.zst")
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        kill_leftovers(&self.spec);
    }
}

/// Kills the QEMU and swtpm recorded in the run directory, if they belong
/// to this VM.
pub fn kill_leftovers(spec: &VmSpec) {
    let id = spec.def.id.to_string();
    if let Some(pid) = process::read_pid(&spec.run_dir.join("qemu.pid"))
        && process::alive_with_arg(pid, &id)
    {
        let _ = process::signal(pid, libc_sigkill());
        process::wait_gone(pid, Duration::from_secs(5));
    }
    if let Some(pid) = process::read_pid(&spec.run_dir.join("swtpm.pid"))
        && process::alive_with_arg(pid, &spec.vm_dir.display().to_string())
    {
        process::terminate(pid, Duration::from_secs(2));
    }
}

fn libc_sigkill() -> i32 {
    9
}

/// Kills a handle's QEMU when dropped (a test that fails half-way must not
/// leave a guest running).
pub struct Guard(pub Option<Box<dyn VmHandle>>);

impl Guard {
    pub fn h(&mut self) -> &mut Box<dyn VmHandle> {
        self.0.as_mut().expect("handle taken")
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut h) = self.0.take() {
            let _ = h.kill();
        }
    }
}

fn qemu_img_create(path: &Path, size: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size)
        .status()
        .expect("qemu-img is needed: install qemu-utils (scripts/install-deps.sh)");
    assert!(st.success());
}

fn base(kind: VmKind, name: &str, boot: BootSpec, tpm: bool) -> TestVm {
    let dir = tempfile::Builder::new()
        .prefix("rayos-vmm-test-")
        .tempdir()
        .unwrap();
    let id = uuid::Uuid::new_v4();
    let spec = VmSpec {
        def: VmDefinition {
            id,
            name: name.into(),
            kind,
            memory_mib: 256,
            cpus: 1,
            disks: vec![DiskSpec {
                path: "disks/root.qcow2".into(),
                format: DiskFormat::Qcow2,
            }],
            boot,
            tpm,
            media: vec![],
            usb_media: vec![],
            provisioned: true,
            guest: None,
        },
        vm_dir: dir.path().join("vm").join(id.to_string()),
        // Short: unix socket paths are limited to 108 bytes.
        run_dir: dir.path().join("run"),
        network: false,
        cpus: 1,
        memory_mib: 256,
        agent_bridge: false,
    };
    TestVm { dir, spec }
}

/// A Linux-profile VM booting the test guest directly, with an (unused)
/// qcow2 disk whose bytes tests can check.
pub fn linux_vm(name: &str) -> TestVm {
    let g = guest::linux_guest().expect("building the test guest");
    let vm = base(
        VmKind::Linux,
        name,
        BootSpec::DirectKernel {
            kernel: g.kernel,
            initrd: Some(g.initrd),
            cmdline: g.cmdline,
        },
        false,
    );
    qemu_img_create(&vm.disk(), "64M");
    vm
}

/// A Windows-profile VM (OVMF, per-VM VARS, swtpm, Hyper-V flags) whose
/// disk is the test guest as a UKI on a FAT image.
pub fn windows_vm(name: &str) -> TestVm {
    let template = guest::uefi_disk().expect("building the UEFI test guest");
    let mut vm = base(
        VmKind::Windows,
        name,
        BootSpec::Uefi { secure_boot: false },
        true,
    );
    vm.spec.def.disks = vec![DiskSpec {
        path: "disks/esp.img".into(),
        format: DiskFormat::Raw,
    }];
    let disk = vm.spec.vm_dir.join("disks/esp.img");
    std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
    std::fs::copy(template, &disk).unwrap();
    vm
}

pub fn sha256(path: &Path) -> String {
    rayos_base::hash::sha256_file(path).unwrap().hex
}
