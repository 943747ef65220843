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
