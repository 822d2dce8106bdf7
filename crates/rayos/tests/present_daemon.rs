//! `rayos present` with the real `rayos daemon` (QEMU backend, TCG) and the
//! tiny test guest: the policy's `present_on_boot` brings the VM on the
//! display once autostart is done, and `rayos vm hide/present` switch the
//! presenter (its `RAYOS_PRESENTATION` markers follow). The presenter draws
//! into memory (`--memory`), as this machine has no framebuffer; what it
//! draws is checked by crates/rayos-present/tests/service_qemu.rs.

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rayos_api::VmState;
use rayos_base::marker::Marker;
use rayos_testkit::daemon::{Host, TermOnDrop};

fn rayos() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rayos"))
}

/// Waits for the presenter to print `want` on a line of its own.
fn wait_line(rx: &mpsc::Receiver<String>, want: &Marker, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.trim().parse().as_ref() == Ok(want) => return,
            Ok(_) => {}
            Err(_) => panic!("no {want:?} from rayos present within {timeout:?}"),
        }
    }
}

#[test]
fn presenter_follows_present_on_boot_and_the_cli() {
    let mut h = Host::with_binary(env!("CARGO_BIN_EXE_rayos"), "rayos-present");
    h.policy("version = 1\n[linux]\nautostart = true\npresent_on_boot = true\n");
    let socket = h.socket();
    let client = h.client();
    // Define the VM with a first daemon, then restart it so autostart and
    // present_on_boot apply as at a RayOS boot.
    h.start_daemon();
    h.create_guest("lin", &[]);
    h.term_daemon();
    h.start_daemon();

    // The presenter comes up first (init starts it right after rayosd).
    let mut child = rayos()
        .arg("present")
        .arg("--socket")
        .arg(&socket)
        .args(["--memory", "1024x768", "--input", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rayos present");
    let stdout = child.stdout.take().unwrap();
    let _p = TermOnDrop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    wait_line(&rx, &Marker::PresentationOff, Duration::from_secs(30));
    // Autostart + present_on_boot: the VM appears without anyone asking.
    wait_line(
        &rx,
        &Marker::PresentationOn { vm: "lin".into() },
        Duration::from_secs(120),
    );
    let info = client.show("lin").unwrap();
    assert!(info.presented && info.state == VmState::Running, "{info:?}");

    h.ok(&["hide", "lin"]);
    wait_line(&rx, &Marker::PresentationOff, Duration::from_secs(30));
    // A hidden VM still has a screenshot (rayosd's QMP screendump), and
    // taking it does not present the VM.
    let png = h.dir().join("hidden.png");
    h.ok(&["screenshot", "lin", png.to_str().unwrap()]);
    let bytes = fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // IHDR: width and height of the VM's display.
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert!(width >= 320 && height >= 200, "{width}x{height}");
    assert!(!client.show("lin").unwrap().presented);
    h.ok(&["present", "lin"]);
    wait_line(
        &rx,
        &Marker::PresentationOn { vm: "lin".into() },
        Duration::from_secs(30),
    );
    // Stopping the VM clears its presentation: back to the home screen.
    h.ok(&["stop", "lin", "--force"]);
    wait_line(&rx, &Marker::PresentationOff, Duration::from_secs(60));
}
