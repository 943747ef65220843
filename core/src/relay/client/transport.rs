//! What carries an ASP.NET Core client's bytes: a WebSocket, Server-Sent Events, or long
//! polling.
//!
//! The app server never sees the difference: one logical connection, whatever carries it.
//! What differs is how bytes reach the client:
//! - **WebSockets**: one [`Output::Transmit`](crate::relay::Output::Transmit) per message.
//! - **Server-Sent Events**: a streaming response; each message becomes one `data:` event.
//!   The client sends with `POST`.
//! - **Long polling**: messages wait in a bounded queue; a held `GET` is answered with
//!   everything queued, or empty after the poll timeout. `POST` sends; `DELETE` closes.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{Ctx, Owner, Request};
use crate::aspnetcore::negotiate::TransportKind;
use crate::relay::directory::HubId;
use crate::relay::http::{HttpResponse, RequestId, RequestOutcome};
use crate::relay::reason::Rejection;
use crate::relay::reason::{Ending, CLIENT_CLOSE_CODE};
use crate::relay::timers::TimerKind;

/// What carries a client's bytes.
#[derive(Debug)]
pub(crate) enum Transport {
    /// Negotiated; nothing connected yet (or a stateful client's socket is gone).
    None,
    /// A WebSocket.
    WebSocket,
    /// A Server-Sent Events stream (receive) plus POSTs (send).
    ServerSentEvents,
    /// Held GETs (receive) plus POSTs (send).
    /// Boxed: the other transports hold nothing, and every client holds a `Transport`.
    LongPolling(Box<LongPoll>),
}

/// A long-polling client's queue and held poll.
#[derive(Debug, Default)]
pub(crate) struct LongPoll {
    queue: VecDeque<Bytes>,
    queued: usize,
    /// The held poll, if any (its timeout is the client's `PollHold` timer; without one, the
    /// client has until its `Disconnect` timer to poll again).
    poll: Option<RequestId>,
}

impl LongPoll {
    /// Bytes waiting for the next poll.
    pub(crate) fn buffered(&self) -> usize {
        self.queued
    }

    fn take_all(&mut self) -> Bytes {
        let queued = std::mem::take(&mut self.queued);
        // The queue's room goes with what it held: a client that waits for its next message
        // holds none.
        let queue = std::mem::take(&mut self.queue);
        match queue.len() {
            0 => Bytes::new(),
            1 => queue.into_iter().next().unwrap_or_default(),
            _ => {
                let mut out = BytesMut::with_capacity(queued);
                for chunk in queue {
                    out.extend_from_slice(&chunk);
                }
                out.freeze()
            }
        }
    }
}

pub(crate) fn poll_response(body: Bytes) -> HttpResponse {
    HttpResponse {
        status: 200,
        content_type: "application/octet-stream",
        headers: Vec::new(),
        body,
    }
}

fn no_content() -> HttpResponse {
    HttpResponse {
        status: 204,
        content_type: "text/plain; charset=utf-8",
        headers: Vec::new(),
        body: Bytes::new(),
    }
}

/// One message as a Server-Sent Event: a `data:` line per line of the payload.
pub(crate) fn sse_event(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 16);
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

/// The first bytes of an event stream: a comment, so that browsers fire `open` at once.
pub(crate) const SSE_PREAMBLE: &[u8] = b":\r\n";

impl Transport {
    pub(crate) fn kind(&self) -> Option<TransportKind> {
        match self {
            Self::None => None,
            Self::WebSocket => Some(TransportKind::WebSockets),
            Self::ServerSentEvents => Some(TransportKind::ServerSentEvents),
            Self::LongPolling(_) => Some(TransportKind::LongPolling),
        }
    }

    /// A long-polling transport, just started by the client's first poll: the client has
    /// until the disconnect timeout to poll again.
    pub(crate) fn long_polling(cx: &mut Ctx<'_>) -> Self {
        cx.timers
            .set(TimerKind::Disconnect, cx.now + poll_interval(cx));
        Self::LongPolling(Box::default())
    }

    /// Sends bytes to the client.
    ///
    /// # Errors
    /// [`Ending::PollBufferFull`] when a long-polling client lets more than its buffer pile
    /// up; what was queued is dropped, so that the Close message queued next is all its next
    /// poll gets.
    pub(crate) fn send(
        &mut self,
        cx: &mut Ctx<'_>,
        data: Bytes,
        binary: bool,
    ) -> Result<(), Ending> {
        match self {
            Self::None => Ok(()),
            Self::WebSocket => {
                cx.out.transmit(cx.conn, data, binary);
                Ok(())
            }
            Self::ServerSentEvents => {
                cx.out.transmit(cx.conn, sse_event(&data), false);
                Ok(())
            }
            Self::LongPolling(lp) => {
                lp.queued += data.len();
                lp.queue.push_back(data);
                if let Some(request) = lp.poll.take() {
                    cx.out.respond(request, poll_response(lp.take_all()));
                    poll_ended(cx);
                } else if lp.queued > cx.config.max_long_poll_buffer {
                    lp.queue.clear();
                    lp.queued = 0;
                    return Err(Ending::PollBufferFull);
                }
                Ok(())
            }
        }
    }

    /// A `GET` poll: answered at once with what is queued, or held (a newer poll supersedes
    /// the held one).
    pub(crate) fn poll(&mut self, cx: &mut Ctx<'_>) -> RequestOutcome {
        let Self::LongPolling(lp) = self else {
            return RequestOutcome::Respond(HttpResponse::from(
                crate::relay::Rejection::TransportChange,
            ));
        };
        if !lp.queue.is_empty() {
            cx.timers
                .set(TimerKind::Disconnect, cx.now + poll_interval(cx));
            return RequestOutcome::Respond(poll_response(lp.take_all()));
        }
        let request = cx.out.hold(cx.conn);
        if let Some(old) = lp.poll.replace(request) {
            cx.out.respond(old, no_content());
        }
        cx.timers.clear(TimerKind::Disconnect);
        cx.timers
            .set(TimerKind::PollHold, cx.now + cx.config.long_poll_timeout);
        RequestOutcome::Pending(request)
    }

    /// The held poll timed out: answered empty.
    pub(crate) fn poll_expired(&mut self, cx: &mut Ctx<'_>) {
        if let Self::LongPolling(lp) = self {
            if let Some(request) = lp.poll.take() {
                cx.out.respond(request, poll_response(Bytes::new()));
                poll_ended(cx);
            }
        }
    }

    /// The client abandoned its held poll.
    pub(crate) fn poll_aborted(&mut self, cx: &mut Ctx<'_>, request: RequestId) {
        if let Self::LongPolling(lp) = self {
            if lp.poll == Some(request) {
                lp.poll = None;
                poll_ended(cx);
            }
        }
    }

    /// Ends the transport as the connection ends: a WebSocket or event stream is closed
    /// (when `close` gives a reason); a held poll is answered with what was queued (or 204),
    /// and a later poll finds the same.
    pub(crate) fn end(
        self,
        cx: &mut Ctx<'_>,
        (token, owner): (&str, Owner<'_>),
        close: Option<&str>,
        tombstones: &mut Tombstones,
    ) {
        match self {
            Self::None => {}
            Self::WebSocket | Self::ServerSentEvents => {
                if let Some(reason) = close {
                    cx.out.close(cx.conn, CLIENT_CLOSE_CODE, reason);
                }
            }
            Self::LongPolling(mut lp) => {
                let last = Some(lp.take_all()).filter(|b| !b.is_empty());
                let ttl = cx.config.negotiate_timeout;
                match lp.poll.take() {
                    Some(request) => {
                        let response = last.map_or_else(no_content, poll_response);
                        cx.out.respond(request, response);
                        tombstones.bury(cx.now, ttl, (token, owner), None);
                    }
                    None => tombstones.bury(cx.now, ttl, (token, owner), last),
                }
            }
        }
    }
}

/// A poll ended: the client has the disconnect timeout to poll again.
fn poll_ended(cx: &mut Ctx<'_>) {
    cx.timers.clear(TimerKind::PollHold);
    cx.timers
        .set(TimerKind::Disconnect, cx.now + poll_interval(cx));
}

/// How long a long-polling client may go between polls: its token's `asrs.s.ttl`, or the
/// negotiate timeout.
fn poll_interval(cx: &Ctx<'_>) -> std::time::Duration {
    cx.policy.poll_interval(cx.config.negotiate_timeout)
}

/// What a closed long-polling connection still owes its client's next poll.
#[derive(Debug)]
struct Tombstone {
    /// Bytes queued before the close (a Close message, typically).
    last: Option<Bytes>,
    expires: Instant,
    /// Who may poll it: its owner's, as the connection had them.
    hub: HubId,
    user: Option<Box<str>>,
    bearer: Option<[u8; 32]>,
    secret: bool,
}

/// How many closed long-polling connections are remembered for their last poll.
const MAX_TOMBSTONES: usize = 4096;

/// Closed long-polling connections, by token, remembered for their client's last poll.
#[derive(Debug, Default)]
pub(crate) struct Tombstones(BTreeMap<String, Tombstone>);

impl Tombstones {
    fn bury(
        &mut self,
        now: Instant,
        ttl: Duration,
        (token, owner): (&str, Owner<'_>),
        last: Option<Bytes>,
    ) {
        if self.0.len() >= MAX_TOMBSTONES {
            self.0.retain(|_, t| t.expires > now);
            if self.0.len() >= MAX_TOMBSTONES {
                if let Some(oldest) = self
                    .0
                    .iter()
                    .min_by_key(|(_, t)| t.expires)
                    .map(|(k, _)| k.clone())
                {
                    self.0.remove(&oldest);
                }
            }
        }
        let expires = now + ttl;
        let tomb = Tombstone {
            last,
            expires,
            hub: owner.hub,
            user: owner.user.map(Box::from),
            bearer: owner.bearer,
            secret: owner.secret,
        };
        self.0.insert(token.to_owned(), tomb);
    }

    /// The answer to a poll on a closed connection: what it still owed, once, then 204; to
    /// a request its owner could not make, as to one on the open connection, 403.
    pub(crate) fn poll(
        &mut self,
        now: Instant,
        token: &str,
        request: &Request<'_>,
    ) -> Option<Result<HttpResponse, Rejection>> {
        let tomb = self.0.get_mut(token).filter(|t| t.expires > now)?;
        let owner = Owner {
            hub: tomb.hub,
            user: tomb.user.as_deref(),
            bearer: tomb.bearer,
            secret: tomb.secret,
        };
        if !request.acts_for(owner) {
            return Some(Err(Rejection::NotOwner));
        }
        Some(Ok(match tomb.last.take() {
            Some(last) => poll_response(last),
            None => no_content(),
        }))
    }
}
