//! The reconciler service under load, with real task-runner servers.
//!
//! Run: `cargo bench --bench service` (optionally `-- 50 200` for the sizes).
//! `MCP_MANAGER_BENCH_BIN=/path/to/mcp-manager` measures another build (a
//! baseline) with the same harness; the servers are always this build's task
//! runner.
//! Reports (issue 7): time from `start` to all servers Healthy; the service's RSS
//! and idle CPU with 200 servers at a 5 s health interval; time from a server's
//! SIGKILL to its restart being initiated (target < 50 ms, backoff excluded);
//! time from a config save to the changed server restarting (target < debounce +
//! 200 ms). Latencies are observed through the SSE event stream, so they include
//! its delivery: upper bounds.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The task runner the servers run (this build).
const BIN: &str = env!("CARGO_BIN_EXE_mcp-manager");

/// The service under measurement: this build, or `MCP_MANAGER_BENCH_BIN`.
fn service_bin() -> String {
    std::env::var("MCP_MANAGER_BENCH_BIN").unwrap_or_else(|_| BIN.to_string())
}

struct Api {
    addr: String,
    token: String,
}

impl Api {
    fn connect(state: &Path) -> Option<Api> {
        let info: Value = serde_json::from_str(&std::fs::read_to_string(state.join("service.json")).ok()?).ok()?;
        let addr = info["url"].as_str()?.trim_start_matches("http://").to_string();
        let token = std::fs::read_to_string(state.join("api-token")).ok()?;
        Some(Api { addr, token })
    }

    fn get(&self, path: &str) -> Option<Value> {
        let mut stream = TcpStream::connect(&self.addr).ok()?;
        write!(
            stream,
            "GET /api/v1{path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            self.addr, self.token
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let body = response.split_once("\r\n\r\n")?.1;
        // The API answers with a Content-Length body (no chunking) for JSON.
        serde_json::from_str(body).ok()
    }

    /// An SSE reader on /events.
    fn events(&self) -> BufReader<TcpStream> {
        let mut stream = TcpStream::connect(&self.addr).expect("connect");
        write!(
            stream,
            "GET /api/v1/events HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
            self.addr, self.token
        )
        .expect("write");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        BufReader::new(stream)
    }
}

/// Reads SSE lines until an event JSON satisfies `matches`.
fn wait_event(reader: &mut BufReader<TcpStream>, matches: impl Fn(&Value) -> bool) -> Instant {
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).expect("event stream") == 0 {
            panic!("event stream ended");
        }
        if let Some(data) = line.trim_end().strip_prefix("data:")
            && let Ok(event) = serde_json::from_str::<Value>(data.trim())
            && matches(&event)
        {
            return Instant::now();
        }
    }
}

fn config(n: usize, variant: &str) -> String {
    let mut yaml = String::from("servers:\n");
    for i in 0..n {
        let mode = if i == 0 { variant } else { "a" };
        yaml.push_str(&format!(
            "  s{i:03}:\n    command: {BIN}\n    args: [task-runner, --base-dir, ., --executor, cat]\n    environment: {{MODE: {mode}}}\n    health_check_interval: 5s\n    restart_delay: 1s\n"
        ));
    }
    yaml
}

fn write_config(dir: &Path, yaml: &str) {
    let tmp = dir.join(".tmp.yaml");
    std::fs::write(&tmp, yaml).expect("write config");
    std::fs::rename(tmp, dir.join("mcp-manager.yaml")).expect("rename config");
}

fn proc_field(pid: u32, file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

struct Service {
    child: Child,
}

impl Service {
    /// `mcp-manager start` (the build under measurement) on `config`, quiet.
    fn start(config: &Path, state: &Path) -> Service {
        let child = Command::new(service_bin())
            .args(["start", "--config"])
            .arg(config)
            .env("MCP_MANAGER_STATE_DIR", state)
            .env("MCP_MANAGER_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the service");
        Service { child }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) of our own child; SIGTERM triggers a graceful stop.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn run(n: usize, measure_all: bool) {
    let config_dir = tempfile::tempdir().expect("temp");
    let state = tempfile::tempdir().expect("temp");
    write_config(config_dir.path(), &config(n, "a"));
    let started = Instant::now();
    let service = Service::start(config_dir.path(), state.path());
    let service_pid = service.child.id();
    let api = loop {
        if let Some(api) = Api::connect(state.path()) {
            break api;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    loop {
        let healthy = api.get("/servers").and_then(|v| {
            v["servers"].as_array().map(|a| {
                a.iter()
                    .filter(|s| s["phase"] == "running" && s["health"] == "healthy")
                    .count()
            })
        });
        if healthy == Some(n) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("{n} servers: start -> all healthy: {:?}", started.elapsed());
    if !measure_all {
        return;
    }

    // Idle: RSS now, CPU over 20 s (four health rounds at 5 s).
    std::thread::sleep(Duration::from_secs(2));
    let rss_kb = proc_field(service_pid, "status", "VmRSS:").unwrap_or(0);
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let before = cpu_ticks(service_pid);
    let window = Duration::from_secs(20);
    std::thread::sleep(window);
    let used = (cpu_ticks(service_pid) - before) as f64 / ticks_per_s;
    println!(
        "{n} servers at a 5 s health interval: service RSS {:.1} MiB, idle CPU {:.2}% of one core",
        rss_kb as f64 / 1024.0,
        100.0 * used / window.as_secs_f64()
    );

    // SIGKILL -> restart initiated (the Backoff phase), seen on the event stream.
    let mut kill_latencies = Vec::new();
    for i in 1..=7 {
        let name = format!("s{i:03}");
        let server = api.get(&format!("/servers/{name}")).expect("server");
        let pid = server["pids"][0].as_u64().expect("pid") as i32;
        let mut events = api.events();
        std::thread::sleep(Duration::from_millis(50));
        let killed = Instant::now();
        // SAFETY: plain kill(2) of a server process we supervise.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let seen = wait_event(&mut events, |e| e["server"] == name.as_str() && e["phase"] == "backoff");
        kill_latencies.push(seen - killed);
    }
    println!(
        "SIGKILL -> restart initiated (backoff entered), median of 7: {:?} (max {:?})",
        median(kill_latencies.clone()),
        kill_latencies.iter().max().expect("samples")
    );

    // Config save -> the changed server restarting.
    let mut save_latencies = Vec::new();
    for (round, variant) in ["b", "c", "d", "e", "f"].iter().enumerate() {
        let mut events = api.events();
        std::thread::sleep(Duration::from_millis(100 + 50 * round as u64));
        let saved = Instant::now();
        write_config(config_dir.path(), &config(n, variant));
        let seen = wait_event(&mut events, |e| e["server"] == "s000" && e["kind"] == "plan");
        save_latencies.push(seen - saved);
        std::thread::sleep(Duration::from_millis(1500));
    }
    println!(
        "config save -> changed server restarting (debounce 500 ms), median of 5: {:?}",
        median(save_latencies)
    );
}

/// Idle CPU of a service started at a folder (the default `--config ./` of a
/// repository root) holding `files` other files, while something reads the
/// folder the way an IDE or `ls` does (issue 11, defect 2: every read was
/// taken for an edit and reloaded the config).
fn idle_in_folder(files: usize) {
    let folder = tempfile::tempdir().expect("temp");
    let state = tempfile::tempdir().expect("temp");
    for i in 0..files {
        std::fs::write(folder.path().join(format!("file-{i:05}.txt")), "x").expect("write");
    }
    write_config(folder.path(), &config(5, "a"));
    let service = Service::start(folder.path(), state.path());
    let pid = service.child.id();
    while Api::connect(state.path()).is_none() {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_secs(3));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, dir) = (stop.clone(), folder.path().to_path_buf());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // List the folder and read the config, twice a second.
                let _ = std::fs::read_dir(&dir).map(|d| d.count());
                let _ = std::fs::read(dir.join("mcp-manager.yaml"));
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let before = cpu_ticks(pid);
    let window = Duration::from_secs(15);
    std::thread::sleep(window);
    let used = (cpu_ticks(pid) - before) as f64 / 100.0;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = reader.join();
    println!(
        "folder with {files} files, read twice a second: idle CPU {:.2}% of one core",
        100.0 * used / window.as_secs_f64()
    );
    drop(service);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "folder") {
        for files in [20, 20_000] {
            idle_in_folder(files);
        }
        return;
    }
    let sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![50, 200] } else { sizes };
    let largest = *sizes.iter().max().expect("at least one size");
    for n in sizes {
        run(n, n == largest);
    }
    for files in [20, 20_000] {
        idle_in_folder(files);
    }
}
