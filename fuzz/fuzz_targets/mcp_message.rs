//! The agent bridge's MCP messages (`rayos_api::mcp`): a line from an agent
//! — on the host, or inside a VM through the in-VM channel, so untrusted —
//! must give a JSON-RPC answer (or none, for a notification), never a
//! panic. The tools reach no daemon here (the socket does not exist), so
//! every argument path runs up to the API call and fails there.
//!
//! Needs in fuzz/Cargo.toml: `rayos-api = { path = "../crates/rayos-api" }`
//! and a `[[bin]] name = "mcp_message"` entry.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rayos_api::Client;
use rayos_api::mcp::{Access, EventLog, Server};

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let access = if data.first().is_some_and(|b| b & 1 == 1) {
        Access::Read
    } else {
        Access::Full
    };
    let server = Server::new(
        Client::new("/nonexistent/rayos-fuzz-api.sock"),
        access,
        EventLog::default(),
    );
    let h = server.handle_logged(&line);
    if let Some(reply) = h.reply {
        assert_eq!(reply["jsonrpc"], "2.0");
        assert!(reply.get("result").is_some() != reply.get("error").is_some());
    }
});
