//! ASP.NET Core clients over WebSockets: the handshake, mapping, whole frames both ways,
//! keep-alives and limits.

use super::*;

#[test]
fn a_client_is_mapped_once_and_data_flows_both_ways() {
    let mut sim = sim();
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
    assert_eq!(sim.relay().client_count(), 0);
}

#[test]
fn msgpack_clients_get_binary_frames_after_a_text_handshake_response() {
    let mut sim = sim();
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
    let mut sim = sim();
    let servers: Vec<ConnHandle> = (0..5)
        .map(|_| sim.connect_server("chat", "app-1"))
        .collect();
    let clients: Vec<ConnHandle> = (0..50)
        .map(|_| sim.connect_client("chat", None, "json").0)
        .collect();
    for s in &servers {
        assert_eq!(sim.relay().servers.get(*s).unwrap().clients.len(), 10);
    }
    for c in clients {
        assert!(servers.contains(&sim.server_of(c)));
    }
}

#[test]
fn bad_handshakes_get_the_handshake_error_and_a_close() {
    let mut sim = sim();
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
    let mut sim = sim();
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
fn busy_clients_get_no_keep_alive_pings() {
    let mut sim = sim();
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
    assert_eq!(sim.relay().client_count(), 1);
}

#[test]
fn a_client_that_opens_long_after_negotiating_arms_no_timer_in_the_past() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let id = sim.negotiate("chat", None).unwrap();
    // Nothing has been sent to the client since it negotiated: by the time it opens, a
    // keep-alive is already due. It is due now, not before now.
    sim.advance(Duration::from_secs(14));
    let ws = websocket_request("chat", Some(&id), None);
    let RequestOutcome::AcceptWebSocket(c) = sim.handle(&ws) else {
        panic!()
    };
    sim.send_service(server, &ServiceMessage::Ping(service::Ping::default()));
    sim.advance(Duration::from_secs(10));
    sim.data(c, b"{\"protocol\":\"json\",\"version\":1}\x1e");
    assert!(sim.relay().poll_timeout() >= Some(sim.now()));
    // The keep-alive runs at once (advance checks that no deadline lies before now).
    sim.advance(Duration::from_millis(1));
    let connection_id = sim.connection_id(c).to_owned();
    sim.accept_handshake(c, &connection_id);
    sim.send_service(server, &ServiceMessage::Ping(service::Ping::default()));
    sim.advance(Duration::from_secs(16));
    assert!(
        sim.client_text(c).ends_with("{\"type\":6}\x1e"),
        "{}",
        sim.client_text(c)
    );
    assert!(sim.is_open(c));
}

/// What the app server learns of a client in OpenConnection: the query as the client sent it,
/// with its `?` and without the bearer; the client's headers without the service's own; and
/// the client's address, from the socket or from a trusted proxy's `X-Forwarded-For`.
#[test]
fn open_connection_carries_the_query_as_sent_and_the_clients_address() {
    let mut config = RelayConfig {
        trusted_proxies: vec!["10.0.0.0/8".parse().expect("a range")],
        ..RelayConfig::default()
    };
    config.access_keys.push(KEY.to_owned());
    let mut sim = Sim::with_config(epoch(), config);
    let server = sim.connect_server("chat", "app-1");
    let mut opened = Vec::new();
    for (peer, forwarded) in [
        ("192.0.2.7", Some("6.6.6.6")),
        ("10.0.0.2", Some("6.6.6.6, 198.51.100.9")),
    ] {
        let id = sim.negotiate("chat", Some("u")).expect("negotiated");
        let mut req = websocket_request("chat", Some(&id), Some("u"));
        req.query = format!("hub=chat&id={id}&access_token=secret&note=a%20b&x=%2B");
        req.peer = Some(peer.parse().expect("an address"));
        req.headers.extend(
            [
                ("Asrs-Instance-Id", "forged"),
                ("asrs-migrate-from", "elsewhere"),
                ("X-ASRS-Server-Id", "app-9"),
                ("User-Agent", "test"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        if let Some(f) = forwarded {
            req.headers.push("X-Forwarded-For", f);
        }
        let RequestOutcome::AcceptWebSocket(client) = sim.handle(&req) else {
            panic!("refused")
        };
        sim.data(client, b"{\"protocol\":\"json\",\"version\":1}\x1e");
        let open = sim.to_server[&server]
            .iter()
            .rev()
            .find_map(|m| match m {
                ServiceMessage::OpenConnection(o) => Some(o.clone()),
                _ => None,
            })
            .expect("opened");
        assert_eq!(
            open.query_string,
            format!("?hub=chat&id={id}&note=a%20b&x=%2B")
        );
        opened.push(open);
    }
    let header = |open: &service::OpenConnection, name: &str| -> Vec<Vec<String>> {
        open.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    };
    for open in &opened {
        assert_eq!(header(open, "Asrs-Instance-Id"), [["relay-0"]]);
        assert!(header(open, "Asrs-Migrate-From").is_empty());
        assert!(header(open, "X-ASRS-Server-Id").is_empty());
        assert_eq!(header(open, "User-Agent"), [["test"]]);
    }
    // Untrusted peer: its own address, whatever it claims.
    assert_eq!(header(&opened[0], "X-Forwarded-For"), [["192.0.2.7"]]);
    // A trusted proxy: the address it saw, not what the client claimed.
    assert_eq!(header(&opened[1], "X-Forwarded-For"), [["198.51.100.9"]]);
}
