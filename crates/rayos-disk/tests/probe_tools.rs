//! Filesystem probing against volumes made by the real tools (mkfs.fat,
//! mkfs.ext4 / mke2fs, mkswap) and a hand-made NTFS volume, cross-checked
//! with `blkid -p` where it has an opinion.

mod common;

use std::fs::File;
use std::path::Path;

use common::*;
use rayos_disk::{Filesystem, probe};

fn probe_file(path: &Path, offset: u64, len: u64) -> rayos_disk::FsInfo {
    let mut f = File::open(path).unwrap();
    probe(&mut f, offset, len)
        .expect("probe failed")
        .unwrap_or_else(|| panic!("nothing recognised in {} at {offset}", path.display()))
}

/// Our result must agree with blkid's TYPE/LABEL/UUID.
fn agrees_with_blkid(path: &Path, offset: u64, len: u64, info: &rayos_disk::FsInfo) {
    let facts = blkid(path, offset, len);
    let t = blkid_get(&facts, "TYPE").unwrap_or_else(|| panic!("blkid found nothing: {facts:?}"));
    let want = match info.filesystem {
        Filesystem::Fat12 | Filesystem::Fat16 | Filesystem::Fat32 => "vfat",
        Filesystem::Ext2 => "ext2",
        Filesystem::Ext3 => "ext3",
        Filesystem::Ext4 => "ext4",
        Filesystem::Swap => "swap",
        Filesystem::Ntfs => "ntfs",
        other => panic!("no blkid mapping for {other}"),
    };
    assert_eq!(t, want, "blkid: {facts:?}");
    assert_eq!(blkid_get(&facts, "LABEL"), info.label, "blkid: {facts:?}");
    assert_eq!(
        blkid_get(&facts, "UUID").map(|u| u.to_lowercase()),
        info.uuid.clone().map(|u| u.to_lowercase()),
        "blkid: {facts:?}"
    );
}

#[test]
fn fat12_16_32_made_by_mkfs_fat() {
    for (bits, mib, want) in [
        ("12", 4u64, Filesystem::Fat12),
        ("16", 64, Filesystem::Fat16),
        ("32", 300, Filesystem::Fat32),
    ] {
        let (_d, img) = sparse_image(mib * MIB);
        let p = img.to_str().unwrap();
        run(
            "mkfs.fat",
            &["-F", bits, "-n", "RAYOS ESP", "-i", "1234ABCD", p],
        );
        let info = probe_file(&img, 0, mib * MIB);
        assert_eq!(info.filesystem, want);
        assert_eq!(info.label.as_deref(), Some("RAYOS ESP"));
        assert_eq!(info.uuid.as_deref(), Some("1234-ABCD"));
        agrees_with_blkid(&img, 0, mib * MIB, &info);
    }
}

#[test]
fn fat_without_label_has_none() {
    let (_d, img) = sparse_image(40 * MIB);
    run("mkfs.fat", &["-F", "32", img.to_str().unwrap()]);
    let info = probe_file(&img, 0, 40 * MIB);
    assert_eq!(info.filesystem, Filesystem::Fat32);
    assert_eq!(info.label, None);
}

#[test]
fn fat_inside_a_disk_image_at_an_offset() {
    // mkfs.fat --offset is in 512-byte sectors.
    let (_d, img) = sparse_image(100 * MIB);
    run(
        "mkfs.fat",
        &[
            "-F",
            "32",
            "-n",
            "ESP",
            "--offset",
            "2048",
            img.to_str().unwrap(),
            "65536",
        ],
    );
    let info = probe_file(&img, MIB, 32 * MIB);
    assert_eq!(info.filesystem, Filesystem::Fat32);
    assert_eq!(info.label.as_deref(), Some("ESP"));
    // Nothing at byte 0 of the disk.
    let mut f = File::open(&img).unwrap();
    assert_eq!(probe(&mut f, 0, MIB).unwrap(), None);
}

#[test]
fn ext2_3_4_made_by_mke2fs() {
    for (t, want) in [
        ("ext2", Filesystem::Ext2),
        ("ext3", Filesystem::Ext3),
        ("ext4", Filesystem::Ext4),
    ] {
        let (_d, img) = sparse_image(64 * MIB);
        run(
            "mke2fs",
            &[
                "-q",
                "-F",
                "-t",
                t,
                "-L",
                "rayos-data",
                "-U",
                "0a1b2c3d-4e5f-4071-8293-a4b5c6d7e8f9",
                img.to_str().unwrap(),
            ],
        );
        let info = probe_file(&img, 0, 64 * MIB);
        assert_eq!(info.filesystem, want, "{t}");
        assert_eq!(info.label.as_deref(), Some("rayos-data"));
        assert_eq!(
            info.uuid.as_deref(),
            Some("0a1b2c3d-4e5f-4071-8293-a4b5c6d7e8f9")
        );
        agrees_with_blkid(&img, 0, 64 * MIB, &info);
    }
}

#[test]
fn ext4_at_an_offset_made_with_e_offset() {
    let (_d, img) = sparse_image(96 * MIB);
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-L",
            "linux-root",
            "-E",
            &format!("offset={}", 32 * MIB),
            img.to_str().unwrap(),
            "65536", // blocks of 1 KiB would be mke2fs' pick; give size in KiB
        ],
    );
    let info = probe_file(&img, 32 * MIB, 64 * MIB);
    assert_eq!(info.filesystem, Filesystem::Ext4);
    assert_eq!(info.label.as_deref(), Some("linux-root"));
}

#[test]
fn swap_made_by_mkswap() {
    let (_d, img) = sparse_image(16 * MIB);
    run(
        "mkswap",
        &[
            "-L",
            "swappy",
            "-U",
            "11111111-2222-4333-8444-555555555555",
            img.to_str().unwrap(),
        ],
    );
    let info = probe_file(&img, 0, 16 * MIB);
    assert_eq!(info.filesystem, Filesystem::Swap);
    assert_eq!(info.label.as_deref(), Some("swappy"));
    assert_eq!(
        info.uuid.as_deref(),
        Some("11111111-2222-4333-8444-555555555555")
    );
    agrees_with_blkid(&img, 0, 16 * MIB, &info);
}

#[test]
fn hand_made_ntfs_with_label_agrees_with_blkid() {
    let (_d, img) = sparse_image(64 * MIB);
    let mut f = open_rw(&img);
    write_ntfs(&mut f, 0, 64 * MIB, "Windows ☃", 0x0123_4567_89AB_CDEF);
    drop(f);
    let info = probe_file(&img, 0, 64 * MIB);
    assert_eq!(info.filesystem, Filesystem::Ntfs);
    assert_eq!(info.label.as_deref(), Some("Windows ☃"));
    assert_eq!(info.uuid.as_deref(), Some("0123456789ABCDEF"));
    agrees_with_blkid(&img, 0, 64 * MIB, &info);
}

#[test]
fn zeroes_and_noise_are_nothing() {
    let (_d, img) = sparse_image(2 * MIB);
    let mut f = File::open(&img).unwrap();
    assert_eq!(probe(&mut f, 0, 2 * MIB).unwrap(), None);
    // Deterministic noise (xorshift), no magic anywhere by construction odds.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..2 * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut c = std::io::Cursor::new(noise);
    assert_eq!(probe(&mut c, 0, 2 * MIB).unwrap(), None);
    // A range shorter than a sector is nothing, not an error.
    assert_eq!(probe(&mut c, 0, 100).unwrap(), None);
}
