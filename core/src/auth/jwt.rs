//! HS256/HS512 JWTs: signing and verification.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::{Sha256, Sha512};

use super::audience::AudienceCheck;
use super::claims::Claims;
use super::error::{JwtError, MalformedToken, TokenPart};
use super::quote;

/// Default bound on a token's length, in bytes, checked before anything is decoded.
///
/// The SDK refuses to issue tokens over 4096 characters; 8 KiB leaves room for tokens
/// issued by other means (many custom claims) while keeping the work per request small.
pub const DEFAULT_MAX_TOKEN_LEN: usize = 8 * 1024;

/// Default clock-skew leeway applied to `exp` and `nbf`, in seconds.
pub const DEFAULT_LEEWAY_SECS: u64 = 60;

/// A JWS signing algorithm this crate supports: HMAC with SHA-256 or SHA-512.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Algorithm {
    /// `HS256`, the SDK's default.
    #[default]
    Hs256,
    /// `HS512`.
    Hs512,
}

impl Algorithm {
    /// The `alg` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Hs512 => "HS512",
        }
    }

    /// Looks an algorithm up by its `alg` header value. Names are case-sensitive (RFC 7515),
    /// and `none` is never accepted.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "HS256" => Some(Self::Hs256),
            "HS512" => Some(Self::Hs512),
            _ => None,
        }
    }

    /// The header every token signed with this algorithm carries.
    fn header_json(self) -> &'static str {
        match self {
            Self::Hs256 => r#"{"alg":"HS256","typ":"JWT"}"#,
            Self::Hs512 => r#"{"alg":"HS512","typ":"JWT"}"#,
        }
    }

    fn tag(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        match self {
            Self::Hs256 => hmac_tag::<Hmac<Sha256>>(key, message),
            Self::Hs512 => hmac_tag::<Hmac<Sha512>>(key, message),
        }
    }

    fn verify_tag(self, key: &[u8], message: &[u8], tag: &[u8]) -> bool {
        match self {
            Self::Hs256 => hmac_verify::<Hmac<Sha256>>(key, message, tag),
            Self::Hs512 => hmac_verify::<Hmac<Sha512>>(key, message, tag),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`verify`] checks beyond the signature.
///
/// The default: no audience check, [`DEFAULT_LEEWAY_SECS`] of leeway, tokens up to
/// [`DEFAULT_MAX_TOKEN_LEN`] bytes, `exp` required.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Validation {
    /// The audience check; `None` skips it.
    pub audience: Option<AudienceCheck>,
    /// Clock-skew allowance for `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Longer tokens fail with [`JwtError::TooLong`] before any decoding.
    pub max_token_len: usize,
    /// Whether a token without `exp` fails with [`JwtError::MissingExpiry`]. On by default:
    /// the SDK always issues `exp`, and a token without one would be valid forever.
    pub require_exp: bool,
}

impl Default for Validation {
    fn default() -> Self {
        Self {
            audience: None,
            leeway_secs: DEFAULT_LEEWAY_SECS,
            max_token_len: DEFAULT_MAX_TOKEN_LEN,
            require_exp: true,
        }
    }
}

impl Validation {
    /// The default validation (see the type's documentation).
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires the token's `aud` to pass `check`.
    #[must_use]
    pub fn with_audience(mut self, check: impl Into<AudienceCheck>) -> Self {
        self.audience = Some(check.into());
        self
    }

    /// Sets the clock-skew leeway.
    #[must_use]
    pub fn with_leeway_secs(mut self, leeway_secs: u64) -> Self {
        self.leeway_secs = leeway_secs;
        self
    }

    /// Sets the token length limit.
    #[must_use]
    pub fn with_max_token_len(mut self, max_token_len: usize) -> Self {
        self.max_token_len = max_token_len;
        self
    }

    /// Sets whether `exp` is required.
    #[must_use]
    pub fn with_require_exp(mut self, require_exp: bool) -> Self {
        self.require_exp = require_exp;
        self
    }

    /// Checks already-authenticated claims at time `now_unix_secs`: `exp` (the token is
    /// expired once `now >= exp + leeway`), `nbf` (not valid while `now + leeway < nbf`), then
    /// the audience. `iat` is not checked.
    pub fn validate(&self, claims: &Claims, now_unix_secs: u64) -> Result<(), JwtError> {
        self.check_times(claims.exp, claims.nbf, now_unix_secs)?;
        if let Some(check) = &self.audience {
            if claims.aud.is_empty() {
                return Err(JwtError::MissingAudience);
            }
            if !claims.aud.iter().any(|aud| check.matches(aud)) {
                return Err(JwtError::WrongAudience);
            }
        }
        Ok(())
    }

    /// The time checks of [`validate`](Self::validate) alone, of a token's `exp` and `nbf`.
    pub fn check_times(
        &self,
        exp: Option<u64>,
        nbf: Option<u64>,
        now_unix_secs: u64,
    ) -> Result<(), JwtError> {
        match exp {
            None if self.require_exp => return Err(JwtError::MissingExpiry),
            Some(exp) if now_unix_secs >= exp.saturating_add(self.leeway_secs) => {
                return Err(JwtError::Expired)
            }
            _ => {}
        }
        if let Some(nbf) = nbf {
            if now_unix_secs.saturating_add(self.leeway_secs) < nbf {
                return Err(JwtError::NotYetValid);
            }
        }
        Ok(())
    }
}

/// Signs `claims` into a compact JWT: header `{"alg":"HS256","typ":"JWT"}` (or `HS512`),
/// every part unpadded base64url.
///
/// `key` is the UTF-8 bytes of the AccessKey string, not base64-decoded. No `kid` is written:
/// verifiers of relay tokens try every configured key.
pub fn sign(claims: &Claims, key: &[u8], alg: Algorithm) -> String {
    let payload = Value::Object(claims.to_json_object()).to_string();
    let mut token = URL_SAFE_NO_PAD.encode(alg.header_json());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    let tag = alg.tag(key, token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(tag, &mut token);
    token
}

/// Verifies `token` and checks its claims: [`verify_signature`], then
/// [`Validation::validate`] at `now_unix_secs`.
///
/// `token` is the bare compact JWT (no `Bearer ` prefix, no surrounding whitespace). Several
/// `keys` can be given for key rotation; the token passes if any of them verifies it.
pub fn verify(
    token: &str,
    keys: &[&[u8]],
    now_unix_secs: u64,
    validation: &Validation,
) -> Result<Claims, JwtError> {
    let claims = verify_signature(token, keys, validation.max_token_len)?;
    validation.validate(&claims, now_unix_secs)?;
    Ok(claims)
}

/// Checks a token's structure, algorithm and signature, and decodes its claims; checks no
/// times and no audience.
///
/// In order: the length against `max_token_len` (before any decoding); exactly three parts;
/// the header is a JSON object whose `alg` is `HS256` or `HS512`; the signature verifies
/// (constant-time comparison) under one of `keys`; only then is the payload decoded into
/// [`Claims`]. Other header fields (`typ`, `kid`) are ignored. An empty `keys` rejects
/// every token with [`JwtError::BadSignature`].
pub fn verify_signature(
    token: &str,
    keys: &[&[u8]],
    max_token_len: usize,
) -> Result<Claims, JwtError> {
    if token.len() > max_token_len {
        return Err(JwtError::TooLong {
            len: token.len(),
            max: max_token_len,
        });
    }
    let (signing_input, signature) = token
        .rsplit_once('.')
        .ok_or(MalformedToken::NotThreeParts)?;
    let (header, payload) = signing_input
        .split_once('.')
        .ok_or(MalformedToken::NotThreeParts)?;
    if payload.contains('.') {
        return Err(MalformedToken::NotThreeParts.into());
    }
    let alg = header_algorithm(&decode_object(header, TokenPart::Header)?)?;
    let signature = decode_part(signature, TokenPart::Signature)?;
    let signed_by_any = keys
        .iter()
        .any(|key| alg.verify_tag(key, signing_input.as_bytes(), &signature));
    if !signed_by_any {
        return Err(JwtError::BadSignature);
    }
    Claims::from_json_object(decode_object(payload, TokenPart::Payload)?)
}

fn decode_part(part: &str, which: TokenPart) -> Result<Vec<u8>, MalformedToken> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| MalformedToken::Base64(which))
}

fn decode_object(part: &str, which: TokenPart) -> Result<Map<String, Value>, MalformedToken> {
    let bytes = decode_part(part, which)?;
    serde_json::from_slice(&bytes).map_err(|_| MalformedToken::Json(which))
}

fn header_algorithm(header: &Map<String, Value>) -> Result<Algorithm, JwtError> {
    let Some(Value::String(name)) = header.get("alg") else {
        return Err(MalformedToken::MissingAlgorithm.into());
    };
    Algorithm::from_name(name).ok_or_else(|| JwtError::UnsupportedAlgorithm(quote(name)))
}

fn hmac_tag<M: Mac + KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: `new_from_slice` only fails for fixed-length-key MACs.
    let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn hmac_verify<M: Mac + KeyInit>(key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    let Ok(mut mac) = <M as KeyInit>::new_from_slice(key) else {
        return false;
    };
    mac.update(message);
    mac.verify_slice(tag).is_ok()
}
