//! HTTP plumbing shared by the relay and the app-server SDK: hyper on `futures-io`, requests
//! converted to the core's [`HttpRequest`], and CORS for browser clients.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, ORIGIN,
    SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use signalr_relay_core::relay::{HttpRequest, HttpResponse};
use smol_hyper::rt::FuturesIo;

use crate::glue::accept::{accept_loop, ConnectionCount};
use crate::glue::{Listener, Runtime};

pub(crate) type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// An empty body.
pub(crate) fn empty() -> Body {
    Full::new(Bytes::new()).boxed()
}

/// The parts of a hyper request the core reads, and the address of the socket's peer.
pub(crate) fn to_core_request<B>(req: &Request<B>, peer: IpAddr) -> HttpRequest {
    HttpRequest {
        peer: Some(peer),
        method: req.method().as_str().to_owned(),
        path: req.uri().path().to_owned(),
        query: req.uri().query().unwrap_or_default().to_owned(),
        headers: req
            .headers()
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
            .collect(),
        websocket: is_websocket_upgrade(req),
        body: Bytes::new(),
        verified: None,
    }
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    asks_for_websocket(req) && req.headers().contains_key(SEC_WEBSOCKET_KEY)
}

/// Whether the request asks to upgrade to a WebSocket (`Connection: upgrade`,
/// `Upgrade: websocket`), well-formed or not.
fn asks_for_websocket<B>(req: &Request<B>) -> bool {
    let has = |name, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(CONNECTION, "upgrade") && has(UPGRADE, "websocket")
}

/// The answer to a WebSocket upgrade request that cannot be accepted (RFC 6455 §4.2.1 and
/// §4.2.2): 426 naming version 13 for another version, 400 without a key.
pub(crate) fn bad_upgrade<B>(req: &Request<B>) -> Option<Response<Body>> {
    if !asks_for_websocket(req) {
        return None;
    }
    let version_13 = req
        .headers()
        .get(SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"13");
    if !version_13 {
        let mut response = text(
            StatusCode::UPGRADE_REQUIRED,
            "Only WebSocket version 13 is supported.",
        );
        response
            .headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return Some(response);
    }
    (!req.headers().contains_key(SEC_WEBSOCKET_KEY)).then(|| {
        text(
            StatusCode::BAD_REQUEST,
            "Bad WebSocket request: no Sec-WebSocket-Key.",
        )
    })
}

/// A hyper response from the core's.
pub(crate) fn respond(r: HttpResponse) -> Response<Body> {
    let mut response = Response::new(Full::new(r.body).boxed());
    *response.status_mut() =
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(r.content_type));
    response.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    for (name, value) in r.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    *response.status_mut() = status;
    response
}

/// The answer to a CORS preflight, if `req` is one.
pub(crate) fn preflight<B>(req: &Request<B>) -> Option<Response<Body>> {
    if req.method() != hyper::Method::OPTIONS || !req.headers().contains_key(ORIGIN) {
        return None;
    }
    let mut response = text(StatusCode::NO_CONTENT, "");
    let headers = response.headers_mut();
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    if let Some(requested) = req.headers().get(ACCESS_CONTROL_REQUEST_HEADERS) {
        headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    Some(response)
}

/// Lets a browser page from another origin read the response. SignalR clients send
/// credentials, so the origin is echoed (never `*`).
pub(crate) fn allow_origin(origin: Option<&HeaderValue>, response: &mut Response<Body>) {
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

/// Largest request body [`serve_http`] reads (an upstream event's, for a serverless backend).
pub(crate) const MAX_HANDLER_BODY: usize = 1024 * 1024;

/// Serves plain HTTP requests with `handler` (no WebSockets), e.g. an app server's negotiate
/// endpoint, forever: accept errors are survived, and at most `max_connections` are open at
/// once (see [`accept_loop`]). The handler gets the request with its body, up to
/// 1 MiB read within 15 s (past either: 413 or 408, without the handler), and
/// answers when its future is ready.
pub async fn serve_http<R, L, F, Fut>(runtime: R, listener: L, max_connections: usize, handler: F)
where
    R: Runtime,
    L: Listener,
    F: Fn(HttpRequest) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = HttpResponse> + Send + 'static,
{
    let handler = Arc::new(handler);
    let count = ConnectionCount::new(max_connections);
    accept_loop(&runtime, listener, count, |stream, peer, admitted| {
        let handler = handler.clone();
        let timer = runtime.hyper_timer();
        let body_timer = runtime.clone();
        runtime.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let handler = handler.clone();
                let runtime = body_timer.clone();
                async move {
                    let origin = req.headers().get(ORIGIN).cloned();
                    if let Some(response) = preflight(&req) {
                        let mut response = response;
                        allow_origin(origin.as_ref(), &mut response);
                        return Ok::<_, Infallible>(response);
                    }
                    let mut request = to_core_request(&req, peer.ip());
                    let deadline = runtime.sleep_until(runtime.now() + Duration::from_secs(15));
                    let read = Box::pin(read_body(req.into_body(), MAX_HANDLER_BODY));
                    let mut response = match futures_util::future::select(read, deadline).await {
                        futures_util::future::Either::Left((Some(body), _)) => {
                            request.body = body;
                            respond(handler(request).await)
                        }
                        futures_util::future::Either::Left((None, _)) => {
                            text(StatusCode::PAYLOAD_TOO_LARGE, "The body is too large.")
                        }
                        futures_util::future::Either::Right(_) => {
                            text(StatusCode::REQUEST_TIMEOUT, "The body took too long.")
                        }
                    };
                    allow_origin(origin.as_ref(), &mut response);
                    Ok(response)
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(timer)
                .header_read_timeout(Duration::from_secs(15))
                .max_buf_size(40 * 1024);
            let _ = builder
                .serve_connection(FuturesIo::new(stream), service)
                .await;
            drop(admitted);
        });
    })
    .await;
}

/// The whole body, or `None` past `max` bytes (or when it breaks off).
async fn read_body(mut body: hyper::body::Incoming, max: usize) -> Option<Bytes> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            if buf.len() + data.len() > max {
                return None;
            }
            buf.extend_from_slice(&data);
        }
    }
    Some(buf.freeze())
}
