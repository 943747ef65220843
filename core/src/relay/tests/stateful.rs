//! Stateful reconnect: the first-message gate, takeover, resume without loss.

use super::*;

#[test]
fn stateful_output_waits_for_the_clients_first_frame_after_the_handshake() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let (c, _) = connect_stateful(&mut sim);
    let id = sim.connection_id(c).to_owned();
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
    let quiet_id = sim.connection_id(quiet).to_owned();
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
    let closing_id = sim.connection_id(closing).to_owned();
    server_sends(&mut sim, server, &closing_id, "{}\x1e{\"type\":1,\"target\":\"bye\",\"arguments\":[]}\x1e{\"type\":7,\"error\":\"done\"}\x1e");
    assert_eq!(
        sim.client_text(closing),
        "{}\x1e{\"type\":1,\"target\":\"bye\",\"arguments\":[]}\x1e{\"type\":7,\"error\":\"done\"}\x1e"
    );
}

#[test]
fn a_stateful_reconnect_replaces_a_socket_the_relay_still_thinks_open() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let (c, ws) = connect_stateful(&mut sim);
    let id = sim.connection_id(c).to_owned();
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
    let mut sim = sim();
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
    let connection_id = sim.connection_id(c).to_owned();
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
    assert_eq!(sim.relay().client_count(), 0);
    assert!(sim.to_server[&server].iter().any(
        |m| matches!(m, ServiceMessage::CloseConnection(cc) if cc.connection_id == connection_id)
    ));
}

#[test]
fn stateful_clients_survive_hostile_sequences_and_transport_switches() {
    let mut sim = sim();
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
    assert_eq!(sim.relay().client_count(), 0);
    assert!(sim.to_server[&server]
        .iter()
        .any(|m| matches!(m, ServiceMessage::CloseConnection(_))));
}

/// Stateful reconnect is granted only when the hub's app servers allow it (their
/// HandshakeRequest's `allowStatefulReconnects`, the app's `AllowStatefulReconnects`).
#[test]
fn stateful_reconnect_needs_the_app_servers_consent() {
    let mut sim = sim();
    let server = sim.accept_server("chat", "app-1");
    sim.send_service(
        server,
        &ServiceMessage::HandshakeRequest(service::HandshakeRequest::default()),
    );
    let bearer = token("/client/", "chat", None, 3600, KEY);
    let negotiate = |sim: &mut Sim| {
        let req = request(
            "POST",
            "/client/negotiate",
            "hub=chat&negotiateVersion=1&useStatefulReconnect=true",
            Some(&bearer),
            false,
        );
        let RequestOutcome::Respond(r) = sim.handle(&req) else {
            panic!("answered")
        };
        let NegotiateResponse::Connection(info) = NegotiateResponse::parse(&r.body).expect("json")
        else {
            panic!("negotiated")
        };
        info.use_stateful_reconnect
    };
    assert!(!negotiate(&mut sim), "the app server does not allow it");
    // One that allows it joins: still not, while one that does not may take the client.
    sim.connect_server("chat", "app-2");
    assert!(!negotiate(&mut sim));
    sim.closed_by_peer(server);
    assert!(negotiate(&mut sim), "every server connection allows it");
}
