//! Counters the adapter can read at any time ([`Relay::stats`](super::Relay::stats)).

use super::reason::CloseKind;

/// How many connections ended, by [`CloseKind`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloseCounts([u64; CloseKind::ALL.len()]);

impl CloseCounts {
    /// The count for `kind`.
    pub fn get(&self, kind: CloseKind) -> u64 {
        self.0[kind.index()]
    }

    /// Every kind with its count, in [`CloseKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (CloseKind, u64)> + '_ {
        CloseKind::ALL
            .into_iter()
            .map(|kind| (kind, self.get(kind)))
    }

    /// The sum over every kind.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub(crate) fn add(&mut self, kind: CloseKind) {
        self.0[kind.index()] += 1;
    }
}

/// Messages and bytes relayed in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Transport messages: a client's WebSocket message or `POST` forwarded to its app
    /// server; a message, event or queued long-poll chunk from the app server to a client.
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

impl Traffic {
    pub(crate) fn add(&mut self, bytes: usize) {
        self.messages += 1;
        self.bytes += bytes as u64;
    }
}

/// The relay's counters since it started. Plain numbers: the adapter reads and exports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Client connections whose handshake completed (mapped to an app server).
    pub clients_opened: u64,
    /// Those of them that have ended, by why.
    pub clients_closed: CloseCounts,
    /// Client connections that ended before their handshake completed, by why (a transport
    /// that never came, a handshake refused or never sent, ...).
    pub clients_abandoned: CloseCounts,
    /// Server connections whose service handshake completed.
    pub servers_opened: u64,
    /// Those of them that have ended, by why.
    pub servers_closed: CloseCounts,
    /// Server connections that ended before their service handshake completed, by why.
    pub servers_abandoned: CloseCounts,
    /// Client → app server.
    pub to_server: Traffic,
    /// App server → client.
    pub to_client: Traffic,
    /// HTTP requests refused: with a 4xx or 5xx status, or a negotiate answered with an error
    /// (by endpoint and cause: [`Relay::refusals`](super::Relay::refusals)).
    pub requests_rejected: u64,
    /// Client-result completions ignored: not from the client the invocation was sent to.
    pub completions_ignored: u64,
    /// Messages from app servers skipped: over the size limit, or undecodable.
    pub server_messages_skipped: u64,
    /// Clients moved to another app server when theirs left (graceful shutdown).
    pub clients_migrated: u64,
    /// Upstream requests sent.
    pub upstream_sent: u64,
    /// Upstream requests answered with a 2xx status.
    pub upstream_succeeded: u64,
    /// Upstream requests not answered, or answered with another status.
    pub upstream_failed: u64,
    /// Upstream requests not sent: too many of the hub's were waiting.
    pub upstream_dropped: u64,
}
