//! The one PE reader (`rayos_state::pe`) and what recovery builds on it: a
//! recovery UKI read from the system partition may be damaged or cut short.
//! Nothing may panic; every section `parse` accepts lies within the bytes;
//! the installed-mode UKI made from an accepted image has its length.
//! Seeds: `fuzz/corpus/pe/` (a tiny recovery UKI, the headers of systemd's
//! stub).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = rayos_state::pe::parse(data, data.len() as u64) {
        for s in &h.sections {
            assert!(data.get(s.raw_range()).is_some(), "{s:?} outside");
            assert!(data.get(s.data_range()).is_some(), "{s:?} outside");
        }
    }
    // Headers read from the first bytes of a longer file.
    let _ = rayos_state::pe::parse(data, u64::MAX);
    let _ = rayos_init::recovery::uki_version(data);
    if let Ok(out) = rayos_init::recovery::installed_from_recovery(data) {
        assert_eq!(out.len(), data.len());
        assert!(rayos_init::recovery::section(&out, ".cmdline").is_some());
    }
});
