//! Atomic file replacement with the previous generation kept.
//!
//! Protocol for `write_atomic(path, bytes)`:
//! 1. write `path.tmp`, fsync it;
//! 2. if `path` exists, rename it to `path.prev` (replacing an older
//!    `.prev`);
//! 3. rename `path.tmp` to `path`;
//! 4. fsync the directory so both renames are durable.
//!
//! A crash between 2 and 3 leaves no `path` but a good `path.prev`:
//! [`read_with_fallback`] reads `path` and falls back to `path.prev`, so a
//! reader always finds the newest complete generation.
//!
//! Limits: one writer per file (rayosd owns its files); not for files larger
//! than memory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Why a file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum AtomicError {
    /// Writing, syncing or renaming failed.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Reading failed (other than the file being missing).
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Which generation of a file a read returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// The file itself.
    Current,
    /// Its previous generation (`.prev`).
    Previous,
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// The name the previous generation of `path` is kept under.
pub fn previous_path(path: &Path) -> PathBuf {
    sibling(path, ".prev")
}

/// Replaces `path` with `bytes` atomically and keeps the old content as
/// `<path>.prev`. A new file gets the default mode (0666 less the umask).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AtomicError> {
    write_atomic_mode(path, bytes, 0o666)
}

/// [`write_atomic`] for a file that must be created with `mode` (less the
/// umask), e.g. 0600 for a file under a VM's directory, which is root's
/// alone: the file never exists with wider permissions, not even briefly.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AtomicError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |source| AtomicError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = sibling(path, ".tmp");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(err)?;
        // A `.tmp` left over by a crash keeps its old mode through `open`.
        let now = f.metadata().map_err(err)?.permissions().mode() & 0o7777;
        if now & !mode != 0 {
            f.set_permissions(fs::Permissions::from_mode(now & mode))
                .map_err(err)?;
        }
        f.write_all(bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    if path.exists() {
        fs::rename(path, previous_path(path)).map_err(err)?;
    }
    fs::rename(&tmp, path).map_err(err)?;
    // fsync the directory so the renames point to the new version even if we
    // crash right after this.
    File::open(&dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

/// Reads `path`, or its previous generation when `path` is missing.
///
/// A present-but-unusable current file (it does not parse) is the caller's
/// business: use [`read_generation`] to read `.prev` explicitly.
pub fn read_with_fallback(path: &Path) -> Result<(Vec<u8>, Generation), AtomicError> {
    match fs::read(path) {
        Ok(b) => Ok((b, Generation::Current)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let prev = previous_path(path);
            fs::read(&prev)
                .map(|b| (b, Generation::Previous))
                .map_err(|source| AtomicError::Read {
                    path: path.to_path_buf(),
                    source,
                })
        }
        Err(source) => Err(AtomicError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Reads one generation of `path`.
pub fn read_generation(path: &Path, generation: Generation) -> Result<Vec<u8>, AtomicError> {
    let p = match generation {
        Generation::Current => path.to_path_buf(),
        Generation::Previous => previous_path(path),
    };
    fs::read(&p).map_err(|source| AtomicError::Read { path: p, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_mode_makes_the_file_with_that_mode() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("meta.json");
        // A `.tmp` left by a crash, readable by all.
        fs::write(sibling(&p, ".tmp"), b"old").unwrap();
        fs::set_permissions(sibling(&p, ".tmp"), fs::Permissions::from_mode(0o644)).unwrap();
        write_atomic_mode(&p, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn keeps_previous_generation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("registry.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read(previous_path(&p)).unwrap(), b"one");
        assert!(!sibling(&p, ".tmp").exists());
    }

    #[test]
    fn falls_back_when_current_missing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.toml");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        // a crash between the two renames leaves only .prev
        fs::remove_file(&p).unwrap();
        let (b, g) = read_with_fallback(&p).unwrap();
        assert_eq!((b.as_slice(), g), (&b"one"[..], Generation::Previous));
    }

    #[test]
    fn missing_everything_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(read_with_fallback(&d.path().join("nope")).is_err());
    }
}
