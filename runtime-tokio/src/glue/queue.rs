//! One peer's outgoing queue, bounded in bytes, and the signals around it.
//!
//! The driver pushes into an [`Outbox`]; the socket's writer drains the matching [`Inbox`]. The
//! bytes waiting are counted when pushed and uncounted when the socket takes them, so the
//! driver sees a peer that stopped reading as soon as its bound is reached, whatever the
//! message sizes. A single message larger than the bound is taken when nothing else waits.
//!
//! The same shared state carries three signals:
//! - **abort**: the driver judged the peer too slow; its socket is dropped at once (the task
//!   serving it stops, so the descriptor and every buffer are freed), without a goodbye that
//!   could wait forever on a peer that does not read;
//! - **progress**: bytes written so far, so that the driver can close a peer whose socket took
//!   nothing for the write timeout;
//! - **pause**: the driver stops reading from a client while the server connection it feeds
//!   is congested, and the writer of that server connection says when it drained.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake};

use bytes::Bytes;
use futures_util::task::AtomicWaker;

/// What to do on a socket.
#[derive(Debug)]
pub(crate) enum Command {
    /// Send a message (binary or text).
    Send { data: Bytes, binary: bool },
    /// Send a close frame and stop.
    Close { code: u16, reason: String },
}

impl Command {
    /// How many bytes it counts for in a queue.
    pub(crate) fn size(&self) -> usize {
        match self {
            Self::Send { data, .. } => data.len(),
            Self::Close { reason, .. } => reason.len(),
        }
    }
}

/// Tells a task serving a socket to stop now.
#[derive(Debug, Default)]
pub(crate) struct AbortSignal {
    aborted: AtomicBool,
    /// A connection hyper serves: set while one of its requests is held, so that its stream
    /// watches for the peer's end ([`super::watched`]).
    watched: AtomicBool,
    waker: AtomicWaker,
}

impl AbortSignal {
    pub(crate) fn watched(&self) -> bool {
        self.watched.load(Ordering::Relaxed)
    }

    pub(crate) fn set_watched(&self, on: bool) {
        self.watched.store(on, Ordering::Relaxed);
    }

    pub(crate) fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once aborted.
    pub(crate) fn poll_aborted(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.aborted.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.aborted.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Runs `future` until it completes (`Some`) or the signal fires (`None`; the caller then
    /// drops `future`). Pinned by the caller: a future taken by value would be held twice in
    /// this one's state, as the argument and as the pinned local.
    pub(crate) fn guard<'a, F: Future>(
        &'a self,
        mut future: Pin<&'a mut F>,
    ) -> impl Future<Output = Option<F::Output>> + 'a {
        std::future::poll_fn(move |cx| {
            if self.poll_aborted(cx).is_ready() {
                return Poll::Ready(None);
            }
            future.as_mut().poll(cx).map(Some)
        })
    }
}

/// Commands in order. One is held in place: a connection mostly has one message or none
/// waiting (a broadcast queues one for each of a thousand receivers before any of them runs),
/// and a queue of its own would be allocated and freed for each.
#[derive(Debug, Default)]
pub(crate) enum Waiting {
    /// Nothing, and no allocation.
    #[default]
    Empty,
    One(Command),
    /// Two or more; back to `Empty`, and the memory freed, once the writer took them.
    Many(VecDeque<Command>),
}

impl Iterator for Waiting {
    type Item = Command;

    fn next(&mut self) -> Option<Command> {
        self.pop_front()
    }
}

impl Waiting {
    fn push_back(&mut self, command: Command) {
        *self = match std::mem::take(self) {
            Self::Empty => Self::One(command),
            Self::One(first) => Self::Many(VecDeque::from([first, command])),
            Self::Many(mut many) => {
                many.push_back(command);
                Self::Many(many)
            }
        };
    }

    fn pop_front(&mut self) -> Option<Command> {
        match std::mem::take(self) {
            Self::Empty => None,
            Self::One(command) => Some(command),
            Self::Many(mut many) => {
                let first = many.pop_front();
                if !many.is_empty() {
                    *self = Self::Many(many);
                }
                first
            }
        }
    }
}

/// A queue's abort signal: its own (a WebSocket's, and an event stream's on the lean path,
/// whose writer runs under it), or one shared with hyper's connection serving the stream.
#[derive(Debug)]
enum Abort {
    Own(AbortSignal),
    Shared(Arc<AbortSignal>),
}

impl std::ops::Deref for Abort {
    type Target = AbortSignal;

    fn deref(&self) -> &AbortSignal {
        match self {
            Self::Own(own) => own,
            Self::Shared(shared) => shared,
        }
    }
}

/// A queue's abort signal, held apart from its [`Inbox`].
pub(crate) struct QueueAbort(Arc<Shared>);

impl std::ops::Deref for QueueAbort {
    type Target = AbortSignal;

    fn deref(&self) -> &AbortSignal {
        &self.0.abort
    }
}

/// Everything both ends share: one allocation per peer.
#[derive(Debug)]
struct Shared {
    commands: Mutex<Waiting>,
    /// The driver let go of the queue: the writer ends once it took what waits. Set and read
    /// under the commands' lock; beside them, not with them, where they would make every
    /// queue's allocation 16 bytes larger.
    driver_gone: AtomicBool,
    /// The writer ended: pushes fail. Set and read under the commands' lock.
    writer_gone: AtomicBool,
    /// The writer, waiting for a command.
    writer: AtomicWaker,
    /// The socket's own readiness: set by [`Inbox::socket_waker`] when it fires.
    socket_ready: AtomicBool,
    /// The task serving the socket, woken when the socket's readiness fires.
    socket_task: AtomicWaker,
    /// Bytes pushed and not yet taken by the socket.
    queued: AtomicUsize,
    /// Bytes the socket has taken, ever.
    written: AtomicU64,
    abort: Abort,
    /// Set while the driver holds clients paused on this queue.
    congested: AtomicBool,
    /// Set while the driver wants this peer's socket left unread.
    paused: AtomicBool,
    read_waker: AtomicWaker,
}

/// The driver's end: bounded pushes, and the signals.
#[derive(Debug)]
pub(crate) struct Outbox {
    shared: Arc<Shared>,
    limit: usize,
    pause_at: usize,
    server: bool,
}

/// The writer's end.
#[derive(Debug)]
pub(crate) struct Inbox {
    shared: Arc<Shared>,
    /// Below this many queued bytes a congested queue counts as drained.
    low_water: usize,
}

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The message did not fit: the peer is not keeping up.
    Full,
    /// The socket's task has ended (its `Closed` is on the way).
    Gone,
}

/// A queue of at most `limit` bytes, whose socket stops when `abort` fires (given none, the
/// queue has its own, fired by [`Outbox::abort`]). `pause_at` is
/// where the driver starts pausing reads: of the clients that feed it, for a `server`
/// connection's queue; of the peer itself, for a client's. It counts as drained below half
/// of that.
pub(crate) fn channel(
    limit: usize,
    pause_at: usize,
    server: bool,
    abort: Option<Arc<AbortSignal>>,
) -> (Outbox, Inbox) {
    let shared = Arc::new(Shared {
        commands: Mutex::default(),
        driver_gone: AtomicBool::new(false),
        writer_gone: AtomicBool::new(false),
        writer: AtomicWaker::new(),
        socket_ready: AtomicBool::new(false),
        socket_task: AtomicWaker::new(),
        queued: AtomicUsize::new(0),
        written: AtomicU64::new(0),
        abort: abort.map_or_else(|| Abort::Own(AbortSignal::default()), Abort::Shared),
        congested: AtomicBool::new(false),
        paused: AtomicBool::new(false),
        read_waker: AtomicWaker::new(),
    });
    (
        Outbox {
            shared: shared.clone(),
            limit,
            pause_at,
            server,
        },
        Inbox {
            shared,
            low_water: pause_at / 2,
        },
    )
}

impl Outbox {
    /// Queues `command`, unless that would take the queue past its bound. A close always fits.
    pub(crate) fn push(&self, command: Command) -> Result<(), Refused> {
        let size = command.size();
        let queued = self.shared.queued.load(Ordering::Acquire);
        let is_close = matches!(command, Command::Close { .. });
        if !is_close && queued > 0 && queued.saturating_add(size) > self.limit {
            return Err(Refused::Full);
        }
        {
            let mut commands = self.shared.lock();
            if self.shared.writer_gone.load(Ordering::Relaxed) {
                return Err(Refused::Gone);
            }
            self.shared.queued.fetch_add(size, Ordering::AcqRel);
            commands.push_back(command);
        }
        self.shared.writer.wake();
        Ok(())
    }

    /// Bytes waiting.
    pub(crate) fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// Whether so much waits that the clients feeding this queue should pause.
    pub(crate) fn over_pause_mark(&self) -> bool {
        self.queued() > self.pause_at
    }

    /// Whether this is a server connection's queue (fed by many clients).
    pub(crate) fn is_server(&self) -> bool {
        self.server
    }

    /// Bytes the socket has taken so far.
    pub(crate) fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Acquire)
    }

    /// Stops the peer's socket now.
    pub(crate) fn abort(&self) {
        self.shared.abort.abort();
    }

    /// Marks this queue congested (the driver paused clients on it); the writer reports
    /// when it drained. Returns whether it was already marked.
    pub(crate) fn set_congested(&self) -> bool {
        self.shared.congested.swap(true, Ordering::AcqRel)
    }

    /// Stops (or resumes) reading this peer's socket.
    pub(crate) fn set_paused(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::Release);
        if !paused {
            self.shared.read_waker.wake();
        }
    }
}

impl Inbox {
    /// The next command, if one is queued; otherwise wakes `cx` when one is (`None`: the
    /// driver let go of this queue, and everything it queued was taken).
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Command>> {
        if let Some(next) = self.take() {
            return next;
        }
        self.shared.writer.register(cx.waker());
        self.take().unwrap_or(Poll::Pending)
    }

    fn take(&self) -> Option<Poll<Option<Command>>> {
        let mut commands = self.shared.lock();
        match commands.pop_front() {
            Some(command) => Some(Poll::Ready(Some(command))),
            None if self.shared.driver_gone.load(Ordering::Relaxed) => Some(Poll::Ready(None)),
            None => None,
        }
    }

    /// Takes every command queued, in order, and registers `cx` to be woken when more come:
    /// all under one lock, where taking them one by one would lock once per command and twice
    /// more to find the queue empty. Also returns whether the driver had let go of this queue
    /// (then nothing more will come).
    pub(crate) fn take_all(&self, cx: &mut Context<'_>) -> (Waiting, bool) {
        let mut commands = self.shared.lock();
        // Registered under the lock that every push takes: a push after this lock is released
        // wakes `cx`.
        self.shared.writer.register(cx.waker());
        let taken = std::mem::take(&mut *commands);
        (taken, self.shared.driver_gone.load(Ordering::Relaxed))
    }

    /// The next command, if one is queued.
    #[cfg(test)]
    pub(crate) fn try_next(&mut self) -> Option<Command> {
        self.shared.lock().pop_front()
    }

    /// The queue's abort signal, for the writer to run under (see [`AbortSignal::guard`]).
    pub(crate) fn abort_signal(&self) -> QueueAbort {
        QueueAbort(self.shared.clone())
    }

    /// A waker for the socket's readiness: it marks the socket ready (see
    /// [`Inbox::socket_ready`]) and wakes the task last given to that. It lives in this queue's
    /// allocation, so that a connection needs no other.
    pub(crate) fn socket_waker(&self) -> std::task::Waker {
        std::task::Waker::from(self.shared.clone())
    }

    /// Whether the socket's waker fired since the last call; registers `cx` to be woken when
    /// it does.
    pub(crate) fn socket_ready(&self, cx: &mut Context<'_>) -> bool {
        self.shared.socket_task.register(cx.waker());
        self.shared.socket_ready.swap(false, Ordering::AcqRel)
    }

    /// The socket took `bytes` of what was queued. Returns `true` when this drains a queue
    /// that was congested (once per congestion).
    pub(crate) fn taken(&self, bytes: usize) -> bool {
        let before = self.shared.queued.fetch_sub(bytes, Ordering::AcqRel);
        self.shared
            .written
            .fetch_add(bytes as u64, Ordering::AcqRel);
        before.saturating_sub(bytes) < self.low_water.max(1)
            && self.shared.congested.swap(false, Ordering::AcqRel)
    }

    /// Ready once the socket must be dropped.
    pub(crate) fn poll_aborted(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.abort.poll_aborted(cx)
    }

    /// Pending (waking `cx` on resume) while the driver wants the socket left unread.
    pub(crate) fn poll_unpaused(&self, cx: &mut Context<'_>) -> Poll<()> {
        let shared = &self.shared;
        if !shared.paused.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        shared.read_waker.register(cx.waker());
        if shared.paused.load(Ordering::Acquire) {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        // Nothing panics while holding it; were it poisoned, the queue is still consistent.
        self.commands.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.socket_ready.store(true, Ordering::Release);
        self.socket_task.wake();
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        {
            let _commands = self.shared.lock();
            self.shared.driver_gone.store(true, Ordering::Relaxed);
        }
        self.shared.writer.wake();
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let dropped = {
            let mut commands = self.shared.lock();
            self.shared.writer_gone.store(true, Ordering::Relaxed);
            std::mem::take(&mut *commands)
        };
        drop(dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(n: usize) -> Command {
        Command::Send {
            data: Bytes::from(vec![b'x'; n]),
            binary: true,
        }
    }

    #[test]
    fn bounded_in_bytes_not_messages() {
        let (out, mut inbox) = channel(100, usize::MAX, false, None);
        out.push(send(60)).expect("fits");
        out.push(send(40)).expect("fits exactly");
        assert!(out.push(send(1)).is_err(), "one byte past the bound");
        assert_eq!(out.queued(), 100);
        let first = inbox.try_next().expect("queued");
        inbox.taken(first.size());
        assert_eq!((out.queued(), out.written()), (40, 60));
        out.push(send(60)).expect("room again");
    }

    #[test]
    fn commands_leave_in_the_order_they_came() {
        let (out, mut inbox) = channel(1000, usize::MAX, false, None);
        let mut next = 0;
        let mut taken = Vec::new();
        // Alone, then a pair, then one more after one of the pair left, then a run.
        for (push, take) in [(1, 1), (2, 1), (1, 2), (5, 5)] {
            for _ in 0..push {
                next += 1;
                out.push(send(next)).expect("fits");
            }
            for _ in 0..take {
                let command = inbox.try_next().expect("queued");
                inbox.taken(command.size());
                taken.push(command.size());
            }
        }
        assert_eq!(taken, (1..=next).collect::<Vec<_>>());
        assert!(inbox.try_next().is_none());
        assert!(matches!(*inbox.shared.lock(), Waiting::Empty));
    }

    /// A waker that records that it was woken.
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::Release);
        }
    }

    #[test]
    fn take_all_takes_everything_in_order_and_a_later_push_wakes_the_writer() {
        let (out, inbox) = channel(1000, usize::MAX, false, None);
        for n in 1..=3 {
            out.push(send(n)).expect("fits");
        }
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = std::task::Waker::from(flag.clone());
        let (taken, driver_gone) = inbox.take_all(&mut Context::from_waker(&waker));
        assert_eq!(taken.map(|c| c.size()).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(!driver_gone);
        assert!(!flag.0.load(Ordering::Acquire));
        out.push(send(4)).expect("fits");
        assert!(flag.0.load(Ordering::Acquire), "the push woke the writer");
    }

    #[test]
    fn take_all_tells_the_driver_gone_with_what_it_left() {
        let (out, inbox) = channel(1000, usize::MAX, false, None);
        out.push(send(1)).expect("fits");
        out.push(send(2)).expect("fits");
        drop(out);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let (taken, driver_gone) = inbox.take_all(&mut cx);
        assert_eq!((taken.count(), driver_gone), (2, true));
        let (taken, driver_gone) = inbox.take_all(&mut cx);
        assert_eq!((taken.count(), driver_gone), (0, true));
    }

    /// Every WebSocket and event stream has one: holding a command in place did not make it
    /// larger (its flags sit beside the lock, not in the lock's record).
    #[test]
    fn a_queue_record_is_184_bytes() {
        let size = std::mem::size_of::<Shared>();
        assert!(size <= 184, "a queue's shared record is {size} bytes");
    }

    #[test]
    fn one_oversized_message_fits_an_empty_queue_and_a_close_always_fits() {
        let (out, _inbox) = channel(100, usize::MAX, false, None);
        out.push(send(500)).expect("alone, it goes");
        assert!(out.push(send(1)).is_err());
        out.push(Command::Close {
            code: 1000,
            reason: String::new(),
        })
        .expect("a close is never refused");
    }

    #[test]
    fn drained_is_reported_once_per_congestion() {
        let (out, mut inbox) = channel(1000, 100, true, None);
        for _ in 0..3 {
            out.push(send(40)).expect("fits");
        }
        assert!(!out.set_congested());
        let c = inbox.try_next().expect("queued");
        assert!(!inbox.taken(c.size()), "80 left: not below 50");
        let c = inbox.try_next().expect("queued");
        assert!(inbox.taken(c.size()), "40 left: drained");
        let c = inbox.try_next().expect("queued");
        assert!(!inbox.taken(c.size()), "reported once");
    }

    #[test]
    fn the_writer_takes_what_waits_then_sees_the_driver_gone() {
        let (out, mut inbox) = channel(100, usize::MAX, false, None);
        out.push(send(3)).expect("fits");
        drop(out);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(inbox.poll_next(&mut cx), Poll::Ready(Some(_))));
        assert!(matches!(inbox.poll_next(&mut cx), Poll::Ready(None)));
    }

    #[test]
    fn a_push_wakes_the_writer() {
        let (out, mut inbox) = channel(100, usize::MAX, false, None);
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let waker = std::task::Waker::from(flag.clone());
        assert!(inbox
            .poll_next(&mut Context::from_waker(&waker))
            .is_pending());
        out.push(send(1)).expect("fits");
        assert!(flag.0.load(Ordering::Acquire));
    }

    #[test]
    fn a_push_to_a_gone_writer_fails() {
        let (out, inbox) = channel(100, usize::MAX, false, None);
        drop(inbox);
        assert_eq!(out.push(send(1)), Err(Refused::Gone));
    }
}
