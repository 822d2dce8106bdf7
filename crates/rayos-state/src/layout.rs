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
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataLayout { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn machine(&self) -> PathBuf {
        self.root.join("machine.toml")
    }
    pub fn schema_version(&self) -> PathBuf {
        self.root.join("schema-version")
    }
    pub fn policy(&self) -> PathBuf {
        self.root.join("policy/rayos-policy.toml")
    }
    pub fn vm_root(&self) -> PathBuf {
        self.root.join("vm")
    }
    pub fn registry(&self) -> PathBuf {
        self.root.join("vm/registry.json")
    }
    pub fn vm_dir(&self, id: Uuid) -> PathBuf {
        self.root.join("vm").join(id.to_string())
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn crash(&self) -> PathBuf {
        self.root.join("crash")
    }
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
    pub const DISKS: &str = "disks";
    pub const OVMF_VARS: &str = "ovmf-vars.fd";
    pub const TPM: &str = "tpm";
    pub const STATE: &str = "state";
    pub const LOGS: &str = "logs";
}
