//! Classic ASP.NET SignalR 2.x clients (jQuery, .NET classic), at `/aspnetclient`.
//!
//! The relay terminates the classic protocol: negotiate, connect, reconnect, start, send,
//! poll, abort and ping, over webSockets, serverSentEvents and longPolling, with the
//! persistent-response envelope, cursors, keep-alives and the disconnect timeout. The app
//! server sees an ordinary connection speaking the ASP.NET Core JSON hub protocol:
//!
//! | classic client | app server |
//! |---|---|
//! | `{"H":h,"M":m,"A":[..],"I":i,"S":{..}}` | Invocation `m` with id `i`; the state rides in the header [`STATE_HEADER`] |
//! | hub result `{"I":i,"R":r}` / `{"I":i,"E":e}` (+ `S`) | Completion (its [`STATE_HEADER`] carries the new state) |
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

use super::transports::{sse_event, Transport};
use super::{
    Client, ClientState, ConnHandle, HttpRequest, HttpResponse, Output, Relay, RequestOutcome,
};
use super::{RequestId, MAX_HELD_SENDS};
use crate::aspnetcore::{
    Completion, CompletionResult, Headers, HubMessage, HubProtocol, Invocation, RawValue,
};
use crate::auth::Claims;
use crate::classic::{
    ClientMessage, ErrorResponse, HubProgress, HubResult, Limits, NegotiateReply,
    NegotiateResponse, PersistentResponse, RawJson, RequestError, RequestKind, RequestParams,
    ServerHubInvocation, ServerHubMessage, Transport as ClassicTransport, PING_RESPONSE,
    START_RESPONSE,
};

/// The header that carries a classic client's hub state (`S`, a JSON object as text) on
/// invocations to the app server, and the changed state back on their completions.
pub const STATE_HEADER: &str = "asrs.classic.state";

/// The classic client endpoint.
pub(super) const BASE: &str = "/aspnetclient";

/// One classic client's protocol state.
#[derive(Debug)]
pub(super) struct Classic {
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
    /// Since when no receive channel is attached (the client has the disconnect timeout).
    idle_since: Option<Instant>,
    /// When the next keep-alive is due on a WebSocket or event stream.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Channel {
    None,
    WebSocket,
    EventStream,
    /// A held long poll: it answers with messages after `after`, or empty at `until`.
    Poll {
        request: RequestId,
        after: u64,
        until: Instant,
    },
}

impl Channel {
    /// The output that carries `body` (one JSON text) on a streaming channel: a WebSocket
    /// message, or a Server-Sent Event. `None` for a long poll, or no channel.
    fn stream_output(self, conn: ConnHandle, body: Vec<u8>) -> Option<Output> {
        let data = match self {
            Self::WebSocket => Bytes::from(body),
            Self::EventStream => sse_event(&body),
            Self::None | Self::Poll { .. } => return None,
        };
        Some(Output::Transmit {
            conn,
            data,
            binary: false,
        })
    }
}

impl Classic {
    pub(super) fn new(hub_name: String, now: Instant) -> Self {
        Self {
            hub_name,
            channel: Channel::None,
            buffer: VecDeque::new(),
            buffer_bytes: 0,
            last_id: 0,
            sends: BTreeMap::new(),
            handshake_pending: true,
            idle_since: Some(now),
            next_keep_alive: now,
        }
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

    /// When its timer must run.
    pub(super) fn deadline(&self, relay: &super::RelayConfig) -> Option<Instant> {
        let idle = self
            .idle_since
            .map(|t| t + relay.classic_disconnect_timeout);
        let channel = match self.channel {
            Channel::None => None,
            Channel::WebSocket | Channel::EventStream => Some(self.next_keep_alive),
            Channel::Poll { until, .. } => Some(until),
        };
        idle.into_iter().chain(channel).min()
    }
}

/// The classic state of `conn`, if it is a classic client (a free function, so that the
/// relay's other fields stay borrowable beside it).
fn classic_of(
    clients: &mut BTreeMap<ConnHandle, Client>,
    conn: ConnHandle,
) -> Option<&mut Classic> {
    clients
        .get_mut(&conn)
        .and_then(|c| c.classic.as_deref_mut())
}

fn json(body: impl Into<Bytes>) -> HttpResponse {
    HttpResponse {
        status: 200,
        content_type: "application/json; charset=UTF-8",
        body: body.into(),
    }
}

fn respond(response: HttpResponse) -> RequestOutcome {
    RequestOutcome::Respond(response)
}

fn request_error(e: &RequestError) -> HttpResponse {
    let status = if matches!(e, RequestError::TooLarge { .. }) {
        413
    } else {
        400
    };
    HttpResponse::text(status, e.to_string())
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

impl Relay {
    fn classic_limits(&self) -> Limits {
        let max_data = self.config.max_client_message_size;
        Limits {
            max_data_len: max_data,
            // Percent-encoding at most triples `data`.
            max_body_len: max_data * 3 + 1024,
            ..Limits::default()
        }
    }

    /// Routes a request under `/aspnetclient`.
    pub(super) fn classic_request(&mut self, now: Instant, req: &HttpRequest) -> RequestOutcome {
        let segment = req
            .path
            .trim_end_matches('/')
            .strip_prefix(BASE)
            .unwrap_or_default()
            .trim_start_matches('/');
        let Some(kind) = RequestKind::from_segment(segment) else {
            return respond(HttpResponse::text(
                404,
                "Not found: the classic endpoints are /aspnetclient/negotiate, connect, reconnect, start, send, poll, abort and ping.",
            ));
        };
        if kind == RequestKind::Ping {
            return respond(json(PING_RESPONSE));
        }
        let form = (req.method == "POST").then_some(&req.body[..]);
        let params = match RequestParams::parse(kind, &req.query, form, &self.classic_limits()) {
            Ok(p) => p,
            Err(e) => return respond(request_error(&e)),
        };
        if params.callback.is_some() {
            return respond(HttpResponse::text(
                400,
                "JSONP is not supported: use a transport over CORS.",
            ));
        }
        if params.transport == Some(ClassicTransport::ForeverFrame) {
            return respond(HttpResponse::text(
                400,
                "The foreverFrame transport is not supported: use webSockets, serverSentEvents or longPolling.",
            ));
        }
        let claims = match self.authenticate(now, req, BASE, None) {
            Ok(c) => c,
            Err(r) => return respond(r),
        };
        if kind == RequestKind::Negotiate {
            return respond(self.classic_negotiate(now, req, &params, &claims));
        }
        let token = params.connection_token.as_deref().unwrap_or_default();
        let Some(conn) = self
            .by_token
            .get(token)
            .copied()
            .filter(|h| self.clients.get(h).is_some_and(|c| c.classic.is_some()))
        else {
            return respond(match kind {
                // The client stops cleanly on a global error.
                RequestKind::Poll | RequestKind::Reconnect if !req.websocket => json(
                    PersistentResponse::global_error(
                        "The connection is closed, or its token is unknown or has expired.",
                    )
                    .encode(),
                ),
                RequestKind::Abort => HttpResponse::text(200, ""),
                _ => HttpResponse::text(400, "The connection token is unknown or has expired."),
            });
        };
        if self.clients.get(&conn).map(|c| c.user_id.as_deref()) != Some(claims.user_id()) {
            return respond(HttpResponse::text(
                403,
                "Unrecognized user identity. The user identity cannot change during an active SignalR connection.",
            ));
        }
        match kind {
            RequestKind::Connect | RequestKind::Reconnect => {
                self.classic_receive(now, conn, kind, &params, req)
            }
            RequestKind::Poll => self.classic_poll(now, conn, &params),
            RequestKind::Start => {
                let open = self
                    .clients
                    .get(&conn)
                    .is_some_and(|c| matches!(c.state, ClientState::Open { .. }));
                respond(if open {
                    json(START_RESPONSE)
                } else {
                    HttpResponse::text(400, "The connection is not connected: /connect first.")
                })
            }
            RequestKind::Send => self.classic_send(now, conn, params.data.as_deref()),
            RequestKind::Abort => {
                self.remove_client(now, conn, Some((1000, "Stopped by the client.")), true);
                respond(HttpResponse::text(200, ""))
            }
            // Negotiate and ping are answered above.
            _ => respond(HttpResponse::text(404, "Not found.")),
        }
    }

    fn classic_negotiate(
        &mut self,
        now: Instant,
        req: &HttpRequest,
        params: &RequestParams,
        claims: &Claims,
    ) -> HttpResponse {
        let version = params.protocol_version();
        let error = |e: String| json(NegotiateReply::Error(ErrorResponse::new(e)).encode());
        let hubs = params.hub_names();
        let [hub_name] = hubs else {
            return HttpResponse::text(
                400,
                format!(
                    "connectionData must name exactly one hub; it names {}. This service relays one hub per classic connection.",
                    hubs.len()
                ),
            );
        };
        let hub = hub_name.to_ascii_lowercase();
        if params
            .extra("hub")
            .is_some_and(|h| !h.eq_ignore_ascii_case(&hub))
        {
            return HttpResponse::text(
                400,
                "connectionData names another hub than the 'hub' query parameter.",
            );
        }
        if !self.hub_has_servers(&hub) {
            return error(format!(
                "No app server is connected for hub '{hub}'. Start the app server, or wait for its server connections, and try again."
            ));
        }
        let handle = self.new_handle();
        let (connection_id, token) = self.ids.next_pair();
        self.insert_client(
            now,
            handle,
            hub,
            connection_id.clone(),
            token.clone(),
            claims,
            req,
        );
        if let Some(client) = self.clients.get_mut(&handle) {
            client.classic = Some(Box::new(Classic::new(hub_name.clone(), now)));
        }
        let deadline = now + self.config.negotiate_timeout;
        self.schedule(handle, deadline);
        let mut response = NegotiateResponse::with_defaults(BASE, token, connection_id, version);
        let secs = |d: std::time::Duration| d.as_secs_f64();
        response.keep_alive_timeout = Some(secs(self.config.classic_keep_alive) * 2.0);
        response.disconnect_timeout = secs(self.config.classic_disconnect_timeout);
        response.connection_timeout = secs(self.config.long_poll_timeout);
        json(NegotiateReply::Negotiate(response).encode())
    }

    /// `/connect` and `/reconnect`: attaches a receive channel.
    fn classic_receive(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        kind: RequestKind,
        params: &RequestParams,
        req: &HttpRequest,
    ) -> RequestOutcome {
        let Some(client) = self.clients.get(&conn) else {
            return respond(HttpResponse::text(404, "No such connection."));
        };
        let open = matches!(client.state, ClientState::Open { .. });
        let transport = params.transport.unwrap_or(ClassicTransport::LongPolling);
        if transport == ClassicTransport::WebSockets && !req.websocket {
            return respond(HttpResponse::text(
                400,
                "The webSockets transport needs a WebSocket upgrade request.",
            ));
        }
        match (kind, open) {
            (RequestKind::Connect, true) => {
                return respond(HttpResponse::text(
                    400,
                    "The connection is already connected: use /reconnect.",
                ))
            }
            (RequestKind::Reconnect, false) => {
                return respond(HttpResponse::text(
                    400,
                    "The connection was never connected: use /connect.",
                ))
            }
            (RequestKind::Connect, false) => {
                let Some(server) = self.pick_server(&client.hub) else {
                    return respond(HttpResponse::text(
                        503,
                        format!("No app server is connected for hub '{}'.", client.hub),
                    ));
                };
                let mut handshake = Vec::new();
                crate::aspnetcore::handshake::HandshakeRequest {
                    protocol: "json".to_owned(),
                    version: 1,
                }
                .write(&mut handshake);
                if let Some(client) = self.clients.get_mut(&conn) {
                    client.headers = super::forwarded_headers(
                        req,
                        self.config.max_forwarded_headers,
                        &self.config.instance_id,
                        None,
                    );
                }
                self.open_logical_connection(now, conn, server, HubProtocol::Json, handshake);
            }
            _ => {}
        }
        // A reconnect may find the old channel still attached: the new one replaces it.
        self.classic_detach(conn);
        let after = params
            .message_id
            .as_deref()
            .and_then(|m| m.parse::<u64>().ok());
        let keep_alive = self.config.classic_keep_alive;
        let Some(client) = self.clients.get_mut(&conn) else {
            return respond(HttpResponse::text(404, "No such connection."));
        };
        let Some(classic) = client.classic.as_deref_mut() else {
            return respond(HttpResponse::text(404, "No such connection."));
        };
        let first = match (kind, after) {
            (RequestKind::Reconnect, Some(after)) => classic.envelope_after(after),
            (RequestKind::Reconnect, None) => classic.envelope_after(0),
            _ => PersistentResponse::init(classic.cursor()).encode(),
        };
        match transport {
            ClassicTransport::WebSockets | ClassicTransport::ServerSentEvents => {
                let sse = transport == ClassicTransport::ServerSentEvents;
                classic.channel = if sse {
                    Channel::EventStream
                } else {
                    Channel::WebSocket
                };
                classic.idle_since = None;
                classic.next_keep_alive = now + keep_alive;
                client.transport = if sse {
                    Transport::ServerSentEvents
                } else {
                    Transport::WebSocket
                };
                if sse {
                    self.outputs.push_back(Output::Transmit {
                        conn,
                        data: Bytes::from_static(b"data: initialized\r\n\r\n"),
                        binary: false,
                    });
                }
                self.outputs
                    .extend(classic.channel.stream_output(conn, first));
                self.reschedule_client(conn);
                if sse {
                    RequestOutcome::EventStream(conn)
                } else {
                    RequestOutcome::AcceptWebSocket(conn)
                }
            }
            _ if kind == RequestKind::Connect => {
                classic.idle_since = Some(now);
                self.reschedule_client(conn);
                respond(json(first))
            }
            // A long-polling reconnect is a poll.
            _ => self.classic_poll(now, conn, params),
        }
    }

    /// Ends whatever receive channel the client has (a new one replaces it).
    fn classic_detach(&mut self, conn: ConnHandle) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        let Some(classic) = client.classic.as_deref_mut() else {
            return;
        };
        let cursor = classic.cursor();
        match std::mem::replace(&mut classic.channel, Channel::None) {
            Channel::None => {}
            Channel::WebSocket | Channel::EventStream => {
                client.transport = Transport::None;
                self.outputs.push_back(Output::Close {
                    conn,
                    code: 1000,
                    reason: "Replaced by the client's reconnect.".into(),
                });
            }
            Channel::Poll { request, .. } => self.outputs.push_back(Output::Respond {
                request,
                response: json(PersistentResponse::messages(cursor, Vec::new()).encode()),
            }),
        }
    }

    fn classic_poll(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        params: &RequestParams,
    ) -> RequestOutcome {
        self.classic_detach(conn);
        let timeout = self.config.long_poll_timeout;
        let Some(classic) = classic_of(&mut self.clients, conn) else {
            return respond(HttpResponse::text(404, "No such connection."));
        };
        let after = params
            .message_id
            .as_deref()
            .and_then(|m| m.parse::<u64>().ok())
            .unwrap_or_else(|| {
                classic
                    .buffer
                    .front()
                    .map_or(classic.last_id, |(id, _)| id - 1)
            });
        classic.ack(after);
        if classic.has_after(after) {
            classic.idle_since = Some(now);
            let body = classic.envelope_after(after);
            self.reschedule_client(conn);
            return respond(json(body));
        }
        let request = RequestId(self.next_request);
        self.next_request += 1;
        classic.channel = Channel::Poll {
            request,
            after,
            until: now + timeout,
        };
        classic.idle_since = None;
        self.reschedule_client(conn);
        RequestOutcome::Pending(request)
    }

    fn classic_send(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        data: Option<&str>,
    ) -> RequestOutcome {
        let Some(data) = data else {
            return respond(HttpResponse::text(400, "A /send needs its 'data' field."));
        };
        match self.classic_incoming(now, conn, data.as_bytes()) {
            Err(e) => respond(HttpResponse::text(400, e)),
            Ok(Incoming::Forwarded) => respond(HttpResponse::text(200, "")),
            Ok(Incoming::Answer(result)) => respond(json(result.encode())),
            Ok(Incoming::AwaitsResult(id)) => {
                let request = RequestId(self.next_request);
                let Some(classic) = classic_of(&mut self.clients, conn) else {
                    return respond(HttpResponse::text(404, "No such connection."));
                };
                if classic.sends.len() >= MAX_HELD_SENDS || classic.sends.contains_key(&id) {
                    let failure = HubResult::failure(
                        id,
                        "Too many hub invocations are waiting for their results.",
                    );
                    return respond(json(failure.encode()));
                }
                self.next_request += 1;
                classic.sends.insert(id, request);
                RequestOutcome::Pending(request)
            }
        }
    }

    /// A WebSocket message from a classic client.
    pub(super) fn classic_client_data(&mut self, now: Instant, conn: ConnHandle, data: &[u8]) {
        let max = self.config.max_client_message_size;
        if data.len() > max {
            let error = format!("The message exceeds the maximum size of {max} bytes.");
            return self.classic_fail(now, conn, &error);
        }
        match self.classic_incoming(now, conn, data) {
            Ok(Incoming::Answer(result)) => self.outputs.push_back(Output::Transmit {
                conn,
                data: Bytes::from(result.encode()),
                binary: false,
            }),
            Ok(_) => {}
            Err(e) => self.classic_fail(now, conn, &e),
        }
    }

    /// Forwards one client message to the app server.
    fn classic_incoming(
        &mut self,
        now: Instant,
        conn: ConnHandle,
        data: &[u8],
    ) -> Result<Incoming, String> {
        let Some(client) = self.clients.get_mut(&conn) else {
            return Ok(Incoming::Forwarded);
        };
        client.last_received = now;
        let (ClientState::Open { server, .. }, Some(classic)) =
            (&client.state, client.classic.as_deref())
        else {
            return Err("The connection is not connected.".to_owned());
        };
        let server = *server;
        let invocation = match ClientMessage::decode(data) {
            Ok(ClientMessage::Invocation(inv)) => inv,
            Ok(_) => return Ok(Incoming::Forwarded),
            Err(e) => return Err(format!("The message is not a hub invocation: {e}.")),
        };
        if !invocation.hub.eq_ignore_ascii_case(&classic.hub_name) {
            let error = format!("'{}' is not a hub of this connection.", invocation.hub);
            return match invocation.id {
                Some(id) => Ok(Incoming::Answer(HubResult::failure(id, error))),
                None => Err(error),
            };
        }
        let mut headers = Headers::new();
        if let Some(state) = &invocation.state {
            headers.insert(STATE_HEADER.to_owned(), state.as_str().to_owned());
        }
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
        let id = client.connection_id.clone();
        self.forward_to_server(server, &id, payload);
        Ok(invocation
            .id
            .map_or(Incoming::Forwarded, Incoming::AwaitsResult))
    }

    /// Bytes from the app server (whole ASP.NET Core JSON frames) for a classic client.
    pub(super) fn classic_emit(&mut self, now: Instant, conn: ConnHandle, data: &Bytes) {
        for frame in data.split(|&b| b == crate::framing::RECORD_SEPARATOR) {
            if frame.is_empty() {
                continue;
            }
            let Some(client) = self.clients.get_mut(&conn) else {
                return;
            };
            let Some(classic) = client.classic.as_deref_mut() else {
                return;
            };
            if classic.handshake_pending {
                classic.handshake_pending = false;
                if let Ok(response) = crate::aspnetcore::handshake::HandshakeResponse::parse(frame)
                {
                    if let Some(error) = response.error {
                        return self.classic_fail(now, conn, &error);
                    }
                }
                continue;
            }
            let hub_name = classic.hub_name.clone();
            match HubProtocol::Json.parse_message(frame) {
                Ok(HubMessage::Invocation(inv)) => match inv.invocation_id {
                    None => {
                        let push = ServerHubInvocation {
                            hub: hub_name,
                            method: inv.target,
                            args: inv.arguments.iter().map(raw).collect(),
                            state: state_of(&inv.headers),
                        };
                        self.classic_push(now, conn, ServerHubMessage::Invocation(push).to_raw());
                    }
                    // Classic clients cannot answer the server.
                    Some(id) => self.refuse_client_result(conn, &id),
                },
                Ok(HubMessage::StreamItem(item)) => {
                    // Progress goes on the receive channel. A `/send` answered with the result
                    // could overtake it, and clients drop progress that comes after the result,
                    // so that `/send` is answered (empty) now and the result follows the
                    // progress on the channel.
                    if let Some(request) = classic.sends.remove(&item.invocation_id) {
                        self.outputs.push_back(Output::Respond {
                            request,
                            response: json(Bytes::new()),
                        });
                    }
                    let progress = HubProgress {
                        id: item.invocation_id,
                        data: raw(&item.item),
                        state: None,
                    };
                    let message = ServerHubMessage::Progress(progress).to_raw();
                    self.classic_push(now, conn, message);
                }
                Ok(HubMessage::Completion(c)) => {
                    let mut result = match c.result {
                        CompletionResult::Void => HubResult::success(c.invocation_id.clone(), None),
                        CompletionResult::Value(v) => {
                            HubResult::success(c.invocation_id.clone(), Some(raw(&v)))
                        }
                        CompletionResult::Error(e) => {
                            HubResult::failure(c.invocation_id.clone(), e)
                        }
                    };
                    result.state = state_of(&c.headers);
                    self.classic_result(now, conn, &c.invocation_id, result);
                }
                Ok(HubMessage::Close(close)) => {
                    let error = close
                        .error
                        .unwrap_or_else(|| "The server closed the connection.".to_owned());
                    return self.classic_fail(now, conn, &error);
                }
                _ => {}
            }
        }
    }

    /// Tells the app server that a classic client cannot return a result.
    fn refuse_client_result(&mut self, conn: ConnHandle, invocation_id: &str) {
        let Some(client) = self.clients.get(&conn) else {
            return;
        };
        let ClientState::Open { server, .. } = client.state else {
            return;
        };
        let completion = HubMessage::Completion(Completion {
            headers: Headers::new(),
            invocation_id: invocation_id.to_owned(),
            result: CompletionResult::Error(
                "Classic ASP.NET SignalR clients cannot return results to the server.".to_owned(),
            ),
        });
        let mut payload = Vec::new();
        crate::aspnetcore::json::write_message(&completion, &mut payload);
        let id = client.connection_id.clone();
        self.forward_to_server(server, &id, payload);
    }

    /// Puts a message in `M`: it gets the next cursor, stays for replay, and goes out on the
    /// receive channel.
    fn classic_push(&mut self, now: Instant, conn: ConnHandle, message: RawJson) {
        let max_messages = self.config.classic_buffer_messages;
        let max_bytes = self.config.max_long_poll_buffer;
        let Some(classic) = classic_of(&mut self.clients, conn) else {
            return;
        };
        classic.last_id += 1;
        classic.buffer_bytes += message.as_str().len();
        classic.buffer.push_back((classic.last_id, message.clone()));
        // Bounded like a message bus: the oldest go first.
        while classic.buffer.len() > max_messages || classic.buffer_bytes > max_bytes {
            if let Some((_, m)) = classic.buffer.pop_front() {
                classic.buffer_bytes -= m.as_str().len();
            }
        }
        let cursor = classic.cursor();
        match classic.channel {
            Channel::None => {}
            Channel::WebSocket | Channel::EventStream => {
                let envelope = PersistentResponse::messages(cursor, vec![message]).encode();
                classic.next_keep_alive = now + self.config.classic_keep_alive;
                self.outputs
                    .extend(classic.channel.stream_output(conn, envelope));
            }
            Channel::Poll { request, after, .. } => {
                let body = classic.envelope_after(after);
                classic.channel = Channel::None;
                classic.idle_since = Some(now);
                self.outputs.push_back(Output::Respond {
                    request,
                    response: json(body),
                });
                self.reschedule_client(conn);
            }
        }
    }

    /// A hub result: the answer to its `/send`, a bare WebSocket frame, or else a message.
    fn classic_result(&mut self, now: Instant, conn: ConnHandle, id: &str, result: HubResult) {
        let Some(classic) = classic_of(&mut self.clients, conn) else {
            return;
        };
        let bytes = result.encode();
        if let Some(request) = classic.sends.remove(id) {
            self.outputs.push_back(Output::Respond {
                request,
                response: json(bytes),
            });
        } else if classic.channel == Channel::WebSocket {
            self.outputs.push_back(Output::Transmit {
                conn,
                data: Bytes::from(bytes),
                binary: false,
            });
        } else {
            self.classic_push(now, conn, ServerHubMessage::Result(result).to_raw());
        }
    }

    /// Ends a classic connection with a global error (`E`): the client stops.
    pub(super) fn classic_fail(&mut self, now: Instant, conn: ConnHandle, error: &str) {
        let Some(classic) = classic_of(&mut self.clients, conn) else {
            return;
        };
        let mut envelope = PersistentResponse::global_error(error);
        envelope.cursor = Some(classic.cursor());
        let body = envelope.encode();
        match std::mem::replace(&mut classic.channel, Channel::None) {
            Channel::Poll { request, .. } => self.outputs.push_back(Output::Respond {
                request,
                response: json(body),
            }),
            channel => self.outputs.extend(channel.stream_output(conn, body)),
        }
        self.remove_client(now, conn, Some((1000, error)), true);
    }

    /// Answers what a classic client still holds when it goes.
    pub(super) fn classic_end(&mut self, classic: Classic) {
        for (id, request) in classic.sends {
            let failure =
                HubResult::failure(id, "The connection closed before the method returned.");
            self.outputs.push_back(Output::Respond {
                request,
                response: json(failure.encode()),
            });
        }
        if let Channel::Poll { request, .. } = classic.channel {
            let body = PersistentResponse::global_error("The connection is closed.").encode();
            self.outputs.push_back(Output::Respond {
                request,
                response: json(body),
            });
        }
    }

    /// The receive channel (WebSocket or event stream) went away: the client has the
    /// disconnect timeout to reconnect. Returns whether `conn` is a classic client.
    pub(super) fn classic_transport_lost(&mut self, now: Instant, conn: ConnHandle) -> bool {
        let Some(client) = self.clients.get_mut(&conn) else {
            return false;
        };
        let Some(classic) = client.classic.as_deref_mut() else {
            return false;
        };
        if !matches!(client.state, ClientState::Open { .. }) {
            return false;
        }
        if matches!(classic.channel, Channel::WebSocket | Channel::EventStream) {
            classic.channel = Channel::None;
            classic.idle_since = Some(now);
            client.transport = Transport::None;
        }
        self.reschedule_client(conn);
        true
    }

    /// A held classic request was abandoned by its client. Returns whether it was one.
    pub(super) fn classic_request_aborted(&mut self, now: Instant, request: RequestId) -> bool {
        let found = self.clients.iter_mut().find_map(|(conn, c)| {
            let classic = c.classic.as_deref_mut()?;
            if matches!(classic.channel, Channel::Poll { request: r, .. } if r == request) {
                classic.channel = Channel::None;
                classic.idle_since = Some(now);
                return Some(*conn);
            }
            let id = classic
                .sends
                .iter()
                .find(|(_, r)| **r == request)
                .map(|(id, _)| id.clone())?;
            classic.sends.remove(&id);
            Some(*conn)
        });
        if let Some(conn) = found {
            self.reschedule_client(conn);
        }
        found.is_some()
    }

    /// The classic part of a client's timer: keep-alives, the poll timeout and the disconnect
    /// timeout.
    pub(super) fn classic_timer(&mut self, now: Instant, conn: ConnHandle) {
        let disconnect = self.config.classic_disconnect_timeout;
        let keep_alive = self.config.classic_keep_alive;
        let Some(classic) = classic_of(&mut self.clients, conn) else {
            return;
        };
        if classic.idle_since.is_some_and(|t| now >= t + disconnect) {
            // Gone for the disconnect timeout: the app server sees the disconnect.
            return self.remove_client(now, conn, None, true);
        }
        match classic.channel {
            Channel::Poll { request, until, .. } if now >= until => {
                let body = PersistentResponse::messages(classic.cursor(), Vec::new()).encode();
                classic.channel = Channel::None;
                classic.idle_since = Some(now);
                self.outputs.push_back(Output::Respond {
                    request,
                    response: json(body),
                });
            }
            Channel::WebSocket | Channel::EventStream if now >= classic.next_keep_alive => {
                classic.next_keep_alive = now + keep_alive;
                let keep_alive = crate::classic::KEEP_ALIVE.to_vec();
                self.outputs
                    .extend(classic.channel.stream_output(conn, keep_alive));
            }
            _ => {}
        }
        self.reschedule_client(conn);
    }
}
