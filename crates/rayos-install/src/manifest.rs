//! The install manifest (`/rayos/install-manifest.json` on the system
//! partition). It is written last: its presence marks a complete install,
//! which the installer never overwrites without `reinstall = true`.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::answers::Mode;
use crate::plan::Role;

/// The manifest `schema` this RayOS writes and reads.
pub const MANIFEST_SCHEMA_VERSION: u32 = 1;

/// One partition of the install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPartition {
    /// What RayOS uses it for.
    pub role: Role,
    /// Its number in the GPT.
    pub number: u32,
    /// Its type GUID.
    pub type_guid: Uuid,
    /// Its own GUID (`PARTUUID`).
    pub unique_guid: Uuid,
    /// Its first sector.
    pub first_lba: u64,
    /// Its last sector (inclusive).
    pub last_lba: u64,
}

/// The installed UKI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestImage {
    /// File name on the system partition (`/EFI/Linux/...`).
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256 (lower-case hex).
    pub sha256: String,
}

/// The contents of `install-manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest's schema ([`MANIFEST_SCHEMA_VERSION`]).
    pub schema: u32,
    /// The RayOS version installed.
    pub rayos_version: String,
    /// The install's id (the same as in `machine.toml`).
    pub install_id: Uuid,
    /// RFC 3339, UTC.
    pub installed_at: String,
    /// How RayOS was placed on the disk.
    pub mode: Mode,
    /// The disk's logical sector size in bytes.
    pub sector_size: u32,
    /// The partitions RayOS uses.
    pub partitions: Vec<ManifestPartition>,
    /// The UKI installed.
    pub system_image: ManifestImage,
}

impl Manifest {
    /// Reads a manifest from its JSON.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The manifest as pretty JSON with a final newline.
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
