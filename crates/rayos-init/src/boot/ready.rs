//! After the steps, once rayosd runs: its health (the first success is
//! `RAYOS_READY`, then the boot is blessed and recorded), then the Linux
//! VM (`RAYOS_LINUX_VM_READY`), learnt from rayosd's API — the VM list,
//! polled, and its event stream, which says at once when a VM started.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rayos_base::error::chain;
use rayos_base::marker::Marker;
use rayos_base::paths;

use super::platform::{Mount, release};
use super::{Platform, State};
use crate::bless::{self, BlessOutcome};
use crate::cmdline::Mode;
use crate::log;

/// How often rayosd's health is asked for once the first
/// [`HEALTH_FAST_FOR`] after its start are over.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// How often it is asked for right after rayosd's start: `RAYOS_READY`
/// comes at most this long after rayosd answers, not up to a second
/// plus a loop tick later (measured with `cargo xtask bench boot`, 5
/// boots: 0.37-0.78 s, median 0.44 s, from rayosd's
/// `RAYOS_DAEMON_READY` to `RAYOS_READY`). A refused connection costs a
/// system call or two.
const HEALTH_EVERY_EARLY: Duration = Duration::from_millis(50);
/// How long after rayosd's start health is asked for every
/// [`HEALTH_EVERY_EARLY`]; a daemon that takes longer is slow for another
/// reason (a KVM probe, a busy machine) and is asked once a second.
const HEALTH_FAST_FOR: Duration = Duration::from_secs(30);
const VM_POLL_EVERY: Duration = Duration::from_secs(2);
/// rayosd not healthy after this long is a fault (the boot stays
/// unblessed, so the loader falls back after the remaining tries).
const HEALTH_PATIENCE: Duration = Duration::from_secs(300);

/// One look, from the main loop.
pub fn tick(st: &mut State, p: &mut dyn Platform) {
    let Some(started) = st.rayosd_started else {
        return;
    };
    if !st.status.ready {
        health(st, p, started);
    } else if !st.status.linux_vm_ready {
        linux_vm(st, p);
    }
}

/// How long the main loop may wait before the next [`tick`]: short while
/// rayosd's first health answer is awaited, so `RAYOS_READY` follows it
/// closely; `idle` otherwise.
pub fn next_wait(st: &State, p: &dyn Platform, idle: Duration) -> Duration {
    match st.rayosd_started {
        Some(started) if !st.status.ready => health_every(p.now(), started).min(idle),
        _ => idle,
    }
}

fn health_every(now: std::time::Instant, started: std::time::Instant) -> Duration {
    if now.saturating_duration_since(started) < HEALTH_FAST_FOR {
        HEALTH_EVERY_EARLY
    } else {
        HEALTH_EVERY
    }
}

fn health(st: &mut State, p: &mut dyn Platform, started: std::time::Instant) {
    let now = p.now();
    let every = health_every(now, started);
    if st
        .last_health_try
        .is_some_and(|t| now.saturating_duration_since(t) < every)
    {
        return;
    }
    st.last_health_try = Some(now);
    match p.health() {
        Ok(h) => {
            st.status.ready = true;
            st.status_dirty = true;
            p.marker(&Marker::Ready);
            log::info(format!(
                "rayosd {} is healthy with {} VMs",
                h.version, h.vms
            ));
            for n in h.notes {
                log::warn(&n);
                st.fault(n);
            }
            bless_boot(st, p);
            super::record::write_boot_record(st, p, "ready");
            // What the boot itself did not need (docs/init.md `modules`).
            if st.params.mode == Mode::Installed {
                p.load_later(super::kernel::REMOVABLE_MODULES);
            }
            st.vm_starts = Some(p.follow_vm_starts());
        }
        Err(e) => {
            if !st.health_warned && now.saturating_duration_since(started) > HEALTH_PATIENCE {
                st.health_warned = true;
                st.fault(format!(
                    "rayosd has not become healthy in 5 minutes ({e}); this boot is not blessed, so the \
                     boot menu falls back to the previous version after the remaining tries. See `logs rayosd`."
                ));
            }
        }
    }
}

fn linux_vm(st: &mut State, p: &mut dyn Platform) {
    // A VM started (rayosd's event stream): look at the list at once
    // instead of at the next poll.
    if let Some(rx) = &st.vm_starts {
        while let Ok(vm) = rx.try_recv() {
            log::detail(format!("rayosd: VM {vm} started"));
            st.last_vm_poll = None;
        }
    }
    let now = p.now();
    if st
        .last_vm_poll
        .is_some_and(|t| now.saturating_duration_since(t) < VM_POLL_EVERY)
    {
        return;
    }
    st.last_vm_poll = Some(now);
    let Ok(vms) = p.vms() else { return };
    let Some(vm) = vms
        .iter()
        .find(|v| v.kind == rayos_state::VmKind::Linux && v.state == rayos_api::VmState::Running)
    else {
        return;
    };
    st.status.linux_vm_ready = true;
    st.status_dirty = true;
    // Nothing more to wait for: the follower ends at its next event.
    st.vm_starts = None;
    p.marker(&Marker::LinuxVmReady);
    log::info(format!(
        "Linux VM {} is running ({})",
        vm.name,
        vm.last_boot.map(|b| b.as_str()).unwrap_or("started")
    ));
}

/// Renames the running UKI without its boot counter (docs/init.md: boot
/// blessing), on the system partition, else the ESP. Installed mode only.
pub fn bless_boot(st: &mut State, p: &mut dyn Platform) {
    if st.params.mode != Mode::Installed {
        return;
    }
    let Some(running) = p.running_uki() else {
        log::detail(
            "bless: the loader did not say which image runs (no systemd-boot?): nothing to bless",
        );
        return;
    };
    let candidates: Vec<(PathBuf, &str)> = st
        .install
        .as_ref()
        .map(|i| {
            i.system
                .iter()
                .map(|d| (d.clone(), "XBOOTLDR"))
                .chain(i.esp.iter().map(|d| (d.clone(), "ESP")))
                .collect()
        })
        .unwrap_or_default();
    for (dev, what) in candidates {
        let blessed = match bless_on(p, &dev, what, &running) {
            Some(Ok(BlessOutcome::Blessed { from, to })) => {
                p.marker(&Marker::Blessed(to.clone()));
                log::info(format!("boot blessed: {from} -> {to}"));
                to
            }
            Some(Ok(BlessOutcome::AlreadyBlessed(n))) => {
                log::detail(format!("bless: {n} is already blessed"));
                n
            }
            Some(Ok(BlessOutcome::Ambiguous(v))) => {
                log::warn(format!(
                    "bless: cannot tell which of {v:?} is running; left as they are (remove the stale one in recovery)"
                ));
                return;
            }
            Some(Ok(BlessOutcome::NotFound(_))) | None => continue,
            Some(Err(e)) => {
                log::warn(format!("bless: {}", chain(&e)));
                return;
            }
        };
        st.status.blessed = Some(blessed);
        commit_schema(st, p);
        return;
    }
    log::detail(format!(
        "bless: {running} is not on this install's system partition"
    ));
}

/// Blesses `running` on the boot partition `dev` (mounted at
/// `/run/rayos/system` for the job); `None` when it cannot be mounted or
/// holds no `EFI/Linux`.
fn bless_on(
    p: &mut dyn Platform,
    dev: &Path,
    what: &str,
    running: &str,
) -> Option<Result<BlessOutcome, rayos_update::entries::EntriesError>> {
    let at = Path::new(paths::SYSTEM);
    let source = dev.to_string_lossy();
    if let Err(e) = p.mount(Mount::boot_partition(&source, at)) {
        log::warn(format!(
            "bless: cannot mount the {what} partition: {}",
            chain(&e)
        ));
        return None;
    }
    let dir = p.path(at).join("EFI/Linux");
    let r = dir.is_dir().then(|| bless::bless(&dir, running));
    // The rename reaches the disk before the partition is let go.
    p.sync();
    let _ = release(p, at);
    r
}

/// The blessed version keeps the migrated data schema: drop the old
/// generation kept for a rollback.
fn commit_schema(st: &mut State, p: &dyn Platform) {
    if !st.data_ok || st.status.data_read_only {
        return;
    }
    let layout = rayos_state::DataLayout::new(p.at(paths::DATA));
    match rayos_update::schema::commit(&layout) {
        Ok(true) => log::info("data schema migration committed (old generation removed)"),
        Ok(false) => {}
        Err(e) => log::warn(format!("data schema: {}", chain(&e))),
    }
    st.schema_migrated = false;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::fake::{self, Call, Fake};
    use crate::volumes::Install;
    use std::fs;

    const COUNTED: &str = "rayos-0.2.0+2-1.efi";

    fn healthy() -> rayos_api::Health {
        rayos_api::Health {
            status: "ok".into(),
            version: "0.2.0".into(),
            pid: 42,
            vms: 1,
            rss_kib: None,
            registry_writable: true,
            notes: Vec::new(),
            accel: None,
        }
    }

    /// An installed boot whose rayosd was just started; the running UKI
    /// still carries its boot counter on the system partition.
    fn booted() -> (State, Fake) {
        let mut p = Fake::new();
        p.running_uki = Some(COUNTED.into());
        p.volume("/dev/vda2", &[(&format!("EFI/Linux/{COUNTED}"), "uki")]);
        let mut st = fake::state();
        st.install = Some(Install {
            disk: "/dev/vda".into(),
            data: "/dev/vda3".into(),
            system: Some("/dev/vda2".into()),
            esp: None,
            others: Vec::new(),
        });
        st.rayosd_started = Some(p.now());
        (st, p)
    }

    fn entries(p: &Fake) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(p.volumes["/dev/vda2"].join("EFI/Linux"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_boot_is_blessed_only_once_rayosd_is_healthy() {
        let (mut st, mut p) = booted();
        for _ in 0..5 {
            tick(&mut st, &mut p);
            p.sleep(HEALTH_EVERY);
        }
        assert!(p.markers.is_empty(), "{:?}", p.markers);
        assert!(
            p.calls.is_empty(),
            "nothing mounted before READY: {:?}",
            p.calls
        );
        assert_eq!(entries(&p), vec![COUNTED]);

        p.health = Ok(healthy());
        tick(&mut st, &mut p);
        assert_eq!(
            p.markers,
            vec![Marker::Ready, Marker::Blessed("rayos-0.2.0.efi".into())]
        );
        assert_eq!(entries(&p), vec!["rayos-0.2.0.efi"]);
        assert_eq!(st.status.blessed.as_deref(), Some("rayos-0.2.0.efi"));
        // Mounted, renamed, synced, let go; then the removable-media
        // drivers the boot left out.
        let tail: Vec<&Call> = p.calls.iter().skip(1).collect();
        assert!(matches!(
            &p.calls[0],
            Call::Mount { source, target, read_only: false, .. }
                if source == "/dev/vda2" && target == Path::new(paths::SYSTEM)
        ));
        let later = Call::LoadLater(
            super::super::kernel::REMOVABLE_MODULES
                .iter()
                .map(|m| m.to_string())
                .collect(),
        );
        assert_eq!(
            tail,
            vec![&Call::Sync, &Call::Unmount(paths::SYSTEM.into()), &later]
        );
        assert!(!p.is_mounted_now(paths::SYSTEM));
        // Once: later ticks look for the Linux VM instead.
        p.sleep(HEALTH_EVERY);
        tick(&mut st, &mut p);
        assert_eq!(p.markers.len(), 2);
    }

    /// Right after rayosd's start its health is asked for often and the
    /// loop waits little, so `RAYOS_READY` follows the first answer
    /// closely; later, and once ready, the loop keeps its idle tick.
    #[test]
    fn health_is_asked_for_often_only_right_after_rayosd_starts() {
        let idle = Duration::from_millis(500);
        let (mut st, mut p) = booted();
        assert_eq!(next_wait(&st, &p, idle), HEALTH_EVERY_EARLY);
        tick(&mut st, &mut p);
        p.sleep(HEALTH_EVERY_EARLY);
        tick(&mut st, &mut p);
        assert!(p.markers.is_empty());
        p.health = Ok(healthy());
        p.sleep(HEALTH_EVERY_EARLY);
        tick(&mut st, &mut p);
        assert_eq!(p.markers.first(), Some(&Marker::Ready));
        assert_eq!(next_wait(&st, &p, idle), idle);

        let (mut st, mut p) = booted();
        p.sleep(HEALTH_FAST_FOR);
        assert_eq!(next_wait(&st, &p, idle), idle);
        tick(&mut st, &mut p);
        p.health = Ok(healthy());
        p.sleep(HEALTH_EVERY_EARLY);
        tick(&mut st, &mut p);
        assert!(p.markers.is_empty(), "asked again before a second passed");
        p.sleep(HEALTH_EVERY);
        tick(&mut st, &mut p);
        assert_eq!(p.markers.first(), Some(&Marker::Ready));

        // Before rayosd starts there is nothing to ask.
        let mut st = fake::state();
        assert_eq!(next_wait(&st, &p, idle), idle);
        st.status.ready = true;
        assert_eq!(next_wait(&st, &p, idle), idle);
    }

    #[test]
    fn recovery_and_unhealthy_boots_are_not_blessed() {
        let (mut st, mut p) = booted();
        st.params.mode = Mode::Recovery;
        p.health = Ok(healthy());
        tick(&mut st, &mut p);
        assert_eq!(p.markers, vec![Marker::Ready]);
        assert_eq!(entries(&p), vec![COUNTED]);

        let (mut st, mut p) = booted();
        while p.elapsed() <= HEALTH_PATIENCE {
            tick(&mut st, &mut p);
            p.sleep(HEALTH_EVERY);
        }
        tick(&mut st, &mut p);
        assert!(
            st.status.faults[0].contains("not blessed"),
            "{:?}",
            st.status.faults
        );
        assert_eq!(entries(&p), vec![COUNTED]);
    }

    /// A VM start reported on rayosd's event stream makes the VM list be
    /// looked at at once, not at the next poll.
    #[test]
    fn a_started_event_shows_the_linux_vm_without_waiting_for_the_poll() {
        let (mut st, mut p) = booted();
        p.health = Ok(healthy());
        tick(&mut st, &mut p);
        tick(&mut st, &mut p); // first poll: no VM yet
        assert!(!st.status.linux_vm_ready);
        let vm: rayos_api::VmInfo = serde_json::from_value(serde_json::json!({
            "name": "linux", "id": uuid::Uuid::nil(), "kind": "linux", "state": "running",
            "presented": false, "cpus": 1, "memory_mib": 256, "network": false,
            "provisioned": true, "tpm": false, "vm_dir": "/var/rayos/vm/x", "disks": [],
            "media": [], "pid": 7, "vnc_socket": null, "last_boot": "resumed",
            "saved_state": null, "unusable_states": [], "last_error": null,
            "crash_console": [], "crash_count": 0, "enabled": true, "autostart": true
        }))
        .unwrap();
        p.vm_list = vec![vm];
        tick(&mut st, &mut p);
        assert!(
            !st.status.linux_vm_ready,
            "the poll waits {VM_POLL_EVERY:?}"
        );
        p.vm_started.as_ref().unwrap().send("linux".into()).unwrap();
        tick(&mut st, &mut p);
        assert!(st.status.linux_vm_ready);
        assert_eq!(p.markers.last(), Some(&Marker::LinuxVmReady));
        assert!(st.vm_starts.is_none(), "the event stream is let go");
    }
}
