//! Who is where: hubs, their server and client connections, groups, users, and the indexes
//! back from a connection. Pure data: membership changes, and lookups as iterators.
//!
//! Connection ids are one namespace across hubs (as the service protocol addresses them); a
//! connection's groups are always in its own hub.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ConnHandle;

/// A hub, by number: cheap to copy and compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct HubId(u32);

#[derive(Debug, Default)]
struct Hub {
    name: String,
    servers: BTreeSet<ConnHandle>,
    clients: BTreeSet<ConnHandle>,
    groups: BTreeMap<String, Members>,
    users: BTreeMap<String, Members>,
    /// User → group memberships that outlive connections, with their expiry.
    user_groups: BTreeMap<String, BTreeMap<String, Option<Instant>>>,
    /// Each user's memberships made without a time to live, oldest first: only the latest
    /// [`LASTING_PER_USER`] are kept, as Azure keeps them.
    lasting: BTreeMap<String, std::collections::VecDeque<String>>,
}

/// The connections of a user, or the members of a group: most users have one connection, held
/// in place (a set would allocate a node of eleven for it).
#[derive(Debug)]
enum Members {
    One(ConnHandle),
    Many(BTreeSet<ConnHandle>),
}

impl Members {
    fn insert(&mut self, conn: ConnHandle) {
        match self {
            Self::One(one) if *one == conn => {}
            Self::One(one) => *self = Self::Many(BTreeSet::from([*one, conn])),
            Self::Many(many) => {
                many.insert(conn);
            }
        }
    }

    /// Takes `conn` out: whether none is left.
    fn remove(&mut self, conn: ConnHandle) -> bool {
        match self {
            Self::One(one) => *one == conn,
            Self::Many(many) => {
                many.remove(&conn);
                if many.len() <= 1 {
                    let Some(&last) = many.first() else {
                        return true;
                    };
                    *self = Self::One(last);
                }
                false
            }
        }
    }

    fn contains(&self, conn: ConnHandle) -> bool {
        match self {
            Self::One(one) => *one == conn,
            Self::Many(many) => many.contains(&conn),
        }
    }

    fn iter(&self) -> impl Iterator<Item = ConnHandle> + '_ {
        let (one, many) = match self {
            Self::One(one) => (Some(*one), None),
            Self::Many(many) => (None, Some(many.iter().copied())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

/// A user's group memberships without a time to live that are kept (Azure's: the latest 100).
const LASTING_PER_USER: usize = 100;

/// How long a membership without a time to live lasts (Azure's: at most a year).
const LASTING: Duration = Duration::from_secs(365 * 24 * 3600);

/// A set whose emptiness a backplane subscription follows: a hub's clients, a group's
/// members, a user's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    Hub(HubId),
    Group(HubId, String),
    User(HubId, String),
}

/// The directory.
#[derive(Debug)]
pub(crate) struct Directory {
    /// Whether to note the sets that became empty or stopped being (a cluster node's
    /// subscriptions follow them).
    pub(crate) watch: bool,
    touched: Vec<Scope>,
    /// Most groups one connection, or one user, may be in.
    max_groups: usize,
    /// Longest group name, in bytes.
    max_group_name: usize,
    hubs: Vec<Hub>,
    by_name: BTreeMap<String, HubId>,
    /// Every client connection, by its connection id (the client's own, shared).
    by_connection_id: BTreeMap<Arc<str>, (ConnHandle, HubId)>,
    /// The groups of each client in at least one.
    groups_of: BTreeMap<ConnHandle, BTreeSet<String>>,
}

impl Default for Directory {
    fn default() -> Self {
        Self::new(usize::MAX, usize::MAX)
    }
}

impl Directory {
    /// A directory whose connections and users are each in at most `max_groups` groups, with
    /// names of at most `max_group_name` bytes.
    pub(crate) fn new(max_groups: usize, max_group_name: usize) -> Self {
        Self {
            watch: false,
            touched: Vec::new(),
            max_groups,
            max_group_name,
            hubs: Vec::new(),
            by_name: BTreeMap::new(),
            by_connection_id: BTreeMap::new(),
            groups_of: BTreeMap::new(),
        }
    }

    /// Whether one more group fits a set of `len` (unless `group` is in it), by name too.
    fn admits(&self, group: &str, len: usize, has: impl FnOnce() -> bool) -> bool {
        !group.is_empty() && group.len() <= self.max_group_name && (len < self.max_groups || has())
    }

    /// The hub named `name`, created on first use.
    pub(crate) fn intern(&mut self, name: &str) -> HubId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let id = HubId(u32::try_from(self.hubs.len()).unwrap_or(u32::MAX));
        self.hubs.push(Hub {
            name: name.to_owned(),
            ..Hub::default()
        });
        self.by_name.insert(name.to_owned(), id);
        id
    }

    /// The hub named `name`, if it was ever used.
    pub(crate) fn find(&self, name: &str) -> Option<HubId> {
        self.by_name.get(name).copied()
    }

    fn hub(&self, id: HubId) -> &Hub {
        &self.hubs[id.0 as usize]
    }

    fn hub_mut(&mut self, id: HubId) -> &mut Hub {
        &mut self.hubs[id.0 as usize]
    }

    pub(crate) fn name(&self, id: HubId) -> &str {
        &self.hub(id).name
    }

    /// How many hubs were ever used.
    pub(crate) fn hub_count(&self) -> usize {
        self.hubs.len()
    }

    /// Every hub's name.
    pub(crate) fn hub_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.hubs.iter().map(|h| h.name.as_str())
    }

    /// The sets that became empty or stopped being since the last call (when watching).
    pub(crate) fn take_touched(&mut self) -> Vec<Scope> {
        std::mem::take(&mut self.touched)
    }

    fn touch(&mut self, scope: impl FnOnce() -> Scope) {
        if self.watch {
            self.touched.push(scope());
        }
    }

    // ---------------------------------------------------------------- connections

    pub(crate) fn add_server(&mut self, hub: HubId, conn: ConnHandle) {
        self.hub_mut(hub).servers.insert(conn);
    }

    pub(crate) fn remove_server(&mut self, hub: HubId, conn: ConnHandle) {
        self.hub_mut(hub).servers.remove(&conn);
    }

    /// The server connections of a hub.
    pub(crate) fn servers(&self, hub: HubId) -> impl Iterator<Item = ConnHandle> + '_ {
        self.hub(hub).servers.iter().copied()
    }

    pub(crate) fn add_client(&mut self, hub: HubId, conn: ConnHandle, connection_id: &Arc<str>) {
        let clients = &mut self.hub_mut(hub).clients;
        clients.insert(conn);
        if clients.len() == 1 {
            self.touch(|| Scope::Hub(hub));
        }
        self.by_connection_id
            .insert(Arc::clone(connection_id), (conn, hub));
    }

    /// Forgets a client: its hub, its connection id, its groups and its user.
    pub(crate) fn remove_client(
        &mut self,
        hub: HubId,
        conn: ConnHandle,
        connection_id: &str,
        user: Option<&str>,
    ) {
        self.by_connection_id.remove(connection_id);
        let groups = self.groups_of.remove(&conn).unwrap_or_default();
        let h = self.hub_mut(hub);
        h.clients.remove(&conn);
        let no_clients = h.clients.is_empty();
        let mut emptied = Vec::new();
        for g in groups {
            if remove_member(&mut h.groups, &g, conn) {
                emptied.push(Scope::Group(hub, g));
            }
        }
        if let Some(user) = user {
            if remove_member(&mut h.users, user, conn) {
                emptied.push(Scope::User(hub, user.to_owned()));
            }
        }
        if no_clients {
            emptied.push(Scope::Hub(hub));
        }
        if self.watch {
            self.touched.extend(emptied);
        }
    }

    /// The client with this connection id.
    pub(crate) fn connection(&self, connection_id: &str) -> Option<ConnHandle> {
        self.by_connection_id.get(connection_id).map(|(c, _)| *c)
    }

    /// The client connections of a hub, negotiated or open.
    pub(crate) fn clients(&self, hub: HubId) -> impl Iterator<Item = ConnHandle> + '_ {
        self.hub(hub).clients.iter().copied()
    }

    pub(crate) fn has_clients(&self, hub: HubId) -> bool {
        !self.hub(hub).clients.is_empty()
    }

    // ---------------------------------------------------------------- users

    /// Indexes an open client under its user, and puts it in the user's groups.
    pub(crate) fn attach_user(&mut self, now: Instant, hub: HubId, conn: ConnHandle, user: &str) {
        if add_member(&mut self.hub_mut(hub).users, user, conn) {
            self.touch(|| Scope::User(hub, user.to_owned()));
        }
        let h = self.hub_mut(hub);
        let groups: Vec<String> = h
            .user_groups
            .get(user)
            .map(|g| {
                g.iter()
                    .filter(|(_, exp)| exp.is_none_or(|e| e > now))
                    .map(|(g, _)| g.clone())
                    .collect()
            })
            .unwrap_or_default();
        for g in groups {
            self.join(hub, conn, &g);
        }
    }

    /// The open connections of a user.
    pub(crate) fn user(&self, hub: HubId, user: &str) -> impl Iterator<Item = ConnHandle> + '_ {
        self.hub(hub)
            .users
            .get(user)
            .into_iter()
            .flat_map(Members::iter)
    }

    /// Puts a user in a group, for `ttl` if given: their connections now and later.
    pub(crate) fn user_join(
        &mut self,
        now: Instant,
        hub: HubId,
        user: &str,
        group: &str,
        ttl: Option<Duration>,
    ) -> bool {
        let (max_groups, max_name) = (self.max_groups, self.max_group_name);
        if group.is_empty() || group.len() > max_name {
            return false;
        }
        let h = self.hub_mut(hub);
        let groups = h.user_groups.entry(user.to_owned()).or_default();
        // Expired memberships go whenever the user's set changes.
        groups.retain(|_, until| until.is_none_or(|t| t > now));
        if groups.len() >= max_groups && !groups.contains_key(group) {
            return false;
        }
        // At most a year, whatever is asked (and never past what the clock can hold).
        let lasting = ttl.is_none();
        let ttl = ttl.map_or(LASTING, |t| t.min(LASTING));
        groups.insert(group.to_owned(), now.checked_add(ttl));
        let order = h.lasting.entry(user.to_owned()).or_default();
        order.retain(|g| g != group);
        if lasting {
            order.push_back(group.to_owned());
            if order.len() > LASTING_PER_USER {
                if let Some(oldest) = order.pop_front() {
                    groups.remove(&oldest);
                }
            }
        }
        let conns: Vec<ConnHandle> = self.user(hub, user).collect();
        for c in conns {
            self.join(hub, c, group);
        }
        true
    }

    /// Takes a user out of a group (`None`: out of every group), with their connections.
    pub(crate) fn user_leave(&mut self, hub: HubId, user: &str, group: Option<&str>) {
        let h = self.hub_mut(hub);
        match group {
            Some(g) => {
                if let Some(groups) = h.user_groups.get_mut(user) {
                    groups.remove(g);
                }
                if let Some(order) = h.lasting.get_mut(user) {
                    order.retain(|l| l != g);
                }
            }
            None => {
                h.user_groups.remove(user);
                h.lasting.remove(user);
            }
        }
        let conns: Vec<ConnHandle> = self.user(hub, user).collect();
        for c in conns {
            match group {
                Some(g) => self.leave(hub, c, g),
                None => self.leave_all(hub, c),
            }
        }
    }

    /// Whether a user is in a group: through a connection, or a membership of their own.
    pub(crate) fn user_in_group(&self, now: Instant, hub: HubId, user: &str, group: &str) -> bool {
        let h = self.hub(hub);
        let members = h.groups.get(group);
        self.user(hub, user)
            .any(|c| members.is_some_and(|m| m.contains(c)))
            || h.user_groups
                .get(user)
                .is_some_and(|g| g.get(group).is_some_and(|exp| exp.is_none_or(|e| e > now)))
    }

    /// The groups a user keeps memberships in (expired ones included, until swept).
    #[cfg(test)]
    pub(crate) fn user_groups(&self, hub: HubId, user: &str) -> Vec<&String> {
        self.hub(hub)
            .user_groups
            .get(user)
            .map(|g| g.keys().collect())
            .unwrap_or_default()
    }

    // ---------------------------------------------------------------- groups

    /// The hub of the client with this connection id.
    /// The client with this connection id, if it is one of `hub`'s.
    pub(crate) fn connection_in(&self, connection_id: &str, hub: HubId) -> Option<ConnHandle> {
        match self.by_connection_id.get(connection_id) {
            Some(&(conn, h)) if h == hub => Some(conn),
            _ => None,
        }
    }

    pub(crate) fn hub_of(&self, connection_id: &str) -> Option<HubId> {
        self.by_connection_id
            .get(connection_id)
            .map(|&(_, hub)| hub)
    }

    /// Puts the client with this connection id in a group of its hub. Whether it exists.
    /// Refused (`false`) for an unknown connection, and past the limits.
    pub(crate) fn join_by_id(&mut self, connection_id: &str, group: &str) -> bool {
        let Some(&(conn, hub)) = self.by_connection_id.get(connection_id) else {
            return false;
        };
        let mine = self.groups_of.get(&conn);
        if !self.admits(group, mine.map_or(0, BTreeSet::len), || {
            mine.is_some_and(|g| g.contains(group))
        }) {
            return false;
        }
        self.join(hub, conn, group);
        true
    }

    /// Takes the client with this connection id out of a group of its hub (`None`: out of
    /// every group). Whether it exists.
    pub(crate) fn leave_by_id(&mut self, connection_id: &str, group: Option<&str>) -> bool {
        let Some(&(conn, hub)) = self.by_connection_id.get(connection_id) else {
            return false;
        };
        match group {
            Some(g) => self.leave(hub, conn, g),
            None => self.leave_all(hub, conn),
        }
        true
    }

    fn join(&mut self, hub: HubId, conn: ConnHandle, group: &str) {
        self.groups_of
            .entry(conn)
            .or_default()
            .insert(group.to_owned());
        if add_member(&mut self.hub_mut(hub).groups, group, conn) {
            self.touch(|| Scope::Group(hub, group.to_owned()));
        }
    }

    fn leave(&mut self, hub: HubId, conn: ConnHandle, group: &str) {
        if let Some(groups) = self.groups_of.get_mut(&conn) {
            groups.remove(group);
            if groups.is_empty() {
                self.groups_of.remove(&conn);
            }
        }
        if remove_member(&mut self.hub_mut(hub).groups, group, conn) {
            self.touch(|| Scope::Group(hub, group.to_owned()));
        }
    }

    fn leave_all(&mut self, hub: HubId, conn: ConnHandle) {
        let groups = self.groups_of.remove(&conn).unwrap_or_default();
        for g in groups {
            if remove_member(&mut self.hub_mut(hub).groups, &g, conn) {
                self.touch(|| Scope::Group(hub, g));
            }
        }
    }

    /// Whether a client is in a group.
    pub(crate) fn in_group(&self, conn: ConnHandle, group: &str) -> bool {
        self.groups_of
            .get(&conn)
            .is_some_and(|groups| groups.contains(group))
    }

    /// The members of a group.
    pub(crate) fn group(&self, hub: HubId, group: &str) -> impl Iterator<Item = ConnHandle> + '_ {
        self.hub(hub)
            .groups
            .get(group)
            .into_iter()
            .flat_map(Members::iter)
    }

    pub(crate) fn group_exists(&self, hub: HubId, group: &str) -> bool {
        self.hub(hub).groups.contains_key(group)
    }
}

/// Puts `conn` in the set under `key`, making the set if there is none: whether it was made.
fn add_member(sets: &mut BTreeMap<String, Members>, key: &str, conn: ConnHandle) -> bool {
    match sets.get_mut(key) {
        Some(members) => {
            members.insert(conn);
            false
        }
        None => {
            sets.insert(key.to_owned(), Members::One(conn));
            true
        }
    }
}

/// Takes `conn` out of the set under `key`, dropping the set once empty: whether it was
/// dropped.
fn remove_member(sets: &mut BTreeMap<String, Members>, key: &str, conn: ConnHandle) -> bool {
    if let Some(members) = sets.get_mut(key) {
        if members.remove(conn) {
            sets.remove(key);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_leaves_no_trace() {
        let mut d = Directory::default();
        let hub = d.intern("chat");
        assert_eq!(d.intern("chat"), hub);
        let c = ConnHandle(7);
        d.add_client(hub, c, &"id-7".into());
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        d.attach_user(now, hub, c, "ann");
        assert!(d.join_by_id("id-7", "g1"));
        d.user_join(now, hub, "ann", "g2", None);
        assert_eq!(d.group(hub, "g2").collect::<Vec<_>>(), vec![c]);
        assert!(d.user_in_group(now, hub, "ann", "g1"));
        d.remove_client(hub, c, "id-7", Some("ann"));
        assert_eq!(d.connection("id-7"), None);
        assert!(!d.group_exists(hub, "g1"));
        assert!(!d.group_exists(hub, "g2"));
        assert_eq!(d.user(hub, "ann").count(), 0);
        assert!(!d.has_clients(hub));
        assert!(d.groups_of.is_empty());
        // The user's own membership outlives the connection.
        assert!(d.user_in_group(now, hub, "ann", "g2"));
    }

    #[test]
    fn a_users_connections_and_a_groups_members_grow_and_shrink_in_any_order() {
        let mut d = Directory {
            watch: true,
            ..Directory::default()
        };
        let hub = d.intern("chat");
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let conns = [ConnHandle(3), ConnHandle(1), ConnHandle(2)];
        for (i, &c) in conns.iter().enumerate() {
            d.add_client(hub, c, &format!("id-{i}").into());
            d.attach_user(now, hub, c, "ann");
            d.attach_user(now, hub, c, "ann");
            assert!(d.join_by_id(&format!("id-{i}"), "g"));
        }
        let sorted = vec![ConnHandle(1), ConnHandle(2), ConnHandle(3)];
        assert_eq!(d.user(hub, "ann").collect::<Vec<_>>(), sorted);
        assert_eq!(d.group(hub, "g").collect::<Vec<_>>(), sorted);
        let user = Scope::User(hub, "ann".into());
        let group = Scope::Group(hub, "g".into());
        // Each set was noted once, when it stopped being empty.
        let touched = std::mem::take(&mut d.touched);
        assert_eq!(touched.iter().filter(|s| **s == user).count(), 1);
        assert_eq!(touched.iter().filter(|s| **s == group).count(), 1);
        d.remove_client(hub, ConnHandle(1), "id-1", Some("ann"));
        assert_eq!(
            d.user(hub, "ann").collect::<Vec<_>>(),
            vec![ConnHandle(2), ConnHandle(3)]
        );
        d.remove_client(hub, ConnHandle(3), "id-0", Some("ann"));
        assert_eq!(d.user(hub, "ann").collect::<Vec<_>>(), vec![ConnHandle(2)]);
        assert_eq!(d.group(hub, "g").collect::<Vec<_>>(), vec![ConnHandle(2)]);
        assert!(!d.touched.contains(&user));
        // Someone else's connection is not one of theirs: nothing changes.
        d.remove_client(hub, ConnHandle(9), "id-9", Some("ann"));
        assert_eq!(d.user(hub, "ann").count(), 1);
        d.remove_client(hub, ConnHandle(2), "id-2", Some("ann"));
        assert_eq!(d.user(hub, "ann").count(), 0);
        assert!(!d.group_exists(hub, "g"));
        assert!(d.touched.contains(&user) && d.touched.contains(&group));
    }
}
