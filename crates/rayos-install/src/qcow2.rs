//! A qcow2 (version 3) image written from a sequential stream of raw disk
//! bytes: how the installer turns the compressed Debian VM image on the
//! medium into the Linux VM's thin disk in one pass, with no raw copy in
//! between (the installer stages data-volume files in RAM).
//!
//! Layout written: cluster 0 header, cluster 1 L1 table (as many clusters
//! as the virtual size needs), then data clusters in stream order (all-zero
//! clusters are left unallocated: they read as zeros), then the L2 tables,
//! the refcount blocks and the refcount table. 64 KiB clusters, 16-bit
//! refcounts, no compression, no backing file, no snapshots; the virtual
//! size may be larger than the stream (the rest reads as zeros), which is
//! how the VM's disk gets its chosen size.
//!
//! [`grow`] gives such an image a larger virtual size in place, which is
//! how the Debian VM image, shipped as a qcow2 of its own size, becomes a
//! disk of the size the person chose without a copy.
//!
//! Proof: `qemu-img check` finds no error and `qemu-img compare` finds the
//! image equal to its raw input; a grown image checks clean, keeps its
//! data and takes writes at its new end (`tests` below, with QEMU's tools).

use rayos_base::io::read_full;
use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// The cluster size of the images written (64 KiB, qemu-img's default).
pub const CLUSTER: u64 = 64 * 1024;
const CLUSTER_BITS: u32 = 16;
/// L2 entries per cluster (8 bytes each).
const L2_ENTRIES: u64 = CLUSTER / 8;
/// 16-bit refcounts: entries per refcount block.
const REFS_PER_BLOCK: u64 = CLUSTER / 2;
const OFLAG_COPIED: u64 = 1 << 63;

/// Clusters read (and at most written) per call: 1 MiB, so a pipe or file
/// is read and the image written in large pieces.
const CHUNK_CLUSTERS: u64 = 16;

/// True when every byte of `b` is zero. ORs 64-byte blocks, which the
/// compiler turns into vector instructions; a byte-at-a-time `any` was the
/// writer's largest own cost (most of the Debian image's 2 GiB are zero
/// clusters, each read to its end).
fn is_zero(b: &[u8]) -> bool {
    let mut blocks = b.chunks_exact(64);
    blocks.all(|c| c.iter().fold(0u8, |acc, &x| acc | x) == 0)
        && blocks.remainder().iter().all(|&x| x == 0)
}

/// Writes `input` (raw disk bytes, at most `virtual_size`) as a qcow2 image
/// of `virtual_size` bytes to `out` (positioned at 0, empty).
/// `progress(bytes_read)` is called after every 1 MiB read. Returns the
/// number of input bytes.
pub fn write_from_stream<R: Read, W: Write + Seek>(
    input: &mut R,
    out: &mut W,
    virtual_size: u64,
    progress: &mut dyn FnMut(u64),
) -> io::Result<u64> {
    let virtual_size = virtual_size.div_ceil(512) * 512;
    let clusters = virtual_size.div_ceil(CLUSTER);
    let l1_entries = clusters.div_ceil(L2_ENTRIES);
    let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER).max(1);
    // Host clusters in use so far: header + L1.
    let mut next = 1 + l1_clusters;
    // guest cluster index -> host cluster index
    let mut map: BTreeMap<u64, u64> = BTreeMap::new();
    // Read a chunk of clusters at a time and write each run of non-zero
    // clusters with one call: data clusters go to consecutive host
    // clusters, so the output is written strictly in order from one seek
    // (no seek per cluster, which would also flush a `BufWriter`).
    let mut buf = vec![0u8; (CLUSTER * CHUNK_CLUSTERS) as usize];
    let mut read = 0u64;
    let mut guest = 0u64;
    out.seek(SeekFrom::Start(next * CLUSTER))?;
    loop {
        let n = read_full(input, &mut buf)?;
        if n == 0 {
            break;
        }
        let in_chunk = (n as u64).div_ceil(CLUSTER);
        if read + n as u64 > virtual_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the image is larger than the disk size {virtual_size}"),
            ));
        }
        // A partial last cluster reads as if padded with zeros.
        let used = (in_chunk * CLUSTER) as usize;
        buf[n..used].fill(0);
        let mut run: Option<usize> = None;
        for (i, c) in buf[..used].chunks_exact(CLUSTER as usize).enumerate() {
            if is_zero(c) {
                if let Some(start) = run.take() {
                    out.write_all(&buf[start * CLUSTER as usize..i * CLUSTER as usize])?;
                }
            } else {
                run.get_or_insert(i);
                map.insert(guest + i as u64, next);
                next += 1;
            }
        }
        if let Some(start) = run {
            out.write_all(&buf[start * CLUSTER as usize..used])?;
        }
        read += n as u64;
        guest += in_chunk;
        progress(read);
        if n < buf.len() {
            break;
        }
    }

    // L2 tables, one per L1 entry that has data.
    let mut l1 = vec![0u64; l1_entries as usize];
    let mut l2_tables: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (&g, &h) in &map {
        let t = l2_tables
            .entry(g / L2_ENTRIES)
            .or_insert_with(|| vec![0; L2_ENTRIES as usize]);
        t[(g % L2_ENTRIES) as usize] = (h * CLUSTER) | OFLAG_COPIED;
    }
    for (&i, table) in &l2_tables {
        let at = next;
        next += 1;
        l1[i as usize] = (at * CLUSTER) | OFLAG_COPIED;
        out.seek(SeekFrom::Start(at * CLUSTER))?;
        out.write_all(&be_words(table))?;
    }

    // Refcounts: every host cluster up to the end of the refcount
    // structures has refcount 1. Their own size depends on the total, so
    // grow until it fits.
    let mut blocks = 1u64;
    let (table_clusters, total) = loop {
        let table_clusters = (blocks * 8).div_ceil(CLUSTER);
        let total = next + blocks + table_clusters;
        if total <= blocks * REFS_PER_BLOCK {
            break (table_clusters, total);
        }
        blocks += 1;
    };
    let first_block = next;
    let table_at = first_block + blocks;
    let mut reftable = vec![0u64; (table_clusters * CLUSTER / 8) as usize];
    for b in 0..blocks {
        reftable[b as usize] = (first_block + b) * CLUSTER;
        let mut block = vec![0u8; CLUSTER as usize];
        for e in 0..REFS_PER_BLOCK {
            let cluster = b * REFS_PER_BLOCK + e;
            if cluster < total {
                block[(e * 2) as usize..(e * 2 + 2) as usize].copy_from_slice(&1u16.to_be_bytes());
            }
        }
        out.seek(SeekFrom::Start((first_block + b) * CLUSTER))?;
        out.write_all(&block)?;
    }
    out.seek(SeekFrom::Start(table_at * CLUSTER))?;
    out.write_all(&be_words(&reftable))?;

    // L1 table.
    let mut l1_bytes = be_words(&l1);
    l1_bytes.resize((l1_clusters * CLUSTER) as usize, 0);
    out.seek(SeekFrom::Start(CLUSTER))?;
    out.write_all(&l1_bytes)?;

    // Header (version 3, 104 bytes), last: a crash before this leaves a
    // file that is not a qcow2 image at all.
    let mut h = Vec::with_capacity(CLUSTER as usize);
    h.extend_from_slice(b"QFI\xfb");
    h.extend_from_slice(&3u32.to_be_bytes()); // version
    h.extend_from_slice(&0u64.to_be_bytes()); // backing file offset
    h.extend_from_slice(&0u32.to_be_bytes()); // backing file size
    h.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
    h.extend_from_slice(&virtual_size.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // crypt method
    h.extend_from_slice(&(l1_entries as u32).to_be_bytes());
    h.extend_from_slice(&CLUSTER.to_be_bytes()); // l1 table offset
    h.extend_from_slice(&(table_at * CLUSTER).to_be_bytes()); // refcount table offset
    h.extend_from_slice(&(table_clusters as u32).to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // snapshots
    h.extend_from_slice(&0u64.to_be_bytes()); // snapshots offset
    h.extend_from_slice(&0u64.to_be_bytes()); // incompatible features
    h.extend_from_slice(&0u64.to_be_bytes()); // compatible features
    h.extend_from_slice(&0u64.to_be_bytes()); // autoclear features
    h.extend_from_slice(&4u32.to_be_bytes()); // refcount order: 16 bits
    h.extend_from_slice(&104u32.to_be_bytes()); // header length
    h.extend_from_slice(&0u64.to_be_bytes()); // end of header extensions
    out.seek(SeekFrom::Start(0))?;
    out.write_all(&h)?;
    // The file ends with the refcount table.
    out.seek(SeekFrom::Start((table_at + table_clusters) * CLUSTER))?;
    out.flush()?;
    Ok(read)
}

/// The magic at the start of every qcow2 image.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Bytes of a version 3 header that [`Header::parse`] reads.
pub const HEADER_BYTES: usize = 104;
/// QEMU's own limit on an L1 table (`QCOW_MAX_L1_SIZE`, 32 MiB).
const MAX_L1_ENTRIES: u64 = (32 << 20) / 8;

/// What [`grow`] needs of a qcow2 header, checked to be an image it can
/// grow: version 3, no backing file, no encryption, no snapshots, no
/// incompatible feature (dirty, corrupt, external data file, …) — which
/// is what [`write_from_stream`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// `cluster_bits`: clusters of `1 << cluster_bits` bytes.
    pub cluster_bits: u32,
    /// The virtual disk size in bytes.
    pub size: u64,
    /// Entries in the L1 table.
    pub l1_size: u32,
    /// Where the L1 table starts in the file.
    pub l1_table_offset: u64,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn be32(h: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&h[at..at + 4]);
    u32::from_be_bytes(b)
}

fn be64(h: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[at..at + 8]);
    u64::from_be_bytes(b)
}

impl Header {
    /// Parses and checks the first [`HEADER_BYTES`] of an image (untrusted
    /// bytes: the image comes from an installer medium).
    pub fn parse(h: &[u8]) -> io::Result<Header> {
        if h.len() < HEADER_BYTES || h[..4] != MAGIC {
            return Err(invalid("not a qcow2 image (no qcow2 header)".into()));
        }
        let version = be32(h, 4);
        if version != 3 {
            return Err(invalid(format!(
                "qcow2 version {version}: only version 3 images are written here"
            )));
        }
        if be64(h, 8) != 0 {
            return Err(invalid("the qcow2 image has a backing file".into()));
        }
        let cluster_bits = be32(h, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(invalid(format!(
                "qcow2 cluster_bits {cluster_bits} out of range"
            )));
        }
        if be32(h, 32) != 0 {
            return Err(invalid("the qcow2 image is encrypted".into()));
        }
        if be32(h, 60) != 0 {
            return Err(invalid("the qcow2 image has snapshots".into()));
        }
        let incompatible = be64(h, 72);
        if incompatible != 0 {
            return Err(invalid(format!(
                "the qcow2 image has incompatible features {incompatible:#x} (dirty, corrupt, external data or another compression)"
            )));
        }
        let header = Header {
            cluster_bits,
            size: be64(h, 24),
            l1_size: be32(h, 36),
            l1_table_offset: be64(h, 40),
        };
        let cluster = header.cluster();
        if header.l1_table_offset == 0 || !header.l1_table_offset.is_multiple_of(cluster) {
            return Err(invalid(format!(
                "qcow2 L1 table offset {} is not a cluster boundary",
                header.l1_table_offset
            )));
        }
        if header.l1_entries_for(header.size) > u64::from(header.l1_size) {
            return Err(invalid(format!(
                "the qcow2 L1 table ({} entries) does not cover the image's {} bytes",
                header.l1_size, header.size
            )));
        }
        Ok(header)
    }

    fn cluster(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// L1 entries a virtual size needs.
    fn l1_entries_for(&self, size: u64) -> u64 {
        let per_l2 = self.cluster() / 8 * self.cluster();
        size.div_ceil(per_l2)
    }

    /// L1 entries that fit in the clusters the L1 table already has.
    fn l1_capacity(&self) -> u64 {
        let cluster = self.cluster();
        (u64::from(self.l1_size) * 8).div_ceil(cluster) * cluster / 8
    }
}

/// Grows the qcow2 image `f` to `new_size` bytes in place (rounded up to
/// 512 bytes, as [`write_from_stream`] does): the header's size, and its
/// L1 table's entry count when the table's clusters already have room —
/// one 64 KiB cluster holds the entries of a 4 TiB disk, so nothing is
/// allocated or moved and the added space reads as zeros. The entries
/// taken into use must be zero. Refuses to shrink (`InvalidInput`) and a
/// size the table has no room for (`Unsupported`). Returns the header as
/// it was.
pub fn grow<F: Read + Write + Seek>(f: &mut F, new_size: u64) -> io::Result<Header> {
    let mut h = [0u8; HEADER_BYTES];
    f.seek(SeekFrom::Start(0))?;
    f.read_exact(&mut h)
        .map_err(|e| invalid(format!("cannot read the qcow2 header: {e}")))?;
    let header = Header::parse(&h)?;
    let new_size = new_size
        .checked_next_multiple_of(512)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "disk size out of range"))?;
    if new_size < header.size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the image is {} bytes, more than the disk size {new_size}",
                header.size
            ),
        ));
    }
    if new_size == header.size {
        return Ok(header);
    }
    let entries = header.l1_entries_for(new_size);
    if entries > header.l1_capacity() || entries > MAX_L1_ENTRIES {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "the qcow2 image's L1 table has room for {} entries, {new_size} bytes need {entries}",
                header.l1_capacity()
            ),
        ));
    }
    // The entries taken into use must map nothing yet.
    let old = u64::from(header.l1_size);
    if entries > old {
        let at = header
            .l1_table_offset
            .checked_add(old * 8)
            .ok_or_else(|| invalid("qcow2 L1 table offset out of range".into()))?;
        f.seek(SeekFrom::Start(at))?;
        let mut rest = vec![0u8; ((entries - old) * 8) as usize];
        f.read_exact(&mut rest)
            .map_err(|e| invalid(format!("cannot read the qcow2 L1 table: {e}")))?;
        if !is_zero(&rest) {
            return Err(invalid(
                "the qcow2 L1 table has entries past its size: not growing it".into(),
            ));
        }
    }
    // size (24..32), crypt method (32..36, checked zero), l1_size (36..40)
    // in one write.
    let mut fields = [0u8; 16];
    fields[..8].copy_from_slice(&new_size.to_be_bytes());
    let l1 = u32::try_from(entries.max(old)).map_err(|_| invalid("L1 size out of range".into()))?;
    fields[12..].copy_from_slice(&l1.to_be_bytes());
    f.seek(SeekFrom::Start(24))?;
    f.write_all(&fields)?;
    f.flush()?;
    Ok(header)
}

fn be_words(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, File};
    use std::process::Command;

    fn qemu_img(args: &[&str]) -> (bool, String) {
        let o = Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img (qemu-utils)");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    }

    /// Hands out at most `step` bytes per read, as a pipe does.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn roundtrip(raw: &[u8], virtual_size: u64) {
        roundtrip_from(&mut &raw[..], raw, virtual_size);
    }

    fn roundtrip_from(mut input: &mut dyn Read, raw: &[u8], virtual_size: u64) {
        let dir = tempfile::tempdir().unwrap();
        let rawp = dir.path().join("in.raw");
        let f = File::create(&rawp).unwrap();
        f.set_len(virtual_size).unwrap();
        drop(f);
        let mut f = File::options().write(true).open(&rawp).unwrap();
        f.write_all(raw).unwrap();
        drop(f);
        let q = dir.path().join("out.qcow2");
        let mut out = File::create(&q).unwrap();
        let mut seen = 0;
        let n = write_from_stream(&mut input, &mut out, virtual_size, &mut |b| seen = b).unwrap();
        drop(out);
        assert_eq!((n, seen), (raw.len() as u64, raw.len() as u64));
        let (ok, text) = qemu_img(&["check", "-f", "qcow2", q.to_str().unwrap()]);
        assert!(ok && text.contains("No errors"), "{text}");
        let (ok, text) = qemu_img(&[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            rawp.to_str().unwrap(),
            q.to_str().unwrap(),
        ]);
        assert!(ok, "{text}");
        let (_, info) = qemu_img(&["info", "--output=json", q.to_str().unwrap()]);
        assert!(
            info.contains(&format!("\"virtual-size\": {virtual_size}")),
            "{info}"
        );
        // Thin: only the non-zero clusters take space.
        let nonzero = raw
            .chunks(CLUSTER as usize)
            .filter(|c| c.iter().any(|&b| b != 0))
            .count() as u64;
        assert!(fs::metadata(&q).unwrap().len() <= (nonzero + 8) * CLUSTER);
    }

    #[test]
    fn stream_to_qcow2_equals_its_input() {
        // Data across two L2 tables (> 512 MiB apart), zero runs, a
        // partial last cluster, and a virtual size beyond the stream.
        let mut raw = vec![0u8; 3 * CLUSTER as usize + 1000];
        for (i, b) in raw.iter_mut().enumerate().take(CLUSTER as usize) {
            *b = (i % 251) as u8;
        }
        raw[2 * CLUSTER as usize + 5] = 7;
        raw[3 * CLUSTER as usize + 999] = 9;
        roundtrip(&raw, 8 << 30);
    }

    #[test]
    fn data_past_the_first_l2_table() {
        let mut raw = vec![0u8; (L2_ENTRIES * CLUSTER + 2 * CLUSTER) as usize];
        raw[0] = 1;
        let far = (L2_ENTRIES * CLUSTER + CLUSTER + 3) as usize;
        raw[far] = 2;
        roundtrip(&raw, 2 << 30);
    }

    #[test]
    fn zero_detection_sees_every_byte() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0u8; 100]));
        for len in [1usize, 63, 64, 65, 130, CLUSTER as usize] {
            for at in [0, len / 2, len - 1] {
                let mut b = vec![0u8; len];
                b[at] = 0x80;
                assert!(!is_zero(&b), "len {len}, byte {at}");
            }
        }
    }

    #[test]
    fn runs_across_read_chunks_and_short_reads() {
        // Non-zero runs that start and end inside a 1 MiB read chunk and
        // one that crosses a chunk boundary; zero clusters between them;
        // a last cluster cut short; read through a pipe-like reader that
        // never fills a chunk in one call.
        let c = CLUSTER as usize;
        let chunk = (CHUNK_CLUSTERS * CLUSTER) as usize;
        let mut raw = vec![0u8; 2 * chunk + 5 * c + 100];
        let mut fill = |from: usize, to: usize, v: u8| {
            for (i, b) in raw[from..to].iter_mut().enumerate() {
                *b = v ^ (i % 253) as u8;
            }
        };
        fill(c, 3 * c, 1);
        fill(5 * c + 7, 5 * c + 8, 2);
        fill(chunk - 2 * c, chunk + 3 * c, 3);
        fill(2 * chunk + 4 * c, 2 * chunk + 5 * c + 100, 4);
        roundtrip_from(
            &mut Trickle {
                data: &raw,
                step: 65_000,
            },
            &raw,
            4 << 30,
        );
        roundtrip(&raw, 4 << 30);
    }

    fn qemu_io(img: &str, cmd: &str) -> (bool, String) {
        let o = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", cmd, img])
            .output()
            .expect("qemu-io (qemu-utils)");
        let text =
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        // qemu-io exits 0 even when a pattern check fails; it says so.
        (o.status.success() && !text.contains("failed"), text)
    }

    /// A small image written by `write_from_stream` at exactly its data's size.
    fn small_image(dir: &std::path::Path) -> (std::path::PathBuf, Vec<u8>) {
        let mut raw = vec![0u8; 3 * CLUSTER as usize];
        raw[..CLUSTER as usize].fill(0x5a);
        raw[2 * CLUSTER as usize + 1] = 0x11;
        let q = dir.join("small.qcow2");
        let mut out = File::create(&q).unwrap();
        write_from_stream(&mut &raw[..], &mut out, raw.len() as u64, &mut |_| {}).unwrap();
        (q, raw)
    }

    #[test]
    fn grown_image_is_checked_clean_keeps_its_data_and_takes_writes_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (q, raw) = small_image(dir.path());
        let qs = q.to_str().unwrap();
        let mut f = File::options().read(true).write(true).open(&q).unwrap();
        let before = grow(&mut f, 32 << 30).unwrap();
        drop(f);
        assert_eq!((before.size, before.l1_size), (raw.len() as u64, 1));
        let (ok, text) = qemu_img(&["check", "-f", "qcow2", qs]);
        assert!(ok && text.contains("No errors"), "{text}");
        let (_, info) = qemu_img(&["info", "--output=json", qs]);
        assert!(
            info.contains(&format!("\"virtual-size\": {}", 32u64 << 30)),
            "{info}"
        );
        // The old data is there, the new space reads as zeros and takes
        // writes past the old L1 entries (which QEMU then allocates).
        for cmd in [
            "read -P 0x5a 0 64k",
            "read -P 0x11 131073 1",
            "read -P 0 196608 1M",
            "read -P 0 31G 64k",
            "write -P 0xab 31G 64k",
            "read -P 0xab 31G 64k",
        ] {
            let (ok, text) = qemu_io(qs, cmd);
            assert!(ok, "{cmd}: {text}");
        }
        let (ok, text) = qemu_img(&["check", "-f", "qcow2", qs]);
        assert!(ok && text.contains("No errors"), "{text}");
        // Growing again (to the same or a larger size) is fine too.
        let mut f = File::options().read(true).write(true).open(&q).unwrap();
        assert_eq!(grow(&mut f, 32 << 30).unwrap().size, 32 << 30);
    }

    #[test]
    fn grow_refuses_shrinking_a_full_table_and_foreign_images_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (q, raw) = small_image(dir.path());
        let original = fs::read(&q).unwrap();
        let mut f = File::options().read(true).write(true).open(&q).unwrap();
        let e = grow(&mut f, raw.len() as u64 - 512).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        // One 64 KiB L1 cluster maps 4 TiB; a 5 TiB disk needs a bigger one.
        let e = grow(&mut f, 5 << 40).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
        drop(f);
        assert_eq!(fs::read(&q).unwrap(), original);

        let refused = |patch: &dyn Fn(&mut Vec<u8>), what: &str| {
            let mut img = original.clone();
            patch(&mut img);
            let mut c = std::io::Cursor::new(img.clone());
            let e = grow(&mut c, 8 << 30).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{what}: {e}");
            assert!(e.to_string().contains(what), "{what}: {e}");
            assert_eq!(c.into_inner(), img, "{what}: written");
        };
        refused(&|i| i[0] = b'X', "not a qcow2 image");
        refused(&|i| i[7] = 2, "version 2");
        refused(&|i| i[15] = 1, "backing file");
        refused(&|i| i[79] = 1, "incompatible features");
        refused(&|i| i[63] = 1, "snapshots");
        refused(&|i| i[35] = 1, "encrypted");
        refused(&|i| i[47] = 8, "not a cluster boundary");
        // An L1 entry past the table's size is something this code did
        // not write: do not take it into use.
        refused(
            &|i| i[CLUSTER as usize + 8 + 7] = 0x10,
            "entries past its size",
        );
        refused(&|i| i.truncate(50), "cannot read the qcow2 header");
    }

    #[test]
    fn an_image_larger_than_the_disk_is_refused() {
        let raw = vec![1u8; 3 * CLUSTER as usize];
        let mut out = std::io::Cursor::new(Vec::new());
        let e = write_from_stream(&mut &raw[..], &mut out, CLUSTER, &mut |_| {}).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        // Also a single byte past the (512-byte rounded) size.
        let e = write_from_stream(&mut &raw[..1025], &mut out, 1000, &mut |_| {}).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
