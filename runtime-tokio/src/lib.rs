//! SignalR Relay's async glue, and its tokio adapter.
//!
//! [`signalr_relay_core`] makes every decision; this crate only moves bytes. It owns the
//! sockets (HTTP/1.1 through hyper, WebSockets through async-tungstenite) and runs one
//! *driver* task per relay that feeds the core and carries out what it says:
//!
//! ```text
//!  TCP accept ─► hyper (per connection) ──Request──►┐
//!  WebSocket reader task ──────────────────Data────►│  driver task: Relay::handle_*,
//!                         ◄──Transmit/Close────────┤  drain poll_output, sleep until
//!  WebSocket writer task  (bounded queue, batched   │  poll_timeout, handle_timeout
//!                          writes, then one flush)  ┘
//! ```
//!
//! The glue is written once against `futures-io` and the small [`Runtime`] trait; the tokio
//! adapter ([`TokioRuntime`], feature `tokio`, on by default) and the smol adapter
//! (`signalr-relay-smol`, which uses this crate with default features off) only say how to
//! spawn, sleep and accept.
//!
//! A connection whose outgoing queue fills up (a peer that stopped reading) is closed rather
//! than buffered without bound.

pub mod app;
pub mod cli;
mod http;
mod relay_server;
mod runtime;
pub mod sample;
mod ws;

pub use http::serve_http;
pub use relay_server::{serve, ServeOptions};
pub use runtime::{BoxFuture, Listener, Runtime};
pub use signalr_relay_core as core;

#[cfg(feature = "tokio")]
mod tokio_rt;
#[cfg(feature = "tokio")]
pub use tokio_rt::{TokioListener, TokioRuntime};
