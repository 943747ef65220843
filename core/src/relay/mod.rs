//! The relay: a sans-IO state machine that holds client connections on behalf of app servers.
//!
//! # What goes in and what comes out
//!
//! ```text
//!   HTTP request ──► handle_request ──► RequestOutcome (respond / accept a WebSocket)
//!   WS bytes     ──► handle_data    ─┐
//!   WS closed    ──► handle_closed  ─┼─► poll_output: Transmit / Close   (drain until None)
//!   timer fired  ──► handle_timeout ─┘   poll_timeout: when to call handle_timeout next
//! ```
//!
//! The relay owns no socket and reads no clock: every input carries `now`. Every decision is
//! made here: authentication, which app-server connection a client is mapped to (once, for
//! its lifetime), fan-out of broadcasts, groups and users, keep-alives and timeouts.
//!
//! # The run-loop contract
//!
//! After **every** `handle_*` call, drain [`Relay::poll_output`] until it returns `None`, then
//! re-arm the timer from [`Relay::poll_timeout`]. Time passed in must never go backwards.
//! Calling [`Relay::handle_timeout`] early is harmless. Once an [`Output::Close`] for a
//! handle has come out, the socket or event stream it named is done: ignore its input. A later
//! request may attach a new socket to the same handle (a stateful reconnect, or a classic
//! `/reconnect`); its [`RequestOutcome`] says so, and from then on the handle means the new
//! socket.
//!
//! ```no_run
//! # use signalr_relay_core::relay::*;
//! # fn run(relay: &mut Relay, now: std::time::Instant) {
//! while let Some(output) = relay.poll_output() {
//!     match output {
//!         Output::Transmit { conn, data, binary } => { /* write one WebSocket message */ }
//!         Output::Close { conn, code, reason } => { /* flush, then close that WebSocket */ }
//!         Output::Respond { request, response } => { /* answer that held request */ }
//!     }
//! }
//! let next_wakeup = relay.poll_timeout();
//! # }
//! ```
//!
//! # Connections
//!
//! - **Server connections** (`/server/?hub=…`): an app server's WebSocket, carrying the
//!   service protocol ([`crate::service`]). Many clients are multiplexed on one.
//! - **Client connections** (`/client/?hub=…&id=…`): an ASP.NET Core SignalR client, after
//!   `POST /client/negotiate?hub=…`, over a WebSocket, Server-Sent Events or long polling
//!   (see `transports`; a held long poll is a [`RequestOutcome::Pending`] answered by an
//!   [`Output::Respond`]). The relay reads the client's handshake to learn its hub
//!   protocol, maps it to the least-loaded server connection of its hub, sends that server an
//!   OpenConnection, and from then on relays bytes both ways. The app server answers the
//!   handshake itself.
//! - **Classic client connections** (`/aspnetclient/…`): a classic ASP.NET SignalR 2.x client.
//!   The relay terminates the classic protocol and speaks the ASP.NET Core JSON hub protocol
//!   to the app server on the client's behalf (see `classic`).

mod classic;
pub use self::classic::STATE_HEADER;
mod ids;
mod reframe;
mod stateful;
mod transports;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use self::classic::Classic;
use self::ids::IdGenerator;
use self::reframe::Reframer;
use self::stateful::Stateful;
use self::transports::{Tombstones, Transport};
use crate::aspnetcore::handshake::{
    errors as handshake_errors, HandshakeRequest, HandshakeResponse,
};
use crate::aspnetcore::negotiate::{
    AvailableTransport, ConnectionInfo, NegotiateQuery, NegotiateResponse, TransportKind,
};
use crate::aspnetcore::{Close, FrameDecoder, HubMessage, HubProtocol, TransferFormat};
use crate::auth::{self, Audience, Claims, Validation};
use crate::framing::{write_binary_frame, TextFrameDecoder, RECORD_SEPARATOR};
use crate::service::{self, ServiceDecoder, ServiceMessage};

/// Limits and timings of a [`Relay`]. Every limit is bounded by default.
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
    /// Classic clients: messages kept per connection for `/reconnect` and long polls (default
    /// 1000, the classic server's per-topic buffer; also bounded by `max_long_poll_buffer`
    /// bytes).
    pub classic_buffer_messages: usize,
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
        }
    }
}

/// A WebSocket the relay knows, client or server. Handles are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnHandle(pub u64);

/// An HTTP request, as much of it as the relay reads.
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    /// Request headers, names in any case.
    pub headers: Vec<(String, String)>,
    /// Whether this is a WebSocket upgrade request.
    pub websocket: bool,
    /// The request body (for `POST` sends), already bounded by the adapter.
    pub body: Bytes,
}

impl HttpRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn query_param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.into_owned())
    }

    /// The bearer token, from `Authorization` or the `access_token` query parameter.
    fn bearer_token(&self) -> Option<String> {
        if let Some(value) = self.header("authorization") {
            let mut parts = value.splitn(2, ' ');
            if let (Some(scheme), Some(token)) = (parts.next(), parts.next()) {
                if scheme.eq_ignore_ascii_case("bearer") {
                    return Some(token.trim().to_owned());
                }
            }
        }
        self.query_param("access_token")
    }
}

/// An HTTP response for the adapter to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Bytes,
}

impl HttpResponse {
    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: Bytes::from(body.into()),
        }
    }

    /// A 200 JSON response.
    pub fn json(body: Vec<u8>) -> Self {
        Self {
            status: 200,
            content_type: "application/json",
            body: Bytes::from(body),
        }
    }
}

/// A held HTTP request (a long poll), answered later by [`Output::Respond`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// What to do with an HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum RequestOutcome {
    /// Answer with this response.
    Respond(HttpResponse),
    /// Complete the WebSocket upgrade; its traffic belongs to this handle. If the upgrade
    /// fails, report [`Relay::handle_closed`].
    AcceptWebSocket(ConnHandle),
    /// Start a Server-Sent Events response (`200`, `text/event-stream`, no caching): its body
    /// is the [`Output::Transmit`]s for this handle, and [`Output::Close`] ends it. If the
    /// client goes away, report [`Relay::handle_closed`].
    EventStream(ConnHandle),
    /// Hold the request: its response comes later as an [`Output::Respond`]. If the client
    /// aborts it first, report [`Relay::handle_request_aborted`].
    Pending(RequestId),
}

/// Something the adapter must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Output {
    /// Send one WebSocket message.
    Transmit {
        /// The connection.
        conn: ConnHandle,
        /// The message.
        data: Bytes,
        /// Binary (`true`) or text message.
        binary: bool,
    },
    /// Answer a held request.
    Respond {
        /// The request.
        request: RequestId,
        /// Its response.
        response: HttpResponse,
    },
    /// Send what is queued, then close the WebSocket (or end the event stream) with this
    /// code and reason. The relay has forgotten the connection.
    Close {
        /// The connection.
        conn: ConnHandle,
        /// The WebSocket close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
}

/// `/send` requests of one classic client held for their hub results, at most.
const MAX_HELD_SENDS: usize = 64;

/// Client invocations awaiting their results, at most (each is also dropped when its client
/// goes).
const MAX_PENDING_INVOCATIONS: usize = 65_536;

/// Why the relay dropped an app server's connection; carried to its clients.
const SERVER_GONE: &str = "The app server connection carrying this client was lost (ServerOffline). Reconnect to be mapped to another app server.";

#[derive(Debug)]
enum ClientState {
    /// Negotiated; waiting for the transport.
    Negotiated,
    /// Transport open; waiting for the handshake until `deadline`.
    AwaitingHandshake {
        decoder: TextFrameDecoder,
        deadline: Instant,
    },
    /// Mapped to a server connection.
    Open {
        protocol: HubProtocol,
        server: ConnHandle,
        inbound: FrameDecoder,
        outbound: Reframer,
        /// Messages from multicast paths held until the handshake response has gone out, or
        /// while a partial frame is being reassembled.
        pending: VecDeque<Bytes>,
    },
}

#[derive(Debug)]
struct Client {
    hub: String,
    connection_id: String,
    token: String,
    user_id: Option<String>,
    claims: Vec<(String, String)>,
    headers: Vec<(String, Vec<String>)>,
    query: String,
    transport: Transport,
    state: ClientState,
    deadline: Instant,
    last_received: Instant,
    last_sent: Instant,
    groups: BTreeSet<String>,
    /// Negotiate granted stateful reconnect.
    stateful_allowed: bool,
    /// Stateful reconnect is on (granted, and the handshake asked for version 2).
    stateful: Option<Stateful>,
    /// A classic ASP.NET SignalR client.
    classic: Option<Box<Classic>>,
}

#[derive(Debug)]
struct ServerConn {
    hub: String,
    server_id: String,
    decoder: ServiceDecoder,
    open: bool,
    carries_clients: bool,
    draining: bool,
    clients: BTreeSet<ConnHandle>,
    last_received: Instant,
    next_ping: Instant,
    deadline: Instant,
}

#[derive(Debug, Default)]
struct Hub {
    servers: BTreeSet<ConnHandle>,
    clients: BTreeSet<ConnHandle>,
    groups: BTreeMap<String, BTreeSet<ConnHandle>>,
    users: BTreeMap<String, BTreeSet<ConnHandle>>,
    /// User → group memberships that outlive connections, with their expiry.
    user_groups: BTreeMap<String, BTreeMap<String, Option<Instant>>>,
}

/// A pending client invocation (server → client with result).
#[derive(Debug)]
struct PendingInvocation {
    client: ConnHandle,
    caller: ConnHandle,
}

/// The relay state machine. See the [module documentation](self) for the run loop.
#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    start: Instant,
    start_unix: u64,
    ids: IdGenerator,
    next_handle: u64,
    hubs: BTreeMap<String, Hub>,
    clients: BTreeMap<ConnHandle, Client>,
    servers: BTreeMap<ConnHandle, ServerConn>,
    by_token: BTreeMap<String, ConnHandle>,
    by_connection_id: BTreeMap<String, ConnHandle>,
    invocations: BTreeMap<String, PendingInvocation>,
    tombstones: Tombstones,
    next_request: u64,
    timers: BinaryHeap<Reverse<(Instant, ConnHandle)>>,
    outputs: VecDeque<Output>,
}

impl Relay {
    /// A relay whose clock reads `now` (monotonic) and `now_unix_secs` (wall clock, for token
    /// expiry) at the same moment. `seed` must be random: connection ids and tokens derive
    /// from it.
    pub fn new(config: RelayConfig, now: Instant, now_unix_secs: u64, seed: [u8; 32]) -> Self {
        Self {
            config,
            start: now,
            start_unix: now_unix_secs,
            ids: IdGenerator::new(seed),
            next_handle: 1,
            hubs: BTreeMap::new(),
            clients: BTreeMap::new(),
            servers: BTreeMap::new(),
            by_token: BTreeMap::new(),
            by_connection_id: BTreeMap::new(),
            invocations: BTreeMap::new(),
            tombstones: Tombstones::new(),
            next_request: 1,
            timers: BinaryHeap::new(),
            outputs: VecDeque::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Client connections currently held (negotiated or connected).
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Open server connections.
    pub fn server_connection_count(&self) -> usize {
        self.servers.values().filter(|s| s.open).count()
    }

    /// The next output, if any. Drain after every `handle_*` call.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, conn))) = self.timers.peek().copied() {
            if self.deadline_of(conn) == Some(at) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    fn deadline_of(&self, conn: ConnHandle) -> Option<Instant> {
        self.clients
            .get(&conn)
            .map(|c| c.deadline)
            .or_else(|| self.servers.get(&conn).map(|s| s.deadline))
    }

    fn schedule(&mut self, conn: ConnHandle, at: Instant) {
        if let Some(c) = self.clients.get_mut(&conn) {
            c.deadline = at;
        } else if let Some(s) = self.servers.get_mut(&conn) {
            s.deadline = at;
        } else {
            return;
        }
        self.timers.push(Reverse((at, conn)));
    }

    fn unix_now(&self, now: Instant) -> u64 {
        self.start_unix + now.saturating_duration_since(self.start).as_secs()
    }

    fn new_handle(&mut self) -> ConnHandle {
        let h = ConnHandle(self.next_handle);
        self.next_handle += 1;
        h
    }

    fn keys(&self) -> Vec<&[u8]> {
        self.config
            .access_keys
            .iter()
            .map(|k| k.as_bytes())
            .collect()
    }

    /// Verifies a bearer token for `path` (`/client/` or `/server/`) of `hub`. The audience
    /// must name this path and hub; its host and port are not compared, since the relay may
    /// be reached under several names.
    fn authenticate(
        &self,
        now: Instant,
        req: &HttpRequest,
        path: &str,
        hub: Option<&str>,
    ) -> Result<Claims, HttpResponse> {
        let token = req.bearer_token().ok_or_else(|| {
            HttpResponse::text(
                401,
                "Unauthorized: no access token (Authorization: Bearer, or access_token).",
            )
        })?;
        let keys = self.keys();
        let validation = Validation::new().with_leeway_secs(self.config.token_leeway.as_secs());
        let claims = auth::verify(&token, &keys, self.unix_now(now), &validation)
            .map_err(|e| HttpResponse::text(401, format!("Unauthorized: {e}")))?;
        let audience_ok = claims.aud.iter().any(|aud| {
            Audience::parse(aud).is_ok_and(|a| {
                let expected = Audience::new(a.scheme(), a.host(), path, hub);
                expected.matches(aud)
            })
        });
        if !audience_ok {
            let hub = hub.map(|h| format!("?hub={h}")).unwrap_or_default();
            return Err(HttpResponse::text(
                401,
                format!("Unauthorized: the token's audience is not {path}{hub} on this relay."),
            ));
        }
        Ok(claims)
    }

    /// Routes one HTTP request.
    pub fn handle_request(&mut self, now: Instant, req: &HttpRequest) -> RequestOutcome {
        let path = req.path.trim_end_matches('/');
        let outcome = match (req.method.as_str(), path) {
            (_, "/health") => Ok(RequestOutcome::Respond(HttpResponse::text(200, "ok"))),
            ("POST", "/client/negotiate") => self.negotiate(now, req).map(RequestOutcome::Respond),
            ("GET", "/client") if req.websocket => self.accept_client(now, req),
            ("GET" | "POST" | "DELETE", "/client") => self.client_http(now, req),
            ("GET", "/server") if req.websocket => self.accept_server(now, req),
            (_, p) if p == classic::BASE || p.starts_with("/aspnetclient/") => {
                Ok(self.classic_request(now, req))
            }
            (_, "/client" | "/server" | "/client/negotiate") => Err(HttpResponse::text(
                405,
                "Method or transport not supported on this endpoint.",
            )),
            _ => Err(HttpResponse::text(404, "Not found.")),
        };
        outcome.unwrap_or_else(RequestOutcome::Respond)
    }

    fn hub_param(req: &HttpRequest) -> Result<String, HttpResponse> {
        let hub = req
            .query_param("hub")
            .unwrap_or_default()
            .to_ascii_lowercase();
        if hub.is_empty() || hub.len() > 128 {
            return Err(HttpResponse::text(
                400,
                "The 'hub' query parameter is required.",
            ));
        }
        Ok(hub)
    }

    fn hub_has_servers(&self, hub: &str) -> bool {
        self.hubs.get(hub).is_some_and(|h| {
            h.servers.iter().any(|s| {
                self.servers
                    .get(s)
                    .is_some_and(|s| s.open && s.carries_clients && !s.draining)
            })
        })
    }

    fn negotiate(&mut self, now: Instant, req: &HttpRequest) -> Result<HttpResponse, HttpResponse> {
        let hub = Self::hub_param(req)?;
        let claims = self.authenticate(now, req, "/client/", Some(&hub))?;
        let query = NegotiateQuery::parse(&req.query)
            .map_err(|e| HttpResponse::json(NegotiateResponse::Error(e.to_string()).to_json()))?;
        if !self.hub_has_servers(&hub) {
            return Ok(HttpResponse::json(
                NegotiateResponse::Error(format!(
                    "No app server is connected for hub '{hub}'. Start the app server, or wait for its server connections, and try again."
                ))
                .to_json(),
            ));
        }
        let handle = self.new_handle();
        let (connection_id, token) = self.ids.next_pair();
        let version = query.resolved_version(1);
        let transports = AvailableTransport::all();
        // Stateful reconnect only when the client asks, and over negotiate version 1.
        let stateful =
            query.use_stateful_reconnect && version > 0 && self.config.allow_stateful_reconnect;
        let info = ConnectionInfo {
            negotiate_version: version,
            connection_id: connection_id.clone(),
            connection_token: (version > 0).then(|| token.clone()),
            use_stateful_reconnect: stateful,
            available_transports: transports,
        };
        // A v0 client uses the connection id as its token.
        let key = if version > 0 {
            token
        } else {
            connection_id.clone()
        };
        self.insert_client(now, handle, hub, connection_id, key, &claims, req);
        if let Some(client) = self.clients.get_mut(&handle) {
            client.stateful_allowed = stateful;
        }
        let deadline = now + self.config.negotiate_timeout;
        self.schedule(handle, deadline);
        Ok(HttpResponse::json(
            NegotiateResponse::Connection(info).to_json(),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_client(
        &mut self,
        now: Instant,
        handle: ConnHandle,
        hub: String,
        connection_id: String,
        token: String,
        claims: &Claims,
        req: &HttpRequest,
    ) {
        let client = Client {
            hub: hub.clone(),
            connection_id: connection_id.clone(),
            token: token.clone(),
            user_id: claims.user_id().map(str::to_owned),
            claims: forwarded_claims(claims),
            headers: Vec::new(),
            query: forwarded_query(&req.query),
            transport: Transport::None,
            state: ClientState::Negotiated,
            deadline: now,
            last_received: now,
            last_sent: now,
            groups: BTreeSet::new(),
            stateful_allowed: false,
            stateful: None,
            classic: None,
        };
        self.by_token.insert(token, handle);
        self.by_connection_id.insert(connection_id, handle);
        self.hubs.entry(hub).or_default().clients.insert(handle);
        self.clients.insert(handle, client);
    }

    fn accept_client(
        &mut self,
        now: Instant,
        req: &HttpRequest,
    ) -> Result<RequestOutcome, HttpResponse> {
        let hub = Self::hub_param(req)?;
        let claims = self.authenticate(now, req, "/client/", Some(&hub))?;
        let handle = match req.query_param("id") {
            Some(id) => {
                let handle = *self
                    .by_token
                    .get(&id)
                    .ok_or_else(|| HttpResponse::text(404, "No Connection with that ID"))?;
                let client = self
                    .clients
                    .get(&handle)
                    .ok_or_else(|| HttpResponse::text(404, "No Connection with that ID"))?;
                if client.hub != hub {
                    return Err(HttpResponse::text(404, "No Connection with that ID"));
                }
                let replaces = client.stateful.is_some()
                    && matches!(client.transport, Transport::WebSocket)
                    && matches!(client.state, ClientState::Open { .. });
                if replaces || self.awaits_reconnect(handle) {
                    if client.user_id.as_deref() != claims.user_id() {
                        return Err(HttpResponse::text(
                            403,
                            "The token's user does not own this connection.",
                        ));
                    }
                    if replaces {
                        // The client came back before the relay saw its old socket go: the
                        // client has given up on that socket, so the new one replaces it.
                        self.outputs.push_back(Output::Close {
                            conn: handle,
                            code: 1000,
                            reason: "Replaced by the client's reconnect.".into(),
                        });
                        self.transport_lost(now, handle);
                    }
                    // A stateful reconnect: no negotiate, no handshake.
                    self.resume(now, handle);
                    return Ok(RequestOutcome::AcceptWebSocket(handle));
                }
                if let Some(kind) = client.transport.kind() {
                    if kind != TransportKind::WebSockets {
                        return Err(HttpResponse::text(
                            400,
                            "Cannot change transports mid-connection",
                        ));
                    }
                    return Err(HttpResponse::text(
                        409,
                        "Another transport is already connected for this connection ID.",
                    ));
                }
                if client.user_id.as_deref() != claims.user_id() {
                    return Err(HttpResponse::text(
                        403,
                        "The token's user does not own this connection.",
                    ));
                }
                handle
            }
            None => {
                // skipNegotiation: the connection is created at upgrade time.
                if !self.hub_has_servers(&hub) {
                    return Err(HttpResponse::text(
                        503,
                        format!("No app server is connected for hub '{hub}'."),
                    ));
                }
                let handle = self.new_handle();
                let (connection_id, token) = self.ids.next_pair();
                self.insert_client(now, handle, hub, connection_id, token, &claims, req);
                handle
            }
        };
        self.attach_transport(now, handle, Transport::WebSocket, req);
        Ok(RequestOutcome::AcceptWebSocket(handle))
    }

    fn accept_server(
        &mut self,
        now: Instant,
        req: &HttpRequest,
    ) -> Result<RequestOutcome, HttpResponse> {
        let hub = Self::hub_param(req)?;
        let claims = self.authenticate(now, req, "/server/", Some(&hub))?;
        let server_id = req
            .header("x-asrs-server-id")
            .map(str::to_owned)
            .or_else(|| claims.nameid.clone())
            .unwrap_or_else(|| "anonymous-server".to_owned());
        let handle = self.new_handle();
        self.servers.insert(
            handle,
            ServerConn {
                hub: hub.clone(),
                server_id,
                decoder: ServiceDecoder::new(self.config.max_server_message_size),
                open: false,
                carries_clients: false,
                draining: false,
                clients: BTreeSet::new(),
                last_received: now,
                next_ping: now + self.config.server_ping_interval,
                deadline: now,
            },
        );
        self.hubs.entry(hub).or_default().servers.insert(handle);
        let deadline = now + self.config.handshake_timeout;
        self.schedule(handle, deadline);
        Ok(RequestOutcome::AcceptWebSocket(handle))
    }

    /// Bytes received on a WebSocket (the payload of one message, text or binary).
    pub fn handle_data(&mut self, now: Instant, conn: ConnHandle, data: &[u8]) {
        if self.clients.contains_key(&conn) {
            self.client_data(now, conn, data);
        } else if self.servers.contains_key(&conn) {
            self.server_data(now, conn, data);
        }
    }

    /// The WebSocket closed (or failed to upgrade). No [`Output::Close`] follows for it.
    pub fn handle_closed(&mut self, now: Instant, conn: ConnHandle) {
        if self.clients.contains_key(&conn) {
            if self.classic_transport_lost(now, conn) || self.transport_lost(now, conn) {
                // A stateful client: it has the window to come back.
                return;
            }
            self.remove_client(now, conn, None, true);
        } else if self.servers.contains_key(&conn) {
            self.remove_server(now, conn, None);
        }
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, conn))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.deadline_of(conn) != Some(at) {
                continue;
            }
            if self.clients.contains_key(&conn) {
                self.client_timer(now, conn);
            } else {
                self.server_timer(now, conn);
            }
        }
    }

    // ---------------------------------------------------------------- clients

    fn client_timer(&mut self, now: Instant, conn: ConnHandle) {
        if self
            .clients
            .get(&conn)
            .is_some_and(|c| c.classic.is_some() && matches!(c.state, ClientState::Open { .. }))
        {
            return self.classic_timer(now, conn);
        }
        if self.stateful_timer(now, conn) {
            return;
        }
        if self.awaits_reconnect(conn) {
            // Its client may still come back; nothing else runs meanwhile.
            return self.reschedule_client(conn);
        }
        let Some(client) = self.clients.get(&conn) else {
            return;
        };
        let long_polling = matches!(client.transport, Transport::LongPolling(_));
        match &client.state {
            ClientState::Negotiated => return self.remove_client(now, conn, None, false),
            ClientState::AwaitingHandshake { deadline, .. } if now >= *deadline => {
                let mut frame = Vec::new();
                HandshakeResponse::error(handshake_errors::CANCELED).write(&mut frame);
                self.emit(now, conn, frame.into(), false);
                return self.remove_client(
                    now,
                    conn,
                    Some((1000, "Handshake was canceled.")),
                    false,
                );
            }
            // Long polling keeps itself alive: each poll proves the client is there.
            ClientState::Open { .. } if !long_polling => {
                if now >= client.last_received + self.config.client_timeout {
                    return self.close_client_with_message(
                        now,
                        conn,
                        "Client hasn't sent a message/ping within the configured ClientTimeoutInterval.",
                        true,
                    );
                }
                if now >= client.last_sent + self.config.client_keep_alive {
                    self.ping_client(now, conn);
                }
            }
            ClientState::AwaitingHandshake { .. } | ClientState::Open { .. } => {}
        }
        if long_polling && self.long_poll_timer(now, conn) {
            return;
        }
        self.reschedule_client(conn);
    }

    /// Re-arms a client's timer from its state.
    fn reschedule_client(&mut self, conn: ConnHandle) {
        let Some(client) = self.clients.get(&conn) else {
            return;
        };
        if let (Some(classic), ClientState::Open { .. }) = (&client.classic, &client.state) {
            if let Some(at) = classic.deadline(&self.config) {
                self.schedule(conn, at);
            }
            return;
        }
        let long_poll = match &client.transport {
            Transport::LongPolling(lp) => Some(lp.deadline(self.config.negotiate_timeout)),
            Transport::None | Transport::WebSocket | Transport::ServerSentEvents => None,
        };
        let stateful = client
            .stateful
            .as_ref()
            .and_then(|s| s.deadline(self.config.negotiate_timeout));
        if client
            .stateful
            .as_ref()
            .is_some_and(|s| s.lost_at.is_some())
        {
            return self.schedule(conn, stateful.unwrap_or(client.deadline));
        }
        let own = match &client.state {
            ClientState::Negotiated => Some(client.deadline),
            ClientState::AwaitingHandshake { deadline, .. } => Some(*deadline),
            ClientState::Open { .. } if long_poll.is_some() => None,
            ClientState::Open { .. } => Some(
                (client.last_received + self.config.client_timeout)
                    .min(client.last_sent + self.config.client_keep_alive),
            ),
        };
        if let Some(next) = own.into_iter().chain(long_poll).chain(stateful).min() {
            self.schedule(conn, next);
        }
    }

    fn client_data(&mut self, now: Instant, conn: ConnHandle, data: &[u8]) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        if client.classic.is_some() {
            return self.classic_client_data(now, conn, data);
        }
        client.last_received = now;
        match &mut client.state {
            ClientState::Negotiated => {}
            ClientState::AwaitingHandshake { decoder, .. } => {
                decoder.push(data);
                match decoder.next_frame() {
                    Ok(Some(frame)) => {
                        let rest = decoder.take_buffered();
                        self.client_handshake(now, conn, &frame, rest);
                    }
                    Ok(None) => {}
                    Err(_) => self.reject_handshake(now, conn, handshake_errors::CANCELED),
                }
            }
            ClientState::Open { .. } => self.client_frames(now, conn, data),
        }
    }

    /// Sends a keep-alive Ping, when the client can take one: after its handshake response,
    /// and not in the middle of a reassembled frame.
    fn ping_client(&mut self, now: Instant, conn: ConnHandle) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        // Counts as sent even when it has to wait, so that pings do not pile up.
        client.last_sent = now;
        let ClientState::Open {
            protocol,
            outbound,
            pending,
            ..
        } = &mut client.state
        else {
            return;
        };
        let frame: &'static [u8] = match protocol {
            HubProtocol::Json => b"{\"type\":6}\x1e",
            HubProtocol::MessagePack => b"\x02\x91\x06",
        };
        let binary = *protocol == HubProtocol::MessagePack;
        if outbound.handshake_done() && outbound.is_idle() && pending.is_empty() {
            self.emit(now, conn, Bytes::from_static(frame), binary);
        }
    }

    fn reject_handshake(&mut self, now: Instant, conn: ConnHandle, error: &str) {
        let mut frame = Vec::new();
        HandshakeResponse::error(error).write(&mut frame);
        self.emit(now, conn, frame.into(), false);
        self.remove_client(now, conn, Some((1000, "Handshake failed.")), false);
    }

    fn pick_server(&self, hub: &str) -> Option<ConnHandle> {
        let hub = self.hubs.get(hub)?;
        hub.servers
            .iter()
            .filter_map(|h| self.servers.get(h).map(|s| (h, s)))
            .filter(|(_, s)| s.open && s.carries_clients && !s.draining)
            .min_by_key(|(h, s)| (s.clients.len(), **h))
            .map(|(h, _)| *h)
    }

    fn client_handshake(&mut self, now: Instant, conn: ConnHandle, frame: &[u8], rest: BytesMut) {
        let Ok(request) = HandshakeRequest::parse(frame) else {
            return self.reject_handshake(now, conn, handshake_errors::UNEXPECTED);
        };
        let Some(protocol) = HubProtocol::from_name(&request.protocol) else {
            return self.reject_handshake(
                now,
                conn,
                &handshake_errors::unsupported_protocol(&request.protocol),
            );
        };
        if request.version > protocol.version() {
            return self.reject_handshake(
                now,
                conn,
                &handshake_errors::unsupported_version(&request.protocol, request.version),
            );
        }
        let Some(client) = self.clients.get(&conn) else {
            return;
        };
        if matches!(client.transport, Transport::ServerSentEvents)
            && protocol.transfer_format() == TransferFormat::Binary
        {
            return self.reject_handshake(
                now,
                conn,
                &handshake_errors::wrong_transfer_format(&request.protocol, "Binary"),
            );
        }
        let Some(server) = self.pick_server(&client.hub) else {
            return self.reject_handshake(
                now,
                conn,
                &format!("No app server is connected for hub '{}'.", client.hub),
            );
        };
        // The relay handles stateful reconnect itself: the app server is told version 1.
        let mut handshake = Vec::new();
        HandshakeRequest {
            protocol: request.protocol.clone(),
            version: request.version.min(1),
        }
        .write(&mut handshake);
        self.open_logical_connection(now, conn, server, protocol, handshake);
        if let Some(client) = self.clients.get_mut(&conn) {
            let stateful = request.version >= 2
                && client.stateful_allowed
                && matches!(client.transport, Transport::WebSocket);
            client.stateful = stateful.then(Stateful::new);
        }
        if !rest.is_empty() {
            self.client_frames(now, conn, &rest);
        }
    }

    /// Maps a client to `server`: OpenConnection, then `handshake` as its first
    /// ConnectionData. The client is open from then on.
    fn open_logical_connection(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        server: ConnHandle,
        protocol: HubProtocol,
        handshake: Vec<u8>,
    ) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        // Needed once: the app server keeps them from here on.
        let open = ServiceMessage::OpenConnection(service::OpenConnection {
            connection_id: client.connection_id.clone(),
            claims: std::mem::take(&mut client.claims),
            headers: std::mem::take(&mut client.headers),
            query_string: std::mem::take(&mut client.query),
            ext: service::Ext {
                protocol: Some(protocol.name().to_owned()),
                ..service::Ext::default()
            },
        });
        let data = ServiceMessage::ConnectionData(service::ConnectionData {
            connection_id: client.connection_id.clone(),
            payload: Bytes::from(handshake),
            ext: service::Ext::default(),
        });
        let mut out = Vec::new();
        let _ = open.write(&mut out);
        let _ = data.write(&mut out);
        self.outputs.push_back(Output::Transmit {
            conn: server,
            data: out.into(),
            binary: true,
        });
        if let Some(s) = self.servers.get_mut(&server) {
            s.clients.insert(conn);
        }
        let max_in = self.config.max_client_message_size;
        let max_out = self.config.max_server_message_size;
        let user = match self.clients.get_mut(&conn) {
            Some(client) => {
                client.state = ClientState::Open {
                    protocol,
                    server,
                    inbound: protocol.frame_decoder(max_in),
                    outbound: Reframer::new(
                        protocol.transfer_format() == TransferFormat::Binary,
                        max_out,
                    ),
                    pending: VecDeque::new(),
                };
                client.user_id.clone().map(|u| (client.hub.clone(), u))
            }
            None => None,
        };
        if let Some((hub, user)) = user {
            self.attach_user(now, conn, &hub, &user);
        }
        self.reschedule_client(conn);
        self.maybe_grow(server);
    }

    fn attach_user(&mut self, now: Instant, conn: ConnHandle, hub: &str, user: &str) {
        let Some(h) = self.hubs.get_mut(hub) else {
            return;
        };
        h.users.entry(user.to_owned()).or_default().insert(conn);
        let groups: Vec<String> = h
            .user_groups
            .get(user)
            .map(|g| {
                g.iter()
                    .filter(|(_, exp)| exp.is_none_or(|e| e > now))
                    .map(|(g, _)| g.clone())
                    .collect()
            })
            .unwrap_or_default();
        for g in groups {
            self.join_group(conn, &g);
        }
    }

    /// Forwards whole client frames to the client's server connection.
    fn client_frames(&mut self, now: Instant, conn: ConnHandle, data: &[u8]) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        let ClientState::Open {
            protocol,
            server,
            inbound,
            ..
        } = &mut client.state
        else {
            return;
        };
        let (protocol, server) = (*protocol, *server);
        inbound.push(data);
        let mut frames = Vec::new();
        let mut failed = false;
        loop {
            match inbound.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        let id = client.connection_id.clone();
        let stateful = client.stateful.is_some();
        let mut payload = Vec::new();
        for frame in frames {
            if stateful && !self.track_incoming(now, conn, protocol, &frame) {
                continue;
            }
            match protocol {
                HubProtocol::Json => {
                    payload.extend_from_slice(&frame);
                    payload.push(RECORD_SEPARATOR);
                }
                HubProtocol::MessagePack => {
                    let _ = write_binary_frame(&frame, &mut payload);
                }
            }
        }
        self.forward_to_server(server, &id, payload);
        if failed {
            let error = format!(
                "Message exceeds the maximum size of {} bytes, or is malformed.",
                self.config.max_client_message_size
            );
            self.close_client_with_message(now, conn, &error, false);
        }
    }

    fn forward_to_server(&mut self, server: ConnHandle, connection_id: &str, payload: Vec<u8>) {
        if payload.is_empty() || connection_id.is_empty() {
            return;
        }
        let msg = ServiceMessage::ConnectionData(service::ConnectionData {
            connection_id: connection_id.to_owned(),
            payload: Bytes::from(payload),
            ext: service::Ext::default(),
        });
        self.send_to_server(server, &msg);
    }

    fn send_to_server(&mut self, server: ConnHandle, msg: &ServiceMessage) {
        let mut out = Vec::new();
        if msg.write(&mut out).is_ok() {
            self.outputs.push_back(Output::Transmit {
                conn: server,
                data: out.into(),
                binary: true,
            });
        }
    }

    /// Sends a SignalR Close message in the client's protocol, then closes it.
    fn close_client_with_message(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        error: &str,
        allow_reconnect: bool,
    ) {
        if let Some(Client {
            state: ClientState::Open {
                protocol, outbound, ..
            },
            ..
        }) = self.clients.get(&conn)
        {
            if outbound.handshake_done() {
                let mut frame = Vec::new();
                let close = HubMessage::Close(Close {
                    error: Some(error.to_owned()),
                    allow_reconnect,
                });
                if protocol.write_message(&close, &mut frame).is_ok() {
                    let binary = *protocol == HubProtocol::MessagePack;
                    self.emit(now, conn, frame.into(), binary);
                }
            }
        }
        self.remove_client(now, conn, Some((1000, error)), true);
    }

    /// Forgets a client. `close` sends an [`Output::Close`] with that code and reason (when a
    /// transport is attached); `notify` tells its app server.
    fn remove_client(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        close: Option<(u16, &str)>,
        notify: bool,
    ) {
        let Some(mut client) = self.clients.remove(&conn) else {
            return;
        };
        if let Some(classic) = client.classic.take() {
            self.classic_end(*classic);
        }
        self.by_token.remove(&client.token);
        self.by_connection_id.remove(&client.connection_id);
        if let Some(hub) = self.hubs.get_mut(&client.hub) {
            hub.clients.remove(&conn);
            for g in &client.groups {
                if let Some(members) = hub.groups.get_mut(g) {
                    members.remove(&conn);
                    if members.is_empty() {
                        hub.groups.remove(g);
                    }
                }
            }
            if let Some(user) = &client.user_id {
                if let Some(conns) = hub.users.get_mut(user) {
                    conns.remove(&conn);
                    if conns.is_empty() {
                        hub.users.remove(user);
                    }
                }
            }
        }
        if let ClientState::Open { server, .. } = client.state {
            if let Some(s) = self.servers.get_mut(&server) {
                s.clients.remove(&conn);
            }
            // Not to a server connection that is itself gone.
            if notify && self.servers.contains_key(&server) {
                let msg = ServiceMessage::CloseConnection(service::CloseConnection {
                    connection_id: client.connection_id.clone(),
                    ..service::CloseConnection::default()
                });
                self.send_to_server(server, &msg);
            }
            self.fail_invocations_of(conn, &client.connection_id, "Connection disconnected.");
        }
        self.end_transport(now, conn, client.transport, &client.token, close);
    }

    fn fail_invocations_of(&mut self, client: ConnHandle, connection_id: &str, error: &str) {
        let failed: Vec<String> = self
            .invocations
            .iter()
            .filter(|(_, p)| p.client == client)
            .map(|(id, _)| id.clone())
            .collect();
        for id in failed {
            if let Some(p) = self.invocations.remove(&id) {
                let caller_id = self
                    .servers
                    .get(&p.caller)
                    .map(|s| s.server_id.clone())
                    .unwrap_or_default();
                let msg = ServiceMessage::ErrorCompletion(service::ErrorCompletion {
                    invocation_id: id,
                    connection_id: connection_id.to_owned(),
                    caller_server_id: caller_id,
                    error: Some(error.to_owned()),
                    ext: service::Ext::default(),
                });
                self.send_to_server(p.caller, &msg);
            }
        }
    }

    /// Delivers bytes from an app server to a client: reassembled into whole frames, with
    /// multicast traffic held until the handshake response has gone out.
    fn deliver_connection_data(&mut self, now: Instant, conn: ConnHandle, payload: Bytes) {
        let Some((protocol, outbound, pending)) = self.open_client(now, conn) else {
            return;
        };
        let binary = protocol == HubProtocol::MessagePack;
        let Ok(reframed) = outbound.push(payload) else {
            return self.close_client_with_message(
                now,
                conn,
                "The app server sent a message larger than the relay's limit.",
                false,
            );
        };
        let ready = outbound.handshake_done() && outbound.is_idle();
        let held = if ready {
            std::mem::take(pending)
        } else {
            VecDeque::new()
        };
        for data in reframed.data.into_iter().chain(held) {
            self.emit(now, conn, data, binary);
        }
    }

    /// Delivers a whole pre-encoded message from a multicast path, in the client's protocol.
    fn deliver_message(&mut self, now: Instant, conn: ConnHandle, payloads: &service::Payloads) {
        let max_pending = self.config.max_pending_messages;
        let Some((protocol, outbound, pending)) = self.open_client(now, conn) else {
            return;
        };
        let Some(data) = payloads.get(protocol.name()) else {
            return;
        };
        let binary = protocol == HubProtocol::MessagePack;
        if outbound.handshake_done() && outbound.is_idle() && pending.is_empty() {
            let data = data.clone();
            self.emit(now, conn, data, binary);
        } else if pending.len() < max_pending {
            pending.push_back(data.clone());
        } else {
            self.close_client_with_message(
                now,
                conn,
                "Too many messages queued before the handshake completed.",
                true,
            );
        }
    }

    /// The output side of an open client, marking it as just written to (for keep-alives).
    fn open_client(
        &mut self,
        now: Instant,
        conn: ConnHandle,
    ) -> Option<(HubProtocol, &mut Reframer, &mut VecDeque<Bytes>)> {
        let client = self.clients.get_mut(&conn)?;
        client.last_sent = now;
        match &mut client.state {
            ClientState::Open {
                protocol,
                outbound,
                pending,
                ..
            } => Some((*protocol, outbound, pending)),
            ClientState::Negotiated | ClientState::AwaitingHandshake { .. } => None,
        }
    }

    // ---------------------------------------------------------------- servers

    fn server_timer(&mut self, now: Instant, conn: ConnHandle) {
        let Some(s) = self.servers.get_mut(&conn) else {
            return;
        };
        if !s.open {
            return self.remove_server(now, conn, Some("Handshake timed out."));
        }
        if now >= s.last_received + self.config.server_timeout {
            return self.remove_server(
                now,
                conn,
                Some("The app server sent nothing within the server timeout."),
            );
        }
        if now >= s.next_ping {
            s.next_ping = now + self.config.server_ping_interval;
            self.send_to_server(conn, &ServiceMessage::Ping(service::Ping::default()));
        }
        let Some(s) = self.servers.get(&conn) else {
            return;
        };
        let next = s
            .next_ping
            .min(s.last_received + self.config.server_timeout);
        self.schedule(conn, next);
    }

    fn server_data(&mut self, now: Instant, conn: ConnHandle, data: &[u8]) {
        let mut messages = Vec::new();
        let mut fatal = None;
        if let Some(s) = self.servers.get_mut(&conn) {
            s.last_received = now;
            s.decoder.push(data);
            loop {
                match s.decoder.next_message() {
                    Ok(Some(m)) => messages.push(m),
                    Ok(None) => break,
                    Err(e) => {
                        fatal = Some(e.to_string());
                        break;
                    }
                }
            }
        }
        for m in messages {
            if !self.servers.contains_key(&conn) {
                return;
            }
            self.server_message(now, conn, m);
        }
        if let Some(error) = fatal {
            self.remove_server(
                now,
                conn,
                Some(&format!("Invalid data from the app server: {error}")),
            );
        }
    }

    fn server_message(&mut self, now: Instant, conn: ConnHandle, msg: ServiceMessage) {
        let Some(s) = self.servers.get(&conn) else {
            return;
        };
        if !s.open {
            return self.server_handshake(now, conn, msg);
        }
        let hub = s.hub.clone();
        match msg {
            ServiceMessage::Ping(ping) => self.server_ping(conn, &hub, ping),
            ServiceMessage::ConnectionData(m) => {
                if let Some(&client) = self.by_connection_id.get(&m.connection_id) {
                    self.deliver_connection_data(now, client, m.payload);
                }
            }
            ServiceMessage::CloseConnection(m) => {
                if let Some(&client) = self.by_connection_id.get(&m.connection_id) {
                    let reason = if m.error_message.is_empty() {
                        "Closed by the app server."
                    } else {
                        &m.error_message
                    };
                    let reason = reason.to_owned();
                    self.remove_client(now, client, Some((1000, &reason)), false);
                }
            }
            ServiceMessage::MultiConnectionData(m) => {
                for id in &m.connection_ids {
                    if let Some(&client) = self.by_connection_id.get(id) {
                        self.deliver_message(now, client, &m.payloads);
                    }
                }
            }
            ServiceMessage::UserData(m) => {
                let targets = self.user_connections(&hub, &m.user_id);
                self.deliver_many(now, &targets, &m.payloads);
            }
            ServiceMessage::MultiUserData(m) => {
                let mut targets = BTreeSet::new();
                for u in &m.user_ids {
                    targets.extend(self.user_connections(&hub, u));
                }
                self.deliver_many(now, &targets.into_iter().collect::<Vec<_>>(), &m.payloads);
            }
            ServiceMessage::BroadcastData(m) => {
                let excluded = self.handles_of(&m.excluded_connection_ids);
                let targets: Vec<ConnHandle> = self
                    .hubs
                    .get(&hub)
                    .map(|h| {
                        h.clients
                            .iter()
                            .filter(|c| !excluded.contains(c))
                            .copied()
                            .collect()
                    })
                    .unwrap_or_default();
                self.deliver_many(now, &targets, &m.payloads);
            }
            ServiceMessage::GroupBroadcastData(m) => {
                let excluded = self.handles_of(&m.excluded_connection_ids);
                let targets: Vec<ConnHandle> = self
                    .group_members(&hub, &m.group)
                    .into_iter()
                    .filter(|c| !excluded.contains(c))
                    .filter(|c| {
                        m.excluded_user_ids.is_empty()
                            || !self
                                .clients
                                .get(c)
                                .and_then(|cl| cl.user_id.as_ref())
                                .is_some_and(|u| m.excluded_user_ids.contains(u))
                    })
                    .collect();
                self.deliver_many(now, &targets, &m.payloads);
            }
            ServiceMessage::MultiGroupBroadcastData(m) => {
                let mut targets = BTreeSet::new();
                for g in &m.groups {
                    targets.extend(self.group_members(&hub, g));
                }
                self.deliver_many(now, &targets.into_iter().collect::<Vec<_>>(), &m.payloads);
            }
            ServiceMessage::JoinGroup(m) => {
                if let Some(&client) = self.by_connection_id.get(&m.connection_id) {
                    self.join_group(client, &m.group);
                }
            }
            ServiceMessage::LeaveGroup(m) => {
                if let Some(&client) = self.by_connection_id.get(&m.connection_id) {
                    self.leave_group(client, &m.group);
                }
            }
            ServiceMessage::JoinGroupWithAck(m) => {
                let ok = match (
                    self.by_connection_id.get(&m.connection_id).copied(),
                    &m.group,
                ) {
                    (Some(client), Some(group)) => {
                        self.join_group(client, group);
                        true
                    }
                    _ => false,
                };
                self.ack(conn, m.ack_id, ok);
            }
            ServiceMessage::LeaveGroupWithAck(m) => {
                let ok = match self.by_connection_id.get(&m.connection_id).copied() {
                    Some(client) => {
                        match &m.group {
                            Some(group) => self.leave_group(client, group),
                            None => self.leave_all_groups(client),
                        }
                        true
                    }
                    None => false,
                };
                self.ack(conn, m.ack_id, ok);
            }
            ServiceMessage::UserJoinGroup(m) => {
                self.user_join_group(
                    now,
                    &hub,
                    &m.user_id,
                    m.group.as_deref().unwrap_or_default(),
                    m.ext.ttl,
                );
            }
            ServiceMessage::UserLeaveGroup(m) => {
                self.user_leave_group(&hub, &m.user_id, m.group.as_deref())
            }
            ServiceMessage::UserJoinGroupWithAck(m) => {
                let group = m.group.as_deref().unwrap_or_default();
                self.user_join_group(now, &hub, &m.user_id, group, m.ext.ttl);
                self.ack(conn, m.ack_id, true);
            }
            ServiceMessage::UserLeaveGroupWithAck(m) => {
                self.user_leave_group(&hub, &m.user_id, m.group.as_deref());
                self.ack(conn, m.ack_id, true);
            }
            ServiceMessage::CheckUserInGroupWithAck(m) => {
                let group = m.group.unwrap_or_default();
                let ok = self.user_connections(&hub, &m.user_id).iter().any(|c| {
                    self.clients
                        .get(c)
                        .is_some_and(|cl| cl.groups.contains(&group))
                }) || self.hubs.get(&hub).is_some_and(|h| {
                    h.user_groups.get(&m.user_id).is_some_and(|g| {
                        g.get(&group).is_some_and(|exp| exp.is_none_or(|e| e > now))
                    })
                });
                self.ack(conn, m.ack_id, ok);
            }
            ServiceMessage::CheckGroupExistenceWithAck(m) => {
                let ok = !self.group_members(&hub, &m.id).is_empty();
                self.ack(conn, m.ack_id, ok);
            }
            ServiceMessage::CheckConnectionExistenceWithAck(m) => {
                let ok = self.by_connection_id.contains_key(&m.id);
                self.ack(conn, m.ack_id, ok);
            }
            ServiceMessage::CheckUserExistenceWithAck(m) => {
                let ok = !self.user_connections(&hub, &m.id).is_empty();
                self.ack(conn, m.ack_id, ok);
            }
            ServiceMessage::CloseConnectionWithAck(m) => {
                let ok = match self.by_connection_id.get(&m.connection_id).copied() {
                    Some(client) => {
                        let reason = m
                            .reason
                            .unwrap_or_else(|| "Closed by the app server.".to_owned());
                        self.close_client_with_message(now, client, &reason, false);
                        true
                    }
                    None => false,
                };
                self.ack(conn, m.ack_id, ok);
            }
            ServiceMessage::CloseConnectionsWithAck(m) => {
                let targets = self
                    .hubs
                    .get(&hub)
                    .map(|h| h.clients.iter().copied().collect())
                    .unwrap_or_default();
                self.close_with_ack(now, conn, m, targets);
            }
            ServiceMessage::CloseUserConnectionsWithAck(m) => {
                let targets = self.user_connections(&hub, &m.target);
                self.close_with_ack(now, conn, m, targets);
            }
            ServiceMessage::CloseGroupConnectionsWithAck(m) => {
                let targets = self.group_members(&hub, &m.target);
                self.close_with_ack(now, conn, m, targets);
            }
            ServiceMessage::ClientInvocation(m) => self.client_invocation(now, conn, m),
            ServiceMessage::ClientCompletion(m) => {
                if let Some(p) = self.invocations.remove(&m.invocation_id) {
                    if !self.same_app_server(p.caller, conn) {
                        self.send_to_server(p.caller, &ServiceMessage::ClientCompletion(m));
                    }
                }
            }
            ServiceMessage::ErrorCompletion(m) => {
                if let Some(p) = self.invocations.remove(&m.invocation_id) {
                    if !self.same_app_server(p.caller, conn) {
                        self.send_to_server(p.caller, &ServiceMessage::ErrorCompletion(m));
                    }
                }
            }
            ServiceMessage::AccessKeyRequest(_) => {
                let msg = ServiceMessage::AccessKeyResponse(service::AccessKeyResponse {
                    error_type: Some("NotSupported".to_owned()),
                    error_message: Some(
                        "This relay supports access-key authentication only.".to_owned(),
                    ),
                    ..service::AccessKeyResponse::default()
                });
                self.send_to_server(conn, &msg);
            }
            ServiceMessage::GroupMemberQuery(m) => {
                // Answered with NotFound: member listing is not offered yet.
                self.ack(conn, m.ack_id, false);
            }
            // Messages only the relay sends, or that need no action here.
            ServiceMessage::HandshakeRequest(_)
            | ServiceMessage::HandshakeResponse(_)
            | ServiceMessage::OpenConnection(_)
            | ServiceMessage::ServiceError(_)
            | ServiceMessage::Ack(_)
            | ServiceMessage::ServiceEvent(_)
            | ServiceMessage::AccessKeyResponse(_)
            | ServiceMessage::ServiceMapping(_)
            | ServiceMessage::ConnectionReconnect(_)
            | ServiceMessage::ConnectionFlowControl(_)
            | ServiceMessage::Unknown { .. } => {}
        }
    }

    fn server_handshake(&mut self, now: Instant, conn: ConnHandle, msg: ServiceMessage) {
        let ServiceMessage::HandshakeRequest(req) = msg else {
            return self.remove_server(
                now,
                conn,
                Some("The first message must be a HandshakeRequest."),
            );
        };
        if req.version != 1 {
            let response = ServiceMessage::HandshakeResponse(service::HandshakeResponse {
                error_message: format!(
                    "Protocol version {} is not supported; this relay speaks version 1.",
                    req.version
                ),
                ..service::HandshakeResponse::default()
            });
            self.send_to_server(conn, &response);
            return self.remove_server(now, conn, Some("Unsupported protocol version."));
        }
        let Some(s) = self.servers.get_mut(&conn) else {
            return;
        };
        s.open = true;
        s.carries_clients = req.connection_type != service::ConnectionType::Weak;
        s.next_ping = now + self.config.server_ping_interval;
        let response = ServiceMessage::HandshakeResponse(service::HandshakeResponse {
            connection_id: Some(format!("server-{}", conn.0)),
            ..service::HandshakeResponse::default()
        });
        self.send_to_server(conn, &response);
        let next = now + self.config.server_ping_interval;
        self.schedule(conn, next);
    }

    fn server_ping(&mut self, conn: ConnHandle, hub: &str, ping: service::Ping) {
        if ping.get("echo").is_some() {
            return self.send_to_server(conn, &ServiceMessage::Ping(ping));
        }
        if ping.get("status").is_some() {
            let has_clients = self.hubs.get(hub).is_some_and(|h| !h.clients.is_empty());
            let reply = service::Ping::pairs([("status", if has_clients { "1" } else { "0" })]);
            return self.send_to_server(conn, &ServiceMessage::Ping(reply));
        }
        if let Some(fin) = ping.get("shutdown") {
            if fin.starts_with("fin") {
                let server_id = self
                    .servers
                    .get(&conn)
                    .map(|s| s.server_id.clone())
                    .unwrap_or_default();
                for s in self
                    .servers
                    .values_mut()
                    .filter(|s| s.server_id == server_id && s.hub == hub)
                {
                    s.draining = true;
                }
                let reply = service::Ping::pairs([("shutdown", "finack")]);
                return self.send_to_server(conn, &ServiceMessage::Ping(reply));
            }
        }
        if ping.get("servers").is_some() {
            let mut ids: Vec<&str> = self
                .hubs
                .get(hub)
                .map(|h| {
                    h.servers
                        .iter()
                        .filter_map(|s| self.servers.get(s))
                        .map(|s| s.server_id.as_str())
                        .collect()
                })
                .unwrap_or_default();
            ids.sort_unstable();
            ids.dedup();
            let value = format!("0:{}", ids.join(";"));
            let reply = service::Ping::pairs([("servers", value.as_str())]);
            self.send_to_server(conn, &ServiceMessage::Ping(reply));
        }
    }

    /// Asks the app server behind `server` for one more connection when all of its server
    /// connections in the hub are past the configured load.
    fn maybe_grow(&mut self, server: ConnHandle) {
        let per = self.config.clients_per_server_connection;
        if per == 0 {
            return;
        }
        let Some(s) = self.servers.get(&server) else {
            return;
        };
        let siblings: Vec<&ServerConn> = self
            .servers
            .values()
            .filter(|o| o.hub == s.hub && o.server_id == s.server_id && o.open && o.carries_clients)
            .collect();
        let load = siblings.iter().map(|o| o.clients.len()).sum::<usize>();
        // Ask exactly when the load crosses a multiple of the threshold, so that one request
        // goes out per step.
        if siblings.len() < self.config.max_server_connections_per_app
            && load >= per * siblings.len()
            && load % per == 0
        {
            let ping = service::Ping::pairs([("target", self.config.instance_id.as_str())]);
            self.send_to_server(server, &ServiceMessage::Ping(ping));
        }
    }

    fn client_invocation(
        &mut self,
        now: Instant,
        caller: ConnHandle,
        m: service::ClientInvocation,
    ) {
        let target = self.by_connection_id.get(&m.connection_id).copied();
        let error = match target {
            None => Some("Connection not found."),
            Some(_) if self.invocations.len() >= MAX_PENDING_INVOCATIONS => {
                Some("Too many client invocations are pending.")
            }
            Some(_) => None,
        };
        let (Some(client), None) = (target, error) else {
            let caller_server_id = m.caller_server_id.clone();
            let msg = ServiceMessage::ErrorCompletion(service::ErrorCompletion {
                invocation_id: m.invocation_id,
                connection_id: m.connection_id,
                caller_server_id,
                error: error.map(str::to_owned),
                ext: service::Ext::default(),
            });
            return self.send_to_server(caller, &msg);
        };
        let router = match self.clients.get(&client).map(|c| &c.state) {
            Some(ClientState::Open { server, .. }) => *server,
            _ => {
                let msg = ServiceMessage::ErrorCompletion(service::ErrorCompletion {
                    invocation_id: m.invocation_id,
                    connection_id: m.connection_id,
                    caller_server_id: m.caller_server_id,
                    error: Some("The connection has not completed its handshake.".to_owned()),
                    ext: service::Ext::default(),
                });
                return self.send_to_server(caller, &msg);
            }
        };
        self.invocations.insert(
            m.invocation_id.clone(),
            PendingInvocation { client, caller },
        );
        if !self.same_app_server(router, caller) {
            // The router server registers the invocation, so that it routes the client's
            // completion back through the relay.
            self.send_to_server(router, &ServiceMessage::ClientInvocation(m.clone()));
        }
        self.deliver_message(now, client, &m.payloads);
    }

    /// Closes `targets` (minus the excluded) for a close-with-ack request, then acks.
    fn close_with_ack(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        m: service::CloseConnectionsWithAck,
        targets: Vec<ConnHandle>,
    ) {
        let excluded = self.handles_of(&m.excluded);
        let reason = m
            .reason
            .unwrap_or_else(|| "Closed by the app server.".to_owned());
        for client in targets.into_iter().filter(|c| !excluded.contains(c)) {
            self.close_client_with_message(now, client, &reason, false);
        }
        self.ack(conn, m.ack_id, true);
    }

    /// Whether two server connections belong to the same app server (which then needs no
    /// relaying of client results between them).
    fn same_app_server(&self, a: ConnHandle, b: ConnHandle) -> bool {
        a == b
            || matches!(
                (self.servers.get(&a), self.servers.get(&b)),
                (Some(x), Some(y)) if x.server_id == y.server_id
            )
    }

    fn ack(&mut self, conn: ConnHandle, ack_id: i32, ok: bool) {
        let msg = ServiceMessage::Ack(service::Ack {
            ack_id,
            status: if ok {
                service::AckStatus::Ok
            } else {
                service::AckStatus::NotFound
            },
            message: String::new(),
            ext: service::Ext::default(),
            payload: None,
        });
        self.send_to_server(conn, &msg);
    }

    fn remove_server(&mut self, now: Instant, conn: ConnHandle, close: Option<&str>) {
        let Some(s) = self.servers.remove(&conn) else {
            return;
        };
        if let Some(hub) = self.hubs.get_mut(&s.hub) {
            hub.servers.remove(&conn);
        }
        for client in s.clients {
            self.close_client_with_message(now, client, SERVER_GONE, true);
        }
        let orphaned: Vec<String> = self
            .invocations
            .iter()
            .filter(|(_, p)| p.caller == conn)
            .map(|(id, _)| id.clone())
            .collect();
        for id in orphaned {
            self.invocations.remove(&id);
        }
        if let Some(reason) = close {
            self.outputs.push_back(Output::Close {
                conn,
                code: 1011,
                reason: truncate_reason(reason),
            });
        }
    }

    // ---------------------------------------------------------------- groups and users

    fn deliver_many(&mut self, now: Instant, targets: &[ConnHandle], payloads: &service::Payloads) {
        for &c in targets {
            self.deliver_message(now, c, payloads);
        }
    }

    fn handles_of(&self, ids: &[String]) -> BTreeSet<ConnHandle> {
        ids.iter()
            .filter_map(|id| self.by_connection_id.get(id).copied())
            .collect()
    }

    fn user_connections(&self, hub: &str, user: &str) -> Vec<ConnHandle> {
        self.hubs
            .get(hub)
            .and_then(|h| h.users.get(user))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    fn group_members(&self, hub: &str, group: &str) -> Vec<ConnHandle> {
        self.hubs
            .get(hub)
            .and_then(|h| h.groups.get(group))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    fn join_group(&mut self, conn: ConnHandle, group: &str) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        client.groups.insert(group.to_owned());
        if let Some(h) = self.hubs.get_mut(&client.hub) {
            h.groups.entry(group.to_owned()).or_default().insert(conn);
        }
    }

    fn leave_group(&mut self, conn: ConnHandle, group: &str) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        client.groups.remove(group);
        if let Some(h) = self.hubs.get_mut(&client.hub) {
            if let Some(members) = h.groups.get_mut(group) {
                members.remove(&conn);
                if members.is_empty() {
                    h.groups.remove(group);
                }
            }
        }
    }

    fn leave_all_groups(&mut self, conn: ConnHandle) {
        let groups: Vec<String> = self
            .clients
            .get(&conn)
            .map(|c| c.groups.iter().cloned().collect())
            .unwrap_or_default();
        for g in groups {
            self.leave_group(conn, &g);
        }
    }

    fn user_join_group(
        &mut self,
        now: Instant,
        hub: &str,
        user: &str,
        group: &str,
        ttl: Option<i32>,
    ) {
        if group.is_empty() {
            return;
        }
        let expiry = ttl
            .and_then(|t| u64::try_from(t).ok())
            .map(|t| now + Duration::from_secs(t));
        if let Some(h) = self.hubs.get_mut(hub) {
            let groups = h.user_groups.entry(user.to_owned()).or_default();
            // Expired memberships go whenever the user's set changes.
            groups.retain(|_, until| until.is_none_or(|t| t > now));
            groups.insert(group.to_owned(), expiry);
        }
        for c in self.user_connections(hub, user) {
            self.join_group(c, group);
        }
    }

    fn user_leave_group(&mut self, hub: &str, user: &str, group: Option<&str>) {
        if let Some(h) = self.hubs.get_mut(hub) {
            match group {
                Some(g) => {
                    if let Some(groups) = h.user_groups.get_mut(user) {
                        groups.remove(g);
                    }
                }
                None => {
                    h.user_groups.remove(user);
                }
            }
        }
        for c in self.user_connections(hub, user) {
            match group {
                Some(g) => self.leave_group(c, g),
                None => self.leave_all_groups(c),
            }
        }
    }
}

fn truncate_reason(reason: &str) -> String {
    // A WebSocket close reason holds at most 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// Claims as the app server's SDK expects them: long-form claim types for the standard JWT
/// names (as ASP.NET Core's JwtBearer maps them), token bookkeeping claims dropped.
fn forwarded_claims(claims: &Claims) -> Vec<(String, String)> {
    const NAME_IDENTIFIER: &str =
        "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier";
    let long_name = |name: &str| -> String {
        match name {
            "nameid" | "sub" => NAME_IDENTIFIER.to_owned(),
            "unique_name" => {
                "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name".to_owned()
            }
            "email" => {
                "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress".to_owned()
            }
            "role" | "roles" => {
                "http://schemas.microsoft.com/ws/2008/06/identity/claims/role".to_owned()
            }
            other => other.to_owned(),
        }
    };
    let mut out = Vec::new();
    if let Some(nameid) = &claims.nameid {
        out.push((NAME_IDENTIFIER.to_owned(), nameid.clone()));
    }
    for (name, value) in &claims.extra {
        if matches!(name.as_str(), "aud" | "exp" | "nbf" | "iat" | "iss") {
            continue;
        }
        let values: Vec<&serde_json::Value> = match value {
            serde_json::Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for v in values {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push((long_name(name), text));
        }
    }
    out
}

/// The client's query as the app server sees it: without the bearer token.
fn forwarded_query(query: &str) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if !k.eq_ignore_ascii_case("access_token") {
            out.append_pair(&k, &v);
        }
    }
    out.finish()
}

/// The client's request headers as the app server sees them: without credentials and
/// WebSocket plumbing, bounded, plus the relay's instance id.
fn forwarded_headers(
    req: &HttpRequest,
    max: usize,
    instance_id: &str,
    transport: Option<TransportKind>,
) -> Vec<(String, Vec<String>)> {
    const DROPPED: &[&str] = &[
        "authorization",
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    ];
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut total = 0;
    for (name, value) in &req.headers {
        let lower = name.to_ascii_lowercase();
        if DROPPED.contains(&lower.as_str()) {
            continue;
        }
        total += name.len() + value.len();
        if out.len() >= max || total > 16 * 1024 {
            break;
        }
        match out.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some((_, values)) => values.push(value.clone()),
            None => out.push((name.clone(), vec![value.clone()])),
        }
    }
    out.push(("Asrs-Instance-Id".to_owned(), vec![instance_id.to_owned()]));
    if let Some(kind) = transport {
        // The transport's name, for the app server's hub context.
        out.push(("Asrs-Transport".to_owned(), vec![kind.as_str().to_owned()]));
    }
    out
}

#[cfg(test)]
mod tests;
