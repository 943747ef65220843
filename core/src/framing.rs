//! Incremental, bounded frame decoders.
//!
//! Two framings are used on the wire:
//! - **Text** ([`TextFrameDecoder`]): each frame ends with the record separator `0x1E`. Used by
//!   the ASP.NET Core handshake and the JSON hub protocol.
//! - **Length-prefixed** ([`BinaryFrameDecoder`]): each frame starts with a [`varint`]
//!   length. Used by the MessagePack hub protocol and the service protocol.
//!
//! Both decoders take bytes in any chunking through `push`, then hand out whole frames through
//! `next_frame` until it returns `Ok(None)` ("need more"). Frames are zero-copy [`Bytes`] views of
//! the buffer. Each byte is examined once, so decoding is O(n) whatever the chunking.
//!
//! Limits: a frame longer than the configured maximum is an error, detected from the length
//! prefix before any memory is reserved for it, or, for text, as soon as that many bytes are
//! buffered without a separator. As long as the caller drains `next_frame` after every `push`,
//! a decoder never holds more than `max_frame_len` plus one pushed chunk.
//!
//! Errors are sticky: after one, `next_frame` keeps returning it and consumes nothing more.

use bytes::{Bytes, BytesMut};

use crate::varint;

/// The record separator that ends every text frame.
pub const RECORD_SEPARATOR: u8 = 0x1e;

/// Why a byte stream cannot be split into frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame is longer than the configured limit.
    #[error("frame of at least {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The frame's length, or the bytes buffered so far without a separator.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A length prefix is longer than 5 bytes or over 2 GB.
    #[error("invalid length prefix: {0}")]
    LengthPrefix(#[from] varint::VarIntError),
}

/// Splits a byte stream into `0x1E`-terminated frames.
#[derive(Debug)]
pub struct TextFrameDecoder {
    buf: BytesMut,
    /// Bytes at the front of `buf` already known to hold no separator.
    scanned: usize,
    max_frame_len: usize,
    error: Option<FrameError>,
}

impl TextFrameDecoder {
    /// A decoder that rejects frames longer than `max_frame_len` bytes (separator excluded).
    pub fn new(max_frame_len: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            scanned: 0,
            max_frame_len,
            error: None,
        }
    }

    /// Appends received bytes. Call [`next_frame`](Self::next_frame) until it returns
    /// `Ok(None)` afterwards.
    pub fn push(&mut self, data: &[u8]) {
        if self.error.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// Takes the next whole frame, without its separator.
    ///
    /// Returns `Ok(None)` when no whole frame is buffered.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] when a frame exceeds the limit. The error is sticky.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        match self.buf[self.scanned..]
            .iter()
            .position(|&b| b == RECORD_SEPARATOR)
        {
            Some(offset) => {
                let len = self.scanned + offset;
                self.scanned = 0;
                if len > self.max_frame_len {
                    return Err(self.fail(FrameError::TooLarge {
                        len,
                        max: self.max_frame_len,
                    }));
                }
                let mut frame = self.buf.split_to(len + 1);
                frame.truncate(len);
                Ok(Some(frame.freeze()))
            }
            None => {
                self.scanned = self.buf.len();
                if self.scanned > self.max_frame_len {
                    return Err(self.fail(FrameError::TooLarge {
                        len: self.scanned,
                        max: self.max_frame_len,
                    }));
                }
                Ok(None)
            }
        }
    }

    /// Bytes buffered that do not yet form a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether `data` is exactly whole frames, each within the limit, with nothing buffered
    /// (and no error) before it.
    pub fn holds_whole_frames(&self, data: &[u8]) -> bool {
        self.buf.is_empty()
            && self.error.is_none()
            && data.last().is_none_or(|&b| b == RECORD_SEPARATOR)
            && data
                .split(|&b| b == RECORD_SEPARATOR)
                .all(|frame| frame.len() <= self.max_frame_len)
    }

    /// Takes the bytes buffered after the last frame handed out, e.g. to hand them to another
    /// decoder once the framing changes (after a handshake).
    pub fn take_buffered(&mut self) -> BytesMut {
        self.scanned = 0;
        std::mem::take(&mut self.buf)
    }

    fn fail(&mut self, error: FrameError) -> FrameError {
        self.error = Some(error);
        self.buf = BytesMut::new();
        error
    }
}

/// How much of a skipped frame [`BinaryFrameDecoder::take_skipped_head`] keeps.
const SKIPPED_HEAD: usize = 64;

/// Splits a byte stream into varint-length-prefixed frames.
#[derive(Debug)]
pub struct BinaryFrameDecoder {
    buf: BytesMut,
    max_frame_len: usize,
    error: Option<FrameError>,
    /// Frames over the limit are skipped rather than fatal when this is set: boxed, as few
    /// decoders skip, and every client's decoder would otherwise carry it.
    skip: Option<Box<Skip>>,
}

/// Where a decoder that skips oversize frames is.
#[derive(Debug, Default)]
struct Skip {
    /// Bytes of a skipped frame still to come, dropped as they arrive.
    remaining: usize,
    /// The first bytes of the frame skipped last, for the caller to see what it was.
    head: Bytes,
}

impl BinaryFrameDecoder {
    /// A decoder that rejects frames whose length prefix exceeds `max_frame_len`.
    pub fn new(max_frame_len: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame_len,
            error: None,
            skip: None,
        }
    }

    /// A decoder that skips frames whose length prefix exceeds `max_frame_len`: each is
    /// reported once as [`FrameError::TooLarge`], its bytes are dropped as they arrive (never
    /// held), and decoding goes on after it. Only a malformed prefix is fatal.
    pub fn skipping_oversize(max_frame_len: usize) -> Self {
        Self {
            skip: Some(Box::default()),
            ..Self::new(max_frame_len)
        }
    }

    /// Appends received bytes. Call [`next_frame`](Self::next_frame) until it returns
    /// `Ok(None)` afterwards.
    pub fn push(&mut self, mut data: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if let Some(skip) = self.skip.as_deref_mut() {
            let dropped = skip.remaining.min(data.len());
            skip.remaining -= dropped;
            data = &data[dropped..];
        }
        self.buf.extend_from_slice(data);
    }

    /// Takes the next whole frame body, without its length prefix.
    ///
    /// Returns `Ok(None)` when no whole frame is buffered.
    ///
    /// # Errors
    /// [`FrameError::LengthPrefix`] for a malformed prefix, [`FrameError::TooLarge`] when the
    /// prefix announces more than the limit. Both are detected before anything is reserved,
    /// and both are sticky (but see [`skipping_oversize`](Self::skipping_oversize)).
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let (len, prefix) = match varint::decode(&self.buf) {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.fail(e.into())),
        };
        let len = len as usize;
        if len > self.max_frame_len {
            let error = FrameError::TooLarge {
                len,
                max: self.max_frame_len,
            };
            let Some(skip) = self.skip.as_deref_mut() else {
                return Err(self.fail(error));
            };
            // Its first bytes say what it was: wait for them (a bounded wait), then drop what
            // is here of it, and the rest as it comes.
            if self.buf.len() - prefix < len.min(SKIPPED_HEAD) {
                return Ok(None);
            }
            let here = (self.buf.len() - prefix).min(len);
            let mut dropped = self.buf.split_to(prefix + here);
            let _ = dropped.split_to(prefix);
            dropped.truncate(SKIPPED_HEAD);
            skip.head = dropped.freeze();
            skip.remaining = len - here;
            return Err(error);
        }
        if self.buf.len() < prefix + len {
            // The limit was checked above, so this reservation is bounded.
            self.buf.reserve(prefix + len - self.buf.len());
            return Ok(None);
        }
        let _ = self.buf.split_to(prefix);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Bytes buffered that do not yet form a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The first bytes (at most 64) of the frame skipped last, as far as they had arrived:
    /// enough to tell what it was.
    pub fn take_skipped_head(&mut self) -> Bytes {
        self.skip
            .as_deref_mut()
            .map(|skip| std::mem::take(&mut skip.head))
            .unwrap_or_default()
    }

    /// Whether `data` is exactly whole frames, each within the limit and with a minimal
    /// length prefix, with nothing buffered (and no error) before it.
    pub fn holds_whole_frames(&self, mut data: &[u8]) -> bool {
        if !self.buf.is_empty()
            || self.error.is_some()
            || self.skip.as_ref().is_some_and(|s| s.remaining > 0)
        {
            return false;
        }
        while !data.is_empty() {
            let Ok(Some((len, prefix))) = varint::decode(data) else {
                return false;
            };
            let len = len as usize;
            if len > self.max_frame_len
                || prefix != varint::encoded_len(len as u32)
                || data.len() - prefix < len
            {
                return false;
            }
            data = &data[prefix + len..];
        }
        true
    }

    fn fail(&mut self, error: FrameError) -> FrameError {
        self.error = Some(error);
        self.buf = BytesMut::new();
        error
    }
}

/// Appends `payload` as one text frame.
pub fn write_text_frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(payload);
    out.push(RECORD_SEPARATOR);
}

/// Appends `payload` as one length-prefixed frame.
///
/// # Errors
/// [`FrameError::TooLarge`] if `payload` is over 2 GB, which no length prefix can express.
pub fn write_binary_frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&len| len <= varint::MAX_VALUE)
        .ok_or(FrameError::TooLarge {
            len: payload.len(),
            max: varint::MAX_VALUE as usize,
        })?;
    varint::encode(len, out);
    out.extend_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_text(d: &mut TextFrameDecoder) -> Result<Vec<Bytes>, FrameError> {
        let mut out = Vec::new();
        while let Some(f) = d.next_frame()? {
            out.push(f);
        }
        Ok(out)
    }

    fn drain_binary(d: &mut BinaryFrameDecoder) -> Result<Vec<Bytes>, FrameError> {
        let mut out = Vec::new();
        while let Some(f) = d.next_frame()? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn text_frames_come_out_whatever_the_chunking() {
        let stream =
            b"{\"protocol\":\"json\",\"version\":1}\x1e{\"type\":6}\x1e\x1e{\"type\":7}\x1e";
        let expected: Vec<&[u8]> = vec![
            b"{\"protocol\":\"json\",\"version\":1}",
            b"{\"type\":6}",
            b"",
            b"{\"type\":7}",
        ];
        for chunk in 1..=stream.len() {
            let mut d = TextFrameDecoder::new(1024);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                d.push(piece);
                got.extend(drain_text(&mut d).unwrap());
            }
            assert_eq!(got, expected, "chunk size {chunk}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn text_partial_frame_needs_more() {
        let mut d = TextFrameDecoder::new(1024);
        d.push(b"{\"type\":");
        assert_eq!(d.next_frame(), Ok(None));
        d.push(b"6}");
        assert_eq!(d.next_frame(), Ok(None));
        d.push(b"\x1e");
        assert_eq!(d.next_frame().unwrap().unwrap(), &b"{\"type\":6}"[..]);
    }

    #[test]
    fn text_oversize_without_separator_is_an_error() {
        let mut d = TextFrameDecoder::new(8);
        d.push(b"0123456789");
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge { len: 10, max: 8 })
        );
        // Sticky.
        d.push(b"\x1e");
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge { len: 10, max: 8 })
        );
    }

    #[test]
    fn text_oversize_with_separator_is_an_error() {
        let mut d = TextFrameDecoder::new(4);
        d.push(b"12345\x1e");
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge { len: 5, max: 4 }));
    }

    #[test]
    fn text_frame_at_the_limit_passes() {
        let mut d = TextFrameDecoder::new(4);
        d.push(b"1234\x1e");
        assert_eq!(d.next_frame().unwrap().unwrap(), &b"1234"[..]);
    }

    #[test]
    fn binary_frames_come_out_whatever_the_chunking() {
        let mut stream = Vec::new();
        let bodies: Vec<Vec<u8>> = vec![vec![0x91, 0x06], vec![], vec![7; 300], vec![1, 2, 3]];
        for b in &bodies {
            write_binary_frame(b, &mut stream).unwrap();
        }
        for chunk in 1..=stream.len() {
            let mut d = BinaryFrameDecoder::new(1024);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                d.push(piece);
                got.extend(drain_binary(&mut d).unwrap());
            }
            assert_eq!(got, bodies, "chunk size {chunk}");
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn binary_oversize_prefix_is_rejected_before_the_body_arrives() {
        let mut d = BinaryFrameDecoder::new(100);
        d.push(&[0x80, 0x01]); // 128
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLarge { len: 128, max: 100 })
        );
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn binary_six_byte_prefix_is_rejected() {
        let mut d = BinaryFrameDecoder::new(usize::MAX);
        d.push(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::LengthPrefix(varint::VarIntError::TooLarge))
        );
    }

    #[test]
    fn binary_truncated_frame_needs_more() {
        let mut d = BinaryFrameDecoder::new(100);
        d.push(&[0x05, 1, 2]);
        assert_eq!(d.next_frame(), Ok(None));
        d.push(&[3, 4, 5, 6]);
        assert_eq!(d.next_frame().unwrap().unwrap(), &[1, 2, 3, 4, 5][..]);
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(d.buffered(), 1);
    }
}

#[cfg(test)]
mod skipping_tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_binary_frame(body, &mut out).expect("a frame");
        out
    }

    /// An oversize frame is reported once and dropped, whatever the chunking, and the frames
    /// around it come through; nothing of it is held.
    #[test]
    fn oversize_frames_are_skipped_in_any_chunking() {
        let big = vec![7u8; 300];
        let stream: Vec<u8> = [
            frame(b"a"),
            frame(&big),
            frame(b"bc"),
            frame(&big),
            frame(b"d"),
        ]
        .concat();
        for chunk in [1, 2, 3, 7, 64, 299, 300, 301, stream.len()] {
            let mut d = BinaryFrameDecoder::skipping_oversize(100);
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                d.push(piece);
                loop {
                    match d.next_frame() {
                        Ok(Some(f)) => got.push(Ok(f.to_vec())),
                        Ok(None) => break,
                        Err(e) => got.push(Err(e)),
                    }
                }
                // At most a frame within the limit is held between pushes.
                assert!(
                    d.buffered() <= 100 + 5,
                    "chunk {chunk}: held {}",
                    d.buffered()
                );
            }
            let too_large = Err(FrameError::TooLarge { len: 300, max: 100 });
            assert_eq!(
                got,
                [
                    Ok(b"a".to_vec()),
                    too_large.clone(),
                    Ok(b"bc".to_vec()),
                    too_large,
                    Ok(b"d".to_vec())
                ],
                "chunk {chunk}"
            );
        }
        // Without skipping, the same stream stops at the first oversize frame.
        let mut d = BinaryFrameDecoder::new(100);
        d.push(&stream);
        assert_eq!(
            d.next_frame().map(|f| f.map(|f| f.to_vec())),
            Ok(Some(b"a".to_vec()))
        );
        assert!(d.next_frame().is_err() && d.next_frame().is_err());
    }
}
