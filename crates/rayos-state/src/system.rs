//! Names on the RayOS system partition (the XBOOTLDR partition holding the
//! UKIs) that more than one writer must agree on: the installer creates
//! them, updates replace them, recovery repairs them, rayos init reads them.
//!
//! Paths are relative to the partition's root. The UKIs' file names
//! (`EFI/Linux/rayos-<version>[+tries].efi`, the recovery UKI's) are
//! `rayos_base::uki_name`'s, with the boot-counting rules.

/// The install manifest, written last by the installer.
pub const INSTALL_MANIFEST: &str = "rayos/install-manifest.json";
/// Where the recovery UKI (`rayos-recovery-<version>.efi`) lives; not under
/// `EFI/Linux`, so systemd-boot does not list it as a RayOS version too.
pub const RECOVERY_DIR: &str = "rayos";
/// The type #1 boot entry that starts the recovery UKI.
pub const RECOVERY_ENTRY: &str = "loader/entries/rayos-recovery.conf";

/// The recovery UKI's file name for `version`.
pub use rayos_base::uki_name::recovery as recovery_uki_name;

/// The text of [`RECOVERY_ENTRY`] for the recovery UKI at `efi` (an absolute
/// path on the system partition). `sort-key rayos-recovery` sorts it after
/// the UKIs (sort key `rayos`), so it never becomes the default while a
/// RayOS version has tries left.
pub fn recovery_entry_text(version: &str, efi: &str) -> String {
    format!("title RayOS recovery\nsort-key rayos-recovery\nversion {version}\nefi {efi}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_entry_names_the_uki_under_the_recovery_dir() {
        let efi = format!("/{RECOVERY_DIR}/{}", recovery_uki_name("1.2.3"));
        assert_eq!(efi, "/rayos/rayos-recovery-1.2.3.efi");
        let t = recovery_entry_text("1.2.3", &efi);
        assert!(t.starts_with("title RayOS recovery\n"), "{t}");
        assert!(t.contains("\nefi /rayos/rayos-recovery-1.2.3.efi\n"), "{t}");
        assert!(t.contains("\nsort-key rayos-recovery\n"), "{t}");
    }
}
