//! Server connections: their loss, garbage, pings, timers, and asking for more.

use super::*;

#[test]
fn a_dropped_server_connection_closes_only_its_clients_with_a_reason() {
    let mut sim = sim();
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
    let mut sim = sim();
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
    assert_eq!(sim.relay().server_connection_count(), 1);
    let _ = (s1, s2);
}

#[test]
fn timers_reap_idle_negotiations_silent_clients_and_silent_servers() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let _never_used = sim.negotiate("chat", None).unwrap();
    let (c, id) = sim.connect_client("chat", None, "json");
    sim.accept_handshake(c, &id);
    assert_eq!(sim.relay().client_count(), 2);
    // The server keeps talking; the client says nothing.
    for _ in 0..7 {
        sim.advance(Duration::from_secs(5));
        sim.send_service(server, &ServiceMessage::Ping(service::Ping::default()));
    }
    assert_eq!(sim.relay().client_count(), 0);
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
    assert_eq!(sim.relay().server_connection_count(), 0);
    assert_eq!(sim.closed[&server].len(), 1);
}

#[test]
fn server_pings_are_answered() {
    let mut sim = sim();
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
    let config = RelayConfig {
        clients_per_server_connection: 3,
        ..RelayConfig::default()
    };
    let mut sim = Sim::with_config(epoch(), config);
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

/// A bad message from an app server costs that message: an oversize broadcast and an
/// undecodable message are skipped and the app server is told with a ServiceEvent (not a
/// ServiceError, which would make the SDK stop writing); the connection and its clients go
/// on. Only a length prefix that loses the stream's sync ends the connection.
#[test]
fn a_bad_message_from_an_app_server_costs_only_that_message() {
    let config = RelayConfig {
        max_server_message_size: 1024,
        ..RelayConfig::default()
    };
    let mut sim = Sim::with_config(epoch(), config);
    let server = sim.connect_server("chat", "app-1");
    let (c, id) = sim.connect_client("chat", Some("u"), "json");
    sim.accept_handshake(c, &id);
    let events_to = |sim: &Sim| -> Vec<String> {
        sim.to_server[&server]
            .iter()
            .filter_map(|m| match m {
                ServiceMessage::ServiceEvent(e) => Some(e.message.clone()),
                _ => None,
            })
            .collect()
    };
    // A broadcast over the limit, split across two reads, then a good one in the same read
    // as its tail.
    let big = ServiceMessage::BroadcastData(service::BroadcastData {
        excluded_connection_ids: vec![],
        payloads: json_payloads(&format!(
            "{{\"type\":1,\"target\":\"big\",\"arguments\":[\"{}\"]}}",
            "x".repeat(2000)
        )),
        ext: service::Ext::default(),
    });
    let small = ServiceMessage::BroadcastData(service::BroadcastData {
        excluded_connection_ids: vec![],
        payloads: json_payloads("{\"type\":1,\"target\":\"small\",\"arguments\":[]}"),
        ext: service::Ext::default(),
    });
    let mut bytes = Vec::new();
    big.write(&mut bytes).expect("encodes");
    let tail = bytes.split_off(700);
    let mut rest = tail;
    small.write(&mut rest).expect("encodes");
    sim.data(server, &bytes);
    sim.data(server, &rest);
    let said = sim.client_text(c);
    assert!(
        !said.contains("\"big\"") && said.contains("\"small\""),
        "{said}"
    );
    let events = events_to(&sim);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0].contains("exceeds the limit of 1024"),
        "{}",
        events[0]
    );
    // A whole frame that is not a service message.
    sim.data(server, b"\x03\x91\xc1\x00");
    sim.send_service(server, &small);
    assert_eq!(events_to(&sim).len(), 2);
    assert_eq!(sim.client_text(c).matches("\"small\"").count(), 2);
    assert!(sim.is_open(c) && !sim.is_done(server));
    assert_eq!(sim.relay().stats().server_messages_skipped, 2);
    assert!(sim
        .events
        .iter()
        .any(|e| matches!(e, Event::ServerMessageSkipped { conn, .. } if *conn == server)));
    // A length prefix that is not one: the stream is lost, and so is the connection.
    sim.data(server, &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    assert!(sim.is_done(server));
    assert!(!sim.is_open(c), "its clients go with it");
}

/// A skipped ConnectionData leaves a hole in its client's flow: that client (only) is closed,
/// saying why. And one read may not be made of bad messages: past 16, the connection goes.
#[test]
fn a_skipped_flow_closes_its_client_and_a_read_of_garbage_ends_the_connection() {
    let config = RelayConfig {
        max_server_message_size: 1024,
        ..RelayConfig::default()
    };
    let mut sim = Sim::with_config(epoch(), config);
    let server = sim.connect_server("chat", "app-1");
    let (c, id) = sim.connect_client("chat", None, "json");
    let (other, other_id) = sim.connect_client("chat", None, "json");
    sim.accept_handshake(c, &id);
    sim.accept_handshake(other, &other_id);
    // An oversize ConnectionData for `c`, arriving in pieces.
    let big = ServiceMessage::ConnectionData(service::ConnectionData {
        connection_id: id.clone(),
        payload: Bytes::from(vec![b'x'; 3000]),
        ext: service::Ext::default(),
    });
    let mut bytes = Vec::new();
    big.write(&mut bytes).expect("encodes");
    for piece in bytes.chunks(500) {
        sim.data(server, piece);
    }
    assert!(!sim.is_open(c), "its flow has a hole");
    assert!(
        sim.client_text(c).contains("\"type\":7"),
        "{}",
        sim.client_text(c)
    );
    assert!(sim.is_open(other) && !sim.is_done(server));
    // An undecodable ConnectionData for `other` ([6, id, "not bin", {}]).
    let mut frame = vec![0x94, 6, 0xd9, other_id.len() as u8];
    frame.extend_from_slice(other_id.as_bytes());
    frame.extend_from_slice(&[0xa1, b'x', 0x80]);
    let mut framed = Vec::new();
    crate::framing::write_binary_frame(&frame, &mut framed).expect("a frame");
    sim.data(server, &framed);
    assert!(!sim.is_open(other));
    assert!(!sim.is_done(server));
    // A read of 17 bad messages.
    let (third, third_id) = sim.connect_client("chat", None, "json");
    sim.accept_handshake(third, &third_id);
    let garbage: Vec<u8> = std::iter::repeat_n([0x01u8, 0xc1], 17).flatten().collect();
    sim.data(server, &garbage);
    assert!(sim.is_done(server));
    assert!(!sim.is_open(third));
}

/// `servers` pings are answered `<ticks>:<id>;<id>` with .NET ticks of the wall clock that
/// rise with time: the SDK keeps a reply only when its ticks are above the last one's.
#[test]
fn the_servers_ping_reply_carries_rising_dotnet_ticks() {
    let mut sim = sim();
    let a = sim.connect_server("chat", "app-1");
    sim.connect_server("chat", "app-2");
    let ask = |sim: &mut Sim| -> (i64, String) {
        sim.send_service(
            a,
            &ServiceMessage::Ping(service::Ping::pairs([("servers", "")])),
        );
        let reply = sim.to_server[&a]
            .iter()
            .rev()
            .find_map(|m| match m {
                ServiceMessage::Ping(p) => p.get("servers").map(str::to_owned),
                _ => None,
            })
            .expect("a servers reply");
        let (ticks, ids) = reply.split_once(':').expect("ticks:ids");
        (ticks.parse().expect("ticks"), ids.to_owned())
    };
    let (first, ids) = ask(&mut sim);
    assert_eq!(ids, "app-1;app-2");
    // T0 (2023-11-14T22:13:20Z) in .NET ticks.
    assert_eq!(first, 638_355_968_000_000_000);
    sim.advance(Duration::from_millis(1));
    let (second, _) = ask(&mut sim);
    assert_eq!(second - first, 10_000, "1 ms later");
}

/// A request of a newer type than the relay knows (RefreshAuth, 41, and up) is answered with
/// a failed Ack when it carries an ack id, so the SDK call that waits for it fails at once
/// instead of timing out; one without is ignored, as the protocol says.
#[test]
fn newer_ackable_requests_are_answered_with_a_failure() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let frame = |body: &[u8]| {
        let mut out = Vec::new();
        crate::framing::write_binary_frame(body, &mut out).expect("a frame");
        out
    };
    // [41, "conn1", ["a", "b"], 1700000000, 77, {}]
    let refresh = [
        0x96, 41, 0xa5, b'c', b'o', b'n', b'n', b'1', 0x92, 0xa1, b'a', 0xa1, b'b', 0xce, 0x65,
        0x53, 0xf1, 0x00, 77, 0x80,
    ];
    sim.data(server, &frame(&refresh));
    let Some(ServiceMessage::Ack(ack)) = sim.to_server[&server].last() else {
        panic!("an ack")
    };
    assert_eq!(ack.ack_id, 77);
    assert_eq!(ack.status, service::AckStatus::InternalServerError);
    assert!(ack.message.contains("41"), "{}", ack.message);
    // [42, "x", {}]: nothing to answer.
    let before = sim.to_server[&server].len();
    sim.data(server, &frame(&[0x93, 42, 0xa1, b'x', 0x80]));
    assert_eq!(sim.to_server[&server].len(), before);
    assert!(!sim.is_done(server));
}

/// An app server on the Azure SDK with `GracefulShutdown.Mode = MigrateClients`: migration
/// level 1 in its handshake.
fn connect_migrating_server(sim: &mut Sim, server_id: &str) -> ConnHandle {
    let server = sim.accept_server("chat", server_id);
    sim.send_service(
        server,
        &ServiceMessage::HandshakeRequest(service::HandshakeRequest {
            migration_level: service::MigrationLevel::ShutdownOnly,
            ..service::HandshakeRequest::default()
        }),
    );
    server
}

fn shutdown(sim: &mut Sim, server: ConnHandle, fin: &str) {
    sim.send_service(
        server,
        &ServiceMessage::Ping(service::Ping::pairs([("shutdown", fin)])),
    );
}

/// Graceful shutdown with client migration, as the SDK's `IConnectionMigrationFeature`
/// expects: the leaving app server gets CloseConnection with `Asrs-Migrate-To`, the next one
/// OpenConnection with `Asrs-Migrate-From` and the handshake, under the same connection id;
/// the client notices nothing and goes on with the next app server.
#[test]
fn a_leaving_app_servers_clients_move_to_another_keeping_their_ids() {
    let mut sim = sim();
    let old = connect_migrating_server(&mut sim, "app-1");
    let (c, id) = sim.connect_client("chat", Some("u"), "json");
    sim.accept_handshake(c, &id);
    let new = connect_migrating_server(&mut sim, "app-2");
    shutdown(&mut sim, old, "fin:1");
    let farewell = sim.to_server[&old].iter().find_map(|m| match m {
        ServiceMessage::CloseConnection(close) if close.connection_id == id => Some(close.clone()),
        _ => None,
    });
    let farewell = farewell.expect("the old app server is told");
    assert_eq!(
        farewell.headers,
        [("Asrs-Migrate-To".to_owned(), vec!["app-2".to_owned()])]
    );
    let welcome: Vec<&ServiceMessage> = sim.to_server[&new]
        .iter()
        .filter(|m| {
            matches!(
                m,
                ServiceMessage::OpenConnection(_) | ServiceMessage::ConnectionData(_)
            )
        })
        .collect();
    let [ServiceMessage::OpenConnection(open), ServiceMessage::ConnectionData(handshake)] =
        welcome[..]
    else {
        panic!("{welcome:?}")
    };
    assert_eq!(open.connection_id, id);
    assert!(open
        .headers
        .iter()
        .any(|(k, v)| k == "Asrs-Migrate-From" && v == &["app-1".to_owned()]));
    assert_eq!(
        &handshake.payload[..],
        b"{\"protocol\":\"json\",\"version\":1}\x1e"
    );
    assert!(sim.is_open(c));
    assert_eq!(sim.relay().stats().clients_migrated, 1);
    // The client's next invocation goes to the new app server, and its answers come back.
    // The old one may still answer what it owed, whole frames between the new one's, but
    // may not close the client.
    sim.data(
        c,
        b"{\"type\":1,\"invocationId\":\"1\",\"target\":\"Echo\",\"arguments\":[]}\x1e",
    );
    assert!(matches!(
        sim.to_server[&new].last(),
        Some(ServiceMessage::ConnectionData(d)) if d.connection_id == id
    ));
    server_sends(&mut sim, old, &id, "{\"type\":3,\"invocationId\":\"0\",");
    server_sends(
        &mut sim,
        new,
        &id,
        "{\"type\":3,\"invocationId\":\"1\",\"result\":1}\x1e",
    );
    server_sends(&mut sim, old, &id, "\"result\":0}\x1e");
    sim.send_service(
        old,
        &ServiceMessage::CloseConnection(service::CloseConnection {
            connection_id: id.clone(),
            ..service::CloseConnection::default()
        }),
    );
    let said = sim.client_text(c);
    let answers = "{\"type\":3,\"invocationId\":\"1\",\"result\":1}\x1e\
                   {\"type\":3,\"invocationId\":\"0\",\"result\":0}\x1e";
    assert!(said.ends_with(answers), "{said}");
    assert!(sim.is_open(c));
    // The old app server goes; the client stays.
    sim.closed_by_peer(old);
    assert!(sim.is_open(c));
    assert!(!sim
        .events
        .iter()
        .any(|e| matches!(e, Event::ClientClosed { conn, .. } if *conn == c)));
}

#[test]
fn clients_stay_without_migration_mid_message_or_when_their_server_is_required() {
    let mut sim = sim();
    // An app server without migration (level 0): fin:1 only drains it.
    let plain = sim.connect_server("chat", "app-0");
    let (p, p_id) = sim.connect_client("chat", None, "json");
    sim.accept_handshake(p, &p_id);
    sim.connect_server("chat", "app-9");
    shutdown(&mut sim, plain, "fin:1");
    assert_eq!(sim.server_of(p), plain);
    assert_eq!(sim.relay().stats().clients_migrated, 0);
    // A leaving app server that migrates, with only one that does not to go to: it would
    // answer the client's handshake again, so the client stays.
    let mut sim = self::sim();
    let leaving = connect_migrating_server(&mut sim, "app-1");
    let (q, q_id) = sim.connect_client("chat", None, "json");
    sim.accept_handshake(q, &q_id);
    sim.connect_server("chat", "app-0");
    shutdown(&mut sim, leaving, "fin:1");
    assert_eq!(sim.server_of(q), leaving);
    assert_eq!(sim.relay().stats().clients_migrated, 0);

    let mut sim = self::sim();
    let old = connect_migrating_server(&mut sim, "app-1");
    // One mid-message, one whose token requires app-1.
    let (busy, busy_id) = sim.connect_client("chat", None, "json");
    sim.accept_handshake(busy, &busy_id);
    let mut claims = Claims::issued_at(T0, 3600);
    claims
        .aud
        .push("http://localhost/client/?hub=chat".to_owned());
    claims.insert("asrs.s.sn", "app-1");
    claims.insert("asrs.s.ssticky", "Required");
    let bearer = sign(&claims, KEY.as_bytes(), Algorithm::Hs256);
    let req = request(
        "POST",
        "/client/negotiate",
        "hub=chat&negotiateVersion=1",
        Some(&bearer),
        false,
    );
    let RequestOutcome::Respond(r) = sim.handle(&req) else {
        panic!("negotiated")
    };
    let NegotiateResponse::Connection(info) = NegotiateResponse::parse(&r.body).expect("json")
    else {
        panic!("negotiated")
    };
    let token = info.connection_token.expect("a token");
    let ws = request(
        "GET",
        "/client/",
        &format!("hub=chat&id={token}"),
        Some(&bearer),
        true,
    );
    let RequestOutcome::AcceptWebSocket(pinned) = sim.handle(&ws) else {
        panic!("accepted")
    };
    sim.data(pinned, b"{\"protocol\":\"json\",\"version\":1}\x1e");
    let pinned_id = sim.connection_id(pinned).to_owned();
    sim.accept_handshake(pinned, &pinned_id);
    let new = connect_migrating_server(&mut sim, "app-2");
    sim.data(busy, b"{\"type\":1,\"target\":\"Ec");
    shutdown(&mut sim, old, "fin:1");
    assert_eq!(sim.server_of(busy), old, "mid-message: not yet");
    assert_eq!(sim.server_of(pinned), old, "required: never");
    // Its message completes; at the relay's next ping timer for the leaving connection (no
    // message from it needed), it moves.
    sim.data(busy, b"ho\",\"arguments\":[]}\x1e");
    sim.send_service(new, &ServiceMessage::Ping(service::Ping::default()));
    assert_eq!(sim.relay().stats().clients_migrated, 0);
    sim.advance(Duration::from_secs(5));
    assert_eq!(sim.relay().stats().clients_migrated, 1);
    let moved = sim.to_server[&new]
        .iter()
        .any(|m| matches!(m, ServiceMessage::OpenConnection(o) if o.connection_id == busy_id));
    assert!(moved);
    assert!(sim.is_open(busy) && sim.is_open(pinned));
}

/// Only a client's own app server writes on its flow or closes it: another app server, or a
/// server connection of another hub, naming its connection id is ignored.
#[test]
fn only_a_clients_own_app_server_writes_to_it_or_closes_it() {
    let mut sim = sim();
    let own = sim.connect_server("chat", "app-1");
    let (c, id) = sim.connect_client("chat", None, "json");
    sim.accept_handshake(c, &id);
    let other = sim.connect_server("chat", "app-2");
    let elsewhere = sim.connect_server("other", "app-1");
    for intruder in [other, elsewhere] {
        server_sends(
            &mut sim,
            intruder,
            &id,
            "{\"type\":1,\"target\":\"forged\",\"arguments\":[]}\x1e",
        );
        sim.send_service(
            intruder,
            &ServiceMessage::CloseConnection(service::CloseConnection {
                connection_id: id.clone(),
                ..service::CloseConnection::default()
            }),
        );
    }
    assert!(sim.is_open(c));
    assert!(!sim.client_text(c).contains("forged"));
    server_sends(
        &mut sim,
        own,
        &id,
        "{\"type\":1,\"target\":\"real\",\"arguments\":[]}\x1e",
    );
    assert!(sim.client_text(c).contains("real"));
}

/// A client result the leaving app server asked of a client that then moved fails at once:
/// its answer would reach the new app server, which does not know it.
#[test]
fn client_results_owed_to_the_leaving_app_server_fail_when_the_client_moves() {
    let mut sim = sim();
    let old = connect_migrating_server(&mut sim, "app-1");
    let (c, id) = sim.connect_client("chat", None, "json");
    sim.accept_handshake(c, &id);
    sim.send_service(
        old,
        &ServiceMessage::ClientInvocation(service::ClientInvocation {
            invocation_id: "ask-1".into(),
            connection_id: id.clone(),
            caller_server_id: "app-1".into(),
            payloads: json_payloads(
                "{\"type\":1,\"invocationId\":\"ask-1\",\"target\":\"q\",\"arguments\":[]}",
            ),
            ext: service::Ext::default(),
        }),
    );
    connect_migrating_server(&mut sim, "app-2");
    shutdown(&mut sim, old, "fin:1");
    assert_eq!(sim.relay().stats().clients_migrated, 1);
    let failed = sim.to_server[&old].iter().find_map(|m| match m {
        ServiceMessage::ErrorCompletion(e) if e.invocation_id == "ask-1" => e.error.clone(),
        _ => None,
    });
    assert!(failed.is_some_and(|e| e.contains("moved")));
}

/// A connection an app server opens while it is leaving leaves too; once the connection that
/// said `shutdown fin` is gone, the app server's (restarted, same id) connections take
/// clients again.
#[test]
fn late_connections_follow_a_leaving_app_server_only_while_it_leaves() {
    let mut sim = sim();
    let leaving = sim.connect_server("chat", "app-1");
    shutdown(&mut sim, leaving, "fin:2");
    let late = sim.connect_server("chat", "app-1");
    assert!(
        sim.negotiate("chat", None).is_err(),
        "no connection of the hub takes clients"
    );
    sim.closed_by_peer(leaving);
    let (c, _) = sim.connect_client("chat", None, "json");
    assert_eq!(sim.server_of(c), late);
}

#[test]
fn a_relay_shutting_down_tells_everyone_to_reconnect_and_takes_no_one_new() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let (client, id) = sim.connect_client("chat", Some("alice"), "json");
    sim.accept_handshake(client, &id);
    let (token, _) = classic_long_polling(&mut sim, server);
    respond(sim.handle(&long_poll("start", &token, "")));
    let RequestOutcome::Pending(poll) = sim.handle(&long_poll("poll", &token, "messageId=0"))
    else {
        panic!()
    };
    let ready = HttpRequest {
        method: "GET".to_owned(),
        path: "/ready".to_owned(),
        ..HttpRequest::default()
    };
    assert_eq!(respond(sim.handle(&ready)).status, 200);

    let (relay, now) = sim.relay_mut();
    relay.shut_down(now);
    sim.drain();

    // The ASP.NET Core client may reconnect (to another node, or here once the relay is
    // back); the classic one is told to reconnect (`T`), on its held poll.
    assert!(sim.client_text(client).contains(
        "\"type\":7,\"error\":\"The service is shutting down; reconnect.\",\"allowReconnect\":true"
    ));
    assert!(sim.is_done(client));
    let answered = String::from_utf8_lossy(&sim.responses[&poll].body).into_owned();
    assert!(answered.contains("\"T\":1"), "{answered}");
    assert!(!answered.contains("\"E\""), "{answered}");
    assert_eq!(sim.relay().client_count(), 0);
    // The app server lets go of this relay's clients (the Azure SDK's `offline` ping).
    let instance = sim.relay().config().instance_id.clone();
    assert!(sim.to_server[&server].iter().any(|m| matches!(
        m,
        ServiceMessage::Ping(p) if *p == service::Ping::pairs([("offline", instance.as_str())])
    )));
    assert!(!sim.is_done(server));
    assert_eq!(
        sim.relay().stats().clients_closed.get(CloseKind::Shutdown),
        2
    );
    // Nothing new: not ready, no negotiate, no server connection.
    assert_eq!(respond(sim.handle(&ready)).status, 503);
    assert_eq!(sim.negotiate("chat", None).unwrap_err().status, 503);
    assert!(sim.try_accept_server("chat", "app-2").is_none());
    // A classic negotiate neither, its kind in any case (the classic endpoints read it so).
    for kind in ["negotiate", "NEGOTIATE", "Negotiate"] {
        let negotiate = classic(kind, "", None, "", false);
        assert_eq!(respond(sim.handle(&negotiate)).status, 503, "{kind}");
    }
    sim.relay_mut().0.shut_down(now);
}

/// A migrated client's next app server is told the handshake its first one was: as the
/// relay writes it for its protocol (written again, not kept), or as the client spelled its
/// protocol (kept). A client that asked for version 0 is told so again; one that asked for
/// 2 is told 1, as at its opening.
#[test]
fn a_migrated_client_is_introduced_with_the_handshake_it_came_with() {
    for (asked, version, told) in [
        (
            "messagepack",
            1,
            "{\"protocol\":\"messagepack\",\"version\":1}\x1e",
        ),
        ("json", 1, "{\"protocol\":\"json\",\"version\":1}\x1e"),
        (
            "MessagePack",
            1,
            "{\"protocol\":\"MessagePack\",\"version\":1}\x1e",
        ),
        ("json", 0, "{\"protocol\":\"json\",\"version\":0}\x1e"),
        // Version 2 without stateful reconnect granted: the app server is told 1, both times.
        ("json", 2, "{\"protocol\":\"json\",\"version\":1}\x1e"),
    ] {
        let mut sim = sim();
        let old = connect_migrating_server(&mut sim, "app-1");
        let c = sim.start_client_with_version("chat", Some("u"), asked, version);
        let id = sim.connection_id(c).to_owned();
        sim.accept_handshake(c, &id);
        let new = connect_migrating_server(&mut sim, "app-2");
        shutdown(&mut sim, old, "fin:1");
        let handshake = sim.to_server[&new].iter().find_map(|m| match m {
            ServiceMessage::ConnectionData(d) if d.connection_id == id => Some(d.payload.clone()),
            _ => None,
        });
        assert_eq!(
            handshake.as_deref(),
            Some(told.as_bytes()),
            "{asked} {version}"
        );
    }
}
