//! Classic ASP.NET SignalR 2.x wire formats (the `jquery.signalR` 2.4 and
//! `Microsoft.AspNet.SignalR.Client` 2.4 families).
//!
//! A classic connection is a set of plain HTTP requests under one base path (`/signalr`, or
//! `/aspnetclient` behind Azure), plus one receive channel (WebSocket, Server-Sent Events,
//! long polling). The pieces:
//!
//! - **Requests** ([`RequestKind`], [`RequestParams`], [`Limits`]): the endpoint from the last
//!   path segment (`negotiate`, `connect`, `reconnect`, `start`, `send`, `poll`, `abort`,
//!   `ping`), and the parameters from the query string and, for long polling and `/send`, the
//!   `application/x-www-form-urlencoded` body: `transport`, `connectionToken`, the hub list in
//!   `connectionData`, the cursor `messageId`, `groupsToken`, the `/send` `data`, and so on.
//!   Parsing is bounded by [`Limits`] and fails with a [`RequestError`] whose text is the
//!   server's own where it has one.
//! - **Negotiate** ([`NegotiateReply`]): the normal response ([`NegotiateResponse`]), the
//!   redirect ([`RedirectResponse`]) and the error ([`ErrorResponse`]), and
//!   [`ProtocolVersion::resolve`] for the `ProtocolVersion` to answer.
//! - **Receive channel** ([`ReceiveMessage`]): the keep-alive `{}`, the persistent response
//!   envelope ([`PersistentResponse`], keys `C S T G L M E D`) whose `M` carries messages
//!   opaquely, and top-level hub results and progress (an object with `I`).
//! - **Hub messages**: what clients send ([`ClientMessage`], [`ClientHubInvocation`]) and what
//!   travels inside `M` ([`ServerHubMessage`]: [`ServerHubInvocation`], [`HubResult`],
//!   [`HubProgress`]). Arguments, results, state and error data are [`RawJson`]: the sender's
//!   exact JSON text, never parsed.
//!
//! JSON decoders take bytes, fail with a [`MessageError`] (never a panic), ignore unknown keys
//! and accept keys in any order; encoders write compact JSON that the matching decoder reads
//! back to an equal value.
//!
//! Not supported, on purpose: forever frame framing and JSONP wrapping (never used through
//! Azure redirects; the parameters are still parsed), the `/hubs` proxy script, protocol
//! versions below 1.2, and lowercase or mixed-case JSON keys in hub messages (Json.NET would
//! accept `"h"` for `"H"`; no client sends it).

mod envelope;
mod error;
mod hub;
mod negotiate;
mod query;
mod raw;

pub use envelope::{PersistentResponse, ReceiveMessage, KEEP_ALIVE};
pub use error::{MessageError, RequestError};
pub use hub::{
    ClientHubInvocation, ClientMessage, HubProgress, HubResult, ServerHubInvocation,
    ServerHubMessage, MAX_STATE_LEN,
};
pub use negotiate::{
    ErrorResponse, NegotiateReply, NegotiateResponse, ProtocolVersion, RedirectResponse,
};
pub use query::{encode_connection_data, Limits, RequestKind, RequestParams, Transport};
pub use raw::RawJson;

/// The body of a successful `/start` (the spaces are the server's; clients parse it as JSON).
pub const START_RESPONSE: &[u8] = b"{ \"Response\": \"started\" }";

/// The body of a `/ping`.
pub const PING_RESPONSE: &[u8] = b"{ \"Response\": \"pong\" }";

/// Fuzz body: `data` as a query string (lossily made UTF-8) and as a form body, for every
/// request kind. Whatever parses must round-trip through [`RequestParams::to_query_string`]
/// and [`RequestParams::to_post_parts`].
#[cfg(any(test, feature = "__fuzz"))]
#[doc(hidden)]
pub fn fuzz_query(data: &[u8]) {
    let limits = Limits::default();
    // Re-encoding may percent-encode what arrived raw, so the re-parse allows any length.
    let relaxed = Limits {
        max_query_len: usize::MAX,
        max_body_len: usize::MAX,
        ..limits
    };
    let query = String::from_utf8_lossy(data);
    let _ = RequestKind::from_path(&query);
    for kind in RequestKind::ALL {
        let parsed = [
            RequestParams::parse(kind, &query, None, &limits),
            RequestParams::parse(
                kind,
                "transport=longPolling&connectionToken=t",
                Some(data),
                &limits,
            ),
        ];
        for params in parsed.into_iter().flatten() {
            let again = RequestParams::parse(kind, &params.to_query_string(), None, &relaxed);
            assert_eq!(again.as_ref(), Ok(&params), "query round trip");
            let (post_query, form) = params.to_post_parts();
            let again = RequestParams::parse(kind, &post_query, Some(form.as_bytes()), &relaxed);
            assert_eq!(again.as_ref(), Ok(&params), "post round trip");
        }
    }
}

/// Fuzz body: `data` as a receive-channel message, a negotiate response, a client message
/// and a server hub message. Whatever decodes must re-encode to something that decodes to an
/// equal value.
#[cfg(any(test, feature = "__fuzz"))]
#[doc(hidden)]
pub fn fuzz_envelope(data: &[u8]) {
    if let Ok(m) = ReceiveMessage::decode(data) {
        assert_eq!(ReceiveMessage::decode(&m.encode()), Ok(m));
    }
    if let Ok(m) = PersistentResponse::decode(data) {
        assert_eq!(PersistentResponse::decode(&m.encode()), Ok(m));
    }
    if let Ok(m) = NegotiateReply::decode(data) {
        assert_eq!(NegotiateReply::decode(&m.encode()), Ok(m));
    }
    if let Ok(m) = ClientMessage::decode(data) {
        assert_eq!(ClientMessage::decode(&m.encode()), Ok(m));
    }
    if let Ok(m) = ClientHubInvocation::decode(data) {
        assert_eq!(ClientHubInvocation::decode(&m.encode()), Ok(m));
    }
    if let Ok(m) = ServerHubMessage::decode(data) {
        assert_eq!(ServerHubMessage::decode(&m.encode()).as_ref(), Ok(&m));
        assert_eq!(m.to_raw().as_str().as_bytes(), m.encode());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(name: &str) -> Vec<Vec<u8>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .collect()
    }

    /// Small deterministic mutations of a seed: truncations and single-byte changes.
    fn mutations(seed: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for i in 0..seed.len() {
            out.push(seed[..i].to_vec());
            for b in [
                b'"', b'{', b'}', b'[', b'%', b'&', b'=', b'+', b'0', b' ', 0xff,
            ] {
                let mut m = seed.to_vec();
                m[i] = b;
                out.push(m);
            }
        }
        out
    }

    #[test]
    fn fuzz_query_on_corpus_and_mutations() {
        let seeds = corpus("classic_query");
        assert!(seeds.len() >= 10, "query corpus missing");
        for seed in &seeds {
            fuzz_query(seed);
            for m in mutations(seed) {
                fuzz_query(&m);
            }
        }
    }

    #[test]
    fn fuzz_envelope_on_corpus_and_mutations() {
        let seeds = corpus("classic_envelope");
        assert!(seeds.len() >= 10, "envelope corpus missing");
        for seed in &seeds {
            fuzz_envelope(seed);
            for m in mutations(seed) {
                fuzz_envelope(&m);
            }
        }
    }

    #[test]
    fn every_corpus_seed_is_accepted() {
        for seed in corpus("classic_envelope") {
            let ok = ReceiveMessage::decode(&seed).is_ok()
                || NegotiateReply::decode(&seed).is_ok()
                || ClientMessage::decode(&seed).is_ok();
            assert!(ok, "{}", String::from_utf8_lossy(&seed));
        }
        for seed in corpus("classic_query") {
            let text = String::from_utf8_lossy(&seed);
            let ok = RequestKind::ALL.into_iter().any(|kind| {
                RequestParams::parse(kind, &text, None, &Limits::default()).is_ok()
                    || RequestParams::parse(
                        kind,
                        "transport=longPolling&connectionToken=t",
                        Some(&seed),
                        &Limits::default(),
                    )
                    .is_ok()
            });
            assert!(ok, "{text}");
        }
    }

    /// A fixed-seed xorshift generator for the random-input tests.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }

        /// A random JSON value, biased towards the classic keys.
        fn json(&mut self, depth: usize, out: &mut String) {
            const KEYS: &str = "C M S T G L E D I R H P A Url ConnectionToken ConnectionId \
                KeepAliveTimeout DisconnectTimeout ConnectionTimeout TryWebSockets ProtocolVersion \
                TransportConnectTimeout LongPollDelay RedirectUrl AccessToken Error x";
            const SCALARS: &[&str] = &[
                "null",
                "true",
                "false",
                "0",
                "1",
                "-3",
                "2.5e3",
                "1e400",
                "\"\"",
                "\"0\"",
                "\"P|0\"",
                "\"2.0\"",
                "\"\\u00e9\\n\"",
                "18446744073709551616",
            ];
            match (depth, self.below(4)) {
                (0, _) | (_, 0) => out.push_str(self.pick(SCALARS)),
                (_, 1) => {
                    out.push('[');
                    for i in 0..self.below(4) {
                        if i > 0 {
                            out.push(',');
                        }
                        self.json(depth - 1, out);
                    }
                    out.push(']');
                }
                _ => {
                    let keys: Vec<&str> = KEYS.split_whitespace().collect();
                    out.push('{');
                    for i in 0..self.below(6) {
                        if i > 0 {
                            out.push_str(if self.below(8) == 0 { " , " } else { "," });
                        }
                        out.push('"');
                        out.push_str(self.pick(&keys));
                        out.push_str("\":");
                        self.json(depth - 1, out);
                    }
                    out.push('}');
                }
            }
        }
    }

    #[test]
    fn fuzz_envelope_on_random_objects() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut decoded = 0;
        for _ in 0..30_000 {
            let mut input = String::new();
            rng.json(4, &mut input);
            fuzz_envelope(input.as_bytes());
            decoded += usize::from(ReceiveMessage::decode(input.as_bytes()).is_ok());
        }
        assert!(decoded > 1000, "only {decoded} inputs decoded");
    }

    #[test]
    fn fuzz_query_on_random_token_soup() {
        const TOKENS: &[&str] = &[
            "&",
            "=",
            "%",
            "%2",
            "%41",
            "%FF",
            "+",
            "?",
            "transport",
            "TRANSPORT",
            "longPolling",
            "webSockets",
            "connectionToken",
            "connectionData",
            "messageId",
            "groupsToken",
            "data",
            "tid",
            "frameId",
            "callback",
            "access_token",
            "clientProtocol",
            "x",
            "_",
            "2.1",
            "%5B%7B%22name%22%3A%22a%22%7D%5D",
            "%5B%7B%22name%22%3A%22A%22%7D%5D",
            "null",
            "[]",
            "\u{e9}",
        ];
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..20_000 {
            let len = rng.below(24);
            let input: String = (0..len).map(|_| rng.pick(TOKENS)).collect();
            fuzz_query(input.as_bytes());
        }
    }

    #[test]
    fn fixed_bodies() {
        assert_eq!(START_RESPONSE, br#"{ "Response": "started" }"#);
        assert_eq!(PING_RESPONSE, br#"{ "Response": "pong" }"#);
    }
}
