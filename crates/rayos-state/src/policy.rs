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

pub const POLICY_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Networking {
    #[default]
    Off,
    On,
    /// Network only until the VM is marked provisioned (Windows setup).
    ProvisioningOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnHostShutdown {
    #[default]
    Save,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubsystemPolicy {
    pub enabled: bool,
    pub autostart: bool,
    pub present_on_boot: bool,
    pub networking: Networking,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    pub on_host_shutdown: OnHostShutdown,
    pub restart_on_crash: bool,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub version: u32,
    #[serde(default = "Policy::default_linux")]
    pub linux: SubsystemPolicy,
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

    pub fn for_kind(&self, kind: VmKind) -> &SubsystemPolicy {
        match kind {
            VmKind::Linux => &self.linux,
            VmKind::Windows => &self.windows,
            VmKind::Generic => &self.generic,
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
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
}
