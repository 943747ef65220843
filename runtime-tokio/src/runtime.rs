//! What the glue needs from an async runtime.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Instant;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Spawning and sleeping, the two things the glue asks of a runtime.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// The timer hyper uses for its header-read timeout.
    type Timer: hyper::rt::Timer + Send + Sync + 'static;

    /// Runs `future` in the background.
    fn spawn(&self, future: impl Future<Output = ()> + Send + 'static);

    /// Completes at `deadline`.
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
