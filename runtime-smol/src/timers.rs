//! The glue's sleeps, on one async-io timer.
//!
//! async-io wakes its reactor for each timer it is given, so that the reactor sees the new
//! timer: a write to its eventfd (at most one per turn of the reactor), and a turn to read it.
//! The glue makes a timer for every wait that may last, such as a kept-alive connection's wait
//! for its next request head: a long-polling client made two per message it sent. Here a
//! sleep is an entry in one ordered table, and one task keeps a single async-io timer set for
//! the earliest entry. A sleep due later than that timer, as a new request's is, costs the
//! reactor nothing.
//!
//! The timer is moved only to an earlier time. When its entry goes first (a request came in
//! time), it stays where it is, fires early, finds nothing due, and is set for the entry that
//! is earliest then.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, Once, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// A table of sleeps and the timer that serves them.
pub(crate) struct Timers {
    state: Mutex<State>,
    /// Called once, at the table's first sleep that has to wait, to run [`Timers::drive`].
    start: fn(&'static Self),
    started: Once,
}

struct State {
    /// Every sleep that is waiting, by deadline (and an id, since sleeps may share one).
    waiting: BTreeMap<(Instant, u64), Waker>,
    next_id: u64,
    /// When the async-io timer is set for, if it is.
    armed: Option<Instant>,
    /// The task that keeps the timer: woken to set it earlier.
    driver: Option<Waker>,
    /// How many times the async-io timer was set (for the tests).
    arms: u64,
}

impl Timers {
    pub(crate) const fn new(start: fn(&'static Self)) -> Self {
        Self {
            state: Mutex::new(State {
                waiting: BTreeMap::new(),
                next_id: 0,
                armed: None,
                driver: None,
                arms: 0,
            }),
            start,
            started: Once::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A sleep until `deadline`.
    pub(crate) fn sleep_until(&'static self, deadline: Instant) -> Sleep {
        Sleep {
            timers: self,
            deadline,
            id: None,
        }
    }

    /// Wakes every sleep that is due, and keeps the async-io timer set for the earliest of
    /// the rest. Runs for ever. Wakers are woken and dropped, and the timer set, with the
    /// table unlocked.
    pub(crate) fn drive(&'static self) -> impl Future<Output = ()> + Send + 'static {
        let mut timer = async_io::Timer::never();
        std::future::poll_fn(move |cx| loop {
            let mut due = Vec::new();
            let mut old_driver = None;
            let (armed, set) = {
                let mut state = self.lock();
                let now = Instant::now();
                while let Some(entry) = state.waiting.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    due.push(entry.remove());
                }
                let mut set = None;
                if let Some(&(next, _)) = state.waiting.first_key_value().map(|(k, _)| k) {
                    if state.armed.is_none_or(|armed| next < armed) {
                        state.armed = Some(next);
                        state.arms += 1;
                        set = Some(next);
                    }
                }
                if !state
                    .driver
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    old_driver = state.driver.replace(cx.waker().clone());
                }
                (state.armed, set)
            };
            drop(old_driver);
            if let Some(at) = set {
                // A sleep made meanwhile for earlier than `at` saw it armed, and woke this
                // task: it is polled again, and sets the timer earlier.
                timer.set_at(at);
            }
            for waker in due {
                waker.wake();
            }
            if armed.is_none() {
                return Poll::Pending;
            }
            match Pin::new(&mut timer).poll(cx) {
                Poll::Ready(_) => self.lock().armed = None,
                Poll::Pending => return Poll::Pending,
            }
        })
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, u64) {
        let state = self.lock();
        (state.waiting.len(), state.arms)
    }
}

/// A sleep in a [`Timers`] table: an entry there from its first wait until it is due or
/// dropped.
pub(crate) struct Sleep {
    timers: &'static Timers,
    deadline: Instant,
    /// Its entry's id, once it has one.
    id: Option<u64>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if Instant::now() >= this.deadline {
            this.forget();
            return Poll::Ready(());
        }
        let timers = this.timers;
        let mut state = timers.lock();
        if let Some(id) = this.id {
            let Some(waker) = state.waiting.get_mut(&(this.deadline, id)) else {
                // Only the task that keeps the timer takes an entry out, once it is due.
                this.id = None;
                return Poll::Ready(());
            };
            if waker.will_wake(cx.waker()) {
                return Poll::Pending;
            }
            let old = std::mem::replace(waker, cx.waker().clone());
            drop(state);
            drop(old);
            return Poll::Pending;
        }
        let id = state.next_id;
        state.next_id += 1;
        this.id = Some(id);
        state
            .waiting
            .insert((this.deadline, id), cx.waker().clone());
        let earlier = state.armed.is_none_or(|armed| this.deadline < armed);
        let driver = earlier.then(|| state.driver.clone()).flatten();
        drop(state);
        if let Some(driver) = driver {
            driver.wake();
        }
        timers.started.call_once(|| (timers.start)(timers));
        Poll::Pending
    }
}

impl Sleep {
    /// Takes its entry out of the table, if it has one there.
    fn forget(&mut self) {
        if let Some(id) = self.id.take() {
            // Dropped once the table is unlocked.
            let waker = self.timers.lock().waiting.remove(&(self.deadline, id));
            drop(waker);
        }
    }
}

impl hyper::rt::Sleep for Sleep {}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.forget();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;

    /// A table of its own.
    fn table() -> &'static Timers {
        Box::leak(Box::new(Timers::new(|_| {})))
    }

    /// Runs `test` with `timers` driven on a thread of its own, so that the test's task is
    /// woken by the table alone; fails instead of hanging, on a timer outside the table.
    fn run(timers: &'static Timers, test: impl Future<Output = ()>) {
        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let driver = std::thread::spawn(move || {
            smol::block_on(smol::future::or(timers.drive(), async {
                let _ = stopped.recv().await;
            }));
        });
        smol::block_on(async {
            let hang = async {
                async_io::Timer::after(Duration::from_secs(30)).await;
                panic!("a sleep was never woken");
            };
            // The guard first: once it fires, a sleep past its deadline must not end the test
            // by its own clock before the guard is heard.
            smol::future::or(hang, test).await;
        });
        drop(stop);
        driver.join().expect("the driver's thread");
    }

    /// Waits until `timers` counts `counts` (entries waiting, times the timer was set).
    async fn settled(timers: &Timers, counts: (usize, u64)) {
        while timers.counts() != counts {
            async_io::Timer::after(Duration::from_millis(1)).await;
        }
    }

    #[test]
    fn sleeps_end_in_order_and_not_before_their_deadlines() {
        let timers = table();
        run(timers, async {
            let start = Instant::now();
            let ended = Arc::new(Mutex::new(Vec::new()));
            let sleeps = [900u64, 20, 400, 20].map(|ms| {
                let ended = ended.clone();
                let deadline = start + Duration::from_millis(ms);
                timers.sleep_until(deadline).map(move |()| {
                    assert!(Instant::now() >= deadline, "woken before its deadline");
                    ended.lock().unwrap().push(ms);
                })
            });
            futures_util::future::join_all(sleeps).await;
            assert_eq!(*ended.lock().unwrap(), [20, 20, 400, 900]);
            assert_eq!(timers.counts().0, 0, "an ended sleep left its entry");
        });
    }

    #[test]
    fn a_sleep_earlier_than_the_timer_moves_it() {
        let timers = table();
        run(timers, async {
            // Past the test's 30 s: if the timer stayed there, the test would fail.
            let late = timers.sleep_until(Instant::now() + Duration::from_secs(60));
            let mut late = std::pin::pin!(late);
            assert!(futures_util::poll!(late.as_mut()).is_pending());
            settled(timers, (1, 1)).await;
            timers
                .sleep_until(Instant::now() + Duration::from_millis(300))
                .await;
            assert!(futures_util::poll!(late.as_mut()).is_pending());
            // Set for the late sleep, moved to the short one, and set for the late one again.
            settled(timers, (1, 3)).await;
        });
    }

    #[test]
    fn later_sleeps_and_dropped_ones_leave_the_timer_where_it_is() {
        let timers = table();
        run(timers, async {
            let start = Instant::now() + Duration::from_secs(60);
            let mut sleeps: Vec<_> = (0..1000)
                .map(|i| Box::pin(timers.sleep_until(start + Duration::from_millis(i))))
                .collect();
            assert!(futures_util::poll!(sleeps[0].as_mut()).is_pending());
            settled(timers, (1, 1)).await;
            for sleep in &mut sleeps[1..] {
                assert!(futures_util::poll!(sleep.as_mut()).is_pending());
            }
            async_io::Timer::after(Duration::from_millis(50)).await;
            assert_eq!(timers.counts(), (1000, 1), "set once, for the first");
            drop(sleeps);
            assert_eq!(timers.counts(), (0, 1), "dropped sleeps leave no entry");
        });
    }

    #[test]
    fn a_timer_left_early_by_a_dropped_sleep_still_serves_the_next() {
        let timers = table();
        run(timers, async {
            let first = timers.sleep_until(Instant::now() + Duration::from_millis(300));
            let mut first = Box::pin(first);
            assert!(futures_util::poll!(first.as_mut()).is_pending());
            settled(timers, (1, 1)).await;
            drop(first);
            // The timer fires for the dropped sleep, finds nothing due, and is set again.
            timers
                .sleep_until(Instant::now() + Duration::from_secs(1))
                .await;
            assert_eq!(timers.counts(), (0, 2));
        });
    }

    #[test]
    fn a_sleep_polled_by_another_task_wakes_that_task() {
        let timers = table();
        run(timers, async {
            let sleep = timers.sleep_until(Instant::now() + Duration::from_millis(300));
            let mut sleep = Box::pin(sleep);
            // First polled with a waker of another task's, which the entry then lets go.
            let heard = Arc::new(AtomicUsize::new(0));
            let waker = counting_waker(heard.clone());
            assert!(sleep
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending());
            // Then awaited by this task, which must be woken, and the other not.
            sleep.await;
            assert_eq!(heard.load(Ordering::SeqCst), 0, "the old waker was woken");
        });
    }

    #[test]
    fn the_start_runs_once_at_the_first_wait() {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        fn start(_: &'static Timers) {
            STARTS.fetch_add(1, Ordering::SeqCst);
        }
        let timers: &'static Timers = Box::leak(Box::new(Timers::new(start)));
        run(timers, async {
            // Due already: it never waits, and starts nothing.
            timers.sleep_until(Instant::now()).await;
            assert_eq!(STARTS.load(Ordering::SeqCst), 0);
            for _ in 0..3 {
                timers
                    .sleep_until(Instant::now() + Duration::from_millis(5))
                    .await;
            }
            assert_eq!(STARTS.load(Ordering::SeqCst), 1);
        });
    }

    fn counting_waker(count: Arc<AtomicUsize>) -> Waker {
        struct Counting(Arc<AtomicUsize>);
        impl std::task::Wake for Counting {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        Waker::from(Arc::new(Counting(count)))
    }
}
