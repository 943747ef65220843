//! Negotiate and admission: tokens, audiences, hubs without app servers, unknown ids.

use super::*;

#[test]
fn negotiate_checks_the_token() {
    let mut sim = sim();
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
fn a_token_the_gate_verified_is_taken_only_for_itself_and_only_in_date() {
    let mut sim = sim();
    sim.connect_server("chat", "app-1");
    let gate = sim.relay().gate();
    let negotiate = |bearer: &str| {
        request(
            "POST",
            "/client/negotiate",
            "hub=chat&negotiateVersion=1",
            Some(bearer),
            false,
        )
    };
    let status = |sim: &mut Sim, req: &HttpRequest| match sim.handle(req) {
        RequestOutcome::Respond(r) => (r.status, String::from_utf8_lossy(&r.body).into_owned()),
        other => panic!("{other:?}"),
    };
    // The gate verifies a good token once, and the relay takes its word for it.
    let good = token("/client/", "chat", None, 60, KEY);
    let mut req = negotiate(&good);
    let (limit, verified) = gate.check(sim.now(), &req).expect("a good token");
    assert_eq!(limit, NEGOTIATE_BODY_LIMIT);
    let verified = verified.expect("the token it verified");
    req.verified = Some(verified.clone());
    assert_eq!(status(&mut sim, &req).0, 200);
    // Handed over with a request that bears another token, it counts for nothing: that
    // token is verified as ever.
    let mut forged = negotiate(&token("/client/", "chat", None, 60, "wrong-key"));
    forged.verified = Some(verified.clone());
    let (code, body) = status(&mut sim, &forged);
    assert_eq!((code, body.contains("signature")), (401, true), "{body}");
    // Its times are the relay's to check again: once the token expired, it is refused.
    sim.advance(Duration::from_secs(3600));
    let (code, body) = status(&mut sim, &req);
    assert_eq!((code, body.contains("expired")), (401, true), "{body}");
    // And the gate refuses what the relay would.
    assert!(gate
        .check(
            sim.now(),
            &negotiate(&token("/client/", "chat", None, 60, "x"))
        )
        .is_err());
}

#[test]
fn negotiate_without_an_app_server_is_a_clear_error() {
    let mut sim = sim();
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
    let mut sim = sim();
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
    let mut sim = sim();
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

/// With `negotiateVersion=0` the connection token is the connection id, which is no secret.
/// An anonymous connection answers only the exact access token it negotiated with: another
/// anonymous token for the same hub cannot poll it, send on it or take its WebSocket.
#[test]
fn an_anonymous_public_connection_answers_only_the_access_token_it_negotiated_with() {
    let mut sim = sim();
    sim.connect_server("chat", "app");
    let mine = token("/client/", "chat", None, 3600, KEY);
    let theirs = token("/client/", "chat", None, 7200, KEY);
    // Version 0: the id is the token.
    let id = negotiate_token(&mut sim, 0, &mine);
    let on = |method: &str, bearer: &str, websocket: bool| {
        bearing(method, "chat", &id, bearer, websocket)
    };
    for (method, websocket) in [
        ("GET", false),
        ("POST", false),
        ("DELETE", false),
        ("GET", true),
    ] {
        let refused = sim.handle(&on(method, &theirs, websocket));
        assert!(
            matches!(&refused, RequestOutcome::Respond(r) if r.status == 403),
            "{method} (websocket: {websocket}): {refused:?}"
        );
    }
    // Its own token still works: the first poll starts the connection.
    assert_eq!(respond(sim.handle(&on("GET", &mine, false))).status, 200);
}

/// An upgrade bearing the very token its connection negotiated with is not decoded again
/// (the shortcut answers it), but it is checked for its times again: one that expired since
/// the negotiate is refused as an expired token is (401). Any other token takes the whole
/// check: a forged one gets 401, another good one 403.
#[test]
fn the_negotiated_token_is_checked_for_its_times_again_at_the_upgrade() {
    // No timeout the test depends on but the token's own (20 s, without leeway); the first
    // client's handshake timer fires on the way, and ends only that client.
    let config = RelayConfig {
        negotiate_timeout: Duration::from_secs(3600),
        token_leeway: Duration::ZERO,
        ..RelayConfig::default()
    };
    let mut sim = Sim::with_config(epoch(), config);
    sim.connect_server("chat", "app");
    sim.connect_server("other", "app");
    let negotiate = |sim: &mut Sim, bearer: &str| match negotiate_with(sim, bearer) {
        NegotiateResponse::Connection(info) => info.connection_token.unwrap(),
        other => panic!("{other:?}"),
    };
    let upgrade = |id: &str, bearer: &str| {
        request(
            "GET",
            "/client/",
            &format!("hub=chat&id={id}"),
            Some(bearer),
            true,
        )
    };
    let short = token("/client/", "chat", Some("u1"), 20, KEY);
    let early = negotiate(&mut sim, &short);
    // The shortcut itself takes it, not the whole check.
    let (relay, now) = sim.relay_mut();
    let taken = relay.upgrade_negotiated(now, &upgrade(&early, &short), &early);
    assert!(
        matches!(taken, Some(Ok(RequestOutcome::AcceptWebSocket(_)))),
        "{taken:?}"
    );
    sim.advance(Duration::from_secs(10));
    let late = negotiate(&mut sim, &short);
    // On another hub's endpoint the very token gets the whole check: its audience is chat's.
    let elsewhere = request(
        "GET",
        "/client/",
        &format!("hub=other&id={late}"),
        Some(&short),
        true,
    );
    let wrong = respond(sim.handle(&elsewhere));
    assert_eq!(wrong.status, 401, "{wrong:?}");
    // A forged token (the negotiated one with its signature changed), still in date, is not
    // the negotiated one: the whole check refuses it, 401 (the shortcut would have let the
    // relay answer 403, its owner's check).
    let (head, signature) = short.rsplit_once('.').unwrap();
    let mut forged_signature = signature.as_bytes().to_vec();
    forged_signature[10] = if forged_signature[10] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let forged = format!("{head}.{}", String::from_utf8(forged_signature).unwrap());
    let forged_refused = respond(sim.handle(&upgrade(&late, &forged)));
    assert_eq!(forged_refused.status, 401, "{forged_refused:?}");
    sim.advance(Duration::from_secs(15));
    let refused = respond(sim.handle(&upgrade(&late, &short)));
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.body).contains("expired"),
        "{refused:?}"
    );
    // Another user's good token gets the whole check, which answers 403; another good token
    // of the same user is not the negotiated one either: the shortcut leaves it, and the
    // whole check takes it.
    let theirs = token("/client/", "chat", Some("u2"), 3600, KEY);
    let not_owner = respond(sim.handle(&upgrade(&late, &theirs)));
    assert_eq!(not_owner.status, 403, "{not_owner:?}");
    let other = token("/client/", "chat", Some("u1"), 3600, KEY);
    let (relay, now) = sim.relay_mut();
    assert!(relay
        .upgrade_negotiated(now, &upgrade(&late, &other), &late)
        .is_none());
    let taken = sim.handle(&upgrade(&late, &other));
    assert!(
        matches!(taken, RequestOutcome::AcceptWebSocket(_)),
        "{taken:?}"
    );
}

/// A client whose `accessTokenFactory` signs a new token per call bears one token at its
/// negotiate and another at its transport. Another token acts for a connection when it
/// names the same user; an anonymous connection takes another anonymous token only when its
/// connection token is a secret (version 1), not when it is the public connection id
/// (version 0). Another user's token never does.
#[test]
fn another_token_acts_for_a_connection_as_the_same_user() {
    let config = RelayConfig {
        negotiate_timeout: Duration::from_secs(3600),
        ..RelayConfig::default()
    };
    let mut sim = Sim::with_config(epoch(), config);
    sim.connect_server("chat", "app");
    // Its token on each call: a new `exp` makes each text differ, as a factory's would.
    let mut ttl = 3600;
    let mut mint = |user: Option<&str>| {
        ttl += 1;
        token("/client/", "chat", user, ttl, KEY)
    };
    let on = |id: &str, method: &str, bearer: &str, websocket: bool| {
        bearing(method, "chat", id, bearer, websocket)
    };
    // Each case: the negotiate's user, the version, the later requests' user, and whether
    // they are taken.
    let cases = [
        (Some("u1"), 1, Some("u1"), true),
        (Some("u1"), 0, Some("u1"), true),
        (None, 1, None, true),
        (None, 0, None, false),
        (Some("u1"), 1, Some("u2"), false),
        (Some("u1"), 1, None, false),
        (None, 1, Some("u1"), false),
    ];
    for (negotiated, version, later, taken) in cases {
        let case = format!("{negotiated:?} v{version}, then {later:?}");
        // Long polling: the first poll, a send, and the DELETE that ends it.
        let own = mint(negotiated);
        let id = negotiate_token(&mut sim, version, &own);
        let poll = respond(sim.handle(&on(&id, "GET", &mint(later), false)));
        if !taken {
            assert_eq!(poll.status, 403, "{case}: {poll:?}");
            // Its very own token still can.
            let own = respond(sim.handle(&on(&id, "GET", &own, false)));
            assert_eq!(own.status, 200, "{case}: {own:?}");
        } else {
            assert_eq!(poll.status, 200, "{case}: {poll:?}");
        }
        let mut send = on(&id, "POST", &mint(later), false);
        send.body = Bytes::from_static(b"{\"protocol\":\"json\",\"version\":1}\x1e");
        let sent = respond(sim.handle(&send));
        assert_eq!(
            sent.status,
            if taken { 200 } else { 403 },
            "{case}: {sent:?}"
        );
        let ended = respond(sim.handle(&on(&id, "DELETE", &mint(later), false)));
        assert_eq!(
            ended.status,
            if taken { 202 } else { 403 },
            "{case}: {ended:?}"
        );
        // A WebSocket.
        let id = negotiate_token(&mut sim, version, &mint(negotiated));
        let upgrade = sim.handle(&on(&id, "GET", &mint(later), true));
        if taken {
            assert!(
                matches!(upgrade, RequestOutcome::AcceptWebSocket(_)),
                "{case}: {upgrade:?}"
            );
        } else {
            assert_eq!(respond(upgrade).status, 403, "{case}");
        }
    }
}

/// What pending negotiates keep is bounded: the query by length, the connections by token
/// and in total.
#[test]
fn negotiates_are_bounded_by_query_length_per_token_and_in_total() {
    let config = RelayConfig {
        max_connections_per_token: 3,
        max_clients: 5,
        ..RelayConfig::default()
    };
    let mut sim = Sim::with_config(epoch(), config);
    sim.connect_server("chat", "app");
    let negotiate = |sim: &mut Sim, bearer: &str, extra: &str| {
        let req = request(
            "POST",
            "/client/negotiate",
            &format!("hub=chat&negotiateVersion=1{extra}"),
            Some(bearer),
            false,
        );
        respond(sim.handle(&req)).status
    };
    let one = token("/client/", "chat", Some("u1"), 3600, KEY);
    let long = format!("&pad={}", "x".repeat(9 * 1024));
    assert_eq!(negotiate(&mut sim, &one, &long), 414);
    for _ in 0..3 {
        assert_eq!(negotiate(&mut sim, &one, ""), 200);
    }
    assert_eq!(negotiate(&mut sim, &one, ""), 429, "the token's cap");
    let two = token("/client/", "chat", Some("u2"), 3600, KEY);
    assert_eq!(negotiate(&mut sim, &two, ""), 200);
    assert_eq!(negotiate(&mut sim, &two, ""), 200);
    let three = token("/client/", "chat", Some("u3"), 3600, KEY);
    assert_eq!(negotiate(&mut sim, &three, ""), 503, "the relay's cap");
    // Once the pending ones expire, the token may negotiate again.
    sim.advance(RelayConfig::default().negotiate_timeout + Duration::from_secs(1));
    assert_eq!(negotiate(&mut sim, &one, ""), 200);
}

/// A token of the same user for another hub does not act for a connection: its request names
/// the other hub, which the connection is not on.
#[test]
fn a_token_for_another_hub_does_not_act_for_a_connection() {
    let mut sim = sim();
    sim.connect_server("chat", "app");
    sim.connect_server("other", "app");
    let NegotiateResponse::Connection(info) =
        negotiate_with(&mut sim, &token("/client/", "chat", Some("u1"), 3600, KEY))
    else {
        panic!("no connection")
    };
    let id = info.connection_token.unwrap();
    let elsewhere = token("/client/", "other", Some("u1"), 3600, KEY);
    for (method, websocket) in [("GET", false), ("POST", false), ("GET", true)] {
        let req = bearing(method, "other", &id, &elsewhere, websocket);
        let refused = respond(sim.handle(&req));
        assert_eq!(refused.status, 404, "{method} {websocket}: {refused:?}");
    }
    // The connection is still there for its own hub.
    let own = connection_request("GET", "chat", &id, Some("u1"), None, b"");
    assert_eq!(respond(sim.handle(&own)).status, 200);
}

/// A closed long-polling connection keeps what it owed its client's next poll: only a
/// request that could act for the open connection gets it. With `negotiateVersion=0` the id
/// is public; another user's token, or the same user's for another hub, gets nothing.
#[test]
fn a_closed_long_polling_connection_answers_only_its_owner() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app");
    sim.connect_server("other", "app");
    let mine = token("/client/", "chat", Some("u1"), 3600, KEY);
    let id = negotiate_token(&mut sim, 0, &mine);
    let on = |hub: &str, bearer: &str, body: &[u8]| {
        let method = if body.is_empty() { "GET" } else { "POST" };
        let mut req = bearing(method, hub, &id, bearer, false);
        req.body = Bytes::copy_from_slice(body);
        req
    };
    respond(sim.handle(&on("chat", &mine, b"")));
    respond(sim.handle(&on(
        "chat",
        &mine,
        b"{\"protocol\":\"json\",\"version\":1}\x1e",
    )));
    server_sends(
        &mut sim,
        server,
        &id,
        "{\"type\":1,\"target\":\"secret\",\"arguments\":[]}\x1e",
    );
    sim.send_service(
        server,
        &ServiceMessage::CloseConnection(service::CloseConnection {
            connection_id: id.clone(),
            ..service::CloseConnection::default()
        }),
    );
    assert_eq!(sim.relay().client_count(), 0, "the connection is closed");
    let theirs = token("/client/", "chat", Some("u2"), 3600, KEY);
    let stolen = respond(sim.handle(&on("chat", &theirs, b"")));
    assert_eq!(stolen.status, 403, "{stolen:?}");
    let elsewhere = token("/client/", "other", Some("u1"), 3600, KEY);
    let astray = respond(sim.handle(&on("other", &elsewhere, b"")));
    assert_eq!(astray.status, 403, "{astray:?}");
    // Its owner, with another token of its own, gets what was left, once.
    let again = token("/client/", "chat", Some("u1"), 7200, KEY);
    let last = respond(sim.handle(&on("chat", &again, b"")));
    assert_eq!(last.status, 200);
    assert!(
        String::from_utf8_lossy(&last.body).contains("\"target\":\"secret\""),
        "{last:?}"
    );
    assert_eq!(respond(sim.handle(&on("chat", &again, b""))).status, 204);
}
