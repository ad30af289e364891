//! `render kubernetes`: the Kubernetes manifests of a config, a Deployment and
//! a Service per stdio server, the server running behind `mcp-manager bridge`
//! in its pod. Pure: the desired state in, documents out.
//!
//! No secret reaches a manifest: `environment` values are not rendered (they
//! may be secrets; `kubernetes.env_from_secret` names the Secret keys that
//! give env vars instead), and the spec-hash annotation is a hash of the
//! rendered pod template, which holds none.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::config::spec::{ConnectionType, ServerSpec, SessionMode};
use crate::config::{DesiredServer, DesiredState};

/// The port the bridge listens on in the pod, unless `kubernetes.port` says.
pub const DEFAULT_PORT: u16 = 8080;
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "mcp-manager");
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const HASH_ANNOTATION: &str = "mcp-manager.io/spec-hash";

/// What a render gives: the manifests, what was left out and why, and what
/// stops a server from being rendered at all.
#[derive(Debug, Default)]
pub struct Rendered {
    pub documents: Vec<Value>,
    pub notes: Vec<String>,
    pub errors: Vec<String>,
}

pub fn render(desired: &DesiredState) -> Rendered {
    let mut out = Rendered::default();
    let defaults = &desired.manager.kubernetes;
    for server in desired.servers.values() {
        let spec = &server.spec;
        if !spec.enabled {
            out.notes.push(format!("{}: disabled, not rendered", server.name));
            continue;
        }
        if spec.connection_type != ConnectionType::Stdio {
            out.notes.push(format!(
                "{}: a {} server reached over the network; nothing to deploy",
                server.name,
                spec.connection_type.as_str()
            ));
            continue;
        }
        let settings = spec.kubernetes.clone().unwrap_or_default();
        let Some(image) = settings.image.clone().or_else(|| defaults.image.clone()) else {
            out.errors.push(format!(
                "{}: no image: set `kubernetes.image` on the server or `manager.kubernetes.image`",
                server.name
            ));
            continue;
        };
        for name in spec.environment.keys() {
            if !settings.env_from_secret.contains_key(name) {
                out.notes.push(format!(
                    "{}: environment `{name}` is not rendered (its value may be a secret); give it with `kubernetes.env_from_secret`",
                    server.name
                ));
            }
        }
        let (deployment, service) = server_manifests(server, &image, defaults.namespace.as_deref());
        out.documents.push(deployment);
        out.documents.push(service);
    }
    out
}

fn labels(name: &str) -> Value {
    json!({ MANAGED_BY.0: MANAGED_BY.1, NAME_LABEL: name })
}

fn metadata(name: &str, namespace: Option<&str>, hash: &str) -> Value {
    let mut meta = json!({
        "name": name,
        "labels": labels(name),
        "annotations": { HASH_ANNOTATION: hash },
    });
    if let Some(namespace) = namespace {
        meta["namespace"] = json!(namespace);
    }
    meta
}

fn server_manifests(server: &DesiredServer, image: &str, namespace: Option<&str>) -> (Value, Value) {
    let spec = &server.spec;
    let settings = spec.kubernetes.clone().unwrap_or_default();
    let port = settings.port.unwrap_or(DEFAULT_PORT);
    let template = pod_template(&server.name, spec, image, port);
    let hash = hash(&template);
    let mut template = template;
    template["metadata"]["annotations"] = json!({ HASH_ANNOTATION: hash });
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(&server.name, namespace, &hash),
        "spec": {
            "replicas": settings.replicas.unwrap_or(spec.replicas),
            "selector": { "matchLabels": labels(&server.name) },
            "template": template,
        }
    });
    let mut service_spec = json!({
        "type": settings.service_type.as_deref().unwrap_or("ClusterIP"),
        "selector": labels(&server.name),
        "ports": [{ "name": "mcp", "port": port, "targetPort": "mcp", "protocol": "TCP" }],
    });
    if settings.session_affinity == Some(true) {
        service_spec["sessionAffinity"] = json!("ClientIP");
    }
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(&server.name, namespace, &hash),
        "spec": service_spec,
    });
    (deployment, service)
}

fn pod_template(name: &str, spec: &ServerSpec, image: &str, port: u16) -> Value {
    let settings = spec.kubernetes.clone().unwrap_or_default();
    let session = match spec.session {
        SessionMode::Shared => "shared",
        SessionMode::PerClient => "per_client",
    };
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
    let env: Vec<Value> = settings
        .env_from_secret
        .iter()
        .map(|(var, secret)| {
            json!({ "name": var, "valueFrom": { "secretKeyRef": { "name": secret.name, "key": secret.key } } })
        })
        .collect();
    // Ready (and alive) while the bridge's server runs: /healthz follows the
    // server's phase, which its MCP health checks (pings) drive.
    let probe = |period: u32, failures: u32| json!({ "httpGet": { "path": "/healthz", "port": "mcp" }, "periodSeconds": period, "failureThreshold": failures });
    let mut container = json!({
        "name": "mcp",
        "image": image,
        "command": ["mcp-manager"],
        "args": args,
        "ports": [{ "name": "mcp", "containerPort": port, "protocol": "TCP" }],
        "readinessProbe": probe(5, 2),
        "livenessProbe": probe(20, 6),
        "securityContext": { "allowPrivilegeEscalation": false, "runAsNonRoot": true },
    });
    if !env.is_empty() {
        container["env"] = Value::Array(env);
    }
    if let Some(resources) = &settings.resources {
        container["resources"] = resources.clone();
    }
    let mut pod = json!({ "containers": [container] });
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

fn hash(template: &Value) -> String {
    let digest = Sha256::digest(serde_json::to_vec(template).unwrap_or_default());
    crate::config::view::hex(&digest[..8])
}

/// The documents as a YAML stream (`---` between them).
pub fn to_yaml(documents: &[Value]) -> String {
    let mut out = String::new();
    for document in documents {
        let mut text = String::new();
        let mut emitter = yaml_rust2::YamlEmitter::new(&mut text);
        emitter.multiline_strings(false);
        // Writing into a String cannot fail.
        let _ = emitter.dump(&to_yaml_node(document));
        out.push_str(&text);
        out.push('\n');
    }
    out
}

fn to_yaml_node(value: &Value) -> yaml_rust2::Yaml {
    use yaml_rust2::Yaml;
    match value {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Array(items.iter().map(to_yaml_node).collect()),
        Value::Object(map) => {
            let mut hash = yaml_rust2::yaml::Hash::new();
            for (k, v) in map {
                hash.insert(Yaml::String(k.clone()), to_yaml_node(v));
            }
            Yaml::Hash(hash)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patches_merge_replace_and_remove() {
        let mut target = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(&mut target, &json!({"a": {"b": null, "e": 3}, "d": [2]}));
        assert_eq!(target, json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }

    #[test]
    fn yaml_round_trips() {
        let doc = json!({"kind": "Service", "spec": {"ports": [{"port": 8080}], "on": "yes", "empty": ""}});
        let text = to_yaml(std::slice::from_ref(&doc));
        let parsed = yaml_rust2::YamlLoader::load_from_str(&text).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0]["spec"]["on"].as_str(), Some("yes"));
        assert_eq!(parsed[0]["spec"]["ports"][0]["port"].as_i64(), Some(8080));
    }
}
