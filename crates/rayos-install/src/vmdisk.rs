//! The Linux VM's disk from the Debian VM image on the installer medium,
//! with progress. Two forms of image, told apart by their first
//! decompressed bytes:
//! - a zstd-compressed **qcow2** (`linux-vm.qcow2.zst`, what `cargo xtask
//!   media` ships since 2026-12-07): zstd writes it straight into the
//!   destination and [`crate::qcow2::grow`] gives it the chosen size in
//!   place. Only the image's data passes through zstd — about 455 MiB of
//!   a 2 GiB disk — and nothing is copied after it (docs/install.md);
//! - a zstd-compressed **raw** disk (`linux-vm.img.zst`, the earlier form,
//!   still accepted): streamed through a pipe into a thin qcow2 of the
//!   chosen size ([`crate::qcow2::write_from_stream`]), zeros included.
//!
//! Both use a 128 MiB zstd window (docs/linux-vm.md). No raw copy is ever
//! made: the installer stages data-volume files in RAM.
//!
//! The installer uses the qcow2 form without staging it: [`qcow2_len`]
//! reads the length the zstd frame records (and checks the header), the
//! installer has mkfs.ext4 make room for that many bytes on the data volume,
//! and [`stream_qcow2`] decompresses into that room and grows it there
//! ([`crate::placed`]). [`write()`] (a staged file, which `mkfs.ext4 -d`
//! copies) remains for the raw form and an unrecorded length. Nothing is
//! fsynced here: the target is fsynced before the manifest. The pipe from
//! zstd is widened to 1 MiB, so the two processes trade 1 MiB per wake-up
//! instead of 64 KiB.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use crate::qcow2;
use crate::seekable::{Frame, SeekTable};

/// The pipe size asked for (Linux's default `pipe-max-size` for users).
const PIPE_BYTES: usize = 1 << 20;

/// Frames decoded at once at most: each zstd holds its frame's window (up
/// to 64 MiB) and the installer runs from RAM; the image has about eight
/// frames, so more decoders would gain little.
const MAX_DECODERS: usize = 4;

/// zstd's window for the image (`--long=27`): the decompressor must be
/// told, or it refuses frames with a window over 8 MiB.
pub const ZSTD_LONG: &str = "--long=27";

/// The decompressed length of the whole image: the sum of its seek
/// table's frames ([`crate::seekable`]) or, for a single-frame file, what
/// its frame header records (zstd writes it when it knows the input size).
pub fn decompressed_len(path: &Path) -> io::Result<Option<u64>> {
    match SeekTable::read(path)? {
        Some(t) => Ok(Some(t.decompressed_len())),
        None => zstd_content_size(path),
    }
}

/// The decompressed size a zstd file's first frame header records
/// (zstd writes it when it knows the input size), if any.
pub fn zstd_content_size(path: &Path) -> io::Result<Option<u64>> {
    let mut h = [0u8; 18];
    let n = File::open(path)?.read(&mut h)?;
    if n < 6 || h[..4] != [0x28, 0xb5, 0x2f, 0xfd] {
        return Ok(None);
    }
    let fhd = h[4];
    let fcs_flag = fhd >> 6;
    let single_segment = fhd & 0x20 != 0;
    let did_flag = fhd & 0x03;
    let mut at = 5 + usize::from(!single_segment);
    at += [0, 1, 2, 4][did_flag as usize];
    let size = match (fcs_flag, single_segment) {
        (0, false) => return Ok(None),
        (0, true) => 1,
        (1, _) => 2,
        (2, _) => 4,
        _ => 8,
    };
    if at + size > n {
        return Ok(None);
    }
    let mut v = 0u64;
    for (i, b) in h[at..at + size].iter().enumerate() {
        v |= u64::from(*b) << (8 * i);
    }
    if fcs_flag == 1 {
        v += 256;
    }
    Ok(Some(v))
}

/// `zstd -d` of `image`, or of its stdin (`input`) when `image` is `None`.
fn zstd_decompress(image: Option<&Path>, input: Stdio, out: Stdio) -> io::Result<Child> {
    Command::new("zstd")
        .args(["-q", "-d", "-c", ZSTD_LONG])
        .args(image)
        .stdin(input)
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run zstd: {e}")))
}

/// Waits for zstd and turns a failure into an error naming the image.
fn zstd_finish(child: Child, image: &Path) -> io::Result<()> {
    crate::seekable::wait(child, &format!("could not read {}", image.display()))
}

/// The first [`qcow2::HEADER_BYTES`] (or fewer) decompressed bytes.
fn head(image: &Path) -> io::Result<Vec<u8>> {
    let mut child = zstd_decompress(Some(image), Stdio::null(), Stdio::piped())?;
    let mut buf = vec![0u8; qcow2::HEADER_BYTES];
    let n = match child.stdout.take() {
        Some(mut out) => rayos_base::io::read_full(&mut out, &mut buf),
        None => Ok(0),
    };
    // The rest is not needed: stop zstd (it may be mid-write).
    let _ = child.kill();
    let _ = child.wait();
    let n = n?;
    if n == 0 {
        // Nothing came out: let zstd say why (a damaged file).
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        return Err(io::Error::other(format!(
            "zstd could not read {}: {}",
            image.display(),
            if err.trim().is_empty() {
                "no data"
            } else {
                err.trim()
            }
        )));
    }
    buf.truncate(n);
    Ok(buf)
}

fn too_small(image_bytes: u64, disk_size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "the image is {image_bytes} bytes, more than the VM disk's {disk_size}: choose a bigger linux.disk_size"
        ),
    )
}

/// Writes `dest` (replaced) from `image`; `progress(done, total)` in bytes
/// of the decompressed image (`total` 0 when unknown). Returns the bytes
/// decompressed.
pub fn write(
    image: &Path,
    dest: &Path,
    disk_size: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> io::Result<u64> {
    let head = head(image)?;
    if head.starts_with(&qcow2::MAGIC) {
        write_qcow2(image, &head, dest, disk_size, progress)
    } else {
        write_raw(image, dest, disk_size, progress)
    }
}

/// The qcow2 form: zstd writes into `dest` itself (no pipe), progress from
/// the file's size, then the header gets the disk size.
fn write_qcow2(
    image: &Path,
    head: &[u8],
    dest: &Path,
    disk_size: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> io::Result<u64> {
    check_qcow2(image, head, disk_size)?;
    let total = decompressed_len(image)?.unwrap_or(0);
    let _ = fs::remove_file(dest);
    let out = File::create_new(dest)?;
    let mut child = zstd_decompress(Some(image), Stdio::null(), Stdio::from(out))?;
    let mut last = 0u64;
    while child.try_wait()?.is_none() {
        // Short: the install waits this long at most after zstd is done.
        std::thread::sleep(Duration::from_millis(20));
        let done = fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
        // Every 64 MiB is often enough for a screen and a log.
        if done >= last + (64 << 20) {
            last = done;
            progress(done, total);
        }
    }
    zstd_finish(child, image)?;
    let written = fs::metadata(dest)?.len();
    if total != 0 {
        same_length(image, written, total)?;
    }
    let mut f = File::options().read(true).write(true).open(dest)?;
    qcow2::grow(&mut f, disk_size)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", image.display())))?;
    if last != written {
        progress(written, total);
    }
    Ok(written)
}

/// The shipped qcow2's header, checked before anything is written: a
/// foreign or too large image fails here, not after a minute of
/// decompressing.
fn check_qcow2(image: &Path, head: &[u8], disk_size: u64) -> io::Result<qcow2::Header> {
    let header = qcow2::Header::parse(head)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", image.display())))?;
    if header.size > disk_size.div_ceil(512) * 512 {
        return Err(too_small(header.size, disk_size));
    }
    Ok(header)
}

/// The decompressed length of `image` if it is the qcow2 form and its zstd
/// frame records that length, its header checked as [`write()`] checks it:
/// then the caller can make room for it and [`stream_qcow2`] writes it
/// there. `None` for the raw form or an unrecorded length ([`write()`] then).
pub fn qcow2_len(image: &Path, disk_size: u64) -> io::Result<Option<u64>> {
    let head = head(image)?;
    if !head.starts_with(&qcow2::MAGIC) {
        return Ok(None);
    }
    check_qcow2(image, &head, disk_size)?;
    decompressed_len(image)
}

/// Positional writes that several threads may make at once (to different
/// places): how frames decoded in parallel reach their destination.
pub trait WriteAt: Sync {
    /// Writes all of `buf` at byte `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
}

impl WriteAt for File {
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, offset)
    }
}

/// Decompresses the qcow2 form of `image` into `out` (from its start, `len`
/// bytes as [`qcow2_len`] said), then grows it to `disk_size` in place
/// ([`qcow2::grow`]); `progress(done, len)` as [`write()`]. An image in the
/// seekable format with more than one frame is decoded on every core (up to
/// four), each frame into its own place ([`decode_frames`]); a single frame,
/// or any image on one core, streams through one pipe. Fails if zstd
/// produces a different length. Returns the bytes written.
pub fn stream_qcow2<F: Read + Write + Seek + WriteAt>(
    image: &Path,
    out: &mut F,
    len: u64,
    disk_size: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> io::Result<u64> {
    let table = SeekTable::read(image)?;
    let decoders = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_DECODERS));
    let written = match table {
        // One decoder would wait for each frame's writes: one stream then.
        Some(table) if table.frames().len() > 1 && decoders > 1 => {
            same_length(image, table.decompressed_len(), len)?;
            decode_frames(image, table.frames(), &*out, decoders, progress)?
        }
        _ => {
            let (mut child, mut stdout) = zstd_piped(image)?;
            out.seek(SeekFrom::Start(0))?;
            let copied = copy_counted(&mut stdout, out, len, progress);
            if copied.is_err() {
                // Stop zstd rather than wait for it to fill a pipe nobody reads.
                let _ = child.kill();
            }
            drop(stdout);
            let finished = zstd_finish(child, image);
            let written = copied?;
            finished?;
            written
        }
    };
    same_length(image, written, len)?;
    qcow2::grow(out, disk_size)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", image.display())))?;
    Ok(written)
}

/// Decodes `frames` of `image` on up to `workers` threads, each running one
/// `zstd -d` per frame it takes and writing the output at the frame's place
/// in `out`; `progress(done, total)` every 64 MiB and at the end, from this
/// thread. The first failure stops the others at their next frame and is
/// returned, naming the frame. Returns the bytes written.
pub fn decode_frames(
    image: &Path,
    frames: &[Frame],
    out: &dyn WriteAt,
    workers: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> io::Result<u64> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let total: u64 = frames.iter().map(|f| f.out_len).sum();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let work = |tx: std::sync::mpsc::Sender<u64>| -> io::Result<()> {
        let file = File::open(image)?;
        let mut buf = vec![0u8; 8 << 20];
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(f) = frames.get(i) else {
                break;
            };
            decode_frame(image, &file, f, out, &mut buf, &tx).map_err(|e| {
                failed.store(true, Ordering::Relaxed);
                io::Error::new(e.kind(), format!("frame {i} of {}: {e}", image.display()))
            })?;
        }
        Ok(())
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers.clamp(1, frames.len().max(1)))
            .map(|_| {
                let tx = tx.clone();
                s.spawn(|| work(tx))
            })
            .collect();
        drop(tx);
        let (mut done, mut last) = (0u64, 0u64);
        for n in rx {
            done += n;
            if done >= last + (64 << 20) {
                last = done;
                progress(done, total);
            }
        }
        for h in handles {
            h.join()
                .unwrap_or_else(|_| Err(io::Error::other("a decoding thread panicked")))?;
        }
        if last != done {
            progress(done, total);
        }
        Ok(done)
    })
}

/// One frame: its compressed bytes fed to `zstd -d` from a second thread
/// (so neither pipe fills while the other waits), the output written at
/// the frame's place. Fails unless it decodes to exactly its listed length.
fn decode_frame(
    image: &Path,
    file: &File,
    f: &Frame,
    out: &dyn WriteAt,
    buf: &mut [u8],
    tx: &std::sync::mpsc::Sender<u64>,
) -> io::Result<()> {
    let mut frame = vec![0u8; f.len as usize];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut frame, f.offset)?;
    let mut child = zstd_decompress(None, Stdio::piped(), Stdio::piped())?;
    let (mut stdin, mut stdout) = crate::seekable::pipes(&mut child)?;
    let _ = rayos_base::sys::set_pipe_size(stdout.as_fd(), PIPE_BYTES);
    let _ = rayos_base::sys::set_pipe_size(stdin.as_fd(), PIPE_BYTES);
    let (fed, copied) = std::thread::scope(|s| {
        let feeder = s.spawn(move || stdin.write_all(&frame));
        let mut got = 0u64;
        let copied = loop {
            let n = match rayos_base::io::read_full(&mut stdout, buf) {
                Ok(0) => break Ok(got),
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            if got + n as u64 > f.out_len {
                break Err(io::Error::other(format!(
                    "decodes to more than the {} bytes the seek table says",
                    f.out_len
                )));
            }
            if let Err(e) = out.write_all_at(&buf[..n], f.out_offset + got) {
                break Err(e);
            }
            got += n as u64;
            let _ = tx.send(n as u64);
        };
        if copied.is_err() {
            let _ = child.kill();
        }
        drop(stdout);
        (feeder.join(), copied)
    });
    let finished = zstd_finish(child, image);
    let got = copied?;
    // zstd's own complaint, if any, says more than a broken pipe.
    finished?;
    fed.unwrap_or_else(|_| Err(io::Error::other("the feeding thread panicked")))?;
    if got != f.out_len {
        return Err(io::Error::other(format!(
            "decodes to {got} bytes, the seek table says {}",
            f.out_len
        )));
    }
    Ok(())
}

/// Copies `from` to `out` in pieces of up to 8 MiB (writers get large
/// writes), reporting progress every 64 MiB and at the end; more than
/// `len` bytes is an error.
pub(crate) fn copy_counted<F: Write>(
    from: &mut impl Read,
    out: &mut F,
    len: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> io::Result<u64> {
    let mut buf = vec![0u8; 8 << 20];
    let (mut done, mut last) = (0u64, 0u64);
    loop {
        let n = rayos_base::io::read_full(from, &mut buf)?;
        if n == 0 {
            break;
        }
        if done + n as u64 > len {
            return Err(io::Error::other(format!(
                "the image holds more than the {len} bytes its header says"
            )));
        }
        out.write_all(&buf[..n])?;
        done += n as u64;
        if done >= last + (64 << 20) {
            last = done;
            progress(done, len);
        }
    }
    out.flush()?;
    if last != done {
        progress(done, len);
    }
    Ok(done)
}

/// The raw form: streamed into a new thin qcow2 of the disk size.
fn write_raw(
    image: &Path,
    dest: &Path,
    disk_size: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> io::Result<u64> {
    let total = decompressed_len(image)?.unwrap_or(0);
    if total > disk_size {
        return Err(too_small(total, disk_size));
    }
    let (child, mut stdout) = zstd_piped(image)?;
    let _ = fs::remove_file(dest);
    let mut out = File::create_new(dest)?;
    let mut last = 0u64;
    let written = crate::qcow2::write_from_stream(&mut stdout, &mut out, disk_size, &mut |b| {
        // Every 64 MiB is often enough for a screen and a log.
        if b - last >= 64 << 20 || b == total {
            last = b;
            progress(b, total);
        }
    });
    drop(stdout);
    let finished = zstd_finish(child, image);
    let written = written?;
    finished?;
    if total != 0 {
        same_length(image, written, total)?;
    }
    if last != written {
        progress(written, total);
    }
    Ok(written)
}

/// zstd decompressing `image` into a pipe widened to [`PIPE_BYTES`].
fn zstd_piped(image: &Path) -> io::Result<(Child, ChildStdout)> {
    let mut child = zstd_decompress(Some(image), Stdio::null(), Stdio::piped())?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("zstd has no stdout"))?;
    // Best effort: a smaller pipe only costs more wake-ups.
    let _ = rayos_base::sys::set_pipe_size(stdout.as_fd(), PIPE_BYTES);
    Ok((child, stdout))
}

/// An error unless zstd produced the length its frame header recorded.
fn same_length(image: &Path, written: u64, recorded: u64) -> io::Result<()> {
    if written == recorded {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{} holds {written} bytes, its header says {recorded}",
        image.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 5 MiB raw "disk" with data at both ends, in `dir`.
    fn sample_raw(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
        let raw = dir.join("disk.img");
        let mut data = vec![0u8; 5 << 20];
        data[..4096].fill(0xee);
        data[(4 << 20) + 17] = 3;
        fs::write(&raw, &data).unwrap();
        (raw, data)
    }

    #[test]
    fn compressed_image_becomes_an_equal_thin_qcow2() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, _) = sample_raw(dir.path());
        let zst = dir.path().join("disk.img.zst");
        zstd(&raw, &zst);
        assert_eq!(zstd_content_size(&zst).unwrap(), Some(5 << 20));
        let q = dir.path().join("root.qcow2");
        let mut seen = Vec::new();
        let n = write(&zst, &q, 1 << 30, &mut |d, t| seen.push((d, t))).unwrap();
        assert_eq!(n, 5 << 20);
        assert_eq!(seen.last(), Some(&(5 << 20, 5 << 20)));
        assert_reads_as(&q, &raw);
        // Too small a disk is refused before anything is written.
        let e = write(
            &zst,
            &dir.path().join("small.qcow2"),
            1 << 20,
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("linux.disk_size"), "{e}");
        // A damaged file fails, naming zstd.
        fs::write(&zst, b"\x28\xb5\x2f\xfdgarbage").unwrap();
        let e = write(&zst, &dir.path().join("bad.qcow2"), 1 << 30, &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("zstd"), "{e}");
    }

    fn zstd(input: &Path, out: &Path) {
        let st = Command::new("zstd")
            .args(["-q", "-f", "-12", ZSTD_LONG])
            .arg(input)
            .arg("-o")
            .arg(out)
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn qemu_img(args: &[&str], img: &Path) -> (bool, String) {
        let o = Command::new("qemu-img")
            .args(args)
            .arg(img)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    }

    /// The qcow2 `q` reads back as the raw image `raw` followed by zeros.
    /// Sizes differ: `qemu-img compare` reads the tail as zeros and says
    /// the images are identical apart from the size.
    fn assert_reads_as(q: &Path, raw: &Path) {
        let raw = raw.to_str().unwrap();
        let (ok, text) = qemu_img(&["compare", "-f", "raw", "-F", "qcow2", raw], q);
        assert!(ok, "{text}");
    }

    /// The shipped form of `data` in `dir`: a qcow2 of its own size (path,
    /// length), zstd'd (path).
    fn shipped(dir: &Path, data: &[u8]) -> (std::path::PathBuf, u64, std::path::PathBuf) {
        let q = dir.join("disk.qcow2");
        let mut f = File::create(&q).unwrap();
        qcow2::write_from_stream(&mut &data[..], &mut f, data.len() as u64, &mut |_| {}).unwrap();
        drop(f);
        let len = fs::metadata(&q).unwrap().len();
        let zst = dir.join("disk.qcow2.zst");
        zstd(&q, &zst);
        (q, len, zst)
    }

    /// What the installer does with the preallocated file: `zst` (of
    /// `qlen` bytes) streamed into an existing file of that length in
    /// `dir`, grown there to 1 GiB; progress ends at the whole; the result
    /// reads as `raw`.
    fn streams_into_a_file_of_its_length(dir: &Path, zst: &Path, qlen: u64, raw: &Path) {
        let q = dir.join("root.qcow2");
        let mut out = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&q)
            .unwrap();
        out.set_len(qlen).unwrap();
        let mut seen = Vec::new();
        let n = stream_qcow2(zst, &mut out, qlen, 1 << 30, &mut |d, t| seen.push((d, t))).unwrap();
        drop(out);
        assert_eq!(n, qlen);
        assert_eq!(seen.last(), Some(&(qlen, qlen)));
        assert_clean_1gib_copy_of(&q, raw);
    }

    /// `q` checks clean, is 1 GiB and reads as `raw`, then zeros.
    fn assert_clean_1gib_copy_of(q: &Path, raw: &Path) {
        let (ok, text) = qemu_img(&["check", "-f", "qcow2"], q);
        assert!(ok && text.contains("No errors"), "{text}");
        let (_, info) = qemu_img(&["info", "--output=json"], q);
        assert!(info.contains("\"virtual-size\": 1073741824"), "{info}");
        assert_reads_as(q, raw);
    }

    #[test]
    fn compressed_qcow2_is_decompressed_in_place_and_grown_to_the_disk_size() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, data) = sample_raw(dir.path());
        let (shipped_q, qlen, zst) = shipped(dir.path(), &data);

        let q = dir.path().join("root.qcow2");
        fs::write(&q, b"an older file is replaced").unwrap();
        let mut seen = Vec::new();
        let n = write(&zst, &q, 1 << 30, &mut |d, t| seen.push((d, t))).unwrap();
        assert_eq!(n, qlen);
        assert_eq!(seen.last(), Some(&(qlen, qlen)));
        assert_clean_1gib_copy_of(&q, &raw);

        // Too small a disk is refused from the header, before anything is
        // written.
        let small = dir.path().join("small.qcow2");
        let e = write(&zst, &small, 1 << 20, &mut |_, _| {}).unwrap_err();
        assert!(e.to_string().contains("linux.disk_size"), "{e}");
        assert!(!small.exists());

        // A qcow2 with a backing file is refused, naming the image.
        let mut bytes = fs::read(&shipped_q).unwrap();
        bytes[15] = 0x80;
        fs::write(&shipped_q, &bytes).unwrap();
        zstd(&shipped_q, &zst);
        let bad = dir.path().join("bad.qcow2");
        let e = write(&zst, &bad, 1 << 30, &mut |_, _| {}).unwrap_err();
        assert!(
            e.to_string().contains("backing file") && e.to_string().contains("disk.qcow2.zst"),
            "{e}"
        );
        assert!(!bad.exists());
    }

    #[test]
    fn the_qcow2_form_streams_into_a_file_and_grows_there() {
        // What the installer does with the preallocated file: the length
        // from the zstd frame, checked header, decompressed into an
        // existing file of that length, grown in place.
        let dir = tempfile::tempdir().unwrap();
        let (raw, data) = sample_raw(dir.path());
        let (_, qlen, zst) = shipped(dir.path(), &data);
        assert_eq!(qcow2_len(&zst, 1 << 30).unwrap(), Some(qlen));
        // Too small a disk fails from the header; the raw form has none.
        let e = qcow2_len(&zst, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("linux.disk_size"), "{e}");
        let raw_zst = dir.path().join("disk.img.zst");
        zstd(&raw, &raw_zst);
        assert_eq!(qcow2_len(&raw_zst, 1 << 30).unwrap(), None);

        streams_into_a_file_of_its_length(dir.path(), &zst, qlen, &raw);

        // A length that is not the image's is an error either way.
        for wrong in [qlen - 512, qlen + 4096] {
            let mut out = tempfile::tempfile().unwrap();
            let e = stream_qcow2(&zst, &mut out, wrong, 1 << 30, &mut |_, _| {}).unwrap_err();
            assert!(e.to_string().contains("bytes"), "{e}");
        }
    }
    /// `data` shipped as a qcow2 in the seekable format with frames of
    /// 1 MiB (the media use 32 MiB): (qcow2 length, image path).
    fn shipped_seekable(dir: &Path, data: &[u8]) -> (u64, std::path::PathBuf) {
        let (q, len, _) = shipped(dir, data);
        let zst = dir.join("disk.qcow2.seekable.zst");
        crate::seekable::compress(&q, &zst, 1 << 20, &["-12", ZSTD_LONG], 2).unwrap();
        (len, zst)
    }

    /// A 5 MiB raw disk with data in every cluster (pseudo-random bytes
    /// with runs, so zstd has work), in `dir`.
    fn busy_raw(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
        let raw = dir.join("busy.img");
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<u8> = (0..5u32 << 20)
            .map(|i| {
                if i % 16 == 0 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                }
                (x >> (i % 16 * 3)) as u8 & 0x3f
            })
            .collect();
        fs::write(&raw, &data).unwrap();
        (raw, data)
    }

    #[test]
    fn seekable_images_decode_in_parallel_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let (raw, data) = busy_raw(dir.path());
        let (qlen, zst) = shipped_seekable(dir.path(), &data);
        let frames = SeekTable::read(&zst).unwrap().unwrap().frames().len();
        assert!(frames > 2, "{frames} frames");
        // The length is the table's, not the first frame's.
        assert_eq!(qcow2_len(&zst, 1 << 30).unwrap(), Some(qlen));
        streams_into_a_file_of_its_length(dir.path(), &zst, qlen, &raw);
        // The staged path reads the same image too.
        let staged = dir.path().join("staged.qcow2");
        assert_eq!(write(&zst, &staged, 1 << 30, &mut |_, _| {}).unwrap(), qlen);
        assert_clean_1gib_copy_of(&staged, &raw);
    }

    #[test]
    fn a_frame_that_decodes_to_another_length_fails_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (_, data) = busy_raw(dir.path());
        let (qlen, zst) = shipped_seekable(dir.path(), &data);
        let mut frames = SeekTable::read(&zst).unwrap().unwrap().frames().to_vec();
        frames[1].out_len -= 1;
        let out = tempfile::tempfile().unwrap();
        out.set_len(qlen).unwrap();
        let e = decode_frames(&zst, &frames, &out, 2, &mut |_, _| {}).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("frame 1 of") && e.contains("seek table"), "{e}");
        // A damaged frame: zstd's complaint, the frame named.
        let mut bytes = fs::read(&zst).unwrap();
        let f = SeekTable::read(&zst).unwrap().unwrap().frames()[2];
        bytes[(f.offset + f.len / 2) as usize] ^= 0xff;
        bytes[(f.offset + f.len / 2 + 1) as usize] ^= 0xff;
        fs::write(&zst, &bytes).unwrap();
        let mut out = tempfile::tempfile().unwrap();
        let e = stream_qcow2(&zst, &mut out, qlen, 1 << 30, &mut |_, _| {}).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("frame 2 of") && e.contains("zstd"), "{e}");
    }
}
