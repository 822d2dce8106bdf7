//! Stage 4, place: where the new partitions go — one after another from
//! the start of the largest free region, in the lowest free table slots;
//! data with the rest of the region ends on a 1 MiB boundary when that
//! still leaves its minimum (sgdisk -v warns about unaligned ends).

use rayos_disk::gpt::{free_runs, standard_usable_area};

use super::check::Target;
use super::roles::new_partition;
use super::size::Sizes;
use super::{ALIGN, Action, MIN_DATA, PartitionPlan, PlanError, TableAction};

/// Places the sized partitions. Input: the target, the partitions resolved
/// so far (those not deleted keep their sectors and slots) and the sizes.
/// Output: the new partitions (create), or a refusal when the largest free
/// region is too small or no slot is left.
pub(super) fn place(
    target: &Target,
    taken: &[PartitionPlan],
    sizes: &Sizes,
) -> Result<Vec<PartitionPlan>, PlanError> {
    if sizes.needed == 0 {
        return Ok(Vec::new());
    }
    let disk = target.disk;
    let ss = disk.logical_sector_size as u64;
    let align = ALIGN / ss;
    let live: Vec<&PartitionPlan> = taken
        .iter()
        .filter(|p| p.action != Action::Delete)
        .collect();
    let (first, last) = standard_usable_area(disk.size_bytes / ss, disk.logical_sector_size);
    let regions = free_runs(
        first,
        last,
        live.iter().map(|p| (p.first_lba, p.last_lba)),
        align,
    );
    let largest = regions
        .iter()
        .max_by_key(|r| r.last_lba - r.first_lba)
        .map(|r| (r.first_lba, r.last_lba, r.lba_count() * ss));
    let Some((start, end, _)) = largest.filter(|(_, _, avail)| *avail >= sizes.needed) else {
        // An empty new table also spends 1 MiB at each end of the disk.
        let whole = target.table == TableAction::New && live.is_empty();
        return Err(PlanError::TooSmall {
            disk: target.name.clone(),
            needed: sizes
                .needed
                .saturating_add(if whole { 2 * ALIGN } else { 0 }),
            available: largest.map(|l| l.2).unwrap_or(0),
            available_what: if whole {
                "the disk offers".into()
            } else {
                "its largest free region is".into()
            },
        });
    };
    let mut free_numbers = (1..=128u32).filter(|n| !live.iter().any(|p| p.number == *n));
    let mut cursor = start;
    let mut out = Vec::new();
    for (role, bytes) in &sizes.parts {
        let n = free_numbers.next().ok_or_else(|| PlanError::Table {
            disk: target.name.clone(),
            what: "all 128 partition slots are taken".into(),
        })?;
        let last = match bytes {
            Some(b) => cursor + b / ss - 1,
            None => {
                let aligned = (end + 1) / align * align;
                if aligned > cursor && (aligned - cursor) * ss >= MIN_DATA {
                    aligned - 1
                } else {
                    end
                }
            }
        };
        out.push(new_partition(*role, n, cursor, last, ss));
        cursor = last + 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answers::{Answers, GIB, MIB, Mode};
    use crate::plan::check::check;
    use crate::plan::{Facts, Intents, Place, Role, roles, size};
    use crate::sample::{fake_disk, sample_disk};
    use rayos_disk::{Disk, DiskKind, Table};

    fn placed(disk: &Disk, i: &Intents) -> Result<Vec<PartitionPlan>, PlanError> {
        let facts = Facts::default();
        let t = check(disk, i, &facts)?;
        let r = roles::resolve(&t, i, &facts)?;
        place(&t, &r.parts, &size::size(&r.new)?)
    }

    #[test]
    fn one_after_another_in_the_largest_region_and_the_free_slots() {
        let d = sample_disk();
        let mut a = Answers::defaults(Mode::FreeSpace);
        a.vm_storage.linux = crate::answers::VmStorage::Create(3 * GIB);
        let new = placed(&d, &Intents::from_answers(&a)).unwrap();
        let got: Vec<_> = new
            .iter()
            .map(|p| (p.role.unwrap(), p.number, p.start_bytes))
            .collect();
        let start = 117 * MIB + 40 * GIB;
        assert_eq!(
            got,
            [
                (Role::System, 4, start),
                (Role::VmLinux, 5, start + 2 * GIB),
                (Role::Data, 6, start + 5 * GIB)
            ]
        );
        // The rest ends on a 1 MiB boundary (the disk's end is not one).
        let data = &new[2];
        assert_eq!((data.start_bytes + data.size_bytes) % MIB, 0);
        assert!(d.size_bytes - (data.start_bytes + data.size_bytes) < 2 * MIB);
    }

    #[test]
    fn too_small_says_what_the_disk_or_its_region_offers() {
        let mut d = fake_disk("/tmp/b.img", 3 * GIB, 512, DiskKind::ImageFile, &[]);
        d.table = Table::None;
        let i = Intents::from_answers(&Answers::defaults(Mode::WholeDisk));
        let e = placed(&d, &i).unwrap_err().to_string();
        assert!(e.contains("the disk offers"), "{e}");
        // A new table with partitions placed by hand: the region is what
        // is left beside them.
        let mut i = i;
        i.set(
            Role::System,
            Place::At {
                number: 1,
                first_lba: 2048,
                last_lba: 2048 + 2 * GIB / 512 - 1,
            },
        );
        let e = placed(&d, &i).unwrap_err().to_string();
        assert!(e.contains("its largest free region is"), "{e}");
    }
}
