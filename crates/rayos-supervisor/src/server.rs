//! The HTTP/JSON control API on a unix socket (spec: `docs/api/openapi.yaml`).
//!
//! One thread per connection, one request per connection. Requests are
//! parsed by `rayos_api::http` with its size limits; a request that does not
//! parse, bad JSON, unknown fields, unknown VMs and wrong states all get a
//! 4xx with `{"error": "..."}`. Handlers never panic on input; should one
//! panic anyway, only its connection is lost.
//!
//! `GET /v1/events` streams lifecycle events as chunked
//! `application/x-ndjson` (one JSON object per line) until the client
//! closes; a bare newline is sent every `KEEPALIVE` so dead clients are
//! noticed.
//!
//! Connection limits ([`ServerLimits`]), so that no client can lock the
//! API out (`/v1/health` must always answer):
//! - the whole request (head and body) must arrive within
//!   `request_deadline` of the connection being accepted, else 408;
//! - at most `max_connections` connections are reading or being answered.
//!   At the cap, a new connection sheds the *oldest connection still
//!   reading its request* after `IDLE_AFTER` (it gets a 503 and is
//!   closed); otherwise the new one's request is read and it waits up to
//!   `REFUSE_PATIENCE` for a place, then gets a 503 — sent after its
//!   request was read, since a reply sent before that reaches the client
//!   as a connection reset;
//! - event streams are counted apart, at most `max_event_streams`; a new
//!   one ends the oldest (its stream closes cleanly; clients reconnect with
//!   `?since=`).

use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayos_api::http::{self, HttpError, Limits, Request};
use rayos_api::{
    ConsoleReply, ConsoleWriteRequest, CreateRequest, ErrorBody, ExecRequest, InputRequest,
    MediaRequest, StartRequest, StopRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::supervisor::{OpError, Supervisor, chain};

/// Connections served at once by default; more are refused with 503.
pub const MAX_CONNECTIONS: usize = 64;
/// Event streams open at once by default.
pub const MAX_EVENT_STREAMS: usize = 32;
/// How long a request may take to arrive by default.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How often an event stream checks whether it was shed.
const STREAM_TICK: Duration = Duration::from_millis(500);
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_CONSOLE_LINES: usize = 10_000;
/// Threads answering 503 at once; beyond that a refused connection is
/// closed at once (the daemon's own threads stay bounded).
const MAX_REFUSING: usize = 16;
/// A connection still reading its request after this long counts as idle
/// and may be shed; a younger one is likely sending right now.
const IDLE_AFTER: Duration = Duration::from_millis(500);
/// How long a refused connection's request is waited for before the 503.
const REFUSE_DEADLINE: Duration = Duration::from_secs(2);
/// How long a refused connection waits for a place before the 503.
const REFUSE_PATIENCE: Duration = Duration::from_secs(1);
/// How long unread request bytes are drained after an error reply.
const LINGER: Duration = Duration::from_secs(1);

/// How many connections the API serves, and how long a request may take
/// to arrive (`rayos daemon --max-connections`, `--max-event-streams`,
/// `--request-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Event streams open at once (each holds a connection).
    pub max_event_streams: usize,
    /// How long a request may take to arrive before it is answered 408.
    pub request_deadline: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: MAX_CONNECTIONS,
            max_event_streams: MAX_EVENT_STREAMS,
            request_deadline: REQUEST_DEADLINE,
        }
    }
}

/// Why the API socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket's directory could not be made.
    #[error("cannot create the socket directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Another daemon answers on the socket; holds its path.
    #[error("another rayosd is already serving {0}: stop it first or use another --socket")]
    InUse(PathBuf),
    /// A socket file left by a dead daemon could not be removed.
    #[error("cannot replace the stale socket {path}")]
    RemoveStale {
        /// The socket file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The socket could not be bound.
    #[error("cannot listen on {path}")]
    Bind {
        /// The socket's path.
        path: PathBuf,
        /// The error.
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
    let old = rayos_base::sys::umask(0o177);
    let bound = UnixListener::bind(path);
    rayos_base::sys::umask(old);
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

/// Where a tracked connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) its request: idle from the daemon's view,
    /// the first to be shed.
    Reading,
    /// Its request is being answered.
    Working,
    /// An event stream (counted apart).
    Streaming,
}

struct Conn {
    id: u64,
    since: Instant,
    phase: Phase,
    /// A second handle on the socket, to wake a shed connection's thread.
    socket: UnixStream,
    shed: Arc<AtomicBool>,
}

/// The connections being served, for the limits in the module docs.
#[derive(Default)]
struct Tracker {
    conns: Mutex<Vec<Conn>>,
    next_id: AtomicU64,
    refusing: AtomicUsize,
}

/// A connection's place in the [`Tracker`]; leaving it frees the place.
struct Ticket {
    tracker: Arc<Tracker>,
    id: u64,
    shed: Arc<AtomicBool>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut conns = self.tracker.lock();
        conns.retain(|c| c.id != self.id);
    }
}

impl Ticket {
    fn was_shed(&self) -> bool {
        self.shed.load(Ordering::SeqCst)
    }
}

/// Marks a connection shed and wakes its thread: reads on it end (bytes
/// already sent are still read, so closing it later causes no reset),
/// and an event stream ends at its next tick.
fn shed(c: &Conn) {
    c.shed.store(true, Ordering::SeqCst);
    if c.phase == Phase::Reading {
        let _ = c.socket.shutdown(std::net::Shutdown::Read);
    }
}

impl Tracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection in `Reading`, shedding the oldest idle
    /// reading connection (reading for [`IDLE_AFTER`] or more) when `max`
    /// requests are in progress; `None` when there is none to shed.
    fn admit(self: &Arc<Self>, stream: &UnixStream, max: usize) -> Option<Ticket> {
        let socket = stream.try_clone().ok()?;
        let mut conns = self.lock();
        let busy = conns.iter().filter(|c| c.phase != Phase::Streaming).count();
        if busy >= max.max(1) {
            let oldest = conns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.phase == Phase::Reading && c.since.elapsed() >= IDLE_AFTER)
                .min_by_key(|(_, c)| c.since)
                .map(|(i, _)| i)?;
            shed(&conns.remove(oldest));
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let flag = Arc::new(AtomicBool::new(false));
        conns.push(Conn {
            id,
            since: Instant::now(),
            phase: Phase::Reading,
            socket,
            shed: Arc::clone(&flag),
        });
        Some(Ticket {
            tracker: Arc::clone(self),
            id,
            shed: flag,
        })
    }

    /// Moves a connection to `phase`; for a stream, ends the oldest other
    /// stream when `max_streams` already run. False when the connection
    /// was shed meanwhile.
    fn set_phase(&self, t: &Ticket, phase: Phase, max_streams: usize) -> bool {
        let mut conns = self.lock();
        if phase == Phase::Streaming {
            let streams = conns.iter().filter(|c| c.phase == Phase::Streaming).count();
            if streams >= max_streams.max(1)
                && let Some(oldest) = conns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.phase == Phase::Streaming)
                    .min_by_key(|(_, c)| c.since)
                    .map(|(i, _)| i)
            {
                shed(&conns.remove(oldest));
            }
        }
        match conns.iter_mut().find(|c| c.id == t.id) {
            Some(c) => {
                c.phase = phase;
                if phase == Phase::Streaming {
                    // A stream's age counts from when it started streaming.
                    c.since = Instant::now();
                }
                true
            }
            None => false,
        }
    }
}

/// Reads from a socket until a deadline for the whole request, however
/// the bytes trickle in (one byte every few seconds keeps a per-read
/// timeout happy forever).
struct DeadlineReader {
    stream: UnixStream,
    deadline: Instant,
}

impl Read for DeadlineReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        match self.stream.read(buf) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(io::ErrorKind::TimedOut.into())
            }
            r => r,
        }
    }
}

/// The reply to a request that could not be read: 408 when it did not
/// arrive within `within`, the parser's 4xx, or nothing when the client
/// is gone.
fn unreadable(e: &HttpError, within: Duration) -> Option<(u16, String)> {
    if matches!(e, HttpError::Read(io) if io.kind() == io::ErrorKind::TimedOut) {
        return Some((
            408,
            format!(
                "the request did not arrive within {} s of connecting",
                within.as_secs_f64()
            ),
        ));
    }
    (e.status() != 0).then(|| (e.status(), e.to_string()))
}

/// Ends a connection whose request may not have been read to the end:
/// shut the write side (the reply is complete), then read and discard what
/// the client still sends for a moment. Closing a unix socket with unread
/// bytes makes the client's read fail with a reset instead of returning
/// the reply.
fn linger_close(mut s: UnixStream) {
    let _ = s.shutdown(std::net::Shutdown::Write);
    let _ = s.set_read_timeout(Some(LINGER));
    let deadline = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    let mut total = 0usize;
    while Instant::now() < deadline && total < 1 << 20 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

/// Accepts connections until the listener fails; each gets a thread,
/// within `limits` (see the module docs).
pub fn serve(sup: Arc<Supervisor>, listener: UnixListener, limits: ServerLimits) {
    let tracker = Arc::new(Tracker::default());
    for conn in listener.incoming() {
        let Ok(stream) = conn else {
            continue;
        };
        let Some(ticket) = tracker.admit(&stream, limits.max_connections) else {
            refuse(&sup, &tracker, stream, limits);
            continue;
        };
        let sup = Arc::clone(&sup);
        let tracker2 = Arc::clone(&tracker);
        let spawned = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || handle_connection(&sup, &tracker2, stream, ticket, limits));
        if spawned.is_err() {
            eprintln!("rayosd: cannot spawn a connection thread");
        }
    }
}

/// Every connection is busy being answered: reads the new one's request
/// (within [`REFUSE_DEADLINE`]), waits up to [`REFUSE_PATIENCE`] for a
/// place (a request just answered frees one a moment after the client has
/// its reply) and serves it, or answers 503. On a thread of its own, at
/// most [`MAX_REFUSING`] at a time.
fn refuse(sup: &Arc<Supervisor>, tracker: &Arc<Tracker>, stream: UnixStream, limits: ServerLimits) {
    if tracker.refusing.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSING {
        tracker.refusing.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let sup = Arc::clone(sup);
    let mine = Arc::clone(tracker);
    let spawned = std::thread::Builder::new()
        .name("api-refuse".into())
        .spawn(move || {
            let Ok(mut out) = stream.try_clone() else {
                mine.refusing.fetch_sub(1, Ordering::SeqCst);
                return;
            };
            let _ = out.set_write_timeout(Some(IO_TIMEOUT));
            let mut reader = BufReader::new(DeadlineReader {
                stream,
                deadline: Instant::now() + REFUSE_DEADLINE,
            });
            let req = http::read_request(&mut reader, Limits::default());
            drop(reader);
            let deadline = Instant::now() + REFUSE_PATIENCE;
            let ticket = loop {
                if let Some(t) = mine.admit(&out, limits.max_connections) {
                    break Some(t);
                }
                if Instant::now() >= deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            mine.refusing.fetch_sub(1, Ordering::SeqCst);
            match (req, ticket) {
                (Ok(req), Some(ticket)) => answer(&sup, &mine, out, req, ticket, limits),
                (Err(e), Some(_)) => {
                    if let Some((status, msg)) = unreadable(&e, REFUSE_DEADLINE) {
                        let _ = send_error(&mut out, status, &msg);
                    }
                    linger_close(out);
                }
                (_, None) => {
                    let _ = send_error(
                        &mut out,
                        503,
                        "rayosd is busy answering other requests: try again in a moment",
                    );
                    linger_close(out);
                }
            }
        });
    if spawned.is_err() {
        tracker.refusing.fetch_sub(1, Ordering::SeqCst);
        eprintln!("rayosd: cannot spawn a thread to refuse a connection");
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
        ["v1", "input", "physical"] => match m {
            "POST" => match body::<Empty>(req, "empty object") {
                Ok(_) => {
                    sup.physical_input();
                    json(200, &Empty {})
                }
                Err(r) => r,
            },
            _ => not_allowed(),
        },
        ["v1", "policy"] => match m {
            "GET" => json(200, &sup.policy_reply()),
            "PUT" => match parse_body::<rayos_api::PolicyRequest>(req, "policy (PolicyRequest)") {
                Ok(p) => result(sup.set_policy(&p.toml)),
                Err(r) => r,
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
            // The console is read with GET and written with POST.
            let get = matches!(*action, "console" | "screenshot");
            let post = *action != "screenshot";
            if !((get && m == "GET") || (post && m == "POST")) {
                return not_allowed();
            }
            match *action {
                "console" if m == "POST" => {
                    match parse_body::<ConsoleWriteRequest>(
                        req,
                        "console write (ConsoleWriteRequest)",
                    ) {
                        Ok(w) => result(sup.console_write(name, &w.text)),
                        Err(r) => r,
                    }
                }
                "input" => match parse_body::<InputRequest>(req, "input request (InputRequest)") {
                    Ok(i) => result(sup.input(name, &i)),
                    Err(r) => r,
                },
                "exec" => match parse_body::<ExecRequest>(req, "exec request (ExecRequest)") {
                    Ok(e) => result(sup.exec(name, &e)),
                    Err(r) => r,
                },
                "start" => match body::<StartRequest>(req, "start request") {
                    Ok(s) => result(sup.start(name, s.fresh)),
                    Err(r) => r,
                },
                "stop" => match body::<StopRequest>(req, "stop request") {
                    Ok(s) => result(sup.stop(name, &s)),
                    Err(r) => r,
                },
                "media" => match parse_body::<MediaRequest>(req, "media request") {
                    Ok(s) => result(sup.media(name, &s)),
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
#[derive(Default, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

fn handle_connection(
    sup: &Arc<Supervisor>,
    tracker: &Tracker,
    stream: UnixStream,
    ticket: Ticket,
    limits: ServerLimits,
) {
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(DeadlineReader {
        stream,
        deadline: Instant::now() + limits.request_deadline,
    });
    let req = match http::read_request(&mut reader, Limits::default()) {
        Ok(r) if !ticket.was_shed() => r,
        result => {
            let reply = match result {
                _ if ticket.was_shed() => Some((
                    503,
                    "connection closed to make room for newer ones: send the request at once after connecting".to_string(),
                )),
                Err(e) => unreadable(&e, limits.request_deadline),
                Ok(_) => None,
            };
            if let Some((status, msg)) = reply {
                let _ = send_error(&mut out, status, &msg);
            }
            drop(reader);
            linger_close(out);
            return;
        }
    };
    drop(reader);
    answer(sup, tracker, out, req, ticket, limits);
}

/// Answers a request read in full.
fn answer(
    sup: &Arc<Supervisor>,
    tracker: &Tracker,
    mut out: UnixStream,
    req: Request,
    ticket: Ticket,
    limits: ServerLimits,
) {
    let streaming = req.path.trim_end_matches('/') == "/v1/events" && req.method == "GET";
    let phase = if streaming {
        Phase::Streaming
    } else {
        Phase::Working
    };
    if !tracker.set_phase(&ticket, phase, limits.max_event_streams) {
        return;
    }
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
        Reply::Events(since) => stream_events(sup, &mut out, since, &ticket),
    }
}

fn stream_events(sup: &Supervisor, out: &mut UnixStream, since: Option<u64>, ticket: &Ticket) {
    let rx = sup.events.subscribe(since);
    if http::write_chunked_head(out, 200, "application/x-ndjson").is_err() {
        return;
    }
    let mut quiet_since = Instant::now();
    loop {
        if ticket.was_shed() {
            // Too many streams: this, the oldest, ends cleanly.
            let _ = http::write_chunk(out, b"");
            return;
        }
        let chunk = match rx.recv_timeout(STREAM_TICK) {
            Ok(ev) => {
                let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                line.push(b'\n');
                line
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if quiet_since.elapsed() < KEEPALIVE {
                    continue;
                }
                b"\n".to_vec()
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = http::write_chunk(out, b"");
                return;
            }
        };
        quiet_since = Instant::now();
        if http::write_chunk(out, &chunk).is_err() {
            return;
        }
    }
}
