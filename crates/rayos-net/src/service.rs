//! `rayos net`, the wired-network service PID 1 runs in installed mode.
//!
//! Behaviour, once per tick (2 s):
//! - read the policy (current generation, then `.prev`; fails closed: an
//!   unusable policy means off). Networking is on when any enabled kind
//!   has `networking = on` or `provisioning_only`;
//! - off: links RayOS configured are cleared (address removed, link
//!   down) and forgotten; links it never touched stay as they are. With
//!   networking off from boot on, no link is ever touched;
//! - on: every wired Ethernet link is brought up; a link with carrier and
//!   no lease gets one by DHCP (address, default route, DNS servers into
//!   resolv.conf); a lease is renewed at T1 and dropped when it expires;
//!   a link that loses its carrier loses its address, and gets a new
//!   lease when the carrier returns. Failed attempts back off from 5 s to
//!   60 s;
//! - the status goes to `/run/rayos/network.json` ([`NetStatus`]), which
//!   `rayos status` shows.
//!
//! `lo` is not this service's: PID 1 brings it up at boot, always.
//!
//! The machine is behind the [`Host`] trait so the rules above are unit
//! tested with a fake; `tests/dhcp_netns.rs` runs the real thing against
//! dnsmasq in network namespaces.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::Lease;
use crate::link::LinkInfo;

/// What the service does to the machine.
pub trait Host {
    /// The current time.
    fn now(&self) -> Instant;
    /// Whether the policy allows networking now.
    fn networking_allowed(&mut self) -> bool;
    /// The machine's network links.
    fn links(&mut self) -> Vec<LinkInfo>;
    /// Sets `link` up or down.
    fn set_up(&mut self, link: &str, up: bool) -> Result<(), String>;
    /// Gets a lease for `link` (DHCP).
    fn acquire(&mut self, link: &LinkInfo) -> Result<Lease, String>;
    /// Renews `lease` on `link`.
    fn renew(&mut self, link: &LinkInfo, lease: &Lease) -> Result<Lease, String>;
    /// Address, prefix and default route of `lease` on `link`.
    fn apply(&mut self, link: &str, lease: &Lease) -> Result<(), String>;
    /// Removes the addresses and routes of `link`.
    fn clear(&mut self, link: &str) -> Result<(), String>;
    /// Writes `resolv.conf` with these servers.
    fn write_dns(&mut self, servers: &[Ipv4Addr]);
    /// Writes the status file `rayos status` reads.
    fn write_status(&mut self, status: &NetStatus);
}

/// One link as `rayos status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// The link's name.
    pub name: String,
    /// Its hardware address.
    pub mac: String,
    /// Whether it is wired Ethernet (wireless links are not touched).
    pub wired: bool,
    /// Whether it is up.
    pub up: bool,
    /// Whether it has a carrier.
    pub carrier: bool,
    /// `not touched`, `no carrier`, `bound`, `retrying: <why>`.
    pub state: String,
    /// Its lease, while bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
}

/// `/run/rayos/network.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NetStatus {
    /// The policy allows networking for some VM kind.
    pub enabled: bool,
    /// Every link the service sees.
    pub links: Vec<LinkStatus>,
}

#[derive(Debug, Clone)]
enum LinkState {
    /// Up, waiting for carrier.
    NoCarrier,
    Bound {
        lease: Lease,
        at: Instant,
    },
    Retry {
        at: Instant,
        backoff: Duration,
        why: String,
    },
}

const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The service's memory: the links it configured.
#[derive(Debug, Default)]
pub struct Net {
    links: BTreeMap<String, LinkState>,
}

impl Net {
    /// A service that configured no link yet.
    pub fn new() -> Net {
        Net::default()
    }

    /// One pass of the rules in the module doc.
    pub fn tick(&mut self, h: &mut dyn Host) {
        let enabled = h.networking_allowed();
        let links = h.links();
        if !enabled {
            for name in std::mem::take(&mut self.links).into_keys() {
                if links.iter().any(|l| l.name == name) {
                    let _ = h.clear(&name);
                    let _ = h.set_up(&name, false);
                }
            }
        } else {
            self.links.retain(|n, _| links.iter().any(|l| &l.name == n));
            for l in links.iter().filter(|l| l.wired) {
                self.link(h, l);
            }
        }
        let status = NetStatus {
            enabled,
            links: h
                .links()
                .into_iter()
                .map(|l| {
                    let (state, lease) = match self.links.get(&l.name) {
                        None => ("not touched".to_string(), None),
                        Some(LinkState::NoCarrier) => ("no carrier".into(), None),
                        Some(LinkState::Bound { lease, .. }) => {
                            ("bound".into(), Some(lease.clone()))
                        }
                        Some(LinkState::Retry { why, .. }) => (format!("retrying: {why}"), None),
                    };
                    LinkStatus {
                        name: l.name,
                        mac: l.mac,
                        wired: l.wired,
                        up: l.up,
                        carrier: l.carrier,
                        state,
                        lease,
                    }
                })
                .collect(),
        };
        h.write_status(&status);
    }

    fn link(&mut self, h: &mut dyn Host, l: &LinkInfo) {
        let now = h.now();
        if !l.up {
            if let Err(e) = h.set_up(&l.name, true) {
                self.links.insert(
                    l.name.clone(),
                    LinkState::Retry {
                        at: now + FIRST_BACKOFF,
                        backoff: FIRST_BACKOFF,
                        why: e,
                    },
                );
                return;
            }
            // The carrier shows a moment after the link is up.
            self.links
                .entry(l.name.clone())
                .or_insert(LinkState::NoCarrier);
            return;
        }
        if !l.carrier {
            if let Some(LinkState::Bound { .. }) = self.links.get(&l.name) {
                let _ = h.clear(&l.name);
            }
            self.links.insert(l.name.clone(), LinkState::NoCarrier);
            return;
        }
        let state = self
            .links
            .get(&l.name)
            .cloned()
            .unwrap_or(LinkState::NoCarrier);
        let next = match state {
            LinkState::Bound { lease, at } => {
                let age = now.saturating_duration_since(at);
                if age < Duration::from_secs(lease.renew_secs.into()) {
                    return;
                }
                match h.renew(l, &lease) {
                    // The same address again: re-setting it would drop
                    // the routes through it for a moment.
                    Ok(new)
                        if (new.address, new.prefix, new.gateway)
                            == (lease.address, lease.prefix, lease.gateway) =>
                    {
                        LinkState::Bound {
                            lease: new,
                            at: now,
                        }
                    }
                    Ok(new) => self.bind(h, l, new, now),
                    Err(_) if age < Duration::from_secs(lease.lease_secs.into()) => {
                        // Try again next tick until the lease runs out.
                        return;
                    }
                    Err(e) => {
                        let _ = h.clear(&l.name);
                        LinkState::Retry {
                            at: now,
                            backoff: FIRST_BACKOFF,
                            why: format!("lease expired: {e}"),
                        }
                    }
                }
            }
            LinkState::Retry { at, .. } if now < at => return,
            LinkState::Retry { backoff, .. } => self.attempt(h, l, now, backoff),
            LinkState::NoCarrier => self.attempt(h, l, now, FIRST_BACKOFF),
        };
        self.links.insert(l.name.clone(), next);
    }

    fn attempt(
        &self,
        h: &mut dyn Host,
        l: &LinkInfo,
        now: Instant,
        backoff: Duration,
    ) -> LinkState {
        match h.acquire(l) {
            Ok(lease) => self.bind(h, l, lease, now),
            Err(why) => LinkState::Retry {
                at: now + backoff,
                backoff: (backoff * 2).min(MAX_BACKOFF),
                why,
            },
        }
    }

    fn bind(&self, h: &mut dyn Host, l: &LinkInfo, lease: Lease, now: Instant) -> LinkState {
        match h.apply(&l.name, &lease) {
            Ok(()) => {
                if !lease.dns.is_empty() {
                    h.write_dns(&lease.dns);
                }
                LinkState::Bound { lease, at: now }
            }
            Err(why) => LinkState::Retry {
                at: now + FIRST_BACKOFF,
                backoff: FIRST_BACKOFF * 2,
                why,
            },
        }
    }
}

/// Where the real service reads and writes.
#[derive(Debug, Clone)]
pub struct Options {
    /// The data volume (its policy decides).
    pub state_dir: PathBuf,
    /// `/sys/class/net` (tests point it elsewhere).
    pub sys_class_net: PathBuf,
    /// Where the status file goes (`/run/rayos/network.json`).
    pub status_file: PathBuf,
    /// Where `resolv.conf` goes.
    pub resolv_conf: PathBuf,
    /// The host name sent with DHCP requests.
    pub hostname: Option<String>,
    /// How long one DHCP exchange may take.
    pub dhcp_timeout: Duration,
}

/// The machine, for [`Net::tick`].
pub struct RealHost {
    /// What the service was started with.
    pub opts: Options,
    last_policy_note: Option<String>,
}

impl RealHost {
    /// The machine, as `opts` says.
    pub fn new(opts: Options) -> RealHost {
        RealHost {
            opts,
            last_policy_note: None,
        }
    }
}

/// Whether the policy in `state_dir` allows networking, failing closed,
/// and why not when it cannot be read.
pub fn policy_allows_networking(state_dir: &Path) -> (bool, Option<String>) {
    let path = rayos_state::DataLayout::new(state_dir).policy();
    let name = path.to_string_lossy();
    let parse = |b: Vec<u8>| rayos_state::Policy::parse(&name, &String::from_utf8_lossy(&b));
    let cur = rayos_state::atomic::read_generation(&path, rayos_state::Generation::Current)
        .map_err(|e| e.to_string())
        .and_then(|b| parse(b).map_err(|e| e.to_string()));
    match cur {
        Ok(p) => (p.any_networking(), None),
        Err(e) => {
            match rayos_state::atomic::read_generation(&path, rayos_state::Generation::Previous)
                .ok()
                .and_then(|b| parse(b).ok())
            {
                Some(p) => (
                    p.any_networking(),
                    Some(format!("{e}; using the previous generation")),
                ),
                None => (false, Some(format!("{e}; networking stays off"))),
            }
        }
    }
}

impl Host for RealHost {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn networking_allowed(&mut self) -> bool {
        let (on, note) = policy_allows_networking(&self.opts.state_dir);
        if note != self.last_policy_note {
            if let Some(n) = &note {
                eprintln!("rayos net: policy: {n}");
            }
            self.last_policy_note = note;
        }
        on
    }

    fn links(&mut self) -> Vec<LinkInfo> {
        crate::link::links(&self.opts.sys_class_net)
    }

    fn set_up(&mut self, link: &str, up: bool) -> Result<(), String> {
        eprintln!("rayos net: {link} {}", if up { "up" } else { "down" });
        crate::link::set_up(link, up).map_err(|e| rayos_base::error::chain(&e))
    }

    fn acquire(&mut self, link: &LinkInfo) -> Result<Lease, String> {
        let mac = crate::link::parse_mac(&link.mac)
            .ok_or_else(|| format!("{} has no Ethernet address", link.name))?;
        crate::client::acquire(
            &link.name,
            mac,
            self.opts.hostname.as_deref(),
            self.opts.dhcp_timeout,
        )
        .map_err(|e| rayos_base::error::chain(&e))
    }

    fn renew(&mut self, link: &LinkInfo, lease: &Lease) -> Result<Lease, String> {
        let mac = crate::link::parse_mac(&link.mac)
            .ok_or_else(|| format!("{} has no Ethernet address", link.name))?;
        crate::client::renew(
            &link.name,
            mac,
            lease,
            self.opts.hostname.as_deref(),
            self.opts.dhcp_timeout,
        )
        .map_err(|e| rayos_base::error::chain(&e))
    }

    fn apply(&mut self, link: &str, lease: &Lease) -> Result<(), String> {
        let chain = |e: crate::link::LinkError| rayos_base::error::chain(&e);
        crate::link::set_address(link, lease.address, lease.prefix).map_err(chain)?;
        if let Some(gw) = lease.gateway {
            crate::link::add_default_route(link, gw).map_err(chain)?;
        }
        eprintln!(
            "rayos net: {link} {}/{} via {}",
            lease.address,
            lease.prefix,
            lease
                .gateway
                .map(|g| g.to_string())
                .unwrap_or_else(|| "no gateway".into())
        );
        Ok(())
    }

    fn clear(&mut self, link: &str) -> Result<(), String> {
        eprintln!("rayos net: {link}: address removed");
        crate::link::clear_address(link).map_err(|e| rayos_base::error::chain(&e))
    }

    fn write_dns(&mut self, servers: &[Ipv4Addr]) {
        let text: String = servers
            .iter()
            .map(|s| format!("nameserver {s}\n"))
            .collect();
        let text = format!("# written by rayos net from DHCP\n{text}");
        if let Err(e) = write_replace(&self.opts.resolv_conf, text.as_bytes()) {
            eprintln!(
                "rayos net: cannot write {}: {e}",
                self.opts.resolv_conf.display()
            );
        }
    }

    fn write_status(&mut self, status: &NetStatus) {
        if let Ok(text) = serde_json::to_vec_pretty(status) {
            let _ = write_replace(&self.opts.status_file, &text);
        }
    }
}

/// Temp file + rename: readers see the old or the new file, never half.
fn write_replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Reads the status file the service writes.
pub fn read_status(path: &Path) -> Option<NetStatus> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Runs the service until killed.
pub fn run(opts: Options, tick: Duration) -> ! {
    let mut host = RealHost::new(opts);
    let mut net = Net::new();
    loop {
        net.tick(&mut host);
        std::thread::sleep(tick);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Fake {
        t: Duration,
        base: Option<Instant>,
        allowed: bool,
        links: Vec<LinkInfo>,
        /// Each acquire answers the next of these (then errors).
        offers: Vec<Result<Lease, String>>,
        renew_ok: bool,
        calls: Vec<String>,
        dns: Vec<Ipv4Addr>,
        status: NetStatus,
    }

    fn lease(a: u8) -> Lease {
        Lease {
            address: Ipv4Addr::new(10, 0, 2, a),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
            dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            server: Some(Ipv4Addr::new(10, 0, 2, 2)),
            lease_secs: 100,
            renew_secs: 50,
        }
    }

    fn eth(name: &str) -> LinkInfo {
        LinkInfo {
            name: name.into(),
            mac: "52:54:00:12:34:56".into(),
            up: false,
            carrier: false,
            wired: true,
        }
    }

    impl Fake {
        fn new(links: Vec<LinkInfo>) -> Fake {
            Fake {
                base: Some(Instant::now()),
                links,
                ..Default::default()
            }
        }
        fn advance(&mut self, secs: u64) {
            self.t += Duration::from_secs(secs);
        }
        fn link(&mut self, name: &str) -> &mut LinkInfo {
            self.links.iter_mut().find(|l| l.name == name).unwrap()
        }
        fn take_calls(&mut self) -> Vec<String> {
            std::mem::take(&mut self.calls)
        }
    }

    impl Host for Fake {
        fn now(&self) -> Instant {
            self.base.unwrap() + self.t
        }
        fn networking_allowed(&mut self) -> bool {
            self.allowed
        }
        fn links(&mut self) -> Vec<LinkInfo> {
            self.links.clone()
        }
        fn set_up(&mut self, link: &str, up: bool) -> Result<(), String> {
            self.calls
                .push(format!("{link} {}", if up { "up" } else { "down" }));
            let l = self.link(link);
            l.up = up;
            Ok(())
        }
        fn acquire(&mut self, link: &LinkInfo) -> Result<Lease, String> {
            self.calls.push(format!("{} dhcp", link.name));
            if self.offers.is_empty() {
                Err("no answer".into())
            } else {
                self.offers.remove(0)
            }
        }
        fn renew(&mut self, link: &LinkInfo, lease: &Lease) -> Result<Lease, String> {
            self.calls.push(format!("{} renew", link.name));
            if self.renew_ok {
                Ok(lease.clone())
            } else {
                Err("no answer".into())
            }
        }
        fn apply(&mut self, link: &str, lease: &Lease) -> Result<(), String> {
            self.calls.push(format!("{link} addr {}", lease.address));
            Ok(())
        }
        fn clear(&mut self, link: &str) -> Result<(), String> {
            self.calls.push(format!("{link} clear"));
            Ok(())
        }
        fn write_dns(&mut self, servers: &[Ipv4Addr]) {
            self.dns = servers.to_vec();
        }
        fn write_status(&mut self, status: &NetStatus) {
            self.status = status.clone();
        }
    }

    #[test]
    fn off_touches_nothing() {
        let mut f = Fake::new(vec![eth("eth0"), eth("eth1")]);
        f.link("eth1").up = true;
        f.link("eth1").carrier = true;
        let mut n = Net::new();
        for _ in 0..5 {
            n.tick(&mut f);
            f.advance(2);
        }
        assert!(f.calls.is_empty(), "{:?}", f.calls);
        assert!(!f.status.enabled);
        assert!(f.status.links.iter().all(|l| l.state == "not touched"));
    }

    #[test]
    fn on_brings_links_up_and_leases_those_with_carrier() {
        let mut f = Fake::new(vec![eth("eth0"), eth("eth1")]);
        f.allowed = true;
        f.offers = vec![Ok(lease(15))];
        let mut n = Net::new();
        n.tick(&mut f);
        assert_eq!(f.take_calls(), ["eth0 up", "eth1 up"]);
        f.link("eth0").carrier = true;
        n.tick(&mut f);
        assert_eq!(f.take_calls(), ["eth0 dhcp", "eth0 addr 10.0.2.15"]);
        assert_eq!(f.dns, [Ipv4Addr::new(10, 0, 2, 3)]);
        let s0 = &f.status.links[0];
        assert_eq!((s0.state.as_str(), s0.lease.is_some()), ("bound", true));
        assert_eq!(f.status.links[1].state, "no carrier");
        // Bound and not yet at T1: nothing more.
        f.advance(10);
        n.tick(&mut f);
        assert!(f.take_calls().is_empty());
    }

    #[test]
    fn carrier_loss_clears_and_return_leases_again() {
        let mut f = Fake::new(vec![eth("eth0")]);
        f.allowed = true;
        f.link("eth0").up = true;
        f.link("eth0").carrier = true;
        f.offers = vec![Ok(lease(15)), Ok(lease(16))];
        let mut n = Net::new();
        n.tick(&mut f);
        f.take_calls();
        f.link("eth0").carrier = false;
        n.tick(&mut f);
        assert_eq!(f.take_calls(), ["eth0 clear"]);
        n.tick(&mut f);
        assert!(f.take_calls().is_empty(), "cleared once");
        f.link("eth0").carrier = true;
        n.tick(&mut f);
        assert_eq!(f.take_calls(), ["eth0 dhcp", "eth0 addr 10.0.2.16"]);
    }

    #[test]
    fn failures_back_off_and_leases_renew_or_expire() {
        let mut f = Fake::new(vec![eth("eth0")]);
        f.allowed = true;
        f.link("eth0").up = true;
        f.link("eth0").carrier = true;
        let mut n = Net::new();
        n.tick(&mut f);
        assert_eq!(f.take_calls(), ["eth0 dhcp"]);
        assert!(f.status.links[0].state.starts_with("retrying: no answer"));
        f.advance(2);
        n.tick(&mut f);
        assert!(f.take_calls().is_empty(), "waits 5 s");
        f.advance(4);
        f.offers = vec![Ok(lease(15))];
        n.tick(&mut f);
        assert_eq!(f.take_calls(), ["eth0 dhcp", "eth0 addr 10.0.2.15"]);
        // T1 (50 s): renew; the server answers.
        f.advance(50);
        f.renew_ok = true;
        n.tick(&mut f);
        assert_eq!(
            f.take_calls(),
            ["eth0 renew"],
            "same address: not set again"
        );
        // Next T1 with no answer: keep the address until the lease ends.
        f.renew_ok = false;
        f.advance(60);
        n.tick(&mut f);
        assert_eq!(f.take_calls(), ["eth0 renew"]);
        f.advance(50);
        n.tick(&mut f);
        assert_eq!(f.take_calls(), ["eth0 renew", "eth0 clear"]);
        assert!(f.status.links[0].state.contains("lease expired"));
    }

    #[test]
    fn turning_off_clears_only_what_rayos_configured() {
        let mut f = Fake::new(vec![eth("eth0"), eth("wlan0")]);
        f.link("wlan0").wired = false;
        f.link("wlan0").up = true;
        f.allowed = true;
        f.link("eth0").up = true;
        f.link("eth0").carrier = true;
        f.offers = vec![Ok(lease(15))];
        let mut n = Net::new();
        n.tick(&mut f);
        f.take_calls();
        f.allowed = false;
        n.tick(&mut f);
        assert_eq!(f.take_calls(), ["eth0 clear", "eth0 down"]);
        n.tick(&mut f);
        assert!(f.take_calls().is_empty());
        assert_eq!(f.status.links[1].state, "not touched");
    }
}
