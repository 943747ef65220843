//! Clients as real ones behave: the relay's full negotiate path, or a plain WebSocket to the
//! floor server.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};

use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

/// A client WebSocket.
pub(crate) type Ws = WebSocketStream<Compat<TcpStream>>;

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

/// One HTTP/1.1 POST (a connection of its own, as a browser's negotiate often is).
pub(crate) async fn post(addr: &str, path: &str, bearer: Option<&str>) -> Result<(u16, Bytes)> {
    let stream = tcp(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::post(path)
        .header("host", addr)
        .header("content-length", "0");
    if let Some(token) = bearer {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
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

async fn websocket(addr: &str, path: &str, bearer: Option<&str>) -> Result<Ws> {
    let stream = tcp(addr).await?;
    let mut req = format!("ws://{addr}{path}")
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
    let (ws, _) = async_tungstenite::client_async_with_config(req, stream.compat(), Some(config))
        .await
        .map_err(|e| format!("WebSocket to {addr}: {e}"))?;
    Ok(ws)
}

/// An ASP.NET Core SignalR client of `hub` through the relay, connected as the official
/// client does: negotiate at the app server, follow the redirect, negotiate at the relay,
/// open the WebSocket, and complete the JSON handshake.
pub(crate) async fn connect_relay(app: &str, hub: &str, user: &str) -> Result<Ws> {
    let (status, body) = post(app, &format!("/{hub}/negotiate?user={user}"), None).await?;
    if status != 200 {
        return Err(format!("app negotiate: {status}"));
    }
    let url = field(&body, "url")?;
    let token = field(&body, "accessToken")?;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("unexpected redirect {url}"))?;
    let (relay, path_and_query) = rest.split_once('/').unwrap_or((rest, ""));
    let query = path_and_query.split_once('?').map_or("", |(_, q)| q);
    let (status, body) = post(
        relay,
        &format!("/client/negotiate?{query}&negotiateVersion=1"),
        Some(&token),
    )
    .await?;
    if status != 200 {
        return Err(format!("relay negotiate: {status}"));
    }
    let id = field(&body, "connectionToken")?;
    let mut ws = websocket(relay, &format!("/client/?{query}&id={id}"), Some(&token)).await?;
    ws.send(Message::text("{\"protocol\":\"json\",\"version\":1}\u{1e}"))
        .await
        .map_err(|e| e.to_string())?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.starts_with("{}\u{1e}") => Ok(ws),
        other => Err(format!("handshake: {other:?}")),
    }
}

/// A plain WebSocket to the floor server.
pub(crate) async fn connect_floor(floor: &str) -> Result<Ws> {
    websocket(floor, "/", None).await
}
