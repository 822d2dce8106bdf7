//! The presenter service end to end with a real VM display (QEMU under
//! TCG running the tiny guest that prints its keyboard events) and a
//! stand-in rayosd: home screen contents, hotkeys turning into API calls,
//! the VM's frame on the display, keys reaching the presented VM only (and
//! reported to rayosd as physical input), the hotkey back home, and a VM
//! whose display cannot be reached.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{MockDaemon, MockVm, Qemu};
use rayos_base::marker::Marker;
use rayos_present::display::MemoryDisplay;
use rayos_present::home;
use rayos_present::input::InputEvent;
use rayos_present::keymap::code;
use rayos_present::scale::Scaler;
use rayos_present::service::{self, Options};
use rayos_qmp::QmpClient;
use rayos_testkit::ppm::read_ppm;
use serde_json::json;

const W: u32 = 1024;
const H: u32 = 768;

fn key(h: &service::Handle, c: u16, down: bool) {
    h.input(InputEvent::Key {
        code: c,
        value: i32::from(down),
    });
}

fn tap(h: &service::Handle, c: u16) {
    key(h, c, true);
    key(h, c, false);
}

fn chord(h: &service::Handle, c: u16) {
    key(h, code::LEFTCTRL, true);
    key(h, code::LEFTALT, true);
    tap(h, c);
    key(h, code::LEFTALT, false);
    key(h, code::LEFTCTRL, false);
}

fn wait_marker(rx: &mpsc::Receiver<Marker>, want: &Marker, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(m) if m == *want => return,
            Ok(_) => {}
            Err(_) => panic!("no marker {want:?} within {timeout:?}"),
        }
    }
}

fn screen(v: &Arc<Mutex<Vec<u32>>>) -> Vec<String> {
    home::read_screen(&v.lock().unwrap(), W, H)
}

/// With RAYOS_PRESENT_DUMP=DIR, saves what the display showed as PPM files
/// (for a person to look at when a test fails).
fn dump(v: &Arc<Mutex<Vec<u32>>>, name: &str) {
    let Some(dir) = std::env::var_os("RAYOS_PRESENT_DUMP") else {
        return;
    };
    let mut out = format!("P6\n{W} {H}\n255\n").into_bytes();
    for p in v.lock().unwrap().iter() {
        out.extend_from_slice(&[(p >> 16) as u8, (p >> 8) as u8, *p as u8]);
    }
    let _ = std::fs::write(std::path::Path::new(&dir).join(format!("{name}.ppm")), out);
}

#[test]
fn presenter_follows_the_api_and_routes_keys_to_the_presented_vm_only() {
    let q = Qemu::guest();
    let tmp = tempfile::tempdir().unwrap();
    let daemon = MockDaemon::start(
        tmp.path(),
        vec![
            MockVm {
                name: "alpha".into(),
                state: "running".into(),
                presented: false,
                vnc: Some(q.vnc()),
                vnc_after_start: None,
            },
            MockVm {
                name: "beta".into(),
                state: "stopped".into(),
                presented: false,
                vnc: None,
                vnc_after_start: Some(tmp.path().join("no-such-vnc.sock")),
            },
        ],
    );
    let display = MemoryDisplay::new(W, H);
    let visible = display.visible.clone();
    let (mtx, mrx) = mpsc::channel::<Marker>();
    let mtx = Mutex::new(mtx);
    let logs = Arc::new(Mutex::new(Vec::<String>::new()));
    let logs2 = logs.clone();
    let h = service::spawn(
        Options {
            api_socket: daemon.socket.clone(),
            input_dir: None,
            tty: None,
            version: "9.9.9".into(),
            marker: Arc::new(move |m| {
                let _ = mtx.lock().unwrap().send(m.clone());
            }),
            log: Arc::new(move |m| logs2.lock().unwrap().push(m.to_string())),
        },
        Box::new(display),
    );

    // Home screen: version, both VMs with their states and keys.
    wait_marker(&mrx, &Marker::PresentationOff, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let t = screen(&visible);
        if t.iter().any(|l| l.contains("beta")) || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(text[0].starts_with("RayOS 9.9.9"), "{text:#?}");
    let alpha = text
        .iter()
        .find(|l| l.contains("alpha"))
        .expect("alpha listed");
    assert!(
        alpha.contains("Ctrl+Alt+F1") && alpha.contains("running (hidden)"),
        "{alpha}"
    );
    let beta = text
        .iter()
        .find(|l| l.contains("beta"))
        .expect("beta listed");
    assert!(
        beta.contains("Ctrl+Alt+F2") && beta.contains("stopped"),
        "{beta}"
    );

    q.wait_console("KEYS ready", Duration::from_secs(180));

    // Keys on the home screen go to no VM.
    tap(&h, 48); // B
    // Ctrl+Alt+F1: the presenter asks rayosd to present alpha, then shows it.
    chord(&h, code::F1);
    daemon.wait_call("present alpha", Duration::from_secs(10));
    wait_marker(
        &mrx,
        &Marker::PresentationOn { vm: "alpha".into() },
        Duration::from_secs(30),
    );
    tap(&h, code::A);
    q.wait_console("KEY 30 0", Duration::from_secs(30));
    // A person's key in the presented VM is reported to rayosd, which
    // pauses an agent's injected input (docs/agent-bridge.md).
    daemon.wait_call("physical input", Duration::from_secs(10));

    // The display shows the guest's screen, scaled to fit: compare with
    // QEMU's own screendump through the same scaling.
    let mut qmp = QmpClient::connect_retry(&q.qmp_path(), Duration::from_secs(10)).unwrap();
    qmp.execute("stop", None).unwrap();
    let shot = q.dir.path().join("shot.ppm");
    let mut best = usize::MAX;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(300));
        qmp.execute("screendump", Some(json!({"filename": shot})))
            .unwrap();
        let (sw, sh, px) = read_ppm(&shot);
        let s = Scaler::new(sw, sh, W, H);
        let v = visible.lock().unwrap().clone();
        let mut differ = 0;
        for y in 0..H {
            for x in 0..W {
                let want = s
                    .to_source(x, y)
                    .map(|(a, b)| px[(b * sw + a) as usize])
                    .unwrap_or(0);
                if v[(y * W + x) as usize] != want {
                    differ += 1;
                }
            }
        }
        best = best.min(differ);
        if differ == 0 {
            break;
        }
    }
    qmp.execute("cont", None).unwrap();
    eprintln!("display vs screendump: {best} pixels differ");
    dump(&visible, "vm");
    // Only the blinking text cursor (one cell, scaled) may differ.
    assert!(
        best <= 4 * 9 * 16,
        "{best} display pixels differ from the VM's screen"
    );

    // Ctrl+Alt+Home: back home, rayosd told to hide alpha; Ctrl and Alt
    // were released in the guest, and keys typed now reach no VM.
    chord(&h, code::HOME);
    wait_marker(&mrx, &Marker::PresentationOff, Duration::from_secs(10));
    daemon.wait_call("hide alpha", Duration::from_secs(10));
    tap(&h, 46); // C, while alpha is hidden
    // Present alpha again through the API (as `rayos vm present alpha`).
    daemon.update(|s| {
        for v in &mut s.vms {
            v.presented = v.name == "alpha";
        }
    });
    wait_marker(
        &mrx,
        &Marker::PresentationOn { vm: "alpha".into() },
        Duration::from_secs(30),
    );
    tap(&h, 32); // D
    let console = q.wait_console("KEY 32 0", Duration::from_secs(30));
    let mut keys: Vec<&str> = console.lines().filter(|l| l.starts_with("KEY ")).collect();
    // The releases sent when leaving may arrive in either order (QEMU
    // paces key events with a timer and lifts keys on disconnect).
    if keys.len() == 8 {
        keys[4..6].sort();
    }
    assert_eq!(
        keys,
        [
            // Ctrl+Alt+F1 was typed on the home screen: nothing of it.
            "KEY 30 1", "KEY 30 0",
            // Ctrl, Alt down for Ctrl+Alt+Home, released when leaving.
            "KEY 29 1", "KEY 56 1", "KEY 29 0", "KEY 56 0", "KEY 32 1", "KEY 32 0",
        ],
        "B (home) and C (hidden) must not reach the guest; Home never does; presenter log:\n{}",
        logs.lock().unwrap().join("\n")
    );

    // Ctrl+Alt+F2: beta is stopped, so it is started, then presented; its
    // display cannot be reached and the home screen says so.
    chord(&h, code::F1 + 1);
    daemon.wait_call("start beta", Duration::from_secs(10));
    daemon.wait_call("present beta", Duration::from_secs(10));
    wait_marker(&mrx, &Marker::PresentationOff, Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = screen(&visible);
        if t.iter().any(|l| l.contains("cannot show beta")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no error on the home screen: {t:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    dump(&visible, "home");
    h.stop();
    let logs = logs.lock().unwrap();
    assert!(
        logs.iter().any(|l| l.contains("presenting alpha")),
        "{logs:#?}"
    );
}
