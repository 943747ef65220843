//! Hub messages (digest B.7): client invocations, server invocations, results and progress.

use serde::{Deserialize, Serialize};

use super::raw::{decode_object, from_text, present, to_json, IdText, Probe};
use super::{MessageError, RawJson};

/// The most JSON a client may send as hub state `S`, in bytes.
pub const MAX_STATE_LEN: usize = 4096;

/// A client-to-server hub invocation: `{"H":"chathub","M":"Send","A":[...],"I":0,"S":{...}}`.
///
/// It arrives as a WebSocket text frame or as the `data` field of `/send`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHubInvocation {
    /// `H`: the hub name (jQuery lowercases it; the server matches case-insensitively).
    pub hub: String,
    /// `M`: the method name.
    pub method: String,
    /// `A`: the arguments, opaque. A missing or `null` `A` is no arguments.
    pub args: Vec<RawJson>,
    /// `I`: the callback id. jQuery sends a number, other clients a string; the server treats
    /// it as a string, so a number is kept as its decimal text (`0` → `"0"`). Encoded as a
    /// JSON string.
    pub id: Option<String>,
    /// `S`: the caller's hub state, a JSON object of at most [`MAX_STATE_LEN`] bytes.
    pub state: Option<RawJson>,
}

impl ClientHubInvocation {
    /// Decodes one invocation.
    ///
    /// # Errors
    /// A [`MessageError`]: not UTF-8 or not a JSON object, `H` or `M` missing, a key of the
    /// wrong type, or a state `S` over [`MAX_STATE_LEN`] bytes
    /// ([`StateTooLarge`](MessageError::StateTooLarge)) or not an object.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        decode_object::<ClientInvocationIn>(bytes)?.validate()
    }

    /// The JSON text, compact: `H`, `M`, `A` (always), then `I` (as a string) and `S` when set.
    pub fn encode(&self) -> Vec<u8> {
        to_json(&ClientInvocationOut {
            hub: &self.hub,
            method: &self.method,
            args: &self.args,
            id: self.id.as_deref(),
            state: self.state.as_ref(),
        })
    }
}

/// Anything a client may send on a WebSocket (or in `data`) to a hub connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientMessage {
    /// `{}`: some clients (Python `signalr-async`) send an empty object right after start.
    /// The server ignores it.
    KeepAlive,
    /// A hub invocation.
    Invocation(ClientHubInvocation),
}

impl ClientMessage {
    /// Decodes a client message: an empty object is [`KeepAlive`](Self::KeepAlive), anything
    /// else must be an invocation.
    ///
    /// # Errors
    /// As [`ClientHubInvocation::decode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        let (probe, text) = Probe::run(bytes)?;
        if probe.members == 0 {
            return Ok(Self::KeepAlive);
        }
        from_text::<ClientInvocationIn>(text)?
            .validate()
            .map(Self::Invocation)
    }

    /// The JSON text.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::KeepAlive => b"{}".to_vec(),
            Self::Invocation(invocation) => invocation.encode(),
        }
    }
}

/// A server-to-client hub invocation, carried inside `M`: `{"H":..,"M":..,"A":[...],"S":{..}?}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHubInvocation {
    /// `H`: the hub name.
    pub hub: String,
    /// `M`: the client method name.
    pub method: String,
    /// `A`: the arguments, opaque. Always written.
    pub args: Vec<RawJson>,
    /// `S`: hub state to merge into the client proxy's state.
    pub state: Option<RawJson>,
}

impl ServerHubInvocation {
    /// Decodes one invocation.
    ///
    /// # Errors
    /// A [`MessageError`]: not UTF-8 or not a JSON object, `H` or `M` missing, or a key of the
    /// wrong type.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        decode_object::<ServerInvocationIn>(bytes)?.validate()
    }

    /// The JSON text, compact.
    pub fn encode(&self) -> Vec<u8> {
        to_json(&self.wire())
    }

    fn wire(&self) -> ServerInvocationOut<'_> {
        ServerInvocationOut {
            hub: &self.hub,
            method: &self.method,
            args: &self.args,
            state: self.state.as_ref(),
        }
    }
}

/// The result of a client invocation (`HubResponse`):
/// `{"I":"0","R":..?,"S":..?,"E":"..."?,"H":true?,"D":..?,"T":"..."?}`.
///
/// Travels top-level on the receive channel or inside `M`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubResult {
    /// `I`: the invocation id, written as a string (a number on input becomes its text).
    pub id: String,
    /// `R`: the result; omitted when `None` (a JSON `null` result decodes as `None`).
    pub result: Option<RawJson>,
    /// `S`: the caller's changed hub state.
    pub state: Option<RawJson>,
    /// `E`: the error message.
    pub error: Option<String>,
    /// `H`: whether the error is a `HubException`. Written (as `true`) only when set.
    pub is_hub_exception: bool,
    /// `D`: a `HubException`'s error data.
    pub error_data: Option<RawJson>,
    /// `T`: the stack trace (detailed errors only).
    pub stack_trace: Option<String>,
}

impl HubResult {
    /// A successful result.
    pub fn success(id: impl Into<String>, result: Option<RawJson>) -> Self {
        Self {
            id: id.into(),
            result,
            ..Self::default()
        }
    }

    /// A failed invocation.
    pub fn failure(id: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            error: Some(error.into()),
            ..Self::default()
        }
    }

    /// Decodes one result. Does not check whether the object is really a progress message;
    /// [`ServerHubMessage::decode`] and [`ReceiveMessage::decode`](super::ReceiveMessage::decode)
    /// do.
    ///
    /// # Errors
    /// A [`MessageError`]: not UTF-8 or not a JSON object, `I` missing or `null`, or a key of
    /// the wrong type.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        decode_object::<HubResultIn>(bytes)?.validate()
    }

    pub(crate) fn decode_text(text: &str) -> Result<Self, MessageError> {
        from_text::<HubResultIn>(text)?.validate()
    }

    /// The JSON text, compact, `I` first.
    pub fn encode(&self) -> Vec<u8> {
        to_json(&self.wire())
    }

    fn wire(&self) -> HubResultOut<'_> {
        HubResultOut {
            id: &self.id,
            result: self.result.as_ref(),
            state: self.state.as_ref(),
            error: self.error.as_deref(),
            is_hub_exception: self.is_hub_exception.then_some(true),
            error_data: self.error_data.as_ref(),
            stack_trace: self.stack_trace.as_deref(),
        }
    }
}

/// A progress report of a streaming (`IProgress<T>`) hub method:
/// `{"I":"P|0","P":{"I":"0","D":<value>},"S":..?}`. The `P|` prefix makes old clients ignore
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubProgress {
    /// The invocation id: `P.I`. The outer `I` is always `P|` + this id.
    pub id: String,
    /// `P.D`: the reported value (a missing `D` decodes as `null`).
    pub data: RawJson,
    /// `S`: the caller's changed hub state.
    pub state: Option<RawJson>,
}

impl HubProgress {
    /// Decodes one progress message. The id is taken from `P.I`; the outer `I` must be
    /// present but is not compared.
    ///
    /// # Errors
    /// A [`MessageError`]: not UTF-8 or not a JSON object, `I`, `P` or `P.I` missing, or a key
    /// of the wrong type.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        decode_object::<ProgressIn>(bytes)?.validate()
    }

    pub(crate) fn decode_text(text: &str) -> Result<Self, MessageError> {
        from_text::<ProgressIn>(text)?.validate()
    }

    /// The JSON text, compact.
    pub fn encode(&self) -> Vec<u8> {
        to_json(&self.wire())
    }

    fn wire(&self) -> ProgressOut<'_> {
        ProgressOut {
            id: format!("P|{}", self.id),
            progress: ProgressBodyOut {
                id: &self.id,
                data: &self.data,
            },
            state: self.state.as_ref(),
        }
    }
}

/// One message of a hub connection's persistent-response `M`, told apart as jQuery does:
/// `P` (non-null) means progress, else `I` a result, else an invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerHubMessage {
    /// A client method call.
    Invocation(ServerHubInvocation),
    /// The result of a client invocation.
    Result(HubResult),
    /// A progress report.
    Progress(HubProgress),
}

impl ServerHubMessage {
    /// Decodes one message.
    ///
    /// # Errors
    /// As the decoder of the form found.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        let (probe, text) = Probe::run(bytes)?;
        if probe.has_p {
            HubProgress::decode_text(text).map(Self::Progress)
        } else if probe.has_i {
            HubResult::decode_text(text).map(Self::Result)
        } else {
            from_text::<ServerInvocationIn>(text)?
                .validate()
                .map(Self::Invocation)
        }
    }

    /// The JSON text.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Invocation(m) => m.encode(),
            Self::Result(m) => m.encode(),
            Self::Progress(m) => m.encode(),
        }
    }

    /// The message as a [`RawJson`], ready for a persistent response's `M`.
    pub fn to_raw(&self) -> RawJson {
        match self {
            Self::Invocation(m) => raw(&m.wire()),
            Self::Result(m) => raw(&m.wire()),
            Self::Progress(m) => raw(&m.wire()),
        }
    }
}

/// Serializes one of this module's wire structs, which cannot fail.
fn raw<T: Serialize>(wire: &T) -> RawJson {
    RawJson::from_serialize(wire).unwrap_or_else(|_| RawJson::null())
}

fn required<T>(value: Option<T>, key: &'static str) -> Result<T, MessageError> {
    value.ok_or(MessageError::MissingField(key))
}

#[derive(Deserialize)]
struct ClientInvocationIn {
    #[serde(rename = "H")]
    hub: Option<String>,
    #[serde(rename = "M")]
    method: Option<String>,
    #[serde(rename = "A")]
    args: Option<Vec<RawJson>>,
    #[serde(rename = "I")]
    id: Option<IdText>,
    #[serde(rename = "S")]
    state: Option<RawJson>,
}

impl ClientInvocationIn {
    fn validate(self) -> Result<ClientHubInvocation, MessageError> {
        if let Some(state) = &self.state {
            let len = state.as_str().len();
            if len > MAX_STATE_LEN {
                return Err(MessageError::StateTooLarge { len });
            }
            if !state.is_object() {
                return Err(MessageError::WrongType(
                    "`S` must be a JSON object".to_owned(),
                ));
            }
        }
        Ok(ClientHubInvocation {
            hub: required(self.hub, "H")?,
            method: required(self.method, "M")?,
            args: self.args.unwrap_or_default(),
            id: self.id.map(|id| id.0),
            state: self.state,
        })
    }
}

#[derive(Serialize)]
struct ClientInvocationOut<'a> {
    #[serde(rename = "H")]
    hub: &'a str,
    #[serde(rename = "M")]
    method: &'a str,
    #[serde(rename = "A")]
    args: &'a [RawJson],
    #[serde(rename = "I", skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "S", skip_serializing_if = "Option::is_none")]
    state: Option<&'a RawJson>,
}

#[derive(Deserialize)]
struct ServerInvocationIn {
    #[serde(rename = "H")]
    hub: Option<String>,
    #[serde(rename = "M")]
    method: Option<String>,
    #[serde(rename = "A")]
    args: Option<Vec<RawJson>>,
    #[serde(rename = "S")]
    state: Option<RawJson>,
}

impl ServerInvocationIn {
    fn validate(self) -> Result<ServerHubInvocation, MessageError> {
        Ok(ServerHubInvocation {
            hub: required(self.hub, "H")?,
            method: required(self.method, "M")?,
            args: self.args.unwrap_or_default(),
            state: self.state,
        })
    }
}

#[derive(Serialize)]
struct ServerInvocationOut<'a> {
    #[serde(rename = "H")]
    hub: &'a str,
    #[serde(rename = "M")]
    method: &'a str,
    #[serde(rename = "A")]
    args: &'a [RawJson],
    #[serde(rename = "S", skip_serializing_if = "Option::is_none")]
    state: Option<&'a RawJson>,
}

#[derive(Deserialize)]
struct HubResultIn {
    #[serde(rename = "I")]
    id: Option<IdText>,
    #[serde(rename = "R")]
    result: Option<RawJson>,
    #[serde(rename = "S")]
    state: Option<RawJson>,
    #[serde(rename = "E")]
    error: Option<String>,
    #[serde(rename = "H")]
    is_hub_exception: Option<bool>,
    #[serde(rename = "D")]
    error_data: Option<RawJson>,
    #[serde(rename = "T")]
    stack_trace: Option<String>,
}

impl HubResultIn {
    fn validate(self) -> Result<HubResult, MessageError> {
        Ok(HubResult {
            id: required(self.id, "I")?.0,
            result: self.result,
            state: self.state,
            error: self.error,
            is_hub_exception: self.is_hub_exception.unwrap_or(false),
            error_data: self.error_data,
            stack_trace: self.stack_trace,
        })
    }
}

#[derive(Serialize)]
struct HubResultOut<'a> {
    #[serde(rename = "I")]
    id: &'a str,
    #[serde(rename = "R", skip_serializing_if = "Option::is_none")]
    result: Option<&'a RawJson>,
    #[serde(rename = "S", skip_serializing_if = "Option::is_none")]
    state: Option<&'a RawJson>,
    #[serde(rename = "E", skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(rename = "H", skip_serializing_if = "Option::is_none")]
    is_hub_exception: Option<bool>,
    #[serde(rename = "D", skip_serializing_if = "Option::is_none")]
    error_data: Option<&'a RawJson>,
    #[serde(rename = "T", skip_serializing_if = "Option::is_none")]
    stack_trace: Option<&'a str>,
}

#[derive(Deserialize)]
struct ProgressIn {
    #[serde(rename = "I")]
    id: Option<IdText>,
    #[serde(rename = "P")]
    progress: Option<ProgressBodyIn>,
    #[serde(rename = "S")]
    state: Option<RawJson>,
}

#[derive(Deserialize)]
struct ProgressBodyIn {
    #[serde(rename = "I")]
    id: Option<IdText>,
    #[serde(rename = "D", default, deserialize_with = "present")]
    data: Option<RawJson>,
}

impl ProgressIn {
    fn validate(self) -> Result<HubProgress, MessageError> {
        required(self.id, "I")?;
        let body = required(self.progress, "P")?;
        Ok(HubProgress {
            id: required(body.id, "P.I")?.0,
            data: body.data.unwrap_or_else(RawJson::null),
            state: self.state,
        })
    }
}

#[derive(Serialize)]
struct ProgressOut<'a> {
    #[serde(rename = "I")]
    id: String,
    #[serde(rename = "P")]
    progress: ProgressBodyOut<'a>,
    #[serde(rename = "S", skip_serializing_if = "Option::is_none")]
    state: Option<&'a RawJson>,
}

#[derive(Serialize)]
struct ProgressBodyOut<'a> {
    #[serde(rename = "I")]
    id: &'a str,
    #[serde(rename = "D")]
    data: &'a RawJson,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// classic-jquery-chromium-webSockets-redirect.txt: jQuery's WebSocket frame (49 bytes).
    const JQUERY_INVOKE: &[u8] = br#"{"H":"chathub","M":"Send","A":["hello",42],"I":0}"#;
    /// classic-py-signalr-client-threads-webSockets.txt: `signalr-client` (57 bytes).
    const PY_INVOKE: &[u8] = br#"{"H": "chatHub", "M": "Send", "A": ["hello", 42], "I": 0}"#;
    /// classic-py-signalr-async-webSockets.txt: `signalr-async` sends `I` as a string...
    const PY_ASYNC_INVOKE: &[u8] =
        br#"{"H": "chatHub", "M": "Send", "A": ["hello", 42], "I": "0"}"#;
    /// ...and an empty object first.
    const PY_ASYNC_EMPTY: &[u8] = b"{}";
    /// The hub result every capture's server sent.
    const CAPTURED_RESULT: &[u8] = br#"{"I": "0", "R": {"echo": ["hello", 42]}}"#;
    /// The server invocation inside `M` in the captures.
    const CAPTURED_PUSH: &[u8] =
        br#"{"H": "chathub", "M": "addMessage", "A": ["server-push", ["hello", 42]]}"#;

    fn raw(text: &str) -> RawJson {
        RawJson::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn decodes_captured_client_invocations() {
        let jq = ClientHubInvocation::decode(JQUERY_INVOKE).unwrap();
        assert_eq!(jq.hub, "chathub");
        assert_eq!(jq.method, "Send");
        assert_eq!(jq.args, [raw("\"hello\""), raw("42")]);
        assert_eq!(jq.id.as_deref(), Some("0"));
        assert_eq!(jq.state, None);
        let py = ClientHubInvocation::decode(PY_INVOKE).unwrap();
        assert_eq!(py.hub, "chatHub");
        assert_eq!(py.id.as_deref(), Some("0"));
        let py_async = ClientHubInvocation::decode(PY_ASYNC_INVOKE).unwrap();
        assert_eq!(py_async, py);
        assert_eq!(
            ClientMessage::decode(PY_ASYNC_EMPTY),
            Ok(ClientMessage::KeepAlive)
        );
        assert_eq!(
            ClientMessage::decode(JQUERY_INVOKE),
            Ok(ClientMessage::Invocation(jq.clone()))
        );
        assert_eq!(
            jq.encode(),
            br#"{"H":"chathub","M":"Send","A":["hello",42],"I":"0"}"#.to_vec()
        );
    }

    #[test]
    fn client_invocation_round_trips() {
        let full = ClientHubInvocation {
            hub: "chathub".to_owned(),
            method: "Send".to_owned(),
            args: vec![raw("null"), raw(r#"{"a":[1,2.5e3]}"#)],
            id: Some("17".to_owned()),
            state: Some(raw(r#"{"name":"bob"}"#)),
        };
        let bare = ClientHubInvocation {
            hub: "h".to_owned(),
            method: "m".to_owned(),
            args: vec![],
            id: None,
            state: None,
        };
        for inv in [full, bare] {
            assert_eq!(ClientHubInvocation::decode(&inv.encode()).unwrap(), inv);
            let msg = ClientMessage::Invocation(inv);
            assert_eq!(ClientMessage::decode(&msg.encode()).unwrap(), msg);
        }
        assert_eq!(
            ClientMessage::decode(&ClientMessage::KeepAlive.encode()),
            Ok(ClientMessage::KeepAlive)
        );
    }

    #[test]
    fn client_invocation_leniencies() {
        let inv =
            ClientHubInvocation::decode(br#"{"H":"h","M":"m","A":null,"I":-3,"S":null,"x":1}"#)
                .unwrap();
        assert_eq!(
            (inv.args.len(), inv.id.as_deref(), inv.state),
            (0, Some("-3"), None)
        );
        let inv = ClientHubInvocation::decode(br#"{"M":"m","H":"h","I":1e2}"#).unwrap();
        assert_eq!(inv.id.as_deref(), Some("100"));
        let state = format!(r#"{{"k":"{}"}}"#, "x".repeat(MAX_STATE_LEN - 8));
        assert_eq!(state.len(), MAX_STATE_LEN);
        let body = format!(r#"{{"H":"h","M":"m","S":{state}}}"#);
        assert!(ClientHubInvocation::decode(body.as_bytes()).is_ok());
    }

    #[test]
    fn server_messages_round_trip() {
        let push = ServerHubMessage::decode(CAPTURED_PUSH).unwrap();
        let ServerHubMessage::Invocation(inv) = &push else {
            panic!("{push:?}")
        };
        assert_eq!(
            (inv.hub.as_str(), inv.method.as_str(), inv.args.len()),
            ("chathub", "addMessage", 2)
        );
        let result = ServerHubMessage::decode(CAPTURED_RESULT).unwrap();
        assert_eq!(
            result,
            ServerHubMessage::Result(HubResult::success(
                "0",
                Some(raw(r#"{"echo": ["hello", 42]}"#))
            ))
        );
        let messages = [
            push,
            result,
            ServerHubMessage::Invocation(ServerHubInvocation {
                hub: "ChatHub".to_owned(),
                method: "m".to_owned(),
                args: vec![],
                state: Some(raw(r#"{"a":1}"#)),
            }),
            ServerHubMessage::Result(HubResult {
                id: "5".to_owned(),
                result: None,
                state: Some(raw("{}")),
                error: Some("There was an error invoking Hub method 'chathub.Send'.".to_owned()),
                is_hub_exception: true,
                error_data: Some(raw("[1]")),
                stack_trace: Some("at X".to_owned()),
            }),
            ServerHubMessage::Result(HubResult::failure("6", "boom")),
            ServerHubMessage::Progress(HubProgress {
                id: "0".to_owned(),
                data: raw("50"),
                state: None,
            }),
            ServerHubMessage::Progress(HubProgress {
                id: "9".to_owned(),
                data: RawJson::null(),
                state: Some(raw(r#"{"s":true}"#)),
            }),
        ];
        for m in messages {
            assert_eq!(ServerHubMessage::decode(&m.encode()).unwrap(), m);
            assert_eq!(m.to_raw().as_str().as_bytes(), m.encode());
        }
    }

    #[test]
    fn result_and_progress_wire_forms() {
        let r = HubResult::success("0", Some(raw(r#"{"echo":["hello",42]}"#)));
        assert_eq!(
            r.encode(),
            br#"{"I":"0","R":{"echo":["hello",42]}}"#.to_vec()
        );
        assert_eq!(
            HubResult::decode(br#"{"I":0,"R":null,"H":false}"#),
            Ok(HubResult::success("0", None))
        );
        let p = HubProgress {
            id: "0".to_owned(),
            data: raw("[1]"),
            state: None,
        };
        assert_eq!(p.encode(), br#"{"I":"P|0","P":{"I":"0","D":[1]}}"#.to_vec());
        assert_eq!(
            HubProgress::decode(br#"{"I":"P|0","P":{"I":0}}"#)
                .unwrap()
                .data,
            RawJson::null()
        );
        // `P: null` is not progress (jQuery tests `if (data.P)`).
        assert!(matches!(
            ServerHubMessage::decode(br#"{"I":"1","P":null}"#),
            Ok(ServerHubMessage::Result(_))
        ));
    }

    #[test]
    fn bad_hub_messages() {
        assert_eq!(
            ClientHubInvocation::decode(br#"{"M":"Send","A":[]}"#),
            Err(MessageError::MissingField("H"))
        );
        assert_eq!(
            ClientMessage::decode(br#"{"x":1}"#),
            Err(MessageError::MissingField("H"))
        );
        assert!(matches!(
            ClientHubInvocation::decode(br#"{"H":1,"M":"Send"}"#),
            Err(MessageError::WrongType(_))
        ));
        assert!(matches!(
            ClientHubInvocation::decode(br#"{"H":"h","M":"m","A":{}}"#),
            Err(MessageError::WrongType(_))
        ));
        assert!(matches!(
            ClientHubInvocation::decode(br#"{"H":"h","M":"m","I":true}"#),
            Err(MessageError::WrongType(_))
        ));
        assert!(matches!(
            ClientHubInvocation::decode(br#"{"H":"h","H":"h","M":"m"}"#),
            Err(MessageError::DuplicateKey(_))
        ));
        assert!(matches!(
            ClientHubInvocation::decode(br#"{"H":"h","M":"m","A":[1,]}"#),
            Err(MessageError::InvalidJson(_))
        ));
        assert_eq!(
            ClientHubInvocation::decode(b"[\"H\"]"),
            Err(MessageError::NotAnObject)
        );
        assert_eq!(
            ClientHubInvocation::decode(b"{\"H\":\"\xc3\"}"),
            Err(MessageError::InvalidUtf8)
        );
        assert!(matches!(
            ClientMessage::decode(b""),
            Err(MessageError::InvalidJson(_))
        ));
        assert_eq!(
            HubResult::decode(br#"{"R":1}"#),
            Err(MessageError::MissingField("I"))
        );
        assert_eq!(
            HubResult::decode(br#"{"I":null}"#),
            Err(MessageError::MissingField("I"))
        );
        assert_eq!(
            HubProgress::decode(br#"{"I":"P|0","P":{"D":1}}"#),
            Err(MessageError::MissingField("P.I"))
        );
    }

    #[test]
    fn oversized_and_mistyped_state() {
        let state = format!(r#"{{"k":"{}"}}"#, "x".repeat(MAX_STATE_LEN));
        let body = format!(r#"{{"H":"h","M":"m","S":{state}}}"#);
        let err = ClientHubInvocation::decode(body.as_bytes()).unwrap_err();
        assert_eq!(
            err,
            MessageError::StateTooLarge {
                len: MAX_STATE_LEN + 8
            }
        );
        assert_eq!(
            err.to_string(),
            "State has exceeded the maximum length of 4096 bytes."
        );
        assert!(matches!(
            ClientHubInvocation::decode(br#"{"H":"h","M":"m","S":[1]}"#),
            Err(MessageError::WrongType(_))
        ));
    }
}
