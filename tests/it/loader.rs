//! Loading real config trees: every source kind, every error class, secrets.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use mcp_manager::config::{ConnectionType, Environment, LoadOutcome, SourceKind};
use mcp_manager::discovery;

use crate::support::{fixture, scrub, test_env};

fn load(paths: &[PathBuf]) -> LoadOutcome {
    discovery::load_config(
        paths,
        &Environment {
            lookup: &test_env,
            secret_key: [0; 32],
        },
    )
}

fn table(outcome: &LoadOutcome) -> String {
    let mut out = String::new();
    for s in outcome.desired.servers.values() {
        let _ = writeln!(
            out,
            "{:<16} {:<12} {:<42} {:<6} enabled={:<5} inferred={}",
            s.name,
            s.provenance.source.as_str(),
            scrub(&s.provenance.location()),
            s.spec.connection_type.as_str(),
            s.spec.enabled,
            s.inferred
        );
    }
    out
}

#[test]
fn every_source_kind_is_discovered_with_provenance() {
    let outcome = load(&[fixture("sources")]);
    assert!(!outcome.has_errors(), "{:#?}", outcome.diagnostics);
    insta::assert_snapshot!("sources_table", table(&outcome));
    let names: Vec<&str> = outcome.desired.servers.keys().map(String::as_str).collect();
    assert!(!names.contains(&"must-not-be-found"), "node_modules must be skipped");
    assert!(
        !names.contains(&"README"),
        "non-executable files in scripts/mcp are not servers"
    );
}

#[test]
fn client_file_shapes_are_normalized() {
    let outcome = load(&[fixture("sources")]);
    let s = |name: &str| &outcome.desired.servers[name].spec;
    // Claude Code: remote servers with headers; `type: sse`.
    assert_eq!(s("github").connection_type, ConnectionType::Http);
    assert_eq!(
        s("github").headers["Authorization"],
        format!("Bearer {}", crate::support::SECRET)
    );
    assert_eq!(s("sentry").connection_type, ConnectionType::Sse);
    assert_eq!(s("filesystem").args[2], "/home/tester/projects");
    // Cursor: `${env:VAR}`, bare `/sse` urls, and Cline's fields.
    assert_eq!(s("brave-search").environment["BRAVE_API_KEY"], crate::support::SECRET);
    assert_eq!(s("remote-sse").connection_type, ConnectionType::Sse);
    assert!(!s("cline-style").enabled);
    assert_eq!(s("cline-style").request_timeout, Duration::from_secs(30));
    // VS Code: JSONC with comments, trailing commas and `${workspaceFolder}`.
    assert_eq!(s("workspace-files").args[2], fixture("sources").display().to_string());
    // Claude Desktop: unrelated top-level keys are fine.
    assert_eq!(s("memory").environment["MEMORY_FILE_PATH"], "/tmp/memory.json");
    // YAML: paths relative to the file, durations as numbers.
    assert_eq!(s("tasks").working_directory, fixture("sources/work"));
    assert_eq!(s("tasks").health_check_interval, Duration::from_millis(500));
    // pyproject.toml and package.json explicit tables.
    assert_eq!(s("weather").request_timeout, Duration::from_secs(45));
    assert_eq!(s("weather").working_directory, fixture("sources/py"));
    assert_eq!(s("web-tools").environment["LOG_LEVEL"], "debug");
}

#[test]
fn inferred_servers_are_listed_but_disabled() {
    let outcome = load(&[fixture("sources")]);
    for (name, source, command) in [
        ("weather-mcp", SourceKind::PyProject, "weather-mcp"),
        ("start-mcp", SourceKind::PackageJson, "npm"),
        ("local-notes", SourceKind::Script, "local-notes.sh"),
    ] {
        let server = &outcome.desired.servers[name];
        assert!(
            server.inferred && !server.spec.enabled,
            "{name} must be inferred and disabled"
        );
        assert_eq!(server.provenance.source, source);
        assert!(server.spec.command.as_deref().unwrap().ends_with(command), "{name}");
    }
    // npm must not print its banner onto the MCP stdout.
    assert_eq!(
        outcome.desired.servers["start-mcp"].spec.args,
        ["run", "--silent", "start:mcp"]
    );
    assert!(!outcome.desired.servers.contains_key("weather-cli"));
}

#[test]
fn inferred_servers_are_enabled_by_name_and_shadowed_by_explicit_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("package.json"),
        r#"{"scripts": {"mcp": "node a.js", "dev:mcp": "node b.js"}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("mcp-manager.yaml"),
        "servers:\n  mcp:\n    command: node\n    args: [explicit.js]\nmanager:\n  discovery:\n    enable_inferred: [dev-mcp]\n",
    )
    .unwrap();
    let outcome = load(&[dir.path().to_path_buf()]);
    assert!(!outcome.has_errors(), "{:#?}", outcome.diagnostics);
    assert_eq!(outcome.desired.servers["mcp"].spec.args, ["explicit.js"]);
    assert!(!outcome.desired.servers["mcp"].inferred);
    assert_eq!(outcome.shadowed.len(), 1);
    assert_eq!(outcome.shadowed[0].name, "mcp");
    assert!(outcome.desired.servers["dev-mcp"].spec.enabled, "enabled by name");
}

#[test]
fn every_error_is_reported_at_once_with_its_location() {
    let outcome = load(&[fixture("errors")]);
    let rendered: Vec<String> = outcome.diagnostics.iter().map(|d| scrub(&d.to_string())).collect();
    insta::assert_snapshot!("error_report", rendered.join("\n\n"));
    // Only the warning-free, error-free files contribute servers: none here.
    assert!(outcome.desired.servers.is_empty());
    assert_eq!(outcome.invalid_files.len(), 7);
    assert!(
        outcome.manager_invalid,
        "`mode: sometimes` makes the whole revision invalid"
    );
}

#[test]
fn duplicate_names_across_files_name_both_places() {
    let outcome = load(&[fixture("errors")]);
    let dup = outcome
        .diagnostics
        .iter()
        .find(|d| d.message.contains("defined twice"))
        .expect("duplicate reported");
    assert!(dup.file.ends_with("mcp-manager.yaml"), "{dup:?}");
    assert!(dup.message.contains("errors/dup/.mcp.json:3:5"), "{}", dup.message);
}

#[test]
fn two_manager_sections_invalidate_the_revision() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mcp-manager.yaml"), "manager: {}\n").unwrap();
    std::fs::write(
        dir.path().join("mcp-config.yaml"),
        "manager: {}\nservers:\n  a: {command: x}\n",
    )
    .unwrap();
    let outcome = load(&[dir.path().to_path_buf()]);
    assert!(outcome.manager_invalid);
    assert!(
        outcome
            .diagnostics
            .iter()
            .any(|d| d.message.contains("keep one `manager:` section"))
    );
    let fine = load(&[crate::support::fixture("sources")]);
    assert!(!fine.manager_invalid);
}

#[test]
fn a_broken_file_does_not_take_valid_files_down() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("good")).unwrap();
    std::fs::create_dir(dir.path().join("bad")).unwrap();
    std::fs::write(
        dir.path().join("good/.mcp.json"),
        r#"{"mcpServers": {"ok": {"command": "x"}}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bad/.mcp.json"),
        r#"{"mcpServers": {"broken": {"comand": "x"}, "fine": {"command": "y"}}}"#,
    )
    .unwrap();
    let outcome = load(&[dir.path().to_path_buf()]);
    assert_eq!(outcome.error_count(), 1);
    // The good file applies; the whole bad file is frozen (DESIGN 4.5).
    assert_eq!(outcome.desired.servers.keys().collect::<Vec<_>>(), ["ok"]);
    let rejected: Vec<&str> = outcome.rejected.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(rejected, ["broken", "fine"]);
}

#[test]
fn discovery_settings_from_the_config_apply() {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("a/b/c");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::create_dir_all(dir.path().join("vendor")).unwrap();
    std::fs::write(deep.join(".mcp.json"), r#"{"mcpServers": {"deep": {"command": "x"}}}"#).unwrap();
    std::fs::write(
        dir.path().join("vendor/.mcp.json"),
        r#"{"mcpServers": {"vendored": {"command": "x"}}}"#,
    )
    .unwrap();
    assert_eq!(load(&[dir.path().to_path_buf()]).desired.servers.len(), 2);
    std::fs::write(
        dir.path().join("mcp-manager.yaml"),
        "manager:\n  discovery:\n    max_depth: 2\n    exclude: [vendor]\n",
    )
    .unwrap();
    let outcome = load(&[dir.path().to_path_buf()]);
    assert!(
        outcome.desired.servers.is_empty(),
        "{:?}",
        outcome.desired.servers.keys()
    );
}

#[test]
fn missing_paths_and_unknown_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "hi").unwrap();
    let outcome = load(&[dir.path().join("nope"), notes]);
    let messages: Vec<&str> = outcome.diagnostics.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].contains("no such file or directory"));
    assert!(messages[1].contains("not a config file mcp-manager knows"));
}

#[test]
fn environment_defaults_and_numeric_placeholders() {
    let outcome = crate::support::load_yaml(
        "servers:\n  r:\n    host: ${HOST:-localhost}\n    port: ${PORT:-8123}\n    connection_type: tcp\n    replicas: ${N:-2}\n",
    );
    assert!(!outcome.has_errors(), "{:#?}", outcome.diagnostics);
    let spec = &outcome.desired.servers["r"].spec;
    assert_eq!(
        (spec.host.as_deref(), spec.port, spec.replicas),
        (Some("localhost"), Some(8123), 2)
    );
}
