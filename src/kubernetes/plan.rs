//! `plan` with `backend: kubernetes`: the rendered objects of the config
//! against the objects in the cluster that carry our labels. Pure: the
//! cluster is read by [`super::cluster`], which hands its objects here as
//! JSON.
//!
//! The cluster's objects are read as an [`ObservedState`], so the plan is
//! made by [`crate::plan::plan`] like a local one (same actions, reasons,
//! field diffs, hashes for saved plans); then what only a cluster has is
//! added: a change of the pod template is a rolling update, and an object
//! changed in the cluster behind our back (drift) is an update that puts it
//! back.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Deployed, NAME_LABEL, POD_FIELDS, Rendered, SPEC_ANNOTATION};
use crate::config::view::{REDACTED, SpecView, stable_hash};
use crate::config::{DesiredServer, DesiredState};
use crate::plan::{self, Action, ActionKind, FieldChange, Notice, NoticeKind, Plan};
use crate::state::{Health, ObservedServer, ObservedState, Phase};

/// What the cluster holds for the servers: our objects, by server name.
#[derive(Debug, Clone, Default)]
pub struct Live {
    pub servers: BTreeMap<String, LiveServer>,
    /// Servers not to be applied, and why: an object of their name exists
    /// that we did not make.
    pub blocked: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
pub struct LiveServer {
    pub deployment: Option<Value>,
    pub service: Option<Value>,
    /// The server's pods.
    pub pods: Vec<Value>,
    /// Where a server-side apply of our objects (dry run) would change what
    /// the cluster holds although the config did not change: edits made in
    /// the cluster, or an object deleted there.
    pub drift: Vec<FieldChange>,
    /// The last lines the crashing container of a pod wrote, by pod name.
    pub crash_logs: BTreeMap<String, String>,
}

impl LiveServer {
    /// The name of a pod of the server in a crash loop, if one is.
    pub fn crashing_pod(&self) -> Option<String> {
        self.pods
            .iter()
            .find(|p| container_statuses(p).any(|c| c["state"]["waiting"]["reason"] == "CrashLoopBackOff"))
            .and_then(|p| p["metadata"]["name"].as_str().map(str::to_string))
    }
}

impl Live {
    /// Sorts listed objects by the server they belong to (their name label).
    pub fn from_objects(deployments: Vec<Value>, services: Vec<Value>, pods: Vec<Value>) -> Live {
        let mut live = Live::default();
        let server_of = |o: &Value| o["metadata"]["labels"][NAME_LABEL].as_str().map(str::to_string);
        for d in deployments {
            if let Some(name) = server_of(&d) {
                live.servers.entry(name).or_default().deployment = Some(d);
            }
        }
        for s in services {
            if let Some(name) = server_of(&s) {
                live.servers.entry(name).or_default().service = Some(s);
            }
        }
        // Pods carry no instance label: those of servers whose objects are
        // ours (another config's in the namespace are not).
        for p in pods {
            if let Some(server) = server_of(&p).and_then(|name| live.servers.get_mut(&name)) {
                server.pods.push(p);
            }
        }
        live
    }
}

/// The desired state as the cluster sees it: the servers that render to
/// objects, each with its deployed view (and that view's hash) in place of
/// the local one. Disabled servers stay (so a running one is removed).
pub fn desired_state(desired: &DesiredState, rendered: &Rendered) -> DesiredState {
    let mut out = desired.clone();
    out.servers
        .retain(|name, server| !server.spec.enabled || rendered.servers.contains_key(name));
    for (name, server) in out.servers.iter_mut() {
        if let Some(deployed) = rendered.servers.get(name) {
            set_view(server, deployed);
        }
    }
    out
}

fn set_view(server: &mut DesiredServer, deployed: &Deployed) {
    server.view = deployed.view.clone();
    server.spec_hash = stable_hash(&server.view);
}

/// The cluster's objects as observed servers: phase and health from the
/// Deployment's status and its pods, the applied spec from our annotation.
pub fn observed(live: &Live) -> ObservedState {
    let mut out = ObservedState::default();
    for (name, server) in &live.servers {
        out.servers.insert(name.clone(), observed_server(server));
    }
    out
}

fn observed_server(live: &LiveServer) -> ObservedServer {
    let Some(deployment) = &live.deployment else {
        // Only a Service left: nothing runs.
        return ObservedServer::default();
    };
    let applied: Option<SpecView> = deployment["metadata"]["annotations"][SPEC_ANNOTATION]
        .as_str()
        .and_then(|text| serde_json::from_str(text).ok());
    let spec_hash = applied.as_ref().map(stable_hash);
    let wanted = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
    let status = &deployment["status"];
    let count = |field: &str| status[field].as_u64().unwrap_or(0);
    let (ready, updated) = (count("readyReplicas"), count("updatedReplicas"));
    let generation = deployment["metadata"]["generation"].as_u64().unwrap_or(0);
    let seen = status["observedGeneration"].as_u64().unwrap_or(0) >= generation;
    let restarts = live
        .pods
        .iter()
        .flat_map(container_statuses)
        .filter_map(|c| c["restartCount"].as_u64())
        .sum::<u64>();
    let trouble = pod_trouble(live);
    let failed_rollout = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Progressing" && c["status"] == "False")
        .map(|c| {
            format!(
                "rollout failed ({}): {}",
                c["reason"].as_str().unwrap_or("no reason"),
                c["message"].as_str().unwrap_or("")
            )
        });
    let terminating = deployment["metadata"]["deletionTimestamp"].is_string();
    let (phase, last_error) = match (failed_rollout, trouble) {
        // Being deleted (its pods terminate): not to be stopped again.
        _ if terminating => (Phase::Stopping, None),
        (Some(rollout), Some(pods)) => (Phase::Failed, Some(format!("{rollout}; {pods}"))),
        (Some(rollout), None) => (Phase::Failed, Some(rollout)),
        (None, Some(pods)) => (Phase::Backoff, Some(pods)),
        // `replicas: 0` as asked: nothing to run, nothing to do.
        (None, None) if wanted == 0 => (Phase::Running, None),
        (None, None) if seen && ready >= wanted && updated >= wanted => (Phase::Running, None),
        (None, None) => (Phase::Starting, None),
    };
    let health = match (phase, ready) {
        (Phase::Stopping, _) => Health::Unknown,
        (_, 0) if wanted == 0 => Health::Unknown,
        (_, 0) => Health::Unhealthy,
        (_, r) if r < wanted => Health::Degraded,
        _ => Health::Healthy,
    };
    ObservedServer {
        phase,
        health,
        applied,
        spec_hash,
        replicas: u32::try_from(wanted).unwrap_or(u32::MAX),
        restart_count: u32::try_from(restarts).unwrap_or(u32::MAX),
        last_error,
        ..Default::default()
    }
}

fn container_statuses(pod: &Value) -> impl Iterator<Item = &Value> {
    pod["status"]["containerStatuses"].as_array().into_iter().flatten()
}

/// Why the server's pods do not run, in words: an image that cannot be
/// pulled, a crash loop (with the last lines it wrote), a pod that cannot be
/// scheduled.
fn pod_trouble(live: &LiveServer) -> Option<String> {
    let mut found = Vec::new();
    for pod in &live.pods {
        let pod_name = pod["metadata"]["name"].as_str().unwrap_or("?");
        for c in container_statuses(pod) {
            let waiting = &c["state"]["waiting"];
            let Some(reason) = waiting["reason"].as_str() else {
                continue;
            };
            let message = waiting["message"].as_str().unwrap_or("");
            let text = match reason {
                "ErrImagePull" | "ImagePullBackOff" | "InvalidImageName" => format!(
                    "pod {pod_name}: cannot pull image {} ({reason}){}",
                    c["image"].as_str().unwrap_or("?"),
                    if message.is_empty() {
                        String::new()
                    } else {
                        format!(": {message}")
                    }
                ),
                "CrashLoopBackOff" => {
                    let exit = &c["lastState"]["terminated"];
                    let how = match (exit["exitCode"].as_i64(), exit["reason"].as_str()) {
                        (Some(code), Some(why)) => format!(", last exit {code} ({why})"),
                        (Some(code), None) => format!(", last exit {code}"),
                        _ => String::new(),
                    };
                    let logs = live
                        .crash_logs
                        .get(pod_name)
                        .map(|l| {
                            let lines: Vec<&str> = l.lines().filter(|l| !l.trim().is_empty()).collect();
                            let tail = &lines[lines.len().saturating_sub(5)..];
                            format!("; last lines: {}", tail.join(" | "))
                        })
                        .unwrap_or_default();
                    format!(
                        "pod {pod_name}: CrashLoopBackOff after {} restarts{how}{logs}",
                        c["restartCount"].as_u64().unwrap_or(0)
                    )
                }
                "ContainerCreating" | "PodInitializing" => continue,
                other => format!("pod {pod_name}: {other}: {message}"),
            };
            found.push(text);
        }
        if let Some(c) = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
        {
            found.push(format!(
                "pod {pod_name}: not scheduled ({}): {}",
                c["reason"].as_str().unwrap_or("?"),
                c["message"].as_str().unwrap_or("")
            ));
        }
    }
    // One pod says it for all its replicas.
    found.dedup_by(|a, b| a.split_once(": ").map(|x| x.1) == b.split_once(": ").map(|x| x.1));
    (!found.is_empty()).then(|| found.join("; "))
}

/// The differences between an object as the cluster holds it and as a dry
/// run of our apply would leave it: what was changed behind our back, at
/// most a few paths, for the plan to show.
pub fn drift(kind: &str, live: &Value, applied: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    for part in ["spec", "metadata.labels", "metadata.annotations"] {
        let pick = |v: &Value| part.split('.').fold(v.clone(), |v, k| v[k].clone());
        walk_diff(&format!("{kind}.{part}"), &pick(live), &pick(applied), &mut out);
    }
    out.truncate(8);
    out
}

/// Whether a value holds an `args` list (a container, a list of them).
fn has_args(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.contains_key("args") || map.values().any(has_args),
        Value::Array(items) => items.iter().any(has_args),
        _ => false,
    }
}

fn walk_diff(path: &str, before: &Value, after: &Value, out: &mut Vec<FieldChange>) {
    if before == after {
        return;
    }
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let keys: std::collections::BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for k in keys {
                let (bv, av) = (b.get(k).unwrap_or(&Value::Null), a.get(k).unwrap_or(&Value::Null));
                walk_diff(&format!("{path}.{k}"), bv, av, out);
            }
        }
        (Value::Array(b), Value::Array(a)) if b.len() == a.len() => {
            for (i, (bv, av)) in b.iter().zip(a).enumerate() {
                walk_diff(&format!("{path}[{i}]"), bv, av, out);
            }
        }
        _ => {
            // The container's args and our spec annotation may hold a
            // literal secret (`--token=…`): shown as changed, not as values.
            let sensitive =
                path.contains(".args") || path.ends_with(SPEC_ANNOTATION) || has_args(before) || has_args(after);
            let shown = |v: &Value| (!v.is_null()).then(|| if sensitive { json!(REDACTED) } else { v.clone() });
            out.push(FieldChange {
                field: path.to_string(),
                before: shown(before),
                after: shown(after),
                sensitive,
                forces_restart: path.contains(".template."),
            })
        }
    }
}

/// The plan that makes the cluster match the config. Pure.
pub fn plan(desired: &DesiredState, rendered: &Rendered, live: &Live) -> Plan {
    let desired = desired_state(desired, rendered);
    let observed = observed(live);
    let mut plan = plan::plan(&desired, &observed);
    for action in &mut plan.actions {
        let pods_roll = action.changes.iter().any(|c| {
            let top = c.field.split('.').next().unwrap_or(&c.field);
            POD_FIELDS.contains(&top)
        });
        if matches!(
            action.action,
            ActionKind::Restart | ActionKind::Replace | ActionKind::Update
        ) && pods_roll
        {
            // A Deployment rolls its pods: new ones first, then the old go.
            let fields = changed_fields(&action.changes);
            action.action = ActionKind::Replace;
            action.reason = format!("{fields} changed (rolling update of the pods)");
        } else if action.action == ActionKind::Restart {
            action.action = ActionKind::Replace;
            action.reason = action.reason.replace("(restart)", "(rolling update of the pods)");
        } else if action.action == ActionKind::Update {
            action.reason = action
                .reason
                .replace("(in place, no restart)", "(the Service; pods stay)");
        }
        redact_args(&mut action.changes, desired.servers.get(&action.server));
        if let (Some(target), Some(d)) = (&mut action.target, desired.servers.get(&action.server)) {
            *target = redacted_target(&d.view);
        }
    }
    // Matching the config is not enough: the cluster must hold what we applied.
    let mut still_unchanged = Vec::new();
    for name in std::mem::take(&mut plan.unchanged) {
        let drifted = live.servers.get(&name).filter(|s| !s.drift.is_empty());
        match (drifted, desired.servers.get(&name)) {
            (Some(server), Some(d)) => plan.actions.push(Action {
                server: name.clone(),
                // Putting back the pod template rolls the pods.
                action: if server.drift.iter().any(|c| c.forces_restart) {
                    ActionKind::Replace
                } else {
                    ActionKind::Update
                },
                reason: format!(
                    "changed in the cluster, not in the config (drift): {}; apply puts it back",
                    changed_fields(&server.drift)
                ),
                changes: server.drift.clone(),
                replicas: None,
                target: None,
                provenance: Some(d.provenance.clone()),
                priority: d.spec.priority,
            }),
            _ => still_unchanged.push(name),
        }
    }
    plan.unchanged = still_unchanged;
    // Nothing is done to a server whose objects would take over someone
    // else's, nor while its objects are being deleted (it comes back after).
    let terminating = |name: &str| {
        live.servers
            .get(name)
            .and_then(|s| s.deployment.as_ref())
            .is_some_and(|d| d["metadata"]["deletionTimestamp"].is_string())
    };
    plan.actions
        .retain(|a| !live.blocked.contains_key(&a.server) && !terminating(&a.server));
    for (name, why) in &live.blocked {
        plan.notices.retain(|n| &n.server != name);
        plan.notices.push(Notice {
            server: name.clone(),
            kind: NoticeKind::Failed,
            message: why.clone(),
        });
    }
    // Whatever of ours the config no longer has goes, in any state (the
    // local planner leaves a failed or stopped server be; a cluster must not
    // keep its objects).
    for (name, server) in &live.servers {
        let wanted = desired.servers.get(name).is_some_and(|d| d.spec.enabled);
        let terminating = server
            .deployment
            .as_ref()
            .is_some_and(|d| d["metadata"]["deletionTimestamp"].is_string());
        if wanted || terminating || plan.actions.iter().any(|a| &a.server == name) {
            continue;
        }
        let why = if desired.servers.contains_key(name) {
            "disabled in config"
        } else {
            "removed from config"
        };
        plan.notices.retain(|n| &n.server != name);
        plan.actions.push(Action {
            server: name.clone(),
            action: ActionKind::Stop,
            reason: why.into(),
            changes: Vec::new(),
            replicas: None,
            target: None,
            provenance: desired.servers.get(name).map(|d| d.provenance.clone()),
            priority: desired.servers.get(name).map_or(0, |d| d.spec.priority),
        });
    }
    for notice in &mut plan.notices {
        if notice.kind == NoticeKind::Failed && !live.blocked.contains_key(&notice.server) {
            let why = observed
                .servers
                .get(&notice.server)
                .and_then(|o| o.last_error.clone())
                .unwrap_or_default();
            notice.message = format!("{why}; change its spec (the image, say) and apply");
        }
    }
    plan::sort_actions(&mut plan.actions);
    plan.summary = plan::summarize(&plan.actions);
    // A saved plan goes stale when any of our objects changes in the
    // cluster, when a server is held back or let go (another config's
    // object of its name came or went), or when it looks at another instance.
    fn version(object: &Option<Value>) -> Value {
        object
            .as_ref()
            .map_or(Value::Null, |o| o["metadata"]["resourceVersion"].clone())
    }
    let versions: BTreeMap<&str, [Value; 2]> = live
        .servers
        .iter()
        .map(|(name, s)| (name.as_str(), [version(&s.deployment), version(&s.service)]))
        .collect();
    plan.observed_hash = stable_hash(&json!({
        "observed": observed.plan_hash(),
        "versions": versions,
        "held": live.blocked,
        "instance": desired.manager.kubernetes.instance,
    }));
    plan
}

fn changed_fields(changes: &[FieldChange]) -> String {
    let mut fields: Vec<&str> = Vec::new();
    for c in changes {
        let top = c.field.split(['.', '[']).next().unwrap_or(&c.field);
        let top = if top == "Deployment" || top == "Service" {
            c.field.as_str()
        } else {
            top
        };
        if !fields.contains(&top) {
            fields.push(top);
        }
    }
    fields.join(", ")
}

/// A plan's `target` (`stdio: cmd ARGS`) with each sensitive arg (`--token=…`,
/// the value after `--api-key`) as `(sensitive)`.
fn redacted_target(view: &SpecView) -> String {
    let mut view = view.clone();
    if let Some(Value::Array(items)) = view.get_mut("args") {
        let args: Vec<String> = items.iter().map(|a| a.as_str().unwrap_or("").to_string()).collect();
        for i in crate::config::spec::sensitive_args(&args) {
            items[i] = json!(REDACTED);
        }
    }
    plan::target(&view)
}

/// `--token=…` in `args` is shown as a secret, as the local plan shows it.
fn redact_args(changes: &mut [FieldChange], desired: Option<&DesiredServer>) {
    let hide = |v: &mut Option<Value>| {
        if let Some(Value::Array(items)) = v {
            let args: Vec<String> = items.iter().map(|a| a.as_str().unwrap_or("").to_string()).collect();
            for i in crate::config::spec::sensitive_args(&args) {
                items[i] = Value::String(REDACTED.into());
            }
            true
        } else {
            false
        }
    };
    for c in changes.iter_mut().filter(|c| c.field == "args") {
        let (b, a) = (hide(&mut c.before), hide(&mut c.after));
        c.sensitive |=
            (b || a) && desired.is_some_and(|d| !crate::config::spec::sensitive_args(&d.spec.args).is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(status: Value, pods: Vec<Value>) -> LiveServer {
        LiveServer {
            deployment: Some(json!({
                "metadata": {"name": "t", "generation": 2, "labels": {NAME_LABEL: "t"}},
                "spec": {"replicas": 2},
                "status": status,
            })),
            pods,
            ..Default::default()
        }
    }

    #[test]
    fn phase_and_health_come_from_the_deployment_status() {
        let ready = deployment(
            json!({"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 2}),
            vec![],
        );
        let o = observed_server(&ready);
        assert_eq!((o.phase, o.health), (Phase::Running, Health::Healthy));
        let half = deployment(
            json!({"observedGeneration": 2, "readyReplicas": 1, "updatedReplicas": 2}),
            vec![],
        );
        let o = observed_server(&half);
        assert_eq!((o.phase, o.health), (Phase::Starting, Health::Degraded));
        let old = deployment(
            json!({"observedGeneration": 1, "readyReplicas": 2, "updatedReplicas": 2}),
            vec![],
        );
        assert_eq!(observed_server(&old).phase, Phase::Starting);
    }

    #[test]
    fn a_deployment_being_deleted_is_stopping_and_zero_replicas_asked_is_running() {
        let mut live = deployment(json!({"observedGeneration": 2, "readyReplicas": 2}), vec![]);
        live.deployment.as_mut().unwrap()["metadata"]["deletionTimestamp"] = json!("2026-11-26T10:00:00Z");
        assert_eq!(observed_server(&live).phase, Phase::Stopping);
        let mut idle = deployment(json!({"observedGeneration": 2}), vec![]);
        idle.deployment.as_mut().unwrap()["spec"]["replicas"] = json!(0);
        let o = observed_server(&idle);
        assert_eq!((o.phase, o.health), (Phase::Running, Health::Unknown));
    }

    #[test]
    fn a_crash_loop_says_how_the_container_ended_and_what_it_wrote() {
        let pod = json!({"metadata": {"name": "t-1"}, "status": {"containerStatuses": [{
            "image": "img", "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}});
        let mut live = deployment(json!({"observedGeneration": 2}), vec![pod]);
        live.crash_logs
            .insert("t-1".into(), "starting\nerror: no such tool\n\n".into());
        let o = observed_server(&live);
        assert_eq!(o.phase, Phase::Backoff);
        assert_eq!(o.restart_count, 4);
        let error = o.last_error.unwrap();
        assert!(
            error.contains("CrashLoopBackOff after 4 restarts, last exit 1 (Error)"),
            "{error}"
        );
        assert!(error.ends_with("last lines: starting | error: no such tool"), "{error}");
    }

    #[test]
    fn a_failed_rollout_and_an_image_that_cannot_be_pulled_are_named() {
        let pod = json!({"metadata": {"name": "t-1"}, "status": {"containerStatuses": [{
            "image": "reg/x:1", "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}}]}});
        let live = deployment(
            json!({"observedGeneration": 2, "conditions": [{"type": "Progressing", "status": "False",
                "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet t-1 has timed out progressing."}]}),
            vec![pod.clone(), pod],
        );
        let o = observed_server(&live);
        assert_eq!(o.phase, Phase::Failed);
        assert_eq!(
            o.last_error.as_deref(),
            Some(
                "rollout failed (ProgressDeadlineExceeded): ReplicaSet t-1 has timed out progressing.; pod t-1: cannot pull image reg/x:1 (ImagePullBackOff): not found"
            )
        );
    }

    #[test]
    fn drift_names_the_paths_that_differ() {
        let live = json!({"spec": {"replicas": 5, "template": {"spec": {"containers": [{"image": "b"}]}}},
            "metadata": {"labels": {"a": "1"}}});
        let ours = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [{"image": "a"}]}}},
            "metadata": {"labels": {"a": "1"}}});
        let changes = drift("Deployment", &live, &ours);
        let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "Deployment.spec.replicas",
                "Deployment.spec.template.spec.containers[0].image"
            ]
        );
        assert_eq!(changes[0].before, Some(json!(5)));
        assert_eq!(changes[0].after, Some(json!(2)));
        assert!(drift("Service", &ours, &ours).is_empty());
    }
}
