//! Request paths, query strings and form bodies (digest B.1, B.2).

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserializer, Serialize};

use super::negotiate::ProtocolVersion;
use super::raw::to_json_string;
use super::RequestError;

/// The four classic transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// `webSockets`.
    WebSockets,
    /// `serverSentEvents`.
    ServerSentEvents,
    /// `longPolling`.
    LongPolling,
    /// `foreverFrame` (old Internet Explorer; never used through Azure redirects).
    ForeverFrame,
}

impl Transport {
    /// Every transport.
    pub const ALL: [Self; 4] = [
        Self::WebSockets,
        Self::ServerSentEvents,
        Self::LongPolling,
        Self::ForeverFrame,
    ];

    /// The name clients send in `transport`.
    pub fn name(self) -> &'static str {
        match self {
            Self::WebSockets => "webSockets",
            Self::ServerSentEvents => "serverSentEvents",
            Self::LongPolling => "longPolling",
            Self::ForeverFrame => "foreverFrame",
        }
    }

    /// Looks a transport up by name, case-insensitively as the server does.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which classic endpoint a request is for: the last segment of its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestKind {
    /// `/negotiate`: creates a connection, answers a [`NegotiateReply`](super::NegotiateReply).
    Negotiate,
    /// `/connect`: opens the receive channel; its first message is the init response.
    Connect,
    /// `/reconnect`: reopens the receive channel after a transport loss.
    Reconnect,
    /// `/start`: fires OnConnected, answers [`START_RESPONSE`](super::START_RESPONSE).
    Start,
    /// `/send`: client-to-server data (the `data` field) for SSE, long polling and forever frame.
    Send,
    /// `/poll`: the next long poll.
    Poll,
    /// `/abort`: graceful stop.
    Abort,
    /// `/ping`: keeps auth cookies alive, answers [`PING_RESPONSE`](super::PING_RESPONSE).
    Ping,
}

impl RequestKind {
    /// Every kind.
    pub const ALL: [Self; 8] = [
        Self::Negotiate,
        Self::Connect,
        Self::Reconnect,
        Self::Start,
        Self::Send,
        Self::Poll,
        Self::Abort,
        Self::Ping,
    ];

    /// The path segment.
    pub fn name(self) -> &'static str {
        match self {
            Self::Negotiate => "negotiate",
            Self::Connect => "connect",
            Self::Reconnect => "reconnect",
            Self::Start => "start",
            Self::Send => "send",
            Self::Poll => "poll",
            Self::Abort => "abort",
            Self::Ping => "ping",
        }
    }

    /// Looks a kind up by path segment, case-insensitively as the server does.
    pub fn from_segment(segment: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(segment))
    }

    /// The kind of a request from its path (e.g. `/aspnetclient/connect`): its last segment.
    /// Anything from a `?` on is ignored.
    ///
    /// # Errors
    /// [`RequestError::UnknownRequestKind`] for any other segment, including the empty one of
    /// a path ending in `/`, and `hubs`/`js` (the generated proxy is not served).
    pub fn from_path(path: &str) -> Result<Self, RequestError> {
        let path = path.split('?').next().unwrap_or_default();
        let segment = path.rsplit('/').next().unwrap_or_default();
        Self::from_segment(segment)
            .ok_or_else(|| RequestError::UnknownRequestKind(segment.chars().take(64).collect()))
    }

    /// Whether the request must name a valid `transport` and carry a `connectionToken`: every
    /// kind except [`Negotiate`](Self::Negotiate) and [`Ping`](Self::Ping).
    pub fn needs_connection(self) -> bool {
        !matches!(self, Self::Negotiate | Self::Ping)
    }

    /// Whether the request opens a receive channel (`connect`, `reconnect`, `poll`).
    pub fn is_receive(self) -> bool {
        matches!(self, Self::Connect | Self::Reconnect | Self::Poll)
    }
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Bounds on what [`RequestParams::parse`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest query string, in bytes as received. Default 16 KiB.
    pub max_query_len: usize,
    /// Longest form body, in bytes as received. Default 256 KiB (room for percent-encoding a
    /// maximal `data`).
    pub max_body_len: usize,
    /// Most hubs in `connectionData`. Default 32.
    pub max_hubs: usize,
    /// Longest `data` field, in bytes after percent-decoding. Default 64 KiB, the server's
    /// `MaxIncomingWebSocketMessageSize`.
    pub max_data_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_query_len: 16 * 1024,
            max_body_len: 256 * 1024,
            max_hubs: 32,
            max_data_len: 64 * 1024,
        }
    }
}

/// The parameters of a classic request, from its query string and (long polling, `/send`) its
/// `application/x-www-form-urlencoded` body.
///
/// Values are percent-decoded once, with `+` as a space. Names of the parameters below are
/// matched case-insensitively, as the server's query collection does; every other parameter
/// (the user's query string, the redirect's `hub` and `asrs.*`, jQuery's `_`) is kept in
/// [`extra`](Self::extra) in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestParams {
    /// `transport`. Always set for kinds that [need a connection](RequestKind::needs_connection);
    /// for `negotiate` and `ping` an unknown value is dropped, as the server ignores it there.
    pub transport: Option<Transport>,
    /// `clientProtocol`, as sent; see [`protocol_version`](Self::protocol_version).
    pub client_protocol: Option<String>,
    /// `connectionToken`. Always set, and non-empty, for kinds that need a connection.
    pub connection_token: Option<String>,
    /// The hub names of `connectionData`, in order; `None` when it is missing or empty, and
    /// empty for `[]` and `null`.
    pub connection_data: Option<Vec<String>>,
    /// `messageId`: the last cursor `C` the client received. Query first, then form.
    pub message_id: Option<String>,
    /// `groupsToken`: the last `G` the client received. Query first, then form.
    pub groups_token: Option<String>,
    /// `tid`: jQuery's random 0–10 against connection reuse. Not interpreted.
    pub tid: Option<String>,
    /// `frameId`: the forever-frame id. Not interpreted (forever frame is not served).
    pub frame_id: Option<String>,
    /// `access_token`: the redirect JWT on SSE and WebSocket requests.
    pub access_token: Option<String>,
    /// `callback`: a JSONP callback name.
    pub callback: Option<String>,
    /// `data`: the payload of a `/send`. Form first, then query (the server's order).
    pub data: Option<String>,
    /// Every other parameter of the query string, in order. Parameters of the form body other
    /// than `messageId`, `groupsToken` and `data` are not read, like the server. Names that
    /// match a parameter above are skipped when encoding.
    pub extra: Vec<(String, String)>,
}

impl RequestParams {
    /// Parses the query string (with or without its leading `?`) and, for POST requests with a
    /// form body, the body. Pass `None` for `form` on GET requests.
    ///
    /// Checks in the server's order: sizes, then every parameter, then `transport`, then
    /// `connectionToken` (both only when [`kind.needs_connection()`](RequestKind::needs_connection)),
    /// then `connectionData`, then the size of `data`.
    ///
    /// # Errors
    /// A [`RequestError`] naming the first problem found.
    pub fn parse(
        kind: RequestKind,
        query: &str,
        form: Option<&[u8]>,
        limits: &Limits,
    ) -> Result<Self, RequestError> {
        check_len("query string", query.len(), limits.max_query_len)?;
        if let Some(body) = form {
            check_len("form body", body.len(), limits.max_body_len)?;
        }
        let query = query.strip_prefix('?').unwrap_or(query);
        let mut slots = Slots::default();
        let mut extra = Vec::new();
        for (key, value) in pairs(query.as_bytes()) {
            let key = percent_decode(key)?;
            let value = percent_decode(value)?;
            match Param::from_key(&key) {
                Some(param) => slots.set(param, value)?,
                None => extra.push((key, value)),
            }
        }
        let mut form_slots = Slots::default();
        for (key, value) in form.map(pairs).into_iter().flatten() {
            let param = percent_decode(key).ok().and_then(|k| Param::from_key(&k));
            if let Some(param @ (Param::MessageId | Param::GroupsToken | Param::Data)) = param {
                form_slots.set(param, percent_decode(value)?)?;
            }
        }
        Self::from_slots(kind, slots, form_slots, extra, limits)
    }

    fn from_slots(
        kind: RequestKind,
        mut query: Slots,
        mut form: Slots,
        extra: Vec<(String, String)>,
        limits: &Limits,
    ) -> Result<Self, RequestError> {
        let transport = query.take(Param::Transport);
        let transport = if kind.needs_connection() {
            let name = transport.ok_or(RequestError::UnknownTransport)?;
            Some(Transport::from_name(&name).ok_or(RequestError::UnknownTransport)?)
        } else {
            transport.and_then(|name| Transport::from_name(&name))
        };
        let connection_token = query.take(Param::ConnectionToken);
        if kind.needs_connection() && connection_token.as_deref().is_none_or(str::is_empty) {
            return Err(RequestError::MissingConnectionToken);
        }
        let connection_data = match query.take(Param::ConnectionData) {
            Some(text) if !text.is_empty() => Some(parse_connection_data(&text, limits.max_hubs)?),
            _ => None,
        };
        let data = form.take(Param::Data).or_else(|| query.take(Param::Data));
        if let Some(data) = &data {
            check_len("data", data.len(), limits.max_data_len)?;
        }
        Ok(Self {
            transport,
            client_protocol: query.take(Param::ClientProtocol),
            connection_token,
            connection_data,
            message_id: query
                .take(Param::MessageId)
                .or_else(|| form.take(Param::MessageId)),
            groups_token: query
                .take(Param::GroupsToken)
                .or_else(|| form.take(Param::GroupsToken)),
            tid: query.take(Param::Tid),
            frame_id: query.take(Param::FrameId),
            access_token: query.take(Param::AccessToken),
            callback: query.take(Param::Callback),
            data,
            extra,
        })
    }

    /// Everything as one query string (no leading `?`), in jQuery's order: `transport`,
    /// `groupsToken`, `messageId`, `clientProtocol`, the extra parameters, `connectionToken`,
    /// `connectionData`, `access_token`, `tid`, then `frameId`, `callback`, `data`.
    /// [`parse`](Self::parse) of the result gives `self` back.
    pub fn to_query_string(&self) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        self.append(&mut out, true);
        out.finish()
    }

    /// The query string and form body a POST would carry, as jQuery sends them for long
    /// polling and `/send`: `messageId`, `groupsToken` and `data` go in the form body,
    /// everything else in the query string.
    pub fn to_post_parts(&self) -> (String, String) {
        let mut query = form_urlencoded::Serializer::new(String::new());
        self.append(&mut query, false);
        let mut form = form_urlencoded::Serializer::new(String::new());
        append_opt(&mut form, Param::MessageId, self.message_id.as_deref());
        append_opt(&mut form, Param::GroupsToken, self.groups_token.as_deref());
        append_opt(&mut form, Param::Data, self.data.as_deref());
        (query.finish(), form.finish())
    }

    fn append(&self, out: &mut form_urlencoded::Serializer<'_, String>, form_fields: bool) {
        append_opt(out, Param::Transport, self.transport.map(Transport::name));
        if form_fields {
            append_opt(out, Param::GroupsToken, self.groups_token.as_deref());
            append_opt(out, Param::MessageId, self.message_id.as_deref());
        }
        append_opt(out, Param::ClientProtocol, self.client_protocol.as_deref());
        for (key, value) in &self.extra {
            if Param::from_key(key).is_none() {
                out.append_pair(key, value);
            }
        }
        append_opt(
            out,
            Param::ConnectionToken,
            self.connection_token.as_deref(),
        );
        if let Some(hubs) = &self.connection_data {
            out.append_pair(Param::ConnectionData.name(), &encode_connection_data(hubs));
        }
        append_opt(out, Param::AccessToken, self.access_token.as_deref());
        append_opt(out, Param::Tid, self.tid.as_deref());
        append_opt(out, Param::FrameId, self.frame_id.as_deref());
        append_opt(out, Param::Callback, self.callback.as_deref());
        if form_fields {
            append_opt(out, Param::Data, self.data.as_deref());
        }
    }

    /// The protocol version the server answers for this request's `clientProtocol`.
    pub fn protocol_version(&self) -> ProtocolVersion {
        ProtocolVersion::resolve(self.client_protocol.as_deref())
    }

    /// The hub names of `connectionData` (empty when there is none).
    pub fn hub_names(&self) -> &[String] {
        self.connection_data.as_deref().unwrap_or_default()
    }

    /// The first extra parameter named exactly `name` (e.g. `hub`, `asrs.op`).
    pub fn extra(&self, name: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `connectionData` as clients send it: `[{"name":"chathub"}]`.
pub fn encode_connection_data(hubs: &[String]) -> String {
    #[derive(Serialize)]
    struct Hub<'a> {
        name: &'a str,
    }
    let hubs: Vec<Hub<'_>> = hubs.iter().map(|name| Hub { name }).collect();
    to_json_string(&hubs)
}

fn append_opt(
    out: &mut form_urlencoded::Serializer<'_, String>,
    param: Param,
    value: Option<&str>,
) {
    if let Some(value) = value {
        out.append_pair(param.name(), value);
    }
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), RequestError> {
    if len > max {
        return Err(RequestError::TooLarge { what, len, max });
    }
    Ok(())
}

/// The parameters the protocol defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    Transport,
    ClientProtocol,
    ConnectionToken,
    ConnectionData,
    MessageId,
    GroupsToken,
    Tid,
    FrameId,
    AccessToken,
    Callback,
    Data,
}

impl Param {
    const ALL: [Self; 11] = [
        Self::Transport,
        Self::ClientProtocol,
        Self::ConnectionToken,
        Self::ConnectionData,
        Self::MessageId,
        Self::GroupsToken,
        Self::Tid,
        Self::FrameId,
        Self::AccessToken,
        Self::Callback,
        Self::Data,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Transport => "transport",
            Self::ClientProtocol => "clientProtocol",
            Self::ConnectionToken => "connectionToken",
            Self::ConnectionData => "connectionData",
            Self::MessageId => "messageId",
            Self::GroupsToken => "groupsToken",
            Self::Tid => "tid",
            Self::FrameId => "frameId",
            Self::AccessToken => "access_token",
            Self::Callback => "callback",
            Self::Data => "data",
        }
    }

    fn from_key(key: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(key))
    }
}

/// One value per [`Param`], from one source (query or form).
#[derive(Default)]
struct Slots([Option<String>; 11]);

impl Slots {
    fn set(&mut self, param: Param, value: String) -> Result<(), RequestError> {
        match self.0.get_mut(param as usize) {
            Some(slot @ None) => {
                *slot = Some(value);
                Ok(())
            }
            _ => Err(RequestError::DuplicateParameter(param.name())),
        }
    }

    fn take(&mut self, param: Param) -> Option<String> {
        self.0.get_mut(param as usize).and_then(Option::take)
    }
}

/// Splits `a=1&b&&c=` into `(a, 1), (b, ), (c, )`, still percent-encoded.
fn pairs(input: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    input
        .split(|&b| b == b'&')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let mut halves = s.splitn(2, |&b| b == b'=');
            let key = halves.next().unwrap_or_default();
            (key, halves.next().unwrap_or_default())
        })
}

/// Percent-decodes one name or value, `+` as space. A `%` not followed by two hex digits is
/// kept as it is, like the server does.
fn percent_decode(input: &[u8]) -> Result<String, RequestError> {
    let mut out = Vec::with_capacity(input.len());
    let mut rest = input;
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        match byte {
            b'+' => out.push(b' '),
            b'%' => match (tail.first().and_then(hex), tail.get(1).and_then(hex)) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    rest = tail.get(2..).unwrap_or_default();
                }
                _ => out.push(b'%'),
            },
            _ => out.push(byte),
        }
    }
    String::from_utf8(out).map_err(|_| RequestError::InvalidUtf8)
}

fn hex(byte: &u8) -> Option<u8> {
    char::from(*byte)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// Parses `connectionData` into hub names and checks them for duplicates.
fn parse_connection_data(text: &str, max_hubs: usize) -> Result<Vec<String>, RequestError> {
    let invalid = |e: serde_json::Error| RequestError::InvalidConnectionData(e.to_string());
    let mut de = serde_json::Deserializer::from_str(text);
    let hubs = HubList { max_hubs }.deserialize(&mut de).map_err(invalid)?;
    de.end().map_err(invalid)?;
    let hubs = hubs.ok_or(RequestError::TooManyHubs { max: max_hubs })?;
    let mut seen = HashSet::with_capacity(hubs.len());
    if !hubs.iter().all(|name| seen.insert(fold_case(name))) {
        return Err(RequestError::DuplicateHubNames);
    }
    Ok(hubs)
}

/// Case folding for hub names, close to .NET's `OrdinalIgnoreCase`: each character maps to its
/// simple uppercase form.
fn fold_case(name: &str) -> String {
    name.chars()
        .map(|c| {
            let mut upper = c.to_uppercase();
            match (upper.next(), upper.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

/// Deserializes a JSON array of hub objects into names; `null` is no hubs. `Ok(None)` means
/// more than `max_hubs` (the rest of the array is still checked for syntax, not stored).
struct HubList {
    max_hubs: usize,
}

impl<'de> DeserializeSeed<'de> for HubList {
    type Value = Option<Vec<String>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for HubList {
    type Value = Option<Vec<String>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"an array of {"name": "<hub>"} objects"#)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Some(Vec::new()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut names = Vec::new();
        while let Some(HubEntry(name)) = seq.next_element()? {
            if names.len() == self.max_hubs {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(None);
            }
            names.push(name);
        }
        Ok(Some(names))
    }
}

/// One `{"name": "<hub>"}`. The key is matched case-insensitively (Json.NET does); other keys
/// are ignored.
struct HubEntry(String);

impl<'de> serde::Deserialize<'de> for HubEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(HubEntryVisitor)
    }
}

struct HubEntryVisitor;

impl<'de> Visitor<'de> for HubEntryVisitor {
    type Value = HubEntry;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"a {"name": "<hub>"} object"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HubEntry, A::Error> {
        let mut name = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if !key.eq_ignore_ascii_case("name") {
                map.next_value::<IgnoredAny>()?;
            } else if name.is_some() {
                return Err(de::Error::duplicate_field("name"));
            } else {
                name = Some(map.next_value::<String>()?);
            }
        }
        name.map(HubEntry)
            .ok_or_else(|| de::Error::missing_field("name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// classic-jquery-chromium-longPolling.txt, request #2 (`POST /signalr/connect?...`).
    const JQUERY_LP_CONNECT: &str = "transport=longPolling&clientProtocol=2.1&custom=q1&connectionToken=classic-token-1&connectionData=%5B%7B%22name%22%3A%22chathub%22%7D%5D";
    /// classic-jquery-chromium-longPolling.txt, request #4 body (`POST /signalr/poll`).
    const JQUERY_LP_POLL_BODY: &[u8] = b"messageId=d-ABC%2C1%7CB%2C0%7CC%2C0";
    /// classic-jquery-chromium-longPolling.txt, request #5 body (`POST /signalr/send`).
    const JQUERY_LP_SEND_BODY: &[u8] = b"data=%7B%22H%22%3A%22chathub%22%2C%22M%22%3A%22Send%22%2C%22A%22%3A%5B%22hello%22%2C42%5D%2C%22I%22%3A0%7D";
    /// classic-jquery-chromium-webSockets-redirect.txt, request #3 (WebSocket connect).
    const JQUERY_WS_REDIRECT_CONNECT: &str = "transport=webSockets&clientProtocol=2.1&hub=chathub&asrs.op=%2Fsignalr&connectionToken=classic-token-1&connectionData=%5B%7B%22name%22%3A%22chathub%22%7D%5D&access_token=classic.redirect.token&tid=3";
    /// classic-py-signalr-client-threads-webSockets.txt, request #2: `+` for the space.
    const PY_WS_CONNECT: &str = "transport=webSockets&connectionToken=classic-token-1&connectionData=%5B%7B%22name%22%3A+%22chatHub%22%7D%5D&custom=q1&clientProtocol=1.5";
    /// classic-py-signalr-async-webSockets.txt, request #1 (negotiate): a raw `:`.
    const PY_ASYNC_NEGOTIATE: &str =
        "clientProtocol=1.5&connectionData=%5B%7B%22name%22:+%22chatHub%22%7D%5D&custom=q1";
    /// classic-jquery-chromium-longPolling.txt, request #1 (negotiate).
    const JQUERY_NEGOTIATE: &str = "clientProtocol=2.1&custom=q1&connectionData=%5B%7B%22name%22%3A%22chathub%22%7D%5D&_=1795419086130";

    fn parse(kind: RequestKind, query: &str) -> Result<RequestParams, RequestError> {
        RequestParams::parse(kind, query, None, &Limits::default())
    }

    fn round_trip(kind: RequestKind, params: &RequestParams) {
        let limits = Limits::default();
        let query = params.to_query_string();
        assert_eq!(
            &RequestParams::parse(kind, &query, None, &limits).unwrap(),
            params,
            "{query}"
        );
        let (query, form) = params.to_post_parts();
        let reparsed = RequestParams::parse(kind, &query, Some(form.as_bytes()), &limits).unwrap();
        assert_eq!(&reparsed, params, "{query} / {form}");
    }

    #[test]
    fn request_kind_from_path() {
        assert_eq!(
            RequestKind::from_path("/signalr/negotiate"),
            Ok(RequestKind::Negotiate)
        );
        assert_eq!(
            RequestKind::from_path("/aspnetclient/connect"),
            Ok(RequestKind::Connect)
        );
        assert_eq!(
            RequestKind::from_path("/x/y/RECONNECT"),
            Ok(RequestKind::Reconnect)
        );
        assert_eq!(
            RequestKind::from_path("/signalr/poll?transport=x"),
            Ok(RequestKind::Poll)
        );
        assert_eq!(RequestKind::from_path("start"), Ok(RequestKind::Start));
        for kind in RequestKind::ALL {
            assert_eq!(
                RequestKind::from_path(&format!("/signalr/{kind}")),
                Ok(kind)
            );
        }
        assert!(RequestKind::Send.needs_connection());
        assert!(!RequestKind::Ping.needs_connection());
        assert!(RequestKind::Poll.is_receive());
    }

    #[test]
    fn transports_match_case_insensitively() {
        for t in Transport::ALL {
            assert_eq!(Transport::from_name(t.name()), Some(t));
            assert_eq!(Transport::from_name(&t.name().to_uppercase()), Some(t));
        }
        assert_eq!(Transport::from_name("auto"), None);
    }

    #[test]
    fn parses_jquery_long_polling_connect() {
        let p = RequestParams::parse(
            RequestKind::Connect,
            JQUERY_LP_CONNECT,
            Some(b""),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(p.transport, Some(Transport::LongPolling));
        assert_eq!(p.client_protocol.as_deref(), Some("2.1"));
        assert_eq!(p.connection_token.as_deref(), Some("classic-token-1"));
        assert_eq!(p.hub_names(), ["chathub"]);
        assert_eq!(p.extra, [("custom".to_owned(), "q1".to_owned())]);
        assert_eq!(p.protocol_version(), ProtocolVersion::MAX);
        round_trip(RequestKind::Connect, &p);
    }

    #[test]
    fn parses_jquery_poll_with_form_cursor() {
        let query = JQUERY_LP_CONNECT;
        let limits = Limits::default();
        let p = RequestParams::parse(RequestKind::Poll, query, Some(JQUERY_LP_POLL_BODY), &limits)
            .unwrap();
        assert_eq!(p.message_id.as_deref(), Some("d-ABC,1|B,0|C,0"));
        assert_eq!(p.groups_token, None);
        round_trip(RequestKind::Poll, &p);
        // The query wins over the form for messageId.
        let query = format!("{query}&messageId=fromquery");
        let p = RequestParams::parse(
            RequestKind::Poll,
            &query,
            Some(JQUERY_LP_POLL_BODY),
            &limits,
        )
        .unwrap();
        assert_eq!(p.message_id.as_deref(), Some("fromquery"));
    }

    #[test]
    fn parses_jquery_send_body() {
        let query = JQUERY_LP_CONNECT;
        let limits = Limits::default();
        let p = RequestParams::parse(RequestKind::Send, query, Some(JQUERY_LP_SEND_BODY), &limits)
            .unwrap();
        assert_eq!(
            p.data.as_deref(),
            Some(r#"{"H":"chathub","M":"Send","A":["hello",42],"I":0}"#)
        );
        round_trip(RequestKind::Send, &p);
        // The form wins over the query for data.
        let query = format!("{query}&data=fromquery");
        let p = RequestParams::parse(
            RequestKind::Send,
            &query,
            Some(JQUERY_LP_SEND_BODY),
            &limits,
        )
        .unwrap();
        assert!(p.data.unwrap().starts_with("{\"H\""));
        let p = parse(RequestKind::Send, &format!("{JQUERY_LP_CONNECT}&data=x+y")).unwrap();
        assert_eq!(p.data.as_deref(), Some("x y"));
    }

    #[test]
    fn parses_redirected_websocket_connect() {
        let p = parse(RequestKind::Connect, JQUERY_WS_REDIRECT_CONNECT).unwrap();
        assert_eq!(p.transport, Some(Transport::WebSockets));
        assert_eq!(p.extra("hub"), Some("chathub"));
        assert_eq!(p.extra("asrs.op"), Some("/signalr"));
        assert_eq!(p.access_token.as_deref(), Some("classic.redirect.token"));
        assert_eq!(p.tid.as_deref(), Some("3"));
        round_trip(RequestKind::Connect, &p);
    }

    #[test]
    fn parses_python_clients() {
        let p = parse(RequestKind::Connect, PY_WS_CONNECT).unwrap();
        assert_eq!(p.hub_names(), ["chatHub"]);
        assert_eq!(p.protocol_version(), ProtocolVersion::V1_5);
        round_trip(RequestKind::Connect, &p);
        let p = parse(RequestKind::Negotiate, PY_ASYNC_NEGOTIATE).unwrap();
        assert_eq!(p.hub_names(), ["chatHub"]);
        assert_eq!(p.transport, None);
        round_trip(RequestKind::Negotiate, &p);
    }

    #[test]
    fn negotiate_and_ping_need_no_connection() {
        let p = parse(RequestKind::Negotiate, JQUERY_NEGOTIATE).unwrap();
        assert_eq!(p.connection_token, None);
        assert_eq!(p.extra("_"), Some("1795419086130"));
        round_trip(RequestKind::Negotiate, &p);
        let p = parse(RequestKind::Ping, "?transport=pigeon&x=1").unwrap();
        assert_eq!(p.transport, None);
        assert_eq!(p.extra, [("x".to_owned(), "1".to_owned())]);
        round_trip(RequestKind::Ping, &p);
    }

    #[test]
    fn every_field_round_trips() {
        let p = RequestParams {
            transport: Some(Transport::ServerSentEvents),
            client_protocol: Some("2.1".to_owned()),
            connection_token: Some("a+b/c=".to_owned()),
            connection_data: Some(vec!["chathub".to_owned(), "Other Hub\"&=".to_owned()]),
            message_id: Some("d-ABC,1|B,0|C,0".to_owned()),
            groups_token: Some("g+/=".to_owned()),
            tid: Some("7".to_owned()),
            frame_id: Some("3".to_owned()),
            access_token: Some("x.y.z".to_owned()),
            callback: Some("cb".to_owned()),
            data: Some("{\"H\":\"h\"} & 100% é".to_owned()),
            extra: vec![
                ("hub".to_owned(), "chat hub".to_owned()),
                (String::new(), "%".to_owned()),
                ("_".to_owned(), String::new()),
            ],
        };
        for kind in RequestKind::ALL {
            round_trip(kind, &p);
        }
        round_trip(RequestKind::Negotiate, &RequestParams::default());
        let tokens = parse(
            RequestKind::Reconnect,
            "transport=webSockets&connectionToken=a%2Bb%2F%3D",
        )
        .unwrap();
        assert_eq!(tokens.connection_token.as_deref(), Some("a+b/=")); // decoded once
    }

    #[test]
    fn odd_but_valid_queries() {
        let p = parse(
            RequestKind::Abort,
            "TRANSPORT=LONGPOLLING&ConnectionToken=t&&flag&%zz=%4&connectionData=null",
        )
        .unwrap();
        assert_eq!(p.transport, Some(Transport::LongPolling));
        assert_eq!(p.connection_data, Some(vec![]));
        assert_eq!(
            p.extra,
            [
                ("flag".to_owned(), String::new()),
                ("%zz".to_owned(), "%4".to_owned())
            ]
        );
        round_trip(RequestKind::Abort, &p);
        let p = parse(
            RequestKind::Start,
            "transport=webSockets&connectionToken=t&connectionData=",
        )
        .unwrap();
        assert_eq!(p.connection_data, None);
        let p = parse(
            RequestKind::Start,
            "transport=webSockets&connectionToken=t&connectionData=%5B%7B%22Name%22%3A%22a%22%2C%22x%22%3A1%7D%5D",
        )
        .unwrap();
        assert_eq!(p.hub_names(), ["a"]);
    }

    #[test]
    fn bad_transport() {
        let missing = parse(RequestKind::Connect, "connectionToken=t").unwrap_err();
        assert_eq!(missing, RequestError::UnknownTransport);
        assert_eq!(missing.to_string(), "Protocol error: Unknown transport.");
        assert_eq!(
            parse(
                RequestKind::Send,
                "transport=carrierPigeon&connectionToken=t"
            ),
            Err(RequestError::UnknownTransport)
        );
        assert_eq!(
            parse(RequestKind::Send, "transport=&connectionToken=t"),
            Err(RequestError::UnknownTransport)
        );
    }

    #[test]
    fn bad_connection_token() {
        let missing = parse(RequestKind::Start, "transport=webSockets").unwrap_err();
        assert_eq!(missing, RequestError::MissingConnectionToken);
        assert_eq!(
            missing.to_string(),
            "Protocol error: Missing connection token."
        );
        assert_eq!(
            parse(RequestKind::Poll, "transport=longPolling&connectionToken="),
            Err(RequestError::MissingConnectionToken)
        );
    }

    #[test]
    fn bad_connection_data() {
        let q = |data: &str| {
            let data: String = form_urlencoded::byte_serialize(data.as_bytes()).collect();
            parse(RequestKind::Negotiate, &format!("connectionData={data}"))
        };
        assert!(matches!(
            q("[{\"name\":"),
            Err(RequestError::InvalidConnectionData(_))
        ));
        assert!(matches!(
            q("{\"name\":\"a\"}"),
            Err(RequestError::InvalidConnectionData(_))
        ));
        assert!(matches!(
            q("[{\"nom\":\"a\"}]"),
            Err(RequestError::InvalidConnectionData(_))
        ));
        assert!(matches!(
            q("[{\"name\":1}]"),
            Err(RequestError::InvalidConnectionData(_))
        ));
        assert!(matches!(
            q("[] x"),
            Err(RequestError::InvalidConnectionData(_))
        ));
        assert!(matches!(
            q("[{\"name\":\"a\",\"NAME\":\"b\"}]"),
            Err(RequestError::InvalidConnectionData(_))
        ));
        let dup = q("[{\"name\":\"chathub\"},{\"name\":\"ChatHub\"}]").unwrap_err();
        assert_eq!(dup, RequestError::DuplicateHubNames);
        assert_eq!(dup.to_string(), "Duplicate Hub names found.");
        assert_eq!(
            q("[{\"name\":\"é\"},{\"name\":\"É\"}]"),
            Err(RequestError::DuplicateHubNames)
        );
    }

    #[test]
    fn too_many_hubs() {
        let limits = Limits {
            max_hubs: 2,
            ..Limits::default()
        };
        let hubs: Vec<String> = (0..3).map(|i| format!("h{i}")).collect();
        let query = format!(
            "connectionData={}",
            form_urlencoded::byte_serialize(encode_connection_data(&hubs).as_bytes())
                .collect::<String>()
        );
        assert_eq!(
            RequestParams::parse(RequestKind::Negotiate, &query, None, &limits),
            Err(RequestError::TooManyHubs { max: 2 })
        );
        let limits = Limits {
            max_hubs: 3,
            ..limits
        };
        assert!(RequestParams::parse(RequestKind::Negotiate, &query, None, &limits).is_ok());
    }

    #[test]
    fn size_limits() {
        let limits = Limits {
            max_query_len: 10,
            max_body_len: 12,
            max_data_len: 4,
            max_hubs: 1,
        };
        let p = |kind, q: &str, body: Option<&[u8]>| RequestParams::parse(kind, q, body, &limits);
        assert_eq!(
            p(RequestKind::Ping, "a=12345678", None),
            Ok(RequestParams {
                extra: vec![("a".to_owned(), "12345678".to_owned())],
                ..RequestParams::default()
            })
        );
        assert_eq!(
            p(RequestKind::Ping, "a=123456789", None),
            Err(RequestError::TooLarge {
                what: "query string",
                len: 11,
                max: 10
            })
        );
        assert_eq!(
            p(RequestKind::Ping, "", Some(b"data=12345678")),
            Err(RequestError::TooLarge {
                what: "form body",
                len: 13,
                max: 12
            })
        );
        assert_eq!(
            p(RequestKind::Ping, "", Some(b"data=%41")),
            Ok(RequestParams {
                data: Some("A".to_owned()),
                ..RequestParams::default()
            })
        );
        assert_eq!(
            p(RequestKind::Ping, "", Some(b"data=12+45")),
            Err(RequestError::TooLarge {
                what: "data",
                len: 5,
                max: 4
            })
        );
    }

    #[test]
    fn bad_encoding_and_duplicates() {
        assert_eq!(
            parse(RequestKind::Ping, "x=%FF"),
            Err(RequestError::InvalidUtf8)
        );
        assert_eq!(
            parse(RequestKind::Ping, "%C3=1"),
            Err(RequestError::InvalidUtf8)
        );
        let form = RequestParams::parse(
            RequestKind::Send,
            "transport=longPolling&connectionToken=t",
            Some(b"data=%FE"),
            &Limits::default(),
        );
        assert_eq!(form, Err(RequestError::InvalidUtf8));
        assert_eq!(
            parse(
                RequestKind::Connect,
                "transport=webSockets&transport=longPolling&connectionToken=t"
            ),
            Err(RequestError::DuplicateParameter("transport"))
        );
        assert_eq!(
            parse(RequestKind::Ping, "connectionToken=a&CONNECTIONTOKEN=b"),
            Err(RequestError::DuplicateParameter("connectionToken"))
        );
    }

    #[test]
    fn unknown_request_paths() {
        assert_eq!(
            RequestKind::from_path("/signalr/hubs"),
            Err(RequestError::UnknownRequestKind("hubs".to_owned()))
        );
        assert_eq!(
            RequestKind::from_path("/signalr/connect/"),
            Err(RequestError::UnknownRequestKind(String::new()))
        );
        let long = format!("/{}", "x".repeat(1000));
        let Err(RequestError::UnknownRequestKind(segment)) = RequestKind::from_path(&long) else {
            panic!("accepted")
        };
        assert_eq!(segment.len(), 64);
    }
}
