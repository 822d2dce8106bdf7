//! FAT images built without loop devices or root: `mkfs.fat` formats an
//! image file, mtools (`mmd`, `mcopy`) fills it. `fsck.fat -n` checks one.
//!
//! The image is sized from its contents (files rounded up to 4 KiB clusters,
//! plus 5 % and 4 MiB of slack for FAT tables and directories) unless a size
//! is given; mkfs.fat picks FAT12/16/32 for the size, all of which UEFI
//! firmware reads. Labels are at most 11 characters (a FAT limit).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::tools::{self, ToolError};

/// Why a FAT image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FatError {
    /// The volume label is longer than 11 characters or not ASCII; holds it.
    #[error("FAT label {0:?} is longer than 11 characters or not ASCII")]
    BadLabel(String),
    /// A destination path that is absolute or has `.` or `..`; holds it.
    #[error("bad FAT path {0:?}: use a relative path without . or ..")]
    BadPath(String),
    /// A host file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// mkfs.fat or mtools failed.
    #[error("cannot build the FAT image {path}")]
    Tool {
        /// The image.
        path: PathBuf,
        /// What failed.
        #[source]
        source: ToolError,
    },
    /// The image file could not be created.
    #[error("cannot create {path}")]
    Create {
        /// The image.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The files of a FAT filesystem: destination path (with `/`) -> host file.
#[derive(Debug, Clone, Default)]
pub struct FatTree {
    /// Destination path (with `/`, relative) and host file of every file, in
    /// the order added.
    pub files: Vec<(String, PathBuf)>,
}

impl FatTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds host file `host` at `dest` in the image.
    pub fn add(&mut self, dest: &str, host: impl Into<PathBuf>) -> &mut Self {
        self.files
            .push((dest.trim_start_matches('/').to_string(), host.into()));
        self
    }

    /// Sum of the file sizes rounded up to 4 KiB.
    pub fn content_bytes(&self) -> Result<u64, FatError> {
        let mut total = 0;
        for (_, host) in &self.files {
            let len = fs::metadata(host)
                .map_err(|source| FatError::Read {
                    path: host.clone(),
                    source,
                })?
                .len();
            total += len.div_ceil(4096) * 4096;
        }
        Ok(total)
    }

    /// The image size `build` uses when none is given: contents plus slack,
    /// rounded up to 1 MiB.
    pub fn auto_size(&self) -> Result<u64, FatError> {
        let c = self.content_bytes()?;
        let size = c + c / 20 + (4 << 20);
        Ok(size.div_ceil(1 << 20) << 20)
    }
}

/// Builds a FAT image at `out` (replaced) holding `tree`; returns its size.
pub fn build(out: &Path, label: &str, tree: &FatTree, size: Option<u64>) -> Result<u64, FatError> {
    if label.len() > 11 || !label.is_ascii() {
        return Err(FatError::BadLabel(label.to_string()));
    }
    let size = match size {
        Some(s) => s.div_ceil(1 << 20) << 20,
        None => tree.auto_size()?,
    };
    let terr = |source| FatError::Tool {
        path: out.to_path_buf(),
        source,
    };
    match fs::remove_file(out) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(FatError::Create {
                path: out.to_path_buf(),
                source,
            });
        }
    }
    // --invariant fixes the volume id and timestamps: the same inputs give the same image.
    tools::run(
        Command::new("mkfs.fat")
            .arg("-C")
            .arg("--invariant")
            .args(["-n", label])
            .arg(out)
            .arg((size / 1024).to_string()),
        "dosfstools",
    )
    .map_err(terr)?;
    let mut dirs = BTreeSet::new();
    for (dest, _) in &tree.files {
        if dest.is_empty()
            || dest
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(FatError::BadPath(dest.clone()));
        }
        let mut parent = String::new();
        let comps: Vec<&str> = dest.split('/').collect();
        for comp in &comps[..comps.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            dirs.insert(parent.clone());
        }
    }
    // BTreeSet order puts parents before children.
    for dir in &dirs {
        tools::run(
            Command::new("mmd")
                .arg("-i")
                .arg(out)
                .arg(format!("::/{dir}")),
            "mtools",
        )
        .map_err(terr)?;
    }
    for (dest, host) in &tree.files {
        tools::run(
            Command::new("mcopy")
                .arg("-o")
                .arg("-i")
                .arg(out)
                .arg(host)
                .arg(format!("::/{dest}")),
            "mtools",
        )
        .map_err(terr)?;
    }
    Ok(size)
}

/// Checks the FAT image with `fsck.fat -n` (read-only).
pub fn check(image: &Path) -> Result<(), FatError> {
    tools::run(Command::new("fsck.fat").arg("-n").arg(image), "dosfstools")
        .map(|_| ())
        .map_err(|source| FatError::Tool {
            path: image.to_path_buf(),
            source,
        })
}

/// Reads `path` (with `/`) out of a FAT image into `dest` with mtools.
pub fn extract(image: &Path, path: &str, dest: &Path) -> Result<(), FatError> {
    tools::run(
        Command::new("mcopy")
            .arg("-n")
            .arg("-i")
            .arg(image)
            .arg(format!("::/{}", path.trim_start_matches('/')))
            .arg(dest),
        "mtools",
    )
    .map(|_| ())
    .map_err(|source| FatError::Tool {
        path: image.to_path_buf(),
        source,
    })
}
