//! Kernel modules for the initramfs: resolve wanted module names (and whole
//! driver directories) to module files with their dependencies, from the
//! kernel's own `modules.dep`, `modules.softdep`, `modules.alias` and
//! `modules.builtin`; stage them into a tree and regenerate the index there
//! with `depmod -b`, so PID 1 can coldplug by modalias.
//!
//! Names compare with `-` and `_` as equal (as modprobe does). A wanted name
//! that is neither a module nor built in is an error: a typo must not drop a
//! storage driver silently. Soft dependencies (`pre:`/`post:`) are followed
//! when they name a module or an exact alias (e.g. `crypto-crc32c`).
//!
//! Limits: `.ko` files are copied as they are (compressed or not); no
//! firmware files (`/lib/firmware`) are collected.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tools::{self, ToolError};

/// Why kernel modules could not be found or staged.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    /// A file of the module index could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Modules neither in `modules.dep` nor built into the kernel.
    #[error("unknown kernel modules {names:?} (neither in modules.dep nor built in) in {dir}")]
    Unknown {
        /// The modules.
        names: Vec<String>,
        /// The module directory.
        dir: PathBuf,
    },
    /// Modules could not be copied into the staging directory.
    #[error("cannot stage modules into {path}")]
    Stage {
        /// The staging directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// depmod failed on the staged modules.
    #[error("depmod failed")]
    Depmod(#[source] ToolError),
}

/// The module index of one kernel release (`<root>/lib/modules/<release>`).
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    /// The `lib/modules/<release>` directory.
    pub dir: PathBuf,
    /// The kernel release (`6.1.0-…-amd64`).
    pub release: String,
    /// Normalised module name -> path relative to `dir`.
    by_name: BTreeMap<String, String>,
    /// Relative path -> its dependencies' relative paths.
    deps: BTreeMap<String, Vec<String>>,
    /// Normalised module name -> soft dependency names.
    softdeps: BTreeMap<String, Vec<String>>,
    /// Exact (glob-free) alias -> module names.
    aliases: BTreeMap<String, Vec<String>>,
    builtin: BTreeSet<String>,
}

/// What a set of wanted names resolved to.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// Module files relative to the index directory, dependencies included.
    pub files: BTreeSet<String>,
    /// Wanted names that are built into the kernel.
    pub builtin: Vec<String>,
}

/// `ahci`, `virtio-gpu.ko` and `virtio_gpu` are the same module.
pub fn normalise(name: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// Runs `depmod -b <root> <release>` unless `modules.dep` exists there
/// (kernel packages ship without an index; their postinst builds it).
pub fn ensure_index(root: &Path, release: &str) -> Result<(), ModulesError> {
    if root
        .join("lib/modules")
        .join(release)
        .join("modules.dep")
        .exists()
    {
        return Ok(());
    }
    tools::run(
        Command::new("depmod").arg("-b").arg(root).arg(release),
        "kmod",
    )
    .map(|_| ())
    .map_err(ModulesError::Depmod)
}

impl ModuleIndex {
    /// Reads the index of `<root>/lib/modules/<release>`.
    pub fn open(root: &Path, release: &str) -> Result<Self, ModulesError> {
        let dir = root.join("lib/modules").join(release);
        let read = |name: &str| {
            let p = dir.join(name);
            fs::read_to_string(&p).map_err(|source| ModulesError::Read { path: p, source })
        };
        let mut by_name = BTreeMap::new();
        let mut deps = BTreeMap::new();
        for line in read("modules.dep")?.lines() {
            let Some((path, rest)) = line.split_once(':') else {
                continue;
            };
            by_name.insert(normalise(path), path.to_string());
            deps.insert(
                path.to_string(),
                rest.split_whitespace().map(str::to_string).collect(),
            );
        }
        let mut softdeps: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if let Ok(text) = read("modules.softdep") {
            for line in text.lines() {
                let mut words = line.split_whitespace();
                if words.next() != Some("softdep") {
                    continue;
                }
                let Some(module) = words.next() else { continue };
                let entry = softdeps.entry(normalise(module)).or_default();
                entry.extend(words.filter(|w| !w.ends_with(':')).map(str::to_string));
            }
        }
        let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if let Ok(text) = read("modules.alias") {
            for line in text.lines() {
                let mut words = line.split_whitespace();
                if let (Some("alias"), Some(alias), Some(module)) =
                    (words.next(), words.next(), words.next())
                    && !alias.contains(['*', '?', '['])
                {
                    aliases
                        .entry(alias.to_string())
                        .or_default()
                        .push(normalise(module));
                }
            }
        }
        let builtin = read("modules.builtin")
            .map(|t| t.lines().map(normalise).collect())
            .unwrap_or_default();
        Ok(Self {
            dir,
            release: release.to_string(),
            by_name,
            deps,
            softdeps,
            aliases,
            builtin,
        })
    }

    /// Module paths (relative) under the directory `prefix` (e.g.
    /// `kernel/drivers/ata`).
    pub fn under(&self, prefix: &str) -> Vec<String> {
        let prefix = format!("{}/", prefix.trim_end_matches('/'));
        self.deps
            .keys()
            .filter(|p| p.starts_with(&prefix))
            .cloned()
            .collect()
    }

    /// Resolves `wanted` (module names, or `dir:<path>` for every module
    /// below a directory) to files with all their dependencies.
    pub fn resolve<S: AsRef<str>>(&self, wanted: &[S]) -> Result<Resolved, ModulesError> {
        let mut out = Resolved::default();
        let mut unknown = Vec::new();
        let mut stack: Vec<String> = Vec::new();
        for w in wanted {
            let w = w.as_ref();
            if let Some(dir) = w.strip_prefix("dir:") {
                let files = self.under(dir);
                if files.is_empty() {
                    unknown.push(w.to_string());
                }
                stack.extend(files);
                continue;
            }
            let n = normalise(w);
            match self.by_name.get(&n) {
                Some(p) => stack.push(p.clone()),
                None if self.builtin.contains(&n) => out.builtin.push(w.to_string()),
                None => unknown.push(w.to_string()),
            }
        }
        if !unknown.is_empty() {
            return Err(ModulesError::Unknown {
                names: unknown,
                dir: self.dir.clone(),
            });
        }
        while let Some(path) = stack.pop() {
            if !out.files.insert(path.clone()) {
                continue;
            }
            if let Some(d) = self.deps.get(&path) {
                stack.extend(d.iter().cloned());
            }
            for soft in self.softdeps.get(&normalise(&path)).into_iter().flatten() {
                let soft = soft.strip_prefix("platform:").unwrap_or(soft);
                let mut names = vec![normalise(soft)];
                names.extend(self.aliases.get(soft).into_iter().flatten().cloned());
                for n in names {
                    if let Some(p) = self.by_name.get(&n) {
                        stack.push(p.clone());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Copies `files` and the kernel's `modules.order`, `modules.builtin`
    /// and `modules.builtin.modinfo` into `<root>/lib/modules/<release>/`,
    /// then runs `depmod -b <root> <release>` to write the index for exactly
    /// these modules. Returns the staged directory.
    pub fn stage(&self, files: &BTreeSet<String>, root: &Path) -> Result<PathBuf, ModulesError> {
        let out = root.join("lib/modules").join(&self.release);
        let serr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ModulesError::Stage { path, source }
        };
        if out.exists() {
            fs::remove_dir_all(&out).map_err(serr(&out))?;
        }
        fs::create_dir_all(&out).map_err(serr(&out))?;
        for rel in files {
            let dst = out.join(rel);
            if let Some(parent) = dst.parent() {
                fs::create_dir_all(parent).map_err(serr(parent))?;
            }
            fs::copy(self.dir.join(rel), &dst).map_err(serr(&dst))?;
        }
        for meta in [
            "modules.order",
            "modules.builtin",
            "modules.builtin.modinfo",
        ] {
            let src = self.dir.join(meta);
            if src.exists() {
                fs::copy(&src, out.join(meta)).map_err(serr(&out.join(meta)))?;
            }
        }
        tools::run(
            Command::new("depmod")
                .arg("-b")
                .arg(root)
                .arg(&self.release),
            "kmod",
        )
        .map_err(ModulesError::Depmod)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> ModuleIndex {
        let release = fs::read_dir("/lib/modules")
            .expect("no /lib/modules: install linux-image-amd64")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .max()
            .expect("no kernel modules installed");
        ModuleIndex::open(Path::new("/"), &release).unwrap()
    }

    #[test]
    fn dependencies_and_softdeps_are_followed() {
        let idx = host();
        let r = idx.resolve(&["ahci", "ext4", "virtio-gpu"]).unwrap();
        let names: BTreeSet<String> = r.files.iter().map(|f| normalise(f)).collect();
        for n in [
            "ahci",
            "libahci",
            "libata",
            "ext4",
            "jbd2",
            "mbcache",
            "virtio_gpu",
            "drm",
        ] {
            assert!(names.contains(n), "{n} missing from {names:?}");
        }
    }

    #[test]
    fn an_unknown_name_is_an_error() {
        let err = host().resolve(&["ahci", "no_such_driver_xyz"]).unwrap_err();
        assert!(
            matches!(err, ModulesError::Unknown { ref names, .. } if names == &["no_such_driver_xyz"])
        );
    }

    #[test]
    fn staged_tree_gets_a_fresh_index() {
        let idx = host();
        let r = idx
            .resolve(&["virtio_blk", "dir:kernel/drivers/ata"])
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = idx.stage(&r.files, tmp.path()).unwrap();
        let dep = fs::read_to_string(out.join("modules.dep")).unwrap();
        assert!(dep.contains("virtio_blk.ko"));
        assert!(!dep.contains("ext4.ko"), "only staged modules are indexed");
        let alias = fs::read_to_string(out.join("modules.alias")).unwrap();
        assert!(
            alias.contains("virtio:d00000002v*"),
            "virtio-blk modalias missing"
        );
    }
}
