//! Client results, routed between app servers.

use super::*;

#[test]
fn client_results_are_routed_between_app_servers_only_when_needed() {
    let mut sim = sim();
    let router = sim.connect_server("chat", "app-b");
    let (c, id) = sim.connect_client("chat", None, "json");
    sim.accept_handshake(c, &id);
    let caller = sim.connect_server("chat", "app-a");
    let invocation = |n: &str, server_id: &str| {
        ServiceMessage::ClientInvocation(service::ClientInvocation {
            invocation_id: n.to_owned(),
            connection_id: id.clone(),
            caller_server_id: server_id.to_owned(),
            payloads: json_payloads(&format!(
                "{{\"type\":1,\"invocationId\":\"{n}\",\"target\":\"ask\",\"arguments\":[]}}"
            )),
            ext: service::Ext::default(),
        })
    };
    // app-a asks app-b's client: the client gets the invocation, app-b is told to route it.
    sim.send_service(caller, &invocation("inv-1", "app-a"));
    assert!(sim.client_text(c).contains("\"invocationId\":\"inv-1\""));
    assert!(sim.to_server[&router]
        .iter()
        .any(|m| matches!(m, ServiceMessage::ClientInvocation(i) if i.invocation_id == "inv-1")));
    // app-b forwards the client's answer; the relay hands it to app-a.
    let completion = ServiceMessage::ClientCompletion(service::ClientCompletion {
        invocation_id: "inv-1".into(),
        connection_id: id.clone(),
        caller_server_id: "app-a".into(),
        protocol: "json".into(),
        payload: Bytes::from_static(b"{\"type\":3,\"invocationId\":\"inv-1\",\"result\":42}\x1e"),
        ext: service::Ext::default(),
    });
    sim.send_service(router, &completion);
    assert!(sim.to_server[&caller]
        .iter()
        .any(|m| matches!(m, ServiceMessage::ClientCompletion(cc) if cc.invocation_id == "inv-1")));
    // app-b asks its own client: nothing to route, nothing to forward.
    let before = sim.to_server[&router].len();
    sim.send_service(router, &invocation("inv-2", "app-b"));
    assert!(!sim.to_server[&router][before..]
        .iter()
        .any(|m| matches!(m, ServiceMessage::ClientInvocation(_))));
    // If the client leaves first, the caller gets an ErrorCompletion naming it.
    sim.send_service(caller, &invocation("inv-3", "app-a"));
    sim.closed_by_peer(c);
    assert!(sim.to_server[&caller].iter().any(|m| matches!(m, ServiceMessage::ErrorCompletion(e) if e.invocation_id == "inv-3" && e.connection_id == id)));
    // An unknown connection is an immediate ErrorCompletion.
    sim.send_service(caller, &invocation("inv-4", "app-a"));
    assert!(sim.to_server[&caller]
        .iter()
        .any(|m| matches!(m, ServiceMessage::ErrorCompletion(e) if e.invocation_id == "inv-4")));
}
