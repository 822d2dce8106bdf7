//! QMP wire format, without I/O: framing of the byte stream into lines,
//! classification of each line, and encoding of commands.
//!
//! Protocol: QEMU writes one JSON object per line (`\r\n` terminated). The
//! first is the greeting (`{"QMP": {...}}`); afterwards each line is either
//! the reply to a command (`{"return": ...}` or `{"error": {"class",
//! "desc"}}`, echoing the command's `id` when one was sent) or an
//! asynchronous event (`{"event": NAME, "data": ..., "timestamp": ...}`).
//! The guest agent (QGA) speaks the same reply format without a greeting, and
//! marks the start of a `guest-sync-delimited` reply with a 0xFF byte.
//!
//! Limits: every line is capped ([`DEFAULT_MAX_LINE`]); a peer that sends a
//! longer line is treated as broken, since nothing RayOS asks for produces
//! replies of that size. Bytes that are not JSON objects are errors, never
//! panics.

use serde_json::{Map, Value};

/// Longest line accepted from QEMU or a guest agent (1 MiB).
pub const DEFAULT_MAX_LINE: usize = 1 << 20;

/// Why a line from the peer cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The peer sent more than the cap without a line end.
    #[error("line longer than {max} bytes")]
    LineTooLong {
        /// The cap, in bytes.
        max: usize,
    },
    /// The line does not parse as JSON; holds the parser's message.
    #[error("line is not JSON: {0}")]
    NotJson(String),
    /// The line is JSON but neither a greeting, a reply nor an event; holds the
    /// line.
    #[error("line is JSON but not a QMP message: {0}")]
    NotQmp(String),
}

/// One asynchronous event, as QEMU sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event's name (`STOP`, `SHUTDOWN`, `RESET`, …).
    pub name: String,
    /// `null` when the event carries no data.
    pub data: Value,
    /// Seconds and microseconds since the epoch, when QEMU sent a timestamp.
    pub timestamp: Option<(i64, i64)>,
}

/// One line from the peer, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// `{"QMP": {"version": ..., "capabilities": [...]}}`
    Greeting {
        /// QEMU's version object, as sent.
        version: Value,
        /// The capabilities QEMU offers (RayOS enables none of them).
        capabilities: Vec<String>,
    },
    /// A successful reply.
    Return {
        /// The `id` the command carried, echoed back.
        id: Option<Value>,
        /// The command's `return` value.
        value: Value,
    },
    /// A command QEMU refused.
    Error {
        /// The `id` the command carried, echoed back.
        id: Option<Value>,
        /// QEMU's error class (`GenericError`, `DeviceNotFound`, …).
        class: String,
        /// QEMU's description of the error.
        desc: String,
    },
    /// An asynchronous event.
    Event(Event),
}

/// Classifies one line (without its terminator).
pub fn parse_message(line: &[u8]) -> Result<Message, WireError> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| WireError::NotJson(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(WireError::NotQmp(shorten(line)));
    };
    let id = obj.remove("id");
    if let Some(g) = obj.remove("QMP") {
        let mut g = match g {
            Value::Object(g) => g,
            _ => return Err(WireError::NotQmp(shorten(line))),
        };
        let capabilities = match g.remove("capabilities") {
            Some(Value::Array(a)) => a
                .into_iter()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        return Ok(Message::Greeting {
            version: g.remove("version").unwrap_or(Value::Null),
            capabilities,
        });
    }
    if let Some(value) = obj.remove("return") {
        return Ok(Message::Return { id, value });
    }
    if let Some(err) = obj.remove("error") {
        let mut err = match err {
            Value::Object(e) => e,
            _ => return Err(WireError::NotQmp(shorten(line))),
        };
        return Ok(Message::Error {
            id,
            class: take_string(&mut err, "class").unwrap_or_else(|| "GenericError".into()),
            desc: take_string(&mut err, "desc").unwrap_or_default(),
        });
    }
    if let Some(Value::String(name)) = obj.remove("event") {
        let timestamp = obj.remove("timestamp").and_then(|t| {
            Some((
                t.get("seconds")?.as_i64()?,
                t.get("microseconds")?.as_i64()?,
            ))
        });
        return Ok(Message::Event(Event {
            name,
            data: obj.remove("data").unwrap_or(Value::Null),
            timestamp,
        }));
    }
    Err(WireError::NotQmp(shorten(line)))
}

fn take_string(obj: &mut Map<String, Value>, key: &str) -> Option<String> {
    match obj.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// The first bytes of a bad line, for error messages (never the whole of a
/// possibly huge line).
fn shorten(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(&line[..line.len().min(120)]);
    if line.len() > 120 {
        format!("{s}...")
    } else {
        s.into_owned()
    }
}

/// Encodes `{"execute": name, "arguments": args, "id": id}` plus `\n`.
/// Commands whose name starts with `guest-` go to the guest agent, which
/// uses the same encoding.
pub fn encode_command(name: &str, args: Option<&Value>, id: Option<&Value>) -> Vec<u8> {
    let mut obj = Map::new();
    obj.insert("execute".into(), Value::String(name.into()));
    if let Some(a) = args {
        obj.insert("arguments".into(), a.clone());
    }
    if let Some(id) = id {
        obj.insert("id".into(), id.clone());
    }
    // A map of JSON values always serialises.
    let mut out = serde_json::to_vec(&Value::Object(obj)).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Splits a byte stream into lines, holding at most `max` bytes of an
/// unfinished line.
#[derive(Debug)]
pub struct LineBuffer {
    buf: Vec<u8>,
    max: usize,
    /// Set after an over-long line: the stream has lost framing for good.
    broken: bool,
}

impl Default for LineBuffer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE)
    }
}

impl LineBuffer {
    /// An empty buffer that refuses lines longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        LineBuffer {
            buf: Vec::new(),
            max,
            broken: false,
        }
    }

    /// Appends bytes read from the peer.
    pub fn feed(&mut self, data: &[u8]) {
        if !self.broken {
            self.buf.extend_from_slice(data);
        }
    }

    /// The next complete line without `\n` or `\r\n`; `Ok(None)` when more
    /// bytes are needed. Empty lines are skipped.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        if self.broken {
            return Err(WireError::LineTooLong { max: self.max });
        }
        loop {
            let Some(pos) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > self.max {
                    self.broken = true;
                    self.buf = Vec::new();
                    return Err(WireError::LineTooLong { max: self.max });
                }
                return Ok(None);
            };
            if pos > self.max {
                self.broken = true;
                self.buf = Vec::new();
                return Err(WireError::LineTooLong { max: self.max });
            }
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Ok(Some(line));
            }
        }
    }

    /// Drops everything up to and including the first 0xFF byte (the guest
    /// agent's sync delimiter). Returns whether one was found; when not, the
    /// buffer is emptied because all of it precedes the delimiter.
    pub fn skip_past_delimiter(&mut self) -> bool {
        match self.buf.iter().position(|&b| b == 0xFF) {
            Some(pos) => {
                self.buf.drain(..=pos);
                true
            }
            None => {
                self.buf.clear();
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lines(buf: &mut LineBuffer) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(l) = buf.next_line().unwrap() {
            out.push(l);
        }
        out
    }

    #[test]
    fn greeting_return_error_event() {
        let g = br#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;
        match parse_message(g).unwrap() {
            Message::Greeting {
                version,
                capabilities,
            } => {
                assert_eq!(version["qemu"]["major"], 7);
                assert_eq!(capabilities, vec!["oob".to_string()]);
            }
            m => panic!("{m:?}"),
        }
        assert_eq!(
            parse_message(br#"{"return": {}, "id": 4}"#).unwrap(),
            Message::Return {
                id: Some(json!(4)),
                value: json!({})
            }
        );
        assert_eq!(
            parse_message(br#"{"id": "x", "error": {"class": "CommandNotFound", "desc": "The command foo has not been found"}}"#).unwrap(),
            Message::Error {
                id: Some(json!("x")),
                class: "CommandNotFound".into(),
                desc: "The command foo has not been found".into()
            }
        );
        match parse_message(
            br#"{"timestamp": {"seconds": 1700000000, "microseconds": 5}, "event": "STOP"}"#,
        )
        .unwrap()
        {
            Message::Event(e) => {
                assert_eq!(e.name, "STOP");
                assert_eq!(e.data, Value::Null);
                assert_eq!(e.timestamp, Some((1700000000, 5)));
            }
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"not json"[..],
            b"",
            b"[1,2,3]",
            b"42",
            b"{\"QMP\": 3}",
            b"{\"error\": \"x\"}",
            b"{\"event\": 5}",
            b"{\"something\": 1}",
            b"\xff\xfe\x00{",
            b"{\"return\": ",
        ] {
            assert!(
                parse_message(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Error with missing fields still classifies, with defaults.
        assert!(matches!(
            parse_message(br#"{"error": {}}"#).unwrap(),
            Message::Error { .. }
        ));
    }

    #[test]
    fn partial_lines_are_reassembled() {
        let mut b = LineBuffer::default();
        b.feed(b"{\"return\"");
        assert_eq!(b.next_line().unwrap(), None);
        b.feed(b": {}}\r\n\r\n{\"event\": \"RE");
        assert_eq!(lines(&mut b), vec![b"{\"return\": {}}".to_vec()]);
        b.feed(b"SUME\"}\n");
        let l = b.next_line().unwrap().unwrap();
        assert!(matches!(parse_message(&l).unwrap(), Message::Event(e) if e.name == "RESUME"));
        assert_eq!(b.next_line().unwrap(), None);
    }

    #[test]
    fn huge_lines_are_capped() {
        let mut b = LineBuffer::new(64);
        b.feed(&[b'a'; 65]);
        assert_eq!(b.next_line(), Err(WireError::LineTooLong { max: 64 }));
        // Once broken, always broken: framing is lost.
        b.feed(b"{}\n");
        assert!(b.next_line().is_err());

        let mut b = LineBuffer::new(64);
        let mut long = vec![b'x'; 100];
        long.push(b'\n');
        b.feed(&long);
        assert!(b.next_line().is_err());

        // Exactly at the cap is fine.
        let mut b = LineBuffer::new(4);
        b.feed(b"abcd\n");
        assert_eq!(b.next_line().unwrap(), Some(b"abcd".to_vec()));
    }

    #[test]
    fn delimiter_skipping() {
        let mut b = LineBuffer::default();
        b.feed(b"{\"return\": 1}\n stale junk \xff{\"return\": 7}\n");
        assert!(b.skip_past_delimiter());
        assert_eq!(b.next_line().unwrap(), Some(b"{\"return\": 7}".to_vec()));
        b.feed(b"no delimiter");
        assert!(!b.skip_past_delimiter());
        assert_eq!(b.next_line().unwrap(), None);
    }

    #[test]
    fn encode() {
        let c = encode_command(
            "migrate",
            Some(&json!({"uri": "exec:true"})),
            Some(&json!(3)),
        );
        let v: Value = serde_json::from_slice(&c).unwrap();
        assert_eq!(
            v,
            json!({"execute": "migrate", "arguments": {"uri": "exec:true"}, "id": 3})
        );
        assert_eq!(*c.last().unwrap(), b'\n');
        assert_eq!(
            encode_command("stop", None, None),
            b"{\"execute\":\"stop\"}\n".to_vec()
        );
    }
}
