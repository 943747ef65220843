//! One WebSocket of the relay, pumped: a reader that forwards every message into a channel,
//! and a writer that drains the connection's byte-bounded queue, batching whatever is queued
//! into one flush.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use async_tungstenite::WebSocketStream;
use bytes::Bytes;
use futures_channel::mpsc;
use futures_util::task::AtomicWaker;
use futures_util::{FutureExt, SinkExt, StreamExt};

pub(crate) use super::queue::Command;
use super::queue::Inbox;

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

/// What came in on a WebSocket.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A data message.
    Data(Bytes),
    /// The connection is gone (closed, failed, aborted, or its writer stopped).
    Closed,
    /// This connection's queue drained after the driver marked it congested.
    Drained,
}

fn to_message(data: Bytes, binary: bool) -> Option<Message> {
    if binary {
        Some(Message::Binary(data))
    } else {
        Utf8Bytes::try_from(data).ok().map(Message::Text)
    }
}

/// Why the reader stopped.
enum ReadEnd {
    /// The peer closed, or the driver is gone.
    Done,
    /// The peer broke the WebSocket protocol: answer with this close frame (RFC 6455 §7.4.1).
    Violation(CloseCode, &'static str),
}

fn violation(e: &WsError) -> ReadEnd {
    match e {
        WsError::Capacity(_) => ReadEnd::Violation(CloseCode::Size, "Message too big."),
        WsError::Utf8(_) => {
            ReadEnd::Violation(CloseCode::Invalid, "Invalid UTF-8 in a text frame.")
        }
        WsError::Protocol(_) => {
            ReadEnd::Violation(CloseCode::Protocol, "WebSocket protocol error.")
        }
        _ => ReadEnd::Done,
    }
}

/// Runs `ws` until either side ends it, or the queue's abort signal fires (then the socket is
/// dropped at once). Every incoming data message goes to `incoming` (awaiting, so a slow
/// consumer applies backpressure to the socket), and none is read while the driver has the
/// queue paused; `Incoming::Drained` reports a congested queue that drained;
/// `Incoming::Closed` is sent exactly once at the end.
pub(crate) async fn pump<S, E, F>(
    ws: WebSocketStream<S>,
    mut inbox: Inbox,
    mut incoming: mpsc::Sender<E>,
    wrap: F,
) where
    S: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin,
    F: Fn(Incoming) -> E,
{
    let (mut sink, mut stream) = ws.split();
    let mut drained = incoming.clone();
    let signals = inbox.signals();
    let end = {
        let writer = async {
            while let Some(command) = inbox.next().await {
                let mut next = Some(command);
                let mut batch = 0;
                // Batch: feed everything already queued, then flush once.
                while let Some(command) = next.take() {
                    batch += command.size();
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
                    next = inbox.try_next();
                }
                if sink.flush().await.is_err() {
                    return;
                }
                if inbox.taken(batch) {
                    let _ = drained.send(wrap(Incoming::Drained)).await;
                }
            }
            let _ = sink.close(None).await;
        };
        let mut forward = incoming.clone();
        let reader = async {
            loop {
                signals.unpaused().await;
                let data = match stream.next().await {
                    Some(Ok(Message::Text(text))) => Bytes::from(text),
                    Some(Ok(Message::Binary(data))) => data,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => return ReadEnd::Done,
                    Some(Err(e)) => return violation(&e),
                };
                if forward.send(wrap(Incoming::Data(data))).await.is_err() {
                    return ReadEnd::Done;
                }
            }
        };
        // Until either ends. The reader is polled only when its own waker fired: polled each
        // time a message is queued for the writer, it would try the socket for nothing (a
        // failed read syscall per message on runtimes that do not cache readiness).
        let woken = Arc::new(Woken {
            flag: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let reader_waker = Waker::from(woken.clone());
        futures_util::pin_mut!(writer, reader);
        std::future::poll_fn(|cx| {
            if signals.poll_aborted(cx).is_ready() {
                return Poll::Ready(None);
            }
            if writer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(ReadEnd::Done));
            }
            woken.task.register(cx.waker());
            if woken.flag.swap(false, Ordering::AcqRel) {
                if let Poll::Ready(end) = reader
                    .as_mut()
                    .poll(&mut Context::from_waker(&reader_waker))
                {
                    return Poll::Ready(Some(end));
                }
            }
            Poll::Pending
        })
        .await
    };
    if let Some(ReadEnd::Violation(code, reason)) = end {
        // Say why, if the socket takes it now; a peer that does not read gets no wait.
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = sink.send(Message::Close(Some(frame))).now_or_never();
    }
    let _ = incoming.send(wrap(Incoming::Closed)).await;
}
