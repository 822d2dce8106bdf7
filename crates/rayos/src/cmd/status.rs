//! `rayos status`: what RayOS is doing — boot steps and faults from PID 1's
//! status file, services, and the VMs as rayosd reports them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use rayos_init::control::InitStatus;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON (the init status plus the daemon's health and VMs).
    #[arg(long)]
    json: bool,
    /// Init status file to read.
    #[arg(long, default_value = rayos_base::paths::INIT_STATUS)]
    status_file: PathBuf,
    /// rayosd's API socket.
    #[arg(long, default_value = rayos_base::paths::API_SOCKET)]
    socket: PathBuf,
    /// The data volume (for machine.toml).
    #[arg(long, default_value = rayos_base::paths::DATA)]
    state_dir: PathBuf,
    /// `rayos net`'s status file.
    #[arg(long, default_value = rayos_base::paths::NETWORK_STATUS)]
    network_file: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let init = InitStatus::read(&args.status_file);
    let client = rayos_api::Client::new(&args.socket).with_timeout(Some(Duration::from_secs(5)));
    let health = client.health();
    let vms = if health.is_ok() {
        client.list().ok()
    } else {
        None
    };
    let network = network_status(&args.network_file);
    let machine =
        rayos_state::read_with_fallback(&rayos_state::DataLayout::new(&args.state_dir).machine())
            .ok()
            .and_then(|(b, _)| {
                rayos_state::MachineConfig::parse("machine.toml", &String::from_utf8_lossy(&b)).ok()
            });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let local_time = rayos_init::sys::local_time(now);
    let memory = rayos_init::memory::rayos_processes();
    let total_kib: u64 = memory.iter().map(|p| p.rss_kib).sum();
    if args.json {
        let v = serde_json::json!({
            "memory": { "processes": memory, "rss_kib_total": total_kib },
            "init": init.as_ref().ok(),
            "init_error": init.as_ref().err().map(|e| rayos_base::error::chain(e)),
            "daemon": health.as_ref().ok(),
            "daemon_error": health.as_ref().err().map(|e| rayos_base::error::chain(e)),
            "vms": vms,
            "network": network,
            "machine": machine,
            "local_time": local_time,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    match &init {
        Ok(s) => print_init(s),
        Err(e) => println!(
            "init: no status ({}): this is not a running RayOS system, or init has not started yet",
            rayos_base::error::chain(e)
        ),
    }
    match &health {
        Ok(h) => {
            println!(
                "rayosd: {} (version {}, {} VMs)",
                h.status, h.version, h.vms
            );
            if let Some(a) = &h.accel {
                println!("accelerator: {a}");
            }
            for n in &h.notes {
                println!("  ! {n}");
            }
        }
        Err(e) => println!(
            "rayosd: not reachable on {} ({})",
            args.socket.display(),
            rayos_base::error::chain(e)
        ),
    }
    if !memory.is_empty() {
        let each: Vec<String> = memory
            .iter()
            .map(|p| format!("{} {} KiB", p.role, p.rss_kib))
            .collect();
        println!(
            "memory: RayOS's own processes {total_kib} KiB resident ({})",
            each.join(", ")
        );
    }
    match &machine {
        Some(m) => println!(
            "machine: {}, timezone {} (local time {}), locale {}, keyboard {}",
            m.hostname,
            m.timezone,
            local_time.as_deref().unwrap_or("?"),
            m.locale,
            m.keyboard
        ),
        None => println!("local time: {}", local_time.as_deref().unwrap_or("?")),
    }
    print_network(&network);
    if let Some(vms) = vms {
        if vms.is_empty() {
            println!("VMs: none");
        }
        for vm in vms {
            println!(
                "  vm {:<16} {:<8} {:?}{}{}{}",
                vm.name,
                format!("{:?}", vm.kind).to_lowercase(),
                vm.state,
                if vm.presented { ", presented" } else { "" },
                if vm.network {
                    ", network (NAT)"
                } else {
                    ", no network"
                },
                vm.last_boot
                    .map(|b| format!(", {}", b.as_str()))
                    .unwrap_or_default()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_init(s: &InitStatus) {
    println!(
        "RayOS {} ({} mode), {}; boot {}",
        s.version,
        s.mode,
        s.phase,
        if s.boot_id.is_empty() {
            "?"
        } else {
            &s.boot_id
        }
    );
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!(
        "ready: {}   linux vm ready: {}   blessed: {}",
        yes(s.ready),
        yes(s.linux_vm_ready),
        s.blessed.as_deref().unwrap_or("-")
    );
    match (&s.data_device, &s.data_mounted) {
        (Some(d), Some(m)) => println!(
            "data volume: {d} on {m}{}",
            if s.data_read_only { " (read-only)" } else { "" }
        ),
        (Some(d), None) => println!("data volume: {d} (not mounted)"),
        _ => println!("data volume: none"),
    }
    if !s.faults.is_empty() {
        println!("faults:");
        for f in &s.faults {
            println!("  ! {f}");
        }
    }
    println!("boot steps:");
    for st in &s.steps {
        println!(
            "  {:<13} {:<8} {:>6} ms  {}",
            st.name, st.result, st.millis, st.message
        );
    }
    if !s.services.is_empty() {
        println!("services:");
        for sv in &s.services {
            println!(
                "  {:<16} {:<10} pid {:<7} restarts {}",
                sv.name,
                sv.state,
                sv.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                sv.restarts
            );
        }
    }
}

/// The network service's status, or (when it does not run: recovery,
/// installer) the links as sysfs shows them, marked not touched.
fn network_status(file: &std::path::Path) -> rayos_net::NetStatus {
    if let Some(s) = rayos_net::service::read_status(file) {
        return s;
    }
    rayos_net::NetStatus {
        enabled: false,
        links: rayos_net::link::links(std::path::Path::new("/sys/class/net"))
            .into_iter()
            .map(|l| rayos_net::LinkStatus {
                name: l.name,
                mac: l.mac,
                wired: l.wired,
                up: l.up,
                carrier: l.carrier,
                state: "rayos net does not run".into(),
                lease: None,
            })
            .collect(),
    }
}

fn print_network(n: &rayos_net::NetStatus) {
    let running = !n.links.iter().any(|l| l.state.contains("does not run"));
    println!(
        "network: {}",
        if !running {
            "rayos net does not run (installer or recovery mode, or no data volume): RayOS configures no link"
        } else if n.enabled {
            "on (the policy allows networking for a VM kind): wired Ethernet by DHCP"
        } else {
            "off (the policy allows no VM networking): RayOS's links are left down"
        }
    );
    for l in &n.links {
        // Addresses as the kernel has them, also for links RayOS does not
        // configure (lo).
        let addr = rayos_net::link::address(&l.name)
            .map(|(a, p)| format!("{a}/{p}"))
            .unwrap_or_else(|| "no address".into());
        let via = l
            .lease
            .as_ref()
            .and_then(|x| x.gateway)
            .map(|g| format!(" via {g}"))
            .unwrap_or_default();
        println!(
            "  link {:<10} {:<5} {:<10} {addr}{via}  ({}{})",
            l.name,
            if l.up { "up" } else { "down" },
            if l.carrier && l.up { "carrier" } else { "-" },
            l.state,
            if l.wired || l.name == "lo" {
                ""
            } else {
                ", not wired Ethernet: never configured"
            }
        );
    }
}
