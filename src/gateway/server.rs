//! The gateway's MCP server (rmcp): one per client session, over streamable HTTP
//! (`/mcp`) or the local socket behind `mcp-manager connect`. Lists come from the
//! registry's catalog; requests are forwarded on the owning server's upstream
//! session, with limits, a timeout, cancellation and progress relayed.

use std::ops::Not;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CallToolResult, CancelledNotification,
    CancelledNotificationParam, ClientRequest, ContentBlock, ErrorCode, GetPromptRequest, GetPromptRequestParams,
    GetPromptResponse, Implementation, InitializeResult, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, ListToolsResult, PaginatedRequestParams, ProgressToken, ReadResourceRequest,
    ReadResourceRequestParams, ReadResourceResponse, RequestId, ResourceContents, ServerCapabilities,
    ServerNotification, ServerResult, SubscriptionFilter, ToolListChangedNotification,
};
use rmcp::service::{NotificationContext, Peer, RequestContext, RoleServer, SubscriptionContext};
use rmcp::{ErrorData as McpError, ServerHandler, ServiceError};
use serde_json::json;
use tokio::sync::watch;

use super::metrics::Method;
use super::naming;
use super::registry::{Catalog, Refusal, Registry, ServerRoute, Upstream};

/// Request metrics are on unless `MCP_MANAGER_GATEWAY_METRICS=off` (which
/// exists to measure their cost: `cargo bench --bench gateway`).
fn metrics_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| {
        std::env::var("MCP_MANAGER_GATEWAY_METRICS")
            .is_ok_and(|v| v == "off")
            .not()
    })
}

/// JSON-RPC error codes of the gateway (server-error range).
pub mod codes {
    /// The owning server is not running (starting, restarting, stopped, failed).
    pub const UNAVAILABLE: i32 = -32010;
    /// Over `max_concurrent_requests` on every replica.
    pub const BUSY: i32 = -32011;
    /// Over `request_rate_limit`.
    pub const RATE_LIMITED: i32 = -32012;
    /// No answer within `request_timeout`; the request was cancelled upstream.
    pub const TIMEOUT: i32 = -32013;
    /// The server's connection closed during the request.
    pub const UPSTREAM_CLOSED: i32 = -32014;
}

/// Requests that may wait for a slot, per slot (`max_concurrent_requests`):
/// beyond `max_concurrent_requests × 16` waiting, a request is refused (-32011).
const QUEUE_PER_SLOT: u32 = 16;

/// Tells the next queued request of a server that a request ended.
struct FreedOnDrop<'a>(&'a crate::gateway::metrics::ServerMetrics);

impl Drop for FreedOnDrop<'_> {
    fn drop(&mut self) {
        self.0.slot_freed();
    }
}

/// Wait this long after a change before telling clients, so that a burst of
/// changes (a restart of many servers) makes one notification.
const NOTIFY_DEBOUNCE: Duration = Duration::from_millis(50);

fn error(code: i32, message: String, server: &str) -> McpError {
    McpError::new(ErrorCode(code), message, Some(json!({ "server": server })))
}

/// One gateway session.
#[derive(Clone)]
pub struct GatewayServer {
    registry: Arc<Registry>,
}

impl GatewayServer {
    pub fn new(registry: Arc<Registry>) -> Self {
        GatewayServer { registry }
    }

    fn unknown(&self, catalog: &Catalog, kind: &str, name: &str) -> McpError {
        if let Some((server, reason)) = catalog.unavailable_for(kind, name) {
            return error(
                codes::UNAVAILABLE,
                format!("server '{server}' is not available: {reason}"),
                server,
            );
        }
        McpError::invalid_params(format!("unknown {kind} '{name}'"), None)
    }

    /// Sends `request` to the least-busy replica of `route` and waits for the
    /// answer, `request_timeout`, or the client's cancellation.
    async fn forward(
        &self,
        route: &ServerRoute,
        method: Method,
        request: ClientRequest,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<ServerResult, McpError> {
        let server = route.name.as_str();
        // One deadline for the whole request: waiting for a slot and the answer.
        let deadline = tokio::time::Instant::now() + route.request_timeout;
        // Our place in the queue, held from the first wait until we get a slot.
        let mut place = None;
        let mut woken = false;
        let upstream = loop {
            // Registered before looking, so a slot freed meanwhile is not missed.
            let freed = route.metrics.freed();
            tokio::pin!(freed);
            freed.as_mut().enable();
            // The route as it is now: a restart while we waited changes it.
            let catalog = self.registry.catalog();
            let Some(current) = catalog.server(server) else {
                if woken {
                    route.metrics.slot_freed();
                }
                route.metrics.reject();
                let reason = catalog.unavailable(server).unwrap_or("it is not running");
                return Err(error(
                    codes::UNAVAILABLE,
                    format!("server '{server}' is not available: {reason}"),
                    server,
                ));
            };
            let refusal = match current.pick() {
                Ok(upstream) => break upstream,
                Err(refusal) => refusal,
            };
            if let Refusal::Busy { limit } = refusal
                && limit > 0
            {
                if place.is_none() {
                    place = route.metrics.enqueue(limit.saturating_mul(QUEUE_PER_SLOT));
                }
                if place.is_some() {
                    // Every replica is at max_concurrent_requests: wait in the queue.
                    tokio::select! {
                        () = &mut freed => {
                            woken = true;
                            continue;
                        }
                        () = tokio::time::sleep_until(deadline) => {
                            route.metrics.reject();
                            return Err(error(
                                codes::TIMEOUT,
                                format!(
                                    "server '{server}' had no free slot within request_timeout ({}): {limit} requests in flight (max_concurrent_requests)",
                                    crate::config::duration::format(route.request_timeout)
                                ),
                                server,
                            ));
                        }
                        () = ctx.ct.cancelled() => {
                            return Err(McpError::new(ErrorCode::INTERNAL_ERROR, "cancelled by the client".to_string(), None));
                        }
                    }
                }
            }
            // Refused: a wake this request took goes to the next one.
            if woken {
                route.metrics.slot_freed();
            }
            route.metrics.reject();
            return Err(match refusal {
                Refusal::Busy { limit } => error(
                    codes::BUSY,
                    format!(
                        "server '{server}' is busy: {limit} requests in flight (max_concurrent_requests) and {} waiting",
                        limit.saturating_mul(QUEUE_PER_SLOT)
                    ),
                    server,
                ),
                Refusal::RateLimited { retry_after } => McpError::new(
                    ErrorCode(codes::RATE_LIMITED),
                    format!(
                        "server '{server}' is over its request_rate_limit; retry in {} ms",
                        retry_after.as_millis().max(1)
                    ),
                    Some(json!({ "server": server, "retry_after_ms": retry_after.as_millis().max(1) as u64 })),
                ),
            });
        };
        drop(place);
        // However this request ends, the next one in the queue is told.
        let _freed = FreedOnDrop(&route.metrics);
        let mut metric = metrics_enabled().then(|| route.metrics.start(method));
        let result = self.exchange(route, upstream, request, ctx, deadline).await;
        if let (Err(_), Some(metric)) = (&result, metric.as_mut()) {
            metric.fail();
        }
        result
    }

    async fn exchange(
        &self,
        route: &ServerRoute,
        upstream: Arc<Upstream>,
        request: ClientRequest,
        ctx: &RequestContext<RoleServer>,
        deadline: tokio::time::Instant,
    ) -> Result<ServerResult, McpError> {
        let server = route.name.as_str();
        let suspect = upstream.suspect.clone();
        // The connection failed under the request: the instance checks at once.
        let lost = |e: &ServiceError| {
            suspect.notify_one();
            closed(server, e)
        };
        let mut call = Pending::new(upstream);
        let handle = call
            .upstream
            .peer
            .send_cancellable_request(request, rmcp::service::PeerRequestOptions::no_options())
            .await
            .map_err(|e| lost(&e))?;
        call.id = Some(handle.id.clone());
        if let Some(client_token) = ctx.meta.get_progress_token() {
            let mut routes = call.upstream.progress.lock().unwrap_or_else(|p| p.into_inner());
            routes.insert(handle.progress_token.clone(), (ctx.peer.clone(), client_token));
            call.progress = Some(handle.progress_token.clone());
        }
        tokio::select! {
            response = handle.rx => {
                call.answered = true;
                match response {
                    Ok(Ok(result)) => Ok(result),
                    Ok(Err(ServiceError::McpError(e))) => Err(e),
                    Ok(Err(e)) => Err(lost(&e)),
                    Err(_) => Err(lost(&ServiceError::TransportClosed)),
                }
            }
            () = ctx.ct.cancelled() => {
                call.cancel_reason = "cancelled by the client";
                Err(McpError::new(ErrorCode::INTERNAL_ERROR, "cancelled by the client".to_string(), None))
            }
            () = tokio::time::sleep_until(deadline) => {
                call.cancel_reason = "request_timeout";
                Err(error(
                    codes::TIMEOUT,
                    format!(
                        "server '{server}' did not answer within request_timeout ({}); the request was cancelled",
                        crate::config::duration::format(route.request_timeout)
                    ),
                    server,
                ))
            }
        }
    }

    /// Sends `list_changed` for every list whose fingerprint moved, until `send`
    /// fails (the session is gone) or `stop` fires.
    async fn relay_changes<F, Fut>(
        mut changes: watch::Receiver<Arc<Catalog>>,
        stop: tokio_util::sync::CancellationToken,
        alive: impl Fn() -> bool,
        send: F,
    ) where
        F: Fn(ServerNotification) -> Fut,
        Fut: Future<Output = bool>,
    {
        let mut sent = changes.borrow_and_update().fingerprints;
        // A session that ends quietly is noticed here, not only at the next change.
        let mut check = tokio::time::interval(Duration::from_secs(10));
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = stop.cancelled() => return,
                _ = check.tick() => if alive() { continue } else { return },
            }
            tokio::time::sleep(NOTIFY_DEBOUNCE).await;
            let now = changes.borrow_and_update().fingerprints;
            let notes = [
                ServerNotification::ToolListChangedNotification(ToolListChangedNotification::default()),
                ServerNotification::ResourceListChangedNotification(Default::default()),
                ServerNotification::PromptListChangedNotification(Default::default()),
            ];
            for (i, note) in notes.into_iter().enumerate() {
                if now[i] != sent[i] && !send(note).await {
                    return;
                }
            }
            sent = now;
        }
    }
}

/// One page of a catalog list, per `gateway.page_size` and the client's cursor.
/// One page of a list: `page_size` items when it is set, else as many as fit
/// in [`naming::PAGE_BYTES`].
/// A cursor names the list it pages (its fingerprint): one from a list that
/// has changed since is refused, instead of skipping or repeating items.
fn paginate<T: Clone>(
    items: &[T],
    sizes: &[usize],
    page_size: usize,
    request: Option<PaginatedRequestParams>,
    fingerprint: u64,
) -> Result<(Vec<T>, Option<String>), McpError> {
    let cursor = request.and_then(|r| r.cursor);
    let offset = match cursor.as_deref() {
        None => None,
        Some(c) => {
            let (offset, list) = c
                .rsplit_once('@')
                .ok_or_else(|| McpError::invalid_params("invalid pagination cursor", None))?;
            if list != format!("{fingerprint:016x}") {
                return Err(McpError::invalid_params(
                    "the list changed since this cursor was given; list again from the start",
                    None,
                ));
            }
            Some(offset)
        }
    };
    let (range, next) = naming::page_by_size(sizes, offset, page_size, naming::PAGE_BYTES)
        .filter(|(range, _)| range.end <= items.len())
        .ok_or_else(|| McpError::invalid_params("invalid pagination cursor", None))?;
    Ok((items[range].to_vec(), next.map(|n| format!("{n}@{fingerprint:016x}"))))
}

/// A request sent upstream. Dropping it, however the handler ends (answered,
/// timed out, cancelled, or its future dropped because the client went away),
/// frees the replica's in-flight slot, forgets the progress route and, unless
/// the upstream answered, tells the upstream to cancel.
struct Pending {
    upstream: Arc<Upstream>,
    id: Option<RequestId>,
    progress: Option<ProgressToken>,
    answered: bool,
    cancel_reason: &'static str,
}

impl Pending {
    fn new(upstream: Arc<Upstream>) -> Self {
        upstream.in_flight.fetch_add(1, Ordering::Relaxed);
        Pending {
            upstream,
            id: None,
            progress: None,
            answered: false,
            cancel_reason: "the client went away",
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.upstream.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(token) = &self.progress {
            self.upstream
                .progress
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(token);
        }
        if let (false, Some(id)) = (self.answered, self.id.take()) {
            let peer = self.upstream.peer.clone();
            let note = CancelledNotification::new(CancelledNotificationParam::new(
                Some(id),
                Some(self.cancel_reason.to_string()),
            ));
            // Drop cannot await: send from a task (we are always inside the runtime).
            tokio::spawn(async move {
                let _ = peer.send_notification(note.into()).await;
            });
        }
    }
}

fn closed(server: &str, e: &ServiceError) -> McpError {
    error(
        codes::UPSTREAM_CLOSED,
        format!(
            "server '{server}' was lost during the request ({}); mcp-manager reconnects or restarts it",
            crate::transport::describe_service_error(e)
        ),
        server,
    )
}

fn unexpected(server: &str) -> McpError {
    McpError::internal_error(format!("server '{server}' sent an unexpected response"), None)
}

/// Rewrites upstream URIs in read results so they route back here, the way
/// the lists show them.
fn rewrite_contents(catalog: &Catalog, server: &str, contents: &mut [ResourceContents]) {
    for content in contents {
        rewrite_content_uri(catalog, server, content);
    }
}

fn rewrite_content_uri(catalog: &Catalog, server: &str, content: &mut ResourceContents) {
    let uri = match content {
        ResourceContents::TextResourceContents { uri, .. } | ResourceContents::BlobResourceContents { uri, .. } => uri,
        #[allow(unreachable_patterns)]
        _ => return,
    };
    *uri = catalog.exposed_uri(server, uri);
}

/// Resource links and embedded resources in a tool result name upstream URIs:
/// rewritten like `resources/read`'s, so a client can read back every URI it
/// is shown.
fn rewrite_tool_result(catalog: &Catalog, server: &str, result: &mut CallToolResult) {
    for block in &mut result.content {
        rewrite_block(catalog, server, block);
    }
}

/// An embedded resource or resource link (in a tool result or a prompt),
/// shown the way the catalog shows its server's URIs.
fn rewrite_block(catalog: &Catalog, server: &str, block: &mut ContentBlock) {
    match block {
        ContentBlock::Resource(embedded) => rewrite_content_uri(catalog, server, &mut embedded.resource),
        ContentBlock::ResourceLink(link) => link.uri = catalog.exposed_uri(server, &link.uri),
        _ => {}
    }
}

impl ServerHandler for GatewayServer {
    fn get_info(&self) -> InitializeResult {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_resources()
            .enable_resources_list_changed()
            .enable_prompts()
            .enable_prompts_list_changed()
            .build();
        InitializeResult::new(capabilities)
            .with_server_info(Implementation::new("mcp-manager", env!("CARGO_PKG_VERSION")))
            .with_instructions({
                let catalog = self.registry.catalog();
                let separator = &catalog.separator;
                if catalog.names_as_written() {
                    format!(
                        "The tools, resources and prompts of every healthy server managed by mcp-manager, named as their servers wrote them; where two servers offer the same name or URI, it is SERVER{separator}NAME or mcp-manager://SERVER/URI."
                    )
                } else {
                    format!(
                        "The tools, resources and prompts of every healthy server managed by mcp-manager. Tools and prompts are named SERVER{separator}NAME; resource URIs are mcp-manager://SERVER/URI."
                    )
                }
            })
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let catalog = self.registry.catalog();
        let (items, next) = paginate(
            &catalog.tools,
            &catalog.sizes()[0],
            catalog.page_size,
            request,
            catalog.fingerprints[0],
        )?;
        let mut result = ListToolsResult::with_all_items(items);
        result.next_cursor = next;
        Ok(result)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let catalog = self.registry.catalog();
        let Some((route, tool)) = catalog.tool(&request.name) else {
            return Err(self.unknown(&catalog, "tool", &request.name));
        };
        let ttl = route.cache_ttls.get(tool).copied();
        let cache_key = ttl.map(|_| {
            let args = request
                .arguments
                .as_ref()
                .map(|a| serde_json::to_string(a).unwrap_or_default());
            format!("{tool}\0{}", args.unwrap_or_default())
        });
        if let Some(key) = &cache_key
            && let Some(mut hit) = route.cache.get(key)
        {
            route.metrics.cache_hit();
            // Cached as the server answered: URIs are shown as the catalog says now.
            rewrite_tool_result(&catalog, &route.name, &mut hit);
            return Ok(CallToolResponse::Complete(hit));
        }
        let mut params = request.clone();
        params.name = tool.clone().into();
        params.meta = None;
        let result = self
            .forward(
                route,
                Method::CallTool,
                ClientRequest::CallToolRequest(CallToolRequest::new(params)),
                &ctx,
            )
            .await?;
        match result {
            ServerResult::CallToolResult(mut result) => {
                if let (Some(key), Some(ttl)) = (cache_key, ttl)
                    && result.is_error != Some(true)
                {
                    route.cache.put(key, ttl, result.clone());
                }
                rewrite_tool_result(&self.registry.catalog(), &route.name, &mut result);
                Ok(CallToolResponse::Complete(result))
            }
            ServerResult::InputRequiredResult(r) => Ok(CallToolResponse::InputRequired(r)),
            ServerResult::CreateTaskResult(r) => Ok(CallToolResponse::Task(r)),
            _ => Err(unexpected(&route.name)),
        }
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let catalog = self.registry.catalog();
        let (items, next) = paginate(
            &catalog.resources,
            &catalog.sizes()[1],
            catalog.page_size,
            request,
            catalog.fingerprints[1],
        )?;
        let mut result = ListResourcesResult::with_all_items(items);
        result.next_cursor = next;
        Ok(result)
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let catalog = self.registry.catalog();
        let (items, next) = paginate(
            &catalog.templates,
            &catalog.sizes()[2],
            catalog.page_size,
            request,
            catalog.fingerprints[1],
        )?;
        let mut result = ListResourceTemplatesResult::with_all_items(items);
        result.next_cursor = next;
        Ok(result)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let catalog = self.registry.catalog();
        let Some((server, uri)) = catalog.resource_route(&request.uri) else {
            return Err(McpError::invalid_params(
                format!(
                    "unknown resource '{}': no server offers it (prefixed gateway URIs look like mcp-manager://SERVER/URI)",
                    request.uri
                ),
                Some(json!({ "uri": request.uri })),
            ));
        };
        let Some(route) = catalog.server(server) else {
            if let Some(reason) = catalog.unavailable(server) {
                return Err(error(
                    codes::UNAVAILABLE,
                    format!("server '{server}' is not available: {reason}"),
                    server,
                ));
            }
            return Err(McpError::invalid_params(format!("unknown server '{server}'"), None));
        };
        let mut params = request.clone();
        params.uri = uri.to_string();
        params.meta = None;
        let result = self
            .forward(
                route,
                Method::ReadResource,
                ClientRequest::ReadResourceRequest(ReadResourceRequest::new(params)),
                &ctx,
            )
            .await?;
        match result {
            ServerResult::ReadResourceResult(mut result) => {
                rewrite_contents(&catalog, server, &mut result.contents);
                Ok(ReadResourceResponse::Complete(result))
            }
            ServerResult::InputRequiredResult(r) => Ok(ReadResourceResponse::InputRequired(r)),
            _ => Err(unexpected(server)),
        }
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let catalog = self.registry.catalog();
        let (items, next) = paginate(
            &catalog.prompts,
            &catalog.sizes()[3],
            catalog.page_size,
            request,
            catalog.fingerprints[2],
        )?;
        let mut result = ListPromptsResult::with_all_items(items);
        result.next_cursor = next;
        Ok(result)
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let catalog = self.registry.catalog();
        let Some((route, prompt)) = catalog.prompt(&request.name) else {
            return Err(self.unknown(&catalog, "prompt", &request.name));
        };
        let mut params = request.clone();
        params.name = prompt.clone();
        params.meta = None;
        let result = self
            .forward(
                route,
                Method::GetPrompt,
                ClientRequest::GetPromptRequest(GetPromptRequest::new(params)),
                &ctx,
            )
            .await?;
        match result {
            ServerResult::GetPromptResult(mut result) => {
                let catalog = self.registry.catalog();
                for message in &mut result.messages {
                    rewrite_block(&catalog, &route.name, &mut message.content);
                }
                Ok(GetPromptResponse::Complete(result))
            }
            ServerResult::InputRequiredResult(r) => Ok(GetPromptResponse::InputRequired(r)),
            _ => Err(unexpected(&route.name)),
        }
    }

    /// Sessions of the initialize-based protocol get `list_changed` pushed.
    async fn on_initialized(&self, ctx: NotificationContext<RoleServer>) {
        self.registry.counters.gateway_sessions.fetch_add(1, Ordering::Relaxed);
        let peer: Peer<RoleServer> = ctx.peer.clone();
        let changes = self.registry.subscribe();
        let watched = peer.clone();
        tokio::spawn(Self::relay_changes(
            changes,
            tokio_util::sync::CancellationToken::new(),
            move || !watched.is_transport_closed(),
            move |note| {
                let peer = peer.clone();
                async move { peer.send_notification(note).await.is_ok() }
            },
        ));
    }

    /// Protocol 2026-07-28 clients ask for `list_changed` with `subscriptions/listen`.
    fn accepted_subscription_filter(&self, _requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        Some(
            SubscriptionFilter::builder()
                .tools_list_changed()
                .resources_list_changed()
                .prompts_list_changed()
                .build(),
        )
    }

    async fn listen(&self, subscription: SubscriptionContext) -> Result<(), McpError> {
        let stop = subscription.request_context().ct.clone();
        let sink = subscription.sink().clone();
        let accepted = subscription.accepted().clone();
        Self::relay_changes(
            self.registry.subscribe(),
            stop,
            || true,
            move |note| {
                let sink = sink.clone();
                let wanted = match &note {
                    ServerNotification::ToolListChangedNotification(_) => accepted.tools_list_changed,
                    ServerNotification::ResourceListChangedNotification(_) => accepted.resources_list_changed,
                    ServerNotification::PromptListChangedNotification(_) => accepted.prompts_list_changed,
                    _ => None,
                } == Some(true);
                async move { !wanted || sink.send(note).await.is_ok() }
            },
        )
        .await;
        Ok(())
    }
}
