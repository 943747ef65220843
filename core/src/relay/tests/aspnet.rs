//! Classic ASP.NET app servers on Azure's SDK (`Microsoft.Azure.SignalR.AspNet`): their
//! connections at `/aspnetserver/`, one set per hub and one for the application, and classic
//! clients passed through to them. The byte strings are the SDK's frames, written from its
//! layouts (Azure/azure-signalr `src/Microsoft.Azure.SignalR.Protocols/ServiceProtocol.cs`,
//! `src/Microsoft.Azure.SignalR.AspNet/HubHost/SignalRMessageParser.cs`) and checked here
//! against this crate's codec.

use super::*;

const APP: &str = "AzureSignalRTest";
const HUB_KEY: &str = "azuresignalrtest_chat";
const APP_KEY: &str = "azuresignalrtest_azuresignalrtest";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A connection of the SDK's app server `server_id` to `key`, past its handshake:
/// `[1, 1, 0, "", 0, {}]`, as the SDK writes it (ServiceConnectionBase.cs).
fn aspnet_server(sim: &mut Sim, key: &str, server_id: &str) -> ConnHandle {
    let h = sim
        .try_accept_server_at("/aspnetserver/", key, server_id)
        .expect("refused");
    sim.data(h, &hex("0796010100a00080"));
    assert!(
        matches!(&sim.to_server[&h][0], ServiceMessage::HandshakeResponse(r) if r.error_message.is_empty()),
        "{:?}",
        sim.to_server[&h]
    );
    h
}

/// The SDK's client token (NegotiateMiddleware.cs): audience `/aspnetclient`, no hub, the
/// application's name as configured, the user.
fn sdk_client_token(user: &str) -> String {
    let mut claims = Claims::issued_at(T0, 3600);
    claims.aud.push("http://localhost/aspnetclient".into());
    claims.insert("asrs.s.apn", APP);
    claims.insert("asrs.s.vn", "1.25.1.0");
    claims.insert("asrs.s.uid", user);
    sign(&claims, KEY.as_bytes(), Algorithm::Hs256)
}

/// A classic client on WebSockets for hub `Chat` with an SDK token: its handle and id.
/// `connectionData` naming hub `Chat`.
const CHAT: &str = "connectionData=%5B%7B%22name%22%3A%22Chat%22%7D%5D";

/// A classic negotiate for hub `Chat` with an SDK token for `user`: the token, the connection
/// token (form-encoded, for a query) and the connection id.
fn sdk_negotiate(sim: &mut Sim, user: &str) -> (String, String, String) {
    let token = sdk_client_token(user);
    let negotiate = request(
        "GET",
        "/aspnetclient/negotiate",
        &format!("clientProtocol=2.1&{CHAT}"),
        Some(&token),
        false,
    );
    let body: serde_json::Value =
        serde_json::from_slice(&respond(sim.handle(&negotiate)).body).unwrap();
    let connection_token = body["ConnectionToken"].as_str().expect("negotiated");
    let connection_token =
        form_urlencoded::byte_serialize(connection_token.as_bytes()).collect::<String>();
    let id = body["ConnectionId"].as_str().unwrap().to_owned();
    (token, connection_token, id)
}

/// A classic client on WebSockets for hub `Chat` with an SDK token: its handle and id.
fn sdk_client(sim: &mut Sim, user: &str) -> (ConnHandle, String) {
    let (token, connection_token, id) = sdk_negotiate(sim, user);
    let connect = request(
        "GET",
        "/aspnetclient/connect",
        &format!("transport=webSockets&clientProtocol=2.1&connectionToken={connection_token}&{CHAT}&tid=3"),
        Some(&token),
        true,
    );
    let RequestOutcome::AcceptWebSocket(c) = sim.handle(&connect) else {
        panic!("not connected")
    };
    (c, id)
}

/// The payload the SDK writes for a client: ConnectionData with an empty id, length-prefixed,
/// holding `inner`.
fn wrapped(inner: &str) -> Bytes {
    let mut out = Vec::new();
    service::write_connection_data("", inner.as_bytes(), &mut out).unwrap();
    Bytes::from(out)
}

#[test]
fn the_sdks_frames_are_read_and_written_as_the_sdk_does() {
    // Golden frames of the SDK's messages on this path, encoded by this crate's codec.
    let frame = |m: &ServiceMessage| {
        let mut out = Vec::new();
        m.write(&mut out).unwrap();
        out
    };
    let join = ServiceMessage::JoinGroupWithAck(service::GroupMembershipWithAck {
        connection_id: "conn1".into(),
        group: Some("hg-chat.group1".into()),
        ack_id: 1,
        ext: service::Ext::default(),
    });
    assert_eq!(
        frame(&join),
        hex("199512a5636f6e6e31ae68672d636861742e67726f7570310180")
    );
    assert_eq!(
        ServiceMessage::parse(&Bytes::from(
            hex("199513a5636f6e6e31ae68672d636861742e67726f7570310280")[1..].to_vec()
        ))
        .unwrap(),
        ServiceMessage::LeaveGroupWithAck(service::GroupMembershipWithAck {
            connection_id: "conn1".into(),
            group: Some("hg-chat.group1".into()),
            ack_id: 2,
            ext: service::Ext::default(),
        })
    );
    let ok = ServiceMessage::Ack(service::Ack {
        ack_id: 1,
        status: service::AckStatus::Ok,
        message: String::new(),
        ext: service::Ext::default(),
        payload: None,
    });
    // The SDK writes an Ack in five elements; this crate writes the current six (a nil
    // payload last), which the SDK's reader takes (it reads what it knows of the array).
    assert_eq!(
        ServiceMessage::parse(&Bytes::from(hex("0695140101a080")[1..].to_vec())).unwrap(),
        ok
    );
    assert_eq!(frame(&ok), hex("0796140101a080c0"));
    // The SDK's wrapped payload of `{"C":"0","M":["hello"]}`, and of a hub result.
    assert_eq!(
        &wrapped("{\"C\":\"0\",\"M\":[\"hello\"]}")[..],
        &hex("1d9406a0c4177b2243223a2230222c224d223a5b2268656c6c6f225d7d80")[..]
    );
    assert_eq!(
        &wrapped("{\"I\":\"1\"}")[..],
        &hex("0f9406a0c4097b2249223a2231227d80")[..]
    );
    let unwrapped = crate::relay::client::classic::unwrap_sdk_frames(&hex(
        "1d9406a0c4177b2243223a2230222c224d223a5b2268656c6c6f225d7d800f9406a0c4097b2249223a2231227d80",
    ));
    assert_eq!(
        unwrapped.as_deref(),
        Some(
            &[
                Bytes::from_static(b"{\"C\":\"0\",\"M\":[\"hello\"]}"),
                Bytes::from_static(b"{\"I\":\"1\"}")
            ][..]
        )
    );
    // ASP.NET Core JSON, or a ConnectionData cut short, is not the SDK's.
    let unwrap = crate::relay::client::classic::unwrap_sdk_frames;
    assert!(unwrap(b"{\"type\":1,\"target\":\"t\",\"arguments\":[]}\x1e").is_none());
    assert!(unwrap(&hex(
        "1d9406a0c4177b2243223a2230222c224d223a5b2268656c6c6f225d7d"
    ))
    .is_none());
}

#[test]
fn a_classic_client_passes_through_to_an_aspnet_app_server() {
    let mut sim = sim();
    let hub = aspnet_server(&mut sim, HUB_KEY, "web1");
    let app = aspnet_server(&mut sim, APP_KEY, "web1");
    let (c, id) = sdk_client(&mut sim, "user1");
    assert_eq!(sim.client_text(c), "{\"C\":\"0\",\"S\":1,\"M\":[]}");
    // OpenConnection on the hub's connection, with the connect request's query (the SDK
    // needs its connectionToken and connectionData), and no ASP.NET Core handshake after it.
    let open: Vec<_> = sim.to_server[&hub]
        .iter()
        .filter_map(|m| match m {
            ServiceMessage::OpenConnection(o) => Some(o.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].connection_id, id);
    assert!(open[0]
        .query_string
        .starts_with("?transport=webSockets&clientProtocol=2.1&connectionToken="));
    assert!(open[0]
        .query_string
        .contains("connectionData=%5B%7B%22name%22%3A%22Chat%22%7D%5D"));
    assert!(!open[0].query_string.contains("access_token"));
    assert!(!sim.to_server[&hub]
        .iter()
        .any(|m| matches!(m, ServiceMessage::ConnectionData(_))));
    // The client's frame reaches the app as the client wrote it (HubRequestParser reads it).
    let invocation = "{\"H\":\"Chat\",\"M\":\"JoinGroup\",\"A\":[\"user1\",\"group1\"],\"I\":1}";
    sim.data(c, invocation.as_bytes());
    assert!(matches!(
        sim.to_server[&hub].last(),
        Some(ServiceMessage::ConnectionData(d)) if d.connection_id == id && d.payload == invocation.as_bytes()
    ));
    // The join, on the application's connection, named as classic SignalR names groups.
    sim.send_service(
        app,
        &ServiceMessage::JoinGroupWithAck(service::GroupMembershipWithAck {
            connection_id: id.clone(),
            group: Some("hg-Chat.group1".into()),
            ack_id: 7,
            ext: service::Ext::default(),
        }),
    );
    assert!(matches!(
        sim.to_server[&app].last(),
        Some(ServiceMessage::Ack(a)) if a.ack_id == 7 && a.status == service::AckStatus::Ok
    ));
    // Inside the hub the group is the plain name, as the REST API names it.
    let hub_id = sim.relay().directory.find(HUB_KEY).unwrap();
    assert!(sim.relay().directory.group_exists(hub_id, "group1"));
    // A group send on the application's connection reaches the member, in `M`.
    let echo = "{\"C\":\"0\",\"M\":[{\"H\":\"Chat\",\"M\":\"echo\",\"A\":[\"joined\"]}]}";
    sim.send_service(
        app,
        &ServiceMessage::GroupBroadcastData(service::GroupBroadcastData {
            group: "hg-Chat.group1".into(),
            payloads: service::Payloads(vec![("json".into(), wrapped(echo))]),
            ..service::GroupBroadcastData::default()
        }),
    );
    assert!(sim
        .client_text(c)
        .ends_with("{\"C\":\"1\",\"M\":[{\"H\":\"Chat\",\"M\":\"echo\",\"A\":[\"joined\"]}]}"));
    // The hub result, on the client's own connection: top-level, as the SDK wrote it.
    sim.send_service(
        hub,
        &ServiceMessage::ConnectionData(service::ConnectionData {
            connection_id: id.clone(),
            payload: wrapped("{\"R\":42,\"I\":\"1\"}"),
            ext: service::Ext::default(),
        }),
    );
    assert!(sim.client_text(c).ends_with("{\"I\":\"1\",\"R\":42}"));
    // A message for the client written on the application's connection (a `hc-` key).
    sim.send_service(
        app,
        &ServiceMessage::ConnectionData(service::ConnectionData {
            connection_id: id.clone(),
            payload: Bytes::from(hex(
                "1d9406a0c4177b2243223a2230222c224d223a5b2268656c6c6f225d7d80",
            )),
            ext: service::Ext::default(),
        }),
    );
    assert!(sim
        .client_text(c)
        .ends_with("{\"C\":\"2\",\"M\":[\"hello\"]}"));
    // A broadcast and a user send on the hub's connection: the SDK's exact frames.
    sim.data(
        hub,
        &hex("2a940a9081a46a736f6ec41e1d9406a0c4177b2243223a2230222c224d223a5b2268656c6c6f225d7d8080"),
    );
    assert!(sim
        .client_text(c)
        .ends_with("{\"C\":\"3\",\"M\":[\"hello\"]}"));
    sim.data(
        hub,
        &hex("2f9408a5757365723181a46a736f6ec41e1d9406a0c4177b2243223a2230222c224d223a5b2268656c6c6f225d7d8080"),
    );
    assert!(sim
        .client_text(c)
        .ends_with("{\"C\":\"4\",\"M\":[\"hello\"]}"));
    // The REST API reaches the classic client in the hub's plain group, translated to a push.
    let path = format!("/api/v1/hubs/{HUB_KEY}/groups/group1");
    let mut claims = Claims::issued_at(T0, 3600);
    claims.aud.push(format!("http://localhost{path}"));
    let bearer = sign(&claims, KEY.as_bytes(), Algorithm::Hs256);
    let mut rest = request("POST", &path, "", Some(&bearer), false);
    rest.body = Bytes::from_static(b"{\"target\":\"fromRest\",\"arguments\":[1]}");
    assert_eq!(respond(sim.handle(&rest)).status, 202);
    assert!(sim
        .client_text(c)
        .ends_with("{\"C\":\"5\",\"M\":[{\"H\":\"Chat\",\"M\":\"fromRest\",\"A\":[1]}]}"));
    // Another app server of the application writes to the client on its own application
    // connection (the SDK's `Clients.Client(id)` for a client it does not carry); another
    // application's connection reaches no client of this one.
    let to_client = |sim: &mut Sim, from: ConnHandle, text: &str| {
        sim.send_service(
            from,
            &ServiceMessage::ConnectionData(service::ConnectionData {
                connection_id: id.clone(),
                payload: wrapped(text),
                ext: service::Ext::default(),
            }),
        );
    };
    let web2 = aspnet_server(&mut sim, APP_KEY, "web2");
    to_client(&mut sim, web2, "{\"C\":\"0\",\"M\":[\"from web2\"]}");
    assert!(sim
        .client_text(c)
        .ends_with("{\"C\":\"6\",\"M\":[\"from web2\"]}"));
    let other = aspnet_server(&mut sim, "other_other", "web3");
    let before = sim.client_text(c).len();
    to_client(&mut sim, other, "{\"C\":\"0\",\"M\":[\"not yours\"]}");
    assert_eq!(sim.client_text(c).len(), before);
    // Nor can it put the client in a group, nor can a group of another hub take it.
    for (from, group, ack_id) in [(other, "hg-Chat.g", 20), (app, "hg-Other.vip", 21)] {
        sim.send_service(
            from,
            &ServiceMessage::JoinGroupWithAck(service::GroupMembershipWithAck {
                connection_id: id.clone(),
                group: Some(group.into()),
                ack_id,
                ext: service::Ext::default(),
            }),
        );
        assert!(
            matches!(sim.to_server[&from].last(), Some(ServiceMessage::Ack(a)) if a.ack_id == ack_id && a.status == service::AckStatus::NotFound),
            "{group}"
        );
    }
    assert!(!sim.relay().directory.group_exists(hub_id, "g"));
    assert!(!sim.relay().directory.group_exists(hub_id, "vip"));
    // A group name of a million dots costs a bounded look (and finds no hub).
    let dots = format!("hg-{}", ".".repeat(1 << 20));
    sim.send_service(
        app,
        &ServiceMessage::GroupBroadcastData(service::GroupBroadcastData {
            group: dots,
            payloads: service::Payloads(vec![("json".into(), wrapped("{}"))]),
            ..service::GroupBroadcastData::default()
        }),
    );
    // A frame of 123 bytes begins with `{` (its length), like JSON: it is still the SDK's.
    let inner = format!("{{\"C\":\"0\",\"M\":[\"{}\"]}}", "x".repeat(99));
    assert_eq!(wrapped(&inner)[0], b'{');
    sim.send_service(
        hub,
        &ServiceMessage::BroadcastData(service::BroadcastData {
            payloads: service::Payloads(vec![("json".into(), wrapped(&inner))]),
            ..service::BroadcastData::default()
        }),
    );
    assert!(sim
        .client_text(c)
        .ends_with(&format!("\"M\":[\"{}\"]}}", "x".repeat(99))));
    to_client(
        &mut sim,
        hub,
        &format!("{{\"I\":\"2\",\"R\":\"{}\"}}", "y".repeat(101)),
    );
    assert!(sim
        .client_text(c)
        .ends_with(&format!("{{\"I\":\"2\",\"R\":\"{}\"}}", "y".repeat(101))));
    // The leave; the group is gone, and its sends reach nobody.
    sim.send_service(
        app,
        &ServiceMessage::LeaveGroupWithAck(service::GroupMembershipWithAck {
            connection_id: id.clone(),
            group: Some("hg-Chat.group1".into()),
            ack_id: 8,
            ext: service::Ext::default(),
        }),
    );
    assert!(!sim.relay().directory.group_exists(hub_id, "group1"));
    // Its socket drops and it reconnects: the app hears the SDK's reconnect signal, for the
    // hub's OnReconnected.
    sim.closed_by_peer(c);
    let mut reconnect = request(
        "GET",
        "/aspnetclient/reconnect",
        &open[0]
            .query_string
            .trim_start_matches('?')
            .replace("tid=3", "messageId=7"),
        Some(&sdk_client_token("user1")),
        true,
    );
    reconnect.websocket = true;
    let RequestOutcome::AcceptWebSocket(back) = sim.handle(&reconnect) else {
        panic!("no reconnect")
    };
    assert_eq!(back, c);
    assert!(matches!(
        sim.to_server[&hub].last(),
        Some(ServiceMessage::ConnectionData(d)) if d.payload == "asrs:reconnect".as_bytes()
    ));
    // It goes for good: after the disconnect timeout the app hears CloseConnection.
    sim.closed_by_peer(c);
    for _ in 0..7 {
        // The SDK's keep-alive, `[3]`, keeps its connection (ServiceConnectionBase.cs).
        sim.data(hub, &hex("029103"));
        sim.advance(Duration::from_secs(5));
    }
    assert!(!sim.is_open(c));
    assert!(sim.to_server[&hub]
        .iter()
        .any(|m| matches!(m, ServiceMessage::CloseConnection(m) if m.connection_id == id)));
}

#[test]
fn the_classic_sdks_connections_take_only_their_own_classic_clients() {
    let mut sim = sim();
    let _hub = aspnet_server(&mut sim, HUB_KEY, "web1");
    let _app = aspnet_server(&mut sim, APP_KEY, "web1");
    // An ASP.NET Core client of the same hub is not handed to a classic app server.
    let token = token("/client/", HUB_KEY, None, 3600, KEY);
    let mut negotiate = request(
        "POST",
        "/client/negotiate",
        &format!("hub={HUB_KEY}&negotiateVersion=1"),
        Some(&token),
        false,
    );
    negotiate.body = Bytes::new();
    let body: serde_json::Value =
        serde_json::from_slice(&respond(sim.handle(&negotiate)).body).unwrap();
    // Refused at negotiate, or at its handshake.
    if let Some(id) = body["connectionToken"].as_str() {
        let ws = websocket_request(HUB_KEY, Some(id), None);
        let mut ws = ws;
        ws.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case("authorization"));
        ws.query.push_str(&format!("&access_token={token}"));
        let RequestOutcome::AcceptWebSocket(c) = sim.handle(&ws) else {
            panic!()
        };
        sim.data(c, b"{\"protocol\":\"json\",\"version\":1}\x1e");
        assert!(
            sim.client_text(c).contains("\"error\""),
            "{}",
            sim.client_text(c)
        );
    } else {
        assert!(body["error"].is_string(), "{body}");
    }
    // A classic client whose connect names another hub than it negotiated is refused.
    let (token, connection_token, _) = sdk_negotiate(&mut sim, "u");
    let mut connect = request(
        "GET",
        "/aspnetclient/connect",
        &format!(
            "transport=longPolling&clientProtocol=2.1&connectionToken={connection_token}&connectionData=%5B%7B%22name%22%3A%22Admin%22%7D%5D"
        ),
        Some(&token),
        false,
    );
    assert_eq!(respond(sim.handle(&connect)).status, 400);
    // Named right, it connects.
    connect.query = connect.query.replace("Admin", "Chat");
    assert_eq!(respond(sim.handle(&connect)).status, 200);
}
