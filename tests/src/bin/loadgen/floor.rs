//! The floor: the least a server can do for the same traffic, with no SignalR and no relay hop.
//!
//! A WebSocket server that echoes each text message to its sender, and sends a message that
//! starts with `B` to every connection (encoded once, its bytes shared). `J<group>` joins a
//! group and `L<group>` leaves it (each answered `ok`), `G<group>|…` goes to the group's
//! members, `I` is answered with the connection's id and `C<id>|…` goes to that connection.
//!
//! Beside it, on a second port, the same echo over HTTP: `GET /sse?id=…` is an event stream,
//! `GET /poll?id=…` a long poll, and `POST /send?id=…` echoes its body to that id's stream or
//! polls.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::Message;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::compat::TokioAsyncReadCompatExt;

type Peer = mpsc::UnboundedSender<Message>;
type Peers = Arc<Mutex<HashMap<u64, Peer>>>;
type Groups = Arc<Mutex<HashMap<String, Vec<Peer>>>>;

/// Serves until the process is stopped (or `exit_after` seconds pass).
pub(crate) async fn serve(listen: &str, exit_after: u64) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let http = TcpListener::bind("127.0.0.1:0").await?;
    // The HTTP port first: whoever starts the floor reads it before the line it waits for.
    println!("floor http on {}", http.local_addr()?);
    println!("floor listening on http://{}", listener.local_addr()?);
    exit_after_secs(exit_after);
    tokio::spawn(serve_http(http));
    let peers: Peers = Arc::default();
    let groups: Groups = Arc::default();
    let ids = AtomicU64::new(0);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let id = ids.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(websocket(stream, id, peers.clone(), groups.clone()));
    }
}

/// A client's WebSocket, accepted: what it reads, the queue of what to write to it, and the
/// task that writes what is queued (see [`write_queued`]).
pub(crate) type Accepted = (
    async_tungstenite::WebSocketReceiver<tokio_util::compat::Compat<tokio::net::TcpStream>>,
    Peer,
    tokio::task::JoinHandle<()>,
);

/// Accepts a client's WebSocket on `stream` and starts its writer.
pub(crate) async fn accept(stream: tokio::net::TcpStream) -> Option<Accepted> {
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let ws = async_tungstenite::accept_async_with_config(stream.compat(), Some(config))
        .await
        .ok()?;
    let (sink, stream) = ws.split();
    let (tx, rx) = mpsc::unbounded_channel::<Message>();
    Some((stream, tx, tokio::spawn(write_queued(sink, rx))))
}

async fn websocket(stream: tokio::net::TcpStream, id: u64, peers: Peers, groups: Groups) {
    let Some((mut stream, tx, writer)) = accept(stream).await else {
        return;
    };
    if let Ok(mut p) = peers.lock() {
        p.insert(id, tx.clone());
    }
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        if let Some(group) = text.strip_prefix('J') {
            if let Ok(mut g) = groups.lock() {
                g.entry(group.to_owned()).or_default().push(tx.clone());
            }
            let _ = tx.send(Message::text("ok"));
        } else if let Some(group) = text.strip_prefix('L') {
            if let Ok(mut g) = groups.lock() {
                if let Some(members) = g.get_mut(group) {
                    members.retain(|peer| !peer.same_channel(&tx));
                }
            }
            let _ = tx.send(Message::text("ok"));
        } else if let Some(rest) = text.strip_prefix('G') {
            let group = rest.split('|').next().unwrap_or_default();
            let members = groups
                .lock()
                .ok()
                .and_then(|g| g.get(group).cloned())
                .unwrap_or_default();
            let message = Message::Text(text.clone());
            for member in members {
                let _ = member.send(message.clone());
            }
        } else if let Some(rest) = text.strip_prefix('C') {
            let to = rest.split('|').next().and_then(|i| i.parse::<u64>().ok());
            let peer = to.and_then(|to| peers.lock().ok()?.get(&to).cloned());
            if let Some(peer) = peer {
                let _ = peer.send(Message::Text(text));
            }
        } else if text.as_str() == "I" {
            let _ = tx.send(Message::text(format!("id:{id}")));
        } else if text.starts_with('B') {
            let message = Message::Text(text);
            let all: Vec<_> = peers
                .lock()
                .map(|p| p.values().cloned().collect())
                .unwrap_or_default();
            for peer in all {
                let _ = peer.send(message.clone());
            }
        } else {
            let _ = tx.send(Message::Text(text));
        }
    }
    if let Ok(mut p) = peers.lock() {
        p.remove(&id);
    }
    if let Ok(mut g) = groups.lock() {
        for members in g.values_mut() {
            members.retain(|peer| !peer.same_channel(&tx));
        }
    }
    writer.abort();
}

/// Exits the process after `seconds`.
pub(crate) fn exit_after_secs(seconds: u64) {
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        std::process::exit(0);
    });
}

/// Writes what is queued for a connection as it comes: everything queued, then one flush.
pub(crate) async fn write_queued<S>(mut sink: S, mut rx: mpsc::UnboundedReceiver<Message>)
where
    S: futures_util::Sink<Message> + Unpin,
{
    while let Some(m) = rx.recv().await {
        let mut batch = vec![m];
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
        }
        for m in batch {
            if sink.feed(m).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// An HTTP client's queue: what was posted for it, until its stream or poll takes it.
type Queue = (
    mpsc::UnboundedSender<Bytes>,
    Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Bytes>>>,
);
type Queues = Arc<Mutex<HashMap<String, Queue>>>;

async fn serve_http(listener: TcpListener) {
    let queues: Queues = Arc::default();
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let queues = queues.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| http_request(req, queues.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: u16, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body).boxed());
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    response
}

async fn http_request(
    req: Request<hyper::body::Incoming>,
    queues: Queues,
) -> Result<Response<Body>, Infallible> {
    let id = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("id=")))
        .unwrap_or_default()
        .to_owned();
    let mut created = false;
    let queue = queues.lock().ok().map(|mut q| {
        q.entry(id)
            .or_insert_with(|| {
                created = true;
                let (tx, rx) = mpsc::unbounded_channel();
                (tx, Arc::new(tokio::sync::Mutex::new(rx)))
            })
            .clone()
    });
    let Some((tx, rx)) = queue else {
        return Ok(full(500, Bytes::new()));
    };
    match (req.method().as_str(), req.uri().path()) {
        ("POST", "/send") => {
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let _ = tx.send(body.unwrap_or_default());
            Ok(full(200, Bytes::new()))
        }
        ("GET", "/sse") => {
            let stream = futures_util::stream::unfold(rx, |rx| async move {
                let message = rx.lock().await.recv().await?;
                let mut event = BytesMut::with_capacity(message.len() + 8);
                event.extend_from_slice(b"data: ");
                event.extend_from_slice(&message);
                event.extend_from_slice(b"\r\n\r\n");
                Some((Ok(Frame::data(event.freeze())), rx))
            });
            let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/event-stream"),
            );
            Ok(response)
        }
        // The first poll returns at once, as the relay's does.
        ("GET", "/poll") if created => Ok(full(200, Bytes::new())),
        ("GET", "/poll") => {
            let mut rx = rx.lock().await;
            let Ok(Some(first)) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await
            else {
                return Ok(full(204, Bytes::new()));
            };
            let mut body = BytesMut::from(&first[..]);
            while let Ok(more) = rx.try_recv() {
                body.extend_from_slice(&more);
            }
            Ok(full(200, body.freeze()))
        }
        _ => Ok(full(404, Bytes::new())),
    }
}
