//! Well-known GPT partition type GUIDs and MBR partition type bytes, with the
//! human names `rayos disks` shows for them.
//!
//! Limits: only the types a RayOS installer meets in practice (RayOS, Windows,
//! Linux, ESP and a few common others); anything else is shown by its GUID.

use uuid::Uuid;

/// EFI System Partition.
pub const ESP: Uuid = Uuid::from_u128(0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b);
/// Extended Boot Loader Partition (XBOOTLDR); RayOS's system partition.
pub const XBOOTLDR: Uuid = Uuid::from_u128(0xbc13c2ff_59e6_4262_a352_b275fd6f7172);
/// RayOS data volume (`rayos-data`, ext4, mounted at `/var/rayos`).
pub const RAYOS_DATA: Uuid = Uuid::from_u128(0x776115a0_0b1e_4358_9bda_60957fe4ab00);
/// RayOS VM storage (`rayos-vm-linux`, `rayos-vm-windows`).
pub const RAYOS_VM_STORAGE: Uuid = Uuid::from_u128(0xab8ded9f_09fa_4c47_b64e_c8f73ab097c7);
/// BIOS boot partition (GRUB core image on BIOS/GPT disks).
pub const BIOS_BOOT: Uuid = Uuid::from_u128(0x21686148_6449_6e6f_744e_656564454649);
/// Microsoft basic data (NTFS, FAT, exFAT volumes; also used by Linux tools of old).
pub const MS_BASIC_DATA: Uuid = Uuid::from_u128(0xebd0a0a2_b9e5_4433_87c0_68b6b72699c7);
/// Microsoft reserved (MSR).
pub const MS_RESERVED: Uuid = Uuid::from_u128(0xe3c9e316_0b5c_4db8_817d_f92df00215ae);
/// Windows recovery environment.
pub const WINDOWS_RECOVERY: Uuid = Uuid::from_u128(0xde94bba4_06d1_4d40_a16a_bfd50179d6ac);
/// Windows LDM metadata (dynamic disks).
pub const WINDOWS_LDM_METADATA: Uuid = Uuid::from_u128(0x5808c8aa_7e8f_42e0_85d2_e1e90434cfb3);
/// Windows LDM data (dynamic disks).
pub const WINDOWS_LDM_DATA: Uuid = Uuid::from_u128(0xaf9b60a0_1431_4f62_bc68_3311714a69ad);
/// Windows Storage Spaces.
pub const WINDOWS_STORAGE_SPACES: Uuid = Uuid::from_u128(0xe75caf8f_f680_4cee_afa3_b001e56efc2d);
/// Linux filesystem data.
pub const LINUX_FS: Uuid = Uuid::from_u128(0x0fc63daf_8483_4772_8e79_3d69d8477de4);
/// Linux root (x86-64), Discoverable Partitions Specification.
pub const LINUX_ROOT_X86_64: Uuid = Uuid::from_u128(0x4f68bce3_e8cd_4db1_96e7_fbcaf984b709);
/// Linux root (AArch64).
pub const LINUX_ROOT_ARM64: Uuid = Uuid::from_u128(0xb921b045_1df0_41c3_af44_4c6f280d3fae);
/// Linux /usr (x86-64).
pub const LINUX_USR_X86_64: Uuid = Uuid::from_u128(0x8484680c_9521_48c6_9c11_b0720656f69e);
/// Linux /home.
pub const LINUX_HOME: Uuid = Uuid::from_u128(0x933ac7e1_2eb4_4f13_b844_0e14e2aef915);
/// Linux /srv.
pub const LINUX_SRV: Uuid = Uuid::from_u128(0x3b8f8425_20e0_4f3b_907f_1a25a76f98e8);
/// Linux /var.
pub const LINUX_VAR: Uuid = Uuid::from_u128(0x4d21b016_b534_45c2_a9fb_5c16e091fd2d);
/// Linux swap.
pub const LINUX_SWAP: Uuid = Uuid::from_u128(0x0657fd6d_a4ab_43c4_84e5_0933c84b4f4f);
/// Linux LVM physical volume.
pub const LINUX_LVM: Uuid = Uuid::from_u128(0xe6d6d379_f507_44c2_a23c_238f2a3df928);
/// Linux RAID (md).
pub const LINUX_RAID: Uuid = Uuid::from_u128(0xa19d880f_05fc_4d3b_a006_743f0f84911e);
/// Linux LUKS (dm-crypt).
pub const LINUX_LUKS: Uuid = Uuid::from_u128(0xca7d7ccb_63ed_4c53_861c_1742536059cc);
/// Apple APFS container.
pub const APPLE_APFS: Uuid = Uuid::from_u128(0x7c3457ef_0000_11aa_aa11_00306543ecac);
/// Apple HFS+.
pub const APPLE_HFS: Uuid = Uuid::from_u128(0x48465300_0000_11aa_aa11_00306543ecac);
/// FreeBSD boot.
pub const FREEBSD_BOOT: Uuid = Uuid::from_u128(0x83bd6b9d_7f41_11dc_be0b_001560b84f0f);
/// FreeBSD swap.
pub const FREEBSD_SWAP: Uuid = Uuid::from_u128(0x516e7cb5_6ecf_11d6_8ff8_00022d09712b);
/// FreeBSD UFS.
pub const FREEBSD_UFS: Uuid = Uuid::from_u128(0x516e7cb6_6ecf_11d6_8ff8_00022d09712b);
/// FreeBSD ZFS.
pub const FREEBSD_ZFS: Uuid = Uuid::from_u128(0x516e7cba_6ecf_11d6_8ff8_00022d09712b);
/// Also used by OpenZFS pools on Linux and macOS.
pub const SOLARIS_ZFS: Uuid = Uuid::from_u128(0x6a898cc3_1dd2_11b2_99a6_080020736631);

/// What a partition type means to RayOS when it looks for other systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TypeFamily {
    /// The EFI system partition.
    Esp,
    /// A RayOS system partition.
    RayosSystem,
    /// A RayOS data volume.
    RayosData,
    /// A RayOS VM-storage partition.
    RayosVmStorage,
    /// Windows (basic data, MSR, recovery).
    Windows,
    /// Linux (root, home, swap, LVM, …).
    Linux,
    /// Another system's, or unknown.
    Other,
}

const KNOWN: &[(Uuid, &str, TypeFamily)] = &[
    (ESP, "EFI system partition", TypeFamily::Esp),
    (
        XBOOTLDR,
        "Extended boot loader (XBOOTLDR)",
        TypeFamily::RayosSystem,
    ),
    (RAYOS_DATA, "RayOS data", TypeFamily::RayosData),
    (
        RAYOS_VM_STORAGE,
        "RayOS VM storage",
        TypeFamily::RayosVmStorage,
    ),
    (BIOS_BOOT, "BIOS boot", TypeFamily::Other),
    (MS_BASIC_DATA, "Microsoft basic data", TypeFamily::Windows),
    (MS_RESERVED, "Microsoft reserved", TypeFamily::Windows),
    (WINDOWS_RECOVERY, "Windows recovery", TypeFamily::Windows),
    (
        WINDOWS_LDM_METADATA,
        "Windows LDM metadata",
        TypeFamily::Windows,
    ),
    (WINDOWS_LDM_DATA, "Windows LDM data", TypeFamily::Windows),
    (
        WINDOWS_STORAGE_SPACES,
        "Windows Storage Spaces",
        TypeFamily::Windows,
    ),
    (LINUX_FS, "Linux filesystem", TypeFamily::Linux),
    (LINUX_ROOT_X86_64, "Linux root (x86-64)", TypeFamily::Linux),
    (LINUX_ROOT_ARM64, "Linux root (ARM64)", TypeFamily::Linux),
    (LINUX_USR_X86_64, "Linux /usr (x86-64)", TypeFamily::Linux),
    (LINUX_HOME, "Linux /home", TypeFamily::Linux),
    (LINUX_SRV, "Linux /srv", TypeFamily::Linux),
    (LINUX_VAR, "Linux /var", TypeFamily::Linux),
    (LINUX_SWAP, "Linux swap", TypeFamily::Linux),
    (LINUX_LVM, "Linux LVM", TypeFamily::Linux),
    (LINUX_RAID, "Linux RAID", TypeFamily::Linux),
    (LINUX_LUKS, "Linux LUKS", TypeFamily::Linux),
    (APPLE_APFS, "Apple APFS", TypeFamily::Other),
    (APPLE_HFS, "Apple HFS+", TypeFamily::Other),
    (FREEBSD_BOOT, "FreeBSD boot", TypeFamily::Other),
    (FREEBSD_SWAP, "FreeBSD swap", TypeFamily::Other),
    (FREEBSD_UFS, "FreeBSD UFS", TypeFamily::Other),
    (FREEBSD_ZFS, "FreeBSD ZFS", TypeFamily::Other),
    (
        SOLARIS_ZFS,
        "ZFS (Solaris /usr, OpenZFS)",
        TypeFamily::Other,
    ),
];

/// Human name of a GPT partition type, or `None` when it is not one we know.
pub fn type_name(t: &Uuid) -> Option<&'static str> {
    KNOWN.iter().find(|(g, _, _)| g == t).map(|(_, n, _)| *n)
}

/// Family of a GPT partition type (`Other` when unknown).
pub fn type_family(t: &Uuid) -> TypeFamily {
    KNOWN
        .iter()
        .find(|(g, _, _)| g == t)
        .map(|(_, _, f)| *f)
        .unwrap_or(TypeFamily::Other)
}

/// Human name of an MBR partition type byte.
pub fn mbr_type_name(t: u8) -> &'static str {
    match t {
        0x00 => "empty",
        0x01 => "FAT12",
        0x04 | 0x06 | 0x0e => "FAT16",
        0x05 | 0x0f | 0x85 => "extended",
        0x07 => "NTFS/exFAT/HPFS",
        0x0b | 0x0c => "FAT32",
        0x27 => "Windows recovery",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x8e => "Linux LVM",
        0xa5 => "FreeBSD",
        0xee => "GPT protective",
        0xef => "EFI system partition",
        0xfd => "Linux RAID",
        _ => "unknown",
    }
}

/// Family of an MBR partition type byte.
pub fn mbr_type_family(t: u8) -> TypeFamily {
    match t {
        0x07 | 0x27 => TypeFamily::Windows,
        0x82 | 0x83 | 0x8e | 0xfd => TypeFamily::Linux,
        0xef => TypeFamily::Esp,
        _ => TypeFamily::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_their_text_form() {
        // Written as u128 literals for const-ness; prove none was mistyped.
        let pairs = [
            (ESP, "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
            (XBOOTLDR, "bc13c2ff-59e6-4262-a352-b275fd6f7172"),
            (RAYOS_DATA, "776115a0-0b1e-4358-9bda-60957fe4ab00"),
            (RAYOS_VM_STORAGE, "ab8ded9f-09fa-4c47-b64e-c8f73ab097c7"),
            (MS_BASIC_DATA, "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"),
            (MS_RESERVED, "e3c9e316-0b5c-4db8-817d-f92df00215ae"),
            (WINDOWS_RECOVERY, "de94bba4-06d1-4d40-a16a-bfd50179d6ac"),
            (LINUX_FS, "0fc63daf-8483-4772-8e79-3d69d8477de4"),
            (LINUX_ROOT_X86_64, "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
            (LINUX_SWAP, "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"),
            (LINUX_LVM, "e6d6d379-f507-44c2-a23c-238f2a3df928"),
            // as sgdisk 1.0.9 writes them (codes af00, a501, a502, a503, a504, bf01)
            (APPLE_HFS, "48465300-0000-11aa-aa11-00306543ecac"),
            (FREEBSD_BOOT, "83bd6b9d-7f41-11dc-be0b-001560b84f0f"),
            (FREEBSD_SWAP, "516e7cb5-6ecf-11d6-8ff8-00022d09712b"),
            (FREEBSD_UFS, "516e7cb6-6ecf-11d6-8ff8-00022d09712b"),
            (FREEBSD_ZFS, "516e7cba-6ecf-11d6-8ff8-00022d09712b"),
            (SOLARIS_ZFS, "6a898cc3-1dd2-11b2-99a6-080020736631"),
        ];
        for (g, s) in pairs {
            assert_eq!(g.to_string(), s);
        }
        assert_eq!(type_family(&RAYOS_DATA), TypeFamily::RayosData);
        assert_eq!(type_name(&Uuid::nil()), None);
    }
}
