//! The relay: a sans-IO state machine that holds client connections on behalf of app servers.
//!
//! # What goes in and what comes out
//!
//! ```text
//!   HTTP request ──► handle_request ──► RequestOutcome (respond / accept a WebSocket / stream / hold)
//!   WS bytes     ──► handle_data    ─┐
//!   WS closed    ──► handle_closed  ─┤   poll_output: Transmit / Respond / Close / Event
//!   poll dropped ──► handle_request_aborted ─┼─►            (drain until None)
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
//! Calling [`Relay::handle_timeout`] early is harmless; `poll_timeout` never answers a time
//! before the `now` of the last call (a deadline that has passed is due at that `now`). Once an [`Output::Close`] for a
//! handle has come out, the socket or event stream it named is done: ignore its input. A later
//! request may attach a new socket to the same handle (a stateful reconnect, or a classic
//! `/reconnect`); its [`RequestOutcome`] says so, and from then on the handle means the new
//! socket. [`Output::Event`]s ask for nothing: they say what opened and closed, and why, what
//! was refused, and which app-server messages were skipped, for logs and metrics; [`Relay::stats`] has the counters, and [`Relay::buffered_bytes`] what the
//! relay holds for its clients.
//!
//! Before reading a request's body, ask [`Relay::gate`] (a [`RequestGate`], usable on any
//! thread) how much of it to read: it checks the token on the headers, so that no body is read
//! for a peer without a valid one, and bounds each endpoint's body by what it can need. Read at
//! most that limit plus one byte, within a deadline of your own, and hand the request over.
//! A request the gate refuses is answered at once, and counted beside [`Relay::refusals`]
//! (under [`refusal_labels`]) by the adapter, off the relay's task; or handed to
//! [`Relay::refused_by_gate`], which counts and reports it like the relay's own.
//!
//! For the operator: [`Relay::snapshot`] walks the connections (for `/metrics` and a status
//! page, with [`render_prometheus`]; [`RequestGate::status_access`] says who may read the
//! status), and [`Relay::shut_down`] starts a graceful shutdown; the adapter ends the process
//! once [`Relay::client_count`] is zero, or at a deadline of its own.
//!
//! The loop, run here against the simulation harness ([`sim`]): an app server's connection
//! says hello, and the adapter carries out what the relay answers.
//!
//! ```
//! use signalr_relay_core::relay::sim::Sim;
//! use signalr_relay_core::relay::{Event, Output};
//! use signalr_relay_core::service::{HandshakeRequest, ServiceMessage};
//!
//! let mut sim = Sim::new(std::time::Instant::now());
//! let server = sim.accept_server("chat", "app-1");
//! let mut hello = Vec::new();
//! ServiceMessage::HandshakeRequest(HandshakeRequest::default()).write(&mut hello)?;
//! let (relay, now) = sim.relay_mut();
//!
//! relay.handle_data(now, server, &hello);
//! let mut opened = false;
//! while let Some(output) = relay.poll_output() {
//!     match output {
//!         Output::Transmit { conn, data, binary } => { /* write one WebSocket message */ }
//!         Output::Respond { request, response } => { /* answer that held request */ }
//!         Output::Close { conn, code, reason } => { /* flush, then close that socket */ }
//!         Output::Event(Event::ServerOpened { .. }) => opened = true,
//!         Output::Event(_) => { /* log it, count it */ }
//!         Output::Upstream(request) => { /* POST it; then relay.handle_upstream_response */ }
//!         Output::Publish { .. } | Output::Subscribe { .. } | Output::Unsubscribe { .. }
//!         | Output::ResetBackplane => { /* a cluster node's backplane: see ClusterConfig */ }
//!     }
//! }
//! let next_wakeup = relay.poll_timeout(); // sleep until then, or until the next input
//! assert!(opened && next_wakeup.is_some());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Connections
//!
//! - **Server connections** (`/server/?hub=…`): an app server's WebSocket, carrying the
//!   service protocol ([`crate::service`]). Many clients are multiplexed on one.
//! - **Client connections** (`/client/?hub=…&id=…`): an ASP.NET Core SignalR client, after
//!   `POST /client/negotiate?hub=…`, over a WebSocket, Server-Sent Events or long polling (a
//!   held long poll is a [`RequestOutcome::Pending`] answered by an [`Output::Respond`]). The
//!   relay reads the client's handshake to learn its hub protocol, maps it to the
//!   least-loaded server connection of its hub, sends that server an OpenConnection, and from
//!   then on relays bytes both ways. The app server answers the handshake itself.
//! - **Classic client connections** (`/aspnetclient/…`): a classic ASP.NET SignalR 2.x client.
//!   The relay terminates the classic protocol and speaks the ASP.NET Core JSON hub protocol
//!   to the app server on the client's behalf.
//! - **Serverless clients** (service modes serverless and classic): clients of a hub with no
//!   app server are mapped to the relay's own endpoint for the hub (`serverless`), which
//!   answers their handshake and sends their events upstream ([`Output::Upstream`]).
//! - **The REST API** (`/api/…`): Azure's data plane, versions 1 and 2022-06-01 (`rest`),
//!   carried out by the same commands as the service protocol's.
//! - **Other nodes** (with [`RelayConfig::cluster`]): several relays as one service over a
//!   pub/sub backplane (`cluster`, `backplane`). Each node holds its own clients and their app
//!   servers' traffic; what a hub or the REST API addresses beyond them is published once on
//!   the channel that reaches the nodes concerned ([`Output::Publish`], fed back with
//!   [`Relay::handle_backplane`]).
//!
//! # Parts
//!
//! `Relay` composes parts that own their data, and is the only one that sees them all:
//!
//! | part | owns |
//! |---|---|
//! | `directory` | hubs, groups, users, connection ids, and the indexes back from a connection |
//! | `servers` | server connections: the service handshake, pings, load, their timers |
//! | `serverless` | the relay's own endpoint of each hub without app servers, and its upstream requests |
//! | `rest` | the REST API's routes, bodies and answers |
//! | `cluster` | the other nodes: heartbeats, subscriptions, commands spread and answered, client results across nodes |
//! | `backplane` | the channels' names and the messages between nodes |
//! | `upstream` | upstream templates, request headers and signatures, what answers mean |
//! | `client` | client connections: the ASP.NET Core and classic dialects, transports, stateful reconnect |
//! | `invocations` | client results awaited, by the client that owes them and by the caller |
//! | `command` | `HubCommand`: the one verb type every fan-out goes through |
//! | `timers` | a small table per connection keyed by kind, and one ordered queue |
//! | `output` | the output sink, held requests, [`RelayStats`] and the refusal counts |
//! | `metrics` | [`Snapshot`] of the connections, and the Prometheus text |
//! | `reason` | [`Rejection`], [`CloseReason`], and every text a peer reads |

mod admission;
pub(crate) mod backplane;
mod client;
mod cluster;
pub(crate) mod command;
mod config;
mod directory;
mod forwarded;
mod gate;
mod http;
mod ids;
mod invocations;
mod metrics;
mod output;
mod policy;
mod reason;
mod reframe;
pub(crate) mod rest;
mod serverless;
mod servers;
pub mod sim;
mod stats;
mod timers;
mod upstream;

use std::collections::btree_map::Entry;
use std::collections::BTreeSet;
use std::time::Instant;

pub use self::backplane::{node_of, valid_node_id, ClusterConfig};
pub use self::client::{ERROR_DATA_HEADER, STATE_HEADER};
pub use self::cluster::{BackplaneStats, BackplaneStatus};
pub use self::config::{RelayConfig, ServiceMode};
pub use self::forwarded::{strip_query_params, InvalidIpRange, IpRange};
pub use self::gate::{RequestGate, NEGOTIATE_BODY_LIMIT};
pub use self::http::{HttpRequest, HttpResponse, RequestId, RequestOutcome, VerifiedToken};
pub use self::metrics::{
    render_prometheus, transport_label, AppServerSnapshot, HubSnapshot, ProcessStats,
    RefusalCounts, Snapshot,
};
pub use self::output::{ClientFamily, Event, Output};
pub use self::reason::texts::CONNECTION_NOT_FOUND;
pub use self::reason::{CloseKind, CloseReason, Initiator, Rejection};
pub use self::rest::MAX_BODY as REST_BODY_LIMIT;
pub use self::stats::{CloseCounts, RelayStats, Traffic};
pub use self::upstream::{signature_valid, UpstreamFailure, UpstreamRequest, UpstreamSettings};

use self::admission::{hub_param, Admission, SignedToken};
use self::client::{
    classic_negotiate_hub, classic_negotiated, classic_no_app_server, classic_unknown_token,
    parse_classic, Client, Clients, Dialect, Handled, Input, Next, Prepared, Request, CLASSIC_BASE,
};
use self::cluster::HeldFor;
use self::command::{Audience, Existence, HubCommand, Origin, Target};
use self::directory::{Directory, HubId};
use self::forwarded::Intro;
use self::ids::{Handles, IdGenerator, TokenCheck};
use self::invocations::{Invocations, Pending};
use self::output::Outputs;
use self::policy::Policy;
use self::reason::{texts, Ending, ServerEnding, SERVER_CLOSE_CODE};
use self::servers::{AspNetRole, Received, Servers};
use crate::odata::Filter;

/// The labels a refused request is counted under: its endpoint (`negotiate`, `client`,
/// `server`, `classic` or `other`) and `cause` (see [`Rejection::cause`]).
pub fn refusal_labels(path: &str, cause: &'static str) -> (&'static str, &'static str) {
    let endpoint = match path.trim_end_matches('/') {
        "/client/negotiate" => "negotiate",
        "/client" => "client",
        "/server" | "/aspnetserver" => "server",
        p if p.starts_with("/api/") => "rest",
        p if p == CLASSIC_BASE || p.starts_with("/aspnetclient/") => "classic",
        _ => "other",
    };
    (endpoint, cause)
}

/// Where the status page reads the relay's status (the audience of its tokens).
pub const STATUS_PATH: &str = "/api/status";

/// Bad messages one read from an app server may hold before its connection is dropped.
const MAX_SKIPPED_PER_READ: usize = 16;
use self::timers::{TimerKind, TimerQueue};
use crate::aspnetcore::negotiate::{
    AvailableTransport, ConnectionInfo, NegotiateQuery, NegotiateResponse, TransportKind,
};
use crate::service::{self, ServiceMessage, ServiceProtocolError};

/// A WebSocket (or event stream) the relay knows, client or server. Handles are never
/// reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnHandle(pub u64);

/// No connection: the owner of a held request that belongs to none (a negotiate waiting
/// for a server connection). Handles start at 1.
const NO_CONN: ConnHandle = ConnHandle(0);

/// The relay state machine. See the [module documentation](self) for the run loop.
#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    admission: Admission,
    ids: IdGenerator,
    handles: Handles,
    directory: Directory,
    clients: Clients,
    servers: Servers,
    serverless: serverless::Serverless,
    invocations: Invocations,
    timers: TimerQueue,
    out: Outputs,
    /// This relay's part in a cluster of nodes, if it is one.
    cluster: Option<Box<cluster::Cluster>>,
    /// Shutting down ([`shut_down`](Self::shut_down)): no new connections.
    draining: bool,
}

impl Relay {
    /// A relay whose clock reads `now` (monotonic) and `now_unix_secs` (wall clock, for token
    /// expiry) at the same moment. `seed` must be random: connection ids and tokens derive
    /// from it.
    pub fn new(mut config: RelayConfig, now: Instant, now_unix_secs: u64, seed: [u8; 32]) -> Self {
        let mut directory = Directory::new(config.max_groups_per_connection, config.max_group_name);
        let mut ids = IdGenerator::new(seed);
        let cluster = config.cluster.clone().map(|c| {
            // A node is the `target` of the server connections it asks for, and names its
            // connections.
            config.instance_id.clone_from(&c.node_id);
            ids = IdGenerator::new(seed).naming(&c.node_id);
            directory.watch = true;
            let incarnation = u64::from_be_bytes(
                ids.tag(&[b"incarnation"])[..8]
                    .try_into()
                    .unwrap_or_default(),
            );
            Box::new(cluster::Cluster::new(c, now, incarnation))
        });
        Self {
            directory,
            config,
            admission: Admission::new(now, now_unix_secs),
            ids,
            cluster,
            handles: Handles::default(),
            clients: Clients::default(),
            servers: Servers::default(),
            serverless: serverless::Serverless::default(),
            invocations: Invocations::default(),
            timers: TimerQueue::default(),
            out: Outputs::default(),
            draining: false,
        }
    }

    /// Starts a graceful shutdown (a drain): from now on `/ready` answers 503, and so do negotiates and new
    /// server connections. Every client is closed at once and told to reconnect (ASP.NET
    /// Core clients a Close message with `allowReconnect`, classic clients `T`), and every
    /// server connection gets the ping `offline` with this relay's instance id, on which the
    /// Azure SDK lets go of the clients it had here. Server connections stay open: the
    /// adapter ends the process once no client is left (or its drain timeout passes).
    pub fn shut_down(&mut self, now: Instant) {
        if self.draining {
            return;
        }
        self.draining = true;
        // What waits for a subscription is answered now: the node is going.
        self.release_held(now, true);
        self.cluster_bye();
        let conns: Vec<ConnHandle> = self.clients.map.keys().copied().collect();
        for conn in conns {
            if let Some(client) = self.clients.map.remove(&conn) {
                self.end_client(now, client, Ending::Draining);
            }
        }
        let ping = service::Ping::pairs([("offline", self.config.instance_id.as_str())]);
        for server in self.servers.open_handles() {
            self.out
                .service(server, &ServiceMessage::Ping(ping.clone()));
        }
        self.settle(now);
    }

    /// Whether [`shut_down`](Self::shut_down) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.draining
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Client connections currently held (negotiated or connected).
    pub fn client_count(&self) -> usize {
        self.clients.map.len()
    }

    /// Open server connections.
    pub fn server_connection_count(&self) -> usize {
        self.servers.open_count()
    }

    /// The check an adapter makes on a `POST`'s headers before reading its body (see
    /// [`RequestGate::body_limit`]). It may run on any thread, beside the relay.
    pub fn gate(&self) -> RequestGate {
        RequestGate::new(&self.config, &self.admission)
    }

    /// Bytes the relay holds for its clients (messages waiting for a poll, a reconnect or a
    /// handshake): the total, and the largest for one client. Each client's is bounded by
    /// the configuration; this is what the fuzzer checks, and what an operator may watch.
    pub fn buffered_bytes(&self) -> (usize, usize) {
        self.clients
            .map
            .values()
            .map(|c| c.buffered())
            .fold((0, 0), |(total, largest), b| (total + b, largest.max(b)))
    }

    /// The counters since the relay started.
    pub fn stats(&self) -> &RelayStats {
        &self.out.stats
    }

    /// Requests refused since the relay started, by endpoint (`negotiate`, `client`,
    /// `server`, `classic`, `other`) and cause (see [`Rejection::cause`]).
    pub fn refusals(&self) -> &RefusalCounts {
        &self.out.refusals
    }

    /// The next output, if any. Drain after every `handle_*` call.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let cluster = self.cluster.as_deref().map(cluster::Cluster::next_timeout);
        match (self.timers.next(), cluster) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// After every input: the serverless endpoints answer, and the cluster catches up.
    fn settle(&mut self, now: Instant) {
        self.serve_serverless(now);
        self.cluster_flush();
    }

    /// Routes one HTTP request.
    pub fn handle_request(&mut self, now: Instant, req: &HttpRequest) -> RequestOutcome {
        let path = req.path.trim_end_matches('/');
        let classic = path == CLASSIC_BASE || path.starts_with("/aspnetclient/");
        // What a connection keeps of its request is bounded: the query first (the classic
        // endpoints bound theirs when they parse it).
        if !classic && req.query.len() > self.config.max_query_length {
            self.refused_by_gate(req, &Rejection::QueryTooLong);
            return RequestOutcome::Respond(Rejection::QueryTooLong.into());
        }
        // The classic endpoints read a request's kind from its last segment in any case.
        let classic_negotiate = classic
            && matches!(
                crate::classic::RequestKind::from_path(path),
                Ok(crate::classic::RequestKind::Negotiate)
            );
        let refused_while_draining =
            classic_negotiate || matches!(path, "/client/negotiate" | "/server" | "/aspnetserver");
        let outcome = match (req.method.as_str(), path) {
            (_, "/health") => Ok(RequestOutcome::Respond(HttpResponse::text(200, "ok"))),
            (_, "/ready") if self.draining => Err(Rejection::Draining),
            (_, "/ready") => Ok(RequestOutcome::Respond(HttpResponse::text(
                200,
                match self.cluster.as_deref().map(cluster::Cluster::is_up) {
                    None => "ready",
                    Some(true) => "ready\nbackplane: up",
                    Some(false) => "ready\nbackplane: down",
                },
            ))),
            _ if self.draining && refused_while_draining => Err(Rejection::Draining),
            // A client with no negotiated id would be a new one (skipping negotiate).
            (_, "/client") if self.draining && req.query_param("id").is_none() => {
                Err(Rejection::Draining)
            }
            ("POST", "/client/negotiate") => self.negotiate_or_wait(now, req),
            ("GET", "/client") if req.websocket => self.connect_client(now, req),
            ("GET" | "POST" | "DELETE", "/client") => self.client_http(now, req),
            ("GET", "/server") if req.websocket => self.accept_server(now, req, false),
            ("GET", "/aspnetserver") if req.websocket => self.accept_server(now, req, true),
            (_, p) if p == CLASSIC_BASE || p.starts_with("/aspnetclient/") => {
                Ok(self.classic_request(now, req))
            }
            (_, p) if p.starts_with("/api/") => self.rest(now, req),
            (_, "/client" | "/server" | "/aspnetserver" | "/client/negotiate") => {
                Err(Rejection::EndpointMethodNotAllowed)
            }
            _ => Err(Rejection::NotFound),
        };
        let mut cause = "other";
        let outcome = outcome.unwrap_or_else(|r| {
            cause = r.cause();
            RequestOutcome::Respond(r.into())
        });
        if let RequestOutcome::Respond(r) = &outcome {
            if r.status >= 400 {
                let reason = String::from_utf8_lossy(&r.body).into_owned();
                self.count_refusal(req, cause, r.status, reason);
            }
        }
        self.settle(now);
        outcome
    }

    /// A request the adapter refused on the relay's behalf, on its headers, before reading
    /// its body ([`RequestGate::body_limit`]): counted and reported like the relay's own.
    pub fn refused_by_gate(&mut self, req: &HttpRequest, rejection: &Rejection) {
        let reason = rejection.text().into_owned();
        self.count_refusal(req, rejection.cause(), rejection.status(), reason);
    }

    fn count_refusal(
        &mut self,
        req: &HttpRequest,
        cause: &'static str,
        status: u16,
        reason: String,
    ) {
        *self
            .out
            .refusals
            .entry(refusal_labels(&req.path, cause))
            .or_default() += 1;
        self.out.stats.requests_rejected += 1;
        self.refused(req, status, reason);
    }

    /// Tells the adapter a request was refused (bounded: the path and the reason are cut).
    fn refused(&mut self, req: &HttpRequest, status: u16, reason: String) {
        self.out.event(Event::refused(req, status, reason));
    }

    /// Bytes received on a WebSocket (the payload of one message, text or binary).
    pub fn handle_data(&mut self, now: Instant, conn: ConnHandle, data: &[u8]) {
        if self.servers.contains(conn) {
            self.server_input(now, conn, data);
        } else {
            self.client_input(now, conn, Input::Data(data));
        }
        self.settle(now);
    }

    /// The WebSocket closed (or failed to upgrade), or the event stream's client went away.
    /// No [`Output::Close`] follows for it.
    pub fn handle_closed(&mut self, now: Instant, conn: ConnHandle) {
        if self.servers.contains(conn) {
            self.remove_server(now, conn, ServerEnding::Closed);
        } else {
            self.client_input(now, conn, Input::Closed);
        }
        self.settle(now);
    }

    /// A held request went away before its [`Output::Respond`] (its client aborted it).
    pub fn handle_request_aborted(&mut self, now: Instant, request: RequestId) {
        if let Some(conn) = self.out.abandon(request) {
            if conn == NO_CONN {
                self.abandon_parked(request);
            } else {
                self.client_input(now, conn, Input::Aborted(request));
            }
        }
        self.settle(now);
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
        self.cluster_tick(now);
        self.settle(now);
    }

    fn expire(&mut self, now: Instant) {
        while let Some((conn, kind)) = self.timers.pop_due(now) {
            if !kind.is_server() {
                self.client_input(now, conn, Input::Timer(kind));
                continue;
            }
            let Some(server) = self.servers.get_mut(conn) else {
                continue;
            };
            if let Err(ending) = server.on_timer(
                now,
                conn,
                kind,
                &self.config,
                &mut self.out,
                &mut self.timers,
            ) {
                self.remove_server(now, conn, ending);
                continue;
            }
            // Clients that were mid-message when their app server asked to leave move now.
            if kind == TimerKind::ServerPing {
                if let Some(hub) = self
                    .servers
                    .get(conn)
                    .filter(|s| s.migrating)
                    .map(|s| s.hub)
                {
                    self.migrate_clients(conn, hub);
                }
            }
        }
    }

    // ---------------------------------------------------------------- admission

    /// A negotiate, or, on a cluster node without a server connection of the hub that
    /// another node serves, a wait for one.
    fn negotiate_or_wait(
        &mut self,
        now: Instant,
        req: &HttpRequest,
    ) -> Result<RequestOutcome, Rejection> {
        if self.cluster.is_some() && self.config.service_mode == ServiceMode::Default {
            let (hub, _) =
                self.admission
                    .verify_opening_for_hub(&self.config, now, req, "/client/")?;
            if self.servers.available_hub(&self.directory, &hub).is_none() {
                if let Some(waiting) = self.park_negotiate(now, req, &hub) {
                    return Ok(waiting);
                }
            }
        }
        self.negotiate(now, req).map(RequestOutcome::Respond)
    }

    /// `POST /client/negotiate`: a new ASP.NET Core connection, waiting for its transport.
    fn negotiate(&mut self, now: Instant, req: &HttpRequest) -> Result<HttpResponse, Rejection> {
        let (hub, claims) =
            self.admission
                .verify_opening_for_hub(&self.config, now, req, "/client/")?;
        self.may_open(&claims)?;
        let query = match NegotiateQuery::parse(&req.query) {
            Ok(query) => query,
            Err(e) => return Ok(self.negotiate_error(req, "bad_request", e.to_string())),
        };
        let Some(hub_id) = self.hub_for_clients(now, &hub) else {
            let error = texts::no_app_server_yet(&hub);
            return Ok(self.negotiate_error(req, "no_app_server", error));
        };
        let policy = Policy::from_claims(claims.claims());
        let policy = policy.as_deref().unwrap_or(&Policy::NONE);
        if let Some(sticky) = policy.sticky.as_ref().filter(|s| s.required) {
            if self
                .servers
                .pick_for(&self.directory, hub_id, Some(sticky))
                .is_none()
            {
                let error = texts::required_server_gone(&sticky.server, &hub);
                return Ok(self.negotiate_error(req, "required_server_gone", error));
            }
        }
        let version = query.resolved_version(1);
        // Stateful reconnect only when the client asks, over negotiate version 1, and when the
        // relay and the app server both allow it.
        let stateful = query.use_stateful_reconnect
            && version > 0
            && self.config.allow_stateful_reconnect
            && self
                .servers
                .allow_stateful(&self.directory, hub_id, policy.sticky.as_ref());
        let (connection_id, token) = self.ids.next_pair();
        let info = ConnectionInfo {
            negotiate_version: version,
            connection_id: connection_id.clone(),
            connection_token: (version > 0).then(|| token.clone()),
            use_stateful_reconnect: stateful,
            available_transports: AvailableTransport::all()
                .into_iter()
                .filter(|t| policy.allows(t.transport))
                .collect(),
        };
        // A v0 client uses the connection id as its token.
        let token = if version > 0 {
            token
        } else {
            connection_id.clone()
        };
        let dialect = Client::aspnetcore(stateful, Some(claims.times()));
        let client = self.new_client(now, hub_id, (connection_id, token), &claims, req, dialect);
        self.clients.insert(client);
        Ok(HttpResponse::json(
            NegotiateResponse::Connection(info).to_json(),
        ))
    }

    /// A negotiate the relay answers with an error (a 200 the client reads): logged as refused.
    /// A negotiate refused as ASP.NET Core refuses one: 200, with `error` (counted under
    /// `cause`, and reported).
    fn negotiate_error(
        &mut self,
        req: &HttpRequest,
        cause: &'static str,
        error: String,
    ) -> HttpResponse {
        let response = HttpResponse::json(NegotiateResponse::Error(error.clone()).to_json());
        self.count_refusal(req, cause, 0, error);
        response
    }

    /// Whether a new connection may be made with this request: its access token bears fewer
    /// than the cap, and the relay holds fewer clients than its cap.
    fn may_open(&self, token: &SignedToken) -> Result<(), Rejection> {
        if self.clients.map.len() >= self.config.max_clients {
            return Err(Rejection::TooManyConnections);
        }
        if self.clients.bearing(Some(token.digest())) >= self.config.max_connections_per_token {
            return Err(Rejection::TooManyForToken);
        }
        Ok(())
    }

    /// A new client of `hub`: listed in the directory, with the negotiate timeout to connect.
    fn new_client(
        &mut self,
        now: Instant,
        hub: HubId,
        ids: (String, String),
        claims: &SignedToken,
        req: &HttpRequest,
        dialect: Dialect,
    ) -> Client {
        debug_assert!(
            claims.is_whole(),
            "a connection is opened with all its claims"
        );
        let conn = self.handles.next();
        let user = claims.user_id().map(str::to_owned);
        let mut client = Client::new(
            now,
            conn,
            hub,
            ids,
            user,
            Intro::new(claims.claims(), req),
            dialect,
        );
        self.directory.add_client(hub, conn, &client.connection_id);
        client.bearer = Some(claims.digest());
        client.policy = Policy::from_claims(claims.claims());
        let mut timers = self.timers.of(conn, &mut client.timers, now);
        timers.set(TimerKind::Negotiate, now + self.config.negotiate_timeout);
        if let Some(expires) = client.policy.as_ref().and_then(|p| p.auth_expires) {
            timers.set(
                TimerKind::AuthExpired,
                self.admission.instant_of(now, expires),
            );
        }
        client
    }

    /// A WebSocket on `/client/`: a negotiated connection's transport, a stateful client
    /// coming back, or (without `id`) a connection that skipped negotiation.
    fn connect_client(
        &mut self,
        now: Instant,
        req: &HttpRequest,
    ) -> Result<RequestOutcome, Rejection> {
        if let Some(upgraded) = req
            .query_param("id")
            .and_then(|id| self.upgrade_negotiated(now, req, &id))
        {
            return upgraded;
        }
        let (hub, claims) =
            self.admission
                .verify_opening_for_hub(&self.config, now, req, "/client/")?;
        let request = Request {
            req,
            hub: self.directory.find(&hub),
            user: claims.user_id(),
            bearer: claims.digest(),
        };
        if let Some(id) = req.query_param("id") {
            let conn = self
                .clients
                .by_token(&id)
                .ok_or(Rejection::UnknownConnection)?;
            return self
                .client_input(now, conn, Input::Upgrade(request))
                .ok_or(Rejection::UnknownConnection);
        }
        // skipNegotiation: the connection is created at upgrade time.
        self.may_open(&claims)?;
        if Policy::from_claims(claims.claims())
            .is_some_and(|p| !p.allows(TransportKind::WebSockets))
        {
            return Err(Rejection::TransportNotAllowed(TransportKind::WebSockets));
        }
        let hub_id = self
            .hub_for_clients(now, &hub)
            .ok_or(Rejection::NoAppServer { hub })?;
        let ids = self.ids.next_pair();
        let mut client = self.new_client(
            now,
            hub_id,
            ids,
            &claims,
            req,
            Client::aspnetcore(false, None),
        );
        let input = Input::Upgrade(Request {
            hub: Some(hub_id),
            ..request
        });
        let handled = client.handle(now, input, &self.config, &mut self.out, &mut self.timers);
        debug_assert!(matches!(handled.next, Next::Stay));
        self.clients.insert(client);
        handled.outcome.ok_or(Rejection::UnknownConnection)
    }

    /// The WebSocket of a negotiated connection that bears the very token it negotiated with
    /// (the same signature, by its digest), whose signature and audience were verified then: only
    /// its times are checked again, and it is not decoded a second time. `None` for any other
    /// (another token, none, or a connection not waiting for its transport): the whole check
    /// decides, as for a new token.
    fn upgrade_negotiated(
        &mut self,
        now: Instant,
        req: &HttpRequest,
        id: &str,
    ) -> Option<Result<RequestOutcome, Rejection>> {
        let conn = self.clients.by_token(id)?;
        let client = self.clients.map.get(&conn)?;
        let times = client.negotiated_with()?;
        let bearer = self::admission::bearer_digest(&self.config, req)
            .filter(|d| client.bearer == Some(*d))?;
        // Its own hub (which the token's audience named); another gets the whole check.
        let hub = hub_param(req)
            .ok()
            .and_then(|hub| self.directory.find(&hub))
            .filter(|&hub| hub == client.hub)?;
        let user = client.user_id.clone();
        if let Err(expired) = self.admission.check_again(&self.config, now, times) {
            return Some(Err(expired));
        }
        let request = Request {
            req,
            hub: Some(hub),
            user: user.as_deref(),
            bearer,
        };
        let outcome = self.client_input(now, conn, Input::Upgrade(request));
        Some(outcome.ok_or(Rejection::UnknownConnection))
    }

    /// `GET`, `POST` and `DELETE` on `/client/`: Server-Sent Events, long polls, sends.
    fn client_http(
        &mut self,
        now: Instant,
        req: &HttpRequest,
    ) -> Result<RequestOutcome, Rejection> {
        let hub = hub_param(req)?;
        let id = req
            .query_param("id")
            .ok_or(Rejection::ConnectionIdRequired)?;
        let claims = self
            .admission
            .verify(&self.config, now, req, "/client/", Some(&hub))?;
        let request = Request {
            req,
            hub: self.directory.find(&hub),
            user: claims.user_id(),
            bearer: claims.digest(),
        };
        if req.method == "GET" {
            if let Some(last) = self.clients.tombstones.poll(now, &id, &request) {
                return last.map(RequestOutcome::Respond);
            }
        }
        let conn = self
            .clients
            .by_token(&id)
            .ok_or(Rejection::UnknownConnection)?;
        self.client_input(now, conn, Input::Http(request))
            .ok_or(Rejection::UnknownConnection)
    }

    /// A WebSocket on `/server/` (or `/aspnetserver/`, from the classic ASP.NET SDK): an app
    /// server's connection, which must say hello within the handshake timeout.
    fn accept_server(
        &mut self,
        now: Instant,
        req: &HttpRequest,
        aspnet: bool,
    ) -> Result<RequestOutcome, Rejection> {
        let path = if aspnet { "/aspnetserver/" } else { "/server/" };
        let (hub, claims) = self
            .admission
            .verify_opening_for_hub(&self.config, now, req, path)?;
        let aspnet = aspnet.then(|| AspNetRole::of(&hub));
        let server_id = req
            .header("x-asrs-server-id")
            .map(str::to_owned)
            .or_else(|| claims.claims().nameid.clone())
            .unwrap_or_else(|| "anonymous-server".to_owned());
        let conn = self.handles.next();
        let hub = self.directory.intern(&hub);
        self.directory.add_server(hub, conn);
        let (config, timers) = (&self.config, &mut self.timers);
        self.servers
            .accept(now, conn, hub, (server_id, aspnet), config, timers);
        Ok(RequestOutcome::AcceptWebSocket(conn))
    }

    /// A request under `/aspnetclient`.
    fn classic_request(&mut self, now: Instant, req: &HttpRequest) -> RequestOutcome {
        let respond = |r: Rejection| RequestOutcome::Respond(r.into());
        let (kind, params) = match parse_classic(req, &self.config) {
            Ok(parsed) => parsed,
            Err(outcome) => return outcome,
        };
        // A negotiate opens a connection: its token with all its claims.
        let negotiate = kind == crate::classic::RequestKind::Negotiate;
        let verified = if negotiate {
            self.admission
                .verify_opening(&self.config, now, req, CLASSIC_BASE, None)
        } else {
            self.admission
                .verify(&self.config, now, req, CLASSIC_BASE, None)
        };
        let claims = match verified {
            Ok(claims) => claims,
            Err(r) => return respond(r),
        };
        if negotiate {
            let (hub_name, mut hub) = match classic_negotiate_hub(&params) {
                Ok(hub) => hub,
                Err(r) => return respond(r),
            };
            let app = claims
                .claims()
                .get_str(crate::auth::claim_names::APP_NAME)
                .filter(|a| !a.is_empty());
            if let Some(app) = app {
                // A token of Azure's classic ASP.NET SDK (NegotiateMiddleware.cs): it names the
                // application (`asrs.s.apn`) and no hub; its audience is `/aspnetclient`, checked
                // above. The hub is the application's, as the SDK's connections name it
                // (ServiceEndpointProvider.cs: `<app>_<hub>`, lower case).
                hub = format!("{}_{}", app.to_lowercase(), hub_name.to_lowercase());
            } else if let Err(r) = claims.check_audience(CLASSIC_BASE, Some(&hub)) {
                // Otherwise the token (verified above) must name this hub: the app authorized
                // the client for it alone.
                return respond(r);
            }
            if let Err(r) = self.may_open(&claims) {
                return respond(r);
            }
            let Some(hub_id) = self.servers.available_hub(&self.directory, &hub) else {
                return RequestOutcome::Respond(classic_no_app_server(&hub));
            };
            let ids = self.ids.next_classic(Some(claims.digest()));
            let dialect = Client::classic(hub_name, now);
            let client = self.new_client(now, hub_id, ids, &claims, req, dialect);
            let (token, id) = (client.token.to_string(), client.connection_id.to_string());
            self.clients.insert(client);
            return RequestOutcome::Respond(classic_negotiated(token, id, &params, &self.config));
        }
        let token = params.connection_token.as_deref().unwrap_or_default();
        // A token the relay did not issue is refused (400), one issued to another bearer is
        // forbidden (403); a genuine one whose connection is gone gets the classic answer.
        let ids = &self.ids;
        let bearer = Some(claims.digest());
        let unknown = |ids: &IdGenerator| match ids.check_classic(token, bearer) {
            TokenCheck::Forged => respond(Rejection::UnknownConnectionToken),
            TokenCheck::AnotherBearer => respond(Rejection::UserChanged),
            TokenCheck::Genuine => classic_unknown_token(kind, req.websocket),
        };
        let Some(conn) = self.clients.by_token(token) else {
            return unknown(ids);
        };
        let request = Request {
            req,
            hub: None,
            user: claims.user_id(),
            bearer: claims.digest(),
        };
        let input = Input::Classic {
            kind,
            params: &params,
            request,
        };
        self.client_input(now, conn, input)
            .unwrap_or_else(|| unknown(&self.ids))
    }

    // ---------------------------------------------------------------- clients

    /// Hands one input to a client, looked up once, then does what it asks: map it to a
    /// server connection, or end it. The response, for a request.
    fn client_input(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        input: Input<'_>,
    ) -> Option<RequestOutcome> {
        let Entry::Occupied(mut entry) = self.clients.map.entry(conn) else {
            return None;
        };
        let client = entry.get_mut();
        let handled = client.handle(now, input, &self.config, &mut self.out, &mut self.timers);
        match handled.next {
            Next::Stay => handled.outcome,
            Next::End(ending) => {
                let client = entry.remove();
                self.end_client(now, client, ending);
                handled.outcome
            }
            Next::Open(_) => self.follow(now, conn, handled, true),
        }
    }

    /// A client held for the backplane's subscriptions is mapped now (see
    /// [`Cluster::may_hold`]), unless it went meanwhile or the relay is shutting down.
    pub(crate) fn open_held(&mut self, now: Instant, conn: ConnHandle) {
        // A relay shutting down ends every client next: one still held is not opened first.
        if self.draining {
            return;
        }
        let Some(opening) = self.clients.map.get_mut(&conn).and_then(|c| c.take_held()) else {
            return;
        };
        let handled = Handled {
            outcome: None,
            next: Next::Open(opening),
        };
        let _ = self.follow(now, conn, handled, false);
    }

    /// Does what a client's answer asks until it stays: map it (or, when `may_hold`, hold it
    /// until the backplane has its channels), or end it.
    fn follow(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        mut handled: Handled,
        may_hold: bool,
    ) -> Option<RequestOutcome> {
        let Entry::Occupied(mut entry) = self.clients.map.entry(conn) else {
            return handled.outcome;
        };
        loop {
            match handled.next {
                Next::Stay => return handled.outcome,
                Next::End(ending) => {
                    let client = entry.remove();
                    self.end_client(now, client, ending);
                    return handled.outcome;
                }
                Next::Open(mut opening) => {
                    let client = entry.get_mut();
                    let sticky = client.policy.as_ref().and_then(|p| p.sticky.as_ref());
                    let picked = self.servers.pick_for(&self.directory, client.hub, sticky);
                    // The classic SDK's connections take classic clients only.
                    let picked = picked.filter(|&s| {
                        matches!(client.dialect, Dialect::Classic(_))
                            || self.servers.get(s).is_none_or(|s| s.aspnet.is_none())
                    });
                    let Some(server) = picked else {
                        let hub = self.directory.name(client.hub).to_owned();
                        let rejection = match sticky.filter(|s| s.required) {
                            Some(s) => Rejection::RequiredServerGone {
                                server: s.server.clone(),
                                hub,
                            },
                            None => Rejection::NoAppServer { hub },
                        };
                        let refused = Client::no_server(&opening.then, rejection);
                        handled.next = refused.next;
                        handled.outcome = handled.outcome.or(refused.outcome);
                        continue;
                    };
                    // Held clients were listed under their user on their first pass.
                    if may_hold {
                        if let Some(user) = &client.user_id {
                            self.directory.attach_user(now, client.hub, conn, user);
                        }
                        // On a cluster, the user's channel is asked for now, and an ASP.NET
                        // Core client's app server hears of it once that channel (and every
                        // one asked before) is in place: a send to the user from any node
                        // then reaches it, as the hub's OnConnectedAsync runs after the
                        // subscriptions on ASP.NET Core's Redis backplane. (A classic
                        // client's `/connect` waits for its answer: it is opened at once.)
                        let holdable = client.can_hold(&opening);
                        if let Some(c) = self.cluster.as_deref_mut().filter(|_| holdable) {
                            c.sync(&mut self.directory);
                            if c.may_hold(true) {
                                match client.hold(opening) {
                                    Ok(()) => {
                                        c.hold(now, HeldFor::Open(conn));
                                        return handled.outcome;
                                    }
                                    Err(back) => opening = back,
                                }
                            }
                        }
                    }
                    let (config, out, timers) = (&self.config, &mut self.out, &mut self.timers);
                    let (migrates, classic_sdk) = self
                        .servers
                        .get(server)
                        .map_or((false, false), |s| (s.migrates, s.aspnet.is_some()));
                    let link = (server, migrates, classic_sdk);
                    client.open(now, link, &mut opening, config, out, timers);
                    self.servers.attach(server, conn, config, out);
                    out.stats.clients_opened += 1;
                    out.event(Event::ClientOpened {
                        conn,
                        hub: self.directory.name(client.hub).to_owned(),
                        connection_id: client.connection_id.to_string(),
                        family: client.family(),
                        transport: opening.transport,
                        protocol: opening.protocol,
                    });
                    let next = client.opened(now, opening.then, config, out, timers);
                    handled.next = next.next;
                    handled.outcome = handled.outcome.or(next.outcome);
                }
            }
        }
    }

    /// Forgets a client: it is told why (if it can still hear), its transport ends, its app
    /// server is told, and what it owed is answered.
    fn end_client(&mut self, now: Instant, mut client: Box<Client>, ending: Ending) {
        let conn = client.conn;
        if let Some(error) = ending.handshake_error() {
            let mut reason = error.to_owned();
            truncate(&mut reason, 256);
            self.out.event(Event::Refused {
                at: "handshake".to_owned(),
                status: 0,
                hub: Some(self.directory.name(client.hub).to_owned()),
                connection_id: Some(client.connection_id.to_string()),
                transport: client.transport_kind(),
                reason,
            });
        }
        let (config, out, timers) = (&self.config, &mut self.out, &mut self.timers);
        let ending = client.end(
            now,
            ending,
            config,
            out,
            timers,
            &mut self.clients.tombstones,
        );
        self.clients.forget(&client);
        let user = client.user_id.as_deref();
        self.directory
            .remove_client(client.hub, conn, &client.connection_id, user);
        timers.forget(conn, &client.timers);
        let reason = ending.reason();
        let Some(link) = &client.link else {
            out.stats.clients_abandoned.add(reason.kind);
            return;
        };
        self.servers.detach(link.server, conn);
        // Not to a server connection that is itself gone.
        if ending.notifies_server() && self.servers.contains(link.server) {
            let close = ServiceMessage::CloseConnection(service::CloseConnection {
                connection_id: client.connection_id.to_string(),
                ..service::CloseConnection::default()
            });
            out.service(link.server, &close);
        }
        self.fail_owed(conn, &client.connection_id, texts::CONNECTION_DISCONNECTED);
        let out = &mut self.out;
        out.stats.clients_closed.add(reason.kind);
        out.event(Event::ClientClosed {
            conn,
            hub: self.directory.name(client.hub).to_owned(),
            connection_id: client.connection_id.to_string(),
            reason,
        });
    }

    /// Fails every client result a client owes, to the app servers that asked, with `why`.
    fn fail_owed(&mut self, conn: ConnHandle, connection_id: &str, why: &str) {
        for (invocation_id, caller) in self.invocations.take_owed_by(conn) {
            let failed = ServiceMessage::ErrorCompletion(service::ErrorCompletion {
                invocation_id,
                connection_id: connection_id.to_owned(),
                caller_server_id: self.servers.server_id(caller).to_owned(),
                error: Some(why.to_owned()),
                ext: service::Ext::default(),
            });
            self.out.service(caller, &failed);
        }
    }

    // ---------------------------------------------------------------- servers

    /// Bytes from an app server: every whole service message, in order.
    fn server_input(&mut self, now: Instant, conn: ConnHandle, data: &[u8]) {
        let Some(server) = self.servers.get_mut(conn) else {
            return;
        };
        server.push(now, data);
        let hub = server.hub;
        // Bad messages cost only themselves, but one read may not be made of them.
        let mut skipped = 0;
        loop {
            let Some(server) = self.servers.get_mut(conn) else {
                return;
            };
            let msg = match server.next() {
                None => return,
                Some(Received::Message(msg)) => msg,
                // A bad message costs that message once the connection is open: the app
                // server is told (a ServiceEvent, which it logs; a ServiceError would make
                // the SDK stop writing on this connection) and the rest goes on. The client
                // whose flow it was part of has lost bytes, and is closed.
                Some(Received::Skipped {
                    error,
                    connection_id,
                }) if server.open && skipped < MAX_SKIPPED_PER_READ => {
                    skipped += 1;
                    self.skipped_server_message(now, conn, hub, &error, connection_id);
                    continue;
                }
                Some(Received::Skipped { error, .. } | Received::Fatal(error)) => {
                    let ending = ServerEnding::InvalidData(error.to_string());
                    return self.remove_server(now, conn, ending);
                }
            };
            if server.open {
                self.server_message(now, conn, hub, msg);
                continue;
            }
            let (config, out, timers) = (&self.config, &mut self.out, &mut self.timers);
            match server.handshake(now, conn, msg, config, out, timers) {
                Ok(()) => {
                    let server_id = server.server_id.clone();
                    self.servers.inherit_leaving(&self.directory, hub, conn);
                    self.out.stats.servers_opened += 1;
                    self.out.event(Event::ServerOpened {
                        conn,
                        hub: self.directory.name(hub).to_owned(),
                        server_id,
                    });
                    self.unpark(now, Some(hub));
                }
                Err(ending) => return self.remove_server(now, conn, ending),
            }
        }
    }

    /// Whether the server connection `conn` (of `hub`) belongs to the app server that serves
    /// `client`: only that one writes on the client's own flow or closes it (others reach it
    /// through the multicast messages of its hub). After a migration, the old one no longer
    /// does.
    fn serves(&self, conn: ConnHandle, hub: HubId, client: ConnHandle) -> bool {
        self.clients.map.get(&client).is_some_and(|c| {
            c.hub == hub
                && c.link
                    .as_ref()
                    .is_some_and(|l| self.servers.same_app_server(l.server, conn))
        })
    }

    /// Whether `conn` is the classic ASP.NET SDK's application connection of the application
    /// that `client` is a client of (in one of its hubs): it may write to the client too (the
    /// SDK writes a client's messages on the connection that carries it when it can, else on
    /// the application's; ServiceConnectionContainerBase.cs).
    fn aspnet_app_reaches(&self, conn: ConnHandle, client: ConnHandle) -> bool {
        let Some(AspNetRole::App(app)) = self.servers.get(conn).and_then(|s| s.aspnet.as_ref())
        else {
            return false;
        };
        self.clients.map.get(&client).is_some_and(|c| {
            let of_app = self
                .directory
                .name(c.hub)
                .strip_prefix(app.as_str())
                .is_some_and(|rest| rest.starts_with('_'));
            // Any of the application's app servers: the SDK writes `Clients.Client(id)` for a
            // client that another of them carries on its application connection
            // (ServiceMessageBus.cs).
            of_app && c.link.is_some()
        })
    }

    /// The hub and the group a classic group name is about: the SDK names a group of hub `H`
    /// `hg-H.group` (classic SignalR's message-bus key, SignalRMessageParser.cs), and its hub
    /// connections `<app>_<h>` (lower case). Hub names may hold dots, so the hub is the
    /// longest prefix that is one of the application's hubs here, else the part before the
    /// first dot. `None` for a name without the prefix.
    fn aspnet_group<'g>(&self, app: &str, group: &'g str) -> Option<(String, &'g str)> {
        let rest = group.strip_prefix("hg-")?;
        // A hub's name is bounded, so only a dot within that bound can end one: the work per
        // message is bounded too, whatever the group's length.
        let bound = admission::MAX_HUB_NAME.saturating_sub(app.len() + 1);
        let dots: Vec<usize> = rest
            .match_indices('.')
            .map(|(i, _)| i)
            .take_while(|&i| i <= bound)
            .collect();
        let hub_of = |i: usize| format!("{app}_{}", rest[..i].to_lowercase());
        let i = dots
            .iter()
            .rev()
            .copied()
            .find(|&i| self.directory.find(&hub_of(i)).is_some())
            .or_else(|| dots.first().copied())?;
        Some((hub_of(i), &rest[i + 1..]))
    }

    /// A message on the classic ASP.NET SDK's application connection: group joins and leaves
    /// of the application's clients, and group sends to the application's hubs, with the
    /// groups named as classic SignalR names them (`hg-<Hub>.<group>`). Inside the hub, the
    /// group is the plain name: the one the REST API and the hub's other clients use.
    /// Whether it was one of those.
    fn aspnet_app_message(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        hub: HubId,
        app: &str,
        msg: &ServiceMessage,
    ) -> bool {
        // The command runs in the hub the group names (on every node, with several), so a
        // connection of another hub, or of another application, is not found.
        let run = |relay: &mut Self, target: &str, command, ack_id: Option<i32>| {
            let waiter = ack_id.map(|ack_id| cluster::Waiter::Ack { conn, ack_id });
            if let (cluster::Ran::Done(Some(ok)), Some(waiter)) =
                relay.run(now, target, Some(conn), command, waiter)
            {
                relay.tell(waiter, ok);
            }
        };
        match msg {
            ServiceMessage::JoinGroupWithAck(m) | ServiceMessage::LeaveGroupWithAck(m) => {
                let join = matches!(msg, ServiceMessage::JoinGroupWithAck(_));
                let connection = m.connection_id.as_str();
                let (target, group) = match m.group.as_deref() {
                    Some(g) => match self.aspnet_group(app, g) {
                        Some((target, plain)) => (target, Some(plain)),
                        None => (self.directory.name(hub).to_owned(), Some(g)),
                    },
                    None => (self.directory.name(hub).to_owned(), None),
                };
                let command = if join {
                    HubCommand::Join { connection, group }
                } else {
                    HubCommand::Leave { connection, group }
                };
                run(self, &target, command, Some(m.ack_id));
                true
            }
            ServiceMessage::GroupBroadcastData(m) => {
                let Some((target, group)) = self.aspnet_group(app, &m.group) else {
                    return false;
                };
                let groups = [group.to_owned()];
                let command = HubCommand::Send {
                    to: Audience {
                        to: Target::Groups(&groups),
                        except: &m.excluded_connection_ids,
                        except_users: &m.excluded_user_ids,
                    },
                    payloads: &m.payloads,
                    filter: m.ext.filter.as_deref(),
                };
                run(self, &target, command, None);
                true
            }
            _ => false,
        }
    }

    /// Whether `conn` is the server connection `client` was migrated from: it may still
    /// answer what it owes (but not close the client).
    fn served(&self, conn: ConnHandle, client: ConnHandle) -> bool {
        self.clients
            .map
            .get(&client)
            .and_then(|c| c.link.as_ref()?.previous.as_deref())
            .is_some_and(|(previous, _)| *previous == conn)
    }

    /// The app server of `conn` is leaving and asked for its clients to be migrated
    /// (`shutdown fin:1`): each of its clients that is between messages moves, keeping its
    /// connection id, to the least-loaded connection of another app server of the hub. A
    /// client whose token requires its app server stays, and so does one mid-message (it is
    /// tried again at the server's next ping timer); all stay when no other app server is
    /// there.
    fn migrate_clients(&mut self, conn: ConnHandle, hub: HubId) {
        let from_id = self.servers.server_id(conn).to_owned();
        let leaving: Vec<ConnHandle> = self
            .directory
            .servers(hub)
            .filter(|&s| self.servers.server_id(s) == from_id)
            .collect();
        for from in leaving {
            for c in self.servers.clients_of(from) {
                let Some(client) = self.clients.map.get_mut(&c) else {
                    continue;
                };
                let sticky = client.policy.as_ref().and_then(|p| p.sticky.as_ref());
                if sticky.is_some_and(|s| s.required) {
                    continue;
                }
                // Only to an app server that takes part in migration (one that does not would
                // answer the handshake again), and one that allows stateful reconnect for a
                // client that has it.
                let stateful = client.is_stateful();
                let Some(to) =
                    self.servers
                        .migration_target(&self.directory, hub, &from_id, stateful)
                else {
                    continue;
                };
                let to_id = self.servers.server_id(to).to_owned();
                let Some((farewell, welcome)) = client.migrate(to, (&from_id, &to_id)) else {
                    continue;
                };
                let connection_id = client.connection_id.clone();
                self.out.transmit(from, farewell, true);
                self.out.transmit(to, welcome, true);
                self.servers.detach(from, c);
                self.servers.attach(to, c, &self.config, &mut self.out);
                self.servers.left_behind(from, c);
                self.out.stats.clients_migrated += 1;
                // The client's answer to a result its old app server asked for would now reach
                // the new one, which does not know it: the asking app server hears at once.
                self.fail_owed(c, &connection_id, texts::CLIENT_MIGRATED);
            }
        }
    }

    /// A message from an app server was skipped: it is told, and the adapter hears of it; a
    /// client whose flow lost those bytes is closed.
    fn skipped_server_message(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        hub: HubId,
        error: &ServiceProtocolError,
        flow: Option<String>,
    ) {
        let client = flow.and_then(|id| self.directory.connection(&id));
        let broken = |c: &ConnHandle| self.serves(conn, hub, *c) || self.served(conn, *c);
        if let Some(client) = client.filter(broken) {
            if let Some(client) = self.clients.map.remove(&client) {
                self.end_client(now, client, Ending::ServerMessageTooLarge);
            }
        }
        let reason = format!("A message from the app server was skipped: {error}.");
        let event = ServiceMessage::ServiceEvent(service::ServiceEvent {
            object_type: service::ServiceEventObjectType::ServerConnection,
            id: Some(format!("server-{}", conn.0)),
            kind: service::ServiceEventKind::Invalid,
            message: reason.clone(),
            ext: service::Ext::default(),
        });
        self.out.service(conn, &event);
        self.out.stats.server_messages_skipped += 1;
        self.out.event(Event::ServerMessageSkipped { conn, reason });
    }

    /// One service message from an open server connection of `hub`.
    fn server_message(&mut self, now: Instant, conn: ConnHandle, hub: HubId, msg: ServiceMessage) {
        // Only these name the classic SDK's groups; other messages are not held up.
        let grouped = matches!(
            msg,
            ServiceMessage::JoinGroupWithAck(_)
                | ServiceMessage::LeaveGroupWithAck(_)
                | ServiceMessage::GroupBroadcastData(_)
        );
        let app = grouped
            .then(|| match &self.servers.get(conn)?.aspnet {
                Some(AspNetRole::App(app)) => Some(app.clone()),
                _ => None,
            })
            .flatten();
        if let Some(app) = app {
            if self.aspnet_app_message(now, conn, hub, &app, &msg) {
                return;
            }
        }
        if let Some((command, ack)) = HubCommand::from_service(&msg) {
            return self.apply(now, Origin::Server { conn, hub, ack }, command);
        }
        // A management (Weak) connection carries no client: its CloseConnection is the
        // Management SDK's ClientManager.CloseConnectionAsync, for any client of the hub, with
        // the reason as its error and no ack (WebSocketsHubLifetimeManager).
        if let ServiceMessage::CloseConnection(m) = &msg {
            if self.servers.get(conn).is_some_and(|s| !s.carries_clients()) {
                let command = HubCommand::Close {
                    to: Target::Connections(std::slice::from_ref(&m.connection_id)).only(),
                    reason: Some(m.error_message.as_str()).filter(|r| !r.is_empty()),
                };
                return self.apply(
                    now,
                    Origin::Server {
                        conn,
                        hub,
                        ack: None,
                    },
                    command,
                );
            }
        }
        match msg {
            ServiceMessage::Ping(ping) => {
                let ticks = self.admission.dotnet_ticks(now);
                self.servers
                    .ping(conn, hub, ping, ticks, &self.directory, &mut self.out);
                if self.servers.get(conn).is_some_and(|s| s.migrating) {
                    self.migrate_clients(conn, hub);
                }
            }
            ServiceMessage::ConnectionData(m) => {
                let Some(client) = self.directory.connection(&m.connection_id) else {
                    return;
                };
                if !self.serves(conn, hub, client)
                    && !self.served(conn, client)
                    && !self.aspnet_app_reaches(conn, client)
                {
                    return;
                }
                let Entry::Occupied(mut entry) = self.clients.map.entry(client) else {
                    return;
                };
                let (config, out, timers) = (&self.config, &mut self.out, &mut self.timers);
                if let Err(ending) =
                    entry
                        .get_mut()
                        .deliver(now, (conn, m.payload), config, out, timers)
                {
                    let client = entry.remove();
                    self.end_client(now, client, ending);
                }
            }
            ServiceMessage::CloseConnection(m) => {
                let client = self.directory.connection(&m.connection_id);
                let client = client.filter(|&c| self.serves(conn, hub, c));
                if let Some(client) = client.and_then(|c| self.clients.map.remove(&c)) {
                    self.end_client(now, client, Ending::ServerClosed(Some(m.error_message)));
                }
            }
            ServiceMessage::ClientInvocation(m) => self.client_invocation(now, conn, m),
            // A client's answer, or its failure: to the app server that asked, unless the
            // answering one is the same app server. It counts only from the client the
            // invocation was sent to, through the app server that client is mapped to:
            // anything else (a forgery aimed at another client's invocation) is ignored,
            // and the real answer still counts.
            answer @ (ServiceMessage::ClientCompletion(_) | ServiceMessage::ErrorCompletion(_)) => {
                let (id, connection_id) = match &answer {
                    ServiceMessage::ClientCompletion(m) => (&m.invocation_id, &m.connection_id),
                    ServiceMessage::ErrorCompletion(m) => (&m.invocation_id, &m.connection_id),
                    _ => return,
                };
                let Some(pending) = self.invocations.get(id) else {
                    return;
                };
                let from = self.directory.connection(connection_id);
                let via_its_router = self
                    .clients
                    .map
                    .get(&pending.client)
                    .and_then(|c| c.link.as_ref())
                    .is_some_and(|l| self.servers.same_app_server(l.server, conn));
                if from != Some(pending.client) || !via_its_router {
                    self.out.stats.completions_ignored += 1;
                    return;
                }
                self.invocations.complete(id);
                if !self.servers.same_app_server(pending.caller, conn) {
                    self.out.service(pending.caller, &answer);
                }
            }
            ServiceMessage::AccessKeyRequest(_) => {
                let msg = ServiceMessage::AccessKeyResponse(service::AccessKeyResponse {
                    error_type: Some("NotSupported".to_owned()),
                    error_message: Some(texts::ACCESS_KEYS_ONLY.to_owned()),
                    ..service::AccessKeyResponse::default()
                });
                self.out.service(conn, &msg);
            }
            ServiceMessage::GroupMemberQuery(m) => self.group_members(conn, hub, &m),
            // A newer request the relay does not know: if it waits for an ack, the app server
            // is told at once that it failed, rather than left to time out.
            // RefreshAuth (41): its layout is not published; its ack id is found as the
            // SDK's ack-able messages place it. Other unknown types are ignored.
            m @ ServiceMessage::Unknown {
                message_type: 41, ..
            } => {
                let message_type = m.message_type();
                if let Some(ack_id) = m.unknown_ack_id() {
                    let reply = ServiceMessage::Ack(service::Ack {
                        ack_id,
                        status: service::AckStatus::InternalServerError,
                        message: format!(
                            "Message type {message_type} is not supported by this relay."
                        ),
                        ext: service::Ext::default(),
                        payload: None,
                    });
                    self.out.service(conn, &reply);
                }
            }
            // Messages only the relay sends, or that need no action here.
            _ => {}
        }
    }

    /// Answers a GroupMemberQuery: one page of the group's connections with their users, in
    /// connection-id order, and where the next page starts (the last id of this one), in the
    /// Ack's payload as the SDK reads it (`GroupMemberQueryResponse`:
    /// `[[[connectionId, userId?], ...], continuationToken?]`).
    fn group_members(&mut self, conn: ConnHandle, hub: HubId, query: &service::GroupMemberQuery) {
        /// The largest page, whatever the app server asks.
        const MAX_PAGE: usize = 1000;
        let page = usize::try_from(query.max)
            .ok()
            .filter(|&n| n > 0)
            .map_or(MAX_PAGE, |n| n.min(MAX_PAGE));
        let after = query.continuation_token.as_deref();
        // And at most about 1 MiB of ids, whatever their length.
        const MAX_PAGE_BYTES: usize = 1024 * 1024;
        let mut members: Vec<(&str, Option<&str>)> = self
            .directory
            .group(hub, &query.group)
            .filter_map(|c| self.clients.map.get(&c))
            .map(|c| (&*c.connection_id, c.user_id.as_deref()))
            .filter(|(id, _)| after.is_none_or(|after| *id > after))
            .collect();
        members.sort_unstable();
        let mut bytes = 0;
        let fits = members
            .iter()
            .take(page)
            .take_while(|(id, user)| {
                bytes += id.len() + user.map_or(0, str::len) + 8;
                bytes <= MAX_PAGE_BYTES
            })
            .count()
            .max(1);
        let next = (members.len() > fits).then(|| members[fits - 1].0.to_owned());
        members.truncate(fits);
        let mut payload = Vec::new();
        let mut w = crate::msgpack::Writer(&mut payload);
        w.array_len(2);
        w.array_len(members.len());
        for (id, user) in &members {
            w.array_len(2);
            w.str(id);
            w.opt_str(*user);
        }
        w.opt_str(next.as_deref());
        let reply = ServiceMessage::Ack(service::Ack {
            ack_id: query.ack_id,
            status: service::AckStatus::Ok,
            message: String::new(),
            ext: service::Ext::default(),
            payload: Some(payload.into()),
        });
        self.out.service(conn, &reply);
    }

    /// An app server invokes a method on a client and awaits its result (through the relay,
    /// when the client is mapped to another app server).
    fn client_invocation(
        &mut self,
        now: Instant,
        caller: ConnHandle,
        m: service::ClientInvocation,
    ) {
        let fail = |m: service::ClientInvocation, error: &str| {
            ServiceMessage::ErrorCompletion(service::ErrorCompletion {
                invocation_id: m.invocation_id,
                connection_id: m.connection_id,
                caller_server_id: m.caller_server_id,
                error: Some(error.to_owned()),
                ext: service::Ext::default(),
            })
        };
        let Some(conn) = self.directory.connection(&m.connection_id) else {
            if self.invoke_elsewhere(now, caller, &m) {
                return;
            }
            return self
                .out
                .service(caller, &fail(m, texts::CONNECTION_NOT_FOUND));
        };
        if self.invocations.is_full() {
            return self
                .out
                .service(caller, &fail(m, texts::TOO_MANY_INVOCATIONS));
        }
        let caller_elsewhere = self.is_peer(caller);
        let Entry::Occupied(mut entry) = self.clients.map.entry(conn) else {
            return self
                .out
                .service(caller, &fail(m, texts::CONNECTION_NOT_FOUND));
        };
        let Some(router) = entry.get().link.as_ref().map(|l| l.server) else {
            return self.out.service(caller, &fail(m, texts::NOT_HANDSHAKEN));
        };
        let pending = Pending {
            client: conn,
            caller,
        };
        self.invocations.insert(m.invocation_id.clone(), pending);
        // A caller on another node is known by its app server's id.
        let same = if caller_elsewhere {
            self.servers.server_id(router) == m.caller_server_id
        } else {
            self.servers.same_app_server(router, caller)
        };
        if !same {
            // The router server registers the invocation, so that it routes the client's
            // completion back through the relay.
            self.out
                .service(router, &ServiceMessage::ClientInvocation(m.clone()));
        }
        let message = Prepared::new(&m.payloads);
        let (config, out, timers) = (&self.config, &mut self.out, &mut self.timers);
        if let Err(ending) = entry
            .get_mut()
            .deliver_message(now, &message, config, out, timers)
        {
            let client = entry.remove();
            self.end_client(now, client, ending);
        }
    }

    /// Drops a server connection, and with it every client it carried.
    fn remove_server(&mut self, now: Instant, conn: ConnHandle, ending: ServerEnding) {
        let Some(server) = self.servers.remove(conn) else {
            return;
        };
        self.directory.remove_server(server.hub, conn);
        self.timers.forget(conn, &server.timers);
        // Nobody awaits what it asked any more: forget that first, so that its own clients'
        // ends do not answer it.
        self.invocations.forget_asked_by(conn);
        self.forget_remote_calls(conn);
        for client in &server.clients {
            if let Some(client) = self.clients.map.remove(client) {
                self.end_client(now, client, Ending::ServerOffline);
            }
        }
        // Clients that moved away from it hear nothing more from it.
        for client in &server.left {
            if let Some(link) = self
                .clients
                .map
                .get_mut(client)
                .and_then(|c| c.link.as_mut())
            {
                if link.previous.as_ref().is_some_and(|p| p.0 == conn) {
                    link.previous = None;
                }
            }
        }
        // Connections of its app server that only followed it out come back, unless another
        // of them was itself told to leave.
        if server.fin_received {
            self.servers
                .release_followers(&self.directory, server.hub, &server.server_id);
        }
        if let Some(reason) = ending.close_text() {
            self.out.close(conn, SERVER_CLOSE_CODE, &reason);
        }
        let reason = ending.reason();
        if server.open {
            self.out.stats.servers_closed.add(reason.kind);
            self.out.event(Event::ServerClosed {
                conn,
                hub: self.directory.name(server.hub).to_owned(),
                server_id: server.server_id.clone(),
                reason,
            });
        } else {
            self.out.stats.servers_abandoned.add(reason.kind);
        }
    }

    // ---------------------------------------------------------------- commands

    /// Carries out a hub command, then answers where it came from.
    fn apply(&mut self, now: Instant, origin: Origin, command: HubCommand<'_>) {
        let Origin::Server {
            conn,
            hub,
            ack: ack_id,
        } = origin;
        if self.cluster.is_none() {
            let ok = self.carry_out(now, hub, Some(conn), command);
            if let (Some(ack_id), Some(ok)) = (ack_id, ok) {
                self.out.service(conn, &ack(ack_id, ok));
            }
            return;
        }
        let waiter = ack_id.map(|ack_id| cluster::Waiter::Ack { conn, ack_id });
        let name = self.directory.name(hub).to_owned();
        if let (cluster::Ran::Done(Some(ok)), Some(waiter)) =
            self.run(now, &name, Some(conn), command, waiter)
        {
            self.tell(waiter, ok);
        }
    }

    /// Carries out `command` in `hub`: whether it found what it was about (an existence
    /// check's answer). `None` when it could not be carried out at all (a send with a filter
    /// that does not parse: `from`, the server connection that asked, is told).
    fn carry_out(
        &mut self,
        now: Instant,
        hub: HubId,
        from: Option<ConnHandle>,
        command: HubCommand<'_>,
    ) -> Option<bool> {
        let d = &mut self.directory;
        let ok = match command {
            HubCommand::Send {
                to,
                payloads,
                filter,
            } => {
                let filter = match filter.map(Filter::parse) {
                    None => None,
                    Some(Ok(filter)) => Some(filter),
                    // A filter that does not parse reaches nobody; the app server is told.
                    Some(Err(e)) => {
                        if let Some(conn) = from {
                            let event = ServiceMessage::ServiceEvent(service::ServiceEvent {
                                object_type: service::ServiceEventObjectType::ServerConnection,
                                id: Some(format!("server-{}", conn.0)),
                                kind: service::ServiceEventKind::Invalid,
                                message: format!("A message was not sent: {e}."),
                                ext: service::Ext::default(),
                            });
                            self.out.service(conn, &event);
                        }
                        return None;
                    }
                };
                self.send(now, hub, to, &Prepared::new(payloads), filter.as_ref());
                true
            }
            // A connection of another hub is not found.
            HubCommand::Join { connection, .. }
            | HubCommand::Leave { connection, .. }
            | HubCommand::Exists(Existence::Connection(connection))
                if d.hub_of(connection) != Some(hub) =>
            {
                false
            }
            HubCommand::Join { connection, group } => {
                group.is_some_and(|group| d.join_by_id(connection, group))
            }
            HubCommand::Leave { connection, group } => d.leave_by_id(connection, group),
            HubCommand::UserJoin { user, group, ttl } => d.user_join(now, hub, user, group, ttl),
            HubCommand::UserLeave { user, group } => {
                d.user_leave(hub, user, group);
                true
            }
            HubCommand::Close { to, reason } => {
                let targets = to.resolve(&self.directory, hub);
                let found = !targets.is_empty();
                for client in targets {
                    if let Some(client) = self.clients.map.remove(&client) {
                        let reason = reason.map(str::to_owned);
                        self.end_client(now, client, Ending::ServerClosedWithAck(reason));
                    }
                }
                // Closing one connection says whether it was there; the others always succeed.
                found || !matches!(to.to, Target::Connections(_))
            }
            HubCommand::Exists(Existence::Connection(id)) => d.connection(id).is_some(),
            HubCommand::Exists(Existence::User(user)) => d.user(hub, user).next().is_some(),
            HubCommand::Exists(Existence::Group(group)) => d.group_exists(hub, group),
            HubCommand::Exists(Existence::UserInGroup { user, group }) => {
                d.user_in_group(now, hub, user, group)
            }
        };
        Some(ok)
    }

    /// Delivers a multicast message to an audience: each client looked up once; a client
    /// that cannot take it more is ended once the fan-out is done.
    fn send(
        &mut self,
        now: Instant,
        hub: HubId,
        to: Audience<'_>,
        message: &Prepared<'_>,
        filter: Option<&Filter>,
    ) {
        let (config, out, timers) = (&self.config, &mut self.out, &mut self.timers);
        let except = to.excluded(&self.directory, hub);
        let mut ended = Vec::new();
        let d = &self.directory;
        let mut deliver = |conn: ConnHandle| {
            if except.contains(&conn) {
                return;
            }
            let Entry::Occupied(mut entry) = self.clients.map.entry(conn) else {
                return;
            };
            if let Some(filter) = filter {
                let client = entry.get();
                let subject = Recipient {
                    user_id: client.user_id.as_deref(),
                    connection_id: &client.connection_id,
                    conn,
                    directory: d,
                };
                if !filter.matches(&subject) {
                    return;
                }
            }
            if let Err(ending) = entry
                .get_mut()
                .deliver_message(now, message, config, out, timers)
            {
                ended.push((entry.remove(), ending));
            }
        };
        match to.to {
            Target::Hub => d.clients(hub).for_each(&mut deliver),
            Target::Connections(ids) => ids
                .iter()
                .filter_map(|id| d.connection_in(id, hub))
                .for_each(&mut deliver),
            Target::Users([user]) => d.user(hub, user).for_each(&mut deliver),
            Target::Users(_) => to.to.union(d, hub).into_iter().for_each(&mut deliver),
            // Once per group a connection is in (each group named once); a connection ended on
            // the way is skipped.
            Target::Groups(groups) => {
                let mut named = BTreeSet::new();
                groups
                    .iter()
                    .filter(|g| named.insert(g.as_str()))
                    .flat_map(|g| d.group(hub, g))
                    .for_each(&mut deliver);
            }
        }
        for (client, ending) in ended {
            self.end_client(now, client, ending);
        }
    }
}

/// An Ack: found (`Ok`) or not.
fn ack(ack_id: i32, ok: bool) -> ServiceMessage {
    ServiceMessage::Ack(service::Ack {
        ack_id,
        status: if ok {
            service::AckStatus::Ok
        } else {
            service::AckStatus::NotFound
        },
        message: String::new(),
        ext: service::Ext::default(),
        payload: None,
    })
}

#[cfg(test)]
mod tests;

/// Cuts `text` to at most `max` bytes, on a character boundary.
fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// A client, as a subscriber filter sees it.
struct Recipient<'a> {
    user_id: Option<&'a str>,
    connection_id: &'a str,
    conn: ConnHandle,
    directory: &'a Directory,
}

impl crate::odata::Subject for Recipient<'_> {
    fn user_id(&self) -> Option<&str> {
        self.user_id
    }

    fn connection_id(&self) -> &str {
        self.connection_id
    }

    fn in_group(&self, group: &str) -> bool {
        self.directory.in_group(self.conn, group)
    }
}
