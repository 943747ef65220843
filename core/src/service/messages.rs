//! The message types of the server-connection protocol.

use bytes::Bytes;

/// Defines a wire enum whose unknown values are kept, so that decoding never loses data.
macro_rules! open_enum {
    ($(#[$meta:meta])* $name:ident : $repr:ty { $($(#[$vmeta:meta])* $variant:ident = $value:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A value this implementation does not know.
            Unrecognized($repr),
        }

        impl From<$repr> for $name {
            fn from(value: $repr) -> Self {
                match value {
                    $($value => Self::$variant,)*
                    other => Self::Unrecognized(other),
                }
            }
        }

        impl From<$name> for $repr {
            fn from(value: $name) -> Self {
                match value {
                    $($name::$variant => $value,)*
                    $name::Unrecognized(other) => other,
                }
            }
        }
    };
}

open_enum! {
    /// What a server connection carries (HandshakeRequest element 3).
    ConnectionType: i32 {
        /// Carries clients; always accepted.
        Default = 0,
        /// Carries clients; opened on request of a `target` ping; may be refused.
        OnDemand = 1,
        /// Carries no clients; send-only.
        Weak = 2,
    }
}

open_enum! {
    /// When the relay may move an app server's clients to another app server.
    MigrationLevel: i32 {
        /// Never.
        Off = 0,
        /// On graceful shutdown.
        ShutdownOnly = 1,
        /// Also when the server connection drops.
        Any = 2,
    }
}

open_enum! {
    /// What a ConnectionData payload holds (extension key 5).
    DataMessageType: i32 {
        /// Not said.
        Unknown = 0,
        /// The hub-protocol handshake.
        Handshake = 1,
        /// Hub invocations and their kin.
        Invocation = 2,
        /// Pings, acks and sequence messages.
        Other = 3,
        /// A hub Close message.
        Close = 4,
    }
}

open_enum! {
    /// The outcome in an [`Ack`].
    AckStatus: i32 {
        /// Done.
        Ok = 1,
        /// The connection, user or group does not exist.
        NotFound = 2,
        /// The operation timed out.
        Timeout = 3,
        /// The relay failed.
        InternalServerError = 4,
    }
}

open_enum! {
    /// The object a [`ServiceEvent`] is about.
    ServiceEventObjectType: i32 {
        /// A relay instance.
        ServiceInstance = 0,
        /// A client connection.
        Connection = 1,
        /// A user.
        User = 2,
        /// A group.
        Group = 3,
        /// A server connection.
        ServerConnection = 4,
    }
}

open_enum! {
    /// What happened, in a [`ServiceEvent`].
    ServiceEventKind: i32 {
        /// The object is reloading.
        Reloading = 0,
        /// The object is invalid.
        Invalid = 1,
        /// The object does not exist.
        NotExisted = 2,
        /// The server is sending faster than the relay can deliver.
        BufferFull = 3,
    }
}

/// Which side a [`ConnectionFlowControl`] message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowControlConnectionType {
    /// A client connection.
    Client = 1,
    /// A server connection.
    Server = 2,
}

/// What a [`ConnectionFlowControl`] message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowControlOperation {
    /// Stop sending for this connection.
    Pause = 1,
    /// The app server has paused it.
    PauseAck = 2,
    /// Go on sending.
    Resume = 3,
    /// This server connection is going away.
    Offline = 4,
}

/// The int-keyed extension map most messages end with.
///
/// Only the keys that are set are written, in key order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ext {
    /// Key 1: a message-tracing id.
    pub tracing_id: Option<u64>,
    /// Key 2: seconds a user stays in a group.
    pub ttl: Option<i32>,
    /// Key 3: a hub-protocol name (`json`, `messagepack`, ...).
    pub protocol: Option<String>,
    /// Key 4: an OData subscriber filter.
    pub filter: Option<String>,
    /// Key 5: what a ConnectionData payload holds.
    pub data_message_type: Option<DataMessageType>,
    /// Key 6: the payload is a fragment; more follows.
    pub is_partial: Option<bool>,
}

impl Ext {
    /// An extension map with only a tracing id.
    pub fn tracing(id: u64) -> Self {
        Self {
            tracing_id: Some(id),
            ..Self::default()
        }
    }
}

/// Pre-encoded payloads keyed by hub-protocol name, in the order they were written.
///
/// The app server encodes a message once per protocol; the relay hands each client the bytes
/// for its own protocol. Names are compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Payloads(pub Vec<(String, Bytes)>);

impl Payloads {
    /// The payload for `protocol`, if present.
    pub fn get(&self, protocol: &str) -> Option<&Bytes> {
        self.0
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(protocol))
            .map(|(_, b)| b)
    }
}

/// Type 1, app server → relay: the first message on a server connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeRequest {
    /// The protocol version; 1 is the only one.
    pub version: i32,
    /// What this server connection carries.
    pub connection_type: ConnectionType,
    /// The relay instance an OnDemand connection was asked for; `""` otherwise.
    pub target: String,
    /// When clients may be migrated away.
    pub migration_level: MigrationLevel,
    /// Extensions.
    pub ext: Ext,
    /// Whether the app server supports stateful reconnect.
    pub allow_stateful_reconnects: bool,
}

impl Default for HandshakeRequest {
    fn default() -> Self {
        Self {
            version: 1,
            connection_type: ConnectionType::Default,
            target: String::new(),
            migration_level: MigrationLevel::Off,
            ext: Ext::default(),
            allow_stateful_reconnects: false,
        }
    }
}

/// Type 2, relay → app server: the answer to [`HandshakeRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HandshakeResponse {
    /// Empty on success.
    pub error_message: String,
    /// Extensions.
    pub ext: Ext,
    /// The id the relay gave this server connection.
    pub connection_id: Option<String>,
}

/// Type 3, both ways: a keep-alive, optionally carrying key/value pairs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ping {
    /// Alternating keys and values; empty for a plain keep-alive.
    pub messages: Vec<String>,
}

impl Ping {
    /// A ping of key/value pairs.
    pub fn pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut messages = Vec::new();
        for (k, v) in pairs {
            messages.push(k.to_owned());
            messages.push(v.to_owned());
        }
        Self { messages }
    }

    /// The value of the first pair whose key is `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.messages
            .chunks_exact(2)
            .find(|pair| pair[0] == key)
            .map(|pair| pair[1].as_str())
    }
}

/// Type 4, relay → app server: a client connected.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpenConnection {
    /// The client connection's id.
    pub connection_id: String,
    /// The client's claims, in order; a claim type may repeat.
    pub claims: Vec<(String, String)>,
    /// The client's request headers plus relay headers.
    pub headers: Vec<(String, Vec<String>)>,
    /// The client's original query string.
    pub query_string: String,
    /// Extensions; `protocol` names the client's hub protocol.
    pub ext: Ext,
}

impl OpenConnection {
    /// The client's hub protocol, from the `protocol` extension (JSON when it names none,
    /// or one unknown).
    pub fn hub_protocol(&self) -> crate::aspnetcore::HubProtocol {
        self.ext
            .protocol
            .as_deref()
            .and_then(crate::aspnetcore::HubProtocol::from_name)
            .unwrap_or(crate::aspnetcore::HubProtocol::Json)
    }
}

/// Type 5, both ways: a client connection ended, or must end.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CloseConnection {
    /// The client connection's id.
    pub connection_id: String,
    /// Why; empty if there was no error.
    pub error_message: String,
    /// Extra headers (migration).
    pub headers: Vec<(String, Vec<String>)>,
    /// Extensions.
    pub ext: Ext,
}

/// Type 6, both ways: bytes from or for one client connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectionData {
    /// The client connection's id.
    pub connection_id: String,
    /// Raw client bytes (handshake, framed hub messages).
    pub payload: Bytes,
    /// Extensions: payload type and partial flag.
    pub ext: Ext,
}

/// Type 7, app server → relay: the same message for several connections.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MultiConnectionData {
    /// The target connections.
    pub connection_ids: Vec<String>,
    /// The message, once per protocol.
    pub payloads: Payloads,
    /// Extensions.
    pub ext: Ext,
}

/// Type 8, app server → relay: a message for every connection of one user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserData {
    /// The user.
    pub user_id: String,
    /// The message, once per protocol.
    pub payloads: Payloads,
    /// Extensions.
    pub ext: Ext,
}

/// Type 9, app server → relay: a message for every connection of several users.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MultiUserData {
    /// The users.
    pub user_ids: Vec<String>,
    /// The message, once per protocol.
    pub payloads: Payloads,
    /// Extensions.
    pub ext: Ext,
}

/// Type 10, app server → relay: a message for every connection of the hub.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BroadcastData {
    /// Connections left out.
    pub excluded_connection_ids: Vec<String>,
    /// The message, once per protocol.
    pub payloads: Payloads,
    /// Extensions.
    pub ext: Ext,
}

/// Types 11 and 12, app server → relay: add a connection to, or remove it from, a group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupMembership {
    /// The connection.
    pub connection_id: String,
    /// The group.
    pub group: String,
    /// Extensions.
    pub ext: Ext,
}

/// Type 13, app server → relay: a message for every connection in a group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupBroadcastData {
    /// The group.
    pub group: String,
    /// Connections left out.
    pub excluded_connection_ids: Vec<String>,
    /// The message, once per protocol.
    pub payloads: Payloads,
    /// Extensions.
    pub ext: Ext,
    /// Users left out.
    pub excluded_user_ids: Vec<String>,
    /// The sending user, if any.
    pub caller_user_id: Option<String>,
}

/// Type 14, app server → relay: a message for every connection in several groups.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MultiGroupBroadcastData {
    /// The groups.
    pub groups: Vec<String>,
    /// The message, once per protocol.
    pub payloads: Payloads,
    /// Extensions.
    pub ext: Ext,
}

/// Type 15, relay → app server: the server connection can no longer be written to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceError {
    /// Why.
    pub error_message: String,
}

/// Types 16 and 17, app server → relay: add a user to, or remove them from, a group.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserGroupMembership {
    /// The user.
    pub user_id: String,
    /// The group; on a leave, `None` means every group.
    pub group: Option<String>,
    /// Extensions; `ttl` bounds a join.
    pub ext: Ext,
}

/// Types 18 and 19, app server → relay: a group join or leave that wants an [`Ack`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupMembershipWithAck {
    /// The connection.
    pub connection_id: String,
    /// The group; on a leave, `None` means every group.
    pub group: Option<String>,
    /// The id the [`Ack`] answers.
    pub ack_id: i32,
    /// Extensions.
    pub ext: Ext,
}

/// Type 20, relay → app server: the outcome of an ack-able request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The request's ack id.
    pub ack_id: i32,
    /// The outcome.
    pub status: AckStatus,
    /// Detail, possibly empty.
    pub message: String,
    /// Extensions.
    pub ext: Ext,
    /// Query results, if any.
    pub payload: Option<Bytes>,
}

/// Types 26 and 27 (and 21), app server → relay: user-group requests that want an [`Ack`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserGroupWithAck {
    /// The user.
    pub user_id: String,
    /// The group; on a leave, `None` means every group.
    pub group: Option<String>,
    /// The id the [`Ack`] answers.
    pub ack_id: i32,
    /// Extensions.
    pub ext: Ext,
}

/// Type 22, relay → app server: something the app server may want to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEvent {
    /// What kind of object.
    pub object_type: ServiceEventObjectType,
    /// Which object.
    pub id: Option<String>,
    /// What happened.
    pub kind: ServiceEventKind,
    /// A readable description.
    pub message: String,
    /// Extensions.
    pub ext: Ext,
}

/// Types 23, 24 and 25, app server → relay: does this group, connection or user exist?
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExistenceCheck {
    /// The group, connection or user id.
    pub id: String,
    /// The id the [`Ack`] answers.
    pub ack_id: i32,
    /// Extensions.
    pub ext: Ext,
}

/// Type 28, app server → relay: an Entra ID token to trade for an access key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessKeyRequest {
    /// The Entra ID token.
    pub token: String,
    /// The key id the app server holds, if any.
    pub kid: Option<String>,
    /// Extensions.
    pub ext: Ext,
}

/// Type 29, relay → app server: the answer to [`AccessKeyRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessKeyResponse {
    /// The key id.
    pub kid: Option<String>,
    /// The key.
    pub access_key: Option<String>,
    /// The error type, on failure.
    pub error_type: Option<String>,
    /// The error message, on failure.
    pub error_message: Option<String>,
    /// Extensions.
    pub ext: Ext,
}

/// Type 30, app server → relay (obsolete): close one connection and ack.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CloseConnectionWithAck {
    /// The connection.
    pub connection_id: String,
    /// Why.
    pub reason: Option<String>,
    /// The id the [`Ack`] answers.
    pub ack_id: i32,
    /// Extensions.
    pub ext: Ext,
}

/// Types 31, 32 and 33, app server → relay: close every connection of the hub, of a user or
/// of a group, and ack.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CloseConnectionsWithAck {
    /// The user or group (empty for the whole hub, type 31).
    pub target: String,
    /// Why.
    pub reason: Option<String>,
    /// The id the [`Ack`] answers.
    pub ack_id: i32,
    /// Connections left open.
    pub excluded: Vec<String>,
    /// Extensions.
    pub ext: Ext,
}

/// Type 34, both ways: invoke a method on a client and await its result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientInvocation {
    /// The invocation id.
    pub invocation_id: String,
    /// The client connection.
    pub connection_id: String,
    /// The app server awaiting the result.
    pub caller_server_id: String,
    /// The invocation, once per protocol.
    pub payloads: Payloads,
    /// Extensions.
    pub ext: Ext,
}

/// Type 35, both ways: a client's result for a [`ClientInvocation`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientCompletion {
    /// The invocation id.
    pub invocation_id: String,
    /// The client connection.
    pub connection_id: String,
    /// The app server awaiting the result.
    pub caller_server_id: String,
    /// The protocol `payload` is encoded in.
    pub protocol: String,
    /// The client's Completion message.
    pub payload: Bytes,
    /// Extensions.
    pub ext: Ext,
}

/// Type 36, both ways: a [`ClientInvocation`] failed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorCompletion {
    /// The invocation id.
    pub invocation_id: String,
    /// The client connection.
    pub connection_id: String,
    /// The app server awaiting the result.
    pub caller_server_id: String,
    /// Why.
    pub error: Option<String>,
    /// Extensions.
    pub ext: Ext,
}

/// Type 37, relay → app server: which relay instance routes a client invocation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceMapping {
    /// The invocation id.
    pub invocation_id: String,
    /// The client connection.
    pub connection_id: String,
    /// The relay instance.
    pub instance_id: String,
    /// Extensions.
    pub ext: Ext,
}

/// Type 38, relay → app server: a client re-attached (stateful reconnect).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectionReconnect {
    /// The client connection.
    pub connection_id: String,
    /// Extensions.
    pub ext: Ext,
}

/// Type 39, both ways: pause or resume traffic for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionFlowControl {
    /// The connection.
    pub connection_id: String,
    /// Client or server connection.
    pub connection_type: FlowControlConnectionType,
    /// What to do.
    pub operation: FlowControlOperation,
    /// Extensions.
    pub ext: Ext,
}

/// Type 40, app server → relay: list a group's members (answered in [`Ack::payload`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupMemberQuery {
    /// Extensions (note: first on the wire).
    pub ext: Ext,
    /// The group.
    pub group: String,
    /// The id the [`Ack`] answers.
    pub ack_id: i32,
    /// The page size.
    pub max: i32,
    /// Where the previous page ended.
    pub continuation_token: Option<String>,
}

/// One message of the server-connection protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceMessage {
    /// 1
    HandshakeRequest(HandshakeRequest),
    /// 2
    HandshakeResponse(HandshakeResponse),
    /// 3
    Ping(Ping),
    /// 4
    OpenConnection(OpenConnection),
    /// 5
    CloseConnection(CloseConnection),
    /// 6
    ConnectionData(ConnectionData),
    /// 7
    MultiConnectionData(MultiConnectionData),
    /// 8
    UserData(UserData),
    /// 9
    MultiUserData(MultiUserData),
    /// 10
    BroadcastData(BroadcastData),
    /// 11
    JoinGroup(GroupMembership),
    /// 12
    LeaveGroup(GroupMembership),
    /// 13
    GroupBroadcastData(GroupBroadcastData),
    /// 14
    MultiGroupBroadcastData(MultiGroupBroadcastData),
    /// 15
    ServiceError(ServiceError),
    /// 16 (`group` is always set)
    UserJoinGroup(UserGroupMembership),
    /// 17
    UserLeaveGroup(UserGroupMembership),
    /// 18 (`group` is always set)
    JoinGroupWithAck(GroupMembershipWithAck),
    /// 19
    LeaveGroupWithAck(GroupMembershipWithAck),
    /// 20
    Ack(Ack),
    /// 21 (`group` is always set)
    CheckUserInGroupWithAck(UserGroupWithAck),
    /// 22
    ServiceEvent(ServiceEvent),
    /// 23
    CheckGroupExistenceWithAck(ExistenceCheck),
    /// 24
    CheckConnectionExistenceWithAck(ExistenceCheck),
    /// 25
    CheckUserExistenceWithAck(ExistenceCheck),
    /// 26 (`group` is always set)
    UserJoinGroupWithAck(UserGroupWithAck),
    /// 27
    UserLeaveGroupWithAck(UserGroupWithAck),
    /// 28
    AccessKeyRequest(AccessKeyRequest),
    /// 29
    AccessKeyResponse(AccessKeyResponse),
    /// 30
    CloseConnectionWithAck(CloseConnectionWithAck),
    /// 31 (`target` is unused)
    CloseConnectionsWithAck(CloseConnectionsWithAck),
    /// 32 (`target` is the user)
    CloseUserConnectionsWithAck(CloseConnectionsWithAck),
    /// 33 (`target` is the group)
    CloseGroupConnectionsWithAck(CloseConnectionsWithAck),
    /// 34
    ClientInvocation(ClientInvocation),
    /// 35
    ClientCompletion(ClientCompletion),
    /// 36
    ErrorCompletion(ErrorCompletion),
    /// 37
    ServiceMapping(ServiceMapping),
    /// 38
    ConnectionReconnect(ConnectionReconnect),
    /// 39
    ConnectionFlowControl(ConnectionFlowControl),
    /// 40
    GroupMemberQuery(GroupMemberQuery),
    /// A type this implementation does not know (receivers ignore it), kept whole so that it
    /// re-encodes unchanged.
    Unknown {
        /// The type number.
        message_type: u64,
        /// The whole MessagePack body.
        body: Bytes,
    },
}
