//! The REST API (`rest.rs`) against clients served by an app server: every kind of send,
//! memberships, existence checks, closes, and who may call it.

use super::*;

/// A REST request signed for its own URL, as the Management SDK signs it (the audience has
/// the `api-version`; `excluded` and `reason` come after signing).
pub(super) fn rest(method: &str, path: &str, query: &str, body: &[u8]) -> HttpRequest {
    let signed_query = query
        .split('&')
        .filter(|p| p.starts_with("api-version="))
        .collect::<Vec<_>>()
        .join("&");
    let mut claims = Claims::issued_at(T0, 3600);
    claims
        .aud
        .push(format!("http://localhost{path}?{signed_query}"));
    let token = sign(&claims, KEY.as_bytes(), Algorithm::Hs256);
    rest_with(method, path, query, body, Some(&token))
}

fn rest_with(
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    token: Option<&str>,
) -> HttpRequest {
    let mut req = request(method, path, query, token, false);
    req.body = Bytes::copy_from_slice(body);
    req.headers.push("Content-Type", "application/json");
    req
}

fn status(sim: &mut Sim, req: &HttpRequest) -> (u16, Option<String>) {
    let r = respond(sim.handle(req));
    let code = r
        .headers
        .iter()
        .find(|(k, _)| *k == "x-ms-error-code")
        .map(|(_, v)| v.clone());
    (r.status, code)
}

const V2: &str = "api-version=2022-06-01";

fn body(target: &str) -> Vec<u8> {
    format!("{{\"Target\":\"{target}\",\"Arguments\":[\"{target}!\"]}}").into_bytes()
}

#[test]
fn every_kind_of_send_reaches_its_clients_in_their_protocol() {
    let mut sim = sim();
    sim.connect_server("chat", "app-1");
    let (a, a_id) = sim.connect_client("chat", Some("alice"), "json");
    let (b, b_id) = sim.connect_client("chat", Some("bob"), "messagepack");
    sim.accept_handshake(a, &a_id);
    sim.accept_handshake(b, &b_id);

    let excluded = format!("{V2}&excluded={a_id}");
    assert_eq!(
        status(
            &mut sim,
            &rest("POST", "/api/hubs/chat/:send", &excluded, &body("all"))
        )
        .0,
        202
    );
    assert!(!sim.client_text(a).contains("all!"), "excluded");
    assert!(
        sim.client_text(b).contains("all!"),
        "MessagePack, encoded by the relay"
    );

    let to = |path: &str| rest("POST", path, "", &body("one"));
    assert_eq!(
        status(&mut sim, &to("/api/v1/hubs/chat/users/alice")).0,
        202
    );
    assert!(sim
        .client_text(a)
        .contains("{\"type\":1,\"target\":\"one\",\"arguments\":[\"one!\"]}\x1e"));
    assert!(!sim.client_text(b).contains("one!"));
    assert_eq!(
        status(
            &mut sim,
            &to(&format!("/api/v1/hubs/chat/connections/{b_id}"))
        )
        .0,
        202
    );
    assert!(sim.client_text(b).contains("one!"));

    // A group, joined through the API, with a member excluded.
    for id in [&a_id, &b_id] {
        let join = rest(
            "PUT",
            &format!("/api/hubs/chat/groups/team/connections/{id}"),
            V2,
            b"",
        );
        assert_eq!(status(&mut sim, &join), (200, None));
    }
    let group = rest(
        "POST",
        "/api/hubs/chat/groups/team/:send",
        &format!("{V2}&excluded={b_id}"),
        &body("grp"),
    );
    assert_eq!(status(&mut sim, &group).0, 202);
    assert!(sim.client_text(a).contains("grp!") && !sim.client_text(b).contains("grp!"));
    // Another hub's send reaches none of these.
    assert_eq!(
        status(
            &mut sim,
            &rest("POST", "/api/v1/hubs/other", "", &body("x"))
        )
        .0,
        202
    );
    assert!(!sim.client_text(a).contains("x!"));
}

#[test]
fn existence_checks_answer_200_or_404_with_azures_error_codes() {
    let mut sim = sim();
    sim.connect_server("chat", "app-1");
    let (a, a_id) = sim.connect_client("chat", Some("alice"), "json");
    sim.accept_handshake(a, &a_id);
    let head = |path: String| rest("HEAD", &path, V2, b"");
    let cases = [
        (format!("/api/hubs/chat/connections/{a_id}"), 200, None),
        (
            "/api/hubs/chat/connections/nobody".to_owned(),
            404,
            Some("Warning.Connection.NotExisted"),
        ),
        ("/api/hubs/chat/users/alice".to_owned(), 200, None),
        (
            "/api/hubs/chat/users/bob".to_owned(),
            404,
            Some("Warning.User.NotExisted"),
        ),
        (
            "/api/hubs/chat/groups/g".to_owned(),
            404,
            Some("Warning.Group.NotExisted"),
        ),
        (
            "/api/hubs/chat/users/alice/groups/g".to_owned(),
            404,
            Some("Info.User.NotInGroup"),
        ),
        // A connection of this hub is not one of another's.
        (
            format!("/api/hubs/other/connections/{a_id}"),
            404,
            Some("Warning.Connection.NotExisted"),
        ),
    ];
    for (path, want, code) in &cases {
        assert_eq!(
            status(&mut sim, &head(path.clone())),
            (*want, code.map(str::to_owned)),
            "{path}"
        );
    }
    let join = rest("PUT", "/api/hubs/chat/users/alice/groups/g", V2, b"");
    assert_eq!(status(&mut sim, &join), (200, None));
    assert_eq!(
        status(&mut sim, &head("/api/hubs/chat/groups/g".into())).0,
        200
    );
    assert_eq!(
        status(
            &mut sim,
            &rest("GET", "/api/v1/hubs/chat/groups/g/users/alice", "", b"")
        )
        .0,
        200
    );
    let missing = rest("PUT", "/api/hubs/chat/groups/g/connections/nobody", V2, b"");
    assert_eq!(
        status(&mut sim, &missing),
        (404, Some("Error.Connection.NotExisted".into()))
    );
}

#[test]
fn a_user_added_to_a_group_before_connecting_is_in_it_on_arrival_until_the_ttl() {
    let mut sim = sim();
    sim.connect_server("chat", "app-1");
    let put = |user: &str, query: &str| {
        rest(
            "PUT",
            &format!("/api/v1/hubs/chat/groups/vip/users/{user}"),
            query,
            b"",
        )
    };
    assert_eq!(status(&mut sim, &put("carol", "")).0, 202);
    assert_eq!(status(&mut sim, &put("dave", "ttl=10")).0, 202);
    // A ttl past what a clock can hold is a year, not a crash (found in review).
    assert_eq!(
        status(&mut sim, &put("erin", &format!("ttl={}", u64::MAX))).0,
        202
    );
    sim.advance(Duration::from_secs(11));
    let (c, c_id) = sim.connect_client("chat", Some("carol"), "json");
    let (d, d_id) = sim.connect_client("chat", Some("dave"), "json");
    sim.accept_handshake(c, &c_id);
    sim.accept_handshake(d, &d_id);
    assert_eq!(
        status(
            &mut sim,
            &rest("POST", "/api/v1/hubs/chat/groups/vip", "", &body("vip"))
        )
        .0,
        202
    );
    assert!(sim.client_text(c).contains("vip!"));
    assert!(
        !sim.client_text(d).contains("vip!"),
        "dave's membership expired"
    );
    // Out of every group: carol's connection leaves too.
    let out = rest("DELETE", "/api/hubs/chat/users/carol/groups", V2, b"");
    assert_eq!(status(&mut sim, &out), (204, None));
    assert_eq!(
        status(
            &mut sim,
            &rest("POST", "/api/v1/hubs/chat/groups/vip", "", &body("later"))
        )
        .0,
        202
    );
    assert!(!sim.client_text(c).contains("later!"));
}

#[test]
fn closing_a_connection_tells_the_client_why() {
    let mut sim = sim();
    sim.connect_server("chat", "app-1");
    let (a, a_id) = sim.connect_client("chat", Some("alice"), "json");
    let (b, b_id) = sim.connect_client("chat", Some("bob"), "json");
    sim.accept_handshake(a, &a_id);
    sim.accept_handshake(b, &b_id);
    let close = rest(
        "DELETE",
        &format!("/api/hubs/chat/connections/{a_id}"),
        &format!("{V2}&reason=bye%20now"),
        b"",
    );
    assert_eq!(status(&mut sim, &close), (200, None));
    assert!(
        sim.client_text(a).contains("bye now"),
        "{}",
        sim.client_text(a)
    );
    assert!(sim.closed.contains_key(&a) && !sim.closed.contains_key(&b));
    let again = rest(
        "DELETE",
        &format!("/api/hubs/chat/connections/{a_id}"),
        V2,
        b"",
    );
    assert_eq!(
        status(&mut sim, &again),
        (404, Some("Warning.Connection.NotExisted".into()))
    );
    let all = rest("POST", "/api/hubs/chat/:closeConnections", V2, b"");
    assert_eq!(status(&mut sim, &all), (204, None));
    assert!(sim.closed.contains_key(&b));
}

#[test]
fn only_a_token_for_the_requests_path_signed_with_an_access_key_may_call() {
    let mut sim = sim();
    let path = "/api/hubs/chat/:send";
    let signed = |aud: &str, key: &str, lifetime: u64| {
        let mut claims = Claims::issued_at(T0, lifetime);
        claims.aud.push(aud.to_owned());
        sign(&claims, key.as_bytes(), Algorithm::Hs256)
    };
    let good_aud = format!("https://Relay.Example/API/hubs/chat/:send/?{V2}");
    let cases = [
        (None, 401),
        (Some(signed(&good_aud, "not-the-key", 3600)), 401),
        (
            Some(signed("http://localhost/api/hubs/other/:send", KEY, 3600)),
            401,
        ),
        (
            Some(signed("http://localhost/client/?hub=chat", KEY, 3600)),
            401,
        ),
        (Some(signed(&good_aud, KEY, 3600)), 202),
    ];
    for (token, want) in cases {
        let req = rest_with("POST", path, V2, &body("t"), token.as_deref());
        assert_eq!(status(&mut sim, &req).0, want, "{token:?}");
    }
    let expired = signed(&good_aud, KEY, 60);
    sim.advance(Duration::from_secs(3600));
    let req = rest_with("POST", path, V2, &body("t"), Some(&expired));
    assert_eq!(status(&mut sim, &req).0, 401);
    // Health needs no token.
    assert_eq!(
        status(
            &mut sim,
            &request("HEAD", "/api/v1/health", "", None, false)
        )
        .0,
        200
    );
}

#[test]
fn bad_bodies_and_names_get_400_and_a_large_body_413() {
    let mut sim = sim();
    let send = |body: &[u8]| rest("POST", "/api/v1/hubs/chat", "", body);
    assert_eq!(status(&mut sim, &send(b"not json")).0, 400);
    assert_eq!(status(&mut sim, &send(br#"{"arguments":[]}"#)).0, 400);
    let big = vec![b' '; super::super::rest::MAX_BODY + 1];
    assert_eq!(status(&mut sim, &send(&big)).0, 413);
    assert_eq!(
        status(
            &mut sim,
            &rest("POST", "/api/v1/hubs/9lives", "", &body("t"))
        )
        .0,
        400
    );
    assert_eq!(
        status(&mut sim, &rest("PATCH", "/api/v1/hubs/chat", "", b"")).0,
        405
    );
    assert_eq!(
        status(&mut sim, &rest("POST", "/api/v1/nothing", "", b"")).0,
        404
    );
}

/// Every operation of Azure's published API, version 1 and 2022-06-01 (the facts of
/// `docs/swagger/v1.json` and `docs/swagger/V20220601.json` in Azure/azure-signalr: method,
/// path, and the statuses each documents), called on a relay with a client of `alice` in
/// group `g`: each answers one of its documented statuses (`default`, in 2022-06-01, is an
/// error response: 404 with an `x-ms-error-code`).
#[test]
fn every_operation_of_both_published_versions_answers_a_documented_status() {
    const V1: &[(&str, &str, &[u16])] = &[
        ("HEAD", "/api/v1/health", &[200]),
        ("POST", "/api/v1/hubs/{hub}", &[202]),
        ("POST", "/api/v1/hubs/{hub}/users/{user}", &[202]),
        (
            "POST",
            "/api/v1/hubs/{hub}/connections/{connectionId}",
            &[202],
        ),
        (
            "GET",
            "/api/v1/hubs/{hub}/connections/{connectionId}",
            &[200, 404],
        ),
        (
            "HEAD",
            "/api/v1/hubs/{hub}/connections/{connectionId}",
            &[200, 404],
        ),
        ("POST", "/api/v1/hubs/{hub}/groups/{group}", &[202]),
        ("GET", "/api/v1/hubs/{hub}/groups/{group}", &[200, 404]),
        ("HEAD", "/api/v1/hubs/{hub}/groups/{group}", &[200, 404]),
        ("GET", "/api/v1/hubs/{hub}/users/{user}", &[200, 404]),
        ("HEAD", "/api/v1/hubs/{hub}/users/{user}", &[200, 404]),
        (
            "PUT",
            "/api/v1/hubs/{hub}/groups/{group}/connections/{connectionId}",
            &[200, 404],
        ),
        (
            "GET",
            "/api/v1/hubs/{hub}/groups/{group}/users/{user}",
            &[200, 404],
        ),
        (
            "HEAD",
            "/api/v1/hubs/{hub}/groups/{group}/users/{user}",
            &[200, 404],
        ),
        (
            "PUT",
            "/api/v1/hubs/{hub}/groups/{group}/users/{user}",
            &[202],
        ),
        (
            "DELETE",
            "/api/v1/hubs/{hub}/groups/{group}/users/{user}",
            &[202],
        ),
        (
            "DELETE",
            "/api/v1/hubs/{hub}/groups/{group}/connections/{connectionId}",
            &[200, 404],
        ),
        (
            "DELETE",
            "/api/v1/hubs/{hub}/users/{user}/groups",
            &[200, 202],
        ),
        (
            "DELETE",
            "/api/v1/hubs/{hub}/connections/{connectionId}",
            &[202],
        ),
    ];
    const V2022: &[(&str, &str, &[u16])] = &[
        ("HEAD", "/api/health", &[200]),
        ("POST", "/api/hubs/{hub}/:send", &[202]),
        (
            "POST",
            "/api/hubs/{hub}/connections/{connectionId}/:send",
            &[202],
        ),
        (
            "HEAD",
            "/api/hubs/{hub}/connections/{connectionId}",
            &[200, 404],
        ),
        ("POST", "/api/hubs/{hub}/groups/{group}/:send", &[202]),
        ("HEAD", "/api/hubs/{hub}/groups/{group}", &[200, 404]),
        (
            "PUT",
            "/api/hubs/{hub}/groups/{group}/connections/{connectionId}",
            &[200, 404],
        ),
        ("HEAD", "/api/hubs/{hub}/users/{user}", &[200, 404]),
        ("POST", "/api/hubs/{hub}/users/{user}/:send", &[202]),
        (
            "HEAD",
            "/api/hubs/{hub}/users/{user}/groups/{group}",
            &[200, 404],
        ),
        ("PUT", "/api/hubs/{hub}/users/{user}/groups/{group}", &[200]),
        (
            "DELETE",
            "/api/hubs/{hub}/users/{user}/groups/{group}",
            &[204],
        ),
        ("DELETE", "/api/hubs/{hub}/users/{user}/groups", &[204]),
        (
            "DELETE",
            "/api/hubs/{hub}/groups/{group}/connections/{connectionId}",
            &[200, 404],
        ),
        (
            "DELETE",
            "/api/hubs/{hub}/connections/{connectionId}/groups",
            &[200],
        ),
        (
            "POST",
            "/api/hubs/{hub}/users/{user}/:closeConnections",
            &[204],
        ),
        (
            "POST",
            "/api/hubs/{hub}/groups/{group}/:closeConnections",
            &[204],
        ),
        (
            "DELETE",
            "/api/hubs/{hub}/connections/{connectionId}",
            &[200, 404],
        ),
        ("POST", "/api/hubs/{hub}/:closeConnections", &[204]),
    ];
    assert_eq!((V1.len(), V2022.len()), (19, 19));
    let mut sim = sim();
    sim.connect_server("chat", "app-1");
    let (a, a_id) = sim.connect_client("chat", Some("alice"), "json");
    sim.accept_handshake(a, &a_id);
    let join = rest(
        "PUT",
        &format!("/api/hubs/chat/groups/g/connections/{a_id}"),
        V2,
        b"",
    );
    assert_eq!(status(&mut sim, &join).0, 200);
    for (version, operations) in [("", V1), (V2, V2022)] {
        for (method, template, documented) in operations {
            let path = template
                .replace("{hub}", "chat")
                .replace("{connectionId}", &a_id)
                .replace("{user}", "alice")
                .replace("{group}", "g");
            let body = if *method == "POST" && !path.ends_with(":closeConnections") {
                body("op")
            } else {
                Vec::new()
            };
            let (got, code) = status(&mut sim, &rest(method, &path, version, &body));
            assert!(
                documented.contains(&got),
                "{method} {template} ({version}): {got}"
            );
            assert_eq!(got == 404, code.is_some(), "{method} {template}: {code:?}");
        }
    }
    // The closes came last: alice's connection is gone.
    assert!(sim.closed.contains_key(&a));
}

/// As Azure keeps them: a user's memberships without a time to live are the latest 100;
/// those with one are not counted among them.
#[test]
fn a_user_keeps_the_latest_hundred_memberships_made_without_a_ttl() {
    let mut sim = sim();
    let put = |group: String, query: &str| {
        rest(
            "PUT",
            &format!("/api/hubs/chat/users/u/groups/{group}"),
            query,
            b"",
        )
    };
    assert_eq!(
        status(&mut sim, &put("timed".into(), &format!("{V2}&ttl=3600"))).0,
        200
    );
    for i in 0..101 {
        assert_eq!(status(&mut sim, &put(format!("g{i}"), V2)).0, 200);
    }
    let hub = sim.relay().directory.find("chat").expect("the hub");
    let groups = sim.relay().directory.user_groups(hub, "u");
    assert_eq!(groups.len(), 101, "100 lasting and the timed one");
    assert!(!groups.iter().any(|g| *g == "g0"), "the oldest went");
    assert!(groups.iter().any(|g| *g == "g100") && groups.iter().any(|g| *g == "timed"));
}
