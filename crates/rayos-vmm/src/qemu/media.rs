//! Installation media: which sources may be given to a guest, how the
//! guest sees them, and the QMP changes that attach and eject them while a
//! VM runs.
//!
//! Sources, in the forms people have them:
//! - an image file (an ISO on a stick, or copied onto the data volume);
//! - the block device of a stick written with `dd` from an ISO;
//! - the block device of a stick whose files a tool copied (Rufus, the
//!   Media Creation Tool, `cp`).
//!
//! Every medium is opened raw and read-only (`cmdline::media_blockdev`):
//! its format is never probed, so a file that is really a qcow2 cannot name
//! a backing file, and the guest cannot write the person's stick.
//!
//! A block device is accepted only when no partition of its whole disk is
//! mounted, used as swap or held by another device (device mapper, RAID):
//! the disks RayOS runs from always have a mounted partition (the data
//! volume), so they are never handed to a guest, not even read-only, and a
//! stick the host is reading is not shared with a guest either.
//!
//! Limits: the check happens before each launch and each attach; a disk
//! mounted afterwards by hand is not noticed.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::image::ImageError;

/// How a guest sees a medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// A CD-ROM on the AHCI controller.
    Cdrom,
    /// A read-only `usb-storage` device on the xHCI controller.
    Usb,
}

/// What a source is on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A regular file (an image).
    File,
    /// A block device (a real CD or stick).
    Device,
}

/// Whether the path names a host block device on a command line built
/// without I/O: RayOS only accepts devices under `/dev` ([`check`]).
pub fn is_device_path(p: &Path) -> bool {
    p.starts_with("/dev/")
}

fn refused(path: &Path, why: impl std::fmt::Display) -> ImageError {
    ImageError::Refused(format!("{}: {why}", path.display()))
}

/// Decides whether `path` may be given to a guest as a medium.
pub fn check(path: &Path) -> Result<Source, ImageError> {
    if !path.is_absolute() {
        return Err(refused(path, "a medium must be an absolute path"));
    }
    let md = fs::metadata(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if md.is_file() {
        return Ok(Source::File);
    }
    if !md.file_type().is_block_device() {
        return Err(refused(
            path,
            "not an image file or a block device: give an .iso/.img file or a stick such as /dev/sdb",
        ));
    }
    if !is_device_path(path) {
        return Err(refused(
            path,
            "a block device is taken only by its /dev path",
        ));
    }
    check_device_free(path, md.rdev())?;
    Ok(Source::Device)
}

fn dev_numbers(rdev: u64) -> (u64, u64) {
    // glibc's gnu_dev_major/minor encoding.
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major, minor)
}

fn read_dev(dir: &Path) -> Option<String> {
    fs::read_to_string(dir.join("dev"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The `major:minor` of the whole disk holding `rdev` and of every
/// partition on it, and whether any of them has holders.
fn disk_family(rdev: u64) -> io::Result<(Vec<String>, bool)> {
    let (ma, mi) = dev_numbers(rdev);
    let mut node = fs::canonicalize(format!("/sys/dev/block/{ma}:{mi}"))?;
    if node.join("partition").exists()
        && let Some(parent) = node.parent()
    {
        node = parent.to_path_buf();
    }
    let mut devs = Vec::new();
    let mut held = false;
    let mut visit = |d: &Path| {
        if let Some(n) = read_dev(d) {
            devs.push(n);
        }
        if fs::read_dir(d.join("holders")).is_ok_and(|mut h| h.next().is_some()) {
            held = true;
        }
    };
    visit(&node);
    for e in fs::read_dir(&node)?.flatten() {
        let p = e.path();
        if p.join("partition").exists() {
            visit(&p);
        }
    }
    Ok((devs, held))
}

fn check_device_free(path: &Path, rdev: u64) -> Result<(), ImageError> {
    let io = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let (devs, held) = disk_family(rdev).map_err(io)?;
    if held {
        return Err(refused(
            path,
            "its disk is in use by another device (device mapper or RAID): RayOS does not give it to a guest",
        ));
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(io)?;
    for line in mountinfo.lines() {
        let mut f = line.split_whitespace();
        let (Some(_), Some(_), Some(majmin), Some(_), Some(at)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if devs.iter().any(|d| d == majmin) {
            return Err(refused(
                path,
                format!(
                    "a partition of its disk is mounted at {at}: RayOS's own disks and mounted disks are never given to a guest; unplug and replug the stick, or pick another"
                ),
            ));
        }
    }
    let swaps = fs::read_to_string("/proc/swaps").unwrap_or_default();
    for name in swaps
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
    {
        if let Ok(md) = fs::metadata(name)
            && md.file_type().is_block_device()
        {
            let (ma, mi) = dev_numbers(md.rdev());
            if devs.iter().any(|d| *d == format!("{ma}:{mi}")) {
                return Err(refused(path, "a partition of its disk is used as swap"));
            }
        }
    }
    Ok(())
}

/// How a source is given to the guest when the person does not say: a
/// CD-ROM when it is named `*.iso` or starts with an ISO 9660 file system
/// (an ISO file, or a stick written from one; hybrid ISOs included), a
/// USB stick otherwise.
pub fn detect_form(path: &Path) -> Result<Form, ImageError> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("iso"))
    {
        return Ok(Form::Cdrom);
    }
    let mut f = fs::File::open(path).map_err(|source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(if iso9660_at_start(&mut f) {
        Form::Cdrom
    } else {
        Form::Usb
    })
}

/// The ISO 9660 primary volume descriptor: sector 16 (2048-byte sectors),
/// type byte then `CD001`.
fn iso9660_at_start<R: Read + Seek>(r: &mut R) -> bool {
    let mut id = [0u8; 6];
    r.seek(SeekFrom::Start(16 * 2048)).is_ok()
        && r.read_exact(&mut id).is_ok()
        && &id[1..6] == b"CD001"
}

/// A medium change for a running VM, as the supervisor asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Insert `path` into the CD drive `index` (which must exist and be
    /// empty).
    InsertCd {
        /// The drive's index.
        index: usize,
        /// The medium (a file or a block device).
        path: PathBuf,
    },
    /// Empty the CD drive `index`.
    EjectCd {
        /// The drive's index.
        index: usize,
    },
    /// Plug a read-only USB stick as `usb<index>` on xHCI port `index+1`.
    PlugUsb {
        /// The stick's index.
        index: usize,
        /// The medium (a file or a block device).
        path: PathBuf,
    },
    /// Unplug `usb<index>`.
    UnplugUsb {
        /// The stick's index.
        index: usize,
    },
}

/// QMP/QEMU names of the media devices, shared by the command line and
/// the runtime changes so both name the same nodes.
pub mod names {
    /// The CD drive's device id: `cd<i>`.
    pub fn cd_device(i: usize) -> String {
        format!("cd{i}")
    }
    /// The block node of the CD drive's medium: `media<i>`.
    pub fn cd_node(i: usize) -> String {
        format!("media{i}")
    }
    /// The USB stick's device id: `usb<i>`.
    pub fn usb_device(i: usize) -> String {
        format!("usb{i}")
    }
    /// The block node of the USB stick's medium: `usbmedia<i>`.
    pub fn usb_node(i: usize) -> String {
        format!("usbmedia{i}")
    }
    /// The xHCI port of `usb<i>`; ports are fixed so a restored VM finds
    /// each stick where it was (port 1 belongs to the tablet).
    pub fn usb_port(i: usize) -> usize {
        i + 2
    }
}

/// Most USB sticks a VM takes (xHCI has 4 USB 2 ports by default; one is
/// the tablet's).
pub const MAX_USB: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn iso_signature_decides_the_form() {
        let mut iso = vec![0u8; 17 * 2048];
        iso[16 * 2048..16 * 2048 + 6].copy_from_slice(b"\x01CD001");
        assert!(iso9660_at_start(&mut Cursor::new(&iso)));
        let plain = vec![0u8; 17 * 2048];
        assert!(!iso9660_at_start(&mut Cursor::new(&plain)));
        // Too short to hold a volume descriptor.
        assert!(!iso9660_at_start(&mut Cursor::new(vec![0u8; 100])));
    }

    #[test]
    fn an_iso_name_is_a_cd_whatever_it_holds() {
        let d = std::env::temp_dir().join(format!("rayos-media-form-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        let named = d.join("Win11.ISO");
        fs::write(&named, b"not iso 9660").unwrap();
        assert_eq!(detect_form(&named).unwrap(), Form::Cdrom);
        let stick = d.join("stick.img");
        fs::write(&stick, vec![0u8; 40 * 1024]).unwrap();
        assert_eq!(detect_form(&stick).unwrap(), Form::Usb);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn files_pass_and_other_things_are_refused() {
        let d = std::env::temp_dir().join(format!("rayos-media-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        let f = d.join("x.iso");
        fs::write(&f, b"x").unwrap();
        assert_eq!(check(&f).unwrap(), Source::File);
        assert!(matches!(check(&d), Err(ImageError::Refused(_))));
        assert!(matches!(
            check(Path::new("relative.iso")),
            Err(ImageError::Refused(_))
        ));
        // A character device is not a medium.
        assert!(matches!(
            check(Path::new("/dev/null")),
            Err(ImageError::Refused(_))
        ));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn device_numbers_decode() {
        // 8:16 (/dev/sdb) and 259:65536 in glibc's encoding.
        assert_eq!(dev_numbers(0x810), (8, 16));
        assert_eq!(dev_numbers(libc::makedev(259, 65536)), (259, 65536));
    }
}
