//! `rayos mcp`: the agent bridge as a Model Context Protocol server on
//! stdio (docs/agent-bridge.md; the protocol and tools are
//! `rayos_api::mcp`). One message per line on stdin and stdout; nothing
//! else is written to stdout, logs go to stderr. Full access: whoever can
//! run this can use the API socket anyway.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use rayos_api::Client;
use rayos_api::mcp::{Access, EventLog, MAX_LINE, Server};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct Args {
    /// The daemon's API socket.
    #[arg(long, env = rayos_api::SOCKET_ENV, default_value = rayos_api::DEFAULT_SOCKET)]
    socket: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.socket);
    let server = Server::new(client.clone(), Access::Full, EventLog::follow(&client));
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut out = std::io::stdout().lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n =
            std::io::Read::take(&mut input, MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(ExitCode::SUCCESS);
        }
        let reply = if line.len() > MAX_LINE && !line.ends_with(b"\n") {
            // Skip the rest of the over-long line.
            let mut rest = Vec::new();
            input.read_until(b'\n', &mut rest)?;
            Some(too_long())
        } else {
            server.handle(&String::from_utf8_lossy(&line))
        };
        if let Some(r) = reply {
            let mut bytes = serde_json::to_vec(&r)?;
            bytes.push(b'\n');
            out.write_all(&bytes)?;
            out.flush()?;
        }
    }
}

fn too_long() -> Value {
    json!({ "jsonrpc": "2.0", "id": null, "error": { "code": -32600, "message": format!("message longer than {MAX_LINE} bytes") } })
}
