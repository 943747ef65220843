//! Classic ASP.NET SignalR 2.x clients (jQuery, .NET classic), at `/aspnetclient`.
//!
//! The relay terminates the classic protocol: negotiate, connect, reconnect, start, send,
//! poll, abort and ping, over webSockets, serverSentEvents and longPolling, with the
//! persistent-response envelope, cursors, keep-alives and the disconnect timeout. The app
//! server sees an ordinary connection speaking the ASP.NET Core JSON hub protocol:
//!
//! | classic client | app server |
//! |---|---|
//! | `{"H":h,"M":m,"A":[..],"I":i,"S":{..}}` | Invocation `m` with id `i`; the state rides in the header [`STATE_HEADER`] (`{}` without `S`) |
//! | hub result `{"I":i,"R":r}` / `{"I":i,"E":e,"H":true,"D":d}` (+ `S`) | Completion (its [`STATE_HEADER`] carries the new state, [`ERROR_DATA_HEADER`] an error's data) |
//! | progress `{"I":"P|i","P":{"I":i,"D":d}}` | StreamItem for invocation `i` |
//! | `{"H":h,"M":m,"A":[..]}` in `M` | Invocation without id (a push) |
//! | a persistent response with `E` | Close |
//!
//! So groups, users and broadcasts reach classic and ASP.NET Core clients alike, each in its
//! own protocol. Every message put in `M` gets a cursor id and stays in a bounded buffer: a
//! long poll acks what it has (`messageId`), and `/reconnect` replays what came after the
//! client's cursor. The relay keeps group membership for the connection's whole life, so it
//! needs no groups token: it never sends `G` and ignores the one it is sent.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use super::transport::sse_event;
use super::{Ctx, Handled, Next, Opening, Then};
use crate::aspnetcore::handshake::{HandshakeRequest, HandshakeResponse};
use crate::aspnetcore::negotiate::TransportKind;
use crate::aspnetcore::{
    Completion, CompletionResult, Headers, HubMessage, HubProtocol, Invocation, RawValue,
};
use crate::classic::{
    ClientMessage, ErrorResponse, HubProgress, HubResult, Limits, NegotiateReply,
    NegotiateResponse, PersistentResponse, RawJson, ReceiveMessage, RequestKind, RequestParams,
    ServerHubInvocation, ServerHubMessage, Transport as ClassicTransport, KEEP_ALIVE,
    PING_RESPONSE, START_RESPONSE,
};
use crate::relay::config::RelayConfig;
use crate::relay::http::{HttpRequest, HttpResponse, RequestId, RequestOutcome};
use crate::relay::output::{Outputs, Upstream};
use crate::relay::reason::{texts, Ending, Rejection, CLIENT_CLOSE_CODE, REPLACED};
use crate::relay::timers::TimerKind;
use crate::relay::ConnHandle;

/// The header that carries a classic client's hub state (`S`, a JSON object as text) on
/// invocations to the app server, and the changed state back on their completions.
pub const STATE_HEADER: &str = "asrs.classic.state";

/// The header of a failed invocation's Completion that carries the error's data for classic
/// clients (JSON text; their `D`, as a `HubException`'s `ErrorData`).
pub const ERROR_DATA_HEADER: &str = "asrs.classic.errordata";

/// The classic client endpoint.
pub(crate) const BASE: &str = "/aspnetclient";

/// `/send` requests of one classic client held for their hub results, at most.
const MAX_HELD_SENDS: usize = 64;

/// One classic client's protocol state.
#[derive(Debug)]
pub(crate) struct Classic {
    /// The hub as the client names it, for `H` in what it is sent.
    hub_name: String,
    /// What carries messages to the client now.
    channel: Channel,
    /// Messages put in `M`, kept for replay: (cursor id, message).
    buffer: VecDeque<(u64, RawJson)>,
    buffer_bytes: usize,
    /// The cursor of the last message.
    last_id: u64,
    /// `/send` requests waiting for their hub result, by invocation id.
    sends: BTreeMap<String, RequestId>,
    /// The app server's handshake response has not come yet.
    handshake_pending: bool,
    /// The app server is the classic ASP.NET SDK's: it speaks the classic protocol itself,
    /// so the client's frames pass through as they are, and what it writes comes as the
    /// SDK's wrapped frames (see [`unwrap_sdk_frames`]).
    passthrough: bool,
    /// When the next keep-alive is due on a WebSocket or event stream (the `KeepAlive` timer
    /// is armed for it, lazily).
    next_keep_alive: Instant,
}

/// What became of a message from a classic client.
enum Incoming {
    /// Forwarded (or ignored, for a keep-alive); no result follows.
    Forwarded,
    /// Forwarded; the hub result for this invocation id follows.
    AwaitsResult(String),
    /// Answered by the relay at once.
    Answer(HubResult),
}

/// What carries messages to the client. Without one, the client has until its `Disconnect`
/// timer to attach one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    None,
    WebSocket,
    EventStream,
    /// A held long poll: it answers with messages after `after`, or empty at its `PollHold`
    /// timer.
    Poll {
        request: RequestId,
        after: u64,
    },
}

/// How the client attaches its receive channel once the connection is mapped (the rest of a
/// `/connect`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attach {
    transport: ClassicTransport,
    message_id: Option<u64>,
}

impl Channel {
    /// The output that carries `body` (one JSON text) on a streaming channel: a WebSocket
    /// message, or a Server-Sent Event. `None` for a long poll, or no channel.
    fn stream(self, conn: ConnHandle, body: Vec<u8>, out: &mut Outputs) {
        let data = match self {
            Self::WebSocket => Bytes::from(body),
            Self::EventStream => sse_event(&body),
            Self::None | Self::Poll { .. } => return,
        };
        out.transmit(conn, data, false);
    }

    fn is_stream(self) -> bool {
        matches!(self, Self::WebSocket | Self::EventStream)
    }
}

fn json(body: impl Into<Bytes>) -> HttpResponse {
    HttpResponse {
        status: 200,
        content_type: "application/json; charset=UTF-8",
        headers: Vec::new(),
        body: body.into(),
    }
}

fn respond(response: impl Into<HttpResponse>) -> RequestOutcome {
    RequestOutcome::Respond(response.into())
}

fn raw(value: &RawValue) -> RawJson {
    std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|s| RawJson::from_string(s.to_owned()).ok())
        .unwrap_or_else(RawJson::null)
}

/// The state header of a hub message, as a JSON object.
fn state_of(headers: &Headers) -> Option<RawJson> {
    headers
        .get(STATE_HEADER)
        .and_then(|s| RawJson::from_string(s.clone()).ok())
        .filter(RawJson::is_object)
}

/// The limits of classic request parameters.
/// Largest classic form body: a maximal `data`, percent-encoded.
pub(crate) fn body_limit(config: &RelayConfig) -> usize {
    limits(config).max_body_len
}

fn limits(config: &RelayConfig) -> Limits {
    let max_data = config.max_client_message_size;
    Limits {
        max_data_len: max_data,
        // Percent-encoding at most triples `data`.
        max_body_len: max_data * 3 + 1024,
        ..Limits::default()
    }
}

/// `messageId`: the last cursor the client has.
fn message_id(params: &RequestParams) -> Option<u64> {
    params.message_id.as_deref().and_then(|m| m.parse().ok())
}

/// Reads a request under `/aspnetclient`: its kind and parameters, or the answer (to a ping,
/// or a refusal).
pub(crate) fn parse(
    req: &HttpRequest,
    config: &RelayConfig,
) -> Result<(RequestKind, RequestParams), RequestOutcome> {
    let segment = req
        .path
        .trim_end_matches('/')
        .strip_prefix(BASE)
        .unwrap_or_default()
        .trim_start_matches('/');
    let kind = RequestKind::from_segment(segment).ok_or(respond(Rejection::ClassicNotFound))?;
    if kind == RequestKind::Ping {
        return Err(respond(json(PING_RESPONSE)));
    }
    let form = (req.method == "POST").then_some(&req.body[..]);
    let params = RequestParams::parse(kind, &req.query, form, &limits(config))
        .map_err(|e| respond(Rejection::ClassicRequest(e)))?;
    if params.callback.is_some() {
        return Err(respond(Rejection::Jsonp));
    }
    if params.transport == Some(ClassicTransport::ForeverFrame) {
        return Err(respond(Rejection::ForeverFrame));
    }
    Ok((kind, params))
}

/// The hub a classic negotiate is for: (as the client names it, in lower case).
pub(crate) fn negotiate_hub(params: &RequestParams) -> Result<(String, String), Rejection> {
    let hubs = params.hub_names();
    let [hub_name] = hubs else {
        return Err(Rejection::HubCount(hubs.len()));
    };
    let hub = hub_name.to_ascii_lowercase();
    if params
        .extra("hub")
        .is_some_and(|h| !h.eq_ignore_ascii_case(&hub))
    {
        return Err(Rejection::HubMismatch);
    }
    Ok((hub_name.clone(), hub))
}

/// A classic negotiate's answer when no app server is connected.
pub(crate) fn no_app_server(hub: &str) -> HttpResponse {
    json(NegotiateReply::Error(ErrorResponse::new(texts::no_app_server_yet(hub))).encode())
}

/// A classic negotiate's answer for a new connection.
pub(crate) fn negotiated(
    token: String,
    connection_id: String,
    params: &RequestParams,
    config: &RelayConfig,
) -> HttpResponse {
    let version = params.protocol_version();
    let mut response = NegotiateResponse::with_defaults(BASE, token, connection_id, version);
    let secs = |d: std::time::Duration| d.as_secs_f64();
    response.keep_alive_timeout = Some(secs(config.classic_keep_alive) * 2.0);
    response.disconnect_timeout = secs(config.classic_disconnect_timeout);
    response.connection_timeout = secs(config.long_poll_timeout);
    json(NegotiateReply::Negotiate(response).encode())
}

/// The answer to a request with a genuine connection token whose connection is gone.
pub(crate) fn unknown_token(kind: RequestKind, websocket: bool) -> RequestOutcome {
    respond(match kind {
        // The long-polling client stops cleanly on a global error.
        RequestKind::Poll if !websocket => {
            json(PersistentResponse::global_error(texts::TOKEN_UNKNOWN).encode())
        }
        RequestKind::Reconnect => Rejection::ConnectionGone.into(),
        // Nothing left to abort.
        RequestKind::Abort => HttpResponse::text(200, ""),
        _ => Rejection::UnknownConnectionToken.into(),
    })
}

impl Classic {
    /// Bytes kept for polls and reconnects.
    pub(crate) fn buffered(&self) -> usize {
        self.buffer_bytes
    }

    pub(crate) fn new(hub_name: String, now: Instant) -> Self {
        Self {
            hub_name,
            channel: Channel::None,
            buffer: VecDeque::new(),
            buffer_bytes: 0,
            last_id: 0,
            sends: BTreeMap::new(),
            handshake_pending: true,
            passthrough: false,
            next_keep_alive: now,
        }
    }

    /// Mapped to a classic ASP.NET SDK connection: no handshake, frames as they are.
    pub(crate) fn pass_through(&mut self) {
        self.passthrough = true;
        self.handshake_pending = false;
    }

    fn cursor(&self) -> String {
        self.last_id.to_string()
    }

    fn envelope_after(&self, after: u64) -> Vec<u8> {
        let messages = self
            .buffer
            .iter()
            .filter(|(id, _)| *id > after)
            .map(|(_, m)| m.clone())
            .collect();
        PersistentResponse::messages(self.cursor(), messages).encode()
    }

    fn has_after(&self, after: u64) -> bool {
        self.buffer.back().is_some_and(|(id, _)| *id > after)
    }

    /// Drops what the client has (a long poll's `messageId` acks everything up to it).
    fn ack(&mut self, upto: u64) {
        while self.buffer.front().is_some_and(|(id, _)| *id <= upto) {
            if let Some((_, m)) = self.buffer.pop_front() {
                self.buffer_bytes -= m.as_str().len();
            }
        }
    }

    /// No receive channel: the client has the disconnect timeout to attach one.
    fn idle(&self, cx: &mut Ctx<'_>) {
        cx.timers.set(
            TimerKind::Disconnect,
            cx.now + cx.config.classic_disconnect_timeout,
        );
    }

    /// A request on this connection, once the relay has checked its token and user. `up` is
    /// where the client's messages go, once it is connected.
    pub(crate) fn request(
        &mut self,
        cx: &mut Ctx<'_>,
        kind: RequestKind,
        params: &RequestParams,
        req: &HttpRequest,
        up: Option<Upstream<'_>>,
    ) -> Handled {
        let outcome = match kind {
            RequestKind::Connect | RequestKind::Reconnect => {
                let handled = self.receive(cx, kind, params, req, up.is_some());
                if let (RequestKind::Reconnect, true, Some(up)) = (kind, self.passthrough, up) {
                    let attached = match &handled.outcome {
                        Some(RequestOutcome::Respond(r)) => r.status < 400,
                        outcome => outcome.is_some(),
                    };
                    if attached {
                        // Attached again: the SDK's signal for the hub's OnReconnected
                        // (ServiceConnection.cs, `ReconnectMessage`).
                        cx.out.forward(up, SDK_RECONNECT);
                    }
                }
                return handled;
            }
            RequestKind::Poll => self.poll(cx, message_id(params)),
            RequestKind::Start => respond(match up {
                Some(_) => json(START_RESPONSE),
                None => Rejection::NotConnected.into(),
            }),
            RequestKind::Send => self.send(cx, params.data.as_deref(), up),
            RequestKind::Abort => {
                return Handled::then(respond(HttpResponse::text(200, "")), Ending::Aborted)
            }
            // Negotiate and ping are answered before a connection is looked up.
            RequestKind::Negotiate | RequestKind::Ping => respond(Rejection::NotFound),
        };
        Handled::stay(Some(outcome))
    }

    /// `/connect` and `/reconnect`: attaches a receive channel (a `/connect` maps the client
    /// to an app server first).
    fn receive(
        &mut self,
        cx: &mut Ctx<'_>,
        kind: RequestKind,
        params: &RequestParams,
        req: &HttpRequest,
        open: bool,
    ) -> Handled {
        let transport = params.transport.unwrap_or(ClassicTransport::LongPolling);
        if transport == ClassicTransport::WebSockets && !req.websocket {
            return Handled::stay(Some(respond(Rejection::NeedsUpgrade)));
        }
        let attach = Attach {
            transport,
            message_id: message_id(params),
        };
        match (kind, open) {
            (RequestKind::Connect, true) => {
                Handled::stay(Some(respond(Rejection::AlreadyConnected)))
            }
            (RequestKind::Reconnect, false) => {
                Handled::stay(Some(respond(Rejection::NeverConnected)))
            }
            (RequestKind::Connect, false) => {
                // The app server reads the hubs from this request (the classic SDK does):
                // they must be the one negotiated.
                let hubs = params.hub_names();
                if !hubs.is_empty()
                    && !matches!(hubs, [h] if h.eq_ignore_ascii_case(&self.hub_name))
                {
                    return Handled::stay(Some(respond(Rejection::HubMismatch)));
                }
                let mut handshake = Vec::new();
                HandshakeRequest {
                    protocol: "json".to_owned(),
                    version: 1,
                }
                .write(&mut handshake);
                let headers = crate::relay::forwarded::headers(req, cx.config, None);
                Handled::next(
                    None,
                    Next::Open(Opening {
                        protocol: HubProtocol::Json,
                        handshake,
                        headers: Some(headers),
                        // The connect request's query, as Azure forwards it: the classic SDK
                        // needs its `connectionToken` and `connectionData`
                        // (ClientConnectionManager.cs).
                        query: Some(crate::relay::forwarded::query(&req.query)),
                        transport: Self::transport_kind(attach),
                        then: Then::Classic(attach),
                    }),
                )
            }
            _ => Handled::stay(Some(self.attach(cx, kind, attach))),
        }
    }

    /// Attaches the receive channel: the first response, then the channel's own timers.
    pub(crate) fn attach(
        &mut self,
        cx: &mut Ctx<'_>,
        kind: RequestKind,
        attach: Attach,
    ) -> RequestOutcome {
        // A reconnect may find the old channel still attached: the new one replaces it.
        self.detach(cx);
        let first = match (kind, attach.message_id) {
            (RequestKind::Reconnect, after) => self.envelope_after(after.unwrap_or(0)),
            _ => PersistentResponse::init(self.cursor()).encode(),
        };
        match attach.transport {
            ClassicTransport::WebSockets | ClassicTransport::ServerSentEvents => {
                let sse = attach.transport == ClassicTransport::ServerSentEvents;
                self.channel = if sse {
                    Channel::EventStream
                } else {
                    Channel::WebSocket
                };
                cx.timers.clear(TimerKind::Disconnect);
                self.next_keep_alive = cx.now + cx.config.classic_keep_alive;
                cx.timers.set(TimerKind::KeepAlive, self.next_keep_alive);
                if sse {
                    cx.out.transmit(
                        cx.conn,
                        Bytes::from_static(b"data: initialized\r\n\r\n"),
                        false,
                    );
                }
                self.channel.stream(cx.conn, first, cx.out);
                if sse {
                    RequestOutcome::EventStream(cx.conn)
                } else {
                    RequestOutcome::AcceptWebSocket(cx.conn)
                }
            }
            _ if kind == RequestKind::Connect => {
                self.idle(cx);
                respond(json(first))
            }
            // A long-polling reconnect is a poll.
            _ => self.poll(cx, attach.message_id),
        }
    }

    /// The transport the client's channel uses (for the open event).
    pub(crate) fn transport_kind(attach: Attach) -> TransportKind {
        match attach.transport {
            ClassicTransport::WebSockets => TransportKind::WebSockets,
            ClassicTransport::ServerSentEvents => TransportKind::ServerSentEvents,
            ClassicTransport::LongPolling | ClassicTransport::ForeverFrame => {
                TransportKind::LongPolling
            }
        }
    }

    /// Ends whatever receive channel the client has (a new one replaces it).
    fn detach(&mut self, cx: &mut Ctx<'_>) {
        let cursor = self.cursor();
        match std::mem::replace(&mut self.channel, Channel::None) {
            Channel::None => {}
            Channel::WebSocket | Channel::EventStream => {
                cx.timers.clear(TimerKind::KeepAlive);
                cx.out.close(cx.conn, CLIENT_CLOSE_CODE, REPLACED);
            }
            Channel::Poll { request, .. } => {
                cx.timers.clear(TimerKind::PollHold);
                let body = PersistentResponse::messages(cursor, Vec::new()).encode();
                cx.out.respond(request, json(body));
            }
        }
    }

    fn poll(&mut self, cx: &mut Ctx<'_>, message_id: Option<u64>) -> RequestOutcome {
        self.detach(cx);
        let after = message_id
            .unwrap_or_else(|| self.buffer.front().map_or(self.last_id, |(id, _)| id - 1));
        self.ack(after);
        if self.has_after(after) {
            self.idle(cx);
            return respond(json(self.envelope_after(after)));
        }
        let request = cx.out.hold(cx.conn);
        self.channel = Channel::Poll { request, after };
        cx.timers.clear(TimerKind::Disconnect);
        cx.timers
            .set(TimerKind::PollHold, cx.now + cx.config.long_poll_timeout);
        RequestOutcome::Pending(request)
    }

    fn send(
        &mut self,
        cx: &mut Ctx<'_>,
        data: Option<&str>,
        up: Option<Upstream<'_>>,
    ) -> RequestOutcome {
        let Some(data) = data else {
            return respond(Rejection::SendNeedsData);
        };
        match self.incoming(cx.out, data.as_bytes(), up) {
            Err(e) => respond(Rejection::BadSend(e)),
            Ok(Incoming::Forwarded) => respond(HttpResponse::text(200, "")),
            Ok(Incoming::Answer(result)) => respond(json(result.encode())),
            Ok(Incoming::AwaitsResult(id)) => {
                if self.sends.len() >= MAX_HELD_SENDS || self.sends.contains_key(&id) {
                    let failure = HubResult::failure(id, texts::TOO_MANY_HELD_SENDS);
                    return respond(json(failure.encode()));
                }
                let request = cx.out.hold(cx.conn);
                self.sends.insert(id, request);
                RequestOutcome::Pending(request)
            }
        }
    }

    /// A WebSocket message from the client.
    pub(crate) fn data(
        &mut self,
        cx: &mut Ctx<'_>,
        data: &[u8],
        up: Option<Upstream<'_>>,
    ) -> Result<(), Ending> {
        let max = cx.config.max_client_message_size;
        if data.len() > max {
            return Err(Ending::ClassicBadInput(texts::message_too_large(max)));
        }
        match self.incoming(cx.out, data, up) {
            Ok(Incoming::Answer(result)) => {
                cx.out
                    .transmit(cx.conn, Bytes::from(result.encode()), false);
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(Ending::ClassicBadInput(e)),
        }
    }

    /// Forwards one client message to the app server.
    fn incoming(
        &self,
        out: &mut Outputs,
        data: &[u8],
        up: Option<Upstream<'_>>,
    ) -> Result<Incoming, String> {
        let Some(up) = up else {
            return Err(texts::NOT_CONNECTED.to_owned());
        };
        let invocation = match ClientMessage::decode(data) {
            Ok(ClientMessage::Invocation(inv)) => inv,
            Ok(_) => return Ok(Incoming::Forwarded),
            Err(e) => return Err(texts::not_an_invocation(e)),
        };
        if !invocation.hub.eq_ignore_ascii_case(&self.hub_name) {
            let error = texts::not_this_hub(&invocation.hub);
            return match invocation.id {
                Some(id) => Ok(Incoming::Answer(HubResult::failure(id, error))),
                None => Err(error),
            };
        }
        if self.passthrough {
            // The classic SDK reads the client's frame itself (HubRequestParser).
            out.forward(up, data);
            return Ok(invocation
                .id
                .map_or(Incoming::Forwarded, Incoming::AwaitsResult));
        }
        // Always there, `{}` when the client sent none: the app server also learns from it
        // that the caller is a classic client (it may send an error's data, `D`).
        let mut headers = Headers::new();
        let state = invocation.state.as_ref().map_or("{}", |s| s.as_str());
        headers.insert(STATE_HEADER.to_owned(), state.to_owned());
        let message = HubMessage::Invocation(Invocation {
            headers,
            invocation_id: invocation.id.clone(),
            target: invocation.method,
            arguments: invocation
                .args
                .iter()
                .map(|a| RawValue::new(Bytes::copy_from_slice(a.as_str().as_bytes())))
                .collect(),
            stream_ids: Vec::new(),
        });
        let mut payload = Vec::new();
        crate::aspnetcore::json::write_message(&message, &mut payload);
        out.forward(up, &payload);
        Ok(invocation
            .id
            .map_or(Incoming::Forwarded, Incoming::AwaitsResult))
    }

    /// Bytes from the app server (whole ASP.NET Core JSON frames) for the client.
    pub(crate) fn emit(
        &mut self,
        cx: &mut Ctx<'_>,
        data: &Bytes,
        up: Upstream<'_>,
    ) -> Result<(), Ending> {
        if let Some(inners) = self.passthrough.then(|| unwrap_sdk_frames(data)).flatten() {
            for inner in inners {
                match ReceiveMessage::decode(&inner) {
                    Ok(ReceiveMessage::Persistent(response)) => {
                        for message in response.messages {
                            self.push(cx, message);
                        }
                    }
                    Ok(ReceiveMessage::HubResult(result)) => {
                        let id = result.id.clone();
                        self.result(cx, &id, result);
                    }
                    Ok(ReceiveMessage::Progress(progress)) => {
                        self.push(cx, ServerHubMessage::Progress(progress).to_raw());
                    }
                    // Keep-alives are the relay's to send; what does not parse is dropped.
                    _ => {}
                }
            }
            return Ok(());
        }
        for frame in data.split(|&b| b == crate::framing::RECORD_SEPARATOR) {
            if frame.is_empty() {
                continue;
            }
            if self.handshake_pending {
                self.handshake_pending = false;
                if let Ok(response) = HandshakeResponse::parse(frame) {
                    if let Some(error) = response.error {
                        return Err(Ending::ClassicServerRefused(error));
                    }
                }
                continue;
            }
            match HubProtocol::Json.parse_message(frame) {
                Ok(HubMessage::Invocation(inv)) => {
                    if let Some(id) = inv.invocation_id.as_deref() {
                        // Classic clients cannot answer the server.
                        refuse_client_result(cx.out, up, id);
                    } else {
                        let push = push_of(&self.hub_name, inv);
                        self.push(cx, push);
                    }
                }
                Ok(HubMessage::StreamItem(item)) => {
                    // Progress goes on the receive channel. A `/send` answered with the result
                    // could overtake it, and clients drop progress that comes after the result,
                    // so that `/send` is answered (empty) now and the result follows the
                    // progress on the channel.
                    if let Some(request) = self.sends.remove(&item.invocation_id) {
                        cx.out.respond(request, json(Bytes::new()));
                    }
                    let progress = HubProgress {
                        id: item.invocation_id,
                        data: raw(&item.item),
                        state: None,
                    };
                    self.push(cx, ServerHubMessage::Progress(progress).to_raw());
                }
                Ok(HubMessage::Completion(c)) => {
                    let mut result = match c.result {
                        CompletionResult::Void => HubResult::success(c.invocation_id.clone(), None),
                        CompletionResult::Value(v) => {
                            HubResult::success(c.invocation_id.clone(), Some(raw(&v)))
                        }
                        CompletionResult::Error(e) => {
                            // An app server shows a caller an error's text only when it chose
                            // to (a HubException, or detailed errors): to a classic client,
                            // each is a HubException (`H`), with its data (`D`) if any.
                            let mut failure = HubResult::failure(c.invocation_id.clone(), e);
                            failure.is_hub_exception = true;
                            failure.error_data = c
                                .headers
                                .get(ERROR_DATA_HEADER)
                                .and_then(|d| RawJson::from_string(d.clone()).ok());
                            failure
                        }
                    };
                    result.state = state_of(&c.headers);
                    self.result(cx, &c.invocation_id, result);
                }
                Ok(HubMessage::Close(close)) => {
                    let error = close
                        .error
                        .unwrap_or_else(|| texts::SERVER_CLOSED_CONNECTION.to_owned());
                    return Err(Ending::ClassicServerClosed(error));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The hub as the client names it.
    pub(crate) fn hub_name(&self) -> &str {
        &self.hub_name
    }

    /// What this client puts in `M` for a multicast payload (whole ASP.NET Core JSON frames)
    /// made only of invocations without id, as it names its hub; `None` for any other
    /// payload, which [`emit`](Self::emit) takes frame by frame.
    pub(crate) fn pushes(&self, data: &Bytes) -> Option<Vec<RawJson>> {
        if let Some(inners) = unwrap_sdk_frames(data) {
            // The classic SDK's wrapped frames, of persistent responses only.
            let mut pushes = Vec::new();
            for inner in inners {
                match ReceiveMessage::decode(&inner) {
                    Ok(ReceiveMessage::Persistent(r)) => pushes.extend(r.messages),
                    _ => return None,
                }
            }
            return Some(pushes);
        }
        data.split(|&b| b == crate::framing::RECORD_SEPARATOR)
            .filter(|frame| !frame.is_empty())
            .map(|frame| match HubProtocol::Json.parse_message(frame) {
                Ok(HubMessage::Invocation(inv)) if inv.invocation_id.is_none() => {
                    Some(push_of(&self.hub_name, inv))
                }
                _ => None,
            })
            .collect()
    }

    /// Puts messages from [`pushes`](Self::pushes) in `M`.
    pub(crate) fn push_all(&mut self, cx: &mut Ctx<'_>, pushes: &[RawJson]) {
        for push in pushes {
            self.push(cx, push.clone());
        }
    }

    /// Puts a message in `M`: it gets the next cursor, stays for replay, and goes out on the
    /// receive channel.
    fn push(&mut self, cx: &mut Ctx<'_>, message: RawJson) {
        let max_messages = cx.config.classic_buffer_messages;
        let max_bytes = cx.config.max_long_poll_buffer;
        self.last_id += 1;
        self.buffer_bytes += message.as_str().len();
        self.buffer.push_back((self.last_id, message.clone()));
        // Bounded like a message bus: the oldest go first.
        while self.buffer.len() > max_messages || self.buffer_bytes > max_bytes {
            if let Some((_, m)) = self.buffer.pop_front() {
                self.buffer_bytes -= m.as_str().len();
            }
        }
        match self.channel {
            Channel::None => {}
            Channel::WebSocket | Channel::EventStream => {
                let envelope = PersistentResponse::messages(self.cursor(), vec![message]).encode();
                self.next_keep_alive = cx.now + cx.config.classic_keep_alive;
                self.channel.stream(cx.conn, envelope, cx.out);
            }
            Channel::Poll { request, after } => {
                let body = self.envelope_after(after);
                self.channel = Channel::None;
                cx.timers.clear(TimerKind::PollHold);
                self.idle(cx);
                cx.out.respond(request, json(body));
            }
        }
    }

    /// A hub result: the answer to its `/send`, a bare WebSocket frame, or else a message.
    fn result(&mut self, cx: &mut Ctx<'_>, id: &str, result: HubResult) {
        let bytes = result.encode();
        if let Some(request) = self.sends.remove(id) {
            cx.out.respond(request, json(bytes));
        } else if self.channel == Channel::WebSocket {
            cx.out.transmit(cx.conn, Bytes::from(bytes), false);
        } else {
            self.push(cx, ServerHubMessage::Result(result).to_raw());
        }
    }

    /// The receive channel (WebSocket or event stream) went away: the client has the
    /// disconnect timeout to reconnect.
    pub(crate) fn channel_lost(&mut self, cx: &mut Ctx<'_>) {
        if self.channel.is_stream() {
            self.channel = Channel::None;
            cx.timers.clear(TimerKind::KeepAlive);
            self.idle(cx);
        }
    }

    /// A held request was abandoned by its client.
    pub(crate) fn request_aborted(&mut self, cx: &mut Ctx<'_>, request: RequestId) {
        if matches!(self.channel, Channel::Poll { request: r, .. } if r == request) {
            self.channel = Channel::None;
            cx.timers.clear(TimerKind::PollHold);
            self.idle(cx);
            return;
        }
        self.sends.retain(|_, r| *r != request);
    }

    /// A timer of the classic client fired.
    pub(crate) fn on_timer(&mut self, cx: &mut Ctx<'_>, kind: TimerKind) -> Result<(), Ending> {
        match kind {
            // Gone for the disconnect timeout: the app server sees the disconnect.
            TimerKind::Disconnect => return Err(Ending::ClassicDisconnected),
            TimerKind::PollHold => {
                if let Channel::Poll { request, .. } = self.channel {
                    let body = PersistentResponse::messages(self.cursor(), Vec::new()).encode();
                    self.channel = Channel::None;
                    self.idle(cx);
                    cx.out.respond(request, json(body));
                }
            }
            TimerKind::KeepAlive if self.channel.is_stream() => {
                if cx.now >= self.next_keep_alive {
                    self.next_keep_alive = cx.now + cx.config.classic_keep_alive;
                    self.channel.stream(cx.conn, KEEP_ALIVE.to_vec(), cx.out);
                }
                cx.timers.set(TimerKind::KeepAlive, self.next_keep_alive);
            }
            _ => {}
        }
        Ok(())
    }

    /// The connection ends: the client's global error (`E`) where the ending has one,
    /// answers to what it still holds, and the end of its channel.
    pub(crate) fn end(&mut self, cx: &mut Ctx<'_>, ending: &Ending, handshake_done: bool) {
        let channel = std::mem::replace(&mut self.channel, Channel::None);
        let mut poll = match channel {
            Channel::Poll { request, .. } => Some(request),
            _ => None,
        };
        if matches!(ending, Ending::Draining) {
            // The relay is going away: the client reconnects (`T`), and its reconnect lands
            // elsewhere, or here again once the relay is back.
            let body = PersistentResponse {
                cursor: Some(self.cursor()),
                should_reconnect: true,
                ..PersistentResponse::default()
            }
            .encode();
            match poll.take() {
                Some(request) => cx.out.respond(request, json(body)),
                None => channel.stream(cx.conn, body, cx.out),
            }
        } else if let Some(error) = ending.classic_error(handshake_done) {
            let mut envelope = PersistentResponse::global_error(error);
            envelope.cursor = Some(self.cursor());
            let body = envelope.encode();
            match poll.take() {
                Some(request) => cx.out.respond(request, json(body)),
                None => channel.stream(cx.conn, body, cx.out),
            }
        }
        for (id, request) in std::mem::take(&mut self.sends) {
            let failure = HubResult::failure(id, texts::CLOSED_BEFORE_RESULT);
            cx.out.respond(request, json(failure.encode()));
        }
        if let Some(request) = poll {
            // The client's own stop ends its poll as a classic server does, without an error
            // (the .NET client raises its Error event on one); any other end says why.
            let body = if matches!(ending, Ending::Aborted) {
                PersistentResponse {
                    cursor: Some(self.cursor()),
                    ..PersistentResponse::default()
                }
                .encode()
            } else {
                PersistentResponse::global_error(texts::CONNECTION_CLOSED).encode()
            };
            cx.out.respond(request, json(body));
        }
        if channel.is_stream() {
            if let Some(reason) = ending.close_text() {
                cx.out.close(cx.conn, CLIENT_CLOSE_CODE, &reason);
            }
        }
    }
}

/// What the classic SDK sends for the hub's OnReconnected when a client reconnects
/// (Azure/azure-signalr, `src/Microsoft.Azure.SignalR.AspNet/ServerConnections/ServiceConnection.cs`).
const SDK_RECONNECT: &[u8] = b"asrs:reconnect";

/// The classic JSON texts in what the classic SDK writes for clients: each is a whole
/// service-protocol ConnectionData message with an empty connection id, length-prefixed, whose
/// payload is the JSON (`SignalRMessageParser.cs` and `AzureTransport.cs` in
/// Azure/azure-signalr `src/Microsoft.Azure.SignalR.AspNet/HubHost` and `Transports`). `None`
/// unless `data` is made of such messages and nothing else (ASP.NET Core JSON, say, which may
/// begin with the same byte as a length).
pub(crate) fn unwrap_sdk_frames(data: &[u8]) -> Option<Vec<Bytes>> {
    let mut frames = crate::framing::BinaryFrameDecoder::new(data.len());
    frames.push(data);
    let mut out = Vec::new();
    loop {
        match frames.next_frame() {
            Ok(Some(frame)) => match crate::service::ServiceMessage::parse(&frame) {
                Ok(crate::service::ServiceMessage::ConnectionData(d)) => out.push(d.payload),
                _ => return None,
            },
            Ok(None) if frames.buffered() == 0 && !out.is_empty() => return Some(out),
            _ => return None,
        }
    }
}

/// An invocation without id, as a classic client's push (`{"H":…,"M":…,"A":[…]}`).
fn push_of(hub_name: &str, inv: Invocation) -> RawJson {
    let push = ServerHubInvocation {
        hub: hub_name.to_owned(),
        method: inv.target,
        args: inv.arguments.iter().map(raw).collect(),
        state: state_of(&inv.headers),
    };
    ServerHubMessage::Invocation(push).to_raw()
}

/// Tells the app server that a classic client cannot return a result.
fn refuse_client_result(out: &mut Outputs, up: Upstream<'_>, invocation_id: &str) {
    let completion = HubMessage::Completion(Completion {
        headers: Headers::new(),
        invocation_id: invocation_id.to_owned(),
        result: CompletionResult::Error(texts::NO_CLIENT_RESULTS.to_owned()),
    });
    let mut payload = Vec::new();
    crate::aspnetcore::json::write_message(&completion, &mut payload);
    out.forward(up, &payload);
}
