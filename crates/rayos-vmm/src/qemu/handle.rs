//! Control of one running QEMU: state, save, restore, power, screenshots,
//! guest time. Dropping a handle leaves QEMU running (that is what lets the
//! daemon restart); [`VmHandle::kill`] ends it.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64ct::Encoding as _;
use rayos_qmp::{GuestAgent, QmpClient, QmpError};
use serde_json::{Value, json};

use super::cmdline::{self, run};
use super::media;
use super::write_behind::WriteBehind;
use super::{QemuConfig, SaveFormat, chain, process, space, swtpm, sync_dir};
use crate::{
    ClockSource, ClockSync, ExecOutcome, ExecSpec, GuestInfo, InputEvent, RunState, SaveReport,
    TpmState, VmHandle, VmSpec, VmmError,
};

/// `max-bandwidth` during a save: the default limit (32 MiB/s) makes saving
/// several times slower than the disk allows.
const SAVE_BANDWIDTH: u64 = 10 << 30;
/// Status polls while a restore loads: QMP answers only between chunks of
/// the load, so a short interval costs little and ends the wait early.
const POLL: Duration = Duration::from_millis(2);

/// The QEMU backend's [`VmHandle`]: one running QEMU (and its swtpm),
/// controlled through QMP.
pub struct QemuHandle {
    spec: VmSpec,
    config: QemuConfig,
    pid: u32,
    tpm_pid: Option<u32>,
    qmp: Option<QmpClient>,
}

impl std::fmt::Debug for QemuHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuHandle")
            .field("vm", &self.spec.def.name)
            .field("pid", &self.pid)
            .field("tpm_pid", &self.tpm_pid)
            .finish()
    }
}

/// `getfd` names of the migration pipes; the URIs are `fd:<name>`.
const SAVE_FD: &str = "migsave";
const LOAD_FD: &str = "migload";

impl QemuHandle {
    pub(crate) fn new(
        spec: &VmSpec,
        config: &QemuConfig,
        pid: u32,
        tpm_pid: Option<u32>,
        qmp: QmpClient,
    ) -> Self {
        QemuHandle {
            spec: spec.clone(),
            config: config.clone(),
            pid,
            tpm_pid,
            qmp: Some(qmp),
        }
    }

    fn name(&self) -> String {
        self.spec.def.name.clone()
    }

    fn qmp_err(&self, e: QmpError) -> VmmError {
        qmp_error(&self.spec.def.name, &e)
    }

    /// Runs a QMP command; a dropped connection is remembered so later calls
    /// fail fast.
    fn exec(&mut self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let Some(q) = self.qmp.as_mut() else {
            return Err(QmpError::Closed(command.into()));
        };
        let r = q.execute(command, args);
        if r.as_ref().is_err_and(QmpError::is_disconnect) {
            self.qmp = None;
        }
        r
    }

    /// QEMU's `query-status` status string.
    fn status(&mut self) -> Result<String, QmpError> {
        let v = self.exec("query-status", None)?;
        Ok(v["status"].as_str().unwrap_or("unknown").to_string())
    }

    /// The QMP client, for callers that need commands this trait lacks.
    pub fn qmp(&mut self) -> Option<&mut QmpClient> {
        self.qmp.as_mut()
    }

    /// Hands `fd` to QEMU under `name` (`getfd` with SCM_RIGHTS) and closes
    /// our copy whatever happens, so the pipe's only other end is QEMU's.
    fn pass_fd(&mut self, name: &str, fd: Option<OwnedFd>) -> Result<(), String> {
        let fd = fd.ok_or("no descriptor to pass (zstd was started without a pipe)")?;
        let Some(q) = self.qmp.as_mut() else {
            return Err(chain(&QmpError::Closed("getfd".into())));
        };
        let r = q.execute_with_fd("getfd", Some(json!({ "fdname": name })), fd.as_fd());
        drop(fd);
        if r.as_ref().is_err_and(QmpError::is_disconnect) {
            self.qmp = None;
        }
        r.map(|_| ()).map_err(|e| chain(&e))
    }

    /// Loads `state_file` into a QEMU started with `-incoming defer` and
    /// leaves the guest running.
    pub(crate) fn restore_from(&mut self, state_file: &Path) -> Result<(), VmmError> {
        let vm = self.name();
        let fail = |detail: String| VmmError::Restore {
            vm: vm.clone(),
            detail,
        };
        // A raw stream is handed to QEMU as the file itself; a zstd one
        // through `zstd -dc`, which runs as our child, not QEMU's: `fd:`
        // migration needs no shell in the image. Its exit status tells a
        // stream that ended early from one still loading (QEMU 7.2 waits
        // forever on an empty pipe; at the end of a file it fails).
        let compressed = super::state_is_compressed(state_file).map_err(&fail)?;
        let mut zstd = None;
        let read_end = if compressed {
            let mut z = Zstd::spawn(
                Command::new(&self.config.zstd)
                    .args(["-q", "-dc"])
                    .arg(state_file)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped()),
                &self.config.zstd,
            )
            .map_err(&fail)?;
            let r = z.0.stdout.take().map(OwnedFd::from);
            zstd = Some(z);
            r
        } else {
            let f = File::open(state_file)
                .map_err(|e| fail(format!("cannot open {}: {e}", state_file.display())))?;
            Some(OwnedFd::from(f))
        };
        self.pass_fd(LOAD_FD, read_end).map_err(&fail)?;
        self.exec(
            "migrate-incoming",
            Some(json!({ "uri": format!("fd:{LOAD_FD}") })),
        )
        .map_err(|e| {
            let _ = self.exec("closefd", Some(json!({ "fdname": LOAD_FD })));
            fail(chain(&e))
        })?;
        let deadline = Instant::now() + self.config.migrate_timeout;
        let mut stream_done: Option<Instant> = None;
        loop {
            if stream_done.is_none()
                && let Some(z) = zstd.as_mut()
                && let Some(status) = z.try_wait().map_err(&fail)?
            {
                if !status.success() {
                    return Err(fail(format!(
                        "zstd could not read {} ({status})",
                        state_file.display()
                    )));
                }
                stream_done = Some(Instant::now());
            }
            // The whole stream has been read; QEMU only needs to apply the
            // last device states, which takes well under this.
            if stream_done.is_some_and(|t| t.elapsed() > Duration::from_secs(30)) {
                return Err(fail(format!(
                    "QEMU did not finish loading {} after the stream ended",
                    state_file.display()
                )));
            }
            let status = match self.status() {
                Ok(s) => s,
                // A stream that does not load makes QEMU exit.
                Err(_) if !process::alive(self.pid) => {
                    return Err(fail(format!(
                        "QEMU exited while loading {} (corrupt, truncated or from another configuration)",
                        state_file.display()
                    )));
                }
                Err(e) => return Err(fail(chain(&e))),
            };
            match status.as_str() {
                "inmigrate" | "prelaunch" => {}
                "paused" | "postmigrate" => {
                    self.exec("cont", None).map_err(|e| fail(chain(&e)))?;
                    return Ok(());
                }
                "running" => return Ok(()),
                other => {
                    return Err(fail(format!(
                        "QEMU is {other} after loading {}",
                        state_file.display()
                    )));
                }
            }
            if let Ok(m) = self.exec("query-migrate", None)
                && m["status"] == "failed"
            {
                return Err(fail(format!(
                    "loading {} failed: {}",
                    state_file.display(),
                    m["error-desc"].as_str().unwrap_or("no detail")
                )));
            }
            if Instant::now() >= deadline {
                return Err(VmmError::Timeout(
                    self.config.migrate_timeout,
                    format!("VM {vm} to load {}", state_file.display()),
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The migration part of a save; on error the caller cleans up.
    fn save_stream(&mut self, tmp: &Path, format: SaveFormat) -> Result<u64, String> {
        self.exec(
            "migrate-set-parameters",
            Some(json!({ "max-bandwidth": SAVE_BANDWIDTH })),
        )
        .map_err(|e| chain(&e))?;
        // MIGRATION events tell the end of the stream at once: with the
        // guest stopped QEMU sends all RAM in its completion step, holding
        // the lock QMP needs, so polling `query-migrate` only adds the
        // poll interval after the end.
        self.exec(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": [{ "capability": "events", "state": true }] })),
        )
        .map_err(|e| chain(&e))?;
        // The file is ours, created 0600 (guest RAM can hold keys).
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        // Raw: QEMU writes the stream into the file itself (`fd:` with the
        // file's descriptor; zero pages are already only a header each).
        // Zstd: zstd runs as our child and QEMU writes into its stdin
        // through a pipe; no shell is involved either way. QEMU may report
        // "completed" before zstd has flushed, and on a full disk only
        // zstd's exit status tells a truncated stream from a complete one,
        // so both must succeed.
        let (fd, mut zstd) = match format {
            SaveFormat::Raw => (
                OwnedFd::from(out.try_clone().map_err(|e| e.to_string())?),
                None,
            ),
            SaveFormat::Zstd => {
                let mut z = Zstd::spawn(
                    Command::new(&self.config.zstd)
                        .args(["-q", "-1", "-T2", "-c"])
                        .stdin(Stdio::piped())
                        .stdout(out.try_clone().map_err(|e| e.to_string())?),
                    &self.config.zstd,
                )?;
                let w = z.0.stdin.take().map(OwnedFd::from);
                (w.ok_or("zstd was started without a pipe")?, Some(z))
            }
        };
        // Writeback starts while the stream is written, so the fsync at
        // the end waits only for the tail (ended on any return).
        let write_behind = WriteBehind::start(out.try_clone().map_err(|e| e.to_string())?);
        // Our copy of the descriptor is closed inside: zstd sees EOF as
        // soon as QEMU closes its copy at the end of the migration.
        self.pass_fd(SAVE_FD, Some(fd))?;
        if let Err(e) = self.exec("migrate", Some(json!({ "uri": format!("fd:{SAVE_FD}") }))) {
            let _ = self.exec("closefd", Some(json!({ "fdname": SAVE_FD })));
            return Err(chain(&e));
        }
        let deadline = Instant::now() + self.config.migrate_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = self.exec("migrate_cancel", None);
                return Err(format!(
                    "not finished after {:?}",
                    self.config.migrate_timeout
                ));
            }
            let Some(q) = self.qmp.as_mut() else {
                return Err(chain(&QmpError::Closed("migrate".into())));
            };
            // Bounded waits: a missed event (none is expected) still ends
            // in the status check below.
            let ev = q
                .wait_event("MIGRATION", left.min(Duration::from_secs(1)))
                .map_err(|e| chain(&e))?;
            let status = match ev {
                Some(e) => e.data["status"].as_str().unwrap_or("").to_string(),
                None => {
                    let m = self.exec("query-migrate", None).map_err(|e| chain(&e))?;
                    m["status"].as_str().unwrap_or("").to_string()
                }
            };
            if matches!(status.as_str(), "completed" | "failed" | "cancelled") {
                break;
            }
        }
        let m = self.exec("query-migrate", None).map_err(|e| chain(&e))?;
        if m["status"] != "completed" {
            return Err(format!(
                "migration {}: {}",
                m["status"].as_str().unwrap_or(""),
                m["error-desc"].as_str().unwrap_or("no detail (disk full?)")
            ));
        }
        let transferred = m["ram"]["transferred"].as_u64().unwrap_or(0);
        // Wait for zstd to finish writing.
        if let Some(z) = zstd.as_mut() {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(status) = z.try_wait()? {
                    if !status.success() {
                        return Err(format!("zstd failed ({status}; disk full?)"));
                    }
                    break;
                }
                if Instant::now() >= deadline {
                    return Err("zstd did not finish within 60 s".into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        write_behind.finish();
        out.sync_all()
            .map_err(|e| format!("cannot sync {}: {e}", tmp.display()))?;
        Ok(transferred)
    }

    fn stop_tpm(&mut self) {
        if self.spec.def.tpm {
            swtpm::stop(&self.spec);
        }
        self.tpm_pid = None;
    }
}

impl VmHandle for QemuHandle {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn state(&mut self) -> Result<RunState, VmmError> {
        if !process::alive(self.pid) {
            return Ok(RunState::Exited);
        }
        match self.status() {
            Ok(s) => Ok(match s.as_str() {
                "running" => RunState::Running,
                "shutdown" => RunState::Shutdown,
                _ => RunState::Paused,
            }),
            Err(_) if !process::alive(self.pid) => Ok(RunState::Exited),
            Err(e) if e.is_disconnect() => Ok(RunState::Exited),
            Err(e) => Err(self.qmp_err(e)),
        }
    }

    fn tpm_state(&mut self) -> TpmState {
        if !self.spec.def.tpm {
            return TpmState::Absent;
        }
        // The pid must still be a swtpm serving this VM's state directory
        // (a pid can be reused once the process is gone).
        let dir = swtpm::state_dir(&self.spec).display().to_string();
        match self.tpm_pid {
            Some(pid) if process::alive_with_arg(pid, &dir) => TpmState::Running,
            _ => TpmState::Died,
        }
    }

    fn save(&mut self, state_file: &Path) -> Result<SaveReport, VmmError> {
        let vm = self.name();
        let started = Instant::now();
        let dir = state_file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| VmmError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut tmp_name = state_file.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(".partial");
        let tmp: PathBuf = dir.join(tmp_name);
        let _ = std::fs::remove_file(&tmp);

        // Decided before the guest stops, so a save that cannot fit leaves
        // the VM untouched rather than failing half-way.
        let memory = self.spec.memory_mib.saturating_mul(1 << 20);
        let free = space::free_bytes(&dir).map_err(|source| VmmError::Io {
            path: dir.clone(),
            source,
        })?;
        let need = space::Need::for_memory(memory);
        let (format, fallback) = match space::plan(self.config.save_format, free, memory) {
            space::Plan::Write { format, fallback } => (format, fallback),
            space::Plan::Refuse => {
                return Err(VmmError::NoSpace {
                    vm,
                    dir,
                    free_mib: free >> 20,
                    need_mib: space::mib(need.raw),
                    min_mib: space::mib(need.zstd),
                });
            }
        };

        let was_running = self.status().map_err(|e| self.qmp_err(e))? == "running";
        self.exec("stop", None).map_err(|e| self.qmp_err(e))?;
        let transferred = match self.save_stream(&tmp, format) {
            Ok(t) => t,
            Err(mut detail) => {
                if fallback {
                    detail.push_str(&format!(
                        "; written compressed as {} had {} MiB free and a raw state needs up to \
                         {} MiB: free space there and save again (the VM keeps running)",
                        dir.display(),
                        free >> 20,
                        space::mib(need.raw)
                    ));
                }
                let _ = std::fs::remove_file(&tmp);
                if was_running {
                    let _ = self.exec("cont", None);
                }
                return Err(VmmError::Save { vm, detail });
            }
        };
        if let Err(e) = std::fs::rename(&tmp, state_file) {
            let _ = std::fs::remove_file(&tmp);
            if was_running {
                let _ = self.exec("cont", None);
            }
            return Err(VmmError::Io {
                path: state_file.to_path_buf(),
                source: e,
            });
        }
        sync_dir(&dir);
        let bytes = std::fs::metadata(state_file).map(|m| m.len()).unwrap_or(0);
        // The state is safe on disk: end QEMU. `quit` may race with the
        // connection closing, which is fine.
        let _ = self.exec("quit", None);
        if !process::wait_gone(self.pid, Duration::from_secs(10)) {
            process::terminate(self.pid, Duration::from_secs(2));
        }
        self.qmp = None;
        self.stop_tpm();
        let _ = std::fs::remove_file(self.spec.run_dir.join(run::QEMU_PID));
        Ok(SaveReport {
            state_file: state_file.to_path_buf(),
            bytes,
            transferred,
            duration: started.elapsed(),
            compressed_fallback: fallback,
        })
    }

    fn change_media(&mut self, change: &media::Change) -> Result<(), VmmError> {
        use media::{Change, names};
        // Parsed back from the command line's own JSON, so a medium added
        // now is opened exactly like one on the command line.
        let blockdev = |node: &str, path: &Path| -> Value {
            serde_json::from_str(&cmdline::media_blockdev(node, path)).unwrap_or(Value::Null)
        };
        let r = match change {
            Change::InsertCd { index, path } => {
                let (dev, node) = (names::cd_device(*index), names::cd_node(*index));
                self.exec("blockdev-add", Some(blockdev(&node, path)))
                    .and_then(|_| {
                        self.exec(
                            "blockdev-open-tray",
                            Some(json!({ "id": dev, "force": true })),
                        )
                    })
                    .and_then(|_| {
                        self.exec(
                            "blockdev-insert-medium",
                            Some(json!({ "id": dev, "node-name": node })),
                        )
                    })
                    .and_then(|_| self.exec("blockdev-close-tray", Some(json!({ "id": dev }))))
                    .inspect_err(|_| {
                        // Leave no half-added node behind.
                        let _ = self.exec("blockdev-del", Some(json!({ "node-name": node })));
                    })
            }
            Change::EjectCd { index } => {
                let (dev, node) = (names::cd_device(*index), names::cd_node(*index));
                // `force`: the guest may have locked the tray; RayOS is the
                // person's hand on the eject button.
                self.exec(
                    "blockdev-open-tray",
                    Some(json!({ "id": dev, "force": true })),
                )
                .and_then(|_| self.exec("blockdev-remove-medium", Some(json!({ "id": dev }))))
                .and_then(|_| self.exec("blockdev-close-tray", Some(json!({ "id": dev }))))
                .and_then(|_| self.exec("blockdev-del", Some(json!({ "node-name": node }))))
            }
            Change::PlugUsb { index, path } => {
                let node = names::usb_node(*index);
                self.exec("blockdev-add", Some(blockdev(&node, path)))
                    .and_then(|_| {
                        self.exec(
                            "device_add",
                            Some(json!({
                                "driver": "usb-storage",
                                "bus": format!("{}.0", cmdline::XHCI),
                                "port": names::usb_port(*index).to_string(),
                                "id": names::usb_device(*index),
                                "drive": node,
                                "removable": true,
                            })),
                        )
                    })
                    .inspect_err(|_| {
                        let _ = self.exec("blockdev-del", Some(json!({ "node-name": node })));
                    })
            }
            Change::UnplugUsb { index } => {
                let dev = names::usb_device(*index);
                let r = self.exec("device_del", Some(json!({ "id": dev })));
                if r.is_ok() {
                    // USB unplugs at once, but the node is freed only after
                    // QEMU has finalised the device: wait for it.
                    if let Some(q) = self.qmp.as_mut() {
                        let _ = q.wait_event("DEVICE_DELETED", Duration::from_secs(10));
                    }
                }
                r.and_then(|_| {
                    self.exec(
                        "blockdev-del",
                        Some(json!({ "node-name": names::usb_node(*index) })),
                    )
                })
            }
        };
        r.map(|_| ()).map_err(|e| self.qmp_err(e))
    }

    fn powerdown(&mut self) -> Result<(), VmmError> {
        self.exec("system_powerdown", None)
            .map(|_| ())
            .map_err(|e| self.qmp_err(e))
    }

    fn kill(&mut self) -> Result<(), VmmError> {
        self.qmp = None;
        process::signal(self.pid, libc::SIGKILL).map_err(|source| VmmError::Io {
            path: PathBuf::from(format!("/proc/{}", self.pid)),
            source,
        })?;
        if !process::wait_gone(self.pid, Duration::from_secs(10)) {
            return Err(VmmError::Timeout(
                Duration::from_secs(10),
                format!("QEMU of VM {} (pid {}) to exit", self.name(), self.pid),
            ));
        }
        self.stop_tpm();
        let _ = std::fs::remove_file(self.spec.run_dir.join(run::QEMU_PID));
        Ok(())
    }

    fn wait_exit(&mut self, timeout: Duration) -> Result<bool, VmmError> {
        // QEMU runs with -no-shutdown: once the guest has powered off, ask
        // it to exit.
        let deadline = Instant::now() + timeout;
        while process::alive(self.pid) && Instant::now() < deadline {
            if self.qmp.is_some() && self.status().is_ok_and(|s| s == "shutdown") {
                let _ = self.exec("quit", None);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let gone = process::wait_gone(self.pid, deadline.saturating_duration_since(Instant::now()));
        if gone {
            self.qmp = None;
            // swtpm ends by itself when QEMU hangs up; make sure.
            self.stop_tpm();
        }
        Ok(gone)
    }

    fn screenshot(&mut self, png: &Path) -> Result<(), VmmError> {
        // QEMU writes the file itself, relative to its own working directory.
        let abs = std::path::absolute(png).map_err(|source| VmmError::Io {
            path: png.to_path_buf(),
            source,
        })?;
        self.exec(
            "screendump",
            Some(json!({ "filename": abs.display().to_string(), "format": "png" })),
        )
        .map(|_| ())
        .map_err(|e| self.qmp_err(e))
    }

    fn guest_shutdown(&mut self) -> Result<bool, VmmError> {
        let Some(mut ga) = self.agent(Duration::from_secs(2)) else {
            return Ok(false);
        };
        // An agent that refuses the command (unknown, blocked) leaves the
        // power button to the caller.
        match ga.send_unanswered(
            "guest-shutdown",
            Some(json!({ "mode": "powerdown" })),
            Duration::from_secs(1),
        ) {
            Ok(()) => Ok(true),
            Err(QmpError::Rejected { .. }) => Ok(false),
            Err(e) => Err(self.qmp_err(e)),
        }
    }

    fn guest_info(&mut self) -> Result<Option<GuestInfo>, VmmError> {
        let Some(mut ga) = self.agent(Duration::from_secs(1)) else {
            return Ok(None);
        };
        // A command the agent refuses (an older agent, a blocked command)
        // leaves its part empty rather than failing the whole report.
        let mut ask = |c: &str| ga.execute(c, None).unwrap_or(Value::Null);
        let host = ask("guest-get-host-name");
        let os = ask("guest-get-osinfo");
        let ifs = ask("guest-network-get-interfaces");
        Ok(Some(GuestInfo::from_replies(&host, &os, &ifs)))
    }

    fn send_input(&mut self, events: &[InputEvent]) -> Result<(), VmmError> {
        let events: Vec<Value> = events.iter().flat_map(input_event_json).collect();
        self.exec("input-send-event", Some(json!({ "events": events })))
            .map(|_| ())
            .map_err(|e| self.qmp_err(e))
    }

    fn console_write(&mut self, bytes: &[u8]) -> Result<(), VmmError> {
        use std::io::{Read as _, Write as _};
        let path = self.console_socket();
        let io = |source| VmmError::Io {
            path: path.clone(),
            source,
        };
        let mut s = std::os::unix::net::UnixStream::connect(&path).map_err(io)?;
        s.set_write_timeout(Some(CONSOLE_WRITE_WAIT)).map_err(io)?;
        s.write_all(bytes).map_err(io)?;
        // Closing at once would lose bytes: QEMU drops a connection on
        // hang-up without reading what is still queued. A half-close is
        // an end of file that QEMU reads only after the bytes before it,
        // and then it closes its side, so its end of file here means the
        // guest's serial port took everything. What the guest prints
        // meanwhile comes to this connection too and is discarded.
        s.shutdown(std::net::Shutdown::Write).map_err(io)?;
        let deadline = Instant::now() + CONSOLE_WRITE_WAIT;
        let mut sink = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(VmmError::Timeout(
                    CONSOLE_WRITE_WAIT,
                    format!(
                        "VM {}'s serial port to take the bytes (is someone attached with `rayos vm console`?)",
                        self.name()
                    ),
                ));
            }
            s.set_read_timeout(Some(left)).map_err(io)?;
            match s.read(&mut sink) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(io(e)),
            }
        }
    }

    fn vnc_socket(&self) -> PathBuf {
        self.spec.run_dir.join(run::VNC)
    }

    fn console_socket(&self) -> PathBuf {
        self.spec.run_dir.join(run::CONSOLE)
    }
}

impl QemuHandle {
    /// A synchronised connection to the guest agent, or `None` when no
    /// agent answers within `timeout`.
    fn agent(&self, timeout: Duration) -> Option<GuestAgent> {
        agent_at(&self.spec.run_dir, timeout)
    }
}

/// A QMP or agent exchange with VM `vm` that failed.
fn qmp_error(vm: &str, e: &QmpError) -> VmmError {
    VmmError::Qmp {
        vm: vm.to_string(),
        detail: chain(e),
    }
}

/// [`crate::Vmm::sync_guest_time`] for QEMU: through the agent socket in
/// the VM's run directory.
pub(crate) fn sync_guest_time(
    vm: &VmSpec,
    agent_wait: Duration,
) -> Result<Option<ClockSync>, VmmError> {
    let Some(mut ga) = agent_at(&vm.run_dir, agent_wait) else {
        return Ok(None);
    };
    let failed = |e: QmpError| qmp_error(&vm.def.name, &e);
    // The agent answered its sync: it is there. Setting the clock runs
    // `hwclock` in the guest (which waits for a second boundary); a guest
    // just resumed on a busy machine took over 2 s for that.
    ga.set_timeout(SET_TIME_WAIT);
    // From the RTC first: sending the host's time leaves the guest behind
    // by however long the command takes to reach it (5.6 s in a nested
    // run), which cannot be measured from here (a read-back cannot tell a
    // late reading from a late clock).
    let source = match ga.execute("guest-set-time", None) {
        Ok(_) => ClockSource::Rtc,
        Err(QmpError::Rejected { .. }) => {
            let time = u64::try_from(now_ns()).unwrap_or(0);
            ga.execute("guest-set-time", Some(json!({ "time": time })))
                .map_err(failed)?;
            ClockSource::Host
        }
        Err(e) => return Err(failed(e)),
    };
    Ok(Some(ClockSync {
        source,
        offset_ms: guest_clock_offset(&mut ga).and_then(|ns| i64::try_from(ns / 1_000_000).ok()),
    }))
}

/// [`crate::Vmm::guest_exec`] for QEMU: through the agent socket in the
/// VM's run directory.
pub(crate) fn guest_exec(vm: &VmSpec, spec: &ExecSpec) -> Result<Option<ExecOutcome>, VmmError> {
    // Longer than the other agent calls' 1-2 s: an exec is asked for
    // explicitly, and a busy guest's agent may be slow to answer.
    let Some(mut ga) = agent_at(&vm.run_dir, EXEC_AGENT_WAIT) else {
        return Ok(None);
    };
    let vm = vm.def.name.clone();
    let refused = |e: QmpError| match e {
        QmpError::Rejected { desc, .. } => VmmError::Guest {
            vm: vm.clone(),
            detail: desc,
        },
        e => qmp_error(&vm, &e),
    };
    let mut args = json!({
        "path": spec.path,
        "arg": spec.args,
        "capture-output": true,
    });
    if !spec.input.is_empty() {
        args["input-data"] = json!(base64ct::Base64::encode_string(&spec.input));
    }
    let started = ga.execute("guest-exec", Some(args)).map_err(&refused)?;
    let pid = started["pid"].as_i64().ok_or_else(|| VmmError::Guest {
        vm: vm.clone(),
        detail: format!("guest-exec answered no pid: {started}"),
    })?;
    let deadline = Instant::now() + spec.timeout;
    loop {
        let st = ga
            .execute("guest-exec-status", Some(json!({ "pid": pid })))
            .map_err(&refused)?;
        if st["exited"].as_bool() == Some(true) {
            return Ok(Some(exec_outcome(pid, &st, spec.max_output)));
        }
        if Instant::now() >= deadline {
            return Ok(Some(ExecOutcome {
                pid,
                ..ExecOutcome::default()
            }));
        }
        std::thread::sleep(EXEC_POLL);
    }
}

/// A synchronised connection to the guest agent of the VM whose run
/// directory is `run_dir`, or `None` when no agent answers within `timeout`.
fn agent_at(run_dir: &Path, timeout: Duration) -> Option<GuestAgent> {
    let sock = run_dir.join(run::QGA);
    let mut ga = GuestAgent::connect(&sock, timeout).ok()?;
    let id = random_u64() & ((1 << 53) - 1);
    match ga.sync(id) {
        Ok(true) => Some(ga),
        Ok(false) | Err(_) => None,
    }
}

/// How long a console write waits for the guest's serial port to take it.
const CONSOLE_WRITE_WAIT: Duration = Duration::from_secs(10);

/// How long `guest-set-time` may take once the agent answered its sync.
const SET_TIME_WAIT: Duration = Duration::from_secs(10);

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// The guest clock minus the host's, in ns, from `guest-get-time` (read by
/// the guest somewhere inside the round trip: taken as its middle). `None`
/// when the agent cannot report its clock.
fn guest_clock_offset(ga: &mut GuestAgent) -> Option<i128> {
    let t0 = now_ns();
    let guest = ga.execute("guest-get-time", None).ok()?.as_i64()?;
    let t1 = now_ns();
    Some(i128::from(guest) - (t0 + t1) / 2)
}

/// How long an exec waits for the agent to answer each request.
const EXEC_AGENT_WAIT: Duration = Duration::from_secs(5);

/// How often a running `guest-exec` program is asked about.
const EXEC_POLL: Duration = Duration::from_millis(100);

/// The events of QMP `input-send-event` for one [`InputEvent`].
fn input_event_json(e: &InputEvent) -> Vec<Value> {
    match *e {
        InputEvent::Key { qcode, down } => vec![json!({
            "type": "key",
            "data": { "down": down, "key": { "type": "qcode", "data": qcode } },
        })],
        // Both axes in one batch: QEMU applies them at the batch's sync.
        InputEvent::Abs { x, y } => vec![
            json!({ "type": "abs", "data": { "axis": "x", "value": x } }),
            json!({ "type": "abs", "data": { "axis": "y", "value": y } }),
        ],
        InputEvent::Button { button, down } => vec![json!({
            "type": "btn",
            "data": { "down": down, "button": button.qemu_name() },
        })],
    }
}

/// The outcome of an exited program from `guest-exec-status`; output is
/// cut to `max` bytes per stream.
fn exec_outcome(pid: i64, st: &Value, max: usize) -> ExecOutcome {
    let stream = |data: &str, cut: &str| {
        let mut bytes = st[data]
            .as_str()
            .and_then(|b| base64ct::Base64::decode_vec(b).ok())
            .unwrap_or_default();
        let mut truncated = st[cut].as_bool() == Some(true);
        if bytes.len() > max {
            bytes.truncate(max);
            truncated = true;
        }
        (bytes, truncated)
    };
    let (stdout, stdout_truncated) = stream("out-data", "out-truncated");
    let (stderr, stderr_truncated) = stream("err-data", "err-truncated");
    let num = |k: &str| st[k].as_i64().and_then(|v| i32::try_from(v).ok());
    ExecOutcome {
        pid,
        exited: true,
        exit_code: num("exitcode"),
        signal: num("signal"),
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
    }
}

/// A zstd child of ours, killed and reaped when dropped unless it has
/// already exited, so no failure path leaves one behind.
struct Zstd(Child);

impl Zstd {
    /// Spawns `cmd` (stderr discarded) in its own process group: a Ctrl-C
    /// or a signal to the daemon's group must not cut a stream QEMU is
    /// still writing or reading.
    fn spawn(cmd: &mut Command, program: &Path) -> Result<Self, String> {
        cmd.stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map(Zstd)
            .map_err(|e| format!("cannot run {}: {e} (install zstd)", program.display()))
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>, String> {
        self.0
            .try_wait()
            .map_err(|e| format!("cannot wait for zstd: {e}"))
    }
}

impl Drop for Zstd {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(Some(_))) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// A random sync id, so replies meant for an earlier client are never
/// mistaken for ours.
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_le_bytes(b);
    }
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32)
}
