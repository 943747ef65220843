//! Reassembly of an app server's output for one client into whole frames.
//!
//! An app server writes a client's bytes through ConnectionData messages, chunked however its
//! pipe was read: a hub message may span two messages, and one message may hold several. The
//! clients need whole frames per transport message ("Message is incomplete" otherwise), so the
//! relay hands out only complete frames and keeps the tail. The first frame is always the
//! JSON handshake response (`0x1E`-terminated, whatever the protocol); the protocol's own
//! framing follows.
//!
//! When a chunk ends on a frame boundary and nothing is held back, the chunk's bytes are
//! passed on without copying.

use bytes::{Bytes, BytesMut};

use crate::framing::{FrameError, RECORD_SEPARATOR};
use crate::varint;

#[derive(Debug)]
pub(crate) struct Reframer {
    binary: bool,
    handshake_pending: bool,
    partial: BytesMut,
    max_frame_len: usize,
}

/// What one push produced.
#[derive(Debug, Default)]
pub(crate) struct Reframed {
    /// Whole frames, ready for the client.
    pub(crate) data: Option<Bytes>,
}

impl Reframer {
    pub(crate) fn new(binary: bool, max_frame_len: usize) -> Self {
        Self {
            binary,
            handshake_pending: true,
            partial: BytesMut::new(),
            max_frame_len,
        }
    }

    /// A reframer for the same stream that starts past the handshake response: for the app
    /// server a client was migrated from.
    pub(crate) fn after_handshake(&self) -> Self {
        Self {
            binary: self.binary,
            handshake_pending: false,
            partial: BytesMut::new(),
            max_frame_len: self.max_frame_len,
        }
    }

    pub(crate) fn handshake_done(&self) -> bool {
        !self.handshake_pending
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.partial.is_empty()
    }

    pub(crate) fn push(&mut self, data: Bytes) -> Result<Reframed, FrameError> {
        let mut input = if self.partial.is_empty() {
            data
        } else {
            self.partial.extend_from_slice(&data);
            self.partial.split().freeze()
        };
        let mut complete = 0;
        if self.handshake_pending {
            match input.iter().position(|&b| b == RECORD_SEPARATOR) {
                Some(i) => {
                    complete = i + 1;
                    self.handshake_pending = false;
                }
                None => {
                    self.keep(input)?;
                    return Ok(Reframed::default());
                }
            }
        }
        complete += self.complete_prefix(&input[complete..])?;
        let tail = input.split_off(complete);
        self.keep(tail)?;
        Ok(Reframed {
            data: (!input.is_empty()).then_some(input),
        })
    }

    fn keep(&mut self, tail: Bytes) -> Result<(), FrameError> {
        if tail.len() > self.max_frame_len {
            return Err(FrameError::TooLarge {
                len: tail.len(),
                max: self.max_frame_len,
            });
        }
        self.partial.extend_from_slice(&tail);
        Ok(())
    }

    /// The length of the longest prefix of `data` made of whole frames.
    fn complete_prefix(&self, data: &[u8]) -> Result<usize, FrameError> {
        if !self.binary {
            return Ok(data
                .iter()
                .rposition(|&b| b == RECORD_SEPARATOR)
                .map_or(0, |i| i + 1));
        }
        let mut pos = 0;
        while let Some((len, prefix)) = varint::decode(&data[pos..])? {
            let len = len as usize;
            if len > self.max_frame_len {
                return Err(FrameError::TooLarge {
                    len,
                    max: self.max_frame_len,
                });
            }
            if data.len() - pos < prefix + len {
                break;
            }
            pos += prefix + len;
        }
        Ok(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(r: &mut Reframer, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            if let Some(d) = r.push(Bytes::copy_from_slice(c)).unwrap().data {
                out.extend_from_slice(&d);
            }
        }
        out
    }

    #[test]
    fn text_frames_are_only_released_whole() {
        let stream = b"{}\x1e{\"type\":6}\x1e{\"type\":1,\"target\":\"x\",\"arguments\":[]}\x1e";
        for split in 1..stream.len() {
            let mut r = Reframer::new(false, 1024);
            let (a, b) = stream.split_at(split);
            let first = r.push(Bytes::copy_from_slice(a)).unwrap();
            if let Some(d) = &first.data {
                assert_eq!(d.last(), Some(&RECORD_SEPARATOR));
            }
            assert_eq!(r.handshake_done(), split >= 3);
            let second = r.push(Bytes::copy_from_slice(b)).unwrap();
            assert!(r.handshake_done());
            let mut got = first.data.map(|d| d.to_vec()).unwrap_or_default();
            got.extend_from_slice(&second.data.unwrap());
            assert_eq!(got, stream);
            assert!(r.is_idle());
        }
    }

    #[test]
    fn binary_frames_follow_a_text_handshake() {
        let stream = b"{}\x1e\x02\x91\x06\x06\x94\x02\x80\xa11\x00";
        for split in 1..stream.len() {
            let mut r = Reframer::new(true, 1024);
            let (a, b) = stream.split_at(split);
            assert_eq!(all(&mut r, &[a, b]), stream, "split at {split}");
            assert!(r.is_idle());
            assert!(r.handshake_done());
        }
    }

    #[test]
    fn whole_chunks_pass_without_copying() {
        let mut r = Reframer::new(false, 1024);
        let chunk = Bytes::from_static(b"{}\x1e{\"type\":6}\x1e");
        let out = r.push(chunk.clone()).unwrap().data.unwrap();
        assert_eq!(out.as_ptr(), chunk.as_ptr());
    }

    #[test]
    fn an_oversized_partial_frame_is_an_error() {
        let mut r = Reframer::new(false, 4);
        assert!(r.push(Bytes::from_static(b"{}\x1e12345")).is_err());
        let mut r = Reframer::new(true, 4);
        assert!(r.push(Bytes::from_static(b"{}\x1e\x05")).is_err());
    }
}
