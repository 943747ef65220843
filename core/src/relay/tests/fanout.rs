//! Fan-out and membership: broadcasts, users, groups, acks, closes by audience.

use super::*;

#[test]
fn multicast_reaches_the_right_clients_after_their_handshake() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let (a, a_id) = sim.connect_client("chat", Some("alice"), "json");
    let (b, b_id) = sim.connect_client("chat", Some("bob"), "json");
    let (c, c_id) = sim.connect_client("chat", Some("alice"), "json");
    // b has not been answered yet: its broadcast waits for the handshake response.
    sim.accept_handshake(a, &a_id);
    sim.accept_handshake(c, &c_id);
    let bcast = |text: &str, excluded: Vec<String>| {
        ServiceMessage::BroadcastData(service::BroadcastData {
            excluded_connection_ids: excluded,
            payloads: json_payloads(text),
            ext: service::Ext::default(),
        })
    };
    sim.send_service(
        server,
        &bcast(
            "{\"type\":1,\"target\":\"all\",\"arguments\":[]}",
            vec![c_id.clone()],
        ),
    );
    assert!(sim.client_text(a).contains("\"all\""));
    assert!(!sim.client_text(c).contains("\"all\""), "excluded");
    assert!(
        sim.client_text(b).is_empty(),
        "held until the handshake response"
    );
    sim.accept_handshake(b, &b_id);
    assert_eq!(
        sim.client_text(b),
        "{}\x1e{\"type\":1,\"target\":\"all\",\"arguments\":[]}\x1e"
    );

    // Users: alice has two connections.
    sim.send_service(
        server,
        &ServiceMessage::UserData(service::UserData {
            user_id: "alice".into(),
            payloads: json_payloads("{\"type\":1,\"target\":\"u\",\"arguments\":[]}"),
            ext: service::Ext::default(),
        }),
    );
    assert!(sim.client_text(a).contains("\"u\"") && sim.client_text(c).contains("\"u\""));
    assert!(!sim.client_text(b).contains("\"u\""));

    // Groups, with an ack.
    sim.send_service(
        server,
        &ServiceMessage::JoinGroupWithAck(service::GroupMembershipWithAck {
            connection_id: b_id.clone(),
            group: Some("g".into()),
            ack_id: 7,
            ext: service::Ext::default(),
        }),
    );
    assert!(
        matches!(sim.to_server[&server].last(), Some(ServiceMessage::Ack(ack)) if ack.ack_id == 7 && ack.status == service::AckStatus::Ok)
    );
    sim.send_service(
        server,
        &ServiceMessage::JoinGroup(service::GroupMembership {
            connection_id: a_id.clone(),
            group: "g".into(),
            ext: service::Ext::default(),
        }),
    );
    sim.send_service(
        server,
        &ServiceMessage::GroupBroadcastData(service::GroupBroadcastData {
            group: "g".into(),
            excluded_connection_ids: vec![a_id.clone()],
            payloads: json_payloads("{\"type\":1,\"target\":\"grp\",\"arguments\":[]}"),
            ..service::GroupBroadcastData::default()
        }),
    );
    assert!(sim.client_text(b).contains("\"grp\""));
    assert!(!sim.client_text(a).contains("\"grp\"") && !sim.client_text(c).contains("\"grp\""));
    // Ack for an unknown connection is NotFound.
    sim.send_service(
        server,
        &ServiceMessage::CheckConnectionExistenceWithAck(service::ExistenceCheck {
            id: "nope".into(),
            ack_id: 8,
            ext: service::Ext::default(),
        }),
    );
    assert!(
        matches!(sim.to_server[&server].last(), Some(ServiceMessage::Ack(ack)) if ack.ack_id == 8 && ack.status == service::AckStatus::NotFound)
    );
}

#[test]
fn close_with_ack_targets_users_or_groups_as_asked() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let (user_x, _) = sim.connect_client("chat", Some("x"), "json");
    let (member, member_id) = sim.connect_client("chat", Some("y"), "json");
    sim.send_service(
        server,
        &ServiceMessage::JoinGroup(service::GroupMembership {
            connection_id: member_id,
            group: "x".into(),
            ext: service::Ext::default(),
        }),
    );
    let close = |target: &str| service::CloseConnectionsWithAck {
        target: target.into(),
        ack_id: 1,
        ..service::CloseConnectionsWithAck::default()
    };
    sim.send_service(
        server,
        &ServiceMessage::CloseUserConnectionsWithAck(close("x")),
    );
    assert!(sim.closed.contains_key(&user_x));
    assert!(
        !sim.closed.contains_key(&member),
        "group 'x' is not user 'x'"
    );
    sim.send_service(
        server,
        &ServiceMessage::CloseGroupConnectionsWithAck(close("x")),
    );
    assert!(sim.closed.contains_key(&member));
}

#[test]
fn expired_user_group_memberships_are_swept() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let join = |group: &str, ttl: Option<i32>| {
        ServiceMessage::UserJoinGroup(service::UserGroupMembership {
            user_id: "u".into(),
            group: Some(group.into()),
            ext: service::Ext {
                ttl,
                ..service::Ext::default()
            },
        })
    };
    sim.send_service(server, &join("short", Some(10)));
    sim.advance(Duration::from_secs(5));
    sim.send_service(server, &ServiceMessage::Ping(service::Ping::default()));
    sim.advance(Duration::from_secs(6));
    sim.send_service(server, &join("long", None));
    let hub = sim.relay().directory.find("chat").unwrap();
    let groups: Vec<&String> = sim.relay().directory.user_groups(hub, "u");
    assert_eq!(groups, vec!["long"]);
}

/// One connection's groups, and the names, are bounded: a join past them fails its ack and
/// changes nothing; leaving makes room again.
#[test]
fn group_joins_are_bounded_per_connection_and_by_name() {
    let config = RelayConfig {
        max_groups_per_connection: 3,
        max_group_name: 16,
        ..RelayConfig::default()
    };
    let mut sim = Sim::with_config(epoch(), config);
    let server = sim.connect_server("chat", "app");
    let (_, id) = sim.connect_client("chat", None, "json");
    let mut ack_id = 0;
    let mut join = |sim: &mut Sim, group: &str| {
        ack_id += 1;
        sim.send_service(
            server,
            &ServiceMessage::JoinGroupWithAck(service::GroupMembershipWithAck {
                connection_id: id.clone(),
                group: Some(group.into()),
                ack_id,
                ext: service::Ext::default(),
            }),
        );
        matches!(sim.to_server[&server].last(), Some(ServiceMessage::Ack(a)) if a.ack_id == ack_id && a.status == service::AckStatus::Ok)
    };
    assert!(join(&mut sim, "a") && join(&mut sim, "b") && join(&mut sim, "c"));
    assert!(
        join(&mut sim, "a"),
        "a group it is in already is no new one"
    );
    assert!(!join(&mut sim, "d"), "past the cap");
    assert!(!join(&mut sim, &"n".repeat(17)), "name too long");
    sim.send_service(
        server,
        &ServiceMessage::LeaveGroup(service::GroupMembership {
            connection_id: id.clone(),
            group: "a".into(),
            ext: service::Ext::default(),
        }),
    );
    assert!(join(&mut sim, "d"), "room again");
}

/// Blazor Server's `blazorpack` is the MessagePack protocol under its own name: accepted in
/// any case, told to the app server by its name, and served the payload written for it (or
/// the MessagePack one, the same encoding, when the app server wrote only that).
#[test]
fn blazorpack_clients_are_messagepack_clients_under_their_own_name() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let (blazor, blazor_id) = sim.connect_client("chat", None, "BlazorPack");
    let (mp, mp_id) = sim.connect_client("chat", None, "messagepack");
    assert_eq!(sim.protocol_of(blazor), Some(HubProtocol::BlazorPack));
    let opened: Vec<_> = sim.to_server[&server]
        .iter()
        .filter_map(|m| match m {
            ServiceMessage::OpenConnection(o) if o.connection_id == blazor_id => {
                Some(o.ext.protocol.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(opened, [Some("blazorpack".to_owned())]);
    // The handshake reaches the app server as the client wrote it.
    let handshake = sim.to_server[&server].iter().find_map(|m| match m {
        ServiceMessage::ConnectionData(d) if d.connection_id == blazor_id => {
            Some(d.payload.clone())
        }
        _ => None,
    });
    assert_eq!(
        handshake.as_deref(),
        Some(&b"{\"protocol\":\"BlazorPack\",\"version\":1}\x1e"[..])
    );
    for (client, id) in [(blazor, &blazor_id), (mp, &mp_id)] {
        sim.accept_handshake(client, id);
    }
    let broadcast = |payloads: Vec<(&str, &'static [u8])>| {
        ServiceMessage::BroadcastData(service::BroadcastData {
            excluded_connection_ids: vec![],
            payloads: service::Payloads(
                payloads
                    .into_iter()
                    .map(|(name, bytes)| (name.to_owned(), Bytes::from_static(bytes)))
                    .collect(),
            ),
            ext: service::Ext::default(),
        })
    };
    // Everything after the handshake response.
    let received = |sim: &Sim, client| -> Vec<Vec<u8>> {
        sim.to_client[&client][1..]
            .iter()
            .map(|(d, binary)| {
                assert!(*binary, "binary protocols get binary frames");
                d.to_vec()
            })
            .collect()
    };
    sim.send_service(
        server,
        &broadcast(vec![
            ("json", b"{\"type\":6}\x1e"),
            ("messagepack", b"\x02\x91\x06"),
            ("blazorpack", b"\x03\x92\x06\xc0"),
        ]),
    );
    assert_eq!(received(&sim, blazor), [b"\x03\x92\x06\xc0".to_vec()]);
    assert_eq!(received(&sim, mp), [b"\x02\x91\x06".to_vec()]);
    sim.send_service(server, &broadcast(vec![("messagepack", b"\x02\x91\x06")]));
    assert_eq!(received(&sim, blazor)[1..], [b"\x02\x91\x06".to_vec()]);
}

/// GroupMemberQuery is answered with the group's members and their users, a page at a
/// time, in the Ack's payload as the SDK reads it.
#[test]
fn group_members_are_listed_a_page_at_a_time() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let mut ids = Vec::new();
    for user in [Some("alice"), None, Some("bob")] {
        let (c, id) = sim.connect_client("chat", user, "json");
        sim.accept_handshake(c, &id);
        sim.send_service(
            server,
            &ServiceMessage::JoinGroup(service::GroupMembership {
                connection_id: id.clone(),
                group: "g".into(),
                ext: service::Ext::default(),
            }),
        );
        ids.push((id, user.map(str::to_owned)));
    }
    ids.sort();
    let query =
        |sim: &mut Sim, token: Option<String>| -> (Vec<(String, Option<String>)>, Option<String>) {
            sim.send_service(
                server,
                &ServiceMessage::GroupMemberQuery(service::GroupMemberQuery {
                    ext: service::Ext::default(),
                    group: "g".into(),
                    ack_id: 9,
                    max: 2,
                    continuation_token: token,
                }),
            );
            let Some(ServiceMessage::Ack(ack)) = sim.to_server[&server].last() else {
                panic!("an ack")
            };
            assert_eq!((ack.ack_id, ack.status), (9, service::AckStatus::Ok));
            let payload = ack.payload.clone().expect("a payload");
            let mut r = crate::msgpack::Reader::new(&payload);
            assert_eq!(r.array_len().expect("response"), 2);
            let n = r.array_len().expect("members");
            let members = (0..n)
                .map(|_| {
                    assert_eq!(r.array_len().expect("member"), 2);
                    let id = r.str().expect("id").to_owned();
                    (id, r.opt_str().expect("user").map(str::to_owned))
                })
                .collect();
            (members, r.opt_str().expect("token").map(str::to_owned))
        };
    let (first, token) = query(&mut sim, None);
    assert_eq!(first, ids[..2]);
    assert_eq!(token.as_deref(), Some(ids[1].0.as_str()));
    let (second, token) = query(&mut sim, token);
    assert_eq!(second, ids[2..]);
    assert_eq!(token, None);
}

/// The subscriber filter (extension key 4) narrows a multicast to the connections that pass
/// it; one that does not parse reaches nobody, and the app server is told.
#[test]
fn multicasts_reach_only_the_connections_their_filter_passes() {
    let mut sim = sim();
    let server = sim.connect_server("chat", "app-1");
    let (a, a_id) = sim.connect_client("chat", Some("alice"), "json");
    let (b, b_id) = sim.connect_client("chat", Some("bob"), "json");
    let (anon, anon_id) = sim.connect_client("chat", None, "json");
    for (c, id) in [(a, &a_id), (b, &b_id), (anon, &anon_id)] {
        sim.accept_handshake(c, id);
    }
    sim.send_service(
        server,
        &ServiceMessage::JoinGroup(service::GroupMembership {
            connection_id: b_id.clone(),
            group: "room".into(),
            ext: service::Ext::default(),
        }),
    );
    let broadcast = |target: &str, filter: &str| {
        ServiceMessage::BroadcastData(service::BroadcastData {
            excluded_connection_ids: vec![],
            payloads: json_payloads(&format!(
                "{{\"type\":1,\"target\":\"{target}\",\"arguments\":[]}}"
            )),
            ext: service::Ext {
                filter: Some(filter.to_owned()),
                ..service::Ext::default()
            },
        })
    };
    sim.send_service(server, &broadcast("toAlice", "userId eq 'alice'"));
    sim.send_service(server, &broadcast("toRoom", "'room' in groups"));
    sim.send_service(server, &broadcast("toAnon", "userId eq null"));
    sim.send_service(server, &broadcast("nobody", "userId eq"));
    let got = |c| sim.client_text(c);
    assert!(got(a).contains("toAlice") && !got(a).contains("toRoom"));
    assert!(got(b).contains("toRoom") && !got(b).contains("toAlice"));
    assert!(got(anon).contains("toAnon") && !got(anon).contains("toRoom"));
    for c in [a, b, anon] {
        assert!(!got(c).contains("nobody"));
    }
    assert!(sim.to_server[&server].iter().any(|m| matches!(
        m,
        ServiceMessage::ServiceEvent(e) if e.message.contains("invalid filter")
    )));
}
