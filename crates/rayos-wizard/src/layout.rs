//! The partition manager's model: the edits a person makes to one disk, and
//! how they become a [`Plan`] of the installer engine.
//!
//! Protocol: the real [`Disk`] report never changes; the person's actions
//! are a list of undo groups of [`Edit`]s replayed over it ([`Layout`]).
//! Nothing is written here, and nothing here lays out or rewrites a plan:
//! [`plan()`] hands the engine the layout as partition intents, and the
//! engine's stages (consent, sizes, the ESP rule, placement, files,
//! `validate`) make the plan — one code path with the unattended install:
//!
//! - "whole disk" with nothing created afterwards → `mode = "whole-disk"`
//!   on the real disk ([`make_plan`]);
//! - anything else → the answers `mode = "reuse"` naming the existing
//!   partitions that have a role (those confirmed by typing listed in
//!   `format`), as [`Intents`] with what answer files cannot say added
//!   ([`Layout::intents`]): the partitions deleted, the partitions made
//!   here at their sectors, and a new table after "whole disk" or on a
//!   blank disk; [`plan::plan_intents`] plans them on the real disk.
//! - the layout is then compared with what `free-space` and `whole-disk`
//!   give on the real disk; when one gives the same partitions, that plan
//!   and its answers are used, so `--save-answers` writes a file that
//!   repeats the install unattended ([`Planned::repeatable`](Planned#structfield.repeatable)).
//!
//! Limits: the engine's answer file cannot say "delete partition N" or
//! "create partition N here", so a layout with such edits saves answers
//! that name the partitions as they will be after the install (they are
//! listed in a comment). Only GPT and blank disks can be edited partition
//! by partition; MBR and damaged tables offer "whole disk" only.

use rayos_disk::gpt::{free_runs, standard_usable_area};
use rayos_disk::types::TypeFamily;
use rayos_disk::{Disk, PartitionReport, Table};
use rayos_install::answers::{Answers, Located, Mode, PartRef, Target, VmStorage, human_size};
use rayos_install::plan::{
    self, ALIGN, Action, Facts, Intents, Place, Plan, PlanError, PlanOptions, Role, TableAction,
    make_plan,
};

/// Every role a partition can be given, in menu order.
pub const ROLES: [Role; 5] = Role::ALL;

/// How a role is named on screen.
pub fn role_words(r: Role) -> &'static str {
    match r {
        Role::Esp => "ESP (EFI system)",
        Role::System => "RayOS system",
        Role::Data => "RayOS data",
        Role::VmLinux => "Linux VM storage",
        Role::VmWindows => "Windows VM storage",
    }
}

/// One change the person asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Every partition goes; a new GPT is written.
    WholeDisk,
    /// Remove an existing or a created partition.
    Delete {
        /// The partition's number.
        number: u32,
    },
    /// A new partition for `role`.
    Create {
        /// The number the new partition gets.
        number: u32,
        /// Its first logical sector.
        first_lba: u64,
        /// Its last logical sector (inclusive).
        last_lba: u64,
        /// What RayOS uses it for.
        role: Role,
    },
    /// Give a partition a role (or take it away).
    Assign {
        /// The partition's number.
        number: u32,
        /// The role, or `None` to take it away.
        role: Option<Role>,
    },
}

/// A partition as the layout has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The partition's number in the GPT.
    pub number: u32,
    /// Its first logical sector.
    pub first_lba: u64,
    /// Its last logical sector (inclusive).
    pub last_lba: u64,
    /// True for partitions that exist only in the wizard.
    pub new: bool,
    /// The role RayOS gives it, if any.
    pub role: Option<Role>,
}

/// Unpartitioned space (start aligned to 1 MiB, end exact).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Free {
    /// The first logical sector (aligned to 1 MiB).
    pub first_lba: u64,
    /// The last logical sector (inclusive).
    pub last_lba: u64,
}

/// A row of the partition table on screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// A partition.
    Part(Slot),
    /// Free space.
    Free(Free),
}

/// Why an edit was refused (shown on the status line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The edit is not possible; says why, for the person.
    #[error("{0}")]
    Refused(String),
}

fn refused<T>(m: impl Into<String>) -> Result<T, EditError> {
    Err(EditError::Refused(m.into()))
}

/// The disk as edited so far.
#[derive(Debug, Clone)]
pub struct Layout {
    disk: Disk,
    groups: Vec<Vec<Edit>>,
    /// True when the person chose to use the whole disk (a new GPT).
    pub whole_disk: bool,
    /// Existing partitions deleted.
    pub deleted: Vec<u32>,
    /// Live partitions, by position.
    pub slots: Vec<Slot>,
}

impl Layout {
    /// A layout of `disk` with no edits yet.
    pub fn new(disk: &Disk) -> Layout {
        let mut l = Layout {
            disk: disk.clone(),
            groups: Vec::new(),
            whole_disk: false,
            deleted: Vec::new(),
            slots: Vec::new(),
        };
        l.replay();
        l
    }

    /// The disk being edited, as it was read.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// The disk's logical sector size in bytes.
    pub fn sector_size(&self) -> u64 {
        self.disk.logical_sector_size as u64
    }

    /// Whether the disk can be edited partition by partition.
    pub fn editable(&self) -> Result<(), EditError> {
        if self.whole_disk {
            return Ok(());
        }
        match &self.disk.table {
            Table::Gpt => Ok(()),
            Table::None if self.disk.whole_disk_filesystem.is_none() => Ok(()),
            Table::None => refused(
                "the whole disk holds a filesystem without a partition table: only w (whole disk) can use it",
            ),
            Table::Mbr => refused(
                "this disk has an MBR (DOS) table; RayOS needs GPT: only w (whole disk) can use it",
            ),
            Table::Corrupt { .. } => {
                refused("the partition table is damaged: only w (whole disk) can use it")
            }
            Table::Unreadable { reason } => refused(format!("the disk cannot be read: {reason}")),
        }
    }

    fn replay(&mut self) {
        self.whole_disk = false;
        self.deleted.clear();
        self.slots = self
            .disk
            .partitions
            .iter()
            .map(|p| Slot {
                number: p.number,
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                new: false,
                role: None,
            })
            .collect();
        let edits: Vec<Edit> = self.groups.iter().flatten().cloned().collect();
        for e in edits {
            self.apply_edit(&e);
        }
        self.slots.sort_by_key(|s| s.first_lba);
    }

    fn apply_edit(&mut self, e: &Edit) {
        match *e {
            Edit::WholeDisk => {
                self.whole_disk = true;
                for s in self.slots.drain(..) {
                    if !s.new {
                        self.deleted.push(s.number);
                    }
                }
            }
            Edit::Delete { number } => {
                if let Some(i) = self.slots.iter().position(|s| s.number == number) {
                    let s = self.slots.remove(i);
                    if !s.new {
                        self.deleted.push(number);
                    }
                }
            }
            Edit::Create {
                number,
                first_lba,
                last_lba,
                role,
            } => self.slots.push(Slot {
                number,
                first_lba,
                last_lba,
                new: true,
                role: Some(role),
            }),
            Edit::Assign { number, role } => {
                if let Some(s) = self.slots.iter_mut().find(|s| s.number == number) {
                    s.role = role;
                }
            }
        }
    }

    fn push(&mut self, group: Vec<Edit>) {
        self.groups.push(group);
        self.replay();
    }

    /// Undo the last action; false when there is nothing to undo.
    pub fn undo(&mut self) -> bool {
        let done = self.groups.pop().is_some();
        self.replay();
        done
    }

    /// Back to the disk as it is.
    pub fn reset(&mut self) {
        self.groups.clear();
        self.replay();
    }

    /// Whether the person changed anything yet.
    pub fn is_edited(&self) -> bool {
        !self.groups.is_empty()
    }

    /// The live partition numbered `number`.
    pub fn slot(&self, number: u32) -> Option<&Slot> {
        self.slots.iter().find(|s| s.number == number)
    }

    /// The real partition behind a slot (None for created ones).
    pub fn existing(&self, number: u32) -> Option<&PartitionReport> {
        match self.slot(number) {
            Some(s) if !s.new => self.disk.partition(number),
            _ => None,
        }
    }

    /// Free regions of the layout, in the engine's 1 MiB rounding.
    pub fn free(&self) -> Vec<Free> {
        if self.editable().is_err() {
            return Vec::new();
        }
        let ss = self.disk.logical_sector_size;
        let (first, last) = standard_usable_area(self.disk.size_bytes / ss.max(1) as u64, ss);
        let align = (ALIGN / self.sector_size().max(1)).max(1);
        free_runs(
            first,
            last,
            self.slots.iter().map(|s| (s.first_lba, s.last_lba)),
            align,
        )
        .into_iter()
        .map(|r| Free {
            first_lba: r.first_lba,
            last_lba: r.last_lba,
        })
        .collect()
    }

    /// Partitions and free regions, by position.
    pub fn rows(&self) -> Vec<Row> {
        let mut rows: Vec<(u64, Row)> = self
            .slots
            .iter()
            .map(|s| (s.first_lba, Row::Part(s.clone())))
            .chain(self.free().into_iter().map(|f| (f.first_lba, Row::Free(f))))
            .collect();
        rows.sort_by_key(|(at, _)| *at);
        rows.into_iter().map(|(_, r)| r).collect()
    }

    fn next_number(&self, taken: &[u32]) -> Option<u32> {
        let free = |n: &u32| !taken.contains(n) && self.slot(*n).is_none();
        // Numbers never used on this disk first, so a new partition is not
        // mistaken for the deleted one of the same number; then deleted ones.
        (1..=128u32)
            .find(|n| free(n) && (self.whole_disk || self.disk.partition(*n).is_none()))
            .or_else(|| (1..=128u32).find(|n| free(n) && self.deleted.contains(n)))
    }

    /// The existing ESP the engine reuses when no partition has the ESP
    /// role (the disk's first ESP that is not deleted).
    pub fn implicit_esp(&self) -> Option<u32> {
        if self.role_holder(Role::Esp).is_some() || self.whole_disk {
            return None;
        }
        plan::first_kept_esp(&self.disk, &self.deleted).map(|p| p.number)
    }

    fn role_holder(&self, role: Role) -> Option<u32> {
        self.slots
            .iter()
            .find(|s| s.role == Some(role))
            .map(|s| s.number)
    }

    /// Erase everything (the person has typed "erase").
    pub fn whole_disk(&mut self) {
        self.push(vec![Edit::WholeDisk]);
    }

    /// Delete a partition (the person has confirmed if it existed).
    pub fn delete(&mut self, number: u32) -> Result<(), EditError> {
        self.editable()?;
        if self.slot(number).is_none() {
            return refused(format!("there is no partition {number}"));
        }
        self.push(vec![Edit::Delete { number }]);
        Ok(())
    }

    /// Sectors `[first, last]` for `size` bytes at the start of `free`
    /// (`None`: all of it, ending on a 1 MiB boundary when that still
    /// leaves something).
    fn carve(&self, free: Free, size: Option<u64>) -> Result<(u64, u64), EditError> {
        let ss = self.sector_size();
        let avail = (free.last_lba + 1 - free.first_lba) * ss;
        match size {
            Some(b) => {
                let b = b.div_ceil(ALIGN) * ALIGN;
                if b > avail {
                    return refused(format!(
                        "{} does not fit: the free region holds {}",
                        human_size(b),
                        human_size(avail)
                    ));
                }
                Ok((free.first_lba, free.first_lba + b / ss - 1))
            }
            None => {
                let align = ALIGN / ss;
                let end = (free.last_lba + 1) / align * align;
                let last = if end > free.first_lba {
                    end - 1
                } else {
                    free.last_lba
                };
                Ok((free.first_lba, last))
            }
        }
    }

    /// Create a partition of `size` bytes (rounded up to 1 MiB; `None`: the
    /// whole region) at the start of `free` for `role`.
    pub fn create(&mut self, free: Free, size: Option<u64>, role: Role) -> Result<u32, EditError> {
        self.editable()?;
        if !self.free().contains(&free) {
            return refused("that free region is gone");
        }
        if let Some(n) = self.role_holder(role) {
            return refused(format!(
                "partition {n} already has the {} role: delete it or take the role away first",
                role_words(role)
            ));
        }
        let (first_lba, last_lba) = self.carve(free, size)?;
        let Some(number) = self.next_number(&[]) else {
            return refused("all 128 partition slots are taken");
        };
        self.push(vec![Edit::Create {
            number,
            first_lba,
            last_lba,
            role,
        }]);
        Ok(number)
    }

    /// RayOS in one free region, laid out as the engine's free-space mode
    /// does: ESP (only when the disk has none), system, data (the rest).
    pub fn install_into(&mut self, free: Free, answers: &Answers) -> Result<(), EditError> {
        self.editable()?;
        if !self.free().contains(&free) {
            return refused("that free region is gone");
        }
        for r in [Role::System, Role::Data] {
            if let Some(n) = self.role_holder(r) {
                return refused(format!(
                    "partition {n} already has the {} role: undo (u) or reset (r) first",
                    role_words(r)
                ));
            }
        }
        let ss = self.sector_size();
        let need_esp = self.role_holder(Role::Esp).is_none()
            && !self.slots.iter().any(|s| {
                !s.new
                    && self
                        .disk
                        .partition(s.number)
                        .is_some_and(|p| p.family == TypeFamily::Esp)
            });
        let mut sizes = Vec::new();
        if need_esp {
            sizes.push((Role::Esp, answers.sizes.esp));
        }
        sizes.push((Role::System, answers.sizes.system));
        let fixed: u64 = sizes.iter().map(|(_, b)| b.div_ceil(ALIGN) * ALIGN).sum();
        let avail = (free.last_lba + 1 - free.first_lba) * ss;
        if avail < fixed + plan::MIN_DATA {
            return refused(format!(
                "this free region holds {}; RayOS needs at least {} here",
                human_size(avail),
                human_size(fixed + plan::MIN_DATA)
            ));
        }
        let mut group = Vec::new();
        let mut taken = Vec::new();
        let mut region = free;
        for (role, size) in sizes
            .into_iter()
            .map(|(r, b)| (r, Some(b)))
            .chain([(Role::Data, None)])
        {
            let (first_lba, last_lba) = self.carve(region, size)?;
            let Some(number) = self.next_number(&taken) else {
                return refused("all 128 partition slots are taken");
            };
            taken.push(number);
            group.push(Edit::Create {
                number,
                first_lba,
                last_lba,
                role,
            });
            region.first_lba = last_lba + 1;
        }
        self.push(group);
        Ok(())
    }

    /// Whether giving `number` the role `role` erases something (and so
    /// needs typed confirmation): the engine's own consent rule
    /// ([`plan::holds_another_system`]: anything but a partition read to be
    /// all zeros, `facts` saying which were), and RayOS's own partitions too.
    pub fn assign_is_destructive(&self, number: u32, role: Option<Role>, facts: &Facts) -> bool {
        match (self.existing(number), role) {
            (Some(p), Some(Role::Esp)) => {
                p.family != TypeFamily::Esp || !p.filesystem.is_some_and(|f| f.is_fat())
            }
            (Some(p), Some(_)) => {
                plan::is_rayos_partition(p) || plan::holds_another_system(p, facts)
            }
            _ => false,
        }
    }

    /// Give partition `number` a role (`None` takes it away).
    pub fn assign(&mut self, number: u32, role: Option<Role>) -> Result<(), EditError> {
        self.check_assign(number, role)?;
        self.push(vec![Edit::Assign { number, role }]);
        Ok(())
    }

    /// Whether [`Layout::assign`] would accept this (asked before the
    /// confirmation, so nobody types a name for a refused action).
    pub fn check_assign(&self, number: u32, role: Option<Role>) -> Result<(), EditError> {
        self.editable()?;
        let Some(slot) = self.slot(number) else {
            return refused(format!("there is no partition {number}"));
        };
        if slot.new && role.is_none() {
            return refused("a partition created here needs a role: delete it instead (d)");
        }
        if let Some(r) = role {
            if let Some(n) = self.role_holder(r).filter(|n| *n != number) {
                return refused(format!(
                    "partition {n} already has the {} role: take it away first",
                    role_words(r)
                ));
            }
            if let Some(p) = self.existing(number) {
                if r == Role::Esp && p.family != TypeFamily::Esp {
                    return refused(format!(
                        "partition {number} is not an EFI system partition; only an existing ESP (or a new partition) can be the ESP"
                    ));
                }
                if r != Role::Esp && p.family == TypeFamily::Esp {
                    return refused(format!(
                        "partition {number} is an EFI system partition; it is never reformatted for another role"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The layout as the engine's partition intents: `answers` (mode
    /// reuse, naming the existing partitions that have a role, and the
    /// consent given) with what answer files cannot say added — the
    /// partitions deleted, those made here at their sectors, and a new
    /// table after "whole disk" or on a blank disk.
    pub fn intents(&self, answers: &Answers) -> Intents {
        let mut i = Intents::from_answers(answers);
        i.mode = if self.whole_disk {
            Mode::WholeDisk
        } else if self.disk.table == Table::Gpt {
            Mode::Reuse
        } else {
            // A blank disk: free-space gives it a new table.
            Mode::FreeSpace
        };
        i.delete = if self.whole_disk {
            Vec::new()
        } else {
            self.deleted.clone()
        };
        for s in self.slots.iter().filter(|s| s.new) {
            if let Some(role) = s.role {
                i.set(
                    role,
                    Place::At {
                        number: s.number,
                        first_lba: s.first_lba,
                        last_lba: s.last_lba,
                    },
                );
            }
        }
        i
    }
}

/// A plan the wizard can show and apply.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The answers the plan was made from (what `--save-answers` writes).
    pub answers: Answers,
    /// The plan made from `answers`.
    pub plan: Plan,
    /// Whether `answers` alone reproduce `plan` on the disk as it is now.
    pub repeatable: bool,
    /// Edits the answers cannot express (for the saved file's comment).
    pub unexpressed: Vec<String>,
}

impl Planned {
    /// A plan that `answers` alone repeat on the disk as it is.
    fn from_answers(answers: Answers, plan: Plan) -> Planned {
        Planned {
            answers,
            plan,
            repeatable: true,
            unexpressed: Vec::new(),
        }
    }
}

/// The parts of a plan that matter for comparing layouts.
fn signature(plan: &Plan) -> Vec<(Action, Option<Role>, u32, u64, u64)> {
    let mut v: Vec<_> = plan
        .partitions
        .iter()
        .filter(|p| !(plan.table == TableAction::New && p.action == Action::Delete))
        .map(|p| (p.action, p.role, p.number, p.first_lba, p.last_lba))
        .collect();
    v.sort_by_key(|x| (x.2, x.3));
    v
}

fn engine_error(e: PlanError) -> EditError {
    // The engine's messages speak of answer-file keys; say what to do here.
    let m = match &e {
        PlanError::NeedsConsent { part, holds, .. } => format!(
            "{part} holds {holds}: giving it a role erases it; assign the role again to confirm"
        ),
        PlanError::CompleteInstall { disk, what } => format!(
            "{disk} holds a complete RayOS install ({what}): delete its partitions or use w (whole disk) to replace it"
        ),
        _ => e.to_string(),
    };
    EditError::Refused(m)
}

/// The engine's plan for the layout, with `answers` (mode reuse, see
/// [`Layout::intents`]) giving the rest.
fn hand_made(
    layout: &Layout,
    answers: &Answers,
    facts: &Facts,
    opts: &PlanOptions,
) -> Result<Plan, EditError> {
    plan::plan_intents(
        &layout.disk,
        &layout.intents(answers),
        &answers.machine,
        &answers.policy,
        &answers.linux,
        facts,
        opts,
    )
    .map_err(engine_error)
}

/// Makes the engine's plan for `layout`. `base` carries the rest of the
/// answers (sizes, VM storage, machine, policy); `consented` lists the
/// existing partitions whose erasure the person typed a confirmation for.
pub fn plan(
    layout: &Layout,
    base: &Answers,
    facts: &Facts,
    consented: &[u32],
    opts: &PlanOptions,
) -> Result<Planned, EditError> {
    let disk = &layout.disk;
    let mut answers = base.clone();
    answers.target = Target {
        disk: Some(disk.path.clone()),
        reinstall: facts.manifest.is_some() && layout.touches_rayos(consented),
        ..Answers::defaults(Mode::Reuse).target
    };
    if layout.whole_disk && layout.slots.is_empty() {
        answers.target.mode = Mode::WholeDisk;
        vm_on_data(&mut answers, |st| matches!(st, VmStorage::Reuse(_)));
        let plan = make_plan(disk, &answers, facts, opts).map_err(engine_error)?;
        return Ok(Planned::from_answers(answers, plan));
    }
    layout.check_roles()?;
    layout.name_roles(&mut answers, consented);

    // The layout as drawn, without VM storage partitions the engine lays
    // out itself (they are not on the partition screen).
    let mut drawn = answers.clone();
    vm_on_data(&mut drawn, |st| matches!(st, VmStorage::Create(_)));
    let shape = hand_made(layout, &drawn, facts, opts);
    if let Ok(p) = &shape
        && let Some(planned) = simplest(layout, &answers, &drawn, p, facts, opts)?
    {
        return Ok(planned);
    }
    let plan = if drawn.vm_storage != answers.vm_storage {
        hand_made(layout, &answers, facts, opts)?
    } else {
        shape?
    };
    let unexpressed = layout.unexpressed();
    Ok(Planned {
        answers,
        plan,
        repeatable: unexpressed.is_empty(),
        unexpressed,
    })
}

/// The simplest answers that give the same partitions on the real disk
/// (`free-space`, else `whole-disk`, with `shape` the layout as drawn),
/// planned with the VM storage partitions asked for, which the engine then
/// lays out too. `None`: neither does.
fn simplest(
    layout: &Layout,
    answers: &Answers,
    drawn: &Answers,
    shape: &Plan,
    facts: &Facts,
    opts: &PlanOptions,
) -> Result<Option<Planned>, EditError> {
    let sig = signature(shape);
    for mode in [Mode::FreeSpace, Mode::WholeDisk] {
        let simple = |vm: &Answers| {
            let mut a = vm.clone();
            a.target = Target {
                mode,
                esp: None,
                system: None,
                data: None,
                format: Vec::new(),
                ..answers.target.clone()
            };
            vm_on_data(&mut a, |st| matches!(st, VmStorage::Reuse(_)));
            a
        };
        let same = make_plan(&layout.disk, &simple(drawn), facts, opts)
            .is_ok_and(|p| signature(&p) == sig);
        if same {
            let full = simple(answers);
            let plan = make_plan(&layout.disk, &full, facts, opts).map_err(engine_error)?;
            return Ok(Some(Planned::from_answers(full, plan)));
        }
    }
    Ok(None)
}

/// Puts the VM kinds whose storage `which` picks on the data volume.
fn vm_on_data(a: &mut Answers, which: impl Fn(&VmStorage) -> bool) {
    for st in [&mut a.vm_storage.linux, &mut a.vm_storage.windows] {
        if which(st) {
            *st = VmStorage::Data;
        }
    }
}

impl Layout {
    /// Whether the layout deletes or (with consent) reformats a partition
    /// of the RayOS install on the disk, or erases the disk.
    fn touches_rayos(&self, consented: &[u32]) -> bool {
        self.whole_disk
            || self.disk.rayos.as_ref().is_some_and(|r| {
                r.system
                    .iter()
                    .chain(r.data.iter())
                    .chain(r.vm_storage.iter())
                    .any(|n| self.deleted.contains(n) || consented.contains(n))
            })
    }

    /// A hand-made layout needs a system and a data partition, and no
    /// partition left from another RayOS install beside them: the new ones
    /// would carry the same names and types, and the boot could pick the
    /// wrong one.
    fn check_roles(&self) -> Result<(), EditError> {
        if self.role_holder(Role::System).is_none() || self.role_holder(Role::Data).is_none() {
            return refused(
                "RayOS needs a system and a data partition: press i on a free region, w for the whole disk, or give partitions the roles (a)",
            );
        }
        let left = self
            .slots
            .iter()
            .filter(|s| !s.new && s.role.is_none())
            .filter_map(|s| self.disk.partition(s.number))
            .find(|p| plan::is_rayos_partition(p));
        match left {
            Some(p) => refused(format!(
                "partition {} (\"{}\") is left from another RayOS install: delete it (d) or give it its role again (a)",
                p.number, p.name
            )),
            None => Ok(()),
        }
    }

    /// Names the partitions with roles in `answers` (mode reuse), with the
    /// existing ones whose erasure was confirmed as `format`.
    fn name_roles(&self, answers: &mut Answers, consented: &[u32]) {
        let at = |n: u32| Located {
            value: PartRef::Number(n),
            line: 0,
        };
        let t = &mut answers.target;
        t.mode = Mode::Reuse;
        t.system = self.role_holder(Role::System).map(at);
        t.data = self.role_holder(Role::Data).map(at);
        t.esp = self.role_holder(Role::Esp).map(at);
        for (role, st) in [
            (Role::VmLinux, &mut answers.vm_storage.linux),
            (Role::VmWindows, &mut answers.vm_storage.windows),
        ] {
            match self.role_holder(role) {
                Some(n) => *st = VmStorage::Reuse(at(n)),
                None if matches!(st, VmStorage::Reuse(_)) => *st = VmStorage::Data,
                None => {}
            }
        }
        answers.target.format = self
            .slots
            .iter()
            .filter(|s| !s.new && s.role.is_some() && consented.contains(&s.number))
            .map(|s| at(s.number))
            .collect();
    }

    /// The edits an answer file cannot say (for the saved file's comment).
    fn unexpressed(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.disk.table != Table::Gpt || self.whole_disk {
            out.push("write a new GPT (every partition is removed)".to_string());
        } else {
            for n in &self.deleted {
                out.push(format!("delete partition {n}"));
            }
        }
        for s in self.slots.iter().filter(|s| s.new) {
            out.push(format!(
                "create partition {} at sector {} ({}) for {}",
                s.number,
                s.first_lba,
                human_size((s.last_lba + 1 - s.first_lba) * self.sector_size()),
                s.role.map(role_words).unwrap_or("-")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayos_disk::{DiskKind, Filesystem, types};
    use rayos_install::answers::{GIB, MIB};
    use rayos_install::sample::{FakePartition, fake_disk};

    fn opts() -> PlanOptions {
        PlanOptions {
            system_image: Some("/rayos.efi".into()),
            ..PlanOptions::default()
        }
    }

    fn windows(ss: u32) -> Disk {
        let s = ss as u64;
        fake_disk(
            "/dev/vda",
            64 * GIB,
            ss,
            DiskKind::BlockDevice,
            &[
                FakePartition::at(1, MIB, 100 * MIB, s, types::ESP, "EFI system partition")
                    .fs(Filesystem::Fat32, None),
                FakePartition::at(2, 101 * MIB, 16 * MIB, s, types::MS_RESERVED, ""),
                FakePartition::at(3, 117 * MIB, 40 * GIB, s, types::MS_BASIC_DATA, "")
                    .fs(Filesystem::Ntfs, None),
            ],
        )
    }

    fn big_free(l: &Layout) -> Free {
        l.free()
            .into_iter()
            .max_by_key(|f| f.last_lba - f.first_lba)
            .unwrap()
    }

    #[test]
    fn free_regions_match_the_disk_report() {
        for ss in [512, 4096] {
            let d = windows(ss);
            let l = Layout::new(&d);
            let ours: Vec<(u64, u64)> =
                l.free().iter().map(|f| (f.first_lba, f.last_lba)).collect();
            let report: Vec<(u64, u64)> = d
                .free_regions
                .iter()
                .map(|f| (f.first_lba, f.last_lba))
                .collect();
            assert_eq!(ours, report, "sector size {ss}");
        }
    }

    #[test]
    fn sizes_are_aligned_checked_and_numbers_fresh_first() {
        for ss in [512u64, 4096] {
            let mut l = Layout::new(&windows(ss as u32));
            l.delete(3).unwrap();
            let f = big_free(&l);
            let e = l.create(f, Some(100 * GIB), Role::Data).unwrap_err();
            assert!(e.to_string().contains("does not fit"), "{e}");
            // 1000 KiB rounds up to 1 MiB.
            let n = l.create(f, Some(1000 * 1024), Role::Data).unwrap();
            assert_eq!(n, 4, "fresh numbers before deleted ones");
            let s = l.slot(n).unwrap().clone();
            assert_eq!((s.last_lba + 1 - s.first_lba) * ss, MIB);
            assert_eq!(s.first_lba * ss % MIB, 0);
            // A role is held by one partition only.
            let e = l.create(big_free(&l), None, Role::Data).unwrap_err();
            assert!(e.to_string().contains("already has"), "{e}");
            // The rest of a region ends on a 1 MiB boundary.
            let m = l.create(big_free(&l), None, Role::System).unwrap();
            let s = l.slot(m).unwrap();
            assert_eq!((s.last_lba + 1) * ss % MIB, 0);
        }
    }

    #[test]
    fn undo_and_reset_replay_the_edits() {
        let d = windows(512);
        let mut l = Layout::new(&d);
        let start = l.rows();
        l.whole_disk();
        assert!(l.whole_disk && l.slots.is_empty());
        assert_eq!(l.deleted, vec![1, 2, 3]);
        l.create(big_free(&l), Some(GIB), Role::Esp).unwrap();
        assert!(l.undo());
        assert!(l.whole_disk && l.slots.is_empty());
        assert!(l.undo());
        assert_eq!(l.rows(), start);
        assert!(!l.undo());
        l.delete(2).unwrap();
        l.install_into(big_free(&l), &Answers::defaults(Mode::FreeSpace))
            .unwrap();
        l.reset();
        assert_eq!(l.rows(), start);
        assert!(!l.is_edited());
    }

    #[test]
    fn roles_on_existing_partitions_need_consent_and_map_to_reuse() {
        let d = windows(512);
        let mut l = Layout::new(&d);
        assert!(
            l.check_assign(1, Some(Role::System)).is_err(),
            "ESP reformatted"
        );
        assert!(l.check_assign(3, Some(Role::Esp)).is_err(), "NTFS as ESP");
        assert!(l.assign_is_destructive(3, Some(Role::Data), &Facts::default()));
        assert!(!l.assign_is_destructive(1, Some(Role::Esp), &Facts::default()));
        l.assign(3, Some(Role::Data)).unwrap();
        l.create(big_free(&l), Some(2 * GIB), Role::System).unwrap();
        let base = Answers::defaults(Mode::FreeSpace);
        // Without the typed consent the engine refuses to erase NTFS.
        let e = plan(&l, &base, &Facts::default(), &[], &opts()).unwrap_err();
        assert!(e.to_string().contains("erases it"), "{e}");
        let p = plan(&l, &base, &Facts::default(), &[3], &opts()).unwrap();
        let data = p.plan.partition(Role::Data).unwrap();
        assert_eq!((data.number, data.action), (3, Action::Format));
        let sys = p.plan.partition(Role::System).unwrap();
        assert_eq!(sys.action, Action::Create);
        assert_eq!(p.answers.target.mode, Mode::Reuse);
        assert_eq!(p.answers.target.format.len(), 1);
        assert!(!p.repeatable);
    }

    #[test]
    fn mbr_disks_offer_only_the_whole_disk() {
        let mut d = windows(512);
        d.table = Table::Mbr;
        let mut l = Layout::new(&d);
        assert!(l.free().is_empty());
        assert!(l.delete(3).is_err());
        let e = plan(
            &l,
            &Answers::defaults(Mode::FreeSpace),
            &Facts::default(),
            &[],
            &opts(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("system and a data"), "{e}");
        l.whole_disk();
        let p = plan(
            &l,
            &Answers::defaults(Mode::FreeSpace),
            &Facts::default(),
            &[],
            &opts(),
        )
        .unwrap();
        assert_eq!(p.answers.target.mode, Mode::WholeDisk);
        assert_eq!(p.plan.table, TableAction::New);
    }

    #[test]
    fn a_complete_install_is_replaced_only_when_its_partitions_go() {
        let s = 512;
        let d = fake_disk(
            "/dev/vda",
            64 * GIB,
            512,
            DiskKind::BlockDevice,
            &[
                FakePartition::at(1, MIB, GIB, s, types::ESP, "rayos-esp")
                    .fs(Filesystem::Fat32, Some("EFI")),
                FakePartition::at(2, GIB + MIB, 2 * GIB, s, types::XBOOTLDR, "rayos-system")
                    .fs(Filesystem::Fat32, Some("RAYOS-SYS")),
                FakePartition::at(
                    3,
                    3 * GIB + MIB,
                    8 * GIB,
                    s,
                    types::RAYOS_DATA,
                    "rayos-data",
                )
                .fs(Filesystem::Ext4, Some("rayos-data")),
            ],
        );
        let facts = Facts {
            manifest: Some("RayOS 0.1.0 installed 2026-01-01".into()),
            ..Facts::default()
        };
        let base = Answers::defaults(Mode::FreeSpace);
        let mut l = Layout::new(&d);
        l.install_into(big_free(&l), &base).unwrap();
        let e = plan(&l, &base, &facts, &[], &opts()).unwrap_err();
        assert!(e.to_string().contains("another RayOS install"), "{e}");
        l.reset();
        l.delete(2).unwrap();
        l.delete(3).unwrap();
        l.install_into(big_free(&l), &base).unwrap();
        let p = plan(&l, &base, &facts, &[], &opts()).unwrap();
        assert!(p.answers.target.reinstall);
        // Same as the engine's free-space re-run of the unfinished shape.
        assert_eq!(
            p.plan.partition(Role::Esp).unwrap().action,
            Action::ReuseEsp
        );
        let mut w = Layout::new(&d);
        w.whole_disk();
        let p = plan(&w, &base, &facts, &[], &opts()).unwrap();
        assert!(p.answers.target.reinstall && p.answers.target.mode == Mode::WholeDisk);
    }

    #[test]
    fn the_layout_becomes_the_engines_intents() {
        let d = windows(512);
        let base = Answers::defaults(Mode::FreeSpace);
        let mut l = Layout::new(&d);
        l.delete(3).unwrap();
        let sys = l.create(big_free(&l), Some(2 * GIB), Role::System).unwrap();
        let data = l.create(big_free(&l), None, Role::Data).unwrap();
        let mut answers = base.clone();
        l.name_roles(&mut answers, &[]);
        let i = l.intents(&answers);
        assert_eq!((i.mode, i.delete.clone()), (Mode::Reuse, vec![3]));
        let placed = |p: Option<&Place>| match p {
            Some(Place::At { number, .. }) => Some(*number),
            _ => None,
        };
        assert_eq!(placed(i.place(Role::System)), Some(sys));
        assert_eq!(placed(i.place(Role::Data)), Some(data));
        // No ESP role: the engine reuses the disk's, as the screen shows.
        assert_eq!((i.esp.clone(), l.implicit_esp()), (None, Some(1)));
        // After "whole disk" the table is new and nothing is deleted one
        // by one; a blank disk gets a new table from free-space mode.
        l.whole_disk();
        l.install_into(big_free(&l), &base).unwrap();
        l.name_roles(&mut answers, &[]);
        let i = l.intents(&answers);
        assert_eq!((i.mode, i.delete.len()), (Mode::WholeDisk, 0));
        assert!(placed(i.place(Role::Esp)).is_some());
        let mut blank = fake_disk("/tmp/b.img", 8 * GIB, 512, DiskKind::ImageFile, &[]);
        blank.table = Table::None;
        let b = Layout::new(&blank);
        assert_eq!(b.intents(&answers).mode, Mode::FreeSpace);
    }
}
