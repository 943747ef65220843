//! Azure SignalR connection strings (`Endpoint=...;AccessKey=...;Version=1.0;`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use super::audience::Audience;
use super::quote;
use super::url::{parse_port_number, HttpUrl, UrlError};

/// Why a connection string was rejected.
///
/// Messages never quote the access key. They quote other values (a port, a version, an auth
/// type) shortened to at most 40 characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionStringError {
    /// An entry between two `;` has no `=`. The entry itself is not quoted, as it may hold
    /// the key.
    #[error("connection string entry #{index} is not a `Key=Value` pair")]
    MissingEquals {
        /// The entry's 1-based position, counting non-empty entries only.
        index: usize,
    },
    /// The same key (compared case-insensitively) appears twice.
    #[error("connection string key `{0}` appears more than once")]
    DuplicateKey(String),
    /// There is no (non-empty) `Endpoint`.
    #[error("connection string has no Endpoint")]
    MissingEndpoint,
    /// `Endpoint`, `ClientEndpoint` or `ServerEndpoint` is not an absolute http/https URL
    /// without query or fragment.
    #[error("connection string {key} is invalid: {source}")]
    InvalidUrl {
        /// Which key: `Endpoint`, `ClientEndpoint` or `ServerEndpoint`.
        key: &'static str,
        /// What is wrong with the URL.
        source: UrlError,
    },
    /// `Port` is not a number in 1..=65535.
    #[error("connection string Port `{0}` is invalid (expected 1-65535)")]
    InvalidPort(String),
    /// `Version` does not match `1.<digits>[suffix]`.
    #[error("connection string Version `{0}` is not supported (expected 1.x)")]
    InvalidVersion(String),
    /// There is no `AuthType` and no (non-empty) `AccessKey`.
    #[error("connection string has no AccessKey")]
    MissingAccessKey,
    /// `AuthType` is set (`aad`, `azure`, `azure.app`, `azure.msi` or anything else).
    #[error("unsupported AuthType `{0}`: this relay only supports AccessKey auth")]
    UnsupportedAuthType(String),
}

/// A parsed Azure SignalR connection string using AccessKey auth.
///
/// ```text
/// Endpoint=http://127.0.0.1:8080;AccessKey=<key>;Version=1.0;[Port=..;][ClientEndpoint=..;][ServerEndpoint=..;]
/// ```
///
/// Parsing rules (those of the Azure SignalR SDK):
/// - The string is split on `;`; entries that are empty or only whitespace are dropped.
/// - Each entry is split on its first `=`. Keys are trimmed and case-insensitive; values are
///   trimmed. A key given twice is an error. Unknown keys are ignored (and not kept).
/// - An entry whose value is empty counts as absent (but still as a duplicate).
/// - `Endpoint` (required): absolute http/https URL without query or fragment; trailing `/`
///   is trimmed.
/// - `AccessKey` (required): used as-is; its UTF-8 bytes are the HMAC key.
/// - `Version` (optional): `1.` then a digit, then ASCII letters, digits, `_`, `-` or `.`.
/// - `Port` (optional): 1..=65535, replaces the port of `Endpoint` (only of `Endpoint`).
/// - `ClientEndpoint` / `ServerEndpoint` (optional): like `Endpoint`.
/// - `AuthType` (any non-empty value): rejected, as only AccessKey auth is supported.
///
/// [`Display`](fmt::Display) renders a canonical connection string, **including the access
/// key**, such that parsing it gives back an equal value. [`Debug`](fmt::Debug) redacts the
/// key.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    endpoint: HttpUrl,
    access_key: String,
    version: Option<String>,
    port: Option<u16>,
    client_endpoint: Option<HttpUrl>,
    server_endpoint: Option<HttpUrl>,
}

impl ConnectionString {
    /// Parses a connection string; see the type's documentation for the rules.
    pub fn parse(input: &str) -> Result<Self, ConnectionStringError> {
        let entries = split_entries(input)?;
        let endpoint = parse_endpoint(&entries, "endpoint", "Endpoint")?
            .ok_or(ConnectionStringError::MissingEndpoint)?;
        if let Some(auth_type) = entries.get("authtype") {
            return Err(ConnectionStringError::UnsupportedAuthType(quote(auth_type)));
        }
        let access_key = entries
            .get("accesskey")
            .ok_or(ConnectionStringError::MissingAccessKey)?;
        let version = entries
            .get("version")
            .map(|v| parse_version(v))
            .transpose()?;
        let port = entries.get("port").map(|p| parse_port(p)).transpose()?;
        Ok(Self {
            endpoint,
            access_key: (*access_key).to_owned(),
            version,
            port,
            client_endpoint: parse_endpoint(&entries, "clientendpoint", "ClientEndpoint")?,
            server_endpoint: parse_endpoint(&entries, "serverendpoint", "ServerEndpoint")?,
        })
    }

    /// The `Endpoint` URL as written (trailing `/` trimmed), without `Port` applied.
    pub fn endpoint_url(&self) -> &HttpUrl {
        &self.endpoint
    }

    /// The access key. Its UTF-8 bytes are the HMAC key for tokens (it is not base64-decoded).
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The `Version` value, if given.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The `Port` value, if given.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The `ClientEndpoint` URL, if given.
    pub fn client_endpoint_url(&self) -> Option<&HttpUrl> {
        self.client_endpoint.as_ref()
    }

    /// The `ServerEndpoint` URL, if given.
    pub fn server_endpoint_url(&self) -> Option<&HttpUrl> {
        self.server_endpoint.as_ref()
    }

    /// `{scheme}://{host}:{port}` of `Endpoint`, with `Port` applied and the scheme's default
    /// port written out when none is given (the SDK's `ServiceEndpoint.Endpoint`).
    pub fn endpoint(&self) -> String {
        let port = self.port.unwrap_or_else(|| self.endpoint.port_or_default());
        format!(
            "{}://{}:{}",
            self.endpoint.scheme(),
            self.endpoint.host(),
            port
        )
    }

    /// Where app servers connect: `ServerEndpoint` if given, else `Endpoint` with `Port`
    /// applied; always ending in `/` (the server URL is this plus `server/?hub=...`).
    pub fn server_endpoint(&self) -> String {
        self.custom_or_default_base(self.server_endpoint.as_ref())
    }

    /// Where clients are redirected: `ClientEndpoint` if given, else `Endpoint` with `Port`
    /// applied; always ending in `/` (the client URL is this plus `client/?hub=...`).
    pub fn client_endpoint(&self) -> String {
        self.custom_or_default_base(self.client_endpoint.as_ref())
    }

    /// `{scheme}://{host}/` of `Endpoint`: the base of every token audience. It has **no
    /// port**, whatever `Endpoint` or `Port` say, as in the SDK.
    pub fn audience_base(&self) -> String {
        format!("{}://{}/", self.endpoint.scheme(), self.endpoint.host())
    }

    /// The audience of server-connection tokens: `{audience_base}server/?hub={hub}`, hub
    /// lowercased.
    pub fn server_audience(&self, hub: &str) -> Audience {
        self.audience("/server/", hub)
    }

    /// The audience of client tokens: `{audience_base}client/?hub={hub}`, hub lowercased.
    pub fn client_audience(&self, hub: &str) -> Audience {
        self.audience("/client/", hub)
    }

    /// The audience of client tokens for classic ASP.NET SignalR clients:
    /// `{endpoint}/aspnetclient?hub={hub}`: the one hub the app authorized the classic client for
    /// (it names its hub again in `connectionData`, and the relay checks the two agree).
    pub fn classic_client_audience(&self, hub: &str) -> Audience {
        Audience::new(
            self.endpoint.scheme(),
            self.endpoint.host(),
            "/aspnetclient",
            Some(hub),
        )
    }

    fn audience(&self, path: &str, hub: &str) -> Audience {
        Audience::new(
            self.endpoint.scheme(),
            self.endpoint.host(),
            path,
            Some(hub),
        )
    }

    fn custom_or_default_base(&self, custom: Option<&HttpUrl>) -> String {
        match custom {
            Some(url) => url.base_with_slash(url.port()),
            None => self
                .endpoint
                .base_with_slash(self.port.or(self.endpoint.port())),
        }
    }
}

impl FromStr for ConnectionString {
    type Err = ConnectionStringError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for ConnectionString {
    /// Renders `Endpoint=..;AccessKey=..;[Version=..;][Port=..;][ClientEndpoint=..;][ServerEndpoint=..;]`.
    /// The output contains the access key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Endpoint={};AccessKey={};",
            self.endpoint, self.access_key
        )?;
        if let Some(version) = &self.version {
            write!(f, "Version={version};")?;
        }
        if let Some(port) = self.port {
            write!(f, "Port={port};")?;
        }
        if let Some(url) = &self.client_endpoint {
            write!(f, "ClientEndpoint={url};")?;
        }
        if let Some(url) = &self.server_endpoint {
            write!(f, "ServerEndpoint={url};")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionString")
            .field("endpoint", &self.endpoint)
            .field("access_key", &"<redacted>")
            .field("version", &self.version)
            .field("port", &self.port)
            .field("client_endpoint", &self.client_endpoint)
            .field("server_endpoint", &self.server_endpoint)
            .finish()
    }
}

/// Splits into lowercase key → trimmed non-empty value, rejecting duplicates.
fn split_entries(input: &str) -> Result<BTreeMap<String, &str>, ConnectionStringError> {
    let mut entries = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let non_empty = input.split(';').filter(|entry| !entry.trim().is_empty());
    for (position, entry) in non_empty.enumerate() {
        let (key, value) = entry
            .split_once('=')
            .ok_or(ConnectionStringError::MissingEquals {
                index: position + 1,
            })?;
        let key = key.trim().to_lowercase();
        if !seen.insert(key.clone()) {
            return Err(ConnectionStringError::DuplicateKey(quote(&key)));
        }
        let value = value.trim();
        if !value.is_empty() {
            entries.insert(key, value);
        }
    }
    Ok(entries)
}

fn parse_endpoint(
    entries: &BTreeMap<String, &str>,
    key: &str,
    display_key: &'static str,
) -> Result<Option<HttpUrl>, ConnectionStringError> {
    let Some(value) = entries.get(key) else {
        return Ok(None);
    };
    HttpUrl::parse(value)
        .and_then(HttpUrl::require_no_query)
        .map(|url| Some(url.without_trailing_slash()))
        .map_err(|source| ConnectionStringError::InvalidUrl {
            key: display_key,
            source,
        })
}

fn parse_port(value: &str) -> Result<u16, ConnectionStringError> {
    parse_port_number(value).ok_or_else(|| ConnectionStringError::InvalidPort(quote(value)))
}

fn parse_version(value: &str) -> Result<String, ConnectionStringError> {
    if is_valid_version(value) {
        Ok(value.to_owned())
    } else {
        Err(ConnectionStringError::InvalidVersion(quote(value)))
    }
}

/// The SDK's `^1\.\d+(?:[\w-.]+)?$`, with `\d` and `\w` restricted to ASCII.
fn is_valid_version(value: &str) -> bool {
    let Some(rest) = value.strip_prefix("1.") else {
        return false;
    };
    let mut chars = rest.chars();
    chars.next().is_some_and(|c| c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}
