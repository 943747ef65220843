//! The relay, on tokio.

use clap::Parser;
use signalr_relay_tokio::cli::{bound, init_logging, run_relay, RelayArgs};
use signalr_relay_tokio::{TokioListener, TokioRuntime};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = RelayArgs::parse();
    init_logging(&args.logging);
    let listener = bound(TokioListener::bind(args.listen).await, args.listen);
    run_relay(TokioRuntime, listener, &args).await;
}
