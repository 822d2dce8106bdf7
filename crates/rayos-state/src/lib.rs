//! Persistent state of a RayOS install: the data volume's layout and the
//! schemas of the files on it (`machine.toml`, the policy, the VM registry),
//! and the one way files there are written (atomically, previous generation
//! kept).
//!
//! Both the installer (which seeds a fresh data volume) and rayosd (which owns
//! it at run time) use this crate, so the on-disk formats live in one place.
//! The system partition's shared names ([`system`]) and the PE reader of the
//! UKIs on it ([`pe`]) live here for the same reason, and so do the file
//! modes of VM directories ([`modes`]), which the installer stages and
//! rayosd keeps.
//!
//! Limits: this crate does no locking between processes; rayosd is the only
//! writer of the registry and the installer writes only to a volume it has
//! just created.

pub mod atomic;
pub mod guest;
pub mod layout;
pub mod machine;
pub mod modes;
pub mod pe;
pub mod policy;
pub mod registry;
pub mod system;
pub mod time;

pub use atomic::{AtomicError, Generation, read_with_fallback, write_atomic, write_atomic_mode};
pub use guest::GuestConfig;
pub use layout::DataLayout;
pub use machine::MachineConfig;
pub use policy::{
    AgentBridge, Change, Effect, Networking, OnHostShutdown, Policy, PolicyKeyError,
    SubsystemPolicy,
};
pub use registry::{Registry, VmDefinition, VmKind};

/// Schema version of the data volume as a whole. Bumped when any file's
/// format changes in a way an older RayOS cannot read.
pub const DATA_SCHEMA_VERSION: u32 = 1;

/// A TOML parse error turned into "file:line: message", the form every
/// RayOS config error takes so a person can go straight to the line.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub struct ConfigError {
    /// The file, as the person named it.
    pub path: String,
    /// 1-based; 0 when the error has no position (for example a wrong
    /// schema version found after parsing).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn from_toml(path: &str, text: &str, err: &toml::de::Error) -> Self {
        let line = err
            .span()
            .map(|s| {
                // count bytes, not chars: a span need not fall on a char boundary
                let end = s.start.min(text.len());
                text.as_bytes()[..end]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1
            })
            .unwrap_or(0);
        ConfigError {
            path: path.to_string(),
            line,
            message: err.message().to_string(),
        }
    }

    pub(crate) fn semantic(path: &str, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.to_string(),
            line: 0,
            message: message.into(),
        }
    }
}
