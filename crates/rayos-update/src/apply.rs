//! Applying a bundle to a mounted system partition.
//!
//! Steps (each named, see [`STEPS`]); nothing is written before `check`
//! passed, and nothing is renamed or removed before every payload's
//! SHA-256 matched:
//! 1. `verify`: header, signature (trusted keys only) over the manifest,
//!    manifest, architecture. The manifest lists the payload hashes, so
//!    from here on the bundle's expected bytes are known and signed;
//! 2. `check`: the install layout (`/rayos/install-manifest.json` "schema")
//!    and the data volume's schema are in the bundle's ranges, the version
//!    is newer than the running one (or `--allow-downgrade`), and the
//!    partition has room (counting what pruning frees);
//! 3. `write`: each payload is read once from the bundle and hashed while
//!    it is copied to its temporary, which is fsynced: the UKI to
//!    `EFI/Linux/rayos-<v>+3.efi.tmp` (hook `write-uki`), the recovery UKI
//!    to `/rayos/rayos-recovery-<v>.efi.tmp`. A hash that does not match
//!    removes the temporaries: the partition is as it was;
//! 4. `prune`: remove entries other than the running one and the previous
//!    good one (and temporaries left by an interrupted apply);
//! 5. `rename-uki`: rename to `rayos-<v>+3.efi`, fsync the directory;
//! 6. `recovery` (when the bundle has a recovery UKI): rename it to
//!    `/rayos/rayos-recovery-<v>.efi`, then the type #1 entry
//!    `/loader/entries/rayos-recovery.conf` pointing at it, then the older
//!    recovery UKI is removed;
//! 7. `demote` (downgrades), 8. `record`: `/rayos/update-state.json`.
//!
//! A partition that holds the new version only once old ones are pruned
//! gets `prune` before `write`; the payloads are then hashed once before
//! pruning (so a bad bundle still removes nothing) and again while copied
//! (the file may change in between): two reads, only on a partition that
//! full.
//!
//! Power loss: the running UKI is never written or renamed (except for a
//! downgrade, where newer entries are renamed to `+0-0` *after* the new UKI
//! is in place), temporaries end in `.tmp` and systemd-boot ignores them,
//! and the new entry appears under its final name in one rename. So at
//! every point the running version still boots.
//!
//! Rejected design: hashing every payload before copying it (the earlier
//! order: a second full read, a third of `apply`'s time). The signature
//! already fixed the expected hashes before anything is written, and a
//! temporary nobody boots costs nothing to discard.
//!
//! Test hook: `RAYOS_UPDATE_FAIL_AFTER=<step>` aborts the process right
//! after that step (`write-uki-half`: in the middle of the UKI copy).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::bundle::{Bundle, BundleError, Manifest, PayloadName};
use crate::entries::{self, EntriesError, Entry, EntryState, LINUX_DIR};
use crate::keys::PublicKey;
use crate::state::{self, Action, Demotion, UpdateState};
use crate::version;

/// The named steps, in order (values of `RAYOS_UPDATE_FAIL_AFTER`).
pub const STEPS: &[&str] = &[
    "verify",
    "check",
    "write-uki-half",
    "write-uki",
    "write",
    "prune",
    "rename-uki",
    "recovery",
    "demote",
    "record",
];
/// Test hook: `apply` aborts after the step this environment variable names (a
/// power cut, as far as the disk is concerned).
pub const FAIL_AFTER_ENV: &str = "RAYOS_UPDATE_FAIL_AFTER";
/// Names on the system partition shared with the installer and recovery.
pub use rayos_state::system::{
    INSTALL_MANIFEST, RECOVERY_DIR, RECOVERY_ENTRY, recovery_entry_text,
};
/// Room kept free beyond the payloads (FAT clusters, directory entries).
const SPACE_MARGIN: u64 = 1 << 20;

/// Why an update was refused or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The bundle is unreadable, unsigned, or not for this machine.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The directory is not an installed system partition; holds it.
    #[error(
        "{0} is not a RayOS system partition (no {INSTALL_MANIFEST}): mount the partition labelled rayos-system or pass --system-dir"
    )]
    NotInstalled(PathBuf),
    /// The install manifest could not be read; holds its path.
    #[error("cannot read the install manifest {0}")]
    Manifest(PathBuf, #[source] io::Error),
    /// The install manifest has no readable schema; holds its path.
    #[error("install manifest {0} has no readable \"schema\"")]
    ManifestSchema(PathBuf),
    /// The install's layout is one the new version does not support.
    #[error(
        "this install's layout (schema {found}) is not one RayOS {version} supports ({min}..={max}): reinstall from installer media instead"
    )]
    Layout {
        /// The new version.
        version: String,
        /// The install's layout schema.
        found: u32,
        /// The oldest layout the new version supports.
        min: u32,
        /// The newest layout the new version supports.
        max: u32,
    },
    /// The data volume's schema is one the new version does not support.
    #[error(
        "the data volume has schema {found}; RayOS {version} handles {min}..={max}: it could not use your data"
    )]
    DataSchema {
        /// The new version.
        version: String,
        /// The data volume's schema.
        found: u32,
        /// The oldest schema the new version supports.
        min: u32,
        /// The newest schema the new version supports.
        max: u32,
    },
    /// The bundle is older than the running version and downgrades were
    /// not allowed.
    #[error(
        "RayOS {new} is older than the running {running}: refused (pass --allow-downgrade to install it anyway)"
    )]
    Downgrade {
        /// The bundle's version.
        new: String,
        /// The running version.
        running: String,
    },
    /// The bundle holds the version that runs; holds it.
    #[error("RayOS {0} is the running version: nothing to do")]
    AlreadyRunning(String),
    /// The system partition has too little room, even after pruning.
    #[error(
        "the system partition {dir} is too full: {need} bytes needed, {free} free ({after_prune} after removing old versions). Remove files from it in recovery mode."
    )]
    NoSpace {
        /// The system partition.
        dir: PathBuf,
        /// Bytes the update needs.
        need: u64,
        /// Bytes free now.
        free: u64,
        /// Bytes free once old versions are removed.
        after_prune: u64,
    },
    /// Free space could not be read; holds the path.
    #[error("cannot check free space on {0}")]
    Statvfs(PathBuf, #[source] io::Error),
    /// A file could not be written; holds its path.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] io::Error),
    /// A file could not be removed; holds its path.
    #[error("cannot remove {0}")]
    Remove(PathBuf, #[source] io::Error),
    /// Listing or renaming boot entries failed.
    #[error(transparent)]
    Entries(#[from] EntriesError),
    /// The update could not be recorded; holds the state file.
    #[error("cannot record the update in {0}")]
    Record(PathBuf, #[source] rayos_state::AtomicError),
}

/// What `apply` is told about the machine.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// The keys a bundle may be signed with.
    pub trusted: Vec<PublicKey>,
    /// The running RayOS version (from the loader's EFI variables); `None`
    /// when unknown (then every good entry is kept).
    pub running: Option<String>,
    /// Install a version older than the running one.
    pub allow_downgrade: bool,
    /// The data volume's schema version, when the volume is mounted.
    pub data_schema: Option<u32>,
    /// Told each step as it starts (the CLI prints them).
    pub progress: Option<fn(&str)>,
}

/// What `apply` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The version installed.
    pub version: String,
    /// The UKI's file name in `EFI/Linux/`.
    pub file: String,
    /// Files removed to make room (old versions, leftovers).
    pub pruned: Vec<String>,
    /// Versions demoted to last-resort fallbacks (a downgrade).
    pub demoted: Vec<String>,
    /// The recovery UKI's file name, when the bundle carried one.
    pub recovery: Option<String>,
    /// The entry systemd-boot will boot next (by our reading of its rules).
    pub next_default: Option<String>,
    /// The entry it falls back to when the new one fails three times.
    pub fallback: Option<String>,
}

/// Aborts the process after `step` when the test hook asks for it.
pub fn hook(step: &str) {
    if std::env::var(FAIL_AFTER_ENV).is_ok_and(|s| s == step) {
        eprintln!("{FAIL_AFTER_ENV}={step}: aborting (test hook)");
        std::process::abort();
    }
}

/// The install manifest's layout schema.
pub fn install_layout(system: &Path) -> Result<u32, ApplyError> {
    let p = system.join(INSTALL_MANIFEST);
    let bytes = match fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ApplyError::NotInstalled(system.to_path_buf()));
        }
        Err(e) => return Err(ApplyError::Manifest(p, e)),
    };
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("schema")?.as_u64())
        .and_then(|s| u32::try_from(s).ok())
        .ok_or(ApplyError::ManifestSchema(p))
}

/// Bytes available to an unprivileged writer on the filesystem of `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64, ApplyError> {
    rayos_base::sys::free_bytes(dir).map_err(|e| ApplyError::Statvfs(dir.to_path_buf(), e))
}

/// The newest good entry older than `running` (the one a failed update
/// falls back to).
pub fn previous_good<'a>(list: &'a [Entry], running: &str) -> Option<&'a Entry> {
    list.iter()
        .filter(|e| {
            e.state() == EntryState::Good
                && version::compare(&e.version, running) == std::cmp::Ordering::Less
        })
        .max_by(|a, b| version::compare(&a.version, &b.version))
}

/// Which files of `list` to keep when `new` is written.
fn keep_set(list: &[Entry], running: Option<&str>) -> Vec<String> {
    match running {
        Some(r) if list.iter().any(|e| e.version == r && !e.marked_bad) => {
            let mut keep: Vec<String> = list
                .iter()
                .filter(|e| e.version == r && !e.marked_bad)
                .map(|e| e.file.clone())
                .collect();
            if let Some(p) = previous_good(list, r) {
                keep.push(p.file.clone());
            }
            keep
        }
        // Running from elsewhere or unknown: keep every good entry and
        // whatever boots by default now.
        _ => {
            let mut keep: Vec<String> = list
                .iter()
                .filter(|e| e.state() == EntryState::Good)
                .map(|e| e.file.clone())
                .collect();
            if let Some(d) = entries::default_entry(list, entries::DEFAULT_PATTERN) {
                keep.push(d.file.clone());
            }
            keep
        }
    }
}

fn file_len(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

impl ApplyOptions {
    /// Tells the progress callback, if any, that `step` starts.
    fn say(&self, step: &str) {
        if let Some(p) = self.progress {
            p(step)
        }
    }
}

/// Verifies `bundle` and installs it on the system partition mounted at
/// `system` (see the module docs for the steps).
pub fn apply(bundle: &Path, system: &Path, opts: &ApplyOptions) -> Result<Applied, ApplyError> {
    // 1. verify: everything but the payload hashes, which are checked while
    // the payloads are copied (step 3), so the bundle is read once.
    opts.say("checking the signature and the manifest");
    let b = Bundle::open(bundle, &opts.trusted)?;
    hook("verify");
    let m = &b.manifest;
    let new = m.rayos_version.clone();

    // 2. check
    let downgrade = check_versions(m, system, opts)?;
    let linux = system.join(LINUX_DIR);
    fs::create_dir_all(&linux).map_err(|e| ApplyError::Write(linux.clone(), e))?;
    let file = rayos_base::uki_name::new_entry(&new);
    let changes = Changes::plan(m, system, &new, &file, opts)?;
    hook("check");

    let mut pruned = Vec::new();
    if !changes.roomy {
        // 4. prune, early. The new version fits only once old ones are gone, and a bundle
        // whose hashes turn out wrong must not have removed them: hash
        // first (a second read of the payloads, only on a partition this
        // full). The copy below hashes again, as the file may change.
        opts.say("checking the payload hashes before removing old versions");
        b.verify_payloads()?;
        pruned = remove_all(&changes.prune, &linux)?;
        hook("prune");
    }

    // 3. write: every payload to its temporary, hashed while copied.
    write_payloads(&b, &changes.targets, opts)?;
    hook("write");
    // 4. prune
    if changes.roomy {
        pruned = remove_all(&changes.prune, &linux)?;
        hook("prune");
    }

    // 5. rename-uki
    entries::rename_synced(&linux, &format!("{file}.tmp"), &file)?;
    hook("rename-uki");

    // 6. recovery
    let recovery = install_recovery(system, &new, &changes)?;
    hook("recovery");

    // 7. demote: a downgrade boots only if the newer entries no longer
    // come first: they get `+0-0` (kept as last-resort fallbacks).
    let demoted = if downgrade {
        demote_newer(&linux, &new)?
    } else {
        Vec::new()
    };
    hook("demote");

    // 8. record
    record(system, &new, &file, &demoted, opts)?;
    hook("record");

    let after = entries::list(&linux)?;
    let next_default =
        entries::default_entry(&after, entries::DEFAULT_PATTERN).map(|e| e.file.clone());
    let without_new: Vec<Entry> = after.iter().filter(|e| e.version != new).cloned().collect();
    let fallback =
        entries::default_entry(&without_new, entries::DEFAULT_PATTERN).map(|e| e.file.clone());
    Ok(Applied {
        version: new,
        file,
        pruned,
        demoted,
        recovery,
        next_default,
        fallback,
    })
}

/// The first half of `check`: the bundle's layout and data-schema ranges
/// hold this machine's, and its version is newer than the running one
/// (or a downgrade was allowed). Returns whether it is a downgrade.
fn check_versions(m: &Manifest, system: &Path, opts: &ApplyOptions) -> Result<bool, ApplyError> {
    let new = &m.rayos_version;
    let layout = install_layout(system)?;
    if !m.install_layout.contains(layout) {
        return Err(ApplyError::Layout {
            version: new.clone(),
            found: layout,
            min: m.install_layout.min,
            max: m.install_layout.max,
        });
    }
    if let Some(s) = opts.data_schema
        && !m.data_schema.contains(s)
    {
        return Err(ApplyError::DataSchema {
            version: new.clone(),
            found: s,
            min: m.data_schema.min,
            max: m.data_schema.max,
        });
    }
    Ok(match &opts.running {
        Some(r) => match version::compare(new, r) {
            std::cmp::Ordering::Equal => return Err(ApplyError::AlreadyRunning(new.clone())),
            std::cmp::Ordering::Less if !opts.allow_downgrade => {
                return Err(ApplyError::Downgrade {
                    new: new.clone(),
                    running: r.clone(),
                });
            }
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
        },
        None => false,
    })
}

/// What an apply writes and removes, decided in `check` before anything
/// is written.
struct Changes {
    /// Where each payload goes.
    targets: Vec<Target>,
    /// Entries to prune and temporaries of an interrupted apply.
    prune: Vec<PathBuf>,
    /// The recovery UKIs there before, removed once the new one is in.
    old_recovery: Vec<PathBuf>,
    /// Room beside every old version: write first, prune once the
    /// payloads checked out, so a bad bundle removes nothing.
    roomy: bool,
}

impl Changes {
    /// The second half of `check`: what to write (the UKI as `file`, the
    /// recovery UKI when the bundle has one) and to prune, and whether the
    /// partition has room for it (counting what pruning frees).
    fn plan(
        m: &Manifest,
        system: &Path,
        new: &str,
        file: &str,
        opts: &ApplyOptions,
    ) -> Result<Changes, ApplyError> {
        let linux = system.join(LINUX_DIR);
        let recovery_dir = system.join(RECOVERY_DIR);
        // Where each payload is written before its rename.
        let mut targets = vec![Target {
            name: PayloadName::Uki,
            dir: linux.clone(),
            file: file.to_string(),
        }];
        if m.payload(PayloadName::RecoveryUki).is_some() {
            targets.push(Target {
                name: PayloadName::RecoveryUki,
                dir: recovery_dir.clone(),
                file: rayos_state::system::recovery_uki_name(new),
            });
        }
        let list = entries::list(&linux)?;
        let keep = keep_set(&list, opts.running.as_deref());
        let mut prune: Vec<PathBuf> = list
            .iter()
            .filter(|e| !keep.contains(&e.file))
            .map(|e| linux.join(&e.file))
            .collect();
        // Temporaries of an interrupted apply (ours are overwritten instead:
        // pruning after the write must not remove what it wrote).
        for dir in [&linux, &recovery_dir] {
            if let Ok(rd) = fs::read_dir(dir) {
                prune.extend(rd.flatten().map(|e| e.path()).filter(|p| {
                    p.extension().is_some_and(|x| x == "tmp")
                        && !targets.iter().any(|t| t.tmp() == *p)
                }));
            }
        }
        let old_recovery: Vec<PathBuf> = fs::read_dir(&recovery_dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                            n.starts_with("rayos-recovery-") && n.ends_with(".efi")
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let need = m.payload_len() + SPACE_MARGIN;
        // Leftover temporaries under our names are truncated by the write.
        let free = free_bytes(system)? + targets.iter().map(|t| file_len(&t.tmp())).sum::<u64>();
        let freed: u64 = prune.iter().map(|p| file_len(p)).sum();
        if free + freed < need {
            return Err(ApplyError::NoSpace {
                dir: system.to_path_buf(),
                need,
                free,
                after_prune: free + freed,
            });
        }
        Ok(Changes {
            targets,
            prune,
            old_recovery,
            roomy: free >= need,
        })
    }
}

/// `write`: every payload to its temporary, hashed while copied; on an
/// error the temporaries go and the partition is as it was.
fn write_payloads(b: &Bundle, targets: &[Target], opts: &ApplyOptions) -> Result<(), ApplyError> {
    for t in targets {
        opts.say(&format!("writing {}", t.file));
        // `rayos/` holds the install manifest, so this creates nothing on
        // an installed partition.
        let written = fs::create_dir_all(&t.dir)
            .map_err(|e| ApplyError::Write(t.dir.clone(), e))
            .and_then(|()| write_payload(b, t.name, &t.tmp(), t.name == PayloadName::Uki));
        if let Err(e) = written {
            // Nothing renamed yet: removing what this run wrote leaves the
            // partition as it was (a power cut here leaves `*.tmp` files,
            // which systemd-boot ignores and the next apply removes).
            for t in targets {
                let _ = fs::remove_file(t.tmp());
            }
            return Err(e);
        }
        if t.name == PayloadName::Uki {
            hook("write-uki");
        }
    }
    Ok(())
}

/// `recovery`: the new recovery UKI under its name, the boot entry
/// pointing at it, the older ones removed. Returns its file name (`None`:
/// the bundle has no recovery UKI).
fn install_recovery(
    system: &Path,
    new: &str,
    changes: &Changes,
) -> Result<Option<String>, ApplyError> {
    let Some(t) = changes
        .targets
        .iter()
        .find(|t| t.name == PayloadName::RecoveryUki)
    else {
        return Ok(None);
    };
    let recovery_dir = system.join(RECOVERY_DIR);
    entries::rename_synced(&recovery_dir, &format!("{}.tmp", t.file), &t.file)?;
    write_recovery_entry(system, new, &format!("/{RECOVERY_DIR}/{}", t.file))?;
    for p in changes
        .old_recovery
        .iter()
        .filter(|p| !p.ends_with(&t.file))
    {
        let _ = fs::remove_file(p);
    }
    entries::sync_dir(&recovery_dir)?;
    Ok(Some(t.file.clone()))
}

/// `demote`: every good entry newer than `new` gets `+0-0`, so the
/// downgrade boots first and they stay as last-resort fallbacks. Returns
/// their versions.
fn demote_newer(linux: &Path, new: &str) -> Result<Vec<String>, ApplyError> {
    let mut demoted = Vec::new();
    for e in entries::list(linux)? {
        if !e.marked_bad && version::compare(&e.version, new) == std::cmp::Ordering::Greater {
            let to = e.counted_name(0, e.tries_done.unwrap_or(0));
            if to != e.file {
                entries::rename_synced(linux, &e.file, &to)?;
            }
            demoted.push(e.version.clone());
        }
    }
    Ok(demoted)
}

/// `record`: the apply (and the demotions of a downgrade) in
/// `/rayos/update-state.json`.
fn record(
    system: &Path,
    new: &str,
    file: &str,
    demoted: &[String],
    opts: &ApplyOptions,
) -> Result<(), ApplyError> {
    let mut st = UpdateState::read(system);
    let at = state::now_rfc3339();
    for v in demoted {
        st.demoted.push(Demotion {
            version: v.clone(),
            reason: format!(
                "downgrade to {new} requested with rayos update apply --allow-downgrade"
            ),
            at: at.clone(),
        });
    }
    st.last = Some(Action {
        action: "apply".into(),
        version: new.to_string(),
        from: opts.running.clone(),
        at,
        result: format!("installed as {file}; boots next"),
    });
    st.write(system)
        .map_err(|e| ApplyError::Record(state::path(system), e))
}

/// Where one payload goes: `dir/file`, written as `dir/file.tmp` first.
struct Target {
    name: PayloadName,
    dir: PathBuf,
    file: String,
}

impl Target {
    fn tmp(&self) -> PathBuf {
        self.dir.join(format!("{}.tmp", self.file))
    }
}

/// Removes `paths` (old versions, leftovers) and fsyncs `linux`; returns
/// the names removed.
fn remove_all(paths: &[PathBuf], linux: &Path) -> Result<Vec<String>, ApplyError> {
    let mut removed = Vec::new();
    for p in paths {
        match fs::remove_file(p) {
            Ok(()) => removed.push(
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ApplyError::Remove(p.clone(), e)),
        }
    }
    if !removed.is_empty() {
        entries::sync_dir(linux)?;
    }
    Ok(removed)
}

/// Copies payload `name` to `tmp` in one read of the bundle, hashing the
/// bytes as they are written, and fsyncs it. An error (a hash that does not
/// match, a read or write failure) leaves `tmp` for the caller to remove.
fn write_payload(
    b: &Bundle,
    name: PayloadName,
    tmp: &Path,
    half_hook: bool,
) -> Result<(), ApplyError> {
    let werr = |e| ApplyError::Write(tmp.to_path_buf(), e);
    let file = File::create(tmp).map_err(werr)?;
    let size = b.manifest.payload(name).map(|p| p.size).unwrap_or(0);
    let mut w = Dest {
        file,
        written: 0,
        half: if half_hook { size / 2 } else { u64::MAX },
        failed: None,
    };
    if let Err(e) = b.copy_payload(name, Some(&mut w)) {
        // A failed write is about the partition, not the bundle.
        return Err(match w.failed.take() {
            Some(io) => werr(io),
            None => e.into(),
        });
    }
    w.file.sync_all().map_err(werr)
}

/// The temporary file a payload is copied to. Each piece is handed to the
/// disk as soon as it is written ([`start_writeback`]), so the final fsync
/// finds little left to write; it also runs the `write-uki-half` hook once
/// half the bytes are on disk.
struct Dest {
    file: File,
    written: u64,
    half: u64,
    /// The write error, kept so the caller can name the file that failed.
    failed: Option<io::Error>,
}

impl Write for Dest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match self.file.write(buf) {
            Ok(n) => n,
            // write_all retries an interrupted write; anything else ends
            // the copy.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                let kind = e.kind();
                self.failed = Some(e);
                return Err(kind.into());
            }
        };
        let before = self.written;
        self.written += n as u64;
        rayos_base::sys::start_writeback(&self.file, before, n as u64);
        if before < self.half
            && self.written >= self.half
            && std::env::var(FAIL_AFTER_ENV).is_ok_and(|s| s == "write-uki-half")
        {
            self.file.sync_all()?;
            hook("write-uki-half");
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the recovery boot entry (type #1, on the system partition).
/// `sort-key rayos-recovery` sorts it after the UKIs (sort key `rayos`),
/// so it never becomes the default while a RayOS version has tries left.
pub fn write_recovery_entry(system: &Path, version: &str, efi: &str) -> Result<(), ApplyError> {
    let p = system.join(RECOVERY_ENTRY);
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).map_err(|e| ApplyError::Write(d.to_path_buf(), e))?;
    }
    let text = recovery_entry_text(version, efi);
    rayos_state::write_atomic(&p, text.as_bytes()).map_err(|e| ApplyError::Record(p.clone(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_running_and_previous_good() {
        let l: Vec<Entry> = [
            "rayos-0.1.0.efi",
            "rayos-0.2.0.efi",
            "rayos-0.3.0.efi",
            "rayos-0.4.0+0-3.efi",
            "rayos-0.5.0+3.efi",
            "rayos-0.0.9.efi.bad",
        ]
        .iter()
        .map(|n| entries::parse(n).unwrap())
        .collect();
        let mut k = keep_set(&l, Some("0.3.0"));
        k.sort();
        assert_eq!(k, vec!["rayos-0.2.0.efi", "rayos-0.3.0.efi"]);
        // Unknown running version: all good ones and the current default.
        let mut k = keep_set(&l, None);
        k.sort();
        assert_eq!(
            k,
            vec![
                "rayos-0.1.0.efi",
                "rayos-0.2.0.efi",
                "rayos-0.3.0.efi",
                "rayos-0.5.0+3.efi"
            ]
        );
    }
}
