//! `start` with `backend: kubernetes`: keeps the cluster matching the
//! config. It looks again whenever the reconciler takes a config, the
//! cluster changes (a watch on our Deployments and pods), or a minute
//! passes; plans ([`super::plan`]); applies the plan unless manual mode or
//! the mass-removal guard holds it (then `apply` releases it); and reports
//! each server's Deployment to the reconciler (phase, ready pods, why its
//! pods do not run), which shows it in `status`, the API and the dashboard.
//! Changes are events; the reasons pods do not run are also manager lines
//! in `logs NAME`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::Rendered;
use super::cluster::Cluster;
use super::plan::{Live, observed};
use crate::config::DesiredState;
use crate::plan::Plan;
use crate::reconciler::{ClusterApply, CommandError, Handle, Request};
use crate::state::{EventKind, EventRecord};
use crate::status::{ClusterReport, ClusterServer};

/// A look at the cluster at least this often, watch or not.
const RESYNC: Duration = Duration::from_secs(60);
/// Changes closer together than this are one look.
const SETTLE: Duration = Duration::from_millis(300);

pub struct Controller {
    cluster: Cluster,
    desired: watch::Receiver<Option<Arc<DesiredState>>>,
    applies: mpsc::Receiver<ClusterApply>,
    handle: Handle,
    /// What was last reported per server, to report changes once.
    reported: BTreeMap<String, ClusterServer>,
    /// The last error reaching the cluster, to say it once.
    last_failure: Option<String>,
    /// The plan held for `apply`, and why.
    held: Option<(Plan, String)>,
}

impl Controller {
    pub fn new(
        cluster: Cluster,
        desired: watch::Receiver<Option<Arc<DesiredState>>>,
        applies: mpsc::Receiver<ClusterApply>,
        handle: Handle,
    ) -> Controller {
        Controller {
            cluster,
            desired,
            applies,
            handle,
            reported: BTreeMap::new(),
            last_failure: None,
            held: None,
        }
    }

    pub async fn run(mut self, stop: CancellationToken) {
        let mut changes = std::pin::pin!(self.cluster.changes());
        let mut resync = tokio::time::interval(RESYNC);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = self.desired.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                Some(change) = changes.next() => {
                    if let Err(e) = change {
                        self.failed(&format!("{e:#}"));
                        continue;
                    }
                    // A rollout is many changes: look once they settle.
                    tokio::time::sleep(SETTLE).await;
                    while let Some(Some(Ok(()))) = futures_util::FutureExt::now_or_never(changes.next()) {}
                }
                _ = resync.tick() => {}
                Some(apply) = self.applies.recv() => {
                    let result = self.apply(apply.expect).await;
                    let _ = apply.reply.send(result);
                    continue;
                }
            }
            let desired = self.desired.borrow().clone();
            if let Some(desired) = desired {
                self.reconcile(&desired).await;
            }
        }
    }

    /// Looks at the cluster, reports it, and applies the plan unless it is
    /// held.
    async fn reconcile(&mut self, desired: &DesiredState) {
        let Some((plan, live, rendered)) = self.look(desired).await else {
            return;
        };
        // What is there now (the reconciler routes to what is ours), before
        // anything changes.
        self.report(&live, plan.clone());
        if !plan.has_changes() {
            self.held = None;
            self.report(&live, plan);
            return;
        }
        // Every server with objects in the cluster counts, failed or not:
        // the plan removes those too.
        let active = live.servers.len();
        let hold = crate::plan::held(&plan, &desired.manager.reconcile, active);
        if let Some(reason) = hold {
            let new = self.held.as_ref().is_none_or(|(p, _)| !p.same_as(&plan));
            if new {
                tracing::warn!("cluster plan held: {reason}");
                self.event(
                    EventKind::Plan,
                    None,
                    format!("cluster plan held ({} actions): {reason}", plan.actions.len()),
                );
            }
            self.held = Some((plan.clone(), reason));
            self.report(&live, plan);
            return;
        }
        self.held = None;
        self.execute_and_report(desired, &rendered, &live, &plan).await;
    }

    /// Renders, reads the cluster, plans. `None` (and said once) when the
    /// config cannot be deployed or the cluster cannot be read.
    async fn look(&mut self, desired: &DesiredState) -> Option<(Plan, Live, Rendered)> {
        let rendered = super::render(desired);
        if !rendered.errors.is_empty() {
            self.failed(&format!(
                "the config cannot be deployed: {}",
                rendered.errors.join("; ")
            ));
            return None;
        }
        match self.cluster.observe(&rendered).await {
            Ok(live) => {
                if self.last_failure.take().is_some() {
                    self.event(
                        EventKind::Recovery,
                        None,
                        format!("cluster reachable again ({})", self.cluster.url),
                    );
                }
                let plan = super::plan::plan(desired, &rendered, &live);
                Some((plan, live, rendered))
            }
            Err(e) => {
                self.failed(&format!("{e:#}"));
                None
            }
        }
    }

    /// Carries out `plan`, then reports the cluster: as it was looked at,
    /// or looked at again when a server was held back at the last moment
    /// (an object of its name appeared that is not ours), so that status
    /// and events say so now.
    async fn execute_and_report(&mut self, desired: &DesiredState, rendered: &Rendered, live: &Live, plan: &Plan) {
        if self.execute(rendered, plan).await
            && let Some((plan, live, _)) = self.look(desired).await
        {
            self.report(&live, plan);
            return;
        }
        self.report(live, plan.clone());
    }

    /// Carries out `plan`; whether a server was held back.
    async fn execute(&mut self, rendered: &Rendered, plan: &Plan) -> bool {
        for action in &plan.actions {
            let message = format!(
                "{} {} in the cluster: {}",
                action.action.verb(),
                action.server,
                action.reason
            );
            tracing::info!("{message}");
            self.event(EventKind::Plan, Some(&action.server), message);
        }
        match self.cluster.execute(plan, rendered).await {
            Ok(executed) => {
                for line in executed.done {
                    tracing::info!("{line}");
                }
                for (server, why) in &executed.held {
                    tracing::warn!("{server}: not applied: {why}");
                }
                !executed.held.is_empty()
            }
            Err(e) => {
                self.failed(&format!("{e:#}"));
                false
            }
        }
    }

    /// `apply` from the API: the plan as of now, if it is still the one the
    /// caller saw.
    async fn apply(&mut self, expect: Option<(String, String)>) -> Result<Plan, CommandError> {
        let desired = self.desired.borrow().clone();
        let Some(desired) = desired else {
            return Err(CommandError::ConfigInvalid);
        };
        let Some((plan, live, rendered)) = self.look(&desired).await else {
            return Err(CommandError::Cluster(
                self.last_failure
                    .clone()
                    .unwrap_or_else(|| "cannot read the cluster".into()),
            ));
        };
        if let Some((d, o)) = expect
            && (d != plan.desired_hash || o != plan.observed_hash)
        {
            return Err(CommandError::Stale);
        }
        self.held = None;
        self.execute_and_report(&desired, &rendered, &live, &plan).await;
        Ok(plan)
    }

    fn failed(&mut self, why: &str) {
        if self.last_failure.as_deref() != Some(why) {
            tracing::error!("kubernetes: {why}");
            self.event(EventKind::ConfigError, None, format!("kubernetes: {why}"));
            self.last_failure = Some(why.to_string());
        }
    }

    /// Tells the reconciler each server's Deployment; changes become events,
    /// and the reasons pods do not run lines in the server's log.
    fn report(&mut self, live: &Live, plan: Plan) {
        let observed = observed(live);
        let mut servers = BTreeMap::new();
        for (name, o) in &observed.servers {
            let ready = live.servers[name]
                .deployment
                .as_ref()
                .and_then(|d| d["status"]["readyReplicas"].as_u64())
                .unwrap_or(0);
            let server = ClusterServer {
                phase: o.phase,
                ready: u32::try_from(ready).unwrap_or(u32::MAX),
                wanted: o.replicas,
                error: o.last_error.clone(),
            };
            if self.reported.get(name) != Some(&server) {
                let message = format!(
                    "in the cluster: {} ({}/{} pods ready){}",
                    server.phase.as_str(),
                    server.ready,
                    server.wanted,
                    server.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
                );
                self.event_with_phase(Some(name), message, server.phase);
                if let Some(error) = &server.error {
                    self.handle.logs.push_manager(name, 0, format!("cluster: {error}"));
                }
            }
            servers.insert(name.clone(), server);
        }
        for (name, why) in &live.blocked {
            let server = ClusterServer {
                phase: crate::state::Phase::Failed,
                ready: 0,
                wanted: 0,
                error: Some(why.clone()),
            };
            if self.reported.get(name) != Some(&server) {
                self.event_with_phase(Some(name), format!("held back: {why}"), server.phase);
            }
            servers.insert(name.clone(), server);
        }
        self.reported = servers.clone();
        let report = ClusterReport {
            servers,
            plan: Some(plan),
            blocked: live.blocked.keys().cloned().collect(),
            held: self.held.as_ref().map(|(_, why)| why.clone()),
        };
        let _ = self.handle.requests.try_send(Request::Cluster(Box::new(report)));
    }

    fn event(&self, kind: EventKind, server: Option<&str>, message: String) {
        self.record(EventRecord {
            seq: 0,
            at_ms: crate::now_ms(),
            kind,
            server: server.map(str::to_string),
            message,
            phase: None,
            health: None,
        });
    }

    fn event_with_phase(&self, server: Option<&str>, message: String, phase: crate::state::Phase) {
        self.record(EventRecord {
            seq: 0,
            at_ms: crate::now_ms(),
            kind: EventKind::Phase,
            server: server.map(str::to_string),
            message,
            phase: Some(phase),
            health: None,
        });
    }

    fn record(&self, record: EventRecord) {
        let keep = self.handle.snapshot.borrow().manager.storage.event_log_size;
        match self.handle.store.append_event(record, keep) {
            Ok(record) => {
                let _ = self.handle.events.send(record);
            }
            Err(e) => tracing::error!("cannot record an event: {e}"),
        }
    }
}
