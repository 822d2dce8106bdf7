//! The wizard's state machine driven key by key, on disk reports probed
//! from real images (sgdisk, mkfs.fat, mkfs.ext4 via rayos-testkit), with
//! every screen that matters rendered on ratatui's 80x24 `TestBackend` and
//! compared exactly with tests/snapshots/<name>.txt.
//!
//! Re-bless the snapshots after an intended layout change with
//! `RAYOS_BLESS=1 cargo test -p rayos-wizard --test screens`, then review
//! the diff.

use std::path::{Path, PathBuf};

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use rayos_disk::{Disk, DiskKind, Filesystem, FsInfo, Usage, UsageReason};
use rayos_install::answers::{Answers, Mode};
use rayos_install::apply::Event;
use rayos_install::plan::{Action, Facts, PlanOptions, Role, TableAction};
use rayos_testkit::disks::{DiskBuilder, MIB};
use rayos_wizard::wizard::{Modal, Pending, refusal};
use rayos_wizard::{DiskChoice, Effect, Key, Screen, Setup, Wizard, view};

const GIB: u64 = 1024 * MIB;

fn screen(w: &Wizard) -> String {
    let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
    t.draw(|f| view::draw(f, w)).unwrap();
    let buf = t.backend().buffer();
    let mut out = String::new();
    for y in 0..24 {
        let line: String = (0..80).map(|x| buf[(x, y)].symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn snapshot(name: &str, w: &Wizard) {
    let text = screen(w);
    assert!(text.is_ascii(), "{name}: non-ASCII output\n{text}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("RAYOS_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "snapshot {} is missing: run with RAYOS_BLESS=1 to write it\n{text}",
            path.display()
        )
    });
    assert_eq!(
        text, want,
        "screen {name} changed (RAYOS_BLESS=1 re-blesses):\n{text}"
    );
}

fn press(w: &mut Wizard, keys: &[Key]) {
    for k in keys {
        let e = w.handle(*k);
        assert!(
            matches!(e, Effect::None),
            "{k:?} on {:?} gave {e:?}",
            w.screen
        );
    }
}

fn typed(w: &mut Wizard, s: &str) {
    press(w, &Key::text(s));
}

struct Images {
    _dir: tempfile::TempDir,
    windows: PathBuf,
    blank: PathBuf,
}

fn images() -> Images {
    let dir = tempfile::tempdir().unwrap();
    let windows = dir.path().join("windows.img");
    DiskBuilder::windows_and_linux(8 * GIB)
        .build(&windows)
        .expect("building the fixture image failed (sgdisk, mkfs.fat, mtools, mkfs.ext4 needed)");
    let blank = dir.path().join("blank.img");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(8 * GIB)
        .unwrap();
    Images {
        _dir: dir,
        windows,
        blank,
    }
}

/// A probed image, renamed so snapshots do not carry temp paths.
fn probed(path: &Path, shown: &str) -> Disk {
    let mut d = rayos_disk::probe_image(path, None).unwrap();
    d.path = shown.into();
    d
}

fn choice(disk: Disk) -> DiskChoice {
    let facts = Facts::default();
    DiskChoice {
        refusal: refusal(&disk, &facts),
        disk,
        facts,
    }
}

fn setup(disks: Vec<Disk>) -> Setup {
    Setup {
        version: "0.1.0".into(),
        uefi: true,
        allow_bios: false,
        disks: disks.into_iter().map(choice).collect(),
        opts: PlanOptions {
            system_image: Some("/usr/share/rayos/rayos.efi".into()),
            recovery_image: Some("/usr/share/rayos/rayos-recovery.efi".into()),
            ..PlanOptions::default()
        },
        dry_run: false,
        answers: Answers::defaults(Mode::FreeSpace),
    }
}

/// The installer's own medium (ISO labelled RAYOS_INSTALL) and a mounted
/// disk, as block devices.
fn unusable(blank: &Path) -> Vec<Disk> {
    let mut medium = probed(blank, "/dev/sr0");
    medium.kind = DiskKind::BlockDevice;
    medium.model = Some("QEMU DVD-ROM".into());
    medium.removable = true;
    medium.size_bytes = 900 * MIB;
    medium.table = rayos_disk::Table::None;
    medium.whole_disk_filesystem = Some(FsInfo {
        filesystem: Filesystem::Iso9660,
        label: Some("RAYOS_INSTALL".into()),
        uuid: None,
    });
    let mut busy = probed(blank, "/dev/vdb");
    busy.kind = DiskKind::BlockDevice;
    busy.model = Some("QEMU HARDDISK".into());
    busy.in_use = vec![Usage {
        device: "/dev/vdb".into(),
        reason: UsageReason::Mounted {
            mount_point: "/mnt/backup".into(),
            fs_type: "ext4".into(),
        },
    }];
    vec![medium, busy]
}

fn at_partitions(w: &mut Wizard, disk_index: usize) {
    press(w, &[Key::Enter]);
    assert_eq!(w.screen, Screen::Disk);
    while w.disk_cursor < disk_index {
        press(w, &[Key::Down]);
    }
    while w.disk_cursor > disk_index {
        press(w, &[Key::Up]);
    }
    press(w, &[Key::Enter]);
    assert_eq!(w.screen, Screen::Partitions, "{:?}", w.status);
}

/// Moves the cursor to the row for which `pick` is true.
fn select(w: &mut Wizard, pick: impl Fn(&rayos_wizard::layout::Row) -> bool) {
    let i = w
        .rows()
        .iter()
        .position(pick)
        .expect("no such row on the partition screen");
    while w.row_cursor > i {
        press(w, &[Key::Up]);
    }
    while w.row_cursor < i {
        press(w, &[Key::Down]);
    }
}

fn largest_free(w: &mut Wizard) {
    let rows = w.rows();
    let best = rows
        .iter()
        .filter_map(|r| match r {
            rayos_wizard::layout::Row::Free(f) => Some(f.last_lba - f.first_lba),
            _ => None,
        })
        .max()
        .unwrap();
    select(
        w,
        |r| matches!(r, rayos_wizard::layout::Row::Free(f) if f.last_lba - f.first_lba == best),
    );
}

fn part_row(n: u32) -> impl Fn(&rayos_wizard::layout::Row) -> bool {
    move |r| matches!(r, rayos_wizard::layout::Row::Part(s) if s.number == n)
}

#[test]
fn welcome_disk_list_and_refusals() {
    let im = images();
    let mut disks = unusable(&im.blank);
    disks.push(probed(&im.windows, "/dev/vda"));
    disks[2].kind = DiskKind::BlockDevice;
    disks[2].model = Some("QEMU HARDDISK".into());
    let mut w = Wizard::new(setup(disks.clone()));
    // The cursor starts on the first disk that can be chosen.
    assert_eq!(w.disk_cursor, 2);
    snapshot("welcome", &w);
    press(&mut w, &[Key::Enter]);
    snapshot("disk-list", &w);
    // The boot medium cannot be chosen, with its reason.
    press(&mut w, &[Key::Up, Key::Up, Key::Enter]);
    assert_eq!(w.screen, Screen::Disk);
    let why = w.status.clone().unwrap();
    assert!(
        why.contains("/dev/sr0 cannot be chosen: installer medium"),
        "{why}"
    );
    snapshot("disk-medium-refused", &w);
    press(&mut w, &[Key::Down, Key::Enter]);
    assert!(
        w.status
            .clone()
            .unwrap()
            .contains("in use: /dev/vdb is mounted at /mnt/backup")
    );
    assert_eq!(w.screen, Screen::Disk);
    press(&mut w, &[Key::Esc]);
    assert_eq!(w.screen, Screen::Welcome);

    // Not booted in UEFI mode: refused with an explanation for block devices.
    let mut s = setup(disks);
    s.uefi = false;
    let mut w = Wizard::new(s);
    press(&mut w, &[Key::Enter]);
    assert_eq!(w.screen, Screen::Welcome);
    snapshot("welcome-not-uefi", &w);
    assert!(matches!(w.handle(Key::Char('q')), Effect::Quit));
}

#[test]
fn free_space_beside_windows_is_the_engines_free_space_plan() {
    let im = images();
    let mut w = Wizard::new(setup(vec![probed(&im.windows, "/dev/vda")]));
    at_partitions(&mut w, 0);
    snapshot("partitions-windows", &w);
    // Enter with nothing planned is refused and says what to do.
    press(&mut w, &[Key::Enter]);
    assert_eq!(w.screen, Screen::Partitions);
    assert!(
        w.status
            .clone()
            .unwrap()
            .contains("press i on a free region")
    );

    largest_free(&mut w);
    press(&mut w, &[Key::Char('i')]);
    snapshot("partitions-windows-install-here", &w);
    press(&mut w, &[Key::Enter]);
    assert_eq!(w.screen, Screen::VmStorage, "{:?}", w.status);
    let planned = w.planned.clone().unwrap();
    // Same layout as the engine's free-space mode, so the answers repeat it.
    assert!(planned.repeatable);
    assert_eq!(planned.answers.target.mode, Mode::FreeSpace);
    let plan = &planned.plan;
    assert_eq!(plan.table, TableAction::Edit);
    let esp = plan.partition(Role::Esp).unwrap();
    assert_eq!((esp.action, esp.number), (Action::ReuseEsp, 1));
    for n in 2..=4 {
        assert!(
            plan.partitions
                .iter()
                .any(|p| p.number == n && p.action == Action::Keep),
            "partition {n} is not kept"
        );
    }
    let engine = rayos_install::plan::make_plan(
        w.layout.as_ref().unwrap().disk(),
        &planned.answers,
        &Facts::default(),
        &w.setup.opts,
    )
    .unwrap();
    let shape = |p: &rayos_install::plan::Plan| {
        p.partitions
            .iter()
            .map(|q| (q.action, q.role, q.number, q.first_lba, q.last_lba))
            .collect::<Vec<_>>()
    };
    assert_eq!(shape(plan), shape(&engine));

    press(&mut w, &[Key::Enter]);
    assert_eq!(w.screen, Screen::Machine);
    snapshot("machine", &w);
    // A bad hostname is refused with the validator's message.
    press(&mut w, &[Key::Backspace; 5]);
    typed(&mut w, "-bad");
    press(&mut w, &[Key::Enter]);
    assert_eq!(w.screen, Screen::Machine);
    assert!(
        w.status
            .clone()
            .unwrap()
            .contains("hostname \"-bad\" is not valid")
    );
    press(&mut w, &[Key::Backspace; 4]);
    typed(&mut w, "desk");
    press(
        &mut w,
        &[Key::Down, Key::Backspace, Key::Backspace, Key::Backspace],
    );
    typed(&mut w, "Europe/Berlin");
    press(&mut w, &[Key::Enter]);
    assert_eq!(w.screen, Screen::Policy, "{:?}", w.status);
    // Windows autostart needs Windows enabled.
    press(&mut w, &[Key::Down, Key::Down, Key::Char(' ')]);
    assert!(!w.answers.policy.windows_autostart);
    press(
        &mut w,
        &[Key::Up, Key::Char(' '), Key::Down, Key::Char(' ')],
    );
    assert!(w.answers.policy.windows_enabled && w.answers.policy.windows_autostart);
    snapshot("policy", &w);
    press(&mut w, &[Key::Enter]);
    assert_eq!(w.screen, Screen::Summary);
    snapshot("summary-free-space", &w);
    let plan = &w.planned.as_ref().unwrap().plan;
    assert_eq!(plan.machine.hostname, "desk");
    assert_eq!(plan.machine.timezone, "Europe/Berlin");
    assert!(plan.policy.windows.enabled && plan.policy.windows.autostart);

    // A typo in the disk's name installs nothing.
    typed(&mut w, "vdb");
    press(&mut w, &[Key::Enter]);
    assert_eq!(w.screen, Screen::Summary);
    assert!(w.status.clone().unwrap().contains("nothing was written"));
    assert!(w.confirm_input.is_empty());
    // The right name does.
    for k in Key::text("vda") {
        assert!(matches!(w.handle(k), Effect::None));
    }
    match w.handle(Key::Enter) {
        Effect::Install(p) => assert_eq!(p.plan.target, Path::new("/dev/vda")),
        other => panic!("{other:?}"),
    }
    assert_eq!(w.screen, Screen::Progress);
}

#[test]
fn partition_edits_undo_reset_and_confirmations() {
    let im = images();
    let mut w = Wizard::new(setup(vec![probed(&im.windows, "/dev/vda")]));
    at_partitions(&mut w, 0);
    let rows0 = w.rows();

    // Delete the Linux partition: a wrong word changes nothing.
    select(&mut w, part_row(4));
    press(&mut w, &[Key::Char('d')]);
    assert!(matches!(
        &w.modal,
        Some(Modal::Confirm { expect, action: Pending::Delete(4), .. }) if expect == "linux-root"
    ));
    snapshot("confirm-delete", &w);
    typed(&mut w, "linux");
    press(&mut w, &[Key::Enter]);
    assert!(w.modal.is_none());
    assert_eq!(w.rows(), rows0);
    assert!(w.status.clone().unwrap().contains("nothing changed"));
    press(&mut w, &[Key::Char('d')]);
    typed(&mut w, "linux-root");
    press(&mut w, &[Key::Enter]);
    assert_eq!(w.layout.as_ref().unwrap().deleted, vec![4]);

    // A new 3 GiB data partition where Linux was, then the system in the
    // rest of the disk; sizes are checked against the free region.
    select(
        &mut w,
        |r| matches!(r, rayos_wizard::layout::Row::Free(f) if f.first_lba < 1_000_000),
    );
    press(&mut w, &[Key::Char('n')]);
    typed(&mut w, "100GiB");
    press(&mut w, &[Key::Enter, Key::Down, Key::Down, Key::Enter]);
    assert!(
        w.status.clone().unwrap().contains("does not fit"),
        "{:?}",
        w.status
    );
    largest_free(&mut w);
    press(&mut w, &[Key::Char('n')]);
    snapshot("new-partition-size", &w);
    typed(&mut w, "3GiB");
    press(&mut w, &[Key::Enter]);
    snapshot("new-partition-role", &w);
    press(&mut w, &[Key::Down, Key::Down, Key::Enter]);
    let data = w
        .layout
        .as_ref()
        .unwrap()
        .slots
        .iter()
        .find(|s| s.role == Some(Role::Data))
        .cloned()
        .unwrap();
    assert!(data.new);
    assert_eq!((data.last_lba + 1 - data.first_lba) * 512, 3 * GIB);
    assert_eq!(data.first_lba % 2048, 0);
    largest_free(&mut w);
    press(&mut w, &[Key::Char('n')]);
    typed(&mut w, "2G");
    press(&mut w, &[Key::Enter, Key::Down, Key::Enter]);
    snapshot("partitions-edited", &w);

    // Undo the system partition, reset everything, redo one step.
    press(&mut w, &[Key::Char('u')]);
    assert!(
        !w.layout
            .as_ref()
            .unwrap()
            .slots
            .iter()
            .any(|s| s.role == Some(Role::System))
    );
    press(&mut w, &[Key::Char('r')]);
    assert_eq!(w.rows(), rows0);
    assert!(!w.layout.as_ref().unwrap().is_edited());

    // Giving the NTFS partition a role needs its name typed; Esc cancels.
    select(&mut w, part_row(3));
    press(&mut w, &[Key::Char('a'), Key::Down, Key::Down, Key::Enter]);
    assert!(matches!(
        &w.modal,
        Some(Modal::Confirm {
            action: Pending::Assign(3, Some(Role::Data)),
            ..
        })
    ));
    press(&mut w, &[Key::Esc]);
    assert!(w.layout.as_ref().unwrap().slot(3).unwrap().role.is_none());
    // The ESP cannot become the system partition.
    select(&mut w, part_row(1));
    press(&mut w, &[Key::Char('a'), Key::Down]);
    snapshot("role-existing", &w);
    press(&mut w, &[Key::Enter]);
    assert!(
        w.status.clone().unwrap().contains("never reformatted"),
        "{:?}",
        w.status
    );

    // Whole disk: typed "erase", then the engine's whole-disk plan.
    press(&mut w, &[Key::Char('w')]);
    typed(&mut w, "erase");
    press(&mut w, &[Key::Enter]);
    assert!(w.layout.as_ref().unwrap().whole_disk);
    snapshot("partitions-whole-disk", &w);
    press(&mut w, &[Key::Char('?')]);
    snapshot("help-partitions", &w);
    press(&mut w, &[Key::Char('x')]);
    assert!(w.modal.is_none());
    // Own partitions after "whole disk": one of them for the Linux VMs,
    // shown as such on the VM storage screen.
    press(&mut w, &[Key::Char('n')]);
    typed(&mut w, "4GiB");
    press(
        &mut w,
        &[Key::Enter, Key::Down, Key::Down, Key::Down, Key::Enter],
    );
    assert_eq!(w.vm_partition(Role::VmLinux), Some(1), "{:?}", w.status);
    press(&mut w, &[Key::Char('u')]);
    assert_eq!(w.vm_partition(Role::VmLinux), None);
    press(&mut w, &[Key::Enter]);
    let p = w.planned.clone().unwrap();
    assert_eq!(p.answers.target.mode, Mode::WholeDisk);
    assert_eq!(p.plan.table, TableAction::New);
    // Esc walks back, one screen at a time.
    press(&mut w, &[Key::Esc]);
    assert_eq!(w.screen, Screen::Partitions);
    press(&mut w, &[Key::Esc]);
    assert_eq!(w.screen, Screen::Disk);
    press(&mut w, &[Key::Char('?')]);
    assert_eq!(w.modal, Some(Modal::Help));
    snapshot("help-disk", &w);
    press(&mut w, &[Key::Esc]);
    assert!(w.modal.is_none());
}

#[test]
fn progress_failure_retry_and_finish() {
    let im = images();
    let mut w = Wizard::new(setup(vec![probed(&im.blank, "/dev/vdc")]));
    at_partitions(&mut w, 0);
    press(&mut w, &[Key::Char('i'), Key::Enter]);
    assert_eq!(w.screen, Screen::VmStorage, "{:?}", w.status);
    // A dedicated Linux VM partition: the engine lays it out.
    press(&mut w, &[Key::Char(' '), Key::Char('e')]);
    typed(&mut w, "1GiB");
    press(&mut w, &[Key::Enter]);
    snapshot("vm-storage", &w);
    press(&mut w, &[Key::Enter]);
    // `i` is the engine's free-space layout, so the engine also lays out
    // the VM partition (ESP, system, VM storage, data).
    assert_eq!(w.screen, Screen::Machine, "{:?}", w.status);
    let planned = w.planned.clone().unwrap();
    assert!(planned.repeatable);
    let vm = planned.plan.partition(Role::VmLinux).unwrap();
    assert_eq!((vm.action, vm.size_bytes), (Action::Create, GIB));
    assert!(vm.first_lba < planned.plan.partition(Role::Data).unwrap().first_lba);
    press(&mut w, &[Key::Enter, Key::Enter]);
    assert_eq!(w.screen, Screen::Summary, "{:?}", w.status);
    snapshot("summary-vm-partition", &w);
    typed(&mut w, "vdc");
    let Effect::Install(planned) = w.handle(Key::Enter) else {
        panic!("no install")
    };
    let steps = rayos_install::apply::steps(&planned.plan);
    w.on_event(&Event::StepStarted {
        step: steps[0].clone(),
        index: 0,
        total: steps.len(),
    });
    w.on_event(&Event::StepDone {
        step: steps[0].clone(),
        index: 0,
        total: steps.len(),
        seconds: 0.2,
    });
    w.on_event(&Event::StepStarted {
        step: steps[1].clone(),
        index: 1,
        total: steps.len(),
    });
    // Ctrl-C is refused while the disk is written.
    assert!(matches!(w.handle(Key::Interrupt), Effect::None));
    snapshot("progress-running", &w);
    w.on_finished(Err("step format-esp failed: mkfs.fat exited with 1".into()));
    snapshot("progress-failed", &w);
    assert!(matches!(w.handle(Key::Char('r')), Effect::Retry(_)));
    w.on_retry_plan(*planned.clone());
    for (i, s) in steps.iter().enumerate() {
        w.on_event(&Event::StepDone {
            step: s.clone(),
            index: i,
            total: steps.len(),
            seconds: 0.1,
        });
    }
    w.on_finished(Ok(()));
    snapshot("progress-done", &w);
    assert!(matches!(
        w.handle(Key::Char('p')),
        Effect::Finish(rayos_wizard::After::PowerOff)
    ));
}

#[test]
fn long_lists_scroll_with_the_cursor() {
    use rayos_install::sample::{FakePartition, fake_disk};
    let parts: Vec<FakePartition> = (1..=20u32)
        .map(|n| {
            FakePartition::at(
                n,
                n as u64 * 256 * MIB,
                200 * MIB,
                512,
                rayos_disk::types::LINUX_FS,
                &format!("part{n}"),
            )
        })
        .collect();
    let big = fake_disk("/dev/vda", 64 * GIB, 512, DiskKind::BlockDevice, &parts);
    let disks: Vec<Disk> = (0..12)
        .map(|i| {
            let mut d = big.clone();
            d.path = format!("/dev/vd{}", (b'a' + i) as char).into();
            d
        })
        .collect();
    let mut w = Wizard::new(setup(disks));
    press(&mut w, &[Key::Enter]);
    press(&mut w, &[Key::Down; 9]);
    snapshot("disk-list-scrolled", &w);
    assert!(screen(&w).contains(">/dev/vdj"));
    press(&mut w, &[Key::Enter]);
    press(&mut w, &[Key::Down; 30]);
    snapshot("partitions-scrolled", &w);
    // At the end: the last row (the free space after partition 20) is on
    // screen and selected; the keys line is still there.
    press(&mut w, &[Key::Down; 30]);
    let s = screen(&w);
    assert!(s.contains(">-     5.1 GiB"), "{s}");
    assert!(s.contains("more above") && !s.contains("more below"), "{s}");
    assert!(s.contains("u undo  r reset"), "{s}");
}

#[test]
fn an_own_vm_partition_needs_room_in_a_hand_made_layout() {
    let im = images();
    let mut w = Wizard::new(setup(vec![probed(&im.blank, "/dev/vdc")]));
    at_partitions(&mut w, 0);
    // ESP, system and data by hand, data taking the rest: no room for the
    // engine's VM partition, and the status says what to do.
    press(&mut w, &[Key::Char('n')]);
    typed(&mut w, "1GiB");
    press(&mut w, &[Key::Enter, Key::Enter]);
    largest_free(&mut w);
    press(&mut w, &[Key::Char('n')]);
    typed(&mut w, "3GiB");
    press(&mut w, &[Key::Enter, Key::Down, Key::Enter]);
    largest_free(&mut w);
    press(
        &mut w,
        &[Key::Char('n'), Key::Enter, Key::Down, Key::Down, Key::Enter],
    );
    press(&mut w, &[Key::Enter]);
    assert_eq!(w.screen, Screen::VmStorage, "{:?}", w.status);
    assert!(!w.planned.as_ref().unwrap().repeatable);
    press(&mut w, &[Key::Down, Key::Char(' '), Key::Enter]);
    assert_eq!(w.screen, Screen::VmStorage);
    let why = w.status.clone().unwrap();
    assert!(why.contains("make the data partition smaller"), "{why}");
    // Data smaller by hand: now it fits.
    press(&mut w, &[Key::Char(' '), Key::Esc]);
    assert_eq!(w.screen, Screen::Partitions);
    press(&mut w, &[Key::Char('u')]);
    largest_free(&mut w);
    press(&mut w, &[Key::Char('n')]);
    typed(&mut w, "2GiB");
    press(
        &mut w,
        &[Key::Enter, Key::Down, Key::Down, Key::Enter, Key::Enter],
    );
    press(&mut w, &[Key::Down, Key::Char(' '), Key::Char('e')]);
    typed(&mut w, "1GiB");
    press(&mut w, &[Key::Enter, Key::Enter]);
    assert_eq!(w.screen, Screen::Machine, "{:?}", w.status);
    let p = &w.planned.as_ref().unwrap().plan;
    assert_eq!(p.partition(Role::VmWindows).unwrap().size_bytes, GIB);
    assert_eq!(p.partition(Role::Data).unwrap().size_bytes, 2 * GIB);
}

#[test]
fn going_back_after_a_partial_install_reads_the_disk_again() {
    let im = images();
    let mut w = Wizard::new(setup(vec![probed(&im.blank, "/dev/vdc")]));
    at_partitions(&mut w, 0);
    press(
        &mut w,
        &[
            Key::Char('i'),
            Key::Enter,
            Key::Enter,
            Key::Enter,
            Key::Enter,
        ],
    );
    typed(&mut w, "vdc");
    let Effect::Install(planned) = w.handle(Key::Enter) else {
        panic!("no install")
    };
    let total = rayos_install::apply::steps(&planned.plan).len();
    // Nothing written yet: Esc goes back to the summary, plan kept.
    w.on_event(&Event::StepStarted {
        step: "partition".into(),
        index: 0,
        total,
    });
    w.on_finished(Err("cannot open /dev/vdc for writing".into()));
    assert!(matches!(w.handle(Key::Esc), Effect::None));
    assert_eq!(w.screen, Screen::Summary);
    assert!(w.planned.is_some());
    // The table was written: going back means reading the disk again.
    typed(&mut w, "vdc");
    assert!(matches!(w.handle(Key::Enter), Effect::Install(_)));
    w.on_event(&Event::StepDone {
        step: "partition".into(),
        index: 0,
        total,
        seconds: 0.1,
    });
    w.on_event(&Event::StepStarted {
        step: "format-esp".into(),
        index: 1,
        total,
    });
    w.on_finished(Err("mkfs.fat failed".into()));
    assert!(matches!(w.handle(Key::Esc), Effect::Rescan));
    // The runner reads the disk again; here: a report with the new table.
    let mut again = probed(&im.windows, "/dev/vdc");
    again.kind = DiskKind::ImageFile;
    w.on_rescanned(choice(again));
    assert_eq!(w.screen, Screen::Partitions);
    assert_eq!(w.rows().len(), 5, "the disk as it is now");
    assert!(w.planned.is_none());
    assert!(w.status.clone().unwrap().contains("shown as it is now"));
}

#[test]
fn the_debian_vms_user_and_password_are_asked_and_only_hashed() {
    let imgs = images();
    let mut s = setup(vec![probed(&imgs.blank, "/dev/vdb")]);
    s.opts.linux_vm_image = Some("/run/rayos/medium/rayos/linux-vm.qcow2.zst".into());
    let mut w = Wizard::new(s);
    w.screen = Screen::Machine;
    assert_eq!(w.machine_rows(), 7);
    // The medium installs Debian: no user, no way on.
    press(&mut w, &[Key::Enter]);
    assert_eq!(w.screen, Screen::Machine);
    assert_eq!(w.machine_cursor, 4);
    assert!(
        w.status.clone().unwrap().contains("type a user name"),
        "{:?}",
        w.status
    );
    w.machine_cursor = 0;
    press(&mut w, &[Key::Down; 4]);
    typed(&mut w, "alice");
    press(&mut w, &[Key::Down]);
    typed(&mut w, "s3cret pw");
    press(&mut w, &[Key::Down]);
    typed(&mut w, "s3cret pv");
    let shown = screen(&w);
    assert!(
        shown.contains("Linux VM user") && shown.contains("alice"),
        "{shown}"
    );
    assert!(
        !shown.contains("s3cret"),
        "a password is never shown:\n{shown}"
    );
    press(&mut w, &[Key::Enter]);
    assert_eq!(w.screen, Screen::Machine);
    assert!(w.status.clone().unwrap().contains("passwords differ"));
    assert_eq!(w.machine_cursor, 6);
    typed(&mut w, "s3cret pw");
    press(&mut w, &[Key::Enter]);
    assert_eq!(w.screen, Screen::Policy, "{:?}", w.status);
    let l = &w.answers.linux;
    assert_eq!(l.user.as_deref(), Some("alice"));
    assert!(rayos_state::guest::verify_password(
        "s3cret pw",
        l.password_hash.as_deref().unwrap()
    ));
    assert!(
        w.linux[1].is_empty() && w.linux[2].is_empty(),
        "plaintext dropped"
    );
    // The saved answers carry the hash, not the password.
    let toml = rayos_wizard::answers_toml::to_toml(&w.answers, &[]);
    assert!(toml.contains("password_hash = \"$6$"), "{toml}");
    let back = rayos_install::answers::Answers::parse("saved.toml", &toml).unwrap();
    assert_eq!(back.linux.user.as_deref(), Some("alice"));
    assert_eq!(back.linux.password_hash, l.password_hash);
    assert!(!toml.contains("s3cret"));
    // No image on the medium (a development build): no rows, the test guest.
    let mut w = Wizard::new(setup(vec![probed(&imgs.blank, "/dev/vdb")]));
    w.screen = Screen::Machine;
    assert_eq!(w.machine_rows(), 4);
}

/// With the Debian image on the medium, the disk screens plan before the
/// user is known (they must not fail for it), the machine screen requires
/// the user, and the confirmed plan installs Debian with that user.
#[test]
fn with_the_debian_image_the_layout_plans_first_and_the_summary_names_the_user() {
    let imgs = images();
    let mut s = setup(vec![probed(&imgs.blank, "/dev/vda")]);
    s.opts.linux_vm_image = Some("/run/rayos/medium/rayos/linux-vm.qcow2.zst".into());
    let mut w = Wizard::new(s);
    at_partitions(&mut w, 0);
    press(&mut w, &[Key::Char('i'), Key::Enter]);
    assert_eq!(w.screen, Screen::VmStorage, "{:?}", w.status);
    press(&mut w, &[Key::Enter]);
    assert_eq!(w.screen, Screen::Machine, "{:?}", w.status);
    press(&mut w, &[Key::Enter]);
    assert_eq!(w.screen, Screen::Machine);
    assert!(w.status.clone().unwrap().contains("type a user name"));
    typed(&mut w, "alice");
    press(&mut w, &[Key::Down]);
    typed(&mut w, "pw one");
    press(&mut w, &[Key::Down]);
    typed(&mut w, "pw one");
    press(&mut w, &[Key::Enter]);
    assert_eq!(w.screen, Screen::Policy, "{:?}", w.status);
    press(&mut w, &[Key::Enter]);
    assert_eq!(w.screen, Screen::Summary, "{:?}", w.status);
    let plan = &w.planned.as_ref().unwrap().plan;
    let vm = plan.registry.by_name("linux").unwrap();
    assert_eq!(vm.guest.as_ref().map(|g| g.user.as_str()), Some("alice"));
    let shown = screen(&w);
    assert!(
        shown.contains("Linux VM: Debian 12, user alice, 32 GiB thin disk"),
        "{shown}"
    );
}

/// Issue #10 item 4, the wizard's face: a partition of a system the
/// engine has no name for (here APFS-typed, holding data) needs the same
/// typed confirmation as a Windows or Linux one; a partition read to be
/// all zeros does not. The facts are gathered from the real image.
#[test]
fn roles_on_partitions_of_unknown_systems_need_the_typed_confirmation() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("others.img");
    DiskBuilder::new(8 * GIB)
        .partition(
            0,
            100 * MIB,
            "EFI system partition",
            rayos_testkit::disks::Content::Esp { files: Vec::new() },
        )
        .partition(
            0,
            2 * GIB,
            "Macintosh HD",
            rayos_testkit::disks::Content::Header {
                type_code: "af0a".into(),
            },
        )
        .partition(
            0,
            2 * GIB,
            "spare",
            rayos_testkit::disks::Content::Empty {
                type_code: "12345678-1234-5678-9abc-def012345678".into(),
            },
        )
        .build(&img)
        .unwrap();
    let real = rayos_disk::probe_image(&img, None).unwrap();
    let facts = rayos_install::facts::gather(&real).unwrap();
    let mut s = setup(vec![probed(&img, "/dev/vda")]);
    s.disks[0].facts = facts;
    let mut w = Wizard::new(s);
    at_partitions(&mut w, 0);

    select(&mut w, part_row(2));
    press(&mut w, &[Key::Char('a'), Key::Down, Key::Down, Key::Enter]);
    assert!(
        matches!(
            &w.modal,
            Some(Modal::Confirm { expect, action: Pending::Assign(2, Some(Role::Data)), .. })
                if expect == "Macintosh HD"
        ),
        "no typed confirmation for the APFS partition: {:?}",
        w.modal
    );
    typed(&mut w, "Macintosh HD");
    press(&mut w, &[Key::Enter]);
    assert_eq!(
        w.layout.as_ref().unwrap().slot(2).unwrap().role,
        Some(Role::Data)
    );
    // All zeros: nothing to lose, no confirmation.
    select(&mut w, part_row(3));
    press(&mut w, &[Key::Char('a'), Key::Down, Key::Enter]);
    assert!(w.modal.is_none(), "{:?}", w.modal);
    assert_eq!(
        w.layout.as_ref().unwrap().slot(3).unwrap().role,
        Some(Role::System)
    );
    w.replan().unwrap();
    let plan = &w.planned.as_ref().unwrap().plan;
    assert_eq!(plan.partition(Role::Data).unwrap().number, 2);
    assert_eq!(plan.partition(Role::System).unwrap().number, 3);
    assert_eq!(plan.partition(Role::Esp).unwrap().action, Action::ReuseEsp);
}

/// A USB stick as the disk list shows it.
fn stick(blank: &Path) -> Disk {
    let mut d = probed(blank, "/dev/sda");
    d.kind = DiskKind::BlockDevice;
    d.model = Some("QEMU HARDDISK".into());
    d.removable = true;
    d
}

/// Issue 17: the disk list follows disks that appear and go.
#[test]
fn the_disk_list_follows_a_stick_plugged_in_and_pulled_out() {
    let im = images();
    let mut vda = probed(&im.windows, "/dev/vda");
    vda.kind = DiskKind::BlockDevice;
    vda.model = Some("QEMU HARDDISK".into());
    let mut w = Wizard::new(setup(vec![vda.clone()]));
    press(&mut w, &[Key::Enter]);
    assert_eq!(w.screen, Screen::Disk);
    assert_eq!(w.disk_cursor, 0);

    // Plugged in: listed, said on the status line, cursor stays on vda.
    let with_stick: Vec<DiskChoice> = vec![choice(stick(&im.blank)), choice(vda.clone())];
    w.on_disks_changed(with_stick);
    assert_eq!(w.screen, Screen::Disk);
    assert_eq!(w.setup.disks.len(), 2);
    assert_eq!(
        w.setup.disks[w.disk_cursor].disk.path,
        Path::new("/dev/vda")
    );
    assert_eq!(w.status.as_deref(), Some("disk /dev/sda appeared"));
    snapshot("disk-list-stick-plugged", &w);

    // It can be chosen (8 GiB, empty) and pulled out again afterwards.
    press(&mut w, &[Key::Up, Key::Enter]);
    assert_eq!(w.screen, Screen::Partitions);
    assert_eq!(w.chosen, Some(0));
    press(&mut w, &[Key::Char('i')]);
    assert!(w.layout.is_some());
    w.on_disks_changed(vec![choice(vda.clone())]);
    assert_eq!(
        w.screen,
        Screen::Disk,
        "the chosen disk went: back to the list"
    );
    assert_eq!(w.chosen, None);
    assert!(w.layout.is_none() && w.planned.is_none());
    assert_eq!(
        w.status.as_deref(),
        Some("/dev/sda was removed: nothing was written to it; choose a disk again")
    );
    snapshot("disk-list-chosen-removed", &w);

    // Another disk coming and going keeps the chosen one and its edits.
    press(&mut w, &[Key::Enter]);
    assert_eq!(w.screen, Screen::Partitions);
    largest_free(&mut w);
    press(&mut w, &[Key::Char('i')]);
    let rows = w.rows();
    w.on_disks_changed(vec![choice(vda.clone()), choice(stick(&im.blank))]);
    assert_eq!(w.screen, Screen::Partitions);
    assert_eq!(w.chosen, Some(0));
    assert_eq!(w.rows(), rows, "the partition edits are kept");
    w.on_disks_changed(vec![choice(vda)]);
    assert_eq!(w.screen, Screen::Partitions);
    assert_eq!(w.status.as_deref(), Some("disk /dev/sda was removed"));
    assert_eq!(w.rows(), rows);
}

/// While the disk is written the list is left alone.
#[test]
fn disk_changes_wait_while_the_disk_is_written() {
    let im = images();
    let mut w = Wizard::new(setup(vec![probed(&im.blank, "/dev/vda")]));
    at_partitions(&mut w, 0);
    press(
        &mut w,
        &[
            Key::Char('i'),
            Key::Enter,
            Key::Enter,
            Key::Enter,
            Key::Enter,
        ],
    );
    assert_eq!(w.screen, Screen::Summary, "{:?}", w.status);
    typed(&mut w, "vda");
    assert!(matches!(w.handle(Key::Enter), Effect::Install(_)));
    assert_eq!(w.screen, Screen::Progress);
    w.on_disks_changed(vec![]);
    assert_eq!(w.screen, Screen::Progress);
    assert_eq!(w.chosen, Some(0));
    assert_eq!(w.setup.disks.len(), 1);
}
