//! Checks of a finished plan, whoever made it (the planner's own last
//! stage, plans read back from JSON): the layout rules and the hybrid MBR
//! rules.

use rayos_disk::Disk;
use rayos_disk::gpt::standard_usable_area;

use super::{ALIGN, Action, MbrEntry, PartitionPlan, Plan, PlanError, Role, TableAction};

/// The disk's hybrid MBR entries the plan keeps (with a note for the
/// person either way). A new table replaces a hybrid MBR: whole-disk is
/// the consent to erase everything, and the note says what stops booting.
pub(super) fn hybrid_entries(
    disk: &Disk,
    table: TableAction,
    parts: &[PartitionPlan],
    notes: &mut Vec<String>,
) -> Vec<MbrEntry> {
    if disk.hybrid_mbr.is_empty() {
        return Vec::new();
    }
    let entries: Vec<MbrEntry> = disk
        .hybrid_mbr
        .iter()
        .map(|e| MbrEntry {
            slot: e.number,
            type_byte: e.type_byte,
            first_lba: e.first_lba,
            last_lba: e.first_lba + e.sectors - 1,
        })
        .collect();
    let named: Vec<String> = disk
        .partitions
        .iter()
        .filter(|p| {
            entries
                .iter()
                .any(|e| e.first_lba <= p.last_lba && p.first_lba <= e.last_lba)
        })
        .map(|p| p.number.to_string())
        .collect();
    let named = match named.len() {
        0 => "no GPT partition".to_string(),
        1 => format!("partition {}", named[0]),
        _ => format!("partitions {}", named.join(", ")),
    };
    match table {
        TableAction::New => {
            notes.push(format!(
                "the disk's hybrid MBR (a legacy BIOS's view of {named}, as Boot Camp makes) is replaced by a protective MBR: a system that boots through it in legacy BIOS mode stops booting"
            ));
            Vec::new()
        }
        TableAction::Edit => {
            // Which partitions change is checked by validate (for wizard
            // plans too); a kept hybrid MBR is worth saying.
            if parts.iter().all(|p| hybrid_conflict(&entries, p).is_none()) {
                notes.push(format!(
                    "the disk's hybrid MBR is kept as it is: a legacy BIOS still sees {named}; RayOS's partitions are in the GPT only"
                ));
            }
            entries
        }
    }
}

/// The hybrid MBR entry that names `p`, when the plan changes `p`'s bytes
/// or its place (anything but keeping it, or adding files to the ESP).
fn hybrid_conflict(entries: &[MbrEntry], p: &PartitionPlan) -> Option<MbrEntry> {
    if matches!(p.action, Action::Keep | Action::ReuseEsp) {
        return None;
    }
    entries
        .iter()
        .find(|e| e.first_lba <= p.last_lba && p.first_lba <= e.last_lba)
        .copied()
}

/// Checks a plan's layout (also for plans made elsewhere, e.g. by the
/// wizard or read back from JSON): inside the usable area, 1 MiB aligned
/// new partitions, no overlaps, one partition per slot, one of each role,
/// an ESP, a system and a data partition; and no partition a kept hybrid
/// MBR names is created over, formatted or deleted.
pub fn validate(plan: &Plan) -> Result<(), PlanError> {
    for p in &plan.partitions {
        if let Some(e) = hybrid_conflict(&plan.hybrid_mbr, p) {
            let doing = match p.action {
                Action::Delete => "deletes",
                Action::Create => "creates a partition over",
                _ => "formats",
            };
            return Err(PlanError::Table {
                disk: plan.target.display().to_string(),
                what: format!(
                    "it has a hybrid MBR (a legacy BIOS's view of some GPT partitions, as Boot Camp or `sgdisk -h` make): its entry {} (type {:#04x}, sectors {}..={}) names partition {}, which this plan {doing}; a legacy BIOS would then start whatever RayOS puts there. Leave partition {} alone, or remove the entry first (gdisk: expert menu `x`, then `n`, writes a plain protective MBR; recovery menu `r`, then `h`, makes a hybrid without it), or use mode = \"whole-disk\" (which erases the disk)",
                    e.slot, e.type_byte, e.first_lba, e.last_lba, p.number, p.number
                ),
            });
        }
    }
    let ss = plan.sector_size as u64;
    if ss != 512 && ss != 4096 {
        return Err(PlanError::Invalid(format!("sector size {ss}")));
    }
    let (first, last) = standard_usable_area(plan.disk_size_bytes / ss, plan.sector_size);
    let align = ALIGN / ss;
    let live: Vec<&PartitionPlan> = plan
        .partitions
        .iter()
        .filter(|p| p.action != Action::Delete)
        .collect();
    for (i, p) in live.iter().enumerate() {
        let inval = |what: String| PlanError::Invalid(format!("partition {}: {what}", p.number));
        if p.number == 0 || p.number > 128 {
            return Err(inval("slot number must be 1..=128".into()));
        }
        if p.last_lba < p.first_lba {
            return Err(inval("ends before it starts".into()));
        }
        if p.size_bytes != (p.last_lba + 1 - p.first_lba) * ss || p.start_bytes != p.first_lba * ss
        {
            return Err(inval("byte offsets disagree with its sectors".into()));
        }
        if matches!(p.action, Action::Create | Action::Format) {
            if p.first_lba < first || p.last_lba > last {
                return Err(inval(format!(
                    "sectors {}..={} are outside the usable area {first}..={last}",
                    p.first_lba, p.last_lba
                )));
            }
            if p.first_lba % align != 0 {
                return Err(inval(format!(
                    "starts at sector {}, not on a 1 MiB boundary",
                    p.first_lba
                )));
            }
        }
        for q in &live[i + 1..] {
            if q.number == p.number {
                return Err(inval("two partitions share the slot".into()));
            }
            if p.first_lba <= q.last_lba && q.first_lba <= p.last_lba {
                return Err(inval(format!("overlaps partition {}", q.number)));
            }
        }
    }
    for role in [Role::Esp, Role::System, Role::Data] {
        let n = live.iter().filter(|p| p.role == Some(role)).count();
        if n != 1 {
            return Err(PlanError::Invalid(format!(
                "{n} partitions have the {} role (need exactly one)",
                role.gpt_name()
            )));
        }
    }
    for role in [Role::VmLinux, Role::VmWindows] {
        if live.iter().filter(|p| p.role == Some(role)).count() > 1 {
            return Err(PlanError::Invalid(format!(
                "two {} partitions",
                role.gpt_name()
            )));
        }
    }
    Ok(())
}
