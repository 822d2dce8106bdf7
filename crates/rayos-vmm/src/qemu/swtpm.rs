//! swtpm, the software TPM 2.0 behind a VM's `tpm-crb` device.
//!
//! One swtpm per VM, state in `<vm_dir>/tpm` (kept for the VM's life, so
//! BitLocker keys and the like survive), control socket and pid file in the
//! run directory. It is started before QEMU and started afresh before a
//! restore: swtpm's volatile state travels inside QEMU's migration stream,
//! and a swtpm that already served another boot would disagree with it.
//! `--terminate` makes swtpm exit when QEMU closes the connection, so a QEMU
//! that dies does not leave it behind; RayOS also stops it explicitly.
//!
//! Permissions: swtpm refuses to start (`CMD_INIT` fails in QEMU) when it
//! cannot write its state directory, so the directory is created 0700 and
//! owned by the user running RayOS, and swtpm runs as that same user.
//!
//! Monitoring: the handle checks swtpm's pid like QEMU's
//! ([`crate::VmHandle::tpm_state`]); the supervisor shuts a VM down whose
//! swtpm died (it cannot be saved without it).
//!
//! Limit: swtpm's option parser has no escape for commas, so a VM with a
//! TPM cannot have a comma in its directory or run directory paths
//! ([`check_paths`] says so before anything starts; RayOS's own paths have
//! none).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cmdline::{run, vmdir};
use super::process;
use crate::{VmSpec, VmmError};

pub fn state_dir(spec: &VmSpec) -> PathBuf {
    spec.vm_dir.join(rayos_state::layout::vm::TPM)
}

/// Refuses paths swtpm would misread: its options are `key=value,...` with
/// no escape for a comma.
pub fn check_paths(spec: &VmSpec) -> Result<(), VmmError> {
    for p in [&spec.vm_dir, &spec.run_dir] {
        if p.to_string_lossy().contains(',') {
            return Err(VmmError::Tpm {
                vm: spec.def.name.clone(),
                detail: format!(
                    "{} contains a comma, which swtpm cannot take in its options:                      keep the data volume and the API socket of a VM with a TPM on paths without commas",
                    p.display()
                ),
            });
        }
    }
    Ok(())
}

/// Stops a swtpm left over for this VM (found through its pid file and
/// checked to be serving this VM's state directory).
pub fn stop(spec: &VmSpec) {
    let pid_file = spec.run_dir.join(run::SWTPM_PID);
    if let Some(pid) = process::read_pid(&pid_file) {
        let dir = state_dir(spec).display().to_string();
        if process::alive_with_arg(pid, &dir) {
            process::terminate(pid, Duration::from_secs(2));
        }
    }
    let _ = std::fs::remove_file(pid_file);
    let _ = std::fs::remove_file(spec.run_dir.join(run::SWTPM));
}

/// Starts a fresh swtpm for `spec` and waits until its socket accepts
/// connections. Returns its pid.
pub fn start(spec: &VmSpec, swtpm: &Path, timeout: Duration) -> Result<u32, VmmError> {
    let vm = spec.def.name.clone();
    let err = |detail: String| VmmError::Tpm {
        vm: vm.clone(),
        detail,
    };
    stop(spec);
    let dir = state_dir(spec);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|source| VmmError::Io {
            path: dir.clone(),
            source,
        })?;
    // An existing directory may have been created with looser or wrong
    // permissions (the swtpm CMD_INIT pitfall): make it ours and private.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
        VmmError::Io {
            path: dir.clone(),
            source,
        }
    })?;
    let sock = spec.run_dir.join(run::SWTPM);
    let pid_file = spec.run_dir.join(run::SWTPM_PID);
    let log = spec.vm_dir.join(vmdir::SWTPM_LOG);
    let out = Command::new(swtpm)
        .arg("socket")
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(format!("dir={},mode=0600", dir.display()))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={},mode=0600", sock.display()))
        .arg("--pid")
        .arg(format!("file={}", pid_file.display()))
        .arg("--log")
        .arg(format!("file={},level=1", log.display()))
        .arg("--daemon")
        .arg("--terminate")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| {
            err(format!(
                "cannot run {}: {e} (install swtpm)",
                swtpm.display()
            ))
        })?;
    if !out.status.success() {
        return Err(err(format!(
            "swtpm exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(pid) = process::read_pid(&pid_file) {
            // Never probe by connecting: with `--terminate`, swtpm exits
            // when its first client hangs up.
            if sock.exists() {
                return Ok(pid);
            }
            if !process::alive(pid) {
                return Err(err(format!(
                    "swtpm exited during start-up; see {}",
                    log.display()
                )));
            }
        }
        if Instant::now() >= deadline {
            return Err(err(format!(
                "no socket at {} after {timeout:?}",
                sock.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
