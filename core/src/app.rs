//! The app-server side of a server connection, as a sans-IO state machine.
//!
//! An app server opens a few WebSockets to the relay (`/server/?hub=…`). On each, an
//! [`AppConnection`] does the service-protocol handshake, keeps the connection alive, takes
//! the clients the relay maps to it through their own hub handshake, and turns what they send
//! into [`AppEvent`]s; the app's answers go back through its methods. [`Backoff`] says how
//! long to wait before reconnecting a dropped connection.
//!
//! Run loop, as for the relay: after each `handle_*` or command, drain
//! [`AppConnection::poll_transmit`] (bytes for the WebSocket, binary) and
//! [`AppConnection::poll_event`], then sleep until [`AppConnection::poll_timeout`].

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::aspnetcore::handshake::{
    errors as handshake_errors, HandshakeRequest, HandshakeResponse,
};
use crate::aspnetcore::{Close, HubDecoder, HubMessage, HubProtocol};
use crate::framing::TextFrameDecoder;
use crate::service::{self, ServiceDecoder, ServiceMessage};

/// Settings of one server connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AppConnectionConfig {
    /// Send a ping when nothing was sent for this long (the relay drops a connection that is
    /// silent for 30 s).
    pub keep_alive: Duration,
    /// Give up on a relay silent for this long (it pings every 5 s).
    pub timeout: Duration,
    /// Give up on a handshake that takes longer.
    pub handshake_timeout: Duration,
    /// Largest message accepted from the relay.
    pub max_message_size: usize,
    /// Largest hub message accepted from one client.
    pub max_client_message_size: usize,
    /// What this connection carries.
    pub connection_type: service::ConnectionType,
    /// The relay instance an on-demand connection was asked for.
    pub target: String,
    /// The app allows its clients stateful reconnect (told to the relay in the handshake).
    pub allow_stateful_reconnects: bool,
    /// Whether the app's clients may be migrated to another app server when it shuts down
    /// gracefully (told to the relay in the handshake; default off).
    pub migration_level: service::MigrationLevel,
}

impl Default for AppConnectionConfig {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(15),
            max_message_size: service::DEFAULT_MAX_FRAME_LEN,
            max_client_message_size: 32 * 1024,
            connection_type: service::ConnectionType::Default,
            target: String::new(),
            allow_stateful_reconnects: false,
            migration_level: service::MigrationLevel::Off,
        }
    }
}

/// A client the relay mapped to this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's connection id.
    pub connection_id: String,
    /// Its hub protocol.
    pub protocol: HubProtocol,
    /// Its claims.
    pub claims: Vec<(String, String)>,
    /// Its request headers.
    pub headers: Vec<(String, Vec<String>)>,
    /// Its query string.
    pub query: String,
}

impl ClientInfo {
    /// The user id: the `asrs.s.uid` claim, else the name identifier.
    pub fn user_id(&self) -> Option<&str> {
        let find = |name: &str| {
            self.claims
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        find("asrs.s.uid").or_else(|| {
            find("http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier")
        })
    }

    /// A query parameter's value.
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = self.query.trim_start_matches('?');
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }
}

/// Something the app must handle.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AppEvent {
    /// The relay accepted the connection.
    Ready,
    /// The relay refused the handshake; the connection is over.
    Refused(String),
    /// A client completed its handshake.
    ClientConnected(ClientInfo),
    /// A client sent a hub message (pings excluded).
    ClientMessage {
        /// The client.
        connection_id: String,
        /// The message.
        message: HubMessage,
    },
    /// A client is gone.
    ClientDisconnected {
        /// The client.
        connection_id: String,
        /// Why, if it was an error.
        error: Option<String>,
    },
    /// The relay asks for one more connection to relay instance `target`.
    OpenOnDemand {
        /// The relay instance.
        target: String,
    },
    /// The answer to an ack-able request.
    Ack {
        /// The request's ack id.
        ack_id: i32,
        /// The outcome.
        status: service::AckStatus,
    },
    /// Client-result traffic from the relay: a ClientInvocation this app server routes for
    /// another caller, or the ClientCompletion / ErrorCompletion of one it made.
    ClientResult(ServiceMessage),
    /// The connection is dead (timed out or broken); reconnect.
    Dead(String),
    /// Something the relay wants the app server to know (a ServiceEvent: a message it
    /// skipped, ...). The connection goes on; log it.
    Notice(String),
}

#[derive(Debug)]
enum ClientHandshake {
    Pending(TextFrameDecoder),
    Done(HubDecoder),
}

#[derive(Debug)]
struct AppClient {
    info: ClientInfo,
    handshake: ClientHandshake,
    /// Migrated here from another app server: the client's handshake was answered there, so
    /// its answer here is not sent.
    migrated_in: bool,
}

/// How long a client migrated away is still written to: its invocations under way when it
/// moved finish, and their answers reach it through the relay.
const MIGRATED_GRACE: Duration = Duration::from_secs(30);

/// One server connection, app-server side.
#[derive(Debug)]
pub struct AppConnection {
    config: AppConnectionConfig,
    decoder: ServiceDecoder,
    ready: bool,
    dead: bool,
    clients: BTreeMap<String, AppClient>,
    /// Clients migrated to another app server, with their protocol, until when answers for
    /// them are still written.
    departed: BTreeMap<String, (HubProtocol, Instant)>,
    pending_opens: BTreeMap<String, service::OpenConnection>,
    last_sent: Instant,
    last_received: Instant,
    started: Instant,
    transmits: VecDeque<Bytes>,
    events: VecDeque<AppEvent>,
    next_ack: i32,
}

impl AppConnection {
    /// A connection whose WebSocket just opened. The handshake request is queued.
    pub fn new(now: Instant, config: AppConnectionConfig) -> Self {
        let mut this = Self {
            decoder: ServiceDecoder::new(config.max_message_size),
            ready: false,
            dead: false,
            clients: BTreeMap::new(),
            departed: BTreeMap::new(),
            pending_opens: BTreeMap::new(),
            last_sent: now,
            last_received: now,
            started: now,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_ack: 0,
            config,
        };
        let handshake = ServiceMessage::HandshakeRequest(service::HandshakeRequest {
            connection_type: this.config.connection_type,
            target: this.config.target.clone(),
            allow_stateful_reconnects: this.config.allow_stateful_reconnects,
            migration_level: this.config.migration_level,
            ..service::HandshakeRequest::default()
        });
        this.send(now, &handshake);
        this
    }

    /// Whether the relay accepted the handshake.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Whether the connection is over.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Clients on this connection.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// A client's details.
    pub fn client(&self, connection_id: &str) -> Option<&ClientInfo> {
        self.clients.get(connection_id).map(|c| &c.info)
    }

    /// Bytes to write on the WebSocket (one binary message each).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<AppEvent> {
        self.events.pop_front()
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.dead {
            return None;
        }
        if !self.ready {
            return Some(self.started + self.config.handshake_timeout);
        }
        Some(
            (self.last_sent + self.config.keep_alive).min(self.last_received + self.config.timeout),
        )
    }

    /// Runs the timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.dead {
            return;
        }
        if !self.ready && now >= self.started + self.config.handshake_timeout {
            return self.die("The relay did not answer the handshake in time.");
        }
        if now >= self.last_received + self.config.timeout {
            return self.die("The relay sent nothing within the timeout.");
        }
        if self.ready && now >= self.last_sent + self.config.keep_alive {
            let ping = self.status_ping();
            self.send(now, &ServiceMessage::Ping(ping));
        }
        self.departed.retain(|_, (_, until)| *until > now);
    }

    fn status_ping(&self) -> service::Ping {
        let count = self.clients.len().to_string();
        service::Ping::pairs([("#client", count.as_str())])
    }

    /// The WebSocket closed: every client on it is gone.
    pub fn handle_closed(&mut self) {
        self.die("The connection to the relay was lost.");
    }

    fn die(&mut self, why: &str) {
        if self.dead {
            return;
        }
        self.dead = true;
        for (connection_id, _) in std::mem::take(&mut self.clients) {
            self.events.push_back(AppEvent::ClientDisconnected {
                connection_id,
                error: Some("The connection to the relay was lost.".to_owned()),
            });
        }
        self.events.push_back(AppEvent::Dead(why.to_owned()));
    }

    fn send(&mut self, now: Instant, msg: &ServiceMessage) {
        let mut out = Vec::new();
        if msg.write(&mut out).is_ok() {
            self.transmits.push_back(Bytes::from(out));
            self.last_sent = now;
        }
    }

    /// Bytes received from the relay.
    pub fn handle_data(&mut self, now: Instant, data: &[u8]) {
        if self.dead {
            return;
        }
        self.last_received = now;
        self.decoder.push(data);
        loop {
            match self.decoder.next_message() {
                Ok(Some(m)) => self.handle_message(now, m),
                Ok(None) => break,
                Err(e) => {
                    let why = format!("Invalid data from the relay: {e}");
                    return self.die(&why);
                }
            }
            if self.dead {
                return;
            }
        }
    }

    fn handle_message(&mut self, now: Instant, msg: ServiceMessage) {
        if !self.ready {
            return match msg {
                ServiceMessage::HandshakeResponse(r) if r.error_message.is_empty() => {
                    self.ready = true;
                    self.events.push_back(AppEvent::Ready);
                }
                ServiceMessage::HandshakeResponse(r) => {
                    self.events
                        .push_back(AppEvent::Refused(r.error_message.clone()));
                    self.die(&r.error_message);
                }
                _ => self.die("The relay's first message was not a handshake response."),
            };
        }
        match msg {
            ServiceMessage::Ping(ping) => {
                if let Some(target) = ping.get("target") {
                    self.events.push_back(AppEvent::OpenOnDemand {
                        target: target.to_owned(),
                    });
                } else if ping.get("echo").is_some() {
                    self.send(now, &ServiceMessage::Ping(ping));
                } else if now >= self.last_sent + self.config.keep_alive {
                    let ping = self.status_ping();
                    self.send(now, &ServiceMessage::Ping(ping));
                }
            }
            ServiceMessage::OpenConnection(open) => {
                self.pending_opens.insert(open.connection_id.clone(), open);
            }
            ServiceMessage::ConnectionData(data) => {
                self.client_data(now, &data.connection_id, &data.payload)
            }
            ServiceMessage::CloseConnection(close) => {
                self.pending_opens.remove(&close.connection_id);
                let moved = close
                    .headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("Asrs-Migrate-To"));
                if let Some(client) = self.clients.remove(&close.connection_id) {
                    if moved {
                        let until = now + MIGRATED_GRACE;
                        let entry = (client.info.protocol, until);
                        self.departed.insert(close.connection_id.clone(), entry);
                    }
                    self.events.push_back(AppEvent::ClientDisconnected {
                        connection_id: close.connection_id,
                        error: (!close.error_message.is_empty()).then_some(close.error_message),
                    });
                }
            }
            ServiceMessage::Ack(ack) => {
                self.events.push_back(AppEvent::Ack {
                    ack_id: ack.ack_id,
                    status: ack.status,
                });
            }
            ServiceMessage::ServiceError(e) => {
                self.die(&format!("The relay reported an error: {}", e.error_message))
            }
            ServiceMessage::ServiceEvent(e) => self.events.push_back(AppEvent::Notice(e.message)),
            m @ (ServiceMessage::ClientInvocation(_)
            | ServiceMessage::ClientCompletion(_)
            | ServiceMessage::ErrorCompletion(_)) => {
                self.events.push_back(AppEvent::ClientResult(m));
            }
            _ => {}
        }
    }

    fn client_data(&mut self, now: Instant, connection_id: &str, payload: &[u8]) {
        if let Some(open) = self.pending_opens.remove(connection_id) {
            let protocol = open.hub_protocol();
            let migrated_in = open
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("Asrs-Migrate-From"));
            let info = ClientInfo {
                connection_id: open.connection_id,
                protocol,
                claims: open.claims,
                headers: open.headers,
                query: open.query_string,
            };
            let decoder = TextFrameDecoder::new(self.config.max_client_message_size);
            self.clients.insert(
                connection_id.to_owned(),
                AppClient {
                    info,
                    handshake: ClientHandshake::Pending(decoder),
                    migrated_in,
                },
            );
        }
        let Some(client) = self.clients.get_mut(connection_id) else {
            return;
        };
        let mut messages = Vec::new();
        // A message that fails after the handshake; a failed handshake is answered apart.
        let mut failure = None;
        let mut refused = None;
        match &mut client.handshake {
            ClientHandshake::Pending(decoder) => {
                decoder.push(payload);
                match decoder.next_frame() {
                    Ok(Some(frame)) => {
                        let rest = decoder.take_buffered();
                        match HandshakeRequest::parse(&frame) {
                            Ok(req) if HubProtocol::from_name(&req.protocol).is_some() => {
                                let protocol = HubProtocol::from_name(&req.protocol)
                                    .unwrap_or(HubProtocol::Json);
                                client.info.protocol = protocol;
                                let mut hub =
                                    HubDecoder::new(protocol, self.config.max_client_message_size);
                                hub.push(&rest);
                                client.handshake = ClientHandshake::Done(hub);
                                let info = client.info.clone();
                                // A client migrated here had its handshake answered by its
                                // first app server; it is not answered twice.
                                if !client.migrated_in {
                                    self.write_client(
                                        now,
                                        connection_id,
                                        HandshakeResponse::SUCCESS_FRAME,
                                    );
                                }
                                self.events.push_back(AppEvent::ClientConnected(info));
                                self.drain_client(connection_id, &mut messages, &mut failure);
                            }
                            Ok(req) => {
                                refused =
                                    Some(handshake_errors::unsupported_protocol(&req.protocol));
                            }
                            Err(_) => refused = Some(handshake_errors::UNEXPECTED.to_owned()),
                        }
                    }
                    Ok(None) => {}
                    Err(_) => refused = Some(handshake_errors::CANCELED.to_owned()),
                }
                if let Some(error) = refused {
                    let mut frame = Vec::new();
                    HandshakeResponse::error(error.clone()).write(&mut frame);
                    self.write_client(now, connection_id, &frame);
                    self.clients.remove(connection_id);
                    self.abort_client(now, connection_id, &error);
                    return;
                }
            }
            ClientHandshake::Done(decoder) => {
                decoder.push(payload);
                self.drain_client(connection_id, &mut messages, &mut failure);
            }
        }
        for message in messages {
            self.events.push_back(AppEvent::ClientMessage {
                connection_id: connection_id.to_owned(),
                message,
            });
        }
        if let Some(error) = failure {
            self.close_client(now, connection_id, Some(&error));
        }
    }

    fn drain_client(
        &mut self,
        connection_id: &str,
        messages: &mut Vec<HubMessage>,
        failure: &mut Option<String>,
    ) {
        let Some(AppClient {
            handshake: ClientHandshake::Done(decoder),
            ..
        }) = self.clients.get_mut(connection_id)
        else {
            return;
        };
        loop {
            match decoder.next_message() {
                Ok(Some(HubMessage::Ping)) => {}
                Ok(Some(HubMessage::Close(_))) => {
                    // The client is leaving; the relay will report the disconnect.
                }
                Ok(Some(m)) => messages.push(m),
                Ok(None) => break,
                Err(crate::aspnetcore::HubError::Frame(e)) => {
                    *failure = Some(format!("Connection closed with an error: {e}"));
                    break;
                }
                // A message that does not parse ends the connection, as the ASP.NET Core
                // server does: the client learns why, and no invocation of it hangs.
                Err(_) => {
                    *failure = Some("Connection closed with an error.".to_owned());
                    break;
                }
            }
        }
    }

    /// Sends already-framed bytes (in the client's protocol) to a client.
    pub fn send_frame_to_client(
        &mut self,
        now: Instant,
        connection_id: &str,
        frame: Bytes,
    ) -> bool {
        if !self.clients.contains_key(connection_id) {
            return false;
        }
        self.write_client(now, connection_id, &frame);
        true
    }

    /// Sends `payload` to a client: a ConnectionData message, written in one allocation.
    fn write_client(&mut self, now: Instant, connection_id: &str, payload: &[u8]) {
        let mut out = Vec::new();
        if service::write_connection_data(connection_id, payload, &mut out).is_ok() {
            self.transmits.push_back(Bytes::from(out));
            self.last_sent = now;
        }
    }

    fn abort_client(&mut self, now: Instant, connection_id: &str, error: &str) {
        let msg = ServiceMessage::CloseConnection(service::CloseConnection {
            connection_id: connection_id.to_owned(),
            error_message: error.to_owned(),
            ..service::CloseConnection::default()
        });
        self.send(now, &msg);
    }

    /// Sends `message` to a client on this connection, in its protocol.
    pub fn send_to_client(
        &mut self,
        now: Instant,
        connection_id: &str,
        message: &HubMessage,
    ) -> bool {
        // A client migrated away still gets what was under way when it moved.
        let protocol = match self.clients.get(connection_id) {
            Some(client) => client.info.protocol,
            None => match self.departed.get(connection_id) {
                Some((protocol, until)) if *until > now => *protocol,
                _ => return false,
            },
        };
        // Room for a typical message: grown from nothing, it would be copied several times.
        let mut frame = Vec::with_capacity(256);
        if protocol.write_message(message, &mut frame).is_err() {
            return false;
        }
        self.write_client(now, connection_id, &frame);
        true
    }

    /// Closes a client: a hub Close message (with `error`, no reconnect), then
    /// CloseConnection. A disconnect event follows.
    pub fn close_client(&mut self, now: Instant, connection_id: &str, error: Option<&str>) {
        // Not one that moved to another app server: it is that one's to close.
        if !self.clients.contains_key(connection_id) {
            return;
        }
        let close = HubMessage::Close(Close {
            error: error.map(str::to_owned),
            allow_reconnect: false,
        });
        self.send_to_client(now, connection_id, &close);
        self.abort_client(now, connection_id, error.unwrap_or_default());
        if self.clients.remove(connection_id).is_some() {
            self.events.push_back(AppEvent::ClientDisconnected {
                connection_id: connection_id.to_owned(),
                error: error.map(str::to_owned),
            });
        }
    }

    /// Sends any service message (multicast, groups, ...).
    pub fn send_service(&mut self, now: Instant, msg: &ServiceMessage) {
        self.send(now, msg);
    }

    /// A fresh ack id for an ack-able request.
    pub fn next_ack_id(&mut self) -> i32 {
        self.next_ack = self.next_ack.wrapping_add(1);
        self.next_ack
    }
}

/// Reconnect delays: 1, 2, 4, 8, 16, 32 s, then 60 s, each plus up to 1 s of jitter (as the
/// Azure SDK does). Randomness comes in as an argument.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The delay before the next attempt, given a random `jitter` in `0..1000` (ms).
    pub fn next_delay(&mut self, jitter_ms: u64) -> Duration {
        let base = if self.attempt < 6 {
            1u64 << self.attempt
        } else {
            60
        };
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_secs(base) + Duration::from_millis(jitter_ms % 1000)
    }

    /// A connection succeeded: start over.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(conn: &mut AppConnection) -> Vec<ServiceMessage> {
        let mut d = ServiceDecoder::default();
        let mut out = Vec::new();
        while let Some(t) = conn.poll_transmit() {
            d.push(&t);
            while let Some(m) = d.next_message().unwrap() {
                out.push(m);
            }
        }
        out
    }

    fn feed(conn: &mut AppConnection, now: Instant, msg: ServiceMessage) {
        let mut out = Vec::new();
        msg.write(&mut out).unwrap();
        conn.handle_data(now, &out);
    }

    fn events(conn: &mut AppConnection) -> Vec<AppEvent> {
        std::iter::from_fn(|| conn.poll_event()).collect()
    }

    #[test]
    fn handshake_clients_and_messages() {
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let mut c = AppConnection::new(now, AppConnectionConfig::default());
        assert!(matches!(
            frames(&mut c)[..],
            [ServiceMessage::HandshakeRequest(_)]
        ));
        feed(
            &mut c,
            now,
            ServiceMessage::HandshakeResponse(service::HandshakeResponse::default()),
        );
        assert_eq!(events(&mut c), vec![AppEvent::Ready]);
        feed(
            &mut c,
            now,
            ServiceMessage::OpenConnection(service::OpenConnection {
                connection_id: "c1".into(),
                claims: vec![("asrs.s.uid".into(), "alice".into())],
                ext: service::Ext {
                    protocol: Some("json".into()),
                    ..service::Ext::default()
                },
                ..service::OpenConnection::default()
            }),
        );
        feed(&mut c, now, ServiceMessage::ConnectionData(service::ConnectionData {
            connection_id: "c1".into(),
            payload: Bytes::from_static(b"{\"protocol\":\"json\",\"version\":1}\x1e{\"type\":6}\x1e{\"type\":1,\"target\":\"Echo\",\"arguments\":[\"hi\"],\"invocationId\":\"0\"}\x1e"),
            ext: service::Ext::default(),
        }));
        let ev = events(&mut c);
        assert!(
            matches!(&ev[0], AppEvent::ClientConnected(info) if info.user_id() == Some("alice"))
        );
        assert!(
            matches!(&ev[1], AppEvent::ClientMessage { message: HubMessage::Invocation(i), .. } if i.target == "Echo")
        );
        let out = frames(&mut c);
        assert!(
            matches!(&out[0], ServiceMessage::ConnectionData(d) if &d.payload[..] == b"{}\x1e")
        );
        // The relay drops the client.
        feed(
            &mut c,
            now,
            ServiceMessage::CloseConnection(service::CloseConnection {
                connection_id: "c1".into(),
                ..Default::default()
            }),
        );
        assert_eq!(
            events(&mut c),
            vec![AppEvent::ClientDisconnected {
                connection_id: "c1".into(),
                error: None
            }]
        );
    }

    /// A hub message that does not parse ends the client, as the ASP.NET Core server does:
    /// it gets a Close with the error, the relay a CloseConnection, and the app the
    /// disconnect. What came before it in the same payload still counts.
    #[test]
    fn an_unparsable_hub_message_closes_its_client_with_an_error() {
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        for bad in [
            &b"{\"type\":\"1\"}"[..],
            b"not json",
            b"{\"type\":99}",
            b"[1]",
        ] {
            let mut c = AppConnection::new(now, AppConnectionConfig::default());
            feed(
                &mut c,
                now,
                ServiceMessage::HandshakeResponse(service::HandshakeResponse::default()),
            );
            feed(
                &mut c,
                now,
                ServiceMessage::OpenConnection(service::OpenConnection {
                    connection_id: "c1".into(),
                    ..service::OpenConnection::default()
                }),
            );
            let mut payload = b"{\"protocol\":\"json\",\"version\":1}\x1e{\"type\":1,\"target\":\"Echo\",\"arguments\":[]}\x1e".to_vec();
            payload.extend_from_slice(bad);
            payload.push(0x1e);
            let _ = frames(&mut c);
            let _ = events(&mut c);
            feed(
                &mut c,
                now,
                ServiceMessage::ConnectionData(service::ConnectionData {
                    connection_id: "c1".into(),
                    payload: Bytes::from(payload),
                    ext: service::Ext::default(),
                }),
            );
            let ev = events(&mut c);
            assert!(
                matches!(&ev[..], [
                AppEvent::ClientConnected(_),
                AppEvent::ClientMessage { message: HubMessage::Invocation(_), .. },
                AppEvent::ClientDisconnected { error: Some(e), .. },
            ] if e == "Connection closed with an error."),
                "{bad:?}: {ev:?}"
            );
            let out = frames(&mut c);
            let said = out.iter().any(|m| matches!(m, ServiceMessage::ConnectionData(d)
                if std::str::from_utf8(&d.payload).is_ok_and(|p| p.contains("\"type\":7,\"error\":\"Connection closed with an error."))));
            assert!(said, "{bad:?}: the client is told why");
            assert!(out
                .iter()
                .any(|m| matches!(m, ServiceMessage::CloseConnection(_))));
        }
    }

    #[test]
    fn keep_alive_timeout_and_target() {
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let mut c = AppConnection::new(now, AppConnectionConfig::default());
        feed(
            &mut c,
            now,
            ServiceMessage::HandshakeResponse(service::HandshakeResponse::default()),
        );
        frames(&mut c);
        let later = now + Duration::from_secs(6);
        c.handle_timeout(later);
        assert!(matches!(frames(&mut c)[..], [ServiceMessage::Ping(_)]));
        feed(
            &mut c,
            later,
            ServiceMessage::Ping(service::Ping::pairs([("target", "relay-0")])),
        );
        assert!(events(&mut c).contains(&AppEvent::OpenOnDemand {
            target: "relay-0".into()
        }));
        c.handle_timeout(later + Duration::from_secs(31));
        assert!(c.is_dead());
        assert!(matches!(events(&mut c).last(), Some(AppEvent::Dead(_))));
    }

    #[test]
    fn refused_handshake_is_reported() {
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let mut c = AppConnection::new(now, AppConnectionConfig::default());
        feed(
            &mut c,
            now,
            ServiceMessage::HandshakeResponse(service::HandshakeResponse {
                error_message: "no".into(),
                ..Default::default()
            }),
        );
        assert_eq!(events(&mut c)[0], AppEvent::Refused("no".into()));
        assert!(c.is_dead());
    }

    #[test]
    fn backoff_grows_then_caps() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| b.next_delay(0).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
        b.reset();
        assert_eq!(b.next_delay(999), Duration::from_millis(1999));
    }

    /// Migration, app-server side: a client migrated here is not answered its handshake
    /// again; one migrated away still gets the answers under way for a while, then nothing.
    #[test]
    fn migrated_clients_are_not_greeted_twice_and_get_what_they_were_owed() {
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let config = AppConnectionConfig {
            migration_level: service::MigrationLevel::ShutdownOnly,
            ..AppConnectionConfig::default()
        };
        let mut c = AppConnection::new(now, config);
        let hello = frames(&mut c);
        assert!(matches!(
            &hello[..],
            [ServiceMessage::HandshakeRequest(h)] if h.migration_level == service::MigrationLevel::ShutdownOnly
        ));
        feed(
            &mut c,
            now,
            ServiceMessage::HandshakeResponse(service::HandshakeResponse::default()),
        );
        let open = |id: &str, from: Option<&str>| {
            ServiceMessage::OpenConnection(service::OpenConnection {
                connection_id: id.to_owned(),
                headers: from
                    .map(|f| vec![("Asrs-Migrate-From".to_owned(), vec![f.to_owned()])])
                    .unwrap_or_default(),
                ..service::OpenConnection::default()
            })
        };
        let data = |id: &str, payload: &'static [u8]| {
            ServiceMessage::ConnectionData(service::ConnectionData {
                connection_id: id.to_owned(),
                payload: Bytes::from_static(payload),
                ext: service::Ext::default(),
            })
        };
        let handshake: &[u8] = b"{\"protocol\":\"json\",\"version\":1}\x1e";
        for (id, from) in [("fresh", None), ("moved", Some("app-1"))] {
            feed(&mut c, now, open(id, from));
            feed(&mut c, now, data(id, handshake));
        }
        let answered: Vec<String> = frames(&mut c)
            .into_iter()
            .filter_map(|m| match m {
                ServiceMessage::ConnectionData(d) => Some(d.connection_id),
                _ => None,
            })
            .collect();
        assert_eq!(
            answered,
            ["fresh"],
            "the migrated client is not greeted again"
        );
        // "fresh" moves away: it still gets an answer under way, until the grace ends.
        feed(
            &mut c,
            now,
            ServiceMessage::CloseConnection(service::CloseConnection {
                connection_id: "fresh".into(),
                headers: vec![("Asrs-Migrate-To".to_owned(), vec!["app-2".to_owned()])],
                ..service::CloseConnection::default()
            }),
        );
        let message = HubMessage::Completion(crate::aspnetcore::Completion {
            invocation_id: "1".into(),
            result: crate::aspnetcore::CompletionResult::Void,
            headers: crate::aspnetcore::Headers::default(),
        });
        assert!(c.send_to_client(now, "fresh", &message));
        let later = now + MIGRATED_GRACE + Duration::from_secs(1);
        c.handle_timeout(later);
        assert!(!c.send_to_client(later, "fresh", &message));
    }
}
