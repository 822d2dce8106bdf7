//! The HTTP/JSON control API on a unix socket (spec: `docs/api/openapi.yaml`).
//!
//! One thread per connection, one request per connection, at most
//! [`MAX_CONNECTIONS`] at a time (more get 503). Requests are parsed by
//! `rayos_api::http` with its size limits; a request that does not parse,
//! bad JSON, unknown fields, unknown VMs and wrong states all get a 4xx with
//! `{"error": "..."}`. Handlers never panic on input; should one panic
//! anyway, only its connection is lost.
//!
//! `GET /v1/events` streams lifecycle events as chunked
//! `application/x-ndjson` (one JSON object per line) until the client
//! closes; a bare newline is sent every [`KEEPALIVE`] so dead clients are
//! noticed.

use std::fs;
use std::io::{self, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rayos_api::http::{self, Limits, Request};
use rayos_api::{ConsoleReply, CreateRequest, ErrorBody, StartRequest, StopRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::supervisor::{OpError, Supervisor, chain};

pub const MAX_CONNECTIONS: usize = 64;
const KEEPALIVE: Duration = Duration::from_secs(15);
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_CONSOLE_LINES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create the socket directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another rayosd is already serving {0}: stop it first or use another --socket")]
    InUse(PathBuf),
    #[error("cannot replace the stale socket {path}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Binds the API socket: parent directory created, a stale socket file
/// (no one answering) replaced, mode 0600 so only root can talk to it.
/// Call it before starting threads that create files (it changes the umask
/// for a moment).
pub fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|source| ServeError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    if let Ok(md) = fs::symlink_metadata(path) {
        if md.file_type().is_socket() && UnixStream::connect(path).is_ok() {
            return Err(ServeError::InUse(path.to_path_buf()));
        }
        if !md.file_type().is_socket() {
            // Not ours to delete.
            return Err(ServeError::RemoveStale {
                path: path.to_path_buf(),
                source: io::Error::other("it exists and is not a socket"),
            });
        }
        fs::remove_file(path).map_err(|source| ServeError::RemoveStale {
            path: path.to_path_buf(),
            source,
        })?;
    }
    // Create the socket with mode 0600 from the start (not just after the
    // chmod below); umask is process-wide, so this runs before the daemon
    // starts its threads.
    // SAFETY: umask(2) only swaps the process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above; restores the previous mask.
    unsafe { libc::umask(old) };
    let l = bound.map_err(|source| ServeError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|source| {
        ServeError::Bind {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(l)
}

/// Accepts connections until the listener fails; each gets a thread.
pub fn serve(sup: Arc<Supervisor>, listener: UnixListener) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(mut stream) = conn else {
            continue;
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = send_error(&mut stream, 503, "too many connections: try again");
            continue;
        }
        let sup = Arc::clone(&sup);
        let active = Arc::clone(&active);
        let spawned = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                handle_connection(&sup, stream);
                active.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            eprintln!("rayosd: cannot spawn a connection thread");
        }
    }
}

fn send_json<T: Serialize>(w: &mut impl Write, status: u16, v: &T) -> io::Result<()> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    http::write_response(w, status, "application/json", &body)
}

fn send_error(w: &mut impl Write, status: u16, msg: &str) -> io::Result<()> {
    send_json(
        w,
        status,
        &ErrorBody {
            error: msg.to_string(),
        },
    )
}

/// What a handler produces.
enum Reply {
    Json(u16, Vec<u8>),
    Png(Vec<u8>),
    Error(u16, String),
    Events(Option<u64>),
}

fn json<T: Serialize>(status: u16, v: &T) -> Reply {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    Reply::Json(status, body)
}

fn from_op(e: OpError) -> Reply {
    Reply::Error(e.status(), chain(&e))
}

fn result<T: Serialize>(r: Result<T, OpError>) -> Reply {
    match r {
        Ok(v) => json(200, &v),
        Err(e) => from_op(e),
    }
}

/// Parses a JSON body; an empty body means `T::default()` when allowed.
fn body<T: DeserializeOwned + Default>(req: &Request, what: &str) -> Result<T, Reply> {
    if req.body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    parse_body(req, what)
}

fn parse_body<T: DeserializeOwned>(req: &Request, what: &str) -> Result<T, Reply> {
    serde_json::from_slice(&req.body)
        .map_err(|e| Reply::Error(400, format!("the body is not a valid {what}: {e}")))
}

fn bool_param(req: &Request, name: &str) -> Result<bool, Reply> {
    match req.query_param(name) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(Reply::Error(
            400,
            format!("query parameter {name}={other:?} must be true or false"),
        )),
    }
}

fn route(sup: &Supervisor, req: &Request) -> Reply {
    let segments: Vec<String> = match req
        .path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(http::percent_decode_path)
        .collect::<Result<_, _>>()
    {
        Ok(s) => s,
        Err(e) => return Reply::Error(400, e.to_string()),
    };
    let segs: Vec<&str> = segments.iter().map(|s| s.as_str()).collect();
    let m = req.method.as_str();
    let not_allowed = || Reply::Error(405, format!("{m} is not allowed on {}", req.path));
    match segs.as_slice() {
        ["v1", "health"] => match m {
            "GET" => json(200, &sup.health()),
            _ => not_allowed(),
        },
        ["v1", "events"] => match m {
            "GET" => match req.query_param("since").map(|s| s.parse::<u64>()) {
                None => Reply::Events(None),
                Some(Ok(n)) => Reply::Events(Some(n)),
                Some(Err(_)) => Reply::Error(400, "since must be an event number".into()),
            },
            _ => not_allowed(),
        },
        ["v1", "vms"] => match m {
            "GET" => json(200, &sup.list()),
            "POST" => match parse_body::<CreateRequest>(req, "VM definition (CreateRequest)") {
                Ok(c) => match sup.create(&c) {
                    Ok(v) => json(201, &v),
                    Err(e) => from_op(e),
                },
                Err(r) => r,
            },
            _ => not_allowed(),
        },
        ["v1", "vms", name] => match m {
            "GET" => result(sup.show(name)),
            "DELETE" => match bool_param(req, "purge") {
                Ok(purge) => result(sup.delete(name, purge)),
                Err(r) => r,
            },
            _ => not_allowed(),
        },
        ["v1", "vms", name, action] => {
            let get = matches!(*action, "console" | "screenshot");
            if get != (m == "GET") || (!get && m != "POST") {
                return not_allowed();
            }
            match *action {
                "start" => match body::<StartRequest>(req, "start request") {
                    Ok(s) => result(sup.start(name, s.fresh)),
                    Err(r) => r,
                },
                "stop" => match body::<StopRequest>(req, "stop request") {
                    Ok(s) => result(sup.stop(name, &s)),
                    Err(r) => r,
                },
                "suspend" | "present" | "hide" | "provisioned" => {
                    if let Err(r) = body::<Empty>(req, "empty object") {
                        return r;
                    }
                    result(match *action {
                        "suspend" => sup.suspend(name),
                        "present" => sup.present(name),
                        "hide" => sup.hide(name),
                        _ => sup.provisioned(name),
                    })
                }
                "console" => {
                    let lines = match req.query_param("lines").map(|l| l.parse::<usize>()) {
                        None => 100,
                        Some(Ok(n)) if (1..=MAX_CONSOLE_LINES).contains(&n) => n,
                        Some(_) => {
                            return Reply::Error(
                                400,
                                format!("lines must be a number from 1 to {MAX_CONSOLE_LINES}"),
                            );
                        }
                    };
                    result(sup.console(name, lines).map(|lines| ConsoleReply { lines }))
                }
                "screenshot" => match sup.screenshot(name) {
                    Ok(png) => Reply::Png(png),
                    Err(e) => from_op(e),
                },
                _ => Reply::Error(404, format!("no endpoint {}", req.path)),
            }
        }
        _ => Reply::Error(
            404,
            format!("no endpoint {}: see docs/api/openapi.yaml", req.path),
        ),
    }
}

/// `{}` and nothing else.
#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

fn handle_connection(sup: &Arc<Supervisor>, stream: UnixStream) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let req = match http::read_request(&mut reader, Limits::default()) {
        Ok(r) => r,
        Err(e) => {
            let status = e.status();
            if status != 0 {
                let _ = send_error(&mut out, status, &e.to_string());
            }
            return;
        }
    };
    match route(sup, &req) {
        Reply::Json(status, body) => {
            let _ = http::write_response(&mut out, status, "application/json", &body);
        }
        Reply::Png(bytes) => {
            let _ = http::write_response(&mut out, 200, "image/png", &bytes);
        }
        Reply::Error(status, msg) => {
            let _ = send_error(&mut out, status, &msg);
        }
        Reply::Events(since) => stream_events(sup, &mut out, since),
    }
}

fn stream_events(sup: &Supervisor, out: &mut UnixStream, since: Option<u64>) {
    let rx = sup.events.subscribe(since);
    if http::write_chunked_head(out, 200, "application/x-ndjson").is_err() {
        return;
    }
    loop {
        let chunk = match rx.recv_timeout(KEEPALIVE) {
            Ok(ev) => {
                let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                line.push(b'\n');
                line
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => b"\n".to_vec(),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = http::write_chunk(out, b"");
                return;
            }
        };
        if http::write_chunk(out, &chunk).is_err() {
            return;
        }
    }
}
