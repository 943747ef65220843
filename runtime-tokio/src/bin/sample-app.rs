//! The sample app server, on tokio.

use clap::Parser;
use signalr_relay_tokio::cli::{bound, init_logging, run_sample_app, SampleArgs};
use signalr_relay_tokio::{TokioListener, TokioRuntime};

#[tokio::main]
async fn main() {
    let args = SampleArgs::parse();
    init_logging(&args.logging);
    let listener = bound(
        TokioListener::bind(args.listen).await,
        args.listen,
        "--listen",
    );
    run_sample_app(TokioRuntime, listener, &args).await;
}
