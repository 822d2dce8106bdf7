//! The QEMU backend: [`QemuVmm`] implements [`Vmm`], [`QemuHandle`]
//! implements [`VmHandle`].
//!
//! Process model: QEMU runs with `-daemonize`, so it is reparented away from
//! rayosd, sits in its own session and outlives the daemon; its pid file,
//! QMP, VNC and guest-agent sockets live in the VM's run directory, which is
//! how [`Vmm::attach`] finds it again. QEMU's stderr until it daemonizes goes
//! to `<run_dir>/qemu-start.log` (start-up errors are reported from there);
//! the guest's serial console is appended by QEMU itself to
//! `<vm_dir>/logs/console.log`.
//!
//! Saved state: QEMU 7.2 has no `file:` migration URI and runs `exec:` URIs
//! through `/bin/sh`, which the installed system does not have. So the
//! backend hands QEMU a descriptor over QMP (`getfd` with SCM_RIGHTS, then
//! `fd:` migration): by default ([`SaveFormat::Raw`]) the state file itself,
//! which QEMU writes or reads directly; with [`SaveFormat::Zstd`] one end of
//! a pipe to a `zstd` the backend spawns. A restore starts the identical
//! command line with `-incoming defer` and tells the two forms by the
//! file's first bytes, so either form restores whatever the setting. The
//! saving or restoring process waits for zstd itself (no status file).
//! Before the guest is stopped, the free space of the state's file system
//! decides between the configured form, a compressed fallback and a
//! refusal (`space`).
//! Disks are not part of the state; the caller must keep them unchanged
//! while saved.
//!
//! Limits: x86_64 only; one QMP client at a time (a second connection waits
//! until the first closes, which is what lets a restarted daemon attach).

mod accel;
pub mod cmdline;
pub mod console;
mod handle;
pub mod image;
pub mod kvm_probe;
pub mod media;
pub mod ovmf_certs;
pub mod process;
mod space;
mod swtpm;
mod write_behind;

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub(crate) use rayos_base::error::chain;
use rayos_qmp::QmpClient;
use rayos_state::registry::BootSpec;

pub use accel::{
    Accel, AccelDecision, AccelInputs, CpuVirt, MODULES_REFUSED, ModuleState, PROBE_TIMEOUT,
    TcgReason, accel_in_cmdline, decide, running_accel,
};
pub use cmdline::{CommandLine, LaunchPart, Ovmf};
pub use handle::QemuHandle;

use crate::{Launch, VmHandle, VmSpec, Vmm, VmmError};

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// `QEMU_VM_FILE_MAGIC`, the first bytes of every migration stream.
const QEMU_VM_MAGIC: [u8; 4] = *b"QEVM";

/// Where the backend finds its tools and how long it waits for them.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The QEMU binary (`qemu-system-x86_64`).
    pub qemu: PathBuf,
    /// The swtpm binary.
    pub swtpm: PathBuf,
    /// The zstd binary (saved states are compressed through it).
    pub zstd: PathBuf,
    /// Directory of the OVMF 4M images.
    pub ovmf_dir: PathBuf,
    /// `None`: `RAYOS_ACCEL`, else probe.
    pub accel: Option<Accel>,
    /// QEMU until it has daemonized and answers QMP.
    pub start_timeout: Duration,
    /// One QMP command.
    pub qmp_timeout: Duration,
    /// A whole save or restore (the guest's RAM through zstd).
    pub migrate_timeout: Duration,
    /// How saves are written; restores read either.
    pub save_format: SaveFormat,
}

/// The form of a saved state file. A restore tells them by their first
/// bytes, so states saved in either form stay restorable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SaveFormat {
    /// QEMU's migration stream as it is (zero pages are a header each):
    /// QEMU writes the file itself, 2–3x faster than through zstd on two
    /// cores, for a file up to 3x larger (docs/vm-profiles.md, "Save and
    /// restore speed").
    #[default]
    Raw,
    /// The stream through `zstd -1 -T2`.
    Zstd,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            qemu: "qemu-system-x86_64".into(),
            swtpm: "swtpm".into(),
            zstd: "zstd".into(),
            ovmf_dir: "/usr/share/OVMF".into(),
            accel: None,
            start_timeout: Duration::from_secs(30),
            qmp_timeout: Duration::from_secs(10),
            migrate_timeout: Duration::from_secs(300),
            save_format: SaveFormat::default(),
        }
    }
}

/// The QEMU backend.
#[derive(Debug, Default)]
pub struct QemuVmm {
    config: QemuConfig,
    version: OnceLock<Result<String, String>>,
}

impl QemuVmm {
    /// The backend with `config`; nothing is started yet.
    pub fn new(config: QemuConfig) -> Self {
        QemuVmm {
            config,
            version: OnceLock::new(),
        }
    }

    /// What the backend was made with.
    pub fn config(&self) -> &QemuConfig {
        &self.config
    }

    /// The accelerator launches will use and, for TCG, why: the
    /// configured one, else this machine's decision (made once).
    pub fn accel_decision(&self) -> AccelDecision {
        match self.config.accel {
            Some(a) => a.into(),
            None => accel::detect(),
        }
    }

    /// The accelerator launches will use.
    pub fn accel(&self) -> Accel {
        self.accel_decision().accel()
    }

    /// The command line `vm` gets for `launch`.
    pub fn command_line(&self, vm: &VmSpec, launch: LaunchPart) -> CommandLine {
        CommandLine::build(vm, self.accel(), &self.config.ovmf_dir, launch)
    }

    /// `qemu-system-x86_64 --version`, run once.
    pub fn qemu_version(&self) -> Result<String, VmmError> {
        self.version
            .get_or_init(|| {
                let out = Command::new(&self.config.qemu)
                    .arg("--version")
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| {
                        format!(
                            "cannot run {}: {e} (install qemu-system-x86)",
                            self.config.qemu.display()
                        )
                    })?;
                if !out.status.success() {
                    return Err(format!("{} --version failed", self.config.qemu.display()));
                }
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            })
            .clone()
            .map_err(|detail| VmmError::EarlyExit {
                vm: String::new(),
                detail,
            })
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VmmError + '_ {
        move |source| VmmError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Creates the directories a launch needs and removes stale sockets and
    /// pid files of a QEMU that is gone. The VM's directory is made 0700
    /// and its logs 0600 (the console may show anything the guest prints);
    /// the logs are created here because QEMU and swtpm would create them
    /// with the default umask.
    fn prepare_dirs(&self, vm: &VmSpec) -> Result<(), VmmError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&vm.run_dir)
            .map_err(Self::io(&vm.run_dir))?;
        let logs = vm.vm_dir.join(rayos_state::layout::vm::LOGS);
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&logs)
            .map_err(Self::io(&logs))?;
        for d in [&vm.vm_dir, &logs] {
            private(d, 0o700)?;
        }
        for f in [cmdline::vmdir::CONSOLE_LOG, cmdline::vmdir::SWTPM_LOG] {
            let p = vm.vm_dir.join(f);
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&p)
                .map_err(Self::io(&p))?;
            private(&p, 0o600)?;
        }
        // Disks hold the guest's data: root's alone, whoever put them there.
        for d in &vm.def.disks {
            let p = if d.path.is_absolute() {
                d.path.clone()
            } else {
                vm.vm_dir.join(&d.path)
            };
            let mode = std::fs::metadata(&p)
                .map_err(Self::io(&p))?
                .permissions()
                .mode();
            private(&p, mode & 0o700)?;
        }
        for f in [
            cmdline::run::QMP,
            cmdline::run::VNC,
            cmdline::run::QGA,
            cmdline::run::CONSOLE,
            cmdline::run::QEMU_PID,
            cmdline::run::QEMU_START_LOG,
        ] {
            let _ = std::fs::remove_file(vm.run_dir.join(f));
        }
        Ok(())
    }

    /// Writes the guest's first-boot credentials (0600, in the 0700 run
    /// directory) for QEMU's `-fw_cfg …,file=`; removes stale ones.
    fn write_guest_config(&self, vm: &VmSpec) -> Result<(), VmmError> {
        let dir = vm.run_dir.join(cmdline::run::GUEST_CONFIG);
        let _ = std::fs::remove_dir_all(&dir);
        let Some(g) = &vm.def.guest else {
            return Ok(());
        };
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(Self::io(&dir))?;
        for (name, value) in g.credentials() {
            let path = cmdline::guest_config_file(&vm.run_dir, name);
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(Self::io(&path))?;
            f.write_all(value.as_bytes()).map_err(Self::io(&path))?;
        }
        Ok(())
    }

    /// Copies the OVMF VARS template to the VM's `ovmf-vars.fd` once; an
    /// existing copy is the VM's own variable store and is never touched.
    fn ensure_vars(&self, vm: &VmSpec, secure_boot: bool) -> Result<(), VmmError> {
        let ovmf = Ovmf::for_secure_boot(&self.config.ovmf_dir, secure_boot);
        for (what, p) in [
            ("OVMF code", &ovmf.code),
            ("OVMF VARS template", &ovmf.vars_template),
        ] {
            if !p.is_file() {
                return Err(VmmError::Missing {
                    vm: vm.def.name.clone(),
                    what,
                    path: p.clone(),
                });
            }
        }
        let vars = vm.vm_dir.join(rayos_state::layout::vm::OVMF_VARS);
        if vars.exists() {
            return Ok(());
        }
        // Copy under a temporary name so a crash never leaves a truncated
        // store that would then be kept forever.
        let tmp = vm.vm_dir.join(".ovmf-vars.fd.tmp");
        std::fs::copy(&ovmf.vars_template, &tmp).map_err(Self::io(&tmp))?;
        // The copy has the template's mode; the variables are the VM's.
        private(&tmp, 0o600)?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(Self::io(&tmp))?;
        std::fs::rename(&tmp, &vars).map_err(Self::io(&vars))?;
        sync_dir(&vm.vm_dir);
        Ok(())
    }

    fn check_inputs(&self, vm: &VmSpec) -> Result<(), VmmError> {
        let missing = |what, path: &Path| VmmError::Missing {
            vm: vm.def.name.clone(),
            what,
            path: path.to_path_buf(),
        };
        if let BootSpec::DirectKernel { kernel, initrd, .. } = &vm.def.boot {
            if !kernel.is_file() {
                return Err(missing("kernel", kernel));
            }
            if let Some(i) = initrd
                && !i.is_file()
            {
                return Err(missing("initrd", i));
            }
        }
        let refused = |e: image::ImageError| VmmError::Refused {
            vm: vm.def.name.clone(),
            detail: chain(&e),
        };
        for d in &vm.def.disks {
            let p = if d.path.is_absolute() {
                d.path.clone()
            } else {
                vm.vm_dir.join(&d.path)
            };
            if !p.exists() {
                return Err(missing("disk", &p));
            }
            image::check_disk(&p, d.format).map_err(refused)?;
        }
        // Media: image files, or sticks no partition of which is in use
        // (never RayOS's own disks; `media::check`).
        for m in vm.def.media.iter().chain(&vm.def.usb_media) {
            if !m.exists() {
                return Err(missing("installation media", m));
            }
            media::check(m).map_err(refused)?;
        }
        if vm.def.tpm {
            swtpm::check_paths(vm)?;
        }
        Ok(())
    }

    /// Rejects a state file that is neither a QEMU migration stream nor a
    /// zstd-compressed one before any process starts (reads only its first
    /// bytes).
    fn check_state_file(&self, vm: &VmSpec, state_file: &Path) -> Result<(), VmmError> {
        let fail = |detail: String| VmmError::Restore {
            vm: vm.def.name.clone(),
            detail,
        };
        if !state_is_compressed(state_file).map_err(&fail)? {
            return Ok(());
        }
        let mut child = Command::new(&self.config.zstd)
            .args(["-q", "-dc"])
            .arg(state_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                fail(format!(
                    "cannot run {}: {e} (install zstd)",
                    self.config.zstd.display()
                ))
            })?;
        let mut head = [0u8; 8];
        let read = child
            .stdout
            .take()
            .map(|mut out| out.read_exact(&mut head).is_ok())
            .unwrap_or(false);
        let _ = child.kill();
        let _ = child.wait();
        if !read || head[..4] != QEMU_VM_MAGIC {
            return Err(fail(format!(
                "{} does not hold a QEMU saved state",
                state_file.display()
            )));
        }
        Ok(())
    }

    /// Runs QEMU until it has daemonized; returns the daemon's pid.
    fn spawn(&self, vm: &VmSpec, cmd: &CommandLine) -> Result<u32, VmmError> {
        let name = vm.def.name.clone();
        let log_path = vm.run_dir.join(cmdline::run::QEMU_START_LOG);
        let log = File::create(&log_path).map_err(Self::io(&log_path))?;
        let mut child = Command::new(&self.config.qemu)
            .args(cmd.argv())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| VmmError::Spawn {
                vm: name.clone(),
                source,
            })?;
        // The foreground process exits once the daemon has initialised.
        let deadline = Instant::now() + self.config.start_timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                // Short: every restore waits here (QEMU daemonizes within
                // tens of milliseconds).
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(VmmError::Timeout(
                        self.config.start_timeout,
                        format!("QEMU of VM {name} to start"),
                    ));
                }
                Err(source) => return Err(VmmError::Spawn { vm: name, source }),
            }
        };
        let stderr = std::fs::read_to_string(&log_path).unwrap_or_default();
        if !status.success() {
            return Err(VmmError::EarlyExit {
                vm: name,
                detail: format!("{status}: {}", last_lines(&stderr, 5)),
            });
        }
        process::read_pid(&vm.run_dir.join(cmdline::run::QEMU_PID)).ok_or_else(|| {
            VmmError::EarlyExit {
                vm: name,
                detail: "QEMU daemonized but wrote no pid file".into(),
            }
        })
    }

    fn launch_inner(&self, vm: &VmSpec, how: &Launch) -> Result<QemuHandle, VmmError> {
        let name = vm.def.name.clone();
        if let Some(h) = self.attach(vm)? {
            return Err(VmmError::Spawn {
                vm: name,
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("QEMU already runs for this VM (pid {})", h.pid()),
                ),
            });
        }
        self.check_inputs(vm)?;
        // sun_path holds 107 bytes plus the terminator; QEMU would fail
        // with a less helpful message.
        let longest = [
            cmdline::run::QMP,
            cmdline::run::VNC,
            cmdline::run::QGA,
            cmdline::run::CONSOLE,
            cmdline::run::SWTPM,
        ]
        .iter()
        .map(|f| vm.run_dir.join(f))
        .max_by_key(|p| p.as_os_str().len())
        .unwrap_or_default();
        if longest.as_os_str().len() > 107 {
            return Err(VmmError::Spawn {
                vm: name,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "run directory {} is too long for unix sockets: use a path under 90 bytes",
                        vm.run_dir.display()
                    ),
                ),
            });
        }
        if let Launch::Restore { state_file } = how
            && !state_file.is_file()
        {
            return Err(VmmError::Missing {
                vm: name,
                what: "saved state",
                path: state_file.clone(),
            });
        }
        if let Launch::Restore { state_file } = how {
            self.check_state_file(vm, state_file)?;
        }
        self.prepare_dirs(vm)?;
        self.write_guest_config(vm)?;
        if let BootSpec::Uefi { secure_boot } = vm.def.boot {
            self.ensure_vars(vm, secure_boot)?;
        }
        let part = match how {
            Launch::Cold => LaunchPart::Cold,
            Launch::Restore { .. } => LaunchPart::Incoming,
        };
        let cmd = self.command_line(vm, part);
        let tpm_pid = if vm.def.tpm {
            Some(swtpm::start(
                vm,
                &self.config.swtpm,
                self.config.start_timeout,
            )?)
        } else {
            None
        };
        let pid = match self.spawn(vm, &cmd) {
            Ok(pid) => pid,
            Err(e) => {
                swtpm::stop(vm);
                return Err(e);
            }
        };
        let qmp = match QmpClient::connect_retry(
            &vm.run_dir.join(cmdline::run::QMP),
            self.config.start_timeout,
        ) {
            Ok(mut q) => {
                q.set_timeout(self.config.qmp_timeout);
                q
            }
            Err(e) => {
                process::terminate(pid, Duration::from_secs(2));
                swtpm::stop(vm);
                return Err(VmmError::Qmp {
                    vm: name,
                    detail: chain(&e),
                });
            }
        };
        let mut handle = QemuHandle::new(vm, &self.config, pid, tpm_pid, qmp);
        if let Launch::Restore { state_file } = how
            && let Err(e) = handle.restore_from(state_file)
        {
            // Never leave a half-restored QEMU behind.
            let _ = handle.kill();
            return Err(e);
        }
        Ok(handle)
    }
}

impl Vmm for QemuVmm {
    fn accelerator(&self) -> AccelDecision {
        self.accel_decision()
    }

    fn fingerprint(&self, vm: &VmSpec) -> Result<String, VmmError> {
        let cmd = self.command_line(vm, LaunchPart::Cold);
        let text = format!(
            "rayos-vmm qemu fingerprint v1\n{}\n{}",
            self.qemu_version()?,
            cmd.config_text()
        );
        Ok(format!(
            "sha256:{}",
            rayos_base::hash::sha256(text.as_bytes())
        ))
    }

    fn launch(&self, vm: &VmSpec, how: &Launch) -> Result<Box<dyn VmHandle>, VmmError> {
        Ok(Box::new(self.launch_inner(vm, how)?))
    }

    fn guest_exec(
        &self,
        vm: &VmSpec,
        spec: &crate::ExecSpec,
    ) -> Result<Option<crate::ExecOutcome>, VmmError> {
        handle::guest_exec(vm, spec)
    }

    fn sync_guest_time(
        &self,
        vm: &VmSpec,
        agent_wait: Duration,
    ) -> Result<Option<crate::ClockSync>, VmmError> {
        handle::sync_guest_time(vm, agent_wait)
    }

    fn attach(&self, vm: &VmSpec) -> Result<Option<Box<dyn VmHandle>>, VmmError> {
        let pid_file = vm.run_dir.join(cmdline::run::QEMU_PID);
        let Some(pid) = process::read_pid(&pid_file) else {
            return Ok(None);
        };
        // The pid may have been reused by an unrelated process since; only a
        // QEMU started with this VM's uuid is ours.
        if !process::alive_with_arg(pid, &vm.def.id.to_string()) {
            return Ok(None);
        }
        let mut qmp =
            QmpClient::connect_retry(&vm.run_dir.join(cmdline::run::QMP), self.config.qmp_timeout)
                .map_err(|e| VmmError::Qmp {
                    vm: vm.def.name.clone(),
                    detail: chain(&e),
                })?;
        qmp.set_timeout(self.config.qmp_timeout);
        let tpm_pid = process::read_pid(&vm.run_dir.join(cmdline::run::SWTPM_PID))
            .filter(|p| process::alive(*p));
        Ok(Some(Box::new(QemuHandle::new(
            vm,
            &self.config,
            pid,
            tpm_pid,
            qmp,
        ))))
    }
}

/// Whether `state_file` is zstd-compressed (else it starts with QEMU's own
/// header); an error names what else it is.
pub(crate) fn state_is_compressed(state_file: &Path) -> Result<bool, String> {
    let mut magic = [0u8; 4];
    File::open(state_file)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| format!("cannot read {}: {e}", state_file.display()))?;
    match magic {
        ZSTD_MAGIC => Ok(true),
        QEMU_VM_MAGIC => Ok(false),
        _ => Err(format!(
            "{} is not a saved state (neither QEMU's stream nor zstd)",
            state_file.display()
        )),
    }
}

/// Sets `mode` on `path` when it differs (RayOS runs as root and owns
/// what it creates).
pub(crate) fn private(path: &Path, mode: u32) -> Result<(), VmmError> {
    let md = std::fs::metadata(path).map_err(QemuVmm::io(path))?;
    if md.permissions().mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(QemuVmm::io(path))?;
    }
    Ok(())
}

/// fsyncs a directory so a rename in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    let out = lines[start..].join(" | ");
    if out.is_empty() {
        "no error message".into()
    } else {
        out
    }
}
