//! What an operator sees: a point-in-time [`Snapshot`] of the relay's connections (read at
//! scrape time, never kept up to date on the hot path), and the Prometheus text exposition of
//! it with the counters ([`render_prometheus`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::client::{Client, Dialect};
use super::reason::CloseKind;
use super::stats::{CloseCounts, RelayStats};
use super::{ClientFamily, Relay};
use crate::aspnetcore::negotiate::TransportKind;

/// The relay's connections at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Snapshot {
    /// Every hub with a client or a server connection, by name.
    pub hubs: BTreeMap<String, HubSnapshot>,
    /// Bytes held for clients (waiting for a poll, a reconnect or a handshake).
    pub buffered_bytes: usize,
    /// Whether the relay is shutting down.
    pub shutting_down: bool,
    /// The backplane, on a cluster node.
    pub backplane: Option<super::BackplaneStatus>,
}

/// One hub's connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubSnapshot {
    /// Clients mapped to an app server, by transport and protocol label (see
    /// [`transport_label`]).
    pub clients: BTreeMap<(&'static str, &'static str), u64>,
    /// Clients negotiated or connecting, not yet mapped to an app server.
    pub pending_clients: u64,
    /// The app servers, by server id.
    pub app_servers: BTreeMap<String, AppServerSnapshot>,
}

/// One app server of a hub.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AppServerSnapshot {
    /// Its server connections (handshake completed).
    pub connections: u64,
    /// The clients mapped to them.
    pub clients: u64,
}

impl HubSnapshot {
    /// Server connections of every app server.
    pub fn server_connections(&self) -> u64 {
        self.app_servers.values().map(|s| s.connections).sum()
    }

    /// Clients mapped to an app server.
    pub fn client_count(&self) -> u64 {
        self.clients.values().sum()
    }
}

/// The `transport` label of a client: `websockets`, `sse` or `longpolling`, and for classic
/// clients the same with `classic_` before.
pub fn transport_label(family: ClientFamily, kind: TransportKind) -> &'static str {
    match (family, kind) {
        (ClientFamily::AspNetCore, TransportKind::WebSockets) => "websockets",
        (ClientFamily::AspNetCore, TransportKind::ServerSentEvents) => "sse",
        (ClientFamily::AspNetCore, TransportKind::LongPolling) => "longpolling",
        (ClientFamily::Classic, TransportKind::WebSockets) => "classic_websockets",
        (ClientFamily::Classic, TransportKind::ServerSentEvents) => "classic_sse",
        (ClientFamily::Classic, TransportKind::LongPolling) => "classic_longpolling",
    }
}

impl Relay {
    /// The connections now: a walk over every client and server connection, for a scrape or
    /// a status page (not for every message).
    pub fn snapshot(&self) -> Snapshot {
        // By hub id while walking (no allocation per connection), then named.
        let mut by_id: BTreeMap<super::directory::HubId, HubSnapshot> = BTreeMap::new();
        for conn in self.servers.open_handles() {
            let Some(server) = self.servers.get(conn).filter(|s| !s.internal) else {
                continue;
            };
            let hub = by_id.entry(server.hub).or_default();
            let app = match hub.app_servers.get_mut(&server.server_id) {
                Some(app) => app,
                None => hub.app_servers.entry(server.server_id.clone()).or_default(),
            };
            app.connections += 1;
            app.clients += server.clients.len() as u64;
        }
        for client in self.clients.map.values() {
            let hub = by_id.entry(client.hub).or_default();
            match labels(client) {
                Some(key) => *hub.clients.entry(key).or_default() += 1,
                None => hub.pending_clients += 1,
            }
        }
        let hubs = by_id
            .into_iter()
            .map(|(id, hub)| (self.directory.name(id).to_owned(), hub))
            .collect();
        Snapshot {
            hubs,
            buffered_bytes: self.buffered_bytes().0,
            shutting_down: self.draining,
            backplane: self.backplane_status(),
        }
    }
}

/// A mapped client's transport and protocol labels.
fn labels(client: &Client) -> Option<(&'static str, &'static str)> {
    let link = client.link.as_ref()?;
    let protocol = match client.dialect {
        Dialect::AspNetCore(_) => link.protocol.name(),
        Dialect::Classic(_) => "classic",
    };
    Some((transport_label(client.family(), link.transport), protocol))
}

/// What the process costs, read by the adapter (the core reads no files).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct ProcessStats {
    /// User and system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident memory, bytes.
    pub resident_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// Seconds since the relay started.
    pub uptime_seconds: f64,
}

impl ProcessStats {
    /// Stats with only the uptime known; set the rest with the `with_*` methods.
    pub fn new(uptime_seconds: f64) -> Self {
        Self {
            uptime_seconds,
            ..Self::default()
        }
    }

    /// With the CPU time.
    #[must_use]
    pub fn with_cpu_seconds(mut self, seconds: f64) -> Self {
        self.cpu_seconds = Some(seconds);
        self
    }

    /// With the resident memory.
    #[must_use]
    pub fn with_resident_bytes(mut self, bytes: u64) -> Self {
        self.resident_bytes = Some(bytes);
        self
    }

    /// With the open descriptors.
    #[must_use]
    pub fn with_open_fds(mut self, fds: u64) -> Self {
        self.open_fds = Some(fds);
        self
    }
}

/// Requests the relay refused, by endpoint and cause.
pub type RefusalCounts = BTreeMap<(&'static str, &'static str), u64>;

/// The Prometheus text exposition (format 0.0.4) of the relay's counters, its connections
/// and the process, every name prefixed `signalr_relay_`.
pub fn render_prometheus(
    stats: &RelayStats,
    refusals: &RefusalCounts,
    snapshot: &Snapshot,
    process: &ProcessStats,
) -> String {
    let mut x = Exposition::default();
    let hubs = &snapshot.hubs;
    x.family(
        "client_connections",
        "gauge",
        "Clients mapped to an app server, by hub, transport and protocol.",
    );
    for (hub, h) in hubs {
        for ((transport, protocol), n) in &h.clients {
            x.sample(
                &[
                    ("hub", hub),
                    ("transport", transport),
                    ("protocol", protocol),
                ],
                n,
            );
        }
    }
    x.family(
        "pending_client_connections",
        "gauge",
        "Clients negotiated or connecting, not yet mapped to an app server, by hub.",
    );
    for (hub, h) in hubs {
        x.sample(&[("hub", hub)], h.pending_clients);
    }
    x.family(
        "server_connections",
        "gauge",
        "App-server connections, by hub.",
    );
    for (hub, h) in hubs {
        x.sample(&[("hub", hub)], h.server_connections());
    }
    x.family("app_servers", "gauge", "App servers connected, by hub.");
    for (hub, h) in hubs {
        x.sample(&[("hub", hub)], h.app_servers.len());
    }
    x.family(
        "messages_total",
        "counter",
        "Messages relayed, by direction.",
    );
    x.sample(&[("direction", "to_server")], stats.to_server.messages);
    x.sample(&[("direction", "to_client")], stats.to_client.messages);
    x.family("bytes_total", "counter", "Bytes relayed, by direction.");
    x.sample(&[("direction", "to_server")], stats.to_server.bytes);
    x.sample(&[("direction", "to_client")], stats.to_client.bytes);
    x.family(
        "connections_opened_total",
        "counter",
        "Connections opened (a client's handshake, an app server's service handshake), by kind.",
    );
    x.sample(&[("kind", "client")], stats.clients_opened);
    x.sample(&[("kind", "server")], stats.servers_opened);
    x.family(
        "connections_closed_total",
        "counter",
        "Open connections that ended, by kind and reason.",
    );
    x.closes("client", &stats.clients_closed);
    x.closes("server", &stats.servers_closed);
    x.family(
        "connections_failed_total",
        "counter",
        "Connections that ended before their handshake completed, by kind and reason.",
    );
    x.closes("client", &stats.clients_abandoned);
    x.closes("server", &stats.servers_abandoned);
    x.family(
        "requests_refused_total",
        "counter",
        "HTTP requests refused (negotiates, connects, polls, ...), by endpoint and cause.",
    );
    for ((endpoint, cause), n) in refusals {
        x.sample(&[("endpoint", endpoint), ("cause", cause)], n);
    }
    x.family(
        "messages_dropped_total",
        "counter",
        "Messages dropped, by cause.",
    );
    x.sample(
        &[("cause", "server_message_invalid")],
        stats.server_messages_skipped,
    );
    x.sample(
        &[("cause", "completion_not_owed")],
        stats.completions_ignored,
    );
    x.sample(&[("cause", "upstream_busy")], stats.upstream_dropped);
    x.family(
        "upstream_requests_total",
        "counter",
        "Upstream (webhook) requests, by outcome: sent, succeeded (2xx), failed (no answer, or another status).",
    );
    x.sample(&[("outcome", "sent")], stats.upstream_sent);
    x.sample(&[("outcome", "succeeded")], stats.upstream_succeeded);
    x.sample(&[("outcome", "failed")], stats.upstream_failed);
    x.single(
        "clients_migrated_total",
        "counter",
        "Clients moved to another app server when theirs left.",
        stats.clients_migrated,
    );
    x.single(
        "buffered_bytes",
        "gauge",
        "Bytes held for clients (waiting for a poll, a reconnect or a handshake).",
        snapshot.buffered_bytes,
    );
    x.single(
        "shutting_down",
        "gauge",
        "1 while the relay shuts down (drains), else 0.",
        u8::from(snapshot.shutting_down),
    );
    if let Some(b) = &snapshot.backplane {
        x.single(
            "backplane_up",
            "gauge",
            "1 while the backplane is connected and this node hears its own heartbeats, else 0.",
            u8::from(b.up),
        );
        x.single(
            "backplane_nodes",
            "gauge",
            "Other nodes alive, as the heartbeats say.",
            b.nodes.len(),
        );
        x.single(
            "backplane_channels",
            "gauge",
            "Backplane channels subscribed.",
            b.channels,
        );
        x.single(
            "backplane_waiting",
            "gauge",
            "Answers to joins, and clients' openings, waiting for the backplane to confirm the subscriptions asked before them.",
            b.waiting,
        );
        x.family(
            "backplane_messages_total",
            "counter",
            "Backplane messages, by outcome: published, received (from other nodes), dropped (the backplane down, or its queue full), undecodable.",
        );
        x.sample(&[("outcome", "published")], b.stats.published);
        x.sample(&[("outcome", "received")], b.stats.received);
        x.sample(&[("outcome", "dropped")], b.stats.dropped);
        x.sample(&[("outcome", "undecodable")], b.stats.undecodable);
        x.single(
            "backplane_unanswered_total",
            "counter",
            "Questions to other nodes (existence, joins, closes) answered no because no answer came in time.",
            b.stats.unanswered,
        );
        x.single(
            "backplane_joins_unconfirmed_total",
            "counter",
            "Joins answered before the backplane confirmed the group's channel: not within half the answer timeout, or too many were waiting.",
            b.stats.joins_unconfirmed,
        );
        x.single(
            "backplane_opens_unconfirmed_total",
            "counter",
            "Clients opened before the backplane confirmed their user's or hub's channel: not within half the answer timeout, or too many were waiting.",
            b.stats.opens_unconfirmed,
        );
        x.single(
            "backplane_node_id_conflicts_total",
            "counter",
            "Heartbeats with this node's id from another process: two nodes share an id (fix their --node-id).",
            b.stats.id_conflicts,
        );
        x.single(
            "backplane_stale_total",
            "counter",
            "Times the subscription was found dead (own heartbeats no longer heard) and reset.",
            b.stats.stale,
        );
    }
    x.single(
        "uptime_seconds",
        "gauge",
        "Seconds since the relay started.",
        process.uptime_seconds,
    );
    // What the adapter could not read is left out, not written as zero.
    if let Some(cpu) = process.cpu_seconds {
        x.single(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of the process, seconds.",
            cpu,
        );
    }
    if let Some(rss) = process.resident_bytes {
        x.single(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the process, bytes.",
            rss,
        );
    }
    if let Some(fds) = process.open_fds {
        x.single(
            "process_open_fds",
            "gauge",
            "Open file descriptors of the process.",
            fds,
        );
    }
    x.out
}

/// The text being written: a family's `HELP` and `TYPE`, then its samples.
#[derive(Default)]
struct Exposition {
    out: String,
    /// The current family's full name.
    name: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.name = format!("signalr_relay_{name}");
        let _ = writeln!(self.out, "# HELP {} {help}", self.name);
        let _ = writeln!(self.out, "# TYPE {} {kind}", self.name);
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(&self.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family of one sample without labels.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(&[], value);
    }

    fn closes(&mut self, kind: &str, counts: &CloseCounts) {
        for reason in CloseKind::ALL {
            self.sample(
                &[("kind", kind), ("reason", reason.as_str())],
                counts.get(reason),
            );
        }
    }
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn every_family_has_help_and_type_then_its_samples() {
        let mut snapshot = Snapshot::default();
        let mut hub = HubSnapshot::default();
        hub.clients.insert(("websockets", "json"), 3);
        hub.app_servers.insert(
            "app-1".to_owned(),
            AppServerSnapshot {
                connections: 5,
                clients: 3,
            },
        );
        snapshot.hubs.insert("chat\"x".to_owned(), hub);
        let mut refusals = RefusalCounts::new();
        refusals.insert(("negotiate", "bad_token"), 2);
        let text = render_prometheus(
            &RelayStats::default(),
            &refusals,
            &snapshot,
            &ProcessStats::new(1.5).with_open_fds(12),
        );
        assert!(text.contains(
            "signalr_relay_client_connections{hub=\"chat\\\"x\",transport=\"websockets\",protocol=\"json\"} 3\n"
        ));
        assert!(text.contains("signalr_relay_server_connections{hub=\"chat\\\"x\"} 5\n"));
        assert!(text.contains(
            "signalr_relay_requests_refused_total{endpoint=\"negotiate\",cause=\"bad_token\"} 2\n"
        ));
        assert!(text.contains("signalr_relay_process_open_fds 12\n"));
        assert!(!text.contains("process_cpu_seconds_total"));
        // Each sample line comes after its family's TYPE line, and before the next family's.
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                current = rest.split(' ').next().unwrap().to_owned();
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "{line}");
            }
        }
    }
}
