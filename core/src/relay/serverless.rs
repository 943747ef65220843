//! The relay's own hub endpoint, for the clients of a hub without an app server (serverless
//! mode, and classic mode's hubs that have none).
//!
//! It is a server connection of the hub with no socket behind it: clients are mapped to it as
//! to an app server's, and it hears what an app server would (OpenConnection, the handshake
//! and the client's frames in ConnectionData, CloseConnection), through the same outputs;
//! [`Outputs`](super::output::Outputs) sets them aside, and the relay answers them here after
//! each input. So mapping, fan-out, groups, closes, stateful reconnect and the counters are
//! the same code for serverless clients as for everyone else. It answers the handshake, and
//! what clients send is for the upstream (a client invoking a method with no upstream is
//! ignored, as Azure ignores it).

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;

use super::directory::HubId;
use super::{ConnHandle, Relay, ServiceMode};
use crate::aspnetcore::HubProtocol;
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
}

/// One client of the endpoint.
#[derive(Debug)]
struct Served {
    protocol: HubProtocol,
    /// Its handshake was answered.
    open: bool,
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
                let protocol = open
                    .ext
                    .protocol
                    .as_deref()
                    .and_then(HubProtocol::from_name)
                    .unwrap_or(HubProtocol::Json);
                self.serverless.clients.insert(
                    open.connection_id,
                    Served {
                        protocol,
                        open: false,
                    },
                );
            }
            ServiceMessage::ConnectionData(data) => {
                let Some(served) = self.serverless.clients.get_mut(&data.connection_id) else {
                    return;
                };
                if !served.open {
                    // The first data is the handshake request; the relay checked it already.
                    served.open = true;
                    let answer = ServiceMessage::ConnectionData(service::ConnectionData {
                        connection_id: data.connection_id,
                        payload: Bytes::from_static(b"{}\x1e"),
                        ext: service::Ext::default(),
                    });
                    self.server_message(now, conn, hub, answer);
                    return;
                }
                let protocol = served.protocol;
                let mut decoder = protocol.frame_decoder(usize::MAX);
                decoder.push(&data.payload);
                while let Ok(Some(frame)) = decoder.next_frame() {
                    // Hub invocations are the upstream's; pings, and the rest, need nothing.
                    let _ = protocol.parse_message(&frame);
                }
            }
            ServiceMessage::CloseConnection(close) => {
                self.serverless.clients.remove(&close.connection_id);
            }
            _ => {}
        }
    }
}
