//! UKI file names: systemd-boot's boot counter, RayOS's `rayos-<version>`
//! names, and the recovery UKI's name. Every crate that writes, renames or
//! reads such a name goes through here, so there is one set of rules.
//!
//! Protocol (systemd-boot 252, `config_entry_parse_tries`): a name
//! `<stem>+LEFT[-DONE].efi` is counted: before booting it the loader
//! renames it to `<stem>+(LEFT-1)-(DONE+1).efi`. The counter is the part
//! after the *last* `+`: decimal digits, optionally `-` and more digits,
//! directly before the suffix. Anything else there (`+x`, `+3-`, `+-3`,
//! `+1-2-3`) is no counter: the whole stem is the name, uncounted.
//!
//! RayOS names its versions `rayos-<version>[+LEFT[-DONE]].efi` in
//! `EFI/Linux` of the system partition, where `<version>` passes
//! [`validate_version`] (no `+`, so the counter is unambiguous). A new
//! version is written with [`TRIES`] tries; a blessed one has no counter.
//! The recovery UKI is `rayos-recovery-<version>.efi`, never counted.
//!
//! Limits: `.efi` and `.EFI` are recognised, not other cases; counters
//! must fit in a `u32` (systemd-boot takes up to 64 bits: a larger counter
//! reads as no counter here, and RayOS never writes one).

/// Tries a newly written RayOS UKI gets (`rayos-<v>+3.efi`).
pub const TRIES: u32 = 3;
/// What every RayOS UKI name starts with.
pub const PREFIX: &str = "rayos-";
/// What the recovery UKI's name starts with.
pub const RECOVERY_PREFIX: &str = "rayos-recovery-";
/// Longest version accepted.
pub const MAX_VERSION_LEN: usize = 64;

/// Checks that `v` can name a RayOS version: it becomes part of a file
/// name on a FAT partition, so only `[0-9A-Za-z._~^-]`, at most 64
/// characters, starting with a digit — no `+` (it starts the boot
/// counter), no `/`, no spaces.
pub fn validate_version(v: &str) -> Result<(), &'static str> {
    if v.is_empty() {
        return Err("the version is empty");
    }
    if v.len() > MAX_VERSION_LEN {
        return Err("the version is longer than 64 characters");
    }
    if !v.as_bytes()[0].is_ascii_digit() {
        return Err("the version must start with a digit");
    }
    if !v
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'~' | b'^' | b'-'))
    {
        return Err("the version may hold only letters, digits and . _ ~ ^ -");
    }
    Ok(())
}

/// A UKI file name split at its boot counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiName {
    /// The name without counter and without `.efi`.
    pub stem: String,
    /// `None`: no counter (blessed, or never counted).
    pub tries_left: Option<u32>,
    /// `None` when there is no counter or it has no `-DONE` part.
    pub tries_done: Option<u32>,
}

impl UkiName {
    /// Splits `rayos-0.2+2-1.efi` into `rayos-0.2`, 2, 1 (see the module
    /// docs for the rules). Any stem is accepted, so a foreign UKI can be
    /// blessed too; `None` only for names not ending in `.efi`.
    pub fn parse(name: &str) -> Option<UkiName> {
        let stem = name
            .strip_suffix(".efi")
            .or_else(|| name.strip_suffix(".EFI"))?;
        let uncounted = || UkiName {
            stem: stem.to_string(),
            tries_left: None,
            tries_done: None,
        };
        let Some((base, counter)) = stem.rsplit_once('+') else {
            return Some(uncounted());
        };
        let (left, done) = match counter.split_once('-') {
            Some((l, d)) => (number(l), Some(number(d))),
            None => (number(counter), None),
        };
        Some(match (left, done) {
            (Some(l), None) => UkiName {
                stem: base.to_string(),
                tries_left: Some(l),
                tries_done: None,
            },
            (Some(l), Some(Some(d))) => UkiName {
                stem: base.to_string(),
                tries_left: Some(l),
                tries_done: Some(d),
            },
            _ => uncounted(),
        })
    }

    /// Whether the name carries a counter.
    pub fn is_counted(&self) -> bool {
        self.tries_left.is_some()
    }

    /// The name without counter: `<stem>.efi`.
    pub fn plain(&self) -> String {
        format!("{}.efi", self.stem)
    }

    /// The name with `left` tries left and `done` done (`+LEFT` alone
    /// when `done` is 0, the form a new entry gets).
    pub fn counted(&self, left: u32, done: u32) -> String {
        if done == 0 {
            format!("{}+{left}.efi", self.stem)
        } else {
            format!("{}+{left}-{done}.efi", self.stem)
        }
    }

    /// The RayOS version this names, when the stem is `rayos-<version>`
    /// with a valid version.
    pub fn rayos_version(&self) -> Option<&str> {
        let v = self.stem.strip_prefix(PREFIX)?;
        validate_version(v).ok()?;
        Some(v)
    }
}

/// Decimal digits only (no sign, not empty) that fit in a `u32`.
fn number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn stem(version: &str) -> UkiName {
    UkiName {
        stem: format!("{PREFIX}{version}"),
        tries_left: None,
        tries_done: None,
    }
}

/// `rayos-<version>.efi`: a blessed (or never counted) version.
pub fn plain(version: &str) -> String {
    stem(version).plain()
}

/// `rayos-<version>+LEFT[-DONE].efi`.
pub fn counted(version: &str, left: u32, done: u32) -> String {
    stem(version).counted(left, done)
}

/// The name a newly written version gets: `rayos-<version>+3.efi`.
pub fn new_entry(version: &str) -> String {
    counted(version, TRIES, 0)
}

/// The recovery UKI's file name for `version`.
pub fn recovery(version: &str) -> String {
    format!("{RECOVERY_PREFIX}{version}.efi")
}

/// The version of a recovery UKI file name, when `name` is one.
pub fn recovery_version(name: &str) -> Option<&str> {
    let v = name.strip_prefix(RECOVERY_PREFIX)?.strip_suffix(".efi")?;
    validate_version(v).ok()?;
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(name: &str) -> (String, Option<u32>, Option<u32>) {
        let n = UkiName::parse(name).unwrap();
        (n.stem, n.tries_left, n.tries_done)
    }

    #[test]
    fn counters_as_systemd_boot_reads_them() {
        let s = |x: &str| x.to_string();
        assert_eq!(
            split("rayos-0.2+2-1.efi"),
            (s("rayos-0.2"), Some(2), Some(1))
        );
        assert_eq!(split("rayos-0.2+3.efi"), (s("rayos-0.2"), Some(3), None));
        assert_eq!(
            split("rayos-0.2+0-3.EFI"),
            (s("rayos-0.2"), Some(0), Some(3))
        );
        assert_eq!(split("rayos-0.2.efi"), (s("rayos-0.2"), None, None));
        // The counter is after the last '+'.
        assert_eq!(split("linux+x+3.efi"), (s("linux+x"), Some(3), None));
        // Not a counter: the whole stem is the (uncounted) name.
        for odd in [
            "rayos-1.0+build5+x",
            "a+",
            "a+x",
            "a+3-",
            "a+-3",
            "a+1-2-3",
            "a++3-x",
            "a+ 3",
            "a+99999999999",
        ] {
            let name = format!("{odd}.efi");
            let n = UkiName::parse(&name).unwrap();
            assert_eq!((n.stem.as_str(), n.tries_left), (odd, None), "{name}");
        }
        assert_eq!(split("a++3.efi"), (s("a+"), Some(3), None));
        // Leading zeros are digits like any other (systemd-boot agrees).
        assert_eq!(split("a+03-01.efi"), (s("a"), Some(3), Some(1)));
        assert!(UkiName::parse("loader.conf").is_none());
        assert!(UkiName::parse("rayos-0.2+3.efi.bad").is_none());
    }

    #[test]
    fn formats_what_it_parses() {
        assert_eq!(new_entry("0.2.0"), "rayos-0.2.0+3.efi");
        assert_eq!(plain("0.2.0"), "rayos-0.2.0.efi");
        assert_eq!(counted("0.2.0", 0, 3), "rayos-0.2.0+0-3.efi");
        for (left, done) in [(3, 0), (2, 1), (0, 3), (1234, 99)] {
            let name = counted("1.0~rc1", left, done);
            let n = UkiName::parse(&name).unwrap();
            assert_eq!(n.rayos_version(), Some("1.0~rc1"));
            assert_eq!(n.tries_left, Some(left));
            assert_eq!(n.tries_done, (done != 0).then_some(done));
            assert_eq!(n.plain(), "rayos-1.0~rc1.efi");
        }
        let n = UkiName::parse("other+2-1.efi").unwrap();
        assert_eq!(n.plain(), "other.efi");
        assert_eq!(n.counted(1, 2), "other+1-2.efi");
        assert_eq!(n.rayos_version(), None);
    }

    #[test]
    fn rayos_versions_and_recovery_names() {
        for (name, v) in [
            ("rayos-0.2.0+3.efi", Some("0.2.0")),
            ("rayos-0.2.0.efi", Some("0.2.0")),
            ("rayos-.efi", None),
            ("rayos-0.2.0+x.efi", None),
            ("rayos-recovery-0.1.0.efi", None),
            ("linux.efi", None),
        ] {
            let n = UkiName::parse(name).unwrap();
            assert_eq!(n.rayos_version(), v, "{name}");
        }
        assert_eq!(recovery("1.2.3"), "rayos-recovery-1.2.3.efi");
        assert_eq!(recovery_version("rayos-recovery-1.2.3.efi"), Some("1.2.3"));
        assert_eq!(recovery_version("rayos-recovery-x.efi"), None);
        assert_eq!(recovery_version("rayos-recovery-1.2.3.efi.tmp"), None);
        assert_eq!(recovery_version("rayos-1.2.3.efi"), None);
    }

    #[test]
    fn validates_versions() {
        assert!(validate_version("0.2.0").is_ok());
        assert!(validate_version("1.0~rc1").is_ok());
        for bad in ["", "a1", "1+3", "1/2", "1 2", "1\n", &"1".repeat(65)] {
            assert!(validate_version(bad).is_err(), "{bad:?}");
        }
    }
}
