//! The runtime-neutral glue: everything async that is not a runtime.
//!
//! Written once against `futures-io` and the small [`Runtime`] and [`Listener`] traits, and
//! shared by both adapters (this crate's tokio one, and `signalr-relay-smol`):
//!
//! | module | what |
//! |---|---|
//! | `driver` | the relay served: the one task that owns the [`Relay`](signalr_relay_core::relay::Relay), feeds it and carries out what it says |
//! | `http` | hyper on `futures-io`: requests for the core, responses, CORS |
//! | `accept` | the accept loop: accept errors survived with a pause, a cap on open connections |
//! | `process` | what the process costs (CPU, memory, descriptors), for `/metrics` |
//! | `tls` | TLS on both sides: the listener's certificate (reloaded when its files change) and the SDK's roots |
//! | `backplane` | the cluster's pub/sub engine (Redis): one connection kept up, the relay's publishes bounded in bytes |
//! | `client` | outgoing: name lookups off the runtime's threads, HTTP requests (the SDK's REST calls, the relay's upstream requests) |
//! | `queue` | one peer's outgoing queue, bounded in bytes, with abort, progress and pause signals |
//! | `ws` | one WebSocket pumped: a reader into a channel, a batching writer from its queue |
//! | `gather` | a write of small parts copied into one buffer and sent with one plain write |
//!
//! An adapter says only how its runtime spawns, sleeps, tells the time, connects and accepts.

pub mod accept;
pub mod backplane;
pub(crate) mod client;
pub(crate) mod driver;
pub(crate) mod gather;
pub(crate) mod http;
pub(crate) mod process;
pub(crate) mod queue;
pub mod tls;
pub(crate) mod watched;
pub(crate) mod ws;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Instant;

pub use self::driver::{serve, serve_until, serve_until_with_operator, ServeOptions};

/// 32 random bytes from the OS, for a secret. Without OS randomness the process stops (with
/// `without` in its log: what would be guessable otherwise) rather than go on with one.
pub(crate) fn random_bytes(without: &str) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
        tracing::error!("no OS randomness: {without}");
        std::process::abort();
    }
    bytes
}
pub use self::http::serve_http;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Polls the timer of a wait that may last `timeout`: `timer` is made at the wait's first
/// pending poll, so a wait that ends before it was ever pending (a body that came with its
/// head, a write the socket took at once) makes none; a timer is an allocation and a
/// registration with the runtime's timers. Set `timer` to `None` to start the wait again.
pub(crate) fn poll_timer<R: Runtime>(
    runtime: &R,
    timer: &mut Option<BoxFuture<()>>,
    timeout: std::time::Duration,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<()> {
    timer
        .get_or_insert_with(|| runtime.sleep_until(runtime.now() + timeout))
        .as_mut()
        .poll(cx)
}

/// What the glue asks of an async runtime: spawning, the time, sleeping, connecting.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// The timer hyper uses for its header-read timeout.
    type Timer: hyper::rt::Timer + Send + Sync + 'static;

    /// Runs `future` in the background.
    fn spawn(&self, future: impl Future<Output = ()> + Send + 'static);

    /// The time now, on the runtime's clock. The glue reads the time only here, so a runtime
    /// whose clock is virtual (tokio's paused clock, in tests) runs the relay on it.
    fn now(&self) -> Instant;

    /// Completes at `deadline`, on the runtime's clock.
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<()>;

    /// hyper's timer.
    fn hyper_timer(&self) -> Self::Timer;

    /// An outgoing TCP connection.
    type Stream: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static;

    /// Connects to `addr` (with `TCP_NODELAY`).
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// A source of accepted connections.
pub trait Listener: Send + 'static {
    /// An accepted connection.
    type Stream: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static;

    /// Waits for the next connection.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;

    /// The address it listens on.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Gives every other ready task a turn (runtime-agnostic).
pub(crate) async fn yield_now() {
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
