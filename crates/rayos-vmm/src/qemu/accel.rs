//! Choosing the accelerator: KVM only where it really runs a guest.
//!
//! Opening `/dev/kvm` proves nothing: on some hosts (nested setups, these
//! build machines) the device exists and QEMU starts, but a real kernel hangs
//! or dies on an MSR. A tiny multiboot image that only writes to a debug
//! port passes there too, so the probe boots a real Linux kernel without a
//! root file system and waits for its panic ("VFS: Unable to mount root"),
//! which needs protected and long mode, paging, interrupts, timers and
//! MSRs. With working KVM that takes well under a second; the probe gives
//! up after [`PROBE_TIMEOUT`] and the answer is cached for the process.
//!
//! `RAYOS_ACCEL=tcg|kvm` overrides the probe (tests force TCG).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long the probe guest may take to reach its panic.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// `RAYOS_ACCEL` if set to `tcg` or `kvm`.
    pub fn from_env() -> Option<Accel> {
        match std::env::var("RAYOS_ACCEL").ok()?.trim() {
            "tcg" => Some(Accel::Tcg),
            "kvm" => Some(Accel::Kvm),
            _ => None,
        }
    }

    /// The environment override, else the (cached) probe result.
    pub fn detect(qemu: &Path) -> Accel {
        if let Some(a) = Accel::from_env() {
            return a;
        }
        static PROBED: OnceLock<Accel> = OnceLock::new();
        *PROBED.get_or_init(|| {
            let kernel = probe_kernel();
            match kernel {
                Some(k) if Path::new("/dev/kvm").exists() => {
                    if boots(qemu, Accel::Kvm, &k, PROBE_TIMEOUT) {
                        Accel::Kvm
                    } else {
                        Accel::Tcg
                    }
                }
                _ => Accel::Tcg,
            }
        })
    }
}

/// A kernel to probe with: `RAYOS_PROBE_KERNEL`, else the newest
/// `/boot/vmlinuz-*`, else one under `/usr/lib/modules/*/vmlinuz`.
pub fn probe_kernel() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("RAYOS_PROBE_KERNEL") {
        return Some(PathBuf::from(k));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    found.extend(
        std::fs::read_dir("/usr/lib/modules")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("vmlinuz"))
            .filter(|p| p.is_file()),
    );
    found.sort();
    found.pop()
}

/// Boots `kernel` with no root file system under `accel` and reports
/// whether it reached the root-mount panic within `timeout`.
pub fn boots(qemu: &Path, accel: Accel, kernel: &Path, timeout: Duration) -> bool {
    let log = std::env::temp_dir().join(format!(
        "rayos-accel-probe-{}-{}.log",
        std::process::id(),
        accel.name()
    ));
    let _ = std::fs::remove_file(&log);
    let child = Command::new(qemu)
        .args([
            "-accel",
            accel.name(),
            "-machine",
            "q35",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-display", "none", "-m", "256", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    let deadline = Instant::now() + timeout;
    let ok = loop {
        let text = std::fs::read(&log).unwrap_or_default();
        if contains(&text, b"VFS: Unable to mount root") || contains(&text, b"Kernel panic") {
            break true;
        }
        match child.try_wait() {
            Ok(Some(_)) => {
                let text = std::fs::read(&log).unwrap_or_default();
                break contains(&text, b"Kernel panic");
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&log);
    ok
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe itself must recognise a working accelerator: TCG always
    /// works, so a probe that fails under TCG would silently never pick KVM.
    #[test]
    fn probe_recognises_a_booting_kernel() {
        let kernel = probe_kernel()
            .expect("no kernel to probe with: install linux-image-amd64 (scripts/install-deps.sh)");
        assert!(boots(
            Path::new("qemu-system-x86_64"),
            Accel::Tcg,
            &kernel,
            Duration::from_secs(60)
        ));
        assert!(!boots(
            Path::new("qemu-system-x86_64"),
            Accel::Tcg,
            Path::new("/nonexistent/kernel"),
            Duration::from_secs(10)
        ));
    }
}
