//! The server-connection protocol: what app servers and the relay say to each other.
//!
//! This is the Azure SignalR service protocol, so that an unmodified Azure SignalR SDK app
//! server can talk to the relay. Each message is a varint length prefix followed by one
//! MessagePack array `[type, fields...]`; a WebSocket carries them as a byte stream (one
//! WebSocket message may hold several frames, and a frame may span messages), which
//! [`ServiceDecoder`] reassembles.
//!
//! Compatibility rules, as the SDK applies them:
//! - Older peers write fewer elements: missing trailing fields take their defaults.
//! - Newer peers may add elements: trailing elements, and bytes after the array, are skipped.
//! - Unknown message types decode as [`ServiceMessage::Unknown`], which receivers ignore.
//! - Most messages end with an int-keyed extension map ([`Ext`]); unknown keys are skipped.
//!
//! The encoder is byte-exact with the Azure SDK: the golden vectors of its protocol tests
//! decode and re-encode byte for byte (see this module's tests).

mod codec;
mod messages;

pub use codec::{
    write_connection_data, ServiceDecoder, ServiceProtocolError, DEFAULT_MAX_FRAME_LEN,
};
pub use messages::*;

#[cfg(test)]
mod tests;
