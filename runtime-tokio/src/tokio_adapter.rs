//! The tokio adapter: how tokio spawns, tells the time, sleeps, connects and accepts.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

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

    type Stream = Compat<tokio::net::TcpStream>;

    async fn connect(&self, addr: SocketAddr) -> io::Result<Self::Stream> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream.compat())
    }
}

/// A tokio TCP listener.
#[derive(Debug)]
pub struct TokioListener(pub tokio::net::TcpListener);

impl TokioListener {
    /// Binds `addr`.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Ok(Self(tokio::net::TcpListener::bind(addr).await?))
    }
}

impl Listener for TokioListener {
    type Stream = Compat<tokio::net::TcpStream>;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, addr) = self.0.accept().await?;
        // Only a latency setting: a socket that refuses it is served anyway.
        let _ = stream.set_nodelay(true);
        Ok((stream.compat(), addr))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}
