//! The `usb-late` and `answers-safety` e2e variants: where the installer
//! media take an answer file from, USB sticks that appear late, and the
//! countdown before an unattended install writes (docs/answer-file.md,
//! "Unattended installs from the installer media"). Both boot the ISO as a
//! CD; `usb-late` sees its install through (seconds), `answers-safety`
//! stops once the cancel is proven.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rayos_base::marker::{InstallerMarker, Kind, Marker};
use rayos_image::fat::{self, FatTree};
use rayos_image::qemu::{Medium, Qemu};
use rayos_testkit::disks::{DiskBuilder, MIB};

use super::{ANSWERS, DISK_BYTES, Run, fresh_dir, sparse, stage_config};

/// A USB stick image (whole-disk FAT, label `label`) holding
/// `rayos-answers.toml` with `text`.
fn answer_stick(work: &Path, name: &str, label: &str, text: &str) -> Result<PathBuf> {
    let file = work.join(format!("{name}.toml"));
    fs::write(&file, text)?;
    let img = work.join(format!("{name}.img"));
    let mut tree = FatTree::new();
    tree.add("rayos-answers.toml", &file);
    fat::build(&img, label, &tree, Some(8 << 20))?;
    Ok(img)
}

/// A fresh VARS copy for the run.
fn vars(work: &Path) -> Result<PathBuf> {
    let vars = work.join("OVMF_VARS.fd");
    let fw = rayos_image::qemu::Firmware::ovmf_4m()?;
    fs::copy(&fw.vars_template, &vars)?;
    Ok(vars)
}

/// `usb-late`: the ISO as a CD, a blank target, an xHCI controller with
/// nothing on it. The answer stick is plugged in when init reaches its
/// `find-answers` step, while USB is still enumerating it; the unattended
/// install must start all the same (found while waiting for USB to settle,
/// or offered after the fall-back to the interactive installer).
pub(super) fn usb_late(run: &Run, work: &Path, iso: &Path) -> Result<()> {
    fresh_dir(work)?;
    let disk = work.join("disk.img");
    sparse(&disk, DISK_BYTES)?;
    let stick = answer_stick(work, "answers", "ANSWERS", &ANSWERS)?;
    let vars = vars(work)?;
    let target = Medium::Disk {
        path: disk.clone(),
        sector_size: 512,
    };
    let mut cfg = stage_config(
        work,
        &vars,
        "install",
        vec![target, Medium::Cdrom(iso.into())],
    )?;
    cfg.usb_controller = true;
    let mut vm = Qemu::start(&cfg)?;
    run.init_runs(&mut vm, "kernel runs /init from the installer UKI", 300)?;
    run.expect_not(
        &mut vm,
        "init looks for an answer file (no stick yet)",
        &Marker::Boot("find-answers".into()).to_string(),
        &[Kind::Fatal.prefix()],
        300,
    )?;
    vm.plug_usb_stick("late-stick", &stick)
        .context("hot-plugging the answer stick")?;
    run.ok("answer stick plugged in (QMP device_add usb-storage)");
    let (i, line) = vm
        .wait_for_any(
            &[
                &Marker::Installer(InstallerMarker::Countdown(2)).to_string(),
                Kind::InstallerInteractive.prefix(),
                Kind::InstallerFailed.prefix(),
                Kind::Fatal.prefix(),
            ],
            run.timeout(300),
        )
        .with_context(|| {
            format!(
                "waiting for the installer to react to the stick; last output:\n{}",
                vm.tail()
            )
        })?;
    match i {
        0 => run.ok(&format!(
            "the stick was found while USB settled: {}",
            line.trim()
        )),
        1 => {
            run.ok("find-answers missed the stick: interactive installer; waiting for the offer");
            run.expect_not(
                &mut vm,
                "the stick is offered with its countdown",
                &Marker::Installer(InstallerMarker::Countdown(2)).to_string(),
                &[Kind::InstallerFailed.prefix(), Kind::Fatal.prefix()],
                120,
            )?;
        }
        _ => bail!("{}\nlast output:\n{}", line.trim(), vm.tail()),
    }
    run.expect_not(
        &mut vm,
        "unattended install starts after the countdown",
        Kind::InstallerStart.prefix(),
        &[
            Kind::InstallerCancelled.prefix(),
            Kind::InstallerFailed.prefix(),
            Kind::Fatal.prefix(),
        ],
        120,
    )?;
    run.expect_not(
        &mut vm,
        "the installer engine accepted the stick's answers",
        Kind::EnginePlanGenerated.prefix(),
        &[Kind::InstallerFailed.prefix(), Kind::Fatal.prefix()],
        300,
    )?;
    // The install itself takes seconds: see it through.
    run.install_completes(&mut vm, 600)?;
    run.stopped(&mut vm, "installer reboots (stops under -no-reboot)", 300)?;
    let offset = super::data_partition(&disk, 512)?;
    run.ok(&format!(
        "the target has a valid GPT with the RayOS data partition at byte {offset}"
    ));
    Ok(())
}

/// The answers of the decoy on an internal disk: they would erase the
/// target at once if they were used.
const DECOY: &str = r#"version = 1
[target]
disk = "/dev/vda"
mode = "whole-disk"
"#;

/// `answers-safety`: the target holds Windows and Linux partitions; an
/// internal virtio disk carries an answer file (ignored: interactive
/// installer); a stick with an answer file naming the target whole-disk is
/// plugged in at the `rayos>` prompt; its plan is shown with the default
/// 10 s countdown; a key on the serial console cancels; the prompt comes
/// back; after the machine is stopped the target is byte-identical.
pub(super) fn answers_safety(run: &Run, work: &Path, iso: &Path) -> Result<()> {
    fresh_dir(work)?;
    let disk = work.join("disk.img");
    DiskBuilder::windows_and_linux(DISK_BYTES)
        .build(&disk)
        .context("building the target (sgdisk, mkfs.fat, mtools, mkfs.ntfs, mkfs.ext4)")?;
    let before = rayos_testkit::disks::fingerprint(&disk)?;
    let decoy = answer_stick(work, "decoy", "ANSWERS", DECOY)?;
    // The stick's answers leave the countdown at its default.
    let stick_text = ANSWERS.replace("[unattended]\ncountdown = 2\n", "");
    anyhow::ensure!(
        !stick_text.contains("countdown"),
        "the stick must use the default countdown"
    );
    let stick = answer_stick(work, "answers", "STICK", &stick_text)?;
    let vars = vars(work)?;
    let media = vec![
        Medium::Disk {
            path: disk.clone(),
            sector_size: 512,
        },
        Medium::Cdrom(iso.into()),
        Medium::Disk {
            path: decoy,
            sector_size: 512,
        },
    ];
    let mut cfg = stage_config(work, &vars, "install", media)?;
    cfg.usb_controller = true;
    let mut vm = Qemu::start(&cfg)?;
    run.init_runs(&mut vm, "kernel runs /init from the installer UKI", 300)?;
    run.expect_not(
        &mut vm,
        "the answer file on the internal disk is not used",
        Kind::InstallerInteractive.prefix(),
        &[
            Kind::InstallerCountdown.prefix(),
            Kind::InstallerStart.prefix(),
            Kind::Fatal.prefix(),
        ],
        300,
    )?;
    // Let the console sessions start, as a person would see the prompt.
    std::thread::sleep(Duration::from_secs(3));
    vm.plug_usb_stick("stick", &stick)
        .context("hot-plugging the answer stick")?;
    run.ok("answer stick plugged in at the rayos> prompt");
    run.expect_not(
        &mut vm,
        "the stick's plan is shown with the default 10 s countdown",
        &Marker::Installer(InstallerMarker::Countdown(10)).to_string(),
        &[
            Kind::InstallerStart.prefix(),
            Kind::InstallerFailed.prefix(),
            Kind::Fatal.prefix(),
        ],
        300,
    )?;
    vm.send_serial("n")?;
    run.ok("a key pressed on the serial console");
    run.expect_not(
        &mut vm,
        "the key cancels the unattended install",
        Kind::InstallerCancelled.prefix(),
        &[Kind::InstallerStart.prefix(), Kind::Fatal.prefix()],
        60,
    )?;
    std::thread::sleep(Duration::from_secs(3));
    vm.send_serial("\r")?;
    run.expect(
        &mut vm,
        "the rayos> prompt is back on the serial console",
        "\rrayos> ",
        120,
    )?;
    // Nothing may start later either: wait out more than the countdown.
    match vm.wait_for_any(
        &[
            Kind::InstallerStart.prefix(),
            Kind::InstallerCountdown.prefix(),
        ],
        Duration::from_secs(15),
    ) {
        Ok((_, line)) => bail!("after the cancel: {}", line.trim()),
        Err(rayos_image::qemu::QemuError::Timeout { .. }) => {
            run.ok("no install starts after the cancel (15 s)")
        }
        Err(e) => return Err(e.into()),
    }
    vm.kill();
    let after = rayos_testkit::disks::fingerprint(&disk)?;
    if after != before {
        bail!("the target disk changed although the install was cancelled ({before} -> {after})");
    }
    run.ok(&format!(
        "the target disk is byte-identical ({} MiB image, fingerprint {})",
        DISK_BYTES / MIB,
        &after[..16]
    ));
    Ok(())
}
