//! Connections to remote MCP servers (DESIGN 5.4): streamable HTTP (rmcp's
//! client), legacy HTTP+SSE and WebSocket (ours, as rmcp transports), and
//! newline-delimited JSON-RPC over TCP (rmcp's AsyncRead/AsyncWrite transport).
//! Every one is handed to rmcp, which does all JSON-RPC framing and state.
//!
//! Connection attempts retry `max_retries` times, `retry_delay` doubling with
//! jitter; a refusal of the credentials (HTTP 401/403) is not retried.
//! `headers` go on every request and never into a message: errors name the
//! endpoint without its query or credentials.

pub mod oauth;
pub mod sse;
pub mod stdio;
pub mod tls;
pub mod websocket;

use std::sync::Arc;
use std::time::Duration;

use rmcp::ClientHandler;
use rmcp::model::ProtocolVersion;
use rmcp::service::ClientLifecycleMode;
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::common::client_side_sse::SseRetryPolicy;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use tokio_util::sync::CancellationToken;

use crate::config::{ConnectionType, ProtocolSetting, ServerSpec};

/// Why a connection could not be made.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectError {
    /// Retrying will not help (bad credentials, invalid URL, TLS setup).
    Permanent(String),
    Transient(String),
    /// The server wants OAuth: its `WWW-Authenticate` challenge.
    Unauthorized {
        challenge: String,
        message: String,
    },
}

impl ConnectError {
    pub fn message(&self) -> &str {
        match self {
            ConnectError::Permanent(m) | ConnectError::Transient(m) => m,
            ConnectError::Unauthorized { message, .. } => message,
        }
    }
}

/// Whether the config sends a credential of its own (an `Authorization`
/// header): then a 401 refuses it, rather than asking for OAuth.
pub fn static_credential(spec: &ServerSpec) -> bool {
    spec.headers.keys().any(|h| h.eq_ignore_ascii_case("authorization"))
}

/// The URL (or `host:port` for tcp) a remote server is reached at.
pub fn endpoint(spec: &ServerSpec) -> Result<String, String> {
    let kind = spec.connection_type;
    if let Some(url) = &spec.url {
        return Ok(match kind {
            ConnectionType::Tcp => url.trim_start_matches("tcp://").trim_end_matches('/').to_string(),
            _ => url.clone(),
        });
    }
    let (Some(host), Some(port)) = (&spec.host, spec.port) else {
        return Err(format!("a {} server needs `url`, or `host` and `port`", kind.as_str()));
    };
    let default_path = match kind {
        ConnectionType::Http => "/mcp",
        ConnectionType::Sse => "/sse",
        _ => "",
    };
    let path = spec.path.as_deref().unwrap_or(default_path);
    let path = if path.is_empty() || path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    Ok(match kind {
        ConnectionType::Tcp | ConnectionType::Stdio => format!("{host}:{port}"),
        ConnectionType::Websocket => format!("ws://{host}:{port}{path}"),
        ConnectionType::Http | ConnectionType::Sse => format!("http://{host}:{port}{path}"),
    })
}

/// `host:port` of an endpoint, to wait for a locally started server's port.
pub fn socket_address(endpoint: &str) -> Option<String> {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.contains(':') && !authority.ends_with(']') {
        return Some(authority.to_string());
    }
    let port = if endpoint.starts_with("https://") || endpoint.starts_with("wss://") {
        443
    } else {
        80
    };
    Some(format!("{authority}:{port}"))
}

/// An endpoint safe to show: scheme, host, port and path; no credentials or query.
pub fn display_endpoint(endpoint: &str) -> String {
    let (scheme, rest) = endpoint.split_once("://").map_or(("", endpoint), |(s, r)| (s, r));
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let rest = match rest.split_once('/') {
        Some((authority, path)) => {
            let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
            format!("{authority}/{path}")
        }
        None => rest.rsplit_once('@').map_or(rest, |(_, a)| a).to_string(),
    };
    if scheme.is_empty() {
        rest
    } else {
        format!("{scheme}://{rest}")
    }
}

/// 401/403 (bad or missing credentials) and 404 (no MCP endpoint there) are
/// not worth retrying.
pub fn check_status(status: reqwest::StatusCode) -> Result<(), ConnectError> {
    match status.as_u16() {
        200..=299 => Ok(()),
        401 | 403 => Err(ConnectError::Permanent(format!(
            "HTTP {status}: the server refused the credentials (check `headers`)"
        ))),
        404 => Err(ConnectError::Permanent(format!(
            "HTTP {status}: no MCP endpoint at this URL (check `url` or `path`)"
        ))),
        _ => Err(ConnectError::Transient(format!("HTTP {status}"))),
    }
}

/// A failed MCP request in words, without the Rust type names rmcp's messages
/// carry (`Transport [rmcp::transport::worker::WorkerTransport<…>]`).
pub fn describe_service_error(e: &rmcp::ServiceError) -> String {
    use rmcp::ServiceError as E;
    match e {
        E::McpError(e) => format!("{} (error {})", e.message, e.code.0),
        E::TransportSend(t) => format!("the connection failed: {}", error_chain(&*t.error)),
        E::TransportClosed => "the connection is closed".into(),
        E::UnexpectedResponse => "it sent an unexpected response".into(),
        E::Cancelled { reason } => format!(
            "the request was cancelled ({})",
            reason.as_deref().unwrap_or("no reason given")
        ),
        E::Timeout { timeout } => format!("no answer within {}", crate::config::duration::format(*timeout)),
        other => scrub_urls(&other.to_string()),
    }
}

/// An error and its causes, each said once, URLs scrubbed.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    scrub_urls(&parts.join(": "))
}

/// A failed `initialize` in words (see [`describe_service_error`]).
pub fn describe_initialize_error(e: &rmcp::service::ClientInitializeError) -> String {
    use rmcp::service::ClientInitializeError as E;
    match e {
        E::TransportError { error, .. } => {
            format!("the connection failed: {}", error_chain(&*error.error))
        }
        E::ConnectionClosed(_) => "the server closed the connection".into(),
        E::JsonRpcError(e) => format!("it answered with an error: {}", e.message),
        other => scrub_urls(&other.to_string()),
    }
}

/// A reqwest error without its URL (which may hold a token), with its causes.
pub fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut text = if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Every URL in `text` shown as [`display_endpoint`] shows it: error messages
/// of HTTP libraries quote the URL, which may carry a token.
pub fn scrub_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let scheme_start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.'))
            .map_or(0, |i| i + 1);
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '(' | '"' | '\'' | ',' | '<' | '>'))
            .map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..scheme_start]);
        out.push_str(&display_endpoint(&rest[scheme_start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// An error and its causes, readable: the cause of an HTTP failure (refused
/// connection, unknown certificate issuer, ...) rather than library type names.
fn describe_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(r) = err.downcast_ref::<reqwest::Error>() {
            return scrub_urls(&describe_reqwest(r));
        }
        current = err.source();
    }
    let mut parts = vec![e.to_string()];
    let mut current = e.source();
    while let Some(err) = current {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = err.source();
    }
    // Drop Rust type names rmcp puts in brackets.
    let mut text = parts.join(": ");
    while let (Some(open), Some(close)) = (text.find(" ["), text.find("] ")) {
        if close < open || !text[open..close].contains("::") {
            break;
        }
        text.replace_range(open..close + 1, "");
    }
    scrub_urls(&text)
}

/// Whether an rmcp initialize error says the credentials were refused.
fn classify(message: String) -> ConnectError {
    let lower = message.to_ascii_lowercase();
    let refused = ["unauthorized", "forbidden", "auth required"]
        .iter()
        .any(|word| lower.contains(word))
        || ["401", "403"].iter().any(|code| has_status_code(&lower, code));
    if refused {
        ConnectError::Permanent(format!(
            "the server refused the credentials (check `headers`): {message}"
        ))
    } else if lower.contains("protocol version") {
        ConnectError::Permanent(message)
    } else {
        ConnectError::Transient(message)
    }
}

/// Whether `text` has `code` as a status code: a number of its own, not part
/// of another (a port like 40181) nor a port itself (`:401`).
fn has_status_code(text: &str, code: &str) -> bool {
    text.match_indices(code).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + code.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit() || c == ':') && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// rmcp's SSE reconnects on the streamable HTTP GET stream: bounded, doubling
/// from `retry_delay` (rmcp's default retries forever; DESIGN 5.6).
#[derive(Debug)]
struct BoundedRetry {
    max_retries: usize,
    delay: Duration,
}

impl SseRetryPolicy for BoundedRetry {
    fn retry(&self, current_times: usize) -> Option<Duration> {
        (current_times < self.max_retries).then(|| self.delay.saturating_mul(1 << current_times.min(10)))
    }
}

/// The HTTP client of a remote server: its `headers` on every request, its TLS settings.
pub fn http_client(spec: &ServerSpec, tls: Arc<rustls::ClientConfig>) -> Result<reqwest::Client, ConnectError> {
    // reqwest wants a process-wide rustls provider even with a preconfigured
    // config; ours is ring everywhere. Installing twice is a harmless error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &spec.headers {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ConnectError::Permanent(format!("header name `{name}` is not valid")))?;
        let mut value = reqwest::header::HeaderValue::from_str(value)
            .map_err(|_| ConnectError::Permanent(format!("the value of header `{name}` is not valid")))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .tls_backend_preconfigured((*tls).clone())
        .connect_timeout(spec.startup_timeout)
        .tcp_nodelay(true)
        // As rmcp's own client: no pooled connections (a response that is not
        // read to the end would stall the next request on the same connection).
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| ConnectError::Permanent(format!("HTTP client setup: {}", describe_reqwest(&e))))
}

/// Why a TLS handshake with an `https://` endpoint fails, if it does: HTTP
/// libraries report only "error sending request", so after a failed attempt
/// the handshake is tried once more on its own to name the cause.
async fn tls_failure(endpoint: &str, config: Arc<rustls::ClientConfig>) -> Option<String> {
    let rest = endpoint.strip_prefix("https://")?;
    let address = socket_address(endpoint)?;
    let host = rest
        .split(['/', ':', '?'])
        .next()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).ok()?;
    let tcp = tokio::net::TcpStream::connect(&address).await.ok()?;
    let connector = tokio_rustls::TlsConnector::from(config);
    match tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp)).await {
        Ok(Err(e)) => Some(format!("TLS handshake failed: {e}")),
        _ => None,
    }
}

/// How the manager opens its MCP session with the server (`protocol`).
pub fn lifecycle(spec: &ServerSpec) -> ClientLifecycleMode {
    let modern = || vec![ProtocolVersion::V_2026_07_28];
    match spec.protocol {
        ProtocolSetting::Legacy => ClientLifecycleMode::Initialize,
        // The SSE transport predates 2026-07-28: no server has both.
        _ if spec.connection_type == ConnectionType::Sse => ClientLifecycleMode::Initialize,
        ProtocolSetting::Modern => ClientLifecycleMode::Discover {
            preferred_versions: modern(),
        },
        ProtocolSetting::Auto => ClientLifecycleMode::Auto {
            preferred_versions: modern(),
            legacy_version: None,
        },
    }
}

/// Serves `handler` as the client of `transport`, in the lifecycle `spec` asks for.
pub async fn serve<H, T, E, A>(
    handler: H,
    transport: T,
    spec: &ServerSpec,
    ct: CancellationToken,
) -> Result<RunningService<RoleClient, H>, rmcp::service::ClientInitializeError>
where
    H: ClientHandler,
    T: rmcp::transport::IntoTransport<RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    rmcp::service::serve_client_with_lifecycle_and_ct(handler, transport, lifecycle(spec), ct).await
}

/// One connection attempt: transport, then MCP initialize.
pub async fn connect_once<H: ClientHandler>(
    handler: H,
    spec: &ServerSpec,
    ct: CancellationToken,
) -> Result<RunningService<RoleClient, H>, ConnectError> {
    connect_once_authorized(handler, spec, None, ct).await
}

/// The OAuth client of a streamable HTTP server: its `headers` and TLS
/// settings, and the tokens of `manager`.
pub fn oauth_client(
    spec: &ServerSpec,
    manager: rmcp::transport::AuthorizationManager,
) -> Result<oauth::OAuthClient, ConnectError> {
    let tls = tls::client_config(spec.tls.as_ref()).map_err(ConnectError::Permanent)?;
    Ok(rmcp::transport::AuthClient::new(http_client(spec, tls)?, manager))
}

/// [`connect_once`], a streamable HTTP server's requests carrying the
/// OAuth tokens of `auth` (see [`oauth_client`]).
pub async fn connect_once_authorized<H: ClientHandler>(
    handler: H,
    spec: &ServerSpec,
    auth: Option<&oauth::OAuthClient>,
    ct: CancellationToken,
) -> Result<RunningService<RoleClient, H>, ConnectError> {
    let endpoint = endpoint(spec).map_err(ConnectError::Permanent)?;
    let tls = || tls::client_config(spec.tls.as_ref()).map_err(ConnectError::Permanent);
    let initialized = match spec.connection_type {
        ConnectionType::Http => {
            let mut config = StreamableHttpClientTransportConfig::with_uri(endpoint.as_str());
            config.retry_config = Arc::new(BoundedRetry {
                max_retries: spec.max_retries as usize,
                delay: spec.retry_delay,
            });
            config.reinit_on_expired_session = true;
            match auth {
                Some(auth) => {
                    let transport = StreamableHttpClientTransport::with_client(auth.clone(), config);
                    serve(handler, transport, spec, ct).await
                }
                None => {
                    let client = http_client(spec, tls()?)?;
                    serve(
                        handler,
                        StreamableHttpClientTransport::with_client(client, config),
                        spec,
                        ct,
                    )
                    .await
                }
            }
        }
        ConnectionType::Sse => {
            let client = http_client(spec, tls()?)?;
            let transport = match sse::connect(client, &endpoint).await {
                Ok(transport) => transport,
                Err(e) => return Err(tls_failure(&endpoint, tls()?).await.map_or(e, ConnectError::Transient)),
            };
            serve(handler, transport, spec, ct).await
        }
        ConnectionType::Websocket => {
            let transport = websocket::connect(&endpoint, &spec.headers, tls()?).await?;
            serve(handler, transport, spec, ct).await
        }
        ConnectionType::Tcp => {
            let stream = tokio::net::TcpStream::connect(&endpoint)
                .await
                .map_err(|e| ConnectError::Transient(format!("cannot connect: {e}")))?;
            let _ = stream.set_nodelay(true);
            let (read, write) = stream.into_split();
            serve(handler, (read, write), spec, ct).await
        }
        ConnectionType::Stdio => {
            return Err(ConnectError::Permanent("a stdio server has no network endpoint".into()));
        }
    };
    match initialized {
        Ok(service) => Ok(service),
        Err(e) => {
            // A challenge is a request for OAuth, unless the config already
            // sends a credential: then that credential was refused.
            if let Some(challenge) = e.auth_challenge()
                && !static_credential(spec)
            {
                let message = if challenge.contains("insufficient_scope") {
                    "it asks for more OAuth scope (HTTP 403)"
                } else {
                    "it asks for OAuth authorization (HTTP 401)"
                };
                return Err(ConnectError::Unauthorized {
                    challenge: challenge.to_string(),
                    message: message.into(),
                });
            }
            let described = describe_error(&e);
            if let Some(tls_error) = tls_failure(&endpoint, tls()?).await {
                return Err(ConnectError::Transient(tls_error));
            }
            Err(classify(described))
        }
    }
}

/// Connects with retries: up to `max_retries` more attempts after a transient
/// failure, waiting `retry_delay`, doubling, ±10 % jitter. Each attempt is
/// bounded by `startup_timeout`.
pub async fn connect<H: ClientHandler + Clone>(
    handler: H,
    spec: &ServerSpec,
    auth: Option<&oauth::OAuthClient>,
    ct: CancellationToken,
    jitter: &mut crate::backoff::Jitter,
) -> Result<RunningService<RoleClient, H>, ConnectError> {
    let shown = endpoint(spec).map(|e| display_endpoint(&e)).unwrap_or_default();
    let mut attempt = 0u32;
    loop {
        let result = tokio::time::timeout(
            spec.startup_timeout,
            connect_once_authorized(handler.clone(), spec, auth, ct.clone()),
        )
        .await;
        let error = match result {
            Ok(Ok(service)) => return Ok(service),
            Ok(Err(e @ ConnectError::Permanent(_))) => {
                return Err(ConnectError::Permanent(format!("{shown}: {}", e.message())));
            }
            Ok(Err(ConnectError::Unauthorized { challenge, message })) => {
                return Err(ConnectError::Unauthorized {
                    challenge,
                    message: format!("{shown}: {message}"),
                });
            }
            Ok(Err(ConnectError::Transient(m))) => m,
            Err(_) => format!(
                "no MCP session within startup_timeout ({})",
                crate::config::duration::format(spec.startup_timeout)
            ),
        };
        if attempt >= spec.max_retries || ct.is_cancelled() {
            let tries = attempt + 1;
            return Err(ConnectError::Transient(format!(
                "{shown}: {error} ({tries} attempt{})",
                if tries == 1 { "" } else { "s" }
            )));
        }
        let policy = crate::backoff::BackoffPolicy {
            initial: spec.retry_delay,
            max: spec.max_restart_delay.max(spec.retry_delay),
            jitter: 0.1,
        };
        attempt += 1;
        let delay = policy.delay(attempt, jitter.unit());
        tracing::debug!(endpoint = %shown, "connection attempt {attempt} failed ({error}); retrying in {delay:?}");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = ct.cancelled() => return Err(ConnectError::Transient(format!("{shown}: {error}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: serde_json::Value) -> ServerSpec {
        let serde_json::Value::Object(map) = yaml else {
            unreachable!("an object")
        };
        let context = crate::config::spec::NormalizeContext {
            base_dir: std::path::Path::new("/"),
        };
        let (spec, problems) = crate::config::spec::normalize(&map, &context);
        assert!(problems.is_empty(), "{problems:?}");
        spec.expect("a valid spec")
    }

    #[test]
    fn protocol_picks_the_lifecycle() {
        let auto = spec(serde_json::json!({ "command": "x" }));
        assert_eq!(auto.protocol, ProtocolSetting::Auto);
        assert!(matches!(lifecycle(&auto), ClientLifecycleMode::Auto { .. }));
        let legacy = spec(serde_json::json!({ "command": "x", "protocol": "2025-11-25" }));
        assert_eq!(lifecycle(&legacy), ClientLifecycleMode::Initialize);
        let modern = spec(serde_json::json!({ "command": "x", "protocol": "2026-07-28" }));
        assert!(matches!(lifecycle(&modern), ClientLifecycleMode::Discover { .. }));
        // SSE predates 2026-07-28: initialize, whatever the setting.
        let sse = spec(serde_json::json!({ "url": "http://h/sse", "type": "sse", "protocol": "2026-07-28" }));
        assert_eq!(lifecycle(&sse), ClientLifecycleMode::Initialize);
    }

    #[test]
    fn endpoints_are_shown_without_secrets() {
        assert_eq!(
            display_endpoint("https://user:pw@api.example.com:8443/mcp?token=abc"),
            "https://api.example.com:8443/mcp"
        );
        assert_eq!(display_endpoint("localhost:9000"), "localhost:9000");
        assert_eq!(display_endpoint("ws://h:1"), "ws://h:1");
    }

    #[test]
    fn urls_in_messages_lose_their_secrets() {
        assert_eq!(
            scrub_urls("error sending request for url (https://h:1/mcp?key=s3cret): refused"),
            "error sending request for url (https://h:1/mcp): refused"
        );
        assert_eq!(scrub_urls("no url here"), "no url here");
    }

    #[test]
    fn socket_addresses_default_their_port() {
        assert_eq!(
            socket_address("http://localhost:3000/mcp").as_deref(),
            Some("localhost:3000")
        );
        assert_eq!(
            socket_address("https://example.com/mcp").as_deref(),
            Some("example.com:443")
        );
        assert_eq!(socket_address("ws://example.com").as_deref(), Some("example.com:80"));
        assert_eq!(socket_address("127.0.0.1:9").as_deref(), Some("127.0.0.1:9"));
    }

    #[test]
    fn bounded_retry_gives_up() {
        let policy = BoundedRetry {
            max_retries: 2,
            delay: Duration::from_millis(100),
        };
        assert_eq!(policy.retry(0), Some(Duration::from_millis(100)));
        assert_eq!(policy.retry(1), Some(Duration::from_millis(200)));
        assert_eq!(policy.retry(2), None);
    }

    #[test]
    fn refused_credentials_are_permanent() {
        assert!(matches!(
            classify("Auth required: HTTP 401".into()),
            ConnectError::Permanent(_)
        ));
        assert!(matches!(
            classify("connection reset".into()),
            ConnectError::Transient(_)
        ));
        // A port that has 401 in it is no refusal (it failed a CI run).
        for refused_connection in [
            "error sending request for url (http://127.0.0.1:40181/mcp): Connection refused",
            "error sending request for url (http://10.0.0.1:401/mcp): Connection refused",
            "tcp connect error 127.0.0.1:14030",
        ] {
            assert!(
                matches!(classify(refused_connection.into()), ConnectError::Transient(_)),
                "{refused_connection}"
            );
        }
        assert!(matches!(
            classify("Unexpected server response: 403 (HTTP 403)".into()),
            ConnectError::Permanent(_)
        ));
        assert!(check_status(reqwest::StatusCode::UNAUTHORIZED).is_err());
        assert!(matches!(
            check_status(reqwest::StatusCode::BAD_GATEWAY),
            Err(ConnectError::Transient(_))
        ));
    }
}
