//! Fuzz the disk parsers with arbitrary disk contents: GPT/MBR inspection at
//! both sector sizes, a single-copy read, filesystem probing, and — when a
//! table is accepted — a write/read round trip that must reproduce it.
//! Nothing may panic, loop or allocate without bound.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use rayos_disk::gpt::{self, Gpt, TableCopy, TableState};

fuzz_target!(|data: &[u8]| {
    for ss in [512u32, 4096] {
        let mut dev = Cursor::new(data.to_vec());
        if let Ok(TableState::Gpt(g)) = gpt::inspect(&mut dev, ss) {
            let mut out = Cursor::new(vec![0u8; data.len()]);
            g.write(&mut out).expect("writing an accepted table failed");
            let back = Gpt::read(&mut out, ss).expect("re-reading our own table failed");
            assert_eq!(back, g);
            let _ = g.free_regions(gpt::DEFAULT_ALIGNMENT);
        }
        let _ = Gpt::read_copy(&mut dev, ss, TableCopy::Backup);
    }
    let mut dev = Cursor::new(data);
    let _ = rayos_disk::probe(&mut dev, 0, data.len() as u64);
});
