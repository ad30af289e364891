//! The planner: one test per action kind and reason, and snapshots of the rendering.

use mcp_manager::config::DesiredState;
use mcp_manager::plan::{self, ActionKind, NoticeKind, Plan, RenderOptions};
use mcp_manager::state::{Health, ObservedServer, ObservedState, Phase};

use crate::support::{SECRET, SECRET_2, desired};

/// Observed state as if every enabled server in `yaml` were running with that spec.
fn running(yaml: &str) -> ObservedState {
    with_phase(yaml, Phase::Running)
}

fn with_phase(yaml: &str, phase: Phase) -> ObservedState {
    let d = desired(yaml);
    let servers = d
        .servers
        .values()
        .filter(|s| s.spec.enabled)
        .map(|s| {
            let mut server = ObservedServer {
                phase,
                health: Health::Healthy,
                replicas: s.spec.replicas,
                ..Default::default()
            };
            server.set_applied(s);
            (s.name.clone(), server)
        })
        .collect();
    ObservedState { servers }
}

fn text(plan: &Plan) -> String {
    plan::render_text(
        plan,
        &RenderOptions {
            color: false,
            relative_to: Some(std::path::Path::new("/cfg")),
        },
    )
}

fn only_action(plan: &Plan) -> (&str, ActionKind, &str) {
    assert_eq!(plan.actions.len(), 1, "expected one action: {plan:#?}");
    let a = &plan.actions[0];
    (a.server.as_str(), a.action, a.reason.as_str())
}

const BASE: &str = "
servers:
  web:
    command: node
    args: [server.js, --port, '8080']
    environment: {API_TOKEN: '${SECRET_TOKEN}', MODE: prod}
    request_timeout: 60s
    priority: 5
  db:
    command: python
    args: [-m, db_server]
";

#[test]
fn everything_starts_on_a_fresh_machine() {
    let p = plan::plan(&desired(BASE), &ObservedState::default());
    let kinds: Vec<_> = p
        .actions
        .iter()
        .map(|a| (a.server.as_str(), a.action, a.reason.as_str()))
        .collect();
    // Higher priority first.
    assert_eq!(
        kinds,
        vec![
            ("web", ActionKind::Start, "new server"),
            ("db", ActionKind::Start, "new server")
        ]
    );
    assert_eq!(p.summary.start, 2);
    insta::assert_snapshot!("fresh_start", text(&p));
}

#[test]
fn no_changes_when_everything_matches() {
    let p = plan::plan(&desired(BASE), &running(BASE));
    assert!(!p.has_changes());
    assert_eq!(p.unchanged, vec!["db", "web"]);
    assert_eq!(text(&p), "No changes. The running servers match the configuration.\n");
}

#[test]
fn removed_server_is_stopped() {
    let edited = "
servers:
  web:
    command: node
    args: [server.js, --port, '8080']
    environment: {API_TOKEN: '${SECRET_TOKEN}', MODE: prod}
    request_timeout: 60s
    priority: 5
";
    let p = plan::plan(&desired(edited), &running(BASE));
    assert_eq!(only_action(&p), ("db", ActionKind::Stop, "removed from config"));
}

#[test]
fn disabled_server_is_stopped_and_then_only_noticed() {
    let edited = BASE.replace("  db:\n", "  db:\n    enabled: false\n");
    let p = plan::plan(&desired(&edited), &running(BASE));
    assert_eq!(only_action(&p), ("db", ActionKind::Stop, "disabled in config"));
    let p = plan::plan(&desired(&edited), &running(&edited));
    assert!(!p.has_changes());
    assert_eq!(p.notices[0].kind, NoticeKind::Disabled);
}

#[test]
fn restart_forcing_change_restarts_with_a_diff() {
    let edited = BASE.replace("--port, '8080'", "--port, '9090'");
    let p = plan::plan(&desired(&edited), &running(BASE));
    assert_eq!(only_action(&p), ("web", ActionKind::Restart, "args changed (restart)"));
    assert!(p.actions[0].changes[0].forces_restart);
    assert_eq!(p.summary.restart, 1);
    insta::assert_snapshot!("restart_args", text(&p));
}

#[test]
fn changed_secret_restarts_without_showing_it() {
    let edited = BASE.replace("${SECRET_TOKEN}", "${SECRET_TOKEN_2}");
    let p = plan::plan(&desired(&edited), &running(BASE));
    assert_eq!(
        only_action(&p),
        ("web", ActionKind::Restart, "environment changed (restart)")
    );
    let change = &p.actions[0].changes[0];
    assert_eq!(change.field, "environment.API_TOKEN");
    assert!(change.sensitive);
    let out = text(&p) + &serde_json::to_string(&p).unwrap();
    assert!(out.contains("(sensitive value changed)"), "{out}");
    for secret in [SECRET, SECRET_2, "sha256"] {
        assert!(!out.contains(secret), "output leaks {secret}: {out}");
    }
}

#[test]
fn non_secret_looking_env_values_are_still_redacted() {
    let edited = BASE.replace("MODE: prod", "MODE: staging");
    let p = plan::plan(&desired(&edited), &running(BASE));
    let out = text(&p);
    assert!(
        out.contains("~ environment.MODE: (sensitive value changed)   # forces restart"),
        "{out}"
    );
    assert!(!out.contains("staging") && !out.contains("prod"), "{out}");
}

#[test]
fn rolling_update_strategy_replaces() {
    let base = BASE.replace("    priority: 5\n", "    priority: 5\n    update_strategy: rolling\n");
    let edited = base.replace("[server.js", "[server2.js");
    let p = plan::plan(&desired(&edited), &running(&base));
    assert_eq!(
        only_action(&p),
        ("web", ActionKind::Replace, "args changed (replace without downtime)")
    );
    assert!(text(&p).contains("+/- replace web"));
}

#[test]
fn in_place_change_updates_without_restart() {
    let edited = BASE.replace("request_timeout: 60s", "request_timeout: 30s");
    let p = plan::plan(&desired(&edited), &running(BASE));
    assert_eq!(
        only_action(&p),
        (
            "web",
            ActionKind::Update,
            "request_timeout changed (in place, no restart)"
        )
    );
    assert!(!p.actions[0].changes[0].forces_restart);
    assert!(
        text(&p).contains("~ request_timeout: \"1m\" -> \"30s\""),
        "{}",
        text(&p)
    );
}

#[test]
fn replica_change_scales() {
    let edited = BASE.replace(
        "    args: [-m, db_server]\n",
        "    args: [-m, db_server]\n    replicas: 3\n",
    );
    let p = plan::plan(&desired(&edited), &running(BASE));
    assert_eq!(only_action(&p), ("db", ActionKind::Scale, "replicas 1 -> 3 (scale up)"));
    assert_eq!(p.actions[0].replicas.map(|r| (r.before, r.after)), Some((1, 3)));
    assert_eq!(p.summary.scale, 1);
    assert!(text(&p).ends_with("Plan: 0 to start, 0 to restart, 0 to update, 0 to stop, 1 to scale.\n"));
}

#[test]
fn failed_server_is_shown_but_not_restarted_until_its_spec_changes() {
    let mut observed = running(BASE);
    let db = observed.servers.get_mut("db").unwrap();
    db.phase = Phase::Failed;
    db.restart_count = 5;
    db.last_error = Some("exited with status 1".into());
    let p = plan::plan(&desired(BASE), &observed);
    assert!(!p.has_changes());
    assert_eq!(p.notices[0].kind, NoticeKind::Failed);
    assert!(
        p.notices[0]
            .message
            .contains("failed after 5 restarts: exited with status 1")
    );

    let edited = BASE.replace("db_server]", "db_server, --fixed]");
    let p = plan::plan(&desired(&edited), &observed);
    assert_eq!(
        only_action(&p),
        ("db", ActionKind::Start, "failed earlier; spec changed: args")
    );
}

#[test]
fn suspended_server_is_left_alone() {
    let mut observed = running(BASE);
    let db = observed.servers.get_mut("db").unwrap();
    db.phase = Phase::Stopped;
    db.suspended = true;
    let p = plan::plan(&desired(BASE), &observed);
    assert!(!p.has_changes());
    assert_eq!(p.notices[0].kind, NoticeKind::Suspended);
}

#[test]
fn stopped_server_is_started() {
    let p = plan::plan(&desired(BASE), &with_phase(BASE, Phase::Stopped));
    assert_eq!(p.summary.start, 2);
    assert!(p.actions.iter().all(|a| a.reason == "not running"));
}

#[test]
fn running_without_a_recorded_spec_is_restarted() {
    let mut observed = running(BASE);
    observed.servers.get_mut("db").unwrap().applied = None;
    let p = plan::plan(&desired(BASE), &observed);
    assert_eq!(
        only_action(&p),
        ("db", ActionKind::Restart, "running with an unknown spec")
    );
}

#[test]
fn restart_and_in_place_changes_together_restart_once() {
    let edited = BASE
        .replace("--port, '8080'", "--port, '9090'")
        .replace("request_timeout: 60s", "request_timeout: 5s");
    let p = plan::plan(&desired(&edited), &running(BASE));
    assert_eq!(only_action(&p).1, ActionKind::Restart);
    assert_eq!(p.actions[0].changes.len(), 2);
}

#[test]
fn hashes_track_desired_and_observed_state_but_not_health() {
    let d = desired(BASE);
    let mut observed = running(BASE);
    let before = plan::plan(&d, &observed);
    observed.servers.get_mut("db").unwrap().health = Health::Unhealthy;
    assert_eq!(plan::plan(&d, &observed).observed_hash, before.observed_hash);
    observed.servers.get_mut("db").unwrap().phase = Phase::Stopped;
    assert_ne!(plan::plan(&d, &observed).observed_hash, before.observed_hash);
    let edited: DesiredState = desired(&BASE.replace("request_timeout: 60s", "request_timeout: 61s"));
    assert_ne!(plan::plan(&edited, &observed).desired_hash, before.desired_hash);
}

#[test]
fn mixed_plan_text_and_json_snapshots() {
    let base = "
servers:
  keep: {command: a}
  gone: {command: b}
  tune: {command: c, request_timeout: 10s, tags: [x]}
  bump: {command: d, args: [--v1], env: {TOKEN: '${SECRET_TOKEN}'}}
  grow: {command: e}
";
    let edited = "
servers:
  keep: {command: a}
  tune: {command: c, request_timeout: 20s, tags: [x, y]}
  bump: {command: d, args: [--v2, --verbose], env: {TOKEN: '${SECRET_TOKEN_2}', NEW: '1'}}
  grow: {command: e, replicas: 2}
  fresh: {url: 'https://mcp.example.com/mcp', headers: {Authorization: 'Bearer ${SECRET_TOKEN}'}}
";
    let p = plan::plan(&desired(edited), &running(base));
    insta::assert_snapshot!("mixed_text", text(&p));
    let mut json = serde_json::to_value(&p).unwrap();
    json["desired_hash"] = "<hash>".into();
    json["observed_hash"] = "<hash>".into();
    insta::assert_json_snapshot!("mixed_json", json);
}
