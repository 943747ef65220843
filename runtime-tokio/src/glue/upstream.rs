//! Sends the relay's upstream requests (serverless mode's webhooks): hyper's HTTP/1.1 client
//! on the runtime's sockets, TLS for `https` with the platform's roots. Each request has its
//! timeout; `connected` and `disconnected` are tried again, with a pause of 1 s then 2 s, when
//! nothing or a 5xx answers. Runs beside the relay's task, never in it: a slow or dead upstream
//! costs the clients nothing but their own invocations' answers.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{select, Either};
use http_body_util::{BodyExt, Full};
use signalr_relay_core::auth::{HttpUrl, Scheme};
use signalr_relay_core::relay::{UpstreamFailure, UpstreamRequest};
use smol_hyper::rt::FuturesIo;

use super::accept::RateLimited;
use super::tls::{client_config, rustls::ClientConfig, ClientStream};
use super::Runtime;

/// The TLS settings of `https` upstreams, made on first use.
static TLS: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();

/// Failures are logged at most once a second.
static FAILURES: Mutex<RateLimited> = Mutex::new(RateLimited::new());

/// Sends `request`, trying again as it says: the last answer, or why there is none.
pub(crate) async fn send<R: Runtime>(
    runtime: &R,
    request: &UpstreamRequest,
) -> Result<(u16, Bytes), UpstreamFailure> {
    let mut pause = Duration::from_secs(1);
    let mut attempt = 1;
    loop {
        let deadline = runtime.sleep_until(runtime.now() + request.timeout);
        let once = Box::pin(post(runtime, request));
        let result = match select(once, deadline).await {
            Either::Left((result, _)) => result,
            Either::Right(((), _)) => {
                Err((UpstreamFailure::NoAnswer, "no answer in time".to_owned()))
            }
        };
        let retry = match &result {
            Ok((status, _)) => *status >= 500,
            Err((failure, _)) => *failure == UpstreamFailure::NoAnswer,
        };
        if !retry || attempt >= request.attempts {
            if let Some(why) = failure(&result) {
                log_failure(runtime, request, &why);
            }
            return result.map_err(|(failure, _)| failure);
        }
        attempt += 1;
        runtime.sleep_until(runtime.now() + pause).await;
        pause *= 2;
    }
}

/// What to log of a result that is not a 2xx answer.
fn failure(result: &Result<(u16, Bytes), (UpstreamFailure, String)>) -> Option<String> {
    match result {
        Ok((status, _)) if (200..300).contains(status) => None,
        Ok((status, _)) => Some(format!("answered {status}")),
        Err((_, why)) => Some(why.clone()),
    }
}

fn log_failure<R: Runtime>(runtime: &R, request: &UpstreamRequest, why: &str) {
    let allowed = FAILURES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .allow(runtime.now());
    if let Some(similar_since_last) = allowed {
        // The URL's query may hold a key (Functions' `?code=`): only its path is logged.
        let url = request.url.split('?').next().unwrap_or_default();
        tracing::warn!(url, similar_since_last, "upstream request failed: {why}");
    }
}

/// One `POST`: the status and body, or why there is none.
async fn post<R: Runtime>(
    runtime: &R,
    request: &UpstreamRequest,
) -> Result<(u16, Bytes), (UpstreamFailure, String)> {
    let no_answer = |why: String| (UpstreamFailure::NoAnswer, why);
    let url = HttpUrl::parse(&request.url).map_err(|e| no_answer(e.to_string()))?;
    let addr = resolve(url.host(), url.port_or_default())
        .await
        .map_err(no_answer)?;
    let tcp = runtime
        .connect(addr)
        .await
        .map_err(|e| no_answer(format!("cannot connect to {addr}: {e}")))?;
    let stream = if url.scheme() == Scheme::Https {
        let config = TLS
            .get_or_init(|| client_config(None))
            .clone()
            .map_err(no_answer)?;
        ClientStream::tls(&config, url.host(), tcp)
            .await
            .map_err(|e| no_answer(format!("TLS with {}: {e}", url.host())))?
    } else {
        ClientStream::Plain(tcp)
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(FuturesIo::new(stream))
        .await
        .map_err(|e| no_answer(e.to_string()))?;
    runtime.spawn(async move {
        let _ = connection.await;
    });
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host()),
        None => url.host().to_owned(),
    };
    let mut builder = hyper::Request::post(if path.is_empty() { "/" } else { &path })
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, request.content_type)
        .header(
            hyper::header::USER_AGENT,
            concat!("signalr-relay/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in &request.headers {
        builder = builder.header(*name, value);
    }
    let req = builder
        .body(Full::new(request.body.clone()))
        .map_err(|e| no_answer(e.to_string()))?;
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| no_answer(e.to_string()))?;
    let status = response.status().as_u16();
    let body = read_at_most(response.into_body(), request.max_response).await?;
    Ok((status, body))
}

/// The whole body, unless it is longer than `max`.
async fn read_at_most(
    mut body: hyper::body::Incoming,
    max: usize,
) -> Result<Bytes, (UpstreamFailure, String)> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| (UpstreamFailure::NoAnswer, e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err((
                    UpstreamFailure::TooLarge,
                    format!("an answer over {max} bytes"),
                ));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// The address of `host`: an IP address as it is, a name looked up on a thread of its own
/// (the lookup blocks, and the runtime's threads must not).
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let (tx, rx) = futures_channel::oneshot::channel();
    let name = bare.to_owned();
    std::thread::spawn(move || {
        let found = (name.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {name}: {e}"))
            .and_then(|mut a| a.next().ok_or_else(|| format!("cannot resolve {name}")));
        let _ = tx.send(found);
    });
    rx.await.map_err(|_| format!("cannot resolve {host}"))?
}
