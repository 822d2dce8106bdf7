//! Our GPT writer and reader against independent tools: `sgdisk -v` must
//! find no problems in tables we write (512- and 4096-byte sectors), our
//! reader must see exactly what `sgdisk` and `sfdisk` wrote, and damage must
//! be reported by us as it is by sgdisk — without our reader changing a byte.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use rayos_disk::gpt::{Gpt, GptError, Partition, TableState, inspect};
use rayos_disk::types;
use uuid::Uuid;

/// ESP, XBOOTLDR, RayOS data, RayOS VM storage, with a free gap.
fn rayos_layout(bytes: u64, ss: u32) -> Gpt {
    let mut g = Gpt::new(bytes, ss).unwrap();
    let l = |b: u64| b / ss as u64;
    g.add(Partition::new(
        1,
        types::ESP,
        l(MIB),
        l(513 * MIB) - 1,
        "EFI system partition",
    ))
    .unwrap();
    let mut sys = Partition::new(
        2,
        types::XBOOTLDR,
        l(513 * MIB),
        l(2561 * MIB) - 1,
        "rayos-system",
    );
    sys.attributes = 1 << 63 | 1; // "no automount" GPT attribute + required
    g.add(sys).unwrap();
    g.add(Partition::new(
        3,
        types::RAYOS_DATA,
        l(2561 * MIB),
        l(6 * 1024 * MIB) - 1,
        "rayos-data",
    ))
    .unwrap();
    // Leave 1 GiB free, then VM storage to the end.
    let lu = g.last_usable();
    g.add(Partition::new(
        5,
        types::RAYOS_VM_STORAGE,
        l(7 * 1024 * MIB),
        lu,
        "rayos-vm-linux",
    ))
    .unwrap();
    g
}

/// `sgdisk -i N` facts: (type GUID, unique GUID, first, last, attributes, name).
fn sgdisk_info(dev: &Path, n: u32) -> (Uuid, Uuid, u64, u64, u64, String) {
    let text = run("sgdisk", &["-i", &n.to_string(), dev.to_str().unwrap()]);
    let field = |key: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in sgdisk -i output:\n{text}"))
            .trim()
            .to_string()
    };
    let guid = |s: String| Uuid::parse_str(s.split_whitespace().next().unwrap()).unwrap();
    let num = |s: String| s.split_whitespace().next().unwrap().parse::<u64>().unwrap();
    let name = field("Partition name:");
    (
        guid(field("Partition GUID code:")),
        guid(field("Partition unique GUID:")),
        num(field("First sector:")),
        num(field("Last sector:")),
        u64::from_str_radix(&field("Attribute flags:"), 16).unwrap(),
        name.trim_matches('\'').to_string(),
    )
}

fn assert_sgdisk_agrees(dev: &Path, g: &Gpt) {
    let v = run("sgdisk", &["-v", dev.to_str().unwrap()]);
    assert!(v.contains("No problems found"), "sgdisk -v:\n{v}");
    let p = run("sgdisk", &["-p", dev.to_str().unwrap()]);
    assert!(
        p.to_lowercase().contains(&g.disk_guid().to_string()),
        "disk GUID not in sgdisk -p:\n{p}"
    );
    for part in g.partitions() {
        let (t, u, first, last, attrs, name) = sgdisk_info(dev, part.number);
        assert_eq!(t, part.type_guid, "partition {}", part.number);
        assert_eq!(u, part.unique_guid);
        assert_eq!((first, last), (part.first_lba, part.last_lba));
        assert_eq!(attrs, part.attributes);
        assert_eq!(name, part.name);
    }
}

#[test]
fn sgdisk_finds_no_problem_in_our_512_byte_table() {
    let (_d, img) = sparse_image(10 * 1024 * MIB);
    let g = rayos_layout(10 * 1024 * MIB, 512);
    let mut f = open_rw(&img);
    g.write(&mut f).unwrap();
    f.sync_all().unwrap();
    assert_sgdisk_agrees(&img, &g);
    // And the free gap is what sgdisk calls free.
    assert_eq!(g.free_regions(MIB).len(), 1);
    assert_eq!(g.free_regions(MIB)[0].size_bytes(512), 1024 * MIB);
    let v = run("sgdisk", &["-v", img.to_str().unwrap()]);
    assert!(v.contains("(1024.0 MiB)") || v.contains("1.0 GiB"), "{v}");
}

#[test]
fn we_read_exactly_what_sgdisk_wrote() {
    let (_d, img) = sparse_image(4 * 1024 * MIB);
    let p = img.to_str().unwrap();
    let disk = "5b4f1ddb-a7f0-4d8c-9a55-5f5d0d6a1e21";
    let esp_u = "0c9f3d7e-0000-4000-8000-000000000001";
    run(
        "sgdisk",
        &[
            "-o",
            "-U",
            disk,
            "-n",
            "1:1M:+100M",
            "-t",
            "1:ef00",
            "-c",
            "1:EFI system partition",
            "-u",
            &format!("1:{esp_u}"),
            "-n",
            "2:0:+16M",
            "-t",
            "2:0c01",
            "-c",
            "2:Microsoft reserved partition",
            "-n",
            "3:0:+1G",
            "-t",
            "3:0700",
            "-c",
            "3:Basic data partition",
            "-A",
            "3:set:63",
            "-n",
            "6:0:+500M",
            "-t",
            "6:2700",
            "-n",
            "4:0:+1G",
            "-t",
            "4:8300",
            "-c",
            "4:débian root",
            p,
        ],
    );
    let mut f = fs::File::open(&img).unwrap();
    let g = Gpt::read(&mut f, 512).unwrap();
    assert_eq!(g.disk_guid().to_string(), disk);
    let numbers: Vec<u32> = g.partitions().iter().map(|p| p.number).collect();
    assert_eq!(numbers, vec![1, 2, 3, 4, 6]);
    for part in g.partitions() {
        let (t, u, first, last, attrs, name) = sgdisk_info(&img, part.number);
        assert_eq!(
            (t, u, first, last, attrs, name),
            (
                part.type_guid,
                part.unique_guid,
                part.first_lba,
                part.last_lba,
                part.attributes,
                part.name.clone()
            )
        );
    }
    assert_eq!(g.partition(1).unwrap().unique_guid.to_string(), esp_u);
    assert_eq!(g.partition(2).unwrap().type_guid, types::MS_RESERVED);
    assert_eq!(g.partition(6).unwrap().type_guid, types::WINDOWS_RECOVERY);
    assert_eq!(g.partition(3).unwrap().attributes, 1 << 63);
    assert_eq!(g.partition(4).unwrap().name, "débian root");
    // Free space: everything after partition 4, start aligned.
    let free = g.free_regions(MIB);
    assert_eq!(free.len(), 1);
    assert_eq!(free[0].first_lba, g.partition(4).unwrap().last_lba + 1);
    assert_eq!(free[0].first_lba % 2048, 0);
}

#[test]
fn adding_to_a_sgdisk_table_keeps_sgdisk_happy() {
    // The installer's free-space mode: read a foreign table, add beside it,
    // write back. Existing entries must be byte-identical afterwards.
    let (_d, img) = sparse_image(8 * 1024 * MIB);
    let p = img.to_str().unwrap();
    run(
        "sgdisk",
        &[
            "-o",
            "-n",
            "1:1M:+100M",
            "-t",
            "1:ef00",
            "-n",
            "2:0:+2G",
            "-t",
            "2:0700",
            p,
        ],
    );
    let mut f = open_rw(&img);
    let mut g = Gpt::read(&mut f, 512).unwrap();
    let before: Vec<Partition> = g.partitions().to_vec();
    let free = g.free_regions(MIB)[0];
    let n = g.next_free_number().unwrap();
    assert_eq!(n, 3);
    g.add(Partition::new(
        n,
        types::XBOOTLDR,
        free.first_lba,
        free.first_lba + 2 * 1024 * 2048 - 1,
        "rayos-system",
    ))
    .unwrap();
    g.write(&mut f).unwrap();
    f.sync_all().unwrap();
    assert_sgdisk_agrees(&img, &g);
    let again = Gpt::read(&mut f, 512).unwrap();
    assert_eq!(&again.partitions()[..2], &before[..]);
}

#[test]
fn sfdisk_mbr_disks_are_reported_as_mbr() {
    let (_d, img) = sparse_image(256 * MIB);
    let script = "label: dos\n,64MiB,7,*\n,32MiB,83\n,+,5\n,16MiB,82\n";
    let out = std::process::Command::new("sfdisk")
        .arg(&img)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(script.as_bytes())?;
            c.wait_with_output()
        })
        .expect("running sfdisk failed: install the fdisk package (scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut f = fs::File::open(&img).unwrap();
    match Gpt::read(&mut f, 512) {
        Err(GptError::MbrOnly(m)) => {
            let got: Vec<(u32, u8, bool, u64, u64)> = m
                .partitions
                .iter()
                .map(|p| (p.number, p.type_byte, p.bootable, p.first_lba, p.sectors))
                .collect();
            let ext_start = 2048 + 64 * 2048 + 32 * 2048;
            assert_eq!(
                got,
                vec![
                    (1, 0x07, true, 2048, 64 * 2048),
                    (2, 0x83, false, 2048 + 64 * 2048, 32 * 2048),
                    (3, 0x05, false, ext_start, 256 * 2048 - ext_start),
                    (5, 0x82, false, ext_start + 2048, 16 * 2048),
                ]
            );
        }
        other => panic!("expected MbrOnly, got {other:?}"),
    }
    // The report: extended container left out, types named, systems found.
    let mut f = open_rw(&img);
    write_ntfs(&mut f, MIB, 64 * MIB, "Data", 7);
    drop(f);
    let d = rayos_disk::probe_image(&img, None).unwrap();
    assert_eq!(d.table, rayos_disk::Table::Mbr);
    let rows: Vec<(u32, Option<u8>, String)> = d
        .partitions
        .iter()
        .map(|p| (p.number, p.mbr_type, p.type_name.clone()))
        .collect();
    assert_eq!(
        rows,
        vec![
            (1, Some(0x07), "NTFS/exFAT/HPFS (0x07)".to_string()),
            (2, Some(0x83), "Linux (0x83)".to_string()),
            (5, Some(0x82), "Linux swap (0x82)".to_string()),
        ]
    );
    assert_eq!(d.partitions[0].fs_label.as_deref(), Some("Data"));
    assert!(d.free_regions.is_empty(), "RayOS does not add to MBR disks");
    let kinds: Vec<rayos_disk::SystemKind> = d.systems.iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        vec![
            rayos_disk::SystemKind::Windows,
            rayos_disk::SystemKind::Linux
        ]
    );
}

#[test]
fn damage_is_reported_like_sgdisk_does_and_nothing_is_written() {
    let (_d, img) = sparse_image(1024 * MIB);
    let g = rayos_layout_small(1024 * MIB);
    let mut f = open_rw(&img);
    g.write(&mut f).unwrap();
    f.sync_all().unwrap();
    // Break the primary header (its disk GUID field) without fixing the CRC.
    let mut bytes = fs::read(&img).unwrap();
    bytes[512 + 60] ^= 0xFF;
    fs::write(&img, &bytes).unwrap();
    let (_, v) = run_status("sgdisk", &["-v", img.to_str().unwrap()]);
    // sgdisk's verdict, which ours must match: main header bad, backup good.
    assert!(
        v.contains("Main header: ERROR"),
        "sgdisk should object:\n{v}"
    );
    assert!(v.contains("Backup header: OK"), "{v}");
    let mut f = fs::File::open(&img).unwrap();
    let Err(GptError::Corrupt(c)) = Gpt::read(&mut f, 512) else {
        panic!("expected Corrupt");
    };
    assert!(
        c.problems
            .contains(&"primary header: CRC mismatch".to_string()),
        "{c}"
    );
    assert!(c.backup_valid && !c.primary_valid);
    assert_eq!(fs::read(&img).unwrap(), bytes, "reading changed the disk");
}

fn rayos_layout_small(bytes: u64) -> Gpt {
    let mut g = Gpt::new(bytes, 512).unwrap();
    g.add(Partition::new(1, types::ESP, 2048, 100 * 2048 - 1, "ESP"))
        .unwrap();
    g.add(Partition::new(
        2,
        types::RAYOS_DATA,
        100 * 2048,
        300 * 2048 - 1,
        "rayos-data",
    ))
    .unwrap();
    g
}

/// `fdisk -b 4096 -l -o ...` rows: (start, end, type GUID, name).
fn fdisk_4096(img: &Path) -> (String, Vec<(u64, u64, String, String)>) {
    let text = run(
        "fdisk",
        &[
            "-b",
            "4096",
            "-l",
            "-o",
            "Start,End,Type-UUID,Name",
            img.to_str().unwrap(),
        ],
    );
    let mut rows = Vec::new();
    let mut in_table = false;
    for l in text.lines() {
        if l.trim_start().starts_with("Start") {
            in_table = true;
            continue;
        }
        if in_table && !l.trim().is_empty() {
            let mut w = l.split_whitespace();
            let start = w.next().unwrap().parse().unwrap();
            let end = w.next().unwrap().parse().unwrap();
            let t = w.next().unwrap().to_lowercase();
            let name = w.collect::<Vec<_>>().join(" ");
            rows.push((start, end, t, name));
        }
    }
    (text, rows)
}

#[test]
fn fdisk_reads_our_4096_byte_table() {
    let bytes = 10 * 1024 * MIB;
    let (_d, img) = sparse_image(bytes);
    let g = rayos_layout(bytes, 4096);
    let mut f = open_rw(&img);
    g.write(&mut f).unwrap();
    f.sync_all().unwrap();
    let (text, rows) = fdisk_4096(&img);
    assert!(
        text.contains("Sector size (logical/physical): 4096 bytes"),
        "{text}"
    );
    assert!(text.contains("Disklabel type: gpt"), "{text}");
    assert!(
        text.to_lowercase()
            .contains(&format!("disk identifier: {}", g.disk_guid())),
        "{text}"
    );
    // fdisk warns about CRC, backup and PMBR problems on stderr; none here.
    for bad in ["corrupt", "mismatch", "invalid", "does not"] {
        assert!(
            !text.to_lowercase().contains(bad),
            "fdisk complained ({bad}):\n{text}"
        );
    }
    let want: Vec<(u64, u64, String, String)> = g
        .partitions()
        .iter()
        .map(|p| {
            (
                p.first_lba,
                p.last_lba,
                p.type_guid.to_string(),
                p.name.clone(),
            )
        })
        .collect();
    assert_eq!(rows, want);
    // Our reader at 4096 sees the same table; at 512 it says why not.
    let mut f = fs::File::open(&img).unwrap();
    assert_eq!(Gpt::read(&mut f, 4096).unwrap(), g);
    assert!(matches!(
        inspect(&mut f, 512).unwrap(),
        TableState::Corrupt(_)
    ));
}

/// A loop device with 4096-byte logical sectors, detached on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn sgdisk_verifies_our_4096_byte_table_on_a_4k_loop_device() {
    // sgdisk has no sector-size switch for files; a loop device with
    // 4096-byte logical sectors gives it the real geometry. Needs root.
    let bytes = 2 * 1024 * MIB;
    let (_d, img) = sparse_image(bytes);
    let mut g = Gpt::new(bytes, 4096).unwrap();
    g.add(Partition::new(1, types::ESP, 256, 256 * 101 - 1, "EFI"))
        .unwrap();
    g.add(Partition::new(
        2,
        types::XBOOTLDR,
        256 * 101,
        256 * 613 - 1,
        "rayos-system",
    ))
    .unwrap();
    let lu = g.last_usable();
    g.add(Partition::new(
        3,
        types::RAYOS_DATA,
        256 * 613,
        lu,
        "rayos-data",
    ))
    .unwrap();
    let mut f = open_rw(&img);
    g.write(&mut f).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let (ok, dev) = run_status(
        "losetup",
        &[
            "--find",
            "--show",
            "--sector-size",
            "4096",
            "--read-only",
            img.to_str().unwrap(),
        ],
    );
    assert!(
        ok,
        "attaching a 4096-byte-sector loop device failed (this test needs root and loop devices):\n{dev}"
    );
    let lo = Loop(dev.trim().to_string());
    let text = run("sgdisk", &["-p", &lo.0]);
    assert!(
        text.contains("Sector size (logical/physical): 4096/4096 bytes"),
        "{text}"
    );
    assert_sgdisk_agrees(Path::new(&lo.0), &g);
    // The image is in use while attached.
    let d = rayos_disk::probe_image(&img, None).unwrap();
    assert_eq!(d.logical_sector_size, 4096);
    assert!(
        d.in_use.iter().any(|u| matches!(&u.reason, rayos_disk::UsageReason::LoopBacking { loop_device } if loop_device == Path::new(&lo.0))),
        "{:?}",
        d.in_use
    );
}
