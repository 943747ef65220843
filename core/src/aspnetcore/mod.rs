//! ASP.NET Core SignalR wire formats (the `@microsoft/signalr` client family).
//!
//! - [`negotiate`]: the negotiate query and every negotiate response form.
//! - [`handshake`]: the hub-protocol handshake that opens every connection.
//! - [`HubMessage`] and its [`HubProtocol`] encodings: the JSON hub protocol ([`json`]) over
//!   `0x1E`-terminated text frames, and the MessagePack hub protocol ([`messagepack`]) over
//!   varint-length-prefixed binary frames.
//!
//! The relay forwards hub messages opaquely; the app-server SDK decodes and encodes them. The
//! values inside a message (arguments, stream items, results) are kept as [`RawValue`]s in the
//! encoding of the protocol that produced them.

pub mod handshake;
mod hub;
pub mod json;
pub mod messagepack;
pub mod negotiate;

pub use hub::{
    CancelInvocation, Close, Completion, CompletionResult, Headers, HubMessage, Invocation,
    RawValue, StreamItem,
};

use bytes::Bytes;

use crate::framing::{BinaryFrameDecoder, FrameError, TextFrameDecoder};
use crate::msgpack::MsgPackError;

/// ASP.NET Core's default `MaximumReceiveMessageSize`: 32 KiB per client message.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 32 * 1024;

/// The transfer format a transport must carry for a hub protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferFormat {
    /// UTF-8 text (WebSocket text frames, Server-Sent Events).
    Text,
    /// Arbitrary bytes (WebSocket binary frames).
    Binary,
}

impl TransferFormat {
    /// The name used in negotiate responses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "Text",
            Self::Binary => "Binary",
        }
    }
}

/// A hub protocol a client can pick in its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HubProtocol {
    /// `json`: JSON objects, each followed by `0x1E`.
    Json,
    /// `messagepack`: MessagePack arrays, each preceded by a varint length.
    MessagePack,
    /// `blazorpack`: Blazor Server's name for the MessagePack hub protocol (the same
    /// encoding, version 1). App servers encode a separate payload for it, keyed by its name.
    BlazorPack,
}

impl HubProtocol {
    /// Looks a protocol up by its handshake name. Names are compared case-insensitively, as
    /// ASP.NET Core's protocol resolver does.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Json, Self::MessagePack, Self::BlazorPack]
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// The protocol's handshake name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::MessagePack => "messagepack",
            Self::BlazorPack => "blazorpack",
        }
    }

    /// The highest protocol version this implementation speaks (2: with Ack and Sequence).
    pub fn version(self) -> u32 {
        2
    }

    /// The transfer format this protocol needs from its transport.
    pub fn transfer_format(self) -> TransferFormat {
        match self {
            Self::Json => TransferFormat::Text,
            Self::MessagePack | Self::BlazorPack => TransferFormat::Binary,
        }
    }

    /// Whether this protocol's frames are binary (MessagePack, under either name).
    pub fn is_binary(self) -> bool {
        self.transfer_format() == TransferFormat::Binary
    }

    /// Decodes one message from a frame body (separator or length prefix already removed).
    ///
    /// # Errors
    /// A [`HubError`] saying what is wrong with the frame.
    pub fn parse_message(self, frame: &[u8]) -> Result<HubMessage, HubError> {
        match self {
            Self::Json => json::parse_message(frame),
            Self::MessagePack | Self::BlazorPack => messagepack::parse_message(frame),
        }
    }

    /// Appends `message` to `out` as one whole frame, separator or prefix included.
    ///
    /// # Errors
    /// [`HubError::Frame`] if the message is over 2 GB, which MessagePack framing cannot carry.
    pub fn write_message(self, message: &HubMessage, out: &mut Vec<u8>) -> Result<(), HubError> {
        match self {
            Self::Json => {
                json::write_message(message, out);
                Ok(())
            }
            Self::MessagePack | Self::BlazorPack => messagepack::write_message(message, out),
        }
    }

    /// A frame decoder for this protocol's framing.
    pub fn frame_decoder(self, max_message_size: usize) -> FrameDecoder {
        match self {
            Self::Json => FrameDecoder::Text(TextFrameDecoder::new(max_message_size)),
            Self::MessagePack | Self::BlazorPack => {
                FrameDecoder::Binary(BinaryFrameDecoder::new(max_message_size))
            }
        }
    }
}

/// The frame decoder of one hub protocol.
#[derive(Debug)]
#[non_exhaustive]
pub enum FrameDecoder {
    /// `0x1E`-terminated text frames (JSON).
    Text(TextFrameDecoder),
    /// Varint-length-prefixed frames (MessagePack).
    Binary(BinaryFrameDecoder),
}

impl FrameDecoder {
    /// Appends received bytes; drain [`next_frame`](Self::next_frame) afterwards.
    pub fn push(&mut self, data: &[u8]) {
        match self {
            Self::Text(d) => d.push(data),
            Self::Binary(d) => d.push(data),
        }
    }

    /// Whether `data` is exactly whole frames, each within the limit, with nothing buffered
    /// before it: then pushing it would give those frames and leave nothing behind, so a
    /// caller may pass `data` on as it is instead. For binary frames, each length prefix must
    /// also be minimal, so that passing the bytes on equals re-framing the frames.
    pub fn holds_whole_frames(&self, data: &[u8]) -> bool {
        match self {
            Self::Text(d) => d.holds_whole_frames(data),
            Self::Binary(d) => d.holds_whole_frames(data),
        }
    }

    /// The next whole frame body, or `Ok(None)` if more bytes are needed.
    ///
    /// # Errors
    /// See [`FrameError`]; errors are sticky.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        match self {
            Self::Text(d) => d.next_frame(),
            Self::Binary(d) => d.next_frame(),
        }
    }

    /// Bytes held that do not yet form a whole frame.
    pub fn buffered(&self) -> usize {
        match self {
            Self::Text(d) => d.buffered(),
            Self::Binary(d) => d.buffered(),
        }
    }
}

/// Decodes a stream of hub messages: a [`FrameDecoder`] plus [`HubProtocol::parse_message`].
#[derive(Debug)]
pub struct HubDecoder {
    protocol: HubProtocol,
    frames: FrameDecoder,
}

impl HubDecoder {
    /// A decoder for `protocol` that rejects messages over `max_message_size` bytes.
    pub fn new(protocol: HubProtocol, max_message_size: usize) -> Self {
        Self {
            protocol,
            frames: protocol.frame_decoder(max_message_size),
        }
    }

    /// Appends received bytes; drain [`next_message`](Self::next_message) afterwards.
    pub fn push(&mut self, data: &[u8]) {
        self.frames.push(data);
    }

    /// The next whole message, or `Ok(None)` if more bytes are needed.
    ///
    /// # Errors
    /// A framing error (sticky), or a [`HubError`] for one malformed message. After a
    /// malformed message the stream is still in sync, so the caller may go on.
    pub fn next_message(&mut self) -> Result<Option<HubMessage>, HubError> {
        match self.frames.next_frame()? {
            Some(frame) => self.protocol.parse_message(&frame).map(Some),
            None => Ok(None),
        }
    }
}

/// Why a hub message cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The byte stream cannot be split into frames.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A JSON frame is not UTF-8.
    #[error("message is not valid UTF-8")]
    InvalidUtf8,
    /// A JSON frame is not valid JSON, or a field has the wrong JSON type.
    #[error("invalid JSON message: {0}")]
    Json(String),
    /// A MessagePack frame is malformed.
    #[error("invalid MessagePack message: {0}")]
    MsgPack(#[from] MsgPackError),
    /// A field the message type requires is missing.
    #[error("message is missing the required field '{0}'")]
    MissingField(&'static str),
    /// The message type is not one of 1 to 9. Receivers may log and ignore it.
    #[error("unknown message type {0}")]
    UnknownMessageType(i64),
    /// The fields are present but contradict the protocol.
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_are_matched_in_any_case() {
        for (name, protocol) in [
            ("json", HubProtocol::Json),
            ("JSON", HubProtocol::Json),
            ("messagepack", HubProtocol::MessagePack),
            ("MessagePack", HubProtocol::MessagePack),
            ("blazorpack", HubProtocol::BlazorPack),
            ("BlazorPack", HubProtocol::BlazorPack),
        ] {
            assert_eq!(HubProtocol::from_name(name), Some(protocol), "{name}");
        }
        assert_eq!(HubProtocol::from_name("blazor"), None);
        assert_eq!(HubProtocol::from_name(""), None);
        assert!(HubProtocol::BlazorPack.is_binary() && !HubProtocol::Json.is_binary());
    }
}
