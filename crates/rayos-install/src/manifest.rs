//! The install manifest (`/rayos/install-manifest.json` on the system
//! partition). It is written last: its presence marks a complete install,
//! which the installer never overwrites without `reinstall = true`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::answers::Mode;
use crate::plan::Role;

pub const MANIFEST_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPartition {
    pub role: Role,
    pub number: u32,
    pub type_guid: Uuid,
    pub unique_guid: Uuid,
    pub first_lba: u64,
    pub last_lba: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestImage {
    /// File name on the system partition (`/EFI/Linux/...`).
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub rayos_version: String,
    pub install_id: Uuid,
    /// RFC 3339, UTC.
    pub installed_at: String,
    pub mode: Mode,
    pub sector_size: u32,
    pub partitions: Vec<ManifestPartition>,
    pub system_image: ManifestImage,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// One line for messages: "RayOS 0.1.0, id …, installed …".
    pub fn summary(&self) -> String {
        format!(
            "RayOS {}, install id {}, installed {}",
            self.rayos_version, self.install_id, self.installed_at
        )
    }
}

/// Timestamps come from rayos-state (shared with the other state files).
pub use rayos_state::time::{now_rfc3339, rfc3339};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
