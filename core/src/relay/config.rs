//! The relay's limits and timings.

use std::time::Duration;

use super::forwarded::IpRange;
use crate::service;

/// Limits and timings of a [`Relay`](super::Relay). Every limit is bounded by default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Access keys that sign app-server and client tokens. Several allow rotation.
    pub access_keys: Vec<String>,
    /// Largest client → server hub message (ASP.NET Core default: 32 KiB).
    pub max_client_message_size: usize,
    /// Largest service-protocol message from an app server, and largest hub message relayed to
    /// a client.
    pub max_server_message_size: usize,
    /// How long a client has to send its handshake once connected (default 15 s).
    pub handshake_timeout: Duration,
    /// How long a negotiated connection may wait for its transport (default 15 s).
    pub negotiate_timeout: Duration,
    /// A client silent for this long is closed (default 30 s; clients ping every 15 s).
    pub client_timeout: Duration,
    /// How long a long poll is held when there is nothing to send (default 90 s, under the
    /// JS client's 100 s request timeout).
    pub long_poll_timeout: Duration,
    /// Bytes queued for a long-polling client before it is considered too slow and closed.
    pub max_long_poll_buffer: usize,
    /// Whether clients may use stateful reconnect (ASP.NET Core 8+): a client whose WebSocket
    /// drops may come back within the negotiate timeout and lose nothing (default on).
    pub allow_stateful_reconnect: bool,
    /// Bytes of unacknowledged messages kept per stateful client (default 100 000, as in
    /// ASP.NET Core); past it, the client is no longer offered a reconnect.
    pub stateful_reconnect_buffer: usize,
    /// The relay pings a client to which nothing was sent for this long (default 15 s; the
    /// JS client gives up after 30 s without a message).
    pub client_keep_alive: Duration,
    /// How often the relay pings each server connection (default 5 s; the SDK gives up after
    /// 30 s of silence).
    pub server_ping_interval: Duration,
    /// A server connection silent for this long is dropped (default 30 s).
    pub server_timeout: Duration,
    /// Clock skew allowed when checking token times (default 60 s).
    pub token_leeway: Duration,
    /// Largest number of request headers forwarded to the app server, and their total size.
    pub max_forwarded_headers: usize,
    /// Messages held for a client until the app server has answered its handshake.
    pub max_pending_messages: usize,
    /// When every server connection of an app server carries more clients than this, the
    /// relay asks that app server for one more connection. `0` turns growth off.
    pub clients_per_server_connection: usize,
    /// Cap on server connections one app server may hold per hub.
    pub max_server_connections_per_app: usize,
    /// This relay instance's id (in `target` pings and `Asrs-Instance-Id`).
    pub instance_id: String,
    /// Classic clients: how often a keep-alive goes to a WebSocket or event stream (default
    /// 10 s; negotiate advertises twice this as `KeepAliveTimeout`).
    pub classic_keep_alive: Duration,
    /// Classic clients: how long a connection without a receive channel is kept for its
    /// client to reconnect or poll again (default 30 s, `DisconnectTimeout`).
    pub classic_disconnect_timeout: Duration,
    /// Longest query string on the ASP.NET Core endpoints (default 8 KiB, Kestrel's bound on
    /// the request line); longer is 414. The classic endpoints allow 16 KiB.
    pub max_query_length: usize,
    /// Most client connections held, negotiated or connected (default 100 000); past it,
    /// negotiate is 503.
    pub max_clients: usize,
    /// Most connections, negotiated or connected, that one access token may hold (default
    /// 1000). An app server issues a token per negotiate, but tokens for the same user and
    /// claims minted in the same second are identical, so the default leaves room for
    /// bursts of anonymous clients. Past it, negotiate is 429.
    pub max_connections_per_token: usize,
    /// Most groups one connection, or one user, may be in (default 1000); a join past it
    /// is refused (its ack fails).
    pub max_groups_per_connection: usize,
    /// Longest group name, in bytes (default 1024); a longer one is refused.
    pub max_group_name: usize,
    /// Classic clients: messages kept per connection for `/reconnect` and long polls (default
    /// 1000, the classic server's per-topic buffer; also bounded by `max_long_poll_buffer`
    /// bytes).
    pub classic_buffer_messages: usize,
    /// Proxies whose `X-Forwarded-For` is believed (default none). The app server is told the
    /// client's address as `X-Forwarded-For`: the socket's peer, or, when that is a trusted
    /// proxy, the rightmost address in the header that is not one.
    pub trusted_proxies: Vec<IpRange>,
    /// Whether anyone may read the status (`/api/status`) without a token (default false;
    /// the CLI's dev modes set it). It shows no secret, but it shows the hubs and app
    /// servers.
    pub open_status: bool,
    /// Default, serverless or classic, as Azure names its service modes (default
    /// [`ServiceMode::Default`]).
    pub service_mode: ServiceMode,
    /// How long an upstream request may take (default 60 s); past it, an invocation gets an
    /// error completion.
    pub upstream_timeout: std::time::Duration,
    /// Upstream requests of one hub that may wait for their answer at once (default 1,000);
    /// past it, new ones are dropped and counted (an invocation gets an error completion).
    pub max_upstream_pending: usize,
    /// Largest upstream answer read, for an invocation (default 4 MiB, the largest message an
    /// app server may send: Azure reads 16 MiB, but a client's send queue holds 4 MiB, and up
    /// to `max_upstream_pending` answers of a hub may be read at once). Past it, the
    /// invocation fails with `Invocation failed, response too large.`
    pub max_upstream_response: usize,
    /// This relay as a node of a cluster sharing a backplane (default none: a single relay).
    pub cluster: Option<super::ClusterConfig>,
}

/// Who serves a hub's clients, as Azure SignalR's service modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceMode {
    /// App servers do: a hub without one refuses clients.
    #[default]
    Default,
    /// No app server: clients connect with a token the backend minted, are reached through
    /// the REST API and management connections, and what they send goes upstream. App
    /// servers' own connections are refused (management connections are welcome).
    Serverless,
    /// A hub with app servers as in Default mode; one without them as in Serverless mode.
    Classic,
}

impl ServiceMode {
    /// Its name, as Azure and `--service-mode` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Serverless => "serverless",
            Self::Classic => "classic",
        }
    }
}

impl std::str::FromStr for ServiceMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "default" => Ok(Self::Default),
            "serverless" => Ok(Self::Serverless),
            "classic" => Ok(Self::Classic),
            _ => Err(format!("{s:?}: expected default, serverless or classic")),
        }
    }
}

impl RelayConfig {
    /// Largest single transfer from a client: a WebSocket message or a `POST` body. Clients
    /// batch whatever they have queued into one, so it has room for a few maximal hub
    /// messages (4 × `max_client_message_size`).
    pub fn max_client_payload(&self) -> usize {
        self.max_client_message_size.saturating_mul(4)
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            access_keys: Vec::new(),
            max_client_message_size: 32 * 1024,
            max_server_message_size: service::DEFAULT_MAX_FRAME_LEN,
            handshake_timeout: Duration::from_secs(15),
            negotiate_timeout: Duration::from_secs(15),
            client_timeout: Duration::from_secs(30),
            client_keep_alive: Duration::from_secs(15),
            long_poll_timeout: Duration::from_secs(90),
            allow_stateful_reconnect: true,
            stateful_reconnect_buffer: 100_000,
            max_long_poll_buffer: 1024 * 1024,
            server_ping_interval: Duration::from_secs(5),
            server_timeout: Duration::from_secs(30),
            token_leeway: Duration::from_secs(60),
            max_forwarded_headers: 64,
            max_pending_messages: 1024,
            clients_per_server_connection: 5000,
            max_server_connections_per_app: 50,
            instance_id: "relay-0".to_owned(),
            classic_keep_alive: Duration::from_secs(10),
            classic_disconnect_timeout: Duration::from_secs(30),
            classic_buffer_messages: 1000,
            max_query_length: 8 * 1024,
            max_groups_per_connection: 1000,
            max_group_name: 1024,
            max_clients: 100_000,
            max_connections_per_token: 1000,
            trusted_proxies: Vec::new(),
            open_status: false,
            service_mode: ServiceMode::Default,
            upstream_timeout: Duration::from_secs(60),
            max_upstream_pending: 1000,
            max_upstream_response: 4 * 1024 * 1024,
            cluster: None,
        }
    }
}
