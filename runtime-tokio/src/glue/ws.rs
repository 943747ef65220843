//! One WebSocket of the relay, pumped: one task that reads the socket into the driver's
//! channel and writes the connection's byte-bounded queue to the socket.
//!
//! Framing is `core`'s ([`signalr_relay_core::websocket`]), so that an idle connection holds
//! no buffer:
//! - **reads** go into a scratch buffer shared by the connections of a thread; only an
//!   unfinished frame is copied into the connection's decoder, and released once complete;
//! - **writes** take everything queued and write it in one write, then flush once: frames
//!   small together are copied into the thread's buffer and sent with a plain write, larger
//!   ones go as they are with a vectored write of each frame's header and payload (no
//!   write buffer of the connection's own either way).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use bytes::{Buf, Bytes};
use futures_channel::mpsc;
use futures_io::{AsyncRead, AsyncWrite};
use signalr_relay_core::websocket::{self, Decoder, Opcode, Received, MAX_HEADER};

pub(crate) use super::queue::Command;
use super::queue::Inbox;

/// The SDK's WebSocket settings (its client side runs on tungstenite): bounded messages, a
/// read buffer for a busy connection, and writes buffered until each flush.
pub(crate) fn sdk_config(max_message_size: usize) -> WebSocketConfig {
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 16 * 1024;
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

/// The scratch buffer a thread's sockets are read into.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// Runs `f` on this thread's scratch buffer (what a socket is read into before its bytes go
/// where they belong).
pub(crate) fn with_scratch<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    SCRATCH_BUFFER.with(|scratch| f(&mut scratch.borrow_mut()))
}

/// Frames written per write (two parts each: gathered into one buffer, or vectored).
const FRAMES_PER_WRITE: usize = 64;

/// A write of this many frames or fewer makes room for their slices alone, not for
/// [`FRAMES_PER_WRITE`] frames' (2 KB of slices, cleared for each write).
const FEW_FRAMES: usize = 2;

/// Writes the first frames of `out` (`N / 2` at most, a header and a payload each) with one
/// write: copied together if they are small, vectored if not ([`super::gather`]).
fn write_frames<const N: usize, S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &VecDeque<Frame>,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    let mut slices = [IoSlice::new(&[]); N];
    let mut used = 0;
    for frame in out.iter().take(N / 2) {
        let header = &frame.header[usize::from(frame.header_sent)..usize::from(frame.header_len)];
        for part in [header, &frame.payload[..]] {
            if !part.is_empty() {
                slices[used] = IoSlice::new(part);
                used += 1;
            }
        }
    }
    super::gather::poll_write_parts(io, &slices[..used], cx)
}

thread_local! {
    /// An empty queue of frames with room, lent to the connection this thread is writing:
    /// an idle connection holds no queue, and one that writes what it took at once gives it
    /// back, so that a message does not allocate and free a queue of its own.
    static SPARE_OUT: Cell<VecDeque<Frame>> = const { Cell::new(VecDeque::new()) };

    /// The last text message this thread found to be UTF-8. A broadcast's one message goes
    /// out on each receiver's connection, and is checked once per thread, not once per
    /// receiver. The message is held, not only its address: while held, its bytes cannot
    /// change, nor be freed and reused for another message at the same address.
    static CHECKED_TEXT: RefCell<Bytes> = const { RefCell::new(Bytes::new()) };
}

/// Below this, a text message is checked each time: cheaper than remembering it.
const REMEMBERED_TEXT: usize = 256;

/// Whether `text` is UTF-8, as a peer requires of a text frame (RFC 6455 §8.1).
fn is_utf8(text: &Bytes) -> bool {
    if text.len() < REMEMBERED_TEXT {
        return std::str::from_utf8(text).is_ok();
    }
    CHECKED_TEXT.with(|checked| {
        let mut checked = checked.borrow_mut();
        if checked.as_ptr() == text.as_ptr() && checked.len() == text.len() {
            return true;
        }
        let utf8 = std::str::from_utf8(text).is_ok();
        if utf8 {
            *checked = text.clone();
        }
        utf8
    })
}

/// An empty queue to take frames into: the thread's spare, if it has one.
fn lend_out() -> VecDeque<Frame> {
    SPARE_OUT.with(Cell::take)
}

/// Gives back an empty queue (no larger than one write's frames, so that a burst's room is
/// not kept).
fn give_back_out(out: VecDeque<Frame>) {
    if out.is_empty() && out.capacity() <= FRAMES_PER_WRITE {
        SPARE_OUT.with(|spare| spare.set(out));
    }
}

/// One frame on its way out: the header, and the payload as it was queued.
struct Frame {
    header: [u8; MAX_HEADER],
    header_len: u8,
    /// Of the header, already written.
    header_sent: u8,
    /// A pong (at most one is queued at a time).
    pong: bool,
    payload: Bytes,
    /// What it counts for in the connection's queue, reported once it is written.
    queued: usize,
}

impl Frame {
    fn new(opcode: Opcode, payload: Bytes) -> Self {
        let (header, len) = websocket::header(opcode, payload.len());
        Self {
            header,
            header_len: len as u8,
            header_sent: 0,
            pong: opcode == Opcode::Pong,
            payload,
            queued: 0,
        }
    }

    fn queued(mut self, size: usize) -> Self {
        self.queued = size;
        self
    }

    /// A close frame without a code.
    fn empty_close() -> Self {
        Self::new(Opcode::Close, Bytes::new())
    }

    fn close(code: u16, reason: &str) -> Self {
        Self::new(
            Opcode::Close,
            Bytes::from(websocket::close_payload(code, reason)),
        )
    }

    /// Marks up to `n` bytes written; returns what was left of `n`.
    fn advance(&mut self, mut n: usize) -> usize {
        let header_left = usize::from(self.header_len - self.header_sent);
        let took = header_left.min(n);
        self.header_sent += took as u8;
        n -= took;
        let took = self.payload.len().min(n);
        self.payload.advance(took);
        n - took
    }

    fn done(&self) -> bool {
        self.header_sent == self.header_len && self.payload.is_empty()
    }
}

/// How the pump ends.
#[derive(PartialEq, Eq)]
enum Ending {
    /// Still running.
    No,
    /// Write what is queued (a close frame last), shut the socket down, and stop.
    AfterWrites,
    /// Try once to write what is queued (a close frame saying why), without waiting for a
    /// peer that does not read, and stop.
    Soon,
    /// The socket is done with: what was read (unless the connection was aborted), then
    /// `Incoming::Closed`, go to the driver.
    Ended,
}

/// Messages read and waiting for room in the driver's channel, at most: past this the decoder
/// keeps the rest of what was read, and the socket is not read.
const MAX_RECEIVED: usize = 128;

/// Everything the pump holds, and the future that runs it (written by hand: an `async fn`
/// would hold its arguments and its state apart, twice the size, for every connection's
/// life). Its collections are empty, and hold no allocation, while the connection is idle.
pub(crate) struct Pump<S, E, F> {
    io: S,
    decoder: Decoder,
    inbox: Inbox,
    incoming: mpsc::Sender<E>,
    wrap: F,
    /// Read and not yet taken by the driver's channel.
    received: VecDeque<E>,
    /// A drained queue to report.
    report_drained: bool,
    /// Frames to write.
    out: VecDeque<Frame>,
    /// The latest ping not yet answered (one pong at a time is queued, for the latest:
    /// RFC 6455 §5.5.3), and whether a pong is in `out`.
    /// Boxed: pings are rare, and every WebSocket's task would carry the room for one.
    ping: Option<Box<Bytes>>,
    pong_queued: bool,
    /// The decoder stopped with whole frames left (the channel was full).
    backlog: bool,
    /// Written since the last flush.
    unflushed: bool,
    /// The socket may have bytes (it has not said otherwise since its waker fired).
    readable: bool,
    /// The waker the socket is read with: it marks the socket readable (see
    /// [`Inbox::socket_waker`]). The socket is read only when it fired (or has not yet said
    /// it has nothing): tried each time something is queued for writing, it would cost a
    /// failed read system call per message on runtimes that do not cache readiness.
    reader: Waker,
    ending: Ending,
}

impl<S, E, F> Pump<S, E, F>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Incoming) -> E,
{
    /// Takes what is queued, as frames, and the pong owed.
    fn take_queued(&mut self, cx: &mut Context<'_>) {
        if self.out.capacity() == 0 {
            self.out = lend_out();
        }
        if !self.pong_queued {
            if let Some(payload) = self.ping.take() {
                self.out.push_back(Frame::new(Opcode::Pong, *payload));
                self.pong_queued = true;
            }
        }
        if self.ending != Ending::No {
            return;
        }
        // Taken under the queue's lock, and turned into frames after it is released.
        let (taken, driver_gone) = self.inbox.take_all(cx);
        for command in taken {
            let size = command.size();
            match command {
                Command::Send { data, binary } => {
                    // Text must be UTF-8 to the peer, whatever the app server wrote.
                    if binary {
                        self.out
                            .push_back(Frame::new(Opcode::Binary, data).queued(size));
                    } else if is_utf8(&data) {
                        self.out
                            .push_back(Frame::new(Opcode::Text, data).queued(size));
                    } else if self.inbox.taken(size) {
                        self.report_drained = true;
                    }
                }
                Command::Close { code, reason } => {
                    self.out.push_back(Frame::close(code, &reason).queued(size));
                    // Nothing after it is written: the driver let go of this connection
                    // when it queued the close.
                    self.ending = Ending::AfterWrites;
                    break;
                }
            }
        }
        if driver_gone && self.ending == Ending::No {
            // The driver let go of this connection.
            self.out.push_back(Frame::empty_close());
            self.ending = Ending::AfterWrites;
        }
    }

    /// Writes what it can of `out`. `Err` when the socket failed.
    fn write(&mut self, cx: &mut Context<'_>) -> Result<(), ()> {
        while !self.out.is_empty() {
            // Most writes are of a frame or two.
            let wrote = if self.out.len() <= FEW_FRAMES {
                write_frames::<{ 2 * FEW_FRAMES }, _>(&mut self.io, &self.out, cx)
            } else {
                write_frames::<{ 2 * FRAMES_PER_WRITE }, _>(&mut self.io, &self.out, cx)
            };
            match wrote {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(()),
                Poll::Ready(Ok(mut n)) => {
                    self.unflushed = true;
                    // What the socket took is reported as soon as it took it.
                    let mut written = 0;
                    while n > 0 || self.out.front().is_some_and(Frame::done) {
                        let Some(front) = self.out.front_mut() else {
                            break;
                        };
                        n = front.advance(n);
                        if front.done() {
                            written += front.queued;
                            self.pong_queued &= !front.pong;
                            self.out.pop_front();
                        }
                    }
                    if written > 0 && self.inbox.taken(written) {
                        self.report_drained = true;
                    }
                }
                Poll::Pending => return Ok(()),
            }
        }
        // Written: the queue goes back to the thread, and this connection holds none.
        give_back_out(std::mem::take(&mut self.out));
        if self.unflushed {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(_)) => return Err(()),
                Poll::Pending => return Ok(()),
            }
        }
        Ok(())
    }

    /// Hands what was read to the driver, as far as its channel takes it. `Err` when the
    /// driver is gone.
    fn forward(&mut self, cx: &mut Context<'_>) -> Result<(), ()> {
        while self.report_drained || !self.received.is_empty() {
            match self.incoming.poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return Err(()),
                Poll::Pending => return Ok(()),
            }
            let incoming = if self.report_drained {
                self.report_drained = false;
                (self.wrap)(Incoming::Drained)
            } else if let Some(message) = self.received.pop_front() {
                message
            } else {
                break;
            };
            if self.incoming.start_send(incoming).is_err() {
                return Err(());
            }
        }
        self.received = VecDeque::new();
        Ok(())
    }

    /// Reads once, if the driver wants more and the socket may have some. Returns whether it
    /// read anything; `Err` when the socket ended.
    fn read(&mut self, cx: &mut Context<'_>) -> Result<bool, ()> {
        if !self.received.is_empty() || self.ending != Ending::No {
            return Ok(false);
        }
        if self.inbox.poll_unpaused(cx).is_pending() {
            return Ok(false);
        }
        if self.backlog {
            // Frames already read, before more.
            self.decoded(&[]);
            return Ok(true);
        }
        if !self.readable {
            return Ok(false);
        }
        with_scratch(|scratch| {
            let mut reading = Context::from_waker(&self.reader);
            match Pin::new(&mut self.io).poll_read(&mut reading, scratch) {
                Poll::Pending => {
                    self.readable = false;
                    Ok(false)
                }
                Poll::Ready(Ok(0) | Err(_)) => Err(()),
                Poll::Ready(Ok(n)) => {
                    self.decoded(&scratch[..n]);
                    Ok(true)
                }
            }
        })
    }

    /// Acts on bytes read (or on the decoder's backlog, given none): messages go to the
    /// driver (straight into its channel while it has room; past [`MAX_RECEIVED`] waiting,
    /// the decoder keeps the rest), pings are answered, a close is answered and ends the
    /// pump, and a protocol violation is answered with its close code and ends it.
    fn decoded(&mut self, bytes: &[u8]) {
        let Self {
            decoder,
            received,
            out,
            ping,
            ending,
            incoming,
            wrap,
            ..
        } = self;
        let result = decoder.decode_until(bytes, &mut |r| {
            match r {
                Received::Message(data) => {
                    let message = wrap(Incoming::Data(data));
                    if !received.is_empty() {
                        received.push_back(message);
                    } else if let Err(e) = incoming.try_send(message) {
                        // Full: wait for room. Disconnected: the driver is gone, and the
                        // pump finds out when it forwards.
                        received.push_back(e.into_inner());
                    }
                }
                Received::Ping(payload) => *ping = Some(Box::new(payload)),
                Received::Close(code) => {
                    // Its code echoed, or none if it gave none.
                    out.push_back(code.map_or_else(Frame::empty_close, |c| Frame::close(c, "")));
                    *ending = Ending::AfterWrites;
                }
            }
            if received.len() >= MAX_RECEIVED {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        match result {
            Ok(stopped) => self.backlog = stopped,
            Err(e) => {
                // Say why (RFC 6455 §7.4.1), if the socket takes it now.
                out.push_back(Frame::close(e.close_code(), e.reason()));
                *ending = Ending::Soon;
            }
        }
    }

    /// Runs the connection until it ends: `Ready(aborted)`.
    fn run(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if self.inbox.poll_aborted(cx).is_ready() {
            return Poll::Ready(true);
        }
        if self.inbox.socket_ready(cx) {
            self.readable = true;
        }
        loop {
            self.take_queued(cx);
            if self.write(cx).is_err() {
                return Poll::Ready(false);
            }
            match self.ending {
                Ending::Soon => return Poll::Ready(false),
                Ending::AfterWrites if self.out.is_empty() && !self.unflushed => {
                    let _ = Pin::new(&mut self.io).poll_close(cx);
                    return Poll::Ready(false);
                }
                _ => {}
            }
            if self.forward(cx).is_err() {
                return Poll::Ready(false);
            }
            match self.read(cx) {
                Err(()) => return Poll::Ready(false),
                Ok(true) => {}
                Ok(false) => return Poll::Pending,
            }
        }
    }

    /// What was read before the end (a last message, then the close) still reaches the
    /// driver, unless the connection was aborted; then that it ended. A message is made once
    /// the channel has room, so that no future holds one.
    fn finish(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.incoming.poll_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {}
            }
            let (message, last) = match self.received.pop_front() {
                Some(message) => (message, false),
                None => ((self.wrap)(Incoming::Closed), true),
            };
            if self.incoming.start_send(message).is_err() || last {
                return Poll::Ready(());
            }
        }
    }
}

impl<S, E, F> Future for Pump<S, E, F>
where
    S: AsyncRead + AsyncWrite + Unpin,
    E: Unpin,
    F: Fn(Incoming) -> E + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let pump = self.get_mut();
        if pump.ending != Ending::Ended {
            let Poll::Ready(aborted) = pump.run(cx) else {
                return Poll::Pending;
            };
            pump.ending = Ending::Ended;
            pump.out = VecDeque::new();
            if aborted {
                pump.received = VecDeque::new();
            }
        }
        pump.finish(cx)
    }
}

/// Runs a WebSocket (`early`: bytes already read past the upgrade request) until either side
/// ends it, or the queue's abort signal fires (then the socket is dropped at once). Every
/// incoming data message goes to `incoming` (a full channel stops reading, so a slow consumer
/// applies backpressure to the socket), and none is read while the driver has the queue
/// paused; `Incoming::Drained` reports a congested queue that drained; `Incoming::Closed` is
/// sent exactly once at the end.
pub(crate) fn pump<S, E, F>(
    io: S,
    early: &[u8],
    max_message: usize,
    inbox: Inbox,
    incoming: mpsc::Sender<E>,
    wrap: F,
) -> Pump<S, E, F>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(Incoming) -> E,
{
    let reader = inbox.socket_waker();
    let mut pump = Pump {
        io,
        decoder: Decoder::new(max_message),
        inbox,
        incoming,
        wrap,
        received: VecDeque::new(),
        report_drained: false,
        out: VecDeque::new(),
        ping: None,
        pong_queued: false,
        backlog: false,
        unflushed: false,
        readable: true,
        reader,
        ending: Ending::No,
    };
    if !early.is_empty() {
        pump.decoded(early);
    }
    pump
}

#[cfg(all(test, feature = "tokio"))]
mod tests {
    use super::*;
    use crate::glue::queue;
    use crate::TokioStream;
    use futures_util::AsyncReadExt;

    fn text(data: Bytes) -> Command {
        Command::Send {
            data,
            binary: false,
        }
    }

    /// Text frames a server wrote (unmasked, each in one frame), up to its close frame.
    async fn texts_until_close(peer: &mut TokioStream) -> Vec<Vec<u8>> {
        let mut wire = Vec::new();
        peer.read_to_end(&mut wire).await.expect("read");
        let mut texts = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let opcode = wire[at] & 0x0f;
            let (len, header) = match wire[at + 1] & 0x7f {
                126 => (
                    usize::from(u16::from_be_bytes([wire[at + 2], wire[at + 3]])),
                    4,
                ),
                small => (usize::from(small), 2),
            };
            let payload = wire[at + header..at + header + len].to_vec();
            at += header + len;
            match opcode {
                0x1 => texts.push(payload),
                0x8 => break,
                other => panic!("opcode {other}"),
            }
        }
        texts
    }

    /// A text frame's payload must be UTF-8 (the peer fails the connection otherwise), so
    /// text that is not is left out. A long one found to be UTF-8 is remembered by its
    /// address, so that a broadcast is checked once: the same message again is not checked,
    /// and another message of the same length at another address is.
    #[tokio::test]
    async fn text_that_is_not_utf8_is_left_out_and_a_remembered_one_is_its_own() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TokioStream(
            tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap(),
        );
        let (socket, _) = listener.accept().await.unwrap();
        let (outbox, inbox) = queue::channel(1 << 20, usize::MAX, false, None);
        let (incoming, _keep) = mpsc::channel::<Incoming>(8);

        let long = Bytes::from(vec![b'a'; 300]);
        let mut broken = vec![b'a'; 300];
        broken[150] = 0xff;
        let broken = Bytes::from(broken);
        let mut short_broken = b"short".to_vec();
        short_broken[2] = 0xc3;
        // Two bytes a letter: a prefix of odd length ends inside one.
        let accented = Bytes::from("é".repeat(200));
        for command in [
            text(long.clone()),
            // The same message, as a broadcast hands each receiver its own reference.
            text(long.clone()),
            // Not UTF-8, at another address, the same length: checked, and left out.
            text(broken.clone()),
            // The same again: a failure is not remembered as a success.
            text(broken.clone()),
            text(Bytes::from(short_broken)),
            text(Bytes::from("héllo")),
            // A copy of the first, at another address.
            text(Bytes::copy_from_slice(&long)),
            text(accented.clone()),
            // The remembered message's address, a shorter length: checked, and left out.
            text(accented.slice(..301)),
            Command::Close {
                code: 1000,
                reason: String::new(),
            },
        ] {
            outbox.push(command).expect("fits");
        }
        tokio::spawn(pump(
            TokioStream(socket),
            &[],
            1024,
            inbox,
            incoming,
            |incoming| incoming,
        ));
        let texts = texts_until_close(&mut peer).await;
        let expected: Vec<Vec<u8>> = vec![
            long.to_vec(),
            long.to_vec(),
            "héllo".as_bytes().to_vec(),
            long.to_vec(),
            accented.to_vec(),
        ];
        assert_eq!(texts, expected);
        // What was left out counts as taken, as what was written does.
        assert_eq!(outbox.queued(), 0);
        // Remembered by address: text at another address, the same length, is checked.
        assert!(is_utf8(&long));
        assert!(!is_utf8(&broken));
        assert!(is_utf8(&long), "still remembered, and still right");
    }
}
