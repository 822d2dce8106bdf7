//! Facts about a target that planning needs but cannot see in the
//! [`Disk`] report: whether the RayOS install on it is complete (its
//! manifest, read with mtools from the system partition) and whether it is
//! the installer's own medium (mounted at `/` or `/run/rayos/medium`, or
//! labelled `RAYOS_INSTALL` — also checked by the planner from the report).

use rayos_disk::Disk;

use crate::manifest::Manifest;
use crate::plan::{Facts, MANIFEST_PATH};
use crate::tools::{FatVolume, ToolError};

/// Reads what [`crate::plan::make_plan`] needs from the target.
pub fn gather(disk: &Disk) -> Result<Facts, ToolError> {
    let mut facts = Facts::default();
    let Some(n) = disk.rayos.as_ref().and_then(|r| r.system) else {
        return Ok(facts);
    };
    let Some(p) = disk.partition(n) else {
        return Ok(facts);
    };
    if !p.filesystem.is_some_and(|f| f.is_fat()) {
        return Ok(facts);
    }
    let vol = FatVolume {
        disk: disk.path.clone(),
        offset_bytes: p.start_bytes,
    };
    if let Some(bytes) = vol.read(MANIFEST_PATH)? {
        facts.manifest = Some(match Manifest::parse(&bytes) {
            Ok(m) => m.summary(),
            // Unreadable but present still marks a finished install: err on
            // the side of not overwriting it.
            Err(e) => format!("its manifest does not parse: {e}"),
        });
    }
    Ok(facts)
}
