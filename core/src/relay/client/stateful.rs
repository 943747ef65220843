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

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use crate::aspnetcore::{HubMessage, HubProtocol};
use crate::msgpack::Reader;
use crate::relay::timers::{ClientTimersMut, TimerKind};
use crate::varint;

/// How often the relay acks what it received.
const ACK_INTERVAL: Duration = Duration::from_secs(1);

/// How long messages after the handshake response wait for the client's first frame, at
/// most (see the module docs).
pub(crate) const FIRST_MESSAGE_GATE: Duration = Duration::from_secs(1);

/// One client's stateful-reconnect state.
#[derive(Debug)]
pub(crate) struct Stateful {
    /// Sent trackable messages the client has not acked yet: (sequence id, frame).
    unacked: VecDeque<(u64, Bytes)>,
    unacked_bytes: usize,
    /// The id the next trackable message to the client gets.
    next_out: u64,
    /// The highest client message id forwarded to the app server.
    received: u64,
    /// The id the next trackable message from the client has.
    next_in: u64,
    /// When to ack next (`None`: nothing new to ack). Its timer is armed while the client is
    /// connected.
    ack_at: Option<Instant>,
    /// The transport is gone: the client has its reconnect window to come back.
    lost: bool,
    /// The first bytes sent start with the (untracked) handshake response.
    handshake_pending: bool,
    /// Output after the handshake response waits for the client's first frame (until the
    /// `Gate` timer).
    gate_shut: bool,
    /// Output held behind the gate, in order.
    gated: Vec<Bytes>,
}

/// What to do with bytes for a stateful client.
pub(crate) enum Outgoing {
    /// Send them.
    Send,
    /// Send these bytes instead: the handshake response alone, or what the gate held.
    SendInstead(Bytes),
    /// Keep them for the replay only: the transport is gone, or the gate is shut.
    Hold,
    /// The replay buffer overflowed.
    Overflow,
}

impl Stateful {
    /// Bytes kept for a reconnect.
    pub(crate) fn buffered(&self) -> usize {
        self.unacked_bytes
    }

    pub(crate) fn new() -> Self {
        Self {
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            next_out: 1,
            received: 0,
            next_in: 1,
            ack_at: None,
            lost: false,
            handshake_pending: true,
            gate_shut: false,
            gated: Vec::new(),
        }
    }

    /// Whether the transport is gone and the client may still come back.
    pub(crate) fn lost(&self) -> bool {
        self.lost
    }

    /// Records frames going to the client, and says whether to send them.
    pub(crate) fn outgoing(
        &mut self,
        now: Instant,
        protocol: HubProtocol,
        data: &Bytes,
        max: usize,
        timers: &mut ClientTimersMut<'_>,
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
                self.gate_shut = true;
                timers.set_at_most(TimerKind::Gate, now + FIRST_MESSAGE_GATE);
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
        if self.lost {
            return Outgoing::Hold;
        }
        if !self.gate_shut {
            return Outgoing::Send;
        }
        if !data.is_empty() {
            self.gated.push(data);
        }
        if !closing {
            return handshake.map_or(Outgoing::Hold, Outgoing::SendInstead);
        }
        // A Close must not wait: everything held goes now, in order.
        let held = self.open_gate(timers);
        match (handshake, held) {
            (Some(h), Some(held)) => Outgoing::SendInstead([h, held].concat().into()),
            (h, held) => h.or(held).map_or(Outgoing::Hold, Outgoing::SendInstead),
        }
    }

    /// Opens the gate, if it is shut: what it held, as one message.
    pub(crate) fn open_gate(&mut self, timers: &mut ClientTimersMut<'_>) -> Option<Bytes> {
        if !std::mem::take(&mut self.gate_shut) {
            return None;
        }
        timers.clear(TimerKind::Gate);
        let held = std::mem::take(&mut self.gated);
        (!held.is_empty()).then(|| held.concat().into())
    }

    /// Handles one frame from the client. Returns whether to forward it to the app server
    /// (acks and sequence messages are the relay's; replayed duplicates are dropped).
    pub(crate) fn incoming(
        &mut self,
        now: Instant,
        protocol: HubProtocol,
        body: &[u8],
        timers: &mut ClientTimersMut<'_>,
    ) -> bool {
        match message_type(protocol, body) {
            Some(8) => {
                if let Ok(HubMessage::Ack { sequence_id }) = protocol.parse_message(body) {
                    while self
                        .unacked
                        .front()
                        .is_some_and(|(id, _)| *id <= sequence_id)
                    {
                        if let Some((_, frame)) = self.unacked.pop_front() {
                            self.unacked_bytes -= frame.len();
                        }
                    }
                }
                false
            }
            Some(9) => {
                // The client replays from its oldest unacked message, which cannot be past
                // the one after the last the relay forwarded.
                if let Ok(HubMessage::Sequence { sequence_id }) = protocol.parse_message(body) {
                    self.next_in = sequence_id.clamp(1, self.received.saturating_add(1));
                }
                false
            }
            Some(t) if (1..=5).contains(&t) => {
                let id = self.next_in;
                self.next_in = self.next_in.saturating_add(1);
                if id <= self.received {
                    return false;
                }
                self.received = id;
                let at = *self.ack_at.get_or_insert(now + ACK_INTERVAL);
                timers.set_at_most(TimerKind::Ack, at);
                true
            }
            _ => true,
        }
    }

    /// The ack is due: what to send.
    pub(crate) fn ack(&mut self, protocol: HubProtocol) -> Bytes {
        self.ack_at = None;
        encode(
            protocol,
            &HubMessage::Ack {
                sequence_id: self.received,
            },
        )
    }

    /// The transport went away: nothing is sent until the client comes back, within
    /// `window`.
    pub(crate) fn lose(
        &mut self,
        now: Instant,
        window: Duration,
        timers: &mut ClientTimersMut<'_>,
    ) {
        self.lost = true;
        timers.clear(TimerKind::Ack);
        timers.clear(TimerKind::Gate);
        timers.set(TimerKind::Reconnect, now + window);
    }

    /// The client came back: `Sequence`, then everything it has not acked, as one message.
    pub(crate) fn resume(
        &mut self,
        protocol: HubProtocol,
        timers: &mut ClientTimersMut<'_>,
    ) -> (Bytes, Option<Bytes>) {
        self.lost = false;
        timers.clear(TimerKind::Reconnect);
        if let Some(at) = self.ack_at {
            timers.set(TimerKind::Ack, at);
        }
        // The client's buffer exists by now; the replay below holds every trackable message.
        self.gate_shut = false;
        self.gated.clear();
        let first = self.unacked.front().map_or(self.next_out, |(id, _)| *id);
        let mut replay = BytesMut::with_capacity(self.unacked_bytes);
        for (_, frame) in &self.unacked {
            replay.extend_from_slice(frame);
        }
        let sequence = encode(protocol, &HubMessage::Sequence { sequence_id: first });
        (sequence, (!replay.is_empty()).then(|| replay.freeze()))
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
        HubProtocol::MessagePack | HubProtocol::BlazorPack => {
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
        HubProtocol::MessagePack | HubProtocol::BlazorPack => {
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

pub(crate) fn encode(protocol: HubProtocol, message: &HubMessage) -> Bytes {
    let mut out = Vec::new();
    let _ = protocol.write_message(message, &mut out);
    Bytes::from(out)
}
