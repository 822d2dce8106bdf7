//! PID 1: the boot and the shutdown as step tables over a [`Platform`],
//! and the supervision loop between them.
//!
//! Boot = [`COMMON`], then the table of the mode the kernel command line
//! names ([`INSTALLED`], [`RECOVERY`], [`INSTALLER`]). A step is a function
//! `fn(&mut State, &mut dyn Platform) -> StepResult`: it reads and writes
//! the one [`State`] and reaches the machine only through the
//! [`Platform`] (mounts, disks, EFI variables, children, rayosd's API), so
//! each runs in a unit test against the fake (`fake.rs`). Each is logged to the
//! console and `/dev/kmsg` with a `RAYOS_BOOT:<step>` marker and recorded
//! (result, message, duration) in the status file and the boot record. A
//! step's failure is either fatal (only mounting the kernel filesystems:
//! nothing works without them) or degrades the boot: the fault is shown on
//! the console with what to do, and everything that does not depend on it
//! still comes up — the admin console always does.
//!
//! After the steps, [`run_loop`] waits for a power request (signals, the
//! power button) with a 500 ms tick: it reaps every child (PID 1 adopts
//! orphans), restarts services with backoff, polls rayosd's health until
//! `RAYOS_READY` (then blesses the boot), watches for the Linux VM
//! (`RAYOS_LINUX_VM_READY`, [`ready`]) and, in installer mode, for answer
//! sticks plugged in later ([`installer`]).
//!
//! Shutdown is the [`shutdown::SHUTDOWN`] table: rayosd first (it saves the
//! VMs) with [`shutdown::RAYOSD_STOP_DEADLINE`], the other services, every
//! other process, the boot record, the logs closed, the volumes unmounted
//! with retries, then reboot(2). A panic or a fatal error writes a crash
//! report to the data volume when it is mounted, syncs and reboots after
//! [`FATAL_REBOOT_DELAY`] — never a hung machine.
//!
//! Files: [`state`] (the state, the step type, running a step),
//! [`platform`] (the trait), [`real`] (the machine), `fake` (tests),
//! [`kernel`], [`data`], [`services`], [`installer`] and [`install`] (the
//! steps), [`ready`] (the milestones after them), [`mod@shutdown`], [`record`]
//! (status file and boot records).
//!
//! Rejected design: one struct holding the state, the machine's handles and
//! every step as a method (what this was). Steps could only run on a real
//! machine, so their logic was tested only by booting QEMU.

pub mod data;
#[cfg(test)]
pub mod fake;
pub mod install;
pub mod installer;
pub mod kernel;
pub mod platform;
pub mod ready;
pub mod real;
pub mod record;
pub mod services;
pub mod shutdown;
pub mod state;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rayos_base::marker::Marker;
use rayos_base::paths;

pub use platform::Platform;
pub use state::{State, Step, StepResult};

use crate::cmdline::Mode;
use crate::log;
use crate::sys::{self, PowerAction};
use state::step;

/// How long a fatal boot error stays on the screen before the reboot.
pub const FATAL_REBOOT_DELAY: Duration = Duration::from_secs(10);
/// The main loop's tick (shorter while rayosd's first health answer is
/// awaited, [`ready::next_wait`]).
const TICK: Duration = Duration::from_millis(500);

/// The steps of every mode, first: kernel filesystems, command line, modules,
/// EFI variables.
pub const COMMON: &[Step] = &[
    Step {
        name: "kernel-fs",
        run: kernel::kernel_fs,
        fatal: true,
    },
    step("cmdline", kernel::cmdline),
    step("modules", kernel::modules),
    step("loopback", kernel::loopback),
    step("efivarfs", kernel::efivarfs),
];

/// The steps of an installed system's boot, after [`COMMON`].
pub const INSTALLED: &[Step] = &[
    step("find-data", data::find_data),
    step("check-data", data::check_data),
    step("mount-data", data::mount_data),
    step("data-schema", data::data_schema),
    step("logs", data::logs),
    step("vm-storage", data::vm_storage),
    step("rollback-check", data::rollback_check),
    step("machine", data::machine),
    step("keyboard", data::keyboard),
    step("policy", data::policy),
    // rayosd before rayos net: its start is on the way to RAYOS_READY,
    // and the two `rayos` processes would share the CPUs while starting.
    step("rayosd", services::rayosd),
    step("network", services::network),
    step("consoles", services::consoles),
    step("presenter", services::presenter),
];

/// The steps of a recovery boot, after [`COMMON`]: the data volume and
/// consoles, no VMs.
pub const RECOVERY: &[Step] = &[
    step("find-data", data::find_data),
    step("check-data", data::check_data),
    step("mount-data", data::mount_data),
    step("data-schema", data::data_schema),
    step("logs", data::logs),
    step("machine", data::machine),
    step("keyboard", data::keyboard),
    step("policy", data::policy),
    step("consoles", services::consoles),
];

/// The steps of an installer medium's boot, after [`COMMON`].
pub const INSTALLER: &[Step] = &[
    step("find-medium", installer::find_medium),
    step("find-answers", installer::find_answers),
    step("install", install::install),
];

/// The table of `mode`, after [`COMMON`].
pub fn steps_of(mode: Mode) -> &'static [Step] {
    match mode {
        Mode::Installed => INSTALLED,
        Mode::Recovery => RECOVERY,
        Mode::Installer => INSTALLER,
    }
}

/// Entry point when running as PID 1. Never returns.
pub fn main() -> ! {
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("init panicked: {info}");
        fatal_exit(&msg, None);
    }));
    unsafe_env_defaults();
    let mut p = match real::Real::new() {
        Ok(p) => p,
        Err(e) => fatal_exit(&format!("{e}"), None),
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/rayos"));
    let mut st = State::new(exe);
    boot(&mut st, &mut p);
    run_loop(&mut st, &mut p)
}

fn unsafe_env_defaults() {
    // SAFETY: set_var, called before any thread exists in this process.
    unsafe {
        std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        std::env::set_var("HOME", "/root");
        if std::env::var_os("TERM").is_none() {
            std::env::set_var("TERM", "linux");
        }
    }
}

/// Logs, records a crash report when possible, syncs, reboots.
pub fn fatal_exit(reason: &str, data_mounted: Option<&Path>) -> ! {
    log::error(format!("FATAL: {reason}"));
    log::marker(&Marker::Fatal(
        reason.lines().next().unwrap_or("").to_string(),
    ));
    let dir = data_mounted.map(|d| d.join("crash")).or_else(|| {
        sys::is_mounted(Path::new(paths::DATA)).then(|| Path::new(paths::DATA).join("crash"))
    });
    if let Some(dir) = dir {
        let _ = fs::create_dir_all(&dir);
        let path = dir.join(format!("init-{}.txt", log::unix_time()));
        let status = fs::read_to_string(paths::INIT_STATUS).unwrap_or_default();
        let text = format!(
            "rayos init {} crashed at boot time {:.3} s\nreason: {reason}\n\nstatus:\n{status}\n",
            env!("CARGO_PKG_VERSION"),
            log::uptime()
        );
        if fs::write(&path, text).is_ok() {
            log::info(format!("crash report written to {}", path.display()));
        }
    }
    sys::sync();
    log::info(format!(
        "rebooting in {} s (choose the recovery entry in the boot menu to inspect logs)",
        FATAL_REBOOT_DELAY.as_secs()
    ));
    std::thread::sleep(FATAL_REBOOT_DELAY);
    log::detach_file();
    sys::sync();
    let e = sys::power(PowerAction::Reboot);
    // Only reachable when not PID 1 or without CAP_SYS_BOOT.
    eprintln!("rayos init: reboot failed: {e}");
    std::process::exit(1)
}

/// Runs the step tables of this boot and reports the faults.
pub fn boot(st: &mut State, p: &mut dyn Platform) {
    // The mode is known only after `cmdline` ran.
    for s in COMMON {
        state::run_step(st, p, s);
    }
    for s in steps_of(st.params.mode) {
        state::run_step(st, p, s);
        if let Some(req) = st.power_request.take() {
            shutdown(st, p, req.action, &req.reason);
        }
    }
    st.status.phase = match st.params.mode {
        Mode::Installer if st.installer_pid.is_some() => "installing",
        _ => "running",
    }
    .into();
    if !st.status.faults.is_empty() {
        p.marker(&Marker::Degraded(st.status.faults.len()));
        for f in &st.status.faults {
            log::warn(f);
        }
        if st.params.mode == Mode::Installed {
            log::info("the recovery entry in the boot menu (\"RayOS recovery\") can repair this");
        }
    }
    record::write_boot_record(st, p, "booted");
    record::write_status(st, p);
}

/// The supervision loop. Never returns: a power request ends in
/// [`shutdown()`].
pub fn run_loop(st: &mut State, p: &mut dyn Platform) -> ! {
    // rayosd may already answer: look before the first wait.
    ready::tick(st, p);
    loop {
        if let Some(req) = p.wait_power_request(ready::next_wait(st, p, TICK)) {
            shutdown(st, p, req.action, &req.reason);
        }
        reap(st, p);
        p.services_tick();
        if let Some(source) = installer::watch_tick(st, p) {
            install::offer_late(st, p, source);
        }
        ready::tick(st, p);
        if let Some(req) = st.power_request.take() {
            shutdown(st, p, req.action, &req.reason);
        }
        let services = p.services_status();
        if services != st.status.services {
            st.status.services = services;
            st.status_dirty = true;
        }
        if st.status_dirty {
            record::write_status(st, p);
        }
    }
}

/// Reaps every exited child: the unattended installer's end is acted on,
/// services learn theirs.
pub fn reap(st: &mut State, p: &mut dyn Platform) {
    for e in p.reap() {
        if st.installer_pid == Some(e.pid) {
            install::installer_finished(st, p, e.code);
        } else if p.service_exited(e.pid, e.code) {
            st.status_dirty = true;
        }
    }
}

/// Runs the shutdown table and powers off or reboots. Never returns.
pub fn shutdown(st: &mut State, p: &mut dyn Platform, action: PowerAction, reason: &str) -> ! {
    let e = shutdown::run(st, p, action, reason);
    fatal_exit(&format!("reboot(2) failed: {e}"), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lists_are_linear_and_named_uniquely() {
        for list in [INSTALLED, RECOVERY, INSTALLER] {
            let mut names: Vec<&str> = COMMON.iter().chain(list).map(|s| s.name).collect();
            let n = names.len();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), n);
        }
        assert!(COMMON[0].fatal, "only the kernel filesystems are fatal");
        assert!(
            COMMON[1..]
                .iter()
                .chain(INSTALLED)
                .chain(RECOVERY)
                .chain(INSTALLER)
                .chain(shutdown::SHUTDOWN)
                .all(|s| !s.fatal)
        );
        // rayosd needs the data volume, so it comes after mounting it.
        let pos = |n: &str| INSTALLED.iter().position(|s| s.name == n).unwrap();
        assert!(pos("mount-data") < pos("rayosd"));
        // The network service reads the policy on the data volume.
        assert!(pos("mount-data") < pos("network"));
        // VM-storage partitions are mounted under the data volume, before
        // rayosd could touch a VM's directory.
        assert!(pos("mount-data") < pos("vm-storage") && pos("vm-storage") < pos("rayosd"));
        assert!(
            !RECOVERY.iter().any(|s| s.name == "network"),
            "recovery touches no network"
        );
        // The presenter only starts once rayosd has (it needs its API).
        assert!(pos("rayosd") < pos("presenter"));
        assert!(pos("check-data") < pos("mount-data"));
        assert!(
            !RECOVERY.iter().any(|s| s.name == "rayosd"),
            "recovery starts no VMs"
        );
        // The data volume is unmounted only after everything that writes
        // to it stopped and the logs on it are closed.
        let sd = |n: &str| shutdown::SHUTDOWN.iter().position(|s| s.name == n).unwrap();
        assert!(sd("stop-rayosd") < sd("stop-services"));
        assert!(sd("stop-services") < sd("stop-processes"));
        assert!(sd("stop-processes") < sd("record"));
        assert!(sd("record") < sd("close-logs"));
        assert!(sd("close-logs") < sd("unmount"));
    }
}
