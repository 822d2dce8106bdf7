//! UEFI variables through efivarfs (`/sys/firmware/efi/efivars`): the one
//! reader and writer, the strings systemd-boot keeps there, and the
//! `EFI_LOAD_OPTION` encoder for the `Boot####` entry.
//!
//! Protocol: a variable is the file `<Name>-<vendor GUID>`; its content is
//! the 4-byte attributes (little endian) followed by the data, and a write
//! must hand over all of it in one `write(2)`. efivarfs marks the
//! variables it does not know how to validate — every one of systemd-boot's
//! (`Loader*`, vendor [`LOADER_VENDOR`]) among them — immutable
//! (`FS_IMMUTABLE_FL`, as `chattr +i` would), right when they are created,
//! so they are not deleted by accident. Opening such a file for writing
//! fails with `EPERM` in the VFS before efivarfs sees it, so [`write()`]
//! clears the flag first and sets it back afterwards (what systemd's
//! `efi_set_variable` and libefivar do). Strings (the loader's variables)
//! are UCS-2 little endian ending in a NUL.
//!
//! [`add_boot_entry`]: pick the `Boot####` that already holds an identical
//! "RayOS" option (so a re-run does not pile up entries) or the lowest
//! free number; write it; then put it first in `BootOrder`, keeping every
//! other entry in its order.
//!
//! Limits: only `HD(...)/File(...)` device paths on GPT disks, which is all
//! systemd-boot on an ESP needs. A plain directory works in place of
//! efivarfs for tests (a shorter write truncates the file there, as
//! efivarfs replaces the whole variable); the writes themselves run
//! against OVMF in the end-to-end tests.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::sys;

/// Where efivarfs is mounted.
pub const EFIVARS_DIR: &str = "/sys/firmware/efi/efivars";
/// Present only when the kernel was booted through UEFI.
pub const FIRMWARE_DIR: &str = "/sys/firmware/efi";
/// `EFI_GLOBAL_VARIABLE`: `Boot####`, `BootOrder`.
pub const EFI_GLOBAL_VARIABLE: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// systemd-boot's and the stub's vendor GUID (`LoaderEntryOneShot`,
/// `LoaderDevicePartUUID`, `StubImageIdentifier`, ...).
pub const LOADER_VENDOR: &str = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
pub const NV_BS_RT: u32 = 0x7;
/// `LOAD_OPTION_ACTIVE` in an `EFI_LOAD_OPTION`'s attributes.
pub const LOAD_OPTION_ACTIVE: u32 = 0x1;

/// Why an EFI variable could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum EfiVarError {
    /// Reading the variable's file in efivarfs failed; holds its path.
    #[error("cannot read EFI variable {0}")]
    Read(PathBuf, #[source] io::Error),
    /// Writing (or unlocking) the variable's file failed; holds its path.
    #[error("cannot write EFI variable {0}")]
    Write(PathBuf, #[source] io::Error),
    /// All of `Boot0000` to `BootFFFF` are taken.
    #[error("no free Boot#### variable left")]
    NoFreeEntry,
}

// ---- strings ---------------------------------------------------------------

/// `s` as UCS-2 little endian with a terminating NUL.
pub fn ucs2_z(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(|c| c.to_le_bytes())
        .collect()
}

/// The little-endian UTF-16 units of `bytes` up to the first NUL (or the
/// end); an odd last byte is ignored.
pub fn utf16_units(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect()
}

/// The NUL-terminated UTF-16LE string at the start of `bytes`; `None` if
/// it is not valid UTF-16.
pub fn utf16_z(bytes: &[u8]) -> Option<String> {
    String::from_utf16(&utf16_units(bytes)).ok()
}

// ---- variables -------------------------------------------------------------

/// The efivarfs file of variable `name` of `vendor` in `dir`.
pub fn var_path(dir: &Path, name: &str, vendor: &str) -> PathBuf {
    dir.join(format!("{name}-{vendor}"))
}

/// A variable's data (without the attribute word); `None` if absent.
pub fn read(dir: &Path, name: &str, vendor: &str) -> Result<Option<Vec<u8>>, EfiVarError> {
    let p = var_path(dir, name, vendor);
    match fs::read(&p) {
        Ok(b) => Ok(Some(b.get(4..).unwrap_or_default().to_vec())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EfiVarError::Read(p, e)),
    }
}

/// A variable holding a NUL-terminated UTF-16LE string (systemd-boot's
/// `Loader*` variables). `None` when absent, unreadable, not UTF-16 or
/// empty: callers treat all of these as "the loader did not say".
pub fn read_string(dir: &Path, name: &str, vendor: &str) -> Option<String> {
    let bytes = fs::read(var_path(dir, name, vendor)).ok()?;
    let s = utf16_z(bytes.get(4..)?)?;
    (!s.is_empty()).then_some(s)
}

/// Writes (creates or replaces) a variable with [`NV_BS_RT`] attributes,
/// clearing efivarfs' immutable flag for the write (see the module docs).
pub fn write(dir: &Path, name: &str, vendor: &str, data: &[u8]) -> Result<(), EfiVarError> {
    let p = var_path(dir, name, vendor);
    let err = |e| EfiVarError::Write(p.clone(), e);
    // An existing variable: make it writable, remember to protect it again.
    // A variable that cannot be opened is left to the write to report.
    let protected = match fs::File::open(&p) {
        Ok(f) => sys::clear_immutable(&f).map_err(err)?.then_some(f),
        Err(_) => None,
    };
    let written = write_whole(&p, data);
    if let Some(f) = protected {
        // The data is written (or the error below says why not); failing
        // to protect it again is not worth failing the write for.
        let _ = sys::set_immutable(&f);
    }
    written.map_err(err)
}

fn write_whole(p: &Path, data: &[u8]) -> io::Result<()> {
    let mut buf = NV_BS_RT.to_le_bytes().to_vec();
    buf.extend_from_slice(data);
    // No O_TRUNC: efivarfs replaces the variable on write, and truncating
    // is not an operation it offers.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)?;
    // efivarfs takes a variable in exactly one write call.
    let n = f.write(&buf)?;
    if n != buf.len() {
        return Err(io::Error::other("short write"));
    }
    // A plain file (a test's stand-in) keeps a longer old tail; efivarfs
    // sizes the file to the variable, so this never runs there.
    if f.metadata()?.len() > buf.len() as u64 {
        f.set_len(buf.len() as u64)?;
    }
    Ok(())
}

/// Writes a NUL-terminated UTF-16LE string variable.
pub fn write_string(dir: &Path, name: &str, vendor: &str, s: &str) -> Result<(), EfiVarError> {
    write(dir, name, vendor, &ucs2_z(s))
}

// ---- boot entries ----------------------------------------------------------

/// Where the loader lives: a GPT partition and a path on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HdFilePath {
    /// The partition's number in the GPT (from 1).
    pub partition_number: u32,
    /// In logical sectors of the disk.
    pub start_lba: u64,
    /// The partition's size, in logical sectors.
    pub size_lba: u64,
    /// The partition's unique GUID (not its type).
    pub partition_guid: Uuid,
    /// Backslash-separated, for example `\EFI\systemd\systemd-bootx64.efi`.
    pub file: String,
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

/// An `EFI_LOAD_OPTION` (UEFI 2.10 §3.1.3): attributes, path length,
/// description, path.
pub fn load_option(description: &str, path: &HdFilePath) -> Vec<u8> {
    let dp = device_path(path);
    let mut v = Vec::new();
    v.extend_from_slice(&LOAD_OPTION_ACTIVE.to_le_bytes());
    v.extend_from_slice(&(dp.len() as u16).to_le_bytes());
    v.extend_from_slice(&ucs2_z(description));
    v.extend_from_slice(&dp);
    v
}

/// The description units of an `EFI_LOAD_OPTION` (empty if too short).
pub fn description_units(option: &[u8]) -> Vec<u16> {
    utf16_units(option.get(6..).unwrap_or_default())
}

/// The description of an `EFI_LOAD_OPTION` (None if malformed).
pub fn description_of(option: &[u8]) -> Option<String> {
    option.get(6..)?;
    String::from_utf16(&description_units(option)).ok()
}

/// `BootOrder`'s data as entry numbers.
pub fn parse_boot_order(b: &[u8]) -> Vec<u16> {
    b.chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// `BootOrder` with `first` moved (or added) to the front.
pub fn boot_order_with_first(order: &[u16], first: u16) -> Vec<u16> {
    std::iter::once(first)
        .chain(order.iter().copied().filter(|&n| n != first))
        .collect()
}

fn read_global(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, EfiVarError> {
    read(dir, name, EFI_GLOBAL_VARIABLE)
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
        match read_global(dir, &format!("Boot{n:04X}"))? {
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
    let name = format!("Boot{num:04X}");
    if read_global(dir, &name)?.as_deref() != Some(&option[..]) {
        write(dir, &name, EFI_GLOBAL_VARIABLE, &option)?;
    }
    let order = read_global(dir, "BootOrder")?
        .map(|b| parse_boot_order(&b))
        .unwrap_or_default();
    let new_order = boot_order_with_first(&order, num);
    if new_order != order {
        let bytes: Vec<u8> = new_order.iter().flat_map(|n| n.to_le_bytes()).collect();
        write(dir, "BootOrder", EFI_GLOBAL_VARIABLE, &bytes)?;
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
        assert_eq!(description_of(&o[..5]), None);
    }

    #[test]
    fn boot_order_front() {
        assert_eq!(boot_order_with_first(&[3, 1, 4], 4), vec![4, 3, 1]);
        assert_eq!(boot_order_with_first(&[], 0), vec![0]);
        assert_eq!(boot_order_with_first(&[0, 2], 1), vec![1, 0, 2]);
        assert_eq!(parse_boot_order(&[1, 0, 0, 0, 7]), vec![1, 0]);
    }

    #[test]
    fn strings_round_trip() {
        let b = ucs2_z("rayos-recovery.conf");
        assert_eq!(b.len(), 2 * 20);
        assert_eq!(utf16_z(&b).as_deref(), Some("rayos-recovery.conf"));
        // Unpaired surrogate: not a string.
        assert_eq!(utf16_z(&[0x00, 0xd8, 0, 0]), None);
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            read_string(d.path(), "LoaderEntryOneShot", LOADER_VENDOR),
            None
        );
        write_string(
            d.path(),
            "LoaderEntryOneShot",
            LOADER_VENDOR,
            "a-longer-name.conf",
        )
        .unwrap();
        write_string(d.path(), "LoaderEntryOneShot", LOADER_VENDOR, "short").unwrap();
        assert_eq!(
            read_string(d.path(), "LoaderEntryOneShot", LOADER_VENDOR).as_deref(),
            Some("short")
        );
        let raw = fs::read(var_path(d.path(), "LoaderEntryOneShot", LOADER_VENDOR)).unwrap();
        assert_eq!(
            raw,
            [&NV_BS_RT.to_le_bytes()[..], &ucs2_z("short")].concat()
        );
        write_string(d.path(), "Empty", LOADER_VENDOR, "").unwrap();
        assert_eq!(read_string(d.path(), "Empty", LOADER_VENDOR), None);
    }

    #[test]
    fn add_entry_in_a_plain_directory_is_idempotent() {
        // A plain directory stands in for efivarfs (no immutable flags there).
        let d = tempfile::tempdir().unwrap();
        let g = EFI_GLOBAL_VARIABLE;
        write(d.path(), "Boot0000", g, &load_option("Windows", &sample())).unwrap();
        write(d.path(), "BootOrder", g, &[0, 0]).unwrap();
        let n = add_boot_entry(d.path(), "RayOS", &sample()).unwrap();
        assert_eq!(n, 1);
        let raw = fs::read(var_path(d.path(), "Boot0001", g)).unwrap();
        assert_eq!(&raw[..4], &NV_BS_RT.to_le_bytes());
        assert_eq!(&raw[4..], &load_option("RayOS", &sample())[..]);
        assert_eq!(
            read(d.path(), "BootOrder", g).unwrap().unwrap(),
            vec![1, 0, 0, 0]
        );
        // again: same entry, same order
        assert_eq!(add_boot_entry(d.path(), "RayOS", &sample()).unwrap(), 1);
        assert_eq!(
            read(d.path(), "BootOrder", g).unwrap().unwrap(),
            vec![1, 0, 0, 0]
        );
        assert!(read(d.path(), "Boot0002", g).unwrap().is_none());
    }
}
