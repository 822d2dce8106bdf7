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
