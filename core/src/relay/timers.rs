//! Timers: a small table per connection, keyed by [`TimerKind`], and one ordered queue of
//! every armed timer (as quinn's `TimerTable`, with a shared index).
//!
//! Each part sets and clears only its own kinds; the relay dispatches a due timer to the part
//! that owns its kind. Some timers are lazy: keep-alives and silence timeouts are armed for the
//! earliest moment they could be due, and re-armed from the connection's last activity when
//! they fire, so that traffic never touches the queue.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::ConnHandle;

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum TimerKind {
    /// Client: negotiated, its transport must come (negotiate timeout).
    Negotiate,
    /// ASP.NET Core client: its handshake must come (handshake timeout).
    Handshake,
    /// Client: a keep-alive is due when nothing was sent for a while; ASP.NET Core clients
    /// that sent nothing for the client timeout are closed.
    KeepAlive,
    /// Client: a held poll is answered empty.
    PollHold,
    /// Client: without a receive channel for too long, the client is gone.
    Disconnect,
    /// Stateful client: acknowledge what it sent.
    Ack,
    /// Stateful client: output held behind the first-message gate goes.
    Gate,
    /// Stateful client: its reconnect window closes.
    Reconnect,
    /// Client: its authentication expires, and it is closed (`asrs.s.coae`).
    AuthExpired,
    /// Server connection: its HandshakeRequest must come.
    ServerHandshake,
    /// Server connection: a ping is due.
    ServerPing,
    /// Server connection: silent for the server timeout, it is dropped.
    ServerSilence,
}

impl TimerKind {
    /// Its slot in its connection's table: client and server connections have tables of
    /// their own.
    fn slot(self) -> usize {
        match self {
            Self::ServerHandshake => 0,
            Self::ServerPing => 1,
            Self::ServerSilence => 2,
            client => client as usize,
        }
    }

    pub(crate) fn is_server(self) -> bool {
        matches!(
            self,
            Self::ServerHandshake | Self::ServerPing | Self::ServerSilence
        )
    }
}

/// The client kinds, by slot.
const CLIENT_KINDS: [TimerKind; 9] = [
    TimerKind::Negotiate,
    TimerKind::Handshake,
    TimerKind::KeepAlive,
    TimerKind::PollHold,
    TimerKind::Disconnect,
    TimerKind::Ack,
    TimerKind::Gate,
    TimerKind::Reconnect,
    TimerKind::AuthExpired,
];

/// The server kinds, by slot.
const SERVER_KINDS: [TimerKind; 3] = [
    TimerKind::ServerHandshake,
    TimerKind::ServerPing,
    TimerKind::ServerSilence,
];

/// One connection's armed timers, one slot per kind: each a [`Tick`] of its queue
/// ([`DISARMED`] when not armed), half the size of an `Option<Instant>`.
#[derive(Debug)]
pub(crate) struct TimerTable<const N: usize>([Tick; N]);

/// A time, as nanoseconds from its queue's origin (the first time it was given), saturating
/// about 292 years either side. The table and the queue hold the same ticks, so that an entry
/// is always found again, however far a time was.
type Tick = i64;

/// A slot with no timer.
const DISARMED: Tick = Tick::MIN;

const CLIENT_SLOTS: usize = CLIENT_KINDS.len();
const SERVER_SLOTS: usize = SERVER_KINDS.len();

/// A client connection's timers.
pub(crate) type ClientTimers = TimerTable<CLIENT_SLOTS>;
/// A server connection's timers.
pub(crate) type ServerTimers = TimerTable<SERVER_SLOTS>;
/// A client connection's timers, borrowed to set and clear.
pub(crate) type ClientTimersMut<'a> = Timers<'a, CLIENT_SLOTS>;

impl<const N: usize> Default for TimerTable<N> {
    fn default() -> Self {
        Self([DISARMED; N])
    }
}

impl<const N: usize> TimerTable<N> {
    const KINDS: &'static [TimerKind] = if N == SERVER_SLOTS {
        &SERVER_KINDS
    } else {
        &CLIENT_KINDS
    };
}

/// Every armed timer, in the order they fall due.
#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    armed: BTreeSet<(Tick, ConnHandle, TimerKind)>,
    /// What ticks count from: the first time given.
    origin: Option<Instant>,
}

impl TimerQueue {
    fn tick(origin: Instant, at: Instant) -> Tick {
        let nanos = |d: Duration| Tick::try_from(d.as_nanos()).unwrap_or(Tick::MAX);
        match at.checked_duration_since(origin) {
            Some(after) => nanos(after),
            // Never `DISARMED`.
            None => -nanos(origin.duration_since(at)),
        }
    }

    fn instant(&self, tick: Tick) -> Option<Instant> {
        let origin = self.origin?;
        if tick == DISARMED {
            None
        } else if tick >= 0 {
            origin.checked_add(Duration::from_nanos(tick.unsigned_abs()))
        } else {
            origin.checked_sub(Duration::from_nanos(tick.unsigned_abs()))
        }
    }

    /// The timers of one connection, to set and clear while handling an input at `now`.
    pub(crate) fn of<'a, const N: usize>(
        &'a mut self,
        conn: ConnHandle,
        table: &'a mut TimerTable<N>,
        now: Instant,
    ) -> Timers<'a, N> {
        self.origin.get_or_insert(now);
        Timers {
            queue: self,
            table,
            conn,
            now,
        }
    }

    /// The earliest armed timer.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.armed
            .first()
            .and_then(|&(tick, _, _)| self.instant(tick))
    }

    /// Takes the earliest timer due at `now`. The connection's part must then be told, with
    /// [`Timers::fired`].
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(ConnHandle, TimerKind)> {
        let &(first, _, _) = self.armed.first()?;
        if first > Self::tick(self.origin?, now) {
            return None;
        }
        self.armed.pop_first().map(|(_, conn, kind)| (conn, kind))
    }

    /// Disarms every timer of a connection that is gone.
    pub(crate) fn forget<const N: usize>(&mut self, conn: ConnHandle, table: &TimerTable<N>) {
        for (&tick, &kind) in table.0.iter().zip(TimerTable::<N>::KINDS) {
            if tick != DISARMED {
                self.armed.remove(&(tick, conn, kind));
            }
        }
    }
}

/// The timers of one connection, during one input.
pub(crate) struct Timers<'a, const N: usize> {
    queue: &'a mut TimerQueue,
    table: &'a mut TimerTable<N>,
    conn: ConnHandle,
    /// The input's time: no timer is armed before it, so that `poll_timeout` never goes back
    /// past the last `now` (a deadline already passed is due at once).
    now: Instant,
}

impl<const N: usize> Timers<'_, N> {
    fn slot(&mut self, kind: TimerKind) -> &mut Tick {
        debug_assert_eq!(kind.is_server(), N == SERVER_SLOTS, "{kind:?}");
        &mut self.table.0[kind.slot()]
    }

    /// Takes `kind`'s tick, leaving it disarmed.
    fn take(&mut self, kind: TimerKind) -> Option<Tick> {
        let old = std::mem::replace(self.slot(kind), DISARMED);
        (old != DISARMED).then_some(old)
    }

    /// Arms `kind` for `at` (or now, if `at` has passed), in place of when it was armed for.
    pub(crate) fn set(&mut self, kind: TimerKind, at: Instant) {
        let at = at.max(self.now);
        let conn = self.conn;
        let tick = self
            .queue
            .origin
            .map_or(0, |origin| TimerQueue::tick(origin, at));
        if *self.slot(kind) == tick {
            return;
        }
        if let Some(old) = self.take(kind) {
            self.queue.armed.remove(&(old, conn, kind));
        }
        *self.slot(kind) = tick;
        self.queue.armed.insert((tick, conn, kind));
    }

    /// Arms `kind` for `at`, unless it is armed for earlier.
    pub(crate) fn set_at_most(&mut self, kind: TimerKind, at: Instant) {
        let at = at.max(self.now);
        if self.get(kind).is_none_or(|armed| armed > at) {
            self.set(kind, at);
        }
    }

    /// Disarms `kind`.
    pub(crate) fn clear(&mut self, kind: TimerKind) {
        let conn = self.conn;
        if let Some(old) = self.take(kind) {
            self.queue.armed.remove(&(old, conn, kind));
        }
    }

    /// When `kind` is armed for.
    pub(crate) fn get(&self, kind: TimerKind) -> Option<Instant> {
        self.queue.instant(self.table.0[kind.slot()])
    }

    /// Notes that `kind` fired: [`TimerQueue::pop_due`] already took it from the queue.
    pub(crate) fn fired(&mut self, kind: TimerKind) {
        self.take(kind);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timers_fall_due_in_order_and_can_be_moved_or_cleared() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut queue = TimerQueue::default();
        let (mut a, mut b) = (ClientTimers::default(), ClientTimers::default());
        let (ca, cb) = (ConnHandle(1), ConnHandle(2));
        queue
            .of(ca, &mut a, t0)
            .set(TimerKind::KeepAlive, t0 + 3 * s);
        queue
            .of(ca, &mut a, t0)
            .set(TimerKind::Handshake, t0 + 5 * s);
        queue
            .of(cb, &mut b, t0)
            .set(TimerKind::KeepAlive, t0 + 2 * s);
        assert_eq!(queue.next(), Some(t0 + 2 * s));
        // Moved later: the old entry is gone.
        queue
            .of(cb, &mut b, t0)
            .set(TimerKind::KeepAlive, t0 + 4 * s);
        queue
            .of(ca, &mut a, t0)
            .set_at_most(TimerKind::Handshake, t0 + 6 * s);
        assert_eq!(
            queue.of(ca, &mut a, t0).get(TimerKind::Handshake),
            Some(t0 + 5 * s)
        );
        queue.of(ca, &mut a, t0).clear(TimerKind::KeepAlive);
        assert_eq!(queue.pop_due(t0 + 3 * s), None);
        assert_eq!(queue.pop_due(t0 + 4 * s), Some((cb, TimerKind::KeepAlive)));
        queue.of(cb, &mut b, t0).fired(TimerKind::KeepAlive);
        queue.forget(ca, &a);
        assert_eq!(queue.next(), None);
        // A deadline already passed is due at once, never before the input's time.
        let later = t0 + 10 * s;
        queue.of(cb, &mut b, later).set(TimerKind::Ack, t0);
        assert_eq!(queue.next(), Some(later));
    }

    #[test]
    fn times_before_the_origin_and_far_off_are_found_again() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now() + Duration::from_secs(1000);
        let mut queue = TimerQueue::default();
        let mut a = ClientTimers::default();
        let c = ConnHandle(1);
        queue
            .of(c, &mut a, t0)
            .set(TimerKind::KeepAlive, t0 + Duration::from_nanos(7));
        // An input whose time is before the first one: its timers still order and round-trip.
        let early = t0 - Duration::from_secs(500);
        queue.of(c, &mut a, early).set(TimerKind::Handshake, early);
        assert_eq!(queue.next(), Some(early));
        assert_eq!(
            queue.of(c, &mut a, t0).get(TimerKind::KeepAlive),
            Some(t0 + Duration::from_nanos(7))
        );
        // Past what a tick holds: it saturates, and is still cleared by its table.
        let far = t0 + Duration::from_secs(400 * 365 * 24 * 3600);
        queue.of(c, &mut a, t0).set(TimerKind::AuthExpired, far);
        assert_eq!(queue.pop_due(early), Some((c, TimerKind::Handshake)));
        queue.of(c, &mut a, t0).fired(TimerKind::Handshake);
        queue.forget(c, &a);
        assert_eq!(queue.next(), None);
    }
}
