//! The sample app server, on smol. Same flags as `sample-app`.

use clap::Parser;
use signalr_relay_smol::cli::{bound, init_logging, run_sample_app, SampleArgs};
use signalr_relay_smol::{SmolListener, SmolRuntime};

fn main() {
    let args = SampleArgs::parse();
    init_logging(&args.logging);
    signalr_relay_smol::block_on(async move {
        let listener = bound(
            SmolListener::bind(args.listen).await,
            args.listen,
            "--listen",
        );
        run_sample_app(SmolRuntime, listener, &args).await;
    });
}
