//! The steps that start RayOS's long-running children: rayosd, the
//! `rayos>` console sessions, the presenter. Each is supervised (restarted
//! with backoff, see [`crate::service`]).

use std::path::Path;

use rayos_base::paths;

use super::{Platform, State, StepResult};
use crate::service::{Output, Spec};

/// `rayos daemon` on a writable, checked data volume only: a volume that
/// failed its check or is read-only is never written to.
pub fn rayosd(st: &mut State, p: &mut dyn Platform) -> StepResult {
    if !st.data_writable() {
        return StepResult::Skip("no writable, checked data volume: VMs are not started".into());
    }
    p.start_service(Spec {
        name: "rayosd".into(),
        program: st.exe.clone(),
        args: vec![
            "daemon".into(),
            "--state-dir".into(),
            paths::DATA.into(),
            "--socket".into(),
            paths::API_SOCKET.into(),
        ],
        env: vec![],
        output: Output::Log(st.logs_dir.clone()),
        restart: true,
    });
    st.rayosd_started = Some(p.now());
    match p.service_pid("rayosd") {
        Some(pid) => StepResult::Ok(format!("rayosd started (pid {pid})")),
        None => StepResult::Warn("rayosd did not start; retrying with backoff".into()),
    }
}

/// `rayos net` (docs/network.md): wired Ethernet with DHCP while the
/// policy allows networking for any VM, nothing otherwise. It follows the
/// policy file itself, so `rayos policy set` needs no reboot. Without a
/// data volume there is no policy: networking stays off and the service
/// is not started.
pub fn network(st: &mut State, p: &mut dyn Platform) -> StepResult {
    if st.status.data_mounted.is_none() {
        return StepResult::Skip("no data volume, no policy: networking stays off".into());
    }
    p.start_service(Spec {
        name: "network".into(),
        program: st.exe.clone(),
        args: vec!["net".into(), "--state-dir".into(), paths::DATA.into()],
        env: vec![],
        output: Output::Log(st.logs_dir.clone()),
        restart: true,
    });
    StepResult::Ok("rayos net started (it follows the policy)".into())
}

/// A `rayos console --tty /dev/X --mode M` per console terminal present.
pub fn consoles(st: &mut State, p: &mut dyn Platform) -> StepResult {
    let mut started = Vec::new();
    for name in st.params.consoles.clone() {
        let dev = Path::new("/dev").join(&name);
        if !p.path(&dev).exists() {
            continue;
        }
        let term = if name.starts_with("tty") && !name.starts_with("ttyS") {
            "linux"
        } else {
            "vt100"
        };
        p.start_service(Spec {
            name: format!("console-{name}"),
            program: st.exe.clone(),
            args: vec![
                "console".into(),
                "--tty".into(),
                dev.display().to_string(),
                "--mode".into(),
                st.params.mode.to_string(),
            ],
            env: vec![("TERM".into(), term.into())],
            output: Output::Tty(dev),
            restart: true,
        });
        started.push(name);
    }
    if started.is_empty() {
        StepResult::Warn("no console terminal found".into())
    } else {
        StepResult::Ok(format!("rayos> on {}", started.join(", ")))
    }
}

/// The presenter (`rayos present`, docs/present.md) takes the display
/// and the keyboards once rayosd runs. Without rayosd (a degraded boot)
/// the text console keeps the screen and keyboard, so the person at the
/// machine sees the faults and can type at `rayos>`.
pub fn presenter(st: &mut State, p: &mut dyn Platform) -> StepResult {
    if st.rayosd_started.is_none() {
        return StepResult::Skip("rayosd not started: the text console keeps the screen".into());
    }
    p.start_service(Spec {
        name: "presenter".into(),
        program: st.exe.clone(),
        args: vec![
            "present".into(),
            "--socket".into(),
            paths::API_SOCKET.into(),
        ],
        env: vec![],
        output: Output::Log(st.logs_dir.clone()),
        restart: true,
    });
    match p.service_pid("presenter") {
        Some(pid) => StepResult::Ok(format!("presenter started (pid {pid})")),
        None => StepResult::Warn("presenter did not start; retrying with backoff".into()),
    }
}
