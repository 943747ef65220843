//! What a hub asks of a server connection: the commands its task takes, and the jobs its
//! clients' workers run. Shared by the hubs and the connections, which otherwise know
//! nothing of each other's insides.

use bytes::Bytes;
use futures_channel::{mpsc, oneshot};
use signalr_relay_core::aspnetcore::{HubMessage, Invocation, RawValue};
use signalr_relay_core::service::{AckStatus, ServiceMessage};

/// Commands for a connection task.
pub(crate) enum ConnCommand {
    /// A hub message for one client, encoded in its protocol by the connection.
    Message {
        connection_id: String,
        message: HubMessage,
    },
    /// Bytes already framed in the client's protocol.
    Frame { connection_id: String, frame: Bytes },
    /// A service message.
    Service(ServiceMessage),
    /// An ack-able service message; the ack id is filled in by the connection.
    WithAck {
        build: Box<dyn FnOnce(i32) -> ServiceMessage + Send>,
        reply: oneshot::Sender<AckStatus>,
    },
    /// Close a client.
    CloseClient {
        connection_id: String,
        error: Option<String>,
    },
}

pub(crate) type ConnTx = mpsc::UnboundedSender<ConnCommand>;

/// An invocation queued for a client's worker, with the channel of its upload stream (set
/// up as the invocation arrived, so that no item can overtake it).
pub(crate) struct Job {
    pub(crate) invocation: Invocation,
    pub(crate) upload: Option<mpsc::UnboundedReceiver<UploadItem>>,
}

/// One item of an upload stream, or the error the client ended it with.
pub(crate) type UploadItem = Result<RawValue, super::HubError>;
