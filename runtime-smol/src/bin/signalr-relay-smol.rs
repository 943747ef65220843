//! The relay, on smol. Same flags as `signalr-relay`.

use signalr_relay_smol::cli::{bound, init_logging, print_status_token, relay_args, run_relay};
use signalr_relay_smol::{SmolListener, SmolRuntime};

fn main() {
    let args = relay_args();
    init_logging(&args.logging);
    if args.print_status_token {
        std::process::exit(print_status_token(&args));
    }
    signalr_relay_smol::block_on(async move {
        let listener = bound(
            SmolListener::bind_with_backlog(args.listen, args.listen_backlog).await,
            args.listen,
            "--listen",
        );
        let operator = match args.metrics_listen {
            Some(addr) => Some(bound(
                SmolListener::bind(addr).await,
                addr,
                "--metrics-listen",
            )),
            None => None,
        };
        run_relay(SmolRuntime, listener, operator, &args).await;
    });
}
