//! A [`Platform`] for unit tests: files under a temporary directory,
//! volumes as directories that appear where they are mounted, a clock that
//! moves only when a step sleeps, services that exit when signalled unless
//! told to be stubborn, and a record of every call in order, so a test
//! asserts what a step did and in which order.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use rayos_base::marker::Marker;
use rayos_base::paths;
use rustix::mount::MountFlags;

use super::platform::{Coldplug, CountdownEnd, Mount, Platform, PowerRequest, Unmount};
use crate::control::ServiceStatus;
use crate::service::Spec;
use crate::sys::{Exited, PowerAction, SysError};
use crate::usb::UsbSnapshot;

/// A fresh state as `main` makes it.
pub fn state() -> super::State {
    super::State::new(PathBuf::from("/usr/bin/rayos"))
}

/// What a step asked of the platform, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// A mount.
    Mount {
        /// What was mounted.
        source: String,
        /// Where.
        target: PathBuf,
        /// The filesystem type.
        fstype: String,
        /// Whether read-only.
        read_only: bool,
        /// Filesystem options.
        data: String,
    },
    /// One unmount attempt (busy or not).
    Unmount(PathBuf),
    /// A read-only remount.
    RemountReadOnly(PathBuf),
    /// A lazy unmount.
    Detach(PathBuf),
    /// A sync.
    Sync,
    /// A program run to its end, with its arguments.
    Run(PathBuf, Vec<String>),
    /// A program started with its output relayed, with its arguments.
    Spawn(PathBuf, Vec<String>),
    /// A service started, by name.
    Start(String),
    /// A service signalled: its name and the signal.
    Signal(String, i32),
    /// A kill(2): pid and signal.
    Kill(i32, i32),
    /// The log files closed.
    CloseLogs,
    /// A countdown: its seconds and the target shown.
    Countdown(u32, String),
    /// The machine powered off or rebooted.
    Power(PowerAction),
    /// A network link set up, by name.
    LinkUp(String),
    /// Coldplug: the fixed list, and the modules asked to load last.
    Coldplug {
        /// Loaded whatever the devices.
        always: Vec<String>,
        /// Held to the end, probing in the background.
        late: Vec<String>,
    },
    /// Modules loaded in the background from now on.
    LoadLater(Vec<String>),
    /// A keymap of this many entries loaded.
    Keymap(usize),
}

#[derive(Debug)]
struct Service {
    pid: i32,
    running: bool,
}

/// The fake machine: what it holds, what it answers and what was asked of it.
pub struct Fake {
    /// The machine's `/`: every path a step uses is below it.
    pub root: tempfile::TempDir,
    start: Instant,
    elapsed: Duration,
    /// Every call, in order.
    pub calls: Vec<Call>,
    /// Every marker printed, in order.
    pub markers: Vec<Marker>,
    /// What `list_disks` returns.
    pub disks: Vec<rayos_disk::report::Disk>,
    /// Disks that join [`Fake::disks`] once this much time has passed
    /// (drivers still probing).
    pub arriving: Vec<(Duration, rayos_disk::report::Disk)>,
    /// Disks attached by USB.
    pub usb: BTreeSet<PathBuf>,
    /// What each device holds, mounted or not.
    pub volumes: BTreeMap<String, PathBuf>,
    /// Mounted now: target → device.
    mounted: Vec<(PathBuf, String)>,
    /// Devices whose mount fails.
    pub mount_fails: BTreeSet<String>,
    /// Unmount attempts that find the target busy, per target.
    pub busy: BTreeMap<PathBuf, u32>,
    /// What `run` returns, by the program's file name: (status, stdout).
    pub runs: BTreeMap<String, (i32, String)>,
    /// What `run` returns when its last argument is this (a device), before
    /// [`Fake::runs`].
    pub runs_on: BTreeMap<String, (i32, String)>,
    services: BTreeMap<String, Service>,
    /// Services that ignore SIGTERM (only SIGKILL ends them).
    pub stubborn: BTreeSet<String>,
    exits: Vec<Exited>,
    next_pid: i32,
    /// What `health` returns.
    pub health: Result<rayos_api::Health, String>,
    /// What `vms` returns.
    pub vm_list: Vec<rayos_api::VmInfo>,
    /// Where a test sends VM start events (set once a step follows them).
    pub vm_started: Option<Sender<String>>,
    /// Booted through UEFI.
    pub uefi: bool,
    /// The running UKI's file name the loader's variables give.
    pub running_uki: Option<String>,
    /// The ESP the loader ran from (`LoaderDevicePartUUID`).
    pub loader_esp: Option<uuid::Uuid>,
    /// How a countdown ends.
    pub countdown_end: CountdownEnd,
    /// The host name set, if one was.
    pub hostname: Option<String>,
}

impl Fake {
    /// A machine past the `kernel-fs` step (`/run/rayos` exists).
    pub fn new() -> Fake {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(root.path().join(paths::RUN.trim_start_matches('/'))).unwrap();
        Fake {
            root,
            start: Instant::now(),
            elapsed: Duration::ZERO,
            calls: Vec::new(),
            markers: Vec::new(),
            disks: Vec::new(),
            usb: BTreeSet::new(),
            volumes: BTreeMap::new(),
            mounted: Vec::new(),
            mount_fails: BTreeSet::new(),
            busy: BTreeMap::new(),
            runs: BTreeMap::new(),
            runs_on: BTreeMap::new(),
            services: BTreeMap::new(),
            stubborn: BTreeSet::new(),
            exits: Vec::new(),
            next_pid: 100,
            health: Err("connection refused".into()),
            vm_list: Vec::new(),
            vm_started: None,
            uefi: false,
            running_uki: None,
            loader_esp: None,
            arriving: Vec::new(),
            countdown_end: CountdownEnd::Expired,
            hostname: None,
        }
    }

    /// A volume on `device` holding `files` (path, content), in its own
    /// directory until mounted.
    pub fn volume(&mut self, device: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self
            .root
            .path()
            .join("volumes")
            .join(device.trim_start_matches('/').replace('/', "_"));
        std::fs::create_dir_all(&dir).unwrap();
        for (rel, text) in files {
            let f = dir.join(rel.trim_start_matches('/'));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, text).unwrap();
        }
        self.volumes.insert(device.to_string(), dir.clone());
        dir
    }

    /// A disk as the enumeration reports it: a FAT filesystem on the whole
    /// disk when `fat` names its label.
    pub fn disk(&mut self, path: &str, removable: bool, fat: Option<&str>) {
        let mut blank = std::io::Cursor::new(vec![0u8; 1 << 20]);
        let mut d = rayos_disk::enumerate::build_report(&mut blank, Path::new(path), 512).unwrap();
        d.removable = removable;
        d.whole_disk_filesystem = fat.map(|label| rayos_disk::FsInfo {
            filesystem: rayos_disk::Filesystem::Fat32,
            label: Some(label.into()),
            uuid: None,
        });
        self.disks.push(d);
    }

    /// A GPT disk with partitions (type, label, device node) as the
    /// enumeration reports them.
    pub fn partitioned_disk(&mut self, path: &str, parts: &[(uuid::Uuid, &str, &str)]) {
        self.disk(path, false, None);
        let d = self.disks.last_mut().expect("just added");
        for (i, (ty, label, dev)) in parts.iter().enumerate() {
            d.partitions.push(rayos_disk::report::PartitionReport {
                number: i as u32 + 1,
                first_lba: 2048,
                last_lba: 4095,
                start_bytes: 1 << 20,
                size_bytes: 1 << 20,
                type_guid: Some(*ty),
                mbr_type: None,
                type_name: String::new(),
                family: rayos_disk::types::TypeFamily::Other,
                unique_guid: None,
                name: label.to_string(),
                attributes: 0,
                filesystem: None,
                fs_label: Some(label.to_string()),
                fs_uuid: None,
                device: Some(dev.into()),
                in_use: Vec::new(),
            });
        }
    }

    /// Whether something is mounted at `target` now.
    pub fn is_mounted_now(&self, target: &str) -> bool {
        self.mounted.iter().any(|(t, _)| t == Path::new(target))
    }

    /// The calls matching `f`, in order.
    pub fn calls_where(&self, f: impl Fn(&Call) -> bool) -> Vec<Call> {
        self.calls.iter().filter(|c| f(c)).cloned().collect()
    }

    /// How far the fake clock has moved.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    fn exit(&mut self, pid: i32, code: i32) {
        if !self.exits.iter().any(|e| e.pid == pid) {
            self.exits.push(Exited { pid, code });
        }
    }
}

impl Default for Fake {
    fn default() -> Self {
        Fake::new()
    }
}

fn status(code: i32) -> ExitStatus {
    ExitStatus::from_raw(code << 8)
}

impl Platform for Fake {
    fn now(&self) -> Instant {
        self.start + self.elapsed
    }

    fn sleep(&mut self, d: Duration) {
        self.elapsed += d;
    }

    fn path(&self, p: &Path) -> PathBuf {
        let mounted = self
            .mounted
            .iter()
            .filter(|(t, _)| p.starts_with(t))
            .max_by_key(|(t, _)| t.as_os_str().len());
        if let Some((t, dev)) = mounted
            && let Some(dir) = self.volumes.get(dev)
        {
            return dir.join(p.strip_prefix(t).unwrap_or(p));
        }
        self.root.path().join(p.strip_prefix("/").unwrap_or(p))
    }

    fn marker(&mut self, m: &Marker) {
        self.markers.push(m.clone());
    }

    fn attach_console(&mut self) {}

    fn attach_log_file(&mut self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(self.path(dir))
    }

    fn start_kernel_log(&mut self, _dir: &Path, _boot_id: &str) {}

    fn close_logs(&mut self) {
        self.calls.push(Call::CloseLogs);
    }

    fn show_on_terminals(&mut self, _ttys: &[PathBuf], _text: &str) {}

    fn countdown(&mut self, secs: u32, target: &str, _ttys: &[PathBuf]) -> CountdownEnd {
        self.calls.push(Call::Countdown(secs, target.to_string()));
        self.countdown_end.clone()
    }

    fn is_mounted(&self, target: &Path) -> bool {
        self.mounted.iter().any(|(t, _)| t == target)
    }

    fn mount(&mut self, m: Mount<'_>) -> Result<(), SysError> {
        self.calls.push(Call::Mount {
            source: m.source.to_string(),
            target: m.target.to_path_buf(),
            fstype: m.fstype.to_string(),
            read_only: m.flags.contains(MountFlags::RDONLY),
            data: m.data.to_string(),
        });
        // Only the volumes a test made exist.
        if self.mount_fails.contains(m.source) || !self.volumes.contains_key(m.source) {
            return Err(SysError::Mount {
                fstype: m.fstype.to_string(),
                source_dev: m.source.to_string(),
                target: m.target.display().to_string(),
                source: io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        self.mounted
            .push((m.target.to_path_buf(), m.source.to_string()));
        Ok(())
    }

    fn unmount(&mut self, target: &Path) -> Result<(), Unmount> {
        self.calls.push(Call::Unmount(target.to_path_buf()));
        let err = |errno, busy| Unmount {
            busy,
            error: SysError::Unmount {
                target: target.display().to_string(),
                source: io::Error::from_raw_os_error(errno),
            },
        };
        if !self.is_mounted(target) {
            return Err(err(libc::EINVAL, false));
        }
        if let Some(n) = self.busy.get_mut(target)
            && *n > 0
        {
            *n -= 1;
            return Err(err(libc::EBUSY, true));
        }
        self.mounted.retain(|(t, _)| t != target);
        Ok(())
    }

    fn remount_read_only(&mut self, target: &Path) -> Result<(), SysError> {
        self.calls.push(Call::RemountReadOnly(target.to_path_buf()));
        Ok(())
    }

    fn detach(&mut self, target: &Path) -> Result<(), SysError> {
        self.calls.push(Call::Detach(target.to_path_buf()));
        self.mounted.retain(|(t, _)| t != target);
        Ok(())
    }

    fn sync(&mut self) {
        self.calls.push(Call::Sync);
    }

    fn ctrl_alt_del_to_signal(&mut self) {}

    fn coldplug(
        &mut self,
        always: &[&str],
        late: &[&str],
        _debug: bool,
    ) -> Result<Coldplug, String> {
        let names = |l: &[&str]| l.iter().map(|m| m.to_string()).collect();
        self.calls.push(Call::Coldplug {
            always: names(always),
            late: names(late),
        });
        Err("no modules in a unit test".into())
    }

    fn load_later(&mut self, names: &[&str]) {
        self.calls.push(Call::LoadLater(
            names.iter().map(|m| m.to_string()).collect(),
        ));
    }

    fn set_hostname(&mut self, name: &str) -> io::Result<()> {
        self.hostname = Some(name.to_string());
        Ok(())
    }

    fn load_keymap(&mut self, entries: &[crate::keymap::Entry]) -> Result<(), String> {
        self.calls.push(Call::Keymap(entries.len()));
        Ok(())
    }

    fn link_up(&mut self, name: &str) -> Result<(), String> {
        self.calls.push(Call::LinkUp(name.to_string()));
        Ok(())
    }

    fn set_timezone(&mut self, _tz: &str) {}

    fn power(&mut self, action: PowerAction) -> io::Error {
        self.calls.push(Call::Power(action));
        io::Error::other("a unit test does not power off")
    }

    fn list_disks(&mut self) -> Result<Vec<rayos_disk::report::Disk>, String> {
        let now = self.elapsed;
        let (come, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.arriving)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.arriving = wait;
        self.disks.extend(come.into_iter().map(|(_, d)| d));
        Ok(self.disks.clone())
    }

    fn on_usb(&self, disk: &Path) -> bool {
        self.usb.contains(disk)
    }

    fn block_names(&self) -> BTreeSet<String> {
        self.disks
            .iter()
            .filter_map(|d| crate::usb::kernel_name(&d.path))
            .collect()
    }

    fn usb_snapshot(&self) -> UsbSnapshot {
        // No USB controllers: nothing to wait for.
        UsbSnapshot::default()
    }

    fn uefi(&self) -> bool {
        self.uefi
    }

    fn running_uki(&self) -> Option<String> {
        self.running_uki.clone()
    }

    fn loader_esp(&self) -> Option<uuid::Uuid> {
        self.loader_esp
    }

    fn run(&mut self, program: &Path, args: &[String]) -> io::Result<Output> {
        self.calls
            .push(Call::Run(program.to_path_buf(), args.to_vec()));
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (code, stdout) = args
            .last()
            .and_then(|a| self.runs_on.get(a))
            .or_else(|| self.runs.get(&name))
            .cloned()
            .unwrap_or_default();
        Ok(Output {
            status: status(code),
            stdout: stdout.into_bytes(),
            stderr: Vec::new(),
        })
    }

    fn spawn_relayed(&mut self, program: &Path, args: &[String]) -> io::Result<i32> {
        self.calls
            .push(Call::Spawn(program.to_path_buf(), args.to_vec()));
        self.next_pid += 1;
        Ok(self.next_pid)
    }

    fn start_service(&mut self, spec: Spec) {
        self.calls.push(Call::Start(spec.name.clone()));
        self.next_pid += 1;
        self.services.insert(
            spec.name,
            Service {
                pid: self.next_pid,
                running: true,
            },
        );
    }

    fn service_pid(&self, name: &str) -> Option<i32> {
        self.services.get(name).filter(|s| s.running).map(|s| s.pid)
    }

    fn service_names(&self) -> Vec<String> {
        self.services.keys().cloned().collect()
    }

    fn signal_service(&mut self, name: &str, sig: i32) -> Option<i32> {
        let pid = self.service_pid(name)?;
        self.calls.push(Call::Signal(name.to_string(), sig));
        if sig == libc::SIGKILL || !self.stubborn.contains(name) {
            self.exit(pid, 128 + sig);
        }
        Some(pid)
    }

    fn remove_service(&mut self, name: &str) {
        self.services.retain(|n, s| n != name || s.running);
    }

    fn service_exited(&mut self, pid: i32, _code: i32) -> bool {
        match self.services.values_mut().find(|s| s.pid == pid) {
            Some(s) => {
                s.running = false;
                true
            }
            None => false,
        }
    }

    fn services_tick(&mut self) {}

    fn services_status(&self) -> Vec<ServiceStatus> {
        Vec::new()
    }

    fn kill(&mut self, pid: i32, sig: i32) -> bool {
        if sig == 0 {
            return self.services.values().any(|s| s.pid == pid && s.running)
                && !self.exits.iter().any(|e| e.pid == pid);
        }
        self.calls.push(Call::Kill(pid, sig));
        let stubborn = self
            .services
            .iter()
            .any(|(n, s)| s.pid == pid && self.stubborn.contains(n));
        if pid > 0 && (sig == libc::SIGKILL || !stubborn) {
            self.exit(pid, 128 + sig);
        }
        true
    }

    fn reap(&mut self) -> Vec<Exited> {
        std::mem::take(&mut self.exits)
    }

    fn has_children(&mut self) -> bool {
        false
    }

    fn session_members(&self, _sid: i32) -> Vec<i32> {
        Vec::new()
    }

    fn pause(&mut self, d: Duration) {
        self.elapsed += d;
    }

    fn wait_power_request(&mut self, d: Duration) -> Option<PowerRequest> {
        self.elapsed += d;
        None
    }

    fn health(&mut self) -> Result<rayos_api::Health, String> {
        self.health.clone()
    }

    fn vms(&mut self) -> Result<Vec<rayos_api::VmInfo>, String> {
        Ok(self.vm_list.clone())
    }

    fn follow_vm_starts(&mut self) -> Receiver<String> {
        let (tx, rx) = mpsc::channel();
        self.vm_started = Some(tx);
        rx
    }
}
