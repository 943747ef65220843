//! Several nodes as one service: three relays on one virtual clock, over a simulated pub/sub
//! backplane that delivers only to subscribers, and can lose messages, cut a node off, or
//! kill its subscription silently.

use super::*;

/// A simulated pub/sub engine and the nodes on it.
struct Net {
    nodes: Vec<Sim>,
    /// Each node's subscriptions, as its engine connection holds them.
    subs: Vec<BTreeSet<String>>,
    /// Nodes whose engine connection is up.
    connected: Vec<bool>,
    /// Nodes cut off: what they publish and what is published to them is lost, while their
    /// engine says it is connected (a silently dead subscription).
    cut: BTreeSet<usize>,
    /// Drop every message published while set.
    lose_all: bool,
    /// Messages delivered, per channel kind (`h`, `g`, `u`, `node`, `control`).
    delivered: BTreeMap<String, usize>,
    /// ResetBackplane asked, per node.
    resets: Vec<usize>,
    /// Every message published: by which node, on which channel.
    published: Vec<(usize, String, Bytes)>,
    /// While set, a node's subscriptions wait in `unconfirmed` (not yet in place) until
    /// [`Net::confirm`]; otherwise the engine puts them in place and confirms them at once.
    slow_subscribes: bool,
    /// Each with whether an unsubscribe came behind it (in place, then gone, once confirmed).
    unconfirmed: Vec<Vec<(String, bool)>>,
}

fn node_config(id: &str) -> RelayConfig {
    RelayConfig {
        cluster: Some(ClusterConfig::new(id).expect("a node id")),
        ..RelayConfig::default()
    }
}

impl Net {
    fn new(n: usize) -> Self {
        let epoch = epoch();
        let nodes = (0..n)
            .map(|i| Sim::with_config(epoch, node_config(&format!("n{i}"))))
            .collect();
        let mut net = Self {
            nodes,
            subs: vec![BTreeSet::new(); n],
            connected: vec![false; n],
            cut: BTreeSet::new(),
            lose_all: false,
            delivered: BTreeMap::new(),
            resets: vec![0; n],
            published: Vec::new(),
            slow_subscribes: false,
            unconfirmed: vec![Vec::new(); n],
        };
        for i in 0..n {
            net.up(i);
        }
        net.advance(Duration::from_secs(2));
        net
    }

    fn up(&mut self, i: usize) {
        self.connected[i] = true;
        self.subs[i].clear();
        self.unconfirmed[i].clear();
        let (relay, now) = self.nodes[i].relay_mut();
        relay.handle_backplane_up(now);
        self.nodes[i].drain();
        self.pump();
    }

    fn down(&mut self, i: usize) {
        self.connected[i] = false;
        self.subs[i].clear();
        self.unconfirmed[i].clear();
        let (relay, now) = self.nodes[i].relay_mut();
        relay.handle_backplane_down(now);
        self.nodes[i].drain();
        self.pump();
    }

    /// Carries out what every node asked of the backplane until nothing is left.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                let asked = std::mem::take(&mut self.nodes[i].backplane);
                for o in asked {
                    moved = true;
                    match o {
                        Output::Subscribe { channel } if self.connected[i] => {
                            if self.slow_subscribes {
                                self.unconfirmed[i].push((channel, false));
                            } else {
                                self.subs[i].insert(channel);
                                let (relay, now) = self.nodes[i].relay_mut();
                                relay.handle_backplane_subscribed(now, 1);
                                self.nodes[i].drain();
                            }
                        }
                        Output::Unsubscribe { channel } => {
                            self.subs[i].remove(&channel);
                            let mut waiting = self.unconfirmed[i].iter_mut().rev();
                            if let Some(w) = waiting.find(|w| w.0 == channel) {
                                w.1 = true;
                            }
                        }
                        Output::ResetBackplane => self.resets[i] += 1,
                        Output::Publish { channel, data } if self.connected[i] => {
                            self.published.push((i, channel.clone(), data.clone()));
                            if self.lose_all || self.cut.contains(&i) {
                                continue;
                            }
                            let kind = channel.split(':').nth(1).unwrap_or("").to_owned();
                            for j in 0..self.nodes.len() {
                                if self.connected[j]
                                    && !self.cut.contains(&j)
                                    && self.subs[j].contains(&channel)
                                {
                                    *self.delivered.entry(kind.clone()).or_default() += 1;
                                    let (relay, now) = self.nodes[j].relay_mut();
                                    relay.handle_backplane(now, &channel, &data);
                                    self.nodes[j].drain();
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Node `i`'s engine puts in place the subscriptions waiting, and confirms them.
    fn confirm(&mut self, i: usize) {
        self.confirm_first(i, self.unconfirmed[i].len());
    }

    /// Node `i`'s engine puts in place the first `count` subscriptions waiting, and confirms
    /// them.
    fn confirm_first(&mut self, i: usize, count: usize) {
        let waiting: Vec<(String, bool)> = self.unconfirmed[i].drain(..count).collect();
        self.subs[i].extend(waiting.into_iter().filter(|w| !w.1).map(|w| w.0));
        let (relay, now) = self.nodes[i].relay_mut();
        relay.handle_backplane_subscribed(now, count);
        self.nodes[i].drain();
        self.pump();
    }

    /// Lets time pass on every node, in steps of 100 ms.
    fn advance(&mut self, by: Duration) {
        let step = Duration::from_millis(100);
        let mut left = by;
        while !left.is_zero() {
            let d = left.min(step);
            for node in &mut self.nodes {
                node.advance(d);
            }
            self.pump();
            left -= d;
        }
    }

    /// An app-server message on node `i`'s server connection, and everything that follows.
    fn send(&mut self, i: usize, server: ConnHandle, msg: &ServiceMessage) {
        self.nodes[i].send_service(server, msg);
        self.pump();
    }

    /// A client of `user` connects to node `i` (its handshake sent), and what follows.
    fn start(&mut self, i: usize, user: &str) -> ConnHandle {
        let c = self.nodes[i].start_client("chat", Some(user), "json");
        self.pump();
        c
    }

    fn acks(&self, i: usize, server: ConnHandle) -> Vec<(i32, service::AckStatus)> {
        self.nodes[i].to_server[&server]
            .iter()
            .filter_map(|m| match m {
                ServiceMessage::Ack(a) => Some((a.ack_id, a.status)),
                _ => None,
            })
            .collect()
    }
}

fn invocation(target: &str) -> service::Payloads {
    json_payloads(&format!(
        "{{\"type\":1,\"target\":\"{target}\",\"arguments\":[]}}"
    ))
}

/// Three nodes, each with an app server's connection for `chat` and one client: ann on n0,
/// bob on n1, and ann again on n2.
struct Three {
    net: Net,
    servers: Vec<ConnHandle>,
    clients: Vec<(ConnHandle, String)>,
}

fn three() -> Three {
    let mut net = Net::new(3);
    let servers: Vec<ConnHandle> = (0..3)
        .map(|i| net.nodes[i].connect_server("chat", "app-1"))
        .collect();
    let users = ["ann", "bob", "ann"];
    let clients: Vec<(ConnHandle, String)> = (0..3)
        .map(|i| {
            // Opened once the node has the user's channel.
            let c = net.nodes[i].start_client("chat", Some(users[i]), "json");
            net.pump();
            let id = net.nodes[i].connection_id(c).to_owned();
            net.nodes[i].accept_handshake(c, &id);
            (c, id)
        })
        .collect();
    net.pump();
    net.advance(Duration::from_secs(1));
    Three {
        net,
        servers,
        clients,
    }
}

impl Three {
    fn got(&self, i: usize, target: &str) -> bool {
        self.net.nodes[i]
            .client_text(self.clients[i].0)
            .contains(&format!("\"target\":\"{target}\""))
    }

    fn who_got(&self, target: &str) -> Vec<usize> {
        (0..3).filter(|&i| self.got(i, target)).collect()
    }
}

#[test]
fn nodes_find_each_other_and_ids_name_their_node() {
    let t = three();
    for (i, (_, id)) in t.clients.iter().enumerate() {
        assert!(id.starts_with(&format!("n{i}.")), "{id}");
        let token = t.net.nodes[i].token_of(t.clients[i].0);
        assert_eq!(node_of(token), Some(format!("n{i}").as_str()));
        let status = t.net.nodes[i].relay().backplane_status().expect("a node");
        assert!(status.up);
        assert_eq!(status.nodes.len(), 2, "{status:?}");
    }
}

#[test]
fn broadcasts_users_groups_and_connections_cross_nodes_once() {
    let mut t = three();
    let (s0, s1) = (t.servers[0], t.servers[1]);
    let bob = t.clients[1].1.clone();
    let ann2 = t.clients[2].1.clone();

    // A broadcast from n0 excluding ann's connection on n2.
    t.net.send(
        0,
        s0,
        &ServiceMessage::BroadcastData(service::BroadcastData {
            excluded_connection_ids: vec![ann2.clone()],
            payloads: invocation("all"),
            ext: service::Ext::default(),
        }),
    );
    assert_eq!(t.who_got("all"), vec![0, 1]);

    // A user send from n1 reaches ann on n0 and n2.
    t.net.send(
        1,
        s1,
        &ServiceMessage::UserData(service::UserData {
            user_id: "ann".into(),
            payloads: invocation("to-ann"),
            ext: service::Ext::default(),
        }),
    );
    assert_eq!(t.who_got("to-ann"), vec![0, 2]);

    // n0's app server puts bob (on n1) and ann (on n2) in a group: n1 and n2 acknowledge.
    for (ack_id, id) in [(1, &bob), (2, &ann2)] {
        t.net.send(
            0,
            s0,
            &ServiceMessage::JoinGroupWithAck(service::GroupMembershipWithAck {
                connection_id: id.clone(),
                group: Some("g".into()),
                ack_id,
                ext: service::Ext::default(),
            }),
        );
    }
    assert_eq!(
        t.net.acks(0, s0),
        vec![(1, service::AckStatus::Ok), (2, service::AckStatus::Ok)]
    );
    // A group send from n0, which holds no member: each member's node hears it once.
    let before = t.net.delivered.get("g").copied().unwrap_or(0);
    t.net.send(
        0,
        s0,
        &ServiceMessage::GroupBroadcastData(service::GroupBroadcastData {
            group: "g".into(),
            excluded_connection_ids: Vec::new(),
            excluded_user_ids: Vec::new(),
            caller_user_id: None,
            payloads: invocation("to-g"),
            ext: service::Ext::default(),
        }),
    );
    assert_eq!(t.who_got("to-g"), vec![1, 2]);
    assert_eq!(
        t.net.delivered["g"] - before,
        2,
        "one message per member node"
    );

    // A connection send to bob only.
    t.net.send(
        2,
        t.servers[2],
        &ServiceMessage::MultiConnectionData(service::MultiConnectionData {
            connection_ids: vec![bob.clone()],
            payloads: invocation("to-bob"),
            ext: service::Ext::default(),
        }),
    );
    assert_eq!(t.who_got("to-bob"), vec![1]);

    // bob leaves; the group then reaches ann on n2 alone, and n1 no longer subscribes.
    t.net.send(
        0,
        s0,
        &ServiceMessage::LeaveGroupWithAck(service::GroupMembershipWithAck {
            connection_id: bob,
            group: Some("g".into()),
            ack_id: 3,
            ext: service::Ext::default(),
        }),
    );
    assert_eq!(t.net.acks(0, s0).last(), Some(&(3, service::AckStatus::Ok)));
    assert!(!t.net.subs[1].iter().any(|c| c.ends_with(":g:chat:g")));
    assert!(t.net.subs[2].iter().any(|c| c.ends_with(":g:chat:g")));
}

#[test]
fn closes_reach_the_nodes_that_hold_the_connections() {
    let mut t = three();
    let s0 = t.servers[0];
    let bob_id = t.clients[1].1.clone();
    let close_one = |id: &str, ack_id| {
        ServiceMessage::CloseConnectionWithAck(service::CloseConnectionWithAck {
            connection_id: id.to_owned(),
            reason: Some("bye".into()),
            ack_id,
            ext: service::Ext::default(),
        })
    };
    // bob, on n1, closed from n0: n1 says it found him; a second close finds nobody.
    t.net.send(0, s0, &close_one(&bob_id, 1));
    assert!(!t.net.nodes[1].is_open(t.clients[1].0), "bob is closed");
    t.net.send(0, s0, &close_one(&bob_id, 2));
    assert_eq!(
        t.net.acks(0, s0),
        vec![
            (1, service::AckStatus::Ok),
            (2, service::AckStatus::NotFound)
        ]
    );
    // ann's connections, on n0 and n2, closed by user from n1's app server.
    t.net.send(
        1,
        t.servers[1],
        &ServiceMessage::CloseUserConnectionsWithAck(service::CloseConnectionsWithAck {
            target: "ann".into(),
            excluded: Vec::new(),
            reason: None,
            ack_id: 3,
            ext: service::Ext::default(),
        }),
    );
    assert!(!t.net.nodes[0].is_open(t.clients[0].0));
    assert!(!t.net.nodes[2].is_open(t.clients[2].0));
    assert_eq!(
        t.net.acks(1, t.servers[1]),
        vec![(3, service::AckStatus::Ok)]
    );
}

#[test]
fn existence_checks_and_joins_ask_the_node_that_holds_the_connection() {
    let mut t = three();
    let s0 = t.servers[0];
    let bob = t.clients[1].1.clone();
    let check = |id: &str, ack_id| {
        ServiceMessage::CheckConnectionExistenceWithAck(service::ExistenceCheck {
            id: id.to_owned(),
            ack_id,
            ext: service::Ext::default(),
        })
    };
    t.net.send(0, s0, &check(&bob, 1));
    // Never heard of, on a node that exists and on one that does not: no at once.
    t.net.send(0, s0, &check("n1.nope", 2));
    t.net.send(0, s0, &check("n9.nope", 3));
    let user = |id: &str, ack_id| {
        ServiceMessage::CheckUserExistenceWithAck(service::ExistenceCheck {
            id: id.to_owned(),
            ack_id,
            ext: service::Ext::default(),
        })
    };
    t.net.send(0, s0, &user("bob", 4));
    t.net.send(0, s0, &user("zed", 5));
    use service::AckStatus::{NotFound, Ok as Found};
    assert_eq!(
        t.net.acks(0, s0),
        vec![
            (1, Found),
            (2, NotFound),
            (3, NotFound),
            (4, Found),
            (5, NotFound)
        ]
    );
}

#[test]
fn only_the_nodes_asked_answer_and_only_once() {
    use crate::relay::backplane::{decode, encode, Body};
    let mut t = three();
    let s0 = t.servers[0];
    // n1 and n2 hear nothing more: n0's question about a user goes unanswered by them.
    t.net.cut.extend([1, 2]);
    t.net.send(
        0,
        s0,
        &ServiceMessage::CheckUserExistenceWithAck(service::ExistenceCheck {
            id: "zed".into(),
            ack_id: 5,
            ext: service::Ext::default(),
        }),
    );
    let ask = t
        .net
        .published
        .iter()
        .rev()
        .find_map(|(i, _, data)| match decode(data).ok()?.body {
            Body::Command { ask: Some(a), .. } if *i == 0 => Some(a),
            _ => None,
        })
        .expect("n0 asked");
    let forge = |from: &str, found| encode(from, &Body::Answer { ask, found });
    let (relay, now) = t.net.nodes[0].relay_mut();
    // A yes from a node that was not asked counts for nothing; nor does a second answer
    // from one that was.
    relay.handle_backplane(now, "signalr-relay:node:n0", &forge("n9", true));
    relay.handle_backplane(now, "signalr-relay:node:n0", &forge("n1", false));
    relay.handle_backplane(now, "signalr-relay:node:n0", &forge("n1", true));
    t.net.nodes[0].drain();
    assert_eq!(t.net.acks(0, s0), vec![], "n2 has not answered");
    let (relay, now) = t.net.nodes[0].relay_mut();
    relay.handle_backplane(now, "signalr-relay:node:n0", &forge("n2", false));
    t.net.nodes[0].drain();
    assert_eq!(t.net.acks(0, s0), vec![(5, service::AckStatus::NotFound)]);
}

#[test]
fn a_dead_node_is_forgotten_and_its_connections_stop_existing() {
    let mut t = three();
    let s0 = t.servers[0];
    let bob = t.clients[1].1.clone();
    // n1 goes silent (killed): nothing it says arrives.
    t.net.cut.insert(1);
    t.net.advance(Duration::from_secs(3));
    let status = t.net.nodes[0].relay().backplane_status().expect("a node");
    assert_eq!(status.nodes.len(), 2, "not before the node timeout");
    t.net.advance(Duration::from_secs(4));
    let status = t.net.nodes[0].relay().backplane_status().expect("a node");
    assert_eq!(
        status.nodes,
        vec![("n2".to_owned(), None)],
        "forgotten within 10 s"
    );
    t.net.send(
        0,
        s0,
        &ServiceMessage::CheckConnectionExistenceWithAck(service::ExistenceCheck {
            id: bob,
            ack_id: 9,
            ext: service::Ext::default(),
        }),
    );
    assert_eq!(t.net.acks(0, s0), vec![(9, service::AckStatus::NotFound)]);
    // n1 itself hears nothing back, not even its own heartbeats: its subscription is
    // judged dead, and it asks for a reset.
    assert!(t.net.resets[1] >= 1);
    assert!(
        !t.net.nodes[1]
            .relay()
            .backplane_status()
            .expect("a node")
            .up
    );
    // Traffic between the others goes on.
    t.net.send(
        2,
        t.servers[2],
        &ServiceMessage::BroadcastData(service::BroadcastData {
            excluded_connection_ids: Vec::new(),
            payloads: invocation("after"),
            ext: service::Ext::default(),
        }),
    );
    assert_eq!(t.who_got("after"), vec![0, 2]);
}

#[test]
fn lost_messages_cost_only_themselves_and_a_reconnect_resubscribes() {
    let mut t = three();
    let s0 = t.servers[0];
    let bcast = |target: &str| {
        ServiceMessage::BroadcastData(service::BroadcastData {
            excluded_connection_ids: Vec::new(),
            payloads: invocation(target),
            ext: service::Ext::default(),
        })
    };
    t.net.lose_all = true;
    t.net.send(0, s0, &bcast("lost"));
    assert_eq!(t.who_got("lost"), vec![0], "local delivery never waits");
    t.net.lose_all = false;
    // The engine of n1 drops and comes back: it subscribes again to what it needs.
    t.net.down(1);
    t.net.send(0, s0, &bcast("while-down"));
    assert_eq!(t.who_got("while-down"), vec![0, 2]);
    t.net.up(1);
    assert!(t.net.subs[1].iter().any(|c| c.ends_with(":h:chat")));
    t.net.send(0, s0, &bcast("back"));
    assert_eq!(t.who_got("back"), vec![0, 1, 2]);
    // While down, n1's own sends were counted as dropped, not queued.
    t.net.down(1);
    t.net.send(1, t.servers[1], &bcast("from-n1"));
    assert_eq!(t.who_got("from-n1"), vec![1]);
    let stats = t.net.nodes[1]
        .relay()
        .backplane_status()
        .expect("a node")
        .stats;
    assert!(stats.dropped >= 1, "{stats:?}");
}

#[test]
fn a_node_that_restarts_under_its_id_owes_nothing_and_a_shared_id_is_counted() {
    let mut t = three();
    let s0 = t.servers[0];
    let bob_id = t.clients[1].1.clone();
    // n0's app server awaits bob's answer on n1; n1 restarts (a new process, same id)
    // before answering.
    t.net.send(
        0,
        s0,
        &ServiceMessage::ClientInvocation(service::ClientInvocation {
            invocation_id: "inv-r".into(),
            connection_id: bob_id,
            caller_server_id: "app-0".into(),
            payloads: invocation("ask"),
            ext: service::Ext::default(),
        }),
    );
    let epoch = t.net.nodes[1].now();
    t.net.nodes[1] = Sim::with_seed(epoch, node_config("n1"), [7; 32]);
    t.net.up(1);
    t.net.advance(Duration::from_secs(2));
    // The caller hears at once (not after the node timeout) that the answer will not come.
    assert!(t.net.nodes[0].to_server[&s0].iter().any(|m| matches!(
        m,
        ServiceMessage::ErrorCompletion(e) if e.invocation_id == "inv-r"
    )));
    assert_eq!(
        t.net.nodes[0]
            .relay()
            .backplane_status()
            .expect("a node")
            .nodes
            .len(),
        2,
        "the restarted node is known again"
    );
    // A second process given n2's id: both count the conflict.
    let epoch = t.net.nodes[2].now();
    t.net
        .nodes
        .push(Sim::with_seed(epoch, node_config("n2"), [9; 32]));
    t.net.subs.push(BTreeSet::new());
    t.net.connected.push(false);
    t.net.resets.push(0);
    t.net.unconfirmed.push(Vec::new());
    t.net.up(3);
    t.net.advance(Duration::from_secs(2));
    for i in [2, 3] {
        let stats = t.net.nodes[i]
            .relay()
            .backplane_status()
            .expect("a node")
            .stats;
        assert!(stats.id_conflicts > 0, "{i}: {stats:?}");
    }
}

#[test]
fn client_results_cross_nodes_and_come_back() {
    let mut t = three();
    let (s0, s1) = (t.servers[0], t.servers[1]);
    let (bob, bob_id) = t.clients[1].clone();
    // app-2 serves n1's clients here: the invocation must be routed back through the relay.
    t.net.send(
        0,
        s0,
        &ServiceMessage::ClientInvocation(service::ClientInvocation {
            invocation_id: "inv-1".into(),
            connection_id: bob_id.clone(),
            caller_server_id: "app-0".into(),
            payloads: invocation("ask"),
            ext: service::Ext::default(),
        }),
    );
    assert!(t.got(1, "ask"));
    // n1's app server (a different server id) was told to route the answer.
    assert!(t.net.nodes[1].to_server[&s1]
        .iter()
        .any(|m| matches!(m, ServiceMessage::ClientInvocation(i) if i.invocation_id == "inv-1")));
    let _ = bob;
    t.net.send(
        1,
        s1,
        &ServiceMessage::ClientCompletion(service::ClientCompletion {
            invocation_id: "inv-1".into(),
            connection_id: bob_id,
            caller_server_id: "app-0".into(),
            payload: Bytes::from_static(b"{\"type\":3}\x1e"),
            protocol: "json".into(),
            ext: service::Ext::default(),
        }),
    );
    assert!(t.net.nodes[0].to_server[&s0]
        .iter()
        .any(|m| matches!(m, ServiceMessage::ClientCompletion(c) if c.invocation_id == "inv-1")));
}

#[test]
fn a_node_without_an_app_server_asks_for_one_and_a_negotiate_waits_for_it() {
    let mut net = Net::new(2);
    let s0 = net.nodes[0].connect_server("chat", "app-1");
    net.advance(Duration::from_secs(2));
    // n0's heartbeat says it serves chat: n1 asks it, and n0 pings its app server with n1 as
    // the target.
    assert!(net.nodes[0].to_server[&s0].iter().any(|m| matches!(
        m,
        ServiceMessage::Ping(p) if p.get("target") == Some("n1")
    )));
    // A negotiate at n1 meanwhile waits, and goes through once the app server connects.
    let req = request(
        "POST",
        "/client/negotiate",
        "hub=chat&negotiateVersion=1",
        Some(&token("/client/", "chat", None, 3600, KEY)),
        false,
    );
    let RequestOutcome::Pending(waiting) = net.nodes[1].handle(&req) else {
        panic!("the negotiate should wait")
    };
    net.nodes[1].connect_server("chat", "app-1");
    let answer = &net.nodes[1].responses[&waiting];
    assert!(
        std::str::from_utf8(&answer.body)
            .expect("utf-8")
            .contains("\"connectionToken\":\"n1."),
        "{answer:?}"
    );
    // Without an app server anywhere, it does not wait.
    let other = request(
        "POST",
        "/client/negotiate",
        "hub=other&negotiateVersion=1",
        Some(&token("/client/", "other", None, 3600, KEY)),
        false,
    );
    assert!(matches!(
        net.nodes[1].handle(&other),
        RequestOutcome::Respond(_)
    ));
}

/// A group send from n1, which holds no member.
fn group_send(target: &str) -> ServiceMessage {
    ServiceMessage::GroupBroadcastData(service::GroupBroadcastData {
        group: "fresh".into(),
        excluded_connection_ids: Vec::new(),
        excluded_user_ids: Vec::new(),
        caller_user_id: None,
        payloads: invocation(target),
        ext: service::Ext::default(),
    })
}

fn join(connection_id: &str, ack_id: i32) -> ServiceMessage {
    join_group(connection_id, "fresh", ack_id)
}

fn join_group(connection_id: &str, group: &str, ack_id: i32) -> ServiceMessage {
    ServiceMessage::JoinGroupWithAck(service::GroupMembershipWithAck {
        connection_id: connection_id.to_owned(),
        group: Some(group.into()),
        ack_id,
        ext: service::Ext::default(),
    })
}

#[test]
fn a_join_is_acknowledged_once_the_groups_channel_is_in_place() {
    let mut t = three();
    let (s0, s1) = (t.servers[0], t.servers[1]);
    let ann = t.clients[0].1.clone();
    t.net.slow_subscribes = true;

    // n0's app server adds ann (on n0) to a group n0 has no member of: n0 asks for the
    // group's channel, and the join waits for it.
    t.net.send(0, s0, &join(&ann, 1));
    assert!(t.net.unconfirmed[0]
        .iter()
        .any(|c| c.0.ends_with(":g:chat:fresh")));
    assert_eq!(
        t.net.acks(0, s0),
        vec![],
        "acknowledged before the channel is in place"
    );
    // Meanwhile a send from n1 is lost, as Redis loses it: nobody told the app server
    // that ann is in the group yet.
    t.net.send(1, s1, &group_send("early"));
    assert_eq!(t.who_got("early"), Vec::<usize>::new());

    t.net.confirm(0);
    assert_eq!(t.net.acks(0, s0), vec![(1, service::AckStatus::Ok)]);
    t.net.send(1, s1, &group_send("after-ack"));
    assert_eq!(t.who_got("after-ack"), vec![0]);

    // A join to a group already subscribed here is acknowledged at once.
    let ann2 = t.clients[2].1.clone();
    t.net.send(2, t.servers[2], &join(&ann2, 2));
    assert_eq!(t.net.acks(2, t.servers[2]), vec![], "n2 subscribes first");
    t.net.confirm(2);
    assert_eq!(
        t.net.acks(2, t.servers[2]),
        vec![(2, service::AckStatus::Ok)]
    );
    t.net.send(0, s0, &join(&ann, 3));
    assert_eq!(t.net.acks(0, s0).last(), Some(&(3, service::AckStatus::Ok)));
}

#[test]
fn a_join_asked_of_another_node_is_answered_once_its_channel_is_in_place() {
    let mut t = three();
    let (s0, s1) = (t.servers[0], t.servers[1]);
    let bob = t.clients[1].1.clone();
    t.net.slow_subscribes = true;

    // n0's app server adds bob (on n1): n1 joins him, and answers once subscribed.
    t.net.send(0, s0, &join(&bob, 1));
    assert!(t.net.unconfirmed[1]
        .iter()
        .any(|c| c.0.ends_with(":g:chat:fresh")));
    assert_eq!(t.net.acks(0, s0), vec![]);
    t.net.confirm(1);
    assert_eq!(t.net.acks(0, s0), vec![(1, service::AckStatus::Ok)]);
    t.net.send(0, s0, &group_send("after-ack"));
    assert_eq!(t.who_got("after-ack"), vec![1]);

    // Never confirmed: n1 answers before n0 stops waiting, so the join (made) is "found".
    t.net
        .send(1, s1, &join_group(&t.clients[0].1, "unconfirmed", 2));
    t.net.advance(Duration::from_secs(4));
    assert_eq!(t.net.acks(1, s1), vec![(2, service::AckStatus::Ok)]);
}

#[test]
fn a_rest_join_is_answered_once_the_groups_channel_is_in_place() {
    let mut t = three();
    let ann = t.clients[0].1.clone();
    t.net.slow_subscribes = true;
    let req = super::rest::rest(
        "PUT",
        &format!("/api/hubs/chat/groups/fresh/connections/{ann}"),
        "api-version=2022-06-01",
        b"",
    );
    let RequestOutcome::Pending(waiting) = t.net.nodes[0].handle(&req) else {
        panic!("the join should wait for its channel")
    };
    t.net.nodes[0].drain();
    t.net.pump();
    assert!(!t.net.nodes[0].responses.contains_key(&waiting));
    t.net.confirm(0);
    assert_eq!(t.net.nodes[0].responses[&waiting].status, 200);
    t.net.send(1, t.servers[1], &group_send("after-rest"));
    assert_eq!(t.who_got("after-rest"), vec![0]);
}

#[test]
fn a_held_join_is_answered_anyway_when_the_engine_never_confirms_or_goes_down() {
    let mut t = three();
    let s0 = t.servers[0];
    let ann = t.clients[0].1.clone();
    t.net.slow_subscribes = true;

    // Never confirmed: answered after half the answer timeout (1.5 s), as the join was made
    // (a node that asked for it waits the whole timeout).
    t.net.send(0, s0, &join(&ann, 1));
    t.net.advance(Duration::from_secs(1));
    assert_eq!(t.net.acks(0, s0), vec![]);
    t.net.advance(Duration::from_secs(1));
    assert_eq!(t.net.acks(0, s0), vec![(1, service::AckStatus::Ok)]);
    assert_eq!(t.net.nodes[0].relay().cluster_pending().3, 0);
    let stats = |t: &Three, i: usize| {
        t.net.nodes[i]
            .relay()
            .backplane_status()
            .expect("a node")
            .stats
    };
    assert_eq!(stats(&t, 0).joins_unconfirmed, 1);

    // The engine goes down: nothing crosses, and the answer goes at once.
    let bob = t.clients[1].1.clone();
    t.net.send(1, t.servers[1], &join_group(&bob, "other", 7));
    assert_eq!(t.net.acks(1, t.servers[1]), vec![]);
    t.net.down(1);
    assert_eq!(
        t.net.acks(1, t.servers[1]),
        vec![(7, service::AckStatus::Ok)]
    );
    assert_eq!(stats(&t, 1).joins_unconfirmed, 0, "the engine went down");
}

#[test]
fn held_joins_are_answered_in_the_order_their_subscriptions_are_confirmed() {
    let mut t = three();
    let s0 = t.servers[0];
    let ann = t.clients[0].1.clone();
    t.net.slow_subscribes = true;
    t.net.send(0, s0, &join_group(&ann, "first", 1));
    t.net.send(0, s0, &join_group(&ann, "second", 2));
    assert_eq!(t.net.unconfirmed[0].len(), 2);
    t.net.confirm_first(0, 1);
    assert_eq!(t.net.acks(0, s0), vec![(1, service::AckStatus::Ok)]);
    t.net.confirm(0);
    assert_eq!(
        t.net.acks(0, s0),
        vec![(1, service::AckStatus::Ok), (2, service::AckStatus::Ok)]
    );
}

#[test]
fn an_answer_to_another_node_held_while_the_engine_reconnects_goes_once_it_is_back() {
    let mut t = three();
    let s0 = t.servers[0];
    let bob = t.clients[1].1.clone();
    t.net.slow_subscribes = true;
    // n0 asks n1 to add bob; n1 holds its answer for the group's channel, and its engine
    // drops. The answer cannot cross while down: it waits, rather than being lost.
    t.net.send(0, s0, &join(&bob, 1));
    t.net.down(1);
    assert_eq!(t.net.acks(0, s0), vec![]);
    // Back: n1 asks again for every channel, and answers once they are in place.
    t.net.up(1);
    assert_eq!(t.net.acks(0, s0), vec![]);
    t.net.confirm(1);
    assert_eq!(t.net.acks(0, s0), vec![(1, service::AckStatus::Ok)]);
    t.net.send(0, s0, &group_send("after-ack"));
    assert_eq!(t.who_got("after-ack"), vec![1]);
}

fn user_send(user: &str, target: &str) -> ServiceMessage {
    ServiceMessage::UserData(service::UserData {
        user_id: user.into(),
        payloads: invocation(target),
        ext: service::Ext::default(),
    })
}

/// What an app server was told about the connection `id`, in order: `open`, then each
/// ConnectionData's payload as text.
fn told_about(t: &Three, i: usize, id: &str) -> Vec<String> {
    t.net.nodes[i].to_server[&t.servers[i]]
        .iter()
        .filter_map(|m| match m {
            ServiceMessage::OpenConnection(o) if o.connection_id == id => Some("open".to_owned()),
            ServiceMessage::ConnectionData(d) if d.connection_id == id => {
                Some(String::from_utf8_lossy(&d.payload).into_owned())
            }
            _ => None,
        })
        .collect()
}

fn backplane_stats(t: &Three, i: usize) -> crate::relay::BackplaneStats {
    t.net.nodes[i]
        .relay()
        .backplane_status()
        .expect("a node")
        .stats
}

#[test]
fn a_client_is_opened_once_its_users_channel_is_in_place() {
    let mut t = three();
    let s1 = t.servers[1];
    t.net.slow_subscribes = true;

    // cat is new on n0: n0 asks for the user's channel, and its app server hears of the
    // client only once the channel is in place. What the client sends meanwhile follows.
    let cat = t.net.start(0, "cat");
    assert!(t.net.unconfirmed[0]
        .iter()
        .any(|c| c.0.ends_with(":u:chat:cat")));
    assert!(!t.net.nodes[0].is_open(cat), "opened before its channel");
    t.net.nodes[0].data(cat, b"{\"type\":6}\x1e");
    t.net.pump();
    // A send to cat from n1 now is lost, as Redis loses it: no app server knows of cat yet.
    t.net.send(1, s1, &user_send("cat", "early"));

    t.net.confirm(0);
    assert!(t.net.nodes[0].is_open(cat));
    let id = t.net.nodes[0].connection_id(cat).to_owned();
    assert_eq!(
        told_about(&t, 0, &id),
        vec![
            "open".to_owned(),
            "{\"protocol\":\"json\",\"version\":1}\u{1e}".to_owned(),
            "{\"type\":6}\u{1e}".to_owned(),
        ]
    );
    t.net.nodes[0].accept_handshake(cat, &id);
    // The app server's first send to the user, from any node, reaches the client.
    t.net.send(1, s1, &user_send("cat", "welcome"));
    let text = t.net.nodes[0].client_text(cat);
    assert!(text.contains("\"target\":\"welcome\""), "{text}");
    assert!(!text.contains("\"target\":\"early\""), "{text}");

    // Another client of a user n0 already has a channel for is opened at once.
    let cat2 = t.net.start(0, "cat");
    assert!(t.net.unconfirmed[0].is_empty());
    assert!(t.net.nodes[0].is_open(cat2));
    assert_eq!(backplane_stats(&t, 0).opens_unconfirmed, 0);
}

#[test]
fn a_held_client_is_opened_anyway_when_the_engine_never_confirms_or_goes_down() {
    let mut t = three();
    t.net.slow_subscribes = true;

    // Never confirmed: opened after half the answer timeout (1.5 s), and counted.
    let dan = t.net.start(0, "dan");
    t.net.advance(Duration::from_secs(1));
    assert!(!t.net.nodes[0].is_open(dan));
    t.net.advance(Duration::from_secs(1));
    assert!(t.net.nodes[0].is_open(dan));
    assert_eq!(backplane_stats(&t, 0).opens_unconfirmed, 1);

    // The engine goes down: nothing crosses, so nothing is waited for.
    let eve = t.net.start(1, "eve");
    assert!(!t.net.nodes[1].is_open(eve));
    t.net.down(1);
    assert!(t.net.nodes[1].is_open(eve));
    assert_eq!(
        backplane_stats(&t, 1).opens_unconfirmed,
        0,
        "the engine went down"
    );
}

#[test]
fn a_held_client_that_leaves_or_floods_is_never_opened() {
    let mut t = three();
    t.net.slow_subscribes = true;

    // Gone before its channel is in place: its app server never hears of it.
    let fay = t.net.start(0, "fay");
    t.net.nodes[0].closed_by_peer(fay);
    t.net.confirm(0);
    assert!(!t.net.nodes[0].is_open(fay));
    let opens = |t: &Three| {
        t.net.nodes[0].to_server[&t.servers[0]]
            .iter()
            .filter(|m| matches!(m, ServiceMessage::OpenConnection(_)))
            .count()
    };
    assert_eq!(opens(&t), 1, "only ann's");

    // What a held client sends before its handshake is answered is bounded by one message.
    let gus = t.net.start(0, "gus");
    let max = RelayConfig::default().max_client_message_size;
    t.net.nodes[0].data(gus, &vec![b' '; max / 2]);
    assert!(!t.net.nodes[0].is_done(gus));
    t.net.nodes[0].data(gus, &vec![b' '; max / 2 + 1]);
    assert!(
        t.net.nodes[0].is_done(gus),
        "a flood while held closes the client"
    );
    t.net.confirm(0);
    assert_eq!(opens(&t), 1);
    assert_eq!(t.net.nodes[0].relay().cluster_pending().3, 0);
    // A bystander on n0 still gets what it is sent.
    t.net.send(1, t.servers[1], &user_send("ann", "still-here"));
    assert_eq!(t.who_got("still-here"), vec![0, 2]);
}

#[test]
fn a_long_polling_client_is_held_the_same_way() {
    let mut t = three();
    t.net.slow_subscribes = true;
    let node = &mut t.net.nodes[0];
    let id = node.negotiate("chat", Some("hal")).expect("negotiated");
    let on = |method: &str, body: &[u8]| {
        connection_request(method, "chat", &id, Some("hal"), None, body)
    };
    // The first poll starts the transport; the handshake's POST is taken; the next poll
    // waits, and the app server has not heard of the client.
    assert_eq!(respond(node.handle(&on("GET", b""))).status, 200);
    let handshake = b"{\"protocol\":\"json\",\"version\":1}\x1e";
    assert_eq!(respond(node.handle(&on("POST", handshake))).status, 200);
    let RequestOutcome::Pending(poll) = node.handle(&on("GET", b"")) else {
        panic!("the poll should wait")
    };
    node.drain();
    t.net.pump();
    let opened = |t: &Three| {
        t.net.nodes[0].to_server[&t.servers[0]]
            .iter()
            .filter_map(|m| match m {
                ServiceMessage::OpenConnection(o) => Some(o.connection_id.clone()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(opened(&t).len(), 1, "only ann's");

    t.net.confirm(0);
    let hal = opened(&t).last().cloned().expect("hal's");
    assert_eq!(
        told_about(&t, 0, &hal),
        vec![
            "open".to_owned(),
            String::from_utf8_lossy(handshake).into_owned()
        ]
    );
    // The app server answers the handshake: the waiting poll gets it.
    t.net.send(
        0,
        t.servers[0],
        &ServiceMessage::ConnectionData(service::ConnectionData {
            connection_id: hal,
            payload: Bytes::from_static(b"{}\x1e"),
            ext: service::Ext::default(),
        }),
    );
    assert_eq!(&t.net.nodes[0].responses[&poll].body[..], b"{}\x1e");
}

#[test]
fn a_node_shutting_down_does_not_open_its_held_clients() {
    let mut t = three();
    t.net.slow_subscribes = true;
    let ivy = t.net.start(0, "ivy");
    assert!(!t.net.nodes[0].is_open(ivy));
    let (relay, now) = t.net.nodes[0].relay_mut();
    relay.shut_down(now);
    t.net.nodes[0].drain();
    t.net.pump();
    let opens = t.net.nodes[0].to_server[&t.servers[0]]
        .iter()
        .filter(|m| matches!(m, ServiceMessage::OpenConnection(_)))
        .count();
    assert_eq!(opens, 1, "only ann's: ivy is ended, not opened first");
    assert!(t.net.nodes[0].is_done(ivy));
    assert_eq!(t.net.nodes[0].relay().cluster_pending().3, 0);
}
