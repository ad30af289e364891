//! The snapshot readers see: built from desired and observed state after
//! every change and published on a watch channel.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::config::manager::ReconcileMode;
use crate::plan;
use crate::state::{Health, Phase};
use crate::status::{ServerStatus, Snapshot, Sync};

use super::Reconciler;

impl Reconciler {
    pub(super) fn publish(&mut self) {
        // Which servers are out of sync only changes with the desired state, what
        // the planner reads of observed state, or operations in flight; health
        // events (most of them) change none of these.
        let busy: Vec<&String> = self
            .runtimes
            .iter()
            .filter(|(_, rt)| rt.lifecycle.start_pending())
            .map(|(n, _)| n)
            .collect();
        let key =
            crate::config::view::stable_hash(&(plan::desired_hash(&self.desired), self.observed.plan_hash(), busy));
        if self.sync_cache.as_ref().is_none_or(|(k, _)| *k != key) {
            let plan = self.plan_now();
            let set = plan.actions.iter().map(|a| a.server.clone()).collect();
            self.sync_cache = Some((key, set));
        }
        let out_of_sync: BTreeSet<&str> = self
            .sync_cache
            .as_ref()
            .map(|(_, s)| s.iter().map(String::as_str).collect())
            .unwrap_or_default();
        let names: BTreeSet<&String> = self
            .desired
            .servers
            .keys()
            .chain(self.observed.servers.keys())
            .collect();
        let servers = names
            .into_iter()
            .map(|name| {
                let d = self.desired.servers.get(name);
                let o = self.observed.servers.get(name);
                let rt = self.runtimes.get(name);
                let cluster = self.cluster.as_ref().and_then(|c| c.servers.get(name.as_str()));
                ServerStatus {
                    name: name.clone(),
                    phase: o.map_or(Phase::Stopped, |o| o.phase),
                    health: o.map_or(Health::Unknown, |o| o.health),
                    sync: if out_of_sync.contains(name.as_str()) {
                        Sync::OutOfSync
                    } else {
                        Sync::Synced
                    },
                    enabled: d.is_some_and(|d| d.spec.enabled),
                    suspended: o.is_some_and(|o| o.suspended),
                    replicas: d.map_or(0, |d| d.spec.replicas),
                    running: rt.map_or(0, |rt| {
                        rt.phases.values().filter(|p| **p == Phase::Running).count() as u32
                    }),
                    restart_count: o.map_or(0, |o| o.restart_count),
                    pids: o
                        .map(|o| o.instances.iter().map(|i| i.pid).collect())
                        .unwrap_or_default(),
                    running_since_ms: o.and_then(|o| o.running_since_ms),
                    retry_at_ms: rt
                        .and_then(|rt| rt.retry_at_ms)
                        .filter(|_| o.is_some_and(|o| o.phase == Phase::Backoff)),
                    // The cluster knows why better than a refused connection.
                    last_error: cluster
                        .and_then(|c| c.error.clone())
                        .or_else(|| o.and_then(|o| o.last_error.clone())),
                    last_exit: o.and_then(|o| o.last_exit.clone()),
                    connection_type: d.map(|d| d.spec.connection_type.as_str().to_string()),
                    location: d.map(|d| d.provenance.location()),
                    tools: o.and_then(|o| o.capabilities.as_ref()).map_or(0, |c| c.tools.len()),
                    recent_health: o
                        .map(|o| o.recent_health.iter().rev().take(5).rev().cloned().collect())
                        .unwrap_or_default(),
                    changed_tools: self.changed_tools.get(name).cloned().unwrap_or_default(),
                    usage: None,
                    cluster: cluster.cloned(),
                    tls_insecure: d.is_some_and(|d| d.spec.tls.as_ref().is_some_and(|t| t.insecure_skip_verify)),
                    metrics: None,
                }
            })
            .collect();
        let snapshot = Snapshot {
            pid: std::process::id(),
            started_at_ms: self.started_at_ms,
            // With `backend: kubernetes` the mode is the cluster's (the
            // connections to its Services are made at once).
            mode: match self.last_good.manager.reconcile.mode {
                ReconcileMode::Auto => "auto",
                ReconcileMode::Manual => "manual",
            }
            .to_string(),
            servers,
            // Serialized, a diagnostic's snippet has its value cut out.
            config_errors: self.config_errors.clone(),
            pending_plan: match &self.cluster {
                Some(c) => c.held.as_ref().and(c.plan.clone()),
                None => self.pending.as_ref().map(|(p, _)| p.clone()),
            },
            pending_reason: match &self.cluster {
                Some(c) => c.held.clone(),
                None => self.pending.as_ref().map(|(_, r)| r.clone()),
            },
            applied_revision: self.applied_revision.clone(),
            attempted_revision: self.attempted_revision.clone(),
            watched: self.watched.clone(),
            manager: self.manager.clone(),
            shutdown_limit_ms: u64::try_from(self.shutdown_limit().as_millis()).unwrap_or(u64::MAX),
            store_damage: self.store_damage.clone(),
            store_error: self.store_error.borrow().clone(),
        };
        self.snapshot.send_replace(Arc::new(snapshot));
    }
}

pub(super) fn aggregate_phase(phases: impl Iterator<Item = Phase>) -> Phase {
    let phases: Vec<Phase> = phases.collect();
    let any = |p: Phase| phases.contains(&p);
    if phases.is_empty() {
        Phase::Stopped
    } else if any(Phase::Running) {
        Phase::Running
    } else if any(Phase::Starting) {
        Phase::Starting
    } else if any(Phase::Pending) {
        Phase::Pending
    } else if any(Phase::Backoff) {
        Phase::Backoff
    } else if phases.iter().all(|p| *p == Phase::Failed) {
        Phase::Failed
    } else if any(Phase::Stopping) {
        Phase::Stopping
    } else {
        Phase::Stopped
    }
}

/// The worst health among instances.
pub(super) fn aggregate_health(healths: impl Iterator<Item = Health>) -> Health {
    let rank = |h: Health| match h {
        Health::Critical => 4,
        Health::Unhealthy => 3,
        Health::Degraded => 2,
        Health::Healthy => 1,
        Health::Unknown => 0,
    };
    healths.max_by_key(|h| rank(*h)).unwrap_or(Health::Unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_aggregate_to_the_most_alive() {
        use Phase::*;
        assert_eq!(aggregate_phase([Running, Backoff].into_iter()), Running);
        assert_eq!(aggregate_phase([Failed, Backoff].into_iter()), Backoff);
        assert_eq!(aggregate_phase([Failed, Failed].into_iter()), Failed);
        assert_eq!(aggregate_phase([].into_iter()), Stopped);
        assert_eq!(
            aggregate_health([Health::Healthy, Health::Degraded].into_iter()),
            Health::Degraded
        );
    }
}
