//! Encoding and decoding of [`ServiceMessage`]s.

use bytes::Bytes;

use super::messages::*;
use crate::framing::{write_binary_frame, BinaryFrameDecoder, FrameError};
use crate::msgpack::{read_str_array, ArrayReader, MsgPackError, Reader, Writer};

/// The default bound on one server-connection message: 4 MiB.
pub const DEFAULT_MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// Why bytes from a server connection cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceProtocolError {
    /// The byte stream cannot be split into frames. Sticky: the connection is out of sync.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A frame's MessagePack is malformed or has the wrong layout.
    #[error("invalid service message: {0}")]
    MsgPack(#[from] MsgPackError),
    /// A field holds a value the protocol does not allow.
    #[error("invalid service message: {0}")]
    Invalid(&'static str),
}

/// Reassembles service messages from a server connection's byte stream.
#[derive(Debug)]
pub struct ServiceDecoder {
    frames: BinaryFrameDecoder,
}

impl Default for ServiceDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl ServiceDecoder {
    /// A decoder that rejects messages over `max_frame_len` bytes.
    pub fn new(max_frame_len: usize) -> Self {
        Self {
            frames: BinaryFrameDecoder::new(max_frame_len),
        }
    }

    /// Appends received bytes; drain [`next_message`](Self::next_message) afterwards.
    pub fn push(&mut self, data: &[u8]) {
        self.frames.push(data);
    }

    /// The next whole message, or `Ok(None)` if more bytes are needed.
    ///
    /// # Errors
    /// [`ServiceProtocolError::Frame`] (sticky), or a decoding error for one message.
    pub fn next_message(&mut self) -> Result<Option<ServiceMessage>> {
        match self.frames.next_frame()? {
            Some(frame) => ServiceMessage::parse(&frame).map(Some),
            None => Ok(None),
        }
    }
}

type Result<T> = std::result::Result<T, ServiceProtocolError>;

/// Field readers over one message array. Binary fields are zero-copy slices of `frame`.
struct Fields<'r, 'a> {
    a: ArrayReader<'r, 'a>,
    frame: &'a Bytes,
}

impl Fields<'_, '_> {
    fn string(&mut self) -> Result<String> {
        Ok(self.a.next()?.str()?.to_owned())
    }

    fn opt_string(&mut self) -> Result<Option<String>> {
        Ok(self.a.next()?.opt_str()?.map(str::to_owned))
    }

    /// A nullable string that reads as empty when nil or absent.
    fn string_or_empty(&mut self) -> Result<String> {
        match self.a.next_opt() {
            Some(r) => Ok(r.opt_str()?.unwrap_or_default().to_owned()),
            None => Ok(String::new()),
        }
    }

    fn int<T: TryFrom<i128>>(&mut self) -> Result<T> {
        Ok(self.a.next()?.integer()?)
    }

    fn bin(&mut self) -> Result<Bytes> {
        let slice = self.a.next()?.bin()?;
        Ok(self.frame.slice_ref(slice))
    }

    fn strings(&mut self) -> Result<Vec<String>> {
        Ok(read_str_array(self.a.next()?)?)
    }

    fn opt_strings(&mut self) -> Result<Vec<String>> {
        match self.a.next_opt() {
            Some(r) => Ok(read_str_array(r)?),
            None => Ok(Vec::new()),
        }
    }

    fn payloads(&mut self) -> Result<Payloads> {
        let r = self.a.next()?;
        let len = r.map_len()?;
        let mut out = Vec::with_capacity(len as usize);
        for _ in 0..len {
            let name = r.str()?.to_owned();
            let bytes = r.bin()?;
            out.push((name, self.frame.slice_ref(bytes)));
        }
        Ok(Payloads(out))
    }

    fn string_map(&mut self) -> Result<Vec<(String, String)>> {
        let r = self.a.next()?;
        let len = r.map_len()?;
        let mut out = Vec::with_capacity(len as usize);
        for _ in 0..len {
            out.push((r.str()?.to_owned(), r.str()?.to_owned()));
        }
        Ok(out)
    }

    fn headers(&mut self) -> Result<Vec<(String, Vec<String>)>> {
        let Some(r) = self.a.next_opt() else {
            return Ok(Vec::new());
        };
        let len = r.map_len()?;
        let mut out = Vec::with_capacity(len as usize);
        for _ in 0..len {
            let name = r.str()?.to_owned();
            out.push((name, read_str_array(r)?));
        }
        Ok(out)
    }

    /// The extension map, if the peer wrote one.
    fn ext(&mut self) -> Result<Ext> {
        match self.a.next_opt() {
            Some(r) => read_ext(r),
            None => Ok(Ext::default()),
        }
    }
}

fn read_ext(r: &mut Reader<'_>) -> Result<Ext> {
    let len = r.map_len()?;
    let mut ext = Ext::default();
    for _ in 0..len {
        match r.integer::<i64>()? {
            1 => ext.tracing_id = Some(r.integer()?),
            2 => ext.ttl = Some(r.integer()?),
            3 => ext.protocol = Some(r.str()?.to_owned()),
            4 => ext.filter = Some(r.str()?.to_owned()),
            5 => ext.data_message_type = Some(DataMessageType::from(r.integer::<i32>()?)),
            6 => ext.is_partial = Some(r.bool()?),
            _ => r.skip()?,
        }
    }
    Ok(ext)
}

fn flow_connection_type(v: i32) -> Result<FlowControlConnectionType> {
    match v {
        1 => Ok(FlowControlConnectionType::Client),
        2 => Ok(FlowControlConnectionType::Server),
        _ => Err(ServiceProtocolError::Invalid(
            "unknown flow-control connection type",
        )),
    }
}

fn flow_operation(v: i32) -> Result<FlowControlOperation> {
    match v {
        1 => Ok(FlowControlOperation::Pause),
        2 => Ok(FlowControlOperation::PauseAck),
        3 => Ok(FlowControlOperation::Resume),
        4 => Ok(FlowControlOperation::Offline),
        _ => Err(ServiceProtocolError::Invalid(
            "unknown flow-control operation",
        )),
    }
}

impl ServiceMessage {
    /// Decodes one message from a frame body (without its length prefix). Byte payloads in
    /// the result share `frame`'s memory.
    ///
    /// # Errors
    /// [`ServiceProtocolError::MsgPack`] for malformed MessagePack or a layout that does not
    /// match the message type, [`ServiceProtocolError::Invalid`] for a forbidden value.
    pub fn parse(frame: &Bytes) -> Result<Self> {
        let mut r = Reader::new(frame);
        let len = r.array_len()?;
        let mut f = Fields {
            a: ArrayReader::new(&mut r, len),
            frame,
        };
        let message_type: u64 = f.int()?;
        let message = match message_type {
            1 => {
                let version = f.int()?;
                let mut m = HandshakeRequest {
                    version,
                    ..HandshakeRequest::default()
                };
                if let Some(r) = f.a.next_opt() {
                    m.connection_type = ConnectionType::from(r.integer::<i32>()?);
                    m.target = f.string_or_empty()?;
                }
                if let Some(r) = f.a.next_opt() {
                    m.migration_level = MigrationLevel::from(r.integer::<i32>()?);
                }
                m.ext = f.ext()?;
                if let Some(r) = f.a.next_opt() {
                    m.allow_stateful_reconnects = r.bool()?;
                }
                Self::HandshakeRequest(m)
            }
            2 => Self::HandshakeResponse(HandshakeResponse {
                error_message: f.string_or_empty()?,
                ext: f.ext()?,
                connection_id: match f.a.next_opt() {
                    Some(r) => r.opt_str()?.map(str::to_owned),
                    None => None,
                },
            }),
            3 => {
                let mut messages = Vec::new();
                while let Some(r) = f.a.next_opt() {
                    messages.push(r.str()?.to_owned());
                }
                Self::Ping(Ping { messages })
            }
            4 => Self::OpenConnection(OpenConnection {
                connection_id: f.string()?,
                claims: f.string_map()?,
                headers: f.headers()?,
                query_string: f.string_or_empty()?,
                ext: f.ext()?,
            }),
            5 => Self::CloseConnection(CloseConnection {
                connection_id: f.string()?,
                error_message: f.string_or_empty()?,
                headers: f.headers()?,
                ext: f.ext()?,
            }),
            6 => Self::ConnectionData(ConnectionData {
                connection_id: f.string()?,
                payload: f.bin()?,
                ext: f.ext()?,
            }),
            7 => Self::MultiConnectionData(MultiConnectionData {
                connection_ids: f.strings()?,
                payloads: f.payloads()?,
                ext: f.ext()?,
            }),
            8 => Self::UserData(UserData {
                user_id: f.string()?,
                payloads: f.payloads()?,
                ext: f.ext()?,
            }),
            9 => Self::MultiUserData(MultiUserData {
                user_ids: f.strings()?,
                payloads: f.payloads()?,
                ext: f.ext()?,
            }),
            10 => Self::BroadcastData(BroadcastData {
                excluded_connection_ids: f.strings()?,
                payloads: f.payloads()?,
                ext: f.ext()?,
            }),
            11 | 12 => {
                let m = GroupMembership {
                    connection_id: f.string()?,
                    group: f.string()?,
                    ext: f.ext()?,
                };
                if message_type == 11 {
                    Self::JoinGroup(m)
                } else {
                    Self::LeaveGroup(m)
                }
            }
            13 => Self::GroupBroadcastData(GroupBroadcastData {
                group: f.string()?,
                excluded_connection_ids: f.strings()?,
                payloads: f.payloads()?,
                ext: f.ext()?,
                excluded_user_ids: f.opt_strings()?,
                caller_user_id: match f.a.next_opt() {
                    Some(r) => r.opt_str()?.map(str::to_owned),
                    None => None,
                },
            }),
            14 => Self::MultiGroupBroadcastData(MultiGroupBroadcastData {
                groups: f.strings()?,
                payloads: f.payloads()?,
                ext: f.ext()?,
            }),
            15 => Self::ServiceError(ServiceError {
                error_message: f.string_or_empty()?,
            }),
            16 | 17 => {
                let user_id = f.string()?;
                let group = if message_type == 16 {
                    Some(f.string()?)
                } else {
                    f.opt_string()?
                };
                let m = UserGroupMembership {
                    user_id,
                    group,
                    ext: f.ext()?,
                };
                if message_type == 16 {
                    Self::UserJoinGroup(m)
                } else {
                    Self::UserLeaveGroup(m)
                }
            }
            18 | 19 => {
                let connection_id = f.string()?;
                let group = if message_type == 18 {
                    Some(f.string()?)
                } else {
                    f.opt_string()?
                };
                let m = GroupMembershipWithAck {
                    connection_id,
                    group,
                    ack_id: f.int()?,
                    ext: f.ext()?,
                };
                if message_type == 18 {
                    Self::JoinGroupWithAck(m)
                } else {
                    Self::LeaveGroupWithAck(m)
                }
            }
            20 => Self::Ack(Ack {
                ack_id: f.int()?,
                status: AckStatus::from(f.int::<i32>()?),
                message: f.string_or_empty()?,
                ext: f.ext()?,
                payload: match f.a.next_opt() {
                    Some(r) => r.opt_bin()?.map(|b| frame.slice_ref(b)),
                    None => None,
                },
            }),
            21 | 26 | 27 => {
                let user_id = f.string()?;
                let group = if message_type == 27 {
                    f.opt_string()?
                } else {
                    Some(f.string()?)
                };
                let m = UserGroupWithAck {
                    user_id,
                    group,
                    ack_id: f.int()?,
                    ext: f.ext()?,
                };
                match message_type {
                    21 => Self::CheckUserInGroupWithAck(m),
                    26 => Self::UserJoinGroupWithAck(m),
                    _ => Self::UserLeaveGroupWithAck(m),
                }
            }
            22 => Self::ServiceEvent(ServiceEvent {
                object_type: ServiceEventObjectType::from(f.int::<i32>()?),
                id: f.opt_string()?,
                kind: ServiceEventKind::from(f.int::<i32>()?),
                message: f.string_or_empty()?,
                ext: f.ext()?,
            }),
            23..=25 => {
                let m = ExistenceCheck {
                    id: f.string()?,
                    ack_id: f.int()?,
                    ext: f.ext()?,
                };
                match message_type {
                    23 => Self::CheckGroupExistenceWithAck(m),
                    24 => Self::CheckConnectionExistenceWithAck(m),
                    _ => Self::CheckUserExistenceWithAck(m),
                }
            }
            28 => Self::AccessKeyRequest(AccessKeyRequest {
                token: f.string()?,
                kid: match f.a.next_opt() {
                    Some(r) => r.opt_str()?.map(str::to_owned),
                    None => None,
                },
                ext: f.ext()?,
            }),
            29 => Self::AccessKeyResponse(AccessKeyResponse {
                kid: f.opt_string()?,
                access_key: f.opt_string()?,
                error_type: f.opt_string()?,
                error_message: f.opt_string()?,
                ext: f.ext()?,
            }),
            30 => Self::CloseConnectionWithAck(CloseConnectionWithAck {
                connection_id: f.string()?,
                reason: f.opt_string()?,
                ack_id: f.int()?,
                ext: f.ext()?,
            }),
            31..=33 => {
                let target = if message_type == 31 {
                    String::new()
                } else {
                    f.string()?
                };
                let m = CloseConnectionsWithAck {
                    target,
                    reason: f.opt_string()?,
                    ack_id: f.int()?,
                    excluded: f.opt_strings()?,
                    ext: f.ext()?,
                };
                match message_type {
                    31 => Self::CloseConnectionsWithAck(m),
                    32 => Self::CloseUserConnectionsWithAck(m),
                    _ => Self::CloseGroupConnectionsWithAck(m),
                }
            }
            34 => Self::ClientInvocation(ClientInvocation {
                invocation_id: f.string()?,
                connection_id: f.string()?,
                caller_server_id: f.string()?,
                payloads: f.payloads()?,
                ext: f.ext()?,
            }),
            35 => Self::ClientCompletion(ClientCompletion {
                invocation_id: f.string()?,
                connection_id: f.string()?,
                caller_server_id: f.string()?,
                protocol: f.string_or_empty()?,
                payload: f.bin()?,
                ext: f.ext()?,
            }),
            36 => Self::ErrorCompletion(ErrorCompletion {
                invocation_id: f.string()?,
                connection_id: f.string()?,
                caller_server_id: f.string()?,
                error: f.opt_string()?,
                ext: f.ext()?,
            }),
            37 => Self::ServiceMapping(ServiceMapping {
                invocation_id: f.string()?,
                connection_id: f.string()?,
                instance_id: f.string()?,
                ext: f.ext()?,
            }),
            38 => Self::ConnectionReconnect(ConnectionReconnect {
                connection_id: f.string()?,
                ext: f.ext()?,
            }),
            39 => Self::ConnectionFlowControl(ConnectionFlowControl {
                connection_id: f.string()?,
                connection_type: flow_connection_type(f.int()?)?,
                operation: flow_operation(f.int()?)?,
                ext: f.ext()?,
            }),
            40 => {
                let ext = read_ext(f.a.next()?)?;
                Self::GroupMemberQuery(GroupMemberQuery {
                    ext,
                    group: f.string()?,
                    ack_id: f.int()?,
                    max: f.int()?,
                    continuation_token: match f.a.next_opt() {
                        Some(r) => r.opt_str()?.map(str::to_owned),
                        None => None,
                    },
                })
            }
            _ => {
                return Ok(Self::Unknown {
                    message_type,
                    body: frame.clone(),
                })
            }
        };
        f.a.finish()?;
        Ok(message)
    }

    /// The type number on the wire.
    pub fn message_type(&self) -> u64 {
        match self {
            Self::HandshakeRequest(_) => 1,
            Self::HandshakeResponse(_) => 2,
            Self::Ping(_) => 3,
            Self::OpenConnection(_) => 4,
            Self::CloseConnection(_) => 5,
            Self::ConnectionData(_) => 6,
            Self::MultiConnectionData(_) => 7,
            Self::UserData(_) => 8,
            Self::MultiUserData(_) => 9,
            Self::BroadcastData(_) => 10,
            Self::JoinGroup(_) => 11,
            Self::LeaveGroup(_) => 12,
            Self::GroupBroadcastData(_) => 13,
            Self::MultiGroupBroadcastData(_) => 14,
            Self::ServiceError(_) => 15,
            Self::UserJoinGroup(_) => 16,
            Self::UserLeaveGroup(_) => 17,
            Self::JoinGroupWithAck(_) => 18,
            Self::LeaveGroupWithAck(_) => 19,
            Self::Ack(_) => 20,
            Self::CheckUserInGroupWithAck(_) => 21,
            Self::ServiceEvent(_) => 22,
            Self::CheckGroupExistenceWithAck(_) => 23,
            Self::CheckConnectionExistenceWithAck(_) => 24,
            Self::CheckUserExistenceWithAck(_) => 25,
            Self::UserJoinGroupWithAck(_) => 26,
            Self::UserLeaveGroupWithAck(_) => 27,
            Self::AccessKeyRequest(_) => 28,
            Self::AccessKeyResponse(_) => 29,
            Self::CloseConnectionWithAck(_) => 30,
            Self::CloseConnectionsWithAck(_) => 31,
            Self::CloseUserConnectionsWithAck(_) => 32,
            Self::CloseGroupConnectionsWithAck(_) => 33,
            Self::ClientInvocation(_) => 34,
            Self::ClientCompletion(_) => 35,
            Self::ErrorCompletion(_) => 36,
            Self::ServiceMapping(_) => 37,
            Self::ConnectionReconnect(_) => 38,
            Self::ConnectionFlowControl(_) => 39,
            Self::GroupMemberQuery(_) => 40,
            Self::Unknown { message_type, .. } => *message_type,
        }
    }

    /// The ack id of a message type this implementation does not know, when it looks like an
    /// ack-able request: the SDK's ack-able messages put the ack id last, before their
    /// extensions, so that is the last integer followed only by maps (or nil). `None` for
    /// known types, and for unknown ones without such an integer.
    pub fn unknown_ack_id(&self) -> Option<i32> {
        let Self::Unknown { body, .. } = self else {
            return None;
        };
        let mut r = Reader::new(body);
        let len = r.array_len().ok()?;
        r.skip().ok()?;
        let mut found = None;
        for _ in 1..len {
            let element = r.raw().ok()?;
            let first = *element.first()?;
            let trailing = matches!(first, 0x80..=0x8f | 0xde | 0xdf | 0xc0);
            if !trailing {
                found = Reader::new(element).integer::<i32>().ok();
            }
        }
        found
    }

    /// Appends the MessagePack body (no length prefix), byte-exact with the Azure SDK.
    pub fn write_body(&self, out: &mut Vec<u8>) {
        if let Self::Unknown { body, .. } = self {
            out.extend_from_slice(body);
            return;
        }
        let mut w = Writer(out);
        let header = |w: &mut Writer<'_>, elements: usize| {
            w.array_len(elements);
            w.uint(self.message_type());
        };
        match self {
            Self::HandshakeRequest(m) => {
                header(&mut w, 7);
                w.sint(m.version.into());
                w.sint(i32::from(m.connection_type).into());
                w.str(&m.target);
                w.sint(i32::from(m.migration_level).into());
                write_ext(&mut w, &m.ext);
                w.bool(m.allow_stateful_reconnects);
            }
            Self::HandshakeResponse(m) => {
                header(&mut w, 4);
                w.str(&m.error_message);
                write_ext(&mut w, &m.ext);
                w.opt_str(m.connection_id.as_deref());
            }
            Self::Ping(m) => {
                header(&mut w, 1 + m.messages.len());
                for s in &m.messages {
                    w.str(s);
                }
            }
            Self::OpenConnection(m) => {
                header(&mut w, 6);
                w.str(&m.connection_id);
                w.map_len(m.claims.len());
                for (k, v) in &m.claims {
                    w.str(k);
                    w.str(v);
                }
                write_headers(&mut w, &m.headers);
                w.str(&m.query_string);
                write_ext(&mut w, &m.ext);
            }
            Self::CloseConnection(m) => {
                header(&mut w, 5);
                w.str(&m.connection_id);
                w.str(&m.error_message);
                write_headers(&mut w, &m.headers);
                write_ext(&mut w, &m.ext);
            }
            Self::ConnectionData(m) => {
                header(&mut w, 4);
                w.str(&m.connection_id);
                w.bin(&m.payload);
                write_ext(&mut w, &m.ext);
            }
            Self::MultiConnectionData(m) => {
                header(&mut w, 4);
                w.str_array(&m.connection_ids);
                write_payloads(&mut w, &m.payloads);
                write_ext(&mut w, &m.ext);
            }
            Self::UserData(m) => {
                header(&mut w, 4);
                w.str(&m.user_id);
                write_payloads(&mut w, &m.payloads);
                write_ext(&mut w, &m.ext);
            }
            Self::MultiUserData(m) => {
                header(&mut w, 4);
                w.str_array(&m.user_ids);
                write_payloads(&mut w, &m.payloads);
                write_ext(&mut w, &m.ext);
            }
            Self::BroadcastData(m) => {
                header(&mut w, 4);
                w.str_array(&m.excluded_connection_ids);
                write_payloads(&mut w, &m.payloads);
                write_ext(&mut w, &m.ext);
            }
            Self::JoinGroup(m) | Self::LeaveGroup(m) => {
                header(&mut w, 4);
                w.str(&m.connection_id);
                w.str(&m.group);
                write_ext(&mut w, &m.ext);
            }
            Self::GroupBroadcastData(m) => {
                header(&mut w, 7);
                w.str(&m.group);
                w.str_array(&m.excluded_connection_ids);
                write_payloads(&mut w, &m.payloads);
                write_ext(&mut w, &m.ext);
                w.str_array(&m.excluded_user_ids);
                w.opt_str(m.caller_user_id.as_deref());
            }
            Self::MultiGroupBroadcastData(m) => {
                header(&mut w, 4);
                w.str_array(&m.groups);
                write_payloads(&mut w, &m.payloads);
                write_ext(&mut w, &m.ext);
            }
            Self::ServiceError(m) => {
                header(&mut w, 2);
                w.str(&m.error_message);
            }
            Self::UserJoinGroup(m) | Self::UserLeaveGroup(m) => {
                header(&mut w, 4);
                w.str(&m.user_id);
                w.opt_str(m.group.as_deref());
                write_ext(&mut w, &m.ext);
            }
            Self::JoinGroupWithAck(m) | Self::LeaveGroupWithAck(m) => {
                header(&mut w, 5);
                w.str(&m.connection_id);
                w.opt_str(m.group.as_deref());
                w.sint(m.ack_id.into());
                write_ext(&mut w, &m.ext);
            }
            Self::Ack(m) => {
                // The SDK's current form: six elements, the payload nil when there is none.
                header(&mut w, 6);
                w.sint(m.ack_id.into());
                w.sint(i32::from(m.status).into());
                w.str(&m.message);
                write_ext(&mut w, &m.ext);
                match &m.payload {
                    Some(p) => w.bin(p),
                    None => w.nil(),
                }
            }
            Self::CheckUserInGroupWithAck(m)
            | Self::UserJoinGroupWithAck(m)
            | Self::UserLeaveGroupWithAck(m) => {
                header(&mut w, 5);
                w.str(&m.user_id);
                w.opt_str(m.group.as_deref());
                w.sint(m.ack_id.into());
                write_ext(&mut w, &m.ext);
            }
            Self::ServiceEvent(m) => {
                header(&mut w, 6);
                w.sint(i32::from(m.object_type).into());
                w.opt_str(m.id.as_deref());
                w.sint(i32::from(m.kind).into());
                w.str(&m.message);
                write_ext(&mut w, &m.ext);
            }
            Self::CheckGroupExistenceWithAck(m)
            | Self::CheckConnectionExistenceWithAck(m)
            | Self::CheckUserExistenceWithAck(m) => {
                header(&mut w, 4);
                w.str(&m.id);
                w.sint(m.ack_id.into());
                write_ext(&mut w, &m.ext);
            }
            Self::AccessKeyRequest(m) => {
                header(&mut w, 4);
                w.str(&m.token);
                w.opt_str(m.kid.as_deref());
                write_ext(&mut w, &m.ext);
            }
            Self::AccessKeyResponse(m) => {
                header(&mut w, 6);
                w.opt_str(m.kid.as_deref());
                w.opt_str(m.access_key.as_deref());
                w.opt_str(m.error_type.as_deref());
                w.opt_str(m.error_message.as_deref());
                write_ext(&mut w, &m.ext);
            }
            Self::CloseConnectionWithAck(m) => {
                header(&mut w, 5);
                w.str(&m.connection_id);
                w.opt_str(m.reason.as_deref());
                w.sint(m.ack_id.into());
                write_ext(&mut w, &m.ext);
            }
            Self::CloseConnectionsWithAck(m)
            | Self::CloseUserConnectionsWithAck(m)
            | Self::CloseGroupConnectionsWithAck(m) => {
                let whole_hub = matches!(self, Self::CloseConnectionsWithAck(_));
                header(&mut w, if whole_hub { 5 } else { 6 });
                if !whole_hub {
                    w.str(&m.target);
                }
                w.opt_str(m.reason.as_deref());
                w.sint(m.ack_id.into());
                w.str_array(&m.excluded);
                write_ext(&mut w, &m.ext);
            }
            Self::ClientInvocation(m) => {
                header(&mut w, 6);
                w.str(&m.invocation_id);
                w.str(&m.connection_id);
                w.str(&m.caller_server_id);
                write_payloads(&mut w, &m.payloads);
                write_ext(&mut w, &m.ext);
            }
            Self::ClientCompletion(m) => {
                header(&mut w, 7);
                w.str(&m.invocation_id);
                w.str(&m.connection_id);
                w.str(&m.caller_server_id);
                w.str(&m.protocol);
                w.bin(&m.payload);
                write_ext(&mut w, &m.ext);
            }
            Self::ErrorCompletion(m) => {
                header(&mut w, 6);
                w.str(&m.invocation_id);
                w.str(&m.connection_id);
                w.str(&m.caller_server_id);
                w.opt_str(m.error.as_deref());
                write_ext(&mut w, &m.ext);
            }
            Self::ServiceMapping(m) => {
                header(&mut w, 5);
                w.str(&m.invocation_id);
                w.str(&m.connection_id);
                w.str(&m.instance_id);
                write_ext(&mut w, &m.ext);
            }
            Self::ConnectionReconnect(m) => {
                header(&mut w, 3);
                w.str(&m.connection_id);
                write_ext(&mut w, &m.ext);
            }
            Self::ConnectionFlowControl(m) => {
                header(&mut w, 5);
                w.str(&m.connection_id);
                w.i32_fixed(m.connection_type as i32);
                w.i32_fixed(m.operation as i32);
                write_ext(&mut w, &m.ext);
            }
            Self::GroupMemberQuery(m) => {
                header(&mut w, 6);
                write_ext(&mut w, &m.ext);
                w.str(&m.group);
                w.sint(m.ack_id.into());
                w.sint(m.max.into());
                w.opt_str(m.continuation_token.as_deref());
            }
            Self::Unknown { .. } => {}
        }
    }

    /// Appends the message as one length-prefixed frame.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] if the body is over 2 GB.
    pub fn write(&self, out: &mut Vec<u8>) -> std::result::Result<(), FrameError> {
        let mut body = Vec::new();
        self.write_body(&mut body);
        write_binary_frame(&body, out)
    }
}

/// Appends a ConnectionData frame without extensions, byte for byte as
/// [`ServiceMessage::write`] writes it, copying `payload` once and allocating at most once.
/// This is the relay's per-message path from a client to its app server.
///
/// # Errors
/// [`FrameError::TooLarge`] if the frame would be over 2 GB.
pub fn write_connection_data(
    connection_id: &str,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> std::result::Result<(), FrameError> {
    // fixarray(4), the type, the id, the payload, an empty ext map.
    let body = 1
        + 1
        + str_header_len(connection_id.len())
        + connection_id.len()
        + bin_header_len(payload.len())
        + payload.len()
        + 1;
    let len = u32::try_from(body)
        .ok()
        .filter(|&len| len <= crate::varint::MAX_VALUE)
        .ok_or(FrameError::TooLarge {
            len: body,
            max: crate::varint::MAX_VALUE as usize,
        })?;
    out.reserve(crate::varint::encoded_len(len) + body);
    crate::varint::encode(len, out);
    let mut w = Writer(out);
    w.array_len(4);
    w.uint(6);
    w.str(connection_id);
    w.bin(payload);
    w.map_len(0);
    Ok(())
}

/// The MessagePack header length of a string of `len` bytes.
fn str_header_len(len: usize) -> usize {
    match len {
        0..32 => 1,
        32..256 => 2,
        256..65_536 => 3,
        _ => 5,
    }
}

/// The MessagePack header length of a binary of `len` bytes.
fn bin_header_len(len: usize) -> usize {
    match len {
        0..256 => 2,
        256..65_536 => 3,
        _ => 5,
    }
}

fn write_ext(w: &mut Writer<'_>, ext: &Ext) {
    let count = [
        ext.tracing_id.is_some(),
        ext.ttl.is_some(),
        ext.protocol.is_some(),
        ext.filter.is_some(),
        ext.data_message_type.is_some(),
        ext.is_partial.is_some(),
    ]
    .into_iter()
    .filter(|&set| set)
    .count();
    w.map_len(count);
    if let Some(v) = ext.tracing_id {
        w.uint(1);
        w.uint(v);
    }
    if let Some(v) = ext.ttl {
        w.uint(2);
        w.sint(v.into());
    }
    if let Some(v) = &ext.protocol {
        w.uint(3);
        w.str(v);
    }
    if let Some(v) = &ext.filter {
        w.uint(4);
        w.str(v);
    }
    if let Some(v) = ext.data_message_type {
        w.uint(5);
        w.sint(i32::from(v).into());
    }
    if let Some(v) = ext.is_partial {
        w.uint(6);
        w.bool(v);
    }
}

fn write_payloads(w: &mut Writer<'_>, payloads: &Payloads) {
    w.map_len(payloads.0.len());
    for (name, bytes) in &payloads.0 {
        w.str(name);
        w.bin(bytes);
    }
}

fn write_headers(w: &mut Writer<'_>, headers: &[(String, Vec<String>)]) {
    w.map_len(headers.len());
    for (name, values) in headers {
        w.str(name);
        w.str_array(values);
    }
}
