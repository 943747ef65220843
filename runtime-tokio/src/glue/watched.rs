//! A connection's stream as hyper sees it, which watches for the peer's end while one of its
//! requests is held (a long poll waiting for data, an event stream open).
//!
//! Left to itself, hyper watches a connection mid-message by reading it into its whole read
//! buffer, which it allocates (8 KiB) for every held request. Told not to (`half_close`), it
//! would notice a peer that went away only when a write failed, up to a keep-alive later.
//! Instead, while the connection's [`AbortSignal`] says a request is held, each of hyper's
//! flushes reads the socket into a few bytes on the stack:
//! - the end of the stream (or an error) fails the flush: hyper closes the connection, and
//!   the held request's drop notice tells the driver;
//! - bytes the peer sent early (a pipelined request, which real clients do not send behind a
//!   held one) are kept, in order, for hyper's next reads; past [`MAX_EARLY`] the peer is
//!   sending what no request head needs, and that fails the flush too.
//!
//! Its writes have the write timeout ([`Stall`]): a response the peer never reads fails once
//! the socket has taken nothing for that long, and hyper closes the connection.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_io::{AsyncRead, AsyncWrite};
use hyper::rt::ReadBufCursor;

use super::queue::AbortSignal;
use super::{BoxFuture, Runtime};

/// A write's patience: a socket that takes nothing for the write timeout
/// ([`ServeOptions::write_timeout`](super::ServeOptions)) fails the write, so that a peer
/// that never reads a response does not hold its connection, and the response, for as long
/// as it likes. A slow peer is not cut: each time the socket takes something, the wait starts
/// again. The timer is made only when a write is pending.
pub(crate) struct Stall<R> {
    runtime: R,
    timeout: std::time::Duration,
    timer: Option<BoxFuture<()>>,
}

// The runtime is a handle, never pinned through a stall.
impl<R> Unpin for Stall<R> {}

impl<R: Runtime> Stall<R> {
    pub(crate) fn new(runtime: R, timeout: std::time::Duration) -> Self {
        Self {
            runtime,
            timeout,
            timer: None,
        }
    }

    /// `polled` (a write's, a flush's or a close's), or a timeout error once the socket has
    /// been pending for the whole timeout.
    pub(crate) fn check<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.timer = None;
            return polled;
        }
        match super::poll_timer(&self.runtime, &mut self.timer, self.timeout, cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer took nothing for the write timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Bytes kept for hyper at most, read behind a held request.
pub(crate) const MAX_EARLY: usize = 8 * 1024;

/// What is read at a time while watching.
const WATCH_READ: usize = 256;

/// A futures-io stream for hyper (see the module).
pub(crate) struct WatchedIo<S, R> {
    io: S,
    signal: Arc<AbortSignal>,
    /// Read while watching, not yet taken by hyper.
    early: Vec<u8>,
    stall: Stall<R>,
}

impl<S, R> WatchedIo<S, R> {
    /// `early`: bytes already read from `io`, which hyper reads first.
    pub(crate) fn with_early(
        io: S,
        signal: Arc<AbortSignal>,
        early: Vec<u8>,
        stall: Stall<R>,
    ) -> Self {
        Self {
            io,
            signal,
            early,
            stall,
        }
    }

    /// The stream, and what was read from it that hyper has not taken (it comes after all that
    /// hyper read, and before what the stream has yet to give).
    pub(crate) fn into_parts(self) -> (S, Vec<u8>) {
        (self.io, self.early)
    }
}

/// Reads what the peer sent while a request is held (or an event stream is open) onto the end
/// of `early`, until there is no more (`Pending`, woken when there is): `Ready(Err)` once the
/// peer is gone, or has sent more than [`MAX_EARLY`] bytes in all. Hyper's connections watch
/// with it on each flush, and the lean path while it waits.
pub(crate) fn poll_watch<S: AsyncRead + Unpin>(
    io: &mut S,
    early: &mut Vec<u8>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    let mut scratch = [0u8; WATCH_READ];
    loop {
        let n = ready!(Pin::new(&mut *io).poll_read(cx, &mut scratch))?;
        if n == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the peer closed the connection while its request was held",
            )));
        }
        if early.len() + n > MAX_EARLY {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the peer sent more than a request head while its request was held",
            )));
        }
        early.reserve_exact(n);
        early.extend_from_slice(&scratch[..n]);
    }
}

impl<S: AsyncRead + Unpin, R> hyper::rt::Read for WatchedIo<S, R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.early.is_empty() {
            let n = this.early.len().min(buf.remaining());
            buf.put_slice(&this.early[..n]);
            this.early.drain(..n);
            if this.early.is_empty() {
                this.early = Vec::new();
            }
            return Poll::Ready(Ok(()));
        }
        // Read through the thread's scratch buffer: hyper's is uninitialised, and zeroing
        // all of it (8 KiB and more) for every read costs more than copying what came.
        super::ws::with_scratch(|scratch| {
            let len = scratch.len().min(buf.remaining());
            let n = ready!(Pin::new(&mut this.io).poll_read(cx, &mut scratch[..len]))?;
            buf.put_slice(&scratch[..n]);
            Poll::Ready(Ok(()))
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin, R: Runtime> hyper::rt::Write for WatchedIo<S, R> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, buf);
        this.stall.check(written, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // hyper hands a response's head and body apart; small ones go in one plain write.
        let written = super::gather::poll_write_parts(&mut this.io, bufs, cx);
        this.stall.check(written, cx)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.signal.watched() {
            if let Poll::Ready(Err(e)) = poll_watch(&mut this.io, &mut this.early, cx) {
                return Poll::Ready(Err(e));
            }
        }
        let flushed = Pin::new(&mut this.io).poll_flush(cx);
        this.stall.check(flushed, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let closed = Pin::new(&mut this.io).poll_close(cx);
        this.stall.check(closed, cx)
    }
}

/// Turns the watch on for as long as it lives (a held request, an open event stream).
pub(crate) struct Watch(Arc<AbortSignal>);

impl Watch {
    pub(crate) fn start(signal: &Arc<AbortSignal>) -> Self {
        signal.set_watched(true);
        Self(signal.clone())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.set_watched(false);
    }
}
