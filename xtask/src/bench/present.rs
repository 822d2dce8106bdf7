//! `cargo xtask bench present`: the presenter against a direct VNC client
//! on the same VM, in one run, reported as ratios.
//!
//! Setup: `rayos daemon` on a scratch data volume; one Linux VM (the
//! testkit guest with `rayos.keys=1`, so it prints every key it receives
//! on its serial console), started hidden; the presenter in this process
//! drawing to a 1024x768 memory display (the same code path as fbdev but
//! for the final copy to device memory).
//!
//! - present → first frame: from `POST /v1/vms/<vm>/present` until the
//!   presenter has drawn the VM's first frame (its
//!   `RAYOS_PRESENTATION:on` marker, sent after the flush); baseline: the
//!   same API call, then a fresh RFB connection and the first full frame.
//!   Between repetitions the VM is hidden (and the home screen drawn).
//! - key → guest: from handing a key press to the presenter (as the input
//!   hub would) until the guest prints it on its console; baseline: the
//!   same key sent by a direct RFB client. Both are dominated by the
//!   guest's TCG-emulated shell loop, so the ratio shows what the presenter
//!   adds.
//! - With `RAYOS_BENCH_VERBOSE=1`, the presenter's log lines with their
//!   time (where a present's milliseconds go).
//! - presenter CPU: this process's CPU time (only the presenter runs here;
//!   rayosd and QEMU are other processes) over a window while the VM runs
//!   hidden, and for comparison while it is presented and idle.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rayos_api::{Client, CreateRequest, DiskRequest};
use rayos_base::marker::Marker;
use rayos_present::display::MemoryDisplay;
use rayos_present::input::InputEvent;
use rayos_present::service::{self, Options};
use rayos_present::vnc;
use rayos_state::VmKind;
use rayos_testkit::daemon::TermOnDrop;
use rayos_testkit::guest;

#[derive(clap::Args)]
pub struct Args {
    /// Repetitions of each latency measurement.
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Seconds of the CPU-use windows.
    #[arg(long, default_value_t = 10)]
    cpu_secs: u64,
    /// Print the figures as JSON as well.
    #[arg(long)]
    json: bool,
}

const VM: &str = "bench";

fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn wait_marker(rx: &mpsc::Receiver<Marker>, want: &Marker) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(m) if m == *want => return Ok(Instant::now()),
            Ok(_) => {}
            Err(_) => bail!("the presenter never printed {want}"),
        }
    }
}

/// Waits until the console log has grown past `from` with `needle`.
fn wait_console(log: &Path, from: u64, needle: &str) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = guest::read_from(log, from).unwrap_or_default();
        if text.contains(needle) {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            bail!("the guest never printed {needle:?}");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let reps = args.reps.max(1);
    crate::run_cmd(Command::new("cargo").args(["build", "--quiet", "-p", "rayos"]))
        .context("building the rayos binary")?;
    let rayos = crate::root().join("target/debug/rayos");
    // Short root: VM sockets live below the API socket's directory and
    // unix socket paths are limited to 108 bytes.
    let root = PathBuf::from(format!("/tmp/rayos-bench-present-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let result = bench(&args, reps, &rayos, &root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn bench(args: &Args, reps: usize, rayos: &Path, root: &Path) -> anyhow::Result<()> {
    let g = guest::linux_guest()?;
    let sock = root.join("api.sock");
    let child = Command::new(rayos)
        .arg("daemon")
        .arg("--state-dir")
        .arg(root.join("state"))
        .arg("--socket")
        .arg(&sock)
        .args(["--cgroup", "none"])
        .env("RAYOS_ACCEL", "tcg")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", rayos.display()))?;
    let _daemon = TermOnDrop(child);
    let client = Client::new(&sock).with_timeout(Some(Duration::from_secs(300)));
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.health().is_err() {
        if Instant::now() >= deadline {
            bail!("rayos daemon did not answer on {} in 30 s", sock.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("bench present: starting the test VM (TCG)…");
    let info = client.create(&CreateRequest {
        memory_mib: Some(256),
        cpus: Some(1),
        disks: vec![DiskRequest::Size("16M".into())],
        kernel: Some(g.kernel.clone()),
        initrd: Some(g.initrd.clone()),
        cmdline: Some(format!("{} rayos.keys=1", g.cmdline)),
        ..CreateRequest::new(VM, VmKind::Linux)
    })?;
    let log = info.vm_dir.join("logs/console.log");
    client.start(VM, false)?;
    wait_console(&log, 0, "KEYS ready")?;

    // Baseline first, with no presenter running.
    let mut direct_present = Vec::new();
    let mut direct_key = Vec::new();
    for _ in 0..reps {
        let t0 = Instant::now();
        client.action(VM, "present", None::<&()>)?;
        let vnc_sock = client
            .show(VM)?
            .vnc_socket
            .context("rayosd reports no VNC socket for the running VM")?;
        let (mut reader, writer) = vnc::connect(&vnc_sock, Duration::from_secs(10))?;
        reader.set_read_timeout(Some(Duration::from_secs(30)));
        reader.next_update()?;
        direct_present.push(t0.elapsed().as_secs_f64());
        // Let QEMU acknowledge extended keys before timing a key.
        while !writer.extended_keys() {
            reader.next_event()?;
        }
        let pump = std::thread::spawn(move || while reader.next_event().is_ok() {});
        let from = guest::log_len(&log);
        let t0 = Instant::now();
        writer.key(30, true)?;
        let t1 = wait_console(&log, from, "KEY 30 1")?;
        direct_key.push((t1 - t0).as_secs_f64());
        writer.key(30, false)?;
        wait_console(&log, from, "KEY 30 0")?;
        writer.shutdown();
        let _ = pump.join();
        client.action(VM, "hide", None::<&()>)?;
    }

    // The presenter.
    let display = MemoryDisplay::new(1024, 768);
    let (mtx, mrx) = mpsc::channel::<Marker>();
    let mtx = Mutex::new(mtx);
    let h = service::spawn(
        Options {
            api_socket: sock.clone(),
            input_dir: None,
            tty: None,
            version: env!("CARGO_PKG_VERSION").into(),
            marker: Arc::new(move |m| {
                let _ = mtx.lock().map(|t| t.send(m.clone()));
            }),
            log: {
                let t0 = Instant::now();
                Arc::new(move |m| {
                    if std::env::var_os("RAYOS_BENCH_VERBOSE").is_some() {
                        eprintln!(
                            "[{:8.1} ms] presenter: {m}",
                            t0.elapsed().as_secs_f64() * 1e3
                        );
                    }
                })
            },
        },
        Box::new(display),
    );
    wait_marker(&mrx, &Marker::PresentationOff)?;
    let on = Marker::PresentationOn { vm: VM.into() };
    let mut pres_present = Vec::new();
    let mut pres_key = Vec::new();
    for _ in 0..reps {
        let t0 = Instant::now();
        client.action(VM, "present", None::<&()>)?;
        if std::env::var_os("RAYOS_BENCH_VERBOSE").is_some() {
            eprintln!(
                "present call returned after {:.1} ms",
                t0.elapsed().as_secs_f64() * 1e3
            );
        }
        let t1 = wait_marker(&mrx, &on)?;
        pres_present.push((t1 - t0).as_secs_f64());
        // The session's writer reaches the presenter right after the
        // connection; the guest must also have acknowledged extended keys.
        std::thread::sleep(Duration::from_millis(200));
        let from = guest::log_len(&log);
        let t0 = Instant::now();
        h.input(InputEvent::Key { code: 30, value: 1 });
        let t1 = wait_console(&log, from, "KEY 30 1")?;
        pres_key.push((t1 - t0).as_secs_f64());
        h.input(InputEvent::Key { code: 30, value: 0 });
        wait_console(&log, from, "KEY 30 0")?;
        client.action(VM, "hide", None::<&()>)?;
        wait_marker(&mrx, &Marker::PresentationOff)?;
    }

    // CPU while the VM runs hidden, then presented (guest idle but for its
    // counter on the serial console, which does not touch the display).
    let window = Duration::from_secs(args.cpu_secs.max(1));
    let c0 = cpu_time();
    std::thread::sleep(window);
    let hidden_cpu = (cpu_time() - c0).as_secs_f64();
    client.action(VM, "present", None::<&()>)?;
    wait_marker(&mrx, &on)?;
    let c0 = cpu_time();
    std::thread::sleep(window);
    let presented_cpu = (cpu_time() - c0).as_secs_f64();
    h.stop();

    let dp = super::median(&direct_present);
    let pp = super::median(&pres_present);
    let dk = super::median(&direct_key);
    let pk = super::median(&pres_key);
    let w = window.as_secs_f64();
    println!("bench present ({reps} reps, medians; guest under TCG):");
    println!(
        "  present -> first frame: presenter {:.1} ms, direct VNC {:.1} ms, ratio {:.2}",
        pp * 1e3,
        dp * 1e3,
        pp / dp
    );
    println!(
        "  key -> guest:           presenter {:.1} ms, direct VNC {:.1} ms, ratio {:.2}",
        pk * 1e3,
        dk * 1e3,
        pk / dk
    );
    println!(
        "  presenter CPU: {:.3}% with the VM hidden, {:.3}% with it presented ({w:.0} s windows)",
        hidden_cpu / w * 100.0,
        presented_cpu / w * 100.0
    );
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "reps": reps,
                "present_first_frame_s": {"presenter": pp, "direct": dp, "ratio": pp / dp},
                "key_to_guest_s": {"presenter": pk, "direct": dk, "ratio": pk / dk},
                "presenter_cpu_fraction": {"hidden": hidden_cpu / w, "presented": presented_cpu / w},
            })
        );
    }
    Ok(())
}
