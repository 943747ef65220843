//! Client connections: what every client has, its mapping to a server connection (its
//! [`Link`]), and its [`Dialect`]: ASP.NET Core, or classic.
//!
//! The relay looks a client up once per input and hands it the input with [`Client::handle`];
//! the client answers with a [`Handled`]: a response, if the input was a request, and what the
//! relay must do next ([`Next`]): nothing, map the client to a server connection, or end it.
//! Deliveries from the app server ([`Client::deliver`], [`Client::deliver_message`]) fail
//! with the [`Ending`] the client earned.

mod aspnetcore;
pub(crate) mod classic;
mod stateful;
mod transport;

use std::cell::OnceCell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

pub(crate) use self::classic::{
    body_limit as classic_body_limit, negotiate_hub as classic_negotiate_hub,
    negotiated as classic_negotiated, no_app_server as classic_no_app_server,
    parse as parse_classic, unknown_token as classic_unknown_token, BASE as CLASSIC_BASE,
};
pub use self::classic::{ERROR_DATA_HEADER, STATE_HEADER};
pub(crate) use self::transport::Tombstones;

use self::aspnetcore::{AspNetCore, HttpStep, Upgrade};
use self::classic::{Attach, Classic};
use self::transport::{poll_response, Transport, SSE_PREAMBLE};
use super::admission::TokenTimes;
use super::config::RelayConfig;
use super::directory::HubId;
use super::forwarded::{self, Intro};
use super::http::{HttpRequest, RequestId, RequestOutcome};
use super::output::{ClientFamily, Outputs, Upstream};
use super::policy::Policy;
use super::reason::{Ending, Rejection};
use super::reframe::Reframer;
use super::timers::{ClientTimers, ClientTimersMut, TimerKind, TimerQueue};
use super::ConnHandle;
use crate::aspnetcore::negotiate::TransportKind;
use crate::aspnetcore::{HubProtocol, TransferFormat};
use crate::classic::{RawJson, RequestKind, RequestParams};
use crate::service;

/// Every client connection.
#[derive(Debug, Default)]
pub(crate) struct Clients {
    /// Boxed: the map's nodes hold a pointer per client, not a client (whose size would be
    /// paid for each of a node's empty slots too).
    pub(crate) map: BTreeMap<ConnHandle, Box<Client>>,
    /// Keyed by the client's own token, shared with it.
    by_token: BTreeMap<Arc<str>, ConnHandle>,
    /// Connections per access token (digested), negotiated or connected.
    per_bearer: BTreeMap<[u8; 32], usize>,
    /// Closed long-polling connections, for their last poll.
    pub(crate) tombstones: Tombstones,
}

impl Clients {
    /// Adds a client; it is reached by its token from now on.
    pub(crate) fn insert(&mut self, client: Client) -> &mut Client {
        self.by_token.insert(client.token.clone(), client.conn);
        if let Some(bearer) = client.bearer {
            *self.per_bearer.entry(bearer).or_default() += 1;
        }
        self.map.entry(client.conn).or_insert(Box::new(client))
    }

    /// How many connections bear this access token.
    pub(crate) fn bearing(&self, bearer: Option<[u8; 32]>) -> usize {
        bearer.map_or(0, |b| self.per_bearer.get(&b).copied().unwrap_or(0))
    }

    /// The client a token names.
    pub(crate) fn by_token(&self, token: &str) -> Option<ConnHandle> {
        self.by_token.get(token).copied()
    }

    /// Forgets a client that is gone: its token, and its place in its bearer's count.
    pub(crate) fn forget(&mut self, client: &Client) {
        if let Some(bearer) = client.bearer {
            if let std::collections::btree_map::Entry::Occupied(mut n) =
                self.per_bearer.entry(bearer)
            {
                *n.get_mut() -= 1;
                if *n.get() == 0 {
                    n.remove();
                }
            }
        }
        self.forget_token(&client.token);
    }

    fn forget_token(&mut self, token: &str) {
        self.by_token.remove(token);
    }
}

/// What a client's handling may use besides the client: the time, its handle, the limits,
/// the output sink, and this client's timers.
pub(crate) struct Ctx<'a> {
    pub(crate) now: Instant,
    pub(crate) conn: ConnHandle,
    pub(crate) config: &'a RelayConfig,
    /// What the client's token asks of the relay.
    pub(crate) policy: &'a Policy,
    pub(crate) out: &'a mut Outputs,
    pub(crate) timers: ClientTimersMut<'a>,
}

impl<'a> Ctx<'a> {
    fn new(
        now: Instant,
        conn: ConnHandle,
        (table, policy): (&'a mut ClientTimers, &'a Option<Box<Policy>>),
        config: &'a RelayConfig,
        out: &'a mut Outputs,
        queue: &'a mut TimerQueue,
    ) -> Self {
        Self {
            now,
            conn,
            config,
            policy: policy.as_deref().unwrap_or(&Policy::NONE),
            out,
            timers: queue.of(conn, table, now),
        }
    }
}

/// When the client last sent something, and was last sent something.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Activity {
    pub(crate) received: Instant,
    pub(crate) sent: Instant,
}

impl Activity {
    /// When an open client's `KeepAlive` timer is due: the client timeout, or a keep-alive.
    pub(crate) fn keep_alive_due(&self, config: &RelayConfig) -> Instant {
        (self.received + config.client_timeout).min(self.sent + config.client_keep_alive)
    }
}

/// A client's mapping to its server connection, fixed once made.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) server: ConnHandle,
    pub(crate) protocol: HubProtocol,
    /// What carried the client when it was mapped.
    pub(crate) transport: TransportKind,
    /// The app server's output, reassembled into whole frames.
    outbound: Reframer,
    /// Messages from multicast paths held until the handshake response has gone out, or
    /// while a partial frame is being reassembled.
    pending: VecDeque<Bytes>,
    /// What the app server was told at the opening, kept when its app server may ask for its
    /// clients to be migrated: it is told again to the next one. A copy of its own: the
    /// OpenConnection as sent, and the handshake only when it is not the one the relay writes
    /// for the client's protocol (`canonical_handshake`), which is written again.
    migration: Option<Box<[u8]>>,
    /// The server connection the client was migrated from, with its output reassembled
    /// apart: the answers it still owes the client (invocations under way when the client
    /// moved) reach it, whole frames between the new app server's.
    pub(crate) previous: Option<Box<(ConnHandle, Reframer)>>,
}

/// The largest introduction (OpenConnection and handshake) kept for a migration.
const MAX_REPLAY: usize = 8 * 1024;

impl Link {
    /// The app server has answered the handshake.
    pub(crate) fn handshake_done(&self) -> bool {
        self.outbound.handshake_done()
    }

    /// Whole messages may go to the client now: the handshake response went, and no frame
    /// is half reassembled.
    fn ready(&self) -> bool {
        self.outbound.handshake_done() && self.outbound.is_idle()
    }
}

/// The protocol family of a client, with its state.
#[derive(Debug)]
pub(crate) enum Dialect {
    AspNetCore(AspNetCore),
    Classic(Box<Classic>),
}

/// What the relay must do after a client handled an input.
#[derive(Debug)]
pub(crate) enum Next {
    /// Nothing more.
    Stay,
    /// Map the client to a server connection of its hub, then go on.
    Open(Opening),
    /// End the client.
    End(Ending),
}

/// A client ready to be mapped to a server connection.
#[derive(Debug)]
pub(crate) struct Opening {
    pub(crate) protocol: HubProtocol,
    /// The handshake the app server gets.
    pub(crate) handshake: Vec<u8>,
    /// The request headers the app server gets, when they come with the opening.
    pub(crate) headers: Option<Vec<(String, Vec<String>)>>,
    /// The query the app server gets, when it comes with the opening.
    pub(crate) query: Option<String>,
    /// What carries the client.
    pub(crate) transport: TransportKind,
    pub(crate) then: Then,
}

/// What the client goes on with once mapped.
#[derive(Debug)]
pub(crate) enum Then {
    /// ASP.NET Core: the bytes that followed the handshake, and whether stateful reconnect
    /// is on.
    Frames { rest: BytesMut, stateful: bool },
    /// Classic: the rest of its `/connect`.
    Classic(Attach),
}

/// A client's answer to an input.
#[derive(Debug)]
#[must_use]
pub(crate) struct Handled {
    pub(crate) outcome: Option<RequestOutcome>,
    pub(crate) next: Next,
}

impl Handled {
    pub(crate) fn stay(outcome: Option<RequestOutcome>) -> Self {
        Self::next(outcome, Next::Stay)
    }

    pub(crate) fn next(outcome: Option<RequestOutcome>, next: Next) -> Self {
        Self { outcome, next }
    }

    /// Answer, then end the client.
    pub(crate) fn then(outcome: RequestOutcome, ending: Ending) -> Self {
        Self::next(Some(outcome), Next::End(ending))
    }

    fn refuse(rejection: Rejection) -> Self {
        Self::stay(Some(RequestOutcome::Respond(rejection.into())))
    }

    fn ended(result: Result<(), Ending>) -> Self {
        Self::from_next(None, result.map(|()| Next::Stay))
    }

    fn from_next(outcome: Option<RequestOutcome>, result: Result<Next, Ending>) -> Self {
        Self::next(outcome, result.unwrap_or_else(Next::End))
    }
}

/// A request on an existing connection, with what the relay read from its token.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    pub(crate) req: &'a HttpRequest,
    /// The hub the request names (`None`: one the relay does not know).
    pub(crate) hub: Option<HubId>,
    /// The token's user.
    pub(crate) user: Option<&'a str>,
    /// The digest of the request's bearer token, verified.
    pub(crate) bearer: [u8; 32],
}

/// Who may act for a connection (see [`Request::acts_for`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Owner<'a> {
    pub(crate) hub: HubId,
    /// The user its token named.
    pub(crate) user: Option<&'a str>,
    /// The token it negotiated with, digested.
    pub(crate) bearer: Option<[u8; 32]>,
    /// Whether its connection token is a secret: not with `negotiateVersion=0`, where it is
    /// the connection id, which an app server may show to anyone.
    pub(crate) secret: bool,
}

impl<'a> Owner<'a> {
    /// A connection's owner, from its parts: its connection token is a secret unless it is
    /// the connection id.
    fn of(
        hub: HubId,
        user: Option<&'a str>,
        bearer: Option<[u8; 32]>,
        (token, connection_id): (&str, &str),
    ) -> Self {
        Self {
            hub,
            user,
            bearer,
            secret: token != connection_id,
        }
    }
}

impl Request<'_> {
    /// Whether this request, its token verified for the hub it names, may act for a
    /// connection of `owner`'s. It must name the connection's hub. The very token the
    /// connection negotiated with may. Another may when it names the same user, as a client's
    /// `accessTokenFactory` signing a token per call gives (the official clients call it for
    /// the negotiate, the transport, and a stateful reconnect; ASP.NET Core goes on even when
    /// the user changed): a named user's own, or, for an anonymous connection, any anonymous
    /// one if its connection token is a secret.
    pub(crate) fn acts_for(&self, owner: Owner<'_>) -> bool {
        if self.hub != Some(owner.hub) || self.user != owner.user {
            return false;
        }
        Some(self.bearer) == owner.bearer || owner.user.is_some() || owner.secret
    }
}

/// One input for a client.
#[derive(Debug)]
pub(crate) enum Input<'a> {
    /// A WebSocket message.
    Data(&'a [u8]),
    /// Its WebSocket or event stream went away.
    Closed,
    /// One of its timers fired.
    Timer(TimerKind),
    /// Its client abandoned a held request.
    Aborted(RequestId),
    /// A WebSocket request on `/client/?id=`.
    Upgrade(Request<'a>),
    /// `GET`, `POST` or `DELETE` on `/client/?id=`.
    Http(Request<'a>),
    /// A classic request with its connection token.
    Classic {
        kind: RequestKind,
        params: &'a RequestParams,
        request: Request<'a>,
    },
}

/// A client connection.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) conn: ConnHandle,
    pub(crate) hub: HubId,
    /// Exact, shared strings: the directory's map by connection id, and the map by token,
    /// hold the same allocations as their keys.
    pub(crate) connection_id: Arc<str>,
    pub(crate) token: Arc<str>,
    pub(crate) user_id: Option<Box<str>>,
    /// The token it negotiated with (digested): it counts against this token's cap, and a
    /// later request for the connection must bear it or another of the same user (see
    /// [`Request::acts_for`]).
    pub(crate) bearer: Option<[u8; 32]>,
    /// What the app server is told once, with OpenConnection.
    intro: Option<Box<Intro>>,
    pub(crate) link: Option<Link>,
    pub(crate) dialect: Dialect,
    activity: Activity,
    pub(crate) timers: ClientTimers,
    /// What its token asks of the relay (`asrs.s.*`), when anything.
    pub(crate) policy: Option<Box<Policy>>,
}

impl Client {
    /// Bytes this client holds in the relay's queues: messages waiting for its poll or a
    /// reconnect, and for its handshake to complete.
    pub(crate) fn buffered(&self) -> usize {
        let held = self
            .link
            .as_ref()
            .map_or(0, |l| l.pending.iter().map(Bytes::len).sum());
        held + match &self.dialect {
            Dialect::AspNetCore(a) => a.buffered(),
            Dialect::Classic(c) => c.buffered(),
        }
    }

    /// A negotiated client: `ids` are its connection id and its token.
    pub(crate) fn new(
        now: Instant,
        conn: ConnHandle,
        hub: HubId,
        (connection_id, token): (String, String),
        user_id: Option<String>,
        intro: Intro,
        dialect: Dialect,
    ) -> Self {
        Self {
            conn,
            hub,
            connection_id: connection_id.into(),
            token: token.into(),
            user_id: user_id.map(Into::into),
            bearer: None,
            intro: Some(Box::new(intro)),
            link: None,
            dialect,
            activity: Activity {
                received: now,
                sent: now,
            },
            timers: ClientTimers::default(),
            policy: None,
        }
    }

    /// The ASP.NET Core dialect, before its transport (`negotiated_with`: the times of the
    /// token it negotiated with, when it did).
    pub(crate) fn aspnetcore(
        stateful_allowed: bool,
        negotiated_with: Option<TokenTimes>,
    ) -> Dialect {
        Dialect::AspNetCore(AspNetCore::new(stateful_allowed, negotiated_with))
    }

    /// While an ASP.NET Core client waits for its transport: the times of the token it
    /// negotiated with.
    pub(crate) fn negotiated_with(&self) -> Option<TokenTimes> {
        match &self.dialect {
            Dialect::AspNetCore(a) => a.negotiated_with(),
            Dialect::Classic(_) => None,
        }
    }

    /// The classic dialect, with the hub as the client names it.
    pub(crate) fn classic(hub_name: String, now: Instant) -> Dialect {
        Dialect::Classic(Box::new(Classic::new(hub_name, now)))
    }

    /// Whether the client has stateful reconnect.
    pub(crate) fn is_stateful(&self) -> bool {
        matches!(&self.dialect, Dialect::AspNetCore(a) if a.is_stateful())
    }

    /// What carries the client, once its transport came.
    pub(crate) fn transport_kind(&self) -> Option<TransportKind> {
        match &self.dialect {
            Dialect::AspNetCore(a) => a.transport.kind(),
            Dialect::Classic(_) => None,
        }
    }

    pub(crate) fn family(&self) -> ClientFamily {
        match self.dialect {
            Dialect::AspNetCore(_) => ClientFamily::AspNetCore,
            Dialect::Classic(_) => ClientFamily::Classic,
        }
    }

    /// Handles one input.
    pub(crate) fn handle(
        &mut self,
        now: Instant,
        input: Input<'_>,
        config: &RelayConfig,
        out: &mut Outputs,
        queue: &mut TimerQueue,
    ) -> Handled {
        let Self {
            conn,
            hub,
            connection_id,
            token,
            user_id,
            bearer,
            intro,
            link,
            dialect,
            activity,
            timers,
            policy,
            ..
        } = self;
        let mut cx = Ctx::new(now, *conn, (timers, policy), config, out, queue);
        // Only a request for the connection needs it: not worked out for each message.
        let owner = || Owner::of(*hub, user_id.as_deref(), *bearer, (token, connection_id));
        let up = link.as_ref().map(|l| Upstream {
            server: l.server,
            connection_id,
        });
        match (input, dialect) {
            (Input::Timer(kind), dialect) => {
                cx.timers.fired(kind);
                Handled::ended(match (kind, dialect) {
                    (TimerKind::Negotiate, _) => Err(Ending::NegotiateExpired),
                    (TimerKind::AuthExpired, _) => Err(Ending::AuthExpired),
                    (kind, Dialect::AspNetCore(a)) => {
                        a.on_timer(&mut cx, kind, link.as_ref(), activity)
                    }
                    (kind, Dialect::Classic(c)) => c.on_timer(&mut cx, kind),
                })
            }
            (Input::Data(data), Dialect::AspNetCore(a)) => {
                activity.received = now;
                Handled::from_next(None, a.receive(&mut cx, data, link.as_ref(), connection_id))
            }
            (Input::Data(data), Dialect::Classic(c)) => {
                activity.received = now;
                Handled::ended(c.data(&mut cx, data, up))
            }
            (Input::Closed, Dialect::AspNetCore(a)) => {
                // A stateful client has its window to come back.
                let kept = a.transport_lost(&mut cx);
                Handled::ended(if kept {
                    Ok(())
                } else {
                    Err(Ending::TransportClosed)
                })
            }
            (Input::Closed, Dialect::Classic(c)) => {
                // A connected classic client has the disconnect timeout to reconnect.
                if link.is_none() {
                    return Handled::ended(Err(Ending::TransportClosed));
                }
                c.channel_lost(&mut cx);
                Handled::stay(None)
            }
            (Input::Aborted(request), Dialect::AspNetCore(a)) => {
                a.transport.poll_aborted(&mut cx, request);
                Handled::stay(None)
            }
            (Input::Aborted(request), Dialect::Classic(c)) => {
                c.request_aborted(&mut cx, request);
                Handled::stay(None)
            }
            (Input::Upgrade(r) | Input::Http(r), Dialect::AspNetCore(_)) if r.hub != Some(*hub) => {
                Handled::refuse(Rejection::UnknownConnection)
            }
            (Input::Upgrade(_) | Input::Http(_), Dialect::Classic(_)) => {
                Handled::refuse(Rejection::UnknownConnection)
            }
            (Input::Upgrade(r), Dialect::AspNetCore(a)) => {
                let owner = r.acts_for(owner());
                match a.upgrade(&mut cx, owner, link.as_ref(), activity) {
                    Ok(Upgrade::Resumed) => {
                        Handled::stay(Some(RequestOutcome::AcceptWebSocket(*conn)))
                    }
                    Ok(Upgrade::Attach) => {
                        attach(a, &mut cx, intro, activity, r.req, Transport::WebSocket);
                        Handled::stay(Some(RequestOutcome::AcceptWebSocket(*conn)))
                    }
                    Err(rejection) => Handled::refuse(rejection),
                }
            }
            (Input::Http(r), Dialect::AspNetCore(a)) => {
                if !r.acts_for(owner()) {
                    return Handled::refuse(Rejection::NotOwner);
                }
                if r.req.method == "POST" {
                    activity.received = now;
                }
                match a.http(&mut cx, r.req, link.as_ref(), connection_id) {
                    Ok(HttpStep::Done(handled)) => handled,
                    Ok(HttpStep::Attach(transport)) => {
                        let sse = matches!(transport, Transport::ServerSentEvents);
                        attach(a, &mut cx, intro, activity, r.req, transport);
                        Handled::stay(Some(if sse {
                            cx.out
                                .transmit(cx.conn, Bytes::from_static(SSE_PREAMBLE), false);
                            RequestOutcome::EventStream(*conn)
                        } else {
                            // The first poll starts the connection and returns at once, empty.
                            RequestOutcome::Respond(poll_response(Bytes::new()))
                        }))
                    }
                    Err(rejection) => Handled::refuse(rejection),
                }
            }
            (Input::Classic { kind, request, .. }, Dialect::AspNetCore(_)) => {
                Handled::stay(Some(classic::unknown_token(kind, request.req.websocket)))
            }
            (
                Input::Classic {
                    kind,
                    params,
                    request,
                },
                Dialect::Classic(c),
            ) => {
                if request.user != user_id.as_deref() || Some(request.bearer) != *bearer {
                    return Handled::refuse(Rejection::UserChanged);
                }
                if kind == RequestKind::Send {
                    activity.received = now;
                }
                c.request(&mut cx, kind, params, request.req, up)
            }
        }
    }

    /// Keeps an ASP.NET Core client's `opening` until [`take_held`](Self::take_held): it is
    /// mapped once the backplane has its channels. Given back for a classic client, whose
    /// `/connect` waits for its mapping.
    pub(crate) fn hold(&mut self, opening: Opening) -> Result<(), Opening> {
        if !self.can_hold(&opening) {
            return Err(opening);
        }
        match &mut self.dialect {
            Dialect::AspNetCore(a) => {
                a.hold(opening);
                Ok(())
            }
            Dialect::Classic(_) => Err(opening),
        }
    }

    /// Whether [`hold`](Self::hold) takes `opening`: an ASP.NET Core client's, not yet mapped.
    pub(crate) fn can_hold(&self, opening: &Opening) -> bool {
        matches!(
            (&self.dialect, &opening.then),
            (Dialect::AspNetCore(_), Then::Frames { .. })
        ) && self.link.is_none()
    }

    /// The opening kept by [`hold`](Self::hold), to map the client now.
    pub(crate) fn take_held(&mut self) -> Option<Opening> {
        match &mut self.dialect {
            Dialect::AspNetCore(a) => a.take_held(),
            Dialect::Classic(_) => None,
        }
    }

    /// Maps the client to `server`: OpenConnection with what the app server is told once,
    /// then the handshake as the client's first data, in one message.
    ///
    /// `classic_sdk`: the server connection is the classic ASP.NET SDK's, which speaks the
    /// classic protocol itself. A classic client's frames then pass through as they are, and
    /// no ASP.NET Core handshake is sent.
    pub(crate) fn open(
        &mut self,
        now: Instant,
        (server, migrates, classic_sdk): (ConnHandle, bool, bool),
        opening: &mut Opening,
        config: &RelayConfig,
        out: &mut Outputs,
        queue: &mut TimerQueue,
    ) {
        let intro = self.intro.take().map(|i| *i).unwrap_or_default();
        let passthrough = match &mut self.dialect {
            Dialect::Classic(c) if classic_sdk => {
                c.pass_through();
                opening.handshake.clear();
                true
            }
            _ => false,
        };
        let mut headers = opening.headers.take().unwrap_or(intro.headers);
        if self.policy.as_ref().is_some_and(|p| p.diagnostic) {
            // As Azure marks a client whose token says `asrs.s.dc`.
            headers.push((
                "Asrs-Is-Diagnostic-Client".to_owned(),
                vec!["true".to_owned()],
            ));
        }
        let protocol = opening.protocol;
        let open = service::OpenConnection {
            connection_id: self.connection_id.to_string(),
            claims: intro.claims,
            headers,
            query_string: opening.query.take().unwrap_or(intro.query),
            ext: service::Ext {
                protocol: Some(protocol.name().to_owned()),
                ..service::Ext::default()
            },
        };
        let (data, open_len) = introduction(open, &opening.handshake);
        // Only ASP.NET Core clients move: a classic client's app server keeps hub state the
        // next one would not have. What is kept to tell the next app server is bounded; a
        // client with a larger introduction stays where it is.
        let keep =
            migrates && matches!(self.dialect, Dialect::AspNetCore(_)) && data.len() <= MAX_REPLAY;
        // Kept for the connection's life as a copy of its own, of exactly its length: sharing
        // the buffer sent would cost a `Bytes` and its shared header besides. A handshake as
        // the relay writes it for its protocol (nearly every client's) is written again when
        // it is told, not kept.
        let migration = keep.then(|| {
            let canonical = opening.handshake == canonical_handshake(opening.protocol);
            Box::from(&data[..if canonical { open_len } else { data.len() }])
        });
        out.stats.to_server.add(opening.handshake.len());
        out.transmit(server, Bytes::from(data), true);
        let outbound = if passthrough {
            // What the SDK writes for a client: whole service-protocol ConnectionData frames
            // (length-prefixed), each holding classic JSON; no handshake response.
            Reframer::new(true, config.max_server_message_size).after_handshake()
        } else {
            Reframer::new(
                protocol.transfer_format() == TransferFormat::Binary,
                config.max_server_message_size,
            )
        };
        self.link = Some(Link {
            server,
            protocol,
            transport: opening.transport,
            outbound,
            pending: VecDeque::new(),
            migration,
            previous: None,
        });
        let mut cx = Ctx::new(
            now,
            self.conn,
            (&mut self.timers, &self.policy),
            config,
            out,
            queue,
        );
        cx.timers.clear(TimerKind::Negotiate);
        if let Dialect::AspNetCore(a) = &mut self.dialect {
            a.open(&mut cx, protocol, &self.activity);
        }
    }

    /// Moves the client to `to`, an app server that is not leaving, as the Azure SDK's
    /// migration expects, when it is between messages both ways and its opening was kept.
    /// Returns what its old app server is told (CloseConnection with `Asrs-Migrate-To`) and
    /// what the new one is told (OpenConnection with `Asrs-Migrate-From`, then the handshake,
    /// whose response the SDK does not pass on: the client never left).
    pub(crate) fn migrate(
        &mut self,
        to: ConnHandle,
        (from_id, to_id): (&str, &str),
    ) -> Option<(Bytes, Bytes)> {
        let Dialect::AspNetCore(a) = &self.dialect else {
            return None;
        };
        let link = self.link.as_mut()?;
        if !a.between_messages() || !link.ready() || !link.pending.is_empty() {
            return None;
        }
        // A second move waits until what the first app server owed has come whole.
        if link.previous.as_ref().is_some_and(|p| !p.1.is_idle()) {
            return None;
        }
        let (mut open, handshake) = replayed(link.migration.as_ref()?)?;
        let handshake = if handshake.is_empty() {
            canonical_handshake(link.protocol)
        } else {
            handshake.to_vec()
        };
        let close = service::ServiceMessage::CloseConnection(service::CloseConnection {
            connection_id: self.connection_id.to_string(),
            headers: vec![("Asrs-Migrate-To".to_owned(), vec![to_id.to_owned()])],
            ..service::CloseConnection::default()
        });
        let mut farewell = Vec::new();
        let _ = close.write(&mut farewell);
        open.headers
            .push(("Asrs-Migrate-From".to_owned(), vec![from_id.to_owned()]));
        let (welcome, _) = introduction(open, &handshake);
        let from = std::mem::replace(&mut link.server, to);
        link.previous = Some(Box::new((from, link.outbound.after_handshake())));
        Some((farewell.into(), welcome.into()))
    }

    /// Goes on after the client was mapped.
    pub(crate) fn opened(
        &mut self,
        now: Instant,
        then: Then,
        config: &RelayConfig,
        out: &mut Outputs,
        queue: &mut TimerQueue,
    ) -> Handled {
        let Self {
            conn,
            connection_id,
            link,
            dialect,
            timers,
            policy,
            ..
        } = self;
        let mut cx = Ctx::new(now, *conn, (timers, policy), config, out, queue);
        match (then, dialect, link.as_ref()) {
            (Then::Frames { rest, stateful }, Dialect::AspNetCore(a), Some(link)) => {
                Handled::from_next(
                    None,
                    a.opened(&mut cx, &rest, stateful, link, connection_id),
                )
            }
            (Then::Classic(attach), Dialect::Classic(c), Some(_)) => {
                Handled::stay(Some(c.attach(&mut cx, RequestKind::Connect, attach)))
            }
            _ => Handled::stay(None),
        }
    }

    /// No server connection of the hub takes clients: an ASP.NET Core handshake fails, a
    /// classic `/connect` is refused (the client may try again).
    pub(crate) fn no_server(then: &Then, rejection: Rejection) -> Handled {
        match then {
            Then::Frames { .. } => Handled::ended(Err(Ending::HandshakeRefused(
                rejection.text().into_owned().into(),
            ))),
            Then::Classic(_) => Handled::refuse(rejection),
        }
    }

    /// Bytes from the app server (ConnectionData): reassembled into whole frames, with
    /// multicast traffic held until the handshake response has gone out.
    pub(crate) fn deliver(
        &mut self,
        now: Instant,
        (from, payload): (ConnHandle, Bytes),
        config: &RelayConfig,
        out: &mut Outputs,
        queue: &mut TimerQueue,
    ) -> Result<(), Ending> {
        self.activity.sent = now;
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        let (reframed, held) = match link.previous.as_deref_mut() {
            // What the app server it was migrated from still owes it: whole frames only.
            Some((previous, reframer)) if *previous == from => {
                let reframed = reframer
                    .push(payload)
                    .map_err(|_| Ending::ServerMessageTooLarge)?;
                (reframed, VecDeque::new())
            }
            _ => {
                let reframed = link
                    .outbound
                    .push(payload)
                    .map_err(|_| Ending::ServerMessageTooLarge)?;
                let held = if link.ready() {
                    std::mem::take(&mut link.pending)
                } else {
                    VecDeque::new()
                };
                (reframed, held)
            }
        };
        let mut cx = Ctx::new(
            now,
            self.conn,
            (&mut self.timers, &self.policy),
            config,
            out,
            queue,
        );
        for data in reframed.data.into_iter().chain(held) {
            cx.out.stats.to_client.add(data.len());
            send(&mut self.dialect, &mut cx, data, link, &self.connection_id)?;
        }
        Ok(())
    }

    /// A whole pre-encoded message from a multicast path, in the client's protocol.
    pub(crate) fn deliver_message(
        &mut self,
        now: Instant,
        message: &Prepared<'_>,
        config: &RelayConfig,
        out: &mut Outputs,
        queue: &mut TimerQueue,
    ) -> Result<(), Ending> {
        self.activity.sent = now;
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        let Some(data) = message.get(link.protocol) else {
            return Ok(());
        };
        if !link.ready() || !link.pending.is_empty() {
            if link.pending.len() >= config.max_pending_messages {
                return Err(Ending::TooManyPending);
            }
            link.pending.push_back(data.clone());
            return Ok(());
        }
        let mut cx = Ctx::new(
            now,
            self.conn,
            (&mut self.timers, &self.policy),
            config,
            out,
            queue,
        );
        cx.out.stats.to_client.add(data.len());
        match &mut self.dialect {
            Dialect::Classic(c) => match message.classic(c) {
                Some(pushes) => {
                    c.push_all(&mut cx, pushes);
                    Ok(())
                }
                None => send(
                    &mut self.dialect,
                    &mut cx,
                    data.clone(),
                    link,
                    &self.connection_id,
                ),
            },
            Dialect::AspNetCore(_) => send(
                &mut self.dialect,
                &mut cx,
                data.clone(),
                link,
                &self.connection_id,
            ),
        }
    }

    /// The client ends: it is told why in its own protocol, and its transport ends. Returns
    /// the ending that took effect.
    pub(crate) fn end(
        &mut self,
        now: Instant,
        ending: Ending,
        config: &RelayConfig,
        out: &mut Outputs,
        queue: &mut TimerQueue,
        tombstones: &mut Tombstones,
    ) -> Ending {
        let Self {
            conn,
            hub,
            connection_id,
            token,
            user_id,
            bearer,
            link,
            dialect,
            timers,
            policy,
            ..
        } = self;
        let mut cx = Ctx::new(now, *conn, (timers, policy), config, out, queue);
        let owner = Owner::of(*hub, user_id.as_deref(), *bearer, (token, connection_id));
        match dialect {
            Dialect::AspNetCore(a) => {
                a.end(&mut cx, ending, link.as_ref(), (token, owner), tombstones)
            }
            Dialect::Classic(c) => {
                c.end(
                    &mut cx,
                    &ending,
                    link.as_ref().is_some_and(Link::handshake_done),
                );
                ending
            }
        }
    }
}

/// Binds a transport to a negotiated ASP.NET Core connection: the app server will see the
/// request's headers and query (the connect request's, as Azure forwards them); the handshake
/// is next.
fn attach(
    a: &mut AspNetCore,
    cx: &mut Ctx<'_>,
    intro: &mut Option<Box<Intro>>,
    activity: &mut Activity,
    req: &HttpRequest,
    transport: Transport,
) {
    if let Some(intro) = intro {
        intro.headers = forwarded::headers(req, cx.config, transport.kind());
        intro.query = forwarded::query(&req.query);
    }
    activity.received = cx.now;
    a.attach(cx, transport);
}

/// Sends bytes from the app server to an open client, in its dialect.
fn send(
    dialect: &mut Dialect,
    cx: &mut Ctx<'_>,
    data: Bytes,
    link: &Link,
    connection_id: &str,
) -> Result<(), Ending> {
    match dialect {
        Dialect::AspNetCore(a) => {
            let binary = link.protocol.is_binary();
            a.send(cx, data, binary, Some(link.protocol))
        }
        Dialect::Classic(c) => {
            let up = Upstream {
                server: link.server,
                connection_id,
            };
            c.emit(cx, &data, up)
        }
    }
}

/// The largest JSON payload converted for MessagePack clients (larger ones reach only JSON
/// clients).
const MAX_CONVERTED: usize = 1 << 20;

/// A multicast message, resolved once per fan-out: the payload of each protocol, and what
/// classic clients get of it, translated once.
pub(crate) struct Prepared<'a> {
    json: Option<&'a Bytes>,
    messagepack: Option<&'a Bytes>,
    blazorpack: Option<&'a Bytes>,
    classic: OnceCell<Option<(String, Vec<RawJson>)>>,
    /// The JSON payload's invocations in MessagePack, when no MessagePack payload came.
    from_json: OnceCell<Option<Bytes>>,
}

impl<'a> Prepared<'a> {
    pub(crate) fn new(payloads: &'a service::Payloads) -> Self {
        Self {
            json: payloads.get(HubProtocol::Json.name()),
            messagepack: payloads.get(HubProtocol::MessagePack.name()),
            blazorpack: payloads.get(HubProtocol::BlazorPack.name()),
            classic: OnceCell::new(),
            from_json: OnceCell::new(),
        }
    }

    /// The payload for a client of `protocol`. MessagePack and Blazor's `blazorpack` are one
    /// encoding, so either payload serves both when the app server wrote only one of them.
    /// When it wrote JSON alone (the Management SDK's default, in both its transports), the
    /// JSON's invocations are converted once per fan-out, as the service converts REST
    /// payloads for MessagePack clients.
    fn get(&self, protocol: HubProtocol) -> Option<&Bytes> {
        let binary = match protocol {
            HubProtocol::Json => return self.json,
            HubProtocol::MessagePack => self.messagepack.or(self.blazorpack),
            HubProtocol::BlazorPack => self.blazorpack.or(self.messagepack),
        };
        binary.or_else(|| {
            self.from_json
                .get_or_init(|| {
                    // Converting holds the JSON's values for a moment: a few times its size.
                    let json = self.json.filter(|j| j.len() <= MAX_CONVERTED)?;
                    crate::aspnetcore::messagepack::invocations_from_json(json).map(Bytes::from)
                })
                .as_ref()
        })
    }

    /// The messages a classic client puts in `M` for this payload, when it holds only pushes
    /// (translated for the first classic client's spelling of the hub, and reused for every
    /// client that spells it the same).
    fn classic(&self, client: &Classic) -> Option<&[RawJson]> {
        let (hub_name, pushes) = self
            .classic
            .get_or_init(|| {
                let json = self.json?;
                Some((client.hub_name().to_owned(), client.pushes(json)?))
            })
            .as_ref()?;
        (hub_name == client.hub_name()).then_some(pushes.as_slice())
    }
}

/// The OpenConnection and the handshake of an [`introduction`], read back.
fn replayed(intro: &[u8]) -> Option<(service::OpenConnection, Bytes)> {
    let mut frames = service::ServiceDecoder::new(MAX_REPLAY);
    frames.push(intro);
    let Ok(Some(service::ServiceMessage::OpenConnection(open))) = frames.next_message() else {
        return None;
    };
    let handshake = match frames.next_message() {
        Ok(Some(service::ServiceMessage::ConnectionData(data))) => data.payload,
        _ => Bytes::new(),
    };
    Some((open, handshake))
}

/// OpenConnection, then the handshake as the client's first data, in one message (the
/// OpenConnection is written as it is, not copied first), and where the OpenConnection ends.
fn introduction(open: service::OpenConnection, handshake: &[u8]) -> (Vec<u8>, usize) {
    let mut data = Vec::with_capacity(introduction_size(&open, handshake));
    let message = service::ServiceMessage::OpenConnection(open);
    let _ = message.write(&mut data);
    let open_len = data.len();
    if let service::ServiceMessage::OpenConnection(open) = &message {
        if !handshake.is_empty() {
            let _ = service::write_connection_data(&open.connection_id, handshake, &mut data);
        }
    }
    (data, open_len)
}

/// At least what [`introduction`] writes: each string with its MessagePack header, each
/// container's header at its largest, and the frames' own. Sized so, its buffer is written
/// without growing, and holds little it does not use while it waits for its server
/// connection's writer (a storm of connects holds thousands).
fn introduction_size(open: &service::OpenConnection, handshake: &[u8]) -> usize {
    fn string(len: usize) -> usize {
        len + match len {
            0..=31 => 1,
            32..=255 => 2,
            256..=65_535 => 3,
            _ => 5,
        }
    }
    const CONTAINER: usize = 5;
    let claims: usize = open
        .claims
        .iter()
        .map(|(k, v)| string(k.len()) + string(v.len()))
        .sum();
    let headers: usize = open
        .headers
        .iter()
        .map(|(k, values)| {
            string(k.len()) + CONTAINER + values.iter().map(|v| string(v.len())).sum::<usize>()
        })
        .sum();
    let ext = [&open.ext.protocol, &open.ext.filter]
        .iter()
        .map(|v| v.as_ref().map_or(0, |v| string(v.len()) + 1))
        .sum::<usize>()
        + 32;
    // The OpenConnection's id, and the handshake's ConnectionData with its own.
    let ids = 2 * string(open.connection_id.len());
    let rest = string(open.query_string.len()) + handshake.len() + CONTAINER;
    claims + headers + ext + ids + rest + 8 * CONTAINER + 2 * CONTAINER
}

/// The handshake the relay tells an app server for a client of `protocol` (see
/// `AspNetCore::handshake`), as nearly every client asks it.
fn canonical_handshake(protocol: HubProtocol) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    crate::aspnetcore::handshake::HandshakeRequest {
        protocol: protocol.name().to_owned(),
        version: 1,
    }
    .write(&mut out);
    out
}

#[cfg(test)]
mod introductions {
    use super::*;

    fn handshake_bytes(protocol: HubProtocol) -> Bytes {
        Bytes::from(canonical_handshake(protocol))
    }

    /// The buffer is sized before it is written: never grown, and not much larger.
    #[test]
    fn an_introductions_size_is_known_before_it_is_written() {
        let long = "x".repeat(70_000);
        for n in [0, 1, 3, 40] {
            for value in ["", "v", "some value", long.as_str()] {
                let open = service::OpenConnection {
                    connection_id: "a1b2c3d4e5f6a7b8c9d0e1".to_owned(),
                    claims: (0..n)
                        .map(|i| (format!("claim{i}"), value.to_owned()))
                        .collect(),
                    headers: (0..n)
                        .map(|i| (format!("Header-{i}"), vec![value.to_owned(); i % 3]))
                        .collect(),
                    query_string: format!("?hub=chat&id={value}"),
                    ext: service::Ext {
                        protocol: Some("messagepack".to_owned()),
                        ..service::Ext::default()
                    },
                };
                let handshake = canonical_handshake(HubProtocol::MessagePack);
                let size = introduction_size(&open, &handshake);
                let (data, open_len) = introduction(open, &handshake);
                assert!(size >= data.len(), "{size} < {}", data.len());
                assert!(
                    size <= data.len() + 128 + 4 * n,
                    "{size} for {}",
                    data.len()
                );
                // The OpenConnection alone reads back, and writes again, as it was.
                if data.len() <= MAX_REPLAY {
                    let Some((open, handshake)) = replayed(&data) else {
                        panic!("an introduction reads back")
                    };
                    assert_eq!(handshake, handshake_bytes(HubProtocol::MessagePack));
                    let Some((alone, none)) = replayed(&data[..open_len]) else {
                        panic!("an OpenConnection reads back")
                    };
                    assert!(none.is_empty());
                    assert_eq!(open, alone);
                    assert_eq!(introduction(alone, &[]).0, &data[..open_len]);
                }
            }
        }
    }
}

/// Every connected client holds one `Client` for its life: what it costs each idle client is
/// budgeted (#19), so that a field added inline is a choice, not an accident.
#[cfg(all(test, target_pointer_width = "64"))]
mod size {
    #[test]
    fn a_client_stays_within_its_budget() {
        assert!(std::mem::size_of::<super::Client>() <= 448);
    }
}
