//! Upstream: in serverless mode, what clients do goes to the backend as HTTP `POST`s, as
//! Azure SignalR's upstream webhooks (and the Emulator's `settings.json`) do it.
//!
//! The relay decides every request (which template matches, the URL, the headers and their
//! signature, the body) and what each answer means for the client; the adapter sends them
//! ([`Output::Upstream`](super::Output::Upstream)) and reports each answer
//! ([`Relay::handle_upstream_response`](super::Relay::handle_upstream_response)).
//!
//! - Templates are tried in order and the first whose hub, category and event patterns all
//!   match wins (`*`, a comma list, or a name; hub names are compared without case, as the
//!   relay's hubs are; categories and events with it, as the Emulator does).
//! - `connections/connected` carries `{"type":10}`, `connections/disconnected`
//!   `{"Type":11,"Error":…}`, and `messages/<target>` the client's invocation as it sent it,
//!   without its framing (`application/json` or `application/x-msgpack`). Streaming
//!   invocations are forwarded too, which Azure does not do.
//! - Headers: `X-ASRS-Connection-Id`, `-Hub`, `-Category`, `-Event`, `-User-Id`,
//!   `-User-Claims` (`type: value, …`), `-Client-Query` (with its `?`), and
//!   `X-ASRS-Signature`: `sha256=<hex HMAC-SHA256 of the connection id>` per access key,
//!   joined by `,` (the Functions extension splits on `,` without trimming).
//! - An invocation's answer: a 200 body goes to the client as it came (a framed completion,
//!   as the Functions extension writes it); an empty 200 or a 204 is an empty completion; any
//!   other status, or no answer, is the completion error `Invocation failed, status code N`
//!   (500 for no answer), as Azure words it.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The upstream settings, in the Emulator's `settings.json` shape:
/// `{"UpstreamSettings":{"Templates":[{"UrlTemplate", "HubPattern", "CategoryPattern",
/// "EventPattern"}]}}`, keys in any case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamSettings {
    templates: Vec<Template>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    url: String,
    hub: Pattern,
    category: Pattern,
    event: Pattern,
}

/// `*`, a list of names, or (an explicit `null`) nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Names(Vec<String>),
}

impl Pattern {
    fn parse(value: Option<&serde_json::Value>) -> Result<Self, String> {
        match value {
            None => Ok(Self::Any),
            Some(serde_json::Value::Null) => Ok(Self::Names(Vec::new())),
            Some(serde_json::Value::String(s)) => {
                let names: Vec<String> = s.split(',').map(|n| n.trim().to_owned()).collect();
                if names.iter().any(|n| n == "*") {
                    Ok(Self::Any)
                } else {
                    Ok(Self::Names(names))
                }
            }
            Some(other) => Err(format!("a pattern is a string, not {other}")),
        }
    }

    fn matches(&self, name: &str, ignore_case: bool) -> bool {
        match self {
            Self::Any => true,
            Self::Names(names) => names.iter().any(|n| {
                if ignore_case {
                    n.eq_ignore_ascii_case(name)
                } else {
                    n == name
                }
            }),
        }
    }
}

/// A key of `object`, in any case.
fn field<'a>(
    object: &'a serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Option<&'a serde_json::Value> {
    object
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

impl UpstreamSettings {
    /// Parses a settings file.
    ///
    /// # Errors
    /// What is wrong with it, naming the template.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let root = value.as_object().ok_or("not a JSON object")?;
        let Some(settings) = field(root, "UpstreamSettings") else {
            return Err("no UpstreamSettings".to_owned());
        };
        let settings = settings
            .as_object()
            .ok_or("UpstreamSettings is not an object")?;
        let templates = match field(settings, "Templates") {
            None | Some(serde_json::Value::Null) => return Ok(Self::default()),
            Some(serde_json::Value::Array(t)) => t,
            Some(_) => return Err("Templates is not an array".to_owned()),
        };
        let mut parsed = Vec::new();
        for (i, t) in templates.iter().enumerate() {
            let at = |e: String| format!("template #{}: {e}", i + 1);
            let t = t
                .as_object()
                .ok_or_else(|| at("not an object".to_owned()))?;
            let url = match field(t, "UrlTemplate") {
                Some(serde_json::Value::String(u)) => u.clone(),
                _ => return Err(at("no UrlTemplate".to_owned())),
            };
            let sample = expand(&url, "hub", "category", "event");
            crate::auth::HttpUrl::parse(&sample).map_err(|e| {
                at(format!(
                    "UrlTemplate {url:?} is not an absolute http(s) URL: {e}"
                ))
            })?;
            parsed.push(Template {
                url,
                hub: Pattern::parse(field(t, "HubPattern")).map_err(at)?,
                category: Pattern::parse(field(t, "CategoryPattern")).map_err(at)?,
                event: Pattern::parse(field(t, "EventPattern")).map_err(at)?,
            });
        }
        Ok(Self { templates: parsed })
    }

    /// The URL for an event, from the first template that matches it.
    pub(crate) fn url(&self, hub: &str, category: &str, event: &str) -> Option<String> {
        self.templates
            .iter()
            .find(|t| {
                t.hub.matches(hub, true)
                    && t.category.matches(category, false)
                    && t.event.matches(event, false)
            })
            .map(|t| expand(&t.url, hub, category, event))
    }

    /// Whether there are no templates.
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }
}

/// A URL template with `{hub}`, `{category}` and `{event}` filled in, each percent-encoded.
fn expand(template: &str, hub: &str, category: &str, event: &str) -> String {
    template
        .replace("{hub}", &escape(hub))
        .replace("{category}", &escape(category))
        .replace("{event}", &escape(event))
}

use crate::auth::percent_encode as escape;

/// One request for the adapter to send: `POST url` with these headers and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    /// Reported back with the answer.
    pub id: u64,
    /// The absolute URL.
    pub url: String,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The other headers.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Bytes,
    /// How long to wait for an answer.
    pub timeout: Duration,
    /// How many times to try (with a growing pause between) before giving up: more than
    /// one only for `connected` and `disconnected`, whose answer does not matter.
    pub attempts: u8,
    /// The largest answer body to read (the rest is an error: too large).
    pub max_response: usize,
}

/// Who a connection is, for its upstream requests: the headers that are the same for each
/// of them, made once.
#[derive(Debug, Clone, Default)]
pub(crate) struct Caller {
    pub(crate) user: Option<String>,
    /// `type: value, …`, as the header carries it.
    pub(crate) claims: String,
    /// The client's query, with its `?` (empty if none).
    pub(crate) query: String,
    /// `X-ASRS-Signature` (empty without access keys).
    pub(crate) signature: String,
}

impl Caller {
    /// The caller `connection_id`, of `user` (as the relay knows it), with the claims and
    /// query its app server would be told, signed with `keys`.
    pub(crate) fn new(
        keys: &[String],
        connection_id: &str,
        user: Option<String>,
        claims: &[(String, String)],
        query: &str,
    ) -> Self {
        let claims = claims
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let query = if query.is_empty() || query.starts_with('?') {
            query.to_owned()
        } else {
            format!("?{query}")
        };
        Self {
            user,
            claims,
            query,
            signature: signature(keys, connection_id),
        }
    }
}

/// The headers of a request about `connection_id`.
pub(crate) fn headers(
    hub: &str,
    category: &str,
    event: &str,
    connection_id: &str,
    caller: &Caller,
) -> Vec<(&'static str, String)> {
    let mut h = vec![
        ("X-ASRS-Connection-Id", connection_id.to_owned()),
        ("X-ASRS-Hub", hub.to_owned()),
        ("X-ASRS-Category", category.to_owned()),
        ("X-ASRS-Event", event.to_owned()),
    ];
    if let Some(user) = caller.user.as_ref().filter(|u| !u.is_empty()) {
        h.push(("X-ASRS-User-Id", user.clone()));
    }
    if !caller.claims.is_empty() {
        h.push(("X-ASRS-User-Claims", caller.claims.clone()));
    }
    if !caller.query.is_empty() {
        h.push(("X-ASRS-Client-Query", caller.query.clone()));
    }
    if !caller.signature.is_empty() {
        h.push(("X-ASRS-Signature", caller.signature.clone()));
    }
    h
}

/// `sha256=<hex>` of the connection id under each key, joined by `,`.
pub(crate) fn signature(keys: &[String], connection_id: &str) -> String {
    keys.iter()
        .map(|key| {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
                .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
            mac.update(connection_id.as_bytes());
            let digest = mac.finalize().into_bytes();
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256={hex}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether `header` (an upstream request's `X-ASRS-Signature`) holds the signature of
/// `connection_id` under one of `keys`, as a backend checks it (the Functions extension's
/// way: split on `,`, hex in any case).
pub fn signature_valid(keys: &[String], connection_id: &str, header: &str) -> bool {
    let expected = signature(keys, connection_id);
    let expected: Vec<&str> = expected.split(',').collect();
    header
        .split(',')
        .any(|s| expected.iter().any(|e| e.eq_ignore_ascii_case(s)))
}

/// What an invocation's answer means for its client: a completion to send, in whole frames
/// of the client's protocol, or the upstream's own body, as it came.
pub(crate) enum Answer {
    /// The upstream's body, written to the client as it is.
    Verbatim(Bytes),
    /// A completion the relay writes: empty, or with this error.
    Completion(Option<String>),
}

/// What the answer (`Ok((status, body))`, or `Err` for none) to an invocation means.
pub(crate) fn answer(result: Result<(u16, Bytes), UpstreamFailure>) -> Answer {
    match result {
        Ok((200, body)) if !body.is_empty() => Answer::Verbatim(body),
        Ok((200 | 204, _)) => Answer::Completion(None),
        Ok((status, _)) => {
            Answer::Completion(Some(format!("Invocation failed, status code {status}")))
        }
        Err(UpstreamFailure::TooLarge) => {
            Answer::Completion(Some("Invocation failed, response too large.".to_owned()))
        }
        Err(UpstreamFailure::NoAnswer) => {
            Answer::Completion(Some("Invocation failed, status code 500".to_owned()))
        }
    }
}

/// Why there is no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// No answer: the request failed or timed out.
    NoAnswer,
    /// The answer's body was larger than [`UpstreamRequest::max_response`].
    TooLarge,
}

/// Invocations waiting for their upstream's answer, by request id.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub(crate) map: BTreeMap<u64, Waiting>,
    next: u64,
}

/// A request whose answer is awaited.
#[derive(Debug)]
pub(crate) struct Waiting {
    pub(crate) hub: super::directory::HubId,
    pub(crate) connection_id: String,
    /// For an invocation: its id, and its client's protocol.
    pub(crate) invocation: Option<(String, crate::aspnetcore::HubProtocol)>,
}

impl Pending {
    pub(crate) fn next_id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_template_wins_and_fills_in_its_url() {
        let s = UpstreamSettings::parse(
            r#"{"upstreamSettings":{"templates":[
                {"UrlTemplate":"http://a/{hub}/{event}?code=x","HubPattern":"chat","EventPattern":"Send Message,connected"},
                {"urlTemplate":"http://b/{category}","CategoryPattern":"messages"},
                {"UrlTemplate":"http://never","HubPattern":null}
            ]}}"#,
        )
        .expect("settings");
        assert_eq!(
            s.url("Chat", "messages", "Send Message").as_deref(),
            Some("http://a/Chat/Send%20Message?code=x")
        );
        assert_eq!(
            s.url("chat", "connections", "connected").as_deref(),
            Some("http://a/chat/connected?code=x")
        );
        assert_eq!(
            s.url("other", "messages", "x").as_deref(),
            Some("http://b/messages")
        );
        assert_eq!(s.url("other", "connections", "connected"), None);
        assert_eq!(
            s.url("chat", "messages", "send message").as_deref(),
            Some("http://b/messages"),
            "events keep their case"
        );
        assert!(UpstreamSettings::parse(
            r#"{"UpstreamSettings":{"Templates":[{"UrlTemplate":"relative/{hub}"}]}}"#
        )
        .is_err());
        assert!(UpstreamSettings::parse(
            r#"{"UpstreamSettings":{"Templates":[{"HubPattern":"*"}]}}"#
        )
        .is_err());
        assert!(UpstreamSettings::parse("[]").is_err());
    }

    #[test]
    fn the_signature_is_the_functions_extensions() {
        // HMAC-SHA256("key", "connectionId"), as the Functions extension checks it.
        let sig = signature(&["key".to_owned(), "other".to_owned()], "connectionId");
        let parts: Vec<&str> = sig.split(',').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts
            .iter()
            .all(|p| p.starts_with("sha256=") && p.len() == 7 + 64));
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"key").expect("a key");
        mac.update(b"connectionId");
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(parts[0], format!("sha256={hex}"));
    }

    #[test]
    fn answers_become_what_azure_sends_the_client() {
        assert!(matches!(
            answer(Ok((200, Bytes::from_static(b"x")))),
            Answer::Verbatim(_)
        ));
        assert!(matches!(
            answer(Ok((204, Bytes::new()))),
            Answer::Completion(None)
        ));
        assert!(matches!(
            answer(Ok((200, Bytes::new()))),
            Answer::Completion(None)
        ));
        assert!(
            matches!(answer(Ok((404, Bytes::new()))), Answer::Completion(Some(e)) if e == "Invocation failed, status code 404")
        );
        assert!(
            matches!(answer(Err(UpstreamFailure::NoAnswer)), Answer::Completion(Some(e)) if e.ends_with("500"))
        );
    }

    #[test]
    fn a_caller_is_told_by_its_claims_and_query() {
        let keys = ["key".to_owned()];
        let c = Caller::new(
            &keys,
            "c1",
            Some("alice".to_owned()),
            &[
                ("asrs.s.uid".into(), "alice".into()),
                ("role".into(), "admin".into()),
            ],
            "hub=chat&x=1",
        );
        assert_eq!(c.claims, "asrs.s.uid: alice, role: admin");
        assert_eq!(c.query, "?hub=chat&x=1");
        assert_eq!(c.signature, signature(&keys, "c1"));
        let h = headers("chat", "messages", "send", "c1", &c);
        assert!(h.contains(&("X-ASRS-User-Id", "alice".to_owned())));
        assert!(h.contains(&("X-ASRS-Signature", c.signature.clone())));
        let unsigned = Caller::new(&[], "c1", None, &[], "");
        let h = headers("chat", "messages", "send", "c1", &unsigned);
        assert!(h
            .iter()
            .all(|(k, _)| *k != "X-ASRS-Signature" && *k != "X-ASRS-User-Id"));
    }
}
