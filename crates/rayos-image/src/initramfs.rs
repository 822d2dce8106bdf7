//! The initramfs builder: an in-memory tree of directories, files (bytes or
//! host paths, read only when written) and symlinks, written as one cpio newc
//! archive, optionally compressed with the `zstd` or `gzip` tool.
//!
//! Paths are archive paths without a leading `/` (a leading `/` is accepted
//! and dropped). Adding an entry creates missing parent directories (0755).
//! Adding an entry below a symlink or a file is an error, because the kernel
//! would unpack it somewhere else or not at all. Re-adding a path replaces it.
//!
//! ELF programs are copied with their shared libraries and the dynamic loader,
//! found by running `ldd` on the host (the libraries must be installed on the
//! build host; they are placed at the paths `ldd` reports).
//!
//! Limits: no device nodes (devtmpfs provides them), no hard links.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cpio::{CpioError, CpioWriter};

/// Why an initramfs could not be built.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A path that cannot be in the archive.
    #[error("bad archive path {path:?}: {why}")]
    BadPath {
        /// The path.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A path's parent is already a file or link in the archive.
    #[error("cannot add {path}: {parent} is already a {kind} in the archive")]
    ParentNotDir {
        /// The path being added.
        path: String,
        /// Its parent.
        parent: String,
        /// What the parent is (`file`, `symlink`).
        kind: &'static str,
    },
    /// A file added where the archive has a directory.
    #[error("cannot add {path}: it is already a directory in the archive")]
    IsDir {
        /// The path.
        path: String,
    },
    /// A host file could not be read.
    #[error("cannot read {path}")]
    ReadHost {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// ldd could not be run.
    #[error("cannot run ldd on {path} (is libc-bin installed?)")]
    RunLdd {
        /// The binary ldd was run on.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A library a binary needs cannot be found.
    #[error("ldd cannot resolve {lib} needed by {path}: install the package that provides it")]
    MissingLib {
        /// The binary.
        path: PathBuf,
        /// The library.
        lib: String,
    },
    /// The archive could not be written to its file.
    #[error("cannot write the initramfs to {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Writing an entry failed.
    #[error("cannot write the initramfs archive")]
    Archive(#[from] CpioError),
    /// The compressor could not be started.
    #[error("cannot run the compressor {tool} (install it: scripts/install-deps.sh)")]
    RunCompressor {
        /// The compressor.
        tool: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The compressor failed.
    #[error("the compressor {tool} failed: {status}")]
    Compressor {
        /// The compressor.
        tool: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
}

/// How the archive is compressed. The kernel must support it
/// (Debian's has CONFIG_RD_ZSTD and CONFIG_RD_GZIP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Uncompressed.
    None,
    /// `zstd -<level>` (1..=19); 19 is the smallest and slowest.
    Zstd(u8),
    /// `gzip -9`.
    Gzip,
    /// `lz4 -l -9`: the legacy frame format, the only one the kernel's
    /// initramfs unpacker reads; about 35 % bigger than zstd -19, but
    /// unpacked twice as fast at boot (docs/media.md).
    Lz4,
}

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum Content {
    /// These bytes.
    Bytes(Vec<u8>),
    /// The bytes of this host file.
    Host(PathBuf),
}

#[derive(Debug, Clone)]
enum Entry {
    Dir { perm: u32 },
    File { perm: u32, content: Content },
    Symlink { target: String },
}

impl Entry {
    fn kind(&self) -> &'static str {
        match self {
            Entry::Dir { .. } => "directory",
            Entry::File { .. } => "file",
            Entry::Symlink { .. } => "symlink",
        }
    }
}

/// An initramfs under construction. See the module docs for the path rules.
#[derive(Debug, Clone, Default)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
    usr_merged: bool,
}

/// Top-level directories that are links into `/usr` on a merged-/usr system.
const MERGED: [&str; 4] = ["bin", "sbin", "lib", "lib64"];

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// An archive laid out like Debian 12 (merged /usr): `bin`, `sbin`,
    /// `lib` and `lib64` are symlinks into `usr/`, and every path added
    /// below them is stored below `usr/` instead, so `/lib/x/libc.so.6`
    /// (as `ldd` reports it) and `/usr/lib/x/libc.so.6` are one file.
    pub fn usr_merged() -> Self {
        let mut ird = Self::default();
        for top in MERGED {
            ird.entries
                .insert(format!("usr/{top}"), Entry::Dir { perm: 0o755 });
            ird.entries.insert(
                top.to_string(),
                Entry::Symlink {
                    target: format!("usr/{top}"),
                },
            );
        }
        ird.entries.insert("usr".into(), Entry::Dir { perm: 0o755 });
        ird.usr_merged = true;
        ird
    }

    /// A directory with permission bits `perm`.
    pub fn dir(&mut self, path: &str, perm: u32) -> Result<&mut Self, InitramfsError> {
        let path = self.prepare(path)?;
        self.entries.insert(path, Entry::Dir { perm });
        Ok(self)
    }

    /// A file holding `bytes`.
    pub fn file(
        &mut self,
        path: &str,
        perm: u32,
        bytes: impl Into<Vec<u8>>,
    ) -> Result<&mut Self, InitramfsError> {
        self.put_file(path, perm, Content::Bytes(bytes.into()))
    }

    /// A copy of the host file `host` (symlinks followed), with its
    /// permission bits unless `perm` is given. Read when the archive is
    /// written; checked for existence now.
    pub fn copy(
        &mut self,
        path: &str,
        host: &Path,
        perm: Option<u32>,
    ) -> Result<&mut Self, InitramfsError> {
        let meta = fs::metadata(host).map_err(|source| InitramfsError::ReadHost {
            path: host.to_path_buf(),
            source,
        })?;
        let perm = perm.unwrap_or(meta.permissions().mode() & 0o7777);
        self.put_file(path, perm, Content::Host(host.to_path_buf()))
    }

    /// A symbolic link at `path` pointing at `target` (stored verbatim).
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, InitramfsError> {
        let path = self.prepare(path)?;
        if matches!(self.entries.get(&path), Some(Entry::Dir { .. })) {
            return Err(InitramfsError::IsDir { path });
        }
        self.entries.insert(
            path,
            Entry::Symlink {
                target: target.to_string(),
            },
        );
        Ok(self)
    }

    /// The host directory `host` copied recursively to `path`: files,
    /// directories and symlinks (kept as links).
    pub fn copy_tree(&mut self, path: &str, host: &Path) -> Result<&mut Self, InitramfsError> {
        let meta = fs::symlink_metadata(host).map_err(|source| InitramfsError::ReadHost {
            path: host.to_path_buf(),
            source,
        })?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(host).map_err(|source| InitramfsError::ReadHost {
                path: host.to_path_buf(),
                source,
            })?;
            self.symlink(path, &target.to_string_lossy())?;
        } else if ft.is_dir() {
            self.dir(path, meta.permissions().mode() & 0o7777)?;
            let mut children: Vec<_> = fs::read_dir(host)
                .map_err(|source| InitramfsError::ReadHost {
                    path: host.to_path_buf(),
                    source,
                })?
                .collect::<Result<_, _>>()
                .map_err(|source| InitramfsError::ReadHost {
                    path: host.to_path_buf(),
                    source,
                })?;
            children.sort_by_key(|e| e.file_name());
            for child in children {
                let name = child.file_name();
                let sub = format!("{}/{}", path.trim_end_matches('/'), name.to_string_lossy());
                self.copy_tree(&sub, &child.path())?;
            }
        } else if ft.is_file() {
            self.copy(path, host, None)?;
        }
        // Sockets, fifos and device nodes are skipped: devtmpfs provides devices.
        Ok(self)
    }

    /// The ELF program `host` at `path`, plus every shared library and the
    /// dynamic loader it needs (found with `ldd`), at the paths `ldd` reports.
    /// Returns the host paths of the libraries added.
    pub fn elf(&mut self, path: &str, host: &Path) -> Result<Vec<PathBuf>, InitramfsError> {
        self.elf_from(path, host, &[])
    }

    /// Like [`Initramfs::elf`], for a program unpacked from packages into
    /// directories `roots` (each a filesystem root, e.g. a `dpkg-deb -x`
    /// target): libraries are looked up in the roots' library directories
    /// first, then on the host, and a library found in a root is stored at
    /// its path relative to that root.
    pub fn elf_from(
        &mut self,
        path: &str,
        host: &Path,
        roots: &[PathBuf],
    ) -> Result<Vec<PathBuf>, InitramfsError> {
        self.copy(path, host, None)?;
        let lib_dirs = library_dirs(roots);
        let libs = shared_libraries_in(host, &lib_dirs)?;
        for lib in &libs {
            let real = fs::canonicalize(lib).map_err(|source| InitramfsError::ReadHost {
                path: lib.clone(),
                source,
            })?;
            let dest = roots
                .iter()
                .find_map(|r| lib.strip_prefix(r).ok())
                .unwrap_or(lib);
            self.copy(&dest.to_string_lossy(), &real, Some(0o755))?;
        }
        Ok(libs)
    }

    /// Removes `path` and everything below it; returns whether it was there.
    pub fn remove(&mut self, path: &str) -> bool {
        let key = self.merged(path.trim_start_matches('/').trim_end_matches('/'));
        let prefix = format!("{key}/");
        let before = self.entries.len();
        self.entries
            .retain(|k, _| *k != key && !k.starts_with(&prefix));
        self.entries.len() != before
    }

    /// Whether `path` is in the archive.
    pub fn contains(&self, path: &str) -> bool {
        self.entries
            .contains_key(&self.merged(path.trim_start_matches('/')))
    }

    /// `path` as stored: below `usr/` when it starts in a merged directory.
    fn merged(&self, path: &str) -> String {
        if self.usr_merged
            && let Some((top, _)) = path.split_once('/')
            && MERGED.contains(&top)
        {
            return format!("usr/{path}");
        }
        path.to_string()
    }

    /// Archive paths in write order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Writes the uncompressed cpio archive; returns its size.
    pub fn write_cpio<W: Write>(&self, out: W) -> Result<u64, InitramfsError> {
        let mut w = CpioWriter::new(out);
        // BTreeMap order puts every parent before its children, because a
        // parent's path is a prefix of theirs.
        for (path, entry) in &self.entries {
            match entry {
                Entry::Dir { perm } => w.dir(path, *perm)?,
                Entry::Symlink { target } => w.symlink(path, target)?,
                Entry::File {
                    perm,
                    content: Content::Bytes(b),
                } => w.file(path, *perm, b.len() as u64, &mut b.as_slice())?,
                Entry::File {
                    perm,
                    content: Content::Host(host),
                } => {
                    let read_err = |source| InitramfsError::ReadHost {
                        path: host.clone(),
                        source,
                    };
                    let mut f = fs::File::open(host).map_err(read_err)?;
                    let size = f.metadata().map_err(read_err)?.len();
                    w.file(path, *perm, size, &mut f)?
                }
            }
        }
        let (_, size) = w.finish()?;
        Ok(size)
    }

    /// Writes the archive to `out`, compressed; returns the file's size.
    pub fn write(&self, out: &Path, compression: Compression) -> Result<u64, InitramfsError> {
        let werr = |source| InitramfsError::Write {
            path: out.to_path_buf(),
            source,
        };
        let file = fs::File::create(out).map_err(werr)?;
        let (tool, args): (&'static str, Vec<String>) = match compression {
            Compression::None => {
                let mut bw = BufWriter::new(file);
                self.write_cpio(&mut bw)?;
                bw.flush().map_err(werr)?;
                return fs::metadata(out).map(|m| m.len()).map_err(werr);
            }
            Compression::Zstd(level) => {
                let level = level.clamp(1, 19);
                (
                    "zstd",
                    vec!["-q".into(), "-T0".into(), format!("-{level}"), "-c".into()],
                )
            }
            Compression::Gzip => ("gzip", vec!["-n".into(), "-9".into(), "-c".into()]),
            Compression::Lz4 => (
                "lz4",
                vec!["-l".into(), "-9".into(), "-q".into(), "-c".into()],
            ),
        };
        let mut child = Command::new(tool)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(file))
            .spawn()
            .map_err(|source| InitramfsError::RunCompressor { tool, source })?;
        let result = match child.stdin.take() {
            Some(stdin) => {
                let mut bw = BufWriter::with_capacity(1 << 20, stdin);
                self.write_cpio(&mut bw).and_then(|_| {
                    bw.flush().map_err(|source| InitramfsError::Write {
                        path: out.to_path_buf(),
                        source,
                    })
                })
            }
            None => Ok(()),
        };
        // Always reap the compressor, even when archiving failed half way.
        let status = child
            .wait()
            .map_err(|source| InitramfsError::RunCompressor { tool, source })?;
        result?;
        if !status.success() {
            return Err(InitramfsError::Compressor { tool, status });
        }
        fs::metadata(out).map(|m| m.len()).map_err(werr)
    }

    fn put_file(
        &mut self,
        path: &str,
        perm: u32,
        content: Content,
    ) -> Result<&mut Self, InitramfsError> {
        let path = self.prepare(path)?;
        if matches!(self.entries.get(&path), Some(Entry::Dir { .. })) {
            return Err(InitramfsError::IsDir { path });
        }
        self.entries.insert(path, Entry::File { perm, content });
        Ok(self)
    }

    /// Validates `path`, creates its missing parents, returns its key.
    fn prepare(&mut self, path: &str) -> Result<String, InitramfsError> {
        let merged = self.merged(path.trim_start_matches('/').trim_end_matches('/'));
        let clean = merged.as_str();
        let bad = |why| InitramfsError::BadPath {
            path: path.to_string(),
            why,
        };
        if clean.is_empty() {
            return Err(bad("empty"));
        }
        if clean.as_bytes().contains(&0) {
            return Err(bad("contains a NUL byte"));
        }
        for comp in clean.split('/') {
            match comp {
                "" => return Err(bad("empty component")),
                "." | ".." => return Err(bad("contains . or ..")),
                _ => {}
            }
        }
        let mut idx = 0;
        while let Some(pos) = clean[idx..].find('/') {
            let parent = &clean[..idx + pos];
            match self.entries.get(parent) {
                None => {
                    self.entries
                        .insert(parent.to_string(), Entry::Dir { perm: 0o755 });
                }
                Some(Entry::Dir { .. }) => {}
                Some(other) => {
                    return Err(InitramfsError::ParentNotDir {
                        path: clean.to_string(),
                        parent: parent.to_string(),
                        kind: other.kind(),
                    });
                }
            }
            idx += pos + 1;
        }
        Ok(clean.to_string())
    }
}

/// The shared libraries and dynamic loader `ldd` lists for `elf`; empty for a
/// static program.
pub fn shared_libraries(elf: &Path) -> Result<Vec<PathBuf>, InitramfsError> {
    shared_libraries_in(elf, &[])
}

/// The directories holding shared libraries below the filesystem `roots`
/// (`lib/x86_64-linux-gnu`, `usr/lib/x86_64-linux-gnu` and their subdirectories).
pub fn library_dirs(roots: &[PathBuf]) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        out.push(dir.to_path_buf());
        let mut subs: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        subs.sort();
        for s in subs {
            walk(&s, out);
        }
    }
    let mut dirs = Vec::new();
    for r in roots {
        for sub in ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"] {
            walk(&r.join(sub), &mut dirs);
        }
    }
    dirs
}

/// Like [`shared_libraries`], searching `lib_dirs` before the host's
/// directories (through `LD_LIBRARY_PATH`, which ld.so honours before RUNPATH).
pub fn shared_libraries_in(
    elf: &Path,
    lib_dirs: &[PathBuf],
) -> Result<Vec<PathBuf>, InitramfsError> {
    let mut cmd = Command::new("ldd");
    if !lib_dirs.is_empty() {
        let joined: Vec<String> = lib_dirs
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        cmd.env("LD_LIBRARY_PATH", joined.join(":"));
    }
    let out = cmd
        .arg(elf)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| InitramfsError::RunLdd {
            path: elf.to_path_buf(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // ldd exits 1 for "not a dynamic executable": nothing to copy.
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("statically linked") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(InitramfsError::RunLdd {
            path: elf.to_path_buf(),
            source: io::Error::other(err.trim().to_string()),
        });
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("statically linked") {
            continue;
        }
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)",
        // "/lib64/ld-linux-x86-64.so.2 (0x...)", "linux-vdso.so.1 (0x...)".
        let (name, rest) = match line.split_once(" => ") {
            Some((n, r)) => (n.trim(), r.trim()),
            None => (line, line),
        };
        if rest.starts_with("not found") {
            return Err(InitramfsError::MissingLib {
                path: elf.to_path_buf(),
                lib: name.into(),
            });
        }
        let path = rest.split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_created_and_written_first() {
        let mut ird = Initramfs::new();
        ird.file("/usr/bin/x", 0o755, b"x".to_vec()).unwrap();
        ird.symlink("init", "/usr/bin/x").unwrap();
        let paths: Vec<_> = ird.paths().collect();
        assert_eq!(paths, ["init", "usr", "usr/bin", "usr/bin/x"]);
    }

    #[test]
    fn merged_usr_stores_lib_paths_below_usr() {
        let mut ird = Initramfs::usr_merged();
        ird.file("/lib/x86_64-linux-gnu/libc.so.6", 0o755, b"c".to_vec())
            .unwrap();
        ird.file("usr/lib/x86_64-linux-gnu/libc.so.6", 0o755, b"c".to_vec())
            .unwrap();
        ird.file("sbin/mke2fs", 0o755, b"m".to_vec()).unwrap();
        assert!(ird.contains("lib/x86_64-linux-gnu/libc.so.6"));
        let paths: Vec<_> = ird.paths().collect();
        assert!(paths.contains(&"usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(paths.contains(&"usr/sbin/mke2fs"));
        assert!(!paths.iter().any(|p| p.starts_with("lib/")), "{paths:?}");
        let mut out = Vec::new();
        ird.write_cpio(&mut out).unwrap();
    }

    #[test]
    fn entries_below_a_symlink_or_file_are_refused() {
        let mut ird = Initramfs::new();
        ird.symlink("lib", "usr/lib").unwrap();
        assert!(matches!(
            ird.file("lib/libc.so.6", 0o755, Vec::new()),
            Err(InitramfsError::ParentNotDir { .. })
        ));
        assert!(matches!(
            ird.file("a/../b", 0o644, Vec::new()),
            Err(InitramfsError::BadPath { .. })
        ));
        ird.dir("etc", 0o755).unwrap();
        assert!(matches!(
            ird.file("etc", 0o644, Vec::new()),
            Err(InitramfsError::IsDir { .. })
        ));
    }

    #[test]
    fn ldd_finds_libc_and_the_loader_of_a_dynamic_program() {
        let libs = shared_libraries(Path::new("/bin/ls")).unwrap();
        assert!(
            libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        assert!(
            libs.iter()
                .any(|l| l.to_string_lossy().contains("ld-linux")),
            "{libs:?}"
        );
    }

    #[test]
    fn a_static_program_needs_no_libraries() {
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.exists(),
            "busybox-static is missing: run scripts/install-deps.sh"
        );
        assert!(shared_libraries(busybox).unwrap().is_empty());
    }
}
