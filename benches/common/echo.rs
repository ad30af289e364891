// Shared by the benches; each uses a part of it.
#![allow(dead_code)]

//! The benchmarks' upstream: a Rust rmcp server with one `echo` tool, served
//! on stdio (`stdio_pipes()`), TCP, WebSocket or streamable HTTP.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, InitializeResult, ServerCapabilities};
use rmcp::{ServerHandler, ServiceExt, tool, tool_handler, tool_router};

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
