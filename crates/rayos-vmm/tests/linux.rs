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
    assert!(report.bytes > 0 && report.bytes == std::fs::metadata(&vm.state_file()).unwrap().len());
    assert!(report.transferred > report.bytes, "compressed: {report:?}");
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
    assert!(g.h().sync_guest_time().unwrap());
    guest::wait_for_line(&log, offset, "AGENT set-time", Duration::from_secs(30)).unwrap();

    g.h().kill().unwrap();
    g.0 = None;

    // Cold boot: counter from 0.
    let offset = guest::log_len(&log);
    let _g = Guard(Some(vmm.launch(&vm.spec, &Launch::Cold).unwrap()));
    guest::wait_for_line(&log, offset, guest::READY_MARKER, BOOT).unwrap();
    let c = guest::wait_counter_above(&log, offset, None, BOOT).unwrap();
    assert_eq!(c, 0);
}

/// A state file that does not load: an error, no QEMU left behind, the disk
/// bytes unchanged, the state file kept for the supervisor to report.
#[test]
fn corrupt_state_fails_cleanly() {
    let vm = linux_vm("corrupt");
    let vmm = vmm();
    let disk_before = sha256(&vm.disk());
    std::fs::create_dir_all(vm.state_file().parent().unwrap()).unwrap();

    // Valid zstd, garbage inside; and not zstd at all.
    let garbage = vm.dir.path().join("garbage");
    std::fs::write(&garbage, vec![0x5a; 1 << 20]).unwrap();
    let st = std::process::Command::new("zstd")
        .args(["-q", "-f", "-o"])
        .arg(vm.state_file())
        .arg(&garbage)
        .status()
        .unwrap();
    assert!(st.success());
    for round in 0..2 {
        if round == 1 {
            std::fs::write(vm.state_file(), b"this is not a saved VM").unwrap();
        }
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
            "round {round}: {err}"
        );
        // No QEMU for this VM anywhere.
        assert!(vmm.attach(&vm.spec).unwrap().is_none());
        assert!(
            !any_qemu_with(&vm.spec.def.id.to_string()),
            "QEMU left behind"
        );
        assert!(vm.state_file().exists(), "the state file must be kept");
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
