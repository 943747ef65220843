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
