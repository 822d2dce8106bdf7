//! Finding RayOS's volumes among the disks present at boot: the installed
//! system's partitions (by GPT type GUID, through `rayos-disk`), the
//! installer medium and the FAT/ISO volumes an answer file may sit on.
//!
//! Policy when several disks hold a RayOS install: the one holding the ESP
//! the loader started from (`LoaderDevicePartUUID`) wins; otherwise the
//! first in kernel order, and the others are reported.
//!
//! Policy for answer files ([`answer_sources`]): an answer file starts an
//! install that may erase a disk, so it is taken only from the installer
//! medium and from removable media (the kernel's removable flag, or a disk
//! attached by USB — USB hard disks and SSDs often do not set the flag), or
//! from the volumes carrying the label that `rayos.answers=LABEL:PATH`
//! names. A file on an internal disk is never used by accident.

use std::path::{Path, PathBuf};

use rayos_disk::report::{Disk, PartitionReport};
use rayos_disk::{Filesystem, types};
use uuid::Uuid;

use rayos_base::{efivar, uki_name};

/// The partitions of one RayOS install.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Install {
    /// The disk the install is on.
    pub disk: PathBuf,
    /// Its data partition's device.
    pub data: PathBuf,
    /// Its system partition's device, if it has one.
    pub system: Option<PathBuf>,
    /// The ESP on the same disk, if there is one.
    pub esp: Option<PathBuf>,
    /// Other disks that also hold a RayOS data partition (not used).
    pub others: Vec<PathBuf>,
}

fn part_dev(p: &PartitionReport) -> Option<PathBuf> {
    p.device.clone()
}

/// The partition GUID of the ESP the loader ran from, if the loader said.
pub fn loader_device_part_uuid(efivars: &Path) -> Option<Uuid> {
    let s = efivar::read_string(efivars, "LoaderDevicePartUUID", efivar::LOADER_VENDOR)?;
    Uuid::parse_str(&s).ok()
}

/// Picks the RayOS install among `disks`.
pub fn find_install(disks: &[Disk], boot_esp: Option<Uuid>) -> Option<Install> {
    let with_data: Vec<&Disk> = disks
        .iter()
        .filter(|d| {
            d.partitions
                .iter()
                .any(|p| p.type_guid == Some(types::RAYOS_DATA) && p.device.is_some())
        })
        .collect();
    let chosen = boot_esp
        .and_then(|g| {
            with_data
                .iter()
                .find(|d| d.partitions.iter().any(|p| p.unique_guid == Some(g)))
        })
        .or_else(|| with_data.first())?;
    let by_type = |t: Uuid| {
        let mut ps: Vec<&PartitionReport> = chosen
            .partitions
            .iter()
            .filter(|p| p.type_guid == Some(t))
            .collect();
        // Prefer the RayOS labels when a disk has more than one of a type.
        ps.sort_by_key(|p| !(p.has_label("rayos-data") || p.has_label("rayos-system")));
        ps.first().and_then(|p| part_dev(p))
    };
    Some(Install {
        disk: chosen.path.clone(),
        data: by_type(types::RAYOS_DATA)?,
        system: by_type(types::XBOOTLDR),
        esp: boot_esp
            .and_then(|g| {
                chosen
                    .partitions
                    .iter()
                    .find(|p| p.unique_guid == Some(g))
                    .and_then(part_dev)
            })
            .or_else(|| by_type(types::ESP)),
        others: with_data
            .iter()
            .filter(|d| d.path != chosen.path)
            .map(|d| d.path.clone())
            .collect(),
    })
}

/// A mountable volume that may carry installer files.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Volume {
    /// The volume's device (a partition, or the whole disk).
    pub device: PathBuf,
    /// The disk it is on.
    pub disk: PathBuf,
    /// The filesystem type to mount it with (`vfat`, `iso9660`).
    pub fstype: &'static str,
    /// The filesystem label, if any.
    pub label: Option<String>,
    /// On removable media: the kernel's removable flag, or attached by USB.
    pub removable: bool,
}

fn kernel_fstype(fs: Filesystem) -> Option<&'static str> {
    match fs {
        Filesystem::Fat12 | Filesystem::Fat16 | Filesystem::Fat32 => Some("vfat"),
        Filesystem::Iso9660 => Some("iso9660"),
        _ => None,
    }
}

/// Whether block device `disk` (`/dev/sda`) is attached by USB (sysfs).
pub fn usb_attached(disk: &Path) -> bool {
    crate::usb::kernel_name(disk).is_some_and(|n| crate::usb::on_usb(Path::new("/sys/block"), &n))
}

/// Every FAT or ISO 9660 volume: whole-disk filesystems (CD, hybrid ISO on
/// a stick, an unpartitioned FAT stick) and partitions. `usb` says whether
/// a disk is attached by USB (counted as removable).
pub fn fat_and_iso_volumes(disks: &[Disk], usb: impl Fn(&Path) -> bool) -> Vec<Volume> {
    let mut out = Vec::new();
    for d in disks {
        let removable = d.removable || usb(&d.path);
        if let Some(fs) = &d.whole_disk_filesystem
            && let Some(t) = kernel_fstype(fs.filesystem)
        {
            out.push(Volume {
                device: d.path.clone(),
                disk: d.path.clone(),
                fstype: t,
                label: fs.label.clone(),
                removable,
            });
        }
        for p in &d.partitions {
            let (Some(fs), Some(dev)) = (p.filesystem, &p.device) else {
                continue;
            };
            if let Some(t) = kernel_fstype(fs) {
                out.push(Volume {
                    device: dev.clone(),
                    disk: d.path.clone(),
                    fstype: t,
                    label: p.fs_label.clone(),
                    removable,
                });
            }
        }
    }
    out
}

/// Volume label of the installer ISO (xorriso `-V`).
pub const INSTALLER_LABEL: &str = "RAYOS_INSTALL";

/// Orders volumes for the answer-file search: those matching `label` only
/// when one is given; otherwise the installer medium (`medium_disk`) first,
/// then removable disks, then the rest, each group in kernel order.
pub fn search_order(
    volumes: &[Volume],
    label: Option<&str>,
    medium_disk: Option<&Path>,
) -> Vec<Volume> {
    let mut v: Vec<Volume> = volumes
        .iter()
        .filter(|x| match label {
            Some(l) => x
                .label
                .as_deref()
                .is_some_and(|xl| xl.eq_ignore_ascii_case(l)),
            None => true,
        })
        .cloned()
        .collect();
    v.sort_by_key(|x| {
        let on_medium = medium_disk.is_some_and(|m| x.disk == m);
        (!on_medium, !x.removable)
    });
    v
}

/// The volumes an answer file is looked for on, in order, and the ones left
/// out (to tell the person why a file there was not used). With `label`
/// (`rayos.answers=LABEL:PATH`): the volumes with that label, on any disk.
/// Without: the installer medium (`medium_disk`) first, then removable
/// media, each in kernel order; volumes of internal disks are left out.
pub fn answer_sources(
    volumes: &[Volume],
    label: Option<&str>,
    medium_disk: Option<&Path>,
) -> (Vec<Volume>, Vec<Volume>) {
    let on_medium = |x: &Volume| medium_disk.is_some_and(|m| x.disk == m);
    let (mut used, skipped): (Vec<Volume>, Vec<Volume>) =
        volumes.iter().cloned().partition(|x| match label {
            Some(l) => x
                .label
                .as_deref()
                .is_some_and(|xl| xl.eq_ignore_ascii_case(l)),
            None => on_medium(x) || x.removable,
        });
    used.sort_by_key(|x| !on_medium(x));
    let skipped = match label {
        // Other labels are not "left out", just not named.
        Some(_) => Vec::new(),
        None => skipped,
    };
    (used, skipped)
}

/// `root` joined with the volume-relative `rel` (`/x/y.toml`), only when
/// that is a regular file. FAT is case-insensitive but the kernel's vfat
/// driver already matches names that way.
pub fn file_on(root: &Path, rel: &str) -> Option<PathBuf> {
    let p = root.join(rel.trim_start_matches('/'));
    p.is_file().then_some(p)
}

/// The last by name of the `*.efi` files in `dir` whose lower-case name
/// passes `keep` (media may present names in any case).
fn newest_efi(dir: &Path, keep: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default();
            n.ends_with(".efi") && keep(&n)
        })
        .collect();
    found.sort();
    found.pop()
}

/// The newest RayOS UKI under `root/EFI/Linux/` (installer media carry one).
pub fn uki_on(root: &Path) -> Option<PathBuf> {
    let dir = ["EFI/Linux", "efi/linux", "EFI/LINUX"]
        .iter()
        .map(|d| root.join(d))
        .find(|d| d.is_dir())?;
    newest_efi(&dir, |n| {
        n.starts_with(uki_name::PREFIX) && !n.contains("recovery")
    })
}

/// The recovery UKI carried beside the system image `uki` on an installer
/// medium (`rayos-recovery-<version>.efi`, newest by name).
pub fn recovery_uki_beside(uki: &Path) -> Option<PathBuf> {
    newest_efi(uki.parent()?, |n| n.starts_with(uki_name::RECOVERY_PREFIX))
}

/// Where installer media carry the Debian VM image, from the medium's root.
pub const LINUX_VM_IMAGE: &str = "rayos/linux-vm.qcow2.zst";

/// The Debian VM image on the medium whose system image is `uki`
/// (`<root>/EFI/Linux/<uki>` → `<root>/rayos/linux-vm.qcow2.zst`).
pub fn linux_vm_image_beside(uki: &Path) -> Option<PathBuf> {
    let root = uki.parent()?.parent()?.parent()?;
    [LINUX_VM_IMAGE, "RAYOS/LINUX-VM.QCOW2.ZST"]
        .iter()
        .find_map(|rel| file_on(root, rel))
}

/// `rayos install`/`wizard` arguments naming the images on an installer
/// medium: the system image and, when the medium has them, the recovery
/// UKI and the Debian VM image.
pub fn image_args(uki: &Path) -> Vec<String> {
    let mut args = vec!["--system-image".to_string(), uki.display().to_string()];
    if let Some(r) = recovery_uki_beside(uki) {
        args.extend(["--recovery-image".to_string(), r.display().to_string()]);
    }
    if let Some(i) = linux_vm_image_beside(uki) {
        args.extend(["--linux-vm-image".to_string(), i.display().to_string()]);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn vol(dev: &str, disk: &str, label: Option<&str>, removable: bool) -> Volume {
        Volume {
            device: dev.into(),
            disk: disk.into(),
            fstype: "vfat",
            label: label.map(String::from),
            removable,
        }
    }

    /// Issue 10: an answer file on an internal disk was used (and started a
    /// whole-disk install at once); it is not looked for there any more.
    #[test]
    fn answer_files_only_from_the_medium_and_removable_media() {
        let v = vec![
            vol("/dev/vda1", "/dev/vda", Some("ANSWERS"), false),
            vol("/dev/sdb1", "/dev/sdb", Some("SEED"), true),
            vol("/dev/sr0", "/dev/sr0", Some("RAYOS_INSTALL"), true),
            vol("/dev/vdb", "/dev/vdb", Some("RAYOS_INSTALL"), false),
        ];
        let (used, skipped) = answer_sources(&v, None, Some(Path::new("/dev/vdb")));
        let devs: Vec<_> = used.iter().map(|x| x.device.to_str().unwrap()).collect();
        assert_eq!(devs, vec!["/dev/vdb", "/dev/sdb1", "/dev/sr0"]);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].device, Path::new("/dev/vda1"));
        // A label named on the command line is taken from any disk.
        let (used, skipped) = answer_sources(&v, Some("answers"), None);
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].device, Path::new("/dev/vda1"));
        assert!(skipped.is_empty());
        assert!(answer_sources(&v, Some("NOPE"), None).0.is_empty());
    }

    #[test]
    fn usb_disks_count_as_removable() {
        let mut blank = std::io::Cursor::new(vec![0u8; 1 << 20]);
        let mut d =
            rayos_disk::enumerate::build_report(&mut blank, Path::new("/dev/sdc"), 512).unwrap();
        d.removable = false;
        d.whole_disk_filesystem = Some(rayos_disk::FsInfo {
            filesystem: Filesystem::Fat32,
            label: Some("STICK".into()),
            uuid: None,
        });
        let v = fat_and_iso_volumes(std::slice::from_ref(&d), |_| false);
        assert!(!v[0].removable);
        let v = fat_and_iso_volumes(std::slice::from_ref(&d), |p| p == Path::new("/dev/sdc"));
        assert!(v[0].removable, "a USB SSD without the removable flag");
    }

    #[test]
    fn answer_search_order_medium_then_removable() {
        let v = vec![
            vol("/dev/sda1", "/dev/sda", Some("EFI"), false),
            vol("/dev/sdb1", "/dev/sdb", Some("SEED"), true),
            vol("/dev/sr0", "/dev/sr0", Some("RAYOS_INSTALL"), true),
        ];
        let o = search_order(&v, None, Some(Path::new("/dev/sr0")));
        let devs: Vec<_> = o.iter().map(|x| x.device.to_str().unwrap()).collect();
        assert_eq!(devs, vec!["/dev/sr0", "/dev/sdb1", "/dev/sda1"]);
        let o = search_order(&v, Some("seed"), Some(Path::new("/dev/sr0")));
        assert_eq!(o.len(), 1);
        assert_eq!(o[0].device, Path::new("/dev/sdb1"));
        assert!(search_order(&v, Some("NOPE"), None).is_empty());
    }

    #[test]
    fn files_and_ukis_on_a_volume() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("rayos-answers.toml"), "x").unwrap();
        assert!(file_on(d.path(), "/rayos-answers.toml").is_some());
        assert!(file_on(d.path(), "/nope.toml").is_none());
        assert!(
            file_on(d.path(), "/").is_none(),
            "a directory is not an answer file"
        );
        assert!(uki_on(d.path()).is_none());
        fs::create_dir_all(d.path().join("EFI/Linux")).unwrap();
        for n in [
            "rayos-0.1.efi",
            "rayos-0.2+3.efi",
            "rayos-recovery.efi",
            "other.efi",
        ] {
            fs::write(d.path().join("EFI/Linux").join(n), "").unwrap();
        }
        let uki = uki_on(d.path()).unwrap();
        assert_eq!(uki.file_name().unwrap(), "rayos-0.2+3.efi");
        // No versioned recovery UKI yet: only the system image is named.
        assert_eq!(image_args(&uki).len(), 2);
        for n in ["rayos-recovery-0.1.efi", "rayos-recovery-0.2.efi"] {
            fs::write(d.path().join("EFI/Linux").join(n), "").unwrap();
        }
        assert_eq!(
            uki_on(d.path()).unwrap(),
            uki,
            "recovery is never the system"
        );
        let args = image_args(&uki);
        assert_eq!(args[2], "--recovery-image");
        assert!(
            args[3].ends_with("EFI/Linux/rayos-recovery-0.2.efi"),
            "{args:?}"
        );
        assert_eq!(args.len(), 4, "no Debian VM image yet");
        fs::create_dir_all(d.path().join("rayos")).unwrap();
        fs::write(d.path().join(LINUX_VM_IMAGE), "").unwrap();
        let args = image_args(&uki);
        assert_eq!(args[4], "--linux-vm-image");
        assert!(args[5].ends_with("rayos/linux-vm.qcow2.zst"), "{args:?}");
    }

    #[test]
    fn finds_install_in_a_real_gpt_image() {
        // A real GPT written by rayos-disk, probed the way init does it.
        use rayos_disk::gpt::{Gpt, Partition};
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let f = fs::File::create(&img).unwrap();
        f.set_len(64 << 20).unwrap();
        let mut g = Gpt::new(64 << 20, 512).unwrap();
        g.add(Partition::new(1, types::ESP, 2048, 4095, "EFI"))
            .unwrap();
        g.add(Partition::new(
            2,
            types::XBOOTLDR,
            4096,
            8191,
            "rayos-system",
        ))
        .unwrap();
        g.add(Partition::new(
            3,
            types::RAYOS_DATA,
            8192,
            100_000,
            "rayos-data",
        ))
        .unwrap();
        let mut rw = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        g.write(&mut rw).unwrap();
        drop(rw);
        let mut disk = rayos_disk::probe_image(&img, None).unwrap();
        // Image files have no partition nodes; give them the names a block
        // device would have.
        for p in &mut disk.partitions {
            p.device = Some(PathBuf::from(format!("/dev/vda{}", p.number)));
        }
        let esp_guid = disk.partitions[0].unique_guid;
        let i = find_install(std::slice::from_ref(&disk), esp_guid).unwrap();
        assert_eq!(i.data, Path::new("/dev/vda3"));
        assert_eq!(i.system.as_deref(), Some(Path::new("/dev/vda2")));
        assert_eq!(i.esp.as_deref(), Some(Path::new("/dev/vda1")));
        assert!(i.others.is_empty());

        // A second disk with a data partition: the boot ESP decides.
        let mut other = disk.clone();
        other.path = "/dev/vdb".into();
        for p in &mut other.partitions {
            p.unique_guid = Some(Uuid::new_v4());
            p.device = Some(PathBuf::from(format!("/dev/vdb{}", p.number)));
        }
        let both = vec![other.clone(), disk.clone()];
        let i = find_install(&both, esp_guid).unwrap();
        assert_eq!(i.data, Path::new("/dev/vda3"));
        assert_eq!(i.others, vec![PathBuf::from("/dev/vdb")]);
        let i = find_install(&both, None).unwrap();
        assert_eq!(i.data, Path::new("/dev/vdb3"), "no loader hint: first disk");
        assert!(find_install(&[], None).is_none());
    }
}
