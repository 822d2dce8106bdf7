//! UEFI boot entries: the `EFI_LOAD_OPTION` encoder (pure, UEFI 2.10
//! §3.1.3) and its writer to efivarfs (`/sys/firmware/efi/efivars`).
//!
//! Protocol of [`add_boot_entry`]: pick the `Boot####` that already holds
//! an identical "RayOS" option (so a re-run does not pile up entries) or the
//! lowest free number; write it; then put it first in `BootOrder`, keeping
//! every other entry in its order. An efivarfs file is the 4-byte attributes
//! followed by the data, written in one `write(2)`. Existing variables are
//! immutable (`chattr +i`) until the flag is cleared with `FS_IOC_SETFLAGS`.
//!
//! Limits: only `HD(...)/File(...)` paths on GPT disks, which is all
//! systemd-boot on an ESP needs. Tested byte for byte in unit tests; the
//! write itself runs against OVMF in the end-to-end tests.

use std::fs;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use uuid::Uuid;

/// EFI_GLOBAL_VARIABLE vendor GUID.
pub const EFI_GLOBAL_VARIABLE: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
pub const VAR_ATTRS: u32 = 0x7;
pub const LOAD_OPTION_ACTIVE: u32 = 0x1;
pub const EFIVARS_DIR: &str = "/sys/firmware/efi/efivars";

#[derive(Debug, thiserror::Error)]
pub enum EfiVarError {
    #[error("cannot read EFI variable {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("cannot write EFI variable {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("no free Boot#### variable left")]
    NoFreeEntry,
}

/// Where the loader lives: a GPT partition and a path on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HdFilePath {
    pub partition_number: u32,
    /// In logical sectors of the disk.
    pub start_lba: u64,
    pub size_lba: u64,
    pub partition_guid: Uuid,
    /// Backslash-separated, for example `\EFI\systemd\systemd-bootx64.efi`.
    pub file: String,
}

fn ucs2_z(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(|c| c.to_le_bytes())
        .collect()
}

/// The device path `HD(n,GPT,guid,start,size)/File(path)/End`.
pub fn device_path(p: &HdFilePath) -> Vec<u8> {
    let mut v = Vec::with_capacity(42 + 64);
    // Media device path, Hard Drive node: 42 bytes.
    v.extend_from_slice(&[0x04, 0x01, 42, 0]);
    v.extend_from_slice(&p.partition_number.to_le_bytes());
    v.extend_from_slice(&p.start_lba.to_le_bytes());
    v.extend_from_slice(&p.size_lba.to_le_bytes());
    // EFI_GUID is stored mixed-endian, the same layout as on the GPT.
    v.extend_from_slice(&p.partition_guid.to_bytes_le());
    v.push(0x02); // MBRType: GUID partition table
    v.push(0x02); // SignatureType: GUID
    // Media device path, File Path node.
    let name = ucs2_z(&p.file);
    let len = (4 + name.len()) as u16;
    v.extend_from_slice(&[0x04, 0x04]);
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(&name);
    // End of entire device path.
    v.extend_from_slice(&[0x7f, 0xff, 0x04, 0x00]);
    v
}

/// An `EFI_LOAD_OPTION`: attributes, path length, description, path.
pub fn load_option(description: &str, path: &HdFilePath) -> Vec<u8> {
    let dp = device_path(path);
    let mut v = Vec::new();
    v.extend_from_slice(&LOAD_OPTION_ACTIVE.to_le_bytes());
    v.extend_from_slice(&(dp.len() as u16).to_le_bytes());
    v.extend_from_slice(&ucs2_z(description));
    v.extend_from_slice(&dp);
    v
}

/// `BootOrder` with `first` moved (or added) to the front.
pub fn boot_order_with_first(order: &[u16], first: u16) -> Vec<u16> {
    std::iter::once(first)
        .chain(order.iter().copied().filter(|&n| n != first))
        .collect()
}

fn var_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-{EFI_GLOBAL_VARIABLE}"))
}

/// Reads a variable's data (without the attribute word); None if absent.
pub fn read_var(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, EfiVarError> {
    let p = var_path(dir, name);
    match fs::read(&p) {
        Ok(b) if b.len() >= 4 => Ok(Some(b[4..].to_vec())),
        Ok(_) => Ok(Some(Vec::new())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EfiVarError::Read(p, e)),
    }
}

const FS_IMMUTABLE_FL: libc::c_int = 0x10;

/// Clears the immutable flag efivarfs sets on existing variables.
fn clear_immutable(file: &fs::File) -> std::io::Result<()> {
    // The kernel reads and writes an `int` for these ioctls (despite the
    // `long` in their definitions).
    let mut flags: libc::c_int = 0;
    // SAFETY: `file` is an open descriptor for the duration of the call and
    // `flags` is a valid, writable int, which is what FS_IOC_GETFLAGS writes.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if flags & FS_IMMUTABLE_FL == 0 {
        return Ok(());
    }
    flags &= !FS_IMMUTABLE_FL;
    // SAFETY: as above; FS_IOC_SETFLAGS only reads `flags`.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes (creates or replaces) a variable with NV|BS|RT attributes.
pub fn write_var(dir: &Path, name: &str, data: &[u8]) -> Result<(), EfiVarError> {
    let p = var_path(dir, name);
    let err = |e| EfiVarError::Write(p.clone(), e);
    if let Ok(f) = fs::File::open(&p) {
        clear_immutable(&f).map_err(err)?;
    }
    let mut buf = VAR_ATTRS.to_le_bytes().to_vec();
    buf.extend_from_slice(data);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .map_err(err)?;
    // efivarfs takes a variable in exactly one write call.
    let n = f.write(&buf).map_err(err)?;
    if n != buf.len() {
        return Err(err(std::io::Error::other("short write")));
    }
    Ok(())
}

/// The description of an `EFI_LOAD_OPTION` (None if malformed).
pub fn description_of(option: &[u8]) -> Option<String> {
    let units: Vec<u16> = option
        .get(6..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

fn parse_order(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// Adds (or refreshes) the boot entry and puts it first; returns its number.
pub fn add_boot_entry(
    dir: &Path,
    description: &str,
    path: &HdFilePath,
) -> Result<u16, EfiVarError> {
    let option = load_option(description, path);
    let mut free = None;
    let mut same = None;
    for n in 0..=0xffffu16 {
        match read_var(dir, &format!("Boot{n:04X}"))? {
            // An entry of ours from an earlier install (same description) is
            // replaced, so re-runs and reinstalls do not pile up entries.
            Some(data) if description_of(&data).as_deref() == Some(description) => {
                same = Some(n);
                break;
            }
            Some(_) => {}
            None => {
                if free.is_none() {
                    free = Some(n);
                }
                // Entries are dense in practice; stop scanning well past the
                // first gap instead of reading 65536 names.
                if u32::from(n) > u32::from(free.unwrap_or(n)) + 64 {
                    break;
                }
            }
        }
    }
    let num = same.or(free).ok_or(EfiVarError::NoFreeEntry)?;
    if read_var(dir, &format!("Boot{num:04X}"))?.as_deref() != Some(&option[..]) {
        write_var(dir, &format!("Boot{num:04X}"), &option)?;
    }
    let order = read_var(dir, "BootOrder")?
        .map(|b| parse_order(&b))
        .unwrap_or_default();
    let new_order = boot_order_with_first(&order, num);
    if new_order != order {
        let bytes: Vec<u8> = new_order.iter().flat_map(|n| n.to_le_bytes()).collect();
        write_var(dir, "BootOrder", &bytes)?;
    }
    Ok(num)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HdFilePath {
        HdFilePath {
            partition_number: 1,
            start_lba: 2048,
            size_lba: 1_048_576,
            partition_guid: Uuid::parse_str("01234567-89ab-cdef-0123-456789abcdef").unwrap(),
            file: "\\EFI\\systemd\\systemd-bootx64.efi".into(),
        }
    }

    #[test]
    fn load_option_bytes() {
        let o = load_option("RayOS", &sample());
        // attributes, then the device path length: 42 (HD) + 4 + 2*(32+1) (File) + 4 (End)
        assert_eq!(&o[0..4], &[1, 0, 0, 0]);
        let dp_len = 42 + 4 + 2 * 33 + 4;
        assert_eq!(u16::from_le_bytes([o[4], o[5]]) as usize, dp_len);
        // "RayOS\0" in UCS-2
        assert_eq!(&o[6..18], b"R\0a\0y\0O\0S\0\0\0");
        assert_eq!(description_of(&o).as_deref(), Some("RayOS"));
        let dp = &o[18..];
        assert_eq!(dp.len(), dp_len);
        assert_eq!(&dp[0..4], &[4, 1, 42, 0]);
        assert_eq!(&dp[4..8], &1u32.to_le_bytes());
        assert_eq!(&dp[8..16], &2048u64.to_le_bytes());
        assert_eq!(&dp[16..24], &1_048_576u64.to_le_bytes());
        // mixed-endian GUID: first three fields little-endian
        assert_eq!(
            &dp[24..40],
            &[
                0x67, 0x45, 0x23, 0x01, 0xab, 0x89, 0xef, 0xcd, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
                0xcd, 0xef
            ]
        );
        assert_eq!(&dp[40..42], &[2, 2]);
        assert_eq!(&dp[42..44], &[4, 4]);
        assert_eq!(u16::from_le_bytes([dp[44], dp[45]]), 4 + 66);
        assert_eq!(&dp[46..50], b"\\\0E\0");
        assert_eq!(&dp[dp.len() - 4..], &[0x7f, 0xff, 4, 0]);
    }

    #[test]
    fn boot_order_front() {
        assert_eq!(boot_order_with_first(&[3, 1, 4], 4), vec![4, 3, 1]);
        assert_eq!(boot_order_with_first(&[], 0), vec![0]);
        assert_eq!(boot_order_with_first(&[0, 2], 1), vec![1, 0, 2]);
    }

    #[test]
    fn add_entry_in_a_plain_directory_is_idempotent() {
        // A plain directory stands in for efivarfs (no immutable flags there).
        let d = tempfile::tempdir().unwrap();
        write_var(d.path(), "Boot0000", &load_option("Windows", &sample())).unwrap();
        write_var(d.path(), "BootOrder", &[0, 0]).unwrap();
        let n = add_boot_entry(d.path(), "RayOS", &sample()).unwrap();
        assert_eq!(n, 1);
        let raw = fs::read(var_path(d.path(), "Boot0001")).unwrap();
        assert_eq!(&raw[..4], &VAR_ATTRS.to_le_bytes());
        assert_eq!(&raw[4..], &load_option("RayOS", &sample())[..]);
        assert_eq!(
            read_var(d.path(), "BootOrder").unwrap().unwrap(),
            vec![1, 0, 0, 0]
        );
        // again: same entry, same order
        assert_eq!(add_boot_entry(d.path(), "RayOS", &sample()).unwrap(), 1);
        assert_eq!(
            read_var(d.path(), "BootOrder").unwrap().unwrap(),
            vec![1, 0, 0, 0]
        );
        assert!(read_var(d.path(), "Boot0002").unwrap().is_none());
    }
}
