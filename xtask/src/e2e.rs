//! `cargo xtask e2e`: the end-to-end flow of issue 4 on the built media,
//! under QEMU + OVMF (TCG, no KVM), driven by serial-console markers and QMP.
//!
//! Per variant (`iso`: ISO as CD onto a 512-byte-sector disk; `usb`: USB
//! image on xHCI; `iso-usb`: the ISO as a USB stick; `4k`: ISO onto a
//! 4096-byte-sector disk):
//! 1. install boot — installer medium + a blank 16 GiB disk + a USB stick
//!    (FAT) holding `rayos-answers.toml` (countdown 2 s), fresh OVMF VARS,
//!    `-no-reboot`: kernel runs /init, `RAYOS_BOOT:`,
//!    `RAYOS_INSTALLER:countdown:2`, `RAYOS_INSTALLER:start`,
//!    `RAYOS_INSTALLER:done`, the machine stops;
//! 2. the disk's GPT is valid and holds a RayOS data partition; the system
//!    partition holds the "RayOS recovery" entry and the UKI it names; the
//!    VARS hold a `Boot####` "RayOS" first in `BootOrder`;
//! 3. first boot from the disk alone: `RAYOS_ACCEL:tcg:<reason>` with the
//!    firmware reason (the machine's CPU offers no VT-x/AMD-V), `RAYOS_READY`,
//!    `RAYOS_VM_STARTED:linux:cold`, `RAYOS_LINUX_VM_READY`; `vm show linux`
//!    at the `rayos>` prompt reports the VM's QEMU running with `-accel tcg`;
//!    QMP `system_powerdown`; the machine stops;
//! 4. second boot: `RAYOS_READY`, `RAYOS_VM_STARTED:linux:resumed`,
//!    `RAYOS_LINUX_VM_READY`; `reboot` typed at the `rayos>` prompt; stops;
//! 5. the data volume (read with debugfs, no mount) holds logs, and the Linux
//!    guest's console shows its counter continuing across the save/resume.
//!
//! `usb` and `iso-usb` stop after step 3's `RAYOS_LINUX_VM_READY`: the
//! medium matters up to there, and the save/resume steps that follow are
//! `iso`'s and `4k`'s.
//!
//! The `wizard` variant replaces step 1 with an install by hand: no answers
//! disk, `install` typed at the installer's `rayos>` prompt on the serial
//! console, the full-screen wizard driven with keys (Enter, `i` for RayOS in
//! the free space, the Linux VM's user and password on the machine screen,
//! the disk's name to confirm, `p` to power off) and its screens read from
//! an 80x24 screen rebuilt from the serial stream; the Linux VM is the
//! Debian VM (the medium carries it and the wizard requires its user), so
//! this variant proves the installer writes it (its disk, dumped from the
//! data volume, reads as the image on the medium); then steps 2 and 3 up to
//! `RAYOS_LINUX_VM_READY` (the Debian VM's QEMU runs; its boot under
//! nested TCG is not waited for).
//!
//! Two variants check where answer files come from and the countdown
//! (issues 10 and 17), without booting the installed system:
//! - `usb-late`: no stick at boot; the answer stick is hot-plugged (QMP
//!   `device_add usb-storage`) the moment init starts looking for an answer
//!   file, racing USB enumeration; the unattended install must still run
//!   (`RAYOS_INSTALLER:start` … `done`, a GPT with the data partition),
//!   whether init found the stick while waiting for USB to settle or
//!   offered it after falling back to the interactive installer.
//! - `answers-safety`: an answer file on an internal (virtio, not
//!   removable) disk is ignored (`RAYOS_INSTALLER:interactive`); a stick
//!   plugged in later is offered with the default 10 s countdown; a key on
//!   the serial console cancels it, the `rayos>` prompt comes back, and the
//!   target disk is byte-identical to before the boot.
//!
//! Each check prints `ok`/`FAIL` with its time; the first failure ends the
//! variant with the reason and the serial log's tail (the full log stays in
//! `build/e2e/<variant>/`). Every wait has a timeout; QEMU is killed when a
//! stage ends. Stages that need pieces not built yet fail with a clear message.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rayos_base::marker::{
    AccelMarker, InstallerMarker, Kind, Marker, Power, VmStart, WizardAfter, WizardMarker,
};
use rayos_image::fat::{self, FatTree};
use rayos_image::ovmf_vars;
use rayos_image::qemu::{Config, Medium, Qemu};

use crate::installed::AnswerFile;

mod answers;

#[derive(clap::Args)]
pub struct Args {
    /// Which installs to run.
    #[arg(long, value_enum, default_value = "iso")]
    pub variant: Vec<Variant>,
    #[command(flatten)]
    pub common: MediaArgs,
    /// Only boot the ISO (as CD and as disk) and the USB image and check the
    /// kernel and PID 1 come up in installer mode.
    #[arg(long)]
    pub boot_only: bool,
    /// Only run the installer's dry run on the host against a blank image
    /// and check it wrote nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The options every run that boots the media takes (`e2e`, and all of
/// `e2e-present`'s).
#[derive(clap::Args)]
pub struct MediaArgs {
    /// Where the media are (and are built when missing).
    #[arg(long, default_value = "build")]
    pub media: PathBuf,
    /// Rebuild the media first (with a fast zstd level) even if they exist.
    #[arg(long)]
    pub rebuild: bool,
    /// Multiply every timeout (slow or busy machines).
    #[arg(long, default_value_t = 1.0)]
    pub timeout_scale: f64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The ISO as a CD, installing onto a 512-byte-sector disk.
    Iso,
    /// The USB image on a USB stick.
    Usb,
    /// The ISO written to a USB stick with `dd` (hybrid boot).
    IsoUsb,
    /// The ISO as a CD, installing onto a 4096-byte-sector disk.
    #[value(name = "4k")]
    FourK,
    /// The ISO as a CD without an answer file: `install` typed at the
    /// `rayos>` prompt on the serial console, the full-screen wizard driven
    /// with keystrokes, then one boot from the disk alone.
    Wizard,
    /// The ISO as a CD; the answer stick is hot-plugged while init looks for
    /// an answer file; the unattended install must start.
    UsbLate,
    /// An answer file on an internal disk is ignored; a stick plugged in at
    /// the `rayos>` prompt is offered with the default countdown, which a
    /// key cancels; the target disk stays byte-identical.
    AnswersSafety,
    /// The ISO as a CD with `[linux] user`: the Linux VM is the Debian VM
    /// image; login over `vm console linux` at the admin prompt, `reboot`,
    /// the same shell and process after the resume (`e2e_debian`).
    Debian,
    /// The ISO as a CD; the machine gets a NIC; networking off, then on
    /// from the admin prompt: the Linux VM fetches a file from a server on
    /// this host through both NATs (`e2e_net`, docs/network.md).
    Net,
    /// The ISO as a CD; the Windows stand-in installer ISO on a second USB
    /// stick (written with `dd`); at the `rayos>` prompt: Windows enabled,
    /// the stick found by `media`, the VM created from it, installed (Secure
    /// Boot, TPM), booted from its disk, resumed across a RayOS `reboot`,
    /// its TPM secret kept across a stop and cold start (`e2e_windows`,
    /// docs/windows.md).
    Windows,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Iso => "iso",
            Variant::Usb => "usb",
            Variant::IsoUsb => "iso-usb",
            Variant::FourK => "4k",
            Variant::Wizard => "wizard",
            Variant::UsbLate => "usb-late",
            Variant::AnswersSafety => "answers-safety",
            Variant::Debian => "debian",
            Variant::Net => "net",
            Variant::Windows => "windows",
        }
    }
}

/// The answer file of the unattended installs: a short countdown keeps the
/// runs quick (`answers-safety` shows the default one). The Linux VM is
/// the small test guest, asked for by name: it stands in for the Debian VM,
/// whose boot under nested TCG takes far longer than these runs may (the
/// `debian` variant installs the real one).
pub static ANSWERS: LazyLock<String> = LazyLock::new(|| {
    AnswerFile {
        hostname: "rayos-e2e",
        countdown: Some(2),
        disk: Some("/dev/vda"),
        spelled_out: true,
        test_guest: true,
    }
    .text()
});

pub(crate) const DISK_BYTES: u64 = 16 << 30;
/// The `4k` variant's dedicated VM-storage partition for the Linux VM.
const VM_STORAGE_SIZE: &str = "2GiB";
/// Output that means a boot went wrong whatever the stage waits for: the
/// firmware fell back to its setup menu (the boot loader found nothing to
/// boot), or the kernel panicked.
pub(crate) const ALWAYS_BAD: &[&str] = &["No loader found", "\"UiApp\" from Fv", "Kernel panic"];

/// The kernel's line when it starts `/init`: the first sign that the
/// firmware, the boot loader and the UKI worked.
pub(crate) const RUN_INIT: &str = "Run /init as init process";

/// How long the nested Linux guest may take to reach userspace and count.
const GUEST_BOOT_SECS: u64 = 600;

pub(crate) struct Run {
    pub(crate) scale: f64,
    pub(crate) started: Instant,
}

impl Run {
    pub(crate) fn timeout(&self, secs: u64) -> Duration {
        Duration::from_secs_f64(secs as f64 * self.scale)
    }

    pub(crate) fn ok(&self, what: &str) {
        println!(
            "  ok    [{:>7.1}s] {what}",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Waits for `marker`, reporting the check as `what`.
    pub(crate) fn expect(
        &self,
        vm: &mut Qemu,
        what: &str,
        marker: &str,
        secs: u64,
    ) -> Result<String> {
        self.expect_not(vm, what, marker, &[], secs)
    }

    /// Waits for the kernel to start `/init` ([`RUN_INIT`]), reporting
    /// the check as `what`.
    pub(crate) fn init_runs(&self, vm: &mut Qemu, what: &str, secs: u64) -> Result<String> {
        self.expect(vm, what, RUN_INIT, secs)
    }

    /// Waits for the installer to finish, failing at once when it reports
    /// a failure.
    pub(crate) fn install_completes(&self, vm: &mut Qemu, secs: u64) -> Result<String> {
        self.expect_not(
            vm,
            "install completes",
            Kind::InstallerDone.prefix(),
            &[Kind::InstallerFailed.prefix(), Kind::Fatal.prefix()],
            secs,
        )
    }

    /// An installed RayOS up: rayosd healthy (`RAYOS_READY`, never
    /// `RAYOS_FATAL`) within `ready_secs`, then its Linux VM running
    /// within 900 s. `healthy` names the first step in the report.
    pub(crate) fn ready_with_linux_vm(
        &self,
        vm: &mut Qemu,
        healthy: &str,
        ready_secs: u64,
    ) -> Result<()> {
        self.healthy(vm, healthy, ready_secs)?;
        self.expect(vm, "Linux VM running", Kind::LinuxVmReady.prefix(), 900)?;
        Ok(())
    }

    /// Waits for `RAYOS_READY` (rayosd healthy), failing at once on
    /// `RAYOS_FATAL`.
    pub(crate) fn healthy(&self, vm: &mut Qemu, what: &str, secs: u64) -> Result<String> {
        self.expect_not(
            vm,
            what,
            Kind::Ready.prefix(),
            &[Kind::Fatal.prefix()],
            secs,
        )
    }

    /// Waits for `good`, failing at once when one of `bad` appears first.
    pub(crate) fn expect_not(
        &self,
        vm: &mut Qemu,
        what: &str,
        good: &str,
        bad: &[&str],
        secs: u64,
    ) -> Result<String> {
        let mut markers = vec![good];
        markers.extend_from_slice(bad);
        markers.extend_from_slice(ALWAYS_BAD);
        let log = vm.serial_log().display().to_string();
        let fail = |e: anyhow::Error| {
            println!(
                "  FAIL  [{:>7.1}s] {what}",
                self.started.elapsed().as_secs_f64()
            );
            e.context(format!("{what} (serial log: {log})"))
        };
        match vm.wait_for_any(&markers, self.timeout(secs)) {
            Ok((0, line)) => {
                self.ok(&format!("{what}: {}", line.trim()));
                Ok(line)
            }
            Ok((_, line)) => Err(fail(anyhow::anyhow!(
                "got instead: {}\nlast output:\n{}",
                line.trim(),
                vm.tail()
            ))),
            Err(e) => Err(fail(e.into())),
        }
    }

    /// Checks how rayosd last started the Linux VM (`cold` or `resumed`):
    /// the last `RAYOS_VM_STARTED:linux:<how>` in its log on the data volume
    /// (its own output reaches the serial port only when that is
    /// `/dev/console`, so the log is the reliable place).
    pub(crate) fn started(&self, disk: &Path, offset: u64, want: VmStart) -> Result<()> {
        let mut log = String::new();
        for f in ["/logs/rayosd.log.1", "/logs/rayosd.log"] {
            log.push_str(&debugfs(disk, offset, &format!("cat {f}")).unwrap_or_default());
        }
        let how = log
            .lines()
            .filter_map(|l| match Marker::find_in(l)? {
                Marker::VmStarted { vm, how } if vm == "linux" => Some(how),
                _ => None,
            })
            .next_back();
        let want_text = want.as_str();
        match how {
            Some(h) if h == want => {
                let m = Marker::VmStarted {
                    vm: "linux".into(),
                    how: h,
                };
                self.ok(&format!("{m} (logs/rayosd.log)"));
                Ok(())
            }
            other => {
                println!(
                    "  FAIL  [{:>7.1}s] Linux VM {want_text}",
                    self.started.elapsed().as_secs_f64()
                );
                bail!(
                    "rayosd's log on the data volume shows the Linux VM started {}, not {want_text}",
                    other.map_or("never", VmStart::as_str)
                )
            }
        }
    }

    /// Types `reboot` at the admin prompt and waits until the machine
    /// stops (`-no-reboot`), then lets this QEMU go.
    pub(crate) fn reboot_at_prompt(&self, mut vm: Qemu, what: &str, secs: u64) -> Result<()> {
        vm.send_serial("reboot\n")?;
        self.stopped(&mut vm, what, secs)
    }

    /// Presses the ACPI power button (QMP `system_powerdown`) and waits up
    /// to 10 minutes for RayOS to stop the VMs and power off.
    pub(crate) fn power_button(&self, vm: &mut Qemu) -> Result<()> {
        vm.qmp("system_powerdown", None)
            .context("QMP system_powerdown")?;
        self.ok("ACPI power button pressed (QMP system_powerdown)");
        self.stopped(
            vm,
            "RayOS stops the VMs (saved or shut down) and powers off",
            600,
        )
    }

    pub(crate) fn stopped(&self, vm: &mut Qemu, what: &str, secs: u64) -> Result<()> {
        match vm.wait_exit(self.timeout(secs)) {
            Ok(_) => {
                self.ok(what);
                Ok(())
            }
            Err(e) => {
                println!(
                    "  FAIL  [{:>7.1}s] {what}",
                    self.started.elapsed().as_secs_f64()
                );
                Err(e).with_context(|| format!("{what}; last output:\n{}", vm.tail()))
            }
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    let root = crate::root();
    let out = root.join(&args.common.media);
    if args.dry_run {
        println!("== e2e dry-run");
        let run = Run {
            scale: args.common.timeout_scale,
            started: Instant::now(),
        };
        return dry_run(&run, &out.join("e2e").join("dry-run"));
    }
    let (_, iso, usb) = crate::media::ensure(&args.common.media, args.common.rebuild)?;
    let mut failed = Vec::new();
    let variants = if args.boot_only {
        vec![Variant::Iso]
    } else {
        args.variant.clone()
    };
    for v in variants {
        println!("== e2e {}", v.name());
        let run = Run {
            scale: args.common.timeout_scale,
            started: Instant::now(),
        };
        let work = out.join("e2e").join(v.name());
        let result = if args.boot_only {
            boot_only(&run, &work, &iso, &usb)
        } else {
            variant(&run, &work, v, &iso, &usb)
        };
        if let Err(e) = result {
            println!("  {} stopped: {e:#}", v.name());
            failed.push(v.name());
        }
    }
    if !failed.is_empty() {
        bail!("e2e failed: {}", failed.join(", "));
    }
    println!("e2e passed");
    Ok(())
}

pub(crate) fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

fn sparse(path: &Path, bytes: u64) -> Result<()> {
    let f = fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.set_len(bytes)?;
    Ok(())
}

/// Boots the ISO as a CD and the USB image as a disk, each beside a blank
/// disk: the kernel runs /init and PID 1 logs its first step and mode.
fn boot_only(run: &Run, work: &Path, iso: &Path, usb: &Path) -> Result<()> {
    fresh_dir(work)?;
    let disk = work.join("disk.img");
    sparse(&disk, DISK_BYTES)?;
    let blank = Medium::Disk {
        path: disk,
        sector_size: 512,
    };
    for (name, medium) in [
        ("ISO as CD", Medium::Cdrom(iso.to_path_buf())),
        (
            "USB image as disk",
            Medium::Disk {
                path: usb.to_path_buf(),
                sector_size: 512,
            },
        ),
        (
            "ISO as disk (dd)",
            Medium::Disk {
                path: iso.to_path_buf(),
                sector_size: 512,
            },
        ),
    ] {
        let mut cfg = Config::new(&work.join(name.replace([' ', '(', ')'], "")))?;
        cfg.media = vec![blank.clone(), medium];
        cfg.memory_mib = 2048;
        let mut vm = Qemu::start(&cfg)?;
        run.init_runs(&mut vm, &format!("{name}: kernel runs /init"), 300)?;
        run.expect(
            &mut vm,
            &format!("{name}: rayos init starts"),
            Kind::Boot.prefix(),
            120,
        )?;
        // The kernel printed the UKI's command line before /init ran.
        let out = vm.serial_output();
        match out.lines().find(|l| l.contains("Kernel command line:")) {
            Some(l) if l.contains("rayos.mode=installer") => {
                run.ok(&format!("{name}: installer mode: {}", l.trim()))
            }
            other => bail!("{name}: the kernel command line is not the installer's: {other:?}"),
        }
    }
    Ok(())
}

/// The installed disk of stages 1 and 2.
pub(crate) struct Installed {
    pub(crate) disk: PathBuf,
    pub(crate) vars: PathBuf,
    pub(crate) sector: u32,
    pub(crate) data_offset: u64,
    /// Where the Linux VM's files are: the byte offset of their filesystem
    /// and a directory in it that holds them (the data volume's `/vm`, or
    /// the root of a dedicated VM-storage partition).
    pub(crate) linux_files: (u64, &'static str),
}

impl Installed {
    /// A boot of the installed disk alone, its files under `work/<stage>`.
    pub(crate) fn boot_config(&self, work: &Path, stage: &str) -> Result<Config> {
        stage_config(work, &self.vars, stage, vec![self.target()])
    }

    fn target(&self) -> Medium {
        Medium::Disk {
            path: self.disk.clone(),
            sector_size: self.sector,
        }
    }
}

/// The machine of every stage: 3 GiB, 2 CPUs, the run's VARS file, stops
/// instead of rebooting.
fn stage_config(work: &Path, vars: &Path, stage: &str, media: Vec<Medium>) -> Result<Config> {
    let mut cfg = Config::new(&work.join(stage))?;
    cfg.vars = Some(vars.to_path_buf());
    cfg.media = media;
    cfg.memory_mib = 3072;
    cfg.cpus = 2;
    cfg.no_reboot = true;
    Ok(cfg)
}

/// Stages 1 and 2: installs RayOS from the medium of `v` onto a fresh disk
/// under `work` (cleared first) and checks its GPT and UEFI boot entry.
pub(crate) fn install(
    run: &Run,
    work: &Path,
    v: Variant,
    iso: &Path,
    usb: &Path,
) -> Result<Installed> {
    fresh_dir(work)?;
    let sector = if v == Variant::FourK { 4096 } else { 512 };
    let disk = work.join("disk.img");
    sparse(&disk, DISK_BYTES)?;
    let answers_file = work.join("rayos-answers.toml");
    let answers_text = match v {
        Variant::Debian => crate::e2e_debian::answers(),
        Variant::Windows => crate::e2e_windows::answers(),
        // The Linux VM on a dedicated VM-storage partition (docs/install.md):
        // one variant proves the partition is mounted at boot and holds the
        // VM's files, so the others keep the default layout.
        Variant::FourK => ANSWERS.replace(
            "linux = \"data\"",
            &format!("linux = {{ create = \"{VM_STORAGE_SIZE}\" }}"),
        ),
        _ => ANSWERS.clone(),
    };
    fs::write(&answers_file, answers_text)?;
    let answers_disk = work.join("answers.img");
    let mut tree = FatTree::new();
    tree.add("rayos-answers.toml", &answers_file);
    fat::build(&answers_disk, "ANSWERS", &tree, Some(8 << 20))?;
    let vars = work.join("OVMF_VARS.fd");
    let fw = rayos_image::qemu::Firmware::ovmf_4m()?;
    fs::copy(&fw.vars_template, &vars)?;
    let installed = Installed {
        disk,
        vars,
        sector,
        data_offset: 0,
        linux_files: (0, "/vm"),
    };
    let target = installed.target();
    let config =
        |stage: &str, media: Vec<Medium>| stage_config(work, &installed.vars, stage, media);

    // 1. Install.
    let medium = match v {
        Variant::Usb => Medium::Usb(usb.to_path_buf()),
        Variant::IsoUsb => Medium::Usb(iso.to_path_buf()),
        Variant::Iso
        | Variant::FourK
        | Variant::Wizard
        | Variant::UsbLate
        | Variant::AnswersSafety
        | Variant::Debian
        | Variant::Net
        | Variant::Windows => Medium::Cdrom(iso.to_path_buf()),
    };
    // A USB stick, the usual carrier: answer files on internal disks are
    // not used (docs/answer-file.md).
    let answers = Medium::Usb(answers_disk);
    let media = if v == Variant::Wizard {
        vec![target.clone(), medium]
    } else {
        vec![target.clone(), medium, answers]
    };
    let mut vm = Qemu::start(&config("install", media)?)?;
    run.init_runs(&mut vm, "kernel runs /init from the installer UKI", 300)?;
    run.expect(&mut vm, "rayos init starts", Kind::Boot.prefix(), 120)?;
    if v == Variant::Wizard {
        wizard_install(run, &mut vm)?;
    } else {
        run.expect_not(
            &mut vm,
            "the plan is shown with the answer file's countdown",
            &Marker::Installer(InstallerMarker::Countdown(2)).to_string(),
            &[
                Kind::InstallerInteractive.prefix(),
                Kind::InstallerFailed.prefix(),
                Kind::Fatal.prefix(),
            ],
            300,
        )?;
        run.expect_not(
            &mut vm,
            "unattended install starts (answer file found on the USB stick)",
            Kind::InstallerStart.prefix(),
            &[
                Kind::InstallerInteractive.prefix(),
                Kind::InstallerFailed.prefix(),
                Kind::Fatal.prefix(),
            ],
            300,
        )?;
        run.install_completes(&mut vm, 1200)?;
    }
    run.stopped(&mut vm, "installer powers off / reboots", 300)?;
    drop(vm);

    // 2. Disk and boot entry.
    let data_offset = data_partition(&installed.disk, sector)?;
    run.ok(&format!(
        "GPT valid, RayOS data partition at byte {data_offset}"
    ));
    let entry = system_file(
        &installed.disk,
        sector,
        &format!("/{}", rayos_state::system::RECOVERY_ENTRY),
    )?;
    let efi = entry
        .lines()
        .find_map(|l| l.strip_prefix("efi "))
        .with_context(|| format!("the recovery entry names no UKI:\n{entry}"))?;
    let listing = system_file_listing(&installed.disk, sector, rayos_state::system::RECOVERY_DIR)?;
    let uki = efi.rsplit('/').next().unwrap_or(efi);
    if !listing.contains(uki) {
        bail!("the recovery entry names {efi}, which is not on the system partition:\n{listing}");
    }
    run.ok(&format!("\"RayOS recovery\" boot entry installed ({efi})"));
    let bv = ovmf_vars::boot_vars(&fs::read(&installed.vars)?)?;
    match (bv.find("RayOS"), bv.first()) {
        (Some(e), Some(first)) if e.number == first.number => run.ok(&format!(
            "UEFI Boot{:04X} \"RayOS\" is first in BootOrder",
            e.number
        )),
        _ => bail!("no Boot#### \"RayOS\" first in BootOrder; the VARS hold {bv:?}"),
    }
    if matches!(v, Variant::Wizard | Variant::Debian) {
        linux_disk_is_the_image(run, work, &installed.disk, data_offset, iso)?;
    }
    let linux_files = if v == Variant::FourK {
        let at = partition_offset(&installed.disk, sector, rayos_disk::types::RAYOS_VM_STORAGE)?;
        run.ok(&format!(
            "VM-storage partition for the Linux VM at byte {at}"
        ));
        (at, "/")
    } else {
        (data_offset, "/vm")
    };
    Ok(Installed {
        data_offset,
        linux_files,
        ..installed
    })
}

fn variant(run: &Run, work: &Path, v: Variant, iso: &Path, usb: &Path) -> Result<()> {
    match v {
        Variant::UsbLate => return answers::usb_late(run, work, iso),
        Variant::AnswersSafety => return answers::answers_safety(run, work, iso),
        _ => {}
    }
    let installed = install(run, work, v, iso, usb)?;
    if v == Variant::Debian {
        return crate::e2e_debian::after_install(run, work, &installed);
    }
    if v == Variant::Net {
        return crate::e2e_net::after_install(run, work, &installed);
    }
    if v == Variant::Windows {
        return crate::e2e_windows::after_install(run, work, &installed);
    }
    let (disk, data_offset) = (installed.disk.clone(), installed.data_offset);
    let config = |stage: &str| installed.boot_config(work, stage);

    // 3. First boot from the disk alone; power button.
    let mut vm = Qemu::start(&config("boot1")?)?;
    run.init_runs(&mut vm, "installed system boots", 300)?;
    accel_marker(run, &mut vm)?;
    run.ready_with_linux_vm(&mut vm, "rayosd healthy", 600)?;
    if matches!(v, Variant::Wizard | Variant::Usb | Variant::IsoUsb) {
        // The medium and the install path are what these variants prove;
        // what follows (the guest counting, save at power-off, resume, the
        // admin prompt's reboot) does not depend on them and is the `iso`
        // and `4k` variants' job, so the suite spends its minutes once.
        return Ok(());
    }
    vm_runs_under_tcg(run, &mut vm)?;
    // The guest boots under nested TCG (about 40 s on a quiet machine, much
    // more on a busy one); let it reach userspace and count, so the resume
    // has a counter to continue. Its console is read at the admin prompt.
    guest_counting(run, &mut vm, "linux", None, GUEST_BOOT_SECS)?;
    run.power_button(&mut vm)?;
    let serial1 = vm.serial_log().to_path_buf();
    drop(vm);
    run.started(&disk, data_offset, VmStart::Cold)?;
    if v == Variant::FourK {
        vm_storage_used(run, &installed, &serial1)?;
    }
    let before = guest_console(&disk, installed.linux_files, &work.join("dump1"))?;
    let last_before = counters(&before).last().copied().unwrap_or(0);
    run.ok(&format!(
        "guest counter reached {last_before} before the power-off"
    ));

    // 4. Second boot: resume; reboot from the admin prompt.
    let mut vm = Qemu::start(&config("boot2")?)?;
    run.healthy(&mut vm, "rayosd healthy again", 900)?;
    run.expect(
        &mut vm,
        "Linux VM running",
        Kind::LinuxVmReady.prefix(),
        600,
    )?;
    // A counter past the last one before the power-off, so the check of
    // the console log after this boot has the resumed guest's lines.
    guest_counting(run, &mut vm, "linux", Some(last_before), GUEST_BOOT_SECS)?;
    vm.send_serial("\n")?;
    run.expect(&mut vm, "admin prompt on the serial console", "rayos>", 60)?;
    run.reboot_at_prompt(
        vm,
        "`reboot` at the admin prompt stops the VMs and restarts",
        600,
    )?;

    // 5. Logs and the guest's counter, read from the data volume.
    let logs = debugfs(&disk, data_offset, "ls -l /logs")?;
    for name in ["init.log", "kernel.log", "rayosd.log"] {
        if !logs.contains(name) {
            bail!("the data volume's /logs has no {name}:\n{logs}");
        }
    }
    let mut rayosd = String::new();
    for f in ["/logs/rayosd.log.1", "/logs/rayosd.log"] {
        rayosd.push_str(&debugfs(&disk, data_offset, &format!("cat {f}")).unwrap_or_default());
    }
    let boots = rayosd.matches("rayosd started").count();
    if boots < 2 {
        bail!("logs/rayosd.log records {boots} start(s), not both boots:\n{rayosd}");
    }
    run.ok(&format!(
        "logs of both boots are on the data volume ({boots} rayosd starts logged)"
    ));
    run.started(&disk, data_offset, VmStart::Resumed)?;
    let after = guest_console(&disk, installed.linux_files, &work.join("dump2"))?;
    let seq = counters(&after);
    let readies = after.matches(rayos_testkit::guest::READY_MARKER).count();
    let continuous = seq.windows(2).all(|w| w[1] == w[0] + 1);
    if readies != 1 || !continuous || seq.last().copied().unwrap_or(0) <= last_before {
        bail!(
            "the Linux guest did not resume: {readies} cold boots in its console, counter {:?}..{:?} (before: {last_before})",
            seq.first(),
            seq.last()
        );
    }
    run.ok(&format!(
        "guest counter continued across the save/resume ({last_before} -> {})",
        seq.last().copied().unwrap_or(0)
    ));
    Ok(())
}

/// `rayos install --dry-run` (release build) on a blank sparse image: it
/// prints a plan and writes nothing.
fn dry_run(run: &Run, work: &Path) -> Result<()> {
    fresh_dir(work)?;
    crate::run_cmd(std::process::Command::new("cargo").args(["build", "--release", "-p", "rayos"]))
        .context("cannot build the rayos binary")?;
    run.ok("rayos built (release)");
    let disk = work.join("disk.img");
    sparse(&disk, DISK_BYTES)?;
    let answers = work.join("rayos-answers.toml");
    fs::write(&answers, ANSWERS.as_str())?;
    let mut cmd = std::process::Command::new(crate::root().join("target/release/rayos"));
    cmd.args(["install", "--dry-run", "--json", "--target"])
        .arg(&disk)
        .arg("--answers")
        .arg(&answers);
    // The system image the media carry, when they are built.
    let uki = work.join("../../rayos.efi");
    if uki.is_file() {
        cmd.arg("--system-image").arg(&uki);
    }
    let out = cmd.output().context("cannot run rayos install")?;
    let plan = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "rayos install --dry-run failed ({}): {}{}",
            out.status,
            plan,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let json: serde_json::Value = serde_json::from_str(&plan)
        .with_context(|| format!("the dry run printed no JSON plan:\n{plan}"))?;
    run.ok(&format!("plan printed ({} bytes of JSON)", plan.len()));
    println!("{}", serde_json::to_string_pretty(&json)?);
    // Nothing written: the sparse image is still all zeros.
    let mut f = fs::File::open(&disk)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut offsets = vec![0u64, DISK_BYTES - (1 << 20)];
    offsets.extend((1..16).map(|i| i * (1 << 30)));
    for off in offsets {
        use std::io::{Read, Seek, SeekFrom};
        f.seek(SeekFrom::Start(off))?;
        f.read_exact(&mut buf)?;
        if buf.iter().any(|&b| b != 0) {
            bail!("the dry run wrote to the disk image at byte {off}");
        }
    }
    let meta = fs::metadata(&disk)?;
    use std::os::unix::fs::MetadataExt;
    anyhow::ensure!(
        meta.blocks() == 0,
        "the dry run allocated {} blocks in the image",
        meta.blocks()
    );
    run.ok("the disk image is untouched (all zero, no block allocated)");
    Ok(())
}

/// Byte offset of the RayOS data partition, after checking the GPT.
pub(crate) fn data_partition(disk: &Path, sector: u32) -> Result<u64> {
    partition_offset(disk, sector, rayos_disk::types::RAYOS_DATA)
}

/// Byte offset of the first partition of type `type_guid` in `disk`.
fn partition_offset(disk: &Path, sector: u32, type_guid: uuid::Uuid) -> Result<u64> {
    let mut f = fs::File::open(disk)?;
    let gpt = rayos_disk::gpt::Gpt::read(&mut f, sector)
        .with_context(|| format!("the installed disk {} has no valid GPT", disk.display()))?;
    let p = gpt
        .partitions()
        .iter()
        .find(|p| p.type_guid == type_guid)
        .with_context(|| {
            format!(
                "no partition of type {type_guid} on {}: {:?}",
                disk.display(),
                gpt.partitions()
            )
        })?;
    Ok(p.start_bytes(sector))
}

/// Byte offset of the RayOS system (XBOOTLDR) partition in `disk`.
fn system_partition(disk: &Path, sector: u32) -> Result<u64> {
    let mut f = fs::File::open(disk)?;
    let gpt = rayos_disk::gpt::Gpt::read(&mut f, sector)
        .with_context(|| format!("the installed disk {} has no valid GPT", disk.display()))?;
    gpt.partitions()
        .iter()
        .find(|p| p.type_guid == rayos_disk::types::XBOOTLDR)
        .map(|p| p.start_bytes(sector))
        .with_context(|| format!("no RayOS system partition on {}", disk.display()))
}

fn mtools(tool: &str, disk: &Path, sector: u32, path: &str) -> Result<String> {
    let offset = system_partition(disk, sector)?;
    let out = std::process::Command::new(tool)
        .arg("-i")
        .arg(format!("{}@@{offset}", disk.display()))
        .arg(format!("::{path}"))
        .output()
        .with_context(|| format!("cannot run {tool} (mtools)"))?;
    if !out.status.success() {
        bail!(
            "{tool} {path} on the system partition failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A text file on the system partition of `disk` (read with mtools).
fn system_file(disk: &Path, sector: u32, path: &str) -> Result<String> {
    mtools("mtype", disk, sector, path)
}

/// Bare names in a directory of the system partition.
fn system_file_listing(disk: &Path, sector: u32, dir: &str) -> Result<String> {
    mtools("mdir", disk, sector, &format!("/{dir}")).map(|s| s.to_ascii_lowercase())
}

/// Runs a debugfs request against the ext4 data volume inside `disk`.
pub(crate) fn debugfs(disk: &Path, offset: u64, request: &str) -> Result<String> {
    let out = std::process::Command::new("debugfs")
        .args(["-R", request])
        .arg(format!("{}?offset={offset}", disk.display()))
        .output()
        .context("cannot run debugfs (install e2fsprogs)")?;
    anyhow::ensure!(
        out.status.success(),
        "debugfs {request}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Linux VM's disk as the installer wrote it (before any boot) reads
/// as the Debian VM image on the medium: `vm/<id>/disks/root.qcow2` dumped
/// from the data volume, the shipped image decoded by plain `zstd -d` (one
/// stream, not the installer's frame-by-frame path), `qemu-img compare`
/// (the installed disk is larger: its excess must read as zeros).
fn linux_disk_is_the_image(
    run: &Run,
    work: &Path,
    disk: &Path,
    data_offset: u64,
    iso: &Path,
) -> Result<()> {
    let shipped = iso.with_file_name(crate::linux_vm::SHIPPED);
    let vms = debugfs(disk, data_offset, "ls -l /vm")?;
    let installed = names(&vms)
        .into_iter()
        .map(|id| format!("/vm/{id}/disks/root.qcow2"))
        .find(|f| {
            debugfs(disk, data_offset, &format!("stat {f}")).is_ok_and(|s| s.contains("Size:"))
        })
        .with_context(|| format!("no vm/<id>/disks/root.qcow2 on the data volume:\n{vms}"))?;
    let dir = work.join("linux-disk-check");
    fresh_dir(&dir)?;
    let got = dir.join("installed.qcow2");
    debugfs(
        disk,
        data_offset,
        &format!("dump {installed} {}", got.display()),
    )?;
    let want = dir.join("shipped.qcow2");
    let st = std::process::Command::new("zstd")
        .args(["-q", "-d", "-f", rayos_install::vmdisk::ZSTD_LONG])
        .arg(&shipped)
        .arg("-o")
        .arg(&want)
        .status()
        .context("zstd")?;
    ensure!(st.success(), "zstd -d {} failed", shipped.display());
    let out = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "qcow2"])
        .arg(&want)
        .arg(&got)
        .output()
        .context("qemu-img")?;
    let _ = fs::remove_dir_all(&dir);
    ensure!(
        out.status.success(),
        "the Linux VM's disk {installed} does not read as {}: {}{}",
        shipped.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    run.ok(&format!(
        "the Linux VM's disk ({installed}) reads as the Debian VM image on the medium"
    ));
    Ok(())
}

/// The names in a directory, from debugfs `ls -l` lines (name last).
fn names(listing: &str) -> Vec<&str> {
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|n| *n != "." && *n != "..")
        .collect()
}

/// The `4k` variant's Linux VM lives on its own VM-storage partition: init
/// mounted it at boot (its step says so on the console), the VM's disks,
/// saved state and logs are on it after the power-off, and under the mount
/// point on the data volume (`vm/<id>/`) there is only the marker that
/// names it.
fn vm_storage_used(run: &Run, installed: &Installed, serial: &Path) -> Result<()> {
    let console = String::from_utf8_lossy(&fs::read(serial)?).into_owned();
    let line = console
        .lines()
        .find(|l| l.contains("vm-storage: rayos-vm-linux ("))
        .with_context(|| {
            format!(
                "init did not report mounting rayos-vm-linux (no 'vm-storage: rayos-vm-linux (' in {})",
                serial.display()
            )
        })?;
    run.ok(&format!(
        "init mounted the VM-storage partition: {}",
        line.trim()
    ));
    let (offset, dir) = installed.linux_files;
    let own = debugfs(&installed.disk, offset, &format!("ls -l {dir}"))?;
    let own = names(&own);
    for want in [
        rayos_state::layout::vm::DISKS,
        rayos_state::layout::vm::STATE,
    ] {
        ensure!(
            own.contains(&want),
            "the VM-storage partition has no {want}/ for the Linux VM: {own:?}"
        );
    }
    let saved = debugfs(&installed.disk, offset, "ls -l /state")?;
    ensure!(
        !names(&saved).is_empty(),
        "the Linux VM's saved state is not on its VM-storage partition: {saved}"
    );
    // The mount point: `... on /var/rayos/vm/<id>`, `vm/<id>` on the volume.
    let point = line
        .rsplit_once(" on /var/rayos")
        .map(|(_, p)| p.trim())
        .with_context(|| format!("no mount point in {line:?}"))?;
    let under = debugfs(
        &installed.disk,
        installed.data_offset,
        &format!("ls -l {point}"),
    )?;
    let under = names(&under);
    ensure!(
        under == [rayos_state::layout::vm::STORAGE_MARKER],
        "the data volume's {point} holds more than the storage marker: {under:?}"
    );
    run.ok(&format!(
        "the Linux VM's files ({}) are on the VM-storage partition; the data volume has only the marker",
        own.join(", ")
    ));
    Ok(())
}

/// The Linux guest's console log(s) from the data volume, oldest first.
pub(crate) fn guest_console(disk: &Path, files: (u64, &str), dump: &Path) -> Result<String> {
    let (offset, dir) = files;
    fresh_dir(dump)?;
    debugfs(disk, offset, &format!("rdump {dir} {}", dump.display()))?;
    let mut logs = Vec::new();
    collect(dump, &mut logs)?;
    logs.retain(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("console.log"))
    });
    // console.log.1 (older) before console.log.
    logs.sort_by_key(|p| std::cmp::Reverse(p.file_name().map(|n| n.to_os_string())));
    let mut text = String::new();
    for l in &logs {
        text.push_str(&String::from_utf8_lossy(&fs::read(l)?));
    }
    if text.is_empty() {
        bail!("no guest console log under {dir} (filesystem at byte {offset})");
    }
    Ok(text)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Why RayOS must pick TCG on the test machine: the harness's CPU
/// (`qemu64,-svm,+rdrand`, see rayos_image::qemu) shows neither `vmx` nor `svm`,
/// so no KVM module loads and there is no `/dev/kvm`.
fn expected_accel_reason() -> String {
    rayos_vmm::TcgReason::FirmwareOff.to_string()
}

/// rayosd's `RAYOS_ACCEL:` marker (relayed to the console by init) says
/// TCG with the firmware reason.
fn accel_marker(run: &Run, vm: &mut Qemu) -> Result<()> {
    let line = run.expect_not(
        vm,
        "rayosd decides the accelerator",
        Kind::Accel.prefix(),
        &[Kind::Fatal.prefix()],
        600,
    )?;
    let want = Marker::Accel(AccelMarker::Tcg {
        reason: expected_accel_reason(),
    });
    match Marker::find_in(&line) {
        Some(m) if m == want => {
            run.ok(&format!("{want}"));
            Ok(())
        }
        other => bail!("expected {want}, got {other:?} in: {}", line.trim()),
    }
}

/// The Linux VM's QEMU runs with `-accel tcg`: `vm show linux` at the
/// `rayos>` prompt reports the accelerator read from the running QEMU's
/// command line, with the reason.
fn vm_runs_under_tcg(run: &Run, vm: &mut Qemu) -> Result<()> {
    vm.send_serial("vm show linux\n")?;
    let line = run.expect(vm, "`vm show linux` answers", "accelerator:", 120)?;
    let want = rayos_api::Accelerator {
        accel: rayos_api::AccelKind::Tcg,
        reason: Some(expected_accel_reason()),
    }
    .to_string();
    if !line.contains(&want) {
        bail!(
            "the Linux VM's accelerator is not `{want}`:\n{}",
            line.trim()
        );
    }
    run.ok("the Linux VM's QEMU runs with -accel tcg (its command line, as `vm show` reports)");
    Ok(())
}

/// Waits until the guest of VM `name` prints `COUNTER` lines, asking
/// `vm console NAME --lines 3` at the `rayos>` prompt every few seconds,
/// for at most `secs`; returns the counter seen. With `above`, waits for a
/// counter past it (the console log keeps the lines from before a save, so
/// a resumed guest must print a new one).
pub(crate) fn guest_counting(
    run: &Run,
    vm: &mut Qemu,
    name: &str,
    above: Option<u64>,
    secs: u64,
) -> Result<u64> {
    let what = above.map(|a| format!(" past {a}")).unwrap_or_default();
    guest_counter_where(run, vm, name, &what, &|n| above.is_none_or(|a| n > a), secs)
}

/// [`guest_counting`] for a counter `accept` takes (`what` says which, for
/// the error).
pub(crate) fn guest_counter_where(
    run: &Run,
    vm: &mut Qemu,
    name: &str,
    what: &str,
    accept: &dyn Fn(u64) -> bool,
    secs: u64,
) -> Result<u64> {
    let deadline = Instant::now() + run.timeout(secs);
    loop {
        vm.send_serial(&format!("vm console {name} --lines 3\n"))?;
        // The guest's lines come back through the outer serial console.
        // Only COUNTER is waited for: the prompt is redrawn for every typed
        // character, so matching it would stop far behind the answer.
        loop {
            match vm.wait_for("COUNTER ", Duration::from_secs(20)) {
                Ok(line) => {
                    let n = line
                        .rsplit("COUNTER ")
                        .next()
                        .and_then(|v| v.split_whitespace().next())
                        .and_then(|v| v.parse::<u64>().ok());
                    if let Some(n) = n
                        && accept(n)
                    {
                        run.ok(&format!("the {name} guest counts: {}", line.trim()));
                        return Ok(n);
                    }
                }
                Err(rayos_image::qemu::QemuError::Timeout { .. }) => break,
                Err(e) => return Err(e.into()),
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "the {name} guest printed no COUNTER line{what} within {} s:\n{}",
                run.timeout(secs).as_secs(),
                vm.tail()
            );
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// The guest's `COUNTER <n>` values in order.
pub(crate) fn counters(console: &str) -> Vec<u64> {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COUNTER ")?.trim().parse().ok())
        .collect()
}

/// The installed disk's name as the wizard asks for it on the Summary.
const WIZARD_DISK: &str = "vda";

/// Stage 1 of the `wizard` variant: `install` at the installer's `rayos>`
/// prompt, then the wizard's screens driven over the serial line, matched
/// against an 80x24 screen rebuilt from the escape sequences it draws with
/// (it redraws only the cells that change, so the raw stream never holds a
/// whole heading twice).
fn wizard_install(run: &Run, vm: &mut Qemu) -> Result<()> {
    run.expect_not(
        vm,
        "no answer file: the interactive installer is offered",
        Kind::InstallerInteractive.prefix(),
        &[Kind::InstallerStart.prefix(), Kind::Fatal.prefix()],
        300,
    )?;
    // The prompt may have been printed among kernel messages already; ask
    // for a fresh one.
    std::thread::sleep(Duration::from_secs(3));
    vm.send_serial("\r")?;
    // Redrawn from column 0 (CR): init's log line naming the consoles holds
    // "rayos> " too.
    run.expect(
        vm,
        "`rayos>` prompt on the serial console",
        "\rrayos> ",
        120,
    )?;
    let mut screen = Screen::new(fs::metadata(vm.serial_log())?.len() as usize);
    vm.send_serial("install\r")?;
    let steps: &[(&str, &str, u64)] = &[
        ("", "step 1/8: Welcome", 300),
        ("\r", "step 2/8: Disk", 120),
        ("\r", "step 3/8: Partitions", 120),
        ("i", "new system", 120),
        ("\r", "step 4/8: VM storage", 120),
        ("\r", "step 5/8: Machine", 120),
        // The medium carries the Debian image, so the Linux VM is Debian
        // and its first user is required: Tab to the user row, type it,
        // then the password twice (shown as stars).
        ("\t\t\t\talice", "alice", 60),
        ("\trayos-e2e-pw\trayos-e2e-pw", "************", 60),
        ("\r", "step 6/8: Policy", 120),
        ("\r", "step 7/8: Summary", 120),
        ("", "Linux VM: Debian 12, user alice", 60),
    ];
    for (keys, then, secs) in steps {
        if !keys.is_empty() {
            vm.send_serial(keys)?;
        }
        wait_screen(run, vm, &mut screen, then, *secs)?;
    }
    // Typing the disk's name (and nothing else) confirms the install.
    vm.send_serial(WIZARD_DISK)?;
    wait_screen(run, vm, &mut screen, &format!("[{WIZARD_DISK}_]"), 60)?;
    vm.send_serial("\r")?;
    wait_screen(run, vm, &mut screen, "RayOS is installed", 1500)?;
    vm.send_serial("p")?;
    run.ok("power off chosen on the wizard's last screen");
    run.expect(
        vm,
        "the wizard reports the install",
        &Marker::Wizard(WizardMarker::Installed {
            after: WizardAfter::PowerOff,
        })
        .to_string(),
        120,
    )?;
    run.expect(
        vm,
        "init powers the machine off",
        &Marker::Shutdown(Power::PowerOff).to_string(),
        120,
    )?;
    Ok(())
}

/// Waits until `needle` is on the rebuilt screen.
fn wait_screen(
    run: &Run,
    vm: &mut Qemu,
    screen: &mut Screen,
    needle: &str,
    secs: u64,
) -> Result<()> {
    let deadline = Instant::now() + run.timeout(secs);
    loop {
        let bytes = fs::read(vm.serial_log()).unwrap_or_default();
        screen.feed(&bytes);
        let text = screen.text();
        if text.contains(needle) {
            run.ok(&format!("wizard screen shows {needle:?}"));
            return Ok(());
        }
        let raw = String::from_utf8_lossy(&bytes[screen.start.min(bytes.len())..]).into_owned();
        let bad = ALWAYS_BAD.iter().find(|b| raw.contains(*b));
        let exited = vm.wait_exit(Duration::from_millis(1)).is_ok();
        if bad.is_some() || exited || Instant::now() >= deadline {
            println!(
                "  FAIL  [{:>7.1}s] wizard screen shows {needle:?}",
                run.started.elapsed().as_secs_f64()
            );
            let why = match (bad, exited) {
                (Some(b), _) => format!("the serial console shows {b:?}"),
                (None, true) => "QEMU exited".to_string(),
                _ => format!("timed out after {secs}s"),
            };
            bail!(
                "{why} waiting for {needle:?} on the wizard's screen (serial log: {}); the screen:\n{text}",
                vm.serial_log().display()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// What the wizard drew on its 80x24 serial terminal, rebuilt by the
/// `vt100` crate from the serial log (from `start` on, fed as it grows;
/// escape sequences and UTF-8 cut by a read are carried over by the
/// parser).
struct Screen {
    parser: vt100::Parser,
    /// Where in the serial log the emulation started, and how far it got.
    start: usize,
    fed: usize,
}

const ROWS: std::num::NonZeroU16 = std::num::NonZeroU16::new(24).unwrap();
const COLS: std::num::NonZeroU16 = std::num::NonZeroU16::new(80).unwrap();

impl Screen {
    fn new(start: usize) -> Screen {
        Screen {
            parser: vt100::Parser::new(ROWS, COLS, 0),
            start,
            fed: start,
        }
    }

    fn text(&self) -> String {
        self.parser.screen().contents()
    }

    /// Feeds the part of the whole log not seen yet.
    fn feed(&mut self, log: &[u8]) {
        if log.len() <= self.fed {
            return;
        }
        self.parser.process(&log[self.fed..]);
        self.fed = log.len();
    }
}

#[cfg(test)]
mod tests {
    use super::Screen;

    #[test]
    fn screen_rebuilds_text_drawn_in_pieces_with_cursor_moves() {
        let mut s = Screen::new(0);
        // A first frame, then a diff that rewrites only the changed cells,
        // cut in the middle of an escape sequence and of a UTF-8 character.
        let mut log =
            b"boot noise\r\n\x1b[?1049h\x1b[2J\x1b[1;1H\x1b[1mstep 1/8: Welcome\x1b[0m".to_vec();
        s.feed(&log);
        assert!(s.text().starts_with("step 1/8: Welcome"), "{}", s.text());
        log.extend_from_slice(b"\x1b[1;6H2\x1b[1;11HDisk\x1b[K\x1b[3;");
        s.feed(&log);
        log.extend_from_slice(b"2H\xe2\x94\x80\xe2");
        s.feed(&log);
        log.extend_from_slice(b"\x94\x80 [vda_]");
        s.feed(&log);
        let text = s.text();
        assert!(text.starts_with("step 2/8: Disk\n"), "{text}");
        assert!(!text.contains("Welcome"), "{text}");
        assert_eq!(text.lines().nth(2), Some(" \u{2500}\u{2500} [vda_]"));
    }

    /// The answer files the e2e runs install with are valid, and say which
    /// Linux VM they get: the test guest by name, Debian with its user.
    #[test]
    fn e2e_answers_name_their_linux_vm() {
        use rayos_install::answers::{Answers, LinuxSystem};
        let a = Answers::parse("e2e", &super::ANSWERS).unwrap();
        assert_eq!(a.linux.system, Some(LinuxSystem::TestGuest));
        let d = Answers::parse("debian", &crate::e2e_debian::answers()).unwrap();
        assert_eq!(d.linux.system, None);
        assert_eq!(d.linux.user.as_deref(), Some("alice"));
        assert!(d.linux.password_hash.is_some());
        let w = Answers::parse("windows", &crate::e2e_windows::answers()).unwrap();
        assert_eq!(w.linux.system, Some(LinuxSystem::TestGuest));
    }
}
