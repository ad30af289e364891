//! `mcp-manager call`: through the running gateway by server name, and
//! directly with `--url` (here the gateway's own `/mcp`, with a header).
//! The OAuth side is proven by the client conformance suite
//! (`client_conformance.rs`).

use crate::service::{Service, running, task_runner};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[test]
fn call_lists_and_calls_tools_through_the_gateway_and_directly() {
    let svc = Service::start(&format!("servers:\n{}", task_runner("tasks", "")));
    svc.wait_server("tasks", "running", running);

    // By server name, through the gateway: the server's own tool names.
    let out = svc.cli(&["call", "tasks"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    assert!(
        listed.contains("get_task_summary") && listed.contains("create_project"),
        "{listed}"
    );
    assert!(!listed.contains("tasks__"), "names as the server wrote them: {listed}");
    let out = svc.cli(&["call", "tasks", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    assert!(json["tools"].as_array().is_some_and(|t| !t.is_empty()), "{json}");

    // A tool that reports an error: exit 1, its message on stderr.
    let out = svc.cli(&["call", "tasks", "run_task", r#"{"task_path": "no_such_task.md"}"#]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(!text(&out.stderr).trim().is_empty());

    // Mistakes are named, before or after connecting.
    let out = svc.cli(&["call", "tasks", "get_task_summary", "{not json"]);
    assert!(text(&out.stderr).contains("not valid JSON"), "{}", text(&out.stderr));
    let out = svc.cli(&["call", "tasks", "no_such_tool"]);
    let error = text(&out.stderr);
    assert!(
        !out.status.success() && error.contains("no tool named `no_such_tool`") && error.contains("create_project"),
        "{error}"
    );
    let out = svc.cli(&["call", "nobody"]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("`nobody`"),
        "{}",
        text(&out.stderr)
    );

    // Directly, with --url and a header: the gateway's /mcp, its names.
    let url = format!("http://{}/mcp", svc.address());
    let header = format!("Authorization: Bearer {}", svc.token().trim());
    let out = svc.cli(&["call", "--url", &url, "-H", &header]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("tasks__get_task_summary"),
        "{}",
        text(&out.stdout)
    );
    // Without the header the gateway refuses; said, not retried for ever.
    let out = svc.cli(&["call", "--url", &url, "--timeout", "10s"]);
    assert!(!out.status.success());
    let error = text(&out.stderr);
    assert!(
        error.contains("publishes no OAuth metadata") && error.contains("--header"),
        "{error}"
    );
    assert!(
        !error.contains(svc.token().trim()),
        "the token is never printed: {error}"
    );
}
