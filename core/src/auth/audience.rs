//! Token audiences (`aud`) and how a verifier matches them.

use std::fmt;

use super::url::{HttpUrl, Scheme, UrlError};

/// The name of the query parameter that carries the hub in an audience.
const HUB_PARAM: &str = "hub";

/// An expected audience: scheme, host, path and (optionally) hub.
///
/// The SDK builds audiences as `{scheme}://{host}/server/?hub={hub}` (server connections),
/// `{scheme}://{host}/client/?hub={hub}` (clients) or `{scheme}://{host}/aspnetclient?hub={hub}`
/// (classic clients; the relay refuses a classic negotiate for a hub the token does not
/// name), **without the port** even when the service listens on one. So
/// [`matches`](Self::matches) compares:
/// - the scheme and the host (case-insensitively),
/// - the path, ignoring trailing `/` (`/client` matches `/client/`),
/// - the `hub` query value, case-insensitively, after percent-decoding; when this audience
///   has a hub, the candidate needs at least one `hub` parameter and every one must match.
///
/// and ignores the port, every other query parameter and the fragment.
///
/// [`Display`](fmt::Display) renders the audience the way the SDK writes it, e.g.
/// `http://127.0.0.1/client/?hub=chat`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Audience {
    scheme: Scheme,
    host: String,
    path: String,
    hub: Option<String>,
}

impl Audience {
    /// An audience from its parts. `host` and `hub` are lowercased; a `path` without a leading
    /// `/` gets one. An IPv6 host keeps its brackets (`[::1]`).
    pub fn new(scheme: Scheme, host: &str, path: &str, hub: Option<&str>) -> Self {
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        Self {
            scheme,
            host: host.to_lowercase(),
            path,
            hub: hub.map(str::to_lowercase),
        }
    }

    /// Parses an audience URL such as `http://host/client/?hub=chat`. The port, the fragment
    /// and every query parameter but the first `hub` are dropped.
    pub fn parse(aud: &str) -> Result<Self, UrlError> {
        let url = HttpUrl::parse(aud)?;
        let hub = url.query().and_then(|query| hub_values(query).next());
        Ok(Self::new(
            url.scheme(),
            url.host(),
            url.path(),
            hub.as_deref(),
        ))
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host, lowercased.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The hub, lowercased, if this audience names one.
    pub fn hub(&self) -> Option<&str> {
        self.hub.as_deref()
    }

    /// Whether the `aud` value `candidate` matches this audience (see the type's
    /// documentation). A candidate that is not an absolute http/https URL never matches.
    pub fn matches(&self, candidate: &str) -> bool {
        let Ok(url) = HttpUrl::parse(candidate) else {
            return false;
        };
        url.scheme() == self.scheme
            && url.host() == self.host
            && trim_slashes(url.path()) == trim_slashes(&self.path)
            && self.hub_matches(url.query())
    }

    fn hub_matches(&self, query: Option<&str>) -> bool {
        let Some(expected) = &self.hub else {
            return true;
        };
        // `expected` is lowercase already; lowercasing it again keeps the comparison exact for
        // the rare characters whose lowercase mapping is not idempotent.
        let expected = expected.to_lowercase();
        let mut found = false;
        for value in hub_values(query.unwrap_or_default()) {
            if value.to_lowercase() != expected {
                return false;
            }
            found = true;
        }
        found
    }
}

impl fmt::Display for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.host, self.path)?;
        if let Some(hub) = &self.hub {
            let encoded: String = form_urlencoded::byte_serialize(hub.as_bytes()).collect();
            write!(f, "?{HUB_PARAM}={encoded}")?;
        }
        Ok(())
    }
}

/// How [`Validation`](super::Validation) checks a token's `aud` claim. A token passes when any
/// of its audiences matches.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AudienceCheck {
    /// Scheme, host, path and hub must match; the port is ignored (see [`Audience`]).
    Endpoint(Audience),
    /// The `aud` value must equal this string byte for byte.
    Exact(String),
}

impl AudienceCheck {
    /// Whether one `aud` value passes this check.
    pub fn matches(&self, candidate: &str) -> bool {
        match self {
            Self::Endpoint(audience) => audience.matches(candidate),
            Self::Exact(expected) => candidate == expected,
        }
    }
}

impl From<Audience> for AudienceCheck {
    fn from(audience: Audience) -> Self {
        Self::Endpoint(audience)
    }
}

/// The percent-decoded values of every `hub` parameter (name compared case-insensitively).
fn hub_values(query: &str) -> impl Iterator<Item = String> + '_ {
    form_urlencoded::parse(query.as_bytes())
        .filter(|(name, _)| name.eq_ignore_ascii_case(HUB_PARAM))
        .map(|(_, value)| value.into_owned())
}

fn trim_slashes(path: &str) -> &str {
    path.trim_end_matches('/')
}

/// An audience's path and hubs, parsed once: what a verifier that checks one token many times
/// compares, without parsing its URL again. It names an endpoint exactly as
/// [`Audience::matches`] would have an audience built from the same URL's scheme and host
/// match it.
///
/// Kept as long as its token is remembered (a long-polling client's, for its life): in one
/// exact box for the usual audience (a path and one hub), where a box for each part cost an
/// idle long-polling client three allocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AudienceParts {
    /// The path (trailing `/` trimmed), then every `hub` value (percent-decoded and
    /// lowercased), end to end.
    text: Box<str>,
    /// Where the path ends in `text`.
    path_end: u32,
    /// How many hubs follow it. One runs to the end of `text`.
    hubs: u32,
    /// With more than one: where each ends.
    ends: Option<Box<[u32]>>,
}

impl AudienceParts {
    /// The parts of an `aud` value; `None` if it is not an HTTP(S) URL (it names nothing).
    pub(crate) fn parse(aud: &str) -> Option<Self> {
        let url = HttpUrl::parse(aud).ok()?;
        let path = trim_slashes(url.path());
        let mut text = String::from(path);
        let mut ends = Vec::new();
        for hub in hub_values(url.query().unwrap_or_default()) {
            text.push_str(&hub.to_lowercase());
            ends.push(u32::try_from(text.len()).ok()?);
        }
        Some(Self {
            path_end: u32::try_from(path.len()).ok()?,
            hubs: u32::try_from(ends.len()).ok()?,
            ends: (ends.len() > 1).then(|| ends.into_boxed_slice()),
            text: text.into_boxed_str(),
        })
    }

    /// Every hub, in order.
    fn hub_names(&self) -> impl Iterator<Item = &str> + '_ {
        let one = (self.hubs == 1).then(|| &self.text[self.path_end as usize..]);
        let many = self.ends.iter().flat_map(move |ends| {
            let starts = std::iter::once(self.path_end).chain(ends.iter().copied());
            starts
                .zip(ends.iter().copied())
                .map(move |(start, end)| &self.text[start as usize..end as usize])
        });
        one.into_iter().chain(many)
    }

    /// Whether this audience names `path` (trailing `/` ignored) and, if given, `hub`: then
    /// it has at least one hub and each equals `hub`, case-insensitively.
    pub(crate) fn names(&self, path: &str, hub: Option<&str>) -> bool {
        if *self.path() != *trim_slashes(path) {
            return false;
        }
        let Some(hub) = hub else {
            return true;
        };
        if self.hubs == 0 {
            return false;
        }
        if hub.is_ascii() {
            // Each hub is lowercase already: no allocation for the usual hub name.
            return self.hub_names().all(|h| h.eq_ignore_ascii_case(hub));
        }
        // As `Audience::new` and `hub_matches` lowercase the expected hub: twice.
        let expected = hub.to_lowercase().to_lowercase();
        self.hub_names().all(|h| *h == *expected)
    }

    /// The path, trailing `/` trimmed.
    pub(crate) fn path(&self) -> &str {
        &self.text[..self.path_end as usize]
    }
}
