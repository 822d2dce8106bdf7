//! `cargo xtask e2e --variant debian`: the Debian VM image end to end on
//! an installed RayOS, under nested TCG (the outer guest runs QEMU for the
//! Debian VM; no KVM anywhere).
//!
//! 1. install from the ISO (as a CD) with `[linux] user`/`password`: the
//!    installer writes the Debian image to the Linux VM's 32 GiB qcow2
//!    (stages 1-2 of `e2e`);
//! 2. first boot: `RAYOS_READY`, `RAYOS_LINUX_VM_READY`; at the `rayos>`
//!    prompt `vm console linux` attaches the serial console to the VM's;
//!    wait for the guest's login prompt (first boot of Debian: first-boot
//!    setup, root grown to 32 GiB), log in with the configured user, run a
//!    command, start `sleep 100000 &`; Ctrl-] back to `rayos>`; `reboot`:
//!    RayOS saves the VM and restarts;
//! 3. second boot: the VM is resumed (`RAYOS_VM_STARTED:linux:resumed` in
//!    rayosd's log); `vm console linux`: the same shell answers, the sleep
//!    is alive; rayosd set the guest clock from its RTC
//!    (`RAYOS_VM_CLOCK:linux:rtc`, during the start or a little later) and
//!    it is within 2 s of this machine's.
//!
//! Every step prints its time (`[  t s]`), so a run reports how long the
//! nested boot takes.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rayos_base::marker::{Kind, Marker, VmClock, VmStart};
use rayos_image::qemu::Qemu;

use crate::e2e::{Installed, Run};

const USER: &str = "alice";
const PASSWORD: &str = "rayos e2e";
/// The guest's host name: the machine's (`rayos-e2e`) + `-linux`.
const GUEST_HOST: &str = "rayos-e2e-linux";
/// Nested TCG: Debian's first boot under OVMF inside the outer TCG guest.
const NESTED_BOOT_SECS: u64 = 3600;
/// rayosd tries to set a resumed guest's clock for 5 minutes.
const CLOCK_SET_SECS: u64 = 330;

/// The unattended answers: `e2e::ANSWERS` with the Linux VM's user in
/// place of its `system = "test-guest"` (a user alone picks Debian).
pub fn answers() -> String {
    crate::e2e::ANSWERS.replace(
        "system = \"test-guest\"\n",
        &format!("user = \"{USER}\"\npassword = \"{PASSWORD}\"\n"),
    )
}

/// Types `line` at the guest shell and waits for its marker output (the
/// line builds the marker with `''`, so its echo never matches).
fn shell(run: &Run, vm: &mut Qemu, what: &str, line: &str, marker: &str) -> Result<String> {
    vm.send_serial(&format!("{line}\n"))?;
    run.expect(vm, what, marker, 300)
}

/// Attaches to the Linux VM's console from the `rayos>` prompt.
fn attach(run: &Run, vm: &mut Qemu) -> Result<()> {
    vm.send_serial("\n")?;
    run.expect(vm, "admin prompt on the serial console", "rayos>", 120)?;
    vm.send_serial("vm console linux\n")?;
    run.expect(
        vm,
        "`vm console linux` attached",
        "Connected to the console of VM linux",
        120,
    )?;
    Ok(())
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub fn after_install(run: &Run, work: &Path, installed: &Installed) -> Result<()> {
    // 2. First boot.
    let mut vm = Qemu::start(&installed.boot_config(work, "boot1")?)?;
    run.ready_with_linux_vm(&mut vm, "rayosd healthy", 900)?;
    attach(run, &mut vm)?;
    // The serial getty prints its prompt once; Enter brings it back.
    let login = format!("{GUEST_HOST} login:");
    let deadline = std::time::Instant::now() + run.timeout(NESTED_BOOT_SECS);
    loop {
        vm.send_serial("\n")?;
        match vm.wait_for(&login, std::time::Duration::from_secs(60)) {
            Ok(_) => break,
            Err(_) if std::time::Instant::now() < deadline => {}
            Err(e) => {
                return Err(e).context(format!(
                    "the Debian VM showed no login prompt on `vm console linux`; last output:\n{}",
                    vm.tail()
                ));
            }
        }
    }
    run.ok(&format!(
        "Debian VM login prompt ({login}) over `vm console linux`"
    ));
    vm.send_serial(&format!("{USER}\n"))?;
    run.expect(&mut vm, "password asked", "Password:", 300)?;
    vm.send_serial(&format!("{PASSWORD}\n"))?;
    run.expect(&mut vm, "logged in as the configured user", "$ ", 600)?;
    shell(
        run,
        &mut vm,
        "a command runs in the guest",
        "echo RAYOS_$((6 * 7)) $(hostname)",
        &format!("RAYOS_42 {GUEST_HOST}"),
    )?;
    let line = shell(
        run,
        &mut vm,
        "`sleep 100000 &` started",
        "sleep 100000 & echo SLEEP''_PID=$!",
        "SLEEP_PID=",
    )?;
    let pid: u32 = line
        .split("SLEEP_PID=")
        .nth(1)
        .and_then(|p| p.trim().parse().ok())
        .with_context(|| format!("no pid in {line:?}"))?;
    vm.send_serial("\x1d")?;
    run.expect(&mut vm, "Ctrl-] leaves the console", "Left the console", 60)?;
    run.expect(&mut vm, "back at the admin prompt", "rayos>", 60)?;
    run.reboot_at_prompt(
        vm,
        "`reboot` at the admin prompt saves the VM and restarts",
        900,
    )?;

    // 3. Second boot: resumed, the same shell and process, the clock set.
    let mut vm = Qemu::start(&installed.boot_config(work, "boot2")?)?;
    run.ready_with_linux_vm(&mut vm, "rayosd healthy again", 900)?;
    attach(run, &mut vm)?;
    shell(
        run,
        &mut vm,
        "the shell from before the reboot answers",
        "echo STI''LL_$(id -un)",
        &format!("STILL_{USER}"),
    )?;
    shell(
        run,
        &mut vm,
        "the sleep started before the reboot is alive",
        &format!("kill -0 {pid} && echo ALI''VE_{pid}"),
        &format!("ALIVE_{pid}"),
    )?;
    // rayosd sets the clock through the guest's agent, during the start or
    // (a guest slow to answer after the resume) a little later: wait for
    // its outcome anywhere in this boot's output.
    let clock = Marker::VmClock {
        vm: "linux".into(),
        how: VmClock::Rtc,
    }
    .to_string();
    let head = Kind::VmClock.prefix();
    let deadline = std::time::Instant::now() + run.timeout(CLOCK_SET_SECS);
    loop {
        let out = vm.serial_output();
        if let Some(line) = out.lines().find(|l| l.contains(head)) {
            if !line.contains(&clock) {
                bail!("rayosd did not set the guest clock from its RTC: {line}");
            }
            run.ok(&format!(
                "guest clock set after the resume: {}",
                line.trim()
            ));
            break;
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "no {head} marker within {CLOCK_SET_SECS} s of the resume; last output:\n{}",
                vm.tail()
            );
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let asked = now();
    let line = shell(
        run,
        &mut vm,
        "guest clock read",
        "echo CLO''CK=$(date +%s.%N)",
        "CLOCK=",
    )?;
    let answered = now();
    let guest: f64 = line
        .split("CLOCK=")
        .nth(1)
        .and_then(|t| t.trim().parse().ok())
        .with_context(|| format!("no time in {line:?}"))?;
    let off = if guest < asked {
        asked - guest
    } else if guest > answered {
        guest - answered
    } else {
        0.0
    };
    if off > 2.0 {
        bail!("the guest clock is {off:.1} s off this machine's ({guest} vs {asked}..{answered})");
    }
    run.ok(&format!("guest clock within {off:.1} s of the host's"));
    vm.send_serial("\x1d")?;
    run.expect(&mut vm, "back at the admin prompt", "rayos>", 60)?;
    drop(vm);
    run.started(&installed.disk, installed.data_offset, VmStart::Resumed)
}
