//! The negotiate response (digest B.3) and protocol-version resolution (B.4).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::raw::{decode_object, to_json};
use super::MessageError;

/// A classic protocol version, `major.minor`.
///
/// The server answers the client's `clientProtocol` clamped to [`MIN`](Self::MIN) ..=
/// [`MAX`](Self::MAX); see [`resolve`](Self::resolve).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    /// The major version.
    pub major: u32,
    /// The minor version.
    pub minor: u32,
}

impl ProtocolVersion {
    /// 1.2, the oldest version the server speaks and the answer to an unparseable
    /// `clientProtocol`.
    pub const MIN: Self = Self::new(1, 2);
    /// 1.4: delayed start. `/connect` only sends the init message; `/start` runs OnConnected.
    pub const V1_4: Self = Self::new(1, 4);
    /// 1.5: long polling uses POST, with `messageId` and `groupsToken` in the form body.
    pub const V1_5: Self = Self::new(1, 5);
    /// 2.0, the newest version the server speaks: negotiate redirects and errors.
    pub const MAX: Self = Self::new(2, 0);

    /// The version `major.minor`.
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    /// Parses a version as .NET's `Version.TryParse` does for the inputs clients send: two to
    /// four dot-separated decimal components, each at most `i32::MAX`. Only `major.minor` is
    /// kept: a build or revision component never changes the clamped result.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split('.');
        let major = parse_component(parts.next()?)?;
        let minor = parse_component(parts.next()?)?;
        let mut extra = 0usize;
        for part in parts {
            parse_component(part)?;
            extra += 1;
        }
        (extra <= 2).then_some(Self::new(major, minor))
    }

    /// The version the server answers to a client's `clientProtocol`: the client's version
    /// clamped to [`MIN`](Self::MIN) ..= [`MAX`](Self::MAX), or [`MIN`](Self::MIN) when it is
    /// missing or does not parse.
    ///
    /// A jQuery 2.4.1+ client asks for **2.1**; like the current ASP.NET SignalR server this
    /// answers **2.0**, which every 2.x client accepts (jQuery wants `"1.5"`, `"2.0"` or
    /// `"2.1"`; the .NET client anything in 1.4 ..= 2.1). 2.1 changed nothing on the server.
    pub fn resolve(client_protocol: Option<&str>) -> Self {
        client_protocol
            .and_then(Self::parse)
            .map_or(Self::MIN, |v| v.clamp(Self::MIN, Self::MAX))
    }

    /// Whether the client must call `/start` after `/connect` (1.4 and later).
    pub fn has_delayed_start(self) -> bool {
        self >= Self::V1_4
    }

    /// Whether long polling uses POST with a form body (1.5 and later).
    pub fn long_polling_uses_post(self) -> bool {
        self >= Self::V1_5
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

fn parse_component(part: &str) -> Option<u32> {
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse::<u32>().ok().filter(|&v| v <= i32::MAX as u32)
}

/// The normal negotiate response: how to reach the connection just created.
///
/// Times are in seconds. Non-finite times cannot be written as JSON (they come out as `null`);
/// do not use them.
#[derive(Debug, Clone, PartialEq)]
pub struct NegotiateResponse {
    /// `Url`: the endpoint path without `/negotiate` (e.g. `/aspnetclient`). jQuery builds
    /// every later URL as scheme://host + `Url`.
    pub url: String,
    /// `ConnectionToken`: the protected token the client sends back as `connectionToken`.
    pub connection_token: String,
    /// `ConnectionId`.
    pub connection_id: String,
    /// `KeepAliveTimeout`: twice the keep-alive interval (20 by default), or `None` (written
    /// as `null`) when keep-alive is disabled, which turns client keep-alive monitoring off.
    pub keep_alive_timeout: Option<f64>,
    /// `DisconnectTimeout` (30 by default).
    pub disconnect_timeout: f64,
    /// `ConnectionTimeout`: how long a long poll is held (110 by default).
    pub connection_timeout: f64,
    /// `TryWebSockets`: whether the WebSockets transport is available.
    pub try_web_sockets: bool,
    /// `ProtocolVersion`, a string: see [`ProtocolVersion::resolve`].
    pub protocol_version: String,
    /// `TransportConnectTimeout`: how long the client waits for the init message (5 by
    /// default).
    pub transport_connect_timeout: f64,
    /// `LongPollDelay` (0 by default).
    pub long_poll_delay: f64,
    /// `WebSocketServerUrl`: an other base for WebSocket URLs (jQuery only). Written only when
    /// set.
    pub web_socket_server_url: Option<String>,
}

impl NegotiateResponse {
    /// A response with the ASP.NET SignalR defaults: keep-alive timeout 20 s, disconnect
    /// timeout 30 s, connection timeout 110 s, WebSockets on, transport connect timeout 5 s,
    /// long-poll delay 0.
    pub fn with_defaults(
        url: impl Into<String>,
        connection_token: impl Into<String>,
        connection_id: impl Into<String>,
        protocol_version: ProtocolVersion,
    ) -> Self {
        Self {
            url: url.into(),
            connection_token: connection_token.into(),
            connection_id: connection_id.into(),
            keep_alive_timeout: Some(20.0),
            disconnect_timeout: 30.0,
            connection_timeout: 110.0,
            try_web_sockets: true,
            protocol_version: protocol_version.to_string(),
            transport_connect_timeout: 5.0,
            long_poll_delay: 0.0,
            web_socket_server_url: None,
        }
    }
}

/// The redirect form, `{"ProtocolVersion":"2.0","RedirectUrl":..,"AccessToken":..}`: the client
/// negotiates again at `RedirectUrl`, presenting `AccessToken`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectResponse {
    /// `ProtocolVersion`: clients honour a redirect only for `"2.0"` and `"2.1"`.
    pub protocol_version: String,
    /// `RedirectUrl`. Its query replaces the user query string on the client's later requests.
    pub redirect_url: String,
    /// `AccessToken`: sent as `Authorization: Bearer` (and `access_token` on SSE and
    /// WebSockets). Written only when set.
    pub access_token: Option<String>,
    /// `TryWebSockets`. Written only when set.
    pub try_web_sockets: Option<bool>,
}

impl RedirectResponse {
    /// A protocol-2.0 redirect.
    pub fn new(redirect_url: impl Into<String>, access_token: impl Into<String>) -> Self {
        Self {
            protocol_version: ProtocolVersion::MAX.to_string(),
            redirect_url: redirect_url.into(),
            access_token: Some(access_token.into()),
            try_web_sockets: None,
        }
    }
}

/// The error form, `{"ProtocolVersion":"2.0","Error":"..."}`: the client fails to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    /// `ProtocolVersion`: clients read `Error` only for `"2.0"` and `"2.1"`.
    pub protocol_version: String,
    /// `Error`: the message the client reports.
    pub error: String,
}

impl ErrorResponse {
    /// A protocol-2.0 error.
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            protocol_version: ProtocolVersion::MAX.to_string(),
            error: error.into(),
        }
    }
}

/// A negotiate response body, any of the three forms.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum NegotiateReply {
    /// The normal response.
    Negotiate(NegotiateResponse),
    /// Negotiate again elsewhere.
    Redirect(RedirectResponse),
    /// Negotiation failed.
    Error(ErrorResponse),
}

impl NegotiateReply {
    /// The JSON body: compact, PascalCase keys in the order the real server writes them.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Negotiate(r) => to_json(&NegotiateOut::from(r)),
            Self::Redirect(r) => to_json(&RedirectOut {
                protocol_version: &r.protocol_version,
                redirect_url: &r.redirect_url,
                access_token: r.access_token.as_deref(),
                try_web_sockets: r.try_web_sockets,
            }),
            Self::Error(r) => to_json(&ErrorOut {
                protocol_version: &r.protocol_version,
                error: &r.error,
            }),
        }
    }

    /// Decodes a negotiate body. The form is told by its keys, in the order jQuery checks
    /// them: `Error` (non-null) makes an error, else `RedirectUrl` (non-null) a redirect, else
    /// it is a normal response. Unknown keys are ignored.
    ///
    /// # Errors
    /// A [`MessageError`]: not UTF-8, not a JSON object, a key of the wrong type, or a key
    /// the form requires missing (`ProtocolVersion` always; for a normal response every key
    /// but `KeepAliveTimeout` and `WebSocketServerUrl`).
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        let wire: NegotiateIn = decode_object(bytes)?;
        let protocol_version = wire
            .protocol_version
            .ok_or(MessageError::MissingField("ProtocolVersion"));
        if let Some(error) = wire.error {
            return Ok(Self::Error(ErrorResponse {
                protocol_version: protocol_version?,
                error,
            }));
        }
        if let Some(redirect_url) = wire.redirect_url {
            return Ok(Self::Redirect(RedirectResponse {
                protocol_version: protocol_version?,
                redirect_url,
                access_token: wire.access_token,
                try_web_sockets: wire.try_web_sockets,
            }));
        }
        Ok(Self::Negotiate(NegotiateResponse {
            url: required(wire.url, "Url")?,
            connection_token: required(wire.connection_token, "ConnectionToken")?,
            connection_id: required(wire.connection_id, "ConnectionId")?,
            keep_alive_timeout: wire.keep_alive_timeout,
            disconnect_timeout: required(wire.disconnect_timeout, "DisconnectTimeout")?,
            connection_timeout: required(wire.connection_timeout, "ConnectionTimeout")?,
            try_web_sockets: required(wire.try_web_sockets, "TryWebSockets")?,
            protocol_version: protocol_version?,
            transport_connect_timeout: required(
                wire.transport_connect_timeout,
                "TransportConnectTimeout",
            )?,
            long_poll_delay: required(wire.long_poll_delay, "LongPollDelay")?,
            web_socket_server_url: wire.web_socket_server_url,
        }))
    }
}

fn required<T>(value: Option<T>, key: &'static str) -> Result<T, MessageError> {
    value.ok_or(MessageError::MissingField(key))
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NegotiateOut<'a> {
    url: &'a str,
    connection_token: &'a str,
    connection_id: &'a str,
    keep_alive_timeout: Option<f64>,
    disconnect_timeout: f64,
    connection_timeout: f64,
    try_web_sockets: bool,
    protocol_version: &'a str,
    transport_connect_timeout: f64,
    long_poll_delay: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    web_socket_server_url: Option<&'a str>,
}

impl<'a> From<&'a NegotiateResponse> for NegotiateOut<'a> {
    fn from(r: &'a NegotiateResponse) -> Self {
        Self {
            url: &r.url,
            connection_token: &r.connection_token,
            connection_id: &r.connection_id,
            keep_alive_timeout: r.keep_alive_timeout,
            disconnect_timeout: r.disconnect_timeout,
            connection_timeout: r.connection_timeout,
            try_web_sockets: r.try_web_sockets,
            protocol_version: &r.protocol_version,
            transport_connect_timeout: r.transport_connect_timeout,
            long_poll_delay: r.long_poll_delay,
            web_socket_server_url: r.web_socket_server_url.as_deref(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RedirectOut<'a> {
    protocol_version: &'a str,
    redirect_url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    try_web_sockets: Option<bool>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorOut<'a> {
    protocol_version: &'a str,
    error: &'a str,
}

/// Every key of every form; which are required depends on the form.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NegotiateIn {
    url: Option<String>,
    connection_token: Option<String>,
    connection_id: Option<String>,
    keep_alive_timeout: Option<f64>,
    disconnect_timeout: Option<f64>,
    connection_timeout: Option<f64>,
    try_web_sockets: Option<bool>,
    protocol_version: Option<String>,
    transport_connect_timeout: Option<f64>,
    long_poll_delay: Option<f64>,
    web_socket_server_url: Option<String>,
    redirect_url: Option<String>,
    access_token: Option<String>,
    error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body every capture's server sent (Python's `json.dumps`, so with spaces).
    const CAPTURED: &[u8] = br#"{"Url": "/signalr", "ConnectionToken": "classic-token-1", "ConnectionId": "classic-id-1", "KeepAliveTimeout": 20.0, "DisconnectTimeout": 30.0, "ConnectionTimeout": 110.0, "TryWebSockets": true, "ProtocolVersion": "2.1", "TransportConnectTimeout": 5.0, "LongPollDelay": 0.0}"#;
    /// classic-jquery-chromium-webSockets-redirect.txt, request #1.
    const CAPTURED_REDIRECT: &[u8] = br#"{"ProtocolVersion": "2.0", "RedirectUrl": "http://127.0.0.1:46229/aspnetclient?hub=chathub&asrs.op=%2Fsignalr", "AccessToken": "classic.redirect.token"}"#;

    fn round_trip(reply: &NegotiateReply) {
        assert_eq!(&NegotiateReply::decode(&reply.encode()).unwrap(), reply);
    }

    #[test]
    fn protocol_version_resolution() {
        let r = |s| ProtocolVersion::resolve(Some(s)).to_string();
        assert_eq!(r("2.1"), "2.0");
        assert_eq!(r("2.0"), "2.0");
        assert_eq!(r("1.5"), "1.5");
        assert_eq!(r("1.3"), "1.3");
        assert_eq!(r("1.0"), "1.2");
        assert_eq!(r("3.0.1.2"), "2.0");
        assert_eq!(r("1.5.0"), "1.5");
        assert_eq!(r("banana"), "1.2");
        assert_eq!(r("1"), "1.2");
        assert_eq!(r("1.2.3.4.5"), "1.2");
        assert_eq!(r("-1.5"), "1.2");
        assert_eq!(r("1.99999999999"), "1.2");
        assert_eq!(ProtocolVersion::resolve(None), ProtocolVersion::MIN);
        assert!(ProtocolVersion::V1_5.has_delayed_start());
        assert!(ProtocolVersion::V1_5.long_polling_uses_post());
        assert!(!ProtocolVersion::MIN.has_delayed_start());
    }

    #[test]
    fn negotiate_encodes_like_the_server() {
        let r = NegotiateResponse::with_defaults(
            "/signalr",
            "classic-token-1",
            "classic-id-1",
            ProtocolVersion::resolve(Some("2.1")),
        );
        let json = NegotiateReply::Negotiate(r).encode();
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"Url":"/signalr","ConnectionToken":"classic-token-1","ConnectionId":"classic-id-1","KeepAliveTimeout":20.0,"DisconnectTimeout":30.0,"ConnectionTimeout":110.0,"TryWebSockets":true,"ProtocolVersion":"2.0","TransportConnectTimeout":5.0,"LongPollDelay":0.0}"#
        );
    }

    #[test]
    fn negotiate_round_trips() {
        let mut r =
            NegotiateResponse::with_defaults("/aspnetclient", "t+/=", "id", ProtocolVersion::MAX);
        round_trip(&NegotiateReply::Negotiate(r.clone()));
        r.keep_alive_timeout = None;
        r.web_socket_server_url = Some("wss://ws.example".to_owned());
        r.long_poll_delay = 0.25;
        let reply = NegotiateReply::Negotiate(r);
        assert!(String::from_utf8(reply.encode())
            .unwrap()
            .contains(r#""KeepAliveTimeout":null"#));
        round_trip(&reply);
    }

    #[test]
    fn redirect_and_error_round_trip() {
        let redirect =
            RedirectResponse::new("https://svc/aspnetclient?hub=chat&asrs.op=%2F", "jwt");
        let json = NegotiateReply::Redirect(redirect.clone()).encode();
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"ProtocolVersion":"2.0","RedirectUrl":"https://svc/aspnetclient?hub=chat&asrs.op=%2F","AccessToken":"jwt"}"#
        );
        round_trip(&NegotiateReply::Redirect(redirect));
        round_trip(&NegotiateReply::Redirect(RedirectResponse {
            protocol_version: "2.1".to_owned(),
            redirect_url: "u".to_owned(),
            access_token: None,
            try_web_sockets: Some(false),
        }));
        let error = NegotiateReply::Error(ErrorResponse::new("Hub 'x' not found"));
        assert_eq!(
            error.encode(),
            br#"{"ProtocolVersion":"2.0","Error":"Hub 'x' not found"}"#
        );
        round_trip(&error);
    }

    #[test]
    fn decodes_captured_negotiate_bodies() {
        let NegotiateReply::Negotiate(r) = NegotiateReply::decode(CAPTURED).unwrap() else {
            panic!("not a normal response")
        };
        assert_eq!(r.url, "/signalr");
        assert_eq!(r.connection_token, "classic-token-1");
        assert_eq!(r.keep_alive_timeout, Some(20.0));
        assert_eq!(r.protocol_version, "2.1");
        assert!(r.try_web_sockets);
        let NegotiateReply::Redirect(r) = NegotiateReply::decode(CAPTURED_REDIRECT).unwrap() else {
            panic!("not a redirect")
        };
        assert_eq!(
            r.redirect_url,
            "http://127.0.0.1:46229/aspnetclient?hub=chathub&asrs.op=%2Fsignalr"
        );
        assert_eq!(r.access_token.as_deref(), Some("classic.redirect.token"));
    }

    #[test]
    fn error_wins_over_redirect() {
        let body = br#"{"RedirectUrl":"u","Error":"no","ProtocolVersion":"2.0"}"#;
        assert!(matches!(
            NegotiateReply::decode(body),
            Ok(NegotiateReply::Error(_))
        ));
    }

    #[test]
    fn bad_negotiate_bodies() {
        assert!(matches!(
            NegotiateReply::decode(b"{\"Url\":"),
            Err(MessageError::InvalidJson(_))
        ));
        assert_eq!(
            NegotiateReply::decode(br#"{"ProtocolVersion":"2.0","Url":"/s","ConnectionId":"i"}"#),
            Err(MessageError::MissingField("ConnectionToken"))
        );
        assert_eq!(
            NegotiateReply::decode(br#"{"Error":"x"}"#),
            Err(MessageError::MissingField("ProtocolVersion"))
        );
        assert!(matches!(
            NegotiateReply::decode(br#"{"ProtocolVersion":2.0,"Error":"x"}"#),
            Err(MessageError::WrongType(_))
        ));
        assert_eq!(
            NegotiateReply::decode(b"\"Url\""),
            Err(MessageError::NotAnObject)
        );
        assert_eq!(
            NegotiateReply::decode(b"{\"Error\":\"\xff\"}"),
            Err(MessageError::InvalidUtf8)
        );
    }
}
