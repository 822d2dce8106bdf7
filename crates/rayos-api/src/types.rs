//! JSON bodies of the control API (see `docs/api/openapi.yaml`).
//!
//! Request types reject unknown fields so a misspelt option is a 400, not a
//! silently ignored wish.

use std::path::PathBuf;

use rayos_state::VmKind;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a VM is in its life. `Running` carries no presentation flag: that
/// is [`VmInfo::presented`], because presenting does not change what the
/// guest does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// No device model; the next start cold-boots.
    Stopped,
    /// Device model being launched for a cold boot.
    Starting,
    Running,
    /// ACPI power-down (or kill) in progress.
    Stopping,
    /// State being written to `state/`.
    Saving,
    /// No device model; a saved state waits in `state/` for the next start.
    Saved,
    /// Device model being launched to load the saved state.
    Resuming,
    /// The device model runs but the guest's vCPUs are stopped.
    Paused,
    /// The device model died without being asked to.
    Crashed,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Stopping => "stopping",
            VmState::Saving => "saving",
            VmState::Saved => "saved",
            VmState::Resuming => "resuming",
            VmState::Paused => "paused",
            VmState::Crashed => "crashed",
        }
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the last start brought the guest up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootKind {
    Cold,
    Resumed,
}

impl BootKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BootKind::Cold => "cold",
            BootKind::Resumed => "resumed",
        }
    }
}

/// A saved state waiting in `state/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    pub path: PathBuf,
    pub bytes: u64,
    /// Seconds since the Unix epoch.
    pub saved_at: u64,
    /// Whether it matches the VM's configuration now (false: the next start
    /// keeps it aside as unusable and cold-boots).
    pub usable: bool,
}

/// Everything `show` reports about a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub id: Uuid,
    pub kind: VmKind,
    pub state: VmState,
    /// At most one VM is presented (shown and given input).
    pub presented: bool,
    /// Effective values after policy limits.
    pub cpus: u32,
    pub memory_mib: u64,
    pub network: bool,
    pub provisioned: bool,
    pub tpm: bool,
    /// `vm/<id>/` on the data volume.
    pub vm_dir: PathBuf,
    pub disks: Vec<PathBuf>,
    pub media: Vec<PathBuf>,
    /// Device-model pid while one runs.
    pub pid: Option<u32>,
    /// The VNC unix socket the presenter connects to, while running.
    pub vnc_socket: Option<PathBuf>,
    /// The serial console's unix socket (`rayos vm console` attaches to
    /// it), while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_socket: Option<PathBuf>,
    /// What the guest agent reports (`show` only, while running; absent
    /// when no agent answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestInfo>,
    pub last_boot: Option<BootKind>,
    pub saved_state: Option<SavedState>,
    /// Saved states that could not be used, kept for inspection
    /// (`state/unusable-<time>/`).
    pub unusable_states: Vec<PathBuf>,
    pub last_error: Option<String>,
    /// The last console lines kept when the VM crashed.
    pub crash_console: Vec<String>,
    pub crash_count: u32,
    /// Policy for this VM's kind.
    pub enabled: bool,
    pub autostart: bool,
}

/// What a running guest's agent reports about it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    #[serde(default)]
    pub hostname: Option<String>,
    /// The guest's OS (its os-release `PRETTY_NAME`).
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub kernel: Option<String>,
    /// `<interface> <address>/<prefix>`, loopback left out.
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// One disk of a new VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DiskRequest {
    /// A new empty qcow2 disk, e.g. `"8G"`, `"512M"` (suffixes K, M, G, T;
    /// binary units).
    Size(String),
    /// Copy this image (qcow2 or raw, detected) into the VM's directory.
    Import(PathBuf),
}

/// `POST /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub name: String,
    pub kind: VmKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(default)]
    pub disks: Vec<DiskRequest>,
    /// Direct kernel boot (absolute paths; copied into the VM's directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Installation and driver media (absolute paths; referenced, attached
    /// until the VM is provisioned).
    #[serde(default)]
    pub media: Vec<PathBuf>,
    /// UEFI Secure Boot with the Microsoft keys (UEFI VMs only; default: on
    /// for windows, off otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    /// First-boot settings for the guest (user, password hash or SSH key,
    /// hostname, time zone, locale, keyboard), passed to it at every start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<rayos_state::GuestConfig>,
}

/// `POST /v1/vms/{name}/start`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StartRequest {
    /// Discard a saved state and cold-boot.
    pub fresh: bool,
}

/// `POST /v1/vms/{name}/stop`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StopRequest {
    /// Kill the device model at once instead of pressing the power button.
    pub force: bool,
    /// Seconds to wait for the guest after the power button before killing
    /// it (default 60).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// Reply of the action endpoints: the VM afterwards and what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionReply {
    pub vm: VmInfo,
    pub message: String,
    /// For start: how the guest came up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootKind>,
}

/// `GET /v1/vms/{name}/console`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleReply {
    pub lines: Vec<String>,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub pid: u32,
    pub vms: usize,
    /// The daemon's own resident memory (`VmRSS`), KiB.
    #[serde(default)]
    pub rss_kib: Option<u64>,
    /// False when no generation of the registry could be read: the daemon
    /// then refuses changes so it never overwrites what a person must repair.
    pub registry_writable: bool,
    /// Problems found at start-up (corrupt files, fallbacks, skipped cgroup
    /// setup), for a person to read.
    pub notes: Vec<String>,
}

/// One lifecycle event on `GET /v1/events` (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increases by one per event for the daemon's lifetime.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub vm: String,
    /// What happened: created, deleted, starting, started, resumed, saving,
    /// saved, save_failed, stopping, stopped, crashed, restarting, presented,
    /// hidden, provisioned, attached, unusable_state, paused, continued.
    pub event: String,
    pub state: VmState,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Body of every 4xx/5xx reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
