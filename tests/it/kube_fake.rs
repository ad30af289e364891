//! An in-process fake of the Kubernetes API server, for the kinds
//! mcp-manager uses: discovery, list/get (label selectors), watch with
//! resourceVersion (and 410 Gone once history is compacted), server-side
//! apply (fieldManager, force, dryRun, defaulting), delete (cascading to
//! pods) and pod logs. It also plays the Deployment controller and the
//! kubelet, instantly: pods follow a Deployment's template, and an image
//! whose name says `crashloop` or `missing` gives the pod statuses a real
//! cluster gives (CrashLoopBackOff with a log; ImagePullBackOff and a
//! rollout past its deadline).
//!
//! What a real API server does that this does not: field ownership of
//! server-side apply beyond "the applier's fields replace, other fields
//! stay", strategic merge of lists, admission, quantities' normal forms.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Plural → (apiVersion, kind).
const KINDS: &[(&str, &str, &str)] = &[
    ("deployments", "apps/v1", "Deployment"),
    ("services", "v1", "Service"),
    ("pods", "v1", "Pod"),
];

#[derive(Default)]
struct Store {
    /// (plural, namespace, name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    version: u64,
    /// (resourceVersion, plural, type, object), oldest first.
    history: Vec<(u64, String, String, Value)>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted_below: u64,
    /// "METHOD path?query" of every request, in order.
    requests: Vec<String>,
    /// (verb, plural) pairs answered 403.
    forbidden: BTreeSet<(String, String)>,
    /// (plural, name) → an object someone else creates right after the
    /// first GET that finds no object of that name ([`FakeKube::appears_after_lookup`]).
    appears: BTreeMap<(String, String), (String, Value)>,
    uid: u64,
}

#[derive(Clone)]
struct Shared {
    store: Arc<Mutex<Store>>,
    changed: tokio::sync::broadcast::Sender<()>,
    /// Ends every open watch when sent.
    drop_watches: tokio::sync::broadcast::Sender<()>,
}

pub struct FakeKube {
    pub url: String,
    shared: Shared,
    _server: tokio::task::JoinHandle<()>,
}

impl FakeKube {
    pub async fn start() -> FakeKube {
        let (changed, _) = tokio::sync::broadcast::channel(1024);
        let (drop_watches, _) = tokio::sync::broadcast::channel(4);
        let shared = Shared {
            store: Arc::new(Mutex::new(Store::default())),
            changed,
            drop_watches,
        };
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeKube {
            url,
            shared,
            _server: server,
        }
    }

    /// A kubeconfig file for this server, namespace `namespace`.
    pub fn kubeconfig(&self, dir: &std::path::Path, namespace: &str) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tester\n    namespace: {namespace}\ncurrent-context: fake\nusers:\n- name: tester\n  user:\n    token: fake-token\n",
            self.url
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The objects of a kind in a namespace, by name.
    pub fn objects(&self, plural: &str, namespace: &str) -> BTreeMap<String, Value> {
        let store = self.shared.store.lock().unwrap();
        store
            .objects
            .iter()
            .filter(|((p, ns, _), _)| p == plural && ns == namespace)
            .map(|((_, _, name), o)| (name.clone(), o.clone()))
            .collect()
    }

    pub fn requests(&self) -> Vec<String> {
        self.shared.store.lock().unwrap().requests.clone()
    }

    /// Creates or replaces an object as another client would (kubectl
    /// edit, another tool), then lets the controllers act.
    pub fn put(&self, plural: &str, namespace: &str, object: Value) {
        let mut store = self.shared.store.lock().unwrap();
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        store.write(plural, namespace, &name, object);
        drop(store);
        let _ = self.shared.changed.send(());
    }

    /// Changes an object in place, as `kubectl edit` would.
    pub fn edit(&self, plural: &str, namespace: &str, name: &str, change: impl FnOnce(&mut Value)) {
        let mut object = self.objects(plural, namespace)[name].clone();
        change(&mut object);
        self.put(plural, namespace, object);
    }

    /// Deletes an object as another client would.
    pub fn remove(&self, plural: &str, namespace: &str, name: &str) {
        self.shared
            .store
            .lock()
            .unwrap()
            .delete(plural, namespace, name)
            .unwrap();
        let _ = self.shared.changed.send(());
    }

    /// Someone else creates `object` in `namespace` just after mcp-manager
    /// first looks for it by name and finds nothing: the race between a
    /// plan (or `apply`'s confirmation) and the apply itself.
    pub fn appears_after_lookup(&self, plural: &str, namespace: &str, object: Value) {
        let mut store = self.shared.store.lock().unwrap();
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        store.appears.insert((plural.into(), name), (namespace.into(), object));
    }

    pub fn forbid(&self, verb: &str, plural: &str) {
        let mut store = self.shared.store.lock().unwrap();
        store.forbidden.insert((verb.into(), plural.into()));
    }

    /// Ends every open watch and forgets the history, so a watcher that
    /// resumes from its last resourceVersion gets 410 Gone and must list
    /// again.
    #[allow(dead_code)] // for the service's watch test
    pub fn lose_watches(&self) {
        {
            let mut store = self.shared.store.lock().unwrap();
            store.compacted_below = store.version + 1;
            store.history.clear();
        }
        let _ = self.shared.drop_watches.send(());
    }
}

impl Store {
    fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    fn record(&mut self, plural: &str, kind: &str, object: Value) {
        let version = object["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.version);
        self.history.push((version, plural.into(), kind.into(), object));
    }

    /// Stores an object (create or update): metadata filled in, defaults
    /// applied, generation bumped when its spec changes; then the
    /// Deployment controller and kubelet act on it.
    fn write(&mut self, plural: &str, namespace: &str, name: &str, mut object: Value) -> Value {
        let key = (plural.to_string(), namespace.to_string(), name.to_string());
        let old = self.objects.get(&key).cloned();
        default(plural, &mut object, old.as_ref());
        let meta = &mut object["metadata"];
        meta["name"] = json!(name);
        meta["namespace"] = json!(namespace);
        let generation = match &old {
            Some(o) if o["spec"] == object["spec"] => o["metadata"]["generation"].as_u64().unwrap_or(1),
            Some(o) => o["metadata"]["generation"].as_u64().unwrap_or(1) + 1,
            None => 1,
        };
        if plural == "deployments" {
            object["metadata"]["generation"] = json!(generation);
        }
        let uid = match &old {
            Some(o) => o["metadata"]["uid"].clone(),
            None => {
                self.uid += 1;
                json!(format!("00000000-0000-0000-0000-{:012}", self.uid))
            }
        };
        object["metadata"]["uid"] = uid;
        object["metadata"]["creationTimestamp"] = old.as_ref().map_or(json!("2026-11-26T10:00:00Z"), |o| {
            o["metadata"]["creationTimestamp"].clone()
        });
        if object.get("status").is_none() {
            object["status"] = old.as_ref().map_or(json!({}), |o| o["status"].clone());
        }
        let version = self.next_version();
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
        self.objects.insert(key, object.clone());
        self.record(plural, kind, object.clone());
        if plural == "deployments" {
            self.roll(namespace, name);
            return self.objects[&(plural.to_string(), namespace.to_string(), name.to_string())].clone();
        }
        object
    }

    fn delete(&mut self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let object = self
            .objects
            .remove(&(plural.to_string(), namespace.to_string(), name.to_string()))?;
        let version = self.next_version();
        let mut gone = object.clone();
        gone["metadata"]["resourceVersion"] = json!(version.to_string());
        self.record(plural, "DELETED", gone);
        if plural == "deployments" {
            for pod in self.pods_of(namespace, &object) {
                self.delete("pods", namespace, &pod);
            }
        }
        Some(object)
    }

    fn pods_of(&self, namespace: &str, deployment: &Value) -> Vec<String> {
        let selector = &deployment["spec"]["selector"]["matchLabels"];
        self.objects
            .iter()
            .filter(|((p, ns, _), pod)| {
                p == "pods"
                    && ns == namespace
                    && selector
                        .as_object()
                        .is_some_and(|m| m.iter().all(|(k, v)| pod["metadata"]["labels"][k] == *v))
            })
            .map(|((_, _, name), _)| name.clone())
            .collect()
    }

    /// The Deployment controller and kubelet, instantly: the pods of the
    /// current template (old ones go), and the status they give.
    fn roll(&mut self, namespace: &str, name: &str) {
        let key = ("deployments".to_string(), namespace.to_string(), name.to_string());
        let deployment = self.objects[&key].clone();
        let template = &deployment["spec"]["template"];
        let hash = &format!("{:x}", fnv(&template.to_string()))[..8];
        let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(1);
        let image = template["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let wanted: Vec<String> = (0..replicas).map(|i| format!("{name}-{hash}-{i}")).collect();
        for pod in self.pods_of(namespace, &deployment) {
            if !wanted.contains(&pod) {
                self.delete("pods", namespace, &pod);
            }
        }
        for pod_name in &wanted {
            let key = ("pods".to_string(), namespace.to_string(), pod_name.clone());
            if self.objects.contains_key(&key) {
                continue;
            }
            let state = if image.contains("crashloop") {
                json!({"ready": false, "restartCount": 3, "image": image, "name": "mcp",
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}})
            } else if image.contains("missing") {
                json!({"ready": false, "restartCount": 0, "image": image, "name": "mcp",
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": format!("Back-off pulling image \"{image}\"")}}})
            } else {
                json!({"ready": true, "restartCount": 0, "image": image, "name": "mcp",
                    "state": {"running": {"startedAt": "2026-11-26T10:00:01Z"}}})
            };
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "labels": template["metadata"]["labels"],
                    "ownerReferences": [{"kind": "ReplicaSet", "name": format!("{name}-{hash}")}]},
                "spec": template["spec"],
                "status": {"phase": if image.contains("crashloop") || image.contains("missing") { "Pending" } else { "Running" },
                    "containerStatuses": [state]},
            });
            self.write("pods", namespace, pod_name, pod);
        }
        let ready = if image.contains("crashloop") || image.contains("missing") {
            0
        } else {
            replicas
        };
        let mut conditions = vec![
            json!({"type": "Available", "status": if ready >= replicas { "True" } else { "False" },
            "reason": if ready >= replicas { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" }}),
        ];
        conditions.push(if image.contains("missing") {
            json!({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                "message": format!("ReplicaSet \"{name}-{hash}\" has timed out progressing.")})
        } else {
            json!({"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"})
        });
        let status = json!({
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": ready,
            "availableReplicas": ready, "unavailableReplicas": replicas - ready,
            "conditions": conditions,
        });
        if deployment["status"] != status {
            let mut updated = deployment;
            updated["status"] = status;
            let version = self.next_version();
            updated["metadata"]["resourceVersion"] = json!(version.to_string());
            self.objects.insert(key, updated.clone());
            self.record("deployments", "MODIFIED", updated);
        }
    }
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// What the API server fills in that a manifest leaves out.
fn default(plural: &str, object: &mut Value, old: Option<&Value>) {
    let spec = &mut object["spec"];
    match plural {
        "deployments" => {
            for (k, v) in [
                ("revisionHistoryLimit", json!(10)),
                ("progressDeadlineSeconds", json!(600)),
                (
                    "strategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
                ),
            ] {
                if spec.get(k).is_none() {
                    spec[k] = v;
                }
            }
            let pod = &mut spec["template"]["spec"];
            for (k, v) in [
                ("restartPolicy", json!("Always")),
                ("terminationGracePeriodSeconds", json!(30)),
                ("dnsPolicy", json!("ClusterFirst")),
                ("schedulerName", json!("default-scheduler")),
            ] {
                if pod.get(k).is_none() {
                    pod[k] = v;
                }
            }
            if let Some(containers) = pod["containers"].as_array_mut() {
                for c in containers {
                    if c.get("imagePullPolicy").is_none() {
                        c["imagePullPolicy"] = json!("IfNotPresent");
                    }
                    if c.get("terminationMessagePath").is_none() {
                        c["terminationMessagePath"] = json!("/dev/termination-log");
                    }
                }
            }
        }
        "services" => {
            let ip = old
                .map(|o| o["spec"]["clusterIP"].clone())
                .unwrap_or_else(|| json!("10.96.0.42"));
            spec["clusterIP"] = ip.clone();
            spec["clusterIPs"] = json!([ip]);
            if spec.get("sessionAffinity").is_none() {
                spec["sessionAffinity"] = json!("None");
            }
            if spec.get("ipFamilies").is_none() {
                spec["ipFamilies"] = json!(["IPv4"]);
            }
        }
        _ => {}
    }
}

/// RFC 7386 merge (objects merge, the rest replaces).
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    (
        StatusCode::from_u16(code).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn json_response(value: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

/// One requirement of a label selector: `key=value` (`Some`), or `!key`
/// (`None`: the label is absent).
type Requirement = (String, Option<String>);

/// The forms mcp-manager sends; anything else is refused (400), as a real
/// API server refuses a selector it cannot parse, rather than ignored.
fn parse_selector(text: &str) -> Result<Vec<Requirement>, String> {
    let label = |k: &str| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    text.split(',')
        .map(|term| match term.split_once('=') {
            Some((k, v)) if label(k) && !v.starts_with('=') => Ok((k.to_string(), Some(v.to_string()))),
            None if term.strip_prefix('!').is_some_and(label) => Ok((term[1..].to_string(), None)),
            _ => Err(format!("unable to parse requirement: {term:?}")),
        })
        .collect()
}

fn matches(object: &Value, selector: &[Requirement]) -> bool {
    selector.iter().all(|(k, v)| {
        let label = &object["metadata"]["labels"][k];
        match v {
            Some(v) => label.as_str() == Some(v),
            None => label.is_null(),
        }
    })
}

fn discovery(path: &str) -> Option<Value> {
    let resource = |name: &str, kind: &str| {
        json!({"name": name, "singularName": "", "namespaced": true, "kind": kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})
    };
    Some(match path {
        "/version" => json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"}),
        "/api" => json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}),
        "/apis" => json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [{"name": "apps",
            "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
            "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}]}),
        "/api/v1" => json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            resource("services", "Service"), resource("pods", "Pod"),
            {"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}]}),
        "/apis/apps/v1" => json!({"kind": "APIResourceList", "groupVersion": "apps/v1",
            "resources": [resource("deployments", "Deployment")]}),
        _ => return None,
    })
}

async fn handle(State(shared): State<Shared>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query: BTreeMap<String, String> = request
        .uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                .map(|(k, v)| (k.to_string(), percent_decode(v)))
                .collect()
        })
        .unwrap_or_default();
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body: Bytes = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    shared.store.lock().unwrap().requests.push(format!(
        "{method} {path}{}",
        if query.is_empty() {
            String::new()
        } else {
            format!(
                "?{}",
                query
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("&")
            )
        }
    ));
    if method == Method::GET
        && let Some(doc) = discovery(&path)
    {
        return json_response(doc);
    }
    // /api/v1/namespaces/NS/PLURAL[/NAME[/log]] or /apis/apps/v1/...
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rest = match parts.as_slice() {
        ["api", "v1", "namespaces", rest @ ..] => rest,
        ["apis", "apps", "v1", "namespaces", rest @ ..] => rest,
        _ => {
            return status(
                404,
                "NotFound",
                &format!("the server could not find the requested resource ({path})"),
            );
        }
    };
    let (namespace, plural, name, sub) = match rest {
        [ns, plural] => (*ns, *plural, None, None),
        [ns, plural, name] => (*ns, *plural, Some(*name), None),
        [ns, plural, name, sub] => (*ns, *plural, Some(*name), Some(*sub)),
        _ => return status(404, "NotFound", "no such path"),
    };
    let Some(&(_, api_version, kind)) = KINDS.iter().find(|(p, _, _)| *p == plural) else {
        return status(
            404,
            "NotFound",
            &format!("the server doesn't have a resource type \"{plural}\""),
        );
    };
    let verb = match (&method, name, query.get("watch").map(String::as_str)) {
        (&Method::GET, None, Some("true" | "1")) => "watch",
        (&Method::GET, None, _) => "list",
        (&Method::GET, Some(_), _) => "get",
        (&Method::PATCH, _, _) => "patch",
        (&Method::DELETE, _, _) => "delete",
        _ => return status(405, "MethodNotAllowed", "method not allowed"),
    };
    let group = if api_version == "apps/v1" { "apps" } else { "" };
    if shared
        .store
        .lock()
        .unwrap()
        .forbidden
        .contains(&(verb.to_string(), plural.to_string()))
    {
        return status(
            403,
            "Forbidden",
            &format!(
                "{plural}{} is forbidden: User \"system:serviceaccount:{namespace}:mcp-manager\" cannot {verb} resource \"{plural}\" in API group \"{group}\" in the namespace \"{namespace}\"",
                if group.is_empty() {
                    String::new()
                } else {
                    format!(".{group}")
                }
            ),
        );
    }
    let selector = match query.get("labelSelector").map(|s| parse_selector(s)) {
        None => Vec::new(),
        Some(Ok(selector)) => selector,
        Some(Err(e)) => return status(400, "BadRequest", &e),
    };
    match verb {
        "list" => {
            let store = shared.store.lock().unwrap();
            let items: Vec<Value> = store
                .objects
                .iter()
                .filter(|((p, ns, _), o)| p == plural && ns == namespace && matches(o, &selector))
                .map(|(_, o)| o.clone())
                .collect();
            json_response(json!({"kind": format!("{kind}List"), "apiVersion": api_version,
                "metadata": {"resourceVersion": store.version.to_string()}, "items": items}))
        }
        "watch" => watch(shared, plural.to_string(), namespace.to_string(), selector, &query),
        "get" => {
            let name = name.unwrap_or_default();
            let store = shared.store.lock().unwrap();
            let Some(object) = store
                .objects
                .get(&(plural.to_string(), namespace.to_string(), name.to_string()))
            else {
                let mut store = store;
                if let Some((ns, object)) = store.appears.remove(&(plural.to_string(), name.to_string())) {
                    store.write(plural, &ns, name, object);
                    drop(store);
                    let _ = shared.changed.send(());
                }
                return status(404, "NotFound", &format!("{plural} \"{name}\" not found"));
            };
            if sub == Some("log") {
                let image = object["spec"]["containers"][0]["image"].as_str().unwrap_or("");
                let text = if image.contains("crashloop") {
                    "starting the server\nTraceback (most recent call last):\nModuleNotFoundError: No module named 'mcp_server_time'\n"
                } else {
                    "serving on 0.0.0.0:8080\n"
                };
                return ([(header::CONTENT_TYPE, "text/plain")], text).into_response();
            }
            json_response(object.clone())
        }
        "patch" => {
            let Some(name) = name else {
                return status(405, "MethodNotAllowed", "patch needs a name");
            };
            if content_type != "application/apply-patch+yaml" {
                return status(
                    415,
                    "UnsupportedMediaType",
                    &format!("only server-side apply here, not {content_type}"),
                );
            }
            let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) else {
                return status(
                    422,
                    "Invalid",
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                );
            };
            let Ok(applied) = serde_json::from_slice::<Value>(&body) else {
                return status(
                    400,
                    "BadRequest",
                    "the body is not JSON (this fake reads JSON, a subset of YAML)",
                );
            };
            if applied["kind"] != kind || applied["apiVersion"] != api_version || applied["metadata"]["name"] != name {
                return status(400, "BadRequest", "kind, apiVersion or name does not match the path");
            }
            let mut store = shared.store.lock().unwrap();
            let key = (plural.to_string(), namespace.to_string(), name.to_string());
            let mut object = store.objects.get(&key).cloned().unwrap_or_else(|| json!({}));
            // The applier's fields replace; labels and annotations merge.
            for (k, v) in applied.as_object().unwrap() {
                if k == "metadata" {
                    for field in ["labels", "annotations"] {
                        if let Some(values) = v.get(field) {
                            merge(&mut object["metadata"][field], values);
                        }
                    }
                } else if k != "status" {
                    object[k.as_str()] = v.clone();
                }
            }
            object["metadata"]["managedFields"] =
                json!([{"manager": manager, "operation": "Apply", "apiVersion": api_version}]);
            if query.get("dryRun").is_some_and(|d| d == "All") {
                let old = store.objects.get(&key).cloned();
                default(plural, &mut object, old.as_ref());
                return json_response(object);
            }
            let stored = store.write(plural, namespace, name, object);
            drop(store);
            let _ = shared.changed.send(());
            json_response(stored)
        }
        "delete" => {
            let name = name.unwrap_or_default();
            let mut store = shared.store.lock().unwrap();
            let Some(object) = store.delete(plural, namespace, name) else {
                return status(404, "NotFound", &format!("{plural} \"{name}\" not found"));
            };
            drop(store);
            let _ = shared.changed.send(());
            json_response(object)
        }
        _ => status(405, "MethodNotAllowed", "method not allowed"),
    }
}

/// A watch: the events after `resourceVersion`, then new ones as they come,
/// one JSON object per line, until `timeoutSeconds` or [`FakeKube::lose_watches`].
fn watch(
    shared: Shared,
    plural: String,
    namespace: String,
    selector: Vec<Requirement>,
    query: &BTreeMap<String, String>,
) -> Response {
    let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(300u64);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let mut changed = shared.changed.subscribe();
    let mut dropped = shared.drop_watches.subscribe();
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(std::time::Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut seen = from;
        {
            let store = shared.store.lock().unwrap();
            if from < store.compacted_below && from != 0 {
                let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": format!("too old resource version: {from} ({})", store.compacted_below),
                    "reason": "Expired", "code": 410}});
                let _ = tx.try_send(Ok(Bytes::from(format!("{gone}\n"))));
                return;
            }
        }
        loop {
            let events: Vec<Value> = {
                let store = shared.store.lock().unwrap();
                let events = store
                    .history
                    .iter()
                    .filter(|(v, p, _, o)| {
                        *v > seen
                            && *p == plural
                            && o["metadata"]["namespace"] == namespace.as_str()
                            && matches(o, &selector)
                    })
                    .map(|(_, _, t, o)| json!({"type": t, "object": o}))
                    .collect();
                seen = store.version;
                events
            };
            for event in events {
                if tx.send(Ok(Bytes::from(format!("{event}\n")))).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = changed.recv() => {}
                _ = dropped.recv() => return,
                _ = &mut deadline => return,
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .unwrap()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
