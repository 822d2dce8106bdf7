//! Stage 2, resolve roles: what happens to every partition of the disk.
//! Existing partitions named for a role are found and checked (not an ESP,
//! aligned, consent, large enough), the ESP is chosen (the named one, the
//! first the disk keeps, or a new one), the rest are kept or deleted, and
//! the roles left get new partitions for the next stages to size and
//! place. The ownership rules of the module doc live here
//! ([`is_rayos_partition`], [`holds_another_system`]).

use std::path::Path;

use uuid::Uuid;

use rayos_disk::types::{self, TypeFamily};
use rayos_disk::{Disk, Filesystem, PartitionReport};

use crate::answers::{Located, Mode, PartRef};

use super::check::Target;
use super::{
    ALIGN, Action, Contents, Facts, FsKind, Intents, NAME_ESP, NAME_SYSTEM, NAME_VM_WINDOWS,
    PartitionPlan, Place, PlanError, Role, TableAction,
};

/// The roles that may name existing partitions, in the order they are
/// checked (the first problem found is the one reported).
const NAMED: [Role; 4] = [Role::System, Role::Data, Role::VmLinux, Role::VmWindows];
/// The order new partitions are laid out in, so that data can take the
/// rest of the region.
const LAYOUT: [Role; 5] = [
    Role::Esp,
    Role::System,
    Role::VmLinux,
    Role::VmWindows,
    Role::Data,
];

/// A new partition the planner lays out: its role and the bytes asked for
/// (`None`: the rest of the region).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Request {
    pub role: Role,
    pub bytes: Option<u64>,
}

/// The roles resolved on a disk.
#[derive(Debug)]
pub(super) struct Roles {
    /// Every partition of the disk with its fate (keep, delete, format,
    /// reuse-esp), and the new partitions whose place was given (create).
    pub parts: Vec<PartitionPlan>,
    /// The new partitions left to size and place, in layout order.
    pub new: Vec<Request>,
}

/// Resolves the roles. Input: the checked target, the intents, the facts
/// (what unrecognised partitions hold). Output: [`Roles`], or the first
/// refusal in the order: a partition kept under whole-disk, the named
/// roles (system, data, VM storage) one by one, the ESP.
pub(super) fn resolve(
    target: &Target,
    intents: &Intents,
    facts: &Facts,
) -> Result<Roles, PlanError> {
    refuse_kept_under_whole_disk(intents)?;
    let cx = Finder { target, intents };
    let mut parts = Vec::new();
    let mut claimed: Vec<(Role, u32)> = Vec::new();
    for role in NAMED {
        match intents.place(role) {
            Some(Place::Existing(r)) => {
                let p = cx.claim(role, r, &claimed, facts)?;
                claimed.push((role, p.number));
                parts.push(format_existing(role, p));
            }
            Some(&Place::At {
                number,
                first_lba,
                last_lba,
            }) => {
                let ss = target.disk.logical_sector_size as u64;
                let p = new_partition(role, number, first_lba, last_lba, ss);
                check_min(role, number, p.size_bytes, &target.name)?;
                parts.push(p);
            }
            _ => {}
        }
    }
    let esp = cx.esp()?;
    let have_esp = esp.is_some();
    if let Some(p) = esp {
        // An existing ESP has its entry now; a new one placed by hand has
        // its number only, which may be a deleted partition's.
        if p.action != Action::Create {
            claimed.push((Role::Esp, p.number));
        }
        parts.push(p);
    }
    parts.extend(cx.the_others(&claimed));
    Ok(Roles {
        parts,
        new: requests(intents, have_esp),
    })
}

/// Whole-disk deletes every partition, so none can be given a role.
fn refuse_kept_under_whole_disk(intents: &Intents) -> Result<(), PlanError> {
    if intents.mode != Mode::WholeDisk {
        return Ok(());
    }
    for role in Role::ALL {
        if let Some(Place::Existing(r)) = intents.place(role) {
            let what = match role {
                Role::VmLinux | Role::VmWindows => "VM storage { reuse = ... } cannot be used with mode = \"whole-disk\" (every partition is deleted); use { create = \"SIZE\" }".to_string(),
                _ => format!(
                    "{} cannot be an existing partition with mode = \"whole-disk\" (every partition is deleted)",
                    role.label()
                ),
            };
            return Err(PlanError::Partition {
                at: format!("answer line {}", r.line),
                what,
            });
        }
    }
    Ok(())
}

/// The roles no partition was found for get new ones: those the intents
/// size, and an ESP of `esp_size` when none was chosen.
fn requests(intents: &Intents, have_esp: bool) -> Vec<Request> {
    LAYOUT
        .into_iter()
        .filter_map(|role| {
            let bytes = match intents.place(role) {
                Some(Place::New(b)) => Some(*b),
                Some(Place::Rest) => None,
                Some(_) => return None,
                None if role == Role::Esp && !have_esp => Some(intents.esp_size),
                None => return None,
            };
            Some(Request { role, bytes })
        })
        .collect()
}

/// Looks partitions up on the target for the intents.
struct Finder<'a> {
    target: &'a Target<'a>,
    intents: &'a Intents,
}

impl Finder<'_> {
    fn disk(&self) -> &Disk {
        self.target.disk
    }

    /// The partition `r` names (`key`: the answer it came from).
    fn find(&self, r: &Located<PartRef>, key: &str) -> Result<&PartitionReport, PlanError> {
        let disk = self.disk();
        let name = &self.target.name;
        let disk_path = disk.path.display().to_string();
        let at = format!("answer line {} ({key})", r.line);
        let n = r.value.number_on(&disk_path).or_else(|| {
            // A device path the report knows (`/dev/disk/by-id/...` targets).
            disk.partitions
                .iter()
                .find_map(|p| match (&r.value, &p.device) {
                    (PartRef::Path(s), Some(d)) if Path::new(s) == d => Some(p.number),
                    _ => None,
                })
        });
        let Some(n) = n else {
            return Err(PlanError::Partition {
                at,
                what: format!("{} is not a partition of {name}", r.value),
            });
        };
        if self.intents.delete.contains(&n) {
            return Err(PlanError::Partition {
                at,
                what: format!("partition {n} is deleted by this plan; it cannot also be used"),
            });
        }
        disk.partition(n).ok_or_else(|| PlanError::Partition {
            at,
            what: format!("{name} has no partition {n}"),
        })
    }

    fn consented(&self, p: &PartitionReport) -> bool {
        let disk_path = self.disk().path.display().to_string();
        self.intents
            .format
            .iter()
            .any(|f| f.value.number_on(&disk_path) == Some(p.number))
    }

    /// The existing partition `r` names for `role`, checked: one role
    /// each, never an ESP, aligned, consent for what it holds, large
    /// enough.
    fn claim(
        &self,
        role: Role,
        r: &Located<PartRef>,
        claimed: &[(Role, u32)],
        facts: &Facts,
    ) -> Result<&PartitionReport, PlanError> {
        let p = self.find(r, role.gpt_name())?;
        let at = format!("answer line {}", r.line);
        let refuse = |what: String| {
            Err(PlanError::Partition {
                at: at.clone(),
                what,
            })
        };
        if let Some((other, _)) = claimed.iter().find(|(_, n)| *n == p.number) {
            return refuse(format!(
                "partition {} is named for two roles ({} and {}): the roles would overlap",
                p.number,
                other.gpt_name(),
                role.gpt_name()
            ));
        }
        if p.family == TypeFamily::Esp {
            return refuse(format!(
                "partition {} is an EFI system partition; it is never reformatted",
                p.number
            ));
        }
        let align = ALIGN / self.disk().logical_sector_size as u64;
        if p.first_lba % align != 0 {
            return refuse(format!(
                "partition {} starts at sector {}, not on a 1 MiB boundary; RayOS uses only aligned partitions (recreate it aligned, or use free space)",
                p.number, p.first_lba
            ));
        }
        if holds_another_system(p, facts) && !self.consented(p)
            || is_rayos_partition(p) && !self.target.reinstall_ok
        {
            return Err(PlanError::NeedsConsent {
                at,
                part: format!("partition {} of {}", p.number, self.target.name),
                holds: holds_words(p, facts),
            });
        }
        check_min(role, p.number, p.size_bytes, &self.target.name)?;
        Ok(p)
    }

    /// The ESP's entry: the one placed by hand; on an edited table the
    /// named one (it must be an ESP) or the first the disk keeps — reused
    /// when it holds FAT, formatted when it is RayOS's own left unformatted
    /// by an interrupted install, refused otherwise. `None`: a new ESP is
    /// laid out.
    fn esp(&self) -> Result<Option<PartitionPlan>, PlanError> {
        let disk = self.disk();
        let p = match (&self.intents.esp, self.target.table) {
            (
                Some(Place::At {
                    number,
                    first_lba,
                    last_lba,
                }),
                _,
            ) => {
                let ss = disk.logical_sector_size as u64;
                return Ok(Some(new_partition(
                    Role::Esp,
                    *number,
                    *first_lba,
                    *last_lba,
                    ss,
                )));
            }
            // Checked on a new table too: a blank disk has nothing to name,
            // and whole-disk intents naming a partition were refused.
            (Some(Place::Existing(r)), _) => {
                let p = self.find(r, "esp")?;
                if p.family != TypeFamily::Esp {
                    return Err(PlanError::Partition {
                        at: format!("answer line {} (esp)", r.line),
                        what: format!(
                            "partition {} is not an EFI system partition ({})",
                            p.number, p.type_name
                        ),
                    });
                }
                p
            }
            (None, TableAction::Edit) => match first_kept_esp(disk, &self.intents.delete) {
                Some(p) => p,
                None => return Ok(None),
            },
            (None, TableAction::New) | (Some(Place::New(_) | Place::Rest), _) => return Ok(None),
        };
        let mut pp = keep(p);
        pp.role = Some(Role::Esp);
        if p.filesystem.is_some_and(Filesystem::is_fat) {
            pp.action = Action::ReuseEsp;
        } else if p.name == NAME_ESP && p.filesystem.is_none() {
            // Ours, from an install cut off before it was formatted.
            pp = format_existing(Role::Esp, p);
        } else {
            return Err(PlanError::Partition {
                at: format!("partition {} of {}", p.number, self.target.name),
                what: format!(
                    "the EFI system partition holds {}, not FAT; RayOS does not reformat an ESP it did not create. Repair it (fsck.fat / mkfs.fat) or choose another disk",
                    family_words(p)
                ),
            });
        }
        Ok(Some(pp))
    }

    /// Every partition not `claimed` for a role: on a new table all are deleted; on
    /// an edited one those the intents delete go, free-space mode redoes
    /// the partitions of a RayOS install it may replace, the rest stay.
    fn the_others(&self, claimed: &[(Role, u32)]) -> Vec<PartitionPlan> {
        let target = self.target;
        let mut out = Vec::new();
        for p in &target.disk.partitions {
            if claimed.iter().any(|(_, n)| *n == p.number) {
                continue;
            }
            let mut pp = keep(p);
            if target.table == TableAction::New {
                pp.action = Action::Delete;
            } else if self.intents.delete.contains(&p.number)
                || self.intents.mode == Mode::FreeSpace
                    && is_rayos_partition(p)
                    && target.reinstall_ok
            {
                pp.action = Action::Delete;
                pp.role = role_of_rayos(p);
            }
            out.push(pp);
        }
        out
    }
}

/// The ESP a plan reuses when none is named: the disk's first ESP that
/// `deleted` does not remove (the wizard shows the same one).
pub fn first_kept_esp<'a>(disk: &'a Disk, deleted: &[u32]) -> Option<&'a PartitionReport> {
    disk.esps().find(|p| !deleted.contains(&p.number))
}

/// A partition given `role` must hold at least the role's minimum.
fn check_min(role: Role, number: u32, size: u64, disk: &str) -> Result<(), PlanError> {
    let min = role.min_size();
    if role == Role::Esp || size >= min {
        return Ok(());
    }
    Err(PlanError::TooSmall {
        disk: format!("partition {number} of {disk}"),
        needed: min,
        available: size,
        available_what: "it has".into(),
    })
}

/// What a partition holds, in words, for the consent refusal (the
/// unrecognised kinds say what reading them found).
fn holds_words(p: &PartitionReport, facts: &Facts) -> String {
    if p.filesystem.is_some() || p.family != TypeFamily::Other {
        return family_words(p);
    }
    let what = match facts.contents(p) {
        Some(Contents::AllZero) => "only zeros",
        Some(Contents::NotZero) => {
            "bytes that are not all zeros (another system's data, of a kind RayOS does not recognise)"
        }
        Some(Contents::TooLarge) => {
            "no data RayOS recognises, but it is too large to be proven empty (RayOS reads at most 1 GiB of it, and that was zeros)"
        }
        None => "data RayOS does not recognise (it was not read to prove it empty)",
    };
    format!(
        "no filesystem RayOS recognises ({}), and {what}",
        p.type_name
    )
}

fn family_words(p: &PartitionReport) -> String {
    let fs = p.filesystem.map(|f| f.name().to_string());
    let who = match p.family {
        TypeFamily::Windows => Some("Windows"),
        TypeFamily::Linux => Some("Linux"),
        TypeFamily::Esp => Some("EFI system partition"),
        TypeFamily::RayosSystem | TypeFamily::RayosData | TypeFamily::RayosVmStorage => {
            Some("RayOS")
        }
        TypeFamily::Other => None,
    };
    match (fs, who) {
        (Some(f), Some(w)) => format!("{f} ({w})"),
        (Some(f), None) => format!("{f} ({})", p.type_name),
        (None, Some(w)) => format!("no filesystem ({w}: {})", p.type_name),
        (None, None) => format!("no filesystem ({})", p.type_name),
    }
}

/// A partition of a RayOS install (ours to redo; a complete install still
/// needs `reinstall = true`).
pub fn is_rayos_partition(p: &PartitionReport) -> bool {
    matches!(
        p.family,
        TypeFamily::RayosSystem | TypeFamily::RayosData | TypeFamily::RayosVmStorage
    ) && (p.type_guid != Some(types::XBOOTLDR) || p.has_label(NAME_SYSTEM))
}

/// Whether formatting `p` needs the person's explicit consent (`[target]
/// format`, or the wizard's typed confirmation): every partition that is
/// not RayOS's own, unless it is of no known system's type, holds no
/// filesystem RayOS recognises and was read to be all zeros. So another
/// system's partition of a type the planner does not know (APFS, ZFS,
/// FreeBSD, BitLocker To Go, ...) is never formatted silently.
pub fn holds_another_system(p: &PartitionReport, facts: &Facts) -> bool {
    if is_rayos_partition(p) {
        return false;
    }
    let proven_empty = p.family == TypeFamily::Other
        && p.filesystem.is_none()
        && facts.contents(p) == Some(Contents::AllZero);
    !proven_empty
}

/// The plan entry of a partition left as it is.
fn keep(p: &PartitionReport) -> PartitionPlan {
    PartitionPlan {
        action: Action::Keep,
        role: None,
        number: p.number,
        first_lba: p.first_lba,
        last_lba: p.last_lba,
        start_bytes: p.start_bytes,
        size_bytes: p.size_bytes,
        type_guid: p.type_guid.unwrap_or_default(),
        unique_guid: p.unique_guid.unwrap_or_default(),
        name: p.name.clone(),
        filesystem: p.filesystem.map(|f| f.name().to_string()),
        fs_label: p.fs_label.clone(),
        was: Some(family_words(p)),
    }
}

fn role_of_rayos(p: &PartitionReport) -> Option<Role> {
    match p.family {
        TypeFamily::RayosSystem => Some(Role::System),
        TypeFamily::RayosData => Some(Role::Data),
        TypeFamily::RayosVmStorage if p.has_label(NAME_VM_WINDOWS) => Some(Role::VmWindows),
        TypeFamily::RayosVmStorage => Some(Role::VmLinux),
        _ => None,
    }
}

/// The plan entry of a new partition for `role` at sectors `first..=last`.
pub(super) fn new_partition(
    role: Role,
    number: u32,
    first: u64,
    last: u64,
    ss: u64,
) -> PartitionPlan {
    PartitionPlan {
        action: Action::Create,
        role: Some(role),
        number,
        first_lba: first,
        last_lba: last,
        start_bytes: first * ss,
        size_bytes: (last + 1 - first) * ss,
        type_guid: role.type_guid(),
        unique_guid: Uuid::new_v4(),
        name: role.gpt_name().to_string(),
        filesystem: Some(match role.fs() {
            FsKind::Fat32 => "FAT32".into(),
            FsKind::Ext4 => "ext4".into(),
        }),
        fs_label: Some(role.fs_label().to_string()),
        was: None,
    }
}

/// The plan entry of an existing partition formatted for `role`.
fn format_existing(role: Role, p: &PartitionReport) -> PartitionPlan {
    let mut pp = new_partition(role, p.number, p.first_lba, p.last_lba, 1);
    pp.action = Action::Format;
    pp.start_bytes = p.start_bytes;
    pp.size_bytes = p.size_bytes;
    pp.unique_guid = p.unique_guid.unwrap_or_else(Uuid::new_v4);
    pp.was = Some(family_words(p));
    pp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answers::{Answers, GIB, MIB};
    use crate::plan::check::check;
    use crate::sample::{FakePartition, fake_disk, sample_disk};
    use rayos_disk::DiskKind;

    fn resolved(disk: &Disk, intents: &Intents) -> Result<Roles, PlanError> {
        let facts = Facts::default();
        resolve(&check(disk, intents, &facts)?, intents, &facts)
    }
    fn fate(r: &Roles, n: u32) -> (Action, Option<Role>) {
        let p = r.parts.iter().find(|p| p.number == n).unwrap();
        (p.action, p.role)
    }
    fn at(number: u32, first_lba: u64, last_lba: u64) -> Place {
        Place::At {
            number,
            first_lba,
            last_lba,
        }
    }

    #[test]
    fn free_space_redoes_an_unfinished_install_and_reuses_its_esp() {
        let d = fake_disk(
            "/dev/vda",
            16 * GIB,
            512,
            DiskKind::BlockDevice,
            &[
                FakePartition::at(1, MIB, GIB, 512, types::ESP, NAME_ESP)
                    .fs(Filesystem::Fat32, None),
                FakePartition::at(2, MIB + GIB, 2 * GIB, 512, types::XBOOTLDR, NAME_SYSTEM),
                FakePartition::at(
                    3,
                    MIB + 3 * GIB,
                    8 * GIB,
                    512,
                    types::RAYOS_DATA,
                    "rayos-data",
                ),
            ],
        );
        let r = resolved(
            &d,
            &Intents::from_answers(&Answers::defaults(Mode::FreeSpace)),
        )
        .unwrap();
        assert_eq!(fate(&r, 1), (Action::ReuseEsp, Some(Role::Esp)));
        assert_eq!(fate(&r, 2), (Action::Delete, Some(Role::System)));
        assert_eq!(fate(&r, 3), (Action::Delete, Some(Role::Data)));
        let new: Vec<_> = r.new.iter().map(|q| (q.role, q.bytes)).collect();
        assert_eq!(new, [(Role::System, Some(2 * GIB)), (Role::Data, None)]);
        // reuse mode keeps what no role names.
        let r = resolved(&d, &Intents::from_answers(&Answers::defaults(Mode::Reuse))).unwrap();
        assert_eq!(fate(&r, 3), (Action::Keep, None));
    }

    #[test]
    fn explicit_edits_delete_place_by_hand_and_keep_the_rest() {
        // Windows' disk with its NTFS partition deleted, RayOS placed by hand
        // there, and Linux VM storage left for the planner to lay out.
        let d = sample_disk();
        let mut i = Intents::from_answers(&Answers::defaults(Mode::Reuse));
        i.delete = vec![3];
        let lba = |bytes: u64| bytes / 512;
        i.set(
            Role::System,
            at(4, lba(117 * MIB), lba(117 * MIB + 2 * GIB) - 1),
        );
        i.set(
            Role::Data,
            at(3, lba(117 * MIB + 2 * GIB), lba(117 * MIB + 10 * GIB) - 1),
        );
        i.set(Role::VmLinux, Place::New(GIB));
        let r = resolved(&d, &i).unwrap();
        assert_eq!(fate(&r, 1), (Action::ReuseEsp, Some(Role::Esp)));
        assert_eq!(fate(&r, 2), (Action::Keep, None));
        assert_eq!(fate(&r, 4), (Action::Create, Some(Role::System)));
        // Slot 3 is both the deleted NTFS partition and the new data one.
        let three: Vec<_> = r
            .parts
            .iter()
            .filter(|p| p.number == 3)
            .map(|p| (p.action, p.first_lba))
            .collect();
        assert_eq!(
            three,
            [
                (Action::Create, lba(117 * MIB + 2 * GIB)),
                (Action::Delete, lba(117 * MIB))
            ]
        );
        assert_eq!(
            r.new,
            [Request {
                role: Role::VmLinux,
                bytes: Some(GIB)
            }]
        );

        // A partition placed by hand must hold its role's minimum.
        i.set(
            Role::Data,
            at(
                3,
                lba(117 * MIB + 2 * GIB),
                lba(117 * MIB + 2 * GIB + 100 * MIB) - 1,
            ),
        );
        let e = resolved(&d, &i).unwrap_err();
        assert!(matches!(e, PlanError::TooSmall { .. }), "{e}");
        // A deleted partition cannot also be given a role.
        i.set(
            Role::Data,
            Place::Existing(Located {
                value: PartRef::Number(3),
                line: 0,
            }),
        );
        let e = resolved(&d, &i).unwrap_err();
        assert!(e.to_string().contains("deleted by this plan"), "{e}");
    }

    #[test]
    fn the_esp_kept_is_the_first_one_not_deleted() {
        let d = fake_disk(
            "/dev/sdb",
            20 * GIB,
            512,
            DiskKind::BlockDevice,
            &[
                FakePartition::at(1, MIB, 100 * MIB, 512, types::ESP, "a")
                    .fs(Filesystem::Fat32, None),
                FakePartition::at(2, 101 * MIB, 600 * MIB, 512, types::ESP, "b")
                    .fs(Filesystem::Fat32, None),
            ],
        );
        assert_eq!(first_kept_esp(&d, &[]).map(|p| p.number), Some(1));
        assert_eq!(first_kept_esp(&d, &[1]).map(|p| p.number), Some(2));
        let mut i = Intents::from_answers(&Answers::defaults(Mode::Reuse));
        i.delete = vec![1];
        let r = resolved(&d, &i).unwrap();
        assert_eq!(fate(&r, 2), (Action::ReuseEsp, Some(Role::Esp)));
        assert_eq!(fate(&r, 1), (Action::Delete, None));
        i.delete = vec![1, 2];
        let r = resolved(&d, &i).unwrap();
        assert_eq!(
            r.new[0],
            Request {
                role: Role::Esp,
                bytes: Some(GIB)
            }
        );
    }

    #[test]
    fn whole_disk_cannot_keep_a_partition_for_a_role() {
        let mut i = Intents::from_answers(&Answers::defaults(Mode::WholeDisk));
        i.vm_windows = Some(Place::Existing(Located {
            value: PartRef::Number(3),
            line: 9,
        }));
        let e = resolved(&sample_disk(), &i).unwrap_err();
        let m = e.to_string();
        assert!(
            m.starts_with("answer line 9") && m.contains("{ create = "),
            "{m}"
        );
        i.vm_windows = None;
        let r = resolved(&sample_disk(), &i).unwrap();
        assert!(r.parts.iter().all(|p| p.action == Action::Delete));
        assert_eq!(r.new.len(), 3, "ESP, system, data");
    }
}
