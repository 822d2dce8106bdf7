//! `rayos daemon`: runs rayosd (`rayos_supervisor::run`) with the QEMU
//! backend until SIGTERM/SIGINT, then saves or shuts down the VMs per policy
//! and exits 0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rayos_supervisor::DaemonOptions;
use rayos_vmm::{QemuConfig, QemuVmm};

use super::{Exit, exit};

#[derive(clap::Args)]
pub struct Args {
    /// The data volume (policy, registry, VM directories).
    #[arg(long, default_value = rayos_state::layout::DEFAULT_ROOT)]
    state_dir: PathBuf,
    /// The API socket (created mode 0600; VM sockets go beside it in vm/).
    #[arg(long, default_value = rayos_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Seconds host shutdown (SIGTERM) may take to save every VM.
    #[arg(long, default_value_t = 90)]
    shutdown_timeout: u64,
    /// Seconds `stop` waits for a guest after the ACPI power button.
    #[arg(long, default_value_t = 60)]
    stop_timeout: u64,
    /// cgroup v2 directory for VM CPU weights; "none" turns weights off.
    #[arg(long, default_value = "/sys/fs/cgroup/rayos")]
    cgroup: String,
    /// API connections reading or being answered at once (the oldest idle
    /// one is shed for a new one; 503 when all are busy).
    #[arg(long, default_value_t = rayos_supervisor::server::MAX_CONNECTIONS)]
    max_connections: usize,
    /// Event streams (`/v1/events`) at once; a new one ends the oldest.
    #[arg(long, default_value_t = rayos_supervisor::server::MAX_EVENT_STREAMS)]
    max_event_streams: usize,
    /// Seconds a client has to send its whole request after connecting.
    #[arg(long, default_value_t = rayos_supervisor::server::REQUEST_DEADLINE.as_secs())]
    request_timeout: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut opts = DaemonOptions::new(&args.state_dir, &args.socket);
    opts.shutdown_deadline = Duration::from_secs(args.shutdown_timeout);
    opts.stop_timeout = Duration::from_secs(args.stop_timeout);
    opts.api = rayos_supervisor::ServerLimits {
        max_connections: args.max_connections.max(1),
        max_event_streams: args.max_event_streams.max(1),
        request_deadline: Duration::from_secs(args.request_timeout.max(1)),
    };
    opts.cgroup_root = match args.cgroup.as_str() {
        "none" | "" => None,
        p => Some(PathBuf::from(p)),
    };
    let vmm = Arc::new(QemuVmm::new(QemuConfig::default()));
    rayos_supervisor::run(opts, vmm)
        .map_err(|e| anyhow::Error::new(Exit::new(exit::FAILED, rayos_base::error::chain(&e))))?;
    Ok(ExitCode::SUCCESS)
}
