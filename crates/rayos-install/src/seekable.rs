//! zstd's seekable format: a file of independent zstd frames followed by a
//! skippable frame holding a seek table (each frame's compressed and
//! decompressed size), as zstd's `contrib/seekable_format` specification
//! describes it. The Linux VM image ships in this form so the installer can
//! decode its frames on every core at once, each into its own place
//! (docs/install.md, "Sixth pass"); plain `zstd -d` still reads it as one
//! stream (it skips the skippable frame), so nothing else changes.
//!
//! Owns the table's parsing (bytes from the installer medium: checked to
//! describe exactly the frames before it, fuzzed in `media_parsers`), its
//! encoding, and [`compress`], which writes a file in the format with the
//! `zstd` program. Limits: only tables without per-frame checksums are
//! written (each zstd frame carries its own content checksum); tables with
//! them are read. Decoding is the caller's (`crate::vmdisk`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The skippable-frame magic number the specification uses for the table.
const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
/// The last four bytes of a seekable file.
const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;
/// Number of frames (4), descriptor (1), magic (4).
const FOOTER: u64 = 9;
/// A skippable frame's header: magic (4), size (4).
const SKIP_HEADER: u64 = 8;
/// More frames than any image of ours has (a 32 MiB frame each would be
/// 32 TiB): a table claiming more is damaged, not read into memory.
const MAX_FRAMES: u64 = 1 << 20;

/// Why a seek table cannot be used: the file is damaged or not what it
/// claims to be.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    /// Bits the specification reserves are set.
    #[error("the seek table's descriptor has reserved bits set ({0:#04x})")]
    Descriptor(u8),
    /// No frames, or more than the file has room for.
    #[error("the seek table claims {0} frames, more than the file can hold")]
    Frames(u64),
    /// The skippable frame around the table has a wrong magic or size.
    #[error("the seek table's skippable frame header is damaged")]
    Header,
    /// A frame listed with no compressed or no decompressed bytes.
    #[error("frame {0} has a size of 0 in the seek table")]
    EmptyFrame(usize),
    /// The frames listed do not add up to the bytes before the table.
    #[error("the seek table's frames hold {listed} bytes, the file {actual} before the table")]
    Coverage {
        /// Sum of the listed compressed sizes.
        listed: u64,
        /// Bytes before the table.
        actual: u64,
    },
}

/// One frame: where it is in the file and what it decodes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Byte offset of the frame in the compressed file.
    pub offset: u64,
    /// Its compressed length.
    pub len: u64,
    /// Byte offset of its output in the decompressed stream.
    pub out_offset: u64,
    /// Its decompressed length.
    pub out_len: u64,
}

/// A parsed, checked seek table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeekTable {
    frames: Vec<Frame>,
}

impl SeekTable {
    /// The frames, in file order; they cover the file before the table
    /// without gap or overlap, and their outputs the stream likewise.
    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    /// The length of the whole decompressed stream.
    pub fn decompressed_len(&self) -> u64 {
        self.frames.last().map_or(0, |f| f.out_offset + f.out_len)
    }

    /// Parses the table at the end of a file of `file_len` bytes, reading
    /// through `read_at(buf, offset)`. `Ok(None)` when the file does not end
    /// in a seek table (a plain zstd file); an error when it claims to and
    /// the table does not describe the file exactly.
    pub fn parse(
        file_len: u64,
        read_at: &mut dyn FnMut(&mut [u8], u64) -> io::Result<()>,
    ) -> io::Result<Option<SeekTable>> {
        if file_len < FOOTER + SKIP_HEADER {
            return Ok(None);
        }
        let mut footer = [0u8; FOOTER as usize];
        read_at(&mut footer, file_len - FOOTER)?;
        if le32(&footer[5..9]) != SEEKABLE_MAGIC {
            return Ok(None);
        }
        let n = u64::from(le32(&footer[0..4]));
        let descriptor = footer[4];
        if descriptor & 0x7c != 0 {
            return Err(bad(TableError::Descriptor(descriptor)));
        }
        let entry = if descriptor & 0x80 != 0 { 12 } else { 8 };
        let body = n * entry + FOOTER;
        if n == 0 || n > MAX_FRAMES || body + SKIP_HEADER > file_len {
            return Err(bad(TableError::Frames(n)));
        }
        let start = file_len - body - SKIP_HEADER;
        let mut table = vec![0u8; (body + SKIP_HEADER) as usize];
        read_at(&mut table, start)?;
        if le32(&table[0..4]) != SKIPPABLE_MAGIC || u64::from(le32(&table[4..8])) != body {
            return Err(bad(TableError::Header));
        }
        let mut frames = Vec::with_capacity(n as usize);
        let (mut offset, mut out_offset) = (0u64, 0u64);
        for (i, e) in table[SKIP_HEADER as usize..]
            .chunks_exact(entry as usize)
            .take(n as usize)
            .enumerate()
        {
            let (len, out_len) = (u64::from(le32(&e[0..4])), u64::from(le32(&e[4..8])));
            if len == 0 || out_len == 0 {
                return Err(bad(TableError::EmptyFrame(i)));
            }
            frames.push(Frame {
                offset,
                len,
                out_offset,
                out_len,
            });
            offset += len;
            out_offset += out_len;
        }
        if offset != start {
            return Err(bad(TableError::Coverage {
                listed: offset,
                actual: start,
            }));
        }
        Ok(Some(SeekTable { frames }))
    }

    /// [`SeekTable::parse`] on a file.
    pub fn read(path: &Path) -> io::Result<Option<SeekTable>> {
        let f = File::open(path)?;
        let len = f.metadata()?.len();
        SeekTable::parse(len, &mut |buf, at| f.read_exact_at(buf, at)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: {e}: the file is damaged (write the installer medium again)",
                    path.display()
                ),
            )
        })
    }

    /// The skippable frame holding a table of frames of these
    /// (compressed, decompressed) sizes, without checksums.
    pub fn encode(sizes: &[(u32, u32)]) -> Vec<u8> {
        let body = sizes.len() * 8 + FOOTER as usize;
        let mut out = Vec::with_capacity(body + SKIP_HEADER as usize);
        out.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        out.extend_from_slice(&(body as u32).to_le_bytes());
        for (c, d) in sizes {
            out.extend_from_slice(&c.to_le_bytes());
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&(sizes.len() as u32).to_le_bytes());
        out.push(0);
        out.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
        out
    }
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn bad(e: TableError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Compresses `src` into `dest` (replaced) in the seekable format: frames of
/// `frame_bytes` of input each (the last shorter), each compressed by
/// `zstd <zstd_args>` alone (so any frame decodes without the others), on
/// up to `threads` zstd processes at once, then the table. The frames
/// record their decompressed size, so `zstd -l` lists them.
pub fn compress(
    src: &Path,
    dest: &Path,
    frame_bytes: u32,
    zstd_args: &[&str],
    threads: usize,
) -> io::Result<()> {
    let input = File::open(src)?;
    let len = input.metadata()?.len();
    let count = len.div_ceil(u64::from(frame_bytes)).max(1);
    // Input bytes of frame `i` (the last one shorter).
    let frame_len = |i: u64| (len - i * u64::from(frame_bytes)).min(u64::from(frame_bytes));
    let next = std::sync::atomic::AtomicU64::new(0);
    let outputs = std::sync::Mutex::new(vec![Vec::new(); count as usize]);
    let work = || -> io::Result<()> {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= count {
                return Ok(());
            }
            let mut chunk = vec![0u8; frame_len(i) as usize];
            input.read_exact_at(&mut chunk, i * u64::from(frame_bytes))?;
            let frame = zstd_one(&chunk, zstd_args)?;
            outputs.lock().map_err(|_| io::Error::other("poisoned"))?[i as usize] = frame;
        }
    };
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.max(1)).map(|_| s.spawn(work)).collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(io::Error::other("panicked")))
        })
    })?;
    let frames = outputs
        .into_inner()
        .map_err(|_| io::Error::other("poisoned"))?;
    let mut sizes = Vec::with_capacity(frames.len());
    for (i, f) in (0..).zip(&frames) {
        let c = u32::try_from(f.len())
            .map_err(|_| io::Error::other("a compressed frame over 4 GiB"))?;
        sizes.push((c, frame_len(i) as u32));
    }
    let tmp = dest.with_extension("partial");
    let mut out = File::create(&tmp)?;
    for f in &frames {
        out.write_all(f)?;
    }
    out.write_all(&SeekTable::encode(&sizes))?;
    out.sync_all()?;
    drop(out);
    std::fs::rename(&tmp, dest)
}

/// Waits for a zstd child (its stderr piped); a failure becomes an error
/// saying `zstd <doing> (<status>): <what it printed>`.
pub(crate) fn wait(mut child: Child, doing: &str) -> io::Result<()> {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = child.wait()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "zstd {doing} ({status}): {}",
            err.trim()
        )));
    }
    Ok(())
}

/// The stdin and stdout pipes of a zstd spawned with both piped.
pub(crate) fn pipes(child: &mut Child) -> io::Result<(ChildStdin, ChildStdout)> {
    let no = |what| io::Error::other(format!("zstd has no {what}"));
    let stdin = child.stdin.take().ok_or_else(|| no("stdin"))?;
    let stdout = child.stdout.take().ok_or_else(|| no("stdout"))?;
    Ok((stdin, stdout))
}

/// One frame: `chunk` through `zstd -c <args>` (fed from a second thread,
/// so neither pipe can fill up while the other waits).
fn zstd_one(chunk: &[u8], args: &[&str]) -> io::Result<Vec<u8>> {
    let mut child = Command::new("zstd")
        .args(["-q", "-c"])
        .args(args)
        .arg(format!("--stream-size={}", chunk.len()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run zstd: {e}")))?;
    let (mut stdin, mut stdout) = pipes(&mut child)?;
    let mut frame = Vec::new();
    let (fed, read) = std::thread::scope(|s| {
        let feeder = s.spawn(move || stdin.write_all(chunk));
        let read = stdout.read_to_end(&mut frame);
        (feeder.join(), read)
    });
    wait(child, "failed")?;
    fed.unwrap_or_else(|_| Err(io::Error::other("panicked")))?;
    read?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> io::Result<Option<SeekTable>> {
        SeekTable::parse(bytes.len() as u64, &mut |buf, at| {
            let at = at as usize;
            buf.copy_from_slice(&bytes[at..at + buf.len()]);
            Ok(())
        })
    }

    fn kind(e: io::Error) -> TableError {
        *e.into_inner().unwrap().downcast::<TableError>().unwrap()
    }

    #[test]
    fn table_round_trips_and_places_frames() {
        let mut file = vec![7u8; 10 + 20 + 5];
        file.extend(SeekTable::encode(&[(10, 100), (20, 200), (5, 7)]));
        let t = parse(&file).unwrap().unwrap();
        assert_eq!(t.decompressed_len(), 307);
        assert_eq!(
            t.frames()[1],
            Frame {
                offset: 10,
                len: 20,
                out_offset: 100,
                out_len: 200
            }
        );
        assert_eq!(t.frames()[2].offset, 30);
    }

    #[test]
    fn plain_files_have_no_table() {
        assert_eq!(parse(b"").unwrap(), None);
        assert_eq!(
            parse(&[
                0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ])
            .unwrap(),
            None
        );
    }

    #[test]
    fn a_table_that_does_not_describe_the_file_is_refused() {
        let frames = vec![1u8; 30];
        // One byte more before the table than it lists.
        let mut file = frames.clone();
        file.push(0);
        file.extend(SeekTable::encode(&[(10, 100), (20, 200)]));
        assert_eq!(
            kind(parse(&file).unwrap_err()),
            TableError::Coverage {
                listed: 30,
                actual: 31
            }
        );
        // An empty frame.
        let mut file = frames.clone();
        file.extend(SeekTable::encode(&[(30, 0)]));
        assert_eq!(kind(parse(&file).unwrap_err()), TableError::EmptyFrame(0));
        // More frames than the file holds.
        let mut file = frames.clone();
        file.extend(SeekTable::encode(&[(10, 100), (20, 200)]));
        let n = file.len() - 9;
        file[n..n + 4].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(kind(parse(&file).unwrap_err()), TableError::Frames(1000));
        // A damaged skippable-frame header.
        let mut file = frames.clone();
        file.extend(SeekTable::encode(&[(10, 100), (20, 200)]));
        file[30] ^= 1;
        assert_eq!(kind(parse(&file).unwrap_err()), TableError::Header);
        // Reserved descriptor bits.
        let mut file = frames;
        file.extend(SeekTable::encode(&[(10, 100), (20, 200)]));
        let n = file.len() - 5;
        file[n] = 0x04;
        assert_eq!(kind(parse(&file).unwrap_err()), TableError::Descriptor(4));
    }

    #[test]
    fn a_damaged_table_in_a_file_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.zst");
        let mut file = vec![1u8; 31];
        file.extend(SeekTable::encode(&[(10, 100), (20, 200)]));
        std::fs::write(&path, &file).unwrap();
        let e = SeekTable::read(&path).unwrap_err().to_string();
        assert!(
            e.contains("image.zst") && e.contains("30 bytes") && e.contains("medium again"),
            "{e}"
        );
    }

    #[test]
    fn checksummed_tables_are_read() {
        let mut file = vec![0u8; 12];
        file.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        file.extend_from_slice(&(12u32 * 2 + 9).to_le_bytes());
        for (c, d) in [(5u32, 50u32), (7, 70)] {
            file.extend_from_slice(&c.to_le_bytes());
            file.extend_from_slice(&d.to_le_bytes());
            file.extend_from_slice(&0xdead_beefu32.to_le_bytes());
        }
        file.extend_from_slice(&2u32.to_le_bytes());
        file.push(0x80);
        file.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
        let t = parse(&file).unwrap().unwrap();
        assert_eq!(t.decompressed_len(), 120);
        assert_eq!(t.frames()[1].offset, 5);
    }

    #[test]
    fn compressed_file_decodes_whole_and_frame_by_frame() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("in");
        let data: Vec<u8> = (0..(3 << 20) + 1234u32)
            .map(|i| (i / 7 % 253) as u8)
            .collect();
        std::fs::write(&src, &data).unwrap();
        let zst = dir.path().join("in.zst");
        compress(&src, &zst, 1 << 20, &["-3"], 2).unwrap();
        let t = SeekTable::read(&zst).unwrap().unwrap();
        assert_eq!(t.frames().len(), 4);
        assert_eq!(t.decompressed_len(), data.len() as u64);
        // zstd reads the whole file as one stream, table skipped.
        let whole = Command::new("zstd")
            .args(["-q", "-d", "-c"])
            .arg(&zst)
            .output()
            .unwrap();
        assert!(whole.status.success());
        assert!(whole.stdout == data);
        // And each frame alone gives its own part.
        let bytes = std::fs::read(&zst).unwrap();
        let f = t.frames()[2];
        let part = dir.path().join("part.zst");
        std::fs::write(
            &part,
            &bytes[f.offset as usize..(f.offset + f.len) as usize],
        )
        .unwrap();
        let out = Command::new("zstd")
            .args(["-q", "-d", "-c"])
            .arg(&part)
            .output()
            .unwrap();
        assert!(out.stdout == data[f.out_offset as usize..(f.out_offset + f.out_len) as usize]);
    }
}
