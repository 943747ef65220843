//! The relay's own hub endpoint, for the clients of a hub without an app server (serverless
//! mode, and classic mode's hubs that have none).
//!
//! It is a server connection of the hub with no socket behind it: clients are mapped to it as
//! to an app server's, and it hears what an app server would (OpenConnection, the handshake
//! and the client's frames in ConnectionData, CloseConnection), through the same outputs;
//! [`Outputs`](super::output::Outputs) sets them aside, and the relay answers them here after
//! each input. So mapping, fan-out, groups, closes, stateful reconnect and the counters are
//! the same code for serverless clients as for everyone else. It answers the handshake, and
//! sends what clients do upstream (`upstream.rs`): their arrival, their invocations, their
//! leaving. An invocation that no upstream template matches is ignored, as Azure ignores it.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;

use super::directory::HubId;
use super::upstream::{self, Answer, Caller, UpstreamFailure, UpstreamRequest, Waiting};
use super::{ConnHandle, Relay, ServiceMode};
use crate::aspnetcore::{Completion, CompletionResult, HubMessage, HubProtocol};
use crate::framing::BinaryFrameDecoder;
use crate::service::{self, ServiceMessage};

/// The app-server id the endpoint goes by (on the status page, in logs).
pub(crate) const SERVER_ID: &str = "(serverless)";

/// Clients the endpoint serves, and its connection in each hub.
#[derive(Debug, Default)]
pub(crate) struct Serverless {
    /// The endpoint of each hub that has one.
    hubs: BTreeMap<HubId, ConnHandle>,
    /// Its clients, by connection id.
    clients: BTreeMap<String, Served>,
    /// Where clients' events go.
    pub(crate) settings: upstream::UpstreamSettings,
    /// Upstream requests not answered yet.
    pending: upstream::Pending,
    /// How many of those each hub has.
    pending_by_hub: BTreeMap<HubId, usize>,
}

/// One client of the endpoint.
#[derive(Debug)]
struct Served {
    protocol: HubProtocol,
    /// Its handshake was answered.
    open: bool,
    caller: Caller,
}

impl Relay {
    /// The hub a new client of `name` goes to: one with an app server; else, unless the relay
    /// is in default mode, the hub's serverless endpoint (made on first use).
    pub(super) fn hub_for_clients(&mut self, now: Instant, name: &str) -> Option<HubId> {
        if let Some(hub) = self.servers.available_hub(&self.directory, name) {
            return Some(hub);
        }
        if self.config.service_mode == ServiceMode::Default {
            return None;
        }
        let hub = self.directory.intern(name);
        if !self.serverless.hubs.contains_key(&hub) {
            let conn = self.handles.next();
            self.servers.add_internal(now, conn, hub);
            self.directory.add_server(hub, conn);
            self.out.set_internal(conn);
            self.serverless.hubs.insert(hub, conn);
        }
        Some(hub)
    }

    /// Answers what was sent to the serverless endpoints since the last input: call after
    /// every input.
    pub(super) fn serve_serverless(&mut self, now: Instant) {
        // Bounded: each answer is a client's, and a client's input is finite.
        while let Some((conn, data)) = self.out.take_internal() {
            let mut frames = BinaryFrameDecoder::new(usize::MAX);
            frames.push(&data);
            while let Ok(Some(frame)) = frames.next_frame() {
                if let Ok(msg) = ServiceMessage::parse(&frame) {
                    self.serverless_message(now, conn, msg);
                }
            }
        }
    }

    fn serverless_message(&mut self, now: Instant, conn: ConnHandle, msg: ServiceMessage) {
        let Some(hub) = self.servers.get(conn).map(|s| s.hub) else {
            return;
        };
        match msg {
            ServiceMessage::OpenConnection(open) => {
                // The user as the relay took it from the client's token.
                let user = self
                    .directory
                    .connection(&open.connection_id)
                    .and_then(|c| self.clients.map.get(&c))
                    .and_then(|c| c.user_id.as_deref().map(str::to_owned));
                let caller = Caller::new(
                    &self.config.access_keys,
                    &open.connection_id,
                    user,
                    &open.claims,
                    &open.query_string,
                );
                let served = Served {
                    protocol: open.hub_protocol(),
                    open: false,
                    caller,
                };
                self.serverless.clients.insert(open.connection_id, served);
            }
            ServiceMessage::ConnectionData(data) => {
                let Some(served) = self.serverless.clients.get_mut(&data.connection_id) else {
                    return;
                };
                if !served.open {
                    // The first data is the handshake request; the relay checked it already.
                    served.open = true;
                    let answer = ServiceMessage::ConnectionData(service::ConnectionData {
                        connection_id: data.connection_id.clone(),
                        payload: Bytes::from_static(b"{}\x1e"),
                        ext: service::Ext::default(),
                    });
                    self.server_message(now, conn, hub, answer);
                    let body = Bytes::from_static(br#"{"type":10}"#);
                    let id = data.connection_id;
                    self.send_upstream(now, hub, &id, ("connections", "connected"), body, None);
                    return;
                }
                let protocol = served.protocol;
                let mut decoder = protocol.frame_decoder(usize::MAX);
                decoder.push(&data.payload);
                while let Ok(Some(frame)) = decoder.next_frame() {
                    // Invocations go upstream (streaming ones too); pings, completions and
                    // the rest need nothing.
                    let (target, invocation_id) = match protocol.parse_message(&frame) {
                        Ok(HubMessage::Invocation(i)) => (i.target, i.invocation_id),
                        Ok(HubMessage::StreamInvocation(i)) => (i.target, i.invocation_id),
                        _ => continue,
                    };
                    let id = &data.connection_id;
                    let event = ("messages", target.as_str());
                    self.send_upstream(
                        now,
                        hub,
                        id,
                        event,
                        frame,
                        invocation_id.map(|i| (i, protocol)),
                    );
                }
            }
            ServiceMessage::CloseConnection(close) => {
                if self.serverless.clients.contains_key(&close.connection_id) {
                    let mut body = serde_json::json!({ "Type": 11 });
                    if !close.error_message.is_empty() {
                        body["Error"] = close.error_message.clone().into();
                    }
                    let body = Bytes::from(body.to_string());
                    let event = ("connections", "disconnected");
                    self.send_upstream(now, hub, &close.connection_id, event, body, None);
                }
                self.serverless.clients.remove(&close.connection_id);
            }
            _ => {}
        }
    }
}

impl Relay {
    /// Where serverless clients' events go from now on (the settings file was read again).
    pub fn set_upstream(&mut self, settings: upstream::UpstreamSettings) {
        self.serverless.settings = settings;
    }

    /// The upstream's answer to request `id` (`Ok((status, body))`), or why there is none.
    /// An invocation's client gets its completion; any other request's answer only counts.
    pub fn handle_upstream_response(
        &mut self,
        now: Instant,
        id: u64,
        result: Result<(u16, Bytes), UpstreamFailure>,
    ) {
        let Some(waiting) = self.serverless.pending.map.remove(&id) else {
            return;
        };
        if let Some(n) = self.serverless.pending_by_hub.get_mut(&waiting.hub) {
            *n = n.saturating_sub(1);
        }
        let ok = matches!(&result, Ok((status, _)) if (200..300).contains(status));
        if ok {
            self.out.stats.upstream_succeeded += 1;
        } else {
            self.out.stats.upstream_failed += 1;
        }
        if let Some((invocation_id, protocol)) = waiting.invocation {
            let reply = match upstream::answer(result) {
                Answer::Verbatim(body) => body,
                Answer::Completion(error) => completion(protocol, invocation_id, error),
            };
            self.reply_from_endpoint(now, waiting.hub, waiting.connection_id, reply);
        }
        self.settle(now);
    }

    /// Bytes for a serverless client, as its endpoint sends them.
    fn reply_from_endpoint(
        &mut self,
        now: Instant,
        hub: HubId,
        connection_id: String,
        payload: Bytes,
    ) {
        let (Some(&conn), true) = (
            self.serverless.hubs.get(&hub),
            self.serverless.clients.contains_key(&connection_id),
        ) else {
            return;
        };
        let data = ServiceMessage::ConnectionData(service::ConnectionData {
            connection_id,
            payload,
            ext: service::Ext::default(),
        });
        self.server_message(now, conn, hub, data);
    }

    /// Sends a client's event upstream, if a template matches it; for an invocation that
    /// cannot be sent (too many of the hub's are waiting), the client gets an error
    /// completion at once.
    fn send_upstream(
        &mut self,
        now: Instant,
        hub: HubId,
        connection_id: &str,
        (category, event): (&str, &str),
        body: Bytes,
        invocation: Option<(String, HubProtocol)>,
    ) {
        let hub_name = self.directory.name(hub).to_owned();
        let Some(url) = self.serverless.settings.url(&hub_name, category, event) else {
            return;
        };
        let Some(served) = self.serverless.clients.get(connection_id) else {
            return;
        };
        let (protocol, headers) = (
            served.protocol,
            upstream::headers(&hub_name, category, event, connection_id, &served.caller),
        );
        let waiting = self.serverless.pending_by_hub.entry(hub).or_default();
        if *waiting >= self.config.max_upstream_pending {
            self.out.stats.upstream_dropped += 1;
            if let Some((invocation_id, protocol)) = invocation {
                let busy = Some("Invocation failed, the upstream is busy.".to_owned());
                let reply = completion(protocol, invocation_id, busy);
                self.reply_from_endpoint(now, hub, connection_id.to_owned(), reply);
            }
            return;
        }
        *waiting += 1;
        let content_type = match protocol {
            _ if category == "connections" => "application/json",
            HubProtocol::Json => "application/json",
            HubProtocol::MessagePack | HubProtocol::BlazorPack => "application/x-msgpack",
        };
        let id = self.serverless.pending.next_id();
        let attempts = if category == "connections" { 3 } else { 1 };
        self.serverless.pending.map.insert(
            id,
            Waiting {
                hub,
                connection_id: connection_id.to_owned(),
                invocation,
            },
        );
        self.out.upstream(UpstreamRequest {
            id,
            url,
            content_type,
            headers,
            body,
            timeout: self.config.upstream_timeout,
            attempts,
            max_response: self.config.max_upstream_response,
        });
    }
}

/// A completion for `invocation_id`, empty or with an error, framed in `protocol`.
fn completion(protocol: HubProtocol, invocation_id: String, error: Option<String>) -> Bytes {
    let message = HubMessage::Completion(Completion {
        headers: Default::default(),
        invocation_id,
        result: error.map_or(CompletionResult::Void, CompletionResult::Error),
    });
    let mut out = Vec::new();
    let _ = protocol.write_message(&message, &mut out);
    Bytes::from(out)
}
