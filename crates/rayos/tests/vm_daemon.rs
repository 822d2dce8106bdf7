//! rayosd end to end: the real `rayos daemon` with the QEMU backend (TCG)
//! and the tiny test guest, driven through the real `rayos vm` CLI.
//!
//! The guest prints `COUNTER <n>` every 0.25 s from RAM, so "the counter
//! continues" proves a restore (or an undisturbed guest) and "the counter
//! starts at 0" proves a cold boot.
//!
//! Every daemon and every QEMU a test starts is killed by a guard on drop.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rayos_api::{EventKind as E, VmInfo, VmState};
use rayos_base::marker::{Kind, Marker, VmStart};
use rayos_testkit::daemon::Host;
use rayos_testkit::guest;
use rayos_vmm::qemu::process;

const BOOT: Duration = Duration::from_secs(120);

fn rayos() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rayos"))
}

/// What these tests do with a host beyond the shared harness: hosts of
/// the `rayos` binary under test and the daemon's autostart.
trait TestHost {
    /// A host (no daemon yet) whose paths start with `rayosd`.
    fn new() -> Self;
    /// A host (no daemon yet) whose every path (data volume, sockets)
    /// starts with `prefix`.
    fn with_prefix(prefix: &str) -> Self;
    /// Waits until the daemon finished `runs` autostarts (one a daemon
    /// start).
    fn wait_autostart(&self, runs: usize);
}

impl TestHost for Host {
    fn new() -> Host {
        Host::with_prefix("rayosd")
    }

    fn with_prefix(prefix: &str) -> Host {
        Host::with_binary(env!("CARGO_BIN_EXE_rayos"), prefix)
    }

    fn wait_autostart(&self, runs: usize) {
        let deadline = Instant::now() + BOOT;
        while self.markers(Kind::AutostartDone).len() < runs {
            assert!(
                Instant::now() < deadline,
                "autostart did not finish: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn last_counter(log: &Path) -> u64 {
    *guest::counters(&guest::read_from(log, 0).unwrap())
        .last()
        .expect("the guest printed counters")
}

/// Counters printed after byte `from`, waiting until at least `n` are there.
fn counters_after(log: &Path, from: u64, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + BOOT;
    loop {
        let c = guest::counters(&guest::read_from(log, from).unwrap());
        if c.len() >= n {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "guest printed {c:?} after {from}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn json_boot(out: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(out).unwrap();
    v["boot"].as_str().unwrap_or_default().to_string()
}

/// The counter continues after suspend/start, is not interrupted by a
/// daemon SIGKILL + restart (re-attach), continues after a SIGTERM +
/// restart (saved, then autostart resumes it hidden), and `--fresh` starts
/// it from zero.
#[test]
fn counter_survives_suspend_daemon_kill_and_host_shutdown() {
    let mut h = Host::new();
    h.policy("version = 1\n[linux]\nautostart = true\n");
    h.start_daemon();
    h.create_guest("lin", &[]);
    assert_eq!(h.show("lin").state, VmState::Stopped);

    // Cold boot.
    let out = h.ok(&["start", "lin", "--json"]);
    assert_eq!(json_boot(&out), "cold");
    let log = h.console("lin");
    guest::wait_counter_above(&log, 0, Some(3), BOOT).unwrap();

    // suspend -> start: resumed, counter continues.
    h.ok(&["suspend", "lin"]);
    let shown = h.show("lin");
    assert_eq!(shown.state, VmState::Saved);
    assert!(
        shown
            .saved_state
            .as_ref()
            .is_some_and(|s| s.usable && s.bytes > 0)
    );
    let before = last_counter(&log);
    let mark = guest::log_len(&log);
    let out = h.ok(&["start", "lin", "--json"]);
    assert_eq!(json_boot(&out), "resumed");
    assert!(
        h.starts("lin")
            .ends_with(&[VmStart::Cold, VmStart::Resumed])
    );
    let after = counters_after(&log, mark, 2);
    assert!(
        after[0] >= before,
        "resume continued: {before} then {after:?}"
    );

    // SIGKILL the daemon: the guest keeps running, the next daemon adopts it.
    let pid = h.show("lin").pid.unwrap();
    h.kill_daemon();
    let mark = guest::log_len(&log);
    let during = counters_after(&log, mark, 3);
    assert!(during.windows(2).all(|w| w[1] == w[0] + 1), "{during:?}");
    h.start_daemon();
    h.wait_autostart(2);
    let shown = h.show("lin");
    assert_eq!((shown.state, shown.pid), (VmState::Running, Some(pid)));
    assert_eq!(
        h.markers(Kind::VmAttached),
        vec![Marker::VmAttached { vm: "lin".into() }]
    );
    let after = counters_after(&log, mark, during.len() + 3);
    assert!(
        after.windows(2).all(|w| w[1] == w[0] + 1),
        "never interrupted: {after:?}"
    );

    // SIGTERM: saved, exit 0; the next start resumes it hidden (autostart).
    h.ok(&["present", "lin"]);
    assert_eq!(h.term_daemon(), 0, "{}", h.stderr());
    assert!(!process::alive(pid), "QEMU ended after the save");
    assert!(!h.socket().exists(), "socket removed on exit");
    let before = last_counter(&log);
    let mark = guest::log_len(&log);
    h.start_daemon();
    h.wait_autostart(3);
    assert_eq!(h.starts("lin").last(), Some(&VmStart::Resumed));
    let shown = h.show("lin");
    assert_eq!(shown.state, VmState::Running);
    assert!(!shown.presented, "autostart resumes hidden");
    let after = counters_after(&log, mark, 2);
    assert!(
        after[0] >= before,
        "continued after host shutdown: {before} then {after:?}"
    );

    // --fresh: the saved state is discarded, the counter restarts at 0.
    h.ok(&["suspend", "lin"]);
    let mark = guest::log_len(&log);
    let out = h.ok(&["start", "lin", "--fresh", "--json"]);
    assert_eq!(json_boot(&out), "cold");
    let after = counters_after(&log, mark, 1);
    assert_eq!(after[0], 0, "fresh start boots from zero: {after:?}");
    assert!(h.show("lin").unusable_states.is_empty());

    // A graceful stop: the guest powers off on the ACPI button (once its
    // button watcher runs, a few counters into the boot).
    counters_after(&log, mark, 4);
    let out = h.ok(&["stop", "lin", "--timeout", "60"]);
    assert!(out.contains("shut down by the guest"), "{out}");
    assert_eq!(h.show("lin").state, VmState::Stopped);
}

/// A damaged saved state: the VM cold-boots, the state is kept aside
/// byte for byte, and the disk is untouched and consistent.
#[test]
fn corrupt_state_file_cold_boots_and_keeps_disk_and_state() {
    let mut h = Host::new();
    h.start_daemon();
    h.create_guest("lin", &["--disk", "32M"]);
    h.ok(&["start", "lin"]);
    let log = h.console("lin");
    guest::wait_counter_above(&log, 0, Some(2), BOOT).unwrap();
    h.ok(&["suspend", "lin"]);
    let shown = h.show("lin");
    let state = shown.saved_state.unwrap().path;
    let disk = shown.disks[0].clone();

    // Damage the middle of the state file.
    let mut bytes = fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    let end = mid + 4096.min(bytes.len() - mid);
    for b in &mut bytes[mid..end] {
        *b ^= 0x5a;
    }
    fs::write(&state, &bytes).unwrap();
    let disk_before = fs::read(&disk).unwrap();

    let mark = guest::log_len(&log);
    let out = h.ok(&["start", "lin", "--json"]);
    assert_eq!(json_boot(&out), "cold", "{out}");
    let after = counters_after(&log, mark, 1);
    assert_eq!(after[0], 0, "cold boot: {after:?}");

    let shown = h.show("lin");
    assert_eq!(shown.unusable_states.len(), 1, "{shown:?}");
    let kept = shown.unusable_states[0].join("vm.state");
    assert_eq!(
        fs::read(&kept).unwrap(),
        bytes,
        "damaged state kept byte for byte"
    );
    assert!(
        shown
            .last_error
            .unwrap_or_default()
            .contains("restoring failed")
    );
    h.ok(&["stop", "lin", "--force"]);
    assert_eq!(fs::read(&disk).unwrap(), disk_before, "disk unchanged");
    let check = Command::new("qemu-img")
        .arg("check")
        .arg(&disk)
        .output()
        .expect("qemu-img (qemu-utils) is installed");
    assert!(
        check.status.success(),
        "qemu-img check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

fn raw(socket: &Path, request: &[u8]) -> (u16, String) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(request);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    (status, out)
}

fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// No QEMU needed: a corrupt registry falls back to its previous
/// generation; bad API input gets 4xx; CLI exit codes; the daemon's RSS.
#[test]
fn corrupt_registry_bad_input_and_exit_codes() {
    let mut h = Host::new();
    // Unreachable daemon: exit code 3 and a message naming the socket.
    let o = h.vm(&["list"]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(h.socket().to_str().unwrap()) && err.contains("rayos daemon"),
        "{err}"
    );

    h.start_daemon();
    let kernel = guest::host_kernel().unwrap().0;
    for name in ["one", "two"] {
        h.ok(&[
            "create",
            name,
            "--kind",
            "generic",
            "--kernel",
            kernel.to_str().unwrap(),
        ]);
    }
    let health = h.client().health().unwrap();
    let rss = rss_kib(health.pid);
    println!("rayosd RSS with 2 VMs defined: {rss} KiB");
    let reported = health.rss_kib.unwrap();
    assert!(
        reported > 0 && reported.abs_diff(rss) < 4096,
        "{reported} vs {rss}"
    );

    // Exit codes.
    assert_eq!(h.vm(&["show", "ghost"]).status.code(), Some(4));
    assert_eq!(
        h.vm(&["create", "Bad", "--kind", "linux"]).status.code(),
        Some(2)
    );
    assert_eq!(
        h.vm(&["create", "x", "--kind", "linux", "--disk", "/no/such.img"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        h.vm(&["suspend", "one"]).status.code(),
        Some(1),
        "409 is a failure"
    );

    // Bad API input: 4xx with a message, and the daemon keeps serving.
    let s = h.socket();
    for (want, req) in [
        (
            400,
            &b"POST /v1/vms HTTP/1.1\r\nContent-Length: 5\r\n\r\n{oops"[..],
        ),
        (
            400,
            b"POST /v1/vms/one/start HTTP/1.1\r\nContent-Length: 13\r\n\r\n{\"fresh\":\"1\"}",
        ),
        (404, b"POST /v1/vms/ghost/start HTTP/1.1\r\n\r\n"),
        (409, b"POST /v1/vms/one/suspend HTTP/1.1\r\n\r\n"),
        (
            413,
            b"POST /v1/vms HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
        ),
        (400, b"\xff\xfe nonsense\r\n\r\n"),
    ] {
        let (got, text) = raw(&s, req);
        assert_eq!(got, want, "{text}");
        assert!(text.contains("\"error\""), "{text}");
    }
    assert_eq!(h.client().list().unwrap().len(), 2);

    // Corrupt the registry: the previous generation (one VM) is used, the
    // note names the file and line, the damaged file stays.
    h.kill_daemon();
    let reg = h.state().join("vm/registry.json");
    let text = fs::read_to_string(&reg).unwrap();
    let damaged = text.replacen("\"name\"", "\"name\" oops", 1);
    fs::write(&reg, &damaged).unwrap();
    h.start_daemon();
    let names: Vec<String> = h
        .client()
        .list()
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["one"]);
    let health = h.client().health().unwrap();
    assert!(
        health.notes.iter().any(|n| n.contains("registry.json:")),
        "{:?}",
        health.notes
    );
    assert_eq!(fs::read_to_string(&reg).unwrap(), damaged);
}

fn last_word(line: &str) -> String {
    line.split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// The Windows profile through rayosd: a `--kind windows` VM (UEFI, TPM
/// 2.0, Hyper-V flags; Secure Boot off because the guest is unsigned) running the UEFI test guest from an imported disk
/// sees UEFI firmware and a TPM 2.0; its UEFI variable and TPM NV index
/// survive a suspend/resume and a stop/start.
#[test]
fn windows_profile_keeps_uefi_variables_and_tpm_state() {
    let mut h = Host::new();
    h.policy("version = 1\n[linux]\nautostart = false\n[windows]\nenabled = true\n");
    h.start_daemon();
    let esp = guest::uefi_disk().expect("UEFI test guest (systemd-boot-efi, mtools, dosfstools)");
    h.ok(&[
        "create",
        "win",
        "--kind",
        "windows",
        "--memory",
        "512",
        "--cpus",
        "1",
        "--disk",
        esp.to_str().unwrap(),
        // The test guest's UKI is not signed with Microsoft's keys.
        "--secure-boot",
        "off",
    ]);
    let shown = h.show("win");
    // Windows always needs installing: unprovisioned without media too.
    assert!(
        shown.tpm && !shown.provisioned && !shown.network,
        "{shown:?}"
    );
    assert_eq!(shown.disks.len(), 1);
    assert!(
        shown.disks[0].starts_with(&shown.vm_dir),
        "imported by copy"
    );

    h.ok(&["start", "win"]);
    let log = h.console("win");
    let secrets = guest::expect_first_uefi_tpm_boot(&log, BOOT);
    guest::wait_counter_above(&log, 0, Some(1), BOOT).unwrap();

    // Suspend and resume with the TPM attached: the guest continues.
    h.ok(&["suspend", "win"]);
    let before = last_counter(&log);
    let mark = guest::log_len(&log);
    assert_eq!(json_boot(&h.ok(&["start", "win", "--json"])), "resumed");
    let after = counters_after(&log, mark, 2);
    assert!(after[0] >= before, "{before} then {after:?}");

    // Stop and cold-boot: the variable and the NV index are still there.
    h.ok(&["stop", "win", "--force"]);
    let mark = guest::log_len(&log);
    assert_eq!(json_boot(&h.ok(&["start", "win", "--json"])), "cold");
    guest::expect_secrets_found(&log, mark, &secrets, BOOT);
    h.ok(&["stop", "win", "--force"]);
}

/// `rayos vm create --import`: a Linux VM from an existing bootable image
/// (the UEFI test guest standing in for a distribution's disk) is copied
/// in, boots through UEFI without --kernel, and the source is not touched.
#[test]
fn imported_image_boots_a_linux_vm_through_uefi() {
    let mut h = Host::new();
    h.start_daemon();
    let image = guest::uefi_disk().expect("UEFI test guest (systemd-boot-efi, mtools, dosfstools)");
    let source = fs::read(&image).unwrap();
    let missing = h.dir().join("no-such.qcow2");
    let out = h.vm(&[
        "create",
        "distro",
        "--kind",
        "linux",
        "--import",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "a missing image is bad input");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such.qcow2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.ok(&[
        "create",
        "distro",
        "--kind",
        "linux",
        "--memory",
        "256",
        "--import",
        image.to_str().unwrap(),
    ]);
    let shown = h.show("distro");
    assert_eq!(shown.disks.len(), 1);
    assert!(
        shown.disks[0].starts_with(&shown.vm_dir),
        "imported by copy"
    );
    h.ok(&["start", "distro"]);
    let log = h.console("distro");
    assert_eq!(
        guest::wait_for_line(&log, 0, "FIRMWARE", BOOT).unwrap(),
        "FIRMWARE uefi"
    );
    guest::wait_counter_above(&log, 0, Some(1), BOOT).unwrap();
    h.ok(&["stop", "distro", "--force"]);
    assert_eq!(
        fs::read(&image).unwrap(),
        source,
        "the source image is untouched"
    );
}

/// Too little room for the state: the save fails with a message (refused
/// before the guest is paused: rayos-vmm checks the free space first), no
/// partial state file is left, and the guest keeps running undisturbed.
#[test]
fn disk_full_during_save_keeps_the_vm_running() {
    let mut h = Host::new();
    // Room for the VM's kernel and initrd copies (~11 MiB), not for the
    // state of a 256 MiB guest (at least 128 MiB free to try it
    // compressed).
    h.small_state_volume(20);
    h.start_daemon();
    h.create_guest("lin", &[]);
    h.ok(&["start", "lin"]);
    let log = h.console("lin");
    guest::wait_counter_above(&log, 0, Some(2), BOOT).unwrap();
    let pid = h.show("lin").pid;

    let o = h.vm(&["suspend", "lin"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot save VM lin"), "{err}");
    // Refused before the guest is paused, with what to do (HTTP 507).
    assert!(err.contains("free space on that file system"), "{err}");

    let shown = h.show("lin");
    assert_eq!((shown.state, shown.pid), (VmState::Running, pid));
    assert!(shown.saved_state.is_none());
    assert!(shown.last_error.is_some());
    let leftovers: Vec<_> = fs::read_dir(shown.vm_dir.join("state"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "no partial state: {leftovers:?}");
    let mark = guest::log_len(&log);
    let after = counters_after(&log, mark, 3);
    assert!(after.windows(2).all(|w| w[1] == w[0] + 1), "{after:?}");
    h.ok(&["stop", "lin", "--force"]);
}

/// A QEMU that dies: the VM goes to `crashed` with its last console lines
/// kept, and the policy (restart_on_crash) restarts it after a backoff.
#[test]
fn crashed_vm_keeps_console_and_is_restarted() {
    let mut h = Host::new();
    h.policy("version = 1\n[linux]\nautostart = false\nrestart_on_crash = true\n");
    h.start_daemon();
    h.create_guest("lin", &[]);
    h.ok(&["start", "lin"]);
    let log = h.console("lin");
    guest::wait_counter_above(&log, 0, Some(2), BOOT).unwrap();
    let pid = h.show("lin").pid.unwrap();
    process::signal(pid, libc::SIGKILL).unwrap();

    let mut seen = Vec::new();
    h.client()
        .events(Some(0), |ev| {
            if ev.vm == "lin" {
                seen.push(ev.event);
            }
            // created, starting, started, crashed, restarting, starting, started
            seen.iter().filter(|e| **e == E::Started).count() < 2
        })
        .unwrap();
    assert_eq!(
        seen[3..],
        [E::Crashed, E::Restarting, E::Starting, E::Started]
    );
    let shown = h.show("lin");
    assert_eq!(shown.state, VmState::Running);
    assert_ne!(shown.pid, Some(pid));
    assert_eq!(shown.crash_count, 1);
    assert!(
        shown
            .crash_console
            .iter()
            .any(|l| l.starts_with("COUNTER ")),
        "{:?}",
        shown.crash_console
    );
    h.ok(&["stop", "lin", "--force"]);
}

/// A guest that powers itself off is `stopped`, not `crashed`, and is not
/// restarted even though the policy restarts crashed VMs.
#[test]
fn guest_power_off_is_a_stop_not_a_crash() {
    let mut h = Host::new();
    h.policy("version = 1\n[generic]\nrestart_on_crash = true\n");
    h.start_daemon();
    let g = guest::linux_guest().expect("test guest");
    h.ok(&[
        "create",
        "off",
        "--kind",
        "generic",
        "--memory",
        "128",
        "--kernel",
        g.kernel.to_str().unwrap(),
        "--initrd",
        g.initrd.to_str().unwrap(),
        // busybox as init runs `poweroff -f` at once.
        "--cmdline",
        "console=ttyS0 loglevel=1 rdinit=/bin/busybox -- poweroff -f",
    ]);
    h.ok(&["start", "off"]);
    let mut seen = Vec::new();
    h.client()
        .events(Some(0), |ev| {
            if ev.vm == "off" {
                seen.push(ev.event);
            }
            !matches!(ev.event, E::Stopped | E::Crashed)
        })
        .unwrap();
    assert_eq!(seen, [E::Created, E::Starting, E::Started, E::Stopped]);
    let shown = h.show("off");
    assert_eq!((shown.state, shown.crash_count), (VmState::Stopped, 0));
}

// ----- safety (issue #10): images, API lockout, file modes, swtpm -----

/// Bytes a guest must never see: they stand for a host disk or a file on
/// the data volume that a crafted image points at.
const SECRET: &[u8] = b"RAYOS-HOST-SECRET";

/// `dir/secret.bin`: 1 MiB of [`SECRET`] over and over.
fn secret_file(dir: &Path) -> PathBuf {
    let p = dir.join("secret.bin");
    let bytes: Vec<u8> = SECRET.iter().copied().cycle().take(1 << 20).collect();
    fs::write(&p, bytes).unwrap();
    p
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn qemu_img(args: &[&str]) -> String {
    let o = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (qemu-utils) is installed");
    assert!(
        o.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A qcow2 image with no data of its own whose backing file is `backing`
/// (raw): whatever opens it with its backing chain reads `backing`.
fn overlay(path: &Path, backing: &Path) {
    let _ = fs::remove_file(path);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        backing.to_str().unwrap(),
        "-F",
        "raw",
        path.to_str().unwrap(),
    ]);
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn image_info(p: &Path) -> serde_json::Value {
    serde_json::from_str(&qemu_img(&["info", "--output=json", p.to_str().unwrap()])).unwrap()
}

/// Follows the events of `vm` from the daemon's first event on; the
/// stream is connected once the first event has arrived.
fn watch_events(h: &Host, vm: &str) -> std::sync::mpsc::Receiver<E> {
    let (tx, rx) = std::sync::mpsc::channel();
    let client = h.client();
    let name = vm.to_string();
    std::thread::spawn(move || {
        let _ = client.events(Some(0), |ev| ev.vm != name || tx.send(ev.event).is_ok());
    });
    rx
}

/// Adds events from `rx` to `seen` until `done` says the list is complete;
/// panics after `timeout`.
fn wait_events(
    h: &Host,
    rx: &std::sync::mpsc::Receiver<E>,
    seen: &mut Vec<E>,
    timeout: Duration,
    done: impl Fn(&[E]) -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !done(seen) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(e) => seen.push(e),
            Err(e) => panic!(
                "events so far: {seen:?} ({e}; waited up to {timeout:?})\ndaemon: {}",
                h.stderr()
            ),
        }
    }
}

/// Events of `vm` from the daemon's first event on, until `done` says the
/// list is complete; panics after `timeout`.
fn events_until(h: &Host, vm: &str, timeout: Duration, done: impl Fn(&[E]) -> bool) -> Vec<E> {
    let rx = watch_events(h, vm);
    let mut seen = Vec::new();
    wait_events(h, &rx, &mut seen, timeout, done);
    seen
}

/// An image that points at other host files (a qcow2 backing file, a
/// qcow2 external data file, VMDK extents) or a block device is refused
/// before anything is copied; ordinary qcow2, raw and VMDK images are
/// converted into a fresh qcow2 of the VM's own (no backing file, same
/// content, mode 0600 in a 0700 directory) with progress in the log.
#[test]
fn import_refuses_images_that_point_at_host_files() {
    let mut h = Host::new();
    h.start_daemon();
    let images = h.dir().join("images");
    fs::create_dir_all(&images).unwrap();
    let secret = secret_file(&images);

    let backed = images.join("backed.qcow2");
    overlay(&backed, &secret);
    // An external data file: qemu-img create truncates it, so fill it after.
    let data = images.join("data.bin");
    let with_data = images.join("with-data.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={},data_file_raw=on", data.display()),
        with_data.to_str().unwrap(),
        "1M",
    ]);
    fs::copy(&secret, &data).unwrap();
    // A VMDK descriptor whose extent is the secret file.
    let vmdk = images.join("flat.vmdk");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        vmdk.to_str().unwrap(),
        "1M",
    ]);
    let desc = fs::read_to_string(&vmdk)
        .unwrap()
        .replace("\"flat-flat.vmdk\"", &format!("\"{}\"", secret.display()));
    fs::write(&vmdk, desc).unwrap();
    // A block device node (a loop device's numbers; never opened).
    let blk = images.join("blockdev");
    let st = Command::new("mknod")
        .arg(&blk)
        .args(["b", "7", "0"])
        .status()
        .unwrap();
    assert!(st.success(), "mknod needs root (tests run as root in CI)");

    let vm_root = h.state().join("vm");
    let listing = || {
        let mut v: Vec<String> = fs::read_dir(&vm_root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = listing();
    for (flag, image, why) in [
        ("--import", &backed, "backing file"),
        ("--disk", &backed, "backing file"),
        ("--import", &with_data, "data file"),
        ("--import", &vmdk, "other files"),
        ("--import", &blk, "block device"),
    ] {
        let o = h.vm(&[
            "create",
            "evil",
            "--kind",
            "linux",
            flag,
            image.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flag} {image:?}: {err}");
        assert!(err.contains(why), "{image:?}: {err}");
    }
    assert!(h.client().list().unwrap().is_empty());
    assert_eq!(listing(), before, "nothing was created or copied");

    // Images of the supported formats are converted, content kept.
    let plain = images.join("plain.qcow2");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        secret.to_str().unwrap(),
        plain.to_str().unwrap(),
    ]);
    let sparse = images.join("sparse.vmdk");
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        secret.to_str().unwrap(),
        sparse.to_str().unwrap(),
    ]);
    h.ok(&[
        "create",
        "good",
        "--kind",
        "linux",
        "--import",
        plain.to_str().unwrap(),
        "--disk",
        secret.to_str().unwrap(),
        "--disk",
        sparse.to_str().unwrap(),
    ]);
    let shown = h.show("good");
    assert_eq!(mode(&shown.vm_dir), 0o700, "VM directory is private");
    assert_eq!(shown.disks.len(), 3);
    for (disk, (src, fmt)) in
        shown
            .disks
            .iter()
            .zip([(&plain, "qcow2"), (&secret, "raw"), (&sparse, "vmdk")])
    {
        let info = image_info(disk);
        assert_eq!(info["format"], "qcow2", "{disk:?}: {info}");
        assert!(info.get("backing-filename").is_none(), "{info}");
        assert_eq!(mode(disk), 0o600, "{disk:?}");
        qemu_img(&[
            "compare",
            "-f",
            fmt,
            "-F",
            "qcow2",
            src.to_str().unwrap(),
            disk.to_str().unwrap(),
        ]);
    }
    let log = h.stderr();
    assert!(
        log.contains("importing") && log.contains("100%"),
        "progress in the daemon log: {log}"
    );
}

/// A disk placed in a VM's directory that has a backing file is opened
/// without it, and an installation medium that is really a qcow2 image is
/// attached raw: the guest reads zeros and the qcow2 header, never the host
/// file behind them. Every path here contains a comma (QEMU's option
/// separator). State, disks and directories are private to root.
#[test]
fn disks_and_media_never_reach_host_files_even_with_commas_in_paths() {
    let mut h = Host::with_prefix("rayosd,comma");
    h.start_daemon();
    let images = h.dir().join("images, too");
    fs::create_dir_all(&images).unwrap();
    let secret = secret_file(&images);
    let iso = images.join("install,media.iso");
    overlay(&iso, &secret);
    h.create_guest_with(
        "lin",
        "rayos.read=vda,sr0",
        &["--disk", "1M", "--media", iso.to_str().unwrap()],
    );
    let shown = h.show("lin");
    assert!(!shown.provisioned, "media attached");
    // The registry says qcow2; the file now also names a backing file.
    overlay(&shown.disks[0], &secret);

    h.ok(&["start", "lin"]);
    let log = h.console("lin");
    let vda = guest::wait_for_line(&log, 0, "READ vda", BOOT).unwrap();
    assert_eq!(
        vda,
        format!("READ vda {}", hex(&[0; 16])),
        "no backing file"
    );
    let sr0 = guest::wait_for_line(&log, 0, "READ sr0", BOOT).unwrap();
    assert!(
        sr0.starts_with(&format!("READ sr0 {}", hex(b"QFI\xfb"))),
        "the medium is raw bytes, not a qcow2 image: {sr0}"
    );
    let text = guest::read_from(&log, 0).unwrap();
    assert!(!text.contains(&hex(&SECRET[..8])), "{text}");
    guest::wait_counter_above(&log, 0, Some(2), BOOT).unwrap();

    // Saved guest memory and the VM's files are root's alone.
    h.ok(&["suspend", "lin"]);
    let shown = h.show("lin");
    let state = shown.saved_state.as_ref().unwrap().path.clone();
    assert_eq!(mode(&state), 0o600, "vm.state");
    assert_eq!(mode(&shown.vm_dir), 0o700, "VM directory");
    assert_eq!(mode(&shown.disks[0]), 0o600, "disk");
    assert_eq!(mode(&shown.vm_dir.join("logs/console.log")), 0o600);

    // Resuming works through the same paths.
    let before = last_counter(&log);
    let mark = guest::log_len(&log);
    assert_eq!(json_boot(&h.ok(&["start", "lin", "--json"])), "resumed");
    let after = counters_after(&log, mark, 2);
    assert!(after[0] >= before, "{before} then {after:?}");
    h.ok(&["stop", "lin", "--force"]);
}

/// Opens `n` connections to the API that send `head` and then nothing.
fn idle_connections(socket: &Path, n: usize, head: &[u8]) -> Vec<UnixStream> {
    (0..n)
        .map(|_| {
            let mut s = UnixStream::connect(socket).unwrap();
            s.write_all(head).unwrap();
            s
        })
        .collect()
}

/// Opens `GET /v1/events` and waits until the daemon has sent the
/// response head (the stream is running); returns the stream and the head.
fn open_stream(socket: &Path) -> (UnixStream, String) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.write_all(b"GET /v1/events HTTP/1.1\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            other => panic!(
                "event stream head not received: {other:?} after {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

/// Reads what the daemon sends on `s` until it closes (at most `wait`).
fn read_all(s: &mut UnixStream, wait: Duration) -> String {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Idle connections, clients sending one byte at a time and event
/// subscribers cannot lock the API out: `/v1/health` keeps answering, the
/// oldest idle connections are shed first, slow requests are cut at the
/// request deadline, event streams have their own cap (the oldest ends
/// cleanly), and a daemon whose every connection is busy answers a
/// readable 503 instead of resetting the connection.
#[test]
fn api_answers_while_idle_slow_and_streaming_clients_hold_connections() {
    let mut h = Host::new();
    h.start_daemon();
    let sock = h.socket();
    let mut idle = idle_connections(&sock, 64, b"");
    // Idle for longer than a client that is just sending its request.
    std::thread::sleep(Duration::from_millis(700));
    // One after the other, each streaming before the next connects: a
    // stream's age counts from when it started streaming, so opening them
    // all at once would leave their order to the scheduler.
    let mut streams: Vec<(UnixStream, String)> = (0..40).map(|_| open_stream(&sock)).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slow: Vec<_> = (0..8)
        .map(|_| {
            let mut s = UnixStream::connect(&sock).unwrap();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for b in b"GET /v1/health HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaa" {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) || s.write_all(&[*b]).is_err()
                    {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..5 {
        let (status, text) = raw(&sock, b"GET /v1/health HTTP/1.1\r\n\r\n");
        assert_eq!(status, 200, "{text}\ndaemon: {}", h.stderr());
    }
    // The oldest idle connection was shed (closed, with a 503 to read).
    let first = read_all(&mut idle[0], Duration::from_secs(10));
    assert!(
        first.is_empty() || first.starts_with("HTTP/1.1 503"),
        "{first}"
    );
    // The oldest event stream was ended cleanly to stay within the cap;
    // the newest still runs.
    let (oldest, head) = &mut streams[0];
    let rest = read_all(oldest, Duration::from_secs(10));
    assert!(
        head.starts_with("HTTP/1.1 200") && rest.ends_with("0\r\n\r\n"),
        "{head:?} {rest:?}"
    );
    let (newest, _) = &mut streams[39];
    newest
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 16];
    // Open: nothing to read yet (a timeout) or a keepalive, never the end.
    let r = newest.read(&mut buf);
    assert!(
        match &r {
            Ok(n) => *n > 0,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        },
        "the newest stream is open: {r:?}"
    );
    // A request that does not arrive within the deadline gets 408.
    let mut late = UnixStream::connect(&sock).unwrap();
    late.write_all(b"GET /v1/health HTTP/1.1\r\n").unwrap();
    let text = read_all(&mut late, Duration::from_secs(60));
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in slow {
        t.join().unwrap();
    }
    drop(idle);
    drop(streams);

    // Every connection busy: a readable 503, never a reset.
    h.kill_daemon();
    h.start_daemon_with(&["--max-connections", "1", "--max-event-streams", "2"]);
    let g = guest::linux_guest().expect("test guest");
    h.ok(&[
        "create",
        "deaf",
        "--kind",
        "generic",
        "--memory",
        "128",
        "--kernel",
        g.kernel.to_str().unwrap(),
        "--initrd",
        g.initrd.to_str().unwrap(),
        // busybox as init sleeps and ignores the ACPI power button.
        "--cmdline",
        "console=ttyS0 loglevel=1 rdinit=/bin/busybox -- sleep 600",
    ]);
    h.ok(&["start", "deaf"]);
    // The event stream first: while every connection is busy, not even a
    // stream request can be read.
    let rx = watch_events(&h, "deaf");
    let mut seen = Vec::new();
    wait_events(&h, &rx, &mut seen, BOOT, |seen| {
        seen.last().is_some_and(|e| *e == E::Started)
    });
    let stopper = {
        let socket = h.socket();
        std::thread::spawn(move || {
            rayos()
                .args(["vm", "--socket"])
                .arg(socket)
                .args(["stop", "deaf", "--timeout", "15"])
                .output()
                .unwrap()
        })
    };
    wait_events(&h, &rx, &mut seen, BOOT, |seen| {
        seen.last().is_some_and(|e| *e == E::Stopping)
    });
    for _ in 0..3 {
        let (status, text) = raw(&sock, b"GET /v1/health HTTP/1.1\r\n\r\n");
        assert_eq!(status, 503, "{text}");
        assert!(text.contains("\"error\""), "{text}");
    }
    let out = stopper.join().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(h.client().health().unwrap().status, "ok");
    // A new stream ends the oldest of two. Each is opened only after the
    // one before it runs: connections opened at once are answered in
    // whatever order their threads run, so "oldest" would be a guess.
    // (The watcher's stream above is the oldest at first; `second` ends it.)
    let (mut first, _) = open_stream(&sock);
    let second = open_stream(&sock);
    let third = open_stream(&sock);
    let rest = read_all(&mut first, Duration::from_secs(10));
    assert!(rest.ends_with("0\r\n\r\n"), "{rest:?}");
    drop((second, third));
}

/// swtpm dying under a running Windows-profile VM: the event `tpm_died`,
/// a health note and the VM's last error say so, and the VM is shut down
/// through ACPI (it cannot be saved without its TPM) instead of running on
/// with a broken TPM. The TPM state survives: the next start finds the NV
/// index again.
#[test]
fn a_vm_whose_swtpm_dies_is_shut_down_cleanly_and_reported() {
    let mut h = Host::new();
    h.policy("version = 1\n[linux]\nautostart = false\n[windows]\nenabled = true\n");
    h.start_daemon();
    let esp = guest::uefi_disk().expect("UEFI test guest");
    h.ok(&[
        "create",
        "win",
        "--kind",
        "windows",
        "--memory",
        "512",
        "--cpus",
        "1",
        "--disk",
        esp.to_str().unwrap(),
        "--secure-boot",
        "off",
    ]);
    h.ok(&["start", "win"]);
    let log = h.console("win");
    let nv_line = guest::wait_for_line(&log, 0, "TPMNV ", BOOT).unwrap();
    let nv = last_word(&nv_line);
    guest::wait_counter_above(&log, 0, Some(1), BOOT).unwrap();

    let id = h.show("win").id;
    let pid_file = h.dir().join(format!("run/vm/{id}/swtpm.pid"));
    let tpm = process::read_pid(&pid_file).expect("swtpm pid file");
    let mark = guest::log_len(&log);
    process::signal(tpm, libc::SIGKILL).unwrap();
    let seen = events_until(&h, "win", BOOT, |seen| {
        seen.contains(&E::TpmDied) && seen.last().is_some_and(|e| *e == E::Stopped)
    });
    let tail: Vec<E> = seen.into_iter().skip_while(|e| *e != E::TpmDied).collect();
    assert_eq!(tail, [E::TpmDied, E::Stopping, E::Stopped]);
    let shown = h.show("win");
    assert_eq!(shown.state, VmState::Stopped);
    assert!(
        shown.last_error.as_deref().unwrap_or("").contains("swtpm"),
        "{shown:?}"
    );
    let health = h.client().health().unwrap();
    assert!(
        health.notes.iter().any(|n| n.contains("swtpm")),
        "{:?}",
        health.notes
    );
    guest::wait_for_line(&log, mark, "POWER button pressed", BOOT)
        .expect("the guest was shut down through ACPI");

    let mark = guest::log_len(&log);
    h.ok(&["start", "win"]);
    assert_eq!(
        guest::wait_for_line(&log, mark, "TPMNV ", BOOT).unwrap(),
        format!("TPMNV found {nv}")
    );
    h.ok(&["stop", "win", "--force"]);
}

/// `rayos policy ARGS` against the host's daemon (or its data volume when
/// the daemon is not running).
fn policy(h: &Host, args: &[&str]) -> Output {
    rayos()
        .arg("policy")
        .arg("--socket")
        .arg(h.socket())
        .arg("--state-dir")
        .arg(h.state())
        .args(args)
        .output()
        .unwrap()
}

fn qemu_argv(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn policy_set_is_checked_saved_and_used_by_the_running_daemon() {
    let mut h = Host::new();
    h.policy("version = 1\n[linux]\nautostart = false\n");
    h.start_daemon();
    h.create_guest("lin", &[]);
    h.ok(&["start", "lin"]);
    let pid = h.show("lin").pid.expect("running");
    assert!(!qemu_argv(pid).contains("-netdev"), "{}", qemu_argv(pid));

    // A bad value is refused with what to do; nothing is written.
    let file = h.state().join("policy/rayos-policy.toml");
    let before = fs::read_to_string(&file).unwrap();
    let o = policy(&h, &["set", "linux.networking", "maybe"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("off, on or provisioning_only"), "{err}");
    assert_eq!(fs::read_to_string(&file).unwrap(), before);

    // A good one: saved (old generation kept), the answer says when.
    let o = policy(&h, &["set", "linux.networking", "on"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("linux.networking = on (was off): takes effect at the VM's next cold start"),
        "{out}"
    );
    assert!(out.contains("VM lin is running"), "{out}");
    assert_eq!(
        fs::read_to_string(h.state().join("policy/rayos-policy.toml.prev")).unwrap(),
        before
    );
    let o = policy(&h, &["show"]);
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(
        shown
            .lines()
            .any(|l| l.split_whitespace().eq(["linux.networking", "on"])),
        "{shown}"
    );
    // The running device model is untouched; the next cold start has a NIC.
    assert!(!qemu_argv(pid).contains("-netdev"));
    h.ok(&["stop", "lin", "--force"]);
    h.ok(&["start", "lin", "--fresh"]);
    let info = h.show("lin");
    assert!(info.network);
    let argv = qemu_argv(info.pid.expect("running"));
    assert!(argv.contains("-netdev user,id=net0"), "{argv}");

    // Enabling a kind applies at once: no daemon restart.
    let o = h.vm(&["create", "w", "--kind", "generic", "--disk", "8M"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = policy(&h, &["set", "generic.enabled", "false"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("takes effect now"));
    let o = h.vm(&["start", "w"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("rayos policy set generic.enabled true"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Without rayosd the file is checked and written the same way, and
    // the answer says when the change is used.
    h.ok(&["stop", "lin", "--force"]);
    h.kill_daemon();
    let o = policy(&h, &["set", "linux.cpus", "0"]);
    assert_eq!(o.status.code(), Some(2));
    let o = policy(&h, &["set", "linux.autostart", "true"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("when rayosd starts"), "{out}");
    h.start_daemon();
    let p = h.client().policy().unwrap();
    assert!(
        p.settings
            .contains(&("linux.autostart".into(), "true".into()))
    );
    assert!(
        p.settings
            .contains(&("generic.enabled".into(), "false".into()))
    );
}

// ----- the agent bridge (issue #16) -----

/// `rayos vm ARGS` that must fail; returns (exit code, stderr).
fn fails(h: &Host, args: &[&str]) -> (i32, String) {
    let o = h.vm(args);
    assert!(
        !o.status.success(),
        "rayos vm {args:?} succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The agent bridge against the real daemon, QEMU and the test guest:
/// a hidden VM refuses injected input unless asked; text typed through
/// the US layout (capitals, punctuation) is what the guest's VT reads; a
/// click lands on the tablet at the screen position asked for; a console
/// write reaches the guest's serial port (its tty echoes it); exec runs
/// programs through the guest agent with their output, exit code, time
/// limit and refusal.
#[test]
fn agent_bridge_types_clicks_writes_and_runs_commands_in_a_real_guest() {
    let mut h = Host::new();
    h.policy("version = 1\n[linux]\nautostart = false\n");
    h.start_daemon();
    let g = guest::linux_guest().expect("test guest");
    let cmdline = format!("{} rayos.tty=1 rayos.pointer=1", g.cmdline);
    h.ok(&[
        "create",
        "lin",
        "--kind",
        "linux",
        "--memory",
        "256",
        "--kernel",
        g.kernel.to_str().unwrap(),
        "--initrd",
        g.initrd.to_str().unwrap(),
        "--cmdline",
        &cmdline,
    ]);
    h.ok(&["start", "lin"]);
    let log = h.console("lin");
    for ready in ["TTY ready", "POINTER ready"] {
        guest::wait_for_line(&log, 0, ready, BOOT).unwrap();
    }
    guest::wait_counter_above(&log, 0, Some(1), BOOT).unwrap();

    // Hidden (not presented): refused, and nothing reaches the guest.
    let (code, err) = fails(&h, &["type", "lin", "refused", "--enter"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not presented"), "{err}");

    // Presented: typed as the guest's keyboard layout reads it.
    h.ok(&["present", "lin"]);
    let text = "Hello, World! <a_b> ~42";
    h.ok(&["type", "lin", text, "--enter"]);
    let typed = whole_line(&log, "TYPED ");
    assert_eq!(typed, format!("TYPED {text}"));

    // Hidden again, with the explicit flag: taken.
    h.ok(&["hide", "lin"]);
    let from = guest::log_len(&log);
    h.ok(&["type", "lin", "--hidden", "second", "--enter"]);
    exact_line(&log, from, "TYPED second");
    assert!(
        !guest::read_from(&log, 0).unwrap().contains("refused"),
        "the refused text reached the guest"
    );

    // A right click at (100, 50) of the screen as screenshots show it.
    let from = guest::log_len(&log);
    let out = h.ok(&[
        "--json", "click", "lin", "100", "50", "--button", "right", "--hidden",
    ]);
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    let (w, hgt) = (
        reply["screen"][0].as_u64().unwrap(),
        reply["screen"][1].as_u64().unwrap(),
    );
    let png = h.client().screenshot("lin").unwrap();
    let be = |i: usize| u64::from(u32::from_be_bytes(png[i..i + 4].try_into().unwrap()));
    assert_eq!(
        (w, hgt),
        (be(16), be(20)),
        "the screen size is the screenshot's"
    );
    for line in [
        format!("POINTER ABS 0 {}", 100 * 0x7fff / (w - 1)),
        format!("POINTER ABS 1 {}", 50 * 0x7fff / (hgt - 1)),
        // BTN_RIGHT pressed and released.
        "POINTER BTN 273 1".to_string(),
        "POINTER BTN 273 0".to_string(),
    ] {
        exact_line(&log, from, &line);
    }

    // The serial console: the guest's tty echoes what it receives.
    h.ok(&["send", "lin", "serial-says-hi"]);
    guest::wait_for_line(&log, 0, "serial-says-hi", BOOT).unwrap();

    // exec: output and exit code through the guest agent.
    let o = h.vm(&["exec", "lin", "--", "/bin/echo", "from", "the", "guest"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "from the guest\n");
    // `vm exec` exits with the program's code, also with --json.
    let o = h.vm(&["--json", "exec", "lin", "--", "/bin/ls", "/nonexistent"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let r: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{e}: {out}{}", String::from_utf8_lossy(&o.stderr)));
    assert_ne!(r["exit_code"], 0, "{r}");
    assert!(r["stderr"].as_str().unwrap().contains("nonexistent"), "{r}");
    assert_eq!(
        h.vm(&["exec", "lin", "--", "/bin/false"]).status.code(),
        Some(1)
    );
    let (code, err) = fails(
        &h,
        &["exec", "lin", "--timeout", "2", "--", "/bin/sleep", "60"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("still runs after the time limit"), "{err}");
    let (_, err) = fails(&h, &["exec", "lin", "--", "/no/such/program"]);
    assert!(
        err.contains("refused") && err.contains("/no/such/program"),
        "{err}"
    );

    h.ok(&["stop", "lin", "--force"]);
    let (_, err) = fails(&h, &["type", "lin", "--hidden", "x"]);
    assert!(err.contains("start it first"), "{err}");
}

/// Text for a VM is typed with its keyboard layout, end to end: the
/// machine's keyboard is German (`machine.toml`), the VM has no
/// first-boot settings, so its text is typed as German keys; the test
/// guest loads Debian's German console keymap (`rayos.keymap=de`) and its
/// VT reads exactly the text, y and z (swapped on German keyboards),
/// shifted digits, AltGr characters and umlauts included. With the US
/// keys the guest would read `zy` for `yz`.
#[test]
fn agent_bridge_types_with_the_vms_keyboard_layout_in_a_real_guest() {
    let mut h = Host::new();
    h.policy("version = 1\n[linux]\nautostart = false\n");
    let machine = rayos_state::MachineConfig::new("rayos", "UTC", "C.UTF-8", "de");
    fs::write(h.state().join("machine.toml"), machine.to_toml()).unwrap();
    h.start_daemon();
    let g = guest::linux_guest().expect("test guest");
    let cmdline = format!("{} rayos.tty=1 rayos.keymap=de", g.cmdline);
    h.ok(&[
        "create",
        "lin",
        "--kind",
        "linux",
        "--memory",
        "256",
        "--kernel",
        g.kernel.to_str().unwrap(),
        "--initrd",
        g.initrd.to_str().unwrap(),
        "--cmdline",
        &cmdline,
    ]);
    h.ok(&["start", "lin"]);
    let log = h.console("lin");
    for ready in ["KEYMAP de", "TTY ready"] {
        guest::wait_for_line(&log, 0, ready, BOOT).unwrap();
    }

    let text = "yz-() Yes, Zoo: 1/2=3? @{[]}\\|~ Grüße äÖ";
    let want = text.replace('~', "");
    // `~` is a dead key on console-data's German keymap: refused, and
    // nothing of the text is sent.
    let (_, err) = fails(&h, &["type", "lin", "--hidden", text]);
    assert!(err.contains("'~'") && err.contains("\"de\""), "{err}");
    h.ok(&["type", "lin", "--hidden", &want, "--enter"]);
    let typed = whole_line(&log, "TYPED ");
    assert_eq!(typed, format!("TYPED {want}"));
    h.ok(&["stop", "lin", "--force"]);
}

/// An MCP client session over `rayos mcp`'s stdio against the real daemon
/// and a running test guest: the handshake, the tool list, `list_vms`, a
/// screenshot that is the VM's PNG, input refused for a hidden VM as an
/// error result, and `exec` through the guest agent.
#[test]
fn mcp_session_lists_tools_and_takes_a_screenshot() {
    use base64ct::Encoding as _;
    use std::io::{BufRead, BufReader};

    let mut h = Host::new();
    h.policy("version = 1\n[linux]\nautostart = false\n");
    h.start_daemon();
    h.create_guest("lin", &[]);
    h.ok(&["start", "lin"]);
    guest::wait_counter_above(&h.console("lin"), 0, Some(1), BOOT).unwrap();

    let mut mcp = rayos()
        .arg("mcp")
        .arg("--socket")
        .arg(h.socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdin = mcp.stdin.take().unwrap();
    let mut stdout = BufReader::new(mcp.stdout.take().unwrap());
    let mut next_id = 0;
    let mut call = |method: &str, params: serde_json::Value| -> serde_json::Value {
        next_id += 1;
        let msg = serde_json::json!({"jsonrpc": "2.0", "id": next_id, "method": method, "params": params});
        writeln!(stdin, "{msg}").unwrap();
        // The initialized notification rides along after the handshake.
        if method == "initialize" {
            writeln!(
                stdin,
                r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
            )
            .unwrap();
        }
        stdin.flush().unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(reply["jsonrpc"], "2.0", "{reply}");
        assert_eq!(reply["id"], next_id, "{reply}");
        reply["result"].clone()
    };

    let init = call(
        "initialize",
        serde_json::json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}),
    );
    assert_eq!(init["protocolVersion"], "2025-06-18");
    assert_eq!(init["serverInfo"]["name"], "rayos");

    let tools = call("tools/list", serde_json::json!({}));
    let names: Vec<&str> = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for want in [
        "list_vms",
        "screenshot",
        "type_text",
        "press_keys",
        "click",
        "console_read",
        "console_write",
        "exec",
        "events",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }

    let vms = call(
        "tools/call",
        serde_json::json!({"name": "list_vms", "arguments": {}}),
    );
    assert_eq!(vms["isError"], false, "{vms}");
    let listed: Vec<VmInfo> =
        serde_json::from_str(vms["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].state),
        ("lin", VmState::Running)
    );

    let shot = call(
        "tools/call",
        serde_json::json!({"name": "screenshot", "arguments": {"vm": "lin"}}),
    );
    assert_eq!(shot["isError"], false, "{shot}");
    let image = &shot["content"][0];
    assert_eq!(
        (image["type"].as_str(), image["mimeType"].as_str()),
        (Some("image"), Some("image/png"))
    );
    let png = base64ct::Base64::decode_vec(image["data"].as_str().unwrap()).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // The same screen the API shows (size from the IHDR chunk).
    let api_png = h.client().screenshot("lin").unwrap();
    assert_eq!(png[16..24], api_png[16..24]);

    let typed = call(
        "tools/call",
        serde_json::json!({"name": "type_text", "arguments": {"vm": "lin", "text": "x"}}),
    );
    assert_eq!(typed["isError"], true, "{typed}");
    assert!(
        typed["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("is not presented"),
        "{typed}"
    );

    let ran = call(
        "tools/call",
        serde_json::json!({"name": "exec", "arguments": {"vm": "lin", "path": "/bin/echo", "args": ["mcp-ran-this"]}}),
    );
    assert_eq!(ran["isError"], false, "{ran}");
    let r: serde_json::Value =
        serde_json::from_str(ran["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(
        (r["exit_code"].as_i64(), r["stdout"].as_str()),
        (Some(0), Some("mcp-ran-this\n"))
    );

    drop(stdin);
    let st = mcp.wait().unwrap();
    assert!(
        st.success(),
        "rayos mcp exits cleanly at end of input: {st}"
    );
    h.ok(&["stop", "lin", "--force"]);
}

/// The first line of `log` that contains `needle`, once it is complete
/// (QEMU may be writing it while the test reads).
fn whole_line(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + BOOT;
    loop {
        let text = guest::read_from(log, 0).unwrap();
        if let Some(at) = text.find(needle)
            && let Some(end) = text[at..].find('\n')
        {
            return text[at..at + end].trim_end_matches('\r').to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no whole line with {needle:?} in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until a complete line after byte `from` of `log` is `want`.
fn exact_line(log: &Path, from: u64, want: &str) {
    let deadline = Instant::now() + BOOT;
    loop {
        let text = guest::read_from(log, from).unwrap();
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        if complete.lines().any(|l| l.trim_end_matches('\r') == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no line {want:?} in {}: {complete}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The agent bridge's in-VM channel: with `agent_bridge = "read"` an agent
/// in the VM lists the VMs through the port and is refused input; every
/// call is logged on the data volume; with the policy's default (off) the
/// VM has no port at all.
#[test]
fn in_vm_agent_bridge_follows_the_policy_and_is_logged() {
    let mut h = Host::new();
    h.policy(
        "version = 1\n[linux]\nautostart = false\nagent_bridge = \"read\"\n[generic]\nautostart = false\n",
    );
    h.start_daemon();
    let g = guest::linux_guest().expect("test guest");
    let cmdline = format!("{} rayos.bridge=1", g.cmdline);
    for (name, kind) in [("lin", "linux"), ("gen", "generic")] {
        h.ok(&[
            "create",
            name,
            "--kind",
            kind,
            "--memory",
            "192",
            "--kernel",
            g.kernel.to_str().unwrap(),
            "--initrd",
            g.initrd.to_str().unwrap(),
            "--cmdline",
            &cmdline,
        ]);
        h.ok(&["start", name]);
    }

    // Read access: the list comes back; acting is refused by policy.
    let log = h.console("lin");
    let listed = whole_line(&log, "BRIDGE list_vms ");
    let reply: serde_json::Value =
        serde_json::from_str(listed.trim_start_matches("BRIDGE list_vms ")).unwrap();
    assert_eq!(reply["result"]["isError"], false, "{reply}");
    let vms: Vec<VmInfo> =
        serde_json::from_str(reply["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    let mut names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["gen", "lin"]);
    let typed = whole_line(&log, "BRIDGE type_text ");
    let reply: serde_json::Value =
        serde_json::from_str(typed.trim_start_matches("BRIDGE type_text ")).unwrap();
    assert_eq!(reply["result"]["isError"], true, "{reply}");
    assert!(
        reply["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("refused by policy"),
        "{reply}"
    );

    // Logged on the data volume: the VM, its access, the call, the outcome.
    let bridge_log = fs::read_to_string(h.state().join("logs/agent-bridge.log")).unwrap();
    assert!(
        bridge_log.contains("vm=lin access=read tools/call list_vms ok"),
        "{bridge_log}"
    );
    assert!(
        bridge_log.contains("vm=lin access=read tools/call type_text refused"),
        "{bridge_log}"
    );

    // Off (the generic policy's default): no port in the guest, no socket.
    let gen_log = h.console("gen");
    guest::wait_for_line(&gen_log, 0, "BRIDGE none", BOOT).unwrap();
    let gen_id = h.show("gen").id.to_string();
    assert!(
        !h.dir()
            .join("run/vm")
            .join(&gen_id)
            .join("bridge.sock")
            .exists()
    );
    assert!(!bridge_log.contains("vm=gen"), "{bridge_log}");

    h.ok(&["stop", "lin", "--force"]);
    h.ok(&["stop", "gen", "--force"]);
}
