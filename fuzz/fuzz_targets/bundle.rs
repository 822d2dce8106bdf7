//! Update bundles are untrusted bytes (a file the user got from anywhere).
//! Feeds them to the header parser, the manifest parser (which runs only
//! after a signature check in real use, but must be safe on its own) and the
//! whole open + verify path on a file, with a throwaway trusted key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rayos_update::bundle::{self, Bundle, Header};
use rayos_update::keys::SecretKey;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::parse(data) {
        let _ = h.total_len();
        let start = bundle::HEADER_LEN;
        let end = start
            .saturating_add(h.manifest_len as usize)
            .min(data.len());
        let _ = bundle::parse_manifest(&h, &data[start..end]);
    }
    // Any slice as a manifest, with a header that matches its length.
    let h = Header {
        format: bundle::FORMAT_VERSION,
        manifest_len: data.len().min(u32::MAX as usize) as u32,
        signature_len: 0,
        payload_len: 1,
    };
    let _ = bundle::parse_manifest(&h, data);

    let dir = std::env::temp_dir().join(format!("rayos-fuzz-bundle-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let p = dir.join("b.bundle");
    if std::fs::write(&p, data).is_ok() {
        let trusted = [SecretKey::from_seed([7; 32]).public("fuzz")];
        if let Ok(b) = Bundle::open(&p, &trusted) {
            let _ = b.verify_payloads();
            let _ = b.describe();
        }
    }
});
