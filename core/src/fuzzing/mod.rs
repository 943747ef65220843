//! Bodies of the cargo-fuzz targets in `fuzz/`. Not a stable API.
//!
//! Each function takes arbitrary bytes and must never panic. Where a codec has a round-trip
//! property (whatever decodes re-encodes to something that decodes to the same value), the
//! function asserts it, and the incremental decoders are checked to give the same frames
//! whatever the chunking. `tests/tests/fuzz_corpus.rs` replays the committed corpus through
//! these functions on the stable toolchain.

mod relay;

pub use self::relay::relay_ops;

use bytes::Bytes;

use crate::aspnetcore::handshake::{HandshakeRequest, HandshakeResponse};
use crate::aspnetcore::negotiate::{NegotiateQuery, NegotiateResponse};
use crate::aspnetcore::{json, messagepack, HubProtocol};
use crate::framing::{BinaryFrameDecoder, FrameError, TextFrameDecoder};
use crate::service::{ServiceDecoder, ServiceMessage};

/// A small frame limit, so that the limit paths are exercised too.
const MAX_FRAME: usize = 4096;

/// The first byte picks a chunk size; the rest is the stream.
fn split(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((&first, rest)) => (usize::from(first % 16) + 1, rest),
        None => (1, data),
    }
}

/// The frames of a stream, and the error that stopped it, if any.
type Framed = (Vec<Bytes>, Option<FrameError>);

/// A fuzz target's body.
pub type Target = fn(&[u8]);

fn all_frames<F>(stream: &[u8], chunk: usize, mut next: F) -> Framed
where
    F: FnMut(Option<&[u8]>) -> Result<Option<Bytes>, FrameError>,
{
    let mut frames = Vec::new();
    for piece in stream.chunks(chunk) {
        let mut input = Some(piece);
        loop {
            match next(input.take()) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

/// Text framing: the same frames whatever the chunking, until the same error.
fn text_frames(stream: &[u8], chunk: usize) -> Framed {
    let mut d = TextFrameDecoder::new(MAX_FRAME);
    all_frames(stream, chunk, |input| {
        if let Some(bytes) = input {
            d.push(bytes);
        }
        d.next_frame()
    })
}

fn binary_frames(stream: &[u8], chunk: usize) -> Framed {
    let mut d = BinaryFrameDecoder::new(MAX_FRAME);
    all_frames(stream, chunk, |input| {
        if let Some(bytes) = input {
            d.push(bytes);
        }
        d.next_frame()
    })
}

fn check_chunking(data: &[u8], frames_of: fn(&[u8], usize) -> Framed) -> Vec<Bytes> {
    let (chunk, stream) = split(data);
    let (whole, whole_err) = frames_of(stream, stream.len().max(1));
    let (chunked, chunked_err) = frames_of(stream, chunk);
    // An oversize frame can be detected earlier (before its separator) in small chunks, so
    // only the frames before the first error must agree.
    if whole_err.is_none() && chunked_err.is_none() {
        assert_eq!(whole, chunked, "frames depend on chunking");
    } else {
        let n = whole.len().min(chunked.len());
        assert_eq!(whole[..n], chunked[..n], "frames depend on chunking");
    }
    whole
}

/// The JSON hub protocol, with text framing.
pub fn aspnetcore_json(data: &[u8]) {
    for frame in check_chunking(data, text_frames) {
        if let Ok(message) = json::parse_message(&frame) {
            let mut out = Vec::new();
            json::write_message(&message, &mut out);
            let body = out.split_last().map(|(_, body)| body).unwrap_or_default();
            assert_eq!(json::parse_message(body).as_ref(), Ok(&message));
        }
    }
    let _ = json::parse_message(data);
}

/// The MessagePack hub protocol, with binary framing.
pub fn aspnetcore_msgpack(data: &[u8]) {
    for frame in check_chunking(data, binary_frames) {
        msgpack_round_trip(&frame);
    }
    msgpack_round_trip(data);
}

fn msgpack_round_trip(body: &[u8]) {
    if let Ok(message) = messagepack::parse_message(body) {
        let mut out = Vec::new();
        messagepack::write_body(&message, &mut out);
        assert_eq!(messagepack::parse_message(&out).as_ref(), Ok(&message));
        let mut framed = Vec::new();
        let written = HubProtocol::MessagePack.write_message(&message, &mut framed);
        assert!(written.is_ok());
    }
}

/// A client's WebSocket frames: the same messages whatever the chunking, until the same
/// error; and nothing held once the stream ends on a frame's boundary.
pub fn websocket(data: &[u8]) {
    use crate::websocket::Decoder;
    let (chunk, stream) = split(data);
    let run = |chunk: usize| {
        let mut decoder = Decoder::new(MAX_FRAME);
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            if let Err(e) = decoder.decode(piece, &mut |r| got.push(r)) {
                return (got, Some(e), false);
            }
        }
        (got, None, decoder.is_idle())
    };
    let whole = run(stream.len().max(1));
    let pieces = run(chunk);
    assert_eq!(whole.0, pieces.0);
    assert_eq!(whole.1, pieces.1);
    assert_eq!(whole.2, pieces.2);
}

/// The hub-protocol handshake, both directions.
pub fn handshake(data: &[u8]) {
    if let Ok(request) = HandshakeRequest::parse(data) {
        let mut out = Vec::new();
        request.write(&mut out);
        assert_eq!(
            HandshakeRequest::parse(&out[..out.len() - 1]).as_ref(),
            Ok(&request)
        );
    }
    if let Ok(response) = HandshakeResponse::parse(data) {
        let mut out = Vec::new();
        response.write(&mut out);
        assert_eq!(
            HandshakeResponse::parse(&out[..out.len() - 1]).as_ref(),
            Ok(&response)
        );
    }
}

/// HTTP/1.1 request heads: parsed in one piece or byte by byte alike, a whole head's length
/// within the input, and response heads that no field can break.
pub fn http1(data: &[u8]) {
    use crate::http1::{end_head, field, parse_request, start_response, BodyLength, Parsed};
    let whole = parse_request(data);
    if let Parsed::Complete(head, len) = &whole {
        assert!(*len <= data.len());
        // The same head, cut just before its end, is not yet whole (or already bad).
        assert!(!matches!(
            parse_request(&data[..len - 1]),
            Parsed::Complete(..)
        ));
        let lean = head.lean();
        let websocket = head.websocket_key.is_some();
        let request = head.clone().into_request(None);
        assert_eq!(request.websocket, websocket);
        if lean {
            assert!(request.path.starts_with("/client"));
        }
        // Every field's name and value, written back into a response head, keeps it one head.
        let mut out = Vec::new();
        start_response(&mut out, 200);
        for (name, value) in head.headers.iter() {
            field(&mut out, name, value);
        }
        end_head(&mut out, BodyLength::Fixed(0), false);
        let blank = out.windows(4).position(|w| w == b"\r\n\r\n");
        assert_eq!(blank, Some(out.len() - 4));
    }
}

/// Negotiate responses and queries.
pub fn negotiate(data: &[u8]) {
    if let Ok(response) = NegotiateResponse::parse(data) {
        assert_eq!(
            NegotiateResponse::parse(&response.to_json()).as_ref(),
            Ok(&response)
        );
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(query) = NegotiateQuery::parse(text) {
            assert_eq!(
                NegotiateQuery::parse(&query.to_query_string()).as_ref(),
                Ok(&query)
            );
        }
    }
}

/// The server-connection protocol: one body, and the same bytes as a framed stream.
pub fn service(data: &[u8]) {
    service_round_trip(&Bytes::copy_from_slice(data));
    let (chunk, stream) = split(data);
    let decode = |chunk: usize| {
        let mut d = ServiceDecoder::new(MAX_FRAME);
        let mut out = Vec::new();
        for piece in stream.chunks(chunk.max(1)) {
            d.push(piece);
            loop {
                match d.next_message() {
                    Ok(Some(m)) => out.push(Ok(m)),
                    Ok(None) => break,
                    Err(e) => {
                        // A bad message leaves the stream in sync; a framing error does not.
                        let fatal = matches!(e, crate::service::ServiceProtocolError::Frame(_));
                        out.push(Err(e));
                        if fatal {
                            return out;
                        }
                    }
                }
            }
        }
        out
    };
    let whole = decode(stream.len());
    let chunked = decode(chunk);
    let n = whole.len().min(chunked.len());
    assert_eq!(whole[..n], chunked[..n], "messages depend on chunking");
}

fn service_round_trip(body: &Bytes) {
    if let Ok(message) = ServiceMessage::parse(body) {
        let mut out = Vec::new();
        message.write_body(&mut out);
        assert_eq!(
            ServiceMessage::parse(&Bytes::from(out)).as_ref(),
            Ok(&message)
        );
    }
}

/// Classic ASP.NET SignalR query strings and form bodies.
pub fn classic_query(data: &[u8]) {
    crate::classic::fuzz_query(data);
}

/// Classic ASP.NET SignalR receive-channel messages, negotiate responses and hub messages.
pub fn classic_envelope(data: &[u8]) {
    crate::classic::fuzz_envelope(data);
}

/// JWTs and connection strings.
pub fn jwt(data: &[u8]) {
    crate::auth::fuzz_jwt(data);
}

/// OData subscriber filters: parsed, and evaluated against a few connections.
pub fn odata(data: &[u8]) {
    crate::odata::fuzz_filter(data);
}

/// Every target, by name, for corpus replay.
/// The REST API's parsers: a request (method, path and query on the first three lines) and
/// its body in both encodings, and an upstream settings file, from the same bytes.
pub fn rest(data: &[u8]) {
    use crate::relay::rest::{payloads, route, Route};
    let text = String::from_utf8_lossy(data);
    let mut lines = text.splitn(4, '\n');
    let (method, path, query) = (
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
    );
    if let Ok(Route::Call(call)) = route(method, path, query) {
        let _ = (call.answer(true), call.answer(false));
        if let Ok(p) = payloads(None, lines.next().unwrap_or_default().as_bytes()) {
            let _ = call.command(&p);
        }
    }
    for content_type in ["application/json", "application/octet-stream"] {
        let _ = payloads(Some(content_type), data);
    }
    let _ = crate::relay::UpstreamSettings::parse(&text);
}

/// The backplane's messages: whatever decodes re-encodes to the same message, and its
/// command reads back the same through its borrowed form.
pub fn backplane(data: &[u8]) {
    use crate::relay::backplane::{decode, encode, Body, Command};
    let Ok(envelope) = decode(data) else {
        return;
    };
    let again = decode(&encode(&envelope.from, &envelope.body)).expect("re-encoded decodes");
    assert_eq!(again, envelope);
    if let Body::Command { command, .. } = &envelope.body {
        assert_eq!(&Command::of(&command.borrow()), command);
    }
}

pub const TARGETS: &[(&str, Target)] = &[
    ("backplane", backplane),
    ("aspnetcore_json", aspnetcore_json),
    ("aspnetcore_msgpack", aspnetcore_msgpack),
    ("handshake", handshake),
    ("http1", http1),
    ("negotiate", negotiate),
    ("service", service),
    ("classic_query", classic_query),
    ("classic_envelope", classic_envelope),
    ("jwt", jwt),
    ("odata", odata),
    ("rest", rest),
    ("relay_ops", relay_ops),
    ("websocket", websocket),
];
