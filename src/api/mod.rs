//! The REST API (DESIGN 5.2): JSON under `/api/v1`, bearer-token protected, bound
//! to 127.0.0.1. It reads the reconciler's snapshots and sends it requests; it
//! never changes state itself.

mod direct;
mod plain_json;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_stream::wrappers::BroadcastStream;

use rmcp::transport::streamable_http_server::session::local::{LocalSessionManager, SessionConfig};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::gateway::GatewayServer;
use crate::reconciler::{CommandError, Handle, Request as ReconcileRequest, ServerStatus};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// What every handler and middleware shares: one `Arc` to clone per layer
/// and request (axum clones the state for each).
#[derive(Clone)]
struct ApiState(Arc<Shared>);

impl std::ops::Deref for ApiState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

struct Shared {
    handle: Handle,
    token: Arc<str>,
    /// Fired when a client asks the service to shut down.
    shutdown: Arc<tokio::sync::Notify>,
    /// Cancelled when the service stops: ends every stream (`/events`,
    /// `logs --follow`), which would otherwise hold a graceful shutdown for ever.
    stop: CancellationToken,
    /// Names the service may be reached by (`Host` and `Origin` checks); empty
    /// when it listens on every address (then any name may reach it).
    local_names: Arc<Vec<String>>,
    /// The port it listens on: an `Origin` must name it too (another local
    /// web app is another origin).
    port: u16,
    /// The gateway's sessions (`max_sessions` is checked against them).
    sessions: Arc<LocalSessionManager>,
    activity: Activity,
    /// `bridge`: `/healthz` says ready only once its server runs.
    bridge: bool,
}

/// The API router. `shutdown` is notified on `POST /api/v1/shutdown`;
/// `gateway_stop` ends every `/mcp` session and every event or log stream
/// (cancel it when the service stops).
pub fn router(
    handle: Handle,
    token: String,
    shutdown: Arc<tokio::sync::Notify>,
    gateway_stop: CancellationToken,
    (host, port): (&str, u16),
    session_idle_timeout: Duration,
    open_gateway: bool,
) -> Router {
    let sessions = {
        let mut config = SessionConfig::default();
        // Idle sessions are closed by `sweep_idle_sessions`, which sees
        // every request of a session (rmcp's session worker does not see
        // the calls answered directly).
        config.keep_alive = None;
        let mut manager = LocalSessionManager::default();
        manager.session_config = config;
        Arc::new(manager)
    };
    let wildcard = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified());
    let mcp = {
        let registry = handle.registry.clone();
        let mut hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        if !hosts.iter().any(|h| h == host) {
            hosts.push(host.to_string());
        }
        let config = StreamableHttpServerConfig::default()
            .with_json_response(true)
            .with_cancellation_token(gateway_stop.clone());
        // Listening on every address, it is reached by names it cannot know
        // (a Service's DNS name, a pod IP): `same_origin` checks instead.
        let config = if wildcard {
            config.disable_allowed_hosts()
        } else {
            config.with_allowed_hosts(hosts)
        };
        StreamableHttpService::new(
            move || Ok(GatewayServer::new(registry.clone())),
            sessions.clone(),
            config,
        )
    };
    let local_names = if wildcard {
        Vec::new()
    } else {
        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        let bare = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        if !names.contains(&bare) {
            names.push(bare);
        }
        names
    };
    let state = ApiState(Arc::new(Shared {
        handle,
        token: token.into(),
        shutdown,
        stop: gateway_stop,
        local_names: Arc::new(local_names),
        port,
        sessions: sessions.clone(),
        activity: Activity::default(),
        bridge: open_gateway,
    }));
    sweep_idle_sessions(
        sessions,
        state.activity.clone(),
        session_idle_timeout,
        state.stop.clone(),
    );
    let api = Router::new()
        .route("/status", get(status))
        .route("/servers", get(servers))
        .route("/servers/{name}", get(server))
        .route("/servers/{name}/{action}", post(server_action))
        .route("/servers/{name}/logs", get(logs))
        .route("/servers/{name}/approve", post(approve))
        .route("/plan", get(plan))
        .route("/observed", get(observed))
        .route("/apply", post(apply))
        .route("/rescan", post(rescan))
        .route("/health", get(health))
        .route("/capabilities", get(capabilities))
        .route("/metrics", get(metrics))
        .route("/events", get(events))
        .route("/shutdown", post(shutdown_service))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let gateway = Router::new()
        .route("/metrics", get(metrics))
        .nest_service("/mcp", mcp)
        .layer(middleware::from_fn_with_state(state.clone(), jsonrpc_rules))
        .layer(middleware::from_fn_with_state(state.clone(), session_cap));
    // `bridge`: whoever reaches the listener may use `/mcp` (a pod's port).
    let gateway = if open_gateway {
        gateway
    } else {
        gateway.layer(middleware::from_fn_with_state(state.clone(), authenticate))
    };
    Router::new()
        .route("/", get(dashboard))
        .route("/servers/{name}", get(dashboard))
        .route("/plan", get(dashboard))
        .route("/events", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/api/v1/healthz", get(healthz))
        .nest("/api/v1", api)
        .merge(gateway)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), same_origin))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// A JSON-RPC error as an HTTP response (`id` null: the request had none we
/// could read).
fn jsonrpc_error(status: StatusCode, code: i32, message: String) -> Response {
    let body = json!({ "jsonrpc": "2.0", "id": null, "error": { "code": code, "message": message } });
    (status, Json(body)).into_response()
}

/// JSON-RPC over HTTP by the book, in front of the MCP transport: a body that
/// is not JSON gets 400 with -32700 and one that is not a JSON-RPC message 400
/// with -32600 (not 415, which is for a wrong `Content-Type`); a second
/// `initialize` on a live session is refused (400, -32600); `DELETE` of a
/// session answers 204, or 404 when there is no such session. A request of a
/// session whose answer has nothing to stream gets it as plain JSON
/// ([`plain_json`]); a tool call that nothing but its answer and progress
/// can belong to is answered here, rmcp's session layer skipped ([`direct`]).
async fn jsonrpc_rules(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let session = request
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(Arc::<str>::from);
    let live = match &session {
        Some(id) => state.sessions.sessions.read().await.contains_key(id),
        None => false,
    };
    if request.method() == axum::http::Method::DELETE {
        if session.is_some() && !live {
            return jsonrpc_error(StatusCode::NOT_FOUND, -32600, "no such session".into());
        }
        let mut response = next.run(request).await;
        if response.status() == StatusCode::ACCEPTED {
            *response.status_mut() = StatusCode::NO_CONTENT;
        }
        return response;
    }
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("application/json"));
    if request.method() != axum::http::Method::POST || !json {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return jsonrpc_error(StatusCode::PAYLOAD_TOO_LARGE, -32600, "request body too large".into());
    };
    /// Just the method and whether there is an id, borrowed: enough to see
    /// an `initialize` and a request.
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(borrow)]
        method: Option<std::borrow::Cow<'a, str>>,
        id: Option<serde::de::IgnoredAny>,
    }
    // One pass: reading the method checks the JSON too. A syntax error is
    // -32700; valid JSON of another shape is rmcp's to judge.
    let peek = match serde_json::from_slice::<Peek<'_>>(&bytes) {
        Ok(peek) => Some(peek),
        Err(e) if e.is_syntax() || e.is_eof() => {
            return jsonrpc_error(StatusCode::BAD_REQUEST, -32700, format!("parse error: {e}"));
        }
        Err(_) => None,
    };
    let method = peek.as_ref().and_then(|p| p.method.as_deref());
    if live && method == Some("initialize") {
        return jsonrpc_error(
            StatusCode::BAD_REQUEST,
            -32600,
            "this session is already initialized; start a new session (without Mcp-Session-Id) to initialize again"
                .into(),
        );
    }
    let request_of_session = live && method.is_some() && peek.as_ref().is_some_and(|p| p.id.is_some());
    if request_of_session {
        // Its answer waits on timers (when to stream it, its deadline).
        state.handle.registry.pacer.pace();
    }
    let accept = parts.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let accepts_json = accept.is_some_and(|v| v.contains("application/json"));
    let takes = |mime: &str| accept.is_some_and(|v| direct::accepts(v, mime));
    if let Some(http) = session.as_deref().filter(|_| live) {
        match method {
            Some("tools/call") if request_of_session && takes("application/json") && takes("text/event-stream") => {
                if let Some(answer) = direct::answer(&state.handle.registry, http, &parts, &bytes).await {
                    return answer;
                }
            }
            Some("notifications/cancelled") => direct::cancel(&state.handle.registry, http, &bytes),
            _ => {}
        }
    }
    let response = next
        .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await;
    if request_of_session && accepts_json {
        return plain_json::answer_as_json(response).await;
    }
    if response.status() != StatusCode::UNSUPPORTED_MEDIA_TYPE {
        return response;
    }
    // rmcp answers 415 to JSON it cannot read as a JSON-RPC message.
    let detail = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    jsonrpc_error(
        StatusCode::BAD_REQUEST,
        -32600,
        format!("invalid request: {}", String::from_utf8_lossy(&detail).trim()),
    )
}

/// When each gateway session last heard from its client.
type Activity = Arc<std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>>;

/// `manager.gateway.max_sessions` and `session_idle_timeout`, in front of the
/// gateway. An `initialize` beyond the cap (only that opens a session; a
/// stateless 2026-07-28 request does not) gets HTTP 503 with a JSON-RPC error.
/// Every request of a session counts as its client's activity: a session is
/// idle when its client is silent, whatever the service sends it.
async fn session_cap(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let session = request
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let touch = |id: &str| {
        let mut activity = state.activity.lock().unwrap_or_else(|e| e.into_inner());
        activity.insert(id.to_string(), std::time::Instant::now());
    };
    if let Some(id) = &session {
        touch(id);
    }
    let mut request = request;
    if session.is_none() && request.method() == axum::http::Method::POST {
        let max = state.handle.snapshot.borrow().manager.gateway.max_sessions.max(1);
        let open = state.sessions.sessions.read().await.len();
        if open >= max {
            // At the cap: look at what the request is (the body is small).
            let (parts, body) = request.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
                return ApiError(StatusCode::PAYLOAD_TOO_LARGE, "request body too large".into()).into_response();
            };
            let opens = serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|v| v["method"] == "initialize");
            if opens {
                let body = json!({
                    "jsonrpc": "2.0",
                    "id": null,
                    "error": {
                        "code": -32000,
                        "message": format!(
                            "the gateway has {open} open sessions (manager.gateway.max_sessions: {max}); close one, or wait for an idle one to expire"
                        ),
                    },
                });
                let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
                return response;
            }
            request = Request::from_parts(parts, axum::body::Body::from(bytes));
        }
    }
    let response = next.run(request).await;
    if session.is_none()
        && let Some(id) = response.headers().get("mcp-session-id").and_then(|v| v.to_str().ok())
    {
        touch(id);
    }
    response
}

/// Closes gateway sessions whose clients have been silent for `idle`, until
/// `stop`: the only end of an idle session. (rmcp's own keep-alive is off: it
/// counts what the service sends too, so a session of a client that left
/// would live as long as lists keep changing, and it does not see the calls
/// answered directly.)
fn sweep_idle_sessions(
    sessions: Arc<LocalSessionManager>,
    activity: Activity,
    idle: Duration,
    stop: CancellationToken,
) {
    use rmcp::transport::streamable_http_server::SessionManager;
    let every = (idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(30));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let open: Vec<String> = sessions.sessions.read().await.keys().map(|k| k.to_string()).collect();
            let expired: Vec<String> = {
                let mut activity = activity.lock().unwrap_or_else(|e| e.into_inner());
                // Sessions that ended otherwise (DELETE) are forgotten; one
                // opened since `open` was read is not.
                activity.retain(|id, seen| open.contains(id) || seen.elapsed() < every);
                activity
                    .iter()
                    .filter(|(_, seen)| seen.elapsed() >= idle)
                    .map(|(id, _)| id.clone())
                    .collect()
            };
            for id in expired {
                tracing::debug!(
                    "gateway session {id} idle for {}; closing it",
                    crate::config::duration::format(idle)
                );
                let _ = sessions.close_session(&Arc::from(id.as_str())).await;
                activity.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            }
        }
    });
}

/// DNS rebinding and cross-site requests: a `Host` that is not a name of this
/// service, or an `Origin` of another site, is refused with 403 before
/// anything else (the dashboard, the API and `/mcp` alike). Requests without
/// either header (CLI clients, SDKs) pass.
async fn same_origin(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    // A bridge has no token: a browser page (which always sends `Origin`)
    // must not drive it through a rebound DNS name. Its clients are
    // programs, or pages of this machine.
    let foreign_page = state.bridge
        && request.headers().get(header::ORIGIN).is_some_and(|origin| {
            let origin = origin.to_str().unwrap_or_default();
            let rest = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            !authority(rest).is_some_and(|(host, _)| matches!(host.as_str(), "localhost" | "127.0.0.1" | "::1"))
        });
    if foreign_page {
        return ApiError(
            StatusCode::FORBIDDEN,
            "refused: a bridge takes no requests from web pages (Origin is set)".into(),
        )
        .into_response();
    }
    if same_site(&state.local_names, state.port, request.headers()) {
        return next.run(request).await;
    }
    ApiError(
        StatusCode::FORBIDDEN,
        "refused: the Host or Origin of this request is not this service (DNS rebinding or a cross-site request)"
            .into(),
    )
    .into_response()
}

/// `names` empty: the service listens on every address, so any `Host` may
/// reach it; an `Origin` must then name the same authority as the `Host`.
fn same_site(names: &[String], port: u16, headers: &header::HeaderMap) -> bool {
    // A header that is present but not text is refused, not ignored.
    let text = |name| headers.get(name).map(|v: &header::HeaderValue| v.to_str().ok());
    let (host, origin) = (text(header::HOST), text(header::ORIGIN));
    let (Some(host), Some(origin)) = (host.unwrap_or(Some("")), origin.unwrap_or(Some(""))) else {
        return false;
    };
    let host_ok = host.is_empty() || names.is_empty() || authority(host).is_some_and(|(h, _)| names.contains(&h));
    let origin_ok = origin.is_empty()
        || origin
            .strip_prefix("http://")
            .map(|a| (a, 80))
            .or_else(|| origin.strip_prefix("https://").map(|a| (a, 443)))
            .and_then(|(a, default_port)| {
                let (h, p) = authority(a)?;
                Some((h, p.unwrap_or(default_port)))
            })
            .is_some_and(|(h, p)| {
                if names.is_empty() {
                    authority(host).is_some_and(|(host_name, host_port)| host_name == h && host_port.unwrap_or(80) == p)
                } else {
                    names.contains(&h) && p == port
                }
            });
    host_ok && origin_ok
}

/// The lowercase host and the port of an authority (`host[:port]`,
/// `[v6][:port]`); `None` when it is malformed.
fn authority(text: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// A JSON error body: `{"error": "..."}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        let status = match e {
            CommandError::NotFound(_) | CommandError::NoSuchTool(..) => StatusCode::NOT_FOUND,
            CommandError::Stale => StatusCode::CONFLICT,
            CommandError::ConfigInvalid => StatusCode::UNPROCESSABLE_ENTITY,
            CommandError::Cluster(_) => StatusCode::BAD_GATEWAY,
        };
        ApiError(status, e.to_string())
    }
}

async fn authenticate(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if constant_time_eq(token.as_bytes(), state.token.as_bytes()) => next.run(request).await,
        _ => {
            let mut response = ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (see the state dir's api-token)".into(),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            response
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such endpoint".into())
}

/// The web dashboard: one static page, embedded. It holds no data; everything
/// it shows comes from the API with the token the user gives it.
/// What the dashboard page may do: its own inline script and style, calls to
/// this service, nothing from elsewhere, never framed, no referrer.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     img-src data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, DASHBOARD_CSP),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        include_str!("dashboard.html"),
    )
        .into_response()
}

/// The service is up. A bridge is ready when its server runs: until then
/// (and while it restarts) 503, so that a pod gets no traffic it would answer
/// with an empty tool list.
async fn healthz(State(state): State<ApiState>) -> Response {
    let version = env!("CARGO_PKG_VERSION");
    if state.bridge {
        let snapshot = state.handle.snapshot.borrow().clone();
        let waiting: Vec<String> = snapshot
            .servers
            .iter()
            .filter(|s| s.enabled && s.phase != crate::state::Phase::Running)
            .map(|s| format!("{} is {}", s.name, s.phase.as_str()))
            .collect();
        if !waiting.is_empty() || snapshot.servers.is_empty() {
            let body = json!({"status": "starting", "version": version, "waiting": waiting});
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        }
    }
    Json(json!({"status": "ok", "version": version})).into_response()
}

#[derive(Deserialize)]
struct StatusQuery {
    /// Add each server's CPU time and memory (reads /proc).
    #[serde(default)]
    usage: bool,
}

async fn status(State(state): State<ApiState>, Query(q): Query<StatusQuery>) -> Response {
    let mut snapshot = (*state.handle.snapshot.borrow().clone()).clone();
    for server in &mut snapshot.servers {
        server.metrics = state.handle.registry.metrics(&server.name);
    }
    if q.usage {
        let servers = snapshot.servers.clone();
        let mut usage = tokio::task::spawn_blocking(move || crate::metrics::usage_by_server(&servers))
            .await
            .unwrap_or_default();
        for server in &mut snapshot.servers {
            server.usage = usage.remove(&server.name);
        }
    }
    Json(snapshot).into_response()
}

#[derive(Deserialize)]
struct ServersQuery {
    status: Option<String>,
}

async fn servers(State(state): State<ApiState>, Query(q): Query<ServersQuery>) -> Response {
    let snapshot = state.handle.snapshot.borrow().clone();
    let servers: Vec<_> = snapshot
        .servers
        .iter()
        .filter(|s| {
            q.status.as_deref().is_none_or(|want| {
                want.eq_ignore_ascii_case(s.phase.as_str())
                    || want.eq_ignore_ascii_case(crate::status::health_word(s.health))
            })
        })
        .map(|s| with_metrics(&state, s))
        .collect();
    Json(json!({ "servers": servers })).into_response()
}

/// A server's status with its gateway request metrics.
fn with_metrics(state: &ApiState, server: &ServerStatus) -> ServerStatus {
    let mut server = server.clone();
    server.metrics = state.handle.registry.metrics(&server.name);
    server
}

/// How many of a server's events its page shows.
const SERVER_EVENTS: usize = 100;

/// A server's status, the spec it runs with (secrets as `(sensitive)`) and its
/// recent events (the dashboard's server page).
async fn server(State(state): State<ApiState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let status = {
        let snapshot = state.handle.snapshot.borrow().clone();
        match snapshot.servers.iter().find(|s| s.name == name) {
            Some(s) => with_metrics(&state, s),
            None => return Err(ApiError(StatusCode::NOT_FOUND, format!("no server named `{name}`"))),
        }
    };
    let store = state.handle.store.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let record = store.server(&name)?;
        let events = store.recent_events_of(&name, SERVER_EVENTS)?;
        Ok::<_, crate::state::StateError>((record, events))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| crate::state::error_chain(&e)));
    let mut body =
        serde_json::to_value(status).map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let Some(object) = body.as_object_mut() {
        // A failing store hides the spec and the events, never the status.
        let (spec, events) = match stored {
            Ok((record, events)) => (
                record
                    .and_then(|r| r.applied)
                    .map(|view| crate::config::view::redact(&json!(view))),
                events,
            ),
            Err(e) => {
                object.insert("store_error".into(), json!(e));
                (None, Vec::new())
            }
        };
        object.insert("spec".into(), spec.unwrap_or(Value::Null));
        object.insert("events".into(), json!(events));
    }
    Ok(Json(body).into_response())
}

async fn ask<T>(state: &ApiState, make: impl FnOnce(oneshot::Sender<T>) -> ReconcileRequest) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    let unavailable = || ApiError(StatusCode::SERVICE_UNAVAILABLE, "the service is shutting down".into());
    state.handle.requests.send(make(tx)).await.map_err(|_| unavailable())?;
    rx.await.map_err(|_| unavailable())
}

async fn server_action(
    State(state): State<ApiState>,
    Path((name, action)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let result = match action.as_str() {
        "start" => ask(&state, |tx| ReconcileRequest::StartServer(name, tx)).await?,
        "stop" => ask(&state, |tx| ReconcileRequest::StopServer(name, tx)).await?,
        "restart" => ask(&state, |tx| ReconcileRequest::RestartServer(name, tx)).await?,
        other => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("unknown action `{other}` (start, stop or restart)"),
            ));
        }
    };
    let message = result?;
    Ok(Json(json!({ "message": message })).into_response())
}

/// Re-scans the config now; replies with what changed (`discover --rescan`).
async fn rescan(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let report = ask(&state, ReconcileRequest::Rescan).await?;
    Ok(Json(report).into_response())
}

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
    lines: Option<usize>,
}

async fn logs(State(state): State<ApiState>, Path(name): Path<String>, Query(q): Query<LogsQuery>) -> Response {
    let known = state.handle.snapshot.borrow().servers.iter().any(|s| s.name == name);
    if !known {
        return ApiError(StatusCode::NOT_FOUND, format!("no server named `{name}`")).into_response();
    }
    let tail = state.handle.logs.tail(&name, q.lines.unwrap_or(200));
    if !q.follow {
        return Json(json!({ "lines": tail })).into_response();
    }
    // Subscribe before sending the tail so no line falls in between.
    let live = BroadcastStream::new(state.handle.logs.subscribe());
    let wanted = name.clone();
    let history = stream::iter(tail.into_iter().map(|line| sse_json("log", &line)));
    let live = live.filter_map(move |item| {
        let out = match item {
            Ok(line) if line.server == wanted => Some(sse_json("log", &line)),
            _ => None,
        };
        std::future::ready(out)
    });
    let stream = history.chain(live).take_until(state.stop.clone().cancelled_owned());
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn sse_json(kind: &str, value: &impl Serialize) -> Result<Event, Infallible> {
    Ok(Event::default()
        .event(kind)
        .data(serde_json::to_string(value).unwrap_or_default()))
}

async fn plan(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let plan = ask(&state, ReconcileRequest::Plan).await?;
    let snapshot = state.handle.snapshot.borrow().clone();
    Ok(Json(json!({
        "plan": plan,
        "pending_reason": snapshot.pending_reason,
        "config_errors": snapshot.config_errors,
    }))
    .into_response())
}

/// Observed state as the planner reads it (spec views: secrets are fingerprints),
/// so `mcp-manager plan` can plan against a running service.
async fn observed(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let observed = state
        .handle
        .store
        .load()
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(observed).into_response())
}

#[derive(Deserialize, Default)]
struct ApplyBody {
    desired_hash: Option<String>,
    observed_hash: Option<String>,
}

async fn apply(State(state): State<ApiState>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    // An empty body applies whatever the current plan is.
    let body: ApplyBody = if body.iter().all(u8::is_ascii_whitespace) {
        ApplyBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("malformed JSON body: {e}")))?
    };
    let expect = match (body.desired_hash, body.observed_hash) {
        (Some(d), Some(o)) => Some((d, o)),
        (None, None) => None,
        _ => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "give both desired_hash and observed_hash, or neither".into(),
            ));
        }
    };
    let plan = ask(&state, |reply| ReconcileRequest::Apply { expect, reply }).await??;
    Ok(Json(json!({ "plan": plan })).into_response())
}

async fn health(State(state): State<ApiState>) -> Response {
    let snapshot = state.handle.snapshot.borrow().clone();
    let servers: Vec<_> = snapshot
        .servers
        .iter()
        .map(|s| json!({"name": s.name, "phase": s.phase, "health": s.health, "recent": s.recent_health}))
        .collect();
    Json(json!({ "servers": servers })).into_response()
}

/// Prometheus text exposition of every server and the service.
async fn metrics(State(state): State<ApiState>) -> Response {
    let snapshot = state.handle.snapshot.borrow().clone();
    let registry = state.handle.registry.clone();
    // Reading /proc is blocking file IO.
    let text = tokio::task::spawn_blocking(move || {
        let usage = crate::metrics::usage_by_server(&snapshot.servers);
        crate::metrics::render(&crate::metrics::Inputs {
            snapshot: &snapshot,
            requests: &registry.all_metrics(),
            usage: &usage,
            counters: &registry.counters,
            now_ms: crate::now_ms(),
        })
    })
    .await
    .unwrap_or_default();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

#[derive(Deserialize)]
struct CapabilitiesQuery {
    server: Option<String>,
}

/// Every tool, resource and prompt as the gateway exposes it, with pin status.
async fn capabilities(State(state): State<ApiState>, Query(q): Query<CapabilitiesQuery>) -> Result<Response, ApiError> {
    let catalog = state.handle.registry.catalog();
    let snapshot = state.handle.snapshot.borrow().clone();
    if let Some(server) = &q.server
        && !snapshot.servers.iter().any(|s| &s.name == server)
    {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no server named `{server}`")));
    }
    let wanted = |name: &str| q.server.as_deref().is_none_or(|s| s == name);
    let entries: Vec<_> = catalog.entries.iter().filter(|e| wanted(&e.server)).collect();
    let unavailable: serde_json::Map<String, serde_json::Value> = snapshot
        .servers
        .iter()
        .filter(|s| wanted(&s.name))
        .filter_map(|s| catalog.unavailable(&s.name).map(|r| (s.name.clone(), json!(r))))
        .collect();
    Ok(Json(json!({
        "separator": state.handle.registry.separator(),
        "capabilities": entries,
        "unavailable": unavailable,
    }))
    .into_response())
}

#[derive(Deserialize, Default)]
struct ApproveBody {
    tool: Option<String>,
}

/// Accepts the current definitions of a server's changed tools as their pins.
async fn approve(
    State(state): State<ApiState>,
    Path(server): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body: ApproveBody = if body.iter().all(u8::is_ascii_whitespace) {
        ApproveBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("malformed JSON body: {e}")))?
    };
    let approved = ask(&state, |reply| ReconcileRequest::Approve {
        server,
        tool: body.tool,
        reply,
    })
    .await??;
    Ok(Json(json!({ "approved": approved })).into_response())
}

#[derive(Deserialize)]
struct EventsQuery {
    /// Send this many past events first.
    history: Option<usize>,
}

async fn events(
    State(state): State<ApiState>,
    Query(q): Query<EventsQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let live = BroadcastStream::new(state.handle.events.subscribe());
    let past = match q.history {
        Some(n) if n > 0 => state.handle.store.recent_events(n).unwrap_or_default(),
        _ => Vec::new(),
    };
    let last_past = past.last().map_or(0, |e| e.seq);
    let past = stream::iter(past.into_iter().map(|e| {
        Ok(Event::default()
            .id(e.seq.to_string())
            .event("event")
            .data(serde_json::to_string(&e).unwrap_or_default()))
    }));
    let live = live.filter_map(move |item| {
        let out = match item {
            Ok(e) if e.seq > last_past => Some(Ok(Event::default()
                .id(e.seq.to_string())
                .event("event")
                .data(serde_json::to_string(&e).unwrap_or_default()))),
            // A slow reader missed events: say so, and carry on.
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                Some(Ok(Event::default().event("lagged").data(n.to_string())))
            }
            Ok(_) => None,
        };
        std::future::ready(out)
    });
    let stream = past.chain(live).take_until(state.stop.clone().cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn shutdown_service(State(state): State<ApiState>) -> Response {
    state.shutdown.notify_one();
    // The service gives its servers this long; clients wait as long.
    let limit_ms = state.handle.snapshot.borrow().shutdown_limit_ms;
    (
        StatusCode::ACCEPTED,
        Json(json!({"message": "stopping every server, then the service", "limit_ms": limit_ms})),
    )
        .into_response()
}
