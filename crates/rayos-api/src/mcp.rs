//! The agent bridge as a Model Context Protocol server (docs/agent-bridge.md):
//! the JSON-RPC 2.0 messages and the tools, over any line transport. `rayos
//! mcp` serves it on stdio; rayosd serves it to agents inside VMs on their
//! in-VM channel, with [`Access::Read`] or [`Access::Full`] by policy.
//!
//! Protocol: one JSON-RPC 2.0 message per line. Methods: `initialize` (the
//! client's protocol version is echoed when known, else the newest known
//! one is offered), `ping`, `tools/list`, `tools/call`; notifications (no
//! `id`) are read and not answered. A tool that fails answers a result
//! with `isError: true` and the daemon's message, so the model can read
//! it; unknown methods and tools and bad arguments are JSON-RPC errors.
//!
//! Every tool is one request to rayosd's API ([`Client`]), so the daemon's
//! rules apply unchanged: routing of input (`hidden`), limits, states.
//! `events` answers from an [`EventLog`] that a thread fills from the
//! daemon's event stream, so it never blocks.
//!
//! Limits: no batches (JSON-RPC arrays), no resources or prompts, no
//! cancellation; requests are answered one at a time in order; lines
//! longer than [`MAX_LINE`] are refused by the transports.
//!
//! Rejected design: an MCP SDK crate. The maintained ones (rmcp) are built
//! on tokio; RayOS is blocking threads throughout, and the framing is a
//! page of code.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use base64ct::Encoding as _;
use serde_json::{Value, json};

use crate::{Button, Client, Event, ExecRequest, InputAction, InputRequest};

/// MCP versions this server speaks (their differences do not touch the
/// parts used here), newest last.
const VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18"];
/// At most this many bytes per message line.
pub const MAX_LINE: usize = 1 << 20;
/// Events kept for the `events` tool.
const KEPT_EVENTS: usize = 256;

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Only the tools that look: list, screenshot, console log, events.
    Read,
    /// Every tool, the ones that act on the VM (input, console, exec) too.
    Full,
}

/// The tools [`Access::Read`] allows.
const READ_TOOLS: &[&str] = &["list_vms", "screenshot", "console_read", "events"];

/// The daemon's recent events, filled by [`EventLog::follow`] and shared
/// by sessions.
#[derive(Clone, Default)]
pub struct EventLog(Arc<Mutex<VecDeque<Event>>>);

impl EventLog {
    /// A log that a thread fills from the daemon's event stream (with its
    /// kept history), reconnecting while the daemon is away; the thread
    /// lives as long as the process.
    pub fn follow(client: &Client) -> EventLog {
        let log = EventLog::default();
        let client = client.clone().with_timeout(None);
        let events = Arc::clone(&log.0);
        let _ = std::thread::Builder::new()
            .name("mcp-events".into())
            .spawn(move || {
                let mut since = 0;
                loop {
                    let _ = client.events(Some(since), |ev| {
                        since = ev.seq;
                        let mut q = events.lock().unwrap_or_else(|p| p.into_inner());
                        if q.len() == KEPT_EVENTS {
                            q.pop_front();
                        }
                        q.push_back(ev);
                        true
                    });
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            });
        log
    }
}

/// What one answered message was, for the in-VM channel's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// The JSON-RPC answer to send back (`None` for notifications).
    pub reply: Option<Value>,
    /// `method` or `tools/call <tool>`; empty when the line did not parse.
    pub what: String,
    /// `ok`, `error` (JSON-RPC error), `failed` (tool error result) or
    /// `refused` (not allowed at this access level).
    pub outcome: &'static str,
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}

fn text(t: impl Into<String>) -> Value {
    json!({ "type": "text", "text": t.into() })
}

/// One MCP session: the daemon's client, what it may do, the events.
pub struct Server {
    client: Client,
    access: Access,
    events: EventLog,
}

/// A tool's failure: shown to the model as an error result.
struct ToolError(String);

impl From<crate::ClientError> for ToolError {
    fn from(e: crate::ClientError) -> Self {
        ToolError(rayos_base::error::chain(&e))
    }
}

/// An argument error: a JSON-RPC "invalid params".
struct BadArgs(String);

impl Server {
    /// A session that calls the daemon through `client`, allows what `access`
    /// says and answers `events` from `events`.
    pub fn new(client: Client, access: Access, events: EventLog) -> Server {
        Server {
            client,
            access,
            events,
        }
    }

    /// Answers one message line, with what it was for logs.
    pub fn handle_logged(&self, line: &str) -> Handled {
        let msg: Value = serde_json::from_str(line.trim()).unwrap_or(Value::Null);
        let method = msg["method"].as_str().unwrap_or("").to_string();
        let what = if method == "tools/call" {
            format!(
                "tools/call {}",
                msg["params"]["name"].as_str().unwrap_or("?")
            )
        } else {
            method
        };
        let reply = self.handle(line);
        let outcome = match &reply {
            None => "ok",
            Some(r) if r.get("error").is_some() => "error",
            Some(r) if r["result"]["isError"] == true => {
                if r["result"]["content"][0]["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(REFUSED))
                {
                    "refused"
                } else {
                    "failed"
                }
            }
            Some(_) => "ok",
        };
        Handled {
            reply,
            what,
            outcome,
        }
    }

    /// Answers one message line; `None` for notifications.
    pub fn handle(&self, line: &str) -> Option<Value> {
        let msg: Value = match serde_json::from_str(line.trim()) {
            Ok(v) => v,
            Err(e) => return Some(error(Value::Null, -32700, &format!("parse error: {e}"))),
        };
        let Some(method) = msg.get("method").and_then(Value::as_str) else {
            // A response to us (we send no requests) or garbage.
            return msg
                .get("id")
                .map(|id| error(id.clone(), -32600, "not a request: a \"method\" is missing"));
        };
        let id = msg.get("id").cloned()?;
        let params = msg.get("params").cloned().unwrap_or(json!({}));
        let result = match method {
            "initialize" => Ok(self.initialize(&params)),
            "ping" => Ok(json!({})),
            "tools/list" => Ok(json!({ "tools": self.tools() })),
            "tools/call" => self.call(&params),
            other => {
                return Some(error(id, -32601, &format!("method {other:?} not found")));
            }
        };
        Some(match result {
            Ok(r) => json!({ "jsonrpc": "2.0", "id": id, "result": r }),
            Err(BadArgs(m)) => error(id, -32602, &m),
        })
    }

    fn initialize(&self, params: &Value) -> Value {
        let asked = params["protocolVersion"].as_str().unwrap_or("");
        let version = if VERSIONS.contains(&asked) {
            asked
        } else {
            VERSIONS[VERSIONS.len() - 1]
        };
        json!({
            "protocolVersion": version,
            "capabilities": { "tools": { "listChanged": false } },
            "serverInfo": { "name": "rayos", "version": env!("CARGO_PKG_VERSION") },
            "instructions": "RayOS VMs: list_vms first; screenshot to see a screen; type_text, press_keys and click act on the presented VM (hidden=true for one nobody sees; a person's physical input pauses yours for 2 s); exec runs a program through the guest agent.",
        })
    }

    fn call(&self, params: &Value) -> Result<Value, BadArgs> {
        let name = params["name"]
            .as_str()
            .ok_or_else(|| BadArgs("tools/call needs a tool \"name\"".into()))?;
        let args = params.get("arguments").cloned().unwrap_or(json!({}));
        if !tools().iter().any(|t| t["name"] == name) {
            return Err(BadArgs(format!(
                "no tool {name:?}: tools/list shows the tools"
            )));
        }
        if self.access == Access::Read && !READ_TOOLS.contains(&name) {
            return Ok(json!({
                "content": [text(format!("{REFUSED}: this VM's agent bridge is read-only (policy agent_bridge = \"read\"); {name} acts on VMs and needs agent_bridge = \"full\""))],
                "isError": true,
            }));
        }
        Ok(match self.tool(name, &args)? {
            Ok(content) => json!({ "content": content, "isError": false }),
            Err(ToolError(m)) => json!({ "content": [text(m)], "isError": true }),
        })
    }

    /// Runs tool `name`; the outer error is bad arguments, the inner one
    /// the tool's failure.
    fn tool(&self, name: &str, a: &Value) -> Result<Result<Vec<Value>, ToolError>, BadArgs> {
        let c = &self.client;
        let vm = || str_arg(a, "vm");
        let hidden = a["hidden"].as_bool().unwrap_or(false);
        let input = |actions: Vec<InputAction>| -> Result<Vec<Value>, ToolError> {
            let r = c.input(&vm_name(a), &InputRequest { actions, hidden })?;
            Ok(vec![text(format!("sent {} input events", r.events))])
        };
        Ok(match name {
            "list_vms" => c
                .list()
                .map_err(ToolError::from)
                .map(|vms| vec![text(pretty(&vms))]),
            "screenshot" => {
                let vm = vm()?;
                c.screenshot(&vm).map_err(ToolError::from).map(|png| {
                    vec![json!({
                        "type": "image",
                        "data": base64ct::Base64::encode_string(&png),
                        "mimeType": "image/png",
                    })]
                })
            }
            "type_text" => {
                vm()?;
                let mut actions = vec![InputAction::Text {
                    text: str_arg(a, "text")?,
                }];
                if a["enter"].as_bool() == Some(true) {
                    actions.push(InputAction::Key { keys: "ret".into() });
                }
                input(actions)
            }
            "press_keys" => {
                vm()?;
                let keys = a["keys"]
                    .as_array()
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| BadArgs("\"keys\" must be a list of key combinations such as [\"ctrl+alt+delete\"]".into()))?;
                let actions = keys
                    .iter()
                    .map(|k| {
                        k.as_str()
                            .map(|s| InputAction::Key { keys: s.into() })
                            .ok_or_else(|| BadArgs("every key combination is a string".into()))
                    })
                    .collect::<Result<_, _>>()?;
                input(actions)
            }
            "click" => {
                vm()?;
                let button = match a["button"].as_str().unwrap_or("left") {
                    "left" => Button::Left,
                    "middle" => Button::Middle,
                    "right" => Button::Right,
                    other => {
                        return Err(BadArgs(format!(
                            "button {other:?}: use left, middle or right"
                        )));
                    }
                };
                input(vec![InputAction::Click {
                    x: u32_arg(a, "x")?,
                    y: u32_arg(a, "y")?,
                    button,
                }])
            }
            "console_read" => {
                let vm = vm()?;
                let lines = a["lines"].as_u64().unwrap_or(50).clamp(1, 10_000) as usize;
                c.console(&vm, lines)
                    .map_err(ToolError::from)
                    .map(|r| vec![text(r.lines.join("\n"))])
            }
            "console_write" => {
                let vm = vm()?;
                c.console_write(&vm, &str_arg(a, "text")?)
                    .map_err(ToolError::from)
                    .map(|r| vec![text(format!("wrote {} bytes", r.bytes))])
            }
            "exec" => {
                let vm = vm()?;
                let args = match a.get("args") {
                    None => Vec::new(),
                    Some(v) => serde_json::from_value(v.clone())
                        .map_err(|_| BadArgs("\"args\" must be a list of strings".into()))?,
                };
                let req = ExecRequest {
                    path: str_arg(a, "path")?,
                    args,
                    input: a["input"].as_str().map(str::to_string),
                    timeout_secs: a["timeout_secs"].as_u64(),
                };
                let wait = req.timeout_secs.unwrap_or(crate::DEFAULT_EXEC_SECS) + 30;
                c.clone()
                    .with_timeout(Some(std::time::Duration::from_secs(wait)))
                    .exec(&vm, &req)
                    .map_err(ToolError::from)
                    .map(|r| vec![text(pretty(&r))])
            }
            "events" => {
                let since = a["since"].as_u64().unwrap_or(0);
                let q = self.events.0.lock().unwrap_or_else(|p| p.into_inner());
                let list: Vec<&Event> = q.iter().filter(|e| e.seq > since).collect();
                Ok(vec![text(pretty(&list))])
            }
            _ => return Err(BadArgs(format!("no tool {name:?}"))),
        })
    }
}

fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn str_arg(a: &Value, key: &str) -> Result<String, BadArgs> {
    a[key]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| BadArgs(format!("argument {key:?} (a string) is missing")))
}

fn vm_name(a: &Value) -> String {
    a["vm"].as_str().unwrap_or_default().to_string()
}

fn u32_arg(a: &Value, key: &str) -> Result<u32, BadArgs> {
    a[key]
        .as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| BadArgs(format!("argument {key:?} (a pixel number) is missing")))
}

impl Server {
    /// The tools this session may call.
    fn tools(&self) -> Vec<Value> {
        tools()
            .into_iter()
            .filter(|t| {
                self.access == Access::Full
                    || READ_TOOLS.contains(&t["name"].as_str().unwrap_or(""))
            })
            .collect()
    }
}

/// How a refusal by access level starts.
const REFUSED: &str = "refused by policy";

/// Every tool and its input schema.
fn tools() -> Vec<Value> {
    let vm = json!({ "type": "string", "description": "VM name (list_vms shows them)" });
    let hidden = json!({ "type": "boolean", "description": "Send input although the VM is not presented (nobody sees it). Default false." });
    let tool = |name: &str, description: &str, props: Value, required: &[&str]| {
        json!({
            "name": name,
            "description": description,
            "inputSchema": { "type": "object", "properties": props, "required": required },
        })
    };
    vec![
        tool(
            "list_vms",
            "List the VMs: name, kind, state, whether presented.",
            json!({}),
            &[],
        ),
        tool(
            "screenshot",
            "The VM's screen as a PNG image (no input is given to the VM).",
            json!({ "vm": vm }),
            &["vm"],
        ),
        tool(
            "type_text",
            "Type text into the VM with its keyboard layout (us, uk, de, fr, es or it; characters only dead keys give, such as ^ on de, are refused: use press_keys).",
            json!({ "vm": vm, "text": { "type": "string" }, "enter": { "type": "boolean", "description": "Press Return after the text." }, "hidden": hidden }),
            &["vm", "text"],
        ),
        tool(
            "press_keys",
            "Press key combinations one after another, QEMU key names joined by '+': ctrl+alt+delete, ret, shift+tab, f1.",
            json!({ "vm": vm, "keys": { "type": "array", "items": { "type": "string" } }, "hidden": hidden }),
            &["vm", "keys"],
        ),
        tool(
            "click",
            "Click at pixel (x, y) of the VM's screen as the screenshot shows it.",
            json!({ "vm": vm, "x": { "type": "integer", "minimum": 0 }, "y": { "type": "integer", "minimum": 0 }, "button": { "type": "string", "enum": ["left", "middle", "right"] }, "hidden": hidden }),
            &["vm", "x", "y"],
        ),
        tool(
            "console_read",
            "The last lines of the VM's serial console.",
            json!({ "vm": vm, "lines": { "type": "integer", "minimum": 1, "maximum": 10000 } }),
            &["vm"],
        ),
        tool(
            "console_write",
            "Write text to the VM's serial console as is (end lines with \\n).",
            json!({ "vm": vm, "text": { "type": "string" } }),
            &["vm", "text"],
        ),
        tool(
            "exec",
            "Run a program in the guest through its guest agent; returns exit code, stdout and stderr (64 KiB each).",
            json!({ "vm": vm, "path": { "type": "string", "description": "Absolute path of the program." }, "args": { "type": "array", "items": { "type": "string" } }, "input": { "type": "string" }, "timeout_secs": { "type": "integer", "minimum": 1, "maximum": 300 } }),
            &["vm", "path"],
        ),
        tool(
            "events",
            "VM lifecycle events (started, saved, crashed, presented, ...) numbered above `since`.",
            json!({ "since": { "type": "integer", "minimum": 0 } }),
            &[],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> Server {
        Server::new(
            Client::new("/nonexistent/rayos-api.sock"),
            Access::Full,
            EventLog::default(),
        )
    }

    #[test]
    fn initialize_echoes_known_versions_and_offers_the_newest_otherwise() {
        let s = server();
        let r = s
            .handle(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#)
            .unwrap();
        assert_eq!(r["id"], 1);
        assert_eq!(r["result"]["protocolVersion"], "2025-03-26");
        assert!(r["result"]["capabilities"]["tools"].is_object());
        let r = s
            .handle(r#"{"jsonrpc":"2.0","id":"a","method":"initialize","params":{"protocolVersion":"1999-01-01"}}"#)
            .unwrap();
        assert_eq!(r["result"]["protocolVersion"], "2025-06-18");
    }

    #[test]
    fn notifications_get_no_answer_and_errors_have_json_rpc_codes() {
        let s = server();
        assert_eq!(
            s.handle(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            None
        );
        let code = |line: &str| s.handle(line).unwrap()["error"]["code"].clone();
        assert_eq!(code("{nope"), -32700);
        assert_eq!(
            code(r#"{"jsonrpc":"2.0","id":2,"method":"resources/list"}"#),
            -32601
        );
        assert_eq!(
            code(
                r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"format_disk"}}"#
            ),
            -32602
        );
        assert_eq!(
            code(
                r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"screenshot","arguments":{}}}"#
            ),
            -32602
        );
        assert_eq!(code(r#"{"jsonrpc":"2.0","id":5,"result":{}}"#), -32600);
    }

    #[test]
    fn a_failing_tool_is_an_error_result_the_model_can_read() {
        let r = server()
            .handle(r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"list_vms","arguments":{}}}"#)
            .unwrap();
        assert_eq!(r["result"]["isError"], true);
        let msg = r["result"]["content"][0]["text"].as_str().unwrap();
        assert!(msg.contains("cannot reach rayosd"), "{msg}");
    }

    #[test]
    fn every_tool_has_an_object_schema_and_its_required_properties() {
        let tools = tools();
        assert_eq!(tools.len(), 9);
        for t in &tools {
            let schema = &t["inputSchema"];
            assert_eq!(schema["type"], "object", "{t}");
            for r in schema["required"].as_array().unwrap() {
                let r = r.as_str().unwrap();
                assert!(schema["properties"].get(r).is_some(), "{t}: {r}");
            }
        }
    }
}

#[cfg(test)]
mod access_tests {
    use super::*;

    #[test]
    fn read_access_lists_and_allows_only_the_tools_that_look() {
        let s = Server::new(
            Client::new("/nonexistent/rayos-api.sock"),
            Access::Read,
            EventLog::default(),
        );
        let r = s
            .handle(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
            .unwrap();
        let names: Vec<&str> = r["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["list_vms", "screenshot", "console_read", "events"]);
        let h = s.handle_logged(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"type_text","arguments":{"vm":"w","text":"x"}}}"#);
        assert_eq!(
            (h.what.as_str(), h.outcome),
            ("tools/call type_text", "refused")
        );
        let r = h.reply.unwrap();
        assert_eq!(r["result"]["isError"], true);
        assert!(
            r["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("agent_bridge = \"full\"")
        );
        // Reading is allowed (and fails here only because no daemon runs).
        let h = s.handle_logged(
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"list_vms"}}"#,
        );
        assert_eq!(h.outcome, "failed");
    }
}
