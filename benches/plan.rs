//! Load + validate + plan of a generated config with 10,000 servers.
//!
//! Run: `cargo bench --bench plan` (optionally `-- 20000` for another size).
//! Targets (issue 2): plan < 100 ms, load + validate < 1 s.

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

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(10_000);
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
}
