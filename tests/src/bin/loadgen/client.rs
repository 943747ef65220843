//! Clients as real ones behave: the relay's full negotiate path, or a plain WebSocket to the
//! floor server.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use signalr_relay_tokio::glue::tls::ClientStream;
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

type ClientConfig = signalr_relay_tokio::glue::tls::rustls::ClientConfig;

/// A client's connection: plain, or TLS to a relay on `--tls-cert`.
pub(crate) type Conn = ClientStream<Compat<TcpStream>>;

/// A client WebSocket.
pub(crate) type Ws = WebSocketStream<Conn>;

/// The TLS settings of connections to a relay on TLS: the run's test CA (set once, before
/// the TLS relay is started).
pub(crate) static TLS: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Errors are reported as text: a failed connection is counted, not handled.
pub(crate) type Result<T> = std::result::Result<T, String>;

/// Source addresses 127.0.0.1 … 127.0.0.N, used in turn, so that many connections do not run
/// out of ephemeral ports on one address.
static NEXT_SOURCE: AtomicU32 = AtomicU32::new(0);
/// How many source addresses to use.
pub(crate) static SOURCES: AtomicU32 = AtomicU32::new(1);

async fn tcp(addr: &str) -> Result<TcpStream> {
    let target: SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad address {addr}: {e}"))?;
    let n = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % SOURCES.load(Ordering::Relaxed).max(1);
    let source = SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1 + n as u8), 0));
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(source)
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket
        .connect(target)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A connection to `addr`, over TLS if `tls`.
async fn connect(addr: &str, tls: bool) -> Result<Conn> {
    let stream = tcp(addr).await?.compat();
    if !tls {
        return Ok(ClientStream::Plain(stream));
    }
    let config = TLS.get().ok_or("no TLS settings")?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    ClientStream::tls(config, host, stream)
        .await
        .map_err(|e| format!("TLS with {addr}: {e}"))
}

/// One HTTP/1.1 POST (a connection of its own, as a browser's negotiate often is).
pub(crate) async fn post(
    addr: &str,
    path: &str,
    bearer: Option<&str>,
    tls: bool,
) -> Result<(u16, Bytes)> {
    let mut req = request("POST", addr, path, bearer, Bytes::new())?;
    req.headers_mut().insert(
        hyper::header::CONTENT_LENGTH,
        hyper::header::HeaderValue::from_static("0"),
    );
    exchange(addr, tls, req).await
}

/// One HTTP/1.1 GET: the status and the body.
pub(crate) async fn get(addr: &str, path: &str) -> Result<(u16, Bytes)> {
    exchange(addr, false, request("GET", addr, path, None, Bytes::new())?).await
}

/// `req` on a connection of its own: the status and the body.
async fn exchange(addr: &str, tls: bool, req: hyper::Request<Full<Bytes>>) -> Result<(u16, Bytes)> {
    let mut sender = keep_alive(addr, tls).await?;
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

fn field(body: &[u8], name: &str) -> Result<String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("bad negotiate body: {e}"))?;
    value[name].as_str().map(str::to_owned).ok_or_else(|| {
        format!(
            "negotiate has no '{name}': {}",
            String::from_utf8_lossy(body)
        )
    })
}

async fn websocket(addr: &str, path: &str, bearer: Option<&str>, tls: bool) -> Result<Ws> {
    let stream = connect(addr, tls).await?;
    let scheme = if tls { "wss" } else { "ws" };
    let mut req = format!("{scheme}://{addr}{path}")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    if let Some(token) = bearer {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "bad token".to_owned())?;
        req.headers_mut().insert("authorization", value);
    }
    // A small read buffer, as a client with many connections would use.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = async_tungstenite::client_async_with_config(req, stream, Some(config))
        .await
        .map_err(|e| format!("WebSocket to {addr}: {e}"))?;
    Ok(ws)
}

/// Where the relay sent a client, after both negotiates.
struct Negotiated {
    relay: String,
    /// The hub's query (`hub=…` and whatever else the redirect carried).
    query: String,
    token: String,
    /// The connection token: the `id` of every later request.
    id: String,
    /// Whether the relay is at an `https` URL.
    tls: bool,
}

/// Negotiates as the official client does: at the app server, then at the relay it was
/// redirected to.
async fn negotiate(app: &str, hub: &str, user: &str) -> Result<Negotiated> {
    let (status, body) = post(app, &format!("/{hub}/negotiate?user={user}"), None, false).await?;
    if status != 200 {
        return Err(format!("app negotiate: {status}"));
    }
    let url = field(&body, "url")?;
    let token = field(&body, "accessToken")?;
    let (rest, tls) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return Err(format!("unexpected redirect {url}")),
    };
    let (relay, path_and_query) = rest.split_once('/').unwrap_or((rest, ""));
    let query = path_and_query.split_once('?').map_or("", |(_, q)| q);
    let (status, body) = post(
        relay,
        &format!("/client/negotiate?{query}&negotiateVersion=1"),
        Some(&token),
        tls,
    )
    .await?;
    if status != 200 {
        return Err(format!("relay negotiate: {status}"));
    }
    Ok(Negotiated {
        relay: relay.to_owned(),
        query: query.to_owned(),
        token,
        id: field(&body, "connectionToken")?,
        tls,
    })
}

/// The JSON hub protocol handshake.
const HANDSHAKE: &str = "{\"protocol\":\"json\",\"version\":1}\u{1e}";

/// An ASP.NET Core SignalR client of `hub` through the relay, connected as the official
/// client does: negotiate at the app server, follow the redirect, negotiate at the relay,
/// open the WebSocket, and complete the JSON handshake.
pub(crate) async fn connect_relay(app: &str, hub: &str, user: &str) -> Result<Ws> {
    let n = negotiate(app, hub, user).await?;
    let path = format!("/client/?{}&id={}", n.query, n.id);
    let mut ws = websocket(&n.relay, &path, Some(&n.token), n.tls).await?;
    ws.send(Message::text(HANDSHAKE))
        .await
        .map_err(|e| e.to_string())?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.starts_with("{}\u{1e}") => Ok(ws),
        other => Err(format!("handshake: {other:?}")),
    }
}

/// An HTTP transport: Server-Sent Events or long polling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
pub(crate) enum HttpTransport {
    ServerSentEvents,
    LongPolling,
}

/// A client on an HTTP transport, as a browser runs one: sends are POSTs on a keep-alive
/// connection of their own; what arrives (event-stream events, or poll bodies) is read on
/// another, by a task that hands each message on.
pub(crate) struct HttpConn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
    send_path: String,
    bearer: Option<String>,
    transport: HttpTransport,
    /// What arrived: one event's data, or one poll's body.
    pub(crate) incoming: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    receiver: tokio::task::JoinHandle<()>,
}

impl Drop for HttpConn {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

/// A new plain HTTP/1.1 connection to `addr`, kept alive for several requests.
pub(crate) async fn keep_alive_plain(
    addr: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    keep_alive(addr, false).await
}

/// A new HTTP/1.1 connection to `addr`.
async fn keep_alive(
    addr: &str,
    tls: bool,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = connect(addr, tls).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream.compat()))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

/// A request to `host`, with the bearer token when there is one.
fn request(
    method: &str,
    host: &str,
    path: &str,
    bearer: Option<&str>,
    body: Bytes,
) -> Result<hyper::Request<Full<Bytes>>> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    if let Some(token) = bearer {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    req.body(Full::new(body)).map_err(|e| e.to_string())
}

impl HttpConn {
    /// Opens the receiving side (`path`, a GET) and the connection sends go on (POSTs to
    /// `send_path`).
    async fn open(
        host: &str,
        path: String,
        send_path: String,
        bearer: Option<String>,
        transport: HttpTransport,
        tls: bool,
    ) -> Result<Self> {
        let sender = keep_alive(host, tls).await?;
        let send_host = host.to_owned();
        let mut poller = keep_alive(host, tls).await?;
        let (tx, incoming) = tokio::sync::mpsc::unbounded_channel();
        let host = host.to_owned();
        let bearer_for_sends = bearer.clone();
        let get = move || {
            let mut req = request("GET", &host, &path, bearer.as_deref(), Bytes::new())?;
            if transport == HttpTransport::ServerSentEvents {
                req.headers_mut().insert(
                    "accept",
                    hyper::header::HeaderValue::from_static("text/event-stream"),
                );
            }
            Ok::<_, String>(req)
        };
        // The first response (the event stream's headers, or the first poll) before anything
        // is sent: the relay attaches the transport on it.
        let first = poller
            .send_request(get()?)
            .await
            .map_err(|e| e.to_string())?;
        if first.status() != 200 {
            return Err(format!("{transport:?} GET: {}", first.status()));
        }
        let receiver = tokio::spawn(async move {
            match transport {
                HttpTransport::ServerSentEvents => read_events(first.into_body(), &tx).await,
                HttpTransport::LongPolling => {
                    let mut response = first;
                    loop {
                        if response.status() != 200 {
                            return;
                        }
                        let Ok(body) = response.into_body().collect().await else {
                            return;
                        };
                        let body = body.to_bytes();
                        if !body.is_empty() && tx.send(body).is_err() {
                            return;
                        }
                        let Ok(req) = get() else { return };
                        if poller.ready().await.is_err() {
                            return;
                        }
                        match poller.send_request(req).await {
                            Ok(r) => response = r,
                            Err(_) => return,
                        }
                    }
                }
            }
        });
        Ok(Self {
            sender,
            host: send_host,
            send_path,
            bearer: bearer_for_sends,
            transport,
            incoming,
            receiver,
        })
    }

    /// Ends the connection as the official client does: a DELETE for long polling (an event
    /// stream ends when its connection closes).
    pub(crate) async fn close(mut self) {
        if self.transport == HttpTransport::LongPolling {
            if let Ok(req) = request(
                "DELETE",
                &self.host,
                &self.send_path,
                self.bearer.as_deref(),
                Bytes::new(),
            ) {
                if self.sender.ready().await.is_ok() {
                    let _ = self.sender.send_request(req).await;
                }
            }
        }
    }

    /// POSTs `body` (and waits for the POST's answer, as the official client does).
    pub(crate) async fn send(&mut self, body: String) -> Result<()> {
        let req = request(
            "POST",
            &self.host,
            &self.send_path,
            self.bearer.as_deref(),
            Bytes::from(body),
        )?;
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let res = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = res.status();
        let _ = res.into_body().collect().await;
        if status != 200 {
            return Err(format!("POST: {status}"));
        }
        Ok(())
    }
}

/// Reads an event stream, handing on each event's data (its `data:` lines joined).
async fn read_events(
    mut body: hyper::body::Incoming,
    tx: &tokio::sync::mpsc::UnboundedSender<Bytes>,
) {
    let mut buffer = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.extend_from_slice(&data);
        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let event: Vec<u8> = buffer.drain(..end + 4).collect();
            let mut data = Vec::new();
            for line in event[..end].split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if let Some(d) = line.strip_prefix(b"data: ") {
                    if !data.is_empty() {
                        data.push(b'\n');
                    }
                    data.extend_from_slice(d);
                }
            }
            if !data.is_empty() && tx.send(Bytes::from(data)).is_err() {
                return;
            }
        }
    }
}

/// A client of `hub` through the relay over an HTTP transport: both negotiates, the transport,
/// and the JSON handshake.
pub(crate) async fn connect_relay_http(
    app: &str,
    hub: &str,
    user: &str,
    transport: HttpTransport,
) -> Result<HttpConn> {
    let n = negotiate(app, hub, user).await?;
    let path = format!("/client/?{}&id={}", n.query, n.id);
    let mut conn = HttpConn::open(
        &n.relay,
        path.clone(),
        path,
        Some(n.token),
        transport,
        n.tls,
    )
    .await?;
    conn.send(HANDSHAKE.to_owned()).await?;
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), conn.incoming.recv()).await {
            Ok(Some(m)) if m.starts_with(b"{}\x1e") => return Ok(conn),
            Ok(Some(_)) => {}
            other => return Err(format!("handshake: {other:?}")),
        }
    }
}

/// A client of the floor's HTTP echo, as connection `id`: named apart from every client
/// opened before it, since the floor keeps a queue for each name it has seen (and a poll
/// for a name it knows waits for a message, where a new client's first returns at once).
pub(crate) async fn connect_floor_http(
    floor_http: &str,
    id: usize,
    transport: HttpTransport,
) -> Result<HttpConn> {
    static OPENED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let serial = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (path, id) = match transport {
        HttpTransport::ServerSentEvents => ("sse", format!("sse-{id}-{serial}")),
        HttpTransport::LongPolling => ("poll", format!("lp-{id}-{serial}")),
    };
    let path = format!("/{path}?id={id}");
    HttpConn::open(
        floor_http,
        path,
        format!("/send?id={id}"),
        None,
        transport,
        false,
    )
    .await
}

/// A plain WebSocket to the floor server.
pub(crate) async fn connect_floor(floor: &str) -> Result<Ws> {
    websocket(floor, "/", None, false).await
}
