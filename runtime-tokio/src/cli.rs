//! Command-line flags shared by the relay binaries of every runtime.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use signalr_relay_core::relay::{IpRange, RelayConfig};

use crate::ServeOptions;

/// SignalR Relay: a self-hostable SignalR Service.
///
/// App servers connect to `/server/?hub=…` with an Azure SignalR connection string pointing
/// here; SignalR clients are redirected to `/client/?hub=…`.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct RelayArgs {
    /// A TOML file of settings: its keys are the long flag names (`max-message-size = 65536`,
    /// `access-key = ["k1", "k2"]`). A flag wins over its environment variable, which wins
    /// over the file.
    #[arg(help_heading = "Listen and auth", long, env = "SIGNALR_RELAY_CONFIG")]
    pub config: Option<std::path::PathBuf>,

    /// Print the settings in effect (access keys masked), with where each came from, and
    /// exit.
    #[arg(help_heading = "Listen and auth", long)]
    pub print_config: bool,

    /// Address to listen on: `host:port` (a name is resolved) or a port alone (on
    /// 127.0.0.1).
    #[arg(help_heading = "Listen and auth", long, env = "SIGNALR_RELAY_LISTEN", default_value = "127.0.0.1:8080", value_parser = listen_address)]
    pub listen: SocketAddr,

    /// Connections the kernel holds for the relay until it accepts them: the listen backlog
    /// of `--listen` (Linux caps it at `net.core.somaxconn`). Clients that connect at once past
    /// it have their handshakes dropped, and try again a second later.
    #[arg(
        help_heading = "Listen and auth",
        long,
        env = "SIGNALR_RELAY_LISTEN_BACKLOG",
        default_value_t = crate::glue::accept::DEFAULT_BACKLOG,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub listen_backlog: u32,

    /// Access key that signs app-server and client tokens. Repeat it to accept several
    /// (key rotation). Without one, the relay runs in dev mode with a generated key.
    #[arg(
        help_heading = "Listen and auth",
        long = "access-key",
        env = "SIGNALR_RELAY_ACCESS_KEY",
        value_delimiter = ','
    )]
    pub access_keys: Vec<String>,

    /// Local development as with the Azure SignalR Emulator: without `--access-key`, use the
    /// Emulator's public, fixed key, and print the connection string in the Emulator's form,
    /// so that settings written for the Emulator (a Functions app's `local.settings.json`)
    /// work unchanged. Never in production: the key is public.
    #[arg(help_heading = "Listen and auth", long, env = "SIGNALR_RELAY_DEV")]
    pub dev: bool,

    /// Let `--dev` listen on an address other than loopback (its key is public: anyone who
    /// can reach the relay could use it).
    #[arg(
        help_heading = "Listen and auth",
        long,
        env = "SIGNALR_RELAY_DEV_ON_NETWORK"
    )]
    pub dev_on_network: bool,

    /// Who serves a hub's clients, as Azure's service modes: `default` (app servers),
    /// `serverless` (no app server: the REST API, management connections and upstream; app
    /// servers' own connections are refused), or `classic` (a hub with app servers as
    /// default, one without as serverless).
    #[arg(help_heading = "Serverless", long, env = "SIGNALR_RELAY_SERVICE_MODE", default_value = "default", value_parser = service_mode)]
    pub service_mode: signalr_relay_core::relay::ServiceMode,

    /// Upstream settings for serverless clients' events, in the Azure SignalR Emulator's
    /// `settings.json` shape (`{"UpstreamSettings":{"Templates":[{"UrlTemplate":…,
    /// "HubPattern":…, "CategoryPattern":…, "EventPattern":…}]}}`); read again when it
    /// changes.
    #[arg(
        help_heading = "Serverless",
        long,
        env = "SIGNALR_RELAY_UPSTREAM_CONFIG"
    )]
    pub upstream_config: Option<std::path::PathBuf>,

    /// Seconds an upstream request may take; an invocation not answered by then fails.
    #[arg(help_heading = "Serverless", long, env = "SIGNALR_RELAY_UPSTREAM_TIMEOUT", default_value = "60s", value_parser = seconds)]
    pub upstream_timeout: u64,

    /// Largest hub message a client may send, in bytes.
    #[arg(help_heading = "Limits", long, env = "SIGNALR_RELAY_MAX_MESSAGE_SIZE", default_value = "32KiB", value_parser = byte_size)]
    pub max_message_size: usize,

    /// Largest message an app server may send, in bytes.
    #[arg(help_heading = "Limits", long, env = "SIGNALR_RELAY_MAX_SERVER_MESSAGE_SIZE", default_value = "4MiB", value_parser = byte_size)]
    pub max_server_message_size: usize,

    /// Seconds a client has to complete its handshake.
    #[arg(
        help_heading = "Timeouts",
        long,
        env = "SIGNALR_RELAY_HANDSHAKE_TIMEOUT",
        default_value = "15s", value_parser = seconds
    )]
    pub handshake_timeout: u64,

    /// Seconds between the relay's keep-alive pings to app servers.
    #[arg(
        help_heading = "Timeouts",
        long,
        env = "SIGNALR_RELAY_KEEP_ALIVE",
        default_value = "5s", value_parser = seconds
    )]
    pub keep_alive: u64,

    /// Seconds of silence after which a client is closed.
    #[arg(
        help_heading = "Timeouts",
        long,
        env = "SIGNALR_RELAY_CLIENT_TIMEOUT",
        default_value = "30s", value_parser = seconds
    )]
    pub client_timeout: u64,

    /// Seconds of silence after which an app server's connection is dropped.
    #[arg(
        help_heading = "Timeouts",
        long,
        env = "SIGNALR_RELAY_SERVER_TIMEOUT",
        default_value = "30s", value_parser = seconds
    )]
    pub server_timeout: u64,

    /// When every server connection of an app server carries this many clients, ask it to
    /// open one more (0: never).
    #[arg(
        help_heading = "Limits",
        long,
        env = "SIGNALR_RELAY_CLIENTS_PER_SERVER_CONNECTION",
        default_value_t = 5000
    )]
    pub clients_per_server_connection: usize,

    /// Seconds without sending after which the relay pings a client.
    #[arg(
        help_heading = "Timeouts",
        long,
        env = "SIGNALR_RELAY_CLIENT_KEEP_ALIVE",
        default_value = "15s", value_parser = seconds
    )]
    pub client_keep_alive: u64,

    /// Seconds a long poll is held when there is nothing to send.
    #[arg(
        help_heading = "Timeouts",
        long,
        env = "SIGNALR_RELAY_LONG_POLL_TIMEOUT",
        default_value = "90s", value_parser = seconds
    )]
    pub long_poll_timeout: u64,

    /// Bytes queued for a long-polling client before it is closed as too slow.
    #[arg(help_heading = "Limits", long, env = "SIGNALR_RELAY_MAX_LONG_POLL_BUFFER", default_value = "1MiB", value_parser = byte_size)]
    pub max_long_poll_buffer: usize,

    /// Bytes of unacknowledged messages kept per stateful-reconnect client.
    #[arg(
        help_heading = "Limits",
        long,
        env = "SIGNALR_RELAY_STATEFUL_RECONNECT_BUFFER",
        default_value = "100000B", value_parser = byte_size
    )]
    pub stateful_reconnect_buffer: usize,

    /// Refuse stateful reconnect (clients that ask for it get a plain connection).
    #[arg(
        help_heading = "Limits",
        long,
        env = "SIGNALR_RELAY_NO_STATEFUL_RECONNECT"
    )]
    pub no_stateful_reconnect: bool,

    /// Classic clients: seconds between keep-alives on a WebSocket or event stream.
    #[arg(
        help_heading = "Classic ASP.NET SignalR clients",
        long,
        env = "SIGNALR_RELAY_CLASSIC_KEEP_ALIVE",
        default_value = "10s", value_parser = seconds
    )]
    pub classic_keep_alive: u64,

    /// Classic clients: seconds a connection without a receive channel waits for its client to
    /// reconnect or poll again before the app server is told it disconnected.
    #[arg(
        help_heading = "Classic ASP.NET SignalR clients",
        long,
        env = "SIGNALR_RELAY_CLASSIC_DISCONNECT_TIMEOUT",
        default_value = "30s", value_parser = seconds
    )]
    pub classic_disconnect_timeout: u64,

    /// Classic clients: messages kept per connection for reconnects and long polls.
    #[arg(
        help_heading = "Classic ASP.NET SignalR clients",
        long,
        env = "SIGNALR_RELAY_CLASSIC_BUFFER_MESSAGES",
        default_value_t = 1000
    )]
    pub classic_buffer_messages: usize,

    /// Most connections open at once, of every kind; past it, new sockets are closed on
    /// accept (0: the descriptor limit less 64, after raising the soft limit to the hard one).
    #[arg(
        help_heading = "Limits",
        long,
        env = "SIGNALR_RELAY_MAX_CONNECTIONS",
        default_value_t = 0
    )]
    pub max_connections: usize,

    /// Bytes that may wait to be written to one client; a client past it is closed as too
    /// slow (one larger message goes when nothing else waits). Past an eighth of it, the
    /// client is not read until it catches up.
    #[arg(help_heading = "Limits", long, env = "SIGNALR_RELAY_MAX_SEND_QUEUE", default_value = "4MiB", value_parser = byte_size)]
    pub max_send_queue: usize,

    /// Seconds a socket may take nothing while bytes wait for it before it is closed.
    #[arg(
        help_heading = "Timeouts",
        long,
        env = "SIGNALR_RELAY_WRITE_TIMEOUT",
        default_value = "30s", value_parser = seconds
    )]
    pub write_timeout: u64,

    /// Seconds a peer has to send a request body once its headers are in.
    #[arg(
        help_heading = "Timeouts",
        long,
        env = "SIGNALR_RELAY_BODY_READ_TIMEOUT",
        default_value = "15s", value_parser = seconds
    )]
    pub body_read_timeout: u64,

    /// A proxy in front of the relay whose `X-Forwarded-For` is believed: an address or a
    /// CIDR range (`127.0.0.1`, `10.0.0.0/8`); repeat it, or separate with commas. App
    /// servers learn a client's address as `X-Forwarded-For`: the socket's peer, or behind
    /// trusted proxies the rightmost address they forwarded that is not one of them.
    #[arg(
        help_heading = "Listen and auth",
        long = "trusted-proxy",
        env = "SIGNALR_RELAY_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<IpRange>,

    /// Serve TLS (https, wss) with this certificate chain (PEM, the relay's certificate
    /// first). Both files are read again when either changes, so a renewed certificate needs
    /// no restart. Without it, the relay speaks plain HTTP (behind a proxy that terminates
    /// TLS, see `--trusted-proxy`).
    #[arg(
        help_heading = "Listen and auth",
        long,
        env = "SIGNALR_RELAY_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The private key of `--tls-cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        help_heading = "Listen and auth",
        long,
        env = "SIGNALR_RELAY_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,

    /// Serve `/metrics`, `/health` and `/ready` on this address too (plain HTTP), and
    /// `/metrics` there only: for operators who keep metrics off the public address.
    #[arg(help_heading = "Operations", long, env = "SIGNALR_RELAY_METRICS_LISTEN", value_parser = listen_address)]
    pub metrics_listen: Option<SocketAddr>,

    /// Run as one node of several sharing this Redis (or Valkey) for their backplane:
    /// `redis://[user:password@]host[:port][/db]`. Every node has the same access keys and
    /// a load balancer in front (README: "Running several nodes").
    #[arg(help_heading = "Several nodes", long, env = "SIGNALR_RELAY_REDIS")]
    pub redis: Option<String>,

    /// This node's id, unique among the nodes: 1 to 32 of `A-Z a-z 0-9 - _`. It starts
    /// every connection id and token the node issues, so that the load balancer routes a
    /// client's requests to its node, and app servers' on-demand connections name it
    /// (`&target=`). Default: a random one.
    #[arg(help_heading = "Several nodes", long, env = "SIGNALR_RELAY_NODE_ID", value_parser = node_id)]
    pub node_id: Option<String>,

    /// Where clients and app servers reach this node directly (shown to the operator on
    /// the other nodes' status pages).
    #[arg(help_heading = "Several nodes", long, env = "SIGNALR_RELAY_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Start of the backplane's channel names: nodes with the same prefix are one service
    /// (several services may share one Redis).
    #[arg(
        help_heading = "Several nodes",
        long,
        env = "SIGNALR_RELAY_REDIS_PREFIX",
        default_value = "signalr-relay"
    )]
    pub redis_prefix: String,

    #[command(flatten)]
    pub logging: LogArgs,

    /// Print a token for the status page (`/#token=…`) and `/api/status`, signed with the
    /// first access key and valid for 30 days, then exit. In dev mode the status is open.
    #[arg(help_heading = "Listen and auth", long)]
    pub print_status_token: bool,

    /// Seconds a graceful shutdown (SIGTERM or SIGINT) waits for clients to go before the
    /// relay exits; a second signal exits at once.
    #[arg(
        help_heading = "Operations",
        long,
        env = "SIGNALR_RELAY_DRAIN_TIMEOUT",
        default_value = "30s", value_parser = seconds
    )]
    pub drain_timeout: u64,

    /// Exit after this many seconds (a safety net for test harnesses).
    #[arg(long, hide = true)]
    pub exit_after: Option<u64>,
}

impl RelayArgs {
    /// The core configuration these flags describe. In dev mode (no key) a key is generated
    /// and returned too.
    pub fn relay_config(&self) -> (RelayConfig, Option<String>) {
        let mut config = RelayConfig::default();
        let mut generated = None;
        config.access_keys = self
            .access_keys
            .iter()
            .filter(|k| !k.is_empty())
            .cloned()
            .collect();
        if config.access_keys.is_empty() {
            let key = if self.dev {
                EMULATOR_KEY.to_owned()
            } else {
                generate_key()
            };
            config.access_keys.push(key.clone());
            generated = Some(key);
            // A relay on a key made for this run (or the Emulator's public one) is a
            // developer's: its status page needs no token.
            config.open_status = true;
        }
        config.max_client_message_size = self.max_message_size;
        config.max_server_message_size = self.max_server_message_size;
        config.handshake_timeout = Duration::from_secs(self.handshake_timeout);
        config.server_ping_interval = Duration::from_secs(self.keep_alive.max(1));
        config.client_timeout = Duration::from_secs(self.client_timeout);
        config.server_timeout = Duration::from_secs(self.server_timeout);
        config.clients_per_server_connection = self.clients_per_server_connection;
        config.allow_stateful_reconnect = !self.no_stateful_reconnect;
        config.client_keep_alive = Duration::from_secs(self.client_keep_alive.max(1));
        config.long_poll_timeout = Duration::from_secs(self.long_poll_timeout.max(1));
        config.max_long_poll_buffer = self.max_long_poll_buffer;
        config.stateful_reconnect_buffer = self.stateful_reconnect_buffer;
        config.classic_keep_alive = Duration::from_secs(self.classic_keep_alive.max(1));
        config.classic_disconnect_timeout =
            Duration::from_secs(self.classic_disconnect_timeout.max(1));
        config.classic_buffer_messages = self.classic_buffer_messages.max(1);
        config.trusted_proxies = self.trusted_proxies.clone();
        config.service_mode = self.service_mode;
        config.upstream_timeout = Duration::from_secs(self.upstream_timeout.max(1));
        // Which relay process the app servers' clients came through (`Asrs-Instance-Id`, and
        // the `offline` ping of a shutdown): new for each run.
        config.instance_id = format!("relay-{}", &generate_key()[..12]);
        if self.redis.is_some() {
            let id = self.node_id.clone().unwrap_or_else(|| {
                let random: String = generate_key()
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .take(8)
                    .collect();
                format!("node-{random}")
            });
            // Checked by the flag's parser; a random one is valid.
            if let Ok(mut cluster) = signalr_relay_core::relay::ClusterConfig::new(&id) {
                cluster.prefix.clone_from(&self.redis_prefix);
                cluster.public_url.clone_from(&self.public_url);
                config.cluster = Some(cluster);
            }
        }
        (config, generated)
    }

    /// Serving options these flags describe.
    pub fn serve_options(&self) -> ServeOptions {
        let mut options = ServeOptions::default();
        if self.max_connections > 0 {
            options.max_connections = self.max_connections;
        }
        options.client_send_queue = self.max_send_queue.max(1);
        options.write_timeout = Duration::from_secs(self.write_timeout.max(1));
        options.body_read_timeout = Duration::from_secs(self.body_read_timeout.max(1));
        options.drain_timeout = Duration::from_secs(self.drain_timeout);
        options.upstream_config.clone_from(&self.upstream_config);
        options.redis.clone_from(&self.redis);
        options
    }

    /// The TLS that `--tls-cert` and `--tls-key` describe, if given.
    ///
    /// # Errors
    /// Why the certificate or key cannot be used.
    pub fn server_tls(&self) -> Result<Option<crate::glue::tls::ServerTls>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => crate::glue::tls::ServerTls::load(cert, key).map(Some),
            _ => Ok(None),
        }
    }
}

/// The relay's settings: the command line, the environment (`SIGNALR_RELAY_<FLAG>`) and the
/// `--config` file, in that order of precedence. Exits with a clear message (status 2) on a
/// bad flag, an unreadable file or an unknown key in it.
pub fn relay_args() -> RelayArgs {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let args = relay_args_from(argv.clone()).and_then(|args| {
        if args.print_config {
            print!("{}", print_config(argv)?);
            std::process::exit(0);
        }
        Ok(args)
    });
    match args {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}

/// Flags that a config file cannot set: they are about this run, not the relay.
const NOT_IN_FILES: [&str; 6] = [
    "config",
    "print-config",
    "print-status-token",
    "exit-after",
    "help",
    "version",
];

/// [`relay_args`] from `argv`.
///
/// # Errors
/// A message naming the file, and the key or flag at fault.
pub fn relay_args_from(argv: Vec<std::ffi::OsString>) -> Result<RelayArgs, String> {
    use clap::FromArgMatches;
    let settings = resolve(argv)?;
    RelayArgs::from_arg_matches(&settings.effective).map_err(|e| e.to_string())
}

/// The settings: as given (for where each came from), and in effect (the file's keys added
/// as flags where neither a flag nor the environment set them).
struct Settings {
    given: clap::ArgMatches,
    effective: clap::ArgMatches,
    from_file: Vec<String>,
}

fn resolve(argv: Vec<std::ffi::OsString>) -> Result<Settings, String> {
    use clap::CommandFactory;
    let command = RelayArgs::command();
    let given = command
        .clone()
        .try_get_matches_from(&argv)
        .unwrap_or_else(|e| e.exit());
    let mut from_file = Vec::new();
    let mut injected: Vec<std::ffi::OsString> = Vec::new();
    let file = given
        .get_one::<std::path::PathBuf>("config")
        .map(|p| p.display().to_string());
    if let Some(path) = given.get_one::<std::path::PathBuf>("config") {
        let shown = path.display();
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        let table: toml::Table = text.parse().map_err(|e| format!("{shown}: {e}"))?;
        for (key, value) in &table {
            let arg = command
                .get_arguments()
                .find(|a| {
                    a.get_long() == Some(key.as_str())
                        && !a.is_hide_set()
                        && !NOT_IN_FILES.contains(&key.as_str())
                })
                .ok_or_else(|| {
                    format!(
                        "unknown key `{key}` in {shown} (keys are the long flag names; see --help)"
                    )
                })?;
            // The command line and the environment win over the file.
            let source = given.value_source(arg.get_id().as_str());
            if !matches!(source, None | Some(clap::parser::ValueSource::DefaultValue)) {
                continue;
            }
            let scalar = |v: &toml::Value| match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(n) => Ok(n.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                toml::Value::Boolean(b) => Ok(b.to_string()),
                _ => Err(format!(
                    "`{key}` in {shown}: expected a string, a number or a boolean"
                )),
            };
            match value {
                toml::Value::Boolean(on)
                    if matches!(arg.get_action(), clap::ArgAction::SetTrue) =>
                {
                    if *on {
                        injected.push(format!("--{key}").into());
                    }
                }
                toml::Value::Array(items) => {
                    for item in items {
                        injected.push(format!("--{key}={}", scalar(item)?).into());
                    }
                }
                other => injected.push(format!("--{key}={}", scalar(other)?).into()),
            }
            from_file.push(key.clone());
        }
    }
    let mut full = argv;
    let rest = full.split_off(1.min(full.len()));
    full.extend(injected);
    full.extend(rest);
    let effective = command
        .try_get_matches_from(&full)
        .map_err(|e| match &file {
            // A value the file gave is named with the file.
            Some(file) if !from_file.is_empty() => format!("{e}(settings from {file})"),
            _ => e.to_string(),
        })?;
    Ok(Settings {
        given,
        effective,
        from_file,
    })
}

/// `--print-config`: every setting in effect as TOML (what `--config` takes), access keys
/// masked, each with where it came from (`flag`, `env`, `file` or `default`).
///
/// # Errors
/// As [`relay_args_from`].
pub fn print_config(argv: Vec<std::ffi::OsString>) -> Result<String, String> {
    use clap::CommandFactory;
    let settings = resolve(argv)?;
    let mut out = String::new();
    for arg in RelayArgs::command().get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_IN_FILES.contains(&long) || arg.is_hide_set() {
            continue;
        }
        let id = arg.get_id().as_str();
        let values: Vec<String> = settings
            .effective
            .get_raw(id)
            .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let source = if settings.from_file.iter().any(|k| k == long) {
            "file"
        } else {
            match settings.given.value_source(id) {
                Some(clap::parser::ValueSource::CommandLine) => "flag",
                Some(clap::parser::ValueSource::EnvVariable) => "env",
                _ => "default",
            }
        };
        if long == "redis" && values.iter().any(|v| v.contains('@')) {
            // A password in the URL is masked, and the line commented out, as keys are.
            let masked: Vec<String> = values.iter().map(|v| mask_url_password(v)).collect();
            out.push_str(&format!("# redis = {:?}  # {source}\n", masked.join(",")));
            continue;
        }
        if long == "access-key" {
            // Commented out: the file this prints must not take a masked key for a key.
            out.push_str(&format!(
                "# access-key = <{} key(s), masked>  # {source}\n",
                values.len()
            ));
            continue;
        }
        let shown = |v: &str| {
            if v.parse::<f64>().is_ok() || v == "true" || v == "false" {
                v.to_owned()
            } else {
                // A TOML basic string: JSON's escapes are TOML's.
                serde_json::Value::String(v.to_owned()).to_string()
            }
        };
        let value = match (values.as_slice(), arg.get_action()) {
            ([], clap::ArgAction::SetTrue) => "false".to_owned(),
            ([], _) => continue,
            ([one], action) if !matches!(action, clap::ArgAction::Append) => shown(one),
            (many, _) => format!(
                "[{}]",
                many.iter().map(|v| shown(v)).collect::<Vec<_>>().join(", ")
            ),
        };
        out.push_str(&format!("{long} = {value}  # {source}\n"));
    }
    Ok(out)
}

/// `--print-status-token`: prints a token for the status page, or says why there is none.
/// Returns the exit status.
pub fn print_status_token(args: &RelayArgs) -> i32 {
    use signalr_relay_core::auth::{sign, Algorithm, Claims};
    let Some(key) = args.access_keys.iter().find(|k| !k.is_empty()) else {
        eprintln!(
            "no --access-key: a relay in dev mode shows its status to anyone, no token needed"
        );
        return 2;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut claims = Claims::issued_at(now, 30 * 24 * 3600);
    claims.aud.push(format!(
        "http://{}{}",
        args.listen,
        signalr_relay_core::relay::STATUS_PATH
    ));
    println!("{}", sign(&claims, key.as_bytes(), Algorithm::Hs256));
    0
}

/// The Azure SignalR Emulator's fixed development key (public: it is in the Emulator's
/// source and its printed connection string).
pub const EMULATOR_KEY: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";

/// A random access key (32 bytes, hex).
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
        eprintln!("no OS randomness available to generate a key");
        std::process::exit(1);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How a binary logs.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter: a level (`error`, `warn`, `info`, `debug`, `trace`) or directives such as
    /// `info,signalr_relay_core=debug`.
    #[arg(
        help_heading = "Logs",
        long = "log",
        env = "SIGNALR_RELAY_LOG",
        default_value = "info"
    )]
    pub log: String,

    /// Log lines as `text`, or as one JSON object each (`json`), for log shippers.
    #[arg(help_heading = "Logs", long, env = "SIGNALR_RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Refuses a bare word that is not a level: `tracing` would read `--log verbose` as "the
/// target `verbose`, at every level", and log nothing else.
fn check_log_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains(['=', '[', ':']);
        if bare && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive)) {
            return Err(format!(
                "{directive:?} is not a level (use off, error, warn, info, debug or trace, or target=level)"
            ));
        }
    }
    Ok(())
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Plain text; colours only on a terminal, and never with `NO_COLOR` set.
    Text,
    /// One JSON object per line.
    Json,
}

/// Sets up logging as `args` say. A filter that does not parse ends the process with a clear
/// message (exit status 2), rather than logging at some other level.
pub fn init_logging(args: &LogArgs) {
    let filter = check_log_filter(&args.log).and_then(|()| {
        tracing_subscriber::EnvFilter::builder()
            .parse(&args.log)
            .map_err(|e| e.to_string())
    });
    let filter = match filter {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("error: invalid --log filter {:?}: {e}", args.log);
            std::process::exit(2);
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = match args.log_format {
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
        LogFormat::Text => {
            // Colours only for a terminal (logs that go to a file or a collector stay plain
            // text), and not when NO_COLOR asks for none.
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            let ansi = !no_color && std::io::IsTerminal::is_terminal(&std::io::stdout());
            builder.with_ansi(ansi).try_init()
        }
    };
}

/// The sample app server: hosts `testhub` and `chat` behind a relay.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct SampleArgs {
    /// The relay's connection string. Give it more than once to serve through several relays
    /// at once (the Azure SDK's multiple endpoints).
    #[arg(long, env = "SIGNALR_RELAY_CONNECTION_STRING", required = true)]
    pub connection_string: Vec<String>,

    /// Where to serve the negotiate endpoints (`/<hub>/negotiate`): `host:port` or a port.
    #[arg(long, default_value = "127.0.0.1:5000", value_parser = listen_address)]
    pub listen: SocketAddr,

    /// Server connections per hub.
    #[arg(long, default_value_t = 5)]
    pub connections_per_hub: usize,

    /// Seconds to wait for a client's result (client results).
    #[arg(long, default_value_t = 30)]
    pub client_result_timeout: u64,

    /// This app server's name (`X-ASRS-Server-Id`); default `app-<pid>`.
    #[arg(long)]
    pub server_id: Option<String>,

    /// Whether its clients must be served by it: `disabled`, `preferred` or `required`.
    #[arg(long, default_value = "disabled")]
    pub server_sticky: crate::sdk::ServerSticky,

    /// PEM certificates to trust besides the system's, for a relay at an `https` endpoint
    /// whose certificate a private CA issued.
    #[arg(long, env = "SIGNALR_RELAY_CA")]
    pub ca: Option<std::path::PathBuf>,

    /// Run the serverless sample instead: a backend with no hub server (for a relay with
    /// `--service-mode serverless`) that serves negotiate with tokens it mints, takes the
    /// relay's upstream requests at `/upstream/{hub}/{category}/{event}`, and answers
    /// through the REST API.
    #[arg(long)]
    pub serverless: bool,

    #[command(flatten)]
    pub logging: LogArgs,

    /// Exit after this many seconds (a safety net for test harnesses).
    #[arg(long, hide = true)]
    pub exit_after: Option<u64>,
}

/// Relay and sample app in one process, sharing a generated key: the quickest way to try
/// SignalR Relay.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct DemoArgs {
    /// Where the relay listens: `host:port` or a port.
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = listen_address)]
    pub relay_listen: SocketAddr,

    /// Where the sample app serves negotiate: `host:port` or a port.
    #[arg(long, default_value = "127.0.0.1:5000", value_parser = listen_address)]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub logging: LogArgs,

    /// Exit after this many seconds (a safety net for test harnesses).
    #[arg(long, hide = true)]
    pub exit_after: Option<u64>,
}

/// `scheme://user:password@host…` with the password masked.
fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((credentials, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = credentials.split_once(':').map_or(credentials, |(u, _)| u);
    format!("{scheme}://{user}:<masked>@{host}")
}

fn node_id(s: &str) -> Result<String, String> {
    signalr_relay_core::relay::ClusterConfig::new(s).map(|c| c.node_id)
}

/// Exits the process after `secs` seconds, if set (the `--exit-after` safety net).
pub fn exit_after<R: crate::Runtime>(runtime: &R, secs: Option<u64>) {
    if let Some(secs) = secs {
        let sleep = runtime.sleep_until(runtime.now() + Duration::from_secs(secs));
        runtime.spawn(async move {
            sleep.await;
            std::process::exit(0);
        });
    }
}

/// Runs the relay binary of any runtime: prints where it listens (and the generated key in dev
/// mode), then serves until SIGTERM or SIGINT, and shuts down gracefully (see
/// [`serve_until`](crate::serve_until)).
pub async fn run_relay<R: crate::Runtime, L: crate::Listener>(
    runtime: R,
    listener: L,
    operator: Option<L>,
    args: &RelayArgs,
) {
    crate::glue::accept::raise_descriptor_limit();
    let (mut config, generated) = args.relay_config();
    let mut options = args.serve_options();
    options.tls = args.server_tls().unwrap_or_else(|e| {
        eprintln!("error: --tls-cert/--tls-key: {e}");
        std::process::exit(2);
    });
    if let Some(path) = &args.upstream_config {
        let read = std::fs::read_to_string(path).map_err(|e| e.to_string());
        if let Err(e) = read.and_then(|t| signalr_relay_core::relay::UpstreamSettings::parse(&t)) {
            eprintln!("error: --upstream-config {}: {e}", path.display());
            std::process::exit(2);
        }
    }
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let addr = listener.local_addr().unwrap_or(args.listen);
    // A developer's relay (a key made for this run, or the Emulator's) shows its status to
    // anyone only on loopback.
    config.open_status &= addr.ip().is_loopback();
    if args.dev && generated.is_some() && !addr.ip().is_loopback() && !args.dev_on_network {
        eprintln!(
            "error: --dev uses the Emulator's public key, so it listens on loopback only, not {addr}; add --dev-on-network if anyone who can reach it may use it"
        );
        std::process::exit(2);
    }
    match &generated {
        Some(key) if args.dev => {
            println!("DEV MODE (--dev): the Azure SignalR Emulator's public key; never use it in production.");
            println!(
                "  app servers connect with: Endpoint={scheme}://{};Port={};AccessKey={key};Version=1.0;",
                addr.ip(),
                addr.port()
            );
        }
        Some(key) => {
            println!("DEV MODE: no --access-key given; generated a key for this run.");
            println!(
                "  app servers connect with: Endpoint={scheme}://{addr};AccessKey={key};Version=1.0;"
            );
        }
        None => {}
    }
    if generated.is_some() {
        println!(
            "  clients connect (through their app server's negotiate) to: {scheme}://{addr}/client/"
        );
    }
    match operator.as_ref().and_then(|o| o.local_addr().ok()) {
        Some(metrics) => println!(
            "  status page: {scheme}://{addr}/  (readiness: /ready; metrics: http://{metrics}/metrics)"
        ),
        None => {
            println!("  status page: {scheme}://{addr}/  (metrics: /metrics, readiness: /ready)")
        }
    }
    println!("signalr-relay listening on {scheme}://{addr}");
    exit_after(&runtime, args.exit_after);
    let signalled = termination(runtime.clone());
    if let Err(e) = crate::glue::serve_until_with_operator(
        runtime, listener, operator, config, options, signalled,
    )
    .await
    {
        tracing::error!("{e}");
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    tracing::info!("shut down");
}

/// Completes on the first SIGTERM or SIGINT; a second one ends the process at once. Never
/// completes where signals cannot be watched.
pub fn termination<R: crate::Runtime>(runtime: R) -> crate::BoxFuture<()> {
    #[cfg(unix)]
    {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let asked = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            let registered =
                signal_hook::flag::register_conditional_shutdown(signal, 1, asked.clone())
                    .and_then(|_| signal_hook::flag::register(signal, asked.clone()));
            if registered.is_err() {
                return Box::pin(std::future::pending());
            }
        }
        Box::pin(async move {
            while !asked.load(Ordering::Acquire) {
                runtime
                    .sleep_until(runtime.now() + Duration::from_millis(100))
                    .await;
            }
        })
    }
    #[cfg(not(unix))]
    {
        let _ = runtime;
        Box::pin(std::future::pending())
    }
}

/// Runs the sample-app binary of any runtime.
pub async fn run_sample_app<R: crate::Runtime, L: crate::Listener>(
    runtime: R,
    listener: L,
    args: &SampleArgs,
) {
    crate::glue::accept::raise_descriptor_limit();
    // A connection string that does not parse is said before anything listens.
    for cs in &args.connection_string {
        if let Err(e) = signalr_relay_core::auth::ConnectionString::parse(cs) {
            eprintln!("error: --connection-string: {e}");
            std::process::exit(2);
        }
    }
    let https = args.connection_string.iter().any(|cs| {
        signalr_relay_core::auth::ConnectionString::parse(cs)
            .is_ok_and(|cs| cs.server_endpoint().starts_with("https:"))
    });
    if https {
        if let Err(e) = crate::glue::tls::client_config(args.ca.as_deref()) {
            eprintln!("error: --ca: {e}");
            std::process::exit(2);
        }
    }
    let addr = listener.local_addr().unwrap_or(args.listen);
    let hubs: Vec<String> = crate::sample_app::hubs()
        .iter()
        .map(|h| h.name().to_owned())
        .collect();
    if args.serverless {
        println!(
            "sample-app (serverless) listening on http://{addr} (negotiate at /<hub>/negotiate; point the relay's upstream template at http://{addr}/upstream/{{hub}}/{{category}}/{{event}})"
        );
    } else {
        println!(
            "sample-app listening on http://{addr} (negotiate at /<hub>/negotiate; hubs: {})",
            hubs.join(", ")
        );
    }
    exit_after(&runtime, args.exit_after);
    if args.serverless {
        let mut options = crate::sdk::management::ServiceOptions::default();
        options.ca_file.clone_from(&args.ca);
        let cs = args.connection_string.first().cloned().unwrap_or_default();
        if let Err(e) = crate::serverless_sample::run(runtime, listener, &cs, options).await {
            eprintln!("sample-app stopped: {e}");
            std::process::exit(1);
        }
        return;
    }
    let mut options = crate::sdk::AppOptions {
        connections_per_hub: args.connections_per_hub,
        client_result_timeout: Duration::from_secs(args.client_result_timeout),
        server_sticky: args.server_sticky,
        // The sample's hubs keep no per-connection state a resumed client could miss.
        allow_stateful_reconnects: true,
        // Its hubs keep no per-connection state: its clients may move when it leaves.
        migrate_clients_on_shutdown: true,
        ..crate::sdk::AppOptions::default()
    };
    if let Some(id) = &args.server_id {
        options.server_id.clone_from(id);
    }
    options.ca_file.clone_from(&args.ca);
    if let Err(e) =
        crate::sample_app::run(runtime, listener, &args.connection_string, options, true).await
    {
        eprintln!("sample-app stopped: {e}");
        std::process::exit(1);
    }
}

/// Binds `addr` or exits with a clear message naming the address and the flag.
pub fn bound<L>(result: std::io::Result<L>, addr: SocketAddr, flag: &str) -> L {
    result.unwrap_or_else(|e| {
        eprintln!("error: cannot listen on {addr} ({flag}): {e}");
        std::process::exit(1);
    })
}

/// A size in bytes: a number, with `B`, `KB` or `KiB`, `MB` or `MiB`, `GB` or `GiB` after it
/// if it likes (K is 1,024 either way: these are buffer sizes).
pub fn byte_size(text: &str) -> Result<usize, String> {
    let bytes = with_unit(text, "a size (e.g. 65536, 64KiB, 4MiB)", |unit| match unit
        .to_ascii_lowercase()
        .as_str()
    {
        "" | "b" => Some(1),
        "k" | "kb" | "kib" => Some(1 << 10),
        "m" | "mb" | "mib" => Some(1 << 20),
        "g" | "gb" | "gib" => Some(1 << 30),
        _ => None,
    })?;
    usize::try_from(bytes).map_err(|_| format!("{text:?} is too large"))
}

/// A duration in whole seconds: a number, with `s`, `m` or `h` after it if it likes.
pub fn seconds(text: &str) -> Result<u64, String> {
    with_unit(
        text,
        "a duration (e.g. 30, 30s, 5m, 1h)",
        |unit| match unit {
            "" | "s" => Some(1),
            "m" => Some(60),
            "h" => Some(3600),
            _ => None,
        },
    )
}

/// A whole number, then (after optional spaces) a unit that `scale` knows (`""` when there
/// is none), multiplied out. `what` says what was expected, for the error.
fn with_unit(text: &str, what: &str, scale: impl Fn(&str) -> Option<u64>) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not {what}"))?;
    let scale = scale(unit.trim()).ok_or_else(|| format!("{text:?}: unknown unit in {what}"))?;
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A service mode: `default`, `serverless` or `classic`.
pub fn service_mode(text: &str) -> Result<signalr_relay_core::relay::ServiceMode, String> {
    text.parse()
}

/// A listen address: `host:port`, where a host name is resolved (its first address), or a
/// port alone, on 127.0.0.1.
pub fn listen_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|e| format!("{text:?} is not host:port or a port ({e})"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relay's settings from these flags.
    fn args(extra: &[&str]) -> Result<RelayArgs, String> {
        let mut argv: Vec<std::ffi::OsString> = vec!["signalr-relay".into()];
        argv.extend(extra.iter().map(Into::into));
        relay_args_from(argv)
    }

    #[test]
    fn listen_addresses_take_a_port_alone_or_a_host_name() {
        assert_eq!(
            listen_address("8080"),
            Ok("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            listen_address("0.0.0.0:81"),
            Ok("0.0.0.0:81".parse().unwrap())
        );
        let local = listen_address("localhost:8080").unwrap();
        assert!(local.ip().is_loopback() && local.port() == 8080);
        assert!(listen_address("nowhere:x").is_err());
        assert!(listen_address("70000").is_err());
    }

    #[test]
    fn the_listen_backlog_is_4096_unless_set() {
        assert_eq!(args(&[]).expect("valid").listen_backlog, 4096);
        let set = args(&["--listen-backlog", "65535"]).expect("valid");
        assert_eq!(set.listen_backlog, 65535);
        // Refused by the parser (`relay_args_from` would exit on them, as the binary does).
        use clap::CommandFactory;
        for bad in ["0", "-1", "many"] {
            let parsed = RelayArgs::command().try_get_matches_from([
                "signalr-relay",
                "--listen-backlog",
                bad,
            ]);
            assert!(parsed.is_err(), "{bad} was taken");
        }
    }

    #[test]
    fn sizes_and_durations_take_units() {
        assert_eq!(byte_size("32768"), Ok(32768));
        assert_eq!(byte_size("32KiB"), Ok(32768));
        assert_eq!(byte_size("4 MiB"), Ok(4 << 20));
        assert_eq!(byte_size("100000B"), Ok(100_000));
        assert!(byte_size("lots").is_err() && byte_size("3 parsecs").is_err());
        assert_eq!(seconds("30"), Ok(30));
        assert_eq!(seconds("90s"), Ok(90));
        assert_eq!(seconds("5m"), Ok(300));
        assert!(seconds("1 fortnight").is_err() && seconds("").is_err());
    }

    #[test]
    fn cluster_flags_make_a_node_and_hide_the_redis_password() {
        let a = args(&[
            "--redis",
            "redis://:s3cret@10.0.0.9:6379",
            "--node-id",
            "n1",
        ])
        .expect("valid flags");
        let cluster = a.relay_config().0.cluster.expect("a node");
        assert_eq!(cluster.node_id, "n1");
        assert_eq!(cluster.prefix, "signalr-relay");
        assert!(node_id("not/valid").is_err() && node_id(&"x".repeat(33)).is_err());
        // A random id, when none is given; and no cluster without Redis.
        let random = args(&["--redis", "redis://x"]).expect("valid flags");
        let id = random.relay_config().0.cluster.expect("a node").node_id;
        assert!(id.starts_with("node-") && signalr_relay_core::relay::valid_node_id(&id));
        assert!(args(&[]).expect("valid").relay_config().0.cluster.is_none());
        assert_eq!(
            mask_url_password("redis://user:pw@h:1/0"),
            "redis://user:<masked>@h:1/0"
        );
        assert_eq!(mask_url_password("redis://:pw@h"), "redis://:<masked>@h");
        let printed = print_config(vec![
            "signalr-relay".into(),
            "--redis".into(),
            "redis://:s3cret@10.0.0.9:6379".into(),
        ])
        .expect("prints");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("<masked>"), "{printed}");
    }

    #[test]
    fn log_filters_are_levels_or_directives() {
        for good in [
            "info",
            "DEBUG",
            "warn,signalr_relay_core=debug",
            "a::b=trace",
            "off",
        ] {
            assert_eq!(check_log_filter(good), Ok(()), "{good}");
        }
        for bad in ["verbose", "info,loud"] {
            assert!(check_log_filter(bad).is_err(), "{bad}");
        }
    }
}
