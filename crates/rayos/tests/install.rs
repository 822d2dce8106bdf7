//! `rayos install` as a user runs it: markers, exit codes, refusals that
//! write nothing, the issue's answer file as written, and an install killed
//! after every step and re-run to completion. Real images, real tools.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rayos_testkit::disks::{self, DiskBuilder, DiskImage, LoopDevice, fingerprint, run};

const GIB: u64 = 1 << 30;

use rayos_base::marker::{InstallerMarker as I, Kind, Marker};
use rayos_install::answers::ISSUE_EXAMPLE;

struct T {
    dir: tempfile::TempDir,
}

impl T {
    fn new() -> T {
        for tool in [
            "sgdisk",
            "mkfs.fat",
            "mkfs.ext4",
            "mcopy",
            "debugfs",
            "fsck.fat",
            "xorriso",
        ] {
            let ok = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(ok, "{tool} is not installed: run `cargo xtask deps`");
        }
        T {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }
    fn file(&self, n: &str, text: &str) -> PathBuf {
        let p = self.path(n);
        std::fs::write(&p, text).unwrap();
        p
    }
    fn uki(&self) -> PathBuf {
        let p = self.path("rayos.efi");
        if !p.exists() {
            std::fs::write(&p, disks::pseudo_random(5, 1 << 20)).unwrap();
        }
        p
    }
    fn rayos(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rayos"));
        c.arg("install").args(args).env("TMPDIR", self.dir.path());
        c.env_remove("RAYOS_INSTALL_FAIL_AFTER");
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdin(std::process::Stdio::null());
        c.output().unwrap()
    }
    fn install(&self, img: &Path, answers: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let uki = self.uki();
        let mut a = vec![
            "--target",
            img.to_str().unwrap(),
            "--answers",
            answers.to_str().unwrap(),
            "--system-image",
            uki.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        self.rayos(&a, env)
    }
}

/// A marker of the installer engine, as `rayos install` prints it.
fn engine(m: I) -> String {
    Marker::Installer(m).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_refused(o: &Output, code: i32, needle: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{e}");
    assert!(e.contains(&engine(I::EngineFailed)), "{e}");
    assert!(!e.contains(&engine(I::EngineComplete)), "{e}");
    assert!(e.contains(needle), "expected {needle:?} in: {e}");
}

fn blank(t: &T, name: &str, size: u64) -> PathBuf {
    let p = t.path(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

/// What a finished install looks like from outside, and that the other
/// systems' partitions are byte-identical to `before`.
fn check_complete(img: &Path, fixture: Option<(&DiskImage, &[String])>) {
    let v = run("sgdisk", &["-v", img.to_str().unwrap()]).unwrap();
    assert!(v.contains("No problems found"), "{v}");
    let disk = rayos_disk::probe_image(img, None).unwrap();
    let r = disk.rayos.clone().expect("a RayOS install");
    // Exactly one of each: re-runs did not pile up partitions.
    let count = |t| {
        disk.partitions
            .iter()
            .filter(|p| p.type_guid == Some(t))
            .count()
    };
    assert_eq!(count(rayos_disk::types::XBOOTLDR), 1);
    assert_eq!(count(rayos_disk::types::RAYOS_DATA), 1);
    assert_eq!(count(rayos_disk::types::ESP), 1);
    let sys = disk.partition(r.system.unwrap()).unwrap();
    let out = run(
        "mtype",
        &[
            "-i",
            &format!("{}@@{}", img.display(), sys.start_bytes),
            "::/rayos/install-manifest.json",
        ],
    )
    .unwrap();
    assert!(out.contains("\"install_id\""), "{out}");
    let data = disk.partition(r.data.unwrap()).unwrap();
    let ext = format!("{}?offset={}", img.display(), data.start_bytes);
    run("e2fsck", &["-fn", &ext]).unwrap();
    let m = run("debugfs", &["-R", "cat /machine.toml", &ext]).unwrap();
    assert!(m.contains("hostname = \"rayos-test\""), "{m}");
    if let Some((fx, before)) = fixture {
        let now: Vec<String> = (2..=4).map(|n| fx.partition_hash(n).unwrap()).collect();
        assert_eq!(now, before, "a partition outside the plan changed");
        let esp = &fx.partitions[0];
        let f = run(
            "mtype",
            &[
                "-i",
                &format!("{}@@{}", img.display(), esp.start_bytes()),
                "::/EFI/BOOT/BOOTX64.EFI",
            ],
        )
        .unwrap();
        assert_eq!(f, "windows fallback loader");
    }
}

#[test]
fn issue_answer_file_dry_run_then_install() {
    let t = T::new();
    let img = blank(&t, "disk.img", 6 * GIB);
    let answers = t.file("answers.toml", ISSUE_EXAMPLE);
    let before = fingerprint(&img).unwrap();

    let o = t.install(&img, &answers, &["--dry-run"], &[]);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
    for m in [
        engine(I::EngineStarted),
        engine(I::EnginePlanGenerated),
        engine(I::EngineComplete),
    ] {
        assert!(e.contains(&m), "{m} missing: {e}");
    }
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("create") && text.contains("rayos-system") && text.contains("/machine.toml"),
        "{text}"
    );
    assert!(e.contains("overrides [target].disk = /dev/vda"), "{e}");
    assert_eq!(
        fingerprint(&img).unwrap(),
        before,
        "--dry-run wrote to the disk"
    );

    let o = t.install(&img, &answers, &["--dry-run", "--json"], &[]);
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(plan["mode"], "free-space");
    assert_eq!(plan["machine"]["hostname"], "rayos-test");
    assert_eq!(fingerprint(&img).unwrap(), before);

    let o = t.install(&img, &answers, &["--yes", "--json"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.first().unwrap()["event"], "step-started");
    assert_eq!(lines.last().unwrap()["event"], "complete");
    let e = stderr(&o);
    assert!(
        e.contains(&engine(I::EngineStep("format-data".into())))
            && e.contains(&engine(I::EngineComplete)),
        "{e}"
    );
    check_complete(&img, None);
}

#[test]
fn refusals_write_nothing() {
    let t = T::new();
    let small = blank(&t, "small.img", 3 * GIB);
    let whole = t.file(
        "whole.toml",
        "version = 1\n[target]\nmode = \"whole-disk\"\n",
    );
    let fp = fingerprint(&small).unwrap();
    // too small, saying how much is needed
    let o = t.install(&small, &whole, &["--yes"], &[]);
    assert_refused(&o, 2, "needs 4 GiB");
    // unknown key, named with its line
    let bad = t.file(
        "bad.toml",
        "version = 1\n[target]\nmode = \"whole-disk\"\n[machine]\nhostnmae = \"x\"\n",
    );
    let o = t.install(&small, &bad, &["--yes"], &[]);
    assert_refused(&o, 2, "bad.toml:5");
    assert!(stderr(&o).contains("hostnmae"));
    // bad value, named with its line
    let bad = t.file(
        "bad2.toml",
        "version = 1\n[target]\nmode = \"whole-disk\"\n[sizes]\nsystem = \"lots\"\n",
    );
    assert_refused(&t.install(&small, &bad, &["--yes"], &[]), 2, "bad2.toml:5");
    // no --yes and no terminal to confirm on
    let big = blank(&t, "big.img", 6 * GIB);
    let fpb = fingerprint(&big).unwrap();
    assert_refused(&t.install(&big, &whole, &[], &[]), 2, "no terminal");
    // no system image for a real install
    let o = t.rayos(
        &[
            "--target",
            big.to_str().unwrap(),
            "--answers",
            whole.to_str().unwrap(),
            "--yes",
        ],
        &[],
    );
    assert_refused(&o, 2, "--system-image");
    // a system image that is not a file: caught before the first write
    let o = t.rayos(
        &[
            "--target",
            big.to_str().unwrap(),
            "--answers",
            whole.to_str().unwrap(),
            "--yes",
            "--system-image",
            t.dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_refused(&o, 1, "not a regular file");
    // a missing target
    assert_refused(
        &t.install(&t.path("nope.img"), &whole, &["--yes"], &[]),
        4,
        "does not exist",
    );
    // the installer's own medium (an ISO 9660 image labelled RAYOS_INSTALL)
    let medium = t.path("medium.img");
    let tree = t.path("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("hello"), "hi").unwrap();
    run(
        "xorriso",
        &[
            "-as",
            "mkisofs",
            "-quiet",
            "-o",
            medium.to_str().unwrap(),
            "-V",
            "RAYOS_INSTALL",
            tree.to_str().unwrap(),
        ],
    )
    .unwrap();
    let fpm = fingerprint(&medium).unwrap();
    let o = t.install(&medium, &whole, &["--yes"], &[]);
    assert_refused(&o, 2, "medium this installer runs from");
    // a reuse of another system's partition without consent
    let win = t.path("win.img");
    let fxw = DiskBuilder::windows_and_linux(4 * GIB).build(&win).unwrap();
    let fpw = fingerprint(&win).unwrap();
    let reuse = t.file(
        "reuse.toml",
        "version = 1\n[target]\nmode = \"reuse\"\nsystem = 4\ndata = 3\n",
    );
    let o = t.install(&win, &reuse, &["--yes"], &[]);
    assert_refused(&o, 2, "list it in [target] format");
    drop(fxw);

    assert_eq!(fingerprint(&small).unwrap(), fp);
    assert_eq!(fingerprint(&big).unwrap(), fpb);
    assert_eq!(fingerprint(&medium).unwrap(), fpm);
    assert_eq!(fingerprint(&win).unwrap(), fpw);
}

/// Issue #10 item 4: in reuse mode, partitions of systems the planner has
/// no name for (APFS, FreeBSD ZFS, a made-up type) holding any data are
/// formatted only with consent, like Windows' and Linux'. Partitions read
/// to be all zeros need none, and every other partition keeps its bytes.
#[test]
fn reuse_needs_consent_for_partitions_of_unknown_systems() {
    let t = T::new();
    let img = t.path("others.img");
    let header = |code: &str| disks::Content::Header {
        type_code: code.into(),
    };
    let empty = |code: &str| disks::Content::Empty {
        type_code: code.into(),
    };
    let fx = DiskBuilder::new(6 * GIB)
        .partition(
            0,
            100 * disks::MIB,
            "EFI system partition",
            disks::Content::Esp { files: Vec::new() },
        )
        .partition(0, 600 * disks::MIB, "Macintosh HD", header("af0a"))
        .partition(0, 1100 * disks::MIB, "zroot", header("a504"))
        .partition(
            0,
            600 * disks::MIB,
            "who knows",
            header("12345678-1234-5678-9abc-def012345678"),
        )
        .partition(0, 1100 * disks::MIB, "empty ufs", empty("a503"))
        .partition(
            0,
            600 * disks::MIB,
            "empty",
            empty("12345678-1234-5678-9abc-def012345678"),
        )
        .build(&img)
        .unwrap();
    let fp = fingerprint(&img).unwrap();
    for (system, data, who) in [(2, 5, 2), (6, 3, 3), (4, 5, 4)] {
        let a = t.file(
            "unknown.toml",
            &format!("version = 1\n[target]\nmode = \"reuse\"\nsystem = {system}\ndata = {data}\n"),
        );
        let o = t.install(&img, &a, &["--yes"], &[]);
        assert_refused(&o, 2, "list it in [target] format");
        let e = stderr(&o);
        assert!(
            e.contains(&format!("partition {who} of")) && e.contains("not all zeros"),
            "{e}"
        );
        assert_eq!(
            fingerprint(&img).unwrap(),
            fp,
            "a refusal wrote to the disk"
        );
    }
    // All zeros: nothing to lose, no consent; the others keep every byte.
    let others: Vec<String> = [1, 2, 3, 4]
        .iter()
        .map(|n| fx.partition_hash(*n).unwrap())
        .collect();
    let a = t.file(
        "zeros.toml",
        "version = 1\n[target]\nmode = \"reuse\"\nsystem = 6\ndata = 5\n[machine]\nhostname = \"rayos-test\"\n",
    );
    let o = t.install(&img, &a, &["--yes"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let now: Vec<String> = [2, 3, 4]
        .iter()
        .map(|n| fx.partition_hash(*n).unwrap())
        .collect();
    assert_eq!(now, others[1..], "a partition outside the plan changed");
    check_complete(&img, None);
}

/// Issue #10 item 3: a hybrid MBR (Boot Camp style, `sgdisk -h`) gives a
/// legacy BIOS its view of some GPT partitions. An install beside them
/// keeps it byte for byte (it was silently replaced by a protective MBR, and
/// such a system stopped booting); a plan that would change a partition it
/// names is refused with the way out; whole-disk replaces it and says so.
#[test]
fn a_hybrid_mbr_is_kept_or_the_install_refused() {
    let t = T::new();
    let img = t.path("hybrid.img");
    let fx = DiskBuilder::new(8 * GIB)
        .partition(
            0,
            100 * disks::MIB,
            "EFI system partition",
            disks::Content::Esp { files: Vec::new() },
        )
        .partition(
            0,
            1100 * disks::MIB,
            "BOOTCAMP",
            disks::Content::Header {
                type_code: "0700".into(),
            },
        )
        .partition(
            0,
            600 * disks::MIB,
            "linux",
            disks::Content::Header {
                type_code: "8300".into(),
            },
        )
        .build(&img)
        .unwrap();
    run("sgdisk", &["-h", "2:3", img.to_str().unwrap()]).unwrap();
    let lba0 = disks::read_at(&img, 0, 512).unwrap();
    assert_eq!(
        lba0[446 + 4],
        0xEE,
        "sgdisk -h puts the protective entry first"
    );
    assert_eq!((lba0[446 + 16 + 4], lba0[446 + 32 + 4]), (0x07, 0x83));
    let fp = fingerprint(&img).unwrap();

    // Formatting a partition the hybrid MBR names: refused, nothing written.
    let reuse = t.file(
        "hybrid-reuse.toml",
        "version = 1\n[target]\nmode = \"reuse\"\nsystem = 3\ndata = 2\nformat = [2, 3]\n",
    );
    let o = t.install(&img, &reuse, &["--yes"], &[]);
    assert_refused(&o, 2, "hybrid MBR");
    let e = stderr(&o);
    assert!(e.contains("partition 2") && e.contains("gdisk"), "{e}");
    assert_eq!(
        fingerprint(&img).unwrap(),
        fp,
        "a refusal wrote to the disk"
    );

    // Whole disk replaces it, and the plan says so.
    let whole = t.file(
        "hybrid-whole.toml",
        "version = 1\n[target]\nmode = \"whole-disk\"\n",
    );
    let o = t.install(&img, &whole, &["--dry-run"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("hybrid MBR") && text.contains("legacy BIOS"),
        "{text}"
    );

    // Beside them (free space): the hybrid MBR stays byte for byte.
    let before: Vec<String> = [1, 2, 3]
        .iter()
        .map(|n| fx.partition_hash(*n).unwrap())
        .collect();
    let free = t.file(
        "hybrid-free.toml",
        "version = 1\n[target]\nmode = \"free-space\"\n[machine]\nhostname = \"rayos-test\"\n",
    );
    let o = t.install(&img, &free, &["--yes"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("hybrid MBR is kept"), "{}", stderr(&o));
    assert_eq!(
        disks::read_at(&img, 0, 512).unwrap(),
        lba0,
        "the hybrid MBR was replaced"
    );
    let now: Vec<String> = [2, 3]
        .iter()
        .map(|n| fx.partition_hash(*n).unwrap())
        .collect();
    assert_eq!(now, before[1..], "a partition outside the plan changed");
    check_complete(&img, None);
    let d = rayos_disk::probe_image(&img, None).unwrap();
    assert_eq!(d.hybrid_mbr.len(), 2, "{:?}", d.hybrid_mbr);
}

/// A reuse-mode disk whose ESP (partition 1, 100 MiB) holds a FAT made for
/// 200 MiB, as an ESP shrunk without its filesystem has: mkfs.fat over the
/// larger region, files filling the first 100 MiB, then the entry shrunk
/// with sgdisk and the freed space given to partition 4, full of random
/// bytes. Partitions 2 and 3 are the system and data candidates.
fn esp_larger_than_its_partition(t: &T) -> PathBuf {
    let img = t.path("shrunk-esp.img");
    DiskBuilder::new(6 * GIB)
        .partition(
            0,
            200 * disks::MIB,
            "EFI system partition",
            disks::Content::Esp {
                // Fills the data area inside the first 100 MiB (the FATs
                // of a 200 MiB FAT32 with 512-byte clusters take 3.1 MiB),
                // so the clusters mtools allocates next lie in partition 4:
                // the old installer overwrote them there.
                files: vec![(
                    "/EFI/vendor/big.bin".into(),
                    disks::pseudo_random(11, (100 << 20) - (3400 << 10)),
                )],
            },
        )
        .partition(
            0,
            600 * disks::MIB,
            "system",
            disks::Content::Header {
                type_code: "8300".into(),
            },
        )
        .partition(
            0,
            1100 * disks::MIB,
            "data",
            disks::Content::Header {
                type_code: "8300".into(),
            },
        )
        .build(&img)
        .unwrap();
    let p = img.to_str().unwrap();
    run(
        "sgdisk",
        &["-d", "1", "-n", "1:2048:206847", "-t", "1:ef00", p],
    )
    .unwrap();
    run("sgdisk", &["-n", "4:206848:411647", "-t", "4:8300", p]).unwrap();
    disks::write_at(&img, 206848 * 512, &disks::pseudo_random(12, 100 << 20)).unwrap();
    img
}

const REUSE_2_3: &str =
    "version = 1\n[target]\nmode = \"reuse\"\nsystem = 2\ndata = 3\nformat = [2, 3]\n";

/// Issue #10 item 2: an ESP whose FAT claims more sectors than its
/// partition is refused before anything is written (mtools used to write
/// RayOS's files through `disk@@offset` into the next partition, after the
/// table had been rewritten and two filesystems formatted).
#[test]
fn an_esp_larger_than_its_partition_is_refused_before_any_write() {
    let t = T::new();
    let img = esp_larger_than_its_partition(&t);
    let fp = fingerprint(&img).unwrap();
    let a = t.file("reuse.toml", REUSE_2_3);
    let o = t.install(&img, &a, &["--yes"], &[]);
    assert_refused(&o, 2, "partition 1");
    let e = stderr(&o);
    assert!(
        e.contains("larger than its partition") || e.contains("claims"),
        "{e}"
    );
    assert!(e.contains("repair") && e.contains("choose another"), "{e}");
    assert!(!e.contains(Kind::EngineStep.prefix()), "a step ran: {e}");
    assert_eq!(fingerprint(&img).unwrap(), fp, "the disk changed");
}

/// Issue #10 item 2: a FAT that fsck.fat -n (run on exactly the
/// partition's bytes) finds damaged — here its two FATs differ — is
/// refused before anything is written too.
#[test]
fn a_damaged_esp_is_refused_before_any_write() {
    let t = T::new();
    let img = t.path("damaged-esp.img");
    let fx = DiskBuilder::windows_and_linux(6 * GIB).build(&img).unwrap();
    // The ESP's second FAT: after the reserved sectors and the first FAT.
    let esp = fx.partitions[0].start_bytes();
    let boot = disks::read_at(&img, esp, 512).unwrap();
    let reserved = u16::from_le_bytes([boot[14], boot[15]]) as u64;
    let fat = u32::from_le_bytes(boot[36..40].try_into().unwrap()) as u64;
    disks::write_at(&img, esp + (reserved + fat) * 512 + 12, &[7, 0, 0, 0]).unwrap();
    let fp = fingerprint(&img).unwrap();
    let a = t.file(
        "free.toml",
        "version = 1\n[target]\nmode = \"free-space\"\n",
    );
    let o = t.install(&img, &a, &["--yes"], &[]);
    assert_refused(&o, 2, "fsck.fat");
    let e = stderr(&o);
    assert!(
        e.contains("FATs differ") && e.contains("partition 1"),
        "{e}"
    );
    assert!(!e.contains(Kind::EngineStep.prefix()), "a step ran: {e}");
    assert_eq!(fingerprint(&img).unwrap(), fp, "the disk changed");
}

/// Kill the installer after each step (a power cut as far as the disk is
/// concerned), re-run it with the same answers, and it finishes, with the
/// other systems' partitions untouched.
#[test]
fn killed_after_any_step_rerun_finishes() {
    let t = T::new();
    let fixture_img = t.path("fixture.img");
    let fixture = DiskBuilder::windows_and_linux(4 * GIB)
        .build(&fixture_img)
        .unwrap();
    let before: Vec<String> = (2..=4)
        .map(|n| fixture.partition_hash(n).unwrap())
        .collect();
    let answers = t.file(
        "answers.toml",
        &ISSUE_EXAMPLE
            .replace("system = \"2GiB\"", "system = \"1GiB\"")
            .replace("disk = \"/dev/vda\"\n", ""),
    );
    // Blank disk too: covers the ESP RayOS creates (format-esp).
    let blank_answers = t.file(
        "blank.toml",
        &ISSUE_EXAMPLE.replace("disk = \"/dev/vda\"\n", ""),
    );
    let cases: [(&str, &Path, Option<&DiskImage>); 2] = [
        ("windows", &answers, Some(&fixture)),
        ("blank", &blank_answers, None),
    ];
    for (what, answers, fx) in cases {
        let steps = [
            "partition",
            "format-esp",
            "format-system",
            "format-data",
            "esp-files",
            "system-files",
            "manifest",
        ];
        for step in steps {
            if fx.is_some() && step == "format-esp" {
                continue; // Windows' ESP is reused, never formatted
            }
            let img = t.path("work.img");
            let _ = std::fs::remove_file(&img);
            match fx {
                Some(_) => {
                    run(
                        "cp",
                        &[
                            "--sparse=always",
                            fixture_img.to_str().unwrap(),
                            img.to_str().unwrap(),
                        ],
                    )
                    .unwrap();
                }
                None => {
                    std::fs::File::create(&img)
                        .unwrap()
                        .set_len(6 * GIB)
                        .unwrap();
                }
            }
            let o = t.install(
                &img,
                answers,
                &["--yes"],
                &[("RAYOS_INSTALL_FAIL_AFTER", step)],
            );
            let e = stderr(&o);
            assert!(
                !o.status.success(),
                "{what}/{step}: the hook did not stop it: {e}"
            );
            assert!(
                e.contains(&format!("{}{step} (", Kind::EngineAbortedAfter.prefix())),
                "{what}/{step}: {e}"
            );
            assert!(!e.contains(&engine(I::EngineComplete)), "{e}");
            // What the killed run left is checked by the re-run's planner;
            // the other systems must already be intact.
            if let Some(f) = fx {
                let mid = DiskImage {
                    path: img.clone(),
                    ..f.clone()
                };
                let now: Vec<String> = (2..=4).map(|n| mid.partition_hash(n).unwrap()).collect();
                assert_eq!(
                    now, before,
                    "{what}/{step}: killed run touched another system"
                );
            }
            let o = t.install(&img, answers, &["--yes"], &[]);
            let e = stderr(&o);
            if step == "manifest" {
                // The manifest was written: the install is complete and is
                // not redone without reinstall = true.
                assert_refused(&o, 2, "complete RayOS install");
            } else {
                assert!(o.status.success(), "{what}/{step}: re-run failed: {e}");
                assert!(e.contains("unfinished RayOS install"), "{what}/{step}: {e}");
            }
            let fxw = fx.map(|f| DiskImage {
                path: img.clone(),
                ..f.clone()
            });
            check_complete(&img, fxw.as_ref().map(|f| (f, &before[..])));
        }
    }
}

/// The block-device path (O_EXCL open, `mkfs.fat -I`, BLKRRPART) on a loop
/// device; and the image file behind it counts as in use.
#[test]
fn installs_onto_a_block_device_and_refuses_its_busy_backing_file() {
    let t = T::new();
    let img = blank(&t, "loop.img", 6 * GIB);
    let dev = LoopDevice::attach(&img, &[]);
    let answers = t.file(
        "answers.toml",
        &ISSUE_EXAMPLE.replace("mode = \"free-space\"", "mode = \"whole-disk\""),
    );

    let fp = fingerprint(&img).unwrap();
    let o = t.install(&img, &answers, &["--yes"], &[]);
    assert_refused(&o, 2, "in use");
    assert!(stderr(&o).contains(dev.path()), "{}", stderr(&o));
    assert_eq!(fingerprint(&img).unwrap(), fp);

    let o = t.install(
        Path::new(&dev.path()),
        &answers,
        &["--yes", "--no-nvram"],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    drop(dev);
    check_complete(&img, None);
}

/// Without --yes, on a terminal, the disk's path must be typed back.
/// `script` (util-linux) gives the installer a pseudo-terminal.
#[test]
fn confirmation_on_a_terminal_needs_the_disk_path() {
    let t = T::new();
    let img = blank(&t, "confirm.img", 6 * GIB);
    let answers = t.file("c.toml", "version = 1\n[target]\nmode = \"whole-disk\"\n");
    let fp = fingerprint(&img).unwrap();
    let typed = |text: &str| -> Output {
        let cmd = format!(
            "{} install --target {} --answers {} --system-image {}",
            env!("CARGO_BIN_EXE_rayos"),
            img.display(),
            answers.display(),
            t.uki().display()
        );
        let feeder = format!("sleep 1; printf '%s\\n' '{text}'");
        Command::new("sh")
            .args([
                "-c",
                &format!("({feeder}) | script -qec \"{cmd}\" /dev/null"),
            ])
            .env("TMPDIR", t.dir.path())
            .output()
            .expect("cannot run script (util-linux)")
    };
    let o = typed("/dev/sda");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("Type its path to go on") && out.contains("not confirmed"),
        "{out}"
    );
    assert_eq!(
        fingerprint(&img).unwrap(),
        fp,
        "written without confirmation"
    );
    let o = typed(img.to_str().unwrap());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(out.contains(&engine(I::EngineComplete)), "{out}");
    let disk = rayos_disk::probe_image(&img, None).unwrap();
    assert!(disk.rayos.is_some());
}
