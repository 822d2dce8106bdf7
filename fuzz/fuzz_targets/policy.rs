//! Policy and registry files come from a disk a person can edit: parsing any
//! bytes must return a value or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = rayos_state::Policy::parse("fuzz", text);
        let _ = rayos_state::MachineConfig::parse("fuzz", text);
        let _ = rayos_state::Registry::parse("fuzz", text);
    }
});
