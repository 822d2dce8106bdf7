//! The steps every mode runs first: the kernel filesystems, the command
//! line, the modules, efivarfs.

use std::fs;
use std::path::Path;

use rayos_base::error::chain;
use rayos_base::{efivar, paths};
use rustix::mount::MountFlags;

use super::platform::Mount;
use super::{Platform, State, StepResult};
use crate::cmdline::{BootParams, Mode};
use crate::sys;

/// Modules every boot loads whether or not a device asks for them:
/// filesystems of RayOS's own volumes, the input handlers PID 1 and the
/// presenter read (no modalias), and `sd_mod`, which the disks behind a
/// SATA port or a USB stick need but no device asks for before that disk
/// exists (there is no hotplug). Everything else (storage and USB
/// controllers, virtio, the CPU's KVM module through the `cpu:` modalias)
/// is loaded only when the machine has the device; other filesystems
/// (`udf`, `exfat`, ...) when a mount asks the kernel for them (its
/// `request_module`, answered by [`crate::modules::kernel_modprobe`]).
pub const BOOT_MODULES: &[&str] = &[
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_utf8",
    "efivarfs",
    "evdev",
    "button",
    "sd_mod",
];

/// The drivers of removable media plugged in after the boot (USB sticks,
/// card readers and optical drives: `usb_storage`, `uas`, `sr_mod`) and
/// the installer medium's filesystem (`isofs`). The installer and recovery
/// load them with [`BOOT_MODULES`] (they read media at once); the installed
/// system loads them right after `RAYOS_READY`, on a thread of its own, as
/// nothing before it reads removable media: a stick present at boot still
/// gets its driver in the coldplug passes (its USB interface asks for it),
/// and one plugged in before the late load is bound when the driver
/// registers. With their dependencies (`usbcore`, `usb_common`, `cdrom`
/// on a machine without USB controller) they load in 0.15-0.17 s under
/// TCG (docs/init.md).
pub const REMOVABLE_MODULES: &[&str] = &["usb_storage", "uas", "sr_mod", "isofs"];

/// Drivers loaded last on the installed system, with the kernel's
/// `async_probe` (module names, or directories of the module tree), because
/// probing their devices is slow and no step waits on them unprepared:
/// - `ahci` waits for each empty SATA port's link (0.68 s under TCG for
///   the six empty ports of QEMU's q35). `find-data` waits for the data
///   volume's disk (and for the loader's own disk), and VM-storage
///   partitions are on that disk;
/// - wired Ethernet drivers reset and read their hardware (e1000e 0.17 s
///   under TCG). Only `rayos net` uses the links, and it picks up links
///   that appear later (docs/network.md); VMs use QEMU's user networking.
///
/// The installer and recovery load them in the passes: the wizard and the
/// recovery shell list disks at once.
pub const LATE_PROBE: &[&str] = &["ahci", "kernel/drivers/net/ethernet/"];

/// proc, sys, devtmpfs, devpts, /dev/shm, /run, /tmp; the kernel's module
/// helper and panic reboot; Ctrl-Alt-Del as a signal.
pub fn kernel_fs(st: &mut State, p: &mut dyn Platform) -> StepResult {
    for m in sys::kernel_mounts() {
        let target = Path::new(m.target);
        if p.is_mounted(target) {
            continue;
        }
        let mount = Mount {
            source: m.source,
            target,
            fstype: m.fstype,
            flags: m.flags,
            data: m.data,
        };
        if let Err(e) = p.mount(mount) {
            return StepResult::Fail(chain(&e));
        }
        if m.target == "/dev" {
            p.attach_console();
        }
    }
    st.console_level = sys::console_level(&p.at(sys::PRINTK));
    let _ = fs::create_dir_all(p.at(paths::RUN));
    let _ = fs::create_dir_all(p.path(&st.logs_dir));
    // The kernel's own module requests (fs-*, crypto-*) go to our
    // loader: a link named `modprobe` makes `main` dispatch to it.
    let helper = p.at(paths::MODPROBE);
    if std::os::unix::fs::symlink(&st.exe, &helper).is_ok() {
        let _ = fs::write(
            p.at("/proc/sys/kernel/modprobe"),
            paths::MODPROBE.as_bytes(),
        );
    }
    kernel_knobs(p);
    p.ctrl_alt_del_to_signal();
    st.status.boot_id = fs::read_to_string(p.at("/proc/sys/kernel/random/boot_id"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    StepResult::Ok(String::new())
}

/// The kernel settings PID 1 makes (`/proc/sys`); one that cannot be set
/// leaves the kernel's default.
fn kernel_knobs(p: &dyn Platform) {
    // A kernel panic reboots after 10 s instead of hanging.
    let _ = fs::write(p.at("/proc/sys/kernel/panic"), "10");
    // Written files reach the disk within about 6 s instead of the
    // kernel's 30 s expiry plus 5 s flusher period: a power cut or hard
    // reset then loses seconds of the logs on the data volume, not half a
    // minute (a nested e2e run lost rayosd's last 25 s that way). What must
    // be durable (saved states, the registry, updates) is fsynced anyway.
    for (knob, value) in WRITEBACK {
        let _ = fs::write(p.at(knob), value);
    }
}

/// Dirty page cache ages out after 5 s, and the flusher looks every 1 s.
const WRITEBACK: [(&str, &str); 2] = [
    ("/proc/sys/vm/dirty_expire_centisecs", "500"),
    ("/proc/sys/vm/dirty_writeback_centisecs", "100"),
];

/// The `rayos.*` keys (docs/init.md); a typo is a warning, never a stop.
pub fn cmdline(st: &mut State, p: &mut dyn Platform) -> StepResult {
    let text = fs::read_to_string(p.at("/proc/cmdline")).unwrap_or_default();
    st.params = BootParams::parse(&text);
    st.status.mode = st.params.mode;
    let msg = format!("mode {}", st.params.mode);
    if st.params.warnings.is_empty() {
        StepResult::Ok(msg)
    } else {
        StepResult::Warn(format!("{msg}; {}", st.params.warnings.join("; ")))
    }
}

/// Boot step `modules`: loads the modules every boot needs and those the
/// devices ask for; on the installed system [`LATE_PROBE`] last, probing in
/// the background, and [`REMOVABLE_MODULES`] not yet
/// ([`super::ready`] loads them after `RAYOS_READY`).
pub fn modules(st: &mut State, p: &mut dyn Platform) -> StepResult {
    let installed = st.params.mode == Mode::Installed;
    let late = if installed { LATE_PROBE } else { &[] };
    let always: Vec<&str> = if installed {
        BOOT_MODULES.to_vec()
    } else {
        [BOOT_MODULES, REMOVABLE_MODULES].concat()
    };
    match p.coldplug(&always, late, st.params.debug) {
        Ok(c) => StepResult::Ok(format!(
            "{} modules loaded ({} not applicable) for kernel {}{}",
            c.loaded,
            c.refused,
            c.release,
            if c.late.is_empty() {
                String::new()
            } else {
                format!("; {} probing in the background", c.late.join(", "))
            }
        )),
        Err(e) => StepResult::Warn(format!("{e}: only built-in drivers are available")),
    }
}

/// `lo` up, always: programs on RayOS (QEMU's user networking, the API
/// clients of tomorrow) may talk to 127.0.0.1 whatever the policy says.
/// Other links are `rayos net`'s (services::network).
pub fn loopback(_: &mut State, p: &mut dyn Platform) -> StepResult {
    match p.link_up("lo") {
        Ok(()) => StepResult::Ok("lo up".into()),
        Err(e) => StepResult::Warn(format!("cannot bring up lo: {e}")),
    }
}

/// efivarfs, and from it which UKI runs (for blessing and rollbacks).
pub fn efivarfs(st: &mut State, p: &mut dyn Platform) -> StepResult {
    if !p.uefi() {
        return StepResult::Skip("not booted through UEFI".into());
    }
    let dir = Path::new(efivar::EFIVARS_DIR);
    if p.is_mounted(dir) {
        st.image = p.running_uki();
        return StepResult::Ok(String::new());
    }
    let mount = Mount {
        source: "efivarfs",
        target: dir,
        fstype: "efivarfs",
        flags: MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::NODEV,
        data: "",
    };
    match p.mount(mount) {
        Ok(()) => {
            st.image = p.running_uki();
            StepResult::Ok(match &st.image {
                Some(i) => format!("booted from {i}"),
                None => String::new(),
            })
        }
        Err(e) => StepResult::Warn(format!(
            "{}: boot counting and boot entries cannot be used",
            chain(&e)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::fake::{self, Call, Fake};

    #[test]
    fn loopback_is_brought_up_whatever_the_policy() {
        let mut st = fake::state();
        let mut p = Fake::new();
        assert!(matches!(loopback(&mut st, &mut p), StepResult::Ok(_)));
        assert_eq!(p.calls, vec![Call::LinkUp("lo".into())]);
    }

    #[test]
    fn only_the_installed_system_probes_sata_and_nics_late_and_leaves_removable_media_for_later() {
        let names = |l: &[&str]| l.iter().map(|m| m.to_string()).collect::<Vec<_>>();
        let everything = names(&[BOOT_MODULES, REMOVABLE_MODULES].concat());
        for (mode, always, late) in [
            (
                Mode::Installed,
                names(BOOT_MODULES),
                vec!["ahci".to_string(), "kernel/drivers/net/ethernet/".into()],
            ),
            (Mode::Installer, everything.clone(), vec![]),
            (Mode::Recovery, everything.clone(), vec![]),
        ] {
            let mut st = fake::state();
            st.params.mode = mode;
            let mut p = Fake::new();
            let _ = modules(&mut st, &mut p);
            assert_eq!(p.calls, vec![Call::Coldplug { always, late }], "{mode}");
        }
        // What the boot reads from: its own volumes' filesystems, and the
        // disks behind SATA ports (probed after the passes).
        for m in ["ext4", "vfat", "efivarfs", "sd_mod"] {
            assert!(BOOT_MODULES.contains(&m), "{m}");
        }
    }

    #[test]
    fn writeback_is_bounded_to_seconds() {
        let p = Fake::new();
        for d in ["/proc/sys/vm", "/proc/sys/kernel"] {
            std::fs::create_dir_all(p.at(d)).unwrap();
        }
        kernel_knobs(&p);
        let read = |f: &str| std::fs::read_to_string(p.at(f)).unwrap();
        assert_eq!(read("/proc/sys/vm/dirty_expire_centisecs"), "500");
        assert_eq!(read("/proc/sys/vm/dirty_writeback_centisecs"), "100");
        assert_eq!(read("/proc/sys/kernel/panic"), "10");
    }
}
