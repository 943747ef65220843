//! The claims (payload) of a relay JWT.

use serde_json::{Map, Number, Value};

use super::error::{JwtError, MalformedToken};

/// Claim names the relay and the Azure SignalR SDK give a meaning to.
///
/// The `asrs.s.*` claims are system claims the SDK puts into client tokens (see the service
/// protocol digest, §3.4); the server SDK drops them, and the registered JWT claims, when it
/// rebuilds the user principal.
pub mod claim_names {
    /// Audience.
    pub const AUDIENCE: &str = "aud";
    /// Expiry time, unix seconds.
    pub const EXPIRES: &str = "exp";
    /// Not-before time, unix seconds.
    pub const NOT_BEFORE: &str = "nbf";
    /// Issued-at time, unix seconds.
    pub const ISSUED_AT: &str = "iat";
    /// The short JWT name of `ClaimTypes.NameIdentifier`.
    pub const NAME_ID: &str = "nameid";
    /// Subject.
    pub const SUBJECT: &str = "sub";
    /// Prefix of every system claim.
    pub const SYSTEM_PREFIX: &str = "asrs.s.";
    /// Prefix the SDK puts on a user claim whose name collides with a reserved one.
    pub const USER_ESCAPE_PREFIX: &str = "asrs.u.";
    /// The SignalR user id (`UserIdentifier`).
    pub const USER_ID: &str = "asrs.s.uid";
    /// The authentication type; omitted when it is `Bearer`.
    pub const AUTH_TYPE: &str = "asrs.s.aut";
    /// The name claim type, when not the default.
    pub const NAME_TYPE: &str = "asrs.s.nt";
    /// The role claim type, when not the default.
    pub const ROLE_TYPE: &str = "asrs.s.rt";
    /// The server id the client negotiated with (server stickiness).
    pub const SERVER_NAME: &str = "asrs.s.sn";
    /// `Preferred` or `Required`: how strictly the client sticks to [`SERVER_NAME`].
    pub const SERVER_STICKY: &str = "asrs.s.ssticky";
    /// `True` when detailed errors are enabled.
    pub const DETAILED_ERRORS: &str = "asrs.s.derror";
    /// The number of service endpoints, when more than one (tracing only).
    pub const ENDPOINT_COUNT: &str = "asrs.s.secn";
    /// The long-polling idle timeout in seconds (1-300).
    pub const MAX_POLL_INTERVAL: &str = "asrs.s.ttl";
    /// `true` for a diagnostic client.
    pub const DIAGNOSTIC_CLIENT: &str = "asrs.s.dc";
    /// A custom handshake timeout in seconds (1-30).
    pub const HANDSHAKE_TIMEOUT: &str = "asrs.s.cht";
    /// Bitmask of the allowed transports (WebSockets = 1, SSE = 2, long polling = 4).
    pub const HTTP_TRANSPORT_TYPE: &str = "asrs.s.htt";
    /// `true`: close the client once [`AUTH_EXPIRES_ON`] has passed.
    pub const CLOSE_ON_AUTH_EXPIRATION: &str = "asrs.s.coae";
    /// When the client's authentication expires, unix seconds.
    pub const AUTH_EXPIRES_ON: &str = "asrs.s.aeo";
    /// The application name (classic ASP.NET only).
    pub const APP_NAME: &str = "asrs.s.apn";
    /// The SDK version (classic ASP.NET only).
    pub const SDK_VERSION: &str = "asrs.s.vn";
}

use claim_names::{AUDIENCE, EXPIRES, ISSUED_AT, NAME_ID, NOT_BEFORE, SUBJECT, USER_ID};

/// 2^64 as a float: JSON numbers at or above it are not valid unix seconds.
const U64_LIMIT_F64: f64 = 18_446_744_073_709_551_616.0;

/// The claims of a token.
///
/// The registered claims the relay checks are typed fields; every other claim (`sub`,
/// `unique_name`, `role`, `asrs.s.*`, ...) is kept in [`extra`](Self::extra) as JSON, in the
/// token's order, with repeated claim types as arrays, the way the SDK writes them.
///
/// JSON mapping, both ways:
/// - `aud`: a string, or an array of strings. An empty list is omitted.
/// - `exp`, `nbf`, `iat`: non-negative JSON numbers in unix seconds; fractions are
///   truncated.
/// - `nameid`: a string. A `nameid` of another JSON type (an array when several name
///   identifiers were issued) stays in `extra`.
/// - JSON `null` for `aud`, `exp`, `nbf` or `iat` counts as absent.
///
/// When writing, the typed fields win: entries of `extra` named `aud`, `exp`, `nbf` or `iat`
/// are never written, and `extra["nameid"]` only when [`nameid`](Self::nameid) is `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims {
    /// The audiences (`aud`); usually exactly one.
    pub aud: Vec<String>,
    /// Expiry (`exp`), unix seconds. The token is invalid at and after this time.
    pub exp: Option<u64>,
    /// Not-before (`nbf`), unix seconds.
    pub nbf: Option<u64>,
    /// Issued-at (`iat`), unix seconds. Informational: verification does not check it.
    pub iat: Option<u64>,
    /// The name identifier (`nameid`): the server id in server tokens, the user id in
    /// serverless tokens.
    pub nameid: Option<String>,
    /// Every other claim.
    pub extra: Map<String, Value>,
}

impl Claims {
    /// Empty claims.
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims valid from `now_unix_secs` for `lifetime_secs`: `iat = nbf = now`,
    /// `exp = now + lifetime`, as the SDK issues them.
    pub fn issued_at(now_unix_secs: u64, lifetime_secs: u64) -> Self {
        Self {
            iat: Some(now_unix_secs),
            nbf: Some(now_unix_secs),
            exp: Some(now_unix_secs.saturating_add(lifetime_secs)),
            ..Self::default()
        }
    }

    /// Reads claims from a decoded JWT payload.
    ///
    /// Fails with [`MalformedToken::ClaimType`] when `aud`, `exp`, `nbf` or `iat` has a type
    /// the mapping above does not allow.
    pub fn from_json_object(mut object: Map<String, Value>) -> Result<Self, JwtError> {
        let aud = object.remove(AUDIENCE).map_or(Ok(Vec::new()), audiences)?;
        let exp = take_numeric_date(&mut object, EXPIRES)?;
        let nbf = take_numeric_date(&mut object, NOT_BEFORE)?;
        let iat = take_numeric_date(&mut object, ISSUED_AT)?;
        let nameid = match object.remove(NAME_ID) {
            Some(Value::String(nameid)) => Some(nameid),
            Some(other) => {
                object.insert(NAME_ID.to_owned(), other);
                None
            }
            None => None,
        };
        Ok(Self {
            aud,
            exp,
            nbf,
            iat,
            nameid,
            extra: object,
        })
    }

    /// Writes the claims as a JWT payload object (see the type's documentation).
    pub fn to_json_object(&self) -> Map<String, Value> {
        let mut object: Map<String, Value> = self
            .extra
            .iter()
            .filter(|(name, _)| {
                ![AUDIENCE, EXPIRES, NOT_BEFORE, ISSUED_AT].contains(&name.as_str())
            })
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        if let Some(nameid) = &self.nameid {
            object.insert(NAME_ID.to_owned(), Value::String(nameid.clone()));
        }
        for (name, time) in [
            (NOT_BEFORE, self.nbf),
            (EXPIRES, self.exp),
            (ISSUED_AT, self.iat),
        ] {
            if let Some(time) = time {
                object.insert(name.to_owned(), Value::from(time));
            }
        }
        match self.aud.as_slice() {
            [] => {}
            [single] => {
                object.insert(AUDIENCE.to_owned(), Value::String(single.clone()));
            }
            several => {
                let list = several.iter().cloned().map(Value::String).collect();
                object.insert(AUDIENCE.to_owned(), Value::Array(list));
            }
        }
        object
    }

    /// A claim from [`extra`](Self::extra).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.extra.get(name)
    }

    /// A claim from [`extra`](Self::extra), if it is a JSON string.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.extra.get(name).and_then(Value::as_str)
    }

    /// Sets a claim in [`extra`](Self::extra), returning the previous value.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        self.extra.insert(name.into(), value.into())
    }

    /// The SignalR user id: `asrs.s.uid` if present, else `nameid`, else `sub` (the
    /// emulator's rule). Only non-empty strings count.
    pub fn user_id(&self) -> Option<&str> {
        non_empty(self.get_str(USER_ID))
            .or_else(|| non_empty(self.nameid.as_deref()))
            .or_else(|| non_empty(self.get_str(SUBJECT)))
    }

    /// The `asrs.s.*` system claims, with their full names.
    pub fn system_claims(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.extra
            .iter()
            .filter(|(name, _)| name.starts_with(claim_names::SYSTEM_PREFIX))
            .map(|(name, value)| (name.as_str(), value))
    }
}

fn non_empty(text: Option<&str>) -> Option<&str> {
    text.filter(|text| !text.is_empty())
}

fn claim_type_error(claim: &'static str) -> JwtError {
    JwtError::Malformed(MalformedToken::ClaimType(claim))
}

fn audiences(value: Value) -> Result<Vec<String>, JwtError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::String(aud) => Ok(vec![aud]),
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(aud) => Ok(aud),
                _ => Err(claim_type_error(AUDIENCE)),
            })
            .collect(),
        _ => Err(claim_type_error(AUDIENCE)),
    }
}

fn take_numeric_date(
    object: &mut Map<String, Value>,
    claim: &'static str,
) -> Result<Option<u64>, JwtError> {
    match object.remove(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => unix_seconds(&number)
            .map(Some)
            .ok_or_else(|| claim_type_error(claim)),
        Some(_) => Err(claim_type_error(claim)),
    }
}

/// A JSON number as whole unix seconds: non-negative, below 2^64, fraction truncated.
fn unix_seconds(number: &Number) -> Option<u64> {
    if let Some(seconds) = number.as_u64() {
        return Some(seconds);
    }
    let seconds = number.as_f64()?;
    // The range check makes the cast exact up to the truncated fraction.
    (seconds.is_finite() && (0.0..U64_LIMIT_F64).contains(&seconds)).then_some(seconds as u64)
}
