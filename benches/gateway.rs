//! Gateway overhead: an echo tool call direct to an upstream vs through the
//! gateway, same upstream, same client, same run (issue 4).
//!
//! Run: `cargo bench --bench gateway` (optionally `-- CALLS`, default 5000).
//!
//! The upstream is this binary re-run as `gateway echo-server`: a Rust rmcp
//! server with one `echo` tool on `stdio_pipes()`. Three paths are measured
//! with the same rmcp client code:
//! - direct: the client spawns the echo server and talks to its stdio;
//! - connect: the client spawns `mcp-manager connect`, which relays to the
//!   running service's gateway socket, which calls the echo server;
//! - http: the client talks streamable HTTP to the service's `/mcp`.
//!
//! For each: p50/p99 latency of sequential calls, and throughput with 16 and 32
//! calls in flight.

use std::process::Stdio;
use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

const BIN: &str = env!("CARGO_BIN_EXE_mcp-manager");

/// The service under measurement: this build, or `MCP_MANAGER_BENCH_BIN` (a
/// baseline build, measured with the same harness and upstream).
fn service_bin() -> String {
    std::env::var("MCP_MANAGER_BENCH_BIN").unwrap_or_else(|_| BIN.to_string())
}

#[path = "common/echo.rs"]
mod echo;

use echo::{Figures, measure};

fn report(name: &str, f: &Figures, direct: Option<&Figures>) {
    let mut line = format!(
        "{name:<9} p50 {:>7.1} µs  p99 {:>7.1} µs  16 in flight {:>7.0}/s  32 in flight {:>7.0}/s",
        f.p50_us, f.p99_us, f.rps16, f.rps32
    );
    if let Some(d) = direct {
        line.push_str(&format!(
            "  | added p50 {:+.1} µs, throughput@32 {:.0}% of direct",
            f.p50_us - d.p50_us,
            100.0 * f.rps32 / d.rps32
        ));
    }
    println!("{line}");
}

async fn run(calls: usize) {
    let me = std::env::current_exe().expect("bench exe");

    // Direct.
    let mut child = tokio::process::Command::new(&me)
        .arg("echo-server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn echo");
    let transport = (child.stdout.take().expect("stdout"), child.stdin.take().expect("stdin"));
    let direct_client = ().serve(transport).await.expect("direct session");
    let direct = measure(direct_client.peer(), "echo", calls).await;
    report("direct", &direct, None);
    let _ = direct_client.cancel().await;
    drop(child);

    // The service with the same echo server.
    let config = tempfile::tempdir().expect("tmp");
    let state = tempfile::tempdir().expect("tmp");
    std::fs::write(
        config.path().join("mcp-manager.yaml"),
        format!(
            "servers:\n  echo:\n    command: {}\n    args: [echo-server]\n    max_concurrent_requests: 1000\n",
            me.display()
        ),
    )
    .expect("config");
    let mut service = std::process::Command::new(service_bin())
        .args(["start", "--config"])
        .arg(config.path())
        .env("MCP_MANAGER_STATE_DIR", state.path())
        .env("MCP_MANAGER_LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start service");
    let info_path = state.path().join("service.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !info_path.exists() {
        assert!(Instant::now() < deadline, "the service did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Through `mcp-manager connect`.
    let mut connect = tokio::process::Command::new(service_bin())
        .arg("connect")
        .env("MCP_MANAGER_STATE_DIR", state.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn connect");
    let transport = (
        connect.stdout.take().expect("stdout"),
        connect.stdin.take().expect("stdin"),
    );
    let client = ().serve(transport).await.expect("connect session");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tools = client.list_all_tools().await.expect("list");
        if tools.iter().any(|t| t.name == "echo__echo") {
            break;
        }
        assert!(Instant::now() < deadline, "echo__echo never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let via_connect = measure(client.peer(), "echo__echo", calls).await;
    report("connect", &via_connect, Some(&direct));
    let _ = client.cancel().await;
    drop(connect);

    // Through streamable HTTP: rmcp's default client (a new connection per
    // request: it disables pooling), and the same client with a pooled
    // reqwest::Client, as most HTTP clients behave.
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&info_path).expect("info")).expect("info json");
    let token = std::fs::read_to_string(state.path().join("api-token")).expect("token");
    let url = format!("{}/mcp", info["url"].as_str().expect("url"));
    let config = StreamableHttpClientTransportConfig::with_uri(url)
        .auth_header(token.trim().to_string())
        .max_concurrent_requests(64);
    let client = ().serve(StreamableHttpClientTransport::from_config(config.clone())).await.expect("http session");
    let via_http = measure(client.peer(), "echo__echo", calls).await;
    report("http", &via_http, Some(&direct));
    let _ = client.cancel().await;
    let pooled = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    let client = ().serve(pooled).await.expect("http session");
    let via_http = measure(client.peer(), "echo__echo", calls).await;
    report("http-pool", &via_http, Some(&direct));
    let _ = client.cancel().await;

    // SAFETY: plain kill(2) with SIGTERM on our own child; no memory involved.
    unsafe { libc::kill(service.id() as i32, libc::SIGTERM) };
    let _ = service.wait();
}

fn main() {
    // reqwest (under rmcp's HTTP client) needs a process-wide rustls provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if args.get(1).map(String::as_str) == Some("echo-server") {
        runtime.block_on(echo::serve_stdio());
        return;
    }
    let calls = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(5000);
    runtime.block_on(run(calls));
}
