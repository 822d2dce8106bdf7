//! `rayos net` against a real DHCP server: dnsmasq in one network
//! namespace, the service in another, joined by a veth pair (needs root,
//! `ip` and dnsmasq; CI has them, scripts/install-deps.sh).
//!
//! Proves: nothing is touched while the policy says off; `rayos policy
//! set linux.networking on` brings the link up with a DHCP lease (address,
//! default route, DNS); a lost carrier removes the address and its return
//! gets a lease again; turning the policy off takes the link down.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rayos_testkit::netns::VethPair;

const WAIT: Duration = Duration::from_secs(60);

fn sh(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Two namespaces, a veth pair, dnsmasq and `rayos net`; all removed on drop
/// (the processes first, then the namespaces with `ns`).
struct Lab {
    dir: tempfile::TempDir,
    ns: VethPair,
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Lab {
    fn new() -> Lab {
        Lab {
            dir: tempfile::tempdir().unwrap(),
            ns: VethPair::new("rayos").unwrap(),
            children: Vec::new(),
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn status_file(&self) -> PathBuf {
        self.dir.path().join("network.json")
    }

    fn resolv(&self) -> PathBuf {
        self.dir.path().join("resolv.conf")
    }

    fn spawn(&mut self, ns: &str, args: &[&str], log: &str) {
        let out = fs::File::create(self.dir.path().join(log)).unwrap();
        let c = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        self.children.push(c);
    }

    fn dnsmasq(&mut self) {
        let leases = self.dir.path().join("leases");
        let srv = self.ns.srv.clone();
        self.spawn(
            &srv,
            &[
                "dnsmasq",
                "--no-daemon",
                "--conf-file=/dev/null",
                "--interface=vs",
                "--bind-interfaces",
                "--port=0",
                "--dhcp-range=192.168.77.50,192.168.77.60,2m",
                "--dhcp-option=3,192.168.77.1",
                "--dhcp-option=6,192.168.77.1",
                &format!("--dhcp-leasefile={}", leases.display()),
                &format!(
                    "--pid-file={}",
                    self.dir.path().join("dnsmasq.pid").display()
                ),
            ],
            "dnsmasq.log",
        );
    }

    fn net(&mut self) {
        let cli = self.ns.cli.clone();
        let state = self.state().display().to_string();
        let status = self.status_file().display().to_string();
        let resolv = self.resolv().display().to_string();
        self.spawn(
            &cli,
            &[
                env!("CARGO_BIN_EXE_rayos"),
                "net",
                "--state-dir",
                &state,
                "--status-file",
                &status,
                "--resolv-conf",
                &resolv,
                "--tick",
                "1",
            ],
            "net.log",
        );
    }

    /// `rayos policy set KEY VALUE` with no rayosd: the file is written.
    fn policy(&self, key: &str, value: &str) {
        let o = Command::new(env!("CARGO_BIN_EXE_rayos"))
            .args(["policy", "--socket"])
            .arg(self.dir.path().join("no-daemon.sock"))
            .arg("--state-dir")
            .arg(self.state())
            .args(["set", key, value])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    /// `ip -4 addr` and the UP flag of the client's link.
    fn client_link(&self) -> (bool, String) {
        let l = ok(&["ip", "-n", &self.ns.cli, "-o", "link", "show", "vc"]);
        let flags = l
            .split('<')
            .nth(1)
            .unwrap_or("")
            .split('>')
            .next()
            .unwrap_or("");
        let up = flags.split(',').any(|f| f == "UP");
        let a = ok(&["ip", "-n", &self.ns.cli, "-4", "-o", "addr", "show", "vc"]);
        (up, a)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("net.log")).unwrap_or_default()
            + &fs::read_to_string(self.dir.path().join("dnsmasq.log")).unwrap_or_default()
    }

    fn wait(&self, what: &str, cond: impl Fn(&Lab) -> bool) {
        let t = Instant::now();
        while !cond(self) {
            assert!(
                t.elapsed() < WAIT,
                "{what} did not happen; link {:?}\n{}",
                self.client_link(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn status(path: &Path) -> Option<rayos_net::NetStatus> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

fn bound(l: &Lab) -> bool {
    l.client_link().1.contains("192.168.77.")
        && status(&l.status_file())
            .is_some_and(|s| s.links.iter().any(|x| x.name == "vc" && x.state == "bound"))
}

#[test]
fn dhcp_follows_the_policy_and_the_carrier() {
    let mut lab = Lab::new();
    lab.dnsmasq();
    fs::create_dir_all(lab.state().join("policy")).unwrap();
    fs::write(
        lab.state().join("policy/rayos-policy.toml"),
        "version = 1\n[linux]\nnetworking = \"off\"\n",
    )
    .unwrap();
    lab.net();
    // Off: the service runs and reports, and the link is not touched.
    lab.wait("a first status", |l| {
        status(&l.status_file()).is_some_and(|s| s.links.iter().any(|x| x.name == "vc"))
    });
    std::thread::sleep(Duration::from_secs(3));
    let s = status(&lab.status_file()).unwrap();
    assert!(!s.enabled);
    let (up, addr) = lab.client_link();
    assert!(
        !up && addr.is_empty(),
        "networking off touched the link: {addr}"
    );

    // On: a lease with address, default route and DNS.
    lab.policy("linux.networking", "on");
    lab.wait("a DHCP lease", bound);
    let route = ok(&["ip", "-n", &lab.ns.cli, "-4", "route", "show", "default"]);
    assert!(route.contains("via 192.168.77.1 dev vc"), "{route}");
    assert!(lab.client_link().1.contains("/24"));
    assert_eq!(
        fs::read_to_string(lab.resolv()).unwrap().lines().last(),
        Some("nameserver 192.168.77.1")
    );
    // The carrier goes (the peer is down): the address goes too.
    ok(&["ip", "-n", &lab.ns.srv, "link", "set", "vs", "down"]);
    lab.wait("the address to be removed", |l| {
        l.client_link().1.is_empty()
            && status(&l.status_file()).is_some_and(|s| {
                s.links
                    .iter()
                    .any(|x| x.name == "vc" && x.state == "no carrier")
            })
    });
    // It comes back: a new lease.
    ok(&["ip", "-n", &lab.ns.srv, "link", "set", "vs", "up"]);
    lab.wait("a lease after the carrier returned", bound);

    // Off again: the link RayOS configured is cleared and taken down.
    lab.policy("linux.networking", "off");
    lab.wait("the link to go down", |l| {
        let (up, addr) = l.client_link();
        !up && addr.is_empty()
    });
}
