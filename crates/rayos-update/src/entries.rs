//! The RayOS boot entries on the system partition, and systemd-boot's view
//! of them.
//!
//! `/EFI/Linux/rayos-<version>[+LEFT[-DONE]].efi` are type #2 entries
//! (UKIs), named and parsed by `rayos_base::uki_name`. systemd-boot 252
//! orders them (`boot_entry_compare`):
//! 1. entries with 0 tries left last;
//! 2. by sort key (the `.osrel` `IMAGE_ID`/`ID`: `rayos` for all of ours);
//! 3. by version, newest first (`VERSION_ID`; here the version in the file
//!    name, which `cargo xtask bundle` keeps equal to `.osrel`);
//! 4. by id (the file name), newest first;
//! 5. more tries left first, then fewer tries done first.
//!
//! The default is the first entry in that order whose id matches the
//! `default` pattern of `loader.conf` (`rayos-*`), unless the EFI variables
//! `LoaderEntryOneShot`/`LoaderEntryDefault` name one. So an entry with 0
//! tries left is only booted when nothing better is there, and renaming an
//! entry to `+0-N` is how RayOS demotes it.
//!
//! A version marked bad by RayOS is renamed to `<name>.bad`: no longer an
//! `.efi` file, systemd-boot does not list it; it is kept for inspection
//! until the next update prunes it.

use std::cmp::Ordering;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rayos_base::uki_name::{self, UkiName};

use crate::version;

/// Where the UKIs live on the system (XBOOTLDR) partition.
pub const LINUX_DIR: &str = "EFI/Linux";
/// Suffix of entries marked bad.
pub const BAD_SUFFIX: &str = ".bad";
/// Tries a new entry gets (`+3`).
pub const TRIES: u32 = uki_name::TRIES;
/// The `default` of RayOS's loader.conf.
pub const DEFAULT_PATTERN: &str = "rayos-*";

/// Why the boot entries could not be listed or changed.
#[derive(Debug, thiserror::Error)]
pub enum EntriesError {
    /// The directory could not be listed; holds it.
    #[error("cannot list {0}")]
    List(PathBuf, #[source] io::Error),
    /// A UKI could not be renamed.
    #[error("cannot rename {from} to {to}")]
    Rename {
        /// Its name before.
        from: PathBuf,
        /// Its name after.
        to: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The directory could not be synced to disk; holds it.
    #[error("cannot sync directory {0}")]
    Sync(PathBuf, #[source] io::Error),
}

/// One RayOS UKI on the system partition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// The file name as it is now.
    pub file: String,
    /// The RayOS version it boots.
    pub version: String,
    /// `None`: no counter (blessed, or never counted).
    pub tries_left: Option<u32>,
    /// Failed boots counted so far (with a counter).
    pub tries_done: Option<u32>,
    /// Renamed to `.bad` by RayOS: not bootable from the menu.
    pub marked_bad: bool,
}

/// How an entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryState {
    /// Blessed: booted and reached healthy (or installed without counter).
    Good,
    /// Has tries left: new, or failed fewer than 3 times so far.
    Pending,
    /// No tries left: failed 3 times (or demoted); booted only as a last resort.
    Exhausted,
    /// Marked bad by RayOS; not in the boot menu.
    Bad,
}

impl Entry {
    /// How the entry stands, from its counter and mark.
    pub fn state(&self) -> EntryState {
        if self.marked_bad {
            EntryState::Bad
        } else {
            match self.tries_left {
                None => EntryState::Good,
                Some(0) => EntryState::Exhausted,
                Some(_) => EntryState::Pending,
            }
        }
    }

    /// The name without counter: `rayos-<version>.efi`.
    pub fn plain_name(&self) -> String {
        uki_name::plain(&self.version)
    }

    /// The name with `left` tries left and `done` done.
    pub fn counted_name(&self, left: u32, done: u32) -> String {
        uki_name::counted(&self.version, left, done)
    }
}

/// Parses `rayos-<version>[+L[-D]].efi` (or that + `.bad`) with
/// [`uki_name`]'s rules. Other files — the recovery UKI, temporaries,
/// foreign UKIs, a RayOS name whose counter is not one — give `None`.
pub fn parse(file: &str) -> Option<Entry> {
    let (name, marked_bad) = match file.strip_suffix(BAD_SUFFIX) {
        Some(n) => (n, true),
        None => (file, false),
    };
    let n = UkiName::parse(name)?;
    Some(Entry {
        file: file.to_string(),
        version: n.rayos_version()?.to_string(),
        tries_left: n.tries_left,
        tries_done: n.tries_done,
        marked_bad,
    })
}

/// The RayOS entries in `dir` (`<system>/EFI/Linux`), in no order.
pub fn list(dir: &Path) -> Result<Vec<Entry>, EntriesError> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| EntriesError::List(dir.to_path_buf(), e))? {
        let e = e.map_err(|e| EntriesError::List(dir.to_path_buf(), e))?;
        if let Some(name) = e.file_name().to_str()
            && let Some(entry) = parse(name)
        {
            v.push(entry);
        }
    }
    Ok(v)
}

/// systemd-boot 252's `boot_entry_compare` for our entries (see the module
/// docs): `Less` means `a` comes first in the menu.
pub fn menu_order(a: &Entry, b: &Entry) -> Ordering {
    let exhausted = |e: &Entry| e.tries_left == Some(0);
    exhausted(a)
        .cmp(&exhausted(b))
        .then_with(|| version::compare(&b.version, &a.version))
        .then_with(|| version::compare(&b.file.to_lowercase(), &a.file.to_lowercase()))
        .then_with(|| match (a.tries_left, b.tries_left) {
            (Some(la), Some(lb)) => lb
                .cmp(&la)
                .then_with(|| a.tries_done.unwrap_or(0).cmp(&b.tries_done.unwrap_or(0))),
            _ => Ordering::Equal,
        })
}

/// The bootable entries (not marked bad) in menu order.
pub fn menu(entries: &[Entry]) -> Vec<&Entry> {
    let mut v: Vec<&Entry> = entries.iter().filter(|e| !e.marked_bad).collect();
    v.sort_by(|a, b| menu_order(a, b));
    v
}

/// The entry systemd-boot boots by default: the first in menu order whose
/// (lower-case) file name matches `pattern`.
pub fn default_entry<'a>(entries: &'a [Entry], pattern: &str) -> Option<&'a Entry> {
    let pattern = pattern.to_lowercase();
    menu(entries)
        .into_iter()
        .find(|e| glob(pattern.as_bytes(), e.file.to_lowercase().as_bytes()))
}

/// `default` of a loader.conf text, if it has one.
pub fn loader_conf_default(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("default"))
        .filter(|r| r.starts_with([' ', '\t']))
        .map(|r| r.trim().to_string())
        .next_back()
}

/// fnmatch with `*` and `?` (what loader.conf patterns use).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Renames `from` to `to` in `dir` and fsyncs the directory (FAT has no
/// journal: without the sync the rename may not survive a power cut).
pub fn rename_synced(dir: &Path, from: &str, to: &str) -> Result<(), EntriesError> {
    let (src, dst) = (dir.join(from), dir.join(to));
    fs::rename(&src, &dst).map_err(|source| EntriesError::Rename {
        from: src.clone(),
        to: dst.clone(),
        source,
    })?;
    sync_dir(dir)
}

/// fsyncs directory `dir`, so renames in it survive a power cut.
pub fn sync_dir(dir: &Path) -> Result<(), EntriesError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| EntriesError::Sync(dir.to_path_buf(), e))
}

/// The version a running UKI file name (from the loader's EFI variables)
/// stands for, if it is a RayOS entry.
pub fn version_of_file(name: &str) -> Option<String> {
    parse(name).map(|e| e.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(names: &[&str]) -> Vec<Entry> {
        names.iter().map(|n| parse(n).unwrap()).collect()
    }

    #[test]
    fn parses_names() {
        let e = parse("rayos-0.2.0+2-1.efi").unwrap();
        assert_eq!(
            (e.version.as_str(), e.tries_left, e.tries_done),
            ("0.2.0", Some(2), Some(1))
        );
        assert_eq!(e.state(), EntryState::Pending);
        assert_eq!(
            parse("rayos-0.2.0+0-3.efi").unwrap().state(),
            EntryState::Exhausted
        );
        assert_eq!(parse("rayos-0.2.0.efi").unwrap().state(), EntryState::Good);
        assert_eq!(
            parse("rayos-0.2.0+0-3.efi.bad").unwrap().state(),
            EntryState::Bad
        );
        for other in [
            "rayos-recovery-0.1.0.efi",
            "rayos-0.2.0+3.efi.tmp",
            "linux.efi",
            "rayos-0.2.0+x.efi",
            "rayos-.efi",
        ] {
            assert!(parse(other).is_none(), "{other}");
        }
        let e = parse("rayos-0.2.0.efi").unwrap();
        assert_eq!(e.counted_name(3, 0), "rayos-0.2.0+3.efi");
        assert_eq!(e.counted_name(0, 3), "rayos-0.2.0+0-3.efi");
    }

    #[test]
    fn default_is_newest_with_tries() {
        let v = entries(&["rayos-0.1.0.efi", "rayos-0.2.0+3.efi"]);
        assert_eq!(default_entry(&v, DEFAULT_PATTERN).unwrap().version, "0.2.0");
        // Mid-countdown it is still the default.
        let v = entries(&["rayos-0.1.0.efi", "rayos-0.2.0+1-2.efi"]);
        assert_eq!(default_entry(&v, DEFAULT_PATTERN).unwrap().version, "0.2.0");
        // Out of tries: systemd-boot falls back to the previous version.
        let v = entries(&["rayos-0.1.0.efi", "rayos-0.2.0+0-3.efi"]);
        assert_eq!(default_entry(&v, DEFAULT_PATTERN).unwrap().version, "0.1.0");
        // Version order, not byte order: 0.10 is newer than 0.9.
        let v = entries(&["rayos-0.9.0.efi", "rayos-0.10.0.efi"]);
        assert_eq!(
            default_entry(&v, DEFAULT_PATTERN).unwrap().version,
            "0.10.0"
        );
        // Everything exhausted: the newest exhausted one still boots.
        let v = entries(&["rayos-0.1.0+0-3.efi", "rayos-0.2.0+0-3.efi"]);
        assert_eq!(default_entry(&v, DEFAULT_PATTERN).unwrap().version, "0.2.0");
        // Marked bad: not in the menu at all.
        let v = entries(&["rayos-0.1.0.efi", "rayos-0.2.0.efi.bad"]);
        assert_eq!(default_entry(&v, DEFAULT_PATTERN).unwrap().version, "0.1.0");
        assert_eq!(menu(&v).len(), 1);
        // A pattern naming one version.
        let v = entries(&["rayos-0.1.0.efi", "rayos-0.2.0.efi"]);
        assert_eq!(default_entry(&v, "rayos-0.1*").unwrap().version, "0.1.0");
        assert!(default_entry(&v, "other-*").is_none());
    }

    #[test]
    fn same_version_counted_and_plain() {
        // Both match: more tries left first among counted; the plain one and
        // the counted one tie on version and compare by id.
        let v = entries(&["rayos-0.2.0+1-2.efi", "rayos-0.2.0+3.efi"]);
        assert_eq!(menu(&v)[0].file, "rayos-0.2.0+3.efi");
    }

    #[test]
    fn loader_conf() {
        let t = "timeout 3\ndefault rayos-*\neditor no\n";
        assert_eq!(loader_conf_default(t).as_deref(), Some("rayos-*"));
        assert_eq!(loader_conf_default("timeout 3\n"), None);
        assert_eq!(loader_conf_default("default-x y\n"), None);
        assert!(glob(b"rayos-*", b"rayos-0.1.efi"));
        assert!(glob(b"*.efi", b"rayos-0.1.efi"));
        assert!(glob(b"r?yos*", b"rayos"));
        assert!(!glob(b"rayos-*", b"linux.efi"));
    }
}
