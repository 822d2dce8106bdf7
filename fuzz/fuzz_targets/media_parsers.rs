//! The parsers of untrusted bytes read from media and disks: OVMF VARS
//! stores (read after a guest wrote them), PE/UKI headers and bzImage setup
//! headers (rayos-image), and the Debian VM image's qcow2 header and L1
//! table, grown in place by the installer, and the seek table at the end of
//! that image (rayos-install). None may panic or loop on any input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let table = rayos_install::seekable::SeekTable::parse(data.len() as u64, &mut |buf, at| {
        let at = usize::try_from(at).expect("offset inside the input");
        buf.copy_from_slice(&data[at..at + buf.len()]);
        Ok(())
    });
    if let Ok(Some(t)) = table {
        // A table accepted describes the input exactly: frames back to back
        // from its start, outputs likewise.
        let (mut at, mut out) = (0u64, 0u64);
        for f in t.frames() {
            assert!(f.offset == at && f.out_offset == out && f.len > 0 && f.out_len > 0);
            at += f.len;
            out += f.out_len;
        }
        assert!(at < data.len() as u64 && out == t.decompressed_len());
    }
    let _ = rayos_image::ovmf_vars::boot_vars(data);
    let _ = rayos_image::uki::sections_of(data);
    let _ = rayos_image::uki::kernel_release(data);
    // A disk size from the input's last bytes (in 64 KiB units), so growing
    // past the L1 table's first entries is reached too.
    let size = data
        .iter()
        .rev()
        .take(4)
        .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        << 16;
    let mut image = std::io::Cursor::new(data.to_vec());
    if let Ok(before) = rayos_install::qcow2::grow(&mut image, size) {
        // What was grown must parse and say the new size.
        let after = rayos_install::qcow2::Header::parse(image.get_ref()).expect("grown header");
        assert!(after.size >= before.size);
    }
});
