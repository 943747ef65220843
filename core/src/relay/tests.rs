//! Deterministic tests of the relay on a virtual clock: no sockets, no sleeping.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::auth::{sign, Algorithm, Claims};
use crate::service::{ServiceDecoder, ServiceMessage};

const KEY: &str = "relay-test-key";
const T0: u64 = 1_700_000_000;

fn token(path: &str, hub: &str, user: Option<&str>, lifetime: u64, key: &str) -> String {
    let mut claims = Claims::issued_at(T0, lifetime);
    claims.aud.push(format!("http://localhost{path}?hub={hub}"));
    claims.nameid = user.map(str::to_owned);
    sign(&claims, key.as_bytes(), Algorithm::Hs256)
}

fn request(
    method: &str,
    path: &str,
    query: &str,
    bearer: Option<&str>,
    websocket: bool,
) -> HttpRequest {
    let mut headers = vec![("Host".to_owned(), "localhost:8080".to_owned())];
    if let Some(t) = bearer {
        headers.push(("Authorization".to_owned(), format!("Bearer {t}")));
    }
    HttpRequest {
        method: method.into(),
        path: path.into(),
        query: query.into(),
        headers,
        websocket,
        body: Bytes::new(),
    }
}

/// A relay plus everything it has sent, decoded per connection.
struct Sim {
    relay: Relay,
    now: Instant,
    /// Service messages each server connection received.
    to_server: BTreeMap<ConnHandle, Vec<ServiceMessage>>,
    server_decoders: BTreeMap<ConnHandle, ServiceDecoder>,
    /// Raw WebSocket messages each client received.
    to_client: BTreeMap<ConnHandle, Vec<(Bytes, bool)>>,
    closed: BTreeMap<ConnHandle, Vec<(u16, String)>>,
    /// Answers to held requests.
    responses: BTreeMap<RequestId, HttpResponse>,
}

impl Sim {
    fn new() -> Self {
        let config = RelayConfig {
            access_keys: vec![KEY.to_owned()],
            ..RelayConfig::default()
        };
        // The virtual clock's epoch; from here on time only moves when the test says so.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        Self {
            relay: Relay::new(config, now, T0, [42; 32]),
            now,
            to_server: BTreeMap::new(),
            server_decoders: BTreeMap::new(),
            to_client: BTreeMap::new(),
            closed: BTreeMap::new(),
            responses: BTreeMap::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.relay.poll_output() {
            match out {
                Output::Transmit { conn, data, binary } => {
                    if let Some(d) = self.server_decoders.get_mut(&conn) {
                        assert!(binary, "service messages go in binary frames");
                        d.push(&data);
                        while let Some(m) = d.next_message().unwrap() {
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
                    self.closed.entry(conn).or_default().push((code, reason));
                }
            }
        }
    }

    fn advance(&mut self, by: Duration) {
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

    fn handle(&mut self, req: &HttpRequest) -> RequestOutcome {
        let outcome = self.relay.handle_request(self.now, req);
        self.drain();
        outcome
    }

    fn data(&mut self, conn: ConnHandle, bytes: &[u8]) {
        self.relay.handle_data(self.now, conn, bytes);
        self.drain();
    }

    fn closed_by_peer(&mut self, conn: ConnHandle) {
        self.relay.handle_closed(self.now, conn);
        self.drain();
    }

    fn send_service(&mut self, server: ConnHandle, msg: &ServiceMessage) {
        let mut out = Vec::new();
        msg.write(&mut out).unwrap();
        self.data(server, &out);
    }

    fn connect_server(&mut self, hub: &str, server_id: &str) -> ConnHandle {
        let mut req = request(
            "GET",
            "/server/",
            &format!("hub={hub}"),
            Some(&token("/server/", hub, Some(server_id), 3600, KEY)),
            true,
        );
        req.headers
            .push(("X-ASRS-Server-Id".into(), server_id.into()));
        let RequestOutcome::AcceptWebSocket(h) = self.handle(&req) else {
            panic!("server refused")
        };
        self.server_decoders.insert(h, ServiceDecoder::default());
        self.send_service(
            h,
            &ServiceMessage::HandshakeRequest(service::HandshakeRequest::default()),
        );
        let first = &self.to_server[&h][0];
        assert!(
            matches!(first, ServiceMessage::HandshakeResponse(r) if r.error_message.is_empty()),
            "{first:?}"
        );
        h
    }

    fn negotiate(&mut self, hub: &str, user: Option<&str>) -> Result<String, HttpResponse> {
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
                    Ok(NegotiateResponse::Connection(c)) => Ok(c.connection_token.unwrap()),
                    _ => Err(r),
                }
            }
            RequestOutcome::Respond(r) => Err(r),
            other => panic!("{other:?}"),
        }
    }

    /// Negotiates, opens the WebSocket and sends the handshake. Returns the client's handle
    /// and its connection id as the app server sees it.
    fn connect_client(
        &mut self,
        hub: &str,
        user: Option<&str>,
        protocol: &str,
    ) -> (ConnHandle, String) {
        let id = self.negotiate(hub, user).unwrap();
        let req = request(
            "GET",
            "/client/",
            &format!("hub={hub}&id={id}"),
            Some(&token("/client/", hub, user, 3600, KEY)),
            true,
        );
        let RequestOutcome::AcceptWebSocket(h) = self.handle(&req) else {
            panic!("client refused")
        };
        self.data(
            h,
            format!("{{\"protocol\":\"{protocol}\",\"version\":1}}\x1e").as_bytes(),
        );
        let connection_id = self.relay.clients[&h].connection_id.clone();
        (h, connection_id)
    }

    fn server_of(&self, client: ConnHandle) -> ConnHandle {
        match &self.relay.clients[&client].state {
            ClientState::Open { server, .. } => *server,
            other => panic!("{other:?}"),
        }
    }

    /// The app server answers the handshake on the client's own flow.
    fn accept_handshake(&mut self, client: ConnHandle, connection_id: &str) {
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

    fn client_text(&self, client: ConnHandle) -> String {
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

fn json_payloads(text: &str) -> service::Payloads {
    service::Payloads(vec![("json".into(), Bytes::from(format!("{text}\x1e")))])
}

#[test]
fn negotiate_checks_the_token() {
    let mut sim = Sim::new();
    sim.connect_server("chat", "app-1");
    let status = |sim: &mut Sim, bearer: Option<String>| match sim.handle(&request(
        "POST",
        "/client/negotiate",
        "hub=chat&negotiateVersion=1",
        bearer.as_deref(),
        false,
    )) {
        RequestOutcome::Respond(r) => (r.status, String::from_utf8_lossy(&r.body).into_owned()),
        other => panic!("{other:?}"),
    };
    let (code, body) = status(&mut sim, None);
    assert_eq!(code, 401, "{body}");
    let (code, body) = status(
        &mut sim,
        Some(token("/client/", "chat", None, 3600, "wrong-key")),
    );
    assert_eq!((code, body.contains("signature")), (401, true), "{body}");
    let mut expired = Claims::issued_at(T0 - 7200, 3600);
    expired.aud.push("http://localhost/client/?hub=chat".into());
    let (code, body) = status(
        &mut sim,
        Some(sign(&expired, KEY.as_bytes(), Algorithm::Hs256)),
    );
    assert_eq!((code, body.contains("expired")), (401, true), "{body}");
    let (code, body) = status(&mut sim, Some(token("/server/", "chat", None, 3600, KEY)));
    assert_eq!((code, body.contains("audience")), (401, true), "{body}");
    let (code, body) = status(&mut sim, Some(token("/client/", "other", None, 3600, KEY)));
    assert_eq!((code, body.contains("audience")), (401, true), "{body}");
    let (code, _) = status(&mut sim, Some(token("/client/", "chat", None, 3600, KEY)));
    assert_eq!(code, 200);
}

#[test]
fn negotiate_without_an_app_server_is_a_clear_error() {
    let mut sim = Sim::new();
    let err = sim.negotiate("lonely", None).unwrap_err();
    assert_eq!(err.status, 200);
    let NegotiateResponse::Error(text) = NegotiateResponse::parse(&err.body).unwrap() else {
        panic!()
    };
    assert!(
        text.contains("No app server is connected for hub 'lonely'"),
        "{text}"
    );
}

#[test]
fn a_bad_server_token_is_refused_at_upgrade() {
    let mut sim = Sim::new();
    let req = request(
        "GET",
        "/server/",
        "hub=chat",
        Some(&token("/server/", "chat", Some("s"), 3600, "nope")),
        true,
    );
    assert!(matches!(
        sim.handle(&req),
        RequestOutcome::Respond(HttpResponse { status: 401, .. })
    ));
    let req = request(
        "GET",
        "/server/",
        "hub=chat",
        Some(&token("/client/", "chat", Some("s"), 3600, KEY)),
        true,
    );
    assert!(matches!(
        sim.handle(&req),
        RequestOutcome::Respond(HttpResponse { status: 401, .. })
    ));
}

#[test]
fn unknown_connection_ids_are_404() {
    let mut sim = Sim::new();
    sim.connect_server("chat", "app-1");
    let req = request(
        "GET",
        "/client/",
        "hub=chat&id=nope",
        Some(&token("/client/", "chat", None, 3600, KEY)),
        true,
    );
    assert!(matches!(
        sim.handle(&req),
        RequestOutcome::Respond(HttpResponse { status: 404, .. })
    ));
}

#[test]
fn a_client_is_mapped_once_and_data_flows_both_ways() {
    let mut sim = Sim::new();
    let server = sim.connect_server("chat", "app-1");
    let (client, id) = sim.connect_client("chat", Some("alice"), "json");
    let msgs = &sim.to_server[&server];
    let ServiceMessage::OpenConnection(open) = &msgs[1] else {
        panic!("{msgs:?}")
    };
    assert_eq!(open.connection_id, id);
    assert_eq!(open.ext.protocol.as_deref(), Some("json"));
    assert!(open
        .claims
        .iter()
        .any(|(k, v)| k.ends_with("nameidentifier") && v == "alice"));
    assert!(!open.query_string.contains("access_token"));
    assert!(!open
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization")));
    let ServiceMessage::ConnectionData(hs) = &msgs[2] else {
        panic!()
    };
    assert_eq!(
        &hs.payload[..],
        b"{\"protocol\":\"json\",\"version\":1}\x1e"
    );

    // Server → client, split mid-frame: the client only ever sees whole frames.
    let chunks: [&[u8]; 3] = [
        b"{}\x1e{\"type\":1,\"tar",
        b"get\":\"x\",\"arguments\":[]}\x1e{\"ty",
        b"pe\":6}\x1e",
    ];
    for c in chunks {
        sim.send_service(
            server,
            &ServiceMessage::ConnectionData(service::ConnectionData {
                connection_id: id.clone(),
                payload: Bytes::copy_from_slice(c),
                ext: service::Ext::default(),
            }),
        );
    }
    let got = &sim.to_client[&client];
    assert!(got
        .iter()
        .all(|(d, binary)| !binary && d.last() == Some(&0x1e)));
    assert_eq!(
        sim.client_text(client),
        "{}\x1e{\"type\":1,\"target\":\"x\",\"arguments\":[]}\x1e{\"type\":6}\x1e"
    );

    // Client → server, two messages in one WebSocket message plus a partial one.
    sim.data(
        client,
        b"{\"type\":6}\x1e{\"type\":1,\"target\":\"Echo\",\"arguments\":[1]}\x1e{\"type\"",
    );
    let ServiceMessage::ConnectionData(d) = sim.to_server[&server].last().unwrap() else {
        panic!()
    };
    assert_eq!(
        &d.payload[..],
        b"{\"type\":6}\x1e{\"type\":1,\"target\":\"Echo\",\"arguments\":[1]}\x1e"
    );

    // The client leaves: the app server is told once.
    sim.closed_by_peer(client);
    let closes = sim.to_server[&server]
        .iter()
        .filter(|m| matches!(m, ServiceMessage::CloseConnection(c) if c.connection_id == id))
        .count();
    assert_eq!(closes, 1);
    assert!(
        !sim.closed.contains_key(&client),
        "no Close output for a connection the peer closed"
    );
    assert_eq!(sim.relay.client_count(), 0);
}

#[test]
fn msgpack_clients_get_binary_frames_after_a_text_handshake_response() {
    let mut sim = Sim::new();
    let server = sim.connect_server("chat", "app-1");
    let (client, id) = sim.connect_client("chat", None, "messagepack");
    sim.send_service(
        server,
        &ServiceMessage::ConnectionData(service::ConnectionData {
            connection_id: id.clone(),
            payload: Bytes::from_static(b"{}\x1e\x02\x91\x06\x06\x94\x02\x80"),
            ext: service::Ext::default(),
        }),
    );
    sim.send_service(
        server,
        &ServiceMessage::ConnectionData(service::ConnectionData {
            connection_id: id,
            payload: Bytes::from_static(b"\xa11\x00"),
            ext: service::Ext::default(),
        }),
    );
    let got = &sim.to_client[&client];
    assert_eq!(got.len(), 2);
    assert_eq!(&got[0].0[..], b"{}\x1e\x02\x91\x06");
    assert_eq!(&got[1].0[..], b"\x06\x94\x02\x80\xa11\x00");
    assert!(got.iter().all(|(_, binary)| *binary));
    // A client → server msgpack frame split across WebSocket messages is forwarded whole.
    sim.data(client, b"\x02\x91");
    sim.data(client, b"\x06");
    let ServiceMessage::ConnectionData(d) = sim.to_server[&server].last().unwrap() else {
        panic!()
    };
    assert_eq!(&d.payload[..], b"\x02\x91\x06");
}

#[test]
fn clients_spread_over_server_connections_least_loaded_first() {
    let mut sim = Sim::new();
    let servers: Vec<ConnHandle> = (0..5)
        .map(|_| sim.connect_server("chat", "app-1"))
        .collect();
    let clients: Vec<ConnHandle> = (0..50)
        .map(|_| sim.connect_client("chat", None, "json").0)
        .collect();
    for s in &servers {
        assert_eq!(sim.relay.servers[s].clients.len(), 10);
    }
    for c in clients {
        assert!(servers.contains(&sim.server_of(c)));
    }
}

#[test]
fn multicast_reaches_the_right_clients_after_their_handshake() {
    let mut sim = Sim::new();
    let server = sim.connect_server("chat", "app-1");
    let (a, a_id) = sim.connect_client("chat", Some("alice"), "json");
    let (b, b_id) = sim.connect_client("chat", Some("bob"), "json");
    let (c, c_id) = sim.connect_client("chat", Some("alice"), "json");
    // b has not been answered yet: its broadcast waits for the handshake response.
    sim.accept_handshake(a, &a_id);
    sim.accept_handshake(c, &c_id);
    let bcast = |text: &str, excluded: Vec<String>| {
        ServiceMessage::BroadcastData(service::BroadcastData {
            excluded_connection_ids: excluded,
            payloads: json_payloads(text),
            ext: service::Ext::default(),
        })
    };
    sim.send_service(
        server,
        &bcast(
            "{\"type\":1,\"target\":\"all\",\"arguments\":[]}",
            vec![c_id.clone()],
        ),
    );
    assert!(sim.client_text(a).contains("\"all\""));
    assert!(!sim.client_text(c).contains("\"all\""), "excluded");
    assert!(
        sim.client_text(b).is_empty(),
        "held until the handshake response"
    );
    sim.accept_handshake(b, &b_id);
    assert_eq!(
        sim.client_text(b),
        "{}\x1e{\"type\":1,\"target\":\"all\",\"arguments\":[]}\x1e"
    );

    // Users: alice has two connections.
    sim.send_service(
        server,
        &ServiceMessage::UserData(service::UserData {
            user_id: "alice".into(),
            payloads: json_payloads("{\"type\":1,\"target\":\"u\",\"arguments\":[]}"),
            ext: service::Ext::default(),
        }),
    );
    assert!(sim.client_text(a).contains("\"u\"") && sim.client_text(c).contains("\"u\""));
    assert!(!sim.client_text(b).contains("\"u\""));

    // Groups, with an ack.
    sim.send_service(
        server,
        &ServiceMessage::JoinGroupWithAck(service::GroupMembershipWithAck {
            connection_id: b_id.clone(),
            group: Some("g".into()),
            ack_id: 7,
            ext: service::Ext::default(),
        }),
    );
    assert!(
        matches!(sim.to_server[&server].last(), Some(ServiceMessage::Ack(ack)) if ack.ack_id == 7 && ack.status == service::AckStatus::Ok)
    );
    sim.send_service(
        server,
        &ServiceMessage::JoinGroup(service::GroupMembership {
            connection_id: a_id.clone(),
            group: "g".into(),
            ext: service::Ext::default(),
        }),
    );
    sim.send_service(
        server,
        &ServiceMessage::GroupBroadcastData(service::GroupBroadcastData {
            group: "g".into(),
            excluded_connection_ids: vec![a_id.clone()],
            payloads: json_payloads("{\"type\":1,\"target\":\"grp\",\"arguments\":[]}"),
            ..service::GroupBroadcastData::default()
        }),
    );
    assert!(sim.client_text(b).contains("\"grp\""));
    assert!(!sim.client_text(a).contains("\"grp\"") && !sim.client_text(c).contains("\"grp\""));
    // Ack for an unknown connection is NotFound.
    sim.send_service(
        server,
        &ServiceMessage::CheckConnectionExistenceWithAck(service::ExistenceCheck {
            id: "nope".into(),
            ack_id: 8,
            ext: service::Ext::default(),
        }),
    );
    assert!(
        matches!(sim.to_server[&server].last(), Some(ServiceMessage::Ack(ack)) if ack.ack_id == 8 && ack.status == service::AckStatus::NotFound)
    );
}

#[test]
fn a_dropped_server_connection_closes_only_its_clients_with_a_reason() {
    let mut sim = Sim::new();
    let s1 = sim.connect_server("chat", "app-1");
    let s2 = sim.connect_server("chat", "app-1");
    let (c1, id1) = sim.connect_client("chat", None, "json");
    let (c2, id2) = sim.connect_client("chat", None, "json");
    sim.accept_handshake(c1, &id1);
    sim.accept_handshake(c2, &id2);
    let victim = sim.server_of(c1);
    let survivor = if victim == s1 { s2 } else { s1 };
    assert_eq!(sim.server_of(c2), survivor);
    sim.closed_by_peer(victim);
    let text = sim.client_text(c1);
    assert!(
        text.contains("\"type\":7")
            && text.contains("ServerOffline")
            && text.contains("\"allowReconnect\":true"),
        "{text}"
    );
    assert_eq!(sim.closed[&c1].len(), 1);
    assert!(!sim.closed.contains_key(&c2));
    assert!(!sim.closed.contains_key(&victim), "the peer closed it");
    // The survivor's client still works, and new clients go to the survivor.
    sim.data(c2, b"{\"type\":6}\x1e");
    assert!(
        matches!(sim.to_server[&survivor].last(), Some(ServiceMessage::ConnectionData(d)) if d.connection_id == id2)
    );
    let (c3, _) = sim.connect_client("chat", None, "json");
    assert_eq!(sim.server_of(c3), survivor);
}

#[test]
fn garbage_on_a_server_connection_closes_only_it() {
    let mut sim = Sim::new();
    let s1 = sim.connect_server("chat", "app-1");
    let s2 = sim.connect_server("chat", "app-1");
    let (c1, _) = sim.connect_client("chat", None, "json");
    let (c2, _) = sim.connect_client("chat", None, "json");
    let bad = sim.server_of(c1);
    sim.data(bad, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(sim.closed[&bad].len(), 1);
    assert_eq!(sim.closed[&bad][0].0, 1011);
    assert!(sim.closed.contains_key(&c1));
    assert!(!sim.closed.contains_key(&c2));
    assert_eq!(sim.relay.server_connection_count(), 1);
    let _ = (s1, s2);
}

#[test]
fn bad_handshakes_get_the_handshake_error_and_a_close() {
    let mut sim = Sim::new();
    sim.connect_server("chat", "app-1");
    let open_ws = |sim: &mut Sim| {
        let id = sim.negotiate("chat", None).unwrap();
        let req = request(
            "GET",
            "/client/",
            &format!("hub=chat&id={id}"),
            Some(&token("/client/", "chat", None, 3600, KEY)),
            true,
        );
        let RequestOutcome::AcceptWebSocket(h) = sim.handle(&req) else {
            panic!()
        };
        h
    };
    for (input, expected) in [
        (
            &b"{\"protocol\":\"xml\",\"version\":1}\x1e"[..],
            "The protocol 'xml' is not supported.",
        ),
        (
            b"{\"protocol\":\"json\",\"version\":9}\x1e",
            "The server does not support version 9 of the 'json' protocol.",
        ),
        (
            b"not json\x1e",
            "An unexpected error occurred during connection handshake.",
        ),
    ] {
        let h = open_ws(&mut sim);
        sim.data(h, input);
        assert_eq!(
            sim.client_text(h),
            format!("{{\"error\":\"{expected}\"}}\x1e")
        );
        assert_eq!(sim.closed[&h].len(), 1);
    }
    // Oversized handshake.
    let h = open_ws(&mut sim);
    sim.data(h, &vec![b' '; 40 * 1024]);
    assert!(sim.client_text(h).contains("Handshake was canceled."));
    // No handshake at all within the timeout.
    let h = open_ws(&mut sim);
    sim.advance(Duration::from_secs(16));
    assert!(sim.client_text(h).contains("Handshake was canceled."));
    assert_eq!(sim.closed[&h].len(), 1);
}

#[test]
fn an_oversized_client_message_closes_the_client_with_an_error() {
    let mut sim = Sim::new();
    let server = sim.connect_server("chat", "app-1");
    let (c, id) = sim.connect_client("chat", None, "json");
    sim.accept_handshake(c, &id);
    let mut big = vec![b'x'; 40 * 1024];
    big.push(0x1e);
    sim.data(c, &big);
    let text = sim.client_text(c);
    assert!(
        text.contains("\"type\":7") && text.contains("maximum size"),
        "{text}"
    );
    assert_eq!(sim.closed[&c].len(), 1);
    assert!(sim.to_server[&server]
        .iter()
        .any(|m| matches!(m, ServiceMessage::CloseConnection(cc) if cc.connection_id == id)));
}

#[test]
fn timers_reap_idle_negotiations_silent_clients_and_silent_servers() {
    let mut sim = Sim::new();
    let server = sim.connect_server("chat", "app-1");
    let _never_used = sim.negotiate("chat", None).unwrap();
    let (c, id) = sim.connect_client("chat", None, "json");
    sim.accept_handshake(c, &id);
    assert_eq!(sim.relay.client_count(), 2);
    // The server keeps talking; the client says nothing.
    for _ in 0..7 {
        sim.advance(Duration::from_secs(5));
        sim.send_service(server, &ServiceMessage::Ping(service::Ping::default()));
    }
    assert_eq!(sim.relay.client_count(), 0);
    let text = sim.client_text(c);
    assert!(text.contains("ClientTimeoutInterval"));
    // Before giving up at 30 s, the relay pinged the client at 15 s.
    assert_eq!(text.matches("{\"type\":6}").count(), 1, "{text}");
    // The relay pinged the server every 5 s.
    let pings = sim.to_server[&server]
        .iter()
        .filter(|m| matches!(m, ServiceMessage::Ping(p) if p.messages.is_empty()))
        .count();
    assert!((6..=8).contains(&pings), "{pings} pings");
    // Now the server goes silent too.
    sim.advance(Duration::from_secs(31));
    assert_eq!(sim.relay.server_connection_count(), 0);
    assert_eq!(sim.closed[&server].len(), 1);
}

#[test]
fn server_pings_are_answered() {
    let mut sim = Sim::new();
    let server = sim.connect_server("chat", "app-1");
    sim.send_service(
        server,
        &ServiceMessage::Ping(service::Ping::pairs([("echo", "42")])),
    );
    assert_eq!(
        sim.to_server[&server].last(),
        Some(&ServiceMessage::Ping(service::Ping::pairs([(
            "echo", "42"
        )])))
    );
    sim.send_service(
        server,
        &ServiceMessage::Ping(service::Ping::pairs([("status", "1")])),
    );
    assert_eq!(
        sim.to_server[&server].last(),
        Some(&ServiceMessage::Ping(service::Ping::pairs([(
            "status", "0"
        )])))
    );
    sim.send_service(
        server,
        &ServiceMessage::Ping(service::Ping::pairs([("shutdown", "fin:2")])),
    );
    assert_eq!(
        sim.to_server[&server].last(),
        Some(&ServiceMessage::Ping(service::Ping::pairs([(
            "shutdown", "finack"
        )])))
    );
    // A draining app server gets no new clients.
    assert!(sim.negotiate("chat", None).is_err());
}

#[test]
fn the_relay_asks_a_busy_app_server_for_more_connections() {
    let mut sim = Sim::new();
    sim.relay.config.clients_per_server_connection = 3;
    let server = sim.connect_server("chat", "app-1");
    for _ in 0..3 {
        sim.connect_client("chat", None, "json");
    }
    let targets = sim.to_server[&server]
        .iter()
        .filter(|m| matches!(m, ServiceMessage::Ping(p) if p.get("target") == Some("relay-0")))
        .count();
    assert_eq!(targets, 1);
}

/// A small deterministic PRNG for the simulation (no hidden randomness in tests either).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn simulation_thousand_clients_five_server_connections_with_drops_and_timeouts() {
    let mut sim = Sim::new();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut servers: Vec<ConnHandle> = (0..5)
        .map(|_| sim.connect_server("chat", "app-1"))
        .collect();
    let mut clients: Vec<(ConnHandle, String)> = Vec::new();
    let mut peer_closed: BTreeSet<ConnHandle> = BTreeSet::new();
    for round in 0..1000u32 {
        let (c, id) = sim.connect_client(
            "chat",
            Some(&format!("user{}", round % 37)),
            if round % 3 == 0 {
                "messagepack"
            } else {
                "json"
            },
        );
        clients.push((c, id.clone()));
        if rng.below(10) != 0 {
            sim.accept_handshake(c, &id);
        }
        match rng.below(100) {
            // A client leaves.
            0..=4 => {
                let (victim, _) = clients[rng.below(clients.len() as u64) as usize];
                if sim.relay.clients.contains_key(&victim) {
                    peer_closed.insert(victim);
                }
                sim.closed_by_peer(victim);
            }
            // A server connection drops and the app server reconnects it.
            5 => {
                let i = rng.below(servers.len() as u64) as usize;
                sim.closed_by_peer(servers[i]);
                servers[i] = sim.connect_server("chat", "app-1");
            }
            // Time passes, and the app servers keep their connections alive.
            6..=9 => {
                sim.advance(Duration::from_secs(rng.below(8) + 1));
                for &s in &servers {
                    sim.send_service(s, &ServiceMessage::Ping(service::Ping::default()));
                }
            }
            _ => {}
        }
        // Live clients keep pinging, most of the time.
        if round % 50 == 0 {
            let live: Vec<ConnHandle> = sim.relay.clients.keys().copied().collect();
            for c in live {
                if rng.below(20) != 0 {
                    sim.data(
                        c,
                        if sim.relay.clients[&c].state.is_msgpack() {
                            b"\x02\x91\x06"
                        } else {
                            b"{\"type\":6}\x1e"
                        },
                    );
                }
            }
        }
    }
    // Let every remaining client time out.
    for _ in 0..20 {
        sim.advance(Duration::from_secs(5));
        for &s in &servers {
            sim.send_service(s, &ServiceMessage::Ping(service::Ping::default()));
        }
    }
    assert_eq!(sim.relay.client_count(), 0, "every client is gone");

    // Every client was mapped exactly once (one OpenConnection across all servers) ...
    let mut opens: BTreeMap<&str, usize> = BTreeMap::new();
    for msgs in sim.to_server.values() {
        for m in msgs {
            if let ServiceMessage::OpenConnection(o) = m {
                *opens.entry(o.connection_id.as_str()).or_default() += 1;
            }
        }
    }
    assert_eq!(opens.len(), 1000);
    assert!(opens.values().all(|&n| n == 1));
    // ... and closed exactly once: by its peer, or by one Close output from the relay.
    for (c, _) in &clients {
        let relay_closes = sim.closed.get(c).map_or(0, Vec::len);
        let by_peer = usize::from(peer_closed.contains(c));
        assert_eq!(relay_closes + by_peer, 1, "client {c:?}");
    }
}

impl ClientState {
    fn is_msgpack(&self) -> bool {
        matches!(
            self,
            Self::Open {
                protocol: HubProtocol::MessagePack,
                ..
            }
        )
    }
}

#[test]
fn busy_clients_get_no_keep_alive_pings() {
    let mut sim = Sim::new();
    let server = sim.connect_server("chat", "app-1");
    let (c, id) = sim.connect_client("chat", None, "json");
    sim.accept_handshake(c, &id);
    for _ in 0..8 {
        sim.advance(Duration::from_secs(5));
        sim.send_service(server, &ServiceMessage::Ping(service::Ping::default()));
        sim.send_service(
            server,
            &ServiceMessage::ConnectionData(service::ConnectionData {
                connection_id: id.clone(),
                payload: Bytes::from_static(
                    b"{\"type\":1,\"target\":\"tick\",\"arguments\":[]}\x1e",
                ),
                ext: service::Ext::default(),
            }),
        );
        sim.data(c, b"{\"type\":6}\x1e");
    }
    let text = sim.client_text(c);
    assert_eq!(text.matches("\"tick\"").count(), 8);
    assert!(!text.contains("{\"type\":6}"), "{text}");
    assert_eq!(sim.relay.client_count(), 1);
}

/// An HTTP request on a negotiated connection (`id`), with the client's token.
fn on_connection(method: &str, id: &str, accept: Option<&str>, body: &[u8]) -> HttpRequest {
    let mut req = request(
        method,
        "/client/",
        &format!("hub=chat&id={id}"),
        Some(&token("/client/", "chat", None, 3600, KEY)),
        false,
    );
    if let Some(accept) = accept {
        req.headers.push(("Accept".into(), accept.into()));
    }
    req.body = Bytes::copy_from_slice(body);
    req
}

fn respond(outcome: RequestOutcome) -> HttpResponse {
    match outcome {
        RequestOutcome::Respond(r) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

#[test]
fn long_polling_end_to_end() {
    let mut sim = Sim::new();
    let server = sim.connect_server("chat", "app-1");
    let id = sim.negotiate("chat", None).unwrap();
    // The first poll returns at once, empty.
    let first = respond(sim.handle(&on_connection("GET", &id, None, b"")));
    assert_eq!((first.status, first.body.len()), (200, 0));
    // The handshake comes by POST.
    let sent = respond(sim.handle(&on_connection(
        "POST",
        &id,
        None,
        b"{\"protocol\":\"json\",\"version\":1}\x1e",
    )));
    assert_eq!(sent.status, 200);
    let opens: Vec<_> = sim.to_server[&server]
        .iter()
        .filter_map(|m| match m {
            ServiceMessage::OpenConnection(o) => Some(o.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(opens.len(), 1);
    assert!(opens[0]
        .headers
        .iter()
        .any(|(k, v)| k == "Asrs-Transport" && v == &["LongPolling".to_owned()]));
    let connection_id = opens[0].connection_id.clone();
    // A poll is held until the app server answers.
    let RequestOutcome::Pending(poll) = sim.handle(&on_connection("GET", &id, None, b"")) else {
        panic!()
    };
    sim.send_service(
        server,
        &ServiceMessage::ConnectionData(service::ConnectionData {
            connection_id: connection_id.clone(),
            payload: Bytes::from_static(b"{}\x1e"),
            ext: service::Ext::default(),
        }),
    );
    assert_eq!(&sim.responses[&poll].body[..], b"{}\x1e");
    // Messages sent between polls wait for the next poll, all together.
    for n in 0..3 {
        sim.send_service(
            server,
            &ServiceMessage::ConnectionData(service::ConnectionData {
                connection_id: connection_id.clone(),
                payload: Bytes::from(format!(
                    "{{\"type\":1,\"target\":\"m\",\"arguments\":[{n}]}}\x1e"
                )),
                ext: service::Ext::default(),
            }),
        );
    }
    let batch = respond(sim.handle(&on_connection("GET", &id, None, b"")));
    assert_eq!(
        String::from_utf8_lossy(&batch.body)
            .matches("\"target\":\"m\"")
            .count(),
        3
    );
    // A second concurrent poll supersedes the first (204).
    let RequestOutcome::Pending(a) = sim.handle(&on_connection("GET", &id, None, b"")) else {
        panic!()
    };
    let RequestOutcome::Pending(b) = sim.handle(&on_connection("GET", &id, None, b"")) else {
        panic!()
    };
    assert_eq!(sim.responses[&a].status, 204);
    // A held poll times out empty after 90 s, and the client is not dropped for it.
    for _ in 0..19 {
        sim.advance(Duration::from_secs(5));
        sim.send_service(server, &ServiceMessage::Ping(service::Ping::default()));
    }
    assert_eq!(
        (sim.responses[&b].status, sim.responses[&b].body.len()),
        (200, 0)
    );
    assert_eq!(sim.relay.client_count(), 1);
    // DELETE closes: 202, the app server is told, a later poll gets 204, a second DELETE 404.
    let deleted = respond(sim.handle(&on_connection("DELETE", &id, None, b"")));
    assert_eq!(deleted.status, 202);
    assert!(sim.to_server[&server].iter().any(
        |m| matches!(m, ServiceMessage::CloseConnection(c) if c.connection_id == connection_id)
    ));
    assert_eq!(
        respond(sim.handle(&on_connection("GET", &id, None, b""))).status,
        204
    );
    assert_eq!(
        respond(sim.handle(&on_connection("DELETE", &id, None, b""))).status,
        404
    );
    assert_eq!(
        respond(sim.handle(&on_connection("GET", "unknown", None, b""))).status,
        404
    );
}

#[test]
fn a_long_polling_client_that_stops_polling_is_disconnected() {
    let mut sim = Sim::new();
    let server = sim.connect_server("chat", "app-1");
    let id = sim.negotiate("chat", None).unwrap();
    respond(sim.handle(&on_connection("GET", &id, None, b"")));
    respond(sim.handle(&on_connection(
        "POST",
        &id,
        None,
        b"{\"protocol\":\"json\",\"version\":1}\x1e",
    )));
    for _ in 0..4 {
        sim.advance(Duration::from_secs(5));
        sim.send_service(server, &ServiceMessage::Ping(service::Ping::default()));
    }
    assert_eq!(sim.relay.client_count(), 0);
    assert!(sim.to_server[&server]
        .iter()
        .any(|m| matches!(m, ServiceMessage::CloseConnection(_))));
}

#[test]
fn a_long_polling_client_that_falls_behind_is_closed_with_a_reason() {
    let mut sim = Sim::new();
    let server = sim.connect_server("chat", "app-1");
    let bystander = sim.negotiate("chat", None).unwrap();
    let id = sim.negotiate("chat", None).unwrap();
    for id in [&bystander, &id] {
        respond(sim.handle(&on_connection("GET", id, None, b"")));
        respond(sim.handle(&on_connection(
            "POST",
            id,
            None,
            b"{\"protocol\":\"json\",\"version\":1}\x1e",
        )));
    }
    let ids: Vec<String> = sim.to_server[&server]
        .iter()
        .filter_map(|m| match m {
            ServiceMessage::OpenConnection(o) => Some(o.connection_id.clone()),
            _ => None,
        })
        .collect();
    let (bystander_id, slow_id) = (&ids[0], &ids[1]);
    server_sends(&mut sim, server, slow_id, "{}\x1e");
    // More than the 1 MiB buffer, in 64 KiB messages, with no poll to take them.
    let big = format!(
        "{{\"type\":1,\"target\":\"m\",\"arguments\":[\"{}\"]}}\x1e",
        "x".repeat(64 * 1024)
    );
    for _ in 0..20 {
        server_sends(&mut sim, server, slow_id, &big);
    }
    // The client is gone and its app server told; its next poll gets only the Close.
    assert_eq!(sim.relay.client_count(), 1);
    assert!(sim.to_server[&server]
        .iter()
        .any(|m| matches!(m, ServiceMessage::CloseConnection(c) if &c.connection_id == slow_id)));
    let last = respond(sim.handle(&on_connection("GET", &id, None, b"")));
    let body = String::from_utf8_lossy(&last.body);
    assert!(
        body.starts_with("{\"type\":7,\"error\":\"The client did not poll fast enough"),
        "{body}"
    );
    assert!(!body.contains("\"target\":\"m\""));
    // The other client is untouched.
    server_sends(&mut sim, server, bystander_id, "{}\x1e");
    let poll = respond(sim.handle(&on_connection("GET", &bystander, None, b"")));
    assert_eq!(&poll.body[..], b"{}\x1e");
}

#[test]
fn long_poll_bad_input() {
    let mut sim = Sim::new();
    sim.connect_server("chat", "app-1");
    let id = sim.negotiate("chat", None).unwrap();
    // No id.
    let mut no_id = on_connection("GET", &id, None, b"");
    no_id.query = "hub=chat".into();
    assert_eq!(respond(sim.handle(&no_id)).status, 400);
    // POST before any transport.
    assert_eq!(
        respond(sim.handle(&on_connection("POST", &id, None, b"x"))).status,
        400
    );
    respond(sim.handle(&on_connection("GET", &id, None, b"")));
    // An oversized POST: 413, and the client is closed.
    let big = vec![b'x'; 200 * 1024];
    assert_eq!(
        respond(sim.handle(&on_connection("POST", &id, None, &big))).status,
        413
    );
    assert_eq!(sim.relay.client_count(), 0);
    // Another client over WebSockets: POST is not allowed, nor a switch to long polling.
    let (ws, _) = sim.connect_client("chat", None, "json");
    let ws_token = sim.relay.clients[&ws].token.clone();
    assert_eq!(
        respond(sim.handle(&on_connection("POST", &ws_token, None, b"{}"))).status,
        405
    );
    assert_eq!(
        respond(sim.handle(&on_connection("GET", &ws_token, None, b""))).status,
        400
    );
    assert_eq!(
        respond(sim.handle(&on_connection("DELETE", &ws_token, None, b""))).status,
        400
    );
}

#[test]
fn server_sent_events_end_to_end() {
    let mut sim = Sim::new();
    let server = sim.connect_server("chat", "app-1");
    let id = sim.negotiate("chat", None).unwrap();
    let RequestOutcome::EventStream(conn) =
        sim.handle(&on_connection("GET", &id, Some("text/event-stream"), b""))
    else {
        panic!()
    };
    assert_eq!(sim.client_text(conn), ":\r\n");
    // A second stream for the same connection is refused.
    assert_eq!(
        respond(sim.handle(&on_connection("GET", &id, Some("text/event-stream"), b""))).status,
        409
    );
    respond(sim.handle(&on_connection(
        "POST",
        &id,
        None,
        b"{\"protocol\":\"json\",\"version\":1}\x1e",
    )));
    let connection_id = sim.relay.clients[&conn].connection_id.clone();
    sim.send_service(
        server,
        &ServiceMessage::ConnectionData(service::ConnectionData {
            connection_id,
            payload: Bytes::from_static(
                b"{}\x1e{\"type\":1,\"target\":\"x\",\"arguments\":[]}\x1e",
            ),
            ext: service::Ext::default(),
        }),
    );
    assert_eq!(
        sim.client_text(conn),
        ":\r\ndata: {}\x1e{\"type\":1,\"target\":\"x\",\"arguments\":[]}\x1e\r\n\r\n"
    );
    // The client leaves by dropping the stream.
    sim.closed_by_peer(conn);
    assert!(sim.to_server[&server]
        .iter()
        .any(|m| matches!(m, ServiceMessage::CloseConnection(_))));
}

#[test]
fn messagepack_is_refused_over_server_sent_events() {
    let mut sim = Sim::new();
    sim.connect_server("chat", "app-1");
    let id = sim.negotiate("chat", None).unwrap();
    let RequestOutcome::EventStream(conn) =
        sim.handle(&on_connection("GET", &id, Some("text/event-stream"), b""))
    else {
        panic!()
    };
    respond(sim.handle(&on_connection(
        "POST",
        &id,
        None,
        b"{\"protocol\":\"messagepack\",\"version\":1}\x1e",
    )));
    assert!(sim
        .client_text(conn)
        .contains("Cannot use the 'messagepack' protocol on the current transport."));
    assert_eq!(sim.closed[&conn].len(), 1);
}

/// Negotiates a stateful-reconnect client for `chat`, connects its WebSocket and sends the
/// version 2 handshake. Returns the client and its WebSocket request (to reconnect with).
fn connect_stateful(sim: &mut Sim) -> (ConnHandle, HttpRequest) {
    let bearer = token("/client/", "chat", None, 3600, KEY);
    let req = request(
        "POST",
        "/client/negotiate",
        "hub=chat&negotiateVersion=1&useStatefulReconnect=true",
        Some(&bearer),
        false,
    );
    let RequestOutcome::Respond(r) = sim.handle(&req) else {
        panic!()
    };
    let NegotiateResponse::Connection(info) = NegotiateResponse::parse(&r.body).unwrap() else {
        panic!()
    };
    assert!(info.use_stateful_reconnect);
    let id = info.connection_token.unwrap();
    let ws = request(
        "GET",
        "/client/",
        &format!("hub=chat&id={id}"),
        Some(&bearer),
        true,
    );
    let RequestOutcome::AcceptWebSocket(c) = sim.handle(&ws) else {
        panic!()
    };
    sim.data(c, b"{\"protocol\":\"json\",\"version\":2}\x1e");
    (c, ws)
}

/// Sends `text` (whole frames) from the app server to the client `connection_id`.
fn server_sends(sim: &mut Sim, server: ConnHandle, connection_id: &str, text: &str) {
    sim.send_service(
        server,
        &ServiceMessage::ConnectionData(service::ConnectionData {
            connection_id: connection_id.to_owned(),
            payload: Bytes::from(text.to_owned()),
            ext: service::Ext::default(),
        }),
    );
}

#[test]
fn stateful_output_waits_for_the_clients_first_frame_after_the_handshake() {
    let mut sim = Sim::new();
    let server = sim.connect_server("chat", "app-1");
    let (c, _) = connect_stateful(&mut sim);
    let id = sim.relay.clients[&c].connection_id.clone();
    // The handshake response and a welcome arrive together: only the response goes out.
    server_sends(
        &mut sim,
        server,
        &id,
        "{}\x1e{\"type\":1,\"target\":\"welcome\",\"arguments\":[]}\x1e",
    );
    server_sends(
        &mut sim,
        server,
        &id,
        "{\"type\":1,\"target\":\"m\",\"arguments\":[1]}\x1e",
    );
    assert_eq!(sim.client_text(c), "{}\x1e");
    // The client's first frame (the JavaScript client's ping) releases them, as one message.
    sim.data(c, b"{\"type\":6}\x1e");
    assert_eq!(sim.to_client[&c].len(), 2);
    assert_eq!(
        sim.client_text(c),
        "{}\x1e{\"type\":1,\"target\":\"welcome\",\"arguments\":[]}\x1e{\"type\":1,\"target\":\"m\",\"arguments\":[1]}\x1e"
    );
    // From then on, output flows at once.
    server_sends(
        &mut sim,
        server,
        &id,
        "{\"type\":1,\"target\":\"m\",\"arguments\":[2]}\x1e",
    );
    assert!(sim.client_text(c).ends_with("[2]}\x1e"));

    // A client that never sends gets its messages after the gate's time, and a Close never
    // waits.
    let (quiet, _) = connect_stateful(&mut sim);
    let quiet_id = sim.relay.clients[&quiet].connection_id.clone();
    server_sends(
        &mut sim,
        server,
        &quiet_id,
        "{}\x1e{\"type\":1,\"target\":\"welcome\",\"arguments\":[]}\x1e",
    );
    assert_eq!(sim.client_text(quiet), "{}\x1e");
    sim.advance(Duration::from_millis(999));
    assert_eq!(sim.client_text(quiet), "{}\x1e");
    sim.advance(Duration::from_millis(2));
    assert!(sim
        .client_text(quiet)
        .ends_with("\"welcome\",\"arguments\":[]}\x1e"));
    let (closing, _) = connect_stateful(&mut sim);
    let closing_id = sim.relay.clients[&closing].connection_id.clone();
    server_sends(&mut sim, server, &closing_id, "{}\x1e{\"type\":1,\"target\":\"bye\",\"arguments\":[]}\x1e{\"type\":7,\"error\":\"done\"}\x1e");
    assert_eq!(
        sim.client_text(closing),
        "{}\x1e{\"type\":1,\"target\":\"bye\",\"arguments\":[]}\x1e{\"type\":7,\"error\":\"done\"}\x1e"
    );
}

#[test]
fn a_stateful_reconnect_replaces_a_socket_the_relay_still_thinks_open() {
    let mut sim = Sim::new();
    let server = sim.connect_server("chat", "app-1");
    let (c, ws) = connect_stateful(&mut sim);
    let id = sim.relay.clients[&c].connection_id.clone();
    server_sends(&mut sim, server, &id, "{}\x1e");
    sim.data(c, b"{\"type\":6}\x1e");
    server_sends(
        &mut sim,
        server,
        &id,
        "{\"type\":1,\"target\":\"m\",\"arguments\":[1]}\x1e",
    );
    // The client's socket died, but the relay has not seen it yet: the client's new socket
    // takes over. The old one is closed, and the new one gets Sequence and the replay.
    let before = sim.to_client[&c].len();
    let RequestOutcome::AcceptWebSocket(back) = sim.handle(&ws) else {
        panic!("the reconnect was refused")
    };
    assert_eq!(back, c);
    assert_eq!(sim.closed[&c].len(), 1, "the old socket is closed");
    let replay: String = sim.to_client[&c][before..]
        .iter()
        .map(|(d, _)| String::from_utf8_lossy(d).into_owned())
        .collect();
    assert_eq!(
        replay,
        "{\"type\":9,\"sequenceId\":1}\x1e{\"type\":1,\"target\":\"m\",\"arguments\":[1]}\x1e"
    );
    assert!(!sim.to_server[&server]
        .iter()
        .any(|m| matches!(m, ServiceMessage::CloseConnection(_))));
    // Someone else's token cannot take the connection over.
    let other = token("/client/", "chat", Some("mallory"), 3600, KEY);
    let stolen = request(
        "GET",
        "/client/",
        &format!("hub=chat&id={}", ws.query_param("id").unwrap()),
        Some(&other),
        true,
    );
    assert_eq!(respond(sim.handle(&stolen)).status, 403);
}

#[test]
fn stateful_reconnect_resumes_without_loss_or_duplicates() {
    let mut sim = Sim::new();
    let server = sim.connect_server("chat", "app-1");
    let (c, ws) = connect_stateful(&mut sim);
    // The app server is told version 1: the relay handles the acks and sequences.
    let hs = sim.to_server[&server].iter().rev().find_map(|m| match m {
        ServiceMessage::ConnectionData(d) => Some(d.payload.clone()),
        _ => None,
    });
    assert_eq!(
        &hs.unwrap()[..],
        b"{\"protocol\":\"json\",\"version\":1}\x1e"
    );
    let connection_id = sim.relay.clients[&c].connection_id.clone();
    let send = |sim: &mut Sim, text: &str| {
        sim.send_service(
            server,
            &ServiceMessage::ConnectionData(service::ConnectionData {
                connection_id: connection_id.clone(),
                payload: Bytes::from(format!("{text}\x1e")),
                ext: service::Ext::default(),
            }),
        );
    };
    send(&mut sim, "{}");
    for n in 1..=3 {
        send(
            &mut sim,
            &format!("{{\"type\":1,\"target\":\"m\",\"arguments\":[{n}]}}"),
        );
    }
    // The client acks the first message, and sends one of its own.
    sim.data(c, b"{\"type\":8,\"sequenceId\":1}\x1e{\"type\":1,\"target\":\"Echo\",\"arguments\":[\"a\"]}\x1e");
    let forwarded = |sim: &Sim| -> Vec<String> {
        sim.to_server[&server]
            .iter()
            .filter_map(|m| match m {
                ServiceMessage::ConnectionData(d) if d.connection_id == connection_id => {
                    Some(String::from_utf8_lossy(&d.payload).into_owned())
                }
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        forwarded(&sim).last().unwrap(),
        "{\"type\":1,\"target\":\"Echo\",\"arguments\":[\"a\"]}\x1e",
        "the ack is not forwarded"
    );
    sim.advance(Duration::from_millis(1100));
    assert!(
        sim.client_text(c)
            .ends_with("{\"type\":8,\"sequenceId\":1}\x1e"),
        "the relay acks once a second"
    );
    // The socket drops mid-frame; the app server is not told, and messages for the client
    // are kept.
    sim.data(c, b"{\"type\":1,\"tar");
    sim.closed_by_peer(c);
    assert!(!sim.to_server[&server]
        .iter()
        .any(|m| matches!(m, ServiceMessage::CloseConnection(_))));
    send(&mut sim, "{\"type\":1,\"target\":\"m\",\"arguments\":[4]}");
    let before = sim.to_client[&c].len();
    // The client comes back on the same id: Sequence 2, then messages 2, 3 and 4 again.
    sim.advance(Duration::from_secs(2));
    let RequestOutcome::AcceptWebSocket(back) = sim.handle(&ws) else {
        panic!("reconnect refused")
    };
    assert_eq!(back, c);
    let replay: String = sim.to_client[&c][before..]
        .iter()
        .map(|(d, _)| String::from_utf8_lossy(d).into_owned())
        .collect();
    assert_eq!(replay, "{\"type\":9,\"sequenceId\":2}\x1e{\"type\":1,\"target\":\"m\",\"arguments\":[2]}\x1e{\"type\":1,\"target\":\"m\",\"arguments\":[3]}\x1e{\"type\":1,\"target\":\"m\",\"arguments\":[4]}\x1e");
    // The client replays its own message 1 (already forwarded) and sends a new one.
    let count = forwarded(&sim).len();
    sim.data(c, b"{\"type\":9,\"sequenceId\":1}\x1e{\"type\":1,\"target\":\"Echo\",\"arguments\":[\"a\"]}\x1e{\"type\":1,\"target\":\"Echo\",\"arguments\":[\"b\"]}\x1e");
    let after = forwarded(&sim);
    assert_eq!(after.len(), count + 1);
    assert_eq!(
        after.last().unwrap(),
        "{\"type\":1,\"target\":\"Echo\",\"arguments\":[\"b\"]}\x1e"
    );
    // A client that does not come back within the window is gone, and the app server is told.
    sim.closed_by_peer(c);
    for _ in 0..4 {
        sim.advance(Duration::from_secs(5));
        sim.send_service(server, &ServiceMessage::Ping(service::Ping::default()));
    }
    assert_eq!(sim.relay.client_count(), 0);
    assert!(sim.to_server[&server].iter().any(
        |m| matches!(m, ServiceMessage::CloseConnection(cc) if cc.connection_id == connection_id)
    ));
}

#[test]
fn client_results_are_routed_between_app_servers_only_when_needed() {
    let mut sim = Sim::new();
    let router = sim.connect_server("chat", "app-b");
    let (c, id) = sim.connect_client("chat", None, "json");
    sim.accept_handshake(c, &id);
    let caller = sim.connect_server("chat", "app-a");
    let invocation = |n: &str, server_id: &str| {
        ServiceMessage::ClientInvocation(service::ClientInvocation {
            invocation_id: n.to_owned(),
            connection_id: id.clone(),
            caller_server_id: server_id.to_owned(),
            payloads: json_payloads(&format!(
                "{{\"type\":1,\"invocationId\":\"{n}\",\"target\":\"ask\",\"arguments\":[]}}"
            )),
            ext: service::Ext::default(),
        })
    };
    // app-a asks app-b's client: the client gets the invocation, app-b is told to route it.
    sim.send_service(caller, &invocation("inv-1", "app-a"));
    assert!(sim.client_text(c).contains("\"invocationId\":\"inv-1\""));
    assert!(sim.to_server[&router]
        .iter()
        .any(|m| matches!(m, ServiceMessage::ClientInvocation(i) if i.invocation_id == "inv-1")));
    // app-b forwards the client's answer; the relay hands it to app-a.
    let completion = ServiceMessage::ClientCompletion(service::ClientCompletion {
        invocation_id: "inv-1".into(),
        connection_id: id.clone(),
        caller_server_id: "app-a".into(),
        protocol: "json".into(),
        payload: Bytes::from_static(b"{\"type\":3,\"invocationId\":\"inv-1\",\"result\":42}\x1e"),
        ext: service::Ext::default(),
    });
    sim.send_service(router, &completion);
    assert!(sim.to_server[&caller]
        .iter()
        .any(|m| matches!(m, ServiceMessage::ClientCompletion(cc) if cc.invocation_id == "inv-1")));
    // app-b asks its own client: nothing to route, nothing to forward.
    let before = sim.to_server[&router].len();
    sim.send_service(router, &invocation("inv-2", "app-b"));
    assert!(!sim.to_server[&router][before..]
        .iter()
        .any(|m| matches!(m, ServiceMessage::ClientInvocation(_))));
    // If the client leaves first, the caller gets an ErrorCompletion naming it.
    sim.send_service(caller, &invocation("inv-3", "app-a"));
    sim.closed_by_peer(c);
    assert!(sim.to_server[&caller].iter().any(|m| matches!(m, ServiceMessage::ErrorCompletion(e) if e.invocation_id == "inv-3" && e.connection_id == id)));
    // An unknown connection is an immediate ErrorCompletion.
    sim.send_service(caller, &invocation("inv-4", "app-a"));
    assert!(sim.to_server[&caller]
        .iter()
        .any(|m| matches!(m, ServiceMessage::ErrorCompletion(e) if e.invocation_id == "inv-4")));
}

#[test]
fn stateful_clients_survive_hostile_sequences_and_transport_switches() {
    let mut sim = Sim::new();
    let server = sim.connect_server("chat", "app-1");
    let (c, ws) = connect_stateful(&mut sim);
    let id = ws.query_param("id").unwrap();
    // A Sequence far in the future neither panics nor makes the relay drop what follows.
    sim.data(c, b"{\"type\":9,\"sequenceId\":18446744073709551615}\x1e{\"type\":1,\"target\":\"Echo\",\"arguments\":[1]}\x1e");
    assert!(
        matches!(sim.to_server[&server].last(), Some(ServiceMessage::ConnectionData(d)) if d.payload.ends_with(b"\"arguments\":[1]}\x1e"))
    );
    // Lost, the connection refuses other transports, and expires cleanly after the window.
    sim.closed_by_peer(c);
    assert_eq!(
        respond(sim.handle(&on_connection("GET", &id, None, b""))).status,
        400
    );
    assert_eq!(
        respond(sim.handle(&on_connection("GET", &id, Some("text/event-stream"), b""))).status,
        400
    );
    for _ in 0..4 {
        sim.advance(Duration::from_secs(5));
        sim.send_service(server, &ServiceMessage::Ping(service::Ping::default()));
    }
    assert_eq!(sim.relay.client_count(), 0);
    assert!(sim.to_server[&server]
        .iter()
        .any(|m| matches!(m, ServiceMessage::CloseConnection(_))));
}

#[test]
fn close_with_ack_targets_users_or_groups_as_asked() {
    let mut sim = Sim::new();
    let server = sim.connect_server("chat", "app-1");
    let (user_x, _) = sim.connect_client("chat", Some("x"), "json");
    let (member, member_id) = sim.connect_client("chat", Some("y"), "json");
    sim.send_service(
        server,
        &ServiceMessage::JoinGroup(service::GroupMembership {
            connection_id: member_id,
            group: "x".into(),
            ext: service::Ext::default(),
        }),
    );
    let close = |target: &str| service::CloseConnectionsWithAck {
        target: target.into(),
        ack_id: 1,
        ..service::CloseConnectionsWithAck::default()
    };
    sim.send_service(
        server,
        &ServiceMessage::CloseUserConnectionsWithAck(close("x")),
    );
    assert!(sim.closed.contains_key(&user_x));
    assert!(
        !sim.closed.contains_key(&member),
        "group 'x' is not user 'x'"
    );
    sim.send_service(
        server,
        &ServiceMessage::CloseGroupConnectionsWithAck(close("x")),
    );
    assert!(sim.closed.contains_key(&member));
}

#[test]
fn expired_user_group_memberships_are_swept() {
    let mut sim = Sim::new();
    let server = sim.connect_server("chat", "app-1");
    let join = |group: &str, ttl: Option<i32>| {
        ServiceMessage::UserJoinGroup(service::UserGroupMembership {
            user_id: "u".into(),
            group: Some(group.into()),
            ext: service::Ext {
                ttl,
                ..service::Ext::default()
            },
        })
    };
    sim.send_service(server, &join("short", Some(10)));
    sim.advance(Duration::from_secs(5));
    sim.send_service(server, &ServiceMessage::Ping(service::Ping::default()));
    sim.advance(Duration::from_secs(6));
    sim.send_service(server, &join("long", None));
    let groups: Vec<&String> = sim.relay.hubs["chat"].user_groups["u"].keys().collect();
    assert_eq!(groups, vec!["long"]);
}

fn classic_token(user: Option<&str>) -> String {
    let mut claims = Claims::issued_at(T0, 3600);
    claims.aud.push("http://localhost/aspnetclient".to_owned());
    claims.nameid = user.map(str::to_owned);
    sign(&claims, KEY.as_bytes(), Algorithm::Hs256)
}

const CHAT_DATA: &str = "connectionData=%5B%7B%22name%22%3A%22chat%22%7D%5D";

/// A classic request: `kind` under `/aspnetclient`, the connection's token and hub list in the
/// query, and a form body for POSTs.
fn classic(kind: &str, query: &str, token: Option<&str>, body: &str, ws: bool) -> HttpRequest {
    let method = if body.is_empty() && (ws || !matches!(kind, "poll" | "send" | "abort")) {
        "GET"
    } else {
        "POST"
    };
    let mut req = request(
        method,
        &format!("/aspnetclient/{kind}"),
        &format!("clientProtocol=2.1&{query}&{CHAT_DATA}"),
        Some(&classic_token(Some("alice"))),
        ws,
    );
    if let Some(t) = token {
        req.query
            .push_str(&format!("&connectionToken={}", urlencode(t)));
    }
    req.body = Bytes::copy_from_slice(body.as_bytes());
    req
}

/// A classic negotiate for `chat`: its response body.
fn classic_negotiate(sim: &mut Sim) -> serde_json::Value {
    let negotiate = respond(sim.handle(&classic("negotiate", "", None, "", false)));
    assert_eq!(negotiate.status, 200);
    serde_json::from_slice(&negotiate.body).unwrap()
}

/// A classic long-polling request on the connection with `token`.
fn long_poll(kind: &str, token: &str, body: &str) -> HttpRequest {
    classic(kind, "transport=longPolling", Some(token), body, false)
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn last_payload_to(sim: &Sim, server: ConnHandle) -> String {
    sim.to_server[&server]
        .iter()
        .rev()
        .find_map(|m| match m {
            ServiceMessage::ConnectionData(d) => {
                Some(String::from_utf8_lossy(&d.payload).into_owned())
            }
            _ => None,
        })
        .unwrap_or_default()
}

#[test]
fn classic_clients_poll_send_and_reconnect_through_the_relay() {
    let mut sim = Sim::new();
    let server = sim.connect_server("chat", "app-1");
    let body = classic_negotiate(&mut sim);
    assert_eq!(body["Url"], "/aspnetclient");
    assert_eq!(body["TryWebSockets"], true);
    let token = body["ConnectionToken"].as_str().unwrap().to_owned();
    let connection_id = body["ConnectionId"].as_str().unwrap().to_owned();

    // Long-polling connect answers with the init message, and opens the app-server side.
    let init = respond(sim.handle(&long_poll("connect", &token, "")));
    assert_eq!(&init.body[..], b"{\"C\":\"0\",\"S\":1,\"M\":[]}");
    assert!(sim.to_server[&server].iter().any(
        |m| matches!(m, ServiceMessage::OpenConnection(o) if o.connection_id == connection_id)
    ));
    assert_eq!(
        last_payload_to(&sim, server),
        "{\"protocol\":\"json\",\"version\":1}\x1e"
    );
    server_sends(
        &mut sim,
        server,
        &connection_id,
        "{}\x1e{\"type\":1,\"target\":\"welcome\",\"arguments\":[\"x\"]}\x1e",
    );
    let start = respond(sim.handle(&long_poll("start", &token, "")));
    assert_eq!(&start.body[..], b"{ \"Response\": \"started\" }");
    // The push waits for the poll, in M, with its cursor.
    let poll = respond(sim.handle(&long_poll("poll", &token, "messageId=0")));
    assert_eq!(
        String::from_utf8_lossy(&poll.body),
        "{\"C\":\"1\",\"M\":[{\"H\":\"chat\",\"M\":\"welcome\",\"A\":[\"x\"]}]}"
    );

    // A send is an invocation with its state; the completion (with new state) answers it.
    let send = sim.handle(&long_poll(
        "send",
        &token,
        &format!(
            "data={}",
            urlencode("{\"H\":\"chat\",\"M\":\"Echo\",\"A\":[1],\"I\":0,\"S\":{\"a\":1}}")
        ),
    ));
    let RequestOutcome::Pending(send) = send else {
        panic!("{send:?}")
    };
    let forwarded = last_payload_to(&sim, server);
    let invocation: serde_json::Value =
        serde_json::from_str(forwarded.trim_end_matches('\x1e')).unwrap();
    assert_eq!(invocation["invocationId"], "0");
    assert_eq!(invocation["target"], "Echo");
    assert_eq!(invocation["arguments"], serde_json::json!([1]));
    assert_eq!(invocation["headers"][STATE_HEADER], "{\"a\":1}");
    server_sends(&mut sim, server, &connection_id, "{\"type\":3,\"invocationId\":\"0\",\"result\":1,\"headers\":{\"asrs.classic.state\":\"{\\\"b\\\":2}\"}}\x1e");
    assert_eq!(
        String::from_utf8_lossy(&sim.responses[&send].body),
        "{\"I\":\"0\",\"R\":1,\"S\":{\"b\":2}}"
    );

    // A held poll gets progress as it comes; an idle one ends empty at the poll timeout.
    let RequestOutcome::Pending(held) = sim.handle(&long_poll("poll", &token, "messageId=1"))
    else {
        panic!()
    };
    server_sends(
        &mut sim,
        server,
        &connection_id,
        "{\"type\":2,\"invocationId\":\"5\",\"item\":3}\x1e",
    );
    assert_eq!(
        String::from_utf8_lossy(&sim.responses[&held].body),
        "{\"C\":\"2\",\"M\":[{\"I\":\"P|5\",\"P\":{\"I\":\"5\",\"D\":3}}]}"
    );
    let RequestOutcome::Pending(idle) = sim.handle(&long_poll("poll", &token, "messageId=2"))
    else {
        panic!()
    };
    for _ in 0..19 {
        sim.advance(Duration::from_secs(5));
        sim.send_service(server, &ServiceMessage::Ping(service::Ping::default()));
    }
    assert_eq!(
        String::from_utf8_lossy(&sim.responses[&idle].body),
        "{\"C\":\"2\",\"M\":[]}"
    );

    // Reconnecting over a WebSocket replays what came after the client's cursor.
    server_sends(
        &mut sim,
        server,
        &connection_id,
        "{\"type\":1,\"target\":\"later\",\"arguments\":[]}\x1e",
    );
    let ws = sim.handle(&classic(
        "reconnect",
        "transport=webSockets&messageId=2",
        Some(&token),
        "",
        true,
    ));
    let RequestOutcome::AcceptWebSocket(c) = ws else {
        panic!("{ws:?}")
    };
    assert_eq!(
        sim.client_text(c),
        "{\"C\":\"3\",\"M\":[{\"H\":\"chat\",\"M\":\"later\",\"A\":[]}]}"
    );
    // Over the socket: invocations in, results as bare frames, keep-alives every 10 s.
    sim.data(
        c,
        b"{\"H\":\"chat\",\"M\":\"Echo\",\"A\":[\"w\"],\"I\":\"1\"}",
    );
    assert!(last_payload_to(&sim, server).contains("\"target\":\"Echo\""));
    server_sends(
        &mut sim,
        server,
        &connection_id,
        "{\"type\":3,\"invocationId\":\"1\",\"error\":\"no\"}\x1e",
    );
    assert!(sim.client_text(c).ends_with("{\"I\":\"1\",\"E\":\"no\"}"));
    sim.advance(Duration::from_secs(10));
    assert!(sim.client_text(c).ends_with("{}"));
    // The client asks for a result from a classic client: refused at once.
    server_sends(
        &mut sim,
        server,
        &connection_id,
        "{\"type\":1,\"invocationId\":\"s1\",\"target\":\"ask\",\"arguments\":[]}\x1e",
    );
    assert!(last_payload_to(&sim, server).contains("cannot return results"));

    // The socket drops; the app server hears of it only after the disconnect timeout.
    sim.closed_by_peer(c);
    let closed = |sim: &Sim| {
        sim.to_server[&server].iter().any(
            |m| matches!(m, ServiceMessage::CloseConnection(cc) if cc.connection_id == connection_id),
        )
    };
    for _ in 0..5 {
        sim.advance(Duration::from_secs(5));
        sim.send_service(server, &ServiceMessage::Ping(service::Ping::default()));
    }
    assert!(!closed(&sim));
    sim.advance(Duration::from_secs(6));
    assert!(closed(&sim));
    // Its token is dead now: a poll gets a global error (the client stops), a send a 400.
    let late = respond(sim.handle(&long_poll("poll", &token, "messageId=3")));
    assert!(String::from_utf8_lossy(&late.body).contains("\"E\":"));
    assert_eq!(
        respond(sim.handle(&long_poll("send", &token, "data=%7B%7D"))).status,
        400
    );
}

#[test]
fn classic_bad_input_gets_the_classic_errors() {
    let mut sim = Sim::new();
    let server = sim.connect_server("chat", "app-1");
    let status = |sim: &mut Sim, req: HttpRequest| respond(sim.handle(&req)).status;
    let conn_token = classic_negotiate(&mut sim)["ConnectionToken"]
        .as_str()
        .unwrap()
        .to_owned();
    // Unknown, forged or missing transports and tokens.
    for (transport, token) in [
        ("transport=carrierPigeon", Some(conn_token.as_str())),
        ("transport=foreverFrame", Some(conn_token.as_str())),
        ("transport=longPolling", None),
        ("transport=longPolling", Some("forged")),
    ] {
        let req = classic("connect", transport, token, "", false);
        assert_eq!(status(&mut sim, req), 400, "{transport} {token:?}");
    }
    // Two hubs on one connection, or none.
    let mut two = classic("negotiate", "", None, "", false);
    two.query =
        "connectionData=%5B%7B%22name%22%3A%22chat%22%7D%2C%7B%22name%22%3A%22other%22%7D%5D"
            .into();
    assert_eq!(status(&mut sim, two), 400);
    let mut none = classic("negotiate", "", None, "", false);
    none.query = "clientProtocol=2.1".into();
    assert_eq!(status(&mut sim, none), 400);
    // No token, or one for ASP.NET Core clients.
    let mut anonymous = classic("negotiate", "", None, "", false);
    anonymous.headers.retain(|(n, _)| n != "Authorization");
    assert_eq!(status(&mut sim, anonymous), 401);
    let mut core = classic("negotiate", "", None, "", false);
    core.headers = vec![(
        "Authorization".into(),
        format!("Bearer {}", token("/client/", "chat", None, 3600, KEY)),
    )];
    assert_eq!(status(&mut sim, core), 401);
    // Another user's token cannot use the connection.
    let mut mallory = long_poll("connect", &conn_token, "");
    mallory.headers = vec![(
        "Authorization".into(),
        format!("Bearer {}", classic_token(Some("mallory"))),
    )];
    assert_eq!(status(&mut sim, mallory), 403);
    let lp = |sim: &mut Sim, kind: &str, body: &str| {
        let req = long_poll(kind, &conn_token, body);
        respond(sim.handle(&req)).status
    };
    // Connected: malformed or oversized sends are refused; the connection lives on.
    assert_eq!(lp(&mut sim, "connect", ""), 200);
    assert_eq!(lp(&mut sim, "send", "data=not-json"), 400);
    let big = format!("data={}", "x".repeat(40 * 1024));
    assert_eq!(lp(&mut sim, "send", &big), 413);
    assert_eq!(lp(&mut sim, "start", ""), 200);
    // A second connect is refused; abort ends it and tells the app server.
    assert_eq!(lp(&mut sim, "connect", ""), 400);
    assert_eq!(lp(&mut sim, "abort", ""), 200);
    assert!(sim.to_server[&server]
        .iter()
        .any(|m| matches!(m, ServiceMessage::CloseConnection(_))));
    assert_eq!(sim.relay.client_count(), 0);
    // JSONP is refused.
    let jsonp = classic("negotiate", "callback=cb", None, "", false);
    assert_eq!(status(&mut sim, jsonp), 400);
    // An oversized WebSocket message ends that connection with a global error.
    let ws_token = classic_negotiate(&mut sim)["ConnectionToken"]
        .as_str()
        .unwrap()
        .to_owned();
    let ws = classic("connect", "transport=webSockets", Some(&ws_token), "", true);
    let RequestOutcome::AcceptWebSocket(c) = sim.handle(&ws) else {
        panic!()
    };
    sim.data(c, "x".repeat(40 * 1024).as_bytes());
    assert!(sim
        .client_text(c)
        .contains("\"E\":\"The message exceeds the maximum size of 32768 bytes.\""));
    assert_eq!(sim.closed[&c].len(), 1);
    assert_eq!(sim.relay.client_count(), 0);
}
