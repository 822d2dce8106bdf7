//! What the boot leaves behind: the status file `rayos status` reads
//! (`/run/rayos/init-status.json`) and the boot record on the data volume
//! (`boot/<unix-time>-<boot-id>.json`, the newest 100 kept).

use std::fs;
use std::path::{Path, PathBuf};

use rayos_base::paths;

use super::{Platform, State};
use crate::log;

/// How many boot records are kept.
const KEEP_RECORDS: usize = 100;

/// Writes the status file `rayos status` reads (`/run/rayos/init-status.json`).
pub fn write_status(st: &mut State, p: &dyn Platform) {
    let run = p.at(paths::RUN);
    if st.status.boot_id.is_empty() && !run.is_dir() {
        return;
    }
    let _ = fs::create_dir_all(&run);
    if st.status.write(&p.at(paths::INIT_STATUS)).is_ok() {
        st.status_dirty = false;
    }
}

/// The boot record with `result` (`booted`, `ready`, `powered-off`,
/// `rebooted`), only on a writable, checked data volume.
pub fn write_boot_record(st: &State, p: &dyn Platform, result: &str) {
    if !st.data_writable() {
        return;
    }
    let dir = rayos_state::DataLayout::new(p.at(paths::DATA)).boot();
    let _ = fs::create_dir_all(&dir);
    let rec = serde_json::json!({
        "boot_id": st.status.boot_id,
        "version": st.status.version,
        "mode": st.status.mode,
        "started_unix": st.status.started_unix,
        "updated_unix": log::unix_time(),
        "uptime_s": log::uptime(),
        "result": result,
        "steps": st.status.steps,
        "faults": st.status.faults,
        "blessed": st.status.blessed,
        "image": st.image,
    });
    let name = format!("{}-{}.json", st.status.started_unix, st.status.boot_id);
    let _ = rayos_state::write_atomic(
        &dir.join(name),
        serde_json::to_string_pretty(&rec)
            .unwrap_or_default()
            .as_bytes(),
    );
    prune_boot_records(&dir, KEEP_RECORDS);
}

fn prune_boot_records(dir: &Path, keep: usize) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut names: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    if names.len() <= keep {
        return;
    }
    // Names start with the boot's unix time: sorting is by age.
    names.sort();
    for p in &names[..names.len() - keep] {
        let _ = fs::remove_file(p);
        let _ = fs::remove_file(rayos_state::atomic::previous_path(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_records_are_pruned_oldest_first() {
        let d = tempfile::tempdir().unwrap();
        for t in 100..110 {
            fs::write(d.path().join(format!("{t}-id.json")), "{}").unwrap();
        }
        prune_boot_records(d.path(), 3);
        let mut left: Vec<String> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["107-id.json", "108-id.json", "109-id.json"]);
    }
}
