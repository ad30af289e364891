//! What the service reports about itself: the snapshot the API serves (and
//! the CLI reads back with serde), server status rows, re-scan reports,
//! request metrics and counters. Plain data with no behaviour beyond small
//! helpers, kept below the reconciler, the gateway, the API and `metrics` so
//! that they all depend on it and not on each other.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use serde::de::DeserializeOwned;

use crate::config::{DesiredState, Diagnostic};
use crate::plan::{ActionKind, Plan};
use crate::state::{Health, Phase, ProbeResult};

/// What a re-scan changed in the desired state.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct RescanReport {
    /// Config files read.
    pub files: usize,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Servers whose definition changed.
    pub changed: Vec<String>,
    /// Errors in the config (the last good state of what they touch keeps running).
    pub errors: usize,
    /// Why the resulting plan waits for `apply`, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
}

impl RescanReport {
    /// The difference between two desired states.
    pub fn between(before: &DesiredState, after: &DesiredState) -> Self {
        let mut report = RescanReport::default();
        for (name, server) in &after.servers {
            match before.servers.get(name) {
                None => report.added.push(name.clone()),
                Some(old) if old.spec_hash != server.spec_hash => report.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        report.removed = before
            .servers
            .keys()
            .filter(|n| !after.servers.contains_key(*n))
            .cloned()
            .collect();
        report
    }
}

/// Sync status in the GitOps vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Sync {
    #[default]
    Synced,
    OutOfSync,
}

/// One server as `status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ServerStatus {
    pub name: String,
    pub phase: Phase,
    pub health: Health,
    pub sync: Sync,
    pub enabled: bool,
    pub suspended: bool,
    pub replicas: u32,
    pub running: u32,
    pub restart_count: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pids: Vec<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running_since_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub tools: usize,
    #[serde(deserialize_with = "lenient_list")]
    pub recent_health: Vec<ProbeResult>,
    /// Tools whose definitions changed since they were pinned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_tools: Vec<String>,
    /// `tls.insecure_skip_verify` is on: the server's certificate is not checked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_insecure: bool,
    /// Gateway request metrics; filled in by the API (the reconciler does not
    /// route requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "lenient")]
    pub metrics: Option<MetricsSnapshot>,
    /// CPU time and memory of its processes; filled in by the API on request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "lenient")]
    pub usage: Option<Usage>,
    /// With `backend: kubernetes`: its Deployment as the cluster reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "lenient")]
    pub cluster: Option<ClusterServer>,
}

/// A server's Deployment, as the cluster reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterServer {
    pub phase: Phase,
    /// Pods ready, of `wanted`.
    pub ready: u32,
    pub wanted: u32,
    /// Why its pods do not run (image pull, crash loop with its last lines,
    /// failed rollout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the Kubernetes controller of `start` reports to the reconciler.
#[derive(Debug, Clone, Default)]
pub struct ClusterReport {
    pub servers: std::collections::BTreeMap<String, ClusterServer>,
    /// The plan against the cluster as of the last look.
    pub plan: Option<crate::plan::Plan>,
    /// Why that plan waits (manual mode, the mass-removal guard).
    pub held: Option<String>,
    /// Servers held back (an object of their name is not ours).
    pub blocked: std::collections::BTreeSet<String>,
}

/// Everything readers see, replaced as a whole after every change.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Snapshot {
    pub pid: u32,
    pub started_at_ms: u64,
    pub mode: String,
    #[serde(deserialize_with = "lenient_list")]
    pub servers: Vec<ServerStatus>,
    /// Problems in the config files (the last good state keeps running).
    #[serde(deserialize_with = "lenient_list")]
    pub config_errors: Vec<Diagnostic>,
    /// A plan waiting for `apply` (manual mode, or held by the mass-removal guard).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(deserialize_with = "lenient")]
    pub pending_plan: Option<Plan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempted_revision: Option<String>,
    /// The folders and files the config is read from (`--config` and
    /// `discovery.config_directories`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watched: Vec<PathBuf>,
    /// The manager settings in effect.
    #[serde(skip)]
    pub manager: Arc<crate::config::ManagerSettings>,
    /// How long a shutdown may take (the slowest server's stop, and a margin).
    pub shutdown_limit_ms: u64,
    /// The state store was found damaged when the service started: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_damage: Option<String>,
    /// Writes to the state store fail now (a full disk): why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
}

pub fn health_word(h: Health) -> &'static str {
    match h {
        Health::Healthy => "healthy",
        Health::Degraded => "degraded",
        Health::Unhealthy => "unhealthy",
        Health::Critical => "critical",
        Health::Unknown => "unknown",
    }
}

const ACTION_KINDS: [ActionKind; 6] = [
    ActionKind::Start,
    ActionKind::Stop,
    ActionKind::Restart,
    ActionKind::Replace,
    ActionKind::Update,
    ActionKind::Scale,
];

fn action_index(kind: ActionKind) -> usize {
    ACTION_KINDS.iter().position(|k| *k == kind).unwrap_or(0)
}

/// Service-wide counters, bumped where things happen (the reconciler, the
/// watcher, gateway sessions) and rendered by `metrics`.
#[derive(Default)]
pub struct ServiceCounters {
    pub reconcile_runs: AtomicU64,
    actions: [AtomicU64; 6],
    pub watcher_events: AtomicU64,
    pub gateway_sessions: AtomicU64,
    /// Tool calls the gateway answered without its MCP session layer
    /// (`api::direct`).
    pub gateway_direct_calls: AtomicU64,
    /// Of those, the calls sent to a stdio server past rmcp's client, their
    /// results copied as the server wrote them (`gateway::server::lane`).
    pub gateway_lane_calls: AtomicU64,
}

impl ServiceCounters {
    pub fn action(&self, kind: ActionKind) {
        self.actions[action_index(kind)].fetch_add(1, Relaxed);
    }

    /// Plan actions executed so far, by kind.
    pub fn actions(&self) -> [(ActionKind, u64); 6] {
        std::array::from_fn(|i| (ACTION_KINDS[i], self.actions[i].load(Relaxed)))
    }
}

/// CPU time and resident memory of a server's processes (its process groups).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

/// Upper bounds of the latency histogram buckets, in microseconds; the last
/// bucket is everything above.
pub const BUCKETS_US: [u64; 15] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000,
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MethodSnapshot {
    pub method: String,
    pub requests: u64,
    pub errors: u64,
}

/// A point-in-time copy of a server's metrics, for the API and `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricsSnapshot {
    pub requests: u64,
    pub errors: u64,
    pub rejected: u64,
    pub in_flight: u64,
    /// Waiting for a slot (`max_concurrent_requests` reached on every replica).
    #[serde(default)]
    pub queued: u64,
    pub cache_hits: u64,
    /// Estimated from the histogram: the upper bound of the quantile's bucket.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub latency_sum_us: u64,
    pub by_method: Vec<MethodSnapshot>,
    /// Counts per bucket of [`BUCKETS_US`], plus one for everything above.
    pub buckets: Vec<u64>,
    /// The last minutes, one point per sampling interval, oldest first (the
    /// dashboard's sparklines).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryPoint>,
}

/// What a server's gateway traffic was in one sampling interval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryPoint {
    /// The interval's end (Unix ms).
    pub at_ms: u64,
    pub requests_per_s: f64,
    pub errors_per_s: f64,
    /// The median latency of the interval's requests (bucket bound); none without requests.
    pub p50_ms: Option<f64>,
}

impl HistoryPoint {
    /// The interval between two snapshots of the same counters.
    pub fn between(before: &MetricsSnapshot, before_ms: u64, now: &MetricsSnapshot, now_ms: u64) -> HistoryPoint {
        let seconds = (now_ms.saturating_sub(before_ms) as f64 / 1000.0).max(0.001);
        let delta = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
        let buckets: Vec<u64> = now
            .buckets
            .iter()
            .zip(before.buckets.iter().chain(std::iter::repeat(&0)))
            .map(|(n, b)| n.saturating_sub(*b))
            .collect();
        HistoryPoint {
            at_ms: now_ms,
            requests_per_s: delta(before.requests, now.requests),
            errors_per_s: delta(before.errors, now.errors),
            p50_ms: quantile_ms(&buckets, 0.5),
        }
    }
}

/// The upper bound (ms) of the bucket holding quantile `q`; `None` without data.
pub fn quantile_ms(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, &count) in buckets.iter().enumerate() {
        seen += count;
        if seen >= rank {
            let bound = BUCKETS_US.get(i).copied().unwrap_or(u64::MAX);
            return Some(if bound == u64::MAX {
                f64::INFINITY
            } else {
                bound as f64 / 1000.0
            });
        }
    }
    None
}

/// Reads a value a newer (or older) service may shape differently: what does
/// not decode is left out rather than failing the whole status.
fn lenient<'de, D: serde::Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(value).ok())
}

/// A list read item by item: items that do not decode are skipped.
fn lenient_list<'de, D: serde::Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(match value {
        serde_json::Value::Array(items) => items
            .into_iter()
            .filter_map(|item| serde_json::from_value(item).ok())
            .collect(),
        _ => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CLI reads what the service sends with serde: a field or variant it
    /// does not know (a newer service) costs that part, not the whole status.
    #[test]
    fn a_snapshot_from_another_version_still_reads() {
        let value = serde_json::json!({
            "pid": 7,
            "mode": "auto",
            "servers": [
                {"name": "a", "phase": "running", "health": "healthy", "sync": "synced", "new_field": 1},
                {"name": "b", "phase": "hibernating", "health": "sleepy", "sync": "synced"},
                {"name": 5},
            ],
            "pending_plan": {"shape": "unknown"},
            "config_errors": [{"severity": "error", "file": "x", "line": 1, "column": 2, "message": "m"}, {}],
            "future": true,
        });
        let s: Snapshot = serde_json::from_value(value).unwrap();
        assert_eq!(s.pid, 7);
        let names: Vec<&str> = s.servers.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(s.servers[1].phase, Phase::Unknown);
        assert_eq!(s.servers[1].health, Health::Unknown);
        assert!(s.pending_plan.is_none());
        assert_eq!(s.config_errors.len(), 1);
    }
}
