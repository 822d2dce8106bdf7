//! `policy/rayos-policy.toml`: what RayOS may do with each subsystem.
//!
//! Versioned, unknown keys rejected. The policy *fails closed*: when neither
//! the current nor the previous generation parses, callers use
//! [`Policy::closed`] — nothing autostarts, no networking — and report why.
//!
//! ```toml
//! version = 1
//! [linux]
//! enabled = true
//! autostart = true
//! present_on_boot = false
//! networking = "off"          # off | on | provisioning_only
//! cpus = 2                    # optional limit
//! memory_mib = 2048           # optional limit
//! on_host_shutdown = "save"   # save | shutdown
//! restart_on_crash = true
//! agent_bridge = "off"        # off | read | full (docs/agent-bridge.md)
//! [windows]
//! enabled = false
//! ```

use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::registry::VmKind;

/// The `version` this RayOS writes and reads in the policy file.
pub const POLICY_SCHEMA_VERSION: u32 = 1;

/// Whether a kind's VMs get a network (user-mode networking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Networking {
    /// No network device at all.
    #[default]
    Off,
    /// A network device, always.
    On,
    /// Network only until the VM is marked provisioned (Windows setup).
    ProvisioningOnly,
}

/// What host shutdown does with a running VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnHostShutdown {
    /// Save its state; the next boot resumes it.
    #[default]
    Save,
    /// Shut the guest down (ACPI power button).
    Shutdown,
}

/// What an agent inside a VM may do through the agent bridge's in-VM
/// channel (a virtio-serial port, docs/agent-bridge.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AgentBridge {
    /// No channel: the VM has no such port at all.
    #[default]
    Off,
    /// List VMs, screenshots, console logs, events; nothing that acts.
    Read,
    /// Everything the bridge offers, including input into other VMs and
    /// commands in their guests.
    Full,
}

/// What VMs of one kind may do: one section (`[linux]`, `[windows]`,
/// `[generic]`) of the policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubsystemPolicy {
    /// Whether VMs of this kind may start at all.
    pub enabled: bool,
    /// Whether rayosd starts them at its own start.
    pub autostart: bool,
    /// Whether the first of them autostart starts is presented (shown and
    /// given the input).
    pub present_on_boot: bool,
    /// Whether they get a network.
    pub networking: Networking,
    /// At most this many vCPUs, whatever a VM's definition says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// At most this much memory in MiB, whatever a VM's definition says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// What host shutdown does with them.
    pub on_host_shutdown: OnHostShutdown,
    /// Whether rayosd restarts one that crashed (with a growing delay).
    pub restart_on_crash: bool,
    /// What an agent inside them may do through the agent bridge.
    pub agent_bridge: AgentBridge,
}

impl Default for SubsystemPolicy {
    fn default() -> Self {
        SubsystemPolicy {
            enabled: true,
            autostart: false,
            present_on_boot: false,
            networking: Networking::Off,
            cpus: None,
            memory_mib: None,
            on_host_shutdown: OnHostShutdown::Save,
            restart_on_crash: true,
            agent_bridge: AgentBridge::Off,
        }
    }
}

impl SubsystemPolicy {
    /// Nothing runs unless asked, nothing is networked.
    pub fn closed() -> Self {
        SubsystemPolicy {
            autostart: false,
            present_on_boot: false,
            networking: Networking::Off,
            restart_on_crash: false,
            ..Default::default()
        }
    }
}

/// The policy file (`policy/rayos-policy.toml`): what each kind of VM may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The file's schema version ([`POLICY_SCHEMA_VERSION`]).
    pub version: u32,
    /// VMs of kind `linux`.
    #[serde(default = "Policy::default_linux")]
    pub linux: SubsystemPolicy,
    /// VMs of kind `windows`.
    #[serde(default = "Policy::default_windows")]
    pub windows: SubsystemPolicy,
    /// VMs of kind `generic` (created by hand).
    #[serde(default)]
    pub generic: SubsystemPolicy,
}

impl Default for Policy {
    /// The defaults a fresh install gets: Linux autostarts hidden, Windows is
    /// disabled, networking is off everywhere.
    fn default() -> Self {
        Policy {
            version: POLICY_SCHEMA_VERSION,
            linux: Self::default_linux(),
            windows: Self::default_windows(),
            generic: SubsystemPolicy::default(),
        }
    }
}

impl Policy {
    fn default_linux() -> SubsystemPolicy {
        SubsystemPolicy {
            autostart: true,
            ..Default::default()
        }
    }

    fn default_windows() -> SubsystemPolicy {
        SubsystemPolicy {
            enabled: false,
            ..Default::default()
        }
    }

    /// The fail-closed policy used when no generation of the file parses.
    pub fn closed() -> Self {
        Policy {
            version: POLICY_SCHEMA_VERSION,
            linux: SubsystemPolicy::closed(),
            windows: SubsystemPolicy::closed(),
            generic: SubsystemPolicy::closed(),
        }
    }

    /// Reads `text` (from `path`, named in errors) and checks its version and
    /// values.
    pub fn parse(path: &str, text: &str) -> Result<Self, ConfigError> {
        let p: Policy = toml::from_str(text).map_err(|e| ConfigError::from_toml(path, text, &e))?;
        if p.version != POLICY_SCHEMA_VERSION {
            return Err(ConfigError::semantic(
                path,
                format!(
                    "policy version {} is not supported (this RayOS reads version {})",
                    p.version, POLICY_SCHEMA_VERSION
                ),
            ));
        }
        for (name, s) in [
            ("linux", &p.linux),
            ("windows", &p.windows),
            ("generic", &p.generic),
        ] {
            if s.cpus == Some(0) {
                return Err(ConfigError::semantic(
                    path,
                    format!("[{name}] cpus must be at least 1"),
                ));
            }
            if s.memory_mib.is_some_and(|m| m < 64) {
                return Err(ConfigError::semantic(
                    path,
                    format!("[{name}] memory_mib must be at least 64"),
                ));
            }
        }
        Ok(p)
    }

    /// The section for VMs of `kind`.
    pub fn for_kind(&self, kind: VmKind) -> &SubsystemPolicy {
        match kind {
            VmKind::Linux => &self.linux,
            VmKind::Windows => &self.windows,
            VmKind::Generic => &self.generic,
        }
    }

    /// The file's text (TOML).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

/// The sections of the policy, in file order.
pub const SECTIONS: [&str; 3] = ["linux", "windows", "generic"];

/// The settings of a section, in file order, as `section.FIELD` keys take
/// them (`rayos policy set linux.networking on`).
pub const FIELDS: [&str; 8] = [
    "enabled",
    "autostart",
    "present_on_boot",
    "networking",
    "cpus",
    "memory_mib",
    "on_host_shutdown",
    "restart_on_crash",
];

/// When a changed setting takes effect on a running RayOS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// rayosd uses it from now on (starts refused or allowed, crash
    /// restarts, what happens at the next shutdown).
    Now,
    /// At the VM's next cold start: a running VM keeps its device model
    /// as it is.
    NextStart,
    /// At the next boot of RayOS (autostart and presentation happen at boot).
    NextBoot,
}

impl Effect {
    /// Words for a person.
    pub fn describe(self) -> &'static str {
        match self {
            Effect::Now => "now",
            Effect::NextStart => "at the VM's next cold start",
            Effect::NextBoot => "at the next boot of RayOS",
        }
    }

    /// When a change of `field` takes effect.
    pub fn of_field(field: &str) -> Effect {
        match field {
            "autostart" | "present_on_boot" => Effect::NextBoot,
            "networking" | "cpus" | "memory_mib" => Effect::NextStart,
            _ => Effect::Now,
        }
    }
}

/// One setting that differs between two policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// `section.field`, as `rayos policy set` takes it.
    pub key: String,
    /// The value before, as the file writes it.
    pub old: String,
    /// The value after, as the file writes it.
    pub new: String,
    /// When the change takes effect.
    pub when: Effect,
}

/// A `section.field` key or its value that [`Policy::set`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyKeyError {
    /// No such key; holds it.
    #[error(
        "unknown policy key {0:?}: keys are SECTION.SETTING with SECTION one of linux, windows, generic and SETTING one of {fields}",
        fields = FIELDS.join(", ")
    )]
    UnknownKey(String),
    /// The value does not fit the key.
    #[error("{key} = {value:?} is not valid: {expected}")]
    BadValue {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What the key takes.
        expected: &'static str,
    },
    /// The key and value parse, but the policy they make is not valid; says
    /// why.
    #[error("{0}")]
    Invalid(String),
}

fn parse_bool(key: &str, v: &str) -> Result<bool, PolicyKeyError> {
    match v {
        "true" | "on" | "yes" => Ok(true),
        "false" | "off" | "no" => Ok(false),
        _ => Err(PolicyKeyError::BadValue {
            key: key.into(),
            value: v.into(),
            expected: "use true or false",
        }),
    }
}

/// `none` (or `unset`) removes an optional limit.
fn parse_limit<T: std::str::FromStr>(key: &str, v: &str) -> Result<Option<T>, PolicyKeyError> {
    if matches!(v, "none" | "unset") {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|_| PolicyKeyError::BadValue {
        key: key.into(),
        value: v.into(),
        expected: "use a whole number, or `none` for no limit",
    })
}

impl SubsystemPolicy {
    /// The value of `field` as the policy file spells it (`none` for an
    /// unset limit); `None` for an unknown field.
    pub fn get(&self, field: &str) -> Option<String> {
        let limit = |v: Option<u64>| v.map_or("none".to_string(), |n| n.to_string());
        Some(match field {
            "enabled" => self.enabled.to_string(),
            "autostart" => self.autostart.to_string(),
            "present_on_boot" => self.present_on_boot.to_string(),
            "networking" => match self.networking {
                Networking::Off => "off",
                Networking::On => "on",
                Networking::ProvisioningOnly => "provisioning_only",
            }
            .to_string(),
            "cpus" => limit(self.cpus.map(u64::from)),
            "memory_mib" => limit(self.memory_mib),
            "on_host_shutdown" => match self.on_host_shutdown {
                OnHostShutdown::Save => "save",
                OnHostShutdown::Shutdown => "shutdown",
            }
            .to_string(),
            "restart_on_crash" => self.restart_on_crash.to_string(),
            _ => return None,
        })
    }
}

impl Policy {
    fn section(&self, name: &str) -> Option<&SubsystemPolicy> {
        match name {
            "linux" => Some(&self.linux),
            "windows" => Some(&self.windows),
            "generic" => Some(&self.generic),
            _ => None,
        }
    }

    fn section_mut(&mut self, name: &str) -> Option<&mut SubsystemPolicy> {
        match name {
            "linux" => Some(&mut self.linux),
            "windows" => Some(&mut self.windows),
            "generic" => Some(&mut self.generic),
            _ => None,
        }
    }

    /// The value of `section.field`, as the file spells it.
    pub fn get(&self, key: &str) -> Result<String, PolicyKeyError> {
        let (s, f) = key
            .split_once('.')
            .ok_or_else(|| PolicyKeyError::UnknownKey(key.into()))?;
        self.section(s)
            .and_then(|p| p.get(f))
            .ok_or_else(|| PolicyKeyError::UnknownKey(key.into()))
    }

    /// Every `section.field` key with its value, in file order.
    pub fn entries(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        for s in SECTIONS {
            for f in FIELDS {
                if let Ok(val) = self.get(&format!("{s}.{f}")) {
                    v.push((format!("{s}.{f}"), val));
                }
            }
        }
        v
    }

    /// Sets `section.field` to `value` (as the file spells it; booleans
    /// also take on/off, limits take `none`) and checks the result against
    /// the same rules as a policy file ([`Policy::parse`]).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), PolicyKeyError> {
        let unknown = || PolicyKeyError::UnknownKey(key.into());
        let (s, f) = key.split_once('.').ok_or_else(unknown)?;
        let value = value.trim();
        let mut next = self.clone();
        let p = next.section_mut(s).ok_or_else(unknown)?;
        match f {
            "enabled" => p.enabled = parse_bool(key, value)?,
            "autostart" => p.autostart = parse_bool(key, value)?,
            "present_on_boot" => p.present_on_boot = parse_bool(key, value)?,
            "restart_on_crash" => p.restart_on_crash = parse_bool(key, value)?,
            "networking" => {
                p.networking = match value {
                    "off" | "false" => Networking::Off,
                    "on" | "true" => Networking::On,
                    "provisioning_only" => Networking::ProvisioningOnly,
                    _ => {
                        return Err(PolicyKeyError::BadValue {
                            key: key.into(),
                            value: value.into(),
                            expected: "use off, on or provisioning_only",
                        });
                    }
                }
            }
            "on_host_shutdown" => {
                p.on_host_shutdown = match value {
                    "save" => OnHostShutdown::Save,
                    "shutdown" => OnHostShutdown::Shutdown,
                    _ => {
                        return Err(PolicyKeyError::BadValue {
                            key: key.into(),
                            value: value.into(),
                            expected: "use save or shutdown",
                        });
                    }
                }
            }
            "cpus" => p.cpus = parse_limit(key, value)?,
            "memory_mib" => p.memory_mib = parse_limit(key, value)?,
            _ => return Err(unknown()),
        }
        // The same rules as a file: what `set` writes always parses.
        let checked = Policy::parse("policy", &next.to_toml())
            .map_err(|e| PolicyKeyError::Invalid(format!("{key} = {value}: {}", e.message)))?;
        *self = checked;
        Ok(())
    }

    /// The settings that differ from `self` in `new`, with when each
    /// takes effect.
    pub fn changes(&self, new: &Policy) -> Vec<Change> {
        let old: Vec<_> = self.entries();
        new.entries()
            .into_iter()
            .zip(old)
            .filter(|((_, n), (_, o))| n != o)
            .map(|((key, new), (_, old))| {
                let field = key.split_once('.').map_or("", |(_, f)| f);
                Change {
                    when: Effect::of_field(field),
                    key,
                    old,
                    new,
                }
            })
            .collect()
    }

    /// True when any kind may have a network (`on` or `provisioning_only`):
    /// then RayOS brings up its wired links.
    pub fn any_networking(&self) -> bool {
        [&self.linux, &self.windows, &self.generic]
            .iter()
            .any(|p| p.enabled && p.networking != Networking::Off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_install_defaults() {
        let p = Policy::parse("p", "version = 1\n").unwrap();
        assert!(p.linux.enabled && p.linux.autostart && !p.linux.present_on_boot);
        assert!(!p.windows.enabled && !p.windows.autostart);
        assert_eq!(p.linux.networking, Networking::Off);
        assert_eq!(p.linux.on_host_shutdown, OnHostShutdown::Save);
    }

    #[test]
    fn round_trip() {
        let mut p = Policy::default();
        p.windows.networking = Networking::ProvisioningOnly;
        p.linux.cpus = Some(2);
        assert_eq!(Policy::parse("p", &p.to_toml()).unwrap(), p);
    }

    #[test]
    fn unknown_key_is_rejected_with_line() {
        let e = Policy::parse(
            "rayos-policy.toml",
            "version = 1\n[linux]\nautostrat = true\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.to_string().contains("autostrat"), "{e}");
    }

    #[test]
    fn the_agent_bridge_is_off_unless_the_policy_says_so() {
        let p = Policy::parse("p", "version = 1\n").unwrap();
        for s in [&p.linux, &p.windows, &p.generic] {
            assert_eq!(s.agent_bridge, AgentBridge::Off);
        }
        assert_eq!(Policy::closed().linux.agent_bridge, AgentBridge::Off);
        let p = Policy::parse(
            "p",
            "version = 1\n[windows]\nagent_bridge = \"read\"\n[linux]\nagent_bridge = \"full\"\n",
        )
        .unwrap();
        assert_eq!(
            (p.linux.agent_bridge, p.windows.agent_bridge),
            (AgentBridge::Full, AgentBridge::Read)
        );
        assert!(Policy::parse("p", "version = 1\n[linux]\nagent_bridge = \"yes\"\n").is_err());
    }

    #[test]
    fn bad_value_and_version() {
        assert!(Policy::parse("p", "version = 1\n[linux]\nnetworking = \"maybe\"\n").is_err());
        assert!(Policy::parse("p", "version = 9\n").is_err());
        assert!(Policy::parse("p", "version = 1\n[linux]\ncpus = 0\n").is_err());
    }

    #[test]
    fn closed_runs_nothing() {
        let c = Policy::closed();
        assert!(!c.linux.autostart && !c.windows.autostart && !c.generic.autostart);
    }

    #[test]
    fn set_validates_like_the_file() {
        let mut p = Policy::default();
        p.set("linux.networking", "on").unwrap();
        p.set("windows.enabled", "true").unwrap();
        p.set("linux.cpus", "2").unwrap();
        p.set("linux.memory_mib", "none").unwrap();
        assert_eq!(p.linux.networking, Networking::On);
        assert!(p.windows.enabled);
        assert_eq!(p.linux.cpus, Some(2));
        assert_eq!(p.get("linux.networking").unwrap(), "on");
        assert_eq!(p.get("linux.memory_mib").unwrap(), "none");
        let before = p.clone();
        for (k, v) in [
            ("linux.cpus", "0"),
            ("linux.memory_mib", "12"),
            ("linux.networking", "maybe"),
            ("linux.autostart", "perhaps"),
            ("linux.cpus", "-1"),
            ("linux.autostrat", "true"),
            ("macos.enabled", "true"),
            ("enabled", "true"),
        ] {
            let e = p.set(k, v).unwrap_err();
            assert!(!e.to_string().is_empty());
            assert_eq!(p, before, "a refused set changes nothing ({k} = {v})");
        }
        let e = p.set("linux.cpus", "0").unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
        let e = p.set("linux.autostrat", "true").unwrap_err();
        assert!(e.to_string().contains("present_on_boot"), "{e}");
    }

    #[test]
    fn entries_cover_every_field_and_round_trip_through_set() {
        let mut p = Policy::default();
        p.linux.cpus = Some(3);
        p.windows.networking = Networking::ProvisioningOnly;
        p.generic.on_host_shutdown = OnHostShutdown::Shutdown;
        let e = p.entries();
        assert_eq!(e.len(), SECTIONS.len() * FIELDS.len());
        let mut q = Policy::default();
        for (k, v) in &e {
            q.set(k, v).unwrap();
        }
        assert_eq!(p, q);
    }

    #[test]
    fn changes_say_when() {
        let old = Policy::default();
        let mut new = old.clone();
        new.set("linux.networking", "on").unwrap();
        new.set("linux.autostart", "false").unwrap();
        new.set("windows.enabled", "true").unwrap();
        let c = old.changes(&new);
        let when: Vec<_> = c.iter().map(|c| (c.key.as_str(), c.when)).collect();
        assert_eq!(
            when,
            [
                ("linux.autostart", Effect::NextBoot),
                ("linux.networking", Effect::NextStart),
                ("windows.enabled", Effect::Now),
            ]
        );
        assert_eq!((c[1].old.as_str(), c[1].new.as_str()), ("off", "on"));
        assert!(old.changes(&old).is_empty());
    }

    #[test]
    fn any_networking_needs_an_enabled_kind() {
        let mut p = Policy::default();
        assert!(!p.any_networking());
        p.windows.networking = Networking::On;
        assert!(!p.any_networking(), "windows is disabled");
        p.windows.enabled = true;
        assert!(p.any_networking());
        assert!(!Policy::closed().any_networking());
    }
}
