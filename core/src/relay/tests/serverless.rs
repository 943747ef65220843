//! Service modes: serverless clients served by the relay's own endpoint, app servers refused
//! in serverless mode and welcome in classic mode, management (Weak) connections in every
//! mode.

use super::*;

fn in_mode(mode: ServiceMode) -> Sim {
    let config = RelayConfig {
        service_mode: mode,
        ..RelayConfig::default()
    };
    Sim::with_config(epoch(), config)
}

/// A REST broadcast of `target` to `hub`.
fn rest_broadcast(sim: &mut Sim, hub: &str, target: &str) {
    let path = format!("/api/v1/hubs/{hub}");
    let mut claims = Claims::issued_at(T0, 3600);
    claims.aud.push(format!("http://localhost{path}"));
    let token = sign(&claims, KEY.as_bytes(), Algorithm::Hs256);
    let mut req = request("POST", &path, "", Some(&token), false);
    req.body = Bytes::from(format!("{{\"target\":\"{target}\",\"arguments\":[1]}}"));
    assert_eq!(respond(sim.handle(&req)).status, 202);
}

/// A management connection: a server connection whose handshake says Weak.
fn management(sim: &mut Sim, hub: &str) -> ConnHandle {
    let h = sim.accept_server(hub, "functions");
    sim.send_service(
        h,
        &ServiceMessage::HandshakeRequest(service::HandshakeRequest {
            connection_type: service::ConnectionType::Weak,
            ..service::HandshakeRequest::default()
        }),
    );
    assert!(
        matches!(&sim.to_server[&h][0], ServiceMessage::HandshakeResponse(r) if r.error_message.is_empty())
    );
    h
}

#[test]
fn serverless_clients_connect_with_no_app_server_and_hear_the_rest_api() {
    let mut sim = in_mode(ServiceMode::Serverless);
    let (json, json_id) = sim.connect_client("chat", Some("alice"), "json");
    let (mp, _) = sim.connect_client("chat", Some("bob"), "messagepack");
    assert_eq!(
        sim.client_text(json),
        "{}\x1e",
        "the relay answered the handshake"
    );
    assert!(sim.is_open(mp));
    rest_broadcast(&mut sim, "chat", "news");
    assert!(sim
        .client_text(json)
        .ends_with("{\"type\":1,\"target\":\"news\",\"arguments\":[1]}\x1e"));
    let mp_bytes: Vec<u8> = sim.to_client[&mp]
        .iter()
        .flat_map(|(d, _)| d.to_vec())
        .collect();
    assert!(mp_bytes.windows(4).any(|w| w == b"news"), "MessagePack too");
    // What the clients send is the upstream's; with none, an invocation and a ping are
    // ignored, and the client stays.
    sim.data(json, b"{\"type\":1,\"invocationId\":\"1\",\"target\":\"hi\",\"arguments\":[]}\x1e{\"type\":6}\x1e");
    assert!(sim.is_open(json));
    // The endpoint is no app server: the status shows none, and the clients.
    let snapshot = sim.relay().snapshot();
    let hub = &snapshot.hubs["chat"];
    assert!(hub.app_servers.is_empty());
    assert_eq!(hub.clients.values().sum::<u64>(), 2);
    // A management connection reaches them, and its acks are answered.
    let m = management(&mut sim, "chat");
    sim.send_service(
        m,
        &ServiceMessage::CheckConnectionExistenceWithAck(service::ExistenceCheck {
            id: json_id.clone(),
            ack_id: 3,
            ..service::ExistenceCheck::default()
        }),
    );
    assert!(
        matches!(sim.to_server[&m].last(), Some(ServiceMessage::Ack(a)) if a.ack_id == 3 && a.status == service::AckStatus::Ok)
    );
    sim.send_service(
        m,
        &ServiceMessage::BroadcastData(service::BroadcastData {
            payloads: json_payloads("{\"type\":1,\"target\":\"managed\",\"arguments\":[]}"),
            ..service::BroadcastData::default()
        }),
    );
    assert!(sim.client_text(json).contains("managed"));
    // Closing leaves nothing behind.
    sim.closed_by_peer(json);
    assert!(!sim.is_open(json));
}

#[test]
fn serverless_mode_refuses_an_app_servers_own_connections_with_the_reason() {
    let mut sim = in_mode(ServiceMode::Serverless);
    let h = sim.accept_server("chat", "app-1");
    sim.send_service(
        h,
        &ServiceMessage::HandshakeRequest(service::HandshakeRequest::default()),
    );
    assert!(
        matches!(&sim.to_server[&h][0], ServiceMessage::HandshakeResponse(r) if r.error_message.contains("serverless mode"))
    );
    assert!(sim.closed.contains_key(&h));
}

#[test]
fn classic_mode_serves_a_hub_without_app_servers_itself_and_one_with_them_through_them() {
    let mut sim = in_mode(ServiceMode::Classic);
    let (early, _) = sim.connect_client("chat", Some("early"), "json");
    assert_eq!(sim.client_text(early), "{}\x1e");
    let server = sim.connect_server("chat", "app-1");
    let (late, late_id) = sim.connect_client("chat", Some("late"), "json");
    assert_eq!(
        sim.server_of(late),
        server,
        "an app server before the relay's endpoint"
    );
    sim.accept_handshake(late, &late_id);
    assert!(sim.is_open(early) && sim.is_open(late));
    rest_broadcast(&mut sim, "chat", "both");
    assert!(sim.client_text(early).contains("both") && sim.client_text(late).contains("both"));
}

#[test]
fn default_mode_still_needs_an_app_server() {
    let mut sim = sim();
    assert!(sim.negotiate("chat", None).is_err());
}
