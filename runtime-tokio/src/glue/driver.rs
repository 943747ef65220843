//! The relay, served: HTTP/WebSocket plumbing around [`signalr_relay_core::relay::Relay`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::Role;
use async_tungstenite::WebSocketStream;
use futures_channel::{mpsc, oneshot};
use futures_util::future::{select, Either};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::Frame;
use hyper::header::{
    HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, ORIGIN, SEC_WEBSOCKET_ACCEPT,
    SEC_WEBSOCKET_KEY, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode};
use signalr_relay_core::relay::{
    ConnHandle, Event, HttpRequest, HttpResponse, Output, Relay, RelayConfig, RequestId,
    RequestOutcome,
};
use smol_hyper::rt::FuturesIo;

use crate::glue::http::{allow_origin, empty, preflight, respond, text, to_core_request, Body};
use crate::glue::ws::{self, Command, Incoming};
use crate::glue::{Listener, Runtime};

/// How the relay is served, beyond the core's [`RelayConfig`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest WebSocket message, or POST body, accepted from any peer.
    pub max_websocket_message: usize,
    /// How long a client may take to send its HTTP request headers.
    pub header_read_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_websocket_message: 8 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(15),
        }
    }
}

/// What the HTTP side hears back about a request: the outcome, and for a held request the
/// channel its response will come on.
type Reply = (RequestOutcome, Option<oneshot::Receiver<HttpResponse>>);

/// Which attachment of a connection an event is about: a stateful reconnect attaches a new
/// socket to the same handle, and the old socket's late events must not touch it. `0` is
/// "never attached" (an upgrade or stream that failed first).
type Generation = u64;

fn next_generation() -> Generation {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Bytes held for one connection whose socket is still being set up.
const MAX_EARLY_BYTES: usize = 8 * 1024 * 1024;

enum DriverInput {
    Request(HttpRequest, oneshot::Sender<Reply>),
    Attach(ConnHandle, Generation, mpsc::Sender<Command>),
    Incoming(ConnHandle, Generation, Incoming),
    Aborted(RequestId),
}

/// Serves the relay on `listener` until the listener fails. The relay's state lives in one
/// driver task; each connection gets its own tasks.
///
/// # Errors
/// When accepting fails.
pub async fn serve<R: Runtime, L: Listener>(
    runtime: R,
    mut listener: L,
    config: RelayConfig,
    options: ServeOptions,
) -> io::Result<()> {
    let (events, queue) = mpsc::channel(4096);
    runtime.spawn(drive(runtime.clone(), config, queue));
    loop {
        let (stream, _peer) = listener.accept().await?;
        runtime.spawn(serve_connection(
            runtime.clone(),
            stream,
            events.clone(),
            options.clone(),
        ));
    }
}

fn seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    if getrandom::fill(&mut seed).is_err() {
        tracing::error!("no OS randomness; connection tokens would be predictable");
        std::process::abort();
    }
    seed
}

/// The only owner of the [`Relay`], and where its outputs go.
struct Driver<R> {
    /// The runtime, for its clock.
    runtime: R,
    relay: Relay,
    /// Writers of WebSockets and event streams, with their attachment.
    writers: BTreeMap<ConnHandle, (Generation, mpsc::Sender<Command>)>,
    /// Connections accepted whose socket or stream is not attached yet.
    awaiting: std::collections::BTreeSet<ConnHandle>,
    /// Output for those, held until they attach (bounded).
    early: BTreeMap<ConnHandle, (usize, Vec<Command>)>,
    /// Held requests (long polls).
    held: BTreeMap<RequestId, oneshot::Sender<HttpResponse>>,
}

async fn drive<R: Runtime>(
    runtime: R,
    config: RelayConfig,
    mut queue: mpsc::Receiver<DriverInput>,
) {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut d = Driver {
        relay: Relay::new(config, runtime.now(), unix, seed()),
        runtime,
        writers: BTreeMap::new(),
        awaiting: std::collections::BTreeSet::new(),
        early: BTreeMap::new(),
        held: BTreeMap::new(),
    };
    loop {
        let event = match d.relay.poll_timeout() {
            Some(deadline) => match select(queue.next(), d.runtime.sleep_until(deadline)).await {
                Either::Left((event, _)) => event,
                Either::Right(((), _)) => {
                    d.relay.handle_timeout(d.runtime.now());
                    d.flush();
                    continue;
                }
            },
            None => queue.next().await,
        };
        let Some(event) = event else { return };
        // Handle a batch of events before writing, bounded so that timers still run.
        let mut next = Some(event);
        let mut budget = 256;
        while let Some(event) = next.take() {
            d.handle(event);
            d.flush();
            budget -= 1;
            if budget > 0 {
                next = queue.try_recv().ok();
            }
        }
        let now = d.runtime.now();
        if d.relay.poll_timeout().is_some_and(|t| t <= now) {
            d.relay.handle_timeout(now);
            d.flush();
        }
        if budget == 0 {
            // More is queued: let the writers this batch fed run before taking it, rather than
            // fill their queues from a backlog and take healthy peers for stalled ones.
            yield_now().await;
        }
    }
}

/// Gives every other ready task a turn (runtime-agnostic).
async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}

impl<R: Runtime> Driver<R> {
    fn handle(&mut self, event: DriverInput) {
        let now = self.runtime.now();
        match event {
            DriverInput::Request(request, reply) => {
                let outcome = self.relay.handle_request(now, &request);
                let response = match outcome {
                    RequestOutcome::Pending(id) => {
                        let (tx, rx) = oneshot::channel();
                        self.held.insert(id, tx);
                        Some(rx)
                    }
                    RequestOutcome::AcceptWebSocket(conn) | RequestOutcome::EventStream(conn) => {
                        self.awaiting.insert(conn);
                        None
                    }
                    RequestOutcome::Respond(_) => None,
                };
                let _ = reply.send((outcome, response));
            }
            DriverInput::Attach(conn, generation, writer) => {
                self.awaiting.remove(&conn);
                let mut stalled = false;
                if let Some((_, commands)) = self.early.remove(&conn) {
                    let mut writer = writer.clone();
                    for c in commands {
                        stalled |= writer.try_send(c).is_err();
                    }
                }
                if stalled {
                    // More was held than the socket's queue takes: treat it as a stalled peer
                    // rather than lose part of it silently.
                    self.relay.handle_closed(now, conn);
                } else {
                    self.writers.insert(conn, (generation, writer));
                }
            }
            DriverInput::Incoming(conn, generation, Incoming::Data(data)) => {
                if self
                    .writers
                    .get(&conn)
                    .is_some_and(|(g, _)| *g == generation)
                {
                    self.relay.handle_data(now, conn, &data);
                }
            }
            DriverInput::Incoming(conn, generation, Incoming::Closed) => {
                let current = self
                    .writers
                    .get(&conn)
                    .is_some_and(|(g, _)| *g == generation);
                let never_attached = generation == 0 && self.awaiting.remove(&conn);
                if current || never_attached {
                    self.writers.remove(&conn);
                    self.early.remove(&conn);
                    self.relay.handle_closed(now, conn);
                }
            }
            DriverInput::Aborted(request) => {
                if self.held.remove(&request).is_some() {
                    self.relay.handle_request_aborted(now, request);
                }
            }
        }
    }

    /// Carries out everything the relay asked for.
    fn flush(&mut self) {
        loop {
            let mut stalled = Vec::new();
            while let Some(output) = self.relay.poll_output() {
                let (conn, command) = match output {
                    Output::Transmit { conn, data, binary } => {
                        (conn, Command::Send { data, binary })
                    }
                    Output::Close { conn, code, reason } => (conn, Command::Close { code, reason }),
                    Output::Respond { request, response } => {
                        if let Some(tx) = self.held.remove(&request) {
                            let _ = tx.send(response);
                        }
                        continue;
                    }
                    Output::Event(event) => {
                        log_event(&event);
                        continue;
                    }
                };
                let closing = matches!(command, Command::Close { .. });
                if let Some((_, writer)) = self.writers.get_mut(&conn) {
                    if writer.try_send(command).is_err() {
                        stalled.push(conn);
                    }
                    if closing {
                        self.writers.remove(&conn);
                    }
                } else if self.awaiting.contains(&conn) {
                    let size = match &command {
                        Command::Send { data, .. } => data.len(),
                        Command::Close { .. } => 0,
                    };
                    let (bytes, pending) = self.early.entry(conn).or_default();
                    *bytes += size;
                    pending.push(command);
                    if *bytes > MAX_EARLY_BYTES {
                        self.early.remove(&conn);
                        self.awaiting.remove(&conn);
                        stalled.push(conn);
                    }
                }
                // Anything else is for a connection the relay already dropped.
            }
            if stalled.is_empty() {
                return;
            }
            // A peer that stopped reading is dropped rather than buffered without bound;
            // telling the relay may queue more output (e.g. CloseConnection to its app server).
            for conn in stalled {
                self.writers.remove(&conn);
                tracing::warn!(
                    conn = conn.0,
                    "closing a connection whose peer stopped reading"
                );
                self.relay.handle_closed(self.runtime.now(), conn);
            }
        }
    }
}

/// Logs what opened and closed: app-server connections at `info`, clients at `debug`.
fn log_event(event: &Event) {
    match event {
        Event::ServerOpened {
            conn,
            hub,
            server_id,
        } => tracing::info!(
            conn = conn.0,
            hub,
            server_id,
            "app server connection opened"
        ),
        Event::ServerClosed { conn, reason } => tracing::info!(
            conn = conn.0,
            by = ?reason.initiator,
            reason = reason.kind.as_str(),
            "app server connection closed"
        ),
        Event::ClientOpened {
            conn,
            hub,
            family,
            transport,
            protocol,
        } => tracing::debug!(
            conn = conn.0,
            hub,
            ?family,
            transport = transport.as_str(),
            protocol = protocol.name(),
            "client connected"
        ),
        Event::ClientClosed { conn, reason } => tracing::debug!(
            conn = conn.0,
            by = ?reason.initiator,
            reason = reason.kind.as_str(),
            "client disconnected"
        ),
        _ => tracing::debug!(?event, "relay event"),
    }
}

async fn serve_connection<R: Runtime, S>(
    runtime: R,
    stream: S,
    events: mpsc::Sender<DriverInput>,
    options: ServeOptions,
) where
    S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
{
    let timer = runtime.hyper_timer();
    let max_message = options.max_websocket_message;
    let service = hyper::service::service_fn(move |req| {
        handle::<R, S>(runtime.clone(), req, events.clone(), max_message)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(timer)
        .header_read_timeout(options.header_read_timeout);
    if let Err(e) = builder
        .serve_connection(FuturesIo::new(stream), service)
        .with_upgrades()
        .await
    {
        tracing::debug!("HTTP connection ended: {e}");
    }
}

/// Tells the driver when a held request's handler, or an event stream's body, goes away
/// before the relay ended it.
struct DropNotice {
    event: Option<DriverInput>,
    events: mpsc::Sender<DriverInput>,
}

impl Drop for DropNotice {
    fn drop(&mut self) {
        if let Some(event) = self.event.take() {
            let _ = self.events.try_send(event);
        }
    }
}

async fn handle<R: Runtime, S>(
    runtime: R,
    mut req: Request<hyper::body::Incoming>,
    mut events: mpsc::Sender<DriverInput>,
    max_message: usize,
) -> Result<Response<Body>, Infallible>
where
    S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
{
    if let Some(mut response) = preflight(&req) {
        allow_origin(req.headers().get(ORIGIN), &mut response);
        return Ok(response);
    }
    let mut request = to_core_request(&req);
    let origin = req.headers().get(ORIGIN).cloned();
    let key = req
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()));
    let on_upgrade = request.websocket.then(|| hyper::upgrade::on(&mut req));
    let server_connection = request.path.starts_with("/server");
    let negotiate = request.path.trim_end_matches('/').ends_with("/negotiate");
    if req.method() == Method::POST {
        match Limited::new(req.into_body(), max_message).collect().await {
            Ok(collected) => request.body = collected.to_bytes(),
            Err(_) => {
                return Ok(text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The request body is too large.",
                ))
            }
        }
    }
    let (reply, outcome) = oneshot::channel();
    if events
        .send(DriverInput::Request(request, reply))
        .await
        .is_err()
    {
        return Ok(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "The relay is shutting down.",
        ));
    }
    let Ok((outcome, held)) = outcome.await else {
        return Ok(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "The relay is shutting down.",
        ));
    };
    let mut response = match outcome {
        RequestOutcome::Respond(r) => respond(r),
        RequestOutcome::AcceptWebSocket(conn) => {
            let (Some(accept), Some(on_upgrade)) =
                (key.and_then(|k| HeaderValue::from_str(&k).ok()), on_upgrade)
            else {
                let _ = events
                    .send(DriverInput::Incoming(conn, 0, Incoming::Closed))
                    .await;
                return Ok(text(StatusCode::BAD_REQUEST, "Bad WebSocket request."));
            };
            let read_buffer = if server_connection {
                ws::SERVER_READ_BUFFER
            } else {
                ws::CLIENT_READ_BUFFER
            };
            runtime.spawn(upgrade::<S>(
                on_upgrade,
                conn,
                events,
                max_message,
                read_buffer,
            ));
            let mut response = Response::new(empty());
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let headers = response.headers_mut();
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
            response
        }
        RequestOutcome::EventStream(conn) => {
            let generation = next_generation();
            let (writer, commands) = mpsc::channel(ws::WRITE_QUEUE);
            let _ = events
                .send(DriverInput::Attach(conn, generation, writer))
                .await;
            let notice = DropNotice {
                event: Some(DriverInput::Incoming(conn, generation, Incoming::Closed)),
                events,
            };
            let body = commands
                .take_while(|c| std::future::ready(matches!(c, Command::Send { .. })))
                .filter_map(move |c| {
                    let _ = &notice;
                    std::future::ready(match c {
                        Command::Send { data, .. } => Some(Ok::<_, Infallible>(Frame::data(data))),
                        Command::Close { .. } => None,
                    })
                });
            let mut response = Response::new(BodyExt::boxed(StreamBody::new(body)));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
            headers.insert(
                CACHE_CONTROL,
                HeaderValue::from_static("no-cache, no-store"),
            );
            headers.insert("X-Accel-Buffering", HeaderValue::from_static("no"));
            response
        }
        RequestOutcome::Pending(request) => {
            let mut notice = DropNotice {
                event: Some(DriverInput::Aborted(request)),
                events,
            };
            let answer = match held {
                Some(rx) => rx.await.ok(),
                None => None,
            };
            notice.event = None;
            match answer {
                Some(r) => respond(r),
                None => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The relay is shutting down.",
                ),
            }
        }
    };
    allow_origin(origin.as_ref(), &mut response);
    if negotiate {
        // A client's next request after negotiate is its WebSocket (a connection of its own)
        // or a poll it may open anew: an idle keep-alive connection would hold a read buffer
        // for nothing.
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}

/// Completes a WebSocket upgrade on the raw stream (recovered from hyper, with any bytes it
/// already read), then pumps it.
async fn upgrade<S>(
    on_upgrade: hyper::upgrade::OnUpgrade,
    conn: ConnHandle,
    mut events: mpsc::Sender<DriverInput>,
    max_message: usize,
    read_buffer: usize,
) where
    S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok(Ok(parts)) = on_upgrade.await.map(|u| u.downcast::<FuturesIo<S>>()) else {
        tracing::debug!("WebSocket upgrade failed");
        let _ = events
            .send(DriverInput::Incoming(conn, 0, Incoming::Closed))
            .await;
        return;
    };
    // The bytes hyper read past the request live in its whole 8 KiB read buffer: copy them
    // out and let the buffer go, rather than hold it for the life of the connection.
    let hyper::upgrade::Parts { io, read_buf, .. } = parts;
    let early = read_buf.to_vec();
    drop(read_buf);
    let ws = WebSocketStream::from_partially_read(
        io.into_inner(),
        early,
        Role::Server,
        Some(ws::config(max_message, read_buffer)),
    )
    .await;
    let generation = next_generation();
    let (writer, commands) = mpsc::channel(ws::WRITE_QUEUE);
    if events
        .send(DriverInput::Attach(conn, generation, writer))
        .await
        .is_err()
    {
        return;
    }
    ws::pump(ws, commands, events, move |incoming| {
        DriverInput::Incoming(conn, generation, incoming)
    })
    .await;
}
