//! One task per server instance (an actor, DESIGN 4.3). It owns the process and
//! the MCP session; the reconciler sends it commands and it reports every phase
//! and health change back as [`InstanceEvent`]s. It never touches observed state.

use std::sync::Arc;
use std::time::{Duration, Instant};

#[allow(deprecated)] // sampling, roots and logging: deprecated by the 2026 revision, not gone
use rmcp::model::{
    ClientCapabilities, ClientConfig, ClientRequest, CreateMessageRequestParams, CreateMessageResult,
    ElicitRequestParams, ElicitResult, ErrorCode, ListRootsResult, LoggingMessageNotificationParam, PingRequest,
    ProgressNotificationParam, ResourceUpdatedNotificationParam, SubscriptionFilter,
};
use rmcp::service::{NotificationContext, Peer, RequestContext, RoleClient};
use rmcp::{ClientHandler, ErrorData as McpError, ServiceError};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::logs::LogBook;
use super::process::{self, ServerProcess, SpawnSpec};
use crate::backoff::{BackoffPolicy, Jitter};
use crate::config::ServerSpec;
use crate::gateway::Registry;
use crate::gateway::registry::{Lists, Upstream, tool_hash};
use crate::gateway::relay::{self, Relay};
use crate::health::{HealthTracker, Thresholds};
pub use crate::state::InstanceId;
use crate::state::{Health, Phase, ProbeResult};

/// Settings that come from the manager rather than the server spec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceSettings {
    pub monitoring: bool,
    /// Running and healthy this long resets the restart counter (DESIGN 4.3).
    pub backoff_reset_after: Duration,
    pub jitter: f64,
}

pub enum Command {
    /// Stop gracefully (or at once with `kill`). The instance reports
    /// [`EventKind::Gone`] when it is down.
    Stop { kill: bool },
    /// Restart now, resetting the failure count (`restart-server`).
    Restart,
    /// New in-place settings (health, timeouts, limits): no restart.
    Update(Arc<ServerSpec>),
}

#[derive(Debug, Clone)]
pub enum EventKind {
    Phase {
        phase: Phase,
        pid: Option<u32>,
        start_time: Option<u64>,
        /// Restarts since the counter was last reset.
        restarts: u32,
        /// Why: the exit status, the start error, ...
        message: Option<String>,
        /// Set in `Backoff`: when the next attempt starts.
        retry_in: Option<Duration>,
    },
    Health {
        health: Health,
        probe: ProbeResult,
    },
    /// What the server offers, listed after start and after `list_changed`.
    Capabilities(Arc<Lists>),
    /// The process exited unexpectedly; `detected` is when the exit was seen.
    Crashed {
        status: String,
        detected: Instant,
    },
    /// The instance task ended and its process group is gone: the last event
    /// of every instance, sent however the task ends (`panicked`: by a panic).
    Gone {
        panicked: bool,
    },
}

#[derive(Debug, Clone)]
pub struct InstanceEvent {
    pub id: InstanceId,
    pub kind: EventKind,
}

/// The reconciler's handle on an instance task.
pub struct InstanceHandle {
    pub id: InstanceId,
    commands: mpsc::UnboundedSender<Command>,
    /// The `stop_grace_period` it stops with (its spec's, updated with it).
    pub stop_grace: Duration,
}

/// What an instance needs from its surroundings.
#[derive(Clone)]
pub struct Context {
    pub events: mpsc::UnboundedSender<InstanceEvent>,
    pub logs: LogBook,
    /// The manager settings every instance reads, shared so that a change
    /// reaches running instances (not only the ones started after it).
    pub live: Arc<std::sync::RwLock<Live>>,
    /// Bumped on every change of `live`: running instances wake on it (an
    /// instance that is starting reads the new values at its next use).
    pub live_version: Arc<tokio::sync::watch::Sender<u64>>,
    /// The gateway's routing table: running sessions are attached to it.
    pub registry: Arc<Registry>,
    /// Where the OAuth tokens of `auth: oauth` servers live.
    pub tokens_dir: Option<std::path::PathBuf>,
}

/// Manager settings that instances follow while they run.
pub struct Live {
    pub settings: InstanceSettings,
    /// Bounds concurrent health probes (`max_concurrent_health_checks`).
    pub probes: Limit,
    /// Bounds concurrent starts (`max_startup_concurrency`).
    pub starts: Limit,
}

/// A semaphore and the number of permits it was given, resizable in place:
/// instances already waiting for a permit wait on the same semaphore and see
/// the new size.
pub struct Limit {
    pub semaphore: Arc<Semaphore>,
    size: usize,
}

impl Limit {
    pub fn new(size: usize) -> Limit {
        let size = size.max(1);
        Limit {
            semaphore: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    /// Grows or shrinks to `size` permits. Shrinking takes permits as they come
    /// free and forgets them, so work holding one is not disturbed.
    pub fn resize(&mut self, size: usize) {
        let size = size.max(1);
        if size > self.size {
            self.semaphore.add_permits(size - self.size);
        } else if size < self.size {
            let semaphore = self.semaphore.clone();
            let excess = u32::try_from(self.size - size).unwrap_or(u32::MAX);
            tokio::spawn(async move {
                if let Ok(permits) = semaphore.acquire_many_owned(excess).await {
                    permits.forget();
                }
            });
        }
        self.size = size;
    }
}

impl Context {
    fn read_live<T>(&self, f: impl FnOnce(&Live) -> T) -> T {
        // A poisoned lock only means a writer panicked mid-update of plain
        // values; they are still usable.
        f(&self.live.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The settings in force now.
    pub fn settings(&self) -> InstanceSettings {
        self.read_live(|live| live.settings)
    }

    /// The start slots.
    pub fn starts(&self) -> Arc<Semaphore> {
        self.read_live(|live| live.starts.semaphore.clone())
    }

    /// The probe slots.
    pub fn probes(&self) -> Arc<Semaphore> {
        self.read_live(|live| live.probes.semaphore.clone())
    }

    /// Changes the settings for every instance.
    pub fn update_live(&self, update: impl FnOnce(&mut Live)) {
        update(&mut self.live.write().unwrap_or_else(|e| e.into_inner()));
        self.live_version.send_modify(|v| *v += 1);
    }
}

impl InstanceHandle {
    /// Starts the instance task in `tasks` (the owner awaits or aborts it
    /// there). It begins in `Pending` (waiting for a start slot) and ends on
    /// Stop, with [`EventKind::Gone`] as its last report.
    pub fn spawn(id: InstanceId, spec: Arc<ServerSpec>, ctx: Context, tasks: &mut JoinSet<()>) -> Self {
        let stop_grace = spec.stop_grace_period;
        let (commands, rx) = mpsc::unbounded_channel();
        let actor = Actor {
            id: id.clone(),
            spec,
            ctx,
            restarts: 0,
            jitter: Jitter::from_entropy(),
            started_at_ms: 0,
            owner: None,
            offers: None,
        };
        let span = tracing::info_span!("server", server = %id.server, replica = id.replica, generation = id.generation);
        tasks.spawn(tracing::Instrument::instrument(actor.run(rx), span));
        InstanceHandle {
            id,
            commands,
            stop_grace,
        }
    }

    pub fn send(&self, command: Command) {
        // The task only ends after a Stop; a send to a finished task is moot.
        let _ = self.commands.send(command);
    }
}

/// The MCP client side of one session: identifies as mcp-manager, wakes the
/// actor when the server's lists change, and hands what the server sends for
/// the gateway's clients to the session's [`Relay`].
#[derive(Clone)]
struct ManagerClient {
    changed: Arc<Notify>,
    relay: Arc<Relay>,
    /// The capabilities it declares: a gateway client's own, for that
    /// client's session of a `per_client` server; else every capability the
    /// gateway relays (the clients of a shared session differ).
    offers: Option<ClientCapabilities>,
}

impl ManagerClient {
    fn new(
        server: &str,
        registry: &Arc<Registry>,
        owner: Option<u64>,
        offers: Option<ClientCapabilities>,
    ) -> (ManagerClient, CancellationToken) {
        let client = ManagerClient {
            changed: Arc::new(Notify::new()),
            relay: Arc::new(Relay::new(server, Arc::downgrade(registry), owner)),
            offers,
        };
        (client, CancellationToken::new())
    }
}

#[allow(deprecated)] // sampling, roots and logging: deprecated by the 2026 revision, not gone
impl ClientHandler for ManagerClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            self.offers.clone().unwrap_or_else(relay::upstream_capabilities),
            relay::upstream_identity(),
        )
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.changed.notify_one();
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.changed.notify_one();
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.changed.notify_one();
    }

    async fn on_progress(&self, params: ProgressNotificationParam, _context: NotificationContext<RoleClient>) {
        self.relay.progress(params).await;
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.relay.log(params).await;
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.relay.resource_updated(params).await;
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, McpError> {
        self.relay.create_message(params, context).await
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, McpError> {
        self.relay.create_elicitation(request, context).await
    }

    async fn list_roots(&self, context: RequestContext<RoleClient>) -> Result<ListRootsResult, McpError> {
        self.relay.list_roots(context).await
    }
}

/// A started instance: its process (none for a remote server without
/// `command`) and MCP session.
struct Session {
    process: Option<ServerProcess>,
    peer: Peer<RoleClient>,
    cancel: CancellationToken,
    /// Ends when the MCP session ends (stdout closed, or cancelled).
    session: JoinHandle<()>,
    /// `session` has completed (a JoinHandle must not be polled again after that).
    session_done: bool,
    changed: Arc<Notify>,
    relay: Arc<Relay>,
    /// Woken by the gateway when a request met a transport error.
    suspect: Arc<Notify>,
    lists: Arc<Lists>,
    /// A stdio server's side door for the gateway's tool calls.
    lane: Option<Arc<crate::transport::stdio::RawLane>>,
}

impl Session {
    /// A fresh MCP session: lists what the server offers and watches for changes.
    /// Listing must finish by `deadline` (the start's `startup_timeout`, which
    /// initialize counts against too): a server that answers `initialize` and
    /// then stalls fails its start, to be retried under the backoff, instead of
    /// holding its supervisor and a start slot for ever.
    async fn begin(
        process: Option<ServerProcess>,
        service: rmcp::service::RunningService<RoleClient, ManagerClient>,
        client: ManagerClient,
        cancel: CancellationToken,
        deadline: tokio::time::Instant,
        startup_timeout: Duration,
    ) -> Result<Session, StartError> {
        let peer = service.peer().clone();
        let session = tokio::spawn(async move {
            let _ = service.waiting().await;
        });
        // Made before listing, so that however listing ends (also dropped by
        // a Stop) the MCP session ends with it (`Drop`).
        let mut started = Session {
            process,
            peer,
            cancel,
            session,
            session_done: false,
            changed: client.changed,
            relay: client.relay,
            suspect: Arc::new(Notify::new()),
            lists: Arc::default(),
            lane: None,
        };
        let listen_by = deadline.min(tokio::time::Instant::now() + Duration::from_secs(5));
        watch_lists(&started.peer, &started.changed, &started.cancel, listen_by).await;
        match tokio::time::timeout_at(deadline, list_capabilities(&started.peer)).await {
            Ok(lists) => {
                started.lists = Arc::new(lists);
                Ok(started)
            }
            Err(_) => {
                started.cancel.cancel();
                started.session.abort();
                started.session_done = true;
                if let Some(p) = started.process.as_mut() {
                    let _ = process::kill(p).await;
                }
                Err(StartError::Transient(format!(
                    "it answered initialize but not tools/list within startup_timeout ({})",
                    crate::config::duration::format(startup_timeout)
                )))
            }
        }
    }
}

impl Drop for Session {
    /// However a session is dropped (also mid-start, when a stop interrupts a
    /// remote server's connection), its MCP session task ends with it.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What an instance wrote to stderr since `since_ms`, for error messages: the
/// telling lines, with URLs scrubbed (they may carry credentials) and each cut
/// to 300 characters.
fn stderr_tail(logs: &LogBook, id: &InstanceId, since_ms: u64) -> String {
    let tail = logs.tail(&id.server, 200);
    let lines: Vec<&str> = tail
        .iter()
        .filter(|l| l.replica == id.replica && l.at_ms >= since_ms && l.source == super::logs::LogSource::Server)
        .map(|l| l.line.as_str())
        .collect();
    let telling = telling_lines(&lines[lines.len().saturating_sub(40)..]);
    if telling.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = telling
        .iter()
        .map(|l| {
            let l = crate::transport::scrub_urls(l);
            match l.char_indices().nth(300) {
                Some((cut, _)) => format!("{}…", &l[..cut]),
                None => l,
            }
        })
        .collect();
    format!("; stderr: {}", shown.join(" | "))
}

/// From the last lines a server wrote, the ones that say why it failed: the last
/// line that reads like an error (`Error: Cannot find module`, `ECONNREFUSED`, a
/// Python exception) with the line before it when that one does too, then the
/// last line. A crash often ends with noise (`Node.js v20.20.2`, a stack frame),
/// so the last lines alone rarely name the cause.
pub fn telling_lines<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    const MARKS: &[&str] = &[
        "error",
        "exception",
        "cannot",
        "can't",
        "could not",
        "couldn't",
        "failed",
        "refused",
        "not found",
        "no such",
        "denied",
        "fatal",
        "panic",
        "traceback",
        "invalid",
        "unable",
        "missing",
        "econn",
        "enoent",
        "eaddrinuse",
    ];
    let meaningful: Vec<&str> = lines.iter().map(|l| l.trim()).filter(|l| !l.is_empty()).collect();
    let Some(&last) = meaningful.last() else {
        return Vec::new();
    };
    let looks_like_error = |l: &str| {
        let lower = l.to_ascii_lowercase();
        // A stack frame names files, not causes.
        !lower.starts_with("at ") && MARKS.iter().any(|m| lower.contains(m))
    };
    let mut out = Vec::new();
    if let Some(i) = meaningful.iter().rposition(|l| looks_like_error(l)) {
        if i > 0 && looks_like_error(meaningful[i - 1]) && meaningful[i - 1] != meaningful[i] {
            out.push(meaningful[i - 1]);
        }
        out.push(meaningful[i]);
    }
    if out.last() != Some(&last) {
        out.push(last);
    }
    out
}

/// Connects to a remote server (retries included; with its OAuth client when
/// it has one) and begins the MCP session; gives up early if its locally
/// started `process` exits meanwhile.
async fn connect_session(
    (spec, auth): (&ServerSpec, Option<&crate::transport::oauth::OAuthClient>),
    jitter: &mut Jitter,
    mut process: Option<ServerProcess>,
    logs: &LogBook,
    id: &InstanceId,
    since_ms: u64,
    (client, cancel): (ManagerClient, CancellationToken),
) -> Result<Session, StartError> {
    // Dropped half way (a Stop during the connection): the connection goes too.
    let guard = cancel.clone().drop_guard();
    let connect = crate::transport::connect(client.clone(), spec, auth, cancel.clone(), jitter);
    let connected = tokio::select! {
        connected = connect => connected,
        status = exited(&mut process) => {
            let status = status.map(|s| describe_exit(&s)).unwrap_or_else(|e| e.to_string());
            Err(crate::transport::ConnectError::Transient(format!(
                "exited while connecting ({status}){}",
                stderr_tail(logs, id, since_ms)
            )))
        }
    };
    match connected {
        Ok(service) => {
            // The session owns the token from here on.
            guard.disarm();
            let deadline = tokio::time::Instant::now() + spec.startup_timeout;
            Session::begin(process, service, client, cancel, deadline, spec.startup_timeout).await
        }
        Err(e) => {
            cancel.cancel();
            if let Some(p) = process.as_mut() {
                let _ = process::kill(p).await;
            }
            Err(match e {
                crate::transport::ConnectError::Permanent(m) => StartError::Permanent(m),
                crate::transport::ConnectError::Transient(m) => StartError::Transient(m),
                crate::transport::ConnectError::Unauthorized { message, .. } => {
                    StartError::Permanent(needs_login(&id.server, &message))
                }
            })
        }
    }
}

/// A server that cannot be reached until someone logs in: said with the
/// command that does it, and not retried (a retry would meet the same
/// refusal).
fn needs_login(server: &str, why: &str) -> String {
    format!("needs login ({why}): run `mcp-manager login {server}`")
}

/// The exit of a session's process; never, for a remote server without one.
async fn exited(process: &mut Option<ServerProcess>) -> std::io::Result<std::process::ExitStatus> {
    match process.as_mut() {
        Some(p) => p.child.wait().await,
        None => std::future::pending().await,
    }
}

enum StartError {
    /// Retrying will not help (command not found, ...): Failed at once.
    Permanent(String),
    Transient(String),
}

/// Why an instance must leave what it is doing: a command came.
enum Interrupt {
    Stop { kill: bool },
    Restart,
}

/// The one wait of an instance: `work`, unless a Stop or Restart ends it first
/// (`work` is then dropped, and with it any process it started). An Update
/// arriving meanwhile is kept in `update` for the caller to apply. Every await
/// of the actor that can take long goes through here, so no wait ignores a stop.
async fn until_command<T>(
    rx: &mut mpsc::UnboundedReceiver<Command>,
    update: &mut Option<Arc<ServerSpec>>,
    work: impl std::future::Future<Output = T>,
) -> Result<T, Interrupt> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            command = rx.recv() => match command {
                Some(Command::Stop { kill }) => return Err(Interrupt::Stop { kill }),
                // The reconciler is gone: nothing will ever tell us to run on.
                None => return Err(Interrupt::Stop { kill: false }),
                Some(Command::Restart) => return Err(Interrupt::Restart),
                Some(Command::Update(spec)) => *update = Some(spec),
            },
            out = &mut work => return Ok(out),
        }
    }
}

/// Why supervision of a running instance ended.
enum Ended {
    Stop { kill: bool },
    Restart,
    Crashed(String),
    Unhealthy,
}

impl From<Interrupt> for Ended {
    fn from(interrupt: Interrupt) -> Self {
        match interrupt {
            Interrupt::Stop { kill } => Ended::Stop { kill },
            Interrupt::Restart => Ended::Restart,
        }
    }
}

impl Ended {
    /// For gateway clients whose requests arrive meanwhile.
    fn describe(&self) -> String {
        match self {
            Ended::Stop { .. } => "it is stopped".into(),
            Ended::Restart => "it is restarting".into(),
            Ended::Crashed(message) => format!("it crashed ({message}) and is restarting"),
            Ended::Unhealthy => "it failed its health checks and is restarting".into(),
        }
    }
}

/// What the actor does after one attempt to run.
enum Next {
    Stop,
    /// Start again now (`restart-server`).
    Again,
    /// Restart with backoff (or give up).
    Failure(String),
    /// Failed for good until told otherwise.
    Permanent(String),
}

/// Reports the instance gone when its task ends, however it ends (also when
/// the task is aborted at the shutdown deadline, or panics): the reconciler
/// counts an instance as alive until this arrives. It is the last thing the
/// task does, after its process group is down.
struct GoneReport {
    events: mpsc::UnboundedSender<InstanceEvent>,
    id: InstanceId,
}

impl Drop for GoneReport {
    fn drop(&mut self) {
        let _ = self.events.send(InstanceEvent {
            id: self.id.clone(),
            kind: EventKind::Gone {
                panicked: std::thread::panicking(),
            },
        });
    }
}

/// Replica numbers of the gateway's private sessions start here (so their
/// logs are told apart from the managed instances').
pub const PRIVATE_REPLICA: u32 = 1 << 20;

/// Starts the gateway's private sessions of `session: per_client` servers:
/// the start of an instance (spawn or connect, initialize, list) with no
/// actor around it. Dropping the result ends the session and kills its
/// process session. (It holds the service's context, registry included: it
/// lives as long as the service.)
pub struct PrivateSessions {
    ctx: Context,
    next: std::sync::atomic::AtomicU32,
}

impl PrivateSessions {
    pub fn new(ctx: Context) -> Self {
        PrivateSessions {
            ctx,
            next: std::sync::atomic::AtomicU32::new(0),
        }
    }
}

impl crate::gateway::relay::PrivateStarter for PrivateSessions {
    fn start(
        &self,
        server: &str,
        spec: Arc<ServerSpec>,
        owner: u64,
        capabilities: Option<ClientCapabilities>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<crate::gateway::relay::PrivateUpstream, String>> + Send>> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A remote server's `command` is the managed instance's to run (one
        // listener per port): a client's own session only connects.
        let run = if spec.connection_type.is_remote() && spec.command.is_some() {
            let mut connect_only = (*spec).clone();
            connect_only.command = None;
            Arc::new(connect_only)
        } else {
            spec.clone()
        };
        let mut actor = Actor {
            id: InstanceId {
                server: server.to_string(),
                replica: PRIVATE_REPLICA.saturating_add(n % PRIVATE_REPLICA),
                generation: u64::from(n),
            },
            spec: run,
            ctx: self.ctx.clone(),
            restarts: 0,
            jitter: Jitter::from_entropy(),
            started_at_ms: 0,
            owner: Some(owner),
            offers: capabilities,
        };
        let span = tracing::info_span!("client-session", server = %actor.id.server, replica = actor.id.replica);
        let starts = self.ctx.starts();
        Box::pin(tracing::Instrument::instrument(
            async move {
                // Within `max_startup_concurrency`, as every start.
                let _slot = starts.acquire_owned().await;
                let session = actor.start().await.map_err(|e| match e {
                    StartError::Permanent(m) | StartError::Transient(m) => m,
                })?;
                tracing::info!("started a session for one gateway client");
                let upstream = Arc::new(Upstream::new(
                    actor.id.clone(),
                    session.peer.clone(),
                    session.relay.clone(),
                    session.suspect.clone(),
                    session.lane.clone(),
                ));
                Ok(crate::gateway::relay::PrivateUpstream {
                    upstream,
                    spec,
                    guard: Box::new(session),
                })
            },
            span,
        ))
    }
}

struct Actor {
    id: InstanceId,
    spec: Arc<ServerSpec>,
    ctx: Context,
    /// Consecutive restarts since the last reset.
    restarts: u32,
    jitter: Jitter,
    /// When the current start began: error messages quote only what this
    /// attempt wrote.
    started_at_ms: u64,
    /// The gateway client session a private session belongs to.
    owner: Option<u64>,
    /// That client's capabilities, declared to the server as ours.
    offers: Option<ClientCapabilities>,
}

impl Actor {
    fn emit(&self, kind: EventKind) {
        let _ = self.ctx.events.send(InstanceEvent {
            id: self.id.clone(),
            kind,
        });
    }

    fn phase(&self, phase: Phase, session: Option<&Session>, message: Option<String>, retry_in: Option<Duration>) {
        let down = match phase {
            Phase::Pending | Phase::Starting => Some("it is starting".to_string()),
            Phase::Backoff => Some(format!(
                "it is restarting ({}){}",
                message.as_deref().unwrap_or("after a failure"),
                retry_in
                    .map(|d| format!("; next attempt in {} ms", d.as_millis()))
                    .unwrap_or_default()
            )),
            Phase::Failed => Some(format!("it failed ({})", message.as_deref().unwrap_or("unknown error"))),
            Phase::Stopping | Phase::Stopped => Some("it is stopped".to_string()),
            _ => None,
        };
        if let Some(reason) = down {
            self.ctx.registry.set_down_reason(&self.id.server, reason);
        }
        self.emit(EventKind::Phase {
            phase,
            pid: session.and_then(|s| s.process.as_ref()).map(|p| p.pid),
            start_time: session.and_then(|s| s.process.as_ref()).and_then(|p| p.start_time),
            restarts: self.restarts,
            message,
            retry_in,
        });
    }

    /// A new spec for the same instance (health, timeouts, limits).
    fn take_update(&mut self, update: &mut Option<Arc<ServerSpec>>) {
        if let Some(spec) = update.take() {
            self.spec = spec;
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        // Declared first, so dropped last: after every process is down.
        let _gone = GoneReport {
            events: self.ctx.events.clone(),
            id: self.id.clone(),
        };
        self.phase(Phase::Pending, None, None, None);
        loop {
            let next = match self.attempt(&mut rx).await {
                Next::Stop => break,
                Next::Again => {
                    self.restarts = 0;
                    continue;
                }
                Next::Failure(message) if self.spec.auto_restart => self.backoff(&mut rx, message).await,
                Next::Failure(message) => {
                    let message = format!("{message}; auto_restart is off");
                    self.wait_while_down(&mut rx, message).await
                }
                Next::Permanent(message) => self.wait_while_down(&mut rx, message).await,
            };
            match next {
                Next::Stop => break,
                _ => continue,
            }
        }
        self.phase(Phase::Stopped, None, None, None);
    }

    /// One start and, if it succeeds, supervision until it ends; the process
    /// is down when this returns.
    async fn attempt(&mut self, rx: &mut mpsc::UnboundedReceiver<Command>) -> Next {
        let mut update = None;
        // A remote server without a command starts no process: it needs no
        // start slot.
        let connect_only = self.spec.connection_type.is_remote() && self.spec.command.is_none();
        let permit = if connect_only {
            None
        } else {
            let starts = self.ctx.starts();
            match until_command(rx, &mut update, starts.acquire_owned()).await {
                Ok(permit) => permit.ok(),
                Err(interrupt) => return self.interrupted(interrupt),
            }
        };
        self.take_update(&mut update);
        self.phase(Phase::Starting, None, None, None);
        let started = until_command(rx, &mut update, self.start()).await;
        drop(permit);
        self.take_update(&mut update);
        let mut session = match started {
            // The start was dropped half way: its process went with it.
            Err(interrupt) => return self.interrupted(interrupt),
            Ok(Err(StartError::Permanent(message))) => {
                tracing::error!(server = %self.id, "{message}");
                return Next::Permanent(message);
            }
            Ok(Err(StartError::Transient(message))) => {
                tracing::warn!(server = %self.id, "start failed: {message}");
                return Next::Failure(message);
            }
            Ok(Ok(session)) => session,
        };
        match session.process.as_ref() {
            Some(p) => tracing::info!("running (pid {})", p.pid),
            None => tracing::info!("connected"),
        }
        self.phase(Phase::Running, Some(&session), None, None);
        self.emit(EventKind::Capabilities(session.lists.clone()));
        self.ctx.registry.attach(
            Upstream::new(
                self.id.clone(),
                session.peer.clone(),
                session.relay.clone(),
                session.suspect.clone(),
                session.lane.clone(),
            ),
            self.spec.clone(),
            session.lists.clone(),
        );
        let up_since = Instant::now();
        let ended = self.supervise(&mut session, rx).await;
        // Up this long: whatever ended it (a crash, a lost connection, failed
        // health checks) starts the backoff over.
        if up_since.elapsed() >= self.ctx.settings().backoff_reset_after {
            self.restarts = 0;
        }
        self.ctx.registry.detach(&self.id, &ended.describe());
        let kill = matches!(ended, Ended::Stop { kill: true });
        // Only a stop is reported as Stopping: an instance restarting itself
        // (unhealthy, restart-server) is still meant to be up.
        if matches!(ended, Ended::Stop { .. }) {
            self.phase(Phase::Stopping, Some(&session), None, None);
        }
        self.shutdown(session, kill).await;
        match ended {
            Ended::Stop { .. } => Next::Stop,
            Ended::Restart => Next::Again,
            Ended::Crashed(message) => Next::Failure(message),
            Ended::Unhealthy => Next::Failure("unhealthy: health checks failed".into()),
        }
    }

    fn interrupted(&self, interrupt: Interrupt) -> Next {
        match interrupt {
            Interrupt::Stop { .. } => Next::Stop,
            Interrupt::Restart => Next::Again,
        }
    }

    /// After a failure: wait out the backoff delay, or give up after
    /// `max_restart_attempts`.
    async fn backoff(&mut self, rx: &mut mpsc::UnboundedReceiver<Command>, message: String) -> Next {
        if self.restarts >= self.spec.max_restart_attempts {
            let reason = format!("{message}; gave up after {} restarts", self.restarts);
            tracing::error!(server = %self.id, "{reason}");
            return self.wait_while_down(rx, reason).await;
        }
        let policy = BackoffPolicy {
            initial: self.spec.restart_delay,
            max: self.spec.max_restart_delay,
            jitter: self.ctx.settings().jitter,
        };
        self.restarts += 1;
        let delay = policy.delay(self.restarts, self.jitter.unit());
        tracing::warn!(server = %self.id, "{message}; restarting in {delay:?} (restart {})", self.restarts);
        self.phase(Phase::Backoff, None, Some(message), Some(delay));
        let mut update = None;
        let waited = until_command(rx, &mut update, tokio::time::sleep(delay)).await;
        self.take_update(&mut update);
        match waited {
            Ok(()) => Next::Again,
            Err(Interrupt::Restart) => {
                self.restarts = 0;
                Next::Again
            }
            Err(Interrupt::Stop { .. }) => Next::Stop,
        }
    }

    /// `Failed` until told otherwise: `Again` on restart, `Stop` on stop.
    async fn wait_while_down(&mut self, rx: &mut mpsc::UnboundedReceiver<Command>, message: String) -> Next {
        self.phase(Phase::Failed, None, Some(message), None);
        let mut update = None;
        let waited = until_command(rx, &mut update, std::future::pending::<()>()).await;
        self.take_update(&mut update);
        match waited {
            Err(Interrupt::Restart) => {
                self.restarts = 0;
                Next::Again
            }
            Ok(()) | Err(Interrupt::Stop { .. }) => Next::Stop,
        }
    }

    /// Spawns the server's process, its stderr (and `log_stdout`: its stdout)
    /// drained into the log book.
    fn spawn_process(&self, command: &str, log_stdout: bool) -> Result<ServerProcess, StartError> {
        let spec = &self.spec;
        let mut process = process::spawn(&SpawnSpec {
            command,
            args: &spec.args,
            working_directory: &spec.working_directory,
            environment: &spec.environment,
            resources: spec.resources.as_ref(),
        })
        .map_err(|e| {
            if e.is_permanent() {
                StartError::Permanent(e.to_string())
            } else {
                StartError::Transient(e.to_string())
            }
        })?;
        let mut outputs: Vec<Box<dyn tokio::io::AsyncRead + Send + Unpin>> = Vec::new();
        if let Some(stderr) = process.stderr.take() {
            outputs.push(Box::new(stderr));
        }
        if log_stdout && let Some(stdout) = process.stdout.take() {
            outputs.push(Box::new(stdout));
        }
        for output in outputs {
            let logs = self.ctx.logs.clone();
            let id = self.id.clone();
            // The server's output is logged under its span (this task's).
            let span = tracing::Span::current();
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    super::logs::drain_lines(output, |line| {
                        tracing::info!(target: "mcp_manager::server", "{line}");
                        logs.push(&id.server, id.replica, line);
                    })
                    .await;
                },
                span,
            ));
        }
        Ok(process)
    }

    /// Starts the instance: a stdio server's process and MCP session, or a
    /// remote server's connection (after starting its `command`, if any).
    async fn start(&mut self) -> Result<Session, StartError> {
        self.started_at_ms = crate::now_ms();
        if self.spec.connection_type.is_remote() {
            return self.start_remote().await;
        }
        let spec = self.spec.clone();
        let command = spec
            .command
            .as_deref()
            .ok_or_else(|| StartError::Permanent("no command to run".into()))?;
        // One deadline for the whole start: initialize and listing together.
        let deadline = tokio::time::Instant::now() + spec.startup_timeout;
        let mut process = self.spawn_process(command, false)?;
        let (Some(stdout), Some(stdin)) = (process.stdout.take(), process.stdin.take()) else {
            let _ = process::kill(&mut process).await;
            return Err(StartError::Transient(
                "the server's stdio pipes were not available".into(),
            ));
        };
        let (client, cancel) = ManagerClient::new(&self.id.server, &self.ctx.registry, self.owner, self.offers.clone());
        let (stdio, lane) = crate::transport::stdio::connect(stdout, stdin);
        let connect = crate::transport::serve(client.clone(), stdio, &spec, cancel.clone());
        let service = tokio::select! {
            result = tokio::time::timeout_at(deadline, connect) => result,
            // A server that dies during initialize: report its exit, not a timeout.
            status = process.child.wait() => {
                let status = status.map(|s| describe_exit(&s)).unwrap_or_else(|e| e.to_string());
                let tail = self.stderr_tail();
                return Err(StartError::Transient(format!("exited during initialize ({status}){tail}")));
            }
        };
        let service = match service {
            Ok(Ok(service)) => service,
            Ok(Err(e)) => {
                let _ = process::kill(&mut process).await;
                let message = crate::transport::describe_initialize_error(&e);
                // A server that refuses our protocol version will refuse it again.
                let permanent = message.to_ascii_lowercase().contains("protocol version");
                let message = format!("initialize failed: {message}{}", self.stderr_tail());
                return Err(if permanent {
                    StartError::Permanent(message)
                } else {
                    StartError::Transient(message)
                });
            }
            Err(_) => {
                let _ = process::kill(&mut process).await;
                return Err(StartError::Transient(format!(
                    "initialize did not finish within startup_timeout ({}){}",
                    crate::config::duration::format(spec.startup_timeout),
                    self.stderr_tail()
                )));
            }
        };
        let mut session =
            Session::begin(Some(process), service, client, cancel, deadline, spec.startup_timeout).await?;
        session.lane = Some(lane);
        Ok(session)
    }

    /// A remote server: start its `command` if it has one and wait for its port,
    /// then connect (with `max_retries` retries) and initialize.
    async fn start_remote(&mut self) -> Result<Session, StartError> {
        let spec = self.spec.clone();
        let endpoint = crate::transport::endpoint(&spec).map_err(StartError::Permanent)?;
        let process = match spec.command.as_deref() {
            Some(command) => {
                let mut process = self.spawn_process(command, true)?;
                if let Err(e) = self.wait_for_port(&mut process, &endpoint).await {
                    let _ = process::kill(&mut process).await;
                    return Err(e);
                }
                Some(process)
            }
            None => None,
        };
        let auth = self.oauth(&spec, &endpoint).await?;
        connect_session(
            (&spec, auth.as_ref()),
            &mut self.jitter,
            process,
            &self.ctx.logs,
            &self.id,
            self.started_at_ms,
            ManagerClient::new(&self.id.server, &self.ctx.registry, self.owner, self.offers.clone()),
        )
        .await
    }

    /// The OAuth client of a streamable HTTP server that has `auth: oauth` or
    /// a login (tokens in the state dir): none for every other server.
    async fn oauth(
        &self,
        spec: &ServerSpec,
        endpoint: &str,
    ) -> Result<Option<crate::transport::oauth::OAuthClient>, StartError> {
        use crate::transport::oauth::{self, TokenError};
        if spec.connection_type != crate::config::ConnectionType::Http {
            return Ok(None);
        }
        let Some(dir) = &self.ctx.tokens_dir else {
            return match spec.auth {
                Some(_) => Err(StartError::Permanent("no state dir to keep OAuth tokens in".into())),
                None => Ok(None),
            };
        };
        let store = oauth::FileStore::new(dir, &self.id.server);
        let settings = match &spec.auth {
            Some(settings) => settings.clone(),
            // A login without `auth:` (the server asked for it), unless the
            // config now gives a credential of its own.
            None if !crate::transport::static_credential(spec) && store.path().exists() => {
                crate::config::spec::AuthSettings::oauth()
            }
            None => return Ok(None),
        };
        // Discovery and a client_credentials exchange are network round
        // trips: bounded like the connection that follows.
        let manager = tokio::time::timeout(spec.startup_timeout, oauth::stored_manager(endpoint, &settings, store))
            .await
            .map_err(|_| {
                StartError::Transient(format!(
                    "the authorization server did not answer within startup_timeout ({})",
                    crate::config::duration::format(spec.startup_timeout)
                ))
            })?
            .map_err(|e| match e {
                TokenError::NeedsLogin(why) => StartError::Permanent(needs_login(&self.id.server, &why)),
                TokenError::Transient(why) => StartError::Transient(format!("OAuth: {why}")),
            })?;
        crate::transport::oauth_client(spec, manager)
            .map(Some)
            .map_err(|e| StartError::Permanent(e.message().to_string()))
    }

    /// Waits until a locally started remote server accepts TCP connections on its
    /// endpoint's port, within `startup_timeout`.
    async fn wait_for_port(&self, process: &mut ServerProcess, endpoint: &str) -> Result<(), StartError> {
        let address = crate::transport::socket_address(endpoint)
            .ok_or_else(|| StartError::Permanent("cannot tell which port to wait for".into()))?;
        let deadline = Instant::now() + self.spec.startup_timeout;
        loop {
            tokio::select! {
                status = process.child.wait() => {
                    let status = status.map(|s| describe_exit(&s)).unwrap_or_else(|e| e.to_string());
                    return Err(StartError::Transient(format!("exited before its port answered ({status}){}", self.stderr_tail())));
                }
                connected = tokio::net::TcpStream::connect(&address) => {
                    if connected.is_ok() {
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(StartError::Transient(format!(
                    "its port {address} did not answer within startup_timeout ({}){}",
                    crate::config::duration::format(self.spec.startup_timeout),
                    self.stderr_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stderr_tail(&self) -> String {
        stderr_tail(&self.ctx.logs, &self.id, self.started_at_ms)
    }

    /// Watches a running instance until it must stop, restart or has crashed.
    async fn supervise(&mut self, session: &mut Session, rx: &mut mpsc::UnboundedReceiver<Command>) -> Ended {
        let mut live_changed = self.ctx.live_version.subscribe();
        let mut tracker = HealthTracker::started();
        let mut healthy_since = Instant::now();
        let mut timers = Timers::new(&self.spec);
        let mut update: Option<Arc<ServerSpec>> = None;
        // Probe right after start: a remote server that connected but cannot
        // answer is known at once, not one interval later.
        let mut probe_now = self.ctx.settings().monitoring;
        loop {
            if let Some(spec) = update.take() {
                timers.retune(&self.spec, &spec);
                self.ctx.registry.update_spec(&self.id.server, spec.clone());
                self.spec = spec;
            }
            let probe_due = std::mem::take(&mut probe_now)
                || tokio::select! {
                    status = exited(&mut session.process) => {
                        let detected = Instant::now();
                        // Up and healthy long enough: this crash starts the backoff over.
                        if tracker.state() != Health::Unhealthy && healthy_since.elapsed() >= self.ctx.settings().backoff_reset_after {
                            self.restarts = 0;
                        }
                        let status = status.map(|s| describe_exit(&s)).unwrap_or_else(|e| e.to_string());
                        self.emit(EventKind::Crashed { status: status.clone(), detected });
                        return Ended::Crashed(format!("exited ({status})"));
                    }
                    _ = &mut session.session, if !session.session_done => {
                        session.session_done = true;
                        return self.session_ended(session).await;
                    }
                    command = rx.recv() => match command {
                        Some(Command::Stop { kill }) => return Ended::Stop { kill },
                        None => return Ended::Stop { kill: false },
                        Some(Command::Restart) => return Ended::Restart,
                        Some(Command::Update(spec)) => {
                            update = Some(spec);
                            false
                        }
                    },
                    // New manager settings: the guards below read them afresh.
                    _ = live_changed.changed() => false,
                    () = session.changed.notified() => {
                        if let Err(interrupt) = until_command(rx, &mut update, self.relist(session)).await {
                            return interrupt.into();
                        }
                        false
                    }
                    _ = timers.relist.tick(), if list_ttl(&self.spec).is_some() => {
                        if let Err(interrupt) = until_command(rx, &mut update, self.relist(session)).await {
                            return interrupt.into();
                        }
                        false
                    }
                    _ = timers.probe.tick(), if self.ctx.settings().monitoring => true,
                    // A call through the gateway met a transport error: check now.
                    () = session.suspect.notified() => self.ctx.settings().monitoring,
                };
            if !probe_due {
                continue;
            }
            let (mut probe, mut lost) = match until_command(rx, &mut update, self.probe(&session.peer)).await {
                Ok(probed) => probed,
                Err(interrupt) => return interrupt.into(),
            };
            if lost {
                // One failed send may be a blip: the connection counts as lost
                // when a second probe, a moment later, fails the same way.
                let again = async {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    self.probe(&session.peer).await
                };
                (probe, lost) = match until_command(rx, &mut update, again).await {
                    Ok(probed) => probed,
                    Err(interrupt) => return interrupt.into(),
                };
            }
            if lost {
                // The connection is gone (a remote server went away, a pipe
                // broke): reconnect now rather than after failure_threshold
                // more probes.
                let error = probe.error.clone().unwrap_or_default();
                self.ctx.registry.set_health(&self.id, Health::Critical);
                self.emit(EventKind::Health {
                    health: Health::Critical,
                    probe,
                });
                self.emit(EventKind::Crashed {
                    status: format!("connection lost: {error}"),
                    detected: Instant::now(),
                });
                return Ended::Crashed(format!("the connection to the server was lost ({error})"));
            }
            let before = tracker.state();
            let health = tracker.record(
                probe.clone(),
                &Thresholds {
                    failure_threshold: self.spec.failure_threshold,
                    recovery_threshold: self.spec.recovery_threshold,
                    degraded_latency: self.spec.degraded_latency,
                },
            );
            self.ctx.registry.set_health(&self.id, health);
            self.emit(EventKind::Health { health, probe });
            match health {
                Health::Unhealthy if self.spec.auto_restart => return Ended::Unhealthy,
                Health::Unhealthy => {}
                _ if before == Health::Unhealthy => healthy_since = Instant::now(),
                _ => {}
            }
        }
    }

    /// The MCP session ended (stdout closed, connection lost): a crash. The
    /// process usually exits right after closing stdout; its exit status is
    /// reported when it comes promptly.
    async fn session_ended(&self, session: &mut Session) -> Ended {
        if session.process.is_none() {
            let status = "connection lost".to_string();
            self.emit(EventKind::Crashed {
                status,
                detected: Instant::now(),
            });
            return Ended::Crashed("the connection to the server was lost".into());
        }
        if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_millis(200), exited(&mut session.process)).await {
            let status = describe_exit(&status);
            self.emit(EventKind::Crashed {
                status: status.clone(),
                detected: Instant::now(),
            });
            return Ended::Crashed(format!("exited ({status})"));
        }
        Ended::Crashed(if self.spec.connection_type.is_remote() {
            "the connection to the server was lost".into()
        } else {
            "its stdout closed".into()
        })
    }

    /// Lists the server's tools, resources and prompts again and passes them on.
    async fn relist(&self, session: &mut Session) {
        // Bounded like any request: a server that stalls keeps its last lists.
        let timeout = self.spec.request_timeout;
        match tokio::time::timeout(timeout, list_capabilities(&session.peer)).await {
            Ok(lists) => session.lists = Arc::new(lists),
            Err(_) => {
                tracing::warn!(
                    "listing tools, resources and prompts took longer than request_timeout ({}); keeping the last lists",
                    crate::config::duration::format(timeout)
                );
                return;
            }
        }
        self.ctx.registry.update_lists(&self.id, session.lists.clone());
        self.emit(EventKind::Capabilities(session.lists.clone()));
    }

    /// One health probe: MCP ping; a server without ping (method not found, or a
    /// protocol without it) is probed with a cheap `tools/list` instead. The
    /// flag says the connection itself failed (not a slow or wrong answer).
    async fn probe(&self, peer: &Peer<RoleClient>) -> (ProbeResult, bool) {
        let probes = self.ctx.probes();
        let _slot = probes.acquire().await;
        let timeout = self.spec.health_check_timeout;
        let started = Instant::now();
        let no_answer = || format!("no answer within {}", crate::config::duration::format(timeout));
        let failed = |e: &ServiceError| (crate::transport::describe_service_error(e), is_transport_error(e));
        let ping = tokio::time::timeout(
            timeout,
            peer.send_request(ClientRequest::PingRequest(PingRequest::default())),
        )
        .await;
        let result = match ping {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(ServiceError::McpError(e))) if e.code == ErrorCode::METHOD_NOT_FOUND => Ok(()),
            Ok(Err(ServiceError::McpError(_) | ServiceError::UnexpectedResponse)) => {
                match tokio::time::timeout(timeout.saturating_sub(started.elapsed()), peer.list_tools(None)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(failed(&e)),
                    Err(_) => Err((no_answer(), false)),
                }
            }
            Ok(Err(e)) => Err(failed(&e)),
            Err(_) => Err((no_answer(), false)),
        };
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match result {
            Ok(()) => (
                ProbeResult {
                    at_ms: crate::now_ms(),
                    ok: true,
                    latency_ms: Some(latency_ms),
                    error: None,
                },
                false,
            ),
            Err((error, lost)) => (
                ProbeResult {
                    at_ms: crate::now_ms(),
                    ok: false,
                    latency_ms: None,
                    error: Some(error),
                },
                lost,
            ),
        }
    }

    /// Closes the MCP session, then stops the process group (rmcp's close does not
    /// signal grandchildren).
    async fn shutdown(&self, mut session: Session, kill: bool) {
        session.cancel.cancel();
        if !session.session_done {
            let _ = tokio::time::timeout(Duration::from_secs(1), &mut session.session).await;
        }
        let Some(process) = session.process.as_mut() else {
            return;
        };
        let result = if kill {
            process::kill(process).await
        } else {
            process::stop(process, self.spec.stop_grace_period).await
        };
        if let Err(e) = result {
            tracing::warn!(server = %self.id, "stopping: {e}");
        }
    }
}

/// `cache.list_ttl`: list again this often, for servers that never announce changes.
fn list_ttl(spec: &ServerSpec) -> Option<Duration> {
    spec.cache.as_ref().and_then(|c| c.list_ttl).filter(|d| !d.is_zero())
}

/// The timers of a running instance: health probes and re-listing.
struct Timers {
    probe: tokio::time::Interval,
    relist: tokio::time::Interval,
}

impl Timers {
    fn new(spec: &ServerSpec) -> Timers {
        Timers {
            probe: Self::every(spec.health_check_interval),
            relist: Self::every(list_ttl(spec).unwrap_or(Duration::from_secs(3600))),
        }
    }

    /// Fires one period from now, then every period; late ticks are delayed, not bunched.
    fn every(period: Duration) -> tokio::time::Interval {
        let mut interval = tokio::time::interval(period.max(Duration::from_millis(1)));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.reset();
        interval
    }

    /// Re-arms the timers whose period `new` changes.
    fn retune(&mut self, old: &ServerSpec, new: &ServerSpec) {
        if new.health_check_interval != old.health_check_interval {
            self.probe = Self::every(new.health_check_interval);
        }
        if list_ttl(new) != list_ttl(old) {
            self.relist = Self::every(list_ttl(new).unwrap_or(Duration::from_secs(3600)));
        }
    }
}

/// Servers speaking protocol 2026-07-28 send `list_changed` only on a
/// `subscriptions/listen` stream: open one, and wake the actor on each change.
/// Older servers send them unasked (see [`ManagerClient`]) and refuse `listen`.
async fn watch_lists(
    peer: &Peer<RoleClient>,
    changed: &Arc<Notify>,
    cancel: &CancellationToken,
    by: tokio::time::Instant,
) {
    let filter = SubscriptionFilter::builder()
        .tools_list_changed()
        .resources_list_changed()
        .prompts_list_changed()
        .build();
    let Ok(Ok(mut subscription)) = tokio::time::timeout_at(by, peer.listen(filter)).await else {
        return;
    };
    let changed = changed.clone();
    let cancel = cancel.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                next = subscription.next() => match next {
                    Ok(Some(_)) => changed.notify_one(),
                    _ => return,
                },
            }
        }
    });
}

/// Lists tools (with definition hashes), resources, templates and prompts.
async fn list_capabilities(peer: &Peer<RoleClient>) -> Lists {
    let mut lists = Lists::default();
    // What the server said at initialize, read once.
    let info = peer
        .peer_info()
        .and_then(|info| serde_json::to_value(&*info).ok())
        .unwrap_or_default();
    let text = |pointer: &str| {
        info.pointer(pointer)
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_string()
    };
    lists.server_name = text("/serverInfo/name");
    lists.server_version = text("/serverInfo/version");
    lists.protocol_version = text("/protocolVersion");
    if let Ok(tools) = peer.list_all_tools().await {
        lists.tool_hashes = tools.iter().map(tool_hash).collect();
        lists.tools = tools;
    }
    if info.pointer("/capabilities/resources").is_some() {
        lists.resources = peer.list_all_resources().await.unwrap_or_default();
        lists.templates = peer.list_all_resource_templates().await.unwrap_or_default();
    }
    if info.pointer("/capabilities/prompts").is_some() {
        lists.prompts = peer.list_all_prompts().await.unwrap_or_default();
    }
    lists
}

/// The request failed because the connection did, not because of the answer.
fn is_transport_error(e: &ServiceError) -> bool {
    matches!(e, ServiceError::TransportSend(_) | ServiceError::TransportClosed)
}

/// "exit status 1" / "killed by signal 9".
pub fn describe_exit(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "unknown exit".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 11, defect 13: the cause, not the last line of noise.
    #[test]
    fn the_telling_lines_of_a_crash_name_its_cause() {
        let node = [
            "node:internal/modules/cjs/loader:1228",
            "  throw err;",
            "  ^",
            "",
            "Error: Cannot find module '/srv/missing.js'",
            "    at Module._resolveFilename (node:internal/modules/cjs/loader:1225:15)",
            "    at node:internal/main/run_main_module:28:49 {",
            "  code: 'MODULE_NOT_FOUND',",
            "}",
            "",
            "Node.js v20.20.2",
        ];
        assert_eq!(
            telling_lines(&node),
            ["Error: Cannot find module '/srv/missing.js'", "Node.js v20.20.2"]
        );
        let python = [
            "Traceback (most recent call last):",
            "  File \"/srv/app.py\", line 3, in <module>",
            "ConnectionRefusedError: [Errno 111] Connection refused",
        ];
        assert_eq!(
            telling_lines(&python),
            ["ConnectionRefusedError: [Errno 111] Connection refused"]
        );
        assert_eq!(telling_lines(&["starting", "listening on 8080"]), ["listening on 8080"]);
        assert!(telling_lines(&["", "  "]).is_empty());
    }
}
