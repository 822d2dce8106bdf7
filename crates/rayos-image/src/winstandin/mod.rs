//! The Windows stand-in: an installer ISO built from Debian's packages that
//! needs what Windows 11 needs, so RayOS's Windows path is proven without
//! Windows media (which cannot be shipped or downloaded here).
//!
//! Boot chain, all signed for Secure Boot with Microsoft's 2011 UEFI CA as
//! Windows' own is: Debian's Microsoft-signed `shim` (`shim-signed`) as
//! `\EFI\BOOT\BOOTX64.EFI`, Debian's signed GRUB (`grub-efi-amd64-signed`,
//! built-in prefix `/EFI/debian`, else it looks for `/.disk/info`) and the
//! signed kernel of the host's `linux-image-amd64` (the same package the
//! RayOS media use). The initramfs (busybox, the `init.sh` beside this
//! file, a few signed modules; uncompressed, and nothing else, since every
//! boot reads and unpacks it) does, booted from the medium, where GRUB
//! also loads a second archive, the payload (the signed chain and the
//! initramfs, to install):
//! 1. fails (`STANDIN_FAIL …`, then waits; nothing written) unless the `SecureBoot` EFI
//!    variable is 1 and a TPM 2.0 is present;
//! 2. writes a random secret into TPM NV index 0x01500018 (raw TPM2
//!    commands on `/dev/tpm0`), an install id into a UEFI variable, and
//!    a marker file onto the AHCI disk;
//! 3. installs the same signed chain onto an ESP on that disk (MBR, type
//!    0xEF), with the initramfs (without the payload);
//! 4. powers off.
//!
//! Booted from the disk it prints the marker, the NV secret read back
//! (`STANDIN_NV ok <hex>` when it matches the marker), the UEFI variable,
//! `STANDIN_READY` and then `COUNTER <n>` every 0.25 s (in RAM, like the
//! test guest, so a resumed guest continues and a cold boot restarts).
//!
//! The ISO is hybrid (`media::build_iso_labelled`): it boots as a CD and,
//! given to a VM as a USB stick, as a disk.
//!
//! Limits: a stand-in, not Windows: it shows that Secure Boot with the
//! Microsoft keys, the TPM's NV storage, UEFI variables, the AHCI disk and
//! USB/CD media work and persist; what a real Windows 11 install needs
//! beyond that is in docs/windows.md. Built products are cached under
//! `<cache>/winstandin/<key>/`, the key a hash of every input.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::debs::{self, DebError};
use crate::fat::{self, FatError, FatTree};
use crate::initramfs::{Compression, Initramfs, InitramfsError};
use crate::media::{self, MediaError};
use crate::modules::{ModuleIndex, ModulesError};

/// The `/init` script.
pub const INIT: &str = include_str!("init.sh");

/// Console lines of the stand-in (printed by `init.sh`).
pub mod marker {
    /// Secure Boot or the TPM is missing (followed by why).
    pub const FAIL: &str = "STANDIN_FAIL";
    /// Secure Boot is on.
    pub const SECUREBOOT: &str = "STANDIN_SECUREBOOT on";
    /// A TPM 2.0 answers.
    pub const TPM: &str = "STANDIN_TPM 2";
    /// `STANDIN_INSTALLED id=<id> nv=<hex>`.
    pub const INSTALLED: &str = "STANDIN_INSTALLED";
    /// `STANDIN_MARKER install=<id> nv=<hex>`.
    pub const MARKER: &str = "STANDIN_MARKER";
    /// `STANDIN_NV ok <hex>` (or `mismatch …`).
    pub const NV_OK: &str = "STANDIN_NV ok";
    /// `STANDIN_EFIVAR <id>`.
    pub const EFIVAR: &str = "STANDIN_EFIVAR";
    /// The stand-in booted from the disk, reported its checks and runs (its
    /// counter follows).
    pub const READY: &str = "STANDIN_READY";
}

/// Bumped when the recipe changes in a way the input hash misses.
const RECIPE: &str = "rayos winstandin v2";
const LABEL: &str = "STANDIN_WIN";
const BUSYBOX: &str = "/usr/bin/busybox";
/// Modules the initramfs loads (with their dependencies): UEFI variables,
/// the power button, the AHCI disk and FAT. `tpm_crb` is built into
/// Debian's kernel.
const MODULES: &[&str] = &[
    "efivarfs",
    "button",
    "evdev",
    "ahci",
    "sd_mod",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
];
const SHIM: &str = "usr/lib/shim/shimx64.efi.signed";
const MOKMANAGER: &str = "usr/lib/shim/mmx64.efi.signed";
const GRUB: &str = "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed";

/// The kernel's command line. `cryptomgr.notests`: the crypto self-tests
/// were the slowest initcall under TCG (seconds); `8250.nr_uarts=1`: the
/// one serial port, no probing for three more.
const CMDLINE: &str = "console=ttyS0 quiet loglevel=1 panic=-1 cryptomgr.notests 8250.nr_uarts=1";
/// How the initramfs every boot loads is stored: uncompressed, since
/// busybox and the modules are 4.6 MB, which GRUB reads in well under a
/// second under TCG, while inflating it would be the kernel's work at
/// every boot (and under nested TCG that is slow).
const INITRD_COMPRESSION: Compression = Compression::None;

/// Why the Windows stand-in could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StandInError {
    /// The signed boot chain (shim, GRUB, kernel) could not be fetched.
    #[error("cannot fetch the signed boot chain")]
    Deb(#[from] DebError),
    /// The initramfs could not be built.
    #[error("cannot build the initramfs")]
    Initramfs(#[from] InitramfsError),
    /// The kernel modules could not be collected.
    #[error("cannot collect kernel modules")]
    Modules(#[from] ModulesError),
    /// The ESP could not be built.
    #[error("cannot build the ESP")]
    Fat(#[from] FatError),
    /// The ISO could not be built.
    #[error("cannot build the ISO")]
    Media(#[from] MediaError),
    /// A host file the build needs is missing.
    #[error("{what} not found at {path}: {hint}")]
    Missing {
        /// What it is.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// Which package provides it.
        hint: &'static str,
    },
    /// A file could not be read or written.
    #[error("I/O on {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StandInError + '_ {
    move |source| StandInError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A built stand-in.
#[derive(Debug, Clone)]
pub struct StandIn {
    /// The hybrid installer ISO.
    pub iso: PathBuf,
    /// The kernel release inside.
    pub kernel_release: String,
}

/// GRUB's configuration: no menu, no timeout, straight to the kernel. The
/// installer also loads the payload (the files it installs).
fn grub_cfg(mode: &str) -> String {
    let initrds = if mode == "install" {
        "/initrd.img /payload.img"
    } else {
        "/initrd.img"
    };
    format!(
        "set timeout=0\nlinux /vmlinuz {CMDLINE} rayos.standin={mode}\ninitrd {initrds}\nboot\n"
    )
}

/// The stand-in ISO for this host, built into `<cache>/winstandin/` when
/// not cached. `cache` also holds the fetched Debian packages.
pub fn ensure(cache: &Path) -> Result<StandIn, StandInError> {
    let shim = debs::fetch(cache, "shim-signed")?;
    let helpers = debs::fetch(cache, "shim-helpers-amd64-signed")?;
    let grub = debs::fetch(cache, "grub-efi-amd64-signed")?;
    // Debian's signed kernel.
    let (kernel, release) = crate::uki::host_kernel_release().ok_or(StandInError::Missing {
        what: "a signed kernel",
        path: "/boot/vmlinuz-*".into(),
        hint: "install linux-image-amd64 (scripts/install-deps.sh)",
    })?;
    let shim_efi = shim.root.join(SHIM);
    let mm_efi = helpers.root.join(MOKMANAGER);
    let grub_efi = grub.root.join(GRUB);
    for (what, p) in [
        ("shimx64.efi", &shim_efi),
        ("mmx64.efi", &mm_efi),
        ("grubx64.efi", &grub_efi),
    ] {
        if !p.is_file() {
            return Err(StandInError::Missing {
                what: if what == "grubx64.efi" {
                    "Debian's signed GRUB"
                } else {
                    "Debian's signed shim"
                },
                path: p.clone(),
                hint: "the package layout changed: update winstandin",
            });
        }
    }
    let kmeta = fs::metadata(&kernel).map_err(io_err(&kernel))?;
    let bmeta = fs::metadata(BUSYBOX).map_err(|_| StandInError::Missing {
        what: "busybox",
        path: BUSYBOX.into(),
        hint: "install busybox-static (scripts/install-deps.sh)",
    })?;
    // The packages by file name (name_version_arch.deb), not by path: the
    // same cache reached through another path is the same cache.
    let deb = |d: &debs::Deb| {
        d.file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let key_text = format!(
        "{RECIPE}\n{INIT}\n{CMDLINE}\n{INITRD_COMPRESSION:?}\n{} {} {}\n{} {release} {}\n{}\n{MODULES:?}\n",
        deb(&shim),
        deb(&helpers),
        deb(&grub),
        kernel.display(),
        kmeta.len(),
        bmeta.len(),
    );
    let key = &rayos_base::hash::sha256(key_text.as_bytes())[..16];
    let dir = cache.join("winstandin").join(key);
    let iso = dir.join("standin.iso");
    if iso.is_file() {
        return Ok(StandIn {
            iso,
            kernel_release: release,
        });
    }
    let work = cache
        .join("winstandin")
        .join(format!(".build-{key}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(io_err(&work))?;
    let result = build(
        &work,
        &Inputs {
            shim: &shim_efi,
            mm: &mm_efi,
            grub: &grub_efi,
            kernel: &kernel,
            release: &release,
        },
    );
    let built = match result {
        Ok(p) => p,
        Err(e) => {
            let _ = fs::remove_dir_all(&work);
            return Err(e);
        }
    };
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    // Renamed into place: a parallel build's ISO is as good as ours.
    fs::rename(&built, &iso).map_err(io_err(&iso))?;
    let _ = fs::remove_dir_all(&work);
    Ok(StandIn {
        iso,
        kernel_release: release,
    })
}

struct Inputs<'a> {
    shim: &'a Path,
    mm: &'a Path,
    grub: &'a Path,
    kernel: &'a Path,
    release: &'a str,
}

/// Builds the ISO in `work`; returns its path.
fn build(work: &Path, inp: &Inputs<'_>) -> Result<PathBuf, StandInError> {
    let write = |name: &str, text: &str| -> Result<PathBuf, StandInError> {
        let p = work.join(name);
        fs::write(&p, text).map_err(io_err(&p))?;
        Ok(p)
    };
    let install_cfg = write("grub-install.cfg", &grub_cfg("install"))?;
    let run_cfg = write("grub-run.cfg", &grub_cfg("run"))?;
    let disk_info = write("info", "RayOS Windows stand-in installer\n")?;

    // The initramfs every boot loads: busybox, /init and the modules, as
    // small as it can be, because every boot from the disk reads and
    // unpacks it (docs/windows.md has the figures).
    let index = ModuleIndex::open(Path::new("/"), inp.release)?;
    let resolved = index.resolve(MODULES)?;
    let modroot = work.join("modroot");
    let staged = index.stage(&resolved.files, &modroot)?;
    let mut ird = crate::test_guest::busybox_initramfs(Path::new(BUSYBOX), INIT)?;
    ird.dir("mnt", 0o755)?;
    ird.copy_tree(&format!("lib/modules/{}", inp.release), &staged)?;
    let initrd = work.join("initrd.img");
    ird.write(&initrd, INITRD_COMPRESSION)?;

    // What only the installer needs, in a second archive the medium's GRUB
    // loads after the first (the kernel unpacks both into one root): the
    // signed chain and the initramfs above, copied as they are onto the
    // disk. Uncompressed: signed EFI binaries and the kernel do not shrink.
    let mut payload = Initramfs::new();
    payload.dir("standin", 0o755)?;
    payload.copy("standin/shimx64.efi", inp.shim, Some(0o644))?;
    payload.copy("standin/mmx64.efi", inp.mm, Some(0o644))?;
    payload.copy("standin/grubx64.efi", inp.grub, Some(0o644))?;
    payload.copy("standin/vmlinuz", inp.kernel, Some(0o644))?;
    payload.copy("standin/grub-run.cfg", &run_cfg, Some(0o644))?;
    payload.copy("standin/initrd.img", &initrd, Some(0o644))?;
    let payload_img = work.join("payload.img");
    payload.write(&payload_img, Compression::None)?;

    // The ESP inside the ISO (El Torito image and, as a stick, its EFI
    // partition) and the ISO 9660 tree hold the same files, so GRUB's
    // search for /.disk/info finds a complete set either way.
    let files: Vec<(String, PathBuf)> = vec![
        ("EFI/BOOT/BOOTX64.EFI".into(), inp.shim.to_path_buf()),
        ("EFI/BOOT/mmx64.efi".into(), inp.mm.to_path_buf()),
        ("EFI/BOOT/grubx64.efi".into(), inp.grub.to_path_buf()),
        ("boot/grub/grub.cfg".into(), install_cfg),
        (".disk/info".into(), disk_info),
        ("vmlinuz".into(), inp.kernel.to_path_buf()),
        ("initrd.img".into(), initrd),
        ("payload.img".into(), payload_img),
    ];
    let mut tree = FatTree::new();
    for (dest, host) in &files {
        tree.add(dest, host);
    }
    let esp = work.join("efiboot.img");
    fat::build(&esp, "STANDIN", &tree, None)?;
    let iso = work.join("standin.iso");
    media::build_iso_labelled(&iso, &esp, &files, LABEL)?;
    Ok(iso)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_configs_boot_the_kernel_with_the_mode() {
        let c = grub_cfg("run");
        assert!(c.contains("linux /vmlinuz console=ttyS0"));
        assert!(c.contains("rayos.standin=run"));
        assert!(c.contains("initrd /initrd.img\n"), "{c}");
        // Only the installer loads the payload.
        assert!(grub_cfg("install").contains("initrd /initrd.img /payload.img\n"));
    }

    #[test]
    fn init_prints_the_markers_the_tests_match() {
        for m in [
            marker::FAIL,
            marker::SECUREBOOT,
            marker::TPM,
            marker::INSTALLED,
            marker::MARKER,
            marker::NV_OK,
            marker::EFIVAR,
            marker::READY,
        ] {
            assert!(INIT.contains(m), "{m}");
        }
    }
}
