//! The scenarios, each run the same way against the relay and against the floor.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use futures_util::StreamExt;
use serde::Serialize;

use crate::client::{self, HttpConn, HttpTransport, Ws};
use crate::procs::{Proc, SyscallCount};

/// What is being measured: the relay (clients negotiate at the sample app, then connect to
/// the relay) or the floor (clients connect straight to it).
pub(crate) struct Target {
    pub(crate) name: &'static str,
    /// The process whose CPU and memory are measured.
    pub(crate) server: Proc,
    /// The sample app, for the relay.
    pub(crate) app: Option<Proc>,
    /// The floor's HTTP (event stream and long polling) address.
    pub(crate) http: Option<String>,
    /// More processes whose CPU counts with the server's: the other nodes of a cluster, and
    /// its Redis.
    pub(crate) others: Vec<Proc>,
}

impl Target {
    async fn connect(&self, n: usize) -> client::Result<Ws> {
        match &self.app {
            Some(app) => client::connect_relay(&app.addr, "bench", &format!("u{n}")).await,
            None => client::connect_floor(&self.server.addr).await,
        }
    }

    async fn connect_http(&self, n: usize, transport: HttpTransport) -> client::Result<HttpConn> {
        match (&self.app, &self.http) {
            (Some(app), _) => {
                client::connect_relay_http(&app.addr, "bench", &format!("h{n}"), transport).await
            }
            (None, Some(http)) => client::connect_floor_http(http, n, transport).await,
            (None, None) => Err("no HTTP address".into()),
        }
    }

    /// Whether it serves only the WebSocket echoes (the two-hop floor).
    pub(crate) fn echoes_only(&self) -> bool {
        self.app.is_none() && self.http.is_none()
    }

    pub(crate) fn is_relay(&self) -> bool {
        self.app.is_some()
    }

    /// CPU seconds of the server and the processes that count with it, and the part of
    /// them spent in the kernel: one reading of each process.
    pub(crate) fn cpu_and_system_secs(&self) -> (f64, f64) {
        std::iter::once(&self.server)
            .chain(&self.others)
            .map(Proc::cpu_split)
            .fold((0.0, 0.0), |(cpu, system), (u, s)| {
                (cpu + u + s, system + s)
            })
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
        Message::text(self.request_text(id, target, args, floor))
    }

    /// [`Target::request`]'s text.
    fn request_text(
        &self,
        id: Option<&str>,
        target: &str,
        args: &[&str],
        floor: impl FnOnce() -> String,
    ) -> String {
        if !self.is_relay() {
            return floor();
        }
        invocation_text(id, target, args)
    }

    /// One echo request carrying `payload`.
    fn echo(&self, id: u64, payload: &str) -> Message {
        Message::text(self.echo_text(id, payload))
    }

    /// [`Target::echo`]'s text.
    fn echo_text(&self, id: u64, payload: &str) -> String {
        let id = id.to_string();
        self.request_text(Some(&id), "Echo", &[payload], || format!("E{payload}"))
    }

    /// Asks for the connection's id (answered by a completion; the floor answers `id:<n>`).
    fn whoami(&self) -> Message {
        self.request(Some("w"), "GetConnectionId", &[], || "I".to_owned())
    }

    /// The connection id in an answer to [`Target::whoami`], if this is one.
    fn parse_whoami(&self, text: &str) -> Option<String> {
        if !self.is_relay() {
            return text.strip_prefix("id:").map(str::to_owned);
        }
        let frame = text
            .split('\u{1e}')
            .find(|f| f.contains("\"invocationId\":\"w\""))?;
        let value: serde_json::Value = serde_json::from_str(frame).ok()?;
        value["result"].as_str().map(str::to_owned)
    }

    /// One message to connection `id` carrying `payload`.
    fn send_to(&self, id: &str, payload: &str) -> Message {
        self.request(None, "SendToConnection", &[id, payload], || {
            format!("C{id}|{payload}")
        })
    }

    /// A keep-alive, as the official client sends every 15 s when it has sent nothing else
    /// (the relay closes a client it hears nothing from for 30 s). The floor needs none.
    fn ping(&self) -> Option<Message> {
        self.is_relay().then(|| Message::text("{\"type\":6}\u{1e}"))
    }

    /// Sends a keep-alive on `ws` if `last` is [`KEEP_ALIVE`] ago, and notes when.
    async fn keep_alive(&self, ws: &mut Ws, last: &mut Instant) {
        if last.elapsed() >= KEEP_ALIVE {
            *last = Instant::now();
            if let Some(ping) = self.ping() {
                let _ = ws.send(ping).await;
            }
        }
    }

    /// Leaves `group` (answered by a completion; the floor answers `ok`).
    fn leave(&self, group: &str) -> Message {
        self.request(Some("l"), "LeaveGroup", &[group], || format!("L{group}"))
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

/// A hub invocation `target(args…)` in the JSON protocol, awaiting a completion when it has
/// an `id`.
fn invocation_text(id: Option<&str>, target: &str, args: &[&str]) -> String {
    let id = id.map_or(String::new(), |i| format!("\"invocationId\":\"{i}\","));
    let args: Vec<String> = args.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "{{\"type\":1,{id}\"target\":\"{target}\",\"arguments\":[{}]}}\u{1e}",
        args.join(",")
    )
}

/// An echo through the relay (the sample app's `Echo`), as a step-test worker sends it.
pub(crate) fn relay_echo(id: u64, payload: &str) -> Message {
    Message::text(invocation_text(Some(&id.to_string()), "Echo", &[payload]))
}

/// How often a connection that sends nothing else sends a keep-alive.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// A keep-alive on every connection (between scenarios: connections a scenario left idle).
pub(crate) async fn keep_alive(target: &Target, conns: &mut [Ws]) {
    if let Some(ping) = target.ping() {
        let sends = conns.iter_mut().map(|ws| ws.send(ping.clone()));
        futures_util::future::join_all(sends).await;
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

    pub(crate) fn record(&self, micros: u64) {
        if let Ok(mut v) = self.0.lock() {
            v.push(micros);
        }
    }

    /// Every latency recorded.
    pub(crate) fn samples(&self) -> Vec<u64> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub(crate) fn percentiles(&self) -> Percentiles {
        let mut v = self.samples();
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

/// The server's CPU time, its part in the kernel, and the clock at the start of a measured
/// stretch.
pub(crate) struct Meter {
    cpu0: f64,
    system0: f64,
    start: Instant,
}

impl Meter {
    pub(crate) fn start(target: &Target) -> Self {
        let (cpu0, system0) = target.cpu_and_system_secs();
        Self {
            cpu0,
            system0,
            start: Instant::now(),
        }
    }

    /// Seconds since the start, less the `idle_tail` that ended the stretch, and the server's
    /// CPU seconds since the start.
    pub(crate) fn stop(&self, target: &Target, idle_tail: Duration) -> (f64, f64) {
        let (secs, cpu, _) = self.stop_split(target, idle_tail);
        (secs, cpu)
    }

    /// [`Meter::stop`], and the part of the CPU seconds spent in the kernel.
    pub(crate) fn stop_split(&self, target: &Target, idle_tail: Duration) -> (f64, f64, f64) {
        let secs = (self.start.elapsed() - idle_tail.min(self.start.elapsed())).as_secs_f64();
        let (cpu, system) = target.cpu_and_system_secs();
        (secs.max(0.001), cpu - self.cpu0, system - self.system0)
    }
}

/// How long a receiver waits, once the sends have stopped, before it takes everything to have
/// arrived.
const QUIET: Duration = Duration::from_millis(250);

/// What a fan-out scenario counts while it runs.
#[derive(Default)]
struct Tally {
    latencies: Latencies,
    messages: AtomicU64,
    delivered: AtomicU64,
    membership_changes: AtomicU64,
}

impl Tally {
    /// Counts and times what a receiver read; `None` when its connection ended.
    fn heard(
        &self,
        next: Option<Result<Message, async_tungstenite::tungstenite::Error>>,
        last_heard: &mut Instant,
    ) -> Option<()> {
        let message = next?.ok()?;
        *last_heard = Instant::now();
        if let Message::Text(text) = message {
            let n = self.latencies.record_stamps(&text);
            self.delivered.fetch_add(n, Ordering::Relaxed);
        }
        Some(())
    }

    /// The result, for a stretch measured by `meter` and ended by [`QUIET`].
    fn result(
        &self,
        target: &Target,
        meter: &Meter,
        group_size: usize,
        receivers: usize,
        rate: u32,
        payload: usize,
    ) -> BroadcastResult {
        let (secs, cpu, system) = meter.stop_split(target, QUIET);
        let deliveries = self.delivered.load(Ordering::Relaxed);
        BroadcastResult {
            group_size,
            receivers,
            rate_per_sec: rate,
            payload_bytes: payload,
            messages: self.messages.load(Ordering::Relaxed),
            deliveries,
            deliveries_per_sec: deliveries as f64 / secs,
            membership_changes_per_sec: self.membership_changes.load(Ordering::Relaxed) as f64
                / secs,
            latency: self.latencies.percentiles(),
            server_cpu_us_per_delivery: cpu * 1e6 / deliveries.max(1) as f64,
            server_system_cpu_us_per_delivery: system * 1e6 / deliveries.max(1) as f64,
            samples: self.latencies.samples(),
        }
    }
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
    /// The server's CPU over the storm, per connection opened (µs).
    pub(crate) server_cpu_us_per_connect: f64,
    /// The part of it spent in the kernel (system time, µs): what the sockets cost, whatever
    /// the server's own code does.
    pub(crate) server_system_cpu_us_per_connect: f64,
    /// Handshakes the kernel dropped over the storm, a listener's queue being full (the
    /// network namespace's count: see `procs::listen_overflows`).
    pub(crate) listen_overflows: Option<u64>,
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
    open_with(|n| target.connect(n), first, count, concurrency, latencies).await
}

/// [`open_many`], each connection opened by `connect(its number)`.
pub(crate) async fn open_with<F, Fut>(
    connect: F,
    first: usize,
    count: usize,
    concurrency: usize,
    latencies: &Latencies,
) -> (Vec<Ws>, usize)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = client::Result<Ws>>,
{
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
            match connect(first + i).await {
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
    let storm = Meter::start(target);
    let opening = open_many(target, 0, n, concurrency, &latencies);
    let ((mut opened, failed), overflows) = crate::procs::listen_overflows_over(opening).await;
    let (elapsed, storm_cpu, storm_system) = storm.stop_split(target, Duration::ZERO);
    // Idle: hold them, reading whatever comes (keep-alives), and measure.
    let reading = Arc::new(AtomicBool::new(true));
    let readers: Vec<_> = opened
        .drain(..)
        .map(|ws| {
            let reading = reading.clone();
            let ping = target.ping();
            tokio::spawn(async move {
                let mut ws = ws;
                let mut last_ping = Instant::now();
                while reading.load(Ordering::Relaxed) {
                    if let Some(ping) = ping.clone().filter(|_| last_ping.elapsed() >= KEEP_ALIVE) {
                        last_ping = Instant::now();
                        let _ = ws.send(ping).await;
                    }
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
    let meter = Meter::start(target);
    tokio::time::sleep(idle).await;
    let (secs, cpu) = meter.stop(target, Duration::ZERO);
    let idle_cpu = cpu / secs * 100.0;
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
        server_cpu_us_per_connect: storm_cpu * 1e6 / ok,
        server_system_cpu_us_per_connect: storm_system * 1e6 / ok,
        listen_overflows: overflows,
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
    /// The part of it spent in the kernel (system time, µs): the sockets' share, which the
    /// server's own code does not spend.
    pub(crate) server_system_cpu_us_per_echo: f64,
    /// The server's system calls and context switches per echo (`--syscalls`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server_syscalls_per_echo: Option<(f64, f64)>,
}

impl EchoResult {
    /// The result of `echoes` round trips timed in `latencies`, over a stretch measured by
    /// `meter`.
    fn measured(
        target: &Target,
        meter: &Meter,
        connections: usize,
        in_flight: usize,
        payload: usize,
        (echoes, latencies): (u64, &Latencies),
        syscalls: SyscallCount,
    ) -> Self {
        let (secs, cpu, system) = meter.stop_split(target, Duration::ZERO);
        let per = |n: u64| n as f64 / echoes.max(1) as f64;
        let syscalls = syscalls
            .stop()
            .map(|c| (per(c.syscalls), per(c.context_switches)));
        Self {
            connections,
            in_flight,
            payload_bytes: payload,
            echoes_per_sec: echoes as f64 / secs,
            latency: latencies.percentiles(),
            server_cpu_us_per_echo: cpu * 1e6 / echoes.max(1) as f64,
            server_system_cpu_us_per_echo: system * 1e6 / echoes.max(1) as f64,
            server_syscalls_per_echo: syscalls,
        }
    }
}

pub(crate) async fn echo(
    target: &Target,
    conns: &mut [Ws],
    in_flight: usize,
    payload: usize,
    duration: Duration,
) -> EchoResult {
    let latencies = Latencies::default();
    let done = AtomicU64::new(0);
    let syscalls = SyscallCount::start(target.server.pid());
    let meter = Meter::start(target);
    let deadline = meter.start + duration;
    let tasks = conns.iter_mut().map(|ws| {
        let (latencies, done) = (&latencies, &done);
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
    let echoes = done.load(Ordering::Relaxed);
    EchoResult::measured(
        target,
        &meter,
        conns.len(),
        in_flight,
        payload,
        (echoes, &latencies),
        syscalls,
    )
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
    /// Leaves and joins a second (group churn).
    pub(crate) membership_changes_per_sec: f64,
    pub(crate) latency: Percentiles,
    pub(crate) server_cpu_us_per_delivery: f64,
    /// Of it, the part spent in the kernel.
    pub(crate) server_system_cpu_us_per_delivery: f64,
    /// Every latency, in µs (to pool rounds).
    #[serde(skip)]
    pub(crate) samples: Vec<u64>,
}

impl BroadcastResult {
    /// Several rounds of the same scenario as one: counts summed, latencies pooled.
    fn pooled(rounds: &[Self]) -> Option<Self> {
        let first = rounds.first()?;
        let all = Latencies::default();
        let mut deliveries = 0;
        let mut cpu_us = 0.0;
        let mut system_us = 0.0;
        for r in rounds {
            for &sample in &r.samples {
                all.record(sample);
            }
            deliveries += r.deliveries;
            cpu_us += r.server_cpu_us_per_delivery * r.deliveries as f64;
            system_us += r.server_system_cpu_us_per_delivery * r.deliveries as f64;
        }
        let n = rounds.len() as f64;
        Some(Self {
            messages: rounds.iter().map(|r| r.messages).sum(),
            deliveries,
            deliveries_per_sec: rounds.iter().map(|r| r.deliveries_per_sec).sum::<f64>() / n,
            membership_changes_per_sec: 0.0,
            latency: all.percentiles(),
            server_cpu_us_per_delivery: cpu_us / deliveries.max(1) as f64,
            server_system_cpu_us_per_delivery: system_us / deliveries.max(1) as f64,
            samples: all.samples(),
            ..first.clone()
        })
    }
}

pub(crate) async fn broadcast(
    target: &Target,
    conns: &mut [Ws],
    rate: u32,
    payload: usize,
    duration: Duration,
) -> BroadcastResult {
    let how = FanOut {
        prefix: "all",
        group_size: conns.len().max(1),
        rate,
        payload,
        duration,
        churn: None,
    };
    fan_out(target, conns, how, |_, p| target.broadcast(p)).await
}

/// Group sends: `conns` in groups of `group_size`; in each, the first connection sends `rate`
/// messages a second of `payload` bytes to its group. Deliveries are counted over every group.
/// With `churn`, every other member leaves its group and joins it again, in turn, once per
/// `churn` (staggered), while the sends go on. Groups are named `<prefix><size>-<index>`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn group_send(
    target: &Target,
    conns: &mut [Ws],
    prefix: &str,
    group_size: usize,
    rate: u32,
    payload: usize,
    duration: Duration,
    churn: Option<Duration>,
) -> BroadcastResult {
    let group_size = group_size.clamp(2, conns.len().max(2));
    let joins = conns.iter_mut().enumerate().map(|(i, ws)| async move {
        let group = format!("{prefix}{group_size}-{}", i / group_size);
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
        FanOut {
            prefix,
            group_size,
            rate,
            payload,
            duration,
            churn,
        },
        |g, p| target.group_send(g, p),
    )
    .await
}

/// How [`fan_out`] runs.
struct FanOut<'a> {
    prefix: &'a str,
    group_size: usize,
    rate: u32,
    payload: usize,
    duration: Duration,
    churn: Option<Duration>,
}

/// The first connection of each chunk of `group_size` sends `rate` messages a second, made
/// by `make(group, payload)` (group `<prefix><group_size>-<chunk index>`); everyone else
/// counts and times what arrives (and, with churn, leaves and joins its group in turn).
async fn fan_out(
    target: &Target,
    conns: &mut [Ws],
    how: FanOut<'_>,
    make: impl Fn(&str, &str) -> Message,
) -> BroadcastResult {
    let FanOut {
        prefix,
        group_size,
        rate,
        payload,
        duration,
        churn,
    } = how;
    let tally = Tally::default();
    let sending = AtomicBool::new(true);
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (g, chunk) in conns.chunks_mut(group_size.max(1)).enumerate() {
        let group = format!("{prefix}{group_size}-{g}");
        if let Some((sender, rest)) = chunk.split_first_mut() {
            senders.push((group.clone(), sender));
            receivers.extend(rest.iter_mut().map(|ws| (group.clone(), ws)));
        }
    }
    let receiver_count = receivers.len();
    let meter = Meter::start(target);
    let start = meter.start;
    let send = senders.into_iter().map(|(group, sender)| {
        let (make, tally) = (&make, &tally);
        async move {
            let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
            let mut tick = tokio::time::interval(interval);
            while start.elapsed() < duration {
                tick.tick().await;
                if sender.send(make(&group, &stamped(payload))).await.is_err() {
                    break;
                }
                tally.messages.fetch_add(1, Ordering::Relaxed);
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
    let receive = receivers.into_iter().enumerate().map(|(i, (group, ws))| {
        let (tally, sending) = (&tally, &sending);
        // Every other receiver churns, each at its own point in the period.
        let churn = churn.filter(|_| i % 2 == 1);
        let mut next_change = churn.map(|period| {
            start + period.mul_f64((i as f64 / receiver_count.max(1) as f64).fract())
        });
        async move {
            let mut member = true;
            let mut last_heard = Instant::now();
            let mut last_ping = Instant::now();
            loop {
                target.keep_alive(ws, &mut last_ping).await;
                let wait = next_change.map_or(QUIET, |at| {
                    at.saturating_duration_since(Instant::now()).min(QUIET)
                });
                match tokio::time::timeout(wait, ws.next()).await {
                    Ok(next) => {
                        if tally.heard(next, &mut last_heard).is_none() {
                            return;
                        }
                    }
                    Err(_) => {
                        let sending = sending.load(Ordering::Relaxed);
                        match (next_change, churn) {
                            (Some(at), Some(period)) if Instant::now() >= at => {
                                // Back in the group once the sends stop, for whatever runs
                                // next.
                                if sending || !member {
                                    let change = if member {
                                        target.leave(&group)
                                    } else {
                                        target.join(&group)
                                    };
                                    if ws.send(change).await.is_err() {
                                        return;
                                    }
                                    member = !member;
                                    tally.membership_changes.fetch_add(1, Ordering::Relaxed);
                                }
                                next_change = Some(at + period / 2);
                            }
                            _ if !sending && last_heard.elapsed() >= QUIET => return,
                            _ => {}
                        }
                    }
                }
            }
        }
    });
    futures_util::future::join(send, futures_util::future::join_all(receive)).await;
    tally.result(target, &meter, group_size, receiver_count, rate, payload)
}

/// Send to connection: every connection sends `rate` messages a second of `payload` bytes to
/// a partner (the connection half the list away), by its connection id.
pub(crate) async fn send_to_connection(
    target: &Target,
    conns: &mut [Ws],
    rate: u32,
    payload: usize,
    duration: Duration,
) -> BroadcastResult {
    // Each connection's id, as its server knows it.
    let ids = conns.iter_mut().map(|ws| async move {
        ws.send(target.whoami()).await.ok()?;
        loop {
            let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await
            else {
                return None;
            };
            if let Message::Text(t) = m {
                if let Some(id) = target.parse_whoami(&t) {
                    return Some(id);
                }
            }
        }
    });
    let ids: Vec<Option<String>> = futures_util::future::join_all(ids).await;
    let n = conns.len();
    let tally = Tally::default();
    let meter = Meter::start(target);
    let start = meter.start;
    let tasks = conns.iter_mut().enumerate().map(|(i, ws)| {
        let partner = ids[(i + n / 2) % n.max(1)].clone();
        let tally = &tally;
        async move {
            let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
            // Spread over the interval, so that the sends do not all start at once.
            let offset = interval.mul_f64(i as f64 / n.max(1) as f64);
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::from_std(start) + offset, interval);
            let mut last_heard = Instant::now();
            loop {
                let sending = start.elapsed() < duration && partner.is_some();
                tokio::select! {
                    _ = tick.tick(), if sending => {
                        let to = partner.as_deref().unwrap_or_default();
                        if ws.send(target.send_to(to, &stamped(payload))).await.is_err() {
                            return;
                        }
                        tally.messages.fetch_add(1, Ordering::Relaxed);
                    }
                    next = tokio::time::timeout(QUIET, ws.next()) => match next {
                        Ok(next) => {
                            if tally.heard(next, &mut last_heard).is_none() {
                                return;
                            }
                        }
                        Err(_) if !sending && last_heard.elapsed() >= QUIET => return,
                        Err(_) => {}
                    }
                }
            }
        }
    });
    futures_util::future::join_all(tasks).await;
    tally.result(target, &meter, 2, n, rate, payload)
}

/// Closed-loop echoes over an HTTP transport: `n` connections of their own (opened and closed
/// here), each with one echo in flight, for `duration`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HttpEchoResult {
    pub(crate) transport: HttpTransport,
    pub(crate) failed_connections: usize,
    /// Handshakes the kernel dropped while the connections opened, all at once (see
    /// `ConnectResult::listen_overflows`).
    pub(crate) listen_overflows: Option<u64>,
    /// Server RSS per connection held, before the echoes.
    pub(crate) server_rss_per_connection_bytes: f64,
    #[serde(flatten)]
    pub(crate) echo: EchoResult,
}

pub(crate) async fn http_echo(
    target: &Target,
    transport: HttpTransport,
    n: usize,
    payload: usize,
    duration: Duration,
) -> HttpEchoResult {
    let rss_before = target.server.rss_bytes();
    let opened = (0..n).map(|i| target.connect_http(i, transport));
    let opening = futures_util::future::join_all(opened);
    let (opened, overflows) = crate::procs::listen_overflows_over(opening).await;
    // Held (an event stream open, or a poll waiting), before any traffic.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_per_connection =
        target.server.rss_bytes().saturating_sub(rss_before) as f64 / n.max(1) as f64;
    let failed = opened.iter().filter(|c| c.is_err()).count();
    if let Some(Err(e)) = opened.iter().find(|c| c.is_err()) {
        eprintln!("  {transport:?} connect failed: {e}");
    }
    let mut conns: Vec<HttpConn> = opened.into_iter().filter_map(Result::ok).collect();
    let latencies = Latencies::default();
    let done = AtomicU64::new(0);
    let syscalls = SyscallCount::start(target.server.pid());
    let meter = Meter::start(target);
    let tasks = conns.iter_mut().map(|conn| {
        let (latencies, done, start) = (&latencies, &done, meter.start);
        async move {
            let mut id = 0u64;
            while start.elapsed() < duration {
                id += 1;
                if conn
                    .send(target.echo_text(id, &stamped(payload)))
                    .await
                    .is_err()
                {
                    return;
                }
                loop {
                    let next = tokio::time::timeout(Duration::from_secs(10), conn.incoming.recv());
                    let Ok(Some(data)) = next.await else { return };
                    let n = latencies.record_stamps(&String::from_utf8_lossy(&data));
                    if n > 0 {
                        done.fetch_add(n, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
    });
    futures_util::future::join_all(tasks).await;
    let echoes = done.load(Ordering::Relaxed);
    let echo = EchoResult::measured(
        target,
        &meter,
        n,
        1,
        payload,
        (echoes, &latencies),
        syscalls,
    );
    futures_util::future::join_all(conns.into_iter().map(HttpConn::close)).await;
    HttpEchoResult {
        transport,
        failed_connections: failed,
        listen_overflows: overflows,
        server_rss_per_connection_bytes: rss_per_connection,
        echo,
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
        let meter = Meter::start(target);
        let (latencies, broken) =
            hold_echoes(&mut conns, |id, p| target.echo(id, p), payload, hold).await;
        let (secs, cpu) = meter.stop(target, Duration::ZERO);
        let cpu = cpu / secs * 100.0;
        let failed = broken as usize + failed_connects;
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
    step_verdict(payload, results)
}

/// The step test's result: the largest step with p99 under 1 s and fewer than 1% failed.
pub(crate) fn step_verdict(payload: usize, steps: Vec<Step>) -> StepResult {
    let verdict_connections = steps
        .iter()
        .filter(|s| s.latency.p99_ms < 1000.0 && s.failed_percent < 1.0)
        .map(|s| s.connections)
        .max()
        .unwrap_or(0);
    StepResult {
        payload_bytes: payload,
        steps,
        verdict_connections,
    }
}

/// The step test's hold: every connection sends one `payload`-byte echo a second (spread over
/// the second) for `hold`, and awaits its answer. The latencies, and how many connections
/// broke.
pub(crate) async fn hold_echoes(
    conns: &mut [Ws],
    echo: impl Fn(u64, &str) -> Message,
    payload: usize,
    hold: Duration,
) -> (Latencies, u64) {
    let latencies = Latencies::default();
    let broken = AtomicU64::new(0);
    let total = conns.len().max(1);
    let t0 = Instant::now();
    let senders = conns.iter_mut().enumerate().map(|(i, ws)| {
        let (latencies, broken, echo) = (&latencies, &broken, &echo);
        async move {
            let offset = Duration::from_secs(1).mul_f64(i as f64 / total as f64);
            let mut at = tokio::time::Instant::from_std(t0) + offset;
            let end = tokio::time::Instant::from_std(t0) + hold;
            let mut id = 0u64;
            while at < end {
                tokio::time::sleep_until(at).await;
                at += Duration::from_secs(1);
                id += 1;
                if ws.send(echo(id, &stamped(payload))).await.is_err() {
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
    let broken = broken.load(Ordering::Relaxed);
    (latencies, broken)
}

/// A slow consumer: a fast broadcast to `readers`, alternately alone and with one more
/// connection that never reads (a new one each round). Its socket buffers fill, then the
/// server's queue for it: the server's memory must stay bounded and the others must not
/// notice. Rounds alternate, and each side's latencies are pooled over its rounds, so that
/// drift in the machine falls on both alike.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SlowConsumerResult {
    pub(crate) rounds: usize,
    /// Every receiver reading.
    pub(crate) without_slow: BroadcastResult,
    /// The same, with one receiver that never reads.
    pub(crate) with_slow: BroadcastResult,
    /// Server RSS before and after a last, longer broadcast with a slow consumer.
    pub(crate) server_rss_before_bytes: u64,
    pub(crate) server_rss_after_bytes: u64,
    /// Whether the server dropped that slow consumer as stalled (the relay logs it).
    pub(crate) slow_dropped: bool,
}

pub(crate) async fn slow_consumer(
    target: &Target,
    readers: &mut [Ws],
    rate: u32,
    payload: usize,
    duration: Duration,
) -> Option<SlowConsumerResult> {
    // A second unmeasured first: the generator's and the server's buffers grow to the rate.
    let _ = broadcast(target, readers, rate, payload, Duration::from_secs(1)).await;
    let rounds = 5;
    let phase = (duration / (2 * rounds as u32)).max(Duration::from_secs(1));
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        without.push(broadcast(target, readers, rate, payload, phase).await);
        let slow = target.connect(usize::MAX - 1 - round).await;
        with.push(broadcast(target, readers, rate, payload, phase).await);
        drop(slow);
    }
    // Then one that stays long enough to fill its socket buffers and the server's queue.
    let stalled = |t: &Target| t.server.output().matches("stopped reading").count();
    let stalled_before = stalled(target);
    let slow = target.connect(usize::MAX - 1 - rounds).await;
    let rss_before = target.server.rss_bytes();
    let _ = broadcast(target, readers, rate, payload, duration / 2).await;
    let rss_after = target.server.rss_bytes();
    let slow_dropped = stalled(target) > stalled_before;
    drop(slow);
    Some(SlowConsumerResult {
        rounds,
        without_slow: BroadcastResult::pooled(&without)?,
        with_slow: BroadcastResult::pooled(&with)?,
        server_rss_before_bytes: rss_before,
        server_rss_after_bytes: rss_after,
        slow_dropped,
    })
}

/// The access key of the relays the generator starts.
pub(crate) const KEY: &str = "bench-key-0123456789abcdef0123456789abcdef";

/// A REST call's bearer token for `path` on `relay`, as the Management SDK signs it.
fn rest_token(relay: &str, path: &str) -> String {
    use signalr_relay_core::auth::{sign, Algorithm, Claims};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut claims = Claims::issued_at(now, 3600);
    claims
        .aud
        .push(format!("http://{relay}{path}?api-version=2022-06-01"));
    sign(&claims, KEY.as_bytes(), Algorithm::Hs256)
}

/// One REST `POST` of `{"target", "arguments": [payload]}` on a kept-alive connection: whether
/// the relay took it (202).
async fn rest_send(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    relay: &str,
    path: &str,
    token: &str,
    payload: &str,
) -> bool {
    let body = serde_json::json!({ "target": "rest", "arguments": [payload] }).to_string();
    let Ok(req) = hyper::Request::post(format!("{path}?api-version=2022-06-01"))
        .header("host", relay)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
    else {
        return false;
    };
    if sender.ready().await.is_err() {
        return false;
    }
    match sender.send_request(req).await {
        Ok(res) => {
            let ok = res.status() == 202;
            let _ = http_body_util::BodyExt::collect(res.into_body()).await;
            ok
        }
        Err(_) => false,
    }
}

/// A broadcast through the REST API: `rate` a second of `payload` bytes to the hub, which
/// every connection but the first receives (the first stays idle, so that the receivers are
/// the WebSocket broadcast's). Relay only.
pub(crate) async fn rest_broadcast(
    target: &Target,
    conns: &mut [Ws],
    rate: u32,
    payload: usize,
    duration: Duration,
) -> Option<BroadcastResult> {
    let relay = target.server.addr.clone();
    let path = "/api/hubs/bench/:send";
    let token = rest_token(&relay, path);
    let mut sender = client::keep_alive_plain(&relay).await.ok()?;
    let tally = Tally::default();
    let sending = AtomicBool::new(true);
    let receivers: Vec<&mut Ws> = conns.iter_mut().skip(1).collect();
    let receiver_count = receivers.len();
    let meter = Meter::start(target);
    let start = meter.start;
    let send = async {
        let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let mut tick = tokio::time::interval(interval);
        while start.elapsed() < duration {
            tick.tick().await;
            if !rest_send(&mut sender, &relay, path, &token, &stamped(payload)).await {
                break;
            }
            tally.messages.fetch_add(1, Ordering::Relaxed);
        }
        sending.store(false, Ordering::Relaxed);
    };
    let receive = receivers.into_iter().map(|ws| {
        let (tally, sending) = (&tally, &sending);
        async move {
            let mut last_heard = Instant::now();
            let mut last_ping = Instant::now();
            loop {
                target.keep_alive(ws, &mut last_ping).await;
                match tokio::time::timeout(QUIET, ws.next()).await {
                    Ok(next) => {
                        if tally.heard(next, &mut last_heard).is_none() {
                            return;
                        }
                    }
                    Err(_) if !sending.load(Ordering::Relaxed) && last_heard.elapsed() >= QUIET => {
                        return
                    }
                    Err(_) => {}
                }
            }
        }
    });
    futures_util::future::join(send, futures_util::future::join_all(receive)).await;
    let group = receiver_count + 1;
    Some(tally.result(target, &meter, group, receiver_count, rate, payload))
}

/// REST sends to single connections (by their users), closed-loop on `concurrency` kept-alive
/// connections for `duration`. Relay only.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RestSendResult {
    pub(crate) concurrency: usize,
    pub(crate) requests: u64,
    pub(crate) requests_per_sec: f64,
    pub(crate) failed: u64,
    pub(crate) server_cpu_us_per_request: f64,
}

pub(crate) async fn rest_sends(
    target: &Target,
    conns: &mut [Ws],
    concurrency: usize,
    duration: Duration,
) -> Option<RestSendResult> {
    let relay = target.server.addr.clone();
    let users = conns.len().max(1);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let meter = Meter::start(target);
    let workers = (0..concurrency).map(|w| {
        let (relay, done, failed) = (&relay, &done, &failed);
        async move {
            let Ok(mut sender) = client::keep_alive_plain(relay).await else {
                failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let mut n = w;
            while meter.start.elapsed() < duration {
                let path = format!("/api/hubs/bench/users/u{}/:send", n % users);
                let token = rest_token(relay, &path);
                if rest_send(&mut sender, relay, &path, &token, "x").await {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                n += concurrency;
            }
        }
    });
    // The clients read what they are sent meanwhile, so that nothing backs up.
    let reading = AtomicBool::new(true);
    let readers = conns.iter_mut().map(|ws| {
        let reading = &reading;
        async move {
            while reading.load(Ordering::Relaxed) {
                let _ = tokio::time::timeout(QUIET, ws.next()).await;
            }
        }
    });
    let work = async {
        futures_util::future::join_all(workers).await;
        reading.store(false, Ordering::Relaxed);
    };
    futures_util::future::join(work, futures_util::future::join_all(readers)).await;
    let (secs, cpu) = meter.stop(target, Duration::ZERO);
    let requests = done.load(Ordering::Relaxed);
    Some(RestSendResult {
        concurrency,
        requests,
        requests_per_sec: requests as f64 / secs,
        failed: failed.load(Ordering::Relaxed),
        server_cpu_us_per_request: cpu * 1e6 / requests.max(1) as f64,
    })
}
