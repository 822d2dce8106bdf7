//! Records what a real DHCP server sends, for the `dhcp_reply` fuzz
//! target's seeds: dnsmasq in one network namespace, a veth pair, and this
//! xtask re-run inside the other namespace (`cargo xtask fuzz
//! --dhcp-capture DIR`, hidden) sending RayOS's own DISCOVER and REQUEST
//! through `rayos_net::client::record_reply`. The same lab as
//! `crates/rayos/tests/net_dhcp.rs`; it needs root, `ip` and dnsmasq.
//! Namespaces and dnsmasq are removed when it returns.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use rayos_net::client::record_reply;
use rayos_net::dhcp::{self, MessageType, Request};
use rayos_testkit::netns::{self, VethPair};

/// The client end of the veth pair, inside the client namespace.
const LINK: &str = netns::CLIENT_LINK;
const WAIT: Duration = Duration::from_secs(10);

/// The namespaces and the server; dnsmasq is ended before the namespaces
/// go (field order).
struct Lab {
    dnsmasq: Option<std::process::Child>,
    ns: VethPair,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(c) = &mut self.dnsmasq {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the lab and returns the recorded replies as (seed name, bytes).
pub fn record(work: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut lab = Lab {
        dnsmasq: None,
        ns: VethPair::new("rayos-seed")?,
    };
    netns::ip(&["-n", &lab.ns.cli, "link", "set", LINK, "up"])?;
    let leases = work.join("dhcp.leases");
    lab.dnsmasq = Some(
        Command::new("ip")
            .args(["netns", "exec", &lab.ns.srv, "dnsmasq", "--no-daemon"])
            .args([
                "--conf-file=/dev/null",
                "--interface=vs",
                "--bind-interfaces",
                "--port=0",
                // Authoritative: a REQUEST for an address it does not
                // hand out gets a NAK instead of silence.
                "--dhcp-authoritative",
                "--dhcp-range=192.168.77.50,192.168.77.60,2m",
                "--dhcp-option=3,192.168.77.1",
                "--dhcp-option=6,192.168.77.1,192.168.77.2",
                "--domain=lab.example",
            ])
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run dnsmasq (dnsmasq-base)")?,
    );
    let out = work.join("dhcp-capture");
    fs::create_dir_all(&out)?;
    let status = Command::new("ip")
        .args(["netns", "exec", &lab.ns.cli])
        .arg(std::env::current_exe()?)
        .args(["fuzz", "--dhcp-capture"])
        .arg(&out)
        .status()?;
    ensure!(status.success(), "recording DHCP replies failed ({status})");
    let mut seeds = Vec::new();
    for name in ["dnsmasq-offer.bin", "dnsmasq-ack.bin", "dnsmasq-nak.bin"] {
        let bytes = fs::read(out.join(name)).with_context(|| format!("no {name} recorded"))?;
        seeds.push((name.to_string(), bytes));
    }
    Ok(seeds)
}

/// Inside the client namespace: DISCOVER → OFFER, REQUEST → ACK, and a
/// REQUEST for an address outside the server's range → NAK; each reply's
/// bytes go to `dir`.
pub fn capture(dir: &Path) -> Result<()> {
    let mac_text = fs::read_to_string(format!("/sys/class/net/{LINK}/address"))?;
    let mac = rayos_net::link::parse_mac(mac_text.trim())
        .with_context(|| format!("{LINK} has no MAC address: {mac_text:?}"))?;
    // The xid is the link's MAC: replies are matched by xid and MAC.
    let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]);
    let mut req = Request::discover(xid, mac, Some("rayos-seed"));
    let record = |req: &Request<'_>, kinds: &[MessageType], name: &str| -> Result<dhcp::Reply> {
        let bytes = record_reply(LINK, req, kinds, WAIT)?
            .with_context(|| format!("no {kinds:?} from dnsmasq within {WAIT:?}"))?;
        fs::write(dir.join(name), &bytes)?;
        Ok(dhcp::parse(&bytes)?)
    };
    let offer = record(&req, &[MessageType::Offer], "dnsmasq-offer.bin")?;
    req.select(&offer);
    record(&req, &[MessageType::Ack], "dnsmasq-ack.bin")?;
    // INIT-REBOOT for an address the server never gave.
    req.xid ^= 1;
    req.requested = Some(Ipv4Addr::new(192, 168, 77, 200));
    req.server_id = None;
    record(&req, &[MessageType::Nak], "dnsmasq-nak.bin")?;
    Ok(())
}
