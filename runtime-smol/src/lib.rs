//! The smol adapter of SignalR Relay.
//!
//! All the async glue (HTTP, WebSockets, the relay driver, the app-server SDK) lives in
//! `signalr-relay-tokio`'s runtime-neutral [`glue`], written against `futures-io`; this crate
//! uses that package with its `tokio` feature off (it pulls in no tokio) and says only how
//! smol spawns, tells the time, sleeps, connects and accepts.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Instant;

#[doc(hidden)]
pub use signalr_relay_tokio::{app, sample};
pub use signalr_relay_tokio::{
    cli, core, glue, sample_app, sdk, serve, serve_http, serve_until, serve_until_with_operator,
    BoxFuture, Listener, Runtime, ServeOptions,
};

/// The executor every task runs on: [`block_on`] runs it on the calling thread (and on one
/// more thread per extra core), so that a relay on one core wakes no other thread.
static EXECUTOR: smol::Executor<'static> = smol::Executor::new();

/// Runs the glue on this crate's executor (see [`block_on`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SmolRuntime;

impl Runtime for SmolRuntime {
    type Timer = smol_hyper::rt::SmolTimer;

    fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        EXECUTOR.spawn(future).detach();
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<()> {
        Box::pin(async move {
            async_io::Timer::at(deadline).await;
        })
    }

    fn hyper_timer(&self) -> Self::Timer {
        smol_hyper::rt::SmolTimer::new()
    }

    type Stream = smol::net::TcpStream;

    async fn connect(&self, addr: SocketAddr) -> io::Result<Self::Stream> {
        let stream = smol::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// A smol TCP listener.
#[derive(Debug)]
pub struct SmolListener(pub smol::net::TcpListener);

impl SmolListener {
    /// Binds `addr`.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Ok(Self(smol::net::TcpListener::bind(addr).await?))
    }
}

impl Listener for SmolListener {
    type Stream = smol::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, addr) = self.0.accept().await?;
        // Only a latency setting: a socket that refuses it is served anyway.
        let _ = stream.set_nodelay(true);
        Ok((stream, addr))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// Runs `main`, and every task the glue spawns, on the calling thread, plus one more thread
/// per further core the process may use (pinned to one core, it wakes no other thread).
pub fn block_on<F: Future<Output = ()> + Send + 'static>(main: F) {
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    for _ in 1..threads {
        std::thread::spawn(|| smol::block_on(EXECUTOR.run(std::future::pending::<()>())));
    }
    // `main` is a task of its own, polled when it is woken: run as the executor's own future,
    // it would be polled (and its listener tried, a failed `accept` and a re-arm of the
    // reactor) every time the executor woke up for any task.
    smol::block_on(EXECUTOR.run(EXECUTOR.spawn(main)));
}
