//! The sample app's hubs: `testhub` (the methods of ASP.NET Core's client functional-test
//! hub), `authorizedhub`, `chat` and `bench`, and its HTTP endpoints. Shared by the
//! `sample-app` and `demo` binaries of every runtime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use signalr_relay_core::auth::{sign, verify, Algorithm, Claims, Validation};
use signalr_relay_core::relay::{HttpRequest, HttpResponse};

use crate::sdk::{AppServer, Context, Hub, HubBuilder, HubError};

/// The `CustomObject` of the functional tests.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CustomObject {
    /// `Name`.
    #[serde(rename = "Name", alias = "name")]
    pub name: String,
    /// `Value`.
    #[serde(rename = "Value", alias = "value")]
    pub value: i64,
}

fn unexpected(method: &str, message: &str) -> HubError {
    unexpected_kind(method, "InvalidOperationException", message)
}

/// The error text ASP.NET Core gives a caller, with detailed errors on, when a hub method
/// throws an exception of `kind`.
fn unexpected_kind(method: &str, kind: &str, message: &str) -> HubError {
    HubError::new(format!(
        "An unexpected error occurred invoking '{method}' on the server. {kind}: {message}"
    ))
}

/// The GUID of the functional tests' complex object.
const COMPLEX_GUID: &str = "00010203-0405-0607-0706-050403020100";

/// The functional-test hub.
pub fn test_hub() -> Hub {
    HubBuilder::new("testhub")
        .method("Echo", |_ctx: Context, (message,): (String,)| async move {
            Ok(message)
        })
        .method("GetCallerConnectionId", |ctx: Context, ()| async move {
            Ok(ctx.connection_id().to_owned())
        })
        .method(
            "ThrowException",
            |_ctx: Context, (message,): (String,)| async move {
                Err::<(), _>(unexpected("ThrowException", &message))
            },
        )
        .method(
            "InvokeWithString",
            |ctx: Context, (message,): (String,)| async move {
                ctx.clients()
                    .client(ctx.connection_id())
                    .send("Message", &(message,))
            },
        )
        .method(
            "SendCustomObject",
            |ctx: Context, (object,): (CustomObject,)| async move {
                ctx.clients()
                    .client(ctx.connection_id())
                    .send("CustomObject", &(object,))
            },
        )
        .stream("Stream", |_ctx: Context, ()| {
            Ok(stream::iter(["a", "b", "c"].map(Ok)))
        })
        .stream("InfiniteStream", |ctx: Context, ()| {
            // Never yields; when the caller cancels, the stream is dropped and the guard
            // tells the caller.
            let guard = CancelNotice(ctx);
            Ok(
                stream::pending::<Result<String, HubError>>().map(move |item| {
                    let _ = &guard;
                    item
                }),
            )
        })
        .upload("StreamingConcat", |_ctx: Context, (), items| async move {
            let parts: Vec<Result<String, HubError>> = items.collect().await;
            // A client that ends its stream with an error fails the method, as the
            // HubException ASP.NET Core's stream reader throws.
            parts
                .into_iter()
                .collect::<Result<String, HubError>>()
                .map_err(|e| unexpected_kind("StreamingConcat", "HubException", e.message()))
        })
        .stream("EmptyStream", |_ctx: Context, ()| {
            Ok(stream::empty::<Result<i32, HubError>>())
        })
        .stream(
            "StreamThrowException",
            |_ctx: Context, (message,): (String,)| {
                Err::<stream::Empty<Result<i32, HubError>>, _>(unexpected(
                    "StreamThrowException",
                    &message,
                ))
            },
        )
        .method("GetActiveTransportName", |ctx: Context, ()| async move {
            Ok(ctx.transport().to_owned())
        })
        .method_raw("EchoComplexObject", |_ctx: Context, mut args| async move {
            if args.len() != 1 {
                return Err(HubError::new("EchoComplexObject takes one argument."));
            }
            Ok(args.pop())
        })
        .method_raw("SendComplexObject", |ctx: Context, _args| async move {
            // The functional tests' object, written as ASP.NET Core writes it: JSON with the
            // .NET names, base64 bytes and an ISO date; MessagePack with bin bytes and a
            // timestamp (2000-01-01T00:00:00Z).
            let bytes: Vec<u8> = if ctx.protocol().is_binary() {
                let mut m = vec![0x85, 0xa9];
                m.extend_from_slice(b"ByteArray");
                m.extend_from_slice(&[0xc4, 3, 1, 2, 3, 0xa8]);
                m.extend_from_slice(b"DateTime");
                m.extend_from_slice(&[0xd6, 0xff, 0x38, 0x6d, 0x43, 0x80, 0xa4]);
                m.extend_from_slice(b"Guid");
                m.extend_from_slice(&[0xd9, 36]);
                m.extend_from_slice(COMPLEX_GUID.as_bytes());
                m.push(0xa8);
                m.extend_from_slice(b"IntArray");
                m.extend_from_slice(&[0x93, 1, 2, 3, 0xa6]);
                m.extend_from_slice(b"String");
                m.push(0xab);
                m.extend_from_slice(b"hello world");
                m
            } else {
                format!(
                    "{{\"ByteArray\":\"AQID\",\"DateTime\":\"2000-01-01T00:00:00Z\",\"Guid\":\"{COMPLEX_GUID}\",\"IntArray\":[1,2,3],\"String\":\"hello world\"}}"
                )
                .into_bytes()
            };
            Ok(Some(signalr_relay_core::aspnetcore::RawValue::new(bytes)))
        })
        .method("GetContentTypeHeader", |ctx: Context, ()| async move {
            Ok(ctx.header("Content-Type").map(str::to_owned))
        })
        .method("GetHeader", |ctx: Context, (name,): (String,)| async move {
            Ok(ctx.header(&name).map(str::to_owned))
        })
        .method("GetCookie", |ctx: Context, (name,): (String,)| async move {
            Ok(ctx.header("Cookie").and_then(|cookies| {
                cookies.split(';').find_map(|c| {
                    let (k, v) = c.trim().split_once('=')?;
                    (k == name).then(|| v.to_owned())
                })
            }))
        })
        .method("GetQueryString", |ctx: Context, ()| async move {
            Ok(ctx.query_string().to_owned())
        })
        .method("GetClientAddress", |ctx: Context, ()| async move {
            Ok(ctx.client_address().map(|a| a.to_string()))
        })
        .method("GetServerId", |ctx: Context, ()| async move {
            Ok(ctx.server_id().to_owned())
        })
        .method("GetNumRedirects", |ctx: Context, ()| async move {
            ctx.query("numRedirects")
                .and_then(|n| n.parse::<i64>().ok())
                .ok_or_else(|| HubError::new("no numRedirects"))
        })
        .build()
}

/// Sends "StreamCanceled" to the caller when dropped (InfiniteStream's cancellation).
struct CancelNotice(Context);

impl Drop for CancelNotice {
    fn drop(&mut self) {
        let _ = self.0.clients().caller().send("StreamCanceled", &());
    }
}

/// The chat hub.
/// The messaging methods `chat` and `bench` share: echo, broadcast, groups, direct messages.
fn with_messaging(hub: HubBuilder) -> HubBuilder {
    hub.method(
        "Echo",
        |_ctx: Context, (msg,): (serde_json::Value,)| async move { Ok(msg) },
    )
    .method(
        "EchoToCaller",
        |ctx: Context, (msg,): (serde_json::Value,)| async move {
            ctx.clients().caller().send("echo", &(msg,))
        },
    )
    .method(
        "Broadcast",
        |ctx: Context, (msg,): (serde_json::Value,)| async move {
            ctx.clients().all().send("broadcast", &(msg,))
        },
    )
    .method(
        "BroadcastOthers",
        |ctx: Context, (msg,): (serde_json::Value,)| async move {
            ctx.clients().others().send("broadcast", &(msg,))
        },
    )
    .method(
        "JoinGroup",
        |ctx: Context, (group,): (String,)| async move {
            let joined = ctx.groups().add(ctx.connection_id(), &group).await?;
            if joined {
                Ok(())
            } else {
                // The relay refuses a join past its limits (groups per connection, name
                // length).
                Err(HubError::new(format!("Could not join group '{group}'.")))
            }
        },
    )
    .method(
        "LeaveGroup",
        |ctx: Context, (group,): (String,)| async move {
            ctx.groups()
                .remove(ctx.connection_id(), &group)
                .await
                .map(|_| ())
        },
    )
    .method(
        "SendToGroup",
        |ctx: Context, (group, msg): (String, serde_json::Value)| async move {
            ctx.clients()
                .group(&group)
                .send("groupMessage", &(group.as_str(), msg))
        },
    )
    .method(
        "SendToConnection",
        |ctx: Context, (id, msg): (String, serde_json::Value)| async move {
            ctx.clients().client(&id).send("directMessage", &(msg,))
        },
    )
    .method("GetConnectionId", |ctx: Context, ()| async move {
        Ok(ctx.connection_id().to_owned())
    })
}

pub fn chat_hub() -> Hub {
    with_messaging(HubBuilder::new("chat"))
        .method(
            "SendToGroupExceptCaller",
            |ctx: Context, (group, msg): (String, serde_json::Value)| async move {
                ctx.clients()
                    .others_in_group(&group)
                    .send("groupMessage", &(group.as_str(), msg))
            },
        )
        .method(
            "SendToUser",
            |ctx: Context, (user, msg): (String, serde_json::Value)| async move {
                ctx.clients().user(&user).send("userMessage", &(msg,))
            },
        )
        .on_connected(|ctx: Context| async move {
            let _ = ctx
                .clients()
                .caller()
                .send("welcome", &(ctx.connection_id(),));
        })
        .on_disconnected(|ctx: Context| async move {
            let _ = ctx.clients().all().send("left", &(ctx.connection_id(),));
        })
        .method("GetUserId", |ctx: Context, ()| async move {
            Ok(ctx.user_id().map(str::to_owned))
        })
        .method(
            "AskCaller",
            |ctx: Context, (question,): (String,)| async move {
                // A client result: the caller's "GetAnswer" handler returns the answer.
                let answer: String = ctx
                    .clients()
                    .caller()
                    .invoke("GetAnswer", &(question,))
                    .await?;
                Ok(answer)
            },
        )
        .method(
            "AskClient",
            |ctx: Context, (id, question): (String, String)| async move {
                let answer: String = ctx
                    .clients()
                    .client(&id)
                    .invoke("GetAnswer", &(question,))
                    .await?;
                Ok(answer)
            },
        )
        .method("CloseMe", |ctx: Context, ()| async move {
            ctx.abort();
            Ok(())
        })
        .method("Fail", |_: Context, (message,): (String,)| async move {
            Err::<(), _>(HubError::new(message))
        })
        .method(
            "FailWithData",
            |_: Context, (message, data): (String, serde_json::Value)| async move {
                // Classic clients get the data as their error's `data`.
                Err::<(), _>(HubError::new(message).with_data(data))
            },
        )
        .method("Count", |ctx: Context, (n,): (u32,)| async move {
            // Progress reaches classic clients (`.progress()`); other clients get the result.
            for i in 1..=n.min(1000) {
                ctx.progress(&i)?;
            }
            Ok(n)
        })
        .method("Greet", |ctx: Context, ()| async move {
            // Classic clients' hub state: read `name`, set `greeted`.
            let name = ctx
                .state("name")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "stranger".to_owned());
            ctx.set_state("greeted", serde_json::Value::Bool(true));
            Ok(format!("hello {name}"))
        })
        .build()
}

/// The hub the load generator drives (`tests/src/bin/loadgen`): the chat hub's fan-out
/// methods, without its greetings, so that connecting and leaving cost no broadcasts.
pub fn bench_hub() -> Hub {
    with_messaging(HubBuilder::new("bench")).build()
}

/// The sample hubs: `testhub`, `chat`, `bench` and `authorizedhub`.
pub fn hubs() -> Vec<Hub> {
    vec![test_hub(), chat_hub(), bench_hub(), authorized_hub()]
}

/// The hub `/authorizedhub` negotiates for: `Echo`, for users who show a token from
/// `/generateJwtToken` (ASP.NET Core's functional-test `HubWithAuthorization`).
pub fn authorized_hub() -> Hub {
    HubBuilder::new(AUTHORIZED_HUB)
        .on_connected(|ctx: Context| async move {
            // Only clients its negotiate authorized (as ASP.NET Core's `[Authorize]`).
            if !ctx
                .claims()
                .iter()
                .any(|(k, v)| k == AUTHORIZED_CLAIM && v == "true")
            {
                ctx.abort();
            }
        })
        .method("Echo", |_ctx: Context, (message,): (String,)| async move {
            Ok(message)
        })
        .build()
}

/// The sample app's HTTP endpoints (the `user` query parameter stands in for real
/// authentication, except at `/authorizedhub`):
/// - `POST /<hub>/negotiate?user=<id>`: the ASP.NET Core redirect to the relay. The
///   negotiate request's own query goes on to the hub (`GetQueryString`).
/// - `POST /authorizedhub/negotiate`: the same for the `authorizedhub` hub, only with a bearer
///   token from `GET /generateJwtToken` (valid 5 s, user `testuser`); 401 otherwise.
/// - `POST /testhub-nowebsockets/negotiate`: `testhub`, without WebSockets.
/// - `POST /redirect/negotiate?baseUrl=<url>`: a redirect to `<url>/testHub` counting the
///   redirects (`GetNumRedirects`), as ASP.NET Core's functional-test server has it.
/// - `GET /clientresult/<connection id>`: asks that `testhub` client for a result (its
///   `Result` handler) from outside a hub method, and answers it as text, or the error.
/// - `GET /signalr/negotiate?connectionData=[{"name":"<hub>"}]&user=<id>`: the classic
///   ASP.NET SignalR redirect, at the classic clients' default URL `/signalr`.
/// - `GET /signalr/ping`: the classic clients' keep-alive ping.
pub fn http_handler(
    app: AppServer,
) -> impl Fn(HttpRequest) -> crate::BoxFuture<HttpResponse> + Send + Sync + 'static {
    let endpoints = Endpoints {
        app,
        token_key: Arc::new(random_key()),
        redirects: Arc::new(AtomicU64::new(0)),
    };
    move |req| {
        let endpoints = endpoints.clone();
        Box::pin(async move { endpoints.handle(req).await })
    }
}

/// What the sample app's endpoints share.
#[derive(Clone)]
struct Endpoints {
    app: AppServer,
    /// Signs and checks the tokens of `/generateJwtToken` (new each run).
    token_key: Arc<[u8; 32]>,
    /// Redirects `/redirect` gave.
    redirects: Arc<AtomicU64>,
}

/// How long a `/generateJwtToken` token is valid, as in ASP.NET Core's functional tests.
const TEST_TOKEN_LIFETIME_SECS: u64 = 5;

/// The hub only `/authorizedhub/negotiate` negotiates for, and the claim it gives those
/// clients, which the hub checks.
const AUTHORIZED_HUB: &str = "authorizedhub";
const AUTHORIZED_CLAIM: &str = "sample.authorized";

impl Endpoints {
    async fn handle(&self, req: HttpRequest) -> HttpResponse {
        let path = req.path.trim_end_matches('/');
        if let Some(response) = classic_endpoint(&self.app, &req, path) {
            return response;
        }
        if let Some(id) = path.strip_prefix("/clientresult/") {
            return self.client_result(id).await;
        }
        if path == "/generateJwtToken" {
            return HttpResponse::text(200, self.test_token());
        }
        let Some(hub) = path
            .strip_suffix("/negotiate")
            .map(|h| h.trim_start_matches('/').to_ascii_lowercase())
        else {
            return HttpResponse::text(404, "Not found: negotiate at /<hub>/negotiate");
        };
        if req.method != "POST" && req.method != "GET" {
            return HttpResponse::text(405, "Use POST.");
        }
        let param = |name: &str| {
            form_urlencoded::parse(req.query.as_bytes())
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let mut user = param("user");
        // As ASP.NET Core's functional-test server maps it: testhub without WebSockets (the
        // token allows Server-Sent Events and long polling: `asrs.s.htt` = 2 | 4).
        let (hub, claims): (&str, &[(&str, &str)]) = match hub.as_str() {
            "testhub-nowebsockets" => ("testhub", &[("asrs.s.htt", "6")]),
            "redirect" => {
                let n = self.redirects.fetch_add(1, Ordering::Relaxed) + 1;
                let base = param("baseUrl").unwrap_or_default();
                let url = format!("{base}/testHub?numRedirects={n}");
                return HttpResponse::json(
                    serde_json::json!({ "url": url }).to_string().into_bytes(),
                );
            }
            AUTHORIZED_HUB => match self.authorized_user(&req) {
                Some(name) => {
                    user = Some(name);
                    (AUTHORIZED_HUB, &[(AUTHORIZED_CLAIM, "true")])
                }
                None => return HttpResponse::text(401, ""),
            },
            hub => (hub, &[]),
        };
        if let Some(why) = not_connected(&self.app, hub) {
            return HttpResponse::text(503, why);
        }
        let response = self
            .app
            .negotiate_with_query(hub, &req.query, user.as_deref(), claims);
        HttpResponse::json(response.to_json())
    }

    /// `GET /clientresult/<id>`: the `testhub` client's `Result`, or the error's text (the
    /// client's own error as it sent it).
    async fn client_result(&self, connection_id: &str) -> HttpResponse {
        let Some(hub) = self.app.hub_context("testhub") else {
            return HttpResponse::text(404, "no testhub");
        };
        let result = hub
            .clients()
            .client(connection_id)
            .invoke::<_, i64>("Result", &())
            .await;
        HttpResponse::text(
            200,
            match result {
                Ok(n) => n.to_string(),
                Err(crate::sdk::InvokeError::Client(message)) => message,
                Err(e) => e.to_string(),
            },
        )
    }

    /// A token for user `testuser`, as `/generateJwtToken` gives it.
    fn test_token(&self) -> String {
        let mut claims = Claims::issued_at(unix_now(), TEST_TOKEN_LIFETIME_SECS);
        claims.nameid = Some("testuser".to_owned());
        claims.insert("iss", "SignalRTestServer");
        claims.aud.push("SignalRTests".to_owned());
        sign(&claims, &self.token_key[..], Algorithm::Hs256)
    }

    /// The user of a valid `/generateJwtToken` token in the request (`Authorization: Bearer`,
    /// else `access_token`).
    fn authorized_user(&self, req: &HttpRequest) -> Option<String> {
        let bearer = req.headers.get("authorization").and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
        let token = bearer.or_else(|| {
            form_urlencoded::parse(req.query.as_bytes())
                .find(|(k, _)| k == "access_token")
                .map(|(_, v)| v.into_owned())
        })?;
        let validation = Validation::new().with_leeway_secs(0);
        verify(&token, &[&self.token_key[..]], unix_now(), &validation)
            .ok()?
            .nameid
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 32 bytes from the OS: the sample's test-token key.
fn random_key() -> [u8; 32] {
    crate::glue::random_bytes("the sample's test tokens would be forgeable")
}

/// Why a negotiate for `hub` is refused, if it is one of this app server's hubs and the app
/// server has no connection to the relay for it: as the Azure SDK, no client is sent to a
/// relay that cannot reach its app server.
fn not_connected(app: &AppServer, hub: &str) -> Option<String> {
    (app.hub_context(hub).is_some() && app.connected(hub) == 0).then(|| {
        format!(
            "The app server is not connected to the relay for hub '{hub}' yet; try again shortly."
        )
    })
}

/// The classic endpoints under `/signalr`, or `None` for another path.
fn classic_endpoint(app: &AppServer, req: &HttpRequest, path: &str) -> Option<HttpResponse> {
    use signalr_relay_core::classic::{
        ErrorResponse, Limits, NegotiateReply, RequestKind, RequestParams, PING_RESPONSE,
    };
    let kind = match path {
        "/signalr/negotiate" => RequestKind::Negotiate,
        "/signalr/ping" => RequestKind::Ping,
        _ => return None,
    };
    if kind == RequestKind::Ping {
        return Some(HttpResponse::json(PING_RESPONSE.to_vec()));
    }
    let reply = match RequestParams::parse(kind, &req.query, None, &Limits::default()) {
        Err(e) => NegotiateReply::Error(ErrorResponse::new(e.to_string())),
        Ok(params) => match (params.hub_names(), params.extra("user")) {
            ([hub], _) if hub.eq_ignore_ascii_case(AUTHORIZED_HUB) => NegotiateReply::Error(
                ErrorResponse::new("authorizedhub is not open to classic clients."),
            ),
            ([hub], user) => match not_connected(app, hub) {
                Some(why) => NegotiateReply::Error(ErrorResponse::new(why)),
                None => app.negotiate_classic(hub, user, &[]),
            },
            (hubs, _) => NegotiateReply::Error(ErrorResponse::new(format!(
                "connectionData must name exactly one hub; it names {}.",
                hubs.len()
            ))),
        },
    };
    Some(HttpResponse::json(reply.encode()))
}

/// How long the sample waits between connection-state log lines.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(30);

/// Runs the sample app: opens its server connections and serves negotiate on `listener`.
/// With `leave_on_signal`, SIGTERM and SIGINT make it leave gracefully (see
/// [`AppServer::shutdown`]) before the process exits.
///
/// # Errors
/// When the connection string is invalid. Otherwise it serves forever.
pub async fn run<R: crate::Runtime, L: crate::Listener>(
    runtime: R,
    listener: L,
    connection_strings: &[String],
    options: crate::sdk::AppOptions,
    leave_on_signal: bool,
) -> std::io::Result<()> {
    let app = AppServer::with_endpoints(connection_strings, hubs(), options)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    app.start(&runtime);
    if leave_on_signal {
        leave_on_termination(runtime.clone(), app.clone());
    }
    let max_connections = crate::glue::accept::default_max_connections();
    crate::serve_http(runtime, listener, max_connections, http_handler(app)).await;
    Ok(())
}

/// On SIGTERM or SIGINT, leaves gracefully ([`AppServer::shutdown`]): the relay sends no new
/// clients and, with migration on, moves this app server's clients to the hub's other app
/// servers; what is under way is answered (at most 10 s); then the process exits. A second
/// signal ends it at once.
fn leave_on_termination<R: crate::Runtime>(runtime: R, app: AppServer) {
    let signalled = crate::cli::termination(runtime.clone());
    runtime.clone().spawn(async move {
        signalled.await;
        tracing::info!("leaving gracefully");
        app.shutdown(&runtime, Duration::from_secs(10)).await;
        std::process::exit(0);
    });
}
