//! Prometheus text exposition (DESIGN 5.2 `GET /metrics`): service counters
//! kept with atomics, and a pure renderer over a status snapshot, the gateway's
//! per-server request metrics and process resource usage.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use crate::state::{Health, Phase};
use crate::status::{BUCKETS_US, MetricsSnapshot, ServerStatus, Snapshot};
pub use crate::status::{ServiceCounters, Usage};

/// Usage per server (the sum over its instances' process groups).
pub fn usage_by_server(servers: &[ServerStatus]) -> BTreeMap<String, Usage> {
    let groups: std::collections::BTreeSet<u32> = servers.iter().flat_map(|s| s.pids.iter().copied()).collect();
    let by_group = usage_by_group(&groups);
    servers
        .iter()
        .filter(|s| !s.pids.is_empty())
        .map(|s| {
            let mut total = Usage::default();
            for u in s.pids.iter().filter_map(|pid| by_group.get(pid)) {
                total.cpu_seconds += u.cpu_seconds;
                total.rss_bytes += u.rss_bytes;
            }
            (s.name.clone(), total)
        })
        .collect()
}

/// CPU time and RSS per process group, for the given groups, in one pass over
/// /proc (reading each process's stat once).
pub fn usage_by_group(pgids: &std::collections::BTreeSet<u32>) -> BTreeMap<u32, Usage> {
    let mut out = BTreeMap::new();
    if pgids.is_empty() {
        return out;
    }
    // SAFETY: sysconf has no memory-safety preconditions.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let (ticks, page) = (ticks.max(1) as f64, page.max(1) as u64);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        // Fields after the command name, numbered as in proc(5): state is 3,
        // pgrp 5, utime 14, stime 15, rss 24.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        let pgrp = field(5) as u32;
        if fields.first() == Some(&"Z") || !pgids.contains(&pgrp) {
            continue;
        }
        let usage: &mut Usage = out.entry(pgrp).or_default();
        usage.cpu_seconds += (field(14) + field(15)) as f64 / ticks;
        usage.rss_bytes += field(24) * page;
    }
    out
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes one metric family: HELP, TYPE, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn start<'o>(out: &'o mut String, name: &str, kind: &str, help: &str) -> Family<'o> {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        if value.is_infinite() {
            self.out.push_str(if value > 0.0 { " +Inf\n" } else { " -Inf\n" });
        } else {
            let _ = writeln!(self.out, " {value}");
        }
    }
}

const PHASES: [Phase; 8] = [
    Phase::Pending,
    Phase::Starting,
    Phase::Running,
    Phase::Stopping,
    Phase::Stopped,
    Phase::Backoff,
    Phase::Failed,
    Phase::Unknown,
];
const HEALTHS: [Health; 5] = [
    Health::Unknown,
    Health::Healthy,
    Health::Degraded,
    Health::Unhealthy,
    Health::Critical,
];

/// What the renderer needs, gathered at the edge.
pub struct Inputs<'a> {
    pub snapshot: &'a Snapshot,
    pub requests: &'a BTreeMap<String, MetricsSnapshot>,
    pub usage: &'a BTreeMap<String, Usage>,
    pub counters: &'a ServiceCounters,
    pub now_ms: u64,
}

/// The Prometheus text exposition (format 0.0.4).
pub fn render(inputs: &Inputs<'_>) -> String {
    let mut out = String::new();
    let servers: &[ServerStatus] = &inputs.snapshot.servers;

    let mut f = Family::start(
        &mut out,
        "mcp_manager_server_phase",
        "gauge",
        "1 for the phase the server is in, 0 for the others.",
    );
    for s in servers {
        for p in PHASES {
            f.sample(
                "mcp_manager_server_phase",
                &[("server", s.name.as_str()), ("phase", p.as_str())],
                f64::from(u8::from(s.phase == p)),
            );
        }
    }
    let mut f = Family::start(
        &mut out,
        "mcp_manager_server_health",
        "gauge",
        "1 for the server's health state, 0 for the others.",
    );
    for s in servers {
        for h in HEALTHS {
            f.sample(
                "mcp_manager_server_health",
                &[("server", s.name.as_str()), ("health", crate::status::health_word(h))],
                f64::from(u8::from(s.health == h)),
            );
        }
    }
    let mut f = Family::start(
        &mut out,
        "mcp_manager_server_restarts",
        "gauge",
        "Restarts since the server's restart counter was last reset.",
    );
    for s in servers {
        f.sample(
            "mcp_manager_server_restarts",
            &[("server", s.name.as_str())],
            f64::from(s.restart_count),
        );
    }
    let mut f = Family::start(
        &mut out,
        "mcp_manager_server_uptime_seconds",
        "gauge",
        "Seconds since the server started running (0 when not running).",
    );
    for s in servers {
        let up = s.running_since_ms.map_or(0, |t| inputs.now_ms.saturating_sub(t));
        f.sample(
            "mcp_manager_server_uptime_seconds",
            &[("server", s.name.as_str())],
            up as f64 / 1000.0,
        );
    }
    let mut f = Family::start(
        &mut out,
        "mcp_manager_server_health_check_duration_seconds",
        "gauge",
        "Latency of the server's last successful health check.",
    );
    for s in servers {
        if let Some(ms) = s.recent_health.iter().rev().find_map(|p| p.latency_ms) {
            f.sample(
                "mcp_manager_server_health_check_duration_seconds",
                &[("server", s.name.as_str())],
                ms as f64 / 1000.0,
            );
        }
    }

    let requests: Vec<(&String, &MetricsSnapshot)> = inputs.requests.iter().collect();
    let mut f = Family::start(
        &mut out,
        "mcp_manager_server_requests_total",
        "counter",
        "Requests the gateway routed to the server, by method.",
    );
    for (name, m) in &requests {
        for by in &m.by_method {
            f.sample(
                "mcp_manager_server_requests_total",
                &[("server", name.as_str()), ("method", by.method.as_str())],
                by.requests as f64,
            );
        }
    }
    let mut f = Family::start(
        &mut out,
        "mcp_manager_server_request_errors_total",
        "counter",
        "Routed requests that failed, by method.",
    );
    for (name, m) in &requests {
        for by in &m.by_method {
            f.sample(
                "mcp_manager_server_request_errors_total",
                &[("server", name.as_str()), ("method", by.method.as_str())],
                by.errors as f64,
            );
        }
    }
    let mut f = Family::start(
        &mut out,
        "mcp_manager_server_requests_rejected_total",
        "counter",
        "Requests refused before reaching the server (busy or rate limited).",
    );
    for (name, m) in &requests {
        f.sample(
            "mcp_manager_server_requests_rejected_total",
            &[("server", name.as_str())],
            m.rejected as f64,
        );
    }
    let mut f = Family::start(
        &mut out,
        "mcp_manager_server_requests_in_flight",
        "gauge",
        "Requests routed to the server and not yet answered.",
    );
    for (name, m) in &requests {
        f.sample(
            "mcp_manager_server_requests_in_flight",
            &[("server", name.as_str())],
            m.in_flight as f64,
        );
    }
    let mut f = Family::start(
        &mut out,
        "mcp_manager_server_requests_queued",
        "gauge",
        "Requests waiting for a free slot of the server (max_concurrent_requests).",
    );
    for (name, m) in &requests {
        f.sample(
            "mcp_manager_server_requests_queued",
            &[("server", name.as_str())],
            m.queued as f64,
        );
    }
    let mut f = Family::start(
        &mut out,
        "mcp_manager_server_request_duration_seconds",
        "histogram",
        "Latency of routed requests, measured at the gateway.",
    );
    for (name, m) in &requests {
        let mut cumulative = 0;
        for (i, count) in m.buckets.iter().enumerate() {
            cumulative += count;
            let le = BUCKETS_US
                .get(i)
                .map_or("+Inf".to_string(), |us| format!("{}", *us as f64 / 1e6));
            f.sample(
                "mcp_manager_server_request_duration_seconds_bucket",
                &[("server", name.as_str()), ("le", le.as_str())],
                cumulative as f64,
            );
        }
        f.sample(
            "mcp_manager_server_request_duration_seconds_sum",
            &[("server", name.as_str())],
            m.latency_sum_us as f64 / 1e6,
        );
        f.sample(
            "mcp_manager_server_request_duration_seconds_count",
            &[("server", name.as_str())],
            cumulative as f64,
        );
    }

    let mut f = Family::start(
        &mut out,
        "mcp_manager_server_cpu_seconds_total",
        "counter",
        "CPU time of the server's processes (all members of its process groups).",
    );
    for (name, u) in inputs.usage {
        f.sample(
            "mcp_manager_server_cpu_seconds_total",
            &[("server", name.as_str())],
            u.cpu_seconds,
        );
    }
    let mut f = Family::start(
        &mut out,
        "mcp_manager_server_resident_memory_bytes",
        "gauge",
        "Resident memory of the server's processes.",
    );
    for (name, u) in inputs.usage {
        f.sample(
            "mcp_manager_server_resident_memory_bytes",
            &[("server", name.as_str())],
            u.rss_bytes as f64,
        );
    }

    let c = inputs.counters;
    let mut f = Family::start(
        &mut out,
        "mcp_manager_reconcile_runs_total",
        "counter",
        "Times the reconciler planned against the current config.",
    );
    f.sample(
        "mcp_manager_reconcile_runs_total",
        &[],
        c.reconcile_runs.load(Relaxed) as f64,
    );
    let mut f = Family::start(
        &mut out,
        "mcp_manager_plan_actions_total",
        "counter",
        "Plan actions executed, by kind.",
    );
    for (kind, count) in c.actions() {
        f.sample("mcp_manager_plan_actions_total", &[("kind", kind.verb())], count as f64);
    }
    let mut f = Family::start(
        &mut out,
        "mcp_manager_config_errors",
        "gauge",
        "Errors in the current configuration (the last good state keeps running).",
    );
    let errors = inputs.snapshot.config_errors.iter().filter(|d| d.is_error()).count();
    f.sample("mcp_manager_config_errors", &[], errors as f64);
    let mut f = Family::start(
        &mut out,
        "mcp_manager_watcher_events_total",
        "counter",
        "Config reloads triggered by file changes.",
    );
    f.sample(
        "mcp_manager_watcher_events_total",
        &[],
        c.watcher_events.load(Relaxed) as f64,
    );
    let mut f = Family::start(
        &mut out,
        "mcp_manager_gateway_sessions_total",
        "counter",
        "MCP client sessions the gateway has accepted.",
    );
    f.sample(
        "mcp_manager_gateway_sessions_total",
        &[],
        c.gateway_sessions.load(Relaxed) as f64,
    );
    let mut f = Family::start(
        &mut out,
        "mcp_manager_gateway_direct_calls_total",
        "counter",
        "Tool calls the gateway answered straight from the HTTP request, its MCP session layer skipped (nothing but the answer could belong to them).",
    );
    f.sample(
        "mcp_manager_gateway_direct_calls_total",
        &[],
        c.gateway_direct_calls.load(Relaxed) as f64,
    );
    let mut f = Family::start(
        &mut out,
        "mcp_manager_gateway_lane_calls_total",
        "counter",
        "Of the direct tool calls, those written straight to a stdio server (past the MCP client), their results passed on as the server wrote them.",
    );
    f.sample(
        "mcp_manager_gateway_lane_calls_total",
        &[],
        c.gateway_lane_calls.load(Relaxed) as f64,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::ActionKind;

    #[test]
    fn renders_families_once_with_escaped_labels() {
        let mut snapshot = Snapshot::default();
        snapshot.servers.push(ServerStatus {
            name: "we\"ird".into(),
            phase: Phase::Running,
            health: Health::Healthy,
            ..ServerStatus::default()
        });
        let counters = ServiceCounters::default();
        counters.action(ActionKind::Start);
        let text = render(&Inputs {
            snapshot: &snapshot,
            requests: &BTreeMap::new(),
            usage: &BTreeMap::new(),
            counters: &counters,
            now_ms: 0,
        });
        assert!(
            text.contains("mcp_manager_server_phase{server=\"we\\\"ird\",phase=\"running\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("mcp_manager_plan_actions_total{kind=\"start\"} 1\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE mcp_manager_server_phase gauge").count(), 1);
    }
}
