//! The section table of a PE32+ EFI image — the RayOS UKIs on the system
//! partition and systemd's stub they are built from. The one PE reader of
//! RayOS: media building (`rayos_image::uki`) and recovery's reinstall from
//! the recovery UKI (`rayos_init::recovery`) both use it.
//!
//! Protocol (PE/COFF): the DOS header's `e_lfanew` (at 0x3c) points at
//! `PE\0\0`; the COFF header follows (section count at +2, optional-header
//! size at +16), then the optional header (magic 0x20b for PE32+;
//! `FileAlignment` at +36, `SizeOfHeaders` at +60, the checksum at +64),
//! then the 40-byte section headers (name, `VirtualSize`,
//! `VirtualAddress`, `SizeOfRawData`, `PointerToRawData`, ...).
//!
//! Behaviour: the bytes are untrusted — a UKI is read from a disk that may
//! be damaged, or cut short by a copy that did not finish. Every offset is
//! checked against the bytes given, and every section's file data
//! (`PointerToRawData` + `SizeOfRawData`) against the file's length: an
//! image whose table points past its end is [`PeError::SectionPastEnd`],
//! so a caller that got [`Headers`] may slice any section's raw bytes out
//! of the whole file without further checks; data that overlaps the
//! section table is [`PeError::SectionInHeaders`] (editing it would change
//! the table). Nothing here panics.
//!
//! Limits: PE32+ only (x86-64 and arm64 UEFI); at most 96 sections (the
//! PE/COFF limit); 8-byte section names (EFI images have no string table
//! for longer ones).

use std::ops::Range;

/// The PE/COFF limit on the number of sections.
pub const MAX_SECTIONS: usize = 96;
/// Bytes per section header.
pub const SECTION_HEADER: usize = 40;
/// Offset of the checksum field in the optional header.
pub const CHECKSUM_FIELD: usize = 64;
/// Offset of `SizeOfImage` in the optional header.
pub const SIZE_OF_IMAGE_FIELD: usize = 56;
/// Offset of `SizeOfInitializedData` in the optional header.
pub const SIZE_OF_INITIALIZED_DATA_FIELD: usize = 8;

/// Why bytes are not a usable PE32+ image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeError {
    /// The file does not start with `MZ`.
    #[error("no MZ signature")]
    NoMz,
    /// The file ends inside the DOS header.
    #[error("the DOS header is cut short")]
    TruncatedDos,
    /// No `PE\0\0` where the DOS header points.
    #[error("no PE signature at the offset the DOS header gives")]
    NoPe,
    /// The file ends inside the COFF header.
    #[error("the COFF header is cut short")]
    TruncatedCoff,
    /// The optional header is not PE32+ (64-bit).
    #[error("not PE32+ (optional header magic is not 0x20b)")]
    NotPe32Plus,
    /// The file ends inside the optional header.
    #[error("the optional header is cut short")]
    TruncatedOptional,
    /// `FileAlignment` is not a power of two; holds it.
    #[error("FileAlignment {0} is not a power of two")]
    BadFileAlignment(u32),
    /// More sections than PE allows; holds the count.
    #[error("{0} sections, more than PE allows ({MAX_SECTIONS})")]
    TooManySections(usize),
    /// The file ends inside the section table.
    #[error("the section table is cut short")]
    TruncatedSectionTable,
    /// A section's data starts inside the headers.
    #[error("section {name}: its data (from byte {start}) overlaps the section table")]
    SectionInHeaders {
        /// The section's name.
        name: String,
        /// Where its data starts, in bytes.
        start: u64,
    },
    /// A section's data runs past the end of the file.
    #[error(
        "section {name}: its data (bytes {start}..{end}) runs past the end of the {file_len}-byte file"
    )]
    SectionPastEnd {
        /// The section's name.
        name: String,
        /// Where its data starts, in bytes.
        start: u64,
        /// Where its data ends, in bytes.
        end: u64,
        /// The file's length in bytes.
        file_len: u64,
    },
}

/// One section header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The section's name (`.linux`, `.osrel`, …), without trailing NULs.
    pub name: String,
    /// `VirtualAddress`: where the section is loaded, relative to the image
    /// base.
    pub virtual_address: u32,
    /// `VirtualSize`: the section's size in memory.
    pub virtual_size: u32,
    /// `PointerToRawData`.
    pub file_offset: u32,
    /// `SizeOfRawData` (padded to `FileAlignment`).
    pub file_size: u32,
    /// Where this header sits in the file (to edit it in place).
    pub header_offset: usize,
}

impl Section {
    /// The bytes of the file that hold the section's content: its raw data
    /// up to its virtual size (the rest of the raw data is alignment
    /// padding; the rest of the virtual size is zero-filled in memory).
    /// Within the file whenever the section came from [`parse`].
    pub fn data_range(&self) -> Range<usize> {
        let r = self.raw_range();
        r.start..r.start + self.virtual_size.min(self.file_size) as usize
    }

    /// All of the section's raw data in the file, padding included (empty
    /// for a section without file data, whatever its offset says).
    pub fn raw_range(&self) -> Range<usize> {
        if self.file_size == 0 {
            return 0..0;
        }
        let start = self.file_offset as usize;
        start..start + self.file_size as usize
    }
}

/// The headers of a PE32+ image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers {
    /// Offset of the optional header.
    pub optional_header: usize,
    /// Offset of the COFF header's section count (`u16`).
    pub section_count_at: usize,
    /// Offset of the first section header.
    pub section_table: usize,
    /// `SizeOfHeaders`: the section table may grow up to here.
    pub size_of_headers: usize,
    /// `FileAlignment`: raw data offsets and sizes are multiples of it.
    pub file_alignment: u32,
    /// The section headers, in file order.
    pub sections: Vec<Section>,
}

impl Headers {
    /// The first section named `name`.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// Offset of a field of the optional header.
    pub fn optional_field(&self, offset: usize) -> usize {
        self.optional_header + offset
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Parses the headers in `head` — the first bytes of an image of
/// `file_len` bytes (all of it, or at least its headers) — and checks that
/// every section's data lies within the file.
pub fn parse(head: &[u8], file_len: u64) -> Result<Headers, PeError> {
    if head.get(0..2) != Some(b"MZ") {
        return Err(PeError::NoMz);
    }
    let lfanew = u32_at(head, 0x3c).ok_or(PeError::TruncatedDos)? as usize;
    let coff = lfanew.checked_add(4).ok_or(PeError::NoPe)?;
    if head.get(lfanew..coff) != Some(b"PE\0\0") {
        return Err(PeError::NoPe);
    }
    let nsect = u16_at(head, coff + 2).ok_or(PeError::TruncatedCoff)? as usize;
    let opt_size = u16_at(head, coff + 16).ok_or(PeError::TruncatedCoff)? as usize;
    let opt = coff + 20;
    match u16_at(head, opt) {
        Some(0x20b) => {}
        Some(_) => return Err(PeError::NotPe32Plus),
        None => return Err(PeError::TruncatedOptional),
    }
    let file_alignment = u32_at(head, opt + 36).ok_or(PeError::TruncatedOptional)?;
    let size_of_headers = u32_at(head, opt + 60).ok_or(PeError::TruncatedOptional)? as usize;
    if !file_alignment.is_power_of_two() {
        return Err(PeError::BadFileAlignment(file_alignment));
    }
    if nsect > MAX_SECTIONS {
        return Err(PeError::TooManySections(nsect));
    }
    let section_table = opt + opt_size;
    let table_end = section_table + nsect * SECTION_HEADER;
    let mut sections = Vec::with_capacity(nsect);
    for i in 0..nsect {
        let at = section_table + i * SECTION_HEADER;
        let raw = head
            .get(at..at + SECTION_HEADER)
            .ok_or(PeError::TruncatedSectionTable)?;
        let name_end = raw[..8].iter().position(|&c| c == 0).unwrap_or(8);
        let field = |o: usize| u32_at(raw, o).ok_or(PeError::TruncatedSectionTable);
        let s = Section {
            name: String::from_utf8_lossy(&raw[..name_end]).into_owned(),
            virtual_size: field(8)?,
            virtual_address: field(12)?,
            file_size: field(16)?,
            file_offset: field(20)?,
            header_offset: at,
        };
        // u32 + u32 cannot overflow u64.
        let end = u64::from(s.file_offset) + u64::from(s.file_size);
        if s.file_size > 0 && end > file_len {
            return Err(PeError::SectionPastEnd {
                name: s.name,
                start: s.file_offset.into(),
                end,
                file_len,
            });
        }
        // Data inside the headers would be rewritten by an edit of the
        // section (recovery's .cmdline), changing the table under it.
        if s.file_size > 0 && (s.file_offset as usize) < table_end {
            return Err(PeError::SectionInHeaders {
                name: s.name,
                start: s.file_offset.into(),
            });
        }
        sections.push(s);
    }
    Ok(Headers {
        optional_header: opt,
        section_count_at: coff + 2,
        section_table,
        size_of_headers,
        file_alignment,
        sections,
    })
}

/// The content of section `name` of the whole image `img` (`None`: the
/// image has no such section).
pub fn section_data<'a>(img: &'a [u8], name: &str) -> Result<Option<&'a [u8]>, PeError> {
    let h = parse(img, img.len() as u64)?;
    Ok(h.section(name).and_then(|s| img.get(s.data_range())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ image: DOS header, PE header, optional header of
    /// 240 bytes, and one section per `(name, content)`, each at the next
    /// 512-byte file offset.
    fn tiny_pe(sections: &[(&str, &[u8])]) -> Vec<u8> {
        let lfanew = 0x40usize;
        let opt = lfanew + 24;
        let table = opt + 240;
        let headers = (table + SECTION_HEADER * sections.len()).div_ceil(512) * 512;
        let mut img = vec![0u8; headers];
        img[0..2].copy_from_slice(b"MZ");
        img[0x3c..0x40].copy_from_slice(&(lfanew as u32).to_le_bytes());
        img[lfanew..lfanew + 4].copy_from_slice(b"PE\0\0");
        img[lfanew + 4..lfanew + 6].copy_from_slice(&0x8664u16.to_le_bytes());
        img[lfanew + 6..lfanew + 8].copy_from_slice(&(sections.len() as u16).to_le_bytes());
        img[lfanew + 20..lfanew + 22].copy_from_slice(&240u16.to_le_bytes());
        img[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        img[opt + 36..opt + 40].copy_from_slice(&512u32.to_le_bytes());
        img[opt + 60..opt + 64].copy_from_slice(&(headers as u32).to_le_bytes());
        for (i, (name, content)) in sections.iter().enumerate() {
            let off = img.len();
            let raw = content.len().div_ceil(512) * 512;
            let h = table + i * SECTION_HEADER;
            img[h..h + name.len()].copy_from_slice(name.as_bytes());
            img[h + 8..h + 12].copy_from_slice(&(content.len() as u32).to_le_bytes());
            img[h + 12..h + 16].copy_from_slice(&((i as u32 + 1) * 0x1000).to_le_bytes());
            img[h + 16..h + 20].copy_from_slice(&(raw as u32).to_le_bytes());
            img[h + 20..h + 24].copy_from_slice(&(off as u32).to_le_bytes());
            img.extend_from_slice(content);
            img.resize(off + raw, 0);
        }
        img
    }

    #[test]
    fn sections_are_read_with_their_data() {
        let img = tiny_pe(&[(".osrel", b"ID=rayos\n"), (".cmdline", b"quiet")]);
        let h = parse(&img, img.len() as u64).unwrap();
        assert_eq!(h.sections.len(), 2);
        assert_eq!(h.file_alignment, 512);
        assert_eq!(
            section_data(&img, ".osrel").unwrap(),
            Some(&b"ID=rayos\n"[..])
        );
        assert_eq!(section_data(&img, ".cmdline").unwrap(), Some(&b"quiet"[..]));
        assert_eq!(section_data(&img, ".linux").unwrap(), None);
        let c = h.section(".cmdline").unwrap();
        assert_eq!(&img[c.header_offset..c.header_offset + 8], b".cmdline");
        assert_eq!(c.raw_range().len(), 512);
    }

    #[test]
    fn sections_past_the_end_are_damage_not_a_panic() {
        let img = tiny_pe(&[(".osrel", b"ID=rayos\n"), (".cmdline", b"quiet")]);
        let h = parse(&img, img.len() as u64).unwrap();
        let c = h.section(".cmdline").unwrap().header_offset;
        for (field, value) in [
            (16, 4096u32),
            (16, u32::MAX),
            (20, u32::MAX - 3),
            (20, 4096),
        ] {
            let mut bad = img.clone();
            bad[c + field..c + field + 4].copy_from_slice(&value.to_le_bytes());
            match parse(&bad, bad.len() as u64) {
                Err(PeError::SectionPastEnd { name, .. }) => assert_eq!(name, ".cmdline"),
                other => panic!("field {field} = {value}: {other:?}"),
            }
            assert!(section_data(&bad, ".cmdline").is_err());
        }
        let mut bad = img.clone();
        bad[c + 20..c + 24].copy_from_slice(&0x100u32.to_le_bytes());
        assert!(matches!(
            parse(&bad, bad.len() as u64),
            Err(PeError::SectionInHeaders { .. })
        ));
        // Cut short: the headers are there, the data is not.
        assert!(matches!(
            parse(&img[..img.len() - 1], img.len() as u64 - 1),
            Err(PeError::SectionPastEnd { .. })
        ));
        // Headers alone, with the real length: fine.
        assert!(parse(&img[..1024], img.len() as u64).is_ok());
    }

    #[test]
    fn every_truncation_and_byte_flip_of_the_headers_is_an_answer() {
        let img = tiny_pe(&[(".osrel", b"ID=rayos\n"), (".cmdline", b"quiet")]);
        for n in 0..img.len() {
            let _ = parse(&img[..n], n as u64);
            let _ = section_data(&img[..n], ".osrel");
        }
        for at in 0..1024 {
            for v in [0u8, 0x7f, 0xff] {
                let mut b = img.clone();
                b[at] = v;
                if let Ok(h) = parse(&b, b.len() as u64) {
                    for s in &h.sections {
                        assert!(b.get(s.raw_range()).is_some(), "flip at {at}");
                    }
                }
            }
        }
        assert_eq!(parse(b"MZ", 2), Err(PeError::TruncatedDos));
        assert_eq!(parse(&[0u8; 512], 512), Err(PeError::NoMz));
    }
}
