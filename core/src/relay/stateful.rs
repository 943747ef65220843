//! Stateful reconnect (ASP.NET Core 8+): a client whose WebSocket drops comes back to the same
//! logical connection and loses nothing.
//!
//! The relay terminates this protocol itself, so the app server sees one uninterrupted
//! connection (the handshake it receives says version 1). Both directions number their
//! trackable messages (types 1 to 5) from 1. The relay keeps what it sent until the client
//! acks it (bounded), acks what it received once a second, and, when the client reconnects
//! with the same id within the window, sends `Sequence` and replays; the client's replayed
//! messages that the relay already forwarded are dropped.
//!
//! The official JavaScript client creates its message buffer only after its handshake
//! promise has resolved, a microtask later. Any message that reaches it in the same read as
//! the handshake response is processed but never counted, and from then on the two sides
//! number differently: a resume replays a message the client already has, and the client
//! takes it as new. So after the handshake response the relay holds its trackable messages
//! until the client's buffer must exist: the client sends a frame (the JavaScript client
//! pings at once, right after creating the buffer), or [`FIRST_MESSAGE_GATE`] passes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;

use super::transports::Transport;
use super::{Client, ClientState, ConnHandle, Output, Relay};
use crate::aspnetcore::{HubMessage, HubProtocol};
use crate::msgpack::Reader;
use crate::varint;

/// How often the relay acks what it received.
const ACK_INTERVAL: Duration = Duration::from_secs(1);

/// How long messages after the handshake response wait for the client's first frame, at
/// most (see the module docs).
pub(super) const FIRST_MESSAGE_GATE: Duration = Duration::from_secs(1);

/// One client's stateful-reconnect state.
#[derive(Debug)]
pub(super) struct Stateful {
    /// Sent trackable messages the client has not acked yet: (sequence id, frame).
    unacked: VecDeque<(u64, Bytes)>,
    unacked_bytes: usize,
    /// The id the next trackable message to the client gets.
    next_out: u64,
    /// The highest client message id forwarded to the app server.
    received: u64,
    /// The id the next trackable message from the client has.
    next_in: u64,
    /// When to ack next (`None`: nothing new to ack).
    ack_at: Option<Instant>,
    /// Since when the transport is gone (the client has the window to come back).
    pub(super) lost_at: Option<Instant>,
    /// The first bytes sent start with the (untracked) handshake response.
    handshake_pending: bool,
    /// Until when output after the handshake response waits for the client's first frame
    /// (`None`: it flows).
    gate: Option<Instant>,
    /// Output held behind the gate, in order.
    gated: Vec<Bytes>,
}

/// What to do with bytes for a stateful client.
pub(super) enum Outgoing {
    /// Send them.
    Send,
    /// Send these bytes instead: the handshake response alone, or what the gate held.
    SendInstead(Bytes),
    /// Keep them for the replay only: the transport is gone.
    Hold,
    /// The replay buffer overflowed.
    Overflow,
}

impl Stateful {
    pub(super) fn new() -> Self {
        Self {
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            next_out: 1,
            received: 0,
            next_in: 1,
            ack_at: None,
            lost_at: None,
            handshake_pending: true,
            gate: None,
            gated: Vec::new(),
        }
    }

    /// When its timer must run: the gate, the next ack, or the end of the reconnect window.
    pub(super) fn deadline(&self, window: Duration) -> Option<Instant> {
        match self.lost_at {
            Some(lost) => Some(lost + window),
            None => self.gate.into_iter().chain(self.ack_at).min(),
        }
    }

    /// Records frames going to the client, and says whether to send them.
    fn outgoing(
        &mut self,
        now: Instant,
        protocol: HubProtocol,
        data: &Bytes,
        max: usize,
    ) -> Outgoing {
        let mut data = data.clone();
        let mut handshake = None;
        if self.handshake_pending {
            // The first bytes start with the JSON handshake response, whatever the protocol.
            if let Some(end) = data
                .iter()
                .position(|&b| b == crate::framing::RECORD_SEPARATOR)
            {
                self.handshake_pending = false;
                self.gate = Some(now + FIRST_MESSAGE_GATE);
                handshake = Some(data.slice(..=end));
                data = data.slice(end + 1..);
            }
        }
        let mut closing = false;
        for (frame, body) in frames(protocol, &data) {
            match message_type(protocol, &body) {
                Some(t) if (1..=5).contains(&t) => {
                    self.unacked_bytes += frame.len();
                    self.unacked.push_back((self.next_out, frame));
                    self.next_out += 1;
                }
                Some(7) => closing = true,
                _ => {}
            }
        }
        if self.unacked_bytes > max {
            return Outgoing::Overflow;
        }
        if self.lost_at.is_some() {
            return Outgoing::Hold;
        }
        if self.gate.is_none() {
            return Outgoing::Send;
        }
        if !data.is_empty() {
            self.gated.push(data);
        }
        if !closing {
            return handshake.map_or(Outgoing::Hold, Outgoing::SendInstead);
        }
        // A Close must not wait: everything held goes now, in order.
        let held = self.open_gate();
        match (handshake, held) {
            (Some(h), Some(held)) => Outgoing::SendInstead([h, held].concat().into()),
            (h, held) => h.or(held).map_or(Outgoing::Hold, Outgoing::SendInstead),
        }
    }

    /// Opens the gate: what it held, as one message.
    fn open_gate(&mut self) -> Option<Bytes> {
        self.gate.take()?;
        let held = std::mem::take(&mut self.gated);
        (!held.is_empty()).then(|| held.concat().into())
    }
}

#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    message_type: Option<u8>,
}

/// The type of one hub message (frame body), if it can be read.
fn message_type(protocol: HubProtocol, body: &[u8]) -> Option<u8> {
    match protocol {
        HubProtocol::Json => serde_json::from_slice::<TypeOnly>(body).ok()?.message_type,
        HubProtocol::MessagePack => {
            let mut r = Reader::new(body);
            r.array_len().ok()?;
            r.integer().ok()
        }
    }
}

/// Splits bytes made of whole frames into frames (each with its separator or prefix), with
/// each frame's body.
fn frames(protocol: HubProtocol, data: &Bytes) -> Vec<(Bytes, Bytes)> {
    let mut out = Vec::new();
    match protocol {
        HubProtocol::Json => {
            let mut start = 0;
            for (i, &b) in data.iter().enumerate() {
                if b == crate::framing::RECORD_SEPARATOR {
                    out.push((data.slice(start..=i), data.slice(start..i)));
                    start = i + 1;
                }
            }
        }
        HubProtocol::MessagePack => {
            let mut pos = 0;
            while let Ok(Some((len, prefix))) = varint::decode(&data[pos..]) {
                let end = pos + prefix + len as usize;
                if end > data.len() {
                    break;
                }
                out.push((data.slice(pos..end), data.slice(pos + prefix..end)));
                pos = end;
            }
        }
    }
    out
}

/// Sends what a stateful client's gate held, if it is still shut (a free function, so that it
/// can share the caller's lookup of the client).
fn release_gate(outputs: &mut VecDeque<Output>, conn: ConnHandle, client: &mut Client) {
    let ClientState::Open { protocol, .. } = &client.state else {
        return;
    };
    let binary = *protocol == HubProtocol::MessagePack;
    let Some(data) = client.stateful.as_mut().and_then(Stateful::open_gate) else {
        return;
    };
    if matches!(client.transport, Transport::WebSocket) {
        outputs.push_back(Output::Transmit { conn, data, binary });
    }
}

fn encode(protocol: HubProtocol, message: &HubMessage) -> Bytes {
    let mut out = Vec::new();
    let _ = protocol.write_message(message, &mut out);
    Bytes::from(out)
}

impl Relay {
    /// Records frames going to a stateful client, and says whether to send them.
    pub(super) fn track_outgoing(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        data: &Bytes,
    ) -> Outgoing {
        let max = self.config.stateful_reconnect_buffer;
        let Some(client) = self.clients.get_mut(&conn) else {
            return Outgoing::Send;
        };
        let (Some(state), ClientState::Open { protocol, .. }) =
            (client.stateful.as_mut(), &client.state)
        else {
            return Outgoing::Send;
        };
        let shut = state.gate.is_some();
        let outgoing = state.outgoing(now, *protocol, data, max);
        if let Some(at) = state.gate.filter(|_| !shut) {
            self.schedule_at_least(conn, at);
        }
        outgoing
    }

    /// Sends what the gate held, if it is still shut: the client's buffer exists now.
    fn open_client_gate(&mut self, conn: ConnHandle) {
        if let Some(client) = self.clients.get_mut(&conn) {
            release_gate(&mut self.outputs, conn, client);
        }
    }

    /// Handles one frame from a stateful client. Returns whether to forward it to the app
    /// server (acks and sequence messages are the relay's; replayed duplicates are dropped).
    pub(super) fn track_incoming(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        protocol: HubProtocol,
        body: &[u8],
    ) -> bool {
        let Some(client) = self.clients.get_mut(&conn) else {
            return true;
        };
        // Any frame from the client means its message buffer exists.
        release_gate(&mut self.outputs, conn, client);
        let Some(state) = client.stateful.as_mut() else {
            return true;
        };
        let message_type = message_type(protocol, body);
        match message_type {
            Some(8) => {
                if let Ok(HubMessage::Ack { sequence_id }) = protocol.parse_message(body) {
                    while state
                        .unacked
                        .front()
                        .is_some_and(|(id, _)| *id <= sequence_id)
                    {
                        if let Some((_, frame)) = state.unacked.pop_front() {
                            state.unacked_bytes -= frame.len();
                        }
                    }
                }
                false
            }
            Some(9) => {
                // The client replays from its oldest unacked message, which cannot be past
                // the one after the last the relay forwarded.
                if let Ok(HubMessage::Sequence { sequence_id }) = protocol.parse_message(body) {
                    state.next_in = sequence_id.clamp(1, state.received.saturating_add(1));
                }
                false
            }
            Some(t) if (1..=5).contains(&t) => {
                let id = state.next_in;
                state.next_in = state.next_in.saturating_add(1);
                if id <= state.received {
                    return false;
                }
                state.received = id;
                state.ack_at.get_or_insert(now + ACK_INTERVAL);
                let next = state.ack_at;
                if let Some(at) = next {
                    self.schedule_at_least(conn, at);
                }
                true
            }
            _ => true,
        }
    }

    fn schedule_at_least(&mut self, conn: ConnHandle, at: Instant) {
        if self.clients.get(&conn).is_some_and(|c| c.deadline > at) {
            self.schedule(conn, at);
        }
    }

    /// The stateful part of a client's timer: ack, or give up on a client that did not come
    /// back. Returns whether the client was removed.
    pub(super) fn stateful_timer(&mut self, now: Instant, conn: ConnHandle) -> bool {
        let window = self.config.negotiate_timeout;
        let Some(client) = self.clients.get_mut(&conn) else {
            return true;
        };
        if let Some(lost) = client.stateful.as_ref().and_then(|s| s.lost_at) {
            if now >= lost + window {
                self.remove_client(now, conn, None, true);
                return true;
            }
            return false;
        }
        if client
            .stateful
            .as_ref()
            .and_then(|s| s.gate)
            .is_some_and(|at| now >= at)
        {
            self.open_client_gate(conn);
            self.reschedule_client(conn);
        }
        let Some(client) = self.clients.get_mut(&conn) else {
            return true;
        };
        let ClientState::Open { protocol, .. } = &client.state else {
            return false;
        };
        let protocol = *protocol;
        let Some(state) = client.stateful.as_mut() else {
            return false;
        };
        if state.ack_at.is_some_and(|at| now >= at) {
            state.ack_at = None;
            let ack = encode(
                protocol,
                &HubMessage::Ack {
                    sequence_id: state.received,
                },
            );
            let binary = protocol == HubProtocol::MessagePack;
            self.outputs.push_back(Output::Transmit {
                conn,
                data: ack,
                binary,
            });
        }
        false
    }

    /// The WebSocket of a stateful client dropped: keep the connection for the window.
    /// Returns whether the client is kept.
    pub(super) fn transport_lost(&mut self, now: Instant, conn: ConnHandle) -> bool {
        let Some(client) = self.clients.get_mut(&conn) else {
            return false;
        };
        let Some(state) = client.stateful.as_mut() else {
            return false;
        };
        if !matches!(client.state, ClientState::Open { .. })
            || !matches!(client.transport, Transport::WebSocket)
        {
            return false;
        }
        state.lost_at = Some(now);
        client.transport = Transport::None;
        self.reschedule_client(conn);
        true
    }

    /// Whether `conn` is a stateful client waiting for its client to come back.
    pub(super) fn awaits_reconnect(&self, conn: ConnHandle) -> bool {
        self.clients
            .get(&conn)
            .and_then(|c| c.stateful.as_ref())
            .is_some_and(|s| s.lost_at.is_some())
    }

    /// The client came back on a new WebSocket: Sequence, then everything it has not acked.
    pub(super) fn resume(&mut self, now: Instant, conn: ConnHandle) {
        let max_in = self.config.max_client_message_size;
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        let ClientState::Open {
            protocol, inbound, ..
        } = &mut client.state
        else {
            return;
        };
        let protocol = *protocol;
        // Whatever partial frame the old socket left is void: the client resends it whole.
        *inbound = protocol.frame_decoder(max_in);
        let Some(state) = client.stateful.as_mut() else {
            return;
        };
        client.transport = Transport::WebSocket;
        client.last_received = now;
        state.lost_at = None;
        // The client's buffer exists by now; the replay below holds every trackable message.
        state.gate = None;
        state.gated.clear();
        let first = state.unacked.front().map_or(state.next_out, |(id, _)| *id);
        let binary = protocol == HubProtocol::MessagePack;
        // One message for the replay, however many frames it holds.
        let mut replay = bytes::BytesMut::with_capacity(state.unacked_bytes);
        for (_, frame) in &state.unacked {
            replay.extend_from_slice(frame);
        }
        self.outputs.push_back(Output::Transmit {
            conn,
            data: encode(protocol, &HubMessage::Sequence { sequence_id: first }),
            binary,
        });
        if !replay.is_empty() {
            self.outputs.push_back(Output::Transmit {
                conn,
                data: replay.freeze(),
                binary,
            });
        }
        self.reschedule_client(conn);
    }
}
