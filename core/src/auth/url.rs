//! A minimal parser for absolute `http`/`https` URLs.
//!
//! Only what connection strings and `aud` claims need: scheme, host (a DNS name, an IPv4
//! address or a bracketed IPv6 address), optional port, path, query and fragment. Every part
//! must be printable ASCII; user info (`user@host`) is rejected. The scheme and host are
//! lowercased; everything else is kept exactly as written, so `parse(url.to_string()) == url`.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

/// The scheme of an [`HttpUrl`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// `http`, default port 80.
    Http,
    /// `https`, default port 443.
    Https,
}

impl Scheme {
    /// The scheme's lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// The port used when a URL gives none.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }

    /// Looks a scheme up by name, ignoring ASCII case.
    pub fn from_name(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("http") {
            Some(Self::Http)
        } else if name.eq_ignore_ascii_case("https") {
            Some(Self::Https)
        } else {
            None
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not an acceptable absolute `http`/`https` URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// There is no `scheme://` prefix.
    #[error("not an absolute URL (expected http://host[:port][/path] or https://...)")]
    NotAbsolute,
    /// The scheme is well formed but neither `http` nor `https`.
    #[error("unsupported URL scheme `{0}` (expected http or https)")]
    UnsupportedScheme(String),
    /// The authority has a `user@` part.
    #[error("URLs with user info (`user@host`) are not supported")]
    UserInfo,
    /// The host is empty or has characters a host name or IP address cannot have.
    #[error("URL has an empty or invalid host")]
    InvalidHost,
    /// The port is empty, not a number, or outside 1..=65535.
    #[error("URL has an invalid port (expected 1-65535)")]
    InvalidPort,
    /// A character outside printable ASCII (a space, a control character, non-ASCII).
    #[error("URL contains a character that is not printable ASCII")]
    InvalidCharacter,
    /// A query or fragment where none is allowed (service endpoints).
    #[error("URL must not have a query (`?`) or fragment (`#`) here")]
    QueryNotAllowed,
}

/// An absolute `http` or `https` URL, parsed by [`HttpUrl::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpUrl {
    scheme: Scheme,
    host: String,
    port: Option<u16>,
    path: String,
    query: Option<String>,
    fragment: Option<String>,
}

impl HttpUrl {
    /// Parses `scheme://host[:port][/path][?query][#fragment]`.
    ///
    /// The scheme must be `http` or `https` (any case). The host is a name made of ASCII
    /// letters, digits, `-`, `.` and `_`, or a bracketed IPv6 address such as `[::1]`. The
    /// port, if present, must be 1..=65535. Path, query and fragment must be printable ASCII.
    pub fn parse(input: &str) -> Result<Self, UrlError> {
        let (scheme, rest) = split_scheme(input)?;
        let (rest, fragment) = split_off(rest, '#');
        let (rest, query) = split_off(rest, '?');
        let (authority, path) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
        let (host, port) = parse_authority(authority)?;
        for part in [Some(path), query, fragment].into_iter().flatten() {
            if !part.bytes().all(is_printable_ascii) {
                return Err(UrlError::InvalidCharacter);
            }
        }
        Ok(Self {
            scheme,
            host,
            port,
            path: path.to_owned(),
            query: query.map(str::to_owned),
            fragment: fragment.map(str::to_owned),
        })
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host, lowercased; an IPv6 address keeps its brackets (`[::1]`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port written in the URL, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The port written in the URL, else the scheme's default port.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or_else(|| self.scheme.default_port())
    }

    /// The path: empty, or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The fragment, without the `#`.
    pub fn fragment(&self) -> Option<&str> {
        self.fragment.as_deref()
    }

    /// `{scheme}://{host}[:{port}]{path}/`: the URL as a base that relative paths such as
    /// `server/` are appended to. Query and fragment are dropped; `port` replaces the URL's.
    pub(crate) fn base_with_slash(&self, port: Option<u16>) -> String {
        let mut out = format!("{}://{}", self.scheme, self.host);
        if let Some(port) = port {
            out.push(':');
            out.push_str(&port.to_string());
        }
        out.push_str(&self.path);
        if !out.ends_with('/') {
            out.push('/');
        }
        out
    }

    /// Checks that the URL has no query and no fragment.
    pub(crate) fn require_no_query(self) -> Result<Self, UrlError> {
        if self.query.is_some() || self.fragment.is_some() {
            Err(UrlError::QueryNotAllowed)
        } else {
            Ok(self)
        }
    }

    /// The same URL with every trailing `/` removed from the path.
    pub(crate) fn without_trailing_slash(mut self) -> Self {
        let trimmed_len = self.path.trim_end_matches('/').len();
        self.path.truncate(trimmed_len);
        self
    }
}

impl FromStr for HttpUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        f.write_str(&self.path)?;
        if let Some(query) = &self.query {
            write!(f, "?{query}")?;
        }
        if let Some(fragment) = &self.fragment {
            write!(f, "#{fragment}")?;
        }
        Ok(())
    }
}

/// Parses a port number: ASCII digits only, 1..=65535.
pub(crate) fn parse_port_number(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|&port| port != 0)
}

/// Splits `scheme://rest` and resolves the scheme.
/// Percent-encodes everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - _ . ~`),
/// for a path segment or a query value.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn split_scheme(input: &str) -> Result<(Scheme, &str), UrlError> {
    let (name, rest) = input.split_once(':').ok_or(UrlError::NotAbsolute)?;
    let rest = rest.strip_prefix("//").ok_or(UrlError::NotAbsolute)?;
    if !is_scheme_name(name) {
        return Err(UrlError::NotAbsolute);
    }
    let scheme = Scheme::from_name(name)
        .ok_or_else(|| UrlError::UnsupportedScheme(name.to_ascii_lowercase()))?;
    Ok((scheme, rest))
}

/// RFC 3986: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`, capped at a sane length.
fn is_scheme_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 32
        && bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// Splits `text` at the first `separator`: (before, after).
fn split_off(text: &str, separator: char) -> (&str, Option<&str>) {
    match text.split_once(separator) {
        Some((before, after)) => (before, Some(after)),
        None => (text, None),
    }
}

/// Parses `host[:port]` or `[ipv6][:port]` into a lowercase host and an optional port.
fn parse_authority(authority: &str) -> Result<(String, Option<u16>), UrlError> {
    if authority.contains('@') {
        return Err(UrlError::UserInfo);
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => split_ipv6_authority(bracketed)?,
        None => {
            let (host, port) = split_off(authority, ':');
            if !is_reg_name(host) {
                return Err(UrlError::InvalidHost);
            }
            (host.to_ascii_lowercase(), port)
        }
    };
    let port = match port {
        Some(text) => Some(parse_port_number(text).ok_or(UrlError::InvalidPort)?),
        None => None,
    };
    Ok((host, port))
}

/// Parses `::1]:8080` (the part after `[`) into `[::1]` and the text after `:`.
fn split_ipv6_authority(bracketed: &str) -> Result<(String, Option<&str>), UrlError> {
    let (address, after) = bracketed.split_once(']').ok_or(UrlError::InvalidHost)?;
    if address.parse::<Ipv6Addr>().is_err() {
        return Err(UrlError::InvalidHost);
    }
    let port = if after.is_empty() {
        None
    } else {
        Some(after.strip_prefix(':').ok_or(UrlError::InvalidHost)?)
    };
    Ok((format!("[{}]", address.to_ascii_lowercase()), port))
}

/// A DNS name or IPv4 address: ASCII letters, digits, `-`, `.`, `_`; not empty.
fn is_reg_name(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

fn is_printable_ascii(byte: u8) -> bool {
    (0x21..=0x7e).contains(&byte)
}
