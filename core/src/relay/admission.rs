//! Who may in: bearer tokens checked against the access keys, the clock and the endpoint.

use std::time::Instant;

use super::config::RelayConfig;
use super::http::HttpRequest;
use super::reason::Rejection;
use crate::auth::{self, Audience, Claims, Validation};

/// Checks tokens. It knows when "now" is on the wall clock: the adapter gave both clocks at
/// one moment, so that token expiry needs no clock of its own.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    start: Instant,
    start_unix: u64,
}

impl Admission {
    pub(crate) fn new(now: Instant, now_unix_secs: u64) -> Self {
        Self {
            start: now,
            start_unix: now_unix_secs,
        }
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

    /// Verifies a request's bearer token for `path` (`/client/`, `/server/`, the classic
    /// endpoint) of `hub`. The audience must name this path and hub; its host and port are
    /// not compared, since the relay may be reached under several names.
    pub(crate) fn verify(
        &self,
        config: &RelayConfig,
        now: Instant,
        req: &HttpRequest,
        path: &'static str,
        hub: Option<&str>,
    ) -> Result<Claims, Rejection> {
        let claims = self.signed_claims(config, now, req)?;
        let audience_ok = claims.aud.iter().any(|aud| {
            Audience::parse(aud).is_ok_and(|a| {
                let expected = Audience::new(a.scheme(), a.host(), path, hub);
                expected.matches(aud)
            })
        });
        if !audience_ok {
            return Err(Rejection::WrongAudience {
                path,
                hub: hub.map(str::to_owned),
            });
        }
        Ok(claims)
    }
}

impl Admission {
    /// The request's hub (the `hub` query parameter, in lower case), and its bearer token
    /// verified for `path` of that hub.
    pub(crate) fn verify_for_hub(
        &self,
        config: &RelayConfig,
        now: Instant,
        req: &HttpRequest,
        path: &'static str,
    ) -> Result<(String, Claims), Rejection> {
        let hub = hub_param(req)?;
        let claims = self.verify(config, now, req, path, Some(&hub))?;
        Ok((hub, claims))
    }

    /// The claims of a request's bearer token, signed with an access key and in date.
    fn signed_claims(
        &self,
        config: &RelayConfig,
        now: Instant,
        req: &HttpRequest,
    ) -> Result<Claims, Rejection> {
        let token = req.bearer_token().ok_or(Rejection::NoToken)?;
        let validation = Validation::new().with_leeway_secs(config.token_leeway.as_secs());
        let now = self.unix_now(now);
        let bad = |e: auth::JwtError| Rejection::BadToken(e.to_string());
        // Verified by the gate, before the body was read: its times are checked again.
        if let Some(verified) = req.verified.as_ref().filter(|v| v.token == token) {
            validation.validate(&verified.claims, now).map_err(bad)?;
            return Ok(verified.claims.clone());
        }
        let keys: Vec<&[u8]> = config.access_keys.iter().map(|k| k.as_bytes()).collect();
        auth::verify(&token, &keys, now, &validation).map_err(bad)
    }

    /// Verifies a REST API request's bearer token: its audience must be the request's URL,
    /// compared by path only (case-insensitively, trailing `/` trimmed), since the SDK signs
    /// `api-version` into the audience and adds `excluded` and `reason` after signing.
    pub(crate) fn verify_rest(
        &self,
        config: &RelayConfig,
        now: Instant,
        req: &HttpRequest,
    ) -> Result<Claims, Rejection> {
        let claims = self.signed_claims(config, now, req)?;
        let wanted = req.path.trim_end_matches('/');
        let audience_ok = claims.aud.iter().any(|aud| {
            auth::HttpUrl::parse(aud).is_ok_and(|url| {
                url.path()
                    .trim_end_matches('/')
                    .eq_ignore_ascii_case(wanted)
            })
        });
        if !audience_ok {
            return Err(Rejection::WrongAudience {
                path: "this REST API URL",
                hub: None,
            });
        }
        Ok(claims)
    }
}

/// Longest hub key: a hub name (128) behind an application name (128) and `_`.
pub(crate) const MAX_HUB_NAME: usize = 257;

/// The `hub` query parameter, in lower case.
pub(crate) fn hub_param(req: &HttpRequest) -> Result<String, Rejection> {
    let hub = req
        .query_param("hub")
        .unwrap_or_default()
        .to_ascii_lowercase();
    if hub.is_empty() || hub.len() > MAX_HUB_NAME {
        return Err(Rejection::HubRequired);
    }
    Ok(hub)
}
