//! Per-server request metrics of the gateway, recorded on the hot path with
//! relaxed atomics only: no lock is taken per request.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

pub use crate::status::{BUCKETS_US, HistoryPoint, MethodSnapshot, MetricsSnapshot, quantile_ms};

/// How often the service samples each server's history.
pub const HISTORY_INTERVAL_MS: u64 = 5_000;
/// Points of history kept per server: 5 minutes.
pub const HISTORY_POINTS: usize = 60;

/// The methods the gateway routes to a server, each counted on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    CallTool,
    ReadResource,
    GetPrompt,
    Complete,
    /// `resources/subscribe` and `resources/unsubscribe`.
    Subscribe,
    /// `tasks/get`, `tasks/update` and `tasks/cancel` (the tasks extension).
    Task,
}

impl Method {
    pub const ALL: [Method; 6] = [
        Method::CallTool,
        Method::ReadResource,
        Method::GetPrompt,
        Method::Complete,
        Method::Subscribe,
        Method::Task,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::CallTool => "tools/call",
            Method::ReadResource => "resources/read",
            Method::GetPrompt => "prompts/get",
            Method::Complete => "completion/complete",
            Method::Subscribe => "resources/subscribe",
            Method::Task => "tasks",
        }
    }
}

#[derive(Default)]
struct MethodCounters {
    requests: AtomicU64,
    errors: AtomicU64,
}

/// Counters for one server (all its replicas), kept for the service's lifetime.
#[derive(Default)]
pub struct ServerMetrics {
    methods: [MethodCounters; Method::ALL.len()],
    /// Refused before reaching the server: down, busy or rate limited.
    rejected: AtomicU64,
    in_flight: AtomicI64,
    /// Requests waiting for a free slot (`max_concurrent_requests` reached).
    queued: AtomicI64,
    /// Woken (once per finished request) for the first request in the queue.
    freed: tokio::sync::Notify,
    cache_hits: AtomicU64,
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    latency_sum_us: AtomicU64,
    /// Sampled off the hot path ([`ServerMetrics::sample`]), read by the API.
    history: std::sync::Mutex<History>,
}

#[derive(Default)]
struct History {
    /// The counters at the last sample, and when.
    last: Option<(u64, MetricsSnapshot)>,
    points: std::collections::VecDeque<HistoryPoint>,
}

/// Counts a request as in flight until dropped; then records its latency.
pub struct InFlight<'a> {
    metrics: &'a ServerMetrics,
    method: Method,
    started: std::time::Instant,
    failed: bool,
}

impl InFlight<'_> {
    pub fn fail(&mut self) {
        self.failed = true;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let m = self.metrics;
        m.in_flight.fetch_sub(1, Relaxed);
        let counters = &m.methods[self.method as usize];
        counters.requests.fetch_add(1, Relaxed);
        if self.failed {
            counters.errors.fetch_add(1, Relaxed);
        }
        m.observe(self.started.elapsed());
    }
}

/// A place in a server's queue, given back when dropped.
pub struct Queued<'a>(&'a ServerMetrics);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Relaxed);
    }
}

impl ServerMetrics {
    /// Takes a place in the queue, unless `limit` requests already wait.
    pub fn enqueue(&self, limit: u32) -> Option<Queued<'_>> {
        let before = self.queued.fetch_add(1, Relaxed);
        if before >= i64::from(limit) {
            self.queued.fetch_sub(1, Relaxed);
            return None;
        }
        Some(Queued(self))
    }

    /// Resolves when a request of this server ends (a slot may be free).
    pub fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.freed.notified()
    }

    /// A request ended: the next one in the queue may go. (Unconditional: a
    /// request about to queue may not be counted yet; a stored wake costs
    /// at most one more look.)
    pub fn slot_freed(&self) {
        self.freed.notify_one();
    }

    pub fn start(&self, method: Method) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight {
            metrics: self,
            method,
            started: std::time::Instant::now(),
            failed: false,
        }
    }

    pub fn reject(&self) {
        self.rejected.fetch_add(1, Relaxed);
    }

    pub fn cache_hit(&self) {
        self.cache_hits.fetch_add(1, Relaxed);
    }

    fn observe(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(BUCKETS_US.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(us, Relaxed);
    }

    /// Adds a point of history: the traffic since the last sample.
    pub fn sample(&self, now_ms: u64) {
        let now = self.counters();
        // A poisoned lock only means a sampler panicked: the history is still whole.
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        // The first sample of a server counts what it did since it appeared
        // (within the last interval, give or take).
        let point = match &history.last {
            Some((at, before)) => HistoryPoint::between(before, *at, &now, now_ms),
            None => HistoryPoint::between(&self.zero(), now_ms.saturating_sub(HISTORY_INTERVAL_MS), &now, now_ms),
        };
        if history.points.len() == HISTORY_POINTS {
            history.points.pop_front();
        }
        history.points.push_back(point);
        history.last = Some((now_ms, now));
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let mut snapshot = self.counters();
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        snapshot.history = history.points.iter().cloned().collect();
        snapshot
    }

    /// Counters that saw nothing (the baseline of a first sample).
    fn zero(&self) -> MetricsSnapshot {
        ServerMetrics::default().counters()
    }

    /// The counters now, without history.
    fn counters(&self) -> MetricsSnapshot {
        let buckets: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let by_method = Method::ALL
            .iter()
            .map(|&m| MethodSnapshot {
                method: m.as_str().to_string(),
                requests: self.methods[m as usize].requests.load(Relaxed),
                errors: self.methods[m as usize].errors.load(Relaxed),
            })
            .collect::<Vec<_>>();
        MetricsSnapshot {
            requests: by_method.iter().map(|m| m.requests).sum(),
            errors: by_method.iter().map(|m| m.errors).sum(),
            rejected: self.rejected.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed).max(0) as u64,
            queued: self.queued.load(Relaxed).max(0) as u64,
            cache_hits: self.cache_hits.load(Relaxed),
            p50_ms: quantile_ms(&buckets, 0.5),
            p99_ms: quantile_ms(&buckets, 0.99),
            latency_sum_us: self.latency_sum_us.load(Relaxed),
            by_method,
            buckets,
            history: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_errors_and_latency_are_counted() {
        let m = ServerMetrics::default();
        {
            let _a = m.start(Method::CallTool);
            let mut b = m.start(Method::ReadResource);
            b.fail();
            assert_eq!(m.snapshot().in_flight, 2);
        }
        m.reject();
        let s = m.snapshot();
        assert_eq!((s.requests, s.errors, s.rejected, s.in_flight), (2, 1, 1, 0));
        assert_eq!(s.by_method[0].requests, 1);
        assert_eq!(s.by_method[1].errors, 1);
        assert_eq!(s.buckets.iter().sum::<u64>(), 2);
        assert!(s.p50_ms.is_some());
    }

    #[test]
    fn the_queue_is_bounded_and_places_are_given_back() {
        let m = ServerMetrics::default();
        let first = m.enqueue(2).expect("room");
        let second = m.enqueue(2).expect("room");
        assert!(m.enqueue(2).is_none(), "full");
        assert_eq!(m.snapshot().queued, 2);
        drop(first);
        let third = m.enqueue(2).expect("a place was given back");
        drop((second, third));
        assert_eq!(m.snapshot().queued, 0);
    }

    #[test]
    fn quantiles_come_from_bucket_bounds() {
        let mut buckets = vec![0; BUCKETS_US.len() + 1];
        buckets[2] = 98; // <= 1 ms
        buckets[5] = 2; // <= 10 ms
        assert_eq!(quantile_ms(&buckets, 0.5), Some(1.0));
        assert_eq!(quantile_ms(&buckets, 0.99), Some(10.0));
        assert_eq!(quantile_ms(&[0; 3], 0.5), None);
    }

    #[test]
    fn history_points_are_rates_of_each_interval() {
        let metrics = ServerMetrics::default();
        // What a server did before its first sample is in the first point.
        let _early = metrics.start(Method::CallTool);
        drop(_early);
        metrics.sample(5_000);
        for _ in 0..10 {
            let _call = metrics.start(Method::CallTool);
        }
        metrics.sample(10_000);
        metrics.sample(15_000);
        let history = metrics.snapshot().history;
        assert_eq!(history.len(), 3);
        assert!((history[0].requests_per_s - 0.2).abs() < 1e-9, "{history:?}");
        assert_eq!(history[1].at_ms, 10_000);
        assert!((history[1].requests_per_s - 2.0).abs() < 1e-9, "{history:?}");
        assert!(history[1].p50_ms.is_some());
        assert_eq!(history[2].requests_per_s, 0.0);
        assert_eq!(history[2].p50_ms, None);
        for t in 0..100 {
            metrics.sample(20_000 + t * 5_000);
        }
        assert_eq!(metrics.snapshot().history.len(), HISTORY_POINTS);
    }
}
