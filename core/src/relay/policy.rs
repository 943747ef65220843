//! What a client's token asks of the service: the Azure SDK's `asrs.s.*` system claims that
//! are policy (Azure/azure-signalr `src/Microsoft.Azure.SignalR.Common/Utilities/
//! ClaimsUtility.cs`, `BuildJwtClaims`, and `Constants.ClaimType`):
//!
//! | claim | what the relay does |
//! |---|---|
//! | `asrs.s.sn` + `asrs.s.ssticky` | maps the client to a server connection of that app server (`X-ASRS-Server-Id`): `Required` refuses the client when it has none, `Preferred` falls back to the least loaded |
//! | `asrs.s.htt` | the transports allowed: 1 WebSockets, 2 Server-Sent Events, 4 long polling |
//! | `asrs.s.cht` | the handshake timeout, seconds (the SDK allows 1–30) |
//! | `asrs.s.ttl` | how long a long-polling client may go between polls, seconds (1–300) |
//! | `asrs.s.coae` + `asrs.s.aeo` | closes the client when its authentication expires (Unix seconds) |
//! | `asrs.s.dc` | a diagnostic client: OpenConnection says so (`Asrs-Is-Diagnostic-Client`) |
//!
//! The others are the app server's business and reach it with the claims: the user id
//! (`uid`), the authentication, name and role claim types (`aut`, `nt`, `rt`), detailed
//! errors (`derror`), the endpoint count (`secn`), the app name (`apn`) and the SDK version
//! (`vn`). A claim the relay cannot read is ignored, as if absent.

use std::time::Duration;

use serde_json::Value;

use crate::aspnetcore::negotiate::TransportKind;
use crate::auth::Claims;

/// The policy claims of one client. Most clients have none, and carry no policy at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Policy {
    /// The app server the client must or should be served by.
    pub(crate) sticky: Option<Sticky>,
    /// The transports allowed (`HttpTransportType` bits); `None`: every transport.
    transports: Option<u8>,
    /// The handshake timeout, when not the relay's.
    handshake_timeout: Option<Duration>,
    /// The most a long-polling client may go between polls, when not the relay's.
    poll_interval: Option<Duration>,
    /// When the client's authentication expires (Unix seconds), to close it then.
    pub(crate) auth_expires: Option<u64>,
    /// A diagnostic client.
    pub(crate) diagnostic: bool,
}

/// `asrs.s.sn` with `asrs.s.ssticky`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sticky {
    /// The app server's name: its server connections' `X-ASRS-Server-Id`.
    pub(crate) server: String,
    /// `Required`: only that app server. `Preferred`: that one if it is there.
    pub(crate) required: bool,
}

/// The handshake timeout's bounds in the SDK (`Constants.Periods.MaxCustomHandshakeTimeout`).
const HANDSHAKE_TIMEOUT_SECS: std::ops::RangeInclusive<u64> = 1..=30;
/// `MaxPollIntervalInSeconds`'s bounds in the SDK.
const POLL_INTERVAL_SECS: std::ops::RangeInclusive<u64> = 1..=300;

impl Policy {
    /// No policy: the relay's defaults.
    pub(crate) const NONE: Self = Self {
        sticky: None,
        transports: None,
        handshake_timeout: None,
        poll_interval: None,
        auth_expires: None,
        diagnostic: false,
    };

    /// Reads the policy claims; `None` when the token has none.
    pub(crate) fn from_claims(claims: &Claims) -> Option<Box<Self>> {
        let text = |name: &str| -> Option<String> {
            match claims.extra.get(name)? {
                Value::String(s) => Some(s.trim().to_owned()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            }
        };
        let number = |name: &str| text(name).and_then(|t| t.parse::<u64>().ok());
        let truth = |name: &str| text(name).is_some_and(|t| t.eq_ignore_ascii_case("true"));
        let sticky = match (text("asrs.s.sn"), text("asrs.s.ssticky")) {
            (Some(server), Some(mode)) if !server.is_empty() => {
                if mode.eq_ignore_ascii_case("Required") {
                    Some(Sticky {
                        server,
                        required: true,
                    })
                } else if mode.eq_ignore_ascii_case("Preferred") {
                    Some(Sticky {
                        server,
                        required: false,
                    })
                } else {
                    None
                }
            }
            _ => None,
        };
        let policy = Self {
            sticky,
            transports: number("asrs.s.htt")
                .and_then(|bits| u8::try_from(bits & 7).ok())
                .filter(|&bits| bits != 0),
            handshake_timeout: number("asrs.s.cht")
                .filter(|s| HANDSHAKE_TIMEOUT_SECS.contains(s))
                .map(Duration::from_secs),
            poll_interval: number("asrs.s.ttl")
                .filter(|s| POLL_INTERVAL_SECS.contains(s))
                .map(Duration::from_secs),
            auth_expires: number("asrs.s.aeo").filter(|_| truth("asrs.s.coae")),
            diagnostic: truth("asrs.s.dc"),
        };
        (policy != Self::NONE).then(|| Box::new(policy))
    }

    /// Whether the client may use `transport`.
    pub(crate) fn allows(&self, transport: TransportKind) -> bool {
        let bit = match transport {
            TransportKind::WebSockets => 1,
            TransportKind::ServerSentEvents => 2,
            TransportKind::LongPolling => 4,
        };
        self.transports.is_none_or(|bits| bits & bit != 0)
    }

    /// The client's handshake timeout: its own, or the relay's.
    pub(crate) fn handshake_timeout(&self, relay: Duration) -> Duration {
        self.handshake_timeout.unwrap_or(relay)
    }

    /// How long a long-polling client may go between polls: its own, or the relay's.
    pub(crate) fn poll_interval(&self, relay: Duration) -> Duration {
        self.poll_interval.unwrap_or(relay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(pairs: &[(&str, Value)]) -> Option<Box<Policy>> {
        let mut claims = Claims::new();
        for (k, v) in pairs {
            claims.insert(*k, v.clone());
        }
        Policy::from_claims(&claims)
    }

    #[test]
    fn claims_as_the_sdk_writes_them() {
        assert_eq!(policy(&[("asrs.s.uid", "alice".into())]), None, "no policy");
        let p = policy(&[
            ("asrs.s.sn", "web-1_abc".into()),
            ("asrs.s.ssticky", "Required".into()),
            ("asrs.s.htt", "5".into()),
            ("asrs.s.cht", "20".into()),
            ("asrs.s.ttl", "7".into()),
            ("asrs.s.coae", "true".into()),
            ("asrs.s.aeo", "1700000100".into()),
            ("asrs.s.dc", "true".into()),
        ])
        .expect("a policy");
        assert_eq!(
            p.sticky,
            Some(Sticky {
                server: "web-1_abc".into(),
                required: true
            })
        );
        assert!(p.allows(TransportKind::WebSockets) && p.allows(TransportKind::LongPolling));
        assert!(!p.allows(TransportKind::ServerSentEvents));
        let relay = Duration::from_secs(15);
        assert_eq!(p.handshake_timeout(relay), Duration::from_secs(20));
        assert_eq!(p.poll_interval(relay), Duration::from_secs(7));
        assert_eq!(p.auth_expires, Some(1_700_000_100));
        assert!(p.diagnostic);
    }

    #[test]
    fn what_cannot_be_read_is_ignored() {
        // Disabled stickiness is never written, and an unknown mode counts as none; so do
        // out-of-range timeouts, transports that allow nothing, and an expiry without coae.
        for pairs in [
            vec![
                ("asrs.s.sn", "web".into()),
                ("asrs.s.ssticky", "Disabled".into()),
            ],
            vec![("asrs.s.ssticky", "Required".into())],
            vec![("asrs.s.htt", "0".into()), ("asrs.s.htt2", "1".into())],
            vec![("asrs.s.htt", "x".into())],
            vec![("asrs.s.cht", "0".into())],
            vec![("asrs.s.cht", "31".into())],
            vec![("asrs.s.ttl", "301".into())],
            vec![("asrs.s.aeo", "1700000100".into())],
            vec![("asrs.s.coae", "false".into()), ("asrs.s.aeo", "1".into())],
            vec![("asrs.s.dc", "false".into())],
            vec![("asrs.s.cht", Value::Array(vec![]))],
        ] {
            assert_eq!(policy(&pairs), None, "{pairs:?}");
        }
        let p = policy(&[
            ("asrs.s.sn", "web".into()),
            ("asrs.s.ssticky", "preferred".into()),
        ])
        .expect("a policy");
        assert!(!p.sticky.expect("sticky").required);
        // Numbers as JSON numbers work too.
        let p = policy(&[("asrs.s.htt", 2.into())]).expect("a policy");
        assert!(p.allows(TransportKind::ServerSentEvents) && !p.allows(TransportKind::WebSockets));
    }
}
