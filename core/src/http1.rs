//! HTTP/1.1 without I/O, for the relay's lean path: request heads parsed (with `httparse`)
//! and judged, response heads written.
//!
//! A general HTTP server keeps buffers for every connection: hyper holds an 8 KiB read
//! buffer and an 8 KiB header buffer for as long as a connection lives, which is most of what
//! an event-stream or long-polling client costs the relay. The requests that real SignalR
//! clients make for their transports are few and plain, so the adapters serve those
//! themselves, with nothing kept between requests, and hand every other request to their
//! general server. [`RequestHead::lean`] is where that line is drawn.

use crate::relay::HttpRequest;

/// Most header fields a request head may have (hyper's default, too).
pub const MAX_HEADERS: usize = 100;

/// Header fields, in order, names as sent: their text in one string, and where each name
/// and value ends in it. A request's dozen fields are two allocations, not two dozen.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Fields {
    text: String,
    /// Per field: where its name ends and where its value ends in `text` (its name starts
    /// where the field before it ends).
    ends: Vec<(usize, usize)>,
}

impl Fields {
    /// No fields.
    pub const fn new() -> Self {
        Self {
            text: String::new(),
            ends: Vec::new(),
        }
    }

    /// No fields yet, with room for `fields` of `bytes` in all (names and values).
    pub fn with_capacity(fields: usize, bytes: usize) -> Self {
        Self {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(fields),
        }
    }

    /// Adds a field after the others.
    pub fn push(&mut self, name: &str, value: &str) {
        self.text.push_str(name);
        let name_end = self.text.len();
        self.text.push_str(value);
        self.ends.push((name_end, self.text.len()));
    }

    /// The first field named `name` (in any case): its value.
    pub fn get(&self, name: &str) -> Option<&str> {
        let mut start = 0;
        for &(name_end, end) in &self.ends {
            if name_end.saturating_sub(start) == name.len()
                && self
                    .text
                    .get(start..name_end)
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            {
                return self.text.get(name_end..end);
            }
            start = end;
        }
        None
    }

    /// Each field's name and value, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(name_end, end)| {
            let field = (
                self.text.get(start..name_end).unwrap_or_default(),
                self.text.get(name_end..end).unwrap_or_default(),
            );
            start = end;
            field
        })
    }

    /// Keeps only the fields `keep` says to.
    pub fn retain(&mut self, mut keep: impl FnMut((&str, &str)) -> bool) {
        let kept: Self = self.iter().filter(|&field| keep(field)).collect();
        *self = kept;
    }

    /// How many fields.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> Extend<(N, V)> for Fields {
    fn extend<I: IntoIterator<Item = (N, V)>>(&mut self, fields: I) {
        for (name, value) in fields {
            self.push(name.as_ref(), value.as_ref());
        }
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for Fields {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(fields: I) -> Self {
        let mut all = Self::new();
        all.extend(fields);
        all
    }
}

/// A request head, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    /// The header fields whose values are text; names as sent.
    pub headers: Fields,
    /// Whether this is HTTP/1.1 (else 1.0).
    pub http11: bool,
    /// The body's length, from `Content-Length` (none: no body).
    pub content_length: Option<u64>,
    /// The client asked to close the connection after this request (`Connection: close`, or
    /// HTTP/1.0 without keep-alive).
    pub close: bool,
    /// A well-formed WebSocket upgrade's `Sec-WebSocket-Key`.
    pub websocket_key: Option<String>,
    /// Something only a general server should judge: a `Transfer-Encoding`, an `Expect`, a
    /// `Content-Length` that is not one number, an upgrade that is not a well-formed
    /// WebSocket version 13 one, or a field whose value is not text.
    unusual: bool,
}

/// What [`parse_request`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A head, the first `len` bytes.
    Complete(RequestHead, usize),
    /// Not HTTP/1.x: answer 400 and close.
    Invalid,
    /// More header fields than [`MAX_HEADERS`]: answer 431 and close.
    TooManyFields,
}

/// Parses the request head at the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Parsed {
    // Clients send a dozen fields: a small table first, the whole one only if it was short.
    match parse_with(buf, &mut [httparse::EMPTY_HEADER; 32]) {
        Parsed::TooManyFields => parse_with(buf, &mut [httparse::EMPTY_HEADER; MAX_HEADERS]),
        parsed => parsed,
    }
}

fn parse_with<'b>(buf: &'b [u8], fields: &mut [httparse::Header<'b>]) -> Parsed {
    let mut request = httparse::Request::new(fields);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::TooManyFields,
        Err(_) => return Parsed::Invalid,
    };
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Parsed::Invalid;
    };
    // Origin form only (`/path?query`); the absolute and asterisk forms go to the general
    // server.
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut head = RequestHead {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers: Fields::with_capacity(
            request.headers.len(),
            request
                .headers
                .iter()
                .map(|f| f.name.len() + f.value.len())
                .sum(),
        ),
        http11: version == 1,
        content_length: None,
        close: version == 0,
        websocket_key: None,
        unusual: !target.starts_with('/'),
    };
    let mut upgrade = false;
    let mut upgrade_websocket = false;
    let mut connection_upgrade = false;
    let mut version_13 = false;
    let mut key = None;
    for field in request.headers.iter() {
        // Text as HTTP has it: visible ASCII, spaces and tabs (as `http`'s `to_str` takes it).
        // httparse has refused every other control byte already, so what is left to refuse
        // is bytes above ASCII.
        let text = field.value.is_ascii();
        let Some(value) = std::str::from_utf8(field.value).ok().filter(|_| text) else {
            head.unusual = true;
            continue;
        };
        let name = field.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n);
        if is("content-length") {
            // Digits only: no sign, as hyper and RFC 9110 have it.
            let digits = value.trim();
            let length = (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| digits.parse::<u64>().ok())
                .flatten();
            if length.is_none() || head.content_length.is_some() {
                head.unusual = true;
            }
            head.content_length = length;
        } else if is("transfer-encoding") || is("expect") {
            head.unusual = true;
        } else if is("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    head.close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && version == 0 {
                    head.close = false;
                } else if token.eq_ignore_ascii_case("upgrade") {
                    connection_upgrade = true;
                }
            }
        } else if is("upgrade") {
            upgrade = true;
            upgrade_websocket |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("websocket"));
        } else if is("sec-websocket-version") {
            version_13 = value.trim() == "13";
        } else if is("sec-websocket-key") {
            key = Some(value.trim().to_owned());
        }
        head.headers.push(name, value);
    }
    if upgrade || connection_upgrade {
        let websocket = upgrade_websocket && connection_upgrade && version_13 && head.http11;
        match key {
            Some(key) if websocket && head.content_length.unwrap_or(0) == 0 => {
                head.websocket_key = Some(key);
            }
            _ => head.unusual = true,
        }
    }
    Parsed::Complete(head, len)
}

impl RequestHead {
    /// Whether the lean path serves this request: an ASP.NET Core client's transport request
    /// (`/client/…`) of the kind real clients make: HTTP/1.1, `GET`, `POST` or `DELETE`, any
    /// body sized by `Content-Length`, and no upgrade but a well-formed WebSocket one. Every
    /// other request, and every request after it on its connection, is the general server's.
    pub fn lean(&self) -> bool {
        !self.unusual
            && self.http11
            && matches!(self.method.as_str(), "GET" | "POST" | "DELETE")
            && (self.path == "/client" || self.path.starts_with("/client/"))
    }

    /// The core's view of the request, without its body.
    pub fn into_request(self, peer: Option<std::net::IpAddr>) -> HttpRequest {
        HttpRequest {
            websocket: self.websocket_key.is_some(),
            method: self.method,
            path: self.path,
            query: self.query,
            headers: self.headers,
            body: bytes::Bytes::new(),
            peer,
            verified: None,
        }
    }
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// `Content-Length`.
    Fixed(usize),
    /// `Transfer-Encoding: chunked` (see [`chunk_header`]).
    Chunked,
    /// No body at all (`101 Switching Protocols`).
    None,
}

/// Starts a response head: its status line. [`field`]s follow, then [`end_head`].
pub fn start_response(out: &mut Vec<u8>, status: u16) {
    let status = status.clamp(100, 999);
    out.extend_from_slice(b"HTTP/1.1 ");
    put_number(out, status.into(), 10);
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Adds a header field to a response head; one whose name or value could break the head
/// (a CR, LF or NUL in either, a colon in the name) is left out.
pub fn field(out: &mut Vec<u8>, name: &str, value: &str) {
    let breaks = |s: &str| s.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0));
    if name.is_empty() || breaks(name) || name.contains(':') || breaks(value) {
        return;
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Ends a response head: the body's length, `Connection: close` if `close`, and the blank
/// line.
pub fn end_head(out: &mut Vec<u8>, length: BodyLength, close: bool) {
    match length {
        BodyLength::Fixed(n) => {
            out.extend_from_slice(b"content-length: ");
            put_number(out, n, 10);
            out.extend_from_slice(b"\r\n");
        }
        BodyLength::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        BodyLength::None => {}
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The line that starts a chunk of `len` bytes (`len` in hex, CRLF); the chunk ends with
/// CRLF, and a chunk of 0 ends the body.
pub fn chunk_header(out: &mut Vec<u8>, len: usize) {
    put_number(out, len, 16);
    out.extend_from_slice(b"\r\n");
}

/// Writes `n` in base `radix` (10, or 16 in lower case), with no allocation: these are on
/// the path of every response and every event-stream message.
fn put_number(out: &mut Vec<u8>, mut n: usize, radix: usize) {
    // Enough for the 20 decimal digits of `u64::MAX`.
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[n % radix];
        n /= radix;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The last chunk, which ends a chunked body (no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The reason phrase of the statuses the relay answers with (clients read only the code).
fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &str) -> (RequestHead, usize) {
        match parse_request(raw.as_bytes()) {
            Parsed::Complete(head, len) => (head, len),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fields_keep_each_name_and_value_in_order() {
        let mut fields = Fields::new();
        assert!(fields.is_empty() && fields.get("a").is_none());
        fields.push("Host", "x");
        fields.push("", "");
        fields.push("X-Empty", "");
        fields.push("host", "second");
        let all: Vec<_> = fields.iter().collect();
        assert_eq!(
            all,
            [("Host", "x"), ("", ""), ("X-Empty", ""), ("host", "second")]
        );
        assert_eq!((fields.len(), fields.iter().len()), (4, 4));
        // The first of a name, in any case.
        assert_eq!(fields.get("HOST"), Some("x"));
        assert_eq!(fields.get("x-empty"), Some(""));
        assert_eq!(format!("{fields:?}"), format!("{all:?}"));
        let again: Fields = all.iter().copied().collect();
        assert_eq!(again, fields);
        fields.retain(|(name, _)| !name.eq_ignore_ascii_case("host"));
        assert_eq!(
            fields.iter().collect::<Vec<_>>(),
            [("", ""), ("X-Empty", "")]
        );
        fields.extend([("A", "1")]);
        assert_eq!(fields.get("a"), Some("1"));
    }

    #[test]
    fn an_event_stream_request_is_lean() {
        let raw = "GET /client/?hub=chat&id=abc HTTP/1.1\r\nHost: x\r\n\
                   Accept: text/event-stream\r\nAuthorization: Bearer t\r\n\r\nNEXT";
        let (head, len) = complete(raw);
        assert_eq!(len, raw.len() - 4);
        assert!(head.lean());
        assert!(!head.close);
        assert_eq!(head.content_length, None);
        let request = head.into_request(None);
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("GET", "/client/")
        );
        assert_eq!(request.query, "hub=chat&id=abc");
        assert_eq!(request.headers.len(), 3);
        assert!(!request.websocket);
    }

    #[test]
    fn a_partial_head_waits_and_garbage_is_invalid() {
        let fields = "X: y\r\n".repeat(MAX_HEADERS + 1);
        let many = format!("GET /client/ HTTP/1.1\r\n{fields}\r\n");
        assert_eq!(parse_request(many.as_bytes()), Parsed::TooManyFields);
        // More than the first, small table holds, and no more than the limit: all read.
        for n in [33, MAX_HEADERS] {
            let fields = "X: y\r\n".repeat(n);
            let head = complete(&format!("GET /client/ HTTP/1.1\r\n{fields}\r\n")).0;
            assert_eq!(head.headers.len(), n);
        }
        assert_eq!(
            parse_request(b"GET /client/ HTTP/1.1\r\nHost"),
            Parsed::Partial
        );
        assert_eq!(parse_request(b""), Parsed::Partial);
        assert_eq!(parse_request(b"\x16\x03\x01\x00garbage"), Parsed::Invalid);
        assert_eq!(
            parse_request(b"GET /client/ HTTP/2.0\r\n\r\n"),
            Parsed::Invalid
        );
        // A field's value: control bytes (but tab) are garbage, bytes above ASCII are the
        // general server's to judge, and tabs and spaces are text.
        let with_value = |value: &[u8]| {
            let mut raw = b"GET /client/ HTTP/1.1\r\nX: a".to_vec();
            raw.extend_from_slice(value);
            raw.extend_from_slice(b"\r\n\r\n");
            parse_request(&raw)
        };
        for control in [0x00, 0x01, 0x1f, 0x7f] {
            assert_eq!(with_value(&[control]), Parsed::Invalid, "{control:#x}");
        }
        for high in [0x80, 0xc3, 0xff] {
            let Parsed::Complete(head, _) = with_value(&[high, b'z']) else {
                panic!("{high:#x}");
            };
            assert!(!head.lean() && head.headers.is_empty(), "{high:#x}");
        }
        let Parsed::Complete(head, _) = with_value(b"\t b ~") else {
            panic!();
        };
        assert!(head.lean());
        assert_eq!(head.headers.iter().collect::<Vec<_>>(), [("X", "a\t b ~")]);
    }

    #[test]
    fn a_websocket_upgrade_is_lean_only_when_well_formed() {
        let upgrade = |extra: &str| {
            complete(&format!(
                "GET /client/?hub=h HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n\
                 Upgrade: websocket\r\n{extra}\r\n"
            ))
            .0
        };
        let good = upgrade("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: a2V5\r\n");
        assert!(good.lean());
        assert_eq!(good.websocket_key.as_deref(), Some("a2V5"));
        assert!(good.clone().into_request(None).websocket);
        // Another version, or no key: the general server answers 426 or 400.
        assert!(!upgrade("Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: a2V5\r\n").lean());
        assert!(!upgrade("Sec-WebSocket-Version: 13\r\n").lean());
        let h2c = complete("GET /client/ HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n");
        assert!(!h2c.0.lean());
    }

    #[test]
    fn bodies_and_framings_only_a_general_server_judges_are_not_lean() {
        let post = |fields: &str| {
            complete(&format!("POST /client/?id=x HTTP/1.1\r\n{fields}\r\n"))
                .0
                .lean()
        };
        assert!(post("Content-Length: 5\r\n"));
        assert!(post(""));
        assert!(!post("Transfer-Encoding: chunked\r\n"));
        assert!(!post("Content-Length: 5\r\nContent-Length: 5\r\n"));
        assert!(!post("Content-Length: -1\r\n"));
        assert!(!post("Content-Length: +5\r\n"));
        assert!(!post("Content-Length: \r\n"));
        assert!(!post("X-Text: caf\u{e9}\r\n"));
        assert!(!post("Expect: 100-continue\r\nContent-Length: 5\r\n"));
        let raw = b"POST /client/ HTTP/1.1\r\nX-Bin: \xff\r\n\r\n";
        match parse_request(raw) {
            Parsed::Complete(head, _) => assert!(!head.lean()),
            Parsed::Invalid => {}
            other => panic!("a whole head: {other:?}"),
        }
    }

    #[test]
    fn other_requests_are_the_general_servers() {
        let lean = |raw: &str| complete(raw).0.lean();
        assert!(lean("DELETE /client/?id=x HTTP/1.1\r\n\r\n"));
        assert!(!lean("OPTIONS /client/ HTTP/1.1\r\n\r\n"));
        assert!(!lean("GET /client/ HTTP/1.0\r\n\r\n"));
        assert!(!lean("GET /api/v1/health HTTP/1.1\r\n\r\n"));
        assert!(!lean("GET /clients HTTP/1.1\r\n\r\n"));
        assert!(!lean("GET http://x/client/ HTTP/1.1\r\n\r\n"));
        assert!(
            complete("GET /client/ HTTP/1.1\r\nConnection: close\r\n\r\n")
                .0
                .close
        );
        assert!(complete("GET /x HTTP/1.0\r\n\r\n").0.close);
        assert!(
            !complete("GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .0
                .close
        );
    }

    #[test]
    fn response_heads_leave_out_what_would_break_them() {
        let mut out = Vec::new();
        start_response(&mut out, 200);
        field(&mut out, "content-type", "text/plain");
        field(&mut out, "x-evil", "a\r\nset-cookie: b");
        field(&mut out, "bad:name", "v");
        field(&mut out, "x-ok", "v");
        end_head(&mut out, BodyLength::Fixed(5), true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-ok: v\r\ncontent-length: 5\r\n\
             connection: close\r\n\r\n"
        );
        let mut out = Vec::new();
        start_response(&mut out, 200);
        end_head(&mut out, BodyLength::Chunked, false);
        chunk_header(&mut out, 300);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n12c\r\n".to_vec()
        );
    }

    #[test]
    fn numbers_are_written_as_format_writes_them() {
        for n in [0, 1, 9, 10, 15, 16, 255, 4096, 65_535, 1 << 40, usize::MAX] {
            let (mut decimal, mut hex) = (Vec::new(), Vec::new());
            put_number(&mut decimal, n, 10);
            put_number(&mut hex, n, 16);
            assert_eq!(decimal, n.to_string().into_bytes());
            assert_eq!(hex, format!("{n:x}").into_bytes());
        }
        let mut out = Vec::new();
        start_response(&mut out, 404);
        assert!(out.starts_with(b"HTTP/1.1 404 "));
    }
}
