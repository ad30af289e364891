//! The reconcile loop (DESIGN 4): consumes a closed set of events — config loaded,
//! instance reports, API requests — and makes the running servers match the
//! desired state, exactly as [`plan::plan`] says.
//!
//! Architecture invariant: this task is the only writer of observed state (in
//! memory and in sled). The API and the CLI read snapshots and send requests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::config::{DesiredServer, DesiredState, Diagnostic, Environment, LoadOutcome, ServerSpec};
use crate::discovery;
use crate::gateway::Registry;
use crate::gateway::pins::PinRecord;
use crate::gateway::registry::{Lists, Settings as GatewaySettings};
use crate::plan::{self, ActionKind, Plan};
use crate::state::{EventKind, EventRecord, Health, InstanceRecord, ObservedState, Phase, StateStore};
use crate::supervisor::instance::{Command, Context, InstanceEvent, InstanceHandle, InstanceSettings, Limit, Live};
use crate::supervisor::logs::LogBook;
use crate::supervisor::process;

mod instances;
pub mod lifecycle;
mod pin_checks;
mod snapshot;

use crate::status::health_word;
pub use crate::status::{RescanReport, ServerStatus, Snapshot, Sync};
use pin_checks::approved;

use lifecycle::{Generation, Lifecycle, Slot};

/// How `start` was asked to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub config_paths: Vec<PathBuf>,
    pub monitoring: bool,
    /// The install's key for secret fingerprints (the state dir's `secret-key`).
    pub secret_key: crate::config::view::SecretKey,
    /// Where OAuth tokens live (`STATE_DIR/oauth`); none: no server logs in.
    pub tokens_dir: Option<PathBuf>,
    /// `backend: kubernetes`: the servers run in a cluster, which the
    /// controller of [`crate::kubernetes::controller`] keeps matching the
    /// config; here they are reached through their Services.
    pub kubernetes: Option<KubernetesHooks>,
}

/// What ties the reconciler to the Kubernetes controller.
#[derive(Debug, Clone)]
pub struct KubernetesHooks {
    /// The namespace the servers' Services are in.
    pub namespace: String,
    /// `manager.kubernetes` as the service started with it.
    pub settings: crate::config::manager::KubernetesDefaults,
    /// Every config the reconciler takes (the last good state, as it runs
    /// it), for the controller to deploy.
    pub desired: watch::Sender<Option<Arc<DesiredState>>>,
    /// `apply` (API, dashboard): the controller applies its held plan.
    pub apply: mpsc::Sender<ClusterApply>,
}

/// An `apply` for the cluster: with hashes, only if its plan is still that one.
#[derive(Debug)]
pub struct ClusterApply {
    pub expect: Option<(String, String)>,
    pub reply: Reply<Result<Plan, CommandError>>,
}

/// A reply channel.
pub type Reply<T> = oneshot::Sender<T>;

/// What the API (and so the CLI) can ask of the reconciler.
pub enum Request {
    StartServer(String, Reply<Result<String, CommandError>>),
    StopServer(String, Reply<Result<String, CommandError>>),
    RestartServer(String, Reply<Result<String, CommandError>>),
    /// The plan that would run now (also when held for `apply`).
    Plan(Reply<Plan>),
    /// Execute the current plan; with hashes, only if it is still that plan.
    Apply {
        expect: Option<(String, String)>,
        reply: Reply<Result<Plan, CommandError>>,
    },
    /// Reload the config files now (the watcher's request).
    Reload,
    /// The Kubernetes controller's report on the cluster.
    Cluster(Box<crate::status::ClusterReport>),
    /// Re-scan the config now and report what changed (`discover --rescan`).
    Rescan(Reply<RescanReport>),
    /// Accept the current definitions of a server's changed tools (all, or one)
    /// as their new pins. Replies with the tools approved.
    Approve {
        server: String,
        tool: Option<String>,
        reply: Reply<Result<Vec<String>, CommandError>>,
    },
    /// Stop every server and end the loop.
    Shutdown(Reply<()>),
}

#[derive(Debug, thiserror::Error, Serialize)]
pub enum CommandError {
    #[error("no server named `{0}` in the configuration")]
    NotFound(String),
    #[error(
        "the plan is stale: the configuration or the running servers changed since it was made; run `mcp-manager plan` again"
    )]
    Stale,
    #[error("the configuration has errors; fix them first (see `mcp-manager status`)")]
    ConfigInvalid,
    #[error("server `{0}` has no tool named `{1}` (see `mcp-manager capabilities --server {0}`)")]
    NoSuchTool(String, String),
    /// The cluster (`backend: kubernetes`) could not be changed, or its
    /// controller is busy.
    #[error("{0}")]
    Cluster(String),
}

/// A timer firing every `period` (never while it is `None`), re-armed when the
/// period changes. Cancel-safe: a wait dropped early changes nothing.
#[derive(Default)]
struct Every {
    period: Option<Duration>,
    next: Option<tokio::time::Instant>,
}

impl Every {
    fn set(&mut self, period: Option<Duration>) {
        let period = period.filter(|p| !p.is_zero());
        if period != self.period {
            self.period = period;
            self.next = period.map(|p| tokio::time::Instant::now() + p);
        }
    }

    async fn wait(&mut self) {
        match self.next {
            Some(at) => {
                tokio::time::sleep_until(at).await;
                self.next = self.period.map(|p| tokio::time::Instant::now() + p);
            }
            None => std::future::pending().await,
        }
    }
}

/// The parts of a running reconciler that the API needs.
#[derive(Clone)]
pub struct Handle {
    pub requests: mpsc::Sender<Request>,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub events: broadcast::Sender<EventRecord>,
    pub logs: LogBook,
    pub store: Arc<StateStore>,
    /// The gateway's routing table.
    pub registry: Arc<Registry>,
}

/// Per-server runtime: its lifecycle, and the instances it has alive.
#[derive(Default)]
struct Runtime {
    lifecycle: Lifecycle,
    /// The spec new instances start with.
    spec: Option<Arc<ServerSpec>>,
    /// Every live instance (current, being replaced or stopping) until it
    /// reports [`InstanceEventKind::Gone`].
    instances: BTreeMap<Slot, InstanceHandle>,
    /// Phase and health of the current generation's instances, per replica.
    phases: BTreeMap<u32, Phase>,
    health: BTreeMap<u32, Health>,
    /// Which generation `phases` and `health` describe.
    phases_gen: Generation,
    /// The processes of live instances: removed only when their group is gone.
    records: BTreeMap<Slot, InstanceRecord>,
    retry_at_ms: Option<u64>,
}

enum Internal {
    /// A config load finished.
    Loaded(Box<LoadOutcome>),
}

pub struct Reconciler {
    options: Options,
    /// Starts the gateway's `session: per_client` sessions (the registry
    /// holds it weakly).
    _private: Arc<dyn crate::gateway::relay::PrivateStarter>,
    store: Arc<StateStore>,
    desired: DesiredState,
    /// The last config that loaded without errors, per file (DESIGN 4.5).
    last_good: DesiredState,
    observed: ObservedState,
    runtimes: BTreeMap<String, Runtime>,
    /// Wakes the task that flushes sled to disk (off the loop; requests that
    /// come during a flush make one more).
    flush: Arc<tokio::sync::Notify>,
    /// Every instance task; awaited (or aborted at the deadline) on shutdown.
    tasks: tokio::task::JoinSet<()>,
    /// Stopping every server: no new starts, no new plans.
    shutting_down: bool,
    config_errors: Vec<Diagnostic>,
    pending: Option<(Plan, String)>,
    /// `backend: kubernetes`: the cluster as its controller last reported it.
    cluster: Option<crate::status::ClusterReport>,
    applied_revision: Option<String>,
    attempted_revision: Option<String>,
    started_at_ms: u64,
    loaded_once: bool,
    ctx: Context,
    instance_events: mpsc::UnboundedReceiver<InstanceEvent>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    requests: mpsc::Receiver<Request>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    events: broadcast::Sender<EventRecord>,
    event_log_size: usize,
    /// The servers the current plan would act on, and the hash of its inputs.
    sync_cache: Option<(String, BTreeSet<String>)>,
    /// Tool pins (a copy of sled's): server → tool → record.
    pins: BTreeMap<String, BTreeMap<String, PinRecord>>,
    /// What each server offers, as last listed.
    lists: BTreeMap<String, Arc<Lists>>,
    /// Tools whose definitions differ from their pins, per server.
    changed_tools: BTreeMap<String, Vec<String>>,
    /// The manager settings in effect, shared with snapshot readers.
    manager: Arc<crate::config::ManagerSettings>,
    /// Where the config is read from (`--config` and `config_directories`).
    watched: Vec<PathBuf>,
    /// Config loads run one at a time, newest wins: a load in flight, and
    /// whether another was asked for meanwhile.
    loading: bool,
    reload_again: bool,
    /// `discover --rescan` callers, with the desired state when they asked.
    rescans: Vec<(Reply<RescanReport>, DesiredState)>,
    /// The state store was found damaged when opened: why. Tools without a
    /// pin are then not trusted on first use (their pins may be what was
    /// lost) but held as changed until approved.
    store_damage: Option<String>,
    /// Tools reported as having no trusted pin, so each is reported once.
    unverified_reported: BTreeSet<(String, String)>,
    /// Why writes to the state store fail, while they do.
    store_error: std::cell::RefCell<Option<String>>,
    /// Servers whose observed state could not be saved (saved again once the
    /// store works).
    unsaved: std::cell::RefCell<BTreeSet<String>>,
}

impl Reconciler {
    /// Opens the state store and recovers from an earlier run: process groups it
    /// recorded are killed (when pid and start time say they are ours) and their
    /// servers marked stopped, so the first plan starts them again with their
    /// restart counts and history intact.
    pub fn new(options: Options, store: StateStore) -> anyhow::Result<(Reconciler, Handle)> {
        let store = Arc::new(store);
        let mut observed = store.load()?;
        let mut recovered = Vec::new();
        for (name, server) in &mut observed.servers {
            for record in server.instances.drain(..) {
                if let Some(start) = record.start_time {
                    let killed = process::kill_recorded_group(record.pid, start);
                    tracing::debug!(server = %name, pid = record.pid, "recovery: {killed} leftover process(es) killed");
                    if killed > 0 {
                        let message = format!("{name}: killed {killed} leftover process(es) of pid {}", record.pid);
                        tracing::info!("{message}");
                        recovered.push(message);
                    }
                }
            }
            if let Some(view) = server.applied.as_mut()
                && crate::config::view::forget_legacy(view)
            {
                tracing::info!(server = %name, "unkeyed secret fingerprints from an earlier version removed");
            }
            if server.phase != Phase::Failed {
                server.phase = Phase::Stopped;
            }
            server.health = Health::Unknown;
            server.running_since_ms = None;
            store.put_server(name, server)?;
        }
        let (events, _) = broadcast::channel(1024);
        let (requests_tx, requests) = mpsc::channel(64);
        let (snapshot, snapshot_rx) = watch::channel(Arc::new(Snapshot::default()));
        let (instance_tx, instance_events) = mpsc::unbounded_channel();
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let logs = LogBook::default();
        let defaults = crate::config::ManagerSettings::default();
        let registry = Arc::new(Registry::default());
        let pins = store.pins()?;
        for (server, tools) in &pins {
            registry.set_pins(server, approved(tools));
        }
        let ctx = Context {
            events: instance_tx,
            logs: logs.clone(),
            live: Arc::new(std::sync::RwLock::new(Live {
                probes: Limit::new(defaults.health_monitoring.max_concurrent_health_checks),
                starts: Limit::new(defaults.performance.max_startup_concurrency),
                settings: InstanceSettings {
                    monitoring: options.monitoring,
                    backoff_reset_after: defaults.recovery.backoff_reset_after,
                    jitter: defaults.recovery.jitter,
                },
            })),
            live_version: Arc::new(tokio::sync::watch::channel(0).0),
            registry: registry.clone(),
            tokens_dir: options.tokens_dir.clone(),
        };
        // The gateway holds the starter weakly (it holds the registry): the
        // reconciler keeps it alive, and the cycle is broken.
        let private: Arc<dyn crate::gateway::relay::PrivateStarter> =
            Arc::new(crate::supervisor::instance::PrivateSessions::new(ctx.clone()));
        let _ = registry.private.set(Arc::downgrade(&private));
        let handle = Handle {
            requests: requests_tx,
            snapshot: snapshot_rx,
            events: events.clone(),
            logs,
            store: store.clone(),
            registry,
        };
        let mut reconciler = Reconciler {
            options,
            store,
            desired: DesiredState::default(),
            last_good: DesiredState::default(),
            observed,
            runtimes: BTreeMap::new(),
            tasks: tokio::task::JoinSet::new(),
            flush: Arc::new(tokio::sync::Notify::new()),
            shutting_down: false,
            config_errors: Vec::new(),
            pending: None,
            cluster: None,
            applied_revision: None,
            attempted_revision: None,
            started_at_ms: crate::now_ms(),
            loaded_once: false,
            ctx,
            _private: private,
            instance_events,
            internal_tx,
            internal_rx,
            requests,
            snapshot,
            events,
            event_log_size: defaults.storage.event_log_size,
            sync_cache: None,
            pins,
            lists: BTreeMap::new(),
            changed_tools: BTreeMap::new(),
            manager: Arc::default(),
            watched: Vec::new(),
            loading: false,
            reload_again: false,
            rescans: Vec::new(),
            store_damage: None,
            unverified_reported: BTreeSet::new(),
            store_error: std::cell::RefCell::new(None),
            unsaved: std::cell::RefCell::new(BTreeSet::new()),
        };
        if let Some(damage) = reconciler.store.damage() {
            let damage = damage.to_string();
            tracing::error!("{damage}");
            reconciler.event(EventKind::Recovery, None, damage.clone());
            reconciler.store_damage = Some(damage);
        }
        for message in recovered {
            reconciler.event(EventKind::Recovery, None, message);
        }
        Ok((reconciler, handle))
    }

    /// Runs until a `Shutdown` request; then every server has been stopped.
    pub async fn run(mut self) {
        let flusher = {
            let (store, flush) = (self.store.clone(), self.flush.clone());
            tokio::spawn(async move {
                loop {
                    flush.notified().await;
                    if let Err(e) = store.flush_async().await {
                        tracing::error!("cannot flush observed state: {e}");
                    }
                }
            })
        };
        self.run_loop().await;
        flusher.abort();
    }

    async fn run_loop(&mut self) {
        self.reload();
        self.publish();
        // Routine health probes only mark the snapshot stale; it is republished at
        // most once a second. Everything else publishes at once.
        let mut stale = false;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // `discovery.discovery_interval` and `recovery.recovery_check_interval`.
        let mut rescan = Every::default();
        let mut recovery = Every::default();
        loop {
            // At most once a second, whatever the settings say.
            let at_least_1s = |d: Option<Duration>| d.map(|d| d.max(Duration::from_secs(1)));
            rescan.set(at_least_1s(self.desired.manager.discovery.discovery_interval));
            recovery.set(at_least_1s(self.desired.manager.recovery.recovery_check_interval));
            let changed = tokio::select! {
                () = rescan.wait() => {
                    tracing::debug!("discovery_interval: re-scanning the config");
                    self.reload();
                    false
                }
                () = recovery.wait() => self.recover_failed(),
                Some(event) = self.instance_events.recv() => {
                    let mut changed = self.on_instance(event);
                    // Coalesce bursts: apply everything queued before publishing.
                    while let Ok(event) = self.instance_events.try_recv() {
                        changed |= self.on_instance(event);
                    }
                    changed
                }
                Some(internal) = self.internal_rx.recv() => {
                    self.on_internal(internal);
                    true
                }
                // Instance tasks report their end themselves (`Gone`): this
                // only frees finished tasks.
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => false,
                _ = tick.tick() => self.retry_saves() | std::mem::take(&mut stale),
                request = self.requests.recv() => match request {
                    Some(Request::Shutdown(reply)) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(request) => {
                        self.on_request(request);
                        true
                    }
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
            };
            if changed {
                self.publish();
                stale = false;
            } else {
                stale = true;
            }
        }
    }

    /// Loads the config off the loop (it reads files) and reports back. One load
    /// runs at a time: asked for during a load, another follows it, so the
    /// newest files always win and an older load never lands last.
    fn reload(&mut self) {
        if self.loading {
            self.reload_again = true;
            return;
        }
        self.loading = true;
        let paths = self.options.config_paths.clone();
        let key = self.options.secret_key;
        let tx = self.internal_tx.clone();
        let for_cluster = self.options.kubernetes.is_some();
        tokio::task::spawn_blocking(move || {
            // What goes to a cluster: no value of the environment in a
            // server's command line (`Environment::for_cluster`).
            let environment = if for_cluster {
                Environment::for_cluster(key)
            } else {
                Environment::process_with_key(key)
            };
            let outcome = discovery::load_config(&paths, &environment);
            let _ = tx.send(Internal::Loaded(Box::new(outcome)));
        });
    }

    /// `recovery.recovery_check_interval`: servers that gave up (`failed`, their
    /// restart attempts used up) and should run get one new start each.
    fn recover_failed(&mut self) -> bool {
        // Only servers whose applied spec is the desired one: a change still
        // waiting for `apply` is not started behind the user's back.
        let failed: Vec<String> = self
            .observed
            .servers
            .iter()
            .filter(|(name, o)| {
                o.phase == Phase::Failed
                    && !o.suspended
                    && self.desired.servers.get(*name).is_some_and(|d| {
                        d.spec.enabled && d.spec.auto_restart && o.spec_hash.as_deref() == Some(d.spec_hash.as_str())
                    })
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &failed {
            self.event(
                EventKind::Recovery,
                Some(name),
                format!("{name} failed; starting it again (recovery_check_interval)"),
            );
            self.restart(name);
        }
        !failed.is_empty()
    }

    fn event(&self, kind: EventKind, server: Option<&str>, message: String) {
        self.event_with(kind, server, message, None, None);
    }

    fn event_with(
        &self,
        kind: EventKind,
        server: Option<&str>,
        message: String,
        phase: Option<Phase>,
        health: Option<Health>,
    ) {
        let record = EventRecord {
            seq: 0,
            at_ms: crate::now_ms(),
            kind,
            server: server.map(str::to_string),
            message,
            phase,
            health,
        };
        match self.store.append_event(record, self.event_log_size) {
            Ok(record) => {
                let _ = self.events.send(record);
            }
            Err(e) => self.store_failed(&e),
        }
    }

    fn persist(&self, name: &str) {
        let result = match self.observed.servers.get(name) {
            Some(server) => self.store.put_server(name, server),
            None => self.store.remove_server(name),
        };
        match result {
            Ok(()) => {
                self.unsaved.borrow_mut().remove(name);
            }
            Err(e) => {
                self.store_failed(&e);
                self.unsaved.borrow_mut().insert(name.to_string());
            }
        }
    }

    /// A write to the state store failed (a full disk, say): said once, with
    /// the cause; what was not saved is saved again once the store can.
    fn store_failed(&self, e: &crate::state::StateError) {
        let mut error = self.store_error.borrow_mut();
        if error.is_none() {
            let text = format!(
                "{}; the service keeps running on what it knows and saves it again once the store can",
                crate::state::error_chain(e)
            );
            tracing::error!("{text}");
            *error = Some(text);
        }
    }

    /// While the store fails: saves everything it should hold again (writes
    /// it took just before failing may be lost with the reopen). Returns
    /// whether the store works again.
    fn retry_saves(&mut self) -> bool {
        if self.store_error.borrow().is_none() {
            return false;
        }
        let mut unsaved: Vec<String> = self.unsaved.borrow().iter().cloned().collect();
        unsaved.extend(self.observed.servers.keys().cloned());
        unsaved.sort();
        unsaved.dedup();
        for name in &unsaved {
            self.persist(name);
        }
        for (server, tools) in &self.pins {
            for (tool, record) in tools {
                if let Err(e) = self.store.put_pin(server, tool, record) {
                    self.store_failed(&e);
                    return false;
                }
            }
        }
        if !self.unsaved.borrow().is_empty() || self.store.flush().is_err() {
            return false;
        }
        *self.store_error.borrow_mut() = None;
        tracing::info!(
            "the state store saves again ({} server record(s) saved that could not be before)",
            unsaved.len()
        );
        self.event(
            EventKind::Recovery,
            None,
            "the state store saves again after failing".into(),
        );
        true
    }

    // -----------------------------------------------------------------------------
    // Config.

    fn on_internal(&mut self, internal: Internal) {
        match internal {
            Internal::Loaded(outcome) => {
                self.loading = false;
                let errors = outcome.error_count();
                let files = outcome.files_read;
                self.on_config(*outcome);
                if self.reload_again {
                    // Files changed during the load: its result may be stale
                    // already; re-scan callers wait for the next one.
                    self.reload_again = false;
                    self.reload();
                    return;
                }
                for (reply, before) in std::mem::take(&mut self.rescans) {
                    let mut report = RescanReport::between(&before, &self.desired);
                    report.errors = errors;
                    report.files = files;
                    report.pending = self.pending.as_ref().map(|(_, reason)| reason.clone());
                    let _ = reply.send(report);
                }
            }
        }
    }

    fn on_config(&mut self, outcome: LoadOutcome) {
        let first = !self.loaded_once;
        self.loaded_once = true;
        let attempted = plan::desired_hash(&outcome.desired);
        let errors: Vec<Diagnostic> = outcome.diagnostics.iter().filter(|d| d.is_error()).cloned().collect();
        // The same problems as last time (a periodic re-scan, a reload that
        // changed nothing) were logged then: log them once, not every time.
        let repeated = !first && outcome.diagnostics == self.config_errors;
        for d in outcome.diagnostics.iter().filter(|_| !repeated) {
            if d.is_error() {
                tracing::error!("{}:{}:{}: {}", d.file.display(), d.line, d.column, d.message);
            } else {
                tracing::warn!("{}:{}:{}: {}", d.file.display(), d.line, d.column, d.message);
            }
        }
        if outcome.manager_invalid && !first {
            // DESIGN 4.5: an invalid manager section rejects the whole revision.
            if !repeated {
                self.event(
                    EventKind::ConfigError,
                    None,
                    format!("{} config error(s) including the manager section: the whole change is rejected; the last good state keeps running", errors.len()),
                );
            }
            self.config_errors = outcome.diagnostics.clone();
            self.attempted_revision = Some(attempted);
            return;
        }
        let mut desired = outcome.desired.clone();
        if !outcome.invalid_files.is_empty() {
            // A broken file freezes the servers it declared at their last good
            // spec; a broken manager section keeps the last good settings.
            for (name, server) in &self.last_good.servers {
                if outcome.invalid_files.contains(&server.provenance.file) && !desired.servers.contains_key(name) {
                    desired.servers.insert(name.clone(), server.clone());
                }
            }
            // On the first load there is no last good: its own settings.
            if !first {
                desired.manager = self.last_good.manager.clone();
            }
            if !repeated {
                self.event(
                    EventKind::ConfigError,
                    None,
                    format!("{} config error(s); the last good state keeps running", errors.len()),
                );
            }
        } else if first || self.attempted_revision.as_deref() != Some(attempted.as_str()) {
            self.event(
                EventKind::Config,
                None,
                format!("config loaded ({} servers)", desired.servers.len()),
            );
        }
        // Which cluster, if any, is settled at start.
        let wants_cluster = desired.manager.backend == crate::config::manager::Backend::Kubernetes;
        let moved = match &self.options.kubernetes {
            Some(hooks) => {
                let (now, then) = (&desired.manager.kubernetes, &hooks.settings);
                !wants_cluster
                    || (&now.namespace, &now.context, &now.kubeconfig, &now.instance)
                        != (&then.namespace, &then.context, &then.kubeconfig, &then.instance)
            }
            None => wants_cluster,
        };
        if moved && self.attempted_revision.as_deref() != Some(attempted.as_str()) {
            self.event(
                EventKind::ConfigError,
                None,
                "manager.backend, or the cluster of manager.kubernetes (namespace, context, kubeconfig, instance), changed: that takes effect when the service starts; run `mcp-manager restart`".into(),
            );
        }
        let mut routed = None;
        if let Some(hooks) = &self.options.kubernetes {
            // Our objects carry the instance the cluster is watched with
            // (settled at start, as the namespace is).
            desired.manager.kubernetes.instance = hooks.settings.instance.clone();
            let rendered = crate::kubernetes::render(&desired);
            if !rendered.errors.is_empty() {
                // Not deployable is invalid: the last good state keeps
                // running, in the cluster and here (never as local processes).
                let why = rendered.errors.join("; ");
                if self.attempted_revision.as_deref() != Some(attempted.as_str()) {
                    tracing::error!("the config cannot be deployed: {why}");
                    self.event(
                        EventKind::ConfigError,
                        None,
                        format!("the config cannot be deployed ({why}); the last good state keeps running"),
                    );
                }
                self.config_errors = outcome.diagnostics.clone();
                self.attempted_revision = Some(attempted);
                return;
            }
            if self.attempted_revision.as_deref() != Some(attempted.as_str()) {
                for note in &rendered.notes {
                    tracing::warn!("kubernetes: {note}");
                }
            }
            // The cluster gets the config; here the servers are reached
            // through their Services.
            hooks.desired.send_replace(Some(Arc::new(desired.clone())));
            routed = Some(crate::kubernetes::through_services(
                &desired,
                &rendered,
                &hooks.namespace,
                &self.options.secret_key,
                &self.ours_in_cluster(),
            ));
        }
        self.config_errors = outcome.diagnostics.clone();
        self.attempted_revision = Some(attempted);
        self.apply_manager_settings(&desired);
        self.last_good = desired.clone();
        self.desired = routed.unwrap_or(desired);
        self.reconcile(true);
    }

    /// `backend: kubernetes`: the servers whose objects the cluster holds as
    /// ours (not held back), as its controller last reported.
    fn ours_in_cluster(&self) -> std::collections::BTreeSet<String> {
        self.cluster
            .as_ref()
            .map(|c| c.servers.keys().filter(|n| !c.blocked.contains(*n)).cloned().collect())
            .unwrap_or_default()
    }

    fn apply_manager_settings(&mut self, desired: &DesiredState) {
        let m = &desired.manager;
        self.manager = Arc::new(m.clone());
        self.watched = discovery::roots(&self.options.config_paths, &m.discovery);
        let settings = InstanceSettings {
            backoff_reset_after: m.recovery.backoff_reset_after,
            jitter: m.recovery.jitter,
            monitoring: self.options.monitoring && m.health_monitoring.enabled,
        };
        if self.ctx.settings() != settings {
            // Running instances wake on the change (`Context::live_version`).
            self.ctx.update_live(|live| live.settings = settings);
        }
        self.event_log_size = m.storage.event_log_size;
        self.ctx.registry.set_settings(GatewaySettings {
            separator: m.gateway.tool_separator.clone(),
            prefix: m.gateway.prefix,
            pinning: m.security.tool_pinning,
            page_size: m.gateway.page_size,
        });
        // Resized in place: instances already waiting for a slot see the new size.
        self.ctx.update_live(|live| {
            live.starts.resize(m.performance.max_startup_concurrency);
            live.probes.resize(m.health_monitoring.max_concurrent_health_checks);
        });
    }

    /// The observed state as the planner must see it: servers with an operation in
    /// flight count as matching, so they are not acted on twice.
    fn plan_now(&self) -> Plan {
        let mut observed = self.observed.clone();
        for (name, rt) in &self.runtimes {
            if rt.lifecycle.start_pending()
                && let (Some(o), Some(d)) = (observed.servers.get_mut(name), self.desired.servers.get(name))
            {
                o.phase = Phase::Starting;
                o.set_applied(d);
            }
        }
        plan::plan(&self.desired, &observed)
    }

    /// Plans and, unless held, executes. `automatic` is false for `apply`.
    fn reconcile(&mut self, automatic: bool) {
        if !self.loaded_once {
            return;
        }
        let plan = self.plan_now();
        let revision = &plan.desired_hash[..12.min(plan.desired_hash.len())];
        let _span = tracing::info_span!("reconcile", revision = %revision).entered();
        self.ctx
            .registry
            .counters
            .reconcile_runs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !plan.has_changes() {
            self.pending = None;
            self.applied_revision = Some(plan.desired_hash.clone());
            return;
        }
        if automatic {
            let active = self.observed.servers.values().filter(|o| o.phase.is_active()).count();
            if let Some(reason) = plan::held(&plan, &self.desired.manager.reconcile, active) {
                return self.hold(plan, reason);
            }
        }
        self.pending = None;
        self.execute(&plan);
        self.applied_revision = Some(plan.desired_hash.clone());
    }

    fn hold(&mut self, plan: Plan, reason: String) {
        let changed = self.pending.as_ref().is_none_or(|(p, _)| !p.same_as(&plan));
        if changed {
            tracing::warn!("plan held: {reason}");
            self.event(
                EventKind::Plan,
                None,
                format!("plan held ({} actions): {reason}", plan.actions.len()),
            );
        }
        self.pending = Some((plan, reason));
    }

    fn execute(&mut self, plan: &Plan) {
        for action in &plan.actions {
            self.ctx.registry.counters.action(action.action);
            let name = action.server.as_str();
            let message = format!("{} {name}: {}", action.action.verb(), action.reason);
            tracing::info!("{message}");
            self.event(EventKind::Plan, Some(name), message);
            let desired = self.desired.servers.get(name).cloned();
            match (action.action, desired) {
                (ActionKind::Stop, _) => self.stop_server(name),
                (ActionKind::Start, Some(d)) => self.start_server(&d),
                (ActionKind::Restart, Some(d)) => self.restart_server(&d),
                (ActionKind::Replace, Some(d)) => self.replace_server(&d),
                (ActionKind::Update, Some(d)) => self.update_server(&d),
                (ActionKind::Scale, Some(d)) => {
                    self.update_server(&d);
                    self.scale_server(&d);
                }
                (_, None) => {}
            }
        }
    }

    // -----------------------------------------------------------------------------
    // Requests.

    fn on_request(&mut self, request: Request) {
        match request {
            Request::Reload => {
                self.ctx
                    .registry
                    .counters
                    .watcher_events
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.reload();
            }
            Request::Rescan(reply) => {
                self.event(EventKind::Command, None, "discover --rescan".into());
                // Compared with the state as it is now: what this re-scan changes.
                self.rescans.push((reply, self.desired.clone()));
                if self.loading {
                    self.reload_again = true;
                } else {
                    self.reload();
                }
            }
            Request::Plan(reply) => {
                let plan = match self.cluster.as_ref().and_then(|c| c.plan.clone()) {
                    Some(plan) => plan,
                    None => self.plan_now(),
                };
                let _ = reply.send(plan);
            }
            Request::Cluster(report) => {
                let before = self.ours_in_cluster();
                self.cluster = Some(*report);
                let reroute = self.ours_in_cluster() != before;
                if reroute && let Some(hooks) = &self.options.kubernetes {
                    // A server held back in the cluster is not routed to the
                    // Service of its name (someone else's).
                    let rendered = crate::kubernetes::render(&self.last_good);
                    if rendered.errors.is_empty() {
                        self.desired = crate::kubernetes::through_services(
                            &self.last_good,
                            &rendered,
                            &hooks.namespace,
                            &self.options.secret_key,
                            &self.ours_in_cluster(),
                        );
                        self.reconcile(true);
                    }
                }
                self.publish();
            }
            Request::Apply { expect, reply } if self.options.kubernetes.is_some() => {
                if let Some(hooks) = &self.options.kubernetes {
                    self.event(EventKind::Command, None, "apply (to the cluster)".into());
                    // Full or gone: the controller is busy or ended; say so.
                    if let Err(e) = hooks.apply.try_send(ClusterApply { expect, reply }) {
                        let apply = e.into_inner();
                        let _ = apply.reply.send(Err(CommandError::Cluster(
                            "the Kubernetes controller is busy; try again".into(),
                        )));
                    }
                }
            }
            Request::Apply { expect, reply } => {
                let plan = self.plan_now();
                if let Some((desired, observed)) = expect
                    && (desired != plan.desired_hash || observed != plan.observed_hash)
                {
                    let _ = reply.send(Err(CommandError::Stale));
                    return;
                }
                self.event(
                    EventKind::Command,
                    None,
                    format!("apply ({} actions)", plan.actions.len()),
                );
                self.pending = None;
                self.execute(&plan);
                self.applied_revision = Some(plan.desired_hash.clone());
                let _ = reply.send(Ok(plan));
            }
            Request::StartServer(name, reply) => {
                let result = self.start_request(&name);
                let _ = reply.send(result);
            }
            Request::StopServer(name, reply) => {
                let result = self.stop_request(&name);
                let _ = reply.send(result);
            }
            Request::RestartServer(name, reply) => {
                let result = self.restart_request(&name);
                let _ = reply.send(result);
            }
            Request::Approve { server, tool, reply } => {
                let result = self.approve(&server, tool.as_deref());
                let _ = reply.send(result);
            }
            Request::Shutdown(_) => {}
        }
    }

    fn known(&self, name: &str) -> Result<DesiredServer, CommandError> {
        self.desired
            .servers
            .get(name)
            .cloned()
            .ok_or_else(|| CommandError::NotFound(name.to_string()))
    }

    fn start_request(&mut self, name: &str) -> Result<String, CommandError> {
        let d = self.known(name)?;
        self.event(EventKind::Command, Some(name), format!("start-server {name}"));
        let was_suspended = self.observed.servers.get(name).is_some_and(|o| o.suspended);
        if let Some(o) = self.observed.servers.get_mut(name) {
            o.suspended = false;
        }
        let failed = self
            .observed
            .servers
            .get(name)
            .is_some_and(|o| o.phase == Phase::Failed);
        if failed {
            return self.restart_request(name);
        }
        let running = self.observed.servers.get(name).is_some_and(|o| o.phase.is_active());
        if running {
            return Ok(format!("{name} is already running"));
        }
        // Start only this server: in manual mode the rest of a pending plan still
        // waits for `apply`.
        self.start_server(&d);
        if !d.spec.enabled {
            return Ok(format!(
                "started {name} (it is disabled in config, so the next config change may stop it)"
            ));
        }
        Ok(if was_suspended {
            format!("resumed {name}")
        } else {
            format!("started {name}")
        })
    }

    fn stop_request(&mut self, name: &str) -> Result<String, CommandError> {
        if !self.observed.servers.contains_key(name) && !self.desired.servers.contains_key(name) {
            return Err(CommandError::NotFound(name.to_string()));
        }
        self.event(EventKind::Command, Some(name), format!("stop-server {name}"));
        let o = self.observed.servers.entry(name.to_string()).or_default();
        o.suspended = true;
        self.stop_server(name);
        Ok(format!(
            "stopping {name}; it stays down until `mcp-manager start-server {name}`"
        ))
    }

    fn restart_request(&mut self, name: &str) -> Result<String, CommandError> {
        self.known(name)?;
        self.event(EventKind::Command, Some(name), format!("restart-server {name}"));
        Ok(self.restart(name))
    }

    /// Restarts a known server's instances, or starts it when none run.
    fn restart(&mut self, name: &str) -> String {
        let Some(d) = self.desired.servers.get(name).cloned() else {
            return format!("no server named {name}");
        };
        if let Some(o) = self.observed.servers.get_mut(name) {
            o.suspended = false;
        }
        let rt = self.runtimes.get(name);
        let current: Vec<&InstanceHandle> = rt
            .map(|rt| {
                rt.instances
                    .iter()
                    .filter(|(slot, _)| rt.lifecycle.is_current(**slot))
                    .map(|(_, h)| h)
                    .collect()
            })
            .unwrap_or_default();
        if !current.is_empty() {
            for handle in current {
                handle.send(Command::Restart);
            }
            return format!("restarting {name}");
        }
        self.start_server(&d);
        format!("starting {name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_fires_each_period_only_while_set() {
        let mut every = Every::default();
        let start = tokio::time::Instant::now();
        // Unset: never fires.
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), every.wait())
                .await
                .is_err()
        );
        every.set(Some(Duration::from_secs(10)));
        let armed = tokio::time::Instant::now();
        every.wait().await;
        assert_eq!(armed.elapsed(), Duration::from_secs(10));
        every.wait().await;
        assert_eq!(armed.elapsed(), Duration::from_secs(20));
        // Setting the same period keeps the schedule; zero turns it off.
        every.set(Some(Duration::from_secs(10)));
        every.wait().await;
        assert_eq!(armed.elapsed(), Duration::from_secs(30));
        every.set(Some(Duration::ZERO));
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), every.wait())
                .await
                .is_err()
        );
        assert!(start.elapsed() >= Duration::from_secs(7230));
    }

    #[test]
    fn a_rescan_report_names_added_removed_and_changed_servers() {
        let load = |yaml: &str| {
            let files = [crate::config::SourceFile {
                path: PathBuf::from("/cfg/mcp-manager.yaml"),
                kind: crate::config::SourceKind::Yaml,
                text: yaml.into(),
            }];
            crate::config::load(
                &files,
                &Environment {
                    lookup: &|_| None,
                    secret_key: [0; 32],
                },
            )
            .desired
        };
        let before = load("servers:\n  a: {command: x}\n  b: {command: x}\n  c: {command: x}\n");
        let after = load("servers:\n  a: {command: x}\n  b: {command: y}\n  d: {command: x}\n");
        let report = RescanReport::between(&before, &after);
        assert_eq!(report.added, ["d"]);
        assert_eq!(report.removed, ["c"]);
        assert_eq!(report.changed, ["b"]);
    }
}
