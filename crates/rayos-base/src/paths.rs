//! The fixed places RayOS uses on the running system, named once.
//!
//! Two roots: `/run/rayos` (tmpfs, gone at shutdown: sockets, status,
//! mount points for short jobs, logs until the data volume is there) and
//! `/var/rayos` (the data volume's mount point; what lives inside it is
//! `rayos_state::layout`'s business, relative to whatever root is mounted).
//! Binaries take these as defaults and tests pass temp dirs instead.
//!
//! Limits: only paths more than one crate (or more than one place) needs;
//! a path private to one function stays there. Paths inside a VM's
//! directories are `rayos_state::layout` and `rayos-vmm`'s.

/// Expands to the literal `"/run/rayos"`, so every constant below is
/// built from one spelling of the root.
macro_rules! run_root {
    () => {
        "/run/rayos"
    };
}

/// Runtime state of RayOS (tmpfs).
pub const RUN: &str = run_root!();
/// Where the data volume is mounted.
pub const DATA: &str = "/var/rayos";

/// rayosd's API socket (mode 0600); VM sockets go beside it in `vm/`.
pub const API_SOCKET: &str = concat!(run_root!(), "/api.sock");
/// rayos init's status for `rayos status` and the console.
pub const INIT_STATUS: &str = concat!(run_root!(), "/init-status.json");
/// `rayos net`'s status (links, leases) for `rayos status`.
pub const NETWORK_STATUS: &str = concat!(run_root!(), "/network.json");
/// Logs while no data volume is mounted (moved there once it is).
pub const RUN_LOGS: &str = concat!(run_root!(), "/logs");
/// Held (flock) by whatever is writing a disk: an install, the wizard.
pub const INSTALL_LOCK: &str = concat!(run_root!(), "/install.lock");
/// The link the kernel runs for module requests (to the `rayos` binary).
pub const MODPROBE: &str = concat!(run_root!(), "/modprobe");
/// The kernel modules the boot's coldplug could not load, one
/// `name: error` a line (PID 1 writes it; rayosd reads why KVM is missing).
pub const MODULES_REFUSED: &str = concat!(run_root!(), "/modules-refused");

/// The installer medium, mounted by init in installer mode.
pub const MEDIUM: &str = concat!(run_root!(), "/medium");
/// An answer file for an unattended install, copied off the medium.
pub const ANSWERS: &str = concat!(run_root!(), "/answers.toml");
/// Answers the `rayos>` console's `install` gathered interactively.
pub const INTERACTIVE_ANSWERS: &str = concat!(run_root!(), "/interactive-answers.toml");
/// Scratch mount point for looking at a filesystem (answer-file search).
pub const PROBE: &str = concat!(run_root!(), "/probe");

/// The system partition, mounted by init to bless a boot or check entries.
pub const SYSTEM: &str = concat!(run_root!(), "/system");
/// The system partition, mounted by the recovery menu.
pub const SYSTEM_RECOVERY: &str = concat!(run_root!(), "/system-recovery");
/// The system partition, mounted by `rayos update`.
pub const SYSTEM_UPDATE: &str = concat!(run_root!(), "/system-update");
/// A medium holding an update bundle, mounted by `rayos update`.
pub const BUNDLE_SOURCE: &str = concat!(run_root!(), "/bundle-source");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_runtime_path_is_under_the_run_root() {
        for p in [
            API_SOCKET,
            INIT_STATUS,
            RUN_LOGS,
            INSTALL_LOCK,
            MODPROBE,
            MEDIUM,
            ANSWERS,
            INTERACTIVE_ANSWERS,
            PROBE,
            SYSTEM,
            SYSTEM_RECOVERY,
            SYSTEM_UPDATE,
            BUNDLE_SOURCE,
        ] {
            let rest = p.strip_prefix(RUN).and_then(|r| r.strip_prefix('/'));
            assert!(
                rest.is_some_and(|r| !r.is_empty() && !r.contains('/')),
                "{p}"
            );
        }
        assert_eq!(API_SOCKET, "/run/rayos/api.sock");
    }
}
