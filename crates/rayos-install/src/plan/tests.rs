use std::path::Path;

use rayos_disk::{Table, types};
use rayos_state::VmKind;
use rayos_state::registry::BootSpec;
use uuid::Uuid;

use super::*;
use crate::answers::{Answers, DataSize, GIB, MIB, Mode, VmStorage};
use crate::sample::{FakePartition, fake_disk, sample_disk};
use rayos_disk::{DiskKind, Filesystem, Usage, UsageReason};

fn answers(extra: &str) -> Answers {
    Answers::parse("a.toml", &format!("version = 1\n{extra}")).unwrap()
}
fn mode(m: &str) -> Answers {
    answers(&format!("[target]\nmode = \"{m}\"\n"))
}
fn plan(disk: &Disk, a: &Answers) -> Result<Plan, PlanError> {
    make_plan(disk, a, &Facts::default(), &PlanOptions::default())
}
fn blank(size: u64, ss: u32) -> Disk {
    let mut d = fake_disk("/tmp/blank.img", size, ss, DiskKind::ImageFile, &[]);
    d.table = Table::None;
    d
}
fn live(p: &Plan) -> Vec<&PartitionPlan> {
    p.partitions
        .iter()
        .filter(|p| p.action != Action::Delete)
        .collect()
}

#[test]
fn whole_disk_on_blank_512_and_4096() {
    for ss in [512u32, 4096] {
        let p = plan(&blank(8 * GIB, ss), &mode("whole-disk")).unwrap();
        assert_eq!(p.table, TableAction::New);
        let l = live(&p);
        assert_eq!(l.len(), 3);
        let esp = p.partition(Role::Esp).unwrap();
        let sys = p.partition(Role::System).unwrap();
        let data = p.partition(Role::Data).unwrap();
        assert_eq!((esp.start_bytes, esp.size_bytes), (MIB, GIB), "ss {ss}");
        assert_eq!((sys.start_bytes, sys.size_bytes), (MIB + GIB, 2 * GIB));
        assert_eq!(data.start_bytes, MIB + 3 * GIB);
        assert!(data.size_bytes > 4 * GIB && data.size_bytes < 5 * GIB);
        assert_eq!(data.first_lba * ss as u64, data.start_bytes);
        for q in &l {
            assert_eq!(q.start_bytes % MIB, 0);
            assert_eq!(q.action, Action::Create);
        }
        assert!(p.nvram.is_none(), "image files never get a boot entry");
        // systemd-boot 252 cannot find XBOOTLDR on 4096-byte sectors.
        let loader = if ss == 512 { Role::Esp } else { Role::System };
        for path in [ESP_SYSTEMD_BOOT, ESP_LOADER_CONF] {
            let f = p.files.iter().find(|f| f.path == path).unwrap();
            assert_eq!(f.role, loader, "{path} with ss {ss}");
        }
        let fallback = p.files.iter().find(|f| f.path == ESP_FALLBACK).unwrap();
        assert_eq!(fallback.role, Role::Esp);
    }
}

#[test]
fn free_space_keeps_windows_and_reuses_its_esp() {
    let d = sample_disk();
    let p = plan(&d, &mode("free-space")).unwrap();
    assert_eq!(p.table, TableAction::Edit);
    let esp = p.partition(Role::Esp).unwrap();
    assert_eq!((esp.number, esp.action), (1, Action::ReuseEsp));
    for n in [2, 3] {
        let k = p.partitions.iter().find(|q| q.number == n).unwrap();
        assert_eq!(k.action, Action::Keep);
        let orig = d.partition(n).unwrap();
        assert_eq!((k.first_lba, k.last_lba), (orig.first_lba, orig.last_lba));
    }
    let sys = p.partition(Role::System).unwrap();
    assert_eq!(sys.number, 4);
    assert!(sys.start_bytes >= 117 * MIB + 40 * GIB);
    assert!(
        !p.partitions
            .iter()
            .any(|q| q.action == Action::Delete || q.action == Action::Format)
    );
    // The fallback loader must not replace Windows' own.
    assert!(
        p.files
            .iter()
            .any(|f| f.path == ESP_FALLBACK && f.only_if_absent)
    );
    assert_eq!(p.files.last().unwrap().source, Source::Manifest);
}

#[test]
fn too_small_says_how_much_is_needed() {
    let e = plan(&blank(3 * GIB, 512), &mode("whole-disk")).unwrap_err();
    match &e {
        PlanError::TooSmall { needed, .. } => assert!(*needed >= 4 * GIB, "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("4 GiB"), "{e}");
    // free space: 64 GiB disk, but only a little is free
    let d = fake_disk(
        "/dev/x",
        8 * GIB,
        512,
        DiskKind::BlockDevice,
        &[
            FakePartition::at(1, MIB, 6 * GIB, 512, types::MS_BASIC_DATA, "win")
                .fs(Filesystem::Ntfs, None),
        ],
    );
    let e = plan(&d, &mode("free-space")).unwrap_err();
    assert!(matches!(e, PlanError::TooSmall { .. }), "{e}");
    assert!(e.to_string().contains("largest free region"), "{e}");
}

#[test]
fn vm_storage_create_and_reuse() {
    let d = fake_disk(
        "/dev/vda",
        64 * GIB,
        512,
        DiskKind::BlockDevice,
        &[
            FakePartition::at(1, MIB, 512 * MIB, 512, types::ESP, "").fs(Filesystem::Fat32, None),
            FakePartition::at(2, 513 * MIB, 10 * GIB, 512, types::LINUX_FS, "old")
                .fs(Filesystem::Ext4, None),
        ],
    );
    let a = answers(
        "[target]\nmode = \"free-space\"\n[vm_storage]\nlinux = { create = \"20GiB\" }\nwindows = { reuse = \"/dev/vda2\" }\n",
    );
    // reusing an ext4 partition of another system needs consent
    let e = plan(&d, &a).unwrap_err();
    assert!(matches!(e, PlanError::NeedsConsent { .. }), "{e}");
    assert!(e.to_string().contains("answer line 6"), "{e}");
    let a = answers(
        "[target]\nmode = \"free-space\"\nformat = [\"/dev/vda2\"]\n[vm_storage]\nlinux = { create = \"20GiB\" }\nwindows = { reuse = \"/dev/vda2\" }\n",
    );
    let p = plan(&d, &a).unwrap();
    let vl = p.partition(Role::VmLinux).unwrap();
    assert_eq!((vl.action, vl.size_bytes), (Action::Create, 20 * GIB));
    assert_eq!(vl.type_guid, types::RAYOS_VM_STORAGE);
    let vw = p.partition(Role::VmWindows).unwrap();
    assert_eq!((vw.action, vw.number), (Action::Format, 2));
    assert_eq!(vw.name, NAME_VM_WINDOWS);
    // the Linux VM's skeleton goes onto its own partition
    assert!(
        p.files
            .iter()
            .any(|f| f.role == Role::VmLinux && f.path == "/disks")
    );
}

#[test]
fn reuse_mode_roles_consent_overlap_alignment() {
    let parts = [
        FakePartition::at(1, MIB, 512 * MIB, 512, types::ESP, "").fs(Filesystem::Fat32, None),
        FakePartition::at(2, 513 * MIB, GIB, 512, types::MS_BASIC_DATA, "win-data")
            .fs(Filesystem::Ntfs, None),
        // an unknown type with no filesystem, read to be all zeros
        FakePartition::at(
            3,
            513 * MIB + GIB,
            4 * GIB,
            512,
            Uuid::from_u128(0x1234),
            "empty",
        ),
    ];
    let d = fake_disk("/dev/sda", 16 * GIB, 512, DiskKind::BlockDevice, &parts);
    // facts::gather read partition 3 and found only zeros.
    let p3 = d.partition(3).unwrap();
    let zeros = |contents| Facts {
        scanned: vec![Scanned {
            number: 3,
            first_lba: p3.first_lba,
            last_lba: p3.last_lba,
            contents,
        }],
        ..Facts::default()
    };
    let plan =
        |d: &Disk, a: &Answers| make_plan(d, a, &zeros(Contents::AllZero), &PlanOptions::default());
    let base = "[target]\nmode = \"reuse\"\nsystem = 2\ndata = 3\n";
    let e = plan(&d, &answers(base)).unwrap_err();
    assert!(matches!(e, PlanError::NeedsConsent { .. }), "{e}");
    assert!(e.to_string().contains("NTFS (Windows)"), "{e}");
    // Issue #10 item 4: unrecognised bytes need consent like Windows'
    // and Linux' partitions; only proven zeros do not.
    let a = answers(&format!("{base}format = [2]\n"));
    for (facts, words) in [
        (zeros(Contents::NotZero), "not all zeros"),
        (zeros(Contents::TooLarge), "too large to be proven empty"),
        (Facts::default(), "not read to prove it empty"),
    ] {
        let e = make_plan(&d, &a, &facts, &PlanOptions::default()).unwrap_err();
        assert!(matches!(e, PlanError::NeedsConsent { .. }), "{e}");
        let m = e.to_string();
        assert!(m.contains("partition 3") && m.contains(words), "{m}");
        assert!(m.contains("list it in [target] format"), "{m}");
        let a3 = answers(&format!("{base}format = [2, 3]\n"));
        make_plan(&d, &a3, &facts, &PlanOptions::default()).unwrap();
    }
    // A type of another system the planner has no family for (APFS)
    // holding data: consent; the same partition all zeros: none.
    let mut apfs = parts.clone();
    apfs[2].type_guid = types::APPLE_APFS;
    let da = fake_disk("/dev/sda", 16 * GIB, 512, DiskKind::BlockDevice, &apfs);
    let e = make_plan(&da, &a, &zeros(Contents::NotZero), &PlanOptions::default()).unwrap_err();
    assert!(e.to_string().contains("Apple APFS"), "{e}");
    make_plan(&da, &a, &zeros(Contents::AllZero), &PlanOptions::default()).unwrap();
    let p = plan(&d, &answers(&format!("{base}format = [2]\n"))).unwrap();
    assert_eq!(p.partition(Role::System).unwrap().action, Action::Format);
    assert_eq!(
        p.partition(Role::System).unwrap().type_guid,
        types::XBOOTLDR
    );
    // partition 3 (unknown type, no filesystem, all zeros) needed no consent
    assert_eq!(p.partition(Role::Data).unwrap().number, 3);
    assert_eq!(p.partition(Role::Esp).unwrap().action, Action::ReuseEsp);
    assert_eq!(p.bytes_allocated, GIB + 4 * GIB);

    let e = plan(
        &d,
        &answers("[target]\nmode = \"reuse\"\nsystem = 3\ndata = 3\n"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("two roles"), "{e}");
    let e = plan(
        &d,
        &answers("[target]\nmode = \"reuse\"\nsystem = 1\ndata = 3\n"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("never reformatted"), "{e}");
    let e = plan(
        &d,
        &answers("[target]\nmode = \"reuse\"\nsystem = 7\ndata = 3\n"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("no partition 7"), "{e}");

    let mut mis = parts.clone();
    mis[2].first_lba += 1;
    let d = fake_disk("/dev/sda", 16 * GIB, 512, DiskKind::BlockDevice, &mis);
    let e = plan(
        &d,
        &answers("[target]\nmode = \"reuse\"\nsystem = 3\ndata = 2\nformat = [2]\n"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("1 MiB boundary"), "{e}");
}

/// Issue #10 item 7: sizes that got past the parser (the wizard and
/// tools build `Answers` in code) must not overflow the planner's
/// arithmetic; they are refused as too large.
#[test]
fn huge_sizes_are_refused_not_overflowed() {
    let d = blank(8 * GIB, 512);
    let mut huge = Vec::new();
    for v in [u64::MAX, u64::MAX - 1, u64::MAX / 2, u64::MAX / 4 + 1] {
        let mut a = mode("whole-disk");
        a.sizes.esp = v;
        huge.push(a);
        let mut a = mode("whole-disk");
        a.sizes.system = v;
        huge.push(a);
        let mut a = mode("whole-disk");
        a.sizes.data = DataSize::Bytes(v);
        huge.push(a);
        let mut a = mode("whole-disk");
        a.vm_storage.linux = VmStorage::Create(v);
        a.vm_storage.windows = VmStorage::Create(v);
        huge.push(a);
    }
    for a in &huge {
        let e = plan(&d, a).unwrap_err();
        assert!(
            matches!(e, PlanError::TooSmall { .. } | PlanError::Partition { .. }),
            "{e}"
        );
    }
}

/// Issue #10 item 3 (the planner's part; the real sgdisk -h disk is in
/// crates/rayos/tests/install.rs).
#[test]
fn a_hybrid_mbr_is_kept_beside_refused_over_replaced_by_whole_disk() {
    let mut d = sample_disk();
    // Boot Camp style: the NTFS partition (3) is also in the MBR.
    let p3 = d.partition(3).unwrap().clone();
    d.hybrid_mbr = vec![rayos_disk::MbrPartition {
        number: 2,
        bootable: true,
        type_byte: 0x07,
        first_lba: p3.first_lba,
        sectors: p3.last_lba + 1 - p3.first_lba,
    }];
    let p = plan(&d, &mode("free-space")).unwrap();
    assert_eq!(p.hybrid_mbr.len(), 1);
    assert!(
        p.notes.iter().any(|n| n.contains("hybrid MBR is kept")),
        "{:?}",
        p.notes
    );
    let e = plan(
        &d,
        &answers(
            "[target]\nmode = \"free-space\"\nformat = [3]\n[vm_storage]\nlinux = { reuse = 3 }\n",
        ),
    )
    .unwrap_err();
    let m = e.to_string();
    assert!(m.contains("hybrid MBR") && m.contains("partition 3"), "{m}");
    // The same check for plans made elsewhere (the wizard's lowered
    // plan, JSON): deleting the named partition is refused.
    let mut q = p.clone();
    q.partitions
        .iter_mut()
        .find(|x| x.number == 3)
        .unwrap()
        .action = Action::Delete;
    assert!(validate(&q).unwrap_err().to_string().contains("deletes"));
    let w = plan(&d, &mode("whole-disk")).unwrap();
    assert!(w.hybrid_mbr.is_empty());
    assert!(
        w.notes
            .iter()
            .any(|n| n.contains("legacy BIOS mode stops booting"))
    );
    let back: Plan = serde_json::from_str(&p.to_json()).unwrap();
    assert_eq!(back, p);
}

#[test]
fn refuses_in_use_medium_readonly_mbr_corrupt() {
    let mut d = sample_disk();
    d.in_use.push(Usage {
        device: "/dev/sample3".into(),
        reason: UsageReason::Mounted {
            mount_point: "/mnt/win".into(),
            fs_type: "ntfs3".into(),
        },
    });
    let e = plan(&d, &mode("free-space")).unwrap_err();
    assert!(
        matches!(e, PlanError::InUse { .. }) && e.to_string().contains("/mnt/win"),
        "{e}"
    );
    d.in_use[0].reason = UsageReason::Mounted {
        mount_point: "/run/rayos/medium".into(),
        fs_type: "iso9660".into(),
    };
    let e = plan(&d, &mode("whole-disk")).unwrap_err();
    assert!(matches!(e, PlanError::InstallerMedium { .. }), "{e}");

    let mut d = sample_disk();
    d.partitions[0].fs_label = Some(MEDIUM_LABEL.into());
    assert!(matches!(
        plan(&d, &mode("whole-disk")),
        Err(PlanError::InstallerMedium { .. })
    ));

    let mut d = sample_disk();
    d.read_only = true;
    assert!(matches!(
        plan(&d, &mode("whole-disk")),
        Err(PlanError::ReadOnly { .. })
    ));

    let mut d = sample_disk();
    d.table = Table::Mbr;
    assert!(
        plan(&d, &mode("free-space"))
            .unwrap_err()
            .to_string()
            .contains("MBR")
    );
    assert!(plan(&d, &mode("whole-disk")).is_ok());

    let mut d = sample_disk();
    d.table = Table::Corrupt {
        reason: "primary header CRC mismatch".into(),
        primary_valid: false,
        backup_valid: true,
    };
    let e = plan(&d, &mode("free-space")).unwrap_err();
    assert!(e.to_string().contains("not repaired silently"), "{e}");
    let p = plan(&d, &mode("whole-disk")).unwrap();
    assert!(p.notes.iter().any(|n| n.contains("corrupt")));
}

fn installed_disk() -> Disk {
    fake_disk(
        "/dev/vda",
        16 * GIB,
        512,
        DiskKind::BlockDevice,
        &[
            FakePartition::at(1, MIB, GIB, 512, types::ESP, NAME_ESP)
                .fs(Filesystem::Fat32, Some("EFI")),
            FakePartition::at(2, MIB + GIB, 2 * GIB, 512, types::XBOOTLDR, NAME_SYSTEM)
                .fs(Filesystem::Fat32, Some(FAT_LABEL_SYSTEM)),
            FakePartition::at(
                3,
                MIB + 3 * GIB,
                12 * GIB,
                512,
                types::RAYOS_DATA,
                NAME_DATA,
            )
            .fs(Filesystem::Ext4, Some(NAME_DATA)),
        ],
    )
}

#[test]
fn complete_install_needs_reinstall_unfinished_is_redone() {
    let d = installed_disk();
    assert!(d.rayos.is_some());
    let facts = Facts {
        manifest: Some("RayOS 0.1.0".into()),
        ..Default::default()
    };
    let opts = PlanOptions::default();
    for m in ["free-space", "whole-disk"] {
        let e = make_plan(&d, &mode(m), &facts, &opts).unwrap_err();
        assert!(matches!(e, PlanError::CompleteInstall { .. }), "{m}: {e}");
    }
    let a = answers("[target]\nmode = \"free-space\"\nreinstall = true\n");
    let p = make_plan(&d, &a, &facts, &opts).unwrap();
    assert_eq!(
        p.partitions
            .iter()
            .filter(|p| p.action == Action::Delete)
            .count(),
        2
    );

    // no manifest: an unfinished install, redone in place
    let p = plan(&d, &mode("free-space")).unwrap();
    let deleted: Vec<u32> = p
        .partitions
        .iter()
        .filter(|p| p.action == Action::Delete)
        .map(|p| p.number)
        .collect();
    assert_eq!(deleted, vec![2, 3]);
    let sys = p.partition(Role::System).unwrap();
    assert_eq!((sys.action, sys.start_bytes), (Action::Create, MIB + GIB));
    assert_eq!(p.partition(Role::Esp).unwrap().action, Action::ReuseEsp);
    assert!(p.notes.iter().any(|n| n.contains("unfinished")));
}

#[test]
fn our_unformatted_esp_is_formatted_a_foreign_broken_one_refused() {
    let mut d = installed_disk();
    d.partitions[0].filesystem = None;
    d.partitions[0].fs_label = None;
    let p = plan(&d, &mode("free-space")).unwrap();
    assert_eq!(p.partition(Role::Esp).unwrap().action, Action::Format);
    d.partitions[0].name = "EFI system partition".into();
    let e = plan(&d, &mode("free-space")).unwrap_err();
    assert!(e.to_string().contains("does not reformat an ESP"), "{e}");
}

#[test]
fn validate_rejects_overlap_misalignment_and_missing_roles() {
    let good = plan(&blank(8 * GIB, 512), &mode("whole-disk")).unwrap();
    validate(&good).unwrap();
    let mut p = good.clone();
    p.partitions[1].first_lba -= 2048;
    p.partitions[1].start_bytes -= MIB;
    p.partitions[1].size_bytes += MIB;
    assert!(validate(&p).unwrap_err().to_string().contains("overlaps"));
    let mut p = good.clone();
    p.partitions[2].first_lba += 1;
    p.partitions[2].start_bytes += 512;
    p.partitions[2].size_bytes -= 512;
    assert!(validate(&p).unwrap_err().to_string().contains("1 MiB"));
    let mut p = good.clone();
    p.partitions[2].last_lba = 16 * GIB / 512;
    p.partitions[2].size_bytes = (p.partitions[2].last_lba + 1 - p.partitions[2].first_lba) * 512;
    assert!(
        validate(&p)
            .unwrap_err()
            .to_string()
            .contains("usable area")
    );
    let mut p = good.clone();
    p.partitions.remove(0);
    assert!(
        validate(&p)
            .unwrap_err()
            .to_string()
            .contains("rayos-esp role")
    );
    // plans survive a JSON round trip unchanged
    let back: Plan = serde_json::from_str(&good.to_json()).unwrap();
    assert_eq!(back, good);
}

#[test]
fn seeded_registry_and_policy_follow_answers() {
    let p = plan(&blank(8 * GIB, 512), &mode("whole-disk")).unwrap();
    assert_eq!(p.registry.vms.len(), 1);
    let vm = &p.registry.vms[0];
    assert_eq!((vm.name.as_str(), vm.kind), ("linux", VmKind::Linux));
    assert!(
        matches!(&vm.boot, BootSpec::DirectKernel { kernel, .. } if kernel == Path::new(GUEST_KERNEL))
    );
    assert!(p.policy.linux.autostart && !p.policy.windows.enabled);
    let a = answers(
        "[target]\nmode = \"whole-disk\"\n[policy]\nwindows_enabled = true\nnetworking = \"on\"\n",
    );
    let p = plan(&blank(8 * GIB, 512), &a).unwrap();
    let names: Vec<&str> = p.registry.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["linux", "windows"]);
    assert_ne!(p.registry.vms[0].id, p.registry.vms[1].id);
    assert!(p.policy.windows.enabled && !p.policy.windows.autostart);
    assert_eq!(p.policy.linux.networking, rayos_state::Networking::On);
    // what will be written can be parsed back by its owner
    let reg = p
        .files
        .iter()
        .find(|f| f.path == "/vm/registry.json")
        .unwrap();
    let Source::Text { content } = &reg.source else {
        panic!()
    };
    assert_eq!(Registry::parse("r", content).unwrap(), p.registry);
}

/// Intents the way the wizard's partition manager gives them: deletes and
/// partitions placed by hand go through every stage of the planner (no
/// plan written by hand afterwards).
#[test]
fn explicit_intents_are_planned_by_the_same_stages() {
    let d = sample_disk();
    let base = Answers::defaults(Mode::Reuse);
    let lba = |bytes: u64| bytes / 512;
    let mut i = Intents::from_answers(&base);
    i.delete = vec![3];
    i.set(
        Role::System,
        Place::At {
            number: 4,
            first_lba: lba(117 * MIB),
            last_lba: lba(117 * MIB + 2 * GIB) - 1,
        },
    );
    i.set(
        Role::Data,
        Place::At {
            number: 5,
            first_lba: lba(117 * MIB + 2 * GIB),
            last_lba: lba(117 * MIB + 12 * GIB) - 1,
        },
    );
    let intents = |i: &Intents, d: &Disk| {
        plan_intents(
            d,
            i,
            &base.machine,
            &base.policy,
            &base.linux,
            &Facts::default(),
            &PlanOptions::default(),
        )
    };
    let p = intents(&i, &d).unwrap();
    assert_eq!((p.table, p.mode), (TableAction::Edit, Mode::Reuse));
    let act = |n: u32| p.partitions.iter().find(|q| q.number == n).unwrap().action;
    assert_eq!(
        [act(1), act(2), act(3), act(4), act(5)],
        [
            Action::ReuseEsp,
            Action::Keep,
            Action::Delete,
            Action::Create,
            Action::Create
        ]
    );
    assert_eq!(p.bytes_allocated, 12 * GIB);
    assert!(
        p.files
            .iter()
            .any(|f| f.path == ESP_FALLBACK && f.only_if_absent)
    );

    // The checks of the target see the real disk: a deleted partition
    // holding the installer's medium still refuses it.
    let mut m = d.clone();
    m.partitions[2].fs_label = Some(MEDIUM_LABEL.into());
    let e = intents(&i, &m).unwrap_err();
    assert!(matches!(e, PlanError::InstallerMedium { .. }), "{e}");

    // A hybrid MBR naming the deleted partition: refused on an edited
    // table, replaced (with the note) when the intents erase the disk.
    let mut h = d.clone();
    let p3 = h.partition(3).unwrap().clone();
    h.hybrid_mbr = vec![rayos_disk::MbrPartition {
        number: 2,
        bootable: false,
        type_byte: 0x07,
        first_lba: p3.first_lba,
        sectors: p3.last_lba + 1 - p3.first_lba,
    }];
    let e = intents(&i, &h).unwrap_err().to_string();
    assert!(
        e.contains("hybrid MBR") && e.contains("creates a partition over"),
        "{e}"
    );
    i.mode = Mode::WholeDisk;
    i.delete.clear();
    let p = intents(&i, &h).unwrap();
    assert_eq!(p.table, TableAction::New);
    assert!(p.hybrid_mbr.is_empty());
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("legacy BIOS mode stops booting")),
        "{:?}",
        p.notes
    );
    // Every old partition goes; the planner lays out the ESP in the
    // largest free region (after the hand-made ones), in the lowest slot.
    assert_eq!(
        p.partitions
            .iter()
            .filter(|q| q.action == Action::Delete)
            .count(),
        3
    );
    let esp = p.partition(Role::Esp).unwrap();
    assert_eq!(
        (esp.action, esp.number, esp.start_bytes),
        (Action::Create, 1, 117 * MIB + 12 * GIB)
    );
}
