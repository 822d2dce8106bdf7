//! `cargo xtask e2e --variant windows`: a Windows VM provisioned and kept
//! at the `rayos>` prompt of an installed RayOS (docs/windows.md), with the
//! Windows stand-in (`rayos_image::winstandin`: Debian's Microsoft-signed
//! shim, signed GRUB and signed kernel; it needs Secure Boot and a TPM 2.0)
//! as the installation medium. Nested TCG: the outer QEMU runs RayOS, whose
//! QEMU runs the stand-in with OVMF `secboot` + Microsoft keys and swtpm.
//!
//! 1. install from the ISO (stages 1-2 of `e2e`) with the Linux VM not
//!    autostarted, so the nested Windows VM (one vCPU, `VM_CPUS`) does
//!    not share the outer machine's two CPUs with it;
//! 2. boot with a second USB stick holding the stand-in ISO as `dd` writes
//!    it (a copy of the image: the outer guest may write to its sticks);
//!    at the prompt: `policy set windows.enabled true` (and
//!    `windows.autostart true`, so a RayOS boot resumes the VM); `media`
//!    lists the stick as written from an ISO; `vm create windows --kind
//!    windows --media <that device>` (attached as a CD-ROM); `vm start`;
//!    the stand-in checks Secure Boot and the TPM, installs, prints its
//!    NV secret and powers off; rayosd marks the VM provisioned at that
//!    power-off (`vm show`), `vm provisioned` says so;
//! 3. `vm start windows`: the stand-in boots from its disk with Secure
//!    Boot (shim → GRUB → kernel), reads the secret back from the TPM and
//!    the id from its UEFI variable, counts;
//! 4. `reboot` at the prompt: RayOS saves the VM; the next boot resumes it
//!    (autostart): the counter continues, and its next TPM read finds the
//!    secret;
//! 5. `vm stop windows` (ACPI) + `vm start windows`: a cold boot (the
//!    counter starts again) still reads the secret and the UEFI variable;
//! 6. power button; from the data volume (debugfs): the VM's console log
//!    holds exactly three stand-in boots (install, run, run — none at the
//!    resume) with the counter continuing across the resume, and rayosd's
//!    log shows the VM started cold, cold, resumed, cold.
//!
//! The guest's console is read at the prompt with `vm console windows
//! --lines N` (the daemon reads its log), which works whether the VM runs
//! or has stopped. Every step prints its time.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use rayos_base::marker::{Marker, VmStart};
use rayos_image::qemu::{Config, Medium, Qemu};
use rayos_image::winstandin::{self, marker};

use crate::e2e::{Installed, Run};
use crate::e2e_net::poll;

/// The VM's name at the prompt.
const VM: &str = "windows";
/// The nested VM's memory: the outer machine has 3 GiB (the profile's
/// default, 4 GiB, does not fit; the stand-in needs far less, and less
/// RAM is less for OVMF and the kernel to set up and for RayOS to save).
const VM_MEMORY_MIB: u32 = 512;
/// The nested VM's CPUs: one, not the profile's two. With two, every SMI
/// (each UEFI variable access, in OVMF and from the stand-in's
/// efivarfs) waits for both vCPUs to enter SMM, which under TCG cost
/// whole seconds per boot, nested far more (docs/windows.md).
const VM_CPUS: u32 = 1;
/// OVMF + shim + GRUB + Debian's kernel + the stand-in's install, nested.
const INSTALL_SECS: u64 = 3600;
/// A boot of the installed stand-in from its disk, nested.
const BOOT_SECS: u64 = 2400;
/// Console lines that end the run at once.
const BAD: &[&str] = &[marker::FAIL, "STANDIN_NV mismatch", "Access Denied"];

/// The unattended answers: `e2e::ANSWERS` without the Linux VM's autostart
/// (it would share the two CPUs with the nested Windows VM).
pub fn answers() -> String {
    crate::e2e::ANSWERS.replace("linux_autostart = true", "linux_autostart = false")
}

/// Presses Enter and waits for the admin prompt.
fn prompt(run: &Run, vm: &mut Qemu) -> Result<()> {
    vm.send_serial("\n")?;
    run.expect(vm, "admin prompt on the serial console", "rayos>", 120)?;
    Ok(())
}

/// The value after `key` (up to whitespace) in `line`.
fn field(line: &str, key: &str) -> Option<String> {
    let v = line.split(key).nth(1)?.split_whitespace().next()?;
    (!v.is_empty()).then(|| v.to_string())
}

/// Types `vm console windows --lines N` and waits for `wants` in order in
/// its answer (each within 60 s): proves what a boot printed, once its
/// lines are within the last `lines`.
fn console_shows(run: &Run, vm: &mut Qemu, lines: u64, wants: &[String]) -> Result<()> {
    vm.send_serial(&format!("vm console {VM} --lines {lines}\n"))?;
    for w in wants {
        run.expect_not(vm, &format!("the console shows {w:?}"), w, BAD, 60)?;
    }
    Ok(())
}

/// The highest `COUNTER` in the last 20 lines of the VM's console (the
/// answer's lines are collected until none comes for 10 s).
fn last_counter(vm: &mut Qemu) -> Result<u64> {
    vm.send_serial(&format!("vm console {VM} --lines 20\n"))?;
    let mut max = 0;
    while let Ok(line) = vm.wait_for("COUNTER ", Duration::from_secs(10)) {
        if let Some(n) = line
            .rsplit("COUNTER ")
            .next()
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
        {
            max = max.max(n);
        }
    }
    Ok(max)
}

pub fn after_install(run: &Run, work: &Path, installed: &Installed) -> Result<()> {
    // The stand-in, written to a stick as dd would (the image file itself).
    let standin = winstandin::ensure(&crate::root().join(".cache"))
        .context("cannot build the Windows stand-in ISO")?;
    let stick = work.join("standin-stick.img");
    fs::copy(&standin.iso, &stick)
        .with_context(|| format!("cannot copy {}", standin.iso.display()))?;
    run.ok(&format!(
        "stand-in ISO ({}, kernel {}) on a second USB stick",
        standin.iso.display(),
        standin.kernel_release
    ));
    let config = |stage: &str| -> Result<Config> {
        let mut cfg = installed.boot_config(work, stage)?;
        cfg.media.push(Medium::Usb(stick.clone()));
        Ok(cfg)
    };

    // 2. Enable, find the stick, create, install.
    let mut vm = Qemu::start(&config("boot1")?)?;
    run.healthy(&mut vm, "rayosd healthy", 900)?;
    prompt(run, &mut vm)?;
    for (key, answer) in [
        (
            "windows.enabled",
            "windows.enabled = true (was false): takes effect",
        ),
        (
            "windows.autostart",
            "windows.autostart = true (was false): takes effect",
        ),
    ] {
        vm.send_serial(&format!("policy set {key} true\n"))?;
        run.expect(&mut vm, &format!("`policy set {key} true`"), answer, 120)?;
    }
    vm.send_serial("media\n")?;
    let line = run.expect_not(
        &mut vm,
        "`media` lists the stick as written from an ISO",
        "written from an ISO: rayos vm media NAME attach ",
        &["no disks besides RayOS's"],
        300,
    )?;
    let dev = field(&line, "attach ").context("no device in the `media` line")?;
    vm.send_serial(&format!(
        "vm create {VM} --kind windows --media {dev} --memory {VM_MEMORY_MIB} --cpus {VM_CPUS}\n"
    ))?;
    let line = run.expect_not(
        &mut vm,
        &format!("`vm create {VM} --kind windows --media {dev}`"),
        &format!("created VM {VM} "),
        &["rayos: error:"],
        300,
    )?;
    // `created VM windows (<id>) in <dir>`: its files on the data volume.
    let dir = field(&line, " in ").context("no directory in the `vm create` answer")?;
    let vm_dir = dir
        .find("/vm/")
        .map(|i| dir[i..].to_string())
        .with_context(|| format!("the VM's directory {dir} is not under the data volume's /vm"))?;
    vm.send_serial(&format!("vm start {VM}\n"))?;
    run.expect_not(
        &mut vm,
        &format!("`vm start {VM}` (the installer)"),
        &format!("VM {VM} cold-booted"),
        &["rayos: error:"],
        600,
    )?;
    let line = poll(
        run,
        &mut vm,
        "the stand-in installed itself (Secure Boot on, TPM 2.0)",
        &format!("vm console {VM} --lines 10"),
        marker::INSTALLED,
        BAD,
        INSTALL_SECS,
    )?;
    let secret = field(&line, "nv=").context("no NV secret in the install line")?;
    let id = field(&line, "id=").context("no install id in the install line")?;
    ensure!(secret.len() == 16, "odd NV secret in {line:?}");
    console_shows(
        run,
        &mut vm,
        200,
        &[
            "STANDIN_BOOT install".into(),
            marker::SECUREBOOT.into(),
            marker::TPM.into(),
            format!("{} id={id} nv={secret}", marker::INSTALLED),
        ],
    )?;
    poll(
        run,
        &mut vm,
        "the installer powered off: rayosd marked the VM provisioned",
        &format!("vm show {VM}"),
        "provisioned:   true",
        &[],
        600,
    )?;
    vm.send_serial(&format!("vm provisioned {VM}\n"))?;
    run.expect(
        &mut vm,
        &format!("`vm provisioned {VM}`"),
        &format!("VM {VM} was already provisioned"),
        120,
    )?;

    // 3. Boot from the disk with Secure Boot.
    vm.send_serial(&format!("vm start {VM}\n"))?;
    run.expect_not(
        &mut vm,
        &format!("`vm start {VM}` (from its disk)"),
        &format!("VM {VM} cold-booted"),
        &["rayos: error:"],
        600,
    )?;
    let first = crate::e2e::guest_counting(run, &mut vm, VM, None, BOOT_SECS)?;
    // The boot's lines are within the last `first` + a few (the counter
    // moves on while the command is typed); before them is only the
    // installer's output, with no `STANDIN_BOOT run`.
    console_shows(
        run,
        &mut vm,
        first + 300,
        &[
            "STANDIN_BOOT run".into(),
            marker::SECUREBOOT.into(),
            format!("{} {secret}", marker::NV_OK),
            format!("{} {id}", marker::EFIVAR),
        ],
    )?;
    let before = crate::e2e::guest_counting(run, &mut vm, VM, Some(first + 20), 600)?;

    // 4. RayOS reboots: the VM is saved, and resumed at the next boot.
    prompt(run, &mut vm)?;
    run.reboot_at_prompt(
        vm,
        "`reboot` at the admin prompt saves the VM and restarts",
        900,
    )?;
    let mut vm = Qemu::start(&config("boot2")?)?;
    run.healthy(&mut vm, "rayosd healthy again", 900)?;
    prompt(run, &mut vm)?;
    // The first counter past `before` may still be one the guest printed
    // before the save; it is among the console's last 3 lines, so at most
    // 2 below the last line before the save, and the counter only proves
    // the resume once it is well past it.
    let resumed = crate::e2e::guest_counting(run, &mut vm, VM, Some(before), BOOT_SECS)?;
    // Its next TPM reads (every 40 counts): every line of the last 50 is
    // from after the resume once the counter is 60 past it.
    crate::e2e::guest_counting(run, &mut vm, VM, Some(resumed + 60), 600)?;
    console_shows(run, &mut vm, 50, &[format!("{} {secret}", marker::NV_OK)])?;
    run.ok("after the resume the TPM still holds the secret");

    // 5. Stop and cold start.
    prompt(run, &mut vm)?;
    vm.send_serial(&format!("vm stop {VM}\n"))?;
    run.expect_not(
        &mut vm,
        &format!("`vm stop {VM}` (ACPI power button)"),
        &format!("VM {VM} stopped"),
        &["rayos: error:"],
        600,
    )?;
    // The old run's last counter: the console's tail until the new boot
    // counts, so a counter well below it is the cold boot's.
    let last = last_counter(&mut vm)?.max(resumed);
    run.ok(&format!("the stopped guest's last counter: {last}"));
    vm.send_serial(&format!("vm start {VM}\n"))?;
    run.expect_not(
        &mut vm,
        &format!("`vm start {VM}` (cold)"),
        &format!("VM {VM} cold-booted"),
        &["rayos: error:"],
        600,
    )?;
    let restarted = crate::e2e::guest_counter_where(
        run,
        &mut vm,
        VM,
        " counting again from 0",
        // The stopped run's tail (`--lines 3`) holds counters down to
        // `last` - 2; a few lines may repeat around a save.
        &|n| n + 8 < last,
        BOOT_SECS,
    )?;
    // The first `STANDIN_BOOT run` in this window is the cold boot's: the
    // window reaches fewer than `last` lines past it, and the run before
    // printed `last` counters after its own.
    console_shows(
        run,
        &mut vm,
        restarted + last.min(120),
        &[
            "STANDIN_BOOT run".into(),
            format!("{} {secret}", marker::NV_OK),
            format!("{} {id}", marker::EFIVAR),
        ],
    )?;
    run.ok("after a stop and cold start the TPM secret and the UEFI variable are still there");

    // 6. Power off; the logs on the data volume.
    vm.qmp("system_powerdown", None)
        .context("QMP system_powerdown")?;
    run.stopped(&mut vm, "RayOS saves the VM and powers off", 900)?;
    drop(vm);
    logs_agree(
        run,
        work,
        installed,
        &vm_dir,
        (before, resumed),
        (&secret, &id),
    )
}

/// Step 6: the console log and rayosd's log, read from the data volume.
fn logs_agree(
    run: &Run,
    work: &Path,
    installed: &Installed,
    vm_dir: &str,
    (before, resumed): (u64, u64),
    (secret, id): (&str, &str),
) -> Result<()> {
    let console = crate::e2e::guest_console(
        &installed.disk,
        (installed.data_offset, vm_dir),
        &work.join("dump"),
    )?;
    // The console from each stand-in boot on.
    let boots: Vec<&str> = console.split("STANDIN_BOOT ").skip(1).collect();
    let modes: Vec<&str> = boots
        .iter()
        .map(|b| b.split_whitespace().next().unwrap_or(""))
        .collect();
    ensure!(
        modes == ["install", "run", "run"],
        "the VM's console shows the stand-in boots {modes:?}, not install, run, run (the resume must not boot)"
    );
    let nv = format!("{} {secret}", marker::NV_OK);
    let efivar = format!("{} {id}", marker::EFIVAR);
    for (i, b) in boots.iter().enumerate().skip(1) {
        ensure!(
            b.contains(&nv) && b.contains(&efivar),
            "stand-in boot {i} from disk did not read back {nv:?} and {efivar:?}"
        );
    }
    // Across the resume the counter goes on (a few lines may repeat: the
    // guest's serial output in flight at the save) and never restarts.
    let seq = crate::e2e::counters(boots[1]);
    let continuous = seq.windows(2).all(|w| w[1] + 8 > w[0]);
    let max = seq.iter().max().copied().unwrap_or(0);
    if seq.first() != Some(&0) || !continuous || max <= resumed + 60 {
        bail!(
            "the counter of the boot from disk did not run from 0 across the resume: {:?}..{:?} (saved past {before})",
            seq.first(),
            seq.last()
        );
    }
    // The TPM read after the resume: an NV line after the counter 3 past
    // the one seen first after RayOS's reboot (that one was among the
    // console's last 3 lines then, so at most 2 below the last line the
    // guest printed before the save).
    let after = boots[1]
        .find(&format!("COUNTER {}", resumed + 3))
        .map(|at| &boots[1][at..])
        .unwrap_or("");
    ensure!(
        after.contains(&nv),
        "no {nv:?} after the resume in the console log"
    );
    let cold = crate::e2e::counters(boots[2]);
    ensure!(
        cold.first() == Some(&0),
        "the cold start did not count from 0: {:?}",
        cold.first()
    );
    run.ok(&format!(
        "the console log: install; boot from disk, counter 0..{max} across the resume (saved past {before}, {resumed} seen after it), TPM secret read after it; cold boot from 0; each boot read the secret and the UEFI variable"
    ));
    let mut log = String::new();
    for f in ["/logs/rayosd.log.1", "/logs/rayosd.log"] {
        log.push_str(
            &crate::e2e::debugfs(&installed.disk, installed.data_offset, &format!("cat {f}"))
                .unwrap_or_default(),
        );
    }
    let starts: Vec<VmStart> = log
        .lines()
        .filter_map(|l| match Marker::find_in(l)? {
            Marker::VmStarted { vm, how } if vm == VM => Some(how),
            _ => None,
        })
        .collect();
    let want = [
        VmStart::Cold,
        VmStart::Cold,
        VmStart::Resumed,
        VmStart::Cold,
    ];
    ensure!(
        starts.ends_with(&want),
        "rayosd's log shows the VM started {:?}, not cold, cold, resumed, cold",
        starts.iter().map(|s| s.as_str()).collect::<Vec<_>>()
    );
    run.ok("rayosd's log: the VM started cold (install), cold (disk), resumed (RayOS reboot), cold (stop + start)");
    Ok(())
}
