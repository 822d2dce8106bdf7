//! `rayos wizard` driven as a person would: the real binary in an 80x24
//! tmux pane (its own tmux server per test), keystrokes sent with
//! `send-keys`, the screen read with `capture-pane`, against disk image
//! files built with sgdisk/mkfs (rayos-testkit). After each install the
//! image is checked with `sgdisk -v`, `rayos disks --json`, debugfs/mtools
//! and sha256 of the partitions that must keep their bytes. Every wait is
//! bounded; a timeout fails with the last screen.
//!
//! Needs tmux, gdisk, dosfstools, mtools, e2fsprogs, xorriso and
//! systemd-boot-efi (scripts/install-deps.sh).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rayos_base::marker::{InstallerMarker, Marker, WizardAfter, WizardMarker};
use rayos_install::answers::{Answers, Mode};
use rayos_testkit::disks::{DiskBuilder, MIB, fingerprint, pseudo_random, run, sha256_file};
use serde_json::Value;

const GIB: u64 = 1024 * MIB;

/// One tmux server (own socket) running one `rayos wizard`.
struct Tmux {
    sock: PathBuf,
    dir: PathBuf,
}

impl Tmux {
    /// Runs `prefix` (shell) and then `rayos wizard args...` in the pane.
    fn start(dir: &Path, prefix: &str, args: &[String]) -> Tmux {
        Tmux::start_sub(dir, prefix, "wizard", args)
    }

    /// Runs `prefix` (shell) and then `rayos <sub> args...` in the pane.
    fn start_sub(dir: &Path, prefix: &str, sub: &str, args: &[String]) -> Tmux {
        let script = dir.join("run.sh");
        let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n{prefix}\n'{}' {sub} {} 2>'{d}/stderr'\necho $? > '{d}/rc.tmp'\nmv '{d}/rc.tmp' '{d}/rc'\n",
                env!("CARGO_BIN_EXE_rayos"),
                quoted.join(" "),
                d = dir.display()
            ),
        )
        .unwrap();
        let t = Tmux {
            sock: dir.join("tmux.sock"),
            dir: dir.to_path_buf(),
        };
        let out = t
            .tmux(&["new-session", "-d", "-s", "w", "-x", "80", "-y", "24"])
            .arg("sh")
            .arg(&script)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run tmux ({e}): install it (scripts/install-deps.sh)")
            });
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn tmux(&self, args: &[&str]) -> Command {
        let mut c = Command::new("tmux");
        // Our own server even when the tests run inside tmux.
        c.env("TERM", "xterm")
            .env_remove("TMUX")
            .arg("-S")
            .arg(&self.sock)
            .args(args);
        c
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "w"];
        args.extend_from_slice(keys);
        assert!(
            self.tmux(&args).status().unwrap().success(),
            "send-keys {keys:?}"
        );
    }

    fn text(&self, s: &str) {
        assert!(
            self.tmux(&["send-keys", "-t", "w", "-l", s])
                .status()
                .unwrap()
                .success()
        );
    }

    fn screen(&self) -> String {
        let out = self
            .tmux(&["capture-pane", "-p", "-t", "w"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen shows `needle`.
    fn wait_for(&self, needle: &str, secs: u64) -> String {
        let t0 = Instant::now();
        loop {
            let s = self.screen();
            if s.contains(needle) {
                return s;
            }
            if t0.elapsed() > Duration::from_secs(secs) {
                let err = std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default();
                panic!(
                    "timed out after {secs}s waiting for {needle:?}; screen:\n{s}\nstderr:\n{err}"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends keys, then waits for the screen that must follow.
    fn step(&self, keys: &[&str], then: &str) -> String {
        self.keys(keys);
        self.wait_for(then, 20)
    }

    /// Waits for the wizard to exit; its exit code and stderr.
    fn exit(&self, secs: u64) -> (i32, String) {
        let t0 = Instant::now();
        let rc = self.dir.join("rc");
        while !rc.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "the wizard did not exit within {secs}s; screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let code = std::fs::read_to_string(&rc)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let err = std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default();
        (code, err)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]).output();
    }
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        assert!(
            Path::new(rayos_install::plan::SYSTEMD_BOOT_HOST).is_file(),
            "systemd-boot-efi is not installed (scripts/install-deps.sh)"
        );
        let e = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(e.path("rayos.efi"), pseudo_random(11, 1 << 20)).unwrap();
        e
    }
    fn path(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }
    fn p(&self, n: &str) -> String {
        self.path(n).display().to_string()
    }
    /// `rayos wizard` on `disks`, saving answers to answers.toml.
    fn wizard(&self, disks: &[&str]) -> Tmux {
        self.wizard_with(disks, &[])
    }
    fn wizard_with(&self, disks: &[&str], extra: &[String]) -> Tmux {
        self.wizard_sh("", disks, extra)
    }
    fn wizard_sh(&self, prefix: &str, disks: &[&str], extra: &[String]) -> Tmux {
        let mut args = extra.to_vec();
        for d in disks {
            args.push("--disk".to_string());
            args.push(self.p(d));
        }
        args.extend([
            "--system-image".into(),
            self.p("rayos.efi"),
            "--save-answers".into(),
            self.p("answers.toml"),
            "--no-nvram".into(),
        ]);
        Tmux::start(self.dir.path(), prefix, &args)
    }
    fn answers(&self) -> Answers {
        let text = std::fs::read_to_string(self.path("answers.toml")).unwrap();
        Answers::parse("answers.toml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }
}

/// A marker of the wizard, as `rayos wizard` prints it.
fn wizard(m: WizardMarker) -> String {
    Marker::Wizard(m).to_string()
}

fn disks_json(img: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_rayos"))
        .args(["disks", "--json", "--disk", &img.display().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    match v {
        Value::Array(mut a) => a.remove(0),
        Value::Object(ref o) if o.contains_key("disks") => v["disks"][0].clone(),
        other => other,
    }
}

fn sgdisk_ok(img: &Path) {
    let out = run("sgdisk", &["-v", &img.display().to_string()]).unwrap();
    assert!(out.contains("No problems found"), "sgdisk -v:\n{out}");
}

/// Confirms on the Summary and waits for the end of the install.
fn install(t: &Tmux, name: &str) {
    t.text(name);
    t.keys(&["Enter"]);
    t.wait_for("RayOS is installed", 180);
    t.keys(&["e"]);
}

/// Welcome → Disk → Partitions (first disk that can be chosen).
fn to_partitions(t: &Tmux) -> String {
    t.wait_for("step 1/8: Welcome", 30);
    t.step(&["Enter"], "step 2/8: Disk");
    t.step(&["Enter"], "step 3/8: Partitions")
}

/// Partitions → VM storage → Machine → Policy → Summary.
fn to_summary(t: &Tmux) -> String {
    t.step(&["Enter"], "step 4/8: VM storage");
    t.step(&["Enter"], "step 5/8: Machine");
    t.step(&["Enter"], "step 6/8: Policy");
    t.step(&["Enter"], "step 7/8: Summary")
}

#[test]
fn whole_disk_install_erases_windows_and_seeds_the_machine() {
    let env = Env::new();
    DiskBuilder::windows_and_linux(6 * GIB)
        .build(&env.path("disk.img"))
        .unwrap();
    let t = env.wizard(&["disk.img"]);
    to_partitions(&t);
    t.step(&["w"], "Type \"erase\" to confirm");
    t.text("erase");
    t.step(&["Enter"], "WHOLE DISK");
    t.step(&["Enter"], "step 4/8: VM storage");
    t.step(&["Enter"], "step 5/8: Machine");
    // Hostname: replace "rayos".
    t.keys(&["BSpace", "BSpace", "BSpace", "BSpace", "BSpace"]);
    t.text("tty-test");
    t.wait_for("[tty-test_]", 10);
    t.step(&["Enter"], "step 6/8: Policy");
    let s = t.step(&["Enter"], "step 7/8: Summary");
    assert!(s.contains("NEW partition table"), "{s}");
    assert!(s.contains("ERASED: all 4 partitions"), "{s}");
    install(&t, "disk.img");
    let (rc, err) = t.exit(30);
    assert_eq!(rc, 0, "{err}");
    assert!(
        err.contains(&wizard(WizardMarker::Installed {
            after: WizardAfter::Exit
        })),
        "{err}"
    );

    let img = env.path("disk.img");
    sgdisk_ok(&img);
    let d = disks_json(&img);
    assert_eq!(d["partitions"].as_array().unwrap().len(), 3, "{d:#}");
    let systems = d["systems"].as_array().unwrap();
    assert!(
        systems.iter().all(|s| s["kind"] == "esp"),
        "Windows/Linux survived: {d:#}"
    );
    let data_n = d["rayos"]["data"]
        .as_u64()
        .expect("no RayOS data partition");
    let data = d["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["number"].as_u64() == Some(data_n))
        .unwrap();
    let fs = format!("{}?offset={}", img.display(), data["start_bytes"]);
    let machine = rayos_state::DataLayout::new("/").machine();
    let toml = run(
        "debugfs",
        &["-R", &format!("cat {}", machine.display()), &fs],
    )
    .unwrap();
    assert!(toml.contains("hostname = \"tty-test\""), "{toml}");

    let a = env.answers();
    assert_eq!(a.target.mode, Mode::WholeDisk);
    assert_eq!(a.machine.hostname, "tty-test");
    assert_eq!(a.target.disk.as_deref(), Some(img.as_path()));
}

#[test]
fn free_space_beside_windows_keeps_every_other_byte() {
    let env = Env::new();
    let img = env.path("win.img");
    let fixture = DiskBuilder::windows_and_linux(8 * GIB).build(&img).unwrap();
    let before = fixture.partition_hashes().unwrap();
    let t = env.wizard(&["win.img"]);
    to_partitions(&t);
    t.step(&["Down", "Down", "Down", "Down"], ">-     309 MiB");
    t.step(&["i"], "new system");
    let s = to_summary(&t);
    assert!(s.contains("Not touched: partition 2, 3, 4"), "{s}");
    assert!(s.contains("add to  #1"), "{s}");
    install(&t, "win.img");
    let (rc, err) = t.exit(30);
    assert_eq!(rc, 0, "{err}");

    sgdisk_ok(&img);
    for (n, h) in &before[1..] {
        assert_eq!(
            &fixture.partition_hash(*n).unwrap(),
            h,
            "partition {n} changed"
        );
    }
    // The ESP was added to, not formatted: Windows' loader is still there.
    let esp = &fixture.partitions[0];
    let out = Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args([
            "-i",
            &format!("{}@@{}", img.display(), esp.start_bytes()),
            "::/EFI/BOOT/BOOTX64.EFI",
        ])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"windows fallback loader");
    let d = disks_json(&img);
    assert!(d["rayos"]["system"].is_u64(), "{d:#}");
    let kinds: Vec<&str> = d["systems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"windows") && kinds.contains(&"linux"),
        "{kinds:?}"
    );
    assert_eq!(env.answers().target.mode, Mode::FreeSpace);
}

#[test]
fn creating_deleting_and_going_back_then_installing() {
    let env = Env::new();
    let img = env.path("edit.img");
    let fixture = DiskBuilder::windows_and_linux(8 * GIB).build(&img).unwrap();
    let before = fixture.partition_hashes().unwrap();
    let t = env.wizard(&["edit.img"]);
    to_partitions(&t);
    // Delete the Linux partition (typed name).
    t.step(
        &["Down", "Down", "Down", "d"],
        "Type \"linux-root\" to confirm",
    );
    t.text("linux-root");
    t.step(&["Enter"], "to be DELETED: 4");
    // The cursor is now on the free region where it was: a 3 GiB data
    // partition, then a system partition that is undone and made again.
    t.step(&["n"], "New partition");
    t.text("3GiB");
    t.step(&["Enter"], "Role of the new partition");
    t.step(&["Down", "Down", "Enter"], "new data");
    t.step(&["Down", "n"], "New partition");
    t.text("1GiB");
    t.step(&["Enter"], "Role of the new partition");
    t.step(&["Down", "Enter"], "new system");
    t.step(&["u"], "undone");
    assert!(!t.screen().contains("new system"));
    t.step(&["n"], "New partition");
    t.text("2GiB");
    t.step(&["Enter"], "Role of the new partition");
    let s = t.step(&["Down", "Enter"], "new system");
    assert!(s.contains("5     245 MiB     3 GiB  (new)"), "{s}");
    // Back to the disk list and forth: the edits stay.
    t.step(&["Escape"], "step 2/8: Disk");
    let s = t.step(&["Enter"], "step 3/8: Partitions");
    assert!(
        s.contains("to be DELETED: 4") && s.contains("new system"),
        "{s}"
    );
    t.step(&["Enter"], "step 4/8: VM storage");
    t.step(&["Escape"], "step 3/8: Partitions");
    let s = to_summary(&t);
    assert!(s.contains("DELETE  #4"), "{s}");
    assert!(s.contains("create  #5       3 GiB"), "{s}");
    install(&t, "edit.img");
    let (rc, err) = t.exit(30);
    assert_eq!(rc, 0, "{err}");

    sgdisk_ok(&img);
    for (n, h) in &before[1..3] {
        assert_eq!(
            &fixture.partition_hash(*n).unwrap(),
            h,
            "partition {n} changed"
        );
    }
    let d = disks_json(&img);
    let nums: Vec<u64> = d["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["number"].as_u64())
        .collect();
    assert!(!nums.contains(&4), "partition 4 still there: {nums:?}");
    assert_eq!(d["rayos"]["data"].as_u64(), Some(5), "{d:#}");
    let saved = std::fs::read_to_string(env.path("answers.toml")).unwrap();
    assert!(saved.contains("#   - delete partition 4"), "{saved}");
    assert_eq!(env.answers().target.mode, Mode::Reuse);
}

#[test]
fn boot_medium_is_refused_and_a_typo_writes_nothing() {
    let env = Env::new();
    // The installer's own medium: an ISO labelled RAYOS_INSTALL.
    let tree = env.path("iso-tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("README"), "RayOS installer").unwrap();
    run(
        "xorriso",
        &[
            "-as",
            "mkisofs",
            "-quiet",
            "-V",
            "RAYOS_INSTALL",
            "-o",
            &env.p("medium.iso"),
            &tree.display().to_string(),
        ],
    )
    .unwrap();
    let img = env.path("win.img");
    DiskBuilder::windows_and_linux(8 * GIB).build(&img).unwrap();
    let iso_before = sha256_file(&env.path("medium.iso")).unwrap();
    let img_before = fingerprint(&img).unwrap();

    let t = env.wizard(&["medium.iso", "win.img"]);
    t.wait_for("step 1/8: Welcome", 30);
    let s = t.step(&["Enter"], "step 2/8: Disk");
    assert!(s.contains("installer medium"), "{s}");
    // The cursor starts on the usable disk; the medium cannot be chosen.
    let s = t.step(&["Up", "Enter"], "cannot be chosen");
    assert!(s.contains("step 2/8: Disk"), "{s}");
    t.step(&["Down", "Enter"], "step 3/8: Partitions");
    t.step(&["Down", "Down", "Down", "Down", "i"], "new system");
    to_summary(&t);
    t.text("win.im");
    let s = t.step(&["Enter"], "nothing was written");
    assert!(s.contains("step 7/8: Summary"), "{s}");
    t.keys(&["C-c"]);
    let (rc, err) = t.exit(30);
    assert_eq!(rc, 5, "{err}");
    assert!(err.contains(&wizard(WizardMarker::Cancelled)), "{err}");
    assert_eq!(sha256_file(&env.path("medium.iso")).unwrap(), iso_before);
    assert_eq!(
        fingerprint(&img).unwrap(),
        img_before,
        "the image was written"
    );
    assert!(!env.path("answers.toml").exists());
}

#[test]
fn a_failed_step_is_retried_and_the_install_finishes() {
    let env = Env::new();
    let img = env.path("blank.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(6 * GIB)
        .unwrap();
    // mkfs.ext4 fails (a wrapper first in PATH) until the test "fixes" it:
    // the install fails at format-data, after the table and the FAT
    // filesystems were written.
    let real = run("sh", &["-c", "command -v mkfs.ext4"]).unwrap();
    let bin = env.path("bin");
    std::fs::create_dir(&bin).unwrap();
    let fixed = env.path("fixed");
    std::fs::write(
        bin.join("mkfs.ext4"),
        format!(
            "#!/bin/sh\nif [ -e '{}' ]; then exec '{}' \"$@\"; fi\necho 'mkfs.ext4: simulated failure' >&2\nexit 1\n",
            fixed.display(),
            real.trim()
        ),
    )
    .unwrap();
    run(
        "chmod",
        &["+x", &bin.join("mkfs.ext4").display().to_string()],
    )
    .unwrap();
    let t = env.wizard_sh(
        &format!("export PATH='{}':\"$PATH\"", bin.display()),
        &["blank.img"],
        &[],
    );
    to_partitions(&t);
    t.step(&["i"], "new system");
    to_summary(&t);
    t.text("blank.img");
    t.keys(&["Enter"]);
    let s = t.wait_for("FAILED at step", 120);
    assert!(s.contains("FAILED at step format-data"), "{s}");
    assert!(s.contains("simulated failure"), "{s}");
    assert!(
        s.contains("Done before the failure: partition, format-esp, format-system"),
        "{s}"
    );
    assert!(s.contains("r: retry"), "{s}");
    // Fix the cause, then retry: the engine plans again from the disk as
    // it is now (an unfinished install) and finishes the job.
    std::fs::write(&fixed, "").unwrap();
    t.keys(&["r"]);
    t.wait_for("RayOS is installed", 180);
    t.keys(&["p"]);
    let (rc, err) = t.exit(30);
    assert_eq!(rc, 0, "{err}");
    assert!(
        err.contains(&wizard(WizardMarker::Installed {
            after: WizardAfter::PowerOff
        })),
        "{err}"
    );
    sgdisk_ok(&img);
    let d = disks_json(&img);
    let esp_n = d["rayos"]["esp"].as_u64().expect("no ESP");
    let esp = d["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["number"].as_u64() == Some(esp_n))
        .unwrap()
        .clone();
    let out = Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args([
            "-i",
            &format!("{}@@{}", img.display(), esp["start_bytes"]),
            "::/EFI/systemd/systemd-bootx64.efi",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.stdout,
        std::fs::read(rayos_install::plan::SYSTEMD_BOOT_HOST).unwrap(),
        "systemd-boot on the ESP differs"
    );
    assert_eq!(d["partitions"].as_array().unwrap().len(), 3, "{d:#}");
}

#[test]
fn dry_run_saves_answers_that_rayos_install_plans_the_same_way() {
    let env = Env::new();
    let img = env.path("win.img");
    DiskBuilder::windows_and_linux(8 * GIB).build(&img).unwrap();
    let before = fingerprint(&img).unwrap();
    let t = env.wizard_with(&["win.img"], &["--dry-run".into()]);
    to_partitions(&t);
    t.step(&["Down", "Down", "Down", "Down", "i"], "new system");
    t.step(&["Enter"], "step 4/8: VM storage");
    t.step(&["Enter"], "step 5/8: Machine");
    t.step(
        &["Down", "Down", "Down", "BSpace", "BSpace"],
        "Keyboard layout  [_]",
    );
    t.text("de");
    t.step(&["Enter"], "step 6/8: Policy");
    let s = t.step(&["Enter"], "step 7/8: Summary");
    assert!(s.contains("Dry run"), "{s}");
    // "  create  #5       2 GiB  RayOS system ..." -> "#5 2 GiB"
    let created: Vec<String> = s
        .lines()
        .filter(|l| l.contains("create  #"))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    assert_eq!(created.len(), 2, "{s}");
    t.text("win.img");
    t.keys(&["Enter"]);
    let (rc, err) = t.exit(30);
    assert_eq!(rc, 0, "{err}");
    assert!(err.contains(&wizard(WizardMarker::DryRun)), "{err}");
    assert_eq!(
        fingerprint(&img).unwrap(),
        before,
        "a dry run wrote to the image"
    );

    // The saved answers give the engine the same plan, unattended.
    let a = env.answers();
    assert_eq!(a.machine.keyboard, "de");
    let out = Command::new(env!("CARGO_BIN_EXE_rayos"))
        .args([
            "install",
            "--answers",
            &env.p("answers.toml"),
            "--dry-run",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let engine: Vec<String> = plan["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["action"] == "create")
        .map(|p| {
            format!(
                "#{} {}",
                p["number"],
                rayos_install::answers::human_size(p["size_bytes"].as_u64().unwrap())
            )
        })
        .collect();
    assert_eq!(engine, created);
    assert_eq!(plan["machine"]["keyboard"], "de");
    assert_eq!(plan["mode"], "free-space");
}

#[test]
fn a_serial_console_without_a_size_gets_80x24() {
    let env = Env::new();
    std::fs::File::create(env.path("blank.img"))
        .unwrap()
        .set_len(6 * GIB)
        .unwrap();
    // A serial console nobody ran stty on reports 0x0.
    let t = env.wizard_sh("stty rows 0 cols 0", &["blank.img"], &["--dry-run".into()]);
    let s = t.wait_for("step 1/8: Welcome", 30);
    let lines: Vec<&str> = s.lines().collect();
    assert!(
        lines.len() >= 24 && lines[23].starts_with("Enter: start"),
        "the keys line is not on row 24:\n{s}"
    );
    t.keys(&["q"]);
    let (rc, err) = t.exit(30);
    assert_eq!(rc, 5, "{err}");
    assert!(!env.path("answers.toml").exists());
}

#[test]
fn rayos_install_without_answers_on_a_terminal_runs_the_wizard() {
    let env = Env::new();
    let img = env.path("blank.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 * GIB)
        .unwrap();
    let before = fingerprint(&img).unwrap();
    let t = Tmux::start_sub(
        env.dir.path(),
        "",
        "install",
        &[
            "--target".into(),
            env.p("blank.img"),
            "--system-image".into(),
            env.p("rayos.efi"),
            "--no-nvram".into(),
        ],
    );
    // The wizard's first screen, not the engine's "--answers is required".
    let s = t.wait_for("step 1/8: Welcome", 30);
    assert!(s.contains("Nothing is written"), "{s}");
    t.keys(&["q"]);
    let (rc, err) = t.exit(30);
    assert_eq!(rc, 5, "leaving the wizard is exit 5 (cancelled): {err}");
    assert!(err.contains(&wizard(WizardMarker::Cancelled)), "{err}");
    assert!(
        !err.contains(&Marker::Installer(InstallerMarker::EngineStarted).to_string()),
        "{err}"
    );
    assert_eq!(
        fingerprint(&img).unwrap(),
        before,
        "leaving wrote to the disk"
    );
}
