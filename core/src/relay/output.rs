//! What the relay asks of its adapter ([`Output`]), what it tells it ([`Event`]), and the one
//! sink every part writes them to ([`Outputs`]).

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use super::http::{HttpResponse, RequestId};
use super::reason::{truncate_reason, CloseReason};
use super::stats::RelayStats;
use super::ConnHandle;
use crate::aspnetcore::negotiate::TransportKind;
use crate::aspnetcore::HubProtocol;
use crate::service::{self, ServiceMessage};

/// Something the adapter must do, or may want to know.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Output {
    /// Send one WebSocket message (or, on an event stream, these bytes).
    Transmit {
        /// The connection.
        conn: ConnHandle,
        /// The message.
        data: Bytes,
        /// Binary (`true`) or text message.
        binary: bool,
    },
    /// Answer a held request.
    Respond {
        /// The request.
        request: RequestId,
        /// Its response.
        response: HttpResponse,
    },
    /// Send what is queued, then close the WebSocket (or end the event stream) with this
    /// code and reason. The relay has forgotten the connection.
    Close {
        /// The connection.
        conn: ConnHandle,
        /// The WebSocket close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// Something happened: for logs and metrics. Nothing to do.
    Event(Event),
    /// Send this request upstream, then report its answer with
    /// [`Relay::handle_upstream_response`](super::Relay::handle_upstream_response) (every
    /// one, answered or not).
    Upstream(super::upstream::UpstreamRequest),
    /// Publish `data` on a backplane channel (a cluster node's: see
    /// [`ClusterConfig`](super::ClusterConfig)). Drop it rather than wait when the engine is
    /// slow: the relay never waits for the backplane.
    Publish {
        /// The channel.
        channel: String,
        /// The message.
        data: Bytes,
    },
    /// Subscribe to a backplane channel, and report what arrives on it with
    /// [`Relay::handle_backplane`](super::Relay::handle_backplane). Carry these out in the
    /// order asked, and report each once the pub/sub service has confirmed it, with
    /// [`Relay::handle_backplane_subscribed`](super::Relay::handle_backplane_subscribed): the
    /// relay holds its answers to joins until then. After a reconnect, the relay asks again
    /// for every channel it needs.
    Subscribe {
        /// The channel.
        channel: String,
    },
    /// Unsubscribe from a backplane channel.
    Unsubscribe {
        /// The channel.
        channel: String,
    },
    /// The backplane's subscription is dead (this node no longer hears its own heartbeats):
    /// drop the engine's connection and connect again, reporting
    /// [`Relay::handle_backplane_down`](super::Relay::handle_backplane_down) and then
    /// [`Relay::handle_backplane_up`](super::Relay::handle_backplane_up).
    ResetBackplane,
}

/// Which SignalR family a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientFamily {
    /// ASP.NET Core SignalR.
    AspNetCore,
    /// Classic ASP.NET SignalR 2.x.
    Classic,
}

/// Something for the log: a connection opened or closed, a request refused, a message skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A client completed its handshake: it is mapped to a server connection.
    ClientOpened {
        /// The client.
        conn: ConnHandle,
        /// Its hub.
        hub: String,
        /// Its connection id.
        connection_id: String,
        /// Its family.
        family: ClientFamily,
        /// What carries it.
        transport: TransportKind,
        /// Its hub protocol (classic clients: JSON).
        protocol: HubProtocol,
    },
    /// An opened client is gone.
    ClientClosed {
        /// The client.
        conn: ConnHandle,
        /// Its hub.
        hub: String,
        /// Its connection id.
        connection_id: String,
        /// Who closed it, and why.
        reason: CloseReason,
    },
    /// An app server's connection completed its service handshake.
    ServerOpened {
        /// The server connection.
        conn: ConnHandle,
        /// Its hub.
        hub: String,
        /// The app server it belongs to.
        server_id: String,
    },
    /// An opened server connection is gone.
    ServerClosed {
        /// The server connection.
        conn: ConnHandle,
        /// Its hub.
        hub: String,
        /// The app server it belonged to.
        server_id: String,
        /// Who closed it, and why.
        reason: CloseReason,
    },
    /// The relay refused a request (a 4xx or 5xx answer, or a negotiate error) or a client's
    /// handshake: for the operator's log.
    Refused {
        /// Where: the request's path, or `handshake`.
        at: String,
        /// The HTTP status (0 for a negotiate error or a handshake).
        status: u16,
        /// The hub, when known.
        hub: Option<String>,
        /// The client's connection id, for a handshake.
        connection_id: Option<String>,
        /// The client's transport, for a handshake.
        transport: Option<TransportKind>,
        /// Why, in the words the peer got.
        reason: String,
    },
    /// A message from an app server was skipped (over the size limit, or undecodable); the
    /// connection goes on, and the app server was told with a ServiceEvent.
    ServerMessageSkipped {
        /// The server connection.
        conn: ConnHandle,
        /// Why, in words.
        reason: String,
    },
}

impl Event {
    /// [`Event::Refused`] for a request refused with `status` (0 for a negotiate error)
    /// because of `reason`: its path, hub and reason cut to bounded lengths.
    pub fn refused(req: &super::HttpRequest, status: u16, mut reason: String) -> Self {
        super::truncate(&mut reason, 256);
        let mut at = req.path.clone();
        super::truncate(&mut at, 128);
        let mut hub = req.query_param("hub").map(std::borrow::Cow::into_owned);
        if let Some(h) = &mut hub {
            super::truncate(h, 128);
        }
        Self::Refused {
            at,
            status,
            hub,
            connection_id: None,
            transport: None,
            reason,
        }
    }
}

/// Where a client's messages go: its server connection, under its connection id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Upstream<'a> {
    pub(crate) server: ConnHandle,
    pub(crate) connection_id: &'a str,
}

/// The sink every part writes to: outputs in order, the requests held open for a later
/// response, and the counters.
#[derive(Debug, Default)]
pub(crate) struct Outputs {
    queue: VecDeque<Output>,
    /// Held requests, and whose they are.
    held: BTreeMap<RequestId, ConnHandle>,
    next_request: u64,
    pub(crate) stats: RelayStats,
    pub(crate) refusals: super::RefusalCounts,
    /// The relay's own serverless endpoints, and what was sent to them (set aside for the
    /// relay to answer, never given to the adapter).
    internal: std::collections::BTreeSet<ConnHandle>,
    to_internal: VecDeque<(ConnHandle, Bytes)>,
    /// Handles that stand for other nodes of a cluster, and what was sent to them (client
    /// results' answers, published by the cluster part).
    peers: std::collections::BTreeSet<ConnHandle>,
    to_peers: VecDeque<(ConnHandle, Bytes)>,
}

impl Outputs {
    pub(crate) fn pop(&mut self) -> Option<Output> {
        self.queue.pop_front()
    }

    /// A WebSocket message (or event-stream bytes) for `conn`.
    pub(crate) fn transmit(&mut self, conn: ConnHandle, data: Bytes, binary: bool) {
        if !self.internal.is_empty() && self.internal.contains(&conn) {
            self.to_internal.push_back((conn, data));
            return;
        }
        if !self.peers.is_empty() && self.peers.contains(&conn) {
            self.to_peers.push_back((conn, data));
            return;
        }
        self.queue
            .push_back(Output::Transmit { conn, data, binary });
    }

    /// Sets aside what is sent to `conn` from now on: a serverless endpoint of the relay's.
    pub(crate) fn set_internal(&mut self, conn: ConnHandle) {
        self.internal.insert(conn);
    }

    /// Sets aside what is sent to `conn` from now on: it stands for another node.
    pub(crate) fn set_peer(&mut self, conn: ConnHandle) {
        self.peers.insert(conn);
    }

    /// `conn` no longer stands for a node.
    pub(crate) fn unset_peer(&mut self, conn: ConnHandle) {
        self.peers.remove(&conn);
        self.to_peers.retain(|(c, _)| *c != conn);
    }

    /// The next thing sent to another node.
    pub(crate) fn take_for_peer(&mut self) -> Option<(ConnHandle, Bytes)> {
        self.to_peers.pop_front()
    }

    /// An output from another part (the cluster's).
    pub(crate) fn push(&mut self, output: Output) {
        self.queue.push_back(output);
    }

    /// The next thing sent to a serverless endpoint.
    pub(crate) fn take_internal(&mut self) -> Option<(ConnHandle, Bytes)> {
        self.to_internal.pop_front()
    }

    /// One service message for a server connection.
    pub(crate) fn service(&mut self, server: ConnHandle, msg: &ServiceMessage) {
        let mut out = Vec::new();
        if msg.write(&mut out).is_ok() {
            self.transmit(server, out.into(), true);
        }
    }

    /// A client's whole frames for its app server, as one ConnectionData.
    pub(crate) fn forward(&mut self, up: Upstream<'_>, payload: &[u8]) {
        let mut out = Vec::new();
        if service::write_connection_data(up.connection_id, payload, &mut out).is_ok() {
            self.stats.to_server.add(payload.len());
            self.transmit(up.server, out.into(), true);
        }
    }

    /// Closes a WebSocket or event stream.
    pub(crate) fn close(&mut self, conn: ConnHandle, code: u16, reason: &str) {
        self.queue.push_back(Output::Close {
            conn,
            code,
            reason: truncate_reason(reason),
        });
    }

    pub(crate) fn upstream(&mut self, request: super::upstream::UpstreamRequest) {
        self.stats.upstream_sent += 1;
        self.queue.push_back(Output::Upstream(request));
    }

    pub(crate) fn event(&mut self, event: Event) {
        self.queue.push_back(Output::Event(event));
    }

    /// Holds a request of `conn`'s: its response comes later, through [`respond`](Self::respond).
    pub(crate) fn hold(&mut self, conn: ConnHandle) -> RequestId {
        self.next_request += 1;
        let request = RequestId(self.next_request);
        self.held.insert(request, conn);
        request
    }

    /// Answers a held request.
    pub(crate) fn respond(&mut self, request: RequestId, response: HttpResponse) {
        self.held.remove(&request);
        self.queue.push_back(Output::Respond { request, response });
    }

    /// Forgets a held request its client abandoned, and says whose it was.
    pub(crate) fn abandon(&mut self, request: RequestId) -> Option<ConnHandle> {
        self.held.remove(&request)
    }
}
