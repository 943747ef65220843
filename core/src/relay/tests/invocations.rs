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

#[test]
fn a_completion_counts_only_from_the_client_asked_through_its_app_server() {
    let mut sim = sim();
    let router = sim.connect_server("chat", "app-b");
    let (bob, bob_id) = sim.connect_client("chat", None, "json");
    sim.accept_handshake(bob, &bob_id);
    let (carol, carol_id) = sim.connect_client("chat", None, "json");
    sim.accept_handshake(carol, &carol_id);
    let caller = sim.connect_server("chat", "app-a");
    sim.send_service(
        caller,
        &ServiceMessage::ClientInvocation(service::ClientInvocation {
            invocation_id: "inv-bob".into(),
            connection_id: bob_id.clone(),
            caller_server_id: "app-a".into(),
            payloads: json_payloads(
                "{\"type\":1,\"invocationId\":\"inv-bob\",\"target\":\"ask\",\"arguments\":[]}",
            ),
            ext: service::Ext::default(),
        }),
    );
    let completion = |connection_id: &str, result: u32| {
        ServiceMessage::ClientCompletion(service::ClientCompletion {
            invocation_id: "inv-bob".into(),
            connection_id: connection_id.to_owned(),
            caller_server_id: "app-a".into(),
            protocol: "json".into(),
            payload: Bytes::from(format!(
                "{{\"type\":3,\"invocationId\":\"inv-bob\",\"result\":{result}}}\x1e"
            )),
            ext: service::Ext::default(),
        })
    };
    let answers = |sim: &Sim| {
        sim.to_server[&caller]
            .iter()
            .filter_map(|m| match m {
                ServiceMessage::ClientCompletion(cc) => Some(cc.payload.clone()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    // Carol's answer to Bob's invocation, and one sent by an app server Bob is not mapped
    // to, are both ignored.
    sim.send_service(router, &completion(&carol_id, 666));
    sim.send_service(caller, &completion(&bob_id, 667));
    assert!(
        answers(&sim).is_empty(),
        "no forged answer reaches the caller"
    );
    assert_eq!(sim.relay().stats().completions_ignored, 2);
    // Bob's own answer still counts, once.
    sim.send_service(router, &completion(&bob_id, 42));
    sim.send_service(router, &completion(&bob_id, 43));
    let got = answers(&sim);
    assert_eq!(got.len(), 1);
    assert!(std::str::from_utf8(&got[0]).is_ok_and(|p| p.contains("\"result\":42")));
}

/// Found by the relay fuzzer: an app server that asked its own client for a result, then
/// went away, was sent that client's failure after its socket was gone.
#[test]
fn a_server_that_goes_is_not_answered_for_what_it_asked() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-a");
    let (c, id) = sim.connect_client("chat", None, "json");
    sim.accept_handshake(c, &id);
    sim.send_service(
        server,
        &ServiceMessage::ClientInvocation(service::ClientInvocation {
            invocation_id: "inv".into(),
            connection_id: id.clone(),
            caller_server_id: "app-a".into(),
            payloads: json_payloads(
                "{\"type\":1,\"invocationId\":\"inv\",\"target\":\"ask\",\"arguments\":[]}",
            ),
            ext: service::Ext::default(),
        }),
    );
    let before = sim.to_server[&server].len();
    // The harness panics on any output for a socket that is done.
    sim.closed_by_peer(server);
    assert_eq!(sim.to_server[&server].len(), before);
}
