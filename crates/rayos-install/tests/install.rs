//! Installs onto real disk images with other systems on them and checks
//! the result with independent tools: `sgdisk -v`, `fsck.fat -n`,
//! `e2fsck -fn`, `debugfs`, mtools, and sha256 of every partition the plan
//! keeps. Needs gdisk, dosfstools, mtools, e2fsprogs and systemd-boot-efi
//! (scripts/install-deps.sh).

use std::path::{Path, PathBuf};

use rayos_disk::{DiskKind, Gpt};
use rayos_install::answers::{Answers, GIB, MIB};
use rayos_install::apply::{ApplyOptions, Event, apply};
use rayos_install::manifest::Manifest;
use rayos_install::plan::{
    self, Action, ESP_FALLBACK, ESP_LOADER_CONF, MANIFEST_PATH, Plan, PlanOptions, Role,
};
use rayos_testkit::disks::{self, DiskBuilder, extract, fingerprint, read_at, run, sha256_file};

fn require_tools() {
    for t in [
        "sgdisk",
        "mkfs.fat",
        "fsck.fat",
        "mkfs.ext4",
        "e2fsck",
        "debugfs",
        "mcopy",
        "mtype",
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(t).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "{t} is not installed: run `cargo xtask deps` (scripts/install-deps.sh)"
        );
    }
    assert!(
        Path::new(plan::SYSTEMD_BOOT_HOST).is_file(),
        "{} missing: install systemd-boot-efi",
        plan::SYSTEMD_BOOT_HOST
    );
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        require_tools();
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn uki(&self) -> PathBuf {
        let p = self.path("rayos.efi");
        if !p.exists() {
            std::fs::write(&p, disks::pseudo_random(99, 3 << 20)).unwrap();
        }
        p
    }
    fn recovery(&self) -> PathBuf {
        let p = self.path("rayos-recovery.efi");
        if !p.exists() {
            std::fs::write(&p, disks::pseudo_random(98, 1 << 20)).unwrap();
        }
        p
    }
    fn opts(&self) -> PlanOptions {
        PlanOptions {
            system_image: Some(self.uki()),
            recovery_image: Some(self.recovery()),
            ..PlanOptions::default()
        }
    }
    fn apply_opts(&self) -> ApplyOptions {
        ApplyOptions {
            efivars_dir: self.path("efivars"),
            temp_dir: self.dir.path().to_path_buf(),
        }
    }
}

fn make(env: &Env, img: &Path, ss: Option<u32>, answers: &str) -> Result<Plan, plan::PlanError> {
    let disk = rayos_disk::probe_image(img, ss).unwrap();
    let facts = rayos_install::facts::gather(&disk).unwrap();
    let a = Answers::parse("answers.toml", answers).unwrap();
    plan::make_plan(&disk, &a, &facts, &env.opts())
}

fn install(env: &Env, plan: &Plan) -> rayos_install::apply::ApplyReport {
    let mut steps = Vec::new();
    let r = apply(plan, &env.apply_opts(), &mut |e| {
        if let Event::StepDone { step, .. } = e {
            steps.push(step.clone());
        }
    })
    .unwrap();
    assert_eq!(steps, rayos_install::apply::steps(plan));
    r
}

fn part_file(env: &Env, img: &Path, p: &plan::PartitionPlan, name: &str) -> PathBuf {
    let out = env.path(name);
    let _ = std::fs::remove_file(&out);
    extract(img, p.start_bytes, p.size_bytes, &out).unwrap();
    out
}

fn mtype(img: &Path, p: &plan::PartitionPlan, file: &str) -> Vec<u8> {
    let out = std::process::Command::new("mtype")
        .args([
            "-i",
            &format!("{}@@{}", img.display(), p.start_bytes),
            &format!("::{file}"),
        ])
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mtype {file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An ext4 inside the image, as e2fsprogs addresses it (`img?offset=N`),
/// so multi-GiB partitions need no copying.
fn ext4_at(img: &Path, p: &plan::PartitionPlan) -> String {
    format!("{}?offset={}", img.display(), p.start_bytes)
}

fn debugfs(fs: &str, cmd: &str) -> String {
    run("debugfs", &["-R", cmd, fs]).unwrap()
}

fn debugfs_cat(fs: &str, file: &str) -> String {
    debugfs(fs, &format!("cat {file}"))
}

/// Everything a finished install must show, checked with outside tools.
fn check_installed(env: &Env, img: &Path, plan: &Plan, report: &rayos_install::apply::ApplyReport) {
    let ss = plan.sector_size;
    if ss == 512 {
        let v = run("sgdisk", &["-v", &img.display().to_string()]).unwrap();
        assert!(v.contains("No problems found"), "sgdisk -v: {v}");
    }
    // Our own reader agrees with the plan, both table copies included.
    let mut f = std::fs::File::open(img).unwrap();
    let gpt = Gpt::read(&mut f, ss).unwrap();
    for p in plan
        .partitions
        .iter()
        .filter(|p| p.action != Action::Delete)
    {
        let g = gpt.partition(p.number).unwrap();
        assert_eq!(
            (g.first_lba, g.last_lba, g.type_guid, g.unique_guid),
            (p.first_lba, p.last_lba, p.type_guid, p.unique_guid)
        );
        assert_eq!(g.name, p.name);
    }
    for p in plan
        .partitions
        .iter()
        .filter(|p| p.action == Action::Delete)
    {
        assert!(
            gpt.partition(p.number)
                .is_none_or(|g| g.unique_guid != p.unique_guid)
        );
    }

    let esp = plan.partition(Role::Esp).unwrap();
    let sys = plan.partition(Role::System).unwrap();
    let data = plan.partition(Role::Data).unwrap();
    for (p, name) in [(esp, "esp.img"), (sys, "sys.img")] {
        let f = part_file(env, img, p, name);
        run("fsck.fat", &["-n", &f.display().to_string()]).unwrap();
    }
    // systemd-boot and its loader.conf live on the ESP, except on a
    // 4096-byte-sector disk, where systemd-boot could not find the system
    // partition from there and is installed on it instead.
    let loader = match plan::loader_role(plan.sector_size) {
        Role::Esp => esp,
        _ => sys,
    };
    assert_eq!(
        mtype(img, loader, ESP_LOADER_CONF),
        plan::loader_conf().as_bytes()
    );
    let sd = std::fs::read(plan::SYSTEMD_BOOT_HOST).unwrap();
    assert_eq!(mtype(img, loader, plan::ESP_SYSTEMD_BOOT), sd);
    assert_eq!(
        mtype(img, sys, &format!("/EFI/Linux/{}", plan.uki_name())),
        std::fs::read(env.uki()).unwrap()
    );
    // The recovery UKI and its boot menu entry.
    use rayos_state::system::{RECOVERY_ENTRY, recovery_entry_text};
    let rec = format!("/rayos/rayos-recovery-{}.efi", plan.rayos_version);
    assert_eq!(
        mtype(img, sys, &rec),
        std::fs::read(env.recovery()).unwrap()
    );
    assert_eq!(
        mtype(img, sys, &format!("/{RECOVERY_ENTRY}")),
        recovery_entry_text(&plan.rayos_version, &rec).as_bytes()
    );
    let m = Manifest::parse(&mtype(img, sys, MANIFEST_PATH)).unwrap();
    assert_eq!(m, report.manifest);
    assert_eq!(m.install_id, plan.machine.install_id);
    assert_eq!(
        m.system_image.sha256,
        rayos_base::hash::sha256(&std::fs::read(env.uki()).unwrap())
    );
    assert_eq!(m.system_image.sha256, sha256_file(&env.uki()).unwrap());

    let ext = ext4_at(img, data);
    run("e2fsck", &["-fn", &ext]).unwrap();
    let machine =
        rayos_state::MachineConfig::parse("machine.toml", &debugfs_cat(&ext, "/machine.toml"))
            .unwrap();
    assert_eq!(machine, plan.machine);
    let policy =
        rayos_state::Policy::parse("p", &debugfs_cat(&ext, "/policy/rayos-policy.toml")).unwrap();
    assert_eq!(policy, plan.policy);
    let reg = rayos_state::Registry::parse("r", &debugfs_cat(&ext, "/vm/registry.json")).unwrap();
    assert_eq!(reg, plan.registry);
    assert!(reg.by_name("linux").is_some());
    let ls = debugfs(&ext, "ls -p /");
    for d in ["policy", "vm", "logs", "crash", "boot", "schema-version"] {
        assert!(
            ls.contains(&format!("/{d}/")),
            "{d} missing on the data volume: {ls}"
        );
    }
    let stats = debugfs(&ext, "stats");
    assert!(
        stats.contains("Filesystem volume name:   rayos-data"),
        "{stats}"
    );

    // And rayos-disk now sees a RayOS install.
    let disk = rayos_disk::probe_image(img, Some(ss)).unwrap();
    let r = disk.rayos.expect("rayos install detected");
    assert_eq!(r.system, Some(sys.number));
    assert_eq!(r.data, Some(data.number));
    assert_eq!(disk.kind, DiskKind::ImageFile);
}

#[test]
fn installs_beside_windows_and_linux_keeping_every_byte() {
    let env = Env::new();
    let img = env.path("disk.img");
    let fixture = DiskBuilder::windows_and_linux(4 * GIB).build(&img).unwrap();
    let before = fixture.partition_hashes().unwrap();

    let plan = make(
        &env,
        &img,
        None,
        "version = 1\n[target]\nmode = \"free-space\"\n[sizes]\nsystem = \"1GiB\"\n",
    )
    .unwrap();
    let esp = plan.partition(Role::Esp).unwrap();
    assert_eq!((esp.number, esp.action), (1, Action::ReuseEsp));
    assert_eq!(
        plan.partitions
            .iter()
            .filter(|p| p.action == Action::Keep)
            .count(),
        3
    );

    let report = install(&env, &plan);
    check_installed(&env, &img, &plan, &report);

    // Partitions outside the plan kept every byte.
    let after = fixture.partition_hashes().unwrap();
    for (b, a) in before.iter().zip(&after).skip(1) {
        assert_eq!(b, a, "partition {} changed", b.0);
    }
    // Windows' files on the shared ESP are untouched, its fallback loader kept.
    assert_eq!(mtype(&img, esp, ESP_FALLBACK), b"windows fallback loader");
    assert_eq!(
        mtype(&img, esp, "/EFI/Microsoft/Boot/bootmgfw.efi"),
        disks::pseudo_random(7, 64 * 1024)
    );

    // A complete install is never overwritten without reinstall = true.
    let whole = fingerprint(&img).unwrap();
    let e = make(
        &env,
        &img,
        None,
        "version = 1\n[target]\nmode = \"free-space\"\n",
    )
    .unwrap_err();
    assert!(matches!(e, plan::PlanError::CompleteInstall { .. }), "{e}");
    let e = make(
        &env,
        &img,
        None,
        "version = 1\n[target]\nmode = \"whole-disk\"\n",
    )
    .unwrap_err();
    assert!(matches!(e, plan::PlanError::CompleteInstall { .. }), "{e}");
    assert_eq!(fingerprint(&img).unwrap(), whole);

    // With consent, a reinstall replaces RayOS and still keeps the others.
    let plan2 = make(&env, &img, None, "version = 1\n[target]\nmode = \"free-space\"\nreinstall = true\n[sizes]\nsystem = \"1GiB\"\n").unwrap();
    let r2 = install(&env, &plan2);
    check_installed(&env, &img, &plan2, &r2);
    assert_ne!(r2.manifest.install_id, report.manifest.install_id);
    let again = fixture.partition_hashes().unwrap();
    assert_eq!(&again[1..], &before[1..]);
}

#[test]
fn whole_disk_on_a_blank_4096_byte_sector_image() {
    let env = Env::new();
    let img = env.path("blank4k.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(4 * GIB)
        .unwrap();
    let answers = "version = 1\n[target]\nmode = \"whole-disk\"\n[sizes]\nesp = \"512MiB\"\nsystem = \"1GiB\"\n[vm_storage]\nlinux = { create = \"1GiB\" }\n[policy]\nwindows_enabled = true\n";
    let plan = make(&env, &img, Some(4096), answers).unwrap();
    assert_eq!(plan.sector_size, 4096);
    let esp = plan.partition(Role::Esp).unwrap();
    assert_eq!((esp.first_lba, esp.size_bytes), (256, 512 * MIB));
    let report = install(&env, &plan);
    check_installed(&env, &img, &plan, &report);
    // The 4096-byte table is found without being told the sector size.
    let disk = rayos_disk::probe_image(&img, None).unwrap();
    assert_eq!(disk.logical_sector_size, 4096);
    // The FAT filesystems use 4096-byte sectors.
    let bs = read_at(&img, esp.start_bytes, 512).unwrap();
    assert_eq!(u16::from_le_bytes([bs[11], bs[12]]), 4096);
    // VM storage partition for Linux holds the VM's skeleton; the data
    // volume holds the Windows VM's directory.
    let vl = plan.partition(Role::VmLinux).unwrap();
    let vimg = ext4_at(&img, vl);
    run("e2fsck", &["-fn", &vimg]).unwrap();
    let ls = debugfs(&vimg, "ls -p /");
    assert!(ls.contains("/disks/") && ls.contains("/state/"), "{ls}");
    assert!(!ls.contains(".rayos-vm-storage"), "{ls}");
    let win = plan.registry.by_name("windows").unwrap().id;
    let data = ext4_at(&img, plan.partition(Role::Data).unwrap());
    // The Linux VM's mount point on the data volume names its partition
    // (rayos init mounts it there; rayosd refuses the VM while it shows).
    let lin = plan.registry.by_name("linux").unwrap().id;
    let marker = debugfs(&data, &format!("cat /vm/{lin}/.rayos-vm-storage"));
    assert_eq!(
        rayos_state::layout::storage_marker_label(&marker).as_deref(),
        Some("rayos-vm-linux"),
        "{marker}"
    );
    let ls = debugfs(&data, &format!("ls -p /vm/{lin}"));
    assert!(
        !ls.contains("/disks/"),
        "the VM's files are on its own partition: {ls}"
    );
    let ls = debugfs(&data, &format!("ls -p /vm/{win}"));
    assert!(ls.contains("/disks/"), "{ls}");
}

#[test]
fn reuse_mode_formats_only_the_named_partitions() {
    let env = Env::new();
    let img = env.path("reuse.img");
    let fixture = DiskBuilder::windows_and_linux(4 * GIB)
        .partition(
            0,
            600 * MIB,
            "spare-a",
            disks::Content::Header {
                type_code: "8300".into(),
            },
        )
        .partition(
            0,
            1100 * MIB,
            "spare-b",
            disks::Content::Header {
                type_code: "8300".into(),
            },
        )
        .build(&img)
        .unwrap();
    let before: Vec<String> = (2..=4)
        .map(|n| fixture.partition_hash(n).unwrap())
        .collect();
    let base = format!(
        "version = 1\n[target]\nmode = \"reuse\"\nsystem = \"{0}5\"\ndata = \"{0}6\"\n",
        img.display()
    );
    // Linux-typed partitions belong to another system: consent needed.
    let e = make(&env, &img, None, &base).unwrap_err();
    assert!(matches!(e, plan::PlanError::NeedsConsent { .. }), "{e}");
    let plan = make(&env, &img, None, &format!("{base}format = [5, 6]\n")).unwrap();
    let report = install(&env, &plan);
    check_installed(&env, &img, &plan, &report);
    let after: Vec<String> = (2..=4)
        .map(|n| fixture.partition_hash(n).unwrap())
        .collect();
    assert_eq!(after, before, "partitions 2-4 must keep every byte");
    let mut f = std::fs::File::open(&img).unwrap();
    let gpt = Gpt::read(&mut f, 512).unwrap();
    assert_eq!(
        gpt.partition(5).unwrap().type_guid,
        rayos_disk::types::XBOOTLDR
    );
    assert_eq!(
        gpt.partition(6).unwrap().type_guid,
        rayos_disk::types::RAYOS_DATA
    );
    assert_eq!(gpt.partitions().len(), 6);
}

/// A power cut between the primary and the backup GPT write leaves a table
/// rayos-disk calls corrupt. When the valid copy holds an unfinished RayOS
/// install (and only then), the re-run plans from that copy and finishes;
/// any other corruption is refused untouched.
#[test]
fn a_table_write_cut_off_halfway_is_finished_on_rerun() {
    let env = Env::new();
    let img = env.path("cut.img");
    let fixture = DiskBuilder::windows_and_linux(4 * GIB).build(&img).unwrap();
    let before: Vec<String> = (2..=4)
        .map(|n| fixture.partition_hash(n).unwrap())
        .collect();
    let answers = "version = 1\n[target]\nmode = \"free-space\"\n[sizes]\nsystem = \"1GiB\"\n";

    // Damage the backup header of the untouched fixture: not ours, refused.
    let last = std::fs::metadata(&img).unwrap().len() - 512;
    let backup = read_at(&img, last, 512).unwrap();
    disks::write_at(&img, last, &[0u8; 512]).unwrap();
    let fp = fingerprint(&img).unwrap();
    let e = make(&env, &img, None, answers).unwrap_err();
    assert!(
        e.to_string().contains("corrupt") && e.to_string().contains("not repaired silently"),
        "{e}"
    );
    assert_eq!(fingerprint(&img).unwrap(), fp);
    disks::write_at(&img, last, &backup).unwrap();

    // An install whose table write was cut off: our partitions in the
    // primary copy, no manifest, the backup copy gone.
    let plan = make(&env, &img, None, answers).unwrap();
    install(&env, &plan);
    let sys = plan.partition(Role::System).unwrap();
    run(
        "mdel",
        &[
            "-i",
            &format!("{}@@{}", img.display(), sys.start_bytes),
            &format!("::{MANIFEST_PATH}"),
        ],
    )
    .unwrap();
    disks::write_at(&img, last, &[0u8; 512]).unwrap();
    let disk = rayos_disk::probe_image(&img, None).unwrap();
    assert!(
        matches!(disk.table, rayos_disk::Table::Corrupt { .. }),
        "{:?}",
        disk.table
    );

    let plan = make(&env, &img, None, answers).unwrap();
    assert_eq!(plan.table_copy, Some(plan::TableCopy::Primary));
    assert!(plan.notes.iter().any(|n| n.contains("half-written")));
    let report = install(&env, &plan);
    check_installed(&env, &img, &plan, &report);
    let after: Vec<String> = (2..=4)
        .map(|n| fixture.partition_hash(n).unwrap())
        .collect();
    assert_eq!(after, before);
}

/// A reused ESP without room for systemd-boot is refused before anything
/// is written (not half-way, after the table changed).
#[test]
fn a_full_esp_is_refused_before_any_write() {
    let env = Env::new();
    let img = env.path("fullesp.img");
    DiskBuilder::new(4 * GIB)
        .partition(
            0,
            40 * MIB,
            "EFI system partition",
            disks::Content::Esp {
                files: vec![(
                    "/EFI/vendor/big.bin".into(),
                    disks::pseudo_random(3, 39 * MIB as usize),
                )],
            },
        )
        .build(&img)
        .unwrap();
    let plan = make(
        &env,
        &img,
        None,
        "version = 1\n[target]\nmode = \"free-space\"\n",
    )
    .unwrap();
    assert_eq!(plan.partition(Role::Esp).unwrap().action, Action::ReuseEsp);
    let fp = fingerprint(&img).unwrap();
    let e = apply(&plan, &env.apply_opts(), &mut |_| {}).unwrap_err();
    assert!(
        matches!(e, rayos_install::ApplyError::EspFull { number: 1, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("nothing was written"), "{e}");
    assert_eq!(fingerprint(&img).unwrap(), fp);
}

/// A stand-in for the Debian VM image: a raw "disk" with data at both ends,
/// shipped as the media do it (a qcow2 of its own size, zstd in the
/// seekable format; 1 MiB frames where the media use 32 MiB, so the 4 MiB
/// of data make several). Returns the raw disk, the image and the qcow2.
fn fake_linux_vm_image(env: &Env) -> (PathBuf, PathBuf, PathBuf) {
    let raw = env.path("linux-vm.img");
    let mut data = disks::pseudo_random(7, 3 << 20);
    data.resize(12 << 20, 0);
    data.extend(disks::pseudo_random(8, 1 << 20));
    std::fs::write(&raw, &data).unwrap();
    let qcow2 = env.path("linux-vm.qcow2");
    let mut out = std::fs::File::create(&qcow2).unwrap();
    rayos_install::qcow2::write_from_stream(
        &mut &data[..],
        &mut out,
        data.len() as u64,
        &mut |_| {},
    )
    .unwrap();
    drop(out);
    let zst = env.path("linux-vm.qcow2.zst");
    rayos_install::seekable::compress(
        &qcow2,
        &zst,
        1 << 20,
        &["-12", rayos_install::vmdisk::ZSTD_LONG],
        2,
    )
    .unwrap();
    let table = rayos_install::seekable::SeekTable::read(&zst).unwrap();
    assert!(table.is_some_and(|t| t.frames().len() > 3));
    (raw, zst, qcow2)
}

#[test]
fn the_debian_vm_image_becomes_the_linux_vms_thin_disk() {
    let env = Env::new();
    let (raw, zst, _) = fake_linux_vm_image(&env);
    installs_the_linux_vm_disk(&env, &raw, &zst);
}

#[test]
fn a_single_frame_debian_vm_image_an_older_medium_ships_is_still_installed() {
    // `linux-vm.qcow2.zst` as one zstd frame (media of 2026-12-07, before
    // the seekable format): streamed through one pipe into place.
    let env = Env::new();
    let (raw, _, qcow2) = fake_linux_vm_image(&env);
    let zst = env.path("linux-vm.qcow2.one-frame.zst");
    run(
        "zstd",
        &[
            "-q",
            "-12",
            rayos_install::vmdisk::ZSTD_LONG,
            qcow2.to_str().unwrap(),
            "-o",
            zst.to_str().unwrap(),
        ],
    )
    .unwrap();
    installs_the_linux_vm_disk(&env, &raw, &zst);
}

#[test]
fn a_raw_debian_vm_image_an_older_medium_ships_is_still_installed() {
    // `linux-vm.img.zst` (until 2026-12-07): made into a qcow2 in TMPDIR,
    // then written into the space mkfs.ext4 made, like the qcow2 form.
    let env = Env::new();
    let (raw, _, _) = fake_linux_vm_image(&env);
    let zst = env.path("linux-vm.img.zst");
    run(
        "zstd",
        &[
            "-q",
            rayos_install::vmdisk::ZSTD_LONG,
            raw.to_str().unwrap(),
            "-o",
            zst.to_str().unwrap(),
        ],
    )
    .unwrap();
    installs_the_linux_vm_disk(&env, &raw, &zst);
}

/// Installs with `zst` as the Debian VM image and checks the Linux VM's
/// disk on the data volume reads as `raw`.
fn installs_the_linux_vm_disk(env: &Env, raw: &Path, zst: &Path) {
    let img = env.path("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 * GIB)
        .unwrap();
    let answers = "version = 1\n[target]\nmode = \"whole-disk\"\n[machine]\nhostname = \"box\"\ntimezone = \"Europe/Berlin\"\n\
                   [linux]\nuser = \"alice\"\npassword = \"pw 1\"\ndisk_size = \"32GiB\"\n";
    let disk = rayos_disk::probe_image(&img, None).unwrap();
    let facts = rayos_install::facts::gather(&disk).unwrap();
    let a = Answers::parse("answers.toml", answers).unwrap();
    let opts = PlanOptions {
        linux_vm_image: Some(zst.to_path_buf()),
        ..env.opts()
    };
    let plan = plan::make_plan(&disk, &a, &facts, &opts).unwrap();
    // The plan holds the hash, never the password.
    let json = plan.to_json();
    assert!(!json.contains("pw 1"));
    let vm = plan.registry.by_name("linux").unwrap();
    let g = vm.guest.as_ref().unwrap();
    assert_eq!(
        (g.user.as_str(), g.hostname.as_str()),
        ("alice", "box-linux")
    );
    assert_eq!(g.timezone, "Europe/Berlin");
    assert!(rayos_state::guest::verify_password(
        "pw 1",
        g.password_hash.as_deref().unwrap()
    ));
    assert!(matches!(
        vm.boot,
        rayos_state::registry::BootSpec::Uefi { secure_boot: false }
    ));
    let mut notes = Vec::new();
    let report = apply(&plan, &env.apply_opts(), &mut |e| {
        if let Event::Note { message } = e {
            notes.push(message.clone());
        }
    })
    .unwrap();
    check_installed(env, &img, &plan, &report);
    assert!(
        notes.iter().any(|n| n.starts_with("Linux VM disk: 100%")),
        "{notes:?}"
    );
    // mkfs.ext4 made room for the disk and the installer wrote it there
    // (not copied 4 KiB at a time by -d); the root keeps no trace of it.
    let placed = format!("/vm/{}/{}", vm.id, plan::LINUX_VM_DISK);
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with(&format!("{placed}: ")) && n.contains("space mkfs.ext4 made")),
        "{notes:?}"
    );
    // The VM's disk on the data volume: a qcow2 of the chosen size whose
    // contents are the image's, then zeros.
    let data = ext4_at(&img, plan.partition(Role::Data).unwrap());
    let qcow = env.path("root.qcow2");
    debugfs(
        &data,
        &format!(
            "dump /vm/{}/{} {}",
            vm.id,
            plan::LINUX_VM_DISK,
            qcow.display()
        ),
    );
    let info = run(
        "qemu-img",
        &["info", "--output=json", qcow.to_str().unwrap()],
    )
    .unwrap();
    assert!(info.contains("\"format\": \"qcow2\""), "{info}");
    assert!(
        info.contains(&format!("\"virtual-size\": {}", 32 * GIB)),
        "{info}"
    );
    run("qemu-img", &["check", qcow.to_str().unwrap()]).unwrap();
    // The VM's directory is root's alone from the install on
    // (`rayos_state::modes`): no "made private" at the first start.
    for dir in [format!("/vm/{}", vm.id), format!("/vm/{}/disks", vm.id)] {
        let ls = debugfs(&data, &format!("ls -p {dir}"));
        let entries: Vec<(&str, &str)> = ls
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('/').collect();
                (f.len() > 5 && f[5] != "..").then(|| (f[5], f[2]))
            })
            .collect();
        assert!(entries.len() > 1, "{ls}");
        assert!(!ls.contains("rayos-prealloc"), "{ls}");
        for (name, mode) in entries {
            assert!(
                mode == "040700" || mode == "100600",
                "{dir}/{name} has mode {mode}:\n{ls}"
            );
        }
    }
    run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            raw.to_str().unwrap(),
            qcow.to_str().unwrap(),
        ],
    )
    .unwrap();
    let root = debugfs(&data, "ls -p /");
    assert!(!root.contains("rayos-prealloc"), "{root}");
    // Thin: far less than the 32 GiB it offers.
    assert!(std::fs::metadata(&qcow).unwrap().len() < 64 << 20);
}

#[test]
fn the_debian_vm_needs_a_user_and_the_test_guest_is_asked_for_by_name() {
    let env = Env::new();
    let (_, zst, _) = fake_linux_vm_image(&env);
    let img = env.path("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 * GIB)
        .unwrap();
    let disk = rayos_disk::probe_image(&img, None).unwrap();
    let facts = rayos_install::facts::gather(&disk).unwrap();
    let opts = PlanOptions {
        linux_vm_image: Some(zst),
        ..env.opts()
    };
    // The medium carries the image: Debian is the Linux VM, and without a
    // user the plan is refused (nothing written) with what to add.
    let a = Answers::parse("a", "version = 1\n[target]\nmode = \"whole-disk\"\n").unwrap();
    let e = plan::make_plan(&disk, &a, &facts, &opts).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("needs a first user"), "{msg}");
    assert!(
        msg.contains("[linux]") && msg.contains("test-guest"),
        "{msg}"
    );
    // The test guest only when asked for by name.
    let a = Answers::parse(
        "a",
        "version = 1\n[target]\nmode = \"whole-disk\"\n[linux]\nsystem = \"test-guest\"\n",
    )
    .unwrap();
    let plan = plan::make_plan(&disk, &a, &facts, &opts).unwrap();
    let vm = plan.registry.by_name("linux").unwrap();
    assert!(vm.guest.is_none());
    // A user alone picks Debian.
    let a = Answers::parse(
        "a",
        "version = 1\n[target]\nmode = \"whole-disk\"\n[linux]\nuser = \"bob\"\nssh_key = \"ssh-ed25519 AAAAC3Nza bob@x\"\n",
    )
    .unwrap();
    let plan = plan::make_plan(&disk, &a, &facts, &opts).unwrap();
    let vm = plan.registry.by_name("linux").unwrap();
    assert_eq!(vm.guest.as_ref().map(|g| g.user.as_str()), Some("bob"));
    // Asking for Debian without an image on the medium is refused.
    let a = Answers::parse(
        "a",
        "version = 1\n[target]\nmode = \"whole-disk\"\n[linux]\nsystem = \"debian\"\nuser = \"bob\"\nssh_key = \"ssh-ed25519 AAAAC3Nza bob@x\"\n",
    )
    .unwrap();
    let e = plan::make_plan(&disk, &a, &facts, &env.opts()).unwrap_err();
    assert!(e.to_string().contains("no Debian VM image"), "{e}");
}
