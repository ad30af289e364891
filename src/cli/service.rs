//! Commands that run or talk to the service: `start`, `stop`, `restart`, `status`,
//! `health`, `start-server`/`stop-server`/`restart-server`, `apply`, `logs`, and
//! `list-servers` without `--config`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};

use super::client::{ApiClient, ApiFailure};
use super::output::{Table, print_diagnostics, print_json};
use super::plan::SavedPlan;
use super::{ConfigPaths, Globals};
use crate::config::Diagnostic;
use crate::plan::{self, Plan, RenderOptions};
use crate::reconciler::{self, ServerStatus, Snapshot};
use crate::service;

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    #[command(flatten)]
    config: ConfigPaths,
    /// Run in the background: log to manager.log_file (else the state dir's mcp-manager.log), write a pid file
    #[arg(long)]
    daemon: bool,
    /// Do not run health checks
    #[arg(long)]
    no_monitoring: bool,
    /// API port on 127.0.0.1 [default: manager.api.port, else any free port]
    #[arg(long, value_name = "PORT")]
    api_port: Option<u16>,
    /// Log as text or JSON lines [default: MCP_MANAGER_LOG_FORMAT, else manager.log_format, else text]
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<super::logging::LogFormat>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Per-server details: location, pids, exits, recent health checks
    #[arg(long)]
    detailed: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
    /// Keep updating as things change (Ctrl-C quits)
    #[arg(long)]
    watch: bool,
}

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Only this server
    #[arg(long)]
    server: Option<String>,
    /// Keep updating as things change (Ctrl-C quits)
    #[arg(long)]
    watch: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// The server's name
    name: String,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// A plan saved with `plan --out`: applied only if nothing changed since
    planfile: Option<PathBuf>,
    /// With `manager.backend: kubernetes`: the config to apply to the cluster
    /// (a saved plan names its own). The local backend applies the running
    /// service's config.
    #[command(flatten)]
    config: ConfigPaths,
    /// Do not ask for confirmation
    #[arg(long)]
    auto_approve: bool,
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The server's name
    name: String,
    /// Keep printing new lines
    #[arg(long, short = 'f')]
    follow: bool,
    /// How many past lines to print
    #[arg(long, short = 'n', default_value_t = 100)]
    lines: usize,
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn client(globals: &Globals) -> anyhow::Result<ApiClient> {
    ApiClient::connect(&globals.state_dir)
}

/// Sets up logging to stderr: `MCP_MANAGER_LOG_LEVEL` (or `RUST_LOG`), default info.
pub fn start(globals: &Globals, args: StartArgs) -> anyhow::Result<ExitCode> {
    if args.daemon {
        let log = daemon_log(globals, &args.config.resolve());
        return daemonize(globals, log);
    }
    let paths = args.config.resolve();
    let initial = service::initial_load(&paths);
    print_diagnostics(globals, &initial.diagnostics);
    if initial.has_errors() {
        eprintln!("warning: the configuration has errors; servers from the valid files start, the rest wait for a fix");
    }
    super::logging::init(&initial.desired.manager, args.log_format);
    let options = service::ServeOptions {
        reconcile: reconciler::Options {
            config_paths: paths,
            monitoring: !args.no_monitoring,
            // Read from the state dir once the service holds it.
            secret_key: crate::config::process_key(),
            tokens_dir: None,
            kubernetes: None,
        },
        state_dir: globals.state_dir.clone(),
        api_port: args.api_port,
        args: std::env::args().skip(1).collect(),
        progress: std::io::stdout().is_terminal(),
        bridge: false,
    };
    let runtime = service_runtime()?;
    runtime.block_on(service::serve(options, initial))?;
    Ok(ExitCode::SUCCESS)
}

/// The service's runtime: one worker per core, or `MCP_MANAGER_WORKER_THREADS`.
pub(super) fn service_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(worker_threads_env())
}

/// `MCP_MANAGER_WORKER_THREADS`, when it is a number of threads (anything
/// else is ignored).
pub(super) fn worker_threads_env() -> Option<usize> {
    worker_threads(std::env::var("MCP_MANAGER_WORKER_THREADS").ok().as_deref())
}

/// A number of threads, if `value` is one.
fn worker_threads(value: Option<&str>) -> Option<usize> {
    value.and_then(|v| v.trim().parse().ok()).filter(|n| *n > 0)
}

/// A runtime of `threads` workers (None: one per core).
pub(super) fn runtime_with(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads.filter(|n| *n > 0) {
        builder.worker_threads(n);
    }
    builder.enable_all().build().context("cannot start the async runtime")
}

/// `start --daemon`: runs this same command without `--daemon` in a new session,
/// logging to the state dir, and returns once its API answers.
/// Where a background service logs: `manager.log_file`, else the state dir.
fn daemon_log(globals: &Globals, config_paths: &[PathBuf]) -> PathBuf {
    service::initial_load(config_paths)
        .desired
        .manager
        .log_file
        .map(PathBuf::from)
        .map(|p| std::path::absolute(&p).unwrap_or(p))
        .unwrap_or_else(|| globals.state_dir.join("mcp-manager.log"))
}

fn daemonize(globals: &Globals, log_path: PathBuf) -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--daemon").collect();
    let pid = spawn_daemon(globals, &args, &log_path)?;
    let url = service::read_info(&globals.state_dir)
        .map(|i| i.url)
        .unwrap_or_default();
    println!("mcp-manager is running in the background (pid {pid}, API {url})");
    println!("logs: {}", log_path.display());
    Ok(ExitCode::SUCCESS)
}

fn spawn_daemon(globals: &Globals, args: &[String], log_path: &std::path::Path) -> anyhow::Result<u32> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    use std::os::unix::process::CommandExt;
    // Private: the log receives every server's stderr.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&globals.state_dir)?;
    crate::fsutil::make_private(&globals.state_dir, 0o700);
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log_path)
        .with_context(|| format!("cannot open the log file {}", log_path.display()))?;
    crate::fsutil::make_private(log_path, 0o600);
    let exe = std::env::current_exe().context("cannot find the mcp-manager binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .env("MCP_MANAGER_STATE_DIR", &globals.state_dir)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and the closure allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("cannot start the service")?;
    let pid = child.id();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if service::read_info(&globals.state_dir).is_some_and(|i| i.pid == pid) {
            std::fs::write(globals.state_dir.join("mcp-manager.pid"), format!("{pid}\n"))?;
            return Ok(pid);
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            anyhow::bail!("the service exited during start ({status}):\n{}", tail.join("\n"));
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the service did not come up within 60 s; see {}", log_path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for a pid to exit.
fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat
            .rfind(')')
            .is_some_and(|i| stat[i + 1..].trim_start().starts_with('Z'))
        {
            return true; // exited, waiting to be reaped by its parent
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub fn stop(globals: &Globals) -> anyhow::Result<ExitCode> {
    let pid = stop_service(globals)?;
    println!("mcp-manager (pid {pid}) stopped; every server it ran is down");
    Ok(ExitCode::SUCCESS)
}

fn stop_service(globals: &Globals) -> anyhow::Result<u32> {
    let rt = runtime()?;
    let client = client(globals)?;
    let pid = client.info.pid;
    let reply = rt.block_on(client.post("/shutdown", None))?;
    // The service kills what has not stopped by its limit, then exits.
    let limit = Duration::from_millis(reply["limit_ms"].as_u64().unwrap_or(30_000)) + Duration::from_secs(10);
    if !wait_gone(pid, limit) {
        anyhow::bail!(
            "the service (pid {pid}) did not stop within {}",
            crate::config::duration::format(limit)
        );
    }
    Ok(pid)
}

pub fn restart(globals: &Globals) -> anyhow::Result<ExitCode> {
    let info = client(globals)?.info;
    stop_service(globals)?;
    let args: Vec<String> = info.args.into_iter().filter(|a| a != "--daemon").collect();
    let pid = spawn_daemon(globals, &args, &daemon_log(globals, &info.config_paths))?;
    println!("mcp-manager restarted in the background (pid {pid})");
    Ok(ExitCode::SUCCESS)
}

fn snapshot(rt: &tokio::runtime::Runtime, client: &ApiClient) -> anyhow::Result<Snapshot> {
    let value = rt.block_on(client.get("/status"))?;
    snapshot_from(value)
}

/// The snapshot as the API serialized it (missing fields take their defaults,
/// so an older service still reads).
fn snapshot_from(value: Value) -> anyhow::Result<Snapshot> {
    serde_json::from_value(value).context("the service sent a status this version cannot read")
}

/// One server row as the API serialized it; unreadable rows are skipped.
fn server_from(v: &Value) -> Option<ServerStatus> {
    serde_json::from_value(v.clone()).ok()
}

fn short(duration_ms: u64) -> String {
    let secs = duration_ms / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{}h", secs / 86400, (secs % 86400) / 3600),
    }
}

/// Warnings under the table: insecure TLS, tools changed since pinned.
fn render_notices(s: &Snapshot) -> String {
    let mut out = String::new();
    for server in s.servers.iter().filter(|x| x.tls_insecure) {
        out.push_str(&format!(
            "! {}: tls.insecure_skip_verify is on: its certificate is not checked, anyone on the path can impersonate it\n",
            server.name
        ));
    }
    for server in s.servers.iter().filter(|x| !x.changed_tools.is_empty()) {
        out.push_str(&format!(
            "! {}: tool(s) {} changed since pinned (see `mcp-manager capabilities --server {}`; accept with `mcp-manager approve {}`)\n",
            server.name,
            server.changed_tools.join(", "),
            server.name,
            server.name
        ));
    }
    out
}

/// The top of `status`: the service line, config errors, a pending plan.
/// `url` is the service's HTTP address (from its `service.json`).
fn render_header(globals: &Globals, s: &Snapshot, url: &str) -> String {
    let now = crate::now_ms();
    let mut out = String::new();
    let revision = |r: &Option<String>| {
        r.as_deref()
            .map_or("-".to_string(), |r| r[..12.min(r.len())].to_string())
    };
    out.push_str(&format!(
        "mcp-manager: pid {}, up {}, mode {}, config applied {} (attempted {})\n",
        s.pid,
        short(now.saturating_sub(s.started_at_ms)),
        s.mode,
        revision(&s.applied_revision),
        revision(&s.attempted_revision)
    ));
    out.push_str(&format!(
        "gateway: {url}/mcp (bearer token in {}) or `mcp-manager connect` (socket {})\n\
         dashboard: `mcp-manager dashboard` prints its address with the token\n",
        crate::service::token_path(&globals.state_dir).display(),
        crate::service::socket_path(&globals.state_dir).display(),
    ));
    if let Some(damage) = &s.store_damage {
        out.push_str(&format!("\nSTATE STORE DAMAGED: {damage}\n"));
    }
    if let Some(error) = &s.store_error {
        out.push_str(&format!("\nSTATE STORE FAILING: {error}\n"));
    }
    let errors: Vec<&Diagnostic> = s.config_errors.iter().filter(|d| d.is_error()).collect();
    if !errors.is_empty() {
        out.push_str("\nconfig errors (the last good state keeps running; fix and save to apply):\n");
        for d in errors {
            let file = crate::plan::display_path(&d.file, globals.relative_to());
            out.push_str(&format!("  {file}:{}:{}: {}\n", d.line, d.column, d.message));
        }
    }
    if let Some(plan) = &s.pending_plan {
        out.push_str(&format!(
            "\npending plan ({} actions): {}\n",
            plan.actions.len(),
            s.pending_reason.as_deref().unwrap_or("waiting for `mcp-manager apply`")
        ));
        for action in &plan.actions {
            out.push_str(&format!(
                "  {} {} {}: {}\n",
                action.action.symbol(),
                action.action.verb(),
                action.server,
                action.reason
            ));
        }
    }
    out
}

fn render_status(globals: &Globals, s: &Snapshot, detailed: bool, url: &str) -> String {
    let now = crate::now_ms();
    let mut out = render_header(globals, s, url);
    out.push('\n');
    let mut table = Table::new(&[
        "NAME",
        "PHASE",
        "HEALTH",
        "SYNC",
        "RESTARTS",
        "UPTIME",
        "PID",
        "LAST ERROR",
    ]);
    for server in &s.servers {
        let phase = if server.suspended {
            "suspended".to_string()
        } else {
            server.phase.as_str().to_string()
        };
        let phase = match server.retry_at_ms {
            Some(at) => format!("{phase} (retry in {})", short(at.saturating_sub(now))),
            None => phase,
        };
        table.row(vec![
            server.name.clone(),
            phase,
            crate::status::health_word(server.health).into(),
            match server.sync {
                reconciler::Sync::Synced => "synced".into(),
                reconciler::Sync::OutOfSync => "out-of-sync".into(),
            },
            server.restart_count.to_string(),
            server
                .running_since_ms
                .map_or("-".into(), |t| short(now.saturating_sub(t))),
            if server.pids.is_empty() {
                "-".into()
            } else {
                server.pids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            },
            server.last_error.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push_str(&table.render());
    out.push_str(&render_notices(s));
    if detailed {
        for server in &s.servers {
            out.push_str(&format!("\n{}:\n", server.name));
            if let Some(location) = &server.location {
                out.push_str(&format!(
                    "  defined at   {}\n",
                    crate::plan::display_path(std::path::Path::new(location), globals.relative_to())
                ));
            }
            out.push_str(&format!(
                "  replicas     {} running of {}\n",
                server.running, server.replicas
            ));
            out.push_str(&format!("  tools        {}\n", server.tools));
            for tool in &server.changed_tools {
                out.push_str(&format!(
                    "  ! tool {tool} changed since it was pinned: review `mcp-manager capabilities --server {}`, then `mcp-manager approve {} {tool}`\n",
                    server.name, server.name
                ));
            }
            if let Some(m) = &server.metrics {
                let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("≤{v}ms"));
                out.push_str(&format!(
                    "  requests     {} ({} errors, {} refused, {} in flight, {} cached), p50 {}, p99 {}\n",
                    m.requests,
                    m.errors,
                    m.rejected,
                    m.in_flight,
                    m.cache_hits,
                    ms(m.p50_ms),
                    ms(m.p99_ms)
                ));
            }
            if let Some(exit) = &server.last_exit {
                out.push_str(&format!("  last exit    {exit}\n"));
            }
            let probes: Vec<String> = server
                .recent_health
                .iter()
                .rev()
                .take(5)
                .map(|p| match (p.ok, p.latency_ms, &p.error) {
                    (true, Some(ms), _) => format!("ok {ms}ms"),
                    (_, _, Some(e)) => format!("failed: {e}"),
                    _ => "failed".into(),
                })
                .collect();
            if !probes.is_empty() {
                out.push_str(&format!("  last checks  {}\n", probes.join(", ")));
            }
        }
    }
    out
}

/// Totals at the previous frame of the live view, for rates.
#[derive(Default)]
struct Previous {
    at_ms: u64,
    requests: std::collections::BTreeMap<String, u64>,
    cpu: std::collections::BTreeMap<String, f64>,
}

/// Health as a word, with the seed's mark on a colour terminal.
fn health_cell(h: crate::state::Health, marks: bool) -> String {
    use crate::state::Health;
    let word = crate::status::health_word(h);
    if !marks {
        return word.into();
    }
    let mark = match h {
        Health::Healthy => "\u{2705}",
        Health::Degraded => "\u{26A0}\u{FE0F}",
        Health::Unhealthy => "\u{274C}",
        Health::Critical => "\u{1F6A8}",
        Health::Unknown => "  ",
    };
    format!("{mark} {word}")
}

fn bytes(n: u64) -> String {
    match n {
        0..1_048_576 => format!("{}K", n / 1024),
        1_048_576..1_073_741_824 => format!("{:.1}M", n as f64 / 1_048_576.0),
        _ => format!("{:.2}G", n as f64 / 1_073_741_824.0),
    }
}

/// One frame of `status --watch`.
fn render_live(globals: &Globals, s: &Snapshot, prev: &mut Previous, marks: bool, url: &str) -> String {
    let now = crate::now_ms();
    let seconds = (now.saturating_sub(prev.at_ms) as f64 / 1000.0).max(0.001);
    let first = prev.at_ms == 0;
    let mut out = render_header(globals, s, url);
    out.push('\n');
    let mut table = Table::new(&[
        "NAME",
        "PHASE",
        "HEALTH",
        "UPTIME",
        "RESTARTS",
        "P50",
        "P99",
        "REQ/S",
        "CPU",
        "MEM",
        "LAST ERROR",
    ]);
    for server in &s.servers {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v}ms"));
        let (p50, p99, requests) = server
            .metrics
            .as_ref()
            .map_or((None, None, 0), |m| (m.p50_ms, m.p99_ms, m.requests));
        let rate = prev
            .requests
            .get(&server.name)
            .filter(|_| !first)
            .map_or("-".to_string(), |before| {
                format!("{:.1}", requests.saturating_sub(*before) as f64 / seconds)
            });
        prev.requests.insert(server.name.clone(), requests);
        let (cpu, mem) = match &server.usage {
            Some(u) => {
                let cpu = prev
                    .cpu
                    .get(&server.name)
                    .filter(|_| !first)
                    .map_or("-".to_string(), |before| {
                        format!("{:.1}%", (u.cpu_seconds - before).max(0.0) / seconds * 100.0)
                    });
                prev.cpu.insert(server.name.clone(), u.cpu_seconds);
                (cpu, bytes(u.rss_bytes))
            }
            None => ("-".into(), "-".into()),
        };
        let mut error = server.last_error.clone().unwrap_or_else(|| "-".into());
        if error.chars().count() > 48 {
            error = error.chars().take(45).collect::<String>() + "...";
        }
        table.row(vec![
            server.name.clone(),
            if server.suspended {
                "suspended".into()
            } else {
                server.phase.as_str().into()
            },
            health_cell(server.health, marks),
            server
                .running_since_ms
                .map_or("-".into(), |t| short(now.saturating_sub(t))),
            server.restart_count.to_string(),
            ms(p50),
            ms(p99),
            rate,
            cpu,
            mem,
            error,
        ]);
    }
    prev.at_ms = now;
    out.push_str(&table.render());
    out.push_str(&render_notices(s));
    out
}

/// A live view of `frame(snapshot)` from `/status` (with usage when asked).
fn watch_loop(
    rt: &tokio::runtime::Runtime,
    client: &ApiClient,
    usage: bool,
    mut frame: impl FnMut(Snapshot) -> String,
) -> anyhow::Result<ExitCode> {
    let path = if usage { "/status?usage=true" } else { "/status" };
    let frame = std::cell::RefCell::new(&mut frame);
    super::live::run(rt, client, || async {
        let snapshot = snapshot_from(client.get(path).await?)?;
        let text = (frame.borrow_mut())(snapshot);
        Ok(text)
    })
}

pub fn status(globals: &Globals, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let client = client(globals)?;
    if args.json {
        let value = rt.block_on(client.get("/status"))?;
        print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.watch {
        let marks = globals.color_stdout();
        let mut previous = Previous::default();
        return watch_loop(&rt, &client, !args.detailed, |s| {
            if args.detailed {
                render_status(globals, &s, true, &client.info.url)
            } else {
                render_live(globals, &s, &mut previous, marks, &client.info.url)
            }
        });
    }
    let s = snapshot(&rt, &client)?;
    print!("{}", render_status(globals, &s, args.detailed, &client.info.url));
    Ok(ExitCode::SUCCESS)
}

fn render_health(s: &Snapshot, only: Option<&str>, marks: bool) -> String {
    let mut table = Table::new(&["NAME", "HEALTH", "PHASE", "LAST CHECK", "LATENCY", "ERROR"]);
    let now = crate::now_ms();
    for server in s.servers.iter().filter(|x| only.is_none_or(|o| o == x.name)) {
        let last = server.recent_health.last();
        table.row(vec![
            server.name.clone(),
            health_cell(server.health, marks),
            server.phase.as_str().into(),
            last.map_or("-".into(), |p| format!("{} ago", short(now.saturating_sub(p.at_ms)))),
            last.and_then(|p| p.latency_ms)
                .map_or("-".into(), |ms| format!("{ms}ms")),
            last.and_then(|p| p.error.clone())
                .or_else(|| server.last_error.clone())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    table.render()
}

pub fn health(globals: &Globals, args: HealthArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let client = client(globals)?;
    let snap = snapshot(&rt, &client)?;
    if let Some(name) = &args.server
        && !snap.servers.iter().any(|s| &s.name == name)
    {
        anyhow::bail!("no server named `{name}`");
    }
    if args.json {
        let value = rt.block_on(client.get("/health"))?;
        print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.watch {
        let marks = globals.color_stdout();
        return watch_loop(&rt, &client, false, |s| {
            render_health(&s, args.server.as_deref(), marks)
        });
    }
    print!(
        "{}",
        render_health(&snap, args.server.as_deref(), globals.color_stdout())
    );
    let unhealthy = snap
        .servers
        .iter()
        .filter(|s| args.server.as_deref().is_none_or(|o| o == s.name))
        .any(|s| {
            matches!(
                s.health,
                crate::state::Health::Unhealthy | crate::state::Health::Critical
            )
        });
    Ok(if unhealthy {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn server_action(globals: &Globals, action: &str, args: ServerArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let client = client(globals)?;
    let value = rt.block_on(client.post(&format!("/servers/{}/{action}", args.name), None))?;
    println!("{}", value["message"].as_str().unwrap_or("done"));
    Ok(ExitCode::SUCCESS)
}

pub fn apply(globals: &Globals, args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let saved: Option<SavedPlan> = match &args.planfile {
        Some(file) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            Some(serde_json::from_str(&text).with_context(|| format!("{} is not a saved plan", file.display()))?)
        }
        None => None,
    };
    // A config that deploys to a cluster is applied there, by this command.
    let paths = saved
        .as_ref()
        .map_or_else(|| args.config.resolve(), |s| s.config_paths.clone());
    let key = crate::state::read_secret_key(&globals.state_dir).unwrap_or_else(crate::config::process_key);
    let outcome = crate::service::load_for_backend(&paths, key);
    if outcome.desired.manager.backend == crate::config::manager::Backend::Kubernetes {
        if super::output::report_load(globals, &outcome) {
            return Ok(ExitCode::from(1));
        }
        return super::kube::apply(
            globals,
            &outcome.desired,
            saved.as_ref().map(|s| &s.plan),
            args.auto_approve,
        );
    }
    let rt = runtime()?;
    let client = client(globals)
        .map_err(|e| e.context("`apply` needs the running service, which starts and supervises the servers"))?;
    let plan: Plan = match saved {
        Some(saved) => saved.plan,
        None => {
            let value = rt.block_on(client.get("/plan"))?;
            serde_json::from_value(value["plan"].clone()).context("the service sent an unreadable plan")?
        }
    };
    let options = RenderOptions {
        color: globals.color_stdout(),
        relative_to: globals.relative_to(),
    };
    print!("{}", plan::render_text(&plan, &options));
    if !plan.has_changes() && args.planfile.is_none() {
        return Ok(ExitCode::SUCCESS);
    }
    if !args.auto_approve && !super::output::confirm("Do you want to perform these actions?")? {
        println!("Apply cancelled.");
        return Ok(ExitCode::from(1));
    }
    let body = json!({"desired_hash": plan.desired_hash, "observed_hash": plan.observed_hash});
    match rt.block_on(client.post("/apply", Some(&body))) {
        Ok(value) => {
            let applied: Plan = serde_json::from_value(value["plan"].clone()).unwrap_or(plan);
            let s = applied.summary;
            println!(
                "\nApply started: {} to start, {} to restart, {} to update, {} to stop{}. Follow it with `mcp-manager status --watch`.",
                s.start,
                s.restart,
                s.update,
                s.stop,
                if s.scale > 0 {
                    format!(", {} to scale", s.scale)
                } else {
                    String::new()
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e)
            if e.downcast_ref::<ApiFailure>()
                .is_some_and(|f| f.status == hyper::StatusCode::CONFLICT) =>
        {
            eprintln!("error: {e}");
            Ok(ExitCode::from(3))
        }
        Err(e) => Err(e),
    }
}

pub fn logs(globals: &Globals, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let client = client(globals)?;
    let print_line = |v: &Value| {
        let replica = v["replica"].as_u64().unwrap_or(0);
        let line = v["line"].as_str().unwrap_or_default();
        // The manager's lines about the server (why it stopped, restarts) are
        // marked, so they read apart from what the server printed.
        let who = if v["source"] == "manager" { "mcp-manager: " } else { "" };
        let mut stdout = std::io::stdout().lock();
        let _ = if replica > 0 {
            writeln!(stdout, "[{replica}] {who}{line}")
        } else {
            writeln!(stdout, "{who}{line}")
        };
    };
    let path = format!("/servers/{}/logs?lines={}", args.name, args.lines);
    if args.follow {
        rt.block_on(client.stream(&format!("{path}&follow=true"), |_, data| {
            if let Ok(v) = serde_json::from_str::<Value>(data) {
                print_line(&v);
            }
            true
        }))?;
    } else {
        let value = rt.block_on(client.get(&path))?;
        for line in value["lines"].as_array().into_iter().flatten() {
            print_line(line);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn list_running(globals: &Globals, status: Option<String>, json_out: bool) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let client = client(globals)?;
    let path = match &status {
        Some(s) => format!("/servers?status={s}"),
        None => "/servers".into(),
    };
    let value = rt.block_on(client.get(&path))?;
    if json_out {
        print_json(&value)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["NAME", "PHASE", "HEALTH", "REPLICAS", "RESTARTS", "LOCATION"]);
    for server in value["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(server_from)
    {
        table.row(vec![
            server.name,
            server.phase.as_str().into(),
            crate::status::health_word(server.health).into(),
            format!("{}/{}", server.running, server.replicas),
            server.restart_count.to_string(),
            server
                .location
                .map(|l| crate::plan::display_path(std::path::Path::new(&l), globals.relative_to()))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_worker_thread_count_is_a_positive_number_or_nothing() {
        assert_eq!(super::worker_threads(Some("4")), Some(4));
        assert_eq!(super::worker_threads(Some(" 2 ")), Some(2));
        for ignored in [None, Some("0"), Some(""), Some("junk"), Some("-1")] {
            assert_eq!(super::worker_threads(ignored), None, "{ignored:?}");
        }
    }
}
