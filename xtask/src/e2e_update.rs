//! `cargo xtask e2e-update`: the update flow of issue 7 end to end, under
//! QEMU + OVMF (TCG), on a disk installed from the built media. Updates are
//! applied *inside* the installed system, at the `rayos>` prompt on the
//! serial console, from a FAT disk (label `UPDATES`) holding the bundles.
//!
//! 1. the dev key (`build/keys/dev.key`); media from the current tree with
//!    `RAYOS_UPDATE_DEV_PUBKEY` set at build time, so the image trusts the
//!    dev key (`--media`, default `build/e2e-update/media`; `cargo xtask
//!    test` builds its one set of media in `build/` this way and passes
//!    it; rebuilt when missing, when the key changed, or with `--rebuild`);
//!    bundles 0.2.0 (with the recovery UKI),
//!    0.3.0 `--broken`, 0.4.0, an unsigned and a tampered one;
//! 2. `rayos install` of RayOS 0.1.0 onto a sparse 16 GiB image (host side);
//! 3. boot 1: `RAYOS_READY`, `RAYOS_BLESSED:rayos-0.1.0.efi`; tampered and
//!    unsigned bundles refused (and nothing new on the system partition);
//!    0.2.0 applied; `reboot`;
//! 4. boot 2: systemd-boot picks `rayos-0.2.0+3.efi`, it is blessed, the
//!    Linux VM saved by 0.1.0's reboot is resumed (`RAYOS_VM_STARTED:linux:resumed`);
//!    the broken 0.3.0 applied; `reboot`;
//! 5. boot 3, reboots allowed: three kernel panics, then systemd-boot falls
//!    back to 0.2.0, which prints `RAYOS_ROLLBACK:0.3.0:…`; `RAYOS_READY`;
//!    then 0.4.0 is applied and QEMU is killed while it writes (power cut);
//! 6. boot 4: the machine still boots to `RAYOS_READY`; `rayos recovery
//!    --next-boot` (LoaderEntryOneShot) and `reboot`;
//! 7. host (mtools, no mount): 0.3.0 not bootable, no partial `.efi`; the
//!    VMs' files on the data volume recorded (debugfs);
//! 8. boot 5: the recovery entry; menu `reinstall`; the system partition is
//!    rebuilt from the recovery UKI, the VMs' files are byte-identical;
//! 9. host: a truncated `rayos-0.4.0+3.efi` (newer, so systemd-boot's first
//!    choice) is put beside it; boot 6: the machine still comes up on the
//!    reinstalled 0.2.0, which is blessed, and the Linux VM runs (resumed
//!    when its saved state exists).
//!
//! Every wait has a timeout; QEMU is killed when a stage ends.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rayos_base::marker::{Kind, Marker, VmStart};
use rayos_image::fat::{self, FatTree};
use rayos_image::qemu::{Config, Medium, Qemu};

use crate::installed::AnswerFile;

#[derive(clap::Args)]
pub struct Args {
    /// Where the media trusting the dev key are (built there when missing
    /// or built for another key).
    #[arg(long, default_value = "build/e2e-update/media")]
    pub media: PathBuf,
    /// Rebuild the media even if they are there.
    #[arg(long)]
    pub rebuild: bool,
    /// Multiply every timeout (slow or busy machines).
    #[arg(long, default_value_t = 1.0)]
    pub timeout_scale: f64,
}

struct Run {
    scale: f64,
    started: Instant,
}

impl Run {
    fn ok(&self, what: &str) {
        println!(
            "[{:7.1} s] ok   {what}",
            self.started.elapsed().as_secs_f64()
        );
    }
    fn expect(&self, vm: &mut Qemu, what: &str, marker: &str, secs: u64) -> Result<String> {
        match vm.wait_for(marker, Duration::from_secs_f64(secs as f64 * self.scale)) {
            Ok(line) => {
                self.ok(what);
                Ok(line)
            }
            Err(e) => {
                println!(
                    "[{:7.1} s] FAIL {what}: {e}\n--- serial tail ---\n{}",
                    self.started.elapsed().as_secs_f64(),
                    vm.tail()
                );
                bail!("{what}: {e} (serial log {})", vm.serial_log().display())
            }
        }
    }
    /// Types `line` at the `rayos>` prompt and waits for `marker`.
    fn type_cmd(
        &self,
        vm: &mut Qemu,
        line: &str,
        what: &str,
        marker: &str,
        secs: u64,
    ) -> Result<String> {
        vm.send_serial("\n")?;
        self.expect(vm, &format!("prompt before `{line}`"), "rayos>", 60)?;
        vm.send_serial(&format!("{line}\n"))?;
        self.expect(vm, what, marker, secs)
    }
}

/// Byte offset and size of the system (XBOOTLDR) partition of a disk image.
fn system_partition(disk: &Path) -> Result<(u64, u64)> {
    let out = Command::new("sfdisk").arg("-J").arg(disk).output()?;
    anyhow::ensure!(out.status.success(), "sfdisk -J {} failed", disk.display());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let pt = &v["partitiontable"];
    let sector = pt["sectorsize"].as_u64().unwrap_or(512);
    let part = pt["partitions"]
        .as_array()
        .and_then(|ps| {
            ps.iter().find(|p| {
                p["type"]
                    .as_str()
                    .is_some_and(|t| t.eq_ignore_ascii_case("BC13C2FF-59E6-4262-A352-B275FD6F7172"))
            })
        })
        .context("no XBOOTLDR (system) partition on the disk")?;
    Ok((
        part["start"].as_u64().context("start")? * sector,
        part["size"].as_u64().context("size")? * sector,
    ))
}

/// File names in `/EFI/Linux` of the system partition (mtools, no mount).
fn linux_dir(disk: &Path) -> Result<Vec<String>> {
    let (off, _) = system_partition(disk)?;
    let out = Command::new("mdir")
        .args([
            "-b",
            "-i",
            &format!("{}@@{off}", disk.display()),
            "::/EFI/Linux",
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "mdir failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.rsplit('/').next().map(str::to_string))
        .filter(|n| !n.is_empty())
        .collect();
    v.sort();
    Ok(v)
}

fn boot(
    run: &Run,
    work: &Path,
    disk: &Path,
    updates: &Path,
    stage: &str,
    vars: &Path,
    no_reboot: bool,
) -> Result<Qemu> {
    let mut cfg = Config::new(&work.join(stage))?
        .medium(Medium::Disk {
            path: disk.to_path_buf(),
            sector_size: 512,
        })
        .medium(Medium::Disk {
            path: updates.to_path_buf(),
            sector_size: 512,
        });
    cfg.memory_mib = 3072;
    cfg.cpus = 2;
    cfg.no_reboot = no_reboot;
    cfg.vars = Some(vars.to_path_buf());
    let vm = Qemu::start(&cfg)?;
    run.ok(&format!("{stage}: QEMU started"));
    Ok(vm)
}

fn stopped(run: &Run, vm: &mut Qemu, what: &str) -> Result<()> {
    vm.wait_exit(Duration::from_secs_f64(400.0 * run.scale))
        .with_context(|| format!("{what}: the machine did not stop"))?;
    run.ok(what);
    Ok(())
}

/// Makes sure `media` holds media (fast compression) whose images trust
/// the dev key (`build/keys/dev.key`, made when missing) besides the
/// release keys: built when missing, built for another key, or `rebuild`.
/// Only test media trust it; `cargo xtask media` never sets the key.
pub fn media_trusting_dev_key(media: &Path, rebuild: bool) -> Result<()> {
    let root = crate::root();
    let key = crate::bundle::load_or_make_key(None, &root)?;
    let pubkey = key.public("dev").to_line();
    let stamp = media.join("trusted-dev.pub");
    let fresh = media.join("rayos.efi").is_file()
        && media.join("rayos-recovery.efi").is_file()
        && fs::read_to_string(&stamp).ok().as_deref() == Some(pubkey.as_str());
    if rebuild || !fresh {
        // A stale stamp must not vouch for media a failed build left half
        // made.
        let _ = fs::remove_file(&stamp);
        crate::run_cmd(
            Command::new("cargo")
                .args(["xtask", "media", "--zstd-level", "3", "--out"])
                .arg(media)
                .env("RAYOS_UPDATE_DEV_PUBKEY", pubkey.trim()),
        )?;
        fs::write(&stamp, &pubkey)?;
    }
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    let root = crate::root();
    let run = Run {
        scale: args.timeout_scale,
        started: Instant::now(),
    };
    let base = root.join("build/e2e-update");
    let media = root.join(&args.media);
    media_trusting_dev_key(&media, args.rebuild)?;
    crate::run_cmd(Command::new("cargo").args(["build", "-p", "rayos"]))?;
    run.ok("media (trusting the dev key) and the host's rayos are built");

    let work = base.join("work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let bundle = |version: &str, broken: bool, unsigned: bool, recovery: bool| {
        crate::bundle::run(crate::bundle::Args {
            key: None,
            uki: Some(media.join("rayos.efi")),
            recovery_uki: recovery.then(|| media.join("rayos-recovery.efi")),
            version: Some(version.into()),
            broken,
            unsigned,
            out: work.clone(),
        })
    };
    bundle("0.2.0", false, false, true)?;
    bundle("0.3.0", true, false, false)?;
    bundle("0.4.0", false, false, false)?;
    bundle("0.2.0", false, true, false)?;
    let good = work.join("rayos-update-0.2.0.bundle");
    let mut t = fs::read(&good)?;
    let n = t.len();
    t[n - 4096] ^= 0xff;
    let tampered = work.join("tampered.bundle");
    fs::write(&tampered, t)?;
    let mut tree = FatTree::new();
    tree.add("good-0.2.0.bundle", &good)
        .add(
            "broken-0.3.0.bundle",
            work.join("rayos-update-0.3.0-broken.bundle"),
        )
        .add("good-0.4.0.bundle", work.join("rayos-update-0.4.0.bundle"))
        .add(
            "unsigned.bundle",
            work.join("rayos-update-0.2.0-unsigned.bundle"),
        )
        .add("tampered.bundle", &tampered);
    let updates = work.join("updates.img");
    fat::build(&updates, "UPDATES", &tree, None)?;
    run.ok("bundles on a FAT disk labelled UPDATES");

    // 2. install 0.1.0
    let disk = work.join("disk.img");
    let answers = AnswerFile {
        hostname: "rayos-update-e2e",
        countdown: None,
        disk: None,
        spelled_out: false,
        test_guest: true,
    };
    crate::installed::install_image(
        &crate::demo::target_dir(&root).join("debug/rayos"),
        &work,
        &disk,
        &answers.text(),
        &media.join("rayos.efi"),
        Some(&media.join("rayos-recovery.efi")),
        false,
    )?;
    run.ok("RayOS 0.1.0 installed onto the image");
    let vars = work.join("OVMF_VARS.fd");
    fs::copy(rayos_image::qemu::Firmware::ovmf_4m()?.vars_template, &vars)?;

    // 3. boot 1: refusals, then 0.2.0
    {
        let mut vm = boot(&run, &work, &disk, &updates, "boot1", &vars, true)?;
        run.expect(&mut vm, "boot1: rayosd healthy", Kind::Ready.prefix(), 900)?;
        run.expect(
            &mut vm,
            "boot1: 0.1.0 blessed",
            &Marker::Blessed("rayos-0.1.0.efi".into()).to_string(),
            60,
        )?;
        // Up before the update's reboot, so that reboot saves it and the
        // new version has a VM to resume.
        run.expect(
            &mut vm,
            "boot1: Linux VM running",
            Kind::LinuxVmReady.prefix(),
            900,
        )?;
        for b in ["tampered", "unsigned"] {
            run.type_cmd(
                &mut vm,
                &format!("update apply UPDATES:/{b}.bundle"),
                &format!("boot1: {b} bundle refused"),
                "bundle refused",
                300,
            )?;
        }
        run.type_cmd(
            &mut vm,
            "update apply UPDATES:/good-0.2.0.bundle",
            "boot1: 0.2.0 applied inside RayOS",
            "installed RayOS 0.2.0 as rayos-0.2.0+3.efi",
            600,
        )?;
        run.type_cmd(
            &mut vm,
            "update status",
            "boot1: status shows 0.2.0 as the default",
            "[default]",
            120,
        )?;
        run.type_cmd(
            &mut vm,
            "reboot",
            "boot1: reboot requested",
            Kind::Reboot.prefix(),
            400,
        )?;
        stopped(&run, &mut vm, "boot1: restarted")?;
    }
    let names = linux_dir(&disk)?;
    anyhow::ensure!(
        names == ["rayos-0.1.0.efi", "rayos-0.2.0+3.efi"],
        "after boot 1 the system partition holds {names:?}"
    );
    run.ok(
        "system partition: rayos-0.1.0.efi + rayos-0.2.0+3.efi, nothing from the refused bundles",
    );

    // 4. boot 2: 0.2.0 runs and is blessed; apply the broken 0.3.0
    {
        let mut vm = boot(&run, &work, &disk, &updates, "boot2", &vars, true)?;
        run.expect(&mut vm, "boot2: rayosd healthy", Kind::Ready.prefix(), 900)?;
        run.expect(
            &mut vm,
            "boot2: 0.2.0 booted and blessed",
            &Marker::Blessed("rayos-0.2.0.efi".into()).to_string(),
            60,
        )?;
        run.expect(
            &mut vm,
            "boot2: Linux VM back",
            Kind::LinuxVmReady.prefix(),
            900,
        )?;
        let serial = vm.serial_output();
        let started: Vec<VmStart> = serial
            .lines()
            .filter_map(|l| match Marker::find_in(l)? {
                Marker::VmStarted { vm, how } if vm == "linux" => Some(how),
                _ => None,
            })
            .collect();
        anyhow::ensure!(
            started.first() == Some(&VmStart::Resumed),
            "boot2: the Linux VM was not resumed across the update (it started {started:?})"
        );
        run.ok("boot2: the Linux VM resumed across the update (saved by 0.1.0, restored by 0.2.0)");
        run.type_cmd(
            &mut vm,
            "update apply UPDATES:/broken-0.3.0.bundle",
            "boot2: broken 0.3.0 applied",
            "installed RayOS 0.3.0 as rayos-0.3.0+3.efi",
            600,
        )?;
        run.type_cmd(
            &mut vm,
            "reboot",
            "boot2: reboot requested",
            Kind::Reboot.prefix(),
            400,
        )?;
        stopped(&run, &mut vm, "boot2: restarted")?;
    }

    // 5. boot 3: three failures, the fallback, then a power cut mid-apply
    {
        let mut vm = boot(&run, &work, &disk, &updates, "boot3", &vars, false)?;
        let line = run.expect(
            &mut vm,
            "boot3: 0.2.0 reports the rollback",
            Kind::Rollback.prefix(),
            1800,
        )?;
        match Marker::find_in(&line) {
            Some(Marker::Rollback { failed, .. }) if failed == "0.3.0" => {}
            other => bail!("boot3: the rollback reported is not 0.3.0's: {other:?}"),
        }
        println!("    {}", line.trim());
        let panics = vm.serial_output().matches("Kernel panic").count();
        anyhow::ensure!(
            panics >= 3,
            "expected 3 failed boots of 0.3.0, saw {panics} kernel panics"
        );
        run.ok(&format!(
            "boot3: 0.3.0 failed {panics} times before the fallback"
        ));
        run.expect(
            &mut vm,
            "boot3: rayosd healthy on 0.2.0",
            Kind::Ready.prefix(),
            900,
        )?;
        run.type_cmd(
            &mut vm,
            "update status",
            "boot3: status shows 0.3.0 marked bad, out of the menu",
            "rayos-0.3.0+0-3.efi.bad",
            120,
        )?;
        run.type_cmd(
            &mut vm,
            "update apply UPDATES:/good-0.4.0.bundle",
            "boot3: 0.4.0 signature checked, its UKI being written",
            "writing rayos-0.4.0+3.efi",
            300,
        )?;
        // Into the copy (48 MiB under TCG takes a few seconds).
        std::thread::sleep(Duration::from_millis(300));
        vm.kill();
        run.ok("boot3: power cut (QEMU killed) during the apply");
    }

    // 6. boot 4: still boots; then ask for the recovery entry, once
    {
        let mut vm = boot(&run, &work, &disk, &updates, "boot4", &vars, true)?;
        run.expect(
            &mut vm,
            "boot4: the machine still boots after the power cut",
            Kind::Ready.prefix(),
            900,
        )?;
        run.expect(
            &mut vm,
            "boot4: Linux VM running",
            Kind::LinuxVmReady.prefix(),
            900,
        )?;
        run.type_cmd(
            &mut vm,
            "update status",
            "boot4: status",
            "installed (boot menu order)",
            120,
        )?;
        run.type_cmd(
            &mut vm,
            "recovery --next-boot",
            "boot4: the next boot goes to the recovery entry (LoaderEntryOneShot)",
            "the next boot starts the recovery entry",
            60,
        )?;
        run.type_cmd(
            &mut vm,
            "reboot",
            "boot4: reboot requested (VMs saved)",
            Kind::Reboot.prefix(),
            400,
        )?;
        stopped(&run, &mut vm, "boot4: restarted")?;
    }

    // 7. the system partition after rollback and power cut (mtools, no mount)
    let names = linux_dir(&disk)?;
    println!("    /EFI/Linux: {names:?}");
    // The 0.4.0 apply pruned the bad 0.3.0 (kept for inspection only until
    // the next update); nothing of 0.3.0 may be bootable.
    anyhow::ensure!(
        !names
            .iter()
            .any(|n| n.starts_with("rayos-0.3.0") && n.ends_with(".efi")),
        "0.3.0 is still bootable"
    );
    anyhow::ensure!(
        names.iter().any(|n| n.starts_with("rayos-0.2.0")),
        "0.2.0 is gone"
    );
    // A 0.4.0 entry under an .efi name must be complete.
    if let Some(n) = names
        .iter()
        .find(|n| n.starts_with("rayos-0.4.0") && n.ends_with(".efi"))
    {
        let (off, _) = system_partition(&disk)?;
        let copy = work.join("check-0.4.0.efi");
        crate::run_cmd(Command::new("mcopy").args([
            "-n",
            "-i",
            &format!("{}@@{off}", disk.display()),
            &format!("::/EFI/Linux/{n}"),
            &copy.to_string_lossy(),
        ]))?;
        let want = fs::read(work.join("bundle-work/rayos-0.4.0.efi"))?;
        anyhow::ensure!(
            fs::read(&copy)? == want,
            "{n} is incomplete after the power cut"
        );
        run.ok(&format!("{n} is complete"));
    }
    run.ok("0.2.0 kept, 0.3.0 not bootable, no partial .efi after the power cut");
    let vm_before = vm_files(&disk, &work.join("vm-before"))?;
    run.ok(&format!(
        "data volume: {} VM files recorded",
        vm_before.len()
    ));

    // 8. boot 5: the recovery entry; reinstall the system
    {
        let mut vm = boot(&run, &work, &disk, &updates, "boot5", &vars, true)?;
        run.expect(
            &mut vm,
            "boot5: the recovery entry boots",
            "rayos.mode=recovery",
            300,
        )?;
        run.expect(
            &mut vm,
            "boot5: recovery console",
            "Recovery mode: no VM is started",
            300,
        )?;
        run.type_cmd(
            &mut vm,
            "recovery",
            "boot5: recovery menu",
            "recovery> ",
            60,
        )?;
        vm.send_serial("reinstall\n")?;
        run.expect(
            &mut vm,
            "boot5: reinstall asks for confirmation",
            "Type `reinstall` to go on",
            60,
        )?;
        vm.send_serial("reinstall\n")?;
        run.expect(
            &mut vm,
            "boot5: system reinstalled from the recovery image",
            "reinstalled: reboot to start RayOS",
            600,
        )?;
        vm.send_serial("quit\n")?;
        run.type_cmd(
            &mut vm,
            "shutdown",
            "boot5: power off",
            Kind::PowerOff.prefix(),
            300,
        )?;
        stopped(&run, &mut vm, "boot5: powered off")?;
    }
    let vm_after = vm_files(&disk, &work.join("vm-after"))?;
    anyhow::ensure!(
        vm_before == vm_after,
        "the VMs' files changed during recovery"
    );
    run.ok("data volume: every file under /vm (logs aside) unchanged by the reinstall");
    let names = linux_dir(&disk)?;
    anyhow::ensure!(
        names == ["rayos-0.2.0+3.efi"],
        "after reinstall /EFI/Linux holds {names:?}"
    );
    run.ok("system partition rebuilt: rayos-0.2.0+3.efi from the recovery image");

    // A corrupt newer UKI (its second half lost, as a failing disk or an
    // interrupted copy by hand would leave it) beside the reinstalled 0.2.0:
    // systemd-boot would pick it first by version.
    let good = fs::read(work.join("bundle-work/rayos-0.4.0.efi"))?;
    let corrupt = work.join("corrupt-0.4.0.efi");
    fs::write(&corrupt, &good[..good.len() / 2])?;
    {
        let (off, _) = system_partition(&disk)?;
        crate::run_cmd(Command::new("mcopy").args([
            "-o",
            "-i",
            &format!("{}@@{off}", disk.display()),
            &corrupt.to_string_lossy(),
            "::/EFI/Linux/rayos-0.4.0+3.efi",
        ]))?;
    }
    run.ok("a truncated rayos-0.4.0+3.efi put beside rayos-0.2.0+3.efi");

    // 9. boot 6: the corrupt UKI is passed over, the reinstalled system
    // runs and the VM resumes
    {
        // Reboots allowed: the firmware may come back to systemd-boot after
        // the corrupt image fails to start.
        let mut vm = boot(&run, &work, &disk, &updates, "boot6", &vars, false)?;
        run.expect(&mut vm, "boot6: rayosd healthy", Kind::Ready.prefix(), 1800)?;
        run.expect(
            &mut vm,
            "boot6: the corrupt 0.4.0 did not stop the machine: the reinstalled 0.2.0 booted and was blessed",
            &Marker::Blessed("rayos-0.2.0.efi".into()).to_string(),
            60,
        )?;
        // Resumed when the VM's saved state survived (the reinstall does not
        // touch it); a cold start means saving failed before recovery, which
        // is rayosd's business: reported, not failed here.
        let line = run.expect(
            &mut vm,
            "boot6: Linux VM running",
            "Linux VM linux is running",
            900,
        )?;
        println!("    {}", line.trim());
        vm.qmp("system_powerdown", None)
            .context("QMP system_powerdown")?;
        stopped(&run, &mut vm, "boot6: powered off")?;
    }
    let names = linux_dir(&disk)?;
    println!("    /EFI/Linux after boot 6: {names:?}");
    println!(
        "e2e-update: all stages passed in {:.0} s",
        run.started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every file under `/vm` of the data volume except logs, with its bytes
/// (debugfs `rdump`, no mount).
fn vm_files(disk: &Path, dump: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let out = Command::new("sfdisk").arg("-J").arg(disk).output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let sector = v["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    let start = v["partitiontable"]["partitions"]
        .as_array()
        .and_then(|ps| {
            ps.iter().find(|p| {
                p["type"]
                    .as_str()
                    .is_some_and(|t| t.eq_ignore_ascii_case("776115A0-0B1E-4358-9BDA-60957FE4AB00"))
            })
        })
        .and_then(|p| p["start"].as_u64())
        .context("no RayOS data partition")?
        * sector;
    let _ = fs::remove_dir_all(dump);
    fs::create_dir_all(dump)?;
    crate::run_cmd(
        Command::new("debugfs")
            .args(["-R", &format!("rdump /vm {}", dump.display())])
            .arg(format!("{}?offset={start}", disk.display())),
    )?;
    fn walk(base: &Path, d: &Path, m: &mut BTreeMap<String, Vec<u8>>) -> Result<()> {
        for e in fs::read_dir(d)? {
            let p = e?.path();
            let rel = p
                .strip_prefix(base)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            if rel.split('/').any(|c| c == "logs") {
                continue;
            }
            if p.is_dir() {
                walk(base, &p, m)?;
            } else {
                m.insert(rel, fs::read(&p)?);
            }
        }
        Ok(())
    }
    let mut m = BTreeMap::new();
    walk(dump, dump, &mut m)?;
    anyhow::ensure!(
        !m.is_empty(),
        "debugfs found no VM files on the data volume"
    );
    Ok(m)
}
