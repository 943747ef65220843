//! The HTTP transports: Server-Sent Events and long polling, beside WebSockets.
//!
//! The app server never sees the difference: one logical connection, whatever carries it.
//! What differs is how bytes reach the client:
//! - **WebSockets**: one [`Output::Transmit`] per message.
//! - **Server-Sent Events**: a streaming response ([`RequestOutcome::EventStream`]); each
//!   message becomes one `data:` event. The client sends with `POST`.
//! - **Long polling**: messages wait in a bounded queue; a held `GET`
//!   ([`RequestOutcome::Pending`]) is answered with everything queued, or empty after the poll
//!   timeout. `POST` sends; `DELETE` closes.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::stateful::Outgoing;
use super::{
    ClientState, ConnHandle, HttpRequest, HttpResponse, Output, Relay, RequestId, RequestOutcome,
};
use crate::aspnetcore::negotiate::TransportKind;
use crate::framing::TextFrameDecoder;

/// What carries a client's bytes.
#[derive(Debug)]
pub(super) enum Transport {
    /// Negotiated; nothing connected yet.
    None,
    /// A WebSocket.
    WebSocket,
    /// A Server-Sent Events stream (receive) plus POSTs (send).
    ServerSentEvents,
    /// Held GETs (receive) plus POSTs (send).
    LongPolling(LongPoll),
}

impl Transport {
    pub(super) fn kind(&self) -> Option<TransportKind> {
        match self {
            Self::None => None,
            Self::WebSocket => Some(TransportKind::WebSockets),
            Self::ServerSentEvents => Some(TransportKind::ServerSentEvents),
            Self::LongPolling(_) => Some(TransportKind::LongPolling),
        }
    }
}

/// A long-polling client's queue and held poll.
#[derive(Debug)]
pub(super) struct LongPoll {
    queue: VecDeque<Bytes>,
    queued: usize,
    /// The held poll and when it times out.
    poll: Option<(RequestId, Instant)>,
    /// When the last poll ended (the client has the disconnect timeout to poll again).
    idle_since: Instant,
}

impl LongPoll {
    fn new(now: Instant) -> Self {
        Self {
            queue: VecDeque::new(),
            queued: 0,
            poll: None,
            idle_since: now,
        }
    }

    fn take_all(&mut self) -> Bytes {
        self.queued = 0;
        match self.queue.len() {
            0 => Bytes::new(),
            1 => self.queue.pop_front().unwrap_or_default(),
            _ => {
                let mut out = BytesMut::new();
                for chunk in self.queue.drain(..) {
                    out.extend_from_slice(&chunk);
                }
                out.freeze()
            }
        }
    }

    /// When its timer must next run.
    pub(super) fn deadline(&self, disconnect_timeout: std::time::Duration) -> Instant {
        match self.poll {
            Some((_, until)) => until,
            None => self.idle_since + disconnect_timeout,
        }
    }
}

/// What a closed long-polling connection still owes its client's next poll.
#[derive(Debug)]
pub(super) struct Tombstone {
    /// Bytes queued before the close (a Close message, typically).
    last: Option<Bytes>,
    expires: Instant,
}

/// How many closed long-polling connections are remembered for their last poll.
const MAX_TOMBSTONES: usize = 4096;

fn poll_response(body: Bytes) -> HttpResponse {
    HttpResponse {
        status: 200,
        content_type: "application/octet-stream",
        body,
    }
}

fn no_content() -> HttpResponse {
    HttpResponse {
        status: 204,
        content_type: "text/plain; charset=utf-8",
        body: Bytes::new(),
    }
}

/// One message as a Server-Sent Event: a `data:` line per line of the payload.
pub(super) fn sse_event(data: &[u8]) -> Bytes {
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

impl Relay {
    /// Sends bytes to a client over whatever transport it has.
    pub(super) fn emit(&mut self, now: Instant, conn: ConnHandle, data: Bytes, binary: bool) {
        match self.clients.get(&conn) {
            None => return,
            Some(c) if c.classic.is_some() => return self.classic_emit(now, conn, &data),
            // The common case, decided in this one lookup (a fan-out makes one per recipient):
            // a WebSocket client with no stateful buffer.
            Some(c) if c.stateful.is_none() && matches!(c.transport, Transport::WebSocket) => {
                return self
                    .outputs
                    .push_back(Output::Transmit { conn, data, binary });
            }
            Some(_) => {}
        }
        // A stateful client keeps what it is sent until acked; while its transport is gone,
        // that is all that happens.
        let data = match self.track_outgoing(now, conn, &data) {
            Outgoing::Send => data,
            Outgoing::SendInstead(instead) => instead,
            Outgoing::Hold => return,
            Outgoing::Overflow => {
                // The client is not acking: it loses the right to resume, and the connection.
                let lost = self.awaits_reconnect(conn);
                if let Some(client) = self.clients.get_mut(&conn) {
                    client.stateful = None;
                }
                if lost {
                    return self.remove_client(now, conn, None, true);
                }
                return self.close_client_with_message(
                    now,
                    conn,
                    "The client did not acknowledge messages fast enough (stateful reconnect buffer full).",
                    true,
                );
            }
        };
        let max = self.config.max_long_poll_buffer;
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        match &mut client.transport {
            Transport::None => {}
            Transport::WebSocket => self
                .outputs
                .push_back(Output::Transmit { conn, data, binary }),
            Transport::ServerSentEvents => {
                self.outputs.push_back(Output::Transmit {
                    conn,
                    data: sse_event(&data),
                    binary: false,
                });
            }
            Transport::LongPolling(lp) => {
                lp.queued += data.len();
                lp.queue.push_back(data);
                if let Some((request, _)) = lp.poll.take() {
                    lp.idle_since = now;
                    let body = lp.take_all();
                    self.outputs.push_back(Output::Respond {
                        request,
                        response: poll_response(body),
                    });
                    self.reschedule_client(conn);
                } else if lp.queued > max {
                    // What is queued is lost anyway: drop it, so that the Close (queued next,
                    // and small) is all the next poll gets.
                    lp.queue.clear();
                    lp.queued = 0;
                    self.close_client_with_message(
                        now,
                        conn,
                        "The client did not poll fast enough: its message buffer overflowed.",
                        true,
                    );
                }
            }
        }
    }

    /// Ends a client's transport on close: a WebSocket or event stream is closed; a held poll
    /// is answered with what was queued (or 204), and a later poll finds the same.
    pub(super) fn end_transport(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        transport: Transport,
        token: &str,
        close: Option<(u16, &str)>,
    ) {
        match transport {
            Transport::None => {}
            Transport::WebSocket | Transport::ServerSentEvents => {
                if let Some((code, reason)) = close {
                    self.outputs.push_back(Output::Close {
                        conn,
                        code,
                        reason: super::truncate_reason(reason),
                    });
                }
            }
            Transport::LongPolling(mut lp) => {
                let last = Some(lp.take_all()).filter(|b| !b.is_empty());
                match lp.poll.take() {
                    Some((request, _)) => {
                        let response = last.map_or_else(no_content, poll_response);
                        self.outputs
                            .push_back(Output::Respond { request, response });
                        self.bury(now, token, None);
                    }
                    None => self.bury(now, token, last),
                }
            }
        }
    }

    fn bury(&mut self, now: Instant, token: &str, last: Option<Bytes>) {
        if self.tombstones.len() >= MAX_TOMBSTONES {
            self.tombstones.retain(|_, t| t.expires > now);
            if self.tombstones.len() >= MAX_TOMBSTONES {
                if let Some(oldest) = self
                    .tombstones
                    .iter()
                    .min_by_key(|(_, t)| t.expires)
                    .map(|(k, _)| k.clone())
                {
                    self.tombstones.remove(&oldest);
                }
            }
        }
        let expires = now + self.config.negotiate_timeout;
        self.tombstones
            .insert(token.to_owned(), Tombstone { last, expires });
    }

    /// The long-polling client's timer: an expired poll is answered empty; a client that has
    /// not polled within the disconnect timeout is gone.
    pub(super) fn long_poll_timer(&mut self, now: Instant, conn: ConnHandle) -> bool {
        let disconnect = self.config.negotiate_timeout;
        let Some(client) = self.clients.get_mut(&conn) else {
            return true;
        };
        let Transport::LongPolling(lp) = &mut client.transport else {
            return false;
        };
        match lp.poll {
            Some((request, until)) if now >= until => {
                lp.poll = None;
                lp.idle_since = now;
                self.outputs.push_back(Output::Respond {
                    request,
                    response: poll_response(Bytes::new()),
                });
                false
            }
            None if now >= lp.idle_since + disconnect => {
                self.remove_client(now, conn, None, true);
                true
            }
            _ => false,
        }
    }

    /// `GET`, `POST` and `DELETE` on `/client/` that are not WebSocket upgrades.
    pub(super) fn client_http(
        &mut self,
        now: Instant,
        req: &HttpRequest,
    ) -> Result<RequestOutcome, HttpResponse> {
        let hub = Self::hub_param(req)?;
        let id = req
            .query_param("id")
            .ok_or_else(|| HttpResponse::text(400, "Connection ID required"))?;
        if let Some(tomb) = self.tombstones.get_mut(&id) {
            if req.method == "GET" && tomb.expires > now {
                return Ok(RequestOutcome::Respond(match tomb.last.take() {
                    Some(last) => poll_response(last),
                    None => no_content(),
                }));
            }
        }
        let claims = self.authenticate(now, req, "/client/", Some(&hub))?;
        let conn = *self
            .by_token
            .get(&id)
            .ok_or_else(|| HttpResponse::text(404, "No Connection with that ID"))?;
        let client = self
            .clients
            .get_mut(&conn)
            .ok_or_else(|| HttpResponse::text(404, "No Connection with that ID"))?;
        if client.hub != hub {
            return Err(HttpResponse::text(404, "No Connection with that ID"));
        }
        if client.user_id.as_deref() != claims.user_id() {
            return Err(HttpResponse::text(
                403,
                "The token's user does not own this connection.",
            ));
        }
        if client
            .stateful
            .as_ref()
            .is_some_and(|s| s.lost_at.is_some())
        {
            return Err(HttpResponse::text(
                400,
                "Cannot change transports mid-connection",
            ));
        }
        match req.method.as_str() {
            "POST" => {
                match client.transport {
                    Transport::None => {
                        return Err(HttpResponse::text(
                            400,
                            "No transport is connected for this connection ID.",
                        ))
                    }
                    Transport::WebSocket => {
                        return Err(HttpResponse::text(
                            405,
                            "POST requests are not allowed for WebSocket connections.",
                        ))
                    }
                    Transport::ServerSentEvents | Transport::LongPolling(_) => {}
                }
                if req.body.len() > self.config.max_client_message_size.saturating_mul(4) {
                    self.close_client_with_message(
                        now,
                        conn,
                        "The POST body exceeds the maximum message size.",
                        false,
                    );
                    return Err(HttpResponse::text(
                        413,
                        "The POST body exceeds the maximum message size.",
                    ));
                }
                self.client_data(now, conn, &req.body);
                Ok(RequestOutcome::Respond(HttpResponse::text(200, "")))
            }
            "DELETE" => {
                if !matches!(client.transport, Transport::LongPolling(_)) {
                    return Err(HttpResponse::text(
                        400,
                        "Cannot terminate this connection using the DELETE endpoint.",
                    ));
                }
                self.remove_client(now, conn, Some((1000, "Closed by the client.")), true);
                Ok(RequestOutcome::Respond(HttpResponse::text(202, "")))
            }
            "GET"
                if req
                    .header("accept")
                    .is_some_and(|a| a.contains("text/event-stream")) =>
            {
                if !matches!(client.transport, Transport::None) {
                    return Err(HttpResponse::text(
                        409,
                        "Another transport is already connected for this connection ID.",
                    ));
                }
                self.attach_transport(now, conn, Transport::ServerSentEvents, req);
                // A first comment, so that browsers fire `open` at once.
                self.outputs.push_back(Output::Transmit {
                    conn,
                    data: Bytes::from_static(b":\r\n"),
                    binary: false,
                });
                Ok(RequestOutcome::EventStream(conn))
            }
            "GET" => self.long_poll(now, conn, req),
            _ => Err(HttpResponse::text(
                405,
                "Method not supported on this endpoint.",
            )),
        }
    }

    fn long_poll(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        req: &HttpRequest,
    ) -> Result<RequestOutcome, HttpResponse> {
        let Some(client) = self.clients.get_mut(&conn) else {
            return Err(HttpResponse::text(404, "No Connection with that ID"));
        };
        match &mut client.transport {
            Transport::None => {
                // The first poll starts the connection and returns at once, empty.
                self.attach_transport(now, conn, Transport::LongPolling(LongPoll::new(now)), req);
                Ok(RequestOutcome::Respond(poll_response(Bytes::new())))
            }
            Transport::LongPolling(lp) => {
                if !lp.queue.is_empty() {
                    lp.idle_since = now;
                    return Ok(RequestOutcome::Respond(poll_response(lp.take_all())));
                }
                let request = RequestId(self.next_request);
                self.next_request += 1;
                if let Some((old, _)) = lp
                    .poll
                    .replace((request, now + self.config.long_poll_timeout))
                {
                    // A newer poll supersedes the held one.
                    self.outputs.push_back(Output::Respond {
                        request: old,
                        response: no_content(),
                    });
                }
                self.reschedule_client(conn);
                Ok(RequestOutcome::Pending(request))
            }
            Transport::WebSocket | Transport::ServerSentEvents => Err(HttpResponse::text(
                400,
                "Cannot change transports mid-connection",
            )),
        }
    }

    /// Binds a transport to a negotiated connection; the handshake is next.
    pub(super) fn attach_transport(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        transport: Transport,
        req: &HttpRequest,
    ) {
        let kind = transport.kind();
        let headers = super::forwarded_headers(
            req,
            self.config.max_forwarded_headers,
            &self.config.instance_id,
            kind,
        );
        let max = self.config.max_client_message_size;
        let deadline = now + self.config.handshake_timeout;
        if let Some(client) = self.clients.get_mut(&conn) {
            client.transport = transport;
            client.headers = headers;
            client.last_received = now;
            client.state = ClientState::AwaitingHandshake {
                decoder: TextFrameDecoder::new(max),
                deadline,
            };
        }
        self.reschedule_client(conn);
    }

    /// A held poll whose HTTP request went away (the client aborted it).
    pub fn handle_request_aborted(&mut self, now: Instant, request: RequestId) {
        if self.classic_request_aborted(now, request) {
            return;
        }
        let found = self
            .clients
            .iter_mut()
            .find_map(|(conn, c)| match &mut c.transport {
                Transport::LongPolling(lp) if lp.poll.is_some_and(|(r, _)| r == request) => {
                    lp.poll = None;
                    lp.idle_since = now;
                    Some(*conn)
                }
                _ => None,
            });
        if let Some(conn) = found {
            self.reschedule_client(conn);
        }
    }
}

pub(super) type Tombstones = BTreeMap<String, Tombstone>;
