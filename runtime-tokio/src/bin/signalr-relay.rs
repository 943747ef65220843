//! The relay, on tokio.

use signalr_relay_tokio::cli::{bound, init_logging, print_status_token, relay_args, run_relay};
use signalr_relay_tokio::{TokioListener, TokioRuntime};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = relay_args();
    init_logging(&args.logging);
    if args.print_status_token {
        std::process::exit(print_status_token(&args));
    }
    let listener = bound(
        TokioListener::bind_with_backlog(args.listen, args.listen_backlog).await,
        args.listen,
        "--listen",
    );
    let operator = match args.metrics_listen {
        Some(addr) => Some(bound(
            TokioListener::bind(addr).await,
            addr,
            "--metrics-listen",
        )),
        None => None,
    };
    run_relay(TokioRuntime, listener, operator, &args).await;
}
