//! RayOS's own memory: the resident set of every process running the
//! `rayos` binary (PID 1, rayosd, the presenter, console sessions), read
//! from `/proc`. The VMs' QEMU and swtpm processes are not RayOS's own and
//! are not counted; `rayos status` shows both sums.
//!
//! Limits: a snapshot; shared pages (the binary's text) are counted once
//! per process, as `VmRSS` does, so the sum overstates what the processes
//! cost together.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// One RayOS process's memory, for `rayos status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessMemory {
    /// The process id.
    pub pid: u32,
    /// The subcommand it runs (`init`, `daemon`, `present`, …).
    pub role: String,
    /// Resident memory (`VmRSS`) in KiB.
    pub rss_kib: u64,
}

/// `VmRSS` in KiB from the text of `/proc/<pid>/status` (kernel threads
/// and zombies have none).
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The role from a `/proc/<pid>/cmdline`: `argv[0]`'s name when it is `init`
/// (the kernel starts PID 1 as `/init`), else the first argument.
pub fn role(cmdline: &[u8]) -> String {
    let mut args = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned());
    let argv0 = args.next().unwrap_or_default();
    let name = argv0.rsplit('/').next().unwrap_or_default().to_string();
    if name == "init" {
        return name;
    }
    args.find(|a| !a.is_empty() && !a.starts_with('-'))
        .unwrap_or(name)
}

/// Every process under `proc_root` running `exe`, except `skip`.
pub fn processes_of(proc_root: &Path, exe: &Path, skip: u32) -> Vec<ProcessMemory> {
    let Ok(dir) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut out: Vec<ProcessMemory> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != skip)
        .filter_map(|pid| {
            let base = proc_root.join(pid.to_string());
            let target: PathBuf = std::fs::read_link(base.join("exe")).ok()?;
            if target != exe {
                return None;
            }
            let rss_kib = parse_vm_rss(&std::fs::read_to_string(base.join("status")).ok()?)?;
            let role = role(&std::fs::read(base.join("cmdline")).unwrap_or_default());
            Some(ProcessMemory { pid, role, rss_kib })
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// RayOS's own processes on this machine (those running this binary),
/// without the caller.
pub fn rayos_processes() -> Vec<ProcessMemory> {
    match std::env::current_exe() {
        Ok(exe) => processes_of(Path::new("/proc"), &exe, std::process::id()),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_and_roles() {
        let status = "Name:\trayos\nVmPeak:\t  9000 kB\nVmRSS:\t    3772 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(3772));
        assert_eq!(parse_vm_rss("Name:\tkthreadd\n"), None);
        assert_eq!(role(b"/init\0"), "init");
        assert_eq!(
            role(b"/usr/bin/rayos\0daemon\0--state-dir\0/var/rayos\0"),
            "daemon"
        );
        assert_eq!(role(b"rayos\0--json\0present\0"), "present");
        assert_eq!(role(b"/usr/bin/rayos\0"), "rayos");
    }

    #[test]
    fn finds_this_process_in_the_real_proc() {
        let me = std::env::current_exe().unwrap();
        let found = processes_of(Path::new("/proc"), &me, 0);
        let mine = found.iter().find(|p| p.pid == std::process::id());
        assert!(mine.is_some_and(|p| p.rss_kib > 0), "{found:?}");
        let skipped = processes_of(Path::new("/proc"), &me, std::process::id());
        assert!(skipped.iter().all(|p| p.pid != std::process::id()));
    }

    #[test]
    fn only_processes_of_the_binary_are_counted() {
        let d = tempfile::tempdir().unwrap();
        let exe = d.path().join("rayos");
        std::fs::write(&exe, "").unwrap();
        let other = d.path().join("qemu");
        std::fs::write(&other, "").unwrap();
        let proc_ = d.path().join("proc");
        let entry = |pid: u32, target: &Path, cmdline: &[u8], rss: Option<u64>| {
            let p = proc_.join(pid.to_string());
            std::fs::create_dir_all(&p).unwrap();
            std::os::unix::fs::symlink(target, p.join("exe")).unwrap();
            std::fs::write(p.join("cmdline"), cmdline).unwrap();
            let status = match rss {
                Some(k) => format!("Name:\tx\nVmRSS:\t{k} kB\n"),
                None => "Name:\tx\n".into(),
            };
            std::fs::write(p.join("status"), status).unwrap();
        };
        entry(1, &exe, b"/init\0", Some(2000));
        entry(310, &exe, b"/usr/bin/rayos\0daemon\0", Some(3700));
        entry(400, &other, b"qemu-system-x86_64\0", Some(90000));
        entry(500, &exe, b"/usr/bin/rayos\0status\0", Some(1500));
        entry(600, &exe, b"/usr/bin/rayos\0present\0", None); // a zombie
        std::fs::create_dir_all(proc_.join("self")).unwrap();
        let found = processes_of(&proc_, &exe, 500);
        let want = vec![
            ProcessMemory {
                pid: 1,
                role: "init".into(),
                rss_kib: 2000,
            },
            ProcessMemory {
                pid: 310,
                role: "daemon".into(),
                rss_kib: 3700,
            },
        ];
        assert_eq!(found, want);
    }
}
