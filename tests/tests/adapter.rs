//! The relay's driver (the glue), on both runtimes, over loopback sockets.
//!
//! These check the shovelling contract only: requests reach the core and its responses come
//! back; WebSocket messages go both ways in order; event streams and held polls carry what
//! the core says; a peer that stops reading is closed without harming the others; the glue
//! reads the time from its runtime. What the relay decides is the core's tests' business.
//! The peers here are minimal: the service protocol spoken by hand, and bare WebSocket and
//! HTTP clients.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::http::HeaderValue;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use signalr_relay_core::auth::{sign, Algorithm, Claims};
use signalr_relay_core::relay::RelayConfig;
use signalr_relay_core::service::{self, ServiceDecoder, ServiceMessage};
use signalr_relay_smol::{SmolListener, SmolRuntime};
use signalr_relay_tokio::{Listener, Runtime, ServeOptions, TokioListener, TokioRuntime};
use smol_hyper::rt::FuturesIo;

const KEY: &str = "adapter-test-key";

/// How long a scenario on smol may take in all before the test fails, on a timer of
/// async-io's own: the scenarios' steps are guarded by the runtime's timers, and a fault in
/// smol's timer table would leave those guards asleep too.
const WATCHDOG: Duration = Duration::from_secs(180);

/// How long any one step may take before the test fails (a guard against hangs, not a
/// measurement).
const PATIENCE: Duration = Duration::from_secs(20);

fn config() -> RelayConfig {
    let mut config = RelayConfig::default();
    config.access_keys = vec![KEY.to_owned()];
    config
}

fn token(path: &str, user: Option<&str>) -> String {
    // One moment for every token of the run: a connection is bound to the very token it
    // negotiated with, and two calls a second apart would sign two different ones.
    static NOW: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let now = *NOW.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let mut claims = Claims::issued_at(now, 3600);
    claims.aud.push(format!("http://127.0.0.1{path}?hub=chat"));
    claims.nameid = user.map(str::to_owned);
    sign(&claims, KEY.as_bytes(), Algorithm::Hs256)
}

/// Runs `scenario` against a relay served on tokio, on loopback.
fn on_tokio<F, Fut>(config: RelayConfig, scenario: F)
where
    F: FnOnce(TokioRuntime, SocketAddr) -> Fut,
    Fut: Future<Output = ()>,
{
    on_tokio_with(config, ServeOptions::default(), scenario);
}

/// [`on_tokio`], served with `options`.
fn on_tokio_with<F, Fut>(config: RelayConfig, options: ServeOptions, scenario: F)
where
    F: FnOnce(TokioRuntime, SocketAddr) -> Fut,
    Fut: Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let listener = TokioListener::bind("127.0.0.1:0".parse().expect("an address"))
            .await
            .expect("bound");
        let addr = listener.local_addr().expect("an address");
        tokio::spawn(serve_with(TokioRuntime, listener, config, options));
        scenario(TokioRuntime, addr).await;
    });
}

/// Runs `scenario` against a relay served on smol, on loopback.
fn on_smol<F, Fut>(config: RelayConfig, scenario: F)
where
    F: FnOnce(SmolRuntime, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    on_smol_with(config, ServeOptions::default(), scenario);
}

/// [`on_smol`], served with `options`.
fn on_smol_with<F, Fut>(config: RelayConfig, options: ServeOptions, scenario: F)
where
    F: FnOnce(SmolRuntime, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    signalr_relay_smol::block_on(async move {
        let listener = SmolListener::bind("127.0.0.1:0".parse().expect("an address"))
            .await
            .expect("bound");
        let addr = listener.local_addr().expect("an address");
        SmolRuntime.spawn(serve_with(SmolRuntime, listener, config, options));
        // Outside the runtime's own timers, which the scenario's guards use.
        let watchdog = async {
            async_io::Timer::after(WATCHDOG).await;
            panic!("the scenario did not end in {WATCHDOG:?}");
        };
        // The watchdog first: once it fires, it is heard.
        futures_util::future::select(
            std::pin::pin!(watchdog),
            std::pin::pin!(scenario(SmolRuntime, addr)),
        )
        .await;
    });
}

async fn serve_forever<R: Runtime, L: Listener>(runtime: R, listener: L, config: RelayConfig) {
    signalr_relay_tokio::serve(runtime, listener, config, ServeOptions::default()).await;
}

async fn serve_with<R: Runtime, L: Listener>(
    runtime: R,
    listener: L,
    config: RelayConfig,
    options: ServeOptions,
) {
    signalr_relay_tokio::serve(runtime, listener, config, options).await;
}

/// One scenario, as one test per runtime, served with the config and options `$setup` makes.
macro_rules! on_both_runtimes_with {
    ($scenario:ident, $setup:ident) => {
        mod $scenario {
            #[test]
            fn tokio() {
                let (config, options) = super::$setup();
                super::on_tokio_with(config, options, super::$scenario);
            }

            #[test]
            fn smol() {
                let (config, options) = super::$setup();
                super::on_smol_with(config, options, super::$scenario);
            }
        }
    };
}

/// One scenario, as one test per runtime.
macro_rules! on_both_runtimes {
    ($scenario:ident) => {
        mod $scenario {
            #[test]
            fn tokio() {
                super::on_tokio(super::config(), super::$scenario);
            }

            #[test]
            fn smol() {
                super::on_smol(super::config(), super::$scenario);
            }
        }
    };
}

/// Fails the test if `step` takes longer than [`PATIENCE`].
async fn within<R: Runtime, T>(runtime: &R, what: &str, step: impl Future<Output = T>) -> T {
    let deadline = runtime.sleep_until(runtime.now() + PATIENCE);
    futures_util::pin_mut!(step);
    match futures_util::future::select(step, deadline).await {
        futures_util::future::Either::Left((value, _)) => value,
        futures_util::future::Either::Right(_) => panic!("timed out waiting for {what}"),
    }
}

// ------------------------------------------------------------------------------ peers

/// One HTTP request on a connection of its own.
async fn http<R: Runtime>(
    runtime: &R,
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
) -> Response<Incoming> {
    let stream = runtime.connect(addr).await.expect("connected");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(FuturesIo::new(stream))
        .await
        .expect("an HTTP connection");
    runtime.spawn(async move {
        let _ = connection.await;
    });
    sender.send_request(request).await.expect("a response")
}

fn with_token(method: &str, path_and_query: &str, bearer: &str) -> hyper::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path_and_query)
        .header("Host", "127.0.0.1")
        .header("Authorization", format!("Bearer {bearer}"))
}

fn get(path_and_query: &str, bearer: &str) -> hyper::http::request::Builder {
    with_token("GET", path_and_query, bearer)
}

fn post(path_and_query: &str, bearer: &str) -> hyper::http::request::Builder {
    with_token("POST", path_and_query, bearer)
}

async fn body_text(response: Response<Incoming>) -> (u16, String) {
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("a body");
    (
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    )
}

/// Negotiates a client connection: its token.
async fn negotiate<R: Runtime>(runtime: &R, addr: SocketAddr) -> String {
    negotiate_as(runtime, addr, &token("/client/", None)).await
}

/// Negotiates with `bearer`: the connection token.
async fn negotiate_as<R: Runtime>(runtime: &R, addr: SocketAddr, bearer: &str) -> String {
    let request = post("/client/negotiate?hub=chat&negotiateVersion=1", bearer)
        .body(Full::default())
        .expect("a request");
    let (status, body) = body_text(http(runtime, addr, request).await).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    json["connectionToken"]
        .as_str()
        .expect("a connection token")
        .to_owned()
}

type Ws<R> = WebSocketStream<<R as Runtime>::Stream>;

async fn websocket<R: Runtime>(runtime: &R, addr: SocketAddr, path: &str, bearer: &str) -> Ws<R> {
    let stream = runtime.connect(addr).await.expect("connected");
    let mut request = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("a request");
    request.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&format!("Bearer {bearer}")).expect("a header"),
    );
    let (ws, _) = async_tungstenite::client_async(request, stream)
        .await
        .expect("a WebSocket");
    ws
}

/// An app server's connection, speaking the service protocol by hand.
struct AppServer<R: Runtime> {
    ws: Ws<R>,
    decoder: ServiceDecoder,
}

impl<R: Runtime> AppServer<R> {
    async fn connect(runtime: &R, addr: SocketAddr) -> Self {
        Self::connect_as(runtime, addr, service::ConnectionType::Default).await
    }

    /// A server connection whose handshake says `kind` (Weak: a management connection).
    async fn connect_as(runtime: &R, addr: SocketAddr, kind: service::ConnectionType) -> Self {
        let ws = websocket(
            runtime,
            addr,
            "/server/?hub=chat",
            &token("/server/", Some("app")),
        )
        .await;
        let mut server = Self {
            ws,
            decoder: ServiceDecoder::default(),
        };
        server
            .send(&ServiceMessage::HandshakeRequest(
                service::HandshakeRequest {
                    connection_type: kind,
                    ..service::HandshakeRequest::default()
                },
            ))
            .await;
        let response = server.next(runtime).await;
        assert!(
            matches!(&response, ServiceMessage::HandshakeResponse(r) if r.error_message.is_empty()),
            "{response:?}"
        );
        server
    }

    async fn send(&mut self, msg: &ServiceMessage) {
        let mut bytes = Vec::new();
        msg.write(&mut bytes).expect("encodable");
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .expect("sent");
    }

    /// The next service message that is not a ping.
    async fn next(&mut self, runtime: &R) -> ServiceMessage {
        loop {
            if let Some(msg) = self.decoder.next_message().expect("the service protocol") {
                if !matches!(msg, ServiceMessage::Ping(_)) {
                    return msg;
                }
                continue;
            }
            let data = within(runtime, "a service message", self.ws.next())
                .await
                .expect("the relay kept the server connection")
                .expect("a message");
            if let Message::Binary(data) = data {
                self.decoder.push(&data);
            }
        }
    }

    /// The next service message that is not a ping, if one is there already.
    fn try_next(&mut self) -> Option<ServiceMessage> {
        loop {
            if let Some(msg) = self.decoder.next_message().expect("the service protocol") {
                if !matches!(msg, ServiceMessage::Ping(_)) {
                    return Some(msg);
                }
                continue;
            }
            match futures_util::FutureExt::now_or_never(self.ws.next())? {
                Some(Ok(Message::Binary(data))) => self.decoder.push(&data),
                Some(Ok(_)) => {}
                other => panic!("the relay dropped the server connection: {other:?}"),
            }
        }
    }

    /// Waits for the client's OpenConnection and handshake: its connection id.
    async fn opened(&mut self, runtime: &R) -> String {
        let ServiceMessage::OpenConnection(open) = self.next(runtime).await else {
            panic!("expected OpenConnection")
        };
        let ServiceMessage::ConnectionData(handshake) = self.next(runtime).await else {
            panic!("expected the handshake")
        };
        assert_eq!(handshake.connection_id, open.connection_id);
        assert_eq!(
            &handshake.payload[..],
            b"{\"protocol\":\"json\",\"version\":1}\x1e"
        );
        open.connection_id
    }

    /// Waits for the CloseConnection of a client.
    async fn closed(&mut self, runtime: &R, connection_id: &str) {
        let msg = self.next(runtime).await;
        assert!(
            matches!(&msg, ServiceMessage::CloseConnection(c) if c.connection_id == connection_id),
            "{msg:?}"
        );
    }

    async fn data(&mut self, connection_id: &str, payload: &'static [u8]) {
        self.send(&ServiceMessage::ConnectionData(service::ConnectionData {
            connection_id: connection_id.to_owned(),
            payload: Bytes::from_static(payload),
            ext: service::Ext::default(),
        }))
        .await;
    }
}

async fn next_text<R: Runtime>(runtime: &R, ws: &mut Ws<R>) -> String {
    loop {
        match within(runtime, "a client message", ws.next()).await {
            Some(Ok(Message::Text(text))) => return text.to_string(),
            Some(Ok(Message::Close(frame))) => panic!("closed: {frame:?}"),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
}

const HANDSHAKE: &[u8] = b"{\"protocol\":\"json\",\"version\":1}\x1e";

/// A client of `bearer`, negotiated and connected by WebSocket, its JSON handshake sent.
async fn handshaken<R: Runtime>(runtime: &R, addr: SocketAddr, bearer: &str) -> Ws<R> {
    let id = negotiate_as(runtime, addr, bearer).await;
    let path = format!("/client/?hub=chat&id={id}");
    let mut client = websocket(runtime, addr, &path, bearer).await;
    client
        .send(Message::Text(
            std::str::from_utf8(HANDSHAKE).expect("text").into(),
        ))
        .await
        .expect("sent");
    client
}

/// A client of `bearer`, negotiated and connected by WebSocket, its handshake answered by
/// `server`: the client's socket and its connection id.
async fn connected_client<R: Runtime>(
    runtime: &R,
    addr: SocketAddr,
    server: &mut AppServer<R>,
    bearer: &str,
) -> (Ws<R>, String) {
    let mut client = handshaken(runtime, addr, bearer).await;
    let connection_id = server.opened(runtime).await;
    server.data(&connection_id, b"{}\x1e").await;
    assert_eq!(next_text(runtime, &mut client).await, "{}\x1e");
    (client, connection_id)
}

/// Sends the JSON handshake on an HTTP transport's `path` (a send, answered 200).
async fn send_handshake<R: Runtime>(runtime: &R, addr: SocketAddr, path: &str, bearer: &str) {
    let send = post(path, bearer)
        .body(Full::new(Bytes::from_static(HANDSHAKE)))
        .expect("a request");
    assert_eq!(body_text(http(runtime, addr, send).await).await.0, 200);
}

/// A long-polling client of `bearer`: negotiated, its first poll answered at once and empty,
/// its handshake sent and the client opened to `server`. Its path and its connection id.
async fn long_polling_client<R: Runtime>(
    runtime: &R,
    addr: SocketAddr,
    server: &mut AppServer<R>,
    bearer: &str,
) -> (String, String) {
    let id = negotiate(runtime, addr).await;
    let path = format!("/client/?hub=chat&id={id}");
    let first = get(&path, bearer).body(Full::default()).expect("a request");
    assert_eq!(
        body_text(http(runtime, addr, first).await).await,
        (200, String::new())
    );
    send_handshake(runtime, addr, &path, bearer).await;
    (path, server.opened(runtime).await)
}

// ------------------------------------------------------------------------------ scenarios

async fn websocket_messages_flow_both_ways<R: Runtime>(runtime: R, addr: SocketAddr) {
    let rt = &runtime;
    let mut server = AppServer::connect(rt, addr).await;
    let id = negotiate(rt, addr).await;
    let path = format!("/client/?hub=chat&id={id}");
    let mut client = websocket(rt, addr, &path, &token("/client/", None)).await;
    client
        .send(Message::Text(
            std::str::from_utf8(HANDSHAKE).expect("text").into(),
        ))
        .await
        .expect("sent");
    let connection_id = server.opened(rt).await;
    server.data(&connection_id, b"{}\x1e").await;
    assert_eq!(next_text(rt, &mut client).await, "{}\x1e");
    // In order, both ways.
    for n in 0..20 {
        let text = format!("{{\"type\":1,\"target\":\"Echo\",\"arguments\":[{n}]}}\x1e");
        client
            .send(Message::Text(text.clone().into()))
            .await
            .expect("sent");
        let ServiceMessage::ConnectionData(up) = server.next(rt).await else {
            panic!("expected the client's message")
        };
        assert_eq!(String::from_utf8_lossy(&up.payload), text);
    }
    server
        .send(&ServiceMessage::BroadcastData(service::BroadcastData {
            payloads: service::Payloads(vec![(
                "json".into(),
                Bytes::from_static(b"{\"type\":1,\"target\":\"all\",\"arguments\":[]}\x1e"),
            )]),
            ..service::BroadcastData::default()
        }))
        .await;
    assert_eq!(
        next_text(rt, &mut client).await,
        "{\"type\":1,\"target\":\"all\",\"arguments\":[]}\x1e"
    );
    // The client leaves: its app server hears of it.
    client.close(None).await.expect("closed");
    server.closed(rt, &connection_id).await;
}
on_both_runtimes!(websocket_messages_flow_both_ways);

/// An app server's message over the relay's limit, in one WebSocket message as the SDK
/// writes it, is read past and skipped: the app server gets a ServiceEvent, and the
/// connection, and its client, go on.
async fn an_oversize_app_server_message_is_skipped<R: Runtime>(runtime: R, addr: SocketAddr) {
    let rt = &runtime;
    let mut server = AppServer::connect(rt, addr).await;
    let anyone = token("/client/", None);
    let (mut client, connection_id) = connected_client(rt, addr, &mut server, &anyone).await;
    let limit = config().max_server_message_size;
    let big = format!(
        "{{\"type\":1,\"target\":\"big\",\"arguments\":[\"{}\"]}}\x1e",
        "x".repeat(limit + 100)
    );
    server
        .send(&ServiceMessage::BroadcastData(service::BroadcastData {
            payloads: service::Payloads(vec![("json".into(), Bytes::from(big))]),
            ..service::BroadcastData::default()
        }))
        .await;
    let ServiceMessage::ServiceEvent(event) = server.next(rt).await else {
        panic!("expected a ServiceEvent")
    };
    assert!(event.message.contains("skipped"), "{}", event.message);
    server
        .send(&ServiceMessage::BroadcastData(service::BroadcastData {
            payloads: service::Payloads(vec![(
                "json".into(),
                Bytes::from_static(b"{\"type\":1,\"target\":\"after\",\"arguments\":[]}\x1e"),
            )]),
            ..service::BroadcastData::default()
        }))
        .await;
    assert_eq!(
        next_text(rt, &mut client).await,
        "{\"type\":1,\"target\":\"after\",\"arguments\":[]}\x1e"
    );
    client.close(None).await.expect("closed");
    server.closed(rt, &connection_id).await;
}
on_both_runtimes!(an_oversize_app_server_message_is_skipped);

/// The next binary WebSocket message from the relay whose service message has `type`, as raw
/// bytes (length prefix removed): what the SDK's reader sees, element count included.
async fn next_raw_of_type<R: Runtime>(runtime: &R, server: &mut AppServer<R>, kind: u8) -> Vec<u8> {
    loop {
        let data = within(runtime, "a service message", server.ws.next())
            .await
            .expect("the relay kept the server connection")
            .expect("a message");
        let Message::Binary(data) = data else {
            continue;
        };
        // One byte of length prefix for these small messages, then the array header.
        let body = data[1..].to_vec();
        let type_at = usize::from(body[0] == 0xdc) * 2 + 1;
        if body.get(type_at) == Some(&kind) {
            return body;
        }
    }
}

/// What the Azure SDK reads from the service, from a raw server connection: Ack in its
/// six-element form, GroupMemberQuery answered with the members, `servers` pings with
/// .NET ticks, and a RefreshAuth (41) answered with a failed Ack instead of silence.
async fn the_service_protocol_as_the_sdk_reads_it<R: Runtime>(runtime: R, addr: SocketAddr) {
    let rt = &runtime;
    let mut server = AppServer::connect(rt, addr).await;
    let bob = token("/client/", Some("bob"));
    let (mut client, connection_id) = connected_client(rt, addr, &mut server, &bob).await;
    server
        .send(&ServiceMessage::JoinGroupWithAck(
            service::GroupMembershipWithAck {
                connection_id: connection_id.clone(),
                group: Some("g".into()),
                ack_id: 5,
                ext: service::Ext::default(),
            },
        ))
        .await;
    // [20, 5, Ok, "", {}, nil]
    let ack = next_raw_of_type(rt, &mut server, 20).await;
    assert_eq!(ack, [0x96, 20, 5, 1, 0xa0, 0x80, 0xc0]);
    server
        .send(&ServiceMessage::GroupMemberQuery(
            service::GroupMemberQuery {
                ext: service::Ext::default(),
                group: "g".into(),
                ack_id: 6,
                max: 10,
                continuation_token: None,
            },
        ))
        .await;
    let members = next_raw_of_type(rt, &mut server, 20).await;
    assert_eq!(&members[..4], [0x96, 20, 6, 1]);
    // The payload: [[[connectionId, "bob"]], nil].
    let mut expected = vec![0x92, 0x91, 0x92, 0xa0 | connection_id.len() as u8];
    expected.extend_from_slice(connection_id.as_bytes());
    expected.extend_from_slice(&[0xa3, b'b', b'o', b'b', 0xc0]);
    assert!(
        members.ends_with(&expected),
        "{members:02x?} should end with {expected:02x?}"
    );
    server
        .send(&ServiceMessage::Ping(service::Ping::pairs([(
            "servers", "",
        )])))
        .await;
    let reply = loop {
        let raw = next_raw_of_type(rt, &mut server, 3).await;
        if let Ok(ServiceMessage::Ping(p)) = ServiceMessage::parse(&Bytes::from(raw)) {
            if p.get("servers").is_some() {
                break p;
            }
        }
    };
    let (ticks, ids) = reply
        .get("servers")
        .and_then(|v| v.split_once(':'))
        .expect("ticks:ids");
    assert!(
        ticks.parse::<i64>().expect("ticks") > 638_000_000_000_000_000,
        "{ticks}"
    );
    assert_eq!(ids, "app");
    // [41, "conn", ["a"], 1700000000, 77, {}] framed.
    const REFRESH: [u8; 18] = [
        0x11, 0x96, 41, 0xa4, b'c', b'o', b'n', b'n', 0x91, 0xa1, b'a', 0xce, 0x65, 0x53, 0xf1,
        0x00, 77, 0x80,
    ];
    server
        .ws
        .send(Message::Binary(Bytes::from_static(&REFRESH)))
        .await
        .expect("sent");
    let failed = next_raw_of_type(rt, &mut server, 20).await;
    assert_eq!(&failed[..4], [0x96, 20, 77, 4]);
    client.close(None).await.expect("closed");
}
on_both_runtimes!(the_service_protocol_as_the_sdk_reads_it);

async fn event_streams_and_long_polls_carry_what_the_relay_says<R: Runtime>(
    runtime: R,
    addr: SocketAddr,
) {
    let rt = &runtime;
    let bearer = token("/client/", None);
    let mut server = AppServer::connect(rt, addr).await;
    // Server-Sent Events: a stream that stays open, and POSTs.
    let id = negotiate(rt, addr).await;
    let path = format!("/client/?hub=chat&id={id}");
    let request = get(&path, &bearer)
        .header("Accept", "text/event-stream")
        .body(Full::default())
        .expect("a request");
    let response = http(rt, addr, request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.into_body();
    let mut next_chunk = async || {
        let frame = within(rt, "an event", stream.frame())
            .await
            .expect("the stream is open")
            .expect("a frame");
        String::from_utf8_lossy(&frame.into_data().expect("data")).into_owned()
    };
    assert_eq!(next_chunk().await, ":\r\n");
    send_handshake(rt, addr, &path, &bearer).await;
    let connection_id = server.opened(rt).await;
    server.data(&connection_id, b"{}\x1e").await;
    assert_eq!(next_chunk().await, "data: {}\x1e\r\n\r\n");

    // Long polling: the first poll returns at once, the next is held until there is data.
    let (path, connection_id) = long_polling_client(rt, addr, &mut server, &bearer).await;
    let poll = || {
        get(&path, &bearer)
            .body(Full::default())
            .expect("a request")
    };
    let held = http(rt, addr, poll());
    let answer = async {
        server.data(&connection_id, b"{}\x1e").await;
    };
    let (response, ()) = futures_util::future::join(held, answer).await;
    assert_eq!(body_text(response).await, (200, "{}\x1e".to_owned()));
    let delete = with_token("DELETE", &path, &bearer)
        .body(Full::default())
        .expect("a request");
    assert_eq!(body_text(http(rt, addr, delete).await).await.0, 202);
    server.closed(rt, &connection_id).await;
}
on_both_runtimes!(event_streams_and_long_polls_carry_what_the_relay_says);

/// Sends the client `connection_id` messages of 8 KiB from `server`, up to 64 MiB (more than
/// a socket and a client's queue hold), until the relay tells the app server it is gone.
async fn flood_until_closed<R: Runtime>(
    runtime: &R,
    server: &mut AppServer<R>,
    connection_id: &str,
) {
    let chunk = Bytes::from(format!(
        "{{\"type\":1,\"target\":\"m\",\"arguments\":[\"{}\"]}}\x1e",
        "x".repeat(8 * 1024)
    ));
    let is_gone = |msg: &ServiceMessage| matches!(msg, ServiceMessage::CloseConnection(c) if c.connection_id == connection_id);
    for _ in 0..8 * 1024 {
        server
            .send(&ServiceMessage::ConnectionData(service::ConnectionData {
                connection_id: connection_id.to_owned(),
                payload: chunk.clone(),
                ext: service::Ext::default(),
            }))
            .await;
        if server.try_next().is_some_and(|msg| is_gone(&msg)) {
            return;
        }
    }
    while !is_gone(&server.next(runtime).await) {}
}

async fn a_client_that_stops_reading_is_closed_and_the_others_are_not<R: Runtime>(
    runtime: R,
    addr: SocketAddr,
) {
    let rt = &runtime;
    let mut server = AppServer::connect(rt, addr).await;
    let connect = async |server: &mut AppServer<R>| {
        let id = negotiate(rt, addr).await;
        let path = format!("/client/?hub=chat&id={id}");
        let mut ws = websocket(rt, addr, &path, &token("/client/", None)).await;
        ws.send(Message::Text(
            std::str::from_utf8(HANDSHAKE).expect("text").into(),
        ))
        .await
        .expect("sent");
        let connection_id = server.opened(rt).await;
        server.data(&connection_id, b"{}\x1e").await;
        (ws, connection_id)
    };
    let (_stalled, stalled_id) = connect(&mut server).await;
    let (mut bystander, bystander_id) = connect(&mut server).await;
    assert_eq!(next_text(rt, &mut bystander).await, "{}\x1e");
    flood_until_closed(rt, &mut server, &stalled_id).await;
    // The other client noticed nothing.
    server
        .data(
            &bystander_id,
            b"{\"type\":1,\"target\":\"still\",\"arguments\":[]}\x1e",
        )
        .await;
    assert_eq!(
        next_text(rt, &mut bystander).await,
        "{\"type\":1,\"target\":\"still\",\"arguments\":[]}\x1e"
    );
}
on_both_runtimes!(a_client_that_stops_reading_is_closed_and_the_others_are_not);

/// A long poll whose answer its client never reads: 12 MiB, more than the sockets between
/// them hold (a send buffer of 4 MiB at most, and a receive window that does not grow while
/// nothing is read). The relay drops the connection once its socket has taken nothing for
/// the write timeout (a second here), rather than hold it and the answer for as long as the
/// peer likes; another client notices nothing.
async fn a_long_poll_never_read_is_dropped_at_the_write_timeout<R: Runtime>(
    runtime: R,
    addr: SocketAddr,
) {
    use futures_util::{AsyncReadExt, AsyncWriteExt};
    let rt = &runtime;
    let bearer = token("/client/", None);
    let mut server = AppServer::connect(rt, addr).await;
    let (mut bystander, bystander_id) = connected_client(rt, addr, &mut server, &bearer).await;
    let (path, stalled_id) = long_polling_client(rt, addr, &mut server, &bearer).await;
    // The poll, on a socket that reads nothing yet; then its answer, one message.
    let mut stalled = rt.connect(addr).await.expect("connected");
    let poll =
        format!("GET {path} HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {bearer}\r\n\r\n");
    stalled.write_all(poll.as_bytes()).await.expect("sent");
    let message = format!(
        "{{\"type\":1,\"target\":\"m\",\"arguments\":[\"{}\"]}}\x1e",
        "x".repeat(12 * 1024 * 1024)
    );
    server
        .send(&ServiceMessage::ConnectionData(service::ConnectionData {
            connection_id: stalled_id,
            payload: Bytes::from(message),
            ext: service::Ext::default(),
        }))
        .await;
    // Three write timeouts pass with nothing read; then what did arrive is read, to its end.
    rt.sleep_until(rt.now() + Duration::from_secs(3)).await;
    let mut received = Vec::new();
    within(
        rt,
        "the stalled connection's end",
        stalled.read_to_end(&mut received),
    )
    .await
    .expect("read");
    let (head_end, length) = response_head(&received).expect("a response head");
    let head = String::from_utf8_lossy(&received[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let length = length.expect("a length");
    let body = received.len() - head_end;
    assert!(
        body < length,
        "the whole answer ({body} of {length} bytes) reached a peer that read nothing for 3 s"
    );
    // The other client noticed nothing.
    server.data(&bystander_id, b"{\"type\":6}\x1e").await;
    assert_eq!(next_text(rt, &mut bystander).await, "{\"type\":6}\x1e");
}

/// An event stream whose client stops reading: once more waits for it than its queue holds,
/// the relay drops its socket at once. The write timeout is ten minutes here, so only that
/// abort can end the connection within the test's patience. Another client notices nothing.
async fn an_event_stream_that_stops_reading_is_dropped_at_once<R: Runtime>(
    runtime: R,
    addr: SocketAddr,
) {
    use futures_util::{AsyncReadExt, AsyncWriteExt};
    let rt = &runtime;
    let bearer = token("/client/", None);
    let mut server = AppServer::connect(rt, addr).await;
    let (mut bystander, bystander_id) = connected_client(rt, addr, &mut server, &bearer).await;
    let id = negotiate(rt, addr).await;
    let path = format!("/client/?hub=chat&id={id}");
    let mut stalled = rt.connect(addr).await.expect("connected");
    let open = format!(
        "GET {path} HTTP/1.1\r\nHost: relay\r\nAccept: text/event-stream\r\n\
         Authorization: Bearer {bearer}\r\n\r\n"
    );
    stalled.write_all(open.as_bytes()).await.expect("sent");
    // The stream's head, so that its transport is attached before the handshake comes.
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut some = [0; 256];
        let n = within(rt, "the stream's head", stalled.read(&mut some))
            .await
            .expect("read");
        assert!(n > 0, "the stream ended before its head");
        head.extend_from_slice(&some[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    send_handshake(rt, addr, &path, &bearer).await;
    let stalled_id = server.opened(rt).await;
    flood_until_closed(rt, &mut server, &stalled_id).await;
    // The socket was dropped: what the kernel held is read, then its end.
    let mut received = Vec::new();
    within(
        rt,
        "the stalled stream's end",
        stalled.read_to_end(&mut received),
    )
    .await
    .expect("read");
    assert!(
        !received.ends_with(b"0\r\n\r\n"),
        "the stream was ended as if by the relay's close, not dropped"
    );
    server.data(&bystander_id, b"{\"type\":6}\x1e").await;
    assert_eq!(next_text(rt, &mut bystander).await, "{\"type\":6}\x1e");
}

/// Writes never time out within a test.
fn a_long_write_timeout() -> (RelayConfig, ServeOptions) {
    let mut options = ServeOptions::default();
    options.write_timeout = Duration::from_secs(600);
    (config(), options)
}

on_both_runtimes_with!(
    an_event_stream_that_stops_reading_is_dropped_at_once,
    a_long_write_timeout
);

/// One long poll may answer 12 MiB; a second is the write timeout.
fn large_polls_and_a_short_write_timeout() -> (RelayConfig, ServeOptions) {
    let mut config = config();
    config.max_server_message_size = 16 * 1024 * 1024;
    config.max_long_poll_buffer = 16 * 1024 * 1024;
    let mut options = ServeOptions::default();
    options.write_timeout = Duration::from_secs(1);
    (config, options)
}

on_both_runtimes_with!(
    a_long_poll_never_read_is_dropped_at_the_write_timeout,
    large_polls_and_a_short_write_timeout
);

async fn plain_requests_are_answered<R: Runtime>(runtime: R, addr: SocketAddr) {
    let rt = &runtime;
    let health = Request::get("/health")
        .header("Host", "127.0.0.1")
        .body(Full::default())
        .expect("a request");
    assert_eq!(
        body_text(http(rt, addr, health).await).await,
        (200, "ok".to_owned())
    );
    let missing = Request::get("/nowhere")
        .header("Host", "127.0.0.1")
        .body(Full::default())
        .expect("a request");
    assert_eq!(body_text(http(rt, addr, missing).await).await.0, 404);
    // Garbage instead of HTTP costs only its own connection.
    let mut garbage = rt.connect(addr).await.expect("connected");
    futures_util::AsyncWriteExt::write_all(&mut garbage, b"\x00\x01 not http\r\n\r\n")
        .await
        .expect("written");
    let mut rest = Vec::new();
    let _ = within(
        rt,
        "the garbage connection to end",
        futures_util::AsyncReadExt::read_to_end(&mut garbage, &mut rest),
    )
    .await;
    let health = Request::get("/health")
        .header("Host", "127.0.0.1")
        .body(Full::default())
        .expect("a request");
    assert_eq!(body_text(http(rt, addr, health).await).await.0, 200);
}
on_both_runtimes!(plain_requests_are_answered);

/// Sends `raw` on a connection of its own and reads until the relay closes it.
async fn raw_exchange<R: Runtime>(runtime: &R, addr: SocketAddr, raw: &[u8]) -> String {
    let mut conn = runtime.connect(addr).await.expect("connected");
    futures_util::AsyncWriteExt::write_all(&mut conn, raw)
        .await
        .expect("written");
    let mut answer = Vec::new();
    let _ = within(
        runtime,
        "the relay to close the connection",
        futures_util::AsyncReadExt::read_to_end(&mut conn, &mut answer),
    )
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// A client's transport requests are served on the relay's lean path (no `Date` field), and
/// the first other request hands the connection to hyper (which adds one) for the rest of its
/// life: on one kept-alive connection, pipelined requests each get their answer, in order.
/// A head that is not HTTP gets 400, one too large or with too many fields 431, each closing
/// its connection.
async fn one_connection_carries_lean_and_general_requests<R: Runtime>(
    runtime: R,
    addr: SocketAddr,
) {
    let rt = &runtime;
    let bearer = token("/client/", None);
    let poll = |last: &str| {
        format!(
            "GET /client/?hub=chat&id=nobody HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Authorization: Bearer {bearer}\r\n{last}\r\n"
        )
    };
    let health = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let raw = format!(
        "{}{}{health}{}",
        poll(""),
        poll(""),
        poll("Connection: close\r\n")
    );
    let answer = raw_exchange(rt, addr, raw.as_bytes()).await;
    let responses: Vec<&str> = answer.split("HTTP/1.1 ").skip(1).collect();
    let statuses: Vec<&str> = responses.iter().map(|r| &r[..3]).collect();
    assert_eq!(statuses, ["404", "404", "200", "404"], "{answer}");
    let dated: Vec<bool> = responses
        .iter()
        .map(|r| r.to_ascii_lowercase().contains("\r\ndate: "))
        .collect();
    assert_eq!(dated, [false, false, true, true], "{answer}");
    let answer = raw_exchange(rt, addr, b"GET /client/ HTTP/1.1\r\n\x01\x02\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let mut huge = b"GET /client/ HTTP/1.1\r\nX-Pad: ".to_vec();
    // Exactly what the relay reads of a head: none is left unread to reset the connection.
    huge.resize(40 * 1024, b'a');
    let answer = raw_exchange(rt, addr, &huge).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    let fields = "X-Many: 1\r\n".repeat(101);
    let many = format!("GET /client/ HTTP/1.1\r\n{fields}\r\n");
    let answer = raw_exchange(rt, addr, many.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
}
on_both_runtimes!(one_connection_carries_lean_and_general_requests);

/// Where a response's head ends in `bytes` (past its blank line), and its `Content-Length`
/// (none: no such field, or not a number); none while the head is not all there.
fn response_head(bytes: &[u8]) -> Option<(usize, Option<usize>)> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse().ok());
    Some((end, length))
}

/// Reads one response (its head and its `Content-Length` body) from `conn`.
async fn read_response<S: futures_util::AsyncRead + Unpin>(conn: &mut S) -> String {
    let mut got = Vec::new();
    let mut chunk = [0; 1024];
    loop {
        if let Some((end, length)) = response_head(&got) {
            if got.len() >= end + length.unwrap_or(0) {
                return String::from_utf8_lossy(&got).into_owned();
            }
        }
        let n = futures_util::AsyncReadExt::read(conn, &mut chunk)
            .await
            .expect("read");
        assert!(
            n > 0,
            "closed before a whole response: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&chunk[..n]);
    }
}

/// A request head has the header-read timeout (a second here) to come whole, on the lean path
/// and on hyper's, and so has a kept-alive connection's next head: an idle connection is
/// closed without an answer, a head cut short gets 408, and a connection that went to hyper
/// and then fell idle is closed too. Each wait has a deadline of its own: a connection that
/// sends a request every 300 ms for two seconds is served throughout. (On smol, the glue's
/// waits and hyper's share one timer: see `signalr_relay_smol`'s `timers`.)
async fn heads_have_the_header_read_timeout<R: Runtime>(runtime: R, addr: SocketAddr) {
    let rt = &runtime;
    let bearer = token("/client/", None);
    let lean = format!(
        "GET /client/?hub=chat&id=nobody HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Bearer {bearer}\r\n\r\n"
    );
    let started = rt.now();
    let mut busy = rt.connect(addr).await.expect("connected");
    // Each with the time it was closed at.
    let closed = |raw: &'static [u8]| async move { (raw_exchange(rt, addr, raw).await, rt.now()) };
    let idle = closed(b"");
    let cut_short = closed(b"GET /client/?hub=chat HTTP/1.1\r\nHost: 1");
    let hyper_idle = closed(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    let served = async {
        for _ in 0..7 {
            futures_util::AsyncWriteExt::write_all(&mut busy, lean.as_bytes())
                .await
                .expect("written");
            let answer = within(rt, "an answer", read_response(&mut busy)).await;
            assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
            rt.sleep_until(rt.now() + Duration::from_millis(300)).await;
        }
    };
    let (idle, cut_short, hyper_idle, ()) =
        futures_util::join!(idle, cut_short, hyper_idle, served);
    for (answer, at) in [&idle, &cut_short, &hyper_idle] {
        // Not sooner than the timeout, and not at the default one (15 s): a bound on which
        // timeout was used, not on speed.
        let after = at.duration_since(started);
        assert!(
            after >= Duration::from_secs(1),
            "closed after {after:?}: {answer}"
        );
        assert!(
            after < Duration::from_secs(15),
            "closed after {after:?}: {answer}"
        );
    }
    let (idle, cut_short, hyper_idle) = (idle.0, cut_short.0, hyper_idle.0);
    assert_eq!(idle, "", "an idle connection is closed without an answer");
    assert!(cut_short.starts_with("HTTP/1.1 408 "), "{cut_short}");
    assert!(hyper_idle.starts_with("HTTP/1.1 200 "), "{hyper_idle}");
    assert_eq!(hyper_idle.matches("HTTP/1.1 ").count(), 1, "{hyper_idle}");
}

/// The header-read timeout is a second.
fn a_short_header_read_timeout() -> (RelayConfig, ServeOptions) {
    let mut options = ServeOptions::default();
    options.header_read_timeout = Duration::from_secs(1);
    (config(), options)
}

on_both_runtimes_with!(
    heads_have_the_header_read_timeout,
    a_short_header_read_timeout
);

/// The glue reads the time from its runtime. On tokio's paused clock, a relay whose handshake
/// timeout is an hour closes a client that never sends its handshake, and an app server that
/// never says hello, at once: an hour of the relay's time passes in no time (the app server
/// that did say hello is dropped on the way, silent for the server timeout). On a real clock
/// the test would not end for an hour, and fails after two minutes.
#[test]
fn the_driver_runs_on_its_runtimes_clock() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a tokio runtime");
        rt.block_on(async {
            let mut config = config();
            config.handshake_timeout = Duration::from_secs(3600);
            let listener = TokioListener::bind("127.0.0.1:0".parse().expect("an address"))
                .await
                .expect("bound");
            let addr = listener.local_addr().expect("an address");
            tokio::spawn(serve_forever(TokioRuntime, listener, config));
            let runtime = TokioRuntime;
            let _app = AppServer::connect(&runtime, addr).await;
            let id = negotiate(&runtime, addr).await;
            let path = format!("/client/?hub=chat&id={id}");
            let mut client = websocket(&runtime, addr, &path, &token("/client/", None)).await;
            let server_token = token("/server/", Some("app"));
            let mut mute_server =
                websocket(&runtime, addr, "/server/?hub=chat", &server_token).await;
            let started = runtime.now();
            let first = client.next().await;
            assert!(
                matches!(&first, Some(Ok(Message::Text(t))) if t.as_str() == "{\"error\":\"Handshake was canceled.\"}\x1e"),
                "{first:?}"
            );
            let close = client.next().await;
            assert!(
                matches!(&close, Some(Ok(Message::Close(Some(f)))) if f.reason == "Handshake was canceled."),
                "{close:?}"
            );
            let close = mute_server.next().await;
            assert!(
                matches!(&close, Some(Ok(Message::Close(Some(f)))) if u16::from(f.code) == 1011),
                "{close:?}"
            );
            assert!(runtime.now() - started >= Duration::from_secs(3600));
        });
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(120))
        .expect("the relay's hour passed on the runtime's clock");
}

/// A TLS handshake has the time a request's headers have. On tokio's paused clock, a peer
/// that starts a handshake and stalls is closed, without an answer, once the header-read
/// timeout (an hour here) has passed on the relay's clock. (A real client's handshake beside
/// such peers is the end-to-end TLS test's.)
#[test]
fn a_stalled_tls_handshake_is_closed_at_the_header_read_timeout() {
    use futures_util::{AsyncReadExt, AsyncWriteExt};

    let dir = std::env::temp_dir().join(format!(
        "relay-adapter-tls-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let ca = signalr_relay_tests::TestCa::new().expect("a test CA");
    ca.write_to(&dir).expect("certificates written");
    let tls =
        signalr_relay_tokio::glue::tls::ServerTls::load(dir.join("cert.pem"), dir.join("key.pem"))
            .expect("the certificate loads");

    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a tokio runtime");
        rt.block_on(async {
            let listener = TokioListener::bind("127.0.0.1:0".parse().expect("an address"))
                .await
                .expect("bound");
            let addr = listener.local_addr().expect("an address");
            let mut options = ServeOptions::default();
            options.header_read_timeout = Duration::from_secs(3600);
            options.tls = Some(tls);
            tokio::spawn(signalr_relay_tokio::serve(
                TokioRuntime,
                listener,
                config(),
                options,
            ));
            let runtime = TokioRuntime;
            let started = runtime.now();
            let mut stalled = runtime.connect(addr).await.expect("connected");
            stalled
                .write_all(&[0x16, 0x03, 0x01])
                .await
                .expect("a handshake begun");
            let mut rest = Vec::new();
            let read = stalled.read_to_end(&mut rest).await;
            assert!(read.is_ok_and(|n| n == 0), "closed without an answer");
            assert!(runtime.now() - started >= Duration::from_secs(3600));
        });
        let _ = done.send(());
    });
    let result = finished.recv_timeout(Duration::from_secs(120));
    let _ = std::fs::remove_dir_all(&dir);
    result.expect("the stalled handshake was closed on the runtime's clock");
}

/// The SDK's management client (`sdk::management`) against a serverless relay, on both
/// runtimes: it mints a client's token (negotiate), and every kind of REST call it makes is
/// answered as Azure answers, in both body encodings.
async fn the_management_client_drives_a_serverless_relay<R: Runtime>(runtime: R, addr: SocketAddr) {
    use signalr_relay_tokio::core::aspnetcore::negotiate::NegotiateResponse;
    use signalr_relay_tokio::sdk::management::{BodyEncoding, Of, ServiceClient, ServiceOptions};
    let rt = &runtime;
    let cs = format!("Endpoint=http://{addr};AccessKey={KEY};Version=1.0;");
    let service =
        ServiceClient::new(runtime.clone(), &cs, ServiceOptions::default()).expect("a client");
    let mut binary_options = ServiceOptions::default();
    binary_options.encoding = BodyEncoding::Binary;
    let binary = ServiceClient::new(runtime.clone(), &cs, binary_options).expect("a client");
    let chat = service.hub("Chat");
    assert!(within(rt, "health", service.is_healthy())
        .await
        .expect("healthy"));

    // A client, with the token the backend mints.
    let NegotiateResponse::Redirect {
        url,
        access_token: Some(token),
    } = chat.negotiate(Some("alice"), &[])
    else {
        panic!("no redirect")
    };
    assert_eq!(url, format!("http://{addr}/client/?hub=chat"));
    let mut client = handshaken(rt, addr, &token).await;
    assert_eq!(next_text(rt, &mut client).await, "{}\x1e");
    let ops = async {
        assert!(chat.user_exists("alice").await.expect("answered"));
        chat.send_to_all("news", &("json",), &[])
            .await
            .expect("sent");
        binary
            .hub("chat")
            .send_to_user("alice", "news", &("binary",))
            .await
            .expect("sent");
        assert!(!chat.user_exists("bob").await.expect("answered"));
        chat.add_user_to_group("alice", "vip", None)
            .await
            .expect("added");
        assert!(chat.user_in_group("alice", "vip").await.expect("answered"));
        assert!(chat.group_exists("vip").await.expect("answered"));
        chat.send_to_group("vip", "news", &("group",), &[])
            .await
            .expect("sent");
        chat.remove_user_from_all_groups("alice")
            .await
            .expect("removed");
        assert!(!chat.user_in_group("alice", "vip").await.expect("answered"));
        assert!(!chat.add_to_group("nobody", "g").await.expect("answered"));
        assert!(!chat
            .close_connection("nobody", None)
            .await
            .expect("answered"));
        chat.close_connections(Some(Of::User("bob")), &[], None)
            .await
            .expect("closed");
    };
    within(rt, "the REST calls", ops).await;
    for want in ["json", "binary", "group"] {
        let text = next_text(rt, &mut client).await;
        assert!(
            text.contains(&format!("\"news\",\"arguments\":[\"{want}\"]")),
            "{text}"
        );
    }
    // Closed by its user, with a reason.
    within(
        rt,
        "a close",
        chat.close_connections(Some(Of::User("alice")), &[], Some("bye")),
    )
    .await
    .expect("closed");
    match within(rt, "the close", client.next()).await {
        Some(Ok(Message::Text(text))) => assert!(text.contains("bye"), "{text}"),
        other => panic!("{other:?}"),
    }
    assert!(!within(rt, "existence", chat.user_exists("alice"))
        .await
        .expect("answered"));
}

fn serverless_config() -> RelayConfig {
    let mut config = config();
    config.service_mode = signalr_relay_core::relay::ServiceMode::Serverless;
    config
}

mod the_management_client_drives_a_serverless_relay {
    #[test]
    fn tokio() {
        super::on_tokio(
            super::serverless_config(),
            super::the_management_client_drives_a_serverless_relay,
        );
    }

    #[test]
    fn smol() {
        super::on_smol(
            super::serverless_config(),
            super::the_management_client_drives_a_serverless_relay,
        );
    }
}

/// The Management SDK's persistent mode over a real socket, on both runtimes: a Weak
/// connection to a serverless relay reaches a serverless client with the messages the SDK
/// sends (as its ServiceHubContextE2EFacts do in their Persistent form: broadcast, user and
/// group sends, group membership, existence checks, close), and every ack comes back.
async fn a_management_connection_drives_serverless_clients<R: Runtime>(
    runtime: R,
    addr: SocketAddr,
) {
    use service::AckStatus;
    let rt = &runtime;
    let mut management = AppServer::connect_as(rt, addr, service::ConnectionType::Weak).await;
    // A serverless client, answered by the relay itself.
    let bearer = token("/client/", Some("alice"));
    let mut client = handshaken(rt, addr, &bearer).await;
    assert_eq!(next_text(rt, &mut client).await, "{}\x1e");
    let payloads = |target: &str| {
        service::Payloads(vec![(
            "json".to_owned(),
            Bytes::from(format!(
                "{{\"type\":1,\"target\":\"{target}\",\"arguments\":[]}}\x1e"
            )),
        )])
    };
    // The relay's id of the client: through the user, which the ack confirms.
    management
        .send(&ServiceMessage::CheckUserExistenceWithAck(
            service::ExistenceCheck {
                id: "alice".into(),
                ack_id: 1,
                ..service::ExistenceCheck::default()
            },
        ))
        .await;
    let ack = management.next(rt).await;
    assert!(
        matches!(&ack, ServiceMessage::Ack(a) if a.ack_id == 1 && a.status == AckStatus::Ok),
        "{ack:?}"
    );
    management
        .send(&ServiceMessage::BroadcastData(service::BroadcastData {
            payloads: payloads("all"),
            ..service::BroadcastData::default()
        }))
        .await;
    assert!(next_text(rt, &mut client).await.contains("\"all\""));
    management
        .send(&ServiceMessage::UserData(service::UserData {
            user_id: "alice".into(),
            payloads: payloads("user"),
            ext: service::Ext::default(),
        }))
        .await;
    assert!(next_text(rt, &mut client).await.contains("\"user\""));
    management
        .send(&ServiceMessage::UserJoinGroupWithAck(
            service::UserGroupWithAck {
                user_id: "alice".into(),
                group: Some("g".into()),
                ack_id: 2,
                ext: service::Ext {
                    ttl: Some(60),
                    ..service::Ext::default()
                },
            },
        ))
        .await;
    let ack = management.next(rt).await;
    assert!(
        matches!(&ack, ServiceMessage::Ack(a) if a.ack_id == 2 && a.status == AckStatus::Ok),
        "{ack:?}"
    );
    for (ack_id, check, want) in [
        (
            3,
            ServiceMessage::CheckGroupExistenceWithAck(service::ExistenceCheck {
                id: "g".into(),
                ack_id: 3,
                ..Default::default()
            }),
            AckStatus::Ok,
        ),
        (
            4,
            ServiceMessage::CheckUserInGroupWithAck(service::UserGroupWithAck {
                user_id: "alice".into(),
                group: Some("g".into()),
                ack_id: 4,
                ext: service::Ext::default(),
            }),
            AckStatus::Ok,
        ),
        (
            5,
            ServiceMessage::CheckUserExistenceWithAck(service::ExistenceCheck {
                id: "bob".into(),
                ack_id: 5,
                ..Default::default()
            }),
            AckStatus::NotFound,
        ),
    ] {
        management.send(&check).await;
        let ack = management.next(rt).await;
        assert!(
            matches!(&ack, ServiceMessage::Ack(a) if a.ack_id == ack_id && a.status == want),
            "{ack:?}"
        );
    }
    management
        .send(&ServiceMessage::GroupBroadcastData(
            service::GroupBroadcastData {
                group: "g".into(),
                payloads: payloads("group"),
                ..service::GroupBroadcastData::default()
            },
        ))
        .await;
    assert!(next_text(rt, &mut client).await.contains("\"group\""));
    management
        .send(&ServiceMessage::CloseUserConnectionsWithAck(
            service::CloseConnectionsWithAck {
                target: "alice".into(),
                reason: Some("done".into()),
                ack_id: 6,
                ..service::CloseConnectionsWithAck::default()
            },
        ))
        .await;
    let ack = management.next(rt).await;
    assert!(
        matches!(&ack, ServiceMessage::Ack(a) if a.ack_id == 6 && a.status == AckStatus::Ok),
        "{ack:?}"
    );
    assert!(next_text(rt, &mut client).await.contains("done"));
    // It never carried the client: it saw no OpenConnection.
    assert!(management.try_next().is_none());
}

mod a_management_connection_drives_serverless_clients {
    #[test]
    fn tokio() {
        super::on_tokio(
            super::serverless_config(),
            super::a_management_connection_drives_serverless_clients,
        );
    }

    #[test]
    fn smol() {
        super::on_smol(
            super::serverless_config(),
            super::a_management_connection_drives_serverless_clients,
        );
    }
}

/// Connects to `addr`, whose listener accepts none, past the standard library's backlog of
/// 128: 300 times, or one more than the kernel's cap on backlogs where that is lower (it
/// queues one more than its cap). Each connect must complete; with a backlog of 128, those
/// past 129 are not answered and fail at the guard.
fn connect_past_128(addr: SocketAddr) {
    let n = signalr_relay_tokio::glue::accept::kernel_backlog_cap()
        .map_or(300, |cap| 300.min(cap as usize + 1));
    let held = (0..n)
        // A guard against a hang, not a measure of speed: a dropped handshake is retried a
        // second later.
        .map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(30)))
        .collect::<std::io::Result<Vec<_>>>()
        .expect("every connect queued");
    assert_eq!(held.len(), n);
}

/// Each runtime's listener, as the relay and the sample app bind it, queues a storm's
/// connections past the standard library's 128 (see `glue::accept::tcp_listener`).
#[test]
fn each_runtimes_listener_queues_past_128_connections() {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let listener = tokio
        .block_on(TokioListener::bind(
            "127.0.0.1:0".parse().expect("an address"),
        ))
        .expect("bound");
    connect_past_128(listener.local_addr().expect("an address"));
    let listener = async_io::block_on(SmolListener::bind(
        "127.0.0.1:0".parse().expect("an address"),
    ))
    .expect("bound");
    connect_past_128(listener.local_addr().expect("an address"));
}
