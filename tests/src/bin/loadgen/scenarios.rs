//! The scenarios, each run the same way against the relay and against the floor.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use futures_util::StreamExt;
use serde::Serialize;

use crate::client::{self, Ws};
use crate::procs::Proc;

/// What is being measured: the relay (clients negotiate at the sample app, then connect to
/// the relay) or the floor (clients connect straight to it).
pub(crate) struct Target {
    pub(crate) name: &'static str,
    /// The process whose CPU and memory are measured.
    pub(crate) server: Proc,
    /// The sample app, for the relay.
    pub(crate) app: Option<Proc>,
}

impl Target {
    async fn connect(&self, n: usize) -> client::Result<Ws> {
        match &self.app {
            Some(app) => client::connect_relay(&app.addr, "bench", &format!("u{n}")).await,
            None => client::connect_floor(&self.server.addr).await,
        }
    }

    fn is_relay(&self) -> bool {
        self.app.is_some()
    }

    /// A request: for the relay the hub invocation `target(args…)` (awaiting a completion
    /// when it has an `id`), for the floor the text `floor` makes.
    fn request(
        &self,
        id: Option<&str>,
        target: &str,
        args: &[&str],
        floor: impl FnOnce() -> String,
    ) -> Message {
        if !self.is_relay() {
            return Message::text(floor());
        }
        let id = id.map_or(String::new(), |i| format!("\"invocationId\":\"{i}\","));
        let args: Vec<String> = args.iter().map(|a| format!("\"{a}\"")).collect();
        Message::text(format!(
            "{{\"type\":1,{id}\"target\":\"{target}\",\"arguments\":[{}]}}\u{1e}",
            args.join(",")
        ))
    }

    /// One echo request carrying `payload`.
    fn echo(&self, id: u64, payload: &str) -> Message {
        let id = id.to_string();
        self.request(Some(&id), "Echo", &[payload], || format!("E{payload}"))
    }

    /// Joins `group` (answered by a completion; the floor answers `ok`).
    fn join(&self, group: &str) -> Message {
        self.request(Some("j"), "JoinGroup", &[group], || format!("J{group}"))
    }

    /// One message to `group` carrying `payload`.
    fn group_send(&self, group: &str, payload: &str) -> Message {
        self.request(None, "SendToGroup", &[group, payload], || {
            format!("G{group}|{payload}")
        })
    }

    /// One broadcast request carrying `payload`.
    fn broadcast(&self, payload: &str) -> Message {
        self.request(None, "Broadcast", &[payload], || format!("B{payload}"))
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A payload of about `len` bytes that carries its send time: `@<µs since epoch>|xxxx…`.
fn stamped(len: usize) -> String {
    let stamp = format!("@{}|", epoch().elapsed().as_micros());
    let pad = len.saturating_sub(stamp.len());
    stamp + &"x".repeat(pad)
}

/// The send times of every stamped payload in a received message (a relay message may hold
/// several frames).
fn stamps(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.split('@').skip(1).filter_map(|s| {
        let digits = s.split('|').next()?;
        digits.parse().ok()
    })
}

/// Latencies in microseconds, and their percentiles.
#[derive(Default)]
pub(crate) struct Latencies(Mutex<Vec<u64>>);

impl Latencies {
    fn record_stamps(&self, text: &str) -> u64 {
        let now = epoch().elapsed().as_micros() as u64;
        let mut n = 0;
        if let Ok(mut v) = self.0.lock() {
            for sent in stamps(text) {
                v.push(now.saturating_sub(sent));
                n += 1;
            }
        }
        n
    }

    fn record(&self, micros: u64) {
        if let Ok(mut v) = self.0.lock() {
            v.push(micros);
        }
    }

    fn percentiles(&self) -> Percentiles {
        let mut v = self.0.lock().map(|v| v.clone()).unwrap_or_default();
        v.sort_unstable();
        let at = |q: f64| {
            if v.is_empty() {
                0.0
            } else {
                let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
                v[i] as f64 / 1000.0
            }
        };
        Percentiles {
            count: v.len() as u64,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
        }
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub(crate) struct Percentiles {
    pub(crate) count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

/// The connect storm: `n` connections, `concurrency` at a time, over the full negotiate path.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConnectResult {
    pub(crate) connections: usize,
    pub(crate) concurrency: usize,
    pub(crate) connects_per_sec: f64,
    pub(crate) latency: Percentiles,
    pub(crate) failed_percent: f64,
    pub(crate) server_rss_per_connection_bytes: f64,
    pub(crate) idle_server_cpu_percent: f64,
}

/// Opens `count` connections (numbered from `first`), `concurrency` at a time, recording each
/// one's connect time. Returns them, and how many failed.
async fn open_many(
    target: &Target,
    first: usize,
    count: usize,
    concurrency: usize,
    latencies: &Latencies,
) -> (Vec<Ws>, usize) {
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let opened = Mutex::new(Vec::with_capacity(count));
    let workers = (0..concurrency.max(1)).map(|_| async {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= count {
                return;
            }
            let t0 = Instant::now();
            match target.connect(first + i).await {
                Ok(ws) => {
                    latencies.record(t0.elapsed().as_micros() as u64);
                    if let Ok(mut o) = opened.lock() {
                        o.push(ws);
                    }
                }
                Err(e) => {
                    if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("  connect failed: {e}");
                    }
                }
            }
        }
    });
    futures_util::future::join_all(workers).await;
    let opened = opened.into_inner().unwrap_or_else(|e| e.into_inner());
    (opened, failed.into_inner())
}

pub(crate) async fn connect_storm(
    target: &Target,
    n: usize,
    concurrency: usize,
    idle: Duration,
) -> (ConnectResult, Vec<Ws>) {
    // One connection first, so that the server's pools exist before the baseline.
    let warm = target.connect(usize::MAX).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = target.server.rss_bytes();
    let latencies = Latencies::default();
    let start = Instant::now();
    let (mut opened, failed) = open_many(target, 0, n, concurrency, &latencies).await;
    let elapsed = start.elapsed().as_secs_f64();
    // Idle: hold them, reading whatever comes (keep-alives), and measure.
    let reading = Arc::new(AtomicBool::new(true));
    let readers: Vec<_> = opened
        .drain(..)
        .map(|ws| {
            let reading = reading.clone();
            tokio::spawn(async move {
                let mut ws = ws;
                while reading.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
                        Ok(Some(Ok(_))) | Err(_) => {}
                        _ => break,
                    }
                }
                ws
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu0 = target.server.cpu_secs();
    let t0 = Instant::now();
    tokio::time::sleep(idle).await;
    let idle_cpu = (target.server.cpu_secs() - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    let rss_after = target.server.rss_bytes();
    reading.store(false, Ordering::Relaxed);
    let mut held = Vec::with_capacity(readers.len());
    for r in readers {
        if let Ok(ws) = r.await {
            held.push(ws);
        }
    }
    drop(warm);
    let ok = held.len().max(1) as f64;
    let result = ConnectResult {
        connections: n,
        concurrency,
        connects_per_sec: held.len() as f64 / elapsed,
        latency: latencies.percentiles(),
        failed_percent: failed as f64 * 100.0 / n.max(1) as f64,
        server_rss_per_connection_bytes: rss_after.saturating_sub(rss_before) as f64 / ok,
        idle_server_cpu_percent: idle_cpu,
    };
    (result, held)
}

/// Closed-loop echoes: `connections` each keep `in_flight` echoes going for `duration`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct EchoResult {
    pub(crate) connections: usize,
    pub(crate) in_flight: usize,
    pub(crate) payload_bytes: usize,
    pub(crate) echoes_per_sec: f64,
    pub(crate) latency: Percentiles,
    pub(crate) server_cpu_us_per_echo: f64,
}

pub(crate) async fn echo(
    target: &Target,
    conns: &mut [Ws],
    in_flight: usize,
    payload: usize,
    duration: Duration,
) -> EchoResult {
    let latencies = Arc::new(Latencies::default());
    let done = Arc::new(AtomicU64::new(0));
    let cpu0 = target.server.cpu_secs();
    let start = Instant::now();
    let deadline = start + duration;
    let tasks = conns.iter_mut().map(|ws| {
        let (latencies, done) = (latencies.clone(), done.clone());
        async move {
            let mut id = 0u64;
            let mut outstanding = 0usize;
            while outstanding < in_flight {
                id += 1;
                if ws.send(target.echo(id, &stamped(payload))).await.is_err() {
                    return;
                }
                outstanding += 1;
            }
            while outstanding > 0 {
                let Ok(Some(Ok(Message::Text(text)))) =
                    tokio::time::timeout(Duration::from_secs(10), ws.next()).await
                else {
                    return;
                };
                let n = latencies.record_stamps(&text) as usize;
                done.fetch_add(n as u64, Ordering::Relaxed);
                outstanding = outstanding.saturating_sub(n);
                if Instant::now() < deadline {
                    for _ in 0..n {
                        id += 1;
                        if ws.send(target.echo(id, &stamped(payload))).await.is_err() {
                            return;
                        }
                        outstanding += 1;
                    }
                }
            }
        }
    });
    futures_util::future::join_all(tasks).await;
    let secs = start.elapsed().as_secs_f64();
    let cpu = target.server.cpu_secs() - cpu0;
    let echoes = done.load(Ordering::Relaxed);
    EchoResult {
        connections: conns.len(),
        in_flight,
        payload_bytes: payload,
        echoes_per_sec: echoes as f64 / secs,
        latency: latencies.percentiles(),
        server_cpu_us_per_echo: cpu * 1e6 / echoes.max(1) as f64,
    }
}

/// Broadcast: one sender sends `rate` messages a second of `payload` bytes to every
/// connection, for `duration`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BroadcastResult {
    /// Connections per group (all of them, for a broadcast), the sender included.
    pub(crate) group_size: usize,
    pub(crate) receivers: usize,
    pub(crate) rate_per_sec: u32,
    pub(crate) payload_bytes: usize,
    pub(crate) messages: u64,
    pub(crate) deliveries: u64,
    pub(crate) deliveries_per_sec: f64,
    pub(crate) latency: Percentiles,
    pub(crate) server_cpu_us_per_delivery: f64,
}

pub(crate) async fn broadcast(
    target: &Target,
    conns: &mut [Ws],
    rate: u32,
    payload: usize,
    duration: Duration,
) -> BroadcastResult {
    let size = conns.len().max(1);
    fan_out(target, conns, size, rate, payload, duration, |_, p| {
        target.broadcast(p)
    })
    .await
}

/// Group sends: `conns` in groups of `group_size`; in each, the first connection sends `rate`
/// messages a second of `payload` bytes to its group. Deliveries are counted over every group.
pub(crate) async fn group_send(
    target: &Target,
    conns: &mut [Ws],
    group_size: usize,
    rate: u32,
    payload: usize,
    duration: Duration,
) -> BroadcastResult {
    let group_size = group_size.clamp(2, conns.len().max(2));
    let joins = conns.iter_mut().enumerate().map(|(i, ws)| async move {
        let group = format!("s{group_size}-{}", i / group_size);
        if ws.send(target.join(&group)).await.is_err() {
            return;
        }
        // Its acknowledgement: the invocation's completion (the floor answers "ok").
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            if let Message::Text(t) = m {
                if !target.is_relay() || t.contains("\"type\":3") {
                    break;
                }
            }
        }
    });
    futures_util::future::join_all(joins).await;
    fan_out(
        target,
        conns,
        group_size,
        rate,
        payload,
        duration,
        |g, p| target.group_send(g, p),
    )
    .await
}

/// The first connection of each chunk of `group_size` sends `rate` messages a second, made
/// by `make(group, payload)` (group `s<group_size>-<chunk index>`); everyone else counts and
/// times what arrives.
async fn fan_out(
    target: &Target,
    conns: &mut [Ws],
    group_size: usize,
    rate: u32,
    payload: usize,
    duration: Duration,
    make: impl Fn(&str, &str) -> Message,
) -> BroadcastResult {
    let latencies = Arc::new(Latencies::default());
    let delivered = Arc::new(AtomicU64::new(0));
    let sending = Arc::new(AtomicBool::new(true));
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (g, chunk) in conns.chunks_mut(group_size.max(1)).enumerate() {
        if let Some((sender, rest)) = chunk.split_first_mut() {
            senders.push((format!("s{group_size}-{g}"), sender));
            receivers.extend(rest.iter_mut());
        }
    }
    let receiver_count = receivers.len();
    let cpu0 = target.server.cpu_secs();
    let start = Instant::now();
    let messages = AtomicU64::new(0);
    let send = senders.into_iter().map(|(group, sender)| {
        let (make, messages) = (&make, &messages);
        async move {
            let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
            let mut tick = tokio::time::interval(interval);
            while start.elapsed() < duration {
                tick.tick().await;
                if sender.send(make(&group, &stamped(payload))).await.is_err() {
                    break;
                }
                messages.fetch_add(1, Ordering::Relaxed);
                // The sender gets its own messages too: drained here but not counted (it reads
                // only between sends, which would time its own copies late).
                while let Ok(Some(Ok(_))) =
                    tokio::time::timeout(Duration::ZERO, sender.next()).await
                {}
            }
        }
    });
    let send = async {
        futures_util::future::join_all(send).await;
        sending.store(false, Ordering::Relaxed);
    };
    let receive = receivers.into_iter().map(|ws| {
        let (latencies, delivered, sending) =
            (latencies.clone(), delivered.clone(), sending.clone());
        async move {
            loop {
                match tokio::time::timeout(Duration::from_millis(250), ws.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) => {
                        let n = latencies.record_stamps(&text);
                        delivered.fetch_add(n, Ordering::Relaxed);
                    }
                    Ok(Some(Ok(_))) => {}
                    // Quiet for a while after the last send: everything has arrived.
                    Err(_) if sending.load(Ordering::Relaxed) => {}
                    _ => return,
                }
            }
        }
    });
    futures_util::future::join(send, futures_util::future::join_all(receive)).await;
    // Less the quiet quarter second that ended the receive loops.
    let secs = (start.elapsed().as_secs_f64() - 0.25).max(0.001);
    let cpu = target.server.cpu_secs() - cpu0;
    let deliveries = delivered.load(Ordering::Relaxed);
    BroadcastResult {
        group_size,
        receivers: receiver_count,
        rate_per_sec: rate,
        payload_bytes: payload,
        messages: messages.load(Ordering::Relaxed),
        deliveries,
        deliveries_per_sec: deliveries as f64 / secs,
        latency: latencies.percentiles(),
        server_cpu_us_per_delivery: cpu * 1e6 / deliveries.max(1) as f64,
    }
}

/// One step of the Azure step test.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Step {
    pub(crate) connections: usize,
    pub(crate) latency: Percentiles,
    pub(crate) failed_percent: f64,
    pub(crate) server_cpu_percent: f64,
    pub(crate) server_rss_bytes: u64,
}

/// Azure's step test: `steps` connection counts, each connection sending one `payload`-byte
/// echo a second for `hold`. The verdict is the largest count with p99 under 1 s and fewer
/// than 1% of connections failed.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct StepResult {
    pub(crate) payload_bytes: usize,
    pub(crate) steps: Vec<Step>,
    pub(crate) verdict_connections: usize,
}

pub(crate) async fn step_test(
    target: &Target,
    steps: &[usize],
    concurrency: usize,
    payload: usize,
    hold: Duration,
) -> StepResult {
    let mut conns: Vec<Ws> = Vec::new();
    let mut results = Vec::new();
    let mut failed_connects = 0usize;
    for &count in steps {
        eprintln!("  {}: step {count} connections", target.name);
        // Open what this step adds.
        let missing = count.saturating_sub(conns.len() + failed_connects);
        let start_index = conns.len() + failed_connects;
        let (opened, failed) = open_many(
            target,
            start_index,
            missing,
            concurrency,
            &Latencies::default(),
        )
        .await;
        failed_connects += failed;
        conns.extend(opened);
        // Every connection sends once a second, spread over the second.
        let latencies = Arc::new(Latencies::default());
        let broken = Arc::new(AtomicU64::new(0));
        let total = conns.len().max(1);
        let cpu0 = target.server.cpu_secs();
        let t0 = Instant::now();
        let senders = conns.iter_mut().enumerate().map(|(i, ws)| {
            let (latencies, broken) = (latencies.clone(), broken.clone());
            async move {
                let offset = Duration::from_secs(1).mul_f64(i as f64 / total as f64);
                let mut at = tokio::time::Instant::from_std(t0) + offset;
                let end = tokio::time::Instant::from_std(t0) + hold;
                let mut id = 0u64;
                while at < end {
                    tokio::time::sleep_until(at).await;
                    at += Duration::from_secs(1);
                    id += 1;
                    if ws.send(target.echo(id, &stamped(payload))).await.is_err() {
                        broken.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    // The answer, skipping anything else (keep-alives).
                    loop {
                        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                            Ok(Some(Ok(Message::Text(text)))) => {
                                if latencies.record_stamps(&text) > 0 {
                                    break;
                                }
                            }
                            Ok(Some(Ok(_))) => {}
                            _ => {
                                broken.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                    }
                }
            }
        });
        futures_util::future::join_all(senders).await;
        let cpu = (target.server.cpu_secs() - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
        let failed = broken.load(Ordering::Relaxed) as usize + failed_connects;
        results.push(Step {
            connections: count,
            latency: latencies.percentiles(),
            failed_percent: failed as f64 * 100.0 / count.max(1) as f64,
            server_cpu_percent: cpu,
            server_rss_bytes: target.server.rss_bytes(),
        });
        let last = results.last().map_or(100.0, |s: &Step| s.failed_percent);
        if last >= 50.0 {
            break;
        }
    }
    let verdict_connections = results
        .iter()
        .filter(|s| s.latency.p99_ms < 1000.0 && s.failed_percent < 1.0)
        .map(|s| s.connections)
        .max()
        .unwrap_or(0);
    StepResult {
        payload_bytes: payload,
        steps: results,
        verdict_connections,
    }
}

/// A slow consumer: a fast broadcast to `readers`, then the same with one more connection that
/// never reads. Its socket buffers fill, then the server's
/// queue for it: the server's memory must stay bounded and the others must not notice.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SlowConsumerResult {
    /// Every receiver reading.
    pub(crate) without_slow: BroadcastResult,
    /// The same, with one receiver that never reads.
    pub(crate) with_slow: BroadcastResult,
    /// Server RSS before and after the run with the slow consumer.
    pub(crate) server_rss_before_bytes: u64,
    pub(crate) server_rss_after_bytes: u64,
}

pub(crate) async fn slow_consumer(
    target: &Target,
    readers: &mut [Ws],
    rate: u32,
    payload: usize,
    duration: Duration,
) -> SlowConsumerResult {
    // A second unmeasured first: the generator's and the server's buffers grow to the rate.
    let _ = broadcast(target, readers, rate, payload, Duration::from_secs(1)).await;
    let without_slow = broadcast(target, readers, rate, payload, duration).await;
    // Now one more connection, which never reads.
    let slow = target.connect(usize::MAX - 1).await;
    let rss_before = target.server.rss_bytes();
    let with_slow = broadcast(target, readers, rate, payload, duration).await;
    let rss_after = target.server.rss_bytes();
    drop(slow);
    SlowConsumerResult {
        without_slow,
        with_slow,
        server_rss_before_bytes: rss_before,
        server_rss_after_bytes: rss_after,
    }
}
