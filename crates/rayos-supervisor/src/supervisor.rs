//! The supervisor proper: every VM's runtime state and the rules all
//! operations on it share (locks, the lifecycle check, state steps). The
//! operations live in submodules, one job each:
//! - `error`: [`OpError`], what an operation fails with, and its HTTP status;
//! - `report`: list, show, health, console, screenshot (nothing changes);
//! - `define`: create, delete, provisioned (the operations that write the
//!   registry);
//! - `media`: attach and eject installation media (QMP, then the registry);
//! - `start`: start and resume (saved-state handling, then launching),
//!   re-attach and autostart when the daemon starts;
//! - `clock`: setting a resumed guest's clock through its agent, and
//!   trying again later when it does not answer in time;
//! - `stop`: suspend (save to disk) and stop;
//! - `present`: present and hide;
//! - `monitor`: watching device models (guest shutdowns, crashes and
//!   restarts, pauses, swtpm deaths, console rotation);
//! - `shutdown`: host shutdown (save or shut down every VM by a deadline);
//! - `agent`: the agent bridge: injected input (routed like the
//!   presenter's), console writes, programs run through the guest agent.
//! - `policy`: reading and replacing the policy while rayosd runs.
//!
//! Concurrency: each VM has a `Slot` with two locks. `op` owns the device
//! model handle and is held for the whole of a long operation (start, save,
//! stop); a second operation on the same VM meanwhile gets 409 "busy"
//! instead of queueing. `status` is held only briefly, so `show`/`list`
//! answer at once, also while an operation runs (they then report the
//! transient state: starting, saving, …). Lock order: `op` → `status` →
//! `presented`; the registry lock is never held with a slot lock.
//!
//! Every state change happens under the VM's `op` lock, so whoever holds
//! it sees a state that matches the handle: a device model is there
//! exactly in [`lifecycle::has_device_model`] states. That is why an
//! operation is checked once, against the state, with
//! `Supervisor::require` (the table [`lifecycle::ALLOWED`]), before it
//! starts; each state change then goes through `Supervisor::step`
//! ([`lifecycle::next`]), which also sends the step's event.

mod agent;
mod clock;
mod define;
mod error;
mod media;
mod monitor;
mod policy;
mod present;
mod report;
mod shutdown;
mod start;
mod stop;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, TryLockError};
use std::time::{Duration, Instant};

use rayos_api::{BootKind, VmState};
use rayos_state::{DataLayout, Networking, Policy, SubsystemPolicy, VmDefinition, VmKind};
use rayos_vmm::{VmHandle, VmSpec, Vmm, VmmError};

use crate::cgroup::Cgroups;
use crate::create;
use crate::events::EventBus;
use crate::lifecycle::{self, Op, Step};
use crate::saved;
use crate::store::{self, RegistryStore};

pub use error::OpError;
pub(crate) use rayos_base::error::chain;

/// Tunables of one daemon; [`Config::new`] has the production values.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data volume (registry, policy, VM directories).
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
    /// How often the monitor looks at every running VM.
    pub monitor_interval: Duration,
    /// A console log is rotated once it is larger than this.
    pub console_max_bytes: u64,
    /// First restart delay after a crash; doubles per crash up to the max.
    pub restart_backoff: Duration,
    /// The longest restart delay after repeated crashes.
    pub restart_backoff_max: Duration,
    /// Injected input waits this long after the last physical input the
    /// presenter reported for the presented VM.
    pub input_quiet: Duration,
    /// Pause after each injected key press, release and pointer event.
    pub key_gap: Duration,
}

impl Config {
    /// Production values for the data volume `state_dir` and the run directory
    /// `run_dir`.
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
            input_quiet: Duration::from_secs(2),
            key_gap: Duration::from_millis(10),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the daemon down with poisoned locks;
    // the data under these locks is consistent after every statement.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone)]
struct Status {
    def: VmDefinition,
    state: VmState,
    pid: Option<u32>,
    vnc: Option<PathBuf>,
    /// The serial console's socket, while a device model runs.
    console: Option<PathBuf>,
    last_boot: Option<BootKind>,
    last_error: Option<String>,
    crash_console: Vec<String>,
    crash_count: u32,
    restart_at: Option<Instant>,
    removed: bool,
    /// The device-model pid whose swtpm was seen dead (reported once).
    tpm_died_for: Option<u32>,
    /// A stop because of a dead swtpm is under way.
    tpm_stopping: bool,
    /// Unplugged sticks already reported as not ejectable while running.
    unplug_noted: Vec<std::path::PathBuf>,
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
                tpm_died_for: None,
                tpm_stopping: false,
                unplug_noted: Vec::new(),
            }),
            fingerprint: Mutex::new(None),
        }
    }
}

type OpGuard<'a> = MutexGuard<'a, Option<Box<dyn VmHandle>>>;

/// How long a request waits for a VM's operation lock before answering busy.
const OP_PATIENCE: Duration = Duration::from_secs(3);

/// rayosd's core: the registry, the VMs' runtime state, policy and the
/// operations the API offers, over a [`Vmm`] backend.
pub struct Supervisor {
    cfg: Config,
    layout: DataLayout,
    vmm: Arc<dyn Vmm>,
    /// Replaced as a whole by `PUT /v1/policy`; every decision reads it
    /// afresh, so a change holds from the next decision on.
    policy: RwLock<Policy>,
    registry: Mutex<RegistryStore>,
    slots: Mutex<BTreeMap<String, Arc<Slot>>>,
    presented: Mutex<Option<String>>,
    /// When the presenter last reported physical input (never held with
    /// another lock).
    physical_at: Mutex<Option<Instant>>,
    /// The lifecycle events, for the API's event stream.
    pub events: EventBus,
    notes: Mutex<Vec<String>>,
    cgroups: Option<Cgroups>,
    shutting_down: AtomicBool,
}

/// Prints a machine-readable marker line on stdout (tests and the
/// end-to-end harness look for these).
pub fn marker(m: &rayos_base::marker::Marker) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{m}");
    let _ = out.flush();
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
        // VM directories of older installs were world-readable: saved
        // memory and disks are root's alone.
        notes.extend(
            rayos_state::modes::tighten_vm_dirs(&layout.vm_root()).notes(&layout.vm_root()),
        );
        let slots = load_slots(&layout, &registry, &mut notes);
        for n in &notes {
            eprintln!("rayosd: note: {n}");
        }
        let sup = Arc::new(Supervisor {
            cfg,
            layout,
            vmm,
            policy: RwLock::new(policy),
            registry: Mutex::new(registry),
            slots: Mutex::new(slots),
            presented: Mutex::new(None),
            physical_at: Mutex::new(None),
            events: EventBus::default(),
            notes: Mutex::new(notes),
            cgroups,
            shutting_down: AtomicBool::new(false),
        });
        sup.attach_all();
        Ok(sup)
    }

    /// The policy rayosd runs with now.
    pub fn policy(&self) -> Policy {
        self.policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Where the data volume keeps what.
    pub fn layout(&self) -> &DataLayout {
        &self.layout
    }

    /// Whether host shutdown has begun (new operations are refused).
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
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

    fn policy_for(&self, kind: VmKind) -> SubsystemPolicy {
        self.policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .for_kind(kind)
            .clone()
    }

    /// Running VMs whose policy enables the agent bridge's in-VM channel.
    pub(crate) fn bridge_targets(&self) -> Vec<crate::bridge::Target> {
        self.all_slots()
            .iter()
            .filter_map(|slot| {
                let st = lock(&slot.status);
                let level = self.policy_for(st.def.kind).agent_bridge;
                (st.state == VmState::Running && level != rayos_state::AgentBridge::Off).then(
                    || crate::bridge::Target {
                        name: slot.name.clone(),
                        id: st.def.id,
                        level,
                        socket: self
                            .spec(&st.def)
                            .run_dir
                            .join(rayos_vmm::qemu::cmdline::run::BRIDGE),
                    },
                )
            })
            .collect()
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
            agent_bridge: p.agent_bridge != rayos_state::AgentBridge::Off,
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

    /// Refuses `op` (409, with what to do instead) unless the VM's state
    /// allows it ([`lifecycle::ALLOWED`]).
    fn require(&self, slot: &Slot, op: Op, state: VmState) -> Result<(), OpError> {
        lifecycle::require(op, state).map_err(|refusal| OpError::WrongState {
            vm: slot.name.clone(),
            refusal,
        })
    }

    /// Applies `step` to the VM's state and sends its event
    /// ([`Step::event`]) with `detail`, or refuses it.
    fn step(
        &self,
        slot: &Slot,
        st: &mut Status,
        step: Step,
        detail: impl Into<String>,
    ) -> Result<(), OpError> {
        let Some(to) = lifecycle::next(st.state, step) else {
            return Err(OpError::Transition {
                vm: slot.name.clone(),
                from: st.state,
                step,
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
        self.events.emit(&slot.name, step.event(), to, detail);
        Ok(())
    }

    /// A failed step: `message` becomes the VM's last error and the
    /// step's detail.
    fn step_failed(&self, slot: &Slot, step: Step, message: String) -> Result<(), OpError> {
        let mut st = lock(&slot.status);
        st.last_error = Some(message.clone());
        self.step(slot, &mut st, step, message)
    }

    fn refuse_if_shutting_down(&self) -> Result<(), OpError> {
        if self.is_shutting_down() {
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

    /// Ends the VM's CPU-weight group (its device model is gone).
    fn leave_cgroup(&self, name: &str) {
        if let Some(c) = &self.cgroups {
            c.remove(name);
        }
    }
}

/// One slot per registered VM, `saved` where a state file waits. Entries
/// that break the create rules stay in the registry (every write keeps
/// them) but are never run; a note says which and why.
fn load_slots(
    layout: &DataLayout,
    registry: &RegistryStore,
    notes: &mut Vec<String>,
) -> BTreeMap<String, Arc<Slot>> {
    let mut slots = BTreeMap::new();
    for def in &registry.get().vms {
        if let Err(why) = create::check_registered(def) {
            notes.push(format!(
                "{}: VM {} ({:?}) is not loaded: {why}; repair the entry and restart rayosd",
                layout.registry().display(),
                def.id,
                def.name
            ));
            continue;
        }
        let state = if saved::state_file(&layout.vm_dir(def.id)).exists() {
            VmState::Saved
        } else {
            VmState::Stopped
        };
        slots.insert(def.name.clone(), Arc::new(Slot::new(def, state)));
    }
    slots
}

/// Whether process `pid` still runs (exists and is not a zombie).
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
