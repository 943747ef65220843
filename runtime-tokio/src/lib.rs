//! SignalR Relay's async side: the runtime-neutral glue, with its tokio adapter.
//!
//! [`signalr_relay_core`] makes every decision; this crate only moves bytes. It holds four
//! things, each in a module named for it:
//!
//! | module | what | needs tokio |
//! |---|---|---|
//! | [`glue`] | the runtime-neutral glue: HTTP/1.1 through hyper, WebSockets through async-tungstenite, and the *driver* task that owns a relay, written against `futures-io` and the [`Runtime`] trait | no |
//! | [`sdk`] | the app-server SDK: host hubs behind the relay (or Azure SignalR Service) | no |
//! | [`sample_app`] | the sample app server the demo and the tests run | no |
//! | [`cli`] | the command lines of the binaries | no |
//! | `tokio_adapter` | [`TokioRuntime`] and [`TokioListener`], feature `tokio` (on by default), and the binaries | yes |
//!
//! **Why the smol adapter depends on this package.** The glue is most of the async code, and
//! it is written once. `signalr-relay-smol` takes this package with its default features off
//! (no tokio at all) and adds a smol adapter of about 80 lines: how smol spawns, tells the
//! time, sleeps, connects and accepts. The tokio adapter is the same size, here, behind the
//! `tokio` feature.
//!
//! ```text
//!  TCP accept ─► hyper (per connection) ──Request──►┐
//!  WebSocket reader task ──────────────────Data────►│  driver task: Relay::handle_*,
//!                         ◄──Transmit/Close────────┤  drain poll_output, sleep until
//!  WebSocket writer task  (bounded queue, batched   │  poll_timeout, handle_timeout
//!                          writes, then one flush)  ┘
//! ```
//!
//! A connection whose outgoing queue fills up (a peer that stopped reading) is closed rather
//! than buffered without bound.

pub mod cli;
pub mod glue;
pub mod sample_app;
pub mod sdk;
pub mod serverless_sample;

pub use glue::{
    serve, serve_http, serve_until, serve_until_with_operator, BoxFuture, Listener, Runtime,
    ServeOptions,
};
pub use signalr_relay_core as core;

/// The sample app under its former name.
#[doc(hidden)]
pub use sample_app as sample;
/// The app-server SDK under its former name.
#[doc(hidden)]
pub use sdk as app;

#[cfg(feature = "tokio")]
mod tokio_adapter;
#[cfg(feature = "tokio")]
pub use tokio_adapter::{TokioListener, TokioRuntime, TokioStream};
