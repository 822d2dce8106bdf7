//! The RFB client against real QEMU (TCG): the frame it receives equals
//! QEMU's own QMP screendump, and keys sent through it reach the guest as
//! the right evdev codes (the tiny test guest prints them on its serial
//! console).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rayos_present::rfb::ServerEvent;
use rayos_present::vnc;
use rayos_qmp::QmpClient;
use rayos_testkit::ppm::read_ppm;
use serde_json::json;

/// Kills QEMU when the test ends, however it ends.
struct Qemu {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Qemu {
    fn start(extra: &[&str]) -> Qemu {
        let dir = tempfile::tempdir().unwrap();
        let vnc = dir.path().join("vnc.sock");
        let qmp = dir.path().join("qmp.sock");
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-nodefaults",
            "-m",
            "256",
        ])
        .args(["-display", "none", "-device", "VGA"])
        .arg("-vnc")
        .arg(format!("unix:{}", vnc.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        let child = cmd.spawn().expect(
            "qemu-system-x86_64 not runnable: install qemu-system-x86 (scripts/install-deps.sh)",
        );
        Qemu { child, dir }
    }

    fn vnc(&self) -> PathBuf {
        self.dir.path().join("vnc.sock")
    }

    fn qmp(&self) -> QmpClient {
        QmpClient::connect_retry(&self.dir.path().join("qmp.sock"), Duration::from_secs(30))
            .expect("QMP")
    }
}

#[test]
fn frame_matches_qmp_screendump() {
    // No guest at all: SeaBIOS prints its banner and "No bootable device"
    // in VGA text mode.
    let q = Qemu::start(&[]);
    let mut qmp = q.qmp();
    let (mut reader, _writer) = vnc::connect(&q.vnc(), Duration::from_secs(30)).unwrap();
    reader.set_read_timeout(Some(Duration::from_secs(30)));
    assert!(reader.init.name.contains("QEMU"), "{:?}", reader.init);

    // Wait until SeaBIOS has drawn text (some non-black pixels).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        reader.next_update().unwrap();
        let lit = reader.fb.pixels.iter().filter(|&&p| p != 0).count();
        if lit > 500 && reader.fb.width >= 640 {
            break;
        }
        assert!(Instant::now() < deadline, "SeaBIOS never drew text");
    }
    // Freeze the guest, let the last changes arrive, then compare the
    // client's copy with QEMU's own rendering of the same surface.
    qmp.execute("stop", None).unwrap();
    let shot = q.dir.path().join("shot.ppm");
    let mut best = usize::MAX;
    for _ in 0..20 {
        drain(&mut reader);
        qmp.execute("screendump", Some(json!({"filename": shot})))
            .unwrap();
        let (w, h, px) = read_ppm(&shot);
        assert_eq!((w, h), (reader.fb.width, reader.fb.height));
        let differ = px
            .iter()
            .zip(&reader.fb.pixels)
            .filter(|(a, b)| a != b)
            .count();
        best = best.min(differ);
        if differ == 0 {
            break;
        }
        // The VGA text cursor blinks between the two captures; ask again.
        _writer.refresh().unwrap();
    }
    // A blinking text cursor (one 9x16 cell) is the only difference
    // allowed between two captures of a stopped guest.
    assert!(best <= 9 * 16, "{best} pixels differ from the screendump");
}

/// Applies updates until the server has sent nothing for 0.7 s, or 5 s
/// have passed (a blinking cursor never goes quiet).
fn drain(reader: &mut vnc::VncReader) {
    let until = Instant::now() + Duration::from_secs(5);
    reader.set_read_timeout(Some(Duration::from_millis(700)));
    while Instant::now() < until && reader.next_update().is_ok() {}
    reader.set_read_timeout(Some(Duration::from_secs(30)));
}

fn wait_for(log: &Path, needle: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} on the guest console within {timeout:?}; console:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn keys_reach_the_guest_as_scancodes() {
    let guest = rayos_testkit::guest::linux_guest().expect("test guest");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("console.log");
    let cmdline = format!("{} rayos.keys=1", guest.cmdline);
    let q = Qemu::start(&[
        "-kernel",
        guest.kernel.to_str().unwrap(),
        "-initrd",
        guest.initrd.to_str().unwrap(),
        "-append",
        &cmdline,
        "-serial",
        &format!("file:{}", log.display()),
    ]);
    let (mut reader, writer) = vnc::connect(&q.vnc(), Duration::from_secs(30)).unwrap();
    reader.set_read_timeout(Some(Duration::from_secs(30)));
    // QEMU acknowledges extended key events right after SetEncodings.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !writer.extended_keys() {
        let ev = reader.next_event().unwrap();
        if matches!(ev, ServerEvent::ExtendedKeys) {
            break;
        }
        assert!(Instant::now() < deadline, "no extended key event ack");
    }
    assert!(writer.extended_keys());
    // Keep reading the display so the server never blocks on us.
    let pump = std::thread::spawn(move || while reader.next_event().is_ok() {});

    wait_for(&log, "KEYS ready", Duration::from_secs(180));
    // A (plain scancode 0x1e), Right Ctrl (E0 1D) and Home (E0 47): the
    // guest's evdev must report the same Linux codes.
    for code in [30u16, 97, 102] {
        writer.key(code, true).unwrap();
        writer.key(code, false).unwrap();
    }
    let text = wait_for(&log, "KEY 102 0", Duration::from_secs(60));
    let keys: Vec<&str> = text.lines().filter(|l| l.starts_with("KEY ")).collect();
    assert_eq!(
        keys,
        [
            "KEY 30 1",
            "KEY 30 0",
            "KEY 97 1",
            "KEY 97 0",
            "KEY 102 1",
            "KEY 102 0"
        ],
        "console:\n{text}"
    );
    drop(q);
    let _ = pump.join();
}

/// A guest whose only job is to load the `bochs` DRM driver: the display
/// goes from the firmware's 720x400 text mode to the driver's mode, and the
/// client must follow (DesktopSize) and still match QEMU's screendump.
#[test]
fn desktop_size_follows_a_guest_mode_change() {
    use rayos_image::initramfs::{Compression, Initramfs};
    let (kernel, ver) = rayos_testkit::guest::host_kernel().expect("a kernel in /boot");
    let modules = rayos_testkit::guest::module_load_order(
        Path::new(&format!("/lib/modules/{ver}")),
        &["bochs"],
    )
    .expect("bochs module");
    let dir = tempfile::tempdir().unwrap();
    let mut ird = Initramfs::new();
    for d in ["bin", "dev", "proc", "sys", "lib", "lib/modules"] {
        ird.dir(d, 0o755).unwrap();
    }
    ird.copy("bin/busybox", Path::new("/usr/bin/busybox"), Some(0o755))
        .expect("busybox (busybox-static)");
    let mut names = Vec::new();
    for m in &modules {
        let name = m.file_name().unwrap().to_string_lossy().into_owned();
        ird.copy(&format!("lib/modules/{name}"), m, Some(0o644))
            .unwrap();
        names.push(name);
    }
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nmount -t devtmpfs dev /dev\n\
         sleep 2\nfor m in {}; do insmod /lib/modules/$m; done\necho MODE_SET\nwhile :; do sleep 60; done\n",
        names.join(" ")
    );
    ird.file("init", 0o755, init.into_bytes()).unwrap();
    let initrd = dir.path().join("initrd.img");
    ird.write(&initrd, Compression::None).unwrap();

    let q = Qemu::start(&[
        "-kernel",
        kernel.to_str().unwrap(),
        "-initrd",
        initrd.to_str().unwrap(),
        "-append",
        "console=ttyS0 quiet loglevel=1 panic=-1",
    ]);
    let (mut reader, _writer) = vnc::connect(&q.vnc(), Duration::from_secs(30)).unwrap();
    reader.set_read_timeout(Some(Duration::from_secs(60)));
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut sizes = vec![(reader.fb.width, reader.fb.height)];
    loop {
        let (_, resized) = reader.next_update().unwrap();
        if resized {
            sizes.push((reader.fb.width, reader.fb.height));
        }
        // The driver's mode is larger than any text or firmware mode.
        if reader.fb.width >= 1024 {
            break;
        }
        assert!(Instant::now() < deadline, "no mode change; sizes {sizes:?}");
    }
    assert!(sizes.len() >= 2, "{sizes:?}");
    let mut qmp = q.qmp();
    // Freeze the guest (its console cursor blinks) before comparing.
    qmp.execute("stop", None).unwrap();
    let shot = q.dir.path().join("shot.ppm");
    let mut best = usize::MAX;
    for _ in 0..20 {
        drain(&mut reader);
        qmp.execute("screendump", Some(json!({"filename": shot})))
            .unwrap();
        let (w, h, px) = read_ppm(&shot);
        if (w, h) != (reader.fb.width, reader.fb.height) {
            continue;
        }
        let differ = px
            .iter()
            .zip(&reader.fb.pixels)
            .filter(|(a, b)| a != b)
            .count();
        best = best.min(differ);
        if differ == 0 {
            break;
        }
    }
    assert_eq!(
        best, 0,
        "after the mode change ({sizes:?}) the frame differs"
    );
}
