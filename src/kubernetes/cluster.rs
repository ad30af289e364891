//! The IO edge of `backend: kubernetes`: reads our objects from the cluster,
//! applies them (server-side apply, field manager `mcp-manager`), deletes
//! what the config no longer has (only objects carrying our labels), and
//! watches for changes. What to do is decided in [`super::plan`].

use std::time::Duration;

use anyhow::Context as _;
use futures_util::{Stream, StreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, LogParams, Patch, PatchParams, WatchEvent, WatchParams,
};
use serde_json::Value;

use super::plan::{Live, drift};
use super::{INSTANCE_LABEL, MANAGED_BY, NAME_LABEL, Rendered};
use crate::config::manager::KubernetesDefaults;
use crate::plan::{ActionKind, Plan};

/// The field manager of our server-side applies.
pub const FIELD_MANAGER: &str = "mcp-manager";
/// A request to the API server that sends nothing for this long fails (a
/// wait without a limit would hang `plan`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the API server keeps a watch open (then we resume it).
const WATCH_SECONDS: u32 = 290;

/// A connection to the cluster and the namespace servers go to.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    /// For watches: no 20 s idle limit (a quiet watch sends nothing for
    /// minutes); the server ends each after `WATCH_SECONDS`.
    watch_client: kube::Client,
    pub namespace: String,
    /// `manager.kubernetes.instance`: whose objects are ours.
    instance: Option<String>,
    /// The API server, for messages.
    pub url: String,
}

/// What [`Cluster::execute`] did: a line per change, and the servers it
/// held back (and why) because an object of their name turned out not to
/// be ours when it came to apply them.
#[derive(Debug, Default)]
pub struct Executed {
    pub done: Vec<String>,
    pub held: std::collections::BTreeMap<String, String>,
}

/// The kinds we manage, and how an error about one is told.
#[derive(Clone, Copy)]
enum Kind {
    Deployment,
    Service,
    Pod,
}

impl Kind {
    fn resource(self) -> ApiResource {
        match self {
            Kind::Deployment => ApiResource::erase::<Deployment>(&()),
            Kind::Service => ApiResource::erase::<Service>(&()),
            Kind::Pod => ApiResource::erase::<Pod>(&()),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::Service => "Service",
            Kind::Pod => "Pod",
        }
    }

    /// `apiGroups: [apps], resources: [deployments]`, as a Role writes it.
    fn rule(self, verb: &str) -> String {
        let (group, resource) = match self {
            Kind::Deployment => ("apps", "deployments"),
            Kind::Service => ("", "services"),
            Kind::Pod => ("", "pods"),
        };
        format!("apiGroups: [\"{group}\"], resources: [\"{resource}\"], verbs: [\"{verb}\"]")
    }
}

impl Cluster {
    /// Connects as `manager.kubernetes` says: its kubeconfig and context, or
    /// the usual places ($KUBECONFIG, ~/.kube/config, the pod's service
    /// account). Nothing is sent yet.
    pub async fn connect(settings: &KubernetesDefaults) -> anyhow::Result<Cluster> {
        let options = kube::config::KubeConfigOptions {
            context: settings.context.clone(),
            ..Default::default()
        };
        let config = match (&settings.kubeconfig, &settings.context) {
            (Some(path), _) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("cannot read the kubeconfig {path} (manager.kubernetes.kubeconfig)"))?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .with_context(|| format!("cannot use the kubeconfig {path}"))?
            }
            (None, Some(context)) => kube::Config::from_kubeconfig(&options)
                .await
                .with_context(|| format!("cannot use the kubeconfig context `{context}`"))?,
            (None, None) => kube::Config::infer().await.context(
                "no Kubernetes cluster configured: no kubeconfig ($KUBECONFIG, ~/.kube/config) and not in a pod; set manager.kubernetes.kubeconfig",
            )?,
        };
        let mut config = config;
        config.read_timeout = Some(REQUEST_TIMEOUT);
        config.connect_timeout = Some(Duration::from_secs(10));
        let namespace = settings
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let url = config.cluster_url.to_string();
        let mut watch_config = config.clone();
        // A dead connection under a watch still ends, a little after the server would have.
        watch_config.read_timeout = Some(Duration::from_secs(u64::from(WATCH_SECONDS) + 30));
        let client = kube::Client::try_from(config).context("cannot set up the Kubernetes client")?;
        let watch_client = kube::Client::try_from(watch_config).context("cannot set up the Kubernetes client")?;
        Ok(Cluster {
            client,
            watch_client,
            namespace,
            instance: settings.instance.clone(),
            url,
        })
    }

    fn api(&self, kind: Kind) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &kind.resource())
    }

    /// Why a server must not be applied, if an object of its name exists
    /// that we did not make (applying over it would take it over, and a
    /// later prune would delete it).
    async fn foreign(&self, kind: Kind, name: &str, server: &str) -> anyhow::Result<Option<String>> {
        let found = self
            .api(kind)
            .get_opt(name)
            .await
            .map_err(|e| self.explain(e, kind, "get", Some(name)))?;
        let Some(object) = found else { return Ok(None) };
        let label = |key: &str| object.metadata.labels.as_ref().and_then(|l| l.get(key)).cloned();
        let kind_name = kind.name();
        let ns = &self.namespace;
        if label(MANAGED_BY.0).as_deref() != Some(MANAGED_BY.1) {
            return Ok(Some(format!(
                "{kind_name} {name} in namespace {ns} was not made by mcp-manager (it lacks the label {}={}): server `{server}` would take it over; rename the server or remove that object",
                MANAGED_BY.0, MANAGED_BY.1
            )));
        }
        let theirs = label(INSTANCE_LABEL);
        if theirs != self.instance {
            let owner = match &theirs {
                Some(instance) => format!("the mcp-manager config with instance `{instance}`"),
                None => "an mcp-manager config without an instance".to_string(),
            };
            let ours = match &self.instance {
                Some(instance) => format!("this config's instance is `{instance}`"),
                None => "this config sets no manager.kubernetes.instance".to_string(),
            };
            return Ok(Some(format!(
                "{kind_name} {name} in namespace {ns} belongs to {owner} ({INSTANCE_LABEL}; {ours}): server `{server}` would take it over; rename the server, or label that object as this config's if it is"
            )));
        }
        Ok(None)
    }

    /// Says what went wrong as a user can act on it: which rule RBAC lacks,
    /// that the cluster is not reachable, or what the API server said.
    fn explain(&self, error: kube::Error, kind: Kind, verb: &str, name: Option<&str>) -> anyhow::Error {
        let what = match name {
            Some(name) => format!("{verb} {} {name}", kind.name()),
            None => format!("{verb} {}s", kind.name()),
        };
        let ns = &self.namespace;
        match error {
            kube::Error::Api(status) if status.code == 403 => anyhow::anyhow!(
                "not allowed to {what} in namespace {ns}: {}. The service account needs a Role with {{{}}} (deploy/rbac.yaml has every rule mcp-manager needs)",
                status.message,
                kind.rule(verb)
            ),
            kube::Error::Api(status) if status.code == 401 => anyhow::anyhow!(
                "the Kubernetes API at {} refused our credentials ({}): check the kubeconfig's user",
                self.url,
                status.message
            ),
            kube::Error::Api(status) => {
                anyhow::anyhow!("cannot {what} in namespace {ns}: {} ({})", status.message, status.code)
            }
            other => anyhow::anyhow!("cannot reach the Kubernetes API at {} to {what}: {other}", self.url),
        }
    }

    /// Our objects of `kind`: Deployments and Services of our instance;
    /// pods by our label alone (their template has no instance label: it
    /// would roll every pod when the instance is set), sorted to their
    /// servers' Deployments by [`Live::from_objects`].
    fn selector(&self, kind: Kind) -> String {
        match kind {
            Kind::Pod => super::managed_by(),
            _ => super::selector(self.instance.as_deref()),
        }
    }

    async fn list(&self, kind: Kind) -> anyhow::Result<(Vec<Value>, String)> {
        let list = self
            .api(kind)
            .list(&ListParams::default().labels(&self.selector(kind)))
            .await
            .map_err(|e| self.explain(e, kind, "list", None))?;
        let version = list.metadata.resource_version.clone().unwrap_or_default();
        let items = list.items.into_iter().filter_map(|o| to_value(&o)).collect();
        Ok((items, version))
    }

    /// Everything of ours in the namespace, with the drift of each object
    /// the config still has (a dry run of its apply) and the last log lines
    /// of crashing pods.
    pub async fn observe(&self, rendered: &Rendered) -> anyhow::Result<Live> {
        let (deployments, _) = self.list(Kind::Deployment).await?;
        let (services, _) = self.list(Kind::Service).await?;
        let (pods, _) = self.list(Kind::Pod).await?;
        let mut live = Live::from_objects(deployments, services, pods);
        for (name, deployed) in &rendered.servers {
            let server = live.servers.get(name);
            for (kind, ours) in [
                (Kind::Deployment, server.and_then(|s| s.deployment.as_ref())),
                (Kind::Service, server.and_then(|s| s.service.as_ref())),
            ] {
                if ours.is_none()
                    && let Some(why) = self.foreign(kind, &deployed.object, name).await?
                {
                    // The Deployment's reason first: it is what would be taken.
                    live.blocked.entry(name.clone()).or_insert(why);
                }
            }
            let Some(server) = live.servers.get_mut(name) else {
                continue;
            };
            let mut changes = Vec::new();
            for (kind, ours, theirs) in [
                (Kind::Deployment, &deployed.deployment, &server.deployment),
                (Kind::Service, &deployed.service, &server.service),
            ] {
                match theirs {
                    Some(theirs) => {
                        let after = self.server_side_apply(kind, &deployed.object, ours, true).await?;
                        changes.extend(drift(kind.name(), theirs, &after));
                    }
                    None => changes.push(crate::plan::FieldChange {
                        field: format!("{} {}", kind.name(), deployed.object),
                        before: Some(Value::String("(missing)".into())),
                        after: Some(Value::String("(applied)".into())),
                        sensitive: false,
                        forces_restart: false,
                    }),
                }
            }
            server.drift = changes;
        }
        for server in live.servers.values_mut() {
            // One crashing pod says it for all its replicas.
            if let Some(pod) = server.crashing_pod() {
                let params = LogParams {
                    previous: true,
                    tail_lines: Some(5),
                    limit_bytes: Some(4096),
                    ..Default::default()
                };
                // The log is a help, not a must: RBAC may not grant pods/log.
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
                if let Ok(text) = pods.logs(&pod, &params).await {
                    server.crash_logs.insert(pod, text);
                }
            }
        }
        Ok(live)
    }

    async fn server_side_apply(&self, kind: Kind, name: &str, object: &Value, dry_run: bool) -> anyhow::Result<Value> {
        // Into the namespace we are connected to (`manager.kubernetes` is
        // read at start; a later change of its namespace waits for a restart).
        let mut object = object.clone();
        object["metadata"]["namespace"] = Value::String(self.namespace.clone());
        let object = &object;
        let mut params = PatchParams::apply(FIELD_MANAGER).force();
        if dry_run {
            params = params.dry_run();
        }
        let applied = self
            .api(kind)
            .patch(name, &params, &Patch::Apply(object))
            .await
            .map_err(|e| self.explain(e, kind, "patch", Some(name)))?;
        to_value(&applied).context("the API server answered an apply with an unreadable object")
    }

    /// Carries out a plan made by [`super::plan::plan`] from `rendered`:
    /// applies the objects of every server it starts or changes, deletes
    /// those of every server it stops. Returns what it did, a line each.
    pub async fn execute(&self, plan: &Plan, rendered: &Rendered) -> anyhow::Result<Executed> {
        let mut out = Executed::default();
        'actions: for action in &plan.actions {
            let name = action.server.as_str();
            if action.action == ActionKind::Stop {
                out.done.extend(self.delete_server(name).await?);
                continue;
            }
            let deployed = rendered
                .servers
                .get(name)
                .with_context(|| format!("the plan names {name}, which the config does not render"))?;
            // Looked at again just before: an object of its name that another
            // config (or someone) made since the plan (while `apply` asked
            // for confirmation) is never taken over by our forced apply.
            for kind in [Kind::Deployment, Kind::Service] {
                if let Some(why) = self.foreign(kind, &deployed.object, name).await? {
                    out.held.insert(name.to_string(), why);
                    continue 'actions;
                }
            }
            // The Service first: the pods are reachable once they are ready.
            self.server_side_apply(Kind::Service, &deployed.object, &deployed.service, false)
                .await?;
            self.server_side_apply(Kind::Deployment, &deployed.object, &deployed.deployment, false)
                .await?;
            out.done.push(format!(
                "{} {name}: applied Deployment and Service {}",
                action.action.verb(),
                deployed.object
            ));
        }
        Ok(out)
    }

    /// Deletes a server's objects: those with its name label and ours, never
    /// anything else.
    async fn delete_server(&self, server: &str) -> anyhow::Result<Vec<String>> {
        let selector = format!("{},{NAME_LABEL}={server}", super::selector(self.instance.as_deref()));
        let mut done = Vec::new();
        for kind in [Kind::Deployment, Kind::Service] {
            let api = self.api(kind);
            let list = api
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| self.explain(e, kind, "list", None))?;
            for object in list.items {
                let Some(name) = object.metadata.name.clone() else {
                    continue;
                };
                match api.delete(&name, &DeleteParams::foreground()).await {
                    Ok(_) => done.push(format!("stop {server}: deleted {} {name}", kind.name())),
                    // Gone meanwhile: what we wanted.
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(e) => return Err(self.explain(e, kind, "delete", Some(&name))),
                }
            }
        }
        Ok(done)
    }

    /// A stream that yields once whenever one of our Deployments or pods
    /// changes; it lists again and resumes when a watch ends or its
    /// resourceVersion has expired (410 Gone). Errors are yielded, then it
    /// retries after a pause.
    pub fn changes(&self) -> impl Stream<Item = anyhow::Result<()>> + Send + 'static {
        let cluster = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        for kind in [Kind::Deployment, Kind::Pod] {
            let cluster = cluster.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    let result = cluster.watch_once(kind, &tx).await;
                    if tx.is_closed() {
                        return;
                    }
                    if let Err(e) = result {
                        if tx.send(Err(e)).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            });
        }
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// Lists (a change: the caller re-reads), then watches from that list's
    /// resourceVersion until the watch ends.
    async fn watch_once(&self, kind: Kind, tx: &tokio::sync::mpsc::Sender<anyhow::Result<()>>) -> anyhow::Result<()> {
        let (_, mut version) = self.list(kind).await?;
        if tx.send(Ok(())).await.is_err() {
            return Ok(());
        }
        loop {
            let params = WatchParams::default()
                .labels(&self.selector(kind))
                .timeout(WATCH_SECONDS);
            let started = tokio::time::Instant::now();
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.watch_client.clone(), &self.namespace, &kind.resource());
            let stream = match api.watch(&params, &version).await {
                Ok(stream) => stream,
                // Our resourceVersion is too old already: list again.
                Err(kube::Error::Api(status)) if status.code == 410 => return Ok(()),
                Err(e) => return Err(self.explain(e, kind, "watch", None)),
            };
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let event = event.map_err(|e| self.explain(e, kind, "watch", None))?;
                match event {
                    WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => {
                        version = o.metadata.resource_version.clone().unwrap_or(version);
                        if tx.send(Ok(())).await.is_err() {
                            return Ok(());
                        }
                    }
                    WatchEvent::Bookmark(b) => version = b.metadata.resource_version,
                    // 410 Gone: our resourceVersion is too old; list again
                    // (after a breath, should the server keep saying it).
                    WatchEvent::Error(status) if status.code == 410 => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        return Ok(());
                    }
                    WatchEvent::Error(status) => {
                        anyhow::bail!("watching {}s: {} ({})", kind.name(), status.message, status.code)
                    }
                }
            }
            if tx.is_closed() {
                return Ok(());
            }
            // The server ended the watch (its timeout): resume from where it
            // was; one that ends at once (a proxy in the way) is not retried
            // in a busy loop.
            if started.elapsed() < Duration::from_secs(1) {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

fn to_value(object: &DynamicObject) -> Option<Value> {
    serde_json::to_value(object).ok()
}
