//! `cargo xtask media`: the recipe of the RayOS boot media. Fetches the
//! Debian packages by name into `.cache/`, builds the initramfs (the whole
//! OS: `rayos`, kernel modules, QEMU and firmware, swtpm, filesystem tools,
//! systemd-boot, the bundled test guest), assembles the three UKIs
//! (installer, installed, recovery) and writes the ISO, the USB image,
//! the Debian VM image (`crate::linux_vm`) and `build/manifest.json`. The mechanics live in `rayos-image`; this file
//! only says what goes where. Layout and decisions: docs/media.md.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rayos_base::uki_name;
use rayos_image::debs::{self, Deb};
use rayos_image::media::{self, EspContents};
use rayos_image::modules::ModuleIndex;
use rayos_image::{Compression, Initramfs, UkiParts, test_guest, uki};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// Output directory.
    #[arg(long, default_value = "build")]
    pub out: PathBuf,
    /// Use this `rayos` binary instead of building it (`cargo build --release -p rayos`).
    #[arg(long)]
    pub rayos: Option<PathBuf>,
    /// zstd level of the initramfs (1 fast .. 19 small).
    #[arg(long, default_value_t = 19)]
    pub zstd_level: u8,
    /// The Debian package cache.
    #[arg(long, default_value = ".cache")]
    pub cache: PathBuf,
    /// Make the serial port `/dev/console` (headless machines, debugging):
    /// `console=tty0 console=ttyS0,115200` instead of the screen last.
    #[arg(long)]
    pub serial_console: bool,
}

/// Kernel command lines of the three UKIs; they differ only in the mode.
/// `/dev/console` is the last `console=` (the screen, for a person at the
/// machine); the kernel log goes to both. `printk.devkmsg=on` lifts the
/// rate limit on `/dev/kmsg`, so every line PID 1 logs there (markers
/// included) reaches the serial console too.
pub const CONSOLE: &str = "console=ttyS0,115200 console=tty0 printk.devkmsg=on";
/// [`CONSOLE`] with the serial port as `/dev/console` (`--serial-console`).
pub const SERIAL_CONSOLE: &str = "console=tty0 console=ttyS0,115200 printk.devkmsg=on";

/// Packages fetched by name (the kernel image package is resolved from
/// `linux-image-amd64` at build time and added in front).
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-common",
    "qemu-system-data",
    "qemu-utils",
    "seabios",
    "ipxe-qemu",
    "ovmf",
    "swtpm",
    "swtpm-libs",
    "libtpms0",
    "e2fsprogs",
    "dosfstools",
    "mtools",
    "gdisk",
    "systemd-boot-efi",
    "zstd",
    "busybox-static",
    "tzdata",
    // console keymaps, compiled at build time (rayos_init::keymap)
    "kbd",
    "console-data",
];

/// Kernel modules RayOS needs; `dir:` takes every module below a directory.
/// Dependencies and soft dependencies are added from modules.dep/softdep.
const MODULES: &[&str] = &[
    // storage
    "ahci",
    "ata_piix",
    "nvme",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "sr_mod",
    "usb-storage",
    "uas",
    "xhci_pci",
    "xhci_hcd",
    "ehci_pci",
    "ehci_hcd",
    "ohci_pci",
    "uhci_hcd",
    "sdhci_pci",
    "mmc_block",
    "loop",
    // input
    "evdev",
    "hid-generic",
    "usbhid",
    "hid_multitouch",
    "uinput",
    "i2c_hid_acpi",
    "psmouse",
    "virtio_input",
    "atkbd",
    // display
    "drm",
    "virtio-gpu",
    "bochs",
    // virtualisation
    "kvm",
    "kvm_intel",
    "kvm_amd",
    "tun",
    "vhost_net",
    "vhost_vsock",
    // filesystems
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_ascii",
    "nls_utf8",
    "ext4",
    "isofs",
    "efivarfs",
    // installation media people bring (`rayos media`): exFAT sticks, UDF
    // (Windows ISOs). Debian 12's kernel has no ntfs3 (CONFIG_NTFS3_FS is
    // off): NTFS sticks are listed but not read (docs/windows.md).
    "exfat",
    "udf",
    // TPM, consoles, virtio, power button, network
    "tpm_crb",
    "tpm_tis",
    "virtio_console",
    "virtio_net",
    "virtio_pci",
    "virtio_rng",
    "button",
    "e1000e",
];

/// Modules the bundled test guest loads (rayos-testkit's list): virtio
/// console for the agent channel, efivarfs, the ACPI power button, the
/// virtio NIC.
const GUEST_MODULES: &[&str] = rayos_testkit::guest::MODULES;

/// Programs from the unpacked packages: (package, path inside it).
const PROGRAMS: &[(&str, &str)] = &[
    ("qemu-system-x86", "usr/bin/qemu-system-x86_64"),
    ("qemu-utils", "usr/bin/qemu-img"),
    ("swtpm", "usr/bin/swtpm"),
    ("e2fsprogs", "sbin/mke2fs"),
    ("e2fsprogs", "sbin/e2fsck"),
    ("e2fsprogs", "sbin/debugfs"),
    ("e2fsprogs", "sbin/resize2fs"),
    ("e2fsprogs", "sbin/tune2fs"),
    ("dosfstools", "sbin/mkfs.fat"),
    ("dosfstools", "sbin/fsck.fat"),
    ("mtools", "usr/bin/mtools"),
    ("gdisk", "sbin/sgdisk"),
    ("zstd", "usr/bin/zstd"),
];

/// QEMU device modules loaded on demand (accelerator and display).
const QEMU_MODULES: &[&str] = &[
    "accel-tcg-x86_64.so",
    "hw-display-virtio-gpu.so",
    "hw-display-virtio-gpu-pci.so",
    "hw-display-virtio-vga.so",
    "hw-usb-host.so",
];

/// OVMF images for the VMs: plain, and Secure Boot with Microsoft keys.
const OVMF_FILES: &[&str] = &[
    "OVMF_CODE_4M.fd",
    "OVMF_VARS_4M.fd",
    "OVMF_CODE_4M.secboot.fd",
    "OVMF_VARS_4M.ms.fd",
];

/// Files of qemu-system-data for other architectures, left out.
const FOREIGN_QEMU_FILES: &[&str] = &[
    "skiboot.lid",
    "openbios-sparc64",
    "openbios-sparc32",
    "openbios-ppc",
    "slof.bin",
    "hppa-firmware.img",
    "opensbi-riscv64-generic-fw_dynamic.elf",
    "opensbi-riscv64-generic-fw_dynamic.bin",
    "palcode-clipper",
    "s390-netboot.img",
    "s390-ccw.img",
    "canyonlands.dtb",
    "bamboo.dtb",
    "petalogix-ml605.dtb",
    "petalogix-s3adsp1800.dtb",
    "u-boot.e500",
    "u-boot-sam460-20100605.bin",
    "QEMU,tcx.bin",
    "QEMU,cgthree.bin",
    "npcm7xx_bootrom.bin",
    "vof.bin",
    "vof-nvram.bin",
    "qemu_vga.ndrv",
];

/// Programs taken from the build host (util-linux is essential there).
const HOST_PROGRAMS: &[&str] = &["/usr/bin/partx"];

/// glibc's character-set converters mtools loads for FAT names (code pages
/// 850 and 437), with their configuration; from the build host's libc6.
const GCONV_DIR: &str = "/usr/lib/x86_64-linux-gnu/gconv";
const GCONV_FILES: &[&str] = &[
    "gconv-modules",
    "gconv-modules.d/gconv-modules-extra.conf",
    "IBM850.so",
    "IBM437.so",
];

pub fn run(args: Args) -> Result<()> {
    let built = build(&args)?;
    println!();
    println!("RayOS {} media in {}:", built.version, args.out.display());
    for (name, size) in &built.sizes {
        println!("  {name:<28} {:>8.1} MiB", *size as f64 / (1 << 20) as f64);
    }
    println!("  (built in {:.1} s)", built.seconds);
    Ok(())
}

/// What a media build produced.
pub struct Built {
    pub version: String,
    pub sizes: Vec<(String, u64)>,
    pub seconds: f64,
}

fn step(name: &str, started: Instant) {
    println!("[{:>6.1}s] {name}", started.elapsed().as_secs_f64());
}

pub fn build(args: &Args) -> Result<Built> {
    // The recipe runs apt-get, mkfs.fat, mtools, xorriso, depmod…: install
    // (as root) or name the missing packages before anything else.
    crate::deps::ensure()?;
    let t0 = Instant::now();
    let root = crate::root();
    let out = root.join(&args.out);
    let cache = root.join(&args.cache);
    let work = out.join("work");
    fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let version = env!("CARGO_PKG_VERSION").to_string();

    // 1. The rayos binary.
    let rayos = match &args.rayos {
        Some(p) => p.clone(),
        None => {
            step("building rayos (release)", t0);
            crate::run_cmd(Command::new("cargo").args(["build", "--release", "-p", "rayos"]))
                .context("cannot build the rayos binary; fix the build or pass --rayos PATH")?;
            root.join("target/release/rayos")
        }
    };
    anyhow::ensure!(
        rayos.is_file(),
        "rayos binary {} is missing",
        rayos.display()
    );

    // 2. Debian packages, fetched by name.
    step("fetching Debian packages into .cache/debs", t0);
    let kernel_pkg = debs::first_dependency("linux-image-amd64")?;
    let mut pkgs: BTreeMap<String, Deb> = BTreeMap::new();
    for name in std::iter::once(kernel_pkg.as_str()).chain(PACKAGES.iter().copied()) {
        let deb = debs::fetch(&cache, name).with_context(|| format!("cannot fetch {name}"))?;
        println!("    {:<28} {}", deb.package, deb.version);
        pkgs.insert(name.to_string(), deb);
    }
    let pkg_root = |name: &str| -> Result<&Path> {
        pkgs.get(name)
            .map(|d| d.root.as_path())
            .with_context(|| format!("package {name} not fetched"))
    };
    let kroot = pkg_root(&kernel_pkg)?.to_path_buf();
    let release = kernel_pkg.trim_start_matches("linux-image-").to_string();
    let vmlinuz = kroot.join(format!("boot/vmlinuz-{release}"));
    anyhow::ensure!(
        vmlinuz.is_file(),
        "{} holds no {}",
        kernel_pkg,
        vmlinuz.display()
    );
    let roots: Vec<PathBuf> = pkgs.values().map(|d| d.root.clone()).collect();

    // 3. The initramfs.
    step("staging kernel modules (depmod)", t0);
    rayos_image::modules::ensure_index(&kroot, &release)?;
    let index = ModuleIndex::open(&kroot, &release)?;
    let resolved = index.resolve(MODULES)?;
    let modroot = work.join("modules");
    let staged = index.stage(&resolved.files, &modroot)?;
    println!(
        "    {} module files ({} of the wanted built in)",
        resolved.files.len(),
        resolved.builtin.len()
    );

    step("building the test guest", t0);
    let busybox = pkg_root("busybox-static")?.join("bin/busybox");
    let guest_initrd = work.join("guest-initrd.img");
    // The same guest the VM tests use (rayos-testkit's /init: ready marker,
    // COUNTER lines, ACPI power button powers it off), built from the
    // fetched busybox and kernel modules instead of the host's.
    let guest_mods = rayos_testkit::guest::module_load_order(&index.dir, GUEST_MODULES)
        .map_err(|e| anyhow::anyhow!("guest modules: {e}"))?;
    let guest_mods: Vec<(String, PathBuf)> = guest_mods
        .into_iter()
        .map(|p| {
            (
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                p,
            )
        })
        .collect();
    let names: Vec<String> = guest_mods.iter().map(|(n, _)| n.clone()).collect();
    let script = rayos_testkit::guest::init_script(&names);
    test_guest::guest_initramfs_with(&busybox, &script, &guest_mods)?
        .write(&guest_initrd, Compression::Gzip)?;

    step("building the initramfs", t0);
    let mut ird = Initramfs::usr_merged();
    let mut host_libs = Vec::new();
    host_libs.extend(ird.elf("usr/bin/rayos", &rayos)?);
    ird.symlink("init", "/usr/bin/rayos")?;
    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "mnt",
        "var",
        "var/rayos",
        "etc",
        "root",
    ] {
        ird.dir(d, 0o755)?;
    }
    ird.file("etc/os-release", 0o644, uki::os_release(&version))?;
    ird.symlink("usr/lib/os-release", "../../etc/os-release")?;
    ird.copy_tree(&format!("usr/lib/modules/{release}"), &staged)?;
    for (pkg, path) in PROGRAMS {
        let host = pkg_root(pkg)?.join(path);
        host_libs.extend(
            ird.elf_from(path, &host, &roots)
                .with_context(|| format!("adding {path}"))?,
        );
    }
    for host in HOST_PROGRAMS {
        host_libs.extend(ird.elf(host, Path::new(host))?);
    }
    for f in GCONV_FILES {
        let host = Path::new(GCONV_DIR).join(f);
        let dest = format!("{}/{f}", GCONV_DIR.trim_start_matches('/'));
        if f.ends_with(".so") {
            host_libs.extend(ird.elf(&dest, &host)?);
        } else {
            ird.copy(&dest, &host, Some(0o644))?;
        }
    }
    ird.symlink("usr/sbin/mkfs.ext4", "mke2fs")?;
    ird.symlink("usr/sbin/fsck.ext4", "e2fsck")?;
    ird.symlink("usr/sbin/mkfs.vfat", "mkfs.fat")?;
    ird.symlink("usr/sbin/fsck.vfat", "fsck.fat")?;
    for link in [
        "mcopy", "mmd", "mtype", "mdir", "mattrib", "mdel", "mren", "mrd", "mlabel", "minfo",
        "mformat",
    ] {
        ird.symlink(&format!("usr/bin/{link}"), "mtools")?;
    }
    ird.copy(
        "etc/mke2fs.conf",
        &pkg_root("e2fsprogs")?.join("etc/mke2fs.conf"),
        None,
    )?;
    let qemu_lib = pkg_root("qemu-system-common")?.join("usr/lib/x86_64-linux-gnu/qemu");
    for m in QEMU_MODULES {
        let dest = format!("usr/lib/x86_64-linux-gnu/qemu/{m}");
        host_libs.extend(ird.elf_from(&dest, &qemu_lib.join(m), &roots)?);
    }
    ird.copy_tree(
        "usr/share/qemu",
        &pkg_root("qemu-system-data")?.join("usr/share/qemu"),
    )?;
    // Firmware of other architectures' machines: never used by an x86 host.
    for other in FOREIGN_QEMU_FILES {
        ird.remove(&format!("usr/share/qemu/{other}"));
    }
    ird.copy_tree(
        "usr/share/seabios",
        &pkg_root("seabios")?.join("usr/share/seabios"),
    )?;
    ird.copy_tree("usr/lib/ipxe", &pkg_root("ipxe-qemu")?.join("usr/lib/ipxe"))?;
    // Every zone of tzdata (1.3 MB, about 0.2 MB compressed): the
    // machine's timezone becomes /etc/localtime (docs/init.md `machine`).
    ird.copy_tree(
        "usr/share/zoneinfo",
        &pkg_root("tzdata")?.join("usr/share/zoneinfo"),
    )?;
    // The console layouts: kbd's loadkeys compiles console-data's keymaps
    // into the binary format PID 1 loads (about 2.5 KB each).
    let loadkeys = pkg_root("kbd")?.join("bin/loadkeys");
    let keymaps = pkg_root("console-data")?.join("usr/share/keymaps/i386");
    for (layout, src) in rayos_init::keymap::LAYOUTS {
        let out = std::process::Command::new(&loadkeys)
            .arg("-b")
            .arg(keymaps.join(format!("{src}.kmap.gz")))
            .output()
            .with_context(|| format!("running {}", loadkeys.display()))?;
        if !out.status.success() {
            bail!(
                "loadkeys -b {src}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        rayos_init::keymap::parse(&out.stdout)
            .map_err(|e| anyhow::anyhow!("loadkeys -b {src}: {e}"))?;
        ird.file(
            &format!(
                "{}/{layout}.bmap",
                rayos_init::keymap::DIR.trim_start_matches('/')
            ),
            0o644,
            out.stdout,
        )?;
    }
    let ovmf = pkg_root("ovmf")?.join("usr/share/OVMF");
    for f in OVMF_FILES {
        let real = fs::canonicalize(ovmf.join(f)).with_context(|| format!("ovmf has no {f}"))?;
        ird.copy(&format!("usr/share/OVMF/{f}"), &real, Some(0o644))?;
    }
    let sd_boot = pkg_root("systemd-boot-efi")?.join("usr/lib/systemd/boot/efi");
    ird.copy(
        "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        &sd_boot.join("systemd-bootx64.efi"),
        Some(0o644),
    )?;
    ird.copy("usr/share/rayos/guest/vmlinuz", &vmlinuz, Some(0o644))?;
    ird.copy(
        "usr/share/rayos/guest/initrd.img",
        &guest_initrd,
        Some(0o644),
    )?;
    host_libs.sort();
    host_libs.dedup();
    // Every file taken from the build host, for the manifest's package list.
    let mut host_files: Vec<PathBuf> = host_libs
        .iter()
        .filter(|p| !roots.iter().any(|r| p.starts_with(r)))
        .cloned()
        .collect();
    host_files.extend(HOST_PROGRAMS.iter().map(PathBuf::from));
    host_files.extend(GCONV_FILES.iter().map(|f| Path::new(GCONV_DIR).join(f)));

    let cpio_len = ird.write_cpio(std::io::sink())?;
    let initrd = work.join("initrd.img");
    step(
        &format!("compressing the initramfs (zstd -{})", args.zstd_level),
        t0,
    );
    let initrd_len = ird.write(&initrd, Compression::Zstd(args.zstd_level))?;
    // The installed UKI boots every day: lz4, which the kernel unpacks in
    // about half zstd's time (1.2-1.6 s against 2.3-3.7 s for this cpio
    // under TCG), for 13 MiB more than zstd -19 on the system partition
    // and the media. The installer and recovery UKIs stay small.
    step("compressing the installed-mode initramfs (lz4 -l -9)", t0);
    let initrd_lz4 = work.join("initrd.lz4");
    let initrd_lz4_len = ird.write(&initrd_lz4, Compression::Lz4)?;
    println!(
        "    {} entries, {:.1} MiB -> {:.1} MiB",
        ird.paths().count(),
        cpio_len as f64 / (1 << 20) as f64,
        initrd_len as f64 / (1 << 20) as f64
    );

    // 4. The UKIs.
    step("assembling the UKIs", t0);
    let stub = sd_boot.join("linuxx64.efi.stub");
    let mut ukis = BTreeMap::new();
    for (mode, file) in [
        ("installed", "rayos.efi"),
        ("installer", "rayos-installer.efi"),
        ("recovery", "rayos-recovery.efi"),
    ] {
        let path = out.join(file);
        let initrd = if mode == "installed" {
            &initrd_lz4
        } else {
            &initrd
        };
        let console = if args.serial_console {
            SERIAL_CONSOLE
        } else {
            CONSOLE
        };
        let cmdline = format!("{console} rayos.mode={mode}");
        uki::assemble(
            &UkiParts {
                stub: stub.clone(),
                kernel: vmlinuz.clone(),
                initrd: initrd.clone(),
                cmdline: cmdline.clone(),
                osrel: uki::os_release(&version),
                uname: Some(release.clone()),
            },
            &path,
        )?;
        ukis.insert(mode, (path, cmdline));
    }

    // 5. The Debian VM image (cached in .cache/linux-vm/ by its recipe),
    // shipped beside the UKIs, not inside them.
    step("the Debian VM image (docs/linux-vm.md)", t0);
    let (vm_img, vm_shipped) = crate::linux_vm::build(&crate::linux_vm::Args {
        out: args.out.clone(),
        ..Default::default()
    })?;

    // 6. The media.
    step("building the ESP, ISO and USB image", t0);
    let installed = &ukis["installed"].0;
    let recovery = &ukis["recovery"].0;
    let payload_manifest = work.join("manifest.json");
    let mut manifest = json!({
        "rayos_version": version,
        "kernel_release": release,
        "cmdlines": ukis.iter().map(|(m, (_, c))| (m.to_string(), json!(c))).collect::<serde_json::Map<_, _>>(),
        "packages": pkgs.values().map(|d| json!({
            "package": d.package, "version": d.version, "architecture": d.architecture,
            "file": d.file.file_name().map(|f| f.to_string_lossy().into_owned()), "sha256": d.sha256,
        })).collect::<Vec<_>>(),
        "host_libraries": host_libs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "host_packages": host_packages(&host_files),
        "kernel_modules": resolved.files.len(),
        "initramfs": { "entries": ird.paths().count(), "cpio_bytes": cpio_len, "zstd_bytes": initrd_len, "zstd_level": args.zstd_level, "lz4_bytes": initrd_lz4_len },
    });
    let mut outputs = serde_json::Map::new();
    for (path, _) in ukis.values() {
        outputs.insert(file_name(path), describe(path)?);
    }
    manifest["outputs"] = json!(outputs.clone());
    fs::write(&payload_manifest, serde_json::to_string_pretty(&manifest)?)?;
    // The system images sit where an installer finds them on any medium:
    // `/EFI/Linux/` of the USB image's ESP and of the ISO 9660 tree. The
    // installer UKI boots through a type #1 entry from `/rayos/`, so the
    // installer never mistakes it for the system image.
    let installer_path = format!("rayos/rayos-installer-{version}.efi");
    let payload = vec![
        (
            format!("EFI/Linux/{}", uki_name::plain(&version)),
            installed.clone(),
        ),
        (
            format!("EFI/Linux/{}", uki_name::recovery(&version)),
            recovery.clone(),
        ),
        ("rayos/manifest.json".to_string(), payload_manifest.clone()),
        // Where rayos init finds it.
        (
            rayos_init::volumes::LINUX_VM_IMAGE.to_string(),
            vm_shipped.clone(),
        ),
    ];
    // The ISO's ESP holds only what boots (the payload is in the ISO 9660
    // tree); the USB image's ESP is the only filesystem there, so it holds
    // the payload too.
    let esp_for = |name: &str, payload: Vec<(String, PathBuf)>| -> Result<PathBuf> {
        let esp = work.join(name);
        let mut files = payload;
        files.push((installer_path.clone(), ukis["installer"].0.clone()));
        media::build_esp(
            &esp,
            &EspContents {
                systemd_boot: sd_boot.join("systemd-bootx64.efi"),
                loader_conf: media::loader_conf("rayos-installer.conf", 3),
                ukis: Vec::new(),
                entries: vec![(
                    "rayos-installer.conf".into(),
                    media::efi_entry(
                        &format!("RayOS {version} installer"),
                        &format!("/{installer_path}"),
                    ),
                )],
                payload: files,
            },
            &work,
        )?;
        rayos_image::fat::check(&esp)?;
        Ok(esp)
    };
    let iso = out.join("rayos-installer.iso");
    media::build_iso(&iso, &esp_for("efiboot-iso.img", Vec::new())?, &payload)?;
    let usb = out.join("rayos-installer-usb.img");
    media::build_usb(&usb, &esp_for("efiboot-usb.img", payload.clone())?)?;
    media::verify_gpt(&usb)?;
    for p in [&iso, &usb] {
        outputs.insert(file_name(p), describe(p)?);
    }
    outputs.insert(file_name(&vm_shipped), describe(&vm_shipped)?);
    manifest["linux_vm"] = json!({
        "recipe": vm_img.manifest.key,
        "suite": vm_img.manifest.suite,
        "kernel": vm_img.manifest.kernel,
        "packages": vm_img.manifest.packages.len(),
        "disk_bytes": vm_img.manifest.disk_bytes,
        "manifest": crate::linux_vm::SHIPPED_MANIFEST,
    });
    let seconds = t0.elapsed().as_secs_f64();
    manifest["outputs"] = json!(outputs);
    manifest["build_seconds"] = json!((seconds * 10.0).round() / 10.0);
    fs::write(
        out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    step("done", t0);

    let mut sizes = vec![("initramfs (zstd)".to_string(), initrd_len)];
    for p in [
        &ukis["installed"].0,
        &ukis["installer"].0,
        &ukis["recovery"].0,
        &iso,
        &usb,
        &vm_shipped,
    ] {
        sizes.push((file_name(p), fs::metadata(p)?.len()));
    }
    Ok(Built {
        version,
        sizes,
        seconds,
    })
}

/// The build host's Debian packages (and exact versions) owning `files`.
fn host_packages(files: &[PathBuf]) -> serde_json::Value {
    let mut owners = std::collections::BTreeSet::new();
    for f in files {
        // Merged /usr: dpkg knows a file under the path its package ships,
        // which may be the /lib or the /usr/lib spelling of what ldd printed.
        let text = f.to_string_lossy();
        let other = match text.strip_prefix("/usr") {
            Some(rest) => rest.to_string(),
            None => format!("/usr{text}"),
        };
        for candidate in [text.to_string(), other] {
            let Ok(out) = Command::new("dpkg").arg("-S").arg(&candidate).output() else {
                continue;
            };
            let found: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(pkg, _)| pkg.split(':').next().unwrap_or(pkg).to_string())
                .collect();
            if !found.is_empty() {
                owners.extend(found);
                break;
            }
        }
    }
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${Version}\n"])
        .args(&owners)
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    json!(
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(p, v)| json!({ "package": p, "version": v }))
            .collect::<Vec<_>>()
    )
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn describe(p: &Path) -> Result<serde_json::Value> {
    let size = fs::metadata(p)
        .with_context(|| format!("cannot stat {}", p.display()))?
        .len();
    let sha256 = debs::sha256_file(p)?;
    Ok(json!({ "size": size, "sha256": sha256 }))
}

/// The media `build` writes, for e2e: (UKI, ISO, USB image) below `out`.
/// The media under `media` (relative to the workspace), built first (fast
/// compression) when `rebuild` or when any is missing; the e2e runs' entry.
pub fn ensure(media: &Path, rebuild: bool) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let out = crate::root().join(media);
    if rebuild || outputs(&out).is_err() {
        println!("== building the media (fast compression)");
        build(&Args {
            out: media.to_path_buf(),
            rayos: None,
            zstd_level: 3,
            cache: ".cache".into(),
            serial_console: false,
        })?;
    }
    outputs(&out)
}

pub fn outputs(out: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let paths = (
        out.join("rayos.efi"),
        out.join("rayos-installer.iso"),
        out.join("rayos-installer-usb.img"),
    );
    for p in [&paths.0, &paths.1, &paths.2] {
        if !p.is_file() {
            bail!("{} is missing: run `cargo xtask media` first", p.display());
        }
    }
    Ok(paths)
}
