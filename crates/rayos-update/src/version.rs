//! RayOS version strings: which are valid, and how they order.
//!
//! A version becomes part of a file name on a FAT partition
//! (`rayos-<version>+3.efi`), so which versions are valid is decided with
//! the file names, in `rayos_base::uki_name` ([`validate`] is its check).
//!
//! Ordering is systemd's `strverscmp_improved()` (systemd 252,
//! `src/fundamental/string-util-fundamental.c`), because that is how
//! systemd-boot orders the UKIs on the system partition and picks the
//! default: numeric segments compare by value, a numeric segment is newer
//! than an alphabetic one, `~` marks a pre-release (older), `-` separates a
//! release (older than a further `.` segment), `^` a patched release, and
//! of two strings otherwise equal the longer is newer.

use std::cmp::Ordering;

/// Checks that a string can name a RayOS version: `[0-9A-Za-z._~^-]`, at
/// most 64 characters, starting with a digit.
pub use rayos_base::uki_name::validate_version as validate;

fn valid_version_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.')
}

/// systemd's `strverscmp_improved(a, b)`: `Greater` when `a` is newer.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0usize, 0usize);
    let at = |s: &[u8], k: usize| s.get(k).copied().unwrap_or(0);
    loop {
        while i < a.len() && !valid_version_char(a[i]) {
            i += 1;
        }
        while j < b.len() && !valid_version_char(b[j]) {
            j += 1;
        }
        // '~' marks a pre-release: the string that has it is older.
        if at(a, i) == b'~' || at(b, j) == b'~' {
            let r = (at(a, i) != b'~').cmp(&(at(b, j) != b'~'));
            if r != Ordering::Equal {
                return r;
            }
            i += 1;
            j += 1;
        }
        // At the end of either: the longer is newer (strcmp of the rests).
        if i >= a.len() || j >= b.len() {
            return a[i.min(a.len())..].cmp(&b[j.min(b.len())..]);
        }
        for sep in [b'-', b'^', b'.'] {
            if at(a, i) == sep || at(b, j) == sep {
                let r = (at(a, i) != sep).cmp(&(at(b, j) != sep));
                if r != Ordering::Equal {
                    return r;
                }
                i += 1;
                j += 1;
            }
        }
        if at(a, i).is_ascii_digit() || at(b, j).is_ascii_digit() {
            let ea = i + a[i.min(a.len())..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            let eb = j + b[j.min(b.len())..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            // A numeric segment is newer than an empty (alphabetic) one.
            let r = (i != ea).cmp(&(j != eb));
            if r != Ordering::Equal {
                return r;
            }
            while i < ea && a[i] == b'0' {
                i += 1;
            }
            while j < eb && b[j] == b'0' {
                j += 1;
            }
            let r = (ea - i).cmp(&(eb - j));
            if r != Ordering::Equal {
                return r;
            }
            let r = a[i..ea].cmp(&b[j..eb]);
            if r != Ordering::Equal {
                return r;
            }
            i = ea;
            j = eb;
        } else {
            let ea = i + a[i.min(a.len())..]
                .iter()
                .take_while(|c| c.is_ascii_alphabetic())
                .count();
            let eb = j + b[j.min(b.len())..]
                .iter()
                .take_while(|c| c.is_ascii_alphabetic())
                .count();
            let n = (ea - i).min(eb - j);
            let r = a[i..i + n].cmp(&b[j..j + n]);
            if r != Ordering::Equal {
                return r;
            }
            let r = (ea - i).cmp(&(eb - j));
            if r != Ordering::Equal {
                return r;
            }
            // Both empty: a separator or '~' follows, which the next round
            // consumes (every round that reaches here with both empty
            // starts with one of them).
            i = ea;
            j = eb;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn orders_like_systemd() {
        // Cases from systemd's test-string-util.c (test_strverscmp_improved).
        let newer_than = [
            ("123", "122"),
            ("12.1", "12"),
            ("2.0", "1.9.9"),
            ("1.10", "1.9"),
            ("1.0-1", "1.0~rc1"),
            ("1.0", "1.0~rc1"),
            ("1.0.1", "1.0-1"),
            ("1.0^", "1.0"),
            ("1.0^1", "1.0"),
            ("0.2", "0.1.9"),
            ("1.0a", "1.0"),
            ("1.01", "1.0"),
            ("5.2", "5.1.0a"),
            ("1", "a"),
            ("123a", "123"),
        ];
        for (a, b) in newer_than {
            assert_eq!(compare(a, b), Greater, "{a} > {b}");
            assert_eq!(compare(b, a), Less, "{b} < {a}");
        }
        assert_eq!(compare("1.0", "1.0"), Equal);
        assert_eq!(compare("001.2", "1.2"), Equal);
        // Whole file names, as systemd-boot compares entry ids.
        assert_eq!(compare("rayos-0.10.0.efi", "rayos-0.9.1.efi"), Greater);
        assert_eq!(
            compare("rayos-0.1.0.efi", "rayos-recovery-0.1.0.efi"),
            Greater
        );
    }

    #[test]
    fn never_spins_on_odd_input() {
        for (a, b) in [
            ("--", "-"),
            ("..a", ".."),
            ("~", "~~"),
            ("^^", "^"),
            ("_", ""),
        ] {
            let _ = compare(a, b);
            let _ = compare(b, a);
        }
    }
}
