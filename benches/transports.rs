//! Tool-call latency and throughput per connection type (issue 5): stdio vs
//! http vs websocket vs tcp, through mcp-manager's own client transports
//! (`mcp_manager::transport`), against the same Rust echo server.
//!
//! Run: `cargo bench --bench transports` (optionally `-- CALLS`, default 5000).
//! The echo server is this binary re-run as `transports echo-server`; for the
//! network transports it listens on loopback. Reported per transport: p50 and
//! p99 of sequential calls, and calls/s with 16 in flight.

#[path = "common/echo.rs"]
mod echo;

use std::process::Stdio;
use std::time::{Duration, Instant};

use mcp_manager::config::{self, Environment, SourceFile, SourceKind};
use rmcp::ServiceExt;

fn report(name: &str, f: &echo::Figures) {
    println!(
        "{name:<9} p50 {:>7.1} µs  p99 {:>7.1} µs  16 in flight {:>7.0}/s  32 in flight {:>7.0}/s",
        f.p50_us, f.p99_us, f.rps16, f.rps32
    );
}

/// A server spec as the service would load it.
fn spec(yaml_entry: &str) -> mcp_manager::config::ServerSpec {
    let files = [SourceFile {
        path: "/bench/mcp-manager.yaml".into(),
        kind: SourceKind::Yaml,
        text: format!("servers:\n  echo:\n{yaml_entry}"),
    }];
    let outcome = config::load(&files, &Environment::process());
    assert!(!outcome.has_errors(), "{:?}", outcome.diagnostics);
    outcome.desired.servers["echo"].spec.clone()
}

async fn run(calls: usize) {
    let me = std::env::current_exe().expect("bench exe");
    let mut children = Vec::new();

    // stdio: as the supervisor runs a server (its pipes handed to rmcp).
    let mut child = tokio::process::Command::new(&me)
        .args(["echo-server", "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn echo");
    let transport = (child.stdout.take().expect("stdout"), child.stdin.take().expect("stdin"));
    let client = ().serve(transport).await.expect("stdio session");
    report("stdio", &echo::measure(client.peer(), "echo", calls).await);
    let _ = client.cancel().await;
    children.push(child);

    for (kind, entry) in [
        ("http", "    type: http\n    url: http://127.0.0.1:PORT/mcp\n"),
        ("websocket", "    type: websocket\n    url: ws://127.0.0.1:PORT\n"),
        ("tcp", "    type: tcp\n    host: 127.0.0.1\n    port: PORT\n"),
    ] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = tokio::process::Command::new(&me)
            .args(["echo-server", kind, &format!("127.0.0.1:{port}")])
            .kill_on_drop(true)
            .spawn()
            .expect("spawn echo");
        children.push(child);
        let spec = spec(&entry.replace("PORT", &port.to_string()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "the {kind} echo server did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let client = mcp_manager::transport::connect_once((), &spec, tokio_util::sync::CancellationToken::new())
            .await
            .expect("connect");
        report(kind, &echo::measure(client.peer(), "echo", calls).await);
        let _ = client.cancel().await;
    }
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if args.get(1).map(String::as_str) == Some("echo-server") {
        runtime.block_on(async {
            match (args.get(2).map(String::as_str), args.get(3)) {
                (Some("stdio"), _) => echo::serve_stdio().await,
                (Some(kind), Some(address)) => {
                    let listener = tokio::net::TcpListener::bind(address.as_str()).await.expect("listen");
                    match kind {
                        "http" => echo::serve_http(listener).await,
                        "websocket" => echo::serve_tcp(listener, true).await,
                        _ => echo::serve_tcp(listener, false).await,
                    }
                }
                _ => panic!("usage: transports echo-server stdio|http|websocket|tcp [ADDRESS]"),
            }
        });
        return;
    }
    let calls = args
        .iter()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(5000);
    runtime.block_on(run(calls));
}
