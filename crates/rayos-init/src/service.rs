//! Supervised services: child processes PID 1 starts, restarts with
//! backoff and stops in order at shutdown.
//!
//! A service's stdout and stderr go through one pipe to a pump thread that
//! writes every line to `<logs>/<name>.log` (rotated) and copies the
//! machine-readable markers in them (from `RAYOS_` on) to the console.
//! Nothing in PID 1 acts on them: what rayosd does is learnt from its API
//! (health, VM list, event stream). Console sessions instead get their
//! terminal as stdio.
//!
//! Backoff: 1 s after the first exit, doubling to 30 s; reset when the
//! service had run for a minute. Exits are learnt from PID 1's reaping
//! (the main loop passes them to [`Services::exited`]); no `Child` handle
//! is kept because PID 1 reaps every process itself.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::control::ServiceStatus;
use crate::log::{self, RotatingLog};

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Where a service's output goes.
#[derive(Debug, Clone)]
pub enum Output {
    /// Pump stdout/stderr into `<dir>/<name>.log`.
    Log(PathBuf),
    /// A terminal device as stdin/stdout/stderr (console sessions).
    Tty(PathBuf),
}

/// How to run one service.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Its name (in logs and `rayos status`).
    pub name: String,
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables added to PID 1's.
    pub env: Vec<(String, String)>,
    /// Where its output goes.
    pub output: Output,
    /// Restart it when it exits (with a growing delay).
    pub restart: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running(i32),
    Waiting(Instant),
    Stopped,
}

#[derive(Debug)]
struct Service {
    spec: Spec,
    state: State,
    restarts: u32,
    backoff: Duration,
    started: Instant,
    last_exit: Option<i32>,
}

/// PID 1's supervised services.
#[derive(Default)]
pub struct Services {
    list: Vec<Service>,
}

impl Services {
    /// No services yet.
    pub fn new() -> Self {
        Services::default()
    }

    /// Adds and starts a service.
    pub fn add(&mut self, spec: Spec) {
        let mut s = Service {
            spec,
            state: State::Stopped,
            restarts: 0,
            backoff: BACKOFF_MIN,
            started: Instant::now(),
            last_exit: None,
        };
        start(&mut s);
        self.list.push(s);
    }

    /// The pid of service `name`, while it runs.
    pub fn pid_of(&self, name: &str) -> Option<i32> {
        self.list
            .iter()
            .find(|s| s.spec.name == name)
            .and_then(|s| match s.state {
                State::Running(p) => Some(p),
                _ => None,
            })
    }

    /// Handles an exited pid; true if it was one of ours.
    pub fn exited(&mut self, pid: i32, code: i32) -> bool {
        let Some(s) = self
            .list
            .iter_mut()
            .find(|s| s.state == State::Running(pid))
        else {
            return false;
        };
        s.last_exit = Some(code);
        if s.started.elapsed() >= STABLE_AFTER {
            s.backoff = BACKOFF_MIN;
        }
        if s.spec.restart {
            log::warn(format!(
                "{} exited with status {code}; restarting in {} s",
                s.spec.name,
                s.backoff.as_secs()
            ));
            s.state = State::Waiting(Instant::now() + s.backoff);
            s.backoff = (s.backoff * 2).min(BACKOFF_MAX);
        } else {
            log::info(format!("{} exited with status {code}", s.spec.name));
            s.state = State::Stopped;
        }
        true
    }

    /// Starts services whose backoff has passed; returns the time until the
    /// next one is due.
    pub fn tick(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let mut next: Option<Duration> = None;
        for s in &mut self.list {
            if let State::Waiting(at) = s.state {
                if at <= now {
                    s.restarts += 1;
                    start(s);
                } else {
                    let d = at - now;
                    next = Some(next.map_or(d, |n| n.min(d)));
                }
            }
        }
        next
    }

    /// Stops restarting `name` and sends it `sig`; returns its pid if it runs.
    pub fn signal(&mut self, name: &str, sig: i32) -> Option<i32> {
        let s = self.list.iter_mut().find(|s| s.spec.name == name)?;
        s.spec.restart = false;
        match s.state {
            State::Running(p) => {
                crate::sys::kill(p, sig);
                Some(p)
            }
            _ => {
                s.state = State::Stopped;
                None
            }
        }
    }

    /// Forgets `name` once it is stopped (after [`Services::signal`] and
    /// its exit), so a service of that name can be added again.
    pub fn remove(&mut self, name: &str) {
        self.list
            .retain(|s| s.spec.name != name || matches!(s.state, State::Running(_)));
    }

    /// The services' names, in the order added.
    pub fn names(&self) -> Vec<String> {
        self.list.iter().map(|s| s.spec.name.clone()).collect()
    }

    /// Whether any service runs.
    pub fn any_running(&self) -> bool {
        self.list
            .iter()
            .any(|s| matches!(s.state, State::Running(_)))
    }

    /// Each service's state, for `rayos status`.
    pub fn status(&self) -> Vec<ServiceStatus> {
        self.list
            .iter()
            .map(|s| ServiceStatus {
                name: s.spec.name.clone(),
                pid: match s.state {
                    State::Running(p) => Some(p),
                    _ => None,
                },
                state: match s.state {
                    State::Running(_) => "running",
                    State::Waiting(_) => "restarting",
                    State::Stopped if s.last_exit.is_some() => "exited",
                    State::Stopped => "stopped",
                }
                .to_string(),
                restarts: s.restarts,
                last_exit: s.last_exit,
            })
            .collect()
    }
}

fn start(s: &mut Service) {
    let mut cmd = Command::new(&s.spec.program);
    crate::sys::reset_signals_in_child(&mut cmd);
    cmd.args(&s.spec.args);
    for (k, v) in &s.spec.env {
        cmd.env(k, v);
    }
    let mut pump = None;
    match &s.spec.output {
        Output::Log(dir) => {
            let (r, w) = match std::io::pipe() {
                Ok(p) => p,
                Err(e) => {
                    log::error(format!("cannot start {}: no pipe: {e}", s.spec.name));
                    s.state = State::Waiting(Instant::now() + s.backoff);
                    return;
                }
            };
            let w2 = w.try_clone();
            cmd.stdin(Stdio::null()).stdout(w);
            match w2 {
                Ok(w2) => {
                    cmd.stderr(w2);
                }
                Err(_) => {
                    cmd.stderr(Stdio::null());
                }
            }
            pump = Some((r, dir.clone()));
        }
        Output::Tty(dev) => {
            // The session itself opens the terminal and makes it its
            // controlling tty (setsid + TIOCSCTTY in `rayos console`).
            let open = || OpenOptions::new().read(true).write(true).open(dev);
            match (open(), open(), open()) {
                (Ok(a), Ok(b), Ok(c)) => {
                    cmd.stdin(a).stdout(b).stderr(c);
                }
                _ => {
                    log::warn(format!(
                        "{}: cannot open {}; not starting it",
                        s.spec.name,
                        dev.display()
                    ));
                    s.state = State::Stopped;
                    s.spec.restart = false;
                    return;
                }
            }
        }
    }
    match cmd.spawn() {
        Ok(child) => {
            let pid = child.id() as i32;
            // Dropping the Child neither waits nor kills; PID 1 reaps it.
            drop(child);
            drop(cmd); // closes our copies of the pipe's write end
            s.state = State::Running(pid);
            s.started = Instant::now();
            log::detail(format!("started {} (pid {pid})", s.spec.name));
            if let Some((r, dir)) = pump {
                let name = s.spec.name.clone();
                let _ = std::thread::Builder::new()
                    .name(format!("log-{name}"))
                    .spawn(move || pump_lines(r, &dir, &name));
            }
        }
        Err(e) => {
            log::error(format!(
                "cannot start {} ({}): {e}",
                s.spec.name,
                s.spec.program.display()
            ));
            s.state = if s.spec.restart {
                State::Waiting(Instant::now() + s.backoff)
            } else {
                State::Stopped
            };
            s.backoff = (s.backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// Copies a service's output into its log; markers also to the console.
fn pump_lines(r: std::io::PipeReader, dir: &std::path::Path, name: &str) {
    let mut file = RotatingLog::open(dir, name, log::DEFAULT_MAX_BYTES, log::DEFAULT_KEEP).ok();
    if let Some(f) = file.as_mut() {
        let _ = f.write_line(&format!(
            "=== {name} started, boot time {:.3} s ===",
            log::uptime()
        ));
    }
    let mut reader = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        if let Some(f) = file.as_mut() {
            let _ = f.write_line(line);
        }
        // Only real markers: a message that merely names `$RAYOS_SOCKET`
        // is not one (it was relayed as `RAYOS_SOCKET at the running one`).
        if let Some(m) = rayos_base::marker::Marker::find_in(line) {
            // Through init's log, not the console alone: /dev/console is the
            // last `console=` (the screen), and the kernel log carries the
            // marker to the serial console too.
            log::relay_marker(&m.to_string());
        }
    }
    if let Some(f) = file.as_mut() {
        let _ = f.sync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_exit(pid: i32) -> i32 {
        let mut status = 0;
        // SAFETY: waitpid writes only `status`; pid is our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn output_is_logged_and_markers_relayed_and_restart_backs_off() {
        let d = tempfile::tempdir().unwrap();
        let started = rayos_base::marker::Marker::VmStarted {
            vm: "linux".into(),
            how: rayos_base::marker::VmStart::Cold,
        };
        let mut svcs = Services::new();
        svcs.add(Spec {
            name: "demo".into(),
            program: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                format!(
                    "echo hello; echo 'point it at $RAYOS_SOCKET instead'; echo 'rayosd: {started}'; echo oops >&2; exit 3"
                ),
            ],
            env: vec![],
            output: Output::Log(d.path().to_path_buf()),
            restart: true,
        });
        let pid = svcs.pid_of("demo").expect("running");
        let code = wait_exit(pid);
        assert_eq!(code, 3);
        assert!(svcs.exited(pid, code));
        assert!(!svcs.exited(pid, code), "a pid is handled once");
        assert_eq!(svcs.status()[0].state, "restarting");
        let next = svcs.tick().expect("a restart is due later");
        assert!(next <= BACKOFF_MIN);
        // The log has all three lines once the pump saw end of file.
        let log = d.path().join("demo.log");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("oops") {
                assert!(text.contains("hello") && text.contains(&format!("rayosd: {started}")));
                break;
            }
            assert!(Instant::now() < deadline, "log never complete: {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The marker line also went through init's own log (so it reaches
        // the serial console), from `RAYOS_` on and only that line.
        let relayed = |l: &String| l.ends_with(&format!("] {started}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = log::early_lines();
            if lines.iter().any(relayed) {
                assert!(!lines.iter().any(|l| l.ends_with("] hello")));
                // Naming an environment variable is not a marker.
                assert!(
                    !lines.iter().any(|l| l.contains("RAYOS_SOCKET")),
                    "{lines:?}"
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the marker never reached init's log: {lines:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(next);
        assert_eq!(svcs.tick(), None);
        let pid2 = svcs.pid_of("demo").expect("restarted");
        assert_ne!(pid, pid2);
        assert_eq!(svcs.status()[0].restarts, 1);
        // Stopping disables restarts.
        assert_eq!(svcs.signal("demo", libc::SIGKILL), Some(pid2));
        let code = wait_exit(pid2);
        svcs.exited(pid2, code);
        assert_eq!(svcs.status()[0].state, "exited");
        assert!(!svcs.any_running());
    }
}
