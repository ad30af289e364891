//! Issue 13: config input that is hostile, huge or written for the original tool.
//!
//! Hostile files are loaded by the real binary in a child process under an
//! address-space limit, so "bounded memory" is asserted, not hoped for: before
//! the limits, the 342-byte YAML below took gigabytes and the 8,000-server
//! `.mcp.json` 2.8–6.4 GB.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mcp_manager::config::{ConnectionType, Environment, LoadOutcome};
use mcp_manager::discovery;

use crate::service::BIN;
use crate::support::{fixture, test_env};

/// Address space for one `validate` run: far below what the inputs took before,
/// far above what the loader needs now (about 100 MB for 8,000 servers).
const ADDRESS_SPACE: u64 = 512 << 20;

/// Runs `mcp-manager validate --config PATH` under [`ADDRESS_SPACE`].
fn validate_bounded(path: &Path) -> Output {
    let mut command = Command::new(BIN);
    command.args(["validate", "--config"]).arg(path).env("NO_COLOR", "1");
    // SAFETY: `setrlimit` is async-signal-safe and touches no memory of the
    // parent; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: ADDRESS_SPACE,
                rlim_max: ADDRESS_SPACE,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.output().expect("run mcp-manager validate")
}

/// Writes `text` to `dir/name` and validates it bounded; the run must end by
/// itself (exit 0 or 1, not a signal) and say `expect`.
fn check_bounded(name: &str, text: &str, expect_ok: bool, expect: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let out = validate_bounded(&path);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(if expect_ok { 0 } else { 1 }),
        "{name}: {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        &stderr[..stderr.len().min(2000)]
    );
    let all = format!("{stdout}{stderr}");
    assert!(
        all.contains(expect),
        "{name}: expected `{expect}` in:\n{}",
        &all[..all.len().min(2000)]
    );
    all
}

fn laughs(levels: usize, width: usize) -> String {
    let mut yaml = format!("a0: &a0 [{}]\n", vec!["\"lol\""; width].join(","));
    for i in 1..levels {
        let _ = writeln!(yaml, "a{i}: &a{i} [{}]", vec![format!("*a{}", i - 1); width].join(","));
    }
    yaml
}

#[test]
fn billion_laughs_is_an_error_in_bounded_memory() {
    let small = laughs(9, 9);
    assert!(small.len() < 500, "{}", small.len());
    let all = check_bounded("mcp-manager.yaml", &small, false, "billion laughs");
    assert!(all.contains("manager.limits.max_yaml_alias_bytes"), "{all}");
    // Wider and deeper: still refused, still bounded.
    check_bounded("mcp-manager.yaml", &laughs(12, 16), false, "max_yaml_alias");
    // Many cheap aliases: refused by count.
    let mut many = String::from("base: &b x\nlist:\n");
    for _ in 0..20_000 {
        many.push_str("  - *b\n");
    }
    check_bounded("mcp-manager.yaml", &many, false, "manager.limits.max_yaml_aliases");
    // Anchors nested in anchors, no alias at all: keeping each anchored value
    // is a copy too. One level of these 200,000 values fits the limit; 60
    // levels copied without being charged would take over a gigabyte.
    let inner = vec!["1"; 200_000].join(",");
    let nested = format!(
        "{}[{inner}]{}\n",
        (0..60).map(|i| format!("&a{i} [")).collect::<String>(),
        "]".repeat(60)
    );
    check_bounded(
        "mcp-manager.yaml",
        &format!("x: {nested}"),
        false,
        "max_yaml_alias_bytes",
    );
}

fn servers_json(n: usize) -> String {
    let servers: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| {
            (
                format!("s{i}"),
                serde_json::json!({"command": "python", "args": ["-m", format!("srv_{i}"), "--port", (10_000 + i).to_string()], "env": {"K": format!("v{i}")}}),
            )
        })
        .collect();
    // One line, as `json.dump` writes it: the case that cost gigabytes.
    serde_json::json!({ "mcpServers": servers }).to_string()
}

#[test]
fn eight_thousand_servers_load_in_every_format_in_bounded_memory() {
    let n = 8_000;
    check_bounded(".mcp.json", &servers_json(n), true, "8000 servers");
    let mut yaml = String::from("servers:\n");
    let mut toml = String::new();
    for i in 0..n {
        let _ = write!(
            yaml,
            "  s{i}:\n    command: python\n    args: [-m, srv_{i}, --port, '{}']\n    env:\n      K: v{i}\n",
            10_000 + i
        );
        let _ = write!(
            toml,
            "[tool.mcp.servers.s{i}]\ncommand = \"python\"\nargs = [\"-m\", \"srv_{i}\", \"--port\", \"{}\"]\nenv = {{ K = \"v{i}\" }}\n",
            10_000 + i
        );
    }
    check_bounded("mcp-manager.yaml", &yaml, true, "8000 servers");
    check_bounded("pyproject.toml", &toml, true, "8000 servers");
}

#[test]
fn huge_arrays_deep_nesting_and_many_scripts_stay_bounded() {
    // 320,000 args: quadratic before (17 s).
    let args = serde_json::json!({"mcpServers": {"a": {"command": "x", "args": vec!["a"; 320_000]}}}).to_string();
    check_bounded(".mcp.json", &args, true, "1 server");
    // Nesting: refused at the limit, never a stack overflow.
    let deep = format!("{{\"mcpServers\": {}", "[".repeat(200_000));
    check_bounded(".mcp.json", &deep, false, "nest deeper than 64 levels");
    let deep_yaml = format!("servers: {}", "[".repeat(200));
    check_bounded("mcp-manager.yaml", &deep_yaml, false, "nest deeper than 64 levels");
    let deep_block: String = (0..200).map(|i| format!("{}k{i}:\n", "  ".repeat(i))).collect();
    check_bounded("mcp-manager.yaml", &deep_block, false, "nest deeper than 64 levels");
    let deep_toml = format!("a = {}", "[".repeat(5_000));
    check_bounded("pyproject.toml", &deep_toml, false, "invalid TOML");
    let dotted = format!("{} = 1\n", vec!["a"; 5_000].join("."));
    check_bounded("pyproject.toml", &dotted, false, "invalid TOML");
    // A settings file cannot lift the limits past their caps.
    check_bounded(
        "mcp-manager.yaml",
        "limits:\n  max_nesting: 100000\n",
        false,
        "100000 is greater than the maximum of 256",
    );
    // 50,000 `mcp*` scripts: out of memory before; now the per-file limit.
    let scripts: serde_json::Map<String, serde_json::Value> =
        (0..50_000).map(|i| (format!("mcp{i}"), "node x".into())).collect();
    let pkg = serde_json::json!({"name": "x", "scripts": scripts}).to_string();
    check_bounded(
        "package.json",
        &pkg,
        false,
        "50000 servers in one file, over the limit of 10000 (manager.limits.max_servers_per_file)",
    );
    // A 10 MB string: over the default file size limit, refused unread.
    let big =
        serde_json::json!({"mcpServers": {"a": {"command": "x", "description": "x".repeat(10 << 20)}}}).to_string();
    check_bounded(".mcp.json", &big, false, "over the limit of 4.0 MiB for a config file");
}

fn load(paths: &[PathBuf]) -> LoadOutcome {
    discovery::load_config(
        paths,
        &Environment {
            lookup: &test_env,
            secret_key: [0; 32],
        },
    )
}

fn load_text(name: &str, text: &[u8]) -> (tempfile::TempDir, LoadOutcome) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(name), text).unwrap();
    let outcome = load(&[dir.path().to_path_buf()]);
    (dir, outcome)
}

/// The first error as `line:col: message`.
fn first_error(outcome: &LoadOutcome) -> String {
    let d = outcome
        .diagnostics
        .iter()
        .find(|d| d.is_error())
        .unwrap_or_else(|| panic!("expected an error: {:#?}", outcome.diagnostics));
    format!("{}:{}: {}", d.line, d.column, d.message)
}

#[test]
fn errors_point_at_their_cause() {
    let cases: [(&str, &[u8], &str); 4] = [
        // Invalid UTF-8: at the first bad byte (line 3, after `    "é` = 6 characters).
        (
            ".mcp.json",
            b"{\n  \"mcpServers\": {\n    \"\xc3\xa9\xff\": {\"command\": \"x\"}\n  }\n}\n",
            "3:7: the file is not valid UTF-8: byte 0xff",
        ),
        // An unclosed `[` on line 4 of a YAML file: at the bracket, not at line 5.
        (
            "mcp-manager.yaml",
            b"servers:\n  a:\n    command: x\n    args: [one, two\n    env:\n      A: b\n",
            "4:11: invalid YAML: this `[` is never closed",
        ),
        // A missing `}` in JSON: at the brace that is never closed, not at 1:1.
        (
            ".mcp.json",
            b"{\n  \"mcpServers\": {\n    \"a\": {\n      \"command\": \"x\"\n    },\n    \"b\": {\n      \"command\": \"y\"\n  }\n}\n",
            "6:10: this `{` is probably never closed",
        ),
        // A missing comma: after the value it should follow.
        (
            ".mcp.json",
            b"{\"mcpServers\": {\n  \"a\": {\"command\": \"x\"}\n  \"b\": {}\n}}\n",
            "2:24: expected `,` or `}`",
        ),
    ];
    for (name, text, expect) in cases {
        let (_d, outcome) = load_text(name, text);
        let e = first_error(&outcome);
        assert!(e.starts_with(expect), "{name}: {e}");
    }
}

#[test]
fn unknown_fields_get_a_suggestion_aliases_included() {
    let (_d, outcome) = load_text(
        "mcp-manager.yaml",
        b"servers:\n  a:\n    command: x\n    evn:\n      A: b\n",
    );
    assert_eq!(first_error(&outcome), "4:5: unknown field `evn`, did you mean `env`?");
}

#[test]
fn moving_a_project_restarts_only_servers_mcp_manager_starts() {
    let yaml = b"servers:\n  remote:\n    url: https://example.com/mcp\n  local:\n    command: x\n";
    let (_a, first) = load_text("mcp-manager.yaml", yaml);
    let (_b, moved) = load_text("mcp-manager.yaml", yaml);
    assert!(!first.has_errors(), "{:#?}", first.diagnostics);
    let hash = |o: &LoadOutcome, n: &str| o.desired.servers[n].spec_hash.clone();
    assert_eq!(hash(&first, "remote"), hash(&moved, "remote"));
    assert_ne!(hash(&first, "local"), hash(&moved, "local"));
    assert_eq!(
        first.desired.servers["remote"].spec.connection_type,
        ConnectionType::Http
    );
}

/// The original tool's README examples, copied verbatim into the fixtures.
#[test]
fn the_seed_readme_examples_work_as_written() {
    let seed = fixture("seed");
    let files = [
        ("mcp-json/.mcp.json", "json"),
        ("servers/mcp-config.yaml", "yaml"),
        ("manager/mcp-manager.yaml", "yaml"),
    ];
    // The fixtures are the README's blocks to the letter, where the README is at hand.
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/seed/README.md");
    match std::fs::read_to_string(&readme) {
        Ok(text) => {
            for (file, lang) in files {
                let body = std::fs::read_to_string(seed.join(file)).unwrap();
                assert!(
                    text.contains(&format!("```{lang}\n{body}```")),
                    "{file} is not a block of the seed README as written"
                );
            }
        }
        Err(_) => println!("skipping the README comparison: {} is not here", readme.display()),
    }
    for (file, _) in files {
        let dir = seed.join(file).parent().unwrap().to_path_buf();
        let out = Command::new(BIN)
            .args(["validate", "--config"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let server = load(&[seed.join("servers")]);
    let spec = &server.desired.servers["my-server"].spec;
    assert_eq!(spec.connection_type, ConnectionType::Stdio);
    assert_eq!((spec.host.clone(), spec.port), (None, None), "ignored for stdio");
    assert_eq!(spec.environment["ENV_VAR"], "value");
    assert_eq!(spec.request_rate_limit, Some(100.0));
    let warnings: Vec<&str> = server.diagnostics.iter().map(|d| d.message.as_str()).collect();
    assert!(warnings.iter().all(|w| w.contains("is ignored")), "{warnings:?}");
    assert_eq!(warnings.len(), 2, "{warnings:?}");

    let manager = load(&[seed.join("manager")]);
    assert!(!manager.has_errors(), "{:#?}", manager.diagnostics);
    let m = &manager.desired.manager;
    let home = std::env::home_dir().unwrap();
    assert_eq!(
        m.discovery.config_directories,
        [
            "/opt/sutazaiapp/.mcp".to_string(),
            home.join(".mcp").display().to_string()
        ]
    );
    assert!(m.discovery.auto_discovery);
    assert_eq!(m.discovery.discovery_interval, Some(std::time::Duration::from_secs(60)));
    assert_eq!(
        m.health_monitoring.global_health_check_interval,
        Some(std::time::Duration::from_secs(30))
    );
    assert_eq!(m.health_monitoring.max_concurrent_health_checks, 5);
    assert_eq!(m.recovery.global_auto_recovery, Some(true));
    assert_eq!(
        m.recovery.recovery_check_interval,
        Some(std::time::Duration::from_secs(10))
    );
    assert_eq!(m.performance.max_startup_concurrency, 3);
    assert_eq!(m.storage.state_file.as_deref(), Some("/tmp/mcp_manager_state.json"));
    assert_eq!(m.log_level.as_deref(), Some("info"), "storage.log_level, INFO");
    assert_eq!(m.log_file.as_deref(), Some("/var/log/mcp-manager.log"));
    assert_eq!((m.api.host.as_str(), m.api.port), ("localhost", 8080));
}

#[test]
fn global_defaults_apply_to_servers_without_their_own() {
    let (_d, outcome) = load_text(
        "mcp-manager.yaml",
        b"health_monitoring:\n  global_health_check_interval: 7s\nrecovery:\n  global_auto_recovery: false\nservers:\n  plain:\n    command: x\n  own:\n    command: x\n    health_check_interval: 3s\n    auto_restart: true\n",
    );
    assert!(!outcome.has_errors(), "{:#?}", outcome.diagnostics);
    let s = |n: &str| &outcome.desired.servers[n].spec;
    assert_eq!(s("plain").health_check_interval.as_secs(), 7);
    assert!(!s("plain").auto_restart);
    assert_eq!(s("own").health_check_interval.as_secs(), 3);
    assert!(s("own").auto_restart);
}

#[test]
fn manager_settings_at_the_top_and_under_manager_do_not_mix() {
    let (_d, outcome) = load_text(
        "mcp-manager.yaml",
        b"manager:\n  reconcile:\n    mode: manual\nlog_level: debug\n",
    );
    assert!(outcome.manager_invalid);
    assert!(
        first_error(&outcome).contains("move it there"),
        "{}",
        first_error(&outcome)
    );
    let (_d, outcome) = load_text("mcp-manager.yaml", b"log_level: debug\nstorage:\n  log_level: ERROR\n");
    assert!(
        first_error(&outcome).contains("given twice"),
        "{}",
        first_error(&outcome)
    );
}

#[test]
fn config_directories_and_auto_discovery() {
    let root = tempfile::tempdir().unwrap();
    let main = root.path().join("main");
    let extra = root.path().join("extra");
    let nested = main.join("nested");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::write(
        main.join("mcp-manager.yaml"),
        "discovery:\n  config_directories: [../extra, ../missing]\nservers:\n  main-server:\n    command: x\n",
    )
    .unwrap();
    std::fs::write(
        extra.join(".mcp.json"),
        r#"{"mcpServers": {"extra-server": {"command": "y"}}}"#,
    )
    .unwrap();
    std::fs::write(
        nested.join(".mcp.json"),
        r#"{"mcpServers": {"nested-server": {"command": "z"}}}"#,
    )
    .unwrap();

    let outcome = load(std::slice::from_ref(&main));
    assert!(!outcome.has_errors(), "{:#?}", outcome.diagnostics);
    let names: Vec<&str> = outcome.desired.servers.keys().map(String::as_str).collect();
    assert_eq!(names, ["extra-server", "main-server", "nested-server"]);
    assert!(
        outcome
            .diagnostics
            .iter()
            .any(|d| !d.is_error() && d.file.ends_with("missing") && d.message.contains("does not exist")),
        "{:#?}",
        outcome.diagnostics
    );

    // auto_discovery: false reads only named files and the one holding the settings.
    std::fs::write(
        main.join("mcp-manager.yaml"),
        "discovery:\n  auto_discovery: false\nservers:\n  main-server:\n    command: x\n",
    )
    .unwrap();
    let outcome = load(std::slice::from_ref(&main));
    let names: Vec<&str> = outcome.desired.servers.keys().map(String::as_str).collect();
    assert_eq!(names, ["main-server"]);
    let outcome = load(&[main.clone(), extra.join(".mcp.json")]);
    let names: Vec<&str> = outcome.desired.servers.keys().map(String::as_str).collect();
    assert_eq!(names, ["extra-server", "main-server"]);
}

#[test]
fn limits_can_be_raised_in_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mcp-manager.yaml"),
        "limits:\n  max_file_size: 20000000\n  max_servers_per_file: 3\n",
    )
    .unwrap();
    let big =
        serde_json::json!({"mcpServers": {"a": {"command": "x", "description": "x".repeat(5 << 20)}}}).to_string();
    std::fs::write(dir.path().join("big.mcp.json"), big).unwrap();
    let four: serde_json::Map<String, serde_json::Value> = (0..4)
        .map(|i| (format!("s{i}"), serde_json::json!({"command": "x"})))
        .collect();
    std::fs::write(
        dir.path().join("four.mcp.json"),
        serde_json::json!({ "mcpServers": four }).to_string(),
    )
    .unwrap();
    let outcome = load(&[dir.path().to_path_buf()]);
    assert!(outcome.desired.servers.contains_key("a"), "{:#?}", outcome.diagnostics);
    assert!(
        first_error(&outcome).contains("4 servers in one file, over the limit of 3"),
        "{}",
        first_error(&outcome)
    );
}

/// The seed's manager keys in a running service: `discover --rescan`,
/// `storage.state_file`, a config directory that appears later (found by
/// `discovery_interval`), and `recovery_check_interval` for a failed server.
#[test]
fn rescan_state_file_discovery_interval_and_recovery_in_the_service() {
    use crate::service::{Service, task_runner};
    let root = tempfile::tempdir().unwrap();
    let later = root.path().join("later");
    let state_file = root.path().join("state").join("observed.json");
    let head = format!(
        "discovery:\n  config_directories: [{}]\n  discovery_interval: 1s\nrecovery:\n  recovery_check_interval: 1s\nstorage:\n  state_file: {}\nservers:\n",
        later.display(),
        state_file.display()
    );
    let broken = "  broken:\n    command: sh\n    args: [-c, 'exit 3']\n    restart_delay: 50ms\n    max_restart_delay: 100ms\n    max_restart_attempts: 1\n";
    let secret_env = format!("    env:\n      API_TOKEN: {}\n", crate::support::SECRET);
    let svc = Service::start(&format!("{head}{}{broken}", task_runner("alpha", &secret_env)));
    svc.wait_server("alpha", "running", |s| s["phase"] == "running");

    // recovery_check_interval: a failed server gets new starts by itself.
    svc.wait_server("broken", "failed", |s| s["phase"] == "failed");
    let restarts = svc.server("broken")["restart_count"].as_u64().unwrap_or(0);
    svc.wait_server("broken", "started again", |s| {
        s["restart_count"].as_u64().unwrap_or(0) > restarts
    });
    // Without the setting a failed server stays failed (see the service tests).

    // storage.state_file: the observed state, 0600, secrets fingerprinted.
    crate::service::eventually("the state file to list alpha", || {
        std::fs::read_to_string(&state_file).is_ok_and(|t| t.contains("\"alpha\""))
    });
    let text = std::fs::read_to_string(&state_file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&state_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let observed: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(observed["servers"]["alpha"]["phase"].is_string(), "{text}");
    assert!(!text.contains(crate::support::SECRET), "the state file holds a secret");
    assert!(text.contains("sensitive:hmac:"), "{text}");

    // A config directory that appears after the start, with nothing else
    // changing: only the periodic re-scan can find it.
    std::fs::create_dir_all(&later).unwrap();
    std::fs::write(
        later.join("mcp-servers.yaml"),
        format!("servers:\n{}", task_runner("late", "")),
    )
    .unwrap();
    svc.wait_server("late", "found by discovery_interval and running", |s| {
        s["phase"] == "running"
    });

    drop(svc);
}

/// `discover --rescan` asks the running service to re-read its config now and
/// prints what changed. The watcher is held off (a one-hour debounce), so the
/// re-scan is the only thing that sees the edit.
#[test]
fn discover_rescan_reports_what_changed() {
    use crate::service::{Service, task_runner};
    let head = "reconcile:\n  debounce: 1h\nservers:\n";
    let svc = Service::start(&format!(
        "{head}{}{}",
        task_runner("alpha", ""),
        task_runner("beta", "")
    ));
    svc.wait_server("beta", "running", |s| s["phase"] == "running");
    std::fs::write(
        svc.config.path().join("mcp-manager.yaml"),
        format!(
            "{head}{}{}",
            task_runner("alpha", "    description: changed\n"),
            task_runner("gamma", "")
        ),
    )
    .unwrap();
    let out = svc.cli(&["discover", "--rescan", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["added"], serde_json::json!(["gamma"]), "{report}");
    assert_eq!(report["removed"], serde_json::json!(["beta"]), "{report}");
    assert_eq!(report["changed"], serde_json::json!(["alpha"]), "{report}");
    assert_eq!(
        (report["files"].as_u64(), report["errors"].as_u64()),
        (Some(1), Some(0))
    );
    svc.wait_server("gamma", "started by the re-scan", |s| s["phase"] == "running");

    let out = svc.cli(&["discover", "--rescan"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Re-scanned 1 config file."), "{stdout}");
    assert!(stdout.contains("No server was added, removed or changed."), "{stdout}");

    assert!(svc.cli(&["stop"]).status.success());
    let out = svc.cli(&["discover", "--rescan", "--config", svc.config.path().to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no service is running"));
    assert!(String::from_utf8_lossy(&out.stdout).contains("gamma"));
}
