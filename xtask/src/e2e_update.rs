//! `cargo xtask e2e-update`: the update flow of issue 7 end to end, under
//! QEMU + OVMF (TCG), on a disk installed from the built media.
//!
//! 1. media from the current tree (`cargo xtask media --zstd-level 3
//!    --out build/e2e-update/media` when missing or `--rebuild`); bundles
//!    0.2.0 (with the recovery UKI) and 0.3.0 `--broken`, signed with the
//!    dev key;
//! 2. `rayos install` of RayOS 0.1.0 onto a sparse 16 GiB image (host side);
//! 3. boot 1: `RAYOS_READY`, `RAYOS_BLESSED:rayos-0.1.0.efi`; power off;
//! 4. host: the system partition loop-mounted; tampered and unsigned
//!    bundles refused with the partition byte-identical; 0.2.0 applied
//!    (`rayos update apply --key build/keys/dev.pub`: the host's debug
//!    build; an installed image trusts only keys it was built with);
//! 5. boot 2: systemd-boot picks `rayos-0.2.0+3.efi`, it is blessed
//!    (`RAYOS_BLESSED:rayos-0.2.0.efi`), the Linux VM comes back; power off;
//! 6. host: 0.3.0 (broken: the kernel finds no init and panics) applied;
//! 7. boot 3 with reboots allowed: three kernel panics, then systemd-boot
//!    falls back to 0.2.0, which prints `RAYOS_ROLLBACK:0.3.0:…` and marks
//!    it bad; `RAYOS_READY`; power off;
//! 8. host: `rayos update status` shows 0.2.0 default and 0.3.0 marked bad.
//!
//! Needs root (loop devices, mount). Every wait has a timeout; QEMU is
//! killed when a stage ends; the loop device is detached on every path.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rayos_image::qemu::{Config, Medium, Qemu};

#[derive(clap::Args)]
pub struct Args {
    /// Rebuild the media even if build/e2e-update/media has them.
    #[arg(long)]
    pub rebuild: bool,
    /// Multiply every timeout (slow or busy machines).
    #[arg(long, default_value_t = 1.0)]
    pub timeout_scale: f64,
}

const ANSWERS: &str = r#"version = 1
[target]
mode = "whole-disk"
[sizes]
system = "2GiB"
data = "rest"
[machine]
hostname = "rayos-update-e2e"
timezone = "UTC"
[policy]
linux_autostart = true
linux_present_on_boot = false
windows_enabled = false
networking = "off"
"#;

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
}

/// The system partition of a disk image, loop-mounted; undone on drop.
struct Mounted {
    dir: PathBuf,
    loopdev: String,
}

impl Mounted {
    fn system(disk: &Path, dir: &Path) -> Result<Mounted> {
        let out = Command::new("sfdisk").arg("-J").arg(disk).output()?;
        anyhow::ensure!(out.status.success(), "sfdisk -J {} failed", disk.display());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let pt = &v["partitiontable"];
        let sector = pt["sectorsize"].as_u64().unwrap_or(512);
        let part = pt["partitions"]
            .as_array()
            .and_then(|ps| {
                ps.iter().find(|p| {
                    p["type"].as_str().is_some_and(|t| {
                        t.eq_ignore_ascii_case("BC13C2FF-59E6-4262-A352-B275FD6F7172")
                    })
                })
            })
            .context("no XBOOTLDR (system) partition on the disk")?;
        let start = part["start"].as_u64().context("partition start")? * sector;
        let size = part["size"].as_u64().context("partition size")? * sector;
        let out = Command::new("losetup")
            .args([
                "--find",
                "--show",
                "--offset",
                &start.to_string(),
                "--sizelimit",
                &size.to_string(),
            ])
            .arg(disk)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "losetup failed (needs root and loop devices): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let loopdev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        fs::create_dir_all(dir)?;
        let m = Mounted {
            dir: dir.to_path_buf(),
            loopdev: loopdev.clone(),
        };
        let st = Command::new("mount")
            .args(["-t", "vfat"])
            .arg(&loopdev)
            .arg(dir)
            .status()?;
        anyhow::ensure!(st.success(), "mount {loopdev} failed");
        Ok(m)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = Command::new("losetup").args(["-d", &self.loopdev]).status();
    }
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(base: &Path, d: &Path, m: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in fs::read_dir(d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, m);
            } else if let Ok(b) = fs::read(&p) {
                m.insert(p.strip_prefix(base).unwrap_or(&p).to_path_buf(), b);
            }
        }
    }
    let mut m = BTreeMap::new();
    walk(dir, dir, &mut m);
    m
}

fn rayos(root: &Path) -> PathBuf {
    crate::demo::target_dir(root).join("debug/rayos")
}

fn update(root: &Path, args: &[&str]) -> Result<(i32, String)> {
    let out = Command::new(rayos(root))
        .arg("update")
        .args(args)
        .output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.code().unwrap_or(-1), text))
}

fn boot(
    run: &Run,
    work: &Path,
    disk: &Path,
    stage: &str,
    vars: &Path,
    no_reboot: bool,
) -> Result<Qemu> {
    let mut cfg = Config::new(&work.join(stage))?.medium(Medium::Disk {
        path: disk.to_path_buf(),
        sector_size: 512,
    });
    cfg.memory_mib = 3072;
    cfg.cpus = 2;
    cfg.no_reboot = no_reboot;
    if vars.exists() {
        cfg.vars = Some(vars.to_path_buf());
    }
    let vm = Qemu::start(&cfg)?;
    if !vars.exists() {
        fs::copy(&vm.vars, vars)?;
    }
    run.ok(&format!("{stage}: QEMU started"));
    Ok(vm)
}

fn power_off(run: &Run, vm: &mut Qemu, stage: &str) -> Result<()> {
    vm.qmp("system_powerdown", None)
        .context("QMP system_powerdown")?;
    vm.wait_exit(Duration::from_secs_f64(300.0 * run.scale))
        .with_context(|| format!("{stage}: the machine did not power off"))?;
    run.ok(&format!("{stage}: powered off"));
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    let root = crate::root();
    let run = Run {
        scale: args.timeout_scale,
        started: Instant::now(),
    };
    let base = root.join("build/e2e-update");
    let media = base.join("media");
    if args.rebuild
        || !media.join("rayos.efi").is_file()
        || !media.join("rayos-recovery.efi").is_file()
    {
        crate::run_cmd(
            Command::new("cargo")
                .args(["xtask", "media", "--zstd-level", "3", "--out"])
                .arg(&media),
        )?;
    }
    crate::run_cmd(Command::new("cargo").args(["build", "-p", "rayos"]))?;
    run.ok("media and the host's rayos are built");

    let work = base.join("work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    for (version, broken) in [("0.2.0", false), ("0.3.0", true)] {
        crate::bundle::run(crate::bundle::Args {
            key: None,
            uki: Some(media.join("rayos.efi")),
            recovery_uki: (!broken).then(|| media.join("rayos-recovery.efi")),
            version: Some(version.into()),
            broken,
            unsigned: false,
            out: work.clone(),
        })?;
    }
    crate::bundle::run(crate::bundle::Args {
        key: None,
        uki: Some(media.join("rayos.efi")),
        recovery_uki: None,
        version: Some("0.2.0".into()),
        broken: false,
        unsigned: true,
        out: work.clone(),
    })?;
    let good = work.join("rayos-update-0.2.0.bundle");
    let broken = work.join("rayos-update-0.3.0-broken.bundle");
    let unsigned = work.join("rayos-update-0.2.0-unsigned.bundle");
    let tampered = work.join("rayos-update-0.2.0-tampered.bundle");
    let mut t = fs::read(&good)?;
    let n = t.len();
    t[n - 4096] ^= 0xff;
    fs::write(&tampered, t)?;
    let key = root.join("build/keys/dev.pub");
    run.ok("bundles 0.2.0, 0.3.0 (broken), unsigned and tampered made");

    // 2. install 0.1.0
    let disk = work.join("disk.img");
    fs::File::create(&disk)?.set_len(16 << 30)?;
    let answers = work.join("answers.toml");
    fs::write(&answers, ANSWERS)?;
    crate::run_cmd(
        Command::new(rayos(&root))
            .args(["install", "--yes", "--no-nvram", "--target"])
            .arg(&disk)
            .arg("--answers")
            .arg(&answers)
            .arg("--system-image")
            .arg(media.join("rayos.efi")),
    )?;
    run.ok("RayOS 0.1.0 installed onto the image");
    let vars = work.join("OVMF_VARS.fd");
    let mnt = work.join("mnt");

    // 3. boot 1
    {
        let mut vm = boot(&run, &work, &disk, "boot1", &vars, true)?;
        run.expect(&mut vm, "boot1: rayosd healthy", "RAYOS_READY", 900)?;
        run.expect(
            &mut vm,
            "boot1: 0.1.0 blessed",
            "RAYOS_BLESSED:rayos-0.1.0.efi",
            60,
        )?;
        power_off(&run, &mut vm, "boot1")?;
    }

    // 4. refusals and 0.2.0
    {
        let m = Mounted::system(&disk, &mnt)?;
        let sys = m.dir.to_string_lossy().to_string();
        let before = snapshot(&m.dir);
        for (what, b) in [("tampered", &tampered), ("unsigned", &unsigned)] {
            let (code, text) = update(
                &root,
                &[
                    "apply",
                    &b.to_string_lossy(),
                    "--system-dir",
                    &sys,
                    "--key",
                    &key.to_string_lossy(),
                    "--running-version",
                    "0.1.0",
                ],
            )?;
            anyhow::ensure!(
                code == 2,
                "{what} bundle: expected exit 2, got {code}: {text}"
            );
            anyhow::ensure!(
                snapshot(&m.dir) == before,
                "{what} bundle changed the system partition"
            );
            run.ok(&format!(
                "{what} bundle refused, nothing written: {}",
                text.lines().last().unwrap_or("")
            ));
        }
        let (code, text) = update(
            &root,
            &[
                "apply",
                &good.to_string_lossy(),
                "--system-dir",
                &sys,
                "--key",
                &key.to_string_lossy(),
                "--running-version",
                "0.1.0",
            ],
        )?;
        print!("{text}");
        anyhow::ensure!(code == 0, "apply 0.2.0 failed");
        anyhow::ensure!(
            m.dir.join("EFI/Linux/rayos-0.2.0+3.efi").is_file(),
            "no rayos-0.2.0+3.efi"
        );
        run.ok("0.2.0 applied on the real FAT system partition");
    }

    // 5. boot 2
    {
        let mut vm = boot(&run, &work, &disk, "boot2", &vars, true)?;
        run.expect(&mut vm, "boot2: rayosd healthy", "RAYOS_READY", 900)?;
        run.expect(
            &mut vm,
            "boot2: 0.2.0 booted and blessed",
            "RAYOS_BLESSED:rayos-0.2.0.efi",
            60,
        )?;
        run.expect(&mut vm, "boot2: Linux VM back", "RAYOS_LINUX_VM_READY", 900)?;
        power_off(&run, &mut vm, "boot2")?;
    }

    // 6. the broken 0.3.0
    {
        let m = Mounted::system(&disk, &mnt)?;
        let sys = m.dir.to_string_lossy().to_string();
        let (code, text) = update(
            &root,
            &[
                "apply",
                &broken.to_string_lossy(),
                "--system-dir",
                &sys,
                "--key",
                &key.to_string_lossy(),
                "--running-version",
                "0.2.0",
            ],
        )?;
        print!("{text}");
        anyhow::ensure!(code == 0, "apply 0.3.0 failed");
        run.ok("0.3.0 (broken) applied");
    }

    // 7. boot 3: three failures, then the fallback
    {
        let mut vm = boot(&run, &work, &disk, "boot3", &vars, false)?;
        let line = run.expect(
            &mut vm,
            "boot3: 0.2.0 reports the rollback",
            "RAYOS_ROLLBACK:0.3.0:",
            1800,
        )?;
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
            "RAYOS_READY",
            900,
        )?;
        power_off(&run, &mut vm, "boot3")?;
    }

    // 8. status
    {
        let m = Mounted::system(&disk, &mnt)?;
        let (code, text) = update(
            &root,
            &[
                "status",
                "--system-dir",
                &m.dir.to_string_lossy(),
                "--running-version",
                "0.2.0",
            ],
        )?;
        print!("{text}");
        anyhow::ensure!(code == 0, "status failed");
        anyhow::ensure!(
            m.dir.join("EFI/Linux/rayos-0.3.0+0-3.efi.bad").is_file(),
            "0.3.0 was not marked bad: {:?}",
            fs::read_dir(m.dir.join("EFI/Linux"))?
                .flatten()
                .map(|e| e.file_name())
                .collect::<Vec<_>>()
        );
        anyhow::ensure!(
            text.contains("rayos-0.2.0.efi") && text.contains("[default]"),
            "0.2.0 is not the default"
        );
        run.ok("0.3.0 marked bad, 0.2.0 is the default");
    }
    println!(
        "e2e-update: all stages passed in {:.0} s",
        run.started.elapsed().as_secs_f64()
    );
    Ok(())
}
