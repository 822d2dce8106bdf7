//! The Windows profile (OVMF with a per-VM variable store, swtpm TPM 2.0,
//! Hyper-V enlightenments) seen from inside the UEFI variant of the test
//! guest: UEFI firmware and a TPM 2.0 are present, and a UEFI variable and a
//! TPM NV index written on the first boot are read back on the next one.
//! Then a save and restore with the TPM attached.

mod common;

use common::{BOOT, Guard, vmm, windows_vm};
use rayos_testkit::guest;
use rayos_vmm::{Launch, RunState, Vmm};

#[test]
fn tpm_and_uefi_variables_persist_across_stop_start() {
    let vm = windows_vm("win");
    let vmm = vmm();
    let log = vm.console();
    let vars = vm.spec.vm_dir.join("ovmf-vars.fd");
    let permall = vm.spec.vm_dir.join("tpm/tpm2-00.permall");
    assert!(!vars.exists() && !permall.exists());

    // First boot.
    let mut g = Guard(Some(vmm.launch(&vm.spec, &Launch::Cold).unwrap()));
    assert!(vars.is_file(), "per-VM VARS copied at first launch");
    let secrets = guest::expect_first_uefi_tpm_boot(&log, BOOT);
    guest::wait_counter_above(&log, 0, Some(1), BOOT).unwrap();
    let vars_after_first = std::fs::read(&vars).unwrap();
    assert_ne!(
        vars_after_first,
        std::fs::read("/usr/share/OVMF/OVMF_VARS_4M.fd").unwrap(),
        "the guest's variable went into the per-VM store"
    );
    assert!(permall.is_file(), "swtpm keeps its state in the VM's tpm/");
    let permall_first = std::fs::read(&permall).unwrap();

    // Stop (the test guest has no ACPI handling, so force) and start again.
    g.h().kill().unwrap();
    g.0 = None;
    let offset = guest::log_len(&log);
    let mut g = Guard(Some(vmm.launch(&vm.spec, &Launch::Cold).unwrap()));
    guest::expect_secrets_found(&log, offset, &secrets, BOOT);
    assert_eq!(
        guest::wait_for_line(&log, offset, "TPM ", BOOT).unwrap(),
        "TPM 2"
    );
    // Same state file, and the second boot changed it (the TPM's clock and
    // startup state), so it is the live store, not a copy.
    assert!(permall.is_file());
    let permall_second = std::fs::read(&permall).unwrap();
    assert_ne!(permall_first, permall_second);

    // Save and restore with the TPM: swtpm is restarted fresh and receives
    // its volatile state from the migration stream.
    let last = guest::wait_counter_above(&log, offset, Some(1), BOOT).unwrap();
    g.h().save(&vm.state_file()).unwrap();
    g.0 = None;
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
    assert!(after > last, "{after} <= {last}");
    g.h().kill().unwrap();
    g.0 = None;
    assert!(
        !std::fs::read_dir(&vm.spec.run_dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name() == "swtpm.pid"),
        "swtpm stopped with the VM"
    );
}

/// With `secure_boot`, the profile runs the Secure Boot OVMF build with
/// SMM and a copy of the Microsoft-keys VARS: the firmware enforces Secure
/// Boot, so it refuses the test guest's unsigned UKI ("Access Denied" on the
/// serial console) instead of booting it.
#[test]
fn secure_boot_refuses_an_unsigned_loader() {
    let mut vm = windows_vm("winsb");
    vm.spec.def.boot = rayos_state::registry::BootSpec::Uefi { secure_boot: true };
    let vmm = vmm();
    let log = vm.console();
    let mut g = Guard(Some(vmm.launch(&vm.spec, &Launch::Cold).unwrap()));
    let vars = std::fs::read(vm.spec.vm_dir.join("ovmf-vars.fd")).unwrap();
    assert_eq!(
        vars.len(),
        std::fs::metadata("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
            .unwrap()
            .len() as usize
    );
    let line = guest::wait_for_line(&log, 0, "Access Denied", BOOT).unwrap();
    assert!(line.contains("failed to load"), "{line}");
    assert!(
        !guest::read_from(&log, 0)
            .unwrap()
            .contains(guest::READY_MARKER)
    );
    assert_eq!(g.h().state().unwrap(), RunState::Running);
    g.h().kill().unwrap();
    g.0 = None;
}
