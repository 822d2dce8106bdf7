//! `rayos disks` end to end: the real binary on sparse disk images that hold
//! other systems (made with mkfs.fat / mkfs.ext4 at partition offsets and a
//! hand-made NTFS boot sector), checked through `--json` and the text view.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Output};

use rayos_disk::gpt::{Gpt, Partition};
use rayos_disk::types;
use rayos_testkit::disks::LoopDevice;
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn rayos(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rayos"))
        .args(args)
        .output()
        .expect("running the rayos binary failed")
}

fn tool(name: &str, args: &[&str]) {
    let out = Command::new(name).args(args).output().unwrap_or_else(|e| {
        panic!("running {name} failed ({e}): install it with scripts/install-deps.sh")
    });
    assert!(
        out.status.success(),
        "{name} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json(args: &[&str]) -> Value {
    let out = rayos(args);
    assert!(
        out.status.success(),
        "rayos {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json output is not JSON")
}

/// ESP (FAT32), MSR, NTFS basic data, recovery, Linux ext4, RayOS system
/// and data, then 1 GiB+ free. Returns the partition table written.
fn dual_boot_image(path: &Path) -> Gpt {
    let bytes = 8 * 1024 * MIB;
    File::create(path).unwrap().set_len(bytes).unwrap();
    let mut g = Gpt::new(bytes, 512).unwrap();
    let mut at = MIB;
    let layout = [
        (1, types::ESP, 100, "EFI system partition"),
        (2, types::MS_RESERVED, 16, "Microsoft reserved partition"),
        (3, types::MS_BASIC_DATA, 1024, "Basic data partition"),
        (4, types::WINDOWS_RECOVERY, 500, ""),
        (5, types::LINUX_FS, 1024, "debian"),
        (6, types::XBOOTLDR, 256, "rayos-system"),
        (7, types::RAYOS_DATA, 2048, "rayos-data"),
    ];
    for (n, t, mib, name) in layout {
        let first = at / 512;
        g.add(Partition::new(n, t, first, first + mib * 2048 - 1, name))
            .unwrap();
        at += mib * MIB;
    }
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    g.write(&mut f).unwrap();
    // NTFS boot sector at partition 3 (enough to be recognised).
    let p3 = g.partition(3).unwrap().start_bytes(512);
    f.seek(SeekFrom::Start(p3 + 3)).unwrap();
    f.write_all(b"NTFS    ").unwrap();
    f.sync_all().unwrap();
    drop(f);
    let p = path.to_str().unwrap();
    let part = |n: u32| g.partition(n).unwrap().clone();
    let (e, s) = (part(1), part(6));
    tool(
        "mkfs.fat",
        &[
            "-F",
            "32",
            "-n",
            "SYSTEM",
            "--offset",
            &e.first_lba.to_string(),
            p,
            &(e.size_bytes(512) / 1024).to_string(),
        ],
    );
    tool(
        "mkfs.fat",
        &[
            "-F",
            "32",
            "-n",
            "RAYOS-SYS",
            "--offset",
            &s.first_lba.to_string(),
            p,
            &(s.size_bytes(512) / 1024).to_string(),
        ],
    );
    for (n, label) in [(5, "debian-root"), (7, "rayos-data")] {
        let q = part(n);
        tool(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-L",
                label,
                "-E",
                &format!("offset={}", q.start_bytes(512)),
                p,
                &(q.size_bytes(512) / 1024).to_string(),
            ],
        );
    }
    g
}

#[test]
fn json_report_of_a_dual_boot_disk_with_rayos() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pc.img");
    let g = dual_boot_image(&img);
    let v = json(&["disks", "--json", "--disk", img.to_str().unwrap()]);
    let disks = v["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 1);
    let d = &disks[0];
    assert_eq!(d["path"], img.to_str().unwrap());
    assert_eq!(d["kind"], "image-file");
    assert_eq!(d["size_bytes"], 8 * 1024 * MIB);
    assert_eq!(d["logical_sector_size"], 512);
    assert_eq!(d["table"]["type"], "gpt");
    assert_eq!(d["disk_guid"], g.disk_guid().to_string());
    assert_eq!(d["in_use"], serde_json::json!([]));
    let parts = d["partitions"].as_array().unwrap();
    let row = |n: u64| parts.iter().find(|p| p["number"] == n).unwrap();
    let facts = |n: u64| {
        let p = row(n);
        (
            p["type_name"].as_str().unwrap().to_string(),
            p["filesystem"].as_str().map(str::to_string),
            p["fs_label"].as_str().map(str::to_string),
        )
    };
    let s = |x: &str| Some(x.to_string());
    assert_eq!(
        facts(1),
        ("EFI system partition".into(), s("fat32"), s("SYSTEM"))
    );
    assert_eq!(facts(2), ("Microsoft reserved".into(), None, None));
    assert_eq!(facts(3), ("Microsoft basic data".into(), s("ntfs"), None));
    assert_eq!(facts(4), ("Windows recovery".into(), None, None));
    assert_eq!(
        facts(5),
        ("Linux filesystem".into(), s("ext4"), s("debian-root"))
    );
    assert_eq!(
        facts(6),
        (
            "Extended boot loader (XBOOTLDR)".into(),
            s("fat32"),
            s("RAYOS-SYS")
        )
    );
    assert_eq!(facts(7), ("RayOS data".into(), s("ext4"), s("rayos-data")));
    for p in g.partitions() {
        let r = row(p.number as u64);
        assert_eq!(r["start_bytes"], p.start_bytes(512));
        assert_eq!(r["size_bytes"], p.size_bytes(512));
        assert_eq!(r["first_lba"], p.first_lba);
        assert_eq!(r["type_guid"], p.type_guid.to_string());
        assert_eq!(r["unique_guid"], p.unique_guid.to_string());
        assert_eq!(r["name"], p.name.as_str());
        assert_eq!(
            r["device"],
            Value::Null,
            "image files have no partition nodes"
        );
    }
    // Free space after partition 7: from 4969 MiB to the end.
    let free = d["free_regions"].as_array().unwrap();
    assert_eq!(free.len(), 1);
    assert_eq!(free[0]["start_bytes"], 4969 * MIB);
    let end = g.last_usable() + 1;
    assert_eq!(free[0]["size_bytes"], end * 512 - 4969 * MIB);
    // RayOS and the other systems.
    assert_eq!(d["rayos"]["system"], 6);
    assert_eq!(d["rayos"]["data"], 7);
    assert_eq!(d["rayos"]["esp"], 1);
    let systems = d["systems"].as_array().unwrap();
    let sys = |k: &str| {
        systems
            .iter()
            .find(|s| s["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} in {systems:?}"))["partitions"]
            .clone()
    };
    assert_eq!(sys("windows"), serde_json::json!([2, 3, 4]));
    assert_eq!(sys("linux"), serde_json::json!([5]));
    assert_eq!(sys("esp"), serde_json::json!([1]));
}

#[test]
fn text_report_reads_well() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("pc.img");
    dual_boot_image(&img);
    let out = rayos(&["disks", "--disk", img.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "8.0 GiB  image file, 512-byte sectors, GPT",
        "EFI system partition",
        "rayos-system",
        "debian-root",
        "in use: no",
        "RayOS install: partitions system 6, data 7",
        "Windows: partition 2: Microsoft reserved",
        "free: 3.1 GiB at 4.9 GiB",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn sector_sizes_4096_and_blank_images() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("4k.img");
    File::create(&img).unwrap().set_len(256 * MIB).unwrap();
    let mut g = Gpt::new(256 * MIB, 4096).unwrap();
    g.add(Partition::new(1, types::ESP, 256, 256 * 65 - 1, "EFI"))
        .unwrap();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    g.write(&mut f).unwrap();
    drop(f);
    let p = img.to_str().unwrap();
    // Detected from where the header is.
    let d = &json(&["disks", "--json", "--disk", p])["disks"][0];
    assert_eq!(d["logical_sector_size"], 4096);
    assert_eq!(d["partitions"][0]["first_lba"], 256);
    assert_eq!(d["partitions"][0]["start_bytes"], MIB);
    assert_eq!(d["partitions"][0]["size_bytes"], 64 * MIB);
    assert_eq!(d["free_regions"][0]["start_bytes"], 65 * MIB);
    // Told 512: the table is reported as written for another sector size.
    let d = &json(&["disks", "--json", "--sector-size", "512", "--disk", p])["disks"][0];
    assert_eq!(d["table"]["type"], "corrupt");
    assert!(
        d["table"]["reason"]
            .as_str()
            .unwrap()
            .contains("4096-byte sectors")
    );
    // A blank image takes the sector size it is given.
    let blank = dir.path().join("blank.img");
    File::create(&blank).unwrap().set_len(64 * MIB).unwrap();
    let v = json(&[
        "disks",
        "--json",
        "--sector-size",
        "4096",
        "--disk",
        blank.to_str().unwrap(),
        "--disk",
        p,
    ]);
    let b = &v["disks"][0];
    assert_eq!(b["table"]["type"], "none");
    assert_eq!(b["logical_sector_size"], 4096);
    assert_eq!(b["partitions"], serde_json::json!([]));
    assert_eq!(v["disks"].as_array().unwrap().len(), 2);
}

#[test]
fn a_missing_path_is_exit_code_2_with_its_name() {
    let out = rayos(&["disks", "--disk", "/nonexistent/disk.img"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/disk.img"), "{err}");
    assert!(err.contains("no such file"), "{err}");
    assert!(out.stdout.is_empty());
    // An unsupported sector size is bad usage too.
    let out = rayos(&["disks", "--sector-size", "1000", "--disk", "/dev/null"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_real_block_device_through_sysfs() {
    // A loop device with 4096-byte logical sectors is a real block device
    // with sysfs entries: size, sector size and read-only come from there.
    // Needs root and loop devices (as CI has).
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("4k.img");
    File::create(&img).unwrap().set_len(128 * MIB).unwrap();
    let mut g = Gpt::new(128 * MIB, 4096).unwrap();
    g.add(Partition::new(1, types::ESP, 256, 256 * 33 - 1, "EFI"))
        .unwrap();
    g.add(Partition::new(
        2,
        types::RAYOS_DATA,
        256 * 33,
        256 * 100 - 1,
        "rayos-data",
    ))
    .unwrap();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    g.write(&mut f).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let lo = LoopDevice::attach(&img, &["--read-only", "--sector-size", "4096"]);
    let name = lo.path().trim_start_matches("/dev/").to_string();

    let v = json(&["disks", "--json", "--disk", lo.path()]);
    let d = &v["disks"][0];
    assert_eq!(d["path"], lo.path());
    assert_eq!(d["kind"], "block-device");
    assert_eq!(d["size_bytes"], 128 * MIB);
    assert_eq!(d["logical_sector_size"], 4096);
    assert_eq!(d["read_only"], true);
    assert_eq!(d["table"]["type"], "gpt");
    assert_eq!(d["partitions"][1]["device"], format!("/dev/{name}p2"));
    assert_eq!(d["partitions"][1]["start_bytes"], 33 * MIB);
    assert_eq!(d["rayos"]["data"], 2);

    // The whole-machine listing includes it, and the image shows as in use.
    let all = json(&["disks", "--json"]);
    assert!(
        all["disks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["path"] == lo.path() && d["logical_sector_size"] == 4096),
        "{lo:?} missing from the listing",
        lo = lo.path()
    );
    let i = &json(&["disks", "--json", "--disk", img.to_str().unwrap()])["disks"][0];
    assert_eq!(i["in_use"][0]["reason"], "loop-backing");
    assert_eq!(i["in_use"][0]["loop_device"], lo.path());
}
