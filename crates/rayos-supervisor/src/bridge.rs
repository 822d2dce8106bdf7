//! The agent bridge's in-VM channel (docs/agent-bridge.md): an agent
//! inside a VM reaches the bridge through a virtio-serial port
//! (`org.rayos.agent.0`) and speaks MCP on it, one JSON-RPC message per
//! line, exactly as `rayos mcp` does on stdio.
//!
//! The port exists only in VMs whose policy says `agent_bridge = "read"`
//! or `"full"` ([`rayos_state::AgentBridge`]); with `"off"` (the default)
//! the VM has no such device, so nothing inside it can reach the bridge.
//! `"read"` sessions get the tools that look (list, screenshots, console
//! logs, events); others are refused. Every message is logged on the data
//! volume (`logs/agent-bridge.log`: time, VM, access, method or tool,
//! outcome; never the arguments, which may hold typed passwords).
//!
//! Mechanics: QEMU serves the port's host end on `bridge.sock` in the VM's
//! run directory. A thread looks every second for running VMs with the
//! bridge on and no session, and connects one; the session ends when QEMU
//! closes the socket (the VM stopped). Each session answers through a
//! client of the daemon's own API socket, so every rule of the API
//! (routing of input, states, limits) applies to an agent in a VM too.
//!
//! Limits: the port has no flow back to a guest that is not reading (QEMU
//! drops what the guest writes while no session is connected: a guest
//! retries); one message is answered at a time per VM.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rayos_api::Client;
use rayos_api::mcp::{Access, EventLog, MAX_LINE, Server};
use rayos_state::AgentBridge;
use uuid::Uuid;

use crate::supervisor::Supervisor;

/// The log's name under the data volume's `logs/`.
pub const LOG: &str = "agent-bridge.log";
/// The log is moved to `agent-bridge.log.1` beyond this size.
const LOG_MAX: u64 = 1 << 20;
const TICK: Duration = Duration::from_secs(1);

/// Starts the thread that connects sessions to VMs with the bridge on.
pub fn spawn(sup: Arc<Supervisor>, api_socket: PathBuf) -> std::io::Result<()> {
    let client = Client::new(api_socket);
    let events = EventLog::follow(&client);
    let log = sup.layout().logs().join(LOG);
    let active: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
    std::thread::Builder::new()
        .name("agent-bridge".into())
        .spawn(move || {
            loop {
                if sup.is_shutting_down() {
                    return;
                }
                for t in sup.bridge_targets() {
                    let access = match t.level {
                        AgentBridge::Off => continue,
                        AgentBridge::Read => Access::Read,
                        AgentBridge::Full => Access::Full,
                    };
                    let mut a = active.lock().unwrap_or_else(|p| p.into_inner());
                    if a.contains(&t.id) {
                        continue;
                    }
                    let Ok(stream) = UnixStream::connect(&t.socket) else {
                        continue;
                    };
                    a.insert(t.id);
                    let server = Server::new(client.clone(), access, events.clone());
                    let (active, log) = (Arc::clone(&active), log.clone());
                    let spawned = std::thread::Builder::new()
                        .name(format!("agent-bridge-{}", t.name))
                        .spawn(move || {
                            serve(stream, &server, &t.name, access, &log);
                            active
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .remove(&t.id);
                        });
                    if spawned.is_err() {
                        a.remove(&t.id);
                    }
                }
                std::thread::sleep(TICK);
            }
        })
        .map(|_| ())
}

/// A running VM whose policy enables the bridge.
pub(crate) struct Target {
    pub name: String,
    pub id: Uuid,
    pub level: AgentBridge,
    pub socket: PathBuf,
}

/// Answers one VM's messages until QEMU closes the channel.
fn serve(stream: UnixStream, server: &Server, vm: &str, access: Access, log: &Path) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut input = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut input)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.len() > MAX_LINE && !line.ends_with(b"\n") {
            // A guest that sends endless bytes: drop the session; the
            // next tick connects a fresh one.
            write_log(log, vm, access, "(line too long)", "error");
            return;
        }
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        let h = server.handle_logged(&text);
        write_log(log, vm, access, &h.what, h.outcome);
        if let Some(reply) = h.reply {
            let mut bytes = serde_json::to_vec(&reply).unwrap_or_default();
            bytes.push(b'\n');
            if out.write_all(&bytes).is_err() {
                return;
            }
        }
    }
}

/// Appends one line to the bridge's log (best effort: a full data volume
/// must not stop the bridge; the daemon's stderr says so).
fn write_log(log: &Path, vm: &str, access: Access, what: &str, outcome: &str) {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let access = match access {
        Access::Read => "read",
        Access::Full => "full",
    };
    let what = if what.is_empty() {
        "(unparsable)"
    } else {
        what
    };
    let line = format!("{ms} vm={vm} access={access} {what} {outcome}\n");
    if fs::metadata(log).is_ok_and(|m| m.len() > LOG_MAX) {
        let _ = fs::rename(log, log.with_extension("log.1"));
    }
    if let Some(dir) = log.parent() {
        let _ = fs::create_dir_all(dir);
    }
    let r = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = r {
        eprintln!("rayosd: cannot log to {}: {e}", log.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_name_the_vm_access_call_and_outcome_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs").join(LOG);
        write_log(&log, "lin", Access::Read, "tools/call type_text", "refused");
        let text = fs::read_to_string(&log).unwrap();
        assert!(
            text.ends_with(" vm=lin access=read tools/call type_text refused\n"),
            "{text}"
        );
        fs::write(&log, vec![b'x'; LOG_MAX as usize + 1]).unwrap();
        write_log(&log, "lin", Access::Full, "", "error");
        assert_eq!(
            fs::metadata(log.with_extension("log.1")).unwrap().len(),
            LOG_MAX + 1
        );
        assert!(
            fs::read_to_string(&log)
                .unwrap()
                .contains("(unparsable) error")
        );
    }
}
