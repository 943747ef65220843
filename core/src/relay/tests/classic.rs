//! Classic ASP.NET SignalR clients through the relay.

use super::*;

#[test]
fn classic_clients_poll_send_and_reconnect_through_the_relay() {
    let mut sim = sim();
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
    assert!(sim
        .client_text(c)
        .ends_with("{\"I\":\"1\",\"E\":\"no\",\"H\":true}"));
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
    let mut sim = sim();
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
    core.headers = [(
        "Authorization",
        format!("Bearer {}", token("/client/", "chat", None, 3600, KEY)),
    )]
    .into_iter()
    .collect();
    assert_eq!(status(&mut sim, core), 401);
    // Another user's token cannot use the connection.
    let mut mallory = long_poll("connect", &conn_token, "");
    mallory.headers = [(
        "Authorization",
        format!("Bearer {}", classic_token("chat", Some("mallory"))),
    )]
    .into_iter()
    .collect();
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
    assert_eq!(sim.relay().client_count(), 0);
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
    assert_eq!(sim.relay().client_count(), 0);
}

/// Negotiates a classic connection (for `chat`, named as `hub_name` by the client) and
/// connects it over a WebSocket. Returns the socket and the connection id.
fn classic_websocket(sim: &mut Sim, hub_name: &str) -> (ConnHandle, String) {
    let data = format!(
        "connectionData={}",
        urlencode(&format!("[{{\"name\":\"{hub_name}\"}}]"))
    );
    let mut negotiate = classic("negotiate", "", None, "", false);
    negotiate.query = format!("clientProtocol=2.1&{data}");
    let body: serde_json::Value =
        serde_json::from_slice(&respond(sim.handle(&negotiate)).body).unwrap();
    let token = body["ConnectionToken"].as_str().unwrap().to_owned();
    let mut connect = classic("connect", "transport=webSockets", Some(&token), "", true);
    connect.query = connect.query.replace(CHAT_DATA, &data);
    let RequestOutcome::AcceptWebSocket(c) = sim.handle(&connect) else {
        panic!()
    };
    (c, body["ConnectionId"].as_str().unwrap().to_owned())
}

#[test]
fn classic_server_sent_events_carry_pushes_keep_alives_results_and_reconnects() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let (token, id) = classic_negotiated(&mut sim);
    let sse = |kind: &str, extra: &str, body: &str| {
        let query = format!("transport=serverSentEvents{extra}");
        classic(kind, &query, Some(&token), body, false)
    };
    let RequestOutcome::EventStream(c) = sim.handle(&sse("connect", "", "")) else {
        panic!()
    };
    assert_eq!(
        sim.client_text(c),
        "data: initialized\r\n\r\ndata: {\"C\":\"0\",\"S\":1,\"M\":[]}\r\n\r\n"
    );
    server_sends(
        &mut sim,
        server,
        &id,
        "{}\x1e{\"type\":1,\"target\":\"welcome\",\"arguments\":[\"x\"]}\x1e",
    );
    assert!(sim.client_text(c).ends_with(
        "data: {\"C\":\"1\",\"M\":[{\"H\":\"chat\",\"M\":\"welcome\",\"A\":[\"x\"]}]}\r\n\r\n"
    ));
    // A send is answered by the app server's completion.
    let data = format!(
        "data={}",
        urlencode("{\"H\":\"chat\",\"M\":\"Add\",\"A\":[1,1],\"I\":0}")
    );
    let RequestOutcome::Pending(send) = sim.handle(&sse("send", "", &data)) else {
        panic!()
    };
    server_sends(
        &mut sim,
        server,
        &id,
        "{\"type\":3,\"invocationId\":\"0\",\"result\":2}\x1e",
    );
    assert_eq!(&sim.responses[&send].body[..], b"{\"I\":\"0\",\"R\":2}");
    // Keep-alives every 10 s while the stream is quiet.
    sim.advance(Duration::from_secs(10));
    assert!(sim.client_text(c).ends_with("data: {}\r\n\r\n"));
    // The stream drops: the connection waits for a reconnect, which replays what it missed.
    sim.closed_by_peer(c);
    server_sends(
        &mut sim,
        server,
        &id,
        "{\"type\":1,\"target\":\"missed\",\"arguments\":[]}\x1e",
    );
    sim.advance(Duration::from_secs(20));
    let RequestOutcome::EventStream(back) = sim.handle(&sse("reconnect", "&messageId=1", ""))
    else {
        panic!()
    };
    assert_eq!(back, c);
    assert!(sim.client_text(c).ends_with(
        "data: {\"C\":\"2\",\"M\":[{\"H\":\"chat\",\"M\":\"missed\",\"A\":[]}]}\r\n\r\n"
    ));
    assert!(!sim.to_server[&server]
        .iter()
        .any(|m| matches!(m, ServiceMessage::CloseConnection(_))));
}

#[test]
fn classic_progress_comes_before_the_result_over_long_polling() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let (token, id) = classic_long_polling(&mut sim, server);
    let data = format!(
        "data={}",
        urlencode("{\"H\":\"chat\",\"M\":\"Count\",\"A\":[2],\"I\":7}")
    );
    let RequestOutcome::Pending(send) = sim.handle(&long_poll("send", &token, &data)) else {
        panic!()
    };
    // The first progress answers the send (empty); progress and the result follow in order.
    server_sends(
        &mut sim,
        server,
        &id,
        "{\"type\":2,\"invocationId\":\"7\",\"item\":1}\x1e{\"type\":2,\"invocationId\":\"7\",\"item\":2}\x1e{\"type\":3,\"invocationId\":\"7\",\"result\":\"done\"}\x1e",
    );
    assert_eq!(
        (sim.responses[&send].status, sim.responses[&send].body.len()),
        (200, 0)
    );
    let poll = respond(sim.handle(&long_poll("poll", &token, "messageId=0")));
    assert_eq!(
        String::from_utf8_lossy(&poll.body),
        "{\"C\":\"3\",\"M\":[{\"I\":\"P|7\",\"P\":{\"I\":\"7\",\"D\":1}},{\"I\":\"P|7\",\"P\":{\"I\":\"7\",\"D\":2}},{\"I\":\"7\",\"R\":\"done\"}]}"
    );
}

#[test]
fn a_classic_connect_without_an_app_server_is_refused_and_may_be_retried() {
    let mut sim = sim();
    let first = sim.connect_server("chat", "app-1");
    let (token, _) = classic_negotiated(&mut sim);
    sim.closed_by_peer(first);
    let refused = respond(sim.handle(&long_poll("connect", &token, "")));
    assert_eq!(refused.status, 503);
    assert_eq!(
        String::from_utf8_lossy(&refused.body),
        "No app server is connected for hub 'chat'."
    );
    let server = sim.connect_server("chat", "app-1");
    let init = respond(sim.handle(&long_poll("connect", &token, "")));
    assert_eq!(&init.body[..], b"{\"C\":\"0\",\"S\":1,\"M\":[]}");
    assert!(sim.to_server[&server]
        .iter()
        .any(|m| matches!(m, ServiceMessage::OpenConnection(_))));
}

#[test]
fn classic_connections_that_never_connect_expire_quietly() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    classic_negotiate(&mut sim);
    assert_eq!(sim.relay().client_count(), 1);
    sim.advance(Duration::from_secs(16));
    assert_eq!(sim.relay().client_count(), 0);
    assert!(!sim.to_server[&server]
        .iter()
        .any(|m| matches!(m, ServiceMessage::CloseConnection(_))));
    assert_eq!(
        sim.relay()
            .stats()
            .clients_abandoned
            .get(CloseKind::Timeout),
        1
    );
}

#[test]
fn classic_and_aspnetcore_clients_share_broadcasts_and_groups_each_in_its_own_protocol() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let (lower, lower_id) = classic_websocket(&mut sim, "chat");
    let (upper, upper_id) = classic_websocket(&mut sim, "Chat");
    let (core, core_id) = sim.connect_client("chat", None, "json");
    for id in [&lower_id, &upper_id, &core_id] {
        server_sends(&mut sim, server, id, "{}\x1e");
    }
    sim.send_service(
        server,
        &ServiceMessage::BroadcastData(service::BroadcastData {
            payloads: json_payloads("{\"type\":1,\"target\":\"news\",\"arguments\":[1]}"),
            ..service::BroadcastData::default()
        }),
    );
    assert!(sim
        .client_text(lower)
        .ends_with("{\"C\":\"1\",\"M\":[{\"H\":\"chat\",\"M\":\"news\",\"A\":[1]}]}"));
    assert!(sim
        .client_text(upper)
        .ends_with("{\"C\":\"1\",\"M\":[{\"H\":\"Chat\",\"M\":\"news\",\"A\":[1]}]}"));
    assert!(sim
        .client_text(core)
        .ends_with("{\"type\":1,\"target\":\"news\",\"arguments\":[1]}\x1e"));
    for id in [&upper_id, &core_id] {
        sim.send_service(
            server,
            &ServiceMessage::JoinGroup(service::GroupMembership {
                connection_id: id.clone(),
                group: "g".into(),
                ext: service::Ext::default(),
            }),
        );
    }
    sim.send_service(
        server,
        &ServiceMessage::GroupBroadcastData(service::GroupBroadcastData {
            group: "g".into(),
            payloads: json_payloads("{\"type\":1,\"target\":\"grp\",\"arguments\":[]}"),
            ..service::GroupBroadcastData::default()
        }),
    );
    assert!(sim
        .client_text(upper)
        .ends_with("{\"C\":\"2\",\"M\":[{\"H\":\"Chat\",\"M\":\"grp\",\"A\":[]}]}"));
    assert!(sim
        .client_text(core)
        .ends_with("\"target\":\"grp\",\"arguments\":[]}\x1e"));
    assert!(!sim.client_text(lower).contains("grp"));
    // A multicast frame that is not a push (a client result asked of everyone) goes frame by
    // frame: classic clients refuse it, one completion each.
    let before = sim.to_server[&server].len();
    sim.send_service(
        server,
        &ServiceMessage::BroadcastData(service::BroadcastData {
            payloads: json_payloads(
                "{\"type\":1,\"invocationId\":\"q\",\"target\":\"ask\",\"arguments\":[]}",
            ),
            ..service::BroadcastData::default()
        }),
    );
    let refusals = sim.to_server[&server][before..]
        .iter()
        .filter(|m| matches!(m, ServiceMessage::ConnectionData(d) if String::from_utf8_lossy(&d.payload).contains("cannot return results")))
        .count();
    assert_eq!(refusals, 2);
}

#[test]
fn the_app_server_ends_a_classic_connection_with_a_refusal_or_a_close() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let (refused, refused_id) = classic_websocket(&mut sim, "chat");
    server_sends(
        &mut sim,
        server,
        &refused_id,
        "{\"error\":\"Not today.\"}\x1e",
    );
    assert!(sim
        .client_text(refused)
        .ends_with("{\"C\":\"0\",\"E\":\"Not today.\",\"M\":[]}"));
    assert_eq!(sim.closed[&refused], vec![(1000, "Not today.".to_owned())]);
    let (closed, closed_id) = classic_websocket(&mut sim, "chat");
    server_sends(
        &mut sim,
        server,
        &closed_id,
        "{}\x1e{\"type\":7,\"error\":\"Bye.\"}\x1e",
    );
    assert!(sim
        .client_text(closed)
        .ends_with("{\"C\":\"0\",\"E\":\"Bye.\",\"M\":[]}"));
    assert_eq!(sim.relay().client_count(), 0);
    for id in [&refused_id, &closed_id] {
        assert!(sim.to_server[&server]
            .iter()
            .any(|m| matches!(m, ServiceMessage::CloseConnection(c) if &c.connection_id == id)));
    }
}

#[test]
fn what_a_classic_client_holds_is_answered_when_it_goes() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let (token, _) = classic_long_polling(&mut sim, server);
    let invoke = |n: usize| {
        format!(
            "data={}",
            urlencode(&format!(
                "{{\"H\":\"chat\",\"M\":\"Slow\",\"A\":[],\"I\":{n}}}"
            ))
        )
    };
    let held: Vec<(usize, RequestId)> = (0..64)
        .map(
            |n| match sim.handle(&long_poll("send", &token, &invoke(n))) {
                RequestOutcome::Pending(r) => (n, r),
                other => panic!("{other:?}"),
            },
        )
        .collect();
    // The 65th waits for nothing: it is refused at once, as a hub error.
    let refused = respond(sim.handle(&long_poll("send", &token, &invoke(64))));
    assert_eq!(
        String::from_utf8_lossy(&refused.body),
        "{\"I\":\"64\",\"E\":\"Too many hub invocations are waiting for their results.\"}"
    );
    let RequestOutcome::Pending(poll) = sim.handle(&long_poll("poll", &token, "messageId=0"))
    else {
        panic!()
    };
    respond(sim.handle(&long_poll("abort", &token, "")));
    for (n, r) in held {
        assert_eq!(
            String::from_utf8_lossy(&sim.responses[&r].body),
            format!(
                "{{\"I\":\"{n}\",\"E\":\"The connection closed before the method returned.\"}}"
            )
        );
    }
    // The client's own stop ends its poll cleanly, as a classic server does: no error.
    let last = String::from_utf8_lossy(&sim.responses[&poll].body).into_owned();
    assert!(
        !last.contains("\"E\"") && last.contains("\"M\":[]"),
        "{last}"
    );
}

#[test]
fn a_classic_buffer_keeps_the_newest_messages_and_polls_ack_what_they_got() {
    let config = RelayConfig {
        classic_buffer_messages: 3,
        ..RelayConfig::default()
    };
    let mut sim = Sim::with_config(epoch(), config);
    let server = sim.connect_server("chat", "app-1");
    let (token, id) = classic_long_polling(&mut sim, server);
    for n in 1..=5 {
        server_sends(
            &mut sim,
            server,
            &id,
            &format!("{{\"type\":1,\"target\":\"m\",\"arguments\":[{n}]}}\x1e"),
        );
    }
    let poll = respond(sim.handle(&long_poll("poll", &token, "messageId=0")));
    assert_eq!(
        String::from_utf8_lossy(&poll.body),
        "{\"C\":\"5\",\"M\":[{\"H\":\"chat\",\"M\":\"m\",\"A\":[3]},{\"H\":\"chat\",\"M\":\"m\",\"A\":[4]},{\"H\":\"chat\",\"M\":\"m\",\"A\":[5]}]}"
    );
    // Acked by the next poll's cursor: nothing is left to replay.
    let RequestOutcome::Pending(held) = sim.handle(&long_poll("poll", &token, "messageId=5"))
    else {
        panic!()
    };
    // An abandoned poll leaves the connection to its disconnect timeout.
    sim.abort(held);
    assert!(!sim.responses.contains_key(&held));
    let wait = |sim: &mut Sim, secs: u64| {
        for _ in 0..secs {
            sim.advance(Duration::from_secs(1));
            sim.send_service(server, &ServiceMessage::Ping(service::Ping::default()));
        }
    };
    wait(&mut sim, 29);
    assert_eq!(sim.relay().client_count(), 1);
    wait(&mut sim, 2);
    assert_eq!(sim.relay().client_count(), 0);
    assert!(sim.to_server[&server]
        .iter()
        .any(|m| matches!(m, ServiceMessage::CloseConnection(c) if c.connection_id == id)));
}

#[test]
fn classic_requests_out_of_order_or_for_the_other_family_are_refused() {
    let mut sim = sim();
    sim.connect_server("chat", "app-1");
    let (token, _) = classic_negotiated(&mut sim);
    let status = |sim: &mut Sim, req: HttpRequest| respond(sim.handle(&req)).status;
    assert_eq!(status(&mut sim, long_poll("start", &token, "")), 400);
    assert_eq!(status(&mut sim, long_poll("reconnect", &token, "")), 400);
    let no_upgrade = classic("connect", "transport=webSockets", Some(&token), "", false);
    assert_eq!(status(&mut sim, no_upgrade), 400);
    assert_eq!(
        status(&mut sim, classic("nonsense", "", None, "", false)),
        404
    );
    let pong = respond(sim.handle(&classic("ping", "", None, "", false)));
    assert_eq!(&pong.body[..], b"{ \"Response\": \"pong\" }");
    // A classic token on an ASP.NET Core endpoint names no ASP.NET Core connection ...
    let core = request(
        "GET",
        "/client/",
        &format!("hub=chat&id={token}"),
        Some(&super::token("/client/", "chat", Some("alice"), 3600, KEY)),
        false,
    );
    assert_eq!(status(&mut sim, core), 404);
    // ... and an ASP.NET Core token names no classic one.
    let core_token = sim.negotiate("chat", Some("alice")).unwrap();
    assert_eq!(status(&mut sim, long_poll("connect", &core_token, "")), 400);
    assert_eq!(sim.relay().client_count(), 2);
}

/// A classic token names the hub the app authorized; the relay refuses a negotiate for any
/// other hub, and one whose token names no hub at all.
#[test]
fn classic_tokens_are_bound_to_their_hub() {
    let mut sim = sim();
    sim.connect_server("chat", "app");
    sim.connect_server("testhub", "app");
    let status = |sim: &mut Sim, req: HttpRequest| respond(sim.handle(&req)).status;
    let mut for_chat = classic_request("negotiate", "testhub", "", None, "", false, Some("alice"));
    for_chat.headers = [(
        "Authorization",
        format!("Bearer {}", classic_token("chat", Some("alice"))),
    )]
    .into_iter()
    .collect();
    assert_eq!(status(&mut sim, for_chat), 401);
    let mut claims = crate::auth::Claims::issued_at(crate::relay::sim::T0, 3600);
    claims.aud.push("http://localhost/aspnetclient".to_owned());
    let unbound = crate::auth::sign(&claims, KEY.as_bytes(), crate::auth::Algorithm::Hs256);
    let mut no_hub = classic("negotiate", "", None, "", false);
    no_hub.headers = [("Authorization", format!("Bearer {unbound}"))]
        .into_iter()
        .collect();
    assert_eq!(status(&mut sim, no_hub), 401);
    assert!(sim.classic_negotiate("testhub", Some("alice")).is_ok());
    assert!(sim.classic_negotiate("chat", Some("alice")).is_ok());
}

#[test]
fn classic_hub_errors_are_hub_exceptions_with_their_data() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let (token, connection_id) = classic_long_polling(&mut sim, server);
    respond(sim.handle(&long_poll("start", &token, "")));
    let send = |sim: &mut Sim, id: u32, completion: &str| {
        let data = format!("{{\"H\":\"chat\",\"M\":\"Fail\",\"A\":[],\"I\":{id}}}");
        let RequestOutcome::Pending(send) = sim.handle(&long_poll(
            "send",
            &token,
            &format!("data={}", urlencode(&data)),
        )) else {
            panic!()
        };
        server_sends(sim, server, &connection_id, completion);
        String::from_utf8_lossy(&sim.responses[&send].body).into_owned()
    };
    // Every error an app server shows is a HubException (H); its data header becomes D.
    assert_eq!(
        send(
            &mut sim,
            1,
            "{\"type\":3,\"invocationId\":\"1\",\"error\":\"plain\"}\x1e"
        ),
        "{\"I\":\"1\",\"E\":\"plain\",\"H\":true}"
    );
    assert_eq!(
        send(
            &mut sim,
            2,
            "{\"type\":3,\"invocationId\":\"2\",\"error\":\"with data\",\"headers\":{\"asrs.classic.errordata\":\"{\\\"code\\\":42}\"}}\x1e"
        ),
        "{\"I\":\"2\",\"E\":\"with data\",\"H\":true,\"D\":{\"code\":42}}"
    );
    // Data that is not JSON is dropped, not passed on as text.
    assert_eq!(
        send(
            &mut sim,
            3,
            "{\"type\":3,\"invocationId\":\"3\",\"error\":\"bad data\",\"headers\":{\"asrs.classic.errordata\":\"{oops\"}}\x1e"
        ),
        "{\"I\":\"3\",\"E\":\"bad data\",\"H\":true}"
    );
    // A classic invocation always carries a state (`{}` without `S`): the app server knows
    // its caller is classic, and sends the data only then.
    let invocation: serde_json::Value =
        serde_json::from_str(last_payload_to(&sim, server).trim_end_matches('\x1e')).unwrap();
    assert_eq!(invocation["headers"][STATE_HEADER], "{}");
}

/// A `/connect` refused for want of an app server leaves the client negotiated, not listed
/// under its user: the user does not exist for the REST API, and is in none of its groups.
#[test]
fn a_classic_connect_refused_for_want_of_an_app_server_lists_no_user() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let (token, _id) = classic_negotiated(&mut sim);
    sim.closed_by_peer(server);
    let refused = respond(sim.handle(&long_poll("connect", &token, "")));
    assert_ne!(refused.status, 200, "{refused:?}");
    let head = super::rest::rest(
        "HEAD",
        "/api/hubs/chat/users/alice",
        "api-version=2022-06-01",
        b"",
    );
    assert_eq!(respond(sim.handle(&head)).status, 404);
}
