//! The gateway's MCP server (rmcp): one per client session, over streamable HTTP
//! (`/mcp`) or the local socket behind `mcp-manager connect`. Lists come from the
//! registry's catalog; requests are forwarded on the owning server's upstream
//! session, with limits, a timeout, cancellation and progress relayed.

use std::ops::Not;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[allow(deprecated)] // logging/setLevel and resources/subscribe: deprecated by the 2026 revision, not gone
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, CancelTaskRequest,
    ClientCapabilities, ClientRequest, CompleteRequest, CompleteRequestParams, CompleteResult, ContentBlock,
    CustomRequest, CustomResult, ErrorCode, GetPromptRequest, GetPromptRequestParams, GetPromptResponse, GetTaskParams,
    GetTaskRequest, GetTaskResult, Implementation, InitializeResult, InputRequests, InputRequiredResult,
    InputResponses, ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, LoggingLevel,
    PaginatedRequestParams, ProtocolVersion, ReadResourceRequest, ReadResourceRequestParams, ReadResourceResponse,
    Reference, RequestMetaObject, ResourceContents, ResultType, ServerCapabilities, ServerNotification, ServerResult,
    SetLevelRequest, SetLevelRequestParams, SubscribeRequest, SubscribeRequestParams, SubscriptionFilter, Tool,
    ToolListChangedNotification, UnsubscribeRequest, UnsubscribeRequestParams, UpdateTaskParams, UpdateTaskRequest,
};
use rmcp::service::{NotificationContext, Peer, RequestContext, RoleServer, SubscriptionContext};
use rmcp::{ErrorData as McpError, ServerHandler, ServiceError};
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::metrics::Method;

mod lane;
use super::naming;
use super::registry::{Catalog, Refusal, Registry, ServerRoute, Upstream};
use super::relay::{self, Caller, ClientSession, Interjection, Live, Parked, ParkedCalls, Pending, Question};
use crate::config::spec::SessionMode;
use crate::state::InstanceId;
pub use lane::RawToolCall;

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

/// Counts a request in its server's metrics (unless they are off), and its
/// failure.
async fn metered<T>(
    route: &ServerRoute,
    method: Method,
    request: impl Future<Output = Result<T, McpError>>,
) -> Result<T, McpError> {
    let mut metric = metrics_enabled().then(|| route.metrics.start(method));
    let result = request.await;
    if let (Err(_), Some(metric)) = (&result, metric.as_mut()) {
        metric.fail();
    }
    result
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
    /// Its log level and subscriptions, and its id for the relays.
    session: Arc<ClientSession>,
    /// The session's handler (rmcp's, and its copies) ends the session when
    /// the last copy goes; a handler for one direct call has none.
    _ends: Option<Arc<tokio_util::sync::DropGuard>>,
}

impl GatewayServer {
    pub fn new(registry: Arc<Registry>) -> Self {
        let session = registry.clients.session();
        let ends = Some(Arc::new(session.end_guard()));
        GatewayServer {
            registry,
            session,
            _ends: ends,
        }
    }

    /// The handler of an existing session, for one call answered directly.
    pub fn of(registry: Arc<Registry>, session: Arc<ClientSession>) -> Self {
        GatewayServer {
            registry,
            session,
            _ends: None,
        }
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

    /// The route of a running server, or why it is not available.
    fn route<'a>(&self, catalog: &'a Catalog, server: &str) -> Result<&'a Arc<ServerRoute>, McpError> {
        catalog.server(server).ok_or_else(|| match catalog.unavailable(server) {
            Some(reason) => error(
                codes::UNAVAILABLE,
                format!("server '{server}' is not available: {reason}"),
                server,
            ),
            None => McpError::invalid_params(format!("unknown server '{server}'"), None),
        })
    }

    /// The server of a task id the gateway handed out (`SERVER/ID`), and the
    /// server's own id.
    fn task(&self, shown: &str) -> Result<(Arc<ServerRoute>, Arc<Upstream>, String), McpError> {
        let unknown = |why: &str| {
            McpError::invalid_params(format!("unknown task '{shown}'{why}"), Some(json!({ "taskId": shown })))
        };
        let (server, session, id) = parse_task_id(shown).ok_or_else(|| unknown(""))?;
        let catalog = self.registry.catalog();
        if catalog.server(server).is_none() && catalog.unavailable(server).is_none() {
            return Err(unknown(""));
        }
        let route = self.route(&catalog, server)?.clone();
        let created = |u: &Arc<Upstream>| (u.id.replica, u.id.generation) == session;
        let upstream = route
            .upstreams
            .iter()
            .find(|u| created(u))
            .cloned()
            .or_else(|| self.session.private_current(server).filter(created))
            .ok_or_else(|| unknown(": the server session that created it has ended"))?;
        Ok((route, upstream, id.to_string()))
    }

    /// A `tasks/*` request, to the server session that created the task.
    async fn task_request(
        &self,
        route: &ServerRoute,
        upstream: Arc<Upstream>,
        request: ClientRequest,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<ServerResult, McpError> {
        let deadline = deadline_after(route.request_timeout);
        metered(
            route,
            Method::Task,
            self.exchange(route, upstream, request, ctx, deadline),
        )
        .await
    }

    /// The server and upstream URI of a resource URI a client sends.
    fn resource<'a>(&self, catalog: &'a Catalog, uri: &'a str) -> Result<(&'a str, &'a str), McpError> {
        catalog.resource_route(uri).ok_or_else(|| {
            McpError::invalid_params(
                format!(
                    "unknown resource '{uri}': no server offers it (prefixed gateway URIs look like mcp-manager://SERVER/URI)"
                ),
                Some(json!({ "uri": uri })),
            )
        })
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
        let (upstream, deadline) = self.admit(route, ctx).await?;
        // However this request ends, the next one in the queue is told.
        let _freed = FreedOnDrop(&route.metrics);
        metered(route, method, self.exchange(route, upstream, request, ctx, deadline)).await
    }

    /// The replica of `route` a request goes to (the least busy, or the
    /// client's own session of a `session: per_client` server), once it has a
    /// slot, and the request's deadline; waits in the queue while every
    /// replica is at `max_concurrent_requests`. The caller holds a
    /// [`FreedOnDrop`] from here on.
    async fn admit(
        &self,
        route: &ServerRoute,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<(Arc<Upstream>, tokio::time::Instant), McpError> {
        let server = route.name.as_str();
        // A `session: per_client` server: this client's own session of it
        // (a session-less 2026-07-28 request uses the shared one), within the
        // same limits as a replica.
        let own = self.own_upstream(route, ctx).await.transpose()?;
        // One deadline for the whole request: waiting for a slot and the
        // answer (once its own session, if any, is there).
        let deadline = deadline_after(route.request_timeout);
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
            let admitted = match &own {
                Some(upstream) => current.admit(upstream),
                None => current.pick(),
            };
            let refusal = match admitted {
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
        Ok((upstream, deadline))
    }

    /// For a `session: per_client` server, this client's own session of it
    /// (started on first use); None for a shared server (or a session-less
    /// 2026-07-28 request, which uses the shared one).
    async fn own_upstream(
        &self,
        route: &ServerRoute,
        ctx: &RequestContext<RoleServer>,
    ) -> Option<Result<Arc<Upstream>, McpError>> {
        if route.spec.session != SessionMode::PerClient || !self.session.joined() {
            return None;
        }
        let starter = self.registry.private.get().and_then(std::sync::Weak::upgrade)?;
        let server = route.name.as_str();
        let started = tokio::select! {
            started = self.session.private_upstream(server, &route.spec, &starter) => started,
            () = ctx.ct.cancelled() => Err("the client cancelled the request".to_string()),
        };
        Some(started.map_err(|e| {
            error(
                codes::UNAVAILABLE,
                format!("server '{server}' is not available to this client: {e}"),
                server,
            )
        }))
    }

    /// The resources this client (or any) subscribed to on `route` changed:
    /// a 2026-07-28 server's `subscriptions/listen` is opened again with
    /// them. None when the server speaks the initialize-based protocol
    /// (`resources/subscribe` goes to it instead).
    async fn listen_again(
        &self,
        route: &ServerRoute,
        ctx: &RequestContext<RoleServer>,
    ) -> Option<Result<(), McpError>> {
        let upstreams = match self.own_upstream(route, ctx).await {
            Some(Ok(upstream)) => vec![upstream],
            Some(Err(e)) => return Some(Err(e)),
            None => route.upstreams.clone(),
        };
        if !upstreams.first()?.speaks_modern() {
            return None;
        }
        for upstream in upstreams.iter().filter(|u| u.speaks_modern()) {
            if let Err(e) = upstream.relay.listen_resources(&upstream.peer).await {
                return Some(Err(e));
            }
        }
        Some(Ok(()))
    }

    /// The client of `ctx` as the relay sees it, and where the server's
    /// questions to a 2026-07-28 client arrive.
    /// The client of `ctx` as the relay sees it. A 2026-07-28 client takes
    /// its server's questions through `interject` (they become an
    /// input-required result), where `questions` allows it.
    fn caller(
        &self,
        ctx: &RequestContext<RoleServer>,
        interject: &mpsc::UnboundedSender<Interjection>,
        questions: bool,
    ) -> Caller {
        Caller {
            peer: ctx.peer.clone(),
            request: ctx.id.clone(),
            session: self.session.id,
            capabilities: ctx.client_capabilities(),
            log_level: ctx.meta.log_level(),
            interject: (questions && modern(ctx)).then(|| interject.clone()),
        }
    }

    /// One request to `upstream` and its answer. A server that speaks
    /// 2026-07-28 is told per request what the client can do (its
    /// capabilities, its log level). Its questions (an input-required
    /// result) go to a 2026-07-28 client as they are; a client of the
    /// initialize-based protocol is asked them as server requests, and the
    /// request is made again with its answers, within the same deadline.
    async fn exchange(
        &self,
        route: &ServerRoute,
        upstream: Arc<Upstream>,
        request: ClientRequest,
        ctx: &RequestContext<RoleServer>,
        deadline: tokio::time::Instant,
    ) -> Result<ServerResult, McpError> {
        let modern_upstream = upstream.speaks_modern();
        let options = || {
            let mut options = rmcp::service::PeerRequestOptions::no_options();
            if modern_upstream {
                options.meta = Some(self.client_meta(ctx));
            }
            options
        };
        if !modern_upstream || modern(ctx) {
            return self
                .exchange_once(route, upstream, request, options(), ctx, deadline)
                .await;
        }
        let mut request = request;
        for _ in 0..MAX_INPUT_ROUNDS {
            let result = self
                .exchange_once(route, upstream.clone(), request.clone(), options(), ctx, deadline)
                .await?;
            let ServerResult::InputRequiredResult(asked) = result else {
                return Ok(result);
            };
            if asked.input_requests.as_ref().is_none_or(|q| q.is_empty()) && asked.request_state.is_none() {
                // Nothing to answer and nothing to send back: the same request again would
                // get the same answer.
                return Err(unexpected(&route.name));
            }
            let questions = asked.input_requests.unwrap_or_default();
            let capabilities = ctx.client_capabilities();
            let answers = tokio::select! {
                answers = relay::ask_client(&ctx.peer, &ctx.id, capabilities.as_ref(), questions, &route.name) => answers?,
                () = tokio::time::sleep_until(deadline) => return Err(timed_out(route)),
                () = ctx.ct.cancelled() => {
                    return Err(McpError::new(ErrorCode::INTERNAL_ERROR, "cancelled by the client".to_string(), None));
                }
            };
            if !retry_with(&mut request, answers, asked.request_state) {
                return Err(unexpected(&route.name));
            }
        }
        Err(McpError::internal_error(
            format!(
                "server '{}' asked for input {MAX_INPUT_ROUNDS} times in one request; mcp-manager stopped there",
                route.name
            ),
            None,
        ))
    }

    /// What a 2026-07-28 server is told per request about the client: its
    /// capabilities and the log level it asked for.
    fn client_meta(&self, ctx: &RequestContext<RoleServer>) -> RequestMetaObject {
        let level = if modern(ctx) {
            ctx.meta.log_level()
        } else {
            self.session.level()
        };
        client_meta_of(ctx.client_capabilities().as_ref(), level)
    }

    async fn exchange_once(
        &self,
        route: &ServerRoute,
        upstream: Arc<Upstream>,
        request: ClientRequest,
        options: rmcp::service::PeerRequestOptions,
        ctx: &RequestContext<RoleServer>,
        deadline: tokio::time::Instant,
    ) -> Result<ServerResult, McpError> {
        // Server requests (sampling, elicitation, roots) and log messages
        // during the call go to this client. (A completion cannot answer
        // with a question: its server's questions go the 2025 way.)
        let what = identity(&route.name, &request);
        let questions = !matches!(request, ClientRequest::CompleteRequest(_));
        let (interject, inputs) = mpsc::unbounded_channel();
        let caller = self.caller(ctx, &interject, questions);
        let mut call = Pending::new(upstream, route.metrics.clone(), caller);
        let handle = match call.upstream.peer.send_cancellable_request(request, options).await {
            Ok(handle) => handle,
            Err(e) => {
                call.upstream.suspect.notify_one();
                return Err(closed(&route.name, &e));
            }
        };
        call.id = Some(handle.id.clone());
        call.upstream.relay.sent(call.key, handle.id.clone());
        let ticks = Arc::new(tokio::sync::Notify::new());
        if let Some(client_token) = ctx.meta.get_progress_token() {
            call.upstream.relay.route_progress(
                handle.progress_token.clone(),
                relay::CallStream::of(ctx),
                client_token,
                ticks.clone(),
            );
            call.progress = Some(handle.progress_token.clone());
        }
        let live = Live {
            call,
            rx: handle.rx,
            inputs,
            interject,
            ticks,
        };
        self.wait(route, live, ctx, deadline, what).await
    }

    /// Waits for the answer of a request in flight upstream; if the server
    /// asks a 2026-07-28 client something meanwhile, answers with the
    /// question instead (an input-required result) and keeps the request
    /// open for the client's retry ([`GatewayServer::resume`]).
    async fn wait(
        &self,
        route: &ServerRoute,
        mut live: Live,
        ctx: &RequestContext<RoleServer>,
        deadline: tokio::time::Instant,
        what: String,
    ) -> Result<ServerResult, McpError> {
        let server = route.name.as_str();
        let suspect = live.call.upstream.suspect.clone();
        // The connection failed under the request: the instance checks at once.
        let lost = |e: &ServiceError| {
            suspect.notify_one();
            closed(server, e)
        };
        // Progress the server sends (the client asked for it with a progress
        // token) starts the timeout again, up to a latest deadline.
        let latest = latest_deadline(deadline, route.request_timeout);
        let mut deadline = deadline;
        loop {
            tokio::select! {
                response = &mut live.rx => {
                    live.call.answered = true;
                    if live.call.progress.is_some() {
                        // rmcp hands each notification to a task of its own and
                        // the answer straight to us: let the progress the server
                        // sent before its answer reach the client before it.
                        for _ in 0..4 {
                            tokio::task::yield_now().await;
                        }
                    }
                    return match response {
                        // Later tasks/* requests name the task: they find the
                        // session that created it by its id.
                        Ok(Ok(ServerResult::CreateTaskResult(mut created))) => {
                            created.task.task_id = task_id(&live.call.upstream.id, &created.task.task_id);
                            Ok(ServerResult::CreateTaskResult(created))
                        }
                        Ok(Ok(result)) => Ok(complete(result)),
                        Ok(Err(ServiceError::McpError(e))) => Err(e),
                        Ok(Err(e)) => Err(lost(&e)),
                        Err(_) => Err(lost(&ServiceError::TransportClosed)),
                    };
                }
                Some(first) = live.inputs.recv() => {
                    let mut asked = Vec::new();
                    let mut next = Some(first);
                    // A server may ask several things at once: take what comes
                    // within a moment into the same answer.
                    let gather = tokio::time::sleep(Duration::from_millis(20));
                    tokio::pin!(gather);
                    loop {
                        if let Some(Interjection { request, answer }) = next.take() {
                            asked.push((request, answer));
                        }
                        tokio::select! {
                            more = live.inputs.recv() => match more {
                                Some(more) => next = Some(more),
                                None => break,
                            },
                            () = &mut gather => break,
                        }
                    }
                    let questions = asked
                        .into_iter()
                        .enumerate()
                        .map(|(i, (request, answer))| Question {
                            key: relay::question_key(&request, i + 1),
                            request,
                            answer,
                        })
                        .collect();
                    return self.park(live, questions, what, route);
                }
                () = ctx.ct.cancelled() => {
                    live.call.cancel_reason = "cancelled by the client";
                    return Err(McpError::new(ErrorCode::INTERNAL_ERROR, "cancelled by the client".to_string(), None));
                }
                () = live.ticks.notified() => {
                    deadline = (deadline_after(route.request_timeout)).min(latest);
                }
                () = tokio::time::sleep_until(deadline) => {
                    live.call.cancel_reason = "request_timeout";
                    return Err(timed_out(route));
                }
            }
        }
    }

    /// Keeps a call whose server asked questions, for `request_timeout`, and
    /// returns the input-required result that asks the client.
    fn park(
        &self,
        live: Live,
        questions: Vec<Question>,
        what: String,
        route: &ServerRoute,
    ) -> Result<ServerResult, McpError> {
        let requests: InputRequests = questions.iter().map(|q| (q.key.clone(), q.request.clone())).collect();
        let state = self
            .registry
            .parked
            .park(Parked {
                live,
                what,
                server: route.name.clone(),
                questions,
                expires: deadline_after(route.request_timeout),
            })
            .ok_or_else(|| {
                error(
                    codes::BUSY,
                    format!(
                        "{} calls already wait for their clients' answers; the call was cancelled",
                        ParkedCalls::MAX
                    ),
                    &route.name,
                )
            })?;
        Ok(ServerResult::InputRequiredResult(InputRequiredResult::new(
            Some(requests),
            Some(state),
        )))
    }

    /// A 2026-07-28 client retries a call with the answers to the questions
    /// it was asked: they go to the server, and the call goes on. Answers
    /// that cannot be read are refused before any is delivered, and the call
    /// stays parked for a better retry.
    async fn resume(
        &self,
        state: &str,
        what: String,
        responses: Option<InputResponses>,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<ServerResult, McpError> {
        let Some(mut parked) = self.registry.parked.take(state) else {
            return Err(McpError::invalid_params(
                "unknown or expired requestState: make the request again without it",
                None,
            ));
        };
        if parked.what != what {
            let belongs = parked.what.clone();
            self.registry.parked.put_back(state.to_string(), parked);
            return Err(McpError::invalid_params(
                format!("this requestState belongs to another request ({belongs})"),
                None,
            ));
        }
        let responses = responses.unwrap_or_default();
        let mut answers = Vec::new();
        for question in &parked.questions {
            if let Some(value) = responses.get(&question.key) {
                match relay::answer_of(&question.request, value.clone()) {
                    Ok(answer) => answers.push((question.key.clone(), answer)),
                    Err(e) => {
                        let key = question.key.clone();
                        self.registry.parked.put_back(state.to_string(), parked);
                        return Err(McpError::invalid_params(format!("inputResponses.{key}: {e}"), None));
                    }
                }
            }
        }
        let catalog = self.registry.catalog();
        let route = match self.route(&catalog, &parked.server) {
            Ok(route) => route.clone(),
            Err(e) => return Err(e), // the server went away: the call ends with it
        };
        // This request is the call's client now: its progress, logs and
        // the server's next questions come here.
        let caller = self.caller(ctx, &parked.live.interject, true);
        parked.live.call.upstream.relay.rebind(parked.live.call.key, caller);
        if let (Some(ours), Some(client_token)) = (&parked.live.call.progress, ctx.meta.get_progress_token()) {
            let relay = &parked.live.call.upstream.relay;
            relay.route_progress(
                ours.clone(),
                relay::CallStream::of(ctx),
                client_token,
                parked.live.ticks.clone(),
            );
        }
        let mut unanswered = Vec::new();
        for question in std::mem::take(&mut parked.questions) {
            match answers.iter().position(|(key, _)| *key == question.key) {
                Some(i) => {
                    let _ = question.answer.send(Ok(answers.swap_remove(i).1));
                }
                None => unanswered.push(question),
            }
        }
        if !unanswered.is_empty() {
            // Ask again what is still open.
            return self.park(parked.live, unanswered, what, &route);
        }
        let deadline = deadline_after(route.request_timeout);
        self.wait(&route, parked.live, ctx, deadline, what).await
    }

    /// A request of a client: a retry with our `requestState` resumes its
    /// parked call; any other goes to the server.
    async fn send(
        &self,
        route: &ServerRoute,
        method: Method,
        request: ClientRequest,
        resume: Option<(String, Option<InputResponses>)>,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<ServerResult, McpError> {
        match resume {
            Some((state, responses)) => {
                let resumed = self.resume(&state, identity(&route.name, &request), responses, ctx);
                metered(route, method, resumed).await
            }
            None => self.forward(route, method, request, ctx).await,
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

/// A 2026-07-28 request (no session) for a method that revision removed
/// (logging/setLevel: the level is per request; resources/subscribe:
/// subscriptions/listen) is an unknown method.
fn legacy_only(ctx: &RequestContext<RoleServer>, method: &str) -> Result<(), McpError> {
    if modern(ctx) {
        return Err(McpError::new(
            ErrorCode::METHOD_NOT_FOUND,
            format!("{method} is not part of protocol 2026-07-28"),
            None,
        ));
    }
    Ok(())
}

/// What a 2026-07-28 server is told per request about a client with
/// `capabilities` (what the gateway relays of them) that asked for logs at
/// `level`.
#[allow(deprecated)] // the log level: deprecated by the 2026 revision, not gone
fn client_meta_of(capabilities: Option<&ClientCapabilities>, level: Option<LoggingLevel>) -> RequestMetaObject {
    let mut meta = RequestMetaObject::default();
    if let Some(capabilities) = capabilities {
        meta.set_client_capabilities(relay::relayable(capabilities));
    }
    if let Some(level) = level {
        meta.set_log_level(level);
    }
    meta
}

/// The request speaks protocol 2026-07-28 or later (dates: later compares greater).
fn modern(ctx: &RequestContext<RoleServer>) -> bool {
    ctx.protocol_version()
        .is_some_and(|v| v >= ProtocolVersion::V_2026_07_28)
}

/// Answers to questions we asked for a server (our own `requestState`):
/// taken out of the request, ours to deliver. Another `requestState` is a
/// server's own (it speaks 2026-07-28) and goes to it.
fn ours(
    state: &mut Option<String>,
    responses: &mut Option<InputResponses>,
) -> Option<(String, Option<InputResponses>)> {
    if !state.as_deref().is_some_and(|s| s.starts_with(ParkedCalls::PREFIX)) {
        return None;
    }
    Some((state.take()?, responses.take()))
}

/// The request a retry with a `requestState` must repeat: server, method
/// and name.
fn identity(server: &str, request: &ClientRequest) -> String {
    let what = match request {
        ClientRequest::CallToolRequest(r) => format!("tools/call {}", r.params.name),
        ClientRequest::GetPromptRequest(r) => format!("prompts/get {}", r.params.name),
        ClientRequest::ReadResourceRequest(r) => format!("resources/read {}", r.params.uri),
        ClientRequest::CompleteRequest(_) => "completion/complete".to_string(),
        _ => "another request".to_string(),
    };
    format!("{what} of server '{server}'")
}

/// A result from a server of an earlier protocol lacks `resultType`, which
/// 2026-07-28 clients require (rmcp strips it again for earlier clients).
fn complete(mut result: ServerResult) -> ServerResult {
    let result_type = match &mut result {
        ServerResult::CompleteResult(r) => &mut r.result_type,
        ServerResult::GetPromptResult(r) => &mut r.result_type,
        ServerResult::ReadResourceResult(r) => &mut r.result_type,
        ServerResult::CallToolResult(r) => &mut r.result_type,
        _ => return result,
    };
    if result_type.is_none() {
        *result_type = Some(ResultType::COMPLETE);
    }
    result
}

/// However much progress a call reports, it ends by ten times
/// `request_timeout` after `deadline` was set: a maximum, as the spec asks.
fn latest_deadline(deadline: tokio::time::Instant, timeout: Duration) -> tokio::time::Instant {
    deadline.checked_add(timeout.saturating_mul(9)).unwrap_or(deadline)
}

/// `request_timeout` from now (a timeout too large to add means none).
fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// How many times one request may come back with questions before the
/// gateway gives up on it (a server that asks for ever).
const MAX_INPUT_ROUNDS: usize = 16;

fn timed_out(route: &ServerRoute) -> McpError {
    error(
        codes::TIMEOUT,
        format!(
            "server '{}' did not answer within request_timeout ({}); the request was cancelled",
            route.name,
            crate::config::duration::format(route.request_timeout)
        ),
        &route.name,
    )
}

/// The request made again with the answers to a server's questions and the
/// state it asked to get back. False for a request that cannot carry them.
fn retry_with(request: &mut ClientRequest, answers: InputResponses, state: Option<String>) -> bool {
    let answers = (!answers.is_empty()).then_some(answers);
    match request {
        ClientRequest::CallToolRequest(r) => (r.params.input_responses, r.params.request_state) = (answers, state),
        ClientRequest::GetPromptRequest(r) => (r.params.input_responses, r.params.request_state) = (answers, state),
        ClientRequest::ReadResourceRequest(r) => (r.params.input_responses, r.params.request_state) = (answers, state),
        _ => return false,
    }
    true
}

/// A task id as the gateway shows it, `SERVER/REPLICA.GENERATION/ID`: the
/// server session that created the task, which alone knows it (server names
/// have no `/`).
fn task_id(session: &InstanceId, id: &str) -> String {
    format!("{}/{}.{}/{id}", session.server, session.replica, session.generation)
}

/// A shown task id's server, session (replica, generation) and own id.
fn parse_task_id(shown: &str) -> Option<(&str, (u32, u64), &str)> {
    let (server, rest) = shown.split_once('/')?;
    let (session, id) = rest.split_once('/')?;
    let (replica, generation) = session.split_once('.')?;
    Some((server, (replica.parse().ok()?, generation.parse().ok()?), id))
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

/// The `_meta` of a client's request as it goes upstream: everything but the
/// progress token (the upstream gets ours, mapped back to the client's) and
/// the protocol's per-request keys (the upstream session has its own).
fn forwarded_meta(meta: Option<RequestMetaObject>) -> Option<RequestMetaObject> {
    let mut meta = meta?;
    meta.0
        .0
        .retain(|key, _| key != "progressToken" && !key.starts_with("io.modelcontextprotocol/"));
    (!meta.0.0.is_empty()).then_some(meta)
}

/// The gateway's instructions: what it is, then each server's own.
fn instructions(catalog: &Catalog) -> String {
    let separator = &catalog.separator;
    let mut text = if catalog.names_as_written() {
        format!(
            "The tools, resources and prompts of every healthy server managed by mcp-manager, named as their servers wrote them; where two servers offer the same name or URI, it is SERVER{separator}NAME or mcp-manager://SERVER/URI."
        )
    } else {
        format!(
            "The tools, resources and prompts of every healthy server managed by mcp-manager. Tools and prompts are named SERVER{separator}NAME; resource URIs are mcp-manager://SERVER/URI."
        )
    };
    let mut routes: Vec<&Arc<ServerRoute>> = catalog.routes().collect();
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    for route in routes {
        let own = route
            .upstreams
            .first()
            .and_then(|u| u.peer.peer_info())
            .and_then(|info| info.instructions.clone())
            .filter(|i| !i.trim().is_empty());
        if let Some(own) = own {
            text.push_str(&format!("\n\n## {}\n{}", route.name, own.trim()));
        }
    }
    text
}

#[allow(deprecated)] // logging/setLevel and resources/subscribe: deprecated by the 2026 revision, not gone
impl ServerHandler for GatewayServer {
    fn get_info(&self) -> InitializeResult {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_tool_list_changed()
            .enable_resources()
            .enable_resources_list_changed()
            .enable_resources_subscribe()
            .enable_prompts()
            .enable_prompts_list_changed()
            .enable_logging()
            .enable_completions()
            .enable_tasks()
            .build();
        InitializeResult::new(capabilities)
            .with_server_info(Implementation::new("mcp-manager", env!("CARGO_PKG_VERSION")))
            .with_instructions(instructions(&self.registry.catalog()))
    }

    /// Remembered for this session's log messages and for servers that start
    /// later, and applied to every running server that logs.
    async fn set_level(&self, request: SetLevelRequestParams, ctx: RequestContext<RoleServer>) -> Result<(), McpError> {
        legacy_only(&ctx, "logging/setLevel")?;
        let level = self.registry.clients.set_level(&self.session, request.level);
        let catalog = self.registry.catalog();
        let mut sends = tokio::task::JoinSet::new();
        for upstream in catalog.routes().flat_map(|r| r.upstreams.iter()) {
            let logs = upstream
                .peer
                .peer_info()
                .is_some_and(|info| info.capabilities.logging.is_some());
            if logs {
                let peer = upstream.peer.clone();
                sends.spawn(async move {
                    let request =
                        ClientRequest::SetLevelRequest(SetLevelRequest::new(SetLevelRequestParams::new(level)));
                    let _ = tokio::time::timeout(Duration::from_secs(5), peer.send_request(request)).await;
                });
            }
        }
        sends.join_all().await;
        Ok(())
    }

    /// Routed by the prompt's name or the resource template's URI.
    async fn complete(
        &self,
        request: CompleteRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        let catalog = self.registry.catalog();
        let mut params = request.clone();
        params.meta = forwarded_meta(request.meta);
        let route = match &request.r#ref {
            Reference::Prompt(prompt) => {
                let Some((route, name)) = catalog.prompt(&prompt.name) else {
                    return Err(self.unknown(&catalog, "prompt", &prompt.name));
                };
                if let Reference::Prompt(p) = &mut params.r#ref {
                    p.name = name.clone();
                }
                route
            }
            Reference::Resource(template) => {
                let Some((server, uri)) = catalog.resource_route(&template.uri) else {
                    return Err(McpError::invalid_params(
                        format!("unknown resource template '{}'", template.uri),
                        Some(json!({ "uri": template.uri })),
                    ));
                };
                if let Reference::Resource(t) = &mut params.r#ref {
                    t.uri = uri.to_string();
                }
                self.route(&catalog, server)?
            }
            #[allow(unreachable_patterns)]
            _ => return Err(McpError::invalid_params("unknown completion reference type", None)),
        };
        let result = self
            .forward(
                route,
                Method::Complete,
                ClientRequest::CompleteRequest(CompleteRequest::new(params)),
                &ctx,
            )
            .await?;
        match result {
            ServerResult::CompleteResult(result) => Ok(result),
            _ => Err(unexpected(&route.name)),
        }
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        legacy_only(&ctx, "resources/subscribe")?;
        let catalog = self.registry.catalog();
        let (server, uri) = self.resource(&catalog, &request.uri)?;
        let route = self.route(&catalog, server)?;
        // A per_client server: the client's own session is asked, always.
        let own = route.spec.session == SessionMode::PerClient && self.session.joined();
        if self.registry.clients.subscribe(&self.session, server, uri) || own {
            if let Some(listening) = self.listen_again(route, &ctx).await {
                if listening.is_err() {
                    self.registry.clients.unsubscribe(&self.session, server, uri);
                }
                return listening;
            }
            let params = SubscribeRequestParams::new(uri);
            let sent = self
                .forward(
                    route,
                    Method::Subscribe,
                    ClientRequest::SubscribeRequest(SubscribeRequest::new(params)),
                    &ctx,
                )
                .await;
            if let Err(e) = sent {
                self.registry.clients.unsubscribe(&self.session, server, uri);
                return Err(e);
            }
        }
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        legacy_only(&ctx, "resources/unsubscribe")?;
        let catalog = self.registry.catalog();
        let (server, uri) = self.resource(&catalog, &request.uri)?;
        let last = self.registry.clients.unsubscribe(&self.session, server, uri);
        if let Ok(route) = self.route(&catalog, server)
            && (last || (route.spec.session == SessionMode::PerClient && self.session.joined()))
        {
            if let Some(listening) = self.listen_again(route, &ctx).await {
                return listening;
            }
            // The last subscriber left: the server may stop watching.
            let params = UnsubscribeRequestParams::new(uri);
            self.forward(
                route,
                Method::Subscribe,
                ClientRequest::UnsubscribeRequest(UnsubscribeRequest::new(params)),
                &ctx,
            )
            .await?;
        }
        Ok(())
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, McpError> {
        let shown = request.task_id.clone();
        let (route, upstream, id) = self.task(&shown)?;
        let mut params = request;
        params.task_id = id;
        params.meta = forwarded_meta(params.meta);
        let request = ClientRequest::GetTaskRequest(GetTaskRequest::new(params));
        match self.task_request(&route, upstream, request, &ctx).await? {
            ServerResult::GetTaskResult(mut result) => {
                result.task.task.task_id = shown;
                Ok(result)
            }
            _ => Err(unexpected(&route.name)),
        }
    }

    async fn update_task(&self, request: UpdateTaskParams, ctx: RequestContext<RoleServer>) -> Result<(), McpError> {
        let (route, upstream, id) = self.task(&request.task_id)?;
        let mut params = request;
        params.task_id = id;
        params.meta = forwarded_meta(params.meta);
        let request = ClientRequest::UpdateTaskRequest(UpdateTaskRequest::new(params));
        self.task_request(&route, upstream, request, &ctx).await.map(drop)
    }

    async fn cancel_task(&self, request: CancelTaskParams, ctx: RequestContext<RoleServer>) -> Result<(), McpError> {
        let (route, upstream, id) = self.task(&request.task_id)?;
        let mut params = request;
        params.task_id = id;
        params.meta = forwarded_meta(params.meta);
        let request = ClientRequest::CancelTaskRequest(CancelTaskRequest::new(params));
        self.task_request(&route, upstream, request, &ctx).await.map(drop)
    }

    /// A request rmcp could not read as the method it names arrives here:
    /// for a method we serve, that means its params are missing or of the
    /// wrong type (-32602, with what is wrong); else the method is unknown.
    async fn on_custom_request(
        &self,
        request: CustomRequest,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CustomResult, McpError> {
        /// What is wrong with the params, if anything.
        fn check<T: serde::de::DeserializeOwned>(params: Option<serde_json::Value>) -> Option<String> {
            serde_json::from_value::<T>(params.unwrap_or(serde_json::Value::Null))
                .err()
                .map(|e| e.to_string())
        }
        let CustomRequest { method, params, .. } = request;
        let removed = ["logging/setLevel", "resources/subscribe", "resources/unsubscribe"];
        if modern(&ctx) && removed.contains(&method.as_str()) {
            return Err(McpError::new(
                ErrorCode::METHOD_NOT_FOUND,
                format!("{method} is not part of protocol 2026-07-28"),
                None,
            ));
        }
        let problem = match method.as_str() {
            "tools/call" => check::<CallToolRequestParams>(params),
            "resources/read" => check::<ReadResourceRequestParams>(params),
            "prompts/get" => check::<GetPromptRequestParams>(params),
            "completion/complete" => check::<CompleteRequestParams>(params),
            "resources/subscribe" | "resources/unsubscribe" => check::<SubscribeRequestParams>(params),
            "logging/setLevel" => check::<SetLevelRequestParams>(params),
            _ => None,
        };
        match problem {
            Some(problem) => Err(McpError::invalid_params(
                format!("invalid params for {method}: {problem}"),
                None,
            )),
            // Valid params of a method this protocol revision does not have
            // (2026-07-28 removed logging/setLevel and resources/subscribe),
            // or a method we do not know.
            None => Err(McpError::new(
                ErrorCode::METHOD_NOT_FOUND,
                format!("unknown method '{method}'"),
                None,
            )),
        }
    }

    /// For the 2026-07-28 transport's `Mcp-Param-*` header checks (SEP-2243).
    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.registry.catalog().tools.iter().find(|t| t.name == name).cloned()
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
        // A retry with answers (2026-07-28) is never served from the cache.
        let ttl = route
            .cache_ttls
            .get(tool)
            .copied()
            .filter(|_| request.request_state.is_none() && request.input_responses.is_none());
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
        params.meta = forwarded_meta(request.meta.clone());
        let resume = ours(&mut params.request_state, &mut params.input_responses);
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        let result = self.send(route, Method::CallTool, request, resume, &ctx).await?;
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
        let (server, uri) = self.resource(&catalog, &request.uri)?;
        let route = self.route(&catalog, server)?;
        let mut params = request.clone();
        params.uri = uri.to_string();
        params.meta = forwarded_meta(request.meta.clone());
        let resume = ours(&mut params.request_state, &mut params.input_responses);
        let request = ClientRequest::ReadResourceRequest(ReadResourceRequest::new(params));
        let result = self.send(route, Method::ReadResource, request, resume, &ctx).await?;
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
        params.meta = forwarded_meta(request.meta.clone());
        let resume = ours(&mut params.request_state, &mut params.input_responses);
        let request = ClientRequest::GetPromptRequest(GetPromptRequest::new(params));
        let result = self.send(route, Method::GetPrompt, request, resume, &ctx).await?;
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
        self.registry.clients.join(&self.session, ctx.peer.clone());
        // A client that cannot be asked anything (no sampling, elicitation
        // or roots) can be sent nothing that belongs to one call but its
        // answer: its calls may be answered directly (`api::direct`).
        let asks = ctx.peer.peer_info().is_none_or(|info| {
            let c = &info.capabilities;
            c.sampling.is_some() || c.elicitation.is_some() || c.roots.is_some()
        });
        let http = ctx
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.headers.get("mcp-session-id"))
            .and_then(|id| id.to_str().ok());
        if let (false, Some(http)) = (asks, http) {
            self.registry.clients.allow_direct(Arc::from(http), &self.session);
        }
        // Counted once the session is set up (tests wait for it).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_carries_the_answers_and_the_state() {
        let mut answers = InputResponses::new();
        answers.insert(
            "user_name".into(),
            json!({ "action": "accept", "content": { "name": "Alice" } }),
        );
        let mut call = ClientRequest::CallToolRequest(CallToolRequest::new(CallToolRequestParams::new("greet")));
        assert!(retry_with(&mut call, answers.clone(), Some("state-1".into())));
        let ClientRequest::CallToolRequest(call) = call else {
            unreachable!("a call")
        };
        assert_eq!(call.params.request_state.as_deref(), Some("state-1"));
        assert_eq!(call.params.input_responses, Some(answers));
        // No answers (the server only wants its state back): none are sent.
        let mut read =
            ClientRequest::ReadResourceRequest(ReadResourceRequest::new(ReadResourceRequestParams::new("x://y")));
        assert!(retry_with(&mut read, InputResponses::new(), Some("s".into())));
        let ClientRequest::ReadResourceRequest(read) = read else {
            unreachable!("a read")
        };
        assert_eq!(read.params.input_responses, None);
        // A request that cannot carry answers is not retried.
        let mut complete = ClientRequest::CompleteRequest(CompleteRequest::new(
            serde_json::from_value(
                json!({ "ref": { "type": "ref/prompt", "name": "p" }, "argument": { "name": "a", "value": "" } }),
            )
            .expect("valid params"),
        ));
        assert!(!retry_with(&mut complete, InputResponses::new(), None));
    }

    #[test]
    fn task_ids_name_the_session_that_created_them() {
        let session = InstanceId {
            server: "build".into(),
            replica: 1,
            generation: 7,
        };
        let shown = task_id(&session, "a/b");
        assert_eq!(shown, "build/1.7/a/b");
        // The server's own id may hold slashes: it is the rest.
        assert_eq!(parse_task_id(&shown), Some(("build", (1, 7), "a/b")));
        for bad in ["", "build", "build/7f3a", "build/x.7/id", "build/1.y/id", "build/1/id"] {
            assert_eq!(parse_task_id(bad), None, "{bad}");
        }
    }
}
