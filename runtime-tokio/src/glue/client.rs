//! The glue's outgoing side: name lookups off the runtime's threads ([`resolve`], for the
//! SDK's server connections too), and HTTP requests ([`Call`]: hyper's HTTP/1.1 client on the
//! runtime's sockets, TLS for `https`), for the SDK's REST calls and the relay's upstream
//! requests ([`send`]). Each upstream request has its timeout; `connected` and
//! `disconnected` are tried again, with a pause of 1 s then 2 s, when nothing or a 5xx
//! answers. They run beside the relay's task, never in it: a slow or dead upstream costs the
//! clients nothing but their own invocations' answers.

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
    let mut headers = vec![("content-type", request.content_type.to_owned())];
    headers.extend(request.headers.iter().map(|(k, v)| (*k, v.clone())));
    let call = Call {
        method: "POST",
        url: &request.url,
        headers: &headers,
        body: request.body.clone(),
        max_response: request.max_response,
    };
    match call.send(runtime, None).await {
        Ok(answer) => Ok((answer.status, answer.body)),
        Err(Failure::TooLarge(why)) => Err((UpstreamFailure::TooLarge, why)),
        Err(Failure::NoAnswer(why)) => Err((UpstreamFailure::NoAnswer, why)),
    }
}

/// One HTTP/1.1 request to an absolute `http` or `https` URL, on a connection of its own.
pub(crate) struct Call<'a> {
    pub(crate) method: &'static str,
    pub(crate) url: &'a str,
    pub(crate) headers: &'a [(&'static str, String)],
    pub(crate) body: Bytes,
    /// The largest answer body read.
    pub(crate) max_response: usize,
}

/// An answer: its status, its `x-ms-error-code` (the REST API's), and its body.
#[derive(Debug)]
pub(crate) struct HttpAnswer {
    pub(crate) status: u16,
    pub(crate) error_code: Option<String>,
    pub(crate) body: Bytes,
}

/// Why a call has no answer.
#[derive(Debug)]
pub(crate) enum Failure {
    NoAnswer(String),
    TooLarge(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoAnswer(why) | Self::TooLarge(why) => f.write_str(why),
        }
    }
}

impl Call<'_> {
    /// Sends it, over TLS for `https` with `tls` (the platform's roots when `None`).
    pub(crate) async fn send<R: Runtime>(
        &self,
        runtime: &R,
        tls: Option<&Arc<ClientConfig>>,
    ) -> Result<HttpAnswer, Failure> {
        let no_answer = Failure::NoAnswer;
        let url = HttpUrl::parse(self.url).map_err(|e| no_answer(e.to_string()))?;
        let addr = resolve(url.host(), url.port_or_default())
            .await
            .map_err(no_answer)?;
        let tcp = runtime
            .connect(addr)
            .await
            .map_err(|e| no_answer(format!("cannot connect to {addr}: {e}")))?;
        let stream = if url.scheme() == Scheme::Https {
            let config = match tls {
                Some(config) => config.clone(),
                None => TLS
                    .get_or_init(|| client_config(None))
                    .clone()
                    .map_err(no_answer)?,
            };
            ClientStream::tls(&config, url.host(), tcp)
                .await
                .map_err(|e| no_answer(format!("TLS with {}: {e}", url.host())))?
        } else {
            ClientStream::Plain(tcp)
        };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(FuturesIo::new(stream))
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
        let method = hyper::Method::from_bytes(self.method.as_bytes())
            .map_err(|e| no_answer(e.to_string()))?;
        let mut builder = hyper::Request::builder()
            .method(method)
            .uri(if path.is_empty() { "/" } else { &path })
            .header(hyper::header::HOST, host)
            .header(
                hyper::header::USER_AGENT,
                concat!("signalr-relay/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in self.headers {
            builder = builder.header(*name, value);
        }
        let req = builder
            .body(Full::new(self.body.clone()))
            .map_err(|e| no_answer(e.to_string()))?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| no_answer(e.to_string()))?;
        let status = response.status().as_u16();
        let error_code = response
            .headers()
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_at_most(response.into_body(), self.max_response).await?;
        Ok(HttpAnswer {
            status,
            error_code,
            body,
        })
    }
}

/// The whole body, unless it is longer than `max`.
async fn read_at_most(mut body: hyper::body::Incoming, max: usize) -> Result<Bytes, Failure> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Failure::NoAnswer(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(Failure::TooLarge(format!("an answer over {max} bytes")));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// The address of `host`: an IP address as it is, a name looked up on a thread of its own
/// (the lookup blocks, and the runtime's threads must not).
pub(crate) async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
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
