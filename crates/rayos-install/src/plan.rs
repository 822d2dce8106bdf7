//! Plans: what an install will do to one disk, as pure data.
//!
//! [`make_plan`] turns a [`Disk`] report (from `rayos-disk`), the
//! [`Answers`] and a few facts gathered beforehand ([`Facts`]: is there a
//! complete install on the disk, is this the installer's own medium) into a
//! [`Plan`]: per partition one of create / delete / format / keep /
//! reuse-ESP, and every file to write. It does no I/O, so every refusal is
//! unit-tested on made-up disks. `--dry-run` prints the plan; [`crate::apply`]
//! performs it; the wizard builds the same `Plan`.
//!
//! Layout rules: 1 MiB alignment; the new partitions are laid out in one free
//! region (the largest) in the order ESP (if created), system, VM storage,
//! data, so that `data = "rest"` takes what is left; an existing ESP is
//! reused and never formatted.
//!
//! Ownership rules (what may be written without consent):
//! - partitions of an unfinished RayOS install (our type GUIDs and labels,
//!   no manifest) are ours and are redone;
//! - a complete RayOS install is replaced only with `reinstall = true`;
//! - a partition holding another system (Windows or Linux type, or any
//!   filesystem that is not ours) is reformatted only when listed in
//!   `[target].format`; an empty partition needs no consent.
//!
//! Limits: one free region per install (no spreading across gaps); the
//! usable area of a GPT is taken to be the standard one (128 entries), and
//! `apply` re-checks the layout against the real table before writing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use rayos_disk::types::{self, TypeFamily};
use rayos_disk::{Disk, DiskKind, Filesystem, PartitionReport, Table};
use rayos_state::registry::{BootSpec, DiskFormat, DiskSpec};
use rayos_state::{MachineConfig, Policy, Registry, VmDefinition, VmKind};

use crate::answers::{Answers, DataSize, GIB, Located, MIB, Mode, PartRef, VmStorage, human_size};

pub const PLAN_SCHEMA_VERSION: u32 = 1;
pub const ALIGN: u64 = 1 << 20;
/// An ESP RayOS creates is at least this large (ARCHITECTURE.md §2).
pub const MIN_ESP: u64 = 512 * MIB;
/// The system partition holds two UKIs and a recovery UKI.
pub const MIN_SYSTEM: u64 = 512 * MIB;
pub const MIN_DATA: u64 = GIB;
pub const MIN_VM_STORAGE: u64 = GIB;

/// GPT partition names (also how an unfinished install is recognised).
pub const NAME_ESP: &str = "rayos-esp";
pub const NAME_SYSTEM: &str = rayos_disk::report::LABEL_SYSTEM;
pub const NAME_DATA: &str = rayos_disk::report::LABEL_DATA;
pub const NAME_VM_LINUX: &str = rayos_disk::report::LABEL_VM_LINUX;
pub const NAME_VM_WINDOWS: &str = rayos_disk::report::LABEL_VM_WINDOWS;
/// FAT labels hold at most 11 characters, so the system partition's
/// filesystem label is shorter than its GPT name.
pub const FAT_LABEL_SYSTEM: &str = "RAYOS-SYS";
pub const FAT_LABEL_ESP: &str = "EFI";
/// The ISO volume label of the installer media.
pub const MEDIUM_LABEL: &str = "RAYOS_INSTALL";

/// Paths on the partitions.
pub const SYSTEMD_BOOT_HOST: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
pub const ESP_SYSTEMD_BOOT: &str = "/EFI/systemd/systemd-bootx64.efi";
pub const ESP_FALLBACK: &str = "/EFI/BOOT/BOOTX64.EFI";
pub const ESP_LOADER_CONF: &str = "/loader/loader.conf";
pub const MANIFEST_PATH: &str = "/rayos/install-manifest.json";

/// The partition systemd-boot is started from, which is where it reads
/// `loader/loader.conf` and looks for UKIs first.
///
/// On 512-byte-sector disks that is the ESP, and systemd-boot finds the
/// UKIs on the XBOOTLDR system partition. systemd-boot (252 in Debian 12,
/// and still 255; systemd issue #32535) cannot find an XBOOTLDR partition
/// on a disk with 4096-byte logical sectors: it reads the GPT header into
/// a 512-byte buffer, which such a disk's block I/O refuses. There, the
/// loader is installed on the system partition itself and the UEFI boot
/// entry points at it; firmware loads an EFI program from any FAT
/// partition a device path names. The UKIs stay where they always are.
pub fn loader_role(sector_size: u32) -> Role {
    if sector_size > 512 {
        Role::System
    } else {
        Role::Esp
    }
}
/// Where the bundled Linux test guest lives inside the RayOS image.
pub const GUEST_KERNEL: &str = "/usr/share/rayos/guest/vmlinuz";
pub const GUEST_INITRD: &str = "/usr/share/rayos/guest/initrd.img";

/// Why a plan cannot be made. Each message says what to do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{disk} is in use ({}): choose another target, or unmount/stop what uses it", .usages.join("; "))]
    InUse { disk: String, usages: Vec<String> },
    #[error("{disk} is the medium this installer runs from ({why}): choose another disk")]
    InstallerMedium { disk: String, why: String },
    #[error("{disk} is read-only: choose another disk or remove its write protection")]
    ReadOnly { disk: String },
    #[error(
        "{disk} is too small: this plan needs {} (at least {}), but {} {}; choose a larger disk or smaller sizes",
        human_size(*.needed), .needed, .available_what, human_size(*.available)
    )]
    TooSmall {
        disk: String,
        needed: u64,
        available: u64,
        available_what: String,
    },
    #[error("{disk}: {what}")]
    Table { disk: String, what: String },
    #[error(
        "{disk} holds a complete RayOS install ({what}): it is never overwritten silently; set reinstall = true in [target] to replace it (its data volume is erased)"
    )]
    CompleteInstall { disk: String, what: String },
    #[error("{at}: {what}")]
    Partition { at: String, what: String },
    #[error(
        "{at}: {part} holds {holds}; reusing it erases it. If that is intended, list it in [target] format = [...]"
    )]
    NeedsConsent {
        at: String,
        part: String,
        holds: String,
    },
    #[error("invalid plan: {0}")]
    Invalid(String),
}

/// What a partition is for in RayOS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Esp,
    System,
    Data,
    VmLinux,
    VmWindows,
}

impl Role {
    pub fn gpt_name(self) -> &'static str {
        match self {
            Role::Esp => NAME_ESP,
            Role::System => NAME_SYSTEM,
            Role::Data => NAME_DATA,
            Role::VmLinux => NAME_VM_LINUX,
            Role::VmWindows => NAME_VM_WINDOWS,
        }
    }
    pub fn type_guid(self) -> Uuid {
        match self {
            Role::Esp => types::ESP,
            Role::System => types::XBOOTLDR,
            Role::Data => types::RAYOS_DATA,
            Role::VmLinux | Role::VmWindows => types::RAYOS_VM_STORAGE,
        }
    }
    pub fn fs(self) -> FsKind {
        match self {
            Role::Esp | Role::System => FsKind::Fat32,
            _ => FsKind::Ext4,
        }
    }
    pub fn fs_label(self) -> &'static str {
        match self {
            Role::Esp => FAT_LABEL_ESP,
            Role::System => FAT_LABEL_SYSTEM,
            other => other.gpt_name(),
        }
    }
    /// How the role is shown to people.
    pub fn label(self) -> &'static str {
        match self {
            Role::Esp => "ESP",
            other => other.gpt_name(),
        }
    }
    /// The apply step that formats a partition of this role.
    pub fn format_step(self) -> &'static str {
        match self {
            Role::Esp => "format-esp",
            Role::System => "format-system",
            Role::Data => "format-data",
            Role::VmLinux => "format-vm-linux",
            Role::VmWindows => "format-vm-windows",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsKind {
    Fat32,
    Ext4,
}

/// What happens to one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Left exactly as it is (every byte).
    Keep,
    /// Removed from the table (its bytes are not wiped, but may be
    /// overwritten by new partitions).
    Delete,
    /// A new table entry, then formatted.
    Create,
    /// An existing entry, retyped/renamed for its role and formatted.
    Format,
    /// The existing ESP: RayOS adds its files, never formats it.
    ReuseEsp,
}

/// One partition in the plan (old or new).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPlan {
    pub action: Action,
    pub role: Option<Role>,
    pub number: u32,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub start_bytes: u64,
    pub size_bytes: u64,
    pub type_guid: Uuid,
    pub unique_guid: Uuid,
    /// GPT partition name after the install.
    pub name: String,
    /// Filesystem created (Create/Format) or found (others).
    pub filesystem: Option<String>,
    pub fs_label: Option<String>,
    /// What the partition held before, in words ("NTFS (Windows)").
    pub was: Option<String>,
}

/// Where a file's content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Source {
    /// A file on the installer's host.
    HostFile { path: PathBuf },
    /// Text made by the installer (shown in full in the plan).
    Text { content: String },
    /// A directory.
    Directory,
    /// The install manifest, made when everything else is written.
    Manifest,
    /// The Linux VM's disk: the compressed raw Debian VM image on the
    /// installer's host (`linux-vm.img.zst`), written as a thin qcow2 of
    /// `disk_size` bytes.
    LinuxVmImage { path: PathBuf, disk_size: u64 },
}

/// One file (or directory) the install writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePlan {
    pub role: Role,
    /// Absolute path on that partition's filesystem.
    pub path: String,
    pub source: Source,
    /// Written only when nothing is at `path` yet (the fallback loader on
    /// a reused ESP must not replace another system's).
    #[serde(default)]
    pub only_if_absent: bool,
}

/// The UEFI boot entry to add.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvramPlan {
    pub description: String,
    /// The partition holding the loader: the ESP, or the system partition
    /// on a 4096-byte-sector disk (see [`loader_role`]).
    pub esp_number: u32,
    /// Backslash form, as UEFI wants it.
    pub loader: String,
}

/// How the partition table is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TableAction {
    /// A fresh GPT replaces whatever was there (whole-disk, blank disk).
    New,
    /// The existing GPT is edited.
    Edit,
}

/// A complete install plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub schema: u32,
    pub target: PathBuf,
    pub image_file: bool,
    pub disk_size_bytes: u64,
    pub sector_size: u32,
    pub mode: Mode,
    pub rayos_version: String,
    pub table: TableAction,
    /// Set when the table is read from one copy only (an interrupted table
    /// write of an unfinished install); both copies are rewritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_copy: Option<TableCopy>,
    /// Every partition of the disk after the install, plus those deleted.
    pub partitions: Vec<PartitionPlan>,
    pub files: Vec<FilePlan>,
    pub machine: MachineConfig,
    pub policy: Policy,
    pub registry: Registry,
    pub nvram: Option<NvramPlan>,
    /// Disk bytes the new partitions take.
    pub bytes_allocated: u64,
    /// Warnings for the person confirming (nothing blocks).
    pub notes: Vec<String>,
}

impl Plan {
    pub fn partition(&self, role: Role) -> Option<&PartitionPlan> {
        self.partitions
            .iter()
            .find(|p| p.role == Some(role) && p.action != Action::Delete)
    }

    /// Partitions whose bytes the install writes.
    pub fn written(&self) -> impl Iterator<Item = &PartitionPlan> {
        self.partitions
            .iter()
            .filter(|p| matches!(p.action, Action::Create | Action::Format | Action::ReuseEsp))
    }

    /// UKI file name with the boot-counting suffix (ARCHITECTURE.md §5).
    pub fn uki_name(&self) -> String {
        format!("rayos-{}+3.efi", self.rayos_version)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Facts about the target gathered by I/O before planning.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The install manifest found on the disk's RayOS system partition.
    pub manifest: Option<String>,
    /// Set when the target holds the installer's own medium (why).
    pub installer_medium: Option<String>,
    /// The disk's table is corrupt, but one copy is valid and holds an
    /// unfinished RayOS install: a table write of ours was cut off.
    pub unfinished_table: Option<UnfinishedTable>,
}

/// Which copy of a GPT a plan was made from (when the copies disagree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TableCopy {
    Primary,
    Backup,
}

impl From<TableCopy> for rayos_disk::gpt::TableCopy {
    fn from(c: TableCopy) -> Self {
        match c {
            TableCopy::Primary => rayos_disk::gpt::TableCopy::Primary,
            TableCopy::Backup => rayos_disk::gpt::TableCopy::Backup,
        }
    }
}

/// The disk as its one valid table copy describes it.
#[derive(Debug, Clone)]
pub struct UnfinishedTable {
    pub copy: TableCopy,
    pub disk: Disk,
}

/// Inputs that do not come from the answer file.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub rayos_version: String,
    /// The RayOS UKI to install (shown as a placeholder when `None`, which
    /// only a dry run accepts).
    pub system_image: Option<PathBuf>,
    pub systemd_boot: PathBuf,
    /// The recovery UKI; with it the install gets the "RayOS recovery" boot
    /// menu entry (installer media carry it beside the system image).
    pub recovery_image: Option<PathBuf>,
    /// Add a UEFI boot entry (only ever for block devices).
    pub nvram: bool,
    /// The Debian VM image (`rayos/linux-vm.img.zst` on installer media);
    /// without it the Linux VM is the bundled test guest.
    pub linux_vm_image: Option<PathBuf>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            rayos_version: env!("CARGO_PKG_VERSION").to_string(),
            system_image: None,
            systemd_boot: PathBuf::from(SYSTEMD_BOOT_HOST),
            recovery_image: None,
            nvram: false,
            linux_vm_image: None,
        }
    }
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

fn is_rayos_partition(p: &PartitionReport) -> bool {
    matches!(
        p.family,
        TypeFamily::RayosSystem | TypeFamily::RayosData | TypeFamily::RayosVmStorage
    ) && (p.type_guid != Some(types::XBOOTLDR) || p.has_label(NAME_SYSTEM))
}

/// Whether writing over `p` needs the person's explicit consent.
fn holds_another_system(p: &PartitionReport) -> bool {
    if is_rayos_partition(p) {
        return false;
    }
    matches!(
        p.family,
        TypeFamily::Windows | TypeFamily::Linux | TypeFamily::Esp
    ) || p.filesystem.is_some()
}

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

/// Standard GPT usable area (128 × 128-byte entries).
fn usable_area(total_sectors: u64, ss: u64) -> (u64, u64) {
    let array = (128 * 128u64).div_ceil(ss);
    (2 + array, total_sectors.saturating_sub(2 + array))
}

/// Free runs between `used` ranges, start aligned, end exact.
fn free_runs(used: &[(u64, u64)], first: u64, last: u64, align_lba: u64) -> Vec<(u64, u64)> {
    let mut used = used.to_vec();
    used.sort_unstable();
    let mut out = Vec::new();
    let mut cursor = first;
    let mut push = |from: u64, to: u64| {
        let start = from.div_ceil(align_lba) * align_lba;
        if start <= to && to - start + 1 >= align_lba {
            out.push((start, to));
        }
    };
    for (a, b) in used {
        if a > cursor {
            push(cursor, a - 1);
        }
        cursor = cursor.max(b.saturating_add(1));
    }
    if cursor <= last {
        push(cursor, last);
    }
    out
}

struct Ctx<'a> {
    disk: &'a Disk,
    name: String,
    answers: &'a Answers,
}

impl Ctx<'_> {
    fn find(&self, r: &Located<PartRef>, key: &str) -> Result<&PartitionReport, PlanError> {
        let disk_path = self.disk.path.display().to_string();
        let at = format!("answer line {} ({key})", r.line);
        let n = r.value.number_on(&disk_path).or_else(|| {
            // A device path the report knows (`/dev/disk/by-id/...` targets).
            self.disk
                .partitions
                .iter()
                .find_map(|p| match (&r.value, &p.device) {
                    (PartRef::Path(s), Some(d)) if Path::new(s) == d => Some(p.number),
                    _ => None,
                })
        });
        let Some(n) = n else {
            return Err(PlanError::Partition {
                at,
                what: format!("{} is not a partition of {}", r.value, self.name),
            });
        };
        self.disk.partition(n).ok_or_else(|| PlanError::Partition {
            at,
            what: format!("{} has no partition {n}", self.name),
        })
    }

    fn consented(&self, p: &PartitionReport) -> bool {
        let disk_path = self.disk.path.display().to_string();
        self.answers
            .target
            .format
            .iter()
            .any(|f| f.value.number_on(&disk_path) == Some(p.number))
    }
}

fn new_partition(role: Role, number: u32, first: u64, last: u64, ss: u64) -> PartitionPlan {
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

fn format_existing(role: Role, p: &PartitionReport) -> PartitionPlan {
    let mut pp = new_partition(role, p.number, p.first_lba, p.last_lba, 1);
    pp.action = Action::Format;
    pp.start_bytes = p.start_bytes;
    pp.size_bytes = p.size_bytes;
    pp.unique_guid = p.unique_guid.unwrap_or_else(Uuid::new_v4);
    pp.was = Some(family_words(p));
    pp
}

/// Makes the plan. Pure: everything it needs is in its arguments.
pub fn make_plan(
    disk: &Disk,
    answers: &Answers,
    facts: &Facts,
    opts: &PlanOptions,
) -> Result<Plan, PlanError> {
    // A table write of ours cut off half-way: plan from the valid copy that
    // holds the unfinished install (never for whole-disk, which replaces
    // the table anyway, and never when the install is complete).
    let (disk, table_copy) = match (&disk.table, &facts.unfinished_table, answers.target.mode) {
        (Table::Corrupt { .. }, Some(u), Mode::FreeSpace | Mode::Reuse)
            if facts.manifest.is_none() =>
        {
            (&u.disk, Some(u.copy))
        }
        _ => (disk, None),
    };
    let name = disk.path.display().to_string();
    let ss = disk.logical_sector_size as u64;
    let cx = Ctx {
        disk,
        name: name.clone(),
        answers,
    };
    let mode = answers.target.mode;
    let mut notes = Vec::new();
    if let Some(c) = table_copy {
        notes.push(format!(
            "the partition table was left half-written by an interrupted RayOS install; its valid {} copy is used and both copies are rewritten",
            match c {
                TableCopy::Primary => "primary",
                TableCopy::Backup => "backup",
            }
        ));
    }

    // --- the target itself ---
    if let Some(why) = &facts.installer_medium {
        return Err(PlanError::InstallerMedium {
            disk: name,
            why: why.clone(),
        });
    }
    if let Some(why) = medium_evidence(disk) {
        return Err(PlanError::InstallerMedium { disk: name, why });
    }
    if disk.read_only {
        return Err(PlanError::ReadOnly { disk: name });
    }
    if disk.is_in_use() {
        return Err(PlanError::InUse {
            disk: name,
            usages: disk.in_use.iter().map(|u| u.to_string()).collect(),
        });
    }
    if ss != 512 && ss != 4096 {
        return Err(PlanError::Table {
            disk: name,
            what: format!("logical sector size {ss} is not supported (512 or 4096)"),
        });
    }
    let table = match (&disk.table, mode) {
        (Table::Unreadable { reason }, _) => {
            return Err(PlanError::Table {
                disk: name,
                what: format!("cannot be read ({reason}): run as root, or check the medium"),
            });
        }
        (_, Mode::WholeDisk) => {
            if let Table::Corrupt { reason, .. } = &disk.table {
                notes.push(format!(
                    "the corrupt partition table ({reason}) is replaced by a new GPT"
                ));
            }
            TableAction::New
        }
        (Table::Gpt, _) => TableAction::Edit,
        (Table::None, Mode::FreeSpace) if disk.whole_disk_filesystem.is_none() => TableAction::New,
        (Table::None, _) => {
            let what = match &disk.whole_disk_filesystem {
                Some(fs) => format!(
                    "the whole disk holds a {} filesystem without a partition table; only mode = \"whole-disk\" may erase it",
                    fs.filesystem
                ),
                None => "the disk is blank: mode = \"reuse\" has nothing to reuse; use whole-disk or free-space".into(),
            };
            return Err(PlanError::Table { disk: name, what });
        }
        (Table::Mbr, _) => {
            return Err(PlanError::Table {
                disk: name,
                what: "it has an MBR (DOS) partition table; RayOS needs GPT. Use mode = \"whole-disk\" to erase the disk, or convert it with gdisk first".into(),
            });
        }
        (Table::Corrupt { reason, .. }, _) => {
            return Err(PlanError::Table {
                disk: name,
                what: format!(
                    "the partition table is corrupt ({reason}); it is not repaired silently. Repair it (gdisk) or use mode = \"whole-disk\" to erase the disk"
                ),
            });
        }
    };

    // --- an existing RayOS install ---
    if let Some(r) = &disk.rayos {
        if let Some(m) = &facts.manifest {
            if !answers.target.reinstall {
                return Err(PlanError::CompleteInstall {
                    disk: name,
                    what: m.clone(),
                });
            }
            notes.push(format!("the RayOS install found ({m}) is replaced"));
        } else if r.system.is_some() || r.data.is_some() {
            notes.push("an unfinished RayOS install was found; its partitions are redone".into());
        }
    }

    let total_sectors = disk.size_bytes / ss;
    let (first_usable, last_usable) = usable_area(total_sectors, ss);
    let align = ALIGN / ss;
    let mut plan_parts: Vec<PartitionPlan> = Vec::new();
    let mut used_numbers: Vec<u32> = Vec::new();
    let mut occupied: Vec<(u64, u64)> = Vec::new();
    let mut esp: Option<PartitionPlan> = None;
    let mut reuse_roles: Vec<PartitionPlan> = Vec::new();

    // Which existing partitions stay, go, or get a role.
    let reinstall_ok = facts.manifest.is_none() || answers.target.reinstall;
    let mut named: Vec<(Role, &Located<PartRef>)> = Vec::new();
    if mode == Mode::Reuse {
        if let Some(s) = &answers.target.system {
            named.push((Role::System, s));
        }
        if let Some(d) = &answers.target.data {
            named.push((Role::Data, d));
        }
    }
    for (role, st) in [
        (Role::VmLinux, &answers.vm_storage.linux),
        (Role::VmWindows, &answers.vm_storage.windows),
    ] {
        if let VmStorage::Reuse(r) = st {
            if mode == Mode::WholeDisk {
                return Err(PlanError::Partition {
                    at: format!("answer line {}", r.line),
                    what: "VM storage { reuse = ... } cannot be used with mode = \"whole-disk\" (every partition is deleted); use { create = \"SIZE\" }".into(),
                });
            }
            named.push((role, r));
        }
    }
    let mut named_numbers: Vec<(Role, u32)> = Vec::new();
    for (role, r) in &named {
        let p = cx.find(r, role.gpt_name())?;
        if let Some((other, _)) = named_numbers.iter().find(|(_, n)| *n == p.number) {
            return Err(PlanError::Partition {
                at: format!("answer line {}", r.line),
                what: format!(
                    "partition {} is named for two roles ({} and {}): the roles would overlap",
                    p.number,
                    other.gpt_name(),
                    role.gpt_name()
                ),
            });
        }
        if p.family == TypeFamily::Esp {
            return Err(PlanError::Partition {
                at: format!("answer line {}", r.line),
                what: format!(
                    "partition {} is an EFI system partition; it is never reformatted",
                    p.number
                ),
            });
        }
        if p.first_lba % align != 0 {
            return Err(PlanError::Partition {
                at: format!("answer line {}", r.line),
                what: format!(
                    "partition {} starts at sector {}, not on a 1 MiB boundary; RayOS uses only aligned partitions (recreate it aligned, or use free space)",
                    p.number, p.first_lba
                ),
            });
        }
        if holds_another_system(p) && !cx.consented(p) || is_rayos_partition(p) && !reinstall_ok {
            return Err(PlanError::NeedsConsent {
                at: format!("answer line {}", r.line),
                part: format!("partition {} of {name}", p.number),
                holds: family_words(p),
            });
        }
        let min = match role {
            Role::System => MIN_SYSTEM,
            Role::Data => MIN_DATA,
            _ => MIN_VM_STORAGE,
        };
        if p.size_bytes < min {
            return Err(PlanError::TooSmall {
                disk: format!("partition {} of {name}", p.number),
                needed: min,
                available: p.size_bytes,
                available_what: "it has".into(),
            });
        }
        named_numbers.push((*role, p.number));
        reuse_roles.push(format_existing(*role, p));
    }

    if table == TableAction::Edit {
        // Explicit ESP in reuse mode, else the disk's first ESP.
        let wanted_esp = match (&answers.target.esp, mode) {
            (Some(r), Mode::Reuse) => {
                let p = cx.find(r, "esp")?;
                if p.family != TypeFamily::Esp {
                    return Err(PlanError::Partition {
                        at: format!("answer line {} (esp)", r.line),
                        what: format!(
                            "partition {} is not an EFI system partition ({})",
                            p.number, p.type_name
                        ),
                    });
                }
                Some(p.number)
            }
            _ => disk.esps().next().map(|p| p.number),
        };
        for p in &disk.partitions {
            if named_numbers.iter().any(|(_, n)| *n == p.number) {
                occupied.push((p.first_lba, p.last_lba));
                used_numbers.push(p.number);
                continue;
            }
            if Some(p.number) == wanted_esp {
                let fat = p.filesystem.is_some_and(Filesystem::is_fat);
                let mut pp = keep(p);
                pp.role = Some(Role::Esp);
                if fat {
                    pp.action = Action::ReuseEsp;
                } else if p.name == NAME_ESP && p.filesystem.is_none() {
                    // Ours, from an install cut off before it was formatted.
                    pp = format_existing(Role::Esp, p);
                } else {
                    return Err(PlanError::Partition {
                        at: format!("partition {} of {name}", p.number),
                        what: format!(
                            "the EFI system partition holds {}, not FAT; RayOS does not reformat an ESP it did not create. Repair it (fsck.fat / mkfs.fat) or choose another disk",
                            family_words(p)
                        ),
                    });
                }
                occupied.push((p.first_lba, p.last_lba));
                used_numbers.push(p.number);
                esp = Some(pp);
                continue;
            }
            // RayOS partitions of an unfinished install (or one being
            // replaced) are redone in free-space mode; in reuse mode the
            // ones not named stay.
            if mode == Mode::FreeSpace && is_rayos_partition(p) && reinstall_ok {
                let mut pp = keep(p);
                pp.action = Action::Delete;
                pp.role = role_of_rayos(p);
                plan_parts.push(pp);
                continue;
            }
            occupied.push((p.first_lba, p.last_lba));
            used_numbers.push(p.number);
            plan_parts.push(keep(p));
        }
    } else {
        for p in &disk.partitions {
            let mut pp = keep(p);
            pp.action = Action::Delete;
            plan_parts.push(pp);
        }
    }

    // --- sizes of what is created ---
    let round = |b: u64| b.div_ceil(ALIGN) * ALIGN;
    let mut creates: Vec<(Role, u64)> = Vec::new();
    if esp.is_none() {
        if answers.sizes.esp < MIN_ESP {
            return Err(PlanError::Partition {
                at: "[sizes] esp".into(),
                what: format!(
                    "an ESP RayOS creates must be at least {}",
                    human_size(MIN_ESP)
                ),
            });
        }
        creates.push((Role::Esp, round(answers.sizes.esp)));
    }
    if !named_numbers.iter().any(|(r, _)| *r == Role::System) {
        if answers.sizes.system < MIN_SYSTEM {
            return Err(PlanError::Partition {
                at: "[sizes] system".into(),
                what: format!(
                    "the system partition must be at least {}",
                    human_size(MIN_SYSTEM)
                ),
            });
        }
        creates.push((Role::System, round(answers.sizes.system)));
    }
    for (role, st) in [
        (Role::VmLinux, &answers.vm_storage.linux),
        (Role::VmWindows, &answers.vm_storage.windows),
    ] {
        if let VmStorage::Create(b) = st {
            if *b < MIN_VM_STORAGE {
                return Err(PlanError::Partition {
                    at: format!(
                        "[vm_storage] {}",
                        if role == Role::VmLinux {
                            "linux"
                        } else {
                            "windows"
                        }
                    ),
                    what: format!("VM storage must be at least {}", human_size(MIN_VM_STORAGE)),
                });
            }
            creates.push((role, round(*b)));
        }
    }
    let data_named = named_numbers.iter().any(|(r, _)| *r == Role::Data);
    let data_size = match answers.sizes.data {
        _ if data_named => None,
        DataSize::Rest => Some(None),
        DataSize::Bytes(b) if b < MIN_DATA => {
            return Err(PlanError::Partition {
                at: "[sizes] data".into(),
                what: format!(
                    "the data partition must be at least {}",
                    human_size(MIN_DATA)
                ),
            });
        }
        DataSize::Bytes(b) => Some(Some(round(b))),
    };
    let fixed: u64 = creates.iter().map(|(_, b)| b).sum();
    let needed = fixed
        + match data_size {
            Some(Some(b)) => b,
            Some(None) => MIN_DATA,
            None => 0,
        };

    // --- where they go ---
    let mut bytes_allocated = 0;
    if needed > 0 {
        let regions = free_runs(&occupied, first_usable, last_usable, align);
        let largest = regions
            .iter()
            .copied()
            .max_by_key(|(a, b)| b - a)
            .map(|(a, b)| (a, b, (b + 1 - a) * ss));
        let Some((start, end, _)) = largest.filter(|(_, _, avail)| *avail >= needed) else {
            let avail = largest.map(|l| l.2).unwrap_or(0);
            let what = if table == TableAction::New {
                "the disk offers".to_string()
            } else {
                "its largest free region is".to_string()
            };
            return Err(PlanError::TooSmall {
                disk: name,
                needed: needed
                    + if table == TableAction::New {
                        2 * ALIGN
                    } else {
                        0
                    },
                available: avail,
                available_what: what,
            });
        };
        let mut free_numbers = (1..=128u32).filter(|n| !used_numbers.contains(n));
        let mut cursor = start;
        let mut new_parts = Vec::new();
        for (role, bytes) in &creates {
            let n = free_numbers.next().ok_or_else(|| PlanError::Table {
                disk: name.clone(),
                what: "all 128 partition slots are taken".into(),
            })?;
            let last = cursor + bytes / ss - 1;
            new_parts.push(new_partition(*role, n, cursor, last, ss));
            cursor = last + 1;
        }
        if let Some(d) = data_size {
            let n = free_numbers.next().ok_or_else(|| PlanError::Table {
                disk: name.clone(),
                what: "all 128 partition slots are taken".into(),
            })?;
            let last = match d {
                Some(b) => cursor + b / ss - 1,
                // End on a 1 MiB boundary too, when that still leaves the
                // minimum (sgdisk -v warns about unaligned ends).
                None => {
                    let aligned = (end + 1) / align * align;
                    if aligned > cursor && (aligned - cursor) * ss >= MIN_DATA {
                        aligned - 1
                    } else {
                        end
                    }
                }
            };
            new_parts.push(new_partition(Role::Data, n, cursor, last, ss));
        }
        for p in new_parts {
            bytes_allocated += p.size_bytes;
            if p.role == Some(Role::Esp) {
                esp = Some(p);
            } else {
                plan_parts.push(p);
            }
        }
    }
    for p in reuse_roles {
        bytes_allocated += p.size_bytes;
        plan_parts.push(p);
    }
    let Some(esp) = esp else {
        return Err(PlanError::Invalid("no ESP in the plan".into()));
    };
    if esp.action == Action::ReuseEsp && esp.size_bytes < 64 * MIB {
        notes.push(format!(
            "the reused ESP is small ({}); RayOS adds only systemd-boot (about 100 KiB) to it",
            human_size(esp.size_bytes)
        ));
    }
    if loader_role(disk.logical_sector_size) == Role::System {
        notes.push(
            "4096-byte sectors: systemd-boot is installed on the system partition and the boot entry points there (systemd-boot cannot find an XBOOTLDR partition on such a disk)".into(),
        );
    }
    plan_parts.push(esp);
    plan_parts.sort_by_key(|p| (p.action == Action::Delete, p.first_lba));

    // --- what goes on the partitions ---
    let machine = MachineConfig::new(
        &answers.machine.hostname,
        &answers.machine.timezone,
        &answers.machine.locale,
        &answers.machine.keyboard,
    );
    let policy = answers.policy.to_policy();
    let linux_guest = linux_guest(answers, opts, &mut notes)?;
    let registry = seed_registry_with(answers.policy.windows_enabled, linux_guest.clone());
    let version = opts.rayos_version.clone();
    let uki = format!("rayos-{version}+3.efi");
    let mut files = vec![
        FilePlan {
            role: loader_role(disk.logical_sector_size),
            path: ESP_SYSTEMD_BOOT.into(),
            source: Source::HostFile {
                path: opts.systemd_boot.clone(),
            },
            only_if_absent: false,
        },
        FilePlan {
            role: Role::Esp,
            path: ESP_FALLBACK.into(),
            source: Source::HostFile {
                path: opts.systemd_boot.clone(),
            },
            only_if_absent: true,
        },
        FilePlan {
            role: loader_role(disk.logical_sector_size),
            path: ESP_LOADER_CONF.into(),
            source: Source::Text {
                content: loader_conf(),
            },
            only_if_absent: false,
        },
        FilePlan {
            role: Role::System,
            path: format!("/EFI/Linux/{uki}"),
            source: Source::HostFile {
                path: opts
                    .system_image
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("<--system-image>")),
            },
            only_if_absent: false,
        },
    ];
    match &opts.recovery_image {
        Some(image) => {
            use rayos_state::system::{
                RECOVERY_DIR, RECOVERY_ENTRY, recovery_entry_text, recovery_uki_name,
            };
            let efi = format!("/{RECOVERY_DIR}/{}", recovery_uki_name(&version));
            files.push(FilePlan {
                role: Role::System,
                path: efi.clone(),
                source: Source::HostFile {
                    path: image.clone(),
                },
                only_if_absent: false,
            });
            files.push(FilePlan {
                role: Role::System,
                path: format!("/{RECOVERY_ENTRY}"),
                source: Source::Text {
                    content: recovery_entry_text(&version, &efi),
                },
                only_if_absent: false,
            });
        }
        None => notes.push(
            "no recovery image given: the boot menu gets no \"RayOS recovery\" entry until an update brings one".into(),
        ),
    }
    let layout = rayos_state::DataLayout::new("/");
    let rel = |p: PathBuf| p.display().to_string();
    files.push(FilePlan {
        role: Role::Data,
        path: rel(layout.machine()),
        source: Source::Text {
            content: machine.to_toml(),
        },
        only_if_absent: false,
    });
    files.push(FilePlan {
        role: Role::Data,
        path: rel(layout.schema_version()),
        source: Source::Text {
            content: format!("{}\n", rayos_state::DATA_SCHEMA_VERSION),
        },
        only_if_absent: false,
    });
    files.push(FilePlan {
        role: Role::Data,
        path: rel(layout.policy()),
        source: Source::Text {
            content: policy.to_toml(),
        },
        only_if_absent: false,
    });
    files.push(FilePlan {
        role: Role::Data,
        path: rel(layout.registry()),
        source: Source::Text {
            content: registry.to_json(),
        },
        only_if_absent: false,
    });
    for d in layout.skeleton() {
        files.push(FilePlan {
            role: Role::Data,
            path: rel(d),
            source: Source::Directory,
            only_if_absent: false,
        });
    }
    let has_partition = |role: Role| {
        plan_parts
            .iter()
            .any(|p| p.role == Some(role) && p.action != Action::Delete)
    };
    for vm in &registry.vms {
        let storage_role = match vm.kind {
            VmKind::Linux => Role::VmLinux,
            _ => Role::VmWindows,
        };
        // With a dedicated partition, rayos init mounts it at vm/<id>; the
        // VM's skeleton then lives on that partition's root.
        let (role, base) = if has_partition(storage_role) {
            (storage_role, String::new())
        } else {
            (Role::Data, rel(layout.vm_dir(vm.id)))
        };
        for sub in [
            rayos_state::layout::vm::DISKS,
            rayos_state::layout::vm::STATE,
            rayos_state::layout::vm::LOGS,
        ] {
            files.push(FilePlan {
                role,
                path: format!("{base}/{sub}"),
                source: Source::Directory,
                only_if_absent: false,
            });
        }
        if vm.kind == VmKind::Linux
            && vm.guest.is_some()
            && let (Some(image), Some(disk)) = (&opts.linux_vm_image, vm.disks.first())
        {
            files.push(FilePlan {
                role,
                path: format!("{base}/{}", disk.path.display()),
                source: Source::LinuxVmImage {
                    path: image.clone(),
                    disk_size: answers.linux.disk_size,
                },
                only_if_absent: false,
            });
        }
    }
    files.push(FilePlan {
        role: Role::System,
        path: MANIFEST_PATH.into(),
        source: Source::Manifest,
        only_if_absent: false,
    });

    let nvram = (opts.nvram && disk.kind == DiskKind::BlockDevice).then(|| NvramPlan {
        description: "RayOS".into(),
        esp_number: plan_parts
            .iter()
            .find(|p| p.role == Some(loader_role(disk.logical_sector_size)))
            .map(|p| p.number)
            .unwrap_or(0),
        loader: ESP_SYSTEMD_BOOT.replace('/', "\\"),
    });
    if disk.kind == DiskKind::ImageFile {
        notes.push(
            "image file: no UEFI boot entry is written (the host's firmware is not the image's); firmware boots \\EFI\\BOOT\\BOOTX64.EFI".into(),
        );
    }

    let plan = Plan {
        schema: PLAN_SCHEMA_VERSION,
        target: disk.path.clone(),
        image_file: disk.kind == DiskKind::ImageFile,
        disk_size_bytes: disk.size_bytes,
        sector_size: disk.logical_sector_size,
        mode,
        rayos_version: version,
        table,
        table_copy,
        partitions: plan_parts,
        files,
        machine,
        policy,
        registry,
        nvram,
        bytes_allocated,
        notes,
    };
    validate(&plan)?;
    Ok(plan)
}

/// Checks a plan's layout (also for plans made elsewhere, e.g. by the
/// wizard or read back from JSON): inside the usable area, 1 MiB aligned
/// new partitions, no overlaps, one partition per slot, one of each role,
/// an ESP, a system and a data partition.
pub fn validate(plan: &Plan) -> Result<(), PlanError> {
    let ss = plan.sector_size as u64;
    if ss != 512 && ss != 4096 {
        return Err(PlanError::Invalid(format!("sector size {ss}")));
    }
    let (first, last) = usable_area(plan.disk_size_bytes / ss, ss);
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

/// Evidence that `disk` is the installer's own medium, from the report.
pub fn medium_evidence(disk: &Disk) -> Option<String> {
    if let Some(fs) = &disk.whole_disk_filesystem
        && fs.label.as_deref() == Some(MEDIUM_LABEL)
    {
        return Some(format!(
            "the disk carries the installer label {MEDIUM_LABEL}"
        ));
    }
    if let Some(p) = disk
        .partitions
        .iter()
        .find(|p| p.fs_label.as_deref() == Some(MEDIUM_LABEL))
    {
        return Some(format!(
            "partition {} carries the installer label {MEDIUM_LABEL}",
            p.number
        ));
    }
    let mounts = |u: &rayos_disk::Usage| match &u.reason {
        rayos_disk::UsageReason::Mounted { mount_point, .. } => {
            mount_point == Path::new("/") || mount_point == Path::new("/run/rayos/medium")
        }
        _ => false,
    };
    let all = disk
        .in_use
        .iter()
        .chain(disk.partitions.iter().flat_map(|p| p.in_use.iter()));
    for u in all {
        if mounts(u) {
            return Some(u.to_string());
        }
    }
    None
}

/// `loader/loader.conf` for systemd-boot (PLATFORM_NOTES): newest RayOS UKI
/// by default, a short menu timeout so other systems stay reachable.
pub fn loader_conf() -> String {
    "timeout 3\ndefault rayos-*\neditor no\nauto-firmware no\nconsole-mode keep\n".into()
}

/// The Linux VM's disk in its directory when it runs the Debian image.
pub const LINUX_VM_DISK: &str = "disks/root.qcow2";

/// The first-boot settings of the Debian VM, or `None` when the Linux VM
/// is the test guest (no image on the medium, or no user in the answers;
/// a note says which).
fn linux_guest(
    answers: &Answers,
    opts: &PlanOptions,
    notes: &mut Vec<String>,
) -> Result<Option<rayos_state::GuestConfig>, PlanError> {
    use crate::answers::LinuxSystem;
    let l = &answers.linux;
    let debian = match (l.system, &opts.linux_vm_image) {
        (Some(LinuxSystem::TestGuest), _) => false,
        (Some(LinuxSystem::Debian), None) => {
            return Err(PlanError::Invalid(
                "[linux] system = \"debian\", but the installer has no Debian VM image (rayos/linux-vm.img.zst on the medium, or --linux-vm-image)".into(),
            ));
        }
        (Some(LinuxSystem::Debian), Some(_)) => true,
        (None, Some(_)) if l.user.is_some() => true,
        (None, Some(_)) => {
            notes.push(
                "no [linux] user: the Linux VM is the small test guest; give linux.user and linux.password for the Debian VM".into(),
            );
            false
        }
        (None, None) => {
            if l.user.is_some() {
                notes.push(
                    "no Debian VM image on this medium: the Linux VM is the small test guest (its user settings are not used)".into(),
                );
            }
            false
        }
    };
    if !debian {
        return Ok(None);
    }
    let user = l
        .user
        .clone()
        .ok_or_else(|| PlanError::Invalid("the Debian VM needs linux.user".into()))?;
    // The VM's own name on the network: the machine's, marked as its Linux.
    let mut hostname = format!("{}-linux", answers.machine.hostname);
    hostname.truncate(63);
    let g = rayos_state::GuestConfig {
        user,
        password_hash: l.password_hash.clone(),
        ssh_authorized_key: l.ssh_key.clone(),
        hostname: hostname.trim_end_matches('-').to_string(),
        timezone: answers.machine.timezone.clone(),
        locale: answers.machine.locale.clone(),
        keyboard: answers.machine.keyboard.clone(),
    };
    g.validate().map_err(PlanError::Invalid)?;
    notes.push(format!(
        "the Linux VM is Debian 12 from {} on a {} thin qcow2 disk, user {}",
        opts.linux_vm_image
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        human_size(l.disk_size),
        g.user
    ));
    Ok(Some(g))
}

/// The registry a fresh install starts with: the Linux subsystem VM (the
/// bundled test guest by direct kernel boot) and, when enabled, Windows.
pub fn seed_registry(windows: bool) -> Registry {
    seed_registry_with(windows, None)
}

/// [`seed_registry`] with the Linux VM running the Debian image (UEFI,
/// [`LINUX_VM_DISK`], first-boot settings `guest`) when `guest` is given.
pub fn seed_registry_with(windows: bool, guest: Option<rayos_state::GuestConfig>) -> Registry {
    let linux = match guest {
        Some(g) => VmDefinition {
            id: Uuid::new_v4(),
            name: "linux".into(),
            kind: VmKind::Linux,
            memory_mib: 1024,
            cpus: 2,
            disks: vec![DiskSpec {
                path: LINUX_VM_DISK.into(),
                format: DiskFormat::Qcow2,
            }],
            boot: BootSpec::Uefi { secure_boot: false },
            tpm: false,
            media: vec![],
            provisioned: true,
            guest: Some(g),
        },
        None => test_guest_vm(),
    };
    let mut vms = vec![linux];
    if windows {
        vms.push(VmDefinition {
            id: Uuid::new_v4(),
            name: "windows".into(),
            kind: VmKind::Windows,
            memory_mib: 4096,
            cpus: 2,
            disks: vec![DiskSpec {
                path: "disks/system.qcow2".into(),
                format: DiskFormat::Qcow2,
            }],
            boot: BootSpec::Uefi { secure_boot: true },
            tpm: true,
            media: vec![],
            provisioned: false,
            guest: None,
        });
    }
    let mut r = Registry {
        vms,
        ..Default::default()
    };
    r.version = r.needed_version();
    r
}

/// The Linux VM as the bundled test guest (direct kernel boot).
fn test_guest_vm() -> VmDefinition {
    VmDefinition {
        id: Uuid::new_v4(),
        name: "linux".into(),
        kind: VmKind::Linux,
        memory_mib: 1024,
        cpus: 2,
        disks: vec![],
        boot: BootSpec::DirectKernel {
            kernel: GUEST_KERNEL.into(),
            initrd: Some(GUEST_INITRD.into()),
            cmdline: "console=tty0 console=ttyS0 quiet rayos.keys=1".into(),
        },
        tpm: false,
        media: vec![],
        provisioned: true,
        guest: None,
    }
}

/// A human rendering of the plan for `--dry-run` and the confirmation.
pub fn render(plan: &Plan) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Install plan for {} ({}, {}-byte sectors{}) — mode {}, RayOS {}",
        plan.target.display(),
        human_size(plan.disk_size_bytes),
        plan.sector_size,
        if plan.image_file { ", image file" } else { "" },
        plan.mode,
        plan.rayos_version
    );
    let _ = writeln!(
        s,
        "Partition table: {}",
        match plan.table {
            TableAction::New => "write a new GPT (everything on the disk is replaced)",
            TableAction::Edit => "edit the existing GPT",
        }
    );
    let _ = writeln!(s, "\nPartitions:");
    for p in &plan.partitions {
        let what = match p.action {
            Action::Keep => "keep      ",
            Action::Delete => "DELETE    ",
            Action::Create => "create    ",
            Action::Format => "FORMAT    ",
            Action::ReuseEsp => "reuse ESP ",
        };
        let role = p.role.map(|r| r.label()).unwrap_or("-");
        let fs = match p.action {
            Action::Create | Action::Format => format!(
                "new {} \"{}\"",
                p.filesystem.as_deref().unwrap_or("?"),
                p.fs_label.as_deref().unwrap_or("")
            ),
            Action::ReuseEsp => "add files only, never formatted".into(),
            _ => String::new(),
        };
        let was = match (&p.was, p.action) {
            (Some(w), Action::Keep | Action::Delete | Action::Format | Action::ReuseEsp) => {
                format!("(was {w})")
            }
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "  {what} #{:<3} {:>10}  at {:>10}  {:<16} {fs} {was}",
            p.number,
            human_size(p.size_bytes),
            human_size(p.start_bytes),
            role,
        );
    }
    let _ = writeln!(s, "\nFiles:");
    for f in &plan.files {
        let src = match &f.source {
            Source::HostFile { path } => format!("from {}", path.display()),
            Source::Text { content } => format!("{} bytes", content.len()),
            Source::Directory => "directory".into(),
            Source::LinuxVmImage { path, disk_size } => format!(
                "Debian VM image {} as a {} thin qcow2",
                path.display(),
                human_size(*disk_size)
            ),
            Source::Manifest => "install manifest, written last".into(),
        };
        let cond = if f.only_if_absent {
            " (only if absent)"
        } else {
            ""
        };
        let _ = writeln!(s, "  {:<14} {:<52} {src}{cond}", f.role.label(), f.path);
    }
    let _ = writeln!(
        s,
        "\nMachine: hostname {}, timezone {}, locale {}, keyboard {}",
        plan.machine.hostname, plan.machine.timezone, plan.machine.locale, plan.machine.keyboard
    );
    let _ = writeln!(
        s,
        "Policy: Linux autostart {} (hidden: {}), Windows {}, networking {:?}",
        plan.policy.linux.autostart,
        !plan.policy.linux.present_on_boot,
        if plan.policy.windows.enabled {
            "enabled"
        } else {
            "disabled"
        },
        plan.policy.linux.networking
    );
    let vms: Vec<String> = plan
        .registry
        .vms
        .iter()
        .map(|v| format!("{} ({})", v.name, v.id))
        .collect();
    let _ = writeln!(s, "VMs: {}", vms.join(", "));
    match &plan.nvram {
        Some(n) => {
            let _ = writeln!(
                s,
                "UEFI boot entry: \"{}\" -> partition {} {} (first in BootOrder)",
                n.description, n.esp_number, n.loader
            );
        }
        None => {
            let _ = writeln!(s, "UEFI boot entry: none");
        }
    }
    for n in &plan.notes {
        let _ = writeln!(s, "Note: {n}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answers::{Answers, GIB, MIB};
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
                FakePartition::at(1, MIB, 512 * MIB, 512, types::ESP, "")
                    .fs(Filesystem::Fat32, None),
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
            // an unknown type with no filesystem: nothing to lose
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
        let base = "[target]\nmode = \"reuse\"\nsystem = 2\ndata = 3\n";
        let e = plan(&d, &answers(base)).unwrap_err();
        assert!(matches!(e, PlanError::NeedsConsent { .. }), "{e}");
        assert!(e.to_string().contains("NTFS (Windows)"), "{e}");
        let p = plan(&d, &answers(&format!("{base}format = [2]\n"))).unwrap();
        assert_eq!(p.partition(Role::System).unwrap().action, Action::Format);
        assert_eq!(
            p.partition(Role::System).unwrap().type_guid,
            types::XBOOTLDR
        );
        // partition 3 (unknown type, no filesystem) needed no consent
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
        p.partitions[2].size_bytes =
            (p.partitions[2].last_lba + 1 - p.partitions[2].first_lba) * 512;
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
}
