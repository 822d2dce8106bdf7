//! `rayos init` as PID 1 of a real kernel under QEMU (TCG, direct kernel
//! boot of Debian's /boot/vmlinuz-*), with an initramfs holding this
//! `rayos` binary as `/init`, built with rayos-image's initramfs builder.
//!
//! - `no_data_disk_degrades_and_console_powers_off`: no disk at all: the
//!   boot steps run, the missing data partition is a shown fault (not a
//!   hang), the `rayos>` prompt on the serial console answers `status`, and
//!   `shutdown` powers the machine off (QEMU exits by itself).
//! - `data_disk_mounted_logs_kept_power_button_powers_off`: a virtio disk
//!   with a GPT `rayos-data` partition (ext4, seeded machine.toml and
//!   policy): coldplug loads virtio/ext4 from the initramfs' modules, e2fsck
//!   checks the volume, it is mounted, the hostname is applied, and the ACPI
//!   power button (QMP `system_powerdown`) shuts down cleanly: afterwards
//!   the filesystem is clean and holds init's and the kernel's logs and a
//!   boot record.
//!
//! - `broken_policy_and_failing_fsck_still_boot_and_keep_vm_files`: a
//!   policy that does not parse, then a volume e2fsck cannot repair in
//!   preen mode: both boots reach the prompt with the fault shown and the
//!   way to recovery named; a VM disk file on the volume keeps every byte.
//!
//! Every wait is bounded; QEMU is killed by a guard on any failure.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayos_base::marker::{Kind, Marker, Power};
use rayos_image::{Compression, Initramfs};

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn kernel() -> (PathBuf, String) {
    let mut ks: Vec<PathBuf> = fs::read_dir("/boot")
        .expect("no /boot: install linux-image-amd64 (scripts/install-deps.sh)")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    ks.sort();
    let k = ks
        .pop()
        .expect("no /boot/vmlinuz-*: install linux-image-amd64 (scripts/install-deps.sh)");
    let release = k
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    assert!(
        Path::new("/lib/modules")
            .join(&release)
            .join("modules.dep")
            .exists(),
        "no modules for kernel {release} in /lib/modules"
    );
    (k, release)
}

fn need(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{tool} is missing: install the packages in scripts/install-deps.sh"
    );
}

/// The initramfs: stripped `rayos` as /usr/bin/rayos and /init, the given
/// modules (with dependencies, index rebuilt by depmod) and e2fsck.
fn initramfs(dir: &Path, release: &str, modules: &[&str]) -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_rayos"));
    let stripped = dir.join("rayos");
    let st = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(&exe)
        .status()
        .expect("strip is missing (binutils)");
    assert!(st.success());
    let mut ird = Initramfs::usr_merged();
    ird.elf("usr/bin/rayos", &stripped).unwrap();
    ird.symlink("init", "usr/bin/rayos").unwrap();
    for d in ["etc", "root", "proc", "sys", "dev", "run", "tmp", "var"] {
        ird.dir(d, 0o755).unwrap();
    }
    let e2fsck = ["/usr/sbin/e2fsck", "/sbin/e2fsck"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("e2fsck missing: install e2fsprogs");
    ird.elf("usr/sbin/e2fsck", &e2fsck).unwrap();
    if !modules.is_empty() {
        let idx = rayos_image::modules::ModuleIndex::open(Path::new("/"), release).unwrap();
        let r = idx.resolve(modules).unwrap();
        let staged = idx.stage(&r.files, &dir.join("modroot")).unwrap();
        ird.copy_tree(&format!("usr/lib/modules/{release}"), &staged)
            .unwrap();
    }
    let out = dir.join("initrd.img");
    ird.write(&out, Compression::Gzip).unwrap();
    out
}

/// A running QEMU; killed on drop.
struct Vm {
    child: Child,
    stdin: Option<ChildStdin>,
    serial: Arc<Mutex<String>>,
    qmp: Option<PathBuf>,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    fn start(
        kernel: &Path,
        initrd: &Path,
        append: &str,
        extra: &[String],
        qmp: Option<PathBuf>,
    ) -> Vm {
        need("qemu-system-x86_64");
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel", "tcg", "-machine", "q35", "-m", "1024", "-smp", "1",
        ])
        .args([
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(append)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        if let Some(q) = &qmp {
            cmd.arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", q.display()));
        }
        let mut child = cmd.spawn().expect("cannot start qemu-system-x86_64");
        let stdout = child.stdout.take().unwrap();
        let serial = Arc::new(Mutex::new(String::new()));
        let s2 = serial.clone();
        std::thread::spawn(move || {
            // Raw reads, not lines: the prompt has no newline after it.
            let mut r = stdout;
            let mut buf = [0u8; 4096];
            loop {
                match std::io::Read::read(&mut r, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]).to_string();
                        eprint!("{text}");
                        s2.lock().unwrap().push_str(&text);
                    }
                }
            }
        });
        let stdin = child.stdin.take();
        Vm {
            child,
            stdin,
            serial,
            qmp,
        }
    }

    fn output(&self) -> String {
        self.serial.lock().unwrap().clone()
    }

    /// Waits until `needle` appears after byte `from`; returns the offset
    /// just past it.
    fn wait_for(&mut self, needle: &str, from: usize, timeout: Duration) -> usize {
        let end = Instant::now() + timeout;
        loop {
            let out = self.output();
            if let Some(p) = out.get(from..).and_then(|s| s.find(needle)) {
                return from + p + needle.len();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("QEMU exited ({st}) before {needle:?} appeared; serial output:\n{out}");
            }
            assert!(
                Instant::now() < end,
                "no {needle:?} within {timeout:?}; serial output:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn type_line(&mut self, line: &str) {
        let s = self.stdin.as_mut().unwrap();
        s.write_all(format!("{line}\r").as_bytes()).unwrap();
        s.flush().unwrap();
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < end,
                "QEMU did not exit within {timeout:?}; serial output:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn qmp(&self, command: &str) {
        let path = self.qmp.as_ref().unwrap();
        let mut s = UnixStream::connect(path).expect("QMP socket");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap(); // greeting
        s.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
            .unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        s.write_all(format!("{{\"execute\":\"{command}\"}}\n").as_bytes())
            .unwrap();
        // Events (POWERDOWN) may arrive before the reply.
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line.is_empty() || !line.contains("\"event\"") {
                break;
            }
        }
        assert!(line.contains("return"), "QMP {command}: {line}");
    }
}

const APPEND: &str = "console=ttyS0 rayos.console=ttyS0 panic=-1 loglevel=4";

#[test]
fn no_data_disk_degrades_and_console_powers_off() {
    let (k, release) = kernel();
    let dir = tempfile::tempdir().unwrap();
    let initrd = initramfs(dir.path(), &release, &[]);
    let mut vm = Vm::start(
        &k,
        &initrd,
        &format!("{APPEND} rayos.mode=installed"),
        &[],
        None,
    );
    let mut at = 0;
    for step in [
        "kernel-fs",
        "cmdline",
        "modules",
        "efivarfs",
        "find-data",
        "check-data",
        "mount-data",
        "rayosd",
        "consoles",
    ] {
        at = vm.wait_for(&Marker::Boot(step.into()).to_string(), at, BOOT_TIMEOUT);
    }
    let at = vm.wait_for(Kind::Degraded.prefix(), at, BOOT_TIMEOUT);
    let at = vm.wait_for("rayos> ", at, BOOT_TIMEOUT);
    vm.type_line("status");
    let at = vm.wait_for("boot steps:", at, BOOT_TIMEOUT);
    let out = vm.output();
    assert!(
        out[at..].contains("no RayOS data partition") || out.contains("! no RayOS data partition")
    );
    let at = vm.wait_for("rayos> ", at, BOOT_TIMEOUT);
    // Not a shell: anything else is refused.
    vm.type_line("sh");
    let at = vm.wait_for("unknown command \"sh\"", at, BOOT_TIMEOUT);
    vm.type_line("shutdown");
    let at = vm.wait_for(
        &Marker::Shutdown(Power::PowerOff).to_string(),
        at,
        BOOT_TIMEOUT,
    );
    vm.wait_for(&Marker::PowerOff.to_string(), at, BOOT_TIMEOUT);
    let st = vm.wait_exit(Duration::from_secs(60));
    assert!(st.success(), "QEMU exit status {st} (a poweroff exits 0)");
    assert!(!vm.output().contains("Kernel panic"), "{}", vm.output());
}

/// A raw disk: 1 MiB, GPT with one `rayos-data` partition holding `fs`.
fn data_disk(dir: &Path) -> (PathBuf, u64, u64) {
    data_disk_with(dir, &rayos_state::Policy::closed().to_toml())
}

/// [`data_disk`] with the given policy text and a VM disk file
/// (`VM_FILE`, [`vm_bytes`]) to prove the boot leaves VM files alone.
fn data_disk_with(dir: &Path, policy: &str) -> (PathBuf, u64, u64) {
    need("mkfs.ext4");
    need("debugfs");
    let seed = dir.join("seed");
    fs::create_dir_all(seed.join("policy")).unwrap();
    let m = rayos_state::MachineConfig::new("rayos-test", "UTC", "C", "us");
    fs::write(seed.join("machine.toml"), m.to_toml()).unwrap();
    fs::write(seed.join("policy/rayos-policy.toml"), policy).unwrap();
    let vm_file = seed.join(VM_FILE.trim_start_matches('/'));
    fs::create_dir_all(vm_file.parent().unwrap()).unwrap();
    fs::write(&vm_file, vm_bytes()).unwrap();
    fs::write(seed.join("scratch"), "a file the fsck test damages\n").unwrap();
    let fs_img = dir.join("data.ext4");
    let fs_size: u64 = 64 << 20;
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "rayos-data", "-d"])
        .arg(&seed)
        .arg(&fs_img)
        .arg(format!("{}k", fs_size >> 10))
        .status()
        .unwrap();
    assert!(st.success());
    let disk = dir.join("disk.img");
    let start: u64 = 1 << 20;
    let total = start + fs_size + (1 << 20);
    let mut g = rayos_disk::Gpt::new(total, 512).unwrap();
    g.add(rayos_disk::Partition::new(
        1,
        rayos_disk::types::RAYOS_DATA,
        start / 512,
        (start + fs_size) / 512 - 1,
        "rayos-data",
    ))
    .unwrap();
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&disk)
        .unwrap();
    f.set_len(total).unwrap();
    g.write(&mut f).unwrap();
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(start)).unwrap();
    std::io::copy(&mut fs::File::open(&fs_img).unwrap(), &mut f).unwrap();
    (disk, start, fs_size)
}

/// A VM's disk on the data volume (not in any registry: init never opens
/// VM files, so its bytes must survive every boot unchanged).
const VM_FILE: &str = "/vm/00000000-0000-4000-8000-000000000001/disks/disk0.qcow2";

fn vm_bytes() -> Vec<u8> {
    (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

fn debugfs_dump(img: &Path, path: &str, out: &Path) -> Vec<u8> {
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(format!("dump {path} {}", out.display()))
        .arg(img)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    fs::read(out).unwrap_or_default()
}

/// Boots the data disk and powers off at the prompt; returns the serial
/// output of the `status` typed there.
/// QEMU arguments attaching `disk` (raw) as a virtio block device.
fn virtio_disk(disk: &Path) -> Vec<String> {
    vec![
        "-drive".to_string(),
        format!("file={},format=raw,if=none,id=d0", disk.display()),
        "-device".to_string(),
        "virtio-blk-pci,drive=d0".to_string(),
    ]
}

fn boot_degraded(k: &Path, initrd: &Path, disk: &Path, want_fault: &str) -> String {
    let drive = virtio_disk(disk);
    let mut vm = Vm::start(
        k,
        initrd,
        &format!("{APPEND} rayos.mode=installed"),
        &drive,
        None,
    );
    let at = vm.wait_for(Kind::Degraded.prefix(), 0, BOOT_TIMEOUT);
    let at = vm.wait_for("rayos> ", at, BOOT_TIMEOUT);
    vm.type_line("status");
    let at = vm.wait_for("boot steps:", at, BOOT_TIMEOUT);
    let at = vm.wait_for("rayos> ", at, BOOT_TIMEOUT);
    let status = vm.output();
    assert!(
        status.contains(want_fault),
        "no fault {want_fault:?}:\n{status}"
    );
    vm.type_line("shutdown");
    vm.wait_for(&Marker::PowerOff.to_string(), at, BOOT_TIMEOUT);
    let st = vm.wait_exit(Duration::from_secs(60));
    assert!(st.success(), "QEMU exit status {st}");
    assert!(!status.contains("Kernel panic"), "{status}");
    status
}

/// A policy that does not parse, then a data volume that fails its check:
/// each time RayOS still boots to its prompt, shows the reason and points
/// to recovery, and the VM files on the volume keep every byte.
#[test]
fn broken_policy_and_failing_fsck_still_boot_and_keep_vm_files() {
    let (k, release) = kernel();
    let dir = tempfile::tempdir().unwrap();
    let initrd = initramfs(
        dir.path(),
        &release,
        &["virtio_pci", "virtio_blk", "ext4", "crc32c_generic"],
    );
    let broken_policy = "version = 1\n[linux\nautostart = yes\n";
    let (disk, start, len) = data_disk_with(dir.path(), broken_policy);

    // 1. The policy does not parse: fails closed, boot goes on.
    let status = boot_degraded(&k, &initrd, &disk, "The policy fails closed");
    assert!(status.contains("recovery mode"), "{status}");
    let img = dir.path().join("after1.ext4");
    extract(&disk, start, len, &img);
    assert_unmounted_clean(&img);
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "the volume is not clean after the degraded boot: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    assert_eq!(
        debugfs_dump(&img, VM_FILE, &dir.path().join("vm1")),
        vm_bytes()
    );
    assert_eq!(
        debugfs_cat(&img, "/policy/rayos-policy.toml"),
        broken_policy,
        "the person's policy is kept for them to fix"
    );

    // 2. Damage the volume so that e2fsck -p must give up (an inode of an
    // impossible type, on a volume marked as having errors).
    for req in ["sif /scratch mode 0170000", "ssv state 2"] {
        let o = Command::new("debugfs")
            .args(["-w", "-R", req])
            .arg(format!("{}?offset={start}", disk.display()))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "debugfs {req}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let img = dir.path().join("damaged.ext4");
    extract(&disk, start, len, &img);
    let fsck = Command::new("e2fsck").arg("-p").arg(&img).output().unwrap();
    assert_eq!(
        fsck.status.code().map(|c| c & 4),
        Some(4),
        "the damage must be beyond preen mode: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let status = boot_degraded(&k, &initrd, &disk, "failed its check");
    assert!(status.contains("Boot the recovery entry"), "{status}");
    let img = dir.path().join("after2.ext4");
    extract(&disk, start, len, &img);
    assert_eq!(
        debugfs_dump(&img, VM_FILE, &dir.path().join("vm2")),
        vm_bytes()
    );
}

/// The volume was really unmounted: state clean and no journal left to
/// replay (`e2fsck -n` alone does not tell; it skips the journal).
fn assert_unmounted_clean(img: &Path) {
    let o = Command::new("dumpe2fs")
        .arg("-h")
        .arg(img)
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&o.stdout);
    let features = head
        .lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .unwrap_or("");
    assert!(
        !features.contains("needs_recovery"),
        "the data volume was not unmounted (journal needs recovery): {features}"
    );
    assert!(
        head.lines()
            .any(|l| l.starts_with("Filesystem state:") && l.trim_end().ends_with("clean")),
        "{head}"
    );
}

fn extract(disk: &Path, start: u64, len: u64, out: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(disk).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut o = fs::File::create(out).unwrap();
    std::io::copy(&mut f.take(len), &mut o).unwrap();
}

fn debugfs_cat(img: &Path, path: &str) -> String {
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(img)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn data_disk_mounted_logs_kept_power_button_powers_off() {
    let (k, release) = kernel();
    let dir = tempfile::tempdir().unwrap();
    let initrd = initramfs(
        dir.path(),
        &release,
        &[
            "virtio_pci",
            "virtio_blk",
            "ext4",
            "crc32c_generic",
            "button",
            "evdev",
        ],
    );
    let (disk, start, len) = data_disk(dir.path());
    let qmp = dir.path().join("qmp.sock");
    let drive = virtio_disk(&disk);
    let mut vm = Vm::start(
        &k,
        &initrd,
        &format!("{APPEND} rayos.mode=installed"),
        &drive,
        Some(qmp),
    );
    let at = vm.wait_for(
        &Marker::Boot("find-data".into()).to_string(),
        0,
        BOOT_TIMEOUT,
    );
    let at = vm.wait_for("data volume /dev/vda1 on /dev/vda", at, BOOT_TIMEOUT);
    let at = vm.wait_for(
        &Marker::Boot("mount-data".into()).to_string(),
        at,
        BOOT_TIMEOUT,
    );
    let at = vm.wait_for("/dev/vda1 on /var/rayos", at, BOOT_TIMEOUT);
    let at = vm.wait_for("hostname rayos-test, timezone UTC", at, BOOT_TIMEOUT);
    let at = vm.wait_for(
        &Marker::Boot("consoles".into()).to_string(),
        at,
        BOOT_TIMEOUT,
    );
    let at = vm.wait_for("on rayos-test", at, BOOT_TIMEOUT); // the console banner
    let at = vm.wait_for("rayos> ", at, BOOT_TIMEOUT);
    // The prompt comes up while rayosd is still starting, so RAYOS_READY
    // may print before, inside or after the `logs` listing: look for it
    // from here, not from the end of the listing.
    let prompt = at;
    vm.type_line("logs");
    let at = vm.wait_for("init.log", at, BOOT_TIMEOUT);
    let listed = vm.wait_for("rayos> ", at, BOOT_TIMEOUT);
    // rayosd (the real `rayos daemon`) answers GET /v1/health.
    let ready = vm.wait_for(&Marker::Ready.to_string(), prompt, BOOT_TIMEOUT);
    let at = listed.max(ready);
    // The ACPI power button, as a person (or `virsh shutdown`) presses it.
    vm.qmp("system_powerdown");
    let at = vm.wait_for(
        &Marker::Shutdown(Power::PowerOff).to_string(),
        at,
        BOOT_TIMEOUT,
    );
    vm.wait_for(&Marker::PowerOff.to_string(), at, BOOT_TIMEOUT);
    let st = vm.wait_exit(Duration::from_secs(60));
    assert!(st.success(), "QEMU exit status {st}");
    drop(vm);

    let img = dir.path().join("after.ext4");
    extract(&disk, start, len, &img);
    assert_unmounted_clean(&img);
    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "the data volume is not clean after shutdown: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let rayosd_log = debugfs_cat(&img, "/logs/rayosd.log");
    eprintln!("rayosd.log:\n{rayosd_log}");
    let init_log = debugfs_cat(&img, "/logs/init.log");
    assert!(
        init_log.contains(&Marker::Boot("mount-data".into()).to_string()),
        "init.log: {init_log}"
    );
    assert!(
        init_log.contains("power button: shutting down"),
        "init.log: {init_log}"
    );
    assert!(init_log.contains("rayosd stopped"), "init.log: {init_log}");
    assert!(
        rayosd_log.contains(Kind::DaemonStopped.prefix()),
        "rayosd.log: {rayosd_log}"
    );
    assert!(
        rayosd_log.contains("=== rayosd started"),
        "rayosd.log: {rayosd_log}"
    );
    let kernel_log = debugfs_cat(&img, "/logs/kernel.log");
    assert!(
        kernel_log.contains("Linux version"),
        "kernel.log: {kernel_log}"
    );
    let ls = Command::new("debugfs")
        .args(["-R", "ls /boot"])
        .arg(&img)
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.contains(".json"), "no boot record: {ls}");
}
