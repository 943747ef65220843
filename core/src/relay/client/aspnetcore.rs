//! ASP.NET Core SignalR clients: the handshake, whole frames to the app server, keep-alives,
//! the client timeout, the transports, and stateful reconnect.
//!
//! A client goes `Negotiated` → `Handshake` (its transport is attached; the relay reads the
//! handshake to learn its hub protocol) → `Open` (mapped to a server connection: from then on
//! bytes flow both ways, and the app server answers the handshake itself).

use bytes::{Bytes, BytesMut};

use super::stateful::{Outgoing, Stateful};
use super::transport::Transport;
use super::{Activity, Ctx, Handled, Link, Next, Opening, Owner, Then, Tombstones};
use crate::aspnetcore::handshake::{
    errors as handshake_errors, HandshakeRequest, HandshakeResponse,
};
use crate::aspnetcore::negotiate::TransportKind;
use crate::aspnetcore::{Close, FrameDecoder, HubMessage, HubProtocol, TransferFormat};
use crate::framing::{write_binary_frame, TextFrameDecoder, RECORD_SEPARATOR};
use crate::relay::admission::TokenTimes;
use crate::relay::http::{HttpRequest, HttpResponse, RequestOutcome};
use crate::relay::output::Upstream;
use crate::relay::reason::{Ending, Rejection, CLIENT_CLOSE_CODE, REPLACED};
use crate::relay::timers::TimerKind;

/// One ASP.NET Core client's protocol state.
#[derive(Debug)]
pub(crate) struct AspNetCore {
    pub(crate) transport: Transport,
    phase: Phase,
    /// Negotiate granted stateful reconnect.
    stateful_allowed: bool,
    /// Stateful reconnect is on (granted, and the handshake asked for version 2).
    stateful: Option<Box<Stateful>>,
}

#[derive(Debug)]
enum Phase {
    /// Negotiated; waiting for the transport. With the times of the token it negotiated with:
    /// an upgrade bearing that very token needs only them checked (see
    /// [`AspNetCore::negotiated_with`]).
    Negotiated(Option<TokenTimes>),
    /// Transport attached; waiting for the handshake (until the `Handshake` timer).
    Handshake(TextFrameDecoder),
    /// Its handshake was read; it waits for the backplane to have its user's channel before
    /// it is mapped (on a cluster). What it sends meanwhile follows the handshake.
    Held(Box<Opening>),
    /// Mapped to a server connection; hub messages are reassembled into whole frames.
    Open(FrameDecoder),
}

/// What an HTTP request on an existing connection does.
pub(crate) enum HttpStep {
    /// It was handled.
    Done(Handled),
    /// It starts this transport: attach it (the handshake is next).
    Attach(Transport),
}

/// What a WebSocket request on an existing connection does.
pub(crate) enum Upgrade {
    /// Attach the WebSocket as the connection's transport: the handshake is next.
    Attach,
    /// A stateful client came back: it resumed.
    Resumed,
}

impl AspNetCore {
    /// Bytes held for the client: for its next poll, and for a reconnect.
    pub(crate) fn buffered(&self) -> usize {
        let polls = match &self.transport {
            Transport::LongPolling(lp) => lp.buffered(),
            _ => 0,
        };
        let held = match &self.phase {
            Phase::Held(opening) => match &opening.then {
                Then::Frames { rest, .. } => rest.len(),
                Then::Classic(_) => 0,
            },
            _ => 0,
        };
        polls + held + self.stateful.as_ref().map_or(0, |s| s.buffered())
    }

    /// Keeps `opening` until [`take_held`](Self::take_held): the client is mapped later.
    pub(crate) fn hold(&mut self, opening: Opening) {
        self.phase = Phase::Held(Box::new(opening));
    }

    /// The opening kept by [`hold`](Self::hold), with what the client sent since, to map it
    /// now.
    pub(crate) fn take_held(&mut self) -> Option<Opening> {
        if !matches!(self.phase, Phase::Held(_)) {
            return None;
        }
        match std::mem::replace(&mut self.phase, Phase::Negotiated(None)) {
            Phase::Held(opening) => Some(*opening),
            _ => None,
        }
    }

    /// While it waits for its transport: the times of the token it negotiated with.
    pub(crate) fn negotiated_with(&self) -> Option<TokenTimes> {
        match self.phase {
            Phase::Negotiated(times) => times,
            _ => None,
        }
    }

    pub(crate) fn new(stateful_allowed: bool, negotiated_with: Option<TokenTimes>) -> Self {
        Self {
            transport: Transport::None,
            phase: Phase::Negotiated(negotiated_with),
            stateful_allowed,
            stateful: None,
        }
    }

    /// Whether stateful reconnect is on.
    pub(crate) fn is_stateful(&self) -> bool {
        self.stateful.is_some()
    }

    /// Whether no client message is half received: its app server may change here.
    pub(crate) fn between_messages(&self) -> bool {
        match &self.phase {
            Phase::Open(inbound) => inbound.buffered() == 0,
            _ => false,
        }
    }

    /// Whether a stateful client's transport is gone (it may come back).
    pub(crate) fn awaits_reconnect(&self) -> bool {
        self.stateful.as_ref().is_some_and(|s| s.lost())
    }

    /// Binds a transport to the negotiated connection; the handshake is next.
    pub(crate) fn attach(&mut self, cx: &mut Ctx<'_>, transport: Transport) {
        self.transport = transport;
        self.phase = Phase::Handshake(TextFrameDecoder::new(cx.config.max_client_message_size));
        cx.timers.clear(TimerKind::Negotiate);
        let timeout = cx.policy.handshake_timeout(cx.config.handshake_timeout);
        cx.timers.set(TimerKind::Handshake, cx.now + timeout);
    }

    /// Bytes from the client: a WebSocket message, or a `POST` body.
    pub(crate) fn receive(
        &mut self,
        cx: &mut Ctx<'_>,
        data: &[u8],
        link: Option<&Link>,
        connection_id: &str,
    ) -> Result<Next, Ending> {
        match (&mut self.phase, link) {
            (Phase::Negotiated(_), _) => Ok(Next::Stay),
            (Phase::Handshake(decoder), _) => {
                decoder.push(data);
                match decoder.next_frame() {
                    Ok(Some(frame)) => {
                        let rest = decoder.take_buffered();
                        self.handshake(&frame, rest)
                    }
                    Ok(None) => Ok(Next::Stay),
                    Err(_) => Err(Ending::HandshakeRefused(handshake_errors::CANCELED.into())),
                }
            }
            (Phase::Held(opening), _) => {
                let Then::Frames { rest, .. } = &mut opening.then else {
                    return Ok(Next::Stay);
                };
                // A client waits for its handshake's answer before it sends: this is bounded
                // by one message.
                let max = cx.config.max_client_message_size;
                if rest.len().saturating_add(data.len()) > max {
                    return Err(Ending::BadMessage { max });
                }
                rest.extend_from_slice(data);
                Ok(Next::Stay)
            }
            (Phase::Open(_), Some(link)) => {
                self.frames(cx, data, link, connection_id)?;
                Ok(Next::Stay)
            }
            (Phase::Open(_), None) => Ok(Next::Stay),
        }
    }

    /// The handshake request: a protocol the relay relays, over a transport that can carry
    /// it. The relay then maps the client; the app server answers the handshake.
    fn handshake(&mut self, frame: &[u8], rest: BytesMut) -> Result<Next, Ending> {
        let refuse = |error: String| Err(Ending::HandshakeRefused(error.into()));
        let Ok(request) = HandshakeRequest::parse(frame) else {
            return Err(Ending::HandshakeRefused(
                handshake_errors::UNEXPECTED.into(),
            ));
        };
        let Some(protocol) = HubProtocol::from_name(&request.protocol) else {
            return refuse(handshake_errors::unsupported_protocol(&request.protocol));
        };
        if request.version > protocol.version() {
            return refuse(handshake_errors::unsupported_version(
                &request.protocol,
                request.version,
            ));
        }
        if matches!(self.transport, Transport::ServerSentEvents)
            && protocol.transfer_format() == TransferFormat::Binary
        {
            return refuse(handshake_errors::wrong_transfer_format(
                &request.protocol,
                "Binary",
            ));
        }
        let stateful = request.version >= 2
            && self.stateful_allowed
            && matches!(self.transport, Transport::WebSocket);
        // The relay handles stateful reconnect itself: the app server is told version 1.
        let mut handshake = Vec::new();
        HandshakeRequest {
            protocol: request.protocol,
            version: request.version.min(1),
        }
        .write(&mut handshake);
        Ok(Next::Open(Opening {
            protocol,
            handshake,
            headers: None,
            query: None,
            transport: self.transport.kind().unwrap_or(TransportKind::WebSockets),
            then: Then::Frames { rest, stateful },
        }))
    }

    /// The relay mapped the client to a server connection: it is open from here on.
    pub(crate) fn open(&mut self, cx: &mut Ctx<'_>, protocol: HubProtocol, activity: &Activity) {
        self.phase = Phase::Open(protocol.frame_decoder(cx.config.max_client_message_size));
        cx.timers.clear(TimerKind::Handshake);
        // Long polling keeps itself alive: each poll proves the client is there.
        if !matches!(self.transport, Transport::LongPolling(_)) {
            cx.timers
                .set(TimerKind::KeepAlive, activity.keep_alive_due(cx.config));
        }
    }

    /// The rest of the handshake's input, once the client is open.
    pub(crate) fn opened(
        &mut self,
        cx: &mut Ctx<'_>,
        rest: &[u8],
        stateful: bool,
        link: &Link,
        connection_id: &str,
    ) -> Result<Next, Ending> {
        self.stateful = stateful.then(|| Box::new(Stateful::new()));
        if !rest.is_empty() {
            self.frames(cx, rest, link, connection_id)?;
        }
        Ok(Next::Stay)
    }

    /// Forwards whole client frames to the client's server connection.
    fn frames(
        &mut self,
        cx: &mut Ctx<'_>,
        data: &[u8],
        link: &Link,
        connection_id: &str,
    ) -> Result<(), Ending> {
        let Phase::Open(inbound) = &mut self.phase else {
            return Ok(());
        };
        let up = Upstream {
            server: link.server,
            connection_id,
        };
        // The common case: whole frames, nothing held, no sequence numbers to read. They go
        // on as they came.
        if self.stateful.is_none() && inbound.holds_whole_frames(data) {
            if !data.is_empty() {
                cx.out.forward(up, data);
            }
            return Ok(());
        }
        let protocol = link.protocol;
        let binary = protocol.is_binary();
        inbound.push(data);
        let mut payload = Vec::new();
        let mut failed = false;
        loop {
            let frame = match inbound.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            };
            if let Some(state) = self.stateful.as_mut() {
                // Any frame from the client means its message buffer exists.
                if let Some(held) = state.open_gate(&mut cx.timers) {
                    if matches!(self.transport, Transport::WebSocket) {
                        cx.out.transmit(cx.conn, held, binary);
                    }
                }
                if !state.incoming(cx.now, protocol, &frame, &mut cx.timers) {
                    continue;
                }
            }
            match protocol {
                HubProtocol::Json => {
                    payload.extend_from_slice(&frame);
                    payload.push(RECORD_SEPARATOR);
                }
                HubProtocol::MessagePack | HubProtocol::BlazorPack => {
                    let _ = write_binary_frame(&frame, &mut payload);
                }
            }
        }
        if !payload.is_empty() {
            cx.out.forward(up, &payload);
        }
        if failed {
            return Err(Ending::BadMessage {
                max: cx.config.max_client_message_size,
            });
        }
        Ok(())
    }

    /// Sends bytes to the client over whatever transport it has. `protocol` is the client's
    /// once it is open.
    pub(crate) fn send(
        &mut self,
        cx: &mut Ctx<'_>,
        data: Bytes,
        binary: bool,
        protocol: Option<HubProtocol>,
    ) -> Result<(), Ending> {
        // A stateful client keeps what it is sent until acked; while its transport is gone,
        // that is all that happens.
        let data = match (self.stateful.as_mut(), protocol) {
            (Some(state), Some(protocol)) => {
                let max = cx.config.stateful_reconnect_buffer;
                match state.outgoing(cx.now, protocol, &data, max, &mut cx.timers) {
                    Outgoing::Send => data,
                    Outgoing::SendInstead(instead) => instead,
                    Outgoing::Hold => return Ok(()),
                    Outgoing::Overflow => {
                        // The client is not acking: it loses the right to resume, and the
                        // connection.
                        self.stateful = None;
                        return Err(Ending::AckBufferFull);
                    }
                }
            }
            _ => data,
        };
        self.transport.send(cx, data, binary)
    }

    /// A timer of this client fired.
    pub(crate) fn on_timer(
        &mut self,
        cx: &mut Ctx<'_>,
        kind: TimerKind,
        link: Option<&Link>,
        activity: &mut Activity,
    ) -> Result<(), Ending> {
        let protocol = link.map(|l| l.protocol);
        let binary = protocol.is_some_and(HubProtocol::is_binary);
        match kind {
            TimerKind::Handshake => return Err(Ending::HandshakeTimedOut),
            TimerKind::KeepAlive => return self.keep_alive(cx, link, activity),
            TimerKind::PollHold => self.transport.poll_expired(cx),
            TimerKind::Disconnect => return Err(Ending::StoppedPolling),
            TimerKind::Reconnect => return Err(Ending::ReconnectExpired),
            TimerKind::Ack => {
                if let (Some(state), Some(protocol)) = (self.stateful.as_mut(), protocol) {
                    cx.out.transmit(cx.conn, state.ack(protocol), binary);
                }
            }
            TimerKind::Gate => {
                let held = self
                    .stateful
                    .as_mut()
                    .and_then(|s| s.open_gate(&mut cx.timers));
                if let Some(held) = held {
                    if matches!(self.transport, Transport::WebSocket) {
                        cx.out.transmit(cx.conn, held, binary);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The client timeout, and a keep-alive Ping when nothing was sent for a while (when the
    /// client can take one: after its handshake response, and not in the middle of a
    /// reassembled frame).
    fn keep_alive(
        &mut self,
        cx: &mut Ctx<'_>,
        link: Option<&Link>,
        activity: &mut Activity,
    ) -> Result<(), Ending> {
        if cx.now >= activity.received + cx.config.client_timeout {
            return Err(Ending::Silent);
        }
        if cx.now >= activity.sent + cx.config.client_keep_alive {
            // Counts as sent even when it has to wait, so that pings do not pile up.
            activity.sent = cx.now;
            if let Some(link) = link.filter(|l| l.ready()) {
                let (frame, binary): (&'static [u8], bool) = match link.protocol {
                    HubProtocol::Json => (b"{\"type\":6}\x1e", false),
                    HubProtocol::MessagePack | HubProtocol::BlazorPack => (b"\x02\x91\x06", true),
                };
                self.send(cx, Bytes::from_static(frame), binary, Some(link.protocol))?;
            }
        }
        cx.timers
            .set(TimerKind::KeepAlive, activity.keep_alive_due(cx.config));
        Ok(())
    }

    /// The WebSocket of a stateful client dropped: the connection is kept for its reconnect
    /// window. Returns whether it is kept.
    pub(crate) fn transport_lost(&mut self, cx: &mut Ctx<'_>) -> bool {
        let Some(state) = self.stateful.as_mut() else {
            return false;
        };
        if !matches!(self.phase, Phase::Open(_)) || !matches!(self.transport, Transport::WebSocket)
        {
            return false;
        }
        state.lose(cx.now, cx.config.negotiate_timeout, &mut cx.timers);
        cx.timers.clear(TimerKind::KeepAlive);
        self.transport = Transport::None;
        true
    }

    /// A WebSocket request (`/client/?id=`) on this connection. `owner` says whether the
    /// token's user is the connection's.
    pub(crate) fn upgrade(
        &mut self,
        cx: &mut Ctx<'_>,
        owner: bool,
        link: Option<&Link>,
        activity: &mut Activity,
    ) -> Result<Upgrade, Rejection> {
        let replaces = self.stateful.is_some()
            && matches!(self.transport, Transport::WebSocket)
            && matches!(self.phase, Phase::Open(_));
        if replaces || self.awaits_reconnect() {
            if !owner {
                return Err(Rejection::NotOwner);
            }
            if replaces {
                // The client came back before the relay saw its old socket go: the client has
                // given up on that socket, so the new one replaces it.
                cx.out.close(cx.conn, CLIENT_CLOSE_CODE, REPLACED);
                self.transport_lost(cx);
            }
            // A stateful reconnect: no negotiate, no handshake.
            if let Some(link) = link {
                self.resume(cx, link, activity);
            }
            return Ok(Upgrade::Resumed);
        }
        if let Some(kind) = self.transport.kind() {
            return Err(if kind == TransportKind::WebSockets {
                Rejection::TransportTaken
            } else {
                Rejection::TransportChange
            });
        }
        if !owner {
            return Err(Rejection::NotOwner);
        }
        allowed(cx, TransportKind::WebSockets)?;
        Ok(Upgrade::Attach)
    }

    /// The client came back on a new WebSocket: Sequence, then everything it has not acked.
    fn resume(&mut self, cx: &mut Ctx<'_>, link: &Link, activity: &mut Activity) {
        let Phase::Open(inbound) = &mut self.phase else {
            return;
        };
        // Whatever partial frame the old socket left is void: the client resends it whole.
        *inbound = link
            .protocol
            .frame_decoder(cx.config.max_client_message_size);
        let Some(state) = self.stateful.as_mut() else {
            return;
        };
        self.transport = Transport::WebSocket;
        activity.received = cx.now;
        let binary = link.protocol.is_binary();
        let (sequence, replay) = state.resume(link.protocol, &mut cx.timers);
        cx.out.transmit(cx.conn, sequence, binary);
        if let Some(replay) = replay {
            cx.out.transmit(cx.conn, replay, binary);
        }
        cx.timers
            .set(TimerKind::KeepAlive, activity.keep_alive_due(cx.config));
    }

    /// `GET`, `POST` or `DELETE` on `/client/?id=` (not an upgrade), from the connection's
    /// owner.
    pub(crate) fn http(
        &mut self,
        cx: &mut Ctx<'_>,
        req: &HttpRequest,
        link: Option<&Link>,
        connection_id: &str,
    ) -> Result<HttpStep, Rejection> {
        if self.awaits_reconnect() {
            return Err(Rejection::TransportChange);
        }
        let handled = match req.method.as_str() {
            "POST" => {
                match self.transport {
                    Transport::None => return Err(Rejection::NoTransport),
                    Transport::WebSocket => return Err(Rejection::PostOnWebSocket),
                    Transport::ServerSentEvents | Transport::LongPolling(_) => {}
                }
                if req.body.len() > cx.config.max_client_payload() {
                    let refusal = RequestOutcome::Respond(Rejection::PostTooLarge.into());
                    return Ok(HttpStep::Done(Handled::then(refusal, Ending::PostTooLarge)));
                }
                let next = self
                    .receive(cx, &req.body, link, connection_id)
                    .unwrap_or_else(Next::End);
                let ok = RequestOutcome::Respond(HttpResponse::text(200, ""));
                Handled::next(Some(ok), next)
            }
            "DELETE" => {
                if !matches!(self.transport, Transport::LongPolling(_)) {
                    return Err(Rejection::DeleteNotAllowed);
                }
                let accepted = RequestOutcome::Respond(HttpResponse::text(202, ""));
                Handled::then(accepted, Ending::Deleted)
            }
            "GET"
                if req
                    .header("accept")
                    .is_some_and(|a| a.contains("text/event-stream")) =>
            {
                if !matches!(self.transport, Transport::None) {
                    return Err(Rejection::TransportTaken);
                }
                allowed(cx, TransportKind::ServerSentEvents)?;
                return Ok(HttpStep::Attach(Transport::ServerSentEvents));
            }
            "GET" => match self.transport {
                Transport::None => {
                    allowed(cx, TransportKind::LongPolling)?;
                    let lp = Transport::long_polling(cx);
                    return Ok(HttpStep::Attach(lp));
                }
                Transport::LongPolling(_) => {
                    let outcome = self.transport.poll(cx);
                    Handled::stay(Some(outcome))
                }
                Transport::WebSocket | Transport::ServerSentEvents => {
                    return Err(Rejection::TransportChange)
                }
            },
            _ => return Err(Rejection::MethodNotAllowed),
        };
        Ok(HttpStep::Done(handled))
    }

    /// The connection ends: the Close message (or the handshake error) the ending calls for,
    /// then the end of the transport. Returns the ending that took effect: one met while
    /// saying goodbye (a buffer that overflowed with the Close message) overrides.
    pub(crate) fn end(
        &mut self,
        cx: &mut Ctx<'_>,
        mut ending: Ending,
        link: Option<&Link>,
        (token, owner): (&str, Owner<'_>),
        tombstones: &mut Tombstones,
    ) -> Ending {
        match link {
            Some(link) if link.handshake_done() => {
                let binary = link.protocol.is_binary();
                let frame = |ending: &Ending| {
                    let (error, allow_reconnect) = ending.close_message()?;
                    let close = HubMessage::Close(Close {
                        error: Some(error.into_owned()),
                        allow_reconnect,
                    });
                    let mut frame = Vec::new();
                    link.protocol.write_message(&close, &mut frame).ok()?;
                    Some(Bytes::from(frame))
                };
                if let Some(close) = frame(&ending) {
                    if let Err(overflow) = self.send(cx, close, binary, Some(link.protocol)) {
                        if let Some(close) = frame(&overflow) {
                            let _ = self.send(cx, close, binary, Some(link.protocol));
                        }
                        ending = overflow;
                    }
                }
            }
            Some(_) => {}
            None => {
                if let Some(error) = ending.handshake_error() {
                    let mut frame = Vec::new();
                    HandshakeResponse::error(error).write(&mut frame);
                    let _ = self.send(cx, frame.into(), false, None);
                }
            }
        }
        let transport = std::mem::replace(&mut self.transport, Transport::None);
        let close = ending.close_text();
        transport.end(cx, (token, owner), close.as_deref(), tombstones);
        ending
    }
}

/// Whether the client's token allows `transport` (`asrs.s.htt`).
fn allowed(cx: &Ctx<'_>, transport: TransportKind) -> Result<(), Rejection> {
    if cx.policy.allows(transport) {
        Ok(())
    } else {
        Err(Rejection::TransportNotAllowed(transport))
    }
}
