//! RayOS's own network (docs/network.md): wired Ethernet with DHCPv4 when
//! the policy allows networking for any VM, nothing at all otherwise; `lo`
//! always (PID 1 calls [`link::set_up`] at boot).
//!
//! Layers, bottom up:
//! - [`dhcp`]: the DHCPv4 wire format (no I/O; untrusted bytes);
//! - [`link`]: which links exist (sysfs), up/down, address, default route
//!   (ioctls);
//! - [`client`]: one DHCP exchange on one link (UDP socket bound to it);
//! - [`service`]: `rayos net`, the loop that follows the policy and the
//!   links' carrier, behind a `Host` trait, and its status file.
//!
//! Limits: IPv4 only, wired only (no Wi-Fi), no static addresses. VMs do
//! not use these links directly: their QEMU user networking (NAT + DNS)
//! opens ordinary sockets on RayOS, which leave through the route set here.

pub mod client;
pub mod dhcp;
pub mod link;
pub mod service;

pub use service::{LinkStatus, NetStatus};
