//! The small subset of HTTP/1.1 the control API speaks, over any byte stream.
//!
//! Protocol: one request per connection (every response says
//! `Connection: close`); request bodies need `Content-Length` (no chunked
//! requests); responses carry `Content-Length`, except the event stream,
//! which is `Transfer-Encoding: chunked` and ends when either side closes.
//!
//! Limits (the daemon parses bytes from any local root process, so every
//! read is bounded): request line and headers together at most
//! [`Limits::max_head`] bytes and [`Limits::max_headers`] lines, body at
//! most [`Limits::max_body`] bytes. A request that breaks a limit gets a
//! 4xx status from [`HttpError::status`]; nothing here panics on input.

use std::io::{self, BufRead, Read, Write};

/// Bounds on what [`read_request`] accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line and headers together, in bytes.
    pub max_head: usize,
    /// Header lines, at most.
    pub max_headers: usize,
    /// Body bytes, at most.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 16 * 1024,
            max_headers: 64,
            max_body: 1024 * 1024,
        }
    }
}

/// Why a request (or, on the client side, a response) could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The peer closed the connection before a complete message.
    #[error("connection closed before a complete request")]
    Closed,
    /// The message is not HTTP/1.1 as this subset has it; says what is wrong.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The head is longer than the limit (in bytes).
    #[error("request head is larger than {0} bytes")]
    HeadTooLarge(usize),
    /// The body is longer than the limit (in bytes).
    #[error("request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    /// A request has a body but no `Content-Length`.
    #[error("a request body needs a Content-Length header")]
    LengthRequired,
    /// A feature outside this subset (chunked requests, another HTTP version,
    /// …); names it.
    #[error("{0} is not supported")]
    Unsupported(String),
    /// Reading from the connection failed.
    #[error("reading the request failed")]
    Read(#[source] io::Error),
}

impl HttpError {
    /// The status a server answers with (0: nothing to answer, the peer is gone).
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Closed | HttpError::Read(_) => 0,
            HttpError::Malformed(_) => 400,
            HttpError::HeadTooLarge(_) => 431,
            HttpError::BodyTooLarge(_) => 413,
            HttpError::LengthRequired => 411,
            HttpError::Unsupported(_) => 501,
        }
    }
}

/// A parsed request. Header names are lower-cased; the path is split from
/// its query, and query values are percent-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, as sent (`GET`, `POST`, …).
    pub method: String,
    /// The path, without its query.
    pub path: String,
    /// The query's names and percent-decoded values, in order.
    pub query: Vec<(String, String)>,
    /// The headers: lower-cased names and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (empty without `Content-Length`).
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one line ending in `\n` into `buf`, counting against `budget`.
fn read_line_bounded<R: BufRead>(
    r: &mut R,
    buf: &mut Vec<u8>,
    budget: &mut usize,
    limit: usize,
) -> Result<(), HttpError> {
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HttpError::Read(e)),
        };
        if avail.is_empty() {
            return Err(HttpError::Closed);
        }
        let (take, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (avail.len(), false),
        };
        if take > *budget {
            return Err(HttpError::HeadTooLarge(limit));
        }
        *budget -= take;
        buf.extend_from_slice(&avail[..take]);
        r.consume(take);
        if done {
            if buf.ends_with(b"\r\n") {
                buf.truncate(buf.len() - 2);
            } else {
                buf.truncate(buf.len() - 1);
            }
            return Ok(());
        }
    }
}

fn utf8(bytes: Vec<u8>, what: &str) -> Result<String, HttpError> {
    String::from_utf8(bytes).map_err(|_| HttpError::Malformed(format!("{what} is not UTF-8")))
}

/// Decodes `%XX` and `+` (a space) in a query component.
pub fn percent_decode(s: &str) -> Result<String, HttpError> {
    decode(s, true)
}

/// Decodes `%XX` in a path segment (`+` stays a plus).
pub fn percent_decode_path(s: &str) -> Result<String, HttpError> {
    decode(s, false)
}

fn decode(s: &str, plus_is_space: bool) -> Result<String, HttpError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| HttpError::Malformed("bad percent escape".into()))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    utf8(out, "query")
}

/// Reads one request from `r`.
pub fn read_request<R: BufRead>(r: &mut R, limits: Limits) -> Result<Request, HttpError> {
    let mut budget = limits.max_head;
    let mut line = Vec::new();
    // RFC 9112 2.2: ignore empty lines before the request line.
    loop {
        line.clear();
        read_line_bounded(r, &mut line, &mut budget, limits.max_head)?;
        if !line.is_empty() {
            break;
        }
    }
    let line = utf8(line, "request line")?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed(format!(
            "request line {:?} is not METHOD TARGET VERSION",
            truncate(&line, 80)
        )));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HttpError::Malformed("bad method".into()));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::Unsupported(format!(
            "protocol {:?}",
            truncate(version, 20)
        )));
    }
    if !target.starts_with('/') {
        return Err(HttpError::Malformed("target must start with '/'".into()));
    }
    let (path, query_text) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let mut query = Vec::new();
    for pair in query_text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        query.push((percent_decode(k)?, percent_decode(v)?));
    }

    let mut headers = Vec::new();
    loop {
        let mut h = Vec::new();
        read_line_bounded(r, &mut h, &mut budget, limits.max_head)?;
        if h.is_empty() {
            break;
        }
        if headers.len() >= limits.max_headers {
            return Err(HttpError::HeadTooLarge(limits.max_head));
        }
        let h = utf8(h, "header")?;
        let Some((name, value)) = h.split_once(':') else {
            return Err(HttpError::Malformed("header without ':'".into()));
        };
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(HttpError::Malformed("bad header name".into()));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }

    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        query,
        headers,
        body: Vec::new(),
    };
    if req.header("transfer-encoding").is_some() {
        return Err(HttpError::Unsupported(
            "Transfer-Encoding in requests".into(),
        ));
    }
    let lengths: Vec<&str> = req
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_str())
        .collect();
    let len = match lengths.as_slice() {
        [] => 0,
        [one] => one
            .parse::<usize>()
            .map_err(|_| HttpError::Malformed("bad Content-Length".into()))?,
        _ => return Err(HttpError::Malformed("more than one Content-Length".into())),
    };
    if len > limits.max_body {
        return Err(HttpError::BodyTooLarge(limits.max_body));
    }
    // No Content-Length means no body (RFC 9112 6.3).
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            HttpError::Closed
        } else {
            HttpError::Read(e)
        }
    })?;
    req.body = body;
    Ok(req)
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The reason phrase for a status code the API uses (`Unknown` for others).
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

/// Writes a complete response with a body.
pub fn write_response<W: Write>(
    w: &mut W,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    )?;
    w.write_all(body)?;
    w.flush()
}

/// Starts a chunked response (the event stream); follow with [`write_chunk`].
pub fn write_chunked_head<W: Write>(w: &mut W, status: u16, content_type: &str) -> io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        reason(status)
    )?;
    w.flush()
}

/// Writes one chunk (an empty `data` ends the stream).
pub fn write_chunk<W: Write>(w: &mut W, data: &[u8]) -> io::Result<()> {
    write!(w, "{:x}\r\n", data.len())?;
    w.write_all(data)?;
    w.write_all(b"\r\n")?;
    w.flush()
}

/// A response as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// The headers: lower-cased names and values, in order.
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the body is chunked (the event stream).
    pub fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    }
}

/// Reads a status line and headers (client side; the daemon is trusted but
/// the reads are bounded all the same).
pub fn read_response_head<R: BufRead>(r: &mut R) -> Result<ResponseHead, HttpError> {
    let limit = 64 * 1024;
    let mut budget = limit;
    let mut line = Vec::new();
    read_line_bounded(r, &mut line, &mut budget, limit)?;
    let line = utf8(line, "status line")?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| HttpError::Malformed(format!("status line {:?}", truncate(&line, 80))))?;
    let mut headers = Vec::new();
    loop {
        let mut h = Vec::new();
        read_line_bounded(r, &mut h, &mut budget, limit)?;
        if h.is_empty() {
            break;
        }
        let h = utf8(h, "header")?;
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok(ResponseHead { status, headers })
}

/// Reads the body that follows `head` (Content-Length, chunked, or until
/// the connection closes), at most `max` bytes.
pub fn read_response_body<R: BufRead>(
    r: &mut R,
    head: &ResponseHead,
    max: usize,
) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    if head.chunked() {
        while let Some(chunk) = read_chunk(r, max)? {
            if body.len() + chunk.len() > max {
                return Err(HttpError::BodyTooLarge(max));
            }
            body.extend_from_slice(&chunk);
        }
        return Ok(body);
    }
    match head.header("content-length") {
        Some(l) => {
            let len: usize = l
                .parse()
                .map_err(|_| HttpError::Malformed("bad Content-Length".into()))?;
            if len > max {
                return Err(HttpError::BodyTooLarge(max));
            }
            body.resize(len, 0);
            r.read_exact(&mut body).map_err(HttpError::Read)?;
        }
        None => {
            r.take(max as u64 + 1)
                .read_to_end(&mut body)
                .map_err(HttpError::Read)?;
            if body.len() > max {
                return Err(HttpError::BodyTooLarge(max));
            }
        }
    }
    Ok(body)
}

/// Reads one chunk of a chunked body; `None` at the final empty chunk.
pub fn read_chunk<R: BufRead>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>, HttpError> {
    let mut budget = 1024;
    let mut line = Vec::new();
    read_line_bounded(r, &mut line, &mut budget, 1024)?;
    let line = utf8(line, "chunk size")?;
    let size_text = line.split(';').next().unwrap_or("").trim();
    let size = usize::from_str_radix(size_text, 16)
        .map_err(|_| HttpError::Malformed("bad chunk size".into()))?;
    if size > max {
        return Err(HttpError::BodyTooLarge(max));
    }
    let mut data = vec![0u8; size];
    r.read_exact(&mut data).map_err(HttpError::Read)?;
    let mut crlf = Vec::new();
    let mut budget = 2;
    read_line_bounded(r, &mut crlf, &mut budget, 2)?;
    if size == 0 {
        return Ok(None);
    }
    Ok(Some(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn parse(bytes: &[u8]) -> Result<Request, HttpError> {
        read_request(&mut Cursor::new(bytes), Limits::default())
    }

    #[test]
    fn parses_a_post_with_body_and_query() {
        let r = parse(
            b"POST /v1/vms/linux/start?fresh=true&x=a%20b+c HTTP/1.1\r\nHost: rayos\r\nContent-Length: 15\r\n\r\n{\"fresh\": true}",
        )
        .unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/vms/linux/start");
        assert_eq!(r.query_param("fresh"), Some("true"));
        assert_eq!(r.query_param("x"), Some("a b c"));
        assert_eq!(r.header("host"), Some("rayos"));
        assert_eq!(r.body, b"{\"fresh\": true}");
    }

    #[test]
    fn accepts_bare_lf_and_no_body() {
        let r = parse(b"GET /v1/health HTTP/1.0\n\n").unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/v1/health"));
        assert!(r.body.is_empty());
    }

    #[test]
    fn rejects_garbage_with_4xx() {
        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET nope HTTP/1.1\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET /?a=%zz HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\n\xff: x\r\n\r\n",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.status(), 400, "{:?} -> {e}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse(b"GET / SPDY/9\r\n\r\n").unwrap_err().status(), 501);
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
                .unwrap_err()
                .status(),
            501
        );
    }

    #[test]
    fn enforces_limits() {
        let huge_header = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert_eq!(parse(huge_header.as_bytes()).unwrap_err().status(), 431);
        let many: String = (0..100).map(|i| format!("H{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse(many.as_bytes()).unwrap_err().status(), 431);
        // The body is refused on its declared length, before any of it is read.
        let big = b"POST /v1/vms HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n";
        assert_eq!(parse(big).unwrap_err().status(), 413);
        // An endless line without a newline stops at the head limit.
        let endless = vec![b'G'; 100_000];
        assert_eq!(parse(&endless).unwrap_err().status(), 431);
    }

    #[test]
    fn truncated_input_is_closed_not_a_panic() {
        assert_eq!(parse(b"").unwrap_err().status(), 0);
        assert_eq!(parse(b"GET / HTTP/1.1\r\nA: b").unwrap_err().status(), 0);
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
                .unwrap_err()
                .status(),
            0
        );
    }

    /// A poor man's fuzz run (the real one is fuzz/fuzz_targets/api_request.rs):
    /// mutated valid requests and random bytes never panic and always give
    /// a request within the limits or a status.
    #[test]
    fn random_and_mutated_input_never_panics() {
        let seeds: [&[u8]; 3] = [
            b"POST /v1/vms/a/start?x=%41 HTTP/1.1\r\nContent-Length: 4\r\n\r\n{  }",
            b"GET /v1/events?since=3 HTTP/1.0\n\n",
            b"DELETE /v1/vms/a?purge=true HTTP/1.1\r\nA: b\r\n\r\n",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let limits = Limits {
            max_head: 256,
            max_headers: 4,
            max_body: 64,
        };
        for i in 0..20_000 {
            let mut input: Vec<u8> = if i % 3 == 0 {
                (0..next() % 300).map(|_| next() as u8).collect()
            } else {
                seeds[i % 3].to_vec()
            };
            for _ in 0..(next() % 6) {
                if input.is_empty() {
                    break;
                }
                let at = (next() as usize) % input.len();
                match next() % 3 {
                    0 => input[at] = next() as u8,
                    1 => {
                        input.remove(at);
                    }
                    _ => input.insert(at, b"\r\n:%?&= 9"[(next() % 9) as usize]),
                }
            }
            match read_request(&mut Cursor::new(&input), limits) {
                Ok(r) => assert!(r.body.len() <= limits.max_body && r.path.starts_with('/')),
                Err(e) => assert!(e.status() == 0 || (400..=501).contains(&e.status())),
            }
        }
    }

    #[test]
    fn response_round_trip_plain_and_chunked() {
        let mut out = Vec::new();
        write_response(&mut out, 404, "application/json", b"{\"error\":\"x\"}").unwrap();
        let mut c = Cursor::new(out);
        let head = read_response_head(&mut c).unwrap();
        assert_eq!(head.status, 404);
        assert_eq!(
            read_response_body(&mut c, &head, 1024).unwrap(),
            b"{\"error\":\"x\"}"
        );

        let mut out = Vec::new();
        write_chunked_head(&mut out, 200, "application/x-ndjson").unwrap();
        write_chunk(&mut out, b"one\n").unwrap();
        write_chunk(&mut out, b"two\n").unwrap();
        write_chunk(&mut out, b"").unwrap();
        let mut c = Cursor::new(out);
        let head = read_response_head(&mut c).unwrap();
        assert!(head.chunked());
        assert_eq!(
            read_response_body(&mut c, &head, 1024).unwrap(),
            b"one\ntwo\n"
        );
    }
}
