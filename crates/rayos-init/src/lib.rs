//! rayos init: PID 1 of the RayOS image, and the `rayos>` admin console.
//!
//! - [`boot`]: PID 1 — the boot and the shutdown as step tables per mode
//!   (installer, installed, recovery) over a `Platform` trait (the machine,
//!   or a fake in unit tests), and the supervision loop between them;
//! - [`console`]: the admin prompt on the serial console and tty1;
//! - [`control`]: how `rayos shutdown`/`reboot`/`status` talk to PID 1;
//! - [`modules`]: coldplug module loading by modalias, no udev or kmod;
//! - [`bless`]: boot counting (rename the running UKI without `+N-M`);
//! - [`sysmount`]: mounting the system partition for a short job;
//! - [`recovery`]: the recovery menu (logs, policy, boot repair, reinstall,
//!   factory reset);
//! - [`volumes`]: finding the install, the installer medium, answer files;
//! - [`usb`]: waiting for USB storage to settle (sysfs, no udev);
//! - [`unattended`]: the countdown before an unattended install writes;
//! - [`service`]: supervised children with log pumps and backoff;
//! - [`log`]: console + `/dev/kmsg` + rotated log files;
//! - [`memory`]: the resident memory of RayOS's own processes;
//! - [`sys`]: the Linux calls (mount, signalfd, reap, reboot).
//!
//! See `docs/init.md` for the boot sequence, markers and the control
//! protocol.

pub mod bless;
pub mod boot;
pub mod cmdline;
pub mod console;
pub mod control;
pub mod keymap;
pub mod log;
pub mod memory;
pub mod modules;
pub mod recovery;
pub mod service;
pub mod sys;
pub mod sysmount;
pub mod unattended;
pub mod usb;
pub mod volumes;
