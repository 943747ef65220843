//! Server-Sent Events and long polling.

use super::*;

#[test]
fn long_polling_end_to_end() {
    let mut sim = sim();
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
    assert_eq!(sim.relay().client_count(), 1);
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
    let mut sim = sim();
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
    assert_eq!(sim.relay().client_count(), 0);
    assert!(sim.to_server[&server]
        .iter()
        .any(|m| matches!(m, ServiceMessage::CloseConnection(_))));
}

#[test]
fn a_long_polling_client_that_falls_behind_is_closed_with_a_reason() {
    let mut sim = sim();
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
    assert_eq!(sim.relay().client_count(), 1);
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
    let mut sim = sim();
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
    assert_eq!(sim.relay().client_count(), 0);
    // Another client over WebSockets: POST is not allowed, nor a switch to long polling.
    let (ws, _) = sim.connect_client("chat", None, "json");
    let ws_token = sim.relay().clients.map[&ws].token.clone();
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
    let mut sim = sim();
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
    let connection_id = sim.connection_id(conn).to_owned();
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
    let mut sim = sim();
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
