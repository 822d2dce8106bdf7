//! A file inside a new ext4 filesystem, written straight to the disk
//! through the blocks mkfs.ext4 preallocated for it ([`crate::tools::BlockRun`]):
//! a `Read + Write + Seek` over those runs, so the Linux VM's disk can be
//! decompressed into place and its qcow2 header grown there, with no staged
//! copy (docs/install.md, "Performance").
//!
//! Owns the mapping from file offsets to disk offsets and its checks:
//! every run must lie inside the partition and the runs must cover the
//! file from its first block, without holes, before any byte is written.
//! Writes stop at the file's length (the file never grows). Writeback is
//! started every 64 MiB (`sync_file_range`), so the fsync before the
//! install's manifest finds little left to write; nothing is fsynced here.
//!
//! Limits: a write past a run's end continues in the next run; reads and
//! writes past the file's length fail (`UnexpectedEof` / `WriteZero`).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::tools::{BlockRun, EXT4_BLOCK};
use crate::vmdisk::WriteAt;

/// Bytes written between writeback starts.
const KICK: u64 = 64 << 20;

/// The file, open for reading and writing through its runs.
#[derive(Debug)]
pub struct Placed {
    disk: File,
    /// Byte offset of the filesystem on `disk`.
    base: u64,
    runs: Vec<BlockRun>,
    len: u64,
    pos: u64,
    /// Bytes written since writeback was last started (by any thread:
    /// see [`WriteAt`]).
    unkicked: AtomicU64,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Placed {
    /// Opens `disk` for the file of `len` bytes whose blocks are `runs`,
    /// in the filesystem at byte `base` of size `fs_bytes`. Fails, having
    /// written nothing, unless the runs lie inside the filesystem and cover
    /// the file from its start without a hole.
    pub fn open(
        disk: &Path,
        base: u64,
        fs_bytes: u64,
        runs: Vec<BlockRun>,
        len: u64,
    ) -> io::Result<Placed> {
        let mut next = 0u64;
        for r in &runs {
            let end = r
                .physical
                .checked_add(r.count)
                .and_then(|b| b.checked_mul(EXT4_BLOCK));
            if end.is_none_or(|e| e > fs_bytes) {
                return Err(invalid(format!(
                    "blocks {}..+{} lie outside the {fs_bytes}-byte filesystem: nothing written",
                    r.physical, r.count
                )));
            }
            if r.logical != next || r.count == 0 {
                return Err(invalid(format!(
                    "the file's blocks do not follow each other at block {next}: nothing written"
                )));
            }
            next += r.count;
        }
        if next.checked_mul(EXT4_BLOCK) != Some(len.next_multiple_of(EXT4_BLOCK)) {
            return Err(invalid(format!(
                "{next} blocks for a file of {len} bytes: nothing written"
            )));
        }
        let disk = File::options().read(true).write(true).open(disk)?;
        Ok(Placed {
            disk,
            base,
            runs,
            len,
            pos: 0,
            unkicked: AtomicU64::new(0),
        })
    }

    /// Where file offset `pos` is on the disk and how many bytes follow it
    /// in the same run (at most up to the file's end).
    fn locate(&self, pos: u64) -> Option<(u64, u64)> {
        if pos >= self.len {
            return None;
        }
        let block = pos / EXT4_BLOCK;
        // Runs are in file order; few (a handful per GiB).
        let r = self
            .runs
            .iter()
            .find(|r| block >= r.logical && block < r.logical + r.count)?;
        let within = pos - r.logical * EXT4_BLOCK;
        let run_left = r.count * EXT4_BLOCK - within;
        let at = self.base + r.physical * EXT4_BLOCK + within;
        Some((at, run_left.min(self.len - pos)))
    }
}

impl Read for Placed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some((at, left)) = self.locate(self.pos) else {
            return Ok(0);
        };
        let n = (buf.len() as u64).min(left) as usize;
        let n = self.disk.read_at(&mut buf[..n], at)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Placed {
    /// Writes at most to the end of the run holding file offset `pos`;
    /// returns the bytes written.
    fn write_in_run(&self, buf: &[u8], pos: u64) -> io::Result<usize> {
        let Some((at, left)) = self.locate(pos) else {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("more than the file's {} bytes", self.len),
            ));
        };
        let n = (buf.len() as u64).min(left) as usize;
        let n = self.disk.write_at(&buf[..n], at)?;
        let unkicked = self.unkicked.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if unkicked >= KICK {
            self.unkicked.store(0, Ordering::Relaxed);
            rayos_base::sys::start_writeback(&self.disk, 0, 0);
        }
        Ok(n)
    }
}

impl Write for Placed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.write_in_run(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Positional writes from several threads (frames decoded in parallel);
/// the file position is neither used nor moved.
impl WriteAt for Placed {
    fn write_all_at(&self, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.write_in_run(buf, offset)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = &buf[n..];
            offset += n as u64;
        }
        Ok(())
    }
}

impl Seek for Placed {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek before the file's start")
        })?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(logical: u64, physical: u64, count: u64) -> BlockRun {
        BlockRun {
            logical,
            physical,
            count,
        }
    }

    #[test]
    fn writes_and_reads_go_through_the_runs() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        let base = 8192u64;
        std::fs::write(&disk, vec![0xa5u8; (base + 32 * EXT4_BLOCK) as usize]).unwrap();
        // Two runs, the second before the first on the disk.
        let runs = vec![run(0, 10, 2), run(2, 3, 1)];
        let len = 3 * EXT4_BLOCK - 100;
        let mut f = Placed::open(&disk, base, 32 * EXT4_BLOCK, runs, len).unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        // Past the end: refused, nothing written.
        assert_eq!(f.write(b"x").unwrap_err().kind(), io::ErrorKind::WriteZero);
        let bytes = std::fs::read(&disk).unwrap();
        let b = |blk: u64| (base + blk * EXT4_BLOCK) as usize;
        let k = EXT4_BLOCK as usize;
        assert_eq!(&bytes[b(10)..b(12)], &data[..2 * k]);
        assert_eq!(&bytes[b(3)..b(3) + k - 100], &data[2 * k..]);
        // Everything else untouched, the block tail past the file too.
        assert!(bytes[b(3) + k - 100..b(4)].iter().all(|&x| x == 0xa5));
        assert!(bytes[..b(3)].iter().all(|&x| x == 0xa5));
        assert!(bytes[b(4)..b(10)].iter().all(|&x| x == 0xa5));
        assert!(bytes[b(12)..].iter().all(|&x| x == 0xa5));
        // Read back across the run boundary.
        f.seek(SeekFrom::Start(2 * EXT4_BLOCK - 5)).unwrap();
        let mut back = vec![0u8; 10];
        f.read_exact(&mut back).unwrap();
        assert_eq!(back, data[2 * k - 5..2 * k + 5]);
        f.seek(SeekFrom::End(-1)).unwrap();
        let mut rest = Vec::new();
        f.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, [data[data.len() - 1]]);
    }

    #[test]
    fn runs_outside_the_filesystem_or_with_holes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        std::fs::write(&disk, vec![7u8; 64 * EXT4_BLOCK as usize]).unwrap();
        let fs = 16 * EXT4_BLOCK;
        let len = 4 * EXT4_BLOCK;
        for (runs, why) in [
            (vec![run(0, 14, 4)], "outside"),
            (vec![run(0, 1, 2), run(3, 5, 2)], "follow"),
            (vec![run(0, 1, 3)], "blocks for a file"),
            (vec![run(0, 1, 5)], "blocks for a file"),
            (vec![run(0, u64::MAX, 4)], "outside"),
        ] {
            let e = Placed::open(&disk, 0, fs, runs, len).unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
        }
        assert!(std::fs::read(&disk).unwrap().iter().all(|&b| b == 7));
    }
    #[test]
    fn positional_writes_from_threads_land_in_their_runs() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        std::fs::write(&disk, vec![0xa5u8; 16 * EXT4_BLOCK as usize]).unwrap();
        // Three runs out of order on the disk; the file ends mid-block.
        let runs = vec![run(0, 9, 2), run(2, 1, 3), run(5, 12, 1)];
        let len = 6 * EXT4_BLOCK - 10;
        let f = Placed::open(&disk, 0, 16 * EXT4_BLOCK, runs, len).unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i % 249) as u8).collect();
        // Two writers, each with pieces that cross run boundaries.
        let cut = (3 * EXT4_BLOCK + 7) as usize;
        std::thread::scope(|s| {
            s.spawn(|| f.write_all_at(&data[cut..], cut as u64).unwrap());
            s.spawn(|| f.write_all_at(&data[..cut], 0).unwrap());
        });
        // Past the end: refused.
        let e = f.write_all_at(b"x", len).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
        let bytes = std::fs::read(&disk).unwrap();
        let k = EXT4_BLOCK as usize;
        let mut want = vec![0xa5u8; 16 * k];
        want[9 * k..11 * k].copy_from_slice(&data[..2 * k]);
        want[k..4 * k].copy_from_slice(&data[2 * k..5 * k]);
        // The last block's tail, past the file, untouched.
        want[12 * k..13 * k - 10].copy_from_slice(&data[5 * k..]);
        assert!(bytes == want);
    }
}
