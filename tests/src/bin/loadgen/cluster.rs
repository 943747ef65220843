//! Several relay nodes as one service, for the cluster scenario: Debian's redis-server as the
//! backplane, the nodes, the repository's nginx configuration (`deploy/nginx`) in front, and
//! the sample app through it. The nodes and Redis run on core 0, as the single relay does;
//! nginx and the sample app on core 1, with the load generator.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client;
use crate::procs::Proc;
use crate::scenarios::{Target, KEY};

/// A cluster under measurement: `target` counts the CPU of every node and of Redis.
pub(crate) struct Cluster {
    pub(crate) target: Target,
    /// Each node's address, in order (node `n1` first).
    pub(crate) nodes: Vec<String>,
    _nginx: Proc,
    dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port(host: &str) -> Result<u16, String> {
    std::net::TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// Starts Redis, `count` nodes, nginx and the sample app, and waits until every node has the
/// app server's connections for the bench hub. Every process exits by itself after `limit`
/// seconds.
pub(crate) async fn start(
    bin: &Path,
    runtime: &str,
    limit: u64,
    count: usize,
) -> Result<Cluster, String> {
    let suffix = if runtime == "smol" { "-smol" } else { "" };
    let limit_s = limit.to_string();
    let dir = std::env::temp_dir().join(format!("loadgen-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;

    let redis_port = free_port("127.0.0.1")?.to_string();
    let redis_bin =
        std::env::var("REDIS_SERVER").unwrap_or_else(|_| "/usr/bin/redis-server".into());
    let redis = Proc::start_until(
        Path::new("timeout"),
        &[
            "-s".into(),
            "KILL".into(),
            limit_s.clone(),
            redis_bin,
            "--port".into(),
            redis_port.clone(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
        ],
        Some(0),
        Some(|line| {
            line.contains("Ready to accept connections")
                .then(String::new)
        }),
    )?;
    let redis_url = format!("redis://127.0.0.1:{redis_port}");

    let mut procs = Vec::new();
    for i in 1..=count {
        let args: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--access-key",
            KEY,
            "--log",
            "warn",
            "--exit-after",
            &limit_s,
            "--redis",
            &redis_url,
            "--node-id",
            &format!("n{i}"),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        procs.push(Proc::start(
            &bin.join(format!("signalr-relay{suffix}")),
            &args,
            Some(0),
        )?);
    }
    let nodes: Vec<String> = procs.iter().map(|p| p.addr.clone()).collect();

    // nginx, with the shipped routing and a nodes.conf for these nodes.
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/signalr-relay.conf"),
    )
    .map_err(|e| format!("deploy/nginx/signalr-relay.conf: {e}"))?;
    let lb_port = free_port("127.0.0.1")?;
    // Each worker its own listening socket (the kernel spreads connections over them).
    let listen = format!("listen 127.0.0.1:{lb_port} backlog=4096 reuseport;");
    let shipped_listen = "listen 80 backlog=4096;";
    if !shipped.contains(shipped_listen) {
        return Err(format!(
            "deploy/nginx/signalr-relay.conf: no `{shipped_listen}` to move"
        ));
    }
    std::fs::write(
        dir.join("signalr-relay.conf"),
        shipped.replace(shipped_listen, &listen),
    )
    .map_err(|e| e.to_string())?;
    let mut upstreams = String::from("upstream relay_any {\n");
    for addr in &nodes {
        upstreams.push_str(&format!("    server {addr} max_fails=1 fail_timeout=5s;\n"));
    }
    upstreams.push_str("}\n");
    for (i, addr) in nodes.iter().enumerate() {
        upstreams.push_str(&format!(
            "upstream relay_node_n{} {{ server {addr}; }}\n",
            i + 1
        ));
    }
    std::fs::write(dir.join("nodes.conf"), upstreams).map_err(|e| e.to_string())?;
    let d = dir.display();
    // Four workers: each is a process of its own, with its own descriptors (a proxied
    // connection holds two), so that nginx is not what caps the step test.
    let conf = format!(
        "daemon off;\nworker_processes 4;\nworker_rlimit_nofile 20000;\npid {d}/nginx.pid;\nerror_log {d}/error.log error;\n\
         events {{ worker_connections 19500; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include {d}/nodes.conf;\n  include {d}/signalr-relay.conf;\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).map_err(|e| e.to_string())?;
    let nginx_bin = std::env::var("NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".into());
    let nginx = Proc::start_until(
        Path::new("timeout"),
        &[
            limit_s.clone(),
            nginx_bin,
            "-p".into(),
            dir.display().to_string(),
            "-c".into(),
            dir.join("nginx.conf").display().to_string(),
        ],
        Some(1),
        None,
    )?;
    let lb = format!("127.0.0.1:{lb_port}");
    let mut up = false;
    for _ in 0..100 {
        if client::get(&lb, "/health").await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !up {
        return Err(format!("nginx did not start: {}", nginx.output()));
    }

    let app = Proc::start(
        &bin.join(format!("sample-app{suffix}")),
        &[
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--connection-string".into(),
            format!("Endpoint=http://{lb};AccessKey={KEY};Version=1.0;"),
            "--connections-per-hub".into(),
            "2".into(),
            "--log".into(),
            "warn".into(),
            "--exit-after".into(),
            limit_s,
        ],
        Some(1),
    )?;
    let mut procs = procs.into_iter();
    let first = procs.next().ok_or("no node")?;
    let mut others: Vec<Proc> = procs.collect();
    others.push(redis);
    let cluster = Cluster {
        target: Target {
            name: "cluster",
            server: first,
            app: Some(app),
            http: None,
            others,
        },
        nodes,
        _nginx: nginx,
        dir,
    };
    // Every node has the app server's connections for the bench hub (some through the
    // balancer, the others asked for by the nodes).
    for node in &cluster.nodes {
        let mut ready = false;
        for _ in 0..150 {
            if serves(node).await {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !ready {
            return Err(format!("{node} never got an app server's connection"));
        }
    }
    Ok(cluster)
}

/// Whether the node at `addr` has a server connection for the bench hub (by its metrics).
async fn serves(addr: &str) -> bool {
    let Ok((200, body)) = client::get(addr, "/metrics").await else {
        return false;
    };
    String::from_utf8_lossy(&body)
        .lines()
        .any(|l| l.starts_with("signalr_relay_app_servers{hub=\"bench\"}") && !l.ends_with(" 0"))
}

/// Messages each node delivered to its clients so far.
pub(crate) async fn delivered(nodes: &[String]) -> Vec<u64> {
    let mut out = Vec::new();
    for addr in nodes {
        let n = match client::get(addr, "/metrics").await {
            Ok((200, body)) => String::from_utf8_lossy(&body)
                .lines()
                .find_map(|l| {
                    l.strip_prefix("signalr_relay_messages_total{direction=\"to_client\"} ")
                        .and_then(|v| v.trim().parse().ok())
                })
                .unwrap_or(0),
            _ => 0,
        };
        out.push(n);
    }
    out
}
