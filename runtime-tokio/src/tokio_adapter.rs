//! The tokio adapter: how tokio spawns, tells the time, sleeps, connects and accepts.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead as _, AsyncWrite as _, ReadBuf};

use crate::glue::accept::{tcp_listener, DEFAULT_BACKLOG};
use crate::glue::{BoxFuture, Listener, Runtime};

/// Runs the glue on the current tokio runtime.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioRuntime;

impl Runtime for TokioRuntime {
    type Timer = hyper_util::rt::TokioTimer;

    fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        tokio::spawn(future);
    }

    fn now(&self) -> Instant {
        // tokio's clock: virtual when paused (tests), the monotonic clock otherwise.
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<()> {
        Box::pin(tokio::time::sleep_until(deadline.into()))
    }

    fn hyper_timer(&self) -> Self::Timer {
        hyper_util::rt::TokioTimer::new()
    }

    type Stream = TokioStream;

    async fn connect(&self, addr: SocketAddr) -> io::Result<Self::Stream> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(TokioStream(stream))
    }
}

/// A tokio TCP listener.
#[derive(Debug)]
pub struct TokioListener(pub tokio::net::TcpListener);

impl TokioListener {
    /// Binds `addr`, with a backlog of [`DEFAULT_BACKLOG`] connections.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Self::bind_with_backlog(addr, DEFAULT_BACKLOG).await
    }

    /// Binds `addr`, with room for `backlog` connections not yet accepted (see
    /// [`tcp_listener`]).
    ///
    /// # Errors
    /// When the address cannot be bound.
    #[allow(clippy::unused_async)] // Async as `bind` always was: binding needs the runtime.
    pub async fn bind_with_backlog(addr: SocketAddr, backlog: u32) -> io::Result<Self> {
        let listener = tcp_listener(addr, backlog)?;
        Ok(Self(tokio::net::TcpListener::from_std(listener)?))
    }
}

impl Listener for TokioListener {
    type Stream = TokioStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, addr) = self.0.accept().await?;
        // Only a latency setting: a socket that refuses it is served anyway.
        let _ = stream.set_nodelay(true);
        Ok((TokioStream(stream), addr))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// A tokio TCP stream as `futures-io` sees one, with vectored writes (`writev`: a WebSocket's
/// queued frames in one system call, past what the glue gathers into one `send`).
#[derive(Debug)]
pub struct TokioStream(pub tokio::net::TcpStream);

impl futures_io::AsyncRead for TokioStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut self.0).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl futures_io::AsyncWrite for TokioStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
