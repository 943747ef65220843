//! The policy claims an Azure SDK app server writes into client tokens (`asrs.s.*`): sticky
//! servers, allowed transports, the handshake and poll timeouts, closing when authentication
//! expires, and diagnostic clients.

use super::*;

/// A client token for `chat` with the SDK's claims `extra`.
fn token_with(extra: &[(&str, &str)]) -> String {
    let mut claims = Claims::issued_at(T0, 3600);
    claims
        .aud
        .push("http://localhost/client/?hub=chat".to_owned());
    claims.insert("asrs.s.uid", "u");
    for (k, v) in extra {
        claims.insert(*k, *v);
    }
    sign(&claims, KEY.as_bytes(), Algorithm::Hs256)
}

/// Negotiates, opens a WebSocket and sends a JSON handshake with `bearer`.
fn connect_with(sim: &mut Sim, bearer: &str) -> ConnHandle {
    let NegotiateResponse::Connection(info) = negotiate_with(sim, bearer) else {
        panic!("negotiate refused")
    };
    let id = info.connection_token.expect("a token");
    websocket_with(sim, bearer, &id)
}

fn websocket_with(sim: &mut Sim, bearer: &str, id: &str) -> ConnHandle {
    let ws = request(
        "GET",
        "/client/",
        &format!("hub=chat&id={id}"),
        Some(bearer),
        true,
    );
    let RequestOutcome::AcceptWebSocket(c) = sim.handle(&ws) else {
        panic!("refused")
    };
    sim.data(c, b"{\"protocol\":\"json\",\"version\":1}\x1e");
    c
}

#[test]
fn a_sticky_required_client_lands_on_its_server_every_time_and_never_elsewhere() {
    let mut sim = sim();
    let mut app1 = Vec::new();
    let mut app2 = Vec::new();
    for _ in 0..3 {
        app1.push(sim.connect_server("chat", "app-1"));
        app2.push(sim.connect_server("chat", "app-2"));
    }
    let required = token_with(&[("asrs.s.sn", "app-2"), ("asrs.s.ssticky", "Required")]);
    for _ in 0..30 {
        let c = connect_with(&mut sim, &required);
        assert!(app2.contains(&sim.server_of(c)), "on app-2");
    }
    // Spread over app-2's connections, the least loaded first.
    for s in &app2 {
        assert_eq!(sim.clients_of(*s), 10);
    }
    // Unnamed clients still go to the least loaded of all: app-1's.
    let plain = token("/client/", "chat", Some("u"), 3600, KEY);
    let c = connect_with(&mut sim, &plain);
    assert!(app1.contains(&sim.server_of(c)));

    // A client negotiated while app-2 was there, connecting after it left: its handshake
    // fails, saying why, and it never lands on app-1.
    let NegotiateResponse::Connection(info) = negotiate_with(&mut sim, &required) else {
        panic!("negotiated")
    };
    for s in &app2 {
        sim.closed_by_peer(*s);
    }
    let late = websocket_with(&mut sim, &required, &info.connection_token.expect("token"));
    assert!(!sim.is_open(late));
    let said = sim.client_text(late);
    assert!(
        said.contains("'app-2'") && said.contains("Negotiate again"),
        "{said}"
    );
    // And negotiate says so at once.
    let NegotiateResponse::Error(error) = negotiate_with(&mut sim, &required) else {
        panic!("refused")
    };
    assert!(error.contains("'app-2'"), "{error}");
    assert!(app1.iter().all(|s| sim.clients_of(*s) <= 1));
}

#[test]
fn a_sticky_preferred_client_falls_back_to_the_least_loaded() {
    let mut sim = sim();
    let app1 = sim.connect_server("chat", "app-1");
    let app2 = sim.connect_server("chat", "app-2");
    let preferred = token_with(&[("asrs.s.sn", "app-2"), ("asrs.s.ssticky", "Preferred")]);
    for _ in 0..4 {
        let c = connect_with(&mut sim, &preferred);
        assert_eq!(sim.server_of(c), app2);
    }
    sim.closed_by_peer(app2);
    let c = connect_with(&mut sim, &preferred);
    assert_eq!(sim.server_of(c), app1);
    assert!(sim.is_open(c));
}

#[test]
fn only_the_transports_the_token_allows_are_offered_and_taken() {
    let mut sim = sim();
    sim.connect_server("chat", "app-1");
    // 4: long polling only.
    let bearer = token_with(&[("asrs.s.htt", "4")]);
    let NegotiateResponse::Connection(info) = negotiate_with(&mut sim, &bearer) else {
        panic!("negotiated")
    };
    let offered: Vec<_> = info
        .available_transports
        .iter()
        .map(|t| t.transport)
        .collect();
    assert_eq!(offered, [TransportKind::LongPolling]);
    let id = info.connection_token.expect("a token");
    let ws = request(
        "GET",
        "/client/",
        &format!("hub=chat&id={id}"),
        Some(&bearer),
        true,
    );
    let refused = respond(sim.handle(&ws));
    assert_eq!(refused.status, 404);
    assert!(String::from_utf8_lossy(&refused.body).contains("WebSockets transport not allowed"));
    let mut sse = connection_request(
        "GET",
        "chat",
        &id,
        Some("u"),
        Some("text/event-stream"),
        b"",
    );
    bear(&mut sse, &bearer);
    assert_eq!(respond(sim.handle(&sse)).status, 404);
    // Skipping negotiation does not get around it.
    let skip = request("GET", "/client/", "hub=chat", Some(&bearer), true);
    assert_eq!(respond(sim.handle(&skip)).status, 404);
    // Long polling works.
    let mut poll = sse.clone();
    poll.headers
        .retain(|(k, _)| !k.eq_ignore_ascii_case("accept"));
    assert_eq!(respond(sim.handle(&poll)).status, 200);
}

#[test]
fn the_token_sets_the_handshake_timeout_and_the_poll_interval() {
    let mut sim = sim();
    sim.connect_server("chat", "app-1");
    // cht: 3 s to send the handshake, instead of 15.
    let quick = token_with(&[("asrs.s.cht", "3")]);
    let NegotiateResponse::Connection(info) = negotiate_with(&mut sim, &quick) else {
        panic!("negotiated")
    };
    let id = info.connection_token.expect("a token");
    let ws = request(
        "GET",
        "/client/",
        &format!("hub=chat&id={id}"),
        Some(&quick),
        true,
    );
    let RequestOutcome::AcceptWebSocket(c) = sim.handle(&ws) else {
        panic!("refused")
    };
    let plain = token("/client/", "chat", Some("u"), 3600, KEY);
    let NegotiateResponse::Connection(info) = negotiate_with(&mut sim, &plain) else {
        panic!("negotiated")
    };
    let other_id = info.connection_token.expect("a token");
    let ws = request(
        "GET",
        "/client/",
        &format!("hub=chat&id={other_id}"),
        Some(&plain),
        true,
    );
    let RequestOutcome::AcceptWebSocket(other) = sim.handle(&ws) else {
        panic!("refused")
    };
    sim.advance(Duration::from_millis(2900));
    assert!(!sim.is_done(c));
    sim.advance(Duration::from_millis(200));
    assert!(sim.is_done(c), "its handshake timed out at 3 s");
    assert!(!sim.is_done(other), "the relay's 15 s for the others");

    // ttl: 2 s between polls, instead of the negotiate timeout.
    let bearer = token_with(&[("asrs.s.ttl", "2")]);
    let NegotiateResponse::Connection(info) = negotiate_with(&mut sim, &bearer) else {
        panic!("negotiated")
    };
    let id = info.connection_token.expect("a token");
    let mut poll = connection_request("GET", "chat", &id, Some("u"), None, b"");
    bear(&mut poll, &bearer);
    assert_eq!(respond(sim.handle(&poll)).status, 200);
    let mut send = poll.clone();
    send.method = "POST".into();
    send.body = Bytes::from_static(b"{\"protocol\":\"json\",\"version\":1}\x1e");
    assert_eq!(respond(sim.handle(&send)).status, 200);
    assert_eq!(
        sim.relay().stats().clients_closed.get(CloseKind::Timeout),
        0
    );
    sim.advance(Duration::from_millis(1900));
    assert_eq!(
        sim.relay().stats().clients_closed.get(CloseKind::Timeout),
        0
    );
    sim.advance(Duration::from_millis(200));
    assert_eq!(
        sim.relay().stats().clients_closed.get(CloseKind::Timeout),
        1,
        "it stopped polling for 2 s"
    );
}

#[test]
fn a_client_is_closed_when_its_authentication_expires_if_its_token_asks() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let expires = (T0 + 100).to_string();
    let bearer = token_with(&[("asrs.s.coae", "true"), ("asrs.s.aeo", &expires)]);
    let c = connect_with(&mut sim, &bearer);
    let id = sim.connection_id(c).to_owned();
    sim.accept_handshake(c, &id);
    // Without coae, the same expiry means nothing.
    let relaxed = token_with(&[("asrs.s.aeo", &expires)]);
    let other = connect_with(&mut sim, &relaxed);
    let other_id = sim.connection_id(other).to_owned();
    sim.accept_handshake(other, &other_id);
    // Keep both alive past the expiry: the first is open until then, and closed at it.
    for second in (4..=120).step_by(4) {
        sim.advance(Duration::from_secs(4));
        assert_eq!(sim.is_done(c), second >= 100, "at {second} s");
        if sim.is_done(c) {
            break;
        }
        sim.data(c, b"{\"type\":6}\x1e");
        sim.data(other, b"{\"type\":6}\x1e");
        sim.send_service(server, &ServiceMessage::Ping(service::Ping::default()));
    }
    let said = sim.client_text(c);
    assert!(said.contains("authentication expired"), "{said}");
    assert!(sim.client_text(c).contains("\"allowReconnect\":true"));
    assert!(!sim.is_done(other));
    assert_eq!(
        sim.relay()
            .stats()
            .clients_closed
            .get(CloseKind::AuthExpired),
        1
    );
    // Its app server is told.
    assert!(sim.to_server[&server]
        .iter()
        .any(|m| matches!(m, ServiceMessage::CloseConnection(close) if close.connection_id == id)));
}

#[test]
fn a_diagnostic_client_is_marked_in_open_connection() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    connect_with(&mut sim, &token_with(&[("asrs.s.dc", "true")]));
    connect_with(&mut sim, &token("/client/", "chat", Some("u"), 3600, KEY));
    let marks: Vec<bool> = sim.to_server[&server]
        .iter()
        .filter_map(|m| match m {
            ServiceMessage::OpenConnection(o) => Some(
                o.headers
                    .iter()
                    .any(|(k, v)| k == "Asrs-Is-Diagnostic-Client" && v == &["true".to_owned()]),
            ),
            _ => None,
        })
        .collect();
    assert_eq!(marks, [true, false]);
}

/// Makes `req` carry `bearer` instead of the token it was built with.
fn bear(req: &mut HttpRequest, bearer: &str) {
    req.headers
        .retain(|(k, _)| !k.eq_ignore_ascii_case("authorization"));
    req.headers
        .push("Authorization", &format!("Bearer {bearer}"));
}
