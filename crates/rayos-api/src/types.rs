//! JSON bodies of the control API (see `docs/api/openapi.yaml`).
//!
//! Request types reject unknown fields so a misspelt option is a 400, not a
//! silently ignored wish.

use std::path::PathBuf;

use rayos_state::VmKind;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Declares a fieldless enum that travels as a string: each variant names
/// its wire string once, and the macro derives serde with exactly that
/// string, `as_str`, `Display` and `ALL` (every value, in order). `ALL` is
/// what `tests/openapi.rs` compares with the enums of
/// `docs/api/openapi.yaml`, so neither side can drift from the other.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $wire:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $wire)] $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The string on the wire (and in logs).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum! {
    /// Where a VM is in its life. `Running` carries no presentation flag: that
    /// is [`VmInfo::presented`], because presenting does not change what the
    /// guest does.
    pub enum VmState {
        /// No device model; the next start cold-boots.
        Stopped = "stopped",
        /// Device model being launched for a cold boot.
        Starting = "starting",
        /// The guest runs (shown or hidden).
        Running = "running",
        /// ACPI power-down (or kill) in progress.
        Stopping = "stopping",
        /// State being written to `state/`.
        Saving = "saving",
        /// No device model; a saved state waits in `state/` for the next start.
        Saved = "saved",
        /// Device model being launched to load the saved state.
        Resuming = "resuming",
        /// The device model runs but the guest's vCPUs are stopped.
        Paused = "paused",
        /// The device model died without being asked to.
        Crashed = "crashed",
    }
}

wire_enum! {
    /// How the last start brought the guest up.
    pub enum BootKind {
        /// A cold boot from the disks.
        Cold = "cold",
        /// The saved state was loaded: the guest went on where it was.
        Resumed = "resumed",
    }
}

impl From<BootKind> for rayos_base::marker::VmStart {
    fn from(b: BootKind) -> Self {
        match b {
            BootKind::Cold => rayos_base::marker::VmStart::Cold,
            BootKind::Resumed => rayos_base::marker::VmStart::Resumed,
        }
    }
}

wire_enum! {
    /// The accelerator device models run with.
    pub enum AccelKind {
        /// Hardware virtualization (VT-x/AMD-V) through `/dev/kvm`.
        Kvm = "kvm",
        /// QEMU's software emulation: works everywhere, much slower.
        Tcg = "tcg",
    }
}

/// Which accelerator and, under TCG, why (a sentence for people).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accelerator {
    /// The accelerator.
    pub accel: AccelKind,
    /// Under TCG, why KVM is not used (absent under KVM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl std::fmt::Display for Accelerator {
    /// `kvm (hardware virtualization)` or `tcg (software emulation): <reason>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.accel {
            AccelKind::Kvm => f.write_str("kvm (hardware virtualization)"),
            AccelKind::Tcg => {
                f.write_str("tcg (software emulation)")?;
                match &self.reason {
                    Some(r) => write!(f, ": {r}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// A saved state waiting in `state/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    /// The state file.
    pub path: PathBuf,
    /// Its size in bytes.
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
    /// The VM's name (unique; what the CLI and the API address it by).
    pub name: String,
    /// The VM's id, fixed at creation (names its directory).
    pub id: Uuid,
    /// What the VM runs (linux, windows, generic): picks its device profile and
    /// policy section.
    pub kind: VmKind,
    /// Where the VM is in its life.
    pub state: VmState,
    /// At most one VM is presented (shown and given input).
    pub presented: bool,
    /// Effective values after policy limits.
    pub cpus: u32,
    /// Memory in MiB, after policy limits.
    pub memory_mib: u64,
    /// Whether the guest has a network, after policy (provisioning-only
    /// networking ends at provisioning).
    pub network: bool,
    /// Whether installation is done (media detached, provisioning-only
    /// networking off).
    pub provisioned: bool,
    /// Whether the VM has a TPM 2.0 (swtpm).
    pub tpm: bool,
    /// `vm/<id>/` on the data volume.
    pub vm_dir: PathBuf,
    /// The VM's disk images, in the order the guest sees them.
    pub disks: Vec<PathBuf>,
    /// Media given to the guest as CD-ROMs.
    pub media: Vec<PathBuf>,
    /// Media given to the guest as read-only USB sticks.
    #[serde(default)]
    pub usb_media: Vec<PathBuf>,
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
    /// How the last start brought the guest up (`None` before the first start).
    pub last_boot: Option<BootKind>,
    /// The saved state waiting for the next start, if any.
    pub saved_state: Option<SavedState>,
    /// Saved states that could not be used, kept for inspection
    /// (`state/unusable-<time>/`).
    pub unusable_states: Vec<PathBuf>,
    /// Why the last start, save or stop failed, if it did.
    pub last_error: Option<String>,
    /// The last console lines kept when the VM crashed.
    pub crash_console: Vec<String>,
    /// How many times the device model crashed since the VM was last started by
    /// a person.
    pub crash_count: u32,
    /// Policy for this VM's kind.
    pub enabled: bool,
    /// Whether the daemon starts the VM at its own start (policy for its kind).
    pub autostart: bool,
    /// The accelerator its device model runs (or will run) with.
    #[serde(default)]
    pub accel: Option<Accelerator>,
}

/// What a running guest's agent reports about it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    /// The guest's host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The guest's OS (its os-release `PRETTY_NAME`).
    #[serde(default)]
    pub os: Option<String>,
    /// The guest's kernel release.
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
    /// Convert this image (qcow2, raw, vmdk, vhdx or vdi, detected; one
    /// that names other files is refused) into a qcow2 in the VM's
    /// directory.
    Import(PathBuf),
}

/// `POST /v1/vms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// The new VM's name.
    pub name: String,
    /// What the VM will run: picks its device profile and policy section.
    pub kind: VmKind,
    /// Memory in MiB (default: the policy's for the kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Virtual CPUs (default: the policy's for the kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// Its disks, in the order the guest sees them.
    #[serde(default)]
    pub disks: Vec<DiskRequest>,
    /// Direct kernel boot (absolute paths; copied into the VM's directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    /// The initramfs for direct kernel boot (absolute path; copied like the
    /// kernel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line for direct kernel boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Installation and driver media (absolute paths; referenced, attached
    /// until the VM is provisioned).
    #[serde(default)]
    pub media: Vec<PathBuf>,
    /// Media given to the guest as read-only USB sticks (a stick whose
    /// files a tool copied, or an image file of one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usb_media: Vec<PathBuf>,
    /// UEFI Secure Boot with the Microsoft keys (UEFI VMs only; default: on
    /// for windows, off otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    /// First-boot settings for the guest (user, password hash or SSH key,
    /// hostname, time zone, locale, keyboard), passed to it at every start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<rayos_state::GuestConfig>,
}

impl CreateRequest {
    /// A request naming only the VM and its kind: no disks, media or
    /// kernel, everything else the policy's default. Callers fill in what
    /// they need with struct update syntax.
    pub fn new(name: impl Into<String>, kind: VmKind) -> CreateRequest {
        CreateRequest {
            name: name.into(),
            kind,
            memory_mib: None,
            cpus: None,
            disks: vec![],
            kernel: None,
            initrd: None,
            cmdline: None,
            media: vec![],
            usb_media: vec![],
            secure_boot: None,
            guest: None,
        }
    }
}

wire_enum! {
    /// How a medium is given to the guest.
    pub enum MediaForm {
        /// A CD-ROM (raw, read-only): an ISO file, or a block device
        /// written from an ISO.
        Cdrom = "cdrom",
        /// A read-only USB mass-storage device: a stick whose files a tool
        /// copied (or an image file of one).
        Usb = "usb",
    }
}

wire_enum! {
    /// What `POST /v1/vms/{name}/media` does.
    pub enum MediaAction {
        /// Give the VM a medium (at once when it runs; kept in the
        /// registry until ejected).
        Attach = "attach",
        /// Take a medium (or, without `source`, every medium) away.
        Eject = "eject",
    }
}

/// `POST /v1/vms/{name}/media`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaRequest {
    /// Attach or eject.
    pub action: MediaAction,
    /// Absolute path: an image file or a block device (attach; for eject
    /// the medium to take away, all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    /// How the guest sees it (attach); default: a CD-ROM when the source
    /// is named `*.iso` or holds an ISO 9660 file system at its start, a USB stick otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "as")]
    pub form: Option<MediaForm>,
    /// Copy an image file onto the data volume first (`vm/<id>/media/`),
    /// so the stick can be removed; progress as `copying` events.
    #[serde(default)]
    pub copy: bool,
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
    /// The VM after the action.
    pub vm: VmInfo,
    /// What happened, as a sentence for people.
    pub message: String,
    /// For start: how the guest came up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootKind>,
}

/// `GET /v1/vms/{name}/console`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleReply {
    /// The last lines of the console log, oldest first.
    pub lines: Vec<String>,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok` while the daemon serves.
    pub status: String,
    /// The daemon's version.
    pub version: String,
    /// The daemon's process id.
    pub pid: u32,
    /// How many VMs the registry holds.
    pub vms: usize,
    /// The daemon's own resident memory (`VmRSS`), KiB.
    #[serde(default)]
    pub rss_kib: Option<u64>,
    /// False when no generation of the registry could be read: the daemon
    /// then refuses changes so it never overwrites what a person must repair.
    pub registry_writable: bool,
    /// Problems for a person to read: found at start-up (corrupt files,
    /// fallbacks, registry entries not loaded, skipped cgroup setup) or
    /// later (a VM whose swtpm died).
    pub notes: Vec<String>,
    /// The accelerator VMs run with (`None` from a daemon older than this
    /// field).
    #[serde(default)]
    pub accel: Option<Accelerator>,
}

wire_enum! {
    /// What an [`Event`] reports. The wire strings are API: clients match
    /// them (`rayos vm create` shows `importing`, tests follow lifecycles),
    /// and `docs/api/openapi.yaml` lists exactly these.
    pub enum EventKind {
        /// A VM was defined (detail: `id <uuid>`).
        Created = "created",
        /// Progress of converting an image for a VM being created (detail:
        /// `<file>: <percent>%`, every 10%).
        Importing = "importing",
        /// The VM left the registry (detail: whether its directory was kept).
        Deleted = "deleted",
        /// Installation is done: media detached, provisioning-only
        /// networking off from the next start.
        Provisioned = "provisioned",
        /// A medium was given to the VM (detail: `<path> as cdrom|usb`).
        MediaAttached = "media_attached",
        /// A medium was taken away (detail: the path, and why when RayOS
        /// did it: provisioned, or the stick was unplugged).
        MediaEjected = "media_ejected",
        /// Progress of copying a medium onto the data volume (detail:
        /// `<file>: <percent>%`, every 10%).
        Copying = "copying",
        /// A cold boot begins (detail: `cold boot`).
        Starting = "starting",
        /// Loading the saved state begins.
        Resuming = "resuming",
        /// The device model is up (detail: `cold` or `resumed`).
        Started = "started",
        /// Launching failed (detail: why); the VM is stopped again, or stays
        /// saved when a failed restore's state could not be kept aside.
        StartFailed = "start_failed",
        /// Restoring failed; the state is kept aside and a cold boot follows.
        RestoreFailed = "restore_failed",
        /// `start --fresh` deleted the saved state.
        Discarded = "discarded",
        /// A saved state that cannot be used was kept aside (detail: where,
        /// and why).
        UnusableState = "unusable_state",
        /// Saving the VM's state begins.
        Saving = "saving",
        /// The state is on disk and the device model ended (detail: size
        /// and time).
        Saved = "saved",
        /// Saving failed and the guest keeps running (detail: why).
        SaveFailed = "save_failed",
        /// A stop begins (detail: `ACPI power button` or `kill`).
        Stopping = "stopping",
        /// The device model is gone after a stop or a guest shutdown
        /// (detail: how).
        Stopped = "stopped",
        /// The device model died without being asked to (detail: `crash #N`).
        Crashed = "crashed",
        /// The policy restarts the crashed VM (detail: `in <seconds>s`).
        Restarting = "restarting",
        /// A device model from before a daemon restart was adopted (detail:
        /// `pid N`).
        Attached = "attached",
        /// The VM is shown and gets the input.
        Presented = "presented",
        /// The VM is no longer shown (detail: `<vm> presented` when another
        /// VM took its place).
        Hidden = "hidden",
        /// The guest's vCPUs were seen stopped.
        Paused = "paused",
        /// The guest's vCPUs were seen running again.
        Continued = "continued",
        /// The VM's TPM emulator (swtpm) is gone; the VM is shut down next.
        TpmDied = "tpm_died",
    }
}

/// One lifecycle event on `GET /v1/events` (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increases by one per event for the daemon's lifetime.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The VM's name.
    pub vm: String,
    /// What happened.
    pub event: EventKind,
    /// The VM's state after the event.
    pub state: VmState,
    /// More about the event, as the event kind says (empty when nothing).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Body of every 4xx/5xx reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, as a sentence for people.
    pub error: String,
}

/// `PUT /v1/policy`: the whole policy file, checked like the file
/// (`rayos_state::Policy::parse`) before anything is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    /// The policy file's new text (TOML).
    pub toml: String,
}

/// `GET /v1/policy`, and the reply of `PUT /v1/policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReply {
    /// The policy file on the data volume.
    pub path: PathBuf,
    /// The policy rayosd runs with, as TOML (the closed policy when the
    /// file is unusable; see `notes`).
    pub toml: String,
    /// Every `section.setting` with its value, in file order.
    pub settings: Vec<(String, String)>,
    /// For `PUT`: what changed and when each change takes effect.
    #[serde(default)]
    pub changes: Vec<rayos_state::Change>,
    /// For `PUT`: what the change means for the VMs as they are now
    /// (running ones keep their device model; saved states made with an
    /// old setting).
    #[serde(default)]
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accelerator_wire_form_and_text() {
        let tcg = Accelerator {
            accel: AccelKind::Tcg,
            reason: Some("probe failed: x; VMs run much slower".into()),
        };
        let json = serde_json::to_string(&tcg).unwrap();
        assert_eq!(
            json,
            r#"{"accel":"tcg","reason":"probe failed: x; VMs run much slower"}"#
        );
        assert_eq!(serde_json::from_str::<Accelerator>(&json).unwrap(), tcg);
        assert_eq!(
            tcg.to_string(),
            "tcg (software emulation): probe failed: x; VMs run much slower"
        );
        let kvm = Accelerator {
            accel: AccelKind::Kvm,
            reason: None,
        };
        assert_eq!(serde_json::to_string(&kvm).unwrap(), r#"{"accel":"kvm"}"#);
        assert_eq!(kvm.to_string(), "kvm (hardware virtualization)");
        // A health reply from a daemon without the field still decodes.
        let old = r#"{"status":"ok","version":"0.1.0","pid":1,"vms":0,"registry_writable":true,"notes":[]}"#;
        assert_eq!(serde_json::from_str::<Health>(old).unwrap().accel, None);
    }
}
