//! The relay and the sample app in one process, with a generated key.

use clap::Parser;
use signalr_relay_tokio::cli::{exit_after, generate_key, init_logging, DemoArgs};
use signalr_relay_tokio::core::relay::RelayConfig;
use signalr_relay_tokio::{sample, serve, ServeOptions, TokioListener, TokioRuntime};

#[tokio::main]
async fn main() {
    let args = DemoArgs::parse();
    init_logging(&args.logging);
    signalr_relay_tokio::glue::accept::raise_descriptor_limit();
    let key = generate_key();
    let mut config = RelayConfig::default();
    config.access_keys = vec![key.clone()];
    // A key made for this run: a developer's relay, whose status page needs no token.
    config.open_status = true;
    let (relay, app) = match (
        TokioListener::bind(args.relay_listen).await,
        TokioListener::bind(args.listen).await,
    ) {
        (Ok(r), Ok(a)) => (r, a),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("cannot listen: {e}");
            std::process::exit(1);
        }
    };
    let connection_string = format!(
        "Endpoint=http://{};AccessKey={key};Version=1.0;",
        args.relay_listen
    );
    tokio::spawn(serve(TokioRuntime, relay, config, ServeOptions::default()));
    println!("SignalR Relay demo");
    println!(
        "  relay:      http://{}  (dev key generated for this run)",
        args.relay_listen
    );
    println!("  status:     http://{}/", args.relay_listen);
    println!("  your own app server (the Azure SDK too) attaches with: {connection_string}");
    println!("  sample app: http://{}", args.listen);
    println!(
        "  point a SignalR client at http://{}/chat or http://{}/testhub",
        args.listen, args.listen
    );
    println!(
        "  e.g. new signalR.HubConnectionBuilder().withUrl(\"http://{}/chat?user=alice\").build()",
        args.listen
    );
    exit_after(&TokioRuntime, args.exit_after);
    let mut options = signalr_relay_tokio::sdk::AppOptions::default();
    options.allow_stateful_reconnects = true;
    if let Err(e) = sample::run(TokioRuntime, app, &[connection_string], options, false).await {
        eprintln!("sample app stopped: {e}");
        std::process::exit(1);
    }
}
