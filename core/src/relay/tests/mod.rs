//! Deterministic tests of the relay on a virtual clock ([`Sim`]): no sockets, no sleeping.
//! One file per seam; the helpers here are shared.

mod aspnet;
mod classic;
mod cluster;
mod events;
mod fanout;
mod invocations;
mod negotiate;
mod policy;
mod rest;
mod serverless;
mod servers;
mod simulation;
mod stateful;
mod transports;
mod websocket;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub(super) use super::sim::{
    classic_request, classic_token, connection_request, request, token, websocket_request, Sim,
    KEY, T0,
};
pub(super) use super::*;
pub(super) use crate::aspnetcore::negotiate::NegotiateResponse;
pub(super) use crate::aspnetcore::HubProtocol;
pub(super) use crate::auth::{sign, Algorithm, Claims};

/// The virtual clock's epoch; from here on time only moves when a test says so.
fn epoch() -> Instant {
    #[allow(clippy::disallowed_methods)]
    Instant::now()
}

/// A relay on a virtual clock.
fn sim() -> Sim {
    Sim::new(epoch())
}

fn json_payloads(text: &str) -> service::Payloads {
    service::Payloads(vec![("json".into(), Bytes::from(format!("{text}\x1e")))])
}

/// Negotiates for `chat` with `negotiateVersion=version`, bearing `bearer`: the connection's
/// token (with version 0, its id, and the answer has no token).
fn negotiate_token(sim: &mut Sim, version: u8, bearer: &str) -> String {
    let query = format!("hub=chat&negotiateVersion={version}");
    let req = request("POST", "/client/negotiate", &query, Some(bearer), false);
    let json: serde_json::Value = serde_json::from_slice(&respond(sim.handle(&req)).body).unwrap();
    let token = json.get("connectionToken");
    assert_eq!(token.is_none(), version == 0, "{json}");
    token
        .unwrap_or(&json["connectionId"])
        .as_str()
        .unwrap()
        .to_owned()
}

/// A request on `hub`'s endpoint for the connection whose token is `id`, bearing `bearer`.
fn bearing(method: &str, hub: &str, id: &str, bearer: &str, websocket: bool) -> HttpRequest {
    let query = format!("hub={hub}&id={id}");
    request(method, "/client/", &query, Some(bearer), websocket)
}

/// An HTTP request on a negotiated connection (`id`), with the client's token.
fn on_connection(method: &str, id: &str, accept: Option<&str>, body: &[u8]) -> HttpRequest {
    connection_request(method, "chat", id, None, accept, body)
}

/// Negotiates with `bearer`: the relay's answer.
fn negotiate_with(sim: &mut Sim, bearer: &str) -> NegotiateResponse {
    let req = request(
        "POST",
        "/client/negotiate",
        "hub=chat&negotiateVersion=1",
        Some(bearer),
        false,
    );
    NegotiateResponse::parse(&respond(sim.handle(&req)).body).expect("a negotiate response")
}

fn respond(outcome: RequestOutcome) -> HttpResponse {
    match outcome {
        RequestOutcome::Respond(r) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

/// Negotiates a stateful-reconnect client for `chat`, connects its WebSocket and sends the
/// version 2 handshake. Returns the client and its WebSocket request (to reconnect with).
fn connect_stateful(sim: &mut Sim) -> (ConnHandle, HttpRequest) {
    let bearer = token("/client/", "chat", None, 3600, KEY);
    let req = request(
        "POST",
        "/client/negotiate",
        "hub=chat&negotiateVersion=1&useStatefulReconnect=true",
        Some(&bearer),
        false,
    );
    let RequestOutcome::Respond(r) = sim.handle(&req) else {
        panic!()
    };
    let NegotiateResponse::Connection(info) = NegotiateResponse::parse(&r.body).unwrap() else {
        panic!()
    };
    assert!(info.use_stateful_reconnect);
    let id = info.connection_token.unwrap();
    let ws = request(
        "GET",
        "/client/",
        &format!("hub=chat&id={id}"),
        Some(&bearer),
        true,
    );
    let RequestOutcome::AcceptWebSocket(c) = sim.handle(&ws) else {
        panic!()
    };
    sim.data(c, b"{\"protocol\":\"json\",\"version\":2}\x1e");
    (c, ws)
}

/// Sends `text` (whole frames) from the app server to the client `connection_id`.
fn server_sends(sim: &mut Sim, server: ConnHandle, connection_id: &str, text: &str) {
    sim.send_service(
        server,
        &ServiceMessage::ConnectionData(service::ConnectionData {
            connection_id: connection_id.to_owned(),
            payload: Bytes::from(text.to_owned()),
            ext: service::Ext::default(),
        }),
    );
}

/// `connectionData` naming `chat`, as the classic clients send it.
const CHAT_DATA: &str = "connectionData=%5B%7B%22name%22%3A%22chat%22%7D%5D";

/// A classic request for `chat`, from alice.
fn classic(kind: &str, query: &str, token: Option<&str>, body: &str, ws: bool) -> HttpRequest {
    classic_request(kind, "chat", query, token, body, ws, Some("alice"))
}

/// A classic negotiate for `chat`: its response body.
fn classic_negotiate(sim: &mut Sim) -> serde_json::Value {
    let negotiate = respond(sim.handle(&classic("negotiate", "", None, "", false)));
    assert_eq!(negotiate.status, 200);
    serde_json::from_slice(&negotiate.body).unwrap()
}

/// A classic connection for `chat`, negotiated by alice: its token and connection id.
fn classic_negotiated(sim: &mut Sim) -> (String, String) {
    sim.classic_negotiate("chat", Some("alice")).unwrap()
}

/// A classic connection for `chat`, connected by long polling, its handshake answered by
/// `server`: its token and connection id.
fn classic_long_polling(sim: &mut Sim, server: ConnHandle) -> (String, String) {
    let (token, id) = classic_negotiated(sim);
    respond(sim.handle(&long_poll("connect", &token, "")));
    server_sends(sim, server, &id, "{}\x1e");
    (token, id)
}

/// A classic long-polling request on the connection with `token`.
fn long_poll(kind: &str, token: &str, body: &str) -> HttpRequest {
    classic(kind, "transport=longPolling", Some(token), body, false)
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn last_payload_to(sim: &Sim, server: ConnHandle) -> String {
    sim.to_server[&server]
        .iter()
        .rev()
        .find_map(|m| match m {
            ServiceMessage::ConnectionData(d) => {
                Some(String::from_utf8_lossy(&d.payload).into_owned())
            }
            _ => None,
        })
        .unwrap_or_default()
}
