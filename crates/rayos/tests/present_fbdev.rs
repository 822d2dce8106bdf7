//! `rayos present` on a real Linux framebuffer and real evdev devices:
//! inside a QEMU machine (TCG) with a std VGA card (`bochs` DRM driver,
//! fbdev emulation → `/dev/fb0`) and q35's PS/2 keyboard (`atkbd` →
//! evdev), the presenter runs without rayosd. The test reads the home screen
//! back from QEMU's screendump of that machine, and types on its keyboard
//! with QMP `input-send-event` (a physical keyboard as far as the guest
//! knows): Ctrl+Alt+F12 hands the screen to the text console, Ctrl+Alt+Home
//! brings the home screen back.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rayos_base::marker::Marker;
use rayos_image::initramfs::{Compression, Initramfs};
use rayos_present::home;
use rayos_qmp::QmpClient;
use rayos_testkit::guest;
use rayos_testkit::ppm::read_ppm;
use serde_json::json;

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t devtmpfs dev /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
mkdir -p /run /tmp
for m in $(cat /modules-input); do insmod /lib/modules/$m 2>/dev/null; done
# The firmware's framebuffer first (vesafb, from vga= on the command line),
# as on a real machine before its DRM driver loads.
echo "FBDEV $(cat /sys/class/graphics/fb0/name 2>/dev/null) $(cat /sys/class/graphics/fb0/virtual_size 2>/dev/null)"
/usr/bin/rayos present --socket /run/no-rayosd.sock --input /dev/input --tty /dev/tty0 &
sleep 3
# The DRM driver takes the card over; the presenter must follow.
for m in $(cat /modules-display); do insmod /lib/modules/$m 2>/dev/null; done
i=0
while [ "$(cat /sys/class/graphics/fb0/name 2>/dev/null)" = VESA\ VGA ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
echo "FBDEV $(cat /sys/class/graphics/fb0/name 2>/dev/null) $(cat /sys/class/graphics/fb0/virtual_size 2>/dev/null)"
while :; do sleep 60; done
"#;

/// The guest initramfs: busybox, a stripped `rayos` with its libraries,
/// evdev and bochs (with dependencies), and the init script above.
fn build_initrd(dir: &Path) -> PathBuf {
    let (_, ver) = guest::host_kernel().expect("a kernel in /boot (linux-image-amd64)");
    let moddir = format!("/lib/modules/{ver}");
    let input = guest::module_load_order(
        Path::new(&moddir),
        &["evdev", "xhci_pci", "usbhid", "hid_generic"],
    )
    .expect("evdev and USB HID modules");
    let display = guest::module_load_order(Path::new(&moddir), &["bochs"]).expect("bochs module");
    let stripped = dir.join("rayos");
    let st = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(env!("CARGO_BIN_EXE_rayos"))
        .status()
        .expect("strip (binutils, scripts/install-deps.sh)");
    assert!(st.success());
    let mut ird = Initramfs::usr_merged();
    for d in ["dev", "proc", "sys", "run", "tmp", "lib/modules"] {
        ird.dir(d, 0o755).unwrap();
    }
    ird.copy("bin/busybox", Path::new("/usr/bin/busybox"), Some(0o755))
        .expect("busybox (busybox-static)");
    ird.file("init", 0o755, INIT.as_bytes()).unwrap();
    ird.elf("usr/bin/rayos", &stripped).unwrap();
    for (list, modules) in [("modules-input", &input), ("modules-display", &display)] {
        let mut names = Vec::new();
        for m in modules {
            let name = m.file_name().unwrap().to_string_lossy().into_owned();
            ird.copy(&format!("lib/modules/{name}"), m, Some(0o644))
                .unwrap();
            names.push(name);
        }
        ird.file(list, 0o644, names.join(" ").into_bytes()).unwrap();
    }
    let out = dir.join("initrd.img");
    ird.write(&out, Compression::None).unwrap();
    out
}

fn wait_log(log: &Path, from: usize, needle: &str, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if let Some(i) = text.get(from..).and_then(|t| t.find(needle)) {
            return from + i + needle.len();
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} on the serial console within {timeout:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The screen's text lines, as the home screen's layout reads them.
fn screen(qmp: &mut QmpClient, dir: &Path) -> Vec<String> {
    let shot = dir.join("shot.ppm");
    qmp.execute("screendump", Some(json!({"filename": shot})))
        .unwrap();
    let (w, h, px) = read_ppm(&shot);
    if let Some(d) = std::env::var_os("RAYOS_PRESENT_DUMP") {
        let _ = fs::copy(&shot, Path::new(&d).join("fbdev.ppm"));
    }
    home::read_screen(&px, w, h)
}

fn wait_screen(
    qmp: &mut QmpClient,
    dir: &Path,
    timeout: Duration,
    ok: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = screen(qmp, dir);
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "screen never matched: {s:#?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn keys(qmp: &mut QmpClient, qcodes: &[&str]) {
    let ev = |k: &str, down: bool| json!({"type": "key", "data": {"down": down, "key": {"type": "qcode", "data": k}}});
    let mut events: Vec<_> = qcodes.iter().map(|k| ev(k, true)).collect();
    events.extend(qcodes.iter().rev().map(|k| ev(k, false)));
    qmp.execute("input-send-event", Some(json!({ "events": events })))
        .unwrap();
}

#[test]
fn presenter_draws_on_fbdev_and_owns_the_evdev_keyboard() {
    let dir = tempfile::tempdir().unwrap();
    let (kernel, _) = guest::host_kernel().unwrap();
    let initrd = build_initrd(dir.path());
    let log = dir.path().join("serial.log");
    let qmp_path = dir.path().join("qmp.sock");
    let _q = Qemu(
        Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                "q35",
                "-accel",
                "tcg",
                "-nodefaults",
                "-m",
                "768",
            ])
            .args([
                "-display",
                "none",
                "-device",
                "VGA",
                "-device",
                "qemu-xhci,id=xhci",
            ])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            // VBE mode 0x144 (1024x768, 32 bpp) for vesafb.
            .args([
                "-append",
                "console=ttyS0 quiet loglevel=1 panic=-1 vga=0x344",
            ])
            .arg("-serial")
            .arg(format!("file:{}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-x86_64 (qemu-system-x86)"),
    );
    let boot = Duration::from_secs(240);
    let at = wait_log(&log, 0, "FBDEV VESA VGA 1024,768", boot);
    let at = wait_log(&log, at, &Marker::PresentationOff.to_string(), boot);
    // bochs replaced vesafb's /dev/fb0: the presenter reopened it.
    let at = wait_log(&log, at, "display changed: now ", boot);
    // The PS/2 keyboard was found and grabbed.
    wait_log(
        &log,
        0,
        "keyboard \"AT Translated Set 2 keyboard\" grabbed",
        boot,
    );

    let mut qmp = QmpClient::connect_retry(&qmp_path, Duration::from_secs(30)).unwrap();
    // The whole screen: the DRM fbdev emulation copies damaged pages to
    // the card a moment later, so a capture may hold half a frame, whose
    // undrawn cells read as U+FFFD.
    let is_home = |s: &[String]| {
        s.first().is_some_and(|l| l.starts_with("RayOS "))
            && s.iter().any(|l| l.contains("does not answer"))
            && !s.iter().any(|l| l.contains('\u{FFFD}'))
    };
    let s = wait_screen(&mut qmp, dir.path(), Duration::from_secs(60), is_home);
    assert!(s.iter().any(|l| l.contains("No VMs yet")), "{s:#?}");
    assert!(s.iter().any(|l| l.contains("Ctrl+Alt+Home")), "{s:#?}");

    // Ctrl+Alt+F12: input released, the text console gets the screen.
    keys(&mut qmp, &["ctrl", "alt", "f12"]);
    let at = wait_log(
        &log,
        at,
        "text console: input released",
        Duration::from_secs(60),
    );
    wait_screen(&mut qmp, dir.path(), Duration::from_secs(60), |s| {
        !s.first().is_some_and(|l| l.starts_with("RayOS "))
    });
    // Ctrl+Alt+Home: back, grabbed again, the home screen redrawn.
    keys(&mut qmp, &["ctrl", "alt", "home"]);
    let at = wait_log(
        &log,
        at,
        "leaving the text console",
        Duration::from_secs(60),
    );
    let s = wait_screen(&mut qmp, dir.path(), Duration::from_secs(60), is_home);

    // Hot-plug: a USB keyboard plugged in later is grabbed too, and
    // dropped when unplugged.
    qmp.execute(
        "device_add",
        Some(json!({"driver": "usb-kbd", "id": "kbd2", "bus": "xhci.0"})),
    )
    .unwrap();
    let at = wait_log(
        &log,
        at,
        "QEMU USB Keyboard\" grabbed",
        Duration::from_secs(60),
    );
    qmp.execute("device_del", Some(json!({"id": "kbd2"})))
        .unwrap();
    wait_log(
        &log,
        at,
        "QEMU USB Keyboard\" removed",
        Duration::from_secs(60),
    );
    eprintln!(
        "serial console:\n{}\nscreen:\n{}",
        fs::read_to_string(&log).unwrap_or_default(),
        s.join("\n")
    );
}
