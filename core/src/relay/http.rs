//! The HTTP side of the relay's API: the requests it reads and the responses it gives.

use std::borrow::Cow;

use bytes::Bytes;

use super::ConnHandle;

/// An HTTP request, as much of it as the relay reads.
#[derive(Debug, Clone, Default)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    /// Request headers, names in any case.
    pub headers: crate::http1::Fields,
    /// Whether this is a WebSocket upgrade request.
    pub websocket: bool,
    /// The request body (for `POST` sends), already bounded by the adapter.
    pub body: Bytes,
    /// The address of the socket's peer, when the adapter knows it: the client's address,
    /// or a proxy's (see [`RelayConfig::trusted_proxies`](super::RelayConfig)).
    pub peer: Option<std::net::IpAddr>,
    /// The bearer token, as the relay's [`RequestGate`](super::RequestGate) verified it before
    /// the body was read ([`RequestGate::check`](super::RequestGate::check)), if it did.
    pub verified: Option<VerifiedToken>,
}

/// A bearer token whose signature a [`RequestGate`](super::RequestGate) checked, and its
/// claims. Handed to the relay with its request, it spares the relay checking the signature
/// and decoding the claims a second time: the relay takes it only for the very token the
/// request bears, and checks the times (expiry, not-before) again at its own `now`, and the
/// audience for its endpoint. Only a gate makes one.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub(super) token: String,
    pub(super) signed: std::sync::Arc<super::admission::SignedToken>,
}

impl HttpRequest {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }

    /// The first query parameter `name` (case-insensitively), percent-decoded: borrowed
    /// from the query unless decoding changed it.
    pub(super) fn query_param(&self, name: &str) -> Option<Cow<'_, str>> {
        // Only the matching pair's value is decoded: the others may be a bearer token of a
        // kilobyte, and a connect asks for several parameters.
        // A pair's name is read byte by byte, once: a request asks for several parameters,
        // and most queries are a few short pairs, where searching each for `=` and then for
        // `%` or `+` cost more than the reading.
        let (pair, value) = self
            .query
            .split('&')
            .find_map(|pair| raw_value_named(pair, name).map(|value| (pair, value)))?;
        // A value with nothing to decode (most are) is the query's own text.
        if !value.bytes().any(|b| b == b'%' || b == b'+') {
            return Some(Cow::Borrowed(value));
        }
        form_urlencoded::parse(pair.as_bytes())
            .next()
            .map(|(_, value)| value)
    }

    /// The bearer token, from `Authorization` or the `access_token` query parameter.
    pub(super) fn bearer_token(&self) -> Option<Cow<'_, str>> {
        if let Some(value) = self.header("authorization") {
            let mut parts = value.splitn(2, ' ');
            if let (Some(scheme), Some(token)) = (parts.next(), parts.next()) {
                if scheme.eq_ignore_ascii_case("bearer") {
                    return Some(Cow::Borrowed(token.trim()));
                }
            }
        }
        self.query_param("access_token")
    }
}

/// Whether `pair`, one undecoded `name=value` of a query, is named `name`: compared decoded
/// and in any case. Only the name is decoded, and only if it has something to decode.
pub(crate) fn pair_named(pair: &str, name: &str) -> bool {
    raw_value_named(pair, name).is_some()
}

/// The undecoded value of `pair` (empty without `=`), if it is named `name` (see
/// [`pair_named`]).
fn raw_value_named<'a>(pair: &'a str, name: &str) -> Option<&'a str> {
    // One pass over the name, up to its `=`: whether it holds anything to decode.
    let mut end = pair.len();
    let mut encoded = false;
    for (i, b) in pair.bytes().enumerate() {
        match b {
            b'=' => {
                end = i;
                break;
            }
            b'%' | b'+' => encoded = true,
            _ => {}
        }
    }
    let (raw, value) = pair.split_at(end);
    let named = if encoded {
        form_urlencoded::parse(raw.as_bytes())
            .next()
            .is_some_and(|(decoded, _)| decoded.eq_ignore_ascii_case(name))
    } else {
        raw.eq_ignore_ascii_case(name)
    };
    named.then(|| value.get(1..).unwrap_or_default())
}

/// An HTTP response for the adapter to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: Bytes,
    /// Further headers (the REST API's `x-ms-error-code`).
    pub headers: Vec<(&'static str, String)>,
}

impl HttpResponse {
    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: Bytes::from(body.into()),
        }
    }

    /// A 200 JSON response.
    pub fn json(body: Vec<u8>) -> Self {
        Self {
            status: 200,
            content_type: "application/json",
            headers: Vec::new(),
            body: Bytes::from(body),
        }
    }
}

/// A held HTTP request (a long poll), answered later by [`Output::Respond`](super::Output::Respond).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// What to do with an HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum RequestOutcome {
    /// Answer with this response.
    Respond(HttpResponse),
    /// Complete the WebSocket upgrade; its traffic belongs to this handle. If the upgrade
    /// fails, report [`Relay::handle_closed`](super::Relay::handle_closed).
    AcceptWebSocket(ConnHandle),
    /// Start a Server-Sent Events response (`200`, `text/event-stream`, no caching): its body
    /// is the [`Output::Transmit`](super::Output::Transmit)s for this handle, and [`Output::Close`](super::Output::Close) ends it. If the
    /// client goes away, report [`Relay::handle_closed`](super::Relay::handle_closed).
    EventStream(ConnHandle),
    /// Hold the request: its response comes later as an [`Output::Respond`](super::Output::Respond). If the client
    /// aborts it first, report [`Relay::handle_request_aborted`](super::Relay::handle_request_aborted).
    Pending(RequestId),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_query(query: &str) -> HttpRequest {
        HttpRequest {
            query: query.into(),
            ..HttpRequest::default()
        }
    }

    #[test]
    fn a_query_parameter_is_found_by_its_decoded_name_and_decoded() {
        let req = with_query("&&id=a%2Bb&%68UB=Chat+Room&access_token=x.y==&hub=second&flag");
        assert_eq!(req.query_param("id").as_deref(), Some("a+b"));
        // Names compare decoded and in any case; the first match wins; `+` is a space.
        assert_eq!(req.query_param("hub").as_deref(), Some("Chat Room"));
        // A value keeps its own `=`.
        assert_eq!(req.query_param("access_token").as_deref(), Some("x.y=="));
        // With nothing to decode, the query's own text.
        assert!(matches!(
            req.query_param("access_token"),
            Some(Cow::Borrowed("x.y=="))
        ));
        assert_eq!(req.query_param("flag").as_deref(), Some(""));
        assert_eq!(req.query_param("missing"), None);
        assert_eq!(req.query_param("i"), None);
        // Undecodable bytes are replaced, as `form_urlencoded` has it.
        assert_eq!(
            with_query("a=%FF").query_param("a").as_deref(),
            Some("\u{FFFD}")
        );
    }

    /// Every query of up to five symbols from an alphabet of what matters (`&`, `=`, `%`,
    /// `+`, a hex digit, letters in both cases, a character of two bytes), asked for names
    /// plain and not: the byte-by-byte reading finds what splitting and searching each pair
    /// found (the implementation before 2026-12-04, kept here as the reference).
    #[test]
    fn a_query_is_read_as_splitting_it_did() {
        fn reference<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
            let named = |pair: &str| {
                let raw = pair.split_once('=').map_or(pair, |(raw, _)| raw);
                if raw.contains(['%', '+']) {
                    form_urlencoded::parse(raw.as_bytes())
                        .next()
                        .is_some_and(|(decoded, _)| decoded.eq_ignore_ascii_case(name))
                } else {
                    raw.eq_ignore_ascii_case(name)
                }
            };
            let pair = query.split('&').find(|pair| named(pair))?;
            let value = pair.split_once('=').map_or("", |(_, value)| value);
            if !value.contains(['%', '+']) {
                return Some(Cow::Borrowed(value));
            }
            form_urlencoded::parse(pair.as_bytes())
                .next()
                .map(|(_, value)| value)
        }
        const SYMBOLS: [&str; 9] = ["a", "A", "=", "&", "%", "4", "1", "+", "é"];
        const NAMES: [&str; 7] = ["a", "A", "aa", "", "a a", "é", "a+"];
        let mut queries = vec![String::new()];
        let mut from = 0;
        for _ in 0..5 {
            let longest = queries.len();
            for i in from..longest {
                for symbol in SYMBOLS {
                    let longer = format!("{}{symbol}", queries[i]);
                    queries.push(longer);
                }
            }
            from = longest;
        }
        assert_eq!(queries.len(), (0..=5).map(|n| 9usize.pow(n)).sum::<usize>());
        let mut found = 0;
        for query in &queries {
            let req = with_query(query);
            for name in NAMES {
                let expected = reference(query, name);
                assert_eq!(req.query_param(name), expected, "{name:?} in {query:?}");
                found += usize::from(expected.is_some());
                let plain = query.split('&').any(|pair| pair_named(pair, name));
                assert_eq!(plain, expected.is_some(), "{name:?} in {query:?}");
            }
        }
        // Both outcomes are common: the alphabet is not one that never matches.
        let asked = queries.len() * NAMES.len();
        assert!(
            found > asked / 20 && found < asked / 2,
            "{found} of {asked}"
        );
    }
}
