//! Who may in: bearer tokens checked against the access keys, the clock and the endpoint.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::config::RelayConfig;
use super::http::HttpRequest;
use super::reason::Rejection;
use crate::auth::{self, AudienceParts, Claims, Validation};

/// A bearer token whose signature an access key made: its claims, its audiences parsed once,
/// and the digest of its signature (what a connection is bound to; see [`digest`]). Shared, not copied, by every
/// request that bears the same token.
///
/// A token verified for a request that opens a connection ([`Admission::verify_opening`]: a
/// negotiate, an upgrade, an app server's connection) has all its claims: the connection's
/// policy and what the app server is told come from them. One verified for a request of a
/// connection that is open ([`Admission::verify`]: a long poll, an event stream, a send, a
/// REST call) is remembered, for many requests, and keeps only what those read: its times,
/// its audiences and its user id. Kept whole, its claims were most of what an idle
/// long-polling client cost.
#[derive(Debug)]
pub(crate) struct SignedToken {
    /// All the token's claims; none when only what a connection's requests read is kept.
    /// Boxed: a remembered token does without them.
    whole: Option<Box<Claims>>,
    /// Its times, checked at each use.
    times: TokenTimes,
    /// Its user id.
    user: Option<Box<str>>,
    audiences: Box<[AudienceParts]>,
    digest: [u8; 32],
}

impl SignedToken {
    fn new(claims: Claims, digest: [u8; 32]) -> Self {
        let audiences = claims
            .aud
            .iter()
            .filter_map(|aud| AudienceParts::parse(aud))
            .collect();
        Self {
            times: TokenTimes {
                exp: claims.exp,
                nbf: claims.nbf,
            },
            user: claims.user_id().map(Box::from),
            whole: Some(Box::new(claims)),
            audiences,
            digest,
        }
    }

    /// What a connection's own requests read of the token: its times, its audiences and its
    /// user id.
    fn for_requests(self) -> Self {
        Self {
            whole: None,
            ..self
        }
    }

    /// All the token's claims. Read only of a token verified to open a connection, which
    /// keeps them (see [`SignedToken`]); one kept for a connection's requests has none here.
    pub(crate) fn claims(&self) -> &Claims {
        static NONE: std::sync::OnceLock<Claims> = std::sync::OnceLock::new();
        debug_assert!(
            self.whole.is_some(),
            "only a token that opens has its claims"
        );
        self.whole
            .as_deref()
            .unwrap_or_else(|| NONE.get_or_init(Claims::default))
    }

    /// Whether the token is in date at `now` (Unix seconds).
    fn check_times(&self, validation: &Validation, now: u64) -> Result<(), Rejection> {
        self.times.check(validation, now)
    }

    /// The user id the token names ([`Claims::user_id`]).
    pub(crate) fn user_id(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Whether one of the token's audiences names `path` of `hub` (see
    /// [`Admission::verify`]); the refusal if none does.
    pub(crate) fn check_audience(
        &self,
        path: &'static str,
        hub: Option<&str>,
    ) -> Result<(), Rejection> {
        if self.audiences.iter().any(|aud| aud.names(path, hub)) {
            return Ok(());
        }
        Err(Rejection::WrongAudience {
            path,
            hub: hub.map(str::to_owned),
        })
    }

    /// Whether the claims are all the token's (verified for a request that opens a
    /// connection), not only what a connection's own requests read.
    pub(crate) fn is_whole(&self) -> bool {
        self.whole.is_some()
    }

    /// The SHA-256 of the token's signature ([`digest`]): what a connection's cap per token
    /// counts, what the remembered tokens are found by, and what
    /// an anonymous connection with a public id is bound to (see `Request::acts_for`).
    pub(crate) fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Its times, for checking again later without the rest.
    pub(crate) fn times(&self) -> TokenTimes {
        self.times
    }
}

/// A verified token's times (`exp`, `nbf`, Unix seconds): a negotiated connection keeps them
/// until its transport comes, so that an upgrade bearing the very same token is checked for
/// them alone ([`Admission::check_again`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenTimes {
    exp: Option<u64>,
    nbf: Option<u64>,
}

impl TokenTimes {
    /// Whether they hold at `now` (Unix seconds).
    fn check(self, validation: &Validation, now: u64) -> Result<(), Rejection> {
        validation
            .check_times(self.exp, self.nbf, now)
            .map_err(|e| Rejection::BadToken(e.to_string()))
    }
}

/// How tokens' times are checked: with the configured leeway.
fn validation(config: &RelayConfig) -> Validation {
    Validation::new().with_leeway_secs(config.token_leeway.as_secs())
}

/// Checks tokens. It knows when "now" is on the wall clock: the adapter gave both clocks at
/// one moment, so that token expiry needs no clock of its own.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    start: Instant,
    start_unix: u64,
    /// Shared by the clones (the relay's, the gate's).
    verified: Arc<Mutex<Verified>>,
}

impl Admission {
    pub(crate) fn new(now: Instant, now_unix_secs: u64) -> Self {
        Self {
            start: now,
            start_unix: now_unix_secs,
            verified: Arc::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Verified> {
        // Poisoned only by a panic while it was held, which leaves it consistent.
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn unix_now(&self, now: Instant) -> u64 {
        self.start_unix + now.saturating_duration_since(self.start).as_secs()
    }

    /// The wall clock in .NET ticks (100 ns since 0001-01-01 UTC), rising with `now`: the
    /// SDK keeps a `servers` ping reply only when its ticks are above the last one's.
    pub(crate) fn dotnet_ticks(&self, now: Instant) -> i64 {
        const UNIX_EPOCH_TICKS: i64 = 621_355_968_000_000_000;
        let since_start = now.saturating_duration_since(self.start).as_nanos() / 100;
        let start = i64::try_from(self.start_unix)
            .unwrap_or(0)
            .saturating_mul(10_000_000);
        UNIX_EPOCH_TICKS
            .saturating_add(start)
            .saturating_add(i64::try_from(since_start).unwrap_or(i64::MAX))
    }

    /// The moment of a wall-clock time (Unix seconds): `now` if it has passed.
    pub(crate) fn instant_of(&self, now: Instant, unix_secs: u64) -> Instant {
        let ahead = unix_secs.saturating_sub(self.unix_now(now));
        now.checked_add(std::time::Duration::from_secs(ahead))
            .unwrap_or(now + std::time::Duration::from_secs(365 * 24 * 3600))
    }

    /// Verifies the bearer token of a request of a connection that is open (a long poll, an
    /// event stream, a send) for `path` (`/client/`, the classic endpoint) of `hub`: only its
    /// times, audiences and user id are kept (see [`SignedToken`]). The audience must name
    /// this path and hub; its host and port are not compared, since the relay may be reached
    /// under several names.
    pub(crate) fn verify(
        &self,
        config: &RelayConfig,
        now: Instant,
        req: &HttpRequest,
        path: &'static str,
        hub: Option<&str>,
    ) -> Result<Arc<SignedToken>, Rejection> {
        self.verify_as(config, now, req, (path, hub), false)
    }

    /// [`verify`](Self::verify), for a request that opens a connection: the token with all
    /// its claims, decoded for this request.
    pub(crate) fn verify_opening(
        &self,
        config: &RelayConfig,
        now: Instant,
        req: &HttpRequest,
        path: &'static str,
        hub: Option<&str>,
    ) -> Result<Arc<SignedToken>, Rejection> {
        self.verify_as(config, now, req, (path, hub), true)
    }

    /// For a request bearing the very token (the same signature, by its digest) that was verified
    /// whole earlier, its signature and audience with it: whether it is still in date at
    /// `now`.
    pub(crate) fn check_again(
        &self,
        config: &RelayConfig,
        now: Instant,
        times: TokenTimes,
    ) -> Result<(), Rejection> {
        times.check(&validation(config), self.unix_now(now))
    }

    fn verify_as(
        &self,
        config: &RelayConfig,
        now: Instant,
        req: &HttpRequest,
        (path, hub): (&'static str, Option<&str>),
        whole: bool,
    ) -> Result<Arc<SignedToken>, Rejection> {
        let signed = self.signed_token(config, now, req, whole)?;
        signed.check_audience(path, hub)?;
        Ok(signed)
    }
}

impl Admission {
    /// The hub of a request that opens a connection (the `hub` query parameter, in lower
    /// case), and its bearer token verified for `path` of that hub, with all its claims.
    pub(crate) fn verify_opening_for_hub(
        &self,
        config: &RelayConfig,
        now: Instant,
        req: &HttpRequest,
        path: &'static str,
    ) -> Result<(String, Arc<SignedToken>), Rejection> {
        let hub = hub_param(req)?;
        let claims = self.verify_opening(config, now, req, path, Some(&hub))?;
        Ok((hub.into_owned(), claims))
    }

    /// A request's bearer token, signed with an access key and in date: `whole`, with all
    /// its claims (see [`SignedToken`]).
    fn signed_token(
        &self,
        config: &RelayConfig,
        now: Instant,
        req: &HttpRequest,
        whole: bool,
    ) -> Result<Arc<SignedToken>, Rejection> {
        let token = req.bearer_token().ok_or(Rejection::NoToken)?;
        let validation = validation(config);
        let now = self.unix_now(now);
        let bad = |e: auth::JwtError| Rejection::BadToken(e.to_string());
        // Verified by the gate, before the body was read: its times are checked again. What
        // the gate kept of it must be what is asked for: all its claims, or only some.
        let verified = req.verified.as_ref();
        if let Some(v) = verified.filter(|v| v.signed.is_whole() == whole && *v.token == *token) {
            v.signed.check_times(&validation, now)?;
            return Ok(Arc::clone(&v.signed));
        }
        // A token that opens a connection is decoded whole, each time, and not remembered. A
        // long-polling or event-stream client's comes with every send or poll: it is
        // remembered, as much as those read. A classic WebSocket's comes once: remembered, it
        // would cost each idle client a part of its memory for nothing.
        let remember = !whole && !req.websocket;
        let digest = digest(&token);
        // A token too long to verify is not looked up either: found by its signature, its
        // other segments would otherwise escape the bound on a token's length.
        if remember && token.len() <= validation.max_token_len {
            if let Some(signed) = self.cache().get(&digest) {
                signed.check_times(&validation, now)?;
                return Ok(signed);
            }
        }
        let keys: Vec<&[u8]> = config.access_keys.iter().map(|k| k.as_bytes()).collect();
        let claims = auth::verify(&token, &keys, now, &validation).map_err(bad)?;
        let signed = SignedToken::new(claims, digest);
        if whole {
            return Ok(Arc::new(signed));
        }
        // The same for every request of a connection, remembered or not: what a request reads
        // does not depend on what came before it.
        let signed = Arc::new(signed.for_requests());
        if remember {
            self.cache().insert(digest, token.len(), &signed);
        }
        Ok(signed)
    }

    /// Verifies a REST API request's bearer token: its audience must be the request's URL,
    /// compared by path only (case-insensitively, trailing `/` trimmed), since the SDK signs
    /// `api-version` into the audience and adds `excluded` and `reason` after signing.
    pub(crate) fn verify_rest(
        &self,
        config: &RelayConfig,
        now: Instant,
        req: &HttpRequest,
    ) -> Result<Arc<SignedToken>, Rejection> {
        let signed = self.signed_token(config, now, req, false)?;
        let wanted = req.path.trim_end_matches('/');
        if !signed
            .audiences
            .iter()
            .any(|aud| aud.path().eq_ignore_ascii_case(wanted))
        {
            return Err(Rejection::WrongAudience {
                path: "this REST API URL",
                hub: None,
            });
        }
        Ok(signed)
    }
}

/// Tokens whose signature was verified, by the SHA-256 of that signature ([`digest`]: a
/// lookup compares digests, never a secret signature byte by byte), with their claims.
///
/// A long-polling or event-stream client sends (and polls) with the same token each time:
/// checking the signature and decoding the claims was a sixth of an event-stream echo's cost.
/// Only a token that passed the whole check is kept, and a token found here is still checked
/// for its times (here) and its audience (by the caller), as a new one is.
///
/// Bounded: two generations, each of at most [`VERIFIED_TOKENS`] tokens and [`VERIFIED_BYTES`]
/// of their text; when the newer is full it becomes the older, and a token found in the older
/// moves to the newer.
#[derive(Debug, Default)]
struct Verified {
    /// Each token, and its length.
    newer: BTreeMap<[u8; 32], (Arc<SignedToken>, usize)>,
    /// The length of the newer generation's tokens, summed.
    newer_bytes: usize,
    older: BTreeMap<[u8; 32], (Arc<SignedToken>, usize)>,
}

/// The digest a connection is bound to ([`SignedToken::digest`]) of a request's bearer token;
/// none for a token longer than `config` lets verify (see [`Admission::signed_token`]).
pub(crate) fn bearer_digest(config: &RelayConfig, req: &HttpRequest) -> Option<[u8; 32]> {
    let token = req.bearer_token()?;
    (token.len() <= validation(config).max_token_len).then(|| digest(&token))
}

/// The SHA-256 of a token's signature, its text from the last `.` on (all of it, for a text
/// with none, which can name no signed token): what names a token, here and wherever a
/// connection is bound to one.
///
/// The signature alone is enough. It is an access key's HMAC of all the rest, so two tokens
/// that verify with the same signature are the same token, and whatever is looked up by it
/// (what was verified of the token, a connection's user) was read from the token that did
/// verify, never from the request's other segments. To bear a token's signature is to hold
/// the token: its other segments are not secret. Hashing the signature alone is one block of
/// SHA-256 (two for HS512) where the whole token, claims and all, is five to ten, and every
/// request of a long-polling or event-stream client hashes its token once.
fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    let signature = token.rfind('.').map_or(token, |dot| &token[dot..]);
    sha2::Sha256::digest(signature.as_bytes()).into()
}

/// Tokens in a generation of [`Verified`], at most.
const VERIFIED_TOKENS: usize = 4096;

/// Bytes of token text in a generation of [`Verified`], at most (what is kept of a token,
/// its times, audiences and user id, takes less).
const VERIFIED_BYTES: usize = 1024 * 1024;

/// Longer tokens are verified each time, not kept.
const VERIFIED_MAX_TOKEN: usize = 4096;

impl Verified {
    fn get(&mut self, digest: &[u8; 32]) -> Option<Arc<SignedToken>> {
        if let Some((signed, _)) = self.newer.get(digest) {
            return Some(Arc::clone(signed));
        }
        let (signed, len) = self.older.remove(digest)?;
        self.insert(*digest, len, &signed);
        Some(signed)
    }

    fn insert(&mut self, digest: [u8; 32], len: usize, signed: &Arc<SignedToken>) {
        if len > VERIFIED_MAX_TOKEN {
            return;
        }
        if self.newer.len() >= VERIFIED_TOKENS || self.newer_bytes + len > VERIFIED_BYTES {
            self.older = std::mem::take(&mut self.newer);
            self.newer_bytes = 0;
        }
        self.newer_bytes += len;
        self.newer.insert(digest, (Arc::clone(signed), len));
    }
}

/// Longest hub key: a hub name (128) behind an application name (128) and `_`.
pub(crate) const MAX_HUB_NAME: usize = 257;

/// The `hub` query parameter, in lower case.
pub(crate) fn hub_param(req: &HttpRequest) -> Result<Cow<'_, str>, Rejection> {
    let hub = req.query_param("hub").unwrap_or_default();
    if hub.is_empty() || hub.len() > MAX_HUB_NAME {
        return Err(Rejection::HubRequired);
    }
    Ok(if hub.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(hub.to_ascii_lowercase())
    } else {
        hub
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::relay::sim::{request, token, KEY, T0};

    fn setup() -> (Admission, RelayConfig, Instant) {
        // The test's epoch: any moment will do, the clock is the test's own after it.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        let mut config = RelayConfig::default();
        config.access_keys.push(KEY.to_owned());
        (Admission::new(now, T0), config, now)
    }

    /// A long-polling client's send.
    fn send(bearer: &str) -> HttpRequest {
        request("POST", "/client/", "hub=chat&id=abc", Some(bearer), false)
    }

    #[test]
    fn a_verified_token_is_remembered_and_still_checked_for_its_times_and_audience() {
        let (admission, config, t0) = setup();
        let good = token("/client/", "chat", None, 60, KEY);
        let verify = |now, req: &HttpRequest, hub| {
            admission.verify(&config, now, req, "/client/", Some(hub))
        };
        assert!(verify(t0, &send(&good), "chat").is_ok());
        assert!(admission.cache().newer.contains_key(&digest(&good)));
        // Remembered, it is found again, for its own hub only.
        assert!(verify(t0, &send(&good), "chat").is_ok());
        assert!(matches!(
            verify(t0, &send(&good), "other"),
            Err(Rejection::WrongAudience { .. })
        ));
        // A token signed with another key is refused, and not remembered.
        let forged = token("/client/", "chat", None, 60, "wrong-key");
        assert!(matches!(
            verify(t0, &send(&forged), "chat"),
            Err(Rejection::BadToken(_))
        ));
        assert!(!admission.cache().newer.contains_key(&digest(&forged)));
        // Its expiry still counts.
        let later = t0 + Duration::from_secs(3600);
        assert!(matches!(
            verify(later, &send(&good), "chat"),
            Err(Rejection::BadToken(e)) if e.contains("expired")
        ));
        // The gate's clone shares what the relay's verified.
        let clone = admission.clone();
        assert!(clone.cache().newer.contains_key(&digest(&good)));
        // A token seen when a connection opens (a negotiate), or on a WebSocket (a classic
        // one's connect), is not seen again: not kept.
        for (method, path, websocket, opening) in [
            ("POST", "/client/negotiate", false, true),
            ("GET", "/client/", true, true),
            ("GET", "/aspnetclient/connect", true, false),
        ] {
            let once = token("/client/", "chat", Some(path), 60, KEY);
            let req = request(method, path, "hub=chat&id=abc", Some(&once), websocket);
            let verified = if opening {
                admission.verify_opening(&config, t0, &req, "/client/", Some("chat"))
            } else {
                verify(t0, &req, "chat")
            };
            assert!(verified.is_ok());
            assert!(!admission.cache().newer.contains_key(&digest(&once)));
        }
    }

    #[test]
    fn a_token_is_named_by_its_signature_and_read_only_from_the_token_that_verified() {
        let (admission, config, t0) = setup();
        let signed_for = |user| token("/client/", "chat", Some(user), 60, KEY);
        let (alice, mallory) = (signed_for("alice"), signed_for("mallory"));
        // Mallory's claims under Alice's signature: no key signed them.
        let (alice_signed, signature) = alice.rsplit_once('.').unwrap();
        let (mallory_signed, _) = mallory.rsplit_once('.').unwrap();
        let spliced = format!("{mallory_signed}.{signature}");
        assert_ne!(alice_signed, mallory_signed);
        assert_eq!(digest(&spliced), digest(&alice));
        assert_ne!(digest(&mallory), digest(&alice));
        let verify =
            |bearer: &str| admission.verify(&config, t0, &send(bearer), "/client/", Some("chat"));
        // Not remembered yet: checked whole, and refused.
        assert!(matches!(verify(&spliced), Err(Rejection::BadToken(_))));
        // Remembered: the signature finds Alice's token, with what was read from it. To bear
        // her signature is to hold her token; the spliced claims are never read.
        assert_eq!(verify(&alice).unwrap().user_id(), Some("alice"));
        assert_eq!(verify(&spliced).unwrap().user_id(), Some("alice"));
        assert_eq!(verify(&mallory).unwrap().user_id(), Some("mallory"));
        // Longer than a token may be, it is not looked up, and refused as before.
        let long = format!("{}.{signature}", "a".repeat(auth::DEFAULT_MAX_TOKEN_LEN));
        assert_eq!(digest(&long), digest(&alice));
        assert!(matches!(verify(&long), Err(Rejection::BadToken(_))));
        // A text without a `.` is named by all of it: the signature alone is not the token.
        assert_ne!(digest(signature), digest(&alice));
        assert!(matches!(verify(signature), Err(Rejection::BadToken(_))));
    }

    /// A remembered token lives as long as its long-polling or event-stream client: its
    /// claims boxed (and absent), its times, user id, audiences and digest inline.
    #[test]
    fn a_remembered_token_is_small() {
        assert!(std::mem::size_of::<SignedToken>() <= 104);
        // One in a box of its own, with its token's other audiences: 40 bytes take the
        // allocator's 48-byte chunk, as 32 did.
        assert!(std::mem::size_of::<AudienceParts>() <= 40);
    }

    #[test]
    fn a_token_that_comes_back_keeps_what_its_requests_read_and_one_that_opens_is_whole() {
        let (admission, config, t0) = setup();
        let mut claims = Claims::issued_at(T0, 60);
        claims.aud.push("http://localhost/client/?hub=chat".into());
        claims
            .extra
            .insert(auth::claim_names::USER_ID.into(), "alice".into());
        claims.extra.insert("asrs.s.aut".into(), "Bearer".into());
        claims
            .extra
            .insert("custom".into(), "for the app server".into());
        let bearer = auth::sign(&claims, KEY.as_bytes(), auth::Algorithm::Hs256);
        let verify = |req: &HttpRequest| {
            admission
                .verify(&config, t0, req, "/client/", Some("chat"))
                .unwrap()
        };
        // A send, first and then again (remembered): the same, slim token.
        for _ in 0..2 {
            let signed = verify(&send(&bearer));
            assert_eq!(signed.user_id(), Some("alice"));
            assert_eq!(
                (signed.times.exp, signed.times.nbf),
                (claims.exp, claims.nbf)
            );
            assert!(!signed.is_whole());
            assert_eq!(signed.digest(), digest(&bearer));
        }
        assert!(admission.cache().newer.contains_key(&digest(&bearer)));
        // A request that opens a connection with the very token, remembered: every claim,
        // whatever its path (the classic endpoints take a negotiate's in any case), and
        // whatever the gate kept of it.
        for path in ["/client/negotiate", "/aspnetclient/NEGOTIATE", "/client/"] {
            let mut req = request("POST", path, "hub=chat", Some(&bearer), false);
            let opening = |req: &HttpRequest| {
                admission
                    .verify_opening(&config, t0, req, "/client/", Some("chat"))
                    .unwrap()
            };
            let whole = opening(&req);
            assert!(whole.is_whole());
            assert_eq!(*whole.claims(), claims, "{path}");
            req.verified = Some(crate::relay::VerifiedToken {
                token: bearer.clone(),
                signed: verify(&req),
            });
            assert_eq!(
                *opening(&req).claims(),
                claims,
                "{path}, slim from the gate"
            );
        }
        // Its times still count for a remembered one.
        let later = t0 + Duration::from_secs(3600);
        assert!(matches!(
            admission.verify(&config, later, &send(&bearer), "/client/", Some("chat")),
            Err(Rejection::BadToken(_))
        ));
    }

    #[test]
    fn the_remembered_tokens_are_bounded() {
        let (admission, config, t0) = setup();
        let keep = token("/client/", "chat", Some("keep"), 60, KEY);
        assert!(admission
            .signed_token(&config, t0, &send(&keep), false)
            .is_ok());
        for i in 0..3 * VERIFIED_TOKENS {
            let t = token("/client/", "chat", Some(&format!("user-{i}")), 60, KEY);
            assert!(admission
                .signed_token(&config, t0, &send(&t), false)
                .is_ok());
            if i % 1000 == 0 {
                // A token in use now and then is still remembered at the end.
                assert!(admission
                    .signed_token(&config, t0, &send(&keep), false)
                    .is_ok());
            }
        }
        let cache = admission.cache();
        assert!(cache.newer.len() <= VERIFIED_TOKENS && cache.older.len() <= VERIFIED_TOKENS);
        assert!(cache.newer_bytes <= VERIFIED_BYTES);
        assert!(
            cache.newer.contains_key(&digest(&keep)) || cache.older.contains_key(&digest(&keep))
        );
        // A token longer than is kept is verified, and not remembered.
        let mut long = Claims::issued_at(T0, 60);
        long.aud.push("http://localhost/client/?hub=chat".into());
        long.extra
            .insert("pad".into(), "x".repeat(VERIFIED_MAX_TOKEN).into());
        let long = auth::sign(&long, KEY.as_bytes(), auth::Algorithm::Hs256);
        drop(cache);
        assert!(admission
            .signed_token(&config, t0, &send(&long), false)
            .is_ok());
        let cache = admission.cache();
        assert!(
            !cache.newer.contains_key(&digest(&long)) && !cache.older.contains_key(&digest(&long))
        );
    }
}
