//! Choosing the accelerator: KVM only where it really runs a guest, and a
//! reason a person can act on whenever it is TCG.
//!
//! The decision ([`decide`]) is a pure function of what the machine shows
//! ([`AccelInputs`]: `RAYOS_ACCEL`, `/dev/kvm`, the CPU's `vmx`/`svm`
//! flag, what PID 1's coldplug did with `kvm_intel`/`kvm_amd`) and of the
//! KVM probe's result ([`super::kvm_probe`], run only when `/dev/kvm`
//! exists). [`AccelInputs::gather`] reads the inputs; [`detect`] puts both
//! together once per process.
//!
//! Behaviour, in order:
//! 1. `RAYOS_ACCEL=tcg|kvm` wins (tests force TCG; a person may force KVM
//!    past a probe that is wrong for their machine).
//! 2. `/dev/kvm` exists: the probe decides (KVM, or TCG with "probe
//!    failed: …"). Opening the device proves nothing on its own (a
//!    paravirtual KVM without VT-x/AMD-V has one, see the probe's docs).
//! 3. No `/dev/kvm`, and the CPU shows neither `vmx` nor `svm`: the
//!    firmware has virtualization switched off (Linux hides `vmx` when
//!    the firmware locked VT-x off) or the CPU has none.
//! 4. No `/dev/kvm` but the CPU has the flag: the module failed to load
//!    (its error, as PID 1 recorded it) or was not loaded at all.
//!
//! Limits: the reasons are for people; programs match the [`TcgReason`]
//! variant (or the API's `accel` field), not the text.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use super::kvm_probe::{self, ProbeError};

pub use rayos_base::paths::MODULES_REFUSED;

/// The accelerator QEMU is started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    /// The name QEMU's `-accel` takes (`kvm`, `tcg`).
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// `RAYOS_ACCEL` if set to `tcg` or `kvm`.
    pub fn from_env() -> Option<Accel> {
        match std::env::var("RAYOS_ACCEL").ok()?.trim() {
            "tcg" => Some(Accel::Tcg),
            "kvm" => Some(Accel::Kvm),
            _ => None,
        }
    }

    /// The environment override, else the (cached) decision's accelerator.
    pub fn detect() -> Accel {
        detect().accel()
    }
}

/// The CPU's hardware virtualization, as `/proc/cpuinfo` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuVirt {
    /// Intel VT-x (`vmx`); its module is `kvm_intel`.
    Vmx,
    /// AMD-V (`svm`); its module is `kvm_amd`.
    Svm,
}

impl CpuVirt {
    /// The kernel module that provides `/dev/kvm` on this CPU.
    pub fn module(self) -> &'static str {
        match self {
            CpuVirt::Vmx => "kvm_intel",
            CpuVirt::Svm => "kvm_amd",
        }
    }

    /// The flag in the first `flags` line of `/proc/cpuinfo`'s text.
    pub fn from_cpuinfo(text: &str) -> Option<CpuVirt> {
        let flags = text.lines().find(|l| l.starts_with("flags"))?;
        let flags = flags.split_once(':').map_or(flags, |(_, f)| f);
        flags.split_whitespace().find_map(|f| match f {
            "vmx" => Some(CpuVirt::Vmx),
            "svm" => Some(CpuVirt::Svm),
            _ => None,
        })
    }
}

/// What happened to the CPU's KVM module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleState {
    /// In `/sys/module`.
    Loaded,
    /// PID 1 tried and the kernel refused (its error).
    Failed(String),
    /// Neither loaded nor recorded as refused.
    NotLoaded,
}

/// Everything the decision looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelInputs {
    /// `RAYOS_ACCEL`.
    pub forced: Option<Accel>,
    /// `/dev/kvm` exists.
    pub device: bool,
    /// The CPU's virtualisation flag, if it has one.
    pub cpu: Option<CpuVirt>,
    /// The state of `cpu`'s module (`NotLoaded` when there is no flag).
    pub module: ModuleState,
}

impl AccelInputs {
    /// Reads the inputs from this machine.
    pub fn gather() -> AccelInputs {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| CpuVirt::from_cpuinfo(&t));
        let refused = std::fs::read_to_string(MODULES_REFUSED).unwrap_or_default();
        let module = match cpu {
            Some(c) => module_state(
                c.module(),
                Path::new("/sys/module").join(c.module()).exists(),
                &refused,
            ),
            None => ModuleState::NotLoaded,
        };
        AccelInputs {
            forced: Accel::from_env(),
            device: Path::new("/dev/kvm").exists(),
            cpu,
            module,
        }
    }
}

/// A module's state from whether `/sys/module/<name>` exists and PID 1's
/// `name: error` lines.
pub fn module_state(name: &str, loaded: bool, refused: &str) -> ModuleState {
    if loaded {
        return ModuleState::Loaded;
    }
    refused
        .lines()
        .find_map(|l| {
            let (n, why) = l.split_once(':')?;
            (n.trim() == name).then(|| ModuleState::Failed(why.trim().to_string()))
        })
        .unwrap_or(ModuleState::NotLoaded)
}

/// Why the VMs run under TCG. `Display` is the sentence people read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcgReason {
    /// `RAYOS_ACCEL=tcg`.
    Forced,
    /// No `/dev/kvm` and no `vmx`/`svm` flag.
    FirmwareOff,
    /// The CPU has the flag but its module was refused.
    ModuleFailed {
        /// The module's name.
        module: &'static str,
        /// Why the kernel refused it.
        error: String,
    },
    /// The CPU has the flag but there is no `/dev/kvm` (module not loaded,
    /// or loaded without creating the device).
    NoDevice {
        /// The module's name.
        module: &'static str,
        /// Whether the module is loaded.
        loaded: bool,
    },
    /// `/dev/kvm` exists but the probe guest did not run.
    ProbeFailed(ProbeError),
}

const SLOWER: &str = "VMs run much slower";

impl std::fmt::Display for TcgReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TcgReason::Forced => write!(f, "RAYOS_ACCEL=tcg forces software emulation"),
            TcgReason::FirmwareOff => write!(
                f,
                "virtualization is off in the firmware setup (VT-x/AMD-V); {SLOWER}"
            ),
            TcgReason::ModuleFailed { module, error } => {
                write!(f, "the {module} module failed to load ({error}); {SLOWER}")
            }
            TcgReason::NoDevice {
                module,
                loaded: false,
            } => write!(
                f,
                "the CPU has VT-x/AMD-V but {module} is not loaded, so there is no /dev/kvm; {SLOWER}"
            ),
            TcgReason::NoDevice {
                module,
                loaded: true,
            } => write!(f, "{module} is loaded but there is no /dev/kvm; {SLOWER}"),
            TcgReason::ProbeFailed(e) => write!(f, "probe failed: {e}; {SLOWER}"),
        }
    }
}

/// The outcome: KVM, or TCG and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccelDecision {
    /// KVM: the probe guest ran, or `RAYOS_ACCEL=kvm` asks for it.
    Kvm,
    /// TCG, and why.
    Tcg(TcgReason),
}

impl AccelDecision {
    /// The accelerator this decision picks.
    pub fn accel(&self) -> Accel {
        match self {
            AccelDecision::Kvm => Accel::Kvm,
            AccelDecision::Tcg(_) => Accel::Tcg,
        }
    }

    /// The reason under TCG.
    pub fn reason(&self) -> Option<&TcgReason> {
        match self {
            AccelDecision::Kvm => None,
            AccelDecision::Tcg(r) => Some(r),
        }
    }
}

impl From<Accel> for AccelDecision {
    /// A configured accelerator (tests, benchmarks): TCG as if forced.
    fn from(a: Accel) -> Self {
        match a {
            Accel::Kvm => AccelDecision::Kvm,
            Accel::Tcg => AccelDecision::Tcg(TcgReason::Forced),
        }
    }
}

/// The decision (module docs, "Behaviour"). `probe` is called only when
/// `/dev/kvm` exists and nothing forces the choice.
pub fn decide(
    inputs: &AccelInputs,
    probe: impl FnOnce() -> Result<(), ProbeError>,
) -> AccelDecision {
    match inputs.forced {
        Some(Accel::Tcg) => return AccelDecision::Tcg(TcgReason::Forced),
        Some(Accel::Kvm) => return AccelDecision::Kvm,
        None => {}
    }
    if inputs.device {
        return match probe() {
            Ok(()) => AccelDecision::Kvm,
            Err(e) => AccelDecision::Tcg(TcgReason::ProbeFailed(e)),
        };
    }
    let Some(cpu) = inputs.cpu else {
        return AccelDecision::Tcg(TcgReason::FirmwareOff);
    };
    let module = cpu.module();
    AccelDecision::Tcg(match &inputs.module {
        ModuleState::Failed(error) => TcgReason::ModuleFailed {
            module,
            error: error.clone(),
        },
        ModuleState::Loaded => TcgReason::NoDevice {
            module,
            loaded: true,
        },
        ModuleState::NotLoaded => TcgReason::NoDevice {
            module,
            loaded: false,
        },
    })
}

/// How long the probe guest may take.
pub const PROBE_TIMEOUT: Duration = kvm_probe::PROBE_TIMEOUT;

/// The accelerator in a QEMU command line as `/proc/<pid>/cmdline` holds
/// it (NUL-separated): the value after the last `-accel`.
pub fn accel_in_cmdline(cmdline: &[u8]) -> Option<Accel> {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let at = args.iter().rposition(|a| *a == b"-accel")?;
    let value = args.get(at + 1)?;
    // `-accel kvm,kernel-irqchip=on` names the accelerator first.
    match value.split(|b| *b == b',').next()? {
        b"kvm" => Some(Accel::Kvm),
        b"tcg" => Some(Accel::Tcg),
        _ => None,
    }
}

/// The accelerator the running process `pid` was started with, from its
/// command line; `None` when it is gone or is not a QEMU with `-accel`.
pub fn running_accel(pid: u32) -> Option<Accel> {
    accel_in_cmdline(&std::fs::read(format!("/proc/{pid}/cmdline")).ok()?)
}

/// This machine's decision, made once per process.
pub fn detect() -> AccelDecision {
    static DECIDED: OnceLock<AccelDecision> = OnceLock::new();
    DECIDED
        .get_or_init(|| decide(&AccelInputs::gather(), || kvm_probe::probe(PROBE_TIMEOUT)))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(device: bool, cpu: Option<CpuVirt>, module: ModuleState) -> AccelInputs {
        AccelInputs {
            forced: None,
            device,
            cpu,
            module,
        }
    }

    fn no_probe() -> Result<(), ProbeError> {
        panic!("the probe must not run without /dev/kvm or under RAYOS_ACCEL")
    }

    #[test]
    fn forced_choices_win_without_probing() {
        let mut i = inputs(true, Some(CpuVirt::Vmx), ModuleState::Loaded);
        i.forced = Some(Accel::Tcg);
        assert_eq!(decide(&i, no_probe), AccelDecision::Tcg(TcgReason::Forced));
        i.forced = Some(Accel::Kvm);
        i.device = false;
        assert_eq!(decide(&i, no_probe), AccelDecision::Kvm);
    }

    #[test]
    fn a_device_is_probed() {
        let i = inputs(true, Some(CpuVirt::Svm), ModuleState::Loaded);
        assert_eq!(decide(&i, || Ok(())), AccelDecision::Kvm);
        // The device without a CPU flag (a paravirtual KVM, as on the
        // build machines) is probed too: the probe decides.
        let i = inputs(true, None, ModuleState::NotLoaded);
        let d = decide(&i, || Err(ProbeError::Timeout(Duration::from_secs(3))));
        assert_eq!(
            d,
            AccelDecision::Tcg(TcgReason::ProbeFailed(ProbeError::Timeout(
                Duration::from_secs(3)
            )))
        );
        assert_eq!(
            d.reason().unwrap().to_string(),
            "probe failed: the test guest did not reach its port write within 3s; VMs run much slower"
        );
        assert_eq!(d.accel(), Accel::Tcg);
    }

    #[test]
    fn no_device_and_no_flag_is_the_firmware_setting() {
        let d = decide(&inputs(false, None, ModuleState::NotLoaded), no_probe);
        assert_eq!(d, AccelDecision::Tcg(TcgReason::FirmwareOff));
        assert_eq!(
            d.reason().unwrap().to_string(),
            "virtualization is off in the firmware setup (VT-x/AMD-V); VMs run much slower"
        );
    }

    #[test]
    fn no_device_with_the_flag_names_the_module() {
        let failed = ModuleState::Failed("Input/output error".into());
        let d = decide(&inputs(false, Some(CpuVirt::Vmx), failed), no_probe);
        assert_eq!(
            d.reason().unwrap().to_string(),
            "the kvm_intel module failed to load (Input/output error); VMs run much slower"
        );
        let d = decide(
            &inputs(false, Some(CpuVirt::Svm), ModuleState::NotLoaded),
            no_probe,
        );
        assert_eq!(
            d,
            AccelDecision::Tcg(TcgReason::NoDevice {
                module: "kvm_amd",
                loaded: false
            })
        );
        assert!(
            d.reason()
                .unwrap()
                .to_string()
                .contains("kvm_amd is not loaded")
        );
        let d = decide(
            &inputs(false, Some(CpuVirt::Svm), ModuleState::Loaded),
            no_probe,
        );
        assert_eq!(
            d.reason().unwrap().to_string(),
            "kvm_amd is loaded but there is no /dev/kvm; VMs run much slower"
        );
    }

    #[test]
    fn accelerator_of_a_running_qemu_from_its_command_line() {
        let argv = b"qemu-system-x86_64\0-name\0linux\0-accel\0tcg\0-cpu\0max\0";
        assert_eq!(accel_in_cmdline(argv), Some(Accel::Tcg));
        let kvm = b"qemu-system-x86_64\0-accel\0kvm,kernel-irqchip=on\0";
        assert_eq!(accel_in_cmdline(kvm), Some(Accel::Kvm));
        assert_eq!(accel_in_cmdline(b"qemu-system-x86_64\0-m\x00512\0"), None);
        assert_eq!(accel_in_cmdline(b"qemu\0-accel\0"), None);
        assert_eq!(accel_in_cmdline(b"qemu\0-accel\0hvf\0"), None);
        assert_eq!(accel_in_cmdline(b""), None);
        // This test process is no QEMU.
        assert_eq!(running_accel(std::process::id()), None);
    }

    #[test]
    fn cpu_flags_are_read_from_cpuinfo() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme de pse vmx ssse3\nbugs\t\t: spectre\n";
        assert_eq!(CpuVirt::from_cpuinfo(intel), Some(CpuVirt::Vmx));
        let amd = "flags\t\t: fpu svm lahf_lm\n";
        assert_eq!(CpuVirt::from_cpuinfo(amd), Some(CpuVirt::Svm));
        // A flag elsewhere (the `vmx flags` line of newer kernels) or as a
        // part of another word does not count.
        let none = "flags\t\t: fpu vmxx svm_lock\nvmx flags\t: vnmi\n";
        assert_eq!(CpuVirt::from_cpuinfo(none), None);
        assert_eq!(CpuVirt::from_cpuinfo(""), None);
    }

    #[test]
    fn module_state_from_sysfs_and_init_record() {
        let refused = "kvm_intel: Input/output error\nnvme: No such device\n";
        assert_eq!(
            module_state("kvm_intel", true, refused),
            ModuleState::Loaded
        );
        assert_eq!(
            module_state("kvm_intel", false, refused),
            ModuleState::Failed("Input/output error".into())
        );
        assert_eq!(
            module_state("kvm_amd", false, refused),
            ModuleState::NotLoaded
        );
        assert_eq!(module_state("kvm_amd", false, ""), ModuleState::NotLoaded);
    }
}
