//! What the boot steps need from the machine, as one trait: the boot and
//! shutdown steps call only this (and plain file access through
//! [`Platform::path`]), so each step runs in a unit test against the fake
//! (`fake.rs`, test builds only) the way the supervisor's logic runs
//! against its fake `Vmm`. [`super::real::Real`] is the machine: system calls through
//! `crate::sys`, disks through `rayos-disk`, EFI variables through
//! efivarfs, children through [`crate::service::Services`].
//!
//! Limits: the trait is as wide as what PID 1 touches (about forty calls in
//! groups); what a step does with the answers is the step's, so the fake
//! only answers and records, it decides nothing.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use rayos_base::marker::Marker;
use rustix::mount::MountFlags;

use crate::control::ServiceStatus;
use crate::service::Spec;
use crate::sys::{Exited, PowerAction, SysError};
use crate::usb::UsbSnapshot;

/// A power-off or reboot someone asked for (signal, power button, the end
/// of an unattended install).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerRequest {
    /// Power off or reboot.
    pub action: PowerAction,
    /// Who asked, for the log (`power button`, `install finished`).
    pub reason: String,
}

/// How an unattended install's countdown ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CountdownEnd {
    /// The countdown ran out: install.
    Expired,
    /// A key on this terminal.
    Cancelled(PathBuf),
    /// A power request came in meanwhile.
    Power(PowerRequest),
}

/// What loading the kernel modules did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coldplug {
    /// How many modules were loaded.
    pub loaded: usize,
    /// Matched but not applicable to this machine.
    pub refused: usize,
    /// The kernel release the modules are for.
    pub release: String,
    /// Modules loaded last, still probing their devices when the step ends.
    pub late: Vec<String>,
}

/// One mount request.
#[derive(Debug, Clone, Copy)]
pub struct Mount<'a> {
    /// What to mount (a device, or `proc`, `tmpfs`, …).
    pub source: &'a str,
    /// Where.
    pub target: &'a Path,
    /// The filesystem type.
    pub fstype: &'a str,
    /// Mount flags.
    pub flags: MountFlags,
    /// Filesystem options (`mode=0755`, …).
    pub data: &'a str,
}

impl<'a> Mount<'a> {
    /// FAT or ISO 9660 read-only, nothing executable (answer files, the
    /// installer medium).
    pub fn read_only(source: &'a str, target: &'a Path, fstype: &'a str) -> Mount<'a> {
        Mount {
            source,
            target,
            fstype,
            flags: MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            data: "",
        }
    }

    /// A FAT boot partition read-write (blessing, rollback detection).
    pub fn boot_partition(source: &'a str, target: &'a Path) -> Mount<'a> {
        Mount {
            source,
            target,
            fstype: "vfat",
            flags: MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            data: "",
        }
    }
}

/// What boot and shutdown steps do to the machine: the real one
/// ([`super::real::Real`]) or a fake for unit tests.
pub trait Platform {
    // ---- time and files --------------------------------------------

    /// The current time.
    fn now(&self) -> Instant;
    /// Waits `d`.
    fn sleep(&mut self, d: Duration);
    /// Where the running system's `p` is (the fake keeps everything under a
    /// temporary directory, mounted volumes at their own directories).
    fn path(&self, p: &Path) -> PathBuf;
    /// [`Platform::path`] of a path given as text.
    fn at(&self, p: &str) -> PathBuf {
        self.path(Path::new(p))
    }

    // ---- console -----------------------------------------------------

    /// Prints a marker on the consoles (and logs it).
    fn marker(&mut self, m: &Marker);
    /// `/dev/console` and `/dev/kmsg` exist now: log to them.
    fn attach_console(&mut self);
    /// `init.log` in `dir` (the lines logged so far first).
    fn attach_log_file(&mut self, dir: &Path) -> io::Result<()>;
    /// Copies `/dev/kmsg` to `dir/kernel.log` from now on.
    fn start_kernel_log(&mut self, dir: &Path, boot_id: &str);
    /// Closes `init.log` and `kernel.log` (before unmounting their volume).
    fn close_logs(&mut self);
    /// Writes `text` to each terminal.
    fn show_on_terminals(&mut self, ttys: &[PathBuf], text: &str);
    /// Counts `secs` down on `ttys`; any key cancels (docs/init.md).
    fn countdown(&mut self, secs: u32, target: &str, ttys: &[PathBuf]) -> CountdownEnd;

    // ---- kernel ------------------------------------------------------

    /// Whether something is mounted at `target`.
    fn is_mounted(&self, target: &Path) -> bool;
    /// Mounts as `m` says.
    fn mount(&mut self, m: Mount<'_>) -> Result<(), SysError>;
    /// Unmounts `target`; `Err` with `busy` true while files are open on it.
    fn unmount(&mut self, target: &Path) -> Result<(), Unmount>;
    /// Remounts `target` read-only.
    fn remount_read_only(&mut self, target: &Path) -> Result<(), SysError>;
    /// Unmounts `target` lazily (after a read-only remount).
    fn detach(&mut self, target: &Path) -> Result<(), SysError>;
    /// Flushes every filesystem's writes (`sync(2)`).
    fn sync(&mut self);
    /// Ctrl-Alt-Del sends SIGINT to PID 1 instead of resetting.
    fn ctrl_alt_del_to_signal(&mut self);
    /// Loads `always` and every module a device asks for; those of `late`
    /// last, probing their devices in the background
    /// ([`crate::modules::Loader::hold`]).
    fn coldplug(&mut self, always: &[&str], late: &[&str], debug: bool)
    -> Result<Coldplug, String>;
    /// Loads `names` (and their dependencies) on a thread of its own and
    /// logs what it did; returns at once.
    fn load_later(&mut self, names: &[&str]);
    /// Sets the kernel's host name.
    fn set_hostname(&mut self, name: &str) -> io::Result<()>;
    /// Loads a console keymap (docs/init.md `keyboard`).
    fn load_keymap(&mut self, entries: &[crate::keymap::Entry]) -> Result<(), String>;
    /// Sets the network link `name` up (`lo` at boot).
    fn link_up(&mut self, name: &str) -> Result<(), String>;
    /// `TZ` for the children started from now on.
    fn set_timezone(&mut self, tz: &str);
    /// Powers off or reboots; returns only on failure.
    fn power(&mut self, action: PowerAction) -> io::Error;

    // ---- disks and EFI variables ---------------------------------------

    /// Every disk of the machine, with what it holds.
    fn list_disks(&mut self) -> Result<Vec<rayos_disk::report::Disk>, String>;
    /// Whether disk `/dev/sdX` hangs off USB (counted as removable).
    fn on_usb(&self, disk: &Path) -> bool;
    /// The kernel's block device names (`/sys/block`).
    fn block_names(&self) -> BTreeSet<String>;
    /// The USB devices present now (to notice a stick being plugged in).
    fn usb_snapshot(&self) -> UsbSnapshot;
    /// Booted through UEFI (`/sys/firmware/efi`).
    fn uefi(&self) -> bool;
    /// The running UKI's file name, as the loader's variables say.
    fn running_uki(&self) -> Option<String>;
    /// `LoaderDevicePartUUID`: the ESP the loader ran from.
    fn loader_esp(&self) -> Option<uuid::Uuid>;

    // ---- processes -----------------------------------------------------

    /// Runs `program args` to the end, stdin from /dev/null.
    fn run(&mut self, program: &Path, args: &[String]) -> io::Result<Output>;
    /// Starts `program args` with its output relayed line by line to the
    /// log (markers as markers); returns its pid.
    fn spawn_relayed(&mut self, program: &Path, args: &[String]) -> io::Result<i32>;
    /// Starts a supervised service (restarted with a backoff when it exits).
    fn start_service(&mut self, spec: Spec);
    /// The pid of service `name`, while it runs.
    fn service_pid(&self, name: &str) -> Option<i32>;
    /// The names of the services.
    fn service_names(&self) -> Vec<String>;
    /// Signals a service and stops restarting it; its pid if it ran.
    fn signal_service(&mut self, name: &str, sig: i32) -> Option<i32>;
    /// Forgets service `name` (it is not restarted).
    fn remove_service(&mut self, name: &str);
    /// Tells the services a pid exited; true if it was one of theirs.
    fn service_exited(&mut self, pid: i32, code: i32) -> bool;
    /// Restarts services whose backoff passed.
    fn services_tick(&mut self);
    /// Each service's state, for `rayos status`.
    fn services_status(&self) -> Vec<ServiceStatus>;
    /// `kill(2)`; `pid` -1 is every process but PID 1. True if sent.
    fn kill(&mut self, pid: i32, sig: i32) -> bool;
    /// Every exited child, without blocking.
    fn reap(&mut self) -> Vec<Exited>;
    /// Whether any child is left to wait for.
    fn has_children(&mut self) -> bool;
    /// The processes of session `sid`.
    fn session_members(&self, sid: i32) -> Vec<i32>;
    /// Waits up to `d` for a child to exit (signals that arrive meanwhile
    /// are dropped: used only inside bounded waits).
    fn pause(&mut self, d: Duration);
    /// Waits up to `d` for a power request (signal or power button).
    fn wait_power_request(&mut self, d: Duration) -> Option<PowerRequest>;

    // ---- rayosd's API ------------------------------------------------

    /// rayosd's health, through its API.
    fn health(&mut self) -> Result<rayos_api::Health, String>;
    /// rayosd's VMs, through its API.
    fn vms(&mut self) -> Result<Vec<rayos_api::VmInfo>, String>;
    /// Names of the VMs rayosd reports started, from its event stream,
    /// until the receiver is dropped.
    fn follow_vm_starts(&mut self) -> Receiver<String>;
}

/// Why an unmount did not work.
#[derive(Debug)]
pub struct Unmount {
    /// Whether the filesystem was busy (files open on it).
    pub busy: bool,
    /// The error.
    pub error: SysError,
}

/// Unmounts `at`; when it is busy, remounts it read-only (no more writes
/// reach the disk) and detaches it. For volumes mounted for a short job;
/// the shutdown retries first instead.
pub fn release(p: &mut dyn Platform, at: &Path) -> Result<(), SysError> {
    match p.unmount(at) {
        Ok(()) => Ok(()),
        Err(e) if e.busy => {
            let _ = p.remount_read_only(at);
            p.detach(at)
        }
        Err(e) => Err(e.error),
    }
}
