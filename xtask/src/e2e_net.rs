//! `cargo xtask e2e --variant net`: RayOS's networking end to end
//! (docs/network.md), on an installed RayOS under nested TCG.
//!
//! The outer QEMU gives the RayOS machine a virtio NIC on QEMU user
//! networking `10.0.3.0/24` (so it does not overlap the inner VMs'
//! `10.0.2.0/24`), where `10.0.3.100:80` is forwarded (`guestfwd`) to an
//! HTTP server this process runs on 127.0.0.1 (through `busybox nc`, one
//! per connection). `fetch` [`NET_TEST_URL`] is typed into the Linux VM's
//! serial console through `vm console linux` at the `rayos>` prompt; the
//! bundled test guest (rayos-testkit's, a stand-in for a real
//! distribution) prints `FETCH ok <sha256> <bytes>` or `FETCH failed: why`. The bytes travel: server → outer NAT → RayOS's link (its
//! DHCP lease) → the Linux VM's QEMU user networking → the guest.
//!
//! 1. install from the ISO (stages 1-2 of `e2e`; the policy's default:
//!    networking off);
//! 2. boot: networking off — the guest has no network device (`FETCH
//!    failed: no network device`), `status` shows RayOS's Ethernet link
//!    down and untouched, the server saw no request;
//! 3. `policy set linux.networking on` at the `rayos>` prompt: the answer
//!    says it applies at the VM's next cold start; RayOS's link gets a
//!    DHCP lease from the outer QEMU (`status`);
//! 4. `vm stop linux`, `vm start linux`: the guest fetches the file; its
//!    SHA-256 and size equal the served bytes; `status` shows the VM with
//!    network.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rayos_image::qemu::{Qemu, QemuError};
use rayos_testkit::guest::NET_TEST_URL;

use crate::e2e::{Installed, Run};

/// How long the nested guest may take to boot and fetch.
const GUEST_SECS: u64 = 900;
/// The served file's size: large enough to cross both NATs in many
/// segments, small enough for nested TCG.
const PAYLOAD_BYTES: usize = 256 * 1024;

/// A one-file HTTP/1.0 server on 127.0.0.1 (ephemeral port), in a thread
/// for the life of the process; records the request lines it got.
struct Server {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

fn serve_one(mut s: TcpStream, path: &str, payload: &[u8], requests: &Mutex<Vec<String>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match s.read(&mut b) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or("").to_string();
    if let Ok(mut r) = requests.lock() {
        r.push(line.clone());
    }
    let wanted = line.split_whitespace().nth(1) == Some(path) && line.starts_with("GET ");
    let _ = if wanted {
        s.write_all(
            format!(
                "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                payload.len()
            )
            .as_bytes(),
        )
        .and_then(|_| s.write_all(payload))
    } else {
        s.write_all(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    };
}

impl Server {
    fn start(path: &'static str, payload: Vec<u8>) -> Result<Server> {
        let l = TcpListener::bind("127.0.0.1:0").context("cannot listen on 127.0.0.1")?;
        let port = l.local_addr()?.port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let r = Arc::clone(&requests);
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                serve_one(s, path, &payload, &r);
            }
        });
        Ok(Server { port, requests })
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// The outer NIC: user networking on 10.0.3.0/24 with 10.0.3.100:80
/// forwarded to the server through `busybox nc` (spawned per connection).
fn outer_nic(port: u16) -> Vec<String> {
    let host = NET_TEST_URL
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .unwrap_or("10.0.3.100");
    vec![
        "-nic".into(),
        format!(
            "user,model=virtio-net-pci,net=10.0.3.0/24,guestfwd=tcp:{host}:80-cmd:/usr/bin/busybox nc 127.0.0.1 {port}"
        ),
    ]
}

/// At the `rayos>` prompt: attaches to the Linux VM's console, types
/// `fetch URL` until the guest answers (it may still be booting), and
/// returns its `FETCH ok|failed` line; then leaves the console.
fn guest_fetch(run: &Run, vm: &mut Qemu, what: &str) -> Result<String> {
    vm.send_serial("\n")?;
    run.expect(vm, "admin prompt", "rayos>", 120)?;
    vm.send_serial("vm console linux\n")?;
    run.expect(
        vm,
        "`vm console linux` attached",
        "Connected to the console of VM linux",
        120,
    )?;
    let deadline = Instant::now() + run.timeout(GUEST_SECS);
    let line = loop {
        vm.send_serial(&format!("fetch {NET_TEST_URL}\n"))?;
        match vm.wait_for_any(&["FETCH ok ", "FETCH failed"], Duration::from_secs(30)) {
            Ok((_, l)) => break l,
            Err(QemuError::Timeout { .. }) if Instant::now() < deadline => {}
            Err(e) => {
                return Err(e).with_context(|| format!("{what}: the guest never answered `fetch`"));
            }
        }
    };
    run.ok(&format!("{what}: {}", line.trim()));
    vm.send_serial("\x1d")?;
    run.expect(vm, "Ctrl-] leaves the console", "Left the console", 60)?;
    Ok(line)
}

/// Types `line` at the `rayos>` prompt and waits for `want` in its output
/// (or one of `bad`), up to `secs`, repeating the command every `every`
/// seconds when it has not shown `want` yet.
pub(crate) fn poll(
    run: &Run,
    vm: &mut Qemu,
    what: &str,
    line: &str,
    want: &str,
    bad: &[&str],
    secs: u64,
) -> Result<String> {
    let deadline = Instant::now() + run.timeout(secs);
    let mut markers = vec![want];
    markers.extend_from_slice(bad);
    loop {
        vm.send_serial(&format!("{line}\n"))?;
        match vm.wait_for_any(&markers, Duration::from_secs(20)) {
            Ok((0, l)) => {
                run.ok(&format!("{what}: {}", l.trim()));
                return Ok(l);
            }
            Ok((_, l)) => bail!("{what}: got instead {}\n{}", l.trim(), vm.tail()),
            Err(QemuError::Timeout { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("{what}: not seen within {secs} s"));
            }
        }
    }
}

pub fn after_install(run: &Run, work: &Path, installed: &Installed) -> Result<()> {
    let path = NET_TEST_URL
        .strip_prefix("http://")
        .and_then(|r| r.find('/').map(|i| &r[i..]))
        .context("NET_TEST_URL has no path")?;
    let path: &'static str = Box::leak(path.to_string().into_boxed_str());
    let mut payload = vec![0u8; PAYLOAD_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut payload))
        .context("reading /dev/urandom")?;
    let want_sha = rayos_base::hash::sha256(&payload);
    let server = Server::start(path, payload)?;
    run.ok(&format!(
        "HTTP server on 127.0.0.1:{} serves {path} ({PAYLOAD_BYTES} bytes, sha256 {want_sha})",
        server.port
    ));

    // 2. Boot with networking off.
    let mut cfg = installed.boot_config(work, "boot1")?;
    cfg.extra_args.extend(outer_nic(server.port));
    let mut vm = Qemu::start(&cfg)?;
    run.ready_with_linux_vm(&mut vm, "rayosd healthy", 900)?;
    let got = guest_fetch(
        run,
        &mut vm,
        "networking off: the guest's fetch fails (no network device)",
    )?;
    if !got.contains("FETCH failed: no network device") {
        bail!("with networking off the guest answered: {got}");
    }
    vm.send_serial("\n")?;
    run.expect(&mut vm, "back at the admin prompt", "rayos>", 60)?;
    let line = poll(
        run,
        &mut vm,
        "networking off: `status` says so",
        "status",
        "network: off",
        &["network: on"],
        60,
    )?;
    drop(line);
    let eth = vm.wait_for("link eth0", Duration::from_secs(30))?;
    if !eth.contains(" down ") || eth.contains("10.0.3.") {
        bail!("with networking off RayOS's link is not down and unconfigured: {eth}");
    }
    run.ok(&format!("RayOS's link stays down: {}", eth.trim()));
    if !server.requests().is_empty() {
        bail!(
            "the server got requests while networking was off: {:?}",
            server.requests()
        );
    }

    // 3. Networking on, from the admin prompt.
    vm.send_serial("policy set linux.networking on\n")?;
    run.expect(
        &mut vm,
        "`policy set linux.networking on` saved; the answer says when",
        "linux.networking = on (was off): takes effect at the VM's next cold start",
        60,
    )?;
    poll(
        run,
        &mut vm,
        "RayOS's link has a DHCP lease from the outer network",
        "status",
        "10.0.3.15/24 via 10.0.3.2",
        &[],
        120,
    )?;

    // 4. The VM's next cold start has a network: the fetch succeeds.
    vm.send_serial("vm stop linux\n")?;
    run.expect(&mut vm, "`vm stop linux`", "VM linux stopped", 300)?;
    vm.send_serial("vm start linux\n")?;
    run.expect(
        &mut vm,
        "`vm start linux` (cold)",
        "VM linux cold-booted",
        300,
    )?;
    let got = guest_fetch(run, &mut vm, "the guest fetched the file through both NATs")?;
    if !got.contains("FETCH ok ") {
        bail!("with networking on the guest answered: {got}");
    }
    let mut words = got
        .split("FETCH ok ")
        .nth(1)
        .unwrap_or("")
        .split_whitespace();
    let (sha, bytes) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if sha != want_sha || bytes != PAYLOAD_BYTES.to_string() {
        bail!(
            "the guest got {bytes} bytes with sha256 {sha}; the server sent {PAYLOAD_BYTES} with {want_sha}"
        );
    }
    run.ok("the fetched bytes equal the served bytes (sha256 and size)");
    let reqs = server.requests();
    if !reqs.iter().any(|r| r.starts_with(&format!("GET {path} "))) {
        bail!("the server saw no GET {path}: {reqs:?}");
    }
    run.ok(&format!("the server answered {} request(s)", reqs.len()));
    poll(
        run,
        &mut vm,
        "`status` shows the Linux VM with network",
        "status",
        "network (NAT)",
        &[],
        60,
    )?;
    drop(vm);
    Ok(())
}
