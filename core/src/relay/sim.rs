//! A simulation harness for [`Relay`]: the relay on a virtual clock, with scripted clients and
//! app servers, and everything it sent recorded per connection. No sockets, no sleeping:
//! thirty minutes of timeouts run in microseconds. This project's own relay tests are built
//! on it; it is public so that embedders can test their own use of the relay the same way.
//!
//! ```
//! use signalr_relay_core::relay::sim::Sim;
//!
//! let mut sim = Sim::new(std::time::Instant::now());
//! sim.connect_server("chat", "app-1");
//! let (client, connection_id) = sim.connect_client("chat", Some("alice"), "json");
//! sim.accept_handshake(client, &connection_id);
//! assert_eq!(sim.client_text(client), "{}\u{1e}");
//! ```
//!
//! Every step drains the relay's outputs and checks the run-loop contract on the way: time
//! never goes backwards, and [`Relay::poll_timeout`] moves past every deadline that
//! [`Relay::handle_timeout`] ran.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{
    ConnHandle, Event, HttpRequest, HttpResponse, Output, Relay, RelayConfig, RequestId,
    RequestOutcome,
};
use crate::aspnetcore::negotiate::NegotiateResponse;
use crate::aspnetcore::HubProtocol;
use crate::auth::{sign, Algorithm, Claims};
use crate::service::{self, ServiceDecoder, ServiceMessage};

/// The access key of a simulated relay.
pub const KEY: &str = "relay-test-key";

/// The wall clock of a simulated relay at its start (Unix seconds).
pub const T0: u64 = 1_700_000_000;

/// A token for `path` (`/client/`, `/server/`) of `hub`, valid from [`T0`] for `lifetime`
/// seconds, signed with `key`.
///
/// Tokens are signed once per thread and remembered: the same arguments always give the same
/// token, and the relay fuzz target asks for thousands of them.
pub fn token(path: &str, hub: &str, user: Option<&str>, lifetime: u64, key: &str) -> String {
    type Signed = BTreeMap<(String, String, Option<String>, u64, String), String>;
    thread_local! {
        static SIGNED: std::cell::RefCell<Signed> = const { std::cell::RefCell::new(BTreeMap::new()) };
    }
    let args = (
        path.to_owned(),
        hub.to_owned(),
        user.map(str::to_owned),
        lifetime,
        key.to_owned(),
    );
    if let Some(t) = SIGNED.with_borrow(|signed| signed.get(&args).cloned()) {
        return t;
    }
    let mut claims = Claims::issued_at(T0, lifetime);
    claims.aud.push(format!("http://localhost{path}?hub={hub}"));
    claims.nameid = user.map(str::to_owned);
    let t = sign(&claims, key.as_bytes(), Algorithm::Hs256);
    SIGNED.with_borrow_mut(|signed| {
        // A handful of distinct tokens in practice; never an unbounded memo.
        if signed.len() < 256 {
            signed.insert(args, t.clone());
        }
    });
    t
}

/// A request to `localhost:8080`, with a bearer token if given.
pub fn request(
    method: &str,
    path: &str,
    query: &str,
    bearer: Option<&str>,
    websocket: bool,
) -> HttpRequest {
    let mut headers = crate::http1::Fields::new();
    headers.push("Host", "localhost:8080");
    if let Some(t) = bearer {
        headers.push("Authorization", &format!("Bearer {t}"));
    }
    HttpRequest {
        method: method.into(),
        path: path.into(),
        query: query.into(),
        headers,
        websocket,
        body: Bytes::new(),
        peer: None,
        verified: None,
    }
}

/// A WebSocket request to `/client/` for `hub`, on the negotiated connection `id` (or, without
/// one, skipping negotiation), with a token for `user`.
pub fn websocket_request(hub: &str, id: Option<&str>, user: Option<&str>) -> HttpRequest {
    let id = id.map(|id| format!("&id={id}")).unwrap_or_default();
    let bearer = token("/client/", hub, user, 3600, KEY);
    request(
        "GET",
        "/client/",
        &format!("hub={hub}{id}"),
        Some(&bearer),
        true,
    )
}

/// A request on an ASP.NET Core connection (`/client/?hub=…&id=…`) that is not an upgrade,
/// with a token for `user`: an event stream (`accept` `text/event-stream`), a long poll, a
/// send (`POST` with `body`) or a `DELETE`.
pub fn connection_request(
    method: &str,
    hub: &str,
    id: &str,
    user: Option<&str>,
    accept: Option<&str>,
    body: &[u8],
) -> HttpRequest {
    let bearer = token("/client/", hub, user, 3600, KEY);
    let mut req = request(
        method,
        "/client/",
        &format!("hub={hub}&id={id}"),
        Some(&bearer),
        false,
    );
    if let Some(accept) = accept {
        req.headers.push("Accept", accept);
    }
    req.body = Bytes::copy_from_slice(body);
    req
}

/// A token for the classic endpoint (`/aspnetclient`), valid from [`T0`] for an hour.
pub fn classic_token(hub: &str, user: Option<&str>) -> String {
    let mut claims = Claims::issued_at(T0, 3600);
    claims
        .aud
        .push(format!("http://localhost/aspnetclient?hub={hub}"));
    claims.nameid = user.map(str::to_owned);
    sign(&claims, KEY.as_bytes(), Algorithm::Hs256)
}

/// A classic request: `kind` (`negotiate`, `connect`, `poll`, …) under `/aspnetclient` for
/// `hub`, with `query` (`transport=longPolling`, …), the connection token if given, a form
/// body, and a token for `user`. It is a `POST` when it has a body, and for `poll`, `send`
/// and `abort` off a WebSocket.
pub fn classic_request(
    kind: &str,
    hub: &str,
    query: &str,
    connection_token: Option<&str>,
    form: &str,
    websocket: bool,
    user: Option<&str>,
) -> HttpRequest {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let method = if form.is_empty() && (websocket || !matches!(kind, "poll" | "send" | "abort")) {
        "GET"
    } else {
        "POST"
    };
    let hubs = encode(&format!("[{{\"name\":\"{hub}\"}}]"));
    let mut req = request(
        method,
        &format!("/aspnetclient/{kind}"),
        &format!("clientProtocol=2.1&{query}&connectionData={hubs}"),
        Some(&classic_token(hub, user)),
        websocket,
    );
    if let Some(t) = connection_token {
        req.query
            .push_str(&format!("&connectionToken={}", encode(t)));
    }
    req.body = Bytes::copy_from_slice(form.as_bytes());
    req
}

/// What the harness knows of a client it connected or saw open.
#[derive(Debug, Default, Clone)]
struct Known {
    token: Option<String>,
    connection_id: Option<String>,
    server: Option<ConnHandle>,
    protocol: Option<HubProtocol>,
    open: bool,
}

/// A relay, its virtual clock, and everything it has sent.
#[derive(Debug)]
pub struct Sim {
    relay: Relay,
    now: Instant,
    /// Service messages each server connection received.
    pub to_server: BTreeMap<ConnHandle, Vec<ServiceMessage>>,
    server_decoders: BTreeMap<ConnHandle, ServiceDecoder>,
    /// Raw WebSocket messages (or event-stream bytes) each client received.
    pub to_client: BTreeMap<ConnHandle, Vec<(Bytes, bool)>>,
    /// The closes the relay asked for, per connection.
    pub closed: BTreeMap<ConnHandle, Vec<(u16, String)>>,
    /// Upstream requests the relay asked for, in order (answer them with
    /// [`Relay::handle_upstream_response`], through [`Sim::relay_mut`]).
    pub upstream: Vec<super::UpstreamRequest>,
    /// What the relay asked of its backplane ([`Output::Publish`], [`Output::Subscribe`],
    /// [`Output::Unsubscribe`], [`Output::ResetBackplane`]), in order, until taken.
    pub backplane: Vec<Output>,
    /// Answers to held requests.
    pub responses: BTreeMap<RequestId, HttpResponse>,
    /// Every event, in order.
    pub events: Vec<Event>,
    clients: BTreeMap<ConnHandle, Known>,
    /// The last OpenConnection seen: its server connection and connection id.
    last_open: Option<(ConnHandle, String)>,
    /// Handles whose socket is done (closed by the relay or by its peer) and not attached
    /// again: no output may name them.
    done: BTreeSet<ConnHandle>,
    /// The handle a request is attaching a new socket to: a close for it, among that
    /// request's outputs, is the old socket's, and what follows is for the new one.
    attaching: Option<ConnHandle>,
}

impl Sim {
    /// A relay with the default configuration and [`KEY`], its clock starting at `epoch`.
    pub fn new(epoch: Instant) -> Self {
        Self::with_config(epoch, RelayConfig::default())
    }

    /// A relay with `config` (and [`KEY`] among its keys).
    pub fn with_config(epoch: Instant, config: RelayConfig) -> Self {
        Self::with_seed(epoch, config, [42; 32])
    }

    /// [`Sim::with_config`], with the relay's random seed given (another process).
    pub fn with_seed(epoch: Instant, mut config: RelayConfig, seed: [u8; 32]) -> Self {
        if !config.access_keys.iter().any(|k| k == KEY) {
            config.access_keys.push(KEY.to_owned());
        }
        Self {
            relay: Relay::new(config, epoch, T0, seed),
            now: epoch,
            to_server: BTreeMap::new(),
            server_decoders: BTreeMap::new(),
            to_client: BTreeMap::new(),
            upstream: Vec::new(),
            backplane: Vec::new(),
            closed: BTreeMap::new(),
            responses: BTreeMap::new(),
            events: Vec::new(),
            clients: BTreeMap::new(),
            last_open: None,
            done: BTreeSet::new(),
            attaching: None,
        }
    }

    /// The relay.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// The relay, to drive by hand, and the time now. Call [`drain`](Self::drain) after.
    pub fn relay_mut(&mut self) -> (&mut Relay, Instant) {
        (&mut self.relay, self.now)
    }

    /// Whether `conn`'s socket is done: the relay closed it, or its peer did, and no request
    /// attached another. An adapter feeds nothing more from it.
    pub fn is_done(&self, conn: ConnHandle) -> bool {
        self.done.contains(&conn)
    }

    /// The virtual time now.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Takes every output, recording it.
    ///
    /// # Panics
    /// When a held request is answered twice, a server connection gets a text frame or bytes
    /// that are not the service protocol, or an output names a socket that is done (closed
    /// by the relay or by its peer, and not attached again).
    pub fn drain(&mut self) {
        while let Some(out) = self.relay.poll_output() {
            if let Output::Transmit { conn, .. } | Output::Close { conn, .. } = &out {
                assert!(
                    !self.done.contains(conn),
                    "output for {conn:?}, whose socket is done: {out:?}"
                );
            }
            match out {
                Output::Transmit { conn, data, binary } => {
                    if let Some(d) = self.server_decoders.get_mut(&conn) {
                        assert!(binary, "service messages go in binary frames");
                        d.push(&data);
                        while let Some(m) = d.next_message().expect("a service message") {
                            if let ServiceMessage::OpenConnection(o) = &m {
                                self.last_open = Some((conn, o.connection_id.clone()));
                            }
                            self.to_server.entry(conn).or_default().push(m);
                        }
                    } else {
                        self.to_client.entry(conn).or_default().push((data, binary));
                    }
                }
                Output::Respond { request, response } => {
                    assert!(
                        self.responses.insert(request, response).is_none(),
                        "answered twice"
                    );
                }
                Output::Close { conn, code, reason } => {
                    if self.attaching != Some(conn) {
                        self.done.insert(conn);
                    }
                    self.closed.entry(conn).or_default().push((code, reason));
                }
                Output::Event(event) => {
                    self.note(&event);
                    self.events.push(event);
                }
                Output::Upstream(request) => self.upstream.push(request),
                o @ (Output::Publish { .. }
                | Output::Subscribe { .. }
                | Output::Unsubscribe { .. }
                | Output::ResetBackplane) => self.backplane.push(o),
            }
        }
    }

    fn note(&mut self, event: &Event) {
        match event {
            Event::ClientOpened {
                conn,
                protocol,
                connection_id,
                ..
            } => {
                let known = self.clients.entry(*conn).or_default();
                if let Some((server, id)) = self.last_open.take() {
                    known.server = Some(server);
                    known.connection_id = Some(id);
                } else {
                    // Mapped to the relay's own serverless endpoint, which the harness does
                    // not see.
                    known.connection_id = Some(connection_id.clone());
                }
                known.protocol = Some(*protocol);
                known.open = true;
            }
            Event::ClientClosed { conn, .. } => {
                if let Some(known) = self.clients.get_mut(conn) {
                    known.open = false;
                }
            }
            _ => {}
        }
    }

    /// Lets `by` pass, running every timer due on the way.
    ///
    /// # Panics
    /// When a deadline lies in the past, or `poll_timeout` does not move past a deadline
    /// that `handle_timeout` ran.
    pub fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        while let Some(t) = self.relay.poll_timeout() {
            if t > until {
                break;
            }
            assert!(t >= self.now, "timers never go backwards");
            self.now = t;
            self.relay.handle_timeout(t);
            self.drain();
            if let Some(next) = self.relay.poll_timeout() {
                assert!(next > t, "poll_timeout must advance after handle_timeout");
            }
        }
        self.now = until;
    }

    /// An HTTP request.
    pub fn handle(&mut self, req: &HttpRequest) -> RequestOutcome {
        let outcome = self.relay.handle_request(self.now, req);
        if let RequestOutcome::AcceptWebSocket(conn) | RequestOutcome::EventStream(conn) = outcome {
            // A socket attached (again) to this handle.
            self.done.remove(&conn);
            self.attaching = Some(conn);
        }
        self.drain();
        self.attaching = None;
        outcome
    }

    /// A WebSocket message from `conn`.
    pub fn data(&mut self, conn: ConnHandle, bytes: &[u8]) {
        self.relay.handle_data(self.now, conn, bytes);
        self.drain();
    }

    /// `conn`'s socket or event stream went away.
    pub fn closed_by_peer(&mut self, conn: ConnHandle) {
        self.relay.handle_closed(self.now, conn);
        self.done.insert(conn);
        self.drain();
    }

    /// A held request was abandoned by its client.
    pub fn abort(&mut self, request: RequestId) {
        self.relay.handle_request_aborted(self.now, request);
        self.drain();
    }

    /// A service message from an app server.
    ///
    /// # Panics
    /// When the message cannot be encoded.
    pub fn send_service(&mut self, server: ConnHandle, msg: &ServiceMessage) {
        let mut out = Vec::new();
        msg.write(&mut out).expect("an encodable message");
        self.data(server, &out);
    }

    /// An app server's WebSocket to `/server/?hub=…`, accepted, before its handshake.
    ///
    /// # Panics
    /// When the relay refuses it.
    pub fn accept_server(&mut self, hub: &str, server_id: &str) -> ConnHandle {
        self.try_accept_server(hub, server_id)
            .expect("server refused")
    }

    /// An app server's WebSocket on `/server/?hub=…`, with a token valid from [`T0`] for an
    /// hour: its handle, or `None` when the relay refuses it (the token has expired on the
    /// virtual clock).
    pub fn try_accept_server(&mut self, hub: &str, server_id: &str) -> Option<ConnHandle> {
        self.try_accept_server_at("/server/", hub, server_id)
    }

    /// As [`try_accept_server`](Self::try_accept_server), at `path`: `/server/`, or
    /// `/aspnetserver/` for a connection of the classic ASP.NET SDK.
    pub fn try_accept_server_at(
        &mut self,
        path: &'static str,
        hub: &str,
        server_id: &str,
    ) -> Option<ConnHandle> {
        let mut req = request(
            "GET",
            path,
            &format!("hub={hub}"),
            Some(&token(path, hub, Some(server_id), 3600, KEY)),
            true,
        );
        req.headers.push("X-ASRS-Server-Id", server_id);
        self.accept_server_request(&req)
    }

    /// An app server's WebSocket request (on `/server/` or `/aspnetserver/`), accepted: its
    /// handle, or `None` when the relay refuses it.
    pub fn accept_server_request(&mut self, req: &HttpRequest) -> Option<ConnHandle> {
        let RequestOutcome::AcceptWebSocket(h) = self.handle(req) else {
            return None;
        };
        self.server_decoders.insert(h, ServiceDecoder::default());
        Some(h)
    }

    /// An app server's connection, accepted and past its handshake.
    ///
    /// # Panics
    /// When the relay refuses it.
    pub fn connect_server(&mut self, hub: &str, server_id: &str) -> ConnHandle {
        let h = self.accept_server(hub, server_id);
        self.send_service(
            h,
            &ServiceMessage::HandshakeRequest(service::HandshakeRequest {
                // The simulated app servers allow stateful reconnect.
                allow_stateful_reconnects: true,
                ..service::HandshakeRequest::default()
            }),
        );
        let first = &self.to_server[&h][0];
        assert!(
            matches!(first, ServiceMessage::HandshakeResponse(r) if r.error_message.is_empty()),
            "{first:?}"
        );
        h
    }

    /// Negotiates an ASP.NET Core connection: its token, or the relay's answer.
    ///
    /// # Panics
    /// When the relay answers with something other than a response.
    pub fn negotiate(&mut self, hub: &str, user: Option<&str>) -> Result<String, HttpResponse> {
        let req = request(
            "POST",
            "/client/negotiate",
            &format!("hub={hub}&negotiateVersion=1"),
            Some(&token("/client/", hub, user, 3600, KEY)),
            false,
        );
        match self.handle(&req) {
            RequestOutcome::Respond(r) if r.status == 200 => {
                match NegotiateResponse::parse(&r.body) {
                    Ok(NegotiateResponse::Connection(c)) => c.connection_token.ok_or(r),
                    _ => Err(r),
                }
            }
            RequestOutcome::Respond(r) => Err(r),
            other => panic!("{other:?}"),
        }
    }

    /// Negotiates, opens the WebSocket and sends the handshake. Returns the client's handle
    /// and its connection id as the app server sees it.
    ///
    /// # Panics
    /// When the relay refuses any step.
    pub fn connect_client(
        &mut self,
        hub: &str,
        user: Option<&str>,
        protocol: &str,
    ) -> (ConnHandle, String) {
        let h = self.start_client(hub, user, protocol);
        let connection_id = self.connection_id(h).to_owned();
        (h, connection_id)
    }

    /// Negotiates, opens the WebSocket and sends the handshake, as
    /// [`connect_client`](Self::connect_client), without waiting to see the client open (on a
    /// cluster, it is opened once the backplane has its channels).
    ///
    /// # Panics
    /// When the relay refuses any step.
    pub fn start_client(&mut self, hub: &str, user: Option<&str>, protocol: &str) -> ConnHandle {
        self.start_client_with_version(hub, user, protocol, 1)
    }

    /// [`start_client`](Self::start_client), with the handshake asking for `version`.
    ///
    /// # Panics
    /// When the relay refuses any step.
    pub fn start_client_with_version(
        &mut self,
        hub: &str,
        user: Option<&str>,
        protocol: &str,
        version: u32,
    ) -> ConnHandle {
        let id = self.negotiate(hub, user).expect("negotiated");
        let req = websocket_request(hub, Some(&id), user);
        let RequestOutcome::AcceptWebSocket(h) = self.handle(&req) else {
            panic!("client refused")
        };
        self.clients.entry(h).or_default().token = Some(id);
        self.data(
            h,
            format!("{{\"protocol\":\"{protocol}\",\"version\":{version}}}\x1e").as_bytes(),
        );
        h
    }

    /// Negotiates a classic connection for `hub`: its connection token and connection id, or
    /// the relay's answer.
    pub fn classic_negotiate(
        &mut self,
        hub: &str,
        user: Option<&str>,
    ) -> Result<(String, String), HttpResponse> {
        let req = classic_request("negotiate", hub, "", None, "", false, user);
        match self.handle(&req) {
            RequestOutcome::Respond(r) => {
                let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                match (
                    json["ConnectionToken"].as_str(),
                    json["ConnectionId"].as_str(),
                ) {
                    (Some(token), Some(id)) => Ok((token.to_owned(), id.to_owned())),
                    _ => Err(r),
                }
            }
            other => Err(HttpResponse::text(500, format!("{other:?}"))),
        }
    }

    /// Reports the upstream's answer to request `id`, and takes what follows.
    pub fn answer_upstream(
        &mut self,
        id: u64,
        result: Result<(u16, Bytes), super::UpstreamFailure>,
    ) {
        let now = self.now();
        self.relay.handle_upstream_response(now, id, result);
        self.drain();
    }

    /// The connection id of a client the harness saw open.
    ///
    /// # Panics
    /// When it did not.
    pub fn connection_id(&self, client: ConnHandle) -> &str {
        self.known(client)
            .connection_id
            .as_deref()
            .expect("a client seen open")
    }

    /// The token of a client [`connect_client`](Self::connect_client) connected.
    ///
    /// # Panics
    /// When it did not.
    pub fn token_of(&self, client: ConnHandle) -> &str {
        self.known(client)
            .token
            .as_deref()
            .expect("a connected client")
    }

    /// The server connection a client is mapped to.
    ///
    /// # Panics
    /// When the harness did not see it open.
    pub fn server_of(&self, client: ConnHandle) -> ConnHandle {
        self.known(client).server.expect("a client seen open")
    }

    /// The hub protocol of a client the harness saw open.
    pub fn protocol_of(&self, client: ConnHandle) -> Option<HubProtocol> {
        self.clients.get(&client).and_then(|k| k.protocol)
    }

    /// Whether a client is open (seen opened, not yet closed).
    pub fn is_open(&self, client: ConnHandle) -> bool {
        self.clients.get(&client).is_some_and(|k| k.open)
    }

    /// The open clients, in handle order.
    pub fn open_clients(&self) -> Vec<ConnHandle> {
        self.clients
            .iter()
            .filter(|(_, k)| k.open)
            .map(|(c, _)| *c)
            .collect()
    }

    /// How many open clients are mapped to a server connection.
    pub fn clients_of(&self, server: ConnHandle) -> usize {
        self.clients
            .values()
            .filter(|k| k.open && k.server == Some(server))
            .count()
    }

    fn known(&self, client: ConnHandle) -> &Known {
        self.clients
            .get(&client)
            .expect("a client the harness knows")
    }

    /// The app server answers the handshake on the client's own flow.
    pub fn accept_handshake(&mut self, client: ConnHandle, connection_id: &str) {
        let server = self.server_of(client);
        self.send_service(
            server,
            &ServiceMessage::ConnectionData(service::ConnectionData {
                connection_id: connection_id.to_owned(),
                payload: Bytes::from_static(b"{}\x1e"),
                ext: service::Ext::default(),
            }),
        );
    }

    /// Everything a client received, as text.
    pub fn client_text(&self, client: ConnHandle) -> String {
        self.to_client
            .get(&client)
            .map(|m| {
                m.iter()
                    .map(|(d, _)| String::from_utf8_lossy(d).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}
