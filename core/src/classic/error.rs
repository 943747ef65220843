//! The two error types of the classic codecs: one for request parameters, one for JSON messages.

use serde_json::error::Category;

/// Why the query string, form body or path of a classic request cannot be used.
///
/// The `Display` texts of [`UnknownTransport`](Self::UnknownTransport),
/// [`MissingConnectionToken`](Self::MissingConnectionToken) and
/// [`DuplicateHubNames`](Self::DuplicateHubNames) are exactly the texts the ASP.NET SignalR
/// server puts in its 400 responses, so they can be sent to the client as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The query string, the form body or the `data` field is over its limit. Checked before
    /// the input is parsed (for `data`: as soon as it is decoded).
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// What is too large: `"query string"`, `"form body"` or `"data"`.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A percent-decoded parameter name or value is not valid UTF-8.
    #[error("a query or form parameter is not valid UTF-8 after percent-decoding")]
    InvalidUtf8,
    /// A parameter the protocol defines appears twice in the query string (or twice in the form
    /// body). The real server would join the values with commas; the relay refuses instead.
    #[error("the parameter '{0}' appears more than once")]
    DuplicateParameter(&'static str),
    /// `transport` is missing, empty or not one of the four classic transports.
    #[error("Protocol error: Unknown transport.")]
    UnknownTransport,
    /// `connectionToken` is missing or empty on a request that needs it.
    #[error("Protocol error: Missing connection token.")]
    MissingConnectionToken,
    /// `connectionData` is not a JSON array of `{"name": "<hub>"}` objects.
    #[error("invalid connectionData: {0}")]
    InvalidConnectionData(String),
    /// `connectionData` names more hubs than [`Limits::max_hubs`](super::Limits::max_hubs).
    #[error("connectionData names more than {max} hubs")]
    TooManyHubs {
        /// The configured limit.
        max: usize,
    },
    /// Two hubs in `connectionData` have the same name, compared case-insensitively.
    #[error("Duplicate Hub names found.")]
    DuplicateHubNames,
    /// The last path segment is not one of the classic endpoints. Holds (at most the first 64
    /// characters of) the segment.
    #[error("unknown classic SignalR request '{0}'")]
    UnknownRequestKind(String),
}

/// Why a classic JSON message (negotiate response, persistent response, hub message) cannot be
/// decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The bytes are not UTF-8.
    #[error("message is not valid UTF-8")]
    InvalidUtf8,
    /// The bytes are not one well-formed JSON value (syntax error, truncation, trailing bytes,
    /// nesting deeper than 128 levels, or a number out of range).
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// The message is well-formed JSON but not a JSON object.
    #[error("message is not a JSON object")]
    NotAnObject,
    /// A key holds a value of the wrong JSON type.
    #[error("wrong JSON type: {0}")]
    WrongType(String),
    /// A key appears twice in the same object: the key.
    #[error("duplicate key: {0}")]
    DuplicateKey(String),
    /// A key the message form requires is missing (or `null`).
    #[error("message is missing the required key '{0}'")]
    MissingField(&'static str),
    /// The hub state `S` of a client invocation is over 4096 bytes of JSON.
    #[error("State has exceeded the maximum length of 4096 bytes.")]
    StateTooLarge {
        /// The length of the state's JSON text in bytes.
        len: usize,
    },
    /// The keys are all there but contradict the message form.
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

impl MessageError {
    /// Classifies a `serde_json` error met decoding `json`. A well-formed text that does not
    /// fit the message form is a [`DuplicateKey`](Self::DuplicateKey) when one of its objects
    /// repeats a key (found by reading the text again, on this error path only), else a
    /// [`WrongType`](Self::WrongType).
    pub(crate) fn from_json(err: &serde_json::Error, json: &str) -> Self {
        match err.classify() {
            Category::Data => match super::raw::duplicate_key(json) {
                Some(key) => Self::DuplicateKey(key),
                None => Self::WrongType(err.to_string()),
            },
            Category::Syntax | Category::Eof | Category::Io => Self::InvalidJson(err.to_string()),
        }
    }
}
