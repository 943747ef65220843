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

fn with_upstream(mode: ServiceMode) -> Sim {
    let mut sim = in_mode(mode);
    let settings = UpstreamSettings::parse(
        r#"{"UpstreamSettings":{"Templates":[{"UrlTemplate":"http://backend/api/{hub}/{category}/{event}","EventPattern":"*"}]}}"#,
    )
    .expect("settings");
    sim.relay_mut().0.set_upstream(settings);
    sim
}

fn header<'a>(r: &'a UpstreamRequest, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn a_serverless_clients_arrival_invocations_and_leaving_go_upstream_signed() {
    let mut sim = with_upstream(ServiceMode::Serverless);
    let (c, id) = sim.connect_client("chat", Some("alice"), "json");
    let connected = sim.upstream.remove(0);
    assert_eq!(
        connected.url,
        "http://backend/api/chat/connections/connected"
    );
    assert_eq!(connected.body.as_ref(), br#"{"type":10}"#);
    assert_eq!(
        header(&connected, "X-ASRS-Connection-Id"),
        Some(id.as_str())
    );
    assert_eq!(header(&connected, "X-ASRS-User-Id"), Some("alice"));
    assert_eq!(
        header(&connected, "X-ASRS-Signature"),
        Some(super::super::upstream::signature(&[KEY.to_owned()], &id).as_str())
    );
    assert!(header(&connected, "X-ASRS-Client-Query").is_some_and(|q| q.starts_with('?')));
    assert!(connected.attempts > 1, "connected is retried");
    sim.answer_upstream(connected.id, Ok((200, Bytes::new())));

    // An invocation: its frame without the separator; the upstream's body comes back as is.
    sim.data(
        c,
        b"{\"type\":1,\"invocationId\":\"7\",\"target\":\"add\",\"arguments\":[1,2]}\x1e",
    );
    let call = sim.upstream.remove(0);
    assert_eq!(call.url, "http://backend/api/chat/messages/add");
    assert_eq!(call.content_type, "application/json");
    assert_eq!(
        call.body.as_ref(),
        b"{\"type\":1,\"invocationId\":\"7\",\"target\":\"add\",\"arguments\":[1,2]}"
    );
    assert_eq!(call.attempts, 1);
    sim.answer_upstream(
        call.id,
        Ok((
            200,
            Bytes::from_static(b"{\"type\":3,\"invocationId\":\"7\",\"result\":3}\x1e"),
        )),
    );
    assert!(sim
        .client_text(c)
        .ends_with("{\"type\":3,\"invocationId\":\"7\",\"result\":3}\x1e"));
    // Another status is an error completion, and so is no answer at all.
    sim.data(
        c,
        b"{\"type\":1,\"invocationId\":\"8\",\"target\":\"add\",\"arguments\":[]}\x1e",
    );
    let call = sim.upstream.remove(0);
    sim.answer_upstream(call.id, Ok((404, Bytes::new())));
    assert!(sim.client_text(c).ends_with(
        "{\"type\":3,\"invocationId\":\"8\",\"error\":\"Invocation failed, status code 404\"}\x1e"
    ));
    sim.data(
        c,
        b"{\"type\":1,\"invocationId\":\"9\",\"target\":\"add\",\"arguments\":[]}\x1e",
    );
    let call = sim.upstream.remove(0);
    sim.answer_upstream(call.id, Err(UpstreamFailure::NoAnswer));
    assert!(sim
        .client_text(c)
        .ends_with("\"error\":\"Invocation failed, status code 500\"}\x1e"));
    // A send without an id: its answer reaches nobody.
    let before = sim.client_text(c).len();
    sim.data(
        c,
        b"{\"type\":1,\"target\":\"say\",\"arguments\":[\"hi\"]}\x1e",
    );
    let call = sim.upstream.remove(0);
    sim.answer_upstream(call.id, Ok((200, Bytes::from_static(b"ignored"))));
    assert_eq!(sim.client_text(c).len(), before);
    assert_eq!(sim.relay().stats().upstream_failed, 2);

    sim.closed_by_peer(c);
    let left = sim.upstream.remove(0);
    assert_eq!(left.url, "http://backend/api/chat/connections/disconnected");
    assert_eq!(left.body.as_ref(), br#"{"Type":11}"#);
    assert!(sim.upstream.is_empty());
}

#[test]
fn a_messagepack_clients_invocations_go_upstream_as_messagepack() {
    let mut sim = with_upstream(ServiceMode::Serverless);
    let (c, _) = sim.connect_client("chat", None, "messagepack");
    sim.upstream.clear();
    // [1, {}, "1", "ping", []], with its length prefix.
    let frame = b"\x95\x01\x80\xa11\xa4ping\x90";
    let mut framed = vec![u8::try_from(frame.len()).unwrap()];
    framed.extend_from_slice(frame);
    sim.data(c, &framed);
    let call = sim.upstream.remove(0);
    assert_eq!(
        (call.content_type, call.body.as_ref()),
        ("application/x-msgpack", &frame[..])
    );
    sim.answer_upstream(call.id, Ok((204, Bytes::new())));
    let bytes: Vec<u8> = sim.to_client[&c]
        .iter()
        .flat_map(|(d, _)| d.to_vec())
        .collect();
    // An empty completion: [3, {}, "1", 2].
    assert!(bytes.ends_with(b"\x94\x03\x80\xa11\x02"), "{bytes:?}");
}

#[test]
fn a_hub_with_too_many_requests_waiting_drops_new_ones_and_says_so_to_an_invoker() {
    let mut config = RelayConfig {
        service_mode: ServiceMode::Serverless,
        ..RelayConfig::default()
    };
    config.max_upstream_pending = 2;
    let mut sim = Sim::with_config(epoch(), config);
    let settings = UpstreamSettings::parse(
        r#"{"UpstreamSettings":{"Templates":[{"UrlTemplate":"http://b/{event}"}]}}"#,
    )
    .unwrap();
    sim.relay_mut().0.set_upstream(settings);
    let (c, _) = sim.connect_client("chat", None, "json");
    // connected is one; one invocation more fills the hub's share; the next is refused.
    sim.data(
        c,
        b"{\"type\":1,\"invocationId\":\"1\",\"target\":\"slow\",\"arguments\":[]}\x1e",
    );
    sim.data(
        c,
        b"{\"type\":1,\"invocationId\":\"2\",\"target\":\"slow\",\"arguments\":[]}\x1e",
    );
    assert_eq!(sim.upstream.len(), 2);
    assert!(sim.client_text(c).ends_with("{\"type\":3,\"invocationId\":\"2\",\"error\":\"Invocation failed, the upstream is busy.\"}\x1e"));
    assert_eq!(sim.relay().stats().upstream_dropped, 1);
    // Answers make room again.
    let first = sim.upstream.remove(0).id;
    sim.answer_upstream(first, Ok((200, Bytes::new())));
    sim.data(
        c,
        b"{\"type\":1,\"invocationId\":\"3\",\"target\":\"slow\",\"arguments\":[]}\x1e",
    );
    assert_eq!(sim.upstream.len(), 2);
}

#[test]
fn without_a_matching_template_nothing_goes_upstream() {
    let mut sim = in_mode(ServiceMode::Serverless);
    let (c, _) = sim.connect_client("chat", None, "json");
    sim.data(
        c,
        b"{\"type\":1,\"invocationId\":\"1\",\"target\":\"x\",\"arguments\":[]}\x1e",
    );
    assert!(sim.upstream.is_empty());
    assert_eq!(sim.client_text(c), "{}\x1e", "ignored, as Azure ignores it");
}

/// The Management SDK's persistent mode: a Weak connection carries no client, in any mode,
/// and every message that wants an ack gets one, with the answer the SDK reads (Ok: yes,
/// NotFound: no).
#[test]
fn a_management_connection_gets_every_ack_and_never_a_client() {
    for mode in [
        ServiceMode::Default,
        ServiceMode::Serverless,
        ServiceMode::Classic,
    ] {
        let mut sim = in_mode(mode);
        let m = management(&mut sim, "chat");
        let app = (mode != ServiceMode::Serverless).then(|| sim.connect_server("chat", "app-1"));
        let (c, id) = sim.connect_client("chat", Some("alice"), "json");
        if app.is_some() {
            sim.accept_handshake(c, &id);
        }
        assert!(sim.is_open(c));
        assert_ne!(
            sim.relay().clients.map[&c].link.as_ref().map(|l| l.server),
            Some(m),
            "{mode:?}"
        );
        let user = |user: &str, group: &str, ack_id| service::UserGroupWithAck {
            user_id: user.into(),
            group: Some(group.into()),
            ack_id,
            ext: service::Ext::default(),
        };
        let check = |id: &str, ack_id| service::ExistenceCheck {
            id: id.into(),
            ack_id,
            ext: service::Ext::default(),
        };
        let close = |target: &str, ack_id| service::CloseConnectionsWithAck {
            target: target.into(),
            ack_id,
            ..service::CloseConnectionsWithAck::default()
        };
        use service::AckStatus::{NotFound, Ok as Yes};
        let cases: Vec<(ServiceMessage, service::AckStatus)> = vec![
            (
                ServiceMessage::JoinGroupWithAck(service::GroupMembershipWithAck {
                    connection_id: id.clone(),
                    group: Some("g".into()),
                    ack_id: 1,
                    ext: service::Ext::default(),
                }),
                Yes,
            ),
            (
                ServiceMessage::CheckGroupExistenceWithAck(check("g", 2)),
                Yes,
            ),
            (
                ServiceMessage::CheckGroupExistenceWithAck(check("none", 3)),
                NotFound,
            ),
            (
                ServiceMessage::CheckConnectionExistenceWithAck(check(&id, 4)),
                Yes,
            ),
            (
                ServiceMessage::CheckConnectionExistenceWithAck(check("none", 5)),
                NotFound,
            ),
            (
                ServiceMessage::CheckUserExistenceWithAck(check("alice", 6)),
                Yes,
            ),
            (
                ServiceMessage::CheckUserExistenceWithAck(check("bob", 7)),
                NotFound,
            ),
            (
                ServiceMessage::UserJoinGroupWithAck(user("alice", "u", 8)),
                Yes,
            ),
            (
                ServiceMessage::CheckUserInGroupWithAck(user("alice", "u", 9)),
                Yes,
            ),
            (
                ServiceMessage::UserLeaveGroupWithAck(user("alice", "u", 10)),
                Yes,
            ),
            (
                ServiceMessage::CheckUserInGroupWithAck(user("alice", "u", 11)),
                NotFound,
            ),
            (
                ServiceMessage::LeaveGroupWithAck(service::GroupMembershipWithAck {
                    connection_id: id.clone(),
                    group: Some("g".into()),
                    ack_id: 12,
                    ext: service::Ext::default(),
                }),
                Yes,
            ),
            (
                ServiceMessage::CloseGroupConnectionsWithAck(close("g", 13)),
                Yes,
            ),
            (
                ServiceMessage::CloseUserConnectionsWithAck(close("bob", 14)),
                Yes,
            ),
            (
                ServiceMessage::CloseConnectionWithAck(service::CloseConnectionWithAck {
                    connection_id: "none".into(),
                    ack_id: 15,
                    ..Default::default()
                }),
                NotFound,
            ),
            (
                ServiceMessage::CloseConnectionWithAck(service::CloseConnectionWithAck {
                    connection_id: id.clone(),
                    ack_id: 16,
                    ..Default::default()
                }),
                Yes,
            ),
            (ServiceMessage::CloseConnectionsWithAck(close("", 17)), Yes),
        ];
        for (msg, want) in cases {
            sim.send_service(m, &msg);
            let Some(ServiceMessage::Ack(ack)) = sim.to_server[&m].last() else {
                panic!("{mode:?}: no ack for {msg:?}")
            };
            assert_eq!(ack.status, want, "{mode:?}: {msg:?}");
        }
        assert!(sim.closed.contains_key(&c));
    }
}

/// The Management SDK's persistent mode as its facts use it: a plain CloseConnection closes
/// any client of the hub with the reason (an app server's own closes only its own clients);
/// its payloads, JSON alone by default, reach MessagePack clients converted; and a send to
/// several groups reaches a connection once per group it is in.
#[test]
fn a_management_connection_closes_any_client_and_its_json_reaches_messagepack_clients() {
    let mut sim = in_mode(ServiceMode::Classic);
    let m = management(&mut sim, "chat");
    let app = sim.connect_server("chat", "app-1");
    let (served, served_id) = sim.connect_client("chat", Some("carol"), "json");
    sim.accept_handshake(served, &served_id);
    // An app server's CloseConnection of a client it does not carry is ignored.
    let other = sim.connect_server("chat", "app-2");
    if sim.server_of(served) != other {
        sim.send_service(
            other,
            &ServiceMessage::CloseConnection(service::CloseConnection {
                connection_id: served_id.clone(),
                error_message: "not yours".into(),
                ..service::CloseConnection::default()
            }),
        );
        assert!(sim.is_open(served));
    }
    let _ = app;
    // The management connection's close: the client is told the reason.
    sim.send_service(
        m,
        &ServiceMessage::CloseConnection(service::CloseConnection {
            connection_id: served_id.clone(),
            error_message: "This is a test reason.".into(),
            ..service::CloseConnection::default()
        }),
    );
    assert!(!sim.is_open(served));
    assert!(sim.client_text(served).contains("This is a test reason."));
    // An unknown id: nothing happens, and no ack is sent.
    let acks = sim.to_server[&m].len();
    sim.send_service(
        m,
        &ServiceMessage::CloseConnection(service::CloseConnection {
            connection_id: "nobody".into(),
            ..service::CloseConnection::default()
        }),
    );
    assert_eq!(sim.to_server[&m].len(), acks);

    let mut sim = in_mode(ServiceMode::Serverless);
    let m = management(&mut sim, "chat");
    let (json, json_id) = sim.connect_client("chat", Some("alice"), "json");
    let (mp, mp_id) = sim.connect_client("chat", Some("bob"), "messagepack");
    let before = sim.to_client[&mp].len();
    sim.send_service(
        m,
        &ServiceMessage::BroadcastData(service::BroadcastData {
            payloads: json_payloads(
                "{\"type\":1,\"target\":\"SendMessage\",\"arguments\":[\"hi\",7]}",
            ),
            ..service::BroadcastData::default()
        }),
    );
    assert!(sim.client_text(json).contains("SendMessage"));
    let got: Vec<u8> = sim.to_client[&mp][before..]
        .iter()
        .flat_map(|(d, _)| d.to_vec())
        .collect();
    let mut want = Vec::new();
    crate::aspnetcore::messagepack::write_message(
        &crate::aspnetcore::HubMessage::Invocation(crate::aspnetcore::Invocation {
            headers: Default::default(),
            invocation_id: None,
            target: "SendMessage".into(),
            arguments: vec![
                crate::aspnetcore::RawValue::new(&b"\xa2hi"[..]),
                crate::aspnetcore::RawValue::new(&b"\x07"[..]),
            ],
            stream_ids: Vec::new(),
        }),
        &mut want,
    )
    .unwrap();
    assert_eq!(
        got, want,
        "the MessagePack client got the JSON's invocation, converted"
    );
    // Both clients in both groups; one send to the two groups reaches each twice.
    for (ack_id, (id, group)) in [
        (&json_id, "a"),
        (&json_id, "b"),
        (&mp_id, "a"),
        (&mp_id, "b"),
    ]
    .into_iter()
    .enumerate()
    {
        sim.send_service(
            m,
            &ServiceMessage::JoinGroupWithAck(service::GroupMembershipWithAck {
                connection_id: id.clone(),
                group: Some(group.into()),
                ack_id: ack_id as i32,
                ext: service::Ext::default(),
            }),
        );
    }
    let before = sim.to_client[&mp].len();
    sim.send_service(
        m,
        &ServiceMessage::MultiGroupBroadcastData(service::MultiGroupBroadcastData {
            groups: vec!["a".into(), "b".into(), "none".into()],
            payloads: json_payloads("{\"type\":1,\"target\":\"twice\",\"arguments\":[]}"),
            ..service::MultiGroupBroadcastData::default()
        }),
    );
    assert_eq!(sim.client_text(json).matches("twice").count(), 2);
    assert_eq!(sim.to_client[&mp][before..].len(), 2);
    // A management connection of another hub closes nothing here, nor joins.
    let other = management(&mut sim, "other");
    sim.send_service(
        other,
        &ServiceMessage::CloseConnection(service::CloseConnection {
            connection_id: json_id.clone(),
            ..service::CloseConnection::default()
        }),
    );
    sim.send_service(
        other,
        &ServiceMessage::JoinGroupWithAck(service::GroupMembershipWithAck {
            connection_id: json_id.clone(),
            group: Some("c".into()),
            ack_id: 9,
            ext: service::Ext::default(),
        }),
    );
    assert!(sim.is_open(json));
    assert!(matches!(
        sim.to_server[&other].last(),
        Some(ServiceMessage::Ack(a)) if a.ack_id == 9 && a.status == service::AckStatus::NotFound
    ));
}

/// Streaming invocations go upstream too (Azure's do not): the upstream's body, a stream's
/// items and its completion, reaches the client as it came.
#[test]
fn a_streaming_invocation_goes_upstream_and_its_items_come_back() {
    let mut sim = with_upstream(ServiceMode::Serverless);
    let (c, _) = sim.connect_client("chat", None, "json");
    sim.upstream.clear();
    sim.data(
        c,
        b"{\"type\":4,\"invocationId\":\"s1\",\"target\":\"count\",\"arguments\":[2]}\x1e",
    );
    let call = sim.upstream.remove(0);
    assert_eq!(call.url, "http://backend/api/chat/messages/count");
    let answer = "{\"type\":2,\"invocationId\":\"s1\",\"item\":1}\x1e{\"type\":2,\"invocationId\":\"s1\",\"item\":2}\x1e{\"type\":3,\"invocationId\":\"s1\"}\x1e";
    sim.answer_upstream(call.id, Ok((200, Bytes::from(answer))));
    assert!(sim.client_text(c).ends_with(answer));
}
