//! Blocking client of the control API over the daemon's unix socket.
//!
//! One connection per request (the daemon closes after each response). The
//! event stream ([`Client::events`]) keeps its connection open and yields
//! events as the daemon writes them.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::agent::*;
use crate::http::{self, HttpError, ResponseHead};
use crate::types::*;

/// Largest reply the client accepts (screenshots are the big ones).
const MAX_REPLY: usize = 256 * 1024 * 1024;

/// Why a request to rayosd failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be connected to (the daemon is not running there).
    #[error(
        "cannot reach rayosd at {socket}: start it with `rayos daemon --socket {socket}` or point --socket / $RAYOS_SOCKET at the running one"
    )]
    Unreachable {
        /// The socket's path.
        socket: PathBuf,
        /// The error from connect(2).
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered with an error status and this message.
    #[error("{message}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The daemon's error message.
        message: String,
    },
    /// The request or its reply broke off or was not HTTP as the daemon speaks
    /// it.
    #[error("talking to rayosd at {socket} failed")]
    Exchange {
        /// The socket's path.
        socket: PathBuf,
        /// What went wrong on the connection.
        #[source]
        source: HttpError,
    },
    /// The reply's body is not the JSON this client expects.
    #[error("rayosd sent a reply this client does not understand")]
    Decode(#[source] serde_json::Error),
}

impl ClientError {
    /// The HTTP status when the daemon answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of one rayosd, by its socket; cheap to clone, one connection per
/// request.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    /// Per-read timeout; actions such as `stop` can legitimately take
    /// minutes, so the default is generous.
    timeout: Option<Duration>,
}

/// A body a client sends.
enum Body<'a> {
    None,
    Json(&'a [u8]),
}

impl Client {
    /// A client of the daemon at `socket`, with a 15-minute read timeout.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
            timeout: Some(Duration::from_secs(900)),
        }
    }

    /// The same client with another per-read timeout (`None`: wait for ever).
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn connect(&self) -> Result<UnixStream, ClientError> {
        let s = UnixStream::connect(&self.socket).map_err(|source| ClientError::Unreachable {
            socket: self.socket.clone(),
            source,
        })?;
        s.set_read_timeout(self.timeout).ok();
        Ok(s)
    }

    fn exchange_err(&self, source: HttpError) -> ClientError {
        ClientError::Exchange {
            socket: self.socket.clone(),
            source,
        }
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        body: Body<'_>,
    ) -> Result<(ResponseHead, BufReader<UnixStream>), ClientError> {
        let mut s = self.connect()?;
        let bytes = match body {
            Body::None => &[][..],
            Body::Json(b) => b,
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: rayosd\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            bytes.len()
        );
        s.write_all(head.as_bytes())
            .and_then(|_| s.write_all(bytes))
            .and_then(|_| s.flush())
            .map_err(|e| self.exchange_err(HttpError::Read(e)))?;
        let mut r = BufReader::new(s);
        let head = http::read_response_head(&mut r).map_err(|e| self.exchange_err(e))?;
        Ok((head, r))
    }

    /// Sends a request and returns the raw body of a 2xx reply.
    pub fn raw(
        &self,
        method: &str,
        path: &str,
        json: Option<&[u8]>,
    ) -> Result<Vec<u8>, ClientError> {
        let body = json.map(Body::Json).unwrap_or(Body::None);
        let (head, mut r) = self.send(method, path, body)?;
        let bytes =
            http::read_response_body(&mut r, &head, MAX_REPLY).map_err(|e| self.exchange_err(e))?;
        if !(200..300).contains(&head.status) {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(ClientError::Status {
                status: head.status,
                message,
            });
        }
        Ok(bytes)
    }

    fn json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let encoded = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        let bytes = self.raw(method, path, encoded.as_deref())?;
        serde_json::from_slice(&bytes).map_err(ClientError::Decode)
    }

    /// `GET /v1/health`: the daemon's state, resources and notes.
    pub fn health(&self) -> Result<Health, ClientError> {
        self.json("GET", "/v1/health", None::<&()>)
    }

    /// `GET /v1/vms`: every VM the daemon knows.
    pub fn list(&self) -> Result<Vec<VmInfo>, ClientError> {
        self.json("GET", "/v1/vms", None::<&()>)
    }

    /// `GET /v1/vms/{name}`: one VM.
    pub fn show(&self, name: &str) -> Result<VmInfo, ClientError> {
        self.json("GET", &format!("/v1/vms/{}", enc(name)), None::<&()>)
    }

    /// `POST /v1/vms`: defines a new VM.
    pub fn create(&self, req: &CreateRequest) -> Result<VmInfo, ClientError> {
        self.json("POST", "/v1/vms", Some(req))
    }

    /// `DELETE /v1/vms/{name}`: removes a stopped VM; `purge` removes its disks
    /// too.
    pub fn delete(&self, name: &str, purge: bool) -> Result<ActionReply, ClientError> {
        self.json(
            "DELETE",
            &format!("/v1/vms/{}?purge={purge}", enc(name)),
            None::<&()>,
        )
    }

    /// `POST /v1/vms/{name}/start`: boots or resumes the VM; `fresh` discards a
    /// saved state first.
    pub fn start(&self, name: &str, fresh: bool) -> Result<ActionReply, ClientError> {
        self.action(name, "start", Some(&StartRequest { fresh }))
    }

    /// `POST /v1/vms/{name}/stop`: stops the VM as `req` says.
    pub fn stop(&self, name: &str, req: &StopRequest) -> Result<ActionReply, ClientError> {
        self.action(name, "stop", Some(req))
    }

    /// `POST /v1/vms/{name}/media`: attach or eject a medium.
    pub fn media(&self, name: &str, req: &MediaRequest) -> Result<ActionReply, ClientError> {
        self.action(name, "media", Some(req))
    }

    /// `suspend`, `present`, `hide`, `provisioned`.
    pub fn action(
        &self,
        name: &str,
        action: &str,
        body: Option<&impl Serialize>,
    ) -> Result<ActionReply, ClientError> {
        self.json("POST", &format!("/v1/vms/{}/{action}", enc(name)), body)
    }

    /// `GET /v1/vms/{name}/console`: the last `lines` lines of the console log.
    pub fn console(&self, name: &str, lines: usize) -> Result<ConsoleReply, ClientError> {
        self.json(
            "GET",
            &format!("/v1/vms/{}/console?lines={lines}", enc(name)),
            None::<&()>,
        )
    }

    /// The VM's display as PNG bytes.
    pub fn screenshot(&self, name: &str) -> Result<Vec<u8>, ClientError> {
        self.raw("GET", &format!("/v1/vms/{}/screenshot", enc(name)), None)
    }

    /// Injects keys, text and pointer actions (`hidden`: also into a VM
    /// that is not presented).
    pub fn input(&self, name: &str, req: &InputRequest) -> Result<InputReply, ClientError> {
        self.json("POST", &format!("/v1/vms/{}/input", enc(name)), Some(req))
    }

    /// Writes text to the VM's serial console.
    pub fn console_write(&self, name: &str, text: &str) -> Result<ConsoleWriteReply, ClientError> {
        let req = ConsoleWriteRequest { text: text.into() };
        self.json(
            "POST",
            &format!("/v1/vms/{}/console", enc(name)),
            Some(&req),
        )
    }

    /// Runs a program in the guest through its agent.
    pub fn exec(&self, name: &str, req: &ExecRequest) -> Result<ExecReply, ClientError> {
        self.json("POST", &format!("/v1/vms/{}/exec", enc(name)), Some(req))
    }

    /// Tells the daemon a person just used the presented VM's keyboard or
    /// pointer (the presenter sends this), which pauses injected input.
    pub fn physical_input(&self) -> Result<(), ClientError> {
        self.raw("POST", "/v1/input/physical", Some(b"{}"))
            .map(|_| ())
    }

    /// The policy rayosd runs with.
    pub fn policy(&self) -> Result<PolicyReply, ClientError> {
        self.json("GET", "/v1/policy", None::<&()>)
    }

    /// Replaces the policy (checked, written atomically, used at once).
    pub fn set_policy(&self, toml: &str) -> Result<PolicyReply, ClientError> {
        self.json(
            "PUT",
            "/v1/policy",
            Some(&PolicyRequest {
                toml: toml.to_string(),
            }),
        )
    }

    /// Follows the event stream (first the kept events numbered above
    /// `since`, when given); `on_event` returns false to stop.
    pub fn events(
        &self,
        since: Option<u64>,
        mut on_event: impl FnMut(Event) -> bool,
    ) -> Result<(), ClientError> {
        let path = match since {
            Some(n) => format!("/v1/events?since={n}"),
            None => "/v1/events".to_string(),
        };
        let (head, mut r) = self.send("GET", &path, Body::None)?;
        if head.status != 200 {
            let bytes = http::read_response_body(&mut r, &head, 64 * 1024).unwrap_or_default();
            return Err(ClientError::Status {
                status: head.status,
                message: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
        r.get_ref().set_read_timeout(None).ok();
        let mut pending = Vec::new();
        while let Some(chunk) =
            http::read_chunk(&mut r, 1024 * 1024).map_err(|e| self.exchange_err(e))?
        {
            pending.extend_from_slice(&chunk);
            while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                let trimmed = &line[..line.len() - 1];
                if trimmed.is_empty() {
                    continue;
                }
                let ev: Event = serde_json::from_slice(trimmed).map_err(ClientError::Decode)?;
                if !on_event(ev) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// VM names are `[a-z0-9_-]`, so escaping is only needed for names the
/// daemon will reject anyway; escape everything outside that set so the
/// request line stays well-formed.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
