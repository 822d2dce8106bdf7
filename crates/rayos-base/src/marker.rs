//! The machine-readable console markers (`RAYOS_READY`,
//! `RAYOS_BOOT:<step>`, …) as one type.
//!
//! PID 1, rayosd, the presenter, the installer engine and the wizard print
//! them on lines of their own; the QEMU tests and the end-to-end harnesses
//! wait for them on the serial console. Both sides build the text from
//! [`Marker`] (its `Display`), so a marker renamed here is renamed
//! everywhere, and one dropped fails to compile instead of failing a
//! 30-minute end-to-end run.
//!
//! Protocol: a marker is `RAYOS_` + a fixed head ([`Kind::prefix`]) + a
//! payload for the kinds that carry one, on one line (free-text payloads
//! have their line breaks replaced by spaces). A harness waiting for any
//! marker of a kind (any `RAYOS_BOOT:` step, any install failure) matches
//! [`Kind::prefix`]; one that needs the payload parses the line with
//! [`Marker::find_in`]. `FromStr` reads exactly what `Display` writes.
//!
//! Limits: the markers of the bundled test guests (`RAYOS_GUEST_READY`,
//! `RAYOS_TEST_GUEST_READY`) are printed by the guests' own shell scripts,
//! not by RayOS, and stay constants beside them. Environment variables
//! named `RAYOS_*` are not markers.

use std::fmt;
use std::str::FromStr;

/// What every marker starts with; service output relays lines holding it.
pub const PREFIX: &str = "RAYOS_";

macro_rules! kinds {
    ($($(#[$doc:meta])* $kind:ident = $prefix:literal,)*) => {
        /// A marker without its payload: what a harness waits for when any
        /// payload will do.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Kind {
            $($(#[$doc])* $kind,)*
        }

        impl Kind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [Kind] = &[$(Kind::$kind),*];

            /// The fixed text every marker of this kind starts with (the
            /// whole marker for kinds without a payload).
            pub const fn prefix(self) -> &'static str {
                match self {
                    $(Kind::$kind => $prefix,)*
                }
            }
        }
    };
}

kinds! {
    /// `RAYOS_BOOT:<step>`: PID 1 starts a boot step.
    Boot = "RAYOS_BOOT:",
    /// `RAYOS_DEGRADED:<faults>`: the boot finished with faults.
    Degraded = "RAYOS_DEGRADED:",
    /// `RAYOS_READY`: rayosd answered its health check.
    Ready = "RAYOS_READY",
    /// `RAYOS_BLESSED:<file>`: the running UKI lost its boot counter.
    Blessed = "RAYOS_BLESSED:",
    /// `RAYOS_LINUX_VM_READY`: a VM of kind `linux` runs.
    LinuxVmReady = "RAYOS_LINUX_VM_READY",
    /// `RAYOS_ROLLBACK:<failed-version>:<reason>`.
    Rollback = "RAYOS_ROLLBACK:",
    /// `RAYOS_SHUTDOWN:poweroff|reboot`: the orderly shutdown begins.
    Shutdown = "RAYOS_SHUTDOWN:",
    /// `RAYOS_POWEROFF`: last line before power-off.
    PowerOff = "RAYOS_POWEROFF",
    /// `RAYOS_REBOOT`: last line before a reboot.
    Reboot = "RAYOS_REBOOT",
    /// `RAYOS_FATAL:<reason>`: PID 1 failed and reboots.
    Fatal = "RAYOS_FATAL:",
    /// `RAYOS_INSTALLER:countdown:<secs>` (PID 1, unattended install).
    InstallerCountdown = "RAYOS_INSTALLER:countdown:",
    /// `RAYOS_INSTALLER:cancelled` (PID 1: a key stopped the countdown).
    InstallerCancelled = "RAYOS_INSTALLER:cancelled",
    /// `RAYOS_INSTALLER:start` (PID 1 runs `rayos install --yes`).
    InstallerStart = "RAYOS_INSTALLER:start",
    /// `RAYOS_INSTALLER:done` (PID 1: the install succeeded).
    InstallerDone = "RAYOS_INSTALLER:done",
    /// `RAYOS_INSTALLER:failed:<status>|plan` (PID 1).
    InstallerFailed = "RAYOS_INSTALLER:failed:",
    /// `RAYOS_INSTALLER:interactive` (PID 1: no answer file).
    InstallerInteractive = "RAYOS_INSTALLER:interactive",
    /// `RAYOS_INSTALLER:STARTED` (`rayos install`).
    EngineStarted = "RAYOS_INSTALLER:STARTED",
    /// `RAYOS_INSTALLER:PLAN_GENERATED` (`rayos install`).
    EnginePlanGenerated = "RAYOS_INSTALLER:PLAN_GENERATED",
    /// `RAYOS_INSTALLER:STEP:<step>` (`rayos install`: a step is done).
    EngineStep = "RAYOS_INSTALLER:STEP:",
    /// `RAYOS_INSTALLER:COMPLETE` (`rayos install`).
    EngineComplete = "RAYOS_INSTALLER:COMPLETE",
    /// `RAYOS_INSTALLER:FAILED` (`rayos install`).
    EngineFailed = "RAYOS_INSTALLER:FAILED",
    /// `RAYOS_INSTALLER:ABORTED_AFTER:<step> (<note>)` (the engine's
    /// power-cut test hook).
    EngineAbortedAfter = "RAYOS_INSTALLER:ABORTED_AFTER:",
    /// `RAYOS_WIZARD:INSTALLED after=reboot|power-off|exit`.
    WizardInstalled = "RAYOS_WIZARD:INSTALLED after=",
    /// `RAYOS_WIZARD:DRY_RUN`.
    WizardDryRun = "RAYOS_WIZARD:DRY_RUN",
    /// `RAYOS_WIZARD:CANCELLED`.
    WizardCancelled = "RAYOS_WIZARD:CANCELLED",
    /// `RAYOS_DAEMON_READY:<socket>`: rayosd serves its API.
    DaemonReady = "RAYOS_DAEMON_READY:",
    /// `RAYOS_AUTOSTART_DONE`: rayosd's autostart pass ended.
    AutostartDone = "RAYOS_AUTOSTART_DONE",
    /// `RAYOS_DAEMON_STOPPED:<vms handled>`: rayosd's shutdown ended.
    DaemonStopped = "RAYOS_DAEMON_STOPPED:",
    /// `RAYOS_VM_STARTED:<vm>:cold|resumed`.
    VmStarted = "RAYOS_VM_STARTED:",
    /// `RAYOS_VM_ATTACHED:<vm>`: a restarted rayosd took a running VM back.
    VmAttached = "RAYOS_VM_ATTACHED:",
    /// `RAYOS_VM_CLOCK:<vm>:rtc|host|unset`: how a resumed VM's guest
    /// clock was set (or that rayosd gave up).
    VmClock = "RAYOS_VM_CLOCK:",
    /// `RAYOS_PRESENTATION:on:<vm>`: the VM's first frame is on screen.
    PresentationOn = "RAYOS_PRESENTATION:on:",
    /// `RAYOS_PRESENTATION:off`: the home screen is drawn.
    PresentationOff = "RAYOS_PRESENTATION:off",
    /// `RAYOS_ACCEL:kvm` or `RAYOS_ACCEL:tcg:<reason>`: rayosd decided
    /// which accelerator the VMs get.
    Accel = "RAYOS_ACCEL:",
}

/// A console marker with its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// `RAYOS_BOOT:<step>`: PID 1 starts the named boot step.
    Boot(String),
    /// `RAYOS_DEGRADED:<faults>`: the boot finished with this many faults.
    Degraded(usize),
    /// `RAYOS_READY`: rayosd answered its health check.
    Ready,
    /// `RAYOS_BLESSED:<file>`: the running UKI, named by its file, lost its
    /// boot counter.
    Blessed(String),
    /// `RAYOS_LINUX_VM_READY`: a VM of kind `linux` runs.
    LinuxVmReady,
    /// `RAYOS_ROLLBACK:<failed>:<reason>`: the boot fell back from version
    /// `failed`.
    Rollback {
        /// The version that failed to boot.
        failed: String,
        /// Why it counts as failed.
        reason: String,
    },
    /// `RAYOS_SHUTDOWN:<power>`: the orderly shutdown begins.
    Shutdown(Power),
    /// `RAYOS_POWEROFF`: the last line before power-off.
    PowerOff,
    /// `RAYOS_REBOOT`: the last line before a reboot.
    Reboot,
    /// `RAYOS_FATAL:<reason>`: PID 1 failed and reboots.
    Fatal(String),
    /// `RAYOS_INSTALLER:…`: the unattended install and the installer engine.
    Installer(InstallerMarker),
    /// `RAYOS_WIZARD:…`: the installer wizard's outcome.
    Wizard(WizardMarker),
    /// `RAYOS_DAEMON_READY:<socket>`: rayosd serves its API on `socket`.
    DaemonReady {
        /// The API socket's path.
        socket: String,
    },
    /// `RAYOS_AUTOSTART_DONE`: rayosd's autostart pass ended.
    AutostartDone,
    /// `RAYOS_DAEMON_STOPPED:<vms>`: rayosd's shutdown ended, having handled
    /// this many VMs.
    DaemonStopped(usize),
    /// `RAYOS_VM_STARTED:<vm>:<how>`: VM `vm` started, cold or resumed.
    VmStarted {
        /// The VM's name.
        vm: String,
        /// Whether it booted or resumed.
        how: VmStart,
    },
    /// `RAYOS_VM_ATTACHED:<vm>`: a restarted rayosd took running VM `vm` back.
    VmAttached {
        /// The VM's name.
        vm: String,
    },
    /// `RAYOS_VM_CLOCK:<vm>:<how>`: resumed VM `vm`'s guest clock was set
    /// through its agent, or rayosd gave up.
    VmClock {
        /// The VM's name.
        vm: String,
        /// How it ended.
        how: VmClock,
    },
    /// `RAYOS_PRESENTATION:on:<vm>`: VM `vm`'s first frame is on screen.
    PresentationOn {
        /// The VM's name.
        vm: String,
    },
    /// `RAYOS_PRESENTATION:off`: the home screen is drawn.
    PresentationOff,
    /// `RAYOS_ACCEL:…`: the accelerator rayosd chose for the VMs.
    Accel(AccelMarker),
}

/// `RAYOS_ACCEL:…`: the accelerator VMs run with; under TCG, why (the
/// sentence `rayos status` shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccelMarker {
    /// KVM: hardware virtualisation.
    Kvm,
    /// TCG (emulation), with the reason KVM is not used.
    Tcg {
        /// Why KVM is not used, as `rayos status` shows it.
        reason: String,
    },
}

/// `RAYOS_INSTALLER:…`: PID 1's unattended install (lower case) and the
/// installer engine's own progress (upper case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallerMarker {
    /// `countdown:<secs>`: PID 1 installs unattended after this many seconds.
    Countdown(u32),
    /// `cancelled`: a key stopped the countdown.
    Cancelled,
    /// `start`: PID 1 runs `rayos install --yes`.
    Start,
    /// `done`: the install succeeded.
    Done,
    /// `failed:<status>|plan`: the install did not finish.
    Failed(InstallFailure),
    /// `interactive`: no answer file, so the wizard runs.
    Interactive,
    /// `STARTED`: the engine started.
    EngineStarted,
    /// `PLAN_GENERATED`: the engine made its plan.
    EnginePlanGenerated,
    /// `STEP:<step>`: the engine finished a step.
    EngineStep(String),
    /// `COMPLETE`: the engine finished the install.
    EngineComplete,
    /// `FAILED`: the engine failed.
    EngineFailed,
    /// `ABORTED_AFTER:<step> (<note>)`: the engine's power-cut test hook
    /// stopped it after `step`.
    EngineAbortedAfter {
        /// The last step done.
        step: String,
        /// Free text in the parentheses (which hook stopped it).
        note: String,
    },
}

/// Why PID 1's unattended install did not finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallFailure {
    /// `rayos install` exited with this status.
    Status(i32),
    /// The engine refused the plan (`--dry-run` failed); nothing written.
    Plan,
}

/// `RAYOS_WIZARD:…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WizardMarker {
    /// `INSTALLED after=<after>`: the wizard installed RayOS.
    Installed {
        /// What the person chose to do next.
        after: WizardAfter,
    },
    /// `DRY_RUN`: the wizard ended a dry run.
    DryRun,
    /// `CANCELLED`: the person left the wizard without installing.
    Cancelled,
}

/// What the person chose to do after the wizard installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WizardAfter {
    /// Reboot into the installed system.
    Reboot,
    /// Power the machine off.
    PowerOff,
    /// Leave the wizard without rebooting or powering off.
    Exit,
}

/// `RAYOS_SHUTDOWN:<power>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// Power the machine off.
    PowerOff,
    /// Restart the machine.
    Reboot,
}

/// How a VM came up (`RAYOS_VM_STARTED:<vm>:<how>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmStart {
    /// A cold boot from the disks.
    Cold,
    /// Resumed from a saved state.
    Resumed,
}

/// How a resumed VM's guest clock was set (`RAYOS_VM_CLOCK:<vm>:<how>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmClock {
    /// From the guest's RTC, which QEMU keeps on the host's time.
    Rtc,
    /// To the host's time sent by rayosd.
    Host,
    /// Not set: no agent answered in time, or it failed.
    Unset,
}

impl VmClock {
    /// The word the marker carries (`rtc`, `host`, `unset`).
    pub const fn as_str(self) -> &'static str {
        match self {
            VmClock::Rtc => "rtc",
            VmClock::Host => "host",
            VmClock::Unset => "unset",
        }
    }
}

impl WizardAfter {
    /// The word the marker carries (`reboot`, `power-off`, `exit`).
    pub const fn as_str(self) -> &'static str {
        match self {
            WizardAfter::Reboot => "reboot",
            WizardAfter::PowerOff => "power-off",
            WizardAfter::Exit => "exit",
        }
    }
}

impl Power {
    /// The word the marker carries (`poweroff`, `reboot`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Power::PowerOff => "poweroff",
            Power::Reboot => "reboot",
        }
    }
}

impl VmStart {
    /// The word the marker carries (`cold`, `resumed`).
    pub const fn as_str(self) -> &'static str {
        match self {
            VmStart::Cold => "cold",
            VmStart::Resumed => "resumed",
        }
    }
}

impl Marker {
    /// The marker's kind (its fixed head).
    pub const fn kind(&self) -> Kind {
        use InstallerMarker as I;
        match self {
            Marker::Boot(_) => Kind::Boot,
            Marker::Degraded(_) => Kind::Degraded,
            Marker::Ready => Kind::Ready,
            Marker::Blessed(_) => Kind::Blessed,
            Marker::LinuxVmReady => Kind::LinuxVmReady,
            Marker::Rollback { .. } => Kind::Rollback,
            Marker::Shutdown(_) => Kind::Shutdown,
            Marker::PowerOff => Kind::PowerOff,
            Marker::Reboot => Kind::Reboot,
            Marker::Fatal(_) => Kind::Fatal,
            Marker::Installer(i) => match i {
                I::Countdown(_) => Kind::InstallerCountdown,
                I::Cancelled => Kind::InstallerCancelled,
                I::Start => Kind::InstallerStart,
                I::Done => Kind::InstallerDone,
                I::Failed(_) => Kind::InstallerFailed,
                I::Interactive => Kind::InstallerInteractive,
                I::EngineStarted => Kind::EngineStarted,
                I::EnginePlanGenerated => Kind::EnginePlanGenerated,
                I::EngineStep(_) => Kind::EngineStep,
                I::EngineComplete => Kind::EngineComplete,
                I::EngineFailed => Kind::EngineFailed,
                I::EngineAbortedAfter { .. } => Kind::EngineAbortedAfter,
            },
            Marker::Wizard(w) => match w {
                WizardMarker::Installed { .. } => Kind::WizardInstalled,
                WizardMarker::DryRun => Kind::WizardDryRun,
                WizardMarker::Cancelled => Kind::WizardCancelled,
            },
            Marker::DaemonReady { .. } => Kind::DaemonReady,
            Marker::AutostartDone => Kind::AutostartDone,
            Marker::DaemonStopped(_) => Kind::DaemonStopped,
            Marker::VmStarted { .. } => Kind::VmStarted,
            Marker::VmAttached { .. } => Kind::VmAttached,
            Marker::VmClock { .. } => Kind::VmClock,
            Marker::PresentationOn { .. } => Kind::PresentationOn,
            Marker::PresentationOff => Kind::PresentationOff,
            Marker::Accel(_) => Kind::Accel,
        }
    }

    /// The marker in a console line (`[  8.5] rayos-init: RAYOS_READY\r`):
    /// the text from the first `RAYOS_` to the end of the line.
    pub fn find_in(line: &str) -> Option<Marker> {
        let at = line.find(PREFIX)?;
        line[at..].trim_end_matches(['\r', '\n']).parse().ok()
    }

    /// Builds a marker of `kind` from the text after its prefix.
    fn from_payload(kind: Kind, p: &str) -> Result<Marker, ParseMarkerError> {
        use InstallerMarker as I;
        let bad = || ParseMarkerError::Payload(kind);
        let none = |m: Marker| if p.is_empty() { Ok(m) } else { Err(bad()) };
        let text = |p: &str| {
            if p.is_empty() {
                Err(bad())
            } else {
                Ok(p.to_string())
            }
        };
        let num = |p: &str| p.parse::<usize>().map_err(|_| bad());
        Ok(match kind {
            Kind::Boot => Marker::Boot(text(p)?),
            Kind::Degraded => Marker::Degraded(num(p)?),
            Kind::Ready => none(Marker::Ready)?,
            Kind::Blessed => Marker::Blessed(text(p)?),
            Kind::LinuxVmReady => none(Marker::LinuxVmReady)?,
            Kind::Rollback => {
                let (failed, reason) = p.split_once(':').ok_or_else(bad)?;
                Marker::Rollback {
                    failed: text(failed)?,
                    reason: reason.to_string(),
                }
            }
            Kind::Shutdown => Marker::Shutdown(match p {
                "poweroff" => Power::PowerOff,
                "reboot" => Power::Reboot,
                _ => return Err(bad()),
            }),
            Kind::PowerOff => none(Marker::PowerOff)?,
            Kind::Reboot => none(Marker::Reboot)?,
            Kind::Fatal => Marker::Fatal(p.to_string()),
            Kind::InstallerCountdown => {
                Marker::Installer(I::Countdown(p.parse().map_err(|_| bad())?))
            }
            Kind::InstallerCancelled => none(Marker::Installer(I::Cancelled))?,
            Kind::InstallerStart => none(Marker::Installer(I::Start))?,
            Kind::InstallerDone => none(Marker::Installer(I::Done))?,
            Kind::InstallerFailed => Marker::Installer(I::Failed(match p {
                "plan" => InstallFailure::Plan,
                n => InstallFailure::Status(n.parse().map_err(|_| bad())?),
            })),
            Kind::InstallerInteractive => none(Marker::Installer(I::Interactive))?,
            Kind::EngineStarted => none(Marker::Installer(I::EngineStarted))?,
            Kind::EnginePlanGenerated => none(Marker::Installer(I::EnginePlanGenerated))?,
            Kind::EngineStep => Marker::Installer(I::EngineStep(text(p)?)),
            Kind::EngineComplete => none(Marker::Installer(I::EngineComplete))?,
            Kind::EngineFailed => none(Marker::Installer(I::EngineFailed))?,
            Kind::EngineAbortedAfter => {
                let (step, note) = match p.split_once(' ') {
                    Some((s, n)) => (
                        s,
                        n.strip_prefix('(')
                            .and_then(|n| n.strip_suffix(')'))
                            .ok_or_else(bad)?,
                    ),
                    None => (p, ""),
                };
                Marker::Installer(I::EngineAbortedAfter {
                    step: text(step)?,
                    note: note.to_string(),
                })
            }
            Kind::WizardInstalled => Marker::Wizard(WizardMarker::Installed {
                after: match p {
                    "reboot" => WizardAfter::Reboot,
                    "power-off" => WizardAfter::PowerOff,
                    "exit" => WizardAfter::Exit,
                    _ => return Err(bad()),
                },
            }),
            Kind::WizardDryRun => none(Marker::Wizard(WizardMarker::DryRun))?,
            Kind::WizardCancelled => none(Marker::Wizard(WizardMarker::Cancelled))?,
            Kind::DaemonReady => Marker::DaemonReady { socket: text(p)? },
            Kind::AutostartDone => none(Marker::AutostartDone)?,
            Kind::DaemonStopped => Marker::DaemonStopped(num(p)?),
            Kind::VmStarted => {
                let (vm, how) = p.rsplit_once(':').ok_or_else(bad)?;
                Marker::VmStarted {
                    vm: text(vm)?,
                    how: match how {
                        "cold" => VmStart::Cold,
                        "resumed" => VmStart::Resumed,
                        _ => return Err(bad()),
                    },
                }
            }
            Kind::VmAttached => Marker::VmAttached { vm: text(p)? },
            Kind::VmClock => {
                let (vm, how) = p.rsplit_once(':').ok_or_else(bad)?;
                Marker::VmClock {
                    vm: text(vm)?,
                    how: match how {
                        "rtc" => VmClock::Rtc,
                        "host" => VmClock::Host,
                        "unset" => VmClock::Unset,
                        _ => return Err(bad()),
                    },
                }
            }
            Kind::PresentationOn => Marker::PresentationOn { vm: text(p)? },
            Kind::PresentationOff => none(Marker::PresentationOff)?,
            Kind::Accel => Marker::Accel(match p.split_once(':') {
                None if p == "kvm" => AccelMarker::Kvm,
                Some(("tcg", reason)) => AccelMarker::Tcg {
                    reason: text(reason)?,
                },
                _ => return Err(bad()),
            }),
        })
    }
}

/// Free text on the marker's one line.
struct OneLine<'a>(&'a str);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for c in self.0.chars() {
            f.write_char(if matches!(c, '\n' | '\r') { ' ' } else { c })?;
        }
        Ok(())
    }
}

impl fmt::Display for Marker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use InstallerMarker as I;
        f.write_str(self.kind().prefix())?;
        match self {
            Marker::Boot(s) | Marker::Blessed(s) | Marker::Fatal(s) => {
                write!(f, "{}", OneLine(s))
            }
            Marker::Degraded(n) | Marker::DaemonStopped(n) => write!(f, "{n}"),
            Marker::Rollback { failed, reason } => {
                write!(f, "{}:{}", OneLine(failed), OneLine(reason))
            }
            Marker::Shutdown(p) => f.write_str(p.as_str()),
            Marker::Installer(i) => match i {
                I::Countdown(n) => write!(f, "{n}"),
                I::Failed(InstallFailure::Status(n)) => write!(f, "{n}"),
                I::Failed(InstallFailure::Plan) => f.write_str("plan"),
                I::EngineStep(s) => write!(f, "{}", OneLine(s)),
                I::EngineAbortedAfter { step, note } => {
                    write!(f, "{}", OneLine(step))?;
                    if note.is_empty() {
                        Ok(())
                    } else {
                        write!(f, " ({})", OneLine(note))
                    }
                }
                I::Cancelled
                | I::Start
                | I::Done
                | I::Interactive
                | I::EngineStarted
                | I::EnginePlanGenerated
                | I::EngineComplete
                | I::EngineFailed => Ok(()),
            },
            Marker::Wizard(WizardMarker::Installed { after }) => f.write_str(after.as_str()),
            Marker::DaemonReady { socket } => write!(f, "{}", OneLine(socket)),
            Marker::VmStarted { vm, how } => write!(f, "{}:{}", OneLine(vm), how.as_str()),
            Marker::VmClock { vm, how } => write!(f, "{}:{}", OneLine(vm), how.as_str()),
            Marker::VmAttached { vm } | Marker::PresentationOn { vm } => {
                write!(f, "{}", OneLine(vm))
            }
            Marker::Accel(AccelMarker::Kvm) => f.write_str("kvm"),
            Marker::Accel(AccelMarker::Tcg { reason }) => write!(f, "tcg:{}", OneLine(reason)),
            Marker::Ready
            | Marker::LinuxVmReady
            | Marker::PowerOff
            | Marker::Reboot
            | Marker::Wizard(WizardMarker::DryRun | WizardMarker::Cancelled)
            | Marker::AutostartDone
            | Marker::PresentationOff => Ok(()),
        }
    }
}

/// Why a line is not a [`Marker`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseMarkerError {
    /// The line holds no known marker head.
    #[error("not a RayOS console marker")]
    Unknown,
    /// The head is known but its payload does not parse; holds the kind.
    #[error("a {} marker with a payload that does not parse", .0.prefix())]
    Payload(Kind),
}

impl FromStr for Marker {
    type Err = ParseMarkerError;

    fn from_str(s: &str) -> Result<Marker, ParseMarkerError> {
        // The longest matching head wins, so a kind whose head starts
        // another's (none today) would still parse as the longer one.
        let kind = Kind::ALL
            .iter()
            .filter(|k| s.starts_with(k.prefix()))
            .max_by_key(|k| k.prefix().len())
            .ok_or(ParseMarkerError::Unknown)?;
        Marker::from_payload(*kind, &s[kind.prefix().len()..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One marker of each kind (exhaustive: a new kind must get one).
    fn sample(k: Kind) -> Marker {
        use InstallerMarker as I;
        match k {
            Kind::Boot => Marker::Boot("mount-data".into()),
            Kind::Degraded => Marker::Degraded(2),
            Kind::Ready => Marker::Ready,
            Kind::Blessed => Marker::Blessed("rayos-0.2.0.efi".into()),
            Kind::LinuxVmReady => Marker::LinuxVmReady,
            Kind::Rollback => Marker::Rollback {
                failed: "0.3.0".into(),
                reason: "no tries left: it did not become healthy".into(),
            },
            Kind::Shutdown => Marker::Shutdown(Power::PowerOff),
            Kind::PowerOff => Marker::PowerOff,
            Kind::Reboot => Marker::Reboot,
            Kind::Fatal => Marker::Fatal("boot step kernel-fs failed: EPERM".into()),
            Kind::InstallerCountdown => Marker::Installer(I::Countdown(10)),
            Kind::InstallerCancelled => Marker::Installer(I::Cancelled),
            Kind::InstallerStart => Marker::Installer(I::Start),
            Kind::InstallerDone => Marker::Installer(I::Done),
            Kind::InstallerFailed => Marker::Installer(I::Failed(InstallFailure::Status(1))),
            Kind::InstallerInteractive => Marker::Installer(I::Interactive),
            Kind::EngineStarted => Marker::Installer(I::EngineStarted),
            Kind::EnginePlanGenerated => Marker::Installer(I::EnginePlanGenerated),
            Kind::EngineStep => Marker::Installer(I::EngineStep("format-data".into())),
            Kind::EngineComplete => Marker::Installer(I::EngineComplete),
            Kind::EngineFailed => Marker::Installer(I::EngineFailed),
            Kind::EngineAbortedAfter => Marker::Installer(I::EngineAbortedAfter {
                step: "gpt".into(),
                note: "RAYOS_INSTALL_FAIL_AFTER test hook".into(),
            }),
            Kind::WizardInstalled => Marker::Wizard(WizardMarker::Installed {
                after: WizardAfter::PowerOff,
            }),
            Kind::WizardDryRun => Marker::Wizard(WizardMarker::DryRun),
            Kind::WizardCancelled => Marker::Wizard(WizardMarker::Cancelled),
            Kind::DaemonReady => Marker::DaemonReady {
                socket: "/run/rayos/api.sock".into(),
            },
            Kind::AutostartDone => Marker::AutostartDone,
            Kind::DaemonStopped => Marker::DaemonStopped(1),
            Kind::VmStarted => Marker::VmStarted {
                vm: "linux".into(),
                how: VmStart::Resumed,
            },
            Kind::VmAttached => Marker::VmAttached { vm: "lin".into() },
            Kind::VmClock => Marker::VmClock {
                vm: "linux".into(),
                how: VmClock::Rtc,
            },
            Kind::PresentationOn => Marker::PresentationOn { vm: "linux".into() },
            Kind::PresentationOff => Marker::PresentationOff,
            Kind::Accel => Marker::Accel(AccelMarker::Tcg {
                reason:
                    "virtualization is off in the firmware setup (VT-x/AMD-V); VMs run much slower"
                        .into(),
            }),
        }
    }

    /// Every kind's text as the consoles printed it before this type
    /// existed: the e2e harnesses and people's scripts depend on it.
    #[test]
    fn display_is_the_text_the_consoles_print() {
        let expected = [
            "RAYOS_BOOT:mount-data",
            "RAYOS_DEGRADED:2",
            "RAYOS_READY",
            "RAYOS_BLESSED:rayos-0.2.0.efi",
            "RAYOS_LINUX_VM_READY",
            "RAYOS_ROLLBACK:0.3.0:no tries left: it did not become healthy",
            "RAYOS_SHUTDOWN:poweroff",
            "RAYOS_POWEROFF",
            "RAYOS_REBOOT",
            "RAYOS_FATAL:boot step kernel-fs failed: EPERM",
            "RAYOS_INSTALLER:countdown:10",
            "RAYOS_INSTALLER:cancelled",
            "RAYOS_INSTALLER:start",
            "RAYOS_INSTALLER:done",
            "RAYOS_INSTALLER:failed:1",
            "RAYOS_INSTALLER:interactive",
            "RAYOS_INSTALLER:STARTED",
            "RAYOS_INSTALLER:PLAN_GENERATED",
            "RAYOS_INSTALLER:STEP:format-data",
            "RAYOS_INSTALLER:COMPLETE",
            "RAYOS_INSTALLER:FAILED",
            "RAYOS_INSTALLER:ABORTED_AFTER:gpt (RAYOS_INSTALL_FAIL_AFTER test hook)",
            "RAYOS_WIZARD:INSTALLED after=power-off",
            "RAYOS_WIZARD:DRY_RUN",
            "RAYOS_WIZARD:CANCELLED",
            "RAYOS_DAEMON_READY:/run/rayos/api.sock",
            "RAYOS_AUTOSTART_DONE",
            "RAYOS_DAEMON_STOPPED:1",
            "RAYOS_VM_STARTED:linux:resumed",
            "RAYOS_VM_ATTACHED:lin",
            "RAYOS_VM_CLOCK:linux:rtc",
            "RAYOS_PRESENTATION:on:linux",
            "RAYOS_PRESENTATION:off",
            "RAYOS_ACCEL:tcg:virtualization is off in the firmware setup (VT-x/AMD-V); VMs run much slower",
        ];
        let shown: Vec<String> = Kind::ALL.iter().map(|k| sample(*k).to_string()).collect();
        assert_eq!(shown, expected);
        let plan = Marker::Installer(InstallerMarker::Failed(InstallFailure::Plan));
        assert_eq!(plan.to_string(), "RAYOS_INSTALLER:failed:plan");
        let reboot = Marker::Shutdown(Power::Reboot);
        assert_eq!(reboot.to_string(), "RAYOS_SHUTDOWN:reboot");
        assert_eq!(
            Marker::Accel(AccelMarker::Kvm).to_string(),
            "RAYOS_ACCEL:kvm"
        );
    }

    #[test]
    fn every_kind_round_trips() {
        for k in Kind::ALL {
            let m = sample(*k);
            assert_eq!(m.kind(), *k);
            let text = m.to_string();
            assert!(text.starts_with(k.prefix()), "{text}");
            assert_eq!(text.parse::<Marker>(), Ok(m.clone()), "{text}");
            let line = format!("[    8.586592] rayos-init: {text}\r");
            assert_eq!(Marker::find_in(&line), Some(m));
        }
        for extra in [
            Marker::Installer(InstallerMarker::Failed(InstallFailure::Plan)),
            Marker::Installer(InstallerMarker::Failed(InstallFailure::Status(-9))),
            Marker::Installer(InstallerMarker::EngineAbortedAfter {
                step: "esp".into(),
                note: String::new(),
            }),
            Marker::Shutdown(Power::Reboot),
            Marker::VmStarted {
                vm: "win-11".into(),
                how: VmStart::Cold,
            },
            Marker::Wizard(WizardMarker::Installed {
                after: WizardAfter::Exit,
            }),
            Marker::Rollback {
                failed: "0.2.0".into(),
                reason: String::new(),
            },
            Marker::Accel(AccelMarker::Kvm),
            // A reason with colons of its own keeps them.
            Marker::Accel(AccelMarker::Tcg {
                reason: "probe failed: cannot open /dev/kvm: Permission denied".into(),
            }),
        ] {
            assert_eq!(extra.to_string().parse::<Marker>(), Ok(extra));
        }
    }

    /// A harness waiting for one kind's head must never stop at another
    /// kind's marker (`RAYOS_READY` inside `RAYOS_DAEMON_READY:…` would).
    #[test]
    fn no_kind_head_occurs_in_another_kinds_marker() {
        for a in Kind::ALL {
            for b in Kind::ALL {
                if a != b {
                    let text = sample(*b).to_string();
                    assert!(
                        !text.contains(a.prefix()),
                        "{} is found in {text}",
                        a.prefix()
                    );
                }
            }
        }
    }

    #[test]
    fn line_breaks_in_free_text_stay_on_one_line() {
        let m = Marker::Rollback {
            failed: "0.3.0".into(),
            reason: "a\nb\r\nc".into(),
        };
        assert_eq!(m.to_string(), "RAYOS_ROLLBACK:0.3.0:a b  c");
    }

    #[test]
    fn malformed_markers_are_refused() {
        for bad in [
            "RAYOS_NOPE",
            "RAYOS_READYX",
            "RAYOS_DEGRADED:many",
            "RAYOS_SHUTDOWN:halt",
            "RAYOS_VM_STARTED:linux",
            "RAYOS_VM_STARTED:linux:warm",
            "RAYOS_INSTALLER:countdown:",
            "RAYOS_INSTALLER:failed:later",
            "RAYOS_WIZARD:INSTALLED after=sleep",
            "RAYOS_BOOT:",
            "RAYOS_ACCEL:",
            "RAYOS_ACCEL:tcg",
            "RAYOS_ACCEL:tcg:",
            "RAYOS_ACCEL:kvm:fast",
            "RAYOS_ACCEL:hvf",
            "READY",
        ] {
            assert!(bad.parse::<Marker>().is_err(), "{bad} parsed");
        }
        assert_eq!(Marker::find_in("no marker here"), None);
    }
}
