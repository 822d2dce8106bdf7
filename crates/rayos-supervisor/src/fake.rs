//! A fake `Vmm` for the supervisor's unit tests.
//!
//! Its "device models" live in a shared map keyed by VM id that outlives any
//! one `Supervisor`, the way detached QEMU processes outlive rayosd. A
//! guest's whole memory is one counter; a saved state is the text
//! `FAKESTATE <counter>`, so resuming can be checked to continue where it
//! stopped and a damaged state file fails to restore.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rayos_vmm::{
    AccelDecision, ClockSource, ClockSync, ExecOutcome, ExecSpec, GuestInfo, InputEvent, Launch,
    RunState, SaveReport, TcgReason, TpmState, VmHandle, VmSpec, Vmm, VmmError,
};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: u32,
    pub counter: u64,
    pub state: RunState,
    pub spec_cpus: u32,
    pub network: bool,
    /// `Some(alive)` for a VM with a TPM.
    pub tpm: Option<bool>,
    /// Every input event injected, in order.
    pub input: Vec<InputEvent>,
    /// Everything written to the console.
    pub console_in: Vec<u8>,
    /// Media changes made while it ran, in order.
    pub media_changes: Vec<rayos_vmm::qemu::media::Change>,
}

#[derive(Default)]
pub struct FakeVmm {
    pub fingerprint: Mutex<String>,
    pub procs: Arc<Mutex<HashMap<Uuid, Proc>>>,
    pub fail_save: AtomicBool,
    pub ignore_acpi: AtomicBool,
    pub fail_launch: AtomicBool,
    /// The guests run a guest agent (shutdown and info through it).
    pub agent: AtomicBool,
    /// How many guests were shut down through the agent.
    pub agent_shutdowns: Arc<AtomicU32>,
    /// How many times a guest clock was set through the agent.
    pub clock_syncs: AtomicU32,
    next_pid: AtomicU32,
    pub launches: Mutex<Vec<(String, Launch)>>,
    /// What `accelerator` answers; `None`: TCG, firmware switched off.
    pub accel: Mutex<Option<AccelDecision>>,
}

impl FakeVmm {
    pub fn new() -> Arc<FakeVmm> {
        let f = FakeVmm::default();
        *f.fingerprint.lock().unwrap() = "fp-1".into();
        f.next_pid.store(1000, Ordering::SeqCst);
        Arc::new(f)
    }

    pub fn proc(&self, id: Uuid) -> Option<Proc> {
        self.procs.lock().unwrap().get(&id).cloned()
    }

    /// The guest runs a while.
    pub fn tick(&self, id: Uuid, n: u64) {
        if let Some(p) = self.procs.lock().unwrap().get_mut(&id) {
            p.counter += n;
        }
    }

    pub fn set_state(&self, id: Uuid, s: RunState) {
        if let Some(p) = self.procs.lock().unwrap().get_mut(&id) {
            p.state = s;
        }
    }

    /// The VM's TPM emulator dies (the device model keeps running).
    pub fn kill_tpm(&self, id: Uuid) {
        if let Some(p) = self.procs.lock().unwrap().get_mut(&id) {
            p.tpm = Some(false);
        }
    }

    /// The device model dies.
    pub fn crash(&self, id: Uuid) {
        self.procs.lock().unwrap().remove(&id);
    }

    fn handle(&self, vm: &VmSpec, pid: u32) -> Box<dyn VmHandle> {
        Box::new(FakeHandle {
            id: vm.def.id,
            pid,
            vnc: vm.run_dir.join("vnc.sock"),
            procs: Arc::clone(&self.procs),
            fail_save: self.fail_save.load(Ordering::SeqCst),
            ignore_acpi: self.ignore_acpi.load(Ordering::SeqCst),
            agent: self.agent.load(Ordering::SeqCst),
            agent_shutdowns: Arc::clone(&self.agent_shutdowns),
        })
    }
}

impl Vmm for FakeVmm {
    fn accelerator(&self) -> AccelDecision {
        self.accel
            .lock()
            .unwrap()
            .clone()
            .unwrap_or(AccelDecision::Tcg(TcgReason::FirmwareOff))
    }

    fn fingerprint(&self, _vm: &VmSpec) -> Result<String, VmmError> {
        Ok(self.fingerprint.lock().unwrap().clone())
    }

    fn launch(&self, vm: &VmSpec, how: &Launch) -> Result<Box<dyn VmHandle>, VmmError> {
        self.launches
            .lock()
            .unwrap()
            .push((vm.def.name.clone(), how.clone()));
        if self.fail_launch.load(Ordering::SeqCst) {
            return Err(VmmError::EarlyExit {
                vm: vm.def.name.clone(),
                detail: "fake launch failure".into(),
            });
        }
        let counter = match how {
            Launch::Cold => 0,
            Launch::Restore { state_file } => {
                let text = fs::read_to_string(state_file).unwrap_or_default();
                text.strip_prefix("FAKESTATE ")
                    .and_then(|n| n.trim().parse().ok())
                    .ok_or_else(|| VmmError::Restore {
                        vm: vm.def.name.clone(),
                        detail: "load of migration failed: Invalid argument".into(),
                    })?
            }
        };
        let pid = self.next_pid.fetch_add(1, Ordering::SeqCst);
        self.procs.lock().unwrap().insert(
            vm.def.id,
            Proc {
                pid,
                counter,
                state: RunState::Running,
                spec_cpus: vm.cpus,
                network: vm.network,
                tpm: vm.def.tpm.then_some(true),
                input: Vec::new(),
                console_in: Vec::new(),
                media_changes: Vec::new(),
            },
        );
        Ok(self.handle(vm, pid))
    }

    fn attach(&self, vm: &VmSpec) -> Result<Option<Box<dyn VmHandle>>, VmmError> {
        let pid = self.procs.lock().unwrap().get(&vm.def.id).map(|p| p.pid);
        Ok(pid.map(|pid| self.handle(vm, pid)))
    }

    /// Counts in `clock_syncs`; answers only while `agent` is on.
    fn sync_guest_time(
        &self,
        vm: &VmSpec,
        _agent_wait: Duration,
    ) -> Result<Option<ClockSync>, VmmError> {
        if !self.agent.load(Ordering::SeqCst)
            || !self.procs.lock().unwrap().contains_key(&vm.def.id)
        {
            return Ok(None);
        }
        self.clock_syncs.fetch_add(1, Ordering::SeqCst);
        Ok(Some(ClockSync {
            source: ClockSource::Rtc,
            offset_ms: Some(0),
        }))
    }

    /// The fake agent "runs" `echo`: stdout is the arguments joined by
    /// spaces, stdin goes to stderr; any other program exits 127.
    fn guest_exec(&self, vm: &VmSpec, spec: &ExecSpec) -> Result<Option<ExecOutcome>, VmmError> {
        if !self.agent.load(Ordering::SeqCst) {
            return Ok(None);
        }
        if !self.procs.lock().unwrap().contains_key(&vm.def.id) {
            return Err(VmmError::Qmp {
                vm: vm.def.name.clone(),
                detail: "gone".into(),
            });
        }
        let echo = spec.path == "echo";
        let mut stdout = if echo {
            format!("{}\n", spec.args.join(" ")).into_bytes()
        } else {
            Vec::new()
        };
        let cut = stdout.len() > spec.max_output;
        stdout.truncate(spec.max_output);
        Ok(Some(ExecOutcome {
            pid: 42,
            exited: true,
            exit_code: Some(if echo { 0 } else { 127 }),
            signal: None,
            stdout,
            stderr: spec.input.clone(),
            stdout_truncated: cut,
            stderr_truncated: false,
        }))
    }
}

struct FakeHandle {
    id: Uuid,
    pid: u32,
    vnc: PathBuf,
    procs: Arc<Mutex<HashMap<Uuid, Proc>>>,
    fail_save: bool,
    ignore_acpi: bool,
    agent: bool,
    agent_shutdowns: Arc<AtomicU32>,
}

impl VmHandle for FakeHandle {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn state(&mut self) -> Result<RunState, VmmError> {
        Ok(self
            .procs
            .lock()
            .unwrap()
            .get(&self.id)
            .map(|p| p.state)
            .unwrap_or(RunState::Exited))
    }

    fn tpm_state(&mut self) -> TpmState {
        match self.procs.lock().unwrap().get(&self.id).and_then(|p| p.tpm) {
            None => TpmState::Absent,
            Some(true) => TpmState::Running,
            Some(false) => TpmState::Died,
        }
    }

    fn save(&mut self, state_file: &Path) -> Result<SaveReport, VmmError> {
        if self.fail_save {
            return Err(VmmError::Save {
                vm: self.id.to_string(),
                detail: "No space left on device".into(),
            });
        }
        let p = self
            .procs
            .lock()
            .unwrap()
            .remove(&self.id)
            .ok_or_else(|| VmmError::Save {
                vm: self.id.to_string(),
                detail: "gone".into(),
            })?;
        let text = format!("FAKESTATE {}", p.counter);
        fs::write(state_file, &text).map_err(|source| VmmError::Io {
            path: state_file.to_path_buf(),
            source,
        })?;
        Ok(SaveReport {
            state_file: state_file.to_path_buf(),
            bytes: text.len() as u64,
            transferred: text.len() as u64,
            duration: Duration::from_millis(1),
            compressed_fallback: false,
        })
    }

    fn powerdown(&mut self) -> Result<(), VmmError> {
        if !self.ignore_acpi {
            self.procs.lock().unwrap().remove(&self.id);
        }
        Ok(())
    }

    fn kill(&mut self) -> Result<(), VmmError> {
        self.procs.lock().unwrap().remove(&self.id);
        Ok(())
    }

    fn wait_exit(&mut self, _timeout: Duration) -> Result<bool, VmmError> {
        Ok(!self.procs.lock().unwrap().contains_key(&self.id))
    }

    fn change_media(&mut self, change: &rayos_vmm::qemu::media::Change) -> Result<(), VmmError> {
        let mut procs = self.procs.lock().unwrap();
        let p = procs.get_mut(&self.id).ok_or_else(|| VmmError::Qmp {
            vm: self.id.to_string(),
            detail: "the device model is gone".into(),
        })?;
        p.media_changes.push(change.clone());
        Ok(())
    }

    fn screenshot(&mut self, png: &Path) -> Result<(), VmmError> {
        if let Some(dir) = png.parent() {
            let _ = fs::create_dir_all(dir);
        }
        // A PNG header of an 800x600 screen, enough for the input code.
        let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        bytes.extend(800u32.to_be_bytes());
        bytes.extend(600u32.to_be_bytes());
        fs::write(png, bytes).map_err(|source| VmmError::Io {
            path: png.to_path_buf(),
            source,
        })
    }

    fn guest_shutdown(&mut self) -> Result<bool, VmmError> {
        if !self.agent {
            return Ok(false);
        }
        self.agent_shutdowns.fetch_add(1, Ordering::SeqCst);
        if let Some(p) = self.procs.lock().unwrap().get_mut(&self.id) {
            p.state = RunState::Shutdown;
        }
        Ok(true)
    }

    fn guest_info(&mut self) -> Result<Option<GuestInfo>, VmmError> {
        Ok(self.agent.then(|| GuestInfo {
            hostname: Some("fakehost".into()),
            os: Some("Fake OS 1".into()),
            kernel: None,
            addresses: vec!["eth0 10.0.2.15/24".into()],
        }))
    }

    fn send_input(&mut self, events: &[InputEvent]) -> Result<(), VmmError> {
        match self.procs.lock().unwrap().get_mut(&self.id) {
            Some(p) => {
                p.input.extend_from_slice(events);
                Ok(())
            }
            None => Err(VmmError::Qmp {
                vm: self.id.to_string(),
                detail: "gone".into(),
            }),
        }
    }

    fn console_write(&mut self, bytes: &[u8]) -> Result<(), VmmError> {
        if let Some(p) = self.procs.lock().unwrap().get_mut(&self.id) {
            p.console_in.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn vnc_socket(&self) -> PathBuf {
        self.vnc.clone()
    }

    fn console_socket(&self) -> PathBuf {
        self.vnc.with_file_name("console.sock")
    }
}
