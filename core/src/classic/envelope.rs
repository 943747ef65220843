//! The persistent response, the envelope of everything on the receive channel (digest B.6).

use serde::{Deserialize, Serialize};

use super::hub::{HubProgress, HubResult};
use super::raw::{from_text, to_json, Flag, Probe};
use super::{MessageError, RawJson};

/// The keep-alive frame: `{}`. (Long polling instead writes a single space into a held poll.)
pub const KEEP_ALIVE: &[u8] = b"{}";

/// A persistent response: `{"C":"<cursor>","S":1,"T":1,"G":"..","L":<ms>,"M":[..],"E":"..","D":1}`.
///
/// Every message the server sends a connection, apart from keep-alives and top-level hub
/// results, travels in one of these.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersistentResponse {
    /// `C`: the message cursor. Clients echo it as `messageId` on `/poll` and `/reconnect`.
    pub cursor: Option<String>,
    /// `S`: this is the init message that answers `/connect`. Clients honour it only when `M`
    /// is present, which [`encode`](Self::encode) guarantees.
    pub initialized: bool,
    /// `T`: "should reconnect", the host is shutting down.
    pub should_reconnect: bool,
    /// `G`: the new groups token, sent when group membership changed.
    pub groups_token: Option<String>,
    /// `L`: how long a long-polling client waits before its next poll, in milliseconds. The
    /// server writes it only when non-zero; this writes it whenever it is `Some`.
    pub long_poll_delay_ms: Option<u64>,
    /// `M`: the messages, opaque: hub invocations, results, progress, or persistent-connection
    /// payloads. Always written; a missing or `null` `M` decodes as empty.
    pub messages: Vec<RawJson>,
    /// `E`: a global error. The client raises it and stops without `/abort`: fatal.
    pub error: Option<String>,
    /// `D`: the 1.x "disconnect" flag; 2.x clients ignore it.
    pub disconnect: bool,
}

impl PersistentResponse {
    /// The init message `{"C":..,"S":1,"M":[]}` that must answer `/connect` within the
    /// transport connect timeout.
    pub fn init(cursor: impl Into<String>) -> Self {
        Self {
            cursor: Some(cursor.into()),
            initialized: true,
            ..Self::default()
        }
    }

    /// A batch of messages up to `cursor`.
    pub fn messages(cursor: impl Into<String>, messages: Vec<RawJson>) -> Self {
        Self {
            cursor: Some(cursor.into()),
            messages,
            ..Self::default()
        }
    }

    /// A fatal global error `{"M":[],"E":".."}` (for example on `/reconnect` to a connection
    /// the relay no longer holds).
    pub fn global_error(error: impl Into<String>) -> Self {
        Self {
            error: Some(error.into()),
            ..Self::default()
        }
    }

    /// The JSON text, compact: `C` first, then `S`, `T`, `G`, `L`, `E`, `D` when set (flags as
    /// `1`), and `M` always.
    pub fn encode(&self) -> Vec<u8> {
        to_json(&PersistentOut {
            cursor: self.cursor.as_deref(),
            initialized: flag(self.initialized),
            should_reconnect: flag(self.should_reconnect),
            groups_token: self.groups_token.as_deref(),
            long_poll_delay_ms: self.long_poll_delay_ms,
            error: self.error.as_deref(),
            disconnect: flag(self.disconnect),
            messages: &self.messages,
        })
    }

    /// Decodes a persistent response: keys in any order, unknown keys ignored, `{}` all
    /// defaults.
    ///
    /// # Errors
    /// A [`MessageError`]: not UTF-8 or not a JSON object, a key of the wrong type, or
    /// [`Invalid`](MessageError::Invalid) for an object with a top-level `I`, which is a hub
    /// result (use [`ReceiveMessage::decode`] to accept both).
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        match ReceiveMessage::decode(bytes)? {
            ReceiveMessage::KeepAlive => Ok(Self::default()),
            ReceiveMessage::Persistent(response) => Ok(response),
            ReceiveMessage::HubResult(_) | ReceiveMessage::Progress(_) => {
                Err(MessageError::Invalid(
                    "a top-level `I` makes the object a hub result, not a persistent response",
                ))
            }
        }
    }

    fn decode_text(text: &str) -> Result<Self, MessageError> {
        let wire: PersistentIn = from_text(text)?;
        Ok(Self {
            cursor: wire.cursor,
            initialized: is_set(wire.initialized),
            should_reconnect: is_set(wire.should_reconnect),
            groups_token: wire.groups_token,
            long_poll_delay_ms: wire.long_poll_delay_ms,
            messages: wire.messages.unwrap_or_default(),
            error: wire.error,
            disconnect: is_set(wire.disconnect),
        })
    }
}

fn flag(set: bool) -> Option<u8> {
    set.then_some(1)
}

fn is_set(flag: Option<Flag>) -> bool {
    flag.is_some_and(|f| f.0)
}

/// Anything the server may put on a hub connection's receive channel (a WebSocket frame, an
/// SSE `data:` line, a long-poll body, or a `/send` response body).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReceiveMessage {
    /// `{}`.
    KeepAlive,
    /// A persistent response.
    Persistent(PersistentResponse),
    /// A top-level object with an `I`: a hub result, handled at once, cursor untouched.
    HubResult(HubResult),
    /// A top-level object with an `I` and a non-null `P`: a progress report (jQuery checks `P`
    /// first).
    Progress(HubProgress),
}

impl ReceiveMessage {
    /// Decodes one message, telling the forms apart as jQuery does: an empty object is a
    /// keep-alive; a top-level `I` (whatever its value) makes a hub result, or progress when
    /// `P` is non-null; anything else is a persistent response. Leading whitespace (long
    /// polling's keep-alive spaces) is skipped.
    ///
    /// # Errors
    /// A [`MessageError`] from the form's decoder.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        let (probe, text) = Probe::run(bytes)?;
        if probe.members == 0 {
            Ok(Self::KeepAlive)
        } else if probe.has_i && probe.has_p {
            HubProgress::decode_text(text).map(Self::Progress)
        } else if probe.has_i {
            HubResult::decode_text(text).map(Self::HubResult)
        } else {
            PersistentResponse::decode_text(text).map(Self::Persistent)
        }
    }

    /// The JSON text.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::KeepAlive => KEEP_ALIVE.to_vec(),
            Self::Persistent(m) => m.encode(),
            Self::HubResult(m) => m.encode(),
            Self::Progress(m) => m.encode(),
        }
    }
}

#[derive(Serialize)]
struct PersistentOut<'a> {
    #[serde(rename = "C", skip_serializing_if = "Option::is_none")]
    cursor: Option<&'a str>,
    #[serde(rename = "S", skip_serializing_if = "Option::is_none")]
    initialized: Option<u8>,
    #[serde(rename = "T", skip_serializing_if = "Option::is_none")]
    should_reconnect: Option<u8>,
    #[serde(rename = "G", skip_serializing_if = "Option::is_none")]
    groups_token: Option<&'a str>,
    #[serde(rename = "L", skip_serializing_if = "Option::is_none")]
    long_poll_delay_ms: Option<u64>,
    #[serde(rename = "E", skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(rename = "D", skip_serializing_if = "Option::is_none")]
    disconnect: Option<u8>,
    #[serde(rename = "M")]
    messages: &'a [RawJson],
}

#[derive(Deserialize)]
struct PersistentIn {
    #[serde(rename = "C")]
    cursor: Option<String>,
    #[serde(rename = "S")]
    initialized: Option<Flag>,
    #[serde(rename = "T")]
    should_reconnect: Option<Flag>,
    #[serde(rename = "G")]
    groups_token: Option<String>,
    #[serde(rename = "L")]
    long_poll_delay_ms: Option<u64>,
    #[serde(rename = "M")]
    messages: Option<Vec<RawJson>>,
    #[serde(rename = "E")]
    error: Option<String>,
    #[serde(rename = "D")]
    disconnect: Option<Flag>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classic::{ServerHubInvocation, ServerHubMessage};

    /// The init message of every capture.
    const CAPTURED_INIT: &[u8] = br#"{"C": "d-ABC,1|B,0|C,0", "M": [], "S": 1}"#;
    /// classic-jquery-chromium-longPolling.txt: the poll answered with a hub invocation.
    const CAPTURED_LP_MESSAGES: &[u8] = br#"{"C": "d-ABC,3|B,0|C,0", "M": [{"H": "chathub", "M": "addMessage", "A": ["server-push", ["hello", 42]]}]}"#;
    /// classic-jquery-chromium-longPolling.txt: the last poll, ended by abort.
    const CAPTURED_LP_EMPTY: &[u8] = br#"{"C": "d-ABC,4|B,0|C,0", "M": []}"#;
    /// The top-level hub result of the WebSocket captures.
    const CAPTURED_RESULT: &[u8] = br#"{"I": "0", "R": {"echo": ["hello", 42]}}"#;
    /// An SSE event's payload from classic-jquery-chromium-serverSentEvents.txt.
    const CAPTURED_SSE_PAYLOAD: &[u8] = br#"{"C": "d-ABC,2|B,0|C,0", "M": [{"H": "chathub", "M": "addMessage", "A": ["server-push", ["hello", 42]]}]}"#;

    fn raw(text: &str) -> RawJson {
        RawJson::from_string(text.to_owned()).unwrap()
    }

    fn round_trip(message: &ReceiveMessage) {
        assert_eq!(&ReceiveMessage::decode(&message.encode()).unwrap(), message);
    }

    #[test]
    fn decodes_captured_receive_messages() {
        assert_eq!(
            ReceiveMessage::decode(CAPTURED_INIT),
            Ok(ReceiveMessage::Persistent(PersistentResponse::init(
                "d-ABC,1|B,0|C,0"
            )))
        );
        let ReceiveMessage::Persistent(p) = ReceiveMessage::decode(CAPTURED_LP_MESSAGES).unwrap()
        else {
            panic!("not persistent")
        };
        assert_eq!(p.cursor.as_deref(), Some("d-ABC,3|B,0|C,0"));
        assert!(!p.initialized);
        let [message] = p.messages.as_slice() else {
            panic!("{p:?}")
        };
        let ServerHubMessage::Invocation(inv) =
            ServerHubMessage::decode(message.as_str().as_bytes()).unwrap()
        else {
            panic!("not an invocation")
        };
        assert_eq!(inv.method, "addMessage");
        assert_eq!(
            ReceiveMessage::decode(CAPTURED_LP_EMPTY),
            Ok(ReceiveMessage::Persistent(PersistentResponse::messages(
                "d-ABC,4|B,0|C,0",
                vec![]
            )))
        );
        assert!(
            matches!(ReceiveMessage::decode(CAPTURED_RESULT), Ok(ReceiveMessage::HubResult(r)) if r.id == "0")
        );
        assert!(matches!(
            ReceiveMessage::decode(CAPTURED_SSE_PAYLOAD),
            Ok(ReceiveMessage::Persistent(_))
        ));
        assert_eq!(
            ReceiveMessage::decode(KEEP_ALIVE),
            Ok(ReceiveMessage::KeepAlive)
        );
        assert_eq!(
            ReceiveMessage::decode(b"   {}"),
            Ok(ReceiveMessage::KeepAlive)
        );
    }

    #[test]
    fn encodes_like_the_server() {
        assert_eq!(
            PersistentResponse::init("c").encode(),
            br#"{"C":"c","S":1,"M":[]}"#.to_vec()
        );
        assert_eq!(
            PersistentResponse::global_error("gone").encode(),
            br#"{"E":"gone","M":[]}"#.to_vec()
        );
        let full = PersistentResponse {
            cursor: Some("c".to_owned()),
            initialized: true,
            should_reconnect: true,
            groups_token: Some("g".to_owned()),
            long_poll_delay_ms: Some(250),
            messages: vec![raw("1"), raw(r#"{"H":"h","M":"m","A":[]}"#)],
            error: Some("e".to_owned()),
            disconnect: true,
        };
        assert_eq!(
            std::str::from_utf8(&full.encode()).unwrap(),
            r#"{"C":"c","S":1,"T":1,"G":"g","L":250,"E":"e","D":1,"M":[1,{"H":"h","M":"m","A":[]}]}"#
        );
        round_trip(&ReceiveMessage::Persistent(full));
    }

    #[test]
    fn receive_messages_round_trip() {
        let push = ServerHubMessage::Invocation(ServerHubInvocation {
            hub: "chathub".to_owned(),
            method: "addMessage".to_owned(),
            args: vec![raw("\"x\"")],
            state: None,
        });
        for message in [
            ReceiveMessage::KeepAlive,
            ReceiveMessage::Persistent(PersistentResponse::default()),
            ReceiveMessage::Persistent(PersistentResponse::init("d-1")),
            ReceiveMessage::Persistent(PersistentResponse::messages("d-2", vec![push.to_raw()])),
            ReceiveMessage::Persistent(PersistentResponse::global_error("Connection lost")),
            ReceiveMessage::Persistent(PersistentResponse {
                should_reconnect: true,
                ..Default::default()
            }),
            ReceiveMessage::HubResult(HubResult::success("3", None)),
            ReceiveMessage::Progress(HubProgress {
                id: "4".to_owned(),
                data: raw("0.5"),
                state: None,
            }),
        ] {
            round_trip(&message);
        }
    }

    #[test]
    fn lenient_decoding() {
        let p = PersistentResponse::decode(
            br#"{"M":null,"S":true,"T":0,"D":2,"L":0,"X":[1],"C":null}"#,
        )
        .unwrap();
        assert_eq!(
            p,
            PersistentResponse {
                initialized: true,
                disconnect: true,
                long_poll_delay_ms: Some(0),
                ..Default::default()
            }
        );
        assert_eq!(
            PersistentResponse::decode(b"{}"),
            Ok(PersistentResponse::default())
        );
        // A top-level `I`, even null, makes a hub result (jQuery: `typeof I !== "undefined"`).
        assert_eq!(
            ReceiveMessage::decode(br#"{"I":null,"C":"c","M":[]}"#),
            Err(MessageError::MissingField("I"))
        );
    }

    #[test]
    fn bad_receive_messages() {
        assert!(matches!(
            ReceiveMessage::decode(br#"{"C":1,"M":[]}"#),
            Err(MessageError::WrongType(_))
        ));
        assert!(matches!(
            ReceiveMessage::decode(br#"{"M":{}}"#),
            Err(MessageError::WrongType(_))
        ));
        assert!(matches!(
            ReceiveMessage::decode(br#"{"L":-1}"#),
            Err(MessageError::WrongType(_))
        ));
        assert!(matches!(
            ReceiveMessage::decode(br#"{"S":"1"}"#),
            Err(MessageError::WrongType(_))
        ));
        assert!(matches!(
            ReceiveMessage::decode(br#"{"M":[]}{}"#),
            Err(MessageError::InvalidJson(_))
        ));
        assert!(matches!(
            ReceiveMessage::decode(br#"{"M":[],"M":[]}"#),
            Err(MessageError::DuplicateKey(_))
        ));
        assert!(matches!(
            ReceiveMessage::decode(b" "),
            Err(MessageError::InvalidJson(_))
        ));
        assert_eq!(
            ReceiveMessage::decode(b"data: {}"),
            Err(MessageError::NotAnObject)
        );
        assert_eq!(
            ReceiveMessage::decode(b"{\"C\":\"\x80\"}"),
            Err(MessageError::InvalidUtf8)
        );
        // Opaque values are skipped without recursion: deep nesting is no danger.
        let deep = format!("{}{}", "{\"M\":[".repeat(100_000), "]}".repeat(100_000));
        assert!(matches!(
            ReceiveMessage::decode(deep.as_bytes()),
            Ok(ReceiveMessage::Persistent(p)) if p.messages.len() == 1
        ));
        assert!(matches!(
            PersistentResponse::decode(CAPTURED_RESULT),
            Err(MessageError::Invalid(_))
        ));
    }
}
