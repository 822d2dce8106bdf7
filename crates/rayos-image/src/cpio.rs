//! A writer for the cpio "newc" format (SVR4 without CRC), the format the
//! Linux kernel unpacks as an initramfs.
//!
//! Protocol: every entry is a 110-byte ASCII header (`070701` and thirteen
//! 8-digit hex fields), the NUL-terminated name padded to 4 bytes, then the
//! data padded to 4 bytes; the archive ends with the entry `TRAILER!!!`.
//! Output is deterministic: uid/gid 0, mtime 0, inode numbers in write order.
//!
//! Limits: no hard links, files below 4 GiB (the size field is 32 bits);
//! of the device nodes only character devices (`dev/console`, which the
//! kernel opens for init before devtmpfs is mounted).

use std::io::{self, Write};

/// Mode bits of the entry kinds the writer emits.
pub const S_IFDIR: u32 = 0o040000;
/// Mode bits of a regular file.
pub const S_IFREG: u32 = 0o100000;
/// Mode bits of a symbolic link.
pub const S_IFLNK: u32 = 0o120000;
/// Mode bits of a character device.
pub const S_IFCHR: u32 = 0o020000;

/// Why an entry could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// Writing to the output failed.
    #[error("cannot write cpio entry {name}")]
    Write {
        /// The entry's name.
        name: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A file larger than newc can hold (4 GiB - 1).
    #[error("cpio entry {name} is {size} bytes; newc holds at most 4 GiB - 1")]
    TooLarge {
        /// The entry's name.
        name: String,
        /// Its size in bytes.
        size: u64,
    },
    /// A name with a NUL byte.
    #[error("cpio entry name {name:?} contains a NUL byte")]
    BadName {
        /// The name.
        name: String,
    },
}

/// Streams newc entries to `W`, counting the bytes written.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// A writer of an empty archive to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    /// A directory entry. `perm` holds only permission bits.
    pub fn dir(&mut self, name: &str, perm: u32) -> Result<(), CpioError> {
        self.header(name, S_IFDIR | (perm & 0o7777), 2, 0, (0, 0))?;
        self.pad(name)
    }

    /// A symbolic link; its data is the target path.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<(), CpioError> {
        self.header(name, S_IFLNK | 0o777, 1, target.len() as u64, (0, 0))?;
        self.raw(name, target.as_bytes())?;
        self.pad(name)
    }

    /// A character device node `major:minor` (`dev/console` is 5:1).
    pub fn char_dev(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.header(name, S_IFCHR | (perm & 0o7777), 1, 0, (major, minor))?;
        self.pad(name)
    }

    /// A regular file of exactly `size` bytes read from `data`.
    pub fn file(
        &mut self,
        name: &str,
        perm: u32,
        size: u64,
        data: &mut dyn io::Read,
    ) -> Result<(), CpioError> {
        if size > u64::from(u32::MAX) {
            return Err(CpioError::TooLarge {
                name: name.to_string(),
                size,
            });
        }
        self.header(name, S_IFREG | (perm & 0o7777), 1, size, (0, 0))?;
        let copied =
            io::copy(&mut io::Read::take(data, size), &mut self.out).map_err(|source| {
                CpioError::Write {
                    name: name.to_string(),
                    source,
                }
            })?;
        if copied != size {
            // The source shrank while being read: the header already promised
            // `size` bytes, so fail rather than emit a corrupt archive.
            return Err(CpioError::Write {
                name: name.to_string(),
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while archiving"),
            });
        }
        self.written += size;
        self.pad(name)
    }

    /// Writes the trailer and returns the sink and the archive's size.
    pub fn finish(mut self) -> Result<(W, u64), CpioError> {
        self.header("TRAILER!!!", 0, 1, 0, (0, 0))?;
        self.pad("TRAILER!!!")?;
        self.out.flush().map_err(|source| CpioError::Write {
            name: "TRAILER!!!".into(),
            source,
        })?;
        Ok((self.out, self.written))
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        size: u64,
        rdev: (u32, u32),
    ) -> Result<(), CpioError> {
        if name.as_bytes().contains(&0) {
            return Err(CpioError::BadName {
                name: name.to_string(),
            });
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let namesize = name.len() + 1;
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            namesize as u32,
            0,
        ];
        let mut head = String::with_capacity(110 + namesize);
        head.push_str("070701");
        for f in fields {
            head.push_str(&format!("{f:08X}"));
        }
        head.push_str(name);
        head.push('\0');
        self.raw(name, head.as_bytes())?;
        self.pad(name)
    }

    fn raw(&mut self, name: &str, bytes: &[u8]) -> Result<(), CpioError> {
        self.out
            .write_all(bytes)
            .map_err(|source| CpioError::Write {
                name: name.to_string(),
                source,
            })?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self, name: &str) -> Result<(), CpioError> {
        let rem = (4 - (self.written % 4) as usize) % 4;
        self.raw(name, &[0u8; 3][..rem])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_trailer_ends_archive() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("etc", 0o755).unwrap();
        w.file("etc/hostname", 0o644, 5, &mut &b"rayos"[..])
            .unwrap();
        w.symlink("init", "/usr/bin/rayos").unwrap();
        let (bytes, size) = w.finish().unwrap();
        assert_eq!(bytes.len() as u64, size);
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("etc/hostname\0"));
        assert!(text.contains("rayos"));
        assert!(text.contains("TRAILER!!!\0"));
    }

    #[test]
    fn a_character_device_carries_its_numbers_and_cpio_lists_it() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("dev", 0o755).unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        let (bytes, _) = w.finish().unwrap();
        // The second header: mode, then rdevmajor and rdevminor (fields 10
        // and 11 of 13, 8 hex digits each after the 6-byte magic).
        let at = bytes
            .windows(6)
            .enumerate()
            .filter(|(_, m)| *m == b"070701")
            .nth(1)
            .map(|(i, _)| i)
            .unwrap();
        let field = |n: usize| {
            let f = &bytes[at + 6 + 8 * n..at + 6 + 8 * (n + 1)];
            u32::from_str_radix(std::str::from_utf8(f).unwrap(), 16).unwrap()
        };
        assert_eq!(field(1), S_IFCHR | 0o600);
        assert_eq!((field(9), field(10)), (5, 1));
        // GNU cpio reads it back as a character device.
        let mut child = std::process::Command::new("cpio")
            .args(["-tv", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("cpio is needed: scripts/install-deps.sh");
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let listing = child.wait_with_output().unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        let console = listing
            .lines()
            .find(|l| l.ends_with("dev/console"))
            .unwrap();
        assert!(console.starts_with("crw-------"), "{listing}");
        assert!(console.contains("5,"), "{listing}");
    }

    #[test]
    fn a_short_source_is_an_error() {
        let mut w = CpioWriter::new(Vec::new());
        let err = w.file("f", 0o644, 10, &mut &b"abc"[..]).unwrap_err();
        assert!(matches!(err, CpioError::Write { .. }));
    }
}
