//! Mounting the installed system (XBOOTLDR) partition for a short job:
//! blessing, rollback detection, `rayos update`, the recovery menu.
//!
//! The partition is found like the boot finds the data volume (GPT type
//! GUIDs through `rayos-disk`; the disk holding the ESP the loader ran
//! from wins). [`SystemMount`] unmounts on drop after a `sync`, so a crash
//! or an error in the job never leaves it mounted with dirty FAT buffers.

use std::path::{Path, PathBuf};

use rustix::mount::MountFlags;

use crate::sys;
use crate::volumes::{self, Install};

/// Why this machine's system partition could not be found or mounted.
#[derive(Debug, thiserror::Error)]
pub enum SysMountError {
    /// The disks could not be listed.
    #[error("cannot list disks")]
    Disks(#[source] rayos_disk::EnumerateError),
    /// No disk holds a RayOS data partition.
    #[error(
        "no RayOS install on this machine's disks (no data partition of type {})",
        rayos_disk::types::RAYOS_DATA
    )]
    NoInstall,
    /// The install on this disk has no system partition; holds the disk.
    #[error("the RayOS install on {0} has no system partition (XBOOTLDR)")]
    NoSystem(PathBuf),
    /// Mounting the system partition failed; holds it.
    #[error("cannot mount the system partition {0}")]
    Mount(PathBuf, #[source] sys::SysError),
}

/// The install this machine booted from (or the first one found).
pub fn find() -> Result<Install, SysMountError> {
    let disks = rayos_disk::list_block_devices().map_err(SysMountError::Disks)?;
    let esp = volumes::loader_device_part_uuid(Path::new(rayos_base::efivar::EFIVARS_DIR));
    volumes::find_install(&disks, esp).ok_or(SysMountError::NoInstall)
}

/// A mounted system partition; unmounted (after sync) on drop.
pub struct SystemMount {
    at: PathBuf,
    /// The partition's device.
    pub device: PathBuf,
}

impl SystemMount {
    /// Mounts `install`'s system partition read-write at `at`.
    pub fn mount(install: &Install, at: &Path) -> Result<SystemMount, SysMountError> {
        let dev = install
            .system
            .clone()
            .ok_or_else(|| SysMountError::NoSystem(install.disk.clone()))?;
        sys::mount(
            &dev.to_string_lossy(),
            at,
            "vfat",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            "",
        )
        .map_err(|e| SysMountError::Mount(dev.clone(), e))?;
        Ok(SystemMount {
            at: at.to_path_buf(),
            device: dev,
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.at
    }
}

impl Drop for SystemMount {
    fn drop(&mut self) {
        sys::sync();
        let _ = sys::unmount(&self.at);
    }
}

/// A volume mounted read-only for reading one file; unmounted on drop.
pub struct VolumeMount {
    at: PathBuf,
    /// The volume's device.
    pub device: PathBuf,
}

impl Drop for VolumeMount {
    fn drop(&mut self) {
        let _ = sys::unmount(&self.at);
    }
}

/// Finds `spec` — `PATH` or `LABEL:PATH`, as `rayos.answers=` reads it —
/// on the machine's FAT and ISO 9660 volumes (removable disks first),
/// mounting each read-only at `at` in turn. Returns the mount (keep it
/// while reading) and the file's path. How a bundle on a USB stick reaches
/// `rayos update apply` without a shell to mount it.
pub fn file_on_volumes(spec: &str, at: &Path) -> Option<(VolumeMount, PathBuf)> {
    let want = crate::cmdline::AnswersRef::parse(spec)?;
    let disks = rayos_disk::list_block_devices().ok()?;
    let vols = volumes::fat_and_iso_volumes(&disks, volumes::usb_attached);
    for v in volumes::search_order(&vols, want.label.as_deref(), None) {
        if sys::mount(
            &v.device.to_string_lossy(),
            at,
            v.fstype,
            MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            "",
        )
        .is_err()
        {
            continue;
        }
        let m = VolumeMount {
            at: at.to_path_buf(),
            device: v.device.clone(),
        };
        if let Some(f) = volumes::file_on(at, &want.path) {
            return Some((m, f));
        }
    }
    None
}
