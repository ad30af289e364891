//! The real binary, as a user runs it: exit codes, output, secrets, saved plans.

use std::path::Path;

use assert_cmd::Command;
use mcp_manager::config::Environment;
use mcp_manager::discovery;
use mcp_manager::state::{ObservedServer, Phase, StateStore};
use predicates::prelude::*;

use crate::support::{SECRET, SECRET_2, fixture, test_env};

/// `mcp-manager` with a clean environment (plus the test secrets) and a private state dir.
fn cmd(state_dir: &Path) -> Command {
    let mut c = Command::cargo_bin("mcp-manager").unwrap();
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", "/home/tester")
        .env("SECRET_TOKEN", SECRET)
        .env("SECRET_TOKEN_2", SECRET_2)
        .env("MCP_MANAGER_STATE_DIR", state_dir);
    c
}

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Records every enabled server of `config` as running with its current spec.
fn record_running(state_dir: &Path, config: &Path) {
    let outcome = discovery::load_config(
        &[config.to_path_buf()],
        &Environment {
            lookup: &test_env,
            secret_key: [0; 32],
        },
    );
    let store = StateStore::open(state_dir).unwrap();
    for s in outcome.desired.servers.values().filter(|s| s.spec.enabled) {
        let mut server = ObservedServer {
            phase: Phase::Running,
            replicas: s.spec.replicas,
            ..Default::default()
        };
        server.set_applied(s);
        store.put_server(&s.name, &server).unwrap();
    }
    store.flush().unwrap();
}

#[test]
fn validate_accepts_the_example_and_rejects_errors_with_locations() {
    let state = tempfile::tempdir().unwrap();
    cmd(state.path())
        .args(["validate", "--config"])
        .arg(examples())
        .assert()
        .success()
        .stdout("The configuration is valid: 2 servers.\n");
    cmd(state.path())
        .args(["validate", "--config"])
        .arg(fixture("errors"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "mcp-manager.yaml:3:5: error: unknown field `comand`, did you mean `command`?",
        ))
        .stderr(predicate::str::contains("the configuration has"));
}

#[test]
fn validate_json_lists_every_diagnostic() {
    let state = tempfile::tempdir().unwrap();
    let out = cmd(state.path())
        .args(["validate", "--json", "--config"])
        .arg(fixture("errors"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["valid"], false);
    let diagnostics = json["diagnostics"].as_array().unwrap();
    assert!(diagnostics.len() >= 15, "{diagnostics:#?}");
    assert!(
        diagnostics
            .iter()
            .all(|d| d["line"].as_u64().is_some() && d["file"].is_string())
    );
}

#[test]
fn plan_on_a_fresh_machine_starts_everything_and_creates_nothing() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("state");
    cmd(&state_dir)
        .args(["plan", "--detailed-exitcode", "--config"])
        .arg(examples())
        .assert()
        .code(2)
        .stdout(predicate::str::contains("+ start tasks-alpha"))
        .stdout(predicate::str::contains(
            "Plan: 2 to start, 0 to restart, 0 to update, 0 to stop.",
        ))
        .stdout(predicate::str::contains("\x1b").not());
    assert!(!state_dir.exists(), "plan must not create the state dir");
}

#[test]
fn plan_reads_observed_state_from_sled() {
    let state = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    let file = config.path().join("mcp-manager.yaml");
    std::fs::write(
        &file,
        "servers:\n  a: {command: srv, args: [--v1]}\n  b: {command: srv, request_timeout: 10s}\n  c: {command: srv}\n",
    )
    .unwrap();
    record_running(state.path(), config.path());
    cmd(state.path())
        .args(["plan", "--detailed-exitcode", "--config"])
        .arg(config.path())
        .assert()
        .code(0)
        .stdout("No changes. The running servers match the configuration.\n");

    std::fs::write(
        &file,
        "servers:\n  a: {command: srv, args: [--v2]}\n  b: {command: srv, request_timeout: 20s}\n  d: {command: new}\n",
    )
    .unwrap();
    let out = cmd(state.path())
        .args(["plan", "--detailed-exitcode", "--config"])
        .arg(config.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    for needle in [
        "- stop c",
        "# c will be stopped: removed from config",
        "-/+ restart a",
        "~ args:   # forces restart",
        "- \"--v1\"",
        "+ \"--v2\"",
        "~ update b",
        "~ request_timeout: \"10s\" -> \"20s\"",
        "+ start d",
        "Plan: 1 to start, 1 to restart, 1 to update, 1 to stop.",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}

#[test]
fn plan_json_and_saved_plan_carry_the_hashes() {
    let state = tempfile::tempdir().unwrap();
    let out_file = state.path().join("plan.json");
    let out = cmd(state.path())
        .args(["plan", "--json", "--out"])
        .arg(&out_file)
        .arg("--config")
        .arg(examples())
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["format_version"], 1);
    assert_eq!(printed["summary"]["start"], 2);
    assert_eq!(printed["actions"][0]["action"], "start");
    assert_eq!(printed["actions"][0]["provenance"]["line"], 13);
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap();
    assert_eq!(saved["desired_hash"], printed["desired_hash"]);
    assert_eq!(saved["observed_hash"], printed["observed_hash"]);
    assert_eq!(saved["desired_hash"].as_str().unwrap().len(), 64);
    assert!(saved["config_paths"][0].as_str().unwrap().ends_with("examples"));
}

#[test]
fn plan_refuses_invalid_config_and_names_the_missing_variable() {
    let state = tempfile::tempdir().unwrap();
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join(".mcp.json"),
        r#"{"mcpServers": {"gh": {"url": "https://x/mcp", "headers": {"Authorization": "Bearer ${GH_TOKEN}"}}}}"#,
    )
    .unwrap();
    cmd(state.path())
        .args(["plan", "--config"])
        .arg(config.path())
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicate::str::contains(
            ".mcp.json:1:60: error: environment variable `GH_TOKEN` is not set",
        ));
}

#[test]
fn plan_explains_a_locked_state_store() {
    let state = tempfile::tempdir().unwrap();
    let _store = StateStore::open(state.path()).unwrap();
    cmd(state.path())
        .args(["plan", "--config"])
        .arg(examples())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("is in use by another mcp-manager process"));
}

#[test]
fn secrets_never_appear_in_any_output() {
    let state = tempfile::tempdir().unwrap();
    let secrets = fixture("secrets");
    let plan_file = state.path().join("plan.json");
    let runs: Vec<Vec<String>> = vec![
        vec!["discover".into()],
        vec!["discover".into(), "--json".into()],
        vec!["validate".into()],
        vec!["validate".into(), "--json".into()],
        vec!["list-servers".into()],
        vec!["list-servers".into(), "--json".into()],
        vec!["plan".into()],
        vec![
            "plan".into(),
            "--json".into(),
            "--out".into(),
            plan_file.display().to_string(),
        ],
    ];
    for args in runs {
        let mut c = cmd(state.path());
        c.args(&args);
        c.arg("--config").arg(&secrets);
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for secret in [SECRET, SECRET_2, "sensitive:hmac"] {
            assert!(!all.contains(secret), "`{args:?}` leaked {secret}:\n{all}");
        }
    }
    let saved = std::fs::read_to_string(&plan_file).unwrap();
    assert!(!saved.contains(SECRET) && !saved.contains(SECRET_2));
    // The redaction is visible, so users know a value is there.
    let out = cmd(state.path())
        .args(["list-servers", "--json", "--config"])
        .arg(&secrets)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let api = &json["servers"][0]["spec"];
    assert_eq!(
        api["args"],
        serde_json::json!(["--api-key", "(sensitive)", "--verbose"])
    );
    assert_eq!(api["environment"]["PLAIN"], "(sensitive)");
    assert_eq!(json["servers"][1]["spec"]["url"], "(sensitive)");
}

#[test]
fn discover_lists_inferred_servers_and_how_to_enable_them() {
    let state = tempfile::tempdir().unwrap();
    cmd(state.path())
        .current_dir(fixture("sources"))
        .arg("discover")
        .assert()
        .success()
        .stdout(predicate::str::contains("weather-mcp"))
        .stdout(predicate::str::contains("py/pyproject.toml:6"))
        .stdout(predicate::str::contains("3 inferred servers not enabled"));
}

#[test]
fn service_commands_without_a_service_say_what_to_do() {
    let state = tempfile::tempdir().unwrap();
    for args in [
        &["list-servers"][..],
        &["status"],
        &["stop"],
        &["restart-server", "x"],
        &["logs", "x"],
        &["apply"],
    ] {
        cmd(state.path())
            .args(args)
            .assert()
            .code(1)
            .stderr(predicate::str::contains("no mcp-manager service is running"))
            .stderr(predicate::str::contains("mcp-manager start"));
    }
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mcp-manager"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success());
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(
            script.contains("approve") && script.contains("start-server"),
            "{shell}: {script}"
        );
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mcp-manager"))
        .arg("man")
        .output()
        .unwrap();
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH mcp-manager 1"), "{page}");
    assert!(page.contains("capabilities"), "{page}");
}
