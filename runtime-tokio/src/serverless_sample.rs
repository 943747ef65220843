//! The serverless sample (`sample-app --serverless`): a backend with no hub server, the
//! serverless counterpart of the `chat` hub, as an Azure Functions app would be. It serves
//!
//! - `POST /<hub>/negotiate?user=<id>`: `{url, accessToken}`, a token it mints for the relay;
//! - `POST /upstream/<hub>/<category>/<event>`: the relay's upstream requests (point the
//!   relay's `--upstream-config` template at `http://<this>/upstream/{hub}/{category}/{event}`),
//!   each one's signature checked (401 otherwise). It answers clients through the REST API:
//!   - `connections/connected`: tells everyone `joined(connectionId)`;
//!   - `messages/echo(text)`: answers the invocation with `text`;
//!   - `messages/broadcast(text)`: sends everyone `newMessage(user, text)`;
//!   - `messages/joinGroup(group)`, `messages/sendToGroup(group, text)` (`groupMessage`);
//!   - `connections/disconnected`: tells everyone `left(connectionId)`.

use signalr_relay_core::aspnetcore::{
    Completion, CompletionResult, HubMessage, HubProtocol, RawValue,
};
use signalr_relay_core::relay::{HttpRequest, HttpResponse};

use crate::sdk::management::{ServiceClient, ServiceOptions};

/// Runs the serverless sample on `listener`, for the service `connection_string`.
///
/// # Errors
/// When the connection string is invalid. Otherwise it serves forever.
pub async fn run<R: crate::Runtime, L: crate::Listener>(
    runtime: R,
    listener: L,
    connection_string: &str,
    options: ServiceOptions,
) -> std::io::Result<()> {
    let service = ServiceClient::new(runtime.clone(), connection_string, options)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let key = signalr_relay_core::auth::ConnectionString::parse(connection_string)
        .map(|cs| cs.access_key().to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let backend = Backend {
        service,
        keys: vec![key],
    };
    let max_connections = crate::glue::accept::default_max_connections();
    crate::serve_http(runtime, listener, max_connections, move |req| {
        let backend = backend.clone();
        async move { backend.handle(req).await }
    })
    .await;
    Ok(())
}

#[derive(Clone)]
struct Backend<R> {
    service: ServiceClient<R>,
    keys: Vec<String>,
}

impl<R: crate::Runtime> Backend<R> {
    async fn handle(&self, req: HttpRequest) -> HttpResponse {
        let path = req.path.trim_end_matches('/');
        if let Some(event) = path.strip_prefix("/upstream/") {
            return self.upstream(&req, event).await;
        }
        let Some(hub) = path
            .strip_suffix("/negotiate")
            .map(|h| h.trim_start_matches('/'))
        else {
            return HttpResponse::text(404, "Not found: negotiate at /<hub>/negotiate");
        };
        let user = form_urlencoded::parse(req.query.as_bytes())
            .find(|(k, _)| k == "user")
            .map(|(_, v)| v.into_owned());
        let answer = self.service.hub(hub).negotiate(user.as_deref(), &[]);
        HttpResponse::json(answer.to_json())
    }

    async fn upstream(&self, req: &HttpRequest, event: &str) -> HttpResponse {
        let header = |name: &str| req.headers.get(name);
        let id = header("x-asrs-connection-id").unwrap_or_default();
        let signed = header("x-asrs-signature")
            .is_some_and(|s| signalr_relay_core::relay::signature_valid(&self.keys, id, s));
        if id.is_empty() || !signed {
            return HttpResponse::text(401, "The request is not signed with the access key.");
        }
        let mut parts = event.splitn(3, '/');
        let (hub, category, name) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let chat = self.service.hub(hub);
        let outcome = match (category, name) {
            ("connections", "connected") => chat.send_to_all("joined", &(id,), &[]).await,
            ("connections", "disconnected") => chat.send_to_all("left", &(id,), &[]).await,
            ("messages", _) => return self.message(req, id, header("x-asrs-user-id")).await,
            _ => Ok(()),
        };
        match outcome {
            Ok(()) => HttpResponse::text(200, ""),
            Err(e) => HttpResponse::text(500, e.to_string()),
        }
    }

    /// A client's invocation, in its protocol (the message without its framing).
    async fn message(&self, req: &HttpRequest, id: &str, user: Option<&str>) -> HttpResponse {
        let msgpack = req
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-type") && v == "application/x-msgpack");
        let protocol = if msgpack {
            HubProtocol::MessagePack
        } else {
            HubProtocol::Json
        };
        let Ok(HubMessage::Invocation(invocation)) = protocol.parse_message(&req.body) else {
            return HttpResponse::text(400, "Not an invocation.");
        };
        let hub = req.path.split('/').nth(2).unwrap_or_default();
        let chat = self.service.hub(hub);
        let text = |i: usize| {
            invocation
                .arguments
                .get(i)
                .and_then(|a| decode_string(protocol, a))
                .unwrap_or_default()
        };
        let id_of_call = invocation.invocation_id.clone();
        let sent = match invocation.target.as_str() {
            "echo" => {
                let first = invocation.arguments.into_iter().next();
                return completion(protocol, id_of_call, Ok(first));
            }
            "broadcast" => {
                chat.send_to_all("newMessage", &(user.unwrap_or(id), text(0)), &[])
                    .await
            }
            "joinGroup" => chat.add_to_group(id, &text(0)).await.map(drop),
            "sendToGroup" => {
                chat.send_to_group(&text(0), "groupMessage", &(text(0), text(1)), &[])
                    .await
            }
            other => {
                let why = format!("Unknown method '{other}'.");
                return completion(protocol, id_of_call, Err(why));
            }
        };
        completion(
            protocol,
            id_of_call,
            sent.map(|()| None).map_err(|e| e.to_string()),
        )
    }
}

/// A string argument, in either protocol.
fn decode_string(protocol: HubProtocol, value: &RawValue) -> Option<String> {
    match protocol {
        HubProtocol::Json => serde_json::from_slice(value.as_bytes()).ok(),
        HubProtocol::MessagePack | HubProtocol::BlazorPack => {
            rmp_serde::from_slice(value.as_bytes()).ok()
        }
    }
}

/// The answer to an invocation: its completion, framed in the client's protocol (what the
/// relay writes to the client as it is), or an empty 200 when the client wants none.
fn completion(
    protocol: HubProtocol,
    invocation_id: Option<String>,
    result: Result<Option<RawValue>, String>,
) -> HttpResponse {
    let Some(invocation_id) = invocation_id else {
        return HttpResponse::text(200, "");
    };
    let result = match result {
        Ok(Some(value)) => CompletionResult::Value(value),
        Ok(None) => CompletionResult::Void,
        Err(e) => CompletionResult::Error(e),
    };
    let mut body = Vec::new();
    let message = HubMessage::Completion(Completion {
        headers: Default::default(),
        invocation_id,
        result,
    });
    if protocol.write_message(&message, &mut body).is_err() {
        return HttpResponse::text(500, "The completion cannot be written.");
    }
    let mut response = HttpResponse::json(body);
    if protocol.is_binary() {
        response.content_type = "application/x-msgpack";
    }
    response
}
