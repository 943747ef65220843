//! The relay itself, fuzzed: the input is a script of operations by app servers, ASP.NET Core
//! and classic clients and the clock, played against a [`Relay`] through the simulation
//! harness. Every step checks the run-loop contract (the harness does: time never goes back,
//! `poll_timeout` moves past what `handle_timeout` ran, no held request is answered twice).
//! At the end, two hours pass in silence, and then nothing may be left: no client, no server
//! connection, no timer, no unanswered request; and the events and counters must balance
//! (every connection that opened closed exactly once).
//!
//! A first byte in `0xD0..0xE0` makes the relay a node of a cluster: the script then also
//! plays another node's backplane messages (well-formed and not), the engine going down and
//! up, and this node's own heartbeats coming back or not. At the end, the node must be left
//! with nothing but its heartbeat: no question awaiting an answer, no waiting negotiate, no
//! client result routed elsewhere, and only its two standing subscriptions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::relay::sim::{
    classic_request, connection_request, request, token, websocket_request, Sim, KEY,
};
use crate::relay::{ConnHandle, Event, RelayConfig, RequestId, RequestOutcome};
use crate::service::{self, ServiceMessage};

/// The script, read a byte at a time. An exhausted script reads as zeros, and ends the run.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }

    fn pick<'s, T>(&mut self, items: &'s [T]) -> Option<&'s T> {
        if items.is_empty() {
            return None;
        }
        items.get(self.below(items.len()))
    }

    /// Up to 64 bytes of the script, as they are.
    fn bytes(&mut self) -> Bytes {
        let n = self.below(65).min(self.0.len());
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Bytes::copy_from_slice(taken)
    }
}

const HUBS: [&str; 2] = ["chat", "other"];

/// Client frames that mean something to the relay, beside whatever the script writes.
const CLIENT_FRAMES: &[&[u8]] = &[
    b"{\"protocol\":\"json\",\"version\":1}\x1e",
    b"{\"protocol\":\"json\",\"version\":2}\x1e",
    b"{\"protocol\":\"messagepack\",\"version\":1}\x1e",
    b"{\"type\":6}\x1e",
    b"{\"type\":1,\"target\":\"Echo\",\"arguments\":[1]}\x1e",
    b"{\"type\":8,\"sequenceId\":1}\x1e",
    b"{\"type\":9,\"sequenceId\":1}\x1e",
    b"{\"type\":1,\"tar",
    b"\x02\x91\x06",
    b"{\"H\":\"chat\",\"M\":\"Echo\",\"A\":[1],\"I\":0}",
    b"{\"H\":\"other\",\"M\":\"Echo\",\"A\":[]}",
];

/// Payloads an app server sends a client, beside whatever the script writes.
const SERVER_FRAMES: &[&[u8]] = &[
    b"{}\x1e",
    b"{\"error\":\"no\"}\x1e",
    b"{\"type\":1,\"target\":\"m\",\"arguments\":[1]}\x1e",
    b"{\"type\":1,\"invocationId\":\"1\",\"target\":\"ask\",\"arguments\":[]}\x1e",
    b"{\"type\":2,\"invocationId\":\"0\",\"item\":1}\x1e",
    b"{\"type\":3,\"invocationId\":\"0\",\"result\":1}\x1e",
    b"{\"type\":7,\"error\":\"bye\"}\x1e",
    b"{}\x1e\x02\x91\x06",
    b"{\"type\":1,\"ta",
];

/// Subscriber filters a broadcast may carry (half of them carry none).
const FILTERS: &[&str] = &[
    "userId eq 'u'",
    "'g' in groups",
    "not (userId ne null)",
    "userId eq",
];

/// What the script has made so far.
#[derive(Default)]
struct World {
    servers: Vec<ConnHandle>,
    /// ASP.NET Core connection tokens, with their hub and the access token they negotiated
    /// with.
    tokens: Vec<(String, &'static str, String)>,
    /// Classic connection tokens.
    classic: Vec<String>,
    /// Every handle a request attached a socket or stream to.
    sockets: Vec<ConnHandle>,
    /// Held requests, and whether the client abandoned them.
    held: BTreeMap<RequestId, bool>,
}

impl World {
    fn note(&mut self, outcome: RequestOutcome) {
        match outcome {
            RequestOutcome::AcceptWebSocket(c) | RequestOutcome::EventStream(c) => {
                self.sockets.push(c);
            }
            RequestOutcome::Pending(r) => {
                self.held.insert(r, false);
            }
            RequestOutcome::Respond(_) => {}
        }
    }
}

/// Plays a script against a relay. See the module docs.
///
/// # Panics
/// When the relay breaks the run-loop contract or leaves something behind.
pub fn relay_ops(data: &[u8]) {
    let config = RelayConfig {
        max_client_message_size: 256,
        max_long_poll_buffer: 4096,
        stateful_reconnect_buffer: 1024,
        max_pending_messages: 4,
        classic_buffer_messages: 8,
        clients_per_server_connection: 2,
        max_server_message_size: 1024,
        max_upstream_pending: 4,
        // Most inputs run in default mode; a first byte from 0xE0 picks classic, from 0xF0
        // serverless (with an upstream), so that the relay's own endpoint is fuzzed too.
        service_mode: match data.first() {
            Some(0xF0..) => crate::relay::ServiceMode::Serverless,
            Some(0xE0..) => crate::relay::ServiceMode::Classic,
            _ => crate::relay::ServiceMode::Default,
        },
        cluster: matches!(data.first(), Some(0xD0..0xE0))
            .then(|| crate::relay::ClusterConfig::new("n1"))
            .and_then(Result::ok),
        ..RelayConfig::default()
    };
    let clustered = config.cluster.is_some();
    // What one client may hold: a poll's worth and a reconnect's worth, each overshot by at
    // most one message, and the messages held for its handshake.
    let per_client = config.max_long_poll_buffer
        + config.stateful_reconnect_buffer
        + (config.max_pending_messages + 2) * config.max_server_message_size;
    let max_clients = config.max_clients;
    // The harness's epoch; nothing reads the clock after this.
    #[allow(clippy::disallowed_methods)]
    let epoch = Instant::now();
    let mut sim = Sim::with_config(epoch, config);
    if let Ok(settings) = crate::relay::UpstreamSettings::parse(
        r#"{"UpstreamSettings":{"Templates":[{"UrlTemplate":"http://up/{hub}/{category}/{event}"}]}}"#,
    ) {
        sim.relay_mut().0.set_upstream(settings);
    }
    let mut world = World::default();
    let mut script = Script(data);
    if clustered {
        let (relay, now) = sim.relay_mut();
        relay.handle_backplane_up(now);
        sim.drain();
    }
    while !script.0.is_empty() {
        step(&mut sim, &mut world, &mut script);
        if clustered {
            backplane_step(&mut sim, &mut script);
        }
        // The upstream answers the oldest request it was sent, or not at all.
        if !sim.upstream.is_empty() && script.byte() % 2 == 0 {
            let request = sim.upstream.remove(0);
            let result = match script.byte() % 4 {
                0 => Ok((200, script.bytes())),
                1 => Ok((204, Bytes::new())),
                2 => Ok((500, Bytes::new())),
                _ => Err(crate::relay::UpstreamFailure::NoAnswer),
            };
            sim.answer_upstream(request.id, result);
        }
        let relay = sim.relay();
        let (_, largest) = relay.buffered_bytes();
        assert!(largest <= per_client, "a client holds {largest} bytes");
        assert!(relay.client_count() <= max_clients);
    }
    // Every client was mapped to one server connection at a time: opened once without a
    // migration, and on another server connection only by a migration, one for each time
    // its server connection was told it moved away; and only the server connections it was
    // opened on heard from it. (Counted, not ordered: `to_server` is kept per connection.)
    let mut mapped: BTreeMap<&str, BTreeSet<ConnHandle>> = BTreeMap::new();
    let mut first_opens: BTreeMap<&str, usize> = BTreeMap::new();
    let mut moves_in: BTreeMap<&str, usize> = BTreeMap::new();
    let mut moves_out: BTreeMap<&str, usize> = BTreeMap::new();
    let migration =
        |headers: &[(String, Vec<String>)], name: &str| headers.iter().any(|(k, _)| k == name);
    for (server, messages) in &sim.to_server {
        for m in messages {
            match m {
                ServiceMessage::OpenConnection(o) => {
                    mapped.entry(&o.connection_id).or_default().insert(*server);
                    let counter = if migration(&o.headers, "Asrs-Migrate-From") {
                        &mut moves_in
                    } else {
                        &mut first_opens
                    };
                    *counter.entry(&o.connection_id).or_default() += 1;
                }
                ServiceMessage::CloseConnection(c) if migration(&c.headers, "Asrs-Migrate-To") => {
                    *moves_out.entry(&c.connection_id).or_default() += 1;
                }
                _ => {}
            }
        }
    }
    for id in mapped.keys() {
        assert_eq!(
            first_opens.get(id),
            Some(&1),
            "{id} was not opened exactly once"
        );
        assert_eq!(moves_in.get(id), moves_out.get(id), "{id} moved unevenly");
    }
    for (server, messages) in &sim.to_server {
        for m in messages {
            if let ServiceMessage::ConnectionData(d) = m {
                let to = mapped.get(d.connection_id.as_str());
                assert!(
                    to.is_some_and(|s| s.contains(server)),
                    "{}'s data went astray",
                    d.connection_id
                );
            }
        }
    }
    // Two hours of silence: every server connection times out, and every client with it.
    for _ in 0..(2 * 3600 / 30) {
        sim.advance(Duration::from_secs(30));
    }
    if clustered {
        // The engine comes back, if it was down, and the node hears itself.
        let (relay, now) = sim.relay_mut();
        relay.handle_backplane_up(now);
        sim.drain();
        echo_own(&mut sim, true);
        for _ in 0..10 {
            sim.advance(Duration::from_secs(1));
            echo_own(&mut sim, true);
        }
    }
    let relay = sim.relay();
    assert_eq!(relay.client_count(), 0, "a client outlived its timeouts");
    assert_eq!(relay.server_connection_count(), 0);
    if clustered {
        assert_eq!(
            relay.cluster_pending(),
            (0, 0, 0, 0),
            "asks, parked, remote calls, answers held for subscriptions"
        );
        let status = relay.backplane_status().expect("a node");
        assert_eq!(
            status.channels, 2,
            "only the control and own channels: {status:?}"
        );
        assert!(status.up);
        let heartbeat = relay.poll_timeout().expect("the heartbeat");
        assert!(heartbeat <= sim.now() + Duration::from_secs(1));
    } else {
        assert_eq!(
            relay.poll_timeout(),
            None,
            "a timer outlived its connection"
        );
    }
    for (request, abandoned) in &world.held {
        assert!(
            *abandoned || sim.responses.contains_key(request),
            "{request:?} was never answered"
        );
    }
    let mut open: BTreeSet<ConnHandle> = BTreeSet::new();
    for event in &sim.events {
        match event {
            Event::ClientOpened { conn, .. } | Event::ServerOpened { conn, .. } => {
                assert!(open.insert(*conn), "{conn:?} opened twice");
            }
            Event::ClientClosed { conn, .. } | Event::ServerClosed { conn, .. } => {
                assert!(open.remove(conn), "{conn:?} closed without being open");
            }
            _ => {}
        }
    }
    assert!(open.is_empty(), "{open:?} never closed");
    let stats = relay.stats();
    assert_eq!(stats.clients_opened, stats.clients_closed.total());
    assert_eq!(stats.servers_opened, stats.servers_closed.total());
}

fn step(sim: &mut Sim, world: &mut World, script: &mut Script<'_>) {
    let hub = HUBS[script.below(HUBS.len())];
    match script.byte() % 12 {
        // An app server connects; most say hello.
        0 => {
            // Refused once the harness's tokens expire on the virtual clock. Some are the
            // classic ASP.NET SDK's: a hub's (its classic clients pass through) or the
            // application's (`<app>_<app>`).
            let server_id = ["app-1", "app-2"][script.below(2)];
            let accepted = match script.byte() % 8 {
                0 => sim.try_accept_server_at("/aspnetserver/", hub, server_id),
                1 => sim.try_accept_server_at("/aspnetserver/", &format!("{hub}_{hub}"), server_id),
                _ => sim.try_accept_server(hub, server_id),
            };
            let Some(server) = accepted else {
                return;
            };
            if !script.byte().is_multiple_of(8) {
                let flags = script.byte();
                let hello = service::HandshakeRequest {
                    version: i32::from(!flags.is_multiple_of(8)),
                    // Some take part in migration, some allow stateful reconnect.
                    migration_level: service::MigrationLevel::from(i32::from(flags >> 6)),
                    allow_stateful_reconnects: flags & 8 != 0,
                    ..service::HandshakeRequest::default()
                };
                send_service(sim, server, &ServiceMessage::HandshakeRequest(hello));
            }
            world.servers.push(server);
        }
        // A client negotiates.
        1 => {
            let query = format!(
                "hub={hub}&negotiateVersion={}&useStatefulReconnect={}",
                script.byte() % 2,
                script.byte().is_multiple_of(2)
            );
            let bearer = policy_token(hub, script.byte());
            let req = request("POST", "/client/negotiate", &query, Some(&bearer), false);
            if let RequestOutcome::Respond(r) = sim.handle(&req) {
                let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                let id = json["connectionToken"]
                    .as_str()
                    .or(json["connectionId"].as_str());
                if let Some(id) = id {
                    world.tokens.push((id.to_owned(), hub, bearer.clone()));
                }
            }
        }
        // A client opens a WebSocket: on a negotiated connection, or without negotiating.
        2 => {
            let (id, hub, bearer) = match script.pick(&world.tokens) {
                Some((id, hub, bearer)) if !script.byte().is_multiple_of(4) => {
                    (Some(id.as_str()), *hub, bearer.clone())
                }
                _ => (None, hub, policy_token(hub, script.byte())),
            };
            // Mostly with the token it negotiated with; sometimes another's.
            let outcome = if script.byte().is_multiple_of(8) {
                sim.handle(&websocket_request(hub, id, Some("mallory")))
            } else {
                let query = match id {
                    Some(id) => format!("hub={hub}&id={id}"),
                    None => format!("hub={hub}"),
                };
                sim.handle(&request("GET", "/client/", &query, Some(&bearer), true))
            };
            world.note(outcome);
        }
        // A socket says something (an adapter feeds nothing from a socket that is done).
        3 => {
            let Some(&conn) = script.pick(&world.sockets) else {
                return;
            };
            if sim.is_done(conn) {
                return;
            }
            let data = match script.pick(CLIENT_FRAMES) {
                Some(frame) if !script.byte().is_multiple_of(4) => Bytes::from_static(frame),
                _ => script.bytes(),
            };
            sim.data(conn, &data);
        }
        // An app server says something.
        4 => {
            let Some(&server) = script.pick(&world.servers) else {
                return;
            };
            if sim.is_done(server) {
                return;
            }
            if script.byte().is_multiple_of(8) {
                let garbage = script.bytes();
                sim.data(server, &garbage);
                return;
            }
            let ids = connection_ids(sim);
            let msg = server_message(script, &ids);
            send_service(sim, server, &msg);
        }
        // Time passes; the app servers keep their connections alive, mostly.
        5 => {
            sim.advance(Duration::from_millis(u64::from(script.byte()) * 200));
            if !script.byte().is_multiple_of(4) {
                for server in world.servers.clone() {
                    send_service(sim, server, &ServiceMessage::Ping(service::Ping::default()));
                }
            }
        }
        // A socket or stream goes away.
        6 => {
            let all: Vec<ConnHandle> = world
                .sockets
                .iter()
                .chain(&world.servers)
                .copied()
                .collect();
            if let Some(&conn) = script.pick(&all) {
                if !sim.is_done(conn) {
                    sim.closed_by_peer(conn);
                }
            }
        }
        // Server-Sent Events, long polls, sends and deletes.
        7 => {
            let Some((id, hub, bearer)) = script.pick(&world.tokens).cloned() else {
                return;
            };
            let method = ["GET", "GET", "POST", "DELETE"][script.below(4)];
            let accept = script
                .byte()
                .is_multiple_of(2)
                .then_some("text/event-stream");
            let body = match method {
                "POST" => match script.pick(CLIENT_FRAMES) {
                    Some(frame) => Bytes::from_static(frame),
                    None => script.bytes(),
                },
                _ => Bytes::new(),
            };
            let mut req = connection_request(method, hub, &id, Some("u"), accept, &body);
            let authorization = format!("Bearer {bearer}");
            req.headers = req
                .headers
                .iter()
                .map(|(name, value)| {
                    let ours = name.eq_ignore_ascii_case("authorization");
                    (name, if ours { authorization.as_str() } else { value })
                })
                .collect();
            let outcome = sim.handle(&req);
            world.note(outcome);
        }
        // A client abandons a held request.
        8 => {
            let waiting: Vec<RequestId> = world
                .held
                .iter()
                .filter(|(r, abandoned)| !**abandoned && !sim.responses.contains_key(r))
                .map(|(r, _)| *r)
                .collect();
            if let Some(&request) = script.pick(&waiting) {
                world.held.insert(request, true);
                sim.abort(request);
            }
        }
        // Classic clients.
        9 | 10 => classic(sim, world, script, hub),
        // Anything at all, at any path.
        _ => {
            let paths = [
                "/client/negotiate",
                "/client/",
                "/server/",
                "/aspnetserver/",
                "/aspnetclient/poll",
                "/health",
                "/x",
                "/api/v1/hubs/chat",
                "/api/hubs/chat/:send",
                "/api/hubs/chat/groups/g/:closeConnections",
                "/api/hubs/chat/users/u/groups/g",
            ];
            let path = paths[script.below(paths.len())];
            let query = String::from_utf8_lossy(&script.bytes()).into_owned();
            // The REST API's calls carry a token for their path.
            let bearer = path.starts_with("/api/").then(|| {
                let mut claims = crate::auth::Claims::issued_at(crate::relay::sim::T0, 3600);
                claims.aud.push(format!("http://localhost{path}"));
                crate::auth::sign(&claims, KEY.as_bytes(), crate::auth::Algorithm::Hs256)
            });
            let mut req = request(
                ["GET", "POST", "PUT", "DELETE", "HEAD"][script.below(5)],
                path,
                &query,
                bearer.as_deref(),
                script.byte().is_multiple_of(2),
            );
            req.body = script.bytes();
            let outcome = sim.handle(&req);
            world.note(outcome);
        }
    }
}

/// Feeds the node's own publishes on the control channel back to it (its heartbeats, as the
/// engine echoes them), and confirms its subscriptions, when `echo`; forgets the rest of what
/// it asked of the backplane (unconfirmed, its held answers wait for their timeout).
fn echo_own(sim: &mut Sim, echo: bool) {
    let asked = std::mem::take(&mut sim.backplane);
    let mut subscribed = 0;
    for o in asked {
        match o {
            crate::relay::Output::Publish { channel, data }
                if echo && channel.ends_with(":control") =>
            {
                let (relay, now) = sim.relay_mut();
                relay.handle_backplane(now, &channel, &data);
                sim.drain();
            }
            crate::relay::Output::Subscribe { .. } => subscribed += 1,
            _ => {}
        }
    }
    if echo && subscribed > 0 {
        let (relay, now) = sim.relay_mut();
        relay.handle_backplane_subscribed(now, subscribed);
        sim.drain();
    }
}

/// Another node (`n2`) speaks, the engine drops or comes back, or garbage arrives.
fn backplane_step(sim: &mut Sim, script: &mut Script<'_>) {
    use crate::relay::backplane::{encode, Body, Command};
    use crate::relay::command::HubCommand;
    let echo = !script.byte().is_multiple_of(4);
    echo_own(sim, echo);
    let body = match script.byte() % 10 {
        0 => Body::Heartbeat {
            incarnation: u64::from(script.byte() % 2),
            url: None,
            hubs: HUBS[..script.below(3)]
                .iter()
                .map(|h| (*h).to_owned())
                .collect(),
        },
        1 => Body::Bye,
        2 | 3 => {
            let ids = connection_ids(sim);
            let msg = server_message(script, &ids);
            let Some((command, ack)) = HubCommand::from_service(&msg) else {
                return;
            };
            Body::Command {
                hub: HUBS[script.below(2)].to_owned(),
                ask: ack.map(|a| a.unsigned_abs().into()),
                command: Command::of(&command),
            }
        }
        4 => Body::Answer {
            ask: script.below(8) as u64,
            found: script.byte().is_multiple_of(2),
        },
        5 => {
            let ids = connection_ids(sim);
            let msg = server_message(script, &ids);
            let mut frame = Vec::new();
            if msg.write(&mut frame).is_err() {
                return;
            }
            Body::Invocation {
                message: frame.into(),
            }
        }
        6 => Body::NeedServer {
            hub: HUBS[script.below(2)].to_owned(),
        },
        7 => {
            let (relay, now) = sim.relay_mut();
            if script.byte().is_multiple_of(2) {
                relay.handle_backplane_down(now);
            } else {
                relay.handle_backplane_up(now);
            }
            sim.drain();
            return;
        }
        _ => {
            let garbage = script.bytes();
            let (relay, now) = sim.relay_mut();
            relay.handle_backplane(now, "signalr-relay:control", &garbage);
            sim.drain();
            return;
        }
    };
    let data = encode("n2", &body);
    let (relay, now) = sim.relay_mut();
    relay.handle_backplane(now, "signalr-relay:node:n1", &data);
    sim.drain();
}

fn classic(sim: &mut Sim, world: &mut World, script: &mut Script<'_>, hub: &str) {
    let kinds = [
        "negotiate",
        "connect",
        "reconnect",
        "start",
        "send",
        "poll",
        "abort",
    ];
    let kind = kinds[script.below(kinds.len())];
    let transport = ["webSockets", "serverSentEvents", "longPolling"][script.below(3)];
    let websocket = transport == "webSockets" && matches!(kind, "connect" | "reconnect");
    let query = format!("transport={transport}&messageId={}", script.byte() % 4);
    let connection_token = script.pick(&world.classic).cloned();
    let form = if kind == "send" {
        let data = match script.pick(CLIENT_FRAMES) {
            Some(frame) => Bytes::from_static(frame),
            None => script.bytes(),
        };
        let encoded: String = form_urlencoded::byte_serialize(&data).collect();
        format!("data={encoded}")
    } else {
        String::new()
    };
    let token = connection_token.as_deref();
    let req = classic_request(kind, hub, &query, token, &form, websocket, Some("u"));
    match sim.handle(&req) {
        RequestOutcome::Respond(r) if kind == "negotiate" => {
            let json: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            if let Some(t) = json["ConnectionToken"].as_str() {
                world.classic.push(t.to_owned());
            }
        }
        outcome => world.note(outcome),
    }
}

/// The connection ids app servers have been told of.
fn connection_ids(sim: &Sim) -> Vec<String> {
    sim.to_server
        .values()
        .flatten()
        .filter_map(|m| match m {
            ServiceMessage::OpenConnection(o) => Some(o.connection_id.clone()),
            _ => None,
        })
        .collect()
}

fn server_message(script: &mut Script<'_>, ids: &[String]) -> ServiceMessage {
    let id = script
        .pick(ids)
        .cloned()
        .unwrap_or_else(|| "nobody".to_owned());
    let payload = match script.pick(SERVER_FRAMES) {
        Some(frame) if !script.byte().is_multiple_of(4) => Bytes::from_static(frame),
        _ => script.bytes(),
    };
    let payloads = service::Payloads(vec![
        ("json".into(), payload.clone()),
        ("messagepack".into(), Bytes::from_static(b"\x02\x91\x06")),
    ]);
    let group = ["g", "h"][script.below(2)].to_owned();
    let user = ["u", "v"][script.below(2)].to_owned();
    let ack_id = i32::from(script.byte());
    match script.byte() % 17 {
        0..=3 => ServiceMessage::ConnectionData(service::ConnectionData {
            connection_id: id,
            payload,
            ext: service::Ext::default(),
        }),
        4 => ServiceMessage::BroadcastData(service::BroadcastData {
            excluded_connection_ids: vec![id],
            payloads,
            // Sometimes narrowed by a subscriber filter, well formed or not.
            ext: service::Ext {
                filter: match script.byte() % 2 {
                    0 => None,
                    _ => script.pick(FILTERS).map(|f| (*f).to_owned()),
                },
                ..service::Ext::default()
            },
        }),
        5 => ServiceMessage::GroupBroadcastData(service::GroupBroadcastData {
            group,
            excluded_user_ids: vec![user],
            payloads,
            ..service::GroupBroadcastData::default()
        }),
        6 => ServiceMessage::JoinGroupWithAck(service::GroupMembershipWithAck {
            connection_id: id,
            group: Some(group),
            ack_id,
            ext: service::Ext::default(),
        }),
        7 => ServiceMessage::LeaveGroupWithAck(service::GroupMembershipWithAck {
            connection_id: id,
            group: None,
            ack_id,
            ext: service::Ext::default(),
        }),
        8 => ServiceMessage::UserJoinGroup(service::UserGroupMembership {
            user_id: user,
            group: Some(group),
            ext: service::Ext {
                ttl: Some(i32::from(script.byte()) - 20),
                ..service::Ext::default()
            },
        }),
        9 => ServiceMessage::MultiConnectionData(service::MultiConnectionData {
            connection_ids: vec![id.clone(), id],
            payloads,
            ext: service::Ext::default(),
        }),
        10 => ServiceMessage::UserData(service::UserData {
            user_id: user,
            payloads,
            ext: service::Ext::default(),
        }),
        11 => ServiceMessage::CloseConnection(service::CloseConnection {
            connection_id: id,
            ..service::CloseConnection::default()
        }),
        12 => ServiceMessage::ClientInvocation(service::ClientInvocation {
            invocation_id: format!("i{}", script.byte() % 4),
            connection_id: id,
            caller_server_id: "app-2".into(),
            payloads,
            ext: service::Ext::default(),
        }),
        13 => ServiceMessage::ClientCompletion(service::ClientCompletion {
            invocation_id: format!("i{}", script.byte() % 4),
            connection_id: id,
            caller_server_id: "app-2".into(),
            protocol: "json".into(),
            payload,
            ext: service::Ext::default(),
        }),
        14 => ServiceMessage::CloseGroupConnectionsWithAck(service::CloseConnectionsWithAck {
            target: group,
            ack_id,
            ..service::CloseConnectionsWithAck::default()
        }),
        15 => match script.byte() % 4 {
            0 => ServiceMessage::GroupMemberQuery(service::GroupMemberQuery {
                ext: service::Ext::default(),
                group,
                ack_id,
                max: i32::from(script.byte() % 4),
                continuation_token: script.byte().is_multiple_of(2).then_some(id),
            }),
            // A newer request (RefreshAuth), and one of a type nobody knows.
            1 => ServiceMessage::Unknown {
                message_type: 41,
                body: Bytes::from_static(&[0x95, 41, 0xa1, b'x', 0x90, 1, 7]),
            },
            2 => ServiceMessage::Unknown {
                message_type: 99,
                body: Bytes::from_static(&[0x93, 99, 5, 0x80]),
            },
            _ => ServiceMessage::Ping(service::Ping::pairs([("shutdown", "fin:1")])),
        },
        _ => ServiceMessage::Ping(service::Ping::pairs([(
            ["status", "shutdown", "servers", "echo"][script.below(4)],
            ["fin", "fin:0", "fin:1", "fin:2"][script.below(4)],
        )])),
    }
}

fn send_service(sim: &mut Sim, server: ConnHandle, msg: &ServiceMessage) {
    let mut out = Vec::new();
    if msg.write(&mut out).is_ok() {
        sim.data(server, &out);
    }
}

/// A client token for `hub`, with the policy claims an Azure SDK app server writes, chosen by
/// `choice`: none (half the time), a sticky server (required or preferred), allowed
/// transports with short timeouts, or closing when authentication expires. Signed once per
/// thread and kept.
fn policy_token(hub: &str, choice: u8) -> String {
    let claims: Vec<(&str, String)> = match choice % 8 {
        0..=3 => return token("/client/", hub, Some("u"), 3600, KEY),
        4 => vec![
            ("asrs.s.sn", "app-1".into()),
            ("asrs.s.ssticky", "Required".into()),
        ],
        5 => vec![
            ("asrs.s.sn", "app-2".into()),
            ("asrs.s.ssticky", "Preferred".into()),
        ],
        6 => vec![
            ("asrs.s.htt", (1 + (choice >> 3) % 7).to_string()),
            ("asrs.s.cht", "2".into()),
            ("asrs.s.ttl", "3".into()),
        ],
        _ => vec![
            ("asrs.s.coae", "true".into()),
            (
                "asrs.s.aeo",
                (crate::relay::sim::T0 + u64::from(choice >> 3) * 20).to_string(),
            ),
        ],
    };
    thread_local! {
        static SIGNED: std::cell::RefCell<BTreeMap<String, String>> =
            const { std::cell::RefCell::new(BTreeMap::new()) };
    }
    let key = format!("{hub}{claims:?}");
    if let Some(t) = SIGNED.with_borrow(|s| s.get(&key).cloned()) {
        return t;
    }
    let mut c = crate::auth::Claims::issued_at(crate::relay::sim::T0, 3600);
    c.aud.push(format!("http://localhost/client/?hub={hub}"));
    c.nameid = Some("u".into());
    for (name, value) in claims {
        c.insert(name, value);
    }
    let signed = crate::auth::sign(&c, KEY.as_bytes(), crate::auth::Algorithm::Hs256);
    SIGNED.with_borrow_mut(|s| s.insert(key, signed.clone()));
    signed
}
