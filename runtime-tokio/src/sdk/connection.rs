//! One server connection to the relay: connect, drive [`AppConnection`], dispatch to the hub,
//! reconnect with backoff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::HeaderValue;
use async_tungstenite::tungstenite::Message;
use bytes::Bytes;
use futures_channel::{mpsc, oneshot};
use futures_util::future::{abortable, select, Either};
use futures_util::{SinkExt, StreamExt};
use signalr_relay_core::app::{AppConnection, AppConnectionConfig, AppEvent, Backoff};
use signalr_relay_core::aspnetcore::{
    CancelInvocation, Completion, CompletionResult, HubDecoder, HubMessage, Invocation, RawValue,
    StreamItem,
};
use signalr_relay_core::auth::{sign, Algorithm, Claims};
use signalr_relay_core::service::{self, AckStatus, ServiceMessage};

use super::command::{ConnCommand, ConnTx, Job};
use super::hub::{lock, Call, ClientEntry, Context, HubError, InvokeError, Method, UploadStream};
use super::{HubRuntime, Shared};
use crate::glue::tls::ClientStream;
use crate::glue::Runtime;

pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

/// Runs one server connection slot: reconnects with backoff, except for an on-demand
/// connection (`target`), which is not restarted once it ends.
pub(crate) fn spawn<R: Runtime>(
    runtime: R,
    shared: Arc<Shared>,
    hub: Arc<HubRuntime>,
    endpoint: usize,
    target: Option<String>,
) {
    let task_runtime = runtime.clone();
    runtime.spawn(async move {
        let mut backoff = Backoff::default();
        loop {
            match session(&task_runtime, &shared, &hub, endpoint, target.as_deref()).await {
                Ok(()) => backoff.reset(),
                // Every connection of every hub fails the same way at once: say it once.
                Err(e) if shared.first_time_lately(&e, task_runtime.now()) => {
                    tracing::warn!(hub = hub.hub.name(), "server connection failed: {e}");
                }
                Err(e) => tracing::debug!(hub = hub.hub.name(), "server connection failed: {e}"),
            }
            if target.is_some() {
                return;
            }
            let delay = backoff.next_delay(random_u64() % 1000);
            task_runtime.sleep_until(task_runtime.now() + delay).await;
        }
    });
}

/// One connection, from connect to drop. `Ok` if it got as far as a handshake.
async fn session<R: Runtime>(
    runtime: &R,
    shared: &Arc<Shared>,
    hub: &Arc<HubRuntime>,
    endpoint: usize,
    target: Option<&str>,
) -> Result<(), String> {
    let cs = &shared.endpoints[endpoint];
    let server_endpoint = cs.server_endpoint();
    let url = signalr_relay_core::auth::HttpUrl::parse(server_endpoint.trim_end_matches('/'))
        .map_err(|e| e.to_string())?;
    let hub_key = hub.hub.name().to_ascii_lowercase();
    let addr = crate::glue::client::resolve(url.host(), url.port_or_default()).await?;
    let stream = runtime
        .connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let (stream, scheme) = match &shared.tls {
        Some(tls) if url.scheme() == signalr_relay_core::auth::Scheme::Https => (
            ClientStream::tls(tls, url.host(), stream)
                .await
                .map_err(|e| tls_failed(url.host(), &e))?,
            "wss",
        ),
        _ => (ClientStream::Plain(stream), "ws"),
    };

    let mut ws_url = format!(
        "{scheme}://{}:{}{}server/?hub={hub_key}&cid={:016x}",
        url.host(),
        url.port_or_default(),
        path_prefix(url.path()),
        random_u64()
    );
    if let Some(t) = target {
        ws_url.push_str("&target=");
        ws_url.push_str(&form_encode(t));
    }
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut claims = Claims::issued_at(now_unix, 3600);
    claims.aud.push(cs.server_audience(&hub_key).to_string());
    claims.nameid = Some(shared.options.server_id.clone());
    let token = sign(&claims, cs.access_key().as_bytes(), Algorithm::Hs256);
    let mut request = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let headers = request.headers_mut();
    for (name, value) in [
        ("Authorization", format!("Bearer {token}")),
        ("X-ASRS-Server-Id", shared.options.server_id.clone()),
        (
            "Asrs-User-Agent",
            format!("signalr-relay-sdk/{}", env!("CARGO_PKG_VERSION")),
        ),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    let (ws, _) = async_tungstenite::client_async_with_config(
        request,
        stream,
        Some(crate::glue::ws::sdk_config(16 * 1024 * 1024)),
    )
    .await
    .map_err(|e| refused_why(&ws_url, e))?;

    let config = {
        let mut c = AppConnectionConfig::default();
        c.allow_stateful_reconnects = shared.options.allow_stateful_reconnects;
        if shared.options.migrate_clients_on_shutdown {
            c.migration_level = service::MigrationLevel::ShutdownOnly;
        }
        if let Some(t) = target {
            c.connection_type = service::ConnectionType::OnDemand;
            c.target = t.to_owned();
        }
        c
    };
    let mut conn = AppConnection::new(runtime.now(), config);
    let (tx, mut commands) = mpsc::unbounded::<ConnCommand>();
    let (mut sink, mut incoming) = ws.split();
    let mut acks: BTreeMap<i32, oneshot::Sender<AckStatus>> = BTreeMap::new();
    let mut ready = false;
    // Messages read in a row (each time the socket had one ready).
    let mut streak = 0usize;
    // The timer for the connection's timeouts, and the deadline it was made for.
    let mut timer: Option<(Instant, crate::glue::BoxFuture<()>)> = None;
    let result = loop {
        while let Some(bytes) = conn.poll_transmit() {
            if sink.feed(Message::Binary(bytes)).await.is_err() {
                conn.handle_closed();
            }
        }
        if sink.flush().await.is_err() {
            conn.handle_closed();
        }
        while let Some(event) = conn.poll_event() {
            match event {
                AppEvent::Ready => {
                    ready = true;
                    lock(&hub.pool).push((endpoint, tx.clone()));
                    tracing::debug!(hub = hub.hub.name(), "server connection ready");
                }
                AppEvent::Refused(why) => {
                    tracing::warn!(hub = hub.hub.name(), "relay refused the connection: {why}")
                }
                AppEvent::ClientConnected(info) => {
                    client_connected(runtime, hub, endpoint, &tx, info)
                }
                AppEvent::ClientMessage {
                    connection_id,
                    message,
                } => client_message(runtime, hub, &connection_id, message),
                AppEvent::ClientDisconnected { connection_id, .. } => {
                    client_disconnected(runtime, hub, &connection_id)
                }
                AppEvent::OpenOnDemand { target } => {
                    let live = lock(&hub.pool)
                        .iter()
                        .filter(|(e, c)| *e == endpoint && !c.is_closed())
                        .count();
                    if live < shared.options.max_connections_per_hub {
                        let (runtime, shared, hub) = (runtime.clone(), shared.clone(), hub.clone());
                        spawn(runtime, shared, hub, endpoint, Some(target));
                    }
                }
                AppEvent::Ack { ack_id, status } => {
                    if let Some(reply) = acks.remove(&ack_id) {
                        let _ = reply.send(status);
                    }
                }
                AppEvent::ClientResult(message) => client_result(hub, message),
                AppEvent::Dead(why) => {
                    tracing::info!(hub = hub.hub.name(), "server connection ended: {why}")
                }
                AppEvent::Notice(what) => {
                    tracing::warn!(hub = hub.hub.name(), "the relay says: {what}")
                }
                _ => {}
            }
        }
        if conn.is_dead() {
            break if ready {
                Ok(())
            } else {
                Err("the relay closed the connection during the handshake".to_owned())
            };
        }
        if streak >= READ_TURN {
            // The relay keeps this socket busy: give the hub's tasks a turn, then write the
            // answers they queued, rather than read on while they wait (smol's executor,
            // unlike tokio's, never makes a busy socket yield).
            streak = 0;
            crate::glue::yield_now().await;
            let now = runtime.now();
            apply_queued(&mut conn, now, &mut commands, &mut acks);
            // Nor would its timers run (the sleep below is tried after the socket).
            if conn.poll_timeout().is_some_and(|at| at <= now) {
                conn.handle_timeout(now);
            }
            continue;
        }
        let deadline = conn
            .poll_timeout()
            .unwrap_or_else(|| runtime.now() + Duration::from_secs(60));
        // Each message read or sent moves the deadline later. A timer made for an earlier one
        // is kept, rather than one made per message: waking before the deadline costs one
        // look at the timers that finds nothing due.
        if timer.as_ref().is_some_and(|(at, _)| *at > deadline) {
            timer = None;
        }
        let (_, sleep) = timer.get_or_insert_with(|| (deadline, runtime.sleep_until(deadline)));
        let next = select(incoming.next(), select(commands.next(), sleep)).await;
        let now = runtime.now();
        if matches!(next, Either::Left(_)) {
            streak += 1;
        } else {
            streak = 0;
        }
        // Whether a command from the hub's tasks was applied.
        let mut answered = false;
        match next {
            Either::Left((Some(Ok(Message::Binary(data))), _)) => conn.handle_data(now, &data),
            Either::Left((Some(Ok(Message::Text(text))), _)) => {
                conn.handle_data(now, text.as_bytes())
            }
            Either::Left((Some(Ok(_)), _)) => {}
            Either::Left((Some(Err(_)) | None, _)) => conn.handle_closed(),
            Either::Right((Either::Left((Some(command), _)), _)) => {
                apply(&mut conn, now, command, &mut acks);
                answered = true;
            }
            Either::Right((Either::Left((None, _)), _)) => {}
            Either::Right((Either::Right(((), _)), _)) => {
                timer = None;
                conn.handle_timeout(now);
            }
        }
        if answered {
            // The first answer woke this task. The hub's other tasks that are ready to run
            // (the invocations read with it) give theirs in their turns: let them have those
            // turns, then write every answer queued at once, not one write each.
            crate::glue::yield_now().await;
            apply_queued(&mut conn, runtime.now(), &mut commands, &mut acks);
        }
    };
    commands.close();
    lock(&hub.pool).retain(|(_, c)| !c.is_closed() && !c.same_receiver(&tx));
    result
}

/// Messages a server connection reads in a row before the answers queued meanwhile are
/// written.
const READ_TURN: usize = 32;

/// Why a TLS session with the relay failed, with what to do about a certificate not trusted.
fn tls_failed(host: &str, e: &std::io::Error) -> String {
    let hint = if e.to_string().contains("UnknownIssuer") {
        " (if a private CA issued the relay's certificate, trust it with the CA file: --ca, AppOptions::ca_file)"
    } else {
        ""
    };
    format!("TLS with {host}: {e}{hint}")
}

/// Why the relay did not take a server connection, in words an operator can act on.
fn refused_why(url: &str, e: async_tungstenite::tungstenite::Error) -> String {
    use async_tungstenite::tungstenite::Error;
    // Without the connection's own id, so that the same failure reads the same.
    let url = url.split("&cid=").next().unwrap_or(url);
    let Error::Http(response) = &e else {
        return format!("WebSocket to {url} failed: {e}");
    };
    let status = response.status();
    let body = response
        .body()
        .as_deref()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let mut body: String = body.trim().chars().take(300).collect();
    if body.is_empty() {
        body = status.canonical_reason().unwrap_or("").to_owned();
    }
    match status.as_u16() {
        401 | 403 => format!(
            "the relay refused this app server's token ({status}: {body}): check the connection string's AccessKey (and Endpoint)"
        ),
        503 => format!("the relay is not taking app servers now ({status}: {body})"),
        _ => format!("the relay answered {status} ({body}) at {url}"),
    }
}

fn path_prefix(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    format!("{trimmed}/")
}

fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Applies every command queued now.
fn apply_queued(
    conn: &mut AppConnection,
    now: Instant,
    commands: &mut mpsc::UnboundedReceiver<ConnCommand>,
    acks: &mut BTreeMap<i32, oneshot::Sender<AckStatus>>,
) {
    while let Ok(command) = commands.try_recv() {
        apply(conn, now, command, acks);
    }
}

fn apply(
    conn: &mut AppConnection,
    now: Instant,
    command: ConnCommand,
    acks: &mut BTreeMap<i32, oneshot::Sender<AckStatus>>,
) {
    match command {
        ConnCommand::Message {
            connection_id,
            message,
        } => {
            conn.send_to_client(now, &connection_id, &message);
        }
        ConnCommand::Frame {
            connection_id,
            frame,
        } => {
            conn.send_frame_to_client(now, &connection_id, frame);
        }
        ConnCommand::Service(msg) => conn.send_service(now, &msg),
        ConnCommand::WithAck { build, reply } => {
            let ack_id = conn.next_ack_id();
            acks.insert(ack_id, reply);
            conn.send_service(now, &build(ack_id));
        }
        ConnCommand::CloseClient {
            connection_id,
            error,
        } => conn.close_client(now, &connection_id, error.as_deref()),
    }
}

fn client_connected<R: Runtime>(
    runtime: &R,
    hub: &Arc<HubRuntime>,
    endpoint: usize,
    tx: &ConnTx,
    info: signalr_relay_core::app::ClientInfo,
) {
    let (queue, mut jobs) = mpsc::unbounded::<Job>();
    let entry = Arc::new(ClientEntry {
        info,
        endpoint,
        conn: tx.clone(),
        queue,
        invocations: Default::default(),
        uploads: Default::default(),
        streams: Default::default(),
    });
    lock(&hub.clients).insert(entry.info.connection_id.clone(), entry.clone());
    let ctx = Context {
        hub: hub.clone(),
        client: entry,
        call: None,
    };
    let worker_runtime = runtime.clone();
    runtime.spawn(async move {
        if let Some(f) = ctx.hub.hub.on_connected() {
            f(ctx.clone()).await;
        }
        // Invocations run one at a time, in order, as in ASP.NET Core.
        while let Some(job) = jobs.next().await {
            run_invocation(&worker_runtime, ctx.clone(), job).await;
            ctx.client
                .invocations
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            ctx.hub
                .in_flight
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    });
}

fn completion(
    invocation_id: String,
    result: Result<Option<signalr_relay_core::aspnetcore::RawValue>, HubError>,
) -> HubMessage {
    HubMessage::Completion(Completion {
        headers: Default::default(),
        invocation_id,
        result: match result {
            Ok(None) => CompletionResult::Void,
            Ok(Some(v)) => CompletionResult::Value(v),
            Err(e) => CompletionResult::Error(e.message().to_owned()),
        },
    })
}

async fn run_invocation<R: Runtime>(runtime: &R, ctx: Context, job: Job) {
    let Job { invocation, upload } = job;
    let target = invocation.target.clone();
    let id = invocation.invocation_id.clone();
    let call = Arc::new(Call::new(id.clone(), &invocation.headers));
    let ctx = Context {
        call: Some(call.clone()),
        ..ctx
    };
    let result = match ctx.hub.hub.method(&target).cloned() {
        Some(Method::Invoke(f)) => f(ctx.clone(), invocation.arguments).await,
        Some(Method::Upload(f)) => {
            // Uploading methods run beside the queue: their items arrive while they run.
            let Some(rx) = upload else {
                if let Some(id) = id {
                    ctx.send_message(completion(id, Err(HubError::new("Client sent 0 stream(s), Hub method expects 1."))));
                }
                return;
            };
            let upload = UploadStream::<()>::from_channel(rx);
            let task_ctx = ctx.clone();
            runtime.spawn(async move {
                let result = f(task_ctx.clone(), invocation.arguments, upload).await;
                if let Some(id) = id {
                    task_ctx.send_message(completion(id, result));
                }
            });
            return;
        }
        Some(Method::Stream(_)) => Err(HubError::new(format!(
            "The client attempted to invoke the streaming '{target}' method with a non-streaming invocation."
        ))),
        None => Err(HubError::new(format!("Unknown hub method '{target}'"))),
    };
    if let Some(id) = id {
        // A classic caller gets the error's data (its `D`).
        let data = match &result {
            Err(e) if call.classic => e.data().map(ToString::to_string),
            _ => None,
        };
        let mut message = completion(id, result);
        if let HubMessage::Completion(c) = &mut message {
            if let Some(state) = call.changed_state() {
                c.headers
                    .insert(signalr_relay_core::relay::STATE_HEADER.to_owned(), state);
            }
            if let Some(data) = data {
                c.headers.insert(
                    signalr_relay_core::relay::ERROR_DATA_HEADER.to_owned(),
                    data,
                );
            }
        }
        ctx.send_message(message);
    }
}

fn run_stream<R: Runtime>(runtime: &R, ctx: Context, invocation: Invocation) {
    let Some(id) = invocation.invocation_id.clone() else {
        return;
    };
    let f = match ctx.hub.hub.method(&invocation.target) {
        Some(Method::Stream(f)) => f.clone(),
        Some(_) => {
            let error = format!("The client attempted to invoke the non-streaming '{}' method with a streaming invocation.", invocation.target);
            return ctx.send_message(completion(id, Err(HubError::new(error))));
        }
        None => {
            let error = format!("Unknown hub method '{}'", invocation.target);
            return ctx.send_message(completion(id, Err(HubError::new(error))));
        }
    };
    // The method starts here, before anything else of the client is handled: a cancel that
    // came in the same frame then cancels a running stream (as in ASP.NET Core, where the
    // method always starts first) instead of one that never began.
    let mut stream = match f(ctx.clone(), invocation.arguments) {
        Ok(s) => s,
        Err(e) => return ctx.send_message(completion(id, Err(e))),
    };
    let task_ctx = ctx.clone();
    let task_id = id.clone();
    let (task, handle) = abortable(async move {
        let mut end = Ok(None);
        while let Some(item) = stream.next().await {
            match item {
                Ok(item) => task_ctx.send_message(HubMessage::StreamItem(StreamItem {
                    headers: Default::default(),
                    invocation_id: task_id.clone(),
                    item,
                })),
                Err(e) => {
                    end = Err(e);
                    break;
                }
            }
        }
        // Whoever takes the stream's entry sends its completion: this task, or the client's
        // disconnect (which then ends it with an error).
        if lock(&task_ctx.client.streams).remove(&task_id).is_some() {
            task_ctx.send_message(completion(task_id, end));
        }
    });
    lock(&ctx.client.streams).insert(id, handle);
    runtime.spawn(async move {
        let _ = task.await;
    });
}

fn client_message<R: Runtime>(
    runtime: &R,
    hub: &Arc<HubRuntime>,
    connection_id: &str,
    message: HubMessage,
) {
    let Some(client) = lock(&hub.clients).get(connection_id).cloned() else {
        return;
    };
    let ctx = Context {
        hub: hub.clone(),
        client: client.clone(),
        call: None,
    };
    let refuse = |id: Option<String>, why: String| {
        tracing::debug!(%connection_id, "refused an invocation: {why}");
        if let Some(id) = id {
            ctx.send_message(completion(id, Err(HubError::new(why))));
        }
    };
    let max_streams = hub.max_streams;
    match message {
        HubMessage::Invocation(invocation) => {
            use std::sync::atomic::Ordering;
            if client.invocations.load(Ordering::Acquire) >= hub.max_invocations {
                return refuse(
                    invocation.invocation_id,
                    "Too many invocations are pending for this connection.".to_owned(),
                );
            }
            let upload = match invocation.stream_ids.first() {
                None => None,
                Some(stream_id) => {
                    let mut uploads = lock(&client.uploads);
                    if uploads.contains_key(stream_id) {
                        drop(uploads);
                        let why = format!("Stream ID '{stream_id}' is already in use.");
                        return refuse(invocation.invocation_id, why);
                    }
                    if uploads.len() >= max_streams {
                        drop(uploads);
                        let why = "Too many streams are open for this connection.".to_owned();
                        return refuse(invocation.invocation_id, why);
                    }
                    let (items, rx) = mpsc::unbounded();
                    uploads.insert(stream_id.clone(), items);
                    Some(rx)
                }
            };
            client.invocations.fetch_add(1, Ordering::AcqRel);
            hub.in_flight.fetch_add(1, Ordering::AcqRel);
            let _ = client.queue.unbounded_send(Job { invocation, upload });
        }
        HubMessage::StreamInvocation(invocation) => {
            let streams = lock(&client.streams);
            let reused = invocation
                .invocation_id
                .as_ref()
                .is_some_and(|id| streams.contains_key(id));
            let full = streams.len() >= max_streams;
            drop(streams);
            if reused {
                let id = invocation.invocation_id.clone().unwrap_or_default();
                return refuse(
                    invocation.invocation_id,
                    format!("Invocation ID '{id}' is already in use."),
                );
            }
            if full {
                return refuse(
                    invocation.invocation_id,
                    "Too many streams are open for this connection.".to_owned(),
                );
            }
            run_stream(runtime, ctx, invocation);
        }
        HubMessage::StreamItem(item) => {
            if let Some(sender) = lock(&client.uploads).get(&item.invocation_id) {
                let _ = sender.unbounded_send(Ok(item.item));
            }
        }
        // The end of an upload stream (with the client's error, if it failed), or else a
        // client result.
        HubMessage::Completion(c) if lock(&client.uploads).contains_key(&c.invocation_id) => {
            let sender = lock(&client.uploads).remove(&c.invocation_id);
            if let (Some(sender), CompletionResult::Error(error)) = (sender, c.result) {
                let _ = sender.unbounded_send(Err(HubError::new(error)));
            }
        }
        HubMessage::Completion(c) => client_completion(hub, &client, c),
        HubMessage::CancelInvocation(CancelInvocation { invocation_id, .. }) => {
            if let Some(handle) = lock(&client.streams).remove(&invocation_id) {
                handle.abort();
            }
        }
        _ => {}
    }
}

fn result_of(result: CompletionResult) -> Result<Option<RawValue>, InvokeError> {
    match result {
        CompletionResult::Void => Ok(None),
        CompletionResult::Value(v) => Ok(Some(v)),
        CompletionResult::Error(e) => Err(InvokeError::Client(e)),
    }
}

/// A client answered a client invocation: hand the result to whoever awaits it here, and tell
/// the relay (which forwards it when another app server made the invocation).
///
/// A completion counts only from the client the invocation was sent to: any other client's
/// (a forgery, or a mistake) is ignored and logged, and the real answer still counts.
fn client_completion(hub: &Arc<HubRuntime>, client: &ClientEntry, completion: Completion) {
    let sender = &client.info.connection_id;
    let local = take_result(hub, &completion.invocation_id, sender);
    let routed_for = match local {
        Some(_) => None,
        None => {
            let mut routed = lock(&hub.routed);
            match routed.get(&completion.invocation_id) {
                Some((_, owed_by)) if owed_by == sender => routed
                    .remove(&completion.invocation_id)
                    .map(|(caller, _)| caller),
                _ => None,
            }
        }
    };
    if local.is_none() && routed_for.is_none() {
        tracing::warn!(
            connection_id = %sender,
            invocation_id = %completion.invocation_id,
            "ignored a completion for an invocation this client was not asked"
        );
        return;
    }
    let protocol = client.info.protocol;
    let mut payload = Vec::new();
    if routed_for.is_some() {
        let _ = protocol.write_message(&HubMessage::Completion(completion.clone()), &mut payload);
    }
    let _ = client
        .conn
        .unbounded_send(ConnCommand::Service(ServiceMessage::ClientCompletion(
            service::ClientCompletion {
                invocation_id: completion.invocation_id.clone(),
                connection_id: client.info.connection_id.clone(),
                caller_server_id: routed_for.unwrap_or_else(|| hub.server_id.clone()),
                protocol: protocol.name().to_owned(),
                payload: Bytes::from(payload),
                ext: service::Ext {
                    protocol: Some(protocol.name().to_owned()),
                    ..service::Ext::default()
                },
            },
        )));
    if let Some(pending) = local {
        let _ = pending
            .reply
            .send(result_of(completion.result).map(|v| (protocol, v)));
    }
}

/// The result awaited for `invocation_id`, if `connection_id` is the client it was asked of.
fn take_result(
    hub: &HubRuntime,
    invocation_id: &str,
    connection_id: &str,
) -> Option<crate::sdk::hub::PendingResult> {
    let mut results = lock(&hub.results);
    let owed = results
        .get(invocation_id)
        .is_some_and(|p| p.connection_id == connection_id);
    owed.then(|| results.remove(invocation_id)).flatten()
}

/// Client-result traffic from the relay.
fn client_result(hub: &Arc<HubRuntime>, message: ServiceMessage) {
    match message {
        ServiceMessage::ClientInvocation(m) => {
            // Another app server awaits this result; its client is ours.
            lock(&hub.routed).insert(m.invocation_id, (m.caller_server_id, m.connection_id));
        }
        ServiceMessage::ClientCompletion(m) => {
            let Some(pending) = take_result(hub, &m.invocation_id, &m.connection_id) else {
                return;
            };
            // Written by the client's app server in the client's protocol, which it names.
            let protocol = signalr_relay_core::aspnetcore::HubProtocol::from_name(&m.protocol)
                .unwrap_or(pending.protocol);
            let mut decoder = HubDecoder::new(protocol, m.payload.len().max(1));
            decoder.push(&m.payload);
            let result = match decoder.next_message() {
                Ok(Some(HubMessage::Completion(c))) => result_of(c.result).map(|v| (protocol, v)),
                _ => Err(InvokeError::InvalidResult(
                    "the relayed completion could not be decoded".to_owned(),
                )),
            };
            let _ = pending.reply.send(result);
        }
        ServiceMessage::ErrorCompletion(m) => {
            // Asked through several relays, the client is on one of them: the others answer
            // that they do not know it, and an error counts once no relay is left to answer.
            let owed = lock(&hub.results)
                .get(&m.invocation_id)
                .is_some_and(|p| p.connection_id == m.connection_id);
            if owed {
                hub.unanswered_by(&m.invocation_id, 1, m.error);
            }
        }
        _ => {}
    }
}

/// Why a disconnected client's streams end.
const GONE: &str = "The connection was closed or moved to another app server.";

fn client_disconnected<R: Runtime>(runtime: &R, hub: &Arc<HubRuntime>, connection_id: &str) {
    let Some(client) = lock(&hub.clients).remove(connection_id) else {
        return;
    };
    let ctx = Context {
        hub: hub.clone(),
        client,
        call: None,
    };
    // Streams end with an error rather than silently: a client that moved to another app
    // server still hears (through the relay) that they are over.
    for (id, handle) in std::mem::take(&mut *lock(&ctx.client.streams)) {
        handle.abort();
        ctx.send_message(completion(id, Err(HubError::new(GONE))));
    }
    // A method reading an upload learns that it was cut short, not that it ended.
    for (_, items) in std::mem::take(&mut *lock(&ctx.client.uploads)) {
        let _ = items.unbounded_send(Err(HubError::new(GONE)));
    }
    // Invocations routed for other app servers to this client will never be answered now.
    let gone = ctx.client.info.connection_id.as_str();
    lock(&hub.routed).retain(|_, (_, connection_id)| connection_id != gone);
    ctx.client.queue.close_channel();
    if let Some(f) = ctx.hub.hub.on_disconnected().cloned() {
        runtime.spawn(async move { f(ctx).await });
    }
}
