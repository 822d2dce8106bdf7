//! Helpers shared by the integration tests: sparse image files, running the
//! independent tools (sgdisk, fdisk, mkfs.*, blkid) with a clear failure when
//! one is missing, and a hand-made NTFS volume (ntfs-3g is not a dependency).
#![allow(dead_code)] // each test file uses a different subset

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const MIB: u64 = 1 << 20;

/// A sparse file of `bytes` in a fresh temp dir (kept alive by the TempDir).
pub fn sparse_image(bytes: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("creating a temp dir failed");
    let path = dir.path().join("disk.img");
    let f = File::create(&path).expect("creating the image failed");
    f.set_len(bytes).expect("sizing the image failed");
    (dir, path)
}

pub fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("opening the image failed")
}

/// Run a tool; panic with its output when it is missing or fails.
pub fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!(
            "running {tool} failed ({e}): install it with scripts/install-deps.sh \
             (packages gdisk, fdisk, dosfstools, e2fsprogs, util-linux)"
        )
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{tool} {args:?} failed:\n{text}");
    text
}

/// Like [`run`] but returns (success, output) instead of asserting.
pub fn run_status(tool: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("running {tool} failed ({e}): install it with scripts/install-deps.sh")
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `blkid -p` facts of the filesystem at `offset`, keyed TYPE, LABEL, UUID
/// (from its udev output, whose `_ENC` values escape bytes as `\xNN`).
pub fn blkid(path: &Path, offset: u64, size: u64) -> Vec<(String, String)> {
    let (_, text) = run_status(
        "blkid",
        &[
            "-p",
            "-o",
            "udev",
            "-O",
            &offset.to_string(),
            "-S",
            &size.to_string(),
            path.to_str().unwrap(),
        ],
    );
    let mut out = Vec::new();
    for l in text.lines() {
        let Some((k, v)) = l.split_once('=') else {
            continue;
        };
        let key = match k {
            "ID_FS_TYPE" => "TYPE",
            "ID_FS_LABEL_ENC" => "LABEL",
            "ID_FS_UUID_ENC" => "UUID",
            _ => continue,
        };
        out.push((key.to_string(), unhex(v)));
    }
    out
}

fn unhex(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1] == b'x' {
            if let Ok(x) = u8::from_str_radix(&v[i + 2..i + 4], 16) {
                out.push(x);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn blkid_get(facts: &[(String, String)], key: &str) -> Option<String> {
    facts.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

/// Write a minimal NTFS volume at `offset`: boot sector, and an MFT whose
/// records 0 ($MFT) and 3 ($Volume, with a $VOLUME_NAME attribute) are
/// valid FILE records with update-sequence fixups, enough for `blkid` and
/// for our prober. Cluster 4 KiB, records 1 KiB, MFT at cluster 4.
pub fn write_ntfs(f: &mut File, offset: u64, size: u64, label: &str, serial: u64) {
    let mut boot = [0u8; 512];
    boot[0..3].copy_from_slice(&[0xEB, 0x52, 0x90]);
    boot[3..11].copy_from_slice(b"NTFS    ");
    boot[0x0B..0x0D].copy_from_slice(&512u16.to_le_bytes());
    boot[0x0D] = 8; // sectors per cluster
    boot[0x15] = 0xF8; // media
    boot[0x18..0x1A].copy_from_slice(&63u16.to_le_bytes());
    boot[0x1A..0x1C].copy_from_slice(&255u16.to_le_bytes());
    boot[0x24..0x28].copy_from_slice(&0x0080_0080u32.to_le_bytes());
    boot[0x28..0x30].copy_from_slice(&(size / 512 - 1).to_le_bytes());
    boot[0x30..0x38].copy_from_slice(&4u64.to_le_bytes()); // $MFT cluster
    boot[0x38..0x40].copy_from_slice(&8u64.to_le_bytes()); // $MFTMirr cluster
    boot[0x40] = 0xF6; // -10: 2^10 = 1024-byte records
    boot[0x44] = 1; // clusters per index record
    boot[0x48..0x50].copy_from_slice(&serial.to_le_bytes());
    boot[510] = 0x55;
    boot[511] = 0xAA;
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&boot).unwrap();

    let mft = offset + 4 * 4096;
    for (n, attrs) in [(0u64, mft_attrs_mft()), (3, volume_attrs(label))] {
        let rec = file_record(n as u32, &attrs);
        f.seek(SeekFrom::Start(mft + n * 1024)).unwrap();
        f.write_all(&rec).unwrap();
        // $MFTMirr holds the first records too; blkid does not need it.
        f.seek(SeekFrom::Start(offset + 8 * 4096 + n * 1024))
            .unwrap();
        f.write_all(&rec).unwrap();
    }
}

/// A resident attribute header + value.
fn resident(kind: u32, value: &[u8]) -> Vec<u8> {
    let len = (24 + value.len()).div_ceil(8) * 8;
    let mut a = vec![0u8; len];
    a[0..4].copy_from_slice(&kind.to_le_bytes());
    a[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    a[8] = 0; // resident
    a[0x10..0x14].copy_from_slice(&(value.len() as u32).to_le_bytes());
    a[0x14..0x16].copy_from_slice(&24u16.to_le_bytes());
    a[24..24 + value.len()].copy_from_slice(value);
    a
}

fn mft_attrs_mft() -> Vec<u8> {
    // $STANDARD_INFORMATION (0x10) with 48 zero bytes is enough here.
    resident(0x10, &[0u8; 48])
}

fn volume_attrs(label: &str) -> Vec<u8> {
    let mut v = resident(0x10, &[0u8; 48]);
    let name: Vec<u8> = label.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    v.extend(resident(0x60, &name));
    // $VOLUME_INFORMATION (0x70): version 3.1.
    let mut info = [0u8; 12];
    info[8] = 3;
    info[9] = 1;
    v.extend(resident(0x70, &info));
    v
}

/// A 1 KiB FILE record with fixups for two 512-byte sectors.
fn file_record(number: u32, attrs: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; 1024];
    r[0..4].copy_from_slice(b"FILE");
    r[4..6].copy_from_slice(&0x30u16.to_le_bytes()); // update sequence offset
    r[6..8].copy_from_slice(&3u16.to_le_bytes()); // 1 + 2 sectors
    r[0x10..0x12].copy_from_slice(&1u16.to_le_bytes()); // sequence number
    r[0x12..0x14].copy_from_slice(&1u16.to_le_bytes()); // link count
    let first_attr = 0x38u16;
    r[0x14..0x16].copy_from_slice(&first_attr.to_le_bytes());
    r[0x16..0x18].copy_from_slice(&1u16.to_le_bytes()); // in use
    let end = first_attr as usize + attrs.len();
    r[first_attr as usize..end].copy_from_slice(attrs);
    r[end..end + 4].copy_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
    r[0x18..0x1C].copy_from_slice(&((end + 8) as u32).to_le_bytes()); // bytes used
    r[0x1C..0x20].copy_from_slice(&1024u32.to_le_bytes()); // bytes allocated
    r[0x2C..0x30].copy_from_slice(&number.to_le_bytes());
    // Fixups: the sequence number replaces the last two bytes of each
    // sector; the originals are kept in the array.
    let usn = [0x01, 0x00];
    r[0x30..0x32].copy_from_slice(&usn);
    for i in 1..3 {
        let end = i * 512;
        let orig = [r[end - 2], r[end - 1]];
        r[0x30 + 2 * i..0x32 + 2 * i].copy_from_slice(&orig);
        r[end - 2..end].copy_from_slice(&usn);
    }
    r
}
