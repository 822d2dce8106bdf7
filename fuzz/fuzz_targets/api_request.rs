//! rayosd's HTTP request parser and the JSON bodies it accepts: any bytes
//! from a local client must give a request or a 4xx, never a panic, and
//! never more than the limits' worth of memory.
//!
//! Needs in fuzz/Cargo.toml: `rayos-api = { path = "../crates/rayos-api" }`
//! and a `[[bin]] name = "api_request"` entry.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rayos_api::http::{Limits, read_request};
use rayos_api::{
    ConsoleWriteRequest, CreateRequest, ExecRequest, InputRequest, StartRequest, StopRequest,
};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_head: 4096,
        max_headers: 32,
        max_body: 64 * 1024,
    };
    match read_request(&mut std::io::Cursor::new(data), limits) {
        Ok(req) => {
            assert!(req.body.len() <= limits.max_body);
            assert!(req.path.starts_with('/'));
            let _ = serde_json::from_slice::<CreateRequest>(&req.body);
            let _ = serde_json::from_slice::<StartRequest>(&req.body);
            let _ = serde_json::from_slice::<StopRequest>(&req.body);
            let _ = serde_json::from_slice::<InputRequest>(&req.body);
            let _ = serde_json::from_slice::<ConsoleWriteRequest>(&req.body);
            let _ = serde_json::from_slice::<ExecRequest>(&req.body);
        }
        Err(e) => {
            let s = e.status();
            assert!(s == 0 || (400..600).contains(&s), "{s}");
        }
    }
});
