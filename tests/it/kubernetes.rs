//! `manager.backend: kubernetes`: `plan` and `apply` against a cluster — the
//! in-process fake API server of `kube_fake` (no cluster runs here) — and
//! `kubectl` pointed at the same fake, to see that our objects look real to
//! the real client. A run against a real cluster happens when
//! MCP_MANAGER_TEST_KUBECONFIG is set.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::kube_fake::FakeKube;
use crate::service::BIN;

const NS: &str = "mcp";

struct Setup {
    fake: FakeKube,
    dir: tempfile::TempDir,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Setup {
    async fn new(servers: &str) -> Setup {
        let fake = FakeKube::start().await;
        let dir = tempfile::tempdir().unwrap();
        let setup = Setup { fake, dir };
        setup.config(servers);
        setup
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mcp-manager.yaml")
    }

    /// Writes the config: these servers, deployed to the fake.
    fn config(&self, servers: &str) {
        self.config_at(&self.config_path(), None, servers);
    }

    /// Writes a config at `path`: these servers, deployed to the fake as
    /// `instance`.
    fn config_at(&self, path: &std::path::Path, instance: Option<&str>, servers: &str) {
        let kubeconfig = self.fake.kubeconfig(self.dir.path(), "elsewhere");
        let instance = instance.map(|i| format!("    instance: {i}\n")).unwrap_or_default();
        let text = format!(
            "manager:\n  backend: kubernetes\n  kubernetes:\n    kubeconfig: {}\n    namespace: {NS}\n{instance}    image: registry.example.com/mcp-manager:1\nservers:\n{servers}",
            kubeconfig.display()
        );
        std::fs::write(path, text).unwrap();
    }

    async fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &[]).await
    }

    async fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let state = self.dir.path().join("state");
        let out = tokio::process::Command::new(BIN)
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .current_dir(self.dir.path())
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `plan --out FILE` of the config.
    async fn save_plan(&self, file: &std::path::Path) -> Run {
        let config = self.config_path();
        self.run(&[
            "plan",
            "--out",
            file.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ])
        .await
    }

    async fn plan(&self) -> Run {
        let config = self.config_path();
        self.run(&["plan", "--detailed-exitcode", "--config", config.to_str().unwrap()])
            .await
    }

    async fn apply(&self) -> Run {
        let config = self.config_path();
        let run = self
            .run(&["apply", "--auto-approve", "--config", config.to_str().unwrap()])
            .await;
        assert_eq!(run.code, 0, "apply failed:\n{}\n{}", run.stdout, run.stderr);
        run
    }

    fn deployments(&self) -> std::collections::BTreeMap<String, Value> {
        self.fake.objects("deployments", NS)
    }

    fn services(&self) -> std::collections::BTreeMap<String, Value> {
        self.fake.objects("services", NS)
    }
}

/// A Deployment someone else made: `labels` on it, one replica of `image`
/// whose pods carry (and are selected by) `pod_labels`.
fn deployment(name: &str, labels: Value, pod_labels: Value, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": pod_labels},
            "template": {"metadata": {"labels": pod_labels}, "spec": {"containers": [{"name": name, "image": image}]}}}})
}

/// A Service someone else made, selecting `selector` (if any) on `port`.
fn service(name: &str, labels: Value, selector: Option<Value>, port: u16) -> Value {
    let mut service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
        "spec": {"ports": [{"port": port}]}});
    if let Some(selector) = selector {
        service["spec"]["selector"] = selector;
    }
    service
}

const TWO: &str = "  time:\n    command: mcp-server-time\n  tasks:\n    command: mcp-manager\n    args: [task-runner, --base-dir, /tmp/tasks]\n";

#[tokio::test(flavor = "multi_thread")]
async fn plan_and_apply_converge_an_empty_cluster_then_see_no_changes() {
    let setup = Setup::new(TWO).await;
    let plan = setup.plan().await;
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout.contains("+ start tasks") && plan.stdout.contains("+ start time"),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("2 to start"), "{}", plan.stdout);
    assert!(setup.deployments().is_empty(), "plan changed nothing");

    let apply = setup.apply().await;
    assert!(
        apply.stdout.contains("start time: applied Deployment and Service time"),
        "{}",
        apply.stdout
    );
    let deployments = setup.deployments();
    assert_eq!(deployments.keys().collect::<Vec<_>>(), ["tasks", "time"]);
    assert_eq!(setup.services().keys().collect::<Vec<_>>(), ["tasks", "time"]);
    let time = &deployments["time"];
    assert_eq!(
        time["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "mcp-manager"
    );
    assert_eq!(time["metadata"]["managedFields"][0]["manager"], "mcp-manager");
    assert_eq!(
        time["spec"]["template"]["spec"]["containers"][0]["args"],
        json!([
            "bridge",
            "--listen",
            "0.0.0.0:8080",
            "--session",
            "shared",
            "--name",
            "time",
            "--",
            "mcp-server-time"
        ])
    );
    // Server-side apply, forced, with our field manager; never a plain update.
    let requests = setup.fake.requests();
    let applies: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with("PATCH") && !r.contains("dryRun"))
        .collect();
    assert_eq!(applies.len(), 4, "{requests:#?}");
    assert!(
        applies
            .iter()
            .all(|r| r.contains("fieldManager=mcp-manager") && r.contains("force=true")),
        "{applies:#?}"
    );
    assert!(!requests.iter().any(|r| r.starts_with("PUT") || r.starts_with("POST")));

    // The cluster now matches: defaults the API server filled in are no drift.
    let again = setup.plan().await;
    assert_eq!(again.code, 0, "{}\n{}", again.stdout, again.stderr);
    assert!(again.stdout.contains("No changes"), "{}", again.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edit_made_in_the_cluster_is_drift_that_apply_puts_back() {
    let setup = Setup::new(TWO).await;
    setup.apply().await;
    setup.fake.edit("deployments", NS, "time", |d| {
        d["spec"]["replicas"] = json!(5);
        d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("evil/image:latest");
        // Someone else's annotation is theirs, not drift.
        d["metadata"]["annotations"]["team.example.com/owner"] = json!("ops");
    });
    setup
        .fake
        .edit("services", NS, "tasks", |s| s["spec"]["type"] = json!("NodePort"));
    let plan = setup.plan().await;
    assert_eq!(plan.code, 2, "{}\n{}", plan.stdout, plan.stderr);
    assert!(
        plan.stdout
            .contains("changed in the cluster, not in the config (drift)"),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("Deployment.spec.replicas"), "{}", plan.stdout);
    assert!(
        plan.stdout
            .contains("Deployment.spec.template.spec.containers[0].image"),
        "{}",
        plan.stdout
    );
    assert!(plan.stdout.contains("Service.spec.type"), "{}", plan.stdout);
    assert!(!plan.stdout.contains("team.example.com"), "{}", plan.stdout);

    setup.apply().await;
    let time = &setup.deployments()["time"];
    assert_eq!(time["spec"]["replicas"], 1);
    assert_eq!(
        time["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.com/mcp-manager:1"
    );
    assert_eq!(time["metadata"]["annotations"]["team.example.com/owner"], "ops");
    assert_eq!(setup.services()["tasks"]["spec"]["type"], "ClusterIP");
    assert_eq!(setup.plan().await.code, 0);

    // An object deleted in the cluster is put back too.
    setup.fake.remove("services", NS, "time");
    let plan = setup.plan().await;
    assert!(plan.stdout.contains("drift"), "{}", plan.stdout);
    assert!(
        plan.stdout.contains("Service time: \"(missing)\" -> \"(applied)\""),
        "{}",
        plan.stdout
    );
    setup.apply().await;
    assert!(setup.services().contains_key("time"));
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_servers_are_pruned_and_nothing_else_is_touched() {
    let setup = Setup::new(TWO).await;
    setup.apply().await;
    // Objects that are not ours: no label, and another tool's.
    setup.fake.put(
        "deployments",
        NS,
        deployment("web", json!({"app": "web"}), json!({"app": "web"}), "nginx"),
    );
    setup.fake.put(
        "services",
        NS,
        service(
            "helm-thing",
            json!({"app.kubernetes.io/managed-by": "Helm", "app.kubernetes.io/name": "tasks"}),
            None,
            80,
        ),
    );
    setup.config("  time:\n    command: mcp-server-time\n");
    let plan = setup.plan().await;
    assert_eq!(plan.code, 2);
    assert!(plan.stdout.contains("- stop tasks"), "{}", plan.stdout);
    assert!(plan.stdout.contains("removed from config"), "{}", plan.stdout);
    assert!(!plan.stdout.contains("web"), "{}", plan.stdout);
    let apply = setup.apply().await;
    assert!(
        apply.stdout.contains("stop tasks: deleted Deployment tasks"),
        "{}",
        apply.stdout
    );
    assert_eq!(setup.deployments().keys().collect::<Vec<_>>(), ["time", "web"]);
    assert_eq!(setup.services().keys().collect::<Vec<_>>(), ["helm-thing", "time"]);
    // The pods of the removed Deployment went with it.
    let pods = setup.fake.objects("pods", NS);
    assert!(pods.keys().all(|p| !p.starts_with("tasks-")), "{pods:?}");
    assert_eq!(setup.plan().await.code, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_changes_only_the_replica_count() {
    let setup = Setup::new(TWO).await;
    setup.apply().await;
    let before = setup.deployments()["time"]["spec"]["template"].clone();
    setup.config("  time:\n    command: mcp-server-time\n    replicas: 3\n  tasks:\n    command: mcp-manager\n    args: [task-runner, --base-dir, /tmp/tasks]\n");
    let plan = setup.plan().await;
    assert!(plan.stdout.contains("replicas 1 -> 3 (scale up)"), "{}", plan.stdout);
    setup.apply().await;
    let time = &setup.deployments()["time"];
    assert_eq!(time["spec"]["replicas"], 3);
    assert_eq!(time["spec"]["template"], before, "the pods do not roll");
    // With three replicas a client stays on its pod.
    assert_eq!(setup.services()["time"]["spec"]["sessionAffinity"], "ClientIP");
    assert_eq!(
        setup
            .fake
            .objects("pods", NS)
            .keys()
            .filter(|p| p.starts_with("time-"))
            .count(),
        3
    );

    // A new command rolls the pods.
    setup.config("  time:\n    command: mcp-server-time\n    args: [--local-timezone, UTC]\n    replicas: 3\n  tasks:\n    command: mcp-manager\n    args: [task-runner, --base-dir, /tmp/tasks]\n");
    let plan = setup.plan().await;
    assert!(
        plan.stdout.contains("args changed (rolling update of the pods)"),
        "{}",
        plan.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_rollout_says_why_with_the_crash_log() {
    let setup = Setup::new(
        "  time:\n    command: mcp-server-time\n    kubernetes:\n      image: registry.example.com/time:missing\n  tasks:\n    command: mcp-manager\n    kubernetes:\n      image: registry.example.com/crashloop:1\n",
    )
    .await;
    setup.apply().await;
    let plan = setup.plan().await;
    assert!(
        plan.stdout.contains("rollout failed (ProgressDeadlineExceeded)"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains("cannot pull image registry.example.com/time:missing (ImagePullBackOff)"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("change its spec (the image, say) and apply"),
        "{}",
        plan.stdout
    );
    // The crash loop is not a failed rollout yet: shown as the server's
    // error in `plan --json`, with the last lines the server wrote.
    let config = setup.config_path();
    let json = setup
        .run(&["plan", "--json", "--config", config.to_str().unwrap()])
        .await;
    assert_eq!(json.code, 0, "{}", json.stderr);
    let plan: Value = serde_json::from_str(&json.stdout).unwrap();
    let notice = plan["notices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["server"] == "time")
        .cloned()
        .unwrap_or_default();
    assert_eq!(notice["kind"], "failed", "{plan}");
    assert!(
        notice["message"].as_str().unwrap().contains("ImagePullBackOff"),
        "{plan}"
    );
    let requests = setup.fake.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("/log?") && r.contains("previous=true")),
        "{requests:#?}"
    );
    let observed = observed_errors(&setup).await;
    let tasks = &observed["tasks"];
    assert!(
        tasks.contains("CrashLoopBackOff after 3 restarts, last exit 1 (Error)"),
        "{tasks}"
    );
    assert!(
        tasks.contains("ModuleNotFoundError: No module named 'mcp_server_time'"),
        "{tasks}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn objects_we_did_not_make_are_never_taken_over() {
    let setup = Setup::new(TWO).await;
    // Someone's own Service happens to have a server's name.
    setup.fake.put(
        "services",
        NS,
        service("time", json!({"app": "clock"}), Some(json!({"app": "clock"})), 80),
    );
    for (args, code) in [(&["plan"][..], 0), (&["apply", "--auto-approve"][..], 1)] {
        let config = setup.config_path();
        let mut args = args.to_vec();
        args.extend(["--config", config.to_str().unwrap()]);
        let run = setup.run(&args).await;
        // `apply` did not do all it was asked: it says so.
        assert_eq!(run.code, code, "{}\n{}", run.stdout, run.stderr);
        assert!(
            run.stdout.contains(
                "Service time in namespace mcp was not made by mcp-manager (it lacks the label app.kubernetes.io/managed-by=mcp-manager): server `time` would take it over"
            ),
            "{}",
            run.stdout
        );
        assert!(!run.stdout.contains("start time"), "{}", run.stdout);
    }
    // The other server is not held up by it.
    assert_eq!(setup.deployments().keys().collect::<Vec<_>>(), ["tasks"]);
    assert_eq!(setup.services()["time"]["spec"]["selector"], json!({"app": "clock"}));
    assert_eq!(setup.services()["time"]["metadata"]["labels"], json!({"app": "clock"}));
}

/// Two configs in one namespace (`manager.kubernetes.instance` tells them
/// apart): neither sees, prunes or takes over the other's servers.
#[tokio::test(flavor = "multi_thread")]
async fn two_configs_in_one_namespace_keep_to_their_own_servers() {
    let setup = Setup::new(TWO).await;
    setup.apply().await;
    let team_b = setup.dir.path().join("team-b.yaml");
    let clock_and_time = "  clock:\n    command: mcp-server-time\n  time:\n    command: mcp-server-time\n";
    setup.config_at(&team_b, Some("team-b"), clock_and_time);
    let b = |args: &[&str]| {
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend(["--config".to_string(), team_b.display().to_string()]);
        let setup = &setup;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            setup.run(&args).await
        }
    };
    // B sees none of A's servers: nothing of A's to stop, and `time`, A's,
    // is held back rather than taken over.
    let plan = b(&["plan"]).await;
    assert_eq!(plan.code, 0, "{}\n{}", plan.stdout, plan.stderr);
    assert!(plan.stdout.contains("+ start clock"), "{}", plan.stdout);
    assert!(!plan.stdout.contains("- stop"), "{}", plan.stdout);
    assert!(
        plan.stdout.contains(
            "Deployment time in namespace mcp belongs to an mcp-manager config without an instance (mcp-manager.io/instance; this config's instance is `team-b`): server `time` would take it over"
        ),
        "{}",
        plan.stdout
    );
    let apply = b(&["apply", "--auto-approve"]).await;
    assert_eq!(apply.code, 1, "{}\n{}", apply.stdout, apply.stderr);
    let clock = &setup.deployments()["clock"];
    assert_eq!(clock["metadata"]["labels"]["mcp-manager.io/instance"], "team-b");
    // Not in what a Deployment cannot change, nor on its pods.
    assert!(
        clock["spec"]["selector"]["matchLabels"]
            .get("mcp-manager.io/instance")
            .is_none()
    );
    assert!(
        clock["spec"]["template"]["metadata"]["labels"]
            .get("mcp-manager.io/instance")
            .is_none()
    );
    assert_eq!(
        setup.services()["clock"]["metadata"]["labels"]["mcp-manager.io/instance"],
        "team-b"
    );
    assert!(
        setup.deployments()["time"]["metadata"]["labels"]
            .get("mcp-manager.io/instance")
            .is_none()
    );
    // A sees no change: B's server is not A's to stop.
    let plan = setup.plan().await;
    assert_eq!(plan.code, 0, "{}\n{}", plan.stdout, plan.stderr);
    // A server named like one of B's is held back the other way round.
    setup.config(&format!("{TWO}  clock:\n    command: mcp-server-time\n"));
    let plan = setup.plan().await;
    assert!(
        plan.stdout.contains(
            "Deployment clock in namespace mcp belongs to the mcp-manager config with instance `team-b` (mcp-manager.io/instance; this config sets no manager.kubernetes.instance)"
        ),
        "{}",
        plan.stdout
    );
    // Each prunes only its own.
    setup.config("  time:\n    command: mcp-server-time\n");
    let apply = setup.apply().await;
    assert!(
        apply.stdout.contains("stop tasks: deleted Deployment tasks"),
        "{}",
        apply.stdout
    );
    assert!(!apply.stdout.contains("clock"), "{}", apply.stdout);
    setup.config_at(&team_b, Some("team-b"), "  other:\n    command: mcp-server-time\n");
    let apply = b(&["apply", "--auto-approve"]).await;
    assert_eq!(apply.code, 0, "{}\n{}", apply.stdout, apply.stderr);
    assert!(
        apply.stdout.contains("stop clock: deleted Deployment clock"),
        "{}",
        apply.stdout
    );
    assert_eq!(setup.deployments().keys().collect::<Vec<_>>(), ["other", "time"]);
    assert_eq!(setup.services().keys().collect::<Vec<_>>(), ["other", "time"]);
    assert_eq!(setup.plan().await.code, 0);
    assert_eq!(b(&["plan", "--detailed-exitcode"]).await.code, 0);
}

/// An object of a server's name made by someone else after the plan looked
/// (while `apply` asked for confirmation, say) is still not taken over.
#[tokio::test(flavor = "multi_thread")]
async fn an_object_made_between_plan_and_apply_is_not_taken_over() {
    let setup = Setup::new(TWO).await;
    let theirs = deployment(
        "time",
        json!({"app.kubernetes.io/managed-by": "mcp-manager", "app.kubernetes.io/name": "time",
            "mcp-manager.io/instance": "team-b"}),
        json!({"app": "clock"}),
        "clock:1",
    );
    setup.fake.appears_after_lookup("deployments", NS, theirs.clone());
    let config = setup.config_path();
    let run = setup
        .run(&["apply", "--auto-approve", "--config", config.to_str().unwrap()])
        .await;
    // Planned as a start (nothing was there), held back when it came to it.
    assert!(run.stdout.contains("+ start time"), "{}", run.stdout);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("Deployment time in namespace mcp belongs to the mcp-manager config with instance `team-b`"),
        "{}",
        run.stderr
    );
    let time = &setup.deployments()["time"];
    assert_eq!(time["metadata"]["labels"], theirs["metadata"]["labels"]);
    assert_eq!(time["spec"]["template"]["spec"]["containers"][0]["image"], "clock:1");
    assert!(!setup.services().contains_key("time"));
    // The other server went ahead; the summary counts what was done.
    assert!(setup.deployments().contains_key("tasks"));
    assert!(
        run.stdout.contains("Applied to namespace mcp: 1 started,"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_or_scaled_to_zero_server_is_still_removed() {
    let setup = Setup::new(
        "  time:\n    command: mcp-server-time\n    kubernetes:\n      image: registry.example.com/time:missing\n  idle:\n    command: mcp-server-time\n    replicas: 0\n  tasks:\n    command: mcp-manager\n",
    )
    .await;
    setup.apply().await;
    // Zero replicas as asked is no change to make again.
    let plan = setup.plan().await;
    assert!(!plan.stdout.contains("start idle"), "{}", plan.stdout);
    assert!(plan.stdout.contains("time is failed"), "{}", plan.stdout);
    setup.config("  tasks:\n    command: mcp-manager\n");
    let plan = setup.plan().await;
    assert!(plan.stdout.contains("- stop time"), "{}", plan.stdout);
    assert!(plan.stdout.contains("- stop idle"), "{}", plan.stdout);
    setup.apply().await;
    assert_eq!(setup.deployments().keys().collect::<Vec<_>>(), ["tasks"]);
    assert_eq!(setup.services().keys().collect::<Vec<_>>(), ["tasks"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_the_cluster_or_the_plan() {
    const TOKEN: &str = "ghp_a-secret-token-value";
    const LITERAL: &str = "literal-secret-in-the-file";
    let setup = Setup::new(&format!(
        "  gh:\n    command: github-mcp\n    args: [--token, \"${{GITHUB_TOKEN}}\", --api-key={LITERAL}, --tz, \"${{TZ:-UTC}}\"]\n    environment:\n      GITHUB_TOKEN: \"${{GITHUB_TOKEN}}\"\n    kubernetes:\n      env_from_secret:\n        GITHUB_TOKEN: {{name: gh, key: token}}\n"
    ))
    .await;
    let env = [("GITHUB_TOKEN", TOKEN)];
    let config = setup.config_path();
    let config = config.to_str().unwrap();
    let mut said = String::new();
    for args in [
        &["plan", "--config", config][..],
        &["plan", "--json", "--config", config][..],
        &["apply", "--auto-approve", "--config", config][..],
    ] {
        let run = setup.run_with(args, &env).await;
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        said.push_str(&run.stdout);
        said.push_str(&run.stderr);
    }
    let cluster = serde_json::to_string(&setup.deployments()).unwrap();
    for secret in [TOKEN, LITERAL] {
        assert!(!said.contains(secret), "{secret} in the output:\n{said}");
    }
    assert!(!cluster.contains(TOKEN), "{cluster}");
    // Kubernetes fills in the variable from the Secret; defaults stay.
    assert_eq!(
        setup.deployments()["gh"]["spec"]["template"]["spec"]["containers"][0]["args"],
        json!([
            "bridge",
            "--listen",
            "0.0.0.0:8080",
            "--session",
            "shared",
            "--name",
            "gh",
            "--",
            "github-mcp",
            "--token",
            "$(GITHUB_TOKEN)",
            format!("--api-key={LITERAL}"),
            "--tz",
            "UTC"
        ])
    );
    // A change in the cluster of the args shows as changed, not its values.
    setup.fake.edit("deployments", NS, "gh", |d| {
        d["spec"]["template"]["spec"]["containers"][0]["args"][11] = json!("--api-key=other-literal-secret");
    });
    let plan = setup.run_with(&["plan", "--config", config], &env).await;
    assert!(
        plan.stdout.contains("args[11]: (sensitive value changed)"),
        "{}",
        plan.stdout
    );
    assert!(
        !plan.stdout.contains("other-literal-secret") && !plan.stdout.contains(LITERAL),
        "{}",
        plan.stdout
    );
}

/// The servers' errors as `plan` reads them from the cluster (through the
/// library, as the CLI does).
async fn observed_errors(setup: &Setup) -> std::collections::BTreeMap<String, String> {
    let outcome = mcp_manager::discovery::load_config(
        &[setup.config_path()],
        &mcp_manager::config::Environment::process_with_key([0; 32]),
    );
    let rendered = mcp_manager::kubernetes::render(&outcome.desired);
    let cluster = mcp_manager::kubernetes::cluster::Cluster::connect(&outcome.desired.manager.kubernetes)
        .await
        .unwrap();
    let live = cluster.observe(&rendered).await.unwrap();
    mcp_manager::kubernetes::plan::observed(&live)
        .servers
        .into_iter()
        .map(|(name, o)| (name, o.last_error.unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saved_plan_goes_stale_when_the_cluster_changes() {
    let setup = Setup::new(TWO).await;
    let planfile = setup.dir.path().join("plan.json");
    let saved = setup.save_plan(&planfile).await;
    assert_eq!(saved.code, 0, "{}", saved.stderr);
    // Someone else deploys one of them meanwhile.
    setup.fake.put(
        "services",
        NS,
        service(
            "time",
            json!({"app.kubernetes.io/managed-by": "mcp-manager", "app.kubernetes.io/name": "time"}),
            None,
            8080,
        ),
    );
    let stale = setup
        .run(&["apply", "--auto-approve", planfile.to_str().unwrap()])
        .await;
    assert_eq!(stale.code, 3, "{}\n{}", stale.stdout, stale.stderr);
    assert!(
        stale.stderr.contains("the cluster changed since it was made"),
        "{}",
        stale.stderr
    );
    assert!(setup.deployments().is_empty());

    // A fresh saved plan applies.
    let saved = setup.save_plan(&planfile).await;
    assert_eq!(saved.code, 0);
    let applied = setup
        .run(&["apply", "--auto-approve", planfile.to_str().unwrap()])
        .await;
    assert_eq!(applied.code, 0, "{}\n{}", applied.stdout, applied.stderr);
    assert_eq!(setup.deployments().len(), 2);

    // An object of another config's taking a new server's name holds that
    // server back: a plan saved before it no longer says what apply would do.
    setup.config(&format!("{TWO}  clock:\n    command: mcp-server-time\n"));
    let saved = setup.save_plan(&planfile).await;
    assert_eq!(saved.code, 0, "{}", saved.stderr);
    setup.fake.put(
        "services",
        NS,
        service(
            "clock",
            json!({"app.kubernetes.io/managed-by": "mcp-manager", "app.kubernetes.io/name": "clock",
                "mcp-manager.io/instance": "team-b"}),
            None,
            8080,
        ),
    );
    let stale = setup
        .run(&["apply", "--auto-approve", planfile.to_str().unwrap()])
        .await;
    assert_eq!(stale.code, 3, "{}\n{}", stale.stdout, stale.stderr);
    assert!(!setup.deployments().contains_key("clock"));
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_permissions_and_an_unreachable_cluster_are_clear_errors() {
    let setup = Setup::new(TWO).await;
    setup.fake.forbid("list", "pods");
    let plan = setup.plan().await;
    assert_eq!(plan.code, 1);
    assert!(
        plan.stderr.contains("not allowed to list Pods in namespace mcp"),
        "{}",
        plan.stderr
    );
    assert!(
        plan.stderr
            .contains("apiGroups: [\"\"], resources: [\"pods\"], verbs: [\"list\"]"),
        "{}",
        plan.stderr
    );

    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let kubeconfig = setup.dir.path().join("kubeconfig");
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    std::fs::write(
        &kubeconfig,
        text.replace(&setup.fake.url, &format!("http://127.0.0.1:{port}")),
    )
    .unwrap();
    let plan = setup.plan().await;
    assert_eq!(plan.code, 1);
    assert!(
        plan.stderr
            .contains(&format!("cannot reach the Kubernetes API at http://127.0.0.1:{port}/")),
        "{}",
        plan.stderr
    );

    // No kubeconfig at all.
    std::fs::remove_file(&kubeconfig).unwrap();
    let plan = setup.plan().await;
    assert_eq!(plan.code, 1);
    assert!(plan.stderr.contains("cannot read the kubeconfig"), "{}", plan.stderr);
}

/// `kubectl`, the real client, pointed at the fake, sees what we applied.
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_sees_the_applied_objects() {
    let Some(kubectl) = which("kubectl") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no kubectl on PATH (.ci/run installs Debian's kubernetes-client)"
        );
        eprintln!("SKIP: no kubectl on PATH (.ci/run installs Debian's kubernetes-client)");
        return;
    };
    let setup = Setup::new(TWO).await;
    setup.apply().await;
    let kubeconfig = setup.dir.path().join("kubeconfig");
    let out = tokio::process::Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "get",
            "deployments,services",
            "-n",
            NS,
            "-l",
            "app.kubernetes.io/managed-by=mcp-manager",
            "-o",
            "json",
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["Deployment/tasks", "Deployment/time", "Service/tasks", "Service/time"]
    );
    let out = tokio::process::Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "get",
            "deployment",
            "time",
            "-n",
            NS,
            "-o",
            "jsonpath={.status.readyReplicas}",
        ])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1");
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// Against a real cluster: apply the example's `tasks` server, see it become
/// ready, remove it. Runs when MCP_MANAGER_TEST_KUBECONFIG names a
/// kubeconfig (in namespace `mcp-manager-test`, which must exist; the server
/// is removed again at the end of a successful run).
#[tokio::test(flavor = "multi_thread")]
async fn against_a_real_cluster() {
    let Ok(kubeconfig) = std::env::var("MCP_MANAGER_TEST_KUBECONFIG") else {
        eprintln!("SKIP: MCP_MANAGER_TEST_KUBECONFIG is not set: no real cluster to test against");
        return;
    };
    let image =
        std::env::var("MCP_MANAGER_TEST_IMAGE").unwrap_or_else(|_| "ghcr.io/mcp-manager/mcp-manager:latest".into());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mcp-manager.yaml");
    let write = |servers: &str| {
        std::fs::write(
            &config,
            format!("manager:\n  backend: kubernetes\n  kubernetes:\n    kubeconfig: {kubeconfig}\n    namespace: mcp-manager-test\n    image: {image}\n{servers}"),
        )
        .unwrap()
    };
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    write("servers:\n  tasks:\n    command: mcp-manager\n    args: [task-runner, --base-dir, /tmp/tasks]\n");
    assert_eq!(run(&["apply", "--auto-approve"]).0, Some(0));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let (code, out) = run(&["plan", "--detailed-exitcode"]);
        if code == Some(0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never converged:\n{out}");
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    }
    write("servers: {}\n");
    assert_eq!(run(&["apply", "--auto-approve"]).0, Some(0));
}

/// `start` with `backend: kubernetes`: the controller deploys the config,
/// the gateway reaches each server through its Service (here a local
/// `mcp-manager bridge` stands in for the pod behind it, by
/// `service_url`), the cluster's reasons show in `status`, drift is put
/// back after a watch event (also once the watch was lost), and the
/// mass-removal guard holds a removal until `apply`.
#[test]
fn start_keeps_the_cluster_matching_and_routes_through_the_services() {
    use crate::service::{Service, http};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = runtime.block_on(FakeKube::start());
    let port = crate::bridge::free_port();
    let base = tempfile::tempdir().unwrap();
    let mut pod = std::process::Command::new(BIN)
        .args([
            "bridge",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--",
            BIN,
            "task-runner",
            "--base-dir",
        ])
        .arg(base.path())
        .args(["--executor", "sh -c cat"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let kube_dir = tempfile::tempdir().unwrap();
    // The namespace comes from the kubeconfig's context.
    let kubeconfig = fake.kubeconfig(kube_dir.path(), NS);
    let nowhere = crate::bridge::free_port();
    let yaml = |servers: &str| {
        format!(
            "manager:\n  backend: kubernetes\n  kubernetes:\n    kubeconfig: {}\n    instance: team-a\n    image: registry.example.com/mcp-manager:1\n    service_url: \"http://127.0.0.1:{{port}}/mcp\"\nservers:\n{servers}",
            kubeconfig.display()
        )
    };
    let both = format!(
        "  tasks:\n    command: mcp-manager\n    args: [task-runner, --token, \"${{MCP_TEST_UNSET_TOKEN}}\"]\n    restart_delay: 100ms\n    max_restart_delay: 400ms\n    kubernetes: {{port: {port}}}\n  time:\n    command: mcp-server-time\n    kubernetes: {{port: {nowhere}, image: registry.example.com/crashloop:1}}\n"
    );
    // Someone's own Service has the name of a third server.
    let both = format!("{both}  clock:\n    command: mcp-server-time\n    kubernetes: {{port: {port}}}\n");
    fake.put(
        "services",
        NS,
        service("clock", json!({"app": "clock"}), Some(json!({"app": "clock"})), port),
    );
    // Another config's server in the namespace (instance team-b), with its pods.
    let team_b = json!({"app.kubernetes.io/managed-by": "mcp-manager", "app.kubernetes.io/name": "other",
        "mcp-manager.io/instance": "team-b"});
    fake.put(
        "deployments",
        NS,
        deployment(
            "other",
            team_b.clone(),
            json!({"app.kubernetes.io/managed-by": "mcp-manager", "app.kubernetes.io/name": "other"}),
            "registry.example.com/crashloop:2",
        ),
    );
    fake.put("services", NS, service("other", team_b, None, 8080));
    let other = fake.objects("deployments", NS)["other"].clone();
    let ours = || {
        fake.objects("deployments", NS)
            .into_iter()
            .filter(|(name, _)| name != "other" && name != "late")
            .count()
    };
    let svc = Service::start(&yaml(&both));
    let eventually = |what: &str, check: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !check() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                svc.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    eventually("the controller to deploy both servers", &|| ours() == 2);
    // Ours, and the ones that are not.
    assert_eq!(
        fake.objects("services", NS).keys().collect::<Vec<_>>(),
        ["clock", "other", "tasks", "time"]
    );
    assert_eq!(
        fake.objects("deployments", NS)["tasks"]["metadata"]["labels"]["mcp-manager.io/instance"],
        "team-a"
    );
    // A variable this service does not have is the pod's to give.
    assert_eq!(
        fake.objects("deployments", NS)["tasks"]["spec"]["template"]["spec"]["containers"][0]["args"][11],
        "$(MCP_TEST_UNSET_TOKEN)"
    );

    let tasks = svc.wait_server("tasks", "running through its Service, its tools listed", |s| {
        s["phase"] == "running" && s["tools"].as_u64().unwrap_or(0) > 0 && s["cluster"]["ready"] == 1
    });
    assert_eq!(tasks["connection_type"], "http");
    assert_eq!(tasks["cluster"]["phase"], "running");
    let time = svc.wait_server("time", "the cluster's reason", |s| {
        s["last_error"].as_str().is_some_and(|e| e.contains("CrashLoopBackOff"))
    });
    assert_eq!(time["cluster"]["phase"], "backoff");
    assert!(
        time["last_error"]
            .as_str()
            .unwrap()
            .contains("No module named 'mcp_server_time'"),
        "{time}"
    );
    // The held-back server is not reached at the Service of its name (not
    // ours, though it answers on the same port): it says why instead.
    let clock = svc.wait_server("clock", "held back", |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("was not made by mcp-manager"))
    });
    assert_eq!(clock["enabled"], false, "{clock}");
    assert_eq!(clock["tools"], 0, "{clock}");
    assert!(!fake.objects("deployments", NS).contains_key("clock"));
    let logs = svc.cli(&["logs", "time"]);
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("mcp-manager: cluster: pod time-"),
        "{}",
        String::from_utf8_lossy(&logs.stdout)
    );

    let (_, body) = http(&svc, "GET", "/api/v1/servers/tasks", Some(&svc.token()), "");
    assert!(body.contains("start tasks in the cluster: new server"), "{body}");

    // Drift is put back on the watch's word (the resync is a minute away).
    fake.edit("deployments", NS, "tasks", |d| d["spec"]["replicas"] = json!(4));
    eventually("the drift to be put back", &|| {
        fake.objects("deployments", NS)["tasks"]["spec"]["replicas"] == 1
    });
    // Also after the watch was lost and its history compacted (410 Gone).
    fake.lose_watches();
    std::thread::sleep(std::time::Duration::from_millis(300));
    fake.edit("deployments", NS, "tasks", |d| d["spec"]["replicas"] = json!(3));
    eventually("the drift to be put back after a lost watch", &|| {
        fake.objects("deployments", NS)["tasks"]["spec"]["replicas"] == 1
    });

    // Someone makes an object of a new server's name just as the controller
    // goes to apply it (after it looked): held back, and said at once (not
    // at the next resync; nothing of theirs wakes the watch).
    fake.appears_after_lookup("deployments", NS, {
        let mut late = deployment("late", json!({"app": "late"}), json!({"app": "late"}), "late:1");
        late["spec"]["replicas"] = json!(0);
        late
    });
    svc.write_config(&yaml(&format!("{both}  late:\n    command: mcp-server-time\n")));
    eventually("the late server to be held back", &|| {
        svc.server("late")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("Deployment late in namespace mcp was not made by mcp-manager"))
    });
    assert_eq!(
        fake.objects("deployments", NS)["late"]["spec"]["template"]["spec"]["containers"][0]["image"],
        "late:1"
    );
    assert!(!fake.objects("services", NS).contains_key("late"));

    // A config that cannot be deployed keeps the last good state, and its
    // servers never run here as local processes.
    svc.write_config(&yaml(&format!(
        "{both}  9lives:\n    command: sleep\n    args: ['600']\n"
    )));
    eventually("the error to be said", &|| {
        svc.log().contains("the config cannot be deployed")
    });
    assert!(svc.log().contains("`9lives` is not a Kubernetes name"), "{}", svc.log());
    assert!(svc.server("9lives").is_null(), "{}", svc.server("9lives"));
    assert_eq!(ours(), 2);

    // Removing both: held by the guard, applied by `apply` (the API's).
    svc.write_config(&yaml("  {}\n").replace("servers:\n  {}\n", "servers: {}\n"));
    svc.wait("the guard to hold the removal", |s| {
        s["pending_reason"]
            .as_str()
            .is_some_and(|r| r.contains("mass-removal guard"))
    });
    assert_eq!(ours(), 2, "nothing removed yet");
    let (code, body) = http(&svc, "POST", "/api/v1/apply", Some(&svc.token()), "{}");
    assert_eq!(code, 200, "{body}");
    eventually("the servers to be removed from the cluster", &|| {
        ours() == 0 && fake.objects("services", NS).keys().eq(["clock", "other"])
    });
    // The other config's server was never ours: not shown, not touched.
    assert!(svc.server("other").is_null(), "{}", svc.server("other"));
    let now = &fake.objects("deployments", NS)["other"];
    assert_eq!(now["metadata"]["labels"], other["metadata"]["labels"]);
    assert_eq!(now["spec"], other["spec"]);
    assert!(
        svc.log().contains("stop time in the cluster: removed from config"),
        "{}",
        svc.log()
    );
    drop(svc);
    let _ = pod.kill();
    let _ = pod.wait();
}
