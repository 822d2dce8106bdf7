//! The QEMU backend against a real QEMU (TCG) running the tiny test guest:
//! cold boot, save, restore, attach after the launching process let go, and
//! failures that must leave the VM and its files intact.

mod common;

use std::time::Duration;

use common::{BOOT, Guard, linux_vm, sha256, vmm};
use rayos_testkit::guest;
use rayos_vmm::qemu::process;
use rayos_vmm::{Launch, RunState, Vmm};

/// Cold boot, counter runs; save ends QEMU and leaves a state file;
/// restore continues the counter above its last value (RAM came back);
/// a cold boot afterwards starts from 0 again.
#[test]
fn cold_boot_save_restore_continues_counter() {
    let vm = linux_vm("counter");
    let vmm = vmm();
    let log = vm.console();

    let mut g = Guard(Some(vmm.launch(&vm.spec, &Launch::Cold).unwrap()));
    guest::wait_for_line(&log, 0, guest::READY_MARKER, BOOT).unwrap();
    let first = guest::wait_counter_above(&log, 0, Some(3), BOOT).unwrap();
    assert!(first > 3);
    assert_eq!(g.h().state().unwrap(), RunState::Running);
    assert!(g.h().vnc_socket().exists());

    // The display can be captured without input.
    let png = vm.dir.path().join("shot.png");
    g.h().screenshot(&png).unwrap();
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");

    let pid = g.h().pid();
    let before = guest::counters(&guest::read_from(&log, 0).unwrap());
    let report = g.h().save(&vm.state_file()).unwrap();
    assert!(!process::alive(pid), "QEMU must end after a save");
    assert_eq!(g.h().state().unwrap(), RunState::Exited);
    g.0 = None;
    let last_before = *guest::counters(&guest::read_from(&log, 0).unwrap())
        .last()
        .unwrap();
    assert!(last_before >= *before.last().unwrap());
    assert!(report.bytes > 0 && report.bytes == std::fs::metadata(vm.state_file()).unwrap().len());
    // The default form: QEMU's own stream, written by QEMU into the file.
    let head = std::fs::read(vm.state_file()).unwrap();
    assert_eq!(&head[..4], b"QEVM", "raw stream: {report:?}");
    assert!(!vm.state_file().with_extension("zst.partial").exists());

    let offset = guest::log_len(&log);
    let mut g = Guard(Some(
        vmm.launch(
            &vm.spec,
            &Launch::Restore {
                state_file: vm.state_file(),
            },
        )
        .unwrap(),
    ));
    assert_eq!(g.h().state().unwrap(), RunState::Running);
    let after = guest::wait_counter_above(&log, offset, None, BOOT).unwrap();
    assert!(
        after > last_before,
        "counter restarted: {after} after restore, {last_before} before save"
    );
    // No second boot happened: the ready marker is not printed again.
    let since = guest::read_from(&log, offset).unwrap();
    assert!(!since.contains(guest::READY_MARKER), "{since}");

    // The test guest answers the agent protocol: the clock gets set.
    // Set from its RTC (`hwclock -s`, as qemu-ga does); it cannot report
    // its clock (`guest-get-time`).
    let sync = vmm
        .sync_guest_time(&vm.spec, Duration::from_secs(5))
        .unwrap()
        .expect("the agent answers");
    assert_eq!(
        (sync.source, sync.offset_ms),
        (rayos_vmm::ClockSource::Rtc, None)
    );
    guest::wait_for_line(&log, offset, "AGENT set-time rtc", Duration::from_secs(30)).unwrap();

    g.h().kill().unwrap();
    g.0 = None;

    // Cold boot: counter from 0.
    let offset = guest::log_len(&log);
    let _g = Guard(Some(vmm.launch(&vm.spec, &Launch::Cold).unwrap()));
    guest::wait_for_line(&log, offset, guest::READY_MARKER, BOOT).unwrap();
    let c = guest::wait_counter_above(&log, offset, None, BOOT).unwrap();
    assert_eq!(c, 0);
}

/// States saved compressed (`SaveFormat::Zstd`, the only form before
/// raw saves) restore with the default setting: the counter continues.
#[test]
fn compressed_state_restores() {
    let vm = linux_vm("zstd");
    let zvmm = rayos_vmm::QemuVmm::new(rayos_vmm::QemuConfig {
        save_format: rayos_vmm::SaveFormat::Zstd,
        ..vmm().config().clone()
    });
    let log = vm.console();

    let mut g = Guard(Some(zvmm.launch(&vm.spec, &Launch::Cold).unwrap()));
    guest::wait_for_line(&log, 0, guest::READY_MARKER, BOOT).unwrap();
    let before = guest::wait_counter_above(&log, 0, Some(1), BOOT).unwrap();
    let report = g.h().save(&vm.state_file()).unwrap();
    g.0 = None;
    let head = std::fs::read(vm.state_file()).unwrap();
    assert_eq!(&head[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd: {report:?}");
    assert!(report.transferred > report.bytes, "compressed: {report:?}");

    let offset = guest::log_len(&log);
    let mut g = Guard(Some(
        vmm()
            .launch(
                &vm.spec,
                &Launch::Restore {
                    state_file: vm.state_file(),
                },
            )
            .unwrap(),
    ));
    assert_eq!(g.h().state().unwrap(), RunState::Running);
    let after = guest::wait_counter_above(&log, offset, Some(before), BOOT).unwrap();
    assert!(after > before);
    let since = guest::read_from(&log, offset).unwrap();
    assert!(!since.contains(guest::READY_MARKER), "{since}");
    g.h().kill().unwrap();
    g.0 = None;
}

/// A state file that does not load: an error, no QEMU left behind, the disk
/// bytes unchanged, the state file kept for the supervisor to report.
/// Four kinds of damage: neither QEMU's stream nor zstd; a valid zstd
/// stream whose migration data is garbage after the header (QEMU itself
/// fails); the same garbage uncompressed; a real (raw) saved state cut in
/// half (QEMU meets the end of the file part-way).
#[test]
fn corrupt_state_fails_cleanly() {
    let vm = linux_vm("corrupt");
    let vmm = vmm();
    let log = vm.console();

    // A real saved state to damage.
    let mut g = Guard(Some(vmm.launch(&vm.spec, &Launch::Cold).unwrap()));
    guest::wait_for_line(&log, 0, guest::READY_MARKER, BOOT).unwrap();
    g.h().save(&vm.state_file()).unwrap();
    g.0 = None;
    let disk_before = sha256(&vm.disk());
    let good = std::fs::read(vm.state_file()).unwrap();

    let mut garbage = b"QEVM\0\0\0\x03".to_vec();
    garbage.extend(std::iter::repeat_n(0x5a, 1 << 20));
    let raw = vm.dir.path().join("garbage");
    std::fs::write(&raw, &garbage).unwrap();
    let zst = vm.dir.path().join("garbage.zst");
    let st = std::process::Command::new("zstd")
        .args(["-q", "-f", "-o"])
        .arg(&zst)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(st.success());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not zstd", b"this is not a saved VM".to_vec()),
        ("garbage stream", std::fs::read(&zst).unwrap()),
        ("garbage raw stream", garbage.clone()),
        ("truncated", good[..good.len() / 2].to_vec()),
    ];
    for (what, bytes) in cases {
        std::fs::write(vm.state_file(), &bytes).unwrap();
        let err = vmm
            .launch(
                &vm.spec,
                &Launch::Restore {
                    state_file: vm.state_file(),
                },
            )
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(err, rayos_vmm::VmmError::Restore { .. }),
            "{what}: {err}"
        );
        // No QEMU for this VM anywhere.
        assert!(vmm.attach(&vm.spec).unwrap().is_none(), "{what}");
        assert!(
            !any_qemu_with(&vm.spec.def.id.to_string()),
            "{what}: QEMU left behind"
        );
        assert_eq!(
            std::fs::read(vm.state_file()).unwrap(),
            bytes,
            "{what}: state file must be kept"
        );
    }
    assert_eq!(sha256(&vm.disk()), disk_before);

    // A missing state file is reported as missing.
    let err = vmm
        .launch(
            &vm.spec,
            &Launch::Restore {
                state_file: vm.dir.path().join("nope"),
            },
        )
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, rayos_vmm::VmmError::Missing { .. }), "{err}");

    // The VM still cold-boots on its unchanged disk.
    let offset = guest::log_len(&log);
    let _g = Guard(Some(vmm.launch(&vm.spec, &Launch::Cold).unwrap()));
    assert_eq!(
        guest::wait_counter_above(&log, offset, None, BOOT).unwrap(),
        0
    );
}

fn any_qemu_with(needle: &str) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| process::alive_with_arg(pid, needle))
}

/// The launching backend goes away without killing QEMU (as when rayosd is
/// killed); a new backend attaches through the run directory and can save
/// and restore the VM.
#[test]
fn attach_after_the_launcher_is_gone() {
    let vm = linux_vm("attach");
    let log = vm.console();
    {
        let first = vmm();
        let h = first.launch(&vm.spec, &Launch::Cold).unwrap();
        guest::wait_for_line(&log, 0, guest::READY_MARKER, BOOT).unwrap();
        drop(h);
        drop(first);
    }
    let c1 = guest::wait_counter_above(&log, 0, Some(2), BOOT).unwrap();

    let second = vmm();
    let mut g = Guard(Some(
        second.attach(&vm.spec).unwrap().expect("QEMU still runs"),
    ));
    assert_eq!(g.h().state().unwrap(), RunState::Running);
    // A second launch while it runs is refused.
    assert!(second.launch(&vm.spec, &Launch::Cold).is_err());
    let c2 = guest::wait_counter_above(&log, 0, Some(c1), BOOT).unwrap();
    assert!(c2 > c1);

    g.h().save(&vm.state_file()).unwrap();
    g.0 = None;
    assert!(second.attach(&vm.spec).unwrap().is_none());
    let last = *guest::counters(&guest::read_from(&log, 0).unwrap())
        .last()
        .unwrap();
    let offset = guest::log_len(&log);
    let _g = Guard(Some(
        second
            .launch(
                &vm.spec,
                &Launch::Restore {
                    state_file: vm.state_file(),
                },
            )
            .unwrap(),
    ));
    let after = guest::wait_counter_above(&log, offset, None, BOOT).unwrap();
    assert!(after > last, "{after} <= {last}");
}

/// The ACPI power button reaches the guest, which powers off; QEMU then
/// reports `Shutdown` (not `Exited`, which means a crash) until
/// `wait_exit` ends it.
#[test]
fn powerdown_ends_the_guest() {
    let vm = linux_vm("power");
    let vmm = vmm();
    let log = vm.console();
    let mut g = Guard(Some(vmm.launch(&vm.spec, &Launch::Cold).unwrap()));
    guest::wait_for_line(&log, 0, guest::READY_MARKER, BOOT).unwrap();
    guest::wait_counter_above(&log, 0, Some(1), BOOT).unwrap();
    g.h().powerdown().unwrap();
    // The guest powers off; QEMU stays (so this is not mistaken for a crash).
    let deadline = std::time::Instant::now() + BOOT;
    while g.h().state().unwrap() != RunState::Shutdown {
        assert!(
            std::time::Instant::now() < deadline,
            "guest did not shut down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(process::alive(g.h().pid()));
    assert!(
        g.h().wait_exit(BOOT).unwrap(),
        "QEMU did not exit after the guest shut down"
    );
    assert_eq!(g.h().state().unwrap(), RunState::Exited);
    guest::wait_for_line(&log, 0, "POWER button pressed", Duration::from_secs(5)).unwrap();
    g.0 = None;
}

/// The fingerprint ignores how a VM is launched but follows its
/// configuration.
#[test]
fn fingerprint_tracks_configuration() {
    let vm = linux_vm("fp");
    let vmm = vmm();
    let a = vmm.fingerprint(&vm.spec).unwrap();
    assert_eq!(a, vmm.fingerprint(&vm.spec).unwrap());
    let mut moved = vm.spec.clone();
    moved.run_dir = "/run/elsewhere".into();
    assert_eq!(a, vmm.fingerprint(&moved).unwrap());
    let mut more = vm.spec.clone();
    more.memory_mib = 512;
    assert_ne!(a, vmm.fingerprint(&more).unwrap());
}

/// A small tmpfs mounted for one test, unmounted on drop.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(at: std::path::PathBuf, size: &str) -> SmallFs {
        std::fs::create_dir_all(&at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size}"))
            .arg("rayos-test-full")
            .arg(&at)
            .output()
            .expect("mount(8) is needed");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallFs(at)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// What a previous save left, to check it survives a failed one.
const PREVIOUS: &[u8] = b"the previous saved state";

/// The guest's counter still advances: it runs (and was resumed if a save
/// paused it).
fn still_counting(g: &mut Guard, log: &std::path::Path) {
    assert_eq!(g.h().state().unwrap(), RunState::Running);
    let offset = guest::log_len(log);
    let before = *guest::counters(&guest::read_from(log, 0).unwrap())
        .last()
        .unwrap();
    let after = guest::wait_counter_above(log, offset, Some(before), BOOT).unwrap();
    assert!(after > before);
}

/// The files in `dir` besides the previous state: none may be left.
fn leftovers(dir: &std::path::Path, state: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p != state)
        .collect()
}

/// The test guest cold-booted and counting, with a fresh tmpfs of `size`
/// (mounted in the VM's directory) that holds an earlier saved state
/// ([`PREVIOUS`]) at the returned path; also the counter it has reached.
fn counting_with_small_fs(
    vm: &common::TestVm,
    vmm: &rayos_vmm::QemuVmm,
    size: &str,
) -> (Guard, SmallFs, std::path::PathBuf, u64) {
    let log = vm.console();
    let fs = SmallFs::mount(vm.dir.path().join("small"), size);
    let state = fs.0.join("vm.state.zst");
    std::fs::write(&state, PREVIOUS).unwrap();
    let g = Guard(Some(vmm.launch(&vm.spec, &Launch::Cold).unwrap()));
    guest::wait_for_line(&log, 0, guest::READY_MARKER, BOOT).unwrap();
    let counter = guest::wait_counter_above(&log, 0, Some(1), BOOT).unwrap();
    (g, fs, state, counter)
}

/// Too little room even for a compressed state (100 MiB for a 256 MiB
/// guest): refused before the guest is stopped, with an error that says
/// what to do; the previous state is untouched and the guest runs on.
#[test]
fn save_refused_when_the_filesystem_is_too_small() {
    let vm = linux_vm("full");
    let vmm = vmm();
    let log = vm.console();
    let (mut g, full, state, _) = counting_with_small_fs(&vm, &vmm, "100m");

    let err = g.h().save(&state).unwrap_err();
    assert!(matches!(err, rayos_vmm::VmmError::NoSpace { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("MiB free") && msg.contains("free space"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&state).unwrap(), PREVIOUS);
    assert_eq!(leftovers(&full.0, &state), Vec::<std::path::PathBuf>::new());
    still_counting(&mut g, &log);

    // And a save to a roomy place still works afterwards.
    g.h().save(&vm.state_file()).unwrap();
    g.0 = None;
    assert!(vm.state_file().is_file());
}

/// Room for a compressed state but not for a raw one (200 MiB for a
/// 256 MiB guest): the state is written compressed, replaces the previous
/// one and restores.
#[test]
fn save_falls_back_to_compressed_when_raw_does_not_fit() {
    let vm = linux_vm("fallback");
    let vmm = vmm();
    let log = vm.console();
    let (mut g, small, state, before) = counting_with_small_fs(&vm, &vmm, "200m");
    let report = g.h().save(&state).unwrap();
    g.0 = None;
    assert!(report.compressed_fallback, "{report:?}");
    let head = std::fs::read(&state).unwrap();
    assert_eq!(&head[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd: {report:?}");
    assert_eq!(
        leftovers(&small.0, &state),
        Vec::<std::path::PathBuf>::new()
    );

    let offset = guest::log_len(&log);
    let mut g = Guard(Some(
        vmm.launch(
            &vm.spec,
            &Launch::Restore {
                state_file: state.clone(),
            },
        )
        .unwrap(),
    ));
    let after = guest::wait_counter_above(&log, offset, Some(before), BOOT).unwrap();
    assert!(after > before);
    g.h().kill().unwrap();
    g.0 = None;
}

/// The compressed fallback is tried, but the stream turns out larger than
/// the room and the file system fills half-way (a stand-in for zstd
/// appends zeros until the disk is full): an error that names the lack of
/// space, no partial file, the previous state untouched, the guest runs on.
#[test]
fn save_that_fills_the_filesystem_keeps_vm_and_previous_state() {
    use std::os::unix::fs::PermissionsExt as _;
    let vm = linux_vm("fills");
    let stand_in = vm.dir.path().join("zstd-fills-disk");
    std::fs::write(&stand_in, "#!/bin/sh\nexec cat - /dev/zero\n").unwrap();
    std::fs::set_permissions(&stand_in, std::fs::Permissions::from_mode(0o755)).unwrap();
    let vmm = rayos_vmm::QemuVmm::new(rayos_vmm::QemuConfig {
        zstd: stand_in,
        ..vmm().config().clone()
    });
    let log = vm.console();
    let (mut g, small, state, _) = counting_with_small_fs(&vm, &vmm, "200m");

    let err = g.h().save(&state).unwrap_err();
    assert!(matches!(err, rayos_vmm::VmmError::Save { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("free space there"), "{msg}");
    assert_eq!(std::fs::read(&state).unwrap(), PREVIOUS);
    assert_eq!(
        leftovers(&small.0, &state),
        Vec::<std::path::PathBuf>::new()
    );
    still_counting(&mut g, &log);
    g.h().kill().unwrap();
    g.0 = None;
}

/// A run directory too long for unix socket paths is refused up front, with
/// the reason, and nothing is started.
#[test]
fn overlong_run_dir_is_refused() {
    let mut vm = linux_vm("longrun");
    vm.spec.run_dir = vm.dir.path().join("r".repeat(120));
    let err = vmm()
        .launch(&vm.spec, &Launch::Cold)
        .map(|_| ())
        .unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("too long for unix sockets"), "{chain}");
    assert!(!vm.spec.run_dir.exists());
}

/// Save and restore work where no shell exists, as in the installed
/// image: in a private mount namespace of this thread (inherited by the QEMU
/// and zstd it starts) `/bin/sh` is covered by an empty, non-executable
/// file. A control shows the hiding bites QEMU itself: its `exec:`
/// migration, which runs through `/bin/sh`, fails there; the backend's `fd:`
/// save and restore still bring the guest's RAM back.
#[test]
fn save_and_restore_need_no_shell() {
    // A thread of its own: the namespace ends with it, even when the test
    // harness runs tests on its main thread.
    std::thread::spawn(save_and_restore_without_shell)
        .join()
        .unwrap();
}

fn save_and_restore_without_shell() {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    let vm = linux_vm("noshell");
    let vmm = vmm();
    let log = vm.console();

    let sh = std::fs::canonicalize("/bin/sh").expect("this host has no /bin/sh to hide");
    let cover = vm.dir.path().join("no-shell");
    std::fs::write(&cover, b"").unwrap();
    let c = |p: &std::path::Path| CString::new(p.as_os_str().as_bytes()).unwrap();
    let (root, cover_c, sh_c) = (c("/".as_ref()), c(&cover), c(&sh));
    // SAFETY: plain syscalls on NUL-terminated strings that outlive them;
    // unshare(CLONE_NEWNS) affects only this thread, which ends with the test.
    unsafe {
        assert_eq!(
            libc::unshare(libc::CLONE_NEWNS),
            0,
            "unshare(CLONE_NEWNS) needs root: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            0,
            "making / private: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(
            libc::mount(
                cover_c.as_ptr(),
                sh_c.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ),
            0,
            "covering {}: {}",
            sh.display(),
            std::io::Error::last_os_error()
        );
    }
    let sh_runs = std::process::Command::new("/bin/sh")
        .args(["-c", "exit 0"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        !sh_runs,
        "/bin/sh still runs after covering {}",
        sh.display()
    );

    let g = vmm.launch(&vm.spec, &Launch::Cold).unwrap();
    // Keep QEMU running but let go of its QMP connection for the control.
    drop(g);
    guest::wait_for_line(&log, 0, guest::READY_MARKER, BOOT).unwrap();
    guest::wait_counter_above(&log, 0, Some(2), BOOT).unwrap();
    {
        let mut q = rayos_qmp::QmpClient::connect(
            &vm.spec.run_dir.join(rayos_vmm::qemu::cmdline::run::QMP),
            Duration::from_secs(10),
        )
        .unwrap();
        let sink = vm.dir.path().join("exec-sink");
        let uri = format!("exec:cat > {}", sink.display());
        let detail = match q.execute("migrate", Some(serde_json::json!({ "uri": uri }))) {
            Err(e) => e.to_string(),
            Ok(_) => {
                // Asynchronous failure: wait until QEMU reports it.
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                loop {
                    let m = q.execute("query-migrate", None).unwrap();
                    if m["status"] == "failed" {
                        break m["error-desc"].to_string();
                    }
                    assert_ne!(m["status"], "completed", "exec: worked without a shell");
                    assert!(
                        std::time::Instant::now() < deadline,
                        "exec: neither failed nor completed"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        assert!(detail.contains("/bin/sh"), "{detail}");
        assert!(!sink.exists(), "exec: ran a shell");
    }

    let mut g = Guard(vmm.attach(&vm.spec).unwrap());
    assert_eq!(g.h().state().unwrap(), RunState::Running);
    g.h().save(&vm.state_file()).unwrap();
    g.0 = None;
    let last_before = *guest::counters(&guest::read_from(&log, 0).unwrap())
        .last()
        .unwrap();

    let offset = guest::log_len(&log);
    let mut g = Guard(Some(
        vmm.launch(
            &vm.spec,
            &Launch::Restore {
                state_file: vm.state_file(),
            },
        )
        .unwrap(),
    ));
    assert_eq!(g.h().state().unwrap(), RunState::Running);
    let after = guest::wait_counter_above(&log, offset, None, BOOT).unwrap();
    assert!(
        after > last_before,
        "{after} after restore, {last_before} before save"
    );
    let since = guest::read_from(&log, offset).unwrap();
    assert!(
        !since.contains(guest::READY_MARKER),
        "rebooted instead: {since}"
    );
    g.h().kill().unwrap();
    g.0 = None;
}
