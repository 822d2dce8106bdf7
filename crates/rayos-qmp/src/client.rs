//! Blocking QMP and guest-agent clients over a unix socket.
//!
//! [`QmpClient`] performs the handshake (greeting, `qmp_capabilities`),
//! then sends one command at a time and waits for the reply carrying the
//! same `id`. Events that arrive meanwhile are queued, not dropped, so a
//! caller can wait for `STOP`, `SHUTDOWN` or `MIGRATION` later. Replies with
//! another id (left over from an earlier, timed-out command) are discarded.
//!
//! [`GuestAgent`] talks to the QEMU guest agent through QEMU's chardev
//! socket. The agent may be absent, slow, or still holding replies to a
//! previous client, so every exchange starts with `guest-sync-delimited` and
//! a fresh random id, and everything before the 0xFF delimiter is dropped.
//!
//! [`QmpClient::execute_with_fd`] passes a file descriptor along with a
//! command (SCM_RIGHTS on the command's first byte), which is how `getfd`
//! hands QEMU a pipe for `fd:` migration without any shell or path.
//!
//! Limits: one command in flight at a time; no out-of-band commands; every
//! wait is bounded by a timeout.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayos_base::sys;
use serde_json::{Value, json};

use crate::wire::{DEFAULT_MAX_LINE, Event, LineBuffer, Message, WireError, encode_command};

/// What can go wrong talking to QEMU's QMP socket or to a guest agent.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be connected to.
    #[error("cannot connect to {path}")]
    Connect {
        /// The socket's path.
        path: PathBuf,
        /// The error from connect(2).
        #[source]
        source: std::io::Error,
    },
    /// The peer sent no QMP greeting, or not one as QMP has it; holds the
    /// socket's label.
    #[error("no QMP greeting from {0}")]
    Handshake(String),
    /// Writing a command to the socket failed.
    #[error("sending {command} failed")]
    Send {
        /// The command's name.
        command: String,
        /// The error from the write.
        #[source]
        source: std::io::Error,
    },
    /// Reading the reply failed.
    #[error("reading the reply to {command} failed")]
    Receive {
        /// The command's name.
        command: String,
        /// The error from the read.
        #[source]
        source: std::io::Error,
    },
    /// The peer sent bytes that are not a QMP message.
    #[error("bad reply to {command}")]
    Protocol {
        /// The command's name.
        command: String,
        /// What was wrong with the line.
        #[source]
        source: WireError,
    },
    /// The peer closed the connection (QEMU exited) before it replied; holds
    /// the command's name.
    #[error("connection closed while waiting for {0}")]
    Closed(String),
    /// No reply came within the client's timeout.
    #[error("no reply to {command} within {timeout:?}")]
    Timeout {
        /// The command's name.
        command: String,
        /// How long the client waited.
        timeout: Duration,
    },
    /// QEMU answered with an error.
    #[error("{command} failed: {class}: {desc}")]
    Rejected {
        /// The command's name.
        command: String,
        /// QEMU's error class (`GenericError`, `DeviceNotFound`, …).
        class: String,
        /// QEMU's description of the error.
        desc: String,
    },
}

impl QmpError {
    /// True when the peer went away (QEMU exited), as opposed to a command
    /// that QEMU refused.
    pub fn is_disconnect(&self) -> bool {
        match self {
            QmpError::Closed(_) => true,
            QmpError::Send { source, .. } | QmpError::Receive { source, .. } => matches!(
                source.kind(),
                ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}

/// A line-oriented JSON connection with a deadline on every read.
#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    lines: LineBuffer,
    label: String,
}

enum Read1 {
    Line(Vec<u8>),
    Timeout,
}

impl Conn {
    fn new(stream: UnixStream, label: String) -> Self {
        Conn {
            stream,
            lines: LineBuffer::new(DEFAULT_MAX_LINE),
            label,
        }
    }

    fn send(&mut self, command: &str, bytes: &[u8], timeout: Duration) -> Result<(), QmpError> {
        self.write_within(command, timeout)?;
        self.stream
            .write_all(bytes)
            .map_err(|e| send_error(command, e))
    }

    /// Bounds the writes of `command` by `timeout` (at least 1 ms: a zero
    /// timeout means none to the socket).
    fn write_within(&self, command: &str, timeout: Duration) -> Result<(), QmpError> {
        self.stream
            .set_write_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(|e| send_error(command, e))
    }

    /// [`Conn::send`] with `fd` attached to the first byte (SCM_RIGHTS).
    fn send_with_fd(
        &mut self,
        command: &str,
        bytes: &[u8],
        fd: BorrowedFd<'_>,
        timeout: Duration,
    ) -> Result<(), QmpError> {
        self.write_within(command, timeout)?;
        let sent = loop {
            match sys::send_with_fd(&self.stream, bytes, fd) {
                Ok(n) => break n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(send_error(command, e)),
            }
        };
        // The descriptor went with the first chunk; the rest is plain bytes.
        self.stream
            .write_all(&bytes[sent..])
            .map_err(|e| send_error(command, e))
    }

    /// The next message of the reply to `command`; at `deadline` the
    /// [`QmpError::Timeout`] that names `timeout`, the time it was given.
    fn next_message(
        &mut self,
        command: &str,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Message, QmpError> {
        match self.read_line(command, deadline)? {
            Read1::Line(line) => {
                crate::wire::parse_message(&line).map_err(|source| QmpError::Protocol {
                    command: command.into(),
                    source,
                })
            }
            Read1::Timeout => Err(QmpError::Timeout {
                command: command.into(),
                timeout,
            }),
        }
    }

    /// Fills the buffer until a line is complete or the deadline passes.
    fn read_line(&mut self, command: &str, deadline: Instant) -> Result<Read1, QmpError> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(line) = self
                .lines
                .next_line()
                .map_err(|source| QmpError::Protocol {
                    command: command.into(),
                    source,
                })?
            {
                return Ok(Read1::Line(line));
            }
            if !self.fill(command, deadline, &mut chunk)? {
                return Ok(Read1::Timeout);
            }
        }
    }

    /// One read from the socket into the buffer; false on deadline.
    fn fill(
        &mut self,
        command: &str,
        deadline: Instant,
        chunk: &mut [u8],
    ) -> Result<bool, QmpError> {
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let recv_err = |source| QmpError::Receive {
            command: command.into(),
            source,
        };
        self.stream
            .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))
            .map_err(recv_err)?;
        match self.stream.read(chunk) {
            Ok(0) => Err(QmpError::Closed(command.into())),
            Ok(n) => {
                self.lines.feed(&chunk[..n]);
                Ok(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(recv_err(e)),
        }
    }
}

fn send_error(command: &str, source: std::io::Error) -> QmpError {
    QmpError::Send {
        command: command.into(),
        source,
    }
}

/// A QMP connection to one QEMU.
#[derive(Debug)]
pub struct QmpClient {
    conn: Conn,
    events: VecDeque<Event>,
    next_id: u64,
    timeout: Duration,
    version: Value,
}

/// Events kept for callers; older ones are dropped beyond this many so a
/// long-lived connection nobody drains cannot grow without bound.
const MAX_QUEUED_EVENTS: usize = 1024;

impl QmpClient {
    /// Connects to QEMU's QMP socket and completes the handshake. `timeout`
    /// bounds the handshake and is the default for every later command.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Self::handshake(stream, path.display().to_string(), timeout)
    }

    /// Retries [`QmpClient::connect`] until QEMU has created its socket or
    /// `timeout` passes (QEMU creates the socket a little after it starts).
    pub fn connect_retry(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let deadline = Instant::now() + timeout;
        loop {
            match Self::connect(path, timeout) {
                Ok(c) => return Ok(c),
                Err(e @ QmpError::Connect { .. }) if Instant::now() >= deadline => return Err(e),
                Err(QmpError::Connect { .. }) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Completes the handshake on an already connected stream.
    pub fn handshake(
        stream: UnixStream,
        label: String,
        timeout: Duration,
    ) -> Result<Self, QmpError> {
        let mut client = QmpClient {
            conn: Conn::new(stream, label),
            events: VecDeque::new(),
            next_id: 1,
            timeout,
            version: Value::Null,
        };
        let deadline = Instant::now() + timeout;
        let greeting = match client.conn.read_line("greeting", deadline) {
            Ok(Read1::Line(line)) => crate::wire::parse_message(&line),
            Ok(Read1::Timeout) | Err(_) => {
                return Err(QmpError::Handshake(client.conn.label.clone()));
            }
        };
        match greeting {
            Ok(Message::Greeting { version, .. }) => client.version = version,
            _ => return Err(QmpError::Handshake(client.conn.label.clone())),
        }
        client.execute("qmp_capabilities", None)?;
        Ok(client)
    }

    /// The `version` object of QEMU's greeting.
    pub fn version(&self) -> &Value {
        &self.version
    }

    /// Changes the default timeout of later commands.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs `command` and returns its `return` value.
    pub fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        self.execute_timeout(command, args, self.timeout)
    }

    /// [`QmpClient::execute`] with its own timeout.
    pub fn execute_timeout(
        &mut self,
        command: &str,
        args: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        self.execute_inner(command, args, None, timeout)
    }

    /// Runs `command` with `fd` passed alongside (SCM_RIGHTS), as `getfd`
    /// and `add-fd` expect. QEMU holds its own copy afterwards; the caller
    /// keeps (and should close) theirs.
    pub fn execute_with_fd(
        &mut self,
        command: &str,
        args: Option<Value>,
        fd: BorrowedFd<'_>,
    ) -> Result<Value, QmpError> {
        self.execute_inner(command, args, Some(fd), self.timeout)
    }

    fn execute_inner(
        &mut self,
        command: &str,
        args: Option<Value>,
        fd: Option<BorrowedFd<'_>>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = json!(self.next_id);
        self.next_id += 1;
        let bytes = encode_command(command, args.as_ref(), Some(&id));
        match fd {
            Some(fd) => self.conn.send_with_fd(command, &bytes, fd, timeout)?,
            None => self.conn.send(command, &bytes, timeout)?,
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.conn.next_message(command, deadline, timeout)? {
                Message::Event(e) => self.queue(e),
                Message::Return { id: Some(r), value } if r == id => return Ok(value),
                Message::Error {
                    id: Some(r),
                    class,
                    desc,
                } if r == id => {
                    return Err(QmpError::Rejected {
                        command: command.into(),
                        class,
                        desc,
                    });
                }
                // A late reply to an earlier command that timed out.
                Message::Return { .. } | Message::Error { .. } | Message::Greeting { .. } => {}
            }
        }
    }

    fn queue(&mut self, e: Event) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Events received so far, oldest first; the queue is emptied.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// Waits for an event named `name` (already queued or arriving within
    /// `timeout`); other events stay queued. `Ok(None)` on timeout.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<Option<Event>, QmpError> {
        if let Some(pos) = self.events.iter().position(|e| e.name == name) {
            return Ok(self.events.remove(pos));
        }
        let deadline = Instant::now() + timeout;
        let what = format!("event {name}");
        loop {
            let line = match self.conn.read_line(&what, deadline)? {
                Read1::Line(l) => l,
                Read1::Timeout => return Ok(None),
            };
            match crate::wire::parse_message(&line) {
                Ok(Message::Event(e)) if e.name == name => return Ok(Some(e)),
                Ok(Message::Event(e)) => self.queue(e),
                Ok(_) => {}
                Err(source) => {
                    return Err(QmpError::Protocol {
                        command: what,
                        source,
                    });
                }
            }
        }
    }
}

/// A connection to the QEMU guest agent, through QEMU's chardev socket.
#[derive(Debug)]
pub struct GuestAgent {
    conn: Conn,
    timeout: Duration,
}

impl GuestAgent {
    /// Connects to the agent's socket. Connecting succeeds even when no agent
    /// runs in the guest (QEMU owns the socket); [`GuestAgent::sync`] tells.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::from_stream(
            stream,
            path.display().to_string(),
            timeout,
        ))
    }

    /// A guest agent on a stream that is already connected; `label` names the
    /// peer in errors.
    pub fn from_stream(stream: UnixStream, label: String, timeout: Duration) -> Self {
        GuestAgent {
            conn: Conn::new(stream, label),
            timeout,
        }
    }

    /// How long later calls wait for the agent. A short wait finds out
    /// whether an agent is there at all (`sync`); a command the guest does
    /// slow work for (`guest-set-time` writes the hardware clock) may then
    /// be given longer.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// `guest-sync-delimited` with `id`: resynchronises the stream and
    /// proves an agent is listening. `Ok(false)` when none answers in time.
    pub fn sync(&mut self, id: u64) -> Result<bool, QmpError> {
        let command = "guest-sync-delimited";
        // A 0xFF tells the agent to discard any partial input it holds.
        let mut bytes = vec![0xFFu8];
        bytes.extend(encode_command(command, Some(&json!({ "id": id })), None));
        self.conn.send(command, &bytes, self.timeout)?;
        let deadline = Instant::now() + self.timeout;
        let mut chunk = [0u8; 4096];
        // Find the delimiter first: anything before it is stale.
        loop {
            if self.conn.lines.skip_past_delimiter() {
                break;
            }
            if !self.conn.fill(command, deadline, &mut chunk)? {
                return Ok(false);
            }
        }
        loop {
            match self.conn.read_line(command, deadline)? {
                Read1::Timeout => return Ok(false),
                Read1::Line(line) => match crate::wire::parse_message(&line) {
                    Ok(Message::Return { value, .. }) if value == json!(id) => return Ok(true),
                    // Stale replies or noise from a previous session.
                    _ => {}
                },
            }
        }
    }

    /// Sends an agent command that answers nothing on success
    /// (`guest-shutdown`: the guest goes down instead), after a successful
    /// [`GuestAgent::sync`], and listens for `window`: an error reply (the
    /// command is unknown or blocked in this agent) is returned as
    /// [`QmpError::Rejected`]; silence or a return value is success.
    pub fn send_unanswered(
        &mut self,
        command: &str,
        args: Option<Value>,
        window: Duration,
    ) -> Result<(), QmpError> {
        let bytes = encode_command(command, args.as_ref(), None);
        self.conn.send(command, &bytes, self.timeout)?;
        let deadline = Instant::now() + window;
        loop {
            let line = match self.conn.read_line(command, deadline) {
                Ok(Read1::Line(l)) => l,
                Ok(Read1::Timeout) => return Ok(()),
                // The guest going down closes the channel: that is success.
                Err(e) if e.is_disconnect() => return Ok(()),
                Err(e) => return Err(e),
            };
            match crate::wire::parse_message(&line) {
                Ok(Message::Error { class, desc, .. }) => {
                    return Err(QmpError::Rejected {
                        command: command.into(),
                        class,
                        desc,
                    });
                }
                Ok(Message::Return { .. }) => return Ok(()),
                _ => {}
            }
        }
    }

    /// Runs an agent command after a successful [`GuestAgent::sync`]. The
    /// agent does not echo ids, so replies are taken in order.
    pub fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let bytes = encode_command(command, args.as_ref(), None);
        self.conn.send(command, &bytes, self.timeout)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.conn.next_message(command, deadline, self.timeout)? {
                Message::Return { value, .. } => return Ok(value),
                Message::Error { class, desc, .. } => {
                    return Err(QmpError::Rejected {
                        command: command.into(),
                        class,
                        desc,
                    });
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::thread;

    /// A scripted QMP server on the other end of a socket pair: for each
    /// command received it writes the given raw bytes.
    fn server(
        stream: UnixStream,
        greeting: &'static [u8],
        replies: Vec<Vec<u8>>,
    ) -> thread::JoinHandle<Vec<Value>> {
        thread::spawn(move || {
            let mut w = stream.try_clone().unwrap();
            let mut r = std::io::BufReader::new(stream);
            w.write_all(greeting).unwrap();
            let mut seen = Vec::new();
            for reply in replies {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                let v: Value = serde_json::from_str(&line).unwrap();
                let id = v["id"].to_string();
                seen.push(v);
                let reply = String::from_utf8(reply).unwrap().replace("ID", &id);
                w.write_all(reply.as_bytes()).unwrap();
            }
            seen
        })
    }

    const GREETING: &[u8] =
        b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 7}}, \"capabilities\": []}}\r\n";

    /// A client past its handshake with [`server`] answering `replies`.
    fn scripted(replies: Vec<Vec<u8>>) -> (QmpClient, thread::JoinHandle<Vec<Value>>) {
        let (a, b) = UnixStream::pair().unwrap();
        let srv = server(b, GREETING, replies);
        let c = QmpClient::handshake(a, "test".into(), Duration::from_secs(5)).unwrap();
        (c, srv)
    }

    #[test]
    fn handshake_execute_and_events() {
        let (mut c, srv) = scripted(vec![
                b"{\"return\": {}, \"id\": ID}\r\n".to_vec(),
                // An event and a stale reply before the real one, split oddly.
                b"{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\r\n{\"return\": 99, \"id\": 12345}\r\n{\"return\": {\"status\": \"paused\"}, \"id\": ID}\r\n".to_vec(),
                b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"no such thing\"}, \"id\": ID}\r\n".to_vec(),
            ]);
        assert_eq!(c.version()["qemu"]["major"], 7);
        let v = c.execute("query-status", None).unwrap();
        assert_eq!(v["status"], "paused");
        let e = c.execute("frobnicate", Some(json!({"x": 1}))).unwrap_err();
        assert!(e.to_string().contains("frobnicate"), "{e}");
        assert!(e.to_string().contains("no such thing"), "{e}");
        assert_eq!(
            c.wait_event("STOP", Duration::from_millis(10))
                .unwrap()
                .unwrap()
                .name,
            "STOP"
        );
        let seen = srv.join().unwrap();
        assert_eq!(seen[0]["execute"], "qmp_capabilities");
        assert_eq!(seen[2]["arguments"]["x"], 1);
    }

    #[test]
    fn timeout_names_the_command() {
        let (a, b) = UnixStream::pair().unwrap();
        let srv = thread::spawn(move || {
            let mut w = b.try_clone().unwrap();
            let mut r = std::io::BufReader::new(b);
            w.write_all(GREETING).unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            w.write_all(b"{\"return\": {}, \"id\": 1}\n").unwrap();
            // Reads the next command and never answers; ends when the
            // client hangs up.
            while r.read_line(&mut line).unwrap_or(0) > 0 {}
        });
        let mut c = QmpClient::handshake(a, "test".into(), Duration::from_secs(5)).unwrap();
        let e = c
            .execute_timeout("query-migrate", None, Duration::from_millis(100))
            .unwrap_err();
        assert!(matches!(e, QmpError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("query-migrate"));
        drop(c);
        srv.join().unwrap();
    }

    #[test]
    fn closed_and_garbage_connections() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        assert!(matches!(
            QmpClient::handshake(a, "t".into(), Duration::from_secs(1)),
            Err(QmpError::Handshake(_))
        ));

        let (mut c, srv) = scripted(vec![
            b"{\"return\": {}, \"id\": ID}\n".to_vec(),
            b"\x00\x01 garbage\n".to_vec(),
        ]);
        let e = c.execute("stop", None).unwrap_err();
        assert!(matches!(e, QmpError::Protocol { .. }), "{e}");
        srv.join().unwrap();
        // The server thread is gone: the next command sees a closed socket.
        let e = c.execute("cont", None).unwrap_err();
        assert!(e.is_disconnect(), "{e}");

        let (a, b) = UnixStream::pair().unwrap();
        let mut w = b.try_clone().unwrap();
        let t = thread::spawn(move || {
            w.write_all(GREETING).unwrap();
            // Never ends its line: the client must give up at the cap, not
            // buffer forever.
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..(DEFAULT_MAX_LINE / chunk.len() + 4) {
                if w.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        let e = QmpClient::handshake(a, "t".into(), Duration::from_secs(5)).unwrap_err();
        drop(b);
        assert!(
            matches!(e, QmpError::Protocol { .. } | QmpError::Handshake(_)),
            "{e}"
        );
        t.join().unwrap();
    }

    /// Receives one message and the descriptor attached to it.
    fn recv_fd(stream: &UnixStream) -> (Vec<u8>, Option<std::os::fd::OwnedFd>) {
        let mut buf = vec![0u8; 4096];
        let (n, fd) = sys::recv_with_fd(stream, &mut buf).unwrap();
        assert!(n > 0, "the peer closed the socket");
        buf.truncate(n);
        (buf, fd)
    }

    /// `execute_with_fd` delivers a working descriptor together with the
    /// command: the server writes through the received pipe end and the
    /// client reads it from its own end.
    #[test]
    fn execute_with_fd_passes_a_pipe() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || {
            let mut w = b.try_clone().unwrap();
            w.write_all(GREETING).unwrap();
            let (first, fd) = recv_fd(&b);
            assert!(fd.is_none(), "qmp_capabilities carries no fd");
            assert!(first.ends_with(b"\n"));
            w.write_all(b"{\"return\": {}, \"id\": 1}\n").unwrap();
            let (mut cmd, fd) = recv_fd(&b);
            let fd = fd.expect("getfd must carry a descriptor");
            // The rest of the line may follow without the descriptor.
            let mut r = std::io::BufReader::new(b.try_clone().unwrap());
            if !cmd.ends_with(b"\n") {
                r.read_until(b'\n', &mut cmd).unwrap();
            }
            let v: Value = serde_json::from_slice(&cmd).unwrap();
            assert_eq!(v["execute"], "getfd");
            assert_eq!(v["arguments"]["fdname"], "migsave");
            std::fs::File::from(fd)
                .write_all(b"through the pipe")
                .unwrap();
            w.write_all(format!("{{\"return\": {{}}, \"id\": {}}}\n", v["id"]).as_bytes())
                .unwrap();
        });
        let mut c = QmpClient::handshake(a, "t".into(), Duration::from_secs(5)).unwrap();
        let (mut rd, wr) = std::io::pipe().unwrap();
        c.execute_with_fd(
            "getfd",
            Some(json!({"fdname": "migsave"})),
            std::os::fd::AsFd::as_fd(&wr),
        )
        .unwrap();
        drop(wr);
        t.join().unwrap();
        let mut got = String::new();
        rd.read_to_string(&mut got).unwrap();
        assert_eq!(got, "through the pipe");
    }

    #[test]
    fn guest_agent_sync_skips_stale_output() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || {
            let mut w = b.try_clone().unwrap();
            let mut r = std::io::BufReader::new(b);
            let mut buf = Vec::new();
            r.read_until(b'\n', &mut buf).unwrap();
            assert_eq!(buf[0], 0xFF);
            let v: Value = serde_json::from_slice(&buf[1..]).unwrap();
            let id = v["arguments"]["id"].as_u64().unwrap();
            w.write_all(b"{\"return\": 1}\n junk").unwrap();
            w.write_all(b"\x00\n").unwrap();
            w.write_all(&[0xFF]).unwrap();
            w.write_all(format!("{{\"return\": {id}}}\n").as_bytes())
                .unwrap();
            buf.clear();
            r.read_until(b'\n', &mut buf).unwrap();
            w.write_all(b"{\"return\": {}}\n").unwrap();
        });
        let mut ga = GuestAgent::from_stream(a, "t".into(), Duration::from_secs(5));
        assert!(ga.sync(424242).unwrap());
        assert_eq!(
            ga.execute("guest-set-time", Some(json!({"time": 1})))
                .unwrap(),
            json!({})
        );
        t.join().unwrap();

        // No agent: sync answers false within the timeout.
        let (a, _b) = UnixStream::pair().unwrap();
        let mut ga = GuestAgent::from_stream(a, "t".into(), Duration::from_millis(100));
        assert!(!ga.sync(1).unwrap());
    }

    #[test]
    fn unanswered_command_tells_refusal_from_silence() {
        // Silence (the guest is going down): success.
        let (a, _b) = UnixStream::pair().unwrap();
        let mut ga = GuestAgent::from_stream(a, "t".into(), Duration::from_secs(5));
        ga.send_unanswered("guest-shutdown", None, Duration::from_millis(200))
            .unwrap();
        // An agent that does not know the command says so.
        let (a, b) = UnixStream::pair().unwrap();
        let mut w = b.try_clone().unwrap();
        w.write_all(b"{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"no\"}}\n")
            .unwrap();
        let mut ga = GuestAgent::from_stream(a, "t".into(), Duration::from_secs(5));
        let e = ga
            .send_unanswered("guest-shutdown", None, Duration::from_secs(2))
            .unwrap_err();
        assert!(matches!(e, QmpError::Rejected { .. }), "{e}");
        drop(b);
        // The channel closing after the command is the guest going away.
        let (a, b) = UnixStream::pair().unwrap();
        let t = thread::spawn(move || {
            let mut r = std::io::BufReader::new(b);
            let mut buf = Vec::new();
            r.read_until(b'\n', &mut buf).unwrap();
        });
        let mut ga = GuestAgent::from_stream(a, "t".into(), Duration::from_secs(5));
        ga.send_unanswered("guest-shutdown", None, Duration::from_secs(2))
            .unwrap();
        t.join().unwrap();
    }
}
