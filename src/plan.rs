//! The planner (DESIGN 4.2): a pure function from desired and observed state to the
//! actions that make them match, each with its reason; plus text and JSON rendering.
//!
//! Architecture invariant: `plan` does no IO and cannot fail. It is the only place
//! that decides actions; the reconciler executes plans, `plan`/`apply` show them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use owo_colors::OwoColorize;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::spec::UpdateStrategy;
use crate::config::view::{self, REDACTED, SpecView, redact, stable_hash};
use crate::config::{DesiredServer, DesiredState, Provenance};
use crate::state::{ObservedServer, ObservedState, Phase};

/// Fields whose change needs a new process (DESIGN 4.2).
pub const RESTART_FIELDS: &[&str] = &[
    "command",
    "args",
    "environment",
    "working_directory",
    "connection_type",
    "url",
    "host",
    "port",
    "path",
    "headers",
    "tls",
    "resources",
];

/// Version of the JSON shape of a plan; bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Stop a running server (removed or disabled).
    Stop,
    /// Stop, then start with the new spec (`update_strategy: recreate`).
    Restart,
    /// Start the new instance, switch routing, stop the old (`update_strategy: rolling`).
    Replace,
    /// Apply in-place fields: no restart.
    Update,
    /// Start or stop replicas: only the difference.
    Scale,
    /// Start a server that is not running.
    Start,
}

impl ActionKind {
    /// Terraform-style symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            ActionKind::Start => "+",
            ActionKind::Stop => "-",
            ActionKind::Restart => "-/+",
            ActionKind::Replace => "+/-",
            ActionKind::Update | ActionKind::Scale => "~",
        }
    }

    pub fn verb(self) -> &'static str {
        match self {
            ActionKind::Start => "start",
            ActionKind::Stop => "stop",
            ActionKind::Restart => "restart",
            ActionKind::Replace => "replace",
            ActionKind::Update => "update",
            ActionKind::Scale => "scale",
        }
    }
}

/// One changed field. Sensitive values are already redacted here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    /// Field name; `environment.KEY` / `headers.KEY` for one entry of those maps.
    pub field: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    pub sensitive: bool,
    pub forces_restart: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaChange {
    pub before: u32,
    pub after: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub server: String,
    pub action: ActionKind,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<FieldChange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<ReplicaChange>,
    /// How the server is reached, secrets redacted (for starts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
    pub priority: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// Gave up restarting; needs `restart-server` or a spec change.
    Failed,
    /// Stopped by hand; `start-server` resumes it.
    Suspended,
    /// Disabled in config (or inferred and not enabled) and not running.
    Disabled,
}

/// Something `plan` shows that is not an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    pub server: String,
    pub kind: NoticeKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Summary {
    pub start: usize,
    pub restart: usize,
    pub update: usize,
    pub stop: usize,
    pub scale: usize,
}

/// The plan: what to do, why, and what it was computed from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub format_version: u32,
    /// Hash of the desired state the plan was made from.
    pub desired_hash: String,
    /// Hash of the observed state the plan was made from.
    pub observed_hash: String,
    pub actions: Vec<Action>,
    pub notices: Vec<Notice>,
    /// Servers that already match.
    pub unchanged: Vec<String>,
    pub summary: Summary,
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        !self.actions.is_empty()
    }

    /// Made from the same desired and observed state (so the same plan).
    pub fn same_as(&self, other: &Plan) -> bool {
        self.desired_hash == other.desired_hash && self.observed_hash == other.observed_hash
    }
}

/// The hash of a desired state, as recorded in plans.
pub fn desired_hash(desired: &DesiredState) -> String {
    // Built from the per-server hashes computed once at load time.
    let hashes: BTreeMap<&str, &str> = desired
        .servers
        .iter()
        .map(|(n, s)| (n.as_str(), s.spec_hash.as_str()))
        .collect();
    stable_hash(&hashes)
}

/// Computes the plan. Pure.
pub fn plan(desired: &DesiredState, observed: &ObservedState) -> Plan {
    let names: BTreeSet<&String> = desired.servers.keys().chain(observed.servers.keys()).collect();
    let mut actions = Vec::new();
    let mut notices = Vec::new();
    let mut unchanged = Vec::new();
    for name in names {
        match decide(name, desired.servers.get(name), observed.servers.get(name)) {
            Decision::Act(action) => actions.push(action),
            Decision::Notice(notice) => notices.push(notice),
            Decision::Unchanged => unchanged.push(name.clone()),
            Decision::Nothing => {}
        }
    }
    sort_actions(&mut actions);
    Plan {
        format_version: FORMAT_VERSION,
        desired_hash: desired_hash(desired),
        observed_hash: observed.plan_hash(),
        summary: summarize(&actions),
        actions,
        notices,
        unchanged,
    }
}

/// Why an automatic reconcile must leave `plan` for `apply`, if it must:
/// manual mode, or the mass-removal guard (it would stop more than half of
/// the `active` servers, at least two of them running). Pure.
pub fn held(plan: &Plan, settings: &crate::config::manager::ReconcileSettings, active: usize) -> Option<String> {
    if settings.mode == crate::config::manager::ReconcileMode::Manual {
        return Some("reconcile.mode is manual: run `mcp-manager apply`".into());
    }
    let stops = plan.actions.iter().filter(|a| a.action == ActionKind::Stop).count();
    (settings.mass_removal_guard && active >= 2 && stops * 2 > active).then(|| {
        format!(
            "would stop {stops} of {active} running servers: held by the mass-removal guard; run `mcp-manager apply` to confirm"
        )
    })
}

/// How many actions of each kind.
pub fn summarize(actions: &[Action]) -> Summary {
    let mut summary = Summary::default();
    for a in actions {
        match a.action {
            ActionKind::Start => summary.start += 1,
            ActionKind::Stop => summary.stop += 1,
            ActionKind::Restart | ActionKind::Replace => summary.restart += 1,
            ActionKind::Update => summary.update += 1,
            ActionKind::Scale => summary.scale += 1,
        }
    }
    summary
}

/// Puts actions in execution order: stops free resources first, then
/// changes, then starts; higher priority first within a kind.
pub fn sort_actions(actions: &mut [Action]) {
    actions.sort_by(|a, b| (a.action, -a.priority, &a.server).cmp(&(b.action, -b.priority, &b.server)));
}

enum Decision {
    Act(Action),
    Notice(Notice),
    Unchanged,
    Nothing,
}

fn action(server: &str, kind: ActionKind, reason: impl Into<String>, desired: Option<&DesiredServer>) -> Action {
    Action {
        server: server.to_string(),
        action: kind,
        reason: reason.into(),
        changes: Vec::new(),
        replicas: None,
        target: None,
        provenance: desired.map(|d| d.provenance.clone()),
        priority: desired.map_or(0, |d| d.spec.priority),
    }
}

fn notice(server: &str, kind: NoticeKind, message: impl Into<String>) -> Decision {
    Decision::Notice(Notice {
        server: server.to_string(),
        kind,
        message: message.into(),
    })
}

fn decide(name: &str, desired: Option<&DesiredServer>, observed: Option<&ObservedServer>) -> Decision {
    let active = observed.is_some_and(|o| o.phase.is_active());
    let Some(d) = desired else {
        return if active {
            Decision::Act(action(name, ActionKind::Stop, "removed from config", None))
        } else {
            Decision::Nothing
        };
    };
    if !d.spec.enabled {
        if active {
            let why = if d.inferred {
                "inferred and not enabled"
            } else {
                "disabled in config"
            };
            return Decision::Act(action(name, ActionKind::Stop, why, Some(d)));
        }
        let message = if d.inferred {
            "inferred; enable with manager.discovery.enable_inferred"
        } else {
            "disabled in config"
        };
        return notice(name, NoticeKind::Disabled, message);
    }
    let view = &d.view;
    let Some(o) = observed else {
        let mut start = action(name, ActionKind::Start, "new server", Some(d));
        start.target = Some(target(view));
        return Decision::Act(start);
    };
    if o.suspended {
        return notice(
            name,
            NoticeKind::Suspended,
            "stopped by hand; `mcp-manager start-server` resumes it",
        );
    }
    // Equal hashes mean equal specs: skip the field-by-field diff.
    let changes = match &o.applied {
        Some(_) if o.spec_hash.as_deref() == Some(d.spec_hash.as_str()) => Some(Vec::new()),
        Some(applied) => Some(diff(applied, view)),
        None => None,
    };
    if o.phase == Phase::Failed {
        return match changes {
            Some(changes) if changes.is_empty() => {
                let last = o.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
                notice(
                    name,
                    NoticeKind::Failed,
                    format!(
                        "failed after {} restarts{last}; run `mcp-manager restart-server {name}` or change its spec",
                        o.restart_count
                    ),
                )
            }
            changes => {
                let changes = changes.unwrap_or_default();
                let mut start = action(
                    name,
                    ActionKind::Start,
                    format!("failed earlier; spec changed: {}", field_list(&changes)),
                    Some(d),
                );
                start.changes = changes;
                start.target = Some(target(view));
                Decision::Act(start)
            }
        };
    }
    if !active {
        let mut start = action(name, ActionKind::Start, "not running", Some(d));
        start.target = Some(target(view));
        return Decision::Act(start);
    }
    let Some(changes) = changes else {
        // Running, but the spec it runs with is unknown: restart to be sure.
        let mut restart = action(name, ActionKind::Restart, "running with an unknown spec", Some(d));
        restart.target = Some(target(view));
        return Decision::Act(restart);
    };
    if changes.is_empty() {
        return Decision::Unchanged;
    }
    let replicas = replica_change(o.applied.as_ref(), view);
    let forcing: Vec<&FieldChange> = changes.iter().filter(|c| c.forces_restart).collect();
    let mut act = if !forcing.is_empty() {
        let fields = field_list_of(forcing.iter().copied());
        let (kind, how) = match d.spec.update_strategy {
            UpdateStrategy::Rolling => (ActionKind::Replace, "replace without downtime"),
            UpdateStrategy::Recreate => (ActionKind::Restart, "restart"),
        };
        action(name, kind, format!("{fields} changed ({how})"), Some(d))
    } else if let Some(r) = replicas {
        let verb = if r.after > r.before { "up" } else { "down" };
        action(
            name,
            ActionKind::Scale,
            format!("replicas {} -> {} (scale {verb})", r.before, r.after),
            Some(d),
        )
    } else {
        action(
            name,
            ActionKind::Update,
            format!("{} changed (in place, no restart)", field_list(&changes)),
            Some(d),
        )
    };
    act.changes = changes;
    act.replicas = replicas;
    Decision::Act(act)
}

fn replica_change(applied: Option<&SpecView>, view: &SpecView) -> Option<ReplicaChange> {
    let get = |v: Option<&SpecView>| {
        v.and_then(|v| v.get("replicas"))
            .and_then(Value::as_u64)
            .and_then(|r| u32::try_from(r).ok())
    };
    match (get(applied), get(Some(view))) {
        (Some(before), Some(after)) if before != after => Some(ReplicaChange { before, after }),
        _ => None,
    }
}

fn field_list(changes: &[FieldChange]) -> String {
    field_list_of(changes.iter())
}

/// "args, environment" — top-level field names, each once.
fn field_list_of<'a>(changes: impl Iterator<Item = &'a FieldChange>) -> String {
    let mut fields: Vec<&str> = Vec::new();
    for c in changes {
        let top = c.field.split('.').next().unwrap_or(&c.field);
        if !fields.contains(&top) {
            fields.push(top);
        }
    }
    fields.join(", ")
}

/// Field-by-field differences between two views; map fields per key.
pub fn diff(before: &SpecView, after: &SpecView) -> Vec<FieldChange> {
    let fields: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    let mut out = Vec::new();
    for field in fields {
        let (b, a) = (before.get(field.as_str()), after.get(field.as_str()));
        if b == a {
            continue;
        }
        let forces_restart = RESTART_FIELDS.contains(&field.as_str());
        let per_key = matches!(field.as_str(), "environment" | "headers");
        match (b, a) {
            (Some(Value::Object(bm)), Some(Value::Object(am))) if per_key => {
                let keys: BTreeSet<&String> = bm.keys().chain(am.keys()).collect();
                for key in keys {
                    let (bv, av) = (bm.get(key.as_str()), am.get(key.as_str()));
                    if bv != av {
                        out.push(change(format!("{field}.{key}"), bv, av, forces_restart));
                    }
                }
            }
            _ => out.push(change(field.clone(), b, a, forces_restart)),
        }
    }
    out
}

fn change(field: String, before: Option<&Value>, after: Option<&Value>, forces_restart: bool) -> FieldChange {
    let sensitive_value = |v: Option<&Value>| v.is_some_and(|v| view::is_fingerprint(v) || contains_fingerprint(v));
    let sensitive = sensitive_value(before) || sensitive_value(after);
    FieldChange {
        field,
        before: before.filter(|v| !v.is_null()).map(redact),
        after: after.filter(|v| !v.is_null()).map(redact),
        sensitive,
        forces_restart,
    }
}

fn contains_fingerprint(v: &Value) -> bool {
    match v {
        Value::Array(items) => items.iter().any(|i| view::is_fingerprint(i) || contains_fingerprint(i)),
        Value::Object(map) => map.values().any(|i| view::is_fingerprint(i) || contains_fingerprint(i)),
        _ => false,
    }
}

/// "stdio: python -m srv" or "http: https://host/mcp", secrets redacted.
pub fn target(view: &SpecView) -> String {
    let kind = view.get("connection_type").and_then(Value::as_str).unwrap_or("stdio");
    let text = |v: &Value| match redact(v) {
        Value::String(s) => s,
        other => other.to_string(),
    };
    let shell_word = |s: String| {
        if s.is_empty() || s.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
            format!("'{}'", s.replace('\'', "'\\''"))
        } else {
            s
        }
    };
    match view.get("command") {
        Some(cmd) if kind == "stdio" || view.get("url").is_none() && view.get("host").is_none() => {
            let mut parts = vec![shell_word(text(cmd))];
            if let Some(Value::Array(args)) = view.get("args") {
                parts.extend(args.iter().map(|a| shell_word(text(a))));
            }
            format!("{kind}: {}", parts.join(" "))
        }
        _ => {
            let addr = match (view.get("url"), view.get("host"), view.get("port")) {
                (Some(url), _, _) => text(url),
                (None, Some(host), Some(port)) => format!("{}:{port}", text(host)),
                _ => "?".into(),
            };
            format!("{kind}: {addr}")
        }
    }
}

// ---------------------------------------------------------------------------------
// Rendering.

/// How to render: colour, and a folder to show paths relative to.
pub struct RenderOptions<'a> {
    pub color: bool,
    pub relative_to: Option<&'a Path>,
}

/// Shows `path` relative to `base` when it is below it.
pub fn display_path(path: &Path, base: Option<&Path>) -> String {
    base.and_then(|b| path.strip_prefix(b).ok())
        .map_or_else(|| path.display().to_string(), |p| p.display().to_string())
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) if s == REDACTED => s.clone(),
        other => other.to_string(),
    }
}

/// Renders the plan like `terraform plan`.
pub fn render_text(plan: &Plan, options: &RenderOptions<'_>) -> String {
    let paint = |s: &str, kind: ActionKind| -> String {
        if !options.color {
            return s.to_string();
        }
        match kind {
            ActionKind::Start => s.green().to_string(),
            ActionKind::Stop => s.red().to_string(),
            ActionKind::Restart | ActionKind::Replace => s.magenta().to_string(),
            ActionKind::Update | ActionKind::Scale => s.yellow().to_string(),
        }
    };
    let mut out = String::new();
    if !plan.actions.is_empty() {
        out.push_str("mcp-manager will perform the following actions:\n");
    }
    for a in &plan.actions {
        let verb = match a.action {
            ActionKind::Start => "started",
            ActionKind::Stop => "stopped",
            ActionKind::Restart => "restarted",
            ActionKind::Replace => "replaced",
            ActionKind::Update => "updated in place",
            ActionKind::Scale => "scaled",
        };
        let at = a
            .provenance
            .as_ref()
            .map(|p| {
                format!(
                    "  ({}:{}:{})",
                    display_path(&p.file, options.relative_to),
                    p.line,
                    p.column
                )
            })
            .unwrap_or_default();
        let _ = writeln!(out, "\n  # {} will be {verb}: {}{at}", a.server, a.reason);
        let head = format!("{} {}", a.action.symbol(), a.action.verb());
        let _ = writeln!(out, "  {} {}", paint(&head, a.action), a.server);
        if let Some(t) = &a.target {
            let _ = writeln!(out, "      {t}");
        }
        for c in &a.changes {
            render_change(&mut out, c);
        }
    }
    for n in &plan.notices {
        let label = match n.kind {
            NoticeKind::Failed => "failed",
            NoticeKind::Suspended => "suspended",
            NoticeKind::Disabled => "disabled",
        };
        let _ = writeln!(out, "\n  # {} is {label}: {}", n.server, n.message);
    }
    if !plan.notices.is_empty() || !plan.actions.is_empty() {
        out.push('\n');
    }
    if plan.actions.is_empty() {
        out.push_str("No changes. The running servers match the configuration.\n");
    } else {
        let s = plan.summary;
        let _ = write!(
            out,
            "Plan: {} to start, {} to restart, {} to update, {} to stop",
            s.start, s.restart, s.update, s.stop
        );
        if s.scale > 0 {
            let _ = write!(out, ", {} to scale", s.scale);
        }
        out.push_str(".\n");
        if s.restart > 0 {
            let _ = writeln!(out, "Restarts interrupt the clients of {} server(s).", s.restart);
        }
    }
    out
}

fn render_change(out: &mut String, c: &FieldChange) {
    let note = if c.forces_restart { "   # forces restart" } else { "" };
    match (&c.before, &c.after) {
        _ if c.sensitive && c.before.is_some() && c.after.is_some() => {
            let _ = writeln!(out, "      ~ {}: (sensitive value changed){note}", c.field);
        }
        (None, Some(a)) => {
            let _ = writeln!(out, "      + {}: {}{note}", c.field, value_text(a));
        }
        (Some(b), None) => {
            let _ = writeln!(out, "      - {}: {}{note}", c.field, value_text(b));
        }
        (Some(Value::Array(b)), Some(Value::Array(a))) => {
            let _ = writeln!(out, "      ~ {}:{note}", c.field);
            let lines = |items: &Vec<Value>| items.iter().map(|i| format!("{}\n", value_text(i))).collect::<String>();
            let (old, new) = (lines(b), lines(a));
            let diff = similar::TextDiff::from_lines(&old, &new);
            for change in diff.iter_all_changes() {
                let sign = match change.tag() {
                    similar::ChangeTag::Delete => "-",
                    similar::ChangeTag::Insert => "+",
                    similar::ChangeTag::Equal => " ",
                };
                let _ = writeln!(out, "          {sign} {}", change.value().trim_end_matches('\n'));
            }
        }
        (Some(b), Some(a)) => {
            let _ = writeln!(out, "      ~ {}: {} -> {}{note}", c.field, value_text(b), value_text(a));
        }
        (None, None) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::manager::{ReconcileMode, ReconcileSettings};

    fn plan_of(kinds: &[ActionKind]) -> Plan {
        let actions: Vec<Action> = kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| action(&format!("s{i}"), *kind, "why", None))
            .collect();
        Plan {
            format_version: FORMAT_VERSION,
            desired_hash: String::new(),
            observed_hash: String::new(),
            summary: summarize(&actions),
            actions,
            notices: Vec::new(),
            unchanged: Vec::new(),
        }
    }

    #[test]
    fn manual_mode_and_the_mass_removal_guard_hold_a_plan() {
        let auto = ReconcileSettings::default();
        assert_eq!(auto.mode, ReconcileMode::Auto);
        let stops = plan_of(&[ActionKind::Stop, ActionKind::Stop]);
        // Two of three running: held; one of three, or of a single one: not.
        let held_why = held(&stops, &auto, 3).unwrap();
        assert!(held_why.contains("would stop 2 of 3 running servers"), "{held_why}");
        assert_eq!(held(&plan_of(&[ActionKind::Stop]), &auto, 3), None);
        assert_eq!(held(&plan_of(&[ActionKind::Stop]), &auto, 1), None);
        let unguarded = ReconcileSettings {
            mass_removal_guard: false,
            ..ReconcileSettings::default()
        };
        assert_eq!(held(&stops, &unguarded, 3), None);
        let manual = ReconcileSettings {
            mode: ReconcileMode::Manual,
            ..ReconcileSettings::default()
        };
        assert!(
            held(&plan_of(&[ActionKind::Start]), &manual, 0)
                .unwrap()
                .contains("manual")
        );
    }
}
