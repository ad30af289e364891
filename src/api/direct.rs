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
//! - the client takes JSON and event streams (`Accept`, checked by the
//!   caller, as rmcp does) and sends JSON (`Content-Type`);
//! - rmcp would take the request as it is: no `MCP-Protocol-Version` of
//!   the 2026-07-28 era (its standard headers and per-request metadata are
//!   rmcp's to check) and no protocol version in `_meta`.
//!
//! The answer goes back as rmcp's would after `plain_json`: one JSON body
//! when it comes first and within `plain_json::MAX_WAIT`; otherwise an event
//! stream of the call's progress (`relay::CallStream::Direct`), keep-alive
//! comments, and the answer last. Log messages go to the session's
//! standalone stream either way. The request goes through the same handler
//! (`Service::handle_request`: the same validation, routing, limits and
//! relay); the client's `notifications/cancelled` reaches it through
//! [`cancel`], and a client that hangs up drops it (its upstream request is
//! cancelled). Everything else takes rmcp's way, unchanged.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CancelledNotification, ClientJsonRpcMessage, ClientNotification, ClientRequest, GetExtensions as _, GetMeta as _,
    JsonRpcMessage, JsonRpcNotification, JsonRpcRequest, ProtocolVersion, ServerJsonRpcMessage,
};
use rmcp::service::{RequestContext, Service as _};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use crate::gateway::GatewayServer;
use crate::gateway::registry::Registry;
use crate::gateway::relay::DirectStream;

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
    let Ok(JsonRpcMessage::Request(JsonRpcRequest { id, mut request, .. })) =
        serde_json::from_slice::<ClientJsonRpcMessage>(body)
    else {
        return None;
    };
    if !matches!(request, ClientRequest::CallToolRequest(_)) {
        return None;
    }
    let meta = std::mem::take(request.get_meta_mut());
    if meta.protocol_version().is_some() {
        return None;
    }
    let peer = session.peer()?.clone();
    registry
        .counters
        .gateway_direct_calls
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // What rmcp gives a handler: the request's `_meta`, and its extensions
    // with the HTTP request's head; and here, where the call's own messages
    // (its progress) go.
    let (notes, mut noted) = mpsc::unbounded_channel();
    request.extensions_mut().insert(parts.clone());
    let mut extensions = std::mem::take(request.extensions_mut());
    extensions.insert(DirectStream(notes));
    let (ct, in_flight) = session.direct_call(id.clone());
    let mut ctx = RequestContext::new(id.clone(), peer);
    ctx.ct = ct;
    ctx.meta = meta;
    ctx.extensions = extensions;
    let server = GatewayServer::of(registry.clone(), session);
    let mut call = Box::pin(async move {
        let _in_flight = in_flight;
        let message: ServerJsonRpcMessage = match server.handle_request(request, ctx).await {
            Ok(result) => JsonRpcMessage::response(result, id),
            Err(error) => JsonRpcMessage::error(error, Some(id)),
        };
        message
    });
    // The answer first, and soon: one JSON body. Otherwise an event stream
    // of what comes, the answer last, with keep-alive comments meanwhile
    // (as rmcp streams; see `plain_json`). A message sent before the answer
    // is read before it: they keep their order.
    let first = tokio::select! {
        biased;
        Some(note) = noted.recv() => Some(note),
        message = &mut call => return Some(json_body(&message)),
        () = tokio::time::sleep(super::plain_json::MAX_WAIT) => None,
    };
    let (events, body) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        let mut next = first.map(|note| event(&note));
        loop {
            if let Some(bytes) = next.take()
                && events.send(bytes).await.is_err()
            {
                // The client hung up: the call is dropped, and cancelled upstream.
                return;
            }
            next = tokio::select! {
                biased;
                Some(note) = noted.recv() => Some(event(&note)),
                message = &mut call => {
                    let _ = events.send(event(&message)).await;
                    return;
                }
                () = events.closed() => return,
                _ = keep_alive.tick() => Some(Bytes::from_static(b": keep-alive\n\n")),
            };
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(body).map(Ok::<_, std::convert::Infallible>);
    Some(
        (
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            axum::body::Body::from_stream(stream),
        )
            .into_response(),
    )
}

/// One message as an event of a stream.
fn event(message: &ServerJsonRpcMessage) -> Bytes {
    match serde_json::to_string(message) {
        Ok(json) => Bytes::from(format!("data: {json}\n\n")),
        Err(_) => Bytes::from_static(b": a message could not be encoded\n\n"),
    }
}

/// The answer as one JSON body. (From here on the call has run: whatever
/// happens, it is answered here.)
fn json_body(message: &ServerJsonRpcMessage) -> Response {
    match serde_json::to_vec(message) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => super::jsonrpc_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            -32603,
            format!("the answer could not be encoded: {e}"),
        ),
    }
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
