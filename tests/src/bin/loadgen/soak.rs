//! The soak: many connections for a long time, with churn, echoes and broadcasts, while the
//! relay's memory and descriptors are sampled. A benchmark, not a test: it reports, and the
//! README gives the figures.
//!
//! Each of `clients` slots holds one connection for a lifetime drawn between half and one and
//! a half times its mean (100 s for 1% churn a second), then closes it and opens a fresh one.
//! Every connection echoes every `echo_interval` (spread over the interval) and receives every
//! broadcast, which one more connection sends `broadcast_rate` times a second.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use futures_util::StreamExt;
use serde::Serialize;

use crate::procs::Proc;
use crate::scenarios::Target;

/// How the soak runs.
pub(crate) struct SoakPlan {
    pub(crate) clients: usize,
    pub(crate) duration: Duration,
    /// Percent of connections replaced each second.
    pub(crate) churn_percent: f64,
    pub(crate) echo_interval: Duration,
    pub(crate) broadcast_rate: u32,
    pub(crate) sample_every: Duration,
    /// Samples before this are warm-up: growth is measured from the first one after it.
    pub(crate) warm_up: Duration,
}

/// One sample of the relay.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sample {
    pub(crate) secs: f64,
    pub(crate) rss_bytes: u64,
    pub(crate) descriptors: usize,
    pub(crate) live_connections: u64,
    pub(crate) reconnects: u64,
    pub(crate) echoes: u64,
    pub(crate) broadcasts_received: u64,
    pub(crate) failures: u64,
}

/// What the soak found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SoakResult {
    pub(crate) clients: usize,
    pub(crate) seconds: f64,
    pub(crate) churn_percent_per_sec: f64,
    pub(crate) samples: Vec<Sample>,
    /// RSS growth from the first sample after warm-up to the last, in percent.
    pub(crate) rss_growth_percent: f64,
    /// Descriptors at the first sample after warm-up and at the last.
    pub(crate) descriptors_after_warm_up: usize,
    pub(crate) descriptors_at_end: usize,
}

#[derive(Default)]
struct Counters {
    live: AtomicU64,
    reconnects: AtomicU64,
    echoes: AtomicU64,
    broadcasts: AtomicU64,
    failures: AtomicU64,
}

/// Open descriptors of a process.
fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// A small deterministic generator (xorshift), so that runs are alike.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Runs the soak against `target` (the relay, with its app).
pub(crate) async fn soak(target: &Target, plan: &SoakPlan) -> SoakResult {
    let counters = Arc::new(Counters::default());
    let running = Arc::new(AtomicBool::new(true));
    let start = Instant::now();
    let mean_life = 100.0 / plan.churn_percent.max(0.01);
    let target = Arc::new(TargetRef::new(target));
    let mut tasks = Vec::new();
    for slot in 0..plan.clients {
        let (counters, running, target) = (counters.clone(), running.clone(), target.clone());
        let echo_interval = plan.echo_interval;
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (slot as u64 + 1).wrapping_mul(0x2545_f491));
            // Spread the opening over the first seconds, as a fleet coming up would.
            tokio::time::sleep(Duration::from_millis((slot % 1000) as u64 * 10)).await;
            let mut generation = 0u64;
            while running.load(Ordering::Relaxed) {
                let life = Duration::from_secs_f64(mean_life * (0.5 + rng.next_f64()));
                let user = format!("s{slot}-{generation}");
                generation += 1;
                let Ok(ws) = target.connect(&user).await else {
                    counters.failures.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                if generation > 1 {
                    counters.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                counters.live.fetch_add(1, Ordering::Relaxed);
                let offset = echo_interval.mul_f64(rng.next_f64());
                live(ws, life, offset, echo_interval, &counters, &running).await;
                counters.live.fetch_sub(1, Ordering::Relaxed);
            }
        }));
    }
    // The broadcaster.
    let broadcaster = {
        let (counters, running, target) = (counters.clone(), running.clone(), target.clone());
        let every = Duration::from_secs_f64(1.0 / f64::from(plan.broadcast_rate.max(1)));
        tokio::spawn(async move {
            let Ok(mut ws) = target.connect("broadcaster").await else {
                counters.failures.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let mut tick = tokio::time::interval(every);
            let frame = "{\"type\":1,\"target\":\"Broadcast\",\"arguments\":[\"soak\"]}\u{1e}";
            while running.load(Ordering::Relaxed) {
                tokio::select! {
                    _ = tick.tick() => {
                        if ws.send(Message::text(frame)).await.is_err() {
                            counters.failures.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                    read = ws.next() => {
                        if !matches!(read, Some(Ok(_))) {
                            counters.failures.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            }
        })
    };
    // The sampler.
    let mut samples = Vec::new();
    let pid = target.pid;
    while start.elapsed() < plan.duration {
        tokio::time::sleep(plan.sample_every).await;
        let sample = Sample {
            secs: start.elapsed().as_secs_f64(),
            rss_bytes: crate::procs::rss_bytes(pid),
            descriptors: descriptors(pid),
            live_connections: counters.live.load(Ordering::Relaxed),
            reconnects: counters.reconnects.load(Ordering::Relaxed),
            echoes: counters.echoes.load(Ordering::Relaxed),
            broadcasts_received: counters.broadcasts.load(Ordering::Relaxed),
            failures: counters.failures.load(Ordering::Relaxed),
        };
        eprintln!(
            "  {:>5.0} s  rss {:>7.1} MB  fds {:>6}  live {:>6}  reconnects {:>7}  echoes {:>9}  broadcasts {:>10}  failures {}",
            sample.secs,
            sample.rss_bytes as f64 / 1e6,
            sample.descriptors,
            sample.live_connections,
            sample.reconnects,
            sample.echoes,
            sample.broadcasts_received,
            sample.failures
        );
        samples.push(sample);
    }
    running.store(false, Ordering::Relaxed);
    broadcaster.abort();
    for t in tasks {
        t.abort();
    }
    let warm = samples
        .iter()
        .find(|s| s.secs >= plan.warm_up.as_secs_f64())
        .or(samples.first())
        .cloned();
    let last = samples.last().cloned();
    let (growth, fds_warm, fds_end) = match (warm, last) {
        (Some(w), Some(l)) => (
            (l.rss_bytes as f64 - w.rss_bytes as f64) * 100.0 / (w.rss_bytes.max(1) as f64),
            w.descriptors,
            l.descriptors,
        ),
        _ => (0.0, 0, 0),
    };
    let seconds = start.elapsed().as_secs_f64();
    let reconnects = samples.last().map_or(0, |s| s.reconnects);
    SoakResult {
        clients: plan.clients,
        seconds,
        churn_percent_per_sec: reconnects as f64 * 100.0 / plan.clients.max(1) as f64 / seconds,
        samples,
        rss_growth_percent: growth,
        descriptors_after_warm_up: fds_warm,
        descriptors_at_end: fds_end,
    }
}

/// One connection's life: echoes every `interval` (first after `offset`), reads broadcasts,
/// and closes after `life`.
async fn live(
    mut ws: crate::client::Ws,
    life: Duration,
    offset: Duration,
    interval: Duration,
    counters: &Counters,
    running: &AtomicBool,
) {
    let end = tokio::time::Instant::now() + life;
    let mut next_echo = tokio::time::Instant::now() + offset;
    let mut id = 0u64;
    while running.load(Ordering::Relaxed) && tokio::time::Instant::now() < end {
        tokio::select! {
            () = tokio::time::sleep_until(next_echo.min(end)) => {
                if tokio::time::Instant::now() >= end {
                    break;
                }
                next_echo += interval;
                id += 1;
                let frame = format!("{{\"type\":1,\"invocationId\":\"{id}\",\"target\":\"Echo\",\"arguments\":[\"soak\"]}}\u{1e}");
                if ws.send(Message::text(frame)).await.is_err() {
                    counters.failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            read = ws.next() => match read {
                Some(Ok(Message::Text(text))) => {
                    for frame in text.split('\u{1e}').filter(|f| !f.is_empty()) {
                        if frame.contains("\"type\":3") {
                            counters.echoes.fetch_add(1, Ordering::Relaxed);
                        } else if frame.contains("\"broadcast\"") {
                            counters.broadcasts.fetch_add(1, Ordering::Relaxed);
                        } else if frame.contains("\"type\":7") {
                            counters.failures.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
                Some(Ok(_)) => {}
                _ => {
                    counters.failures.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        }
    }
    let _ = ws.close(None).await;
}

/// What the soak's tasks need of the target: where to connect, and the relay's PID.
struct TargetRef {
    app: String,
    pid: u32,
}

impl TargetRef {
    fn new(target: &Target) -> Self {
        Self {
            app: target
                .app
                .as_ref()
                .map(|a| a.addr.clone())
                .unwrap_or_default(),
            pid: target.server.pid(),
        }
    }

    async fn connect(&self, user: &str) -> crate::client::Result<crate::client::Ws> {
        crate::client::connect_relay(&self.app, "bench", user).await
    }
}

/// Prints the soak's summary.
pub(crate) fn print(result: &SoakResult, relay: &Proc) {
    println!(
        "soak: {} connections for {:.0} s, {:.2}% replaced a second",
        result.clients, result.seconds, result.churn_percent_per_sec
    );
    println!(
        "  relay RSS growth after warm-up: {:.1}%; descriptors {} after warm-up, {} at the end",
        result.rss_growth_percent, result.descriptors_after_warm_up, result.descriptors_at_end
    );
    if let Some(last) = result.samples.last() {
        println!(
            "  echoes {}, broadcasts received {}, failures {}; relay RSS at the end {:.1} MB (pid {})",
            last.echoes,
            last.broadcasts_received,
            last.failures,
            last.rss_bytes as f64 / 1e6,
            relay.pid()
        );
    }
}
