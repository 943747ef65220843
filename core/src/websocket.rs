//! WebSocket framing (RFC 6455) on the server's side, sans-IO: a decoder of a client's frames
//! that holds no buffer between frames, and the header of the server's unmasked frames.
//!
//! The runtime reads into a scratch buffer it shares between connections and hands the bytes
//! to [`Decoder::decode`]; only an unfinished frame is copied into the connection's own
//! buffer, which is released once the frame completes. An idle connection holds nothing.
//! Writing needs no buffer of the connection's either: a frame is its [`header`] and the
//! payload as it is, written together (the runtime gathers small frames into one buffer of
//! its thread's, and writes large ones with a vectored write).
//!
//! ```
//! use signalr_relay_core::websocket::{header, Decoder, Opcode, Received};
//!
//! let mut decoder = Decoder::new(1024);
//! // A masked text frame "Hi", in two reads.
//! let frame = [0x81, 0x82, 1, 2, 3, 4, b'H' ^ 1, b'i' ^ 2];
//! let mut got = Vec::new();
//! decoder.decode(&frame[..3], &mut |r| got.push(r)).unwrap();
//! assert!(got.is_empty() && !decoder.is_idle());
//! decoder.decode(&frame[3..], &mut |r| got.push(r)).unwrap();
//! assert_eq!(got, [Received::Message(b"Hi".to_vec().into())]);
//! assert!(decoder.is_idle());
//!
//! let (bytes, len) = header(Opcode::Binary, 300);
//! assert_eq!(&bytes[..len], &[0x82, 126, 1, 44]);
//! ```

use std::ops::ControlFlow;

use bytes::Bytes;

/// The longest header of a server's frame (no mask): 2 bytes, and 8 of extended length.
pub const MAX_HEADER: usize = 10;

/// The longest control frame's payload.
const MAX_CONTROL: usize = 125;

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// The next fragment of a message.
    Continuation = 0,
    /// A text message (UTF-8).
    Text = 1,
    /// A binary message.
    Binary = 2,
    /// The closing handshake.
    Close = 8,
    /// A ping, to be answered with a pong carrying its payload.
    Ping = 9,
    /// A pong.
    Pong = 10,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0 => Self::Continuation,
            1 => Self::Text,
            2 => Self::Binary,
            8 => Self::Close,
            9 => Self::Ping,
            10 => Self::Pong,
            _ => return None,
        })
    }
}

/// What a client sent: a whole message (text already checked to be UTF-8), or a control frame
/// that asks for an answer. Pongs ask for nothing and are not reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A complete text or binary message.
    Message(Bytes),
    /// A ping: answer with a pong carrying this payload.
    Ping(Bytes),
    /// The client closes, with its status code if it gave one: answer with a close and stop.
    /// The decoder takes nothing after it.
    Close(Option<u16>),
}

/// Why a client's bytes were refused: the connection must be failed with [`Self::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsError {
    /// A message (or its first frame's declared length) is larger than the limit.
    TooBig,
    /// Text that is not UTF-8 (in a text message or a close reason).
    InvalidUtf8,
    /// Anything else RFC 6455 forbids; says what.
    Protocol(&'static str),
}

impl WsError {
    /// The close code RFC 6455 §7.4.1 gives this failure.
    #[must_use]
    pub fn close_code(self) -> u16 {
        match self {
            Self::TooBig => 1009,
            Self::InvalidUtf8 => 1007,
            Self::Protocol(_) => 1002,
        }
    }

    /// The close reason the relay sends with it.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::TooBig => "Message too big.",
            Self::InvalidUtf8 => "Invalid UTF-8 in a text frame.",
            Self::Protocol(_) => "WebSocket protocol error.",
        }
    }
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Protocol(what) => write!(f, "WebSocket protocol error: {what}"),
            other => f.write_str(other.reason()),
        }
    }
}

impl std::error::Error for WsError {}

/// A parsed frame header.
struct Header {
    fin: bool,
    opcode: Opcode,
    mask: [u8; 4],
    /// The header's own length.
    size: usize,
    /// The payload's length.
    len: usize,
}

/// Decodes a client's frames, bounded by the message limit it was made with.
#[derive(Debug, Default)]
pub struct Decoder {
    max_message: usize,
    /// The bytes of an unfinished frame; empty, with no allocation, between frames.
    partial: Vec<u8>,
    /// A fragmented message so far: whether it is text, and its bytes.
    assembling: Option<(bool, Vec<u8>)>,
    /// A close came: nothing after it is read.
    closed: bool,
}

impl Decoder {
    /// A decoder of messages of at most `max_message` bytes.
    #[must_use]
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            ..Self::default()
        }
    }

    /// Whether it holds no bytes (no unfinished frame, no fragmented message).
    #[must_use]
    pub fn is_idle(&self) -> bool {
        self.partial.capacity() == 0 && self.assembling.is_none()
    }

    /// Decodes `input`, the bytes that follow what it was given before, handing every complete
    /// message and control frame to `out` in order. What ends in an unfinished frame is kept
    /// for the next call (at most one frame's header and payload, each checked against the
    /// limit as soon as its header is complete).
    ///
    /// # Errors
    /// On the first frame RFC 6455 refuses; the connection must then be failed.
    pub fn decode(&mut self, input: &[u8], out: &mut impl FnMut(Received)) -> Result<(), WsError> {
        self.decode_until(input, &mut |r| {
            out(r);
            ControlFlow::Continue(())
        })
        .map(|_| ())
    }

    /// [`Self::decode`], stopping after any frame for which `out` says
    /// [`ControlFlow::Break`]: the bytes after it are kept (with `input`'s, at most one read
    /// and one frame), and decoded by the next call, which may be given no new bytes. Returns
    /// whether it stopped so (then whole frames may be waiting).
    ///
    /// # Errors
    /// On the first frame RFC 6455 refuses; the connection must then be failed.
    pub fn decode_until(
        &mut self,
        input: &[u8],
        out: &mut impl FnMut(Received) -> ControlFlow<()>,
    ) -> Result<bool, WsError> {
        if self.closed {
            return Ok(false);
        }
        if self.partial.is_empty() {
            let (used, stopped) = self.frames(input, out)?;
            if used < input.len() && !self.closed {
                self.partial = input[used..].to_vec();
            }
            return Ok(stopped);
        }
        let mut partial = std::mem::take(&mut self.partial);
        partial.extend_from_slice(input);
        let (used, stopped) = self.frames(&partial, out)?;
        if used < partial.len() && !self.closed {
            if used > 0 {
                partial.drain(..used);
            }
            self.partial = partial;
        }
        Ok(stopped)
    }

    /// Decodes the whole frames at the start of `buf`; returns how many bytes they took, and
    /// whether `out` stopped it.
    fn frames(
        &mut self,
        buf: &[u8],
        out: &mut impl FnMut(Received) -> ControlFlow<()>,
    ) -> Result<(usize, bool), WsError> {
        let mut at = 0;
        while !self.closed {
            let Some(header) = self.header(&buf[at..])? else {
                break;
            };
            let start = at + header.size;
            let Some(payload) = start
                .checked_add(header.len)
                .and_then(|end| buf.get(start..end))
            else {
                break;
            };
            at = start + header.len;
            if let Some(received) = self.frame(&header, payload)? {
                if out(received).is_break() {
                    return Ok((at, !self.closed));
                }
            }
        }
        Ok((at, false))
    }

    /// Parses and checks a header, if `buf` holds all of it.
    fn header(&self, buf: &[u8]) -> Result<Option<Header>, WsError> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set"));
        }
        let opcode = Opcode::from_bits(b0 & 0x0f).ok_or(WsError::Protocol("unknown opcode"))?;
        let fin = b0 & 0x80 != 0;
        if b1 & 0x80 == 0 {
            return Err(WsError::Protocol("an unmasked frame from a client"));
        }
        let (len, at) = match b1 & 0x7f {
            126 => match buf.get(2..4) {
                Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
                _ => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(bytes) => {
                    let mut be = [0; 8];
                    be.copy_from_slice(bytes);
                    let len = u64::from_be_bytes(be);
                    if len >> 63 != 0 {
                        return Err(WsError::Protocol("a length with its top bit set"));
                    }
                    (len, 10)
                }
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        let control = matches!(opcode, Opcode::Close | Opcode::Ping | Opcode::Pong);
        if control && (!fin || len > MAX_CONTROL as u64) {
            return Err(WsError::Protocol("a fragmented or long control frame"));
        }
        let so_far = match (&self.assembling, opcode) {
            (Some((_, bytes)), Opcode::Continuation) => bytes.len(),
            (None, Opcode::Continuation) => {
                return Err(WsError::Protocol("a continuation of nothing"));
            }
            (Some(_), Opcode::Text | Opcode::Binary) => {
                return Err(WsError::Protocol("a new message inside a fragmented one"));
            }
            _ => 0,
        };
        // The limit, before anything waits for (or is kept of) the payload.
        let len = usize::try_from(len).map_err(|_| WsError::TooBig)?;
        if !control && len > self.max_message.saturating_sub(so_far) {
            return Err(WsError::TooBig);
        }
        let Some(mask) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        Ok(Some(Header {
            fin,
            opcode,
            mask: [mask[0], mask[1], mask[2], mask[3]],
            size: at + 4,
            len,
        }))
    }

    /// Acts on one whole frame: what it gives the caller, if anything.
    fn frame(&mut self, header: &Header, masked: &[u8]) -> Result<Option<Received>, WsError> {
        Ok(Some(match header.opcode {
            Opcode::Text | Opcode::Binary if header.fin => {
                let text = header.opcode == Opcode::Text;
                Received::Message(finish(text, unmask(masked, header.mask))?)
            }
            Opcode::Text | Opcode::Binary => {
                let text = header.opcode == Opcode::Text;
                self.assembling = Some((text, unmask(masked, header.mask)));
                return Ok(None);
            }
            Opcode::Continuation => {
                let Some((text, bytes)) = &mut self.assembling else {
                    return Err(WsError::Protocol("a continuation of nothing"));
                };
                let start = bytes.len();
                bytes.extend_from_slice(masked);
                apply_mask(&mut bytes[start..], header.mask);
                if !header.fin {
                    return Ok(None);
                }
                let text = *text;
                match self.assembling.take() {
                    Some((_, bytes)) => Received::Message(finish(text, bytes)?),
                    None => return Ok(None),
                }
            }
            Opcode::Ping => Received::Ping(unmask(masked, header.mask).into()),
            Opcode::Pong => return Ok(None),
            Opcode::Close => {
                let payload = unmask(masked, header.mask);
                let code = match payload.as_slice() {
                    [] => None,
                    [_] => return Err(WsError::Protocol("a one-byte close payload")),
                    [a, b, reason @ ..] => {
                        let code = u16::from_be_bytes([*a, *b]);
                        if !valid_close_code(code) {
                            return Err(WsError::Protocol("an invalid close code"));
                        }
                        std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
                        Some(code)
                    }
                };
                self.closed = true;
                self.partial = Vec::new();
                self.assembling = None;
                Received::Close(code)
            }
        }))
    }
}

/// A whole message's bytes, checked to be UTF-8 if it is text.
fn finish(text: bool, bytes: Vec<u8>) -> Result<Bytes, WsError> {
    if text && std::str::from_utf8(&bytes).is_err() {
        return Err(WsError::InvalidUtf8);
    }
    Ok(Bytes::from(bytes))
}

/// Close codes a peer may send (RFC 6455 §7.4, and the IANA registry's 1012–1014).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn unmask(masked: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut bytes = masked.to_vec();
    apply_mask(&mut bytes, mask);
    bytes
}

fn apply_mask(bytes: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = bytes.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// The header of an unmasked, final frame of `len` payload bytes: its bytes, and how many of
/// them are the header.
#[must_use]
pub fn header(opcode: Opcode, len: usize) -> ([u8; MAX_HEADER], usize) {
    let mut bytes = [0; MAX_HEADER];
    bytes[0] = 0x80 | opcode as u8;
    let size = if len < 126 {
        bytes[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        bytes[1] = 126;
        bytes[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        bytes[1] = 127;
        bytes[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (bytes, size)
}

/// The payload of a close frame: the code, and the reason cut at a character boundary to fit
/// a control frame.
#[must_use]
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's frame: masked with a fixed key.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_all(decoder: &mut Decoder, input: &[u8]) -> Result<Vec<Received>, WsError> {
        let mut got = Vec::new();
        decoder.decode(input, &mut |r| got.push(r))?;
        Ok(got)
    }

    fn msg(bytes: &[u8]) -> Received {
        Received::Message(Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn every_split_of_a_stream_gives_the_same_messages_and_leaves_nothing_held() {
        let big = vec![7u8; 70_000];
        let mut stream = frame(0x81, b"hello");
        stream.extend(frame(0x89, b"ping!"));
        stream.extend(frame(0x02, b"frag"));
        stream.extend(frame(0x8a, b"pong in between"));
        stream.extend(frame(0x80, b"mented"));
        stream.extend(frame(0x82, &big));
        stream.extend(frame(0x82, &[0; 300]));
        let want = vec![
            msg(b"hello"),
            Received::Ping(Bytes::from_static(b"ping!")),
            msg(b"fragmented"),
            msg(&big),
            msg(&[0; 300]),
        ];
        for chunk in [1, 2, 3, 7, 126, 4096, stream.len()] {
            let mut decoder = Decoder::new(100_000);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                decoder
                    .decode(piece, &mut |r| got.push(r))
                    .expect("valid stream");
            }
            assert_eq!(got, want, "in chunks of {chunk}");
            assert!(decoder.is_idle(), "nothing held after whole frames");
        }
    }

    #[test]
    fn the_limit_is_checked_on_the_header_before_the_payload_comes() {
        let mut decoder = Decoder::new(1000);
        let head = &frame(0x82, &vec![0; 4 << 20])[..14];
        assert_eq!(decode_all(&mut decoder, head), Err(WsError::TooBig));
        // Fragments count together.
        let mut decoder = Decoder::new(1000);
        let mut stream = frame(0x02, &[0; 600]);
        stream.extend(&frame(0x80, &[0; 401])[..8]);
        assert_eq!(decode_all(&mut decoder, &stream), Err(WsError::TooBig));
        let mut decoder = Decoder::new(1000);
        assert_eq!(
            decode_all(&mut decoder, &frame(0x82, &[1; 1000])).expect("at the limit"),
            [msg(&[1; 1000])]
        );
    }

    #[test]
    fn what_rfc_6455_forbids_is_refused_with_its_code() {
        let cases: &[(Vec<u8>, u16)] = &[
            (frame(0x81, &[0xff, 0xfe]), 1007),
            (
                {
                    let mut s = frame(0x01, &[0xe2, 0x82]);
                    s.extend(frame(0x80, &[0xac]));
                    s.extend(frame(0x81, &[0xc0]));
                    s
                },
                1007,
            ),
            (frame(0xc2, b"rsv1"), 1002),
            (frame(0x83, b"opcode 3"), 1002),
            (frame(0x80, b"continuation of nothing"), 1002),
            (
                {
                    let mut s = frame(0x01, b"a");
                    s.extend(frame(0x81, b"b"));
                    s
                },
                1002,
            ),
            (frame(0x09, b"fragmented ping"), 1002),
            (frame(0x89, &[0; 126]), 1002),
            (frame(0x88, &[3]), 1002),
            (frame(0x88, &[0x03, 0xe8 + 5]), 1002),
            (frame(0x88, &[0x03, 0xe8, 0xff]), 1007),
            (vec![0x82, 0x01, b'x'], 1002),
            (
                vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
                1002,
            ),
        ];
        for (input, code) in cases {
            let mut decoder = Decoder::new(1000);
            let got = decode_all(&mut decoder, input).expect_err("refused");
            assert_eq!(got.close_code(), *code, "{input:?}: {got}");
        }
    }

    #[test]
    fn a_stopped_decode_goes_on_from_where_it_stopped() {
        let mut stream = Vec::new();
        for i in 0..10u8 {
            stream.extend(frame(0x82, &[i; 3]));
        }
        stream.extend(&frame(0x82, b"unfinished")[..5]);
        let mut decoder = Decoder::new(1000);
        let mut got = Vec::new();
        let take_three = |got: &mut Vec<Received>, r| {
            got.push(r);
            if got.len().is_multiple_of(3) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let mut input: &[u8] = &stream;
        let mut calls = 0;
        while decoder
            .decode_until(input, &mut |r| take_three(&mut got, r))
            .expect("valid")
        {
            input = &[];
            calls += 1;
        }
        assert_eq!(calls, 3, "stopped after 3, 6 and 9");
        let want: Vec<_> = (0..10u8).map(|i| msg(&[i; 3])).collect();
        assert_eq!(got, want);
        assert!(!decoder.is_idle(), "the unfinished frame is kept");
        let rest = &frame(0x82, b"unfinished")[5..];
        decoder.decode(rest, &mut |r| got.push(r)).expect("valid");
        assert_eq!(got.last(), Some(&msg(b"unfinished")));
        assert!(decoder.is_idle());
    }

    #[test]
    fn a_close_ends_the_stream() {
        let mut decoder = Decoder::new(1000);
        let mut stream = frame(0x88, &close_payload(1000, "bye"));
        stream.extend(frame(0x81, b"after"));
        stream.extend(b"garbage that is never read");
        let got = decode_all(&mut decoder, &stream).expect("a clean close");
        assert_eq!(got, [Received::Close(Some(1000))]);
        assert!(decoder.is_idle());
        assert_eq!(decode_all(&mut decoder, &frame(0x81, b"x")), Ok(vec![]));
        let mut decoder = Decoder::new(1000);
        assert_eq!(
            decode_all(&mut decoder, &frame(0x88, b"")),
            Ok(vec![Received::Close(None)])
        );
    }

    #[test]
    fn headers_use_the_shortest_length() {
        for (len, want) in [
            (0, vec![0x81, 0]),
            (125, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65_535, vec![0x81, 126, 0xff, 0xff]),
            (65_536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let (bytes, size) = header(Opcode::Text, len);
            assert_eq!(&bytes[..size], want.as_slice());
        }
        let reason = "é".repeat(100);
        let payload = close_payload(1008, &reason);
        assert_eq!(payload.len(), 2 + 122, "cut before a split character");
        assert!(std::str::from_utf8(&payload[2..]).is_ok());
    }

    #[test]
    fn masks_of_any_alignment_unmask() {
        for len in 0..40 {
            let payload: Vec<u8> = (0..len as u8).collect();
            let mut decoder = Decoder::new(1000);
            let got = decode_all(&mut decoder, &frame(0x82, &payload)).expect("valid");
            assert_eq!(got, [msg(&payload)]);
        }
    }
}
