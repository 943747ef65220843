//! Hubs: methods, the per-call [`Context`], and the ways to reach clients.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use futures_channel::{mpsc, oneshot};
use futures_util::future::AbortHandle;
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use signalr_relay_core::app::ClientInfo;
use signalr_relay_core::aspnetcore::{HubMessage, HubProtocol, RawValue};
use signalr_relay_core::service::{self, AckStatus, Payloads, ServiceMessage};

use super::codec::{
    decode_args, encode_value, invocation_frame, invocation_payloads, invocation_payloads_with_id,
};
use super::command::{ConnCommand, ConnTx, Job};
use super::HubRuntime;
use crate::glue::BoxFuture;

/// An error a hub method reports to its caller (as the Completion's `error`). Classic ASP.NET
/// SignalR clients get it as a `HubException`, with its [data](Self::with_data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubError {
    message: String,
    data: Option<serde_json::Value>,
}

impl HubError {
    /// An error with this message, sent to the caller as-is.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            data: None,
        }
    }

    /// The error with data for classic clients (a classic `HubException`'s `ErrorData`, their
    /// `error.data`). ASP.NET Core clients get the message only, as from ASP.NET Core.
    #[must_use]
    pub fn with_data(mut self, data: serde_json::Value) -> Self {
        self.data = Some(data);
        self
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The data, if any.
    pub fn data(&self) -> Option<&serde_json::Value> {
        self.data.as_ref()
    }
}

impl std::fmt::Display for HubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HubError {}

/// Why a client result ([`Target::invoke`]) did not arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvokeError {
    /// The client did not answer in time.
    Timeout,
    /// The client went away first.
    Disconnected(String),
    /// The client answered with an error (or had no handler for the method).
    Client(String),
    /// The client's result could not be decoded into the expected type.
    InvalidResult(String),
    /// `invoke` needs exactly one connection (`caller()` or `client(id)`), and a live relay
    /// connection.
    Unsupported(&'static str),
}

impl std::fmt::Display for InvokeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("the client did not return a result in time"),
            Self::Disconnected(e) => write!(f, "the client disconnected: {e}"),
            Self::Client(e) => write!(f, "the client returned an error: {e}"),
            Self::InvalidResult(e) => write!(f, "the client's result is invalid: {e}"),
            Self::Unsupported(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for InvokeError {}

impl From<InvokeError> for HubError {
    fn from(e: InvokeError) -> Self {
        Self::new(e.to_string())
    }
}

/// A client result being awaited.
pub(crate) struct PendingResult {
    /// The client asked: the only one whose completion counts.
    pub(crate) connection_id: String,
    /// The client's protocol, when this app server knows it.
    pub(crate) protocol: HubProtocol,
    /// The result, in the protocol it is encoded in.
    pub(crate) reply: oneshot::Sender<Result<(HubProtocol, Option<RawValue>), InvokeError>>,
    /// Relays asked that have not answered: the invocation goes to every relay when the
    /// client is not this app server's, and all but one say they do not know it.
    pub(crate) unanswered: usize,
    /// The most telling error a relay answered so far.
    pub(crate) error: Option<String>,
}

/// Forgets a client result that is no longer awaited (its `invoke` was dropped, or ended).
struct Awaiting<'a> {
    hub: &'a HubRuntime,
    invocation_id: &'a str,
}

impl Drop for Awaiting<'_> {
    fn drop(&mut self) {
        lock(&self.hub.results).remove(self.invocation_id);
    }
}

/// What a method returns once erased: `None` for a void method, else the encoded result.
pub type MethodResult = Result<Option<RawValue>, HubError>;

type BoxStream = Pin<Box<dyn Stream<Item = Result<RawValue, HubError>> + Send>>;
type InvokeFn = Arc<dyn Fn(Context, Vec<RawValue>) -> BoxFuture<MethodResult> + Send + Sync>;
type StreamFn = Arc<dyn Fn(Context, Vec<RawValue>) -> Result<BoxStream, HubError> + Send + Sync>;
type UploadFn = Arc<
    dyn Fn(Context, Vec<RawValue>, UploadStream<RawValue>) -> BoxFuture<MethodResult> + Send + Sync,
>;
type EventFn = Arc<dyn Fn(Context) -> BoxFuture<()> + Send + Sync>;

#[derive(Clone)]
pub(crate) enum Method {
    Invoke(InvokeFn),
    Stream(StreamFn),
    Upload(UploadFn),
}

/// A hub: named methods plus connect and disconnect handlers. Build one with
/// [`HubBuilder`].
#[derive(Clone)]
pub struct Hub {
    name: String,
    methods: BTreeMap<String, Method>,
    on_connected: Option<EventFn>,
    on_disconnected: Option<EventFn>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("name", &self.name)
            .field("methods", &self.methods.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Hub {
    /// The hub's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn method(&self, name: &str) -> Option<&Method> {
        self.methods.get(&name.to_ascii_lowercase())
    }

    pub(crate) fn on_connected(&self) -> Option<&EventFn> {
        self.on_connected.as_ref()
    }

    pub(crate) fn on_disconnected(&self) -> Option<&EventFn> {
        self.on_disconnected.as_ref()
    }
}

/// A method's result in the caller's protocol; `()` is a void method (no result at all).
fn encode_result<R: Serialize + 'static>(protocol: HubProtocol, result: &R) -> MethodResult {
    if std::any::TypeId::of::<R>() == std::any::TypeId::of::<()>() {
        Ok(None)
    } else {
        encode_value(protocol, result).map(Some)
    }
}

/// Builds a [`Hub`]. Method names match case-insensitively, as in ASP.NET Core.
pub struct HubBuilder {
    hub: Hub,
}

impl HubBuilder {
    /// A hub called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            hub: Hub {
                name: name.into(),
                methods: BTreeMap::new(),
                on_connected: None,
                on_disconnected: None,
            },
        }
    }

    /// A method with typed arguments `A` (a tuple, or `()`) and result `R` (`()` for a void
    /// method).
    pub fn method<A, R, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Context, A) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HubError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let erased: InvokeFn = Arc::new(move |ctx: Context, args: Vec<RawValue>| {
            let f = f.clone();
            Box::pin(async move {
                let protocol = ctx.protocol();
                let args: A = decode_args(protocol, &args)?;
                let result = f(ctx, args).await?;
                encode_result(protocol, &result)
            }) as BoxFuture<MethodResult>
        });
        self.hub
            .methods
            .insert(name.to_ascii_lowercase(), Method::Invoke(erased));
        self
    }

    /// A method that sees its arguments, and returns its result, encoded in the caller's
    /// protocol (for pass-through methods such as echoes of arbitrary values).
    pub fn method_raw<F, Fut>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(Context, Vec<RawValue>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = MethodResult> + Send + 'static,
    {
        let erased: InvokeFn =
            Arc::new(move |ctx, args| Box::pin(f(ctx, args)) as BoxFuture<MethodResult>);
        self.hub
            .methods
            .insert(name.to_ascii_lowercase(), Method::Invoke(erased));
        self
    }

    /// A server-to-client stream: each item goes out as a StreamItem, then a Completion. If
    /// the caller cancels, the stream is dropped.
    pub fn stream<A, T, S, F>(mut self, name: &str, f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        T: Serialize + Send + 'static,
        S: Stream<Item = Result<T, HubError>> + Send + 'static,
        F: Fn(Context, A) -> Result<S, HubError> + Send + Sync + 'static,
    {
        let erased: StreamFn = Arc::new(move |ctx: Context, args: Vec<RawValue>| {
            let protocol = ctx.protocol();
            let args: A = decode_args(protocol, &args)?;
            let stream = f(ctx, args)?;
            Ok(
                Box::pin(stream.map(move |item| item.and_then(|v| encode_value(protocol, &v))))
                    as BoxStream,
            )
        });
        self.hub
            .methods
            .insert(name.to_ascii_lowercase(), Method::Stream(erased));
        self
    }

    /// A method that takes one client-to-server stream of `T` after its arguments `A`.
    pub fn upload<A, T, R, F, Fut>(mut self, name: &str, f: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        T: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Context, A, UploadStream<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, HubError>> + Send + 'static,
    {
        let f = Arc::new(f);
        let erased: UploadFn = Arc::new(
            move |ctx: Context, args: Vec<RawValue>, raw: UploadStream<RawValue>| {
                let f = f.clone();
                Box::pin(async move {
                    let protocol = ctx.protocol();
                    let args: A = decode_args(protocol, &args)?;
                    let typed = UploadStream {
                        inner: Box::pin(raw.map(move |item| {
                            item.and_then(|v| decode_args::<(T,)>(protocol, &[v]).map(|(t,)| t))
                        })),
                    };
                    let result = f(ctx, args, typed).await?;
                    encode_result(protocol, &result)
                }) as BoxFuture<MethodResult>
            },
        );
        self.hub
            .methods
            .insert(name.to_ascii_lowercase(), Method::Upload(erased));
        self
    }

    /// Runs when a client has connected, before its first invocation.
    pub fn on_connected<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hub.on_connected = Some(Arc::new(move |ctx| Box::pin(f(ctx)) as BoxFuture<()>));
        self
    }

    /// Runs when a client has gone.
    pub fn on_disconnected<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.hub.on_disconnected = Some(Arc::new(move |ctx| Box::pin(f(ctx)) as BoxFuture<()>));
        self
    }

    /// The hub.
    pub fn build(self) -> Hub {
        self.hub
    }
}

/// Items a client uploads, ending when the client completes the stream. A client that ends
/// it with an error (`Completion` with `error`) gives that error as the last item, as a
/// `HubError` with the client's text, as ASP.NET Core hands a hub method a `HubException`.
pub struct UploadStream<T> {
    inner: Pin<Box<dyn Stream<Item = Result<T, HubError>> + Send>>,
}

impl<T> UploadStream<T> {
    pub(crate) fn from_channel(
        rx: mpsc::UnboundedReceiver<super::command::UploadItem>,
    ) -> UploadStream<RawValue> {
        UploadStream {
            inner: Box::pin(rx),
        }
    }
}

impl<T> Stream for UploadStream<T> {
    type Item = Result<T, HubError>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// A client, app-server side.
pub(crate) struct ClientEntry {
    pub(crate) info: ClientInfo,
    /// The endpoint (relay) the client is on, and the server connection that serves it.
    pub(crate) endpoint: usize,
    pub(crate) conn: ConnTx,
    pub(crate) queue: mpsc::UnboundedSender<Job>,
    /// Invocations queued or running.
    pub(crate) invocations: std::sync::atomic::AtomicUsize,
    pub(crate) uploads: Mutex<BTreeMap<String, mpsc::UnboundedSender<super::command::UploadItem>>>,
    pub(crate) streams: Mutex<BTreeMap<String, AbortHandle>>,
}

/// What a hub method, or a connect/disconnect handler, runs with.
#[derive(Clone)]
pub struct Context {
    pub(crate) hub: Arc<HubRuntime>,
    pub(crate) client: Arc<ClientEntry>,
    /// The invocation a hub method runs for (`None` in connect/disconnect handlers).
    pub(crate) call: Option<Arc<Call>>,
}

/// One invocation: its id, and the caller's hub state (classic clients' `S`).
pub(crate) struct Call {
    pub(crate) id: Option<String>,
    /// Whether the caller is a classic client (the relay gives its invocations a state).
    pub(crate) classic: bool,
    /// The state, and whether the method changed it.
    pub(crate) state: Mutex<(serde_json::Map<String, serde_json::Value>, bool)>,
}

impl Call {
    pub(crate) fn new(
        id: Option<String>,
        headers: &signalr_relay_core::aspnetcore::Headers,
    ) -> Self {
        let state_header = headers.get(signalr_relay_core::relay::STATE_HEADER);
        let state = state_header
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        Self {
            id,
            classic: state_header.is_some(),
            state: Mutex::new((state, false)),
        }
    }

    /// The state to send back with the result, when the method changed it.
    pub(crate) fn changed_state(&self) -> Option<String> {
        let state = lock(&self.state);
        state
            .1
            .then(|| serde_json::Value::Object(state.0.clone()).to_string())
    }
}

impl Context {
    /// The caller's connection id.
    pub fn connection_id(&self) -> &str {
        &self.client.info.connection_id
    }

    /// The caller's user id, from its token.
    pub fn user_id(&self) -> Option<&str> {
        self.client.info.user_id()
    }

    /// The caller's claims.
    pub fn claims(&self) -> &[(String, String)] {
        &self.client.info.claims
    }

    /// A query parameter of the caller's connect request.
    pub fn query(&self, name: &str) -> Option<String> {
        self.client.info.query_param(name)
    }

    /// A request header of the caller's connect request.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.client
            .info
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.first())
            .map(String::as_str)
    }

    /// The id of this app server (its [`AppOptions::server_id`](crate::sdk::AppOptions)).
    pub fn server_id(&self) -> &str {
        &self.hub.server_id
    }

    /// The caller's connect query, as it sent it (with its leading `?`, without the token).
    pub fn query_string(&self) -> &str {
        &self.client.info.query
    }

    /// The caller's address: the first `X-Forwarded-For` address the relay gives (as the
    /// Azure SDK reads it), which is the socket's peer or what a trusted proxy forwarded.
    pub fn client_address(&self) -> Option<std::net::IpAddr> {
        self.header("X-Forwarded-For")?
            .split(',')
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// The transport the caller uses (`WebSockets`, `ServerSentEvents` or `LongPolling`).
    pub fn transport(&self) -> &str {
        self.header("Asrs-Transport").unwrap_or("WebSockets")
    }

    /// The caller's hub protocol.
    pub fn protocol(&self) -> HubProtocol {
        self.client.info.protocol
    }

    /// The clients of this hub, as seen from the caller.
    pub fn clients(&self) -> Clients {
        Clients {
            hub: self.hub.clone(),
            caller: Some(self.client.clone()),
        }
    }

    /// Group membership.
    pub fn groups(&self) -> Groups {
        Groups {
            hub: self.hub.clone(),
            caller: Some(self.client.clone()),
        }
    }

    /// Closes the caller's connection: it gets a Close message (no reconnect) and goes.
    pub fn abort(&self) {
        let _ = self.client.conn.unbounded_send(ConnCommand::CloseClient {
            connection_id: self.client.info.connection_id.clone(),
            error: None,
        });
    }

    /// A value of the caller's hub state. Classic ASP.NET SignalR clients send their hub
    /// proxy's `state` with each invocation; other clients have none.
    pub fn state(&self, key: &str) -> Option<serde_json::Value> {
        let call = self.call.as_ref()?;
        lock(&call.state).0.get(key).cloned()
    }

    /// Sets a value of the caller's hub state: a classic client's proxy gets it with the
    /// method's result.
    pub fn set_state(&self, key: &str, value: serde_json::Value) {
        if let Some(call) = &self.call {
            let mut state = lock(&call.state);
            state.0.insert(key.to_owned(), value);
            state.1 = true;
        }
    }

    /// Reports progress of the running method to the caller (a classic client's
    /// `.progress()` callback).
    ///
    /// # Errors
    /// When the value cannot be encoded.
    pub fn progress<T: Serialize>(&self, value: &T) -> Result<(), HubError> {
        let Some(id) = self.call.as_ref().and_then(|c| c.id.clone()) else {
            return Ok(());
        };
        let item = encode_value(self.protocol(), value)?;
        self.send_message(HubMessage::StreamItem(
            signalr_relay_core::aspnetcore::StreamItem {
                headers: Default::default(),
                invocation_id: id,
                item,
            },
        ));
        Ok(())
    }

    pub(crate) fn send_message(&self, message: HubMessage) {
        let _ = self.client.conn.unbounded_send(ConnCommand::Message {
            connection_id: self.client.info.connection_id.clone(),
            message,
        });
    }
}

/// The ways to address clients; get one from [`Context::clients`] in a hub method, or from
/// [`HubContext::clients`](crate::sdk::HubContext::clients) anywhere else (there is no
/// caller then: [`caller`](Self::caller) fails, and [`others`](Self::others) is everyone).
pub struct Clients {
    pub(crate) hub: Arc<HubRuntime>,
    pub(crate) caller: Option<Arc<ClientEntry>>,
}

enum TargetKind {
    All {
        excluded: Vec<String>,
    },
    Caller,
    Connections(Vec<String>),
    Users(Vec<String>),
    Group {
        group: String,
        excluded: Vec<String>,
    },
    Groups(Vec<String>),
}

/// Some clients, to [`send`](Target::send) to.
pub struct Target {
    hub: Arc<HubRuntime>,
    caller: Option<Arc<ClientEntry>>,
    kind: TargetKind,
}

impl Clients {
    fn target(&self, kind: TargetKind) -> Target {
        Target {
            hub: self.hub.clone(),
            caller: self.caller.clone(),
            kind,
        }
    }

    /// Every client of the hub.
    pub fn all(&self) -> Target {
        self.target(TargetKind::All {
            excluded: Vec::new(),
        })
    }

    /// Every client but those listed.
    pub fn all_except(&self, excluded: &[&str]) -> Target {
        self.target(TargetKind::All {
            excluded: excluded.iter().map(|s| (*s).to_owned()).collect(),
        })
    }

    /// The caller.
    pub fn caller(&self) -> Target {
        self.target(TargetKind::Caller)
    }

    /// Every client but the caller.
    pub fn others(&self) -> Target {
        self.target(TargetKind::All {
            excluded: self.caller_id().into_iter().collect(),
        })
    }

    fn caller_id(&self) -> Option<String> {
        self.caller.as_ref().map(|c| c.info.connection_id.clone())
    }

    /// One connection.
    pub fn client(&self, connection_id: &str) -> Target {
        self.target(TargetKind::Connections(vec![connection_id.to_owned()]))
    }

    /// Several connections.
    pub fn clients(&self, connection_ids: &[&str]) -> Target {
        self.target(TargetKind::Connections(
            connection_ids.iter().map(|s| (*s).to_owned()).collect(),
        ))
    }

    /// Every connection of a user.
    pub fn user(&self, user_id: &str) -> Target {
        self.target(TargetKind::Users(vec![user_id.to_owned()]))
    }

    /// Every connection of several users.
    pub fn users(&self, user_ids: &[&str]) -> Target {
        self.target(TargetKind::Users(
            user_ids.iter().map(|s| (*s).to_owned()).collect(),
        ))
    }

    /// Every member of a group.
    pub fn group(&self, group: &str) -> Target {
        self.target(TargetKind::Group {
            group: group.to_owned(),
            excluded: Vec::new(),
        })
    }

    /// Every member of several groups.
    pub fn groups(&self, groups: &[&str]) -> Target {
        self.target(TargetKind::Groups(
            groups.iter().map(|s| (*s).to_owned()).collect(),
        ))
    }

    /// Every member of a group but those listed.
    pub fn group_except(&self, group: &str, excluded: &[&str]) -> Target {
        self.target(TargetKind::Group {
            group: group.to_owned(),
            excluded: excluded.iter().map(|s| (*s).to_owned()).collect(),
        })
    }

    /// Every member of a group but the caller.
    pub fn others_in_group(&self, group: &str) -> Target {
        self.target(TargetKind::Group {
            group: group.to_owned(),
            excluded: self.caller_id().into_iter().collect(),
        })
    }
}

impl Target {
    /// Invokes `method` with `args` (a tuple, or `()`) on every targeted client. Messages to
    /// one client arrive in the order they were sent from one context.
    ///
    /// # Errors
    /// When the arguments cannot be serialized, the app server has no connection to the
    /// relay, or the target is the caller and there is none (outside a hub method).
    pub fn send<A: Serialize + ?Sized>(&self, method: &str, args: &A) -> Result<(), HubError> {
        let offline = || HubError::new("No connection to the relay.");
        let caller = self.caller.as_deref();
        if let TargetKind::Caller = self.kind {
            // The caller's own server connection keeps its messages in order with the
            // method's.
            let caller = caller.ok_or_else(no_caller)?;
            let frame = invocation_frame(caller.info.protocol, method, args)?;
            let command = ConnCommand::Frame {
                connection_id: caller.info.connection_id.clone(),
                frame,
            };
            return caller.conn.unbounded_send(command).map_err(|_| offline());
        }
        let routes = match &self.kind {
            TargetKind::Connections(ids) if ids.len() == 1 => self.hub.route_to(&ids[0], caller),
            _ => self.hub.fan_out(caller),
        };
        let message = multicast(&self.kind, invocation_payloads(method, args)?);
        let mut sent = false;
        for conn in routes {
            sent |= conn
                .unbounded_send(ConnCommand::Service(message.clone()))
                .is_ok();
        }
        sent.then_some(()).ok_or_else(offline)
    }
}

impl Target {
    /// Invokes `method` on one client and awaits its result (ASP.NET Core's client results).
    /// The target must be [`Clients::caller`] or [`Clients::client`].
    ///
    /// # Errors
    /// [`InvokeError`]: timeout, disconnect, the client's own error, or an undecodable result.
    pub async fn invoke<A, T>(&self, method: &str, args: &A) -> Result<T, InvokeError>
    where
        A: Serialize + ?Sized,
        T: DeserializeOwned + 'static,
    {
        let connection_id = match (&self.kind, &self.caller) {
            (TargetKind::Caller, Some(caller)) => caller.info.connection_id.clone(),
            (TargetKind::Caller, None) => {
                return Err(InvokeError::Unsupported(
                    "there is no caller outside a hub method",
                ))
            }
            (TargetKind::Connections(ids), _) if ids.len() == 1 => ids[0].clone(),
            _ => {
                return Err(InvokeError::Unsupported(
                    "invoke needs exactly one connection",
                ))
            }
        };
        // The client's own server connection when it is ours, so that nothing needs routing;
        // else every relay, as the client may be on any.
        let local = lock(&self.hub.clients).get(&connection_id).cloned();
        let routes = self.hub.route_to(&connection_id, self.caller.as_deref());
        if routes.is_empty() {
            return Err(InvokeError::Unsupported("no connection to the relay"));
        }
        // Unguessable: only the client asked may answer, and nobody can aim at the id.
        let invocation_id = random_id();
        let payloads = invocation_payloads_with_id(Some(&invocation_id), method, args)
            .map_err(|e| InvokeError::InvalidResult(e.to_string()))?;
        let (reply, result) = oneshot::channel();
        let protocol = local.map_or(HubProtocol::Json, |c| c.info.protocol);
        lock(&self.hub.results).insert(
            invocation_id.clone(),
            PendingResult {
                connection_id: connection_id.clone(),
                protocol,
                reply,
                unanswered: routes.len(),
                error: None,
            },
        );
        let _awaiting = Awaiting {
            hub: &self.hub,
            invocation_id: &invocation_id,
        };
        let message = ServiceMessage::ClientInvocation(service::ClientInvocation {
            invocation_id: invocation_id.clone(),
            connection_id,
            caller_server_id: self.hub.server_id.clone(),
            payloads,
            ext: service::Ext::default(),
        });
        let asked = routes.len();
        let failed = routes
            .into_iter()
            .filter(|conn| {
                conn.unbounded_send(ConnCommand::Service(message.clone()))
                    .is_err()
            })
            .count();
        if failed == asked {
            return Err(InvokeError::Unsupported("no connection to the relay"));
        }
        // A relay that was not asked will not answer.
        self.hub.unanswered_by(&invocation_id, failed, None);
        let timeout = match self.hub.sleeper.get() {
            Some(sleep) => sleep(self.hub.result_timeout),
            None => Box::pin(std::future::pending()),
        };
        let outcome = match futures_util::future::select(result, timeout).await {
            futures_util::future::Either::Left((Ok(outcome), _)) => outcome,
            futures_util::future::Either::Left((Err(_), _)) => Err(InvokeError::Disconnected(
                "the connection to the relay was lost".to_owned(),
            )),
            futures_util::future::Either::Right(((), _)) => Err(InvokeError::Timeout),
        };
        let (protocol, value) = outcome?;
        let raw = value.unwrap_or_else(|| {
            RawValue::new(match protocol {
                HubProtocol::Json => b"null".to_vec(),
                HubProtocol::MessagePack | HubProtocol::BlazorPack => vec![0xc0],
            })
        });
        decode_args::<(T,)>(protocol, &[raw])
            .map(|(t,)| t)
            .map_err(|e| InvokeError::InvalidResult(e.to_string()))
    }
}

fn multicast(kind: &TargetKind, payloads: Payloads) -> ServiceMessage {
    let ext = service::Ext::default();
    match kind {
        TargetKind::All { excluded } => ServiceMessage::BroadcastData(service::BroadcastData {
            excluded_connection_ids: excluded.clone(),
            payloads,
            ext,
        }),
        TargetKind::Caller | TargetKind::Connections(_) => {
            ServiceMessage::MultiConnectionData(service::MultiConnectionData {
                connection_ids: match kind {
                    TargetKind::Connections(ids) => ids.clone(),
                    _ => Vec::new(),
                },
                payloads,
                ext,
            })
        }
        TargetKind::Users(users) if users.len() == 1 => {
            ServiceMessage::UserData(service::UserData {
                user_id: users[0].clone(),
                payloads,
                ext,
            })
        }
        TargetKind::Users(users) => ServiceMessage::MultiUserData(service::MultiUserData {
            user_ids: users.clone(),
            payloads,
            ext,
        }),
        TargetKind::Group { group, excluded } => {
            ServiceMessage::GroupBroadcastData(service::GroupBroadcastData {
                group: group.clone(),
                excluded_connection_ids: excluded.clone(),
                payloads,
                ..service::GroupBroadcastData::default()
            })
        }
        TargetKind::Groups(groups) => {
            ServiceMessage::MultiGroupBroadcastData(service::MultiGroupBroadcastData {
                groups: groups.clone(),
                payloads,
                ext,
            })
        }
    }
}

fn no_caller() -> HubError {
    HubError::new("There is no caller outside a hub method.")
}

/// Group membership; get one from [`Context::groups`] or
/// [`HubContext::groups`](crate::sdk::HubContext::groups).
pub struct Groups {
    pub(crate) hub: Arc<HubRuntime>,
    /// The caller, whose server connection keeps the change in order with its messages.
    pub(crate) caller: Option<Arc<ClientEntry>>,
}

impl Groups {
    /// Sends the message `build` makes (given its ack id) where `connection_id` is: its own
    /// server connection when this app server serves it, else every relay. The connection
    /// exists if any relay says so.
    async fn with_ack(
        &self,
        connection_id: &str,
        build: impl Fn(i32) -> ServiceMessage + Send + Sync + 'static,
    ) -> Result<bool, HubError> {
        let build = Arc::new(build);
        let mut answers = Vec::new();
        for conn in self.hub.route_to(connection_id, self.caller.as_deref()) {
            let (reply, status) = oneshot::channel();
            let build = build.clone();
            let command = ConnCommand::WithAck {
                build: Box::new(move |ack_id| build(ack_id)),
                reply,
            };
            if conn.unbounded_send(command).is_ok() {
                answers.push(status);
            }
        }
        if answers.is_empty() {
            return Err(HubError::new("No connection to the relay."));
        }
        let mut outcome = Ok(false);
        for status in answers {
            match status.await {
                Ok(AckStatus::Ok) => outcome = Ok(true),
                Ok(AckStatus::NotFound) => {}
                Ok(other) => {
                    if outcome == Ok(false) {
                        outcome = Err(HubError::new(format!(
                            "The relay could not complete the operation: {other:?}"
                        )));
                    }
                }
                Err(_) => {
                    if outcome == Ok(false) {
                        outcome = Err(HubError::new("The connection to the relay was lost."));
                    }
                }
            }
        }
        outcome
    }

    /// Adds a connection to a group. Returns whether the connection exists.
    ///
    /// # Errors
    /// When the relay cannot be reached.
    pub async fn add(&self, connection_id: &str, group: &str) -> Result<bool, HubError> {
        let (id, group) = (connection_id.to_owned(), group.to_owned());
        self.with_ack(connection_id, move |ack_id| {
            ServiceMessage::JoinGroupWithAck(service::GroupMembershipWithAck {
                connection_id: id.clone(),
                group: Some(group.clone()),
                ack_id,
                ext: service::Ext::default(),
            })
        })
        .await
    }

    /// Removes a connection from a group. Returns whether the connection exists.
    ///
    /// # Errors
    /// When the relay cannot be reached.
    pub async fn remove(&self, connection_id: &str, group: &str) -> Result<bool, HubError> {
        let (id, group) = (connection_id.to_owned(), group.to_owned());
        self.with_ack(connection_id, move |ack_id| {
            ServiceMessage::LeaveGroupWithAck(service::GroupMembershipWithAck {
                connection_id: id.clone(),
                group: Some(group.clone()),
                ack_id,
                ext: service::Ext::default(),
            })
        })
        .await
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// 128 random bits, hex: an id with no structure to guess (invocations, token ids).
pub(crate) fn random_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        tracing::error!("no OS randomness; invocation ids would be predictable");
        std::process::abort();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
