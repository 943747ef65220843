//! The app-server SDK: host SignalR hubs behind a SignalR Relay (or Azure SignalR Service).
//!
//! An [`AppServer`] opens server connections to the relay for each hub (5 per hub by default),
//! reconnects them with backoff when they drop, and runs the hub's methods for the clients the
//! relay maps to it. Hubs are built from async closures with typed (serde) arguments and
//! results; the same hub serves JSON and MessagePack clients.
//!
//! ```no_run
//! # use signalr_relay_tokio::sdk::*;
//! let chat = HubBuilder::new("chat")
//!     .method("Echo", |_ctx: Context, (msg,): (String,)| async move { Ok(msg) })
//!     .method("Broadcast", |ctx: Context, (msg,): (String,)| async move {
//!         ctx.clients().all().send("broadcast", &(msg,))?;
//!         Ok(())
//!     })
//!     .build();
//! ```

mod codec;
mod command;
mod connection;
mod hub;
pub mod management;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use signalr_relay_core::aspnetcore::negotiate::NegotiateResponse;
use signalr_relay_core::auth::{sign, Algorithm, Claims, ConnectionString, ConnectionStringError};
use signalr_relay_core::classic::{
    ErrorResponse, NegotiateReply as ClassicNegotiateReply, RedirectResponse,
};

use signalr_relay_core::service::{self, ServiceMessage};

use self::command::{ConnCommand, ConnTx};
pub(crate) use self::hub::PendingResult;
use self::hub::{lock, ClientEntry};
pub use self::hub::{
    Clients, Context, Groups, Hub, HubBuilder, HubError, InvokeError, MethodResult, Target,
    UploadStream,
};
use crate::glue::Runtime;
use futures_rustls::rustls;

/// Settings of an [`AppServer`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AppOptions {
    /// Server connections opened per hub, to each relay (default 5).
    pub connections_per_hub: usize,
    /// Most server connections per hub to one relay, on-demand ones included (default 20).
    pub max_connections_per_hub: usize,
    /// Lifetime of the client tokens [`AppServer::negotiate`] issues (default 1 h).
    pub client_token_lifetime: Duration,
    /// A stable id for this app server (sent as `X-ASRS-Server-Id`).
    pub server_id: String,
    /// How long [`Target::invoke`] waits for a client's result (default 30 s).
    pub client_result_timeout: Duration,
    /// Invocations one client may have waiting or running (default 256, as ASP.NET Core bounds
    /// a client's parallel invocations). Past it, an invocation fails at once.
    pub max_invocations_per_client: usize,
    /// Streams one client may have open, to it and from it each (default 128). Past it, or
    /// for an id already in use, a stream invocation fails at once.
    pub max_streams_per_client: usize,
    /// Whether clients negotiated here must be served by this app server (default
    /// [`ServerSticky::Disabled`]), as the Azure SDK's `ServerStickyMode`. Stateful hub code
    /// (Blazor's circuits) needs [`ServerSticky::Required`] once there are several app servers.
    pub server_sticky: ServerSticky,
    /// Whether this app's clients may use stateful reconnect (default false, as ASP.NET
    /// Core's `AllowStatefulReconnects`); the relay offers it only when every app server of
    /// the hub allows it.
    pub allow_stateful_reconnects: bool,
    /// Whether [`AppServer::shutdown`] has the relay move this app server's clients to the
    /// hub's other app servers (default false), as the Azure SDK's `GracefulShutdown.Mode =
    /// MigrateClients`; without it, they stay until they leave or the app server goes.
    pub migrate_clients_on_shutdown: bool,
    /// PEM certificates to trust besides the platform's roots, for relays at `https`
    /// endpoints whose certificate a private CA issued (default none).
    pub ca_file: Option<std::path::PathBuf>,
}

/// Why an [`AppServer`] could not be set up.
#[derive(Debug)]
pub enum SetupError {
    /// A connection string is invalid, or none was given.
    ConnectionString(ConnectionStringError),
    /// The TLS settings for an `https` endpoint: [`AppOptions::ca_file`] is unreadable.
    Tls(String),
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ConnectionString(e) => e.fmt(f),
            Self::Tls(e) => write!(f, "the CA file: {e}"),
        }
    }
}

impl std::error::Error for SetupError {}

impl From<ConnectionStringError> for SetupError {
    fn from(e: ConnectionStringError) -> Self {
        Self::ConnectionString(e)
    }
}

/// Whether a client goes to the app server that negotiated it: the token names this app
/// server (`asrs.s.sn`, its [`AppOptions::server_id`]) with the mode (`asrs.s.ssticky`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServerSticky {
    /// Any app server of the hub.
    #[default]
    Disabled,
    /// This app server while it has a connection; another one otherwise.
    Preferred,
    /// Only this app server: without a connection of it, the client is refused.
    Required,
}

impl std::str::FromStr for ServerSticky {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "disabled" => Ok(Self::Disabled),
            "preferred" => Ok(Self::Preferred),
            "required" => Ok(Self::Required),
            _ => Err(format!("{s:?}: expected disabled, preferred or required")),
        }
    }
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            connections_per_hub: 5,
            max_connections_per_hub: 20,
            client_token_lifetime: Duration::from_secs(3600),
            // The process id alone repeats across containers and restarts.
            server_id: format!("app-{}-{}", std::process::id(), &hub::random_id()[..8]),
            client_result_timeout: Duration::from_secs(30),
            max_invocations_per_client: 256,
            max_streams_per_client: 128,
            server_sticky: ServerSticky::Disabled,
            allow_stateful_reconnects: false,
            migrate_clients_on_shutdown: false,
            ca_file: None,
        }
    }
}

/// State shared by every connection and hub of one app server.
pub(crate) struct Shared {
    /// The relays (endpoints) this app server serves through; at least one.
    pub(crate) endpoints: Vec<ConnectionString>,
    /// TLS for the `https` endpoints (none if there is none).
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) options: AppOptions,
    pub(crate) hubs: BTreeMap<String, Arc<HubRuntime>>,
    /// When each connection failure was last logged (at most once a minute each).
    pub(crate) failures_logged: Mutex<BTreeMap<String, std::time::Instant>>,
}

impl Shared {
    /// Whether `failure` was not logged in the last minute (and now it counts as logged).
    pub(crate) fn first_time_lately(&self, failure: &str, now: std::time::Instant) -> bool {
        let mut logged = lock(&self.failures_logged);
        if logged.len() > 256 {
            logged.clear();
        }
        let recent = logged
            .get(failure)
            .is_some_and(|at| now.saturating_duration_since(*at) < Duration::from_secs(60));
        if !recent {
            logged.insert(failure.to_owned(), now);
        }
        !recent
    }
}

/// A hub, running: its definition, its live server connections and its clients.
pub(crate) struct HubRuntime {
    pub(crate) hub: Hub,
    /// Live server connections, with the index of the endpoint each goes to.
    pub(crate) pool: Mutex<Vec<(usize, ConnTx)>>,
    pub(crate) clients: Mutex<BTreeMap<String, Arc<ClientEntry>>>,
    /// Client results this app server awaits, by invocation id.
    pub(crate) results: Mutex<BTreeMap<String, PendingResult>>,
    /// Client invocations this app server routes for another app server: the caller's id and
    /// the client's connection id.
    pub(crate) routed: Mutex<BTreeMap<String, (String, String)>>,
    pub(crate) server_id: String,
    pub(crate) result_timeout: Duration,
    /// Invocations waiting or running, of every client (a graceful shutdown waits for them).
    pub(crate) in_flight: std::sync::atomic::AtomicUsize,
    /// Per-client bounds: invocations waiting or running, and open streams each way.
    pub(crate) max_invocations: usize,
    pub(crate) max_streams: usize,
    /// Sleeps on the app server's runtime (set by [`AppServer::start`]).
    pub(crate) sleeper: std::sync::OnceLock<Sleeper>,
}

/// Sleeps for a while on some runtime.
pub(crate) type Sleeper = Arc<dyn Fn(Duration) -> crate::glue::BoxFuture<()> + Send + Sync>;

impl HubRuntime {
    /// Where a message that may concern clients of every endpoint goes: one live server
    /// connection of each endpoint that has one, and for the endpoint of `preferred` (the
    /// caller), its own connection while it is open, so that the message stays in order with
    /// the caller's other messages.
    pub(crate) fn fan_out(&self, preferred: Option<&ClientEntry>) -> Vec<ConnTx> {
        let preferred = preferred.filter(|c| !c.conn.is_closed());
        let mut routes: Vec<(usize, ConnTx)> = preferred
            .map(|c| (c.endpoint, c.conn.clone()))
            .into_iter()
            .collect();
        for (endpoint, conn) in lock(&self.pool).iter() {
            if !conn.is_closed() && !routes.iter().any(|(e, _)| e == endpoint) {
                routes.push((*endpoint, conn.clone()));
            }
        }
        routes.into_iter().map(|(_, conn)| conn).collect()
    }

    /// Where a message for one connection goes: its own server connection when this app
    /// server serves it, else every endpoint (the client may be on any relay, served by
    /// another app server).
    pub(crate) fn route_to(
        &self,
        connection_id: &str,
        caller: Option<&ClientEntry>,
    ) -> Vec<ConnTx> {
        let caller = caller.filter(|c| !c.conn.is_closed());
        let local = lock(&self.clients).get(connection_id).cloned();
        match local.filter(|c| !c.conn.is_closed()) {
            // On the caller's relay, the caller's own connection keeps this in order with
            // everything else the caller sends.
            Some(client) => match caller {
                Some(caller) if caller.endpoint == client.endpoint => vec![caller.conn.clone()],
                _ => vec![client.conn.clone()],
            },
            None => self.fan_out(caller),
        }
    }

    /// Counts `answers` more relays as having answered client invocation `invocation_id`
    /// without the result; once none is left, the caller gets the most telling error.
    pub(crate) fn unanswered_by(&self, invocation_id: &str, answers: usize, error: Option<String>) {
        let mut results = lock(&self.results);
        let Some(pending) = results.get_mut(invocation_id) else {
            return;
        };
        // "Not found" is what every relay but the client's says: any other error says more.
        let vague = pending
            .error
            .as_deref()
            .is_none_or(|e| e == signalr_relay_core::relay::CONNECTION_NOT_FOUND);
        if let (true, Some(error)) = (vague, error) {
            pending.error = Some(error);
        }
        pending.unanswered = pending.unanswered.saturating_sub(answers);
        if pending.unanswered > 0 {
            return;
        }
        if let Some(pending) = results.remove(invocation_id) {
            let error = pending
                .error
                .unwrap_or_else(|| "the invocation failed".to_owned());
            let _ = pending.reply.send(Err(InvokeError::Disconnected(error)));
        }
    }

    /// Whether the hub has a live server connection to `endpoint`.
    pub(crate) fn online(&self, endpoint: usize) -> bool {
        lock(&self.pool)
            .iter()
            .any(|(e, c)| *e == endpoint && !c.is_closed())
    }
}

/// One hub of an [`AppServer`], seen from outside its methods: get it from
/// [`AppServer::hub_context`]. Sends go through any of the hub's live server connections.
#[derive(Clone)]
pub struct HubContext {
    hub: Arc<HubRuntime>,
}

impl HubContext {
    /// The hub's clients. There is no caller: [`Clients::caller`] fails, and
    /// [`Clients::others`] is every client.
    pub fn clients(&self) -> Clients {
        Clients {
            hub: self.hub.clone(),
            caller: None,
        }
    }

    /// Group membership.
    pub fn groups(&self) -> Groups {
        Groups {
            hub: self.hub.clone(),
            caller: None,
        }
    }
}

/// An app server: hubs plus the connection string of the relay that fronts them.
#[derive(Clone)]
pub struct AppServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AppServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppServer")
            .field("hubs", &self.shared.hubs.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl AppServer {
    /// An app server for `connection_string` (`Endpoint=…;AccessKey=…;Version=1.0;`).
    ///
    /// # Errors
    /// When the connection string is invalid.
    pub fn new(
        connection_string: &str,
        hubs: Vec<Hub>,
        options: AppOptions,
    ) -> Result<Self, SetupError> {
        Self::with_endpoints(&[connection_string], hubs, options)
    }

    /// An app server for several relays at once, as the Azure SDK's multiple
    /// `ServiceEndpoint`s: it keeps server connections to each, negotiates each client to one
    /// of those it is connected to (at random), and sends every broadcast, group and user
    /// message, and each message for a client it does not serve itself, to all of them.
    ///
    /// # Errors
    /// When a connection string is invalid, or none is given; when an endpoint is `https`
    /// and [`AppOptions::ca_file`] cannot be read.
    pub fn with_endpoints<S: AsRef<str>>(
        connection_strings: &[S],
        hubs: Vec<Hub>,
        options: AppOptions,
    ) -> Result<Self, SetupError> {
        let mut endpoints: Vec<ConnectionString> = Vec::new();
        for cs in connection_strings {
            let cs = ConnectionString::parse(cs.as_ref())?;
            // Twice the same relay would deliver every broadcast twice.
            if endpoints
                .iter()
                .any(|e| e.server_endpoint() == cs.server_endpoint())
            {
                tracing::warn!(endpoint = %cs.server_endpoint(), "a relay given twice is used once");
                continue;
            }
            endpoints.push(cs);
        }
        if endpoints.is_empty() {
            return Err(ConnectionStringError::MissingEndpoint.into());
        }
        let tls = if endpoints
            .iter()
            .any(|e| e.server_endpoint().starts_with("https:"))
        {
            Some(
                crate::glue::tls::client_config(options.ca_file.as_deref())
                    .map_err(SetupError::Tls)?,
            )
        } else {
            None
        };
        let hubs = hubs
            .into_iter()
            .map(|hub| {
                (
                    hub.name().to_ascii_lowercase(),
                    Arc::new(HubRuntime {
                        hub,
                        pool: Mutex::new(Vec::new()),
                        clients: Mutex::new(BTreeMap::new()),
                        results: Mutex::new(BTreeMap::new()),
                        routed: Mutex::new(BTreeMap::new()),
                        server_id: options.server_id.clone(),
                        result_timeout: options.client_result_timeout,
                        in_flight: std::sync::atomic::AtomicUsize::new(0),
                        max_invocations: options.max_invocations_per_client,
                        max_streams: options.max_streams_per_client,
                        sleeper: std::sync::OnceLock::new(),
                    }),
                )
            })
            .collect();
        Ok(Self {
            shared: Arc::new(Shared {
                endpoints,
                tls,
                options,
                hubs,
                failures_logged: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// Opens the server connections of every hub, and keeps them open (reconnecting with
    /// backoff) for as long as the runtime runs.
    pub fn start<R: Runtime>(&self, runtime: &R) {
        for hub in self.shared.hubs.values() {
            let sleeper_runtime = runtime.clone();
            let _ = hub.sleeper.set(Arc::new(move |d| {
                sleeper_runtime.sleep_until(sleeper_runtime.now() + d)
            }));
            for endpoint in 0..self.shared.endpoints.len() {
                for _ in 0..self.shared.options.connections_per_hub {
                    connection::spawn(
                        runtime.clone(),
                        self.shared.clone(),
                        hub.clone(),
                        endpoint,
                        None,
                    );
                }
            }
        }
    }

    /// Leaves gracefully, as the Azure SDK's graceful shutdown does: every server connection
    /// tells the relay that this app server is leaving (`shutdown`, `fin:1` with
    /// [`AppOptions::migrate_clients_on_shutdown`], else `fin:2`), so that it sends it no new
    /// clients and, with migration, moves its clients to the hub's other app servers. Then it
    /// waits, at most `wait`, until its clients are gone (moved, or left) and every
    /// invocation under way has been answered. Stop the process afterwards: whoever is left
    /// is closed with `ServerOffline` and reconnects elsewhere.
    pub async fn shutdown<R: Runtime>(&self, runtime: &R, wait: Duration) {
        use std::sync::atomic::Ordering;
        let fin = if self.shared.options.migrate_clients_on_shutdown {
            "fin:1"
        } else {
            "fin:2"
        };
        for hub in self.shared.hubs.values() {
            for (_, conn) in lock(&hub.pool).iter().filter(|(_, c)| !c.is_closed()) {
                let ping = service::Ping::pairs([("shutdown", fin)]);
                let _ = conn.unbounded_send(ConnCommand::Service(ServiceMessage::Ping(ping)));
            }
        }
        let deadline = runtime.now() + wait;
        while runtime.now() < deadline {
            let busy = self.shared.hubs.values().any(|hub| {
                !lock(&hub.clients).is_empty() || hub.in_flight.load(Ordering::Acquire) > 0
            });
            if !busy {
                break;
            }
            runtime
                .sleep_until(runtime.now() + Duration::from_millis(50))
                .await;
        }
        // The last answers were queued to the connections; give them a moment to be written.
        runtime
            .sleep_until(runtime.now() + Duration::from_millis(200))
            .await;
    }

    /// `hub`'s clients and groups, to address from outside its methods (a background task,
    /// an HTTP endpoint), as ASP.NET Core's `IHubContext`; `None` when this app server does
    /// not host `hub`.
    pub fn hub_context(&self, hub: &str) -> Option<HubContext> {
        self.shared
            .hubs
            .get(&hub.to_ascii_lowercase())
            .map(|hub| HubContext { hub: hub.clone() })
    }

    /// Live server connections of `hub`, to every endpoint.
    pub fn connected(&self, hub: &str) -> usize {
        self.shared
            .hubs
            .get(&hub.to_ascii_lowercase())
            .map_or(0, |h| {
                lock(&h.pool).iter().filter(|(_, c)| !c.is_closed()).count()
            })
    }

    /// The endpoint a client of `hub` negotiates to: one of those the hub has a live server
    /// connection to, at random (as the Azure SDK picks among online endpoints); any, if none
    /// is online yet.
    fn negotiate_endpoint(&self, hub: &HubRuntime) -> &ConnectionString {
        let endpoints = &self.shared.endpoints;
        let online: Vec<usize> = (0..endpoints.len()).filter(|&e| hub.online(e)).collect();
        let pick = |n: usize| (connection::random_u64() % n as u64) as usize;
        let index = if online.is_empty() {
            pick(endpoints.len())
        } else {
            online[pick(online.len())]
        };
        &endpoints[index]
    }

    /// The negotiate answer for a client of `hub`: a redirect to the relay with a signed
    /// token naming `user_id` (if any), plus `claims`. Serve it as the body of `POST
    /// /<hub>/negotiate` (HTTP 200, `application/json`).
    pub fn negotiate(
        &self,
        hub: &str,
        user_id: Option<&str>,
        claims: &[(&str, &str)],
    ) -> NegotiateResponse {
        self.negotiate_with_query(hub, "", user_id, claims)
    }

    /// [`negotiate`](Self::negotiate), passing the negotiate request's own query (without
    /// `?`) on in the redirect URL, as the Azure SDK does: the client connects to the relay
    /// with it, and the hub sees it in [`Context::query`](crate::sdk::Context::query).
    pub fn negotiate_with_query(
        &self,
        hub: &str,
        query: &str,
        user_id: Option<&str>,
        claims: &[(&str, &str)],
    ) -> NegotiateResponse {
        let hub = hub.to_ascii_lowercase();
        let Some(runtime) = self.shared.hubs.get(&hub) else {
            return NegotiateResponse::Error(format!("Unknown hub '{hub}'."));
        };
        let cs = self.negotiate_endpoint(runtime);
        let access_token = self.client_token(cs, cs.client_audience(&hub), user_id, claims);
        // The relay reads `hub` (and the client adds `id`); keep the caller's own.
        let passed =
            signalr_relay_core::relay::strip_query_params(query, &["hub", "id", "access_token"]);
        let mut url = format!("{}client/?hub={hub}", cs.client_endpoint());
        if !passed.is_empty() {
            url.push('&');
            url.push_str(&passed);
        }
        NegotiateResponse::Redirect {
            url,
            access_token: Some(access_token),
        }
    }

    /// The classic ASP.NET SignalR negotiate answer for `hub` (the one hub a classic client
    /// names in `connectionData`): a redirect to the relay's `/aspnetclient`, with a token
    /// for `user_id` and `claims`. Serve it at `<your classic base>/negotiate` (classic
    /// clients default to `/signalr`).
    pub fn negotiate_classic(
        &self,
        hub: &str,
        user_id: Option<&str>,
        claims: &[(&str, &str)],
    ) -> ClassicNegotiateReply {
        let hub = hub.to_ascii_lowercase();
        let Some(runtime) = self.shared.hubs.get(&hub) else {
            return ClassicNegotiateReply::Error(ErrorResponse::new(format!(
                "Unknown hub '{hub}'."
            )));
        };
        let cs = self.negotiate_endpoint(runtime);
        let access_token = self.client_token(cs, cs.classic_client_audience(&hub), user_id, claims);
        ClassicNegotiateReply::Redirect(RedirectResponse::new(
            format!("{}aspnetclient?hub={hub}", cs.client_endpoint()),
            access_token,
        ))
    }

    fn client_token(
        &self,
        cs: &ConnectionString,
        audience: signalr_relay_core::auth::Audience,
        user_id: Option<&str>,
        claims: &[(&str, &str)],
    ) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut token_claims =
            Claims::issued_at(now, self.shared.options.client_token_lifetime.as_secs());
        token_claims.aud.push(audience.to_string());
        // A unique token per negotiate: the relay binds each connection to the token it
        // negotiated with, and two clients must never share one.
        token_claims.insert("jti", crate::sdk::hub::random_id().as_str());
        if let Some(user) = user_id {
            token_claims.nameid = Some(user.to_owned());
            token_claims.insert("asrs.s.uid", user);
        }
        let sticky = match self.shared.options.server_sticky {
            ServerSticky::Disabled => None,
            ServerSticky::Preferred => Some("Preferred"),
            ServerSticky::Required => Some("Required"),
        };
        if let Some(mode) = sticky {
            token_claims.insert("asrs.s.sn", self.shared.options.server_id.as_str());
            token_claims.insert("asrs.s.ssticky", mode);
        }
        for (k, v) in claims {
            token_claims.insert(*k, *v);
        }
        sign(&token_claims, cs.access_key().as_bytes(), Algorithm::Hs256)
    }
}
