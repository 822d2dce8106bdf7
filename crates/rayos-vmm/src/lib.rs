//! The VM monitor boundary: the [`Vmm`] trait that rayosd drives, and its
//! QEMU backend.
//!
//! The supervisor owns policy and lifecycle (what should run, when state is
//! kept or discarded); a `Vmm` owns the mechanics of one device-model process
//! (command line, sockets, swtpm, saving and restoring state). Keeping the
//! trait small lets another backend be added and lets the supervisor be unit
//! tested with a fake.
//!
//! Every VM has a runtime directory (`VmSpec::run_dir`) holding its sockets
//! (`qmp.sock`, `vnc.sock`, `qga.sock`, `swtpm.sock`, `bridge.sock`) and
//! `qemu.pid`. A
//! restarted daemon finds running VMs again through these files
//! ([`Vmm::attach`]), so QEMU must outlive the daemon that started it.

pub mod keys;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rayos_state::VmDefinition;
use serde::{Deserialize, Serialize};

pub use qemu::{
    Accel, AccelDecision, AccelInputs, CpuVirt, ModuleState, QemuConfig, QemuHandle, QemuVmm,
    SaveFormat, TcgReason, running_accel,
};

/// Everything a backend needs to run one VM: its definition, where its
/// persistent files live, where its sockets go, and what policy allows.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The VM as the registry holds it (id, kind, disks, boot, devices).
    pub def: VmDefinition,
    /// `/var/rayos/vm/<id>`: disks, `ovmf-vars.fd`, `tpm/`, `state/`, `logs/`.
    pub vm_dir: PathBuf,
    /// `/run/rayos/vm/<id>`: sockets and pid file (not persistent).
    pub run_dir: PathBuf,
    /// User-mode networking when true; no network device at all when false.
    pub network: bool,
    /// Effective limits after policy (never above the definition's values).
    pub cpus: u32,
    /// Memory in MiB after policy.
    pub memory_mib: u64,
    /// The agent bridge's in-VM channel: a virtio-serial port
    /// `org.rayos.agent.0` whose host end is `bridge.sock` in the run
    /// directory (docs/agent-bridge.md). Part of the device set, so it is
    /// in the fingerprint.
    pub agent_bridge: bool,
}

/// How to bring a VM up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// Boot from the disks.
    Cold,
    /// Start with the identical command line and load this saved state.
    Restore {
        /// The state file written by a save.
        state_file: PathBuf,
    },
}

/// What QEMU says the guest is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// The guest's vCPUs run.
    Running,
    /// The guest's vCPUs are stopped (by a QMP `stop`, a save, or an error).
    Paused,
    /// The guest shut itself down (powered off). The device model stays
    /// until [`VmHandle::wait_exit`] or [`VmHandle::kill`] ends it, so this
    /// is distinguishable from a crash ([`RunState::Exited`]).
    Shutdown,
    /// QEMU is gone.
    Exited,
}

/// Where a guest's clock was set from after a resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockSource {
    /// The guest's own RTC (`guest-set-time` without a time: qemu-ga runs
    /// `hwclock -s`). QEMU's RTC follows the host's clock across a save and
    /// restore, and the guest reads it when it sets its clock, so however
    /// long the command took to arrive does not matter.
    Rtc,
    /// The host's time sent in the command (agents that cannot read the
    /// RTC: Windows' qemu-ga). The guest ends up behind by the time the
    /// command took to reach it.
    Host,
}

/// How a guest's clock was set through its agent after a resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockSync {
    /// Where the time came from.
    pub source: ClockSource,
    /// The guest clock minus the host's afterwards, in milliseconds, read
    /// back with `guest-get-time` (taken as read in the middle of the round
    /// trip, so off by up to half of it); `None` when the agent cannot tell.
    pub offset_ms: Option<i64>,
}

/// What a guest's agent reports (`guest-get-host-name`,
/// `guest-get-osinfo`, `guest-network-get-interfaces`); a field the agent
/// did not answer is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    /// The guest's host name.
    pub hostname: Option<String>,
    /// `PRETTY_NAME` of the guest's os-release.
    pub os: Option<String>,
    /// The guest's kernel release.
    pub kernel: Option<String>,
    /// `<interface> <address>/<prefix>`, loopback left out.
    pub addresses: Vec<String>,
}

impl GuestInfo {
    /// Builds the report from the agent's replies (`Value::Null` for a
    /// command that failed).
    pub fn from_replies(
        host: &serde_json::Value,
        os: &serde_json::Value,
        ifs: &serde_json::Value,
    ) -> GuestInfo {
        let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
        let mut addresses = Vec::new();
        for i in ifs.as_array().into_iter().flatten() {
            let name = i["name"].as_str().unwrap_or("?");
            if name == "lo" {
                continue;
            }
            for a in i["ip-addresses"].as_array().into_iter().flatten() {
                if let Some(ip) = a["ip-address"].as_str() {
                    addresses.push(match a["prefix"].as_u64() {
                        Some(p) => format!("{name} {ip}/{p}"),
                        None => format!("{name} {ip}"),
                    });
                }
            }
        }
        GuestInfo {
            hostname: text(&host["host-name"]),
            os: text(&os["pretty-name"]).or_else(|| text(&os["name"])),
            kernel: text(&os["kernel-release"]),
            addresses,
        }
    }
}

/// The VM's TPM emulator (swtpm), as far as the backend can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TpmState {
    /// The VM has no TPM.
    Absent,
    /// The emulator runs.
    Running,
    /// The emulator is gone while the device model runs: the guest's TPM
    /// no longer answers and the VM cannot be saved (QEMU needs the
    /// emulator's state for the migration stream).
    Died,
}

/// Facts about a finished save, for logs and benchmarks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SaveReport {
    /// Where the state was written.
    pub state_file: PathBuf,
    /// Size of the state file on disk.
    pub bytes: u64,
    /// Guest memory and device bytes QEMU transferred.
    pub transferred: u64,
    /// How long the save took, from the first QMP command to the file on disk.
    pub duration: Duration,
    /// Whether the state was written compressed although the backend saves
    /// raw by default, because the raw form would not have fitted.
    pub compressed_fallback: bool,
}

/// What a backend can fail at.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The device model (or swtpm) could not be started.
    #[error("cannot start QEMU for VM {vm}")]
    Spawn {
        /// The VM's name.
        vm: String,
        /// The error from spawning the process.
        #[source]
        source: std::io::Error,
    },
    /// QEMU exited before the VM was up.
    #[error("QEMU for VM {vm} exited during start-up: {detail}")]
    EarlyExit {
        /// The VM's name.
        vm: String,
        /// Its exit status and the last lines of its stderr.
        detail: String,
    },
    /// Talking QMP to the VM's QEMU failed, or QEMU refused a command.
    #[error("QMP with VM {vm} failed: {detail}")]
    Qmp {
        /// The VM's name.
        vm: String,
        /// What went wrong.
        detail: String,
    },
    /// Saving the VM's state failed.
    #[error("saving VM {vm} failed: {detail}")]
    Save {
        /// The VM's name.
        vm: String,
        /// What went wrong.
        detail: String,
    },
    /// The file system for the state has too little free space even for a
    /// compressed state; the guest was not stopped and nothing was written.
    #[error(
        "{dir} has {free_mib} MiB free, the saved state of VM {vm} needs up to {need_mib} MiB \
         (at least {min_mib} MiB to try it compressed); the VM keeps running and any earlier \
         saved state is kept: free space on that file system and save again"
    )]
    NoSpace {
        /// The VM's name.
        vm: String,
        /// The directory the state was to be written to.
        dir: PathBuf,
        /// Free MiB there.
        free_mib: u64,
        /// MiB a raw state can take.
        need_mib: u64,
        /// MiB below which not even a compressed state is tried.
        min_mib: u64,
    },
    /// Loading a saved state failed.
    #[error("restoring VM {vm} failed: {detail}")]
    Restore {
        /// The VM's name.
        vm: String,
        /// What went wrong.
        detail: String,
    },
    /// The VM's TPM emulator (swtpm) could not be set up or failed.
    #[error("swtpm for VM {vm} failed: {detail}")]
    Tpm {
        /// The VM's name.
        vm: String,
        /// What went wrong.
        detail: String,
    },
    /// A file the VM would use is not safe to give it (see `qemu::image`).
    #[error("VM {vm} is not started: {detail}")]
    Refused {
        /// The VM's name.
        vm: String,
        /// Which file, and why it is refused.
        detail: String,
    },
    /// A file the VM needs is not there.
    #[error("{what} for VM {vm} is missing: {path}")]
    Missing {
        /// The VM's name.
        vm: String,
        /// What the file is (kernel, initrd, firmware, disk, …).
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Reading or writing a file of the VM failed.
    #[error("I/O on {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The guest (its agent) refused a request: a program that cannot be
    /// run, a command the agent does not offer.
    #[error("the guest agent of VM {vm} refused: {detail}")]
    Guest {
        /// The VM's name.
        vm: String,
        /// What the agent said.
        detail: String,
    },
    /// A wait ran out (the time, and what was waited for).
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

/// The largest value of an absolute pointer axis (QEMU's
/// `INPUT_EVENT_ABS_MAX`): 0 is the screen's left or top edge, this its
/// right or bottom edge, whatever the guest's resolution.
pub const ABS_MAX: u32 = 0x7fff;

/// One event injected into a VM's input devices (QMP `input-send-event`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputEvent {
    /// A key by QEMU key name ([`keys::QCODES`]).
    Key {
        /// The QEMU key name.
        qcode: &'static str,
        /// True for a press, false for a release.
        down: bool,
    },
    /// The absolute pointer to this place, each axis `0..=ABS_MAX`.
    Abs {
        /// From the left edge, `0..=ABS_MAX`.
        x: u32,
        /// From the top edge, `0..=ABS_MAX`.
        y: u32,
    },
    /// A pointer button pressed or released.
    Button {
        /// The button.
        button: PointerButton,
        /// True for a press, false for a release.
        down: bool,
    },
}

/// A button of the absolute pointer device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointerButton {
    /// The primary button.
    Left,
    /// The middle button.
    Middle,
    /// The secondary button.
    Right,
}

impl PointerButton {
    /// QEMU's `InputButton` name.
    pub const fn qemu_name(self) -> &'static str {
        match self {
            PointerButton::Left => "left",
            PointerButton::Middle => "middle",
            PointerButton::Right => "right",
        }
    }
}

/// A program to run in the guest through its agent (`guest-exec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// The program, as the guest finds it (an absolute path is surest).
    pub path: String,
    /// The program's arguments (without its name).
    pub args: Vec<String>,
    /// Bytes for the program's standard input (none: empty input).
    pub input: Vec<u8>,
    /// How long to wait for the program to end; it keeps running in the
    /// guest after that (the agent has no way to end it).
    pub timeout: Duration,
    /// Kept of stdout and of stderr each; the rest is counted, not kept.
    pub max_output: usize,
}

/// What [`Vmm::guest_exec`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutcome {
    /// The program's process id in the guest.
    pub pid: i64,
    /// False when the time limit passed first.
    pub exited: bool,
    /// The program's exit code, when it exited (none when a signal ended it or
    /// the time ran out).
    pub exit_code: Option<i32>,
    /// The signal that ended it (Linux guests).
    pub signal: Option<i32>,
    /// What the program wrote to stdout, up to [`ExecSpec::max_output`] bytes.
    pub stdout: Vec<u8>,
    /// What the program wrote to stderr, up to [`ExecSpec::max_output`] bytes.
    pub stderr: Vec<u8>,
    /// Output was cut: by [`ExecSpec::max_output`] or by the agent itself.
    pub stdout_truncated: bool,
    /// Like `stdout_truncated`, for stderr.
    pub stderr_truncated: bool,
}

/// A device-model backend.
pub trait Vmm: Send + Sync {
    /// A string that changes whenever a saved state of `vm` could no longer
    /// be restored: it covers the device-model command line (minus the parts
    /// that differ only between cold boot and restore) and the backend
    /// version. Stored beside a saved state and compared before a restore.
    fn fingerprint(&self, vm: &VmSpec) -> Result<String, VmmError>;

    /// Starts the VM's device model (and swtpm when the VM has a TPM). The
    /// process is detached from the caller: it keeps running if the caller
    /// dies. With [`Launch::Restore`] the returned VM is running the
    /// restored guest.
    fn launch(&self, vm: &VmSpec, how: &Launch) -> Result<Box<dyn VmHandle>, VmmError>;

    /// Finds a device model still running for `vm` (after a daemon restart)
    /// through its run directory. `Ok(None)` when there is none.
    fn attach(&self, vm: &VmSpec) -> Result<Option<Box<dyn VmHandle>>, VmmError>;

    /// Runs a program in `vm`'s guest through its agent and waits for it up
    /// to the spec's time limit; `Ok(None)` when no agent answers. Needs no
    /// [`VmHandle`]: the agent has its own socket, so a long command does
    /// not hold up the VM's other operations.
    fn guest_exec(&self, vm: &VmSpec, spec: &ExecSpec) -> Result<Option<ExecOutcome>, VmmError>;

    /// Sets `vm`'s guest clock through its agent: from the guest's RTC,
    /// else from the host's time; reads it back. `agent_wait`: how long
    /// the agent has to answer at all. `Ok(None)` when it does not (not an
    /// error: many guests have none, and a guest just resumed on a busy
    /// machine may answer only later). Like [`Vmm::guest_exec`] it needs no
    /// [`VmHandle`], so a caller can keep trying without holding the VM.
    fn sync_guest_time(
        &self,
        vm: &VmSpec,
        agent_wait: Duration,
    ) -> Result<Option<ClockSync>, VmmError>;

    /// The accelerator device models run with and, for TCG, why. Decided
    /// once per process (the first call may run the KVM probe, a few
    /// seconds at most).
    fn accelerator(&self) -> AccelDecision;
}

/// Control of one running device model.
pub trait VmHandle: Send {
    /// The device model's process id.
    fn pid(&self) -> u32;

    /// What the guest is doing now (asks QEMU; `Exited` once it is gone).
    fn state(&mut self) -> Result<RunState, VmmError>;

    /// Whether the VM's TPM emulator still runs. The monitor asks this as
    /// often as [`VmHandle::state`]; backends without a separate emulator
    /// keep the default.
    fn tpm_state(&mut self) -> TpmState {
        TpmState::Absent
    }

    /// Pauses the guest, writes its state to `state_file` (compressed,
    /// through a temporary name so a failed save leaves no partial file) and
    /// ends the device model. On failure the guest is resumed and keeps
    /// running.
    fn save(&mut self, state_file: &Path) -> Result<SaveReport, VmmError>;

    /// Presses the ACPI power button.
    fn powerdown(&mut self) -> Result<(), VmmError>;

    /// Ends the device model at once (and its swtpm).
    fn kill(&mut self) -> Result<(), VmmError>;

    /// Waits until the device model has exited (ending it once the guest
    /// has shut down); `Ok(false)` on timeout.
    fn wait_exit(&mut self, timeout: Duration) -> Result<bool, VmmError>;

    /// Writes the VM's display as PNG without giving it any input.
    fn screenshot(&mut self, png: &Path) -> Result<(), VmmError>;

    /// Asks the guest's agent to power the guest off (`guest-shutdown`).
    /// `Ok(false)` when no agent answers; then only ACPI is left.
    fn guest_shutdown(&mut self) -> Result<bool, VmmError>;

    /// What the guest's agent says about the guest; `Ok(None)` when no
    /// agent answers.
    fn guest_info(&mut self) -> Result<Option<GuestInfo>, VmmError>;

    /// Injects `events` into the guest's keyboard and pointer, in order,
    /// as one batch (see docs/agent-bridge.md). Callers pace batches: a
    /// PS/2 keyboard holds few bytes, so one key combination per batch.
    fn send_input(&mut self, events: &[InputEvent]) -> Result<(), VmmError>;

    /// Writes `bytes` to the guest's serial console.
    fn console_write(&mut self, bytes: &[u8]) -> Result<(), VmmError>;

    /// Attaches or ejects a medium while the VM runs (QMP); the media
    /// lists of the VM's definition must already say the same, so the
    /// command line of the next launch (and a restore) has the same devices.
    fn change_media(&mut self, change: &qemu::media::Change) -> Result<(), VmmError>;

    /// The VNC unix socket the presenter connects to.
    fn vnc_socket(&self) -> PathBuf;

    /// The serial console's unix socket (one client at a time).
    fn console_socket(&self) -> PathBuf;
}
