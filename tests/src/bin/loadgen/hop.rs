//! The two-hop floor: the least a relay can do for an echo. A WebSocket server that sends
//! each text message, tagged with its connection's number, over one of a few TCP connections
//! to an upstream process, which sends back what it reads; each tagged message that comes
//! back goes to its connection. That is the relay's two hops and its multiplexing, with no
//! SignalR, no service protocol, no authentication and no routing tables.
//!
//! Its writes are batched as the relay's are: each connection's writer takes everything queued
//! for it before it writes, so that a floor that wrote message by message would not flatter
//! the relay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_tungstenite::tungstenite::{Message, Utf8Bytes};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

type Peers = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Message>>>>;

/// A tagged message's header: the payload's length and its connection's number, each a
/// little-endian `u32`.
const HEADER: usize = 8;

/// The upstream: sends back whatever each connection sends it, as it comes.
pub(crate) async fn serve_upstream(listen: &str, exit: u64) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!(
        "two-hop upstream listening on http://{}",
        listener.local_addr()?
    );
    crate::floor::exit_after_secs(exit);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let (mut read, mut write) = stream.into_split();
            let _ = tokio::io::copy(&mut read, &mut write).await;
        });
    }
}

/// The two-hop floor's WebSocket server, with `connections` connections to `upstream`.
pub(crate) async fn serve(
    listen: &str,
    upstream: &str,
    connections: usize,
    exit: u64,
) -> std::io::Result<()> {
    let peers: Peers = Arc::default();
    let mut upstreams = Vec::new();
    for _ in 0..connections.max(1) {
        let stream = TcpStream::connect(upstream).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        tokio::spawn(write_upstream(write, rx));
        tokio::spawn(read_upstream(read, peers.clone()));
        upstreams.push(tx);
    }
    let listener = TcpListener::bind(listen).await?;
    println!(
        "two-hop floor listening on http://{}",
        listener.local_addr()?
    );
    crate::floor::exit_after_secs(exit);
    let mut next = 0u32;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let id = next;
        next = next.wrapping_add(1);
        let upstream = upstreams[id as usize % upstreams.len()].clone();
        tokio::spawn(websocket(stream, id, peers.clone(), upstream));
    }
}

/// Writes what is queued for an upstream connection, everything queued at once.
async fn write_upstream(
    mut io: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
) {
    let mut out = BytesMut::new();
    while let Some(first) = rx.recv().await {
        out.extend_from_slice(&first);
        while let Ok(more) = rx.try_recv() {
            out.extend_from_slice(&more);
        }
        if io.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
    }
}

/// Reads what an upstream connection sends back, and hands each message to its connection.
async fn read_upstream(mut io: tokio::net::tcp::OwnedReadHalf, peers: Peers) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while buf.len() >= HEADER {
            let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if buf.len() < HEADER + len {
                break;
            }
            let mut frame = buf.split_to(HEADER + len);
            frame.advance(4);
            let id = frame.get_u32_le();
            let Ok(text) = Utf8Bytes::try_from(frame.freeze()) else {
                continue;
            };
            let peer = peers.lock().ok().and_then(|p| p.get(&id).cloned());
            if let Some(peer) = peer {
                let _ = peer.send(Message::Text(text));
            }
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(64 * 1024);
        }
    }
}

/// A client: each text message goes upstream tagged with `id`; what comes back for `id` is
/// written to it as the floor writes (all that is queued, then one flush).
async fn websocket(
    stream: TcpStream,
    id: u32,
    peers: Peers,
    upstream: mpsc::UnboundedSender<Bytes>,
) {
    let Some((mut stream, tx, writer)) = crate::floor::accept(stream).await else {
        return;
    };
    if let Ok(mut p) = peers.lock() {
        p.insert(id, tx);
    }
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let mut frame = BytesMut::with_capacity(HEADER + text.len());
        frame.put_u32_le(text.len() as u32);
        frame.put_u32_le(id);
        frame.extend_from_slice(text.as_bytes());
        if upstream.send(frame.freeze()).is_err() {
            break;
        }
    }
    if let Ok(mut p) = peers.lock() {
        p.remove(&id);
    }
    writer.abort();
}
