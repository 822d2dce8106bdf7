//! PID 1: the boot sequence as data, the supervision loop, the shutdown.
//!
//! Boot = [`COMMON`] steps, then the steps of the mode read from the kernel
//! command line ([`INSTALLED`], [`RECOVERY`], [`INSTALLER`]). Each step
//! is logged to the console and `/dev/kmsg` with a `RAYOS_BOOT:<step>` marker
//! and recorded (result, message, duration) in the status file and the boot
//! record. A step's failure is either fatal (only mounting the kernel
//! filesystems: nothing works without them) or degrades the boot: the fault
//! is shown on the console with what to do, and everything that does not
//! depend on it still comes up — the admin console always does.
//!
//! After the steps, [`Init::run_loop`] waits on a signalfd, the power-button
//! input devices and a 500 ms tick: it reaps every child (PID 1 adopts
//! orphans), restarts services with backoff, polls rayosd's health until
//! `RAYOS_READY` (then blesses the boot), watches for the Linux VM
//! (`RAYOS_LINUX_VM_READY`) and turns power requests into [`Init::shutdown`].
//!
//! Shutdown order: SIGTERM to rayosd (it saves the VMs) and wait up to
//! [`RAYOSD_STOP_DEADLINE`]; SIGTERM to the other services, then to every
//! remaining process, SIGKILL after a grace period; boot record; sync;
//! unmount the data volume; reboot(2). A panic or a fatal error writes a
//! crash report to the data volume when it is mounted, syncs and reboots
//! after [`FATAL_REBOOT_DELAY`] — never a hung machine.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayos_base::error::chain;
use rayos_base::marker::{self, InstallFailure, InstallerMarker, Marker, Power};
use rayos_base::{efivar, paths};
use rustix::mount::MountFlags;

use crate::bless::{self, BlessOutcome};
use crate::cmdline::{BootParams, Mode};
use crate::control::{self, InitStatus, StepRecord};
use crate::log;
use crate::modules::{self, ModuleIndex};
use crate::service::{Output, Services, Spec};
use crate::sys::{self, PowerAction, SignalFd};
use crate::unattended::{self, Countdown, Keys};
use crate::usb::{self, Settle, UsbSnapshot, Verdict};
use crate::volumes::{self, Install};

pub const RAYOSD_STOP_DEADLINE: Duration = Duration::from_secs(120);
pub const FATAL_REBOOT_DELAY: Duration = Duration::from_secs(10);
/// How long to wait for storage to appear (USB and NVMe probe async).
const DISK_WAIT: Duration = Duration::from_secs(15);
/// Modules wanted whether or not a device asks for them (filesystems,
/// input handlers: these have no modalias).
const ALWAYS_MODULES: &[&str] = &[
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_utf8",
    "isofs",
    "efivarfs",
    "evdev",
    "button",
    "sd_mod",
    "sr_mod",
    "uinput",
    "loop",
    "tun",
    "kvm_intel",
    "kvm_amd",
    "vhost_net",
    "virtio_blk",
    "virtio_scsi",
    "virtio_pci",
    "virtio_net",
    "virtio_input",
    "usb_storage",
    "uas",
    "xhci_pci",
    "ehci_pci",
    "ahci",
    "nvme",
];

type StepFn = fn(&mut Init) -> StepResult;

/// What a step reports.
pub enum StepResult {
    Ok(String),
    /// Worked, with something to tell.
    Warn(String),
    /// Did not work; the boot degrades (or stops, for a fatal step).
    Fail(String),
    /// Not needed on this machine.
    Skip(String),
}

pub struct Step {
    pub name: &'static str,
    pub run: StepFn,
    pub fatal: bool,
}

const fn step(name: &'static str, run: StepFn) -> Step {
    Step {
        name,
        run,
        fatal: false,
    }
}

pub const COMMON: &[Step] = &[
    Step {
        name: "kernel-fs",
        run: Init::step_kernel_fs,
        fatal: true,
    },
    step("cmdline", Init::step_cmdline),
    step("modules", Init::step_modules),
    step("efivarfs", Init::step_efivarfs),
];

pub const INSTALLED: &[Step] = &[
    step("find-data", Init::step_find_data),
    step("check-data", Init::step_check_data),
    step("mount-data", Init::step_mount_data),
    step("data-schema", Init::step_data_schema),
    step("logs", Init::step_logs),
    step("rollback-check", Init::step_rollback_check),
    step("machine", Init::step_machine),
    step("policy", Init::step_policy),
    step("rayosd", Init::step_rayosd),
    step("consoles", Init::step_consoles),
    step("presenter", Init::step_presenter),
];

pub const RECOVERY: &[Step] = &[
    step("find-data", Init::step_find_data),
    step("check-data", Init::step_check_data),
    step("mount-data", Init::step_mount_data),
    step("data-schema", Init::step_data_schema),
    step("logs", Init::step_logs),
    step("machine", Init::step_machine),
    step("policy", Init::step_policy),
    step("consoles", Init::step_consoles),
];

pub const INSTALLER: &[Step] = &[
    step("find-medium", Init::step_find_medium),
    step("find-answers", Init::step_find_answers),
    step("install", Init::step_install),
];

/// Disks seen by the installer, to notice a stick plugged in later.
#[derive(Debug, Default)]
struct AnswerWatch {
    /// `/sys/block` names already looked at (or present at `find-answers`).
    known: BTreeSet<String>,
    /// New ones waiting for USB to settle before they are searched.
    fresh: BTreeSet<String>,
    settle: Option<Settle>,
    last_scan: Option<Instant>,
}

/// How an unattended install's countdown ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CountdownEnd {
    Expired,
    /// A key on this terminal.
    Cancelled(PathBuf),
}

/// How often the installer looks for disks that appeared.
const WATCH_EVERY: Duration = Duration::from_secs(1);

pub struct Init {
    exe: PathBuf,
    params: BootParams,
    status: InitStatus,
    install: Option<Install>,
    /// The running UKI's file name, as the loader's EFI variables say.
    image: Option<String>,
    /// The data volume's schema was migrated this boot: the old generation
    /// is dropped once the boot is blessed.
    schema_migrated: bool,
    /// The data volume is mounted read-write and passed its check.
    data_ok: bool,
    logs_dir: PathBuf,
    /// `kernel.log`, written by the kmsg collector thread; taken (closed)
    /// before the data volume is unmounted, or the open file would keep it
    /// busy and the power-off would leave its journal dirty.
    kernel_log: Arc<Mutex<Option<crate::log::RotatingLog>>>,
    services: Services,
    /// Names of VMs rayosd reports started, from its event stream
    /// (followed once rayosd is healthy, until the Linux VM runs).
    vm_starts: Option<Receiver<String>>,
    sigfd: SignalFd,
    buttons: Vec<File>,
    buttons_scanned: Option<Instant>,
    index: Option<ModuleIndex>,
    // installer mode
    medium_disk: Option<PathBuf>,
    uki: Option<PathBuf>,
    answers: Option<PathBuf>,
    /// The volume the answer file came from (`/dev/sda`), for messages.
    answers_source: Option<String>,
    installer_pid: Option<i32>,
    /// Installer mode: disks that appear after `find-answers` are looked at
    /// for an answer file while no install runs.
    watch: Option<AnswerWatch>,
    // milestones
    rayosd_started: Option<Instant>,
    last_health_try: Option<Instant>,
    last_vm_poll: Option<Instant>,
    health_warned: bool,
    status_dirty: bool,
}

/// The kernel log's lock; a panicked writer leaves a usable log behind.
fn lock_log(
    l: &Mutex<Option<crate::log::RotatingLog>>,
) -> std::sync::MutexGuard<'_, Option<crate::log::RotatingLog>> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

/// Entry point when running as PID 1. Never returns.
pub fn main() -> ! {
    std::panic::set_hook(Box::new(|info| {
        let msg = format!("init panicked: {info}");
        fatal_exit(&msg, None);
    }));
    unsafe_env_defaults();
    let sigfd = match SignalFd::new() {
        Ok(s) => s,
        Err(e) => fatal_exit(&format!("{e}"), None),
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/rayos"));
    let mut init = Init {
        exe,
        params: BootParams::parse(""),
        status: InitStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            boot_id: String::new(),
            mode: Mode::Installed,
            phase: "booting".into(),
            started_unix: log::unix_time(),
            steps: Vec::new(),
            faults: Vec::new(),
            data_device: None,
            data_mounted: None,
            data_read_only: false,
            services: Vec::new(),
            ready: false,
            linux_vm_ready: false,
            blessed: None,
        },
        install: None,
        image: None,
        schema_migrated: false,
        data_ok: false,
        logs_dir: PathBuf::from(paths::RUN_LOGS),
        kernel_log: Arc::new(Mutex::new(None)),
        services: Services::new(),
        vm_starts: None,
        sigfd,
        buttons: Vec::new(),
        buttons_scanned: None,
        index: None,
        medium_disk: None,
        uki: None,
        answers: None,
        answers_source: None,
        installer_pid: None,
        watch: None,
        rayosd_started: None,
        last_health_try: None,
        last_vm_poll: None,
        health_warned: false,
        status_dirty: true,
    };
    init.boot();
    init.run_loop()
}

fn unsafe_env_defaults() {
    // SAFETY (of set_var): called before any thread exists in this process.
    unsafe {
        std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        std::env::set_var("HOME", "/root");
        if std::env::var_os("TERM").is_none() {
            std::env::set_var("TERM", "linux");
        }
    }
}

/// Logs, records a crash report when possible, syncs, reboots.
pub fn fatal_exit(reason: &str, data_mounted: Option<&Path>) -> ! {
    log::error(format!("FATAL: {reason}"));
    log::marker(&Marker::Fatal(
        reason.lines().next().unwrap_or("").to_string(),
    ));
    let dir = data_mounted.map(|d| d.join("crash")).or_else(|| {
        sys::is_mounted(Path::new(paths::DATA)).then(|| Path::new(paths::DATA).join("crash"))
    });
    if let Some(dir) = dir {
        let _ = fs::create_dir_all(&dir);
        let path = dir.join(format!("init-{}.txt", log::unix_time()));
        let status = fs::read_to_string(paths::INIT_STATUS).unwrap_or_default();
        let text = format!(
            "rayos init {} crashed at boot time {:.3} s\nreason: {reason}\n\nstatus:\n{status}\n",
            env!("CARGO_PKG_VERSION"),
            log::uptime()
        );
        if fs::write(&path, text).is_ok() {
            log::info(format!("crash report written to {}", path.display()));
        }
    }
    sys::sync();
    log::info(format!(
        "rebooting in {} s (choose the recovery entry in the boot menu to inspect logs)",
        FATAL_REBOOT_DELAY.as_secs()
    ));
    std::thread::sleep(FATAL_REBOOT_DELAY);
    log::detach_file();
    sys::sync();
    let e = sys::power(PowerAction::Reboot);
    // Only reachable when not PID 1 or without CAP_SYS_BOOT.
    eprintln!("rayos init: reboot failed: {e}");
    std::process::exit(1)
}

impl Init {
    fn boot(&mut self) {
        for s in COMMON {
            self.run_step(s);
        }
        let steps: &[Step] = match self.params.mode {
            Mode::Installed => INSTALLED,
            Mode::Recovery => RECOVERY,
            Mode::Installer => INSTALLER,
        };
        for s in steps {
            self.run_step(s);
        }
        self.status.phase = match self.params.mode {
            Mode::Installer if self.installer_pid.is_some() => "installing",
            _ => "running",
        }
        .into();
        if !self.status.faults.is_empty() {
            log::marker(&Marker::Degraded(self.status.faults.len()));
            for f in self.status.faults.clone() {
                log::warn(f);
            }
            if self.params.mode == Mode::Installed {
                log::info(
                    "the recovery entry in the boot menu (\"RayOS recovery\") can repair this",
                );
            }
        }
        self.write_boot_record("booted");
        self.write_status();
    }

    fn run_step(&mut self, s: &Step) {
        log::marker(&Marker::Boot(s.name.to_string()));
        let t = Instant::now();
        let r = (s.run)(self);
        let millis = t.elapsed().as_millis() as u64;
        let (result, message) = match r {
            StepResult::Ok(m) => {
                if !m.is_empty() {
                    log::info(format!("{}: {m}", s.name));
                }
                ("ok", m)
            }
            StepResult::Warn(m) => {
                log::warn(format!("{}: {m}", s.name));
                ("warning", m)
            }
            StepResult::Skip(m) => {
                log::detail(format!("{}: skipped: {m}", s.name));
                ("skipped", m)
            }
            StepResult::Fail(m) => {
                log::error(format!("{}: {m}", s.name));
                if s.fatal {
                    fatal_exit(&format!("boot step {} failed: {m}", s.name), None);
                }
                ("failed", m)
            }
        };
        self.status.steps.push(StepRecord {
            name: s.name.to_string(),
            result: result.to_string(),
            message,
            millis,
        });
        self.status_dirty = true;
        if sys::is_mounted(Path::new("/run")) {
            self.write_status();
        }
    }

    fn fault(&mut self, f: impl Into<String>) {
        self.status.faults.push(f.into());
        self.status_dirty = true;
    }

    // ---- common steps ------------------------------------------------

    fn step_kernel_fs(&mut self) -> StepResult {
        for m in sys::kernel_mounts() {
            let target = Path::new(m.target);
            if sys::is_mounted(target) {
                continue;
            }
            if let Err(e) = sys::mount(m.source, target, m.fstype, m.flags, m.data) {
                return StepResult::Fail(chain(&e));
            }
            if m.target == "/dev" {
                sys::ensure_stdio_console();
                log::attach_devices();
            }
        }
        let _ = fs::create_dir_all(paths::RUN);
        let _ = fs::create_dir_all(&self.logs_dir);
        // The kernel's own module requests (fs-*, crypto-*) go to our
        // loader: a link named `modprobe` makes `main` dispatch to it.
        let helper = Path::new(paths::MODPROBE);
        if std::os::unix::fs::symlink(&self.exe, helper).is_ok() {
            let _ = fs::write(
                "/proc/sys/kernel/modprobe",
                helper.as_os_str().as_encoded_bytes(),
            );
        }
        // A kernel panic reboots after 10 s instead of hanging.
        let _ = fs::write("/proc/sys/kernel/panic", "10");
        sys::disable_ctrl_alt_del();
        self.status.boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        StepResult::Ok(String::new())
    }

    fn step_cmdline(&mut self) -> StepResult {
        let text = fs::read_to_string("/proc/cmdline").unwrap_or_default();
        self.params = BootParams::parse(&text);
        self.status.mode = self.params.mode;
        let msg = format!("mode {}", self.params.mode);
        if self.params.warnings.is_empty() {
            StepResult::Ok(msg)
        } else {
            StepResult::Warn(format!("{msg}; {}", self.params.warnings.join("; ")))
        }
    }

    fn step_modules(&mut self) -> StepResult {
        let release = rustix::system::uname()
            .release()
            .to_string_lossy()
            .into_owned();
        let root = Path::new("/lib/modules").join(&release);
        let index = match ModuleIndex::load(&root) {
            Ok(i) => i,
            Err(e) => {
                return StepResult::Warn(format!(
                    "{}: only built-in drivers are available",
                    chain(&e)
                ));
            }
        };
        let mut loader = modules::Loader::new(&index);
        let mut loaded = 0;
        for m in ALWAYS_MODULES {
            loaded += loader.load(m).len();
        }
        // Bus drivers create devices that want more drivers: repeat until
        // a pass adds nothing (bounded).
        let mut seen = std::collections::HashSet::new();
        for _pass in 0..6 {
            let aliases = modules::collect_modaliases(Path::new("/sys/devices"));
            let fresh: Vec<String> = aliases
                .into_iter()
                .filter(|a| seen.insert(a.clone()))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for a in &fresh {
                let n = loader.load(a);
                if self.params.debug && !n.is_empty() {
                    log::info(format!("{a}: loaded {}", n.join(", ")));
                }
                loaded += n.len();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let refused = loader
            .done
            .values()
            .filter(|r| matches!(r, modules::LoadResult::Refused(_)))
            .count();
        self.index = Some(index);
        StepResult::Ok(format!(
            "{loaded} modules loaded ({refused} not applicable) for kernel {release}"
        ))
    }

    fn step_efivarfs(&mut self) -> StepResult {
        if !Path::new(efivar::FIRMWARE_DIR).is_dir() {
            return StepResult::Skip("not booted through UEFI".into());
        }
        if sys::is_mounted(Path::new(efivar::EFIVARS_DIR)) {
            self.image = bless::running_uki(Path::new(efivar::EFIVARS_DIR));
            return StepResult::Ok(String::new());
        }
        match sys::mount(
            "efivarfs",
            Path::new(efivar::EFIVARS_DIR),
            "efivarfs",
            MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::NODEV,
            "",
        ) {
            Ok(()) => {
                self.image = bless::running_uki(Path::new(efivar::EFIVARS_DIR));
                StepResult::Ok(match &self.image {
                    Some(i) => format!("booted from {i}"),
                    None => String::new(),
                })
            }
            Err(e) => StepResult::Warn(format!(
                "{}: boot counting and boot entries cannot be used",
                chain(&e)
            )),
        }
    }

    // ---- installed / recovery ----------------------------------------

    fn list_disks(&self) -> Vec<rayos_disk::report::Disk> {
        match rayos_disk::list_block_devices() {
            Ok(d) => d,
            Err(e) => {
                log::warn(format!("cannot list disks: {}", chain(&e)));
                Vec::new()
            }
        }
    }

    fn step_find_data(&mut self) -> StepResult {
        let boot_esp = volumes::loader_device_part_uuid(Path::new(efivar::EFIVARS_DIR));
        let deadline = Instant::now() + DISK_WAIT;
        loop {
            let disks = self.list_disks();
            if let Some(i) = volumes::find_install(&disks, boot_esp) {
                let msg = format!(
                    "data volume {} on {}{}",
                    i.data.display(),
                    i.disk.display(),
                    if i.others.is_empty() {
                        String::new()
                    } else {
                        format!(" (also found RayOS data on {:?}: not used)", i.others)
                    }
                );
                self.status.data_device = Some(i.data.display().to_string());
                self.install = Some(i);
                return StepResult::Ok(msg);
            }
            if Instant::now() >= deadline {
                let names: Vec<String> =
                    disks.iter().map(|d| d.path.display().to_string()).collect();
                self.fault(format!(
                    "no RayOS data partition (type {}) on any disk ({}): VMs cannot start. \
                     Boot the recovery entry or reinstall RayOS from the installer medium.",
                    rayos_disk::types::RAYOS_DATA,
                    if names.is_empty() {
                        "no disks found".to_string()
                    } else {
                        names.join(", ")
                    }
                ));
                return StepResult::Fail("no data partition found".into());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn step_check_data(&mut self) -> StepResult {
        let Some(dev) = self.install.as_ref().map(|i| i.data.clone()) else {
            return StepResult::Skip("no data volume".into());
        };
        let e2fsck = ["/usr/sbin/e2fsck", "/sbin/e2fsck", "/usr/bin/e2fsck"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.is_file());
        let Some(e2fsck) = e2fsck else {
            self.data_ok = true;
            return StepResult::Warn(
                "e2fsck is not in this image: mounting the data volume unchecked".into(),
            );
        };
        // -p: fix what is safe without questions. Exit status bits: 1 fixed,
        // 2 fixed and reboot wanted, 4 left uncorrected, 8 operational error.
        let mut cmd = Command::new(e2fsck);
        sys::reset_signals_in_child(&mut cmd);
        let out = cmd.arg("-p").arg(&dev).stdin(Stdio::null()).output();
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                self.data_ok = true;
                return StepResult::Warn(format!(
                    "cannot run {}: {e}: mounting unchecked",
                    e2fsck.display()
                ));
            }
        };
        let code = out.status.code().unwrap_or(8);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            log::detail(format!("e2fsck: {l}"));
        }
        if code & !3 == 0 {
            self.data_ok = true;
            if code == 0 {
                StepResult::Ok(format!("{} is clean", dev.display()))
            } else {
                StepResult::Warn(format!("e2fsck repaired {} (status {code})", dev.display()))
            }
        } else {
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_string();
            self.fault(format!(
                "the data volume {} failed its check (e2fsck status {code}: {last}). It is mounted read-only and no VM \
                 is started, so nothing on it changes. Boot the recovery entry to repair it.",
                dev.display()
            ));
            StepResult::Fail(format!("e2fsck status {code}"))
        }
    }

    fn step_mount_data(&mut self) -> StepResult {
        let Some(dev) = self.install.as_ref().map(|i| i.data.clone()) else {
            return StepResult::Skip("no data volume".into());
        };
        let target = Path::new(paths::DATA);
        let (flags, ro) = if self.data_ok {
            (MountFlags::NOSUID | MountFlags::NODEV, false)
        } else {
            (
                MountFlags::NOSUID | MountFlags::NODEV | MountFlags::RDONLY,
                true,
            )
        };
        let data = if ro { "noload" } else { "" };
        match sys::mount(&dev.to_string_lossy(), target, "ext4", flags, data) {
            Ok(()) => {
                self.status.data_mounted = Some(paths::DATA.into());
                self.status.data_read_only = ro;
                StepResult::Ok(format!(
                    "{} on {}{}",
                    dev.display(),
                    paths::DATA,
                    if ro { " (read-only)" } else { "" }
                ))
            }
            Err(e) => {
                self.data_ok = false;
                self.fault(format!(
                    "cannot mount the data volume {} ({}). VMs cannot start. Boot the recovery entry to repair it.",
                    dev.display(),
                    chain(&e)
                ));
                StepResult::Fail(chain(&e))
            }
        }
    }

    fn step_logs(&mut self) -> StepResult {
        if self.status.data_mounted.is_none() || self.status.data_read_only {
            self.start_kmsg_collector();
            return StepResult::Skip(
                "no writable data volume: logs stay in /run/rayos/logs until shutdown".into(),
            );
        }
        let layout = rayos_state::DataLayout::new(paths::DATA);
        for d in layout.skeleton() {
            let _ = fs::create_dir_all(d);
        }
        self.logs_dir = layout.logs();
        if let Err(e) = log::attach_file(&self.logs_dir) {
            return StepResult::Warn(format!("cannot write {}: {e}", self.logs_dir.display()));
        }
        log::detail(format!(
            "=== boot {} at unix time {}, RayOS {} ===",
            self.status.boot_id,
            self.status.started_unix,
            env!("CARGO_PKG_VERSION")
        ));
        self.start_kmsg_collector();
        StepResult::Ok(format!("logs in {}", self.logs_dir.display()))
    }

    fn start_kmsg_collector(&mut self) {
        let Ok(mut f) = File::open("/dev/kmsg") else {
            return;
        };
        let Ok(mut kernel) = crate::log::RotatingLog::open(
            &self.logs_dir,
            "kernel",
            log::DEFAULT_MAX_BYTES,
            log::DEFAULT_KEEP,
        ) else {
            return;
        };
        let _ = kernel.write_line(&format!("=== boot {} ===", self.status.boot_id));
        *lock_log(&self.kernel_log) = Some(kernel);
        let shared = self.kernel_log.clone();
        let _ = std::thread::Builder::new()
            .name("kmsg".into())
            .spawn(move || {
                let mut buf = vec![0u8; 8192];
                let mut n_since_sync = 0;
                loop {
                    // One read returns one record: "prio,seq,usec,flags;text\n".
                    match f.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let rec = String::from_utf8_lossy(&buf[..n]);
                            let (head, text) = rec.split_once(';').unwrap_or(("", &rec));
                            let usec: u64 = head
                                .split(',')
                                .nth(2)
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(0);
                            let first = text.lines().next().unwrap_or("");
                            let mut guard = lock_log(&shared);
                            // Gone: the data volume is being unmounted.
                            let Some(log) = guard.as_mut() else { break };
                            let _ =
                                log.write_line(&format!("[{:>9.3}] {first}", usec as f64 / 1e6));
                            n_since_sync += 1;
                            if n_since_sync >= 200 {
                                let _ = log.sync();
                                n_since_sync = 0;
                            }
                        }
                        // EPIPE: records were overwritten before we read them.
                        Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                        Err(_) => break,
                    }
                }
            });
    }

    fn step_machine(&mut self) -> StepResult {
        if self.status.data_mounted.is_none() {
            let _ = sys::sethostname("rayos");
            return StepResult::Skip("no data volume: hostname \"rayos\"".into());
        }
        let layout = rayos_state::DataLayout::new(paths::DATA);
        let path = layout.machine();
        let (bytes, generation) = match rayos_state::read_with_fallback(&path) {
            Ok(x) => x,
            Err(e) => {
                let _ = sys::sethostname("rayos");
                self.fault(format!(
                    "{} cannot be read ({}): using hostname \"rayos\" and UTC. Fix it in recovery mode.",
                    path.display(),
                    chain(&e)
                ));
                return StepResult::Warn("machine.toml missing".into());
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        let m = match rayos_state::MachineConfig::parse(&path.to_string_lossy(), &text) {
            Ok(m) => m,
            Err(e) => {
                let _ = sys::sethostname("rayos");
                self.fault(format!(
                    "{e}: using hostname \"rayos\" and UTC. Fix it in recovery mode."
                ));
                return StepResult::Warn("machine.toml does not parse".into());
            }
        };
        if let Err(e) = sys::sethostname(&m.hostname) {
            return StepResult::Warn(format!("cannot set hostname {}: {e}", m.hostname));
        }
        let _ = fs::create_dir_all("/etc");
        let _ = fs::write("/etc/hostname", format!("{}\n", m.hostname));
        let _ = fs::write("/etc/timezone", format!("{}\n", m.timezone));
        let zone = Path::new("/usr/share/zoneinfo").join(&m.timezone);
        if zone.is_file() {
            let _ = fs::remove_file("/etc/localtime");
            let _ = std::os::unix::fs::symlink(&zone, "/etc/localtime");
        }
        // SAFETY (of set_var): the only other threads (log pumps, kmsg)
        // never read the environment.
        unsafe { std::env::set_var("TZ", &m.timezone) };
        let gen_note = match generation {
            rayos_state::Generation::Current => "",
            rayos_state::Generation::Previous => {
                " (from the previous generation: the current one was incomplete)"
            }
        };
        StepResult::Ok(format!(
            "hostname {}, timezone {}{gen_note}",
            m.hostname, m.timezone
        ))
    }

    fn step_policy(&mut self) -> StepResult {
        if self.status.data_mounted.is_none() {
            return StepResult::Skip("no data volume".into());
        }
        let path = rayos_state::DataLayout::new(paths::DATA).policy();
        match rayos_state::read_with_fallback(&path) {
            Ok((bytes, _)) => {
                let text = String::from_utf8_lossy(&bytes);
                match rayos_state::Policy::parse(&path.to_string_lossy(), &text) {
                    Ok(_) => StepResult::Ok(String::new()),
                    Err(e) => {
                        self.fault(format!(
                            "policy: {e}. The policy fails closed: no VM autostarts and networking is off. \
                             Fix the file in recovery mode."
                        ));
                        StepResult::Fail("policy does not parse".into())
                    }
                }
            }
            Err(e) => {
                self.fault(format!(
                    "policy {} cannot be read ({}): no VM autostarts. Fix it in recovery mode.",
                    path.display(),
                    chain(&e)
                ));
                StepResult::Fail("no policy".into())
            }
        }
    }

    fn step_rayosd(&mut self) -> StepResult {
        if !self.data_ok || self.status.data_mounted.is_none() || self.status.data_read_only {
            return StepResult::Skip(
                "no writable, checked data volume: VMs are not started".into(),
            );
        }
        self.services.add(Spec {
            name: "rayosd".into(),
            program: self.exe.clone(),
            args: vec![
                "daemon".into(),
                "--state-dir".into(),
                paths::DATA.into(),
                "--socket".into(),
                paths::API_SOCKET.into(),
            ],
            env: vec![],
            output: Output::Log(self.logs_dir.clone()),
            restart: true,
        });
        self.rayosd_started = Some(Instant::now());
        match self.services.pid_of("rayosd") {
            Some(pid) => StepResult::Ok(format!("rayosd started (pid {pid})")),
            None => StepResult::Warn("rayosd did not start; retrying with backoff".into()),
        }
    }

    fn step_consoles(&mut self) -> StepResult {
        let mut started = Vec::new();
        for name in self.params.consoles.clone() {
            let dev = Path::new("/dev").join(&name);
            if !dev.exists() {
                continue;
            }
            self.services.add(Spec {
                name: format!("console-{name}"),
                program: self.exe.clone(),
                args: vec![
                    "console".into(),
                    "--tty".into(),
                    dev.display().to_string(),
                    "--mode".into(),
                    self.params.mode.to_string(),
                ],
                env: vec![(
                    "TERM".into(),
                    if name.starts_with("tty") && !name.starts_with("ttyS") {
                        "linux"
                    } else {
                        "vt100"
                    }
                    .into(),
                )],
                output: Output::Tty(dev),
                restart: true,
            });
            started.push(name);
        }
        if started.is_empty() {
            StepResult::Warn("no console terminal found".into())
        } else {
            StepResult::Ok(format!("rayos> on {}", started.join(", ")))
        }
    }

    /// The presenter (`rayos present`, docs/present.md) takes the display
    /// and the keyboards once rayosd runs. Without rayosd (a degraded boot)
    /// the text console keeps the screen and keyboard, so the person at the
    /// machine sees the faults and can type at `rayos>`.
    fn step_presenter(&mut self) -> StepResult {
        if self.rayosd_started.is_none() {
            return StepResult::Skip(
                "rayosd not started: the text console keeps the screen".into(),
            );
        }
        self.services.add(Spec {
            name: "presenter".into(),
            program: self.exe.clone(),
            args: vec![
                "present".into(),
                "--socket".into(),
                paths::API_SOCKET.into(),
            ],
            env: vec![],
            output: Output::Log(self.logs_dir.clone()),
            restart: true,
        });
        match self.services.pid_of("presenter") {
            Some(pid) => StepResult::Ok(format!("presenter started (pid {pid})")),
            None => StepResult::Warn("presenter did not start; retrying with backoff".into()),
        }
    }

    // ---- installer ---------------------------------------------------

    fn mount_ro(dev: &Path, fstype: &str, at: &Path) -> Result<(), sys::SysError> {
        sys::mount(
            &dev.to_string_lossy(),
            at,
            fstype,
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            "",
        )
    }

    fn step_find_medium(&mut self) -> StepResult {
        let boot_esp = volumes::loader_device_part_uuid(Path::new(efivar::EFIVARS_DIR));
        let at = Path::new(paths::MEDIUM);
        let deadline = Instant::now() + DISK_WAIT;
        loop {
            let disks = self.list_disks();
            let mut vols = volumes::fat_and_iso_volumes(&disks, volumes::usb_attached);
            // The ESP the loader ran from, then the ISO label, then any.
            let esp_dev = boot_esp.and_then(|g| {
                disks
                    .iter()
                    .flat_map(|d| d.partitions.iter())
                    .find(|p| p.unique_guid == Some(g))
                    .and_then(|p| p.device.clone())
            });
            vols.sort_by_key(|v| {
                (
                    Some(&v.device) != esp_dev.as_ref(),
                    v.label.as_deref() != Some(volumes::INSTALLER_LABEL),
                )
            });
            for v in &vols {
                if Self::mount_ro(&v.device, v.fstype, at).is_err() {
                    continue;
                }
                if let Some(uki) = volumes::uki_on(at) {
                    self.medium_disk = Some(v.disk.clone());
                    self.uki = Some(uki.clone());
                    return StepResult::Ok(format!(
                        "installer medium {} ({}), system image {}",
                        v.device.display(),
                        v.label.as_deref().unwrap_or("no label"),
                        uki.display()
                    ));
                }
                let _ = sys::unmount(at);
            }
            if Instant::now() >= deadline {
                self.fault(
                    "the installer medium was not found (no FAT or ISO volume with /EFI/Linux/rayos-*.efi): \
                     the install needs it as the system image. Re-write the USB stick or CD.",
                );
                return StepResult::Fail("no installer medium".into());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The answer file's path on a volume and the label it must carry
    /// (`rayos.answers=`), or the default `/rayos-answers.toml`.
    fn answers_ref(&self) -> (String, Option<String>) {
        let want = self.params.answers.as_ref();
        (
            want.map(|a| a.path.clone())
                .unwrap_or_else(|| "/rayos-answers.toml".into()),
            want.and_then(|a| a.label.clone()),
        )
    }

    fn step_find_answers(&mut self) -> StepResult {
        let (rel, label) = self.answers_ref();
        let medium = Path::new(paths::MEDIUM);
        let dest = Path::new(paths::ANSWERS);
        // The medium is already mounted: look there first.
        if label.is_none()
            && self.uki.is_some()
            && let Some(f) = volumes::file_on(medium, &rel)
            && fs::copy(&f, dest).is_ok()
        {
            self.answers = Some(dest.to_path_buf());
            self.answers_source = Some("the installer medium".into());
            self.watch = Some(AnswerWatch {
                known: usb::block_names(Path::new("/sys/block")),
                ..AnswerWatch::default()
            });
            return StepResult::Ok(format!("answer file {rel} on the installer medium"));
        }
        // A stick plugged in at boot may still be enumerating (issue 17).
        let settled = self.settle_usb();
        // Disks present from here on were searched; later ones are watched.
        let known = usb::block_names(Path::new("/sys/block"));
        let disks = self.list_disks();
        let found = self.search_answers(&disks, None);
        self.watch = Some(AnswerWatch {
            known,
            ..AnswerWatch::default()
        });
        if let Some(source) = found {
            let msg = format!("answer file {rel} on {source} ({settled})");
            self.answers = Some(dest.to_path_buf());
            self.answers_source = Some(source);
            return StepResult::Ok(msg);
        }
        if self.params.answers.is_some() {
            self.fault(format!(
                "rayos.answers= names {}{rel}, which is on no {}FAT or ISO volume ({settled}): falling back to the \
                 interactive installer",
                label.as_deref().map(|l| format!("{l}:")).unwrap_or_default(),
                if label.is_some() { "" } else { "removable " }
            ));
            return StepResult::Fail("answer file not found".into());
        }
        StepResult::Skip(format!(
            "no rayos-answers.toml on the installer medium or removable media ({settled}): interactive install \
             on the console; a stick with one plugged in later is offered"
        ))
    }

    /// Waits, at most [`usb::SETTLE_TIMEOUT`], until USB storage has
    /// settled (docs/init.md), saying on the console what it waits for.
    /// Returns a note for the step's message.
    fn settle_usb(&self) -> String {
        let (sys_root, dev_root) = usb::roots();
        let t0 = Instant::now();
        let mut settle = Settle::new(t0, usb::SETTLE_TIMEOUT, usb::QUIET);
        let mut told: Option<Instant> = None;
        loop {
            let now = Instant::now();
            match settle.observe(UsbSnapshot::read(&sys_root, &dev_root), now) {
                Verdict::Settled { disks } => {
                    let secs = settle.elapsed(now).as_secs_f64();
                    return if disks.is_empty() {
                        format!("USB settled in {secs:.1} s, no USB disk")
                    } else {
                        format!("USB settled in {secs:.1} s: {}", disks.join(", "))
                    };
                }
                Verdict::TimedOut(what) => {
                    log::warn(format!(
                        "USB storage did not settle within {} s ({}): going on without it",
                        usb::SETTLE_TIMEOUT.as_secs(),
                        what.join("; ")
                    ));
                    return format!(
                        "USB did not settle within {} s",
                        usb::SETTLE_TIMEOUT.as_secs()
                    );
                }
                Verdict::Waiting(what) => {
                    if told.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(2)) {
                        told = Some(now);
                        log::info(format!(
                            "waiting up to {} s for USB storage to settle ({:.0} s so far): {}",
                            usb::SETTLE_TIMEOUT.as_secs(),
                            settle.elapsed(now).as_secs_f64(),
                            what.join("; ")
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// Looks for the answer file on the volumes answer files may come from
    /// (the medium, removable media, or the label `rayos.answers=` names;
    /// docs/answer-file.md) among `disks` — only disks named in `only`, when
    /// given. Copies it to [`paths::ANSWERS`]; returns the volume's device.
    fn search_answers(
        &mut self,
        disks: &[rayos_disk::report::Disk],
        only: Option<&BTreeSet<String>>,
    ) -> Option<String> {
        let (rel, label) = self.answers_ref();
        let wanted = |v: &volumes::Volume| {
            only.is_none_or(|o| usb::kernel_name(&v.disk).is_some_and(|n| o.contains(&n)))
        };
        let vols: Vec<volumes::Volume> = volumes::fat_and_iso_volumes(disks, volumes::usb_attached)
            .into_iter()
            .filter(wanted)
            .collect();
        let (used, skipped) =
            volumes::answer_sources(&vols, label.as_deref(), self.medium_disk.as_deref());
        let probe = Path::new(paths::PROBE);
        let _ = fs::create_dir_all(probe);
        for v in &skipped {
            // Looked at only to say why a file there is not used.
            if Self::mount_ro(&v.device, v.fstype, probe).is_ok() {
                let there = volumes::file_on(probe, &rel).is_some();
                let _ = sys::unmount(probe);
                if there {
                    log::warn(format!(
                        "{rel} on {} is not used: it is on an internal disk, and answer files are read only from \
                         the installer medium and removable media (name it with rayos.answers=LABEL:PATH to use it)",
                        v.device.display()
                    ));
                }
            }
        }
        for v in used {
            if Self::mount_ro(&v.device, v.fstype, probe).is_err() {
                continue;
            }
            let found =
                volumes::file_on(probe, &rel).and_then(|f| fs::copy(&f, paths::ANSWERS).ok());
            let _ = sys::unmount(probe);
            if found.is_some() {
                return Some(v.device.display().to_string());
            }
        }
        None
    }

    fn step_install(&mut self) -> StepResult {
        if self.answers.is_none() || self.uki.is_none() {
            // Interactive: the console sessions offer `install`.
            let r = self.step_consoles();
            log::marker(&Marker::Installer(InstallerMarker::Interactive));
            return r;
        }
        self.unattended()
    }

    /// The unattended install from [`paths::ANSWERS`]: the target, the
    /// engine's plan, the countdown any key cancels, then `rayos install
    /// --yes`. Any way it does not start ends at the console's `install`.
    fn unattended(&mut self) -> StepResult {
        let (Some(answers), Some(uki)) = (self.answers.clone(), self.uki.clone()) else {
            return StepResult::Skip("no answer file".into());
        };
        let source = self
            .answers_source
            .clone()
            .unwrap_or_else(|| "a volume".into());
        let text = fs::read_to_string(&answers).unwrap_or_default();
        let target = match answers_target(&text) {
            Some(t) => t,
            None => {
                let disks = self.list_disks();
                match first_suitable_disk(&disks, self.medium_disk.as_deref()) {
                    Some(t) => {
                        log::info(format!(
                            "the answer file names no disk: the plan is for {t}, the first suitable one"
                        ));
                        t
                    }
                    None => {
                        self.fault("no disk to install to (every disk is the installer medium or too small)");
                        self.answers = None;
                        let _ = self.step_consoles();
                        return StepResult::Fail("no target disk".into());
                    }
                }
            }
        };
        let mut args = vec![
            "install".to_string(),
            "--answers".into(),
            answers.display().to_string(),
            "--target".into(),
            target.clone(),
        ];
        args.extend(volumes::image_args(&uki));
        if let Err(why) = self.show_plan(&args) {
            log::marker(&Marker::Installer(InstallerMarker::Failed(
                InstallFailure::Plan,
            )));
            self.fault(format!(
                "the answer file on {source} cannot be installed: {why}. Nothing was written. Fix the answer \
                 file, or type `install` at the rayos> prompt."
            ));
            self.answers = None;
            let _ = self.step_consoles();
            return StepResult::Fail("the plan was refused".into());
        }
        let secs = unattended::countdown_secs(&text);
        log::info(format!(
            "Unattended install from the answer file on {source}: the plan above is written to {target} in {secs} s. \
             Press any key on a console to cancel."
        ));
        match self.countdown(secs, &target) {
            CountdownEnd::Cancelled(tty) => {
                log::marker(&Marker::Installer(InstallerMarker::Cancelled));
                log::info(format!(
                    "unattended install cancelled by a key on {}: nothing was written. Type `install` to install \
                     by hand.",
                    tty.display()
                ));
                self.answers = None;
                let _ = self.step_consoles();
                StepResult::Ok(format!("cancelled on {}: nothing written", tty.display()))
            }
            CountdownEnd::Expired => {
                args.push("--yes".into());
                self.spawn_install(args)
            }
        }
    }

    /// The engine's plan (`rayos install --dry-run`) on the console; `Err`
    /// carries its refusal.
    fn show_plan(&self, args: &[String]) -> Result<(), String> {
        let mut cmd = Command::new(&self.exe);
        sys::reset_signals_in_child(&mut cmd);
        let out = cmd
            .args(args)
            .arg("--dry-run")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run the installer: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        // The engine's own markers are for its callers, not the person.
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                !l.starts_with(marker::PREFIX) && !l.starts_with("Dry run") && !l.trim().is_empty()
            })
            .collect();
        if !out.status.success() {
            return Err(lines.join(" / "));
        }
        for l in lines {
            log::info(format!("plan: {l}"));
        }
        Ok(())
    }

    /// Counts down on every console terminal; any key cancels. Signals and
    /// exited children are handled meanwhile (a power request still powers
    /// off).
    fn countdown(&mut self, secs: u32, target: &str) -> CountdownEnd {
        let ttys: Vec<PathBuf> = self
            .params
            .consoles
            .iter()
            .map(|n| unattended::console_device(n))
            .filter(|p| p.exists())
            .collect();
        let mut keys = Keys::open(&ttys);
        let cd = Countdown::new(secs, Instant::now());
        log::marker(&Marker::Installer(InstallerMarker::Countdown(secs)));
        if keys.is_empty() {
            log::warn(
                "no console terminal to read a key from: the countdown cannot be cancelled here",
            );
        }
        let mut shown = None;
        loop {
            let now = Instant::now();
            let left = cd.remaining(now);
            if left == 0 {
                keys.show("\r\n");
                return CountdownEnd::Expired;
            }
            if shown != Some(left) {
                shown = Some(left);
                keys.show(&format!(
                    "\rRayOS will be installed onto {target} in {left:>2} s - press any key to cancel. "
                ));
            }
            let mut fds = vec![self.sigfd.raw()];
            fds.extend(keys.fds());
            let wait = cd.until_next(now).as_millis().min(1000) as i32;
            let ready = sys::poll_readable(&fds, wait);
            if ready.contains(&self.sigfd.raw()) {
                for sig in self.sigfd.read() {
                    if let Some(a) = control::action_for(sig) {
                        drop(keys);
                        self.shutdown(a, "power request during the install countdown");
                    }
                }
            }
            if let Some(tty) = keys.pressed(&ready) {
                keys.show("\r\n");
                return CountdownEnd::Cancelled(tty);
            }
            self.reap();
        }
    }

    /// Starts `rayos <args>` (the unattended install) with its output relayed.
    fn spawn_install(&mut self, args: Vec<String>) -> StepResult {
        log::marker(&Marker::Installer(InstallerMarker::Start));
        log::info(format!("running: rayos {}", args.join(" ")));
        self.status.phase = "installing".into();
        self.status_dirty = true;
        // The engine's plan and progress are relayed line by line through
        // init's log: inherited stdio would reach only /dev/console (the last
        // `console=`), not the serial console the e2e tests and a person on a
        // serial line read, and nothing would land in the log file.
        let mut cmd = Command::new(&self.exe);
        sys::reset_signals_in_child(&mut cmd);
        let relay = match std::io::pipe() {
            Ok((r, w)) => match w.try_clone() {
                Ok(w2) => {
                    cmd.stdout(w).stderr(w2);
                    Some(r)
                }
                Err(_) => None,
            },
            Err(_) => None,
        };
        match cmd.args(&args).stdin(Stdio::null()).spawn() {
            Ok(child) => {
                self.installer_pid = Some(child.id() as i32);
                drop(child);
                // Drop our copies of the write ends (held by `cmd`) so the
                // relay sees end-of-file when the installer exits.
                drop(cmd);
                if let Some(r) = relay {
                    std::thread::spawn(move || relay_installer_output(r));
                }
                StepResult::Ok(String::new())
            }
            Err(e) => {
                self.fault(format!("cannot run the installer: {e}"));
                let _ = self.step_consoles();
                StepResult::Fail(e.to_string())
            }
        }
    }

    // ---- installer: answer sticks plugged in later ---------------------

    /// Looks at `/sys/block` once a second; a new disk is searched for an
    /// answer file once USB has settled, and one found is offered.
    fn watch_tick(&mut self) {
        if self.installer_pid.is_some() {
            return;
        }
        let now = Instant::now();
        let Some(w) = self.watch.as_mut() else {
            return;
        };
        if w.last_scan
            .is_some_and(|t| now.duration_since(t) < WATCH_EVERY)
        {
            return;
        }
        w.last_scan = Some(now);
        let names = usb::block_names(Path::new("/sys/block"));
        for gone in w.known.difference(&names) {
            log::info(format!("disk /dev/{gone} was removed"));
        }
        w.known.retain(|n| names.contains(n));
        w.fresh.retain(|n| names.contains(n));
        let added: Vec<String> = names.difference(&w.known).cloned().collect();
        if !added.is_empty() {
            log::info(format!(
                "new disk {}: looking for an answer file once USB storage has settled",
                added
                    .iter()
                    .map(|n| format!("/dev/{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            w.known.extend(added.iter().cloned());
            w.fresh.extend(added);
            if w.settle.is_none() {
                w.settle = Some(Settle::new(now, usb::SETTLE_TIMEOUT, usb::QUIET));
            }
        }
        let Some(settle) = w.settle.as_mut() else {
            return;
        };
        let (sys_root, dev_root) = usb::roots();
        match settle.observe(UsbSnapshot::read(&sys_root, &dev_root), now) {
            Verdict::Waiting(_) => return,
            Verdict::TimedOut(what) => log::warn(format!(
                "USB storage did not settle within {} s ({}): looking at the new disks as they are",
                usb::SETTLE_TIMEOUT.as_secs(),
                what.join("; ")
            )),
            Verdict::Settled { .. } => {}
        }
        w.settle = None;
        let fresh = std::mem::take(&mut w.fresh);
        if fresh.is_empty() {
            return;
        }
        let disks = self.list_disks();
        if let Some(source) = self.search_answers(&disks, Some(&fresh)) {
            self.offer_late(source);
        }
    }

    /// An answer file on a stick plugged in after boot: unless an install
    /// is being written, the console sessions (and what runs in them, the
    /// wizard too) are stopped and the unattended install is offered with
    /// its countdown, exactly as at boot.
    fn offer_late(&mut self, source: String) {
        let (rel, _) = self.answers_ref();
        if self.uki.is_none() {
            log::warn(format!(
                "{rel} on {source} is not used: the installer medium (the system image) was not found"
            ));
            return;
        }
        let Some(claim) = control::claim_install_lock(Path::new(paths::INSTALL_LOCK)) else {
            log::warn(format!(
                "{rel} on {source} is not used: an install is being written right now. Unplug and plug the stick \
                 in again once it is done to use it."
            ));
            return;
        };
        log::info(format!(
            "answer file {rel} found on {source}, plugged in after boot: offering the unattended install"
        ));
        self.stop_consoles();
        drop(claim);
        // A full-screen program stopped in the middle leaves its screen.
        let ttys: Vec<PathBuf> = self
            .params
            .consoles
            .iter()
            .map(|n| unattended::console_device(n))
            .filter(|p| p.exists())
            .collect();
        Keys::open(&ttys).show(unattended::RESET_SCREEN);
        self.answers = Some(PathBuf::from(paths::ANSWERS));
        self.answers_source = Some(source);
        match self.unattended() {
            StepResult::Ok(m) | StepResult::Warn(m) | StepResult::Skip(m) => {
                if !m.is_empty() {
                    log::info(format!("install: {m}"));
                }
            }
            StepResult::Fail(m) => log::error(format!("install: {m}")),
        }
        self.write_status();
    }

    /// Stops the console sessions and every process in them; they are
    /// started again by [`Init::step_consoles`].
    fn stop_consoles(&mut self) {
        let names: Vec<String> = self
            .services
            .names()
            .into_iter()
            .filter(|n| n.starts_with("console-"))
            .collect();
        let mut pids = Vec::new();
        for n in &names {
            if let Some(pid) = self.services.signal(n, libc::SIGTERM) {
                pids.push(pid);
                for p in sys::session_members(Path::new("/proc"), pid) {
                    sys::kill(p, libc::SIGTERM);
                    pids.push(p);
                }
            }
        }
        if !self.wait_gone(&pids, Duration::from_secs(2)) {
            for p in &pids {
                sys::kill(*p, libc::SIGKILL);
            }
            self.wait_gone(&pids, Duration::from_secs(2));
        }
        for n in &names {
            self.services.remove(n);
        }
    }

    /// Reaps until none of `pids` exists any more (some are reaped by their
    /// own parent, not by PID 1).
    fn wait_gone(&mut self, pids: &[i32], deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        loop {
            self.reap();
            if pids.iter().all(|p| !sys::kill(*p, 0)) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            sys::poll_readable(&[self.sigfd.raw()], 100);
            let _ = self.sigfd.read();
        }
    }

    fn installer_finished(&mut self, code: i32) {
        self.installer_pid = None;
        if code == 0 {
            let action = answers_after(&fs::read_to_string(paths::ANSWERS).unwrap_or_default());
            log::marker(&Marker::Installer(InstallerMarker::Done));
            log::info(format!(
                "RayOS is installed. {} now; remove the installer medium.",
                match action {
                    PowerAction::PowerOff => "Powering off",
                    PowerAction::Reboot => "Rebooting",
                }
            ));
            self.shutdown(action, "install finished");
        }
        log::marker(&Marker::Installer(InstallerMarker::Failed(
            InstallFailure::Status(code),
        )));
        self.answers = None;
        self.fault(format!(
            "the install failed (status {code}); nothing outside the plan was touched. Fix the answer file or \
             type `install` at the rayos> prompt to retry."
        ));
        let _ = self.step_consoles();
        self.status.phase = "running".into();
    }

    // ---- the loop ----------------------------------------------------

    pub fn run_loop(&mut self) -> ! {
        loop {
            if self
                .buttons_scanned
                .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
            {
                self.scan_power_buttons();
            }
            let mut fds = vec![self.sigfd.raw()];
            fds.extend(self.buttons.iter().map(|b| b.as_raw_fd()));
            let ready = sys::poll_readable(&fds, 500);
            if ready.contains(&self.sigfd.raw()) {
                for sig in self.sigfd.read() {
                    if let Some(a) = control::action_for(sig) {
                        let name = match sig {
                            libc::SIGINT => "Ctrl-Alt-Del",
                            libc::SIGTERM => "reboot request (SIGTERM)",
                            _ => "power-off request",
                        };
                        self.shutdown(a, name);
                    }
                }
            }
            let mut pressed = false;
            for b in &mut self.buttons {
                if ready.contains(&b.as_raw_fd()) && power_key_pressed(b) {
                    pressed = true;
                }
            }
            if pressed {
                self.shutdown(PowerAction::PowerOff, "power button");
            }
            self.reap();
            self.vm_events();
            self.services.tick();
            self.watch_tick();
            self.milestones();
            let st = self.services.status();
            if st != self.status.services {
                self.status.services = st;
                self.status_dirty = true;
            }
            if self.status_dirty {
                self.write_status();
            }
        }
    }

    fn reap(&mut self) {
        for e in sys::reap() {
            if self.installer_pid == Some(e.pid) {
                self.installer_finished(e.code);
            } else if self.services.exited(e.pid, e.code) {
                self.status_dirty = true;
            }
        }
    }

    /// A VM started (rayosd's event stream): look at the VM list at once
    /// instead of at the next poll.
    fn vm_events(&mut self) {
        let Some(rx) = &self.vm_starts else { return };
        while let Ok(vm) = rx.try_recv() {
            log::detail(format!("rayosd: VM {vm} started"));
            self.last_vm_poll = None;
        }
    }

    fn client(&self) -> rayos_api::Client {
        rayos_api::Client::new(paths::API_SOCKET).with_timeout(Some(Duration::from_secs(3)))
    }

    fn milestones(&mut self) {
        let Some(started) = self.rayosd_started else {
            return;
        };
        if !self.status.ready {
            if self
                .last_health_try
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
            {
                return;
            }
            self.last_health_try = Some(Instant::now());
            match self.client().health() {
                Ok(h) => {
                    self.status.ready = true;
                    self.status_dirty = true;
                    log::marker(&Marker::Ready);
                    log::info(format!(
                        "rayosd {} is healthy with {} VMs",
                        h.version, h.vms
                    ));
                    for n in h.notes {
                        log::warn(&n);
                        self.fault(n);
                    }
                    self.bless_boot();
                    self.write_boot_record("ready");
                    self.vm_starts = Some(follow_vm_starts(self.client()));
                }
                Err(e) => {
                    if !self.health_warned && started.elapsed() > Duration::from_secs(300) {
                        self.health_warned = true;
                        self.fault(format!(
                            "rayosd has not become healthy in 5 minutes ({e}); this boot is not blessed, so the \
                             boot menu falls back to the previous version after the remaining tries. See `logs rayosd`."
                        ));
                    }
                }
            }
            return;
        }
        if !self.status.linux_vm_ready {
            if self
                .last_vm_poll
                .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
            {
                return;
            }
            self.last_vm_poll = Some(Instant::now());
            if let Ok(vms) = self.client().list()
                && let Some(vm) = vms.iter().find(|v| {
                    v.kind == rayos_state::VmKind::Linux && v.state == rayos_api::VmState::Running
                })
            {
                self.status.linux_vm_ready = true;
                self.status_dirty = true;
                // Nothing more to wait for: the follower ends at its next event.
                self.vm_starts = None;
                log::marker(&Marker::LinuxVmReady);
                log::info(format!(
                    "Linux VM {} is running ({})",
                    vm.name,
                    vm.last_boot.map(|b| b.as_str()).unwrap_or("started")
                ));
            }
        }
    }

    fn bless_boot(&mut self) {
        if self.params.mode != Mode::Installed {
            return;
        }
        let Some(running) = bless::running_uki(Path::new(efivar::EFIVARS_DIR)) else {
            log::detail(
                "bless: the loader did not say which image runs (no systemd-boot?): nothing to bless",
            );
            return;
        };
        let candidates: Vec<(PathBuf, &str)> = self
            .install
            .as_ref()
            .map(|i| {
                i.system
                    .iter()
                    .map(|p| (p.clone(), "XBOOTLDR"))
                    .chain(i.esp.iter().map(|p| (p.clone(), "ESP")))
                    .collect()
            })
            .unwrap_or_default();
        let at = Path::new(paths::SYSTEM);
        for (dev, what) in candidates {
            if let Err(e) = sys::mount(
                &dev.to_string_lossy(),
                at,
                "vfat",
                MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
                "",
            ) {
                log::warn(format!(
                    "bless: cannot mount the {what} partition: {}",
                    chain(&e)
                ));
                continue;
            }
            let dir = at.join("EFI/Linux");
            let r = if dir.is_dir() {
                Some(bless::bless(&dir, &running))
            } else {
                None
            };
            sys::sync();
            let _ = sys::unmount(at);
            match r {
                Some(Ok(BlessOutcome::Blessed { from, to })) => {
                    log::marker(&Marker::Blessed(to.clone()));
                    log::info(format!("boot blessed: {from} -> {to}"));
                    self.status.blessed = Some(to);
                    self.commit_schema();
                    return;
                }
                Some(Ok(BlessOutcome::AlreadyBlessed(n))) => {
                    log::detail(format!("bless: {n} is already blessed"));
                    self.status.blessed = Some(n);
                    self.commit_schema();
                    return;
                }
                Some(Ok(BlessOutcome::Ambiguous(v))) => {
                    log::warn(format!(
                        "bless: cannot tell which of {v:?} is running; left as they are (remove the stale one in recovery)"
                    ));
                    return;
                }
                Some(Ok(BlessOutcome::NotFound(_))) | None => continue,
                Some(Err(e)) => {
                    log::warn(format!("bless: {}", chain(&e)));
                    return;
                }
            }
        }
        log::detail(format!(
            "bless: {running} is not on this install's system partition"
        ));
    }

    /// The blessed version keeps the migrated data schema: drop the old
    /// generation kept for a rollback.
    fn commit_schema(&mut self) {
        if !self.data_ok || self.status.data_read_only {
            return;
        }
        let layout = rayos_state::DataLayout::new(paths::DATA);
        match rayos_update::schema::commit(&layout) {
            Ok(true) => log::info("data schema migration committed (old generation removed)"),
            Ok(false) => {}
            Err(e) => log::warn(format!("data schema: {}", chain(&e))),
        }
        self.schema_migrated = false;
    }

    // ---- data schema and rollback detection --------------------------

    fn step_data_schema(&mut self) -> StepResult {
        if self.status.data_mounted.is_none() {
            return StepResult::Skip("no data volume".into());
        }
        let layout = rayos_state::DataLayout::new(paths::DATA);
        let supported = rayos_state::DATA_SCHEMA_VERSION;
        // Recovery only looks; an installed boot on a healthy volume migrates.
        let check =
            if self.params.mode == Mode::Installed && self.data_ok && !self.status.data_read_only {
                rayos_update::schema::check_and_migrate(&layout, supported)
            } else {
                rayos_update::schema::read(&layout).map(|found| match found.cmp(&supported) {
                    std::cmp::Ordering::Greater => {
                        rayos_update::schema::SchemaCheck::Newer { found, supported }
                    }
                    _ => rayos_update::schema::SchemaCheck::Current(found),
                })
            };
        match check {
            Ok(rayos_update::schema::SchemaCheck::Current(v)) => {
                StepResult::Ok(format!("schema {v}"))
            }
            Ok(rayos_update::schema::SchemaCheck::Migrated { from, to }) => {
                self.schema_migrated = true;
                StepResult::Ok(format!(
                    "migrated schema {from} -> {to}; the old generation is kept until this version is blessed"
                ))
            }
            Ok(rayos_update::schema::SchemaCheck::Newer { found, supported }) => {
                self.refuse_data_volume(format!(
                    "the data volume has schema {found}, newer than this RayOS understands ({supported}): it was                      written by a newer RayOS. It is left untouched (read-only, no VMs). Boot the newer version from                      the boot menu, or use the recovery entry (`recovery` menu: restore the pre-migration data)."
                ));
                StepResult::Fail(format!("schema {found} > {supported}"))
            }
            Err(e) => {
                self.refuse_data_volume(format!(
                    "cannot check the data volume's schema ({}): it is left untouched (read-only, no VMs).                      Use the recovery entry to inspect it.",
                    chain(&e)
                ));
                StepResult::Fail("schema unreadable".into())
            }
        }
    }

    /// Remounts the data volume read-only and keeps rayosd off it.
    fn refuse_data_volume(&mut self, fault: String) {
        self.fault(fault);
        self.data_ok = false;
        if self.status.data_mounted.is_some() && !self.status.data_read_only {
            match rustix::mount::mount_remount(
                Path::new(paths::DATA),
                MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
                "",
            ) {
                Ok(()) => self.status.data_read_only = true,
                Err(e) => {
                    log::warn(format!(
                        "cannot remount {} read-only: {e}; unmounting it",
                        paths::DATA
                    ));
                    let _ = sys::unmount(Path::new(paths::DATA));
                    self.status.data_mounted = None;
                }
            }
        }
    }

    fn step_rollback_check(&mut self) -> StepResult {
        let Some(image) = self.image.clone() else {
            return StepResult::Skip("the loader did not say which image runs".into());
        };
        let Some(running) = rayos_update::entries::version_of_file(&image) else {
            return StepResult::Skip(format!("{image} is not a RayOS entry"));
        };
        let Some(install) = self.install.clone() else {
            return StepResult::Skip("no install found".into());
        };
        let at = Path::new(paths::SYSTEM);
        let mount = match crate::sysmount::SystemMount::mount(&install, at) {
            Ok(m) => m,
            Err(e) => {
                return StepResult::Warn(format!("cannot check for a rollback: {}", chain(&e)));
            }
        };
        let data = (self.status.data_mounted.is_some()).then(|| Path::new(paths::DATA));
        let r = rayos_update::rollback::detect(mount.path(), &running, data);
        drop(mount);
        match r {
            Ok(found) if found.is_empty() => {
                StepResult::Ok(format!("running {running}; no rollback"))
            }
            Ok(found) => {
                for d in &found {
                    log::marker(&d.marker());
                    self.fault(format!(
                        "RayOS {} did not come up and the machine went back to {running}: {}. {}",
                        d.failed,
                        d.reason,
                        match &d.marked_bad {
                            Some(n) =>
                                format!("It is marked bad ({n}) and no longer offered at boot."),
                            None => "It could not be marked bad.".into(),
                        }
                    ));
                }
                StepResult::Warn(format!(
                    "rolled back from {}",
                    found
                        .iter()
                        .map(|d| d.failed.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
            Err(e) => StepResult::Warn(chain(&e)),
        }
    }

    fn scan_power_buttons(&mut self) {
        self.buttons_scanned = Some(Instant::now());
        if !self.buttons.is_empty() {
            return;
        }
        let Ok(rd) = fs::read_dir("/sys/class/input") else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("event") {
                continue;
            }
            let dev_name = fs::read_to_string(e.path().join("device/name")).unwrap_or_default();
            if dev_name.trim() != "Power Button" {
                continue;
            }
            use std::os::unix::fs::OpenOptionsExt;
            if let Ok(f) = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(Path::new("/dev/input").join(&name))
            {
                log::detail(format!("watching the power button on /dev/input/{name}"));
                self.buttons.push(f);
            }
        }
    }

    fn write_status(&mut self) {
        if self.status.boot_id.is_empty() && !Path::new(paths::RUN).is_dir() {
            return;
        }
        let _ = fs::create_dir_all(paths::RUN);
        if self.status.write(Path::new(paths::INIT_STATUS)).is_ok() {
            self.status_dirty = false;
        }
    }

    fn write_boot_record(&self, result: &str) {
        if !self.data_ok || self.status.data_read_only || self.status.data_mounted.is_none() {
            return;
        }
        let dir = rayos_state::DataLayout::new(paths::DATA).boot();
        let _ = fs::create_dir_all(&dir);
        let rec = serde_json::json!({
            "boot_id": self.status.boot_id,
            "version": self.status.version,
            "mode": self.status.mode,
            "started_unix": self.status.started_unix,
            "updated_unix": log::unix_time(),
            "uptime_s": log::uptime(),
            "result": result,
            "steps": self.status.steps,
            "faults": self.status.faults,
            "blessed": self.status.blessed,
            "image": self.image,
        });
        let name = format!("{}-{}.json", self.status.started_unix, self.status.boot_id);
        let _ = rayos_state::write_atomic(
            &dir.join(name),
            serde_json::to_string_pretty(&rec)
                .unwrap_or_default()
                .as_bytes(),
        );
        prune_boot_records(&dir, 100);
    }

    // ---- shutdown ----------------------------------------------------

    /// Stops everything in order and powers off or reboots. Never returns.
    pub fn shutdown(&mut self, action: PowerAction, reason: &str) -> ! {
        let power = match action {
            PowerAction::PowerOff => Power::PowerOff,
            PowerAction::Reboot => Power::Reboot,
        };
        let what = power.as_str();
        log::marker(&Marker::Shutdown(power));
        log::info(format!("{reason}: shutting down ({what})"));
        self.status.phase = "shutting-down".into();
        self.write_status();

        // 1. rayosd saves the VMs.
        if let Some(pid) = self.services.signal("rayosd", libc::SIGTERM) {
            log::info("asking rayosd to save the VMs");
            if self.wait_for(&[pid], RAYOSD_STOP_DEADLINE) {
                log::info("rayosd stopped");
            } else {
                log::warn(format!(
                    "rayosd did not stop within {} s: killing it",
                    RAYOSD_STOP_DEADLINE.as_secs()
                ));
                sys::kill(pid, libc::SIGKILL);
                self.wait_for(&[pid], Duration::from_secs(5));
            }
        }
        if let Some(pid) = self.installer_pid {
            sys::kill(pid, libc::SIGTERM);
        }
        // 2. the other services, then every other process.
        let pids: Vec<i32> = self
            .services
            .names()
            .iter()
            .filter_map(|n| self.services.signal(n, libc::SIGTERM))
            .collect();
        self.wait_for(&pids, Duration::from_secs(3));
        sys::kill(-1, libc::SIGTERM);
        self.wait_all(Duration::from_secs(3));
        sys::kill(-1, libc::SIGKILL);
        self.wait_all(Duration::from_secs(2));

        // 3. records, sync, unmount.
        self.write_boot_record(match action {
            PowerAction::PowerOff => "powered-off",
            PowerAction::Reboot => "rebooted",
        });
        log::info("unmounting the data volume");
        log::detach_file();
        if let Some(mut k) = lock_log(&self.kernel_log).take() {
            let _ = k.sync();
        }
        sys::sync();
        for m in [paths::MEDIUM, paths::SYSTEM, paths::DATA] {
            let p = Path::new(m);
            // The service log pumps close their files once the killed
            // services' pipes end: give them a moment before falling back to
            // a read-only remount and a lazy unmount.
            if sys::is_mounted(p)
                && let Err(e) = sys::unmount_waiting(p, Duration::from_secs(3))
            {
                log::warn(chain(&e));
            }
        }
        sys::sync();
        log::marker(&match action {
            PowerAction::PowerOff => Marker::PowerOff,
            PowerAction::Reboot => Marker::Reboot,
        });
        let e = sys::power(action);
        fatal_exit(&format!("reboot(2) failed: {e}"), None)
    }

    /// Reaps until every pid in `pids` has exited or `deadline` passes.
    fn wait_for(&mut self, pids: &[i32], deadline: Duration) -> bool {
        let end = Instant::now() + deadline;
        let mut left: Vec<i32> = pids.to_vec();
        while !left.is_empty() {
            for e in sys::reap() {
                left.retain(|&p| p != e.pid);
                self.services.exited(e.pid, e.code);
            }
            if left.is_empty() || Instant::now() >= end {
                break;
            }
            let _ = self.sigfd.read();
            sys::poll_readable(&[self.sigfd.raw()], 100);
        }
        left.is_empty()
    }

    /// Reaps until no child is left or `deadline` passes.
    fn wait_all(&mut self, deadline: Duration) {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            sys::reap();
            // ECHILD: nothing left to wait for.
            // SAFETY: waitpid with WNOHANG and a null status pointer.
            let r = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
            if r < 0 {
                return;
            }
            sys::poll_readable(&[self.sigfd.raw()], 100);
            let _ = self.sigfd.read();
        }
    }
}

/// Follows rayosd's event stream on a thread and sends the name of every
/// VM that started (`EventKind::Started`). Reconnects a second after the
/// stream ends (rayosd restarted); ends when the receiver is dropped.
fn follow_vm_starts(client: rayos_api::Client) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let _ = std::thread::Builder::new()
        .name("vm-events".into())
        .spawn(move || {
            // The first time, also the events kept from before we connected
            // (an autostart right after rayosd came up).
            let mut since = Some(0);
            loop {
                let mut open = true;
                let _ = client.events(since.take(), |ev| {
                    if ev.event == rayos_api::EventKind::Started {
                        open = tx.send(ev.vm).is_ok();
                    }
                    open
                });
                if !open {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
    rx
}

/// True when the evdev device reported a KEY_POWER press.
fn power_key_pressed(f: &mut File) -> bool {
    const EV_KEY: u16 = 1;
    const KEY_POWER: u16 = 116;
    // struct input_event on 64-bit: timeval (16) + type u16 + code u16 + value i32.
    let mut buf = [0u8; 24 * 16];
    let mut pressed = false;
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        for ev in buf[..n].chunks_exact(24) {
            let ty = u16::from_le_bytes([ev[16], ev[17]]);
            let code = u16::from_le_bytes([ev[18], ev[19]]);
            let value = i32::from_le_bytes([ev[20], ev[21], ev[22], ev[23]]);
            if ty == EV_KEY && code == KEY_POWER && value == 1 {
                pressed = true;
            }
        }
    }
    pressed
}

/// `[target] disk` of an answer file, read leniently (the engine does the
/// strict parse).
pub fn answers_target(text: &str) -> Option<String> {
    let v: toml::Value = toml::from_str(text).ok()?;
    v.get("target")?.get("disk")?.as_str().map(String::from)
}

/// Copies the installer's output to the console, the kernel log and the log
/// file; `RAYOS_*` markers stay lines of their own, exactly as printed.
fn relay_installer_output(r: std::io::PipeReader) {
    use std::io::BufRead;
    for line in std::io::BufReader::new(r).split(b'\n') {
        let Ok(line) = line else { break };
        let text = String::from_utf8_lossy(&line);
        // A progress bar on a terminal redraws with \r: keep the last frame.
        let text = text.rsplit('\r').next().unwrap_or_default().trim_end();
        if text.is_empty() {
            continue;
        }
        if text.starts_with(marker::PREFIX) {
            log::relay_marker(text);
        } else {
            log::info(format!("install: {text}"));
        }
    }
}

/// What to do after a successful unattended install: `[finish] action =
/// "reboot" | "poweroff"` (default reboot).
pub fn answers_after(text: &str) -> PowerAction {
    let v: Option<toml::Value> = toml::from_str(text).ok();
    match v
        .as_ref()
        .and_then(|v| v.get("finish"))
        .and_then(|f| f.get("action"))
        .and_then(|a| a.as_str())
    {
        Some("poweroff") | Some("power-off") | Some("shutdown") => PowerAction::PowerOff,
        _ => PowerAction::Reboot,
    }
}

/// The first disk an unattended install may take: not the installer
/// medium, writable, at least 8 GiB; fixed disks before removable ones.
pub fn first_suitable_disk(
    disks: &[rayos_disk::report::Disk],
    medium: Option<&Path>,
) -> Option<String> {
    let mut v: Vec<&rayos_disk::report::Disk> = disks
        .iter()
        .filter(|d| Some(d.path.as_path()) != medium && !d.read_only && d.size_bytes >= 8 << 30)
        .collect();
    v.sort_by_key(|d| d.removable);
    v.first().map(|d| d.path.display().to_string())
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
    fn answer_file_target_and_finish() {
        let t = "version = 1\n[target]\ndisk = \"/dev/vda\"\nmode = \"whole-disk\"\n[finish]\naction = \"poweroff\"\n";
        assert_eq!(answers_target(t).as_deref(), Some("/dev/vda"));
        assert_eq!(answers_after(t), PowerAction::PowerOff);
        assert_eq!(answers_target("[target]\nmode = \"whole-disk\"\n"), None);
        assert_eq!(answers_after("not toml ["), PowerAction::Reboot);
        assert_eq!(answers_after(""), PowerAction::Reboot);
    }

    #[test]
    fn step_lists_are_linear_and_named_uniquely() {
        for list in [INSTALLED, RECOVERY, INSTALLER] {
            let mut names: Vec<&str> = COMMON.iter().chain(list).map(|s| s.name).collect();
            let n = names.len();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), n);
        }
        assert!(COMMON[0].fatal, "only the kernel filesystems are fatal");
        assert!(COMMON[1..].iter().chain(INSTALLED).all(|s| !s.fatal));
        // rayosd needs the data volume, so it comes after mounting it.
        let pos = |n: &str| INSTALLED.iter().position(|s| s.name == n).unwrap();
        assert!(pos("mount-data") < pos("rayosd"));
        // The presenter only starts once rayosd has (it needs its API).
        assert!(pos("rayosd") < pos("presenter"));
        assert!(pos("check-data") < pos("mount-data"));
        assert!(
            !RECOVERY.iter().any(|s| s.name == "rayosd"),
            "recovery starts no VMs"
        );
    }

    /// rayosd's event stream, faked: each connection gets the events of
    /// one list, then the stream ends (as when rayosd restarts).
    fn fake_event_streams(
        sock: &Path,
        streams: Vec<Vec<(rayos_api::EventKind, &'static str)>>,
    ) -> std::thread::JoinHandle<Vec<Option<String>>> {
        use rayos_api::http;
        let listener = std::os::unix::net::UnixListener::bind(sock).unwrap();
        std::thread::spawn(move || {
            let mut since = Vec::new();
            let mut seq = 0;
            for events in streams {
                let (s, _) = listener.accept().unwrap();
                let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                let req = http::read_request(&mut r, http::Limits::default()).unwrap();
                assert_eq!(req.path, "/v1/events");
                since.push(req.query_param("since").map(String::from));
                let mut w = s;
                http::write_chunked_head(&mut w, 200, "application/x-ndjson").unwrap();
                for (event, vm) in events {
                    seq += 1;
                    let ev = rayos_api::Event {
                        seq,
                        time_ms: 0,
                        vm: vm.into(),
                        event,
                        state: rayos_api::VmState::Running,
                        detail: String::new(),
                    };
                    let mut line = serde_json::to_vec(&ev).unwrap();
                    line.push(b'\n');
                    http::write_chunk(&mut w, &line).unwrap();
                }
                http::write_chunk(&mut w, b"").unwrap();
            }
            since
        })
    }

    #[test]
    fn vm_starts_are_learnt_from_the_event_stream_across_reconnects() {
        use rayos_api::EventKind as E;
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("api.sock");
        let server = fake_event_streams(
            &sock,
            vec![
                vec![(E::Starting, "lin"), (E::Started, "lin"), (E::Saved, "win")],
                vec![(E::Started, "win")],
            ],
        );
        let rx = follow_vm_starts(rayos_api::Client::new(&sock));
        let t = Duration::from_secs(20);
        assert_eq!(rx.recv_timeout(t).as_deref(), Ok("lin"));
        assert_eq!(rx.recv_timeout(t).as_deref(), Ok("win"));
        // The first connection asks for the events kept from before it
        // (an autostart right after rayosd came up); reconnects do not.
        assert_eq!(server.join().unwrap(), vec![Some("0".to_string()), None]);
    }

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
