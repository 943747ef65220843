//! The floor: the least a server can do for the same traffic, with no SignalR and no relay hop.
//! A WebSocket server that echoes each text message to its sender, and sends a message that
//! starts with `B` to every connection (encoded once, its bytes shared). `J<group>` joins a
//! group (answered `ok`), and `G<group>|…` goes to the group's members.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::Message;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::compat::TokioAsyncReadCompatExt;

type Peers = Arc<Mutex<Vec<mpsc::UnboundedSender<Message>>>>;
type Groups = Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Message>>>>>;

/// Serves until the process is stopped (or `exit_after` seconds pass).
pub(crate) async fn serve(listen: &str, exit_after: u64) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("floor listening on http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(exit_after)).await;
        std::process::exit(0);
    });
    let peers: Peers = Arc::default();
    let groups: Groups = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let peers = peers.clone();
        let groups = groups.clone();
        tokio::spawn(async move {
            let config = WebSocketConfig::default().read_buffer_size(4096);
            let Ok(ws) =
                async_tungstenite::accept_async_with_config(stream.compat(), Some(config)).await
            else {
                return;
            };
            let (mut sink, mut stream) = ws.split();
            let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
            if let Ok(mut p) = peers.lock() {
                p.push(tx.clone());
            }
            let writer = tokio::spawn(async move {
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
            });
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                if let Some(group) = text.strip_prefix('J') {
                    if let Ok(mut g) = groups.lock() {
                        g.entry(group.to_owned()).or_default().push(tx.clone());
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
                } else if text.starts_with('B') {
                    let message = Message::Text(text);
                    let all: Vec<_> = peers.lock().map(|p| p.clone()).unwrap_or_default();
                    for peer in all {
                        let _ = peer.send(message.clone());
                    }
                } else {
                    let _ = tx.send(Message::Text(text));
                }
            }
            if let Ok(mut p) = peers.lock() {
                p.retain(|peer| !peer.same_channel(&tx));
            }
            if let Ok(mut g) = groups.lock() {
                for members in g.values_mut() {
                    members.retain(|peer| !peer.same_channel(&tx));
                }
            }
            writer.abort();
        });
    }
}
