//! Debian packages fetched by name into a cache directory: `apt-get
//! download` (the candidate version of the host's apt sources), checked
//! against the SHA-256 apt publishes, unpacked with `dpkg-deb -x`.
//!
//! Protocol: `apt-get download --print-uris <pkg>` names the exact file and
//! its hash; a cached file with that name and hash is reused, anything else
//! is downloaded again. Each package unpacks once into
//! `<cache>/root/<file stem>/` (a `.complete` stamp marks a finished unpack).
//!
//! Limits: needs a working apt index (`apt-get update`); one architecture
//! (the host's).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::tools::{self, ToolError};

/// Why a Debian package could not be fetched or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    /// apt does not know the package; holds its name.
    #[error("apt does not know package {0} (run apt-get update, check the name)")]
    Unknown(String),
    /// apt-get download or dpkg-deb failed.
    #[error("cannot fetch package {package}")]
    Tool {
        /// The package.
        package: String,
        /// What failed.
        #[source]
        source: ToolError,
    },
    /// A downloaded file's SHA-256 differs from apt's.
    #[error("downloaded {file} does not match apt's SHA-256 (got {got}, want {want})")]
    Hash {
        /// The file.
        file: PathBuf,
        /// The SHA-256 it has.
        got: String,
        /// The SHA-256 apt lists.
        want: String,
    },
    /// The cache directory could not be made or written.
    #[error("cannot use the cache directory {path}")]
    Cache {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// One fetched and unpacked package.
#[derive(Debug, Clone, Serialize)]
pub struct Deb {
    /// The package's name.
    pub package: String,
    /// The version fetched.
    pub version: String,
    /// Its architecture (`amd64`, `all`).
    pub architecture: String,
    /// The `.deb` file in the cache.
    pub file: PathBuf,
    /// The file's SHA-256 (checked against apt's).
    pub sha256: String,
    /// Where it is unpacked (a filesystem root).
    pub root: PathBuf,
}

/// The SHA-256 of a file, with `sha256sum` (coreutils).
pub fn sha256_file(path: &Path) -> Result<String, ToolError> {
    let out = tools::run(Command::new("sha256sum").arg(path), "coreutils")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string())
}

/// The package a virtual/meta package depends on first, e.g.
/// `linux-image-amd64` -> `linux-image-6.1.0-56-amd64`.
pub fn first_dependency(package: &str) -> Result<String, DebError> {
    let out = tools::run(Command::new("apt-cache").args(["depends", package]), "apt").map_err(
        |source| DebError::Tool {
            package: package.to_string(),
            source,
        },
    )?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Depends: ")
                .map(|d| d.trim().to_string())
        })
        .ok_or_else(|| DebError::Unknown(package.to_string()))
}

/// Fetches (or reuses) and unpacks `package` below `cache`.
pub fn fetch(cache: &Path, package: &str) -> Result<Deb, DebError> {
    let cerr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DebError::Cache { path, source }
    };
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).map_err(cerr(&debs))?;
    let terr = |source| DebError::Tool {
        package: package.to_string(),
        source,
    };
    let uris = tools::run(
        Command::new("apt-get").args(["download", "--print-uris", package]),
        "apt",
    )
    .map_err(terr)?;
    let text = String::from_utf8_lossy(&uris.stdout);
    // 'URL' FILE SIZE SHA256:HEX
    let line = text
        .lines()
        .find(|l| l.starts_with('\''))
        .ok_or_else(|| DebError::Unknown(package.into()))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let (Some(name), Some(hash)) = (words.get(1), words.get(3)) else {
        return Err(DebError::Unknown(package.to_string()));
    };
    let want = hash.strip_prefix("SHA256:").unwrap_or(hash).to_lowercase();
    let file = debs.join(name);
    let cached = file.exists() && sha256_file(&file).map_err(terr)? == want;
    if !cached {
        tools::run(
            Command::new("apt-get")
                .args(["download", "-q", package])
                .current_dir(&debs),
            "apt",
        )
        .map_err(terr)?;
        let got = sha256_file(&file).map_err(terr)?;
        if got != want {
            return Err(DebError::Hash { file, got, want });
        }
    }
    let field = |f: &str| -> Result<String, DebError> {
        let out = tools::run(Command::new("dpkg-deb").arg("-f").arg(&file).arg(f), "dpkg")
            .map_err(terr)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let version = field("Version")?;
    let architecture = field("Architecture")?;
    let stem = name.trim_end_matches(".deb");
    let root = cache.join("root").join(stem);
    let stamp = cache.join("root").join(format!("{stem}.complete"));
    if !stamp.exists() || !cached {
        if root.exists() {
            fs::remove_dir_all(&root).map_err(cerr(&root))?;
        }
        fs::create_dir_all(&root).map_err(cerr(&root))?;
        tools::run(
            Command::new("dpkg-deb").arg("-x").arg(&file).arg(&root),
            "dpkg",
        )
        .map_err(terr)?;
        fs::write(&stamp, &want).map_err(cerr(&stamp))?;
    }
    Ok(Deb {
        package: package.to_string(),
        version,
        architecture,
        file,
        sha256: want,
        root,
    })
}
