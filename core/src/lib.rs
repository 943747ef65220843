//! The sans-IO core of SignalR Relay.
//!
//! This crate does **no I/O**: it opens no sockets, reads no clock, spawns no tasks and draws
//! no hidden randomness. Bytes go in, decisions and bytes come out; time arrives as an
//! argument (`now`), and so do random bytes. That keeps every decision testable on a virtual
//! clock and lets any runtime drive it (see the `signalr-relay-tokio` and `signalr-relay-smol`
//! adapters).
//!
//! | module | what |
//! |---|---|
//! | [`relay`] | the relay state machine: admission, mapping, fan-out, keep-alive, timeouts. Its docs give the run loop |
//! | [`app`] | the app-server side of a server connection, and reconnect backoff |
//! | [`aspnetcore`] | ASP.NET Core SignalR: negotiate, handshake, text and binary framing, the JSON and MessagePack hub protocols |
//! | [`service`] | the server-connection protocol between app servers and the relay (the Azure SignalR service protocol) |
//! | [`classic`] | classic ASP.NET SignalR 2.x: negotiate, query parameters, the persistent-response envelope, hub messages |
//! | [`auth`] | connection strings and HS256/HS512 JWTs |
//! | [`framing`] | incremental, bounded frame decoders shared by the binary protocols |
//! | [`websocket`] | RFC 6455 framing on the server's side: a decoder that holds no buffer between frames, and frame headers written beside their payloads |
//!
//! # State machines
//!
//! The state machines share one shape: `handle_*` methods take input and `now`, `poll_*`
//! methods hand out what to send and when to wake up; drain them after every input.
//!
//! # Decoders
//!
//! Every decoder follows the same rules:
//! - It is **bounded**: sizes are checked against a configurable limit *before* anything is
//!   allocated, and collection lengths are checked against the bytes actually present.
//! - It is **incremental** where the input is a stream: the frame decoders in [`framing`]
//!   accept bytes in any chunking, answer "need more" (`Ok(None)`) for a partial frame, and
//!   never re-scan bytes they have already looked at.
//! - It **never panics** on any input, and returns a typed error instead.
//! - It **round-trips** with its encoder: `decode(encode(m)) == m`.
#![cfg_attr(not(fuzzing), warn(missing_docs))]
#![forbid(unsafe_code)]

pub mod app;
pub mod aspnetcore;
pub mod auth;
pub mod classic;
pub mod framing;
pub mod http1;
pub(crate) mod msgpack;
pub mod odata;
pub mod relay;
pub mod service;
pub mod varint;
pub mod websocket;

pub use msgpack::MsgPackError;

#[cfg(feature = "__fuzz")]
#[doc(hidden)]
pub mod fuzzing;
