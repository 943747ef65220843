//! Azure SignalR's data-plane REST API: version 1 (`/api/v1/hubs/{hub}/…`, also under `/api/`
//! without an `api-version`, as the Emulator takes it) and 2022-06-01 (`/api/hubs/{hub}/…?
//! api-version=2022-06-01`, the Management SDK's), with the Emulator's path aliases. A call is
//! parsed into a [`HubCommand`], carried out by [`Relay::apply`](super::Relay) as the service
//! protocol's are, and answered with the status codes of Azure's published API.
//!
//! Authentication: a bearer JWT signed with an access key, whose audience is the request's
//! URL. Only the audience's path is compared (case-insensitively, trailing `/` trimmed): the
//! SDK signs `?api-version=…` into it and appends `excluded` and `reason` after signing, and the
//! relay may be reached under several host names.

use bytes::Bytes;

use super::command::{Audience, Existence, HubCommand, Target};
use crate::aspnetcore::{self, HubMessage, HubProtocol, Invocation, RawValue};
use crate::msgpack::Writer;
use crate::service::Payloads;

/// Largest request body, as Azure's: 1 MB.
pub const MAX_BODY: usize = 1024 * 1024;

/// Which version of the API a call came in on: the status codes differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V1,
    V20220601,
}

/// Who an operation is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    Hub,
    Connection(String),
    User(String),
    Group(String),
}

/// One operation of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Send the body's message (`POST`).
    Send(Scope),
    /// Close connections (`DELETE` of a connection, or `:closeConnections`).
    Close(Scope),
    /// Whether a connection, user or group exists (`GET` or `HEAD`).
    Exists(Scope),
    /// Whether a user is in a group.
    UserInGroup { user: String, group: String },
    /// Put a connection in a group.
    AddConnection { connection: String, group: String },
    /// Take a connection out of a group, or of every group (`None`).
    RemoveConnection {
        connection: String,
        group: Option<String>,
    },
    /// Put a user in a group, for `ttl` seconds if given.
    AddUser {
        user: String,
        group: String,
        ttl: Option<u64>,
    },
    /// Take a user out of a group, or of every group (`None`).
    RemoveUser { user: String, group: Option<String> },
}

/// A parsed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Call {
    pub(crate) version: Version,
    /// The hub's key: lowercased, with `application` as its prefix (`app_hub`) if given.
    pub(crate) hub: String,
    pub(crate) op: Op,
    /// Connections left out of a send or a close.
    pub(crate) excluded: Vec<String>,
    /// Why connections are closed.
    pub(crate) reason: Option<String>,
}

/// What a request to the API is, once its path is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/api/health`, `/api/v1/health`.
    Health,
    /// An operation on a hub.
    Call(Call),
}

/// Why a request is not a call of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RouteError {
    /// No such path.
    NotFound,
    /// The path exists, not with this method.
    MethodNotAllowed,
    /// A bad hub name, group name, `ttl` or other parameter: 400, saying which.
    Invalid(String),
}

/// Routes `method path?query` (the path as it came, percent-encoded).
pub(crate) fn route(method: &str, path: &str, query: &str) -> Result<Route, RouteError> {
    let path = path.trim_end_matches('/');
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let (version, rest) = if let Some(rest) = path.strip_prefix("/api/v1") {
        (Version::V1, rest)
    } else if let Some(rest) = path.strip_prefix("/api") {
        let version = if param("api-version").is_some() {
            Version::V20220601
        } else {
            Version::V1
        };
        (version, rest)
    } else {
        return Err(RouteError::NotFound);
    };
    let segments: Vec<String> = rest
        .split('/')
        .skip(1)
        .map(percent_decode)
        .collect::<Result<_, _>>()?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (hub, tail) = match segments.as_slice() {
        ["health"] => {
            return match method {
                "GET" | "HEAD" => Ok(Route::Health),
                _ => Err(RouteError::MethodNotAllowed),
            }
        }
        ["hubs", hub, tail @ ..] => (*hub, tail),
        _ => return Err(RouteError::NotFound),
    };
    let hub = hub_key(hub, param("application"))?;
    let op = operation(method, tail)?;
    let excluded = params
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("excluded"))
        .map(|(_, v)| v.clone())
        .collect();
    let reason = param("reason").map(str::to_owned);
    let op = match op {
        Op::AddUser { user, group, .. } => {
            let ttl = match param("ttl") {
                None => None,
                Some(t) => Some(t.parse::<u64>().map_err(|_| {
                    RouteError::Invalid(format!("ttl {t:?} is not a number of seconds"))
                })?),
            };
            Op::AddUser { user, group, ttl }
        }
        op => op,
    };
    Ok(Route::Call(Call {
        version,
        hub,
        op,
        excluded,
        reason,
    }))
}

/// The operation at `tail` (the path after `hubs/{hub}`) for `method`: both versions' paths
/// and the Emulator's aliases.
fn operation(method: &str, tail: &[&str]) -> Result<Op, RouteError> {
    let s = |x: &str| x.to_owned();
    let group = |g: &str| -> Result<String, RouteError> {
        if g.trim().is_empty() || g.len() > 1024 {
            return Err(RouteError::Invalid(
                "a group name is 1 to 1024 characters, not all blank".to_owned(),
            ));
        }
        Ok(g.to_owned())
    };
    let not_allowed = Err(RouteError::MethodNotAllowed);
    Ok(match (tail, method) {
        ([] | [":send"], "POST") => Op::Send(Scope::Hub),
        ([":closeConnections"], "POST") => Op::Close(Scope::Hub),
        ([] | [":send"] | [":closeConnections"], _) => return not_allowed,

        (["connections", c] | ["connections", c, ":send"], "POST") => {
            Op::Send(Scope::Connection(s(c)))
        }
        (["connections", c], "GET" | "HEAD") => Op::Exists(Scope::Connection(s(c))),
        (["connections", c], "DELETE") => Op::Close(Scope::Connection(s(c))),
        (["connections", c, "groups"], "DELETE") => Op::RemoveConnection {
            connection: s(c),
            group: None,
        },
        (["connections", c, "groups", g] | ["groups", g, "connections", c], "PUT") => {
            Op::AddConnection {
                connection: s(c),
                group: group(g)?,
            }
        }
        (["connections", c, "groups", g] | ["groups", g, "connections", c], "DELETE") => {
            Op::RemoveConnection {
                connection: s(c),
                group: Some(group(g)?),
            }
        }

        (["groups", g] | ["groups", g, ":send"], "POST") => Op::Send(Scope::Group(group(g)?)),
        (["groups", g, ":closeConnections"], "POST") => Op::Close(Scope::Group(group(g)?)),
        (["groups", g], "GET" | "HEAD") => Op::Exists(Scope::Group(group(g)?)),

        (["users", u] | ["users", u, ":send"], "POST") => Op::Send(Scope::User(s(u))),
        (["users", u, ":closeConnections"], "POST") => Op::Close(Scope::User(s(u))),
        (["users", u], "GET" | "HEAD") => Op::Exists(Scope::User(s(u))),
        (["users", u, "groups"], "DELETE") => Op::RemoveUser {
            user: s(u),
            group: None,
        },
        (["users", u, "groups", g] | ["groups", g, "users", u], "GET" | "HEAD") => {
            Op::UserInGroup {
                user: s(u),
                group: group(g)?,
            }
        }
        (["users", u, "groups", g] | ["groups", g, "users", u], "PUT") => Op::AddUser {
            user: s(u),
            group: group(g)?,
            ttl: None,
        },
        (["users", u, "groups", g] | ["groups", g, "users", u], "DELETE") => Op::RemoveUser {
            user: s(u),
            group: Some(group(g)?),
        },

        (
            ["connections", _]
            | ["connections", _, ":send" | "groups"]
            | ["connections", _, "groups", _]
            | ["groups", _]
            | ["groups", _, ":send" | ":closeConnections"]
            | ["groups", _, "connections" | "users", _]
            | ["users", _]
            | ["users", _, ":send" | ":closeConnections" | "groups"]
            | ["users", _, "groups", _],
            _,
        ) => return not_allowed,
        _ => return Err(RouteError::NotFound),
    })
}

/// The hub's key: a name as Azure allows it (a letter, then up to 127 letters, digits and
/// `` _`,.[] ``), lowercased, behind the application's name if given.
fn hub_key(hub: &str, application: Option<&str>) -> Result<String, RouteError> {
    let valid = |name: &str| {
        let mut chars = name.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && name.len() <= 128
            && chars.all(|c| c.is_ascii_alphanumeric() || "_`,.[]".contains(c))
    };
    if !valid(hub) {
        return Err(RouteError::Invalid(format!("invalid hub name {hub:?}")));
    }
    match application {
        Some(app) if !app.is_empty() => {
            if !valid(app) {
                return Err(RouteError::Invalid(format!(
                    "invalid application name {app:?}"
                )));
            }
            Ok(format!("{app}_{hub}").to_ascii_lowercase())
        }
        _ => Ok(hub.to_ascii_lowercase()),
    }
}

/// Percent-decodes one path segment (`+` stays `+`: this is a path, not a form).
fn percent_decode(segment: &str) -> Result<String, RouteError> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = |j: usize| {
            bytes
                .get(j)
                .and_then(|&h| char::from(h).to_digit(16))
                .and_then(|d| u8::try_from(d).ok())
        };
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push(high << 4 | low);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| RouteError::Invalid("a path that is not UTF-8".to_owned()))
}

impl Call {
    /// The hub command this call asks for; a send's message is `payloads`.
    pub(crate) fn command<'a>(&'a self, payloads: &'a Payloads) -> HubCommand<'a> {
        let audience = |to| Audience {
            to,
            except: &self.excluded,
            except_users: &[],
        };
        let target = |scope: &'a Scope| match scope {
            Scope::Hub => Target::Hub,
            Scope::Connection(c) => Target::Connections(std::slice::from_ref(c)),
            Scope::User(u) => Target::Users(std::slice::from_ref(u)),
            Scope::Group(g) => Target::Groups(std::slice::from_ref(g)),
        };
        match &self.op {
            Op::Send(scope) => HubCommand::Send {
                to: audience(target(scope)),
                payloads,
                filter: None,
            },
            Op::Close(scope) => HubCommand::Close {
                to: audience(target(scope)),
                reason: self.reason.as_deref(),
            },
            Op::Exists(Scope::Connection(c)) => HubCommand::Exists(Existence::Connection(c)),
            Op::Exists(Scope::User(u)) => HubCommand::Exists(Existence::User(u)),
            Op::Exists(Scope::Group(g)) => HubCommand::Exists(Existence::Group(g)),
            // Not a route: there is no existence check of a hub.
            Op::Exists(Scope::Hub) => HubCommand::Exists(Existence::Group("")),
            Op::UserInGroup { user, group } => {
                HubCommand::Exists(Existence::UserInGroup { user, group })
            }
            Op::AddConnection { connection, group } => HubCommand::Join {
                connection,
                group: Some(group),
            },
            Op::RemoveConnection { connection, group } => HubCommand::Leave {
                connection,
                group: group.as_deref(),
            },
            Op::AddUser { user, group, ttl } => HubCommand::UserJoin {
                user,
                group,
                ttl: ttl.map(std::time::Duration::from_secs),
            },
            Op::RemoveUser { user, group } => HubCommand::UserLeave {
                user,
                group: group.as_deref(),
            },
        }
    }

    /// Whether the call carries a message in its body.
    pub(crate) fn sends(&self) -> bool {
        matches!(self.op, Op::Send(_))
    }

    /// The answer, given whether the command found what it was about (`ok`): Azure's status
    /// code, and for a miss the `x-ms-error-code` the SDK reads.
    pub(crate) fn answer(&self, ok: bool) -> (u16, Option<&'static str>) {
        let v1 = self.version == Version::V1;
        match &self.op {
            Op::Send(_) => (202, None),
            // Version 1 accepts the close whatever it finds, as its API says.
            Op::Close(Scope::Connection(_)) if v1 => (202, None),
            Op::Close(Scope::Connection(_)) if ok => (200, None),
            Op::Close(Scope::Connection(_)) => (404, Some("Warning.Connection.NotExisted")),
            Op::Close(_) => (204, None),
            Op::Exists(_) | Op::UserInGroup { .. } if ok => (200, None),
            Op::Exists(Scope::Connection(_)) => (404, Some("Warning.Connection.NotExisted")),
            Op::Exists(Scope::User(_)) => (404, Some("Warning.User.NotExisted")),
            Op::Exists(_) => (404, Some("Warning.Group.NotExisted")),
            Op::UserInGroup { .. } => (404, Some("Info.User.NotInGroup")),
            Op::AddConnection { .. } if ok => (200, None),
            Op::AddConnection { .. } => (404, Some("Error.Connection.NotExisted")),
            // Found or not: the Management SDK takes no 404 here (its
            // RemoveNonexistentConnectionFromGroupRestApiTest fact).
            Op::RemoveConnection { .. } => (200, None),
            Op::AddUser { .. } if v1 => (202, None),
            Op::AddUser { .. } => (200, None),
            Op::RemoveUser { .. } if v1 => (202, None),
            Op::RemoveUser { .. } => (204, None),
        }
    }
}

/// Why a send's body is refused (400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BodyError(pub(crate) String);

/// The message a send's body carries, encoded for every protocol: a JSON `{"target",
/// "arguments"}` (keys in any case: the SDK writes `Target`, `Arguments`), or, as
/// `application/octet-stream`, a MessagePack map from protocol name to that protocol's whole
/// frame (what the Management SDK sends when MessagePack is on).
pub(crate) fn payloads(content_type: Option<&str>, body: &[u8]) -> Result<Payloads, BodyError> {
    let media = content_type
        .and_then(|c| c.split(';').next())
        .map(str::trim)
        .unwrap_or("application/json");
    if media.eq_ignore_ascii_case("application/octet-stream") {
        return binary_payloads(body);
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| BodyError(format!("the body is not JSON: {e}")))?;
    let serde_json::Value::Object(object) = value else {
        return Err(BodyError("the body is not a JSON object".to_owned()));
    };
    let field = |name: &str| {
        object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let target = match field("target") {
        Some(serde_json::Value::String(t)) if !t.is_empty() => t.clone(),
        _ => return Err(BodyError("the body has no target".to_owned())),
    };
    let arguments: &[serde_json::Value] = match field("arguments") {
        None | Some(serde_json::Value::Null) => &[],
        Some(serde_json::Value::Array(a)) => a,
        Some(_) => return Err(BodyError("arguments is not an array".to_owned())),
    };
    let invocation = |encode: &dyn Fn(&serde_json::Value) -> Vec<u8>| {
        HubMessage::Invocation(Invocation {
            headers: Default::default(),
            invocation_id: None,
            target: target.clone(),
            arguments: arguments.iter().map(|a| RawValue::new(encode(a))).collect(),
            stream_ids: Vec::new(),
        })
    };
    let mut json = Vec::new();
    aspnetcore::json::write_message(
        &invocation(&|a| serde_json::to_vec(a).unwrap_or_default()),
        &mut json,
    );
    let mut messagepack = Vec::new();
    aspnetcore::messagepack::write_message(
        &invocation(&|a| {
            let mut out = Vec::new();
            Writer(&mut out).json(a);
            out
        }),
        &mut messagepack,
    )
    .map_err(|e| BodyError(format!("the message cannot be sent: {e}")))?;
    Ok(Payloads(vec![
        (HubProtocol::Json.name().to_owned(), Bytes::from(json)),
        (
            HubProtocol::MessagePack.name().to_owned(),
            Bytes::from(messagepack),
        ),
    ]))
}

/// The payloads of an `application/octet-stream` body: a MessagePack map from protocol name
/// (string) to that protocol's whole frame (binary).
fn binary_payloads(body: &[u8]) -> Result<Payloads, BodyError> {
    let bad = |what: &str| BodyError(format!("the MessagePack body is invalid: {what}"));
    let mut r = crate::msgpack::Reader::new(body);
    let len = r.map_len().map_err(|_| bad("not a map"))?;
    let mut payloads = Vec::new();
    for _ in 0..len {
        let name = r
            .str()
            .map_err(|_| bad("a key is not a string"))?
            .to_owned();
        let frame = r.bin().map_err(|_| bad("a value is not binary"))?;
        if payloads.len() < 16 {
            payloads.push((name, Bytes::copy_from_slice(frame)));
        }
    }
    if payloads.is_empty() {
        return Err(bad("no payload"));
    }
    Ok(Payloads(payloads))
}

/// Azure's `ErrorDetail` body for an error code, as JSON.
pub(crate) fn error_body(code: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "code": code, "message": message })).unwrap_or_default()
}

impl super::Relay {
    /// Answers a request to the REST API (any path under `/api/`).
    pub(super) fn rest(
        &mut self,
        now: std::time::Instant,
        req: &super::HttpRequest,
    ) -> Result<super::RequestOutcome, super::Rejection> {
        let call = match route(&req.method, &req.path, &req.query) {
            Ok(Route::Health) => return Ok(respond(200, None, "")),
            Ok(Route::Call(call)) => call,
            Err(RouteError::NotFound) => return Err(super::Rejection::NotFound),
            Err(RouteError::MethodNotAllowed) => {
                return Err(super::Rejection::EndpointMethodNotAllowed)
            }
            Err(RouteError::Invalid(why)) => {
                self.admission.verify_rest(&self.config, now, req)?;
                return Ok(respond(400, Some("Error.InvalidRequest"), &why));
            }
        };
        self.admission.verify_rest(&self.config, now, req)?;
        let payloads = if call.sends() {
            if req.body.len() > MAX_BODY {
                return Ok(respond(
                    413,
                    Some("Error.PayloadTooLarge"),
                    "The body is larger than 1 MB.",
                ));
            }
            match payloads(req.header("content-type"), &req.body) {
                Ok(p) => p,
                Err(BodyError(why)) => return Ok(respond(400, Some("Error.InvalidRequest"), &why)),
            }
        } else {
            Payloads(Vec::new())
        };
        // A connection of another hub is not found.
        let foreign = match &call.op {
            Op::Send(Scope::Connection(c))
            | Op::Close(Scope::Connection(c))
            | Op::Exists(Scope::Connection(c))
            | Op::AddConnection { connection: c, .. }
            | Op::RemoveConnection { connection: c, .. } => self
                .directory
                .hub_of(c)
                .is_some_and(|h| self.directory.name(h) != call.hub),
            _ => false,
        };
        let answer = |ok| {
            let (status, code) = call.answer(ok);
            respond(status, code, code.map_or("", not_found_text))
        };
        if foreign {
            return Ok(answer(false));
        }
        let response = |ok| match answer(ok) {
            super::RequestOutcome::Respond(r) => r,
            _ => unreachable!("an answer is a response"),
        };
        let waiter = super::cluster::Waiter::Rest {
            request: None,
            found: response(true),
            missing: response(false),
        };
        let command = call.command(&payloads);
        Ok(
            match self.run(now, &call.hub, None, command, Some(waiter)) {
                (super::cluster::Ran::Asked(Some(request)), _) => {
                    super::RequestOutcome::Pending(request)
                }
                (super::cluster::Ran::Done(ok), _) => answer(ok.unwrap_or(false)),
                (super::cluster::Ran::Asked(None), _) => answer(false),
            },
        )
    }
}

/// A REST answer: the status, and for an error its code (`x-ms-error-code`, and Azure's
/// `ErrorDetail` body).
fn respond(status: u16, code: Option<&'static str>, message: &str) -> super::RequestOutcome {
    let mut response = super::HttpResponse::text(status, "");
    if let Some(code) = code {
        response.content_type = "application/json";
        response.body = Bytes::from(error_body(code, message));
        response.headers.push(("x-ms-error-code", code.to_owned()));
    }
    super::RequestOutcome::Respond(response)
}

/// What a not-found error code says.
fn not_found_text(code: &'static str) -> &'static str {
    match code {
        "Warning.Connection.NotExisted" | "Error.Connection.NotExisted" => {
            "The connection does not exist."
        }
        "Warning.User.NotExisted" => "The user has no connection.",
        "Warning.Group.NotExisted" => "The group has no connection.",
        "Info.User.NotInGroup" => "The user is not in the group.",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(method: &str, path: &str, query: &str) -> Call {
        match route(method, path, query) {
            Ok(Route::Call(call)) => call,
            other => panic!("{method} {path}?{query}: {other:?}"),
        }
    }

    #[test]
    fn both_versions_and_the_emulators_aliases_route_to_one_operation() {
        let v2 = "api-version=2022-06-01";
        let send_group = Op::Send(Scope::Group("g 1".to_owned()));
        assert_eq!(
            call("POST", "/api/v1/hubs/Chat/groups/g%201", "").op,
            send_group
        );
        assert_eq!(
            call("POST", "/api/hubs/chat/groups/g%201/:send", v2).op,
            send_group
        );
        let add = Op::AddUser {
            user: "u".to_owned(),
            group: "g".to_owned(),
            ttl: Some(60),
        };
        assert_eq!(
            call(
                "PUT",
                "/api/hubs/chat/users/u/groups/g",
                &format!("{v2}&ttl=60")
            )
            .op,
            add
        );
        assert_eq!(
            call("PUT", "/api/v1/hubs/chat/groups/g/users/u", "ttl=60").op,
            add
        );
        let c = call(
            "POST",
            "/api/hubs/Chat/:send",
            &format!("{v2}&excluded=a&excluded=b&application=App"),
        );
        assert_eq!(
            (c.version, c.hub.as_str()),
            (Version::V20220601, "app_chat")
        );
        assert_eq!(c.excluded, ["a", "b"]);
        assert_eq!(call("POST", "/api/hubs/chat", "").version, Version::V1);
        assert_eq!(
            call("DELETE", "/api/hubs/chat/connections/c1/groups", v2).op,
            Op::RemoveConnection {
                connection: "c1".to_owned(),
                group: None
            }
        );
        assert_eq!(
            call("HEAD", "/api/hubs/chat/groups/g/users/u", v2).op,
            call("GET", "/api/hubs/chat/users/u/groups/g", v2).op
        );
        assert_eq!(route("HEAD", "/api/v1/health", ""), Ok(Route::Health));
        assert_eq!(route("GET", "/api/health", v2), Ok(Route::Health));
    }

    #[test]
    fn bad_paths_methods_and_names_are_refused() {
        assert_eq!(
            route("GET", "/api/v1/hubs/chat", ""),
            Err(RouteError::MethodNotAllowed)
        );
        assert_eq!(
            route("PUT", "/api/v1/hubs/chat/users/u", ""),
            Err(RouteError::MethodNotAllowed)
        );
        assert_eq!(
            route("POST", "/api/v1/hubs/chat/nothing", ""),
            Err(RouteError::NotFound)
        );
        assert_eq!(route("POST", "/api/v2/x", ""), Err(RouteError::NotFound));
        assert!(matches!(
            route("POST", "/api/v1/hubs/1chat", ""),
            Err(RouteError::Invalid(_))
        ));
        assert!(matches!(
            route("POST", "/api/v1/hubs/chat/groups/%20", ""),
            Err(RouteError::Invalid(_))
        ));
        assert!(matches!(
            route("PUT", "/api/v1/hubs/chat/groups/g/users/u", "ttl=soon"),
            Err(RouteError::Invalid(_))
        ));
        assert!(matches!(
            route("POST", "/api/v1/hubs/chat/users/%FF", ""),
            Err(RouteError::Invalid(_))
        ));
    }

    #[test]
    fn a_json_body_is_encoded_for_every_protocol_and_keys_are_case_insensitive() {
        let p = payloads(
            Some("application/json; charset=utf-8"),
            br#"{"Target":"news","Arguments":[1,"two",{"x":[true,null,2.5]}]}"#,
        )
        .expect("a good body");
        let json = p.get("json").expect("json");
        assert_eq!(
            json.as_ref(),
            b"{\"type\":1,\"target\":\"news\",\"arguments\":[1,\"two\",{\"x\":[true,null,2.5]}]}\x1e"
        );
        let mp = p.get("messagepack").expect("messagepack");
        let parsed = crate::aspnetcore::messagepack::parse_message(&mp[1..]).expect("a frame");
        let HubMessage::Invocation(inv) = parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!((inv.target.as_str(), inv.arguments.len()), ("news", 3));
        assert!(payloads(None, br#"{"arguments":[]}"#).is_err());
        assert!(payloads(None, b"[1]").is_err());
        assert!(payloads(None, br#"{"target":"t","arguments":5}"#).is_err());
    }

    #[test]
    fn an_octet_stream_body_carries_a_frame_per_protocol() {
        let mut body = Vec::new();
        let mut w = Writer(&mut body);
        w.map_len(2);
        w.str("json");
        w.bin(b"{\"type\":1,\"target\":\"t\",\"arguments\":[]}\x1e");
        w.str("messagepack");
        w.bin(b"\x05\x95\x01\x80\xc0\xa1t");
        let p = payloads(Some("application/octet-stream"), &body).expect("a good body");
        assert_eq!(p.0.len(), 2);
        assert_eq!(p.get("messagepack").map(|b| b.len()), Some(7));
        assert!(payloads(Some("application/octet-stream"), b"\x91\x01").is_err());
    }
}
