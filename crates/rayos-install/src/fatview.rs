//! Writing into a FAT inside a partition through a view bounded by that
//! partition.
//!
//! mtools addresses a FAT inside a disk as `disk@@offset` and takes the
//! filesystem's size from its boot sector: a FAT that claims more sectors
//! than its partition (an ESP shrunk without its filesystem, or damaged)
//! made mtools write RayOS's files into the next partition (issue #10).
//! mtools cannot bound `@@offset`, so the installer never lets it write to
//! the disk. A [`FatImage`] instead:
//!
//! 1. reads the boot sector with our own code ([`rayos_disk::fat`]) and
//!    refuses a BPB that is not sane or whose filesystem does not fit in
//!    the partition;
//! 2. copies the partition's boot area, FATs and root directory and every
//!    cluster the FAT marks in use into a sparse temporary image exactly
//!    the partition's size (free clusters stay holes: what they hold means
//!    nothing to FAT, and a freshly formatted 2 GiB system partition would
//!    otherwise bring 2 GiB of old bytes into the installer's RAM);
//! 3. lets `fsck.fat -n` ([`FatImage::fsck`]) and mtools
//!    ([`FatImage::volume`]) work on that image — `fsck.fat` reads only the
//!    boot area, the FATs and the clusters chains lead to, so it sees the
//!    partition's own bytes and nothing past its end;
//! 4. [`FatImage::write_back`]: the image must still be the partition's
//!    size with the same geometry; then the boot area, the FATs, the root
//!    directory and every cluster in use now are written back where they
//!    differ from the disk (only the 4 KiB blocks that differ), each write
//!    checked to end inside the partition. Clusters that were free when the
//!    copy was made (or at the previous write-back) are written without
//!    reading the disk first (`copy_file_range`, so the bytes do not pass
//!    through the installer): their old bytes mean nothing, and comparing
//!    would read every byte of a new file twice.
//!    [`FatImage::write_back_additions`], after changes that only add
//!    paths, also leaves out the clusters of files unchanged since the
//!    previous write-back (checked with a walk of the directory tree).
//!    [`FatImage::commit`] is a write-back and an fsync; the
//!    installer instead writes back without fsync and fsyncs the whole
//!    target once before its manifest (see [`mod@crate::apply`]).
//!
//! Limits: the copy costs the space the filesystem uses (RayOS's UKIs on
//! the system partition) in the temp directory; a commit cut short by a
//! power cut leaves the FAT as half-updated as mtools itself would (the
//! install's re-run redoes it). Only the installer writes this way;
//! recovery and updates write through the kernel's vfat on the partition's
//! own device, which the kernel bounds.
//!
//! Rejected designs: loop devices with offset and sizelimit (they need
//! root and the loop driver; image installs need neither); copying whole
//! partitions (the RAM cost above); trusting the BPB check alone (mtools
//! would still be handed the whole disk).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rayos_disk::fat::{FatError, Geometry, Tree};

use crate::tools::{self, FatVolume, ToolError};

/// Largest single read or write of the copy (and of the comparison).
const CHUNK: u64 = 1 << 20;

/// Why a FAT partition could not be copied, changed or written back.
#[derive(Debug, thiserror::Error)]
pub enum FatViewError {
    /// The partition's boot sector does not describe a usable FAT.
    #[error("{what}")]
    Geometry {
        /// Which partition.
        what: String,
        /// What is wrong.
        #[source]
        source: FatError,
    },
    /// `fsck.fat -n` finds the filesystem damaged (nothing is written to it).
    #[error("fsck.fat -n finds {what} damaged: {report}")]
    Fsck {
        /// Which partition.
        what: String,
        /// What fsck.fat reports.
        report: String,
    },
    /// The partition could not be read; holds the path.
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] io::Error),
    /// The partition could not be written; holds the path.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] io::Error),
    /// The temporary copy could not be made; holds its path.
    #[error("cannot make the temporary copy {0}")]
    Temp(PathBuf, #[source] io::Error),
    /// The copy changed size or geometry under mtools; nothing was written
    /// back.
    #[error(
        "the copy of {what} changed its size or geometry while mtools worked on it; nothing was written back"
    )]
    Changed {
        /// Which partition.
        what: String,
    },
    /// mtools failed.
    #[error("{0}")]
    Tool(#[from] ToolError),
}

/// A FAT partition's copy that mtools may write to (removed on drop).
#[derive(Debug)]
pub struct FatImage {
    disk: PathBuf,
    start: u64,
    size: u64,
    image: PathBuf,
    geometry: Geometry,
    what: String,
    /// Ranges where the copy is known to equal the disk: what was in use
    /// at open (copied), then what was in use at the last write-back.
    /// Outside them the disk holds bytes that mean nothing to this FAT
    /// (free clusters), so write-back writes there without reading the
    /// disk first.
    same: Vec<(u64, u64)>,
    /// The copy's FAT and directory tree at the last write-back (when the
    /// copy equalled the disk), for [`FatImage::write_back_additions`].
    synced: Option<Synced>,
}

/// What the copy held at a write-back.
#[derive(Debug)]
struct Synced {
    fat: Vec<u8>,
    tree: Tree,
}

impl Drop for FatImage {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.image);
    }
}

/// The boot area, FATs and root directory, then every cluster in use, as
/// byte ranges from the filesystem's start (runs of clusters merged).
fn used_ranges(g: &Geometry, fat: &[u8]) -> Vec<(u64, u64)> {
    let mut out = vec![(0, g.metadata_bytes())];
    for n in g.allocated(fat) {
        let r = g.cluster_range(n);
        match out.last_mut() {
            Some(last) if last.1 == r.start => last.1 = r.end,
            _ => out.push((r.start, r.end)),
        }
    }
    out
}

fn read_fat(f: &File, path: &Path, base: u64, g: &Geometry) -> Result<Vec<u8>, FatViewError> {
    let r = g.fat_range();
    let mut fat = vec![0u8; (r.end - r.start) as usize];
    f.read_exact_at(&mut fat, base + r.start)
        .map_err(|e| FatViewError::Read(path.to_path_buf(), e))?;
    Ok(fat)
}

impl FatImage {
    /// Checks the FAT at `[start, start + size)` of `disk` and copies what
    /// it uses into a temporary image in `temp_dir`. `what` names the
    /// partition in messages ("the EFI system partition (partition 1)").
    pub fn open(
        disk: &Path,
        start: u64,
        size: u64,
        temp_dir: &Path,
        what: &str,
    ) -> Result<FatImage, FatViewError> {
        let rerr = |e| FatViewError::Read(disk.to_path_buf(), e);
        let src = File::open(disk).map_err(rerr)?;
        let mut boot = [0u8; 512];
        src.read_exact_at(&mut boot, start).map_err(rerr)?;
        let geo = |source| FatViewError::Geometry {
            what: what.to_string(),
            source,
        };
        let geometry = Geometry::parse(&boot).map_err(geo)?;
        geometry.check_within(size).map_err(geo)?;
        let image = temp_dir.join(format!(
            "rayos-fat-{}-{}.img",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let terr = |e| FatViewError::Temp(image.clone(), e);
        let dst = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&image)
            .map_err(terr)?;
        let mut img = FatImage {
            disk: disk.to_path_buf(),
            start,
            size,
            image: image.clone(),
            geometry,
            what: what.to_string(),
            same: Vec::new(),
            synced: None,
        };
        dst.set_len(size).map_err(terr)?;
        let fat = read_fat(&src, disk, start, &geometry)?;
        img.same = used_ranges(&geometry, &fat);
        let mut buf = vec![0u8; CHUNK as usize];
        for &(a, b) in &img.same {
            let mut at = a;
            while at < b {
                let n = (b - at).min(CHUNK) as usize;
                src.read_exact_at(&mut buf[..n], start + at).map_err(rerr)?;
                // Zeros stay holes: the copy costs what the FAT holds.
                if buf[..n].iter().any(|&x| x != 0) {
                    dst.write_all_at(&buf[..n], at).map_err(terr)?;
                }
                at += n as u64;
            }
        }
        Ok(img)
    }

    /// mtools' address of the copy.
    pub fn volume(&self) -> FatVolume {
        FatVolume {
            disk: self.image.clone(),
            offset_bytes: 0,
        }
    }

    /// `fsck.fat -n` on the copy: any problem it reports (a non-zero exit)
    /// refuses the FAT, with its report (which it prints on stdout).
    pub fn fsck(&self) -> Result<(), FatViewError> {
        let out = Command::new("fsck.fat")
            .arg("-n")
            .arg(&self.image)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ToolError::Spawn {
                tool: "fsck.fat".into(),
                package: tools::package_of("fsck.fat"),
                source,
            })?;
        if out.status.success() {
            return Ok(());
        }
        let image = self.image.display().to_string();
        let report: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
            .map(|l| l.trim().replace(&image, "the partition"))
            .filter(|l| {
                // Drop the banner, the no-op notice and the summary line.
                !l.is_empty()
                    && !l.starts_with("fsck.fat ")
                    && !l.starts_with("the partition: ")
                    && *l != "Leaving filesystem unchanged."
            })
            .collect();
        Err(FatViewError::Fsck {
            what: self.what.clone(),
            report: report.join("; "),
        })
    }

    /// Writes back what mtools changed, inside the partition only, and
    /// fsyncs the disk; returns the bytes written.
    pub fn commit(mut self) -> Result<u64, FatViewError> {
        let written = self.write_back()?;
        OpenOptions::new()
            .write(true)
            .open(&self.disk)
            .and_then(|d| d.sync_all())
            .map_err(|e| FatViewError::Write(self.disk.clone(), e))?;
        Ok(written)
    }

    /// Writes back what mtools changed, inside the partition only, without
    /// fsyncing (the caller syncs the disk before anything depends on
    /// these bytes); the copy stays usable for more changes. Returns the
    /// bytes written.
    ///
    /// Where the copy was known to equal the disk (see `same`) a chunk is
    /// compared with the disk and written only if it differs; a chunk in
    /// clusters that were free is written without reading the disk (its
    /// old bytes mean nothing, and on a fresh FAT that is every byte of a
    /// new file).
    pub fn write_back(&mut self) -> Result<u64, FatViewError> {
        self.write_back_skipping(&[])
    }

    /// [`FatImage::write_back`] after changes that only **added** files and
    /// directories (mcopy to paths that did not exist, mmd): the clusters
    /// of the files present at the last write-back are then not compared
    /// with the disk — mtools writes file data only into clusters it
    /// allocates, so theirs are as written (for RayOS's system partition,
    /// the UKI: comparing it would read it twice more to find nothing).
    /// Checked, not trusted: every such file's directory entry and every
    /// one of their FAT entries must be as they were, and none of their
    /// clusters a directory now; otherwise (or without an earlier
    /// write-back) everything in use is compared as by `write_back`.
    /// Returns the bytes written.
    pub fn write_back_additions(&mut self) -> Result<u64, FatViewError> {
        let skip = self.unchanged_files().unwrap_or_default();
        self.write_back_skipping(&skip)
    }

    /// The byte ranges of the clusters of files unchanged since the last
    /// write-back (see [`FatImage::write_back_additions`]), or `None` when
    /// that cannot be shown.
    fn unchanged_files(&self) -> Option<Vec<(u64, u64)>> {
        let before = self.synced.as_ref()?;
        let img = File::open(&self.image).ok()?;
        let (fat, tree) = self.tree_of(&img).ok()?;
        if before
            .tree
            .files
            .iter()
            .any(|(at, e)| tree.files.get(at) != Some(e))
        {
            return None;
        }
        let g = &self.geometry;
        let mut skip: Vec<(u64, u64)> = Vec::new();
        for n in g.allocated(&before.fat) {
            if before.tree.dir_clusters.contains(&n) {
                continue;
            }
            if tree.dir_clusters.contains(&n) || g.entry_of(&fat, n) != g.entry_of(&before.fat, n) {
                return None;
            }
            let r = g.cluster_range(n);
            match skip.last_mut() {
                Some(last) if last.1 == r.start => last.1 = r.end,
                _ => skip.push((r.start, r.end)),
            }
        }
        Some(skip)
    }

    /// The FAT and directory tree of the copy `img`.
    fn tree_of(&self, img: &File) -> Result<(Vec<u8>, Tree), FatViewError> {
        let fat = read_fat(img, &self.image, 0, &self.geometry)?;
        let tree = self.walk(img, &fat)?;
        Ok((fat, tree))
    }

    /// The directory tree of the copy `img` whose FAT is `fat`.
    fn walk(&self, img: &File, fat: &[u8]) -> Result<Tree, FatViewError> {
        self.geometry
            .walk(fat, |r| {
                let mut b = vec![0u8; (r.end - r.start) as usize];
                img.read_exact_at(&mut b, r.start).map(|_| b)
            })
            .map_err(|e| FatViewError::Temp(self.image.clone(), io::Error::other(e)))
    }

    /// The write-back; chunks wholly inside `skip` (sorted, disjoint) are
    /// known to equal the disk and left alone.
    fn write_back_skipping(&mut self, skip: &[(u64, u64)]) -> Result<u64, FatViewError> {
        let changed = || FatViewError::Changed {
            what: self.what.clone(),
        };
        let terr = |e| FatViewError::Temp(self.image.clone(), e);
        let img = File::open(&self.image).map_err(terr)?;
        if img.metadata().map_err(terr)?.len() != self.size {
            return Err(changed());
        }
        let mut boot = [0u8; 512];
        img.read_exact_at(&mut boot, 0).map_err(terr)?;
        if Geometry::parse(&boot).ok() != Some(self.geometry) {
            return Err(changed());
        }
        let fat = read_fat(&img, &self.image, 0, &self.geometry)?;
        let werr = |e| FatViewError::Write(self.disk.clone(), e);
        let disk = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.disk)
            .map_err(werr)?;
        let (mut ours, mut theirs) = (vec![0u8; CHUNK as usize], vec![0u8; CHUNK as usize]);
        let mut written = 0;
        let used = used_ranges(&self.geometry, &fat);
        for &(a, b) in &used {
            let mut at = a;
            while at < b {
                let n = (b - at).min(CHUNK) as usize;
                // The geometry fits the partition (checked at open and
                // again above), so this holds; it is the bound itself.
                if at + n as u64 > self.size {
                    return Err(changed());
                }
                if inside(skip, at, at + n as u64) {
                    // Known to equal the disk: nothing to do.
                } else if overlaps(&self.same, at, at + n as u64) {
                    img.read_exact_at(&mut ours[..n], at).map_err(terr)?;
                    disk.read_exact_at(&mut theirs[..n], self.start + at)
                        .map_err(|e| FatViewError::Read(self.disk.clone(), e))?;
                    // Only the blocks that differ: a changed FAT or
                    // directory is a few blocks of its chunk, and what is
                    // written here is what the fsync before the manifest
                    // must carry to the disk.
                    for (a, b) in differing_blocks(&ours[..n], &theirs[..n]) {
                        disk.write_all_at(&ours[a..b], self.start + at + a as u64)
                            .map_err(werr)?;
                        written += (b - a) as u64;
                    }
                } else {
                    // Nothing to compare: the kernel copies the chunk from
                    // the copy's page cache to the disk's, without passing
                    // it through this process.
                    copy_range(&img, at, &disk, self.start + at, n as u64, &mut ours)
                        .map_err(werr)?;
                    written += n as u64;
                }
                at += n as u64;
            }
        }
        self.same = used;
        // The copy now equals the disk: remember its tree for the next
        // write-back (none if it cannot be walked: that one compares all).
        // The FAT read above is the copy's: only its directories are read.
        self.synced = self.walk(&img, &fat).ok().map(|tree| Synced { fat, tree });
        Ok(written)
    }
}

/// Copies `len` bytes of `src` at `from` to `dst` at `to`: with
/// `copy_file_range` (the kernel moves the bytes between the two files'
/// page caches, one copy instead of a read into `buf` and a write out of
/// it), falling back to `buf`-sized reads and writes where the kernel
/// cannot (a block device target, or the copy on another filesystem).
fn copy_range(
    src: &File,
    from: u64,
    dst: &File,
    to: u64,
    len: u64,
    buf: &mut [u8],
) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let mut done = 0u64;
    while done < len {
        let (mut off_in, mut off_out) =
            ((from + done) as libc::loff_t, (to + done) as libc::loff_t);
        // SAFETY: both descriptors are open for the duration of the call,
        // the offsets are valid pointers to locals, and the kernel checks
        // the ranges against the files.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                (len - done) as usize,
                0,
            )
        };
        if n > 0 {
            done += n as u64;
            continue;
        }
        let err = io::Error::last_os_error();
        if n < 0 && err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n < 0
            && !matches!(
                err.raw_os_error(),
                Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
            )
        {
            return Err(err);
        }
        // The kernel cannot copy between these two (or returned 0 early):
        // the rest through `buf`.
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            src.read_exact_at(&mut buf[..n], from + done)?;
            dst.write_all_at(&buf[..n], to + done)?;
            done += n as u64;
        }
    }
    Ok(())
}

/// Size of the blocks [`differing_blocks`] compares.
const BLOCK: usize = 4096;

/// The runs of `BLOCK`-sized blocks (the last may be shorter) where `ours`
/// and `theirs` (the same length) differ, as byte ranges, adjacent blocks
/// merged.
fn differing_blocks(ours: &[u8], theirs: &[u8]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (i, (a, b)) in ours.chunks(BLOCK).zip(theirs.chunks(BLOCK)).enumerate() {
        if a == b {
            continue;
        }
        let (start, end) = (i * BLOCK, i * BLOCK + a.len());
        match out.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => out.push((start, end)),
        }
    }
    out
}

/// Whether `[a, b)` lies wholly inside one of `ranges` (sorted, disjoint,
/// adjacent ones merged).
fn inside(ranges: &[(u64, u64)], a: u64, b: u64) -> bool {
    let i = ranges.partition_point(|r| r.1 <= a);
    ranges.get(i).is_some_and(|r| r.0 <= a && b <= r.1)
}

/// Whether `[a, b)` meets any of `ranges` (sorted, disjoint).
fn overlaps(ranges: &[(u64, u64)], a: u64, b: u64) -> bool {
    let i = ranges.partition_point(|r| r.1 <= a);
    ranges.get(i).is_some_and(|r| r.0 < b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    const MIB: u64 = 1 << 20;
    /// FAT32 with 4 KiB clusters needs 65525 clusters (mtools reads fewer
    /// as FAT16): a 300 MiB partition at 16 MiB of a 332 MiB disk.
    const START: u64 = 16 * MIB;
    const SIZE: u64 = 300 * MIB;

    /// The disk file: 0x5A in the MiB before and after the partition, 0xA5
    /// in its last 4 MiB (free clusters under the fresh FAT32).
    fn disk(dir: &Path) -> PathBuf {
        let d = dir.join("disk.img");
        let f = File::create(&d).unwrap();
        f.set_len(START + SIZE + 16 * MIB).unwrap();
        f.write_all_at(&vec![0x5Au8; MIB as usize], START - MIB)
            .unwrap();
        f.write_all_at(&vec![0x5Au8; MIB as usize], START + SIZE)
            .unwrap();
        f.write_all_at(&vec![0xA5u8; 4 * MIB as usize], START + SIZE - 4 * MIB)
            .unwrap();
        drop(f);
        FatVolume {
            disk: d.clone(),
            offset_bytes: START,
        }
        .format(512, SIZE, "TEST")
        .unwrap();
        d
    }

    fn scratch() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "rayos-fatview-test-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn writes_land_inside_the_partition_and_only_where_the_fat_uses() {
        let dir = scratch();
        let d = disk(&dir);
        let img = FatImage::open(&d, START, SIZE, &dir, "test FAT").unwrap();
        img.fsck().unwrap();
        let v = img.volume();
        v.put_bytes(&vec![7u8; 3 * MIB as usize], "/EFI/big.bin")
            .unwrap();
        v.put_bytes(b"hello", "/loader/loader.conf").unwrap();
        let written = img.commit().unwrap();
        assert!(written >= 3 * MIB, "{written}");
        let all = fs::read(&d).unwrap();
        let at = |a: u64, b: u64| &all[a as usize..b as usize];
        assert!(at(START - MIB, START).iter().all(|&b| b == 0x5A), "before");
        assert!(
            at(START + SIZE, START + SIZE + MIB)
                .iter()
                .all(|&b| b == 0x5A),
            "after"
        );
        // Free clusters kept their old bytes: only used ranges are written.
        assert!(
            at(START + SIZE - 4 * MIB, START + SIZE)
                .iter()
                .all(|&b| b == 0xA5),
            "free clusters"
        );
        // The files are there (read from the disk itself), the FAT is sound.
        let on_disk = FatVolume {
            disk: d.clone(),
            offset_bytes: START,
        };
        assert_eq!(
            on_disk.read("/loader/loader.conf").unwrap().unwrap(),
            b"hello"
        );
        assert_eq!(
            on_disk.read("/EFI/big.bin").unwrap().unwrap(),
            vec![7u8; 3 * MIB as usize]
        );
        let copy = dir.join("part.img");
        fs::write(&copy, at(START, START + SIZE)).unwrap();
        tools::run("fsck.fat", [OsStr::new("-n"), copy.as_os_str()], "copy").unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn differing_blocks_are_found_and_merged() {
        let ours = vec![0u8; 5 * BLOCK + 100];
        let mut theirs = ours.clone();
        assert!(differing_blocks(&ours, &theirs).is_empty());
        theirs[BLOCK + 1] = 1;
        theirs[2 * BLOCK] = 1;
        theirs[5 * BLOCK + 99] = 1;
        assert_eq!(
            differing_blocks(&ours, &theirs),
            [(BLOCK, 3 * BLOCK), (5 * BLOCK, 5 * BLOCK + 100)]
        );
    }

    #[test]
    fn inside_needs_the_whole_range_in_one() {
        let r = [(0, 10), (10, 20), (30, 40)];
        assert!(inside(&r, 0, 10) && inside(&r, 31, 40));
        assert!(!inside(&r, 5, 15), "spans two");
        assert!(!inside(&r, 25, 31) && !inside(&r, 35, 41));
        assert!(!inside(&[], 0, 1));
    }

    #[test]
    fn copy_range_falls_back_where_the_kernel_cannot_copy() {
        let dir = scratch();
        let src = dir.join("src");
        fs::write(&src, vec![3u8; 3 * MIB as usize]).unwrap();
        let src = File::open(&src).unwrap();
        let mut buf = vec![0u8; 4096];
        // Between regular files: copy_file_range.
        let dst = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("dst"))
            .unwrap();
        copy_range(&src, MIB, &dst, 10, 2 * MIB, &mut buf).unwrap();
        let out = fs::read(dir.join("dst")).unwrap();
        assert_eq!(out.len() as u64, 10 + 2 * MIB);
        assert!(out[..10].iter().all(|&b| b == 0) && out[10..].iter().all(|&b| b == 3));
        // To a character device the kernel refuses (EINVAL): reads and
        // writes through the buffer instead.
        let null = OpenOptions::new().write(true).open("/dev/null").unwrap();
        copy_range(&src, 0, &null, 0, 3 * MIB, &mut buf).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn additions_skip_the_unchanged_files_but_a_replaced_one_is_compared() {
        let dir = scratch();
        let d = disk(&dir);
        let mut img = FatImage::open(&d, START, SIZE, &dir, "test FAT").unwrap();
        img.volume()
            .put_bytes(&vec![9u8; 4 * MIB as usize], "/EFI/Linux/big.efi")
            .unwrap();
        img.volume().put_bytes(b"one", "/small.txt").unwrap();
        img.write_back().unwrap();
        // A new file in a new directory: the big file's clusters are known
        // to equal the disk, so they are skipped.
        img.volume()
            .put_bytes(b"manifest", "/rayos/m.json")
            .unwrap();
        let skip = img.unchanged_files().expect("only additions");
        let skipped: u64 = skip.iter().map(|r| r.1 - r.0).sum();
        assert!(skipped >= 4 * MIB, "{skip:?}");
        let written = img.write_back_additions().unwrap();
        assert!(written < MIB, "{written}");
        // A file replaced (its entry changes): nothing is skipped.
        img.volume().put_bytes(b"two!", "/small.txt").unwrap();
        assert!(img.unchanged_files().is_none());
        img.write_back_additions().unwrap();
        img.commit().unwrap();
        let on_disk = FatVolume {
            disk: d.clone(),
            offset_bytes: START,
        };
        assert_eq!(on_disk.read("/rayos/m.json").unwrap().unwrap(), b"manifest");
        assert_eq!(on_disk.read("/small.txt").unwrap().unwrap(), b"two!");
        assert_eq!(
            on_disk.read("/EFI/Linux/big.efi").unwrap().unwrap(),
            vec![9u8; 4 * MIB as usize]
        );
        let copy = dir.join("part.img");
        let all = fs::read(&d).unwrap();
        fs::write(&copy, &all[START as usize..(START + SIZE) as usize]).unwrap();
        tools::run("fsck.fat", [OsStr::new("-n"), copy.as_os_str()], "copy").unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn additions_on_a_fat16_walk_its_fixed_root_directory() {
        let dir = scratch();
        let img = dir.join("fat16.img");
        tools::run(
            "mkfs.fat",
            [
                OsStr::new("-C"),
                OsStr::new("-F"),
                OsStr::new("16"),
                img.as_os_str(),
                OsStr::new("32768"),
            ],
            "test",
        )
        .unwrap();
        let mut fat = FatImage::open(&img, 0, 32 * MIB, &dir, "test FAT16").unwrap();
        fat.volume()
            .put_bytes(&vec![5u8; 2 * MIB as usize], "/big.bin")
            .unwrap();
        fat.write_back().unwrap();
        fat.volume().put_bytes(b"new", "/sub/new.txt").unwrap();
        let skip = fat.unchanged_files().expect("only additions");
        let skipped: u64 = skip.iter().map(|r| r.1 - r.0).sum();
        assert_eq!(skipped, 2 * MIB);
        fat.write_back_additions().unwrap();
        fat.fsck().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn overlaps_finds_ranges_that_meet() {
        let r = [(0, 10), (20, 30)];
        assert!(overlaps(&r, 5, 6));
        assert!(overlaps(&r, 9, 21));
        assert!(!overlaps(&r, 10, 20));
        assert!(!overlaps(&r, 30, 40));
        assert!(!overlaps(&[], 0, 1));
    }

    #[test]
    fn a_copy_written_back_twice_keeps_both_changes() {
        let dir = scratch();
        let d = disk(&dir);
        let mut img = FatImage::open(&d, START, SIZE, &dir, "test FAT").unwrap();
        img.volume()
            .put_bytes(&vec![9u8; 2 * MIB as usize], "/a.bin")
            .unwrap();
        assert!(img.write_back().unwrap() >= 2 * MIB);
        // Nothing changed since: nothing to write.
        assert_eq!(img.write_back().unwrap(), 0);
        img.volume().put_bytes(b"second", "/dir/b.txt").unwrap();
        let written = img.write_back().unwrap();
        assert!(written > 0 && written < 2 * MIB, "{written}");
        img.commit().unwrap();
        let on_disk = FatVolume {
            disk: d.clone(),
            offset_bytes: START,
        };
        assert_eq!(
            on_disk.read("/a.bin").unwrap().unwrap(),
            vec![9u8; 2 * MIB as usize]
        );
        assert_eq!(on_disk.read("/dir/b.txt").unwrap().unwrap(), b"second");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_copy_that_grew_is_not_written_back() {
        let dir = scratch();
        let d = disk(&dir);
        let hash = || rayos_base::hash::sha256_file(&d).unwrap().hex;
        let before = hash();
        let img = FatImage::open(&d, START, SIZE, &dir, "test FAT").unwrap();
        img.volume().put_bytes(b"x", "/x").unwrap();
        // Something wrote past the end of the copy (mtools cannot, while
        // the BPB fits; the commit checks anyway).
        File::options()
            .write(true)
            .open(&img.image)
            .unwrap()
            .write_all_at(b"!", SIZE)
            .unwrap();
        assert!(matches!(img.commit(), Err(FatViewError::Changed { .. })));
        assert_eq!(hash(), before, "written anyway");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fat_larger_than_its_partition_is_refused_at_open() {
        let dir = scratch();
        let d = disk(&dir);
        let e = FatImage::open(&d, START, SIZE - MIB, &dir, "test FAT").unwrap_err();
        assert!(
            matches!(
                e,
                FatViewError::Geometry {
                    source: FatError::LargerThanPartition { .. },
                    ..
                }
            ),
            "{e}"
        );
        // No temporary copy left behind.
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("rayos-fat-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
