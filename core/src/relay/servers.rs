//! Server connections: an app server's WebSockets, each carrying many clients. This part
//! owns their service handshake, their pings (`echo`, `status`, `shutdown`, `servers`,
//! `target`), their load, and their own timers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::config::RelayConfig;
use super::directory::{Directory, HubId};
use super::output::Outputs;
use super::policy::Sticky;
use super::reason::{unsupported_version, ServerEnding};
use super::timers::{ServerTimers, TimerKind, TimerQueue};
use super::ConnHandle;
use crate::framing::{BinaryFrameDecoder, FrameError};
use crate::service::{self, ServiceMessage, ServiceProtocolError};

/// What an app server sent, one message at a time.
#[derive(Debug)]
pub(crate) enum Received {
    Message(ServiceMessage),
    /// A message over the size limit, or one that does not decode: skipped, with the client
    /// whose flow it was for when it was a ConnectionData (that flow now has a hole).
    Skipped {
        error: ServiceProtocolError,
        connection_id: Option<String>,
    },
    /// A length prefix that is not one: the stream has lost its sync.
    Fatal(ServiceProtocolError),
}

/// The connection id of a ConnectionData (`[6, connectionId, …]`), from its first bytes.
fn flow_of(head: &[u8]) -> Option<String> {
    let mut r = crate::msgpack::Reader::new(head);
    r.array_len().ok()?;
    (r.integer::<u8>().ok()? == 6).then_some(())?;
    r.str().ok().map(str::to_owned)
}

/// One app-server WebSocket.
#[derive(Debug)]
pub(crate) struct ServerConn {
    pub(crate) hub: HubId,
    /// The app server it belongs to.
    pub(crate) server_id: String,
    frames: BinaryFrameDecoder,
    /// The service handshake is done.
    pub(crate) open: bool,
    /// It may carry clients (not a management connection).
    carries_clients: bool,
    /// Its app server is shutting down: no new clients.
    draining: bool,
    /// Its app server allows stateful reconnect (its HandshakeRequest said so).
    allows_stateful: bool,
    /// Its app server takes part in client migration (its HandshakeRequest's migration
    /// level is ShutdownOnly or Any): its clients' introductions are kept to replay.
    pub(crate) migrates: bool,
    /// Its app server is leaving and asked for its clients to be moved (`shutdown fin:1`).
    pub(crate) migrating: bool,
    /// This connection itself said `shutdown fin` (the others of its app server may only
    /// have followed it).
    pub(crate) fin_received: bool,
    /// The clients mapped to it.
    pub(crate) clients: BTreeSet<ConnHandle>,
    /// Clients migrated away from it that may still hear what it owed them.
    pub(crate) left: BTreeSet<ConnHandle>,
    last_received: Instant,
    pub(crate) timers: ServerTimers,
    /// The relay's own hub endpoint for the hub's serverless clients (see `serverless.rs`):
    /// no socket, no app server.
    pub(crate) internal: bool,
    /// A connection of Azure's classic ASP.NET SDK (`/aspnetserver/`), and which kind.
    pub(crate) aspnet: Option<AspNetRole>,
}

/// What a connection of the classic ASP.NET SDK is for (Azure/azure-signalr,
/// `src/Microsoft.Azure.SignalR.AspNet/ServerConnections/ServiceConnectionManager.cs`: one set
/// of connections per hub, `hub=<app>_<hub>`, and one for the application, `hub=<app>_<app>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AspNetRole {
    /// One of a hub's connections: it carries the hub's classic clients, and their app
    /// writes its broadcasts and user sends on it.
    Hub,
    /// The application's connection, for the application (lower case): group joins and
    /// group sends, and messages for clients that another of its connections carries.
    App(String),
}

impl AspNetRole {
    /// The role of a connection to hub `key`: the application's when the key is
    /// `<app>_<app>` (the SDK refuses a hub named like its application).
    pub(crate) fn of(key: &str) -> Self {
        let half = key.len() / 2;
        match (
            key.get(..half),
            key.get(half..half + 1),
            key.get(half + 1..),
        ) {
            (Some(a), Some("_"), Some(b)) if key.len() % 2 == 1 && a == b && !a.is_empty() => {
                Self::App(a.to_owned())
            }
            _ => Self::Hub,
        }
    }
}

impl ServerConn {
    /// A connection of `server_id` to `hub`, before its handshake.
    fn new(hub: HubId, server_id: String, max_message: usize, now: Instant) -> Self {
        Self {
            hub,
            server_id,
            frames: BinaryFrameDecoder::skipping_oversize(max_message),
            open: false,
            carries_clients: false,
            draining: false,
            allows_stateful: false,
            migrates: false,
            migrating: false,
            fin_received: false,
            clients: BTreeSet::new(),
            left: BTreeSet::new(),
            last_received: now,
            timers: ServerTimers::default(),
            internal: false,
            aspnet: None,
        }
    }

    fn takes_clients(&self) -> bool {
        self.open && self.carries_clients && !self.draining
    }

    /// Whether it may carry clients: not a management (`Weak`) connection.
    pub(crate) fn carries_clients(&self) -> bool {
        self.carries_clients
    }

    /// Bytes from the app server; take what they hold with [`next`](Self::next).
    pub(crate) fn push(&mut self, now: Instant, data: &[u8]) {
        self.last_received = now;
        self.frames.push(data);
    }

    /// The next thing the app server sent: a whole message, one that was skipped, or the end
    /// of the stream's sync (a malformed length prefix).
    pub(crate) fn next(&mut self) -> Option<Received> {
        match self.frames.next_frame() {
            Ok(None) => None,
            Ok(Some(frame)) => Some(match ServiceMessage::parse(&frame) {
                Ok(message) => Received::Message(message),
                Err(error) => Received::Skipped {
                    connection_id: flow_of(&frame),
                    error,
                },
            }),
            Err(e @ FrameError::TooLarge { .. }) => Some(Received::Skipped {
                connection_id: flow_of(&self.frames.take_skipped_head()),
                error: ServiceProtocolError::Frame(e),
            }),
            Err(e) => Some(Received::Fatal(ServiceProtocolError::Frame(e))),
        }
    }

    /// The first message: a HandshakeRequest of version 1, answered.
    pub(crate) fn handshake(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        msg: ServiceMessage,
        config: &RelayConfig,
        out: &mut Outputs,
        queue: &mut TimerQueue,
    ) -> Result<(), ServerEnding> {
        let ServiceMessage::HandshakeRequest(req) = msg else {
            return Err(ServerEnding::NotAHandshake);
        };
        if req.version != 1 {
            let response = ServiceMessage::HandshakeResponse(service::HandshakeResponse {
                error_message: unsupported_version(req.version),
                ..service::HandshakeResponse::default()
            });
            out.service(conn, &response);
            return Err(ServerEnding::UnsupportedVersion);
        }
        if config.service_mode == super::ServiceMode::Serverless
            && req.connection_type != service::ConnectionType::Weak
        {
            let response = ServiceMessage::HandshakeResponse(service::HandshakeResponse {
                error_message: super::reason::texts::SERVERLESS_MODE.to_owned(),
                ..service::HandshakeResponse::default()
            });
            out.service(conn, &response);
            return Err(ServerEnding::ServerlessMode);
        }
        self.open = true;
        // The classic SDK's application connection carries no client: its clients are on
        // their hubs' connections.
        self.carries_clients = req.connection_type != service::ConnectionType::Weak
            && !matches!(self.aspnet, Some(AspNetRole::App(_)));
        self.allows_stateful = req.allow_stateful_reconnects;
        self.migrates = i32::from(req.migration_level) >= 1;
        let response = ServiceMessage::HandshakeResponse(service::HandshakeResponse {
            connection_id: Some(format!("server-{}", conn.0)),
            ..service::HandshakeResponse::default()
        });
        out.service(conn, &response);
        let mut timers = queue.of(conn, &mut self.timers, now);
        timers.clear(TimerKind::ServerHandshake);
        timers.set(TimerKind::ServerPing, now + config.server_ping_interval);
        timers.set(
            TimerKind::ServerSilence,
            self.last_received + config.server_timeout,
        );
        Ok(())
    }

    /// A timer of this connection fired.
    pub(crate) fn on_timer(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        kind: TimerKind,
        config: &RelayConfig,
        out: &mut Outputs,
        queue: &mut TimerQueue,
    ) -> Result<(), ServerEnding> {
        let mut timers = queue.of(conn, &mut self.timers, now);
        timers.fired(kind);
        match kind {
            TimerKind::ServerHandshake => Err(ServerEnding::HandshakeTimedOut),
            TimerKind::ServerPing => {
                timers.set(TimerKind::ServerPing, now + config.server_ping_interval);
                out.service(conn, &ServiceMessage::Ping(service::Ping::default()));
                Ok(())
            }
            TimerKind::ServerSilence => {
                let until = self.last_received + config.server_timeout;
                if now >= until {
                    return Err(ServerEnding::Silent);
                }
                timers.set(TimerKind::ServerSilence, until);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Every server connection.
#[derive(Debug, Default)]
pub(crate) struct Servers {
    map: BTreeMap<ConnHandle, ServerConn>,
}

impl Servers {
    /// A new server connection: it has the handshake timeout to say hello.
    pub(crate) fn accept(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        hub: HubId,
        (server_id, aspnet): (String, Option<AspNetRole>),
        config: &RelayConfig,
        queue: &mut TimerQueue,
    ) {
        let mut server = ServerConn::new(hub, server_id, config.max_server_message_size, now);
        server.aspnet = aspnet;
        queue
            .of(conn, &mut server.timers, now)
            .set(TimerKind::ServerHandshake, now + config.handshake_timeout);
        self.map.insert(conn, server);
    }

    /// The relay's own endpoint for `hub`'s serverless clients: open, taking clients, with no
    /// timers (it has no socket to ping or lose).
    pub(crate) fn add_internal(&mut self, now: Instant, conn: ConnHandle, hub: HubId) {
        let server_id = super::serverless::SERVER_ID.to_owned();
        let mut server = ServerConn::new(hub, server_id, usize::MAX, now);
        server.open = true;
        server.carries_clients = true;
        server.allows_stateful = true;
        server.internal = true;
        self.map.insert(conn, server);
    }

    pub(crate) fn get(&self, conn: ConnHandle) -> Option<&ServerConn> {
        self.map.get(&conn)
    }

    pub(crate) fn get_mut(&mut self, conn: ConnHandle) -> Option<&mut ServerConn> {
        self.map.get_mut(&conn)
    }

    pub(crate) fn remove(&mut self, conn: ConnHandle) -> Option<ServerConn> {
        self.map.remove(&conn)
    }

    pub(crate) fn contains(&self, conn: ConnHandle) -> bool {
        self.map.contains_key(&conn)
    }

    /// Open server connections.
    /// Every server connection whose handshake completed.
    pub(crate) fn open_handles(&self) -> Vec<ConnHandle> {
        self.map
            .iter()
            .filter(|(_, s)| s.open)
            .map(|(conn, _)| *conn)
            .collect()
    }

    /// Open connections of app servers (the relay's own serverless endpoints are none).
    pub(crate) fn open_count(&self) -> usize {
        self.map.values().filter(|s| s.open && !s.internal).count()
    }

    /// The app server id of a server connection (empty when it is gone).
    pub(crate) fn server_id(&self, conn: ConnHandle) -> &str {
        self.map.get(&conn).map_or("", |s| s.server_id.as_str())
    }

    /// Whether a hub has a server connection of an app server that takes clients.
    fn available(&self, directory: &Directory, hub: HubId) -> bool {
        directory.servers(hub).any(|s| {
            self.map
                .get(&s)
                .is_some_and(|s| s.takes_clients() && !s.internal)
        })
    }

    /// The hub named `name`, if it has a server connection that takes clients.
    pub(crate) fn available_hub(&self, directory: &Directory, name: &str) -> Option<HubId> {
        directory
            .find(name)
            .filter(|&hub| self.available(directory, hub))
    }

    /// The least-loaded server connection of a hub that takes clients.
    pub(crate) fn pick(&self, directory: &Directory, hub: HubId) -> Option<ConnHandle> {
        self.least_loaded(directory, hub, None)
    }

    /// The server connection a client goes to: of the app server its token names
    /// (`asrs.s.sn`) when it has one that takes clients; else, unless that one is required,
    /// the least loaded of the hub.
    pub(crate) fn pick_for(
        &self,
        directory: &Directory,
        hub: HubId,
        sticky: Option<&Sticky>,
    ) -> Option<ConnHandle> {
        if let Some(sticky) = sticky {
            let named = self.least_loaded(directory, hub, Some(&sticky.server));
            if named.is_some() || sticky.required {
                return named;
            }
        }
        self.pick(directory, hub)
    }

    /// Where a client of the leaving app server `from_id` may move: the least-loaded
    /// connection that takes clients, of another app server that takes part in migration
    /// (one that does not would answer the client's handshake again), and that allows
    /// stateful reconnect when the client has it.
    pub(crate) fn migration_target(
        &self,
        directory: &Directory,
        hub: HubId,
        from_id: &str,
        stateful: bool,
    ) -> Option<ConnHandle> {
        directory
            .servers(hub)
            .filter_map(|h| self.map.get(&h).map(|s| (h, s)))
            .filter(|(_, s)| s.takes_clients() && s.migrates && s.server_id != from_id)
            .filter(|(_, s)| !stateful || s.allows_stateful)
            .min_by_key(|(h, s)| (s.clients.len(), *h))
            .map(|(h, _)| h)
    }

    /// A new connection of an app server that is leaving leaves too: it takes no clients
    /// while a connection of it that said `shutdown fin` is there.
    pub(crate) fn inherit_leaving(&mut self, directory: &Directory, hub: HubId, conn: ConnHandle) {
        let id = self.server_id(conn).to_owned();
        let (draining, migrating) = directory
            .servers(hub)
            .filter(|&s| s != conn)
            .filter_map(|s| self.map.get(&s))
            .filter(|s| s.server_id == id && s.fin_received)
            .fold((false, false), |(d, m), s| {
                (d || s.draining, m || s.migrating)
            });
        if let Some(s) = self.map.get_mut(&conn) {
            s.draining |= draining;
            s.migrating |= migrating && s.migrates;
        }
    }

    /// The last connection of `server_id` that said `shutdown fin` is gone: the ones that only
    /// followed it take clients again (a restarted app server may reuse its id).
    pub(crate) fn release_followers(&mut self, directory: &Directory, hub: HubId, server_id: &str) {
        let same: Vec<ConnHandle> = directory
            .servers(hub)
            .filter(|s| self.map.get(s).is_some_and(|s| s.server_id == server_id))
            .collect();
        if same
            .iter()
            .any(|s| self.map.get(s).is_some_and(|s| s.fin_received))
        {
            return;
        }
        for s in same {
            if let Some(s) = self.map.get_mut(&s) {
                s.draining = false;
                s.migrating = false;
            }
        }
    }

    /// Notes that `client` left `from` by migration (what `from` still owes may reach it).
    pub(crate) fn left_behind(&mut self, from: ConnHandle, client: ConnHandle) {
        if let Some(s) = self.map.get_mut(&from) {
            s.left.insert(client);
        }
    }

    /// Whether a new client of `hub` may have stateful reconnect: every server connection
    /// that may take it allows it (as its app server's `AllowStatefulReconnects` says).
    pub(crate) fn allow_stateful(
        &self,
        directory: &Directory,
        hub: HubId,
        sticky: Option<&Sticky>,
    ) -> bool {
        let required = sticky.filter(|s| s.required).map(|s| s.server.as_str());
        let mut candidates = directory
            .servers(hub)
            .filter_map(|h| self.map.get(&h))
            .filter(|s| s.takes_clients())
            .filter(|s| required.is_none_or(|id| s.server_id == id))
            .peekable();
        candidates.peek().is_some() && candidates.all(|s| s.allows_stateful)
    }

    /// The least-loaded server connection of a hub that takes clients, of one app server if
    /// named.
    fn least_loaded(
        &self,
        directory: &Directory,
        hub: HubId,
        server_id: Option<&str>,
    ) -> Option<ConnHandle> {
        directory
            .servers(hub)
            .filter_map(|h| self.map.get(&h).map(|s| (h, s)))
            .filter(|(_, s)| s.takes_clients())
            .filter(|(_, s)| server_id.is_none_or(|id| s.server_id == id))
            // An app server before the relay's own endpoint (classic mode).
            .min_by_key(|(h, s)| (s.internal, s.clients.len(), *h))
            .map(|(h, _)| h)
    }

    /// Maps a client to `server`; when every connection of its app server in the hub is past
    /// the configured load, asks that app server for one more.
    pub(crate) fn attach(
        &mut self,
        server: ConnHandle,
        client: ConnHandle,
        config: &RelayConfig,
        out: &mut Outputs,
    ) {
        let Some(s) = self.map.get_mut(&server) else {
            return;
        };
        s.clients.insert(client);
        let per = config.clients_per_server_connection;
        if per == 0 {
            return;
        }
        let Some(s) = self.map.get(&server) else {
            return;
        };
        let (mut count, mut load) = (0, 0);
        for o in self
            .map
            .values()
            .filter(|o| o.hub == s.hub && o.server_id == s.server_id && o.open && o.carries_clients)
        {
            count += 1;
            load += o.clients.len();
        }
        // Ask exactly when the load crosses a multiple of the threshold, so that one request
        // goes out per step.
        if count < config.max_server_connections_per_app && load >= per * count && load % per == 0 {
            let ping = service::Ping::pairs([("target", config.instance_id.as_str())]);
            out.service(server, &ServiceMessage::Ping(ping));
        }
    }

    /// The clients mapped to a server connection.
    pub(crate) fn clients_of(&self, conn: ConnHandle) -> Vec<ConnHandle> {
        self.map
            .get(&conn)
            .map(|s| s.clients.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Unmaps a client.
    pub(crate) fn detach(&mut self, server: ConnHandle, client: ConnHandle) {
        if let Some(s) = self.map.get_mut(&server) {
            s.clients.remove(&client);
        }
    }

    /// Whether two server connections belong to the same app server (which then needs no
    /// relaying of client results between them).
    pub(crate) fn same_app_server(&self, a: ConnHandle, b: ConnHandle) -> bool {
        a == b
            || matches!(
                (self.map.get(&a), self.map.get(&b)),
                (Some(x), Some(y)) if x.server_id == y.server_id
            )
    }

    /// Answers a ping with pairs: `echo`, `status` (does the hub have clients), `shutdown`
    /// (`fin`: the app server drains; acked), `servers` (the hub's app servers).
    pub(crate) fn ping(
        &mut self,
        conn: ConnHandle,
        hub: HubId,
        ping: service::Ping,
        ticks: i64,
        directory: &Directory,
        out: &mut Outputs,
    ) {
        if ping.get("echo").is_some() {
            return out.service(conn, &ServiceMessage::Ping(ping));
        }
        if ping.get("status").is_some() {
            let status = if directory.has_clients(hub) { "1" } else { "0" };
            let reply = service::Ping::pairs([("status", status)]);
            return out.service(conn, &ServiceMessage::Ping(reply));
        }
        if let Some(fin) = ping.get("shutdown").filter(|v| v.starts_with("fin")) {
            // fin:1 is GracefulShutdown.Mode = MigrateClients.
            let migrate = fin == "fin:1";
            if let Some(s) = self.map.get_mut(&conn) {
                s.fin_received = true;
            }
            let server_id = self.server_id(conn).to_owned();
            for s in directory.servers(hub) {
                if let Some(s) = self.map.get_mut(&s).filter(|s| s.server_id == server_id) {
                    s.draining = true;
                    s.migrating |= migrate && s.migrates;
                }
            }
            let reply = service::Ping::pairs([("shutdown", "finack")]);
            return out.service(conn, &ServiceMessage::Ping(reply));
        }
        if ping.get("servers").is_some() {
            let ids: BTreeSet<&str> = directory
                .servers(hub)
                .filter_map(|s| self.map.get(&s))
                .map(|s| s.server_id.as_str())
                .collect();
            let value = format!("{ticks}:{}", ids.into_iter().collect::<Vec<_>>().join(";"));
            let reply = service::Ping::pairs([("servers", value.as_str())]);
            out.service(conn, &ServiceMessage::Ping(reply));
        }
    }
}
