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
//! Proof: `qemu-img check` finds no error and `qemu-img compare` finds the
//! image equal to its raw input (`tests` below, with QEMU's tools).

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

/// Writes `input` (raw disk bytes, at most `virtual_size`) as a qcow2 image
/// of `virtual_size` bytes to `out` (positioned at 0, empty).
/// `progress(bytes_read)` is called after every cluster read. Returns the
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
    let mut buf = vec![0u8; CLUSTER as usize];
    let mut read = 0u64;
    let mut guest = 0u64;
    loop {
        let n = read_full(input, &mut buf)?;
        if n == 0 {
            break;
        }
        if guest >= clusters {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the image is larger than the disk size {virtual_size}"),
            ));
        }
        buf[n..].fill(0);
        if buf.iter().any(|&b| b != 0) {
            out.seek(SeekFrom::Start(next * CLUSTER))?;
            out.write_all(&buf)?;
            map.insert(guest, next);
            next += 1;
        }
        read += n as u64;
        guest += 1;
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

    fn roundtrip(raw: &[u8], virtual_size: u64) {
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
        let n =
            write_from_stream(&mut &raw[..], &mut out, virtual_size, &mut |b| seen = b).unwrap();
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
    fn an_image_larger_than_the_disk_is_refused() {
        let raw = vec![1u8; 3 * CLUSTER as usize];
        let mut out = std::io::Cursor::new(Vec::new());
        let e = write_from_stream(&mut &raw[..], &mut out, CLUSTER, &mut |_| {}).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
