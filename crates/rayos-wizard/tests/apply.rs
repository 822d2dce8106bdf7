//! Plans made through the partition manager (deletes and creates the
//! answer file cannot express) applied by the engine's real `apply` to
//! real images, checked with sgdisk -v, sha256 of the partitions the plan
//! keeps, and the disk report read back. Needs gdisk, dosfstools, mtools,
//! e2fsprogs and systemd-boot-efi (scripts/install-deps.sh).

use std::path::{Path, PathBuf};

use rayos_disk::types;
use rayos_install::answers::{Answers, Mode};
use rayos_install::apply::{ApplyOptions, apply};
use rayos_install::plan::{Action, Facts, PlanOptions, Role, SYSTEMD_BOOT_HOST, TableAction};
use rayos_testkit::disks::{DiskBuilder, MIB, pseudo_random, run};
use rayos_wizard::layout::{Free, Layout, plan};

const GIB: u64 = 1024 * MIB;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        assert!(
            Path::new(SYSTEMD_BOOT_HOST).is_file(),
            "{SYSTEMD_BOOT_HOST} is missing: install systemd-boot-efi (scripts/install-deps.sh)"
        );
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }
    fn opts(&self) -> PlanOptions {
        let uki = self.path("rayos.efi");
        std::fs::write(&uki, pseudo_random(3, 1 << 20)).unwrap();
        let recovery = self.path("rayos-recovery.efi");
        std::fs::write(&recovery, pseudo_random(4, 1 << 20)).unwrap();
        PlanOptions {
            system_image: Some(uki),
            recovery_image: Some(recovery),
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

fn largest(l: &Layout) -> Free {
    l.free()
        .into_iter()
        .max_by_key(|f| f.last_lba - f.first_lba)
        .unwrap()
}

fn sgdisk_ok(img: &Path) {
    let out = run("sgdisk", &["-v", &img.display().to_string()]).unwrap();
    assert!(out.contains("No problems found"), "sgdisk -v: {out}");
}

#[test]
fn deleted_and_created_partitions_are_written_and_the_rest_keeps_its_bytes() {
    let env = Env::new();
    let img = env.path("win.img");
    let fixture = DiskBuilder::windows_and_linux(8 * GIB).build(&img).unwrap();
    let before = fixture.partition_hashes().unwrap();
    let disk = rayos_disk::probe_image(&img, None).unwrap();
    let mut l = Layout::new(&disk);
    l.delete(4).unwrap();
    let data_region = largest(&l);
    let data = l.create(data_region, Some(3 * GIB), Role::Data).unwrap();
    let sys = l.create(largest(&l), Some(GIB), Role::System).unwrap();
    assert_ne!(
        data, 4,
        "a deleted number is reused only when nothing else is free"
    );
    let base = Answers::defaults(Mode::FreeSpace);
    let p = plan(&l, &base, &Facts::default(), &[], &env.opts()).unwrap();
    assert!(
        !p.repeatable,
        "deletes cannot be repeated by an answer file"
    );
    assert_eq!(p.answers.target.mode, Mode::Reuse);
    let plan = &p.plan;
    assert_eq!(plan.table, TableAction::Edit);
    let act = |n: u32| {
        plan.partitions
            .iter()
            .find(|q| q.number == n)
            .map(|q| q.action)
    };
    assert_eq!(act(4), Some(Action::Delete));
    assert_eq!(act(data), Some(Action::Create));
    assert_eq!(act(sys), Some(Action::Create));
    assert_eq!(act(1), Some(Action::ReuseEsp));
    assert_eq!((act(2), act(3)), (Some(Action::Keep), Some(Action::Keep)));

    apply(plan, &env.apply_opts(), &mut |_| {}).unwrap();
    sgdisk_ok(&img);
    let after = rayos_disk::probe_image(&img, None).unwrap();
    let r = after
        .rayos
        .clone()
        .expect("no RayOS install found after the install");
    assert_eq!((r.system, r.data, r.esp), (Some(sys), Some(data), Some(1)));
    assert!(after.partition(4).is_none(), "partition 4 was not deleted");
    let d = after.partition(data).unwrap();
    assert_eq!(d.type_guid, Some(types::RAYOS_DATA));
    assert_eq!(d.size_bytes, 3 * GIB);
    for (n, h) in &before {
        if *n == 2 || *n == 3 {
            assert_eq!(
                fixture.partition_hash(*n).unwrap(),
                *h,
                "partition {n} changed"
            );
        }
    }
}

#[test]
fn whole_disk_then_own_partitions_writes_a_new_table() {
    let env = Env::new();
    let img = env.path("whole.img");
    DiskBuilder::windows_and_linux(6 * GIB).build(&img).unwrap();
    let disk = rayos_disk::probe_image(&img, None).unwrap();
    let mut l = Layout::new(&disk);
    l.whole_disk();
    let esp = l.create(largest(&l), Some(512 * MIB), Role::Esp).unwrap();
    let sys = l.create(largest(&l), Some(GIB), Role::System).unwrap();
    let data = l.create(largest(&l), None, Role::Data).unwrap();
    let p = plan(
        &l,
        &Answers::defaults(Mode::FreeSpace),
        &Facts::default(),
        &[],
        &env.opts(),
    )
    .unwrap();
    assert_eq!(p.plan.table, TableAction::New);
    assert_eq!(
        p.plan
            .partition(Role::Esp)
            .map(|q| (q.number, q.action, q.size_bytes)),
        Some((esp, Action::Create, 512 * MIB))
    );
    apply(&p.plan, &env.apply_opts(), &mut |_| {}).unwrap();
    sgdisk_ok(&img);
    let after = rayos_disk::probe_image(&img, None).unwrap();
    assert_eq!(after.partitions.len(), 3, "{:?}", after.partitions);
    let r = after.rayos.clone().unwrap();
    assert_eq!(
        (r.esp, r.system, r.data),
        (Some(esp), Some(sys), Some(data))
    );
    assert!(
        after
            .systems
            .iter()
            .all(|s| s.kind == rayos_disk::SystemKind::Esp)
    );
}

#[test]
fn hand_made_partitions_on_a_4096_byte_sector_disk() {
    let env = Env::new();
    let img = env.path("4k.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(6 * GIB)
        .unwrap();
    let disk = rayos_disk::probe_image(&img, Some(4096)).unwrap();
    let mut l = Layout::new(&disk);
    let esp = l.create(largest(&l), Some(600 * MIB), Role::Esp).unwrap();
    let sys = l.create(largest(&l), Some(GIB), Role::System).unwrap();
    let data = l.create(largest(&l), Some(2 * GIB), Role::Data).unwrap();
    let vm = l.create(largest(&l), None, Role::VmLinux).unwrap();
    let p = plan(
        &l,
        &Answers::defaults(Mode::FreeSpace),
        &Facts::default(),
        &[],
        &env.opts(),
    )
    .unwrap();
    assert_eq!(p.plan.sector_size, 4096);
    assert_eq!(p.plan.table, TableAction::New);
    apply(&p.plan, &env.apply_opts(), &mut |_| {}).unwrap();
    let after = rayos_disk::probe_image(&img, Some(4096)).unwrap();
    assert_eq!(after.logical_sector_size, 4096);
    let r = after.rayos.clone().unwrap();
    assert_eq!(
        (r.esp, r.system, r.data, r.vm_storage),
        (Some(esp), Some(sys), Some(data), vec![vm])
    );
    for (n, size) in [(esp, 600 * MIB), (sys, GIB), (data, 2 * GIB)] {
        let q = after.partition(n).unwrap();
        assert_eq!(q.size_bytes, size, "partition {n}");
        assert_eq!(q.start_bytes % MIB, 0, "partition {n} unaligned");
    }
    let v = after.partition(vm).unwrap();
    assert_eq!(v.filesystem, Some(rayos_disk::Filesystem::Ext4));
    assert_eq!(v.fs_label.as_deref(), Some("rayos-vm-linux"));
}
