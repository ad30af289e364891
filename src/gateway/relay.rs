//! What flows between a server and the gateway's clients besides the answers
//! to their requests: server → client requests (sampling, elicitation, roots)
//! during a call, progress, log messages, resource updates, and the settings
//! a client makes that every server must see (the log level, subscriptions).
//!
//! Each upstream session has a [`Relay`]: the calls in flight on it and the
//! client sessions that made them. A server request that arrives on the
//! response stream of one of our requests (streamable HTTP) goes to that
//! request's client; otherwise (stdio, SSE) to the client of the newest call
//! in flight — exact for a server that does one call at a time, which is how
//! servers use sampling and elicitation. A request with no call in flight, or
//! from a server whose calling client lacks the capability, gets an error the
//! server can act on: never a silent decline.
//!
//! [`Clients`] is the registry's list of client sessions: the level each set
//! with `logging/setLevel` and the resources each subscribed to.

#![allow(deprecated)] // logging and resources/subscribe are deprecated by the 2026 revision, not gone

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use rmcp::model::{
    CancelledNotification, CancelledNotificationParam, ClientCapabilities, ClientRequest, ClientResult,
    CreateMessageRequest, CreateMessageRequestParams, CreateMessageResult, ElicitRequest, ElicitRequestParams,
    ElicitResult, ErrorCode, GetExtensions, InputRequest, InputRequests, InputResponses, ListRootsRequest,
    ListRootsResult, LoggingLevel, LoggingMessageNotification, LoggingMessageNotificationParam, ProgressNotification,
    ProgressNotificationParam, ProgressToken, RequestId, ResourceUpdatedNotification, ResourceUpdatedNotificationParam,
    ServerJsonRpcMessage, ServerNotification, ServerRequest, ServerResult, SetLevelRequest, SetLevelRequestParams,
    SubscribeRequest, SubscribeRequestParams, SubscriptionFilter,
};
use rmcp::service::{InboundStreamOrigin, OriginatingRequestId, Peer, RequestContext, RoleClient, RoleServer};
use rmcp::{ErrorData as McpError, ServiceError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::metrics::ServerMetrics;
use super::registry::{Registry, Upstream};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every section under these locks is short and does not panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the gateway advertises toward every upstream: all a client can have.
/// A shared upstream session serves many clients; each request is checked
/// against the capabilities of the client it goes to ([`Relay::ask`]).
pub fn upstream_capabilities() -> ClientCapabilities {
    let caps = serde_json::json!({
        "sampling": {},
        "elicitation": { "form": {}, "url": {} },
        "roots": { "listChanged": false },
    });
    // A fixed, valid value (covered by a unit test).
    serde_json::from_value(caps).unwrap_or_default()
}

/// Who the gateway is to every upstream.
pub fn upstream_identity() -> rmcp::model::Implementation {
    rmcp::model::Implementation::new("mcp-manager", env!("CARGO_PKG_VERSION"))
}

/// A client's request in flight (the one a server request belongs to).
#[derive(Clone)]
pub struct Caller {
    pub peer: Peer<RoleServer>,
    /// The client's request id: server requests ride its response stream.
    pub request: RequestId,
    /// The gateway session (0 for a request without one: 2026-07-28 clients).
    pub session: u64,
    /// What the client declared (per request in the 2026-07-28 protocol).
    pub capabilities: Option<ClientCapabilities>,
    /// 2026-07-28 clients: the level their request asked logs at (none: no logs).
    pub log_level: Option<LoggingLevel>,
    /// 2026-07-28 clients take no server requests: what the server asks is
    /// turned into an input-required result ([`Interjection`]).
    pub interject: Option<mpsc::UnboundedSender<Interjection>>,
}

/// What a server asked, during a call of a 2026-07-28 client, that the call's
/// answer must carry instead of a result.
pub struct Interjection {
    pub request: InputRequest,
    pub answer: oneshot::Sender<Result<ClientResult, McpError>>,
}

struct Call {
    key: u64,
    /// Our request id upstream, once sent.
    upstream: Option<RequestId>,
    caller: Caller,
    /// Cancelled when the call ends: a question of its server to its client
    /// ends with it.
    done: CancellationToken,
    /// Waiting for its client's answers (a 2026-07-28 client): its server is
    /// waiting on us, not asking.
    parked: bool,
}

/// Progress routes: our progress token upstream → where the client gets
/// it, its token, and the call's progress signal (each progress restarts
/// its timeout).
pub type ProgressRoutes = Mutex<HashMap<ProgressToken, (CallStream, ProgressToken, Arc<tokio::sync::Notify>)>>;

/// Where the messages of one call go: through the client's session (rmcp
/// puts them on the call's stream), or straight onto the stream of a call
/// answered directly (`api::direct`).
#[derive(Clone)]
pub enum CallStream {
    Session(Peer<RoleServer>),
    Direct(mpsc::UnboundedSender<ServerJsonRpcMessage>),
}

impl CallStream {
    /// The stream of the call `ctx` is the context of.
    pub fn of(ctx: &RequestContext<RoleServer>) -> Self {
        match ctx.extensions.get::<DirectStream>() {
            Some(DirectStream(direct)) => CallStream::Direct(direct.clone()),
            None => CallStream::Session(ctx.peer.clone()),
        }
    }

    pub async fn progress(&self, params: ProgressNotificationParam) {
        match self {
            CallStream::Session(peer) => {
                let _ = peer.notify_progress(params).await;
            }
            CallStream::Direct(direct) => {
                let note = ServerNotification::ProgressNotification(ProgressNotification::new(params));
                let _ = direct.send(ServerJsonRpcMessage::notification(note));
            }
        }
    }
}

/// In a call's context: the call is answered directly, and its messages
/// go here.
#[derive(Clone)]
pub struct DirectStream(pub mpsc::UnboundedSender<ServerJsonRpcMessage>);

/// Per upstream session: its calls in flight and where their traffic goes.
pub struct Relay {
    server: String,
    registry: Weak<Registry>,
    /// The client session this upstream session belongs to, for a
    /// `session: per_client` server: what it sends goes to that client only.
    owner: Option<u64>,
    progress: ProgressRoutes,
    calls: Mutex<Vec<Call>>,
    next: AtomicU64,
    /// A 2026-07-28 server: the `subscriptions/listen` that carries updates
    /// of the resources gateway clients subscribed to, with its URIs.
    resources: tokio::sync::Mutex<Option<ResourceListener>>,
    /// Listens in a row the server ended at once (for the pause).
    relistens: std::sync::atomic::AtomicU32,
}

/// An open `subscriptions/listen` for resource updates; dropped, it ends
/// (the subscription is cancelled upstream).
struct ResourceListener {
    uris: BTreeSet<String>,
    task: tokio::task::JoinHandle<()>,
    /// Set by the task when the server ended the listen.
    ended: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for ResourceListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    pub fn new(server: &str, registry: Weak<Registry>, owner: Option<u64>) -> Self {
        Relay {
            server: server.to_string(),
            registry,
            owner,
            progress: Mutex::default(),
            calls: Mutex::default(),
            next: AtomicU64::new(1),
            resources: tokio::sync::Mutex::default(),
            relistens: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// A 2026-07-28 server has no `resources/subscribe`: its updates come on
    /// one `subscriptions/listen` for every URI gateway clients subscribed
    /// to, opened again (acknowledged before the old one ends) when the set
    /// changes, closed when it is empty.
    pub async fn listen_resources(self: &Arc<Self>, peer: &Peer<RoleClient>) -> Result<(), McpError> {
        let Some(registry) = self.registry.upgrade() else {
            return Ok(());
        };
        let mut current = self.resources.lock().await;
        // Read under the lock: two changes in a row apply in order.
        let uris = registry.clients.uris(&self.server, self.owner);
        // A listen the server ended is no listen.
        if current
            .as_ref()
            .is_some_and(|l| l.ended.load(Ordering::Acquire) || l.task.is_finished())
        {
            *current = None;
        }
        if current.as_ref().map(|l| &l.uris) == Some(&uris) || (current.is_none() && uris.is_empty()) {
            return Ok(());
        }
        if uris.is_empty() {
            *current = None;
            return Ok(());
        }
        let filter = SubscriptionFilter::builder()
            .resource_subscriptions(uris.iter().cloned())
            .build();
        let server = &self.server;
        let mut subscription = tokio::time::timeout(LISTEN_TIMEOUT, peer.listen(filter))
            .await
            .map_err(|_| {
                McpError::internal_error(
                    format!("server '{server}' did not acknowledge subscriptions/listen within 10 s"),
                    None,
                )
            })?
            .map_err(|e| match e {
                ServiceError::McpError(e) => e,
                e => McpError::internal_error(
                    format!(
                        "server '{server}' could not be subscribed to: {}",
                        crate::transport::describe_service_error(&e)
                    ),
                    None,
                ),
            })?;
        let weak = Arc::downgrade(self);
        let peer = peer.clone();
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ends = ended.clone();
        let task = tokio::spawn(async move {
            let opened = tokio::time::Instant::now();
            let mut delivered = false;
            while let Ok(Some(note)) = subscription.next().await {
                let Some(relay) = weak.upgrade() else { return };
                if let ServerNotification::ResourceUpdatedNotification(note) = note {
                    delivered = true;
                    relay.resource_updated(note.params).await;
                }
            }
            ends.store(true, Ordering::Release);
            let Some(relay) = weak.upgrade() else { return };
            // The server ended the listen (the session lives on): open it
            // again after a pause that doubles, up to a minute, while the
            // server keeps ending listens at once.
            let quick = !delivered && opened.elapsed() < LISTEN_RETRY_MAX;
            let failures = if quick {
                relay.relistens.fetch_add(1, Ordering::Relaxed)
            } else {
                relay.relistens.store(0, Ordering::Relaxed);
                0
            };
            drop(relay);
            let pause = LISTEN_RETRY.saturating_mul(1 << failures.min(6)).min(LISTEN_RETRY_MAX);
            tokio::time::sleep(pause).await;
            if let Some(relay) = weak.upgrade()
                && !peer.is_transport_closed()
            {
                tracing::warn!(server = %relay.server, "the server ended its resource subscription; subscribing again");
                tokio::spawn(listen_resources_again(relay, peer));
            }
        });
        *current = Some(ResourceListener { uris, task, ended });
        Ok(())
    }

    /// A call starts: its server requests go to `caller` until [`Relay::end`].
    pub fn begin(&self, caller: Caller) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.calls).push(Call {
            key,
            upstream: None,
            caller,
            done: CancellationToken::new(),
            parked: false,
        });
        key
    }

    /// The call was sent upstream with this id.
    pub fn sent(&self, key: u64, upstream: RequestId) {
        if let Some(call) = lock(&self.calls).iter_mut().find(|c| c.key == key) {
            call.upstream = Some(upstream);
        }
    }

    /// The call waits for its client's answers (or goes on again).
    pub fn set_parked(&self, key: u64, parked: bool) {
        if let Some(call) = lock(&self.calls).iter_mut().find(|c| c.key == key) {
            call.parked = parked;
        }
    }

    /// Progress of our request `ours` goes to `peer`, under the client's token.
    pub fn route_progress(
        &self,
        ours: ProgressToken,
        to: CallStream,
        client_token: ProgressToken,
        ticks: Arc<tokio::sync::Notify>,
    ) {
        lock(&self.progress).insert(ours, (to, client_token, ticks));
    }

    pub fn forget_progress(&self, ours: &ProgressToken) {
        lock(&self.progress).remove(ours);
    }

    /// A parked call resumes on another request of its client.
    pub fn rebind(&self, key: u64, caller: Caller) {
        if let Some(call) = lock(&self.calls).iter_mut().find(|c| c.key == key) {
            call.caller = caller;
        }
    }

    pub fn end(&self, key: u64) {
        lock(&self.calls).retain(|c| {
            if c.key == key {
                c.done.cancel();
            }
            c.key != key
        });
    }

    /// The client a server request belongs to: the call whose response
    /// stream it came on (a streamable HTTP server says), else the newest
    /// call in flight that is not parked (a parked call's server waits for
    /// our answer; it is not asking). The second is exact when one client
    /// uses the session at a time, or with `session: per_client`; with calls
    /// of several clients in flight on one stdio or SSE session the wire does
    /// not say which call asks, and the newest is the best guess (logged).
    fn caller(&self, origin: Option<&RequestId>) -> Result<(Caller, CancellationToken), &'static str> {
        let calls = lock(&self.calls);
        let call = match origin {
            Some(id) => calls
                .iter()
                .find(|c| c.upstream.as_ref() == Some(id))
                .ok_or("it came on the response stream of no call in flight")?,
            None => {
                let mut asking = calls.iter().filter(|c| !c.parked);
                let newest = asking.next_back().ok_or("it has no call in flight")?;
                if asking.any(|c| c.caller.session != newest.caller.session) {
                    tracing::warn!(
                        server = %self.server,
                        "a server request with calls of several clients in flight went to the newest call's client (its transport does not say which call asks; `session: per_client` makes this exact)"
                    );
                }
                newest
            }
        };
        Ok((call.caller.clone(), call.done.clone()))
    }

    /// The client sessions with calls in flight, one peer each.
    fn callers(&self) -> Vec<Caller> {
        let calls = lock(&self.calls);
        let mut seen = BTreeSet::new();
        calls
            .iter()
            .rev()
            .filter(|c| seen.insert(c.caller.session))
            .map(|c| c.caller.clone())
            .collect()
    }

    /// Forwards a server request to the client it belongs to and returns its
    /// answer, or an error the server can act on.
    async fn ask(
        &self,
        mut request: ServerRequest,
        what: Feature,
        ctx: &RequestContext<RoleClient>,
    ) -> Result<ClientResult, McpError> {
        let origin = match ctx.extensions.get::<InboundStreamOrigin>() {
            Some(InboundStreamOrigin::OutboundRequest(id)) => Some(id),
            _ => None,
        };
        let server = &self.server;
        let (caller, done) = self.caller(origin).map_err(|why| {
            McpError::new(
                ErrorCode::INVALID_REQUEST,
                format!(
                    "{} through mcp-manager's gateway goes to the client whose call is in flight on '{server}': {why}",
                    what.describe()
                ),
                None,
            )
        })?;
        // A client without the capability: the server is told, as that
        // client would tell it directly, and decides what its call does (a
        // request that is not about the call, such as a roots sync, must not
        // fail it).
        if !caller.capabilities.as_ref().is_some_and(|caps| what.supported_by(caps)) {
            return Err(McpError::new(
                ErrorCode::METHOD_NOT_FOUND,
                format!(
                    "the client calling '{server}' through mcp-manager does not support {}",
                    what.describe()
                ),
                None,
            ));
        }
        if let Some(interject) = &caller.interject {
            // A 2026-07-28 client: the call answers with the question.
            let (answer, answered) = oneshot::channel();
            let Some(request) = what.input_request(request) else {
                return Err(unexpected_answer());
            };
            if interject.send(Interjection { request, answer }).is_err() {
                return Err(McpError::new(
                    ErrorCode::INTERNAL_ERROR,
                    "the call ended".to_string(),
                    None,
                ));
            }
            return tokio::select! {
                answer = answered => answer.unwrap_or_else(|_| Err(McpError::new(
                    ErrorCode::INTERNAL_ERROR,
                    "the client did not answer before the call expired".to_string(),
                    None,
                ))),
                () = ctx.ct.cancelled() => Err(McpError::new(ErrorCode::INTERNAL_ERROR, "cancelled".to_string(), None)),
                () = done.cancelled() => Err(call_ended()),
            };
        }
        // On the response stream of the client's request (streamable HTTP).
        // Sent from a task of its own: rmcp tags a request sent from within a
        // request handler (this one, of the server's request) with that
        // request's id, over the tag set here.
        request
            .extensions_mut()
            .insert(OriginatingRequestId(caller.request.clone()));
        let peer = caller.peer.clone();
        let handle = tokio::spawn(async move {
            peer.send_cancellable_request(request, rmcp::service::PeerRequestOptions::no_options())
                .await
        })
        .await
        .map_err(|_| call_ended())?
        .map_err(|e| client_lost(&e))?;
        let id = handle.id.clone();
        tokio::select! {
            answer = handle.rx => match answer {
                Ok(Ok(result)) => Ok(result),
                Ok(Err(ServiceError::McpError(e))) => Err(e),
                Ok(Err(e)) => Err(client_lost(&e)),
                Err(_) => Err(client_lost(&ServiceError::TransportClosed)),
            },
            // The server cancelled its request, or the call it belongs to
            // ended: so do we, toward the client.
            () = async { tokio::select! { () = ctx.ct.cancelled() => {}, () = done.cancelled() => {} } } => {
                let note = CancelledNotification::new(CancelledNotificationParam::new(
                    Some(id),
                    Some("cancelled by the server".to_string()),
                ));
                let _ = caller.peer.send_notification(note.into()).await;
                Err(McpError::new(ErrorCode::INTERNAL_ERROR, "cancelled".to_string(), None))
            }
        }
    }

    pub async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        ctx: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, McpError> {
        let request = ServerRequest::CreateMessageRequest(CreateMessageRequest::new(params));
        match self.ask(request, Feature::Sampling, &ctx).await? {
            ClientResult::CreateMessageResult(result) => Ok(*result),
            _ => Err(unexpected_answer()),
        }
    }

    pub async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        ctx: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, McpError> {
        let what = match &params {
            ElicitRequestParams::UrlElicitationParams { .. } => Feature::ElicitUrl,
            _ => Feature::ElicitForm,
        };
        let request = ServerRequest::ElicitRequest(ElicitRequest::new(params));
        match self.ask(request, what, &ctx).await? {
            ClientResult::ElicitResult(result) => Ok(result),
            _ => Err(unexpected_answer()),
        }
    }

    pub async fn list_roots(&self, ctx: RequestContext<RoleClient>) -> Result<ListRootsResult, McpError> {
        let request = ServerRequest::ListRootsRequest(ListRootsRequest::default());
        match self.ask(request, Feature::Roots, &ctx).await? {
            ClientResult::ListRootsResult(result) => Ok(result),
            _ => Err(unexpected_answer()),
        }
    }

    /// Progress of a forwarded request, to its client under the client's token.
    pub async fn progress(&self, mut params: ProgressNotificationParam) {
        let route = lock(&self.progress).get(&params.progress_token).cloned();
        if let Some((to, client_token, ticks)) = route {
            params.progress_token = client_token;
            to.progress(params).await;
            // After the send: waking the call first could let its answer
            // overtake this progress.
            ticks.notify_one();
        }
    }

    /// A log message, named after its server: to the clients with calls in
    /// flight on this session (the messages are about their calls), else to
    /// every client session; each gets what its `logging/setLevel` asked for.
    pub async fn log(&self, mut params: LoggingMessageNotificationParam) {
        params.logger = Some(match params.logger.take() {
            Some(logger) if !logger.is_empty() && logger != self.server => format!("{}/{logger}", self.server),
            _ => self.server.clone(),
        });
        let callers = self.callers();
        let recipients: Vec<Peer<RoleServer>> = match self.registry.upgrade() {
            // A client's own session of a per_client server talks to it alone.
            Some(registry) if callers.is_empty() && self.owner.is_some() => registry
                .clients
                .wanting(params.level)
                .into_iter()
                .filter(|(id, _)| Some(*id) == self.owner)
                .map(|(_, peer)| peer)
                .collect(),
            Some(registry) if callers.is_empty() => registry
                .clients
                .wanting(params.level)
                .into_iter()
                .map(|(_, peer)| peer)
                .collect(),
            Some(registry) => callers
                .into_iter()
                .filter(|c| match c.interject {
                    // 2026-07-28: logs only at the level the request asked for.
                    Some(_) => c.log_level.is_some_and(|min| rank(params.level) >= rank(min)),
                    None => registry.clients.wants(c.session, params.level),
                })
                .map(|c| c.peer)
                .collect(),
            None => Vec::new(),
        };
        for peer in recipients {
            let note = ServerNotification::LoggingMessageNotification(LoggingMessageNotification::new(params.clone()));
            let _ = peer.send_notification(note).await;
        }
    }

    /// A resource changed: to the sessions subscribed to it, under the URI
    /// they know it by.
    pub async fn resource_updated(&self, params: ResourceUpdatedNotificationParam) {
        let Some(registry) = self.registry.upgrade() else {
            return;
        };
        let uri = registry.catalog().exposed_uri(&self.server, &params.uri);
        let subscribed = registry.clients.subscribed(&self.server, &params.uri);
        for (_, peer) in subscribed
            .into_iter()
            .filter(|(id, _)| self.owner.is_none_or(|owner| *id == owner))
        {
            let mut params = params.clone();
            params.uri = uri.clone();
            let note = ServerNotification::ResourceUpdatedNotification(ResourceUpdatedNotification::new(params));
            let _ = peer.send_notification(note).await;
        }
    }
}

/// A request sent upstream. Dropping it, however the handler ends (answered,
/// timed out, cancelled, or its future dropped because the client went away),
/// frees the replica's in-flight slot, forgets the progress route and, unless
/// the upstream answered, tells the upstream to cancel.
pub struct Pending {
    pub upstream: Arc<Upstream>,
    /// Its server's metrics: a slot given back wakes the next queued request.
    metrics: Arc<ServerMetrics>,
    /// Its entry in the upstream's relay.
    pub key: u64,
    /// Counted in the upstream's `in_flight` (see [`Pending::suspend`]).
    holds_slot: bool,
    pub id: Option<RequestId>,
    pub progress: Option<ProgressToken>,
    pub answered: bool,
    pub cancel_reason: &'static str,
}

impl Pending {
    pub fn new(upstream: Arc<Upstream>, metrics: Arc<ServerMetrics>, caller: Caller) -> Self {
        upstream.in_flight.fetch_add(1, Ordering::Relaxed);
        let key = upstream.relay.begin(caller);
        Pending {
            upstream,
            metrics,
            key,
            holds_slot: true,
            id: None,
            progress: None,
            answered: false,
            cancel_reason: "the client went away",
        }
    }
}

impl Pending {
    /// Parked, waiting for a client's answers (which may take a person
    /// minutes): the request stays open upstream but takes no slot of
    /// `max_concurrent_requests` meanwhile.
    pub fn suspend(&mut self) {
        if std::mem::replace(&mut self.holds_slot, false) {
            self.upstream.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.upstream.relay.set_parked(self.key, true);
            self.metrics.slot_freed();
        }
    }

    /// Resumed with the client's answers.
    pub fn resume(&mut self) {
        if !std::mem::replace(&mut self.holds_slot, true) {
            self.upstream.in_flight.fetch_add(1, Ordering::Relaxed);
            self.upstream.relay.set_parked(self.key, false);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.suspend();
        self.upstream.relay.end(self.key);
        if let Some(token) = &self.progress {
            self.upstream.relay.forget_progress(token);
        }
        if let (false, Some(id)) = (self.answered, self.id.take()) {
            let peer = self.upstream.peer.clone();
            let note = CancelledNotification::new(CancelledNotificationParam::new(
                Some(id),
                Some(self.cancel_reason.to_string()),
            ));
            // Drop cannot await: send from a task (we are always inside the runtime).
            tokio::spawn(async move {
                let _ = peer.send_notification(note.into()).await;
            });
        }
    }
}

/// A request in flight upstream, with what its server may still ask.
pub struct Live {
    pub call: Pending,
    pub rx: oneshot::Receiver<Result<ServerResult, ServiceError>>,
    /// The server's questions for a 2026-07-28 client: one channel for the
    /// call's whole life (a question asked while it is parked waits here).
    pub inputs: mpsc::UnboundedReceiver<Interjection>,
    pub interject: mpsc::UnboundedSender<Interjection>,
    /// Woken by each progress the server sends for the call (the client
    /// asked for progress: the call's timeout starts again).
    pub ticks: Arc<tokio::sync::Notify>,
}

/// A call whose server asked a 2026-07-28 client for input: kept, its
/// upstream request open, until the client retries with the answers (or it
/// expires, which cancels the request upstream).
pub struct Parked {
    pub live: Live,
    pub server: String,
    /// The request a retry must repeat: method and name (or URI).
    pub what: String,
    /// The questions, by the keys the client was given.
    pub questions: Vec<Question>,
    pub expires: tokio::time::Instant,
}

pub struct Question {
    pub key: String,
    pub request: InputRequest,
    pub answer: oneshot::Sender<Result<ClientResult, McpError>>,
}

/// The parked calls, by the `requestState` their clients were given. A
/// state is random, so one that was never given (or was altered) is
/// refused, not guessed.
#[derive(Default)]
pub struct ParkedCalls {
    calls: Arc<Mutex<HashMap<String, Parked>>>,
    secret: OnceLock<[u8; 32]>,
    next: AtomicU64,
}

impl ParkedCalls {
    /// Our `requestState` values start with this; others belong to servers
    /// that speak the 2026-07-28 protocol themselves and go to them.
    pub const PREFIX: &'static str = "mcp-manager:";

    fn token(&self) -> String {
        use sha2::{Digest, Sha256};
        let secret = self.secret.get_or_init(|| {
            let mut fallback = [0u8; 32];
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
                .to_le_bytes();
            fallback[..16].copy_from_slice(&now);
            crate::config::random_key().unwrap_or(fallback)
        });
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let digest = Sha256::new()
            .chain_update(secret)
            .chain_update(n.to_le_bytes())
            .finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("{}{hex}", Self::PREFIX)
    }

    /// Keeps `parked` and returns its state; drops calls that expired.
    /// At most this many calls wait for answers at once.
    pub const MAX: usize = 1000;

    /// Keeps `parked` until its client retries or it expires (then it is
    /// dropped, which cancels its request upstream); `None` when
    /// [`ParkedCalls::MAX`] calls already wait (it is dropped).
    pub fn park(&self, mut parked: Parked) -> Option<String> {
        let token = self.token();
        self.keep(token.clone(), {
            parked.live.call.suspend();
            parked
        })
        .then_some(token)
    }

    /// Puts a call back under the state its client holds (a retry that
    /// could not be used: the client may retry again).
    pub fn put_back(&self, token: String, mut parked: Parked) {
        parked.live.call.suspend();
        if !self.keep(token, parked) {
            // Full meanwhile: the call was dropped (cancelled upstream).
            tracing::warn!("a parked call could not be kept for its client's next retry: too many calls wait");
        }
    }

    fn keep(&self, token: String, parked: Parked) -> bool {
        let expires = parked.expires;
        {
            let mut calls = lock(&self.calls);
            if calls.len() >= Self::MAX {
                return false;
            }
            calls.insert(token.clone(), parked);
        }
        let calls = Arc::downgrade(&self.calls);
        let key = token;
        tokio::spawn(async move {
            tokio::time::sleep_until(expires).await;
            if let Some(calls) = calls.upgrade() {
                let expired = lock(&calls).remove(&key);
                if let Some(mut expired) = expired {
                    expired.live.call.cancel_reason = "the client did not answer its questions within request_timeout";
                }
            }
        });
        true
    }

    pub fn take(&self, token: &str) -> Option<Parked> {
        let mut parked = lock(&self.calls).remove(token)?;
        parked.live.call.resume();
        Some(parked)
    }
}

/// How long a server has to acknowledge a `subscriptions/listen`.
const LISTEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The pause before a listen the server ended is opened again (doubling
/// while it keeps ending them at once, up to the maximum).
const LISTEN_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
const LISTEN_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// A client's capabilities as a server may be told them: what the gateway
/// relays (sampling, elicitation, roots without `listChanged`, which it does
/// not relay, and the tasks extension), nothing else.
pub fn relayable(capabilities: &ClientCapabilities) -> ClientCapabilities {
    let Ok(serde_json::Value::Object(all)) = serde_json::to_value(capabilities) else {
        return ClientCapabilities::default();
    };
    let mut kept = serde_json::Map::new();
    for (key, value) in all {
        match key.as_str() {
            "sampling" | "elicitation" => {
                kept.insert(key, value);
            }
            "roots" => {
                kept.insert(key, serde_json::json!({}));
            }
            "extensions" => {
                if let Some(tasks) = value.get(rmcp::model::TASKS_EXTENSION_ID).cloned() {
                    kept.insert(key, serde_json::json!({ rmcp::model::TASKS_EXTENSION_ID: tasks }));
                }
            }
            _ => {}
        }
    }
    serde_json::from_value(serde_json::Value::Object(kept)).unwrap_or_default()
}

/// Asks a client of the initialize-based protocol (which takes server
/// requests) the questions of a 2026-07-28 server's input-required result,
/// one after another on the response stream of `request`, and returns its
/// answers under the server's keys.
pub async fn ask_client(
    peer: &Peer<RoleServer>,
    request: &RequestId,
    capabilities: Option<&ClientCapabilities>,
    questions: InputRequests,
    server: &str,
) -> Result<InputResponses, McpError> {
    let mut answers = InputResponses::new();
    for (key, question) in questions {
        let (what, mut ask) = match question {
            InputRequest::CreateMessage(r) => (Feature::Sampling, ServerRequest::CreateMessageRequest(r)),
            InputRequest::Elicitation(r) => {
                let what = match &r.params {
                    ElicitRequestParams::UrlElicitationParams { .. } => Feature::ElicitUrl,
                    _ => Feature::ElicitForm,
                };
                (what, ServerRequest::ElicitRequest(r))
            }
            InputRequest::ListRoots(r) => (Feature::Roots, ServerRequest::ListRootsRequest(r)),
            #[allow(unreachable_patterns)]
            _ => return Err(unexpected_answer()),
        };
        if !capabilities.is_some_and(|caps| what.supported_by(caps)) {
            return Err(McpError::missing_required_client_capability(what.required()));
        }
        ask.extensions_mut().insert(OriginatingRequestId(request.clone()));
        let sender = peer.clone();
        // Sent from a task of its own, like the server requests in `Relay::ask`.
        // The guard is made there, with the request: however this function
        // is abandoned (the request's deadline, or its client cancelled it),
        // the client is told to stop asking its user.
        let (handle, mut asking) = tokio::spawn(async move {
            let handle = sender
                .send_cancellable_request(ask, rmcp::service::PeerRequestOptions::no_options())
                .await?;
            let asking = Abandoned {
                peer: Some(sender),
                id: handle.id.clone(),
            };
            Ok::<_, ServiceError>((handle, asking))
        })
        .await
        .map_err(|_| call_ended())?
        .map_err(|e| client_lost(&e))?;
        let answer = handle.rx.await.unwrap_or(Err(ServiceError::TransportClosed));
        asking.peer = None;
        let answer = match answer {
            Ok(ClientResult::CreateMessageResult(r)) => serde_json::to_value(r),
            Ok(ClientResult::ElicitResult(r)) => serde_json::to_value(r),
            Ok(ClientResult::ListRootsResult(r)) => serde_json::to_value(r),
            Ok(_) => return Err(unexpected_answer()),
            Err(ServiceError::McpError(e)) => return Err(e),
            Err(e) => return Err(client_lost(&e)),
        }
        .map_err(|e| McpError::internal_error(format!("the client's answer for '{server}': {e}"), None))?;
        answers.insert(key, answer);
    }
    Ok(answers)
}

/// [`Relay::listen_resources`] from its own listener task (boxed: a future
/// that spawns itself needs a declared type).
fn listen_resources_again(
    relay: Arc<Relay>,
    peer: Peer<RoleClient>,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        if let Err(e) = relay.listen_resources(&peer).await {
            tracing::warn!(server = %relay.server, "resource updates stopped: {}", e.message);
        }
    })
}

/// A question to a client still open when its asker went away: dropping it
/// tells the client the question is withdrawn.
struct Abandoned {
    peer: Option<Peer<RoleServer>>,
    id: RequestId,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        let Some(peer) = self.peer.take() else { return };
        let note = CancelledNotification::new(CancelledNotificationParam::new(
            Some(self.id.clone()),
            Some("the request it belonged to ended".to_string()),
        ));
        tokio::spawn(async move {
            let _ = peer.send_notification(note.into()).await;
        });
    }
}

/// Reads a client's answer to a question by the question's method.
pub fn answer_of(request: &InputRequest, value: serde_json::Value) -> Result<ClientResult, String> {
    match request {
        InputRequest::CreateMessage(_) => serde_json::from_value::<CreateMessageResult>(value)
            .map(|r| ClientResult::CreateMessageResult(Box::new(r)))
            .map_err(|e| format!("not a sampling/createMessage result: {e}")),
        InputRequest::Elicitation(_) => serde_json::from_value::<ElicitResult>(value)
            .map(ClientResult::ElicitResult)
            .map_err(|e| format!("not an elicitation/create result: {e}")),
        InputRequest::ListRoots(_) => serde_json::from_value::<ListRootsResult>(value)
            .map(ClientResult::ListRootsResult)
            .map_err(|e| format!("not a roots/list result: {e}")),
        #[allow(unreachable_patterns)]
        _ => Err("an unknown kind of input request".to_string()),
    }
}

/// The key a question is given in an input-required result.
pub fn question_key(request: &InputRequest, n: usize) -> String {
    let kind = match request {
        InputRequest::CreateMessage(_) => "sampling",
        InputRequest::Elicitation(_) => "elicitation",
        InputRequest::ListRoots(_) => "roots",
        #[allow(unreachable_patterns)]
        _ => "input",
    };
    format!("{kind}-{n}")
}

/// Server → client requests the gateway relays.
#[derive(Clone, Copy)]
enum Feature {
    Sampling,
    ElicitForm,
    ElicitUrl,
    Roots,
}

impl Feature {
    fn describe(self) -> &'static str {
        match self {
            Feature::Sampling => "sampling (sampling/createMessage)",
            Feature::ElicitForm => "form elicitation (elicitation/create)",
            Feature::ElicitUrl => "URL elicitation (elicitation/create)",
            Feature::Roots => "roots (roots/list)",
        }
    }

    /// The capability a client must declare for this (for -32021).
    fn required(self) -> ClientCapabilities {
        let caps = match self {
            Feature::Sampling => serde_json::json!({ "sampling": {} }),
            Feature::ElicitForm => serde_json::json!({ "elicitation": { "form": {} } }),
            Feature::ElicitUrl => serde_json::json!({ "elicitation": { "url": {} } }),
            Feature::Roots => serde_json::json!({ "roots": {} }),
        };
        // Fixed, valid values (covered by a unit test).
        serde_json::from_value(caps).unwrap_or_default()
    }

    /// The server request as an entry of an input-required result.
    fn input_request(self, request: ServerRequest) -> Option<InputRequest> {
        match request {
            ServerRequest::CreateMessageRequest(r) => Some(InputRequest::CreateMessage(r)),
            ServerRequest::ElicitRequest(r) => Some(InputRequest::Elicitation(r)),
            ServerRequest::ListRootsRequest(r) => Some(InputRequest::ListRoots(r)),
            _ => None,
        }
    }

    fn supported_by(self, caps: &ClientCapabilities) -> bool {
        match self {
            Feature::Sampling => caps.sampling.is_some(),
            // An empty elicitation capability means form mode (2025-06-18).
            Feature::ElicitForm => caps
                .elicitation
                .as_ref()
                .is_some_and(|e| e.form.is_some() || e.url.is_none()),
            Feature::ElicitUrl => caps.elicitation.as_ref().is_some_and(|e| e.url.is_some()),
            Feature::Roots => caps.roots.is_some(),
        }
    }
}

fn client_lost(e: &ServiceError) -> McpError {
    McpError::new(
        ErrorCode::INTERNAL_ERROR,
        format!(
            "the client went away before answering ({})",
            crate::transport::describe_service_error(e)
        ),
        None,
    )
}

fn call_ended() -> McpError {
    McpError::new(
        ErrorCode::INTERNAL_ERROR,
        "the call this request belongs to has ended".to_string(),
        None,
    )
}

fn unexpected_answer() -> McpError {
    McpError::internal_error("the client sent an unexpected answer", None)
}

/// The upstream session of one client of a `session: per_client` server:
/// ended (its process killed) when dropped.
pub struct PrivateUpstream {
    pub upstream: Arc<Upstream>,
    /// The spec it was started with: a changed spec starts a new one.
    pub spec: Arc<crate::config::ServerSpec>,
    /// Whatever keeps it alive (the process, the MCP session).
    pub guard: Box<dyn Send + Sync>,
}

/// Starts a private upstream session (implemented by the supervisor, which
/// knows how to spawn and connect; the gateway only asks).
pub trait PrivateStarter: Send + Sync {
    fn start(
        &self,
        server: &str,
        spec: Arc<crate::config::ServerSpec>,
        owner: u64,
        capabilities: Option<ClientCapabilities>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<PrivateUpstream, String>> + Send>>;
}

/// One client session of the gateway.
#[derive(Default)]
pub struct ClientSession {
    pub id: u64,
    peer: OnceLock<Peer<RoleServer>>,
    level: Mutex<Option<LoggingLevel>>,
    /// (server, upstream URI) this session subscribed to.
    subscriptions: Mutex<BTreeSet<(String, String)>>,
    /// Its own sessions of `session: per_client` servers, by server (one
    /// lock each: a start of one does not hold calls to another); they end
    /// with it.
    private: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<PrivateUpstream>>>>>,
    /// The session each of those has now, readable without waiting for a
    /// start in progress (`tasks/*` find their session here).
    current: Mutex<HashMap<String, Weak<Upstream>>>,
    /// Per server, its last failed start for this client: why, when the
    /// next may be tried, and how many failed in a row (the pause doubles
    /// from `restart_delay` up to `max_restart_delay`, as for instances).
    failed: Mutex<HashMap<String, (String, tokio::time::Instant, u32)>>,
    /// Calls answered directly (`api::direct`) that are in flight, by the
    /// client's request id: a `notifications/cancelled` for one of them
    /// cancels it here (rmcp's session never saw it).
    direct_calls: Mutex<HashMap<RequestId, (u64, CancellationToken)>>,
    /// Tells apart two direct calls that a client gave the same id.
    direct_seq: AtomicU64,
    /// Cancelled when the session ends (its rmcp handler is gone): its
    /// direct calls are cancelled with it, as rmcp cancels its own.
    ended: CancellationToken,
    /// What the lane tells a 2026-07-28 server with each call of this
    /// session (`_meta` members, encoded), for the server's protocol version
    /// and the session's log level it was encoded for.
    lane_meta: Mutex<Option<LaneMeta>>,
}

impl ClientSession {
    /// The client's side of the session, once it has initialized.
    pub fn peer(&self) -> Option<&Peer<RoleServer>> {
        self.peer.get()
    }

    /// A call answered directly starts: its cancellation token, forgotten
    /// again when the returned guard drops.
    pub fn direct_call(self: &Arc<Self>, id: RequestId) -> (CancellationToken, DirectCall) {
        let ct = self.ended.child_token();
        let seq = self.direct_seq.fetch_add(1, Ordering::Relaxed);
        lock(&self.direct_calls).insert(id.clone(), (seq, ct.clone()));
        (
            ct,
            DirectCall {
                session: self.clone(),
                id,
                seq,
            },
        )
    }

    /// Held by the session's handler: when the last copy goes, the session
    /// has ended.
    pub fn end_guard(&self) -> tokio_util::sync::DropGuard {
        self.ended.clone().drop_guard()
    }

    /// The client cancelled `id`: true if it was a call answered directly.
    pub fn cancel_direct(&self, id: &RequestId) -> bool {
        match lock(&self.direct_calls).get(id) {
            Some((_, ct)) => {
                ct.cancel();
                true
            }
            None => false,
        }
    }

    /// This client's own session of a `per_client` server, started on first
    /// use (within the server's `startup_timeout`), restarted if it died or
    /// the spec changed.
    pub async fn private_upstream(
        &self,
        server: &str,
        spec: &Arc<crate::config::ServerSpec>,
        starter: &Arc<dyn PrivateStarter>,
    ) -> Result<Arc<Upstream>, String> {
        let slot = lock(&self.private).entry(server.to_string()).or_default().clone();
        let mut private = slot.lock().await;
        if let Some(current) = private.as_ref()
            && *current.spec == **spec
            && !current.upstream.peer.is_transport_closed()
        {
            return Ok(current.upstream.clone());
        }
        // Gone or outdated: end it before starting its successor.
        *private = None;
        lock(&self.current).remove(server);
        // A start that failed a moment ago is not tried again at once.
        if let Some((why, next, _)) = lock(&self.failed).get(server)
            && *next > tokio::time::Instant::now()
        {
            let wait = next.saturating_duration_since(tokio::time::Instant::now());
            return Err(format!(
                "{why} (tried again in {})",
                crate::config::duration::format(wait.max(std::time::Duration::from_millis(1)))
            ));
        }
        // The server is offered what this client can do, no more.
        let capabilities = self
            .peer
            .get()
            .and_then(|p| p.peer_info())
            .map(|info| relayable(&info.capabilities));
        let started = tokio::time::timeout(
            spec.startup_timeout,
            starter.start(server, spec.clone(), self.id, capabilities),
        )
        .await
        .map_err(|_| {
            format!(
                "its session for this client did not start within startup_timeout ({})",
                crate::config::duration::format(spec.startup_timeout)
            )
        })
        .and_then(|started| started);
        let started = match started {
            Ok(started) => {
                lock(&self.failed).remove(server);
                started
            }
            Err(why) => {
                let mut failed = lock(&self.failed);
                let failures = failed.get(server).map_or(0, |(_, _, n)| *n).saturating_add(1);
                let pause = spec
                    .restart_delay
                    .saturating_mul(1 << (failures - 1).min(16))
                    .min(spec.max_restart_delay);
                let now = tokio::time::Instant::now();
                let next = now.checked_add(pause).unwrap_or(now);
                failed.insert(server.to_string(), (why.clone(), next, failures));
                return Err(why);
            }
        };
        let upstream = started.upstream.clone();
        *private = Some(started);
        lock(&self.current).insert(server.to_string(), Arc::downgrade(&upstream));
        Ok(upstream)
    }

    /// This client's session of a `per_client` server, if it has one.
    pub fn private_current(&self, server: &str) -> Option<Arc<Upstream>> {
        lock(&self.current).get(server)?.upgrade()
    }

    /// The log level this session asked for (`logging/setLevel`).
    pub fn level(&self) -> Option<LoggingLevel> {
        *lock(&self.level)
    }

    /// The `_meta` members the lane sends a server of `protocol` with this
    /// session's calls: `encode`d (for the session's log level) once, again
    /// when the log level changed.
    pub fn lane_meta(
        &self,
        protocol: &rmcp::model::ProtocolVersion,
        encode: impl FnOnce(Option<LoggingLevel>) -> String,
    ) -> Arc<str> {
        let level = self.level();
        let mut memo = lock(&self.lane_meta);
        if let Some((for_protocol, for_level, members)) = &*memo
            && for_protocol == protocol
            && *for_level == level
        {
            return members.clone();
        }
        let members: Arc<str> = encode(level).into();
        *memo = Some((protocol.clone(), level, members.clone()));
        members
    }

    /// The client finished initializing (a session-less 2026-07-28 request
    /// never does).
    pub fn joined(&self) -> bool {
        self.peer.get().is_some()
    }
}

/// A call answered directly, in flight: its cancellation token is
/// forgotten when it ends.
pub struct DirectCall {
    session: Arc<ClientSession>,
    id: RequestId,
    seq: u64,
}

impl Drop for DirectCall {
    fn drop(&mut self) {
        let mut calls = lock(&self.session.direct_calls);
        // A later call with the same id is that one's, not ours.
        if calls.get(&self.id).is_some_and(|(seq, _)| *seq == self.seq) {
            calls.remove(&self.id);
        }
    }
}

/// The `_meta` members the lane sends with a session's calls: for the
/// server's protocol version and the session's log level, encoded.
type LaneMeta = (rmcp::model::ProtocolVersion, Option<LoggingLevel>, Arc<str>);

/// The gateway's client sessions (those of the initialize-based protocol).
/// Held weakly: a session (and its private upstreams) ends with its handler.
#[derive(Default)]
pub struct Clients {
    sessions: Mutex<Vec<Weak<ClientSession>>>,
    /// The sessions whose tool calls may be answered directly, without
    /// rmcp's session worker (`api::direct`), by HTTP session id.
    direct: Mutex<HashMap<Arc<str>, Weak<ClientSession>>>,
    next: AtomicU64,
    /// The last level any client set: servers that start later get it too.
    level: Mutex<Option<LoggingLevel>>,
}

fn rank(level: LoggingLevel) -> u8 {
    level as u8
}

impl Clients {
    /// A new session (ids start at 1; 0 means "no session").
    pub fn session(&self) -> Arc<ClientSession> {
        Arc::new(ClientSession {
            id: self.next.fetch_add(1, Ordering::Relaxed) + 1,
            ..ClientSession::default()
        })
    }

    /// The session's client finished initializing: it gets broadcasts.
    pub fn join(&self, session: &Arc<ClientSession>, peer: Peer<RoleServer>) {
        let _ = session.peer.set(peer);
        self.live();
        lock(&self.sessions).push(Arc::downgrade(session));
    }

    /// Calls of HTTP session `http` may be answered directly (see
    /// `api::direct` for when that is safe).
    pub fn allow_direct(&self, http: Arc<str>, session: &Arc<ClientSession>) {
        let mut direct = lock(&self.direct);
        direct.retain(|_, s| s.strong_count() > 0);
        direct.insert(http, Arc::downgrade(session));
    }

    /// The session of HTTP session `http`, if its calls may be answered
    /// directly and its client is still there.
    pub fn direct(&self, http: &str) -> Option<Arc<ClientSession>> {
        let mut direct = lock(&self.direct);
        let session = direct.get(http)?.upgrade();
        match session {
            Some(s) if s.peer.get().is_some_and(|p| !p.is_transport_closed()) => Some(s),
            _ => {
                direct.remove(http);
                None
            }
        }
    }

    /// The sessions whose clients are still there (forgets the others).
    fn live(&self) -> Vec<Arc<ClientSession>> {
        let mut sessions = lock(&self.sessions);
        let mut live = Vec::with_capacity(sessions.len());
        sessions.retain(|s| match s.upgrade() {
            Some(s) if s.peer.get().is_some_and(|p| !p.is_transport_closed()) => {
                live.push(s);
                true
            }
            _ => false,
        });
        live
    }

    /// Records a session's level and returns the level servers should log
    /// at: the most verbose any live session asked for (one client's `error`
    /// must not silence another's `debug`).
    pub fn set_level(&self, session: &ClientSession, level: LoggingLevel) -> LoggingLevel {
        *lock(&session.level) = Some(level);
        let effective = self
            .live()
            .iter()
            .filter_map(|s| *lock(&s.level))
            .chain([level])
            .min_by_key(|l| rank(*l))
            .unwrap_or(level);
        *lock(&self.level) = Some(effective);
        effective
    }

    pub fn level(&self) -> Option<LoggingLevel> {
        *lock(&self.level)
    }

    fn wants(&self, session: u64, level: LoggingLevel) -> bool {
        match self.live().iter().find(|s| s.id == session) {
            Some(s) => lock(&s.level).is_none_or(|min| rank(level) >= rank(min)),
            None => true,
        }
    }

    /// The sessions that take log messages at `level`: (id, peer).
    fn wanting(&self, level: LoggingLevel) -> Vec<(u64, Peer<RoleServer>)> {
        self.live()
            .into_iter()
            .filter(|s| lock(&s.level).is_none_or(|min| rank(level) >= rank(min)))
            .filter_map(|s| s.peer.get().cloned().map(|p| (s.id, p)))
            .collect()
    }

    /// Records a subscription; true if it is the first to this resource.
    pub fn subscribe(&self, session: &ClientSession, server: &str, uri: &str) -> bool {
        let first = !self.any_subscribed(server, uri);
        lock(&session.subscriptions).insert((server.to_string(), uri.to_string()));
        first
    }

    /// Forgets a subscription; true if no session is subscribed any more.
    pub fn unsubscribe(&self, session: &ClientSession, server: &str, uri: &str) -> bool {
        lock(&session.subscriptions).remove(&(server.to_string(), uri.to_string()));
        !self.any_subscribed(server, uri)
    }

    fn any_subscribed(&self, server: &str, uri: &str) -> bool {
        let key = (server.to_string(), uri.to_string());
        self.live().iter().any(|s| lock(&s.subscriptions).contains(&key))
    }

    /// The sessions subscribed to a resource: (id, peer).
    fn subscribed(&self, server: &str, uri: &str) -> Vec<(u64, Peer<RoleServer>)> {
        let key = (server.to_string(), uri.to_string());
        self.live()
            .into_iter()
            .filter(|s| lock(&s.subscriptions).contains(&key))
            .filter_map(|s| s.peer.get().cloned().map(|p| (s.id, p)))
            .collect()
    }

    /// The upstream URIs of `server` that sessions subscribed to (only
    /// `owner`'s, for a client's own session of a `per_client` server).
    pub fn uris(&self, server: &str, owner: Option<u64>) -> BTreeSet<String> {
        self.live()
            .iter()
            .filter(|s| owner.is_none_or(|owner| s.id == owner))
            .flat_map(|s| {
                lock(&s.subscriptions)
                    .iter()
                    .filter(|(of, _)| of == server)
                    .map(|(_, uri)| uri.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// A session of `server` came up: it gets the log level clients set and
    /// the subscriptions they hold, as a server that was there all along (a
    /// 2026-07-28 server gets the level with each request).
    pub fn replay(&self, upstream: &Arc<Upstream>) {
        if upstream.speaks_modern() {
            let (relay, peer) = (upstream.relay.clone(), upstream.peer.clone());
            tokio::spawn(listen_resources_again(relay, peer));
            return;
        }
        let (server, peer) = (upstream.id.server.as_str(), upstream.peer.clone());
        let level = self.level();
        let uris: BTreeSet<String> = self
            .live()
            .iter()
            .flat_map(|s| {
                lock(&s.subscriptions)
                    .iter()
                    .filter(|(owner, _)| owner == server)
                    .map(|(_, uri)| uri.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        let caps = peer.peer_info().map(|info| info.capabilities.clone());
        let logs = caps.as_ref().is_some_and(|c| c.logging.is_some());
        let subscribes = caps
            .as_ref()
            .and_then(|c| c.resources.as_ref())
            .is_some_and(|r| r.subscribe == Some(true));
        if (level.is_none() || !logs) && (uris.is_empty() || !subscribes) {
            return;
        }
        tokio::spawn(async move {
            if let (Some(level), true) = (level, logs) {
                let request = ClientRequest::SetLevelRequest(SetLevelRequest::new(SetLevelRequestParams::new(level)));
                let _ = peer.send_request(request).await;
            }
            if subscribes {
                for uri in uris {
                    let request =
                        ClientRequest::SubscribeRequest(SubscribeRequest::new(SubscribeRequestParams::new(uri)));
                    let _ = peer.send_request(request).await;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lanes_meta_is_encoded_once_per_protocol_and_log_level() {
        let clients = Clients::default();
        let session = clients.session();
        let encoded = std::cell::Cell::new(0);
        let encode = |text: &'static str| {
            let encoded = &encoded;
            move |level: Option<LoggingLevel>| {
                encoded.set(encoded.get() + 1);
                format!("{text} {level:?}")
            }
        };
        let modern = rmcp::model::ProtocolVersion::V_2026_07_28;
        assert_eq!(&*session.lane_meta(&modern, encode("a")), "a None");
        assert_eq!(&*session.lane_meta(&modern, encode("b")), "a None", "kept");
        assert_eq!(encoded.get(), 1);
        clients.set_level(&session, LoggingLevel::Debug);
        assert_eq!(
            &*session.lane_meta(&modern, encode("c")),
            "c Some(Debug)",
            "the level changed: encoded for the new one"
        );
        let older = rmcp::model::ProtocolVersion::V_2025_06_18;
        assert_eq!(
            &*session.lane_meta(&older, encode("d")),
            "d Some(Debug)",
            "another protocol"
        );
        assert_eq!(encoded.get(), 3);
    }

    #[test]
    fn upstreams_are_offered_every_client_capability() {
        let caps = upstream_capabilities();
        assert!(caps.sampling.is_some());
        assert!(caps.roots.is_some());
        let elicitation = caps.elicitation.expect("elicitation");
        assert!(elicitation.form.is_some() && elicitation.url.is_some());
    }

    #[test]
    fn required_capabilities_name_the_feature() {
        assert!(Feature::Sampling.required().sampling.is_some());
        assert!(Feature::Roots.required().roots.is_some());
        assert!(
            Feature::ElicitForm
                .required()
                .elicitation
                .and_then(|e| e.form)
                .is_some()
        );
        assert!(Feature::ElicitUrl.required().elicitation.and_then(|e| e.url).is_some());
    }

    #[test]
    fn an_empty_elicitation_capability_means_forms() {
        let caps: ClientCapabilities = serde_json::from_value(serde_json::json!({ "elicitation": {} })).unwrap();
        assert!(Feature::ElicitForm.supported_by(&caps));
        assert!(!Feature::ElicitUrl.supported_by(&caps));
        assert!(!Feature::Sampling.supported_by(&caps));
        assert!(!Feature::Roots.supported_by(&caps));
    }

    #[test]
    fn servers_are_told_only_what_the_gateway_relays() {
        let caps: ClientCapabilities = serde_json::from_value(serde_json::json!({
            "sampling": {},
            "roots": { "listChanged": true },
            "experimental": { "x": {} },
            "extensions": { "io.modelcontextprotocol/tasks": {}, "com.example/other": {} }
        }))
        .unwrap();
        let told = serde_json::to_value(relayable(&caps)).unwrap();
        assert_eq!(
            told,
            serde_json::json!({
                "sampling": {},
                "roots": {},
                "extensions": { "io.modelcontextprotocol/tasks": {} }
            })
        );
    }

    #[test]
    fn levels_rank_by_severity() {
        assert!(rank(LoggingLevel::Error) > rank(LoggingLevel::Warning));
        assert!(rank(LoggingLevel::Debug) < rank(LoggingLevel::Info));
        assert!(rank(LoggingLevel::Emergency) > rank(LoggingLevel::Alert));
    }
}
