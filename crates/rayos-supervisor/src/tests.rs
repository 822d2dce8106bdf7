//! Supervisor behaviour against the fake backend: lifecycle, saved-state
//! rules, policy, faults, daemon restarts, and the HTTP API.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rayos_api::{
    BootKind, Client, CreateRequest, DiskRequest, EventKind as E, StopRequest, VmState,
};
use rayos_state::{Networking, OnHostShutdown, Policy, VmKind};
use rayos_vmm::{Launch, RunState};
use tempfile::TempDir;

use crate::fake::FakeVmm;
use crate::supervisor::{Config, Supervisor};
use crate::{saved, server};

struct Fx {
    dir: TempDir,
    vmm: Arc<FakeVmm>,
    sup: Arc<Supervisor>,
}

fn config(dir: &TempDir) -> Config {
    let mut c = Config::new(dir.path().join("state"), dir.path().join("run"));
    c.restart_backoff = Duration::from_millis(1);
    c.restart_backoff_max = Duration::from_millis(4);
    c.stop_timeout = Duration::from_millis(10);
    c.shutdown_deadline = Duration::from_secs(20);
    c.key_gap = Duration::ZERO;
    c
}

fn write_policy(dir: &TempDir, p: &Policy) {
    let path = dir.path().join("state/policy/rayos-policy.toml");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    rayos_state::write_atomic(&path, p.to_toml().as_bytes()).unwrap();
}

fn open_policy(p: Option<Policy>) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    if let Some(p) = p {
        write_policy(&dir, &p);
    }
    let vmm = FakeVmm::new();
    let sup = Supervisor::open(config(&dir), vmm.clone()).unwrap();
    Fx { dir, vmm, sup }
}

fn open() -> Fx {
    let mut p = Policy::default();
    p.linux.autostart = false;
    open_policy(Some(p))
}

impl Fx {
    /// A new daemon on the same data volume and the same "running" device
    /// models, as after a daemon restart.
    fn restart(self) -> Fx {
        drop(self.sup);
        let sup = Supervisor::open(config(&self.dir), self.vmm.clone()).unwrap();
        Fx { sup, ..self }
    }

    fn id(&self, name: &str) -> uuid::Uuid {
        self.sup.show(name).unwrap().id
    }

    fn state(&self, name: &str) -> VmState {
        self.sup.show(name).unwrap().state
    }

    fn counter(&self, name: &str) -> u64 {
        self.vmm
            .proc(self.id(name))
            .expect("device model runs")
            .counter
    }

    fn events(&self, vm: &str) -> Vec<E> {
        self.sup
            .events
            .history()
            .into_iter()
            .filter(|e| e.vm == vm)
            .map(|e| e.event)
            .collect()
    }
}

/// The events of a VM created, started and suspended.
const SAVED_ONCE: [E; 5] = [E::Created, E::Starting, E::Started, E::Saving, E::Saved];

fn req(name: &str, kind: VmKind) -> CreateRequest {
    CreateRequest {
        memory_mib: Some(256),
        cpus: Some(4),
        ..CreateRequest::new(name, kind)
    }
}

#[test]
fn suspend_then_start_resumes_where_the_guest_was() {
    let f = open();
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    let r = f.sup.start("lin", false).unwrap();
    assert_eq!(r.boot, Some(BootKind::Cold));
    assert_eq!(r.vm.state, VmState::Running);
    assert!(!r.vm.presented, "started hidden");
    f.vmm.tick(f.id("lin"), 41);

    let r = f.sup.suspend("lin").unwrap();
    assert_eq!(r.vm.state, VmState::Saved);
    assert!(r.vm.saved_state.as_ref().is_some_and(|s| s.usable));
    assert!(f.vmm.proc(f.id("lin")).is_none(), "device model ended");

    let r = f.sup.start("lin", false).unwrap();
    assert_eq!(r.boot, Some(BootKind::Resumed));
    assert_eq!(f.counter("lin"), 41, "guest continues");
    let vm_dir = f.sup.layout().vm_dir(f.id("lin"));
    assert!(
        !saved::state_file(&vm_dir).exists(),
        "a consumed state is never loaded twice"
    );
    assert_eq!(
        f.events("lin"),
        [
            E::Created,
            E::Starting,
            E::Started,
            E::Saving,
            E::Saved,
            E::Resuming,
            E::Started
        ]
    );
}

/// A resumed guest's clock is set through its agent during the start when
/// the agent answers; when it does not yet, rayosd keeps trying while the
/// same device model runs, and stops trying once it is gone.
#[test]
fn a_resumed_guests_clock_is_set_now_or_later() {
    let f = open();
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    f.sup.start("lin", false).unwrap();
    assert_eq!(f.vmm.clock_syncs.load(Ordering::SeqCst), 0, "cold boot");
    f.vmm.agent.store(true, Ordering::SeqCst);
    f.sup.suspend("lin").unwrap();
    let r = f.sup.start("lin", false).unwrap();
    assert!(
        r.message
            .contains("guest clock set through the guest agent (from its RTC)"),
        "{}",
        r.message
    );
    assert_eq!(f.vmm.clock_syncs.load(Ordering::SeqCst), 1);

    // The agent answers only a while after the resume.
    f.vmm.agent.store(false, Ordering::SeqCst);
    f.sup.suspend("lin").unwrap();
    let r = f.sup.start("lin", false).unwrap();
    assert!(!r.message.contains("guest clock"), "{}", r.message);
    assert_eq!(f.vmm.clock_syncs.load(Ordering::SeqCst), 1);
    f.vmm.agent.store(true, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while f.vmm.clock_syncs.load(Ordering::SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock was not set once the agent answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Saved before the agent answers: no more tries for that run.
    f.vmm.agent.store(false, Ordering::SeqCst);
    f.sup.suspend("lin").unwrap();
    f.sup.start("lin", false).unwrap();
    f.sup.suspend("lin").unwrap();
    f.vmm.agent.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(f.vmm.clock_syncs.load(Ordering::SeqCst), 2);
}

#[test]
fn fresh_discards_and_cold_boots() {
    let f = open();
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    f.sup.start("lin", false).unwrap();
    f.vmm.tick(f.id("lin"), 7);
    f.sup.suspend("lin").unwrap();
    let r = f.sup.start("lin", true).unwrap();
    assert_eq!(r.boot, Some(BootKind::Cold));
    assert_eq!(f.counter("lin"), 0);
    assert!(r.vm.unusable_states.is_empty(), "fresh deletes, not keeps");
    assert!(r.vm.saved_state.is_none());
    assert_eq!(
        f.events("lin"),
        [&SAVED_ONCE[..], &[E::Discarded, E::Starting, E::Started]].concat()
    );
}

#[test]
fn changed_configuration_keeps_state_aside_and_cold_boots() {
    let f = open();
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    f.sup.start("lin", false).unwrap();
    f.vmm.tick(f.id("lin"), 5);
    f.sup.suspend("lin").unwrap();
    *f.vmm.fingerprint.lock().unwrap() = "fp-2 (QEMU upgraded)".into();
    // Restart so the daemon's fingerprint cache is empty, as after an upgrade.
    let f = f.restart();
    let shown = f.sup.show("lin").unwrap();
    assert_eq!(shown.state, VmState::Saved);
    assert!(
        !shown.saved_state.unwrap().usable,
        "show says it will not be used"
    );

    let r = f.sup.start("lin", false).unwrap();
    assert_eq!(r.boot, Some(BootKind::Cold));
    assert_eq!(f.counter("lin"), 0);
    assert_eq!(r.vm.unusable_states.len(), 1);
    let kept = r.vm.unusable_states[0].join(saved::STATE_FILE);
    assert_eq!(
        fs::read_to_string(kept).unwrap(),
        "FAKESTATE 5",
        "kept intact"
    );
    assert!(r.message.contains("kept as"), "{}", r.message);
    // A new daemon: its event history starts at this start.
    assert_eq!(f.events("lin"), [E::UnusableState, E::Starting, E::Started]);
}

#[test]
fn corrupt_state_file_is_kept_and_the_vm_cold_boots() {
    let f = open();
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    f.sup.start("lin", false).unwrap();
    f.sup.suspend("lin").unwrap();
    let vm_dir = f.sup.layout().vm_dir(f.id("lin"));
    fs::write(saved::state_file(&vm_dir), b"garbage").unwrap();
    let r = f.sup.start("lin", false).unwrap();
    assert_eq!(r.boot, Some(BootKind::Cold));
    assert_eq!(r.vm.state, VmState::Running);
    assert!(r.vm.last_error.unwrap().contains("restoring failed"));
    let kept = r.vm.unusable_states[0].join(saved::STATE_FILE);
    assert_eq!(fs::read(kept).unwrap(), b"garbage");
    let launches: Vec<_> = f
        .vmm
        .launches
        .lock()
        .unwrap()
        .iter()
        .map(|l| l.1.clone())
        .collect();
    assert!(matches!(launches[1], Launch::Restore { .. }) && launches[2] == Launch::Cold);
    assert_eq!(
        f.events("lin"),
        [
            &SAVED_ONCE[..],
            &[E::Resuming, E::RestoreFailed, E::Started]
        ]
        .concat()
    );
}

#[test]
fn failed_launch_leaves_the_vm_stopped_with_the_error() {
    let f = open();
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    f.vmm.fail_launch.store(true, Ordering::SeqCst);
    let e = f.sup.start("lin", false).unwrap_err();
    assert_eq!(e.status(), 500, "{e}");
    let shown = f.sup.show("lin").unwrap();
    assert_eq!(shown.state, VmState::Stopped);
    assert!(
        shown
            .last_error
            .is_some_and(|m| m.contains("fake launch failure")),
    );
    assert_eq!(f.events("lin"), [E::Created, E::Starting, E::StartFailed]);
    f.vmm.fail_launch.store(false, Ordering::SeqCst);
    assert_eq!(
        f.sup.start("lin", false).unwrap().vm.state,
        VmState::Running
    );
}

#[test]
fn failed_save_keeps_the_vm_running_and_leaves_no_state() {
    let f = open();
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    f.vmm.fail_save.store(true, Ordering::SeqCst);
    f.sup.start("lin", false).unwrap();
    let e = f.sup.suspend("lin").unwrap_err();
    assert_eq!(e.status(), 500);
    assert!(
        crate::supervisor::chain(&e).contains("No space left"),
        "{e}"
    );
    let shown = f.sup.show("lin").unwrap();
    assert_eq!(shown.state, VmState::Running);
    assert!(shown.saved_state.is_none());
    assert!(
        !saved::state_dir(&shown.vm_dir)
            .join(saved::META_FILE)
            .exists()
    );
    assert!(f.events("lin").contains(&E::SaveFailed));
}

#[test]
fn wrong_states_are_refused_with_409() {
    let f = open();
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    for e in [
        f.sup.suspend("lin").unwrap_err(),
        f.sup.stop("lin", &StopRequest::default()).unwrap_err(),
        f.sup.present("lin").unwrap_err(),
        f.sup.screenshot("lin").unwrap_err(),
    ] {
        assert_eq!(e.status(), 409, "{e}");
    }
    f.sup.start("lin", false).unwrap();
    assert_eq!(f.sup.start("lin", false).unwrap_err().status(), 409);
    assert_eq!(f.sup.delete("lin", false).unwrap_err().status(), 409);
    assert_eq!(f.sup.start("nope", false).unwrap_err().status(), 404);
    assert_eq!(
        f.sup
            .create(&req("lin", VmKind::Linux))
            .unwrap_err()
            .status(),
        409
    );
    assert_eq!(
        f.sup
            .create(&req("Bad", VmKind::Linux))
            .unwrap_err()
            .status(),
        400
    );
}

/// Each refusal says the state and what to do instead, in every state a
/// person meets: stopped, running, saved.
#[test]
fn wrong_state_refusals_say_what_to_do() {
    let f = open();
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    let msg = |e: crate::OpError| {
        assert_eq!(e.status(), 409, "{e}");
        e.to_string()
    };
    let not_running = "VM lin is stopped: cannot suspend it (it is not running)";
    assert_eq!(msg(f.sup.suspend("lin").unwrap_err()), not_running);
    assert_eq!(
        msg(f.sup.stop("lin", &StopRequest::default()).unwrap_err()),
        "VM lin is stopped: cannot stop it (it is not running)"
    );
    assert_eq!(
        msg(f.sup.present("lin").unwrap_err()),
        "VM lin is stopped: cannot present it: start it first"
    );
    assert_eq!(
        msg(f.sup.screenshot("lin").unwrap_err()),
        "VM lin is stopped: cannot take a screenshot of it: start it first"
    );
    f.sup.start("lin", false).unwrap();
    assert_eq!(
        msg(f.sup.start("lin", false).unwrap_err()),
        "VM lin is running: cannot start it (it already runs)"
    );
    assert_eq!(
        msg(f.sup.delete("lin", false).unwrap_err()),
        "VM lin is running: cannot delete it: stop it first"
    );
    f.sup.suspend("lin").unwrap();
    assert_eq!(
        msg(f.sup.stop("lin", &StopRequest::default()).unwrap_err()),
        "VM lin is saved: cannot stop it (it is saved, not running: `start` resumes it, \
         `start --fresh` discards the state)"
    );
    assert_eq!(
        msg(f.sup.suspend("lin").unwrap_err()),
        "VM lin is saved: cannot suspend it (it is not running)"
    );
}

#[test]
fn stop_uses_acpi_then_kill() {
    let f = open();
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    f.sup.start("lin", false).unwrap();
    let r = f.sup.stop("lin", &StopRequest::default()).unwrap();
    assert!(
        r.message.contains("shut down by the guest"),
        "{}",
        r.message
    );
    assert_eq!(r.vm.state, VmState::Stopped);

    f.vmm.ignore_acpi.store(true, Ordering::SeqCst);
    f.sup.start("lin", false).unwrap();
    let r = f.sup.stop("lin", &StopRequest::default()).unwrap();
    assert!(
        r.message.contains("did not shut down in time"),
        "{}",
        r.message
    );
    assert!(f.vmm.proc(f.id("lin")).is_none());
}

#[test]
fn stop_asks_the_guest_agent_before_acpi() {
    let f = open();
    f.vmm.agent.store(true, Ordering::SeqCst);
    // ACPI is ignored: only the agent can shut this guest down cleanly.
    f.vmm.ignore_acpi.store(true, Ordering::SeqCst);
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    f.sup.start("lin", false).unwrap();
    let r = f.sup.stop("lin", &StopRequest::default()).unwrap();
    assert!(
        r.message.contains("through its guest agent"),
        "{}",
        r.message
    );
    assert_eq!(f.vmm.agent_shutdowns.load(Ordering::SeqCst), 1);
    assert_eq!(r.vm.state, VmState::Stopped);
    // No agent: the power button, as before.
    f.vmm.agent.store(false, Ordering::SeqCst);
    f.vmm.ignore_acpi.store(false, Ordering::SeqCst);
    f.sup.start("lin", false).unwrap();
    let r = f.sup.stop("lin", &StopRequest::default()).unwrap();
    assert!(
        r.message.ends_with("shut down by the guest"),
        "{}",
        r.message
    );
    assert_eq!(f.vmm.agent_shutdowns.load(Ordering::SeqCst), 1);
}

#[test]
fn show_reports_what_the_guest_agent_says() {
    let f = open();
    f.vmm.agent.store(true, Ordering::SeqCst);
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    assert_eq!(f.sup.show("lin").unwrap().guest, None, "not running");
    f.sup.start("lin", false).unwrap();
    let v = f.sup.show("lin").unwrap();
    let g = v.guest.expect("agent answers");
    assert_eq!(g.hostname.as_deref(), Some("fakehost"));
    assert_eq!(g.addresses, ["eth0 10.0.2.15/24"]);
    assert!(v.console_socket.is_some());
    // list does not ask the agents (it answers at once for every VM).
    assert_eq!(f.sup.list()[0].guest, None);
    f.vmm.agent.store(false, Ordering::SeqCst);
    f.sup.stop("lin", &StopRequest::default()).unwrap();
    f.sup.start("lin", false).unwrap();
    assert_eq!(f.sup.show("lin").unwrap().guest, None, "no agent");
}

#[test]
fn one_vm_presented_at_a_time() {
    let f = open();
    f.sup.create(&req("a", VmKind::Linux)).unwrap();
    f.sup.create(&req("b", VmKind::Generic)).unwrap();
    f.sup.start("a", false).unwrap();
    f.sup.start("b", false).unwrap();
    f.sup.present("a").unwrap();
    let r = f.sup.present("b").unwrap();
    assert!(r.message.contains("a is hidden"), "{}", r.message);
    assert!(!f.sup.show("a").unwrap().presented);
    assert!(f.sup.show("b").unwrap().presented);
    assert!(f.sup.show("b").unwrap().vnc_socket.is_some());
    f.sup.hide("b").unwrap();
    assert!(f.sup.list().iter().all(|v| !v.presented));
    // Leaving "running" clears the flag.
    f.sup.present("a").unwrap();
    f.sup.suspend("a").unwrap();
    assert!(!f.sup.show("a").unwrap().presented);
}

#[test]
fn policy_limits_networking_and_enabled() {
    let mut p = Policy::default();
    p.linux.autostart = false;
    p.linux.cpus = Some(2);
    p.linux.memory_mib = Some(128);
    p.windows.enabled = true;
    p.windows.networking = Networking::ProvisioningOnly;
    p.generic.enabled = false;
    let f = open_policy(Some(p));
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    let iso = f.dir.path().join("win.iso");
    fs::write(&iso, b"iso").unwrap();
    let mut w = req("win", VmKind::Windows);
    w.media = vec![iso];
    f.sup.create(&w).unwrap();
    f.sup.create(&req("gen", VmKind::Generic)).unwrap();

    let lin = f.sup.show("lin").unwrap();
    assert_eq!((lin.cpus, lin.memory_mib, lin.network), (2, 128, false));
    let win = f.sup.show("win").unwrap();
    assert!(win.network && !win.provisioned && win.tpm);
    assert_eq!(f.sup.start("gen", false).unwrap_err().status(), 403);

    f.sup.start("lin", false).unwrap();
    let p = f.vmm.proc(f.id("lin")).unwrap();
    assert_eq!(
        (p.spec_cpus, p.network),
        (2, false),
        "the backend gets the capped spec"
    );
    f.sup.provisioned("win").unwrap();
    assert!(
        !f.sup.show("win").unwrap().network,
        "provisioning_only ends"
    );
    // Persisted in the registry.
    let f = f.restart();
    assert!(f.sup.show("win").unwrap().provisioned);
}

#[test]
fn set_policy_writes_atomically_and_applies_at_once() {
    let f = open();
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    f.sup.create(&req("win", VmKind::Windows)).unwrap();
    let path = f.dir.path().join("state/policy/rayos-policy.toml");
    let before = fs::read_to_string(&path).unwrap();
    assert_eq!(f.sup.start("win", false).unwrap_err().status(), 403);

    // Invalid text: refused with its line, nothing written or swapped.
    let e = f
        .sup
        .set_policy("version = 1\n[linux]\nautostrat = true\n")
        .unwrap_err();
    assert_eq!(e.status(), 400);
    assert!(e.to_string().contains(":3:"), "{e}");
    assert_eq!(fs::read_to_string(&path).unwrap(), before);

    f.sup.start("lin", false).unwrap();
    let mut p = f.sup.policy();
    p.set("windows.enabled", "true").unwrap();
    p.set("linux.networking", "on").unwrap();
    p.set("linux.autostart", "true").unwrap();
    let r = f.sup.set_policy(&p.to_toml()).unwrap();
    let keys: Vec<_> = r.changes.iter().map(|c| (c.key.as_str(), c.when)).collect();
    use rayos_state::Effect;
    assert_eq!(
        keys,
        [
            ("linux.autostart", Effect::NextBoot),
            ("linux.networking", Effect::NextStart),
            ("windows.enabled", Effect::Now),
        ]
    );
    // The running Linux VM keeps its device model and is told so.
    assert!(
        r.notes.iter().any(|n| n.contains("VM lin is running")),
        "{:?}",
        r.notes
    );
    assert!(!f.vmm.proc(f.id("lin")).unwrap().network);
    // Written with the previous generation kept, and used at once.
    assert_eq!(fs::read_to_string(&path).unwrap(), p.to_toml());
    assert_eq!(
        fs::read_to_string(rayos_state::atomic::previous_path(&path)).unwrap(),
        before
    );
    assert_eq!(f.sup.policy(), p);
    f.sup.start("win", false).unwrap();
    // Networking applies at the next cold start.
    f.sup.stop("lin", &StopRequest::default()).unwrap();
    f.sup.start("lin", true).unwrap();
    assert!(f.vmm.proc(f.id("lin")).unwrap().network);
    // A new daemon reads what was written.
    let f = f.restart();
    assert_eq!(f.sup.policy(), p);
}

#[test]
fn policy_over_the_api() {
    let a = api();
    let f = &a.f;
    let c = Client::new(&a.socket);
    let got = c.policy().unwrap();
    assert!(
        got.settings
            .contains(&("linux.autostart".into(), "false".into()))
    );
    let e = c.set_policy("version = 2\n").unwrap_err();
    assert_eq!(e.status(), Some(400));
    let mut p = f.sup.policy();
    p.set("linux.present_on_boot", "true").unwrap();
    let r = c.set_policy(&p.to_toml()).unwrap();
    assert_eq!(r.changes.len(), 1);
    assert_eq!(r.changes[0].key, "linux.present_on_boot");
    assert_eq!(f.sup.policy(), p);
}

#[test]
fn a_vm_whose_storage_partition_is_not_mounted_is_not_started() {
    let f = open();
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    let dir = f.sup.layout().vm_dir(f.id("lin"));
    // What the installer leaves on the data volume for a VM on its own
    // partition; rayos init mounts the partition over it.
    fs::create_dir_all(&dir).unwrap();
    let marker = dir.join(rayos_state::layout::vm::STORAGE_MARKER);
    fs::write(
        &marker,
        rayos_state::layout::storage_marker_text("rayos-vm-linux"),
    )
    .unwrap();
    let before: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let e = f.sup.start("lin", false).unwrap_err();
    assert_eq!(e.status(), 409);
    assert!(e.to_string().contains("rayos-vm-linux"), "{e}");
    assert!(f.vmm.proc(f.id("lin")).is_none(), "no device model");
    let after: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(before, after, "nothing is created in the VM's directory");
    // Autostart skips it the same way, with a note.
    let mut p = f.sup.policy();
    p.set("linux.autostart", "true").unwrap();
    f.sup.set_policy(&p.to_toml()).unwrap();
    let failed = f.sup.autostart();
    assert_eq!(failed.len(), 1);
    assert!(failed[0].1.contains("not mounted"), "{failed:?}");
    // Once the partition is mounted (the marker hidden), it starts.
    fs::remove_file(&marker).unwrap();
    f.sup.start("lin", false).unwrap();
}

#[test]
fn missing_policy_fails_closed() {
    let f = open_policy(None);
    assert!(f.sup.policy() == Policy::closed());
    assert!(
        f.sup
            .health()
            .notes
            .iter()
            .any(|n| n.contains("closed policy"))
    );
}

#[test]
fn crash_keeps_console_and_restarts_with_backoff() {
    let f = open();
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    f.sup.start("lin", false).unwrap();
    let vm_dir = f.sup.layout().vm_dir(f.id("lin"));
    let log: String = (0..30).map(|i| format!("COUNTER {i}\n")).collect();
    fs::write(vm_dir.join("logs/console.log"), log).unwrap();
    f.vmm.crash(f.id("lin"));
    f.sup.monitor_once();
    let shown = f.sup.show("lin").unwrap();
    assert_eq!(shown.state, VmState::Crashed);
    assert_eq!(shown.crash_count, 1);
    assert_eq!(shown.crash_console.len(), 20);
    assert_eq!(shown.crash_console.last().unwrap(), "COUNTER 29");
    // The backoff (1 ms in this config) passes; the monitor restarts it.
    let mut restarted = false;
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(10));
        f.sup.monitor_once();
        if f.state("lin") == VmState::Running {
            restarted = true;
            break;
        }
    }
    assert!(restarted, "restarted after backoff: {:?}", f.events("lin"));
    for _ in 0..5 {
        f.sup.monitor_once();
    }
    assert_eq!(
        f.vmm.launches.lock().unwrap().len(),
        2,
        "one restart per crash"
    );
    let ev = f.events("lin");
    assert!(ev.contains(&E::Crashed) && ev.contains(&E::Restarting));
    assert_eq!(
        f.sup.show("lin").unwrap().crash_count,
        1,
        "kept until a manual start"
    );
}

#[test]
fn guest_shutdown_stops_and_ends_windows_provisioning() {
    let mut p = Policy::default();
    p.windows.enabled = true;
    p.linux.autostart = false;
    let f = open_policy(Some(p));
    let iso = f.dir.path().join("win.iso");
    fs::write(&iso, b"iso").unwrap();
    let mut w = req("win", VmKind::Windows);
    w.media = vec![iso];
    f.sup.create(&w).unwrap();
    f.sup.start("win", false).unwrap();
    f.vmm.set_state(f.id("win"), RunState::Paused);
    f.sup.monitor_once();
    assert_eq!(f.state("win"), VmState::Paused);
    f.vmm.set_state(f.id("win"), RunState::Shutdown);
    f.sup.monitor_once();
    let shown = f.sup.show("win").unwrap();
    assert_eq!(shown.state, VmState::Stopped, "a shutdown is not a crash");
    assert!(shown.provisioned, "first guest shutdown after install");
    assert!(shown.media.is_empty(), "the media are ejected");
    assert!(f.vmm.proc(shown.id).is_none());
}

/// Installed from a USB stick (no CD): the first power-off ends
/// provisioning too (it did not: only CD media were looked at).
#[test]
fn guest_shutdown_ends_provisioning_from_a_usb_stick() {
    let f = open_policy(Some(windows_policy()));
    let stick = f.dir.path().join("stick.img");
    fs::write(&stick, b"stick").unwrap();
    let mut w = req("win", VmKind::Windows);
    w.usb_media = vec![stick];
    f.sup.create(&w).unwrap();
    f.sup.start("win", false).unwrap();
    f.vmm.set_state(f.id("win"), RunState::Shutdown);
    f.sup.monitor_once();
    let shown = f.sup.show("win").unwrap();
    assert!(shown.provisioned && shown.usb_media.is_empty(), "{shown:?}");
}

#[test]
fn daemon_restart_reattaches_running_vms() {
    let f = open();
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    f.sup.start("lin", false).unwrap();
    let pid = f.sup.show("lin").unwrap().pid;
    f.vmm.tick(f.id("lin"), 3);
    // The daemon dies without any shutdown: its device models keep running.
    let f = f.restart();
    let shown = f.sup.show("lin").unwrap();
    assert_eq!(shown.state, VmState::Running);
    assert_eq!(shown.pid, pid);
    assert_eq!(f.counter("lin"), 3);
    assert_eq!(f.vmm.launches.lock().unwrap().len(), 1, "not relaunched");
    f.sup.suspend("lin").unwrap();
}

#[test]
fn host_shutdown_saves_all_and_autostart_resumes_hidden() {
    let mut p = Policy::default(); // linux autostarts
    p.generic.on_host_shutdown = OnHostShutdown::Shutdown;
    let f = open_policy(Some(p));
    f.sup.create(&req("a", VmKind::Linux)).unwrap();
    f.sup.create(&req("b", VmKind::Linux)).unwrap();
    f.sup.create(&req("g", VmKind::Generic)).unwrap();
    for n in ["a", "b", "g"] {
        f.sup.start(n, false).unwrap();
    }
    f.vmm.tick(f.id("a"), 10);
    f.vmm.tick(f.id("b"), 20);
    f.sup.present("a").unwrap();
    let results = f.sup.shutdown();
    assert_eq!(results.len(), 3, "{results:?}");
    assert_eq!(f.sup.start("a", false).unwrap_err().status(), 503);
    assert_eq!(f.state("a"), VmState::Saved);
    assert_eq!(f.state("b"), VmState::Saved);
    assert_eq!(f.state("g"), VmState::Stopped, "policy: shutdown");

    let f = f.restart();
    let failed = f.sup.autostart();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(f.counter("a"), 10);
    assert_eq!(f.counter("b"), 20);
    assert!(f.sup.list().iter().all(|v| !v.presented), "resumed hidden");
    assert_eq!(f.state("g"), VmState::Stopped, "generic does not autostart");
    assert_eq!(f.sup.show("a").unwrap().last_boot, Some(BootKind::Resumed));
}

#[test]
fn delete_keeps_disks_unless_purged() {
    let f = open();
    let mut r = req("lin", VmKind::Linux);
    r.disks = vec![DiskRequest::Size("16M".into())];
    let info = f.sup.create(&r).unwrap();
    assert!(info.disks[0].exists(), "qcow2 created by qemu-img");
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&info.disks[0])
        .output()
        .expect("qemu-img is installed (scripts/install-deps.sh)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"qcow2\"") && text.contains("16777216"),
        "{text}"
    );
    let r = f.sup.delete("lin", false).unwrap();
    assert!(r.message.contains("kept"), "{}", r.message);
    assert!(info.disks[0].exists());
    assert_eq!(f.sup.show("lin").unwrap_err().status(), 404);

    let info = f.sup.create(&req("two", VmKind::Linux)).unwrap();
    f.sup.delete("two", true).unwrap();
    assert!(!info.vm_dir.exists());
    let f = f.restart();
    assert!(f.sup.list().is_empty(), "deletes are in the registry");
}

#[test]
fn corrupt_registry_uses_previous_generation() {
    let f = open();
    f.sup.create(&req("one", VmKind::Linux)).unwrap();
    f.sup.create(&req("two", VmKind::Linux)).unwrap();
    let reg = f.sup.layout().registry();
    let mut text = fs::read_to_string(&reg).unwrap();
    text.insert(text.len() / 2, '#');
    fs::write(&reg, &text).unwrap();
    let f = f.restart();
    let names: Vec<_> = f.sup.list().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["one"]);
    let h = f.sup.health();
    assert!(h.registry_writable);
    assert!(
        h.notes.iter().any(|n| n.contains("registry.json:")),
        "{:?}",
        h.notes
    );
    assert_eq!(
        fs::read_to_string(&reg).unwrap(),
        text,
        "corrupt file untouched"
    );
}

#[test]
fn a_dead_swtpm_shuts_the_vm_down_once_and_is_reported() {
    let mut p = Policy::default();
    p.linux.autostart = false;
    p.windows.enabled = true;
    let f = open_policy(Some(p));
    f.sup.create(&req("win", VmKind::Windows)).unwrap();
    f.sup.start("win", false).unwrap();
    let id = f.id("win");
    f.sup.monitor_once();
    assert_eq!(
        f.state("win"),
        VmState::Running,
        "swtpm alive: nothing happens"
    );
    f.vmm.kill_tpm(id);
    f.sup.monitor_once();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while f.state("win") != VmState::Stopped {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            f.events("win")
        );
        f.sup.monitor_once();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        f.events("win"),
        [
            E::Created,
            E::Starting,
            E::Started,
            E::TpmDied,
            E::Stopping,
            E::Stopped
        ],
        "reported once, then a clean stop"
    );
    assert!(f.vmm.proc(id).is_none(), "device model ended");
    let shown = f.sup.show("win").unwrap();
    assert!(shown.last_error.unwrap_or_default().contains("swtpm"));
    assert!(f.sup.health().notes.iter().any(|n| n.contains("swtpm")));
    // A fresh start gets a fresh swtpm and a clean slate.
    f.sup.start("win", false).unwrap();
    f.sup.monitor_once();
    assert_eq!(f.state("win"), VmState::Running);
    assert!(f.sup.show("win").unwrap().last_error.is_none());
}

#[test]
fn registry_entries_that_break_the_create_rules_are_kept_but_not_run() {
    let f = open();
    f.sup.create(&req("good", VmKind::Linux)).unwrap();
    let reg = f.sup.layout().registry();
    let mut v: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&reg).unwrap()).unwrap();
    let good = v["vms"][0].clone();
    let mut comma = good.clone();
    comma["id"] = uuid::Uuid::new_v4().to_string().into();
    comma["name"] = "bad,name".into();
    let mut escape = good.clone();
    escape["id"] = uuid::Uuid::new_v4().to_string().into();
    escape["name"] = "escape".into();
    escape["disks"] = serde_json::json!([{"path": "../../../../dev/sda", "format": "raw"}]);
    v["vms"].as_array_mut().unwrap().extend([comma, escape]);
    fs::write(&reg, serde_json::to_string_pretty(&v).unwrap()).unwrap();

    let f = f.restart();
    let names: Vec<_> = f.sup.list().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["good"]);
    let notes = f.sup.health().notes;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("\"bad,name\"") && n.contains("not valid")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("\"escape\"") && n.contains("../../")),
        "{notes:?}"
    );
    // Later registry writes keep them for a person to repair.
    f.sup.create(&req("more", VmKind::Linux)).unwrap();
    let text = fs::read_to_string(&reg).unwrap();
    assert!(
        text.contains("bad,name") && text.contains("escape"),
        "{text}"
    );
}

#[test]
fn vm_directories_are_private_and_old_ones_are_tightened() {
    let f = open();
    let info = f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&info.vm_dir), 0o700);
    // As an older RayOS left it: readable by everyone.
    let state = info.vm_dir.join("state/vm.state");
    fs::write(&state, b"FAKESTATE 1").unwrap();
    fs::set_permissions(&state, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&info.vm_dir, fs::Permissions::from_mode(0o755)).unwrap();
    let f = f.restart();
    assert_eq!(mode(&info.vm_dir), 0o700);
    assert_eq!(mode(&state), 0o600);
    assert!(
        f.sup
            .health()
            .notes
            .iter()
            .any(|n| n.contains("private to root")),
        "{:?}",
        f.sup.health().notes
    );
}

// ----- HTTP API -----

struct Api {
    f: Fx,
    socket: std::path::PathBuf,
}

fn api() -> Api {
    let f = open();
    let socket = f.dir.path().join("run/api.sock");
    let l = server::bind(&socket).unwrap();
    let sup = Arc::clone(&f.sup);
    std::thread::spawn(move || server::serve(sup, l, server::ServerLimits::default()));
    Api { f, socket }
}

fn raw(socket: &std::path::Path, bytes: &[u8]) -> (u16, String) {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    (status, out)
}

fn post(socket: &std::path::Path, path: &str, body: &str) -> (u16, String) {
    raw(
        socket,
        format!(
            "POST {path} HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

#[test]
fn api_round_trip_through_the_client() {
    let a = api();
    let mode = fs::metadata(&a.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let c = Client::new(&a.socket);
    assert_eq!(c.health().unwrap().status, "ok");
    c.create(&req("lin", VmKind::Linux)).unwrap();
    assert_eq!(c.list().unwrap().len(), 1);
    assert_eq!(c.start("lin", false).unwrap().boot, Some(BootKind::Cold));
    let png = c.screenshot("lin").unwrap();
    assert!(png.starts_with(b"\x89PNG"));
    c.action("lin", "present", None::<&()>).unwrap();
    assert!(c.show("lin").unwrap().presented);
    c.action("lin", "suspend", None::<&()>).unwrap();
    assert_eq!(c.start("lin", false).unwrap().boot, Some(BootKind::Resumed));
    assert!(c.console("lin", 5).unwrap().lines.is_empty());
    let e = c.show("nope").unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert!(e.to_string().contains("rayos vm list"), "{e}");

    // The event stream replays history and then follows.
    let mut seen = Vec::new();
    c.events(Some(0), |ev| {
        seen.push(ev.event);
        seen.len() < 3
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(seen, [E::Created, E::Starting, E::Started]);
    drop(a.f);
}

#[test]
fn api_bad_input_gets_4xx_with_a_message() {
    let a = api();
    let s = &a.socket;
    a.f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    let cases: Vec<(u16, (u16, String))> = vec![
        (400, post(s, "/v1/vms", "{not json")),
        (
            400,
            post(
                s,
                "/v1/vms",
                r#"{"name":"x","kind":"linux","colour":"red"}"#,
            ),
        ),
        (400, post(s, "/v1/vms", r#"{"name":"x","kind":"beos"}"#)),
        (
            400,
            post(s, "/v1/vms", r#"{"name":"Has Space","kind":"linux"}"#),
        ),
        (
            400,
            post(
                s,
                "/v1/vms",
                r#"{"name":"x","kind":"linux","disks":[{"size":"lots"}]}"#,
            ),
        ),
        (400, post(s, "/v1/vms/lin/start", r#"{"fresh":"yes"}"#)),
        (400, post(s, "/v1/vms/lin/suspend", r#"{"now":true}"#)),
        (404, post(s, "/v1/vms/ghost/start", "")),
        (409, post(s, "/v1/vms/lin/suspend", "")),
        (409, post(s, "/v1/vms", r#"{"name":"lin","kind":"linux"}"#)),
        (404, raw(s, b"GET /v2/everything HTTP/1.1\r\n\r\n")),
        (405, raw(s, b"PUT /v1/vms HTTP/1.1\r\n\r\n")),
        (405, raw(s, b"GET /v1/vms/lin/start HTTP/1.1\r\n\r\n")),
        (
            400,
            raw(s, b"GET /v1/vms/lin/console?lines=0 HTTP/1.1\r\n\r\n"),
        ),
        (
            400,
            raw(s, b"DELETE /v1/vms/lin?purge=maybe HTTP/1.1\r\n\r\n"),
        ),
        (400, raw(s, b"\x00\x01\x02 garbage\r\n\r\n")),
        (
            413,
            raw(
                s,
                b"POST /v1/vms HTTP/1.1\r\nContent-Length: 50000000\r\n\r\n",
            ),
        ),
        (
            431,
            raw(
                s,
                format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(70_000)).as_bytes(),
            ),
        ),
    ];
    for (want, (got, text)) in cases {
        assert_eq!(got, want, "{text}");
        assert!(text.contains("\"error\""), "has a message: {text}");
    }
    // Still serving, nothing changed.
    let c = Client::new(s);
    assert_eq!(c.list().unwrap().len(), 1);
    assert_eq!(c.show("lin").unwrap().state, VmState::Stopped);
}

#[test]
fn bind_replaces_stale_socket_and_refuses_live_one() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("deep/dir/api.sock");
    let l = server::bind(&p).unwrap();
    assert!(matches!(
        server::bind(&p),
        Err(server::ServeError::InUse(_))
    ));
    drop(l); // the file stays, nobody listens: stale
    assert!(p.exists());
    server::bind(&p).unwrap();
    let f = d.path().join("plain");
    fs::write(&f, b"x").unwrap();
    assert!(
        server::bind(&f).is_err(),
        "a regular file is not ours to delete"
    );
    assert_eq!(fs::read(&f).unwrap(), b"x");
}

fn api_with(limits: server::ServerLimits) -> Api {
    let f = open();
    let socket = f.dir.path().join("run/api.sock");
    let l = server::bind(&socket).unwrap();
    let sup = Arc::clone(&f.sup);
    std::thread::spawn(move || server::serve(sup, l, limits));
    Api { f, socket }
}

/// Reads until the daemon closes (or `wait` passes).
fn read_until_closed(s: &mut UnixStream, wait: Duration) -> String {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn api_sheds_idle_connections_and_cuts_slow_requests() {
    let a = api_with(server::ServerLimits {
        max_connections: 4,
        max_event_streams: 2,
        request_deadline: Duration::from_secs(2),
    });
    let s = &a.socket;
    let mut idle: Vec<UnixStream> = (0..4).map(|_| UnixStream::connect(s).unwrap()).collect();
    // Idle for longer than a client that is just sending its request.
    std::thread::sleep(Duration::from_millis(700));
    for _ in 0..3 {
        let (status, text) = raw(s, b"GET /v1/health HTTP/1.1\r\n\r\n");
        assert_eq!(status, 200, "{text}");
    }
    // The oldest idle connection made room for the first, with a 503
    // (the later ones found a free place).
    let text = read_until_closed(&mut idle[0], Duration::from_secs(5));
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    // The others are cut at the deadline with a 408, as is a client that
    // sends a byte at a time.
    let mut slow = UnixStream::connect(s).unwrap();
    let writer = {
        let mut w = slow.try_clone().unwrap();
        std::thread::spawn(move || {
            for b in b"GET /v1/health HTTP/1.1\r\nX: aaaaaaaaaaaaaaaa" {
                if w.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    for c in &mut idle[1..] {
        let text = read_until_closed(c, Duration::from_secs(10));
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    }
    let text = read_until_closed(&mut slow, Duration::from_secs(10));
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    writer.join().unwrap();

    // Streams have their own cap: a third ends the oldest, cleanly, and
    // none of them keeps /v1/health from answering.
    let mut streams: Vec<UnixStream> = (0..3)
        .map(|_| {
            let mut c = UnixStream::connect(s).unwrap();
            c.write_all(b"GET /v1/events HTTP/1.1\r\n\r\n").unwrap();
            std::thread::sleep(Duration::from_millis(100));
            c
        })
        .collect();
    let text = read_until_closed(&mut streams[0], Duration::from_secs(5));
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("0\r\n\r\n"),
        "{text:?}"
    );
    assert_eq!(raw(s, b"GET /v1/health HTTP/1.1\r\n\r\n").0, 200);
    a.f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    streams[2]
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("created") {
        let n = streams[2]
            .read(&mut buf)
            .expect("the newest stream still follows");
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn api_busy_everywhere_answers_a_readable_503() {
    let a = api_with(server::ServerLimits {
        max_connections: 1,
        ..Default::default()
    });
    let s = a.socket.clone();
    a.f.sup.create(&req("deaf", VmKind::Linux)).unwrap();
    a.f.vmm.ignore_acpi.store(true, Ordering::SeqCst);
    a.f.sup.start("deaf", false).unwrap();
    // A stop that waits 8 s for a guest that ignores the power button
    // holds the only connection.
    let s2 = s.clone();
    let stopper =
        std::thread::spawn(move || post(&s2, "/v1/vms/deaf/stop", r#"{"timeout_secs":8}"#));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while a.f.state("deaf") != VmState::Stopping {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..3 {
        let (status, text) = raw(&s, b"GET /v1/health HTTP/1.1\r\n\r\n");
        assert_eq!(status, 503, "{text}");
        assert!(
            text.contains("\"error\"") && text.contains("busy"),
            "{text}"
        );
    }
    let (status, text) = stopper.join().unwrap();
    assert_eq!(status, 200, "{text}");
    assert_eq!(raw(&s, b"GET /v1/health HTTP/1.1\r\n\r\n").0, 200);
}

/// `GET /v1/health` and every VM object say which accelerator the backend
/// chose and, under TCG, the backend's reason word for word.
#[test]
fn health_and_vms_report_the_accelerator() {
    use rayos_api::AccelKind;
    use rayos_vmm::{AccelDecision, TcgReason};
    let f = open();
    f.sup.create(&req("one", VmKind::Linux)).unwrap();
    let reason = TcgReason::FirmwareOff.to_string();
    let h = f.sup.health().accel.expect("health has accel");
    assert_eq!(
        (h.accel, h.reason.as_deref()),
        (AccelKind::Tcg, Some(reason.as_str()))
    );
    let vm = f.sup.show("one").unwrap().accel.expect("vm has accel");
    assert_eq!(vm, h);
    *f.vmm.accel.lock().unwrap() = Some(AccelDecision::Kvm);
    let h = f.sup.health().accel.unwrap();
    assert_eq!((h.accel, h.reason), (AccelKind::Kvm, None));
    assert_eq!(
        f.sup.list()[0].accel.as_ref().unwrap().accel,
        AccelKind::Kvm
    );
}

fn windows_policy() -> Policy {
    let mut p = Policy::default();
    p.linux.autostart = false;
    p.windows.enabled = true;
    p
}

fn media_req(
    action: rayos_api::MediaAction,
    source: Option<&std::path::Path>,
) -> rayos_api::MediaRequest {
    rayos_api::MediaRequest {
        action,
        source: source.map(|s| s.to_path_buf()),
        form: None,
        copy: false,
    }
}

/// An ISO 9660 image's first 34 KiB (enough for the form to be detected).
fn iso_file(path: &std::path::Path) {
    let mut b = vec![0u8; 17 * 2048];
    b[16 * 2048..16 * 2048 + 6].copy_from_slice(b"\x01CD001");
    fs::write(path, b).unwrap();
}

#[test]
fn windows_vm_gets_its_default_disk_and_the_seeded_one_at_first_start() {
    let f = open_policy(Some(windows_policy()));
    let info = f.sup.create(&req("win", VmKind::Windows)).unwrap();
    assert_eq!(info.disks.len(), 1, "{:?}", info.disks);
    assert!(info.disks[0].ends_with("disks/system.qcow2"));
    let out = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&info.disks[0])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format"], "qcow2");
    assert_eq!(v["virtual-size"], 64u64 << 30);
    // The installer's seeded VM: the disk is named but not there; the
    // first start creates it.
    fs::remove_file(&info.disks[0]).unwrap();
    let r = f.sup.start("win", false).unwrap();
    assert!(r.message.contains("created its disk"), "{}", r.message);
    assert!(info.disks[0].is_file());
}

#[test]
fn media_attach_and_eject_follow_the_registry_and_the_running_vm() {
    use rayos_api::MediaAction::{Attach, Eject};
    use rayos_vmm::qemu::media::Change;
    let f = open_policy(Some(windows_policy()));
    let iso = f.dir.path().join("win.iso");
    iso_file(&iso);
    let stick = f.dir.path().join("stick.img");
    fs::write(&stick, vec![0u8; 40 * 1024]).unwrap();
    let drivers = f.dir.path().join("drivers.img");
    fs::write(&drivers, vec![0u8; 40 * 1024]).unwrap();
    f.sup.create(&req("win", VmKind::Windows)).unwrap();
    assert!(
        !f.sup.show("win").unwrap().provisioned,
        "windows needs installing"
    );

    // Stopped: the registry only; the ISO is detected as a CD.
    f.sup.media("win", &media_req(Attach, Some(&iso))).unwrap();
    let v = f.sup.show("win").unwrap();
    assert_eq!(v.media, vec![iso.clone()]);
    // A second CD is refused: a Windows VM has one CD drive.
    let iso2 = f.dir.path().join("other.iso");
    iso_file(&iso2);
    let e = f
        .sup
        .media("win", &media_req(Attach, Some(&iso2)))
        .unwrap_err();
    assert_eq!(e.status(), 400, "{e}");
    assert!(e.to_string().contains("one CD drive"), "{e}");

    // Running: through the device model, then the registry.
    f.sup.start("win", false).unwrap();
    f.sup
        .media("win", &media_req(Attach, Some(&stick)))
        .unwrap();
    f.sup
        .media("win", &media_req(Attach, Some(&drivers)))
        .unwrap();
    assert_eq!(
        f.sup.show("win").unwrap().usb_media,
        vec![stick.clone(), drivers.clone()]
    );
    // Not the first stick while a later one is plugged (ports stay fixed).
    let e = f
        .sup
        .media("win", &media_req(Eject, Some(&stick)))
        .unwrap_err();
    assert_eq!(e.status(), 400, "{e}");
    f.sup
        .media("win", &media_req(Eject, Some(&drivers)))
        .unwrap();
    let p = f.vmm.proc(f.id("win")).unwrap();
    assert_eq!(
        p.media_changes,
        vec![
            Change::PlugUsb {
                index: 0,
                path: stick.clone()
            },
            Change::PlugUsb {
                index: 1,
                path: drivers.clone()
            },
            Change::UnplugUsb { index: 1 },
        ]
    );
    // Persisted.
    let f = f.restart();
    let v = f.sup.show("win").unwrap();
    assert_eq!(
        (v.media.clone(), v.usb_media.clone()),
        (vec![iso.clone()], vec![stick.clone()])
    );

    // A saved VM keeps its devices: no change until it runs again.
    f.sup.suspend("win").unwrap();
    let e = f.sup.media("win", &media_req(Eject, None)).unwrap_err();
    assert!(e.to_string().contains("saved"), "{e}");
    f.sup.start("win", false).unwrap();

    // `provisioned` ejects everything at once.
    let ev0 = f.events("win").len();
    f.sup.provisioned("win").unwrap();
    let v = f.sup.show("win").unwrap();
    assert!(v.provisioned && v.media.is_empty() && v.usb_media.is_empty());
    let p = f.vmm.proc(f.id("win")).unwrap();
    assert_eq!(
        p.media_changes,
        vec![Change::EjectCd { index: 0 }, Change::UnplugUsb { index: 0 }],
        "a new device model after the restore"
    );
    assert_eq!(
        f.events("win")[ev0..],
        [E::MediaEjected, E::MediaEjected, E::Provisioned]
    );
}

#[test]
fn media_of_a_running_linux_vm_wait_for_a_stop_and_bad_sources_are_refused() {
    use rayos_api::MediaAction::Attach;
    let f = open();
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    let iso = f.dir.path().join("x.iso");
    iso_file(&iso);
    f.sup.start("lin", false).unwrap();
    let e = f
        .sup
        .media("lin", &media_req(Attach, Some(&iso)))
        .unwrap_err();
    assert!(e.to_string().contains("stopped"), "{e}");
    assert!(f.sup.show("lin").unwrap().media.is_empty());
    // Not a file or a device; a missing file.
    let e = f
        .sup
        .media("lin", &media_req(Attach, Some(f.dir.path())))
        .unwrap_err();
    assert_eq!(e.status(), 400, "{e}");
    let e = f
        .sup
        .media(
            "lin",
            &media_req(Attach, Some(&f.dir.path().join("gone.iso"))),
        )
        .unwrap_err();
    assert_eq!(e.status(), 400, "{e}");
}

#[test]
fn media_copy_lands_on_the_data_volume_and_goes_with_the_eject() {
    use rayos_api::MediaAction::{Attach, Eject};
    let f = open_policy(Some(windows_policy()));
    f.sup.create(&req("win", VmKind::Windows)).unwrap();
    let iso = f.dir.path().join("win.iso");
    iso_file(&iso);
    let mut r = media_req(Attach, Some(&iso));
    r.copy = true;
    f.sup.media("win", &r).unwrap();
    let v = f.sup.show("win").unwrap();
    let copy = v.media[0].clone();
    assert!(copy.starts_with(&v.vm_dir), "{}", copy.display());
    assert_eq!(fs::read(&copy).unwrap(), fs::read(&iso).unwrap());
    assert_eq!(
        fs::metadata(&copy).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(f.events("win").contains(&E::Copying));
    f.sup.media("win", &media_req(Eject, None)).unwrap();
    assert!(!copy.exists(), "RayOS's copy is deleted with the eject");
    assert!(iso.exists(), "the person's file is not");
}

/// A stick unplugged while the VM uses it is ejected from the running VM
/// and the registry, and the event says why.
#[test]
fn an_unplugged_stick_is_ejected_and_logged() {
    let f = open_policy(Some(windows_policy()));
    // A regular file under /dev stands for the stick's device node.
    let stick = std::path::PathBuf::from(format!("/dev/rayos-test-stick-{}", std::process::id()));
    fs::write(&stick, b"stick").unwrap();
    let mut w = req("win", VmKind::Windows);
    w.usb_media = vec![stick.clone()];
    f.sup.create(&w).unwrap();
    f.sup.start("win", false).unwrap();
    f.sup.monitor_once();
    assert_eq!(f.sup.show("win").unwrap().usb_media, vec![stick.clone()]);
    fs::remove_file(&stick).unwrap();
    f.sup.monitor_once();
    let v = f.sup.show("win").unwrap();
    assert!(v.usb_media.is_empty(), "{v:?}");
    assert_eq!(v.state, VmState::Running);
    assert_eq!(
        f.vmm.proc(v.id).unwrap().media_changes,
        vec![rayos_vmm::qemu::media::Change::UnplugUsb { index: 0 }]
    );
    let ev = f.sup.events.history();
    assert!(
        ev.iter()
            .any(|e| e.event == E::MediaEjected && e.detail.contains("unplugged")),
        "{ev:?}"
    );
}

/// `POST /v1/vms/{name}/media` through the HTTP server and the client.
#[test]
fn api_media_endpoint_attaches_ejects_and_refuses_bad_bodies() {
    let a = api();
    let s = &a.socket;
    a.f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    let iso = a.f.dir.path().join("x.iso");
    iso_file(&iso);
    // An empty body is not a request here; unknown fields and actions are
    // refused.
    assert_eq!(post(s, "/v1/vms/lin/media", "").0, 400);
    assert_eq!(post(s, "/v1/vms/lin/media", r#"{"action":"burn"}"#).0, 400);
    assert_eq!(
        post(s, "/v1/vms/lin/media", r#"{"action":"eject","force":true}"#).0,
        400
    );
    assert_eq!(
        post(s, "/v1/vms/ghost/media", r#"{"action":"eject"}"#).0,
        404
    );
    let c = Client::new(s);
    let r = c
        .media(
            "lin",
            &rayos_api::MediaRequest {
                action: rayos_api::MediaAction::Attach,
                source: Some(iso.clone()),
                form: Some(rayos_api::MediaForm::Cdrom),
                copy: false,
            },
        )
        .unwrap();
    assert_eq!(r.vm.media, vec![iso.clone()]);
    let (status, body) = post(s, "/v1/vms/lin/media", r#"{"action":"eject"}"#);
    assert_eq!(status, 200, "{body}");
    assert!(c.show("lin").unwrap().media.is_empty());
    drop(a.f);
}

// ----- agent bridge: input, console writes, exec -----

fn keys(k: &str) -> rayos_api::InputAction {
    rayos_api::InputAction::Key { keys: k.into() }
}

fn input(actions: Vec<rayos_api::InputAction>, hidden: bool) -> rayos_api::InputRequest {
    rayos_api::InputRequest { actions, hidden }
}

#[test]
fn injected_keys_reach_the_guest_in_order_and_are_released_in_reverse() {
    use rayos_vmm::InputEvent::Key;
    let f = open();
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    f.sup.start("lin", false).unwrap();
    f.sup.present("lin").unwrap();
    let text = rayos_api::InputAction::Text { text: "A".into() };
    let r = f
        .sup
        .input("lin", &input(vec![keys("ctrl+alt+del"), text], false))
        .unwrap();
    assert_eq!(r.events, 10);
    let got = f.vmm.proc(f.id("lin")).unwrap().input;
    let k = |qcode, down| Key { qcode, down };
    assert_eq!(
        got,
        [
            k("ctrl", true),
            k("alt", true),
            k("delete", true),
            k("delete", false),
            k("alt", false),
            k("ctrl", false),
            k("shift", true),
            k("a", true),
            k("a", false),
            k("shift", false),
        ]
    );
}

/// The layout text is typed with: the VM's first-boot keyboard, else the
/// machine's, else US; a character the layout cannot type is a 400 that
/// names it, and nothing is sent.
#[test]
fn text_is_typed_with_the_vms_or_the_machines_keyboard_layout() {
    use rayos_vmm::InputEvent::Key;
    let f = open();
    let text = |t: &str| rayos_api::InputAction::Text { text: t.into() };
    let pressed = |f: &Fx, vm: &str| -> Vec<&'static str> {
        f.vmm
            .proc(f.id(vm))
            .unwrap()
            .input
            .iter()
            .filter_map(|e| match e {
                Key { qcode, down: true } => Some(*qcode),
                _ => None,
            })
            .collect()
    };
    f.sup.create(&req("gen", VmKind::Generic)).unwrap();
    let mut lin = req("lin", VmKind::Linux);
    lin.guest = Some(rayos_state::GuestConfig {
        user: "ray".into(),
        password_hash: Some("$6$salt$hash".into()),
        ssh_authorized_key: None,
        hostname: "lin".into(),
        timezone: "UTC".into(),
        locale: "C.UTF-8".into(),
        keyboard: "fr".into(),
    });
    f.sup.create(&lin).unwrap();
    for vm in ["gen", "lin"] {
        f.sup.start(vm, false).unwrap();
    }
    // No machine.toml: US.
    f.sup.input("gen", &input(vec![text("y")], true)).unwrap();
    assert_eq!(pressed(&f, "gen"), ["y"]);
    // The machine's German keyboard: y and z swapped.
    let m = rayos_state::MachineConfig::new("rayos", "UTC", "C.UTF-8", "de");
    fs::write(f.sup.layout().machine(), m.to_toml()).unwrap();
    f.sup.input("gen", &input(vec![text("yZ")], true)).unwrap();
    assert_eq!(pressed(&f, "gen"), ["y", "z", "shift", "y"]);
    // The Linux VM's own (first-boot) French keyboard wins: AZERTY.
    f.sup.input("lin", &input(vec![text("a1")], true)).unwrap();
    assert_eq!(pressed(&f, "lin"), ["q", "shift", "1"]);
    // A dead key on the German layout: refused before anything is sent.
    let e = f
        .sup
        .input("gen", &input(vec![text("ok"), text("2^3")], true))
        .unwrap_err();
    assert_eq!(e.status(), 400);
    assert!(
        e.to_string().contains("'^'") && e.to_string().contains("\"de\""),
        "{e}"
    );
    assert_eq!(pressed(&f, "gen").len(), 4);
    // A layout RayOS has no table for.
    let m = rayos_state::MachineConfig::new("rayos", "UTC", "C.UTF-8", "fr-bepo");
    fs::write(f.sup.layout().machine(), m.to_toml()).unwrap();
    let e = f
        .sup
        .input("gen", &input(vec![text("x")], true))
        .unwrap_err();
    assert_eq!(e.status(), 400);
    assert!(e.to_string().contains("\"fr-bepo\""), "{e}");
    // Keys still work there.
    f.sup.input("gen", &input(vec![keys("x")], true)).unwrap();
}

#[test]
fn a_hidden_vm_takes_injected_input_only_when_asked() {
    let f = open();
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    f.sup.start("lin", false).unwrap();
    let e = f
        .sup
        .input("lin", &input(vec![keys("a")], false))
        .unwrap_err();
    assert_eq!(e.status(), 409);
    assert!(e.to_string().contains("\"hidden\": true"), "{e}");
    assert!(f.vmm.proc(f.id("lin")).unwrap().input.is_empty());
    f.sup.input("lin", &input(vec![keys("a")], true)).unwrap();
    assert_eq!(f.vmm.proc(f.id("lin")).unwrap().input.len(), 2);
}

#[test]
fn physical_input_pauses_injection_into_the_presented_vm() {
    let f = open();
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    f.sup.start("lin", false).unwrap();
    f.sup.present("lin").unwrap();
    f.sup.physical_input();
    let e = f
        .sup
        .input("lin", &input(vec![keys("a")], false))
        .unwrap_err();
    assert_eq!(e.status(), 409);
    assert!(e.to_string().contains("a person is using VM lin"), "{e}");
    // `hidden` does not override the person: the VM is not hidden.
    assert!(f.sup.input("lin", &input(vec![keys("a")], true)).is_err());
    assert!(f.vmm.proc(f.id("lin")).unwrap().input.is_empty());
    std::thread::sleep(Duration::from_millis(2100));
    f.sup.input("lin", &input(vec![keys("a")], false)).unwrap();
    assert_eq!(f.vmm.proc(f.id("lin")).unwrap().input.len(), 2);
}

/// A person who starts typing while an agent's long text is being sent
/// stops it within one key: the rule is checked before every step, the
/// error says how far the text got, and no key is left held down.
#[test]
fn physical_input_stops_a_long_injected_text_within_one_key() {
    use rayos_vmm::InputEvent::Key;
    let dir = tempfile::tempdir().unwrap();
    let mut p = Policy::default();
    p.linux.autostart = false;
    write_policy(&dir, &p);
    let mut cfg = config(&dir);
    // 40 ms per character: 60 characters take 2.4 s.
    cfg.key_gap = Duration::from_millis(20);
    let vmm = FakeVmm::new();
    let sup = Supervisor::open(cfg, vmm.clone()).unwrap();
    let f = Fx { dir, vmm, sup };
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    f.sup.start("lin", false).unwrap();
    f.sup.present("lin").unwrap();
    let text = rayos_api::InputAction::Text {
        text: "x".repeat(60),
    };
    let e = std::thread::scope(|s| {
        let typing = s.spawn(|| f.sup.input("lin", &input(vec![text], false)));
        // The person starts once the first key has reached the guest.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while f.vmm.proc(f.id("lin")).unwrap().input.is_empty() {
            assert!(std::time::Instant::now() < deadline, "no key was sent");
            std::thread::sleep(Duration::from_millis(5));
        }
        f.sup.physical_input();
        typing.join().unwrap().unwrap_err()
    });
    assert_eq!(e.status(), 409);
    let msg = e.to_string();
    assert!(msg.contains("a person is using VM lin"), "{msg}");
    let got = f.vmm.proc(f.id("lin")).unwrap().input;
    let presses = got
        .iter()
        .filter(|e| matches!(e, Key { down: true, .. }))
        .count();
    assert!((1..60).contains(&presses), "{presses} of 60 keys were sent");
    assert!(
        msg.contains(&format!("stopped after {presses} of 60 steps")),
        "{msg}"
    );
    // Every key pressed was released.
    assert_eq!(got.len(), 2 * presses);
    assert_eq!(
        got.last(),
        Some(&Key {
            qcode: "x",
            down: false
        })
    );
}

#[test]
fn clicks_map_screen_pixels_and_need_an_absolute_pointer() {
    use rayos_vmm::InputEvent::{Abs, Button};
    use rayos_vmm::{ABS_MAX, PointerButton};
    let f = open();
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    f.sup.start("lin", false).unwrap();
    let click = |x, y| rayos_api::InputAction::Click {
        x,
        y,
        button: rayos_api::Button::Right,
    };
    // The fake's screen is 800x600.
    let r = f
        .sup
        .input("lin", &input(vec![click(799, 0)], true))
        .unwrap();
    assert_eq!(r.screen, Some([800, 600]));
    assert_eq!(
        f.vmm.proc(f.id("lin")).unwrap().input,
        [
            Abs { x: ABS_MAX, y: 0 },
            Button {
                button: PointerButton::Right,
                down: true
            },
            Button {
                button: PointerButton::Right,
                down: false
            },
        ]
    );
    let e = f
        .sup
        .input("lin", &input(vec![click(800, 10)], true))
        .unwrap_err();
    assert!(
        e.to_string().contains("outside VM lin's screen of 800x600"),
        "{e}"
    );

    // Windows VMs have a USB tablet: clicks go through.
    let f = {
        drop(f);
        open_policy(Some(windows_policy()))
    };
    f.sup.create(&req("win", VmKind::Windows)).unwrap();
    f.sup.start("win", false).unwrap();
    f.sup.present("win").unwrap();
    f.sup
        .input("win", &input(vec![click(1, 1)], false))
        .unwrap();
    // Generic VMs have only a PS/2 mouse.
    f.sup.create(&req("gen", VmKind::Generic)).unwrap();
    f.sup.start("gen", false).unwrap();
    let e = f
        .sup
        .input("gen", &input(vec![click(1, 1)], true))
        .unwrap_err();
    assert_eq!(e.status(), 409);
    assert!(e.to_string().contains("no absolute pointer"), "{e}");
    // Keys still work there.
    f.sup.input("gen", &input(vec![keys("ret")], true)).unwrap();
}

#[test]
fn console_writes_and_exec_go_to_the_running_guest() {
    let f = open();
    f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    let e = f.sup.console_write("lin", "x").unwrap_err();
    assert!(e.to_string().contains("start it first"), "{e}");
    f.sup.start("lin", false).unwrap();
    assert_eq!(f.sup.console_write("lin", "ls\n").unwrap().bytes, 3);
    assert_eq!(f.vmm.proc(f.id("lin")).unwrap().console_in, b"ls\n");
    assert_eq!(f.sup.console_write("lin", "").unwrap_err().status(), 400);

    let run = |path: &str, timeout_secs| rayos_api::ExecRequest {
        path: path.into(),
        args: vec!["hi".into(), "there".into()],
        input: Some("in".into()),
        timeout_secs,
    };
    // No agent answers: a clear refusal, not a hang.
    let e = f.sup.exec("lin", &run("echo", None)).unwrap_err();
    assert_eq!(e.status(), 409);
    assert!(e.to_string().contains("qemu-guest-agent"), "{e}");
    f.vmm.agent.store(true, Ordering::SeqCst);
    let r = f.sup.exec("lin", &run("echo", None)).unwrap();
    assert_eq!(
        (
            r.exit_code,
            r.stdout.as_str(),
            r.stderr.as_str(),
            r.timed_out
        ),
        (Some(0), "hi there\n", "in", false)
    );
    assert_eq!(
        f.sup.exec("lin", &run("nope", None)).unwrap().exit_code,
        Some(127)
    );
    let e = f.sup.exec("lin", &run("echo", Some(0))).unwrap_err();
    assert!(
        e.to_string().contains("timeout_secs must be 1 to 300"),
        "{e}"
    );
}

#[test]
fn agent_bridge_endpoints_speak_json_over_http() {
    let a = api();
    let s = &a.socket;
    a.f.sup.create(&req("lin", VmKind::Linux)).unwrap();
    a.f.sup.start("lin", false).unwrap();
    let (st, out) = post(
        s,
        "/v1/vms/lin/input",
        r#"{"actions":[{"type":"key","keys":"a"}]}"#,
    );
    assert_eq!(st, 409, "{out}");
    let (st, out) = post(
        s,
        "/v1/vms/lin/input",
        r#"{"actions":[{"type":"text","text":"ok"}],"hidden":true}"#,
    );
    assert_eq!(st, 200, "{out}");
    assert!(out.contains(r#""events": 4"#), "{out}");
    let (st, out) = post(
        s,
        "/v1/vms/lin/input",
        r#"{"actions":[{"type":"press","keys":"a"}],"hidden":true}"#,
    );
    assert_eq!(st, 400, "{out}");
    let (st, out) = post(s, "/v1/vms/lin/console", r#"{"text":"root\n"}"#);
    assert_eq!(st, 200, "{out}");
    let (st, out) = post(s, "/v1/vms/lin/exec", r#"{"path":"echo","args":["x"]}"#);
    assert_eq!(st, 409, "{out}");
    let (st, out) = post(s, "/v1/input/physical", "{}");
    assert_eq!(st, 200, "{out}");
    let (st, _) = raw(s, b"GET /v1/vms/lin/exec HTTP/1.1\r\n\r\n");
    assert_eq!(st, 405);
    let c = Client::new(s);
    assert_eq!(c.console_write("lin", "x").unwrap().bytes, 1);
    a.f.vmm.agent.store(true, Ordering::SeqCst);
    let r = c
        .exec(
            "lin",
            &rayos_api::ExecRequest {
                path: "echo".into(),
                args: vec!["y".into()],
                input: None,
                timeout_secs: Some(5),
            },
        )
        .unwrap();
    assert_eq!(r.stdout, "y\n");
    drop(a.f);
}
