//! Why a token is refused: the errors of token verification and of claim decoding, apart
//! from both so that neither depends on the other for them.

use std::fmt;

/// One of the three dot-separated parts of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenPart {
    /// The JOSE header.
    Header,
    /// The claims.
    Payload,
    /// The signature.
    Signature,
}

impl fmt::Display for TokenPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Header => "header",
            Self::Payload => "payload",
            Self::Signature => "signature",
        })
    }
}

/// How a token is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MalformedToken {
    /// The token is not `header.payload.signature`.
    #[error("expected three dot-separated parts")]
    NotThreeParts,
    /// A part is not unpadded base64url.
    #[error("the {0} is not valid base64url")]
    Base64(TokenPart),
    /// The header or payload is not a JSON object.
    #[error("the {0} is not a JSON object")]
    Json(TokenPart),
    /// The header has no `alg`, or it is not a string.
    #[error("the header has no string `alg`")]
    MissingAlgorithm,
    /// A registered claim has the wrong JSON type (`exp` as a string, `aud` as a number...).
    #[error("claim `{0}` has the wrong type")]
    ClaimType(&'static str),
}

/// Why a token was rejected.
///
/// Messages are fit for an HTTP 401 body: they never contain keys, signatures or claim
/// values (only the `alg` name, shortened to 40 characters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// The token is longer than the configured limit; nothing was decoded.
    #[error("access token is {len} bytes long, over the limit of {max}")]
    TooLong {
        /// The token's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The token cannot be decoded.
    #[error("malformed access token: {0}")]
    Malformed(MalformedToken),
    /// The `alg` header names anything but `HS256` or `HS512` (`none`, `RS256`, ...).
    #[error("unsupported access token algorithm `{0}` (expected HS256 or HS512)")]
    UnsupportedAlgorithm(String),
    /// The signature does not match under any of the configured keys.
    #[error("invalid access token signature")]
    BadSignature,
    /// `exp` (plus leeway) has passed.
    #[error("access token has expired")]
    Expired,
    /// `nbf` (minus leeway) is still in the future.
    #[error("access token is not valid yet")]
    NotYetValid,
    /// The token has no `exp`, and the validation requires one.
    #[error("access token has no expiry (`exp`)")]
    MissingExpiry,
    /// An audience is required and the token has no `aud`.
    #[error("access token has no audience (`aud`)")]
    MissingAudience,
    /// None of the token's audiences matches the expected one.
    #[error("access token audience does not match this endpoint")]
    WrongAudience,
}

impl From<MalformedToken> for JwtError {
    fn from(malformed: MalformedToken) -> Self {
        Self::Malformed(malformed)
    }
}
