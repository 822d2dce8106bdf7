//! Where things live on the data volume (mounted at `/var/rayos`).
//!
//! ```text
//! machine.toml                 hostname, timezone, locale, keyboard, install id
//! schema-version               DATA_SCHEMA_VERSION as decimal text
//! policy/rayos-policy.toml     policy
//! vm/registry.json             VM registry (rayosd is the only writer)
//! vm/<uuid>/                   disks, ovmf-vars.fd, tpm/, state/, logs/
//! logs/  crash/  boot/
//! ```

use std::path::{Path, PathBuf};

use uuid::Uuid;

/// Default mount point of the data volume.
pub const DEFAULT_ROOT: &str = rayos_base::paths::DATA;

/// Paths on a data volume rooted at `root`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataLayout {
    root: PathBuf,
}

impl DataLayout {
    /// The layout of the data volume mounted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataLayout { root: root.into() }
    }
    /// The data volume's mount point.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `machine.toml`: host name, time zone, locale, keyboard, install id.
    pub fn machine(&self) -> PathBuf {
        self.root.join("machine.toml")
    }
    /// `schema-version`: the data format's version as decimal text.
    pub fn schema_version(&self) -> PathBuf {
        self.root.join("schema-version")
    }
    /// `policy/rayos-policy.toml`: what VMs may do.
    pub fn policy(&self) -> PathBuf {
        self.root.join("policy/rayos-policy.toml")
    }
    /// `vm/`: the registry and one directory per VM.
    pub fn vm_root(&self) -> PathBuf {
        self.root.join("vm")
    }
    /// `vm/registry.json`: every VM's definition (rayosd is the only writer).
    pub fn registry(&self) -> PathBuf {
        self.root.join("vm/registry.json")
    }
    /// `vm/<id>/`: VM `id`'s disks, firmware variables, TPM, saved state and
    /// logs.
    pub fn vm_dir(&self, id: Uuid) -> PathBuf {
        self.root.join("vm").join(id.to_string())
    }
    /// `logs/`: RayOS's own logs.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// `crash/`: what is kept after a crash.
    pub fn crash(&self) -> PathBuf {
        self.root.join("crash")
    }
    /// `boot/`: records of past boots.
    pub fn boot(&self) -> PathBuf {
        self.root.join("boot")
    }

    /// The directories every data volume has, in creation order.
    pub fn skeleton(&self) -> Vec<PathBuf> {
        vec![
            self.root.join("policy"),
            self.vm_root(),
            self.logs(),
            self.crash(),
            self.boot(),
        ]
    }
}

/// Sub-directories of one VM's directory.
pub mod vm {
    /// On the data volume, in `vm/<id>/` of a VM whose files live on a
    /// dedicated VM-storage partition: `label = "rayos-vm-linux"`. rayos
    /// init mounts that partition over `vm/<id>/`, which hides this file;
    /// seeing it means the partition is not mounted, and then nothing may
    /// create the VM's files here (rayosd refuses to start the VM).
    pub const STORAGE_MARKER: &str = ".rayos-vm-storage";
    /// The VM's disk images.
    pub const DISKS: &str = "disks";
    /// The VM's copy of the UEFI variable store.
    pub const OVMF_VARS: &str = "ovmf-vars.fd";
    /// swtpm's state (the VM's TPM).
    pub const TPM: &str = "tpm";
    /// The saved state and its metadata.
    pub const STATE: &str = "state";
    /// The console log and swtpm's log.
    pub const LOGS: &str = "logs";
}

/// The label in a [`vm::STORAGE_MARKER`] file (`label = "NAME"`), when
/// the text is one.
pub fn storage_marker_label(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Marker {
        label: String,
    }
    toml::from_str::<Marker>(text)
        .ok()
        .map(|m| m.label)
        .filter(|l| !l.is_empty())
}

/// The text of a [`vm::STORAGE_MARKER`] file for the partition `label`.
pub fn storage_marker_text(label: &str) -> String {
    format!(
        "# The files of this VM are on the VM-storage partition labelled {label:?},\n\
         # mounted here at boot. Seeing this file means it is not mounted.\n\
         label = {label:?}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_marker_round_trip() {
        let t = storage_marker_text("rayos-vm-linux");
        assert_eq!(storage_marker_label(&t).as_deref(), Some("rayos-vm-linux"));
        assert_eq!(storage_marker_label("label = \"\"\n"), None);
        assert_eq!(storage_marker_label("lable = \"x\"\n"), None);
        assert_eq!(storage_marker_label("\u{0}garbage"), None);
    }
}
