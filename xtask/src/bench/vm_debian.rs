//! `cargo xtask bench vm --guest debian`: the Debian VM image (OVMF,
//! systemd-boot, Debian's kernel) through the QEMU backend, as a RayOS
//! install runs it, measured side by side in one run:
//! - cold boot (the second boot: the first one runs the first-boot setup)
//!   from `launch(Cold)` to the serial `login:` prompt;
//! - resume from `launch(Restore)` to a responsive shell: the shell logged
//!   in before the save answers a command typed on the serial console;
//! - save and restore of the guest with 1 GiB of its RAM filled with random
//!   bytes (tmpfs), against `dd` of the same bytes on the same filesystem.
//!
//! The image comes from the cache (`rayos_image::linux_vm::ensure`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rayos_image::linux_vm;
use rayos_state::registry::{BootSpec, DiskFormat, DiskSpec};
use rayos_state::{GuestConfig, VmDefinition, VmKind};
use rayos_vmm::{Launch, QemuConfig, QemuVmm, VmHandle, VmSpec, Vmm};

use super::vm::DebianArgs;

const TIMEOUT: Duration = Duration::from_secs(900);
const USER: &str = "bench";
const PASSWORD: &str = "bench-pw";

struct Guard(Option<Box<dyn VmHandle>>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut h) = self.0.take() {
            let _ = h.kill();
        }
    }
}

fn log_text(log: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned()
}

/// Waits until `needle` appears in the console log after byte `from`.
fn wait_log(log: &Path, from: usize, needle: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let t = log_text(log);
        if t.get(from..).is_some_and(|s| s.contains(needle)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{needle:?} not on the console after {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A connection to the VM's serial console socket.
struct Console {
    stream: UnixStream,
    out: Arc<Mutex<String>>,
    seen: usize,
}

impl Console {
    fn connect(sock: &Path) -> anyhow::Result<Console> {
        let stream = UnixStream::connect(sock)
            .with_context(|| format!("cannot connect to {}", sock.display()))?;
        let mut r = stream.try_clone()?;
        let out = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&out);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut o) = sink.lock() {
                    o.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Ok(Console {
            stream,
            out,
            seen: 0,
        })
    }

    fn send(&mut self, s: &str) -> anyhow::Result<()> {
        self.stream.write_all(s.as_bytes())?;
        Ok(())
    }

    fn expect(&mut self, needle: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(o) = self.out.lock()
                && let Some(i) = o[self.seen..].find(needle)
            {
                self.seen += i + needle.len();
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{needle:?} did not come on the console");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub fn run(a: &DebianArgs) -> anyhow::Result<()> {
    let root = &a.dir;
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root)?;
    eprintln!("bench vm --guest debian: the Debian VM image (built when not cached) ...");
    let img = linux_vm::ensure(
        &crate::root().join(".cache"),
        &linux_vm::BuildOptions::default(),
        &mut |s| eprintln!("    {s}"),
    )?;
    let vm_dir = root.join("vm");
    let disk = vm_dir.join("disks/root.qcow2");
    std::fs::create_dir_all(disk.parent().unwrap_or(&vm_dir))?;
    crate::run_cmd(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&img.disk)
            .arg(&disk),
    )?;
    crate::run_cmd(
        Command::new("qemu-img")
            .args(["resize", "-q"])
            .arg(&disk)
            .arg("8G"),
    )?;
    let vmm = QemuVmm::new(QemuConfig {
        accel: a.accel,
        ..QemuConfig::default()
    });
    let spec = VmSpec {
        def: VmDefinition {
            id: uuid::Uuid::new_v4(),
            name: "bench-debian".into(),
            kind: VmKind::Linux,
            memory_mib: a.memory_mib,
            cpus: 2,
            disks: vec![DiskSpec {
                path: "disks/root.qcow2".into(),
                format: DiskFormat::Qcow2,
            }],
            boot: BootSpec::Uefi { secure_boot: false },
            tpm: false,
            media: vec![],
            usb_media: vec![],
            provisioned: true,
            guest: Some(GuestConfig {
                user: USER.into(),
                password_hash: Some(rayos_state::guest::hash_password(PASSWORD)?),
                ssh_authorized_key: None,
                hostname: "bench".into(),
                timezone: "UTC".into(),
                locale: "C.UTF-8".into(),
                keyboard: "us".into(),
            }),
        },
        vm_dir: vm_dir.clone(),
        run_dir: root.join("run"),
        network: false,
        cpus: 2,
        memory_mib: a.memory_mib,
        agent_bridge: false,
    };
    let log = rayos_vmm::qemu::console::console_log(&vm_dir);
    let sock = spec.run_dir.join("console.sock");
    eprintln!(
        "bench vm --guest debian: accelerator {}",
        vmm.accel().name()
    );

    // First boot (first-boot setup, root grown): timed, but not the cold
    // boot compared below.
    let t = Instant::now();
    let mut h = Guard(Some(vmm.launch(&spec, &Launch::Cold)?));
    wait_log(&log, 0, "bench login:")?;
    let first = t.elapsed();
    eprintln!(
        "bench vm --guest debian: first boot {:.1} s",
        first.as_secs_f64()
    );
    if let Some(x) = h.0.as_mut() {
        if !x.guest_shutdown()? {
            x.powerdown()?;
        }
        if !x.wait_exit(Duration::from_secs(300))? {
            x.kill()?;
        }
    }
    h.0 = None;

    // Cold boot to the login prompt.
    let from = log_text(&log).len();
    let t = Instant::now();
    h.0 = Some(vmm.launch(&spec, &Launch::Cold)?);
    wait_log(&log, from, "bench login:")?;
    let cold = t.elapsed();

    // Log in and fill 1 GiB of RAM with random bytes.
    let mut con = Console::connect(&sock)?;
    con.send("\n")?;
    con.expect("login:")?;
    con.send(&format!("{USER}\n"))?;
    con.expect("Password:")?;
    con.send(&format!("{PASSWORD}\n"))?;
    con.expect("$ ")?;
    let fill = a.memory_mib.min(2048) / 2;
    con.send(&format!(
        "echo '{PASSWORD}' | sudo -S -p '' sh -c 'mount -o remount,size=90% /dev/shm; head -c {fill}M /dev/urandom > /dev/shm/fill' && echo FIL''LED\n"
    ))?;
    con.expect("FILLED")?;
    drop(con);

    // Save.
    let state = vm_dir.join("state/vm.state.zst");
    std::fs::create_dir_all(state.parent().unwrap_or(&vm_dir))?;
    let report = h.0.as_mut().context("no VM")?.save(&state)?;
    h.0 = None;

    // Resume to a responsive shell.
    let t = Instant::now();
    h.0 = Some(vmm.launch(
        &spec,
        &Launch::Restore {
            state_file: state.clone(),
        },
    )?);
    let restore = t.elapsed();
    let mut con = Console::connect(&sock)?;
    con.send("echo RESUM''ED_$((40 + 2))\n")?;
    con.expect("RESUMED_42")?;
    let resume = t.elapsed();
    drop(con);
    if let Some(mut x) = h.0.take() {
        x.kill()?;
    }

    let dir = state.parent().unwrap_or(root);
    let (dd_write, dd_read) = super::vm::dd_baseline(dir, report.bytes)?;
    let (dd_write_raw, _) = super::vm::dd_baseline(dir, report.transferred)?;
    let s = |d: Duration| d.as_secs_f64();
    println!(
        "bench vm --guest debian ({} MiB guest, {fill} MiB of it random, {}, kernel {})",
        a.memory_mib,
        vmm.accel().name(),
        img.manifest.kernel
    );
    println!(
        "  first boot to login prompt      {:>8.2} s (first-boot setup, root grown)",
        s(first)
    );
    println!("  cold boot to login prompt       {:>8.2} s", s(cold));
    println!(
        "  resume to a responsive shell    {:>8.2} s   {:.1}x faster than the cold boot",
        s(resume),
        s(cold) / s(resume)
    );
    println!(
        "  state file {:.1} MB, guest RAM transferred {:.1} MB",
        report.bytes as f64 / 1e6,
        report.transferred as f64 / 1e6
    );
    println!(
        "  save                            {:>8.2} s   ratio save/dd(same bytes, fsync) {:.2}, save/dd(RAM bytes) {:.2}",
        s(report.duration),
        s(report.duration) / s(dd_write),
        s(report.duration) / s(dd_write_raw)
    );
    println!(
        "  restore (launch -> running)     {:>8.2} s   ratio restore/dd(read same bytes) {:.2}",
        s(restore),
        s(restore) / s(dd_read)
    );
    println!(
        "  dd write state bytes {:.2} s, dd write RAM bytes {:.2} s, dd read state bytes {:.2} s",
        s(dd_write),
        s(dd_write_raw),
        s(dd_read)
    );
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "guest": "debian", "memory_mib": a.memory_mib, "random_fill_mib": fill,
                "accel": vmm.accel().name(), "first_boot_s": s(first), "cold_boot_s": s(cold),
                "resume_s": s(resume), "cold_over_resume": s(cold) / s(resume),
                "state_bytes": report.bytes, "transferred_bytes": report.transferred,
                "save_s": s(report.duration), "restore_s": s(restore),
                "dd_write_s": s(dd_write), "dd_write_raw_s": s(dd_write_raw), "dd_read_s": s(dd_read),
            })
        );
    }
    let _ = std::fs::remove_dir_all(root);
    Ok(())
}
