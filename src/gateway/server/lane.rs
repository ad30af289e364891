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
//! the catalog shows them, what rmcp's client tells a 2026-07-28 server
//! with each request, and what rmcp leaves out of a result for a client of
//! an earlier protocol. It is not taken for a cached tool or a
//! `session: per_client` server (their calls need the typed path). One
//! difference is deliberate: a server that answers input-required with
//! nothing but a state gets the call again with it whatever its protocol
//! (the typed path does so for a 2026-07-28 server and refuses the answer
//! of an earlier one).

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
    FreedOnDrop, GatewayServer, Method, client_meta_of, closed, deadline_after, latest_deadline, metered,
    rewrite_tool_result, timed_out, unexpected,
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
    /// with the `_meta` members `protocol` (encoded: a 2026-07-28 server's
    /// per-request context) after the client's; progress (if the client
    /// wants it) under a token equal to the id.
    fn request(&self, id: &str, tool: &str, state: Option<&str>, protocol: &str) -> Vec<u8> {
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
        if let Some(state) = state {
            out.extend_from_slice(br#","requestState":"#);
            let _ = serde_json::to_writer(&mut out, state);
        }
        if !self.meta.is_empty() || !protocol.is_empty() || self.progress.is_some() {
            out.extend_from_slice(br#","_meta":{"#);
            let mut first = true;
            let mut next = |out: &mut Vec<u8>| {
                if !std::mem::take(&mut first) {
                    out.push(b',');
                }
            };
            for (key, value) in &self.meta {
                next(&mut out);
                let _ = serde_json::to_writer(&mut out, key);
                out.push(b':');
                let _ = serde_json::to_writer(&mut out, value);
            }
            if !protocol.is_empty() {
                next(&mut out);
                out.extend_from_slice(protocol.as_bytes());
            }
            if self.progress.is_some() {
                next(&mut out);
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
            return self.typed_for_older_client(route, result);
        };
        self.registry
            .counters
            .gateway_lane_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let exchange = self.exchange_raw(route, upstream, &lane, tool, &call, ctx, deadline);
        metered(route, Method::CallTool, exchange).await
    }

    /// The call, made again (within the same deadline) while its server
    /// asks for nothing but the call again with its `requestState`, as the
    /// typed path does.
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
        let mut state = None;
        for _ in 0..super::MAX_INPUT_ROUNDS {
            let attempt = self.attempt(
                route,
                upstream.clone(),
                lane,
                (tool, call, state.as_deref()),
                ctx,
                deadline,
            );
            match attempt.await? {
                Answer::Done(result) => return Ok(result),
                Answer::Again(next) => state = Some(next),
            }
        }
        Err(McpError::internal_error(
            format!(
                "server '{}' asked for the call again {} times in one request; mcp-manager stopped there",
                route.name,
                super::MAX_INPUT_ROUNDS
            ),
            None,
        ))
    }

    /// One request of a call in the lane, and what came of it.
    async fn attempt(
        &self,
        route: &ServerRoute,
        upstream: Arc<Upstream>,
        lane: &Arc<RawLane>,
        (tool, call, state): (&str, &RawToolCall, Option<&str>),
        ctx: &RequestContext<RoleServer>,
        deadline: tokio::time::Instant,
    ) -> Result<Answer, McpError> {
        let server = route.name.as_str();
        // A 2025-era client is asked the server's questions as server requests.
        let (interject, _) = tokio::sync::mpsc::unbounded_channel();
        let caller = self.caller(ctx, &interject, false);
        // What rmcp's client tells a 2026-07-28 server with each request:
        // the protocol, who asks, what its client can do, the log level.
        // The lane's clients are 2025-era sessions (`api::direct`): all of
        // it is the session's, the same for each of its calls (encoded once).
        let protocol = match upstream.peer.peer_info() {
            Some(info) if upstream.speaks_modern() => {
                let client = ctx.peer.peer_info();
                let capabilities = client.as_ref().map(|client| &client.capabilities);
                Some(self.session.lane_meta(&info.protocol_version, |level| {
                    protocol_members(&info.protocol_version, capabilities, level)
                }))
            }
            _ => None,
        };
        let mut pending = Pending::new(upstream, route.metrics.clone(), caller);
        let protocol = protocol.as_deref().unwrap_or_default();
        let mut sent = match lane.call(|id| call.request(id, tool, state, protocol)).await {
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
        // As on the typed path: progress starts the timeout again, up to a
        // latest deadline.
        let latest = latest_deadline(deadline, route.request_timeout);
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
    /// has resource blocks (their URIs are shown as the catalog shows them)
    /// or what a client of an earlier protocol does not know (left out as
    /// rmcp leaves it out). A 2026-07-28 server's questions (an
    /// input-required result) go to the client as on the typed path, which
    /// a client of the lane cannot answer: it declared no sampling,
    /// elicitation or roots; a request for nothing but the call again with
    /// its state is [`Answer::Again`].
    async fn shown(
        &self,
        route: &ServerRoute,
        result: &RawValue,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Answer, McpError> {
        if result.get().contains("\"input_required\"")
            && let Ok(asked) = serde_json::from_str::<InputRequiredResult>(result.get())
        {
            let questions = asked.input_requests.unwrap_or_default();
            if questions.is_empty() {
                return asked
                    .request_state
                    .map(Answer::Again)
                    .ok_or_else(|| unexpected(&route.name));
            }
            let capabilities = ctx.client_capabilities();
            relay::ask_client(&ctx.peer, &ctx.id, capabilities.as_ref(), questions, &route.name).await?;
            // Answered: the typed path would make the request again with
            // the answers; a client of the lane never gets here.
            return Err(unexpected(&route.name));
        }
        let shown = match legacy_shape(result) {
            Legacy::AsIs => self.shown_links(route, result),
            Legacy::Reshaped(reshaped) => self.shown_links(route, &reshaped),
            Legacy::Typed => {
                let typed: CallToolResult = serde_json::from_str(result.get()).map_err(|_| unexpected(&route.name))?;
                self.typed_for_older_client(route, ServerResult::CallToolResult(typed))
            }
        };
        shown.map(Answer::Done)
    }

    /// A typed result as rmcp shows it to a client of an earlier protocol,
    /// its URIs as the catalog shows them.
    fn typed_for_older_client(&self, route: &ServerRoute, mut result: ServerResult) -> Result<Box<RawValue>, McpError> {
        result.strip_result_type_for_legacy_peer();
        result.strip_non_object_output_for_legacy_peer();
        match result {
            ServerResult::CallToolResult(mut result) => {
                rewrite_tool_result(&self.registry.catalog(), &route.name, &mut result);
                serde_json::value::to_raw_value(&result).map_err(|e| McpError::internal_error(e.to_string(), None))
            }
            _ => Err(unexpected(&route.name)),
        }
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

/// What rmcp's client puts in the `_meta` of each request to a server of
/// `protocol` (2026-07-28): the protocol, the gateway's identity, what the
/// client can do (what the gateway relays of it) and the log level; as
/// members, encoded.
#[allow(deprecated)] // the log level: deprecated by the 2026 revision, not gone
fn protocol_members(
    protocol: &rmcp::model::ProtocolVersion,
    capabilities: Option<&rmcp::model::ClientCapabilities>,
    level: Option<rmcp::model::LoggingLevel>,
) -> String {
    let mut meta = client_meta_of(capabilities, level);
    meta.set_protocol_version(protocol.clone());
    meta.set_client_info(relay::upstream_identity());
    members(&meta.0.0)
}

/// The members of `object`, encoded as inside its braces (none: empty).
fn members(object: &serde_json::Map<String, serde_json::Value>) -> String {
    // JSON values with string keys always encode.
    let encoded = serde_json::to_string(object).unwrap_or_else(|_| "{}".into());
    encoded[1..encoded.len() - 1].to_string()
}

/// What a result needs before a client of an earlier protocol gets it.
enum Legacy {
    /// Nothing: it goes as the server wrote it.
    AsIs,
    /// Without `resultType: "complete"`, its other fields as written.
    Reshaped(Box<RawValue>),
    /// Tool output that is not an object: rmcp's own rules move it into the
    /// content.
    Typed,
}

/// What a result needs (rmcp's rules for a peer of an earlier protocol,
/// read off its top-level members only). A result whose text names neither
/// member plainly (a name written with escapes) goes as it is.
fn legacy_shape(result: &RawValue) -> Legacy {
    if !result.get().contains("\"resultType\"") && !result.get().contains("\"structuredContent\"") {
        return Legacy::AsIs;
    }
    let Ok(Members(members)) = serde_json::from_str::<Members>(result.get()) else {
        return Legacy::AsIs;
    };
    if members
        .iter()
        .any(|(key, value)| key.0 == "structuredContent" && !value.get().starts_with('{'))
    {
        return Legacy::Typed;
    }
    let complete = |key: &Key, value: &RawValue| key.0 == "resultType" && value.get() == "\"complete\"";
    if !members.iter().any(|(key, value)| complete(key, value)) {
        return Legacy::AsIs;
    }
    // The other members as written, in their order.
    let mut out = String::with_capacity(result.get().len());
    out.push('{');
    for (key, value) in members.iter().filter(|(key, value)| !complete(key, value)) {
        if out.len() > 1 {
            out.push(',');
        }
        // A key read as a plain string is written back as one.
        let Ok(key) = serde_json::to_string(&key.0) else {
            return Legacy::AsIs;
        };
        out.push_str(&key);
        out.push(':');
        out.push_str(value.get());
    }
    out.push('}');
    RawValue::from_string(out).map_or(Legacy::AsIs, Legacy::Reshaped)
}

/// A member's name (borrowed unless it has escapes).
#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] std::borrow::Cow<'a, str>);

/// An object's members in their order, their values unread.
struct Members<'a>(Vec<(Key<'a>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Members<'de>, M::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// What came of one request of a call in the lane.
enum Answer {
    /// Its result, as the client sees it.
    Done(Box<RawValue>),
    /// The server wants the call again with this `requestState`.
    Again(String),
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
            None,
            r#""io.modelcontextprotocol/v":1"#,
        );
        let text = String::from_utf8(line).unwrap();
        assert_eq!(
            text,
            r#"{"jsonrpc":"2.0","id":"mm-raw-3","method":"tools/call","params":{"name":"echo","arguments":{ "b": 1.50, "a": [true] },"_meta":{"trace":"x","io.modelcontextprotocol/v":1,"progressToken":"mm-raw-3"}}}"#
        );
        let plain =
            String::from_utf8(call(None, serde_json::json!({}), false).request("\"mm-raw-4\"", "a\"b", Some("s"), ""))
                .unwrap();
        assert_eq!(
            plain,
            r#"{"jsonrpc":"2.0","id":"mm-raw-4","method":"tools/call","params":{"name":"a\"b","requestState":"s"}}"#
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
        assert!(
            matches!(legacy_shape(&result), Legacy::Typed),
            "rmcp moves a list into the content"
        );
        let complete = RawValue::from_string(
            r#"{"content":[{"type":"text","text":"x"}],"resultType":"complete","structuredContent":{"a":1},"n":1.50}"#
                .into(),
        )
        .unwrap();
        let Legacy::Reshaped(reshaped) = legacy_shape(&complete) else {
            panic!("resultType stays");
        };
        assert_eq!(
            reshaped.get(),
            r#"{"content":[{"type":"text","text":"x"}],"structuredContent":{"a":1},"n":1.50}"#,
            "the other members as written, in their order"
        );
        let escaped =
            RawValue::from_string(r#"{"result\u0054ype":"complete","structuredContent":{},"a\"b":1}"#.into()).unwrap();
        let Legacy::Reshaped(reshaped) = legacy_shape(&escaped) else {
            panic!("once the text names a member plainly, every name is read, escapes and all");
        };
        assert_eq!(reshaped.get(), r#"{"structuredContent":{},"a\"b":1}"#);
        let other = RawValue::from_string(r#"{"resultType":"task","content":[]}"#.into()).unwrap();
        assert!(matches!(legacy_shape(&other), Legacy::AsIs), "rmcp drops only complete");
    }

    #[test]
    #[allow(deprecated)] // the log level: deprecated by the 2026 revision, not gone
    fn a_modern_server_is_told_the_sessions_protocol_client_and_level() {
        let capabilities: rmcp::model::ClientCapabilities = serde_json::from_value(serde_json::json!({
            "experimental": { "secret-ish": {} },
            "extensions": { "io.modelcontextprotocol/tasks": { "a": 1 }, "other": {} }
        }))
        .unwrap();
        let protocol = rmcp::model::ProtocolVersion::V_2026_07_28;
        let members = protocol_members(&protocol, Some(&capabilities), Some(rmcp::model::LoggingLevel::Debug));
        let meta: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&format!("{{{members}}}")).expect("members of an object");
        let mut expected = rmcp::model::RequestMetaObject::default();
        expected.set_protocol_version(protocol.clone());
        expected.set_client_info(relay::upstream_identity());
        expected.set_log_level(rmcp::model::LoggingLevel::Debug);
        expected.set_client_capabilities(relay::relayable(&capabilities));
        assert_eq!(meta, expected.0.0, "what rmcp's client would send for this session");
        assert!(!members.contains("secret-ish"), "only what the gateway relays");
        let without = protocol_members(&protocol, None, None);
        assert!(
            !without.contains("logLevel") && without.contains("mcp-manager"),
            "{without}"
        );
    }

    #[test]
    fn members_are_an_objects_inside() {
        let object = serde_json::json!({ "a": 1, "b": { "c": "\"" } });
        assert_eq!(members(object.as_object().unwrap()), r#""a":1,"b":{"c":"\""}"#);
        assert_eq!(members(&serde_json::Map::new()), "");
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
