//! Health semantics (DESIGN 4.4), as a pure state machine: probe results in,
//! Healthy / Degraded / Unhealthy out. The supervisor runs the probes.

use std::collections::VecDeque;
use std::time::Duration;

use crate::state::{Health, ProbeResult};

/// How many recent probe results are kept.
pub const HISTORY: usize = 20;

/// Thresholds from the server spec.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub failure_threshold: u32,
    pub recovery_threshold: u32,
    pub degraded_latency: Duration,
}

#[derive(Debug, Clone)]
pub struct HealthTracker {
    state: Health,
    failures: u32,
    successes: u32,
    history: VecDeque<ProbeResult>,
}

impl Default for HealthTracker {
    fn default() -> Self {
        HealthTracker {
            state: Health::Unknown,
            failures: 0,
            successes: 0,
            history: VecDeque::with_capacity(HISTORY),
        }
    }
}

impl HealthTracker {
    /// A fresh tracker for a server that just completed `initialize`: that round
    /// trip is proof of life, so it starts Healthy.
    pub fn started() -> Self {
        HealthTracker {
            state: Health::Healthy,
            ..Default::default()
        }
    }

    pub fn state(&self) -> Health {
        self.state
    }

    pub fn history(&self) -> impl Iterator<Item = &ProbeResult> {
        self.history.iter()
    }

    /// Records a probe and returns the new health.
    ///
    /// `failure_threshold` consecutive failures make it Unhealthy; once Unhealthy,
    /// `recovery_threshold` consecutive successes make it Healthy again; a success
    /// slower than `degraded_latency` is Degraded.
    pub fn record(&mut self, result: ProbeResult, t: &Thresholds) -> Health {
        if result.ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            let slow = result
                .latency_ms
                .is_some_and(|ms| u128::from(ms) > t.degraded_latency.as_millis());
            let recovering = self.state == Health::Unhealthy && self.successes < t.recovery_threshold;
            if !recovering {
                self.state = if slow { Health::Degraded } else { Health::Healthy };
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= t.failure_threshold {
                self.state = Health::Unhealthy;
            }
        }
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(result);
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        failure_threshold: 3,
        recovery_threshold: 2,
        degraded_latency: Duration::from_millis(100),
    };

    fn ok(ms: u64) -> ProbeResult {
        ProbeResult {
            at_ms: 0,
            ok: true,
            latency_ms: Some(ms),
            error: None,
        }
    }

    fn fail() -> ProbeResult {
        ProbeResult {
            at_ms: 0,
            ok: false,
            latency_ms: None,
            error: Some("timeout".into()),
        }
    }

    #[test]
    fn failures_below_the_threshold_keep_it_healthy() {
        let mut h = HealthTracker::started();
        assert_eq!(h.record(fail(), &T), Health::Healthy);
        assert_eq!(h.record(fail(), &T), Health::Healthy);
        assert_eq!(h.record(ok(5), &T), Health::Healthy);
        assert_eq!(h.record(fail(), &T), Health::Healthy, "the counter reset");
    }

    #[test]
    fn consecutive_failures_make_it_unhealthy_and_successes_recover_it() {
        let mut h = HealthTracker::started();
        for _ in 0..3 {
            h.record(fail(), &T);
        }
        assert_eq!(h.state(), Health::Unhealthy);
        assert_eq!(h.record(ok(5), &T), Health::Unhealthy, "one success is not enough");
        assert_eq!(h.record(ok(5), &T), Health::Healthy);
    }

    #[test]
    fn slow_answers_are_degraded() {
        let mut h = HealthTracker::started();
        assert_eq!(h.record(ok(500), &T), Health::Degraded);
        assert_eq!(h.record(ok(5), &T), Health::Healthy);
    }

    #[test]
    fn history_is_bounded() {
        let mut h = HealthTracker::started();
        for _ in 0..100 {
            h.record(ok(1), &T);
        }
        assert_eq!(h.history().count(), HISTORY);
    }
}
