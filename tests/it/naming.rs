//! Issue 12, the gateway's names and HTTP rules through `/mcp`: names as the
//! servers wrote them (`manager.gateway.prefix: on_conflict`, per-server
//! `prefix`) with a real client, Host/Origin checks, and sessions that expire
//! and are capped.

use rmcp::ServiceError;
use rmcp::model::{CallToolRequestParams, ReadResourceRequestParams};

use crate::remote::gateway as session;
use crate::service::{Service, running, task_runner};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_conflict_keeps_names_and_prefixes_only_where_asked_or_shared() {
    let svc = Service::start(&format!(
        "gateway:\n  prefix: on_conflict\nservers:\n{}{}{}",
        task_runner("alpha", ""),
        task_runner("beta", "    prefix: true\n"),
        task_runner("gamma", "    prefix: tr\n"),
    ));
    for name in ["alpha", "beta", "gamma"] {
        svc.wait_server(name, "running", running);
    }
    let client = session(&svc).await;
    let mut names: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !names.iter().any(|n| n.starts_with("tr__")) {
        assert!(std::time::Instant::now() < deadline, "tools never listed: {names:?}");
        names = client
            .list_all_tools()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // alpha alone exposes its names as written; beta and gamma are prefixed.
    assert!(names.contains(&"get_task_summary".to_string()), "{names:?}");
    assert!(names.contains(&"beta__get_task_summary".to_string()), "{names:?}");
    assert!(names.contains(&"tr__get_task_summary".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("alpha__")), "{names:?}");
    for tool in ["get_task_summary", "beta__get_task_summary", "tr__get_task_summary"] {
        let result = client.call_tool(CallToolRequestParams::new(tool)).await.unwrap();
        assert_ne!(result.is_error, Some(true), "{tool}: {result:?}");
    }

    // A server that is down: its names as written still say so (-32010).
    assert!(svc.cli(&["stop-server", "alpha"]).status.success());
    svc.wait_server("alpha", "stopped", |s| s["phase"] == "stopped");
    let err = client
        .call_tool(CallToolRequestParams::new("get_task_summary"))
        .await
        .unwrap_err();
    match err {
        ServiceError::McpError(e) => assert_eq!(e.code.0, -32010, "{e:?}"),
        other => panic!("{other:?}"),
    }
    let _ = client.cancel().await;
}

/// Resources of a server exposed as written are read back under the same URI,
/// also ones that only a template names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_as_written_are_read_back_by_their_own_uri() {
    let Some(script) = std::env::var("MCP_SERVER_EVERYTHING").ok().filter(|s| !s.is_empty()) else {
        eprintln!("skipping: MCP_SERVER_EVERYTHING is not set (.ci/run installs it)");
        return;
    };
    let svc = Service::start(&format!(
        "gateway:\n  prefix: on_conflict\nservers:\n  everything:\n    command: node\n    args: ['{script}']\n"
    ));
    svc.wait_server("everything", "running", running);
    let client = session(&svc).await;
    let resources = client.list_all_resources().await.unwrap();
    let first = resources.first().expect("server-everything lists resources");
    assert!(!first.uri.starts_with("mcp-manager://"), "{}", first.uri);
    let read = client
        .read_resource(ReadResourceRequestParams::new(first.uri.clone()))
        .await
        .unwrap();
    let text = serde_json::to_string(&read).unwrap();
    assert!(text.contains(&first.uri), "{text}");
    let templates = client.list_all_resource_templates().await.unwrap();
    assert!(
        templates.iter().all(|t| !t.uri_template.starts_with("mcp-manager://")),
        "{templates:?}"
    );
    let _ = client.cancel().await;
}

/// Issue 12, HTTP done by the book: a request whose `Host` or `Origin` is not
/// this service (DNS rebinding, a web page in the user's browser) is refused
/// before anything else, on `/mcp`, the API and the dashboard alike.
#[test]
fn foreign_hosts_and_origins_are_refused() {
    let svc = Service::start("servers: {}\n");
    let address = svc.address();
    let port = address.rsplit_once(':').unwrap().1.to_string();
    let token = svc.token();
    let status = |path: &str, host: &str, origin: Option<&str>| -> u16 {
        let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\n{origin}Authorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token.trim()
        );
        raw_http(&address, &request).0
    };
    let localhost = format!("localhost:{port}");
    assert_eq!(status("/api/v1/status", &address, None), 200);
    assert_eq!(
        status("/api/v1/status", &localhost, Some(&format!("http://{localhost}"))),
        200
    );
    assert_eq!(status("/api/v1/status", "evil.example.com", None), 403);
    assert_eq!(status("/", "evil.example.com:80", None), 403);
    assert_eq!(status("/mcp", &format!("evil.example.com:{port}"), None), 403);
    assert_eq!(status("/api/v1/status", &address, Some("http://evil.example.com")), 403);
    assert_eq!(status("/mcp", &address, Some("null")), 403);
    // Another web app on this machine is another origin.
    assert_eq!(status("/api/v1/status", &address, Some("http://localhost:1")), 403);
    assert_eq!(status("/api/v1/status", "[::1]junk", None), 403);
}

/// Issue 12, sessions that do not leak: idle sessions expire after
/// `session_idle_timeout`, and beyond `max_sessions` a new one is refused with
/// 503 until one goes.
#[test]
fn idle_sessions_expire_and_their_number_is_capped() {
    let svc = Service::start("gateway:\n  max_sessions: 2\n  session_idle_timeout: 1s\nservers: {}\n");
    let address = svc.address();
    let token = svc.token();
    let initialize = || -> (u16, String) {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
        raw_http(&address, &mcp_post(&address, &token, "POST", "", body))
    };
    assert_eq!(initialize().0, 200);
    assert_eq!(initialize().0, 200);
    let (code, refused) = initialize();
    assert_eq!(code, 503, "{refused}");
    assert!(refused.contains("max_sessions"), "{refused}");
    // Abandoned, they expire; then there is room again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        if initialize().0 == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "idle sessions never expired");
    }
}

/// Issue 12, lists that fit every client: `tools/list` of a big catalog was
/// one response over the official Python SDK's 1 MiB message limit, so every
/// list from that SDK failed. Lists are paged by size by default; the Python
/// SDK follows the cursors and sees every tool.
#[test]
fn a_big_catalog_is_listed_by_the_python_sdk() {
    let Some(python) = crate::support::python_sdk() else {
        eprintln!("skipping: MCP_SERVER_TIME is not set (.ci/run installs the Python SDK beside it)");
        return;
    };
    let fixture = crate::support::fixture("servers/many_tools.py");
    let server = |name: &str| {
        format!(
            "  {name}:\n    command: python3\n    args: ['{}']\n    environment: {{TOOL_COUNT: '200', DESCRIPTION_BYTES: '4096'}}\n",
            fixture.display()
        )
    };
    let svc = Service::start(&format!("servers:\n{}{}", server("big-a"), server("big-b")));
    svc.wait_server("big-a", "running", running);
    svc.wait_server("big-b", "running", running);
    let url = format!("{}/mcp", svc.info()["url"].as_str().unwrap());
    let out = std::process::Command::new(python)
        .arg(crate::support::fixture("clients/list_all_tools.py"))
        .arg(&url)
        .arg(svc.token().trim())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the Python SDK failed to list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["tools"], 400, "{listed}");
    assert_eq!(listed["unique"], 400, "{listed}");
    assert!(
        listed["pages"].as_u64().unwrap() >= 4,
        "1.6 MB in pages of 256 KiB: {listed}"
    );
}

/// Issue 12, HTTP done by the book on `/mcp`: a body that is not JSON gets
/// 400/-32700, JSON that is no JSON-RPC message 400/-32600, missing or
/// wrong-typed params -32602, a second `initialize` on a live session is
/// refused, and `DELETE` of a session answers 204, then 404.
#[test]
fn malformed_requests_get_json_rpc_errors_and_sessions_end_by_the_book() {
    let svc = Service::start("servers: {}\n");
    let address = svc.address();
    let token = svc.token();
    let request = |method: &str, session: Option<&str>, body: &str| -> (u16, String) {
        let session = session
            .map(|s| format!("Mcp-Session-Id: {s}\r\nMCP-Protocol-Version: 2025-11-25\r\n"))
            .unwrap_or_default();
        raw_http(&address, &mcp_post(&address, &token, method, &session, body))
    };
    let initialize = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;

    let (code, body) = request("POST", None, r#"{"jsonrpc":"2.0","#);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("-32700"), "{body}");
    let (code, body) = request("POST", None, r#"{"id":6,"method":"tools/list"}"#);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("-32600"), "{body}");

    let (code, opened) = request("POST", None, initialize);
    assert_eq!(code, 200, "{opened}");
    let session = header(&opened, "mcp-session-id").expect("a session id");
    let (code, _) = request(
        "POST",
        Some(&session),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!(code, 202);
    let (code, body) = request("POST", Some(&session), initialize);
    assert_eq!(code, 400, "a second initialize: {body}");
    assert!(body.contains("already initialized"), "{body}");
    for params in [r#","params":{"name":5}"#, ""] {
        let (code, body) = request(
            "POST",
            Some(&session),
            &format!(r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call"{params}}}"#),
        );
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains("-32602") && body.contains("invalid params for tools/call"),
            "{body}"
        );
    }
    let (code, body) = request("POST", Some(&session), r#"{"jsonrpc":"2.0","id":4,"method":"no/such"}"#);
    assert!(code == 200 && body.contains("-32601"), "{body}");

    let (code, body) = request("DELETE", Some(&session), "");
    assert_eq!(code, 204, "{body}");
    let (code, body) = request("DELETE", Some(&session), "");
    assert_eq!(code, 404, "{body}");
}

/// Issue 12, sessions that do not leak: with `session: per_client` each
/// gateway client gets its own process of a stateful server (its own count),
/// none of them the managed instance, and a client's process ends when the
/// client ends its session. Each is offered its client's capabilities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_servers_give_each_client_its_own_process_until_it_leaves() {
    let fixture = crate::support::fixture("servers/counter.py");
    let svc = Service::start(&format!(
        "servers:\n  counter:\n    command: python3\n    args: ['{}']\n    session: per_client\n",
        fixture.display()
    ));
    let managed = svc.wait_server("counter", "running", running)["pids"][0]
        .as_u64()
        .unwrap();
    let count = |client: &rmcp::service::RunningService<rmcp::RoleClient, ()>| {
        let peer = client.peer().clone();
        async move {
            let result = peer
                .call_tool(CallToolRequestParams::new("counter__count"))
                .await
                .unwrap();
            let text = result.content[0].as_text().unwrap().text.clone();
            let fields: Vec<&str> = text.split_whitespace().collect();
            // The server is offered what this client can do (an rmcp client
            // with no capabilities), not everything the gateway relays.
            assert_eq!(fields[2], "sampling=no", "{text}");
            (
                fields[0].trim_start_matches("pid=").parse::<u64>().unwrap(),
                fields[1].trim_start_matches("count=").parse::<u64>().unwrap(),
            )
        }
    };
    let first = session(&svc).await;
    let second = session(&svc).await;
    let (pid_a, n) = count(&first).await;
    assert_eq!(n, 1);
    assert_eq!(count(&first).await, (pid_a, 2), "a client keeps its own process");
    let (pid_b, n) = count(&second).await;
    assert_eq!(n, 1, "the second client has its own count");
    assert_ne!(pid_a, pid_b);
    assert!(
        pid_a != managed && pid_b != managed,
        "clients do not use the managed instance"
    );

    // The first client leaves (DELETE of its session): its process ends;
    // the second client's goes on.
    let _ = first.cancel().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while alive(pid_a) {
        assert!(
            std::time::Instant::now() < deadline,
            "the process of a client that left is still there"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(count(&second).await, (pid_b, 2));
    let _ = second.cancel().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while alive(pid_b) {
        assert!(
            std::time::Instant::now() < deadline,
            "the process of a client that left is still there"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A client's own session of a `per_client` server is held to the server's
/// limits like a replica: over `request_rate_limit`, a call is refused with
/// -32012 (it was not counted at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_sessions_keep_the_servers_limits() {
    let fixture = crate::support::fixture("servers/counter.py");
    let svc = Service::start(&format!(
        "servers:\n  counter:\n    command: python3\n    args: ['{}']\n    session: per_client\n    request_rate_limit: 1\n",
        fixture.display()
    ));
    svc.wait_server("counter", "running", running);
    let client = session(&svc).await;
    let call = || client.peer().call_tool(CallToolRequestParams::new("counter__count"));
    // Only gateway calls take tokens: the first goes through, the second
    // (the same second) is over the limit.
    call().await.unwrap();
    let refused = call().await.unwrap_err();
    let ServiceError::McpError(refused) = refused else {
        panic!("not an MCP error: {refused:?}")
    };
    assert_eq!(refused.code.0, -32012, "{refused:?}");
    let _ = client.cancel().await;
}

/// A client's own session that fails to start is not started again on the
/// client's very next call: the pause doubles from `restart_delay`, as for
/// instances, and the client is told why and when.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_client_session_that_fails_to_start_backs_off() {
    let fixture = crate::support::fixture("servers/counter.py");
    let marker = tempfile::tempdir().unwrap();
    let flag = marker.path().join("fail");
    // The managed instance starts; a client's own session finds the flag
    // and exits before it answers.
    let svc = Service::start(&format!(
        "servers:\n  counter:\n    command: sh\n    args: ['-c', 'test -e {flag} && exit 3; exec python3 {fixture}']\n    session: per_client\n    restart_delay: 30s\n",
        flag = flag.display(),
        fixture = fixture.display()
    ));
    svc.wait_server("counter", "running", running);
    std::fs::write(&flag, "").unwrap();
    let client = session(&svc).await;
    let call = || client.peer().call_tool(CallToolRequestParams::new("counter__count"));
    let first = format!("{:?}", call().await.unwrap_err());
    assert!(first.contains("not available to this client"), "{first}");
    assert!(!first.contains("tried again in"), "{first}");
    let second = format!("{:?}", call().await.unwrap_err());
    assert!(
        second.contains("tried again in"),
        "the second call started it again: {second}"
    );
    let _ = client.cancel().await;
}

/// The process exists and is not a zombie.
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// Sends one HTTP/1.1 request as written (Connection: close) and returns
/// the status and the whole response.
pub(crate) fn raw_http(address: &str, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    (response.split_whitespace().nth(1).unwrap().parse().unwrap(), response)
}

/// The value of header `name` (any case) in a whole HTTP response, as
/// `raw_http` returns it.
pub(crate) fn header(response: &str, name: &str) -> Option<String> {
    let head = response.split("\r\n\r\n").next().unwrap_or_default();
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
    })
}

/// The JSON body (not chunked) of a whole HTTP response, as `raw_http`
/// returns it.
pub(crate) fn json_body(response: &str) -> serde_json::Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {response}"))
}

/// A request to `/mcp` with the token, JSON in, JSON or SSE out.
pub(crate) fn mcp_post(address: &str, token: &str, method: &str, headers: &str, body: &str) -> String {
    format!(
        "{method} /mcp HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        token.trim(),
        body.len()
    )
}
