//! Events and statistics: every connection that opens says so, every one that closes says who
//! closed it and why, and the counters agree.

use super::*;

fn opened_clients(sim: &Sim) -> Vec<(ConnHandle, ClientFamily, &'static str, HubProtocol)> {
    sim.events
        .iter()
        .filter_map(|e| match e {
            Event::ClientOpened {
                conn,
                family,
                transport,
                protocol,
                hub,
                ..
            } => {
                assert_eq!(hub, "chat");
                Some((*conn, *family, transport.as_str(), *protocol))
            }
            _ => None,
        })
        .collect()
}

fn closed_client(sim: &Sim, client: ConnHandle) -> Vec<CloseReason> {
    sim.events
        .iter()
        .filter_map(|e| match e {
            Event::ClientClosed { conn, reason, .. } if *conn == client => Some(*reason),
            _ => None,
        })
        .collect()
}

fn reason(initiator: Initiator, kind: CloseKind) -> CloseReason {
    CloseReason { initiator, kind }
}

#[test]
fn every_open_and_close_is_an_event_with_who_and_why() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    assert!(matches!(
        &sim.events[..],
        [Event::ServerOpened { conn, hub, server_id }] if *conn == server && hub == "chat" && server_id == "app-1"
    ));
    let (leaver, leaver_id) = sim.connect_client("chat", Some("a"), "json");
    let (silent, silent_id) = sim.connect_client("chat", Some("b"), "messagepack");
    let (bad, bad_id) = sim.connect_client("chat", Some("c"), "json");
    for (c, id) in [(leaver, &leaver_id), (silent, &silent_id), (bad, &bad_id)] {
        sim.accept_handshake(c, id);
    }
    assert_eq!(
        opened_clients(&sim),
        vec![
            (
                leaver,
                ClientFamily::AspNetCore,
                "WebSockets",
                HubProtocol::Json
            ),
            (
                silent,
                ClientFamily::AspNetCore,
                "WebSockets",
                HubProtocol::MessagePack
            ),
            (
                bad,
                ClientFamily::AspNetCore,
                "WebSockets",
                HubProtocol::Json
            ),
        ]
    );
    // The client closes its socket; another breaks the protocol.
    sim.closed_by_peer(leaver);
    assert_eq!(
        closed_client(&sim, leaver),
        vec![reason(Initiator::Client, CloseKind::Normal)]
    );
    let mut big = vec![b'x'; 40 * 1024];
    big.push(0x1e);
    sim.data(bad, &big);
    assert_eq!(
        closed_client(&sim, bad),
        vec![reason(Initiator::Relay, CloseKind::ProtocolError)]
    );
    // The app server closes one; the last one says nothing until the client timeout.
    let (kicked, _) = sim.connect_client("chat", None, "json");
    let kicked_id = sim.connection_id(kicked).to_owned();
    sim.send_service(
        server,
        &ServiceMessage::CloseConnection(service::CloseConnection {
            connection_id: kicked_id,
            ..service::CloseConnection::default()
        }),
    );
    assert_eq!(
        closed_client(&sim, kicked),
        vec![reason(Initiator::AppServer, CloseKind::Normal)]
    );
    for _ in 0..7 {
        sim.advance(Duration::from_secs(5));
        sim.send_service(server, &ServiceMessage::Ping(service::Ping::default()));
    }
    assert_eq!(
        closed_client(&sim, silent),
        vec![reason(Initiator::Relay, CloseKind::Timeout)]
    );
    // The app server's connection goes: its clients go with it, as ServerOffline.
    let (orphan, _) = sim.connect_client("chat", None, "json");
    sim.closed_by_peer(server);
    assert_eq!(
        closed_client(&sim, orphan),
        vec![reason(Initiator::Relay, CloseKind::ServerOffline)]
    );
    assert!(matches!(
        sim.events.last(),
        Some(Event::ServerClosed { conn, reason: r, hub, server_id }) if *conn == server && *r == reason(Initiator::AppServer, CloseKind::Normal) && hub == "chat" && server_id == "app-1"
    ));

    let stats = *sim.relay().stats();
    assert_eq!(stats.clients_opened, 5);
    assert_eq!(stats.clients_closed.total(), 5);
    for (kind, n) in [
        (CloseKind::Normal, 2),
        (CloseKind::ProtocolError, 1),
        (CloseKind::Timeout, 1),
        (CloseKind::ServerOffline, 1),
    ] {
        assert_eq!(stats.clients_closed.get(kind), n, "{kind:?}");
    }
    assert_eq!((stats.servers_opened, stats.servers_closed.total()), (1, 1));
    assert_eq!(stats.clients_abandoned.total(), 0);
}

#[test]
fn clients_that_never_open_are_counted_apart_with_no_event() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    // Negotiated, never connected.
    sim.negotiate("chat", None).unwrap();
    // Connected, with a handshake the relay refuses.
    let id = sim.negotiate("chat", None).unwrap();
    let ws = websocket_request("chat", Some(&id), None);
    let RequestOutcome::AcceptWebSocket(refused) = sim.handle(&ws) else {
        panic!()
    };
    sim.data(refused, b"{\"protocol\":\"xml\",\"version\":1}\x1e");
    for _ in 0..4 {
        sim.advance(Duration::from_secs(5));
        sim.send_service(server, &ServiceMessage::Ping(service::Ping::default()));
    }
    assert_eq!(sim.relay().client_count(), 0);
    let stats = sim.relay().stats();
    assert_eq!(stats.clients_abandoned.get(CloseKind::Timeout), 1);
    assert_eq!(stats.clients_abandoned.get(CloseKind::HandshakeFailed), 1);
    assert_eq!(stats.clients_opened, 0);
    assert!(!sim
        .events
        .iter()
        .any(|e| matches!(e, Event::ClientOpened { .. } | Event::ClientClosed { .. })));
    // A server connection that never said hello is not an opened one either.
    let quiet = sim.accept_server("chat", "app-2");
    sim.advance(Duration::from_secs(16));
    assert!(sim.closed.contains_key(&quiet));
    let stats = sim.relay().stats();
    assert_eq!(stats.servers_abandoned.get(CloseKind::Timeout), 1);
    assert_eq!(stats.servers_closed.total(), 0);
}

#[test]
fn traffic_and_refusals_are_counted() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let (c, id) = sim.connect_client("chat", None, "json");
    sim.accept_handshake(c, &id);
    let echo = b"{\"type\":1,\"target\":\"Echo\",\"arguments\":[1]}\x1e";
    let ping = b"{\"type\":6}\x1e";
    sim.data(c, echo);
    sim.data(c, ping);
    let all = "{\"type\":1,\"target\":\"all\",\"arguments\":[]}";
    sim.send_service(
        server,
        &ServiceMessage::BroadcastData(service::BroadcastData {
            payloads: json_payloads(all),
            ..service::BroadcastData::default()
        }),
    );
    let stats = sim.relay().stats();
    // Up: the handshake and two messages. Down: the handshake response and a broadcast.
    let handshake = b"{\"protocol\":\"json\",\"version\":1}\x1e";
    assert_eq!(stats.to_server.messages, 3);
    assert_eq!(
        stats.to_server.bytes,
        (handshake.len() + echo.len() + ping.len()) as u64
    );
    assert_eq!(stats.to_client.messages, 2);
    assert_eq!(stats.to_client.bytes, (3 + all.len() + 1) as u64);
    let before = stats.requests_rejected;
    let _ = sim.handle(&request("GET", "/nowhere", "", None, false));
    let _ = sim.handle(&request(
        "POST",
        "/client/negotiate",
        "hub=chat",
        None,
        false,
    ));
    assert_eq!(sim.relay().stats().requests_rejected, before + 2);
}

#[test]
fn a_classic_client_opens_as_classic_over_its_transport() {
    let mut sim = sim();
    sim.connect_server("chat", "app-1");
    let (token, _) = classic_negotiated(&mut sim);
    let ws = classic("connect", "transport=webSockets", Some(&token), "", true);
    let RequestOutcome::AcceptWebSocket(c) = sim.handle(&ws) else {
        panic!()
    };
    assert_eq!(
        opened_clients(&sim),
        vec![(c, ClientFamily::Classic, "WebSockets", HubProtocol::Json)]
    );
    respond(sim.handle(&classic(
        "abort",
        "transport=webSockets",
        Some(&token),
        "",
        false,
    )));
    assert_eq!(
        closed_client(&sim, c),
        vec![reason(Initiator::Client, CloseKind::Normal)]
    );
}

/// Every refusal reaches the adapter's log as an event: requests answered 4xx/5xx,
/// negotiates answered with an error, and handshakes refused, saying why.
#[test]
fn refusals_are_events_saying_why() {
    let mut sim = sim();
    let refusals = |sim: &Sim| -> Vec<(String, u16, Option<String>, String)> {
        sim.events
            .iter()
            .filter_map(|e| match e {
                Event::Refused {
                    at,
                    status,
                    connection_id,
                    reason,
                    ..
                } => Some((at.clone(), *status, connection_id.clone(), reason.clone())),
                _ => None,
            })
            .collect()
    };
    // No app server yet: negotiate answers an error.
    let bearer = token("/client/", "chat", None, 3600, KEY);
    let req = request(
        "POST",
        "/client/negotiate",
        "hub=chat",
        Some(&bearer),
        false,
    );
    let _ = sim.handle(&req);
    // No token: 401.
    let _ = sim.handle(&request(
        "POST",
        "/client/negotiate",
        "hub=chat",
        None,
        false,
    ));
    sim.connect_server("chat", "app-1");
    let id = sim.negotiate("chat", None).expect("negotiated");
    let RequestOutcome::AcceptWebSocket(c) =
        sim.handle(&websocket_request("chat", Some(&id), None))
    else {
        panic!("accepted")
    };
    sim.data(c, b"{\"protocol\":\"blazor\",\"version\":1}\x1e");
    assert!(sim.is_done(c));
    let got = refusals(&sim);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!((got[0].0.as_str(), got[0].1), ("/client/negotiate", 0));
    assert!(got[0].3.contains("No app server"), "{}", got[0].3);
    assert_eq!(got[1].1, 401);
    assert_eq!(got[2].0, "handshake");
    assert!(got[2].2.is_some(), "with the connection id");
    assert!(
        got[2].3.contains("'blazor' is not supported"),
        "{}",
        got[2].3
    );
}
