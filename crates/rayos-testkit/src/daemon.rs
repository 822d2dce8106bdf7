//! A real rayosd for tests: [`Host`] starts `rayos daemon` on a temporary
//! data volume and API socket (QEMU under TCG, no cgroups), runs the real
//! `rayos vm` CLI against it, reads what the daemon printed (its stderr and
//! its `RAYOS_*` markers), and attaches to a VM's serial console through
//! `rayos vm console --attach` ([`Console`]).
//!
//! What it owns: the temporary directory (data volume `state/`, sockets and
//! pid files under `run/`, the daemon's output files), the daemon process,
//! every QEMU and swtpm the daemon started from that directory, and tmpfs
//! mounts it made. All are ended or removed on drop, whatever happens to
//! the test: QEMU and swtpm are detached from the daemon, so killing the
//! daemon alone would leave them running.
//!
//! Limits: it is for tests, so every helper panics with the daemon's stderr
//! when something fails instead of returning an error. It does not build
//! the `rayos` binary: the caller passes its path (an integration test of
//! the `rayos` crate has it as `env!("CARGO_BIN_EXE_rayos")`). The helpers
//! here are the ones more than one test needs; what one test alone waits
//! for (a guest's counter, a stand-in's markers) stays in that test.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayos_api::{Client, VmInfo};
use rayos_base::marker::{Kind, Marker, VmStart};
use rayos_vmm::qemu::process;

use crate::guest;

/// One data volume and API socket, with a `rayos daemon` started (and
/// restarted) on it; the daemon and every VM process it started are killed
/// on drop.
pub struct Host {
    /// The `rayos` binary the daemon and the CLI calls run.
    bin: PathBuf,
    dir: tempfile::TempDir,
    daemon: Option<Child>,
    /// File systems mounted for the test, unmounted on drop.
    mounts: Vec<PathBuf>,
}

impl Host {
    /// A host with no daemon yet, whose every path (data volume, sockets)
    /// is below a new directory in `/tmp` starting with `prefix`; `bin` is
    /// the `rayos` binary.
    pub fn with_binary(bin: impl Into<PathBuf>, prefix: &str) -> Host {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .expect("a temporary directory in /tmp");
        Host {
            bin: bin.into(),
            dir,
            daemon: None,
            mounts: Vec::new(),
        }
    }

    /// The host's directory (everything the test makes may go here too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The data volume (`--state-dir`).
    pub fn state(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir().join("run/api.sock")
    }

    /// An API client on the socket, patient enough for a save under TCG.
    pub fn client(&self) -> Client {
        Client::new(self.socket()).with_timeout(Some(Duration::from_secs(300)))
    }

    /// A command running the `rayos` binary under test.
    pub fn rayos(&self) -> Command {
        Command::new(&self.bin)
    }

    /// Writes the host policy file on the data volume (read by the daemon
    /// at start and on `rayos policy` changes).
    pub fn policy(&self, text: &str) {
        let p = self.state().join("policy/rayos-policy.toml");
        fs::create_dir_all(p.parent().expect("the policy file has a parent"))
            .expect("creating the policy directory");
        fs::write(p, text).expect("writing the policy file");
    }

    /// Puts the data volume on a tmpfs of `mib` MiB (to fill it up); needs
    /// root.
    pub fn small_state_volume(&mut self, mib: u32) {
        let state = self.state();
        fs::create_dir_all(&state).expect("creating the data volume");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&state)
            .status()
            .expect("mount(8)");
        assert!(
            st.success(),
            "mounting a tmpfs needs root (tests run as root in CI)"
        );
        self.mounts.push(state);
    }

    /// Starts the daemon and waits until it answers on the socket.
    pub fn start_daemon(&mut self) {
        self.start_daemon_with(&[]);
    }

    /// Starts the daemon with extra `rayos daemon` arguments and waits
    /// until it answers; its stdout and stderr are appended to files in the
    /// host's directory, so they hold every run of the daemon.
    pub fn start_daemon_with(&mut self, extra: &[&str]) {
        assert!(self.daemon.is_none(), "the daemon runs already");
        let append = |name: &str| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir().join(name))
                .expect("opening the daemon's output file")
        };
        let child = self
            .rayos()
            .arg("daemon")
            .arg("--state-dir")
            .arg(self.state())
            .arg("--socket")
            .arg(self.socket())
            .args(["--cgroup", "none", "--shutdown-timeout", "120"])
            .args(extra)
            .env("RAYOS_ACCEL", "tcg")
            .stdin(Stdio::null())
            .stdout(append("daemon.out"))
            .stderr(append("daemon.err"))
            .spawn()
            .expect("spawn rayos daemon");
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.client().health().is_ok() {
                break;
            }
            if let Some(st) = self.daemon_child().try_wait().expect("waitpid") {
                panic!("rayos daemon exited with {st}: {}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not answer: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn daemon_child(&mut self) -> &mut Child {
        self.daemon.as_mut().expect("the daemon runs")
    }

    /// SIGKILL, as at a daemon crash; VMs go on running.
    pub fn kill_daemon(&mut self) {
        let mut c = self.daemon.take().expect("the daemon runs");
        c.kill().expect("killing the daemon");
        c.wait().expect("waitpid");
    }

    /// SIGTERM, as at host shutdown; waits up to 3 minutes for the daemon
    /// to exit and returns its exit code (-1 when a signal ended it).
    pub fn term_daemon(&mut self) -> i32 {
        let mut c = self.daemon.take().expect("the daemon runs");
        process::signal(c.id(), libc::SIGTERM).expect("SIGTERM to the daemon");
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(st) = c.try_wait().expect("waitpid") {
                return st.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("daemon did not exit after SIGTERM: {}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the daemon wrote to stderr so far (all runs).
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir().join("daemon.err")).unwrap_or_default()
    }

    /// The daemon's markers of `kind` so far (all runs), oldest first.
    pub fn markers(&self, kind: Kind) -> Vec<Marker> {
        fs::read_to_string(self.dir().join("daemon.out"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse::<Marker>().ok())
            .filter(|m| m.kind() == kind)
            .collect()
    }

    /// How VM `vm` came up at each start, oldest first.
    pub fn starts(&self, vm: &str) -> Vec<VmStart> {
        self.markers(Kind::VmStarted)
            .into_iter()
            .filter_map(|m| match m {
                Marker::VmStarted { vm: v, how } if v == vm => Some(how),
                _ => None,
            })
            .collect()
    }

    /// `rayos vm ARGS` against this host's socket, whatever its outcome.
    pub fn vm(&self, args: &[&str]) -> Output {
        self.rayos()
            .arg("vm")
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("running rayos vm")
    }

    /// `rayos vm ARGS`, which must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.vm(args);
        assert!(
            o.status.success(),
            "rayos vm {args:?} failed: {}{}\ndaemon: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.stderr()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `rayos vm show NAME --json`, parsed.
    pub fn show(&self, name: &str) -> VmInfo {
        let out = self.ok(&["show", name, "--json"]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("rayos vm show: {e}: {out}"))
    }

    /// `rayos vm create NAME` for the tiny test guest ([`guest::linux_guest`]:
    /// kind `linux`, 256 MiB, one vCPU, direct kernel boot), with `extra`
    /// arguments appended.
    pub fn create_guest(&self, name: &str, extra: &[&str]) {
        self.create_guest_with(name, "", extra);
    }

    /// [`Host::create_guest`] with `append` added to the guest's kernel
    /// command line (its `rayos.*` switches: `rayos.read=vda`, …).
    pub fn create_guest_with(&self, name: &str, append: &str, extra: &[&str]) {
        let g = guest::linux_guest().unwrap_or_else(|e| {
            panic!("test guest (needs linux-image-amd64, busybox-static): {e}")
        });
        let (kernel, initrd) = (
            g.kernel.display().to_string(),
            g.initrd.display().to_string(),
        );
        let cmdline = format!("{} {append}", g.cmdline).trim_end().to_string();
        let mut args = vec![
            "create",
            name,
            "--kind",
            "linux",
            "--memory",
            "256",
            "--cpus",
            "1",
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--cmdline",
            &cmdline,
        ];
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    /// The path of VM `name`'s console log (the serial port's output, kept
    /// by the daemon across starts).
    pub fn console(&self, name: &str) -> PathBuf {
        self.show(name).vm_dir.join("logs/console.log")
    }

    /// `rayos vm console NAME --attach`, driven through pipes.
    pub fn attach_console(&self, name: &str) -> Console {
        let mut child = self
            .rayos()
            .arg("vm")
            .arg("--socket")
            .arg(self.socket())
            .args(["console", name, "--attach"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rayos vm console");
        let out = Arc::new(Mutex::new(String::new()));
        let mut stdout = child.stdout.take().expect("piped stdout");
        let sink = Arc::clone(&out);
        // A reader thread, so a wait never blocks on a read with the
        // deadline passed.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("console buffer")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Console {
            stdin: child.stdin.take(),
            child,
            out,
            seen: 0,
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // QEMU and swtpm are detached from the daemon: end them here.
        let vm_run = self.dir().join("run/vm");
        let dir = self.dir().display().to_string();
        for e in fs::read_dir(&vm_run).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            for pidfile in ["qemu.pid", "swtpm.pid"] {
                // The pid is checked against the command line first (a pid
                // file may outlive its process and the pid be reused);
                // swtpm's command line names the VM directory, not the id.
                if let Some(pid) = process::read_pid(&e.path().join(pidfile))
                    && (process::alive_with_arg(pid, &id)
                        || (pidfile == "swtpm.pid" && process::alive_with_arg(pid, &dir)))
                {
                    let _ = process::signal(pid, libc::SIGKILL);
                    process::wait_gone(pid, Duration::from_secs(5));
                }
            }
        }
        for m in self.mounts.drain(..) {
            let _ = Command::new("umount").arg(&m).status();
        }
    }
}

/// An attached `rayos vm console` session: what is sent goes to the VM's
/// serial port, what the VM prints is collected for [`Console::expect`].
/// The CLI is killed on drop.
pub struct Console {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<String>>,
    /// How much of `out` earlier waits consumed.
    seen: usize,
}

impl Console {
    /// Types `text` on the console.
    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("session open");
        stdin
            .write_all(text.as_bytes())
            .expect("writing to rayos vm console");
        stdin.flush().expect("writing to rayos vm console");
    }

    /// Waits for `needle` in the output that arrived since the last wait;
    /// returns that output up to and including the needle.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let out = self.out.lock().expect("console buffer");
                if let Some(i) = out[self.seen..].find(needle) {
                    let end = self.seen + i + needle.len();
                    let got = out[self.seen..end].to_string();
                    self.seen = end;
                    return got;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} did not come on the console within {timeout:?}; got:\n{}",
                tail(&self.out.lock().expect("console buffer")[self.seen..], 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Closes stdin, so the CLI leaves the console; waits up to 20 s for
    /// it to exit.
    pub fn close(mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().expect("waitpid").is_none() {
            assert!(Instant::now() < deadline, "rayos vm console did not end");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process ended on drop the way a host shutdown ends it: SIGTERM
/// first (a daemon saves or stops its VMs, a presenter hands the display
/// back), SIGKILL if it is still there after a minute.
pub struct TermOnDrop(pub Child);

impl Drop for TermOnDrop {
    fn drop(&mut self) {
        let _ = process::signal(self.0.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The last `n` lines of `text`, for failure messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 3), "");
    }
}
