//! The relay, served: HTTP/WebSocket plumbing around [`signalr_relay_core::relay::Relay`].

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod lean;

use super::watched::{Stall, Watch, WatchedIo};
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use bytes::{Bytes, BytesMut};
use futures_channel::{mpsc, oneshot};
use futures_util::future::{select, Either};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONNECTION, ORIGIN, SEC_WEBSOCKET_ACCEPT, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use signalr_relay_core::relay::{
    ConnHandle, Event, HttpRequest, HttpResponse, Output, Rejection, Relay, RelayConfig,
    RequestGate, RequestId, RequestOutcome,
};

use crate::glue::accept::{accept_loop, ConnectionCount, Counted, RateLimited};
use crate::glue::http::{
    allow_origin, bad_upgrade, empty, preflight, respond, text, to_core_request, Body,
};
use crate::glue::queue::{self, AbortSignal, Command, Outbox, Refused};
use crate::glue::tls::{self, Accepted, ServerTls};
use crate::glue::ws::{self, Incoming};
use crate::glue::{poll_timer, Listener, Runtime};

/// How the relay is served, beyond the core's [`RelayConfig`]: the limits that are about
/// sockets rather than the protocol.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// How long a peer may take to send its HTTP request headers (default 15 s).
    pub header_read_timeout: Duration,
    /// How long a peer may take to send a request body, once its headers are in (default
    /// 15 s). Past it: 408, and the connection is closed.
    pub body_read_timeout: Duration,
    /// Most connections open at once, of every kind (default: the process's descriptor limit
    /// less 64). Past it, new sockets are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Bytes that may wait to be written to one client (default 4 MiB, the largest message an
    /// app server may send; one larger message is taken when nothing else waits). A client
    /// past it is closed at once as too slow. Past an eighth of it, the client is not read
    /// until it catches up: its answers to what it already sent still fit.
    pub client_send_queue: usize,
    /// Bytes that may wait to be written to one server connection (default 64 MiB). Clients
    /// are paused long before (see `server_send_pause`); past this, the app server is not
    /// reading at all and its connection is closed.
    pub server_send_queue: usize,
    /// Bytes waiting for a server connection past which the clients that send on it stop
    /// being read until it drains to half (default 1 MiB).
    pub server_send_pause: usize,
    /// A peer whose socket takes nothing for this long while bytes wait for it is closed
    /// (default 30 s).
    pub write_timeout: Duration,
    /// How long a graceful shutdown waits for the clients to go (default 30 s; see
    /// [`serve_until`]).
    pub drain_timeout: Duration,
    /// TLS on the listener (default none: plain HTTP). The operator listener of
    /// [`serve_until_with_operator`] stays plain.
    pub tls: Option<ServerTls>,
    /// The upstream settings file (the Emulator's `settings.json` shape), read at start and
    /// again whenever it changes (default none: no upstream).
    pub upstream_config: Option<std::path::PathBuf>,
    /// The backplane of a cluster node (the relay's [`RelayConfig::cluster`]): a Redis URL
    /// (default none).
    pub redis: Option<String>,
    /// Bytes that may wait to be published on the backplane (default 16 MiB); past it,
    /// cross-node messages are dropped and counted.
    pub backplane_queue: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(15),
            body_read_timeout: Duration::from_secs(15),
            max_connections: super::accept::default_max_connections(),
            client_send_queue: 4 * 1024 * 1024,
            server_send_queue: 64 * 1024 * 1024,
            server_send_pause: 1024 * 1024,
            write_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            tls: None,
            upstream_config: None,
            redis: None,
            backplane_queue: 16 * 1024 * 1024,
        }
    }
}

/// Everything a connection's tasks need, shared.
struct Settings {
    options: ServeOptions,
    gate: RequestGate,
    /// Requests the gate refused.
    gate_refusals: Arc<GateRefusals>,
    /// Largest WebSocket message from a client, and from an app server.
    client_frame: usize,
    server_frame: usize,
    /// Whether `/metrics` is served on the operator listener only.
    metrics_elsewhere: bool,
    /// The driver's inputs. A connection clones it for each request (a clone has a slot of
    /// its own in the channel, and an allocation), not for its life: an idle connection
    /// holds none.
    events: mpsc::Sender<DriverInput>,
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Port {
    /// The relay's: clients, app servers, and the operator's endpoints.
    Public,
    /// `--metrics-listen`'s: `/metrics`, `/health` and `/ready` only.
    Operator,
}

/// Requests the gate refused on their headers, by endpoint and cause (merged into
/// `/metrics`), and their rate-limited log.
#[derive(Default)]
struct GateRefusals {
    counts: std::sync::Mutex<signalr_relay_core::relay::RefusalCounts>,
    log: std::sync::Mutex<RateLimited>,
}

impl GateRefusals {
    fn add(&self, now: Instant, req: &HttpRequest, refusal: &Rejection) {
        self.count(signalr_relay_core::relay::refusal_labels(
            &req.path,
            refusal.cause(),
        ));
        self.log(now, req, refusal);
    }

    /// Counts a refusal without logging it: a connection refused before any request is one
    /// that scanners and stray plain-HTTP clients would fill the log with.
    fn count(&self, key: (&'static str, &'static str)) {
        *self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key)
            .or_default() += 1;
    }

    fn log(&self, now: Instant, req: &HttpRequest, refusal: &Rejection) {
        let allowed = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allow(now);
        if let Some(similar_since_last) = allowed {
            let event = Event::refused(req, refusal.status(), refusal.text().into_owned());
            log_refused(&event, similar_since_last);
        }
    }

    fn snapshot(&self) -> signalr_relay_core::relay::RefusalCounts {
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// What the HTTP side hears back about a request: the outcome, and for a held request the
/// channel its response will come on.
type Reply = (RequestOutcome, Option<oneshot::Receiver<HeldAnswer>>);

/// A held request's answer. Boxed: the channel it comes on is made for each held request and
/// lives as long as the request, which may be held for long (a long poll).
type HeldAnswer = Box<HttpResponse>;

/// Which attachment of a connection an event is about: a stateful reconnect attaches a new
/// socket to the same handle, and the old socket's late events must not touch it. `0` is
/// "never attached" (an upgrade or stream that failed first).
type Generation = u64;

fn next_generation() -> Generation {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

enum DriverInput {
    /// Boxed: every message to the driver is as large as its largest kind.
    Request(Box<HttpRequest>, oneshot::Sender<Reply>),
    Attach(ConnHandle, Generation, Outbox),
    Incoming(ConnHandle, Generation, Incoming),
    Aborted(RequestId),
    /// Start the graceful shutdown.
    ShutDown,
    /// The answer to an upstream request.
    Upstream(
        u64,
        Result<(u16, Bytes), signalr_relay_core::relay::UpstreamFailure>,
    ),
    /// New upstream settings (the file changed).
    UpstreamSettings(signalr_relay_core::relay::UpstreamSettings),
    /// The backplane's engine reports.
    Backplane(super::backplane::Report),
}

impl From<super::backplane::Report> for DriverInput {
    fn from(report: super::backplane::Report) -> Self {
        Self::Backplane(report)
    }
}

/// Serves the relay on `listener`, forever: accept errors are survived (see
/// [`accept_loop`]). The relay's state lives in one driver task; each connection gets its own
/// tasks.
pub async fn serve<R: Runtime, L: Listener>(
    runtime: R,
    listener: L,
    config: RelayConfig,
    options: ServeOptions,
) {
    let _ = serve_until(runtime, listener, config, options, std::future::pending()).await;
}

/// [`serve`], until `shut_down` completes; then shuts down gracefully and returns. From then
/// `/ready` answers 503, and so do negotiates and new server connections; every client is
/// told to reconnect, and every app server that this relay's clients are gone (see
/// [`Relay::shut_down`]). It returns once no client is left and what was queued for them
/// is written, or after [`ServeOptions::drain_timeout`].
///
/// # Errors
/// When the relay's own task ended unexpectedly (it panicked): the process should exit with
/// an error.
pub async fn serve_until<R, L, S>(
    runtime: R,
    listener: L,
    config: RelayConfig,
    options: ServeOptions,
    shut_down: S,
) -> std::io::Result<()>
where
    R: Runtime,
    L: Listener,
    S: std::future::Future<Output = ()> + Send + 'static,
{
    serve_until_with_operator(runtime, listener, None, config, options, shut_down).await
}

/// [`serve_until`], with an operator listener besides, if given: it serves `/metrics`,
/// `/health` and `/ready` (404 for anything else), over plain HTTP, and `/metrics` is then
/// served there only. For operators who keep metrics off the public address.
///
/// # Errors
/// As [`serve_until`].
pub async fn serve_until_with_operator<R, L, S>(
    runtime: R,
    listener: L,
    operator: Option<L>,
    config: RelayConfig,
    options: ServeOptions,
    shut_down: S,
) -> std::io::Result<()>
where
    R: Runtime,
    L: Listener,
    S: std::future::Future<Output = ()> + Send + 'static,
{
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let relay = Relay::new(config, runtime.now(), unix, seed());
    let (events, queue) = mpsc::channel(4096);
    let settings = Arc::new(Settings {
        client_frame: relay.config().max_client_payload(),
        // Up to four times the limit is read and skipped by the relay, which tells the app
        // server; past that the socket closes (1009).
        server_frame: relay.config().max_server_message_size.saturating_mul(4) + 1024,
        gate: relay.gate(),
        gate_refusals: Arc::default(),
        metrics_elsewhere: operator.is_some(),
        options,
        events: events.clone(),
    });
    if let Some(tls) = &settings.options.tls {
        tls.watch(&runtime);
    }

    let (drained, done) = oneshot::channel();
    let listen = listener.local_addr().ok();
    let backplane = match (&settings.options.redis, relay.config().cluster.is_some()) {
        #[cfg(not(any(feature = "tokio", feature = "smol-redis")))]
        (Some(_), true) => {
            return Err(std::io::Error::other(
                "this build has no Redis engine (features tokio or smol-redis)",
            ))
        }
        #[cfg(any(feature = "tokio", feature = "smol-redis"))]
        (Some(url), true) => {
            let engine = super::backplane::Redis::new(url).map_err(std::io::Error::other)?;
            let limit = settings.options.backplane_queue;
            Some(super::backplane::start(
                &runtime,
                engine,
                limit,
                events.clone(),
            ))
        }
        _ => None,
    };
    runtime.spawn(drive(
        runtime.clone(),
        relay,
        settings.options.clone(),
        (events.clone(), queue),
        drained,
        Wiring {
            listen,
            gate_refusals: settings.gate_refusals.clone(),
            backplane,
        },
    ));
    if let Some(path) = settings.options.upstream_config.clone() {
        runtime.spawn(watch_upstream(runtime.clone(), path, events.clone()));
    }
    let mut trigger = events.clone();
    runtime.spawn(async move {
        shut_down.await;
        let _ = trigger.send(DriverInput::ShutDown).await;
    });
    let count = ConnectionCount::new(settings.options.max_connections);
    if let Some(operator) = operator {
        runtime.spawn(accept_on(
            runtime.clone(),
            operator,
            count.clone(),
            settings.clone(),
            Port::Operator,
        ));
    }
    let accepting = accept_on(runtime, listener, count, settings, Port::Public);
    // Accepting goes on while draining: late requests hear that the relay is going.
    let drained = matches!(
        select(Box::pin(accepting), done).await,
        Either::Right((Ok(()), _))
    );
    if drained {
        Ok(())
    } else {
        Err(std::io::Error::other(
            "the relay's state machine stopped unexpectedly",
        ))
    }
}

/// Accepts connections on `listener`, as `port`, forever.
async fn accept_on<R: Runtime, L: Listener>(
    runtime: R,
    listener: L,
    count: Arc<ConnectionCount>,
    settings: Arc<Settings>,
    port: Port,
) {
    accept_loop(&runtime, listener, count, |stream, peer, admitted| {
        // The place under the cap goes with the socket, for as long as it is open.
        let stream = Counted::new(stream, admitted);
        spawn_connection(&runtime, stream, peer, settings.clone(), port);
    })
    .await;
}

/// Reads the upstream settings file at start and again whenever it changes (checked every
/// second), for as long as the relay runs. A file that does not read or parse leaves the
/// settings as they were, with a warning.
async fn watch_upstream<R: Runtime>(
    runtime: R,
    path: std::path::PathBuf,
    mut inputs: mpsc::Sender<DriverInput>,
) {
    let mut seen = None;
    loop {
        let stamp = std::fs::metadata(&path)
            .ok()
            .map(|m| (m.modified().ok(), m.len()));
        if stamp.is_some() && stamp != seen {
            seen = stamp;
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| signalr_relay_core::relay::UpstreamSettings::parse(&text));
            match parsed {
                Ok(settings) => {
                    tracing::info!(file = %path.display(), "upstream settings loaded");
                    if inputs
                        .send(DriverInput::UpstreamSettings(settings))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), "upstream settings not loaded (the old ones stay): {e}")
                }
            }
        }
        runtime
            .sleep_until(runtime.now() + Duration::from_secs(1))
            .await;
    }
}

fn seed() -> [u8; 32] {
    super::random_bytes("connection tokens would be predictable")
}

/// A socket or event stream attached to a handle: its queue, and when it last made progress.
struct Attached {
    generation: Generation,
    outbox: Outbox,
    /// Bytes written at `since`.
    written: u64,
    /// When `written` last changed, or the queue was last seen empty.
    since: Instant,
}

/// The only owner of the [`Relay`], and where its outputs go.
struct Driver<R> {
    /// The runtime, for its clock.
    runtime: R,
    relay: Relay,
    options: ServeOptions,
    /// Queues of WebSockets and event streams, with their attachment.
    writers: BTreeMap<ConnHandle, Attached>,
    /// Connections accepted whose socket or stream is not attached yet.
    awaiting: BTreeSet<ConnHandle>,
    /// Output for those, held until they attach (bounded like a queue).
    early: BTreeMap<ConnHandle, (usize, Vec<Command>)>,
    /// Held requests (long polls).
    held: BTreeMap<RequestId, oneshot::Sender<HeldAnswer>>,
    /// Clients left unread until the server connection they fed drains, by that connection.
    paused: BTreeMap<ConnHandle, Vec<ConnHandle>>,
    /// The connection whose input is being handled: the source of what is queued now.
    source: Option<ConnHandle>,
    /// When queues are next checked for progress (the write timeout).
    next_sweep: Instant,
    /// Bytes queued for sockets in the current batch of events.
    batch_bytes: usize,
    /// Skipped app-server messages are logged at most once a second.
    skipped_log: RateLimited,
    /// Refused requests and handshakes likewise.
    refused_log: RateLimited,
    /// While shutting down: when to give up waiting for the clients to go, when the last
    /// one went (what was queued for it gets a moment to be written), and whom to tell.
    drain: Option<Drain>,
    /// When the relay started (`/metrics` gives the uptime).
    started: Instant,
    /// Where it listens, for the status page.
    listen: Option<SocketAddr>,
    /// The latest closes, newest last, for the status page.
    recent_closes: std::collections::VecDeque<RecentClose>,
    /// What the gate refused (counted on the connections' tasks).
    gate_refusals: Arc<GateRefusals>,
    /// Where upstream answers come back.
    inputs: mpsc::Sender<DriverInput>,
    /// The backplane's engine, on a cluster node.
    backplane: Option<super::backplane::Link>,
}

/// A close the status page shows: no connection id, only what happened.
struct RecentClose {
    at_unix: u64,
    kind: &'static str,
    hub: String,
    reason: &'static str,
    by: signalr_relay_core::relay::Initiator,
}

/// How many closes the status page shows.
const RECENT_CLOSES: usize = 20;

/// The status page: self-contained, it reads `/api/status` every two seconds.
const STATUS_PAGE: &str = include_str!("status.html");

struct Drain {
    deadline: Instant,
    empty_since: Option<Instant>,
    done: Option<oneshot::Sender<()>>,
}

/// How long the relay waits, once its last client went, before it exits: what was queued is
/// written, and late requests (a load balancer's readiness probe) hear 503.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Bytes one batch of events may queue before the writers get a turn.
const BATCH_BYTES: usize = 256 * 1024;

/// What the driver is wired to besides its queue.
struct Wiring {
    /// Where the relay listens, for the status page.
    listen: Option<SocketAddr>,
    /// What the gate refused.
    gate_refusals: Arc<GateRefusals>,
    /// The backplane's engine, on a cluster node.
    backplane: Option<super::backplane::Link>,
}

async fn drive<R: Runtime>(
    runtime: R,
    relay: Relay,
    options: ServeOptions,
    (inputs, mut queue): (mpsc::Sender<DriverInput>, mpsc::Receiver<DriverInput>),
    drained: oneshot::Sender<()>,
    Wiring {
        listen,
        gate_refusals,
        backplane,
    }: Wiring,
) {
    let mut drained = Some(drained);
    let started = runtime.now();
    let mut d = Driver {
        next_sweep: runtime.now() + sweep_period(&options),
        relay,
        runtime,
        options,
        writers: BTreeMap::new(),
        awaiting: BTreeSet::new(),
        early: BTreeMap::new(),
        held: BTreeMap::new(),
        paused: BTreeMap::new(),
        source: None,
        batch_bytes: 0,
        skipped_log: RateLimited::default(),
        refused_log: RateLimited::default(),
        drain: None,
        started,
        listen,
        recent_closes: std::collections::VecDeque::new(),
        gate_refusals,
        inputs,
        backplane,
    };
    let mut timer: Option<(Instant, crate::BoxFuture<()>)> = None;
    loop {
        if let Some(drain) = &mut d.drain {
            if drain.done.is_none() {
                drain.done = drained.take();
            }
        }
        if d.drained() {
            if let Some(done) = d.drain.as_mut().and_then(|drain| drain.done.take()) {
                let _ = done.send(());
            }
            return;
        }
        let deadline = d
            .relay
            .poll_timeout()
            .map_or(d.next_sweep, |t| t.min(d.next_sweep));
        let deadline = match &d.drain {
            Some(drain) => deadline.min(drain.deadline).min(
                drain
                    .empty_since
                    .map_or(drain.deadline, |since| since + DRAIN_GRACE),
            ),
            None => deadline,
        };
        // One timer, kept while the deadline holds: made anew for every event, it would cost
        // an allocation and a registration with the runtime's timers for every batch.
        if timer.as_ref().is_some_and(|(at, _)| *at != deadline) {
            timer = None;
        }
        let (_, sleep) = timer.get_or_insert_with(|| (deadline, d.runtime.sleep_until(deadline)));
        let event = match select(queue.next(), sleep).await {
            Either::Left((event, _)) => Some(event),
            Either::Right(((), _)) => None,
        };
        let Some(event) = event else {
            timer = None;
            d.tick();
            continue;
        };
        let Some(event) = event else { return };
        // Handle a batch of events before writing, bounded in events (so that timers still
        // run) and in bytes queued (so that writers drain what it produced before more).
        let mut next = Some(event);
        let mut budget = 256;
        d.batch_bytes = 0;
        while let Some(event) = next.take() {
            d.handle(event);
            d.flush();
            budget -= 1;
            if d.batch_bytes >= BATCH_BYTES {
                budget = 0;
            }
            if budget > 0 {
                next = queue.try_recv().ok();
            }
        }
        d.tick();
        if budget == 0 {
            // More is queued: let the writers this batch fed run before taking it, rather than
            // fill their queues from a backlog.
            super::yield_now().await;
        }
    }
}

/// How often queues are checked for progress: a few times per write timeout.
fn sweep_period(options: &ServeOptions) -> Duration {
    (options.write_timeout / 4).max(Duration::from_millis(250))
}

impl<R: Runtime> Driver<R> {
    /// `GET /metrics`: the Prometheus text exposition, made now (counting costs nothing on
    /// the hot path: the core keeps plain counters, and the connections are walked here).
    fn metrics(&self, now: Instant) -> HttpResponse {
        let process = super::process::read(now.saturating_duration_since(self.started));
        let mut refusals = self.gate_refusals.snapshot();
        for (key, n) in self.relay.refusals() {
            *refusals.entry(*key).or_default() += n;
        }
        let mut snapshot = self.relay.snapshot();
        if let (Some(b), Some(link)) = (&mut snapshot.backplane, &self.backplane) {
            b.stats.dropped += link.dropped.load(std::sync::atomic::Ordering::Relaxed);
        }
        let text = signalr_relay_core::relay::render_prometheus(
            self.relay.stats(),
            &refusals,
            &snapshot,
            &process,
        );
        HttpResponse {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            headers: Vec::new(),
            body: Bytes::from(text),
        }
    }

    /// `GET /api/status`: what the status page shows, as JSON.
    fn status(&self, now: Instant) -> HttpResponse {
        let snapshot = self.relay.snapshot();
        let stats = self.relay.stats();
        let hubs: Vec<serde_json::Value> = snapshot
            .hubs
            .iter()
            .map(|(name, hub)| {
                serde_json::json!({
                    "name": name,
                    "clients": hub.clients.iter().map(|((transport, protocol), count)| {
                        serde_json::json!({ "transport": transport, "protocol": protocol, "count": count })
                    }).collect::<Vec<_>>(),
                    "pendingClients": hub.pending_clients,
                    "appServers": hub.app_servers.iter().map(|(id, a)| {
                        serde_json::json!({ "serverId": id, "connections": a.connections, "clients": a.clients })
                    }).collect::<Vec<_>>(),
                })
            })
            .collect();
        let closes: Vec<serde_json::Value> = self
            .recent_closes
            .iter()
            .rev()
            .map(|c| {
                serde_json::json!({
                    "at": c.at_unix, "kind": c.kind, "hub": c.hub, "reason": c.reason,
                    "by": format!("{:?}", c.by).to_ascii_lowercase(),
                })
            })
            .collect();
        let status = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptimeSeconds": now.saturating_duration_since(self.started).as_secs_f64(),
            "listen": self.listen.map(|a| a.to_string()),
            "serviceMode": self.relay.config().service_mode.name(),
            "backplane": snapshot.backplane.as_ref().map(|b| serde_json::json!({
                "node": b.node_id, "up": b.up, "channels": b.channels,
                "nodes": b.nodes.iter().map(|(id, url)| serde_json::json!({ "id": id, "url": url })).collect::<Vec<_>>(),
            })),
            "shuttingDown": snapshot.shutting_down,
            "totals": {
                "clients": snapshot.hubs.values().map(|h| h.client_count()).sum::<u64>(),
                "serverConnections": snapshot.hubs.values().map(|h| h.server_connections()).sum::<u64>(),
                "messagesToServer": stats.to_server.messages,
                "messagesToClient": stats.to_client.messages,
                "bytesToServer": stats.to_server.bytes,
                "bytesToClient": stats.to_client.bytes,
            },
            "hubs": hubs,
            "recentCloses": closes,
        });
        HttpResponse::json(status.to_string().into_bytes())
    }

    /// Keeps the latest closes for the status page.
    fn remember_close(&mut self, event: &Event) {
        let (kind, hub, reason) = match event {
            Event::ClientClosed { hub, reason, .. } => ("client", hub, reason),
            Event::ServerClosed { hub, reason, .. } => ("app server connection", hub, reason),
            _ => return,
        };
        if self.recent_closes.len() == RECENT_CLOSES {
            self.recent_closes.pop_front();
        }
        self.recent_closes.push_back(RecentClose {
            at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            kind,
            hub: hub.clone(),
            reason: reason.kind.as_str(),
            by: reason.initiator,
        });
    }

    /// Whether a graceful shutdown is over: no client left (and a moment for what was
    /// queued to be written), or the drain timeout passed.
    fn drained(&mut self) -> bool {
        // Asked after every batch of events: nothing to walk unless shutting down.
        if self.drain.is_none() {
            return false;
        }
        let now = self.runtime.now();
        let clients = self.relay.client_count();
        // Every client was told; what was queued for them is written before the end.
        let unwritten = self.writers.values().any(|a| a.outbox.queued() > 0);
        let Some(drain) = &mut self.drain else {
            return false;
        };
        let settled = clients == 0 && !unwritten;
        if now >= drain.deadline {
            if !settled {
                tracing::warn!(
                    clients,
                    "drain timeout: exiting with clients still connected"
                );
            }
            return true;
        }
        if !settled {
            drain.empty_since = None;
            return false;
        }
        let since = *drain.empty_since.get_or_insert(now);
        now >= since + DRAIN_GRACE
    }

    /// Runs what is due: the relay's timers, and the write-timeout sweep.
    fn tick(&mut self) {
        let now = self.runtime.now();
        if self.relay.poll_timeout().is_some_and(|t| t <= now) {
            self.relay.handle_timeout(now);
            self.flush();
        }
        if now >= self.next_sweep {
            self.next_sweep = now + sweep_period(&self.options);
            self.sweep(now);
        }
    }

    /// Closes every peer whose socket took nothing for the write timeout while bytes waited.
    fn sweep(&mut self, now: Instant) {
        let timeout = self.options.write_timeout;
        let mut stuck = Vec::new();
        for (conn, a) in &mut self.writers {
            let written = a.outbox.written();
            if a.outbox.queued() == 0 || written != a.written {
                a.written = written;
                a.since = now;
            } else if now.saturating_duration_since(a.since) >= timeout {
                stuck.push(*conn);
            }
        }
        if !stuck.is_empty() {
            for conn in stuck {
                self.drop_peer(
                    conn,
                    "closing a connection whose socket took nothing for the write timeout",
                );
            }
            self.flush();
        }
    }

    fn handle(&mut self, event: DriverInput) {
        let now = self.runtime.now();
        match event {
            DriverInput::Request(request, reply) if request.path == "/metrics" => {
                let _ = reply.send((RequestOutcome::Respond(self.metrics(now)), None));
            }
            DriverInput::Request(request, reply)
                if request.path == "/" && request.method == "GET" && !request.websocket =>
            {
                let page = HttpResponse {
                    status: 200,
                    content_type: "text/html; charset=utf-8",
                    headers: Vec::new(),
                    body: Bytes::from_static(STATUS_PAGE.as_bytes()),
                };
                let _ = reply.send((RequestOutcome::Respond(page), None));
            }
            DriverInput::Request(request, reply)
                if request.path == signalr_relay_core::relay::STATUS_PATH =>
            {
                // Its token was checked on the connection's task (the gate).
                let _ = reply.send((RequestOutcome::Respond(self.status(now)), None));
            }
            DriverInput::Request(request, reply) => {
                let outcome = self.relay.handle_request(now, &request);
                let response = match outcome {
                    RequestOutcome::Pending(id) => {
                        let (tx, rx) = oneshot::channel();
                        self.held.insert(id, tx);
                        Some(rx)
                    }
                    RequestOutcome::AcceptWebSocket(conn) | RequestOutcome::EventStream(conn) => {
                        self.awaiting.insert(conn);
                        None
                    }
                    RequestOutcome::Respond(_) => None,
                };
                let _ = reply.send((outcome, response));
            }
            DriverInput::Attach(conn, generation, outbox) => {
                self.awaiting.remove(&conn);
                let mut stalled = false;
                if let Some((_, commands)) = self.early.remove(&conn) {
                    for c in commands {
                        stalled |= outbox.push(c) == Err(Refused::Full);
                    }
                }
                if stalled {
                    // More was held than the socket's queue takes: a stalled peer.
                    outbox.abort();
                    self.relay.handle_closed(now, conn);
                } else {
                    self.writers.insert(
                        conn,
                        Attached {
                            generation,
                            outbox,
                            written: 0,
                            since: now,
                        },
                    );
                }
            }
            DriverInput::Upstream(id, result) => {
                self.relay.handle_upstream_response(now, id, result);
            }
            DriverInput::UpstreamSettings(settings) => self.relay.set_upstream(settings),
            DriverInput::Backplane(report) => match report {
                super::backplane::Report::Up => {
                    if let Some(link) = &self.backplane {
                        link.up();
                    }
                    self.relay.handle_backplane_up(now);
                }
                super::backplane::Report::Down => self.relay.handle_backplane_down(now),
                super::backplane::Report::Subscribed(count) => {
                    self.relay.handle_backplane_subscribed(now, count);
                }
                super::backplane::Report::Message(channel, data) => {
                    self.relay.handle_backplane(now, &channel, &data);
                }
            },
            DriverInput::Incoming(conn, generation, Incoming::Data(data)) => {
                if self.is_current(conn, generation) {
                    self.source = Some(conn);
                    self.relay.handle_data(now, conn, &data);
                }
            }
            DriverInput::Incoming(conn, generation, Incoming::Drained) => {
                if let Some(a) = self
                    .writers
                    .get(&conn)
                    .filter(|a| a.generation == generation)
                {
                    a.outbox.set_paused(false);
                    self.resume_paused_on(conn);
                }
            }
            DriverInput::Incoming(conn, generation, Incoming::Closed) => {
                let current = self.is_current(conn, generation);
                let never_attached = generation == 0 && self.awaiting.remove(&conn);
                if current || never_attached {
                    self.writers.remove(&conn);
                    self.early.remove(&conn);
                    self.resume_paused_on(conn);
                    self.relay.handle_closed(now, conn);
                }
            }
            DriverInput::Aborted(request) => {
                if self.held.remove(&request).is_some() {
                    self.relay.handle_request_aborted(now, request);
                }
            }
            DriverInput::ShutDown => {
                if self.drain.is_none() {
                    tracing::info!(
                        clients = self.relay.client_count(),
                        "shutting down: clients are told to reconnect"
                    );
                    self.relay.shut_down(now);
                    self.drain = Some(Drain {
                        deadline: now + self.options.drain_timeout,
                        empty_since: None,
                        done: None,
                    });
                }
            }
        }
    }

    fn is_current(&self, conn: ConnHandle, generation: Generation) -> bool {
        self.writers
            .get(&conn)
            .is_some_and(|a| a.generation == generation)
    }

    /// Reads again from the clients paused on `server`'s queue.
    fn resume_paused_on(&mut self, server: ConnHandle) {
        for client in self.paused.remove(&server).unwrap_or_default() {
            if let Some(a) = self.writers.get(&client) {
                a.outbox.set_paused(false);
            }
        }
    }

    /// After queueing on `target`, past its pause mark: for a server connection, the client
    /// whose input this is stops being read until `target` drains (each client that sends
    /// while it is congested is paused after its own message, so none can starve the others
    /// on the same connection); for a client whose own answers pile up, that client stops
    /// being read until it has caught up, as a server whose writes block reads no more.
    fn pause_if_congested(&mut self, target: ConnHandle) {
        let Some(t) = self.writers.get(&target) else {
            return;
        };
        if !t.outbox.over_pause_mark() {
            return;
        }
        t.outbox.set_congested();
        if !t.outbox.is_server() {
            t.outbox.set_paused(true);
            return;
        }
        let Some(source) = self.source.filter(|s| *s != target) else {
            return;
        };
        if let Some(s) = self.writers.get(&source) {
            s.outbox.set_paused(true);
            let paused = self.paused.entry(target).or_default();
            if !paused.contains(&source) {
                paused.push(source);
            }
        }
    }

    /// Closes a peer now: its socket is dropped (not flushed: it is not reading), and the
    /// relay is told it is gone.
    fn drop_peer(&mut self, conn: ConnHandle, why: &'static str) {
        if let Some(a) = self.writers.remove(&conn) {
            a.outbox.abort();
        }
        self.early.remove(&conn);
        self.awaiting.remove(&conn);
        self.resume_paused_on(conn);
        tracing::warn!(conn = conn.0, "{why}");
        self.relay.handle_closed(self.runtime.now(), conn);
    }

    fn to_backplane(&self, request: super::backplane::Request) {
        if let Some(link) = &self.backplane {
            link.send(request);
        }
    }

    /// Carries out everything the relay asked for.
    fn flush(&mut self) {
        loop {
            let mut stalled = Vec::new();
            while let Some(output) = self.relay.poll_output() {
                let (conn, command) = match output {
                    Output::Transmit { conn, data, binary } => {
                        (conn, Command::Send { data, binary })
                    }
                    Output::Close { conn, code, reason } => (conn, Command::Close { code, reason }),
                    Output::Respond { request, response } => {
                        if let Some(tx) = self.held.remove(&request) {
                            let _ = tx.send(Box::new(response));
                        }
                        continue;
                    }
                    Output::Event(event @ Event::Refused { .. }) => {
                        if let Some(similar_since_last) = self.refused_log.allow(self.runtime.now())
                        {
                            log_refused(&event, similar_since_last);
                        }
                        continue;
                    }
                    Output::Event(Event::ServerMessageSkipped { conn, reason }) => {
                        if let Some(similar_since_last) = self.skipped_log.allow(self.runtime.now())
                        {
                            tracing::warn!(conn = conn.0, similar_since_last, "{reason}");
                        }
                        continue;
                    }
                    Output::Event(event) => {
                        log_event(&event);
                        self.remember_close(&event);
                        continue;
                    }
                    Output::Publish { channel, data } => {
                        self.to_backplane(super::backplane::Request::Publish(channel, data));
                        continue;
                    }
                    Output::Subscribe { channel } => {
                        if let Some(link) = &self.backplane {
                            link.subscribe(channel);
                        }
                        continue;
                    }
                    Output::Unsubscribe { channel } => {
                        if let Some(link) = &self.backplane {
                            link.unsubscribe(channel);
                        }
                        continue;
                    }
                    Output::ResetBackplane => {
                        self.to_backplane(super::backplane::Request::Reset);
                        continue;
                    }
                    Output::Upstream(request) => {
                        let (runtime, mut inputs) = (self.runtime.clone(), self.inputs.clone());
                        self.runtime.spawn(async move {
                            let result = super::client::send(&runtime, &request).await;
                            let _ = inputs.send(DriverInput::Upstream(request.id, result)).await;
                        });
                        continue;
                    }
                };
                let closing = matches!(command, Command::Close { .. });
                if let Command::Send { data, .. } = &command {
                    self.batch_bytes += data.len();
                }
                if let Some(a) = self.writers.get(&conn) {
                    match a.outbox.push(command) {
                        Err(Refused::Full) => stalled.push(conn),
                        // Its socket's task ended: the `Closed` it sent is on the way.
                        Err(Refused::Gone) => {}
                        Ok(()) if !closing => self.pause_if_congested(conn),
                        Ok(()) => {}
                    }
                    if closing {
                        self.writers.remove(&conn);
                        self.resume_paused_on(conn);
                    }
                } else if self.awaiting.contains(&conn) {
                    let size = match &command {
                        Command::Send { data, .. } => data.len(),
                        Command::Close { .. } => 0,
                    };
                    let (bytes, pending) = self.early.entry(conn).or_default();
                    *bytes += size;
                    pending.push(command);
                    if *bytes > self.options.client_send_queue {
                        self.early.remove(&conn);
                        self.awaiting.remove(&conn);
                        stalled.push(conn);
                    }
                }
                // Anything else is for a connection the relay already dropped.
            }
            self.source = None;
            if stalled.is_empty() {
                return;
            }
            // A peer that stopped reading is dropped rather than buffered without bound;
            // telling the relay may queue more output (e.g. CloseConnection to its app server).
            for conn in stalled {
                self.drop_peer(conn, "closing a connection whose peer stopped reading");
            }
        }
    }
}

/// Logs a refused request or handshake (the caller rate-limits: `similar_since_last` says how
/// many it held back).
fn log_refused(event: &Event, similar_since_last: u64) {
    if let Event::Refused {
        at,
        status,
        hub,
        connection_id,
        transport,
        reason,
    } = event
    {
        tracing::info!(
            at,
            status,
            hub,
            connection_id,
            transport = transport.map(|t| t.as_str()),
            similar_since_last,
            "refused: {reason}"
        );
    }
}

/// The log target of client connects and disconnects: `--log info,signalr_relay::clients=warn`
/// keeps them out of a busy relay's log.
const CLIENT_LOG: &str = "signalr_relay::clients";

/// Logs what opened and closed, at `info`: app-server connections and clients.
fn log_event(event: &Event) {
    match event {
        Event::ServerOpened {
            conn,
            hub,
            server_id,
        } => tracing::info!(
            conn = conn.0,
            hub,
            server_id,
            "app server connection opened"
        ),
        Event::ServerClosed {
            conn,
            hub,
            server_id,
            reason,
        } => tracing::info!(
            conn = conn.0,
            hub,
            server_id,
            by = ?reason.initiator,
            reason = reason.kind.as_str(),
            "app server connection closed"
        ),
        Event::ClientOpened {
            conn,
            hub,
            connection_id,
            family,
            transport,
            protocol,
        } => tracing::info!(
            target: CLIENT_LOG,
            conn = conn.0,
            hub,
            connection_id,
            transport = signalr_relay_core::relay::transport_label(*family, *transport),
            protocol = protocol.name(),
            "client connected"
        ),
        Event::ClientClosed {
            conn,
            hub,
            connection_id,
            reason,
        } => tracing::info!(
            target: CLIENT_LOG,
            conn = conn.0,
            hub,
            connection_id,
            by = ?reason.initiator,
            reason = reason.kind.as_str(),
            "client disconnected"
        ),
        _ => tracing::debug!(?event, "relay event"),
    }
}

/// Serves one accepted connection, as `port`: a TLS one in a box of its own (its session is
/// large, and a plain connection should not carry room for it), a plain one as it is.
fn spawn_connection<R: Runtime, S>(
    runtime: &R,
    stream: S,
    peer: SocketAddr,
    settings: Arc<Settings>,
    port: Port,
) where
    S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
{
    match settings.options.tls.clone() {
        Some(tls_config) if port == Port::Public => {
            let tls = serve_tls(runtime.clone(), tls_config, stream, peer, settings);
            runtime.spawn(Box::pin(tls));
        }
        _ => runtime.spawn(serve_http(runtime.clone(), stream, peer, settings, port)),
    }
}

/// A TLS handshake, within the time a request's headers have, then HTTP on the session.
async fn serve_tls<R: Runtime, S>(
    runtime: R,
    tls_config: ServerTls,
    stream: S,
    peer: SocketAddr,
    settings: Arc<Settings>,
) where
    S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
{
    let deadline = runtime.sleep_until(runtime.now() + settings.options.header_read_timeout);
    let handshake = Box::pin(tls::accept(&tls_config, stream));
    let failed = match select(handshake, deadline).await {
        Either::Left((Accepted::Tls(session), _)) => {
            let http = serve_http(runtime, *session, peer, settings.clone(), Port::Public);
            Box::pin(http).await;
            None
        }
        Either::Left((Accepted::Plain, _)) => Some("plain_http"),
        Either::Left((Accepted::Failed(e), _)) => {
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            Some("handshake_failed")
        }
        Either::Right(((), _)) => Some("handshake_timeout"),
    };
    if let Some(cause) = failed {
        settings.gate_refusals.count(("tls", cause));
    }
}

/// Serves HTTP/1.1 (and its upgrades) on one connection, plain or TLS. Clients' transport
/// requests are served on the lean path ([`lean`]); from the first request that it leaves to
/// a general server on, hyper serves the connection.
///
/// Not an `async fn`: that would keep each argument twice in its state (as it came, and
/// moved into the body), and an idle kept-alive connection's task is this state. The block
/// uses what it captured in place.
#[allow(clippy::manual_async_fn)]
fn serve_http<R: Runtime, S>(
    runtime: R,
    stream: S,
    peer: SocketAddr,
    settings: Arc<Settings>,
    port: Port,
) -> impl Future<Output = ()> + Send
where
    S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
{
    let mut conn = lean::Conn {
        runtime,
        io: stream,
        buf: Vec::new(),
        peer: peer.ip(),
        settings,
        parsed: 0,
    };
    async move {
        if port == Port::Public {
            match lean::serve(&mut conn).await {
                lean::Ended::Hyper => {}
                lean::Ended::Done => return,
                lean::Ended::Close => {
                    let limit = lean::WriteLimit::of(&conn.runtime, &conn.settings);
                    Box::pin(lean::close(&mut conn.io, limit)).await;
                    return;
                }
                lean::Ended::Refuse(status, text) => {
                    let limit = lean::WriteLimit::of(&conn.runtime, &conn.settings);
                    Box::pin(lean::refuse(&mut conn.io, status, text, limit)).await;
                    return;
                }
                lean::Ended::WebSocket(handle, side) => {
                    let (io, events) = (conn.io, conn.settings.events.clone());
                    let websocket =
                        run_websocket(&conn.runtime, io, &conn.buf, handle, events, side);
                    Box::pin(websocket).await;
                    return;
                }
            }
        }
        // Boxed: a connection the lean path serves does not carry room for hyper's state.
        Box::pin(serve_hyper(conn, port)).await;
    }
}

/// Serves the rest of a connection with hyper (its `buf`: bytes already read from it).
async fn serve_hyper<R: Runtime, S>(conn: lean::Conn<R, S>, port: Port)
where
    S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
{
    let lean::Conn {
        runtime,
        io: stream,
        buf: early,
        peer,
        settings,
        ..
    } = conn;
    // Dropping the connection is how a stalled event stream is closed for real; the signal
    // also tells the stream when one of its requests is held (see `watched`).
    let abort = Arc::new(AbortSignal::default());
    let timer = runtime.hyper_timer();
    let header_read_timeout = settings.options.header_read_timeout;
    let stall = Stall::new(runtime.clone(), settings.options.write_timeout);
    let service = {
        let abort = abort.clone();
        // Boxed: hyper keeps a place for the service's future as long as the connection
        // lives (an event stream's, a kept-alive long poll's), so it should be a pointer, and
        // the request's state exist only while a request does.
        hyper::service::service_fn(move |req| {
            Box::pin(handle::<R, S>(
                runtime.clone(),
                req,
                peer,
                settings.clone(),
                abort.clone(),
                port,
            ))
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Vectored writes (every stream here has them): a response's body chunks (an event
    // stream's messages) are not copied into a write buffer of the connection's that then
    // stays as large as the largest for the connection's life; small ones together are
    // gathered into the thread's buffer for one `send` (`WatchedIo`).
    // `half_close`: hyper does not read a connection mid-message (to see it end, into a read
    // buffer it allocates for each held request); the stream watches instead.
    builder
        .timer(timer)
        .header_read_timeout(header_read_timeout)
        .max_buf_size(MAX_REQUEST_HEAD)
        .writev(true)
        .half_close(true);
    let connection = builder
        .serve_connection(
            WatchedIo::with_early(stream, abort.clone(), early, stall),
            service,
        )
        .with_upgrades();
    match abort.guard(std::pin::pin!(connection)).await {
        Some(Err(e)) => tracing::debug!("HTTP connection ended: {e}"),
        Some(Ok(())) => {}
        None => tracing::debug!("HTTP connection dropped: its event stream stalled"),
    }
}

/// Largest request head (request line and headers) read: Kestrel's defaults are 8 KiB for the
/// request line and 32 KiB for the headers.
const MAX_REQUEST_HEAD: usize = 40 * 1024;

/// Tells the driver when a held request's handler, or an event stream's body, goes away
/// before the relay ended it.
///
/// Held as long as the request or the stream, so it keeps only what the event is made of, and
/// the driver's sender (`E`): its own, or one it borrows ([`DropNotice::lend`]) where
/// whatever holds it also holds the relay's, so that a held long poll or an event stream
/// does not keep a sender of its own (each clone of a sender allocates 48 bytes). It tells
/// through a clone made then, which is never parked: whatever the sender it came with did
/// before, the notice is not refused for a full channel. (Each sender it comes with today
/// last sent with `send().await`, which returns only once that sender is unparked.)
struct DropNotice<E: Borrow<mpsc::Sender<DriverInput>> = mpsc::Sender<DriverInput>> {
    gone: Gone,
    events: E,
}

/// What a [`DropNotice`] tells.
enum Gone {
    /// An event stream's connection, of its generation, ended.
    Stream(ConnHandle, Generation),
    /// A held request was dropped.
    Held(RequestId),
    /// Nothing (disarmed).
    Told,
}

impl<E: Borrow<mpsc::Sender<DriverInput>>> DropNotice<E> {
    /// The relay ended it: nothing to tell.
    fn disarm(&mut self) {
        self.gone = Gone::Told;
    }
}

impl DropNotice {
    /// The same notice, telling through `events` (a sender of the same driver), and its own
    /// sender let go.
    fn lend(
        mut self,
        events: &mpsc::Sender<DriverInput>,
    ) -> DropNotice<&mpsc::Sender<DriverInput>> {
        let gone = std::mem::replace(&mut self.gone, Gone::Told);
        DropNotice { gone, events }
    }
}

impl<E: Borrow<mpsc::Sender<DriverInput>>> Drop for DropNotice<E> {
    fn drop(&mut self) {
        let event = match std::mem::replace(&mut self.gone, Gone::Told) {
            Gone::Stream(conn, generation) => {
                DriverInput::Incoming(conn, generation, Incoming::Closed)
            }
            Gone::Held(request) => DriverInput::Aborted(request),
            Gone::Told => return,
        };
        let _ = self.events.borrow().clone().try_send(event);
    }
}

/// An event stream's body: what the driver queues for it, as it comes. It ends when the driver
/// closes it or lets go of its queue; then, or when the response is dropped, the driver hears
/// that the stream ended.
struct EventStreamBody(Option<(queue::Inbox, DropNotice, Watch)>);

impl hyper::body::Body for EventStreamBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let Some((inbox, ..)) = this.0.as_mut() else {
            return Poll::Ready(None);
        };
        let next = std::task::ready!(inbox.poll_next(cx));
        if let Some(command) = next {
            let size = command.size();
            if let Command::Send { data, .. } = command {
                inbox.taken(size);
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
        }
        // A close, or the driver let go: the end, which the driver hears now (the notice
        // goes), not when hyper lets go of the body.
        this.0 = None;
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}

/// Reads at most `max` bytes of `body`: a longer body is cut there, and the rest is never
/// read (the connection is closed after the response).
async fn read_body(mut body: hyper::body::Incoming, max: usize) -> Result<(Bytes, bool), ()> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(drop)?.into_data() else {
            continue;
        };
        let take = (max - buf.len()).min(data.len());
        buf.extend_from_slice(&data[..take]);
        if buf.len() >= max {
            return Ok((buf.freeze(), hyper::body::Body::is_end_stream(&body)));
        }
    }
    Ok((buf.freeze(), true))
}

fn closing(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// What a request gets, whichever server read it.
struct Answer {
    kind: Answered,
    /// The origin the response may be read from (CORS), if any.
    cors: Option<String>,
    /// Whether the connection closes after the response.
    close: bool,
}

enum Answered {
    Respond(HttpResponse),
    /// Switch to a WebSocket: the `Sec-WebSocket-Accept`, and how its side is set up.
    WebSocket(ConnHandle, String, Side),
    /// A `200` event stream, whose body is what comes on the queue.
    EventStream(queue::Inbox, DropNotice),
    /// A held request, answered on the channel (none: when the relay shuts down).
    Held(Option<oneshot::Receiver<HeldAnswer>>, DropNotice),
}

impl Answer {
    fn new(kind: Answered, cors: Option<String>, close: bool) -> Self {
        Self { kind, cors, close }
    }

    /// 503, and the connection closed: what is left of the request (a body not read) must not
    /// be taken for the next one.
    fn shutting_down(cors: Option<String>) -> Self {
        Self::new(Answered::Respond(held_response(None)), cors, true)
    }
}

/// A held request's response: the driver's, or 503 when it went away first.
fn held_response(answer: Option<HttpResponse>) -> HttpResponse {
    answer.unwrap_or_else(|| HttpResponse::text(503, "The relay is shutting down."))
}

/// Answers a request from its head and, as far as its endpoint needs one, its body (`body`
/// reads at most the bytes it is given, within the body timeout; `has_body`: whether there is
/// one to read). The request is authenticated on its head before any of its body is read.
///
/// Not an `async fn`, which would keep each argument twice in its state: every request under
/// way holds this state while it waits for the driver (a thousand at once in a reconnect
/// storm), so it is kept small (see `an_answer_under_way_is_small`).
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
fn answer<'a, R, B, F>(
    runtime: &'a R,
    mut request: Box<HttpRequest>,
    has_body: bool,
    body: B,
    mut events: mpsc::Sender<DriverInput>,
    settings: &'a Settings,
    abort: Option<&'a Arc<AbortSignal>>,
) -> impl std::future::Future<Output = Answer> + 'a
where
    R: Runtime,
    B: FnOnce(usize) -> F + 'a,
    F: std::future::Future<Output = Result<(Bytes, bool), ()>> + 'a,
{
    async move {
        let origin = request.headers.get("origin").map(str::to_owned);
        let accept = request
            .websocket
            .then(|| request.headers.get("sec-websocket-key"))
            .flatten()
            .map(|key| derive_accept_key(key.trim().as_bytes()));
        let server_connection =
            request.path.starts_with("/server") || request.path.starts_with("/aspnetserver");
        // The operator's endpoints are for the operator's tools and the relay's own page: no other
        // site may read them from a visitor's browser.
        let operator_endpoint = matches!(
            request.path.as_str(),
            "/" | "/metrics" | signalr_relay_core::relay::STATUS_PATH
        );
        let negotiate = request.path.trim_end_matches('/').ends_with("/negotiate");
        // Authenticate on the headers, then read no more body than the endpoint can need.
        let limit = match admit(runtime, settings, &mut request) {
            Ok(limit) => limit,
            Err(response) => return Answer::new(Answered::Respond(response), origin, true),
        };
        let body_left = if limit == 0 {
            has_body
        } else {
            // Boxed: only a request with a body to read holds this wait's state.
            match Box::pin(read_within(runtime, body, limit, settings)).await {
                Ok((body, complete)) => {
                    request.body = body;
                    !complete
                }
                Err(response) => return Answer::new(Answered::Respond(response), origin, true),
            }
        };
        let cors = origin.filter(|_| !operator_endpoint);
        let (reply, answered) = oneshot::channel();
        if events
            .send(DriverInput::Request(request, reply))
            .await
            .is_err()
        {
            return Answer::shutting_down(cors);
        }
        // A client's next request after negotiate is its WebSocket (a connection of its own) or
        // a poll it may open anew: an idle keep-alive connection would hold a read buffer for
        // nothing. A body left unread cannot be followed by another request.
        let close = negotiate || body_left;
        // In a block of its own: the waits below do not hold the outcome.
        let (conn, stream) = {
            let Ok((outcome, held)) = answered.await else {
                return Answer::shutting_down(cors);
            };
            match outcome {
                RequestOutcome::Respond(r) => {
                    return Answer::new(Answered::Respond(r), cors, close);
                }
                RequestOutcome::Pending(request) => {
                    let notice = DropNotice {
                        gone: Gone::Held(request),
                        events,
                    };
                    return Answer::new(Answered::Held(held, notice), cors, close);
                }
                RequestOutcome::AcceptWebSocket(conn) => (conn, false),
                RequestOutcome::EventStream(conn) => (conn, true),
            }
        };
        let kind = if stream {
            Box::pin(event_stream(conn, events, settings, abort)).await
        } else if let Some(accept) = accept {
            Answered::WebSocket(conn, accept, websocket_side(settings, server_connection))
        } else {
            let _ = events
                .send(DriverInput::Incoming(conn, 0, Incoming::Closed))
                .await;
            let response = HttpResponse::text(400, "Bad WebSocket request.");
            return Answer::new(Answered::Respond(response), cors, true);
        };
        Answer::new(kind, cors, close)
    }
}

/// Authenticates a request on its head: how many bytes of its body its endpoint may read, or
/// the response that refuses it.
fn admit<R: Runtime>(
    runtime: &R,
    settings: &Settings,
    request: &mut HttpRequest,
) -> Result<usize, HttpResponse> {
    let checked = if request.path == signalr_relay_core::relay::STATUS_PATH {
        settings
            .gate
            .status_access(runtime.now(), request)
            .map(|()| 0)
    } else {
        settings
            .gate
            .check(runtime.now(), request)
            .map(|(limit, verified)| {
                request.verified = verified;
                limit
            })
    };
    checked.map_err(|refusal| {
        // Counted and logged here, not by the driver: a flood of them costs the relay's task
        // nothing.
        settings.gate_refusals.add(runtime.now(), request, &refusal);
        HttpResponse::from(&refusal)
    })
}

/// Reads at most `limit` bytes of a request's body, and one more (to tell a body over the
/// limit), within the body timeout: the body and whether it came whole, or the response that
/// refuses the request.
async fn read_within<R, B, F>(
    runtime: &R,
    body: B,
    limit: usize,
    settings: &Settings,
) -> Result<(Bytes, bool), HttpResponse>
where
    R: Runtime,
    B: FnOnce(usize) -> F,
    F: std::future::Future<Output = Result<(Bytes, bool), ()>>,
{
    let read = body(limit.saturating_add(1));
    futures_util::pin_mut!(read);
    // The timer is made only if the body is not all there (a client's send most often is,
    // with its head): a timer is an allocation and a registration with the runtime's timers.
    let timeout = settings.options.body_read_timeout;
    let mut deadline = None;
    let read = std::future::poll_fn(|cx| {
        if let Poll::Ready(read) = read.as_mut().poll(cx) {
            return Poll::Ready(Some(read));
        }
        poll_timer(runtime, &mut deadline, timeout, cx).map(|()| None)
    });
    match read.await {
        Some(Ok(read)) => Ok(read),
        Some(Err(())) => Err(HttpResponse::text(
            400,
            "The request body could not be read.",
        )),
        None => Err(HttpResponse::text(408, "The request body took too long.")),
    }
}

/// How a client's or an app server's WebSocket is served.
fn websocket_side(settings: &Settings, server_connection: bool) -> Side {
    let options = &settings.options;
    if server_connection {
        Side {
            max_message: settings.server_frame,
            queue: options.server_send_queue,
            pause_at: options.server_send_pause,
            server: true,
        }
    } else {
        Side {
            max_message: settings.client_frame,
            queue: options.client_send_queue,
            pause_at: options.client_send_queue / 8,
            server: false,
        }
    }
}

/// An event stream the driver started: its queue, attached to the driver.
async fn event_stream(
    conn: ConnHandle,
    mut events: mpsc::Sender<DriverInput>,
    settings: &Settings,
    abort: Option<&Arc<AbortSignal>>,
) -> Answered {
    let generation = next_generation();
    let queue = settings.options.client_send_queue;
    let (outbox, inbox) = queue::channel(queue, usize::MAX, false, abort.cloned());
    let _ = events
        .send(DriverInput::Attach(conn, generation, outbox))
        .await;
    let notice = DropNotice {
        gone: Gone::Stream(conn, generation),
        events,
    };
    Answered::EventStream(inbox, notice)
}

/// Whether `port` serves `path`.
fn served_here(settings: &Settings, port: Port, path: &str) -> bool {
    match port {
        Port::Operator => matches!(path, "/metrics" | "/health" | "/ready"),
        Port::Public => !(settings.metrics_elsewhere && path == "/metrics"),
    }
}

/// A request as hyper read it: answered by [`answer`], and the answer made hyper's.
async fn handle<R: Runtime, S>(
    runtime: R,
    mut req: Request<hyper::body::Incoming>,
    peer: IpAddr,
    settings: Arc<Settings>,
    abort: Arc<AbortSignal>,
    port: Port,
) -> Result<Response<Body>, Infallible>
where
    S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
{
    if !served_here(&settings, port, req.uri().path()) {
        return Ok(text(StatusCode::NOT_FOUND, "Not found."));
    }
    if let Some(mut response) = preflight(&req).or_else(|| bad_upgrade(&req)) {
        allow_origin(req.headers().get(ORIGIN), &mut response);
        return Ok(response);
    }
    let request = Box::new(to_core_request(&req, peer));
    let on_upgrade = request.websocket.then(|| hyper::upgrade::on(&mut req));
    let has_body = req.method() == Method::POST;
    let body = |limit| read_body(req.into_body(), limit);
    let answer = answer(
        &runtime,
        request,
        has_body,
        body,
        settings.events.clone(),
        &settings,
        Some(&abort),
    )
    .await;
    let mut response = match answer.kind {
        Answered::Respond(r) => respond(r),
        Answered::WebSocket(conn, accept, side) => {
            let (Ok(accept), Some(on_upgrade)) = (HeaderValue::from_str(&accept), on_upgrade)
            else {
                let _ = settings
                    .events
                    .clone()
                    .send(DriverInput::Incoming(conn, 0, Incoming::Closed))
                    .await;
                return Ok(text(StatusCode::BAD_REQUEST, "Bad WebSocket request."));
            };
            runtime.spawn(upgrade::<R, S>(
                runtime.clone(),
                on_upgrade,
                conn,
                settings.events.clone(),
                side,
            ));
            let mut response = Response::new(empty());
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let headers = response.headers_mut();
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
            response
        }
        Answered::EventStream(inbox, notice) => {
            let body = EventStreamBody(Some((inbox, notice, Watch::start(&abort))));
            let mut response = Response::new(BodyExt::boxed(body));
            let headers = response.headers_mut();
            for (name, value) in EVENT_STREAM_FIELDS {
                headers.insert(name, HeaderValue::from_static(value));
            }
            response
        }
        Answered::Held(held, notice) => {
            let mut notice = notice.lend(&settings.events);
            let answer = match held {
                Some(rx) => {
                    let _watch = Watch::start(&abort);
                    rx.await.ok().map(|answer| *answer)
                }
                None => None,
            };
            notice.disarm();
            respond(held_response(answer))
        }
    };
    let origin = answer.cors.and_then(|o| HeaderValue::from_str(&o).ok());
    allow_origin(origin.as_ref(), &mut response);
    if answer.close {
        response = closing(response);
    }
    Ok(response)
}

/// The header fields of an event stream's response.
const EVENT_STREAM_FIELDS: [(&str, &str); 3] = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache, no-store"),
    ("x-accel-buffering", "no"),
];

/// How one side's WebSockets are set up: the client's limits, or the app server's.
struct Side {
    max_message: usize,
    queue: usize,
    pause_at: usize,
    server: bool,
}

/// Completes a WebSocket upgrade on the raw stream (recovered from hyper, with any bytes it
/// already read), then pumps it.
async fn upgrade<R: Runtime, S>(
    runtime: R,
    on_upgrade: hyper::upgrade::OnUpgrade,
    conn: ConnHandle,
    mut events: mpsc::Sender<DriverInput>,
    side: Side,
) where
    S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(Ok(parts)) = on_upgrade.await.map(|u| u.downcast::<WatchedIo<S, R>>()) else {
        tracing::debug!("WebSocket upgrade failed");
        let _ = events
            .send(DriverInput::Incoming(conn, 0, Incoming::Closed))
            .await;
        return;
    };
    // The bytes hyper read past the request live in its whole 8 KiB read buffer: copy them
    // out (usually none) and let the buffer go, rather than hold it while the driver is busy.
    let hyper::upgrade::Parts { io, read_buf, .. } = parts;
    let (io, unread) = io.into_parts();
    let mut early = read_buf.to_vec();
    early.extend_from_slice(&unread);
    drop(read_buf);
    run_websocket(&runtime, io, &early, conn, events, side).await;
}

/// Attaches a WebSocket to its handle, and pumps it on a task of its own (`early`: bytes
/// already read past the upgrade request).
async fn run_websocket<R: Runtime, S>(
    runtime: &R,
    io: S,
    early: &[u8],
    conn: ConnHandle,
    mut events: mpsc::Sender<DriverInput>,
    side: Side,
) where
    S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
{
    let generation = next_generation();
    let (outbox, inbox) = queue::channel(side.queue, side.pause_at, side.server, None);
    if events
        .send(DriverInput::Attach(conn, generation, outbox))
        .await
        .is_err()
    {
        return;
    }
    // The pump gets a task of its own, the size of its own state: this one's (hyper's
    // upgrade, the attach) is not held for the connection's life.
    // Made only now: it hands what `early` holds to the driver at once, which must come
    // after the attach.
    runtime.spawn(ws::pump(
        io,
        early,
        side.max_message,
        inbox,
        events,
        move |incoming| DriverInput::Incoming(conn, generation, incoming),
    ));
}

#[cfg(all(test, feature = "tokio"))]
mod tests {
    use super::*;
    use crate::glue::accept::ConnectionCount;
    use crate::{TokioRuntime, TokioStream};

    /// Every HTTP connection is a task whose state is `serve_http`'s future: an idle
    /// kept-alive one, one holding a long poll or an event stream, and a WebSocket (its pump
    /// is boxed). tokio adds 104 bytes around it and rounds the task up to 128: at 152 bytes or
    /// less it takes 256 bytes, at 153 it would take 384, on every connection.
    #[tokio::test]
    async fn a_connection_task_fits_in_256_bytes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = listener.local_addr().unwrap();
        let socket = tokio::net::TcpStream::connect(peer).await.unwrap();
        let admitted = ConnectionCount::new(1).admit().unwrap();
        let stream = Counted::new(TokioStream(socket), admitted);
        let task = serve_http(TokioRuntime, stream, peer, settings(), Port::Public);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 152, "a connection's future is {size} bytes");
    }

    /// A connection as the lean path serves it, and the listener it came to (kept while it is).
    async fn connection() -> (tokio::net::TcpListener, Counted<TokioStream>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await;
        let listener = listener.expect("a listener on loopback");
        let addr = listener.local_addr().expect("its address");
        let socket = tokio::net::TcpStream::connect(addr).await;
        let socket = socket.expect("a connection to it");
        let admitted = ConnectionCount::new(1).admit().expect("room for one");
        (listener, Counted::new(TokioStream(socket), admitted))
    }

    fn settings() -> Arc<Settings> {
        let relay = Relay::new(RelayConfig::default(), Instant::now(), 0, [7; 32]);
        Arc::new(Settings {
            client_frame: 1024,
            server_frame: 1024,
            gate: relay.gate(),
            gate_refusals: Arc::default(),
            metrics_elsewhere: false,
            options: ServeOptions::default(),
            events: mpsc::channel(1).0,
        })
    }

    /// Every request under way holds its answer's state in a box until the driver answers:
    /// a thousand at once when that many clients reconnect, and what they hold at the peak
    /// stays in the process's memory after they are served (the allocator keeps it). It was
    /// 952 bytes when it held the request, the body's read and the switches to a WebSocket
    /// or an event stream; each of those is boxed on its own now, and only when needed.
    #[tokio::test]
    async fn an_answer_under_way_is_small() {
        let (_listener, mut io) = connection().await;
        let mut buf = Vec::new();
        let settings = settings();
        // As the lean path reads a body: the closure holds the connection's parts and the
        // body's length.
        let length: u64 = 10;
        let from = (&mut io, &mut buf);
        let body = move |limit: usize| {
            let (io, buf) = from;
            lean::read_body(io, buf, length, limit)
        };
        let events = settings.events.clone();
        let request = Box::default();
        let answer = answer(&TokioRuntime, request, true, body, events, &settings, None);
        let size = std::mem::size_of_val(&answer);
        assert!(size <= 232, "an answer's future is {size} bytes");
    }

    /// A held long poll's reply, and an event stream's, is held as long as its client waits
    /// or listens: a thousand idle clients hold a thousand. Each is boxed on its own and holds
    /// only what its kind needs (see `lean::reply`); a notice lent before the box is made
    /// adds no sender to it.
    #[tokio::test]
    async fn held_replies_are_small() {
        let (_listener, mut io) = connection().await;
        let mut buf = Vec::new();
        let settings = settings();
        let limit = lean::WriteLimit::of(&TokioRuntime, &settings);
        let notice = |gone| DropNotice {
            gone,
            events: settings.events.clone(),
        };
        // The size of a reply's box, dropped at once.
        let mut size_of = |kind| {
            let replying = lean::reply(
                &mut io,
                &mut buf,
                kind,
                None,
                false,
                &settings.events,
                limit,
            );
            std::mem::size_of_val(&*replying)
        };

        let (_answer, held) = oneshot::channel();
        let size = size_of(Answered::Held(Some(held), notice(Gone::Held(RequestId(1)))));
        assert!(size <= HELD_REPLY, "a held request's reply is {size} bytes");

        let (_outbox, inbox) = queue::channel(16, usize::MAX, false, None);
        let gone = Gone::Stream(ConnHandle(1), 1);
        let size = size_of(Answered::EventStream(inbox, notice(gone)));
        assert!(
            size <= STREAM_REPLY,
            "an event stream's reply is {size} bytes"
        );
    }

    /// What a held request's reply may take: 216 bytes with a sender of its own, 256 with a
    /// notice lent inside its box (which then held both).
    const HELD_REPLY: usize = 200;
    /// What an event stream's reply may take: 552 bytes with a sender of its own, 592 lent
    /// inside its box.
    const STREAM_REPLY: usize = 536;

    /// A sender whose send took the channel past its buffer is parked, and refuses what it is
    /// given next until the driver has read (with a buffer of 0, its first send does). A notice
    /// tells through a sender made when it goes, so it is heard whatever the sender it came
    /// with, or the one it borrows, did before; once, and a disarmed one not at all.
    #[test]
    fn a_notice_is_heard_whatever_its_sender_did() {
        let (events, mut queue) = mpsc::channel(0);
        let mut parked = events.clone();
        parked.try_send(DriverInput::ShutDown).unwrap();
        let refused = parked.try_send(DriverInput::ShutDown).unwrap_err();
        assert!(refused.is_full(), "parked");
        let mut lender = events.clone();
        lender.try_send(DriverInput::ShutDown).unwrap();
        let refused = lender.try_send(DriverInput::ShutDown).unwrap_err();
        assert!(refused.is_full(), "parked");

        drop(DropNotice {
            gone: Gone::Held(RequestId(7)),
            events: parked,
        });
        let owned = DropNotice {
            gone: Gone::Stream(ConnHandle(9), 2),
            events: events.clone(),
        };
        drop(owned.lend(&lender));
        let mut disarmed = DropNotice {
            gone: Gone::Held(RequestId(8)),
            events: events.clone(),
        };
        disarmed.disarm();
        drop(disarmed);

        let mut heard = Vec::new();
        while let Ok(input) = queue.try_recv() {
            heard.push(match input {
                DriverInput::ShutDown => "shut down".to_owned(),
                DriverInput::Aborted(RequestId(id)) => format!("aborted {id}"),
                DriverInput::Incoming(ConnHandle(conn), generation, Incoming::Closed) => {
                    format!("closed {conn} {generation}")
                }
                _ => "something else".to_owned(),
            });
        }
        assert_eq!(
            heard,
            ["shut down", "shut down", "aborted 7", "closed 9 2"],
            "each notice told once, the disarmed one not at all"
        );
    }
}
