//! `cargo xtask bench boot`: how long RayOS takes from kernel start to
//! `RAYOS_READY`, against the same kernel booting a bare busybox init; the
//! sizes of the media; RayOS's own memory once the Linux VM runs.
//!
//! RayOS: `rayos install --target` of `build/rayos.efi` (the installed-mode
//! UKI) onto a sparse disk image on the host (the cheap install, as
//! `cargo xtask e2e-update` does), then boots of that disk alone under
//! QEMU + OVMF (TCG). Baseline: the kernel extracted from the same UKI
//! (`.linux` section), booted by QEMU's direct kernel boot under the same
//! OVMF, memory and CPUs, with the installed-mode command line and a
//! busybox-static initramfs whose `/init` writes a marker to `/dev/kmsg`
//! and powers off.
//!
//! Times are the kernel's own printk timestamps on the serial console
//! (guest time from kernel start, so firmware and boot loader are outside
//! it and a busy host inflates it less than wall time); wall times from
//! QEMU start are reported too, and PID 1's time per boot step (from
//! one `RAYOS_BOOT:<step>` marker's timestamp to the next, the last step
//! to `RAYOS_READY`), medians with min-max. Memory: `vm health` typed at the `rayos>`
//! prompt once `RAYOS_LINUX_VM_READY` is out reports rayosd's `VmRSS`, and
//! `status` the sum over RayOS's own processes (PID 1, rayosd, presenter,
//! the console session).
//!
//! The boots run in turn on one disk: the first is a first boot (the
//! Linux VM starts cold), the next ones resume the VM saved at the
//! previous power-off (ACPI button), so `RAYOS_LINUX_VM_READY` differs
//! between them; medians are reported, and each boot's figures as it goes.
//!
//! Limits: the Linux VM's QEMU is not RayOS's own and is not counted;
//! `VmRSS` counts shared pages once per process. TCG only.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rayos_base::marker::Kind;
use rayos_image::qemu::{Config, Firmware, Medium, Qemu};

use crate::e2e::RUN_INIT;
use crate::installed::AnswerFile;

#[derive(clap::Args)]
pub struct Args {
    /// Boots of each kind (the median is reported).
    #[arg(long, default_value_t = 1)]
    reps: u32,
    /// Media directory (holds rayos.efi, the ISO, the USB image).
    #[arg(long)]
    media: Option<PathBuf>,
    /// Guest memory in MiB, the same for both kinds of boot.
    #[arg(long, default_value_t = 3072)]
    memory_mib: u32,
    /// Print the figures as JSON as well.
    #[arg(long)]
    json: bool,
    /// Give both machines a NIC of this QEMU model (`e1000e`, as many PCs
    /// have; default: none, as the figures before 2026-12-07 were taken),
    /// so its driver's load and probe are in RayOS's boot.
    #[arg(long)]
    nic: Option<String>,
}

/// What both kinds of boot run on.
struct Machine<'a> {
    fw: &'a Firmware,
    memory_mib: u32,
    nic: Option<&'a str>,
}

impl Machine<'_> {
    /// `cfg` set up for this machine.
    fn apply(&self, cfg: &mut Config) {
        cfg.firmware = self.fw.clone();
        cfg.memory_mib = self.memory_mib;
        cfg.cpus = CPUS;
        cfg.no_reboot = true;
        if let Some(model) = self.nic {
            cfg.extra_args
                .extend(["-nic".into(), format!("user,model={model}")]);
        }
    }
}

const BASELINE_MARKER: &str = "BENCH_BUSYBOX_READY";
const CPUS: u32 = 2;

/// One boot: kernel timestamp of the marker and wall time from QEMU start.
#[derive(Clone)]
struct Boot {
    kernel_s: f64,
    wall_s: f64,
    /// Kernel timestamp of `Run /init as init process` (kernel and
    /// initramfs unpacking done; userspace starts).
    init_s: f64,
    /// PID 1's boot steps with their durations in kernel time (each from
    /// its `RAYOS_BOOT:<step>` to the next, the last to `RAYOS_READY`);
    /// empty for the baseline.
    steps: Vec<(String, f64)>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.reps >= 1, "--reps must be at least 1");
    let root = crate::root();
    let media = args.media.clone().unwrap_or_else(|| root.join("build"));
    let uki = media.join("rayos.efi");
    let iso = media.join("rayos-installer.iso");
    let usb = media.join("rayos-installer-usb.img");
    for p in [&uki, &iso, &usb] {
        anyhow::ensure!(
            p.exists(),
            "{} is missing: run `cargo xtask media` first",
            p.display()
        );
    }
    let rayos_bin = crate::demo::target_dir(&root).join("debug/rayos");
    if !rayos_bin.exists() {
        crate::run_cmd(Command::new("cargo").args(["build", "-p", "rayos"]))?;
    }
    let work = crate::demo::target_dir(&root).join("rayos-bench-boot");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let fw = Firmware::ovmf_4m()?;
    let cmdline = installed_cmdline(&media)?;

    // Baseline artefacts: the UKI's own kernel, a busybox initramfs.
    let kernel = work.join("vmlinuz");
    crate::run_cmd(
        Command::new("objcopy")
            .args(["-O", "binary", "--only-section=.linux"])
            .arg(&uki)
            .arg(&kernel),
    )
    .context("extracting the kernel from the UKI (objcopy, Debian package binutils)")?;
    let initrd = work.join("busybox-initrd.img");
    busybox_initrd(&work.join("initrd-root"), &initrd)?;

    // RayOS installed on a disk image.
    let disk = work.join("disk.img");
    let answers = AnswerFile {
        hostname: "rayos-bench-boot",
        countdown: None,
        disk: None,
        spelled_out: false,
        test_guest: true,
    };
    let t = Instant::now();
    crate::installed::install_image(&rayos_bin, &work, &disk, &answers.text(), &uki, None, true)?;
    println!(
        "installed RayOS onto {} in {:.1} s",
        disk.display(),
        t.elapsed().as_secs_f64()
    );
    let vars = work.join("OVMF_VARS.fd");
    fs::copy(&fw.vars_template, &vars)?;
    let machine = Machine {
        fw: &fw,
        memory_mib: args.memory_mib,
        nic: args.nic.as_deref(),
    };

    let mut base = Vec::new();
    let mut rayos = Vec::new();
    let mut linux = Vec::new();
    let mut rss = None;
    let mut own = Own::default();
    for i in 0..args.reps {
        let b = baseline_boot(&work, i, &machine, &kernel, &initrd, &cmdline)?;
        println!(
            "baseline {}: marker at kernel {:.3} s, wall {:.1} s",
            i + 1,
            b.kernel_s,
            b.wall_s
        );
        base.push(b);
        let (r, l, m, o) = rayos_boot(&work, i, &machine, &disk, &vars)?;
        println!(
            "RayOS {}: RAYOS_READY at kernel {:.3} s (wall {:.1} s), Linux VM ready at kernel {:.3} s, rayosd {} KiB, RayOS processes {} KiB",
            i + 1,
            r.kernel_s,
            r.wall_s,
            l.kernel_s,
            m,
            o.total_kib
        );
        own = o;
        rayos.push(r);
        linux.push(l);
        rss = Some(m);
    }
    let med = |v: &[Boot], f: fn(&Boot) -> f64| super::spread(v.iter().map(f)).median;
    let bk = med(&base, |b| b.kernel_s);
    let bw = med(&base, |b| b.wall_s);
    let rk = med(&rayos, |b| b.kernel_s);
    let rw = med(&rayos, |b| b.wall_s);
    let lk = med(&linux, |b| b.kernel_s);
    let lw = med(&linux, |b| b.wall_s);
    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let rss = rss.unwrap_or(0);

    println!(
        "\nboot (median of {} boots each, TCG, {} MiB, {CPUS} CPUs, NIC: {})",
        args.reps,
        args.memory_mib,
        args.nic.as_deref().unwrap_or("none")
    );
    let bi = med(&base, |b| b.init_s);
    let ri = med(&rayos, |b| b.init_s);
    println!(
        "{:<44} {:>11} {:>7} {:>9} {:>7}",
        "", "kernel time", "ratio", "wall", "ratio"
    );
    let row = |name: &str, k: f64, w: f64| {
        println!(
            "{:<44} {:>9.3} s {:>6.2}x {:>7.1} s {:>6.2}x",
            name,
            k,
            k / bk,
            w,
            w / bw
        );
    };
    row("busybox init: kernel start -> marker", bk, bw);
    row("RayOS: kernel start -> RAYOS_READY", rk, rw);
    row("RayOS: kernel start -> RAYOS_LINUX_VM_READY", lk, lw);
    let span = |v: &[Boot], f: fn(&Boot) -> f64| {
        let x: Vec<f64> = v.iter().map(f).collect();
        let lo = x.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    };
    let (bk_lo, bk_hi) = span(&base, |b| b.kernel_s);
    let (rk_lo, rk_hi) = span(&rayos, |b| b.kernel_s);
    let (lk_lo, lk_hi) = span(&linux, |b| b.kernel_s);
    println!(
        "  kernel time min-max: busybox {bk_lo:.3}-{bk_hi:.3} s, RAYOS_READY {rk_lo:.3}-{rk_hi:.3} s, \
         RAYOS_LINUX_VM_READY {lk_lo:.3}-{lk_hi:.3} s"
    );
    println!(
        "  kernel time: printk timestamps (guest clock from kernel start); wall: from QEMU start,\n  \
         including OVMF and, for RayOS, systemd-boot loading the UKI from disk"
    );
    println!("\nwhere the kernel time goes");
    println!("{:<44} {:>11} {:>11}", "", "busybox", "RayOS");
    println!(
        "{:<44} {:>9.3} s {:>9.3} s",
        "kernel start -> Run /init (incl. initramfs)", bi, ri
    );
    println!(
        "{:<44} {:>9.3} s {:>9.3} s",
        "/init -> marker (userspace)",
        bk - bi,
        rk - ri
    );
    println!(
        "\nRayOS's /init -> RAYOS_READY by boot step (kernel time, median of {} boots; min-max)",
        args.reps
    );
    for (name, m, lo, hi) in step_medians(&rayos) {
        println!("  {name:<42} {m:>9.3} s   ({lo:.3}-{hi:.3})");
    }
    println!("\nsizes");
    let uki_b = size(&uki);
    for (name, p) in [
        ("UKI rayos.efi", &uki),
        ("ISO rayos-installer.iso", &iso),
        ("USB rayos-installer-usb.img", &usb),
    ] {
        let b = size(p);
        println!(
            "{:<44} {:>8.1} MiB {:>7.2}x UKI",
            name,
            mib(b),
            b as f64 / uki_b as f64
        );
    }
    println!("\nmemory after RAYOS_LINUX_VM_READY");
    println!(
        "{:<44} {:>8.1} MiB ({rss} KiB)",
        "rayosd VmRSS (last boot)",
        rss as f64 / 1024.0
    );
    println!(
        "{:<44} {:>8.1} MiB ({} KiB: {})",
        "all RayOS processes VmRSS (last boot)",
        own.total_kib as f64 / 1024.0,
        own.total_kib,
        own.each
    );
    if args.json {
        let v = serde_json::json!({
            "reps": args.reps,
            "baseline_kernel_s": bk, "baseline_wall_s": bw,
            "baseline_kernel_min_max_s": [bk_lo, bk_hi],
            "rayos_ready_kernel_min_max_s": [rk_lo, rk_hi],
            "linux_vm_ready_kernel_min_max_s": [lk_lo, lk_hi],
            "rayos_ready_kernel_s": rk, "rayos_ready_wall_s": rw,
            "linux_vm_ready_kernel_s": lk, "linux_vm_ready_wall_s": lw,
            "ratio_ready_kernel": rk / bk,
            "ratio_ready_wall": rw / bw,
            "baseline_run_init_s": bi, "rayos_run_init_s": ri,
            "uki_bytes": uki_b, "iso_bytes": size(&iso), "usb_bytes": size(&usb),
            "rayosd_rss_kib": rss,
            "rayos_processes_rss_kib": own.total_kib,
            "rayos_processes": own.each,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

/// The installed-mode command line from the manifest, so the baseline
/// kernel sees the same consoles and printk settings.
fn installed_cmdline(media: &Path) -> anyhow::Result<String> {
    let path = media.join("manifest.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    v["cmdlines"]["installed"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{} has no cmdlines.installed", path.display()))
}

/// A newc initramfs: busybox-static and an `/init` that timestamps a marker
/// through `/dev/kmsg` and powers off.
fn busybox_initrd(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let busybox = Path::new("/bin/busybox");
    anyhow::ensure!(
        busybox.exists(),
        "/bin/busybox is missing: install the Debian package busybox-static"
    );
    for d in ["bin", "dev", "proc", "sys"] {
        fs::create_dir_all(dir.join(d))?;
    }
    fs::copy(busybox, dir.join("bin/busybox"))?;
    let init = dir.join("init");
    fs::write(
        &init,
        format!(
            "#!/bin/busybox sh\n/bin/busybox mount -t devtmpfs dev /dev\necho {BASELINE_MARKER} > /dev/kmsg\n/bin/busybox poweroff -f\n"
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
            dir.display(),
            out.display()
        ))
        .status()
        .context("running cpio (Debian package cpio)")?;
    anyhow::ensure!(
        status.success(),
        "building the busybox initramfs failed: {status}"
    );
    Ok(())
}

fn baseline_boot(
    work: &Path,
    i: u32,
    machine: &Machine,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
) -> anyhow::Result<Boot> {
    let mut cfg = Config::new(&work.join(format!("baseline-{i}")))?;
    cfg.extra_args = vec![
        "-kernel".into(),
        kernel.display().to_string(),
        "-initrd".into(),
        initrd.display().to_string(),
        "-append".into(),
        cmdline.into(),
    ];
    machine.apply(&mut cfg);
    let t = Instant::now();
    let mut vm = Qemu::start(&cfg)?;
    vm.wait_for(BASELINE_MARKER, Duration::from_secs(300))?;
    let wall_s = t.elapsed().as_secs_f64();
    let _ = vm.wait_exit(Duration::from_secs(60));
    vm.kill();
    let out = vm.serial_output();
    let kernel_s = kernel_time(&out, BASELINE_MARKER)?;
    let init_s = kernel_time(&out, RUN_INIT)?;
    Ok(Boot {
        kernel_s,
        wall_s,
        init_s,
        steps: Vec::new(),
    })
}

/// Boots the installed disk; returns RAYOS_READY, RAYOS_LINUX_VM_READY,
/// rayosd's RSS in KiB and `status`'s memory line.
fn rayos_boot(
    work: &Path,
    i: u32,
    machine: &Machine,
    disk: &Path,
    vars: &Path,
) -> anyhow::Result<(Boot, Boot, u64, Own)> {
    let mut cfg = Config::new(&work.join(format!("rayos-{i}")))?.medium(Medium::Disk {
        path: disk.to_path_buf(),
        sector_size: 512,
    });
    machine.apply(&mut cfg);
    cfg.vars = Some(vars.to_path_buf());
    let t = Instant::now();
    let mut vm = Qemu::start(&cfg)?;
    let step = |vm: &mut Qemu, marker: &str, secs: u64| -> anyhow::Result<f64> {
        vm.wait_for(marker, Duration::from_secs(secs))
            .with_context(|| format!("RayOS boot {}: waiting for {marker}", i + 1))?;
        Ok(t.elapsed().as_secs_f64())
    };
    let ready_wall = step(&mut vm, Kind::Ready.prefix(), 900)?;
    let linux_wall = step(&mut vm, Kind::LinuxVmReady.prefix(), 900)?;
    vm.send_serial("\n")?;
    step(&mut vm, "rayos>", 60)?;
    vm.send_serial("vm health\n")?;
    step(&mut vm, "KiB resident", 120)?;
    vm.send_serial("status\n")?;
    step(&mut vm, OWN_MEMORY, 120)?;
    let out = vm.serial_output();
    let own = own_memory(&out)?;
    let init_s = kernel_time(&out, RUN_INIT)?;
    let ready_s = kernel_time(&out, Kind::Ready.prefix())?;
    let ready = Boot {
        kernel_s: ready_s,
        wall_s: ready_wall,
        init_s,
        steps: step_times(&out, init_s, ready_s),
    };
    let linux = Boot {
        kernel_s: kernel_time(&out, Kind::LinuxVmReady.prefix())?,
        wall_s: linux_wall,
        init_s,
        steps: Vec::new(),
    };
    let rss = resident_kib(&out)?;
    // Power off through the ACPI button so the data volume stays clean for
    // the next repetition.
    let _ = vm.qmp("system_powerdown", None);
    if vm.wait_exit(Duration::from_secs(400)).is_err() {
        vm.kill();
    }
    Ok((ready, linux, rss, own))
}

/// What `rayos status` prints about RayOS's own processes.
const OWN_MEMORY: &str = "memory: RayOS's own processes ";

/// The sum and the per-process list from `status`'s memory line.
#[derive(Debug, Default, Clone, PartialEq)]
struct Own {
    total_kib: u64,
    each: String,
}

fn own_memory(serial: &str) -> anyhow::Result<Own> {
    for line in serial.lines().rev() {
        let Some((_, rest)) = line.split_once(OWN_MEMORY) else {
            continue;
        };
        let Some((n, each)) = rest.split_once(" KiB resident") else {
            continue;
        };
        if let Ok(total_kib) = n.trim().parse() {
            let each = each.trim().trim_start_matches('(').trim_end_matches(')');
            return Ok(Own {
                total_kib,
                each: each.to_string(),
            });
        }
    }
    bail!("`status` printed no `{OWN_MEMORY}N KiB resident` line")
}

/// The printk timestamp of the first timestamped serial line holding
/// `marker`. The console's prompt redraw (`\rrayos> \x1b[K`) can share a
/// line with a kernel message, so every `[` before the marker is tried.
fn kernel_time(serial: &str, marker: &str) -> anyhow::Result<f64> {
    for line in serial.lines() {
        let Some(at) = line.find(marker) else {
            continue;
        };
        let head = &line[..at];
        let ts = head.match_indices('[').rev().find_map(|(i, _)| {
            let (ts, _) = head[i + 1..].split_once(']')?;
            ts.trim().parse::<f64>().ok()
        });
        if let Some(s) = ts {
            return Ok(s);
        }
    }
    bail!("no kernel-timestamped line with {marker} on the serial console")
}

/// PID 1's steps from the serial console: `/init` to the first step's
/// marker, each `RAYOS_BOOT:<step>` to the next marker, the last one to
/// `RAYOS_READY` (with the loop's wait for rayosd's health).
fn step_times(serial: &str, init_s: f64, ready_s: f64) -> Vec<(String, f64)> {
    let head = Kind::Boot.prefix();
    let mut marks: Vec<(String, f64)> = Vec::new();
    for line in serial.lines() {
        let Some(at) = line.find(head) else { continue };
        let name: String = line[at + head.len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if name.is_empty() || marks.iter().any(|(n, _)| *n == name) {
            continue;
        }
        if let Ok(t) = kernel_time(line, head) {
            marks.push((name, t));
        }
    }
    let mut out = Vec::new();
    let mut prev = ("exec (/init -> first step)".to_string(), init_s);
    for (name, t) in marks {
        out.push((prev.0, t - prev.1));
        prev = (name, t);
    }
    // The last step has no successor's marker: its time runs to
    // RAYOS_READY and holds the wait for rayosd's first health answer.
    out.push((format!("{} -> RAYOS_READY", prev.0), ready_s - prev.1));
    out
}

/// Per step (in boot order): median, min and max over the boots.
fn step_medians(boots: &[Boot]) -> Vec<(String, f64, f64, f64)> {
    let mut names: Vec<String> = Vec::new();
    for b in boots {
        for (n, _) in &b.steps {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    names
        .into_iter()
        .map(|n| {
            let s = super::spread(
                boots
                    .iter()
                    .filter_map(|b| b.steps.iter().find(|(m, _)| *m == n).map(|x| x.1)),
            );
            (n, s.median, s.min, s.max)
        })
        .collect()
}

/// `… N KiB resident` from `vm health`.
fn resident_kib(serial: &str) -> anyhow::Result<u64> {
    // Only `vm health`'s line: `status` prints a "KiB resident" sum too.
    for line in serial
        .lines()
        .rev()
        .filter(|l| l.contains("rayosd ") && l.contains("(pid "))
    {
        if let Some((head, _)) = line.split_once(" KiB resident")
            && let Some(n) = head.rsplit(' ').next()
            && let Ok(v) = n.trim().parse()
        {
            return Ok(v);
        }
    }
    bail!("`vm health` printed no `KiB resident` figure")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_time_reads_the_marker_line() {
        let log = "RAYOS_READY\r\n[    0.000000] Linux version\r\n[    8.586592] rayos-init: RAYOS_READY\r\n";
        assert_eq!(kernel_time(log, Kind::Ready.prefix()).unwrap(), 8.586592);
        assert!(kernel_time(log, "NOPE").is_err());
        let redraw = "\rrayos> \x1b[K[    8.130294] rayos-init: RAYOS_READY\r\n";
        assert_eq!(kernel_time(redraw, Kind::Ready.prefix()).unwrap(), 8.130294);
    }

    #[test]
    fn step_times_run_from_marker_to_marker() {
        let log = "[    3.500000] Run /init as init process\r\n\
                   [    3.600000] rayos-init: RAYOS_BOOT:kernel-fs\r\n\
                   [    3.700000] rayos-init: RAYOS_BOOT:modules\r\n\
                   [    5.200000] rayos-init: RAYOS_BOOT:presenter\r\n\
                   [    6.000000] rayos-init: RAYOS_READY\r\n";
        let s = step_times(log, 3.5, 6.0);
        let names: Vec<&str> = s.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "exec (/init -> first step)",
                "kernel-fs",
                "modules",
                "presenter -> RAYOS_READY"
            ]
        );
        let t: Vec<f64> = s.iter().map(|(_, t)| (t * 1000.0).round()).collect();
        assert_eq!(t, [100.0, 100.0, 1500.0, 800.0]);
        let b = |x: f64| Boot {
            kernel_s: 0.0,
            wall_s: 0.0,
            init_s: 0.0,
            steps: vec![("modules".into(), x)],
        };
        let m = step_medians(&[b(3.0), b(1.0), b(2.0)]);
        assert_eq!(m, vec![("modules".to_string(), 2.0, 1.0, 3.0)]);
    }

    #[test]
    fn resident_parses_vm_health() {
        let log = "rayos> vm health\r\nrayosd 0.1.0 (pid 321): ok, 1 VMs, 23456 KiB resident\r\n";
        assert_eq!(resident_kib(log).unwrap(), 23456);
        let both =
            format!("{log}memory: RayOS's own processes 9000 KiB resident (init 2000 KiB)\r\n");
        assert_eq!(resident_kib(&both).unwrap(), 23456);
    }

    #[test]
    fn own_memory_parses_status() {
        let log = "rayos> status\r\nmemory: RayOS's own processes 9000 KiB resident (init 2000 KiB, daemon 7000 KiB)\r\n";
        let o = own_memory(log).unwrap();
        assert_eq!(o.total_kib, 9000);
        assert_eq!(o.each, "init 2000 KiB, daemon 7000 KiB");
        assert!(own_memory("rayos> status\r\n").is_err());
    }
}
