//! `rayos net`: RayOS's wired-network service (PID 1 starts it in
//! installed mode; docs/network.md). Follows the policy and the links
//! until killed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use rayos_net::service::{self, Options};

#[derive(clap::Args)]
pub struct Args {
    /// The data volume whose policy decides whether networking is on.
    #[arg(long, default_value = rayos_base::paths::DATA)]
    state_dir: PathBuf,
    /// Where the status goes (read by `rayos status`).
    #[arg(long, default_value = rayos_base::paths::NETWORK_STATUS)]
    status_file: PathBuf,
    /// Where the DNS servers from DHCP go.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// The links to look at.
    #[arg(long, default_value = "/sys/class/net")]
    sys_class_net: PathBuf,
    /// Seconds between looks at the policy and the links.
    #[arg(long, default_value_t = 2)]
    tick: u64,
    /// Seconds one DHCP attempt may take.
    #[arg(long, default_value_t = 10)]
    dhcp_timeout: u64,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let hostname = rustix_hostname();
    service::run(
        Options {
            state_dir: a.state_dir,
            sys_class_net: a.sys_class_net,
            status_file: a.status_file,
            resolv_conf: a.resolv_conf,
            hostname,
            dhcp_timeout: Duration::from_secs(a.dhcp_timeout.max(1)),
        },
        Duration::from_secs(a.tick.max(1)),
    )
}

/// The host name to send in DHCP requests (so the router lists RayOS by
/// name), when set.
fn rustix_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s != "(none)")
}
