//! `cargo xtask bench vm`: resume-from-saved-state against cold boot of the
//! same guest, and save/restore throughput against `dd` of the same number
//! of bytes on the same file system, in one run, reported as ratios.
//!
//! The guest is the test guest of `rayos-testkit` (Debian kernel + busybox
//! initramfs, 256 MiB by default). Times:
//! - cold boot: `launch(Cold)` until the guest prints its ready marker;
//! - resume: `launch(Restore)` until the guest prints its next counter
//!   line (it is past its ready marker already);
//! - save: `save()` (stop, migrate into the state file, fsync, rename,
//!   quit);
//! - restore: `launch(Restore)` until it returns (QEMU started, state
//!   loaded, guest running); then five more, each followed by bare QEMU
//!   loading the same file, and the minimums compared.
//!
//! Baselines: `dd` writing (with `conv=fsync`) and reading as many bytes as
//! the state file holds, and writing as many as QEMU transferred (the
//! guest-RAM bytes), in the same directory; bare QEMU with `-incoming` of
//! the same state file (the VM's command line, no RayOS around it). The
//! reads come from the page cache, as the restore right after a save does.
//!
//! Last, the daemon's own memory: `rayos daemon` on a scratch data volume
//! and socket, its `VmRSS` before and after `rayos vm create` of a Linux and
//! a Windows VM (defined, not started).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rayos_state::registry::{BootSpec, DiskFormat, DiskSpec};
use rayos_state::{VmDefinition, VmKind};
use rayos_testkit::guest;
use rayos_vmm::{Accel, Launch, QemuConfig, QemuVmm, SaveFormat, VmHandle, VmSpec, Vmm};

#[derive(clap::Args)]
pub struct Args {
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory_mib: u64,
    /// Directory for the VM, its state file and the dd files (default:
    /// target/rayos-bench-vm); the file system measured.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Accelerator: tcg or kvm (default: RAYOS_ACCEL, else probe).
    #[arg(long)]
    accel: Option<String>,
    /// Print the figures as JSON as well.
    #[arg(long)]
    json: bool,
    /// The guest: `test` (the busybox test guest) or `debian` (the Debian
    /// VM image under OVMF: cold boot to the login prompt vs resume to a
    /// responsive shell; save/restore with 1 GiB of the guest's RAM filled
    /// with random bytes; default memory 2048 MiB).
    #[arg(long, default_value = "test")]
    guest: String,
    /// How the save writes the state: `raw` (the default of rayos-vmm) or
    /// `zstd` (test guest only).
    #[arg(long, default_value = "raw")]
    save_format: String,
    /// Saves to measure (test guest): the first from the cold-booted
    /// guest, each further one after a restore of the last; reported as
    /// median and min–max, each against `dd` measured right after it.
    #[arg(long, default_value_t = 1)]
    reps: usize,
}

const TIMEOUT: Duration = Duration::from_secs(180);
/// Restore and bare-QEMU restore pairs.
const PAIRS: usize = 5;

/// Kills the VM if the benchmark fails half-way.
struct Guard(Option<Box<dyn VmHandle>>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut h) = self.0.take() {
            let _ = h.kill();
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)
}

/// Runs `dd` and returns its wall time.
fn dd(args: &[String]) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let out = Command::new("dd")
        .args(args)
        .output()
        .context("cannot run dd (coreutils)")?;
    let d = t.elapsed();
    if !out.status.success() {
        bail!(
            "dd {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(d)
}

pub(crate) fn dd_baseline(dir: &Path, bytes: u64) -> anyhow::Result<(Duration, Duration)> {
    let file = dir.join("dd.bin");
    let bs: u64 = 1 << 20;
    let count = bytes.div_ceil(bs).max(1);
    // Random-ish data would cost CPU dd does not spend on zeros either way;
    // zeros are what dd writes fastest, so the ratio is conservative.
    let write = dd(&[
        "if=/dev/zero".into(),
        format!("of={}", file.display()),
        format!("bs={bs}"),
        format!("count={count}"),
        "conv=fsync".into(),
        "status=none".into(),
    ])?;
    let read = dd(&[
        format!("if={}", file.display()),
        "of=/dev/null".into(),
        format!("bs={bs}"),
        "status=none".into(),
    ])?;
    let _ = std::fs::remove_file(&file);
    Ok((write, read))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.guest.as_str() {
        "test" => {}
        "debian" => return super::vm_debian::run(&args_debian(&args)),
        other => bail!("unknown guest {other:?}: use test or debian"),
    }
    let root = args
        .dir
        .clone()
        .unwrap_or_else(|| crate::root().join("target/rayos-bench-vm"));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let accel = match args.accel.as_deref() {
        Some("tcg") => Some(Accel::Tcg),
        Some("kvm") => Some(Accel::Kvm),
        Some(other) => bail!("unknown accelerator {other:?}: use tcg or kvm"),
        None => None,
    };
    let save_format = match args.save_format.as_str() {
        "raw" => SaveFormat::Raw,
        "zstd" => SaveFormat::Zstd,
        other => bail!("unknown save format {other:?}: use raw or zstd"),
    };
    let vmm = QemuVmm::new(QemuConfig {
        accel,
        save_format,
        ..QemuConfig::default()
    });
    eprintln!("bench vm: building the test guest ...");
    let g = guest::linux_guest().context("building the test guest")?;
    let guest_files = g.clone();
    let id = uuid::Uuid::new_v4();
    let vm_dir = root.join("vm");
    let disk = vm_dir.join("disks/root.qcow2");
    std::fs::create_dir_all(disk.parent().unwrap_or(&vm_dir))?;
    crate::run_cmd(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg("64M"),
    )?;
    let spec = VmSpec {
        def: VmDefinition {
            id,
            name: "bench".into(),
            kind: VmKind::Linux,
            memory_mib: args.memory_mib,
            cpus: 1,
            disks: vec![DiskSpec {
                path: "disks/root.qcow2".into(),
                format: DiskFormat::Qcow2,
            }],
            boot: BootSpec::DirectKernel {
                kernel: g.kernel,
                initrd: Some(g.initrd),
                cmdline: g.cmdline,
            },
            tpm: false,
            media: vec![],
            usb_media: vec![],
            provisioned: true,
            guest: None,
        },
        vm_dir: vm_dir.clone(),
        run_dir: root.join("run"),
        network: false,
        cpus: 1,
        memory_mib: args.memory_mib,
        agent_bridge: false,
    };
    let log = rayos_vmm::qemu::console::console_log(&vm_dir);
    let state = vm_dir.join("state/vm.state.zst");
    eprintln!("bench vm: accelerator {}", vmm.accel().name());

    // Cold boot to the ready marker.
    let t = Instant::now();
    let mut h = Guard(Some(vmm.launch(&spec, &Launch::Cold)?));
    // launch() returns once QEMU has daemonized and answers QMP: the fixed
    // cost of starting the device model, which a restore pays as well.
    let qemu_start = t.elapsed();
    guest::wait_for_line(&log, 0, guest::READY_MARKER, TIMEOUT)?;
    let cold = t.elapsed();
    // Let the guest settle so the save sees a typical running guest.
    let c = guest::wait_counter_above(&log, 0, Some(4), TIMEOUT)?;

    // Save.
    let report = h.0.as_mut().map(|h| h.save(&state)).transpose()?;
    h.0 = None;
    let report = report.context("no VM to save")?;

    // Resume: until the guest prints again.
    let offset = guest::log_len(&log);
    let t = Instant::now();
    let handle = vmm.launch(
        &spec,
        &Launch::Restore {
            state_file: state.clone(),
        },
    )?;
    let restore = t.elapsed();
    let mut h = Guard(Some(handle));
    let next = guest::wait_counter_above(&log, offset, None, TIMEOUT)?;
    let resume = t.elapsed();
    if next <= c {
        bail!("the counter went back from {c} to {next}: the restore did not resume the guest");
    }
    if let Some(mut x) = h.0.take() {
        x.kill()?;
    }
    // RayOS's restore against the same state loaded by QEMU alone, in
    // alternating pairs (page cache alike); the minimum of each is compared,
    // as the machine's load varies between pairs.
    let (mut ours, mut bares) = (Vec::new(), Vec::new());
    for _ in 0..PAIRS {
        let t = Instant::now();
        let mut x = vmm.launch(
            &spec,
            &Launch::Restore {
                state_file: state.clone(),
            },
        )?;
        ours.push(t.elapsed());
        x.kill()?;
        bares.push(bare_incoming(&vmm, &spec, &state)?);
    }
    let range = |v: &[Duration]| {
        let min = v.iter().min().copied().unwrap_or_default();
        let max = v.iter().max().copied().unwrap_or_default();
        (min, max)
    };
    let (ours_min, ours_max) = range(&ours);
    let (bare_min, bare_max) = range(&bares);

    let dd_dir = state.parent().unwrap_or(&root);
    let (dd_write, dd_read) = dd_baseline(dd_dir, report.bytes)?;
    // What an uncompressed save would have to write.
    let (dd_write_raw, _) = dd_baseline(dd_dir, report.transferred)?;
    let mut saves = vec![SaveRep {
        save: report.duration,
        bytes: report.bytes,
        transferred: report.transferred,
        dd_raw: dd_write_raw,
    }];
    for _ in 1..args.reps.max(1) {
        let offset = guest::log_len(&log);
        let mut x = Guard(Some(vmm.launch(
            &spec,
            &Launch::Restore {
                state_file: state.clone(),
            },
        )?));
        guest::wait_counter_above(&log, offset, None, TIMEOUT)?;
        let r = x.0.as_mut().map(|h| h.save(&state)).transpose()?;
        x.0 = None;
        let r = r.context("no VM to save")?;
        let (dd_raw, _) = dd_baseline(dd_dir, r.transferred)?;
        saves.push(SaveRep {
            save: r.duration,
            bytes: r.bytes,
            transferred: r.transferred,
            dd_raw,
        });
    }

    let save = report.duration;
    println!(
        "bench vm ({} MiB guest, {}, {} save, {})",
        args.memory_mib,
        vmm.accel().name(),
        args.save_format,
        root.display()
    );
    println!(
        "  QEMU start (launch returns)     {:>8.3} s",
        secs(qemu_start)
    );
    println!("  cold boot to ready marker      {:>8.3} s", secs(cold));
    println!(
        "  resume to first counter line   {:>8.3} s   ratio resume/cold {:.3} ({:.1}x faster)",
        secs(resume),
        secs(resume) / secs(cold),
        secs(cold) / secs(resume)
    );
    println!(
        "  state file                     {:>8.1} MB (guest RAM transferred {:.1} MB)",
        report.bytes as f64 / 1e6,
        report.transferred as f64 / 1e6
    );
    println!(
        "  save                           {:>8.3} s   {:>7.1} MB/s on disk, {:>7.1} MB/s of guest RAM",
        secs(save),
        mbps(report.bytes, save),
        mbps(report.transferred, save)
    );
    println!(
        "  dd write same bytes (fsync)    {:>8.3} s   {:>7.1} MB/s   ratio save/dd {:.2}",
        secs(dd_write),
        mbps(report.bytes, dd_write),
        secs(save) / secs(dd_write)
    );
    println!(
        "  dd write guest-RAM bytes       {:>8.3} s   {:>7.1} MB/s   ratio save/dd {:.2} (uncompressed baseline)",
        secs(dd_write_raw),
        mbps(report.transferred, dd_write_raw),
        secs(save) / secs(dd_write_raw)
    );
    println!(
        "  restore (launch -> running)    {:>8.3} s   {:>7.1} MB/s on disk, {:>7.1} MB/s of guest RAM",
        secs(restore),
        mbps(report.bytes, restore),
        mbps(report.transferred, restore)
    );
    println!(
        "  restore x{PAIRS}, min (max)         {:>8.3} s ({:.3} s)",
        secs(ours_min),
        secs(ours_max)
    );
    println!(
        "  bare QEMU -incoming x{PAIRS}, min (max) {:>5.3} s ({:.3} s)   ratio restore/bare {:.2} (of the minimums)",
        secs(bare_min),
        secs(bare_max),
        secs(ours_min) / secs(bare_min)
    );
    let load = restore.saturating_sub(qemu_start);
    println!(
        "    of which loading (minus QEMU start) {:>5.3} s   {:>7.1} MB/s on disk",
        secs(load),
        mbps(report.bytes, load)
    );
    println!(
        "  dd read same bytes (cached)    {:>8.3} s   {:>7.1} MB/s   ratio restore/dd {:.2}, loading/dd {:.2}",
        secs(dd_read),
        mbps(report.bytes, dd_read),
        secs(restore) / secs(dd_read),
        secs(load) / secs(dd_read)
    );
    let stats = SaveStats::of(&saves);
    if saves.len() > 1 {
        println!(
            "  save x{}: median (min-max)      {:.3} s ({:.3}-{:.3})   {:.1} MB/s of guest RAM ({:.1}-{:.1})   ratio save/dd of guest-RAM bytes {:.2} ({:.2}-{:.2})",
            saves.len(),
            stats.secs.0,
            stats.secs.1,
            stats.secs.2,
            stats.mbps.0,
            stats.mbps.1,
            stats.mbps.2,
            stats.ratio.0,
            stats.ratio.1,
            stats.ratio.2
        );
    }
    let rss = daemon_rss(&root, &guest_files);
    match &rss {
        Ok((idle, two)) => println!(
            "  rayosd RSS                     {:>8.1} MiB idle, {:.1} MiB with two VMs defined (linux + windows, not running)",
            *idle as f64 / 1024.0,
            *two as f64 / 1024.0
        ),
        Err(e) => println!("  rayosd RSS: not measured: {e:#}"),
    }
    if args.json {
        let j = serde_json::json!({
            "memory_mib": args.memory_mib,
            "save_format": args.save_format,
            "accel": vmm.accel().name(),
            "qemu_start_s": secs(qemu_start),
            "cold_boot_s": secs(cold),
            "resume_s": secs(resume),
            "resume_over_cold": secs(resume) / secs(cold),
            "state_bytes": report.bytes,
            "transferred_bytes": report.transferred,
            "save_s": secs(save),
            "dd_write_s": secs(dd_write),
            "save_over_dd": secs(save) / secs(dd_write),
            "dd_write_raw_s": secs(dd_write_raw),
            "save_over_dd_raw": secs(save) / secs(dd_write_raw),
            "restore_s": secs(restore),
            "restore_load_s": secs(load),
            "restore_min_s": secs(ours_min),
            "restore_max_s": secs(ours_max),
            "bare_incoming_min_s": secs(bare_min),
            "bare_incoming_max_s": secs(bare_max),
            "restore_over_bare": secs(ours_min) / secs(bare_min),
            "dd_read_s": secs(dd_read),
            "restore_over_dd": secs(restore) / secs(dd_read),
            "daemon_rss_kib_idle": rss.as_ref().ok().map(|r| r.0),
            "daemon_rss_kib_two_vms": rss.as_ref().ok().map(|r| r.1),
            "save_reps": saves.iter().map(|r| serde_json::json!({
                "save_s": secs(r.save),
                "state_bytes": r.bytes,
                "transferred_bytes": r.transferred,
                "dd_write_raw_s": secs(r.dd_raw),
            })).collect::<Vec<_>>(),
            "save_median_s": stats.secs.0,
            "save_mbps_median": stats.mbps.0,
            "save_over_dd_raw_median": stats.ratio.0,
        });
        println!("{j}");
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}

/// One measured save and the `dd` of its guest-RAM bytes right after it.
struct SaveRep {
    save: Duration,
    bytes: u64,
    transferred: u64,
    dd_raw: Duration,
}

/// Median, min and max of the saves: seconds, MB/s of guest RAM, and
/// save / `dd` of the guest-RAM bytes.
struct SaveStats {
    secs: (f64, f64, f64),
    mbps: (f64, f64, f64),
    ratio: (f64, f64, f64),
}

impl SaveStats {
    fn of(reps: &[SaveRep]) -> SaveStats {
        fn summary(v: Vec<f64>) -> (f64, f64, f64) {
            let s = super::spread(v);
            (s.median, s.min, s.max)
        }
        SaveStats {
            secs: summary(reps.iter().map(|r| secs(r.save)).collect()),
            mbps: summary(reps.iter().map(|r| mbps(r.transferred, r.save)).collect()),
            ratio: summary(reps.iter().map(|r| secs(r.save) / secs(r.dd_raw)).collect()),
        }
    }
}

/// Bare QEMU restoring `state`: the VM's own command line with
/// `-incoming` reading the file itself (`fd:3`, a raw state) or through
/// `exec:zstd -dc` (a compressed one), timed from spawn until
/// `query-status` (polled every millisecond) says loaded and `cont` has run. The orchestration
/// RayOS adds is the difference.
fn bare_incoming(vmm: &QemuVmm, spec: &VmSpec, state: &Path) -> anyhow::Result<Duration> {
    use std::io::Read as _;
    use std::os::fd::AsRawFd as _;
    use std::os::unix::process::CommandExt as _;

    let mut magic = [0u8; 4];
    let file = std::fs::File::open(state).with_context(|| format!("{}", state.display()))?;
    (&file).read_exact(&mut magic)?;
    // QEMU reads from the descriptor's offset.
    std::io::Seek::rewind(&mut (&file))?;
    let uri = if magic == *b"QEVM" {
        "fd:3".to_string()
    } else {
        format!("exec:zstd -q -dc {}", state.display())
    };
    let mut argv = vmm
        .command_line(spec, rayos_vmm::qemu::LaunchPart::Incoming)
        .argv();
    let i = argv
        .iter()
        .position(|a| a == "-incoming")
        .context("no -incoming in the command line")?;
    argv[i + 1] = uri;
    use rayos_vmm::qemu::cmdline::run;
    for f in [run::QMP, run::VNC, run::QGA, run::CONSOLE, run::QEMU_PID] {
        let _ = std::fs::remove_file(spec.run_dir.join(f));
    }
    let fd = file.as_raw_fd();
    let mut cmd = Command::new(&vmm.config().qemu);
    cmd.args(&argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only dup2/fcntl, async-signal-safe, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec.
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t = Instant::now();
    let st = cmd.status().context("cannot run QEMU")?;
    if !st.success() {
        bail!("bare QEMU -incoming exited: {st}");
    }
    let pid = rayos_vmm::qemu::process::read_pid(&spec.run_dir.join(run::QEMU_PID))
        .context("bare QEMU wrote no pid file")?;
    let r = (|| {
        let mut q = rayos_qmp::QmpClient::connect_retry(
            &spec.run_dir.join(run::QMP),
            Duration::from_secs(30),
        )?;
        loop {
            let v = q.execute("query-status", None)?;
            match v["status"].as_str() {
                Some("running") => return Ok(t.elapsed()),
                // The state was saved from a stopped guest, so QEMU loads it
                // paused; RayOS sends the same `cont`.
                Some("paused" | "postmigrate") => {
                    q.execute("cont", None)?;
                    return Ok(t.elapsed());
                }
                _ => {}
            }
            if t.elapsed() > TIMEOUT {
                bail!("bare QEMU still {} after {TIMEOUT:?}", v["status"]);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })();
    let _ = rayos_vmm::qemu::process::signal(pid, libc::SIGKILL);
    rayos_vmm::qemu::process::wait_gone(pid, Duration::from_secs(10));
    r
}

/// Kills the daemon if measuring fails half-way.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("rayosd (pid {pid}) is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// RSS of `rayos daemon` (KiB) idle and with two VMs defined.
fn daemon_rss(root: &Path, g: &guest::LinuxGuest) -> anyhow::Result<(u64, u64)> {
    crate::run_cmd(Command::new("cargo").args(["build", "--quiet", "-p", "rayos"]))
        .context("building the rayos binary")?;
    let rayos = crate::root().join("target/debug/rayos");
    let state = root.join("daemon-state");
    let sock = root.join("api.sock");
    let child = Command::new(&rayos)
        .arg("daemon")
        .arg("--state-dir")
        .arg(&state)
        .arg("--socket")
        .arg(&sock)
        .args(["--cgroup", "none"])
        .env("RAYOS_ACCEL", "tcg")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", rayos.display()))?;
    let mut daemon = Daemon(child);
    let pid = daemon.0.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        if let Some(st) = daemon.0.try_wait()? {
            bail!("rayos daemon exited: {st}");
        }
        if Instant::now() >= deadline {
            bail!("rayos daemon made no socket at {} in 30 s", sock.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Let start-up allocations settle.
    std::thread::sleep(Duration::from_millis(500));
    let idle = vm_rss_kib(pid)?;
    let create = |args: &[&str]| {
        crate::run_cmd(
            Command::new(&rayos)
                .args(["vm", "create", "--socket"])
                .arg(&sock)
                .args(args)
                .stdout(std::process::Stdio::null()),
        )
    };
    create(&[
        "lin",
        "--kind",
        "linux",
        "--disk",
        "64M",
        "--kernel",
        &g.kernel.display().to_string(),
        "--initrd",
        &g.initrd.display().to_string(),
        "--cmdline",
        &g.cmdline,
    ])?;
    create(&["win", "--kind", "windows", "--disk", "64M"])?;
    std::thread::sleep(Duration::from_millis(500));
    let two = vm_rss_kib(pid)?;
    // SIGTERM: the daemon's own shutdown path (nothing runs, nothing saved).
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.0.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((idle, two))
}

/// The options of `--guest debian`.
pub struct DebianArgs {
    pub memory_mib: u64,
    pub dir: PathBuf,
    pub accel: Option<Accel>,
    pub json: bool,
}

fn args_debian(a: &Args) -> DebianArgs {
    DebianArgs {
        // 256 is the test guest's default; the Debian guest is measured as
        // the 2 GiB guest it is in a RayOS install.
        memory_mib: if a.memory_mib == 256 {
            2048
        } else {
            a.memory_mib
        },
        dir: a
            .dir
            .clone()
            .unwrap_or_else(|| crate::root().join("target/rayos-bench-vm-debian")),
        accel: match a.accel.as_deref() {
            Some("kvm") => Some(Accel::Kvm),
            Some(_) => Some(Accel::Tcg),
            None => None,
        },
        json: a.json,
    }
}
