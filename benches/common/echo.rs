// Shared by the benches; each uses a part of it.
#![allow(dead_code)]

//! The benchmarks' upstream: a Rust rmcp server with one `echo` tool, served
//! on stdio (`stdio_pipes()`), TCP, WebSocket or streamable HTTP.

use rmcp::handler::server::wrapper::Parameters;
use std::time::Instant;

use rmcp::model::{CallToolRequestParams, Implementation, InitializeResult, ServerCapabilities};
use rmcp::service::{Peer, RoleClient};
use rmcp::{ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use serde_json::json;

#[derive(serde::Deserialize, schemars::JsonSchema)]
pub struct EchoArgs {
    message: String,
}

#[derive(Clone)]
pub struct Echo {
    tool_router: rmcp::handler::server::router::tool::ToolRouter<Echo>,
}

#[tool_router]
impl Echo {
    pub fn new() -> Self {
        Echo {
            tool_router: Echo::tool_router(),
        }
    }

    #[tool(description = "Echoes the message")]
    fn echo(&self, Parameters(args): Parameters<EchoArgs>) -> String {
        args.message
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Echo {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("bench-echo", "1"))
    }
}

pub async fn serve_stdio() {
    let service = Echo::new()
        .serve(rmcp::transport::stdio_pipes())
        .await
        .expect("serve echo");
    let _ = service.waiting().await;
}

/// Serves every TCP connection on `listener` as a session: newline-delimited
/// JSON-RPC, or WebSocket with `websocket`.
pub async fn serve_tcp(listener: tokio::net::TcpListener, websocket: bool) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let session = if websocket {
                let Ok(transport) = mcp_manager::transport::websocket::accept(stream).await else {
                    return;
                };
                Echo::new().serve(transport).await
            } else {
                let (read, write) = stream.into_split();
                Echo::new().serve((read, write)).await
            };
            if let Ok(service) = session {
                let _ = service.waiting().await;
            }
        });
    }
}

/// Serves streamable HTTP at `/mcp` on `listener`.
pub async fn serve_http(listener: tokio::net::TcpListener) {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
    let service = StreamableHttpService::new(
        || Ok(Echo::new()),
        std::sync::Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().with_json_response(true),
    );
    let app = axum::Router::new().nest_service("/mcp", service);
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        let _ = tcp.set_nodelay(true);
    });
    let _ = axum::serve(listener, app).await;
}

pub fn request(name: &str) -> CallToolRequestParams {
    let mut params = CallToolRequestParams::new(name.to_string());
    params.arguments = json!({"message": "hello"}).as_object().cloned();
    params
}

#[derive(Debug)]
pub struct Figures {
    pub p50_us: f64,
    pub p99_us: f64,
    pub rps16: f64,
    pub rps32: f64,
}

/// p50/p99 of sequential calls of `tool`, then calls/s with 16 and 32 in flight.
pub async fn measure(peer: &Peer<RoleClient>, tool: &str, calls: usize) -> Figures {
    // Warm up.
    for _ in 0..200 {
        peer.call_tool(request(tool)).await.expect("call");
    }
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        peer.call_tool(request(tool)).await.expect("call");
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)].as_secs_f64() * 1e6;
    let rps = |in_flight: usize| {
        let peer = peer.clone();
        let tool = tool.to_string();
        async move {
            let per_worker = calls / in_flight;
            let started = Instant::now();
            let workers: Vec<_> = (0..in_flight)
                .map(|_| {
                    let peer = peer.clone();
                    let tool = tool.clone();
                    tokio::spawn(async move {
                        for _ in 0..per_worker {
                            peer.call_tool(request(&tool)).await.expect("call");
                        }
                    })
                })
                .collect();
            for w in workers {
                w.await.expect("worker");
            }
            (per_worker * in_flight) as f64 / started.elapsed().as_secs_f64()
        }
    };
    Figures {
        p50_us: at(0.5),
        p99_us: at(0.99),
        rps16: rps(16).await,
        rps32: rps(32).await,
    }
}
