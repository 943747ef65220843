//! One command type for routing. Every way of asking the relay to fan a message out, change a
//! membership, close connections or check that something exists translates into a
//! [`HubCommand`], and [`Relay::apply`](super::Relay) carries each out in one place. The
//! service protocol translates here ([`HubCommand::from_service`]); a REST API and a backplane
//! are further translators into the same verbs.

use std::collections::BTreeSet;
use std::slice;
use std::time::Duration;

use super::directory::{Directory, HubId};
use super::ConnHandle;
use crate::service::{Payloads, ServiceMessage};

/// What to do in a hub.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HubCommand<'a> {
    /// Send a message, pre-encoded once per protocol.
    Send {
        to: Audience<'a>,
        payloads: &'a Payloads,
        /// Only to the connections that pass this OData filter (extension key 4).
        filter: Option<&'a str>,
    },
    /// Put a connection in a group (in the connection's own hub). Without a group, nothing
    /// is done and the answer is no.
    Join {
        connection: &'a str,
        group: Option<&'a str>,
    },
    /// Take a connection out of a group (`None`: out of every group).
    Leave {
        connection: &'a str,
        group: Option<&'a str>,
    },
    /// Put a user in a group, for `ttl` if given.
    UserJoin {
        user: &'a str,
        group: &'a str,
        ttl: Option<Duration>,
    },
    /// Take a user out of a group (`None`: out of every group).
    UserLeave {
        user: &'a str,
        group: Option<&'a str>,
    },
    /// Close connections, telling them why.
    Close {
        to: Audience<'a>,
        reason: Option<&'a str>,
    },
    /// Whether something exists.
    Exists(Existence<'a>),
}

/// Who a message or a close is for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Audience<'a> {
    pub(crate) to: Target<'a>,
    /// Connections left out.
    pub(crate) except: &'a [String],
    /// Users whose connections are left out.
    pub(crate) except_users: &'a [String],
}

/// The connections an [`Audience`] starts from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    /// Every connection of the hub.
    Hub,
    /// These connections, in order (a repeated id is sent to twice).
    Connections(&'a [String]),
    /// Every connection of these users.
    Users(&'a [String]),
    /// Every connection in these groups. A send reaches a connection once per group it is in
    /// (as ASP.NET Core's `SendGroupsAsync` does, and the Management SDK's facts expect); a
    /// close closes it once.
    Groups(&'a [String]),
}

impl<'a> Target<'a> {
    pub(crate) fn only(self) -> Audience<'a> {
        self.except(&[])
    }

    fn except(self, except: &'a [String]) -> Audience<'a> {
        Audience {
            to: self,
            except,
            except_users: &[],
        }
    }
}

impl Audience<'_> {
    /// The connections left out.
    pub(crate) fn excluded(&self, d: &Directory, hub: HubId) -> BTreeSet<ConnHandle> {
        let by_id = self.except.iter().filter_map(|id| d.connection(id));
        let by_user = self.except_users.iter().flat_map(|u| d.user(hub, u));
        by_id.chain(by_user).collect()
    }

    /// The connections, once each, in order.
    pub(crate) fn resolve(&self, d: &Directory, hub: HubId) -> Vec<ConnHandle> {
        let except = self.excluded(d, hub);
        let all: Vec<ConnHandle> = match self.to {
            Target::Hub => d.clients(hub).collect(),
            Target::Connections(ids) => ids
                .iter()
                .filter_map(|id| d.connection_in(id, hub))
                .collect(),
            Target::Users(_) | Target::Groups(_) => self.to.union(d, hub).into_iter().collect(),
        };
        all.into_iter().filter(|c| !except.contains(c)).collect()
    }
}

impl Target<'_> {
    /// The connections of the users or groups, once each.
    pub(crate) fn union(&self, d: &Directory, hub: HubId) -> BTreeSet<ConnHandle> {
        match *self {
            Target::Users(users) => users.iter().flat_map(|u| d.user(hub, u)).collect(),
            Target::Groups(groups) => groups.iter().flat_map(|g| d.group(hub, g)).collect(),
            Target::Hub | Target::Connections(_) => BTreeSet::new(),
        }
    }
}

/// What an existence check asks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Existence<'a> {
    Connection(&'a str),
    User(&'a str),
    Group(&'a str),
    UserInGroup { user: &'a str, group: &'a str },
}

/// Who asked for a command, and where its answer goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin {
    /// A server connection, for its hub; `ack` is the id its Ack answers, if it wants one.
    Server {
        conn: ConnHandle,
        hub: HubId,
        ack: Option<i32>,
    },
}

impl<'a> HubCommand<'a> {
    /// The command a service message asks for, with the id of the Ack it wants. `None` for a
    /// message that is not a hub command (a client's own traffic, pings, client results).
    pub(crate) fn from_service(msg: &'a ServiceMessage) -> Option<(Self, Option<i32>)> {
        use ServiceMessage as M;
        let one = slice::from_ref;
        let send = |to, payloads, ext: &'a crate::service::Ext| Self::Send {
            to,
            payloads,
            filter: ext.filter.as_deref(),
        };
        Some(match msg {
            M::MultiConnectionData(m) => (
                send(
                    Target::Connections(&m.connection_ids).only(),
                    &m.payloads,
                    &m.ext,
                ),
                None,
            ),
            M::UserData(m) => (
                send(Target::Users(one(&m.user_id)).only(), &m.payloads, &m.ext),
                None,
            ),
            M::MultiUserData(m) => (
                send(Target::Users(&m.user_ids).only(), &m.payloads, &m.ext),
                None,
            ),
            M::BroadcastData(m) => {
                let to = Target::Hub.except(&m.excluded_connection_ids);
                (send(to, &m.payloads, &m.ext), None)
            }
            M::GroupBroadcastData(m) => {
                let to = Audience {
                    to: Target::Groups(one(&m.group)),
                    except: &m.excluded_connection_ids,
                    except_users: &m.excluded_user_ids,
                };
                (send(to, &m.payloads, &m.ext), None)
            }
            M::MultiGroupBroadcastData(m) => (
                send(Target::Groups(&m.groups).only(), &m.payloads, &m.ext),
                None,
            ),
            M::JoinGroup(m) => (
                Self::Join {
                    connection: &m.connection_id,
                    group: Some(&m.group),
                },
                None,
            ),
            M::LeaveGroup(m) => (
                Self::Leave {
                    connection: &m.connection_id,
                    group: Some(&m.group),
                },
                None,
            ),
            M::JoinGroupWithAck(m) => (
                Self::Join {
                    connection: &m.connection_id,
                    group: m.group.as_deref(),
                },
                Some(m.ack_id),
            ),
            M::LeaveGroupWithAck(m) => (
                Self::Leave {
                    connection: &m.connection_id,
                    group: m.group.as_deref(),
                },
                Some(m.ack_id),
            ),
            M::UserJoinGroup(m) => (
                Self::UserJoin {
                    user: &m.user_id,
                    group: m.group.as_deref().unwrap_or_default(),
                    ttl: ttl(m.ext.ttl),
                },
                None,
            ),
            M::UserLeaveGroup(m) => (
                Self::UserLeave {
                    user: &m.user_id,
                    group: m.group.as_deref(),
                },
                None,
            ),
            M::UserJoinGroupWithAck(m) => (
                Self::UserJoin {
                    user: &m.user_id,
                    group: m.group.as_deref().unwrap_or_default(),
                    ttl: ttl(m.ext.ttl),
                },
                Some(m.ack_id),
            ),
            M::UserLeaveGroupWithAck(m) => (
                Self::UserLeave {
                    user: &m.user_id,
                    group: m.group.as_deref(),
                },
                Some(m.ack_id),
            ),
            M::CheckUserInGroupWithAck(m) => (
                Self::Exists(Existence::UserInGroup {
                    user: &m.user_id,
                    group: m.group.as_deref().unwrap_or_default(),
                }),
                Some(m.ack_id),
            ),
            M::CheckGroupExistenceWithAck(m) => {
                (Self::Exists(Existence::Group(&m.id)), Some(m.ack_id))
            }
            M::CheckConnectionExistenceWithAck(m) => {
                (Self::Exists(Existence::Connection(&m.id)), Some(m.ack_id))
            }
            M::CheckUserExistenceWithAck(m) => {
                (Self::Exists(Existence::User(&m.id)), Some(m.ack_id))
            }
            M::CloseConnectionWithAck(m) => (
                Self::Close {
                    to: Target::Connections(one(&m.connection_id)).only(),
                    reason: m.reason.as_deref(),
                },
                Some(m.ack_id),
            ),
            M::CloseConnectionsWithAck(m) => (
                Self::Close {
                    to: Target::Hub.except(&m.excluded),
                    reason: m.reason.as_deref(),
                },
                Some(m.ack_id),
            ),
            M::CloseUserConnectionsWithAck(m) => (
                Self::Close {
                    to: Target::Users(one(&m.target)).except(&m.excluded),
                    reason: m.reason.as_deref(),
                },
                Some(m.ack_id),
            ),
            M::CloseGroupConnectionsWithAck(m) => (
                Self::Close {
                    to: Target::Groups(one(&m.target)).except(&m.excluded),
                    reason: m.reason.as_deref(),
                },
                Some(m.ack_id),
            ),
            _ => return None,
        })
    }
}

/// A membership's time to live: whole seconds; a negative one is no limit.
fn ttl(secs: Option<i32>) -> Option<Duration> {
    secs.and_then(|t| u64::try_from(t).ok())
        .map(Duration::from_secs)
}
