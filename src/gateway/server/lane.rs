//! Tool calls past rmcp, on a stdio server's side door
//! ([`crate::transport::stdio::RawLane`]).
//!
//! A call answered directly (`api::direct`) to a tool of a stdio server is
//! written to the server by the task that calls, and its answer is copied
//! into the client's answer as the server wrote it: no typed parse of the
//! arguments or the result, no hop through rmcp's service task. It keeps
//! everything else of a call: the same admission (limits, queue, rate),
//! metrics, deadline (started again by progress), cancellation (the
//! client's, the timeout's: `notifications/cancelled` upstream), the
//! relay's view of calls in flight (the server's requests and log messages
//! during the call go to its client), and URIs in resource blocks shown as
//! the catalog shows them, and what rmcp's client tells a 2026-07-28
//! server with each request. It is not taken for a cached tool or a
//! `session: per_client` server (their calls need the typed path).

use std::sync::Arc;

use rmcp::ErrorData as McpError;
use rmcp::ServiceError;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResult, ClientRequest, ErrorCode, InputRequiredResult,
    NumberOrString, ProgressNotificationParam, ProgressToken, RequestId, ServerResult,
};
use rmcp::service::{RequestContext, RoleServer};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{
    FreedOnDrop, GatewayServer, Method, closed, deadline_after, metered, rewrite_tool_result, timed_out, unexpected,
};
use crate::gateway::registry::{ServerRoute, Upstream};
use crate::gateway::relay::{self, Pending};
use crate::transport::stdio::RawLane;

/// A client's `tools/call`, as its request came.
pub struct RawToolCall {
    pub name: String,
    pub arguments: Option<Box<RawValue>>,
    /// Its `_meta` but the progress token.
    pub meta: serde_json::Map<String, serde_json::Value>,
    /// The client's progress token: it wants progress.
    pub progress: Option<ProgressToken>,
}

impl RawToolCall {
    /// The request to the server, under `id` (JSON) and the name `tool`,
    /// with `protocol`'s `_meta` keys after the client's (a 2026-07-28
    /// server's per-request context); progress (if the client wants it)
    /// under a token equal to the id.
    fn request(&self, id: &str, tool: &str, protocol: &serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
        let mut out = Vec::with_capacity(96 + self.arguments.as_ref().map_or(0, |a| a.get().len()));
        out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(br#","method":"tools/call","params":{"name":"#);
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, tool);
        if let Some(arguments) = &self.arguments {
            out.extend_from_slice(br#","arguments":"#);
            out.extend_from_slice(arguments.get().as_bytes());
        }
        if !self.meta.is_empty() || !protocol.is_empty() || self.progress.is_some() {
            out.extend_from_slice(br#","_meta":{"#);
            let mut first = true;
            for (key, value) in self.meta.iter().chain(protocol) {
                if !std::mem::take(&mut first) {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut out, key);
                out.push(b':');
                let _ = serde_json::to_writer(&mut out, value);
            }
            if self.progress.is_some() {
                if !first {
                    out.push(b',');
                }
                out.extend_from_slice(br#""progressToken":"#);
                out.extend_from_slice(id.as_bytes());
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"}}");
        out
    }

    /// The same call as rmcp's typed request, to `tool`.
    fn typed(&self, tool: &str) -> Result<ClientRequest, McpError> {
        let mut params = serde_json::json!({ "name": tool });
        if let Some(arguments) = &self.arguments {
            params["arguments"] = serde_json::from_str(arguments.get())
                .map_err(|e| McpError::invalid_params(format!("arguments: {e}"), None))?;
        }
        if !self.meta.is_empty() {
            params["_meta"] = serde_json::Value::Object(self.meta.clone());
        }
        let params: CallToolRequestParams =
            serde_json::from_value(params).map_err(|e| McpError::invalid_params(e.to_string(), None))?;
        Ok(ClientRequest::CallToolRequest(CallToolRequest::new(params)))
    }
}

/// A line the server wrote for a call in the lane.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(default)]
    method: Option<String>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<McpError>,
    #[serde(borrow, default)]
    params: Option<&'a RawValue>,
}

impl GatewayServer {
    /// The server and its tool name for a call of `name` that can go past
    /// rmcp: a known tool, not cached, of a server shared by every client
    /// whose every replica is a stdio connection. None: the typed path
    /// takes it (and says what is wrong).
    pub fn lane_for(&self, name: &str) -> Option<(Arc<ServerRoute>, String)> {
        let catalog = self.registry.catalog();
        let (route, tool) = catalog.tool(name)?;
        let passes = !route.cache_ttls.contains_key(tool)
            && route.spec.session != crate::config::spec::SessionMode::PerClient
            && !route.upstreams.is_empty()
            && route.upstreams.iter().all(|u| u.lane.is_some());
        passes.then(|| (route.clone(), tool.clone()))
    }

    /// `call` of `tool` of `route` (from [`GatewayServer::lane_for`]): its
    /// result as the server wrote it (URIs in resource blocks rewritten).
    pub async fn call_tool_raw(
        &self,
        route: &ServerRoute,
        tool: &str,
        call: RawToolCall,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Box<RawValue>, McpError> {
        let (upstream, deadline) = self.admit(route, ctx).await?;
        let _freed = FreedOnDrop(&route.metrics);
        let Some(lane) = upstream.lane.clone() else {
            // The server was replaced while the call waited for a slot, by
            // one the lane cannot reach.
            let request = call.typed(tool)?;
            // Progress as the typed path reads it: from the call's context.
            let mut ctx = ctx.clone();
            if let Some(token) = &call.progress {
                ctx.meta.set_progress_token(token.clone());
            }
            let exchange = self.exchange(route, upstream, request, &ctx, deadline);
            let result = metered(route, Method::CallTool, exchange).await?;
            return match result {
                ServerResult::CallToolResult(mut result) => {
                    rewrite_tool_result(&self.registry.catalog(), &route.name, &mut result);
                    serde_json::value::to_raw_value(&result).map_err(|e| McpError::internal_error(e.to_string(), None))
                }
                _ => Err(unexpected(&route.name)),
            };
        };
        self.registry
            .counters
            .gateway_lane_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let exchange = self.exchange_raw(route, upstream, &lane, tool, &call, ctx, deadline);
        metered(route, Method::CallTool, exchange).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn exchange_raw(
        &self,
        route: &ServerRoute,
        upstream: Arc<Upstream>,
        lane: &Arc<RawLane>,
        tool: &str,
        call: &RawToolCall,
        ctx: &RequestContext<RoleServer>,
        deadline: tokio::time::Instant,
    ) -> Result<Box<RawValue>, McpError> {
        let server = route.name.as_str();
        // A 2025-era client is asked the server's questions as server requests.
        let (interject, _) = tokio::sync::mpsc::unbounded_channel();
        let caller = self.caller(ctx, &interject, false);
        // What rmcp's client tells a 2026-07-28 server with each request:
        // the protocol, who asks and what its client can do.
        let protocol = match upstream.peer.peer_info() {
            Some(info) if upstream.speaks_modern() => {
                let mut meta = self.client_meta(ctx);
                meta.set_protocol_version(info.protocol_version.clone());
                meta.set_client_info(relay::upstream_identity());
                meta.0.0
            }
            _ => serde_json::Map::new(),
        };
        let mut pending = Pending::new(upstream, route.metrics.clone(), caller);
        let mut sent = match lane.call(|id| call.request(id, tool, &protocol)).await {
            Ok(sent) => sent,
            Err(_) => {
                pending.upstream.suspect.notify_one();
                return Err(closed(server, &ServiceError::TransportClosed));
            }
        };
        let id = RequestId::from(NumberOrString::String(sent.id().into()));
        pending.upstream.relay.sent(pending.key, id.clone());
        pending.id = Some(id);
        let progress = call.progress.as_ref().map(|token| (relay::CallStream::of(ctx), token));
        // As on the typed path: progress starts the timeout again, up to ten
        // times request_timeout in all.
        let latest = deadline
            .checked_add(route.request_timeout.saturating_mul(9))
            .unwrap_or(deadline);
        let mut deadline = deadline;
        loop {
            tokio::select! {
                line = sent.next() => {
                    let Some(line) = line else {
                        pending.answered = true;
                        pending.upstream.suspect.notify_one();
                        return Err(closed(server, &ServiceError::TransportClosed));
                    };
                    let Ok(line) = serde_json::from_slice::<Line>(&line) else {
                        pending.answered = true;
                        return Err(unexpected(server));
                    };
                    if line.method.is_some() {
                        // Progress (the lane takes no other notification).
                        let params = line.params.and_then(|p| serde_json::from_str::<ProgressNotificationParam>(p.get()).ok());
                        if let (Some((to, token)), Some(mut params)) = (&progress, params) {
                            params.progress_token = (*token).clone();
                            to.progress(params).await;
                            deadline = deadline_after(route.request_timeout).min(latest);
                        }
                        continue;
                    }
                    pending.answered = true;
                    return match (line.result, line.error) {
                        (_, Some(error)) => Err(error),
                        (Some(result), None) => self.shown(route, result, ctx).await,
                        (None, None) => Err(unexpected(server)),
                    };
                }
                () = ctx.ct.cancelled() => {
                    pending.cancel_reason = "cancelled by the client";
                    return Err(McpError::new(ErrorCode::INTERNAL_ERROR, "cancelled by the client".to_string(), None));
                }
                () = tokio::time::sleep_until(deadline) => {
                    pending.cancel_reason = "request_timeout";
                    return Err(timed_out(route));
                }
            }
        }
    }

    /// A result as the client sees it: as the server wrote it, unless it
    /// has resource blocks, whose URIs are shown as the catalog shows them.
    /// A 2026-07-28 server's questions (an input-required result) go to the
    /// client as on the typed path, which a client of the lane cannot
    /// answer: it declared no sampling, elicitation or roots.
    async fn shown(
        &self,
        route: &ServerRoute,
        result: &RawValue,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Box<RawValue>, McpError> {
        if result.get().contains("\"input_required\"")
            && let Ok(asked) = serde_json::from_str::<InputRequiredResult>(result.get())
        {
            let questions = asked.input_requests.unwrap_or_default();
            if questions.is_empty() {
                return Err(unexpected(&route.name));
            }
            let capabilities = ctx.client_capabilities();
            relay::ask_client(&ctx.peer, &ctx.id, capabilities.as_ref(), questions, &route.name).await?;
            // Answered: the typed path would make the request again with
            // the answers; a client of the lane never gets here.
            return Err(unexpected(&route.name));
        }
        if result.get().contains("\"resultType\"") || result.get().contains("\"structuredContent\"") {
            // A 2026-07-28 server's result, to a client of an earlier
            // protocol: as rmcp shows it, without `resultType` and without
            // tool output that is not an object.
            if let Some(legacy) = legacy_shape(result) {
                return self.shown_links(route, &legacy);
            }
        }
        self.shown_links(route, result)
    }

    /// A result with its resource blocks' URIs shown as the catalog shows
    /// them (as the server wrote it when it has none).
    fn shown_links(&self, route: &ServerRoute, result: &RawValue) -> Result<Box<RawValue>, McpError> {
        if !result.get().contains("\"resource") {
            return Ok(result.to_owned());
        }
        let mut typed: CallToolResult = serde_json::from_str(result.get()).map_err(|_| unexpected(&route.name))?;
        rewrite_tool_result(&self.registry.catalog(), &route.name, &mut typed);
        serde_json::value::to_raw_value(&typed).map_err(|e| McpError::internal_error(e.to_string(), None))
    }
}

/// `result` without `resultType` and without a `structuredContent` that is
/// not an object, its other fields as written; None when it has neither (or
/// cannot be read so: then it goes as it is).
fn legacy_shape(result: &RawValue) -> Option<Box<RawValue>> {
    let fields: std::collections::BTreeMap<&str, &RawValue> = serde_json::from_str(result.get()).ok()?;
    let dropped = |key: &str, value: &RawValue| {
        key == "resultType" || (key == "structuredContent" && !value.get().starts_with('{'))
    };
    if !fields.iter().any(|(key, value)| dropped(key, value)) {
        return None;
    }
    let mut out = String::with_capacity(result.get().len());
    out.push('{');
    for (key, value) in fields.iter().filter(|(key, value)| !dropped(key, value)) {
        if out.len() > 1 {
            out.push(',');
        }
        // A key read as a plain string is written back as one.
        out.push_str(&serde_json::to_string(key).ok()?);
        out.push(':');
        out.push_str(value.get());
    }
    out.push('}');
    RawValue::from_string(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(arguments: Option<Box<RawValue>>, meta: serde_json::Value, progress: bool) -> RawToolCall {
        RawToolCall {
            name: "shown".into(),
            arguments,
            meta: meta.as_object().cloned().unwrap_or_default(),
            progress: progress.then_some(ProgressToken(NumberOrString::Number(7))),
        }
    }

    #[test]
    fn the_request_carries_the_arguments_as_written_and_our_progress_token() {
        let arguments = RawValue::from_string(r#"{ "b": 1.50, "a": [true] }"#.into()).unwrap();
        let line = call(Some(arguments), serde_json::json!({ "trace": "x" }), true).request(
            r#""mm-raw-3""#,
            "echo",
            &serde_json::Map::new(),
        );
        let text = String::from_utf8(line).unwrap();
        assert_eq!(
            text,
            r#"{"jsonrpc":"2.0","id":"mm-raw-3","method":"tools/call","params":{"name":"echo","arguments":{ "b": 1.50, "a": [true] },"_meta":{"trace":"x","progressToken":"mm-raw-3"}}}"#
        );
        let plain = String::from_utf8(call(None, serde_json::json!({}), false).request(
            "\"mm-raw-4\"",
            "a\"b",
            &serde_json::Map::new(),
        ))
        .unwrap();
        assert_eq!(
            plain,
            r#"{"jsonrpc":"2.0","id":"mm-raw-4","method":"tools/call","params":{"name":"a\"b"}}"#
        );
        let _: serde_json::Value = serde_json::from_str(&plain).unwrap();
    }

    #[test]
    fn a_modern_result_loses_what_an_older_client_does_not_know() {
        let result = RawValue::from_string(
            r#"{"content":[{"type":"text","text":"x"}],"resultType":"complete","structuredContent":[1],"n":1.50}"#
                .into(),
        )
        .unwrap();
        let legacy = legacy_shape(&result).unwrap();
        assert_eq!(legacy.get(), r#"{"content":[{"type":"text","text":"x"}],"n":1.50}"#);
        let object = RawValue::from_string(r#"{"structuredContent":{"a":1},"content":[]}"#.into()).unwrap();
        assert!(legacy_shape(&object).is_none(), "nothing to drop");
    }

    #[test]
    fn the_typed_request_is_the_same_call() {
        let arguments = RawValue::from_string(r#"{"a":1}"#.into()).unwrap();
        let ClientRequest::CallToolRequest(request) = call(Some(arguments), serde_json::json!({ "trace": "x" }), true)
            .typed("echo")
            .unwrap()
        else {
            panic!("not a tool call");
        };
        assert_eq!(request.params.name, "echo");
        assert_eq!(request.params.arguments.unwrap()["a"], 1);
        let bad = RawValue::from_string("[1]".into()).unwrap();
        assert!(call(Some(bad), serde_json::json!({}), false).typed("echo").is_err());
    }
}
