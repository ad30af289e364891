//! Load + validate + plan of a generated config with 10,000 servers.
//!
//! Run: `cargo bench --bench plan` (optionally `-- 20000` for another size).
//! Targets (issue 2): plan < 100 ms, load + validate < 1 s.
//!
//! It also loads the same servers written as one-line JSON (`.mcp.json`, as
//! `json.dump` writes it) and as TOML (`pyproject.toml`), and reports each
//! format's load time and peak memory (issue 13: the same servers cost about
//! the same in every format). Peak memory is measured in a child process per
//! format (this binary again, with `--peak FILE`), from its `VmHWM`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use mcp_manager::config::Environment;
use mcp_manager::discovery;
use mcp_manager::plan;
use mcp_manager::state::{ObservedServer, ObservedState, Phase};

fn generate(n: usize, variant: &str) -> String {
    let mut yaml = String::from("servers:\n");
    for i in 0..n {
        let _ = write!(
            yaml,
            "  server-{i:05}:\n    description: generated server {i}\n    command: python\n    args: [-m, srv_{i}, --port, '{port}', --mode, {variant}]\n    environment:\n      API_KEY: ${{BENCH_TOKEN:-dev-{i}}}\n      LEVEL: info\n    request_timeout: {t}s\n    health_check_interval: 30s\n    tags: [bench, group-{g}]\n    priority: {p}\n",
            port = 10_000 + i,
            variant = if i % 10 == 0 { variant } else { "a" },
            t = 30 + i % 7,
            g = i % 16,
            p = i % 5,
        );
    }
    yaml
}

/// The servers of [`generate`] as a one-line `.mcp.json`.
fn generate_json(n: usize) -> String {
    let servers: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| {
            let server = serde_json::json!({
                "description": format!("generated server {i}"),
                "command": "python",
                "args": ["-m", format!("srv_{i}"), "--port", (10_000 + i).to_string(), "--mode", "a"],
                "env": {"API_KEY": format!("${{BENCH_TOKEN:-dev-{i}}}"), "LEVEL": "info"},
                "request_timeout": format!("{}s", 30 + i % 7),
                "health_check_interval": "30s",
                "tags": ["bench", format!("group-{}", i % 16)],
                "priority": i % 5,
            });
            (format!("server-{i:05}"), server)
        })
        .collect();
    serde_json::json!({ "mcpServers": servers }).to_string()
}

/// The servers of [`generate`] as `[tool.mcp.servers.NAME]` tables.
fn generate_toml(n: usize) -> String {
    let mut toml = String::from("[project]\nname = \"bench\"\n\n");
    for i in 0..n {
        let _ = write!(
            toml,
            "[tool.mcp.servers.server-{i:05}]\ndescription = \"generated server {i}\"\ncommand = \"python\"\nargs = [\"-m\", \"srv_{i}\", \"--port\", \"{port}\", \"--mode\", \"a\"]\nenv = {{ API_KEY = \"${{BENCH_TOKEN:-dev-{i}}}\", LEVEL = \"info\" }}\nrequest_timeout = \"{t}s\"\nhealth_check_interval = \"30s\"\ntags = [\"bench\", \"group-{g}\"]\npriority = {p}\n\n",
            port = 10_000 + i,
            t = 30 + i % 7,
            g = i % 16,
            p = i % 5,
        );
    }
    toml
}

/// Child mode: load the config at `path` once and print the peak resident memory.
fn peak(path: &str) {
    let env = Environment::process();
    let loaded = discovery::load_config(&[std::path::PathBuf::from(path)], &env);
    assert!(
        !loaded.has_errors(),
        "generated config must be valid: {:?}",
        loaded.diagnostics.first()
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map_or("?".to_string(), |v| v.trim().to_string());
    println!("{} {hwm}", loaded.desired.servers.len());
}

/// Load time (median of 5, in process) and peak memory (in a child) of one file.
fn measure_format(label: &str, dir: &std::path::Path, name: &str, text: &str, n: usize) {
    let sub = dir.join(label);
    std::fs::create_dir_all(&sub).expect("bench dir");
    let file = sub.join(name);
    std::fs::write(&file, text).expect("write config");
    let env = Environment::process();
    let paths = [sub.clone()];
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let loaded = discovery::load_config(&paths, &env);
        times.push(start.elapsed());
        assert_eq!(
            loaded.desired.servers.len(),
            n,
            "{label}: {:?}",
            loaded.diagnostics.first()
        );
    }
    let child = std::process::Command::new(std::env::current_exe().expect("own path"))
        .arg("--peak")
        .arg(&sub)
        .output()
        .expect("run the peak-memory child");
    let peak = String::from_utf8_lossy(&child.stdout);
    let peak = peak.split_whitespace().skip(1).collect::<Vec<_>>().join(" ");
    println!(
        "  {label:<6} {:>9} bytes  load median of 5: {:>10?}  peak RSS of a process loading it: {peak}",
        text.len(),
        median(times)
    );
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--peak") {
        peak(args.get(i + 1).expect("--peak FILE"));
        return;
    }
    let n: usize = args.iter().skip(1).find_map(|a| a.parse().ok()).unwrap_or(10_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("mcp-manager.yaml");
    let env = Environment::process();

    std::fs::write(&file, generate(n, "a")).expect("write config");
    let paths = [dir.path().to_path_buf()];
    let mut load_times = Vec::new();
    let mut outcome = None;
    for _ in 0..7 {
        let start = Instant::now();
        let loaded = discovery::load_config(&paths, &env);
        load_times.push(start.elapsed());
        assert!(!loaded.has_errors(), "generated config must be valid");
        assert_eq!(loaded.desired.servers.len(), n);
        outcome = Some(loaded);
    }
    let old = outcome.expect("loaded at least once").desired;

    // Observed: everything running with the old spec; then 10% of servers change.
    let observed = ObservedState {
        servers: old
            .servers
            .values()
            .map(|s| {
                let mut server = ObservedServer {
                    phase: Phase::Running,
                    replicas: 1,
                    ..Default::default()
                };
                server.set_applied(s);
                (s.name.clone(), server)
            })
            .collect(),
    };
    std::fs::write(&file, generate(n, "b")).expect("write config");
    let new = discovery::load_config(&paths, &env).desired;

    let mut plan_times = Vec::new();
    let mut fresh_times = Vec::new();
    let empty = ObservedState::default();
    let mut restarts = 0;
    for _ in 0..11 {
        let start = Instant::now();
        let p = plan::plan(&new, &observed);
        plan_times.push(start.elapsed());
        restarts = p.summary.restart;
        let start = Instant::now();
        let p = plan::plan(&new, &empty);
        fresh_times.push(start.elapsed());
        assert_eq!(p.summary.start, n);
    }
    assert_eq!(restarts, n / 10);

    println!("servers: {n}");
    println!(
        "load + validate (read, parse, expand, schema, normalize), median of 7: {:?}",
        median(load_times)
    );
    println!(
        "plan vs running state, {restarts} restarts, median of 11: {:?}",
        median(plan_times)
    );
    println!(
        "plan from empty observed state, median of 11: {:?}",
        median(fresh_times)
    );

    println!("the same {n} servers in each format:");
    let formats = tempfile::tempdir().expect("temp dir");
    measure_format("yaml", formats.path(), "mcp-manager.yaml", &generate(n, "a"), n);
    measure_format("json", formats.path(), ".mcp.json", &generate_json(n), n);
    measure_format("toml", formats.path(), "pyproject.toml", &generate_toml(n), n);
}
