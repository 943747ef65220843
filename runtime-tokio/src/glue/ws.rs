//! One WebSocket, pumped: a reader that forwards every message into a channel, and a writer
//! that drains a bounded command queue, batching whatever is queued into one flush.
//! Shared by the relay (both kinds of connection) and the app-server SDK.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use async_tungstenite::tungstenite::{Message, Utf8Bytes};
use async_tungstenite::WebSocketStream;
use bytes::Bytes;
use futures_channel::mpsc;
use futures_util::task::AtomicWaker;
use futures_util::{SinkExt, StreamExt};

/// A waker that notes it was called before waking the task (see [`pump`]).
struct Woken {
    flag: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.flag.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// How many messages may wait for one connection's writer. A peer that lets more pile up is
/// not reading, and is disconnected.
pub(crate) const WRITE_QUEUE: usize = 1024;

/// Read buffer of a client connection: most are idle, and a message larger than this only
/// costs another read.
pub(crate) const CLIENT_READ_BUFFER: usize = 1024;

/// Read buffer of a server connection (few, and busy).
pub(crate) const SERVER_READ_BUFFER: usize = 16 * 1024;

/// WebSocket settings: bounded messages, a read buffer of `read_buffer` bytes, and no write
/// buffering beyond the batch being flushed.
pub(crate) fn config(max_message_size: usize, read_buffer: usize) -> WebSocketConfig {
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = read_buffer;
    config.write_buffer_size = 0;
    config.max_write_buffer_size = usize::MAX;
    config.max_message_size = Some(max_message_size);
    config.max_frame_size = Some(max_message_size);
    config
}

/// What to do on a WebSocket.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send a message (binary or text).
    Send { data: Bytes, binary: bool },
    /// Send a close frame and stop.
    Close { code: u16, reason: String },
}

/// What came in on a WebSocket.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A data message.
    Data(Bytes),
    /// The connection is gone (closed, failed, or its writer stopped).
    Closed,
}

fn to_message(data: Bytes, binary: bool) -> Option<Message> {
    if binary {
        Some(Message::Binary(data))
    } else {
        Utf8Bytes::try_from(data).ok().map(Message::Text)
    }
}

/// Runs `ws` until either side ends it. Every incoming data message goes to `incoming`
/// (awaiting, so a slow consumer applies backpressure to the socket); `Incoming::Closed` is
/// sent exactly once at the end.
pub(crate) async fn pump<S, E, F>(
    ws: WebSocketStream<S>,
    mut commands: mpsc::Receiver<Command>,
    mut incoming: mpsc::Sender<E>,
    wrap: F,
) where
    S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin,
    F: Fn(Incoming) -> E,
{
    let (mut sink, mut stream) = ws.split();
    let writer = async {
        while let Some(command) = commands.next().await {
            let mut next = Some(command);
            // Batch: feed everything already queued, then flush once.
            while let Some(command) = next.take() {
                match command {
                    Command::Send { data, binary } => {
                        if let Some(message) = to_message(data, binary) {
                            if sink.feed(message).await.is_err() {
                                return;
                            }
                        }
                    }
                    Command::Close { code, reason } => {
                        let frame = CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.into(),
                        };
                        let _ = sink.flush().await;
                        let _ = sink.close(Some(frame)).await;
                        return;
                    }
                }
                next = commands.try_recv().ok();
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close(None).await;
    };
    let mut forward = incoming.clone();
    let reader = async {
        while let Some(message) = stream.next().await {
            let data = match message {
                Ok(Message::Text(text)) => Bytes::from(text),
                Ok(Message::Binary(data)) => data,
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Close(_)) | Err(_) => break,
            };
            if forward.send(wrap(Incoming::Data(data))).await.is_err() {
                break;
            }
        }
    };
    // Until either ends. The reader is polled only when its own waker fired: polled each time
    // a message is queued for the writer, it would try the socket for nothing (a failed read
    // syscall per message on runtimes that do not cache readiness).
    let woken = Arc::new(Woken {
        flag: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    let reader_waker = Waker::from(woken.clone());
    futures_util::pin_mut!(writer, reader);
    std::future::poll_fn(|cx| {
        if writer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        woken.task.register(cx.waker());
        if woken.flag.swap(false, Ordering::AcqRel)
            && reader
                .as_mut()
                .poll(&mut Context::from_waker(&reader_waker))
                .is_ready()
        {
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await;
    let _ = incoming.send(wrap(Incoming::Closed)).await;
}
