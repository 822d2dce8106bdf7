//! rayosd, the VM supervisor: owns the VM registry, the lifecycle state
//! machine, policy, and the HTTP/JSON control API on a unix socket.
//!
//! Layers, each its own module:
//! - [`lifecycle`]: the states and allowed transitions, the event each
//!   transition sends, and which states allow each operation, as tables;
//! - [`store`]: policy and registry loading with fallbacks, registry writes;
//! - [`saved`]: saved-state files, fingerprints, unusable states kept aside;
//! - [`create`]: new VMs' definitions, disks and boot files (imports
//!   inspected and converted), checks of registered definitions;
//! - VM directories private to root (0700/0600): `rayos_state::modes`;
//! - [`console`], [`cgroup`], [`events`]: console log, CPU weights, events;
//! - [`supervisor`]: runtime state and the rules every operation shares;
//!   its submodules hold the operations by job (reports; create/delete;
//!   start/resume and attach/autostart; suspend/stop; present/hide; the
//!   monitor; host shutdown);
//! - [`server`]: the HTTP API; [`daemon`]: the process (socket, signals);
//! - [`bridge`]: the agent bridge's in-VM channel (MCP on a virtio-serial
//!   port, by policy).
//!
//! Device models are driven only through the `rayos_vmm::Vmm` trait, so
//! everything here is tested with a fake backend and runs unchanged on QEMU.

pub mod bridge;
pub mod cgroup;
pub mod console;
pub mod create;
pub mod daemon;
pub mod events;
pub mod lifecycle;
pub mod saved;
pub mod server;
pub mod store;
pub mod supervisor;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

pub use daemon::{DaemonOptions, run};
pub use server::ServerLimits;
pub use supervisor::{Config, OpError, Supervisor};
