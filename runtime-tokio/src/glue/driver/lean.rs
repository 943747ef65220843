//! The lean path: ASP.NET Core clients' transport requests (negotiate, the WebSocket
//! upgrade, an event stream, long polls and sends), served on the socket itself.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB header buffer for every connection, for as
//! long as it lives; an event-stream client holds two connections (its stream, and the one
//! its sends are kept alive on), a long-polling client two as well. Here a connection keeps
//! nothing between requests: a request head is read into a buffer as large as what came,
//! which goes once the request is parsed, and a response is written straight from its parts.
//!
//! Only requests that [`RequestHead::lean`] takes are served here (the core draws that line);
//! at the first other one, the connection goes to hyper with the bytes read so far, for the
//! rest of its life. The answer itself is [`answer`]'s, whichever server read the request.
//!
//! As under hyper: a head has the header timeout to arrive whole (an idle kept-alive
//! connection too), a body the body timeout; a held request and an event stream watch the
//! socket for the peer's end, and keep at most [`MAX_EARLY`] bytes that it sends meanwhile.

use std::future::Future;
use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_channel::mpsc;
use futures_io::{AsyncRead, AsyncWrite};
use futures_util::future::{select, Either};
use futures_util::FutureExt;
use signalr_relay_core::http1::{self, BodyLength, Parsed, RequestHead};
use signalr_relay_core::relay::HttpResponse;

use super::{
    answer, held_response, Answered, Command, ConnHandle, DriverInput, Settings, Side,
    EVENT_STREAM_FIELDS, MAX_REQUEST_HEAD,
};
use crate::glue::gather;
use crate::glue::poll_timer;
use crate::glue::queue::Inbox;
use crate::glue::watched::{poll_watch, Stall};
use crate::glue::ws::with_scratch;
use crate::glue::Runtime;

/// How the lean path left a connection.
pub(super) enum Ended {
    /// It is done (closed, or the peer went).
    Done,
    /// It is done, once closed.
    Close,
    /// It is done, once refused with this status and text (a request head that is not one).
    Refuse(u16, &'static str),
    /// At a request it does not take: hyper serves the rest, with what was read so far.
    Hyper,
    /// Switched to a WebSocket (the `101` is written), with what was read past its head.
    WebSocket(ConnHandle, Side),
}

/// A connection, as its requests need it. In one place, so that the futures that serve it
/// (an idle connection's task is one, waiting for a head) hold one reference to it, not one
/// to each part.
pub(super) struct Conn<R, S> {
    pub(super) runtime: R,
    pub(super) io: S,
    /// Read and not yet used.
    pub(super) buf: Vec<u8>,
    /// The peer's address: its port is never read, and an idle connection's task is smaller
    /// without it.
    pub(super) peer: IpAddr,
    /// The length of `buf` when a head was last looked for in it: not parsed again until more
    /// came. Kept here, in the room the other fields leave, rather than in the head's wait,
    /// whose state is most of an idle connection's task (see `a_connection_task_fits_in_256_bytes`).
    pub(super) parsed: u32,
    pub(super) settings: Arc<Settings>,
}

/// Serves `conn`'s requests while the lean path takes them; what was read and not yet used
/// stays in its `buf`.
///
/// Not an `async fn`, which would keep each argument twice in its state: an idle kept-alive
/// connection's task is this state (the wait for a head), and a held request's is little
/// more (each exchange is boxed).
#[allow(clippy::manual_async_fn)] // An `async fn` would hold its arguments twice.
pub(super) fn serve<'a, R: Runtime, S>(
    conn: &'a mut Conn<R, S>,
) -> impl Future<Output = Ended> + Send + 'a
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        loop {
            // What ends the connection is done by the caller, once this state is gone: an
            // idle connection's state (this wait) has no room for it.
            let head = match read_head(conn).await {
                Ok(head) => head,
                Err(None) => return Ended::Done,
                Err(Some((status, text))) => return Ended::Refuse(status, text),
            };
            if !head.0.lean() {
                return Ended::Hyper;
            }
            // The request's answer, then its reply, each in a box of its own: a held request
            // or an event stream holds only its reply's state, not the answer's.
            let (replying, close) = Box::pin(exchange(conn, head)).await;
            match replying.await {
                Ok(Some((conn, side))) => return Ended::WebSocket(conn, side),
                Ok(None) if close => return Ended::Close,
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!("HTTP connection ended: {e}");
                    return Ended::Done;
                }
            }
            if conn.buf.is_empty() {
                // Idle: let the memory go.
                conn.buf = Vec::new();
            }
        }
    }
}

/// One request, from its parsed head to its answer: the reply to await, and whether the
/// connection closes after it. Not an `async fn` (see `serve`).
#[allow(clippy::manual_async_fn)]
fn exchange<'a, R: Runtime, S>(
    conn: &'a mut Conn<R, S>,
    head: Box<(RequestHead, usize)>,
) -> impl Future<Output = (Replying<'a>, bool)> + Send + 'a
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async move {
        let Conn {
            runtime,
            io,
            buf,
            peer,
            settings,
            ..
        } = conn;
        let limit = WriteLimit::of(runtime, settings);
        let (head, len) = *head;
        buf.drain(..len);
        if buf.is_empty() {
            // What comes next (a body, or a held request's wait) needs none of it.
            *buf = Vec::new();
        }
        let asked_to_close = head.close;
        let length = head.content_length.unwrap_or(0);
        let request = Box::new(head.into_request(Some(*peer)));
        let from = (&mut *io, &mut *buf);
        let body = move |limit: usize| {
            let (io, buf) = from;
            read_body(io, buf, length, limit)
        };
        let answer = Box::pin(answer(
            runtime,
            request,
            length > 0,
            body,
            settings.events.clone(),
            settings,
            // An event stream's queue has its own abort signal (see `reply`).
            None,
        ))
        .await;
        let close = answer.close || asked_to_close;
        (
            reply(
                io,
                buf,
                answer.kind,
                answer.cors,
                close,
                &settings.events,
                limit,
            ),
            close,
        )
    }
}

/// What an answer's reply comes to: `Some` when the connection switched to a WebSocket (its
/// `101` is written); `Err` when it is done.
type Replied = io::Result<Option<(ConnHandle, Side)>>;

/// A reply under way.
type Replying<'a> = Pin<Box<dyn Future<Output = Replied> + Send + 'a>>;

/// Writes an answer's response, or streams it (an event stream), or waits for it (a held
/// request), or switches to a WebSocket (`Some`: its `101` is written); `Err`: the connection
/// is done (a WebSocket's handle told so).
///
/// Each kind in a box of its own: a held request or an event stream is held for long, and
/// its state should be only as large as its own kind's, not the largest kind's.
pub(super) fn reply<'a, R: Runtime, S: AsyncRead + AsyncWrite + Unpin + Send>(
    io: &'a mut S,
    buf: &'a mut Vec<u8>,
    kind: Answered,
    cors: Option<String>,
    close: bool,
    events: &'a mpsc::Sender<DriverInput>,
    limit: WriteLimit<'a, R>,
) -> Replying<'a> {
    match kind {
        Answered::Respond(response) => Box::pin(async move {
            write_response(io, &response, cors.as_deref(), close, limit)
                .await
                .map(|()| None)
        }),
        Answered::EventStream(inbox, notice) => {
            // Lent here, not in the box: what the box captures it holds for the stream's life.
            let notice = notice.lend(events);
            Box::pin(async move {
                // The driver aborts a stream whose peer takes too little: it then ends at once,
                // whatever it was waiting for, and the connection is dropped.
                let abort = inbox.abort_signal();
                let stream = std::pin::pin!(stream_events(io, buf, inbox, cors.as_deref(), limit));
                let streamed = abort.guard(stream).await.unwrap_or_else(|| {
                    Err(io::Error::other(
                        "its event stream stalled, and was dropped",
                    ))
                });
                drop(notice);
                streamed.map(|()| None)
            })
        }
        Answered::Held(held, notice) => {
            let mut notice = notice.lend(events);
            Box::pin(async move {
                let answered = match held {
                    // The peer going ends it: the notice tells the driver.
                    Some(rx) => match select(rx, std::pin::pin!(watch(io, buf))).await {
                        Either::Left((answer, _)) => answer.ok().map(|answer| *answer),
                        Either::Right((gone, _)) => return gone.map(|()| None),
                    },
                    None => None,
                };
                notice.disarm();
                // Boxed: the wait above does not carry room for the write.
                let response = held_response(answered);
                Box::pin(write_response(io, &response, cors.as_deref(), close, limit))
                    .await
                    .map(|()| None)
            })
        }
        Answered::WebSocket(conn, accept, side) => Box::pin(async move {
            let mut head = Vec::with_capacity(256);
            http1::start_response(&mut head, 101);
            http1::field(&mut head, "connection", "upgrade");
            http1::field(&mut head, "upgrade", "websocket");
            http1::field(&mut head, "sec-websocket-accept", &accept);
            cors_fields(&mut head, cors.as_deref());
            http1::end_head(&mut head, BodyLength::None, false);
            if let Err(e) = write_all(io, &mut [IoSlice::new(&head)], limit).await {
                // Never attached: the handle hears that it is gone.
                let closed = DriverInput::Incoming(conn, 0, super::Incoming::Closed);
                let _ = events.clone().try_send(closed);
                return Err(e);
            }
            Ok(Some((conn, side)))
        }),
    }
}

/// A request head and its length, or the refusal to write (none: the peer went).
type HeadRead = Result<Box<(RequestHead, usize)>, Option<(u16, &'static str)>>;

/// Writes a refusal, which closes the connection.
pub(super) async fn refuse<R: Runtime, S: AsyncWrite + Unpin>(
    io: &mut S,
    status: u16,
    text: &str,
    limit: WriteLimit<'_, R>,
) {
    tracing::debug!(status, "HTTP request refused: {text}");
    let refusal = HttpResponse::text(status, text);
    let _ = write_response(io, &refusal, None, true, limit).await;
}

/// Closes a connection once what was written has gone (a TLS one sends its close first).
pub(super) async fn close<R: Runtime, S: AsyncWrite + Unpin>(io: &mut S, limit: WriteLimit<'_, R>) {
    let mut stall = limit.stall();
    let _ = std::future::poll_fn(|cx| stall.check(Pin::new(&mut *io).poll_close(cx), cx)).await;
}

/// The write timeout of a connection's writes (see [`Stall`]).
pub(super) struct WriteLimit<'a, R> {
    runtime: &'a R,
    timeout: std::time::Duration,
}

impl<R> Clone for WriteLimit<'_, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for WriteLimit<'_, R> {}

impl<'a, R: Runtime> WriteLimit<'a, R> {
    pub(super) fn of(runtime: &'a R, settings: &Settings) -> Self {
        Self {
            runtime,
            timeout: settings.options.write_timeout,
        }
    }

    fn stall(&self) -> Stall<R> {
        Stall::new(self.runtime.clone(), self.timeout)
    }
}

/// Reads until `buf` starts with a whole request head, within the header timeout: the head
/// and its length, or `Err` with the refusal to write (none: the peer went, or timed out
/// before sending anything).
///
/// One poll function, whose state is a few words: an idle connection waits here. The socket
/// and the timer are polled with the task's own waker (a socket polled again without news
/// may cost a system call), and the timer is made only when the head is not all there.
fn read_head<'a, R: Runtime, S: AsyncRead + Unpin>(
    conn: &'a mut Conn<R, S>,
) -> impl Future<Output = HeadRead> + 'a {
    let mut deadline = None;
    conn.parsed = u32::MAX;
    std::future::poll_fn(move |cx| loop {
        let Conn {
            runtime,
            io,
            buf,
            settings,
            parsed,
            ..
        } = &mut *conn;
        // At most MAX_REQUEST_HEAD bytes are read onto a head.
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX - 1);
        if *parsed != len && len > 0 {
            *parsed = len;
            match http1::parse_request(buf) {
                Parsed::Complete(head, len) => return Poll::Ready(Ok(Box::new((head, len)))),
                Parsed::Invalid => return Poll::Ready(Err(Some((400, "Bad request.")))),
                Parsed::TooManyFields => {
                    let text = "The request has too many header fields.";
                    return Poll::Ready(Err(Some((431, text))));
                }
                Parsed::Partial if buf.len() >= MAX_REQUEST_HEAD => {
                    return Poll::Ready(Err(Some((431, "The request head is too large."))));
                }
                Parsed::Partial => {}
            }
        }
        let room = MAX_REQUEST_HEAD - buf.len();
        match poll_read_some(io, buf, room, cx) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(None)),
            Poll::Ready(Err(e)) => {
                tracing::debug!("HTTP connection ended: {e}");
                return Poll::Ready(Err(None));
            }
            Poll::Ready(Ok(_)) => continue,
            Poll::Pending => {}
        }
        // The first poll is where the wait starts: it reads until the socket has nothing
        // more, so it always ends here (or with the head).
        let timeout = settings.options.header_read_timeout;
        return match poll_timer(runtime, &mut deadline, timeout, cx) {
            Poll::Ready(()) => Poll::Ready(Err(
                (!buf.is_empty()).then_some((408, "The request head took too long."))
            )),
            Poll::Pending => Poll::Pending,
        };
    })
}

/// Reads once from `io`, at most `max` bytes, onto the end of `buf`: how many (0: the end).
fn read_some<'a, S: AsyncRead + Unpin>(
    io: &'a mut S,
    buf: &'a mut Vec<u8>,
    max: usize,
) -> impl std::future::Future<Output = io::Result<usize>> + Unpin + 'a {
    std::future::poll_fn(move |cx| poll_read_some(io, buf, max, cx))
}

/// Polls a read of at most `max` bytes from `io` onto the end of `buf`.
fn poll_read_some<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    max: usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    with_scratch(|scratch| {
        let len = scratch.len().min(max);
        let n = std::task::ready!(Pin::new(&mut *io).poll_read(cx, &mut scratch[..len]))?;
        buf.extend_from_slice(&scratch[..n]);
        Poll::Ready(Ok(n))
    })
}

/// Reads a body of `length` bytes, or its first `max` (`true`: all of it was read); what
/// comes after it stays in `buf`.
pub(super) async fn read_body<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    length: u64,
    max: usize,
) -> Result<(Bytes, bool), ()> {
    let want = usize::try_from(length).unwrap_or(usize::MAX).min(max);
    while buf.len() < want {
        let needed = want - buf.len();
        if read_some(io, buf, needed).await.map_err(drop)? == 0 {
            return Err(());
        }
    }
    let rest = buf.split_off(want);
    let body = std::mem::replace(buf, rest);
    Ok((Bytes::from(body), want as u64 == length))
}

/// Writes a whole response (`cors`: the origin that may read it).
async fn write_response<R: Runtime, S: AsyncWrite + Unpin>(
    io: &mut S,
    response: &HttpResponse,
    cors: Option<&str>,
    close: bool,
    limit: WriteLimit<'_, R>,
) -> io::Result<()> {
    let mut head = Vec::with_capacity(256);
    http1::start_response(&mut head, response.status);
    http1::field(&mut head, "content-type", response.content_type);
    http1::field(&mut head, "cache-control", "no-cache, no-store");
    for (name, value) in &response.headers {
        http1::field(&mut head, name, value);
    }
    cors_fields(&mut head, cors);
    // No length on a 204, which has no body (RFC 9110 §8.6).
    let length = match response.status {
        204 => BodyLength::None,
        _ => BodyLength::Fixed(response.body.len()),
    };
    http1::end_head(&mut head, length, close);
    let mut parts = [IoSlice::new(&head), IoSlice::new(&response.body)];
    write_all(io, &mut parts, limit).await
}

/// Streams an event stream's messages as chunks, as they come, and its end; `Err` when the
/// peer went (or sent more than a request head while it was open).
async fn stream_events<R: Runtime, S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    mut inbox: Inbox,
    cors: Option<&str>,
    limit: WriteLimit<'_, R>,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(256);
    http1::start_response(&mut out, 200);
    for (name, value) in EVENT_STREAM_FIELDS {
        http1::field(&mut out, name, value);
    }
    cors_fields(&mut out, cors);
    http1::end_head(&mut out, BodyLength::Chunked, false);
    write_all(io, &mut [IoSlice::new(&out)], limit).await?;
    loop {
        let next = std::future::poll_fn(|cx| inbox.poll_next(cx));
        let first = match select(next, std::pin::pin!(watch(io, buf))).await {
            Either::Left((command, _)) => command,
            Either::Right((gone, _)) => return gone,
        };
        // Everything queued goes in one write.
        out.clear();
        let mut taken = 0;
        let mut command = first;
        let ended = loop {
            match command {
                // An empty chunk would end the body: an empty message has nothing to send.
                Some(Command::Send { data, .. }) if data.is_empty() => {}
                Some(Command::Send { data, .. }) => {
                    taken += data.len();
                    http1::chunk_header(&mut out, data.len());
                    out.extend_from_slice(&data);
                    out.extend_from_slice(b"\r\n");
                }
                // A close, or the driver let go: the end.
                Some(Command::Close { reason, .. }) => {
                    taken += reason.len();
                    break true;
                }
                None => break true,
            }
            if out.len() >= BATCH {
                break false;
            }
            match poll_now(|cx| inbox.poll_next(cx)) {
                Some(next) => command = next,
                None => break false,
            }
        };
        if ended {
            out.extend_from_slice(http1::LAST_CHUNK);
        }
        // Counted as taken once handed to the socket, as hyper counted a body's frames: a
        // large batch is not a stalled peer while it is being written.
        inbox.taken(taken);
        write_all(io, &mut [IoSlice::new(&out)], limit).await?;
        if ended {
            return Ok(());
        }
        if out.capacity() > BATCH {
            out = Vec::new();
        }
    }
}

/// Bytes of an event stream's messages written at once, at most (past it, a message ends the
/// batch).
const BATCH: usize = 64 * 1024;

/// Polls once, with a waker that does nothing (the caller polls again with its own before it
/// waits): `Some` if ready.
fn poll_now<T>(mut f: impl FnMut(&mut Context<'_>) -> Poll<T>) -> Option<T> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match f(cx) {
            Poll::Ready(t) => Some(t),
            Poll::Pending => None,
        })
    })
    .now_or_never()
    .flatten()
}

/// Reads what the peer sends while a request is held or an event stream is open, keeping it
/// in `buf` for the next request: ends (`Err`) when the peer goes, or sends more than
/// [`MAX_EARLY`](crate::glue::watched::MAX_EARLY) bytes.
async fn watch<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> io::Result<()> {
    std::future::poll_fn(|cx| poll_watch(io, buf, cx)).await
}

/// Adds the CORS fields of a response that `origin` may read. SignalR clients send
/// credentials, so the origin is echoed (never `*`).
fn cors_fields(out: &mut Vec<u8>, origin: Option<&str>) {
    if let Some(origin) = origin {
        http1::field(out, "access-control-allow-origin", origin);
        http1::field(out, "access-control-allow-credentials", "true");
    }
}

/// Writes all of `bufs`, within the write limit for each write.
async fn write_all<R: Runtime, S: AsyncWrite + Unpin>(
    io: &mut S,
    mut bufs: &mut [IoSlice<'_>],
    limit: WriteLimit<'_, R>,
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    let mut stall = limit.stall();
    while !bufs.is_empty() {
        let n = std::future::poll_fn(|cx| {
            stall.check(gather::poll_write_parts(&mut *io, bufs, cx), cx)
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}
