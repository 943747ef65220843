//! A serverless backend's side: the data-plane REST API as async methods (the Management
//! SDK's transient mode, version 2022-06-01), and the negotiate answer that sends a client to
//! the relay with a token this backend mints. Works against a relay and against Azure SignalR
//! Service alike, on any runtime.
//!
//! ```no_run
//! # async fn demo<R: signalr_relay_tokio::Runtime>(runtime: R) -> Result<(), Box<dyn std::error::Error>> {
//! use signalr_relay_tokio::sdk::management::{ServiceClient, ServiceOptions};
//! let service = ServiceClient::new(
//!     runtime,
//!     "Endpoint=http://127.0.0.1:8080;AccessKey=<key>;Version=1.0;",
//!     ServiceOptions::default(),
//! )?;
//! let chat = service.hub("chat");
//! chat.send_to_all("newMessage", &("alice", "hello"), &[]).await?;
//! chat.add_user_to_group("alice", "admins", None).await?;
//! assert!(chat.user_exists("alice").await?);
//! let redirect = chat.negotiate(Some("bob"), &[]); // {url, accessToken}, for a client
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use signalr_relay_core::aspnetcore::negotiate::NegotiateResponse;
use signalr_relay_core::auth::{
    percent_encode as escape, sign, Algorithm, Claims, ConnectionString,
};

use super::codec::invocation_payloads;
use super::SetupError;
use crate::glue::client::Call;
use crate::glue::tls::{client_config, rustls::ClientConfig};
use crate::glue::Runtime;

/// How sends carry their message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyEncoding {
    /// `{"Target", "Arguments"}` in JSON; the service encodes it for each client's protocol.
    #[default]
    Json,
    /// `application/octet-stream`: a MessagePack map of the whole frame for each protocol
    /// (`json`, `messagepack`), as the Management SDK sends when MessagePack is on; arguments
    /// keep their MessagePack types.
    Binary,
}

/// Settings of a [`ServiceClient`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServiceOptions {
    /// The `application` prefix of every hub, as the SDK's `ApplicationName` (default none).
    pub application: Option<String>,
    /// How sends carry their message (default JSON).
    pub encoding: BodyEncoding,
    /// How long a call may take (default 100 s, the Management SDK's).
    pub timeout: Duration,
    /// Lifetime of the client tokens [`HubClient::negotiate`] mints (default 1 h).
    pub client_token_lifetime: Duration,
    /// PEM certificates to trust besides the platform's roots, for an `https` endpoint.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            application: None,
            encoding: BodyEncoding::Json,
            timeout: Duration::from_secs(100),
            client_token_lifetime: Duration::from_secs(3600),
            ca_file: None,
        }
    }
}

/// Why a REST call failed.
#[derive(Debug)]
pub enum RestError {
    /// No answer: the connection failed, or the call took too long.
    NoAnswer(String),
    /// The service answered with an error status: the status, its `x-ms-error-code`, and
    /// the body.
    Status {
        /// The HTTP status.
        status: u16,
        /// The `x-ms-error-code` header, if any.
        code: Option<String>,
        /// The body, as text.
        message: String,
    },
    /// The message's arguments cannot be serialized.
    Encode(String),
}

impl std::fmt::Display for RestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoAnswer(why) => write!(f, "no answer: {why}"),
            Self::Status {
                status,
                code,
                message,
            } => write!(
                f,
                "{status} {}: {message}",
                code.as_deref().unwrap_or("(no error code)")
            ),
            Self::Encode(why) => write!(f, "cannot encode the message: {why}"),
        }
    }
}

impl std::error::Error for RestError {}

/// A client of one service's REST API (one connection string). Cheap to clone.
#[derive(Clone)]
pub struct ServiceClient<R> {
    runtime: R,
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: ConnectionString,
    options: ServiceOptions,
    tls: Option<Arc<ClientConfig>>,
}

impl<R: Runtime> ServiceClient<R> {
    /// A client for the service `connection_string` names.
    ///
    /// # Errors
    /// When the connection string is invalid, or its endpoint is `https` and the CA file
    /// cannot be read.
    pub fn new(
        runtime: R,
        connection_string: &str,
        options: ServiceOptions,
    ) -> Result<Self, SetupError> {
        let endpoint = ConnectionString::parse(connection_string)?;
        let tls = if endpoint.server_endpoint().starts_with("https:") {
            Some(client_config(options.ca_file.as_deref()).map_err(SetupError::Tls)?)
        } else {
            None
        };
        Ok(Self {
            runtime,
            inner: Arc::new(Inner {
                endpoint,
                options,
                tls,
            }),
        })
    }

    /// The REST API of `hub`.
    pub fn hub(&self, hub: &str) -> HubClient<'_, R> {
        HubClient {
            service: self,
            hub: hub.to_ascii_lowercase(),
        }
    }

    /// Whether the service answers its health check.
    ///
    /// # Errors
    /// When it does not answer.
    pub async fn is_healthy(&self) -> Result<bool, RestError> {
        let url = format!(
            "{}api/health?api-version=2022-06-01",
            self.inner.endpoint.server_endpoint()
        );
        let call = Call {
            method: "HEAD",
            url: &url,
            headers: &[],
            body: Bytes::new(),
            max_response: 0,
        };
        let answer = call
            .send(&self.runtime, self.inner.tls.as_ref())
            .await
            .map_err(|e| RestError::NoAnswer(e.to_string()))?;
        Ok(answer.status == 200)
    }
}

/// The REST API of one hub.
pub struct HubClient<'a, R> {
    service: &'a ServiceClient<R>,
    hub: String,
}

/// What a call expects of a miss: a 404 with this code means "no", not an error.
type Miss = Option<&'static str>;

impl<R: Runtime> HubClient<'_, R> {
    /// The negotiate answer for a client of this hub: the relay's client URL and a token
    /// minted with the access key, for `user` (as `asrs.s.uid` and `nameid`) with `claims`.
    pub fn negotiate(&self, user: Option<&str>, claims: &[(&str, &str)]) -> NegotiateResponse {
        let cs = &self.service.inner.endpoint;
        let hub = self.key();
        let now = unix_now();
        let lifetime = self.service.inner.options.client_token_lifetime.as_secs();
        let mut token = Claims::issued_at(now, lifetime);
        token.aud.push(cs.client_audience(&hub).to_string());
        token.insert("jti", super::hub::random_id().as_str());
        if let Some(user) = user {
            token.nameid = Some(user.to_owned());
            token.insert("asrs.s.uid", user);
        }
        for (k, v) in claims {
            token.insert(*k, *v);
        }
        NegotiateResponse::Redirect {
            url: format!("{}client/?hub={hub}", cs.client_endpoint()),
            access_token: Some(sign(&token, cs.access_key().as_bytes(), Algorithm::Hs256)),
        }
    }

    /// Sends `target(args…)` to every client of the hub but `excluded`.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn send_to_all<A: Serialize + ?Sized>(
        &self,
        target: &str,
        args: &A,
        excluded: &[&str],
    ) -> Result<(), RestError> {
        self.send(":send", target, args, excluded).await
    }

    /// Sends `target(args…)` to every connection of `user`.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn send_to_user<A: Serialize + ?Sized>(
        &self,
        user: &str,
        target: &str,
        args: &A,
    ) -> Result<(), RestError> {
        let path = format!("users/{}/:send", escape(user));
        self.send(&path, target, args, &[]).await
    }

    /// Sends `target(args…)` to one connection.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn send_to_connection<A: Serialize + ?Sized>(
        &self,
        connection_id: &str,
        target: &str,
        args: &A,
    ) -> Result<(), RestError> {
        let path = format!("connections/{}/:send", escape(connection_id));
        self.send(&path, target, args, &[]).await
    }

    /// Sends `target(args…)` to the connections in `group` but `excluded`.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn send_to_group<A: Serialize + ?Sized>(
        &self,
        group: &str,
        target: &str,
        args: &A,
        excluded: &[&str],
    ) -> Result<(), RestError> {
        let path = format!("groups/{}/:send", escape(group));
        self.send(&path, target, args, excluded).await
    }

    /// Puts a connection in a group: `false` when the connection does not exist.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn add_to_group(&self, connection_id: &str, group: &str) -> Result<bool, RestError> {
        let path = format!(
            "groups/{}/connections/{}",
            escape(group),
            escape(connection_id)
        );
        self.call("PUT", &path, &[], Some("Error.Connection.NotExisted"))
            .await
    }

    /// Takes a connection out of a group.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn remove_from_group(
        &self,
        connection_id: &str,
        group: &str,
    ) -> Result<(), RestError> {
        let path = format!(
            "groups/{}/connections/{}",
            escape(group),
            escape(connection_id)
        );
        self.call("DELETE", &path, &[], None).await.map(drop)
    }

    /// Takes a connection out of every group.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn remove_from_all_groups(&self, connection_id: &str) -> Result<(), RestError> {
        let path = format!("connections/{}/groups", escape(connection_id));
        self.call("DELETE", &path, &[], None).await.map(drop)
    }

    /// Puts `user` in `group`, for `ttl` if given (else for as long as the service keeps
    /// memberships): their connections now, and those to come.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn add_user_to_group(
        &self,
        user: &str,
        group: &str,
        ttl: Option<Duration>,
    ) -> Result<(), RestError> {
        let path = format!("users/{}/groups/{}", escape(user), escape(group));
        let ttl = ttl.map(|t| ("ttl", t.as_secs().to_string()));
        let query: Vec<(&str, String)> = ttl.into_iter().collect();
        self.call("PUT", &path, &query, None).await.map(drop)
    }

    /// Takes `user` out of `group`.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn remove_user_from_group(&self, user: &str, group: &str) -> Result<(), RestError> {
        let path = format!("users/{}/groups/{}", escape(user), escape(group));
        self.call("DELETE", &path, &[], None).await.map(drop)
    }

    /// Takes `user` out of every group.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn remove_user_from_all_groups(&self, user: &str) -> Result<(), RestError> {
        let path = format!("users/{}/groups", escape(user));
        self.call("DELETE", &path, &[], None).await.map(drop)
    }

    /// Closes a connection, telling the client `reason`: `false` when it does not exist.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn close_connection(
        &self,
        connection_id: &str,
        reason: Option<&str>,
    ) -> Result<bool, RestError> {
        let path = format!("connections/{}", escape(connection_id));
        let query: Vec<(&str, String)> = reason
            .map(|r| ("reason", r.to_owned()))
            .into_iter()
            .collect();
        self.call(
            "DELETE",
            &path,
            &query,
            Some("Warning.Connection.NotExisted"),
        )
        .await
    }

    /// Closes every connection of the hub (`None`), of a user or of a group, but `excluded`.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn close_connections(
        &self,
        of: Option<Of<'_>>,
        excluded: &[&str],
        reason: Option<&str>,
    ) -> Result<(), RestError> {
        let path = match of {
            None => ":closeConnections".to_owned(),
            Some(Of::User(u)) => format!("users/{}/:closeConnections", escape(u)),
            Some(Of::Group(g)) => format!("groups/{}/:closeConnections", escape(g)),
        };
        let mut query: Vec<(&str, String)> = excluded
            .iter()
            .map(|e| ("excluded", (*e).to_owned()))
            .collect();
        query.extend(reason.map(|r| ("reason", r.to_owned())));
        self.call("POST", &path, &query, None).await.map(drop)
    }

    /// Whether the connection exists.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn connection_exists(&self, connection_id: &str) -> Result<bool, RestError> {
        let path = format!("connections/{}", escape(connection_id));
        self.call("HEAD", &path, &[], Some("Warning.Connection.NotExisted"))
            .await
    }

    /// Whether `user` has a connection.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn user_exists(&self, user: &str) -> Result<bool, RestError> {
        let path = format!("users/{}", escape(user));
        self.call("HEAD", &path, &[], Some("Warning.User.NotExisted"))
            .await
    }

    /// Whether `group` has a connection.
    ///
    /// # Errors
    /// When the call fails.
    pub async fn group_exists(&self, group: &str) -> Result<bool, RestError> {
        let path = format!("groups/{}", escape(group));
        self.call("HEAD", &path, &[], Some("Warning.Group.NotExisted"))
            .await
    }

    /// Whether `user` is in `group` (GET, as the Management SDK asks).
    ///
    /// # Errors
    /// When the call fails.
    pub async fn user_in_group(&self, user: &str, group: &str) -> Result<bool, RestError> {
        let path = format!("users/{}/groups/{}", escape(user), escape(group));
        self.call("GET", &path, &[], Some("Info.User.NotInGroup"))
            .await
    }

    fn key(&self) -> String {
        match &self.service.inner.options.application {
            Some(app) => format!("{}_{}", app.to_ascii_lowercase(), self.hub),
            None => self.hub.clone(),
        }
    }

    async fn send<A: Serialize + ?Sized>(
        &self,
        path: &str,
        target: &str,
        args: &A,
        excluded: &[&str],
    ) -> Result<(), RestError> {
        let (content_type, body) = match self.service.inner.options.encoding {
            BodyEncoding::Json => {
                let body = serde_json::json!({
                    "Target": target,
                    "Arguments": serde_json::to_value(args).map_err(|e| RestError::Encode(e.to_string()))?,
                });
                ("application/json", Bytes::from(body.to_string()))
            }
            BodyEncoding::Binary => {
                let payloads = invocation_payloads(target, args)
                    .map_err(|e| RestError::Encode(e.to_string()))?;
                let mut body = Vec::new();
                let _ = rmp::encode::write_map_len(&mut body, payloads.0.len() as u32);
                for (name, frame) in &payloads.0 {
                    let _ = rmp::encode::write_str(&mut body, name);
                    let _ = rmp::encode::write_bin(&mut body, frame);
                }
                ("application/octet-stream", Bytes::from(body))
            }
        };
        let query: Vec<(&str, String)> = excluded
            .iter()
            .map(|e| ("excluded", (*e).to_owned()))
            .collect();
        self.request("POST", path, &query, Some((content_type, body)), None)
            .await
            .map(drop)
    }

    async fn call(
        &self,
        method: &'static str,
        path: &str,
        query: &[(&str, String)],
        miss: Miss,
    ) -> Result<bool, RestError> {
        self.request(method, path, query, None, miss).await
    }

    /// One call: `Ok(true)` for a 2xx, `Ok(false)` for the 404 `miss` names.
    async fn request(
        &self,
        method: &'static str,
        path: &str,
        query: &[(&str, String)],
        body: Option<(&'static str, Bytes)>,
        miss: Miss,
    ) -> Result<bool, RestError> {
        let inner = &self.service.inner;
        let cs = &inner.endpoint;
        let hub = escape(&self.hub);
        let mut signed_query = String::from("api-version=2022-06-01");
        if let Some(app) = &inner.options.application {
            signed_query.push_str("&application=");
            signed_query.push_str(&escape(app));
        }
        let path = format!("api/hubs/{hub}/{path}");
        // The audience is the URL without its port, with the api-version (and application);
        // what follows is added after signing, as the Management SDK does.
        let mut claims = Claims::issued_at(unix_now(), 3600);
        claims
            .aud
            .push(format!("{}{path}?{signed_query}", cs.audience_base()));
        let token = sign(&claims, cs.access_key().as_bytes(), Algorithm::Hs256);
        let mut url = format!("{}{path}?{signed_query}", cs.server_endpoint());
        for (k, v) in query {
            url.push('&');
            url.push_str(k);
            url.push('=');
            url.push_str(&escape(v));
        }
        let mut headers = vec![
            ("authorization", format!("Bearer {token}")),
            (
                "asrs-user-agent",
                format!("signalr-relay-sdk/{}", env!("CARGO_PKG_VERSION")),
            ),
        ];
        let body = match body {
            Some((content_type, body)) => {
                headers.push(("content-type", content_type.to_owned()));
                body
            }
            None => Bytes::new(),
        };
        let call = Call {
            method,
            url: &url,
            headers: &headers,
            body,
            max_response: 64 * 1024,
        };
        let runtime = &self.service.runtime;
        let deadline = runtime.sleep_until(runtime.now() + inner.options.timeout);
        let sent = Box::pin(call.send(runtime, inner.tls.as_ref()));
        let answer = match futures_util::future::select(sent, deadline).await {
            futures_util::future::Either::Left((answer, _)) => {
                answer.map_err(|e| RestError::NoAnswer(e.to_string()))?
            }
            futures_util::future::Either::Right(_) => {
                return Err(RestError::NoAnswer("no answer in time".to_owned()))
            }
        };
        match answer.status {
            200..=299 => Ok(true),
            404 if miss.is_some() && answer.error_code.as_deref() == miss => Ok(false),
            status => Err(RestError::Status {
                status,
                code: answer.error_code,
                message: String::from_utf8_lossy(&answer.body).into_owned(),
            }),
        }
    }
}

/// Whose connections [`HubClient::close_connections`] closes.
#[derive(Debug, Clone, Copy)]
pub enum Of<'a> {
    /// A user's.
    User(&'a str),
    /// A group's.
    Group(&'a str),
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
