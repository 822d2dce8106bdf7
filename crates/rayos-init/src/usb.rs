//! Waiting for USB storage to settle, without udev: what sysfs shows of the
//! USB host controllers and the mass-storage devices on them, and when it is
//! safe to conclude that a stick is not there.
//!
//! Why: USB enumeration is asynchronous. A stick that is plugged in at boot
//! becomes a USB device some hundred milliseconds after its controller's
//! driver loads (more behind hubs), then usb-storage waits `delay_use`
//! (1 s) before the SCSI scan, and only then do the disk and its partitions
//! appear. Looking for an answer file before that misses it.
//!
//! Protocol: [`UsbSnapshot::read`] reads `<sys>/bus/usb/devices` (root hubs
//! `usbN` are the host controllers; entries with a `:` are interfaces) and,
//! for every interface of class 08 (mass storage), the block devices below
//! it. A disk counts as ready once opening `<dev>/<name>` succeeds (or says
//! "no medium"): the block layer runs a disk's first partition scan under
//! the same lock an open takes (and an open performs a scan still pending),
//! so after the open its partitions are in sysfs. [`Settle::observe`] then
//! says [`Verdict::Settled`] when every mass-storage interface has its
//! disks ready and the set of USB devices has not changed for [`QUIET`] —
//! the time a device behind a freshly enumerated hub needs to appear —
//! counted from the first look; [`Verdict::TimedOut`] after the timeout.
//! A machine without USB host controllers is settled at once.
//!
//! Limits: a storage interface no driver claims (no `usb-storage` or `uas`)
//! or a stick that never produces a disk keeps the wait going until the
//! timeout; sysfs does not say when a hub has finished scanning its ports,
//! so the quiet period stands in for it. Only USB is watched: other
//! removable disks (SD cards on PCI readers) are taken as they are.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long [`Settle`] waits at most (shown on the console while waiting).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the set of USB devices must stay unchanged.
pub const QUIET: Duration = Duration::from_millis(1500);
/// USB interface class of mass storage (`bInterfaceClass`).
const MASS_STORAGE: &str = "08";
/// sysfs depth from a storage interface down to `block/<disk>`:
/// `hostN/targetN:0:0/N:0:0:L/block/sdX`, with room for bridges.
const MAX_DEPTH: usize = 8;

/// How far one mass-storage interface has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageState {
    /// No driver has claimed it yet.
    NoDriver,
    /// Claimed, but no disk yet (usb-storage's delay, the SCSI scan).
    NoDisk,
    /// Disks exist; the kernel has not finished with the ones in `pending`.
    Scanning {
        /// Its disks (`sda`).
        disks: Vec<String>,
        /// Those whose partitions the kernel has not read yet.
        pending: Vec<String>,
    },
    /// Every disk is there with its partitions.
    Ready {
        /// Its disks (`sda`).
        disks: Vec<String>,
    },
}

/// A USB mass-storage interface (`1-1:1.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageInterface {
    /// The interface's sysfs name (`1-1:1.0`).
    pub name: String,
    /// The device's product string, when it has one ("QEMU USB HARDDRIVE").
    pub product: Option<String>,
    /// How far it has come.
    pub state: StorageState,
}

impl StorageInterface {
    fn describe(&self) -> String {
        let what = match &self.product {
            Some(p) => format!("USB storage {} ({p})", self.name),
            None => format!("USB storage {}", self.name),
        };
        match &self.state {
            StorageState::NoDriver => format!("{what}: no driver yet"),
            StorageState::NoDisk => format!("{what}: no disk yet"),
            StorageState::Scanning { pending, .. } => {
                format!("{what}: partitions of {} not read yet", pending.join(", "))
            }
            StorageState::Ready { disks } => format!("{what}: {}", disks.join(", ")),
        }
    }
}

/// What sysfs shows of USB at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsbSnapshot {
    /// USB host controllers (root hubs).
    pub controllers: usize,
    /// Every USB device and interface: a change means enumeration goes on.
    pub devices: BTreeSet<String>,
    /// The mass-storage interfaces.
    pub storage: Vec<StorageInterface>,
}

impl UsbSnapshot {
    /// Reads `<sys>/bus/usb/devices`; disks are opened under `dev`.
    pub fn read(sys: &Path, dev: &Path) -> UsbSnapshot {
        let dir = sys.join("bus/usb/devices");
        let mut names: Vec<String> = fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let controllers = names.iter().filter(|n| is_root_hub(n)).count();
        let mut storage = Vec::new();
        for n in names.iter().filter(|n| n.contains(':')) {
            let iface = dir.join(n);
            if read_trim(&iface.join("bInterfaceClass")).as_deref() != Some(MASS_STORAGE) {
                continue;
            }
            let product = read_trim(&iface.join("../product"));
            let state = if !iface.join("driver").exists() {
                StorageState::NoDriver
            } else {
                let mut disks = Vec::new();
                block_devices_below(&iface, 0, &mut disks);
                disks.sort();
                if disks.is_empty() {
                    StorageState::NoDisk
                } else {
                    let pending: Vec<String> = disks
                        .iter()
                        .filter(|d| !disk_ready(&dev.join(d)))
                        .cloned()
                        .collect();
                    if pending.is_empty() {
                        StorageState::Ready { disks }
                    } else {
                        StorageState::Scanning { disks, pending }
                    }
                }
            };
            storage.push(StorageInterface {
                name: n.clone(),
                product,
                state,
            });
        }
        UsbSnapshot {
            controllers,
            devices: names.into_iter().collect(),
            storage,
        }
    }

    /// The disks of the mass-storage interfaces that are ready.
    pub fn disks(&self) -> Vec<String> {
        self.storage
            .iter()
            .flat_map(|s| match &s.state {
                StorageState::Ready { disks } | StorageState::Scanning { disks, .. } => {
                    disks.clone()
                }
                _ => Vec::new(),
            })
            .collect()
    }

    fn unfinished(&self) -> Vec<String> {
        self.storage
            .iter()
            .filter(|s| !matches!(s.state, StorageState::Ready { .. }))
            .map(StorageInterface::describe)
            .collect()
    }
}

/// `usb1`, `usb12`: a root hub, i.e. one host controller (bus).
fn is_root_hub(name: &str) -> bool {
    name.strip_prefix("usb")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Names under every `block/` directory below `dir` (real directories
/// only: sysfs links such as `subsystem` and `driver` lead back up).
fn block_devices_below(dir: &Path, depth: usize, out: &mut Vec<String>) {
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if !t.is_dir() {
            continue;
        }
        if e.file_name() == "block" {
            if let Ok(disks) = fs::read_dir(e.path()) {
                out.extend(
                    disks
                        .flatten()
                        .map(|d| d.file_name().to_string_lossy().into_owned()),
                );
            }
        } else {
            block_devices_below(&e.path(), depth + 1, out);
        }
    }
}

/// Whether the kernel is done adding `node`: it opens (which waits for, or
/// performs, the first partition scan), or it has no medium (an empty card
/// reader: nothing to scan). Not openable yet (no node, ENXIO before the
/// disk is live) means not done.
fn disk_ready(node: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    match fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK: sd and sr open without waiting for a medium.
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(node)
    {
        Ok(_) => true,
        Err(e) => e.raw_os_error() == Some(libc::ENOMEDIUM),
    }
}

/// The outcome of one look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing is left to wait for; the USB disks (may be empty).
    Settled {
        /// The USB disks (`sda`).
        disks: Vec<String>,
    },
    /// Still waiting, for what.
    Waiting(Vec<String>),
    /// The timeout passed while still waiting for these.
    TimedOut(Vec<String>),
}

/// The settle decision over successive snapshots (pure: the caller reads
/// sysfs and passes the time).
#[derive(Debug, Clone)]
pub struct Settle {
    started: Instant,
    timeout: Duration,
    quiet: Duration,
    last_change: Instant,
    last: Option<UsbSnapshot>,
}

impl Settle {
    /// A wait that began at `now`: settled once nothing changed for `quiet`,
    /// given up after `timeout`.
    pub fn new(now: Instant, timeout: Duration, quiet: Duration) -> Settle {
        Settle {
            started: now,
            timeout,
            quiet,
            last_change: now,
            last: None,
        }
    }

    /// How long this wait has lasted.
    pub fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Looks at one snapshot taken at `now`; says whether to go on waiting.
    pub fn observe(&mut self, snap: UsbSnapshot, now: Instant) -> Verdict {
        if self
            .last
            .as_ref()
            .is_some_and(|l| l.devices != snap.devices)
        {
            self.last_change = now;
        }
        let unfinished = snap.unfinished();
        let verdict = if snap.controllers == 0 {
            Verdict::Settled { disks: Vec::new() }
        } else if unfinished.is_empty()
            && now.saturating_duration_since(self.last_change) >= self.quiet
        {
            Verdict::Settled {
                disks: snap.disks(),
            }
        } else {
            let mut what = unfinished;
            if what.is_empty() {
                what.push("USB devices may still be appearing".into());
            }
            if now.saturating_duration_since(self.started) >= self.timeout {
                Verdict::TimedOut(what)
            } else {
                Verdict::Waiting(what)
            }
        };
        self.last = Some(snap);
        verdict
    }
}

/// Block device names in `sys_block` (`/sys/block`): the disks the kernel
/// has now, to notice one that appears or goes.
pub fn block_names(sys_block: &Path) -> BTreeSet<String> {
    fs::read_dir(sys_block)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether block device `name` hangs off a USB bus: its sysfs device path
/// (`/sys/block/<name>` links to `.../usb2/2-1/2-1:1.0/host6/...`) passes
/// through a root hub.
pub fn on_usb(sys_block: &Path, name: &str) -> bool {
    let Ok(target) = fs::read_link(sys_block.join(name)) else {
        return false;
    };
    target
        .components()
        .any(|c| is_root_hub(&c.as_os_str().to_string_lossy()))
}

/// The disk path's kernel name (`/dev/sda` → `sda`).
pub fn kernel_name(disk: &Path) -> Option<String> {
    disk.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Default sysfs and device roots.
pub fn roots() -> (PathBuf, PathBuf) {
    (PathBuf::from("/sys"), PathBuf::from("/dev"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs + /dev under a temp dir, built up the way the kernel
    /// does while a stick enumerates.
    struct Fake {
        dir: tempfile::TempDir,
    }

    impl Fake {
        fn new() -> Fake {
            let f = Fake {
                dir: tempfile::tempdir().unwrap(),
            };
            fs::create_dir_all(f.sys().join("bus/usb/devices")).unwrap();
            fs::create_dir_all(f.sys().join("block")).unwrap();
            fs::create_dir_all(f.dev()).unwrap();
            f
        }
        fn sys(&self) -> PathBuf {
            self.dir.path().join("sys")
        }
        fn dev(&self) -> PathBuf {
            self.dir.path().join("dev")
        }
        fn devices(&self) -> PathBuf {
            self.sys().join("devices/pci0000:00/0000:00:04.0")
        }
        /// Entries of /sys/bus/usb/devices are links into /sys/devices.
        fn usb(&self, rel: &str) -> PathBuf {
            let real = self.devices().join(rel);
            fs::create_dir_all(&real).unwrap();
            let name = Path::new(rel).file_name().unwrap();
            let link = self.sys().join("bus/usb/devices").join(name);
            if !link.exists() {
                std::os::unix::fs::symlink(&real, link).unwrap();
            }
            real
        }
        fn controller(&self) {
            self.usb("usb1");
            let hub = self.usb("usb1/1-0:1.0");
            fs::write(hub.join("bInterfaceClass"), "09\n").unwrap();
        }
        fn stick(&self) -> PathBuf {
            let d = self.usb("usb1/1-1");
            fs::write(d.join("product"), "QEMU USB HARDDRIVE\n").unwrap();
            let i = self.usb("usb1/1-1/1-1:1.0");
            fs::write(i.join("bInterfaceClass"), "08\n").unwrap();
            // The interface's own links lead back up the tree.
            std::os::unix::fs::symlink(self.sys().join("bus/usb"), i.join("subsystem")).unwrap();
            i
        }
        fn bind(&self, iface: &Path) {
            let drv = self.sys().join("bus/usb/drivers/usb-storage");
            fs::create_dir_all(&drv).unwrap();
            std::os::unix::fs::symlink(drv, iface.join("driver")).unwrap();
        }
        /// The SCSI disk below the interface (sysfs only, no node yet).
        fn disk(&self, iface: &Path, name: &str) -> PathBuf {
            let b = iface.join("host6/target6:0:0/6:0:0:0/block").join(name);
            fs::create_dir_all(&b).unwrap();
            let rel = b.strip_prefix(self.sys()).unwrap();
            std::os::unix::fs::symlink(
                Path::new("..").join(rel),
                self.sys().join("block").join(name),
            )
            .unwrap();
            b
        }
        fn node(&self, name: &str) {
            fs::write(self.dev().join(name), b"").unwrap();
        }
        fn snap(&self) -> UsbSnapshot {
            UsbSnapshot::read(&self.sys(), &self.dev())
        }
    }

    fn settle(t0: Instant) -> Settle {
        Settle::new(t0, SETTLE_TIMEOUT, QUIET)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn no_usb_controller_is_settled_at_once() {
        let f = Fake::new();
        let t0 = Instant::now();
        assert_eq!(
            settle(t0).observe(f.snap(), t0),
            Verdict::Settled { disks: vec![] }
        );
    }

    #[test]
    fn an_empty_controller_settles_after_the_quiet_period() {
        let f = Fake::new();
        f.controller();
        let t0 = Instant::now();
        let mut s = settle(t0);
        assert!(matches!(s.observe(f.snap(), t0), Verdict::Waiting(_)));
        assert!(matches!(
            s.observe(f.snap(), t0 + ms(1000)),
            Verdict::Waiting(_)
        ));
        assert_eq!(
            s.observe(f.snap(), t0 + QUIET),
            Verdict::Settled { disks: vec![] }
        );
    }

    /// The race: the stick is a USB device already, but its disk
    /// appears later (usb-storage's delay, the SCSI scan, the partition
    /// scan). Each stage keeps the wait going; the disk with its node ends
    /// it.
    #[test]
    fn a_stick_is_waited_for_until_its_disk_is_ready() {
        let f = Fake::new();
        f.controller();
        let iface = f.stick();
        let t0 = Instant::now();
        let mut s = settle(t0);
        let waiting = |v: Verdict, needle: &str| match v {
            Verdict::Waiting(w) => assert!(
                w.iter().any(|x| x.contains(needle)),
                "{w:?} lacks {needle:?}"
            ),
            other => panic!("expected to wait for {needle:?}, got {other:?}"),
        };
        waiting(s.observe(f.snap(), t0), "no driver yet");
        f.bind(&iface);
        waiting(s.observe(f.snap(), t0 + ms(2000)), "no disk yet");
        f.disk(&iface, "sda");
        waiting(s.observe(f.snap(), t0 + ms(3000)), "partitions of sda");
        f.node("sda");
        let v = s.observe(f.snap(), t0 + ms(3100));
        assert_eq!(
            v,
            Verdict::Settled {
                disks: vec!["sda".into()]
            }
        );
        assert!(on_usb(&f.sys().join("block"), "sda"));
    }

    /// A device that appears late restarts the quiet period.
    #[test]
    fn a_new_device_restarts_the_quiet_period() {
        let f = Fake::new();
        f.controller();
        let t0 = Instant::now();
        let mut s = settle(t0);
        assert!(matches!(s.observe(f.snap(), t0), Verdict::Waiting(_)));
        // A hub shows up just before the quiet period ends.
        f.usb("usb1/1-2");
        assert!(matches!(
            s.observe(f.snap(), t0 + ms(1400)),
            Verdict::Waiting(_)
        ));
        assert!(matches!(
            s.observe(f.snap(), t0 + ms(2000)),
            Verdict::Waiting(_)
        ));
        assert_eq!(
            s.observe(f.snap(), t0 + ms(1400) + QUIET),
            Verdict::Settled { disks: vec![] }
        );
    }

    #[test]
    fn a_stick_that_never_gets_a_disk_times_out() {
        let f = Fake::new();
        f.controller();
        let iface = f.stick();
        f.bind(&iface);
        let t0 = Instant::now();
        let mut s = settle(t0);
        assert!(matches!(s.observe(f.snap(), t0), Verdict::Waiting(_)));
        match s.observe(f.snap(), t0 + SETTLE_TIMEOUT) {
            Verdict::TimedOut(w) => {
                assert_eq!(
                    w,
                    vec!["USB storage 1-1:1.0 (QEMU USB HARDDRIVE): no disk yet".to_string()]
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn other_usb_devices_and_internal_disks() {
        let f = Fake::new();
        f.controller();
        // A keyboard: interface class 03, never waited for.
        let kbd = f.usb("usb1/1-3/1-3:1.0");
        fs::write(kbd.join("bInterfaceClass"), "03\n").unwrap();
        // An internal virtio disk.
        let vda = f
            .sys()
            .join("devices/pci0000:00/0000:00:05.0/virtio2/block/vda");
        fs::create_dir_all(&vda).unwrap();
        std::os::unix::fs::symlink(&vda, f.sys().join("block/vda")).unwrap();
        let snap = f.snap();
        assert_eq!(snap.controllers, 1);
        assert!(snap.storage.is_empty());
        assert!(!on_usb(&f.sys().join("block"), "vda"));
        assert!(!on_usb(&f.sys().join("block"), "nope"));
        assert_eq!(
            block_names(&f.sys().join("block")),
            BTreeSet::from(["vda".to_string()])
        );
    }

    #[test]
    fn root_hub_names() {
        assert!(is_root_hub("usb1"));
        assert!(is_root_hub("usb12"));
        assert!(!is_root_hub("usb"));
        assert!(!is_root_hub("usb1-port1"));
        assert!(!is_root_hub("1-1"));
    }
}
