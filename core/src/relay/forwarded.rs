//! What the app server is told about a client, once, with OpenConnection: its claims, its
//! request headers and its query string, each cleaned of what is the relay's business.

use super::config::RelayConfig;
use super::http::HttpRequest;
use crate::aspnetcore::negotiate::TransportKind;
use crate::auth::Claims;

/// What the app server is told about a client, once.
#[derive(Debug, Default)]
pub(crate) struct Intro {
    pub(crate) claims: Vec<(String, String)>,
    pub(crate) headers: Vec<(String, Vec<String>)>,
    pub(crate) query: String,
}

impl Intro {
    /// From the client's token and its first request (the headers come with its transport).
    pub(crate) fn new(claims: &Claims, req: &HttpRequest) -> Self {
        Self {
            claims: self::claims(claims),
            headers: Vec::new(),
            query: query(&req.query),
        }
    }
}

/// Claims as the app server's SDK expects them: long-form claim types for the standard JWT
/// names (as ASP.NET Core's JwtBearer maps them), token bookkeeping claims dropped.
fn claims(claims: &Claims) -> Vec<(String, String)> {
    const NAME_IDENTIFIER: &str =
        "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier";
    let long_name = |name: &str| -> String {
        match name {
            "nameid" | "sub" => NAME_IDENTIFIER.to_owned(),
            "unique_name" => {
                "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name".to_owned()
            }
            "email" => {
                "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress".to_owned()
            }
            "role" | "roles" => {
                "http://schemas.microsoft.com/ws/2008/06/identity/claims/role".to_owned()
            }
            other => other.to_owned(),
        }
    };
    let mut out = Vec::new();
    if let Some(nameid) = &claims.nameid {
        out.push((NAME_IDENTIFIER.to_owned(), nameid.clone()));
    }
    for (name, value) in &claims.extra {
        if matches!(name.as_str(), "aud" | "exp" | "nbf" | "iat" | "iss") {
            continue;
        }
        let values: Vec<&serde_json::Value> = match value {
            serde_json::Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for v in values {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push((long_name(name), text));
        }
    }
    out
}

/// The client's query as the app server sees it: without the bearer token.
fn query(query: &str) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if !k.eq_ignore_ascii_case("access_token") {
            out.append_pair(&k, &v);
        }
    }
    out.finish()
}

/// The client's request headers as the app server sees them: without credentials and
/// WebSocket plumbing, bounded, plus the relay's instance id.
pub(crate) fn headers(
    req: &HttpRequest,
    config: &RelayConfig,
    transport: Option<TransportKind>,
) -> Vec<(String, Vec<String>)> {
    let (max, instance_id) = (config.max_forwarded_headers, config.instance_id.as_str());
    const DROPPED: &[&str] = &[
        "authorization",
        "connection",
        "upgrade",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    ];
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut total = 0;
    for (name, value) in &req.headers {
        let lower = name.to_ascii_lowercase();
        if DROPPED.contains(&lower.as_str()) {
            continue;
        }
        total += name.len() + value.len();
        if out.len() >= max || total > 16 * 1024 {
            break;
        }
        match out.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some((_, values)) => values.push(value.clone()),
            None => out.push((name.clone(), vec![value.clone()])),
        }
    }
    out.push(("Asrs-Instance-Id".to_owned(), vec![instance_id.to_owned()]));
    if let Some(kind) = transport {
        // The transport's name, for the app server's hub context.
        out.push(("Asrs-Transport".to_owned(), vec![kind.as_str().to_owned()]));
    }
    out
}
