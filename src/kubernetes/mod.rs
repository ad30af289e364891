//! `render kubernetes`: the Kubernetes manifests of a config, a Deployment and
//! a Service per stdio server, the server running behind `mcp-manager bridge`
//! in its pod. Pure: the desired state in, documents out.
//!
//! No secret reaches a manifest: `environment` values are not rendered (they
//! may be secrets; `kubernetes.env_from_secret` names the Secret keys that
//! give env vars instead), and the spec-hash annotations are hashes of what
//! is rendered (the pod template; the Service's spec), which holds none.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::config::spec::{ConnectionType, ServerSpec, SessionMode};
use crate::config::{DesiredServer, DesiredState};

/// The port the bridge listens on in the pod, unless `kubernetes.port` says.
pub const DEFAULT_PORT: u16 = 8080;
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "mcp-manager");
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// On our Deployments and Services when `manager.kubernetes.instance` is
/// set: which config owns them. (Not on pods, nor in selectors, which a
/// Deployment cannot change.)
pub const INSTANCE_LABEL: &str = "mcp-manager.io/instance";
pub const HASH_ANNOTATION: &str = "mcp-manager.io/spec-hash";
/// On the Deployment: the server's deployed spec ([`Deployed::view`]), which
/// `plan` compares field by field with the config.
pub const SPEC_ANNOTATION: &str = "mcp-manager.io/spec";

/// The label selector of everything mcp-manager made (pods included).
pub fn managed_by() -> String {
    format!("{}={}", MANAGED_BY.0, MANAGED_BY.1)
}

/// The label selector of the Deployments and Services of one config: ours,
/// of its instance, or without any instance when it has none. Two configs
/// in a namespace never change or prune each other's servers.
pub fn selector(instance: Option<&str>) -> String {
    match instance {
        Some(instance) => format!("{},{INSTANCE_LABEL}={instance}", managed_by()),
        None => format!("{},!{INSTANCE_LABEL}", managed_by()),
    }
}

pub mod cluster;
pub mod controller;
pub mod plan;

/// What a render gives: the manifests, what was left out and why, and what
/// stops a server from being rendered at all.
#[derive(Debug, Default)]
pub struct Rendered {
    pub documents: Vec<Value>,
    /// The same objects by server name.
    pub servers: BTreeMap<String, Deployed>,
    pub notes: Vec<String>,
    pub errors: Vec<String>,
}

pub fn render(desired: &DesiredState) -> Rendered {
    let mut out = Rendered::default();
    let defaults = &desired.manager.kubernetes;
    let mut taken = std::collections::BTreeMap::new();
    for server in desired.servers.values() {
        let spec = &server.spec;
        // Where the server is written, for every note and error.
        let at = format!("{}: {}", server.provenance.location(), server.name);
        if !spec.enabled {
            out.notes.push(format!("{at}: disabled, not rendered"));
            continue;
        }
        if spec.connection_type != ConnectionType::Stdio {
            out.notes.push(format!(
                "{}: a {} server reached over the network; nothing to deploy",
                at,
                spec.connection_type.as_str()
            ));
            continue;
        }
        let settings = spec.kubernetes.clone().unwrap_or_default();
        let Some(image) = settings.image.clone().or_else(|| defaults.image.clone()) else {
            out.errors.push(format!(
                "{}: no image: set `kubernetes.image` on the server or `manager.kubernetes.image`",
                at
            ));
            continue;
        };
        for name in spec.environment.keys() {
            if !settings.env_from_secret.contains_key(name) {
                out.notes.push(format!(
                    "{}: environment `{name}` is not rendered (its value may be a secret); give it with `kubernetes.env_from_secret`",
                    at
                ));
            }
        }
        // `$(VAR)` in the command line (a `${VAR}` of the config) is
        // expanded by Kubernetes from the container's env: HOME, and what
        // `env_from_secret` gives.
        for var in kubernetes_references(spec.command.iter().chain(&spec.args)) {
            if var != "HOME" && !settings.env_from_secret.contains_key(&var) {
                out.notes.push(format!(
                    "{at}: `$({var})` in its command line comes from nothing in the pod; give `{var}` with `kubernetes.env_from_secret`"
                ));
            }
        }
        if let Some(command) = &spec.command
            && Path::new(command).is_absolute()
            && Path::new(command).starts_with(&spec.working_directory)
        {
            out.errors.push(format!(
                "{}: `command` is a path on this machine ({command}); give the path it has in the image",
                at
            ));
            continue;
        }
        let replicas = settings.replicas.unwrap_or(spec.replicas);
        if replicas > 1 && settings.session_affinity == Some(false) {
            out.notes.push(format!(
                "{}: {replicas} replicas without session affinity: a 2025-11-25 client's session lives in one pod, and its requests to another get 404",
                at
            ));
        }
        if matches!(settings.service_type.as_deref(), Some("NodePort" | "LoadBalancer")) {
            out.notes.push(format!(
                "{}: its Service is reachable from outside the cluster, and `/mcp` takes no token",
                at
            ));
        }
        let object = match object_name(&server.name) {
            Ok(object) => object,
            Err(why) => {
                out.errors.push(format!("{}: {why}", server.provenance.location()));
                continue;
            }
        };
        if let Some(other) = taken.insert(object.clone(), server.name.clone()) {
            out.errors.push(format!(
                "{} and {other} would both be `{object}` in Kubernetes: rename one",
                at
            ));
            continue;
        }
        let place = Place {
            namespace: defaults.namespace.as_deref(),
            instance: defaults.instance.as_deref(),
        };
        let deployed = server_manifests(server, &object, &image, place);
        out.documents.push(deployed.deployment.clone());
        out.documents.push(deployed.service.clone());
        out.servers.insert(server.name.clone(), deployed);
    }
    if !out.errors.is_empty() {
        // All or nothing: half a deployment is not one.
        out.documents.clear();
        out.servers.clear();
    }
    out
}

/// What one server becomes in a cluster.
#[derive(Debug, Clone)]
pub struct Deployed {
    /// The name of its Deployment and Service.
    pub object: String,
    pub deployment: Value,
    pub service: Value,
    /// What it is deployed with, as `plan` compares it: the command, the
    /// image and the `kubernetes` settings, defaults filled in. Written on
    /// the Deployment ([`SPEC_ANNOTATION`]); holds nothing that is not in
    /// the manifests (no `environment` values).
    pub view: crate::config::view::SpecView,
}

/// The fields of a [`Deployed::view`] whose change rolls the pods (the rest
/// change the Service, or only the replica count).
pub const POD_FIELDS: &[&str] = &[
    "image",
    "command",
    "args",
    "session",
    "port",
    "resources",
    "env_from_secret",
    "node_selector",
    "tolerations",
    "service_account",
    "pod_template",
];

fn deployed_view(
    server: &DesiredServer,
    image: &str,
    port: u16,
    replicas: u32,
    affinity: bool,
) -> crate::config::view::SpecView {
    let spec = &server.spec;
    let settings = spec.kubernetes.clone().unwrap_or_default();
    let mut view = crate::config::view::SpecView::new();
    if let Ok(Value::Object(map)) = serde_json::to_value(&settings) {
        view.extend(map);
    }
    view.insert("image".into(), json!(image));
    view.insert("command".into(), json!(spec.command.clone().unwrap_or_default()));
    view.insert("args".into(), json!(spec.args));
    view.insert("session".into(), json!(session_word(spec.session)));
    view.insert("port".into(), json!(port));
    view.insert("replicas".into(), json!(replicas));
    view.insert("session_affinity".into(), json!(affinity));
    view.insert(
        "service_type".into(),
        json!(settings.service_type.as_deref().unwrap_or("ClusterIP")),
    );
    view
}

fn session_word(session: SessionMode) -> &'static str {
    match session {
        SessionMode::Shared => "shared",
        SessionMode::PerClient => "per_client",
    }
}

/// The names of the `$(VAR)` references Kubernetes expands in these words
/// (`$$` is a literal `$`).
fn kubernetes_references<'a>(words: impl Iterator<Item = &'a String>) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for word in words {
        let mut rest = word.as_str();
        while let Some(i) = rest.find('$') {
            let tail = &rest[i..];
            if let Some(after) = tail.strip_prefix("$$") {
                rest = after;
            } else if let Some(body) = tail.strip_prefix("$(")
                && let Some(close) = body.find(')')
            {
                out.insert(body[..close].to_string());
                rest = &body[close + 1..];
            } else {
                rest = &tail[1..];
            }
        }
    }
    out
}

/// How the gateway reaches a server's Service unless
/// `manager.kubernetes.service_url` says otherwise.
pub const DEFAULT_SERVICE_URL: &str = "http://{name}.{namespace}.svc:{port}/mcp";

/// The desired state as `start` runs it with `backend: kubernetes`: each
/// server deployed to the cluster is reached over streamable HTTP at its
/// Service, so the gateway routes to it and health checks ping it there;
/// servers that are not deployed (remote ones) stay as they are. `ours`:
/// the servers whose objects the cluster holds as ours. What the
/// service does here only connects: the cluster is changed by
/// [`cluster`], so the local plan is applied at once, never held.
pub fn through_services(
    desired: &DesiredState,
    rendered: &Rendered,
    namespace: &str,
    key: &crate::config::view::SecretKey,
    ours: &std::collections::BTreeSet<String>,
) -> DesiredState {
    let template = desired
        .manager
        .kubernetes
        .service_url
        .as_deref()
        .unwrap_or(DEFAULT_SERVICE_URL);
    let mut out = desired.clone();
    for (name, server) in out.servers.iter_mut() {
        // Routed once its objects in the cluster are seen to be ours: not
        // before (the Service of its name may be someone else's, and the
        // server is then held back).
        let Some(deployed) = rendered.servers.get(name).filter(|_| ours.contains(name)) else {
            // Not deployed (it could not be read for the cluster): a stdio
            // server still never runs here.
            if server.spec.connection_type == ConnectionType::Stdio && server.spec.enabled {
                let mut spec = server.spec.clone();
                spec.enabled = false;
                *server = DesiredServer::new(name.clone(), spec, server.provenance.clone(), server.inferred, key);
            }
            continue;
        };
        let port = deployed
            .view
            .get("port")
            .and_then(Value::as_u64)
            .unwrap_or(u64::from(DEFAULT_PORT));
        let mut spec = server.spec.clone();
        spec.connection_type = ConnectionType::Http;
        spec.url = Some(
            template
                .replace("{name}", &deployed.object)
                .replace("{namespace}", namespace)
                .replace("{port}", &port.to_string()),
        );
        spec.command = None;
        spec.args.clear();
        spec.environment.clear();
        spec.server_type = None;
        spec.resources = None;
        spec.kubernetes = None;
        // Its pods may take minutes to be ready (an image to pull): the
        // connection keeps trying, with backoff, rather than giving up.
        spec.max_restart_attempts = u32::MAX;
        *server = DesiredServer::new(name.clone(), spec, server.provenance.clone(), server.inferred, key);
    }
    out.manager.reconcile.mode = crate::config::manager::ReconcileMode::Auto;
    out.manager.reconcile.mass_removal_guard = false;
    out
}

/// A server's name as a Kubernetes object name (an RFC 1123 label):
/// lower case, `_` as `-`. The label `app.kubernetes.io/name` keeps the
/// server's own name.
pub fn object_name(server: &str) -> Result<String, String> {
    let name = server.to_ascii_lowercase().replace('_', "-");
    // RFC 1035 (Services): a letter first.
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if valid {
        Ok(name)
    } else {
        Err(format!(
            "{server}: `{name}` is not a Kubernetes name (lower-case letters, digits and `-`, starting with a letter and ending with a letter or digit)"
        ))
    }
}

fn labels(name: &str) -> Value {
    json!({ MANAGED_BY.0: MANAGED_BY.1, NAME_LABEL: name })
}

fn metadata(object: &str, server: &str, place: Place<'_>, hash: &str) -> Value {
    let mut meta = json!({
        "name": object,
        "labels": labels(server),
        "annotations": { HASH_ANNOTATION: hash },
    });
    if let Some(instance) = place.instance {
        meta["labels"][INSTANCE_LABEL] = json!(instance);
    }
    if let Some(namespace) = place.namespace {
        meta["namespace"] = json!(namespace);
    }
    meta
}

/// Where a server's objects go: the namespace (if the config names one) and
/// the owning config's instance label.
#[derive(Debug, Clone, Copy)]
struct Place<'a> {
    namespace: Option<&'a str>,
    instance: Option<&'a str>,
}

fn server_manifests(server: &DesiredServer, object: &str, image: &str, place: Place<'_>) -> Deployed {
    let spec = &server.spec;
    let settings = spec.kubernetes.clone().unwrap_or_default();
    let port = settings.port.unwrap_or(DEFAULT_PORT);
    let template = pod_template(&server.name, spec, image, port);
    let template_hash = hash(&template);
    let mut template = template;
    // Beside the template's own annotations (`pod_template`'s, kept).
    merge_patch(
        &mut template,
        &json!({ "metadata": { "annotations": { HASH_ANNOTATION: template_hash } } }),
    );
    let replicas = settings.replicas.unwrap_or(spec.replicas);
    let affinity = settings.session_affinity.unwrap_or(replicas > 1);
    let view = deployed_view(server, image, port, replicas, affinity);
    let mut deployment_meta = metadata(object, &server.name, place, &template_hash);
    // Compact JSON: `serde_json::to_string` of a map of JSON values cannot fail.
    deployment_meta["annotations"][SPEC_ANNOTATION] = json!(serde_json::to_string(&view).unwrap_or_default());
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": deployment_meta,
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": labels(&server.name) },
            "template": template,
        }
    });
    let mut service_spec = json!({
        "type": settings.service_type.as_deref().unwrap_or("ClusterIP"),
        "selector": labels(&server.name),
        "ports": [{ "name": "mcp", "port": port, "targetPort": "mcp", "protocol": "TCP" }],
    });
    // A session lives in one pod: with several, a client must stay on its
    // pod unless told otherwise.
    if affinity {
        service_spec["sessionAffinity"] = json!("ClientIP");
    }
    // Its own hash: a change of the Service alone (type, affinity) is drift too.
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(object, &server.name, place, &hash(&service_spec)),
        "spec": service_spec,
    });
    Deployed {
        object: object.to_string(),
        deployment,
        service,
        view,
    }
}

fn pod_template(name: &str, spec: &ServerSpec, image: &str, port: u16) -> Value {
    let settings = spec.kubernetes.clone().unwrap_or_default();
    let session = session_word(spec.session);
    let mut args: Vec<String> = ["bridge", "--listen"].iter().map(|s| s.to_string()).collect();
    args.push(format!("0.0.0.0:{port}"));
    args.extend([
        "--session".into(),
        session.into(),
        "--name".into(),
        name.into(),
        "--".into(),
    ]);
    args.push(spec.command.clone().unwrap_or_default());
    args.extend(spec.args.iter().cloned());
    // A user with no home of its own: npx, uvx and friends cache under $HOME.
    let mut env = vec![json!({ "name": "HOME", "value": "/tmp" })];
    env.extend(settings.env_from_secret.iter().map(|(var, secret)| {
        json!({ "name": var, "valueFrom": { "secretKeyRef": { "name": secret.name, "key": secret.key } } })
    }));
    // Ready while the bridge's server runs: /healthz follows the server's
    // phase, which its MCP health checks (pings) drive. Alive while the
    // bridge answers: it restarts its server itself, and exits when it gives
    // up.
    let readiness =
        json!({ "httpGet": { "path": "/healthz", "port": "mcp" }, "periodSeconds": 5, "failureThreshold": 2 });
    let liveness = json!({ "tcpSocket": { "port": "mcp" }, "periodSeconds": 20, "failureThreshold": 3 });
    let mut container = json!({
        "name": "mcp",
        "image": image,
        "command": ["mcp-manager"],
        "args": args,
        "ports": [{ "name": "mcp", "containerPort": port, "protocol": "TCP" }],
        "readinessProbe": readiness,
        "livenessProbe": liveness,
        "env": env,
        "volumeMounts": [{ "name": "tmp", "mountPath": "/tmp" }],
        // The restricted Pod Security level; not root, whatever user the
        // image names (`pod_template` may say otherwise).
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "capabilities": { "drop": ["ALL"] },
            "seccompProfile": { "type": "RuntimeDefault" },
        },
    });
    if let Some(resources) = &settings.resources {
        container["resources"] = resources.clone();
    }
    let mut pod = json!({ "containers": [container], "volumes": [{ "name": "tmp", "emptyDir": {} }] });
    if let Some(account) = &settings.service_account {
        pod["serviceAccountName"] = json!(account);
    }
    if !settings.node_selector.is_empty() {
        pod["nodeSelector"] = json!(settings.node_selector);
    }
    if !settings.tolerations.is_empty() {
        pod["tolerations"] = Value::Array(settings.tolerations.clone());
    }
    let mut template = json!({ "metadata": { "labels": labels(name) }, "spec": pod });
    if let Some(patch) = &settings.pod_template {
        merge_patch(&mut template, patch);
    }
    template
}

/// RFC 7386 JSON merge patch: objects merge, `null` removes, anything else
/// replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(object) = target else {
        unreachable!("made an object just above")
    };
    for (key, value) in patch {
        if value.is_null() {
            object.remove(key);
        } else {
            merge_patch(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn hash(value: &Value) -> String {
    let digest = Sha256::digest(serde_json::to_vec(value).unwrap_or_default());
    crate::config::view::hex(&digest[..8])
}

/// The documents as a YAML stream (`---` before each). Block style; every
/// string value double-quoted (as JSON escapes it, which YAML reads the
/// same), so no YAML 1.1 reader takes `on`, `0b1` or `1_000` for a
/// boolean or a number; keys bare when they are plain names.
pub fn to_yaml(documents: &[Value]) -> String {
    let mut out = String::new();
    for document in documents {
        out.push_str("---\n");
        emit(&mut out, document, 0);
    }
    out
}

fn key(k: &str) -> String {
    let plain = k.starts_with(|c: char| c.is_ascii_alphabetic())
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '-' | '_'))
        && !matches!(
            k.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "on" | "off" | "true" | "false" | "null"
        );
    if plain {
        k.to_string()
    } else {
        scalar(&Value::String(k.to_string()))
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::Object(map) if map.is_empty() => "{}".into(),
        Value::Array(items) if items.is_empty() => "[]".into(),
        // Numbers, booleans, null and strings as JSON writes them.
        other => other.to_string(),
    }
}

fn is_collection(value: &Value) -> bool {
    matches!(value, Value::Object(m) if !m.is_empty()) || matches!(value, Value::Array(a) if !a.is_empty())
}

fn emit(out: &mut String, value: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                if is_collection(v) {
                    out.push_str(&format!("{pad}{}:\n", key(k)));
                    emit(out, v, indent + 2);
                } else {
                    out.push_str(&format!("{pad}{}: {}\n", key(k), scalar(v)));
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                if is_collection(item) {
                    // The item's first line goes after the dash.
                    let mut inner = String::new();
                    emit(&mut inner, item, indent + 2);
                    out.push_str(&format!("{pad}- {}", inner.trim_start_matches(' ')));
                } else {
                    out.push_str(&format!("{pad}- {}\n", scalar(item)));
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> DesiredState {
        let files = [crate::config::SourceFile {
            path: "/cfg/mcp-manager.yaml".into(),
            kind: crate::config::SourceKind::Yaml,
            text: yaml.to_string(),
        }];
        let outcome = crate::config::load(
            &files,
            &crate::config::Environment {
                lookup: &|_| None,
                secret_key: [0; 32],
            },
        );
        assert_eq!(outcome.error_count(), 0, "{:?}", outcome.diagnostics);
        outcome.desired
    }

    #[test]
    fn through_services_reaches_deployed_servers_at_their_service_and_runs_no_stdio_here() {
        let desired = load(
            "manager:\n  kubernetes: {image: img, namespace: ignored}\n  reconcile: {mode: manual}\nservers:\n  tasks:\n    command: mcp-manager\n    replicas: 2\n    kubernetes: {port: 9000}\n  remote:\n    url: https://example.com/mcp\n",
        );
        let rendered = render(&desired);
        let ours = ["tasks".to_string()].into();
        let routed = through_services(&desired, &rendered, "prod", &[0; 32], &ours);
        let tasks = &routed.servers["tasks"].spec;
        assert_eq!(tasks.connection_type, ConnectionType::Http);
        assert_eq!(tasks.url.as_deref(), Some("http://tasks.prod.svc:9000/mcp"));
        assert!(tasks.command.is_none() && tasks.args.is_empty());
        assert_eq!(tasks.replicas, 2);
        assert_eq!(routed.servers["remote"], desired.servers["remote"]);
        // The connections are made at once; the cluster's plan is what waits.
        assert_eq!(
            routed.manager.reconcile.mode,
            crate::config::manager::ReconcileMode::Auto
        );
        // A stdio server that was not rendered is never started here.
        let nothing = Rendered::default();
        let routed = through_services(&desired, &nothing, "prod", &[0; 32], &ours);
        assert!(!routed.servers["tasks"].spec.enabled);
        // Nor one not (yet) seen as ours in the cluster.
        let routed = through_services(&desired, &rendered, "prod", &[0; 32], &Default::default());
        assert!(!routed.servers["tasks"].spec.enabled);
        assert_eq!(routed.servers["remote"], desired.servers["remote"]);
    }

    #[test]
    fn object_names_follow_kubernetes_rules() {
        assert_eq!(object_name("Tasks_Alpha").as_deref(), Ok("tasks-alpha"));
        assert!(object_name("tasks-").is_err());
        assert!(object_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn merge_patches_merge_replace_and_remove() {
        let mut target = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(&mut target, &json!({"a": {"b": null, "e": 3}, "d": [2]}));
        assert_eq!(target, json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }

    #[test]
    fn yaml_round_trips() {
        let doc = json!({"kind": "Service", "spec": {"ports": [{"port": 8080, "name": "0b1"}], "on": "yes", "empty": "",
            "lines": "a\nb \"q\"", "list": [["x"], {}], "n": 1.5}});
        let text = to_yaml(std::slice::from_ref(&doc));
        let parsed = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0]["spec"]["on"].as_str(), Some("yes"));
        assert_eq!(parsed[0]["spec"]["ports"][0]["port"].as_i64(), Some(8080));
        assert_eq!(parsed[0]["spec"]["ports"][0]["name"].as_str(), Some("0b1"));
        assert_eq!(parsed[0]["spec"]["lines"].as_str(), Some("a\nb \"q\""));
        assert_eq!(parsed[0]["spec"]["list"][0][0].as_str(), Some("x"));
        assert_eq!(parsed[0]["spec"]["n"].as_f64(), Some(1.5));
        assert!(text.contains("\"on\": \"yes\""), "{text}");
    }
}
