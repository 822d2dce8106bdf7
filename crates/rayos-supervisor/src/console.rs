//! The VM's serial console log (`vm/<id>/logs/console.log`, written by the
//! device model): reading its last lines and keeping it size-capped.
//!
//! Rotation is copy-then-truncate: the device model keeps its file open in
//! append mode, so the file cannot be renamed under it; the current content
//! is copied to `console.log.1` (replacing the older one) and the file is
//! truncated. Lines written between the copy and the truncation can be lost;
//! that is accepted for a diagnostic log. Limits: lines are read as lossy
//! UTF-8; at most the last `MAX_TAIL_BYTES` of each file are read.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use rayos_state::layout::vm as vmdirs;

/// The console log's file name in a VM's `logs/` directory.
pub const CONSOLE_LOG: &str = "console.log";
const MAX_TAIL_BYTES: u64 = 1024 * 1024;

/// The console log of the VM whose directory is `vm_dir`.
pub fn log_path(vm_dir: &Path) -> PathBuf {
    vm_dir.join(vmdirs::LOGS).join(CONSOLE_LOG)
}

fn rotated(path: &Path) -> PathBuf {
    path.with_extension("log.1")
}

fn read_tail(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(MAX_TAIL_BYTES);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(MAX_TAIL_BYTES).read_to_end(&mut buf)?;
    if start > 0 {
        // The first line is cut; drop it.
        if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            buf.drain(..=nl);
        }
    }
    Ok(buf)
}

/// The last `n` lines of the console (from the rotated file too when the
/// current one is short). Missing files read as empty.
pub fn tail(vm_dir: &Path, n: usize) -> Vec<String> {
    let path = log_path(vm_dir);
    let mut bytes = read_tail(&path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    if lines.len() < n {
        bytes = read_tail(&rotated(&path)).unwrap_or_default();
        let old = String::from_utf8_lossy(&bytes).into_owned();
        let mut older: Vec<String> = old
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect();
        older.append(&mut lines);
        lines = older;
    }
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

/// Rotates the log when it is larger than `max_bytes`; returns whether it did.
pub fn rotate_if_needed(vm_dir: &Path, max_bytes: u64) -> io::Result<bool> {
    let path = log_path(vm_dir);
    let len = match fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    fs::copy(&path, rotated(&path))?;
    OpenOptions::new().write(true).open(&path)?.set_len(0)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tail_spans_rotation() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("logs")).unwrap();
        assert!(tail(d.path(), 5).is_empty());
        let p = log_path(d.path());
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        for i in 0..100 {
            writeln!(f, "COUNTER {i}").unwrap();
        }
        assert!(!rotate_if_needed(d.path(), 1 << 20).unwrap());
        assert!(rotate_if_needed(d.path(), 100).unwrap());
        assert_eq!(fs::metadata(&p).unwrap().len(), 0);
        // The writer keeps appending to the truncated file.
        writeln!(f, "COUNTER 100").unwrap();
        writeln!(f, "COUNTER 101\r").unwrap();
        assert_eq!(fs::metadata(&p).unwrap().len(), 25, "append mode: no hole");
        assert_eq!(
            tail(d.path(), 3),
            ["COUNTER 99", "COUNTER 100", "COUNTER 101"]
        );
        assert_eq!(tail(d.path(), 1), ["COUNTER 101"]);
    }
}
