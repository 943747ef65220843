//! The smol adapter of SignalR Relay.
//!
//! All the async glue (HTTP, WebSockets, the relay driver, the app-server SDK) lives in
//! `signalr-relay-tokio`'s runtime-neutral [`glue`], written against `futures-io`; this crate
//! uses that package with its `tokio` feature off (it pulls in no tokio) and says only how
//! smol spawns, tells the time, sleeps, connects and accepts.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use async_io::Async;
use signalr_relay_tokio::glue::accept::{tcp_listener, DEFAULT_BACKLOG};
use smol::io::{AsyncRead, AsyncWrite};

#[doc(hidden)]
pub use signalr_relay_tokio::{app, sample};
pub use signalr_relay_tokio::{
    cli, core, glue, sample_app, sdk, serve, serve_http, serve_until, serve_until_with_operator,
    BoxFuture, Listener, Runtime, ServeOptions,
};

mod timers;

/// The executor every task runs on: [`block_on`] runs it on the calling thread (and on one
/// more thread per extra core), so that a relay on one core wakes no other thread.
static EXECUTOR: smol::Executor<'static> = smol::Executor::new();

/// The glue's sleeps, on one async-io timer.
static TIMERS: timers::Timers = timers::Timers::new(|timers| {
    EXECUTOR.spawn(timers.drive()).detach();
});

/// Runs the glue on this crate's executor (see [`block_on`]). Its tasks, and its sleeps, need
/// that executor running: a sleep is woken by a task of its own there.
#[derive(Debug, Clone, Copy, Default)]
pub struct SmolRuntime;

impl Runtime for SmolRuntime {
    type Timer = HyperTimer;

    fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        EXECUTOR.spawn(future).detach();
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    /// On one async-io timer for every sleep (see the `timers` module).
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<()> {
        Box::pin(TIMERS.sleep_until(deadline))
    }

    fn hyper_timer(&self) -> Self::Timer {
        HyperTimer
    }

    type Stream = SmolStream;

    async fn connect(&self, addr: SocketAddr) -> io::Result<Self::Stream> {
        let stream = Async::<TcpStream>::connect(addr).await?;
        stream.get_ref().set_nodelay(true)?;
        Ok(SmolStream::new(stream))
    }
}

/// hyper's sleeps (a kept-alive connection's wait for its next request head), on the same
/// timer as the glue's.
#[derive(Debug, Clone, Copy)]
pub struct HyperTimer;

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, duration: std::time::Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        // A duration past what an `Instant` holds is a sleep that does not end in practice.
        let now = Instant::now();
        let far = std::time::Duration::from_secs(100 * 365 * 24 * 3600);
        self.sleep_until(now.checked_add(duration).unwrap_or(now + far))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(TIMERS.sleep_until(deadline))
    }
}

/// A TCP stream on smol's reactor that, as tokio's does, takes a read that did not fill its
/// buffer to mean the socket is empty: the next read waits for the reactor's word instead of
/// paying a system call to hear that nothing came (a third of the reads a relayed message
/// cost). The socket is held directly, without `smol::net`'s shared handle.
#[derive(Debug)]
pub struct SmolStream {
    io: Async<TcpStream>,
    /// The last read did not fill its buffer.
    drained: bool,
}

impl SmolStream {
    fn new(io: Async<TcpStream>) -> Self {
        Self { io, drained: false }
    }
}

impl AsyncRead for SmolStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.drained {
            // Registers interest (as a read that found nothing would) until data comes. Epoll
            // is re-armed level-triggered, so bytes that came meanwhile wake it at once. The
            // flag goes first: the poll after a wake reads. async-io may answer Pending for an
            // event that its reactor delivered in the wait it was in, on another thread, when
            // the interest was registered; a read that waited for its readiness again was then
            // left waiting (for 30 s and more in a test of several threads) until something
            // else woke the reactor. The cost: a task polled again without news (an event
            // stream's watch, woken for a message to send) reads once and finds nothing.
            this.drained = false;
            ready!(this.io.poll_readable(cx))?;
        }
        let n = ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if n > 0 && n < buf.len() {
            // The readiness that brought these bytes may still be on record: spend it now, so
            // that the next read waits for news. Pending has registered interest already; an
            // error (interest not registered) leaves the next read to find out.
            this.drained = !matches!(this.io.poll_readable(cx), Poll::Ready(Err(_)));
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for SmolStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    /// Ends the sending side (a FIN), as `smol::net` does; the socket closes when dropped.
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.io.get_ref().shutdown(std::net::Shutdown::Write))
    }
}

/// A smol TCP listener.
#[derive(Debug)]
pub struct SmolListener(pub Async<TcpListener>);

impl SmolListener {
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
    #[allow(clippy::unused_async)] // Async as `bind` always was.
    pub async fn bind_with_backlog(addr: SocketAddr, backlog: u32) -> io::Result<Self> {
        Ok(Self(Async::new(tcp_listener(addr, backlog)?)?))
    }
}

impl Listener for SmolListener {
    type Stream = SmolStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, addr) = self.0.accept().await?;
        // Only a latency setting: a socket that refuses it is served anyway.
        let _ = stream.get_ref().set_nodelay(true);
        Ok((SmolStream::new(stream), addr))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().local_addr()
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use smol::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Fails the test instead of hanging it when a read is never woken.
    async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
        let hang = async {
            async_io::Timer::after(Duration::from_secs(30)).await;
            panic!("{what}: never woken");
        };
        smol::future::or(f, hang).await
    }

    /// Writes `bytes` a moment later, while the other side waits.
    async fn later(bytes: &[u8], client: &mut SmolStream) {
        async_io::Timer::after(Duration::from_millis(20)).await;
        client.write_all(bytes).await.unwrap();
    }

    #[test]
    fn a_read_after_a_short_read_waits_for_data_and_misses_none() {
        smol::block_on(async {
            let mut listener = SmolListener::bind("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let addr = listener.local_addr().unwrap();
            let mut client = SmolRuntime.connect(addr).await.unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];

            // A read that waited for its bytes, and found fewer than it could take.
            let (n, ()) = smol::future::zip(
                within("first", server.read(&mut buf)),
                later(b"hello", &mut client),
            )
            .await;
            assert_eq!(n.unwrap(), 5);
            assert!(server.drained);
            // The readiness that brought them is spent: the socket is not reported readable
            // again until something new comes (so the next read makes no system call).
            let probe = std::future::poll_fn(|cx| server.io.poll_readable(cx).map(|_| ()));
            assert!(
                smol::future::poll_once(probe).await.is_none(),
                "a stale readiness was left"
            );
            assert!(smol::future::poll_once(server.read(&mut buf))
                .await
                .is_none());
            client.write_all(b"abc").await.unwrap();
            assert_eq!(within("second", server.read(&mut buf)).await.unwrap(), 3);
            assert_eq!(&buf[..3], b"abc");

            // A full read leaves the socket unjudged.
            client.write_all(&[1u8; 64]).await.unwrap();
            assert_eq!(within("full", server.read(&mut buf)).await.unwrap(), 64);
            assert!(!server.drained);

            // Bytes that arrive after the readiness was spent, with nothing armed, are seen:
            // the wait re-arms the socket, and epoll reports what is already there.
            let (n, ()) = smol::future::zip(
                within("third", server.read(&mut buf)),
                later(b"hello", &mut client),
            )
            .await;
            assert_eq!(n.unwrap(), 5);
            client.write_all(b"xy").await.unwrap();
            async_io::Timer::after(Duration::from_millis(20)).await;
            assert_eq!(within("fourth", server.read(&mut buf)).await.unwrap(), 2);
            assert_eq!(&buf[..2], b"xy");

            // The end reads as 0.
            client.write_all(&[7u8; 100]).await.unwrap();
            client.close().await.unwrap();
            let mut got = Vec::new();
            within("to the end", server.read_to_end(&mut got))
                .await
                .unwrap();
            assert_eq!(got, [7u8; 100]);
        });
    }

    /// Megabytes read to the end on the crate's executor, with its threads as the relay runs
    /// them. Before the poll after a wake read, a read here waited 30 s and more for a
    /// readiness async-io had already delivered, in about one round of three.
    #[test]
    fn large_reads_to_the_end_on_several_threads() {
        block_on(async {
            let mut listener = SmolListener::bind("127.0.0.1:0".parse().unwrap())
                .await
                .unwrap();
            let addr = listener.local_addr().unwrap();
            for round in 0..4 {
                let mut client = SmolRuntime.connect(addr).await.unwrap();
                let (mut server, _) = listener.accept().await.unwrap();
                let writer = EXECUTOR.spawn(async move {
                    let chunk = vec![5u8; 1 << 20];
                    for _ in 0..12 {
                        server.write_all(&chunk).await.unwrap();
                    }
                    async_io::Timer::after(Duration::from_millis(200)).await;
                    server.close().await.unwrap();
                });
                async_io::Timer::after(Duration::from_millis(200)).await;
                let mut got = Vec::new();
                within(&format!("round {round}"), client.read_to_end(&mut got))
                    .await
                    .unwrap();
                assert_eq!(got.len(), 12 << 20);
                writer.await;
            }
        });
    }
}
