//! The backplane protocol: what nodes of one service say to each other over a pub/sub engine
//! (Redis), and on which channels. Pure codec and naming; the decisions are in `cluster`.
//!
//! # Channels
//!
//! Every name starts with the cluster's prefix ([`ClusterConfig::prefix`]). A hub's name is
//! escaped (`%` and `:` percent-encoded) so that every name reads one way.
//!
//! | channel | carries | a node subscribes while |
//! |---|---|---|
//! | `P:control` | heartbeats, goodbyes, user-group memberships, questions for every node | always |
//! | `P:node:ID` | what is for node `ID` alone: its connections' sends, joins and closes, answers, client results, requests for a server connection | always (its own) |
//! | `P:h:HUB` | the hub's broadcasts (and sends to several groups or users at once) | it holds a client of the hub |
//! | `P:g:HUB:GROUP` | one group's sends and closes | it holds a member of the group |
//! | `P:u:HUB:USER` | one user's sends and closes | it holds a connection of the user |
//!
//! # Messages
//!
//! One MessagePack array: `[1, from, kind, ...]`, `from` the sending node's id. A send carries
//! the message pre-encoded once per protocol, as the app server sent it: the receiving node
//! never re-encodes.

use std::time::Duration;

use bytes::Bytes;

use super::command::{Audience, Existence, HubCommand, Target};
use crate::msgpack::{read_str_array, MsgPackError, Reader, Writer};
use crate::service::Payloads;

/// How this relay takes part in a cluster of nodes sharing a backplane.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// This node's id: 1 to 32 of `A-Z a-z 0-9 - _`. It starts every connection id and
    /// token this node issues (`ID.…`), so that a load balancer can route a client's
    /// requests to the node that holds it, and it is the `target` of the server connections
    /// this node asks app servers for.
    pub node_id: String,
    /// Start of every channel name: nodes with the same prefix are one service.
    pub prefix: String,
    /// How often a node says it is alive (default 1 s).
    pub heartbeat_interval: Duration,
    /// A node not heard from for this long is forgotten (default 5 s): its connections no
    /// longer exist for the others.
    pub node_timeout: Duration,
    /// Where clients and app servers reach this node directly (its heartbeats tell the
    /// others, for their operators).
    pub public_url: Option<String>,
    /// How long a question to other nodes (does this connection exist, did this join work)
    /// waits for its answers (default 3 s); no answer is "no".
    pub answer_timeout: Duration,
}

impl ClusterConfig {
    /// A node named `node_id` (checked: see [`node_id`](Self::node_id)), with the default
    /// prefix and timings.
    pub fn new(node_id: &str) -> Result<Self, String> {
        if !valid_node_id(node_id) {
            return Err(format!(
                "{node_id:?}: a node id is 1 to 32 of A-Z, a-z, 0-9, '-' and '_'"
            ));
        }
        Ok(Self {
            node_id: node_id.to_owned(),
            prefix: "signalr-relay".to_owned(),
            public_url: None,
            heartbeat_interval: Duration::from_secs(1),
            node_timeout: Duration::from_secs(5),
            answer_timeout: Duration::from_secs(3),
        })
    }

    /// The channel everyone hears.
    pub fn control_channel(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// The channel of one node.
    pub fn node_channel(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    pub(crate) fn hub_channel(&self, hub: &str) -> String {
        format!("{}:h:{}", self.prefix, escape(hub))
    }

    pub(crate) fn group_channel(&self, hub: &str, group: &str) -> String {
        format!("{}:g:{}:{group}", self.prefix, escape(hub))
    }

    pub(crate) fn user_channel(&self, hub: &str, user: &str) -> String {
        format!("{}:u:{}:{user}", self.prefix, escape(hub))
    }
}

/// Whether `id` may name a node.
pub fn valid_node_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The node an id or token this cluster issued names (`ID.…`).
pub fn node_of(id: &str) -> Option<&str> {
    let (node, rest) = id.split_once('.')?;
    (valid_node_id(node) && !rest.is_empty()).then_some(node)
}

fn escape(hub: &str) -> std::borrow::Cow<'_, str> {
    if !hub.contains([':', '%']) {
        return hub.into();
    }
    hub.replace('%', "%25").replace(':', "%3A").into()
}

/// Version of the message layout.
const VERSION: u8 = 1;

/// Most hubs a heartbeat lists.
pub(crate) const MAX_HEARTBEAT_HUBS: usize = 1000;

/// One message between nodes, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Envelope {
    /// The node that sent it.
    pub(crate) from: String,
    pub(crate) body: Body,
}

/// What a message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body {
    /// Alive, with where it is reached, and the hubs it has app-server connections for.
    /// `incarnation` is new each time the node starts: a node that restarted under the same
    /// id, or two nodes given one id, tell apart by it.
    Heartbeat {
        incarnation: u64,
        url: Option<String>,
        hubs: Vec<String>,
    },
    /// Leaving (a graceful shutdown): forget it now.
    Bye,
    /// Carry out this command in `hub`; with `ask`, answer the sender whether it found what
    /// it was about.
    Command {
        hub: String,
        ask: Option<u64>,
        command: Command,
    },
    /// The answer to a question `ask` of the receiver's.
    Answer { ask: u64, found: bool },
    /// A service message about a client result (a ClientInvocation for a client of the
    /// receiver's, or a completion for an app server of the receiver's that asked), as the
    /// app server wrote it.
    Invocation { message: Bytes },
    /// Ask an app server of `hub` to open a server connection to the sender (`target`).
    NeedServer { hub: String },
}

/// A [`HubCommand`], owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Send {
        to: OwnedAudience,
        payloads: Payloads,
        filter: Option<String>,
    },
    Join {
        connection: String,
        group: Option<String>,
    },
    Leave {
        connection: String,
        group: Option<String>,
    },
    UserJoin {
        user: String,
        group: String,
        ttl: Option<u64>,
    },
    UserLeave {
        user: String,
        group: Option<String>,
    },
    Close {
        to: OwnedAudience,
        reason: Option<String>,
    },
    Exists(OwnedExistence),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnedAudience {
    pub(crate) kind: u8,
    pub(crate) names: Vec<String>,
    pub(crate) except: Vec<String>,
    pub(crate) except_users: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OwnedExistence {
    Connection(String),
    User(String),
    Group(String),
    UserInGroup { user: String, group: String },
}

const TO_HUB: u8 = 0;
const TO_CONNECTIONS: u8 = 1;
const TO_USERS: u8 = 2;
const TO_GROUPS: u8 = 3;

impl OwnedAudience {
    pub(crate) fn of(a: &Audience<'_>) -> Self {
        let (kind, names) = match a.to {
            Target::Hub => (TO_HUB, Vec::new()),
            Target::Connections(n) => (TO_CONNECTIONS, n.to_vec()),
            Target::Users(n) => (TO_USERS, n.to_vec()),
            Target::Groups(n) => (TO_GROUPS, n.to_vec()),
        };
        Self {
            kind,
            names,
            except: a.except.to_vec(),
            except_users: a.except_users.to_vec(),
        }
    }

    pub(crate) fn borrow(&self) -> Audience<'_> {
        let to = match self.kind {
            TO_CONNECTIONS => Target::Connections(&self.names),
            TO_USERS => Target::Users(&self.names),
            TO_GROUPS => Target::Groups(&self.names),
            _ => Target::Hub,
        };
        Audience {
            to,
            except: &self.except,
            except_users: &self.except_users,
        }
    }
}

impl Command {
    /// The owned form of `command`.
    pub(crate) fn of(command: &HubCommand<'_>) -> Self {
        let s = |s: Option<&str>| s.map(str::to_owned);
        match *command {
            HubCommand::Send {
                to,
                payloads,
                filter,
            } => Self::Send {
                to: OwnedAudience::of(&to),
                payloads: payloads.clone(),
                filter: s(filter),
            },
            HubCommand::Join { connection, group } => Self::Join {
                connection: connection.to_owned(),
                group: s(group),
            },
            HubCommand::Leave { connection, group } => Self::Leave {
                connection: connection.to_owned(),
                group: s(group),
            },
            HubCommand::UserJoin { user, group, ttl } => Self::UserJoin {
                user: user.to_owned(),
                group: group.to_owned(),
                ttl: ttl.map(|t| t.as_secs()),
            },
            HubCommand::UserLeave { user, group } => Self::UserLeave {
                user: user.to_owned(),
                group: s(group),
            },
            HubCommand::Close { to, reason } => Self::Close {
                to: OwnedAudience::of(&to),
                reason: s(reason),
            },
            HubCommand::Exists(e) => Self::Exists(match e {
                Existence::Connection(c) => OwnedExistence::Connection(c.to_owned()),
                Existence::User(u) => OwnedExistence::User(u.to_owned()),
                Existence::Group(g) => OwnedExistence::Group(g.to_owned()),
                Existence::UserInGroup { user, group } => OwnedExistence::UserInGroup {
                    user: user.to_owned(),
                    group: group.to_owned(),
                },
            }),
        }
    }

    /// The command, borrowed.
    pub(crate) fn borrow(&self) -> HubCommand<'_> {
        match self {
            Self::Send {
                to,
                payloads,
                filter,
            } => HubCommand::Send {
                to: to.borrow(),
                payloads,
                filter: filter.as_deref(),
            },
            Self::Join { connection, group } => HubCommand::Join {
                connection,
                group: group.as_deref(),
            },
            Self::Leave { connection, group } => HubCommand::Leave {
                connection,
                group: group.as_deref(),
            },
            Self::UserJoin { user, group, ttl } => HubCommand::UserJoin {
                user,
                group,
                ttl: ttl.map(Duration::from_secs),
            },
            Self::UserLeave { user, group } => HubCommand::UserLeave {
                user,
                group: group.as_deref(),
            },
            Self::Close { to, reason } => HubCommand::Close {
                to: to.borrow(),
                reason: reason.as_deref(),
            },
            Self::Exists(e) => HubCommand::Exists(match e {
                OwnedExistence::Connection(c) => Existence::Connection(c),
                OwnedExistence::User(u) => Existence::User(u),
                OwnedExistence::Group(g) => Existence::Group(g),
                OwnedExistence::UserInGroup { user, group } => {
                    Existence::UserInGroup { user, group }
                }
            }),
        }
    }
}

// Message kinds.
const HEARTBEAT: u8 = 0;
const BYE: u8 = 1;
const COMMAND: u8 = 2;
const ANSWER: u8 = 3;
const INVOCATION: u8 = 4;
const NEED_SERVER: u8 = 5;

// Command kinds.
const SEND: u8 = 0;
const JOIN: u8 = 1;
const LEAVE: u8 = 2;
const USER_JOIN: u8 = 3;
const USER_LEAVE: u8 = 4;
const CLOSE: u8 = 5;
const EXISTS: u8 = 6;

// Existence kinds.
const E_CONNECTION: u8 = 0;
const E_USER: u8 = 1;
const E_GROUP: u8 = 2;
const E_USER_IN_GROUP: u8 = 3;

/// Encodes a message from `from`.
pub(crate) fn encode(from: &str, body: &Body) -> Bytes {
    let mut buf = Vec::new();
    let mut w = Writer(&mut buf);
    let head = |w: &mut Writer<'_>, len: usize, kind: u8| {
        w.array_len(3 + len);
        w.uint(VERSION.into());
        w.str(from);
        w.uint(kind.into());
    };
    match body {
        Body::Heartbeat {
            incarnation,
            url,
            hubs,
        } => {
            head(&mut w, 3, HEARTBEAT);
            w.uint(*incarnation);
            w.opt_str(url.as_deref());
            w.str_array(hubs);
        }
        Body::Bye => head(&mut w, 0, BYE),
        Body::Command { hub, ask, command } => {
            head(&mut w, 3, COMMAND);
            w.str(hub);
            match ask {
                Some(a) => w.uint(*a),
                None => w.nil(),
            }
            write_command(&mut w, command);
        }
        Body::Answer { ask, found } => {
            head(&mut w, 2, ANSWER);
            w.uint(*ask);
            w.bool(*found);
        }
        Body::Invocation { message } => {
            head(&mut w, 1, INVOCATION);
            w.bin(message);
        }
        Body::NeedServer { hub } => {
            head(&mut w, 1, NEED_SERVER);
            w.str(hub);
        }
    }
    buf.into()
}

fn write_audience(w: &mut Writer<'_>, a: &OwnedAudience) {
    w.uint(a.kind.into());
    w.str_array(&a.names);
    w.str_array(&a.except);
    w.str_array(&a.except_users);
}

fn write_command(w: &mut Writer<'_>, c: &Command) {
    match c {
        Command::Send {
            to,
            payloads,
            filter,
        } => {
            w.array_len(7);
            w.uint(SEND.into());
            write_audience(w, to);
            w.opt_str(filter.as_deref());
            w.map_len(payloads.0.len());
            for (protocol, bytes) in &payloads.0 {
                w.str(protocol);
                w.bin(bytes);
            }
        }
        Command::Join { connection, group } | Command::Leave { connection, group } => {
            w.array_len(3);
            w.uint(
                if matches!(c, Command::Join { .. }) {
                    JOIN
                } else {
                    LEAVE
                }
                .into(),
            );
            w.str(connection);
            w.opt_str(group.as_deref());
        }
        Command::UserJoin { user, group, ttl } => {
            w.array_len(4);
            w.uint(USER_JOIN.into());
            w.str(user);
            w.str(group);
            match ttl {
                Some(t) => w.uint(*t),
                None => w.nil(),
            }
        }
        Command::UserLeave { user, group } => {
            w.array_len(3);
            w.uint(USER_LEAVE.into());
            w.str(user);
            w.opt_str(group.as_deref());
        }
        Command::Close { to, reason } => {
            w.array_len(6);
            w.uint(CLOSE.into());
            write_audience(w, to);
            w.opt_str(reason.as_deref());
        }
        Command::Exists(e) => {
            w.array_len(4);
            w.uint(EXISTS.into());
            let (kind, a, b) = match e {
                OwnedExistence::Connection(c) => (E_CONNECTION, c, None),
                OwnedExistence::User(u) => (E_USER, u, None),
                OwnedExistence::Group(g) => (E_GROUP, g, None),
                OwnedExistence::UserInGroup { user, group } => {
                    (E_USER_IN_GROUP, user, Some(group.as_str()))
                }
            };
            w.uint(kind.into());
            w.str(a);
            w.opt_str(b);
        }
    }
}

/// Why a message was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("bad MessagePack: {0}")]
    MsgPack(#[from] MsgPackError),
    #[error("version {0} is not understood")]
    Version(u64),
    #[error("unknown kind {0}")]
    Kind(u64),
    #[error("{0} items where {1} were expected")]
    Length(u32, u32),
}

/// Decodes one message.
pub(crate) fn decode(data: &[u8]) -> Result<Envelope, DecodeError> {
    let mut r = Reader::new(data);
    let len = r.array_len()?;
    if len < 3 {
        return Err(DecodeError::Length(len, 3));
    }
    let version: u64 = r.integer()?;
    if version != u64::from(VERSION) {
        return Err(DecodeError::Version(version));
    }
    let from = r.str()?.to_owned();
    let kind: u64 = r.integer()?;
    let expect = |n: u32| {
        if len == 3 + n {
            Ok(())
        } else {
            Err(DecodeError::Length(len, 3 + n))
        }
    };
    let body = match u8::try_from(kind).unwrap_or(u8::MAX) {
        HEARTBEAT => {
            expect(3)?;
            let incarnation = r.integer()?;
            let url = opt_string(&mut r)?;
            let hubs = read_str_array(&mut r)?;
            Body::Heartbeat {
                incarnation,
                url,
                hubs,
            }
        }
        BYE => {
            expect(0)?;
            Body::Bye
        }
        COMMAND => {
            expect(3)?;
            let hub = r.str()?.to_owned();
            let ask = opt_uint(&mut r)?;
            let command = read_command(&mut r)?;
            Body::Command { hub, ask, command }
        }
        ANSWER => {
            expect(2)?;
            let ask = r.integer()?;
            let found = r.bool()?;
            Body::Answer { ask, found }
        }
        INVOCATION => {
            expect(1)?;
            Body::Invocation {
                message: Bytes::copy_from_slice(r.bin()?),
            }
        }
        NEED_SERVER => {
            expect(1)?;
            Body::NeedServer {
                hub: r.str()?.to_owned(),
            }
        }
        _ => return Err(DecodeError::Kind(kind)),
    };
    Ok(Envelope { from, body })
}

fn opt_uint(r: &mut Reader<'_>) -> Result<Option<u64>, MsgPackError> {
    if r.peek_is_nil() {
        r.skip()?;
        return Ok(None);
    }
    r.integer().map(Some)
}

fn opt_string(r: &mut Reader<'_>) -> Result<Option<String>, MsgPackError> {
    Ok(r.opt_str()?.map(str::to_owned))
}

fn read_audience(r: &mut Reader<'_>) -> Result<OwnedAudience, DecodeError> {
    let kind: u64 = r.integer()?;
    if kind > u64::from(TO_GROUPS) {
        return Err(DecodeError::Kind(kind));
    }
    let names = read_str_array(r)?;
    // A hub-wide audience names nobody.
    if kind == u64::from(TO_HUB) && !names.is_empty() {
        return Err(DecodeError::Kind(kind));
    }
    Ok(OwnedAudience {
        kind: kind as u8,
        names,
        except: read_str_array(r)?,
        except_users: read_str_array(r)?,
    })
}

fn read_command(r: &mut Reader<'_>) -> Result<Command, DecodeError> {
    let len = r.array_len()?;
    let kind: u64 = r.integer()?;
    let expect = |n: u32| {
        if len == n {
            Ok(())
        } else {
            Err(DecodeError::Length(len, n))
        }
    };
    Ok(match u8::try_from(kind).unwrap_or(u8::MAX) {
        SEND => {
            expect(7)?;
            let to = read_audience(r)?;
            let filter = opt_string(r)?;
            let n = r.map_len()?;
            let mut payloads = Vec::new();
            for _ in 0..n {
                let protocol = r.str()?.to_owned();
                let bytes = Bytes::copy_from_slice(r.bin()?);
                payloads.push((protocol, bytes));
            }
            Command::Send {
                to,
                payloads: Payloads(payloads),
                filter,
            }
        }
        k @ (JOIN | LEAVE) => {
            expect(3)?;
            let connection = r.str()?.to_owned();
            let group = opt_string(r)?;
            if k == JOIN {
                Command::Join { connection, group }
            } else {
                Command::Leave { connection, group }
            }
        }
        USER_JOIN => {
            expect(4)?;
            Command::UserJoin {
                user: r.str()?.to_owned(),
                group: r.str()?.to_owned(),
                ttl: opt_uint(r)?,
            }
        }
        USER_LEAVE => {
            expect(3)?;
            Command::UserLeave {
                user: r.str()?.to_owned(),
                group: opt_string(r)?,
            }
        }
        CLOSE => {
            expect(6)?;
            Command::Close {
                to: read_audience(r)?,
                reason: opt_string(r)?,
            }
        }
        EXISTS => {
            expect(4)?;
            let kind: u64 = r.integer()?;
            let a = r.str()?.to_owned();
            let b = opt_string(r)?;
            Command::Exists(match (u8::try_from(kind).unwrap_or(u8::MAX), b) {
                (E_CONNECTION, _) => OwnedExistence::Connection(a),
                (E_USER, _) => OwnedExistence::User(a),
                (E_GROUP, _) => OwnedExistence::Group(a),
                (E_USER_IN_GROUP, Some(group)) => OwnedExistence::UserInGroup { user: a, group },
                _ => return Err(DecodeError::Kind(kind)),
            })
        }
        _ => return Err(DecodeError::Kind(kind)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(body: Body) {
        let bytes = encode("n1", &body);
        let back = decode(&bytes).expect("decodes");
        assert_eq!(back.from, "n1");
        assert_eq!(back.body, body);
        // Every truncation is an error, never a panic.
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn every_message_round_trips_and_truncations_fail() {
        let audience = OwnedAudience {
            kind: TO_GROUPS,
            names: vec!["g1".into(), "g2".into()],
            except: vec!["c1".into()],
            except_users: vec!["ann".into()],
        };
        roundtrip(Body::Heartbeat {
            incarnation: u64::MAX,
            url: Some("http://10.0.0.1:8080".into()),
            hubs: vec!["chat".into(), "x:y".into()],
        });
        roundtrip(Body::Bye);
        roundtrip(Body::Answer {
            ask: 7,
            found: true,
        });
        roundtrip(Body::Invocation {
            message: Bytes::from_static(b"\x01\x02"),
        });
        roundtrip(Body::NeedServer { hub: "chat".into() });
        let commands = [
            Command::Send {
                to: audience.clone(),
                payloads: Payloads(vec![
                    ("json".into(), Bytes::from_static(b"{}\x1e")),
                    ("messagepack".into(), Bytes::from_static(b"\x01\x90")),
                ]),
                filter: Some("userId eq 'a'".into()),
            },
            Command::Join {
                connection: "n2.abc".into(),
                group: Some("g".into()),
            },
            Command::Leave {
                connection: "n2.abc".into(),
                group: None,
            },
            Command::UserJoin {
                user: "ann".into(),
                group: "g".into(),
                ttl: Some(30),
            },
            Command::UserLeave {
                user: "ann".into(),
                group: None,
            },
            Command::Close {
                to: audience,
                reason: None,
            },
            Command::Exists(OwnedExistence::UserInGroup {
                user: "ann".into(),
                group: "g".into(),
            }),
            Command::Exists(OwnedExistence::Connection("n3.x".into())),
        ];
        for command in commands {
            // Borrowed and owned forms agree.
            assert_eq!(Command::of(&command.borrow()), command);
            roundtrip(Body::Command {
                hub: "chat".into(),
                ask: Some(3),
                command,
            });
        }
    }

    #[test]
    fn names_read_one_way() {
        let c = ClusterConfig::new("n1").expect("valid");
        assert_eq!(c.hub_channel("chat"), "signalr-relay:h:chat");
        assert_ne!(c.group_channel("a:b", "c"), c.group_channel("a", "b:c"));
        assert_eq!(c.group_channel("a%3Ab", "c"), "signalr-relay:g:a%253Ab:c");
        assert_eq!(node_of("n1.abc"), Some("n1"));
        assert_eq!(node_of("abc"), None);
        assert_eq!(node_of("n1."), None);
        assert_eq!(node_of("n/1.abc"), None);
        for bad in ["", "a.b", "a b", &"x".repeat(33)] {
            assert!(ClusterConfig::new(bad).is_err(), "{bad:?}");
        }
    }
}
