//! `rayos media [--unmount]`: what can be given to a VM as installation
//! media — disks that are not RayOS's (removable sticks first), their
//! partitions and filesystems, and the `.iso`/`.img`/`.qcow2`/`.vhdx`
//! files on them — with the command that attaches each.
//!
//! To find files, each partition (or whole-disk filesystem) with a
//! filesystem RayOS can read (FAT, exFAT, NTFS, ext2/3/4, ISO 9660/UDF) is
//! mounted **read-only** at `/run/rayos/media/<device>` and left mounted,
//! so the listed paths can be attached (`rayos vm media NAME attach
//! /run/rayos/media/sdb1/Win11.iso`). `--unmount` unmounts them all; a
//! stick must be unmounted before its *device* is attached (RayOS never
//! gives a guest a disk the host has mounted).
//!
//! Limits: files are looked for 3 directories deep; disks holding a RayOS
//! install or in use by the host (mounted elsewhere, swap) are listed as
//! such and not mounted.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use rayos_disk::{Disk, Filesystem};

/// Where media are mounted.
pub const MEDIA_ROOT: &str = "/run/rayos/media";
const EXTENSIONS: &[&str] = &["iso", "img", "qcow2", "vhdx"];
const DEPTH: usize = 3;

#[derive(clap::Args)]
pub struct Args {
    /// Unmount everything `rayos media` mounted, and list nothing.
    #[arg(long)]
    unmount: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let root = Path::new(MEDIA_ROOT);
    if args.unmount {
        let n = unmount_all(root);
        println!("unmounted {n} media filesystem(s)");
        return Ok(ExitCode::SUCCESS);
    }
    let disks = rayos_disk::list_block_devices().context("listing the block devices failed")?;
    let mut shown = 0;
    // Removable disks first: they are what people bring.
    let mut order: Vec<&Disk> = disks.iter().collect();
    order.sort_by_key(|d| !d.removable);
    for d in order {
        if d.rayos.is_some() {
            println!("{}: RayOS's own disk (not media)\n", d.path.display());
            continue;
        }
        shown += 1;
        print!("{}", describe(d, root));
    }
    if shown == 0 {
        println!("no disks besides RayOS's: plug in the USB stick and run `rayos media` again");
    }
    Ok(ExitCode::SUCCESS)
}

/// The mount type for a filesystem RayOS reads media from.
fn fs_type(fs: Filesystem) -> Option<&'static [&'static str]> {
    Some(match fs {
        Filesystem::Fat12 | Filesystem::Fat16 | Filesystem::Fat32 => &["vfat"],
        Filesystem::Exfat => &["exfat"],
        Filesystem::Ntfs => &["ntfs3"],
        Filesystem::Ext2 | Filesystem::Ext3 | Filesystem::Ext4 => &["ext4"],
        // Windows ISOs are UDF with an ISO 9660 bridge: UDF sees the
        // large install.wim, ISO 9660 is the fallback.
        Filesystem::Iso9660 => &["udf", "iso9660"],
        _ => return None,
    })
}

fn size(bytes: u64) -> String {
    let g = bytes as f64 / (1u64 << 30) as f64;
    if g >= 1.0 {
        format!("{g:.1} GiB")
    } else {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

fn describe(d: &Disk, root: &Path) -> String {
    let mut out = format!(
        "{}: {}{} {}\n",
        d.path.display(),
        d.model.as_deref().unwrap_or("disk"),
        if d.removable { " (removable)" } else { "" },
        size(d.size_bytes)
    );
    let busy = !d.in_use.is_empty();
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    if let Some(fs) = &d.whole_disk_filesystem {
        out += &format!(
            "  whole disk: {}{}\n",
            fs.filesystem.name(),
            fs.label
                .as_deref()
                .map(|l| format!(" \"{l}\""))
                .unwrap_or_default()
        );
        if fs.filesystem == Filesystem::Iso9660 {
            // Not mounted: it is attached whole, as a CD.
            out += &format!(
                "  written from an ISO: rayos vm media NAME attach {} --as cdrom\n",
                d.path.display()
            );
        } else if let Some(types) = fs_type(fs.filesystem)
            && !busy
        {
            // A stick formatted without a partition table.
            out += &files_on(&d.path, &root.join(name(&d.path)), types);
        }
    }
    // A stick written from a hybrid ISO also has a partition table whose
    // partitions (the ESP among them) are views into the ISO: mounting one
    // would make the stick "in use by the host" and so refused when it is
    // attached whole, as the line above says to.
    let from_iso = d
        .whole_disk_filesystem
        .as_ref()
        .is_some_and(|fs| fs.filesystem == Filesystem::Iso9660);
    for p in &d.partitions {
        let Some(dev) = &p.device else { continue };
        let fsname = p.filesystem.map(|f| f.name()).unwrap_or("no filesystem");
        out += &format!(
            "  {}: {} {}{}\n",
            dev.display(),
            fsname,
            size(p.size_bytes),
            p.fs_label
                .as_deref()
                .map(|l| format!(" \"{l}\""))
                .unwrap_or_default()
        );
        if let Some(types) = p.filesystem.and_then(fs_type)
            && !from_iso
        {
            out += &files_on(dev, &root.join(name(dev)), types);
        }
    }
    if d.whole_disk_filesystem.is_none() && !d.partitions.is_empty() && !busy {
        out += &format!(
            "  a stick with copied files (Rufus, Media Creation Tool): `rayos media --unmount`, then rayos vm media NAME attach {} --as usb\n",
            d.path.display()
        );
    }
    out.push('\n');
    out
}

/// Mounts `dev` read-only at `at` and lists the image files on it, each
/// with the command that attaches it.
fn files_on(dev: &Path, at: &Path, types: &[&str]) -> String {
    let mut out = String::new();
    match mount_ro(dev, at, types) {
        Ok(()) => {
            for f in image_files(at) {
                out += &format!(
                    "    {} {}\n      rayos vm media NAME attach {} [--copy]\n",
                    f.display(),
                    size(fs::metadata(&f).map(|m| m.len()).unwrap_or(0)),
                    f.display()
                );
            }
        }
        Err(e) => out += &format!("    (not read: {e})\n"),
    }
    out
}

/// Mounts `dev` read-only at `at` (kept when already mounted there).
fn mount_ro(dev: &Path, at: &Path, types: &[&str]) -> Result<(), String> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let at_s = at.display().to_string();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(at_s.as_str()))
    {
        return Ok(());
    }
    fs::create_dir_all(at).map_err(|e| format!("cannot create {at_s}: {e}"))?;
    let mut last = String::new();
    for t in types {
        // The kernel loads the filesystem's module on demand (its
        // modprobe is RayOS's own, docs/init.md).
        match rayos_init::sys::mount_foreign_ro(&dev.display().to_string(), at, t) {
            Ok(()) => return Ok(()),
            Err(e) => last = rayos_base::error::chain(&e),
        }
    }
    let _ = fs::remove_dir(at);
    Err(last)
}

/// `.iso`/`.img`/`.qcow2`/`.vhdx` files under `dir`, [`DEPTH`] levels deep.
fn image_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let p = e.path();
            if ft.is_dir() && depth + 1 < DEPTH {
                stack.push((p, depth + 1));
            } else if ft.is_file()
                && p.extension()
                    .and_then(|x| x.to_str())
                    .is_some_and(|x| EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Unmounts every filesystem below `root`; returns how many.
fn unmount_all(root: &Path) -> usize {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let prefix = format!("{}/", root.display());
    let mut n = 0;
    for at in mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&prefix))
    {
        if rayos_init::sys::unmount(Path::new(at)).is_ok() {
            let _ = fs::remove_dir(at);
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_files_are_found_three_levels_deep() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        fs::create_dir_all(p.join("a/b/c")).unwrap();
        for f in [
            "Win11.ISO",
            "a/x.img",
            "a/b/y.qcow2",
            "a/b/c/too-deep.iso",
            "a/readme.txt",
        ] {
            fs::write(p.join(f), b"x").unwrap();
        }
        let found: Vec<String> = image_files(p)
            .iter()
            .map(|f| f.strip_prefix(p).unwrap().display().to_string())
            .collect();
        assert_eq!(found, ["Win11.ISO", "a/b/y.qcow2", "a/x.img"]);
    }

    /// A stick written with `dd` from a hybrid ISO (xorriso's, as RayOS's
    /// and the Windows stand-in's are): its FAT ESP partition is listed but
    /// not mounted, so the whole stick can still be attached.
    #[test]
    fn a_stick_written_from_a_hybrid_iso_is_listed_without_mounting_its_partitions() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let payload = p.join("hello.txt");
        fs::write(&payload, b"hello").unwrap();
        let mut tree = rayos_image::fat::FatTree::new();
        tree.add("EFI/BOOT/BOOTX64.EFI", &payload);
        let esp = p.join("efiboot.img");
        rayos_image::fat::build(&esp, "ESP", &tree, None).unwrap();
        let iso = p.join("stick.img");
        rayos_image::media::build_iso_labelled(
            &iso,
            &esp,
            &[("hello.txt".into(), payload.clone())],
            "HYBRID",
        )
        .unwrap();
        let mut disk = rayos_disk::probe_image(&iso, None).unwrap();
        assert_eq!(
            disk.whole_disk_filesystem.as_ref().map(|f| f.filesystem),
            Some(Filesystem::Iso9660)
        );
        disk.path = "/dev/sdz".into();
        disk.removable = true;
        let mut fat = 0;
        for (i, part) in disk.partitions.iter_mut().enumerate() {
            // Block devices carry device nodes; this one names the image,
            // which a mount would try (and fail on, as it is no device).
            part.device = Some(iso.with_extension(format!("part{i}")));
            fat += usize::from(part.filesystem.is_some_and(|f| f.is_fat()));
        }
        assert!(fat >= 1, "the hybrid ISO has a FAT ESP: {disk:?}");
        let root = p.join("media");
        let text = describe(&disk, &root);
        assert!(
            text.contains("written from an ISO: rayos vm media NAME attach /dev/sdz --as cdrom"),
            "{text}"
        );
        assert!(text.contains(": FAT"), "the ESP is listed: {text}");
        assert!(!text.contains("not read"), "a mount was tried: {text}");
        assert!(!root.exists(), "a mount point was made: {text}");
    }

    #[test]
    fn readable_filesystems_have_mount_types() {
        assert_eq!(fs_type(Filesystem::Ntfs), Some(&["ntfs3"][..]));
        assert_eq!(fs_type(Filesystem::Exfat), Some(&["exfat"][..]));
        assert_eq!(fs_type(Filesystem::Iso9660), Some(&["udf", "iso9660"][..]));
        assert!(fs_type(Filesystem::Bitlocker).is_none());
    }
}
