//! The normalized server spec (DESIGN 3.2) and the manager settings (DESIGN 3.4).
//!
//! Raw config objects arrive here after environment expansion and schema validation;
//! [`normalize`] maps aliases (`type`, `env`, `cwd`, ...) to canonical fields, fills
//! defaults, resolves paths against the defining file, and checks the semantic rules
//! the schema cannot express. Everything here is pure.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionType {
    Stdio,
    Http,
    Sse,
    Websocket,
    Tcp,
}

impl ConnectionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionType::Stdio => "stdio",
            ConnectionType::Http => "http",
            ConnectionType::Sse => "sse",
            ConnectionType::Websocket => "websocket",
            ConnectionType::Tcp => "tcp",
        }
    }

    pub fn is_remote(self) -> bool {
        self != ConnectionType::Stdio
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerType {
    Python,
    Node,
    Go,
    Rust,
    Shell,
    Binary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpdateStrategy {
    Rolling,
    #[default]
    Recreate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nofile: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ToolFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// A server's `prefix`: `true` always prefixes its names in the gateway,
/// `false` never does, a text prefixes with that text instead of its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PrefixSetting {
    Flag(bool),
    Text(String),
}

/// How gateway clients share the server (`session`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SessionMode {
    /// Every client's requests go over the managed instance's session.
    #[default]
    Shared,
    /// Each gateway client session gets its own upstream session (its own
    /// process for a stdio server), started on its first request and ended
    /// when the client session ends: for stateful servers (browsers, shells).
    PerClient,
}

impl SessionMode {
    pub fn is_shared(&self) -> bool {
        *self == SessionMode::Shared
    }
}

/// OAuth for a remote server (`auth: oauth`, or these settings): the MCP
/// authorization flow, tokens kept in the state dir (`mcp-manager login`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    #[serde(rename = "type")]
    pub kind: AuthKind,
    /// Scopes to ask for; empty: what the server asks for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// A pre-registered client (else the client registers itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Sensitive: fingerprinted in views, never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// A client ID metadata document URL, where the server supports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_metadata_url: Option<String>,
    #[serde(default, skip_serializing_if = "Grant::is_authorization_code")]
    pub grant: Grant,
}

impl AuthSettings {
    /// `auth: oauth`: every setting left to the server.
    pub fn oauth() -> AuthSettings {
        AuthSettings {
            kind: AuthKind::Oauth,
            scopes: Vec::new(),
            client_id: None,
            client_secret: None,
            client_metadata_url: None,
            grant: Grant::AuthorizationCode,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    Oauth,
}

/// How tokens are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// A person logs in once in a browser (`mcp-manager login`); refreshed after.
    #[default]
    AuthorizationCode,
    /// A service account: `client_id` and `client_secret`, no browser.
    ClientCredentials,
}

impl Grant {
    pub fn is_authorization_code(&self) -> bool {
        *self == Grant::AuthorizationCode
    }
}

/// A server's `kubernetes:` block (see the schema for each field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<bool>,
    /// `{requests: {cpu, memory}, limits: {cpu, memory}}`, as Kubernetes has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Value>,
    /// Env var → the Secret key it comes from.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_from_secret: BTreeMap<String, SecretKeyRef>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// A JSON merge patch (RFC 7386) onto the rendered pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// Which MCP lifecycle the manager speaks to the server (`protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ProtocolSetting {
    /// `initialize` (protocol 2025-11-25 and earlier): every server has it.
    #[serde(rename = "2025-11-25")]
    Legacy,
    /// `server/discover` and per-request metadata (protocol 2026-07-28):
    /// the server's own input-required results, the tasks extension and
    /// `subscriptions/listen` reach clients as the server wrote them.
    #[serde(rename = "2026-07-28")]
    Modern,
    /// Tries `server/discover` and falls back to `initialize` when the
    /// server does not know it (a server that does not answer at all costs
    /// 10 s of its start). The default.
    #[default]
    #[serde(rename = "auto")]
    Auto,
}

impl ProtocolSetting {
    pub fn is_auto(&self) -> bool {
        *self == ProtocolSetting::Auto
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    #[serde(default, with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub list_ttl: Option<Duration>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tools: BTreeMap<String, DurationValue>,
}

/// A duration inside a map (serde's `with` does not reach map values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DurationValue(#[serde(with = "duration")] pub Duration);

/// One server, normalized: canonical names, defaults filled, paths absolute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub connection_type: ConnectionType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_type: Option<ServerType>,
    pub working_directory: PathBuf,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSettings>,
    #[serde(with = "duration")]
    pub startup_timeout: Duration,
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    pub max_retries: u32,
    #[serde(with = "duration")]
    pub retry_delay: Duration,
    #[serde(with = "duration")]
    pub health_check_interval: Duration,
    #[serde(with = "duration")]
    pub health_check_timeout: Duration,
    #[serde(with = "duration")]
    pub degraded_latency: Duration,
    pub failure_threshold: u32,
    pub recovery_threshold: u32,
    pub auto_restart: bool,
    #[serde(with = "duration")]
    pub restart_delay: Duration,
    #[serde(with = "duration")]
    pub max_restart_delay: Duration,
    #[serde(with = "duration")]
    pub stop_grace_period: Duration,
    pub max_restart_attempts: u32,
    pub max_concurrent_requests: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_rate_limit: Option<f64>,
    pub replicas: u32,
    pub update_strategy: UpdateStrategy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default)]
    pub tools: ToolFilter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSettings>,
    /// How the gateway names this server's tools, prompts and resources
    /// (overrides `manager.gateway.prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<PrefixSetting>,
    /// `shared` (default) or `per_client`. Omitted when shared, so the spec
    /// hashes of earlier versions stay the same.
    #[serde(default, skip_serializing_if = "SessionMode::is_shared")]
    pub session: SessionMode,
    /// `auto` (default), `2025-11-25` or `2026-07-28`. Omitted when auto,
    /// so the spec hashes of earlier versions stay the same.
    #[serde(default, skip_serializing_if = "ProtocolSetting::is_auto")]
    pub protocol: ProtocolSetting,
    /// OAuth (`auth: oauth`). Omitted when absent, so the spec hashes of
    /// earlier versions stay the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSettings>,
    /// How `render kubernetes` deploys it; no part of how it runs here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesSettings>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub priority: i64,
    pub enabled: bool,
}

/// Defaults for every optional field (DESIGN 3.2), as raw JSON so they go through
/// the same deserialization as user values.
fn defaults() -> Map<String, Value> {
    let Value::Object(map) = serde_json::json!({
        "args": [],
        "startup_timeout": "30s",
        "request_timeout": "60s",
        "max_retries": 3,
        "retry_delay": "1s",
        "health_check_interval": "30s",
        "health_check_timeout": "10s",
        "degraded_latency": "1s",
        "failure_threshold": 3,
        "recovery_threshold": 2,
        "auto_restart": true,
        "restart_delay": "1s",
        "max_restart_delay": "60s",
        "stop_grace_period": "10s",
        "max_restart_attempts": 5,
        "max_concurrent_requests": 10,
        "replicas": 1,
        "update_strategy": "recreate",
        "priority": 0,
        "enabled": true,
    }) else {
        unreachable!("a json! object literal is an object")
    };
    map
}

/// A semantic problem in one server, at a JSON pointer relative to the server object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    pub pointer: String,
    pub message: String,
    pub warning: bool,
}

impl SpecProblem {
    fn error(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        SpecProblem {
            pointer: pointer.into(),
            message: message.into(),
            warning: false,
        }
    }
}

/// Where a spec is being normalized: what relative paths are relative to.
pub struct NormalizeContext<'a> {
    /// The folder of the file that defines the server.
    pub base_dir: &'a Path,
}

/// Accepted third-party fields with no meaning here.
const IGNORED_FIELDS: &[&str] = &["autoApprove", "alwaysAllow", "dev", "gallery", "version"];

/// Normalizes one schema-valid raw server object into a [`ServerSpec`].
///
/// Returns the spec (if there were no errors) and every problem found.
pub fn normalize(raw: &Map<String, Value>, ctx: &NormalizeContext<'_>) -> (Option<ServerSpec>, Vec<SpecProblem>) {
    let mut problems = Vec::new();
    let mut obj = raw.clone();
    for key in IGNORED_FIELDS {
        obj.remove(*key);
    }

    // Aliases written by other MCP clients.
    let aliases: [(&str, &str); 5] = [
        ("type", "connection_type"),
        ("transportType", "connection_type"),
        ("env", "environment"),
        ("cwd", "working_directory"),
        ("timeout", "request_timeout"),
    ];
    for (alias, canonical) in aliases {
        if let Some(value) = obj.remove(alias) {
            if obj.contains_key(canonical) {
                problems.push(SpecProblem::error(
                    format!("/{alias}"),
                    format!("`{alias}` and `{canonical}` are the same setting; give only one"),
                ));
                continue;
            }
            obj.insert(canonical.to_string(), value);
        }
    }
    if let Some(Value::String(t)) = obj.get("connection_type") {
        let canonical = match t.as_str() {
            "streamable-http" | "streamableHttp" => "http",
            "ws" => "websocket",
            other => other,
        };
        obj.insert("connection_type".into(), Value::String(canonical.into()));
    }
    if let Some(disabled) = obj.remove("disabled") {
        if obj.contains_key("enabled") {
            problems.push(SpecProblem::error(
                "/disabled",
                "`disabled` and `enabled` contradict each other; give only `enabled`",
            ));
        } else if let Value::Bool(d) = disabled {
            obj.insert("enabled".into(), Value::Bool(!d));
        }
    }
    if let Some(Value::Array(names)) = obj.remove("disabledTools") {
        let tools = obj.entry("tools").or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(tools) = tools
            && let Value::Array(deny) = tools.entry("deny").or_insert_with(|| Value::Array(Vec::new()))
        {
            deny.extend(names);
        }
    }
    if obj.remove("envFile").is_some() {
        problems.push(SpecProblem::error(
            "/envFile",
            "`envFile` is not supported; put the variables under `env` (values may use ${VAR})",
        ));
    }

    // Stringify scalar args and environment values (YAML users write `PORT: 8080`).
    for key in ["args", "environment"] {
        match obj.get_mut(key) {
            Some(Value::Array(items)) => items.iter_mut().for_each(stringify),
            Some(Value::Object(map)) => map.values_mut().for_each(stringify),
            _ => {}
        }
    }

    // Connection type: explicit, or inferred from how the server is reached.
    let explicit_type = obj.contains_key("connection_type");
    let has_command = obj.contains_key("command");
    let has_remote = obj.contains_key("url") || obj.contains_key("host");
    if !obj.contains_key("connection_type") {
        let inferred = match (has_command, has_remote) {
            (true, true) => {
                problems.push(SpecProblem::error(
                    "",
                    "both `command` and `url`/`host` are given: set `connection_type` to say how to connect (http, sse, websocket or tcp)",
                ));
                "stdio"
            }
            // Cursor and Claude Desktop write bare `url`s; a `/sse` endpoint is the legacy transport.
            (false, true)
                if obj
                    .get("url")
                    .and_then(Value::as_str)
                    .is_some_and(|u| u.trim_end_matches('/').ends_with("/sse")) =>
            {
                "sse"
            }
            (false, true) => "http",
            _ => "stdio",
        };
        obj.insert("connection_type".into(), Value::String(inferred.into()));
    }

    // Fields that cannot matter for how this server is reached are ignored (with
    // a warning), so they neither fail validation nor force restarts.
    let stdio = obj.get("connection_type").and_then(Value::as_str) == Some("stdio");
    let irrelevant: &[&str] = if !explicit_type && has_command && has_remote {
        // Ambiguous, and already an error: nothing to ignore.
        &[]
    } else if stdio {
        &["url", "host", "port", "path", "headers", "tls", "auth"]
    } else if !has_command {
        &[
            "args",
            "environment",
            "working_directory",
            "server_type",
            "resources",
            "stop_grace_period",
        ]
    } else {
        &[]
    };
    for field in irrelevant {
        if obj.remove(*field).is_some() {
            let why = if stdio {
                "it only matters for remote servers (connection_type http, sse, websocket or tcp)"
            } else {
                "mcp-manager does not start this server (it has no `command`), it only connects to it"
            };
            problems.push(SpecProblem {
                pointer: field_pointer(raw, field),
                message: format!("`{field}` is ignored: {why}"),
                warning: true,
            });
        }
    }

    // Paths relative to the defining file.
    let wd = match obj.get("working_directory").and_then(Value::as_str) {
        Some(dir) => resolve(ctx.base_dir, dir),
        None => ctx.base_dir.to_path_buf(),
    };
    obj.insert(
        "working_directory".into(),
        Value::String(wd.to_string_lossy().into_owned()),
    );
    if let Some(Value::String(cmd)) = obj.get("command")
        && (cmd.starts_with("./") || cmd.starts_with("../"))
    {
        let resolved = resolve(&wd, cmd).to_string_lossy().into_owned();
        obj.insert("command".into(), Value::String(resolved));
    }
    if let Some(Value::Object(tls)) = obj.get_mut("tls") {
        for key in ["ca_file", "client_cert", "client_key"] {
            if let Some(Value::String(p)) = tls.get(key) {
                let resolved = resolve(ctx.base_dir, p).to_string_lossy().into_owned();
                tls.insert(key.into(), Value::String(resolved));
            }
        }
    }
    // `auth: oauth` is short for `auth: {type: oauth}`.
    if obj.get("auth").and_then(Value::as_str) == Some("oauth") {
        obj.insert("auth".into(), serde_json::json!({ "type": "oauth" }));
    }
    if !obj.contains_key("server_type")
        && let Some(t) = obj.get("command").and_then(Value::as_str).and_then(detect_server_type)
    {
        obj.insert("server_type".into(), Value::String(t.into()));
    }

    for (key, value) in defaults() {
        obj.entry(key).or_insert(value);
    }

    let spec: ServerSpec = match serde_json::from_value(Value::Object(obj)) {
        Ok(spec) => spec,
        Err(e) => {
            problems.push(SpecProblem::error("", e.to_string()));
            return (None, problems);
        }
    };
    check(&spec, raw, &mut problems);
    let ok = problems.iter().all(|p| p.warning);
    (ok.then_some(spec), problems)
}

fn stringify(v: &mut Value) {
    match v {
        Value::Number(n) => *v = Value::String(n.to_string()),
        Value::Bool(b) => *v = Value::String(b.to_string()),
        _ => {}
    }
}

/// Where a canonical field was written in the raw object (it may have been an alias).
fn field_pointer(raw: &Map<String, Value>, canonical: &str) -> String {
    let alias = match canonical {
        "connection_type" => ["type", "transportType"].into_iter().find(|a| raw.contains_key(*a)),
        "environment" => Some("env").filter(|a| raw.contains_key(*a)),
        "working_directory" => Some("cwd").filter(|a| raw.contains_key(*a)),
        "request_timeout" => Some("timeout").filter(|a| raw.contains_key(*a)),
        _ => None,
    };
    match (raw.contains_key(canonical), alias) {
        (false, Some(alias)) => format!("/{alias}"),
        (true, _) => format!("/{canonical}"),
        (false, None) => String::new(),
    }
}

/// Semantic rules the schema cannot express (DESIGN 3.3).
fn check(spec: &ServerSpec, raw: &Map<String, Value>, problems: &mut Vec<SpecProblem>) {
    let at = |field: &str| field_pointer(raw, field);
    match spec.connection_type {
        ConnectionType::Stdio => {
            if spec.command.is_none() {
                problems.push(SpecProblem::error(
                    at("connection_type"),
                    "a stdio server needs `command` (or give `url` for a remote server)",
                ));
            }
        }
        remote => {
            if spec.url.is_none() && !(spec.host.is_some() && spec.port.is_some()) {
                problems.push(SpecProblem::error(
                    at("connection_type"),
                    format!(
                        "{} {} server needs `url`, or `host` and `port`",
                        article(remote),
                        remote.as_str()
                    ),
                ));
            }
            if spec.url.is_some() && (spec.host.is_some() || spec.port.is_some()) {
                problems.push(SpecProblem::error(
                    "/url",
                    "give either `url` or `host`/`port`, not both",
                ));
            }
            if let Some(url) = &spec.url {
                let schemes: &[&str] = match remote {
                    ConnectionType::Websocket => &["ws://", "wss://"],
                    ConnectionType::Tcp => &["tcp://"],
                    _ => &["http://", "https://"],
                };
                if !schemes.iter().any(|s| url.starts_with(s)) {
                    problems.push(SpecProblem::error(
                        "/url",
                        format!(
                            "{} {} url must start with {}",
                            article(remote),
                            remote.as_str(),
                            schemes.join(" or ")
                        ),
                    ));
                }
            }
        }
    }
    for field in [
        "startup_timeout",
        "request_timeout",
        "health_check_interval",
        "health_check_timeout",
    ] {
        let value = match field {
            "startup_timeout" => spec.startup_timeout,
            "request_timeout" => spec.request_timeout,
            "health_check_interval" => spec.health_check_interval,
            _ => spec.health_check_timeout,
        };
        if value.is_zero() {
            problems.push(SpecProblem::error(
                at(field),
                format!("`{field}` must be greater than zero"),
            ));
        }
    }
    if spec.max_restart_delay < spec.restart_delay {
        problems.push(SpecProblem::error(
            at("max_restart_delay"),
            format!(
                "`max_restart_delay` ({}) is shorter than `restart_delay` ({})",
                duration::format(spec.max_restart_delay),
                duration::format(spec.restart_delay)
            ),
        ));
    }
    if let Some(auth) = &spec.auth {
        if spec.connection_type != ConnectionType::Http {
            problems.push(SpecProblem::error(
                "/auth",
                format!(
                    "OAuth is for streamable HTTP servers; this one is reached over {}",
                    spec.connection_type.as_str()
                ),
            ));
        }
        if auth.grant == Grant::ClientCredentials && (auth.client_id.is_none() || auth.client_secret.is_none()) {
            problems.push(SpecProblem::error(
                "/auth/grant",
                "the client_credentials grant needs `client_id` and `client_secret`",
            ));
        }
        if auth.client_secret.is_some() && auth.client_id.is_none() {
            problems.push(SpecProblem::error(
                "/auth/client_secret",
                "`client_secret` belongs to a pre-registered client: give its `client_id` too",
            ));
        }
    }
    if spec.tls.as_ref().is_some_and(|t| t.insecure_skip_verify) {
        problems.push(SpecProblem {
            pointer: "/tls/insecure_skip_verify".into(),
            message: "TLS certificate verification is disabled (`insecure_skip_verify`): anyone on the network path can impersonate this server"
                .into(),
            warning: true,
        });
    }
    for (list, globs) in [("allow", &spec.tools.allow), ("deny", &spec.tools.deny)] {
        for (i, glob) in globs.iter().enumerate() {
            if glob.is_empty() || glob.contains(char::is_whitespace) {
                problems.push(SpecProblem::error(
                    format!("/tools/{list}/{i}"),
                    format!("`{glob}` is not a tool name pattern"),
                ));
            }
        }
    }
}

fn article(t: ConnectionType) -> &'static str {
    match t {
        ConnectionType::Http | ConnectionType::Sse => "an",
        _ => "a",
    }
}

/// Joins `path` onto `base` (unless absolute) and removes `.` and `..` lexically.
pub fn resolve(base: &Path, path: &str) -> PathBuf {
    let expanded = path
        .strip_prefix("~/")
        .and_then(|rest| std::env::home_dir().map(|h| h.join(rest)));
    let joined = match expanded {
        Some(p) => p,
        None => base.join(path),
    };
    let mut out = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Guesses the server type from the program name.
pub fn detect_server_type(command: &str) -> Option<&'static str> {
    let program = Path::new(command).file_name()?.to_str()?;
    let program = program.trim_end_matches(".exe");
    Some(match program {
        p if p.starts_with("python") || matches!(p, "uv" | "uvx" | "pipx" | "poetry" | "pdm") => "python",
        "node" | "npx" | "npm" | "pnpm" | "yarn" | "bun" | "bunx" | "deno" | "tsx" | "ts-node" => "node",
        "go" => "go",
        "cargo" => "rust",
        "sh" | "bash" | "zsh" | "dash" | "fish" => "shell",
        _ => "binary",
    })
}

// ---------------------------------------------------------------------------------
// Sensitive values (DESIGN 3.2).

/// Whether a key names a secret: `*TOKEN*`, `*KEY*`, `*SECRET*`, `*PASSWORD*` and kin.
pub fn is_secret_key(key: &str) -> bool {
    let upper = key.to_ascii_uppercase();
    [
        "TOKEN",
        "KEY",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "CREDENTIAL",
        "AUTH",
        "COOKIE",
    ]
    .iter()
    .any(|s| upper.contains(s))
}

/// Indexes of `args` that hold secrets: `--api-key=x`, or the value after `--token`.
pub fn sensitive_args(args: &[String]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        let Some(flag) = arg.strip_prefix('-') else { continue };
        match flag.split_once('=') {
            Some((name, _)) if is_secret_key(name) => out.push(i),
            None if is_secret_key(flag) && i + 1 < args.len() && !args[i + 1].starts_with('-') => out.push(i + 1),
            _ => {}
        }
    }
    out
}

/// Whether a URL carries credentials (a password, or a secret-looking query parameter).
pub fn url_is_sensitive(url: &str) -> bool {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return true;
    }
    url.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|pair| is_secret_key(pair.split('=').next().unwrap_or("")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn norm(v: Value) -> (Option<ServerSpec>, Vec<SpecProblem>) {
        let Value::Object(map) = v else {
            panic!("test input must be an object")
        };
        normalize(
            &map,
            &NormalizeContext {
                base_dir: Path::new("/cfg/dir"),
            },
        )
    }

    #[test]
    fn fills_defaults_and_resolves_paths() {
        let (spec, problems) = norm(json!({"command": "./bin/server", "args": ["-v", 3], "cwd": "sub"}));
        assert!(problems.is_empty(), "{problems:?}");
        let spec = spec.unwrap();
        assert_eq!(spec.connection_type, ConnectionType::Stdio);
        assert_eq!(spec.working_directory, PathBuf::from("/cfg/dir/sub"));
        assert_eq!(spec.command.as_deref(), Some("/cfg/dir/sub/bin/server"));
        assert_eq!(spec.args, vec!["-v", "3"]);
        assert_eq!(spec.request_timeout, Duration::from_secs(60));
        assert_eq!(spec.max_restart_delay, Duration::from_secs(60));
        assert_eq!(spec.server_type, Some(ServerType::Binary));
        assert!(spec.enabled);
    }

    #[test]
    fn maps_client_aliases() {
        let (spec, problems) = norm(
            json!({"type": "streamable-http", "url": "https://x/mcp", "disabled": true, "timeout": 5, "disabledTools": ["rm"]}),
        );
        assert!(problems.is_empty(), "{problems:?}");
        let spec = spec.unwrap();
        assert_eq!(spec.connection_type, ConnectionType::Http);
        assert!(!spec.enabled);
        assert_eq!(spec.request_timeout, Duration::from_secs(5));
        assert_eq!(spec.tools.deny, vec!["rm"]);
    }

    #[test]
    fn infers_connection_type() {
        assert_eq!(
            norm(json!({"url": "http://h/mcp"})).0.unwrap().connection_type,
            ConnectionType::Http
        );
        let (_, problems) = norm(json!({"command": "x", "url": "http://h/mcp"}));
        assert!(problems[0].message.contains("set `connection_type`"));
    }

    /// Issue 13: fields that cannot matter for a connection type are ignored with
    /// a warning (the seed README lists `host`/`port` for a stdio server).
    #[test]
    fn fields_that_cannot_matter_are_ignored_with_a_warning() {
        let (spec, problems) =
            norm(json!({"command": "x", "connection_type": "stdio", "host": "localhost", "port": 3000}));
        let spec = spec.expect("valid");
        assert_eq!((spec.host, spec.port), (None, None));
        let warnings: Vec<_> = problems
            .iter()
            .filter(|p| p.warning)
            .map(|p| p.pointer.as_str())
            .collect();
        assert_eq!(warnings, ["/host", "/port"], "{problems:?}");
        assert!(
            problems[0].message.contains("only matters for remote servers"),
            "{problems:?}"
        );

        let (spec, problems) = norm(json!({"url": "https://x/mcp", "cwd": "sub", "env": {"A": "1"}, "args": ["a"]}));
        let spec = spec.expect("valid");
        assert!(spec.environment.is_empty() && spec.args.is_empty());
        let warnings: Vec<_> = problems
            .iter()
            .filter(|p| p.warning)
            .map(|p| p.pointer.as_str())
            .collect();
        assert_eq!(warnings, ["/args", "/env", "/cwd"], "{problems:?}");
        assert!(problems[0].message.contains("has no `command`"), "{problems:?}");

        // Remote with `command`: mcp-manager starts it, so its folder matters.
        let (spec, problems) =
            norm(json!({"connection_type": "tcp", "command": "srv", "host": "127.0.0.1", "port": 9, "cwd": "sub"}));
        assert!(spec.is_some() && problems.is_empty(), "{problems:?}");
        // Ambiguous (command and url, no type) stays an error, without warnings.
        let (spec, problems) = norm(json!({"command": "x", "url": "http://x"}));
        assert!(spec.is_none() && problems.iter().all(|p| !p.warning), "{problems:?}");
    }

    #[test]
    fn semantic_errors() {
        let cases = [
            (
                json!({"connection_type": "stdio"}),
                "/connection_type",
                "needs `command`",
            ),
            (json!({"connection_type": "http"}), "/connection_type", "needs `url`"),
            (json!({"type": "sse"}), "/type", "needs `url`"),
            (
                json!({"connection_type": "websocket", "url": "http://x"}),
                "/url",
                "must start with ws://",
            ),
            (
                json!({"command": "x", "request_timeout": 0}),
                "/request_timeout",
                "greater than zero",
            ),
            (
                json!({"command": "x", "restart_delay": "5s", "max_restart_delay": "1s"}),
                "/max_restart_delay",
                "shorter than",
            ),
            (
                json!({"command": "x", "env": {}, "environment": {}}),
                "/env",
                "same setting",
            ),
            (json!({"command": "x", "envFile": ".env"}), "/envFile", "not supported"),
        ];
        for (input, pointer, needle) in cases {
            let (spec, problems) = norm(input.clone());
            assert!(spec.is_none(), "{input} should fail");
            assert!(
                problems
                    .iter()
                    .any(|p| p.pointer == pointer && p.message.contains(needle)),
                "{input}: {problems:?}"
            );
        }
    }

    #[test]
    fn auth_oauth_is_checked_where_it_can_work() {
        let (spec, problems) = norm(json!({"url": "https://h/mcp", "auth": "oauth"}));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(spec.unwrap().auth, Some(AuthSettings::oauth()));
        // Without `auth`, the field is not serialized: hashes stay as they were.
        let (plain, _) = norm(json!({"url": "https://h/mcp"}));
        assert!(!serde_json::to_string(&plain.unwrap()).unwrap().contains("auth"));
        let (_, problems) = norm(json!({"url": "ws://h/mcp", "type": "websocket", "auth": "oauth"}));
        assert!(
            problems.iter().any(|p| p.pointer == "/auth" && !p.warning),
            "{problems:?}"
        );
        let (_, problems) =
            norm(json!({"url": "https://h/mcp", "auth": {"type": "oauth", "grant": "client_credentials"}}));
        assert!(problems.iter().any(|p| p.pointer == "/auth/grant"), "{problems:?}");
        let (_, problems) = norm(json!({"url": "https://h/mcp", "auth": {"type": "oauth", "client_secret": "s"}}));
        assert!(
            problems.iter().any(|p| p.pointer == "/auth/client_secret"),
            "{problems:?}"
        );
        // A stdio server has no use for it: ignored with a warning.
        let (spec, problems) = norm(json!({"command": "x", "auth": "oauth"}));
        assert!(spec.unwrap().auth.is_none());
        assert!(problems.iter().all(|p| p.warning), "{problems:?}");
    }

    #[test]
    fn insecure_tls_is_a_warning_not_an_error() {
        let (spec, problems) = norm(json!({"url": "https://h/mcp", "tls": {"insecure_skip_verify": true}}));
        assert!(spec.is_some());
        assert!(problems[0].warning);
    }

    #[test]
    fn secret_detection() {
        assert!(is_secret_key("GITHUB_TOKEN") && is_secret_key("api_key") && is_secret_key("Authorization"));
        assert!(!is_secret_key("MODE"));
        let args: Vec<String> = ["--token", "abc", "--api-key=x", "--verbose", "--name", "n"]
            .map(String::from)
            .into();
        assert_eq!(sensitive_args(&args), vec![1, 2]);
        assert!(url_is_sensitive("https://u:p@h/mcp"));
        assert!(url_is_sensitive("https://h/mcp?api_key=1"));
        assert!(!url_is_sensitive("https://h/mcp?mode=1"));
    }

    #[test]
    fn resolve_is_lexical() {
        assert_eq!(resolve(Path::new("/a/b"), "../c/./d"), PathBuf::from("/a/c/d"));
        assert_eq!(resolve(Path::new("/a"), "/abs"), PathBuf::from("/abs"));
    }
}
