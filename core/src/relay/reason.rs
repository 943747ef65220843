//! Why things end, as types, and how each is said on the wire: mapped here, once.
//!
//! - [`Rejection`]: why an HTTP request is refused. One status and one body per variant.
//! - [`CloseReason`]: who ended a connection ([`Initiator`]) and why ([`CloseKind`]), as events
//!   and statistics report it.
//! - [`Ending`]: the relay's own list of the ways a client connection ends. Each maps to what
//!   the client is told (a SignalR Close message, a handshake error, the WebSocket close
//!   reason), whether its app server is told, and its [`CloseReason`].
//! - [`ServerEnding`]: the same for server connections.
//!
//! Every text a peer can read is a constant below, or built by one function here.

use std::borrow::Cow;

use super::http::HttpResponse;
use crate::aspnetcore::negotiate::TransportKind;
use crate::classic::RequestError;

/// Who ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Initiator {
    /// The client: it closed its socket, stopped, or broke the protocol.
    Client,
    /// The app server: it closed the client, or its own server connection.
    AppServer,
    /// The relay, by a rule of its own: a timeout, a limit, a lost app server.
    Relay,
}

/// Why a connection ended, by category. Its [`as_str`](Self::as_str) is a stable label for
/// metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum CloseKind {
    /// An orderly end: the client or the app server closed it.
    Normal,
    /// Something did not happen in time: a transport, a handshake, a message, a poll, a
    /// reconnect.
    Timeout,
    /// The handshake was refused.
    HandshakeFailed,
    /// A peer sent something malformed or over a limit.
    ProtocolError,
    /// A peer did not take what it was sent fast enough.
    SlowConsumer,
    /// The app server connection carrying the client went away.
    ServerOffline,
    /// The client's authentication expired, and its token asked to be closed then.
    AuthExpired,
    /// The relay is shutting down (draining): reconnect, to another node or to this one
    /// once it is back.
    Shutdown,
}

impl CloseKind {
    /// Every kind, in order.
    pub const ALL: [Self; 8] = [
        Self::Normal,
        Self::Timeout,
        Self::HandshakeFailed,
        Self::ProtocolError,
        Self::SlowConsumer,
        Self::ServerOffline,
        Self::AuthExpired,
        Self::Shutdown,
    ];

    /// A stable label: `normal`, `timeout`, `handshake_failed`, `protocol_error`,
    /// `slow_consumer`, `server_offline`, `auth_expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Timeout => "timeout",
            Self::HandshakeFailed => "handshake_failed",
            Self::ProtocolError => "protocol_error",
            Self::SlowConsumer => "slow_consumer",
            Self::ServerOffline => "server_offline",
            Self::AuthExpired => "auth_expired",
            Self::Shutdown => "shutdown",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Who ended a connection, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseReason {
    /// Who ended it.
    pub initiator: Initiator,
    /// Why.
    pub kind: CloseKind,
}

impl CloseReason {
    const fn new(initiator: Initiator, kind: CloseKind) -> Self {
        Self { initiator, kind }
    }
}

// ------------------------------------------------------------------------------ wire texts

/// Why the relay dropped an app server's connection; carried to its clients.
pub(crate) const SERVER_GONE: &str = "The app server connection carrying this client was lost (ServerOffline). Reconnect to be mapped to another app server.";
const CLIENT_TIMEOUT: &str =
    "Client hasn't sent a message/ping within the configured ClientTimeoutInterval.";
const HANDSHAKE_CANCELED: &str = "Handshake was canceled.";
const HANDSHAKE_FAILED: &str = "Handshake failed.";
const CLOSED_BY_SERVER: &str = "Closed by the app server.";
const CLOSED_BY_CLIENT: &str = "Closed by the client.";
const STOPPED_BY_CLIENT: &str = "Stopped by the client.";
const SERVER_MESSAGE_TOO_LARGE: &str =
    "The app server sent a message larger than the relay's limit.";
const TOO_MANY_PENDING: &str = "Too many messages queued before the handshake completed.";
const ACK_BUFFER_FULL: &str =
    "The client did not acknowledge messages fast enough (stateful reconnect buffer full).";
const POLL_BUFFER_FULL: &str =
    "The client did not poll fast enough: its message buffer overflowed.";
const POST_TOO_LARGE: &str = "The POST body exceeds the maximum message size.";
const AUTH_EXPIRED: &str = "The connection's authentication expired.";
const DRAINING: &str = "The service is shutting down; reconnect.";
/// The close reason of a socket that a reconnect replaced.
pub(crate) const REPLACED: &str = "Replaced by the client's reconnect.";

/// Texts that the app server or a client reads, beside the close reasons above.
pub(crate) mod texts {
    /// An app server's own connection to a relay in serverless mode.
    pub(crate) const SERVERLESS_MODE: &str = "This relay runs in serverless mode: app servers do not connect to it (clients are reached through the REST API and management connections). Run it with --service-mode default or classic to serve app servers.";
    /// Client results: the client is gone.
    pub(crate) const CONNECTION_DISCONNECTED: &str = "Connection disconnected.";
    /// A client result whose client moved to another app server before it answered.
    pub(crate) const CLIENT_MIGRATED: &str =
        "The client moved to another app server before it answered.";
    /// Client results: no client has that connection id (the error of the ErrorCompletion
    /// the relay answers a ClientInvocation with).
    pub const CONNECTION_NOT_FOUND: &str = "Connection not found.";
    /// Client results: the table is full.
    pub(crate) const TOO_MANY_INVOCATIONS: &str = "Too many client invocations are pending.";
    /// Client results: the client has not finished its handshake.
    pub(crate) const NOT_HANDSHAKEN: &str = "The connection has not completed its handshake.";
    /// The answer to an AccessKeyRequest.
    pub(crate) const ACCESS_KEYS_ONLY: &str = "This relay supports access-key authentication only.";
    /// Classic: a poll or reconnect with a token the relay does not know.
    pub(crate) const TOKEN_UNKNOWN: &str =
        "The connection is closed, or its token is unknown or has expired.";
    /// Classic: a `/send` over the limit of held sends.
    pub(crate) const TOO_MANY_HELD_SENDS: &str =
        "Too many hub invocations are waiting for their results.";
    /// Classic: a send before `/connect`.
    pub(crate) const NOT_CONNECTED: &str = "The connection is not connected.";
    /// Classic: the app server's Close message had no error.
    pub(crate) const SERVER_CLOSED_CONNECTION: &str = "The server closed the connection.";
    /// Classic: a held `/send` whose connection ended.
    pub(crate) const CLOSED_BEFORE_RESULT: &str =
        "The connection closed before the method returned.";
    /// Classic: a held poll whose connection ended.
    pub(crate) const CONNECTION_CLOSED: &str = "The connection is closed.";
    /// Classic: the app server asked a classic client for a result.
    pub(crate) const NO_CLIENT_RESULTS: &str =
        "Classic ASP.NET SignalR clients cannot return results to the server.";

    /// No app server is connected for a hub.
    pub(crate) fn no_app_server(hub: &str) -> String {
        format!("No app server is connected for hub '{hub}'.")
    }

    /// No app server is connected for a hub, said at negotiate.
    pub(crate) fn no_app_server_yet(hub: &str) -> String {
        format!(
            "No app server is connected for hub '{hub}'. Start the app server, or wait for its server connections, and try again."
        )
    }

    /// A client whose token requires an app server that is not connected.
    pub(crate) fn required_server_gone(server: &str, hub: &str) -> String {
        format!(
            "The app server '{server}' this client must use has no connection for hub '{hub}'. Negotiate again."
        )
    }

    /// Classic: a client message over the limit.
    pub(crate) fn message_too_large(max: usize) -> String {
        format!("The message exceeds the maximum size of {max} bytes.")
    }

    /// Classic: a client message that is not a hub invocation.
    pub(crate) fn not_an_invocation(error: impl std::fmt::Display) -> String {
        format!("The message is not a hub invocation: {error}.")
    }

    /// Classic: an invocation of another hub than the connection's.
    pub(crate) fn not_this_hub(hub: &str) -> String {
        format!("'{hub}' is not a hub of this connection.")
    }
}

/// The WebSocket close code of every close of a client connection.
pub(crate) const CLIENT_CLOSE_CODE: u16 = 1000;
/// The WebSocket close code of a server connection the relay drops.
pub(crate) const SERVER_CLOSE_CODE: u16 = 1011;

/// A WebSocket close reason holds at most 123 bytes.
pub(crate) fn truncate_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

// ------------------------------------------------------------------------------ clients

/// Every way a client connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Negotiated, but no transport came within the negotiate timeout.
    NegotiateExpired,
    /// No handshake within the handshake timeout.
    HandshakeTimedOut,
    /// The handshake was refused; the text is the handshake error.
    HandshakeRefused(Cow<'static, str>),
    /// The client's socket or event stream went away.
    TransportClosed,
    /// `DELETE` on a long-polling connection.
    Deleted,
    /// A classic client's `/abort`.
    Aborted,
    /// Nothing from the client within the client timeout.
    Silent,
    /// A long-polling client did not poll again in time.
    StoppedPolling,
    /// A stateful client did not come back within its reconnect window.
    ReconnectExpired,
    /// A classic client had no receive channel for the disconnect timeout.
    ClassicDisconnected,
    /// A client message over the limit, or malformed.
    BadMessage {
        /// The limit.
        max: usize,
    },
    /// A client's `POST` body over the limit.
    PostTooLarge,
    /// Messages piled up before the handshake completed.
    TooManyPending,
    /// A stateful client did not acknowledge what it was sent.
    AckBufferFull,
    /// A long-polling client did not take what was queued for it.
    PollBufferFull,
    /// The app server connection carrying the client went away.
    ServerOffline,
    /// The app server closed the client (CloseConnection): it knows, and has said its last.
    ServerClosed(Option<String>),
    /// The app server asked the relay to close the client (the `…WithAck` requests).
    ServerClosedWithAck(Option<String>),
    /// The app server sent the client a message over the relay's limit.
    ServerMessageTooLarge,
    /// A classic client sent something the relay cannot take.
    ClassicBadInput(String),
    /// The app server ended a classic client with a Close message.
    ClassicServerClosed(String),
    /// The app server refused a classic client's handshake.
    ClassicServerRefused(String),
    /// Its authentication expired (`asrs.s.coae`, `asrs.s.aeo`).
    AuthExpired,
    /// The relay is draining: every client is told to reconnect.
    Draining,
}

impl Ending {
    /// Who ended the connection, and why.
    pub(crate) fn reason(&self) -> CloseReason {
        use CloseKind::*;
        use Initiator::*;
        match self {
            Self::TransportClosed | Self::Deleted | Self::Aborted => {
                CloseReason::new(Client, Normal)
            }
            Self::NegotiateExpired
            | Self::HandshakeTimedOut
            | Self::Silent
            | Self::StoppedPolling
            | Self::ReconnectExpired
            | Self::ClassicDisconnected => CloseReason::new(Relay, Timeout),
            Self::HandshakeRefused(_) => CloseReason::new(Relay, HandshakeFailed),
            Self::BadMessage { .. } | Self::PostTooLarge | Self::ClassicBadInput(_) => {
                CloseReason::new(Relay, ProtocolError)
            }
            Self::TooManyPending | Self::AckBufferFull | Self::PollBufferFull => {
                CloseReason::new(Relay, SlowConsumer)
            }
            Self::ServerOffline => CloseReason::new(Relay, ServerOffline),
            Self::ServerClosed(_) | Self::ServerClosedWithAck(_) | Self::ClassicServerClosed(_) => {
                CloseReason::new(AppServer, Normal)
            }
            Self::ServerMessageTooLarge => CloseReason::new(Relay, ProtocolError),
            Self::ClassicServerRefused(_) => CloseReason::new(AppServer, HandshakeFailed),
            Self::AuthExpired => CloseReason::new(Relay, AuthExpired),
            Self::Draining => CloseReason::new(Relay, Shutdown),
        }
    }

    /// The SignalR Close message the client gets first, once its handshake is done: its error
    /// text, and whether it may reconnect.
    pub(crate) fn close_message(&self) -> Option<(Cow<'_, str>, bool)> {
        let (text, reconnect): (Cow<'_, str>, bool) = match self {
            Self::Silent => (CLIENT_TIMEOUT.into(), true),
            Self::BadMessage { max } => (bad_message(*max).into(), false),
            Self::ServerOffline => (SERVER_GONE.into(), true),
            Self::ServerClosedWithAck(reason) => (closed_by_server(reason).into(), false),
            Self::ServerMessageTooLarge => (SERVER_MESSAGE_TOO_LARGE.into(), false),
            Self::TooManyPending => (TOO_MANY_PENDING.into(), true),
            Self::AckBufferFull => (ACK_BUFFER_FULL.into(), true),
            Self::PollBufferFull => (POLL_BUFFER_FULL.into(), true),
            Self::PostTooLarge => (POST_TOO_LARGE.into(), false),
            // It may come back with a fresh token, through negotiate.
            Self::AuthExpired => (AUTH_EXPIRED.into(), true),
            Self::Draining => (DRAINING.into(), true),
            _ => return None,
        };
        Some((text, reconnect))
    }

    /// The handshake error the client gets, when the connection ends during its handshake.
    pub(crate) fn handshake_error(&self) -> Option<&str> {
        match self {
            Self::HandshakeTimedOut => Some(crate::aspnetcore::handshake::errors::CANCELED),
            Self::HandshakeRefused(error) => Some(error),
            _ => None,
        }
    }

    /// The classic client's global error (`E`): the relay's own failures always, the Close
    /// message's text once the handshake is done.
    pub(crate) fn classic_error(&self, handshake_done: bool) -> Option<Cow<'_, str>> {
        match self {
            Self::ClassicBadInput(e)
            | Self::ClassicServerClosed(e)
            | Self::ClassicServerRefused(e) => Some(Cow::Borrowed(e)),
            other if handshake_done => other.close_message().map(|(text, _)| text),
            _ => None,
        }
    }

    /// The reason of the WebSocket close (or the end of the event stream) the relay sends, when
    /// the client still has one. `None`: no close is sent (the transport is gone already).
    pub(crate) fn close_text(&self) -> Option<Cow<'_, str>> {
        Some(match self {
            Self::NegotiateExpired
            | Self::TransportClosed
            | Self::StoppedPolling
            | Self::ReconnectExpired
            | Self::ClassicDisconnected => return None,
            Self::HandshakeTimedOut => HANDSHAKE_CANCELED.into(),
            Self::HandshakeRefused(_) => HANDSHAKE_FAILED.into(),
            Self::Deleted => CLOSED_BY_CLIENT.into(),
            Self::Aborted => STOPPED_BY_CLIENT.into(),
            Self::ServerClosed(reason) => closed_by_server_connection(reason).into(),
            Self::ClassicBadInput(e)
            | Self::ClassicServerClosed(e)
            | Self::ClassicServerRefused(e) => e.as_str().into(),
            other => return other.close_message().map(|(text, _)| text),
        })
    }

    /// Whether the client's app server is told (CloseConnection). Not when the app server
    /// closed the client itself.
    pub(crate) fn notifies_server(&self) -> bool {
        !matches!(self, Self::ServerClosed(_))
    }
}

fn bad_message(max: usize) -> String {
    format!("Message exceeds the maximum size of {max} bytes, or is malformed.")
}

fn closed_by_server(reason: &Option<String>) -> &str {
    reason.as_deref().unwrap_or(CLOSED_BY_SERVER)
}

/// A CloseConnection's error message is empty when there was no error.
fn closed_by_server_connection(reason: &Option<String>) -> &str {
    reason
        .as_deref()
        .filter(|r| !r.is_empty())
        .unwrap_or(CLOSED_BY_SERVER)
}

// ------------------------------------------------------------------------------ servers

/// Every way a server connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ServerEnding {
    /// The app server closed it, or its socket went away.
    Closed,
    /// No HandshakeRequest within the handshake timeout.
    HandshakeTimedOut,
    /// The first message was not a HandshakeRequest.
    NotAHandshake,
    /// The HandshakeRequest asked for a protocol version the relay does not speak.
    UnsupportedVersion,
    /// Nothing from the app server within the server timeout.
    Silent,
    /// Bytes that do not decode as the service protocol.
    InvalidData(String),
    /// An app server's connection to a relay in serverless mode.
    ServerlessMode,
}

impl ServerEnding {
    /// Who ended the connection, and why.
    pub(crate) fn reason(&self) -> CloseReason {
        use CloseKind::*;
        use Initiator::*;
        match self {
            Self::Closed => CloseReason::new(AppServer, Normal),
            Self::HandshakeTimedOut | Self::Silent => CloseReason::new(Relay, Timeout),
            Self::UnsupportedVersion | Self::ServerlessMode => {
                CloseReason::new(Relay, HandshakeFailed)
            }
            Self::NotAHandshake | Self::InvalidData(_) => CloseReason::new(Relay, ProtocolError),
        }
    }

    /// The reason of the close the relay sends (code [`SERVER_CLOSE_CODE`]); `None` when the
    /// socket is gone already.
    pub(crate) fn close_text(&self) -> Option<Cow<'_, str>> {
        Some(match self {
            Self::Closed => return None,
            Self::HandshakeTimedOut => "Handshake timed out.".into(),
            Self::NotAHandshake => "The first message must be a HandshakeRequest.".into(),
            Self::UnsupportedVersion => "Unsupported protocol version.".into(),
            Self::ServerlessMode => texts::SERVERLESS_MODE.into(),
            Self::Silent => "The app server sent nothing within the server timeout.".into(),
            Self::InvalidData(error) => format!("Invalid data from the app server: {error}").into(),
        })
    }
}

/// The HandshakeResponse error for an unsupported service-protocol version.
pub(crate) fn unsupported_version(version: i32) -> String {
    format!("Protocol version {version} is not supported; this relay speaks version 1.")
}

// ------------------------------------------------------------------------------ requests

/// Why the relay refuses an HTTP request. Each maps to one status and one body.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// No bearer token (401).
    NoToken,
    /// The token does not verify: the text says why (401).
    BadToken(String),
    /// The token's audience is not this endpoint and hub (401).
    WrongAudience {
        /// The endpoint.
        path: &'static str,
        /// The hub, if the endpoint has one.
        hub: Option<String>,
    },
    /// No `hub` query parameter, or an unusable one (400).
    HubRequired,
    /// No ASP.NET Core connection has that id (404).
    UnknownConnection,
    /// The token's user is not the connection's (403).
    NotOwner,
    /// The request uses another transport than the connection's (400).
    TransportChange,
    /// The connection already has its transport (409).
    TransportTaken,
    /// No app server is connected for the hub (503).
    NoAppServer {
        /// The hub.
        hub: String,
    },
    /// A transport request without `id` (400).
    ConnectionIdRequired,
    /// A `POST` to a connection with no transport yet (400).
    NoTransport,
    /// A `POST` to a WebSocket connection (405).
    PostOnWebSocket,
    /// A `POST` body over the limit (413).
    PostTooLarge,
    /// A `DELETE` to a connection that does not long-poll (400).
    DeleteNotAllowed,
    /// A method the transport endpoint does not take (405).
    MethodNotAllowed,
    /// A method or transport the endpoint does not take (405).
    EndpointMethodNotAllowed,
    /// No such endpoint (404).
    NotFound,
    /// Classic: no such endpoint under `/aspnetclient` (404).
    ClassicNotFound,
    /// Classic: a JSONP request (400).
    Jsonp,
    /// Classic: the foreverFrame transport (400).
    ForeverFrame,
    /// Classic: the query string or form is unusable (413 when too large, else 400).
    ClassicRequest(RequestError),
    /// Classic: the connection token is not one the relay issued, or names no connection (400).
    UnknownConnectionToken,
    /// Classic: `/reconnect` for a connection that has ended (404).
    ConnectionGone,
    /// The query string is longer than the relay keeps (414).
    QueryTooLong,
    /// The relay holds as many client connections as it may (503).
    TooManyConnections,
    /// The access token already holds as many connections as one may (429).
    TooManyForToken,
    /// Classic: the token's user is not the connection's (403).
    UserChanged,
    /// Classic: `/start` before `/connect` (400).
    NotConnected,
    /// Classic: `connectionData` does not name exactly one hub (400).
    HubCount(usize),
    /// Classic: `connectionData` and `hub` name different hubs (400).
    HubMismatch,
    /// Classic: the webSockets transport without an upgrade (400).
    NeedsUpgrade,
    /// Classic: `/connect` on a connected connection (400).
    AlreadyConnected,
    /// Classic: `/reconnect` on a connection never connected (400).
    NeverConnected,
    /// Classic: the connection is gone (404).
    NoSuchConnection,
    /// Classic: a `/send` without `data` (400).
    SendNeedsData,
    /// Classic: a `/send` the relay cannot forward; the text says why (400).
    BadSend(String),
    /// The client's token does not allow this transport (`asrs.s.htt`) (404, as ASP.NET Core
    /// answers for a transport its endpoint does not take).
    TransportNotAllowed(TransportKind),
    /// The relay is shutting down: no new connections (503).
    Draining,
    /// The client's token requires an app server that has no connection for the hub
    /// (`asrs.s.ssticky=Required`) (503).
    RequiredServerGone {
        /// The app server's name.
        server: String,
        /// The hub.
        hub: String,
    },
}

impl Rejection {
    /// A stable label for counting: `no_token`, `bad_token`, `wrong_audience`, `wrong_user`,
    /// `no_app_server`, `required_server_gone`, `too_many_connections`,
    /// `too_many_for_token`, `shutting_down`, `too_large`, `transport_not_allowed`,
    /// `unknown_connection`, `not_found`, `method_not_allowed` or `bad_request`.
    pub fn cause(&self) -> &'static str {
        match self {
            Self::NoToken => "no_token",
            Self::BadToken(_) => "bad_token",
            Self::WrongAudience { .. } => "wrong_audience",
            Self::NotOwner | Self::UserChanged => "wrong_user",
            Self::NoAppServer { .. } => "no_app_server",
            Self::RequiredServerGone { .. } => "required_server_gone",
            Self::TooManyConnections => "too_many_connections",
            Self::TooManyForToken => "too_many_for_token",
            Self::Draining => "shutting_down",
            Self::QueryTooLong
            | Self::PostTooLarge
            | Self::ClassicRequest(RequestError::TooLarge { .. }) => "too_large",
            Self::TransportNotAllowed(_) => "transport_not_allowed",
            Self::UnknownConnection
            | Self::NoSuchConnection
            | Self::ConnectionGone
            | Self::UnknownConnectionToken => "unknown_connection",
            Self::NotFound | Self::ClassicNotFound => "not_found",
            Self::MethodNotAllowed | Self::EndpointMethodNotAllowed | Self::PostOnWebSocket => {
                "method_not_allowed"
            }
            // The rest are requests the protocol does not allow (400, 409).
            _ => "bad_request",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Self::NoToken | Self::BadToken(_) | Self::WrongAudience { .. } => 401,
            Self::NotOwner | Self::UserChanged => 403,
            Self::UnknownConnection
            | Self::NotFound
            | Self::ClassicNotFound
            | Self::NoSuchConnection
            | Self::ConnectionGone
            | Self::TransportNotAllowed(_) => 404,
            Self::QueryTooLong => 414,
            Self::TooManyForToken => 429,
            Self::PostOnWebSocket | Self::MethodNotAllowed | Self::EndpointMethodNotAllowed => 405,
            Self::TransportTaken => 409,
            Self::PostTooLarge => 413,
            Self::ClassicRequest(RequestError::TooLarge { .. }) => 413,
            Self::NoAppServer { .. }
            | Self::TooManyConnections
            | Self::Draining
            | Self::RequiredServerGone { .. } => 503,
            Self::HubRequired
            | Self::TransportChange
            | Self::ConnectionIdRequired
            | Self::NoTransport
            | Self::DeleteNotAllowed
            | Self::Jsonp
            | Self::ForeverFrame
            | Self::ClassicRequest(_)
            | Self::UnknownConnectionToken
            | Self::NotConnected
            | Self::HubCount(_)
            | Self::HubMismatch
            | Self::NeedsUpgrade
            | Self::AlreadyConnected
            | Self::NeverConnected
            | Self::SendNeedsData
            | Self::BadSend(_) => 400,
        }
    }

    /// The body (plain text).
    pub fn text(&self) -> Cow<'_, str> {
        Cow::Borrowed(match self {
            Self::NoToken => {
                "Unauthorized: no access token (Authorization: Bearer, or access_token)."
            }
            Self::BadToken(e) => return format!("Unauthorized: {e}").into(),
            Self::WrongAudience { path, hub } => {
                let hub = hub.as_ref().map(|h| format!("?hub={h}")).unwrap_or_default();
                return format!(
                    "Unauthorized: the token's audience is not {path}{hub} on this relay."
                )
                .into();
            }
            Self::HubRequired => "The 'hub' query parameter is required.",
            Self::UnknownConnection => "No Connection with that ID",
            Self::NotOwner => "The token's user does not own this connection.",
            Self::TransportChange => "Cannot change transports mid-connection",
            Self::TransportTaken => "Another transport is already connected for this connection ID.",
            Self::NoAppServer { hub } => return texts::no_app_server(hub).into(),
            Self::ConnectionIdRequired => "Connection ID required",
            Self::NoTransport => "No transport is connected for this connection ID.",
            Self::PostOnWebSocket => "POST requests are not allowed for WebSocket connections.",
            Self::PostTooLarge => POST_TOO_LARGE,
            Self::DeleteNotAllowed => "Cannot terminate this connection using the DELETE endpoint.",
            Self::MethodNotAllowed => "Method not supported on this endpoint.",
            Self::EndpointMethodNotAllowed => "Method or transport not supported on this endpoint.",
            Self::NotFound => "Not found.",
            Self::ClassicNotFound => {
                "Not found: the classic endpoints are /aspnetclient/negotiate, connect, reconnect, start, send, poll, abort and ping."
            }
            Self::Jsonp => "JSONP is not supported: use a transport over CORS.",
            Self::ForeverFrame => {
                "The foreverFrame transport is not supported: use webSockets, serverSentEvents or longPolling."
            }
            Self::ClassicRequest(e) => return e.to_string().into(),
            Self::UnknownConnectionToken => "The connection token is unknown or has expired.",
            Self::ConnectionGone => "The connection has ended.",
            Self::QueryTooLong => "The query string is too long.",
            Self::TooManyConnections => "The relay holds as many connections as it may.",
            Self::Draining => {
                "The relay is shutting down and takes no new connections: try another node, or again shortly."
            }
            Self::TooManyForToken => "Too many connections for this access token.",
            Self::UserChanged => {
                "Unrecognized user identity. The user identity cannot change during an active SignalR connection."
            }
            Self::NotConnected => "The connection is not connected: /connect first.",
            Self::HubCount(n) => {
                return format!(
                    "connectionData must name exactly one hub; it names {n}. This service relays one hub per classic connection."
                )
                .into()
            }
            Self::HubMismatch => "connectionData names another hub than the 'hub' query parameter.",
            Self::NeedsUpgrade => "The webSockets transport needs a WebSocket upgrade request.",
            Self::AlreadyConnected => "The connection is already connected: use /reconnect.",
            Self::NeverConnected => "The connection was never connected: use /connect.",
            Self::NoSuchConnection => "No such connection.",
            Self::SendNeedsData => "A /send needs its 'data' field.",
            Self::BadSend(e) => e,
            Self::TransportNotAllowed(kind) => {
                return format!(
                    "{} transport not allowed for this connection by its access token.",
                    kind.as_str()
                )
                .into()
            }
            Self::RequiredServerGone { server, hub } => {
                return texts::required_server_gone(server, hub).into()
            }
        })
    }
}

impl From<Rejection> for HttpResponse {
    fn from(rejection: Rejection) -> Self {
        Self::from(&rejection)
    }
}

impl From<&Rejection> for HttpResponse {
    fn from(rejection: &Rejection) -> Self {
        Self::text(rejection.status(), rejection.text().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_kinds_index_their_own_slot() {
        for (i, kind) in CloseKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }

    #[test]
    fn a_close_reason_is_cut_on_a_character_boundary() {
        let long = "é".repeat(100);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= 123);
        assert!(long.starts_with(&cut));
        assert_eq!(truncate_reason("short"), "short");
    }

    #[test]
    fn endings_that_tell_the_client_close_its_socket_with_the_same_text() {
        let endings = [
            Ending::Silent,
            Ending::BadMessage { max: 10 },
            Ending::ServerOffline,
            Ending::ServerClosedWithAck(Some("bye".into())),
            Ending::ServerMessageTooLarge,
            Ending::TooManyPending,
            Ending::AckBufferFull,
            Ending::PollBufferFull,
            Ending::PostTooLarge,
        ];
        for ending in endings {
            let (message, _) = ending.close_message().unwrap();
            assert_eq!(
                ending.close_text().as_deref(),
                Some(&*message),
                "{ending:?}"
            );
            assert_eq!(ending.classic_error(true).as_deref(), Some(&*message));
            assert_eq!(ending.classic_error(false), None);
        }
    }
}
