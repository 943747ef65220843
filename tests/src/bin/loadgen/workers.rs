//! The step test's clients in processes of their own. One process's descriptors (20,000 on
//! this project's machine) cap the connections it can hold, and so the connections one load
//! generator can offer; a step past that is spread over worker processes (`loadgen
//! step-worker`), each holding up to `per_worker` connections. The driving process tells
//! them, one line at a time on their standard input, to open connections and to hold a step,
//! and pools what they measured.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::client::{self, Ws};
use crate::scenarios::{self, Latencies, Meter, Step, StepResult, Target};

/// A worker process, and the lines it printed.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Connections it was asked to open (held or failed).
    asked: usize,
}

impl Worker {
    fn spawn(exe: &Path, app: &str, first: usize, concurrency: usize) -> Result<Self, String> {
        let mut command = if Path::new("/usr/bin/taskset").exists() {
            let mut c = Command::new("taskset");
            c.args(["-c", "1"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        let mut child = command
            .args(["step-worker", "--app", app])
            .args(["--first", &first.to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .args([
                "--sources",
                &client::SOURCES.load(Ordering::Relaxed).to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start a step worker: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
            asked: 0,
        })
    }

    fn tell(&mut self, line: &str) -> Result<(), String> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("a step worker is gone: {e}"))
    }

    /// Its next answer that starts with `word`, split off.
    async fn answer(&mut self, word: &str) -> Result<String, String> {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(600), self.lines.recv())
                .await
                .map_err(|_| "a step worker did not answer".to_owned())?
                .ok_or("a step worker ended")?;
            if let Some(rest) = line.strip_prefix(word) {
                return Ok(rest.trim().to_owned());
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Azure's step test (see [`scenarios::step_test`]) with its connections in worker
/// processes, at most `per_worker` each.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn step_test(
    target: &Target,
    exe: &Path,
    steps: &[usize],
    concurrency: usize,
    payload: usize,
    hold: Duration,
    per_worker: usize,
) -> Result<StepResult, String> {
    let app = target
        .app
        .as_ref()
        .map(|a| a.addr.clone())
        .ok_or("the step workers need an app server")?;
    let mut workers: Vec<Worker> = Vec::new();
    let mut asked = 0usize;
    let mut failed_connects = 0usize;
    let mut results = Vec::new();
    for &count in steps {
        eprintln!(
            "  {}: step {count} connections (in worker processes)",
            target.name
        );
        while asked < count {
            if workers.last().is_none_or(|w| w.asked >= per_worker) {
                workers.push(Worker::spawn(exe, &app, asked, concurrency)?);
            }
            let Some(w) = workers.last_mut() else {
                return Err("no worker".into());
            };
            let n = (count - asked).min(per_worker - w.asked);
            w.tell(&format!("open {n}"))?;
            let answer = w.answer("opened").await?;
            let failed: usize = answer
                .split_whitespace()
                .nth(1)
                .and_then(|f| f.parse().ok())
                .unwrap_or(n);
            failed_connects += failed;
            w.asked += n;
            asked += n;
        }
        let meter = Meter::start(target);
        for w in &mut workers {
            w.tell(&format!("hold {} {payload}", hold.as_millis()))?;
        }
        let latencies = Latencies::default();
        let mut broken = 0u64;
        for w in &mut workers {
            let answer = w.answer("held").await?;
            let (b, samples) = answer.split_once(' ').unwrap_or((&answer, "[]"));
            broken += b.parse::<u64>().unwrap_or(0);
            let samples: Vec<u64> = serde_json::from_str(samples).unwrap_or_default();
            for s in samples {
                latencies.record(s);
            }
        }
        let (secs, cpu) = meter.stop(target, Duration::ZERO);
        let failed = broken as usize + failed_connects;
        results.push(Step {
            connections: count,
            latency: latencies.percentiles(),
            failed_percent: failed as f64 * 100.0 / count.max(1) as f64,
            server_cpu_percent: cpu / secs * 100.0,
            server_rss_bytes: target.server.rss_bytes(),
        });
        if results
            .last()
            .is_some_and(|s: &Step| s.failed_percent >= 50.0)
        {
            break;
        }
    }
    Ok(scenarios::step_verdict(payload, results))
}

/// A worker: opens connections through `app` and holds steps, as its standard input says:
/// `open N` (answered `opened OK FAILED`) and `hold MILLIS PAYLOAD` (answered `held BROKEN
/// [latencies in µs…]`).
pub(crate) async fn serve(
    app: &str,
    first: usize,
    concurrency: usize,
    sources: u32,
) -> Result<(), String> {
    client::SOURCES.store(sources.max(1), Ordering::Relaxed);
    let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut conns: Vec<Ws> = Vec::new();
    let mut next = first;
    let mut keep_alive = tokio::time::interval(Duration::from_secs(10));
    loop {
        // Between steps, the connections held send keep-alives, as the official client does
        // (the relay closes a client it has heard nothing from for 30 s).
        let line = tokio::select! {
            line = commands.recv() => match line {
                Some(line) => line,
                None => return Ok(()),
            },
            _ = keep_alive.tick() => {
                let ping = async_tungstenite::tungstenite::Message::text("{\"type\":6}\u{1e}");
                let sends = conns.iter_mut().map(|ws| ws.send(ping.clone()));
                futures_util::future::join_all(sends).await;
                continue;
            }
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["open", n] => {
                let n: usize = n.parse().map_err(|_| format!("bad command {line:?}"))?;
                let connect = |i: usize| async move {
                    client::connect_relay(app, "bench", &format!("u{i}")).await
                };
                let (opened, failed) =
                    scenarios::open_with(connect, next, n, concurrency, &Latencies::default())
                        .await;
                next += n;
                let ok = opened.len();
                conns.extend(opened);
                format!("opened {ok} {failed}")
            }
            ["hold", millis, payload] => {
                let hold = Duration::from_millis(millis.parse().unwrap_or(5000));
                let payload = payload.parse().unwrap_or(2048);
                let (latencies, broken) =
                    scenarios::hold_echoes(&mut conns, scenarios::relay_echo, payload, hold).await;
                let samples = serde_json::to_string(&latencies.samples()).unwrap_or_default();
                format!("held {broken} {samples}")
            }
            _ => return Err(format!("bad command {line:?}")),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{reply}")
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())?;
    }
}
