//! The installer media: the EFI system partition's contents, the hybrid ISO
//! (boots from CD and, written with `dd`, from a USB stick) and the raw GPT
//! USB image.
//!
//! Layout of every medium (see docs/media.md):
//! - ESP (`boot/efiboot.img` inside the ISO; partition 1 of the USB image):
//!   `\EFI\BOOT\BOOTX64.EFI` (systemd-boot), `\loader\loader.conf`,
//!   `\loader\entries\*.conf`, `\EFI\Linux\<name>.efi` (the UKIs
//!   systemd-boot lists by itself), plus payload files.
//! - ISO 9660 tree (label [`ISO_LABEL`]): `boot/efiboot.img` and the payload
//!   files, so an installer booted from CD reads them without a loop device.
//!
//! The ISO follows the recipe verified in PLATFORM_NOTES (El Torito EFI image
//! plus `-efi-boot-part --efi-boot-image`); `-append_partition` is not used
//! because it fails to boot from CD once the image passes 32 MiB.

use std::fs;
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fat::{self, FatError, FatTree};
use crate::tools::{self, ToolError};

/// Volume label of the ISO 9660 filesystem (and GPT partition name of the
/// USB image's ESP): how the installer recognises its own medium.
pub const ISO_LABEL: &str = "RAYOS_INSTALL";
/// FAT label of the media's ESP (FAT labels hold 11 characters).
pub const FAT_LABEL: &str = "RAYOS_INST";
/// The Debian systemd-boot binary.
pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// Why an installer medium could not be built.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The ESP image could not be built.
    #[error("cannot build the ESP image")]
    Fat(#[from] FatError),
    /// A file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A tool (xorriso, sgdisk) failed on the medium.
    #[error("cannot build {path}")]
    Tool {
        /// The medium.
        path: PathBuf,
        /// What failed.
        #[source]
        source: ToolError,
    },
}

/// What the ESP of a medium holds.
#[derive(Debug, Clone)]
pub struct EspContents {
    /// systemd-boot, installed as `\EFI\BOOT\BOOTX64.EFI`.
    pub systemd_boot: PathBuf,
    /// The text of `\loader\loader.conf`.
    pub loader_conf: String,
    /// UKIs listed by systemd-boot: file name in `\EFI\Linux\` -> host file.
    pub ukis: Vec<(String, PathBuf)>,
    /// Boot Loader Specification type #1 entries: file name in
    /// `\loader\entries\` -> its text.
    pub entries: Vec<(String, String)>,
    /// Other files: destination path -> host file.
    pub payload: Vec<(String, PathBuf)>,
}

/// loader.conf of a medium: boot the newest `rayos-*` entry after `timeout`
/// seconds (0: the menu shows only while a key is held), no editor, no
/// firmware-setup entry.
pub fn loader_conf(default_pattern: &str, timeout: u32) -> String {
    format!(
        "timeout {timeout}\ndefault {default_pattern}\neditor no\nauto-firmware no\nconsole-mode keep\n"
    )
}

/// A type #1 entry that starts the EFI program `efi_path` (an ESP path with
/// `/`) — for a UKI, with the command line baked into it, so the entry works
/// under Secure Boot too (no `options`).
pub fn efi_entry(title: &str, efi_path: &str) -> String {
    format!("title {title}\nefi {efi_path}\n")
}

/// Builds the ESP image at `out`; `workdir` receives loader.conf and entries.
pub fn build_esp(out: &Path, esp: &EspContents, workdir: &Path) -> Result<u64, MediaError> {
    let conf = workdir.join("loader.conf");
    fs::write(&conf, &esp.loader_conf).map_err(|source| MediaError::Write {
        path: conf.clone(),
        source,
    })?;
    let mut tree = FatTree::new();
    tree.add("EFI/BOOT/BOOTX64.EFI", &esp.systemd_boot);
    tree.add("loader/loader.conf", &conf);
    for (name, host) in &esp.ukis {
        tree.add(&format!("EFI/Linux/{name}"), host);
    }
    for (name, text) in &esp.entries {
        let host = workdir.join(format!("entry-{name}"));
        fs::write(&host, text).map_err(|source| MediaError::Write {
            path: host.clone(),
            source,
        })?;
        tree.add(&format!("loader/entries/{name}"), host);
    }
    for (dest, host) in &esp.payload {
        tree.add(dest, host);
    }
    Ok(fat::build(out, FAT_LABEL, &tree, None)?)
}

/// Builds the hybrid ISO at `out` from the ESP image and `payload` files
/// (ISO path -> host file) for the ISO 9660 tree. Returns its size.
pub fn build_iso(
    out: &Path,
    esp_image: &Path,
    payload: &[(String, PathBuf)],
) -> Result<u64, MediaError> {
    build_iso_labelled(out, esp_image, payload, ISO_LABEL)
}

/// [`build_iso`] with another volume label (the Windows stand-in's).
pub fn build_iso_labelled(
    out: &Path,
    esp_image: &Path,
    payload: &[(String, PathBuf)],
    label: &str,
) -> Result<u64, MediaError> {
    let _ = fs::remove_file(out);
    let mut cmd = Command::new("xorriso");
    cmd.args(["-as", "mkisofs", "-o"])
        .arg(out)
        .args(["-iso-level", "3", "-V", label, "-J", "-R", "-graft-points"])
        .args([
            "-e",
            "boot/efiboot.img",
            "-no-emul-boot",
            "-efi-boot-part",
            "--efi-boot-image",
        ])
        .arg(format!("/boot/efiboot.img={}", esp_image.display()));
    for (dest, host) in payload {
        cmd.arg(format!(
            "/{}={}",
            dest.trim_start_matches('/'),
            host.display()
        ));
    }
    tools::run(&mut cmd, "xorriso").map_err(|source| MediaError::Tool {
        path: out.to_path_buf(),
        source,
    })?;
    fs::metadata(out)
        .map(|m| m.len())
        .map_err(|source| MediaError::Write {
            path: out.to_path_buf(),
            source,
        })
}

/// Builds the raw USB image at `out`: a GPT (512-byte sectors) with one ESP
/// at 1 MiB, named [`ISO_LABEL`], holding the bytes of `esp_image`.
pub fn build_usb(out: &Path, esp_image: &Path) -> Result<u64, MediaError> {
    let werr = |source| MediaError::Write {
        path: out.to_path_buf(),
        source,
    };
    let esp_len = fs::metadata(esp_image)
        .map_err(|source| MediaError::Write {
            path: esp_image.to_path_buf(),
            source,
        })?
        .len();
    let esp_len = esp_len.div_ceil(1 << 20) << 20;
    // 1 MiB in front (protective MBR, GPT, alignment), 1 MiB behind (backup GPT).
    let total = esp_len + (2 << 20);
    let _ = fs::remove_file(out);
    let f = fs::File::create(out).map_err(werr)?;
    f.set_len(total).map_err(werr)?;
    drop(f);
    let first = 2048u64;
    let last = first + esp_len / 512 - 1;
    tools::run(
        Command::new("sgdisk")
            .args(["-o", "-n"])
            .arg(format!("1:{first}:{last}"))
            .args(["-t", "1:EF00", "-c"])
            .arg(format!("1:{ISO_LABEL}"))
            .arg(out),
        "gdisk",
    )
    .map_err(|source| MediaError::Tool {
        path: out.to_path_buf(),
        source,
    })?;
    let mut dst = fs::OpenOptions::new().write(true).open(out).map_err(werr)?;
    dst.seek(SeekFrom::Start(first * 512)).map_err(werr)?;
    let mut src = fs::File::open(esp_image).map_err(|source| MediaError::Write {
        path: esp_image.to_path_buf(),
        source,
    })?;
    io::copy(&mut src, &mut dst).map_err(werr)?;
    dst.sync_all().map_err(werr)?;
    Ok(total)
}

/// Checks a GPT image with `sgdisk -v`.
pub fn verify_gpt(image: &Path) -> Result<String, MediaError> {
    let out =
        tools::run(Command::new("sgdisk").arg("-v").arg(image), "gdisk").map_err(|source| {
            MediaError::Tool {
                path: image.to_path_buf(),
                source,
            }
        })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !text.contains("No problems found") {
        return Err(MediaError::Tool {
            path: image.to_path_buf(),
            source: ToolError::Failed {
                tool: "sgdisk -v".into(),
                status: out.status,
                stderr: text,
            },
        });
    }
    Ok(text)
}
