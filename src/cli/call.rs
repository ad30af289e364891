//! `mcp-manager call`: a one-shot MCP client for scripts and debugging.
//! `call SERVER [TOOL [JSON_ARGS]]` goes through the running service's
//! gateway; `call --url URL [TOOL [JSON_ARGS]]` connects directly with the
//! service's transports, headers, TLS settings and OAuth. No TOOL lists the
//! tools; with TOOL it calls it and prints the result.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, anyhow, bail};
use rmcp::model::{CallToolRequestParams, CallToolResult, ClientConfig, Implementation, Tool};
use rmcp::service::{RoleClient, RunningService};
use rmcp::{ClientHandler, ServiceError};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::Globals;
use super::client::ApiClient;
use super::output::Table;
use super::service::runtime;
use crate::config::ServerSpec;
use crate::transport::oauth::{Authorizer, Browser, ClientIdentity, OAuthClient};
use crate::transport::{self, ConnectError};

#[derive(Debug, clap::Args)]
pub struct CallArgs {
    /// SERVER [TOOL [JSON_ARGS]]; with --url: [TOOL [JSON_ARGS]]
    #[arg(value_name = "ARGS", num_args = 0..=3)]
    words: Vec<String>,
    /// Connect to this MCP endpoint directly instead of through the service
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// How to reach --url: http (streamable HTTP), sse, websocket or tcp
    /// [default: from the URL: ws:// and wss:// websocket, tcp:// tcp, a path
    /// ending in /sse sse, else http]
    #[arg(long = "type", value_name = "TYPE")]
    kind: Option<String>,
    /// A header for every request to --url, `NAME: VALUE` (repeatable)
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Protocol revision with --url: auto, 2025-11-25 or 2026-07-28
    #[arg(long, value_name = "REVISION", default_value = "auto")]
    protocol: String,
    /// How long a request may take
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    timeout: String,
    /// CA certificate (PEM) to trust for an https:// --url
    #[arg(long, value_name = "PATH")]
    ca_file: Option<std::path::PathBuf>,
    /// Print the raw JSON result
    #[arg(long)]
    json: bool,
    /// OAuth: print the authorization URL instead of opening a browser
    #[arg(long)]
    no_browser: bool,
    /// OAuth: a scope to ask for (repeatable) [default: what the server asks for]
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// OAuth: a pre-registered client id [default: register, or --client-metadata-url]
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
    /// OAuth: the pre-registered client's secret
    #[arg(
        long,
        value_name = "SECRET",
        env = "MCP_MANAGER_CLIENT_SECRET",
        hide_env_values = true
    )]
    client_secret: Option<String>,
    /// OAuth: the URL of this client's metadata document, used as its id where the server supports it
    #[arg(long, value_name = "URL")]
    client_metadata_url: Option<String>,
    /// OAuth: the client_credentials grant (no browser; needs --client-id and --client-secret)
    #[arg(long)]
    client_credentials: bool,
}

/// What to do once connected.
enum Action {
    List,
    Call {
        tool: String,
        arguments: Option<Map<String, Value>>,
    },
}

impl Action {
    fn parse(tool: Option<&String>, arguments: Option<&String>) -> anyhow::Result<Action> {
        let Some(tool) = tool else {
            return Ok(Action::List);
        };
        let arguments = match arguments {
            None => None,
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => Some(map),
                Ok(_) => bail!("JSON_ARGS must be a JSON object, such as '{{\"path\": \"/tmp\"}}'"),
                Err(e) => bail!("JSON_ARGS is not valid JSON: {e}"),
            },
        };
        Ok(Action::Call {
            tool: tool.clone(),
            arguments,
        })
    }
}

/// The client side of the session: says who it is, offers no capabilities.
#[derive(Clone, Default)]
struct CallClient;

impl ClientHandler for CallClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            Default::default(),
            Implementation::new("mcp-manager", env!("CARGO_PKG_VERSION")),
        )
    }
}

pub fn run(globals: &Globals, args: CallArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    match args.url.clone() {
        Some(url) => {
            if args.words.len() > 2 {
                bail!("with --url, give [TOOL [JSON_ARGS]] (no SERVER)");
            }
            let action = Action::parse(args.words.first(), args.words.get(1))?;
            rt.block_on(direct(&url, &args, action))
        }
        None => {
            let Some(server) = args.words.first() else {
                bail!("name a SERVER, or give --url URL");
            };
            let action = Action::parse(args.words.get(1), args.words.get(2))?;
            rt.block_on(through_gateway(globals, server, &args, action))
        }
    }
}

/// The spec `--url` and the flags describe, normalized as the config is.
fn spec_for(url: &str, args: &CallArgs) -> anyhow::Result<ServerSpec> {
    let kind = args.kind.clone().unwrap_or_else(|| {
        if url.starts_with("ws://") || url.starts_with("wss://") {
            "websocket".into()
        } else if url.starts_with("tcp://") {
            "tcp".into()
        } else if url.trim_end_matches('/').ends_with("/sse") {
            "sse".into()
        } else {
            "http".into()
        }
    });
    let mut headers = Map::new();
    for header in &args.headers {
        // The value is not echoed: it is usually a credential.
        let Some((name, value)) = header.split_once(':') else {
            bail!("--header wants `NAME: VALUE` (a colon after the name)");
        };
        headers.insert(name.trim().to_string(), Value::String(value.trim_start().to_string()));
    }
    let mut raw = json!({
        "url": url,
        "type": kind,
        "headers": headers,
        "protocol": args.protocol,
        "request_timeout": args.timeout,
        "startup_timeout": args.timeout,
        "max_retries": 0,
    });
    if let Some(ca) = &args.ca_file {
        raw["tls"] = json!({ "ca_file": ca });
    }
    let Value::Object(raw) = raw else {
        unreachable!("built as an object above")
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let context = crate::config::spec::NormalizeContext { base_dir: &cwd };
    let (spec, problems) = crate::config::spec::normalize(&raw, &context);
    let errors: Vec<String> = problems
        .iter()
        .filter(|p| !p.warning)
        .map(|p| format!("{}: {}", p.pointer.trim_start_matches('/'), p.message))
        .collect();
    match spec {
        Some(spec) if errors.is_empty() => Ok(spec),
        _ => bail!("{}", errors.join("; ")),
    }
}

/// A direct session with `--url`, authorizing when the server challenges.
struct Direct {
    spec: ServerSpec,
    /// Streamable HTTP only: who authorizes, and the client carrying tokens.
    oauth: Option<(Authorizer, OAuthClient)>,
    service: Option<Arc<RunningService<RoleClient, CallClient>>>,
}

impl Direct {
    async fn open(spec: ServerSpec, args: &CallArgs) -> anyhow::Result<Direct> {
        let oauth = if spec.connection_type == crate::config::ConnectionType::Http {
            let endpoint = transport::endpoint(&spec).map_err(|e| anyhow!(e))?;
            let identity = ClientIdentity {
                client_id: args.client_id.clone(),
                client_secret: args.client_secret.clone(),
                client_metadata_url: args.client_metadata_url.clone(),
                scopes: args.scopes.clone(),
                client_credentials: args.client_credentials,
            };
            let browser = if args.no_browser { Browser::Print } else { Browser::Open };
            let mut authorizer = Authorizer::new(&endpoint, identity, browser);
            let manager = if args.client_credentials {
                // Headless: no challenge to wait for.
                authorizer.authorize(None).await.map_err(|e| anyhow!(e))?
            } else {
                authorizer.unauthorized().await.map_err(|e| anyhow!(e))?
            };
            let client = transport::oauth_client(&spec, manager).map_err(|e| anyhow!(e.message().to_string()))?;
            Some((authorizer, client))
        } else {
            None
        };
        let mut direct = Direct {
            spec,
            oauth,
            service: None,
        };
        direct.connect().await?;
        Ok(direct)
    }

    async fn connect(&mut self) -> anyhow::Result<()> {
        let shown = transport::display_endpoint(&transport::endpoint(&self.spec).unwrap_or_default());
        loop {
            let auth = self.oauth.as_ref().map(|(_, client)| client);
            let attempt = transport::connect_once_authorized(CallClient, &self.spec, auth, CancellationToken::new());
            let outcome = match tokio::time::timeout(self.spec.startup_timeout, attempt).await {
                Ok(outcome) => outcome,
                Err(_) => bail!(
                    "{shown}: no MCP session within {}",
                    crate::config::duration::format(self.spec.startup_timeout)
                ),
            };
            match outcome {
                Ok(service) => {
                    self.service = Some(Arc::new(service));
                    return Ok(());
                }
                Err(ConnectError::Unauthorized { challenge, message }) => {
                    if self.oauth.is_none() {
                        bail!("{shown}: {message}");
                    }
                    self.authorize(&challenge).await?;
                }
                Err(e) => bail!("{shown}: {}", e.message()),
            }
        }
    }

    /// Authorizes for `challenge` and puts the new tokens under the session.
    async fn authorize(&mut self, challenge: &str) -> anyhow::Result<()> {
        let Some((authorizer, client)) = self.oauth.as_mut() else {
            bail!("the server wants authorization, which this transport cannot do");
        };
        let manager = authorizer
            .authorize(Some(challenge))
            .await
            .map_err(|e| anyhow!("authorization failed: {e}"))?;
        *client.auth_manager.lock().await = manager;
        Ok(())
    }

    fn service(&self) -> Arc<RunningService<RoleClient, CallClient>> {
        // Set by `open`, which fails rather than return without a session.
        self.service.clone().expect("a connected session")
    }

    /// Runs `request`, authorizing and running it again when the server
    /// answers with a challenge (a token it wants, or more scope).
    async fn request<T, F, Fut>(&mut self, request: F) -> anyhow::Result<T>
    where
        F: Fn(Arc<RunningService<RoleClient, CallClient>>) -> Fut,
        Fut: Future<Output = Result<T, ServiceError>>,
    {
        loop {
            let outcome = tokio::time::timeout(self.spec.request_timeout, request(self.service())).await;
            let outcome = outcome.map_err(|_| {
                anyhow!(
                    "no answer within {}",
                    crate::config::duration::format(self.spec.request_timeout)
                )
            })?;
            match outcome {
                Ok(value) => return Ok(value),
                Err(e) => match e.auth_challenge() {
                    Some(challenge) if self.oauth.is_some() => {
                        let challenge = challenge.to_string();
                        self.authorize(&challenge).await?;
                    }
                    _ => bail!("{}", transport::describe_service_error(&e)),
                },
            }
        }
    }

    async fn close(self) {
        if let Some(service) = self.service.and_then(Arc::into_inner) {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), service.cancel()).await;
        }
    }
}

async fn direct(url: &str, args: &CallArgs, action: Action) -> anyhow::Result<ExitCode> {
    let spec = spec_for(url, args)?;
    let mut session = Direct::open(spec, args).await?;
    let outcome = run_action(&mut session, action, args.json).await;
    session.close().await;
    outcome
}

async fn run_action(session: &mut Direct, action: Action, json: bool) -> anyhow::Result<ExitCode> {
    // Listed first in both cases: a tool's `x-mcp-header` parameters are
    // mirrored into headers from its listed schema, and a missing tool gets
    // a list of the ones there are.
    let tools = session
        .request(|service| async move { service.peer().list_all_tools().await })
        .await?;
    match action {
        Action::List => {
            print_tools(&tools, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Action::Call { tool, arguments } => {
            if !tools.iter().any(|t| t.name == tool) {
                let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
                bail!("no tool named `{tool}`; the server has: {}", list_or_none(&names));
            }
            let params = CallToolRequestParams::new(tool);
            let params = match arguments {
                Some(arguments) => params.with_arguments(arguments),
                None => params,
            };
            let result = session
                .request(|service| {
                    let params = params.clone();
                    // Drives input-required rounds (2026-07-28) to the end.
                    async move { service.call_tool(params).await }
                })
                .await?;
            print_result(&result, json)
        }
    }
}

/// `call SERVER ...`: through the running service's gateway socket, the
/// server's tool found under the name the gateway gives it.
async fn through_gateway(globals: &Globals, server: &str, args: &CallArgs, action: Action) -> anyhow::Result<ExitCode> {
    if !crate::config::sources::is_valid_name(server) {
        bail!("`{server}` is not a server name");
    }
    let timeout = crate::config::duration::parse(&args.timeout).map_err(|e| anyhow!("--timeout: {e}"))?;
    let api = ApiClient::connect(&globals.state_dir)?;
    let capabilities = api.get(&format!("/capabilities?server={server}")).await?;
    let empty = Vec::new();
    let entries = capabilities["capabilities"].as_array().unwrap_or(&empty);
    let tools: Vec<(&str, &str)> = entries
        .iter()
        .filter(|e| e["kind"] == "tool" && e["server"] == server && e["hidden"].is_null())
        .filter_map(|e| Some((e["upstream"].as_str()?, e["exposed"].as_str()?)))
        .collect();
    if tools.is_empty() {
        let reason = capabilities["unavailable"][server]
            .as_str()
            .map(|r| format!(": {r}"))
            .unwrap_or_else(|| ": it is not configured, or has no tools".into());
        bail!("the gateway has no tools of `{server}`{reason}");
    }
    let path = crate::service::socket_path(&globals.state_dir);
    let socket = tokio::net::UnixStream::connect(&path)
        .await
        .with_context(|| format!("cannot connect to the gateway at {}", path.display()))?;
    let service = tokio::time::timeout(timeout, rmcp::serve_client(CallClient, socket))
        .await
        .map_err(|_| anyhow!("the gateway did not answer initialize within {}", args.timeout))?
        .map_err(|e| anyhow!("the gateway: {}", transport::describe_initialize_error(&e)))?;
    let within = |what: &'static str| {
        move |_| {
            anyhow!(
                "no answer to {what} within {}",
                crate::config::duration::format(timeout)
            )
        }
    };
    let listed = tokio::time::timeout(timeout, service.peer().list_all_tools())
        .await
        .map_err(within("tools/list"))?
        .map_err(|e| anyhow!("{}", transport::describe_service_error(&e)))?;
    let outcome = match action {
        Action::List => {
            // Shown under the server's own names.
            let mine: Vec<Tool> = listed
                .into_iter()
                .filter_map(|mut tool| {
                    let (upstream, _) = tools.iter().find(|(_, exposed)| *exposed == tool.name)?;
                    tool.name = upstream.to_string().into();
                    Some(tool)
                })
                .collect();
            print_tools(&mine, args.json).map(|()| ExitCode::SUCCESS)
        }
        Action::Call { tool, arguments } => {
            let Some((_, exposed)) = tools.iter().find(|(upstream, _)| *upstream == tool) else {
                let names: Vec<&str> = tools.iter().map(|(upstream, _)| *upstream).collect();
                bail!(
                    "`{server}` has no tool named `{tool}`; it has: {}",
                    list_or_none(&names)
                );
            };
            let params = CallToolRequestParams::new(exposed.to_string());
            let params = match arguments {
                Some(arguments) => params.with_arguments(arguments),
                None => params,
            };
            let result = tokio::time::timeout(timeout, service.call_tool(params))
                .await
                .map_err(within("tools/call"))?
                .map_err(|e| anyhow!("{}", transport::describe_service_error(&e)))?;
            print_result(&result, args.json)
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), service.cancel()).await;
    outcome
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn print_tools(tools: &[Tool], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&json!({ "tools": tools }))?);
        return Ok(());
    }
    if tools.is_empty() {
        println!("no tools");
        return Ok(());
    }
    let mut table = Table::new(&["TOOL", "DESCRIPTION"]);
    for tool in tools {
        let description = tool.description.as_deref().unwrap_or("").lines().next().unwrap_or("");
        table.row(vec![tool.name.to_string(), description.to_string()]);
    }
    print!("{}", table.render());
    Ok(())
}

/// The result as text (or raw JSON); exit 1 when the tool says it failed.
fn print_result(result: &CallToolResult, json: bool) -> anyhow::Result<ExitCode> {
    let failed = result.is_error == Some(true);
    let text = if json {
        serde_json::to_string_pretty(result)?
    } else {
        render_result(result)
    };
    if failed {
        eprintln!("{text}");
        Ok(ExitCode::from(1))
    } else {
        println!("{text}");
        Ok(ExitCode::SUCCESS)
    }
}

fn render_result(result: &CallToolResult) -> String {
    let value = serde_json::to_value(result).unwrap_or_default();
    let mut parts: Vec<String> = Vec::new();
    for item in value["content"].as_array().into_iter().flatten() {
        parts.push(match item["type"].as_str() {
            Some("text") => item["text"].as_str().unwrap_or_default().to_string(),
            Some("image") | Some("audio") => format!(
                "[{} {}, {} bytes base64]",
                item["type"].as_str().unwrap_or_default(),
                item["mimeType"].as_str().unwrap_or("?"),
                item["data"].as_str().map_or(0, str::len)
            ),
            Some("resource_link") => format!("[resource {}]", item["uri"].as_str().unwrap_or_default()),
            Some("resource") => match item["resource"]["text"].as_str() {
                Some(text) => text.to_string(),
                None => format!("[resource {}]", item["resource"]["uri"].as_str().unwrap_or_default()),
            },
            _ => item.to_string(),
        });
    }
    if parts.is_empty()
        && let Some(structured) = value.get("structuredContent")
    {
        parts.push(serde_json::to_string_pretty(structured).unwrap_or_default());
    }
    parts.join("\n")
}
