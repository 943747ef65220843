//! The negotiate step of ASP.NET Core SignalR.
//!
//! A client `POST`s `<base>/negotiate?negotiateVersion=1` and gets one of four JSON shapes
//! back, always with HTTP 200 (see [`NegotiateResponse`]). The transport requests that follow
//! carry the connection token as `id`.

use serde::{Deserialize, Serialize};

use super::TransferFormat;

/// The highest negotiate version this implementation speaks.
pub const MAX_NEGOTIATE_VERSION: u32 = 1;

/// The largest negotiate response body [`NegotiateResponse::parse`] accepts.
pub const MAX_RESPONSE_LEN: usize = 64 * 1024;

/// The query string of a negotiate or transport request, as far as SignalR reads it.
///
/// Keys are matched case-insensitively, as ASP.NET Core does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NegotiateQuery {
    /// `negotiateVersion`; `None` when absent (the client speaks version 0).
    pub negotiate_version: Option<u32>,
    /// `useStatefulReconnect=true`.
    pub use_stateful_reconnect: bool,
    /// `id`: the connection token, on transport requests.
    pub id: Option<String>,
}

/// Why a negotiate exchange failed to decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NegotiateError {
    /// `negotiateVersion` is not a non-negative integer.
    #[error("The client requested a non-integer protocol version.")]
    NonIntegerVersion,
    /// The response is not valid JSON of the expected shape.
    #[error("invalid negotiate response: {0}")]
    Json(String),
    /// The response is larger than [`MAX_RESPONSE_LEN`].
    #[error("negotiate response is larger than {MAX_RESPONSE_LEN} bytes")]
    TooLarge,
    /// The response lacks a field its shape requires.
    #[error("Invalid negotiation response received: missing '{0}'.")]
    MissingField(&'static str),
    /// The response comes from a classic ASP.NET SignalR server.
    #[error("Detected a connection attempt to an ASP.NET SignalR Server. This client only supports connecting to an ASP.NET Core SignalR Server.")]
    ClassicServer,
}

impl NegotiateQuery {
    /// Reads the SignalR parameters of a raw query string (without the leading `?`).
    /// Other parameters are ignored.
    ///
    /// # Errors
    /// [`NegotiateError::NonIntegerVersion`] when `negotiateVersion` is not an integer.
    pub fn parse(query: &str) -> Result<Self, NegotiateError> {
        let mut out = Self::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if key.eq_ignore_ascii_case("negotiateVersion") {
                out.negotiate_version = Some(
                    value
                        .parse()
                        .map_err(|_| NegotiateError::NonIntegerVersion)?,
                );
            } else if key.eq_ignore_ascii_case("useStatefulReconnect") {
                out.use_stateful_reconnect = value.eq_ignore_ascii_case("true");
            } else if key.eq_ignore_ascii_case("id") {
                out.id = Some(value.into_owned());
            }
        }
        Ok(out)
    }

    /// Renders the parameters that are set as a query string.
    pub fn to_query_string(&self) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        if let Some(v) = self.negotiate_version {
            s.append_pair("negotiateVersion", &v.to_string());
        }
        if self.use_stateful_reconnect {
            s.append_pair("useStatefulReconnect", "true");
        }
        if let Some(id) = &self.id {
            s.append_pair("id", id);
        }
        s.finish()
    }

    /// The negotiate version the server answers with: the client's, capped at `server_max`.
    pub fn resolved_version(&self, server_max: u32) -> u32 {
        self.negotiate_version.unwrap_or(0).min(server_max)
    }
}

/// A transport a server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// `WebSockets`.
    WebSockets,
    /// `ServerSentEvents` (text only).
    ServerSentEvents,
    /// `LongPolling`.
    LongPolling,
}

impl TransportKind {
    /// The name used in negotiate responses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebSockets => "WebSockets",
            Self::ServerSentEvents => "ServerSentEvents",
            Self::LongPolling => "LongPolling",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "WebSockets" => Some(Self::WebSockets),
            "ServerSentEvents" => Some(Self::ServerSentEvents),
            "LongPolling" => Some(Self::LongPolling),
            _ => None,
        }
    }
}

/// One entry of `availableTransports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvailableTransport {
    /// The transport.
    pub transport: TransportKind,
    /// The transfer formats it carries.
    pub transfer_formats: Vec<TransferFormat>,
}

impl AvailableTransport {
    /// All three transports with the formats ASP.NET Core offers: WebSockets and long polling
    /// carry text and binary, Server-Sent Events text only.
    pub fn all() -> Vec<Self> {
        use TransferFormat::{Binary, Text};
        vec![
            Self {
                transport: TransportKind::WebSockets,
                transfer_formats: vec![Text, Binary],
            },
            Self {
                transport: TransportKind::ServerSentEvents,
                transfer_formats: vec![Text],
            },
            Self {
                transport: TransportKind::LongPolling,
                transfer_formats: vec![Text, Binary],
            },
        ]
    }
}

/// A new connection's negotiate answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// 0 or 1. With 0 the client uses `connection_id` as its `id`.
    pub negotiate_version: u32,
    /// The public connection id.
    pub connection_id: String,
    /// The secret the client sends as `id`; written only for version 1 and above.
    pub connection_token: Option<String>,
    /// Whether stateful reconnect is on (only when the client asked for it).
    pub use_stateful_reconnect: bool,
    /// The transports offered, in order of preference.
    pub available_transports: Vec<AvailableTransport>,
}

/// Every form of negotiate response.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NegotiateResponse {
    /// A connection was created.
    Connection(ConnectionInfo),
    /// Negotiate again at `url`, presenting `access_token` as the bearer token.
    Redirect {
        /// Where to negotiate next.
        url: String,
        /// The bearer token to use from now on.
        access_token: Option<String>,
    },
    /// The negotiation failed.
    Error(String),
}

#[derive(Serialize, Deserialize)]
struct WireTransport {
    transport: String,
    #[serde(rename = "transferFormats")]
    transfer_formats: Vec<String>,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Wire {
    #[serde(skip_serializing_if = "Option::is_none")]
    negotiate_version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    access_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    use_stateful_reconnect: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    available_transports: Option<Vec<WireTransport>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(rename = "ProtocolVersion", skip_serializing)]
    protocol_version: Option<serde::de::IgnoredAny>,
}

impl NegotiateResponse {
    /// Encodes the response body (JSON; serve it with HTTP 200 and
    /// `Content-Type: application/json`).
    pub fn to_json(&self) -> Vec<u8> {
        let wire = match self {
            Self::Connection(c) => Wire {
                negotiate_version: Some(c.negotiate_version),
                connection_id: Some(c.connection_id.clone()),
                connection_token: if c.negotiate_version > 0 {
                    c.connection_token.clone()
                } else {
                    None
                },
                use_stateful_reconnect: c.use_stateful_reconnect.then_some(true),
                available_transports: Some(
                    c.available_transports
                        .iter()
                        .map(|t| WireTransport {
                            transport: t.transport.as_str().to_owned(),
                            transfer_formats: t
                                .transfer_formats
                                .iter()
                                .map(|f| f.as_str().to_owned())
                                .collect(),
                        })
                        .collect(),
                ),
                ..Wire::default()
            },
            Self::Redirect { url, access_token } => Wire {
                url: Some(url.clone()),
                access_token: access_token.clone(),
                ..Wire::default()
            },
            Self::Error(error) => Wire {
                error: Some(error.clone()),
                ..Wire::default()
            },
        };
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Decodes a response body the way the official clients read it: `error` first, then a
    /// classic server's `ProtocolVersion`, then `url`, then a connection. Transports with
    /// unknown names, and unknown transfer formats, are skipped.
    ///
    /// # Errors
    /// [`NegotiateError`] for oversized or invalid JSON, a classic server, or a connection
    /// without the fields its version requires.
    pub fn parse(body: &[u8]) -> Result<Self, NegotiateError> {
        if body.len() > MAX_RESPONSE_LEN {
            return Err(NegotiateError::TooLarge);
        }
        let wire: Wire =
            serde_json::from_slice(body).map_err(|e| NegotiateError::Json(e.to_string()))?;
        if let Some(error) = wire.error {
            return Ok(Self::Error(error));
        }
        if wire.protocol_version.is_some() {
            return Err(NegotiateError::ClassicServer);
        }
        if let Some(url) = wire.url {
            return Ok(Self::Redirect {
                url,
                access_token: wire.access_token,
            });
        }
        let negotiate_version = wire.negotiate_version.unwrap_or(0);
        let connection_id = wire
            .connection_id
            .ok_or(NegotiateError::MissingField("connectionId"))?;
        let connection_token = if negotiate_version > 0 {
            Some(
                wire.connection_token
                    .ok_or(NegotiateError::MissingField("connectionToken"))?,
            )
        } else {
            None
        };
        let transports = wire
            .available_transports
            .ok_or(NegotiateError::MissingField("availableTransports"))?;
        let available_transports = transports
            .into_iter()
            .filter_map(|t| {
                Some(AvailableTransport {
                    transport: TransportKind::from_name(&t.transport)?,
                    transfer_formats: t
                        .transfer_formats
                        .iter()
                        .filter_map(|f| match f.as_str() {
                            "Text" => Some(TransferFormat::Text),
                            "Binary" => Some(TransferFormat::Binary),
                            _ => None,
                        })
                        .collect(),
                })
            })
            .collect();
        Ok(Self::Connection(ConnectionInfo {
            negotiate_version,
            connection_id,
            connection_token,
            use_stateful_reconnect: wire.use_stateful_reconnect.unwrap_or(false),
            available_transports,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1() -> NegotiateResponse {
        NegotiateResponse::Connection(ConnectionInfo {
            negotiate_version: 1,
            connection_id: "cid".into(),
            connection_token: Some("ctok".into()),
            use_stateful_reconnect: true,
            available_transports: AvailableTransport::all(),
        })
    }

    #[test]
    fn every_form_round_trips() {
        let v0 = NegotiateResponse::Connection(ConnectionInfo {
            negotiate_version: 0,
            connection_id: "cid".into(),
            connection_token: None,
            use_stateful_reconnect: false,
            available_transports: vec![],
        });
        let redirect = NegotiateResponse::Redirect {
            url: "http://127.0.0.1:8080/client/?hub=chat".into(),
            access_token: Some("a.b.c".into()),
        };
        let error = NegotiateResponse::Error("no server".into());
        for r in [v1(), v0, redirect, error] {
            assert_eq!(NegotiateResponse::parse(&r.to_json()).unwrap(), r);
        }
    }

    #[test]
    fn v1_json_is_what_clients_expect() {
        assert_eq!(
            String::from_utf8(v1().to_json()).unwrap(),
            r#"{"negotiateVersion":1,"connectionId":"cid","connectionToken":"ctok","useStatefulReconnect":true,"availableTransports":[{"transport":"WebSockets","transferFormats":["Text","Binary"]},{"transport":"ServerSentEvents","transferFormats":["Text"]},{"transport":"LongPolling","transferFormats":["Text","Binary"]}]}"#
        );
        let redirect = NegotiateResponse::Redirect {
            url: "u".into(),
            access_token: Some("t".into()),
        };
        assert_eq!(redirect.to_json(), br#"{"url":"u","accessToken":"t"}"#);
    }

    #[test]
    fn azure_sdk_redirect_decodes() {
        let body = br#"{"negotiateVersion":0,"url":"https://svc/client/?hub=chat&asrs.op=%2Fchat","accessToken":"x.y.z","availableTransports":[]}"#;
        assert_eq!(
            NegotiateResponse::parse(body).unwrap(),
            NegotiateResponse::Redirect {
                url: "https://svc/client/?hub=chat&asrs.op=%2Fchat".into(),
                access_token: Some("x.y.z".into())
            }
        );
    }

    #[test]
    fn queries_parse_case_insensitively() {
        let q =
            NegotiateQuery::parse("hub=chat&NegotiateVersion=1&useStatefulReconnect=true&id=a%2Bb")
                .unwrap();
        assert_eq!(q.negotiate_version, Some(1));
        assert!(q.use_stateful_reconnect);
        assert_eq!(q.id.as_deref(), Some("a+b"));
        assert_eq!(NegotiateQuery::parse(&q.to_query_string()).unwrap(), q);
        assert_eq!(
            NegotiateQuery::parse("negotiateVersion=7")
                .unwrap()
                .resolved_version(1),
            1
        );
        assert_eq!(NegotiateQuery::parse("").unwrap().resolved_version(1), 0);
    }

    #[test]
    fn bad_input_gives_typed_errors() {
        assert_eq!(
            NegotiateQuery::parse("negotiateVersion=1.5"),
            Err(NegotiateError::NonIntegerVersion)
        );
        assert_eq!(
            NegotiateQuery::parse("negotiateVersion=-1"),
            Err(NegotiateError::NonIntegerVersion)
        );
        assert_eq!(
            NegotiateResponse::parse(br#"{"ProtocolVersion":"2.0","Url":"/signalr"}"#),
            Err(NegotiateError::ClassicServer)
        );
        assert_eq!(
            NegotiateResponse::parse(
                br#"{"negotiateVersion":1,"connectionId":"c","availableTransports":[]}"#
            ),
            Err(NegotiateError::MissingField("connectionToken"))
        );
        assert_eq!(
            NegotiateResponse::parse(br#"{"connectionId":"c"}"#),
            Err(NegotiateError::MissingField("availableTransports"))
        );
        assert_eq!(
            NegotiateResponse::parse(&vec![b' '; MAX_RESPONSE_LEN + 1]),
            Err(NegotiateError::TooLarge)
        );
        assert!(matches!(
            NegotiateResponse::parse(br#"{"connectionId":5}"#),
            Err(NegotiateError::Json(_))
        ));
    }
}
