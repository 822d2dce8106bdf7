//! The serial console log QEMU appends to (`<vm_dir>/logs/console.log`).
//!
//! QEMU opens the file with `O_APPEND`, so rotation is copy-truncate:
//! copying the file aside and truncating it in place never confuses QEMU,
//! which keeps writing at the (new) end. A few bytes written between the
//! copy and the truncation can be lost; for a console log that is accepted.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::cmdline::vmdir;

/// The path of the console log in the VM directory `vm_dir`.
pub fn console_log(vm_dir: &Path) -> PathBuf {
    vm_dir.join(vmdir::CONSOLE_LOG)
}

/// Rotates `console.log` to `console.log.1` (and older ones up to `.keep`)
/// when it is larger than `max_bytes`. Returns whether it rotated.
pub fn rotate(vm_dir: &Path, max_bytes: u64, keep: u32) -> std::io::Result<bool> {
    let log = console_log(vm_dir);
    let len = match std::fs::metadata(&log) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes || keep == 0 {
        return Ok(false);
    }
    let numbered = |n: u32| PathBuf::from(format!("{}.{n}", log.display()));
    let _ = std::fs::remove_file(numbered(keep));
    for n in (1..keep).rev() {
        let _ = std::fs::rename(numbered(n), numbered(n + 1));
    }
    std::fs::copy(&log, numbered(1))?;
    OpenOptions::new().write(true).open(&log)?.set_len(0)?;
    Ok(true)
}

/// The last `n` lines of the console log (at most the last 64 KiB read), for
/// crash reports.
pub fn tail(vm_dir: &Path, n: usize) -> std::io::Result<Vec<String>> {
    let mut f = match std::fs::File::open(console_log(vm_dir)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    Ok(lines[lines.len().saturating_sub(n)..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotate_and_tail() {
        let d = std::env::temp_dir().join(format!("rayos-console-{}", std::process::id()));
        std::fs::create_dir_all(d.join("logs")).unwrap();
        let log = console_log(&d);
        assert!(!rotate(&d, 10, 2).unwrap());
        std::fs::write(&log, "a\nb\nc\n").unwrap();
        assert_eq!(tail(&d, 2).unwrap(), vec!["b", "c"]);
        assert!(!rotate(&d, 100, 2).unwrap());
        assert!(rotate(&d, 2, 2).unwrap());
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        std::fs::write(&log, "second\n").unwrap();
        assert!(rotate(&d, 2, 2).unwrap());
        assert_eq!(
            std::fs::read_to_string(d.join("logs/console.log.1")).unwrap(),
            "second\n"
        );
        assert_eq!(
            std::fs::read_to_string(d.join("logs/console.log.2")).unwrap(),
            "a\nb\nc\n"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
