//! Unified Kernel Image assembly: systemd's EFI stub (`linuxx64.efi.stub`)
//! with the sections `.cmdline`, `.uname`, `.linux`, `.initrd` and `.osrel`
//! appended, written in Rust (no objcopy). `.osrel` is last so that a
//! truncated UKI is not listed by systemd-boot at all.
//!
//! Layout: new sections follow the stub's last section in memory, each at the
//! next 4 KiB boundary, so no virtual range overlaps the stub or another
//! section whatever the kernel and initrd sizes (the fixed addresses of older
//! recipes break once the kernel outgrows the gap). File data is appended at
//! `FileAlignment`. The PE checksum is recomputed.
//!
//! Limits: PE32+ stubs only; the stub's header area must have room for the
//! five section headers (systemd's stubs do); a signed stub is refused
//! (appending would break its signature — sign the finished UKI instead).
//!
//! PE headers are read by `rayos_state::pe`, the one bounds-checked PE
//! reader (recovery's reinstall uses it too).

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Why a UKI could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    /// An input could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The UKI could not be written.
    #[error("cannot write the UKI {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The EFI stub is not a usable PE32+ image.
    #[error("{path} is not a usable PE32+ EFI stub: {why}")]
    BadStub {
        /// The stub.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// An input is not a PE image with sections.
    #[error("{path} is not a PE image with sections: {why}")]
    BadImage {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A section larger than PE allows.
    #[error("section {name} is {size} bytes, more than a PE section can hold")]
    TooLarge {
        /// The section's name.
        name: String,
        /// Its size in bytes.
        size: u64,
    },
}

/// What goes into a UKI.
#[derive(Debug, Clone)]
pub struct UkiParts {
    /// systemd's stub, e.g. `/usr/lib/systemd/boot/efi/linuxx64.efi.stub`.
    pub stub: PathBuf,
    /// The kernel's bzImage (an EFI-stub kernel).
    pub kernel: PathBuf,
    /// The (compressed) initramfs.
    pub initrd: PathBuf,
    /// The kernel command line; written without a trailing newline.
    pub cmdline: String,
    /// os-release text; see [`os_release`].
    pub osrel: String,
    /// `uname -r` of the kernel; read from the bzImage header when `None`.
    pub uname: Option<String>,
}

/// The stub shipped by Debian's systemd-boot-efi.
pub const DEBIAN_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// os-release text for `.osrel`: systemd-boot lists a UKI only when it has
/// one, shows `PRETTY_NAME` and sorts by `VERSION_ID`.
pub fn os_release(version: &str) -> String {
    format!(
        "NAME=RayOS\nID=rayos\nVERSION_ID={version}\nVERSION=\"{version}\"\nPRETTY_NAME=\"RayOS {version}\"\nHOME_URL=\"https://github.com/rayos\"\n"
    )
}

/// The newest `/boot/vmlinuz-*` of the build host (Debian's
/// linux-image-amd64), for tests and development builds.
pub fn host_kernel() -> Option<PathBuf> {
    host_kernel_release().map(|(path, _)| path)
}

/// The newest `/boot/vmlinuz-<release>` of the build host and its
/// `<release>`, newest by the numbers in the release (`6.1.0-10` is newer
/// than `6.1.0-9`); `None` when `/boot` holds no kernel or cannot be read.
pub fn host_kernel_release() -> Option<(PathBuf, String)> {
    let key = |v: &str| -> Vec<u64> {
        v.split(|c: char| !c.is_ascii_digit())
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    let mut found: Vec<(PathBuf, String)> = fs::read_dir("/boot")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let release = name.strip_prefix("vmlinuz-")?.to_string();
            Some((e.path(), release))
        })
        .collect();
    found.sort_by_key(|(_, release)| key(release));
    found.pop()
}

/// One section of a PE image (the shared reader's type).
pub use rayos_state::pe::Section;
use rayos_state::pe::{self, PeError, SECTION_HEADER};

const SCN_INITIALIZED_READ: u32 = 0x4000_0040;
const VA_ALIGN: u64 = 4096;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at.checked_add(2)?)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at.checked_add(4)?)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn round_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// The sections of a PE image given its first bytes (the headers; their
/// data must lie within them), or why they are not a PE32+ image. For
/// untrusted input: every offset is checked (by [`rayos_state::pe`]).
pub fn sections_of(head: &[u8]) -> Result<Vec<Section>, PeError> {
    pe::parse(head, head.len() as u64).map(|h| h.sections)
}

/// The sections of the PE image at `path` (a UKI or a stub). A section
/// whose data lies past the end of the file is an error: the image is
/// damaged or was cut short.
pub fn read_sections(path: &Path) -> Result<Vec<Section>, UkiError> {
    let rerr = |source| UkiError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::File::open(path).map_err(rerr)?;
    let len = f.metadata().map_err(rerr)?.len();
    let mut head = Vec::new();
    (&mut f)
        .take(64 * 1024)
        .read_to_end(&mut head)
        .map_err(rerr)?;
    pe::parse(&head, len)
        .map(|h| h.sections)
        .map_err(|e| UkiError::BadImage {
            path: path.to_path_buf(),
            why: e.to_string(),
        })
}

/// The bytes of section `name` of the PE image at `path`, if it has one.
pub fn read_section(path: &Path, name: &str) -> Result<Option<Vec<u8>>, UkiError> {
    let rerr = |source| UkiError::Read {
        path: path.to_path_buf(),
        source,
    };
    let Some(s) = read_sections(path)?.into_iter().find(|s| s.name == name) else {
        return Ok(None);
    };
    let mut f = fs::File::open(path).map_err(rerr)?;
    f.seek(SeekFrom::Start(s.data_range().start as u64))
        .map_err(rerr)?;
    // Within the file: read_sections checked every section against its length.
    let mut buf = vec![0u8; s.data_range().len()];
    f.read_exact(&mut buf).map_err(rerr)?;
    Ok(Some(buf))
}

/// The kernel release (`uname -r`) recorded in a bzImage's setup header.
pub fn kernel_release(bzimage: &[u8]) -> Option<String> {
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        return None;
    }
    let off = usize::from(u16_at(bzimage, 0x20e)?) + 0x200;
    let tail = bzimage.get(off..off.checked_add(256)?.min(bzimage.len()))?;
    let end = tail
        .iter()
        .position(|&c| c == 0 || c == b' ')
        .unwrap_or(tail.len());
    let release = std::str::from_utf8(&tail[..end]).ok()?;
    (!release.is_empty()).then(|| release.to_string())
}

/// Writes the UKI described by `parts` to `out`; returns its sections.
pub fn assemble(parts: &UkiParts, out: &Path) -> Result<Vec<Section>, UkiError> {
    let read = |p: &Path| {
        fs::read(p).map_err(|source| UkiError::Read {
            path: p.to_path_buf(),
            source,
        })
    };
    let mut stub = read(&parts.stub)?;
    let kernel = read(&parts.kernel)?;
    let uname = match &parts.uname {
        Some(u) => u.clone(),
        None => kernel_release(&kernel).ok_or(UkiError::BadImage {
            path: parts.kernel.clone(),
            why: "no kernel release in the bzImage header".into(),
        })?,
    };
    let initrd_len = fs::metadata(&parts.initrd)
        .map_err(|source| UkiError::Read {
            path: parts.initrd.clone(),
            source,
        })?
        .len();
    let bad = |why: &str| UkiError::BadStub {
        path: parts.stub.clone(),
        why: why.to_string(),
    };
    let pe = pe::parse(&stub, stub.len() as u64).map_err(|e| bad(&e.to_string()))?;
    let nsect = pe.sections.len();
    // A certificate table means a signed stub: appending would invalidate it.
    let ndirs = u32_at(&stub, pe.optional_header + 108).unwrap_or(0);
    if ndirs > 4 && u32_at(&stub, pe.optional_header + 112 + 4 * 8 + 4).unwrap_or(0) != 0 {
        return Err(bad("it is signed; append sections to an unsigned stub"));
    }
    // `.osrel` goes last, in memory and in the file: systemd-boot lists a
    // UKI only when it can read its `.osrel`, so a UKI cut short (a copy
    // that did not finish, a disk losing its tail) drops out of the menu
    // instead of becoming a default that fails to start — systemd-boot 252
    // then exits to the firmware, which may end in its shell.
    let new_names = [".cmdline", ".uname", ".linux", ".initrd", ".osrel"];
    if pe
        .sections
        .iter()
        .any(|s| new_names.contains(&s.name.as_str()))
    {
        return Err(bad("it already has UKI sections"));
    }
    let table_end = pe.section_table + (nsect + new_names.len()) * SECTION_HEADER;
    if table_end > pe.size_of_headers {
        return Err(bad("no room in its headers for five more sections"));
    }
    // The new headers go where zero padding was; make sure it really is padding.
    let first_data = pe
        .sections
        .iter()
        .map(|s| s.file_offset as usize)
        .filter(|&o| o > 0)
        .min();
    if first_data.is_some_and(|o| o < table_end)
        || stub[pe.section_table + nsect * SECTION_HEADER..table_end]
            .iter()
            .any(|&b| b != 0)
    {
        return Err(bad("its header padding is in use"));
    }

    let cmdline = parts.cmdline.trim_end_matches('\n').as_bytes().to_vec();
    let uname = uname.into_bytes();
    let osrel = parts.osrel.clone().into_bytes();
    let sizes: Vec<u64> = [
        cmdline.len() as u64,
        uname.len() as u64,
        kernel.len() as u64,
        initrd_len,
        osrel.len() as u64,
    ]
    .to_vec();

    let mut va = round_up(
        pe.sections
            .iter()
            .map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size))
            .max()
            .unwrap_or(0),
        VA_ALIGN,
    );
    let stub_end = pe
        .sections
        .iter()
        .map(|s| u64::from(s.file_offset) + u64::from(s.file_size))
        .max()
        .unwrap_or(0)
        .max(stub.len() as u64);
    let file_align = u64::from(pe.file_alignment);
    let mut file_off = round_up(stub_end, file_align);
    let mut added = Vec::new();
    for (name, size) in new_names.iter().zip(&sizes) {
        let file_size = round_up(*size, file_align);
        let too_large = || UkiError::TooLarge {
            name: name.to_string(),
            size: *size,
        };
        let s = Section {
            name: name.to_string(),
            virtual_address: u32::try_from(va).map_err(|_| too_large())?,
            virtual_size: u32::try_from(*size).map_err(|_| too_large())?,
            file_offset: u32::try_from(file_off).map_err(|_| too_large())?,
            file_size: u32::try_from(file_size).map_err(|_| too_large())?,
            header_offset: pe.section_table + (nsect + added.len()) * SECTION_HEADER,
        };
        va = round_up(va + size, VA_ALIGN);
        file_off += file_size;
        added.push(s);
    }
    let size_of_image = u32::try_from(va).map_err(|_| UkiError::TooLarge {
        name: "image".into(),
        size: va,
    })?;

    for (i, s) in added.iter().enumerate() {
        let at = s.header_offset;
        debug_assert_eq!(at, pe.section_table + (nsect + i) * SECTION_HEADER);
        let h = &mut stub[at..at + SECTION_HEADER];
        h[..8].fill(0);
        h[..s.name.len()].copy_from_slice(s.name.as_bytes());
        put_u32(h, 8, s.virtual_size);
        put_u32(h, 12, s.virtual_address);
        put_u32(h, 16, s.file_size);
        put_u32(h, 20, s.file_offset);
        put_u32(h, 36, SCN_INITIALIZED_READ);
    }
    put_u16(&mut stub, pe.section_count_at, (nsect + added.len()) as u16);
    put_u32(
        &mut stub,
        pe.optional_field(pe::SIZE_OF_IMAGE_FIELD),
        size_of_image,
    );
    let init_data_at = pe.optional_field(pe::SIZE_OF_INITIALIZED_DATA_FIELD);
    let init_data = u32_at(&stub, init_data_at).unwrap_or(0);
    let extra: u64 = added.iter().map(|s| u64::from(s.file_size)).sum();
    put_u32(
        &mut stub,
        init_data_at,
        init_data.saturating_add(u32::try_from(extra).unwrap_or(u32::MAX)),
    );
    let checksum_at = pe.optional_field(pe::CHECKSUM_FIELD);
    put_u32(&mut stub, checksum_at, 0);

    let werr = |source| UkiError::Write {
        path: out.to_path_buf(),
        source,
    };
    // Read back for the checksum, hence read + write.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(werr)?;
    let mut w = io::BufWriter::with_capacity(1 << 20, &mut f);
    w.write_all(&stub).map_err(werr)?;
    let mut pos = stub.len() as u64;
    for (i, s) in added.iter().enumerate() {
        w.write_all(&vec![0u8; (u64::from(s.file_offset) - pos) as usize])
            .map_err(werr)?;
        pos = u64::from(s.file_offset);
        match i {
            0 => w.write_all(&cmdline).map_err(werr)?,
            1 => w.write_all(&uname).map_err(werr)?,
            2 => w.write_all(&kernel).map_err(werr)?,
            4 => w.write_all(&osrel).map_err(werr)?,
            _ => {
                let mut initrd =
                    fs::File::open(&parts.initrd).map_err(|source| UkiError::Read {
                        path: parts.initrd.clone(),
                        source,
                    })?;
                let n = io::copy(&mut initrd, &mut w).map_err(werr)?;
                if n != initrd_len {
                    return Err(werr(io::Error::other("initrd changed while being copied")));
                }
            }
        }
        pos += u64::from(s.virtual_size);
    }
    let end = added
        .last()
        .map(|s| u64::from(s.file_offset) + u64::from(s.file_size))
        .unwrap_or(pos);
    w.write_all(&vec![0u8; (end - pos) as usize])
        .map_err(werr)?;
    w.flush().map_err(werr)?;
    drop(w);
    write_checksum(&mut f, checksum_at).map_err(werr)?;
    f.sync_all().map_err(werr)?;

    let mut sections = pe.sections;
    sections.extend(added);
    Ok(sections)
}

/// Recomputes the PE checksum (the 16-bit one's-complement sum of the file
/// with the checksum field as zero, plus the file length).
fn write_checksum(f: &mut fs::File, field: usize) -> io::Result<()> {
    f.seek(SeekFrom::Start(0))?;
    let mut r = io::BufReader::with_capacity(1 << 20, &mut *f);
    let mut sum: u64 = 0;
    let mut len: u64 = 0;
    let mut buf = [0u8; 1 << 16];
    let mut carry: Option<u8> = None;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let mut chunk = &buf[..n];
        if let Some(lo) = carry.take() {
            sum += u64::from(u16::from_le_bytes([lo, chunk[0]]));
            chunk = &chunk[1..];
        }
        let mut pairs = chunk.chunks_exact(2);
        for p in &mut pairs {
            sum += u64::from(u16::from_le_bytes([p[0], p[1]]));
        }
        if let [last] = pairs.remainder() {
            carry = Some(*last);
        }
        len += n as u64;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let Some(lo) = carry {
        sum += u64::from(lo);
    }
    // The field itself was written as zero, so it adds nothing to the sum.
    let _ = field;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let checksum = (sum as u32).wrapping_add(len as u32);
    drop(r);
    f.seek(SeekFrom::Start(field as u64))?;
    f.write_all(&checksum.to_le_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_debian_kernel_release_is_read_from_its_header() {
        let boot = fs::read_dir("/boot").expect("/boot is missing: install linux-image-amd64");
        let kernel = boot
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .expect("no /boot/vmlinuz-*: install linux-image-amd64");
        let bytes = fs::read(&kernel).unwrap();
        let release = kernel_release(&bytes).unwrap();
        assert_eq!(
            kernel.file_name().unwrap().to_string_lossy(),
            format!("vmlinuz-{release}")
        );
    }

    #[test]
    fn garbage_is_not_a_pe_image() {
        assert!(sections_of(b"MZ").is_err());
        assert!(sections_of(&[0u8; 512]).is_err());
        assert!(kernel_release(&[0u8; 16]).is_none());
    }

    /// A kernel far bigger than the gap older fixed layouts left (16 MiB)
    /// still gets its own range: no section overlaps another, and the
    /// image size covers the last one.
    #[test]
    fn big_kernels_do_not_overlap_the_initrd() {
        let stub = Path::new(DEBIAN_STUB);
        assert!(
            stub.exists(),
            "{DEBIAN_STUB} missing: install systemd-boot-efi"
        );
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        let initrd = dir.path().join("initrd");
        fs::write(&kernel, vec![0x90u8; 40 << 20]).unwrap();
        fs::write(&initrd, vec![0x55u8; 3 << 20]).unwrap();
        let out = dir.path().join("big.efi");
        let parts = UkiParts {
            stub: stub.into(),
            kernel,
            initrd,
            cmdline: "console=ttyS0".into(),
            osrel: os_release("9.9"),
            uname: Some("6.1.0-test".into()),
        };
        let sections = assemble(&parts, &out).unwrap();
        assert_eq!(read_sections(&out).unwrap(), sections);
        let mut ranges: Vec<(u64, u64)> = sections
            .iter()
            .map(|s| {
                (
                    u64::from(s.virtual_address),
                    u64::from(s.virtual_address) + u64::from(s.virtual_size),
                )
            })
            .collect();
        ranges.sort();
        for w in ranges.windows(2) {
            assert!(w[0].1 <= w[1].0, "overlap {w:?}");
        }
        let head = fs::read(&out).unwrap();
        let pe = pe::parse(&head, head.len() as u64).unwrap();
        let size_of_image =
            u64::from(u32_at(&head, pe.optional_field(pe::SIZE_OF_IMAGE_FIELD)).unwrap());
        assert!(size_of_image >= ranges.last().unwrap().1);
        assert_eq!(
            read_section(&out, ".uname").unwrap().unwrap(),
            b"6.1.0-test"
        );
        // .osrel's bytes are the file's last data: a copy cut anywhere
        // before the end loses it, and systemd-boot then does not list it.
        let osrel = sections.iter().find(|s| s.name == ".osrel").unwrap();
        let last = sections
            .iter()
            .map(|s| u64::from(s.file_offset))
            .max()
            .unwrap();
        assert_eq!(u64::from(osrel.file_offset), last);
        assert_eq!(
            read_section(&out, ".osrel").unwrap().unwrap(),
            os_release("9.9").as_bytes()
        );
        let cut = dir.path().join("cut.efi");
        fs::write(&cut, &head[..head.len() / 2]).unwrap();
        assert!(
            read_section(&cut, ".osrel").is_err(),
            "a truncated UKI must not yield its .osrel"
        );
        // Appending twice is refused rather than producing a broken image.
        let again = UkiParts {
            stub: out.clone(),
            ..parts
        };
        assert!(matches!(
            assemble(&again, &dir.path().join("x.efi")),
            Err(UkiError::BadStub { .. })
        ));
    }
}
