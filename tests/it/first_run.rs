//! A new user's first run (issue 16): `status` says where the gateway is, the
//! start-up progress bar keeps its own line on a terminal, the task runner makes
//! its missing base dir, `logs` tells what LAST ERROR says, and `client add`
//! sets up a desktop client whose entry works under the client's bare
//! environment.

use std::path::Path;
use std::process::{Command, Stdio};

use rmcp::ServiceExt;
use serde_json::Value;

use crate::service::{BIN, Service, eventually, running, task_runner};

#[test]
fn status_names_the_gateway_and_the_dashboard() {
    let svc = Service::start(&format!("servers:\n{}", task_runner("alpha", "")));
    svc.wait_server("alpha", "running", running);
    let out = String::from_utf8(svc.cli(&["status"]).stdout).unwrap();
    let url = svc.info()["url"].as_str().unwrap().to_string();
    assert!(out.contains(&format!("gateway: {url}/mcp")), "{out}");
    let socket = svc.state.path().join("gateway.sock");
    assert!(out.contains(&socket.display().to_string()), "{out}");
    assert!(out.contains("`mcp-manager connect`"), "{out}");
    assert!(out.contains("`mcp-manager dashboard`"), "{out}");
    // The token's file is named, never the token.
    assert!(!out.contains(svc.token().trim()), "{out}");
}

#[test]
fn logs_say_what_last_error_says() {
    let yaml = format!(
        "servers:\n  gone:\n    command: /nonexistent/bin/server\n  crashy:\n    command: sh\n    args: ['-c', 'echo fatal: no API key >&2; exit 3']\n    restart_delay: 100ms\n    max_restart_attempts: 1\n{}",
        task_runner("alpha", "")
    );
    let svc = Service::start(&yaml);
    for name in ["gone", "crashy"] {
        let server = svc.wait_server(name, "failed", |s| s["phase"] == "failed");
        let last_error = server["last_error"].as_str().unwrap().to_string();
        let logs = String::from_utf8(svc.cli(&["logs", name]).stdout).unwrap();
        assert!(
            logs.contains(&format!("mcp-manager: failed: {last_error}")),
            "`logs {name}` lacks LAST ERROR `{last_error}`:\n{logs}"
        );
    }
    let crashy = String::from_utf8(svc.cli(&["logs", "crashy"]).stdout).unwrap();
    // The server's own lines are there, unmarked, and each restart is told.
    assert!(crashy.lines().any(|l| l == "fatal: no API key"), "{crashy}");
    assert!(crashy.contains("mcp-manager: backoff: "), "{crashy}");
    // Error messages quote the server's stderr only, not the manager's lines.
    let last = svc.server("crashy")["last_error"].as_str().unwrap().to_string();
    assert!(!last.contains("mcp-manager:") && !last.contains("backoff"), "{last}");
}

#[test]
fn the_task_runner_makes_its_missing_base_dir() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("projects/new");
    let yaml = format!(
        "servers:\n  alpha:\n    command: {BIN}\n    args: [task-runner, --base-dir, '{}']\n",
        base.display()
    );
    let svc = Service::start(&yaml);
    svc.wait_server("alpha", "running", running);
    assert!(base.is_dir());
    let logs = String::from_utf8(svc.cli(&["logs", "alpha"]).stdout).unwrap();
    assert!(logs.contains("created the base dir"), "{logs}");
}

/// On a terminal (tmux), log lines never land on the progress bar's line: the
/// bar is redrawn below them.
#[test]
fn the_progress_bar_keeps_its_own_line() {
    let tmux_works = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !tmux_works {
        eprintln!("skipping the_progress_bar_keeps_its_own_line: tmux is not installed (.ci/run installs it)");
        return;
    }
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let servers: String = ["a", "b", "c", "d"].iter().map(|n| task_runner(n, "")).collect();
    std::fs::write(config.path().join("mcp-manager.yaml"), format!("servers:\n{servers}")).unwrap();
    let socket = format!("mcpm-bar-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-u", "-L", &socket])
            .args(args)
            .env("LANG", "C.UTF-8")
            .output()
            .unwrap()
    };
    let script = format!(
        "MCP_MANAGER_STATE_DIR='{}' NO_COLOR=1 '{BIN}' start --config '{}'; sleep 60",
        state.path().display(),
        config.path().display()
    );
    // Whatever happens below, the service and the tmux server go away.
    struct Cleanup<'a>(&'a Path, String);
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            let _ = Command::new(BIN)
                .arg("stop")
                .env("MCP_MANAGER_STATE_DIR", self.0)
                .output();
            let _ = Command::new("tmux").args(["-L", &self.1, "kill-server"]).output();
        }
    }
    let _cleanup = Cleanup(state.path(), socket.clone());
    let started = tmux(&["new-session", "-d", "-s", "bar", "-x", "200", "-y", "50", &script]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    let screen = || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-J", "-t", "bar"]).stdout).into_owned();
    eventually("every server running on the bar", || {
        screen().contains("4/4 servers running")
    });
    let stop = Command::new(BIN)
        .arg("stop")
        .env("MCP_MANAGER_STATE_DIR", state.path())
        .output()
        .unwrap();
    assert!(stop.status.success());
    eventually("the service's last log line", || screen().contains("stopped"));
    let s = screen();
    tmux(&["kill-server"]);
    let bars: Vec<&str> = s.lines().filter(|l| l.contains("servers running")).collect();
    assert!(!bars.is_empty(), "{s}");
    for line in &bars {
        assert!(
            line.starts_with('['),
            "the bar shares its line with a log line: {line:?}\n{s}"
        );
    }
    // Every log line starts on its own line too.
    for line in s.lines().filter(|l| l.contains(" INFO ")) {
        assert!(
            line.starts_with("20"),
            "a log line was written after the bar: {line:?}\n{s}"
        );
    }
}

/// `client add` writes an entry that runs under the bare environment a
/// desktop app gives its servers (no PATH, no MCP_MANAGER_STATE_DIR), and a
/// real MCP client reaches the gateway through it. `client remove` gives the
/// file back as it was.
#[tokio::test(flavor = "multi_thread")]
async fn client_add_sets_up_a_client_that_reaches_the_gateway() {
    let svc = Service::start(&format!("servers:\n{}", task_runner("alpha", "")));
    svc.wait_server("alpha", "running", running);
    let home = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    let config = home.path().join(".cursor/mcp.json");
    let original = "{\n  // keep me\n  \"mcpServers\": {\n    \"other\": {\"command\": \"npx\", \"env\": {\"TOKEN\": \"other-secret\"}}\n  }\n}\n";
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, original).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    let client = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("client")
            .args(args)
            .current_dir(project.path())
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env("MCP_MANAGER_STATE_DIR", svc.state.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };

    let printed = client(&["add", "cursor", "--print"]);
    assert!(printed.contains("+    \"mcp-manager\": {"), "{printed}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        original,
        "--print writes nothing"
    );

    let added = client(&["add", "cursor"]);
    assert!(added.contains("backup:"), "{added}");
    assert_eq!(
        std::fs::read_to_string(format!("{}.bak", config.display())).unwrap(),
        original
    );
    // The other entry's secret is never printed (the diff shows its key only).
    assert!(
        !added.contains("other-secret") && !printed.contains("other-secret"),
        "{added}"
    );
    // The file keeps its permissions; a new one is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&config), 0o640);
    client(&["add", "vscode", "--scope", "project"]);
    assert_eq!(mode(&project.path().join(".vscode/mcp.json")), 0o600);
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("// keep me") && text.contains("\"other\""), "{text}");
    let list = client(&["list"]);
    let row = list
        .lines()
        .find(|l| l.starts_with("cursor") && l.contains(" user "))
        .unwrap();
    assert!(row.contains("set up"), "{list}");

    // The entry, run as the client runs it: nothing from our environment.
    let parsed: Value = jsonc_value(&text);
    let entry = &parsed["mcpServers"]["mcp-manager"];
    let command = entry["command"].as_str().unwrap();
    assert!(Path::new(command).is_absolute(), "{entry}");
    let args: Vec<String> = entry["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let mut child = tokio::process::Command::new(command)
        .args(&args)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (stdout, stdin) = (child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let mcp = ().serve((stdout, stdin)).await.expect("the entry relays an MCP session");
    let tools = mcp.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "alpha__run_task"), "{tools:?}");
    mcp.cancel().await.unwrap();

    let removed = client(&["remove", "cursor"]);
    assert!(removed.contains("removed"), "{removed}");
    assert_eq!(
        jsonc_value(&std::fs::read_to_string(&config).unwrap()),
        jsonc_value(original)
    );
    assert!(std::fs::read_to_string(&config).unwrap().contains("// keep me"));
    assert!(client(&["list"]).contains("not set up"));
}

fn jsonc_value(text: &str) -> Value {
    let stripped: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    serde_json::from_str(&stripped).unwrap()
}

/// A project whose `.cursor/mcp.json` has the gateway's entry (`client add
/// cursor --scope project`) is also a config source: the entry is the
/// gateway's client, never a server to run (it would connect to itself).
#[test]
fn the_gateways_own_client_entry_is_not_a_server() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(".cursor")).unwrap();
    std::fs::write(
        dir.path().join(".cursor/mcp.json"),
        format!(
            "{{\"mcpServers\": {{\"mcp-manager\": {{\"command\": \"{BIN}\", \"args\": [\"--state-dir\", \"/s\", \"connect\"]}}, \"time\": {{\"command\": \"uvx\", \"args\": [\"mcp-server-time\"]}}}}}}"
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["discover", "--json", "--config"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("\"time\""), "{text}");
    assert!(!text.contains("\"mcp-manager\""), "{text}");
}
