//! Azure SignalR connection strings and the JWTs signed with their access keys.
//!
//! - [`ConnectionString`] parses `Endpoint=...;AccessKey=...;Version=1.0;[Port=..;]...` by the
//!   SDK's rules and derives the URLs and audiences an app server uses. Only AccessKey auth is
//!   supported: an `AuthType` (Entra ID, managed identity) is rejected with a clear error.
//! - [`sign`] and [`verify`] handle HS256/HS512 JWTs keyed by the UTF-8 bytes of an access
//!   key. Verification bounds the token length before decoding, rejects every algorithm but
//!   HS256/HS512 (`none` included), compares signatures in constant time against each
//!   configured key (for key rotation), then checks `exp`/`nbf` with a leeway and the
//!   audience.
//! - [`Audience`] matches `aud` the way the SDK builds it: scheme, host, path and hub, with
//!   the port ignored (the SDK never puts the port in `aud`).
//!
//! Time always comes in as an argument (`now_unix_secs`); nothing here reads a clock.
//!
//! ```
//! use signalr_relay_core::auth::{sign, verify, Algorithm, Claims, ConnectionString, Validation};
//!
//! let cs = ConnectionString::parse(
//!     "Endpoint=http://127.0.0.1;Port=8080;AccessKey=secret-key;Version=1.0;",
//! )?;
//! assert_eq!(cs.server_endpoint(), "http://127.0.0.1:8080/");
//! let audience = cs.server_audience("Chat");
//! assert_eq!(audience.to_string(), "http://127.0.0.1/server/?hub=chat");
//!
//! let now = 1_700_000_000;
//! let mut claims = Claims::issued_at(now, 3600);
//! claims.aud.push(audience.to_string());
//! claims.nameid = Some("server-1".to_owned());
//! let key = cs.access_key().as_bytes();
//! let token = sign(&claims, key, Algorithm::Hs256);
//!
//! let validation = Validation::new().with_audience(audience);
//! let verified = verify(&token, &[key], now + 10, &validation)?;
//! assert_eq!(verified.user_id(), Some("server-1"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod audience;
mod claims;
mod connection_string;
mod error;
mod jwt;
mod url;

#[cfg(test)]
mod tests;

pub(crate) use audience::AudienceParts;
pub use audience::{Audience, AudienceCheck};
pub use claims::{claim_names, Claims};
pub use connection_string::{ConnectionString, ConnectionStringError};
pub use error::{JwtError, MalformedToken, TokenPart};
pub use jwt::{
    sign, verify, verify_signature, Algorithm, Validation, DEFAULT_LEEWAY_SECS,
    DEFAULT_MAX_TOKEN_LEN,
};
pub use url::{percent_encode, HttpUrl, Scheme, UrlError};

/// Longest excerpt of an offending value quoted in an error message, in characters.
const MAX_QUOTED_CHARS: usize = 40;

/// `value` cut to [`MAX_QUOTED_CHARS`] characters (with `...` when cut), for error messages.
fn quote(value: &str) -> String {
    match value.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}...", value.get(..cut).unwrap_or_default()),
        None => value.to_owned(),
    }
}

/// The key [`fuzz_jwt`] verifies tokens with (the emulator's well-known key).
#[cfg(any(test, feature = "__fuzz"))]
const FUZZ_KEY: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";

/// A second, "rotated" key [`fuzz_jwt`] also accepts.
#[cfg(any(test, feature = "__fuzz"))]
const FUZZ_OLD_KEY: &[u8] = b"old-access-key";

/// The fixed "now" of [`fuzz_jwt`]: 2023-11-14T22:13:20Z.
#[cfg(any(test, feature = "__fuzz"))]
const FUZZ_NOW: u64 = 1_700_000_000;

/// The audience [`fuzz_jwt`] expects.
#[cfg(any(test, feature = "__fuzz"))]
const FUZZ_AUDIENCE: &str = "http://127.0.0.1/client/?hub=chat";

/// Fuzz target body (not a stable API). Never panics unless a property fails:
/// - the input, as (lossy) UTF-8, is verified as a token against fixed keys at a fixed time,
///   with both audience checks, and parsed as an audience;
/// - if it parses as a connection string, rendering and re-parsing gives the same value;
/// - if it is a JSON object that reads as [`Claims`], signing them and verifying the token
///   gives the same claims back (exactly, unless they contain floating-point numbers, which
///   `serde_json` does not promise to round-trip).
#[doc(hidden)]
#[cfg(any(test, feature = "__fuzz"))]
pub fn fuzz_jwt(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    fuzz_verify(&text);
    fuzz_audience(&text);
    fuzz_connection_string(&text);
    if let Ok(text) = std::str::from_utf8(data) {
        fuzz_sign_round_trip(text);
    }
}

#[cfg(any(test, feature = "__fuzz"))]
fn fuzz_verify(token: &str) {
    let keys: [&[u8]; 2] = [FUZZ_OLD_KEY, FUZZ_KEY];
    let by_endpoint = Validation::new().with_audience(Audience::new(
        Scheme::Http,
        "127.0.0.1",
        "/client/",
        Some("chat"),
    ));
    if let Ok(claims) = verify(token, &keys, FUZZ_NOW, &by_endpoint) {
        assert!(claims.exp.is_some_and(|exp| exp > FUZZ_NOW));
        assert!(!claims.aud.is_empty());
        let _ = claims.user_id();
    }
    let exact = Validation::new().with_audience(AudienceCheck::Exact(FUZZ_AUDIENCE.to_owned()));
    let _ = verify(token, &keys, FUZZ_NOW, &exact);
}

#[cfg(any(test, feature = "__fuzz"))]
fn fuzz_audience(text: &str) {
    if let Ok(audience) = Audience::parse(text) {
        let rendered = audience.to_string();
        assert!(
            audience.matches(&rendered),
            "an audience must match its rendering"
        );
    }
}

#[cfg(any(test, feature = "__fuzz"))]
fn fuzz_connection_string(text: &str) {
    let Ok(parsed) = ConnectionString::parse(text) else {
        return;
    };
    let rendered = parsed.to_string();
    let reparsed = ConnectionString::parse(&rendered);
    assert_eq!(
        reparsed.as_ref(),
        Ok(&parsed),
        "render -> parse must round-trip"
    );
    assert!(parsed.server_endpoint().ends_with('/'));
    assert!(parsed.client_endpoint().ends_with('/'));
    assert!(parsed.audience_base().ends_with('/'));
    assert!(!parsed.endpoint().is_empty());
    let audience = parsed.client_audience("Chat");
    assert!(audience.matches(&audience.to_string()));
}

#[cfg(any(test, feature = "__fuzz"))]
fn fuzz_sign_round_trip(text: &str) {
    let Ok(serde_json::Value::Object(object)) = serde_json::from_str(text) else {
        return;
    };
    let Ok(claims) = Claims::from_json_object(object) else {
        return;
    };
    let exact = !claims.extra.values().any(has_float);
    for alg in [Algorithm::Hs256, Algorithm::Hs512] {
        let token = sign(&claims, FUZZ_KEY, alg);
        let decoded = verify_signature(&token, &[FUZZ_KEY], usize::MAX)
            .unwrap_or_else(|error| panic!("a token we signed failed to verify: {error}"));
        if exact {
            assert_eq!(decoded, claims, "sign -> verify must round-trip the claims");
        }
        // At `nbf` the token is valid unless it has already expired.
        let now = claims.nbf.unwrap_or(0);
        let validation = Validation::new()
            .with_leeway_secs(0)
            .with_max_token_len(usize::MAX)
            .with_require_exp(false);
        let result = verify(&token, &[FUZZ_KEY], now, &validation).map(|_| ());
        match claims.exp {
            Some(exp) if now >= exp => assert_eq!(result, Err(JwtError::Expired)),
            _ => assert_eq!(result, Ok(())),
        }
    }
}

#[cfg(any(test, feature = "__fuzz"))]
fn has_float(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Number(number) => number.is_f64(),
        serde_json::Value::Array(items) => items.iter().any(has_float),
        serde_json::Value::Object(object) => object.values().any(has_float),
        _ => false,
    }
}
