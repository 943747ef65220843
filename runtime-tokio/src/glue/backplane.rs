//! The backplane's engine: the connection to a pub/sub service that the relay's cluster
//! messages travel on (the decisions are the core's; see `signalr_relay_core::relay`'s
//! `ClusterConfig`).
//!
//! An [`Engine`] connects and hands back a writer (publish, subscribe, unsubscribe) and a
//! reader (messages as they come). `Redis` is the one shipped (with the `tokio` or
//! `smol-redis` feature, which pick the redis crate's runtime); another engine (NATS) is
//! another implementation of these three traits, and nothing else changes.
//!
//! [`run`] keeps one connection up for as long as the relay runs: it reconnects with a
//! backoff, reports up and down to the driver, and carries out the relay's commands in order.
//! Each operation has a time limit: a Redis that stops answering is treated as lost. What
//! waits to be published is bounded in bytes ([`Link`]); past the bound, publishes are
//! dropped and counted, and the relay's local traffic never waits for the backplane.

// Without an engine built in (neither `tokio` nor `smol-redis`), nothing starts one.
#![cfg_attr(not(any(feature = "tokio", feature = "smol-redis")), allow(dead_code))]

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_channel::{mpsc, oneshot};
use futures_util::future::{select, Either};
use futures_util::{SinkExt, StreamExt};

use super::Runtime;

/// A pub/sub service.
pub trait Engine: Send + Sync + 'static {
    /// What publishes and subscribes.
    type Writer: EngineWriter;
    /// What reads the messages of the channels subscribed.
    type Reader: EngineReader;

    /// Connects.
    fn connect(&self) -> impl Future<Output = Result<(Self::Writer, Self::Reader), String>> + Send;
}

/// One connection's publishing side.
pub trait EngineWriter: Send + 'static {
    /// Publishes `data` on `channel`.
    fn publish(
        &mut self,
        channel: &str,
        data: Bytes,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Publishes each message of `batch`, in order: one round trip where the engine allows
    /// (by default, one publish after another).
    fn publish_all(
        &mut self,
        batch: Vec<(String, Bytes)>,
    ) -> impl Future<Output = Result<(), String>> + Send {
        async move {
            for (channel, data) in batch {
                self.publish(&channel, data).await?;
            }
            Ok(())
        }
    }
    /// Subscribes to `channels`: done once the service has confirmed every one, so that a
    /// message published from then on reaches this connection.
    fn subscribe(&mut self, channels: &[String])
        -> impl Future<Output = Result<(), String>> + Send;
    /// Unsubscribes from `channels`.
    fn unsubscribe(
        &mut self,
        channels: &[String],
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// One connection's reading side.
pub trait EngineReader: Send + 'static {
    /// The next message: its channel and payload. `None` once the connection is lost.
    fn next(&mut self) -> impl Future<Output = Option<(String, Bytes)>> + Send;
}

#[cfg(any(feature = "tokio", feature = "smol-redis"))]
/// Redis (or Valkey) pub/sub: one connection publishes, another subscribes.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
}

#[cfg(any(feature = "tokio", feature = "smol-redis"))]
impl Redis {
    /// The Redis at `url` (`redis://[user:password@]host[:port][/db]`).
    ///
    /// # Errors
    /// When the URL does not parse.
    pub fn new(url: &str) -> Result<Self, String> {
        redis::Client::open(url)
            .map(|client| Self { client })
            .map_err(|e| e.to_string())
    }
}

#[cfg(any(feature = "tokio", feature = "smol-redis"))]
impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.write_str("Redis")
    }
}

#[cfg(any(feature = "tokio", feature = "smol-redis"))]
/// [`Redis`]'s writer.
pub struct RedisWriter {
    publisher: redis::aio::MultiplexedConnection,
    sink: redis::aio::PubSubSink,
}

#[cfg(any(feature = "tokio", feature = "smol-redis"))]
/// [`Redis`]'s reader.
pub struct RedisReader(redis::aio::PubSubStream);

#[cfg(any(feature = "tokio", feature = "smol-redis"))]
impl Engine for Redis {
    type Writer = RedisWriter;
    type Reader = RedisReader;

    async fn connect(&self) -> Result<(RedisWriter, RedisReader), String> {
        let publisher = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let (sink, stream) = self
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| e.to_string())?
            .split();
        Ok((RedisWriter { publisher, sink }, RedisReader(stream)))
    }
}

#[cfg(any(feature = "tokio", feature = "smol-redis"))]
impl EngineWriter for RedisWriter {
    async fn publish(&mut self, channel: &str, data: Bytes) -> Result<(), String> {
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(&data[..])
            .query_async::<i64>(&mut self.publisher)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn publish_all(&mut self, batch: Vec<(String, Bytes)>) -> Result<(), String> {
        // One pipeline: every PUBLISH written at once, their answers read together.
        let mut pipe = redis::pipe();
        for (channel, data) in &batch {
            pipe.cmd("PUBLISH").arg(channel).arg(&data[..]).ignore();
        }
        pipe.query_async::<()>(&mut self.publisher)
            .await
            .map_err(|e| e.to_string())
    }

    async fn subscribe(&mut self, channels: &[String]) -> Result<(), String> {
        self.sink
            .subscribe(channels)
            .await
            .map_err(|e| e.to_string())
    }

    async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), String> {
        self.sink
            .unsubscribe(channels)
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(any(feature = "tokio", feature = "smol-redis"))]
impl EngineReader for RedisReader {
    async fn next(&mut self) -> Option<(String, Bytes)> {
        let msg = self.0.next().await?;
        Some((
            msg.get_channel_name().to_owned(),
            Bytes::copy_from_slice(msg.get_payload_bytes()),
        ))
    }
}

/// What the relay asks of the engine.
#[derive(Debug)]
pub(crate) enum Request {
    Publish(String, Bytes),
    /// A channel, asked for the engine's connection the relay last heard of (the count of
    /// [`Report::Up`]s it had handled): one asked for an earlier connection is dropped, as
    /// the relay asks again for every channel it needs when it hears of a new one.
    Subscribe(String, u64),
    Unsubscribe(String, u64),
    /// Drop the connection and connect again (the subscription looks dead).
    Reset,
}

/// What the engine tells the relay.
#[derive(Debug)]
pub(crate) enum Report {
    Up,
    Down,
    /// This many of the subscriptions asked are in place (the service confirmed them), in
    /// the order asked.
    Subscribed(usize),
    Message(String, Bytes),
}

/// The driver's end: requests go in without waiting, bounded in bytes.
#[derive(Clone)]
pub(crate) struct Link {
    requests: mpsc::UnboundedSender<Request>,
    /// The engine's connections the relay has heard of ([`Link::up`]).
    connection: Arc<AtomicU64>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    /// Publishes dropped because the queue was full.
    pub(crate) dropped: Arc<AtomicU64>,
}

impl Link {
    /// Asks the engine for `request`. A publish past the byte bound is dropped and counted;
    /// the other requests are small and always go (they are the subscription's state). A
    /// small publish on the control channel or a node's own (heartbeats, answers, goodbyes)
    /// has a reserve beyond the bound, so that a backlog of sends does not silence the
    /// node.
    pub(crate) fn send(&self, request: Request) {
        if let Request::Publish(channel, data) = &request {
            let size = channel.len() + data.len();
            let essential = size <= ESSENTIAL_SIZE
                && (channel.ends_with(":control") || channel.contains(":node:"));
            let limit = if essential {
                self.limit + ESSENTIAL_RESERVE
            } else {
                self.limit
            };
            if self.queued.load(Ordering::Relaxed) + size > limit {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.queued.fetch_add(size, Ordering::Relaxed);
        }
        let _ = self.requests.unbounded_send(request);
    }

    /// The relay heard [`Report::Up`]: what it asks from now on is for the new connection.
    pub(crate) fn up(&self) {
        self.connection.fetch_add(1, Ordering::Relaxed);
    }

    /// Asks for `channel`, on the engine's connection the relay last heard of.
    pub(crate) fn subscribe(&self, channel: String) {
        let connection = self.connection.load(Ordering::Relaxed);
        self.send(Request::Subscribe(channel, connection));
    }

    /// Leaves `channel`, on the engine's connection the relay last heard of.
    pub(crate) fn unsubscribe(&self, channel: String) {
        let connection = self.connection.load(Ordering::Relaxed);
        self.send(Request::Unsubscribe(channel, connection));
    }
}

/// What the engine's task shares with the driver's [`Link`], without the sender: the task
/// ends once the driver is gone.
struct Shared {
    queued: Arc<AtomicUsize>,
}

impl Shared {
    /// A request leaves the queue.
    fn taken(&self, request: &Request) {
        if let Request::Publish(channel, data) = request {
            self.queued
                .fetch_sub(channel.len() + data.len(), Ordering::Relaxed);
        }
    }
}

/// Largest publish that counts as essential, and the reserve such publishes have.
const ESSENTIAL_SIZE: usize = 4096;
const ESSENTIAL_RESERVE: usize = 1024 * 1024;

/// Most publishes in one batch, and their bytes (past either, the next batch follows).
const MAX_BATCH: usize = 512;
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// How long one operation may take before the connection counts as lost.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Waits between connection attempts: from the first to the last, doubling.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(4));

/// Starts the engine's task: it keeps a connection to `engine` and reports to `reports`.
/// `limit` bounds the bytes waiting to be published.
pub(crate) fn start<R: Runtime, E: Engine, T: From<Report> + Send + 'static>(
    runtime: &R,
    engine: E,
    limit: usize,
    reports: mpsc::Sender<T>,
) -> Link {
    let (tx, rx) = mpsc::unbounded();
    let link = Link {
        requests: tx,
        connection: Arc::default(),
        queued: Arc::default(),
        limit,
        dropped: Arc::default(),
    };
    let shared = Shared {
        queued: link.queued.clone(),
    };
    runtime.spawn(run(runtime.clone(), engine, rx, shared, reports));
    link
}

/// A connection that lasted this long was healthy: the next one starts from the first wait.
const HEALTHY: Duration = Duration::from_secs(10);

/// Keeps a connection up, for as long as the relay holds its [`Link`].
async fn run<R: Runtime, E: Engine, T: From<Report> + Send + 'static>(
    runtime: R,
    engine: E,
    mut requests: mpsc::UnboundedReceiver<Request>,
    link: Shared,
    mut reports: mpsc::Sender<T>,
) {
    let mut backoff = BACKOFF.0;
    let mut lost_after: Option<Duration> = None;
    // Connections made, as the relay counts the Ups it hears.
    let mut connection = 0u64;
    loop {
        // After a lost connection, a wait before the next (none after a healthy one's loss,
        // the full backoff after one that failed at once: a Redis that refuses what the node
        // asks does not make it spin).
        if let Some(lasted) = lost_after.take() {
            if lasted >= HEALTHY {
                backoff = BACKOFF.0;
            } else {
                if !drain_while_down(&runtime, &mut requests, &link, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
        let connected = with_timeout(&runtime, engine.connect()).await;
        let (mut writer, mut reader) = match connected {
            Some(Ok(pair)) => pair,
            failed => {
                let why = match failed {
                    Some(Err(e)) => e,
                    _ => "timed out".to_owned(),
                };
                tracing::warn!(
                    retry_in_ms = backoff.as_millis() as u64,
                    "backplane: cannot connect: {why}"
                );
                // Requests made meanwhile are the relay's, for a connection that is not
                // there: publishes are lost (the relay counts them once it hears down).
                if !drain_while_down(&runtime, &mut requests, &link, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF.1);
                continue;
            }
        };
        let since = runtime.now();
        tracing::info!("backplane: connected");
        connection += 1;
        if reports.send(Report::Up.into()).await.is_err() {
            return;
        }
        // The reader runs beside; it stops when told, or when the connection is lost.
        let (stop, stopped) = oneshot::channel::<()>();
        let (lost_tx, mut lost) = oneshot::channel::<()>();
        let mut to_relay = reports.clone();
        runtime.spawn(async move {
            let mut stopped = stopped;
            loop {
                let next = std::pin::pin!(reader.next());
                match select(next, &mut stopped).await {
                    Either::Left((Some((channel, data)), _)) => {
                        if to_relay
                            .send(Report::Message(channel, data).into())
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            let _ = lost_tx.send(());
        });
        let mut next = None;
        let why = loop {
            let request = match next.take() {
                Some(r) => r,
                None => match select(requests.next(), &mut lost).await {
                    Either::Left((Some(r), _)) => r,
                    Either::Left((None, _)) => return,
                    Either::Right(_) => break "the subscription ended".to_owned(),
                },
            };
            // Asked for an earlier connection, before the relay heard of this one: it asks
            // again, for this one, for every channel it needs (and a confirmation here would
            // be counted against what it asks for this one).
            if let Request::Subscribe(_, of) | Request::Unsubscribe(_, of) = &request {
                if *of != connection {
                    continue;
                }
            }
            let done = match request {
                Request::Publish(channel, data) => {
                    // Everything queued behind it that is a publish goes in the same batch
                    // (one round trip), up to a bound; the next request of another kind
                    // waits for the batch.
                    let mut size = channel.len() + data.len();
                    let mut batch = vec![(channel, data)];
                    while batch.len() < MAX_BATCH && size < MAX_BATCH_BYTES {
                        match requests.try_recv() {
                            Ok(Request::Publish(c, d)) => {
                                size += c.len() + d.len();
                                batch.push((c, d));
                            }
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    link.queued.fetch_sub(size, Ordering::Relaxed);
                    with_timeout(&runtime, writer.publish_all(batch)).await
                }
                Request::Subscribe(channel, _) => {
                    let channels =
                        same_kind(channel, connection, &mut requests, &mut next, |r| match r {
                            Request::Subscribe(c, of) => Ok((c, of)),
                            other => Err(other),
                        });
                    let done = with_timeout(&runtime, writer.subscribe(&channels)).await;
                    // The relay answers joins once their channels are in place.
                    if matches!(done, Some(Ok(())))
                        && reports
                            .send(Report::Subscribed(channels.len()).into())
                            .await
                            .is_err()
                    {
                        return;
                    }
                    done
                }
                Request::Unsubscribe(channel, _) => {
                    let channels =
                        same_kind(channel, connection, &mut requests, &mut next, |r| match r {
                            Request::Unsubscribe(c, of) => Ok((c, of)),
                            other => Err(other),
                        });
                    with_timeout(&runtime, writer.unsubscribe(&channels)).await
                }
                Request::Reset => break "the relay no longer hears its own heartbeats".to_owned(),
            };
            match done {
                Some(Ok(())) => {}
                Some(Err(e)) => break e,
                None => break "an operation timed out".to_owned(),
            }
        };
        tracing::warn!("backplane: connection lost: {why}");
        // A request taken but not carried out leaves the queue too.
        if let Some(r) = next.take() {
            link.taken(&r);
        }
        let _ = stop.send(());
        drop(writer);
        lost_after = Some(runtime.now().saturating_duration_since(since));
        if reports.send(Report::Down.into()).await.is_err() {
            return;
        }
    }
}

/// `first`, and the channels of the requests of the same kind queued right behind it (up to
/// [`MAX_BATCH`]), but those asked for an earlier connection than `connection` (dropped); a
/// request of another kind is left in `next`.
fn same_kind(
    first: String,
    connection: u64,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    next: &mut Option<Request>,
    channel_of: fn(Request) -> Result<(String, u64), Request>,
) -> Vec<String> {
    let mut channels = vec![first];
    while channels.len() < MAX_BATCH {
        match requests.try_recv().map(channel_of) {
            Ok(Ok((c, of))) if of == connection => channels.push(c),
            Ok(Ok(_)) => {}
            Ok(Err(other)) => {
                *next = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    channels
}

/// Waits `pause` while down, taking the requests made meanwhile (publishes dropped,
/// subscription changes moot: the relay asks again for what it needs once up). `false` when
/// the relay is gone.
async fn drain_while_down<R: Runtime>(
    runtime: &R,
    requests: &mut mpsc::UnboundedReceiver<Request>,
    link: &Shared,
    pause: Duration,
) -> bool {
    let deadline = runtime.now() + pause;
    loop {
        let sleep = runtime.sleep_until(deadline);
        match select(requests.next(), sleep).await {
            Either::Left((Some(r), _)) => link.taken(&r),
            Either::Left((None, _)) => return false,
            Either::Right(_) => return true,
        }
    }
}

async fn with_timeout<R: Runtime, T>(runtime: &R, f: impl Future<Output = T>) -> Option<T> {
    let deadline = runtime.sleep_until(runtime.now() + OPERATION_TIMEOUT);
    match select(std::pin::pin!(f), deadline).await {
        Either::Left((t, _)) => Some(t),
        Either::Right(_) => None,
    }
}

#[cfg(all(test, feature = "tokio"))]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// An engine in memory: each connection's subscriptions are logged with its number, and
    /// the test ends the newest connection at will.
    #[derive(Clone, Default)]
    struct Fake {
        connections: Arc<Mutex<u64>>,
        subscribed: Arc<Mutex<Vec<(u64, String)>>>,
        end: Arc<Mutex<Option<oneshot::Sender<()>>>>,
    }

    struct FakeWriter {
        connection: u64,
        subscribed: Arc<Mutex<Vec<(u64, String)>>>,
    }

    struct FakeReader(oneshot::Receiver<()>);

    impl Engine for Fake {
        type Writer = FakeWriter;
        type Reader = FakeReader;

        async fn connect(&self) -> Result<(FakeWriter, FakeReader), String> {
            let mut n = self.connections.lock().expect("the lock");
            *n += 1;
            let (end, ended) = oneshot::channel();
            *self.end.lock().expect("the lock") = Some(end);
            let writer = FakeWriter {
                connection: *n,
                subscribed: self.subscribed.clone(),
            };
            Ok((writer, FakeReader(ended)))
        }
    }

    impl EngineWriter for FakeWriter {
        async fn publish(&mut self, _: &str, _: Bytes) -> Result<(), String> {
            Ok(())
        }

        async fn subscribe(&mut self, channels: &[String]) -> Result<(), String> {
            let mut log = self.subscribed.lock().expect("the lock");
            log.extend(channels.iter().map(|c| (self.connection, c.clone())));
            Ok(())
        }

        async fn unsubscribe(&mut self, _: &[String]) -> Result<(), String> {
            Ok(())
        }
    }

    impl EngineReader for FakeReader {
        async fn next(&mut self) -> Option<(String, Bytes)> {
            let _ = (&mut self.0).await;
            None
        }
    }

    async fn report(reports: &mut mpsc::Receiver<Report>) -> Report {
        let wait = tokio::time::timeout(Duration::from_secs(10), reports.next());
        wait.await
            .expect("a report in time")
            .expect("the engine runs")
    }

    #[tokio::test]
    async fn a_subscription_asked_for_a_lost_connection_is_not_made_or_confirmed_on_the_next() {
        let engine = Fake::default();
        let (tx, mut reports) = mpsc::channel::<Report>(16);
        let link = start(&crate::TokioRuntime, engine.clone(), 1 << 20, tx);
        assert!(matches!(report(&mut reports).await, Report::Up));
        link.up();
        link.subscribe("a".into());
        assert!(matches!(report(&mut reports).await, Report::Subscribed(1)));

        // The connection is lost; the engine connects again and says so.
        drop(engine.end.lock().expect("the lock").take());
        assert!(matches!(report(&mut reports).await, Report::Down));
        assert!(matches!(report(&mut reports).await, Report::Up));
        // The relay asks for a channel before it has heard of the new connection (its Up
        // is still queued), then, having heard, for what it needs on the new one.
        link.subscribe("stale".into());
        link.up();
        link.subscribe("b".into());
        assert!(matches!(report(&mut reports).await, Report::Subscribed(1)));
        assert_eq!(
            *engine.subscribed.lock().expect("the lock"),
            vec![(1, "a".to_owned()), (2, "b".to_owned())]
        );
    }
}
