//! Process bookkeeping for detached QEMU and swtpm processes: pid files,
//! liveness (a zombie counts as gone, since a daemonized QEMU may be
//! reparented to a PID 1 that never reaps it), identity checks through
//! `/proc/<pid>/cmdline`, and signals.

use std::path::Path;
use std::time::{Duration, Instant};

/// Reads a pid file; `None` when missing or not a positive number.
pub fn read_pid(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    (pid > 1).then_some(pid)
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may
    // itself contain spaces or parentheses.
    match stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
    {
        // A killed multi-threaded process shows its leader as a zombie while
        // the other threads are still exiting, and the open files (and so
        // the disk image locks) go only with the last thread: count it as
        // gone only once no other thread is left.
        Some("Z") => other_threads(pid),
        Some(state) => !matches!(state, "X" | "x"),
        None => false,
    }
}

/// Whether `pid` still has a thread besides its (zombie) leader.
fn other_threads(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let leader = pid.to_string();
    tasks
        .filter_map(Result::ok)
        .any(|t| t.file_name().to_str() != Some(leader.as_str()))
}

/// The process's arguments, or `None` if it is gone.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Whether `pid` is alive and one of its arguments contains `needle`.
pub fn alive_with_arg(pid: u32, needle: &str) -> bool {
    alive(pid) && cmdline(pid).is_some_and(|args| args.iter().any(|a| a.contains(needle)))
}

/// Sends `sig`; a process that is already gone is not an error.
pub fn signal(pid: u32, sig: i32) -> std::io::Result<()> {
    let Ok(p) = i32::try_from(pid) else {
        return Ok(());
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours;
    // `p` is a positive pid (never 0 or -1, which would address groups).
    let r = unsafe { libc::kill(p, sig) };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(e)
    }
}

/// Polls until `pid` is gone; false on timeout.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        // Short: a save waits here for QEMU to quit.
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// SIGTERM, then SIGKILL after `grace`; true when the process is gone.
pub fn terminate(pid: u32, grace: Duration) -> bool {
    let _ = signal(pid, libc::SIGTERM);
    if wait_gone(pid, grace) {
        return true;
    }
    let _ = signal(pid, libc::SIGKILL);
    wait_gone(pid, Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_and_identity() {
        let me = std::process::id();
        assert!(alive(me));
        assert!(cmdline(me).is_some());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        // Between fork and exec the child still shows our command line.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !alive_with_arg(pid, "sleep") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(alive_with_arg(pid, "30"));
        assert!(!alive_with_arg(pid, "not-an-argument"));
        signal(pid, libc::SIGKILL).unwrap();
        // Not yet reaped: a zombie, which counts as gone.
        assert!(wait_gone(pid, Duration::from_secs(5)));
        child.wait().unwrap();
        assert!(!alive(pid));
        assert!(signal(pid, libc::SIGKILL).is_ok());
        assert_eq!(read_pid(Path::new("/nonexistent/pid")), None);
    }

    #[test]
    fn a_zombie_leader_counts_while_other_threads_live() {
        // This test runs on a thread of its own, so the process has more
        // than its leader; a `sleep` child has only its leader.
        let me = std::process::id();
        let helper = std::thread::spawn(|| std::thread::sleep(Duration::from_millis(500)));
        assert!(other_threads(me));
        helper.join().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert!(!other_threads(child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!other_threads(child.id()), "a reaped process has none");
    }
}
