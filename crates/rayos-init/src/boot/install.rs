//! Installer mode, installing: the `install` step (unattended from the
//! answer file: the engine's plan, the countdown any key cancels, then
//! `rayos install --yes`; else the consoles offer `install`), an answer
//! stick plugged in later, and what happens when the installer ends.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rayos_base::marker::{self, InstallFailure, InstallerMarker, Marker};
use rayos_base::paths;

use super::platform::{CountdownEnd, PowerRequest};
use super::{Platform, State, StepResult, services};
use crate::control;
use crate::log;
use crate::sys::PowerAction;
use crate::unattended;
use crate::volumes;

/// Smallest disk an unattended install takes when the answer file names
/// none.
const MIN_TARGET_BYTES: u64 = 8 << 30;

fn installer(m: InstallerMarker) -> Marker {
    Marker::Installer(m)
}

/// Boot step `install`: unattended from the answer file found (the
/// countdown, then `rayos install --yes`), else the consoles offer
/// `install`.
pub fn install(st: &mut State, p: &mut dyn Platform) -> StepResult {
    if st.answers.is_none() || st.uki.is_none() {
        // Interactive: the console sessions offer `install`.
        let r = services::consoles(st, p);
        p.marker(&installer(InstallerMarker::Interactive));
        return r;
    }
    unattended(st, p)
}

/// The unattended install from [`paths::ANSWERS`]: the target, the
/// engine's plan, the countdown any key cancels, then `rayos install
/// --yes`. Any way it does not start ends at the console's `install`.
fn unattended(st: &mut State, p: &mut dyn Platform) -> StepResult {
    let (Some(answers), Some(uki)) = (st.answers.clone(), st.uki.clone()) else {
        return StepResult::Skip("no answer file".into());
    };
    let source = st
        .answers_source
        .clone()
        .unwrap_or_else(|| "a volume".into());
    let text = fs::read_to_string(p.path(&answers)).unwrap_or_default();
    let Some(target) = target_of(st, p, &text) else {
        st.fault("no disk to install to (every disk is the installer medium or too small)");
        return back_to_consoles(st, p, StepResult::Fail("no target disk".into()));
    };
    let mut args = vec![
        "install".to_string(),
        "--answers".into(),
        answers.display().to_string(),
        "--target".into(),
        target.clone(),
    ];
    // The files the engine opens, as this platform reaches them.
    args.extend(volumes::image_args(&p.path(&uki)));
    if let Err(why) = show_plan(st, p, &args) {
        p.marker(&installer(InstallerMarker::Failed(InstallFailure::Plan)));
        st.fault(format!(
            "the answer file on {source} cannot be installed: {why}. Nothing was written. Fix the answer \
             file, or type `install` at the rayos> prompt."
        ));
        return back_to_consoles(st, p, StepResult::Fail("the plan was refused".into()));
    }
    let secs = unattended::countdown_secs(&text);
    log::info(format!(
        "Unattended install from the answer file on {source}: the plan above is written to {target} in {secs} s. \
         Press any key on a console to cancel."
    ));
    p.marker(&installer(InstallerMarker::Countdown(secs)));
    match p.countdown(secs, &target, &console_ttys(st, p)) {
        CountdownEnd::Cancelled(tty) => {
            p.marker(&installer(InstallerMarker::Cancelled));
            log::info(format!(
                "unattended install cancelled by a key on {}: nothing was written. Type `install` to install \
                 by hand.",
                tty.display()
            ));
            let msg = format!("cancelled on {}: nothing written", tty.display());
            back_to_consoles(st, p, StepResult::Ok(msg))
        }
        CountdownEnd::Power(req) => {
            st.power_request = Some(req);
            StepResult::Skip("a power request came during the countdown: nothing written".into())
        }
        CountdownEnd::Expired => {
            args.push("--yes".into());
            spawn_install(st, p, args)
        }
    }
}

/// `[target] disk` of the answer file, else the first suitable disk.
fn target_of(st: &State, p: &mut dyn Platform, answers: &str) -> Option<String> {
    if let Some(t) = answers_target(answers) {
        return Some(t);
    }
    let disks = super::data::list_disks(p);
    let t = first_suitable_disk(&disks, st.medium_disk.as_deref())?;
    log::info(format!(
        "the answer file names no disk: the plan is for {t}, the first suitable one"
    ));
    Some(t)
}

/// The unattended install does not happen: the answer file is dropped and
/// the consoles offer `install`.
fn back_to_consoles(st: &mut State, p: &mut dyn Platform, r: StepResult) -> StepResult {
    st.answers = None;
    let _ = services::consoles(st, p);
    r
}

/// The console terminals that exist (`rayos.console=`).
fn console_ttys(st: &State, p: &dyn Platform) -> Vec<PathBuf> {
    st.params
        .consoles
        .iter()
        .map(|n| unattended::console_device(n))
        .filter(|d| p.path(d).exists())
        .collect()
}

/// The engine's plan (`rayos install --dry-run`) on the console; `Err`
/// carries its refusal.
fn show_plan(st: &State, p: &mut dyn Platform, args: &[String]) -> Result<(), String> {
    let mut dry = args.to_vec();
    dry.push("--dry-run".into());
    let out = p
        .run(&st.exe, &dry)
        .map_err(|e| format!("cannot run the installer: {e}"))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // The engine's own markers are for its callers, not the person.
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            !l.starts_with(marker::PREFIX) && !l.starts_with("Dry run") && !l.trim().is_empty()
        })
        .collect();
    if !out.status.success() {
        return Err(lines.join(" / "));
    }
    for l in lines {
        log::info(format!("plan: {l}"));
    }
    Ok(())
}

/// Starts `rayos <args>` (the unattended install) with its output relayed.
fn spawn_install(st: &mut State, p: &mut dyn Platform, args: Vec<String>) -> StepResult {
    p.marker(&installer(InstallerMarker::Start));
    log::info(format!("running: rayos {}", args.join(" ")));
    st.status.phase = "installing".into();
    st.status_dirty = true;
    match p.spawn_relayed(&st.exe.clone(), &args) {
        Ok(pid) => {
            st.installer_pid = Some(pid);
            StepResult::Ok(String::new())
        }
        Err(e) => {
            st.fault(format!("cannot run the installer: {e}"));
            let _ = services::consoles(st, p);
            StepResult::Fail(e.to_string())
        }
    }
}

/// An answer file on a stick plugged in after boot (found by
/// [`super::installer::watch_tick`] on `source`): unless an install is
/// being written, the console sessions (and what runs in them, the wizard
/// too) are stopped and the unattended install is offered with its
/// countdown, exactly as at boot.
pub fn offer_late(st: &mut State, p: &mut dyn Platform, source: String) {
    let (rel, _) = super::installer::answers_ref(st);
    if st.uki.is_none() {
        log::warn(format!(
            "{rel} on {source} is not used: the installer medium (the system image) was not found"
        ));
        return;
    }
    let Some(claim) = control::claim_install_lock(&p.at(paths::INSTALL_LOCK)) else {
        log::warn(format!(
            "{rel} on {source} is not used: an install is being written right now. Unplug and plug the stick \
             in again once it is done to use it."
        ));
        return;
    };
    log::info(format!(
        "answer file {rel} found on {source}, plugged in after boot: offering the unattended install"
    ));
    stop_consoles(st, p);
    drop(claim);
    // A full-screen program stopped in the middle leaves its screen.
    let ttys = console_ttys(st, p);
    p.show_on_terminals(&ttys, unattended::RESET_SCREEN);
    st.answers = Some(PathBuf::from(paths::ANSWERS));
    st.answers_source = Some(source);
    match unattended(st, p) {
        StepResult::Ok(m) | StepResult::Warn(m) | StepResult::Skip(m) => {
            if !m.is_empty() {
                log::info(format!("install: {m}"));
            }
        }
        StepResult::Fail(m) => log::error(format!("install: {m}")),
    }
    super::record::write_status(st, p);
}

/// Stops the console sessions and every process in them; they are
/// started again by [`services::consoles`].
fn stop_consoles(st: &mut State, p: &mut dyn Platform) {
    let names: Vec<String> = p
        .service_names()
        .into_iter()
        .filter(|n| n.starts_with("console-"))
        .collect();
    let mut pids = Vec::new();
    for n in &names {
        if let Some(pid) = p.signal_service(n, libc::SIGTERM) {
            pids.push(pid);
            for member in p.session_members(pid) {
                p.kill(member, libc::SIGTERM);
                pids.push(member);
            }
        }
    }
    if !wait_gone(st, p, &pids, Duration::from_secs(2)) {
        for pid in &pids {
            p.kill(*pid, libc::SIGKILL);
        }
        wait_gone(st, p, &pids, Duration::from_secs(2));
    }
    for n in &names {
        p.remove_service(n);
    }
}

/// Reaps until none of `pids` exists any more (some are reaped by their
/// own parent, not by PID 1).
fn wait_gone(st: &mut State, p: &mut dyn Platform, pids: &[i32], within: Duration) -> bool {
    let end = p.now() + within;
    loop {
        super::reap(st, p);
        if pids.iter().all(|pid| !p.kill(*pid, 0)) {
            return true;
        }
        if p.now() >= end {
            return false;
        }
        p.pause(Duration::from_millis(100));
    }
}

/// The unattended install ended with `code`: done → power off or reboot
/// as the answer file says; failed → a fault and the consoles.
pub fn installer_finished(st: &mut State, p: &mut dyn Platform, code: i32) {
    st.installer_pid = None;
    if code == 0 {
        let text = fs::read_to_string(p.at(paths::ANSWERS)).unwrap_or_default();
        let action = answers_after(&text);
        p.marker(&installer(InstallerMarker::Done));
        log::info(format!(
            "RayOS is installed. {} now; remove the installer medium.",
            match action {
                PowerAction::PowerOff => "Powering off",
                PowerAction::Reboot => "Rebooting",
            }
        ));
        st.power_request = Some(PowerRequest {
            action,
            reason: "install finished".into(),
        });
        return;
    }
    p.marker(&installer(InstallerMarker::Failed(InstallFailure::Status(
        code,
    ))));
    st.answers = None;
    st.fault(format!(
        "the install failed (status {code}); nothing outside the plan was touched. Fix the answer file or \
         type `install` at the rayos> prompt to retry."
    ));
    let _ = services::consoles(st, p);
    st.status.phase = "running".into();
}

/// `[target] disk` of an answer file, read leniently (the engine does the
/// strict parse).
pub fn answers_target(text: &str) -> Option<String> {
    let v: toml::Value = toml::from_str(text).ok()?;
    v.get("target")?.get("disk")?.as_str().map(String::from)
}

/// What to do after a successful unattended install: `[finish] action =
/// "reboot" | "poweroff"` (default reboot).
pub fn answers_after(text: &str) -> PowerAction {
    let v: Option<toml::Value> = toml::from_str(text).ok();
    match v
        .as_ref()
        .and_then(|v| v.get("finish"))
        .and_then(|f| f.get("action"))
        .and_then(|a| a.as_str())
    {
        Some("poweroff") | Some("power-off") | Some("shutdown") => PowerAction::PowerOff,
        _ => PowerAction::Reboot,
    }
}

/// The first disk an unattended install may take: not the installer
/// medium, writable, at least 8 GiB; fixed disks before removable ones.
pub fn first_suitable_disk(
    disks: &[rayos_disk::report::Disk],
    medium: Option<&Path>,
) -> Option<String> {
    let mut v: Vec<&rayos_disk::report::Disk> = disks
        .iter()
        .filter(|d| {
            Some(d.path.as_path()) != medium && !d.read_only && d.size_bytes >= MIN_TARGET_BYTES
        })
        .collect();
    v.sort_by_key(|d| d.removable);
    v.first().map(|d| d.path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::fake::{self, Call, Fake};

    const ANSWERS: &str =
        "version = 1\n[target]\ndisk = \"/dev/vda\"\n[finish]\naction = \"poweroff\"\n";

    /// An installer boot that found the medium and an answer file; the
    /// engine accepts the plan; the console is ttyS0.
    fn ready_to_install(countdown: CountdownEnd) -> (State, Fake) {
        let mut p = Fake::new();
        p.countdown_end = countdown;
        fs::write(p.at(paths::ANSWERS), ANSWERS).unwrap();
        fs::create_dir_all(p.at("/dev")).unwrap();
        fs::write(p.at("/dev/ttyS0"), "").unwrap();
        p.runs.insert(
            "rayos".into(),
            (0, "Plan for /dev/vda: whole disk\n".into()),
        );
        let mut st = fake::state();
        st.params = crate::cmdline::BootParams::parse("rayos.mode=installer rayos.console=ttyS0");
        st.uki = Some("/run/rayos/medium/EFI/Linux/rayos-0.2.0.efi".into());
        st.answers = Some(paths::ANSWERS.into());
        (st, p)
    }

    fn spawned(p: &Fake) -> Vec<Vec<String>> {
        p.calls
            .iter()
            .filter_map(|c| match c {
                Call::Spawn(_, args) => Some(args.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_install_writes_only_after_the_plan_and_the_countdown() {
        let (mut st, mut p) = ready_to_install(CountdownEnd::Expired);
        assert!(matches!(install(&mut st, &mut p), StepResult::Ok(_)));
        let plan = p.calls.iter().position(
            |c| matches!(c, Call::Run(_, a) if a.last().is_some_and(|x| x == "--dry-run")),
        );
        let count = p
            .calls
            .iter()
            .position(|c| *c == Call::Countdown(10, "/dev/vda".into()));
        let spawn = p.calls.iter().position(|c| matches!(c, Call::Spawn(..)));
        assert!(plan < count && count < spawn, "{:?}", p.calls);
        assert_eq!(spawned(&p)[0].last().map(String::as_str), Some("--yes"));
        assert_eq!(
            p.markers,
            vec![
                installer(InstallerMarker::Countdown(10)),
                installer(InstallerMarker::Start)
            ]
        );
        // Done: the machine powers off as the answer file says.
        assert!(st.installer_pid.is_some());
        installer_finished(&mut st, &mut p, 0);
        assert_eq!(st.installer_pid, None);
        assert_eq!(
            st.power_request.as_ref().map(|r| r.action),
            Some(PowerAction::PowerOff)
        );
        assert_eq!(p.markers.last(), Some(&installer(InstallerMarker::Done)));
    }

    #[test]
    fn a_key_a_power_request_or_a_refused_plan_writes_nothing() {
        let (mut st, mut p) = ready_to_install(CountdownEnd::Cancelled("/dev/ttyS0".into()));
        assert!(matches!(install(&mut st, &mut p), StepResult::Ok(_)));
        assert!(spawned(&p).is_empty());
        assert_eq!(
            p.markers.last(),
            Some(&installer(InstallerMarker::Cancelled))
        );
        assert_eq!(st.answers, None);
        assert!(
            p.calls.contains(&Call::Start("console-ttyS0".into())),
            "the consoles offer `install`"
        );

        let request = PowerRequest {
            action: PowerAction::Reboot,
            reason: "Ctrl-Alt-Del".into(),
        };
        let (mut st, mut p) = ready_to_install(CountdownEnd::Power(request.clone()));
        assert!(matches!(install(&mut st, &mut p), StepResult::Skip(_)));
        assert!(spawned(&p).is_empty());
        assert_eq!(st.power_request, Some(request));

        let (mut st, mut p) = ready_to_install(CountdownEnd::Expired);
        p.runs
            .insert("rayos".into(), (2, "disk /dev/vda is too small\n".into()));
        assert!(matches!(install(&mut st, &mut p), StepResult::Fail(_)));
        assert!(spawned(&p).is_empty());
        assert!(!p.calls.iter().any(|c| matches!(c, Call::Countdown(..))));
        assert_eq!(
            p.markers,
            vec![installer(InstallerMarker::Failed(InstallFailure::Plan))]
        );
        assert!(
            st.status.faults[0].contains("too small"),
            "{:?}",
            st.status.faults
        );
    }

    #[test]
    fn a_failed_install_is_a_fault_and_the_consoles_come_back() {
        let (mut st, mut p) = ready_to_install(CountdownEnd::Expired);
        install(&mut st, &mut p);
        installer_finished(&mut st, &mut p, 1);
        assert_eq!(st.power_request, None);
        assert_eq!(
            p.markers.last(),
            Some(&installer(InstallerMarker::Failed(InstallFailure::Status(
                1
            ))))
        );
        assert!(st.status.faults[0].contains("status 1"));
        assert!(p.calls.contains(&Call::Start("console-ttyS0".into())));
        assert_eq!(st.status.phase, "running");
    }

    #[test]
    fn answer_file_target_and_finish() {
        let t = "version = 1\n[target]\ndisk = \"/dev/vda\"\nmode = \"whole-disk\"\n[finish]\naction = \"poweroff\"\n";
        assert_eq!(answers_target(t).as_deref(), Some("/dev/vda"));
        assert_eq!(answers_after(t), PowerAction::PowerOff);
        assert_eq!(answers_target("[target]\nmode = \"whole-disk\"\n"), None);
        assert_eq!(answers_after("not toml ["), PowerAction::Reboot);
        assert_eq!(answers_after(""), PowerAction::Reboot);
    }
}
