//! The relay, on smol. Same flags as `signalr-relay`.

use clap::Parser;
use signalr_relay_smol::cli::{bound, init_logging, run_relay, RelayArgs};
use signalr_relay_smol::{SmolListener, SmolRuntime};

fn main() {
    let args = RelayArgs::parse();
    init_logging(&args.logging);
    signalr_relay_smol::block_on(async move {
        let listener = bound(SmolListener::bind(args.listen).await, args.listen);
        run_relay(SmolRuntime, listener, &args).await;
    });
}
