//! The orderly shutdown as a step table ([`SHUTDOWN`]): rayosd first (it
//! saves the VMs) with [`RAYOSD_STOP_DEADLINE`], then the other services,
//! then every other process; the boot record; the logs closed; the volumes
//! unmounted, retried while the log pumps close their files; then the
//! power-off or reboot. Each step is logged; none can stop the shutdown.

use std::path::Path;
use std::time::Duration;

use rayos_base::error::chain;
use rayos_base::marker::{Marker, Power};
use rayos_base::paths;

use super::state::{Step, step};
use super::{Platform, State, StepResult};
use crate::log;
use crate::sys::PowerAction;

/// How long rayosd may take to save the VMs before it is killed.
pub const RAYOSD_STOP_DEADLINE: Duration = Duration::from_secs(120);
/// How long the other services and then every other process get after
/// SIGTERM.
const SERVICES_GRACE: Duration = Duration::from_secs(3);
/// How long a killed rayosd or the last processes get to be reaped.
const KILLED_GRACE: Duration = Duration::from_secs(5);
const ALL_KILLED_GRACE: Duration = Duration::from_secs(2);
/// How long a busy volume is retried before the read-only remount and
/// lazy unmount.
pub const UNMOUNT_WAIT: Duration = Duration::from_secs(3);
const UNMOUNT_RETRY: Duration = Duration::from_millis(100);
/// Unmounted in this order: the data volume last, once nothing writes.
const VOLUMES: [&str; 3] = [paths::MEDIUM, paths::SYSTEM, paths::DATA];

/// The shutdown's steps, in order: rayosd first (it saves or stops the VMs),
/// the data volume unmounted last.
pub const SHUTDOWN: &[Step] = &[
    step("stop-rayosd", stop_rayosd),
    step("stop-installer", stop_installer),
    step("stop-services", stop_services),
    step("stop-processes", stop_processes),
    step("record", record),
    step("close-logs", close_logs),
    step("unmount", unmount),
];

/// Runs [`SHUTDOWN`] for `action` and powers off or reboots; returns the
/// error only when that fails (not PID 1, no CAP_SYS_BOOT).
pub fn run(
    st: &mut State,
    p: &mut dyn Platform,
    action: PowerAction,
    reason: &str,
) -> std::io::Error {
    let power = match action {
        PowerAction::PowerOff => Power::PowerOff,
        PowerAction::Reboot => Power::Reboot,
    };
    // The consoles show the shutdown's lines again, even if the console
    // that lowered the level for the wizard was killed before it could
    // put it back.
    if let Some(level) = st.console_level
        && crate::sys::console_level(&p.at(crate::sys::PRINTK)) != Some(level)
    {
        let _ = crate::sys::set_console_level(&p.at(crate::sys::PRINTK), level);
    }
    p.marker(&Marker::Shutdown(power));
    log::info(format!("{reason}: shutting down ({})", power.as_str()));
    st.shutting_down = Some(action);
    st.status.phase = "shutting-down".into();
    super::record::write_status(st, p);
    for s in SHUTDOWN {
        match (s.run)(st, p) {
            StepResult::Ok(m) | StepResult::Skip(m) if m.is_empty() => {}
            StepResult::Ok(m) | StepResult::Skip(m) => log::detail(format!("{}: {m}", s.name)),
            StepResult::Warn(m) | StepResult::Fail(m) => log::warn(format!("{}: {m}", s.name)),
        }
    }
    p.marker(&match action {
        PowerAction::PowerOff => Marker::PowerOff,
        PowerAction::Reboot => Marker::Reboot,
    });
    p.power(action)
}

/// SIGTERM to rayosd, which saves the VMs; SIGKILL after the deadline.
fn stop_rayosd(st: &mut State, p: &mut dyn Platform) -> StepResult {
    let Some(pid) = p.signal_service("rayosd", libc::SIGTERM) else {
        return StepResult::Skip("rayosd is not running".into());
    };
    log::info("asking rayosd to save the VMs");
    if wait_for(st, p, &[pid], RAYOSD_STOP_DEADLINE) {
        log::info("rayosd stopped");
        return StepResult::Ok(String::new());
    }
    p.kill(pid, libc::SIGKILL);
    wait_for(st, p, &[pid], KILLED_GRACE);
    StepResult::Warn(format!(
        "rayosd did not stop within {} s: killed",
        RAYOSD_STOP_DEADLINE.as_secs()
    ))
}

fn stop_installer(st: &mut State, p: &mut dyn Platform) -> StepResult {
    match st.installer_pid {
        Some(pid) => {
            p.kill(pid, libc::SIGTERM);
            StepResult::Ok(format!("installer (pid {pid}) stopped"))
        }
        None => StepResult::Skip(String::new()),
    }
}

/// SIGTERM to the other services (consoles, presenter), briefly waited for.
fn stop_services(st: &mut State, p: &mut dyn Platform) -> StepResult {
    let pids: Vec<i32> = p
        .service_names()
        .iter()
        .filter_map(|n| p.signal_service(n, libc::SIGTERM))
        .collect();
    if wait_for(st, p, &pids, SERVICES_GRACE) {
        StepResult::Ok(String::new())
    } else {
        StepResult::Warn("services still running after SIGTERM".into())
    }
}

/// SIGTERM to every other process, SIGKILL to what is left.
fn stop_processes(_: &mut State, p: &mut dyn Platform) -> StepResult {
    p.kill(-1, libc::SIGTERM);
    wait_all(p, SERVICES_GRACE);
    p.kill(-1, libc::SIGKILL);
    wait_all(p, ALL_KILLED_GRACE);
    StepResult::Ok(String::new())
}

fn record(st: &mut State, p: &mut dyn Platform) -> StepResult {
    let result = match st.shutting_down {
        Some(PowerAction::PowerOff) => "powered-off",
        _ => "rebooted",
    };
    super::record::write_boot_record(st, p, result);
    StepResult::Ok(String::new())
}

/// `init.log` and `kernel.log` closed: an open file would keep the data
/// volume busy and the power-off would leave its journal dirty.
fn close_logs(_: &mut State, p: &mut dyn Platform) -> StepResult {
    log::info("unmounting the data volume");
    p.close_logs();
    p.sync();
    StepResult::Ok(String::new())
}

/// The mounted volumes, each retried for [`UNMOUNT_WAIT`] while busy (the
/// service log pumps close their files once the killed services' pipes
/// end), then remounted read-only and detached.
fn unmount(st: &mut State, p: &mut dyn Platform) -> StepResult {
    let mut problems = Vec::new();
    // VM-storage partitions sit under the data volume: they go first.
    for at in std::mem::take(&mut st.vm_storage_mounts).iter().rev() {
        if p.is_mounted(at)
            && let Err(e) = unmount_waiting(p, at)
        {
            problems.push(e);
        }
    }
    for v in VOLUMES {
        let at = Path::new(v);
        if p.is_mounted(at)
            && let Err(e) = unmount_waiting(p, at)
        {
            problems.push(e);
        }
    }
    p.sync();
    if problems.is_empty() {
        StepResult::Ok(String::new())
    } else {
        StepResult::Warn(problems.join("; "))
    }
}

/// Unmounts `at`, retrying while busy for [`UNMOUNT_WAIT`]; a volume still
/// busy then is remounted read-only (nothing more reaches the disk) and
/// detached.
fn unmount_waiting(p: &mut dyn Platform, at: &Path) -> Result<(), String> {
    let deadline = p.now() + UNMOUNT_WAIT;
    loop {
        match p.unmount(at) {
            Ok(()) => return Ok(()),
            Err(e) if e.busy && p.now() < deadline => p.sleep(UNMOUNT_RETRY),
            Err(e) if e.busy => {
                let ro = p.remount_read_only(at);
                p.detach(at).map_err(|d| chain(&d))?;
                log::info(format!(
                    "{} was still busy after {} s: {}detached",
                    at.display(),
                    UNMOUNT_WAIT.as_secs(),
                    if ro.is_ok() {
                        "remounted read-only and "
                    } else {
                        ""
                    }
                ));
                return Ok(());
            }
            Err(e) => return Err(chain(&e.error)),
        }
    }
}

/// Reaps until every pid in `pids` has exited or `within` passes.
fn wait_for(st: &mut State, p: &mut dyn Platform, pids: &[i32], within: Duration) -> bool {
    let end = p.now() + within;
    let mut left: Vec<i32> = pids.to_vec();
    while !left.is_empty() {
        for e in p.reap() {
            left.retain(|&pid| pid != e.pid);
            if st.installer_pid == Some(e.pid) {
                st.installer_pid = None;
            }
            p.service_exited(e.pid, e.code);
        }
        if left.is_empty() || p.now() >= end {
            break;
        }
        p.pause(Duration::from_millis(100));
    }
    left.is_empty()
}

/// Reaps until no child is left or `within` passes.
fn wait_all(p: &mut dyn Platform, within: Duration) {
    let end = p.now() + within;
    while p.now() < end {
        p.reap();
        if !p.has_children() {
            return;
        }
        p.pause(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::fake::{self, Call, Fake};
    use crate::boot::platform::Mount;
    use crate::service::{Output, Spec};

    fn service(p: &mut Fake, name: &str) -> i32 {
        p.start_service(Spec {
            name: name.into(),
            program: "/usr/bin/rayos".into(),
            args: Vec::new(),
            env: Vec::new(),
            output: Output::Log(paths::RUN_LOGS.into()),
            restart: true,
        });
        p.service_pid(name).unwrap()
    }

    /// rayosd, a console and the presenter run; the data volume is mounted
    /// and stays busy for a while after the services end.
    fn running(busy: u32) -> (State, Fake) {
        let mut p = Fake::new();
        p.volume("/dev/vda3", &[]);
        p.mount(Mount {
            source: "/dev/vda3",
            target: Path::new(paths::DATA),
            fstype: "ext4",
            flags: rustix::mount::MountFlags::empty(),
            data: "",
        })
        .unwrap();
        p.busy.insert(paths::DATA.into(), busy);
        for n in ["rayosd", "console-ttyS0", "presenter"] {
            service(&mut p, n);
        }
        p.calls.clear();
        let mut st = fake::state();
        st.data_ok = true;
        st.status.data_mounted = Some(paths::DATA.into());
        (st, p)
    }

    /// What matters for the order: signals, kills, the logs, unmounts,
    /// power.
    fn order(p: &Fake) -> Vec<Call> {
        p.calls_where(|c| {
            matches!(
                c,
                Call::Signal(..)
                    | Call::Kill(..)
                    | Call::CloseLogs
                    | Call::Unmount(_)
                    | Call::RemountReadOnly(_)
                    | Call::Detach(_)
                    | Call::Power(_)
            )
        })
    }

    #[test]
    fn vm_storage_partitions_are_unmounted_before_the_data_volume() {
        let (mut st, mut p) = running(0);
        p.volume("/dev/vda5", &[]);
        let vm = Path::new(paths::DATA).join("vm/1111");
        p.mount(Mount {
            source: "/dev/vda5",
            target: &vm,
            fstype: "ext4",
            flags: rustix::mount::MountFlags::empty(),
            data: "",
        })
        .unwrap();
        st.vm_storage_mounts.push(vm.clone());
        p.calls.clear();
        assert!(matches!(unmount(&mut st, &mut p), StepResult::Ok(_)));
        let u = p.calls_where(|c| matches!(c, Call::Unmount(_)));
        assert_eq!(
            u,
            vec![Call::Unmount(vm), Call::Unmount(paths::DATA.into())]
        );
    }

    #[test]
    fn rayosd_goes_first_with_its_deadline_then_the_rest_then_the_volumes() {
        let (mut st, mut p) = running(3);
        let rayosd = p.service_pid("rayosd").unwrap();
        // rayosd takes too long saving: killed after the deadline.
        p.stubborn.insert("rayosd".into());
        run(&mut st, &mut p, PowerAction::PowerOff, "power button");
        let data = || Call::Unmount(paths::DATA.into());
        assert_eq!(
            order(&p),
            vec![
                Call::Signal("rayosd".into(), libc::SIGTERM),
                Call::Kill(rayosd, libc::SIGKILL),
                Call::Signal("console-ttyS0".into(), libc::SIGTERM),
                Call::Signal("presenter".into(), libc::SIGTERM),
                Call::Kill(-1, libc::SIGTERM),
                Call::Kill(-1, libc::SIGKILL),
                Call::CloseLogs,
                // Busy three times while the log pumps close their files.
                data(),
                data(),
                data(),
                data(),
                Call::Power(PowerAction::PowerOff),
            ]
        );
        assert!(
            p.elapsed() >= RAYOSD_STOP_DEADLINE,
            "rayosd got {:?}",
            p.elapsed()
        );
        assert!(!p.is_mounted_now(paths::DATA));
        assert_eq!(
            p.markers,
            vec![Marker::Shutdown(Power::PowerOff), Marker::PowerOff]
        );
        // The boot record says how this boot ended, written before the
        // volume went.
        let boot = rayos_state::DataLayout::new(&p.volumes["/dev/vda3"]).boot();
        let rec = std::fs::read_dir(&boot)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let rec: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(rec).unwrap()).unwrap();
        assert_eq!(rec["result"], "powered-off");
        assert_eq!(st.status.phase, "shutting-down");
    }

    #[test]
    fn a_quick_rayosd_is_not_killed_and_a_volume_busy_too_long_is_detached_read_only() {
        let (mut st, mut p) = running(1000);
        run(
            &mut st,
            &mut p,
            PowerAction::Reboot,
            "reboot request (SIGTERM)",
        );
        let calls = order(&p);
        assert!(
            !calls
                .iter()
                .any(|c| matches!(c, Call::Kill(pid, libc::SIGKILL) if *pid > 0)),
            "{calls:?}"
        );
        assert!(p.elapsed() < RAYOSD_STOP_DEADLINE);
        let unmounts = calls
            .iter()
            .filter(|c| **c == Call::Unmount(paths::DATA.into()))
            .count();
        let retries = (UNMOUNT_WAIT.as_millis() / UNMOUNT_RETRY.as_millis()) as usize;
        assert!(unmounts > retries, "{unmounts} attempts");
        assert_eq!(
            calls[calls.len() - 3..],
            [
                Call::RemountReadOnly(paths::DATA.into()),
                Call::Detach(paths::DATA.into()),
                Call::Power(PowerAction::Reboot),
            ]
        );
        assert_eq!(p.markers.last(), Some(&Marker::Reboot));
    }

    /// A console killed while the wizard had the kernel's console quiet
    /// cannot put the level back: the shutdown does, so its own lines and
    /// the kernel's reach the consoles again.
    #[test]
    fn the_boots_console_level_is_put_back() {
        let (mut st, mut p) = running(0);
        let printk = p.at(crate::sys::PRINTK);
        std::fs::create_dir_all(printk.parent().unwrap()).unwrap();
        std::fs::write(&printk, "4\t4\t1\t7\n").unwrap();
        st.console_level = Some(7);
        run(&mut st, &mut p, PowerAction::PowerOff, "wizard");
        assert_eq!(crate::sys::console_level(&printk), Some(7));
        // Nothing recorded at boot: nothing written.
        let (mut st, mut p) = running(0);
        run(&mut st, &mut p, PowerAction::PowerOff, "wizard");
        assert!(!p.at(crate::sys::PRINTK).exists());
    }
}
