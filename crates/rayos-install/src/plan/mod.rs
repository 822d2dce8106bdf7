//! Plans: what an install will do to one disk, as pure data.
//!
//! [`make_plan`] turns a [`Disk`] report (from `rayos-disk`), the
//! [`Answers`] and a few facts gathered beforehand ([`Facts`]: is there a
//! complete install on the disk, is this the installer's own medium) into a
//! [`Plan`]: per partition one of create / delete / format / keep /
//! reuse-ESP, and every file to write. It does no I/O, so every refusal is
//! unit-tested on made-up disks. `--dry-run` prints the plan;
//! [`crate::apply`](mod@crate::apply) performs it.
//!
//! Stages (one module each, every one pure and tested on its own):
//!
//! ```text
//! Answers ──Intents::from_answers──┐
//! the wizard's edits ──────────────┴─> Intents ─> check ─> roles ─> size ─> place ─> files ─> Plan
//! ```
//!
//! - [`Intents`] say where RayOS goes without looking at the disk: the mode
//!   (how the table is treated), which partition each role takes (an
//!   existing one, a new one of a size, a new one at given sectors) and the
//!   consent given. An answer file means one ([`Intents::from_answers`]);
//!   the wizard's partition manager says one directly (deletes and
//!   partitions placed by hand, which answer files cannot say), and
//!   [`plan_intents`] plans either with the same rules.
//! - check (`check.rs`): the target itself (installer medium, read-only,
//!   in use, sector size, table, a complete install).
//! - resolve roles (`roles.rs`): every existing partition's fate, and the
//!   consent, size and ESP rules for partitions given a role.
//! - size (`size.rs`): the sizes of the partitions RayOS lays out
//!   (minimums, rounding, the 1 PiB bound).
//! - place (`place.rs`): where they go (the largest free region, slots).
//! - files (`files.rs`): what goes on them, the boot entry, notes; then
//!   [`validate()`] (`validate.rs`, also for plans read back from JSON).
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
//! - every other partition (Windows or Linux type, any filesystem that is
//!   not ours, and any bytes RayOS does not recognise: APFS, ZFS, FreeBSD,
//!   BitLocker To Go, ...) is reformatted only when listed in
//!   `[target].format`; only a partition of no known system's type that
//!   [`crate::facts::gather`] read to be all zeros needs no consent
//!   ([`holds_another_system`], which the wizard asks through too).
//!
//! Limits: one free region per install (no spreading across gaps); the
//! usable area of a GPT is taken to be the standard one (128 entries), and
//! `apply` re-checks the layout against the real table before writing.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use rayos_disk::types;
use rayos_disk::{Disk, PartitionReport};
use rayos_state::{MachineConfig, Policy, Registry};

use crate::answers::{
    Answers, GIB, LinuxAnswers, MIB, MachineAnswers, Mode, PolicyAnswers, human_size,
};

mod check;
mod files;
mod intents;
mod place;
mod render;
mod roles;
mod size;
#[cfg(test)]
mod tests;
mod validate;

pub use check::medium_evidence;
pub use files::{loader_conf, seed_registry, seed_registry_with};
pub use intents::{Intents, Place};
pub use render::render;
pub use roles::{first_kept_esp, holds_another_system, is_rayos_partition};
pub use validate::validate;

/// The plan's `schema` (in its JSON form).
pub const PLAN_SCHEMA_VERSION: u32 = 1;
/// Every partition RayOS creates starts on a 1 MiB boundary.
pub const ALIGN: u64 = 1 << 20;
/// An ESP RayOS creates is at least this large (ARCHITECTURE.md §2).
pub const MIN_ESP: u64 = 512 * MIB;
/// The system partition holds two UKIs and a recovery UKI.
pub const MIN_SYSTEM: u64 = 512 * MIB;
/// The smallest data volume RayOS creates.
pub const MIN_DATA: u64 = GIB;
/// The smallest VM-storage partition RayOS creates.
pub const MIN_VM_STORAGE: u64 = GIB;

/// GPT partition names (also how an unfinished install is recognised).
pub const NAME_ESP: &str = "rayos-esp";
/// GPT name of the RayOS system partition.
pub const NAME_SYSTEM: &str = rayos_disk::report::LABEL_SYSTEM;
/// GPT name of the data volume.
pub const NAME_DATA: &str = rayos_disk::report::LABEL_DATA;
/// GPT name of the Linux VM's storage partition.
pub const NAME_VM_LINUX: &str = rayos_disk::report::LABEL_VM_LINUX;
/// GPT name of the Windows VMs' storage partition.
pub const NAME_VM_WINDOWS: &str = rayos_disk::report::LABEL_VM_WINDOWS;
/// FAT labels hold at most 11 characters, so the system partition's
/// filesystem label is shorter than its GPT name.
pub const FAT_LABEL_SYSTEM: &str = "RAYOS-SYS";
/// FAT label of an ESP RayOS creates.
pub const FAT_LABEL_ESP: &str = "EFI";
/// The ISO volume label of the installer media.
pub const MEDIUM_LABEL: &str = "RAYOS_INSTALL";

/// Paths on the partitions.
pub const SYSTEMD_BOOT_HOST: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// systemd-boot on the ESP.
pub const ESP_SYSTEMD_BOOT: &str = "/EFI/systemd/systemd-bootx64.efi";
/// The removable-media fallback loader on the ESP.
pub const ESP_FALLBACK: &str = "/EFI/BOOT/BOOTX64.EFI";
/// systemd-boot's configuration on the ESP.
pub const ESP_LOADER_CONF: &str = "/loader/loader.conf";
/// The install manifest on the system partition (written last).
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
/// The test guest's initramfs inside the RayOS image.
pub const GUEST_INITRD: &str = "/usr/share/rayos/guest/initrd.img";
/// The Linux VM's disk in its directory when it runs the Debian image.
pub const LINUX_VM_DISK: &str = "disks/root.qcow2";

/// Why a plan cannot be made. Each message says what to do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The target is in use.
    #[error("{disk} is in use ({}): choose another target, or unmount/stop what uses it", .usages.join("; "))]
    InUse {
        /// The target.
        disk: String,
        /// What uses it.
        usages: Vec<String>,
    },
    /// The target is the medium the installer runs from.
    #[error("{disk} is the medium this installer runs from ({why}): choose another disk")]
    InstallerMedium {
        /// The target.
        disk: String,
        /// How that was recognised.
        why: String,
    },
    /// The target is read-only.
    #[error("{disk} is read-only: choose another disk or remove its write protection")]
    ReadOnly {
        /// The target.
        disk: String,
    },
    /// The target is too small for the plan.
    #[error(
        "{disk} is too small: this plan needs {} (at least {}), but {} {}; choose a larger disk or smaller sizes",
        human_size(*.needed), .needed, .available_what, human_size(*.available)
    )]
    TooSmall {
        /// The target.
        disk: String,
        /// Bytes the plan needs.
        needed: u64,
        /// Bytes there are.
        available: u64,
        /// Where those bytes are (`the disk offers`, `its largest free
        /// region is`).
        available_what: String,
    },
    /// The target's partition table cannot be used for this mode.
    #[error("{disk}: {what}")]
    Table {
        /// The target.
        disk: String,
        /// What is wrong.
        what: String,
    },
    /// The target holds a complete RayOS install and `reinstall` is not set.
    #[error(
        "{disk} holds a complete RayOS install ({what}): it is never overwritten silently; set reinstall = true in [target] to replace it (its data volume is erased)"
    )]
    CompleteInstall {
        /// The target.
        disk: String,
        /// The install found.
        what: String,
    },
    /// A partition the answers name cannot be used as asked.
    #[error("{at}: {what}")]
    Partition {
        /// Where in the answer file.
        at: String,
        /// What is wrong.
        what: String,
    },
    /// Reusing a partition would erase another system's data and the answers
    /// do not consent.
    #[error(
        "{at}: {part} holds {holds}; reusing it erases it. If that is intended, list it in [target] format = [...]"
    )]
    NeedsConsent {
        /// Where in the answer file.
        at: String,
        /// The partition.
        part: String,
        /// What it holds.
        holds: String,
    },
    /// The plan or what it is made from breaks a rule (sizes that overflow,
    /// a Debian VM without a user, a partition [`validate`] refuses); says
    /// which.
    #[error("invalid plan: {0}")]
    Invalid(String),
}

/// What a partition is for in RayOS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The EFI system partition (systemd-boot, loader.conf).
    Esp,
    /// The RayOS system partition (XBOOTLDR: the UKIs and the manifest).
    System,
    /// The data volume (`/var/rayos`).
    Data,
    /// The Linux VM's own storage partition.
    VmLinux,
    /// The Windows VMs' own storage partition.
    VmWindows,
}

impl Role {
    /// Every role, in the order the install formats them.
    pub const ALL: [Role; 5] = [
        Role::Esp,
        Role::System,
        Role::Data,
        Role::VmLinux,
        Role::VmWindows,
    ];

    /// The GPT partition name the role gets.
    pub fn gpt_name(self) -> &'static str {
        match self {
            Role::Esp => NAME_ESP,
            Role::System => NAME_SYSTEM,
            Role::Data => NAME_DATA,
            Role::VmLinux => NAME_VM_LINUX,
            Role::VmWindows => NAME_VM_WINDOWS,
        }
    }
    /// The partition type GUID the role gets.
    pub fn type_guid(self) -> Uuid {
        match self {
            Role::Esp => types::ESP,
            Role::System => types::XBOOTLDR,
            Role::Data => types::RAYOS_DATA,
            Role::VmLinux | Role::VmWindows => types::RAYOS_VM_STORAGE,
        }
    }
    /// The filesystem the role gets.
    pub fn fs(self) -> FsKind {
        match self {
            Role::Esp | Role::System => FsKind::Fat32,
            _ => FsKind::Ext4,
        }
    }
    /// The filesystem label the role gets.
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
    /// The smallest partition the role takes (an ESP: when RayOS creates
    /// it; an existing one is reused at any size).
    pub fn min_size(self) -> u64 {
        match self {
            Role::Esp => MIN_ESP,
            Role::System => MIN_SYSTEM,
            Role::Data => MIN_DATA,
            Role::VmLinux | Role::VmWindows => MIN_VM_STORAGE,
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

/// A filesystem the installer creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsKind {
    /// FAT32 (the ESP and the system partition).
    Fat32,
    /// ext4 (the data volume and VM storage).
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
    /// What happens to it.
    pub action: Action,
    /// What RayOS uses it for (`None`: another system's partition).
    pub role: Option<Role>,
    /// Its number in the GPT.
    pub number: u32,
    /// Its first sector.
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    /// Where it starts, in bytes.
    pub start_bytes: u64,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Its type GUID after the install.
    pub type_guid: Uuid,
    /// Its own GUID (`PARTUUID`).
    pub unique_guid: Uuid,
    /// GPT partition name after the install.
    pub name: String,
    /// Filesystem created (Create/Format) or found (others).
    pub filesystem: Option<String>,
    /// Its filesystem label.
    pub fs_label: Option<String>,
    /// What the partition held before, in words ("NTFS (Windows)").
    pub was: Option<String>,
}

/// Where a file's content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Source {
    /// A file on the installer's host.
    HostFile {
        /// The file.
        path: PathBuf,
    },
    /// Text made by the installer (shown in full in the plan).
    Text {
        /// The text.
        content: String,
    },
    /// A directory.
    Directory,
    /// The install manifest, made when everything else is written.
    Manifest,
    /// The Linux VM's disk: the compressed Debian VM image on the
    /// installer's host (`linux-vm.qcow2.zst`, or a raw `linux-vm.img.zst`),
    /// written as a thin qcow2 of `disk_size` bytes (`crate::vmdisk`).
    LinuxVmImage {
        /// The compressed image.
        path: PathBuf,
        /// The qcow2's virtual size in bytes.
        disk_size: u64,
    },
}

/// One file (or directory) the install writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePlan {
    /// The partition it goes to.
    pub role: Role,
    /// Absolute path on that partition's filesystem.
    pub path: String,
    /// Where its content comes from.
    pub source: Source,
    /// Written only when nothing is at `path` yet (the fallback loader on
    /// a reused ESP must not replace another system's).
    #[serde(default)]
    pub only_if_absent: bool,
}

/// The UEFI boot entry to add.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NvramPlan {
    /// The entry's description (what the boot menu shows).
    pub description: String,
    /// The partition holding the loader: the ESP, or the system partition
    /// on a 4096-byte-sector disk (see [`loader_role`]).
    pub esp_number: u32,
    /// Backslash form, as UEFI wants it.
    pub loader: String,
}

/// One entry of a hybrid MBR (Boot Camp, `sgdisk -h`): a legacy BIOS's
/// view of a GPT partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MbrEntry {
    /// 1..=4.
    pub slot: u32,
    /// The MBR partition type byte.
    pub type_byte: u8,
    /// The first sector.
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
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
    /// The plan's schema ([`PLAN_SCHEMA_VERSION`]).
    pub schema: u32,
    /// The target disk (device or image file).
    pub target: PathBuf,
    /// Whether the target is an image file.
    pub image_file: bool,
    /// The target's size in bytes.
    pub disk_size_bytes: u64,
    /// Its logical sector size in bytes.
    pub sector_size: u32,
    /// How RayOS is placed on it.
    pub mode: Mode,
    /// The RayOS version installed.
    pub rayos_version: String,
    /// Whether the partition table is new or edited.
    pub table: TableAction,
    /// Set when the table is read from one copy only (an interrupted table
    /// write of an unfinished install); both copies are rewritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_copy: Option<TableCopy>,
    /// The entries of the disk's hybrid MBR, kept as they are when the
    /// table is edited (`validate` refuses a plan that changes a partition
    /// one of them names). Empty for a protective MBR or a new table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hybrid_mbr: Vec<MbrEntry>,
    /// Every partition of the disk after the install, plus those deleted.
    pub partitions: Vec<PartitionPlan>,
    /// Every file and directory the install writes.
    pub files: Vec<FilePlan>,
    /// `machine.toml` for the data volume.
    pub machine: MachineConfig,
    /// The first policy file.
    pub policy: Policy,
    /// The first VM registry (the Linux VM).
    pub registry: Registry,
    /// The UEFI boot entry to add, if any.
    pub nvram: Option<NvramPlan>,
    /// Disk bytes the new partitions take.
    pub bytes_allocated: u64,
    /// Warnings for the person confirming (nothing blocks).
    pub notes: Vec<String>,
}

impl Plan {
    /// The partition planned for `role` (not a deleted one).
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
        rayos_base::uki_name::new_entry(&self.rayos_version)
    }

    /// The plan as pretty JSON (what `--dry-run --json` prints).
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
    /// What reading the partitions RayOS does not recognise found (no
    /// filesystem it knows, a type of no known system): only one proven
    /// to be all zeros may be formatted without consent.
    pub scanned: Vec<Scanned>,
}

impl Facts {
    /// What was found in `p` (`None`: not read).
    pub fn contents(&self, p: &PartitionReport) -> Option<Contents> {
        self.scanned
            .iter()
            .find(|s| {
                s.number == p.number && s.first_lba == p.first_lba && s.last_lba == p.last_lba
            })
            .map(|s| s.contents)
    }
}

/// A partition read by [`crate::facts::gather`] because RayOS does not
/// recognise what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    /// The partition's number.
    pub number: u32,
    /// Its first sector.
    pub first_lba: u64,
    /// Its last sector (inclusive).
    pub last_lba: u64,
    /// What was found.
    pub contents: Contents,
}

/// What the bytes of an unrecognised partition are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contents {
    /// Every byte is zero: nothing to lose.
    AllZero,
    /// Some byte is not zero: another system's data, of a kind RayOS does
    /// not know (APFS, ZFS, FreeBSD UFS, BitLocker To Go, ...).
    NotZero,
    /// Larger than RayOS reads to find out ([`crate::facts::ZERO_SCAN_LIMIT`]
    /// of data), and zero as far as it read.
    TooLarge,
}

/// Which copy of a GPT a plan was made from (when the copies disagree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TableCopy {
    /// The primary copy.
    Primary,
    /// The backup copy, at the end of the disk.
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
    /// The copy that is valid.
    pub copy: TableCopy,
    /// The disk as that copy describes it.
    pub disk: Disk,
}

/// Inputs that do not come from the answer file.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// The RayOS version to install.
    pub rayos_version: String,
    /// The RayOS UKI to install (shown as a placeholder when `None`, which
    /// only a dry run accepts).
    pub system_image: Option<PathBuf>,
    /// systemd-boot's EFI binary on the installer's host.
    pub systemd_boot: PathBuf,
    /// The recovery UKI; with it the install gets the "RayOS recovery" boot
    /// menu entry (installer media carry it beside the system image).
    pub recovery_image: Option<PathBuf>,
    /// Add a UEFI boot entry (only ever for block devices).
    pub nvram: bool,
    /// The Debian VM image (`rayos/linux-vm.qcow2.zst` on installer media);
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

/// Makes the plan for an answer file. Pure: everything it needs is in its
/// arguments.
pub fn make_plan(
    disk: &Disk,
    answers: &Answers,
    facts: &Facts,
    opts: &PlanOptions,
) -> Result<Plan, PlanError> {
    plan_intents(
        disk,
        &Intents::from_answers(answers),
        &answers.machine,
        &answers.policy,
        &answers.linux,
        facts,
        opts,
    )
}

/// Makes the plan for `intents` (an answer file's, or the wizard's) on
/// `disk`, with `machine`, `policy` and the Linux VM (`linux`) seeded on
/// the data volume. Pure; the stages in order, each refusing with the first
/// problem it finds.
pub fn plan_intents(
    disk: &Disk,
    intents: &Intents,
    machine: &MachineAnswers,
    policy: &PolicyAnswers,
    linux: &LinuxAnswers,
    facts: &Facts,
    opts: &PlanOptions,
) -> Result<Plan, PlanError> {
    let target = check::check(disk, intents, facts)?;
    let roles = roles::resolve(&target, intents, facts)?;
    let sizes = size::size(&roles.new)?;
    let new = place::place(&target, &roles.parts, &sizes)?;
    files::finish(
        target,
        roles.parts.into_iter().chain(new).collect(),
        intents.mode,
        machine,
        policy,
        linux,
        opts,
    )
}
