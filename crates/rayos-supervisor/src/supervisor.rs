//! The supervisor proper: every VM's runtime state, the operations the API
//! offers on it, the monitor that watches device models, and host shutdown.
//!
//! Concurrency: each VM has a [`Slot`] with two locks. `op` owns the device
//! model handle and is held for the whole of a long operation (start, save,
//! stop); a second operation on the same VM meanwhile gets 409 "busy"
//! instead of queueing. `status` is held only briefly, so `show`/`list`
//! answer at once, also while an operation runs (they then report the
//! transient state: starting, saving, …). Lock order: `op` → `status` →
//! `presented`; the registry lock is never held with a slot lock.
//!
//! Every state change goes through [`lifecycle::next`]; a change the table
//! refuses is a 409 for the caller.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use rayos_api::{ActionReply, BootKind, CreateRequest, Health, StopRequest, VmInfo, VmState};
use rayos_state::{
    DataLayout, Networking, OnHostShutdown, Policy, SubsystemPolicy, VmDefinition, VmKind,
};
use rayos_vmm::{Launch, RunState, VmHandle, VmSpec, Vmm, VmmError};

use crate::cgroup::Cgroups;
use crate::console;
use crate::create::{self, CreateError};
use crate::events::EventBus;
use crate::lifecycle::{self, Step};
use crate::saved::{self, Found, SavedError};
use crate::store::{self, RegistryStore, StoreError};

/// Tunables of one daemon; [`Config::new`] has the production values.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    /// Parent of the per-VM run directories (`<run_dir>/vm/<id>/`); the
    /// daemon uses the directory of its API socket.
    pub run_dir: PathBuf,
    /// cgroup v2 directory for CPU weights (`None`: no weights).
    pub cgroup_root: Option<PathBuf>,
    /// How long `stop` waits for the guest after the ACPI power button.
    pub stop_timeout: Duration,
    /// Everything host shutdown does must finish within this.
    pub shutdown_deadline: Duration,
    pub monitor_interval: Duration,
    pub console_max_bytes: u64,
    /// First restart delay after a crash; doubles per crash up to the max.
    pub restart_backoff: Duration,
    pub restart_backoff_max: Duration,
}

impl Config {
    pub fn new(state_dir: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        Config {
            state_dir: state_dir.into(),
            run_dir: run_dir.into(),
            cgroup_root: None,
            stop_timeout: Duration::from_secs(60),
            shutdown_deadline: Duration::from_secs(90),
            monitor_interval: Duration::from_millis(500),
            console_max_bytes: 4 * 1024 * 1024,
            restart_backoff: Duration::from_secs(2),
            restart_backoff_max: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("no VM named {0:?}: `rayos vm list` shows the VMs")]
    NotFound(String),
    #[error("VM {vm} is {state}: cannot {action} it{hint}")]
    WrongState {
        vm: String,
        state: VmState,
        action: &'static str,
        hint: &'static str,
    },
    #[error("VM {vm} is busy ({state}): try again when that is done")]
    Busy { vm: String, state: VmState },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("a VM named {0:?} already exists: choose another name or delete it first")]
    Exists(String),
    #[error("rayosd is shutting down")]
    ShuttingDown,
    #[error("cannot {action} VM {vm}")]
    Vmm {
        action: &'static str,
        vm: String,
        #[source]
        source: VmmError,
    },
    #[error("cannot create VM {vm}")]
    Create {
        vm: String,
        #[source]
        source: CreateError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Saved(#[from] SavedError),
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl OpError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            OpError::NotFound(_) => 404,
            OpError::WrongState { .. } | OpError::Busy { .. } | OpError::Exists(_) => 409,
            OpError::Store(StoreError::ReadOnly(_)) => 409,
            OpError::Invalid(_) => 400,
            OpError::Create {
                source: CreateError::Invalid(_),
                ..
            } => 400,
            OpError::Forbidden(_) => 403,
            OpError::ShuttingDown => 503,
            _ => 500,
        }
    }
}

/// "a: b: c" from an error and its sources, for replies and logs.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the daemon down with poisoned locks;
    // the data under these locks is consistent after every statement.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Status {
    def: VmDefinition,
    state: VmState,
    pid: Option<u32>,
    vnc: Option<PathBuf>,
    console: Option<PathBuf>,
    last_boot: Option<BootKind>,
    last_error: Option<String>,
    crash_console: Vec<String>,
    crash_count: u32,
    restart_at: Option<Instant>,
    removed: bool,
}

struct Slot {
    name: String,
    op: Mutex<Option<Box<dyn VmHandle>>>,
    status: Mutex<Status>,
    /// (definition, fingerprint) of the last fingerprint computed; the
    /// backend may run programs to compute one, and `show` is frequent.
    fingerprint: Mutex<Option<(VmDefinition, String)>>,
}

impl Slot {
    /// A VM as the supervisor first knows it: no process, no history.
    fn new(def: &VmDefinition, state: VmState) -> Slot {
        Slot {
            name: def.name.clone(),
            op: Mutex::new(None),
            status: Mutex::new(Status {
                def: def.clone(),
                state,
                pid: None,
                vnc: None,
                console: None,
                last_boot: None,
                last_error: None,
                crash_console: Vec::new(),
                crash_count: 0,
                restart_at: None,
                removed: false,
            }),
            fingerprint: Mutex::new(None),
        }
    }
}

type OpGuard<'a> = MutexGuard<'a, Option<Box<dyn VmHandle>>>;

/// How long a request waits for a VM's operation lock before answering busy.
const OP_PATIENCE: Duration = Duration::from_secs(3);

pub struct Supervisor {
    cfg: Config,
    layout: DataLayout,
    vmm: Arc<dyn Vmm>,
    policy: Policy,
    registry: Mutex<RegistryStore>,
    slots: Mutex<BTreeMap<String, Arc<Slot>>>,
    presented: Mutex<Option<String>>,
    pub events: EventBus,
    notes: Mutex<Vec<String>>,
    cgroups: Option<Cgroups>,
    shutting_down: AtomicBool,
}

/// Prints a machine-readable marker line on stdout (tests and the
/// end-to-end harness look for these).
pub fn marker(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// `VmRSS` of this process in KiB.
fn own_rss_kib() -> Option<u64> {
    fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|c| c != 'Z' && c != 'X'),
        Err(_) => false,
    }
}

impl Supervisor {
    /// Loads policy and registry, and finds device models still running
    /// from a previous daemon. Does not start anything: see [`Self::autostart`].
    pub fn open(cfg: Config, vmm: Arc<dyn Vmm>) -> Result<Arc<Supervisor>, OpError> {
        let layout = DataLayout::new(&cfg.state_dir);
        for d in [layout.root().to_path_buf(), layout.vm_root()] {
            fs::create_dir_all(&d).map_err(|source| OpError::Io {
                what: "create",
                path: d.clone(),
                source,
            })?;
        }
        let mut notes = Vec::new();
        let (policy, n) = store::load_policy(&layout);
        notes.extend(n);
        let (registry, n) = RegistryStore::load(&layout);
        notes.extend(n);
        let cgroups = match &cfg.cgroup_root {
            Some(root) => match Cgroups::open(root) {
                Ok(c) => Some(c),
                Err(e) => {
                    notes.push(format!("CPU weights are off: {}", chain(&e)));
                    None
                }
            },
            None => None,
        };
        for n in &notes {
            eprintln!("rayosd: note: {n}");
        }
        let mut slots = BTreeMap::new();
        for def in &registry.get().vms {
            let vm_dir = layout.vm_dir(def.id);
            let state = if saved::state_file(&vm_dir).exists() {
                VmState::Saved
            } else {
                VmState::Stopped
            };
            slots.insert(def.name.clone(), Arc::new(Slot::new(def, state)));
        }
        let sup = Arc::new(Supervisor {
            cfg,
            layout,
            vmm,
            policy,
            registry: Mutex::new(registry),
            slots: Mutex::new(slots),
            presented: Mutex::new(None),
            events: EventBus::default(),
            notes: Mutex::new(notes),
            cgroups,
            shutting_down: AtomicBool::new(false),
        });
        sup.attach_all();
        Ok(sup)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn layout(&self) -> &DataLayout {
        &self.layout
    }

    fn note(&self, text: String) {
        eprintln!("rayosd: note: {text}");
        lock(&self.notes).push(text);
    }

    fn slot(&self, name: &str) -> Result<Arc<Slot>, OpError> {
        lock(&self.slots)
            .get(name)
            .cloned()
            .ok_or_else(|| OpError::NotFound(name.to_string()))
    }

    fn all_slots(&self) -> Vec<Arc<Slot>> {
        lock(&self.slots).values().cloned().collect()
    }

    fn policy_for(&self, kind: VmKind) -> &SubsystemPolicy {
        self.policy.for_kind(kind)
    }

    /// What the backend gets: the definition with policy applied.
    pub fn spec(&self, def: &VmDefinition) -> VmSpec {
        let p = self.policy_for(def.kind);
        let network = match p.networking {
            Networking::Off => false,
            Networking::On => true,
            Networking::ProvisioningOnly => !def.provisioned,
        };
        VmSpec {
            def: def.clone(),
            vm_dir: self.layout.vm_dir(def.id),
            run_dir: self.cfg.run_dir.join("vm").join(def.id.to_string()),
            network,
            cpus: p.cpus.map_or(def.cpus, |c| c.min(def.cpus)),
            memory_mib: p
                .memory_mib
                .map_or(def.memory_mib, |m| m.min(def.memory_mib)),
        }
    }

    fn fingerprint(&self, slot: &Slot, spec: &VmSpec) -> Result<String, VmmError> {
        let mut cache = lock(&slot.fingerprint);
        if let Some((def, fp)) = cache.as_ref()
            && *def == spec.def
        {
            return Ok(fp.clone());
        }
        let fp = self.vmm.fingerprint(spec)?;
        *cache = Some((spec.def.clone(), fp.clone()));
        Ok(fp)
    }

    /// Applies `step` to the VM's state or refuses it.
    fn step(
        &self,
        slot: &Slot,
        st: &mut Status,
        step: Step,
        action: &'static str,
        event: &str,
        detail: impl Into<String>,
    ) -> Result<(), OpError> {
        let Some(to) = lifecycle::next(st.state, step) else {
            return Err(OpError::WrongState {
                vm: slot.name.clone(),
                state: st.state,
                action,
                hint: hint(st.state, action),
            });
        };
        st.state = to;
        if !lifecycle::has_device_model(to) {
            st.pid = None;
            st.vnc = None;
            st.console = None;
            let mut p = lock(&self.presented);
            if p.as_deref() == Some(slot.name.as_str()) {
                *p = None;
            }
        }
        self.events.emit(&slot.name, event, to, detail);
        Ok(())
    }

    fn refuse_if_shutting_down(&self) -> Result<(), OpError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            Err(OpError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// The VM's operation lock, or 409 "busy" when another operation holds
    /// it. Waits up to [`OP_PATIENCE`] first, so a request that meets the
    /// monitor's brief look at the VM (or a screenshot) is not refused.
    fn try_op<'a>(&self, slot: &'a Slot) -> Result<OpGuard<'a>, OpError> {
        let deadline = Instant::now() + OP_PATIENCE;
        loop {
            match slot.op.try_lock() {
                Ok(g) => return Ok(g),
                Err(TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(OpError::Busy {
                        vm: slot.name.clone(),
                        state: lock(&slot.status).state,
                    });
                }
            }
        }
    }

    // ----- reports -----

    fn info(&self, slot: &Slot) -> VmInfo {
        let (def, state, pid, (vnc, console), last_boot, last_error, crash_console, crash_count) = {
            let st = lock(&slot.status);
            (
                st.def.clone(),
                st.state,
                st.pid,
                (st.vnc.clone(), st.console.clone()),
                st.last_boot,
                st.last_error.clone(),
                st.crash_console.clone(),
                st.crash_count,
            )
        };
        let presented = lifecycle::has_device_model(state)
            && lock(&self.presented).as_deref() == Some(slot.name.as_str());
        let spec = self.spec(&def);
        let saved_state = match self.fingerprint(slot, &spec) {
            Ok(fp) => match saved::inspect(&spec.vm_dir, &fp) {
                Found::None => None,
                Found::Usable(s) | Found::Unusable(s, _) => Some(s),
            },
            Err(_) => match saved::inspect(&spec.vm_dir, "") {
                Found::None => None,
                Found::Usable(s) | Found::Unusable(s, _) => Some(s),
            },
        };
        let p = self.policy_for(def.kind);
        VmInfo {
            name: def.name.clone(),
            id: def.id,
            kind: def.kind,
            state,
            presented,
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            network: spec.network,
            provisioned: def.provisioned,
            tpm: def.tpm,
            vm_dir: spec.vm_dir.clone(),
            disks: def
                .disks
                .iter()
                .map(|d| spec.vm_dir.join(&d.path))
                .collect(),
            media: def.media.clone(),
            pid,
            vnc_socket: vnc,
            console_socket: console,
            guest: None,
            last_boot,
            saved_state,
            unusable_states: saved::unusable(&spec.vm_dir),
            last_error,
            crash_console,
            crash_count,
            enabled: p.enabled,
            autostart: p.autostart,
        }
    }

    pub fn list(&self) -> Vec<VmInfo> {
        self.all_slots().iter().map(|s| self.info(s)).collect()
    }

    /// One VM, with what its guest agent reports when it runs and no
    /// operation holds it (`show` never waits for a start or a save).
    pub fn show(&self, name: &str) -> Result<VmInfo, OpError> {
        let slot = self.slot(name)?;
        let mut info = self.info(&slot);
        if info.state == VmState::Running
            && let Ok(mut op) = slot.op.try_lock()
            && let Some(h) = op.as_mut()
            && let Ok(Some(g)) = h.guest_info()
        {
            info.guest = Some(rayos_api::GuestInfo {
                hostname: g.hostname,
                os: g.os,
                kernel: g.kernel,
                addresses: g.addresses,
            });
        }
        Ok(info)
    }

    pub fn health(&self) -> Health {
        Health {
            status: if self.shutting_down.load(Ordering::SeqCst) {
                "shutting_down".into()
            } else {
                "ok".into()
            },
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            vms: lock(&self.slots).len(),
            rss_kib: own_rss_kib(),
            registry_writable: lock(&self.registry).writable(),
            notes: lock(&self.notes).clone(),
        }
    }

    fn reply(&self, slot: &Slot, message: String, boot: Option<BootKind>) -> ActionReply {
        ActionReply {
            vm: self.info(slot),
            message,
            boot,
        }
    }

    // ----- create / delete / provisioned -----

    pub fn create(&self, req: &CreateRequest) -> Result<VmInfo, OpError> {
        self.refuse_if_shutting_down()?;
        create::validate(req).map_err(|source| OpError::Create {
            vm: req.name.clone(),
            source,
        })?;
        // Holding the registry lock for the whole creation serialises
        // creations, so two requests for one name cannot both succeed.
        let mut reg = lock(&self.registry);
        if !reg.writable() {
            return Err(StoreError::ReadOnly(reg.path().to_path_buf()).into());
        }
        if reg.get().by_name(&req.name).is_some() {
            return Err(OpError::Exists(req.name.clone()));
        }
        let id = uuid::Uuid::new_v4();
        let vm_dir = self.layout.vm_dir(id);
        let def = match create::build(req, id, &vm_dir) {
            Ok(d) => d,
            Err(source) => {
                // vm_dir is new (fresh UUID): nothing of the user's is in it.
                let _ = fs::remove_dir_all(&vm_dir);
                return Err(OpError::Create {
                    vm: req.name.clone(),
                    source,
                });
            }
        };
        let mut new = reg.get().clone();
        new.vms.push(def.clone());
        if let Err(e) = reg.replace(new) {
            let _ = fs::remove_dir_all(&vm_dir);
            return Err(e.into());
        }
        drop(reg);
        let slot = Arc::new(Slot::new(&def, VmState::Stopped));
        lock(&self.slots).insert(def.name.clone(), slot.clone());
        self.events.emit(
            &def.name,
            "created",
            VmState::Stopped,
            format!("id {}", def.id),
        );
        Ok(self.info(&slot))
    }

    pub fn delete(&self, name: &str, purge: bool) -> Result<ActionReply, OpError> {
        self.refuse_if_shutting_down()?;
        let slot = self.slot(name)?;
        let op = self.try_op(&slot)?;
        let mut st = lock(&slot.status);
        if op.is_some() || !lifecycle::deletable(st.state) {
            return Err(OpError::WrongState {
                vm: name.to_string(),
                state: st.state,
                action: "delete",
                hint: ": stop it first",
            });
        }
        let info = self.info_locked(&slot, &st);
        {
            let mut reg = lock(&self.registry);
            let mut new = reg.get().clone();
            new.vms.retain(|v| v.id != st.def.id);
            reg.replace(new)?;
        }
        st.removed = true;
        lock(&self.slots).remove(name);
        let vm_dir = self.layout.vm_dir(st.def.id);
        let run_dir = self.spec(&st.def).run_dir;
        let _ = fs::remove_dir_all(run_dir);
        if let Some(c) = &self.cgroups {
            c.remove(name);
        }
        let message = if purge {
            fs::remove_dir_all(&vm_dir).map_err(|source| OpError::Io {
                what: "remove",
                path: vm_dir.clone(),
                source,
            })?;
            format!("deleted VM {name} and its directory {}", vm_dir.display())
        } else {
            format!(
                "deleted VM {name}; its disks and state are kept in {} (delete with --purge to remove them)",
                vm_dir.display()
            )
        };
        self.events.emit(name, "deleted", st.state, message.clone());
        Ok(ActionReply {
            vm: info,
            message,
            boot: None,
        })
    }

    /// `info` for a caller that already holds the status lock.
    fn info_locked(&self, slot: &Slot, st: &Status) -> VmInfo {
        let spec = self.spec(&st.def);
        let p = self.policy_for(st.def.kind);
        VmInfo {
            name: slot.name.clone(),
            id: st.def.id,
            kind: st.def.kind,
            state: st.state,
            presented: false,
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            network: spec.network,
            provisioned: st.def.provisioned,
            tpm: st.def.tpm,
            vm_dir: spec.vm_dir.clone(),
            disks: st
                .def
                .disks
                .iter()
                .map(|d| spec.vm_dir.join(&d.path))
                .collect(),
            media: st.def.media.clone(),
            pid: st.pid,
            vnc_socket: st.vnc.clone(),
            console_socket: st.console.clone(),
            guest: None,
            last_boot: st.last_boot,
            saved_state: None,
            unusable_states: saved::unusable(&spec.vm_dir),
            last_error: st.last_error.clone(),
            crash_console: st.crash_console.clone(),
            crash_count: st.crash_count,
            enabled: p.enabled,
            autostart: p.autostart,
        }
    }

    /// Marks installation done: media are detached and `provisioning_only`
    /// networking goes off at the next start.
    pub fn provisioned(&self, name: &str) -> Result<ActionReply, OpError> {
        let slot = self.slot(name)?;
        let changed = self.mark_provisioned(&slot)?;
        let message = if changed {
            format!(
                "VM {name} is provisioned: media are detached and provisioning-only networking is off from its next start"
            )
        } else {
            format!("VM {name} was already provisioned")
        };
        Ok(self.reply(&slot, message, None))
    }

    fn mark_provisioned(&self, slot: &Slot) -> Result<bool, OpError> {
        let id = {
            let st = lock(&slot.status);
            if st.def.provisioned {
                return Ok(false);
            }
            st.def.id
        };
        let def = {
            let mut reg = lock(&self.registry);
            let mut new = reg.get().clone();
            let Some(def) = new.vms.iter_mut().find(|v| v.id == id) else {
                return Err(OpError::NotFound(slot.name.clone()));
            };
            def.provisioned = true;
            let def = def.clone();
            reg.replace(new)?;
            def
        };
        let mut st = lock(&slot.status);
        st.def = def;
        let state = st.state;
        drop(st);
        self.events.emit(&slot.name, "provisioned", state, "");
        Ok(true)
    }

    // ----- start -----

    pub fn start(&self, name: &str, fresh: bool) -> Result<ActionReply, OpError> {
        self.refuse_if_shutting_down()?;
        self.start_inner(name, fresh, false)
    }

    fn start_inner(
        &self,
        name: &str,
        fresh: bool,
        automatic: bool,
    ) -> Result<ActionReply, OpError> {
        let slot = self.slot(name)?;
        let mut op = self.try_op(&slot)?;
        let def = lock(&slot.status).def.clone();
        let p = self.policy_for(def.kind);
        if !p.enabled {
            return Err(OpError::Forbidden(format!(
                "the policy disables {} VMs: set [{}] enabled = true in {} and restart rayosd",
                def.kind,
                def.kind,
                self.layout.policy().display()
            )));
        }
        if op.is_some() {
            let st = lock(&slot.status);
            return Err(OpError::WrongState {
                vm: name.into(),
                state: st.state,
                action: "start",
                hint: " (it already runs)",
            });
        }
        let spec = self.spec(&def);
        let fp = self
            .fingerprint(&slot, &spec)
            .map_err(|source| OpError::Vmm {
                action: "start",
                vm: name.into(),
                source,
            })?;
        let mut notes: Vec<String> = Vec::new();
        let mut found = saved::inspect(&spec.vm_dir, &fp);
        {
            let mut st = lock(&slot.status);
            if !matches!(
                st.state,
                VmState::Stopped | VmState::Saved | VmState::Crashed
            ) {
                return Err(OpError::WrongState {
                    vm: name.into(),
                    state: st.state,
                    action: "start",
                    hint: hint(st.state, "start"),
                });
            }
            if !automatic {
                st.crash_count = 0;
            }
            st.restart_at = None;
            // The files are the truth about saved state.
            st.state = match found {
                Found::None if st.state == VmState::Saved => VmState::Stopped,
                Found::Usable(_) | Found::Unusable(..) => VmState::Saved,
                _ => st.state,
            };
            if fresh && found != Found::None {
                saved::remove(&spec.vm_dir)?;
                self.step(
                    &slot,
                    &mut st,
                    Step::Discard,
                    "start",
                    "discarded",
                    "start --fresh",
                )?;
                notes.push("saved state discarded (--fresh)".into());
                found = Found::None;
            }
            if let Found::Unusable(_, why) = &found {
                let aside = saved::move_aside(&spec.vm_dir)?;
                let msg = format!("saved state kept as {} because {why}", aside.display());
                self.step(
                    &slot,
                    &mut st,
                    Step::Discard,
                    "start",
                    "unusable_state",
                    msg.clone(),
                )?;
                notes.push(msg);
                found = Found::None;
            }
        }

        let mut boot = BootKind::Cold;
        let mut handle = None;
        if let Found::Usable(s) = &found {
            {
                let mut st = lock(&slot.status);
                self.step(&slot, &mut st, Step::Resume, "start", "resuming", "")?;
            }
            match self.vmm.launch(
                &spec,
                &Launch::Restore {
                    state_file: s.path.clone(),
                },
            ) {
                Ok(h) => {
                    boot = BootKind::Resumed;
                    // The guest now changes its disks: the old state must
                    // never be loaded again.
                    if let Err(e) = saved::remove(&spec.vm_dir) {
                        let kept = saved::move_aside(&spec.vm_dir)
                            .map(|a| format!("moved aside to {}", a.display()))
                            .unwrap_or_else(|e| {
                                format!("it could not be moved aside either: {}", chain(&e))
                            });
                        self.note(format!("VM {name}: {}; {kept}", chain(&e)));
                    }
                    handle = Some(h);
                }
                Err(e) => {
                    let why = chain(&e);
                    let aside = match saved::move_aside(&spec.vm_dir) {
                        Ok(a) => a,
                        Err(me) => {
                            // Cold-booting now would leave a state that no
                            // longer matches the disks where the next start
                            // could load it: stay saved instead.
                            let msg = format!(
                                "restoring failed ({why}) and the state could not be kept aside ({}); not cold-booting",
                                chain(&me)
                            );
                            let mut st = lock(&slot.status);
                            st.last_error = Some(msg.clone());
                            let _ = self.step(
                                &slot,
                                &mut st,
                                Step::LaunchFailed,
                                "start",
                                "start_failed",
                                msg,
                            );
                            return Err(me.into());
                        }
                    };
                    let msg = format!(
                        "restoring failed ({why}); saved state kept as {}; cold-booting",
                        aside.display()
                    );
                    notes.push(msg.clone());
                    let mut st = lock(&slot.status);
                    st.last_error = Some(msg.clone());
                    self.step(
                        &slot,
                        &mut st,
                        Step::RestoreFailed,
                        "start",
                        "restore_failed",
                        msg,
                    )?;
                }
            }
        } else {
            let mut st = lock(&slot.status);
            self.step(
                &slot,
                &mut st,
                Step::ColdBoot,
                "start",
                "starting",
                "cold boot",
            )?;
        }
        let mut h = match handle {
            Some(h) => h,
            None => match self.vmm.launch(&spec, &Launch::Cold) {
                Ok(h) => h,
                Err(source) => {
                    let e = OpError::Vmm {
                        action: "start",
                        vm: name.into(),
                        source,
                    };
                    let mut st = lock(&slot.status);
                    st.last_error = Some(chain(&e));
                    self.step(
                        &slot,
                        &mut st,
                        Step::LaunchFailed,
                        "start",
                        "start_failed",
                        chain(&e),
                    )?;
                    return Err(e);
                }
            },
        };
        if boot == BootKind::Resumed {
            match h.sync_guest_time() {
                Ok(true) => notes.push("guest clock set through the guest agent".into()),
                Ok(false) => {}
                Err(e) => notes.push(format!("guest clock not set: {}", chain(&e))),
            }
        }
        let pid = h.pid();
        {
            let mut st = lock(&slot.status);
            st.pid = Some(pid);
            st.vnc = Some(h.vnc_socket());
            st.console = Some(h.console_socket());
            st.last_boot = Some(boot);
            if boot == BootKind::Resumed || notes.is_empty() {
                st.last_error = None;
            }
            self.step(
                &slot,
                &mut st,
                Step::Launched,
                "start",
                "started",
                boot.as_str(),
            )?;
        }
        *op = Some(h);
        drop(op);
        self.place_in_cgroup(name, pid);
        marker(&format!("RAYOS_VM_STARTED:{name}:{}", boot.as_str()));
        let mut message = format!(
            "VM {name} {} (hidden)",
            match boot {
                BootKind::Cold => "cold-booted",
                BootKind::Resumed => "resumed from saved state",
            }
        );
        for n in notes {
            message.push_str("; ");
            message.push_str(&n);
        }
        Ok(self.reply(&slot, message, Some(boot)))
    }

    fn place_in_cgroup(&self, name: &str, pid: u32) {
        if let Some(c) = &self.cgroups {
            let presented = lock(&self.presented).as_deref() == Some(name);
            if let Err(e) = c.place(name, pid, presented) {
                self.note(format!("VM {name}: CPU weight not set: {}", chain(&e)));
            }
        }
    }

    // ----- suspend / stop -----

    pub fn suspend(&self, name: &str) -> Result<ActionReply, OpError> {
        self.refuse_if_shutting_down()?;
        self.suspend_inner(name)
    }

    fn suspend_inner(&self, name: &str) -> Result<ActionReply, OpError> {
        let slot = self.slot(name)?;
        let mut op = self.try_op(&slot)?;
        let def = {
            let mut st = lock(&slot.status);
            if op.is_none() {
                return Err(OpError::WrongState {
                    vm: name.into(),
                    state: st.state,
                    action: "suspend",
                    hint: hint(st.state, "suspend"),
                });
            }
            self.step(&slot, &mut st, Step::Save, "suspend", "saving", "")?;
            st.def.clone()
        };
        let spec = self.spec(&def);
        let fail = |e: OpError| {
            saved::forget_meta(&spec.vm_dir);
            let mut st = lock(&slot.status);
            st.last_error = Some(chain(&e));
            let _ = self.step(
                &slot,
                &mut st,
                Step::SaveFailed,
                "suspend",
                "save_failed",
                chain(&e),
            );
            e
        };
        let fp = match self.fingerprint(&slot, &spec) {
            Ok(fp) => fp,
            Err(source) => {
                return Err(fail(OpError::Vmm {
                    action: "suspend",
                    vm: name.into(),
                    source,
                }));
            }
        };
        if let Err(e) = saved::write_meta(&spec.vm_dir, &fp) {
            return Err(fail(e.into()));
        }
        let h = op
            .as_mut()
            .ok_or_else(|| OpError::Invalid("no device model".into()))?;
        match h.save(&saved::state_file(&spec.vm_dir)) {
            Ok(report) => {
                *op = None;
                let detail = format!(
                    "{} bytes on disk ({} transferred) in {:.2}s",
                    report.bytes,
                    report.transferred,
                    report.duration.as_secs_f64()
                );
                let mut st = lock(&slot.status);
                st.last_error = None;
                self.step(
                    &slot,
                    &mut st,
                    Step::SaveDone,
                    "suspend",
                    "saved",
                    detail.clone(),
                )?;
                drop(st);
                drop(op);
                if let Some(c) = &self.cgroups {
                    c.remove(name);
                }
                Ok(self.reply(&slot, format!("VM {name} saved: {detail}"), None))
            }
            Err(source) => Err(fail(OpError::Vmm {
                action: "save",
                vm: name.into(),
                source,
            })),
        }
    }

    pub fn stop(&self, name: &str, req: &StopRequest) -> Result<ActionReply, OpError> {
        self.refuse_if_shutting_down()?;
        let timeout = req
            .timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(self.cfg.stop_timeout);
        self.stop_inner(name, req.force, timeout)
    }

    fn stop_inner(
        &self,
        name: &str,
        force: bool,
        timeout: Duration,
    ) -> Result<ActionReply, OpError> {
        let slot = self.slot(name)?;
        let mut op = self.try_op(&slot)?;
        {
            let mut st = lock(&slot.status);
            if op.is_none() {
                return Err(OpError::WrongState {
                    vm: name.into(),
                    state: st.state,
                    action: "stop",
                    hint: hint(st.state, "stop"),
                });
            }
            let how = if force {
                "kill"
            } else {
                "guest agent, else ACPI power button"
            };
            self.step(&slot, &mut st, Step::Stop, "stop", "stopping", how)?;
        }
        let vmm_err = |source| OpError::Vmm {
            action: "stop",
            vm: name.into(),
            source,
        };
        let h = op
            .as_mut()
            .ok_or_else(|| OpError::Invalid("no device model".into()))?;
        let mut how = "killed";
        if !force {
            // The guest agent first: it shuts the guest down even where
            // ACPI events are ignored (no acpid, a locked screen); the
            // power button for guests without an agent.
            how = match h.guest_shutdown() {
                Ok(true) if wait_guest_down(h.as_mut(), timeout) => {
                    "shut down by the guest (through its guest agent)"
                }
                Ok(true) => "killed after the guest did not shut down in time",
                Ok(false) | Err(_) => match h.powerdown() {
                    Ok(()) if wait_guest_down(h.as_mut(), timeout) => "shut down by the guest",
                    Ok(()) => "killed after the guest did not shut down in time",
                    Err(_) => "killed (the power button could not be pressed)",
                },
            };
        }
        // With the guest down QEMU may still be there (status "shutdown");
        // end it, and wait so its swtpm is ended too.
        if !matches!(h.state(), Ok(RunState::Exited)) {
            h.kill().map_err(vmm_err)?;
        }
        if !h.wait_exit(Duration::from_secs(15)).map_err(vmm_err)? {
            let pid = h.pid();
            return Err(OpError::Invalid(format!(
                "VM {name}: device model pid {pid} did not exit after kill"
            )));
        }
        *op = None;
        {
            let mut st = lock(&slot.status);
            self.step(&slot, &mut st, Step::StopDone, "stop", "stopped", how)?;
        }
        drop(op);
        if let Some(c) = &self.cgroups {
            c.remove(name);
        }
        Ok(self.reply(&slot, format!("VM {name} stopped: {how}"), None))
    }

    // ----- present / hide -----

    pub fn present(&self, name: &str) -> Result<ActionReply, OpError> {
        self.refuse_if_shutting_down()?;
        let slot = self.slot(name)?;
        let previous = {
            let st = lock(&slot.status);
            if !matches!(st.state, VmState::Running | VmState::Paused) {
                return Err(OpError::WrongState {
                    vm: name.into(),
                    state: st.state,
                    action: "present",
                    hint: ": start it first",
                });
            }
            let mut p = lock(&self.presented);
            p.replace(name.to_string())
        };
        let mut message = format!("VM {name} is presented");
        if let Some(prev) = previous.filter(|p| p != name) {
            if let Ok(ps) = self.slot(&prev) {
                let state = lock(&ps.status).state;
                self.events
                    .emit(&prev, "hidden", state, format!("{name} presented"));
            }
            if let Some(c) = &self.cgroups {
                let _ = c.set_presented(&prev, false);
            }
            message.push_str(&format!("; {prev} is hidden"));
        }
        if let Some(c) = &self.cgroups {
            let _ = c.set_presented(name, true);
        }
        let state = lock(&slot.status).state;
        self.events.emit(name, "presented", state, "");
        Ok(self.reply(&slot, message, None))
    }

    pub fn hide(&self, name: &str) -> Result<ActionReply, OpError> {
        let slot = self.slot(name)?;
        let was = {
            let mut p = lock(&self.presented);
            if p.as_deref() == Some(name) {
                p.take();
                true
            } else {
                false
            }
        };
        let state = lock(&slot.status).state;
        if was {
            if let Some(c) = &self.cgroups {
                let _ = c.set_presented(name, false);
            }
            self.events.emit(name, "hidden", state, "");
            Ok(self.reply(&slot, format!("VM {name} is hidden"), None))
        } else {
            Ok(self.reply(&slot, format!("VM {name} was not presented"), None))
        }
    }

    // ----- console / screenshot -----

    pub fn console(&self, name: &str, lines: usize) -> Result<Vec<String>, OpError> {
        let slot = self.slot(name)?;
        let id = lock(&slot.status).def.id;
        Ok(console::tail(&self.layout.vm_dir(id), lines))
    }

    pub fn screenshot(&self, name: &str) -> Result<Vec<u8>, OpError> {
        let slot = self.slot(name)?;
        let mut op = self.try_op(&slot)?;
        let def = lock(&slot.status).def.clone();
        let Some(h) = op.as_mut() else {
            let st = lock(&slot.status);
            return Err(OpError::WrongState {
                vm: name.into(),
                state: st.state,
                action: "take a screenshot of",
                hint: ": start it first",
            });
        };
        let spec = self.spec(&def);
        let path = spec
            .run_dir
            .join(format!("screenshot-{}.png", uuid::Uuid::new_v4()));
        let r = h.screenshot(&path);
        let bytes = r
            .map_err(|source| OpError::Vmm {
                action: "take a screenshot of",
                vm: name.into(),
                source,
            })
            .and_then(|()| {
                fs::read(&path).map_err(|source| OpError::Io {
                    what: "read",
                    path: path.clone(),
                    source,
                })
            });
        let _ = fs::remove_file(&path);
        bytes
    }

    // ----- start-up: attach and autostart -----

    fn attach_all(&self) {
        for slot in self.all_slots() {
            let mut op = lock(&slot.op);
            let def = lock(&slot.status).def.clone();
            let spec = self.spec(&def);
            match self.vmm.attach(&spec) {
                Ok(Some(h)) => {
                    let pid = h.pid();
                    {
                        let mut st = lock(&slot.status);
                        if saved::state_file(&spec.vm_dir).exists() {
                            // A running guest and a saved state cannot both be
                            // current: keep the state aside, never load it.
                            if let Ok(aside) = saved::move_aside(&spec.vm_dir) {
                                let msg = format!(
                                    "a saved state was found while the VM runs; kept as {}",
                                    aside.display()
                                );
                                st.last_error = Some(msg.clone());
                                self.events
                                    .emit(&slot.name, "unusable_state", st.state, msg);
                            }
                        }
                        st.pid = Some(pid);
                        st.vnc = Some(h.vnc_socket());
                        st.console = Some(h.console_socket());
                        st.console = Some(h.console_socket());
                        let _ = self.step(
                            &slot,
                            &mut st,
                            Step::Attach,
                            "attach",
                            "attached",
                            format!("pid {pid}"),
                        );
                    }
                    *op = Some(h);
                    drop(op);
                    self.place_in_cgroup(&slot.name, pid);
                    marker(&format!("RAYOS_VM_ATTACHED:{}", slot.name));
                }
                Ok(None) => {}
                Err(e) => {
                    self.note(format!("VM {}: cannot re-attach: {}", slot.name, chain(&e)));
                }
            }
        }
    }

    /// Starts (resumes when possible) every VM whose policy says autostart,
    /// in parallel and hidden; then presents the first one whose policy says
    /// `present_on_boot`. Returns (vm, error) for each VM that failed.
    pub fn autostart(self: &Arc<Self>) -> Vec<(String, String)> {
        let mut threads = Vec::new();
        for slot in self.all_slots() {
            let (kind, state) = {
                let st = lock(&slot.status);
                (st.def.kind, st.state)
            };
            let p = self.policy_for(kind);
            let wanted = p.enabled
                && p.autostart
                && matches!(state, VmState::Stopped | VmState::Saved | VmState::Crashed);
            if !wanted {
                continue;
            }
            let me = Arc::clone(self);
            let name = slot.name.clone();
            threads.push(std::thread::spawn(move || {
                let r = me.start_inner(&name, false, true);
                (name, r.err().map(|e| chain(&e)))
            }));
        }
        let mut failed = Vec::new();
        for t in threads {
            if let Ok((name, Some(e))) = t.join() {
                self.note(format!("autostart of VM {name} failed: {e}"));
                failed.push((name, e));
            }
        }
        for slot in self.all_slots() {
            let kind = lock(&slot.status).def.kind;
            if self.policy_for(kind).present_on_boot && self.present(&slot.name).is_ok() {
                break;
            }
        }
        failed
    }

    // ----- monitor -----

    /// Runs [`Self::monitor_once`] every `monitor_interval` until shutdown.
    pub fn monitor_loop(self: Arc<Self>) {
        while !self.shutting_down.load(Ordering::SeqCst) {
            self.monitor_once();
            std::thread::sleep(self.cfg.monitor_interval);
        }
    }

    /// Looks at every VM not busy with an operation: notices guests that
    /// shut down, device models that died, pauses; restarts crashed VMs
    /// when their backoff has passed; rotates console logs.
    pub fn monitor_once(self: &Arc<Self>) {
        for slot in self.all_slots() {
            let Ok(mut op) = slot.op.try_lock() else {
                continue;
            };
            let def = lock(&slot.status).def.clone();
            let vm_dir = self.layout.vm_dir(def.id);
            if let Err(e) = console::rotate_if_needed(&vm_dir, self.cfg.console_max_bytes) {
                eprintln!("rayosd: VM {}: console log rotation failed: {e}", slot.name);
            }
            let Some(h) = op.as_mut() else {
                let due = {
                    let mut st = lock(&slot.status);
                    let due = st.state == VmState::Crashed
                        && st.restart_at.is_some_and(|t| t <= Instant::now())
                        && !st.removed
                        && !self.shutting_down.load(Ordering::SeqCst);
                    if due {
                        // One restart per crash, however long it takes.
                        st.restart_at = None;
                    }
                    due
                };
                if due {
                    drop(op);
                    let me = Arc::clone(self);
                    let name = slot.name.clone();
                    std::thread::spawn(move || {
                        if let Err(e) = me.start_inner(&name, false, true) {
                            let msg = chain(&e);
                            // A person may have started or deleted it meanwhile.
                            if let Ok(s) = me.slot(&name)
                                && !matches!(e, OpError::WrongState { .. } | OpError::Busy { .. })
                            {
                                lock(&s.status).last_error = Some(msg.clone());
                            }
                            eprintln!("rayosd: restart of VM {name} failed: {msg}");
                        }
                    });
                }
                continue;
            };
            let observed = match h.state() {
                Ok(s) => s,
                Err(e) if !pid_alive(h.pid()) => {
                    eprintln!("rayosd: VM {}: {}", slot.name, chain(&e));
                    RunState::Exited
                }
                Err(_) => continue,
            };
            match observed {
                RunState::Running => {
                    let mut st = lock(&slot.status);
                    if st.state == VmState::Paused {
                        let _ = self.step(
                            &slot,
                            &mut st,
                            Step::SeenRunning,
                            "observe",
                            "continued",
                            "",
                        );
                    }
                }
                RunState::Paused => {
                    let mut st = lock(&slot.status);
                    if st.state == VmState::Running {
                        let _ =
                            self.step(&slot, &mut st, Step::SeenPaused, "observe", "paused", "");
                    }
                }
                RunState::Exited if console_shows_poweroff(&console::tail(&vm_dir, 5)) => {
                    let _ = h.wait_exit(Duration::from_secs(5));
                    *op = None;
                    {
                        let mut st = lock(&slot.status);
                        let _ = self.step(
                            &slot,
                            &mut st,
                            Step::GuestShutdown,
                            "observe",
                            "stopped",
                            "the guest powered off",
                        );
                    }
                    drop(op);
                    self.after_guest_shutdown(&slot, &def);
                }
                RunState::Shutdown => {
                    let _ = h.kill();
                    let _ = h.wait_exit(Duration::from_secs(10));
                    *op = None;
                    {
                        let mut st = lock(&slot.status);
                        let _ = self.step(
                            &slot,
                            &mut st,
                            Step::GuestShutdown,
                            "observe",
                            "stopped",
                            "the guest shut down",
                        );
                    }
                    drop(op);
                    self.after_guest_shutdown(&slot, &def);
                }
                RunState::Exited => {
                    *op = None;
                    drop(op);
                    self.crashed(&slot, &vm_dir);
                }
            }
        }
    }

    fn after_guest_shutdown(&self, slot: &Slot, def: &VmDefinition) {
        if let Some(c) = &self.cgroups {
            c.remove(&slot.name);
        }
        // A Windows guest's first shutdown after installation ends
        // provisioning (setup reboots; it powers off when done).
        if def.kind == VmKind::Windows
            && !def.provisioned
            && !def.media.is_empty()
            && let Err(e) = self.mark_provisioned(slot)
        {
            self.note(format!(
                "VM {}: cannot mark provisioned: {}",
                slot.name,
                chain(&e)
            ));
        }
    }

    fn crashed(&self, slot: &Slot, vm_dir: &Path) {
        let lines = console::tail(vm_dir, 20);
        let mut st = lock(&slot.status);
        st.crash_console = lines;
        st.crash_count += 1;
        st.last_error = Some("the device model exited without being asked to".into());
        let detail = format!("crash #{}", st.crash_count);
        let _ = self.step(slot, &mut st, Step::Died, "observe", "crashed", detail);
        let p = self.policy_for(st.def.kind);
        if p.restart_on_crash && p.enabled && !self.shutting_down.load(Ordering::SeqCst) {
            let factor = 1u32 << st.crash_count.saturating_sub(1).min(16);
            let delay = self
                .cfg
                .restart_backoff
                .saturating_mul(factor)
                .min(self.cfg.restart_backoff_max);
            st.restart_at = Some(Instant::now() + delay);
            self.events.emit(
                &slot.name,
                "restarting",
                st.state,
                format!("in {:.1}s", delay.as_secs_f64()),
            );
        }
        drop(st);
        if let Some(c) = &self.cgroups {
            c.remove(&slot.name);
        }
    }

    // ----- host shutdown -----

    /// Host shutdown (SIGTERM): refuses new requests, then saves or shuts
    /// down (per policy `on_host_shutdown`) every VM with a device model, in
    /// parallel, within `shutdown_deadline`. A VM whose save fails is shut
    /// down through ACPI, then killed. Returns (vm, outcome) per VM; VMs
    /// still busy at the deadline are reported as such and left running.
    pub fn shutdown(self: &Arc<Self>) -> Vec<(String, String)> {
        self.shutting_down.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + self.cfg.shutdown_deadline;
        let (tx, rx) = std::sync::mpsc::channel();
        let mut pending = Vec::new();
        for slot in self.all_slots() {
            let state = lock(&slot.status).state;
            // A VM being started now is saved too, once its start is done.
            if !lifecycle::has_device_model(state)
                && !matches!(state, VmState::Starting | VmState::Resuming)
            {
                continue;
            }
            let kind = lock(&slot.status).def.kind;
            let how = self.policy_for(kind).on_host_shutdown;
            let me = Arc::clone(self);
            let tx = tx.clone();
            let name = slot.name.clone();
            pending.push(name.clone());
            std::thread::spawn(move || {
                // Waits for an operation in flight (e.g. a start) to finish.
                let outcome = me.shutdown_one(&name, how, deadline);
                let _ = tx.send((name, outcome));
            });
        }
        drop(tx);
        let mut results = Vec::new();
        while results.len() < pending.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(r) => results.push(r),
                Err(_) => break,
            }
        }
        for name in pending {
            if !results.iter().any(|(n, _)| *n == name) {
                results.push((name, "not finished before the shutdown deadline".into()));
            }
        }
        for (n, o) in &results {
            eprintln!("rayosd: shutdown: VM {n}: {o}");
        }
        results
    }

    fn shutdown_one(&self, name: &str, how: OnHostShutdown, deadline: Instant) -> String {
        let Ok(slot) = self.slot(name) else {
            return "gone".into();
        };
        // Let an operation in flight finish first (bounded by the deadline).
        while slot.op.try_lock().is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let acpi = |prefix: String| {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stop_inner(name, false, left.saturating_sub(Duration::from_secs(5))) {
                Ok(r) => format!("{prefix}{}", r.message),
                Err(e) => format!("{prefix}stop failed: {}", chain(&e)),
            }
        };
        match how {
            OnHostShutdown::Save => match self.suspend_inner(name) {
                Ok(r) => r.message,
                Err(e) => acpi(format!("save failed ({}); ", chain(&e))),
            },
            OnHostShutdown::Shutdown => acpi(String::new()),
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// Polls until the guest has powered off (QEMU reports `shutdown` or is
/// gone) or `timeout` passes.
fn wait_guest_down(h: &mut dyn VmHandle, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match h.state() {
            Ok(RunState::Shutdown | RunState::Exited) => return true,
            Err(_) if !pid_alive(h.pid()) => return true,
            _ => {}
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the console's last lines show the guest powering off. Used only
/// when the device model is already gone: a backend whose QEMU exits on
/// guest power-off (no `-no-shutdown`) cannot report `RunState::Shutdown`,
/// and a Linux guest's power-off must not count as a crash.
fn console_shows_poweroff(lines: &[String]) -> bool {
    lines
        .iter()
        .rev()
        .take(5)
        .any(|l| l.contains("reboot: Power down") || l.contains("System halted"))
}

fn hint(state: VmState, action: &str) -> &'static str {
    match (state, action) {
        (VmState::Saved, "stop") => {
            " (it is saved, not running: `start` resumes it, `start --fresh` discards the state)"
        }
        (VmState::Stopped | VmState::Crashed | VmState::Saved, _) => " (it is not running)",
        (VmState::Running | VmState::Paused, "start") => " (it already runs)",
        _ => "",
    }
}
