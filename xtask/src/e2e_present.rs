//! `cargo xtask e2e-present`: the presenter and input routing of issue 6
//! end to end on an installed RayOS under QEMU + OVMF (TCG).
//!
//! 1. install from the ISO exactly as `cargo xtask e2e` does (answer file,
//!    GPT and UEFI boot entry checked);
//! 2. boot the installed disk with a display device (`-device VGA`: OVMF's
//!    GOP → efifb, then `bochs`) and its PS/2 keyboard: `RAYOS_READY`,
//!    `RAYOS_LINUX_VM_READY`, `RAYOS_PRESENTATION:off`; the bundled Linux
//!    guest gets going (`KEYS ready` in `vm console linux`, typed at the
//!    `rayos>` prompt on the serial console);
//! 3. home screen: QMP `screendump` of the outer machine, its text read back
//!    with `rayos_present::home::read_screen`: the `linux` VM, running
//!    (hidden), with its hotkey;
//! 4. Ctrl+Alt+F1 typed with QMP `input-send-event` →
//!    `RAYOS_PRESENTATION:on:linux`; the VM's own display is saved with
//!    `vm screenshot linux` (a PNG on the data volume) and the outer screen
//!    dumped: after power-off the outer screen must equal the VM's image
//!    through the presenter's scaler (`scale::Scaler`) — the guest's display
//!    shows its banner (`rayos_testkit::guest::SCREEN_BANNER`);
//! 5. letters typed on the outer keyboard reach the VM: `KEY <code> 1` in
//!    `vm console linux`;
//! 6. Ctrl+Alt+Home → `RAYOS_PRESENTATION:off`, the home screen is back;
//!    letters typed now never reach the VM;
//! 7. `vm present linux` / `vm hide linux` at the prompt give the same
//!    markers;
//! 8. QMP `system_powerdown`: RayOS stops the VMs and powers off; then the
//!    data volume (debugfs, no mount) holds the guest's console log with
//!    the first letters and none of the second, and the screenshot.
//!
//! The presenter's markers are read from its log on the data volume
//! (`logs presenter` at the prompt), not from the serial console (see
//! `Session::presenter_markers`).
//!
//! Every wait is bounded (scaled by `--timeout-scale`); a failure prints
//! the serial console's tail. Screendumps (PPM) and the VM's screenshot
//! (PNG) stay in `build/e2e-present/` for a person to look at.
//!
//! Limits: one VM (the seeded `linux`); keys are the outer machine's PS/2
//! keyboard only (no mouse, no hot-plug: `present_fbdev.rs` covers those).

mod png;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rayos_base::marker::{Kind, Marker};
use rayos_image::qemu::{Image, Qemu};
use rayos_present::home;
use rayos_present::scale::Scaler;

use crate::e2e::{self, ALWAYS_BAD, Run, Variant};

/// `e2e-present` takes only what every media run takes.
pub use crate::e2e::MediaArgs as Args;

/// Where `vm screenshot` writes inside RayOS (the data volume's root) and
/// the same file for debugfs.
const SHOT_IN_RAYOS: &str = "/var/rayos/e2e-present-vm.png";
const SHOT_ON_VOLUME: &str = "/e2e-present-vm.png";

/// Typed while the VM is presented (QEMU key code, Linux key code): r a y.
const SHOWN_KEYS: &[(&str, u16)] = &[("r", 19), ("a", 30), ("y", 21)];
/// Typed while it is hidden: z x c.
const HIDDEN_KEYS: &[(&str, u16)] = &[("z", 44), ("x", 45), ("c", 46)];

/// `RAYOS_PRESENTATION:on:linux`.
fn on() -> Marker {
    Marker::PresentationOn { vm: "linux".into() }
}
const OFF: Marker = Marker::PresentationOff;

/// The admin prompt with an empty line: printed when it is ready for a
/// command (typing redraws it with the text before `\x1b[K`).
const PROMPT: &str = "\rrayos> \x1b[K";

/// Pixels of the outer screen allowed to differ from the VM's image
/// scaled: none expected (the guest hides its cursor), a text cell's worth
/// tolerated for a stray redraw.
const MAX_DIFFERENT_PIXELS: usize = 2 * 9 * 16 * 4;

pub fn run(args: Args) -> Result<()> {
    let root = crate::root();
    let out = root.join(&args.media);
    let (_, iso, usb) = crate::media::ensure(&args.media, args.rebuild)?;
    println!("== e2e-present");
    let run = Run {
        scale: args.timeout_scale,
        started: Instant::now(),
    };
    let work = out.join("e2e-present");
    match flow(&run, &work, &iso, &usb) {
        Ok(()) => {
            println!(
                "e2e-present passed in {:.0}s (screens in {})",
                run.started.elapsed().as_secs_f64(),
                work.display()
            );
            Ok(())
        }
        Err(e) => {
            println!("  e2e-present stopped: {e:#}");
            bail!("e2e-present failed (files in {})", work.display())
        }
    }
}

fn flow(run: &Run, work: &Path, iso: &Path, usb: &Path) -> Result<()> {
    let installed = e2e::install(run, work, Variant::Iso, iso, usb)?;
    let shots = work.join("screens");
    fs::create_dir_all(&shots)?;

    // 2. Boot with a display.
    let mut cfg = installed.boot_config(work, "boot")?;
    cfg.vga = true;
    let mut vm = Qemu::start(&cfg)?;
    let mut s = Session {
        run,
        vm: &mut vm,
        shots: &shots,
    };
    s.wait("installed system boots", crate::e2e::RUN_INIT, 0, 300)?;
    s.wait("rayosd healthy", Kind::Ready.prefix(), 0, 600)?;
    s.wait("Linux VM running", Kind::LinuxVmReady.prefix(), 0, 900)?;
    // A fresh prompt on the serial console (the first may be buried in
    // kernel messages).
    let at = s.log_len();
    s.vm.send_serial("\r")?;
    s.wait("admin prompt on the serial console", PROMPT, at, 60)?;
    s.presentation("presenter draws the home screen", &OFF, 0, 300)?;
    s.guest_console_until("the Linux guest reads its keyboard", "KEYS ready", 600)?;

    // 3. Home screen.
    s.home_screen("home", "running (hidden)", 180)?;

    // 4. Ctrl+Alt+F1 presents the VM.
    let before = s.presenter_markers()?.len();
    s.vm.send_keys(&["ctrl", "alt", "f1"])?;
    s.run.ok("Ctrl+Alt+F1 typed on the outer keyboard");
    s.presentation("the Linux VM is presented", &on(), before, 120)?;
    // Let the presenter draw the first frames, then capture both sides
    // of a screen that no longer changes.
    std::thread::sleep(Duration::from_secs(3));
    let out = s.admin(&format!("vm screenshot linux {SHOT_IN_RAYOS}"), 120)?;
    if !out.contains("wrote") {
        bail!("`vm screenshot linux` failed:\n{out}");
    }
    s.run
        .ok("the VM's display saved with `vm screenshot linux`");
    let mut presented = Vec::new();
    for i in 1..=3 {
        let name = format!("presented-{i}.ppm");
        let img = s.screen(&name)?;
        if i == 1 {
            let text = home::read_screen(&img.pixels, img.width, img.height);
            if text.iter().any(|l| l.contains("Virtual machines")) {
                bail!(
                    "the outer screen still shows the home screen after {} (see {name}):\n{}",
                    on(),
                    text.join("\n")
                );
            }
            s.run.ok(&format!(
                "outer screen {}x{} shows something else than the home screen",
                img.width, img.height
            ));
        }
        presented.push((name, img));
        std::thread::sleep(Duration::from_secs(1));
    }

    // 5. Keys reach the presented VM.
    let at_keys = Instant::now();
    for (k, _) in SHOWN_KEYS {
        s.vm.send_keys(&[k])?;
    }
    s.run.ok("r, a, y typed on the outer keyboard");
    let wanted: Vec<String> = SHOWN_KEYS
        .iter()
        .map(|(_, c)| format!("KEY {c} 1"))
        .collect();
    s.guest_console_until_all("the presented VM receives r, a, y", &wanted, 180)?;
    println!(
        "        (key to `vm console` showing it: {:.1}s, polling included)",
        at_keys.elapsed().as_secs_f64()
    );
    s.screen("presented-keys.ppm")?;

    // 6. Ctrl+Alt+Home: home screen; keys go nowhere.
    let before = s.presenter_markers()?.len();
    s.vm.send_keys(&["ctrl", "alt", "home"])?;
    s.run.ok("Ctrl+Alt+Home typed on the outer keyboard");
    s.presentation("the hotkey returns to the home screen", &OFF, before, 120)?;
    s.home_screen("home-after-hotkey", "running (hidden)", 120)?;
    for (k, _) in HIDDEN_KEYS {
        s.vm.send_keys(&[k])?;
    }
    s.run
        .ok("z, x, c typed on the outer keyboard with the VM hidden");
    // The shown keys took this long at most to appear; give these as long.
    std::thread::sleep(Duration::from_secs(10).max(at_keys.elapsed().min(run.timeout(60))));
    let console = s.admin("vm console linux --lines 400", 120)?;
    if !console.contains("COUNTER") {
        bail!("`vm console linux` shows no guest output:\n{console}");
    }
    if let Some(k) = HIDDEN_KEYS
        .iter()
        .find(|(_, c)| console.contains(&format!("KEY {c} ")))
    {
        bail!("the hidden VM received {:?} (KEY {}):\n{console}", k.0, k.1);
    }
    s.run.ok("the hidden VM received none of z, x, c");

    // 7. The same through the API at the prompt.
    let before = s.presenter_markers()?.len();
    s.admin("vm present linux", 120)?;
    s.presentation("`vm present linux` presents it", &on(), before, 120)?;
    let before = s.presenter_markers()?.len();
    s.admin("vm hide linux", 120)?;
    s.presentation("`vm hide linux` hides it", &OFF, before, 120)?;
    s.home_screen("home-after-hide", "running (hidden)", 120)?;

    // 8. Power off, then read the data volume.
    run.power_button(&mut vm)?;
    drop(vm);
    let shot = work.join("vm-screenshot.png");
    e2e::debugfs(
        &installed.disk,
        installed.data_offset,
        &format!("dump {SHOT_ON_VOLUME} {}", shot.display()),
    )?;
    let bytes =
        fs::read(&shot).with_context(|| format!("{SHOT_ON_VOLUME} is not on the data volume"))?;
    let vm_img = png::decode(&bytes).with_context(|| format!("cannot read {}", shot.display()))?;
    compare(run, &vm_img, &presented)?;
    let console = e2e::guest_console(&installed.disk, installed.linux_files, &work.join("dump"))?;
    keys_in_log(run, &console)?;
    Ok(())
}

/// The outer screen equals the VM's image through the scaler (the best of
/// the dumps taken).
fn compare(run: &Run, vm: &Image, outer: &[(String, Image)]) -> Result<()> {
    let mut best: Option<(usize, &str)> = None;
    for (name, img) in outer {
        let s = Scaler::new(vm.width, vm.height, img.width, img.height);
        let mut differ = 0;
        for y in 0..img.height {
            for x in 0..img.width {
                let want = s
                    .to_source(x, y)
                    .map(|(a, b)| vm.pixels[(b * vm.width + a) as usize])
                    .unwrap_or(0);
                if img.pixels[(y * img.width + x) as usize] != want {
                    differ += 1;
                }
            }
        }
        if best.is_none_or(|(d, _)| differ < d) {
            best = Some((differ, name));
        }
    }
    let Some((differ, name)) = best else {
        bail!("no outer screendump to compare");
    };
    // An image with nothing drawn would match an empty screen trivially.
    let lit = vm.pixels.iter().filter(|&&p| p != vm.pixels[0]).count();
    if lit < 200 {
        bail!(
            "the VM's screenshot ({}x{}) is blank: the guest drew nothing on its display",
            vm.width,
            vm.height
        );
    }
    if differ > MAX_DIFFERENT_PIXELS {
        bail!(
            "the outer screen ({name}) differs from the VM's display ({}x{}) scaled in {differ} pixels",
            vm.width,
            vm.height
        );
    }
    run.ok(&format!(
        "outer screen ({name}) = the VM's display {}x{} ({lit} pixels of text) through the scaler; {differ} pixels differ",
        vm.width, vm.height
    ));
    Ok(())
}

/// The guest's whole console log: the shown keys pressed, the hidden never.
fn keys_in_log(run: &Run, console: &str) -> Result<()> {
    let keys: Vec<&str> = console
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("KEY "))
        .collect();
    for (k, c) in SHOWN_KEYS {
        if !keys.contains(&format!("KEY {c} 1").as_str()) {
            bail!("the guest's console log has no press of {k:?} (KEY {c} 1); its keys: {keys:?}");
        }
    }
    for (k, c) in HIDDEN_KEYS {
        if keys.iter().any(|l| l.starts_with(&format!("KEY {c} "))) {
            bail!(
                "the guest's console log has {k:?} (KEY {c}), typed while hidden; its keys: {keys:?}"
            );
        }
    }
    run.ok(&format!(
        "the guest's console log on the data volume: r, a, y arrived, z, x, c never ({} key events)",
        keys.len()
    ));
    Ok(())
}

/// The running machine and where its screens go.
struct Session<'a> {
    run: &'a Run,
    vm: &'a mut Qemu,
    shots: &'a Path,
}

impl Session<'_> {
    fn log_len(&self) -> usize {
        fs::metadata(self.vm.serial_log()).map_or(0, |m| m.len() as usize)
    }

    fn fail(&self, what: &str, why: String) -> anyhow::Error {
        println!(
            "  FAIL  [{:>7.1}s] {what}",
            self.run.started.elapsed().as_secs_f64()
        );
        anyhow::anyhow!(
            "{what}: {why} (serial log: {}); last output:\n{}",
            self.vm.serial_log().display(),
            self.vm.tail()
        )
    }

    /// Waits until `marker` is in the serial log after byte `from`;
    /// returns where it ends. Markers may come in any order, so each wait
    /// names its own starting point instead of consuming the log.
    fn wait(&mut self, what: &str, marker: &str, from: usize, secs: u64) -> Result<usize> {
        let deadline = Instant::now() + self.run.timeout(secs);
        loop {
            let bytes = fs::read(self.vm.serial_log()).unwrap_or_default();
            let tail = &bytes[from.min(bytes.len())..];
            if let Some(p) = find(tail, marker.as_bytes()) {
                if !marker.starts_with('\r') {
                    self.run.ok(&format!("{what}: {}", marker.trim()));
                } else {
                    self.run.ok(what);
                }
                return Ok(from + p + marker.len());
            }
            if let Some(b) = ALWAYS_BAD
                .iter()
                .chain(&[Kind::Fatal.prefix()])
                .find(|b| find(tail, b.as_bytes()).is_some())
            {
                return Err(self.fail(what, format!("the serial console shows {b:?}")));
            }
            if self.vm.wait_exit(Duration::from_millis(1)).is_ok() {
                return Err(self.fail(what, format!("QEMU exited waiting for {marker:?}")));
            }
            if Instant::now() >= deadline {
                return Err(self.fail(
                    what,
                    format!("timed out after {secs}s waiting for {marker:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Types `command` at the `rayos>` prompt on the serial console and
    /// returns its output (up to the next empty prompt).
    fn admin(&mut self, command: &str, secs: u64) -> Result<String> {
        let at = self.log_len();
        self.vm.send_serial(&format!("{command}\r"))?;
        let what = format!("`{command}` at the prompt");
        let deadline = Instant::now() + self.run.timeout(secs);
        loop {
            let bytes = fs::read(self.vm.serial_log()).unwrap_or_default();
            let tail = &bytes[at.min(bytes.len())..];
            // The output starts after the line's submit (\r\n) and ends at
            // the next empty prompt.
            if let Some(start) = find(tail, b"\r\n")
                && let Some(end) = find(&tail[start..], PROMPT.as_bytes())
            {
                let out = String::from_utf8_lossy(&tail[start + 2..start + end]);
                return Ok(out.replace('\r', ""));
            }
            if self.vm.wait_exit(Duration::from_millis(1)).is_ok() {
                return Err(self.fail(&what, "QEMU exited".into()));
            }
            if Instant::now() >= deadline {
                return Err(self.fail(&what, format!("no prompt again after {secs}s")));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The presenter's `RAYOS_PRESENTATION:` markers so far, oldest first,
    /// from its log on the data volume (`logs presenter` at the prompt).
    ///
    /// Why not the serial console: PID 1 copies the markers there through
    /// `/dev/kmsg`, and until init ended its records with a newline the
    /// kernel held each one back until the next record arrived (minutes on
    /// an idle machine). The log file has every line at once either way.
    fn presenter_markers(&mut self) -> Result<Vec<Marker>> {
        let out = self.admin("logs -n 5000 presenter", 120)?;
        Ok(out
            .lines()
            .filter_map(|l| Marker::find_in(l.trim_end()))
            .filter(|m| matches!(m.kind(), Kind::PresentationOn | Kind::PresentationOff))
            .collect())
    }

    /// Waits until the presenter's log has more than `before` markers and
    /// the last is `want`.
    fn presentation(&mut self, what: &str, want: &Marker, before: usize, secs: u64) -> Result<()> {
        let deadline = Instant::now() + self.run.timeout(secs);
        loop {
            let m = self.presenter_markers()?;
            if m.len() > before && m.last() == Some(want) {
                self.run.ok(&format!(
                    "{what}: {want} (marker {} in logs/presenter.log)",
                    m.len()
                ));
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.fail(
                    what,
                    format!("the presenter's log never showed {want} after marker {before}; its markers: {m:?}"),
                ));
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Polls `vm console linux` until it shows `needle`.
    fn guest_console_until(&mut self, what: &str, needle: &str, secs: u64) -> Result<()> {
        self.guest_console_until_all(what, &[needle.to_string()], secs)
    }

    fn guest_console_until_all(&mut self, what: &str, needles: &[String], secs: u64) -> Result<()> {
        let deadline = Instant::now() + self.run.timeout(secs);
        loop {
            let out = self.admin("vm console linux --lines 400", 120)?;
            if out.contains("KEYS none") {
                return Err(self.fail(
                    what,
                    "the Linux guest found no keyboard (`KEYS none` in `vm console linux`)".into(),
                ));
            }
            if needles.iter().all(|n| out.contains(n.as_str())) {
                self.run.ok(&format!("{what} ({})", needles.join(", ")));
                return Ok(());
            }
            if Instant::now() >= deadline {
                let last: Vec<&str> = out.lines().rev().take(30).collect();
                return Err(self.fail(
                    what,
                    format!(
                        "`vm console linux` never showed {needles:?}; its last lines:\n{}",
                        last.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ),
                ));
            }
            std::thread::sleep(Duration::from_secs(5));
        }
    }

    /// Dumps the outer screen to `name` under the screens directory.
    fn screen(&self, name: &str) -> Result<Image> {
        self.vm
            .screen(&self.shots.join(name))
            .with_context(|| format!("QMP screendump to {name}"))
    }

    /// Waits until the outer screen is the home screen listing `linux` in
    /// `state`; keeps the last dump as `<name>.ppm`.
    fn home_screen(&mut self, name: &str, state: &str, secs: u64) -> Result<()> {
        let what = format!("home screen lists the linux VM {state}");
        let deadline = Instant::now() + self.run.timeout(secs);
        loop {
            let img = self.screen(&format!("{name}.ppm"))?;
            let text = home::read_screen(&img.pixels, img.width, img.height);
            let vm_line = text
                .iter()
                .find(|l| l.contains("linux") && l.contains("Ctrl+Alt+F1"));
            if let Some(line) = vm_line
                && line.contains(state)
                && text.first().is_some_and(|l| l.starts_with("RayOS "))
            {
                self.run.ok(&format!(
                    "{what} ({}x{}): {:?} / {:?}",
                    img.width,
                    img.height,
                    text[0].trim(),
                    line.trim()
                ));
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.fail(
                    &what,
                    format!(
                        "the outer screen ({name}.ppm, {}x{}) reads:\n{}",
                        img.width,
                        img.height,
                        text.join("\n")
                    ),
                ));
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> Run {
        Run {
            scale: 1.0,
            started: Instant::now(),
        }
    }

    #[test]
    fn keys_typed_while_hidden_fail_the_check() {
        let shown = "COUNTER 1\nKEY 19 1\nKEY 19 0\nKEY 30 1\nKEY 21 1\nKEY 29 0\n";
        keys_in_log(&run(), shown).unwrap();
        let leaked = format!("{shown}KEY 45 1\n");
        assert!(keys_in_log(&run(), &leaked).is_err());
        // A release alone counts as received too.
        assert!(keys_in_log(&run(), &format!("{shown}KEY 44 0\n")).is_err());
        let missing = "KEY 19 1\nKEY 30 1\n";
        assert!(keys_in_log(&run(), missing).is_err());
    }

    /// A 720x400 "text" image and the outer 1280x800 screen the presenter
    /// would draw from it.
    fn pair() -> (Image, Image) {
        let (w, h) = (720u32, 400u32);
        let pixels = (0..w * h)
            .map(|i| {
                if (i % w) % 9 < 4 && (i / w) % 16 < 10 {
                    0xaaaaaa
                } else {
                    0
                }
            })
            .collect();
        let vm = Image {
            width: w,
            height: h,
            pixels,
        };
        let s = Scaler::new(w, h, 1280, 800);
        let mut outer = vec![0u32; 1280 * 800];
        for y in 0..800 {
            for x in 0..1280 {
                if let Some((a, b)) = s.to_source(x, y) {
                    outer[(y * 1280 + x) as usize] = vm.pixels[(b * w + a) as usize];
                }
            }
        }
        let outer = Image {
            width: 1280,
            height: 800,
            pixels: outer,
        };
        (vm, outer)
    }

    #[test]
    fn compare_accepts_the_scaled_image_and_refuses_another() {
        let (vm, outer) = pair();
        compare(&run(), &vm, &[("a".into(), outer.clone())]).unwrap();
        // The home screen (or anything else) instead of the VM.
        let other = Image {
            pixels: vec![home::BACKGROUND; outer.pixels.len()],
            ..outer.clone()
        };
        assert!(compare(&run(), &vm, &[("b".into(), other.clone())]).is_err());
        // The best of several dumps counts.
        compare(&run(), &vm, &[("b".into(), other), ("a".into(), outer)]).unwrap();
    }

    #[test]
    fn compare_refuses_a_blank_vm_image() {
        let (mut vm, _) = pair();
        vm.pixels.fill(0);
        let outer = Image {
            width: 1280,
            height: 800,
            pixels: vec![0; 1280 * 800],
        };
        assert!(compare(&run(), &vm, &[("a".into(), outer)]).is_err());
    }
}
