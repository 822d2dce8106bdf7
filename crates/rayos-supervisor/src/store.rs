//! Loading the policy and the registry at start-up, and writing the registry.
//!
//! Both files are written atomically with the previous generation kept
//! (`rayos_state::atomic`). Reading follows these rules:
//!
//! | current file | previous (`.prev`) | policy used | registry used |
//! |---|---|---|---|
//! | parses | any | current | current, writable |
//! | missing | parses | previous | previous, writable |
//! | missing | missing | [`Policy::closed`] | empty, writable (fresh volume) |
//! | corrupt | parses | previous | previous, writable |
//! | corrupt | corrupt/missing | [`Policy::closed`] | empty, **read-only** |
//!
//! A corrupt file is never deleted: it is copied to
//! `<file>.corrupt-<unix time>` before anything else happens, and each
//! fallback leaves a note (file, line, what to do) that `GET /v1/health`
//! reports. A registry that no generation can supply stays read-only for the
//! daemon's life: creating or deleting VMs then would overwrite the files a
//! person has to repair, and VMs missing from an empty registry must not be
//! recreated silently.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rayos_state::atomic::{self, Generation, previous_path};
use rayos_state::{DataLayout, Policy, Registry};

/// Why the registry could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The registry was unreadable at start-up, so it is not overwritten; holds
    /// its path.
    #[error(
        "the registry {0} could not be read at start-up, so rayosd does not change it: repair or restore it (see GET /v1/health notes), then restart rayosd"
    )]
    ReadOnly(PathBuf),
    /// Writing the registry failed.
    #[error("cannot write the registry")]
    Write(#[source] rayos_state::AtomicError),
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Copies a corrupt file aside so no later write can lose it.
fn keep_corrupt(path: &Path, notes: &mut Vec<String>) {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".corrupt-{}", now_secs()));
    let aside = path.with_file_name(name);
    match fs::copy(path, &aside) {
        Ok(_) => notes.push(format!(
            "kept a copy of the corrupt file as {}",
            aside.display()
        )),
        Err(e) => notes.push(format!("could not copy {} aside: {e}", path.display())),
    }
}

enum Read<T> {
    Ok(T),
    Missing,
    Bad(String),
}

fn read_parse<T>(path: &Path, parse: impl Fn(&str, &str) -> Result<T, String>) -> Read<T> {
    match fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => match parse(&path.display().to_string(), &text) {
                Ok(v) => Read::Ok(v),
                Err(e) => Read::Bad(e),
            },
            Err(_) => Read::Bad(format!("{}:0: not UTF-8 text", path.display())),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Read::Missing,
        Err(e) => Read::Bad(format!("{}: {e}", path.display())),
    }
}

/// Which generation a value came from, `None` when neither was usable.
pub type Source = Option<Generation>;

/// Reads a file by the rules in the module docs.
fn load<T>(
    path: &Path,
    what: &str,
    parse: impl Fn(&str, &str) -> Result<T, String>,
    notes: &mut Vec<String>,
) -> (Option<T>, Source, bool) {
    let prev = previous_path(path);
    match read_parse(path, &parse) {
        Read::Ok(v) => (Some(v), Some(Generation::Current), false),
        Read::Missing => match read_parse(&prev, &parse) {
            Read::Ok(v) => {
                notes.push(format!(
                    "{} is missing; using its previous generation {}",
                    path.display(),
                    prev.display()
                ));
                (Some(v), Some(Generation::Previous), false)
            }
            Read::Missing => (None, None, false),
            Read::Bad(e) => {
                notes.push(format!("{what}: {e}"));
                keep_corrupt(&prev, notes);
                (None, None, true)
            }
        },
        Read::Bad(e) => {
            notes.push(format!("{what} is corrupt: {e}"));
            keep_corrupt(path, notes);
            match read_parse(&prev, &parse) {
                Read::Ok(v) => {
                    notes.push(format!(
                        "using the previous generation {}; fix or remove {} to silence this",
                        prev.display(),
                        path.display()
                    ));
                    (Some(v), Some(Generation::Previous), true)
                }
                Read::Missing => {
                    notes.push(format!(
                        "{what} has no previous generation ({})",
                        prev.display()
                    ));
                    (None, None, true)
                }
                Read::Bad(e) => {
                    notes.push(format!("{what}'s previous generation is corrupt too: {e}"));
                    (None, None, true)
                }
            }
        }
    }
}

/// The policy to run with, and notes on how it was found.
pub fn load_policy(layout: &DataLayout) -> (Policy, Vec<String>) {
    let mut notes = Vec::new();
    let path = layout.policy();
    let (policy, _, _) = load(
        &path,
        "policy",
        |p, t| Policy::parse(p, t).map_err(|e| e.to_string()),
        &mut notes,
    );
    match policy {
        Some(p) => (p, notes),
        None => {
            notes.push(format!(
                "no usable policy at {}: running with the closed policy (nothing autostarts, no networking); write a valid policy with `rayos policy edit` (rayosd uses it at once)",
                path.display()
            ));
            (Policy::closed(), notes)
        }
    }
}

/// The registry and the one way it is changed.
#[derive(Debug)]
pub struct RegistryStore {
    path: PathBuf,
    registry: Registry,
    writable: bool,
}

impl RegistryStore {
    /// Loads the registry (or its previous generation); returns it with notes
    /// for people about what was wrong or used instead.
    pub fn load(layout: &DataLayout) -> (RegistryStore, Vec<String>) {
        let mut notes = Vec::new();
        let path = layout.registry();
        let (reg, _, corrupt) = load(
            &path,
            "registry",
            |p, t| Registry::parse(p, t).map_err(|e| e.to_string()),
            &mut notes,
        );
        let store = match reg {
            Some(registry) => RegistryStore {
                path,
                registry,
                writable: true,
            },
            None => {
                if corrupt {
                    notes.push(format!(
                        "no usable registry at {}: no VMs are known and changes are refused until it is repaired",
                        path.display()
                    ));
                }
                RegistryStore {
                    path,
                    registry: Registry::default(),
                    // A volume without any registry is a fresh one.
                    writable: !corrupt,
                }
            }
        };
        (store, notes)
    }

    /// The registry as loaded and changed since.
    pub fn get(&self) -> &Registry {
        &self.registry
    }

    /// Whether changes may be written (false when the registry was unreadable
    /// at start-up).
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// The registry's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `new` and makes it current; on failure nothing changes.
    pub fn replace(&mut self, new: Registry) -> Result<(), StoreError> {
        if !self.writable {
            return Err(StoreError::ReadOnly(self.path.clone()));
        }
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(|source| {
                StoreError::Write(rayos_state::AtomicError::Write {
                    path: dir.to_path_buf(),
                    source,
                })
            })?;
        }
        atomic::write_atomic(&self.path, new.to_json().as_bytes()).map_err(StoreError::Write)?;
        self.registry = new;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayos_state::{VmDefinition, VmKind, registry::BootSpec};

    fn vm(name: &str) -> VmDefinition {
        VmDefinition {
            id: uuid::Uuid::new_v4(),
            name: name.into(),
            kind: VmKind::Generic,
            memory_mib: 128,
            cpus: 1,
            disks: vec![],
            boot: BootSpec::Uefi { secure_boot: false },
            tpm: false,
            media: vec![],
            usb_media: vec![],
            provisioned: true,
            guest: None,
        }
    }

    #[test]
    fn fresh_volume_is_empty_and_writable_policy_closed() {
        let d = tempfile::tempdir().unwrap();
        let l = DataLayout::new(d.path());
        let (s, notes) = RegistryStore::load(&l);
        assert!(s.writable() && s.get().vms.is_empty() && notes.is_empty());
        let (p, notes) = load_policy(&l);
        assert_eq!(p, Policy::closed());
        assert!(notes[0].contains("closed policy"), "{notes:?}");
    }

    #[test]
    fn corrupt_registry_falls_back_and_keeps_the_file() {
        let d = tempfile::tempdir().unwrap();
        let l = DataLayout::new(d.path());
        let (mut s, _) = RegistryStore::load(&l);
        let mut r = Registry::default();
        r.vms.push(vm("one"));
        s.replace(r.clone()).unwrap();
        r.vms.push(vm("two"));
        s.replace(r).unwrap();
        // Damage the current generation on line 3.
        let text = fs::read_to_string(l.registry()).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines[2] = "  garbage";
        fs::write(l.registry(), lines.join("\n")).unwrap();

        let (s, notes) = RegistryStore::load(&l);
        let names: Vec<_> = s.get().vms.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["one"], "previous generation is used");
        assert!(s.writable());
        let all = notes.join("\n");
        assert!(
            all.contains("registry.json:3:"),
            "names file and line: {all}"
        );
        assert!(l.registry().exists(), "corrupt file is not deleted");
        let kept = fs::read_dir(l.vm_root())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("registry.json.corrupt-")
            });
        assert!(kept, "a copy of the corrupt file is kept");
    }

    #[test]
    fn no_usable_generation_means_read_only() {
        let d = tempfile::tempdir().unwrap();
        let l = DataLayout::new(d.path());
        fs::create_dir_all(l.vm_root()).unwrap();
        fs::write(l.registry(), "{ nope").unwrap();
        let (mut s, notes) = RegistryStore::load(&l);
        assert!(!s.writable() && s.get().vms.is_empty(), "{notes:?}");
        assert!(matches!(
            s.replace(Registry::default()),
            Err(StoreError::ReadOnly(_))
        ));
        assert_eq!(fs::read_to_string(l.registry()).unwrap(), "{ nope");
    }

    #[test]
    fn corrupt_policy_uses_previous_then_closed() {
        let d = tempfile::tempdir().unwrap();
        let l = DataLayout::new(d.path());
        fs::create_dir_all(l.policy().parent().unwrap()).unwrap();
        let mut good = Policy::default();
        good.linux.cpus = Some(1);
        atomic::write_atomic(&l.policy(), good.to_toml().as_bytes()).unwrap();
        atomic::write_atomic(&l.policy(), b"version = 1\n[linux]\nautostrat = true\n").unwrap();
        let (p, notes) = load_policy(&l);
        assert_eq!(p, good);
        assert!(
            notes.join("\n").contains("rayos-policy.toml:3:"),
            "{notes:?}"
        );
        fs::write(previous_path(&l.policy()), "version = 'x'").unwrap();
        let (p, _) = load_policy(&l);
        assert_eq!(p, Policy::closed(), "fails closed");
    }
}
