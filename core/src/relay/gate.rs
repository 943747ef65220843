//! What an adapter may read of a request before the relay sees it, decided on the headers
//! alone: no request body is read for a peer that has not shown a valid token, and none is
//! read past what its endpoint can need.

use std::time::Instant;

use super::admission::{hub_param, Admission};
use super::client::{classic_body_limit, CLASSIC_BASE};
use super::config::RelayConfig;
use super::http::{HttpRequest, VerifiedToken};
use super::reason::Rejection;

/// Largest body read for a negotiate: clients send none.
pub const NEGOTIATE_BODY_LIMIT: usize = 4096;

/// The header check every `POST` passes before its body is read. Cheap to clone; built with
/// [`Relay::gate`](super::Relay::gate), so that its clocks and keys are the relay's.
#[derive(Debug, Clone)]
pub struct RequestGate {
    config: std::sync::Arc<RelayConfig>,
    admission: Admission,
}

impl RequestGate {
    pub(super) fn new(config: &RelayConfig, admission: &Admission) -> Self {
        Self {
            config: std::sync::Arc::new(config.clone()),
            admission: admission.clone(),
        }
    }

    /// Whether `req` may read the relay's status (`GET /api/status`, for a status page):
    /// with [`RelayConfig::open_status`] anyone may; otherwise it needs a bearer token signed
    /// with an access key, for the audience `<relay>/api/status`. Decided here, on any
    /// thread, so that a flood of bad tokens costs the relay's own task nothing.
    ///
    /// # Errors
    /// The refusal to answer with.
    pub fn status_access(&self, now: Instant, req: &HttpRequest) -> Result<(), Rejection> {
        if self.config.open_status {
            return Ok(());
        }
        self.admission
            .verify(&self.config, now, req, super::STATUS_PATH, None)
            .map(drop)
    }

    /// How many body bytes to read for `req` (its headers only; its body is ignored), or the
    /// refusal to answer without reading any.
    ///
    /// Read at most the limit **plus one** byte and hand the request to
    /// [`Relay::handle_request`](super::Relay::handle_request): a body longer than the limit
    /// is how the relay learns it was too large, and it answers as the endpoint should (a
    /// long-polling client is closed with an error, for one). `0` means the endpoint takes no
    /// body: read none.
    ///
    /// # Errors
    /// The refusal to answer at once (a missing or bad token: 401, a missing hub: 400), as
    /// the relay would refuse the request. Tell the relay
    /// ([`Relay::refused_by_gate`](super::Relay::refused_by_gate)), so that it counts and
    /// reports it like its own.
    pub fn body_limit(&self, now: Instant, req: &HttpRequest) -> Result<usize, Rejection> {
        self.check(now, req).map(|(limit, _)| limit)
    }

    /// [`body_limit`](Self::body_limit), and the token it verified: set it as the request's
    /// [`verified`](HttpRequest::verified), so that the relay does not verify it again.
    ///
    /// # Errors
    /// As [`body_limit`](Self::body_limit).
    pub fn check(
        &self,
        now: Instant,
        req: &HttpRequest,
    ) -> Result<(usize, Option<VerifiedToken>), Rejection> {
        if req.method != "POST" {
            return Ok((0, None));
        }
        let config = &self.config;
        let path = req.path.trim_end_matches('/');
        let (limit, claims) = match path {
            // A negotiate opens a connection: its token with all its claims.
            "/client/negotiate" => (
                NEGOTIATE_BODY_LIMIT,
                self.admission.verify_opening(
                    config,
                    now,
                    req,
                    "/client/",
                    Some(&hub_param(req)?),
                )?,
            ),
            "/client" => (
                config.max_client_payload(),
                self.admission
                    .verify(config, now, req, "/client/", Some(&hub_param(req)?))?,
            ),
            p if p == CLASSIC_BASE || p.starts_with("/aspnetclient/") => (
                classic_body_limit(config),
                self.admission
                    .verify(config, now, req, CLASSIC_BASE, None)?,
            ),
            p if p.starts_with("/api/") => (
                super::rest::MAX_BODY,
                self.admission.verify_rest(config, now, req)?,
            ),
            _ => return Ok((0, None)),
        };
        let verified = req.bearer_token().map(|token| VerifiedToken {
            token: token.into_owned(),
            signed: claims,
        });
        Ok((limit, verified))
    }
}
