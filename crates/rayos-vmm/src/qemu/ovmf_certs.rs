//! Which of Microsoft's Secure Boot certificates an OVMF variable store
//! holds, found by their subject names (the certificates sit in the
//! `KEK` and `db` variables as DER, whose subject strings are plain ASCII).
//!
//! Why: media signed only with the 2023 CAs do not boot on a store that
//! has only the 2011 ones (docs/vm-profiles.md, "Windows"). The names are
//! matched as bytes; a store that names a certificate in another variable
//! (`dbx` lists hashes, not names) is not confused by it.

/// Microsoft's KEK and db certificates, 2011 and 2023 generations.
pub const MICROSOFT_CAS: &[&str] = &[
    "Microsoft Corporation KEK CA 2011",
    "Microsoft Windows Production PCA 2011",
    "Microsoft Corporation UEFI CA 2011",
    "Microsoft Corporation KEK 2K CA 2023",
    "Windows UEFI CA 2023",
    "Microsoft UEFI CA 2023",
    "Microsoft Option ROM UEFI CA 2023",
];

/// The names of [`MICROSOFT_CAS`] found in `vars` (a VARS file's bytes).
pub fn microsoft_cas(vars: &[u8]) -> Vec<&'static str> {
    MICROSOFT_CAS
        .iter()
        .copied()
        .filter(|name| vars.windows(name.len()).any(|w| w == name.as_bytes()))
        .collect()
}

/// True when every 2023 certificate is present.
pub fn has_2023_cas(vars: &[u8]) -> bool {
    let found = microsoft_cas(vars);
    MICROSOFT_CAS
        .iter()
        .filter(|n| n.ends_with("2023"))
        .all(|n| found.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_as_bytes() {
        let mut v = vec![0u8; 64];
        v.extend_from_slice(b"\x13\x22Microsoft Windows Production PCA 2011");
        v.extend_from_slice(&[0xff; 16]);
        assert_eq!(
            microsoft_cas(&v),
            vec!["Microsoft Windows Production PCA 2011"]
        );
        assert!(!has_2023_cas(&v));
        for n in MICROSOFT_CAS.iter().filter(|n| n.ends_with("2023")) {
            v.extend_from_slice(n.as_bytes());
        }
        assert!(has_2023_cas(&v));
    }

    /// The template RayOS ships on Debian 12 (docs/vm-profiles.md): the
    /// 2011 certificates, none of 2023. Fails when the ovmf package
    /// changes, so the documentation is revisited then.
    #[test]
    fn debian_12_template_has_the_2011_cas_only() {
        let path = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";
        let vars = std::fs::read(path).expect("ovmf is installed (scripts/install-deps.sh)");
        let found = microsoft_cas(&vars);
        assert!(
            found.contains(&"Microsoft Windows Production PCA 2011")
                && found.contains(&"Microsoft Corporation UEFI CA 2011")
                && found.contains(&"Microsoft Corporation KEK CA 2011"),
            "{found:?}"
        );
        assert!(
            !has_2023_cas(&vars),
            "{found:?}: update docs/vm-profiles.md"
        );
    }
}
