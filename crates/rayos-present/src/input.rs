//! The physical keyboards and pointers, through evdev.
//!
//! [`InputHub`] opens every `/dev/input/event*` that is a keyboard (has
//! letter keys) or a pointer (relative X/Y, or absolute X/Y with a button
//! or touch), grabs it exclusively (`EVIOCGRAB`: the kernel's console and
//! every other reader stop seeing its events), and follows hot-plug with
//! inotify on the directory. Other devices — the ACPI power button that
//! init watches, lid switches, sound jacks — are left alone.
//!
//! Events are delivered as [`InputEvent`]s: keys one by one, pointer
//! changes as one report per `SYN_REPORT`. `SYN_DROPPED` (the kernel's
//! queue overflowed) drops the partial report; the next one is complete.
//!
//! Limits: multitouch (`ABS_MT_*`) is read only through the single-touch
//! `ABS_X/ABS_Y` axes; no LED (caps lock) feedback to the keyboards.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use rayos_base::sys::{self, DirWatch, Waker};

use crate::keymap::code;

const EV_SYN: u16 = 0;
const EV_KEY: u16 = 1;
const EV_REL: u16 = 2;
const EV_ABS: u16 = 3;
const SYN_REPORT: u16 = 0;
const SYN_DROPPED: u16 = 3;
const REL_X: u16 = 0;
const REL_Y: u16 = 1;
const REL_HWHEEL: u16 = 6;
const REL_WHEEL: u16 = 8;
const ABS_X: u16 = 0;
const ABS_Y: u16 = 1;
/// Codes from here up are buttons, not keyboard keys.
const BTN_MISC: u16 = 0x100;

/// `struct input_event` on 64-bit Linux: timeval (16), type, code, value.
pub const EVENT_SIZE: usize = 24;

const fn ioc(dir: u32, nr: u32, size: u32) -> libc::c_ulong {
    ((dir << 30) | (size << 16) | ((b'E' as u32) << 8) | nr) as libc::c_ulong
}
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;
const fn eviocgbit(ev: u32, len: u32) -> libc::c_ulong {
    ioc(IOC_READ, 0x20 + ev, len)
}
const fn eviocgabs(abs: u32) -> libc::c_ulong {
    ioc(IOC_READ, 0x40 + abs, 24)
}
const EVIOCGRAB: libc::c_ulong = ioc(IOC_WRITE, 0x90, 4);
const fn eviocgname(len: u32) -> libc::c_ulong {
    ioc(IOC_READ, 0x06, len)
}

/// Why physical input cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The input device directory could not be watched.
    #[error("cannot watch {path} for new input devices")]
    Watch {
        /// The directory (`/dev/input`).
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The eventfd that wakes the reader could not be made.
    #[error("cannot create the input wake-up handle")]
    Wake(#[source] std::io::Error),
}

/// One thing that happened on a physical device.
#[derive(Debug, Clone, PartialEq)]
pub enum InputEvent {
    /// A keyboard key: value 0 up, 1 down, 2 auto-repeat.
    Key {
        /// The evdev key code (`KEY_*`).
        code: u16,
        /// 0 up, 1 down, 2 auto-repeat.
        value: i32,
    },
    /// Pointer motion, wheel and buttons up to one `SYN_REPORT`.
    Pointer(PointerReport),
}

/// Pointer changes up to one `SYN_REPORT`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PointerReport {
    /// Relative motion to the right, in device units.
    pub dx: i32,
    /// Relative motion downwards, in device units.
    pub dy: i32,
    /// Absolute position as a fraction (0.0..=1.0) of the device's range.
    pub abs: Option<(f64, f64)>,
    /// Wheel clicks: positive = up / right.
    pub wheel: i32,
    /// Horizontal wheel clicks: positive = right.
    pub hwheel: i32,
    /// Button presses and releases (evdev `BTN_*` codes).
    pub buttons: Vec<(u16, bool)>,
}

impl PointerReport {
    fn is_empty(&self) -> bool {
        *self == PointerReport::default()
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct AbsRange {
    min: i32,
    max: i32,
}

impl AbsRange {
    fn frac(&self, v: i32) -> f64 {
        let span = f64::from(self.max) - f64::from(self.min);
        if span <= 0.0 {
            return 0.0;
        }
        ((f64::from(v) - f64::from(self.min)) / span).clamp(0.0, 1.0)
    }
}

/// Turns a device's raw events into [`InputEvent`]s.
#[derive(Debug, Default)]
pub struct Decoder {
    report: PointerReport,
    abs_range: [AbsRange; 2],
    abs_now: [Option<i32>; 2],
    abs_changed: bool,
    dropped: bool,
}

impl Decoder {
    fn with_ranges(x: AbsRange, y: AbsRange) -> Decoder {
        Decoder {
            abs_range: [x, y],
            ..Decoder::default()
        }
    }

    /// Feeds one raw event; returns what is complete.
    pub fn feed(&mut self, ty: u16, c: u16, value: i32, out: &mut Vec<InputEvent>) {
        match ty {
            EV_SYN if c == SYN_DROPPED => {
                self.dropped = true;
                self.report = PointerReport::default();
                self.abs_changed = false;
            }
            EV_SYN if c == SYN_REPORT => {
                if self.dropped {
                    self.dropped = false;
                    return;
                }
                if self.abs_changed {
                    if let (Some(x), Some(y)) = (self.abs_now[0], self.abs_now[1]) {
                        self.report.abs =
                            Some((self.abs_range[0].frac(x), self.abs_range[1].frac(y)));
                    }
                    self.abs_changed = false;
                }
                let r = std::mem::take(&mut self.report);
                if !r.is_empty() {
                    out.push(InputEvent::Pointer(r));
                }
            }
            _ if self.dropped => {}
            EV_KEY if c < BTN_MISC => out.push(InputEvent::Key { code: c, value }),
            // Button auto-repeat means nothing to a pointer.
            EV_KEY if value == 2 => {}
            EV_KEY => self.report.buttons.push((c, value != 0)),
            EV_REL => match c {
                REL_X => self.report.dx += value,
                REL_Y => self.report.dy += value,
                REL_WHEEL => self.report.wheel += value,
                REL_HWHEEL => self.report.hwheel += value,
                _ => {}
            },
            EV_ABS if c == ABS_X || c == ABS_Y => {
                self.abs_now[usize::from(c)] = Some(value);
                self.abs_changed = true;
            }
            _ => {}
        }
    }

    /// Decodes a buffer of whole `input_event`s.
    pub fn feed_bytes(&mut self, bytes: &[u8], out: &mut Vec<InputEvent>) {
        for ev in bytes.chunks_exact(EVENT_SIZE) {
            let ty = u16::from_ne_bytes([ev[16], ev[17]]);
            let c = u16::from_ne_bytes([ev[18], ev[19]]);
            let v = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
            self.feed(ty, c, v, out);
        }
    }
}

/// What a device is, from its capability bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Kind {
    /// It has keys (letters, Enter).
    pub keyboard: bool,
    /// It moves a pointer or has pointer buttons.
    pub pointer: bool,
}

fn bit(bits: &[u8], n: u16) -> bool {
    bits.get(usize::from(n / 8))
        .is_some_and(|b| b & (1 << (n % 8)) != 0)
}

/// Classifies a device from its `EV_*`, `KEY_*`, `REL_*` and `ABS_*` bits.
pub fn classify(ev: &[u8], keys: &[u8], rel: &[u8], abs: &[u8]) -> Kind {
    let has_keys = bit(ev, EV_KEY);
    let keyboard = has_keys
        && bit(keys, code::A)
        && bit(keys, 44) // Z
        && bit(keys, 28); // Enter
    let rel_pointer = bit(ev, EV_REL) && bit(rel, REL_X) && bit(rel, REL_Y);
    let abs_pointer = bit(ev, EV_ABS)
        && bit(abs, ABS_X)
        && bit(abs, ABS_Y)
        && has_keys
        && (bit(keys, code::BTN_LEFT) || bit(keys, code::BTN_TOUCH));
    Kind {
        keyboard,
        pointer: rel_pointer || abs_pointer,
    }
}

struct Device {
    file: File,
    name: String,
    decoder: Decoder,
}

fn ioctl_bits(fd: RawFd, req: libc::c_ulong, buf: &mut [u8]) -> bool {
    // SAFETY: EVIOCGBIT/EVIOCGNAME write at most the length encoded in
    // `req`, which callers build from `buf.len()`.
    unsafe { libc::ioctl(fd, req, buf.as_mut_ptr()) >= 0 }
}

fn abs_range(fd: RawFd, axis: u16) -> AbsRange {
    let mut info = [0i32; 6];
    // SAFETY: EVIOCGABS writes one struct input_absinfo (6 × s32).
    let ok = unsafe { libc::ioctl(fd, eviocgabs(u32::from(axis)), info.as_mut_ptr()) } >= 0;
    if ok {
        AbsRange {
            min: info[1],
            max: info[2],
        }
    } else {
        AbsRange::default()
    }
}

fn grab(fd: RawFd, on: bool) -> std::io::Result<()> {
    // SAFETY: EVIOCGRAB takes an int by value.
    if unsafe { libc::ioctl(fd, EVIOCGRAB, libc::c_int::from(on)) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opens `path` if it is a keyboard or pointer.
fn open_device(path: &Path) -> Option<(Device, Kind)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let fd = file.as_raw_fd();
    let mut ev = [0u8; 4];
    let mut keys = [0u8; 96];
    let mut rel = [0u8; 2];
    let mut abs = [0u8; 8];
    if !ioctl_bits(fd, eviocgbit(0, 4), &mut ev) {
        return None;
    }
    ioctl_bits(fd, eviocgbit(u32::from(EV_KEY), 96), &mut keys);
    ioctl_bits(fd, eviocgbit(u32::from(EV_REL), 2), &mut rel);
    ioctl_bits(fd, eviocgbit(u32::from(EV_ABS), 8), &mut abs);
    let kind = classify(&ev, &keys, &rel, &abs);
    if !kind.keyboard && !kind.pointer {
        return None;
    }
    let mut name = [0u8; 128];
    ioctl_bits(fd, eviocgname(128), &mut name);
    let name = String::from_utf8_lossy(&name)
        .trim_end_matches('\0')
        .to_string();
    let decoder = Decoder::with_ranges(abs_range(fd, ABS_X), abs_range(fd, ABS_Y));
    Some((
        Device {
            file,
            name,
            decoder,
        },
        kind,
    ))
}

/// Shared switch between grabbed (presenter owns input) and released
/// (text console mode), plus a way to stop the hub.
#[derive(Debug, Clone)]
pub struct InputControl {
    wake: Arc<Waker>,
    state: Arc<Mutex<(bool, bool)>>,
}

impl InputControl {
    fn poke(&self) {
        self.wake.wake();
    }

    /// Grab (true) or release (false) every device.
    pub fn set_grab(&self, on: bool) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0 = on;
        self.poke();
    }

    /// Makes the hub stop.
    pub fn stop(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.poke();
    }

    fn get(&self) -> (bool, bool) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The set of open devices and the inotify watch.
pub struct InputHub {
    dir: PathBuf,
    watch: DirWatch,
    control: InputControl,
    devices: BTreeMap<PathBuf, Device>,
    grabbed: bool,
}

impl InputHub {
    /// Watches `dir` (normally `/dev/input`), creating the watch before the
    /// first scan so no device can slip between the two.
    pub fn new(dir: &Path) -> Result<InputHub, InputError> {
        let watch_err = |source| InputError::Watch {
            path: dir.to_path_buf(),
            source,
        };
        let watch = DirWatch::new(dir).map_err(watch_err)?;
        let wake = Arc::new(Waker::new().map_err(InputError::Wake)?);
        Ok(InputHub {
            dir: dir.to_path_buf(),
            watch,
            control: InputControl {
                wake,
                state: Arc::new(Mutex::new((true, false))),
            },
            devices: BTreeMap::new(),
            grabbed: true,
        })
    }

    /// A handle to grab, release or stop the hub from another thread.
    pub fn control(&self) -> InputControl {
        self.control.clone()
    }

    /// Names of the open devices (for logs and tests).
    pub fn device_names(&self) -> Vec<String> {
        self.devices.values().map(|d| d.name.clone()).collect()
    }

    fn scan(&mut self, log: &dyn Fn(String)) {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut paths: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("event"))
            })
            .collect();
        paths.sort();
        for p in paths {
            self.try_add(&p, log);
        }
    }

    fn try_add(&mut self, path: &Path, log: &dyn Fn(String)) {
        if self.devices.contains_key(path) {
            return;
        }
        let Some((dev, kind)) = open_device(path) else {
            return;
        };
        let what = match (kind.keyboard, kind.pointer) {
            (true, true) => "keyboard+pointer",
            (true, false) => "keyboard",
            _ => "pointer",
        };
        let grabbed = if self.grabbed {
            match grab(dev.file.as_raw_fd(), true) {
                Ok(()) => "grabbed",
                Err(e) => {
                    log(format!("input: cannot grab {}: {e}", path.display()));
                    "not grabbed"
                }
            }
        } else {
            "not grabbed (console mode)"
        };
        log(format!(
            "input: {} {what} {:?} {grabbed}",
            path.display(),
            dev.name
        ));
        self.devices.insert(path.to_path_buf(), dev);
    }

    fn set_grab(&mut self, on: bool, log: &dyn Fn(String)) {
        if on == self.grabbed {
            return;
        }
        self.grabbed = on;
        for (p, d) in &self.devices {
            if let Err(e) = grab(d.file.as_raw_fd(), on) {
                log(format!("input: grab({on}) on {}: {e}", p.display()));
            }
        }
    }

    /// Reads devices until stopped, sending events to `tx`. Blocks in
    /// poll(2) while nothing happens (no periodic wake-ups).
    pub fn run(mut self, tx: Sender<InputEvent>, log: &dyn Fn(String)) {
        self.scan(log);
        let mut buf = vec![0u8; EVENT_SIZE * 64];
        let mut out = Vec::new();
        loop {
            let (want_grab, stop) = self.control.get();
            if stop {
                return;
            }
            self.set_grab(want_grab, log);
            let paths: Vec<PathBuf> = self.devices.keys().cloned().collect();
            let ready = {
                let mut fds = vec![self.watch.as_fd(), self.control.wake.as_fd()];
                fds.extend(paths.iter().map(|p| self.devices[p].file.as_fd()));
                match sys::poll(&fds, None) {
                    Ok(r) => r,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log(format!("input: poll failed: {e}"));
                        std::thread::sleep(std::time::Duration::from_secs(1));
                        continue;
                    }
                }
            };
            if ready[1].ready {
                self.control.wake.drain();
            }
            if ready[0].ready {
                // Any change means "look again".
                self.watch.drain();
                self.scan(log);
            }
            for (i, p) in paths.iter().enumerate() {
                let r = ready[i + 2];
                if !r.ready {
                    continue;
                }
                let mut gone = r.gone;
                if let Some(d) = self.devices.get_mut(p) {
                    loop {
                        match d.file.read(&mut buf) {
                            Ok(0) => {
                                gone = true;
                                break;
                            }
                            Ok(n) => d.decoder.feed_bytes(&buf[..n - n % EVENT_SIZE], &mut out),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(_) => {
                                gone = true;
                                break;
                            }
                        }
                    }
                }
                if let Some(d) = gone.then(|| self.devices.remove(p)).flatten() {
                    log(format!("input: {} {:?} removed", p.display(), d.name));
                }
            }
            for ev in out.drain(..) {
                if tx.send(ev).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(ty: u16, c: u16, v: i32) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&c.to_ne_bytes());
        b.extend_from_slice(&v.to_ne_bytes());
        b
    }

    #[test]
    fn ioctl_numbers_match_linux_headers() {
        // Values from <linux/input.h> on x86_64.
        assert_eq!(EVIOCGRAB, 0x4004_4590);
        assert_eq!(eviocgbit(0, 4), 0x8004_4520);
        assert_eq!(eviocgbit(1, 96), 0x8060_4521);
        assert_eq!(eviocgabs(0), 0x8018_4540);
        assert_eq!(eviocgname(128), 0x8080_4506);
    }

    #[test]
    fn keys_and_pointer_reports() {
        let mut d =
            Decoder::with_ranges(AbsRange { min: 0, max: 100 }, AbsRange { min: 0, max: 200 });
        let mut bytes = Vec::new();
        bytes.extend(raw(EV_KEY, code::A, 1));
        bytes.extend(raw(EV_SYN, SYN_REPORT, 0));
        bytes.extend(raw(EV_REL, REL_X, 3));
        bytes.extend(raw(EV_REL, REL_X, 2));
        bytes.extend(raw(EV_REL, REL_Y, -1));
        bytes.extend(raw(EV_KEY, code::BTN_LEFT, 1));
        bytes.extend(raw(EV_REL, REL_WHEEL, -1));
        bytes.extend(raw(EV_SYN, SYN_REPORT, 0));
        bytes.extend(raw(EV_ABS, ABS_X, 50));
        bytes.extend(raw(EV_ABS, ABS_Y, 200));
        bytes.extend(raw(EV_SYN, SYN_REPORT, 0));
        let mut out = Vec::new();
        d.feed_bytes(&bytes, &mut out);
        assert_eq!(
            out,
            vec![
                InputEvent::Key {
                    code: code::A,
                    value: 1
                },
                InputEvent::Pointer(PointerReport {
                    dx: 5,
                    dy: -1,
                    wheel: -1,
                    buttons: vec![(code::BTN_LEFT, true)],
                    ..PointerReport::default()
                }),
                InputEvent::Pointer(PointerReport {
                    abs: Some((0.5, 1.0)),
                    ..PointerReport::default()
                }),
            ]
        );
    }

    #[test]
    fn syn_dropped_discards_until_the_next_report() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        d.feed(EV_REL, REL_X, 9, &mut out);
        d.feed(EV_SYN, SYN_DROPPED, 0, &mut out);
        d.feed(EV_REL, REL_X, 4, &mut out);
        d.feed(EV_SYN, SYN_REPORT, 0, &mut out);
        assert!(out.is_empty());
        d.feed(EV_REL, REL_X, 1, &mut out);
        d.feed(EV_SYN, SYN_REPORT, 0, &mut out);
        assert_eq!(
            out,
            vec![InputEvent::Pointer(PointerReport {
                dx: 1,
                ..PointerReport::default()
            })]
        );
    }

    fn bits(n: &[u16], len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        for &b in n {
            v[usize::from(b / 8)] |= 1 << (b % 8);
        }
        v
    }

    #[test]
    fn classification() {
        let kbd = classify(
            &bits(&[EV_SYN, EV_KEY], 4),
            &bits(&[1, 28, 30, 44, 57], 96),
            &[0; 2],
            &[0; 8],
        );
        assert_eq!(
            kbd,
            Kind {
                keyboard: true,
                pointer: false
            }
        );
        let power = classify(&bits(&[EV_KEY], 4), &bits(&[116], 96), &[0; 2], &[0; 8]);
        assert_eq!(power, Kind::default(), "the power button is init's");
        let mouse = classify(
            &bits(&[EV_KEY, EV_REL], 4),
            &bits(&[code::BTN_LEFT], 96),
            &bits(&[REL_X, REL_Y], 2),
            &[0; 8],
        );
        assert_eq!(
            mouse,
            Kind {
                keyboard: false,
                pointer: true
            }
        );
        let tablet = classify(
            &bits(&[EV_KEY, EV_ABS], 4),
            &bits(&[code::BTN_LEFT], 96),
            &[0; 2],
            &bits(&[ABS_X, ABS_Y], 8),
        );
        assert!(tablet.pointer);
        let accel = classify(
            &bits(&[EV_ABS], 4),
            &[0; 96],
            &[0; 2],
            &bits(&[ABS_X, ABS_Y], 8),
        );
        assert_eq!(accel, Kind::default(), "an accelerometer is no pointer");
    }

    #[test]
    fn hub_watches_a_directory_and_skips_non_devices() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("event0"), b"not a device").unwrap();
        let hub = InputHub::new(dir.path()).unwrap();
        let ctl = hub.control();
        let (tx, _rx) = std::sync::mpsc::channel();
        let logs = Arc::new(Mutex::new(Vec::<String>::new()));
        let l2 = logs.clone();
        let t = std::thread::spawn(move || {
            hub.run(tx, &move |m| l2.lock().unwrap().push(m));
        });
        // A device appearing later (here: another plain file) is looked at
        // through inotify; neither is an input device, so nothing is opened
        // and the hub keeps running until stopped.
        std::fs::write(dir.path().join("event1"), b"x").unwrap();
        ctl.set_grab(false);
        ctl.stop();
        t.join().unwrap();
        assert!(
            logs.lock().unwrap().is_empty(),
            "{:?}",
            logs.lock().unwrap()
        );
        assert!(InputHub::new(Path::new("/nonexistent/input")).is_err());
    }
}
