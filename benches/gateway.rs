//! Gateway overhead: an echo tool call direct to an upstream vs through the
//! gateway, same upstream, same client, same run (issue 4).
//!
//! Run: `cargo bench --bench gateway` (optionally `-- CALLS`, default 5000).
//! `cargo bench --bench gateway -- bridge` measures `mcp-manager bridge`
//! alone, quickly: see [`run_bridge`].
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
//!
//! Then the same with the official TypeScript SDK client (what most desktop
//! clients are built on), when `MCP_BENCH_NODE` (a Node ≥ 22) and
//! `MCP_BENCH_NODE_MODULES` (a node_modules with `@modelcontextprotocol/sdk`,
//! and for the peers `mcp-proxy`, `supergateway`, `mcp-hub`) are set; install
//! them with `benches/install-clients.sh`. Direct, `connect`, `/mcp` and each
//! installed peer in front of the same echo server, in alternating rounds
//! (`MCP_BENCH_ROUNDS`, default 3; the median of each is reported), with the
//! client's own CPU time per call. A `floor` path is an HTTP endpoint in this
//! process that answers each request at once with no MCP work: the most any
//! HTTP gateway can reach with this client on this machine.

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

/// `MCP_BENCH_ROUNDS`: alternating rounds of each comparison (default 3).
fn rounds() -> usize {
    std::env::var("MCP_BENCH_ROUNDS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(3)
}

/// `MCP_BENCH_NODE` and `MCP_BENCH_NODE_MODULES`, when both are set.
fn node_env() -> Option<(String, String)> {
    Some((
        std::env::var("MCP_BENCH_NODE").ok()?,
        std::env::var("MCP_BENCH_NODE_MODULES").ok()?,
    ))
}

/// The Rust client's figures direct to the echo server's stdio.
async fn direct_figures(me: &std::path::Path, calls: usize) -> Figures {
    let mut child = tokio::process::Command::new(me)
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
    direct
}

async fn run(calls: usize) {
    let me = std::env::current_exe().expect("bench exe");

    let direct = direct_figures(&me, calls).await;

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
    let config = StreamableHttpClientTransportConfig::with_uri(url.clone())
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

    if let Some((node, modules)) = node_env() {
        typescript_client(&node, &modules, &me, state.path(), &url, token.trim(), &direct).await;
    } else {
        println!(
            "(set MCP_BENCH_NODE and MCP_BENCH_NODE_MODULES for the TypeScript client and the peers: benches/install-clients.sh)"
        );
    }

    // SAFETY: plain kill(2) with SIGTERM on our own child; no memory involved.
    unsafe { libc::kill(service.id() as i32, libc::SIGTERM) };
    let _ = service.wait();
}

/// What the TypeScript client measured on one path.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
struct TsFigures {
    p50_us: f64,
    p99_us: f64,
    rps16: f64,
    rps32: f64,
    client_cpu_us_per_call: f64,
}

/// One path for the TypeScript client: a label, the tool name there, the
/// client's arguments, and the peer process serving it (if any).
struct Path {
    label: &'static str,
    tool: &'static str,
    args: Vec<String>,
    _peer: Option<tokio::process::Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts a peer gateway (a Node program) in front of the echo server and
/// waits until it listens.
async fn peer(node: &str, args: &[String], port: u16) -> Option<tokio::process::Child> {
    let child = tokio::process::Command::new(node)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Listening is not serving yet for every peer: give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Some(child)
}

/// The `floor` path: streamable HTTP that answers at once (initialize, the
/// echo tool's listing and calls), in plain JSON; no MCP machinery.
async fn floor_server() -> u16 {
    use axum::Json;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    async fn answer(Json(message): Json<serde_json::Value>) -> axum::response::Response {
        let Some(id) = message.get("id").cloned() else {
            return StatusCode::ACCEPTED.into_response();
        };
        let params = &message["params"];
        let result = match message["method"].as_str().unwrap_or_default() {
            "initialize" => serde_json::json!({
                "protocolVersion": params["protocolVersion"],
                "capabilities": { "tools": {} },
                "serverInfo": { "name": "floor", "version": "1" }
            }),
            "tools/list" => serde_json::json!({ "tools": [{
                "name": "echo",
                "inputSchema": { "type": "object", "properties": { "message": { "type": "string" } } }
            }] }),
            "tools/call" => serde_json::json!({
                "content": [{ "type": "text", "text": params["arguments"]["message"] }]
            }),
            _ => serde_json::json!({}),
        };
        (
            [("mcp-session-id", "floor")],
            Json(serde_json::json!({ "jsonrpc": "2.0", "id": id, "result": result })),
        )
            .into_response()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let app = axum::Router::new().route("/mcp", axum::routing::post(answer));
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

async fn typescript_client(
    node: &str,
    modules: &str,
    me: &std::path::Path,
    state: &std::path::Path,
    url: &str,
    token: &str,
    rust_direct: &Figures,
) {
    let calls: usize = std::env::var("MCP_BENCH_TS_CALLS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2000);
    let rounds = rounds();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/ts_client.mjs");
    let echo = me.display().to_string();
    let module = |rel: &str| std::path::Path::new(modules).join(rel);
    let mut paths = vec![
        Path {
            label: "direct",
            tool: "echo",
            args: vec!["stdio".into(), echo.clone(), "echo-server".into()],
            _peer: None,
        },
        Path {
            label: "connect",
            tool: "echo__echo",
            args: vec![
                "stdio".into(),
                service_bin(),
                "--state-dir".into(),
                state.display().to_string(),
                "connect".into(),
            ],
            _peer: None,
        },
        Path {
            label: "/mcp",
            tool: "echo__echo",
            args: vec!["http".into(), url.to_string(), token.to_string()],
            _peer: None,
        },
        floor_path().await,
    ];
    let proxy = module("mcp-proxy/dist/bin/mcp-proxy.mjs");
    if proxy.exists() {
        let port = free_port();
        let args = vec![
            proxy.display().to_string(),
            "--port".into(),
            port.to_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--".into(),
            echo.clone(),
            "echo-server".into(),
        ];
        if let Some(child) = peer(node, &args, port).await {
            paths.push(Path {
                label: "mcp-proxy",
                tool: "echo",
                args: vec!["sse".into(), format!("http://127.0.0.1:{port}/sse")],
                _peer: Some(child),
            });
        }
    }
    paths.extend(supergateway_path(node, modules, &echo).await);
    // `mcp-manager bridge` (issue 15) in front of the same stdio echo server:
    // compared with supergateway, which does the same job.
    paths.extend(bridge_path("bridge", &service_bin(), &echo).await);
    let hub = module("mcp-hub/dist/cli.js");
    let hub_config = tempfile::NamedTempFile::new().expect("tmp");
    if hub.exists() {
        let port = free_port();
        std::fs::write(
            hub_config.path(),
            serde_json::json!({ "mcpServers": { "echo": { "command": echo, "args": ["echo-server"] } } }).to_string(),
        )
        .expect("hub config");
        let args = vec![
            hub.display().to_string(),
            "--port".into(),
            port.to_string(),
            "--config".into(),
            hub_config.path().display().to_string(),
        ];
        if let Some(child) = peer(node, &args, port).await {
            paths.push(Path {
                label: "mcp-hub",
                tool: "echo__echo",
                // mcp-hub serves the SSE transport at /mcp (POSTs go to /messages).
                args: vec!["sse".into(), format!("http://localhost:{port}/mcp")],
                _peer: Some(child),
            });
        }
    }

    println!("\nTypeScript SDK client, {calls} calls, median of {rounds} alternating rounds:");
    let mut figures: Vec<Vec<TsFigures>> = vec![Vec::new(); paths.len()];
    for _ in 0..rounds {
        for (i, path) in paths.iter().enumerate() {
            let out = tokio::process::Command::new(node)
                .arg(script)
                .arg(modules)
                .arg(calls.to_string())
                .arg(path.tool)
                .args(&path.args)
                .stderr(Stdio::inherit())
                .output()
                .await
                .expect("run the TypeScript client");
            match serde_json::from_slice::<TsFigures>(&out.stdout) {
                Ok(f) => figures[i].push(f),
                Err(e) => println!("{}: the TypeScript client failed ({e})", path.label),
            }
        }
    }
    let summary: Vec<Option<TsFigures>> = figures
        .iter()
        .map(|runs| {
            (!runs.is_empty()).then(|| TsFigures {
                p50_us: median(runs.iter().map(|f| f.p50_us).collect()),
                p99_us: median(runs.iter().map(|f| f.p99_us).collect()),
                rps16: median(runs.iter().map(|f| f.rps16).collect()),
                rps32: median(runs.iter().map(|f| f.rps32).collect()),
                client_cpu_us_per_call: median(runs.iter().map(|f| f.client_cpu_us_per_call).collect()),
            })
        })
        .collect();
    let direct = summary[0];
    for (path, f) in paths.iter().zip(&summary) {
        let Some(f) = f else { continue };
        let mut line = format!(
            "{:<13} p50 {:>7.1} µs  p99 {:>7.1} µs  16 in flight {:>7.0}/s  32 in flight {:>7.0}/s  client CPU {:>6.1} µs/call",
            path.label, f.p50_us, f.p99_us, f.rps16, f.rps32, f.client_cpu_us_per_call
        );
        if let (Some(d), true) = (direct, path.label != "direct") {
            line.push_str(&format!(
                "  | added p50 {:+.1} µs, throughput@32 {:.0}% of direct",
                f.p50_us - d.p50_us,
                100.0 * f.rps32 / d.rps32
            ));
        }
        println!("{line}");
    }

    // The HTTP paths again with the Rust client (rmcp over one pooled
    // reqwest client), whose own cost per call is far below Node's: closer
    // to what each gateway itself can do.
    rust_http_rounds(&paths, calls, rounds, Direct::Measured(rust_direct)).await;
}

/// The `floor` path for an HTTP client (see [`floor_server`]).
async fn floor_path() -> Path {
    Path {
        label: "floor",
        tool: "echo",
        args: vec!["http".into(), format!("http://127.0.0.1:{}/mcp", floor_server().await)],
        _peer: None,
    }
}

/// supergateway in front of the echo server, when it is installed.
async fn supergateway_path(node: &str, modules: &str, echo: &str) -> Option<Path> {
    let supergateway = std::path::Path::new(modules).join("supergateway/dist/index.js");
    if !supergateway.exists() {
        return None;
    }
    let port = free_port();
    let args = vec![
        supergateway.display().to_string(),
        "--stdio".into(),
        format!("{echo} echo-server"),
        "--outputTransport".into(),
        "streamableHttp".into(),
        "--stateful".into(),
        "--port".into(),
        port.to_string(),
        "--logLevel".into(),
        "none".into(),
    ];
    let child = peer(node, &args, port).await?;
    Some(Path {
        label: "supergateway",
        tool: "echo",
        args: vec!["http".into(), format!("http://localhost:{port}/mcp")],
        _peer: Some(child),
    })
}

/// `bin bridge` in front of the echo server.
async fn bridge_path(label: &'static str, bin: &str, echo: &str) -> Option<Path> {
    let port = free_port();
    let args = vec![
        "bridge".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--".into(),
        echo.to_string(),
        "echo-server".into(),
    ];
    let child = peer(bin, &args, port).await?;
    Some(Path {
        label,
        tool: "echo",
        args: vec!["http".into(), format!("http://127.0.0.1:{port}/mcp")],
        _peer: Some(child),
    })
}

/// The median of `values`.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// What the HTTP paths are compared with: the Rust client direct to the
/// echo server's stdio, measured already, or in each round (the echo server
/// being this program).
enum Direct<'a> {
    Measured(&'a Figures),
    EachRound(&'a std::path::Path),
}

/// The median of each figure of `runs`.
fn median_figures(runs: &[Figures]) -> Figures {
    Figures {
        p50_us: median(runs.iter().map(|f| f.p50_us).collect()),
        p99_us: median(runs.iter().map(|f| f.p99_us).collect()),
        rps16: median(runs.iter().map(|f| f.rps16).collect()),
        rps32: median(runs.iter().map(|f| f.rps32).collect()),
    }
}

/// The HTTP ones of `paths` with the Rust rmcp client (over one pooled
/// reqwest client) in alternating rounds, each against the Rust client's
/// direct stdio figures and against supergateway (when measured).
async fn rust_http_rounds(paths: &[Path], calls: usize, rounds: usize, direct: Direct<'_>) {
    println!("\nRust rmcp client (pooled HTTP), {calls} calls, median of {rounds} alternating rounds, the same peers:");
    let http_paths: Vec<&Path> = paths
        .iter()
        .filter(|p| p.args.first().map(String::as_str) == Some("http"))
        .collect();
    let mut rounds_of: Vec<Vec<Figures>> = http_paths.iter().map(|_| Vec::new()).collect();
    let mut direct_rounds = Vec::new();
    for _ in 0..rounds {
        if let Direct::EachRound(me) = direct {
            direct_rounds.push(direct_figures(me, calls).await);
        }
        for (i, path) in http_paths.iter().enumerate() {
            let mut config =
                StreamableHttpClientTransportConfig::with_uri(path.args[1].clone()).max_concurrent_requests(64);
            if let Some(token) = path.args.get(2) {
                config = config.auth_header(token.clone());
            }
            let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
            match ().serve(transport).await {
                Ok(client) => {
                    rounds_of[i].push(measure(client.peer(), path.tool, calls).await);
                    let _ = client.cancel().await;
                }
                Err(e) => println!("{:<13} not an MCP server for this client ({e})", path.label),
            }
        }
    }
    let rust: Vec<(&str, Figures)> = http_paths
        .iter()
        .zip(rounds_of)
        .filter(|(_, figures)| !figures.is_empty())
        .map(|(path, runs)| (path.label, median_figures(&runs)))
        .collect();
    let median_direct;
    let rust_direct = match direct {
        Direct::Measured(figures) => figures,
        Direct::EachRound(_) => {
            median_direct = median_figures(&direct_rounds);
            report("direct", &median_direct, None);
            &median_direct
        }
    };
    let supergateway = rust
        .iter()
        .find(|(l, _)| *l == "supergateway")
        .map(|(_, f)| (f.p50_us, f.rps32));
    for (label, f) in &rust {
        let mut line = format!(
            "{label:<13} p50 {:>7.1} µs  p99 {:>7.1} µs  16 in flight {:>7.0}/s  32 in flight {:>7.0}/s  | added p50 {:+.1} µs",
            f.p50_us,
            f.p99_us,
            f.rps16,
            f.rps32,
            f.p50_us - rust_direct.p50_us
        );
        if let (Some((p50, rps32)), false) = (supergateway, *label == "supergateway") {
            line.push_str(&format!(
                ", {:.1}× supergateway's throughput@32, p50 {:+.1} µs vs it",
                f.rps32 / rps32,
                f.p50_us - p50
            ));
        }
        println!("{line}");
    }
}

/// `-- bridge`: the bridge alone, quickly. In each round the Rust client
/// direct to the echo server's stdio, then over HTTP to the floor,
/// supergateway (with `MCP_BENCH_NODE` and `MCP_BENCH_NODE_MODULES`), the
/// bridge, and the bridge of `MCP_BENCH_BASELINE_BIN` (a build to compare
/// with).
async fn run_bridge(calls: usize) {
    let me = std::env::current_exe().expect("bench exe");
    let echo = me.display().to_string();
    let mut paths = vec![floor_path().await];
    if let Some((node, modules)) = node_env() {
        paths.extend(supergateway_path(&node, &modules, &echo).await);
    }
    paths.extend(bridge_path("bridge", &service_bin(), &echo).await);
    if let Ok(baseline) = std::env::var("MCP_BENCH_BASELINE_BIN") {
        paths.extend(bridge_path("bridge-base", &baseline, &echo).await);
    }
    rust_http_rounds(&paths, calls, rounds(), Direct::EachRound(&me)).await;
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
    if args.iter().any(|a| a == "bridge") {
        runtime.block_on(run_bridge(calls));
    } else {
        runtime.block_on(run(calls));
    }
}
