//! The recovery menu (`rayos recovery`, offered by the console when the
//! machine booted the "RayOS recovery" entry, `rayos.mode=recovery`).
//!
//! Actions, each on directories so they are tested without a machine:
//! - **logs**: list logs and crash reports on the data volume, show one;
//! - **policy**: validate the policy; edit it line by line (`set N TEXT`,
//!   `add TEXT`, `del N`, `save`); an invalid policy is not saved (the
//!   daemon would fail closed); saving keeps the previous generation;
//! - **boot**: repair the system partition's boot entries (temporaries
//!   removed, a bootable RayOS entry restored when none is left, the
//!   recovery entry rewritten) and the UEFI `Boot####` entry (through the
//!   installer's EFI load-option encoder, passed in by the binary);
//! - **reinstall**: rebuild the system partition from the recovery image
//!   (the same kernel and initramfs; only `.cmdline` says
//!   `rayos.mode=recovery`, so the installed image is that file with
//!   `rayos.mode=installed`): `mkfs.fat`, then the installed UKI, the
//!   recovery UKI and entry, the install manifest and update state put back.
//!   The data volume is not touched;
//! - **reset**: factory reset of the data volume, keeping or erasing the
//!   VMs' disks, after a typed confirmation;
//! - **schema**: put back the data from before a schema migration;
//! - **shell**: `/bin/sh` when the image has one. The installed image has
//!   no shell (busybox is only in the test guest), and the menu says so.
//!
//! Limits: VM storage on dedicated partitions is reset only when mounted
//! under `vm/<uuid>`; reinstall needs the recovery UKI on the system
//! partition (or a UKI path given) and recreates an install manifest only
//! from the copy it could read.

use std::fs;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use rayos_base::efivar::{self, LOADER_VENDOR};
use rayos_base::error::chain;
use rayos_base::{paths, uki_name};
use rayos_state::DataLayout;
use rayos_state::pe;
use rayos_update::entries::{self, EntryState, LINUX_DIR};

/// The EFI Boot#### repair, provided by the `rayos` binary (it owns the
/// installer's load-option encoder): given the mounted system partition,
/// returns what it did.
pub type BootEntryFn<'a> = &'a dyn Fn(&Path) -> Result<String, String>;

/// Why a recovery action failed.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// A file could not be read; holds its path.
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] io::Error),
    /// A file could not be written; holds its path.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] io::Error),
    /// A state file could not be replaced atomically.
    #[error("{0}")]
    Atomic(#[from] rayos_state::AtomicError),
    /// A UKI to reinstall is not usable; holds its path and why.
    #[error("{0} is not a usable RayOS UKI: {1}")]
    BadImage(PathBuf, String),
    /// The boot entries could not be listed or renamed.
    #[error("{0}")]
    Entries(#[from] entries::EntriesError),
    /// Installing a UKI failed.
    #[error("{0}")]
    Apply(#[from] rayos_update::ApplyError),
    /// Formatting the system partition failed; holds the partition and
    /// mkfs.fat's message.
    #[error("mkfs.fat failed on {0}: {1}")]
    Mkfs(PathBuf, String),
    /// An EFI variable could not be read or written.
    #[error(transparent)]
    EfiVar(#[from] rayos_base::efivar::EfiVarError),
}

// ---- logs ----------------------------------------------------------------

/// Log files and crash reports: (relative name, size), sorted.
pub fn log_files(data: &Path) -> Vec<(String, u64)> {
    let l = DataLayout::new(data);
    let mut v = Vec::new();
    for (dir, prefix) in [(l.logs(), "logs/"), (l.crash(), "crash/")] {
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                if let Ok(m) = e.metadata()
                    && m.is_file()
                {
                    v.push((
                        format!("{prefix}{}", e.file_name().to_string_lossy()),
                        m.len(),
                    ));
                }
            }
        }
    }
    v.sort();
    v
}

/// The last `n` lines of a log or crash report named as [`log_files`] does.
pub fn tail(data: &Path, name: &str, n: usize) -> Result<String, RecoveryError> {
    if name.contains("..") || !(name.starts_with("logs/") || name.starts_with("crash/")) {
        return Err(RecoveryError::Read(
            PathBuf::from(name),
            io::Error::new(io::ErrorKind::InvalidInput, "not a log or crash report"),
        ));
    }
    let p = data.join(name);
    let text = fs::read(&p).map_err(|e| RecoveryError::Read(p.clone(), e))?;
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    Ok(lines[lines.len().saturating_sub(n)..].join("\n") + "\n")
}

// ---- policy ----------------------------------------------------------------

/// `Ok(())` or the error with its line.
pub fn validate_policy(data: &Path) -> Result<(), String> {
    let p = DataLayout::new(data).policy();
    let (b, _) = rayos_state::read_with_fallback(&p).map_err(|e| chain(&e))?;
    rayos_state::Policy::parse(&p.to_string_lossy(), &String::from_utf8_lossy(&b))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// One edit of the policy text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyEdit {
    /// Replace line N with the text.
    Set(usize, String),
    /// Add a line at the end.
    Add(String),
    /// Delete line N.
    Del(usize),
}

/// Applies `edit` (1-based line numbers) to `lines`.
pub fn edit_lines(lines: &mut Vec<String>, edit: &PolicyEdit) -> Result<(), String> {
    match edit {
        PolicyEdit::Set(n, t) if (1..=lines.len()).contains(n) => lines[n - 1] = t.clone(),
        PolicyEdit::Del(n) if (1..=lines.len()).contains(n) => {
            lines.remove(n - 1);
        }
        PolicyEdit::Add(t) => lines.push(t.clone()),
        PolicyEdit::Set(n, _) | PolicyEdit::Del(n) => {
            return Err(format!("no line {n} (the policy has {})", lines.len()));
        }
    }
    Ok(())
}

/// Saves policy text after validating it; refuses an invalid one.
pub fn save_policy(data: &Path, text: &str) -> Result<(), String> {
    let p = DataLayout::new(data).policy();
    rayos_state::Policy::parse(&p.to_string_lossy(), text).map_err(|e| e.to_string())?;
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    rayos_state::write_atomic(&p, text.as_bytes()).map_err(|e| chain(&e))
}

// ---- boot entries ----------------------------------------------------------

/// Repairs the boot entries on the system partition at `system`; returns
/// one line per thing done or checked.
pub fn repair_boot(system: &Path) -> Result<Vec<String>, RecoveryError> {
    let mut did = Vec::new();
    let linux = system.join(LINUX_DIR);
    fs::create_dir_all(&linux).map_err(|e| RecoveryError::Write(linux.clone(), e))?;
    let rec_dir = system.join(rayos_update::apply::RECOVERY_DIR);
    for dir in [&linux, &rec_dir] {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                fs::remove_file(e.path()).map_err(|er| RecoveryError::Write(e.path(), er))?;
                did.push(format!("removed the leftover temporary {name}"));
            }
        }
    }
    let list = entries::list(&linux)?;
    let menu = entries::menu(&list);
    if menu.is_empty() {
        // Nothing bootable: give the newest bad one its tries back.
        let newest = list
            .iter()
            .filter(|e| e.marked_bad)
            .max_by(|a, b| rayos_update::version::compare(&a.version, &b.version));
        match newest {
            Some(e) => {
                let to = e.counted_name(entries::TRIES, 0);
                entries::rename_synced(&linux, &e.file, &to)?;
                did.push(format!(
                    "no RayOS entry was bootable: {} gets 3 tries again as {to}",
                    e.file
                ));
            }
            None => did
                .push("no RayOS system image on the system partition: use `reinstall`".to_string()),
        }
    } else if menu.iter().all(|e| e.state() == EntryState::Exhausted) {
        let e = menu[0];
        let to = e.counted_name(entries::TRIES, 0);
        entries::rename_synced(&linux, &e.file, &to)?;
        did.push(format!(
            "every RayOS entry was out of tries: {} gets 3 tries again as {to}",
            e.file
        ));
    } else {
        did.push(format!(
            "boot entries fine: {} boots by default",
            entries::default_entry(&list, entries::DEFAULT_PATTERN)
                .map(|e| e.file.as_str())
                .unwrap_or("nothing")
        ));
    }
    // The recovery entry must point at a recovery UKI that exists.
    let newest_recovery = recovery_ukis(system).pop();
    let conf = system.join(rayos_update::apply::RECOVERY_ENTRY);
    match newest_recovery {
        Some((version, name)) => {
            let want = rayos_update::apply::recovery_entry_text(
                &version,
                &format!("/{}/{name}", rayos_update::apply::RECOVERY_DIR),
            );
            if fs::read_to_string(&conf).ok().as_deref() != Some(want.as_str()) {
                rayos_update::apply::write_recovery_entry(
                    system,
                    &version,
                    &format!("/{}/{name}", rayos_update::apply::RECOVERY_DIR),
                )?;
                did.push(format!("recovery entry rewritten for {name}"));
            } else {
                did.push("recovery entry fine".to_string());
            }
        }
        None => did.push("no recovery UKI on the system partition: the recovery entry cannot be repaired (apply a bundle that ships one, or reinstall from the installer medium)".to_string()),
    }
    Ok(did)
}

/// `(version, file name)` of the recovery UKIs in `/rayos`, oldest first.
pub fn recovery_ukis(system: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = fs::read_dir(system.join(rayos_update::apply::RECOVERY_DIR))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let ver = uki_name::recovery_version(&name)?.to_string();
            Some((ver, name))
        })
        .collect();
    v.sort_by(|a, b| rayos_update::version::compare(&a.0, &b.0));
    v
}

// ---- reinstall ---------------------------------------------------------------

/// The content of section `name` of a PE image (`None`: no such section,
/// or not a PE image; [`rayos_state::pe`] checks every offset).
pub fn section<'a>(img: &'a [u8], name: &str) -> Option<&'a [u8]> {
    pe::section_data(img, name).ok().flatten()
}

/// `VERSION_ID` of a UKI's `.osrel`.
pub fn uki_version(img: &[u8]) -> Option<String> {
    let osrel = String::from_utf8_lossy(section(img, ".osrel")?).into_owned();
    osrel
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_ID="))
        .map(|v| v.trim_matches('"').to_string())
}

/// The installed-mode UKI made from the recovery UKI: `.cmdline` with
/// `rayos.mode=installed` instead of `rayos.mode=recovery`. The section's
/// raw data is padded to the file alignment, so the one extra byte fits;
/// the PE checksum is cleared (UEFI does not check it; 0 means "none").
/// A damaged image (a section table pointing past the end of the file) is
/// an error that says so.
pub fn installed_from_recovery(img: &[u8]) -> Result<Vec<u8>, String> {
    let headers = pe::parse(img, img.len() as u64).map_err(|e| format!("damaged PE image: {e}"))?;
    let s = headers.section(".cmdline").ok_or("no .cmdline section")?;
    // parse() checked both ranges against the file's length.
    let (data, raw) = (s.data_range(), s.raw_range());
    let text = std::str::from_utf8(&img[data]).map_err(|_| ".cmdline is not UTF-8")?;
    let text = text.trim_end_matches('\0');
    let words: Vec<&str> = text.split(' ').collect();
    if !words.contains(&"rayos.mode=recovery") {
        return Err("its command line does not say rayos.mode=recovery".into());
    }
    let new: String = words
        .iter()
        .map(|w| {
            if *w == "rayos.mode=recovery" {
                "rayos.mode=installed"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    if new.len() > raw.len() {
        return Err("no room in .cmdline for the installed command line".into());
    }
    let mut out = img.to_vec();
    out[raw.clone()].fill(0);
    out[raw.start..raw.start + new.len()].copy_from_slice(new.as_bytes());
    // VirtualSize is the header's first field after the 8-byte name.
    let vsize = s.header_offset + 8;
    out[vsize..vsize + 4].copy_from_slice(&(new.len() as u32).to_le_bytes());
    let checksum = headers.optional_field(pe::CHECKSUM_FIELD);
    if let Some(c) = out.get_mut(checksum..checksum + 4) {
        c.fill(0);
    }
    Ok(out)
}

/// What a reinstall puts back on the (freshly formatted) system partition.
pub struct ReinstallSource {
    /// The recovery UKI to put back (the running image).
    pub recovery: Vec<u8>,
    /// The RayOS version it is.
    pub version: String,
    /// The install manifest, if it could be read before formatting.
    pub install_manifest: Option<Vec<u8>>,
    /// The update state, if it could be read before formatting.
    pub update_state: Option<Vec<u8>>,
    /// The boot loader's own files when they live on the system partition
    /// (4096-byte-sector disks, see `rayos_install::plan::loader_role`):
    /// formatting would otherwise leave the boot entry pointing at nothing.
    pub loader_files: Vec<(String, Vec<u8>)>,
}

/// Boot loader files that may live on the system partition.
const LOADER_FILES: [&str; 2] = ["EFI/systemd/systemd-bootx64.efi", "loader/loader.conf"];

impl ReinstallSource {
    /// Reads the newest recovery UKI (or `uki`, a recovery UKI given by
    /// path) and the files to keep from the mounted system partition.
    pub fn read(system: &Path, uki: Option<&Path>) -> Result<ReinstallSource, RecoveryError> {
        let path = match uki {
            Some(p) => p.to_path_buf(),
            None => {
                let (_, name) = recovery_ukis(system).pop().ok_or_else(|| {
                    RecoveryError::BadImage(
                        system.join(rayos_update::apply::RECOVERY_DIR),
                        "no rayos-recovery-*.efi on the system partition".into(),
                    )
                })?;
                system.join(rayos_update::apply::RECOVERY_DIR).join(name)
            }
        };
        let recovery = fs::read(&path).map_err(|e| RecoveryError::Read(path.clone(), e))?;
        // Damage first (it would otherwise read as a missing VERSION_ID).
        installed_from_recovery(&recovery)
            .map_err(|why| RecoveryError::BadImage(path.clone(), why))?;
        let version = uki_version(&recovery)
            .filter(|v| rayos_update::version::validate(v).is_ok())
            .ok_or_else(|| {
                RecoveryError::BadImage(path, "no usable VERSION_ID in .osrel".into())
            })?;
        Ok(ReinstallSource {
            recovery,
            version,
            install_manifest: fs::read(system.join(rayos_update::apply::INSTALL_MANIFEST)).ok(),
            update_state: fs::read(rayos_update::state::path(system)).ok(),
            loader_files: LOADER_FILES
                .iter()
                .filter_map(|f| Some((f.to_string(), fs::read(system.join(f)).ok()?)))
                .collect(),
        })
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), RecoveryError> {
    let err = |e| RecoveryError::Write(path.to_path_buf(), e);
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).map_err(err)?;
    }
    let mut f = fs::File::create(path).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

/// Writes the system partition's files from `src` into `system` (empty
/// after formatting). The installed UKI gets 3 tries; if it fails, the
/// recovery entry becomes the default (see docs/recovery.md).
pub fn reinstall_files(system: &Path, src: &ReinstallSource) -> Result<Vec<String>, RecoveryError> {
    let mut did = Vec::new();
    let installed = installed_from_recovery(&src.recovery)
        .map_err(|why| RecoveryError::BadImage(system.to_path_buf(), why))?;
    let uki = uki_name::new_entry(&src.version);
    write_synced(&system.join(LINUX_DIR).join(&uki), &installed)?;
    did.push(format!("wrote /{LINUX_DIR}/{uki}"));
    let rec = uki_name::recovery(&src.version);
    write_synced(
        &system.join(rayos_update::apply::RECOVERY_DIR).join(&rec),
        &src.recovery,
    )?;
    rayos_update::apply::write_recovery_entry(
        system,
        &src.version,
        &format!("/{}/{rec}", rayos_update::apply::RECOVERY_DIR),
    )?;
    did.push(format!("wrote the recovery UKI {rec} and its boot entry"));
    match &src.install_manifest {
        Some(m) => {
            write_synced(&system.join(rayos_update::apply::INSTALL_MANIFEST), m)?;
            did.push("put the install manifest back".into());
        }
        None => did.push(
            "the install manifest could not be read before formatting: updates will refuse this install until it is reinstalled from the installer medium".into(),
        ),
    }
    if let Some(s) = &src.update_state {
        write_synced(&rayos_update::state::path(system), s)?;
    }
    for (rel, bytes) in &src.loader_files {
        write_synced(&system.join(rel), bytes)?;
        did.push(format!("put the boot loader's /{rel} back"));
    }
    for d in [
        system.join(LINUX_DIR),
        system.join(rayos_update::apply::RECOVERY_DIR),
    ] {
        entries::sync_dir(&d)?;
    }
    Ok(did)
}

/// `mkfs.fat -F 32 -n RAYOS-SYS` on the (unmounted) system partition.
pub fn format_system(dev: &Path) -> Result<(), RecoveryError> {
    let out = std::process::Command::new("mkfs.fat")
        .args(["-F", "32", "-n", "RAYOS-SYS"])
        .arg(dev)
        .output()
        .map_err(|e| RecoveryError::Mkfs(dev.to_path_buf(), e.to_string()))?;
    if !out.status.success() {
        return Err(RecoveryError::Mkfs(
            dev.to_path_buf(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

// ---- factory reset -----------------------------------------------------------

/// What a factory reset keeps of the VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetKind {
    /// Disks, UEFI variables and TPM state stay; saved states go (the VMs
    /// boot fresh).
    KeepVmDisks,
    /// Disks, saved states, UEFI variables and TPM state go; the VMs keep
    /// their identity (registry entry, UUID) and start as new machines.
    EraseVmDisks,
}

fn clear_dir(dir: &Path, did: &mut Vec<String>, what: &str) -> Result<(), RecoveryError> {
    let mut n = 0;
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let r = if p.is_dir() && !p.is_symlink() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
        r.map_err(|er| RecoveryError::Write(p.clone(), er))?;
        n += 1;
    }
    if n > 0 {
        did.push(format!("{what}: {n} removed"));
    }
    Ok(())
}

/// Factory reset of the data volume at `data`: logs, crash reports, boot
/// records, schema backups and VM saved states go, the policy returns to
/// the defaults (the old one kept as `.prev`); `machine.toml`, the VM
/// registry and `schema-version` stay (the install's identity). With
/// [`ResetKind::EraseVmDisks`] the VMs' disks, UEFI variables and TPM state
/// go too.
pub fn factory_reset(data: &Path, kind: ResetKind) -> Result<Vec<String>, RecoveryError> {
    let l = DataLayout::new(data);
    let mut did = Vec::new();
    clear_dir(&l.logs(), &mut did, "logs")?;
    clear_dir(&l.crash(), &mut did, "crash reports")?;
    clear_dir(&l.boot(), &mut did, "boot records")?;
    let backup = data.join(rayos_update::schema::BACKUP_DIR);
    if backup.exists() {
        fs::remove_dir_all(&backup).map_err(|e| RecoveryError::Write(backup.clone(), e))?;
        let _ = fs::remove_file(data.join(rayos_update::schema::RECORD_FILE));
        did.push("schema migration backup removed".into());
    }
    for e in fs::read_dir(l.vm_root()).into_iter().flatten().flatten() {
        let p = e.path();
        if !p.is_dir() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        clear_dir(
            &p.join(rayos_state::layout::vm::STATE),
            &mut did,
            &format!("VM {name} saved state"),
        )?;
        if kind == ResetKind::EraseVmDisks {
            clear_dir(
                &p.join(rayos_state::layout::vm::DISKS),
                &mut did,
                &format!("VM {name} disks"),
            )?;
            clear_dir(
                &p.join(rayos_state::layout::vm::TPM),
                &mut did,
                &format!("VM {name} TPM state"),
            )?;
            let vars = p.join(rayos_state::layout::vm::OVMF_VARS);
            if vars.exists() {
                fs::remove_file(&vars).map_err(|er| RecoveryError::Write(vars.clone(), er))?;
                did.push(format!("VM {name} UEFI variables removed"));
            }
        }
    }
    let policy = rayos_state::Policy::default().to_toml();
    let p = l.policy();
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).map_err(|e| RecoveryError::Write(d.to_path_buf(), e))?;
    }
    rayos_state::write_atomic(&p, policy.as_bytes())?;
    did.push("policy reset to the defaults (the old one is policy/rayos-policy.toml.prev)".into());
    Ok(did)
}

// ---- booting into recovery -------------------------------------------------

/// The recovery entry's id as systemd-boot knows it.
pub const RECOVERY_ENTRY_ID: &str = "rayos-recovery.conf";

/// Asks systemd-boot to start the recovery entry at the next boot only
/// (`LoaderEntryOneShot`, which it reads and deletes). `efivars` is the
/// efivarfs mount.
pub fn boot_recovery_next(efivars: &Path) -> Result<(), RecoveryError> {
    // Through the shared writer: the variable efivarfs created last time
    // is immutable, which a plain write meets as EPERM.
    efivar::write_string(
        efivars,
        "LoaderEntryOneShot",
        LOADER_VENDOR,
        RECOVERY_ENTRY_ID,
    )?;
    Ok(())
}

// ---- the menu ----------------------------------------------------------------

/// Where the recovery menu works.
pub struct Ctx<'a> {
    /// The data volume (`/var/rayos`).
    pub data: PathBuf,
    /// The mounted system partition, or how to mount it (`None`: the menu
    /// mounts this machine's with [`crate::sysmount`]).
    pub system: Option<PathBuf>,
    /// The `Boot####` repair (`None`: not offered).
    pub boot_entry: Option<BootEntryFn<'a>>,
}

const MENU: &str = "\
RayOS recovery
  logs       view logs and crash reports
  policy     validate and edit the policy
  boot       repair boot entries and the UEFI boot entry
  reinstall  reinstall the system from the recovery image (the data volume is kept)
  reset      factory reset, keeping or erasing the VMs' disks
  schema     put back the data from before a schema migration
  shell      a root shell for experts
  quit       back to the rayos> prompt
";

/// Runs the menu on `input`/`out` until `quit` or end of input.
pub fn menu(ctx: &Ctx<'_>, input: &mut dyn BufRead, out: &mut dyn Write) -> io::Result<()> {
    let mut ask = |out: &mut dyn Write, q: &str| -> io::Result<Option<String>> {
        write!(out, "{q}")?;
        out.flush()?;
        let mut l = String::new();
        Ok(match input.read_line(&mut l)? {
            0 => None,
            _ => Some(l.trim().to_string()),
        })
    };
    writeln!(out, "{MENU}")?;
    loop {
        let Some(choice) = ask(out, "recovery> ")? else {
            return Ok(());
        };
        match choice.as_str() {
            "" => {}
            "help" | "?" | "menu" => writeln!(out, "{MENU}")?,
            "quit" | "exit" | "q" => return Ok(()),
            "logs" => {
                let files = log_files(&ctx.data);
                if files.is_empty() {
                    writeln!(out, "no logs or crash reports on {}", ctx.data.display())?;
                    continue;
                }
                for (n, s) in &files {
                    writeln!(out, "  {n:<40} {s:>10} bytes")?;
                }
                if let Some(name) = ask(out, "show which (Enter: none)? ")?
                    && !name.is_empty()
                {
                    match tail(&ctx.data, &name, 60) {
                        Ok(t) => write!(out, "{t}")?,
                        Err(e) => writeln!(out, "{}", chain(&e))?,
                    }
                }
            }
            "policy" => policy_menu(ctx, &mut ask, out)?,
            "boot" => {
                let r = with_system(ctx, |sys| {
                    let mut did = repair_boot(sys).map_err(|e| chain(&e))?;
                    match ctx.boot_entry {
                        Some(f) => did.push(match f(sys) {
                            Ok(s) => s,
                            Err(e) => format!("UEFI boot entry not repaired: {e}"),
                        }),
                        None => did.push("UEFI boot entry: not available here".into()),
                    }
                    Ok(did)
                });
                report(out, r)?;
            }
            "reinstall" => {
                writeln!(
                    out,
                    "This formats the system partition and writes RayOS again from the recovery image. \
                     The data volume and the VMs are not touched."
                )?;
                if ask(out, "Type `reinstall` to go on: ")?.as_deref() != Some("reinstall") {
                    writeln!(out, "not confirmed: nothing done")?;
                    continue;
                }
                report(out, reinstall(ctx))?;
            }
            "reset" => {
                writeln!(
                    out,
                    "Factory reset: logs, crash reports, boot records and VM saved states are removed and the policy \
                     returns to the defaults. Type `keep` to keep the VMs' disks, `erase` to erase them too \
                     (UEFI variables and TPM state included)."
                )?;
                let kind = match ask(out, "keep or erase? ")?.as_deref() {
                    Some("keep") => ResetKind::KeepVmDisks,
                    Some("erase") => ResetKind::EraseVmDisks,
                    _ => {
                        writeln!(out, "nothing done")?;
                        continue;
                    }
                };
                let word = if kind == ResetKind::EraseVmDisks {
                    "ERASE"
                } else {
                    "RESET"
                };
                if ask(out, &format!("Type {word} to confirm: "))?.as_deref() != Some(word) {
                    writeln!(out, "not confirmed: nothing done")?;
                    continue;
                }
                report(out, factory_reset(&ctx.data, kind).map_err(|e| chain(&e)))?;
            }
            "schema" => {
                let l = DataLayout::new(&ctx.data);
                match rayos_update::schema::pending(&l) {
                    None => writeln!(out, "no schema migration to undo")?,
                    Some(r) => {
                        writeln!(
                            out,
                            "The data was migrated from schema {} to {} at {}.",
                            r.from, r.to, r.at
                        )?;
                        if ask(out, "Type `restore` to put the old generation back: ")?.as_deref()
                            == Some("restore")
                        {
                            match rayos_update::schema::restore(&l) {
                                Ok(v) => writeln!(out, "restored schema {v}")?,
                                Err(e) => writeln!(out, "{}", chain(&e))?,
                            }
                        }
                    }
                }
            }
            "shell" => {
                if Path::new("/bin/sh").exists() {
                    let _ = std::process::Command::new("/bin/sh").status();
                } else {
                    writeln!(
                        out,
                        "this image has no shell (busybox is not part of the installed image); use this menu and \
                         the rayos> commands"
                    )?;
                }
            }
            other => writeln!(out, "unknown choice {other:?}; type `menu` for the list")?,
        }
    }
}

/// How the menus ask the person one question: writes the prompt to the
/// output and returns the answer, or `None` at the end of input.
pub type Ask<'x> = dyn FnMut(&mut dyn Write, &str) -> io::Result<Option<String>> + 'x;

/// The commands of the policy line editor ([`edit_policy`]), as shown.
pub const POLICY_EDITOR_HELP: &str = "`set N TEXT`, `add TEXT`, `del N`, `show`, `save`, `cancel`";

/// The policy line editor of recovery's policy menu and of `rayos policy
/// edit`: takes commands from `ask` over `text` until `save` accepts the
/// edited text (which it returns), or the person cancels or input ends
/// (`None`). `save` says why a text cannot be saved; the person then fixes
/// it or cancels.
pub fn edit_policy(
    text: &str,
    ask: &mut Ask<'_>,
    out: &mut dyn Write,
    save: &mut dyn FnMut(&str) -> Result<(), String>,
) -> io::Result<Option<String>> {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    writeln!(out, "edit: {POLICY_EDITOR_HELP}")?;
    loop {
        let Some(cmd) = ask(out, "policy> ")? else {
            return Ok(None);
        };
        let (verb, rest) = cmd.split_once(' ').unwrap_or((cmd.as_str(), ""));
        let num = |s: &str| s.trim().parse::<usize>().ok();
        let edit = match verb.trim() {
            "show" | "" => {
                for (i, l) in lines.iter().enumerate() {
                    writeln!(out, "{:3}  {l}", i + 1)?;
                }
                continue;
            }
            "cancel" | "quit" => return Ok(None),
            "save" => {
                let text = lines.join("\n") + "\n";
                match save(&text) {
                    Ok(()) => return Ok(Some(text)),
                    Err(e) => {
                        writeln!(out, "not saved: {e}")?;
                        continue;
                    }
                }
            }
            "set" => match rest.split_once(' ').and_then(|(n, t)| Some((num(n)?, t))) {
                Some((n, t)) => PolicyEdit::Set(n, t.to_string()),
                None => {
                    writeln!(out, "usage: set N TEXT")?;
                    continue;
                }
            },
            "add" => PolicyEdit::Add(rest.to_string()),
            "del" => match num(rest) {
                Some(n) => PolicyEdit::Del(n),
                None => {
                    writeln!(out, "usage: del N")?;
                    continue;
                }
            },
            other => {
                writeln!(out, "unknown {other:?}: {POLICY_EDITOR_HELP}")?;
                continue;
            }
        };
        if let Err(e) = edit_lines(&mut lines, &edit) {
            writeln!(out, "{e}")?;
        }
    }
}

fn policy_menu(ctx: &Ctx<'_>, ask: &mut Ask<'_>, out: &mut dyn Write) -> io::Result<()> {
    let p = DataLayout::new(&ctx.data).policy();
    match validate_policy(&ctx.data) {
        Ok(()) => writeln!(out, "{}: valid", p.display())?,
        Err(e) => writeln!(out, "{e}")?,
    }
    let text = rayos_state::read_with_fallback(&p)
        .map(|(b, _)| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    match edit_policy(&text, ask, out, &mut |t| save_policy(&ctx.data, t))? {
        Some(_) => writeln!(out, "saved (previous version kept as .prev)"),
        None => writeln!(out, "policy not changed"),
    }
}

fn report(out: &mut dyn Write, r: Result<Vec<String>, String>) -> io::Result<()> {
    match r {
        Ok(v) => {
            for l in v {
                writeln!(out, "  {l}")?;
            }
            Ok(())
        }
        Err(e) => writeln!(out, "failed: {e}"),
    }
}

fn with_system(
    ctx: &Ctx<'_>,
    f: impl FnOnce(&Path) -> Result<Vec<String>, String>,
) -> Result<Vec<String>, String> {
    if let Some(s) = &ctx.system {
        return f(s);
    }
    let install = crate::sysmount::find().map_err(|e| chain(&e))?;
    let m = crate::sysmount::SystemMount::mount(&install, Path::new(paths::SYSTEM_RECOVERY))
        .map_err(|e| chain(&e))?;
    f(m.path())
}

fn reinstall(ctx: &Ctx<'_>) -> Result<Vec<String>, String> {
    let e = |e: RecoveryError| chain(&e);
    if let Some(s) = &ctx.system {
        // A directory (tests): no formatting, just the files.
        let src = ReinstallSource::read(s, None).map_err(e)?;
        return reinstall_files(s, &src).map_err(e);
    }
    let install = crate::sysmount::find().map_err(|x| chain(&x))?;
    let at = Path::new(paths::SYSTEM_RECOVERY);
    let src = {
        let m = crate::sysmount::SystemMount::mount(&install, at).map_err(|x| chain(&x))?;
        ReinstallSource::read(m.path(), None).map_err(e)?
    };
    let dev = install.system.clone().ok_or("no system partition")?;
    format_system(&dev).map_err(e)?;
    let m = crate::sysmount::SystemMount::mount(&install, at).map_err(|x| chain(&x))?;
    let mut did = vec![format!("formatted {}", dev.display())];
    did.extend(reinstall_files(m.path(), &src).map_err(e)?);
    if let Some(f) = ctx.boot_entry {
        did.push(f(m.path()).unwrap_or_else(|x| format!("UEFI boot entry not repaired: {x}")));
    }
    did.push("reinstalled: reboot to start RayOS".into());
    Ok(did)
}
