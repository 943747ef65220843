//! The hub-protocol handshake: the first message in each direction, always JSON + `0x1E`,
//! whatever hub protocol is then used.
//!
//! The client sends `{"protocol":"json","version":1}` (version 2 with stateful reconnect); the
//! server answers `{}` on success or `{"error":"..."}` and closes.

use serde::Deserialize;

use super::json::write_json_string;
use crate::framing::RECORD_SEPARATOR;

/// ASP.NET Core's default handshake timeout: 15 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT_SECS: u64 = 15;

/// The client's handshake request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeRequest {
    /// The hub protocol's name, e.g. `json` or `messagepack`.
    pub protocol: String,
    /// The protocol version the client wants.
    pub version: u32,
}

/// The server's handshake response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HandshakeResponse {
    /// `None` for success; otherwise why the handshake failed.
    pub error: Option<String>,
}

/// Why a handshake message cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The frame is not UTF-8.
    #[error("handshake is not valid UTF-8")]
    InvalidUtf8,
    /// The frame is not a JSON object, or a property has the wrong type.
    #[error("invalid handshake JSON: {0}")]
    Json(String),
    /// A required property is missing.
    #[error("handshake is missing the required property '{0}'")]
    MissingField(&'static str),
    /// A hub message arrived where the handshake response was expected.
    #[error("Expected a handshake response from the server.")]
    NotAHandshake,
}

#[derive(Deserialize)]
struct WireRequest {
    protocol: Option<String>,
    version: Option<u32>,
}

#[derive(Deserialize)]
struct WireResponse {
    error: Option<String>,
    #[serde(rename = "type")]
    message_type: Option<serde::de::IgnoredAny>,
}

fn text(frame: &[u8]) -> Result<&str, HandshakeError> {
    std::str::from_utf8(frame).map_err(|_| HandshakeError::InvalidUtf8)
}

impl HandshakeRequest {
    /// Decodes a handshake request (the frame without its `0x1E`).
    ///
    /// # Errors
    /// [`HandshakeError`] for non-UTF-8, invalid JSON, or a missing `protocol` or `version`.
    pub fn parse(frame: &[u8]) -> Result<Self, HandshakeError> {
        let wire: WireRequest =
            serde_json::from_str(text(frame)?).map_err(|e| HandshakeError::Json(e.to_string()))?;
        Ok(Self {
            protocol: wire
                .protocol
                .ok_or(HandshakeError::MissingField("protocol"))?,
            version: wire
                .version
                .ok_or(HandshakeError::MissingField("version"))?,
        })
    }

    /// Appends the request as one frame, `0x1E` included.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"protocol\":");
        write_json_string(out, &self.protocol);
        out.extend_from_slice(b",\"version\":");
        out.extend_from_slice(self.version.to_string().as_bytes());
        out.push(b'}');
        out.push(RECORD_SEPARATOR);
    }
}

impl HandshakeResponse {
    /// The success response, `{}`.
    pub const SUCCESS_FRAME: &'static [u8] = b"{}\x1e";

    /// An error response.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            error: Some(message.into()),
        }
    }

    /// Decodes a handshake response (the frame without its `0x1E`).
    ///
    /// # Errors
    /// [`HandshakeError::NotAHandshake`] if the frame is a hub message (it has `type`), or a
    /// decoding error.
    pub fn parse(frame: &[u8]) -> Result<Self, HandshakeError> {
        let wire: WireResponse =
            serde_json::from_str(text(frame)?).map_err(|e| HandshakeError::Json(e.to_string()))?;
        if wire.message_type.is_some() {
            return Err(HandshakeError::NotAHandshake);
        }
        Ok(Self { error: wire.error })
    }

    /// Appends the response as one frame, `0x1E` included.
    pub fn write(&self, out: &mut Vec<u8>) {
        match &self.error {
            None => out.extend_from_slice(Self::SUCCESS_FRAME),
            Some(error) => {
                out.extend_from_slice(b"{\"error\":");
                write_json_string(out, error);
                out.push(b'}');
                out.push(RECORD_SEPARATOR);
            }
        }
    }
}

/// The error texts ASP.NET Core sends in a failed handshake response.
pub mod errors {
    /// The requested protocol is unknown.
    pub fn unsupported_protocol(protocol: &str) -> String {
        format!("The protocol '{protocol}' is not supported.")
    }

    /// The requested version is higher than the server's.
    pub fn unsupported_version(protocol: &str, version: u32) -> String {
        format!("The server does not support version {version} of the '{protocol}' protocol.")
    }

    /// The protocol needs a transfer format the transport cannot carry.
    pub fn wrong_transfer_format(protocol: &str, format: &str) -> String {
        format!(
            "Cannot use the '{protocol}' protocol on the current transport. The transport does not support '{format}' transfer format."
        )
    }

    /// The handshake timed out or was too large.
    pub const CANCELED: &str = "Handshake was canceled.";

    /// The handshake request could not be read.
    pub const UNEXPECTED: &str = "An unexpected error occurred during connection handshake.";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_client_requests_decode() {
        for (bytes, protocol) in [
            (&br#"{"protocol":"json","version":1}"#[..], "json"),
            (br#"{"protocol":"messagepack","version":1}"#, "messagepack"),
            (br#"{"version":2,"protocol":"json","extra":[1]}"#, "json"),
        ] {
            let req = HandshakeRequest::parse(bytes).unwrap();
            assert_eq!(req.protocol, protocol);
            let mut out = Vec::new();
            req.write(&mut out);
            assert_eq!(HandshakeRequest::parse(&out[..out.len() - 1]).unwrap(), req);
        }
        let mut out = Vec::new();
        HandshakeRequest {
            protocol: "json".into(),
            version: 1,
        }
        .write(&mut out);
        assert_eq!(out, b"{\"protocol\":\"json\",\"version\":1}\x1e");
    }

    #[test]
    fn responses_round_trip() {
        let mut out = Vec::new();
        HandshakeResponse::default().write(&mut out);
        assert_eq!(out, b"{}\x1e");
        assert_eq!(
            HandshakeResponse::parse(b"{}").unwrap(),
            HandshakeResponse::default()
        );
        let err = HandshakeResponse::error(errors::unsupported_protocol("x\"y"));
        out.clear();
        err.write(&mut out);
        assert_eq!(
            HandshakeResponse::parse(&out[..out.len() - 1]).unwrap(),
            err
        );
    }

    #[test]
    fn bad_handshakes_give_typed_errors() {
        assert_eq!(
            HandshakeRequest::parse(b"\xc3\x28"),
            Err(HandshakeError::InvalidUtf8)
        );
        assert_eq!(
            HandshakeRequest::parse(br#"{"version":1}"#),
            Err(HandshakeError::MissingField("protocol"))
        );
        assert_eq!(
            HandshakeRequest::parse(br#"{"protocol":"json"}"#),
            Err(HandshakeError::MissingField("version"))
        );
        for bad in [
            &br#"{"protocol":1,"version":1}"#[..],
            br#"{"protocol":"json","version":"1"}"#,
            b"nope",
            b"",
        ] {
            assert!(matches!(
                HandshakeRequest::parse(bad),
                Err(HandshakeError::Json(_))
            ));
        }
        assert_eq!(
            HandshakeResponse::parse(br#"{"type":6}"#),
            Err(HandshakeError::NotAHandshake)
        );
    }
}
