//! The Debian VM image: RayOS's Linux subsystem out of the box. A Debian 12
//! (bookworm) system built from Debian's packages with `mmdebstrap`, put on
//! a GPT disk image with an EFI system partition and an ext4 root, booted
//! by OVMF through systemd-boot *inside the guest*, so the guest's own
//! `apt upgrade` installs new kernels as on any Debian machine.
//!
//! Protocol of a build ([`build`]), all without loop devices or mounting
//! the image:
//! 1. `mmdebstrap --variant=minbase` into a directory, with the packages of
//!    [`PACKAGES`] and the files of [`overlay_files`]; its customize hook
//!    runs `guest/customize.sh` in the new root with a private tmpfs on
//!    `/boot/efi` (`unshare --mount`): `bootctl install` and
//!    `kernel-install add` write systemd-boot and the kernel's type #1
//!    entry there, exactly as the guest's kernel hooks do later;
//! 2. the tmpfs's contents become a FAT32 image (`mkfs.fat` + mtools),
//!    the root directory an ext4 image (`mkfs.ext4 -d`);
//! 3. both go into a raw GPT disk image written by `rayos-disk` (ESP and
//!    an x86-64 root partition, which `systemd-repart` grows to the disk's
//!    size at the first boot, `x-systemd.growfs` then the filesystem).
//!
//! Builds are cached under `<cache>/linux-vm/<key>/` ([`ensure`]); the key
//! hashes the whole recipe (packages, mirrors, files, scripts, layout), so
//! a changed recipe builds anew and an unchanged one is reused. The exact
//! package versions go into the image's [`Manifest`].
//!
//! Limits: needs root (mmdebstrap's root mode, `unshare`, `chroot`) and a
//! Debian mirror; the image is x86-64 only; "reproducible" means the same
//! recipe and package versions give the same files (see docs/linux-vm.md),
//! not identical bytes (file times differ).

pub mod disk;

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::fat::{self, FatError, FatTree};
use crate::tools::{self, ToolError};

/// Bumped when the build changes in a way the recipe text does not show.
pub const FORMAT: u32 = 1;
/// The Debian release the image is built from (Debian 12).
pub const SUITE: &str = "bookworm";
/// apt sources of the build and of the guest (`/etc/apt/sources.list`).
pub const MIRRORS: &[&str] = &[
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
];
/// Packages on top of `minbase` (Essential and Priority: required).
pub const PACKAGES: &[&str] = &[
    // the system and its devices
    "systemd-sysv",
    "udev",
    // the system bus and login sessions (hostnamectl, timedatectl,
    // loginctl and systemctl for a non-root user need them)
    "dbus",
    "libpam-systemd",
    "linux-image-cloud-amd64",
    // initramfs compression: lz4 unpacks several times faster than zstd,
    // which counts under TCG (docs/linux-vm.md, "Boot time")
    "lz4",
    // boot loader in the guest's ESP (its kernel hooks keep it current)
    "systemd-boot",
    // RayOS talks to the guest through the agent: clock, shutdown, info
    "qemu-guest-agent",
    // hwclock: qemu-ga's guest-set-time runs it after setting the clock
    "util-linux-extra",
    // first-boot settings
    "sudo",
    "locales",
    "keyboard-configuration",
    "console-setup",
    // networking (DHCP on eth0 when a NIC exists), remote login (off)
    "ifupdown",
    "isc-dhcp-client",
    "iproute2",
    "openssh-server",
    "ca-certificates",
    // for a person at the console
    "less",
    "nano",
    "bash-completion",
];

/// The disk layout. Fixed identifiers make the recipe (and so the
/// kernel command line and fstab inside it) the same for every build;
/// each VM is its own machine, so sharing them across VMs is harmless.
pub const DISK_GUID: Uuid = Uuid::from_u128(0x7c1f_4b0e_52a9_4d6e_9e63_3a1f_0c2d_5b01);
/// The ESP's `PARTUUID`.
pub const ESP_PARTUUID: Uuid = Uuid::from_u128(0x7c1f_4b0e_52a9_4d6e_9e63_3a1f_0c2d_5b02);
/// The root partition's `PARTUUID`.
pub const ROOT_PARTUUID: Uuid = Uuid::from_u128(0x7c1f_4b0e_52a9_4d6e_9e63_3a1f_0c2d_5b03);
/// ext4 UUID of the root filesystem (`root=UUID=` on the kernel command line).
pub const ROOT_FS_UUID: Uuid = Uuid::from_u128(0x5f2a_d3c4_7f1e_4c4b_9d3a_2b8f_0f6c_1e01);
/// The root filesystem's label.
pub const ROOT_FS_LABEL: &str = "debian-root";
/// The ESP's FAT volume label.
pub const ESP_FAT_LABEL: &str = "DEBIAN-ESP";
/// 512 MiB: FAT32, room for several kernels with their initramfs.
pub const ESP_BYTES: u64 = 512 << 20;
/// The smallest root filesystem the image gets (grown at first boot).
pub const MIN_ROOT_BYTES: u64 = 1536 << 20;
/// `/etc/kernel/entry-token`: entries are `loader/entries/debian-<kver>.conf`.
pub const ENTRY_TOKEN: &str = "debian";
/// Host name until the first boot sets the configured one.
pub const DEFAULT_HOSTNAME: &str = "debian";
/// The guest's `/etc/kernel/cmdline` (kernel-install writes it into every
/// entry): both consoles get a login prompt — the screen (tty1, what the
/// presenter shows) and the serial port (`rayos vm console`); the serial
/// port is `/dev/console`. `net.ifnames=0`: the one NIC is `eth0`.
/// `quiet`: only kernel warnings reach the consoles; every line printed on
/// the emulated serial port and drawn on the framebuffer console costs
/// boot time without KVM (`dmesg` still has them all).
pub fn kernel_cmdline() -> String {
    format!("root=UUID={ROOT_FS_UUID} ro quiet console=tty0 console=ttyS0,115200 net.ifnames=0")
}

/// The modules the initramfs carries (`MODULES=list`): what finds the root
/// on the disks rayos-vmm gives a Linux VM (virtio-blk; virtio-scsi and
/// SCSI disks for a VM moved elsewhere; NVMe and ext4 are built into the
/// cloud kernel) and `qemu_fw_cfg`, which systemd needs when PID 1 starts
/// to import the first-boot credentials. Everything else udev loads from
/// the root filesystem.
pub const INITRAMFS_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "sd_mod",
    "qemu_fw_cfg",
];

/// Printed on the guest's consoles when the first-boot script has run.
pub const FIRSTBOOT_DONE: &str = "RAYOS_GUEST_FIRSTBOOT_DONE";
/// The systemd credentials the first-boot script reads, one value each
/// (`guest/rayos-firstboot.sh`); rayosd passes them on fw_cfg.
pub const CREDENTIALS: &[&str] = &[
    "rayos.user",
    "rayos.password-hash",
    "rayos.ssh-authorized-key",
    "rayos.hostname",
    "rayos.timezone",
    "rayos.locale",
    "rayos.keyboard",
];

const CUSTOMIZE: &str = include_str!("guest/customize.sh");
const FIRSTBOOT: &str = include_str!("guest/rayos-firstboot.sh");
const FIRSTBOOT_UNIT: &str = include_str!("guest/rayos-firstboot.service");
const SERIAL_GETTY_UNIT: &str = include_str!("guest/serial-getty@ttyS0.service");

/// File name of the disk image in a build directory.
pub const DISK_FILE: &str = "debian-12.img";
/// File name of the build's manifest in a build directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Why the Debian VM image could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum LinuxVmError {
    /// The build needs root and does not run as root.
    #[error("building the Debian VM image needs root (mmdebstrap, chroot): run as root")]
    NotRoot,
    /// A file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A build step's tool failed.
    #[error("{step} failed")]
    Tool {
        /// The step.
        step: &'static str,
        /// What failed.
        #[source]
        source: ToolError,
    },
    /// The ESP image could not be built.
    #[error("cannot build the ESP image")]
    Fat(#[from] FatError),
    /// The disk image could not be assembled.
    #[error("cannot assemble the disk image")]
    Disk(#[from] disk::DiskError),
    /// The built root is not as the recipe expects; says what differs.
    #[error("the built system is not as expected: {0}")]
    Check(String),
    /// The manifest file is not one of this format.
    #[error("{path} is not a Debian VM image manifest")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// One installed package of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageVersion {
    /// The package's name.
    pub package: String,
    /// Its version.
    pub version: String,
    /// Its architecture (`amd64`, `all`).
    pub architecture: String,
}

/// What a build made, and from what (`manifest.json` beside the image).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest's format ([`FORMAT`]).
    pub format: u32,
    /// The recipe key (also the cache directory's name).
    pub key: String,
    /// The Debian release ([`SUITE`]).
    pub suite: String,
    /// The apt sources used.
    pub mirrors: Vec<String>,
    /// The packages the recipe asks for on top of `minbase`.
    pub requested: Vec<String>,
    /// Versions pinned by the build options (empty: the mirror's newest).
    #[serde(default)]
    pub pinned: Vec<PackageVersion>,
    /// `mmdebstrap --version` of the build.
    pub mmdebstrap: String,
    /// The kernel the image boots (`uname -r`).
    pub kernel: String,
    /// The kernel command line the image boots with.
    pub kernel_cmdline: String,
    /// `/etc/kernel/entry-token` ([`ENTRY_TOKEN`]).
    pub entry_token: String,
    /// The disk image's size in bytes.
    pub disk_bytes: u64,
    /// The ESP's size in bytes.
    pub esp_bytes: u64,
    /// The root partition's size in bytes.
    pub root_bytes: u64,
    /// The root filesystem's UUID.
    pub root_fs_uuid: Uuid,
    /// The ESP's `PARTUUID`.
    pub esp_partuuid: Uuid,
    /// The root partition's `PARTUUID`.
    pub root_partuuid: Uuid,
    /// Every installed package, sorted by name.
    pub packages: Vec<PackageVersion>,
    /// How long the build took, in seconds.
    pub build_seconds: f64,
}

/// A built image in the cache.
#[derive(Debug, Clone)]
pub struct Image {
    /// The build directory (named by the recipe key).
    pub dir: PathBuf,
    /// The raw disk image (sparse).
    pub disk: PathBuf,
    /// What the build made, and from what.
    pub manifest: Manifest,
}

/// How to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Replaces the `http://deb.debian.org/` of [`MIRRORS`] (for example a
    /// snapshot.debian.org URL, to rebuild from the same archive state).
    pub mirror: Option<String>,
    /// Exact versions to install (from an earlier manifest's `packages`).
    pub pins: Vec<PackageVersion>,
}

impl BuildOptions {
    fn mirrors(&self) -> Vec<String> {
        MIRRORS
            .iter()
            .map(|m| match &self.mirror {
                Some(base) => m.replace(
                    "http://deb.debian.org/",
                    &format!("{}/", base.trim_end_matches('/')),
                ),
                None => m.to_string(),
            })
            .collect()
    }
}

/// A file the recipe puts into the root: path, mode, contents.
pub struct OverlayFile {
    /// The path in the root filesystem, without a leading `/`.
    pub path: String,
    /// Its permission bits.
    pub mode: u32,
    /// Its contents.
    pub contents: String,
}

/// Units of the image that run at boot and set their own start timeout
/// (`TimeoutSec=` of 30-180 s in Debian 12's unit files), so that
/// `DefaultTimeoutStartSec` does not apply to them: each gets a drop-in
/// with the same 30 minutes. Found by listing the `Timeout*` settings of
/// the image's units; a nested boot without it failed
/// `systemd-sysctl.service` after its 90 s, and one with it
/// `networking.service` after its 5 minutes (`ifup -a` with no NIC).
/// `ifup@.service` is the template behind `allow-hotplug eth0`: a drop-in
/// for the template reaches every instance.
pub const OWN_TIMEOUT_UNITS: &[&str] = &[
    "systemd-sysctl.service",
    "systemd-modules-load.service",
    "systemd-sysusers.service",
    "systemd-journal-flush.service",
    "systemd-binfmt.service",
    "systemd-machine-id-commit.service",
    "systemd-random-seed.service",
    "ifupdown-pre.service",
    "networking.service",
    "ifup@.service",
];

/// The files RayOS adds to Debian's packages.
pub fn overlay_files() -> Vec<OverlayFile> {
    let f = |path: &str, mode, contents: String| OverlayFile {
        path: path.to_string(),
        mode,
        contents,
    };
    let mut files = vec![
        f("etc/kernel/cmdline", 0o644, kernel_cmdline() + "\n"),
        f("etc/kernel/entry-token", 0o644, format!("{ENTRY_TOKEN}\n")),
        f(
            "etc/fstab",
            0o644,
            format!(
                "# <file system> <mount point> <type> <options> <dump> <pass>\n\
                 UUID={ROOT_FS_UUID} / ext4 errors=remount-ro,x-systemd.growfs 0 1\n\
                 PARTUUID={ESP_PARTUUID} /boot/efi vfat umask=0077 0 2\n"
            ),
        ),
        f("etc/hostname", 0o644, format!("{DEFAULT_HOSTNAME}\n")),
        f(
            "etc/hosts",
            0o644,
            format!(
                "127.0.0.1\tlocalhost\n127.0.1.1\t{DEFAULT_HOSTNAME}\n\n\
                 ::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
            ),
        ),
        f(
            "etc/network/interfaces.d/eth0",
            0o644,
            "# DHCP on the VM's NIC when RayOS's policy gives it one.\n\
             allow-hotplug eth0\niface eth0 inet dhcp\n"
                .into(),
        ),
        f(
            "etc/repart.d/50-root.conf",
            0o644,
            "# Grow the root partition to the end of the disk at boot\n\
             # (RayOS makes the VM's disk bigger than the image).\n\
             [Partition]\nType=root\n"
                .into(),
        ),
        f(
            "etc/systemd/system-preset/10-rayos.preset",
            0o644,
            "# systemd applies presets on a machine's first boot (machine-id\n\
             # \"uninitialized\"); Debian's default is to enable everything.\n\
             # SSH stays off until the first-boot settings bring a key.\n\
             # e2scrub checks ext4 on LVM snapshots; this VM has no LVM, and\n\
             # e2scrub_reap alone took 4-18 s of each boot without KVM.\n\
             disable ssh.service\ndisable e2scrub_reap.service\ndisable e2scrub_all.timer\n\
             enable rayos-firstboot.service\n"
                .into(),
        ),
        f(
            "etc/initramfs-tools/conf.d/rayos-vm.conf",
            0o644,
            "# RayOS's Debian VM: a small initramfs that unpacks fast. Only the\n\
             # modules in /etc/initramfs-tools/modules (the VM's disk and fw_cfg),\n\
             # lz4 instead of zstd. Kernels installed later by apt get the same.\n\
             MODULES=list\nCOMPRESS=lz4\n"
                .into(),
        ),
        f(
            "etc/initramfs-tools/modules",
            0o644,
            format!(
                "# Loaded by the initramfs (MODULES=list in conf.d/rayos-vm.conf).\n{}\n",
                INITRAMFS_MODULES.join("\n")
            ),
        ),
        f(
            "etc/systemd/system.conf.d/50-rayos-vm.conf",
            0o644,
            "# RayOS's Debian VM may run without KVM, even emulated inside an\n\
             # emulated machine, where early boot units take minutes instead of\n\
             # seconds: systemd's 90 s defaults would kill them (journald, udevd)\n\
             # and leave the root read-only. A unit that really hangs now holds\n\
             # up the boot for 30 minutes before it fails (docs/linux-vm.md).\n\
             [Manager]\nDefaultTimeoutStartSec=30min\nDefaultDeviceTimeoutSec=30min\n"
                .into(),
        ),
        // systemd kills its generators when together they take more than
        // 90 s (compiled in, not a setting), and a killed generator leaves
        // nothing behind, silently. Nested, they did: without
        // systemd-fstab-generator nothing pulled in systemd-remount-fs and
        // the root stayed read-only; without systemd-getty-generator the
        // serial port had no login prompt. These two are therefore asked
        // for here, whatever the generators manage (docs/linux-vm.md,
        // "Nested").
        f(
            "etc/systemd/system/local-fs.target.d/50-rayos-remount-root.conf",
            0o644,
            "# Make the root read-write (the kernel mounts it read-only) even when\n\
             # systemd-fstab-generator, which normally asks for this, was killed\n\
             # by systemd's 90 s limit for generators (a nested, emulated boot).\n\
             [Unit]\nWants=systemd-remount-fs.service\n"
                .into(),
        ),
        f(
            "etc/systemd/system/getty.target.d/50-rayos-serial-getty.conf",
            0o644,
            "# A login prompt on the serial console (/dev/console, what\n\
             # `rayos vm console` shows) even when systemd-getty-generator, which\n\
             # normally starts it for console=ttyS0, was killed by systemd's 90 s\n\
             # limit for generators (a nested, emulated boot).\n\
             [Unit]\nWants=serial-getty@ttyS0.service\n"
                .into(),
        ),
        // systemd's serial-getty@.service binds the getty to
        // dev-ttyS0.device, which exists only once udev has processed the
        // port; nested run 4 timed that wait out (30 min after systemd
        // queued it) and the serial console never had a login prompt. The
        // kernel makes /dev/ttyS0 itself (devtmpfs), which is all agetty
        // needs: this instance's own unit (it replaces the template for
        // ttyS0) is the template's settings without the device binding.
        f(
            "etc/systemd/system/serial-getty@ttyS0.service",
            0o644,
            SERIAL_GETTY_UNIT.into(),
        ),
        // dbus-daemon closes a connection that has not authenticated within
        // 30 s and gives a bus-activated service 25 s to appear; nested, it
        // closed systemd's own connection (run 4: "Got disconnect on API
        // bus"), which logind and login sessions go through.
        f(
            "etc/dbus-1/system-local.conf",
            0o644,
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n \
             \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
             <!-- RayOS's Debian VM may run emulated inside an emulated machine,\n     \
             where authenticating a connection took longer than the system\n     \
             bus's 30 s and services take minutes to start: 10 minutes for\n     \
             both (docs/linux-vm.md in the RayOS sources, \"Nested\"). -->\n\
             <busconfig>\n  \
             <limit name=\"auth_timeout\">600000</limit>\n  \
             <limit name=\"service_start_timeout\">600000</limit>\n\
             </busconfig>\n"
                .into(),
        ),
        f(
            "etc/systemd/system/ssh.service.d/50-rayos-host-keys.conf",
            0o644,
            "# The image ships without SSH host keys: made when sshd first starts\n\
             # (an RSA key takes seconds without KVM, minutes nested), not at\n\
             # every VM's first boot whether SSH is wanted or not.\n\
             [Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n"
                .into(),
        ),
        f(
            "etc/systemd/system/rayos-firstboot.service",
            0o644,
            FIRSTBOOT_UNIT.into(),
        ),
        f("usr/lib/rayos/rayos-firstboot", 0o755, FIRSTBOOT.into()),
    ];
    // Units that set their own short start timeout, which the manager's
    // default above does not reach: the same 30 minutes for each.
    for unit in OWN_TIMEOUT_UNITS {
        files.push(f(
            &format!("etc/systemd/system/{unit}.d/50-rayos-timeout.conf"),
            0o644,
            "# Debian's unit gives itself 30-180 s; RayOS's Debian VM may boot\n\
             # emulated inside an emulated machine, where this takes minutes\n\
             # (see /etc/systemd/system.conf.d/50-rayos-vm.conf).\n\
             [Service]\nTimeoutStartSec=30min\n"
                .into(),
        ));
    }
    files
}

/// The cache key: a hash of everything that decides what a build makes.
pub fn recipe_key(opts: &BuildOptions) -> String {
    let mut h = rayos_base::hash::Hasher::new();
    let mut put = |s: &str| {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    put(&FORMAT.to_string());
    put(SUITE);
    for m in opts.mirrors() {
        put(&m);
    }
    for p in PACKAGES {
        put(p);
    }
    for p in &opts.pins {
        put(&format!("{}={}", p.package, p.version));
    }
    for f in overlay_files() {
        put(&f.path);
        put(&format!("{:o}", f.mode));
        put(&f.contents);
    }
    put(CUSTOMIZE);
    for id in [DISK_GUID, ESP_PARTUUID, ROOT_PARTUUID, ROOT_FS_UUID] {
        put(&id.to_string());
    }
    put(&format!(
        "{ESP_BYTES} {MIN_ROOT_BYTES} {ESP_FAT_LABEL} {ROOT_FS_LABEL}"
    ));
    // 8 bytes are plenty to tell recipes apart in a cache directory name.
    h.finish().hex[..16].to_string()
}

fn werr(path: &Path) -> impl FnOnce(io::Error) -> LinuxVmError + '_ {
    move |source| LinuxVmError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// The cached build for `opts`, if a complete one exists.
pub fn cached(cache: &Path, opts: &BuildOptions) -> Option<Image> {
    let dir = cache.join("linux-vm").join(recipe_key(opts));
    load(&dir).ok()
}

/// Reads a build directory (`manifest.json` + the disk image).
pub fn load(dir: &Path) -> Result<Image, LinuxVmError> {
    let mpath = dir.join(MANIFEST_FILE);
    let text = fs::read_to_string(&mpath).map_err(|source| LinuxVmError::Read {
        path: mpath.clone(),
        source,
    })?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|source| LinuxVmError::Manifest {
            path: mpath.clone(),
            source,
        })?;
    let disk = dir.join(DISK_FILE);
    let len = fs::metadata(&disk)
        .map_err(|source| LinuxVmError::Read {
            path: disk.clone(),
            source,
        })?
        .len();
    if len != manifest.disk_bytes {
        return Err(LinuxVmError::Check(format!(
            "{} is {len} bytes, its manifest says {}",
            disk.display(),
            manifest.disk_bytes
        )));
    }
    Ok(Image {
        dir: dir.to_path_buf(),
        disk,
        manifest,
    })
}

/// The image for `opts`: from the cache, or built into it (one build at a
/// time per cache: concurrent callers wait on a lock file).
pub fn ensure(
    cache: &Path,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Image, LinuxVmError> {
    let base = cache.join("linux-vm");
    fs::create_dir_all(&base).map_err(werr(&base))?;
    let lock_path = base.join("build.lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(werr(&lock_path))?;
    lock.lock().map_err(werr(&lock_path))?;
    if let Some(img) = cached(cache, opts) {
        return Ok(img);
    }
    let img = build(&base, opts, progress);
    drop(lock);
    img
}

/// Builds the image into `<base>/<key>/` (through `<key>.partial/`).
pub fn build(
    base: &Path,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Image, LinuxVmError> {
    if !rayos_base::sys::is_root() {
        return Err(LinuxVmError::NotRoot);
    }
    let t0 = Instant::now();
    let key = recipe_key(opts);
    let out = base.join(&key);
    let work = base.join(format!("{key}.partial"));
    if work.exists() {
        fs::remove_dir_all(&work).map_err(werr(&work))?;
    }
    fs::create_dir_all(&work).map_err(werr(&work))?;
    let root = work.join("root");
    let esp_dir = work.join("esp");
    let overlay = work.join("overlay");
    fs::create_dir_all(&esp_dir).map_err(werr(&esp_dir))?;
    write_overlay(&overlay)?;
    let customize = work.join("customize.sh");
    fs::write(&customize, CUSTOMIZE).map_err(werr(&customize))?;
    let hook = work.join("hook.sh");
    fs::write(&hook, HOOK).map_err(werr(&hook))?;

    progress("mmdebstrap: Debian 12 into a directory (about a minute)");
    let mirrors = opts.mirrors();
    let mut include: Vec<String> = PACKAGES.iter().map(|p| p.to_string()).collect();
    include.extend(
        opts.pins
            .iter()
            .map(|p| format!("{}={}", p.package, p.version)),
    );
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg("--variant=minbase")
        .arg("--mode=root")
        .arg(format!("--include={}", include.join(",")))
        .arg(format!(
            "--customize-hook=sh {} \"$1\" {} {} {}",
            sh_quote(&hook),
            sh_quote(&overlay),
            sh_quote(&customize),
            sh_quote(&esp_dir)
        ))
        .arg(SUITE)
        .arg(&root)
        .args(&mirrors)
        // Quiet apt and dpkg in the log; errors still come back on stderr.
        .env("DEBIAN_FRONTEND", "noninteractive");
    tools::run(&mut cmd, "mmdebstrap").map_err(|source| LinuxVmError::Tool {
        step: "mmdebstrap",
        source,
    })?;

    progress("fixing up the root (machine-id, resolv.conf) and listing packages");
    finish_root(&root)?;
    let packages = installed_packages(&root)?;
    let kernel = installed_kernel(&esp_dir)?;

    progress("building the ESP (FAT32, mkfs.fat + mtools)");
    let esp_img = work.join("esp.img");
    let mut tree = FatTree::new();
    add_tree(&mut tree, &esp_dir, "")?;
    fat::build(&esp_img, ESP_FAT_LABEL, &tree, Some(ESP_BYTES))?;
    fat::check(&esp_img)?;

    progress("building the root filesystem (mkfs.ext4 -d)");
    let used = dir_bytes(&root)?;
    let root_bytes = (used + used / 2 + (512 << 20))
        .max(MIN_ROOT_BYTES)
        .div_ceil(1 << 20)
        << 20;
    let root_img = work.join("root.img");
    make_ext4(&root, &root_img, root_bytes)?;

    progress("assembling the GPT disk image");
    let disk_path = work.join(DISK_FILE);
    let disk_bytes = disk::assemble(
        &disk_path,
        &[
            disk::PartSpec {
                type_guid: rayos_disk::types::ESP,
                unique_guid: ESP_PARTUUID,
                name: "esp",
                image: esp_img.clone(),
            },
            disk::PartSpec {
                type_guid: rayos_disk::types::LINUX_ROOT_X86_64,
                unique_guid: ROOT_PARTUUID,
                name: "root",
                image: root_img.clone(),
            },
        ],
        DISK_GUID,
    )?;
    crate::media::verify_gpt(&disk_path)
        .map_err(|e| LinuxVmError::Check(rayos_base::error::chain(&e)))?;

    let manifest = Manifest {
        format: FORMAT,
        key: key.clone(),
        suite: SUITE.into(),
        mirrors,
        requested: PACKAGES.iter().map(|p| p.to_string()).collect(),
        pinned: opts.pins.clone(),
        mmdebstrap: mmdebstrap_version(),
        kernel,
        kernel_cmdline: kernel_cmdline(),
        entry_token: ENTRY_TOKEN.into(),
        disk_bytes,
        esp_bytes: ESP_BYTES,
        root_bytes,
        root_fs_uuid: ROOT_FS_UUID,
        esp_partuuid: ESP_PARTUUID,
        root_partuuid: ROOT_PARTUUID,
        packages,
        build_seconds: (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    };
    let mpath = work.join(MANIFEST_FILE);
    let text = serde_json::to_string_pretty(&manifest).unwrap_or_default() + "\n";
    fs::write(&mpath, text).map_err(werr(&mpath))?;

    // Keep only the disk image and its manifest.
    for p in [&root, &esp_dir, &overlay] {
        fs::remove_dir_all(p).map_err(werr(p))?;
    }
    for p in [&esp_img, &root_img, &customize, &hook] {
        fs::remove_file(p).map_err(werr(p))?;
    }
    if out.exists() {
        fs::remove_dir_all(&out).map_err(werr(&out))?;
    }
    fs::rename(&work, &out).map_err(werr(&out))?;
    progress(&format!(
        "Debian VM image {} ({} packages, kernel {}) in {:.0} s",
        out.join(DISK_FILE).display(),
        manifest.packages.len(),
        manifest.kernel,
        t0.elapsed().as_secs_f64()
    ));
    load(&out)
}

/// mmdebstrap's customize hook, run on the host with the new root as `$1`:
/// copies the overlay in, then runs `customize.sh` in the root with a
/// private tmpfs on `/boot/efi` (a mount namespace of its own, so nothing
/// stays mounted whatever happens) and keeps what it put there — the ESP.
const HOOK: &str = r#"set -eu
root="$1" overlay="$2" customize="$3" esp="$4"
cp -a "$overlay/." "$root/"
install -m 0755 "$customize" "$root/rayos-customize.sh"
mkdir -p "$root/boot/efi"
unshare --mount --propagation private sh -eu -c '
    mount -t tmpfs -o mode=0700 rayos-esp "$1/boot/efi"
    chroot "$1" /bin/sh /rayos-customize.sh
    cp -a "$1/boot/efi/." "$2/"
' sh "$root" "$esp"
rm "$root/rayos-customize.sh"
"#;

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

fn write_overlay(dir: &Path) -> Result<(), LinuxVmError> {
    for f in overlay_files() {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(werr(parent))?;
        }
        fs::write(&path, &f.contents).map_err(werr(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(f.mode)).map_err(werr(&path))?;
    }
    Ok(())
}

/// What mmdebstrap leaves that must not be in a shared image.
fn finish_root(root: &Path) -> Result<(), LinuxVmError> {
    // "uninitialized": systemd's first-boot semantics (a new machine id,
    // presets applied, first-boot-complete.target) on every VM's first boot.
    let mid = root.join("etc/machine-id");
    fs::write(&mid, "uninitialized\n").map_err(werr(&mid))?;
    // The build host's resolver; DHCP writes the guest's own.
    let resolv = root.join("etc/resolv.conf");
    let _ = fs::remove_file(&resolv);
    fs::write(&resolv, "").map_err(werr(&resolv))?;
    // D-Bus's copy of the id, when it is a file and not the usual link
    // to /etc/machine-id.
    let dbus = root.join("var/lib/dbus/machine-id");
    if dbus.symlink_metadata().is_ok_and(|m| m.is_file()) {
        fs::remove_file(&dbus).map_err(werr(&dbus))?;
    }
    let efi = root.join("boot/efi");
    if fs::read_dir(&efi)
        .map(|mut d| d.next().is_some())
        .unwrap_or(true)
    {
        return Err(LinuxVmError::Check(format!(
            "{} must be an empty mount point",
            efi.display()
        )));
    }
    for must in [
        "usr/lib/rayos/rayos-firstboot",
        "usr/bin/bootctl",
        "usr/sbin/qemu-ga",
    ] {
        if !root.join(must).exists() {
            return Err(LinuxVmError::Check(format!("/{must} is missing")));
        }
    }
    if root.join("etc/ssh/ssh_host_ed25519_key").exists() {
        return Err(LinuxVmError::Check(
            "SSH host keys were left in the image".into(),
        ));
    }
    Ok(())
}

fn installed_packages(root: &Path) -> Result<Vec<PackageVersion>, LinuxVmError> {
    let out = tools::run(
        Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f", "${Package}\t${Version}\t${Architecture}\n"]),
        "dpkg",
    )
    .map_err(|source| LinuxVmError::Tool {
        step: "listing the image's packages",
        source,
    })?;
    let mut v: Vec<PackageVersion> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split('\t');
            Some(PackageVersion {
                package: w.next()?.to_string(),
                version: w.next()?.to_string(),
                architecture: w.next()?.to_string(),
            })
        })
        .collect();
    v.sort_by(|a, b| a.package.cmp(&b.package));
    for want in PACKAGES {
        if !v.iter().any(|p| p.package == *want) {
            return Err(LinuxVmError::Check(format!(
                "package {want} is not installed"
            )));
        }
    }
    Ok(v)
}

/// The kernel release kernel-install put on the ESP (and its entry).
fn installed_kernel(esp: &Path) -> Result<String, LinuxVmError> {
    let dir = esp.join(ENTRY_TOKEN);
    let rd = fs::read_dir(&dir).map_err(|source| LinuxVmError::Read {
        path: dir.clone(),
        source,
    })?;
    let mut kernels: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    kernels.sort();
    let [kver] = kernels.as_slice() else {
        return Err(LinuxVmError::Check(format!(
            "expected one kernel in the ESP's /{ENTRY_TOKEN}/, found {kernels:?}"
        )));
    };
    let entry = esp.join(format!("loader/entries/{ENTRY_TOKEN}-{kver}.conf"));
    let text = fs::read_to_string(&entry).map_err(|source| LinuxVmError::Read {
        path: entry.clone(),
        source,
    })?;
    // The entry's paths are relative to the ESP; a path starting with
    // /boot/efi would mean kernel-install did not see /boot/efi as a mount.
    let want = format!("linux      /{ENTRY_TOKEN}/{kver}/linux");
    if !text.lines().any(|l| l == want) || !text.contains(&kernel_cmdline()) {
        return Err(LinuxVmError::Check(format!(
            "{} is not the entry expected:\n{text}",
            entry.display()
        )));
    }
    for f in ["EFI/BOOT/BOOTX64.EFI", "EFI/systemd/systemd-bootx64.efi"] {
        if !esp.join(f).is_file() {
            return Err(LinuxVmError::Check(format!("the ESP has no /{f}")));
        }
    }
    Ok(kver.clone())
}

/// Adds every file below `dir` to `tree` under `prefix`.
fn add_tree(tree: &mut FatTree, dir: &Path, prefix: &str) -> Result<(), LinuxVmError> {
    let rd = fs::read_dir(dir).map_err(|source| LinuxVmError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let dest = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = e.path();
        if path.is_dir() {
            add_tree(tree, &path, &dest)?;
        } else {
            tree.add(&dest, path);
        }
    }
    Ok(())
}

/// Bytes the files below `dir` take (4 KiB blocks), without following links.
fn dir_bytes(dir: &Path) -> Result<u64, LinuxVmError> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = fs::read_dir(&d).map_err(|source| LinuxVmError::Read {
            path: d.clone(),
            source,
        })?;
        for e in rd.filter_map(|e| e.ok()) {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            }
            total += m.len().div_ceil(4096) * 4096;
        }
    }
    Ok(total)
}

fn make_ext4(root: &Path, img: &Path, bytes: u64) -> Result<(), LinuxVmError> {
    let f = fs::File::create(img).map_err(werr(img))?;
    f.set_len(bytes).map_err(werr(img))?;
    drop(f);
    tools::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-t", "ext4"])
            .arg("-d")
            .arg(root)
            .arg("-U")
            .arg(ROOT_FS_UUID.to_string())
            .arg("-L")
            .arg(ROOT_FS_LABEL)
            .arg("-E")
            .arg(format!("hash_seed={ROOT_FS_UUID}"))
            .arg(img),
        "e2fsprogs",
    )
    .map_err(|source| LinuxVmError::Tool {
        step: "mkfs.ext4 -d",
        source,
    })?;
    tools::run(Command::new("e2fsck").arg("-fn").arg(img), "e2fsprogs").map_err(|source| {
        LinuxVmError::Tool {
            step: "e2fsck of the new root filesystem",
            source,
        }
    })?;
    Ok(())
}

fn mmdebstrap_version() -> String {
    Command::new("mmdebstrap")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_follows_the_recipe() {
        let a = recipe_key(&BuildOptions::default());
        assert_eq!(a.len(), 16);
        assert_eq!(a, recipe_key(&BuildOptions::default()));
        let pinned = BuildOptions {
            pins: vec![PackageVersion {
                package: "sudo".into(),
                version: "1.9.13p3-1+deb12u1".into(),
                architecture: "amd64".into(),
            }],
            ..Default::default()
        };
        assert_ne!(a, recipe_key(&pinned));
        let snap = BuildOptions {
            mirror: Some("http://snapshot.debian.org/archive/debian/20250520T000000Z/".into()),
            ..Default::default()
        };
        assert_ne!(a, recipe_key(&snap));
    }

    #[test]
    fn mirror_override_keeps_suites() {
        let o = BuildOptions {
            mirror: Some("http://mirror.example/".into()),
            ..Default::default()
        };
        assert_eq!(
            o.mirrors()[2],
            "deb http://mirror.example/debian-security bookworm-security main"
        );
        assert_eq!(BuildOptions::default().mirrors()[0], MIRRORS[0]);
    }

    /// The overlay's file at `path` (the test fails when there is none).
    fn overlay_file(path: &str) -> String {
        overlay_files()
            .into_iter()
            .find(|f| f.path == path)
            .map(|f| f.contents)
            .unwrap_or_else(|| panic!("no {path} in the overlay"))
    }

    #[test]
    fn overlay_agrees_with_the_layout() {
        let get = overlay_file;
        assert!(get("etc/fstab").contains(&format!("UUID={ROOT_FS_UUID} / ext4")));
        assert!(get("etc/fstab").contains(&format!("PARTUUID={ESP_PARTUUID} /boot/efi vfat")));
        assert!(get("etc/kernel/cmdline").contains(&format!("root=UUID={ROOT_FS_UUID}")));
        // The serial console is the last console= (it is /dev/console) and
        // gets a getty whether or not systemd's generator ran.
        assert!(kernel_cmdline().ends_with("console=ttyS0,115200 net.ifnames=0"));
        assert!(
            get("etc/systemd/system/getty.target.d/50-rayos-serial-getty.conf")
                .ends_with("[Unit]\nWants=serial-getty@ttyS0.service\n")
        );
        // ... and does not wait for udev to announce the port.
        let getty = get("etc/systemd/system/serial-getty@ttyS0.service");
        for l in getty.lines().filter(|l| !l.starts_with('#')) {
            assert!(!l.starts_with("BindsTo=") && !l.contains(".device"), "{l}");
        }
        assert!(getty.contains("\nTTYPath=/dev/%I\n"), "{getty}");
        assert!(getty.contains("\nExecStart=-/sbin/agetty "), "{getty}");
        // dbus gives slow connections and services 10 minutes.
        let bus = get("etc/dbus-1/system-local.conf");
        assert!(bus.starts_with("<!DOCTYPE busconfig PUBLIC "), "{bus}");
        assert!(
            bus.contains("\n<busconfig>\n  <limit name=\"auth_timeout\">600000</limit>\n"),
            "{bus}"
        );
        assert!(bus.ends_with("</limit>\n</busconfig>\n"), "{bus}");
        // The kernel mounts the root read-only; systemd-remount-fs makes it
        // writable (fstab asks for nothing else) and is always wanted.
        assert!(kernel_cmdline().contains(" ro "));
        assert!(!get("etc/fstab").contains(",ro"));
        assert!(
            get("etc/systemd/system/local-fs.target.d/50-rayos-remount-root.conf")
                .ends_with("[Unit]\nWants=systemd-remount-fs.service\n")
        );
        let unit = get("etc/systemd/system/rayos-firstboot.service");
        for c in CREDENTIALS {
            assert!(unit.contains(&format!("LoadCredential={c}\n")), "{c}");
            let name = c.trim_start_matches("rayos.");
            assert!(FIRSTBOOT.contains(&format!("get {name})")), "{name}");
        }
        assert!(FIRSTBOOT.contains(FIRSTBOOT_DONE));
    }

    /// The boot-time settings hang together: the initramfs compressor is
    /// installed and lists the modules systemd needs at PID 1's start;
    /// every unit the customize hook disables is also disabled in the
    /// preset file (the first boot applies presets, which would enable it
    /// again).
    #[test]
    fn boot_time_settings_agree() {
        let get = overlay_file;
        let conf = get("etc/initramfs-tools/conf.d/rayos-vm.conf");
        assert!(conf.contains("\nMODULES=list\n"), "{conf}");
        assert!(conf.contains("\nCOMPRESS=lz4\n"), "{conf}");
        assert!(PACKAGES.contains(&"lz4"));
        let modules = get("etc/initramfs-tools/modules");
        for m in ["qemu_fw_cfg", "virtio_blk", "virtio_pci"] {
            assert!(modules.lines().any(|l| l == m), "{m}");
        }
        let preset = get("etc/systemd/system-preset/10-rayos.preset");
        let disabled: Vec<&str> = CUSTOMIZE
            .lines()
            .filter_map(|l| l.strip_prefix("systemctl disable "))
            .flat_map(|l| l.split_whitespace())
            .collect();
        assert!(disabled.contains(&"e2scrub_reap.service"));
        for u in disabled {
            assert!(preset.contains(&format!("\ndisable {u}\n")), "{u}");
        }
        assert!(kernel_cmdline().contains(" quiet "));
        let manager = get("etc/systemd/system.conf.d/50-rayos-vm.conf");
        assert!(
            manager.contains("\nDefaultTimeoutStartSec=30min\n"),
            "{manager}"
        );
        // Nested run 3 failed networking.service after its own 5 minutes.
        assert!(OWN_TIMEOUT_UNITS.contains(&"networking.service"));
        for u in OWN_TIMEOUT_UNITS {
            let dropin = get(&format!("etc/systemd/system/{u}.d/50-rayos-timeout.conf"));
            assert!(
                dropin.ends_with("[Service]\nTimeoutStartSec=30min\n"),
                "{u}"
            );
        }
        let ssh = get("etc/systemd/system/ssh.service.d/50-rayos-host-keys.conf");
        let keygen = ssh.find("ExecStartPre=/usr/bin/ssh-keygen -A").unwrap();
        let check = ssh.find("ExecStartPre=/usr/sbin/sshd -t").unwrap();
        assert!(ssh.contains("ExecStartPre=\n") && keygen < check, "{ssh}");
    }

    /// The first-boot script's keyboard step, run by `sh` on a copy of
    /// Debian's `/etc/default/keyboard`: RayOS's layout names become xkb's
    /// (`uk` is `gb`, `fr-bepo` is layout `fr` with variant `bepo`).
    #[test]
    fn firstboot_writes_xkb_layout_names() {
        let start = FIRSTBOOT.find("say() {").unwrap();
        let end = FIRSTBOOT.find("\nhostname_cfg() {").unwrap();
        let helpers = &FIRSTBOOT[start..end];
        let start = FIRSTBOOT.find("keyboard_cfg() {").unwrap();
        let end = start + FIRSTBOOT[start..].find("\n}\n").unwrap() + 3;
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("keyboard");
        let step = FIRSTBOOT[start..end].replace("/etc/default/keyboard", file.to_str().unwrap());
        for (k, layout, variant) in [
            ("uk", "gb", ""),
            ("gb", "gb", ""),
            ("de", "de", ""),
            ("fr-bepo", "fr", "bepo"),
            ("es", "es", ""),
        ] {
            std::fs::write(tmp.path().join("rayos.keyboard"), format!("{k}\n")).unwrap();
            std::fs::write(
                &file,
                "XKBMODEL=\"pc105\"\nXKBLAYOUT=\"us\"\nXKBVARIANT=\"\"\nXKBOPTIONS=\"\"\n",
            )
            .unwrap();
            let script = format!(
                "C={}\napplied=\"\"\nsystemctl() {{ :; }}\n{helpers}\n{step}\nkeyboard_cfg\necho \"$applied\"",
                tmp.path().display()
            );
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{k}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                format!("keyboard={k}")
            );
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(
                text.contains(&format!("XKBLAYOUT=\"{layout}\"\n")),
                "{k}: {text}"
            );
            assert!(
                text.contains(&format!("XKBVARIANT=\"{variant}\"\n")),
                "{k}: {text}"
            );
            // The layout xkb-data has (scripts/install-deps.sh).
            assert!(
                std::path::Path::new("/usr/share/X11/xkb/symbols")
                    .join(layout)
                    .is_file(),
                "{k}: xkb has no layout {layout}"
            );
        }
    }
}
