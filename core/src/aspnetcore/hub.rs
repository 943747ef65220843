//! The hub message model shared by both hub protocols.

use std::collections::BTreeMap;

use bytes::Bytes;

/// Message headers: string keys to string values.
pub type Headers = BTreeMap<String, String>;

/// One encoded value (an argument, a stream item or a result), kept opaque.
///
/// It holds the value's bytes in the encoding of the protocol that decoded it: JSON text for
/// [`HubProtocol::Json`](super::HubProtocol::Json), one MessagePack object for
/// [`HubProtocol::MessagePack`](super::HubProtocol::MessagePack). Encoders write it back
/// verbatim, so a value must be written with the protocol it was made for.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RawValue(Bytes);

impl RawValue {
    /// Wraps already-encoded bytes.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Self(bytes.into())
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The encoded bytes, shared.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

impl std::fmt::Debug for RawValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(text) => write!(f, "RawValue({text})"),
            Err(_) => write!(f, "RawValue({:02x?})", &self.0[..]),
        }
    }
}

/// A hub method call: type 1 (Invocation) or type 4 (StreamInvocation).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Invocation {
    /// Headers.
    pub headers: Headers,
    /// Present when the caller expects a Completion. Always present on a StreamInvocation.
    pub invocation_id: Option<String>,
    /// The method name.
    pub target: String,
    /// The arguments, in order.
    pub arguments: Vec<RawValue>,
    /// Ids of the streams the caller uploads as further arguments.
    pub stream_ids: Vec<String>,
}

/// Type 2: one item of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamItem {
    /// Headers.
    pub headers: Headers,
    /// The stream's invocation id.
    pub invocation_id: String,
    /// The item (may be the encoded `null`).
    pub item: RawValue,
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompletionResult {
    /// The method returned nothing.
    Void,
    /// The method returned a value (possibly the encoded `null`).
    Value(RawValue),
    /// The method failed.
    Error(String),
}

/// Type 3: the end of an invocation or stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Headers.
    pub headers: Headers,
    /// The invocation being completed.
    pub invocation_id: String,
    /// Its outcome.
    pub result: CompletionResult,
}

/// Type 5: the caller cancels a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelInvocation {
    /// Headers.
    pub headers: Headers,
    /// The stream's invocation id.
    pub invocation_id: String,
}

/// Type 7: the sender is closing the connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Close {
    /// Why, if it is an error.
    pub error: Option<String>,
    /// Whether the client may reconnect automatically.
    pub allow_reconnect: bool,
}

/// One hub message, as defined by the ASP.NET Core SignalR hub protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HubMessage {
    /// Type 1.
    Invocation(Invocation),
    /// Type 2.
    StreamItem(StreamItem),
    /// Type 3.
    Completion(Completion),
    /// Type 4. The invocation id is required.
    StreamInvocation(Invocation),
    /// Type 5.
    CancelInvocation(CancelInvocation),
    /// Type 6.
    Ping,
    /// Type 7.
    Close(Close),
    /// Type 8: the highest sequence id the sender has processed (stateful reconnect).
    Ack {
        /// The sequence id.
        sequence_id: u64,
    },
    /// Type 9: the sequence id of the next message the sender will send (stateful reconnect).
    Sequence {
        /// The sequence id.
        sequence_id: u64,
    },
}

impl HubMessage {
    /// The message type number on the wire.
    pub fn message_type(&self) -> u8 {
        match self {
            Self::Invocation(_) => 1,
            Self::StreamItem(_) => 2,
            Self::Completion(_) => 3,
            Self::StreamInvocation(_) => 4,
            Self::CancelInvocation(_) => 5,
            Self::Ping => 6,
            Self::Close(_) => 7,
            Self::Ack { .. } => 8,
            Self::Sequence { .. } => 9,
        }
    }

    /// Whether stateful reconnect counts (and buffers) this message: types 1 to 5.
    pub fn is_sequenced(&self) -> bool {
        self.message_type() <= 5
    }
}
