//! The installed and recovery steps around the data volume: find it, check
//! it, mount it (read-only when the check failed), its schema, the logs on
//! it, `machine.toml`, the policy, and the rollback check on the system
//! partition. A problem here is a fault, never a stop: the console still
//! comes up, and a bad volume is not written to (no rayosd).

use std::fs;
use std::path::Path;
use std::time::Duration;

use rayos_base::error::chain;
use rayos_base::paths;
use rustix::mount::MountFlags;

use super::platform::{Mount, release};
use super::{Platform, State, StepResult};
use crate::cmdline::Mode;
use crate::log;
use crate::volumes;

/// How long to wait for storage to appear (USB, NVMe and, on the installed
/// system, SATA probe in the background: `kernel::LATE_PROBE`).
pub const DISK_WAIT: Duration = Duration::from_secs(15);

/// How long another install's data volume is passed over while the disk
/// of the ESP the loader ran from has not appeared yet.
pub const LOADER_DISK_WAIT: Duration = Duration::from_secs(3);
/// Where `e2fsck` may be in the image.
const E2FSCK: [&str; 3] = ["/usr/sbin/e2fsck", "/sbin/e2fsck", "/usr/bin/e2fsck"];

/// The disks, or none (with a warning) when they cannot be listed.
pub fn list_disks(p: &mut dyn Platform) -> Vec<rayos_disk::report::Disk> {
    match p.list_disks() {
        Ok(d) => d,
        Err(e) => {
            log::warn(format!("cannot list disks: {e}"));
            Vec::new()
        }
    }
}

/// The RayOS data partition by GPT type, waiting up to [`DISK_WAIT`] for
/// slow storage; with several installs the one beside the loader's ESP,
/// waiting up to [`LOADER_DISK_WAIT`] for that ESP's disk before another.
pub fn find_data(st: &mut State, p: &mut dyn Platform) -> StepResult {
    let boot_esp = p.loader_esp();
    let start = p.now();
    let deadline = start + DISK_WAIT;
    loop {
        let disks = list_disks(p);
        let loader_disk_missing = boot_esp.is_some_and(|g| {
            !disks
                .iter()
                .flat_map(|d| &d.partitions)
                .any(|x| x.unique_guid == Some(g))
        });
        let install = volumes::find_install(&disks, boot_esp)
            .filter(|_| !loader_disk_missing || p.now() >= start + LOADER_DISK_WAIT);
        if let Some(i) = install {
            let msg = format!(
                "data volume {} on {}{}",
                i.data.display(),
                i.disk.display(),
                if i.others.is_empty() {
                    String::new()
                } else {
                    format!(" (also found RayOS data on {:?}: not used)", i.others)
                }
            );
            st.status.data_device = Some(i.data.display().to_string());
            st.install = Some(i);
            return StepResult::Ok(msg);
        }
        if p.now() >= deadline {
            let names: Vec<String> = disks.iter().map(|d| d.path.display().to_string()).collect();
            st.fault(format!(
                "no RayOS data partition (type {}) on any disk ({}): VMs cannot start. \
                 Boot the recovery entry or reinstall RayOS from the installer medium.",
                rayos_disk::types::RAYOS_DATA,
                if names.is_empty() {
                    "no disks found".to_string()
                } else {
                    names.join(", ")
                }
            ));
            return StepResult::Fail("no data partition found".into());
        }
        p.sleep(Duration::from_millis(300));
    }
}

/// What `e2fsck -p` said about a volume.
enum Fsck {
    Clean,
    /// Status 1 or 2: fixed.
    Repaired(i32),
    /// No e2fsck in the image, or it could not run: why.
    Unchecked(String),
    /// Anything else: the status and its last line.
    Failed(i32, String),
}

/// `e2fsck -p DEV`: status 0, 1 (fixed) or 2 (fixed, reboot wanted) are
/// fine; its output goes to the log.
fn e2fsck(p: &mut dyn Platform, dev: &Path) -> Fsck {
    let Some(e2fsck) = E2FSCK
        .into_iter()
        .map(Path::new)
        .find(|e| p.path(e).is_file())
    else {
        return Fsck::Unchecked("e2fsck is not in this image".into());
    };
    // -p: fix what is safe without questions. Exit status bits: 1 fixed,
    // 2 fixed and reboot wanted, 4 left uncorrected, 8 operational error.
    let out = match p.run(e2fsck, &["-p".into(), dev.display().to_string()]) {
        Ok(o) => o,
        Err(e) => return Fsck::Unchecked(format!("cannot run {}: {e}", e2fsck.display())),
    };
    let code = out.status.code().unwrap_or(8);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        log::detail(format!("e2fsck: {l}"));
    }
    match code {
        0 => Fsck::Clean,
        c if c & !3 == 0 => Fsck::Repaired(c),
        c => Fsck::Failed(
            c,
            text.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_string(),
        ),
    }
}

/// `e2fsck -p`: status 0, 1 (fixed) or 2 (fixed, reboot wanted) are fine;
/// anything else is a fault and the volume is mounted read-only.
pub fn check_data(st: &mut State, p: &mut dyn Platform) -> StepResult {
    let Some(dev) = st.install.as_ref().map(|i| i.data.clone()) else {
        return StepResult::Skip("no data volume".into());
    };
    match e2fsck(p, &dev) {
        Fsck::Clean => {
            st.data_ok = true;
            StepResult::Ok(format!("{} is clean", dev.display()))
        }
        Fsck::Repaired(code) => {
            st.data_ok = true;
            StepResult::Warn(format!("e2fsck repaired {} (status {code})", dev.display()))
        }
        Fsck::Unchecked(why) => {
            st.data_ok = true;
            StepResult::Warn(format!("{why}: mounting the data volume unchecked"))
        }
        Fsck::Failed(code, last) => {
            st.fault(format!(
                "the data volume {} failed its check (e2fsck status {code}: {last}). It is mounted read-only and no VM \
                 is started, so nothing on it changes. Boot the recovery entry to repair it.",
                dev.display()
            ));
            StepResult::Fail(format!("e2fsck status {code}"))
        }
    }
}

/// Dedicated VM-storage partitions (docs/init.md): a VM whose directory on
/// the data volume holds [`rayos_state::layout::vm::STORAGE_MARKER`] keeps
/// its files on the partition of type RayOS VM storage with the label the
/// marker names, on the install's disk. It is checked like the data volume
/// and mounted over that directory (hiding the marker). A partition that
/// is missing, fails its check or does not mount is a fault, and it stays
/// unmounted: rayosd then refuses to start that VM (it sees the marker), so
/// the VM's files are never recreated on the data volume.
pub fn vm_storage(st: &mut State, p: &mut dyn Platform) -> StepResult {
    use rayos_state::layout::{storage_marker_label, vm::STORAGE_MARKER};
    if !st.data_writable() {
        return StepResult::Skip("no writable, checked data volume".into());
    }
    let vm_root = Path::new(paths::DATA).join("vm");
    let mut wanted: Vec<(std::path::PathBuf, String)> = Vec::new();
    let mut entries: Vec<_> = fs::read_dir(p.path(&vm_root))
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let marker = e.path().join(STORAGE_MARKER);
        let Ok(text) = fs::read_to_string(&marker) else {
            continue;
        };
        let target = vm_root.join(e.file_name());
        match storage_marker_label(&text) {
            Some(label) => wanted.push((target, label)),
            None => st.fault(format!(
                "{} does not name a VM-storage partition (`label = \"...\"`): that VM is not started",
                target.join(STORAGE_MARKER).display()
            )),
        }
    }
    if wanted.is_empty() {
        return StepResult::Skip("no dedicated VM-storage partition".into());
    }
    let disk = st.install.as_ref().map(|i| i.disk.clone());
    let disks = list_disks(p);
    let mut done = Vec::new();
    let mut failed = 0;
    for (target, label) in wanted {
        let dev = disks
            .iter()
            .filter(|d| Some(&d.path) == disk.as_ref())
            .flat_map(|d| &d.partitions)
            .find(|x| {
                x.type_guid == Some(rayos_disk::types::RAYOS_VM_STORAGE) && x.has_label(&label)
            })
            .and_then(|x| x.device.clone());
        let Some(dev) = dev else {
            failed += 1;
            st.fault(format!(
                "the VM-storage partition {label} (for {}) is missing from {}: that VM is not started and its \
                 files are not recreated on the data volume. Reconnect the disk that holds it, or boot the \
                 recovery entry.",
                target.display(),
                disk.as_ref().map_or("the install's disk".into(), |d| d.display().to_string())
            ));
            continue;
        };
        match e2fsck(p, &dev) {
            Fsck::Failed(code, last) => {
                failed += 1;
                st.fault(format!(
                    "the VM-storage partition {label} ({}) failed its check (e2fsck status {code}: {last}): it is \
                     not mounted and that VM is not started. Boot the recovery entry to repair it.",
                    dev.display()
                ));
                continue;
            }
            Fsck::Unchecked(why) => {
                log::warn(format!("{}: {why}: mounting it unchecked", dev.display()))
            }
            Fsck::Repaired(code) => {
                log::info(format!("e2fsck repaired {} (status {code})", dev.display()))
            }
            Fsck::Clean => {}
        }
        let source = dev.to_string_lossy();
        let m = Mount {
            source: &source,
            target: &target,
            fstype: "ext4",
            flags: MountFlags::NOSUID | MountFlags::NODEV,
            data: "",
        };
        match p.mount(m) {
            Ok(()) => {
                st.vm_storage_mounts.push(target.clone());
                done.push(format!(
                    "{label} ({}) on {}",
                    dev.display(),
                    target.display()
                ));
            }
            Err(e) => {
                failed += 1;
                st.fault(format!(
                    "cannot mount the VM-storage partition {label} ({}) on {} ({}): that VM is not started",
                    dev.display(),
                    target.display(),
                    chain(&e)
                ));
            }
        }
    }
    if failed > 0 {
        StepResult::Fail(format!(
            "{failed} VM-storage partition(s) not mounted{}",
            if done.is_empty() {
                String::new()
            } else {
                format!("; mounted {}", done.join(", "))
            }
        ))
    } else {
        StepResult::Ok(done.join(", "))
    }
}

/// ext4 at `/var/rayos`: read-write after a good check, else read-only
/// without replaying the journal (`noload`), so nothing on it changes.
pub fn mount_data(st: &mut State, p: &mut dyn Platform) -> StepResult {
    let Some(dev) = st.install.as_ref().map(|i| i.data.clone()) else {
        return StepResult::Skip("no data volume".into());
    };
    let ro = !st.data_ok;
    let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
    if ro {
        flags |= MountFlags::RDONLY;
    }
    let source = dev.to_string_lossy();
    let mount = Mount {
        source: &source,
        target: Path::new(paths::DATA),
        fstype: "ext4",
        flags,
        data: if ro { "noload" } else { "" },
    };
    match p.mount(mount) {
        Ok(()) => {
            st.status.data_mounted = Some(paths::DATA.into());
            st.status.data_read_only = ro;
            StepResult::Ok(format!(
                "{} on {}{}",
                dev.display(),
                paths::DATA,
                if ro { " (read-only)" } else { "" }
            ))
        }
        Err(e) => {
            st.data_ok = false;
            st.fault(format!(
                "cannot mount the data volume {} ({}). VMs cannot start. Boot the recovery entry to repair it.",
                dev.display(),
                chain(&e)
            ));
            StepResult::Fail(chain(&e))
        }
    }
}

/// The volume's schema against this RayOS's: an installed boot migrates an
/// older one (old generation kept until blessed); newer or unreadable
/// leaves the volume alone, read-only (docs/update.md).
pub fn data_schema(st: &mut State, p: &mut dyn Platform) -> StepResult {
    use rayos_update::schema::{self, SchemaCheck};
    if st.status.data_mounted.is_none() {
        return StepResult::Skip("no data volume".into());
    }
    let layout = rayos_state::DataLayout::new(p.at(paths::DATA));
    let supported = rayos_state::DATA_SCHEMA_VERSION;
    // Recovery only looks; an installed boot on a healthy volume migrates.
    let check = if st.params.mode == Mode::Installed && st.data_writable() {
        schema::check_and_migrate(&layout, supported)
    } else {
        schema::read(&layout).map(|found| match found.cmp(&supported) {
            std::cmp::Ordering::Greater => SchemaCheck::Newer { found, supported },
            _ => SchemaCheck::Current(found),
        })
    };
    match check {
        Ok(SchemaCheck::Current(v)) => StepResult::Ok(format!("schema {v}")),
        Ok(SchemaCheck::Migrated { from, to }) => {
            st.schema_migrated = true;
            StepResult::Ok(format!(
                "migrated schema {from} -> {to}; the old generation is kept until this version is blessed"
            ))
        }
        Ok(SchemaCheck::Newer { found, supported }) => {
            refuse_data_volume(
                st,
                p,
                format!(
                    "the data volume has schema {found}, newer than this RayOS understands ({supported}): it was \
                 written by a newer RayOS. It is left untouched (read-only, no VMs). Boot the newer version from \
                 the boot menu, or use the recovery entry (`recovery` menu: restore the pre-migration data)."
                ),
            );
            StepResult::Fail(format!("schema {found} > {supported}"))
        }
        Err(e) => {
            refuse_data_volume(
                st,
                p,
                format!(
                    "cannot check the data volume's schema ({}): it is left untouched (read-only, no VMs). \
                 Use the recovery entry to inspect it.",
                    chain(&e)
                ),
            );
            StepResult::Fail("schema unreadable".into())
        }
    }
}

/// Remounts the data volume read-only and keeps rayosd off it.
fn refuse_data_volume(st: &mut State, p: &mut dyn Platform, fault: String) {
    st.fault(fault);
    st.data_ok = false;
    if st.status.data_mounted.is_some() && !st.status.data_read_only {
        match p.remount_read_only(Path::new(paths::DATA)) {
            Ok(()) => st.status.data_read_only = true,
            Err(e) => {
                log::warn(format!("{}; unmounting it", chain(&e)));
                let _ = release(p, Path::new(paths::DATA));
                st.status.data_mounted = None;
            }
        }
    }
}

/// `init.log` and `kernel.log` on the data volume, or kept in
/// `/run/rayos/logs` when it is missing or read-only.
pub fn logs(st: &mut State, p: &mut dyn Platform) -> StepResult {
    if st.status.data_mounted.is_none() || st.status.data_read_only {
        p.start_kernel_log(&st.logs_dir.clone(), &st.status.boot_id);
        return StepResult::Skip(
            "no writable data volume: logs stay in /run/rayos/logs until shutdown".into(),
        );
    }
    for d in rayos_state::DataLayout::new(p.at(paths::DATA)).skeleton() {
        let _ = fs::create_dir_all(d);
    }
    st.logs_dir = rayos_state::DataLayout::new(paths::DATA).logs();
    if let Err(e) = p.attach_log_file(&st.logs_dir.clone()) {
        return StepResult::Warn(format!("cannot write {}: {e}", st.logs_dir.display()));
    }
    log::detail(format!(
        "=== boot {} at unix time {}, RayOS {} ===",
        st.status.boot_id,
        st.status.started_unix,
        env!("CARGO_PKG_VERSION")
    ));
    p.start_kernel_log(&st.logs_dir.clone(), &st.status.boot_id);
    StepResult::Ok(format!("logs in {}", st.logs_dir.display()))
}

/// `machine.toml`: hostname, timezone. Unreadable: hostname `rayos`, UTC.
pub fn machine(st: &mut State, p: &mut dyn Platform) -> StepResult {
    if st.status.data_mounted.is_none() {
        let _ = p.set_hostname("rayos");
        return StepResult::Skip("no data volume: hostname \"rayos\"".into());
    }
    let path = rayos_state::DataLayout::new(p.at(paths::DATA)).machine();
    let (bytes, generation) = match rayos_state::read_with_fallback(&path) {
        Ok(x) => x,
        Err(e) => {
            let _ = p.set_hostname("rayos");
            st.fault(format!(
                "{} cannot be read ({}): using hostname \"rayos\" and UTC. Fix it in recovery mode.",
                path.display(),
                chain(&e)
            ));
            return StepResult::Warn("machine.toml missing".into());
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let m = match rayos_state::MachineConfig::parse(&path.to_string_lossy(), &text) {
        Ok(m) => m,
        Err(e) => {
            let _ = p.set_hostname("rayos");
            st.fault(format!(
                "{e}: using hostname \"rayos\" and UTC. Fix it in recovery mode."
            ));
            return StepResult::Warn("machine.toml does not parse".into());
        }
    };
    if let Err(e) = p.set_hostname(&m.hostname) {
        return StepResult::Warn(format!("cannot set hostname {}: {e}", m.hostname));
    }
    let etc = p.at("/etc");
    let _ = fs::create_dir_all(&etc);
    let _ = fs::write(etc.join("hostname"), format!("{}\n", m.hostname));
    let _ = fs::write(etc.join("timezone"), format!("{}\n", m.timezone));
    let zone = Path::new("/usr/share/zoneinfo").join(&m.timezone);
    let zone_note = if p.path(&zone).is_file() {
        let _ = fs::remove_file(etc.join("localtime"));
        let _ = std::os::unix::fs::symlink(&zone, etc.join("localtime"));
        ""
    } else {
        // The image carries every zone of tzdata; a name it lacks is a
        // typo in machine.toml (or a zone newer than this image).
        let _ = fs::remove_file(etc.join("localtime"));
        " (not in this image's zone data: local time is UTC)"
    };
    p.set_timezone(&m.timezone);
    st.keyboard = Some(m.keyboard.clone());
    let gen_note = match generation {
        rayos_state::Generation::Current => "",
        rayos_state::Generation::Previous => {
            " (from the previous generation: the current one was incomplete)"
        }
    };
    let msg = format!(
        "hostname {}, timezone {}{zone_note}{gen_note}",
        m.hostname, m.timezone
    );
    if zone_note.is_empty() {
        StepResult::Ok(msg)
    } else {
        StepResult::Warn(msg)
    }
}

/// The keyboard layout of `machine.toml` on the virtual consoles (the
/// `rayos>` prompt on tty1), from the keymaps compiled into the image
/// ([`crate::keymap`]). US is the kernel's own map.
pub fn keyboard(st: &mut State, p: &mut dyn Platform) -> StepResult {
    let Some(layout) = st.keyboard.clone() else {
        return StepResult::Skip("no machine.toml: US layout".into());
    };
    if layout == "us" {
        return StepResult::Ok("us (the kernel's own map)".into());
    }
    let Some(file) = crate::keymap::file_of(&layout) else {
        let offered: Vec<&str> = crate::keymap::LAYOUTS.iter().map(|(l, _)| *l).collect();
        return StepResult::Warn(format!(
            "keyboard {layout:?} has no console keymap in this image ({}): the console uses the US layout",
            offered.join(", ")
        ));
    };
    let entries = match fs::read(p.path(&file))
        .map_err(|e| format!("{}: {e}", file.display()))
        .and_then(|b| crate::keymap::parse(&b).map_err(|e| format!("{}: {e}", file.display())))
    {
        Ok(e) => e,
        Err(e) => return StepResult::Warn(format!("{e}: the console uses the US layout")),
    };
    match p.load_keymap(&entries) {
        Ok(()) => StepResult::Ok(format!("{layout} on the consoles")),
        Err(e) => StepResult::Warn(format!("cannot load the {layout} keymap ({e}): US layout")),
    }
}

/// Parses the policy to show a problem on the console; rayosd fails closed
/// by itself.
pub fn policy(st: &mut State, p: &mut dyn Platform) -> StepResult {
    if st.status.data_mounted.is_none() {
        return StepResult::Skip("no data volume".into());
    }
    let path = rayos_state::DataLayout::new(p.at(paths::DATA)).policy();
    let bytes = match rayos_state::read_with_fallback(&path) {
        Ok((bytes, _)) => bytes,
        Err(e) => {
            st.fault(format!(
                "policy {} cannot be read ({}): no VM autostarts. Fix it in recovery mode.",
                path.display(),
                chain(&e)
            ));
            return StepResult::Fail("no policy".into());
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    match rayos_state::Policy::parse(&path.to_string_lossy(), &text) {
        Ok(_) => StepResult::Ok(String::new()),
        Err(e) => {
            st.fault(format!(
                "policy: {e}. The policy fails closed: no VM autostarts and networking is off. \
                 Fix the file in recovery mode."
            ));
            StepResult::Fail("policy does not parse".into())
        }
    }
}

/// A RayOS entry newer than the running one with no tries left means the
/// loader fell back: `RAYOS_ROLLBACK`, and the entry is marked bad
/// (docs/update.md).
pub fn rollback_check(st: &mut State, p: &mut dyn Platform) -> StepResult {
    let Some(image) = st.image.clone() else {
        return StepResult::Skip("the loader did not say which image runs".into());
    };
    let Some(running) = rayos_update::entries::version_of_file(&image) else {
        return StepResult::Skip(format!("{image} is not a RayOS entry"));
    };
    let Some(install) = st.install.as_ref() else {
        return StepResult::Skip("no install found".into());
    };
    let Some(dev) = install.system.clone() else {
        return StepResult::Warn(format!(
            "cannot check for a rollback: the RayOS install on {} has no system partition (XBOOTLDR)",
            install.disk.display()
        ));
    };
    let at = Path::new(paths::SYSTEM);
    let source = dev.to_string_lossy();
    if let Err(e) = p.mount(Mount::boot_partition(&source, at)) {
        return StepResult::Warn(format!("cannot check for a rollback: {}", chain(&e)));
    }
    let data = st.status.data_mounted.is_some().then(|| p.at(paths::DATA));
    let r = rayos_update::rollback::detect(&p.path(at), &running, data.as_deref());
    // Renamed entries reach the disk before anything else happens. (Made
    // conditional on a rename and measured, 2026-12-07: the step took the
    // same 0.14 s under TCG; the sync is not where its time goes.)
    p.sync();
    let _ = release(p, at);
    let found = match r {
        Ok(found) => found,
        Err(e) => return StepResult::Warn(chain(&e)),
    };
    if found.is_empty() {
        return StepResult::Ok(format!("running {running}; no rollback"));
    }
    for d in &found {
        p.marker(&d.marker());
        st.fault(format!(
            "RayOS {} did not come up and the machine went back to {running}: {}. {}",
            d.failed,
            d.reason,
            match &d.marked_bad {
                Some(n) => format!("It is marked bad ({n}) and no longer offered at boot."),
                None => "It could not be marked bad.".into(),
            }
        ));
    }
    let failed: Vec<&str> = found.iter().map(|d| d.failed.as_str()).collect();
    StepResult::Warn(format!("rolled back from {}", failed.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::fake::{self, Call, Fake};
    use crate::boot::services;
    use crate::volumes::Install;

    /// A machine with an install on /dev/vda and e2fsck in the image that
    /// exits with `fsck` (printing `says`).
    fn installed(fsck: i32, says: &str) -> (State, Fake) {
        let mut p = Fake::new();
        p.volume("/dev/vda3", &[("vm/linux/disk.qcow2", "the VM's bytes")]);
        let e2fsck = p.at("/usr/sbin/e2fsck");
        fs::create_dir_all(e2fsck.parent().unwrap()).unwrap();
        fs::write(&e2fsck, "").unwrap();
        p.runs.insert("e2fsck".into(), (fsck, says.into()));
        let mut st = fake::state();
        st.install = Some(Install {
            disk: "/dev/vda".into(),
            data: "/dev/vda3".into(),
            system: Some("/dev/vda2".into()),
            esp: Some("/dev/vda1".into()),
            others: Vec::new(),
        });
        (st, p)
    }

    fn data_mount(p: &Fake) -> Call {
        p.calls
            .iter()
            .find(|c| matches!(c, Call::Mount { target, .. } if target == Path::new(paths::DATA)))
            .cloned()
            .expect("the data volume was mounted")
    }

    #[test]
    fn a_failed_check_mounts_the_volume_read_only_and_starts_no_vms() {
        let (mut st, mut p) =
            installed(4, "/dev/vda3: UNEXPECTED INCONSISTENCY; RUN fsck MANUALLY.");
        let r = check_data(&mut st, &mut p);
        assert_eq!(r, StepResult::Fail("e2fsck status 4".into()));
        assert_eq!(
            p.calls[0],
            Call::Run(
                "/usr/sbin/e2fsck".into(),
                vec!["-p".into(), "/dev/vda3".into()]
            )
        );
        assert!(!st.data_ok);
        assert!(
            st.status.faults[0].contains("failed its check")
                && st.status.faults[0].contains("RUN fsck MANUALLY")
                && st.status.faults[0].contains("recovery"),
            "{:?}",
            st.status.faults
        );
        assert!(matches!(mount_data(&mut st, &mut p), StepResult::Ok(_)));
        assert_eq!(
            data_mount(&p),
            Call::Mount {
                source: "/dev/vda3".into(),
                target: paths::DATA.into(),
                fstype: "ext4".into(),
                read_only: true,
                // The journal is not replayed: nothing on the volume changes.
                data: "noload".into(),
            }
        );
        assert!(st.status.data_read_only);
        assert!(matches!(
            services::rayosd(&mut st, &mut p),
            StepResult::Skip(_)
        ));
        assert!(matches!(
            services::presenter(&mut st, &mut p),
            StepResult::Skip(_)
        ));
        assert!(!p.calls.iter().any(|c| matches!(c, Call::Start(_))));
        // Logs stay off the volume.
        assert!(matches!(logs(&mut st, &mut p), StepResult::Skip(_)));
        assert_eq!(st.logs_dir, Path::new(paths::RUN_LOGS));
    }

    #[test]
    fn a_repaired_volume_is_mounted_read_write_and_rayosd_starts() {
        let (mut st, mut p) = installed(1, "/dev/vda3: 11/4096 files");
        let r = check_data(&mut st, &mut p);
        assert!(
            matches!(r, StepResult::Warn(ref m) if m.contains("repaired")),
            "{r:?}"
        );
        assert!(st.data_ok && st.status.faults.is_empty());
        assert!(matches!(mount_data(&mut st, &mut p), StepResult::Ok(_)));
        assert!(
            matches!(data_mount(&p), Call::Mount { read_only: false, ref data, .. } if data.is_empty())
        );
        assert!(matches!(
            services::network(&mut st, &mut p),
            StepResult::Ok(_)
        ));
        assert!(matches!(
            services::rayosd(&mut st, &mut p),
            StepResult::Ok(_)
        ));
        assert!(matches!(
            services::presenter(&mut st, &mut p),
            StepResult::Ok(_)
        ));
        let started = p.calls_where(|c| matches!(c, Call::Start(_)));
        assert_eq!(
            started,
            vec![
                Call::Start("network".into()),
                Call::Start("rayosd".into()),
                Call::Start("presenter".into())
            ]
        );
    }

    /// A mounted, checked data volume whose Linux VM lives on a
    /// VM-storage partition (vda5 when `present`).
    fn with_vm_storage(present: bool) -> (State, Fake) {
        let (mut st, mut p) = installed(0, "");
        let marker = rayos_state::layout::storage_marker_text("rayos-vm-linux");
        let m = format!("vm/1111/{}", rayos_state::layout::vm::STORAGE_MARKER);
        p.volume("/dev/vda3", &[(m.as_str(), marker.as_str())]);
        p.volume("/dev/vda5", &[("disks/root.qcow2", "the VM's disk")]);
        let mut parts = vec![(rayos_disk::types::RAYOS_DATA, "rayos-data", "/dev/vda3")];
        if present {
            parts.push((
                rayos_disk::types::RAYOS_VM_STORAGE,
                "rayos-vm-linux",
                "/dev/vda5",
            ));
        }
        // Another disk's partition of the same label is never used.
        p.partitioned_disk("/dev/vda", &parts);
        p.partitioned_disk(
            "/dev/vdb",
            &[(
                rayos_disk::types::RAYOS_VM_STORAGE,
                "rayos-vm-linux",
                "/dev/vdb1",
            )],
        );
        assert!(matches!(check_data(&mut st, &mut p), StepResult::Ok(_)));
        assert!(matches!(mount_data(&mut st, &mut p), StepResult::Ok(_)));
        p.calls.clear();
        (st, p)
    }

    #[test]
    fn a_vm_storage_partition_is_checked_and_mounted_over_its_marker() {
        let (mut st, mut p) = with_vm_storage(true);
        let r = vm_storage(&mut st, &mut p);
        assert!(
            matches!(r, StepResult::Ok(ref m) if m.contains("rayos-vm-linux (/dev/vda5)")),
            "{r:?}"
        );
        let target = Path::new(paths::DATA).join("vm/1111");
        assert_eq!(
            p.calls,
            vec![
                Call::Run(
                    "/usr/sbin/e2fsck".into(),
                    vec!["-p".into(), "/dev/vda5".into()]
                ),
                Call::Mount {
                    source: "/dev/vda5".into(),
                    target: target.clone(),
                    fstype: "ext4".into(),
                    read_only: false,
                    data: String::new(),
                },
            ]
        );
        // The VM's directory is now the partition: its files, no marker.
        assert!(p.path(&target.join("disks/root.qcow2")).is_file());
        assert!(
            !p.path(&target.join(rayos_state::layout::vm::STORAGE_MARKER))
                .exists()
        );
        assert_eq!(st.vm_storage_mounts, vec![target]);
        assert!(st.status.faults.is_empty());
    }

    #[test]
    fn a_missing_vm_storage_partition_is_a_fault_and_nothing_is_mounted() {
        let (mut st, mut p) = with_vm_storage(false);
        let r = vm_storage(&mut st, &mut p);
        assert!(matches!(r, StepResult::Fail(_)), "{r:?}");
        assert!(p.calls.is_empty(), "{:?}", p.calls);
        assert!(
            st.status.faults[0].contains("rayos-vm-linux")
                && st.status.faults[0].contains("missing from /dev/vda")
                && st.status.faults[0].contains("not started"),
            "{:?}",
            st.status.faults
        );
        // The marker stays visible, so rayosd refuses the VM.
        let marker = Path::new(paths::DATA)
            .join("vm/1111")
            .join(rayos_state::layout::vm::STORAGE_MARKER);
        assert!(p.path(&marker).is_file());
        assert!(st.vm_storage_mounts.is_empty());
    }

    #[test]
    fn a_vm_storage_partition_that_fails_its_check_is_not_mounted() {
        let (mut st, mut p) = with_vm_storage(true);
        p.runs_on.insert(
            "/dev/vda5".into(),
            (4, "/dev/vda5: UNEXPECTED INCONSISTENCY".into()),
        );
        let r = vm_storage(&mut st, &mut p);
        assert!(matches!(r, StepResult::Fail(_)), "{r:?}");
        assert!(!p.calls.iter().any(|c| matches!(c, Call::Mount { .. })));
        assert!(
            st.status.faults[0].contains("failed its check (e2fsck status 4"),
            "{:?}",
            st.status.faults
        );
    }

    #[test]
    fn no_marker_no_vm_storage_step() {
        let (mut st, mut p) = installed(0, "");
        assert!(matches!(check_data(&mut st, &mut p), StepResult::Ok(_)));
        assert!(matches!(mount_data(&mut st, &mut p), StepResult::Ok(_)));
        assert!(matches!(vm_storage(&mut st, &mut p), StepResult::Skip(_)));
    }

    #[test]
    fn the_timezone_becomes_etc_localtime_when_the_image_has_the_zone() {
        let (mut st, mut p) = installed(0, "");
        let m = rayos_state::MachineConfig::new("box", "Europe/Berlin", "de_DE.UTF-8", "de");
        p.volume("/dev/vda3", &[("machine.toml", m.to_toml().as_str())]);
        let zone = p.at("/usr/share/zoneinfo/Europe/Berlin");
        fs::create_dir_all(zone.parent().unwrap()).unwrap();
        fs::write(&zone, "TZif").unwrap();
        assert!(matches!(check_data(&mut st, &mut p), StepResult::Ok(_)));
        assert!(matches!(mount_data(&mut st, &mut p), StepResult::Ok(_)));
        assert!(matches!(machine(&mut st, &mut p), StepResult::Ok(_)));
        let link = fs::read_link(p.at("/etc/localtime")).unwrap();
        assert_eq!(link, Path::new("/usr/share/zoneinfo/Europe/Berlin"));
        assert_eq!(
            fs::read_to_string(p.at("/etc/timezone")).unwrap(),
            "Europe/Berlin\n"
        );
        // A zone the image lacks: said, and no stale link is left.
        let m = rayos_state::MachineConfig::new("box", "Mars/Olympus", "C", "us");
        p.volume("/dev/vda3", &[("machine.toml", m.to_toml().as_str())]);
        let r = machine(&mut st, &mut p);
        assert!(
            matches!(r, StepResult::Warn(ref w) if w.contains("not in this image")),
            "{r:?}"
        );
        assert!(fs::symlink_metadata(p.at("/etc/localtime")).is_err());
    }

    #[test]
    fn the_keyboard_layout_is_loaded_from_the_compiled_keymap() {
        let (mut st, mut p) = installed(0, "");
        assert!(matches!(keyboard(&mut st, &mut p), StepResult::Skip(_)));
        st.keyboard = Some("us".into());
        assert!(matches!(keyboard(&mut st, &mut p), StepResult::Ok(_)));
        assert!(p.calls.is_empty(), "US is the kernel's map");
        st.keyboard = Some("de".into());
        let r = keyboard(&mut st, &mut p);
        assert!(
            matches!(r, StepResult::Warn(ref w) if w.contains("de.bmap")),
            "{r:?}"
        );
        // A compiled keymap: 7 bytes magic, the map flags, one map.
        let mut b = b"bkeymap".to_vec();
        let mut flags = [0u8; 256];
        flags[0] = 1;
        b.extend_from_slice(&flags);
        b.extend_from_slice(&[0u8; 256]);
        let f = p.at("/usr/share/rayos/keymaps/de.bmap");
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, &b).unwrap();
        assert!(matches!(keyboard(&mut st, &mut p), StepResult::Ok(_)));
        assert_eq!(p.calls, vec![Call::Keymap(128)]);
        st.keyboard = Some("dvorak".into());
        let r = keyboard(&mut st, &mut p);
        assert!(
            matches!(r, StepResult::Warn(ref w) if w.contains("no console keymap")),
            "{r:?}"
        );
    }

    #[test]
    fn a_volume_that_does_not_mount_is_a_fault() {
        let (mut st, mut p) = installed(0, "");
        p.mount_fails.insert("/dev/vda3".into());
        assert!(matches!(check_data(&mut st, &mut p), StepResult::Ok(_)));
        assert!(matches!(mount_data(&mut st, &mut p), StepResult::Fail(_)));
        assert!(!st.data_ok);
        assert!(matches!(
            services::network(&mut st, &mut p),
            StepResult::Skip(_)
        ));
        assert_eq!(st.status.data_mounted, None);
        assert!(st.status.faults[0].contains("cannot mount the data volume /dev/vda3"));
        assert!(matches!(
            services::rayosd(&mut st, &mut p),
            StepResult::Skip(_)
        ));
        // The rest of the boot sees no volume.
        assert!(matches!(machine(&mut st, &mut p), StepResult::Skip(_)));
        assert_eq!(p.hostname.as_deref(), Some("rayos"));
    }

    #[test]
    fn no_data_partition_waits_for_slow_disks_then_is_a_fault() {
        let mut p = Fake::new();
        p.disk("/dev/sda", false, None);
        let mut st = fake::state();
        assert_eq!(
            find_data(&mut st, &mut p),
            StepResult::Fail("no data partition found".into())
        );
        assert!(p.elapsed() >= DISK_WAIT, "gave up after {:?}", p.elapsed());
        assert!(
            st.status.faults[0].contains("/dev/sda"),
            "{:?}",
            st.status.faults
        );
        assert!(matches!(check_data(&mut st, &mut p), StepResult::Skip(_)));
        assert!(matches!(mount_data(&mut st, &mut p), StepResult::Skip(_)));
        assert!(p.calls.is_empty(), "nothing run or mounted: {:?}", p.calls);
    }
    /// Two installs; the loader's disk is still probing: its install is
    /// waited for rather than the other one taken.
    #[test]
    fn the_loaders_disk_is_waited_for_before_another_install() {
        let esp_guid = uuid::Uuid::from_u128(0xe5b);
        let mut p = Fake::new();
        p.partitioned_disk(
            "/dev/vda",
            &[(rayos_disk::types::RAYOS_DATA, "rayos-data", "/dev/vda3")],
        );
        let mut late = Fake::new();
        late.partitioned_disk(
            "/dev/sda",
            &[
                (rayos_disk::types::ESP, "ESP", "/dev/sda1"),
                (rayos_disk::types::RAYOS_DATA, "rayos-data", "/dev/sda3"),
            ],
        );
        let mut sda = late.disks.pop().unwrap();
        sda.partitions[0].unique_guid = Some(esp_guid);
        p.arriving.push((Duration::from_millis(900), sda.clone()));
        p.loader_esp = Some(esp_guid);
        let mut st = fake::state();
        assert!(matches!(find_data(&mut st, &mut p), StepResult::Ok(_)));
        assert_eq!(st.status.data_device.as_deref(), Some("/dev/sda3"));
        assert!(p.elapsed() < LOADER_DISK_WAIT, "{:?}", p.elapsed());

        // It never comes: the other install, after the grace period.
        let mut p = Fake::new();
        p.partitioned_disk(
            "/dev/vda",
            &[(rayos_disk::types::RAYOS_DATA, "rayos-data", "/dev/vda3")],
        );
        p.loader_esp = Some(esp_guid);
        let mut st = fake::state();
        assert!(matches!(find_data(&mut st, &mut p), StepResult::Ok(_)));
        assert_eq!(st.status.data_device.as_deref(), Some("/dev/vda3"));
        assert!(p.elapsed() >= LOADER_DISK_WAIT, "{:?}", p.elapsed());
        assert!(p.elapsed() < DISK_WAIT, "{:?}", p.elapsed());
    }

    /// An installed system running 0.1.0 whose system partition holds
    /// `entries` in EFI/Linux.
    fn running_old(entries: &[&str]) -> (State, Fake) {
        let (mut st, mut p) = installed(0, "");
        let files: Vec<(String, &str)> = entries
            .iter()
            .map(|e| (format!("EFI/Linux/{e}"), "uki"))
            .collect();
        let files: Vec<(&str, &str)> = files.iter().map(|(n, c)| (n.as_str(), *c)).collect();
        p.volume("/dev/vda2", &files);
        st.image = Some("rayos-0.1.0.efi".into());
        (st, p)
    }

    #[test]
    fn an_exhausted_newer_entry_is_a_rollback_marked_bad_and_synced() {
        // A newer entry with tries left is an update still being tried.
        let (mut st, mut p) = running_old(&["rayos-0.1.0.efi", "rayos-0.2.0+1-2.efi"]);
        let r = rollback_check(&mut st, &mut p);
        assert!(
            matches!(&r, StepResult::Ok(m) if m.contains("no rollback")),
            "{r:?}"
        );
        assert!(p.markers.is_empty(), "{:?}", p.markers);
        assert!(p.calls.contains(&Call::Unmount(paths::SYSTEM.into())));
        assert!(
            p.volumes["/dev/vda2"]
                .join("EFI/Linux/rayos-0.2.0+1-2.efi")
                .exists()
        );

        let (mut st, mut p) = running_old(&["rayos-0.1.0.efi", "rayos-0.2.0+0-3.efi"]);
        let r = rollback_check(&mut st, &mut p);
        assert!(
            matches!(&r, StepResult::Warn(m) if m.contains("0.2.0")),
            "{r:?}"
        );
        let sync = p.calls.iter().position(|c| *c == Call::Sync);
        let unmount = p
            .calls
            .iter()
            .position(|c| *c == Call::Unmount(paths::SYSTEM.into()));
        assert!(
            sync.is_some() && sync < unmount,
            "synced before the unmount: {:?}",
            p.calls
        );
        assert!(
            p.volumes["/dev/vda2"]
                .join("EFI/Linux/rayos-0.2.0+0-3.efi.bad")
                .exists()
        );
    }
}
