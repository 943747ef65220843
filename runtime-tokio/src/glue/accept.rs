//! The accept loop shared by every listener: it survives accept errors and caps how many
//! connections are open at once.
//!
//! An accept error is never fatal. Errors about one connection (reset or aborted before it was
//! taken) are skipped. Anything else, most often running out of file descriptors (`EMFILE`,
//! `ENFILE`), is logged at most once a second and waited out with a growing pause (5 ms, doubling
//! to 1 s), as hyper's and tokio's servers do: the backlog keeps the peers waiting, and the loop
//! recovers by itself once descriptors are free.
//!
//! Past the connection cap, a new socket is closed as soon as it is accepted, before any byte of
//! it is read: it costs a descriptor for an instant, and the connections already admitted are
//! untouched.
//!
//! The listening sockets come from [`tcp_listener`], with a backlog of [`DEFAULT_BACKLOG`]
//! connections (`--listen-backlog`), not the standard library's 128.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::glue::{Listener, Runtime};

/// How many connections the kernel holds for the accept loop by default: the listen backlog.
/// Linux caps it at `net.core.somaxconn` (4096 since Linux 5.4).
pub const DEFAULT_BACKLOG: u32 = 4096;

/// A listening socket on `addr` with room for `backlog` connections not yet accepted,
/// non-blocking, for an adapter to take.
///
/// The standard library's `TcpListener::bind`, and mio's (which tokio's calls), ask for a
/// backlog of 128; async-io's calls the standard library's. When a storm of clients connects at
/// once (every client of a restarted relay reconnecting), the kernel drops the handshakes past
/// it, and each of those clients tries again a second later, then at 3 s and 7 s: with 1,000
/// connecting at once, the slowest waited over a second (README, Performance). A larger backlog
/// keeps them queued instead; a queued connection costs the kernel a socket until it is
/// accepted, and nothing before it is. Where the kernel caps the backlog lower, that is logged.
///
/// # Errors
/// When the socket cannot be made, bound or put to listen.
pub fn tcp_listener(addr: SocketAddr, backlog: u32) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As the standard library does on Unix: a restarted relay binds again at once, while its
    // predecessor's connections wait out TIME_WAIT.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    socket.set_nonblocking(true)?;
    if let Some(cap) = kernel_backlog_cap().filter(|&cap| cap < backlog) {
        tracing::warn!(
            %addr,
            backlog,
            cap,
            "the kernel caps the listen backlog at net.core.somaxconn: raise it to queue more"
        );
    }
    Ok(socket.into())
}

/// The most a listen backlog may be, where the kernel says (Linux: `net.core.somaxconn`, per
/// network namespace).
pub fn kernel_backlog_cap() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// How many connections are open, against a cap. Shared by the accept loop and every
/// [`Admitted`] guard.
#[derive(Debug)]
pub struct ConnectionCount {
    open: AtomicUsize,
    max: usize,
}

impl ConnectionCount {
    /// A count capped at `max` open connections (`usize::MAX`: no cap).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub(crate) fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        admitted.then(|| Admitted(self.clone()))
    }
}

/// One admitted connection: counted until dropped.
#[derive(Debug)]
pub struct Admitted(Arc<ConnectionCount>);

/// An admitted connection's stream, with its place under the cap: the place is given back
/// when the stream is dropped, wherever it went. A WebSocket's socket goes on to a pump of its
/// own after the task that accepted it ends, and still counts.
#[derive(Debug)]
pub(crate) struct Counted<S> {
    io: S,
    _admitted: Admitted,
}

impl<S> Counted<S> {
    pub(crate) fn new(io: S, admitted: Admitted) -> Self {
        Self {
            io,
            _admitted: admitted,
        }
    }
}

impl<S: futures_io::AsyncRead + Unpin> futures_io::AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }

    fn poll_read_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &mut [io::IoSliceMut<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_read_vectored(cx, bufs)
    }
}

impl<S: futures_io::AsyncWrite + Unpin> futures_io::AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_close(cx)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Descriptors kept free for everything that is not a connection (the listener, the poller,
/// logs).
const RESERVED_DESCRIPTORS: u64 = 64;

/// The default cap: the process's descriptor limit less a reserve, so that the cap, not the
/// kernel, refuses connections. No cap where the limit cannot be read.
pub fn default_max_connections() -> usize {
    #[cfg(unix)]
    {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        if let Some(current) = limit.current {
            let usable = current.saturating_sub(RESERVED_DESCRIPTORS).max(16);
            return usize::try_from(usable).unwrap_or(usize::MAX);
        }
    }
    usize::MAX
}

/// Raises the process's soft descriptor limit to its hard limit, as Go's runtime and nginx's
/// `worker_rlimit_nofile` do: the soft limit is often 1024, far below what a relay holds.
/// Call it before reading [`default_max_connections`].
pub fn raise_descriptor_limit() {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut limit = getrlimit(Resource::Nofile);
        let below_hard = match (limit.current, limit.maximum) {
            (Some(soft), Some(hard)) => soft < hard,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if below_hard {
            limit.current = limit.maximum;
            if let Err(e) = setrlimit(Resource::Nofile, limit) {
                tracing::debug!("could not raise the descriptor limit: {e}");
            }
        }
    }
}

/// Errors about the one connection being accepted, not about the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// A warning at most once a second, with how many were held back.
#[derive(Default)]
struct RateLimitedLog(RateLimited);

impl RateLimitedLog {
    fn warn(&mut self, now: Instant, what: &str, detail: &dyn std::fmt::Display) {
        if let Some(similar_since_last) = self.0.allow(now) {
            tracing::warn!(what, %detail, similar_since_last, "accepting connections");
        }
    }
}

/// Lets one log line through per second: [`allow`](Self::allow) says how many were held
/// back since the last one let through, or `None` to hold this one back.
#[derive(Debug, Default)]
pub(crate) struct RateLimited {
    last: Option<Instant>,
    held_back: u64,
}

impl RateLimited {
    const EVERY: Duration = Duration::from_secs(1);

    pub(crate) const fn new() -> Self {
        Self {
            last: None,
            held_back: 0,
        }
    }

    pub(crate) fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Self::EVERY)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

/// Accepts connections on `listener` forever, handing each admitted one to `serve` with the
/// guard that counts it. Never returns.
pub async fn accept_loop<R, L, F>(
    runtime: &R,
    mut listener: L,
    count: Arc<ConnectionCount>,
    mut serve: F,
) where
    R: Runtime,
    L: Listener,
    F: FnMut(L::Stream, SocketAddr, Admitted),
{
    let mut pause = FIRST_PAUSE;
    let mut errors = RateLimitedLog::default();
    let mut refusals = RateLimitedLog::default();
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                pause = FIRST_PAUSE;
                match count.admit() {
                    Some(admitted) => serve(stream, peer, admitted),
                    None => {
                        drop(stream);
                        refusals.warn(
                            runtime.now(),
                            "connection refused: the connection cap is reached",
                            &count.max,
                        );
                    }
                }
            }
            Err(e) if is_per_connection(&e) => {}
            Err(e) => {
                errors.warn(runtime.now(), "accept failed; pausing", &e);
                runtime.sleep_until(runtime.now() + pause).await;
                pause = (pause * 2).min(LONGEST_PAUSE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    use super::*;

    /// Connections past the standard library's backlog of 128 wait in the queue for the
    /// accept loop: 300 connects to a listener that accepts none complete. With a backlog of
    /// 128 the kernel drops the handshakes past 129, and those connects time out.
    #[test]
    fn a_listener_queues_its_backlog() {
        let listener = tcp_listener("127.0.0.1:0".parse().unwrap(), 1024).unwrap();
        let addr = listener.local_addr().unwrap();
        // Fewer where the kernel caps backlogs lower (it queues one more than its cap).
        let n = kernel_backlog_cap().map_or(300, |cap| 300.min(cap as usize + 1));
        let held = (0..n)
            // A guard against a hang, not a measure of speed: a queued connect completes at
            // once, a dropped one is retried by the kernel a second later, then at 3 s and 7 s.
            .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(30)))
            .collect::<io::Result<Vec<_>>>()
            .expect("every connect queued");
        assert_eq!(held.len(), n);
    }

    #[test]
    fn a_listener_binds_again_while_the_last_ones_connections_wait() {
        // A connection closed by the listener's side waits out TIME_WAIT on its port; a new
        // listener binds the port anyway, as the standard library's would.
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let listener = tcp_listener(addr, 16).unwrap();
        let bound = listener.local_addr().unwrap();
        listener.set_nonblocking(false).unwrap();
        let client = TcpStream::connect(bound).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        drop(server_side);
        drop(client);
        drop(listener);
        let again = tcp_listener(bound, 16).unwrap();
        assert_eq!(again.local_addr().unwrap(), bound);
    }
}
