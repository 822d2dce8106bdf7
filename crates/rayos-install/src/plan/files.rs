//! Stage 5, files: what goes on the partitions — systemd-boot, its loader
//! configuration, the UKIs, the seeded data volume, the VMs' directories
//! (and the Debian VM's disk when the medium carries its image), the
//! manifest last — the UEFI boot entry, the notes for the person, and the
//! finished [`Plan`], checked by [`validate`].

use std::path::PathBuf;

use uuid::Uuid;

use rayos_disk::{Disk, DiskKind};
use rayos_state::registry::{BootSpec, DiskFormat, DiskSpec};
use rayos_state::{MachineConfig, Policy, Registry, VmDefinition, VmKind};

use crate::answers::{
    LinuxAnswers, LinuxSystem, MIB, MachineAnswers, Mode, PolicyAnswers, human_size,
};

use super::check::Target;
use super::validate::{hybrid_entries, validate};
use super::{
    Action, ESP_FALLBACK, ESP_LOADER_CONF, ESP_SYSTEMD_BOOT, FilePlan, GUEST_INITRD, GUEST_KERNEL,
    LINUX_VM_DISK, MANIFEST_PATH, NvramPlan, PLAN_SCHEMA_VERSION, PartitionPlan, Plan, PlanError,
    PlanOptions, Role, Source, loader_role,
};

/// Finishes the plan. Input: the target, every partition of the plan
/// (resolved and placed), the mode to record, the machine, policy and
/// Linux VM answers, the options (images, version, boot entry). Output:
/// the validated [`Plan`].
pub(super) fn finish(
    target: Target,
    mut parts: Vec<PartitionPlan>,
    mode: Mode,
    machine: &MachineAnswers,
    policy: &PolicyAnswers,
    linux: &LinuxAnswers,
    opts: &PlanOptions,
) -> Result<Plan, PlanError> {
    let Target {
        disk,
        table,
        table_copy,
        mut notes,
        ..
    } = target;
    let Some(esp) = parts
        .iter()
        .find(|p| p.role == Some(Role::Esp) && p.action != Action::Delete)
    else {
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
    parts.sort_by_key(|p| (p.action == Action::Delete, p.first_lba));
    // What the install takes: new partitions and those reformatted for a
    // role (an ESP RayOS formats was its own already).
    let bytes_allocated = parts
        .iter()
        .filter(|p| {
            p.action == Action::Create || p.action == Action::Format && p.role != Some(Role::Esp)
        })
        .map(|p| p.size_bytes)
        .sum();

    let guest = linux_guest(machine, linux, opts, &mut notes)?;
    let machine = MachineConfig::new(
        &machine.hostname,
        &machine.timezone,
        &machine.locale,
        &machine.keyboard,
    );
    let registry = seed_registry_with(policy.windows_enabled, guest);
    let policy = policy.to_policy();
    let version = opts.rayos_version.clone();
    let mut files = boot_files(disk.logical_sector_size, opts, &mut notes);
    let linux_image = opts
        .linux_vm_image
        .as_ref()
        .map(|path| Source::LinuxVmImage {
            path: path.clone(),
            disk_size: linux.disk_size,
        });
    files.extend(data_files(
        &machine,
        &policy,
        &registry,
        &parts,
        linux_image,
    ));
    let nvram = boot_entry(disk, &parts, opts);
    if disk.kind == DiskKind::ImageFile {
        notes.push(
            "image file: no UEFI boot entry is written (the host's firmware is not the image's); firmware boots \\EFI\\BOOT\\BOOTX64.EFI".into(),
        );
    }
    let hybrid_mbr = hybrid_entries(disk, table, &parts, &mut notes);
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
        hybrid_mbr,
        partitions: parts,
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

/// A file of `role`'s partition written always.
fn file(role: Role, path: impl Into<String>, source: Source) -> FilePlan {
    FilePlan {
        role,
        path: path.into(),
        source,
        only_if_absent: false,
    }
}

/// systemd-boot (and, on a reused ESP, the fallback loader only if the ESP
/// has none), its `loader.conf`, the UKI, and the recovery UKI with its boot
/// menu entry when there is one (a note says when there is not).
fn boot_files(sector_size: u32, opts: &PlanOptions, notes: &mut Vec<String>) -> Vec<FilePlan> {
    let loader = loader_role(sector_size);
    let version = &opts.rayos_version;
    let systemd_boot = || Source::HostFile {
        path: opts.systemd_boot.clone(),
    };
    let mut files = vec![
        file(loader, ESP_SYSTEMD_BOOT, systemd_boot()),
        FilePlan {
            only_if_absent: true,
            ..file(Role::Esp, ESP_FALLBACK, systemd_boot())
        },
        file(
            loader,
            ESP_LOADER_CONF,
            Source::Text {
                content: loader_conf(),
            },
        ),
        file(
            Role::System,
            format!("/EFI/Linux/{}", rayos_base::uki_name::new_entry(version)),
            Source::HostFile {
                path: opts
                    .system_image
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("<--system-image>")),
            },
        ),
    ];
    match &opts.recovery_image {
        Some(image) => {
            use rayos_state::system::{
                RECOVERY_DIR, RECOVERY_ENTRY, recovery_entry_text, recovery_uki_name,
            };
            let efi = format!("/{RECOVERY_DIR}/{}", recovery_uki_name(version));
            files.push(file(
                Role::System,
                efi.clone(),
                Source::HostFile {
                    path: image.clone(),
                },
            ));
            files.push(file(
                Role::System,
                format!("/{RECOVERY_ENTRY}"),
                Source::Text {
                    content: recovery_entry_text(version, &efi),
                },
            ));
        }
        None => notes.push(
            "no recovery image given: the boot menu gets no \"RayOS recovery\" entry until an update brings one".into(),
        ),
    }
    files
}

/// The data volume's seed (machine, schema version, policy, registry, its
/// directories), each VM's directories — on its own partition's root when
/// it has one, which rayos init mounts at `vm/<id>` — the Debian VM's disk
/// from `linux_image` when the Linux VM runs it, and the manifest.
fn data_files(
    machine: &MachineConfig,
    policy: &Policy,
    registry: &Registry,
    parts: &[PartitionPlan],
    linux_image: Option<Source>,
) -> Vec<FilePlan> {
    let layout = rayos_state::DataLayout::new("/");
    let rel = |p: PathBuf| p.display().to_string();
    let text = |content: String| Source::Text { content };
    let mut files = vec![
        file(Role::Data, rel(layout.machine()), text(machine.to_toml())),
        file(
            Role::Data,
            rel(layout.schema_version()),
            text(format!("{}\n", rayos_state::DATA_SCHEMA_VERSION)),
        ),
        file(Role::Data, rel(layout.policy()), text(policy.to_toml())),
        file(Role::Data, rel(layout.registry()), text(registry.to_json())),
    ];
    for d in layout.skeleton() {
        files.push(file(Role::Data, rel(d), Source::Directory));
    }
    let has_partition = |role: Role| {
        parts
            .iter()
            .any(|p| p.role == Some(role) && p.action != Action::Delete)
    };
    for vm in &registry.vms {
        let storage_role = match vm.kind {
            VmKind::Linux => Role::VmLinux,
            _ => Role::VmWindows,
        };
        let (role, base) = if has_partition(storage_role) {
            // The mount point on the data volume says which partition
            // belongs there; rayos init mounts it over this marker.
            files.push(file(
                Role::Data,
                format!(
                    "{}/{}",
                    rel(layout.vm_dir(vm.id)),
                    rayos_state::layout::vm::STORAGE_MARKER
                ),
                text(rayos_state::layout::storage_marker_text(
                    storage_role.gpt_name(),
                )),
            ));
            (storage_role, String::new())
        } else {
            (Role::Data, rel(layout.vm_dir(vm.id)))
        };
        for sub in [
            rayos_state::layout::vm::DISKS,
            rayos_state::layout::vm::STATE,
            rayos_state::layout::vm::LOGS,
        ] {
            files.push(file(role, format!("{base}/{sub}"), Source::Directory));
        }
        if vm.kind == VmKind::Linux
            && vm.guest.is_some()
            && let (Some(image), Some(disk)) = (&linux_image, vm.disks.first())
        {
            files.push(file(
                role,
                format!("{base}/{}", disk.path.display()),
                image.clone(),
            ));
        }
    }
    files.push(file(Role::System, MANIFEST_PATH, Source::Manifest));
    files
}

/// The UEFI boot entry: only for block devices (an image file's firmware
/// is not the host's), pointing at the partition the loader is on.
fn boot_entry(disk: &Disk, parts: &[PartitionPlan], opts: &PlanOptions) -> Option<NvramPlan> {
    (opts.nvram && disk.kind == DiskKind::BlockDevice).then(|| NvramPlan {
        description: "RayOS".into(),
        esp_number: parts
            .iter()
            .find(|p| p.role == Some(loader_role(disk.logical_sector_size)))
            .map(|p| p.number)
            .unwrap_or(0),
        loader: ESP_SYSTEMD_BOOT.replace('/', "\\"),
    })
}

/// `loader/loader.conf` for systemd-boot (PLATFORM_NOTES): newest RayOS UKI
/// by default, a short menu timeout so other systems stay reachable.
pub fn loader_conf() -> String {
    "timeout 3\ndefault rayos-*\neditor no\nauto-firmware no\nconsole-mode keep\n".into()
}

/// The first-boot settings of the Debian VM, or `None` when the Linux VM
/// is the test guest (`system = "test-guest"`, or no image on the medium;
/// a note says so). With the image and no `system`, a user is required.
fn linux_guest(
    machine: &MachineAnswers,
    l: &LinuxAnswers,
    opts: &PlanOptions,
    notes: &mut Vec<String>,
) -> Result<Option<rayos_state::GuestConfig>, PlanError> {
    let debian = match (l.system, &opts.linux_vm_image) {
        (Some(LinuxSystem::TestGuest), _) => false,
        (Some(LinuxSystem::Debian), None) => {
            return Err(PlanError::Invalid(
                "[linux] system = \"debian\", but the installer has no Debian VM image (rayos/linux-vm.qcow2.zst on the medium, or --linux-vm-image)".into(),
            ));
        }
        (Some(LinuxSystem::Debian), Some(_)) => true,
        (None, Some(_)) if l.user.is_some() => true,
        // A medium with the image installs Debian; without a first user
        // nobody could log in to it, and quietly installing the test guest
        // instead would leave the person with a stand-in they never chose.
        (None, Some(_)) => {
            return Err(PlanError::Invalid(
                "the Linux VM is Debian 12 and needs a first user: add [linux] with user = \"NAME\" and password = \"...\" (or ssh_key = \"ssh-ed25519 ...\") to the answer file; system = \"test-guest\" installs the small test guest instead (for tests)".into(),
            ));
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
    let mut hostname = format!("{}-linux", machine.hostname);
    hostname.truncate(63);
    let g = rayos_state::GuestConfig {
        user,
        password_hash: l.password_hash.clone(),
        ssh_authorized_key: l.ssh_key.clone(),
        hostname: hostname.trim_end_matches('-').to_string(),
        timezone: machine.timezone.clone(),
        locale: machine.locale.clone(),
        keyboard: machine.keyboard.clone(),
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
            usb_media: vec![],
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
            usb_media: vec![],
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
        usb_media: vec![],
        provisioned: true,
        guest: None,
    }
}
