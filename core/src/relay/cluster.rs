//! Several relay nodes as one service, over a pub/sub backplane ([`backplane`](super::backplane)
//! has the channels and the messages).
//!
//! What stays local: each client's traffic with its app server. A node holds its clients,
//! and its app servers' connections carry them; nothing of that crosses the backplane.
//!
//! What crosses: every command a hub or the REST API addresses to more than this node's
//! clients. The node carries it out for its own clients, then publishes it once on the one
//! channel that reaches the others concerned (the hub's, the group's, the user's, or the
//! node's that holds a connection), and every node that hears it carries it out for its own.
//! A command that needs an answer from where the connection is (a join, an existence check,
//! a close of one connection) asks, and answers when the answers come, or "no" at the answer
//! timeout; a connection whose node is not alive is "no" at once.
//!
//! The node directory is the heartbeats: each node says every heartbeat interval that it is
//! alive and which hubs it has app servers for, and forgets a node not heard from for the
//! node timeout. A node hears its own heartbeats back: when they stop coming while the engine
//! says it is connected, the subscription is dead, and the adapter is asked to reconnect
//! ([`Output::ResetBackplane`]).
//!
//! A node with no app server for a hub that another node has app servers for asks that node
//! for one ([`Body::NeedServer`]); that node pings one of its app server's connections with
//! `target` set to the asking node, and the app server opens a connection through the load
//! balancer to it. A negotiate that arrives meanwhile waits for it (up to the answer timeout).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use super::backplane::{self, node_of, Body, ClusterConfig, Command, Envelope};
use super::command::{HubCommand, Target};
use super::directory::{HubId, Scope};
use super::http::{HttpRequest, HttpResponse, RequestId};
use super::reason::texts;
use super::{ConnHandle, Output, Relay, RequestOutcome};
use crate::framing::BinaryFrameDecoder;
use crate::service::{self, ServiceMessage};

/// Most nodes known at once; heartbeats of more are ignored.
const MAX_PEERS: usize = 256;
/// Most questions to other nodes awaiting answers; past it, a question is answered "no".
const MAX_ASKS: usize = 65_536;
/// Most client results awaited from other nodes.
const MAX_REMOTE_CALLS: usize = 65_536;
/// Most hubs this node makes for other nodes' user memberships (beyond those it knows).
const MAX_REMOTE_HUBS: usize = 10_000;
/// Most negotiates waiting for a server connection.
const MAX_PARKED: usize = 1000;
/// Heartbeats missed before the subscription counts as dead.
const MISSED_BEATS: u32 = 3;
/// How often a node asks another for a server connection of the same hub.
const ASK_SERVER_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A node this one has heard from.
#[derive(Debug)]
struct Peer {
    /// Stands for the node where a client result's caller is expected ([`Pending::caller`]).
    handle: ConnHandle,
    seen: Instant,
    /// Which start of the node this is.
    incarnation: u64,
    /// Where it is reached, as it says.
    url: Option<String>,
    /// Hubs it has app servers for.
    hubs: BTreeSet<String>,
}

/// Where an answer goes.
#[derive(Debug)]
pub(crate) enum Waiter {
    /// An Ack to a server connection.
    Ack { conn: ConnHandle, ack_id: i32 },
    /// A REST request (held once other nodes are asked): its response if found, and if not.
    Rest {
        request: Option<RequestId>,
        found: HttpResponse,
        missing: HttpResponse,
    },
}

#[derive(Debug)]
struct Ask {
    waiter: Waiter,
    /// The nodes asked that have not answered: one answer from each counts.
    waiting_for: BTreeSet<String>,
    deadline: Instant,
}

/// An answer to a join, or a client's opening, held until the subscriptions asked before it
/// are in place: a send from another node after the answer (or from the app server once it
/// hears of the client) then reaches the new member, as after `AddToGroupAsync` (and before
/// `OnConnectedAsync`) on ASP.NET Core's Redis backplane.
#[derive(Debug)]
struct HeldAnswer {
    /// Answered once this many subscriptions are confirmed.
    after: u64,
    /// Answered at the latest then, half the answer timeout after the join (the engine may
    /// be stuck; the node that asked for the join waits the whole answer timeout).
    deadline: Instant,
    to: HeldFor,
}

#[derive(Debug)]
pub(crate) enum HeldFor {
    /// This node's app server or REST caller, and what was found.
    Waiter(Waiter, bool),
    /// Another node's question.
    Node { node: String, ask: u64, found: bool },
    /// A client of this node, opened once its user's (and hub's) channels are in place.
    Open(ConnHandle),
}

/// Most answers held for subscriptions: past it, joins are answered at once.
const MAX_HELD: usize = 10_000;

/// A client result asked of a client on another node.
#[derive(Debug)]
struct RemoteCall {
    /// The server connection that asked.
    caller: ConnHandle,
    /// The node that holds the client.
    node: String,
    /// When it is failed if no answer came.
    deadline: Instant,
}

/// How long a client result asked of another node's client is awaited (the SDK's own
/// timeout is usually shorter; this bounds what a lost answer costs).
const REMOTE_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// A negotiate waiting for a server connection of its hub.
#[derive(Debug)]
struct Parked {
    request: RequestId,
    req: HttpRequest,
    hub: String,
    deadline: Instant,
}

/// Backplane counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackplaneStats {
    /// Messages published.
    pub published: u64,
    /// Messages received from other nodes.
    pub received: u64,
    /// Messages not published because the backplane was down.
    pub dropped: u64,
    /// Messages received that did not decode.
    pub undecodable: u64,
    /// Questions to other nodes answered "no" because no answer came in time.
    pub unanswered: u64,
    /// Joins answered before their channel's subscription was confirmed: the engine did not
    /// confirm it within half the answer timeout, or too many answers were waiting already.
    pub joins_unconfirmed: u64,
    /// Clients opened before their user's (or hub's) channel was confirmed, for the same
    /// reasons.
    pub opens_unconfirmed: u64,
    /// Times the subscription was found dead (own heartbeats no longer heard).
    pub stale: u64,
    /// Heartbeats with this node's id from another process: two nodes share an id, which
    /// breaks routing to both (fix their `--node-id`).
    pub id_conflicts: u64,
}

/// The backplane, as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackplaneStatus {
    /// This node's id.
    pub node_id: String,
    /// Connected, and hearing its own heartbeats.
    pub up: bool,
    /// The other nodes alive, with where they are reached (if they say).
    pub nodes: Vec<(String, Option<String>)>,
    /// Channels subscribed.
    pub channels: usize,
    /// Answers to joins, and clients' openings, waiting for subscriptions to be confirmed.
    pub waiting: usize,
    /// The counters.
    pub stats: BackplaneStats,
}

/// A relay's part in a cluster.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) config: ClusterConfig,
    /// This start of the node (from the relay's seed).
    incarnation: u64,
    /// The engine is connected (the adapter says).
    connected: bool,
    /// Own heartbeats stopped coming back while connected.
    stale: bool,
    /// When this node last heard its own heartbeat.
    heard_self: Option<Instant>,
    next_beat: Instant,
    peers: BTreeMap<String, Peer>,
    peer_of: BTreeMap<ConnHandle, String>,
    subscribed: BTreeSet<String>,
    /// Subscriptions asked of the engine since it connected, and how many of them it has
    /// confirmed (it carries them out in order, and says when each is in place).
    subscribes_asked: u64,
    subscribes_confirmed: u64,
    /// Answers to joins, held until the subscriptions asked before them are in place.
    held: VecDeque<HeldAnswer>,
    asks: BTreeMap<u64, Ask>,
    next_ask: u64,
    /// Client results asked by this node's app servers of clients elsewhere, by invocation
    /// id.
    remote_calls: BTreeMap<String, RemoteCall>,
    /// When this node last asked each node for a server connection of each hub.
    asked_server: BTreeMap<(String, String), Instant>,
    parked: VecDeque<Parked>,
    pub(crate) stats: BackplaneStats,
    out: VecDeque<Output>,
}

impl Cluster {
    pub(crate) fn new(config: ClusterConfig, now: Instant, incarnation: u64) -> Self {
        Self {
            config,
            incarnation,
            connected: false,
            stale: false,
            heard_self: None,
            next_beat: now,
            peers: BTreeMap::new(),
            peer_of: BTreeMap::new(),
            subscribed: BTreeSet::new(),
            subscribes_asked: 0,
            subscribes_confirmed: 0,
            held: VecDeque::new(),
            asks: BTreeMap::new(),
            // Question ids differ from one start of the node to the next, so that a late
            // answer to the previous process's question is not taken for one of this one's.
            next_ask: incarnation >> 16,
            remote_calls: BTreeMap::new(),
            asked_server: BTreeMap::new(),
            parked: VecDeque::new(),
            stats: BackplaneStats::default(),
            out: VecDeque::new(),
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.connected && !self.stale
    }

    /// Whether `node` is this one.
    fn is_me(&self, node: &str) -> bool {
        node == self.config.node_id
    }

    fn alive(&self, node: &str) -> bool {
        self.peers.contains_key(node)
    }

    fn publish(&mut self, channel: String, body: &Body) {
        if !self.connected {
            self.stats.dropped += 1;
            return;
        }
        self.stats.published += 1;
        let data = backplane::encode(&self.config.node_id, body);
        self.out.push_back(Output::Publish { channel, data });
    }

    fn send_to(&mut self, node: &str, body: &Body) {
        let channel = self.config.node_channel(node);
        self.publish(channel, body);
    }

    fn subscribe(&mut self, channel: String) {
        if self.subscribed.insert(channel.clone()) && self.connected {
            self.subscribes_asked += 1;
            self.out.push_back(Output::Subscribe { channel });
        }
    }

    /// Some subscription asked of the engine is not yet in place.
    fn subscribing(&self) -> bool {
        self.connected && self.subscribes_confirmed < self.subscribes_asked
    }

    /// Whether an answer to a join (or a client's opening: `open`) is to wait for the
    /// subscriptions asked so far: some is not yet in place, and there is room (past it, it
    /// goes at once, and is counted).
    pub(crate) fn may_hold(&mut self, open: bool) -> bool {
        if !self.subscribing() {
            return false;
        }
        if self.held.len() >= MAX_HELD {
            self.count_unconfirmed(open);
            return false;
        }
        true
    }

    /// Subscribes to the channels of the sets `directory` has touched that have a member
    /// here, and unsubscribes from those that have none.
    pub(crate) fn sync(&mut self, directory: &mut super::directory::Directory) {
        for scope in directory.take_touched() {
            let (channel, wanted) = match &scope {
                Scope::Hub(h) => (
                    self.config.hub_channel(directory.name(*h)),
                    directory.has_clients(*h),
                ),
                Scope::Group(h, g) => (
                    self.config.group_channel(directory.name(*h), g),
                    directory.group_exists(*h, g),
                ),
                Scope::User(h, u) => (
                    self.config.user_channel(directory.name(*h), u),
                    directory.user(*h, u).next().is_some(),
                ),
            };
            if wanted {
                self.subscribe(channel);
            } else {
                self.unsubscribe(&channel);
            }
        }
    }

    fn count_unconfirmed(&mut self, open: bool) {
        if open {
            self.stats.opens_unconfirmed += 1;
        } else {
            self.stats.joins_unconfirmed += 1;
        }
    }

    /// Holds `to` until the subscriptions asked so far are in place, or half the answer
    /// timeout has passed.
    pub(crate) fn hold(&mut self, now: Instant, to: HeldFor) {
        self.held.push_back(HeldAnswer {
            after: self.subscribes_asked,
            deadline: now + self.config.answer_timeout / 2,
            to,
        });
    }

    fn unsubscribe(&mut self, channel: &str) {
        if self.subscribed.remove(channel) && self.connected {
            self.out.push_back(Output::Unsubscribe {
                channel: channel.to_owned(),
            });
        }
    }

    /// The status, for the operator.
    pub(crate) fn status(&self) -> BackplaneStatus {
        BackplaneStatus {
            node_id: self.config.node_id.clone(),
            up: self.is_up(),
            nodes: self
                .peers
                .iter()
                .map(|(n, p)| (n.clone(), p.url.clone()))
                .collect(),
            channels: self.subscribed.len(),
            waiting: self.held.len(),
            stats: self.stats,
        }
    }

    /// When the cluster's own timer is due.
    pub(crate) fn next_timeout(&self) -> Instant {
        let mut next = self.next_beat;
        // Deadlines follow the ids (the answer timeout is one for all).
        if let Some(a) = self.asks.values().next() {
            next = next.min(a.deadline);
        }
        if let Some(p) = self.parked.front() {
            next = next.min(p.deadline);
        }
        // Held in order, with one timeout for all.
        if let Some(h) = self.held.front() {
            next = next.min(h.deadline);
        }
        next
    }

    pub(crate) fn pop(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Records a question to `nodes`: its id.
    fn new_ask(&mut self, now: Instant, waiter: Waiter, nodes: &[String]) -> u64 {
        self.next_ask += 1;
        let ask = self.next_ask;
        self.asks.insert(
            ask,
            Ask {
                waiter,
                waiting_for: nodes.iter().cloned().collect(),
                deadline: now + self.config.answer_timeout,
            },
        );
        ask
    }
}

/// What became of a command.
#[derive(Debug)]
pub(crate) enum Ran {
    /// Done: whether it found what it was about (`None`: it could not be carried out).
    Done(Option<bool>),
    /// Other nodes were asked; the waiter hears later (a REST request is held: this one).
    Asked(Option<RequestId>),
}

impl Relay {
    /// The backplane engine connected (or connected again): this node subscribes to what it
    /// needs, and says it is here.
    pub fn handle_backplane_up(&mut self, now: Instant) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        c.connected = true;
        c.stale = false;
        c.heard_self = Some(now);
        let mut channels: Vec<String> = c.subscribed.iter().cloned().collect();
        channels.push(c.config.control_channel());
        channels.push(c.config.node_channel(&c.config.node_id));
        // A new connection: what the last one confirmed counts no more.
        c.subscribes_asked = 0;
        c.subscribes_confirmed = 0;
        for channel in channels {
            c.subscribed.insert(channel.clone());
            c.subscribes_asked += 1;
            c.out.push_back(Output::Subscribe { channel });
        }
        // Answers still held (to other nodes, kept while down) wait for this connection's.
        for held in &mut c.held {
            held.after = c.subscribes_asked;
        }
        c.next_beat = now;
        self.cluster_tick(now);
        self.settle(now);
    }

    /// The backplane engine lost its connection. Local traffic goes on; cross-node messages
    /// are dropped (and counted) until [`handle_backplane_up`](Self::handle_backplane_up).
    pub fn handle_backplane_down(&mut self, now: Instant) {
        if let Some(c) = self.cluster.as_deref_mut() {
            c.connected = false;
        }
        // Nothing crosses while down: this node's callers are answered (and its clients
        // opened) now. Answers to other nodes cannot go until it is up again, and wait for it
        // (or their time).
        self.release_held_for_callers(now);
        self.settle(now);
    }

    /// The engine has put in place the next `count` of the subscriptions asked of it
    /// ([`Output::Subscribe`]), in the order asked. Answers to joins held for them go out.
    pub fn handle_backplane_subscribed(&mut self, now: Instant, count: usize) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        c.subscribes_confirmed = c
            .subscribes_confirmed
            .saturating_add(count as u64)
            .min(c.subscribes_asked);
        self.release_held(now, false);
        self.settle(now);
    }

    /// Answers `waiter` (`found`) for a join this node carried out: once the subscriptions
    /// asked so far are in place, so that the group's (or user's) next message from any node
    /// reaches the new member. At once when none is outstanding.
    fn answer_joined(
        &mut self,
        now: Instant,
        waiter: Option<Waiter>,
        found: bool,
    ) -> (Ran, Option<Waiter>) {
        self.sync_subscriptions();
        let Some(waiter) = waiter else {
            return (Ran::Done(Some(found)), None);
        };
        if !self
            .cluster
            .as_deref_mut()
            .is_some_and(|c| c.may_hold(false))
        {
            return (Ran::Done(Some(found)), Some(waiter));
        }
        let (waiter, request) = self.hold_request(waiter);
        if let Some(c) = self.cluster.as_deref_mut() {
            c.hold(now, HeldFor::Waiter(waiter, found));
        }
        (Ran::Asked(request), None)
    }

    /// `waiter`, with its REST request (if it is one) held for a later response, and that
    /// request.
    fn hold_request(&mut self, waiter: Waiter) -> (Waiter, Option<RequestId>) {
        match waiter {
            Waiter::Rest {
                request: None,
                found,
                missing,
            } => {
                let request = self.out.hold(super::NO_CONN);
                let waiter = Waiter::Rest {
                    request: Some(request),
                    found,
                    missing,
                };
                (waiter, Some(request))
            }
            w => (w, None),
        }
    }

    /// Answers this node's own callers, and opens its clients, at once (the backplane is
    /// down), keeping the answers to other nodes.
    fn release_held_for_callers(&mut self, now: Instant) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let (mine, others): (VecDeque<HeldAnswer>, VecDeque<HeldAnswer>) =
            std::mem::take(&mut c.held)
                .into_iter()
                .partition(|h| !matches!(h.to, HeldFor::Node { .. }));
        c.held = others;
        for held in mine {
            self.give_held(now, held.to);
        }
    }

    /// What was held goes: an answer, or a client's opening.
    fn give_held(&mut self, now: Instant, to: HeldFor) {
        match to {
            HeldFor::Waiter(waiter, found) => self.tell(waiter, found),
            HeldFor::Node { node, ask, found } => {
                if let Some(c) = self.cluster.as_deref_mut() {
                    c.send_to(&node, &Body::Answer { ask, found });
                }
            }
            HeldFor::Open(conn) => self.open_held(now, conn),
        }
    }

    /// Gives the held answers whose subscriptions are in place, or whose time is up (`all`:
    /// every one).
    pub(crate) fn release_held(&mut self, now: Instant, all: bool) {
        loop {
            let Some(c) = self.cluster.as_deref_mut() else {
                return;
            };
            let Some(front) = c.held.front() else {
                return;
            };
            let confirmed = front.after <= c.subscribes_confirmed;
            if !(all || confirmed || front.deadline <= now) {
                return;
            }
            if !all && !confirmed {
                let open = matches!(front.to, HeldFor::Open(_));
                c.count_unconfirmed(open);
            }
            let Some(held) = c.held.pop_front() else {
                return;
            };
            self.give_held(now, held.to);
        }
    }

    /// A message arrived on a backplane channel. The message says what it is for; the
    /// channel it came on is only how it got here (it may be logged).
    pub fn handle_backplane(&mut self, now: Instant, _channel: &str, data: &[u8]) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let Ok(Envelope { from, body }) = backplane::decode(data) else {
            c.stats.undecodable += 1;
            return;
        };
        if c.is_me(&from) {
            match body {
                Body::Heartbeat { incarnation, .. } if incarnation == c.incarnation => {
                    c.heard_self = Some(now);
                    c.stale = false;
                }
                Body::Heartbeat { .. } => c.stats.id_conflicts += 1,
                _ => {}
            }
            return;
        }
        c.stats.received += 1;
        match body {
            Body::Heartbeat {
                incarnation,
                url,
                hubs,
            } => self.peer_alive(now, from, incarnation, url, hubs),
            Body::Bye => self.forget_peer(&from),
            Body::Command { hub, ask, command } => {
                self.remote_command(now, &from, &hub, ask, &command)
            }
            Body::Answer { ask, found } => self.answer(ask, Some((&from, found))),
            Body::Invocation { message } => self.remote_invocation(now, &from, &message),
            Body::NeedServer { hub } => self.lend_server(&from, &hub),
        }
        self.settle(now);
    }

    /// What the node awaits: questions asked of other nodes, negotiates waiting for a server
    /// connection, client results asked elsewhere (for the fuzzer's end-of-run check).
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn cluster_pending(&self) -> (usize, usize, usize, usize) {
        self.cluster.as_deref().map_or((0, 0, 0, 0), |c| {
            (
                c.asks.len(),
                c.parked.len(),
                c.remote_calls.len(),
                c.held.len(),
            )
        })
    }

    /// The backplane's status, when this relay is a node of a cluster.
    pub fn backplane_status(&self) -> Option<BackplaneStatus> {
        self.cluster.as_deref().map(Cluster::status)
    }

    /// Heartbeats, the node directory, the liveness probe, answers and negotiates that
    /// waited too long.
    pub(crate) fn cluster_tick(&mut self, now: Instant) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        // Answers not come in time are "no".
        let late: Vec<u64> = c
            .asks
            .iter()
            .filter(|(_, a)| a.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        c.stats.unanswered += late.len() as u64;
        for ask in late {
            self.answer(ask, None);
        }
        self.release_held(now, false);
        self.unpark(now, None);
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        if now < c.next_beat {
            return;
        }
        c.next_beat = now + c.config.heartbeat_interval;
        c.asked_server
            .retain(|_, t| now.saturating_duration_since(*t) < ASK_SERVER_EVERY);
        // Client results awaited from other nodes for too long are failed: the invocation or
        // its answer was lost.
        let overdue: Vec<(String, ConnHandle)> = c
            .remote_calls
            .iter()
            .filter(|(_, call)| call.deadline <= now)
            .map(|(id, call)| (id.clone(), call.caller))
            .collect();
        for (id, _) in &overdue {
            c.remote_calls.remove(id);
        }
        // The liveness probe: a connected engine whose subscription no longer hears this
        // node's own heartbeats is reset (not while shutting down: it beats no more).
        if c.connected && !c.stale && !self.draining {
            let silent = c.config.heartbeat_interval * MISSED_BEATS;
            if c.heard_self
                .is_some_and(|t| now.saturating_duration_since(t) > silent)
            {
                c.stale = true;
                c.stats.stale += 1;
                c.out.push_back(Output::ResetBackplane);
            }
        }
        let timeout = c.config.node_timeout;
        let gone: Vec<String> = c
            .peers
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.seen) > timeout)
            .map(|(n, _)| n.clone())
            .collect();
        for node in gone {
            self.forget_peer(&node);
        }
        for (invocation_id, caller) in overdue {
            self.fail_remote_call(invocation_id, caller);
        }
        // A node shutting down said goodbye, and is quiet from then on.
        if self.draining {
            return;
        }
        let hubs = self.hubs_served();
        if let Some(c) = self.cluster.as_deref_mut().filter(|c| c.connected) {
            let control = c.config.control_channel();
            let body = Body::Heartbeat {
                incarnation: c.incarnation,
                url: c.config.public_url.clone(),
                hubs,
            };
            c.publish(control, &body);
        }
    }

    /// The hubs this node has app servers for (at most [`backplane::MAX_HEARTBEAT_HUBS`]).
    fn hubs_served(&self) -> Vec<String> {
        self.directory
            .hub_names()
            .filter(|name| self.servers.available_hub(&self.directory, name).is_some())
            .take(backplane::MAX_HEARTBEAT_HUBS)
            .map(str::to_owned)
            .collect()
    }

    fn peer_alive(
        &mut self,
        now: Instant,
        node: String,
        incarnation: u64,
        url: Option<String>,
        hubs: Vec<String>,
    ) {
        // A node that started again under the same id held none of what it held before.
        let restarted = self
            .cluster
            .as_deref()
            .and_then(|c| c.peers.get(&node))
            .is_some_and(|p| p.incarnation != incarnation);
        if restarted {
            self.forget_peer(&node);
        }
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        if !c.peers.contains_key(&node) {
            if c.peers.len() >= MAX_PEERS || !backplane::valid_node_id(&node) {
                return;
            }
            let handle = self.handles.next();
            self.out.set_peer(handle);
            c.peer_of.insert(handle, node.clone());
            c.peers.insert(
                node.clone(),
                Peer {
                    handle,
                    seen: now,
                    incarnation,
                    url: None,
                    hubs: BTreeSet::new(),
                },
            );
        }
        let hubs: BTreeSet<String> = hubs
            .into_iter()
            .take(backplane::MAX_HEARTBEAT_HUBS)
            .collect();
        if let Some(p) = c.peers.get_mut(&node) {
            p.seen = now;
            p.url = url.filter(|u| u.len() <= 512);
            p.hubs.clone_from(&hubs);
        }
        if self.draining {
            return;
        }
        // A hub the peer serves and this node does not: ask for a server connection.
        for hub in hubs {
            if self.servers.available_hub(&self.directory, &hub).is_none() {
                self.ask_for_server(now, &node, &hub);
            }
        }
        self.unpark(now, None);
    }

    fn ask_for_server(&mut self, now: Instant, node: &str, hub: &str) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let key = (node.to_owned(), hub.to_owned());
        if c.asked_server
            .get(&key)
            .is_some_and(|t| now.saturating_duration_since(*t) < ASK_SERVER_EVERY)
        {
            return;
        }
        c.asked_server.insert(key, now);
        c.send_to(
            node,
            &Body::NeedServer {
                hub: hub.to_owned(),
            },
        );
    }

    /// A node is gone: what it held no longer exists here, and what it owed is failed.
    fn forget_peer(&mut self, node: &str) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let Some(peer) = c.peers.remove(node) else {
            return;
        };
        c.peer_of.remove(&peer.handle);
        c.asked_server.retain(|(n, _), _| n != node);
        let owed: Vec<(String, ConnHandle)> = c
            .remote_calls
            .iter()
            .filter(|(_, call)| call.node == node)
            .map(|(id, call)| (id.clone(), call.caller))
            .collect();
        for (id, _) in &owed {
            c.remote_calls.remove(id);
        }
        self.out.unset_peer(peer.handle);
        // Client results its app servers asked of this node's clients: nobody awaits them.
        self.invocations.forget_asked_by(peer.handle);
        // Client results this node's app servers asked of its clients fail.
        for (invocation_id, caller) in owed {
            self.fail_remote_call(invocation_id, caller);
        }
    }

    /// A client result asked of another node's client will not be answered: its caller is
    /// told.
    fn fail_remote_call(&mut self, invocation_id: String, caller: ConnHandle) {
        if !self.servers.contains(caller) {
            return;
        }
        let failed = ServiceMessage::ErrorCompletion(service::ErrorCompletion {
            invocation_id,
            connection_id: String::new(),
            caller_server_id: self.servers.server_id(caller).to_owned(),
            error: Some(texts::CONNECTION_DISCONNECTED.to_owned()),
            ext: service::Ext::default(),
        });
        self.out.service(caller, &failed);
    }

    // ---------------------------------------------------------------- commands

    /// Carries out a command in the hub named `hub_name` on this node, then on the others
    /// concerned. `waiter` hears the answer if one is asked for.
    pub(crate) fn run(
        &mut self,
        now: Instant,
        hub_name: &str,
        from: Option<ConnHandle>,
        command: HubCommand<'_>,
        waiter: Option<Waiter>,
    ) -> (Ran, Option<Waiter>) {
        // A membership of a user is kept for connections to come.
        let hub = match command {
            HubCommand::UserJoin { .. } => Some(self.directory.intern(hub_name)),
            _ => self.directory.find(hub_name),
        };
        let local = match hub {
            Some(hub) => self.carry_out(now, hub, from, command),
            None => Some(false),
        };
        let Some(ok) = local else {
            return (Ran::Done(None), waiter);
        };
        if self.cluster.is_none() {
            return (Ran::Done(Some(ok)), waiter);
        }
        self.spread(now, hub_name, command, ok, waiter)
    }

    /// The cross-node part of a command this node carried out for its own clients (`ok`:
    /// what it found here).
    fn spread(
        &mut self,
        now: Instant,
        hub: &str,
        command: HubCommand<'_>,
        ok: bool,
        waiter: Option<Waiter>,
    ) -> (Ran, Option<Waiter>) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return (Ran::Done(Some(ok)), waiter);
        };
        let owned = || Command::of(&command);
        let body = |command: Command, ask: Option<u64>| Body::Command {
            hub: hub.to_owned(),
            ask,
            command,
        };
        match command {
            HubCommand::Send { to, .. } | HubCommand::Close { to, .. } => {
                let closes_one = matches!(
                    (command, to.to),
                    (HubCommand::Close { .. }, Target::Connections([_]))
                );
                match to.to {
                    Target::Connections(ids) => {
                        // One message per node holding some of them.
                        let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
                        for id in ids {
                            if let Some(node) = node_of(id).filter(|n| !c.is_me(n) && c.alive(n)) {
                                by_node.entry(node.to_owned()).or_default().push(id.clone());
                            }
                        }
                        if closes_one && !ok {
                            // Closing one connection held elsewhere says whether it was there.
                            let Some(node) = by_node.into_keys().next() else {
                                return (Ran::Done(Some(false)), waiter);
                            };
                            if waiter.is_some() {
                                return self.ask_nodes(now, &[node], body(owned(), None), waiter);
                            }
                            c.send_to(&node, &body(owned(), None));
                            return (Ran::Done(Some(true)), None);
                        }
                        for (node, ids) in by_node {
                            let mut command = owned();
                            if let Command::Send { to, .. } | Command::Close { to, .. } =
                                &mut command
                            {
                                to.names = ids;
                            }
                            c.send_to(&node, &body(command, None));
                        }
                    }
                    Target::Hub | Target::Users([_, _, ..]) | Target::Groups([_, _, ..]) => {
                        let channel = c.config.hub_channel(hub);
                        c.publish(channel, &body(owned(), None));
                    }
                    Target::Users([user]) => {
                        let channel = c.config.user_channel(hub, user);
                        c.publish(channel, &body(owned(), None));
                    }
                    Target::Groups([group]) => {
                        let channel = c.config.group_channel(hub, group);
                        c.publish(channel, &body(owned(), None));
                    }
                    Target::Users([]) | Target::Groups([]) => {}
                }
                let found = ok || !closes_one;
                (Ran::Done(Some(found)), waiter)
            }
            HubCommand::Join { connection, .. } | HubCommand::Leave { connection, .. } => {
                let Some(node) = node_of(connection).filter(|n| !c.is_me(n)) else {
                    if ok && matches!(command, HubCommand::Join { .. }) {
                        return self.answer_joined(now, waiter, ok);
                    }
                    return (Ran::Done(Some(ok)), waiter);
                };
                if !c.alive(node) {
                    return (Ran::Done(Some(false)), waiter);
                }
                let node = node.to_owned();
                if waiter.is_none() {
                    c.send_to(&node, &body(owned(), None));
                    return (Ran::Done(Some(true)), None);
                }
                self.ask_nodes(now, &[node], body(owned(), None), waiter)
            }
            HubCommand::UserJoin { .. } | HubCommand::UserLeave { .. } => {
                let channel = c.config.control_channel();
                c.publish(channel, &body(owned(), None));
                if matches!(command, HubCommand::UserJoin { .. }) {
                    return self.answer_joined(now, waiter, ok);
                }
                (Ran::Done(Some(ok)), waiter)
            }
            HubCommand::Exists(e) => {
                if ok {
                    return (Ran::Done(Some(true)), waiter);
                }
                let nodes: Vec<String> = match e {
                    super::command::Existence::Connection(id) => node_of(id)
                        .filter(|n| !c.is_me(n) && c.alive(n))
                        .map(|n| vec![n.to_owned()])
                        .unwrap_or_default(),
                    _ => c.peers.keys().cloned().collect(),
                };
                if nodes.is_empty() {
                    return (Ran::Done(Some(false)), waiter);
                }
                self.ask_nodes(now, &nodes, body(owned(), None), waiter)
            }
        }
    }

    /// Asks `nodes` (one, on its channel; or every node, on the control channel) to carry
    /// out `body`'s command and answer; `waiter` hears.
    fn ask_nodes(
        &mut self,
        now: Instant,
        nodes: &[String],
        mut body: Body,
        waiter: Option<Waiter>,
    ) -> (Ran, Option<Waiter>) {
        let Some(waiter) = waiter else {
            return (Ran::Done(Some(false)), None);
        };
        if !self.cluster.as_deref().is_some_and(|c| c.connected) {
            if let Some(c) = self.cluster.as_deref_mut() {
                c.stats.dropped += 1;
            }
            return (Ran::Done(Some(false)), Some(waiter));
        }
        // Too many questions already: this one is "no", answered by the caller.
        if self
            .cluster
            .as_deref()
            .is_none_or(|c| c.asks.len() >= MAX_ASKS)
        {
            return (Ran::Done(Some(false)), Some(waiter));
        }
        let (waiter, held) = self.hold_request(waiter);
        let Some(c) = self.cluster.as_deref_mut() else {
            return (Ran::Done(Some(false)), None);
        };
        let ask = c.new_ask(now, waiter, nodes);
        if let Body::Command { ask: a, .. } = &mut body {
            *a = Some(ask);
        }
        match nodes {
            [node] => c.send_to(node, &body),
            _ => {
                let channel = c.config.control_channel();
                c.publish(channel, &body);
            }
        }
        (Ran::Asked(held), None)
    }

    /// `from`'s answer came (`None`: no answer came in time).
    fn answer(&mut self, ask: u64, answer: Option<(&str, bool)>) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let Some(a) = c.asks.get_mut(&ask) else {
            return;
        };
        let done = match answer {
            // Only from a node asked, once.
            Some((from, _)) if !a.waiting_for.remove(from) => return,
            Some((_, true)) => Some(true),
            Some((_, false)) if a.waiting_for.is_empty() => Some(false),
            Some((_, false)) => None,
            None => Some(false),
        };
        let Some(found) = done else {
            return;
        };
        let Some(a) = c.asks.remove(&ask) else {
            return;
        };
        self.tell(a.waiter, found);
    }

    /// Tells a waiter the answer.
    pub(crate) fn tell(&mut self, waiter: Waiter, found: bool) {
        match waiter {
            Waiter::Ack { conn, ack_id } => {
                if self.servers.contains(conn) {
                    self.out.service(conn, &super::ack(ack_id, found));
                }
            }
            Waiter::Rest {
                request: Some(request),
                found: yes,
                missing,
            } => self.out.respond(request, if found { yes } else { missing }),
            Waiter::Rest { request: None, .. } => {}
        }
    }

    /// A command from another node: carried out for this node's clients only, and answered
    /// if asked.
    fn remote_command(
        &mut self,
        now: Instant,
        from: &str,
        hub: &str,
        ask: Option<u64>,
        command: &Command,
    ) {
        let command = command.borrow();
        let hub_id = match command {
            // A user's membership is kept for connections to come, in a hub that may have
            // none here yet (hubs made so are bounded, and named as hubs may be).
            HubCommand::UserJoin { .. }
                if self.directory.find(hub).is_some()
                    || (self.directory.hub_count() < MAX_REMOTE_HUBS
                        && hub.len() <= super::admission::MAX_HUB_NAME) =>
            {
                Some(self.directory.intern(hub))
            }
            _ => self.directory.find(hub),
        };
        // A connection of another hub is not found, as at the node that asked.
        let foreign = |d: &super::directory::Directory, id: &str| {
            d.hub_of(id).is_some_and(|h| Some(h) != hub_id)
        };
        let found = match command {
            HubCommand::Join { connection, .. }
            | HubCommand::Leave { connection, .. }
            | HubCommand::Exists(super::command::Existence::Connection(connection))
                if foreign(&self.directory, connection) =>
            {
                false
            }
            HubCommand::Close { to, .. } if matches!(to.to, Target::Connections([id]) if foreign(&self.directory, id)) => {
                false
            }
            _ => hub_id
                .and_then(|h| self.carry_out(now, h, None, command))
                .unwrap_or(false),
        };
        // Subscriptions first, and the answer once they are in place: a member this made
        // hears the group's next message, which the asker may send as soon as it has the
        // answer.
        self.sync_subscriptions();
        // (A user's membership is told to every node, and not asked.)
        let joined = found && matches!(command, HubCommand::Join { .. });
        if let (Some(ask), Some(c)) = (ask, self.cluster.as_deref_mut()) {
            if joined && c.may_hold(false) {
                let node = from.to_owned();
                c.hold(now, HeldFor::Node { node, ask, found });
            } else {
                c.send_to(from, &Body::Answer { ask, found });
            }
        }
    }

    // ---------------------------------------------------------------- client results

    /// An app server of this node invokes a client held by another node: the invocation goes
    /// there, and its completion comes back. `false` when the client is nowhere.
    pub(crate) fn invoke_elsewhere(
        &mut self,
        now: Instant,
        caller: ConnHandle,
        m: &service::ClientInvocation,
    ) -> bool {
        let Some(c) = self.cluster.as_deref_mut() else {
            return false;
        };
        let Some(node) = node_of(&m.connection_id).filter(|n| !c.is_me(n) && c.alive(n)) else {
            return false;
        };
        if c.remote_calls.len() >= MAX_REMOTE_CALLS || !c.connected {
            return false;
        }
        let node = node.to_owned();
        let mut message = Vec::new();
        if ServiceMessage::ClientInvocation(m.clone())
            .write(&mut message)
            .is_err()
        {
            return false;
        }
        let deadline = now + REMOTE_CALL_TIMEOUT;
        c.remote_calls.insert(
            m.invocation_id.clone(),
            RemoteCall {
                caller,
                node: node.clone(),
                deadline,
            },
        );
        c.send_to(
            &node,
            &Body::Invocation {
                message: message.into(),
            },
        );
        true
    }

    /// A client-result message from another node: an invocation for a client here, or the
    /// answer to one an app server here asked.
    fn remote_invocation(&mut self, now: Instant, from: &str, frame: &[u8]) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let Some(peer) = c.peers.get(from).map(|p| p.handle) else {
            return;
        };
        let mut frames = BinaryFrameDecoder::new(self.config.max_server_message_size);
        frames.push(frame);
        let Ok(Some(frame)) = frames.next_frame() else {
            return;
        };
        let Ok(msg) = ServiceMessage::parse(&frame) else {
            return;
        };
        match msg {
            ServiceMessage::ClientInvocation(m) => self.client_invocation(now, peer, m),
            answer @ (ServiceMessage::ClientCompletion(_) | ServiceMessage::ErrorCompletion(_)) => {
                let id = match &answer {
                    ServiceMessage::ClientCompletion(m) => &m.invocation_id,
                    ServiceMessage::ErrorCompletion(m) => &m.invocation_id,
                    _ => return,
                };
                let Some(c) = self.cluster.as_deref_mut() else {
                    return;
                };
                // Only from the node the invocation went to.
                if c.remote_calls.get(id).is_none_or(|call| call.node != from) {
                    return;
                }
                if let Some(call) = c.remote_calls.remove(id) {
                    if self.servers.contains(call.caller) {
                        self.out.service(call.caller, &answer);
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether `caller` stands for another node (a client result asked from there).
    pub(crate) fn is_peer(&self, caller: ConnHandle) -> bool {
        self.cluster
            .as_deref()
            .is_some_and(|c| c.peer_of.contains_key(&caller))
    }

    /// A server connection is gone: the results it awaited from other nodes are forgotten.
    pub(crate) fn forget_remote_calls(&mut self, caller: ConnHandle) {
        if let Some(c) = self.cluster.as_deref_mut() {
            c.remote_calls.retain(|_, call| call.caller != caller);
        }
    }

    // ---------------------------------------------------------------- server connections

    /// Another node asks for a server connection of `hub`: one of this node's app servers
    /// of the hub is pinged with `target` set to that node.
    fn lend_server(&mut self, node: &str, hub: &str) {
        let Some(hub_id) = self.servers.available_hub(&self.directory, hub) else {
            return;
        };
        let Some(server) = self.servers.pick(&self.directory, hub_id) else {
            return;
        };
        let ping = service::Ping::pairs([("target", node)]);
        self.out.service(server, &ServiceMessage::Ping(ping));
    }

    /// Whether a negotiate for `hub`, which has no server connection here, should wait for
    /// one: another node serves the hub (and this node asked it for one).
    pub(crate) fn park_negotiate(
        &mut self,
        now: Instant,
        req: &HttpRequest,
        hub: &str,
    ) -> Option<RequestOutcome> {
        let c = self.cluster.as_deref()?;
        if c.parked.len() >= MAX_PARKED || !c.is_up() {
            return None;
        }
        let serving: Vec<String> = c
            .peers
            .iter()
            .filter(|(_, p)| p.hubs.contains(hub))
            .map(|(n, _)| n.clone())
            .collect();
        if serving.is_empty() {
            return None;
        }
        for node in &serving {
            self.ask_for_server(now, node, hub);
        }
        let request = self.out.hold(super::NO_CONN);
        let c = self.cluster.as_deref_mut()?;
        c.parked.push_back(Parked {
            request,
            req: req.clone(),
            hub: hub.to_owned(),
            deadline: now + c.config.answer_timeout,
        });
        Some(RequestOutcome::Pending(request))
    }

    /// Negotiates that waited: those of `hub` (a server connection of it opened), and those
    /// past their deadline, are negotiated now.
    pub(crate) fn unpark(&mut self, now: Instant, hub: Option<HubId>) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        if c.parked.is_empty() {
            return;
        }
        let name = hub.map(|h| self.directory.name(h).to_owned());
        let (ready, waiting): (VecDeque<Parked>, VecDeque<Parked>) = std::mem::take(&mut c.parked)
            .into_iter()
            .partition(|p| p.deadline <= now || name.as_deref() == Some(p.hub.as_str()));
        c.parked = waiting;
        for p in ready {
            let negotiated = if self.draining {
                Err(super::Rejection::Draining)
            } else {
                self.negotiate(now, &p.req)
            };
            let response = match negotiated {
                Ok(r) => r,
                Err(r) => {
                    self.refused_by_gate(&p.req, &r);
                    r.into()
                }
            };
            self.out.respond(p.request, response);
        }
    }

    /// Forgets a parked negotiate its client gave up on.
    pub(crate) fn abandon_parked(&mut self, request: RequestId) {
        if let Some(c) = self.cluster.as_deref_mut() {
            c.parked.retain(|p| p.request != request);
        }
    }

    // ---------------------------------------------------------------- after every input

    /// Subscriptions follow the directory; what this node's clients owe to callers on other
    /// nodes is sent there; the cluster's outputs join the relay's.
    pub(crate) fn cluster_flush(&mut self) {
        self.sync_subscriptions();
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        while let Some((handle, frame)) = self.out.take_for_peer() {
            if let Some(node) = c.peer_of.get(&handle).cloned() {
                c.send_to(&node, &Body::Invocation { message: frame });
            }
        }
        while let Some(o) = c.pop() {
            self.out.push(o);
        }
    }

    /// Subscriptions follow the directory: a channel is subscribed while its set has a
    /// member here.
    fn sync_subscriptions(&mut self) {
        if let Some(c) = self.cluster.as_deref_mut() {
            c.sync(&mut self.directory);
        }
    }

    /// Says goodbye: the others forget this node at once.
    pub(crate) fn cluster_bye(&mut self) {
        if let Some(c) = self.cluster.as_deref_mut() {
            let control = c.config.control_channel();
            c.publish(control, &Body::Bye);
        }
    }
}
