//! The load generator: benchmarks of the relay against a floor measured in the same run.
//!
//! ```sh
//! cargo build --release --bins
//! target/release/loadgen run                      # every scenario, release binaries
//! target/release/loadgen run --clients 5000 --json bench.json
//! target/release/loadgen run --only broadcast,slow-consumer --seconds 10
//! target/release/loadgen run --only echo,http-echo --syscalls  # + system calls per echo
//! target/debug/loadgen run --smoke                # a few connections each; what CI runs
//! target/release/loadgen soak                     # 10,000 connections with churn, 10 minutes
//! ```
//!
//! Each scenario runs twice: against the relay (clients negotiate at the sample app's `bench`
//! hub, follow the redirect and connect to the relay, as the official client does) and
//! against the floor (a minimal WebSocket and HTTP server: one hop, no SignalR). The server
//! under test is pinned to core 0; the generator and the app server share core 1. CPU time
//! and memory are read from `/proc` for the server process alone. Every figure is also
//! printed as a ratio to the floor's.
//!
//! Benchmarks are not tests: nothing here asserts a timing. A smoke run fails only when a
//! scenario did nothing (no echo, no delivery, a failed connection).

mod chart;
mod client;
mod cluster;
mod floor;
mod hop;
mod procs;
mod scenarios;
mod soak;
mod workers;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::client::{HttpTransport, Ws};
use crate::procs::Proc;
use crate::scenarios::{
    BroadcastResult, ConnectResult, EchoResult, HttpEchoResult, SlowConsumerResult, StepResult,
    Target,
};

#[derive(Parser)]
#[command(about = "Benchmarks SignalR Relay against a one-hop floor, in one run")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the floor (started by `run`).
    Floor {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        #[arg(long, default_value_t = 3600)]
        exit_after: u64,
    },
    /// Serve the two-hop floor (started by `run --two-hop`): WebSocket echoes sent through
    /// `--upstream` and back.
    TwoHop {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// The upstream (`two-hop-upstream`) to send each message through.
        #[arg(long)]
        upstream: String,
        /// Connections to the upstream, over which the clients are spread.
        #[arg(long, default_value_t = 5)]
        connections: usize,
        #[arg(long, default_value_t = 3600)]
        exit_after: u64,
    },
    /// Serve the two-hop floor's upstream: sends back what each connection sends it.
    TwoHopUpstream {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        #[arg(long, default_value_t = 3600)]
        exit_after: u64,
    },
    /// Run the scenarios against the relay and the floor.
    Run(RunArgs),
    /// Hold many connections for a long time, with churn, echoes and broadcasts, and sample
    /// the relay's memory and descriptors (no floor).
    Soak(SoakArgs),
    /// Hold part of a step test's connections (started by `run`, told what to do on stdin).
    StepWorker {
        /// The sample app whose negotiate the connections go through.
        #[arg(long)]
        app: String,
        /// The first connection's number (its user is `u<number>`).
        #[arg(long, default_value_t = 0)]
        first: usize,
        /// Connections opened at a time.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Source addresses 127.0.0.1 … 127.0.0.N for client sockets.
        #[arg(long, default_value_t = 4)]
        sources: u32,
    },
}

#[derive(clap::Args)]
struct SoakArgs {
    /// Where the relay and sample-app binaries are (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// `tokio` or `smol`.
    #[arg(long, default_value = "tokio")]
    runtime: String,
    /// Connections held.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Seconds the soak runs.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Percent of the connections replaced each second.
    #[arg(long, default_value_t = 1.0)]
    churn_percent: f64,
    /// Seconds between one connection's echoes.
    #[arg(long, default_value_t = 10)]
    echo_interval: u64,
    /// Broadcasts a second, to every connection.
    #[arg(long, default_value_t = 1)]
    broadcast_rate: u32,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10)]
    sample_every: u64,
    /// Seconds of warm-up before growth is measured: by default until the first generation
    /// of connections has been replaced (their lives last up to 150 s at 1% churn), since
    /// the allocator's pools grow until then.
    #[arg(long, default_value_t = 240)]
    warm_up: u64,
    /// Source addresses 127.0.0.1 … 127.0.0.N for client sockets.
    #[arg(long, default_value_t = 4)]
    sources: u32,
    /// Write the result here as JSON too.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Where the relay and sample-app binaries are (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// `tokio` (signalr-relay, sample-app) or `smol` (signalr-relay-smol, sample-app-smol).
    #[arg(long, default_value = "tokio")]
    runtime: String,
    /// Connections for the connect storm, idle and broadcast scenarios.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Connections opened at once in the connect storm.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds each timed scenario runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Source addresses 127.0.0.1 … 127.0.0.N for client sockets.
    #[arg(long, default_value_t = 4)]
    sources: u32,
    /// Broadcasts a second in the broadcast and slow-consumer scenarios.
    #[arg(long, default_value_t = 20)]
    broadcast_rate: u32,
    /// Broadcasts a second in the slow-consumer scenario (to 20 receivers: 5 rounds without
    /// and with one more that does not read, over four times `--seconds`, then twice
    /// `--seconds` with one: tens of megabytes offered to it, more than its socket buffers
    /// hold).
    #[arg(long, default_value_t = 500)]
    slow_consumer_rate: u32,
    /// Connection counts of the step test (each sends a 2 KB echo a second).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,2000,5000,10000,15000"
    )]
    steps: Vec<usize>,
    /// Skip the step test.
    #[arg(long)]
    no_steps: bool,
    /// Connection counts of the cluster's step test, held by worker processes (up to 15,000
    /// each) so that it may pass one process's descriptor cap.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "5000,10000,15000,20000,25000,30000"
    )]
    cluster_steps: Vec<usize>,
    /// Run only these scenarios (the connect storm always runs: it opens the connections).
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
    /// Connections of the Server-Sent Events and long-polling echo scenarios.
    #[arg(long, default_value_t = 100)]
    http_clients: usize,
    /// The HTTP transports of the echo scenarios, in order. Run one alone for its idle memory:
    /// the second one run in the same relay reuses the memory that the first one freed.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "server-sent-events,long-polling"
    )]
    http_transports: Vec<HttpTransport>,
    /// Write the results here as JSON too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the step test's chart (p99 latency against connections) here, as SVG.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// A few connections for a second each: checks that the generator works (CI).
    #[arg(long)]
    smoke: bool,
    /// Count the server's system calls and context switches per echo with `perf stat`
    /// (where the machine lets it). Off by default: counting costs the server a little per
    /// call, so its CPU figures are best taken without.
    #[arg(long)]
    syscalls: bool,
    /// Measure the echo scenarios and the broadcast this many times, the relay and the floor
    /// in turn: both are up at once, and each scenario runs on one right after the other,
    /// the first of the pair alternating by round. Each round's ratio then compares figures
    /// taken seconds apart, not minutes, and the table ends with the median of the rounds.
    /// Only for `--only` with `echo`, `http-echo` and `broadcast`, and `--seconds` of 20 at
    /// most.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// With `--rounds`: the WebSocket echoes also run against a third server in turn, the
    /// two-hop floor (`loadgen two-hop`): each message sent through an upstream process and
    /// back over five multiplexed connections, as the relay does through its app server, but
    /// with nothing else. Its CPU is the least two hops cost.
    #[arg(long)]
    two_hop: bool,
}

/// The scenarios `--only` picks from.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// Closed-loop WebSocket echoes.
    Echo,
    /// Echoes over Server-Sent Events and long polling.
    HttpEcho,
    /// A broadcast to every connection.
    Broadcast,
    /// Group sends, small and big groups.
    Groups,
    /// Group sends while members leave and join.
    Churn,
    /// Messages to one connection by its id.
    SendToConnection,
    /// A broadcast with one receiver that stops reading.
    SlowConsumer,
    /// Azure's step test.
    Step,
    /// WebSocket echoes over TLS (wss), against a second relay on `--tls-cert`, with a CA
    /// made for the run: the relay's CPU per echo against plain ws.
    Tls,
    /// The REST API (relay only): a broadcast to every connection, against the WebSocket
    /// broadcast; and sends to single connections, requests a second.
    Rest,
    /// Three nodes on Redis behind nginx (needs redis-server and nginx): the broadcast and
    /// group sends with the clients spread over the nodes (CPU per delivery summed over the
    /// nodes and Redis, and per node, against the single relay's), and the step test.
    Cluster,
}

#[derive(Serialize, Default)]
struct Side {
    connect: Option<ConnectResult>,
    echo: Vec<EchoResult>,
    http_echo: Vec<HttpEchoResult>,
    broadcast: Option<BroadcastResult>,
    /// With `--rounds`: the broadcast of each round.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    broadcasts: Vec<BroadcastResult>,
    groups: Vec<BroadcastResult>,
    churn: Option<BroadcastResult>,
    send_to_connection: Option<BroadcastResult>,
    slow_consumer: Option<SlowConsumerResult>,
    step: Option<StepResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rest_broadcast: Option<BroadcastResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rest_sends: Option<scenarios::RestSendResult>,
}

#[derive(Serialize)]
struct Report {
    date: String,
    runtime: String,
    /// How many times each echo scenario and the broadcast ran on each side, in turn
    /// (`--rounds`): their results come round after round.
    rounds: u32,
    relay: Side,
    floor: Side,
    /// The two-hop floor (`--two-hop`: the connect storm and WebSocket echoes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    two_hop: Option<Side>,
    /// The relay on TLS (connect storm and echoes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    relay_tls: Option<Side>,
    /// Several nodes on Redis behind nginx.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterSide>,
}

/// The cluster scenario's results.
#[derive(Serialize, Default)]
struct ClusterSide {
    nodes: usize,
    connect: Option<ConnectResult>,
    broadcast: Option<BroadcastResult>,
    /// During the broadcast: each node's CPU per message it delivered, and Redis's per
    /// delivery in all (µs).
    broadcast_per_process: Vec<(String, f64)>,
    /// How the clients were spread over the nodes (deliveries per node in the broadcast).
    broadcast_deliveries_per_node: Vec<u64>,
    groups: Vec<BroadcastResult>,
    step: Option<StepResult>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(runtime) = runtime else {
        eprintln!("cannot start a tokio runtime");
        return std::process::ExitCode::FAILURE;
    };
    let result = match args.command {
        Cmd::Floor { listen, exit_after } => runtime
            .block_on(floor::serve(&listen, exit_after))
            .map_err(|e| e.to_string()),
        Cmd::TwoHop {
            listen,
            upstream,
            connections,
            exit_after,
        } => runtime
            .block_on(hop::serve(&listen, &upstream, connections, exit_after))
            .map_err(|e| e.to_string()),
        Cmd::TwoHopUpstream { listen, exit_after } => runtime
            .block_on(hop::serve_upstream(&listen, exit_after))
            .map_err(|e| e.to_string()),
        Cmd::Run(run) => runtime.block_on(run_all(run)),
        Cmd::Soak(args) => runtime.block_on(run_soak(args)),
        Cmd::StepWorker {
            app,
            first,
            concurrency,
            sources,
        } => runtime.block_on(workers::serve(&app, first, concurrency, sources)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bin_dir(dir: Option<&PathBuf>) -> Result<PathBuf, String> {
    match dir {
        Some(d) => Ok(d.clone()),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .parent()
            .map(PathBuf::from)
            .ok_or_else(|| "no binary directory".to_owned()),
    }
}

async fn run_all(mut args: RunArgs) -> Result<(), String> {
    procs::COUNT_SYSCALLS.store(args.syscalls, std::sync::atomic::Ordering::Relaxed);
    if args.smoke {
        args.clients = args.clients.min(20);
        args.concurrency = args.concurrency.min(8);
        args.seconds = 1;
        args.steps = vec![5, 10];
        args.cluster_steps = vec![5, 10];
        args.http_clients = args.http_clients.min(5);
    }
    if args.no_steps && args.only.is_empty() {
        args.only = vec![
            Scenario::Echo,
            Scenario::HttpEcho,
            Scenario::Broadcast,
            Scenario::Groups,
            Scenario::Churn,
            Scenario::SendToConnection,
            Scenario::SlowConsumer,
            Scenario::Tls,
            Scenario::Rest,
            Scenario::Cluster,
        ];
    }
    client::SOURCES.store(args.sources.max(1), std::sync::atomic::Ordering::Relaxed);
    procs::pin_self(1);
    let dir = bin_dir(args.bin_dir.as_ref())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // The servers' lives: every scenario at the most, or with rounds, each round's runs (its
    // echoes and the broadcast) on each of three servers, each its seconds and a few more to
    // connect and settle.
    let limit = (args.seconds * 20).max((args.seconds + 5) * 15 * 3) * u64::from(args.rounds) + 600;
    if args.two_hop && args.rounds < 2 {
        return Err("--two-hop runs with --rounds (2 or more)".into());
    }
    if args.rounds > 1 {
        let paired_only = !args.only.is_empty()
            && args
                .only
                .iter()
                .all(|s| matches!(s, Scenario::Echo | Scenario::HttpEcho | Scenario::Broadcast));
        if !paired_only {
            return Err(
                "--rounds is for the echoes and the broadcast: add --only echo,http-echo,broadcast"
                    .into(),
            );
        }
        // The servers not being measured hear nothing from their clients during a run, and
        // the relay closes a client it hears nothing from for 30 s.
        if args.seconds > MAX_ROUND_SECONDS {
            return Err(format!(
                "--rounds runs each scenario for at most {MAX_ROUND_SECONDS} s (--seconds)"
            ));
        }
    }

    let waiting = procs::time_wait_sockets();
    if waiting > 10_000 {
        eprintln!(
            "warning: {waiting} sockets in TIME_WAIT (a run's connections, for a minute after \
             it): connects run slower among them; wait for them to clear"
        );
    }
    eprintln!("floor…");
    let server = Proc::start(
        &exe,
        &["floor".into(), "--exit-after".into(), limit.to_string()],
        Some(0),
    )?;
    let http = server
        .output()
        .lines()
        .find_map(|l| l.strip_prefix("floor http on "))
        .map(str::to_owned);
    let floor = Target {
        name: "floor",
        server,
        app: None,
        http,
        others: Vec::new(),
    };
    let mut two_hop_side = None;
    let (floor_side, mut relay, relay_side) = if args.rounds > 1 {
        eprintln!("relay ({})…", args.runtime);
        let relay = start_relay(&dir, &args.runtime, limit, None).await?;
        let (floor_side, relay_side) = if args.two_hop {
            eprintln!("two-hop floor…");
            let (hop, _upstream) = start_two_hop(&exe, limit)?;
            let [floor_side, relay_side, hop_side] =
                run_rounds([&floor, &relay, &hop], &args).await;
            two_hop_side = Some(hop_side);
            (floor_side, relay_side)
        } else {
            let [floor_side, relay_side] = run_rounds([&floor, &relay], &args).await;
            (floor_side, relay_side)
        };
        drop(floor);
        (floor_side, relay, relay_side)
    } else {
        let floor_side = run_side(&floor, &args).await;
        drop(floor);
        eprintln!("relay ({})…", args.runtime);
        let relay = start_relay(&dir, &args.runtime, limit, None).await?;
        let relay_side = run_side(&relay, &args).await;
        (floor_side, relay, relay_side)
    };
    let stalled = relay.server.output().matches("stopped reading").count();
    if stalled > 0 {
        eprintln!("the relay closed {stalled} connection(s) whose peer stopped reading");
    }
    if relay.server.exited() {
        return Err(format!(
            "the relay exited during the run:\n{}",
            relay.server.output()
        ));
    }
    drop(relay.app.take());
    let relay_output = relay.server.output();
    drop(relay);
    let relay_tls = if args.only.is_empty() || args.only.contains(&Scenario::Tls) {
        eprintln!("relay ({}) on TLS…", args.runtime);
        let certs = TlsFiles::make()?;
        let mut tls_relay = start_relay(&dir, &args.runtime, limit, Some(&certs)).await?;
        let side = run_tls_side(&tls_relay, &args).await;
        if tls_relay.server.exited() {
            return Err(format!(
                "the TLS relay exited during the run:\n{}",
                tls_relay.server.output()
            ));
        }
        Some(side)
    } else {
        None
    };
    let cluster = if args.only.is_empty() || args.only.contains(&Scenario::Cluster) {
        eprintln!("three nodes ({}) on Redis behind nginx…", args.runtime);
        let mut c = cluster::start(&dir, &args.runtime, limit, 3).await?;
        let side = run_cluster_side(&c, &args).await;
        // What the nodes warned of (the backplane's connection, slow peers), for the record.
        for node in std::iter::once(&c.target.server).chain(&c.target.others) {
            for line in node
                .output()
                .lines()
                .filter(|l| l.contains("WARN"))
                .take(10)
            {
                eprintln!("  {}: {line}", node.addr);
            }
        }
        if c.target.server.exited() {
            return Err(format!(
                "a node exited during the run:\n{}",
                c.target.server.output()
            ));
        }
        Some(side)
    } else {
        None
    };
    let report = Report {
        date: today(),
        runtime: args.runtime.clone(),
        rounds: args.rounds,
        relay: relay_side,
        floor: floor_side,
        two_hop: two_hop_side,
        relay_tls,
        cluster,
    };
    print_table(&report);
    if let (Some(path), Some(relay), Some(floor)) =
        (&args.chart, &report.relay.step, &report.floor.step)
    {
        std::fs::write(path, chart::step_chart(relay, floor))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if args.smoke {
        let tls = report.relay_tls.as_ref().map_or(Ok(()), smoke_check);
        let tls =
            tls.and(
                report
                    .cluster
                    .as_ref()
                    .map_or(Ok(()), |c| match (&c.connect, &c.broadcast) {
                        (Some(connect), Some(b))
                            if connect.failed_percent == 0.0 && b.deliveries > 0 =>
                        {
                            Ok(())
                        }
                        _ => Err("the cluster scenario connected or delivered nothing".to_owned()),
                    }),
            );
        if let Err(e) = smoke_check(&report.relay)
            .and(smoke_check(&report.floor))
            .and(tls)
        {
            eprintln!("relay output:\n{relay_output}");
            return Err(e);
        }
    }
    Ok(())
}

/// A CA made for the run, and a loopback certificate it issued, in a directory removed when
/// this is dropped.
struct TlsFiles {
    dir: PathBuf,
}

impl TlsFiles {
    fn make() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("loadgen-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let files = Self { dir };
        signalr_relay_tests::TestCa::new()
            .map_err(|e| e.to_string())?
            .write_to(&files.dir)
            .map_err(|e| e.to_string())?;
        let config = signalr_relay_tokio::glue::tls::client_config(Some(&files.path("ca.pem")))?;
        let _ = client::TLS.set(config);
        Ok(files)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the relay (pinned to core 0) and the sample app (core 1), and waits until the app
/// is through to the relay. Both exit by themselves after `limit` seconds. With `tls`, the
/// relay serves TLS, and the app trusts its CA.
async fn start_relay(
    dir: &std::path::Path,
    runtime: &str,
    limit: u64,
    tls: Option<&TlsFiles>,
) -> Result<Target, String> {
    let suffix = if runtime == "smol" { "-smol" } else { "" };
    let limit = limit.to_string();
    let key = scenarios::KEY;
    let mut relay_args: Vec<String> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--access-key".into(),
        key.into(),
        "--log".into(),
        "warn".into(),
        "--exit-after".into(),
        limit.clone(),
    ];
    let mut app_args: Vec<String> = Vec::new();
    if let Some(tls) = tls {
        relay_args.extend([
            "--tls-cert".into(),
            tls.path("cert.pem").display().to_string(),
            "--tls-key".into(),
            tls.path("key.pem").display().to_string(),
        ]);
        app_args.extend(["--ca".into(), tls.path("ca.pem").display().to_string()]);
    }
    let relay = Proc::start(
        &dir.join(format!("signalr-relay{suffix}")),
        &relay_args,
        Some(0),
    )?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let connection_string = format!(
        "Endpoint={scheme}://{};AccessKey={key};Version=1.0;",
        relay.addr
    );
    app_args.extend([
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--connection-string".into(),
        connection_string,
        "--log".into(),
        "warn".into(),
        "--exit-after".into(),
        limit,
    ]);
    let app = Proc::start(&dir.join(format!("sample-app{suffix}")), &app_args, Some(1))?;
    let relay = Target {
        name: "relay",
        server: relay,
        app: Some(app),
        http: None,
        others: Vec::new(),
    };
    wait_for_app(&relay).await?;
    Ok(relay)
}

async fn run_soak(args: SoakArgs) -> Result<(), String> {
    client::SOURCES.store(args.sources.max(1), std::sync::atomic::Ordering::Relaxed);
    procs::pin_self(1);
    let dir = bin_dir(args.bin_dir.as_ref())?;
    let mut relay = start_relay(&dir, &args.runtime, args.seconds + 600, None).await?;
    let plan = soak::SoakPlan {
        clients: args.clients,
        duration: Duration::from_secs(args.seconds),
        churn_percent: args.churn_percent,
        echo_interval: Duration::from_secs(args.echo_interval.max(1)),
        broadcast_rate: args.broadcast_rate,
        sample_every: Duration::from_secs(args.sample_every.max(1)),
        warm_up: Duration::from_secs(args.warm_up),
    };
    eprintln!(
        "soak: {} connections, {} s, {}% churn a second",
        plan.clients, args.seconds, plan.churn_percent
    );
    let result = soak::soak(&relay, &plan).await;
    soak::print(&result, &relay.server);
    if relay.server.exited() {
        return Err(format!(
            "the relay exited during the soak:\n{}",
            relay.server.output()
        ));
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// What a smoke run must show: every scenario did something, and nothing failed.
fn smoke_check(side: &Side) -> Result<(), String> {
    let mut problems = Vec::new();
    if side.connect.as_ref().is_none_or(|c| c.failed_percent > 0.0) {
        problems.push("connections failed");
    }
    if side
        .echo
        .iter()
        .chain(side.http_echo.iter().map(|h| &h.echo))
        .any(|e| e.latency.count == 0)
        || side.http_echo.iter().any(|h| h.failed_connections > 0)
    {
        problems.push("an echo scenario echoed nothing");
    }
    if side
        .rest_sends
        .as_ref()
        .is_some_and(|r| r.requests == 0 || r.failed > 0)
    {
        problems.push("REST sends failed");
    }
    let fan_out = side
        .broadcast
        .iter()
        .chain(&side.rest_broadcast)
        .chain(&side.groups)
        .chain(&side.churn)
        .chain(&side.send_to_connection);
    if fan_out.clone().any(|b| b.deliveries == 0) {
        problems.push("a fan-out scenario delivered nothing");
    }
    if side
        .churn
        .as_ref()
        .is_some_and(|c| c.membership_changes_per_sec == 0.0)
    {
        problems.push("nobody left or joined a group");
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the smoke run had failures: {}",
            problems.join(", ")
        ))
    }
}

/// The app server's server connections take a moment: wait until a client gets through.
async fn wait_for_app(relay: &Target) -> Result<(), String> {
    let Some(app) = &relay.app else {
        return Ok(());
    };
    for _ in 0..100 {
        if client::connect_relay(&app.addr, "bench", "probe")
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "the sample app never got through to the relay:\n{}\n{}",
        app.output(),
        relay.server.output()
    ))
}

/// The relay on TLS: the connect storm (connections over https and wss) and the WebSocket
/// echoes, as [`run_side`] runs them.
async fn run_tls_side(target: &Target, args: &RunArgs) -> Side {
    let secs = Duration::from_secs(args.seconds);
    let clients = args.clients.min(100);
    eprintln!(
        "  {} on TLS: connect storm and idle, {clients} connections",
        target.name
    );
    let (connect, mut conns) =
        scenarios::connect_storm(target, clients, args.concurrency, secs).await;
    let mut side = Side {
        connect: Some(connect),
        ..Side::default()
    };
    scenarios::keep_alive(target, &mut conns).await;
    for (n, in_flight) in [(1, 1), (100, 1), (100, 8)] {
        let n = n.min(conns.len());
        eprintln!(
            "  {} on TLS: echo, {n} connections × {in_flight} in flight",
            target.name
        );
        side.echo
            .push(scenarios::echo(target, &mut conns[..n], in_flight, 64, secs).await);
    }
    side
}

/// The connect storm against `target`, its result in `side`: the connections it opened.
async fn connect_storm(target: &Target, side: &mut Side, args: &RunArgs) -> Vec<Ws> {
    eprintln!(
        "  {}: connect storm and idle, {} connections",
        target.name, args.clients
    );
    let secs = Duration::from_secs(args.seconds);
    let (connect, conns) =
        scenarios::connect_storm(target, args.clients, args.concurrency, secs).await;
    side.connect = Some(connect);
    conns
}

async fn run_side(target: &Target, args: &RunArgs) -> Side {
    let secs = Duration::from_secs(args.seconds);
    let wanted = |s: Scenario| args.only.is_empty() || args.only.contains(&s);
    let mut side = Side::default();
    let mut conns = connect_storm(target, &mut side, args).await;
    for echo in echoes(args) {
        scenarios::keep_alive(target, &mut conns).await;
        run_echo(target, &mut conns, echo, &mut side, args).await;
    }
    let rate = args.broadcast_rate;
    if wanted(Scenario::Broadcast) {
        scenarios::keep_alive(target, &mut conns).await;
        side.broadcast = Some(run_broadcast(target, &mut conns, args).await);
    }
    // Group sends: small groups of 10, and big groups of a tenth of the connections, each
    // group's sender at `rate` a second.
    if wanted(Scenario::Groups) {
        scenarios::keep_alive(target, &mut conns).await;
        for size in [10, (conns.len() / 10).max(2)] {
            eprintln!("  {}: group sends, groups of {size}, 2 KB", target.name);
            let result =
                scenarios::group_send(target, &mut conns, "s", size, rate, 2048, secs, None).await;
            side.groups.push(result);
        }
    }
    if wanted(Scenario::Churn) {
        scenarios::keep_alive(target, &mut conns).await;
        eprintln!(
            "  {}: group sends, groups of 10, half the members leaving and joining",
            target.name
        );
        let churn = Some(Duration::from_secs(1));
        side.churn =
            Some(scenarios::group_send(target, &mut conns, "c", 10, rate, 2048, secs, churn).await);
    }
    if wanted(Scenario::SendToConnection) {
        scenarios::keep_alive(target, &mut conns).await;
        eprintln!(
            "  {}: send to connection, {} connections × 10 a second × 2 KB",
            target.name,
            conns.len()
        );
        side.send_to_connection =
            Some(scenarios::send_to_connection(target, &mut conns, 10, 2048, secs).await);
    }
    if wanted(Scenario::Rest) && target.is_relay() {
        scenarios::keep_alive(target, &mut conns).await;
        eprintln!(
            "  {}: REST broadcast to {}, 2 KB",
            target.name,
            conns.len().saturating_sub(1)
        );
        side.rest_broadcast = scenarios::rest_broadcast(target, &mut conns, rate, 2048, secs).await;
        eprintln!("  {}: REST sends to single users, 8 at a time", target.name);
        side.rest_sends = scenarios::rest_sends(target, &mut conns, 8, secs).await;
    }
    if wanted(Scenario::SlowConsumer) {
        scenarios::keep_alive(target, &mut conns).await;
        // Faster, to fewer: enough data to fill a non-reading client's socket buffers.
        let slow_receivers = conns.len().min(20);
        // Only these stay connected: a broadcast reaches every connection, read or not.
        conns.truncate(slow_receivers);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let slow_rate = args.slow_consumer_rate;
        eprintln!(
            "  {}: broadcast at {slow_rate}/s to {} with and without a slow consumer",
            target.name, slow_receivers
        );
        side.slow_consumer = scenarios::slow_consumer(
            target,
            &mut conns[..slow_receivers],
            slow_rate,
            2048,
            secs * 4,
        )
        .await;
    }
    drop(conns);
    if wanted(Scenario::Step) && !args.no_steps {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let hold = secs.max(Duration::from_secs(if args.smoke { 1 } else { 5 }));
        side.step =
            Some(scenarios::step_test(target, &args.steps, args.concurrency, 2048, hold).await);
    }
    side
}

/// The broadcast scenario: 2 KB to every one of `conns`, `--broadcast-rate` a second.
async fn run_broadcast(target: &Target, conns: &mut [Ws], args: &RunArgs) -> BroadcastResult {
    eprintln!("  {}: broadcast to {}, 2 KB", target.name, conns.len());
    let secs = Duration::from_secs(args.seconds);
    scenarios::broadcast(target, conns, args.broadcast_rate, 2048, secs).await
}

/// The longest run with `--rounds`: with the time to open an HTTP echo's clients, under the
/// 30 s after which the relay closes a silent client of another server's turn.
const MAX_ROUND_SECONDS: u64 = 20;

/// One echo scenario: WebSocket echoes on this many connections with this many in flight
/// each, or echoes over an HTTP transport.
#[derive(Clone, Copy)]
enum Echo {
    WebSocket(usize, usize),
    Http(HttpTransport),
}

/// The echo scenarios that `args` asks for, in the order they run.
fn echoes(args: &RunArgs) -> Vec<Echo> {
    let wanted = |s: Scenario| args.only.is_empty() || args.only.contains(&s);
    let mut echoes = Vec::new();
    if wanted(Scenario::Echo) {
        echoes.extend([(1, 1), (100, 1), (100, 8)].map(|(n, f)| Echo::WebSocket(n, f)));
    }
    if wanted(Scenario::HttpEcho) {
        echoes.extend(args.http_transports.iter().map(|&t| Echo::Http(t)));
    }
    echoes
}

/// Runs `echo` against `target` (on the first of `conns` for a WebSocket echo), and adds its
/// result to `side`.
async fn run_echo(target: &Target, conns: &mut [Ws], echo: Echo, side: &mut Side, args: &RunArgs) {
    let secs = Duration::from_secs(args.seconds);
    match echo {
        Echo::WebSocket(n, in_flight) => {
            let n = n.min(conns.len());
            eprintln!(
                "  {}: echo, {n} connections × {in_flight} in flight",
                target.name
            );
            side.echo
                .push(scenarios::echo(target, &mut conns[..n], in_flight, 64, secs).await);
        }
        Echo::Http(transport) => {
            let n = args.http_clients;
            eprintln!(
                "  {}: echo over {transport:?}, {n} connections",
                target.name
            );
            side.http_echo
                .push(scenarios::http_echo(target, transport, n, 64, secs).await);
        }
    }
}

/// What `--rounds` runs on each server in turn: an echo scenario, or the broadcast.
#[derive(Clone, Copy)]
enum Turn {
    Echo(Echo),
    Broadcast,
}

/// The turns of a round that `args` asks for, in the order they run: the echoes, then the
/// broadcast.
fn turns(args: &RunArgs) -> Vec<Turn> {
    let broadcast = args.only.contains(&Scenario::Broadcast);
    let echoes = echoes(args).into_iter().map(Turn::Echo);
    echoes.chain(broadcast.then_some(Turn::Broadcast)).collect()
}

/// `--rounds`: the connect storm on each of `targets` (the floor, the relay and perhaps the
/// two-hop floor, all up), then each echo scenario and the broadcast on each in turn, round
/// after round, the first of each turn moving by one each round. Their sides, in the order of
/// `targets`. The two-hop floor runs only the WebSocket echoes.
async fn run_rounds<const N: usize>(targets: [&Target; N], args: &RunArgs) -> [Side; N] {
    let mut sides = std::array::from_fn(|_| Side::default());
    let mut conns: [Vec<Ws>; N] = std::array::from_fn(|_| Vec::new());
    for ((target, side), conns) in targets.iter().zip(&mut sides).zip(&mut conns) {
        *conns = connect_storm(target, side, args).await;
    }
    for round in 0..args.rounds {
        eprintln!("  round {} of {}", round + 1, args.rounds);
        let order = (0..N).map(|i| (i + round as usize) % N);
        for turn in turns(args) {
            for i in order.clone() {
                if !matches!(turn, Turn::Echo(Echo::WebSocket(..))) && targets[i].echoes_only() {
                    continue;
                }
                // Every server's connections, each time: those not measured wait a whole
                // scenario, and the relay closes a client it hears nothing from for 30 s.
                for (target, conns) in targets.iter().zip(&mut conns) {
                    scenarios::keep_alive(target, conns).await;
                }
                let (target, conns, side) = (targets[i], &mut conns[i], &mut sides[i]);
                match turn {
                    Turn::Echo(echo) => run_echo(target, conns, echo, side, args).await,
                    Turn::Broadcast => side
                        .broadcasts
                        .push(run_broadcast(target, conns, args).await),
                }
            }
        }
    }
    sides
}

/// Starts the two-hop floor's upstream (on core 1, as the relay's app server) and the
/// two-hop floor (on core 0): the floor as a target, and the upstream to hold while it runs.
fn start_two_hop(exe: &std::path::Path, limit: u64) -> Result<(Target, Proc), String> {
    let limit = limit.to_string();
    let upstream = Proc::start(
        exe,
        &[
            "two-hop-upstream".into(),
            "--exit-after".into(),
            limit.clone(),
        ],
        Some(1),
    )?;
    let server = Proc::start(
        exe,
        &[
            "two-hop".into(),
            "--upstream".into(),
            upstream.addr.clone(),
            "--exit-after".into(),
            limit,
        ],
        Some(0),
    )?;
    let target = Target {
        name: "two-hop floor",
        server,
        app: None,
        http: None,
        others: Vec::new(),
    };
    Ok((target, upstream))
}

/// The cluster scenario: the connect storm through nginx, the broadcast (with each node's
/// part), group sends, and the step test, as [`run_side`] runs them.
async fn run_cluster_side(c: &cluster::Cluster, args: &RunArgs) -> ClusterSide {
    let target = &c.target;
    let secs = Duration::from_secs(args.seconds);
    let mut side = ClusterSide {
        nodes: c.nodes.len(),
        ..ClusterSide::default()
    };
    eprintln!(
        "  cluster: connect storm through nginx, {} connections",
        args.clients
    );
    let (connect, mut conns) =
        scenarios::connect_storm(target, args.clients, args.concurrency, secs).await;
    side.connect = Some(connect);
    scenarios::keep_alive(target, &mut conns).await;
    eprintln!("  cluster: broadcast to {}, 2 KB", conns.len());
    let procs: Vec<&Proc> = std::iter::once(&target.server)
        .chain(&target.others)
        .collect();
    let cpu0: Vec<f64> = procs.iter().map(|p| p.cpu_secs()).collect();
    let delivered0 = cluster::delivered(&c.nodes).await;
    let broadcast = scenarios::broadcast(target, &mut conns, args.broadcast_rate, 2048, secs).await;
    let cpu: Vec<f64> = procs
        .iter()
        .zip(&cpu0)
        .map(|(p, c0)| p.cpu_secs() - c0)
        .collect();
    let delivered: Vec<u64> = cluster::delivered(&c.nodes)
        .await
        .iter()
        .zip(&delivered0)
        .map(|(a, b)| a - b)
        .collect();
    for (i, n) in delivered.iter().enumerate() {
        side.broadcast_per_process
            .push((format!("n{}", i + 1), cpu[i] * 1e6 / (*n).max(1) as f64));
    }
    if let Some(redis) = cpu.get(c.nodes.len()) {
        let all: u64 = delivered.iter().sum();
        side.broadcast_per_process
            .push(("redis".to_owned(), redis * 1e6 / all.max(1) as f64));
    }
    side.broadcast_deliveries_per_node = delivered;
    side.broadcast = Some(broadcast);
    scenarios::keep_alive(target, &mut conns).await;
    for size in [10, (conns.len() / 10).max(2)] {
        eprintln!("  cluster: group sends, groups of {size}, 2 KB");
        let result = scenarios::group_send(
            target,
            &mut conns,
            "s",
            size,
            args.broadcast_rate,
            2048,
            secs,
            None,
        )
        .await;
        side.groups.push(result);
    }
    drop(conns);
    if !args.no_steps {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let hold = secs.max(Duration::from_secs(if args.smoke { 1 } else { 5 }));
        // Past one process's descriptors: the connections are held by worker processes.
        let step = match std::env::current_exe() {
            Ok(exe) => workers::step_test(
                target,
                &exe,
                &args.cluster_steps,
                args.concurrency,
                2048,
                hold,
                STEP_WORKER_CONNECTIONS,
            )
            .await
            .map_err(|e| eprintln!("  cluster: the step test failed: {e}"))
            .ok(),
            Err(_) => None,
        };
        side.step = step;
    }
    side
}

/// Connections one step-test worker process holds, at most (under this machine's 20,000
/// descriptors per process).
const STEP_WORKER_CONNECTIONS: usize = 15_000;

fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn ratio(relay: f64, floor: f64) -> String {
    if floor > 0.0 {
        format!("{:.2}×", relay / floor)
    } else {
        "–".into()
    }
}

/// One echo scenario's results in one round: the relay's, the floor's and, where it ran, the
/// two-hop floor's.
struct EchoPair<'a> {
    /// The round (from 0), and the scenario's name.
    round: usize,
    name: String,
    relay: &'a EchoResult,
    floor: &'a EchoResult,
    two_hop: Option<&'a EchoResult>,
}

/// Every echo's results, round after round: WebSocket echoes first, then HTTP echoes.
fn echo_pairs(r: &Report) -> Vec<EchoPair<'_>> {
    let rounds = r.rounds.max(1) as usize;
    let per_round = |len: usize| (len / rounds).max(1);
    let (ws, http) = (
        per_round(r.relay.echo.len()),
        per_round(r.relay.http_echo.len()),
    );
    let ws = r
        .relay
        .echo
        .iter()
        .zip(&r.floor.echo)
        .enumerate()
        .map(|(i, (a, b))| EchoPair {
            round: i / ws,
            name: format!("echo {}×{}", a.connections, a.in_flight),
            relay: a,
            floor: b,
            two_hop: r.two_hop.as_ref().and_then(|h| h.echo.get(i)),
        });
    let http = r
        .relay
        .http_echo
        .iter()
        .zip(&r.floor.http_echo)
        .enumerate()
        .map(|(i, (a, b))| EchoPair {
            round: i / http,
            name: format!("{:?} echo {}×1", a.transport, a.echo.connections),
            relay: &a.echo,
            floor: &b.echo,
            two_hop: None,
        });
    ws.chain(http).collect()
}

/// One scenario's CPU in one round, per echo or per delivery: the relay's, the floor's and,
/// where it ran, the two-hop floor's.
struct RoundCpu {
    name: String,
    relay: f64,
    floor: f64,
    two_hop: Option<f64>,
}

/// Every round's CPU figures: each echo's, then the broadcast's.
fn round_cpu(r: &Report, echoes: &[EchoPair<'_>]) -> Vec<RoundCpu> {
    let cpu = |e: &EchoResult| e.server_cpu_us_per_echo;
    let echoes = echoes.iter().map(|p| RoundCpu {
        name: p.name.clone(),
        relay: cpu(p.relay),
        floor: cpu(p.floor),
        two_hop: p.two_hop.map(cpu),
    });
    let broadcasts = r
        .relay
        .broadcasts
        .iter()
        .zip(&r.floor.broadcasts)
        .map(|(a, b)| RoundCpu {
            name: format!("broadcast ({} receivers) × 2 KB, per delivery", a.receivers),
            relay: a.server_cpu_us_per_delivery,
            floor: b.server_cpu_us_per_delivery,
            two_hop: None,
        });
    echoes.chain(broadcasts).collect()
}

/// With rounds: per scenario, the median over the rounds of the relay's and the floor's CPU
/// per echo (per delivery for the broadcast), and of their ratio, with the ratio's range; and
/// the same against the two-hop floor, where it ran.
fn print_medians(r: &Report, rounds: &[RoundCpu]) {
    let mut names: Vec<&str> = Vec::new();
    for round in rounds {
        if !names.contains(&round.name.as_str()) {
            names.push(&round.name);
        }
    }
    println!(
        "\nCPU per echo or delivery, the median of {} rounds; relay/floor: the median of the rounds' ratios, and their range",
        r.rounds
    );
    println!("| scenario | relay | floor | relay/floor | range | two-hop floor | relay/two-hop | range |");
    println!("|---|---|---|---|---|---|---|---|");
    // The median and range of the ratios of the rounds where both figures are known.
    let ratios = |pairs: Vec<(f64, f64)>| {
        let ratios: Vec<f64> = pairs
            .iter()
            .filter(|(_, d)| *d > 0.0)
            .map(|(n, d)| n / d)
            .collect();
        if ratios.is_empty() {
            return ("–".to_owned(), "–".to_owned());
        }
        let (low, high) = ratios
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(l, h), &x| (l.min(x), h.max(x)));
        (
            format!("{:.2}×", median(ratios.iter().copied())),
            format!("{low:.2}–{high:.2}×"),
        )
    };
    for name in names {
        let same: Vec<&RoundCpu> = rounds.iter().filter(|c| c.name == name).collect();
        let relay = median(same.iter().map(|c| c.relay));
        let floor = median(same.iter().map(|c| c.floor));
        let (ratio, range) = ratios(same.iter().map(|c| (c.relay, c.floor)).collect());
        let hops: Vec<(f64, f64)> = same
            .iter()
            .filter_map(|c| c.two_hop.map(|hop| (c.relay, hop)))
            .collect();
        let hop = match hops.is_empty() {
            true => "–".to_owned(),
            false => format!("{:.1} µs", median(hops.iter().map(|h| h.1))),
        };
        let (hop_ratio, hop_range) = ratios(hops);
        println!(
            "| {name} | {relay:.1} µs | {floor:.1} µs | {ratio} | {range} | {hop} | {hop_ratio} | {hop_range} |"
        );
    }
}

/// The median of `values` (the mean of the middle two of an even count; 0 if none).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn print_table(r: &Report) {
    println!(
        "\nSignalR Relay ({}) against the floor, {}",
        r.runtime, r.date
    );
    println!("| scenario | measure | relay | floor | relay/floor |");
    println!("|---|---|---|---|---|");
    // A count that may be unknown (`–`).
    let count = |n: Option<u64>| n.map_or_else(|| "–".to_owned(), |n| n.to_string());
    let row = |s: &str, m: &str, a: f64, b: f64, unit: &str| {
        println!(
            "| {s} | {m} | {a:.1} {unit} | {b:.1} {unit} | {} |",
            ratio(a, b)
        );
    };
    if let (Some(rc), Some(fc)) = (&r.relay.connect, &r.floor.connect) {
        let c = format!("connect {} (×{})", rc.connections, rc.concurrency);
        row(
            &c,
            "connects/s",
            rc.connects_per_sec,
            fc.connects_per_sec,
            "",
        );
        row(
            &c,
            "p99 connect",
            rc.latency.p99_ms,
            fc.latency.p99_ms,
            "ms",
        );
        row(&c, "failed", rc.failed_percent, fc.failed_percent, "%");
        println!(
            "| {c} | handshakes dropped (listen queue full) | {} | {} | – |",
            count(rc.listen_overflows),
            count(fc.listen_overflows)
        );
        row(
            &c,
            "CPU per connect",
            rc.server_cpu_us_per_connect,
            fc.server_cpu_us_per_connect,
            "µs",
        );
        row(
            &c,
            "of it in the kernel",
            rc.server_system_cpu_us_per_connect,
            fc.server_system_cpu_us_per_connect,
            "µs",
        );
        row(
            "idle",
            "RSS per connection",
            rc.server_rss_per_connection_bytes / 1024.0,
            fc.server_rss_per_connection_bytes / 1024.0,
            "KiB",
        );
        row(
            "idle",
            "CPU",
            rc.idle_server_cpu_percent,
            fc.idle_server_cpu_percent,
            "%",
        );
    }
    let echoes = echo_pairs(r);
    // With rounds, an HTTP transport's idle memory is the first round's: the later ones
    // reuse what it freed.
    let first_round = r.relay.http_echo.len() / r.rounds.max(1) as usize;
    for (a, b) in r
        .relay
        .http_echo
        .iter()
        .zip(&r.floor.http_echo)
        .take(first_round)
    {
        row(
            &format!("{:?} idle", a.transport),
            "RSS per connection",
            a.server_rss_per_connection_bytes / 1024.0,
            b.server_rss_per_connection_bytes / 1024.0,
            "KiB",
        );
        println!(
            "| {:?} opened at once | handshakes dropped (listen queue full) | {} | {} | – |",
            a.transport,
            count(a.listen_overflows),
            count(b.listen_overflows)
        );
    }
    for pair in &echoes {
        let s = match r.rounds {
            0 | 1 => pair.name.clone(),
            _ => format!("round {}: {}", pair.round + 1, pair.name),
        };
        let (s, a, b) = (s.as_str(), pair.relay, pair.floor);
        row(
            s,
            "CPU per echo",
            a.server_cpu_us_per_echo,
            b.server_cpu_us_per_echo,
            "µs",
        );
        row(
            s,
            "of it in the kernel",
            a.server_system_cpu_us_per_echo,
            b.server_system_cpu_us_per_echo,
            "µs",
        );
        if let (Some(x), Some(y)) = (a.server_syscalls_per_echo, b.server_syscalls_per_echo) {
            row(s, "system calls per echo", x.0, y.0, "");
            row(s, "context switches per echo", x.1, y.1, "");
        }
        row(s, "echoes/s", a.echoes_per_sec, b.echoes_per_sec, "");
        row(s, "p50", a.latency.p50_ms, b.latency.p50_ms, "ms");
        row(s, "p99", a.latency.p99_ms, b.latency.p99_ms, "ms");
        row(s, "p99.9", a.latency.p999_ms, b.latency.p999_ms, "ms");
    }
    let named = |name: &str, x: &Option<BroadcastResult>, y: &Option<BroadcastResult>| {
        x.clone()
            .zip(y.clone())
            .map(|(a, b)| (name.to_owned(), a, b))
    };
    let rounds = r
        .relay
        .broadcasts
        .iter()
        .zip(&r.floor.broadcasts)
        .enumerate()
        .map(|(i, (a, b))| (format!("round {}: broadcast", i + 1), a.clone(), b.clone()));
    let fan_out = named("broadcast", &r.relay.broadcast, &r.floor.broadcast)
        .into_iter()
        .chain(rounds)
        .chain(
            r.relay
                .groups
                .iter()
                .zip(&r.floor.groups)
                .map(|(a, b)| (format!("groups of {}", a.group_size), a.clone(), b.clone())),
        )
        .chain(named(
            "groups of 10, churning",
            &r.relay.churn,
            &r.floor.churn,
        ))
        .chain(named(
            "send to connection",
            &r.relay.send_to_connection,
            &r.floor.send_to_connection,
        ));
    for (name, a, b) in fan_out {
        let s = format!("{name} ({} receivers) × 2 KB", a.receivers);
        row(
            &s,
            "CPU per delivery",
            a.server_cpu_us_per_delivery,
            b.server_cpu_us_per_delivery,
            "µs",
        );
        row(
            &s,
            "of it in the kernel",
            a.server_system_cpu_us_per_delivery,
            b.server_system_cpu_us_per_delivery,
            "µs",
        );
        row(
            &s,
            "deliveries/s",
            a.deliveries_per_sec,
            b.deliveries_per_sec,
            "",
        );
        if a.membership_changes_per_sec > 0.0 {
            row(
                &s,
                "leaves and joins/s",
                a.membership_changes_per_sec,
                b.membership_changes_per_sec,
                "",
            );
        }
        row(&s, "p99", a.latency.p99_ms, b.latency.p99_ms, "ms");
    }
    if let (Some(a), Some(b)) = (&r.relay.slow_consumer, &r.floor.slow_consumer) {
        let s = format!(
            "broadcast {}/s to {}, then + 1 not reading",
            a.with_slow.rate_per_sec, a.with_slow.receivers
        );
        row(
            &s,
            "p99, all reading",
            a.without_slow.latency.p99_ms,
            b.without_slow.latency.p99_ms,
            "ms",
        );
        row(
            &s,
            "p99, one not reading",
            a.with_slow.latency.p99_ms,
            b.with_slow.latency.p99_ms,
            "ms",
        );
        let p99_change = |x: &SlowConsumerResult| {
            (x.with_slow.latency.p99_ms / x.without_slow.latency.p99_ms.max(0.001) - 1.0) * 100.0
        };
        row(&s, "p99 change", p99_change(a), p99_change(b), "%");
        let growth = |x: &SlowConsumerResult| {
            x.server_rss_after_bytes
                .saturating_sub(x.server_rss_before_bytes) as f64
                / 1024.0
        };
        row(&s, "server RSS growth", growth(a), growth(b), "KiB");
        println!(
            "| {s} | slow consumer dropped | {} | {} | |",
            a.slow_dropped, b.slow_dropped
        );
    }
    if let (Some(a), Some(b)) = (&r.relay.step, &r.floor.step) {
        for (x, y) in a.steps.iter().zip(&b.steps) {
            let s = format!("step {} × 2 KB/s", x.connections);
            row(&s, "p99", x.latency.p99_ms, y.latency.p99_ms, "ms");
            row(&s, "failed", x.failed_percent, y.failed_percent, "%");
            row(
                &s,
                "server CPU",
                x.server_cpu_percent,
                y.server_cpu_percent,
                "%",
            );
        }
        println!(
            "| step test | verdict (p99 < 1 s, < 1% failed) | {} | {} | |",
            a.verdict_connections, b.verdict_connections
        );
    }
    if r.rounds > 1 {
        print_medians(r, &round_cpu(r, &echoes));
    }
    if let Some(tls) = &r.relay_tls {
        print_tls_table(tls, &r.relay);
    }
    print_rest_table(&r.relay);
    if let Some(c) = &r.cluster {
        print_cluster_table(c, &r.relay);
    }
}

/// Several nodes against the single relay of the same run.
fn print_cluster_table(c: &ClusterSide, single: &Side) {
    println!(
        "\n{} nodes on Redis behind nginx, against the single relay of the same run (CPU summed over the nodes and Redis)",
        c.nodes
    );
    println!(
        "| scenario | measure | {} nodes | one relay | nodes/one |",
        c.nodes
    );
    println!("|---|---|---|---|---|");
    if let (Some(b), Some(one)) = (&c.broadcast, &single.broadcast) {
        let s = format!("broadcast ({} receivers) × 2 KB", b.receivers);
        println!(
            "| {s} | CPU per delivery | {:.1} µs | {:.1} µs | {} |",
            b.server_cpu_us_per_delivery,
            one.server_cpu_us_per_delivery,
            ratio(b.server_cpu_us_per_delivery, one.server_cpu_us_per_delivery)
        );
        println!(
            "| {s} | p99 | {:.1} ms | {:.1} ms | {} |",
            b.latency.p99_ms,
            one.latency.p99_ms,
            ratio(b.latency.p99_ms, one.latency.p99_ms)
        );
        for (name, us) in &c.broadcast_per_process {
            println!(
                "| {s} | {name}'s CPU per delivery{} | {us:.1} µs | {:.1} µs | {} |",
                if name == "redis" {
                    " (all)"
                } else {
                    " (its own)"
                },
                one.server_cpu_us_per_delivery,
                ratio(*us, one.server_cpu_us_per_delivery)
            );
        }
        println!(
            "| {s} | deliveries per node | {:?} | | |",
            c.broadcast_deliveries_per_node
        );
    }
    for (g, one) in c.groups.iter().zip(&single.groups) {
        let s = format!("groups of {} × 2 KB", g.group_size);
        println!(
            "| {s} | CPU per delivery | {:.1} µs | {:.1} µs | {} |",
            g.server_cpu_us_per_delivery,
            one.server_cpu_us_per_delivery,
            ratio(g.server_cpu_us_per_delivery, one.server_cpu_us_per_delivery)
        );
        println!(
            "| {s} | p99 | {:.1} ms | {:.1} ms | {} |",
            g.latency.p99_ms,
            one.latency.p99_ms,
            ratio(g.latency.p99_ms, one.latency.p99_ms)
        );
    }
    if let Some(step) = &c.step {
        for s in &step.steps {
            println!(
                "| step test {} connections | p99, failed, CPU (all nodes) | {:.0} ms, {:.2}%, {:.0}% | | |",
                s.connections, s.latency.p99_ms, s.failed_percent, s.server_cpu_percent
            );
        }
        let one = single.step.as_ref().map_or(0, |s| s.verdict_connections);
        println!(
            "| step test | largest step with p99 < 1 s and < 1% failed | {} | {} | |",
            step.verdict_connections, one
        );
    }
}

/// The REST API's figures, against the WebSocket broadcast of the same run.
fn print_rest_table(relay: &Side) {
    let (Some(rest), Some(ws)) = (&relay.rest_broadcast, &relay.broadcast) else {
        return;
    };
    println!("\nThe REST API (relay only), against the WebSocket broadcast of the same run");
    println!("| scenario | measure | REST | WebSocket | REST/WebSocket |");
    println!("|---|---|---|---|---|");
    let s = format!("broadcast ({} receivers) × 2 KB", rest.receivers);
    println!(
        "| {s} | CPU per delivery | {:.1} µs | {:.1} µs | {} |",
        rest.server_cpu_us_per_delivery,
        ws.server_cpu_us_per_delivery,
        ratio(
            rest.server_cpu_us_per_delivery,
            ws.server_cpu_us_per_delivery
        )
    );
    println!(
        "| {s} | p99 | {:.1} ms | {:.1} ms | {} |",
        rest.latency.p99_ms,
        ws.latency.p99_ms,
        ratio(rest.latency.p99_ms, ws.latency.p99_ms)
    );
    if let Some(sends) = &relay.rest_sends {
        println!(
            "| sends to one user, {} at a time | requests/s | {:.0} | | |",
            sends.concurrency, sends.requests_per_sec
        );
        println!(
            "| sends to one user, {} at a time | relay CPU per request | {:.1} µs | | |",
            sends.concurrency, sends.server_cpu_us_per_request
        );
    }
}

/// The relay on TLS against the relay on plain sockets, in the same run.
fn print_tls_table(tls: &Side, plain: &Side) {
    println!("\nThe relay on TLS (wss) against the relay on plain ws, same run");
    println!("| scenario | measure | wss | ws | wss/ws |");
    println!("|---|---|---|---|---|");
    let row = |s: &str, m: &str, a: f64, b: f64, unit: &str| {
        println!(
            "| {s} | {m} | {a:.1} {unit} | {b:.1} {unit} | {} |",
            ratio(a, b)
        );
    };
    if let (Some(t), Some(p)) = (&tls.connect, &plain.connect) {
        row(
            "idle",
            "RSS per connection",
            t.server_rss_per_connection_bytes / 1024.0,
            p.server_rss_per_connection_bytes / 1024.0,
            "KiB",
        );
        row(
            "connect",
            "connects/s",
            t.connects_per_sec,
            p.connects_per_sec,
            "",
        );
    }
    for (t, p) in tls.echo.iter().zip(&plain.echo) {
        let s = format!("echo {}×{}", t.connections, t.in_flight);
        row(
            &s,
            "CPU per echo",
            t.server_cpu_us_per_echo,
            p.server_cpu_us_per_echo,
            "µs",
        );
        row(&s, "p99", t.latency.p99_ms, p.latency.p99_ms, "ms");
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_is_the_middle_value_or_the_mean_of_the_middle_two() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 2.5);
        assert_eq!(median([1.5].into_iter()), 1.5);
        assert_eq!(median(std::iter::empty()), 0.0);
    }
}
