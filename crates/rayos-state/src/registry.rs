//! The VM registry (`vm/registry.json`): every VM's identity and
//! configuration. rayosd is its only writer at run time; the installer seeds
//! it once on a fresh data volume.
//!
//! A VM's `id` never changes and is never reused: its disks, UEFI variables
//! and TPM state live in `vm/<id>/` and stay bound to it for the life of the
//! install.
//!
//! Schema versions: 1 is the original format; 2 adds a VM's first-boot
//! guest settings (`guest`); 3 adds media given to the guest as read-only
//! USB sticks (`usb_media`). A registry is written with the lowest version
//! that holds its contents ([`Registry::to_json`]), so an install that uses
//! no version-2 field stays readable by a RayOS that knows only version 1
//! (an update rolled back keeps its VMs); one that does is refused by such
//! a RayOS instead of having settings silently dropped.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::guest::GuestConfig;

/// The newest registry version this RayOS reads and writes.
pub const REGISTRY_SCHEMA_VERSION: u32 = 3;
/// The version a registry without any version-2 field is written with.
pub const REGISTRY_BASE_VERSION: u32 = 1;

/// What a VM runs: picks its device profile (firmware, TPM, devices) and its
/// policy section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmKind {
    /// A Linux guest (the bundled Debian VM or the test guest).
    Linux,
    /// Windows: UEFI with Secure Boot, a TPM 2.0 and the devices Windows 11
    /// needs.
    Windows,
    /// Anything else, created by hand.
    Generic,
}

impl std::fmt::Display for VmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmKind::Linux => "linux",
            VmKind::Windows => "windows",
            VmKind::Generic => "generic",
        })
    }
}

impl std::str::FromStr for VmKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "linux" => Ok(VmKind::Linux),
            "windows" => Ok(VmKind::Windows),
            "generic" => Ok(VmKind::Generic),
            other => Err(format!(
                "unknown VM kind {other:?}: use linux, windows or generic"
            )),
        }
    }
}

/// A disk image's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskFormat {
    /// qcow2 (what RayOS creates and imports into).
    Qcow2,
    /// Raw bytes (an image file or a block device).
    Raw,
}

/// One disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    /// Relative paths are relative to the VM's directory.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
}

/// How a VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type", deny_unknown_fields)]
pub enum BootSpec {
    /// QEMU loads a Linux kernel and initramfs directly (no firmware).
    DirectKernel {
        /// The kernel image.
        kernel: PathBuf,
        /// The initramfs, if any.
        initrd: Option<PathBuf>,
        /// The kernel command line.
        cmdline: String,
    },
    /// OVMF with a per-VM copy of the variable store (`ovmf-vars.fd`).
    Uefi {
        /// Whether Secure Boot is on (with Microsoft's keys).
        secure_boot: bool,
    },
}

/// One VM as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDefinition {
    /// The VM's id, fixed at creation (names its directory).
    pub id: Uuid,
    /// The VM's name, unique ([`VmDefinition::validate_name`]).
    pub name: String,
    /// What it runs.
    pub kind: VmKind,
    /// Memory in MiB (before policy limits).
    pub memory_mib: u64,
    /// Virtual CPUs (before policy limits).
    pub cpus: u32,
    /// Its disks, in the order the guest sees them.
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// How it boots.
    pub boot: BootSpec,
    /// Whether it has a TPM 2.0 (swtpm).
    #[serde(default)]
    pub tpm: bool,
    /// Installation and driver media given to the guest as CD-ROMs (raw,
    /// read-only): ISO files, or block devices written from an ISO. Kept
    /// until ejected; `provisioned` ejects them.
    #[serde(default)]
    pub media: Vec<PathBuf>,
    /// Media given to the guest as read-only USB mass-storage devices
    /// (sticks whose files were copied by a tool, or image files of them;
    /// registry version 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usb_media: Vec<PathBuf>,
    /// Whether installation is done: media ejected, provisioning-only
    /// networking off.
    #[serde(default)]
    pub provisioned: bool,
    /// First-boot settings handed to the guest (registry version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestConfig>,
}

impl VmDefinition {
    /// A VM name is what people type: 1-32 of `a-z 0-9 - _`, starting with a letter.
    pub fn validate_name(name: &str) -> Result<(), String> {
        let ok = !name.is_empty()
            && name.len() <= 32
            && name.as_bytes()[0].is_ascii_lowercase()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(())
        } else {
            Err(format!(
                "VM name {name:?} is not valid: use 1-32 of a-z, 0-9, '-' and '_', starting with a letter"
            ))
        }
    }
}

/// `vm/registry.json`: every VM's definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// The file's schema version (at least what its VMs' fields need).
    pub version: u32,
    /// The VMs, in creation order.
    #[serde(default)]
    pub vms: Vec<VmDefinition>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            version: REGISTRY_BASE_VERSION,
            vms: Vec::new(),
        }
    }
}

/// Why the registry file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The file is not the registry's JSON.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The line of the error.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// The file's version is newer than this RayOS reads.
    #[error(
        "{path}: registry version {found} is newer than this RayOS reads ({REGISTRY_SCHEMA_VERSION}); boot the newer RayOS or use recovery"
    )]
    Version {
        /// The file.
        path: String,
        /// The version it states.
        found: u32,
    },
    /// A VM uses a field newer than the version the file states.
    #[error(
        "{path}: VM {vm} has {field}, which registry version {version} introduced, but the file says version {found}"
    )]
    Field {
        /// The file.
        path: String,
        /// The VM's name.
        vm: String,
        /// The field.
        field: &'static str,
        /// The registry version that introduced it.
        version: u32,
        /// The version the file states.
        found: u32,
    },
    /// A VM's first-boot settings are not valid.
    #[error("{path}: VM {vm}: {message}")]
    Guest {
        /// The file.
        path: String,
        /// The VM's name.
        vm: String,
        /// What is wrong.
        message: String,
    },
    /// Two VMs share a name or an id.
    #[error("{path}: two VMs share the {what} {value:?}")]
    Duplicate {
        /// The file.
        path: String,
        /// What they share (`name`, `id`).
        what: &'static str,
        /// The shared value.
        value: String,
    },
}

impl Registry {
    /// Reads `text` (from `path`, named in errors) and checks versions, fields
    /// and uniqueness.
    pub fn parse(path: &str, text: &str) -> Result<Self, RegistryError> {
        let r: Registry = serde_json::from_str(text).map_err(|e| RegistryError::Parse {
            path: path.to_string(),
            line: e.line(),
            message: e.to_string(),
        })?;
        if !(REGISTRY_BASE_VERSION..=REGISTRY_SCHEMA_VERSION).contains(&r.version) {
            return Err(RegistryError::Version {
                path: path.to_string(),
                found: r.version,
            });
        }
        if r.version < 2
            && let Some(vm) = r.vms.iter().find(|v| v.guest.is_some())
        {
            return Err(RegistryError::Field {
                path: path.to_string(),
                vm: vm.name.clone(),
                field: "guest",
                version: 2,
                found: r.version,
            });
        }
        if r.version < 3
            && let Some(vm) = r.vms.iter().find(|v| !v.usb_media.is_empty())
        {
            return Err(RegistryError::Field {
                path: path.to_string(),
                vm: vm.name.clone(),
                field: "usb_media",
                version: 3,
                found: r.version,
            });
        }
        for vm in &r.vms {
            if let Some(g) = &vm.guest {
                g.validate().map_err(|message| RegistryError::Guest {
                    path: path.to_string(),
                    vm: vm.name.clone(),
                    message,
                })?;
            }
        }
        let mut ids = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for vm in &r.vms {
            if !ids.insert(vm.id) {
                return Err(RegistryError::Duplicate {
                    path: path.into(),
                    what: "id",
                    value: vm.id.to_string(),
                });
            }
            if !names.insert(vm.name.as_str()) {
                return Err(RegistryError::Duplicate {
                    path: path.into(),
                    what: "name",
                    value: vm.name.clone(),
                });
            }
        }
        Ok(r)
    }

    /// The lowest version that holds this registry's contents.
    pub fn needed_version(&self) -> u32 {
        if self.vms.iter().any(|v| !v.usb_media.is_empty()) {
            3
        } else if self.vms.iter().any(|v| v.guest.is_some()) {
            2
        } else {
            REGISTRY_BASE_VERSION
        }
    }

    /// The file's text, with `version` raised to [`Registry::needed_version`]
    /// when the contents need it.
    pub fn to_json(&self) -> String {
        let mut out = self.clone();
        out.version = self.version.max(self.needed_version());
        serde_json::to_string_pretty(&out).unwrap_or_default() + "\n"
    }

    /// The VM named `name`.
    pub fn by_name(&self, name: &str) -> Option<&VmDefinition> {
        self.vms.iter().find(|v| v.name == name)
    }

    /// The VM named `name`, to change it.
    pub fn by_name_mut(&mut self, name: &str) -> Option<&mut VmDefinition> {
        self.vms.iter_mut().find(|v| v.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux() -> VmDefinition {
        VmDefinition {
            id: Uuid::new_v4(),
            name: "linux".into(),
            kind: VmKind::Linux,
            memory_mib: 256,
            cpus: 1,
            disks: vec![DiskSpec {
                path: "disks/root.qcow2".into(),
                format: DiskFormat::Qcow2,
            }],
            boot: BootSpec::DirectKernel {
                kernel: "/usr/share/rayos/guest/vmlinuz".into(),
                initrd: Some("/usr/share/rayos/guest/initrd.img".into()),
                cmdline: "console=ttyS0".into(),
            },
            tpm: false,
            media: vec![],
            usb_media: vec![],
            provisioned: true,
            guest: None,
        }
    }

    #[test]
    fn round_trip() {
        let r = Registry {
            vms: vec![linux()],
            ..Default::default()
        };
        assert_eq!(Registry::parse("r", &r.to_json()).unwrap(), r);
    }

    #[test]
    fn duplicates_and_versions_rejected() {
        let a = linux();
        let r = Registry {
            vms: vec![a.clone(), a],
            ..Default::default()
        };
        assert!(matches!(
            Registry::parse("r", &r.to_json()),
            Err(RegistryError::Duplicate { .. })
        ));
        assert!(matches!(
            Registry::parse("r", "{\"version\": 7}"),
            Err(RegistryError::Version { found: 7, .. })
        ));
        let e =
            Registry::parse("r", "{\n\"version\": 1,\n\"vms\": [ {\"id\": 3} ]\n}").unwrap_err();
        assert!(matches!(e, RegistryError::Parse { line: 3, .. }), "{e}");
    }

    #[test]
    fn version_follows_contents() {
        let mut r = Registry {
            vms: vec![linux()],
            ..Default::default()
        };
        // No guest settings: still version 1, readable by an older RayOS.
        assert!(r.to_json().contains("\"version\": 1"));
        r.vms[0].guest = Some(crate::guest::GuestConfig {
            user: "alice".into(),
            password_hash: Some(crate::guest::hash_password("pw").unwrap()),
            ssh_authorized_key: None,
            hostname: "box".into(),
            timezone: "UTC".into(),
            locale: "C.UTF-8".into(),
            keyboard: "us".into(),
        });
        let text = r.to_json();
        assert!(text.contains("\"version\": 2"), "{text}");
        let back = Registry::parse("r", &text).unwrap();
        assert_eq!(back.vms, r.vms);
        assert_eq!(back.version, 2);
        // A version-1 file cannot carry guest settings.
        let forged = text.replace("\"version\": 2", "\"version\": 1");
        let e = Registry::parse("r", &forged).unwrap_err();
        assert!(matches!(e, RegistryError::Field { .. }), "{e}");
        // Bad settings are refused with the VM's name.
        let bad = text.replace("\"user\": \"alice\"", "\"user\": \"root\"");
        let e = Registry::parse("r", &bad).unwrap_err();
        assert!(e.to_string().contains("VM linux"), "{e}");
        assert!(matches!(
            Registry::parse("r", "{\"version\": 4}"),
            Err(RegistryError::Version { found: 4, .. })
        ));
        // A USB stick needs version 3, and a version-2 file cannot hold one.
        r.vms[0].usb_media = vec!["/dev/sdb".into()];
        let text = r.to_json();
        assert!(text.contains("\"version\": 3"), "{text}");
        assert_eq!(Registry::parse("r", &text).unwrap().vms, r.vms);
        let forged = text.replace("\"version\": 3", "\"version\": 2");
        let e = Registry::parse("r", &forged).unwrap_err();
        assert!(e.to_string().contains("usb_media"), "{e}");
    }

    #[test]
    fn names() {
        assert!(VmDefinition::validate_name("linux").is_ok());
        assert!(VmDefinition::validate_name("Win").is_err());
        assert!(VmDefinition::validate_name("").is_err());
    }
}
