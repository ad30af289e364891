//! Tool calls answered directly, without rmcp's session worker.
//!
//! A request of a 2025-era gateway session normally travels from the HTTP
//! handler through rmcp's session worker to the session's service task and
//! our handler, and its answer comes back the same way as an event stream
//! that [`super::plain_json`] turns into one JSON body: several channel hops
//! and two encodings, much of what a relayed call costs the gateway. When
//! nothing can belong to a call but its answer and its progress, the handler
//! is called here instead, in the HTTP request's own task. That is the case
//! when:
//!
//! - the client cannot be asked anything during a call (it declared no
//!   sampling, elicitation or roots: decided once, when it initialized, in
//!   `GatewayServer::on_initialized`), so no server request rides the call;
//! - the client takes JSON and event streams (`Accept`: its first header,
//!   each media range without `q=0`; rmcp would take such a request too) and
//!   sends JSON (`Content-Type`);
//! - rmcp would take the request as it is: no `MCP-Protocol-Version` of
//!   the 2026-07-28 era (its standard headers and per-request metadata are
//!   rmcp's to check) and none of the protocol's own `_meta` keys (a
//!   protocol version, or capabilities that would let the call ask).
//!
//! The answer goes back as rmcp's does after `plain_json`: one JSON body
//! when it comes first and within `plain_json::MAX_WAIT`; otherwise an event
//! stream of the call's progress (`relay::CallStream::Direct`), keep-alive
//! comments, and the answer last. Log messages go to the session's
//! standalone stream either way. The request goes through the same handler
//! (`Service::handle_request`: the same validation, routing, limits and
//! relay), or, for a tool of a stdio server, past rmcp's client too
//! (`gateway::server::lane`: the same routing, limits and relay, the
//! arguments and result copied as written). The client's `notifications/cancelled` ([`cancel`]) and the end
//! of its session cancel the call, and then no answer is sent, as with
//! rmcp. A client that hangs up has not cancelled: the call runs on to its
//! end ([`RunsOn`]). One difference remains: such a stream has no event ids,
//! so a client whose connection drops cannot resume it (rmcp keeps a
//! request's events for a minute for that); its call still completes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CancelledNotification, ClientJsonRpcMessage, ClientNotification, ClientRequest, Extensions, GetExtensions as _,
    GetMeta as _, JsonRpcMessage, JsonRpcNotification, JsonRpcRequest, ProtocolVersion, RequestId,
    ServerJsonRpcMessage,
};
use rmcp::service::{RequestContext, Service as _};
use std::pin::Pin;
use std::task::Poll;

use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use serde_json::json;
use serde_json::value::RawValue;

use crate::gateway::GatewayServer;
use crate::gateway::registry::{Registry, ServerRoute};
use crate::gateway::relay::DirectStream;
use crate::gateway::server::RawToolCall;

/// Comments on a streamed answer while it is quiet (rmcp's interval), so
/// that proxies see the connection alive.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// The answer to `body`, a request of HTTP session `http`, if it can be
/// answered directly; None when it takes rmcp's way (nothing was done).
pub async fn answer(registry: &Arc<Registry>, http: &str, parts: &Parts, body: &Bytes) -> Option<Response> {
    let session = registry.clients.direct(http)?;
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if !json || !era_2025(&parts.headers) {
        return None;
    }
    let peer = session.peer()?.clone();
    let server = GatewayServer::of(registry.clone(), session.clone());
    // A tool call to a stdio server goes past rmcp's client too (the lane);
    // any other call takes the typed path.
    let lane = lane_call(body).and_then(|(id, call)| Some((id, server.lane_for(&call.name)?, call)));
    let (id, call): (RequestId, Call) = match lane {
        Some((id, (route, tool), call)) => (id, Call::Lane { route, tool, call }),
        None => {
            let Ok(JsonRpcMessage::Request(JsonRpcRequest { id, mut request, .. })) =
                serde_json::from_slice::<ClientJsonRpcMessage>(body)
            else {
                return None;
            };
            if !matches!(request, ClientRequest::CallToolRequest(_)) {
                return None;
            }
            let meta = std::mem::take(request.get_meta_mut());
            // The protocol's own keys (a protocol version, what the client can do)
            // make it another kind of request: rmcp's to judge.
            if meta.0.keys().any(|key| key.starts_with(PROTOCOL_KEYS)) {
                return None;
            }
            (
                id,
                Call::Typed {
                    request: Box::new(request),
                    meta,
                    head: Box::new(parts.clone()),
                },
            )
        }
    };
    registry
        .counters
        .gateway_direct_calls
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // What rmcp gives a handler: the request's `_meta`, and its extensions
    // with the HTTP request's head; and here, where the call's own messages
    // (its progress) go.
    let (notes, mut noted) = mpsc::unbounded_channel();
    let mut extensions = Extensions::new();
    extensions.insert(DirectStream(notes));
    let (ct, in_flight) = session.direct_call(id.clone());
    let cancelled = ct.clone();
    let mut ctx = RequestContext::new(id.clone(), peer);
    ctx.ct = ct;
    ctx.extensions = extensions;
    let mut call = RunsOn(Some(Box::pin(async move {
        let _in_flight = in_flight;
        match call {
            Call::Typed {
                mut request,
                meta,
                head,
            } => {
                ctx.meta = meta;
                ctx.extensions.insert(*head);
                let request_extensions = std::mem::take(request.extensions_mut());
                ctx.extensions.extend(request_extensions);
                let message: ServerJsonRpcMessage = match server.handle_request(*request, ctx).await {
                    Ok(result) => JsonRpcMessage::response(result, id),
                    Err(error) => JsonRpcMessage::error(error, Some(id)),
                };
                encoded(&message)
            }
            Call::Lane { route, tool, call } => match server.call_tool_raw(&route, &tool, call, &ctx).await {
                Ok(result) => answered(&id, &result),
                Err(error) => encoded(&ServerJsonRpcMessage::error(error, Some(id))),
            },
        }
    })));
    // The answer first, and soon: one JSON body. Otherwise an event stream
    // of what comes, the answer last, with keep-alive comments meanwhile
    // (as rmcp streams; see `plain_json`). A message sent before the answer
    // is read before it: they keep their order.
    let mut sent = Vec::new();
    tokio::select! {
        biased;
        Some(note) = noted.recv() => sent.push(event(&note)),
        message = &mut call => {
            sent.extend(std::iter::from_fn(|| noted.try_recv().ok()).map(|note| event(&note)));
            match answer_of(message, &cancelled) {
                Some(message) if sent.is_empty() => return Some(json_body(message)),
                Some(message) => sent.push(event_of(&message)),
                None => {}
            }
            return Some(event_stream(futures_util::stream::iter(sent)));
        }
        () = tokio::time::sleep(super::plain_json::MAX_WAIT) => {}
    };
    let (events, body) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        let mut next = sent;
        loop {
            for bytes in next.drain(..) {
                if events.send(bytes).await.is_err() {
                    // The client hung up: the call runs on to its end
                    // (`RunsOn`), its answer going nowhere.
                    return;
                }
            }
            tokio::select! {
                biased;
                Some(note) = noted.recv() => next.push(event(&note)),
                message = &mut call => {
                    next.extend(std::iter::from_fn(|| noted.try_recv().ok()).map(|note| event(&note)));
                    next.extend(answer_of(message, &cancelled).map(|message| event_of(&message)));
                    for bytes in next {
                        if events.send(bytes).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                _ = keep_alive.tick() => next.push(Bytes::from_static(b": keep-alive\n\n")),
            }
        }
    });
    Some(event_stream(tokio_stream::wrappers::ReceiverStream::new(body)))
}

/// A call in flight. Dropped before its end (its client hung up), it runs
/// on to its end in a task of its own, its answer going nowhere: a client
/// that goes away has not cancelled its request (the transport spec), and
/// rmcp does not cancel one either.
struct RunsOn(Option<Pin<Box<dyn Future<Output = Vec<u8>> + Send>>>);

impl Future for RunsOn {
    type Output = Vec<u8>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Vec<u8>> {
        let Some(call) = self.0.as_mut() else {
            // Polled after its end: never (each select arm that takes the
            // answer returns).
            return Poll::Pending;
        };
        let answer = std::task::ready!(call.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(answer)
    }
}

impl Drop for RunsOn {
    fn drop(&mut self) {
        if let Some(call) = self.0.take() {
            tokio::spawn(async move {
                let _ = call.await;
            });
        }
    }
}

/// The call's answer, unless it was cancelled (by its client, or by the
/// end of its session): rmcp sends none then, and neither do we.
fn answer_of(message: Vec<u8>, cancelled: &CancellationToken) -> Option<Vec<u8>> {
    (!cancelled.is_cancelled()).then_some(message)
}

/// An event stream response of `events`, headed as rmcp heads its own.
fn event_stream(events: impl futures_util::Stream<Item = Bytes> + Send + 'static) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        axum::body::Body::from_stream(events.map(Ok::<_, std::convert::Infallible>)),
    )
        .into_response()
}

/// One message as an event of a stream.
fn event(message: &ServerJsonRpcMessage) -> Bytes {
    event_of(&encoded(message))
}

/// One encoded message as an event of a stream.
fn event_of(json: &[u8]) -> Bytes {
    let mut event = Vec::with_capacity(json.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(json);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

/// A message as JSON (one that cannot be: an error that says so).
fn encoded(message: &ServerJsonRpcMessage) -> Vec<u8> {
    serde_json::to_vec(message).unwrap_or_else(|e| {
        let error = json!({
            "jsonrpc": "2.0",
            "id": null,
            "error": { "code": -32603, "message": format!("the answer could not be encoded: {e}") },
        });
        error.to_string().into_bytes()
    })
}

/// The answer to request `id` whose result is `result`, as the server
/// wrote it.
fn answered(id: &RequestId, result: &RawValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(result.get().len() + 48);
    out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    // Writing a number or string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, id);
    out.extend_from_slice(br#","result":"#);
    // On one line: a line break would end an event of a stream.
    out.extend_from_slice(one_line(result).get().as_bytes());
    out.push(b'}');
    out
}

/// The answer as one JSON body. (From here on the call has run: whatever
/// happens, it is answered here.)
fn json_body(message: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], message).into_response()
}

/// The prefix of the protocol's own `_meta` keys.
const PROTOCOL_KEYS: &str = "io.modelcontextprotocol/";

/// What is to be called: a request rmcp parsed, or a tool call for the lane.
enum Call {
    Typed {
        request: Box<ClientRequest>,
        meta: rmcp::model::RequestMetaObject,
        /// The HTTP request's head, which rmcp gives a handler (the lane
        /// reads none of it).
        head: Box<Parts>,
    },
    Lane {
        route: Arc<ServerRoute>,
        tool: String,
        call: RawToolCall,
    },
}

/// `body` as a tool call for the lane: None unless it is a `tools/call`
/// with nothing but a name, arguments (an object) and `_meta` (without the
/// protocol's own keys), whose progress token (if any) is one. Anything
/// else takes the typed path, which judges it as before.
fn lane_call(body: &[u8]) -> Option<(RequestId, RawToolCall)> {
    // A key twice, or one of no call the lane makes: an error (serde's),
    // and so the typed path.
    #[derive(serde::Deserialize)]
    struct Request<'a> {
        #[serde(borrow)]
        jsonrpc: std::borrow::Cow<'a, str>,
        id: RequestId,
        #[serde(borrow)]
        method: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        params: Params<'a>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Params<'a> {
        name: String,
        #[serde(borrow, default)]
        arguments: Option<&'a RawValue>,
        #[serde(default, rename = "_meta")]
        meta: Option<serde_json::Map<String, serde_json::Value>>,
    }
    let request: Request = serde_json::from_slice(body).ok()?;
    if request.jsonrpc != "2.0" || request.method != "tools/call" {
        return None;
    }
    let Params { name, arguments, meta } = request.params;
    let arguments = match arguments {
        Some(arguments) if arguments.get().starts_with('{') => Some(one_line(arguments)),
        Some(_) => return None,
        None => None,
    };
    let mut meta = meta.unwrap_or_default();
    if meta.keys().any(|key| key.starts_with(PROTOCOL_KEYS)) {
        return None;
    }
    let progress = match meta.remove("progressToken") {
        Some(token) => Some(serde_json::from_value::<rmcp::model::ProgressToken>(token).ok()?),
        None => None,
    };
    Some((
        request.id,
        RawToolCall {
            name,
            arguments,
            meta,
            progress,
        },
    ))
}

/// `value` on one line: its line breaks (whitespace between tokens, in
/// valid JSON) become spaces, so that it cannot end a line of stdio.
fn one_line(value: &RawValue) -> Box<RawValue> {
    if !value.get().contains(['\n', '\r']) {
        return value.to_owned();
    }
    let text = value.get().replace(['\n', '\r'], " ");
    // Whitespace for whitespace: still the same JSON.
    RawValue::from_string(text).unwrap_or_else(|_| value.to_owned())
}

/// `body`, a message of HTTP session `http`, cancels one of its calls
/// answered directly: cancel it. (The message still goes on to rmcp, which
/// knows nothing of the call and lets it be.)
pub fn cancel(registry: &Registry, http: &str, body: &Bytes) {
    let Some(session) = registry.clients.direct(http) else {
        return;
    };
    if let Ok(JsonRpcMessage::Notification(JsonRpcNotification {
        notification: ClientNotification::CancelledNotification(CancelledNotification { params, .. }),
        ..
    })) = serde_json::from_slice::<ClientJsonRpcMessage>(body)
        && let Some(id) = params.request_id
    {
        session.cancel_direct(&id);
    }
}

/// `accept` (an `Accept` header) takes `mime`: one of its media ranges is
/// that type, without `q=0`. (Never more than rmcp takes, which reads every
/// `Accept` header and quoted parameters.)
pub fn accepts(accept: &str, mime: &str) -> bool {
    accept.split(',').any(|range| {
        let mut words = range.split(';');
        let essence = words.next().unwrap_or_default().trim();
        let refused = words.any(|p| {
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
            })
        });
        essence.eq_ignore_ascii_case(mime) && !refused
    })
}

/// The request's headers are those of a 2025-era request that rmcp takes
/// as they are: no `MCP-Protocol-Version`, or a known one before 2026-07-28
/// (whose standard headers rmcp would check against the body).
fn era_2025(headers: &HeaderMap) -> bool {
    let Some(version) = headers.get("mcp-protocol-version") else {
        return true;
    };
    version.to_str().is_ok_and(|version| {
        version < ProtocolVersion::V_2026_07_28.as_str()
            && ProtocolVersion::KNOWN_VERSIONS
                .iter()
                .any(|known| known.as_str() == version)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_is_read_as_media_ranges() {
        assert!(accepts("application/json, text/event-stream", "text/event-stream"));
        assert!(accepts("Application/JSON;charset=utf-8", "application/json"));
        assert!(!accepts("application/json, text/event-stream;q=0", "text/event-stream"));
        assert!(!accepts("application/jsonx", "application/json"));
        assert!(!accepts("*/*", "application/json"), "rmcp asks for the types by name");
    }

    #[test]
    fn the_lane_takes_plain_tool_calls_only() {
        let (id, call) = lane_call(
            br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"a__b","arguments":{
  "x": 1.50
},"_meta":{"progressToken":"t","trace":1}}}"#,
        )
        .unwrap();
        assert_eq!(id, RequestId::Number(3));
        assert_eq!(call.name, "a__b");
        assert_eq!(
            call.arguments.unwrap().get(),
            r#"{   "x": 1.50 }"#,
            "one line, as written"
        );
        assert_eq!(
            call.progress,
            Some(rmcp::model::ProgressToken(RequestId::String("t".into())))
        );
        assert_eq!(call.meta, *serde_json::json!({"trace": 1}).as_object().unwrap());
        let refused = [
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"a","task":{}}}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"a","arguments":[1]}}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"a","_meta":{"io.modelcontextprotocol/logLevel":"info"}}}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"a","_meta":{"progressToken":{}}}}"#,
            r#"{"jsonrpc":"1.0","id":3,"method":"tools/call","params":{"name":"a"}}"#,
        ];
        for body in refused {
            assert!(lane_call(body.as_bytes()).is_none(), "{body}");
        }
    }

    #[test]
    fn only_2025_era_headers_are_answered_directly() {
        let with = |version: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("mcp-protocol-version", version.parse().unwrap());
            era_2025(&headers)
        };
        assert!(era_2025(&HeaderMap::new()));
        assert!(with("2025-06-18"));
        assert!(with("2025-11-25"));
        assert!(
            !with("2026-07-28"),
            "standard headers and per-request metadata: rmcp checks them"
        );
        assert!(!with("1999-01-01"), "unknown: rmcp refuses it");
        assert!(!with("garbage"));
    }
}
