//! The Azure SDK's golden vectors (base64 of the MessagePack body, without the length prefix),
//! each decoded to the message it stands for and re-encoded byte for byte.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;

use super::*;

const NAMEID: &str = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier";

fn payloads(json: &[u8], msgpack: &[u8]) -> Payloads {
    Payloads(vec![
        ("json".into(), Bytes::copy_from_slice(json)),
        ("messagepack".into(), Bytes::copy_from_slice(msgpack)),
    ])
}

fn s(v: &str) -> String {
    v.to_owned()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| s(x)).collect()
}

fn tracing() -> Ext {
    Ext::tracing(1234)
}

fn decode(b64: &str) -> Bytes {
    Bytes::from(STANDARD.decode(b64).unwrap())
}

/// Messages the SDK writes today: they must decode to the message and re-encode exactly.
fn current_vectors() -> Vec<(&'static str, &'static str, ServiceMessage)> {
    use ServiceMessage as M;
    let headers3 = vec![
        (s("header-key-1"), strings(&["header-value-1"])),
        (
            s("header-key-2"),
            strings(&["heaer-value-2a", "header-value-2b"]),
        ),
        (
            s("header-key-3"),
            strings(&["heaer-value-3a", "header-value-3b", "header-value-3c"]),
        ),
    ];
    let p1 = || payloads(&[6, 7, 1, 2, 3, 4, 5], &[7, 1, 2, 3, 4, 5, 6]);
    let p2 = || payloads(&[2, 3, 4, 5, 6, 7, 1], &[3, 4, 5, 6, 7, 1, 2]);
    let p3 = || payloads(&[4, 5, 6, 7, 1, 2, 3], &[5, 6, 7, 1, 2, 3, 4]);
    let p4 = || payloads(&[1, 2, 3, 4, 5, 6, 7, 8], &[7, 8, 1, 2, 3, 4, 5, 6]);
    let group_bcast = |excluded: &[&str], ext: Ext, users: &[&str], caller: Option<&str>| {
        M::GroupBroadcastData(GroupBroadcastData {
            group: s("group3"),
            excluded_connection_ids: strings(excluded),
            payloads: p1(),
            ext,
            excluded_user_ids: strings(users),
            caller_user_id: caller.map(s),
        })
    };
    let close_with_ack =
        |target: &str, reason: Option<&str>, excluded: &[&str], ext: Ext| CloseConnectionsWithAck {
            target: s(target),
            reason: reason.map(s),
            ack_id: 1,
            excluded: strings(excluded),
            ext,
        };
    vec![
        ("HandshakeRequest", "lwEBAKAAgMI=", M::HandshakeRequest(HandshakeRequest::default())),
        (
            "HandshakeRequestWithProperty",
            "lwEBAaNhYmMAgMI=",
            M::HandshakeRequest(HandshakeRequest {
                connection_type: ConnectionType::OnDemand,
                target: s("abc"),
                ..HandshakeRequest::default()
            }),
        ),
        (
            "HandshakeRequestWithMigratableStatus",
            "lwEBAKABgMI=",
            M::HandshakeRequest(HandshakeRequest {
                migration_level: MigrationLevel::ShutdownOnly,
                ..HandshakeRequest::default()
            }),
        ),
        (
            "HandshakeRequestWithStatefulReconnects",
            "lwEBAKAAgMM=",
            M::HandshakeRequest(HandshakeRequest {
                allow_stateful_reconnects: true,
                ..HandshakeRequest::default()
            }),
        ),
        ("HandshakeResponse", "lAKggMA=", M::HandshakeResponse(HandshakeResponse::default())),
        (
            "HandshakeResponseWithError",
            "lAKxVmVyc2lvbiBtaXNtYXRjaC6AwA==",
            M::HandshakeResponse(HandshakeResponse {
                error_message: s("Version mismatch."),
                ..HandshakeResponse::default()
            }),
        ),
        (
            "HandshakeResponseWithConnectionId",
            "lAKggKNhYmM=",
            M::HandshakeResponse(HandshakeResponse {
                connection_id: Some(s("abc")),
                ..HandshakeResponse::default()
            }),
        ),
        (
            "AccessKeyRequestMessage",
            "lByldG9rZW7AgA==",
            M::AccessKeyRequest(AccessKeyRequest { token: s("token"), ..AccessKeyRequest::default() }),
        ),
        (
            "AccessKeyRequestMessageWithKid",
            "lByldG9rZW6ja2lkgA==",
            M::AccessKeyRequest(AccessKeyRequest {
                token: s("token"),
                kid: Some(s("kid")),
                ext: Ext::default(),
            }),
        ),
        (
            "AccessKeyResponseMessage",
            "lh2ja2lko2tlecDAgA==",
            M::AccessKeyResponse(AccessKeyResponse {
                kid: Some(s("kid")),
                access_key: Some(s("key")),
                ..AccessKeyResponse::default()
            }),
        ),
        (
            "AccessKeyResponseMessageWithException",
            "lh3AwLVBcmd1bWVudE51bGxFeGNlcHRpb27ZMVZhbHVlIGNhbm5vdCBiZSBudWxsLiAoUGFyYW1ldGVyICd0b2tlbiBpbnZhbGlkJymA",
            M::AccessKeyResponse(AccessKeyResponse {
                error_type: Some(s("ArgumentNullException")),
                error_message: Some(s("Value cannot be null. (Parameter 'token invalid')")),
                ..AccessKeyResponse::default()
            }),
        ),
        ("Ping", "kQM=", M::Ping(Ping::default())),
        ("Ping+", "kwOhYaFi", M::Ping(Ping { messages: strings(&["a", "b"]) })),
        (
            "OpenConnection",
            "lgSlY29ubjGAgKCA",
            M::OpenConnection(OpenConnection { connection_id: s("conn1"), ..OpenConnection::default() }),
        ),
        (
            "OpenConnectionWithTracingId",
            "lgSlY29ubjGAgKCBAc0DeA==",
            M::OpenConnection(OpenConnection {
                connection_id: s("conn1"),
                ext: Ext::tracing(888),
                ..OpenConnection::default()
            }),
        ),
        (
            "OpenConnectionWithClaims",
            "lgSlY29ubjKB2URodHRwOi8vc2NoZW1hcy54bWxzb2FwLm9yZy93cy8yMDA1LzA1L2lkZW50aXR5L2NsYWltcy9uYW1laWRlbnRpZmllcqV1c2VyMYCggA==",
            M::OpenConnection(OpenConnection {
                connection_id: s("conn2"),
                claims: vec![(s(NAMEID), s("user1"))],
                ..OpenConnection::default()
            }),
        ),
        (
            "OpenConnectionWithHeaders",
            "lgSlY29ubjOAg6xoZWFkZXIta2V5LTGRrmhlYWRlci12YWx1ZS0xrGhlYWRlci1rZXktMpKuaGVhZXItdmFsdWUtMmGvaGVhZGVyLXZhbHVlLTJirGhlYWRlci1rZXktM5OuaGVhZXItdmFsdWUtM2GvaGVhZGVyLXZhbHVlLTNir2hlYWRlci12YWx1ZS0zY6CA",
            M::OpenConnection(OpenConnection {
                connection_id: s("conn3"),
                headers: headers3,
                ..OpenConnection::default()
            }),
        ),
        (
            "OpenConnectionWithQueryString1",
            "lgSlY29ubjSAgK1xdWVyeTE9dmFsdWUxgA==",
            M::OpenConnection(OpenConnection {
                connection_id: s("conn4"),
                query_string: s("query1=value1"),
                ..OpenConnection::default()
            }),
        ),
        (
            "OpenConnectionWithQueryString2",
            "lgSlY29ubjSAgNkpcXVlcnkxPXZhbHVlMSZxdWVyeTI9cXVlcnkyJnF1ZXJ5Mz12YWx1ZTOA",
            M::OpenConnection(OpenConnection {
                connection_id: s("conn4"),
                query_string: s("query1=value1&query2=query2&query3=value3"),
                ..OpenConnection::default()
            }),
        ),
        (
            "OpenConnection_WithProtocol",
            "lgSlY29ubjGAgKCBA6Rqc29u",
            M::OpenConnection(OpenConnection {
                connection_id: s("conn1"),
                ext: Ext { protocol: Some(s("json")), ..Ext::default() },
                ..OpenConnection::default()
            }),
        ),
        (
            "CloseConnection",
            "lQWlY29ubjOggIA=",
            M::CloseConnection(CloseConnection { connection_id: s("conn3"), ..CloseConnection::default() }),
        ),
        (
            "CloseConnectionWithError",
            "lQWlY29ubjSuRXJyb3IgbWVzc2FnZS6AgA==",
            M::CloseConnection(CloseConnection {
                connection_id: s("conn4"),
                error_message: s("Error message."),
                ..CloseConnection::default()
            }),
        ),
        (
            "CloseConnectionWithTracingId",
            "lQWlY29ubjSggIEBew==",
            M::CloseConnection(CloseConnection {
                connection_id: s("conn4"),
                ext: Ext::tracing(123),
                ..CloseConnection::default()
            }),
        ),
        (
            "ConnectionData",
            "lAalY29ubjXEBwECAwQFBgeA",
            M::ConnectionData(ConnectionData {
                connection_id: s("conn5"),
                payload: Bytes::from_static(&[1, 2, 3, 4, 5, 6, 7]),
                ext: Ext::default(),
            }),
        ),
        (
            "ConnectionData_WithTypeAndPartial",
            "lAalY29ubjbEBwECAwQFBgeCBQIGww==",
            M::ConnectionData(ConnectionData {
                connection_id: s("conn6"),
                payload: Bytes::from_static(&[1, 2, 3, 4, 5, 6, 7]),
                ext: Ext {
                    data_message_type: Some(DataMessageType::Invocation),
                    is_partial: Some(true),
                    ..Ext::default()
                },
            }),
        ),
        (
            "ConnectionReconnect",
            "kyalY29ubjeA",
            M::ConnectionReconnect(ConnectionReconnect { connection_id: s("conn7"), ext: Ext::default() }),
        ),
        (
            "MultiConnectionData",
            "lAeSpWNvbm42pWNvbm43gqRqc29uxAcCAwQFBgcBq21lc3NhZ2VwYWNrxAcDBAUGBwECgA==",
            M::MultiConnectionData(MultiConnectionData {
                connection_ids: strings(&["conn6", "conn7"]),
                payloads: p2(),
                ext: Ext::default(),
            }),
        ),
        (
            "UserData",
            "lAildXNlcjGCpGpzb27EBwYHAQIDBAWrbWVzc2FnZXBhY2vEBwcBAgMEBQaA",
            M::UserData(UserData { user_id: s("user1"), payloads: p1(), ext: Ext::default() }),
        ),
        (
            "MultiUserData",
            "lAmSpXVzZXIxpXVzZXIygqRqc29uxAcGBwECAwQFq21lc3NhZ2VwYWNrxAcHAQIDBAUGgA==",
            M::MultiUserData(MultiUserData {
                user_ids: strings(&["user1", "user2"]),
                payloads: p1(),
                ext: Ext::default(),
            }),
        ),
        (
            "Broadcast",
            "lAqQgqRqc29uxAcEBQYHAQIDq21lc3NhZ2VwYWNrxAcFBgcBAgMEgA==",
            M::BroadcastData(BroadcastData { payloads: p3(), ..BroadcastData::default() }),
        ),
        (
            "BroadcastExcept",
            "lAqTpWNvbm43pWNvbm44pWNvbm45gqRqc29uxAcGBwECAwQFq21lc3NhZ2VwYWNrxAcHAQIDBAUGgA==",
            M::BroadcastData(BroadcastData {
                excluded_connection_ids: strings(&["conn7", "conn8", "conn9"]),
                payloads: p1(),
                ext: Ext::default(),
            }),
        ),
        (
            "JoinGroup",
            "lAumY29ubjEwpmdyb3VwMYA=",
            M::JoinGroup(GroupMembership { connection_id: s("conn10"), group: s("group1"), ext: Ext::default() }),
        ),
        (
            "LeaveGroup",
            "lAymY29ubjExpmdyb3VwMoA=",
            M::LeaveGroup(GroupMembership { connection_id: s("conn11"), group: s("group2"), ext: Ext::default() }),
        ),
        (
            "UserJoinGroup",
            "lBCmY29ubjEwpmdyb3VwMYA=",
            M::UserJoinGroup(UserGroupMembership { user_id: s("conn10"), group: Some(s("group1")), ext: Ext::default() }),
        ),
        (
            "UserJoinGroupWithTtl",
            "lBCmY29ubjEwpmdyb3VwMYECZA==",
            M::UserJoinGroup(UserGroupMembership {
                user_id: s("conn10"),
                group: Some(s("group1")),
                ext: Ext { ttl: Some(100), ..Ext::default() },
            }),
        ),
        (
            "UserLeaveGroup",
            "lBGmY29ubjExpmdyb3VwMoA=",
            M::UserLeaveGroup(UserGroupMembership { user_id: s("conn11"), group: Some(s("group2")), ext: Ext::default() }),
        ),
        ("GroupBroadcast", "lw2mZ3JvdXAzkIKkanNvbsQHBgcBAgMEBattZXNzYWdlcGFja8QHBwECAwQFBoCQwA==", group_bcast(&[], Ext::default(), &[], None)),
        (
            "GroupBroadcastExcept",
            "lw2mZ3JvdXAzkqZjb25uMTKmY29ubjEzgqRqc29uxAcGBwECAwQFq21lc3NhZ2VwYWNrxAcHAQIDBAUGgJDA",
            group_bcast(&["conn12", "conn13"], Ext::default(), &[], None),
        ),
        (
            "GroupBroadcastExceptUser",
            "lw2mZ3JvdXAzkqZjb25uMTKmY29ubjEzgqRqc29uxAcGBwECAwQFq21lc3NhZ2VwYWNrxAcHAQIDBAUGgJKldXNlcjGldXNlcjKldXNlcjM=",
            group_bcast(&["conn12", "conn13"], Ext::default(), &["user1", "user2"], Some("user3")),
        ),
        (
            "GroupBroadcastWithTracingId",
            "lw2mZ3JvdXAzkIKkanNvbsQHBgcBAgMEBattZXNzYWdlcGFja8QHBwECAwQFBoEBzQTSkMA=",
            group_bcast(&[], tracing(), &[], None),
        ),
        (
            "MultiGroupBroadcast",
            "lA6Spmdyb3VwNKZncm91cDWCpGpzb27ECAECAwQFBgcIq21lc3NhZ2VwYWNrxAgHCAECAwQFBoA=",
            M::MultiGroupBroadcastData(MultiGroupBroadcastData {
                groups: strings(&["group4", "group5"]),
                payloads: p4(),
                ext: Ext::default(),
            }),
        ),
        (
            "ServiceError",
            "kg/ZK01heGltdW0gbWVzc2FnZSBjb3VudCBsaW1pdCByZWFjaGVkOiAxMDAwMDA=",
            M::ServiceError(ServiceError { error_message: s("Maximum message count limit reached: 100000") }),
        ),
        (
            "JoinGroupWithAck",
            "lRKmY29ubjE0pmdyb3VwMQGA",
            M::JoinGroupWithAck(GroupMembershipWithAck {
                connection_id: s("conn14"),
                group: Some(s("group1")),
                ack_id: 1,
                ext: Ext::default(),
            }),
        ),
        (
            "LeaveGroupWithAck",
            "lROmY29ubjE1pmdyb3VwMgGA",
            M::LeaveGroupWithAck(GroupMembershipWithAck {
                connection_id: s("conn15"),
                group: Some(s("group2")),
                ack_id: 1,
                ext: Ext::default(),
            }),
        ),
        (
            "AckWithPayload",
            "lhQCAKCAxAMBAgM=",
            M::Ack(Ack {
                ack_id: 2,
                status: AckStatus::Unrecognized(0),
                message: String::new(),
                ext: Ext::default(),
                payload: Some(Bytes::from_static(&[1, 2, 3])),
            }),
        ),
        (
            "ConnectionDataWithTracingId",
            "lAalY29ubjXEBwECAwQFBgeBAc0E0g==",
            M::ConnectionData(ConnectionData {
                connection_id: s("conn5"),
                payload: Bytes::from_static(&[1, 2, 3, 4, 5, 6, 7]),
                ext: tracing(),
            }),
        ),
        (
            "MultiConnectionDataWithTracingId",
            "lAeSpWNvbm42pWNvbm43gqRqc29uxAcCAwQFBgcBq21lc3NhZ2VwYWNrxAcDBAUGBwECgQHNBNI=",
            M::MultiConnectionData(MultiConnectionData {
                connection_ids: strings(&["conn6", "conn7"]),
                payloads: p2(),
                ext: tracing(),
            }),
        ),
        (
            "UserDataWithTracingId",
            "lAildXNlcjGCpGpzb27EBwYHAQIDBAWrbWVzc2FnZXBhY2vEBwcBAgMEBQaBAc0E0g==",
            M::UserData(UserData { user_id: s("user1"), payloads: p1(), ext: tracing() }),
        ),
        (
            "MultiUserDataWithTracingId",
            "lAmSpXVzZXIxpXVzZXIygqRqc29uxAcGBwECAwQFq21lc3NhZ2VwYWNrxAcHAQIDBAUGgQHNBNI=",
            M::MultiUserData(MultiUserData { user_ids: strings(&["user1", "user2"]), payloads: p1(), ext: tracing() }),
        ),
        (
            "BroadcastWithTracingId",
            "lAqQgqRqc29uxAcEBQYHAQIDq21lc3NhZ2VwYWNrxAcFBgcBAgMEgQHNBNI=",
            M::BroadcastData(BroadcastData { payloads: p3(), ext: tracing(), ..BroadcastData::default() }),
        ),
        (
            "JoinGroupWithTracingId",
            "lAumY29ubjEwpmdyb3VwMYEBzQTS",
            M::JoinGroup(GroupMembership { connection_id: s("conn10"), group: s("group1"), ext: tracing() }),
        ),
        (
            "LeaveGroupWithTracingId",
            "lAymY29ubjExpmdyb3VwMoEBzQTS",
            M::LeaveGroup(GroupMembership { connection_id: s("conn11"), group: s("group2"), ext: tracing() }),
        ),
        (
            "UserJoinGroupWithTracingId",
            "lBCmY29ubjEwpmdyb3VwMYEBzQTS",
            M::UserJoinGroup(UserGroupMembership { user_id: s("conn10"), group: Some(s("group1")), ext: tracing() }),
        ),
        (
            "UserLeaveGroupWithTracingId",
            "lBGmY29ubjExpmdyb3VwMoEBzQTS",
            M::UserLeaveGroup(UserGroupMembership { user_id: s("conn11"), group: Some(s("group2")), ext: tracing() }),
        ),
        (
            "MultiGroupBroadcastWithTracingId",
            "lA6Spmdyb3VwNKZncm91cDWCpGpzb27ECAECAwQFBgcIq21lc3NhZ2VwYWNrxAgHCAECAwQFBoEBzQTS",
            M::MultiGroupBroadcastData(MultiGroupBroadcastData {
                groups: strings(&["group4", "group5"]),
                payloads: p4(),
                ext: tracing(),
            }),
        ),
        (
            "JoinGroupWithAckWithTracingId",
            "lRKmY29ubjE0pmdyb3VwMQGBAc0E0g==",
            M::JoinGroupWithAck(GroupMembershipWithAck {
                connection_id: s("conn14"),
                group: Some(s("group1")),
                ack_id: 1,
                ext: tracing(),
            }),
        ),
        (
            "LeaveGroupWithAckWithTracingId",
            "lROmY29ubjE1pmdyb3VwMgGBAc0E0g==",
            M::LeaveGroupWithAck(GroupMembershipWithAck {
                connection_id: s("conn15"),
                group: Some(s("group2")),
                ack_id: 1,
                ext: tracing(),
            }),
        ),
        (
            "UserJoinGroupWithAckWithTracingId",
            "lRqmY29ubjE0pmdyb3VwMQGCAc0E0gLNApo=",
            M::UserJoinGroupWithAck(UserGroupWithAck {
                user_id: s("conn14"),
                group: Some(s("group1")),
                ack_id: 1,
                ext: Ext { tracing_id: Some(1234), ttl: Some(666), ..Ext::default() },
            }),
        ),
        (
            "UserLeaveGroupWithAckWithTracingId",
            "lRumY29ubjE1pmdyb3VwMgGBAc0E0g==",
            M::UserLeaveGroupWithAck(UserGroupWithAck {
                user_id: s("conn15"),
                group: Some(s("group2")),
                ack_id: 1,
                ext: tracing(),
            }),
        ),
        (
            "CheckUserInGroupWithAckWithMessage",
            "lRWkdXNlcqVncm91cAOBAc0E0g==",
            M::CheckUserInGroupWithAck(UserGroupWithAck {
                user_id: s("user"),
                group: Some(s("group")),
                ack_id: 3,
                ext: tracing(),
            }),
        ),
        (
            "ServiceWarningMessage",
            "lhYCo2FiYwK4VXNlciBhYmMgaXMgbm90IGV4aXN0ZWQugA==",
            M::ServiceEvent(ServiceEvent {
                object_type: ServiceEventObjectType::User,
                id: Some(s("abc")),
                kind: ServiceEventKind::NotExisted,
                message: s("User abc is not existed."),
                ext: Ext::default(),
            }),
        ),
        (
            "CheckGroupExistenceWithAckMessage",
            "lBelZ3JvdXAAgQED",
            M::CheckGroupExistenceWithAck(ExistenceCheck { id: s("group"), ack_id: 0, ext: Ext::tracing(3) }),
        ),
        (
            "CheckConnectionExistenceWithAckMessage",
            "lBimY29ubklkAYEBAg==",
            M::CheckConnectionExistenceWithAck(ExistenceCheck { id: s("connId"), ack_id: 1, ext: Ext::tracing(2) }),
        ),
        (
            "CheckUserExistenceWithAckMessage",
            "lBmjdWlkBIEBFw==",
            M::CheckUserExistenceWithAck(ExistenceCheck { id: s("uid"), ack_id: 4, ext: Ext::tracing(23) }),
        ),
        (
            "CloseConnectionWithAckMessage",
            "lR6lY29ubjHAAYA=",
            M::CloseConnectionWithAck(CloseConnectionWithAck {
                connection_id: s("conn1"),
                reason: None,
                ack_id: 1,
                ext: Ext::default(),
            }),
        ),
        (
            "CloseConnectionWithAckMessage_WithOptional",
            "lR6lY29ubjGmZGV0YWlsAYEBAQ==",
            M::CloseConnectionWithAck(CloseConnectionWithAck {
                connection_id: s("conn1"),
                reason: Some(s("detail")),
                ack_id: 1,
                ext: Ext::tracing(1),
            }),
        ),
        ("CloseConnectionsWithAckMessage", "lR/AAZCA", M::CloseConnectionsWithAck(close_with_ack("", None, &[], Ext::default()))),
        (
            "CloseConnectionsWithAckMessage_WithOptional",
            "lR/AAZGmY29ubklkgQEB",
            M::CloseConnectionsWithAck(close_with_ack("", None, &["connId"], Ext::tracing(1))),
        ),
        (
            "CloseUserConnectionsWithAckMessage",
            "liCldXNlcjHAAZCA",
            M::CloseUserConnectionsWithAck(close_with_ack("user1", None, &[], Ext::default())),
        ),
        (
            "CloseUserConnectionsWithAckMessage_WithOptional",
            "liClY29ubjGmZGV0YWlsAZCBAQE=",
            M::CloseUserConnectionsWithAck(close_with_ack("conn1", Some("detail"), &[], Ext::tracing(1))),
        ),
        (
            "CloseGroupConnectionsWithAckMessage",
            "liGmZ3JvdXAxwAGQgA==",
            M::CloseGroupConnectionsWithAck(close_with_ack("group1", None, &[], Ext::default())),
        ),
        (
            "CloseGroupConnectionsWithAckMessage_WithOptional",
            "liGmZ3JvdXAxpmRldGFpbAGQgQEB",
            M::CloseGroupConnectionsWithAck(close_with_ack("group1", Some("detail"), &[], Ext::tracing(1))),
        ),
        (
            "ClientInvocationMessage",
            "liKsaW52b2NhdGlvbklkpWNvbm4xp3NlcnZlcjGCpGpzb27EBwIDBAUGBwGrbWVzc2FnZXBhY2vEBwMEBQYHAQKA",
            M::ClientInvocation(ClientInvocation {
                invocation_id: s("invocationId"),
                connection_id: s("conn1"),
                caller_server_id: s("server1"),
                payloads: p2(),
                ext: Ext::default(),
            }),
        ),
        (
            "ClientCompletionMessage",
            "lyOsaW52b2NhdGlvbklkpWNvbm4xp3NlcnZlcjGkanNvbsQHAgMEBQYHAYEDpGpzb24=",
            M::ClientCompletion(ClientCompletion {
                invocation_id: s("invocationId"),
                connection_id: s("conn1"),
                caller_server_id: s("server1"),
                protocol: s("json"),
                payload: Bytes::from_static(&[2, 3, 4, 5, 6, 7, 1]),
                ext: Ext { protocol: Some(s("json")), ..Ext::default() },
            }),
        ),
        (
            "ErrorCompletionMessage",
            "liSsaW52b2NhdGlvbklkpWNvbm4xp3NlcnZlcjGyaW52b2NhdGlvbiBmYWlsZWQugA==",
            M::ErrorCompletion(ErrorCompletion {
                invocation_id: s("invocationId"),
                connection_id: s("conn1"),
                caller_server_id: s("server1"),
                error: Some(s("invocation failed.")),
                ext: Ext::default(),
            }),
        ),
        (
            "ServiceMappingMessage",
            "lSWsaW52b2NhdGlvbklkpWNvbm4xqWluc3RhbmNlMYA=",
            M::ServiceMapping(ServiceMapping {
                invocation_id: s("invocationId"),
                connection_id: s("conn1"),
                instance_id: s("instance1"),
                ext: Ext::default(),
            }),
        ),
        (
            "ConnectionFlowControlMessage-1",
            "lSelY29ubjHSAAAAAdIAAAABgA==",
            M::ConnectionFlowControl(ConnectionFlowControl {
                connection_id: s("conn1"),
                connection_type: FlowControlConnectionType::Client,
                operation: FlowControlOperation::Pause,
                ext: Ext::default(),
            }),
        ),
        (
            "ConnectionFlowControlMessage-2",
            "lSelY29ubjLSAAAAAtIAAAAEgA==",
            M::ConnectionFlowControl(ConnectionFlowControl {
                connection_id: s("conn2"),
                connection_type: FlowControlConnectionType::Server,
                operation: FlowControlOperation::Offline,
                ext: Ext::default(),
            }),
        ),
        (
            "GroupMemberQueryMessage",
            "liiBAc0E0qVncm91cAEKpXRva2Vu",
            M::GroupMemberQuery(GroupMemberQuery {
                ext: tracing(),
                group: s("group"),
                ack_id: 1,
                max: 10,
                continuation_token: Some(s("token")),
            }),
        ),
    ]
}

/// Older forms the SDK's reader must still accept (they re-encode in the current form).
fn compatibility_vectors() -> Vec<(&'static str, &'static str, ServiceMessage)> {
    use ServiceMessage as M;
    let close = |id: &str, err: &str, headers: Vec<(String, Vec<String>)>| {
        M::CloseConnection(CloseConnection {
            connection_id: s(id),
            error_message: s(err),
            headers,
            ext: Ext::default(),
        })
    };
    let p1 = || payloads(&[6, 7, 1, 2, 3, 4, 5], &[7, 1, 2, 3, 4, 5, 6]);
    let on_demand = HandshakeRequest {
        connection_type: ConnectionType::OnDemand,
        target: s("abc"),
        ..HandshakeRequest::default()
    };
    let migratable = HandshakeRequest {
        migration_level: MigrationLevel::ShutdownOnly,
        ..HandshakeRequest::default()
    };
    let group_bcast = |excluded: &[&str], ext: Ext| {
        M::GroupBroadcastData(GroupBroadcastData {
            group: s("group3"),
            excluded_connection_ids: strings(excluded),
            payloads: p1(),
            ext,
            ..GroupBroadcastData::default()
        })
    };
    let ack = |id, status, message: &str| {
        M::Ack(Ack {
            ack_id: id,
            status: AckStatus::from(status),
            message: s(message),
            ext: Ext::default(),
            payload: None,
        })
    };
    vec![
        (
            "CloseConnection",
            "kwWlY29ubjPA",
            close("conn3", "", vec![]),
        ),
        (
            "CloseConnectionWithError",
            "kwWlY29ubjSuRXJyb3IgbWVzc2FnZS4=",
            close("conn4", "Error message.", vec![]),
        ),
        (
            "CloseConnectionWithHeaders",
            "lAWlY29ubjSuRXJyb3IgbWVzc2FnZS6Bo2Zvb5GjYmFy",
            close(
                "conn4",
                "Error message.",
                vec![(s("foo"), strings(&["bar"]))],
            ),
        ),
        (
            "HandshakeRequest",
            "kgEB",
            M::HandshakeRequest(HandshakeRequest::default()),
        ),
        (
            "HandshakeRequestWithProperty",
            "lAEBAaNhYmM=",
            M::HandshakeRequest(on_demand.clone()),
        ),
        (
            "HandshakeRequest_NoOptionalField",
            "lQEBAKAA",
            M::HandshakeRequest(HandshakeRequest::default()),
        ),
        (
            "HandshakeRequestWithProperty_NoOptionalField",
            "lQEBAaNhYmMA",
            M::HandshakeRequest(on_demand.clone()),
        ),
        (
            "HandshakeRequestWithMigratableStatus_NoOptionalField",
            "lQEBAKAB",
            M::HandshakeRequest(migratable.clone()),
        ),
        (
            "HandshakeRequest_2",
            "lgEBAKAAgA==",
            M::HandshakeRequest(HandshakeRequest::default()),
        ),
        (
            "HandshakeRequestWithProperty_2",
            "lgEBAaNhYmMAgA==",
            M::HandshakeRequest(on_demand),
        ),
        (
            "HandshakeRequestWithMigratableStatus_2",
            "lgEBAKABgA==",
            M::HandshakeRequest(migratable),
        ),
        (
            "HandshakeResponse_NoOptionalField",
            "kgKg",
            M::HandshakeResponse(HandshakeResponse::default()),
        ),
        (
            "HandshakeResponse_NoConnectionId",
            "kwKggA==",
            M::HandshakeResponse(HandshakeResponse::default()),
        ),
        (
            "HandshakeResponseWithError_NoOptionalField",
            "kgKxVmVyc2lvbiBtaXNtYXRjaC4=",
            M::HandshakeResponse(HandshakeResponse {
                error_message: s("Version mismatch."),
                ..HandshakeResponse::default()
            }),
        ),
        (
            "HandshakeResponseWithError_NoConnectionId",
            "kwKxVmVyc2lvbiBtaXNtYXRjaC6A",
            M::HandshakeResponse(HandshakeResponse {
                error_message: s("Version mismatch."),
                ..HandshakeResponse::default()
            }),
        ),
        (
            "OpenConnection_NoOptionalField",
            "lQSlY29ubjGAgKA=",
            M::OpenConnection(OpenConnection {
                connection_id: s("conn1"),
                ..OpenConnection::default()
            }),
        ),
        (
            "OpenConnectionWithQueryString1_NoOptionalField",
            "lQSlY29ubjSAgK1xdWVyeTE9dmFsdWUx",
            M::OpenConnection(OpenConnection {
                connection_id: s("conn4"),
                query_string: s("query1=value1"),
                ..OpenConnection::default()
            }),
        ),
        (
            "CloseConnection_NoOptionalField",
            "lAWlY29ubjOggA==",
            close("conn3", "", vec![]),
        ),
        (
            "CloseConnectionWithError_NoOptionalField",
            "lAWlY29ubjSuRXJyb3IgbWVzc2FnZS6A",
            close("conn4", "Error message.", vec![]),
        ),
        (
            "ConnectionData_NoOptionalField",
            "kwalY29ubjXEBwECAwQFBgc=",
            M::ConnectionData(ConnectionData {
                connection_id: s("conn5"),
                payload: Bytes::from_static(&[1, 2, 3, 4, 5, 6, 7]),
                ext: Ext::default(),
            }),
        ),
        (
            "UserData_NoOptionalField",
            "kwildXNlcjGCpGpzb27EBwYHAQIDBAWrbWVzc2FnZXBhY2vEBwcBAgMEBQY=",
            M::UserData(UserData {
                user_id: s("user1"),
                payloads: p1(),
                ext: Ext::default(),
            }),
        ),
        (
            "JoinGroup_NoOptionalField",
            "kwumY29ubjEwpmdyb3VwMQ==",
            M::JoinGroup(GroupMembership {
                connection_id: s("conn10"),
                group: s("group1"),
                ext: Ext::default(),
            }),
        ),
        (
            "GroupBroadcast_NoOptionalField",
            "lA2mZ3JvdXAzkIKkanNvbsQHBgcBAgMEBattZXNzYWdlcGFja8QHBwECAwQFBg==",
            group_bcast(&[], Ext::default()),
        ),
        (
            "GroupBroadcastExcept_NoOptionalField",
            "lA2mZ3JvdXAzkqZjb25uMTKmY29ubjEzgqRqc29uxAcGBwECAwQFq21lc3NhZ2VwYWNrxAcHAQIDBAUG",
            group_bcast(&["conn12", "conn13"], Ext::default()),
        ),
        (
            "GroupBroadcastWithTracingId(5 elements)",
            "lQ2mZ3JvdXAzkIKkanNvbsQHBgcBAgMEBattZXNzYWdlcGFja8QHBwECAwQFBoEBzQTS",
            group_bcast(&[], tracing()),
        ),
        (
            "JoinGroupWithAck_NoOptionalField",
            "lBKmY29ubjE0pmdyb3VwMQE=",
            M::JoinGroupWithAck(GroupMembershipWithAck {
                connection_id: s("conn14"),
                group: Some(s("group1")),
                ack_id: 1,
                ext: Ext::default(),
            }),
        ),
        ("Ack_NoOptionalField", "lBQBZKA=", ack(1, 100, "")),
        ("Ack", "lRQBZKCA", ack(1, 100, "")),
        (
            "AckWithMessage_NoOptionalField",
            "lBQCZblKb2luZWQgZ3JvdXAgc3VjY2Vzc2Z1bGx5",
            ack(2, 101, "Joined group successfully"),
        ),
    ]
}

#[test]
fn every_golden_vector_decodes_and_re_encodes_byte_for_byte() {
    let vectors = current_vectors();
    assert!(vectors.len() >= 70, "{} vectors", vectors.len());
    for (name, b64, expected) in vectors {
        let body = decode(b64);
        let decoded = ServiceMessage::parse(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(decoded, expected, "{name}: decode");
        let mut encoded = Vec::new();
        expected.write_body(&mut encoded);
        assert_eq!(STANDARD.encode(&encoded), b64, "{name}: encode");
        // And framed, through the incremental decoder, one byte at a time.
        let mut framed = Vec::new();
        expected.write(&mut framed).unwrap();
        let mut d = ServiceDecoder::default();
        let mut got = Vec::new();
        for byte in framed {
            d.push(&[byte]);
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![expected], "{name}: framed");
    }
}

#[test]
fn every_message_type_is_covered_by_a_golden_vector() {
    let mut seen: Vec<u64> = current_vectors()
        .iter()
        .map(|(_, _, m)| m.message_type())
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, (1..=40).collect::<Vec<u64>>());
}

#[test]
fn older_forms_still_decode() {
    for (name, b64, expected) in compatibility_vectors() {
        let decoded = ServiceMessage::parse(&decode(b64)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(decoded, expected, "{name}");
    }
}

#[test]
fn extra_trailing_data_is_ignored() {
    // [4, "id", {}] followed by a stray string outside the array.
    let body = Bytes::from_static(&[0x93, 0x04, 0xa2, b'i', b'd', 0x80, 0xa2, b'e', b'x']);
    assert_eq!(
        ServiceMessage::parse(&body).unwrap(),
        ServiceMessage::OpenConnection(OpenConnection {
            connection_id: s("id"),
            ..OpenConnection::default()
        })
    );
    // [4, "id", {}, {}, "?k=v"] followed by a stray string.
    let body = Bytes::from_static(&[
        0x95, 0x04, 0xa2, b'i', b'd', 0x80, 0x80, 0xa4, b'?', b'k', b'=', b'v', 0xa2, b'e', b'x',
    ]);
    let ServiceMessage::OpenConnection(m) = ServiceMessage::parse(&body).unwrap() else {
        panic!()
    };
    assert_eq!(m.query_string, "?k=v");
}

#[test]
fn unknown_types_and_ext_keys_are_kept_or_skipped() {
    let body = Bytes::from_static(&[0x93, 0x29, 0xa1, b'x', 0x80]); // type 41
    let m = ServiceMessage::parse(&body).unwrap();
    assert_eq!(
        m,
        ServiceMessage::Unknown {
            message_type: 41,
            body: body.clone()
        }
    );
    let mut out = Vec::new();
    m.write_body(&mut out);
    assert_eq!(out, body);
    // ConnectionData with ext {1: 7, 99: [1, 2]}: key 99 is skipped.
    let body = Bytes::from_static(&[
        0x94, 0x06, 0xa1, b'c', 0xc4, 0x00, 0x82, 0x01, 0x07, 0x63, 0x92, 0x01, 0x02,
    ]);
    let ServiceMessage::ConnectionData(m) = ServiceMessage::parse(&body).unwrap() else {
        panic!()
    };
    assert_eq!(m.ext, Ext::tracing(7));
}

#[test]
fn payload_bytes_share_the_frame() {
    let body = decode("lAalY29ubjXEBwECAwQFBgeA");
    let ServiceMessage::ConnectionData(m) = ServiceMessage::parse(&body).unwrap() else {
        panic!()
    };
    let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
    assert!(range.contains(&(m.payload.as_ptr() as usize)));
}

#[test]
fn bad_input_gives_typed_errors() {
    use crate::framing::FrameError;
    use crate::varint::VarIntError;
    use crate::MsgPackError as E;
    type P = ServiceProtocolError;
    let cases: Vec<(&str, &[u8], P)> = vec![
        ("empty body", &[], E::UnexpectedEnd.into()),
        (
            "not an array",
            &[0x81, 0x01, 0x02],
            E::WrongType {
                expected: "array",
                found: "map",
            }
            .into(),
        ),
        (
            "empty array",
            &[0x90],
            E::TooFewElements { len: 0, min: 1 }.into(),
        ),
        (
            "string type",
            &[0x91, 0xa1, b'x'],
            E::WrongType {
                expected: "integer",
                found: "string",
            }
            .into(),
        ),
        ("negative type", &[0x91, 0xff], E::IntegerOutOfRange.into()),
        (
            "truncated open",
            &[0x92, 0x04, 0xa5, b'c'],
            E::UnexpectedEnd.into(),
        ),
        (
            "open without claims",
            &[0x92, 0x04, 0xa1, b'c'],
            E::TooFewElements { len: 2, min: 3 }.into(),
        ),
        (
            "data without payload",
            &[0x92, 0x06, 0xa1, b'c'],
            E::TooFewElements { len: 2, min: 3 }.into(),
        ),
        (
            "payload as string",
            &[0x93, 0x06, 0xa1, b'c', 0xa1, b'x'],
            E::WrongType {
                expected: "binary",
                found: "string",
            }
            .into(),
        ),
        (
            "invalid utf-8 id",
            &[0x93, 0x06, 0xa2, 0xc3, 0x28, 0xc4, 0x00],
            E::InvalidUtf8.into(),
        ),
        (
            "bin32 over the frame",
            &[0x93, 0x06, 0xa1, b'c', 0xc6, 0xff, 0xff, 0xff, 0xff],
            E::UnexpectedEnd.into(),
        ),
        (
            "map32 over the frame",
            &[
                0x94, 0x06, 0xa1, b'c', 0xc4, 0x00, 0xdf, 0xff, 0xff, 0xff, 0xff,
            ],
            E::UnexpectedEnd.into(),
        ),
        (
            "ext key as string",
            &[0x94, 0x06, 0xa1, b'c', 0xc4, 0x00, 0x81, 0xa1, b'k', 0x01],
            E::WrongType {
                expected: "integer",
                found: "string",
            }
            .into(),
        ),
        (
            "is_partial not bool",
            &[0x94, 0x06, 0xa1, b'c', 0xc4, 0x00, 0x81, 0x06, 0x01],
            E::WrongType {
                expected: "bool",
                found: "integer",
            }
            .into(),
        ),
        (
            "ack id over i32",
            &[
                0x95, 0x12, 0xa1, b'c', 0xa1, b'g', 0xce, 0xff, 0xff, 0xff, 0xff,
            ],
            E::IntegerOutOfRange.into(),
        ),
        (
            "ping with a number",
            &[0x92, 0x03, 0x01],
            E::WrongType {
                expected: "string",
                found: "integer",
            }
            .into(),
        ),
        (
            "reserved marker",
            &[0x92, 0x03, 0xc1],
            E::WrongType {
                expected: "string",
                found: "reserved marker",
            }
            .into(),
        ),
        (
            "trailing element malformed",
            &[0x94, 0x26, 0xa1, b'c', 0x80, 0xc1],
            E::ReservedMarker.into(),
        ),
        (
            "flow control type 3",
            &[0x95, 0x27, 0xa1, b'c', 0x03, 0x01, 0x80],
            P::Invalid("unknown flow-control connection type"),
        ),
        (
            "flow control op 9",
            &[0x95, 0x27, 0xa1, b'c', 0x01, 0x09, 0x80],
            P::Invalid("unknown flow-control operation"),
        ),
    ];
    for (name, body, expected) in cases {
        assert_eq!(
            ServiceMessage::parse(&Bytes::copy_from_slice(body)),
            Err(expected),
            "{name}"
        );
    }
    // Framing errors on the stream.
    let mut d = ServiceDecoder::default();
    d.push(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]);
    assert_eq!(
        d.next_message(),
        Err(P::Frame(FrameError::LengthPrefix(VarIntError::TooLarge)))
    );
    let mut d = ServiceDecoder::new(16);
    d.push(&[0x11]);
    assert_eq!(
        d.next_message(),
        Err(P::Frame(FrameError::TooLarge { len: 17, max: 16 }))
    );
}

#[test]
fn newer_trailing_elements_are_skipped() {
    // [38, "c", {}, [1, {"x": nil}]]: a fourth element a newer peer might add.
    let body = Bytes::from_static(&[
        0x94, 0x26, 0xa1, b'c', 0x80, 0x92, 0x01, 0x81, 0xa1, b'x', 0xc0,
    ]);
    assert_eq!(
        ServiceMessage::parse(&body).unwrap(),
        ServiceMessage::ConnectionReconnect(ConnectionReconnect {
            connection_id: s("c"),
            ext: Ext::default()
        })
    );
}

#[test]
fn connection_data_is_written_the_same_by_the_fast_path() {
    for id_len in [0, 1, 22, 31, 32, 255, 256, 70_000] {
        for payload_len in [0, 1, 255, 256, 65_535, 65_536, 70_000] {
            let id = "i".repeat(id_len);
            let payload = vec![0x1e; payload_len];
            let mut expected = Vec::new();
            ServiceMessage::ConnectionData(ConnectionData {
                connection_id: id.clone(),
                payload: Bytes::from(payload.clone()),
                ext: Ext::default(),
            })
            .write(&mut expected)
            .unwrap();
            let mut fast = b"before".to_vec();
            write_connection_data(&id, &payload, &mut fast).unwrap();
            assert_eq!(&fast[..6], b"before");
            assert_eq!(
                fast[6..],
                expected[..],
                "id {id_len}, payload {payload_len}"
            );
        }
    }
}

/// The relay writes Ack in the SDK's six-element form, the payload nil when there is none
/// (`[20, ackId, status, message, ext, payload]`); the older five-element form still reads.
#[test]
fn ack_is_written_with_six_elements() {
    let ack = ServiceMessage::Ack(Ack {
        ack_id: 7,
        status: AckStatus::Ok,
        message: String::new(),
        ext: Ext::default(),
        payload: None,
    });
    let mut body = Vec::new();
    ack.write_body(&mut body);
    assert_eq!(body, [0x96, 20, 7, 1, 0xa0, 0x80, 0xc0]);
    assert_eq!(ServiceMessage::parse(&Bytes::from(body)), Ok(ack.clone()));
    assert_eq!(
        ServiceMessage::parse(&Bytes::from_static(&[0x95, 20, 7, 1, 0xa0, 0x80])),
        Ok(ack)
    );
}
